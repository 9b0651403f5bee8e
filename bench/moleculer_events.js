"use strict";
// Moleculer's balanced events on the NATS transporter, for bench/events.py's kill -9 scenario.
// Loopback only. Needs moleculer 0.14 and nats 2 where node finds them (NODE_PATH).
//
//   node bench/moleculer_events.js consumer NODE_ID     prints "READY", then "H <n>" per event
//   node bench/moleculer_events.js emitter COUNT RATE   emits COUNT events at RATE per second
//
// Moleculer defaults everywhere (heartbeat 10 s, heartbeat timeout 30 s, round-robin).
const { ServiceBroker } = require("moleculer");

const url = process.env.NATS_URL || "nats://127.0.0.1:4222";
if (!["127.0.0.1", "localhost", "::1"].includes(new URL(url).hostname)) {
	throw new Error(`refusing non-loopback NATS_URL ${url}`);
}

function broker(nodeID) {
	return new ServiceBroker({
		nodeID,
		transporter: { type: "NATS", options: { url } },
		logLevel: "warn"
	});
}

async function consumer(nodeID) {
	const b = broker(nodeID);
	b.createService({
		name: "mail",
		events: {
			// A balanced event: one instance of "mail" gets each (Moleculer's default group).
			"user.created"(ctx) {
				process.stdout.write(`H ${ctx.params.n}\n`);
			}
		}
	});
	await b.start();
	process.stdout.write("READY\n");
}

async function emitter(count, rate) {
	const b = broker("emitter");
	await b.start();
	await b.waitForServices("mail");
	// Both consumers known before the first event (INFO packets of the second may follow).
	const deadline = Date.now() + 10000;
	while (b.registry.getNodeList({ onlyAvailable: true }).length < 3 && Date.now() < deadline) {
		await new Promise((r) => setTimeout(r, 50));
	}
	process.stdout.write("EMITTING\n");
	const start = Date.now();
	for (let n = 0; n < count; n++) {
		const due = start + (n * 1000) / rate;
		const wait = due - Date.now();
		if (wait > 0) await new Promise((r) => setTimeout(r, wait));
		b.emit("user.created", { n });
	}
	await new Promise((r) => setTimeout(r, 500));
	process.stdout.write("EMITTED\n");
	await b.stop();
}

const [mode, a, c] = process.argv.slice(2);
if (mode === "consumer") consumer(a);
else if (mode === "emitter") emitter(Number(a), Number(c));
else throw new Error("usage: consumer NODE_ID | emitter COUNT RATE");
