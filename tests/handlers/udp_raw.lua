-- udp_spec: raw datagrams (no flows): each one is answered with the peer's
-- address in front; "bad peer" sends to an address that is none.
return {
  on_datagram = function(sock, data, peer)
    if data == "bad peer" then sock:sendto("x", "not an address") end
    if data == "boom" then error("raw boom on purpose") end
    if data == "big" then -- IPv4 carries 65,507 bytes at most: this one raises
      local ok, err = pcall(sock.sendto, sock, string.rep("x", 65508), peer)
      return sock:sendto(tostring(ok) .. " " .. err, peer)
    end
    sock:sendto(peer .. " " .. data, peer)
  end,
}
