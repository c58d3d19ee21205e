// Load generator and publisher for scripts/bench (run with Node, `ws` and `amqplib`).
//
// One process holds every client socket (spread over several 127.0.0.x source addresses) and
// publishes through RabbitMQ with amqplib, exactly as a service would. Payloads carry the
// publisher's monotonic clock (performance.now() in microseconds, same process), so latency
// is end to end: publish -> broker -> server -> socket -> here.
//
// Config: one JSON argument (see scripts/benchkit/scenarios.py). Output: JSON lines on stdout;
// {"type": "mark", ...} lines let the orchestrator sample the server at phase boundaries,
// the last line is {"type": "result", ...}. The orchestrator may write "stop\n" on stdin.
// Every loop is bounded in count and in time; only loopback addresses are used.
'use strict';

const { performance } = require('perf_hooks');
const readline = require('readline');
const net = require('net');
const amqp = require('amqplib');
const jwt = require('jsonwebtoken');

const cfg = JSON.parse(process.argv[2]);
const HARD_DEADLINE_MS = (cfg.deadline_s || 120) * 1000;
setTimeout(() => {
  emit({ type: 'error', message: 'hard deadline reached' });
  process.exit(3);
}, HARD_DEADLINE_MS).unref();

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}
function log(...args) {
  process.stderr.write('[loadgen] ' + args.join(' ') + '\n');
}
const nowUs = () => Math.round(performance.now() * 1000);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- CPU of this process (to show the generator's headroom) ------------------------------
let cpuMark = null;
function cpuStart() {
  cpuMark = { cpu: process.cpuUsage(), t: performance.now() };
}
function cpuPercent() {
  const d = process.cpuUsage(cpuMark.cpu);
  const wall = performance.now() - cpuMark.t;
  return (100 * (d.user + d.system)) / 1000 / wall;
}

// ---- latency histogram: 10 us buckets up to 20 s ------------------------------------------
const BUCKET_US = 10;
const hist = new Uint32Array(2_000_001);
let histCount = 0;
function record(latUs) {
  let b = Math.floor(latUs / BUCKET_US);
  if (b < 0) b = 0;
  if (b >= hist.length) b = hist.length - 1;
  hist[b]++;
  histCount++;
}
function percentile(p) {
  if (!histCount) return null;
  const want = Math.ceil((p / 100) * histCount);
  let acc = 0;
  for (let i = 0; i < hist.length; i++) {
    acc += hist[i];
    if (acc >= want) return ((i + 0.5) * BUCKET_US) / 1000; // ms
  }
  return null;
}

// ---- frame scanning: find "s":<seq> and "t":<us> without JSON.parse ------------------------
const S_KEY = Buffer.from('"s":');
const T_KEY = Buffer.from('"t":');
function intAfter(buf, key, from) {
  const i = buf.indexOf(key, from);
  if (i < 0) return [-1, -1];
  let j = i + key.length;
  let v = 0;
  for (; j < buf.length; j++) {
    const c = buf[j];
    if (c < 48 || c > 57) break;
    v = v * 10 + (c - 48);
  }
  return [v, j];
}

// ---- sockets ------------------------------------------------------------------------------
const clients = [];
let open = 0;
let failed = 0;
let closedEarly = 0;
const closeCodes = {};
let deliveries = 0;
let measuring = false;
let windowDeliveries = 0;
let counts = null; // per-seq receipt counts (Uint32Array)
let onReceipt = null; // called with (seq) after counting

// Tokens are minted before any clock starts, so the generator's own signing never counts.
const tokens = [];
function mintTokens(n) {
  const exp = Math.floor(Date.now() / 1000) + 3600;
  for (let i = tokens.length; i < n; i++) {
    const user = cfg.users ? `u${i % cfg.users}` : `u${i}`;
    tokens.push(jwt.sign({ sub: user, exp }, cfg.secret, { algorithm: 'HS256' }));
  }
}
const tokenFor = (i) => tokens[i];

function onFrame(buf) {
  const [seq, after] = intAfter(buf, S_KEY, 0);
  if (seq < 0) return;
  const [t] = intAfter(buf, T_KEY, after);
  deliveries++;
  if (measuring) {
    windowDeliveries++;
    if (t >= 0) record(nowUs() - t);
  }
  if (counts && seq < counts.length) {
    counts[seq]++;
    if (onReceipt) onReceipt(seq);
  }
}

// A bare WebSocket client on a raw TCP socket: the handshake by hand, frames parsed in place
// from each chunk (no copy, no event per frame), client frames masked with a zero key (RFC 6455
// allows any key; servers only XOR). This costs the generator a fraction of what the `ws`
// client does per frame, so it can read several times what any server here writes.
const WS_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
function sendText(sock, text) {
  const payload = Buffer.from(text);
  const n = payload.length;
  let head;
  if (n < 126) head = Buffer.from([0x81, 0x80 | n, 0, 0, 0, 0]);
  else head = Buffer.from([0x81, 0x80 | 126, n >> 8, n & 0xff, 0, 0, 0, 0]);
  sock.write(Buffer.concat([head, payload]));
}
function sendControl(sock, opcode, payload) {
  sock.write(Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length, 0, 0, 0, 0]), payload]));
}

