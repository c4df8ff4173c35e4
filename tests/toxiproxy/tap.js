// What the toxiproxy Node client tests (client_test.js, aimed_test.js) share:
// TAP-style steps, a line round trip through a proxy, and the check that the
// client library rejects a call.
"use strict";
const net = require("net");
const { ToxiproxyError } = require("toxiproxy-node-client");

let step = 0;

// One step: prints "ok N - what", or throws (the test exits non-zero).
function ok(cond, what) {
  step++;
  if (!cond) throw new Error(`step ${step} failed: ${what}`);
  console.log(`ok ${step} - ${what}`);
}

function split(listen) {
  const [host, port] = listen.split(":");
  return { host, port: Number(port) };
}

// Round trip of one line through listen ("host:port"), from localAddress if
// given; resolves with the seconds taken, or rejects with the socket error
// (bounded by limit seconds, times slow: the harness's factor).
function roundTrip(listen, { localAddress, limit = 5, slow = 1 } = {}) {
  const { host, port } = split(listen);
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const s = net.connect({ host, port, localAddress });
    let got = "";
    const timer = setTimeout(() => { s.destroy(); reject(new Error("timeout")); }, limit * 1000 * slow);
    s.on("connect", () => s.write("ping\n"));
    s.on("data", (d) => {
      got += d;
      if (got === "ping\n") {
        clearTimeout(timer);
        s.destroy();
        resolve(Number(process.hrtime.bigint() - t0) / 1e9);
      }
    });
    s.on("error", (e) => { clearTimeout(timer); reject(e); });
    s.on("close", () => { clearTimeout(timer); reject(new Error(`closed after ${JSON.stringify(got)}`)); });
  });
}

// A step passing when promise rejects with the client's ToxiproxyError (whose
// message matches pattern, if given).
async function rejects(promise, what, pattern) {
  try {
    await promise;
  } catch (e) {
    const msg = e.message;
    ok(e instanceof ToxiproxyError && (!pattern || pattern.test(msg)), `${what} (rejected: ${msg})`);
    return;
  }
  ok(false, `${what}: expected an error`);
}

// Runs main: on success prints the plan ("1..N", which the calling spec
// awaits), on failure "not ok" and exits 1.
function run(main) {
  main().then(() => console.log(`1..${step}`), (e) => {
    console.log(`not ok ${step + 1} - ${e.stack || e}`);
    process.exit(1);
  });
}

module.exports = { ok, split, roundTrip, rejects, run };
