// Load client for tests/socketio/bench.py: N sockets of one kind, counting broadcasts.
// stdin: one JSON line {"url", "kind": "native"|"sio-ws"|"sio-poll", "tokens": [...], "expect": K}
// stdout: {"ready": N} once every socket is connected, then one summary line once every
// socket got K notification_new events (latency = arrival - the event's ts, in ms; on
// Socket.IO, ts is in the second argument, the metadata).
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const require = createRequire(path.join(process.env.SIO_NODE_MODULES, "noop.js"));
const { io } = require("socket.io-client");
const WebSocket = require("ws");

const rl = readline.createInterface({ input: process.stdin });
rl.once("line", (line) => run(JSON.parse(line)));

function run({ url, kind, tokens, expect }) {
  const latencies = [];
  let connected = 0;
  let done = 0;
  let first = null;
  const onEvent = (counts, i, frame) => {
    const now = Date.now();
    first ??= now;
    latencies.push(now - frame.ts);
    if (++counts[i] === expect && ++done === tokens.length) summary(now);
  };
  const counts = new Array(tokens.length).fill(0);
  const onConnect = () => {
    if (++connected === tokens.length) console.log(JSON.stringify({ ready: connected }));
  };
  tokens.forEach((token, i) => {
    if (kind === "native") {
      const ws = new WebSocket(`${url.replace("http", "ws")}/ws/notifications?access_token=${token}`);
      ws.on("open", onConnect);
      ws.on("message", (data) => {
        const frame = JSON.parse(data);
        if (frame.event === "notification_new") onEvent(counts, i, frame);
      });
    } else {
      const opts = { auth: { token }, forceNew: true, reconnection: false };
      if (kind === "sio-ws") opts.transports = ["websocket"];
      const socket = io(`${url}/notifications`, opts);
      socket.on("connect", onConnect);
      socket.on("connect_error", (err) => console.log(JSON.stringify({ error: err.message })));
      socket.on("notification_new", (data, meta) => onEvent(counts, i, meta));
    }
  });
  function summary(last) {
    latencies.sort((a, b) => a - b);
    const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
    console.log(JSON.stringify({
      deliveries: latencies.length, p50_ms: q(0.5), p99_ms: q(0.99), max_ms: latencies.at(-1),
      spread_ms: last - first,
    }));
    process.exit(0);
  }
}
