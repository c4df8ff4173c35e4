-- echokit.http's handler builder when the request function raises: the client
-- gets a 500 and a close, the error is logged, other connections carry on.
local http = require "echokit.http"
return http.handler(function(req)
  if req.path == "/boom" then error("boom at " .. req.path) end
  return 200, { ["Content-Type"] = "text/plain" }, "fine\n"
end)
