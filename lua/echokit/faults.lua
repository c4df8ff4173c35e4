-- echokit.faults: echokit's own toxic types, beyond toxiproxy's: answers
-- instead of the server (http_status, resp_error), message faults
-- (drop_message, delay_message, corrupt), per-datagram faults (loss,
-- duplicate, reorder, truncate) and open and lifetime faults (refuse,
-- slow_open, limit_time). echokit.toxics defines them when it loads
-- (docs/API.md, "echokit.toxics"); the defs follow toxics.define's shape.
--
--   for name, def in pairs(require "echokit.faults") do toxics.define(name, def) end
local http = require "echokit.http"

local MS = 0.001

local T = {}
local function probability(name)
  return function(a)
    local p = a.probability
    if type(p) ~= "number" or p < 0 or p > 1 then
      return nil, string.format("attribute probability of %s must be between 0 and 1", name)
    end
    return true
  end
end

local function nonneg(name, ...)
  local keys = { ... }
  return function(a)
    for _, k in ipairs(keys) do
      if a[k] < 0 then return nil, string.format("attribute %s of %s must not be negative", k, name) end
    end
    return true
  end
end

-- Writes `bytes` to the client now or after `delay` seconds; `close` then
-- closes the connection. The answer skips the server and the downstream
-- toxics.
local function answer(self, bytes, delay, close)
  local function go()
    if self.dir.pair.dead then return end
    self.client:write(bytes)
    if close then self:close() end
  end
  if delay > 0 then self:timer(delay, go) else go() end
end

-- http_status: matching HTTP requests (every one without a match) are
-- answered with status, headers and body, after delay seconds; the server
-- never sees them. close=1 (or a request that does not keep the connection
-- alive) closes the connection after the answer.
T.http_status = {
  bytestream = "answers HTTP requests",
  frame = { http = {} },
  stream = "upstream",
  attributes = { status = 503, body = "", headers = { default = {} }, delay = { default = 0, api = MS },
                 close = 0 },
  validate = function(a)
    if a.status ~= math.floor(a.status) or a.status < 100 or a.status > 599 then
      return nil, "attribute status of http_status must be a whole number from 100 to 599"
    end
    for k, v in pairs(a.headers) do
      if type(k) ~= "string" or type(v) ~= "string" then
        return nil, "attribute headers of http_status must map names to strings"
      end
    end
    local ok, err = pcall(http.response, a.status, a.headers, a.body)
    if not ok then
      return nil, "attribute headers of http_status: " .. tostring(err):gsub("^.-:%d+: ", "")
    end
    return nonneg("http_status", "delay")(a)
  end,
  data = function(self, _, req)
    local a = self.attributes
    local keep = req and req.keep_alive and a.close == 0
    local bytes = http.response(a.status, a.headers, a.body,
                                { close = not keep, head = req and req.method == "HEAD" })
    answer(self, bytes, a.delay, not keep)
  end,
}

-- resp_error: matching Redis commands (every one without a match) are
-- answered with the error `-MESSAGE`, after delay seconds; the server never
-- sees them.
T.resp_error = {
  bytestream = "answers Redis commands",
  frame = { resp = {} },
  stream = "upstream",
  attributes = { message = "ERR injected fault", delay = { default = 0, api = MS } },
  validate = function(a)
    if a.message:find("[\r\n]") then
      return nil, "attribute message of resp_error must not hold CR or LF"
    end
    return nonneg("resp_error", "delay")(a)
  end,
  data = function(self)
    local a = self.attributes
    answer(self, "-" .. a.message .. "\r\n", a.delay, false)
  end,
}

-- drop_message: matching messages (every chunk without a match) vanish.
T.drop_message = { attributes = {}, data = function() end }

-- delay_message: matching messages (every chunk without a match) wait
-- delay seconds; on a byte stream what follows waits behind them.
T.delay_message = {
  attributes = { delay = { default = 0, api = MS } },
  validate = nonneg("delay_message", "delay"),
  data = function(self, data) self:send(data, self.attributes.delay) end,
}

