// Unit tests of service/static/realtime.js with node's test runner and a scripted WebSocket:
// the paths a browser test cannot force on cue (ack timeouts, 4001, explicit empty
// subscriptions, copies around a resume). Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  RealtimeClient,
  RealtimeError,
  backoffDelay,
  jwtClaims,
} from "../../service/static/realtime.js";

const WAIT_MS = 2000;

function jwt(claims) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.sig`;
}

/** A WebSocket the test drives: open(), receive(frame), drop(code). */
class FakeSocket {
  static all = [];

  constructor(url) {
    this.url = new URL(url);
    this.sent = [];
    this.readyState = 0;
    this.waiters = [];
    FakeSocket.all.push(this);
  }

  send(text) {
    this.sent.push(JSON.parse(text));
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  close(code = 1000, reason = "") {
    this.drop(code, reason);
  }

  open() {
    this.readyState = 1;
    this.onopen?.();
  }

  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  drop(code = 1006, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Resolves with the n-th frame sent (0-based), once it is sent. */
  async frame(n) {
    const deadline = Date.now() + WAIT_MS;
    while (this.sent.length <= n) {
      assert.ok(Date.now() < deadline, `frame ${n} never sent (sent: ${JSON.stringify(this.sent)})`);
      await new Promise((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
    return this.sent[n];
  }

  /** Answer the n-th frame with an ack. */
  async ack(n, data = {}) {
    const frame = await this.frame(n);
    this.receive({ event: "ack", ack: frame.ack, data });
    return frame;
  }
}

function once(client, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} event`)), WAIT_MS);
    const off = client.on(event, (data) => {
      clearTimeout(timer);
      off();
      resolve(data);
    });
  });
}

