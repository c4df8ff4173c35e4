-- serve_echo: the serve-style (coroutine) raw echo used by bench/run.
return { serve = function(conn) while true do local d = conn:receiveany(65536); if not d then return end; conn:send(d) end end }
