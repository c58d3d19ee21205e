// Drives the real socket.io-client v4 for the Python tests (tests/socketio/driver.py).
//
// Commands arrive on stdin, one JSON object a line:
//   {"op": "connect", "name": "a", "url": "http://127.0.0.1:PORT/notifications", "opts": {...}}
//   {"op": "emit", "name": "a", "event": "notification_read", "args": [...], "ref": 1}
//       ("ref" present: the last argument is an ack callback, answered as an "ack" line)
//   {"op": "close", "name": "a"}   {"op": "exit"}
//   ({"$binary": "<base64>"} anywhere in the args is sent as a Buffer: a binary attachment.)
// Everything that happens comes back on stdout, one JSON object a line, each with "seq"
// (the order of arrival) and the socket's "name":
//   connect {id, transport} · connect_error {message, data} · disconnect {reason}
//   event {event, args} · ack {ref, args} · upgrade {transport} · reconnect_attempt {attempt}
// socket.io-client is loaded from SIO_NODE_MODULES (the tests install it there).
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const require = createRequire(path.join(process.env.SIO_NODE_MODULES, "noop.js"));
const { io } = require("socket.io-client");

const sockets = new Map();
let seq = 0;

function out(line) {
  process.stdout.write(JSON.stringify({ seq: seq++, ...line }) + "\n");
}

function connect({ name, url, opts }) {
  const socket = io(url, opts || {});
  sockets.set(name, socket);
  const manager = socket.io;
  socket.on("connect", () => {
    out({ name, type: "connect", id: socket.id, transport: manager.engine.transport.name });
  });
  socket.on("connect_error", (err) => {
    out({ name, type: "connect_error", message: err.message, data: err.data ?? null });
  });
  socket.on("disconnect", (reason) => out({ name, type: "disconnect", reason }));
  socket.onAny((event, ...args) => out({ name, type: "event", event, args }));
  manager.on("reconnect_attempt", (attempt) => out({ name, type: "reconnect_attempt", attempt }));
  manager.on("open", () => {
    manager.engine.on("upgrade", (transport) => {
      out({ name, type: "upgrade", transport: transport.name });
    });
  });
}

function emit({ name, event, args, ref }) {
  const socket = sockets.get(name);
  if (ref === undefined || ref === null) {
    socket.emit(event, ...(args || []));
  } else {
    socket.emit(event, ...(args || []), (...answer) => out({ name, type: "ack", ref, args: answer }));
  }
}

function close({ name }) {
  const socket = sockets.get(name);
  if (socket) {
    socket.disconnect();
    sockets.delete(name);
  }
  out({ name, type: "closed" });
}

function exit() {
  for (const socket of sockets.values()) socket.disconnect();
  process.exit(0);
}

const ops = { connect, emit, close, exit };
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  try {
    // {"$binary": "<base64>"} stands for a Buffer (a binary attachment).
    const command = JSON.parse(line, (_, v) =>
      v && typeof v === "object" && typeof v.$binary === "string" ? Buffer.from(v.$binary, "base64") : v,
    );
    ops[command.op](command);
  } catch (err) {
    out({ type: "fatal", message: String(err && err.stack ? err.stack : err) });
  }
});
process.stdin.on("end", exit);
out({ type: "ready" });