// `hooks` (optional): {onFrame(payload), onSocket(sock)} for a client that reads its own way
// (the slow readers of S7); the others count into the shared figures through onFrame.
function connectOne(i, hooks) {
  const frameOf = hooks && hooks.onFrame ? hooks.onFrame : onFrame;
  return new Promise((resolve) => {
    const src = cfg.src_addrs[i % cfg.src_addrs.length];
    const token = tokenFor(i);
    const nsp = '/' + cfg.namespace;
    const path =
      cfg.proto === 'native'
        ? `/ws/${cfg.namespace}?access_token=${token}`
        : '/socket.io/?EIO=4&transport=websocket';
    const opts = { port: cfg.port, host: '127.0.0.1', localAddress: src };
    if (hooks && hooks.readSize) {
      // Small reads (copied: the buffer is reused), so the kernel's receive buffer is not
      // autotuned up by large reads: a slow reader's backlog stays in the server's buffers.
      const readBuf = Buffer.alloc(hooks.readSize);
      opts.onread = { buffer: readBuf, callback: (n) => onData(Buffer.from(readBuf.subarray(0, n))) };
    }
    const sock = net.connect(opts);
    sock.setNoDelay(true);
    if (hooks && hooks.onSocket) hooks.onSocket(sock);
    let done = false;
    let upgraded = false;
    let pending = null; // bytes of an unfinished frame (or of the HTTP response)
    let closeCode = 1006; // until a close frame says otherwise
    const finish = (ok) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (ok) open++;
      else failed++;
      resolve(ok);
    };
    const timer = setTimeout(() => {
      finish(false);
      sock.destroy();
    }, cfg.handshake_timeout_ms || 30000);
    const onText = (payload) => {
      if (cfg.proto === 'native') {
        frameOf(payload);
        return;
      }
      const c = payload[0];
      if (c === 0x34 && payload[1] === 0x32) frameOf(payload); // 42/ns,["event",{...}]
      else if (c === 0x32 && payload.length === 1) sendText(sock, '3'); // ping -> pong
      else if (c === 0x30) sendText(sock, `40${nsp},${JSON.stringify({ token })}`); // CONNECT
      else if (c === 0x34 && payload[1] === 0x30) finish(true); // CONNECT ack
      else if (c === 0x34 && payload[1] === 0x34) finish(false); // CONNECT_ERROR
    };
    const parse = (buf) => {
      let off = 0;
      const end = buf.length;
      while (end - off >= 2) {
        const b0 = buf[off];
        let len = buf[off + 1] & 0x7f;
        let hdr = 2;
        if (len === 126) {
          if (end - off < 4) break;
          len = buf.readUInt16BE(off + 2);
          hdr = 4;
        } else if (len === 127) {
          if (end - off < 10) break;
          len = Number(buf.readBigUInt64BE(off + 2));
          hdr = 10;
        }
        if (end - off < hdr + len) break;
        const payload = buf.subarray(off + hdr, off + hdr + len);
        off += hdr + len;
        const opcode = b0 & 0x0f;
        if (opcode === 1 || opcode === 0) onText(payload);
        else if (opcode === 9) sendControl(sock, 0xa, payload); // ping -> pong
        else if (opcode === 8) {
          closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
          sock.end();
        }
      }
      pending = off < end ? buf.subarray(off) : null;
    };
    sock.on('connect', () => {
      sock.write(
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${cfg.port}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: ${WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    const onData = (chunk) => {
      const buf = pending ? Buffer.concat([pending, chunk]) : chunk;
      pending = null;
      if (upgraded) {
        parse(buf);
        return;
      }
      const endOfHead = buf.indexOf('\r\n\r\n');
      if (endOfHead < 0) {
        pending = buf;
        return;
      }
      if (buf.toString('latin1', 0, 12) !== 'HTTP/1.1 101') {
        finish(false);
        sock.destroy();
        return;
      }
      upgraded = true;
      if (cfg.proto === 'native') finish(true);
      if (endOfHead + 4 < buf.length) parse(buf.subarray(endOfHead + 4));
    };
    if (!opts.onread) sock.on('data', onData);
    sock.on('error', () => finish(false));
    sock.on('close', () => {
      if (done && !stopping && upgraded) {
        closedEarly++;
        closeCodes[closeCode] = (closeCodes[closeCode] || 0) + 1;
        if (open > 0) open--;
      }
      finish(false);
    });
    clients.push(sock);
  });
}

async function connectRange(from, to, concurrency, hooksOf) {
  const t0 = performance.now();
  let next = from;
  const workers = [];
  for (let w = 0; w < Math.min(concurrency, to - from); w++) {
    workers.push(
      (async () => {
        while (next < to && performance.now() - t0 < (cfg.connect_budget_s || 90) * 1000) {
          const i = next++;
          await connectOne(i, hooksOf ? hooksOf(i) : undefined);
        }
      })(),
    );
  }
  await Promise.all(workers);
  return (performance.now() - t0) / 1000;
}
const connectAll = (n, concurrency) => connectRange(0, n, concurrency);

let stopping = false;
function closeAll() {
  stopping = true;
  for (const ws of clients) {
    try {
      ws.destroy();
    } catch (e) {
      /* already gone */
    }
  }
}

// ---- AMQP publisher -----------------------------------------------------------------------
let conn = null;
let ch = null;
const PAD = 'x'.repeat(Math.max(0, cfg.pad || 0));
async function amqpOpen() {
  conn = await amqp.connect(cfg.amqp_url);
  ch = await conn.createChannel();
  await ch.assertExchange(cfg.exchange, 'topic', { durable: true });
}
function body(seq) {
  return Buffer.from(
    JSON.stringify({ event: cfg.event, data: { s: seq, t: nowUs(), p: PAD } }),
  );
}
async function publish(key, seq) {
  const ok = ch.publish(cfg.exchange, key, body(seq), {
    contentType: 'application/json',
    messageId: `m${seq}`,
    timestamp: Math.floor(Date.now() / 1000),
  });
  if (!ok) await new Promise((r) => ch.once('drain', r));
}

// ---- stdin: "stop" ------------------------------------------------------------------------
let stopRequested = null;
const stopped = new Promise((r) => (stopRequested = r));
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'stop') stopRequested();
  if (line.trim() === 'go' && goResolve) goResolve();
});
process.stdin.on('end', () => stopRequested());

