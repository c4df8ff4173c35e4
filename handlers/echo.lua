-- echo: every byte a client sends comes straight back.
-- Back-pressure is automatic: while the reply queue is above the high-water
-- mark, echokit stops reading this client until it drains.
return { on_data = function(conn, data) conn:write(data) end }