-- Flips `count` random bytes of data (each XORed with a non-zero byte).
local function flip(data, count)
  local n = #data
  if n == 0 then return data end
  local b = { data:byte(1, -1) }
  for _ = 1, math.min(count, n) do
    local i = math.random(n)
    b[i] = b[i] ~ math.random(255)
  end
  local parts = {}
  for i = 1, n, 4096 do
    parts[#parts + 1] = string.char(table.unpack(b, i, math.min(n, i + 4095)))
  end
  return table.concat(parts)
end

-- corrupt: each matching message (or chunk: a datagram), with probability
-- `probability`, gets `count` random bytes flipped.
T.corrupt = {
  attributes = { probability = 1, count = 1 },
  validate = function(a)
    local ok, err = probability("corrupt")(a)
    if not ok then return nil, err end
    if a.count ~= math.floor(a.count) or a.count < 1 then
      return nil, "attribute count of corrupt must be a whole number of at least 1"
    end
    return true
  end,
  data = function(self, data)
    local a = self.attributes
    if math.random() < a.probability then data = flip(data, a.count) end
    self:send(data)
  end,
}

-- loss: each chunk (a datagram) is dropped with probability `probability`.
T.loss = {
  attributes = { probability = 0 },
  validate = probability("loss"),
  data = function(self, data)
    if math.random() >= self.attributes.probability then self:send(data) end
  end,
}

-- duplicate: each chunk (a datagram) is sent twice with probability
-- `probability`.
T.duplicate = {
  attributes = { probability = 0 },
  validate = probability("duplicate"),
  data = function(self, data)
    self:send(data)
    if math.random() < self.attributes.probability then self:send(data) end
  end,
}

-- reorder: each chunk (a datagram), with probability `probability`, is held
-- back and sent after the next one; if none comes within `hold` seconds it
-- goes on alone.
local function release(self)
  local held = self.held_back
  if self.held_timer then
    self.held_timer:cancel()
    self.timers[self.held_timer] = nil
    self.held_timer = nil
  end
  self.held_back = nil
  return held
end

T.reorder = {
  attributes = { probability = 0, hold = { default = 0.1, api = MS } },
  validate = function(a)
    local ok, err = probability("reorder")(a)
    if not ok then return nil, err end
    return nonneg("reorder", "hold")(a)
  end,
  data = function(self, data)
    local held = release(self)
    if held then
      self:send(data)
      self:send(held)
    elseif math.random() < self.attributes.probability then
      self.held_back = data
      self.held_timer = self:timer(self.attributes.hold, function()
        self.held_timer = nil
        local h = release(self)
        if h then self:send(h) end
      end)
    else
      self:send(data)
    end
  end,
  eof = function(self)
    local held = release(self)
    if held then self:send(held) end
    self:send_eof()
  end,
}

-- truncate: each chunk (a datagram) keeps at most `bytes` bytes.
T.truncate = {
  attributes = { bytes = 0 },
  validate = nonneg("truncate", "bytes"),
  data = function(self, data)
    local n = math.floor(self.attributes.bytes)
    self:send(#data > n and data:sub(1, n) or data)
  end,
}

-- refuse: new connections (of the clients it is aimed at) are accepted and
-- reset at once; open ones are left alone.
T.refuse = {
  attributes = {},
  start = function(self) if self.dir.pair.opening then self:reset() end end,
}

-- slow_open: a new connection is accepted, and its upstream connection made
-- only `delay` seconds later; the client is paused meanwhile.
T.slow_open = {
  bytestream = "pauses the client until the upstream is connected",
  attributes = { delay = { default = 0, api = MS } },
  validate = nonneg("slow_open", "delay"),
  start = function(self)
    local pair = self.dir.pair
    local d = self.attributes.delay
    if pair.opening and d > 0 and d > (pair.open_delay or 0) then pair.open_delay = d end
  end,
}

-- limit_time: the connection is closed `duration` seconds after it opened
-- (or after the toxic was added): with mode "fin" what is in flight is
-- flushed and closed, with "rst" both sides are reset.
T.limit_time = {
  attributes = { duration = { default = 0, api = MS }, mode = "fin" },
  validate = function(a)
    if a.mode ~= "fin" and a.mode ~= "rst" then
      return nil, "attribute mode of limit_time must be fin or rst"
    end
    return nonneg("limit_time", "duration")(a)
  end,
  start = function(self)
    self:timer(self.attributes.duration, function()
      if self.attributes.mode == "rst" then self:reset() else self:close() end
    end)
  end,
}

return T
