// One control-API step with toxiproxy's Node client, for
// tests/functional/admin_workers_spec.lua (which checks the traffic):
//
//   node workers_cli.js http://ADMIN create NAME UPSTREAM   -> prints the listen address
//   node workers_cli.js http://ADMIN latency NAME MS        -> prints the toxic's name
//   node workers_cli.js http://ADMIN untoxic NAME TOXIC
//   node workers_cli.js http://ADMIN delete NAME
//
// Exits non-zero with the error on stderr if the step fails.
"use strict";
const { Toxiproxy } = require("toxiproxy-node-client");

async function main() {
  const [admin, cmd, name, arg] = process.argv.slice(2);
  const toxiproxy = new Toxiproxy(admin);
  if (cmd === "create") {
    const proxy = await toxiproxy.createProxy({ name, listen: "127.0.0.1:0", upstream: arg });
    console.log(proxy.listen);
  } else if (cmd === "latency") {
    const proxy = await toxiproxy.get(name);
    const toxic = await proxy.addToxic({ type: "latency", stream: "downstream", toxicity: 1,
                                         attributes: { latency: Number(arg), jitter: 0 } });
    console.log(toxic.name);
  } else if (cmd === "untoxic") {
    const proxy = await toxiproxy.get(name);
    await (await proxy.getToxic(arg)).remove();
  } else if (cmd === "delete") {
    await (await toxiproxy.get(name)).remove();
  } else {
    throw new Error(`unknown step ${cmd}`);
  }
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
