// The demo page: two RealtimeClients (dashboard, notifications) and a little DOM.
// Query parameters: `user` (default: the demo user), `ttl` (token lifetime in seconds).
import { RealtimeClient } from "./realtime.js";

const MAX_POINTS = 60;
const LOG_LINES = 12;
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function log(text) {
  const time = new Date().toLocaleTimeString();
  $("log").prepend(el("li", {}, el("time", {}, time), " ", text));
  while ($("log").children.length > LOG_LINES) $("log").lastElementChild.remove();
}

// -- charts -----------------------------------------------------------------------------

class Chart {
  constructor(topic) {
    this.topic = topic;
    this.points = []; // [ts, value]
    this.lastId = null;
    this.line = svg("polyline", { class: "line", points: "" });
    this.value = el("span", { className: "value" }, "–");
    const plot = svg("svg", { viewBox: "0 0 300 100", preserveAspectRatio: "none", class: "plot" });
    plot.append(svg("line", { x1: 0, y1: 100, x2: 300, y2: 100, class: "axis" }), this.line);
    this.node = el(
      "figure",
      { className: "chart", dataset: { topic, points: "0" } },
      el("figcaption", {}, el("span", { className: "topic" }, topic), this.value),
      plot,
    );
  }

  add(frame) {
    if (frame.id && frame.id === this.lastId) return; // a refresh re-sends the last value
    this.lastId = frame.id;
    const value = Number(frame.data?.value);
    if (!Number.isFinite(value)) return;
    this.points.push([frame.ts, value]);
    if (this.points.length > MAX_POINTS) this.points.shift();
    this.node.dataset.points = String(Number(this.node.dataset.points) + 1);
    this.value.textContent = `${value.toLocaleString()} ${frame.data.unit || ""}`;
    this.draw();
  }

  draw() {
    const values = this.points.map(([, v]) => v);
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    const span = hi - lo || 1;
    const step = 300 / (MAX_POINTS - 1);
    const offset = MAX_POINTS - this.points.length;
    const coords = this.points.map(
      ([, v], i) => `${((offset + i) * step).toFixed(1)},${(95 - ((v - lo) / span) * 90).toFixed(1)}`,
    );
    this.line.setAttribute("points", coords.join(" "));
  }

  set visible(on) {
    this.node.hidden = !on;
  }
}

// -- notifications ----------------------------------------------------------------------

const notifications = new Map(); // id -> <li>

function updateUnread() {
  const unread = [...notifications.values()].filter((li) => li.classList.contains("unread"));
  $("unread").textContent = String(unread.length);
  $("unread").dataset.count = String(unread.length);
  $("empty").hidden = notifications.size > 0;
}

function markReadLocally(id) {
  const li = notifications.get(id);
  if (!li || li.classList.contains("read")) return;
  li.classList.replace("unread", "read");
  li.querySelector("button").disabled = true;
  li.querySelector("button").textContent = "read";
  updateUnread();
}

function addNotification(client, frame) {
  if (notifications.has(frame.id)) return;
  const data = frame.data || {};
  const button = el("button", { type: "button", className: "mark-read" }, "Mark read");
  const li = el(
    "li",
    { className: "notification unread", dataset: { id: frame.id } },
    el("div", {}, el("b", { className: "title" }, String(data.title ?? "Notification")), " ",
      el("span", { className: "body" }, String(data.body ?? JSON.stringify(data)))),
    el("time", {}, new Date(frame.ts || Date.now()).toLocaleTimeString()),
    button,
  );
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await client.markRead(frame.id);
      markReadLocally(frame.id);
    } catch (err) {
      button.disabled = false;
      log(`mark read failed: ${err.code || ""} ${err.message}`);
    }
  });
  notifications.set(frame.id, li);
  $("notification-list").prepend(li);
  updateUnread();
}

// -- status -----------------------------------------------------------------------------

function showStatus(clients) {
  const states = clients.map((c) => c.state);
  let state = "connecting";
  let text = "connecting…";
  if (states.every((s) => s === "open")) [state, text] = ["live", "live"];
  else if (states.includes("reconnecting")) [state, text] = ["reconnecting", "reconnecting…"];
  else if (states.every((s) => s === "closed")) [state, text] = ["offline", "offline"];
  $("status").dataset.state = state;
  $("status").textContent = text;
}

// -- wiring -----------------------------------------------------------------------------

async function main() {
  const info = await (await fetch("info", { cache: "no-store" })).json();
  const user = params.get("user") || info.user;
  const ttl = params.get("ttl");
  $("user").textContent = user;

  async function getToken() {
    const query = new URLSearchParams({ sub: user });
    if (ttl) query.set("ttl", ttl);
    const response = await fetch(`token?${query}`, { cache: "no-store" });
    if (!response.ok) throw new Error(`token endpoint answered ${response.status}`);
    return (await response.json()).token;
  }

  const dashboard = new RealtimeClient("dashboard", { getToken });
  const inbox = new RealtimeClient("notifications", { getToken });
  const clients = [dashboard, inbox];
  window.demo = { dashboard, notifications: inbox }; // for the console (and the browser test)

  const charts = new Map(info.topics.map((topic) => [topic, new Chart(topic)]));
  for (const chart of charts.values()) $("charts").append(chart.node);
  for (const topic of info.topics) {
    const box = el("input", { type: "checkbox", checked: true, dataset: { topic } });
    box.addEventListener("change", async () => {
      charts.get(topic).visible = box.checked;
      try {
        const result = box.checked
          ? await dashboard.subscribe([topic])
          : await dashboard.unsubscribe([topic]);
        log(`${box.checked ? "subscribed to" : "unsubscribed from"} ${topic}` +
          (result.pending ? " (applied on reconnect)" : ""));
      } catch (err) {
        log(`${topic}: ${err.code || ""} ${err.message}`);
      }
    });
    $("topics").append(el("label", { className: "toggle" }, box, " ", topic));
  }
  dashboard.subscribe(info.topics); // explicit from the start, restored after reconnects

  dashboard.on("dashboard_update", (data, frame) => charts.get(frame.topic)?.add(frame));
  inbox.on("notification_new", (data, frame) => addNotification(inbox, frame));
  inbox.on("notification_read", (data) => data && markReadLocally(data.id));
  inbox.on("resumed", (data) => log(`notifications resumed: ${JSON.stringify(data)}`));
  inbox.on("reset", () => log("missed notifications could not be recovered"));

  for (const client of clients) {
    const name = client.namespace;
    client.on("state", () => showStatus(clients));
    client.on("open", ({ reconnect }) => log(`${name}: ${reconnect ? "reconnected" : "connected"}`));
    client.on("close", ({ code }) => log(`${name}: closed (${code})`));
    client.on("reconnecting", ({ attempt, delayMs }) =>
      log(`${name}: retry ${attempt} in ${(delayMs / 1000).toFixed(1)} s`));
    client.on("restored", ({ topics }) => topics && log(`${name}: topics ${topics.join(", ")}`));
    client.on("token", () => log(`${name}: token refreshed`));
    client.on("error", (err) => log(`${name}: ${err.code || "error"} ${err.message}`));
    client.connect();
  }
  showStatus(clients);
}

main().catch((err) => {
  $("status").dataset.state = "offline";
  $("status").textContent = "failed";
  log(`demo failed to start: ${err.message}`);
});
