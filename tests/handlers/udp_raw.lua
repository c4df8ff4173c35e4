-- udp_spec: raw datagrams (no flows): each one is answered with the peer's
-- address in front; "bad peer" sends to an address that is none.
return {
  on_datagram = function(sock, data, peer)
    if data == "bad peer" then sock:sendto("x", "not an address") end
    if data == "boom" then error("raw boom on purpose") end
    sock:sendto(peer .. " " .. data, peer)
  end,
}