// ---- phases -------------------------------------------------------------------------------
// Step through cfg.steps socket counts; at each, emit a "step" mark and wait for "go"
// (the orchestrator samples the server's RSS), then hold until "stop".
let goResolve = null;
async function phaseIdle() {
  const t0 = performance.now();
  let have = 0;
  for (const step of cfg.steps) {
    await connectRange(have, step, cfg.concurrency);
    have = step;
    await sleep(cfg.settle_ms || 1000);
    const go = new Promise((r) => (goResolve = r));
    emit({ type: 'mark', name: 'step', open, failed });
    await Promise.race([go, sleep(10000)]);
  }
  const secs = (performance.now() - t0) / 1000;
  return { open, failed, closed_early: closedEarly, close_codes: closeCodes, connect_s: secs };
}

async function phaseStorm() {
  cpuStart();
  const secs = await connectAll(cfg.sockets, cfg.concurrency);
  return {
    open,
    failed,
    connect_s: secs,
    rate: open / secs,
    loadgen_cpu_pct: cpuPercent(),
  };
}

// Closed loop: at most `window` messages in flight; a message is done once every live target
// socket has it. Runs warmup_s unmeasured, then measure_s measured.
async function phaseClosedLoop(keyOf, perMessage) {
  await connectAll(cfg.sockets, cfg.concurrency);
  if (open < cfg.sockets) log(`only ${open}/${cfg.sockets} sockets open`);
  await sleep(cfg.settle_ms || 1000);
  await amqpOpen();
  const maxMsgs = cfg.max_messages || 2_000_000;
  counts = new Uint32Array(maxMsgs);
  const target = () => (perMessage === 'all' ? open : perMessage);
  let seq = 0;
  let inFlight = 0;
  let nextDone = 0;
  let wake = null;
  const done = new Uint8Array(maxMsgs);
  onReceipt = (s) => {
    if (!done[s] && counts[s] >= target()) {
      done[s] = 1;
      inFlight--;
      if (wake) {
        const w = wake;
        wake = null;
        w();
      }
    }
  };
  const t0 = performance.now();
  const warmEnd = t0 + cfg.warmup_s * 1000;
  const end = warmEnd + cfg.measure_s * 1000;
  let wStart = null;
  let published = 0;
  let windowPublished = 0;
  while (seq < maxMsgs) {
    const now = performance.now();
    if (now >= end) break;
    if (!measuring && now >= warmEnd) {
      measuring = true;
      windowDeliveries = 0;
      wStart = now;
      cpuStart();
      emit({ type: 'mark', name: 'start' });
    }
    if (inFlight >= cfg.window) {
      // Wait for a completion, but never forever: a lost message frees its slot after 2 s.
      const timedOut = await new Promise((r) => {
        wake = () => r(false);
        setTimeout(() => r(true), Math.max(1, Math.min(2000, end - now)));
      });
      wake = null;
      if (timedOut && inFlight >= cfg.window) {
        while (nextDone < seq && done[nextDone]) nextDone++;
        if (nextDone < seq && performance.now() < end) {
          done[nextDone] = 1;
          inFlight--;
        }
      }
      continue;
    }
    inFlight++;
    published++;
    if (measuring) windowPublished++;
    await publish(keyOf(seq), seq);
    seq++;
  }
  const wEnd = performance.now();
  const cpu = measuring ? cpuPercent() : null;
  emit({ type: 'mark', name: 'end' });
  measuring = false;
  const secs = wStart === null ? 0 : (wEnd - wStart) / 1000;
  return {
    open,
    failed,
    closed_early: closedEarly,
    close_codes: closeCodes,
    published,
    messages_per_s: windowPublished / secs,
    window_deliveries: windowDeliveries,
    deliveries_per_s: windowDeliveries / secs,
    p50_ms: percentile(50),
    p99_ms: percentile(99),
    loadgen_cpu_pct: cpu,
    window: cfg.window,
  };
}

