// A web app written for the original NestJS gateway, unchanged: socket.io-client v4 with the
// handlers its pages had (one parameter, fields read directly), driven by tests/socketio.
//
//   dashboard.on("dashboard_update", (data) => chart.update(data.sales));
//   notifications.on("notification_new", (n) => toast(n.title));
//   notifications.emit("notification_read", { id }, (answer) => ...);
//   socket.on("connect_error", (err) => ...);
//
// Commands on stdin, one JSON object a line (the driver is tests/socketio/driver.py):
//   {"op": "open", "name": "tab", "url": "http://127.0.0.1:PORT", "token": "...", "opts": {...}}
//       (no "token": the app connects without `auth`, as the original allowed)
//   {"op": "read", "name": "tab", "id": "n-1"}        mark a notification read, with an ack
//   {"op": "update", "name": "tab", "payload": {...}}  emit its own dashboard_update, with an ack
//   {"op": "notify", "name": "tab", "payload": {...}}  emit its own notification_new, with an ack
//   {"op": "exit"}
// What the app shows comes back on stdout, one JSON object a line with "seq" and "name":
//   connect {ns} · connect_error {ns, message, code, status} · chart {sales} · toast {title}
//   read_elsewhere {id} · problem {code, message} · read_ack / update_ack / notify_ack {answer}
// A field the handler reads from an argument that does not have it is missing from the line.
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const require = createRequire(path.join(process.env.SIO_NODE_MODULES, "noop.js"));
const { io } = require("socket.io-client");

const apps = new Map();
let seq = 0;

function out(line) {
  process.stdout.write(JSON.stringify({ seq: seq++, ...line }) + "\n");
}

function open({ name, url, token, opts }) {
  const options = { reconnection: false, ...(opts || {}) };
  if (token !== undefined && token !== null) options.auth = { token };
  const dashboard = io(`${url}/dashboard`, options);
  const notifications = io(`${url}/notifications`, options);
  for (const [ns, socket] of [["dashboard", dashboard], ["notifications", notifications]]) {
    socket.on("connect", () => out({ name, type: "connect", ns }));
    socket.on("connect_error", (err) =>
      out({ name, type: "connect_error", ns, message: err.message, code: err.data?.code, status: err.data?.status }),
    );
    socket.on("error", (problem) => out({ name, type: "problem", ns, code: problem.code, message: problem.message }));
  }
  // The original pages' handlers.
  dashboard.on("dashboard_update", (data) => out({ name, type: "chart", sales: data.sales }));
  notifications.on("notification_new", (n) => out({ name, type: "toast", title: n.title }));
  notifications.on("notification_read", (n) => out({ name, type: "read_elsewhere", id: n.id }));
  apps.set(name, { dashboard, notifications });
}

function read({ name, id }) {
  apps.get(name).notifications.emit("notification_read", { id }, (answer) => out({ name, type: "read_ack", answer }));
}

function update({ name, payload }) {
  apps.get(name).dashboard.emit("dashboard_update", payload, (answer) => out({ name, type: "update_ack", answer }));
}

function notify({ name, payload }) {
  apps.get(name).notifications.emit("notification_new", payload, (answer) => out({ name, type: "notify_ack", answer }));
}

function exit() {
  for (const app of apps.values()) {
    app.dashboard.disconnect();
    app.notifications.disconnect();
  }
  process.exit(0);
}

const ops = { open, read, update, notify, exit };
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  try {
    const command = JSON.parse(line);
    ops[command.op](command);
  } catch (err) {
    out({ type: "fatal", message: String(err && err.stack ? err.stack : err) });
  }
});
process.stdin.on("end", exit);
out({ type: "ready" });
