#!/usr/bin/python3
"""A plain HTTP upstream for the proxy tests.

    http_server.py DIR [CERT KEY]

Serves the files of DIR with Python's http.server on 127.0.0.1, port 0 (the
kernel picks one), one thread per connection, HTTP/1.0 (the server closes the
connection after each response). Prints the chosen port on stdout as one line,
`PORT`, once it is listening; the request log goes to stderr. Runs until it is
killed (SIGTERM/SIGKILL). With CERT and KEY (PEM files) it serves HTTPS,
offering ALPN http/1.1.
"""
import functools
import http.server
import ssl
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    # Bigger writes than the default 8 KiB copy loop: the tests stream 64 MiB.
    wbufsize = 256 * 1024

    def copyfile(self, source, outputfile):
        while True:
            buf = source.read(256 * 1024)
            if not buf:
                break
            outputfile.write(buf)

    def log_message(self, fmt, *args):
        sys.stderr.write("http_server: %s - %s\n" % (self.address_string(), fmt % args))
        sys.stderr.flush()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


def serve(srv):
    """Prints srv's port as one line on stdout, then serves until killed."""
    sys.stdout.write("%d\n" % srv.server_address[1])
    sys.stdout.flush()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def main():
    if len(sys.argv) not in (2, 4):
        sys.stderr.write("usage: http_server.py DIR [CERT KEY]\n")
        return 2
    handler = functools.partial(Handler, directory=sys.argv[1])
    srv = Server(("127.0.0.1", 0), handler)
    if len(sys.argv) == 4:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
        ctx.set_alpn_protocols(["http/1.1"])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    return serve(srv)


if __name__ == "__main__":
    sys.exit(main())
