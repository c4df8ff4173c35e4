// echokit's aimed faults through toxiproxy's Node client, which knows nothing
// of them: its addToxic passes the extension types and attributes (match,
// client) through, and its listing still reads them. Prints TAP-style lines;
// exits 0 only if every step passed.
//
//   node aimed_test.js http://127.0.0.1:ADMIN ECHO_PORT HTTP_PORT [SLOW]
//
// ECHO_PORT is a line echo server, HTTP_PORT Python's http.server (whose
// request log the calling spec checks: it must never see /api/).
"use strict";
const http = require("http");
const { Toxiproxy } = require("toxiproxy-node-client");
const { ok, split, rejects, roundTrip: rt, run } = require("./tap");

const [admin, echoPort, httpPort, slowArg] = process.argv.slice(2);
const slow = Number(slowArg || 1);
const roundTrip = (listen, localAddress) => rt(listen, { localAddress, slow });

// GET path through listen: resolves { status, body }.
function get(listen, path) {
  const { host, port } = split(listen);
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path, agent: false, timeout: 5000 * slow }, (res) => {
      let body = "";
      res.on("data", (d) => { body += d; });
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
  });
}

async function main() {
  const toxiproxy = new Toxiproxy(admin);

  // http_status on /api/* only
  const web = await toxiproxy.createProxy({ name: "web", listen: "127.0.0.1:0",
                                            upstream: `127.0.0.1:${httpPort}` });
  const t503 = await web.addToxic({ type: "http_status", stream: "upstream", toxicity: 1,
                                    attributes: { status: 503, body: "injected\n",
                                                  match: { http: { path: "/api/*" } } } });
  ok(t503.name === "http_status_upstream" && t503.attributes.match.http.path === "/api/*",
     "addToxic http_status with match.http.path");
  const api = await get(web.listen, "/api/x");
  ok(api.status === 503 && api.body === "injected\n", `/api/x answered ${api.status} by the toxic`);
  const other = await get(web.listen, "/static/y");
  ok(other.status === 200 && other.body === "static file\n", `/static/y passes (${other.status})`);
  const again = await web.getToxic("http_status_upstream");
  ok(again.type === "http_status" && again.attributes.status === 503 &&
     again.attributes.match.http.path === "/api/*", "getToxic reads the extension toxic");
  const listed = await (await fetch(`${admin}/proxies/web/toxics`)).json();
  ok(listed.length === 1 && listed[0].type === "http_status", "GET /proxies/web/toxics lists it");

  // latency aimed at one client
  const echo = await toxiproxy.createProxy({ name: "echo", listen: "127.0.0.1:0",
                                             upstream: `127.0.0.1:${echoPort}` });
  await echo.addToxic({ type: "latency", stream: "downstream", toxicity: 1,
                        attributes: { latency: 200, jitter: 0, client: "127.0.0.2/32" } });
  const aimed = await roundTrip(echo.listen, "127.0.0.2");
  const spared = await roundTrip(echo.listen, "127.0.0.1");
  ok(aimed >= 0.19 && spared < aimed,
     `latency with client=127.0.0.2/32: ${aimed.toFixed(4)}s from .2, ${spared.toFixed(4)}s from .1`);
  const lat = await echo.getToxic("latency_downstream");
  await lat.remove();

  // refuse from one client; limit_time with RST
  await echo.addToxic({ type: "refuse", stream: "downstream", toxicity: 1,
                        attributes: { client: "127.0.0.2" } });
  let err = null;
  try { await roundTrip(echo.listen, "127.0.0.2"); } catch (e) { err = e; }
  ok(err && (err.code === "ECONNRESET" || /closed/.test(err.message)),
     `refuse resets the aimed client (${err && (err.code || err.message)})`);
  const fine = await roundTrip(echo.listen, "127.0.0.1");
  ok(fine >= 0, "refuse spares another client");
  await (await echo.getToxic("refuse_downstream")).remove();

  await echo.addToxic({ type: "slow_open", stream: "upstream", toxicity: 1,
                        attributes: { delay: 300 } });
  const opened = await roundTrip(echo.listen, "127.0.0.1");
  ok(opened >= 0.29, `slow_open 300 ms (${opened.toFixed(4)}s)`);
  await (await echo.getToxic("slow_open_upstream")).remove();

  // malformed extensions: 400, nothing stored
  await rejects(web.addToxic({ type: "drop_message", name: "bad1", stream: "upstream", toxicity: 1,
                               attributes: { match: { http: { path: 5 } } } }),
                "a malformed matcher is refused", /400/);
  await rejects(echo.addToxic({ type: "latency", name: "bad2", stream: "upstream", toxicity: 1,
                                attributes: { latency: 1, client: "10.0.0.0/99" } }),
                "a malformed client range is refused", /400/);
  await rejects(echo.addToxic({ type: "loss", name: "bad3", stream: "upstream", toxicity: 1,
                                attributes: { probability: 3 } }),
                "a probability over 1 is refused", /400/);
  await rejects(web.getToxic("bad1"), "the refused matcher was not stored", /404/);
  await rejects(echo.getToxic("bad2"), "the refused client range was not stored", /404/);
  await rejects(echo.getToxic("bad3"), "the refused probability was not stored", /404/);

  await web.remove();
  await echo.remove();
}

run(main);