async function nextSocket(count) {
  const deadline = Date.now() + WAIT_MS;
  while (FakeSocket.all.length < count) {
    assert.ok(Date.now() < deadline, "the client did not open a socket");
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  return FakeSocket.all[count - 1];
}

/** A client on FakeSocket, closed when the test ends (pass or fail). */
function makeClient(t, namespace, options = {}) {
  FakeSocket.all = [];
  const tokens = [];
  const client = new RealtimeClient(namespace, {
    url: "ws://gateway.test",
    WebSocket: FakeSocket,
    backoffInitialMs: 1,
    backoffMaxMs: 4,
    getToken: async () => {
      const token = jwt({ sub: "42", iat: 0, exp: 3600, n: tokens.length });
      tokens.push(token);
      return token;
    },
    ...options,
  });
  t.after(() => client.close());
  return { client, tokens };
}

test("backoff: equal jitter, exponential, capped", () => {
  const opts = { initialMs: 100, maxMs: 1000, factor: 2 };
  assert.equal(backoffDelay(0, opts, () => 0), 50);
  assert.equal(backoffDelay(0, opts, () => 1), 100);
  assert.equal(backoffDelay(3, opts, () => 0.5), 600);
  assert.equal(backoffDelay(30, opts, () => 1), 1000);
});

test("jwtClaims reads the payload", () => {
  assert.deepEqual(jwtClaims(jwt({ sub: "7", exp: 9 })), { sub: "7", exp: 9 });
  assert.deepEqual(jwtClaims("not-a-jwt"), {});
});

test("requests settle with the ack, the error, a timeout or the disconnect", async (t) => {
  const { client } = makeClient(t, "notifications", { ackTimeoutMs: 30 });
  client.connect();
  const ws = await nextSocket(1);
  assert.equal(ws.url.pathname, "/ws/notifications");
  assert.ok(ws.url.searchParams.get("access_token"));
  ws.open();

  const ok = client.markRead("n1");
  await ws.ack(0, { id: "n1" });
  assert.deepEqual(await ok, { id: "n1" });

  const refused = client.request("notification_read", { id: "" });
  const frame = await ws.frame(1);
  ws.receive({ event: "error", ack: frame.ack, error: { code: "bad_request", message: "no" } });
  await assert.rejects(refused, (err) => err instanceof RealtimeError && err.code === "bad_request");

  await assert.rejects(client.request("auth", { token: "x" }), { code: "timeout" });

  const cut = client.markRead("n2");
  ws.drop(1006);
  await assert.rejects(cut, { code: "disconnected" });
  client.close();
});

test("after a reconnect: the chosen topics, then a refresh", async (t) => {
  const { client } = makeClient(t, "dashboard");
  client.subscribe(["sales", "visitors"]); // before connecting: applied on connect
  client.connect();
  let ws = await nextSocket(1);
  ws.open();
  assert.deepEqual(await ws.ack(0, { topics: ["sales", "visitors"] }), {
    event: "subscribe",
    data: { topics: ["sales", "visitors"] },
    ack: 1,
  });
  assert.equal((await ws.ack(1, { topics: [] })).event, "dashboard_refresh");
  const unsubscribed = client.unsubscribe(["visitors"]);
  assert.deepEqual((await ws.ack(2, { topics: ["sales"] })).data, { topics: ["visitors"] });
  assert.deepEqual(await unsubscribed, { topics: ["sales"] });

  const reconnecting = once(client, "reconnecting");
  ws.drop(1006);
  assert.equal((await reconnecting).attempt, 1);
  ws = await nextSocket(2);
  const restored = once(client, "restored");
  ws.open();
  const subscribe = await ws.ack(0, { topics: ["sales"] });
  assert.deepEqual(subscribe.data, { topics: ["sales"] });
  assert.deepEqual((await ws.ack(1, { topics: ["sales"] })).data, {});
  assert.deepEqual(await restored, { topics: ["sales"] });
  assert.equal(client.stats.reconnects, 1);
  client.close();
});

test("an explicit empty subscription stays empty after a reconnect", async (t) => {
  const { client } = makeClient(t, "dashboard");
  await client.unsubscribe(["*"]);
  client.connect();
  const ws = await nextSocket(1);
  ws.open();
  assert.deepEqual((await ws.ack(0, { topics: [] })).data, { topics: ["*"] });
  assert.equal((await ws.frame(0)).event, "unsubscribe");
  client.close();
});

test("a failed restore starts over", async (t) => {
  const { client } = makeClient(t, "dashboard", { ackTimeoutMs: 20 });
  client.subscribe(["sales"]);
  client.connect();
  const ws = await nextSocket(1);
  ws.open(); // never acks the subscribe
  await nextSocket(2);
  assert.equal(ws.readyState, 3);
  client.close();
});

test("notifications: since = the last offset, copies dropped, reset when not recovered", async (t) => {
  const { client } = makeClient(t, "notifications");
  const seen = [];
  client.on("notification_new", (data, frame) => seen.push(frame.id));
  client.connect();
  let ws = await nextSocket(1);
  assert.equal(ws.url.searchParams.get("since"), null);
  ws.open();
  ws.receive({ event: "notification_new", data: {}, id: "a", ts: 1, offset: 5 });
  ws.receive({ event: "notification_read", data: { id: "a" }, id: "r", ts: 2, offset: 7 });
  ws.drop(1006);
  ws = await nextSocket(2);
  assert.equal(ws.url.searchParams.get("since"), "7");
  ws.open();
  ws.receive({ event: "notification_new", data: {}, id: "a", ts: 1, offset: 5 }); // a copy
  ws.receive({ event: "notification_new", data: {}, id: "b", ts: 3, offset: 8 });
  const reset = once(client, "reset");
  ws.receive({ event: "resumed", data: { recovered: false, replayed: 0 } });
  assert.deepEqual(await reset, { recovered: false, replayed: 0 });
  assert.deepEqual(seen, ["a", "b"]);
  assert.equal(client.lastOffset, 8);
  client.close();
});

test("4001 reconnects at once with a fresh token", async (t) => {
  const { client, tokens } = makeClient(t, "notifications", { backoffInitialMs: 60_000 });
  client.connect();
  let ws = await nextSocket(1);
  ws.open();
  ws.drop(4001, "token expired");
  ws = await nextSocket(2); // not after a minute of backoff
  assert.equal(tokens.length, 2);
  assert.equal(ws.url.searchParams.get("access_token"), tokens[1]);
  client.close();
});

test("the token is refreshed with `auth` before it expires", async (t) => {
  let n = 0;
  const { client } = makeClient(t, "notifications", {
    // 0.2 s tokens: refreshed after half their life, on the open socket
    getToken: async () => jwt({ sub: "42", iat: 0, exp: 0.2, n: n++ }),
  });
  client.connect();
  const ws = await nextSocket(1);
  ws.open();
  const auth = await ws.frame(0);
  assert.equal(auth.event, "auth");
  assert.equal(jwtClaims(auth.data.token).n, 1);
  const refreshed = once(client, "token");
  ws.receive({ event: "ack", ack: auth.ack, data: { exp: 0.2 } });
  assert.deepEqual(await refreshed, { exp: 0.2 });
  assert.equal(client.stats.refreshes, 1);
  assert.equal(FakeSocket.all.length, 1);
  client.close();
});

test("close() stops for good", async (t) => {
  const { client } = makeClient(t, "notifications");
  client.connect();
  const ws = await nextSocket(1);
  ws.open();
  client.close();
  assert.equal(ws.readyState, 3);
  assert.equal(client.state, "closed");
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(FakeSocket.all.length, 1);
});
