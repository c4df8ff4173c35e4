-- Test handler for bench_spec: echoes with the first byte of every chunk
-- changed, which the load generator must catch.
return {
  on_data = function(conn, data)
    conn:write(string.char(data:byte(1) ~ 1) .. data:sub(2))
  end,
}