// Burst (S4b): publish every message as fast as the publisher can, then wait until every
// target socket has each one (or grace_s passed). Throughput-bound, like a backlog that
// builds up in the broker: deliveries/s = deliveries / (first publish -> last delivery).
async function phaseBurst(keyOf, perMessage) {
  await connectAll(cfg.sockets, cfg.concurrency);
  if (open < cfg.sockets) log(`only ${open}/${cfg.sockets} sockets open`);
  await sleep(cfg.settle_ms || 1000);
  await amqpOpen();
  const total = cfg.max_messages;
  counts = new Uint32Array(total);
  const expected = total * perMessage;
  measuring = true;
  windowDeliveries = 0;
  cpuStart();
  emit({ type: 'mark', name: 'start' });
  const t0 = performance.now();
  for (let seq = 0; seq < total; seq++) await publish(keyOf(seq), seq);
  const pubEnd = performance.now();
  const graceEnd = pubEnd + (cfg.grace_s || 30) * 1000;
  while (windowDeliveries < expected && performance.now() < graceEnd) await sleep(5);
  const end = performance.now();
  const cpu = cpuPercent();
  emit({ type: 'mark', name: 'end' });
  measuring = false;
  const secs = (end - t0) / 1000;
  return {
    open,
    failed,
    closed_early: closedEarly,
    close_codes: closeCodes,
    published: total,
    publish_s: (pubEnd - t0) / 1000,
    delivered_fraction: windowDeliveries / expected,
    window_deliveries: windowDeliveries,
    deliveries_per_s: windowDeliveries / secs,
    p50_ms: percentile(50),
    p99_ms: percentile(99),
    loadgen_cpu_pct: cpu,
  };
}

