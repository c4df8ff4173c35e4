#!/bin/sh
# Inside a network namespace of its own (run under `unshare -n` or
# `unshare -rn`): brings lo up, starts tcpdump on it, serves DIR/www with
# python3 -m http.server on 127.0.0.1:PORT, fetches DIR/www/hello.txt with
# curl -i into DIR/orig.out, and stops both. The capture is DIR/http.pcap.
# Exit 3: tcpdump could not capture (its message in DIR/tcpdump.err).
# Every wait is bounded (5 s).
#   ns_http_capture.sh DIR PORT
set -eu
D=$1; PORT=$2
ip link set lo up
# -Z root: no privilege drop (the file is in a directory of the caller's)
tcpdump -i lo -Z root -U --immediate-mode -w "$D/http.pcap" tcp port "$PORT" 2>"$D/tcpdump.err" &
TP=$!
i=0
until grep -q "listening on" "$D/tcpdump.err"; do
  if ! kill -0 "$TP" 2>/dev/null || [ $i -ge 500 ]; then exit 3; fi
  i=$((i + 1)); sleep 0.01
done
python3 -u -m http.server --bind 127.0.0.1 --directory "$D/www" "$PORT" >"$D/http.out" 2>&1 &
HP=$!
i=0
until grep -q "Serving HTTP" "$D/http.out"; do
  if [ $i -ge 500 ]; then kill "$HP" "$TP"; exit 4; fi
  i=$((i + 1)); sleep 0.01
done
curl -sS --max-time 5 -i -o "$D/orig.out" "http://127.0.0.1:$PORT/hello.txt"
kill "$HP"
kill -INT "$TP"
wait "$TP" || true
