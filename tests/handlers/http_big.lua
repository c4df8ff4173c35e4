-- echokit.http's handler builder answering every request with a large body
-- (size= bytes, default 256 KiB): a pipeline of requests asks for far more
-- output than the requests' own size.
local echokit = require "echokit"
local http = require "echokit.http"
local args = ...

local body = ("b"):rep(echokit.size(args.size, 256 * 1024))

return http.handler(function()
  return 200, { { "Content-Type", "text/plain" } }, body
end)
