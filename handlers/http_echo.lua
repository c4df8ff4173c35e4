-- http: an HTTP/1.1 server that answers every request with what it received,
-- as JSON, and a fixed small body at /hello for load tests.
--
--   echokit -H http              then: curl -d hi 127.0.0.1:7000/some/path?x=1
--   echokit -H http -- max_body=16m max_header=16k max_framing=64k
--   echokit -H http -- header_timeout=30
--
-- Keep-alive, pipelining, chunked uploads and 100-continue come from
-- echokit.http; malformed requests get 400/413/431/501/505 and a close.
-- header_timeout (seconds, default 30, 0 = none): a request head not complete
-- that long after the connection opened, or after its first byte, gets 408
-- and a close (slowloris).
local http = require "echokit.http"
local codec = require "echokit.codec"
local json = require "echokit.json"
local echokit = require "echokit"
local args = ...

-- The request as JSON (echokit.json: text that is not UTF-8, such as obs-text
-- in a header, is read as Latin-1). A body that is not UTF-8 comes as base64,
-- so that it can be checked byte for byte.
local FIELDS = { "method", "path", "query", "version", "headers", "body", "body_encoding" }
local function describe(req)
  local body, encoding = req.body, "text"
  if not utf8.len(body) then body, encoding = codec.base64(body), "base64" end
  return json.object(FIELDS, {
    method = req.method, path = req.path, query = req.query or json.null,
    version = req.version, headers = req.header_list, body = body, body_encoding = encoding,
  }) .. "\n"
end

local HELLO = "Hello, World!\n"

return http.handler(function(req)
  if req.path == "/hello" then
    return 200, { { "Content-Type", "text/plain" } }, HELLO
  end
  return 200, { { "Content-Type", "application/json" } }, describe(req)
end, {
  max_body = echokit.size(args.max_body, http.MAX_BODY),
  max_header = echokit.size(args.max_header, http.MAX_HEADER),
  max_framing = echokit.size(args.max_framing, http.MAX_FRAMING),
  header_timeout = require("echokit.pipeline").seconds(args.header_timeout,
    http.HEADER_TIMEOUT, "header_timeout"),
})