// Open loop at a fixed rate (S3): publish `rate` messages per second for measure_s.
async function phaseRate() {
  await connectAll(cfg.sockets, cfg.concurrency);
  await sleep(cfg.settle_ms || 1000);
  await amqpOpen();
  const t0 = performance.now();
  const total = Math.round(cfg.rate * cfg.measure_s);
  let seq = 0;
  measuring = true;
  cpuStart();
  emit({ type: 'mark', name: 'start' });
  while (seq < total) {
    const due = Math.floor(((performance.now() - t0) / 1000) * cfg.rate);
    while (seq < due && seq < total) await publish(cfg.key, seq++);
    await sleep(2);
  }
  const pubEnd = performance.now();
  const expected = total * open;
  const graceEnd = pubEnd + (cfg.grace_s || 3) * 1000;
  while (windowDeliveries < expected && performance.now() < graceEnd) await sleep(20);
  const cpu = cpuPercent();
  emit({ type: 'mark', name: 'end' });
  measuring = false;
  const secs = (pubEnd - t0) / 1000;
  return {
    open,
    failed,
    closed_early: closedEarly,
    close_codes: closeCodes,
    offered_deliveries_per_s: (cfg.rate * open),
    delivered_fraction: expected ? windowDeliveries / expected : null,
    window_deliveries: windowDeliveries,
    deliveries_per_s: windowDeliveries / ((performance.now() - t0) / 1000),
    publish_s: secs,
    p50_ms: percentile(50),
    p99_ms: percentile(99),
    p999_ms: percentile(99.9),
    loadgen_cpu_pct: cpu,
  };
}

