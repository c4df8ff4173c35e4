-- Test certificates for the TLS specs, made with the openssl CLI (argv, no
-- shell) in a temp directory of their own. All keys are EC P-256, unencrypted.
--
--   local p = pki.new("echokit-tls")          -- $TMPDIR/echokit-tls-XXXXXX
--   local ca = p:ca("ca", { subj = "/CN=test CA" })
--   local a = p:leaf("a", { ca = ca, subj = "/CN=a.test", san = "DNS:a.test" })
--   -- a.cert, a.key: paths; a.csr, a.ext stay in p.dir
--   p:remove()
--
-- Files are NAME.pem and NAME-key.pem unless opts.cert / opts.key name
-- others (relative to p.dir). Certificates last opts.days days (2 unless
-- given; -1 makes one that has expired).
local peers = require "peers"

local M = {}
local P = {}
P.__index = P

local EC = { "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes" }

-- Runs openssl with the given arguments; fails the caller with what it said
-- unless it exits 0. Returns the run ({ code, out, err, ... }).
local function openssl(args, what)
  local argv = { "openssl" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return peers.assert_ok(peers.run(argv, 30), what or ("openssl " .. args[1]))
end

local function append(argv, list)
  for _, a in ipairs(list or {}) do argv[#argv + 1] = a end
  return argv
end

-- A new, empty temp directory $TMPDIR/PREFIX-XXXXXX; p.dir is its path.
function M.new(prefix)
  local p = io.popen("mktemp -d " .. peers.shq((os.getenv("TMPDIR") or "/tmp") .. "/" ..
                                               (prefix or "echokit-pki") .. "-XXXXXX"))
  local dir = p:read("l")
  p:close()
  assert(dir and dir ~= "", "mktemp -d failed")
  return setmetatable({ dir = dir }, P)
end

function P:path(file) return self.dir .. "/" .. file end

local function files(self, name, opts)
  return { name = name, cert = self:path(opts.cert or (name .. ".pem")),
           key = self:path(opts.key or (name .. "-key.pem")) }
end

-- A self-signed certificate (openssl req -x509, so openssl.cnf's v3_ca
-- extensions) for opts.subj; opts.addext: extensions to add (-addext).
-- Returns { name, cert, key }.
function P:self_signed(name, opts)
  opts = opts or {}
  local c = files(self, name, opts)
  local argv = append({ "req", "-x509" }, EC)
  append(argv, { "-days", tostring(opts.days or 2), "-keyout", c.key, "-out", c.cert,
                 "-subj", (assert(opts.subj, "pki: self_signed needs subj")) })
  for _, e in ipairs(opts.addext or {}) do append(argv, { "-addext", e }) end
  openssl(argv, "openssl: the certificate " .. name)
  return c
end

-- A CA: a self-signed certificate that signs leaves (see self_signed).
P.ca = P.self_signed

-- A certificate for opts.subj signed by opts.ca (a table from :ca), with
-- exactly the extensions asked for, in this order: subjectAltName=opts.san,
-- the lines of opts.ext, extendedKeyUsage=opts.eku. Leaves NAME.csr and
-- NAME.ext next to it. Returns { name, cert, key, csr }.
function P:leaf(name, opts)
  local ca = assert(opts.ca, "pki: leaf needs ca")
  local c = files(self, name, opts)
  c.csr = self:path(name .. ".csr")
  local ext = {}
  if opts.san then ext[#ext + 1] = "subjectAltName=" .. opts.san end
  append(ext, opts.ext)
  if opts.eku then ext[#ext + 1] = "extendedKeyUsage=" .. opts.eku end
  local extfile = self:path(name .. ".ext")
  peers.write_file(extfile, table.concat(ext, "\n") .. "\n")
  openssl(append(append({ "req" }, EC), { "-keyout", c.key, "-out", c.csr,
          "-subj", (assert(opts.subj, "pki: leaf needs subj")) }),
          "openssl: the request for " .. name)
  openssl({ "x509", "-req", "-in", c.csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
            "-days", tostring(opts.days or 2), "-extfile", extfile, "-out", c.cert },
          "openssl: the certificate " .. name)
  return c
end

-- openssl verify -CAfile ca.cert cert: true if the chain verifies, else
-- false and what openssl said.
function P:verify(ca, cert)
  local r = peers.run({ "openssl", "verify", "-CAfile", ca.cert, cert.cert }, 10)
  return r.how == "exited" and r.code == 0, r.out .. r.err
end

function P:remove()
  if self.dir then os.execute("rm -rf " .. peers.shq(self.dir)) end
  self.dir = nil
end

return M
