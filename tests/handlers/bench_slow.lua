-- Test handler for bench_spec: an echo that burns about 100 us of CPU per
-- message, so a benchmark can tell it from a plain echo.
return {
  on_data = function(conn, data)
    local stop = os.clock() + 0.0001
    while os.clock() < stop do end
    conn:write(data)
  end,
}