// Conflation (S7): `sockets` dashboard clients that keep up and `slow_sockets` that read at
// 1/slow_divisor of the publish rate; `rate` messages/s round-robin over `topics` topics
// (dashboard.t<seq % topics>) for measure_s. Latency is recorded for the fast clients only.
// Afterwards the slow clients keep reading at their pace for up to drain_s: each should end
// with the last value of every topic, and never see an older value of a topic after a newer.
// What waits for a slow client below the server's own buffer (the kernel's send and receive
// buffers, which TCP autotunes) is a backlog no server can conflate, so `slow_behind_s` (how
// old the newest value a slow client had read was when publishing stopped) and `drain_s`
// (how long until every slow client was current) show how much each server added to it.
async function phaseConflate() {
  const T = cfg.topics;
  const fastN = cfg.sockets;
  const slowN = cfg.slow_sockets || 0;
  const perTick = cfg.rate / cfg.slow_divisor / 10; // frames per 100 ms per slow client
  const slow = [];
  const hooksOf = (i) => {
    const st = { sock: null, last: new Int32Array(T).fill(-1), frames: 0, older: 0, credit: perTick, paused: false, closed: false };
    slow.push(st);
    return {
      readSize: 4096,
      onSocket: (sock) => {
        st.sock = sock;
        sock.on('close', () => (st.closed = true));
      },
      onFrame: (buf) => {
        const [seq] = intAfter(buf, S_KEY, 0);
        if (seq < 0) return;
        const topic = seq % T;
        if (seq <= st.last[topic]) st.older++;
        else st.last[topic] = seq;
        st.frames++;
        st.credit--;
        if (st.credit <= 0 && !st.paused && st.sock) {
          st.paused = true;
          st.sock.pause(); // the kernel's buffers fill behind it, then the server's
        }
      },
    };
  };
  const ticker = setInterval(() => {
    for (const st of slow) {
      st.credit = Math.min(st.credit + perTick, 2 * perTick);
      if (st.credit > 0 && st.paused && st.sock) {
        st.paused = false;
        st.sock.resume();
      }
    }
  }, 100);
  await connectAll(fastN, cfg.concurrency);
  const fastOpen = open;
  if (slowN) await connectRange(fastN, fastN + slowN, cfg.concurrency, hooksOf);
  const slowOpen = open - fastOpen;
  await sleep(cfg.settle_ms || 1000);
  await amqpOpen();
  const lastSeq = new Int32Array(T).fill(-1);
  const total = Math.round(cfg.rate * cfg.measure_s);
  let seq = 0;
  const t0 = performance.now();
  measuring = true;
  cpuStart();
  emit({ type: 'mark', name: 'start' });
  while (seq < total) {
    const due = Math.floor(((performance.now() - t0) / 1000) * cfg.rate);
    while (seq < due && seq < total) {
      lastSeq[seq % T] = seq;
      await publish(`dashboard.t${seq % T}`, seq++);
    }
    await sleep(2);
  }
  const pubEnd = performance.now();
  const newest = total - 1;
  const behind = slow
    .filter((st) => !st.closed)
    .map((st) => (newest - Math.max(...st.last)) / cfg.rate)
    .sort((a, b) => a - b);
  const expected = total * fastOpen;
  const graceEnd = pubEnd + (cfg.grace_s || 3) * 1000;
  while (windowDeliveries < expected && performance.now() < graceEnd) await sleep(20);
  const cpu = cpuPercent();
  emit({ type: 'mark', name: 'end' });
  measuring = false;
  const current = (st) => st.last.every((v, t) => v === lastSeq[t]);
  const drainEnd = performance.now() + (cfg.drain_s || 20) * 1000;
  while (performance.now() < drainEnd && !slow.every((st) => st.closed || current(st))) await sleep(50);
  const drainS = (performance.now() - pubEnd) / 1000;
  emit({ type: 'mark', name: 'drained' });
  clearInterval(ticker);
  const live = slow.filter((st) => !st.closed);
  return {
    fast_open: fastOpen,
    slow_open: slowOpen,
    failed,
    closed_early: closedEarly,
    close_codes: closeCodes,
    offered_deliveries_per_s: cfg.rate * fastOpen,
    delivered_fraction: expected ? windowDeliveries / expected : null,
    p50_ms: percentile(50),
    p99_ms: percentile(99),
    p999_ms: percentile(99.9),
    slow_connected: live.length,
    slow_behind_s: behind.length ? behind[Math.floor(behind.length / 2)] : null,
    slow_behind_max_s: behind.length ? behind[behind.length - 1] : null,
    slow_current: live.filter(current).length,
    slow_older_after_newer: slow.reduce((a, st) => a + st.older, 0),
    slow_frames_per_client: slow.length ? slow.reduce((a, st) => a + st.frames, 0) / slow.length : null,
    published: total,
    drain_s: drainS,
    loadgen_cpu_pct: cpu,
  };
}

