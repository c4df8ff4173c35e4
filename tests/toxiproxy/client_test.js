// Drives echokit's control API with toxiproxy's Node client library, the way
// a test suite written for toxiproxy would, and checks that traffic through
// the proxy changes accordingly. Prints TAP-style lines; exits 0 only if
// every step passed.
//
//   node client_test.js http://127.0.0.1:ADMIN UPSTREAM_PORT [SLOW]
//
// Timing: a toxic's delay is a strict lower bound; upper bounds are relative
// to a round trip measured here without toxics, plus a margin scaled by SLOW
// (the test harness's factor, 1 unless running under valgrind).
"use strict";
const { Toxiproxy } = require("toxiproxy-node-client");
const { ok, rejects, roundTrip: rt, run } = require("./tap");

const [admin, upstreamPort, slowArg] = process.argv.slice(2);
const slow = Number(slowArg || 1);
const upstream = `127.0.0.1:${upstreamPort}`;
const roundTrip = (listen) => rt(listen, { slow });

async function main() {
  const toxiproxy = new Toxiproxy(admin);
  const version = await toxiproxy.getVersion();
  ok(/"version"/.test(version), `getVersion: ${version.trim()}`);

  const proxy = await toxiproxy.createProxy({ name: "echo", listen: "127.0.0.1:0", upstream });
  ok(proxy.name === "echo" && /^127\.0\.0\.1:\d+$/.test(proxy.listen) && proxy.enabled,
     `createProxy: listening on ${proxy.listen}`);
  const base = await roundTrip(proxy.listen);
  ok(base >= 0, `traffic passes (${base.toFixed(4)}s without toxics)`);
  // Well under the 200 ms latency used below, however loaded the machine.
  const untouched = base + 0.15 * slow;

  const toxic = await proxy.addToxic({ type: "latency", stream: "downstream", toxicity: 1,
                                       attributes: { latency: 200, jitter: 0 } });
  ok(toxic.name === "latency_downstream" && toxic.attributes.latency === 200, "addToxic latency 200 ms");
  const slowRt = await roundTrip(proxy.listen);
  ok(slowRt >= 0.19 && slowRt < 0.2 + base + slow, `latency applies (${slowRt.toFixed(4)}s)`);

  const got = await proxy.getToxic("latency_downstream");
  ok(got.type === "latency" && got.stream === "downstream", "getToxic");
  const updated = await got.update({ attributes: { latency: 400 } });
  ok(updated.attributes.latency === 400, "toxic.update to 400 ms");
  const slower = await roundTrip(proxy.listen);
  ok(slower >= 0.39 && slower < 0.4 + base + slow, `updated latency applies (${slower.toFixed(4)}s)`);

  await updated.remove();
  const fast = await roundTrip(proxy.listen);
  ok(fast < untouched, `toxic removed: latency gone (${fast.toFixed(4)}s)`);

  await proxy.addToxic({ type: "timeout", stream: "upstream", toxicity: 1, attributes: { timeout: 100 } });
  let err = null;
  try { await roundTrip(proxy.listen); } catch (e) { err = e; }
  ok(err && /closed/.test(err.message), `timeout toxic closes the connection (${err && err.message})`);

  await rejects(proxy.addToxic({ type: "timeout", stream: "upstream", toxicity: 1, attributes: {} }),
                "a duplicate toxic name is refused");
  await rejects(proxy.addToxic({ type: "no_such_toxic", stream: "upstream", toxicity: 1, attributes: {} }),
                "an unknown toxic type is refused");
  await rejects(toxiproxy.createProxy({ name: "echo", listen: "127.0.0.1:0", upstream }),
                "a duplicate proxy name is refused");

  // A change that cannot be made is refused whole: the proxy keeps its
  // address and state, and no toxic is stored.
  const other = await toxiproxy.createProxy({ name: "other", listen: "127.0.0.1:0", upstream });
  await rejects(proxy.update({ enabled: true, listen: other.listen, upstream }),
                "moving onto a taken port is refused");
  const unmoved = await toxiproxy.get("echo");
  ok(unmoved.listen === proxy.listen && unmoved.enabled === true,
     `the refused move left the proxy on ${unmoved.listen}, enabled ${unmoved.enabled}`);
  await rejects(proxy.addToxic({ type: "latency", stream: "downstream", toxicity: 2,
                                 attributes: { latency: 1 } }), "toxicity 2 is refused");
  await rejects(proxy.addToxic({ type: "latency", name: "negative", stream: "downstream",
                                 toxicity: 1, attributes: { latency: -100 } }),
                "a negative latency is refused");
  await rejects(proxy.getToxic("latency_downstream"), "the toxic with toxicity 2 was not stored");
  await rejects(proxy.getToxic("negative"), "the toxic with a negative latency was not stored");
  await other.remove();

  const disabled = await proxy.update({ enabled: false, listen: proxy.listen, upstream });
  ok(disabled.enabled === false, "proxy.update enabled=false");
  err = null;
  try { await roundTrip(proxy.listen); } catch (e) { err = e; }
  ok(err && err.code === "ECONNREFUSED", `a disabled proxy refuses connections (${err && err.code})`);

  await toxiproxy.reset();
  const after = await toxiproxy.get("echo");
  ok(after.enabled === true, "reset enables the proxy");
  const again = await roundTrip(after.listen);
  ok(again < untouched, `reset removed the toxics (${again.toFixed(4)}s)`);

  const populated = await toxiproxy.populate([
    { name: "echo", listen: after.listen, upstream },
    // As the client's own TestHelper does: localhost, any port.
    { name: "second", listen: "localhost:0", upstream: `localhost:${upstreamPort}` },
  ]);
  ok(populated.echo && populated.second && /^127\.0\.0\.1:\d+$/.test(populated.second.listen),
     `populate two proxies (one kept, one new on ${populated.second && populated.second.listen})`);
  const all = await toxiproxy.getAll();
  ok(Object.keys(all).includes("second") && all.echo.listen === after.listen, "getAll");
  const t2 = await roundTrip(populated.second.listen);
  ok(t2 >= 0, "the populated proxy relays");

  await populated.second.remove();
  await rejects(toxiproxy.get("second"), "a removed proxy is gone (404)");
  await after.remove();
}

run(main);
