-- An upstream that answers "partial" to the first bytes, then resets the
-- connection (a server that crashed mid-response).
return {
  on_data = function(conn)
    conn:write("partial")
    conn:reset()
  end,
}