// Ingest (S5): no sockets; publish `messages` as fast as amqplib takes them while polling the
// server's consumed-message counter; the server's rate comes from the counter.
async function phaseIngest() {
  await amqpOpen();
  const http = require('http');
  const poll = () =>
    new Promise((resolve) => {
      const req = http.get(cfg.stats_url, (res) => {
        let text = '';
        res.on('data', (c) => (text += c));
        res.on('end', () => {
          const re = new RegExp(cfg.stats_regex, 'gm');
          let total = 0;
          let m;
          while ((m = re.exec(text)) !== null) total += Number(m[1]);
          resolve(total);
        });
      });
      req.on('error', () => resolve(NaN));
      req.setTimeout(2000, () => req.destroy());
    });
  const base = await poll();
  const n = cfg.messages;
  const samples = [];
  let pubDone = false;
  let pubSecs = 0;
  const t0 = performance.now();
  cpuStart();
  emit({ type: 'mark', name: 'start' });
  (async () => {
    for (let s = 0; s < n; s++) await publish(cfg.key, s);
    pubSecs = (performance.now() - t0) / 1000;
    pubDone = true;
  })();
  const deadline = t0 + cfg.measure_budget_s * 1000;
  while (performance.now() < deadline) {
    await sleep(100);
    const c = (await poll()) - base;
    samples.push([(performance.now() - t0) / 1000, c]);
    if (c >= n) break;
  }
  const cpu = cpuPercent();
  emit({ type: 'mark', name: 'end' });
  // Rate between 10 % and 90 % of the messages (excludes start-up and the tail).
  const at = (frac) => samples.find(([, c]) => c >= frac * n);
  const a = at(0.1);
  const b = at(0.9);
  const last = samples[samples.length - 1] || [0, 0];
  return {
    messages: n,
    consumed: last[1],
    consume_per_s: a && b && b[0] > a[0] ? (b[1] - a[1]) / (b[0] - a[0]) : null,
    publish_per_s: pubDone ? n / pubSecs : null,
    loadgen_cpu_pct: cpu,
  };
}

// Headroom (S0): read whatever the blaster sends for measure_s and count frames.
async function phaseSink() {
  await connectAll(cfg.sockets, cfg.concurrency);
  await sleep(cfg.settle_ms || 2000);
  measuring = true;
  windowDeliveries = 0;
  cpuStart();
  const t0 = performance.now();
  emit({ type: 'mark', name: 'start' });
  await sleep(cfg.measure_s * 1000);
  const secs = (performance.now() - t0) / 1000;
  const cpu = cpuPercent();
  emit({ type: 'mark', name: 'end' });
  measuring = false;
  return { open, failed, deliveries_per_s: windowDeliveries / secs, loadgen_cpu_pct: cpu };
}

async function main() {
  mintTokens(Math.max((cfg.sockets || 0) + (cfg.slow_sockets || 0), ...(cfg.steps || [0])));
  let result;
  if (cfg.phase === 'idle') result = await phaseIdle();
  else if (cfg.phase === 'storm') result = await phaseStorm();
  else if (cfg.phase === 'broadcast') result = await phaseClosedLoop(() => cfg.key, 'all');
  else if (cfg.phase === 'targeted') {
    // Random users; every user has sockets/users sockets.
    const per = Math.round(cfg.sockets / cfg.users);
    let rnd = 12345;
    const users = new Uint32Array(cfg.max_messages);
    for (let i = 0; i < users.length; i++) {
      rnd = (rnd * 1103515245 + 12345) >>> 0;
      users[i] = rnd % cfg.users;
    }
    const keyOf = (s) => `notification.user.u${users[s]}`;
    result = cfg.burst ? await phaseBurst(keyOf, per) : await phaseClosedLoop(keyOf, per);
  } else if (cfg.phase === 'rate') result = await phaseRate();
  else if (cfg.phase === 'ingest') result = await phaseIngest();
  else if (cfg.phase === 'sink') result = await phaseSink();
  else if (cfg.phase === 'conflate') result = await phaseConflate();
  else throw new Error(`unknown phase ${cfg.phase}`);
  emit({ type: 'result', ...result });
  closeAll();
  if (conn) await conn.close().catch(() => {});
  process.exit(0);
}

main().catch((e) => {
  emit({ type: 'error', message: String(e && e.stack ? e.stack : e) });
  process.exit(2);
});
