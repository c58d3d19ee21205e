// Generator headroom check (scenario S0): a bare Node `ws` server that writes pre-framed,
// coalesced text frames to every connected socket as fast as each socket drains, with no
// broker and no protocol. Whatever rate the load generator reads from it is the most any
// server can be credited with in this harness.
// Usage: node blaster.js PORT FRAMES_PER_WRITE SECONDS SOCKETS
'use strict';

const http = require('http');
const WebSocket = require('ws');

const [PORT, PER_WRITE, SECONDS, SOCKETS] = process.argv.slice(2).map(Number);
const payload = Buffer.from(
  JSON.stringify({
    event: 'dashboard_update',
    data: { s: 0, t: 0, p: 'x'.repeat(100) },
    id: '0123456789abcdef0123456789abcdef',
    ts: Date.now(),
    topic: 'sales',
  }),
);
const len = payload.length;
const head =
  len < 126 ? Buffer.from([0x81, len]) : Buffer.from([0x81, 126, len >> 8, len & 0xff]);
const framed = Buffer.concat([head, payload]);
const batch = Buffer.concat(Array(PER_WRITE).fill(framed));

const server = http.createServer((req, res) => {
  res.writeHead(200);
  res.end('ok');
});
const wss = new WebSocket.Server({ server, perMessageDeflate: false });
const sockets = new Set();
wss.on('connection', (ws) => {
  sockets.add(ws);
  ws.on('close', () => sockets.delete(ws));
  if (sockets.size >= SOCKETS && !blasting) start();
});
function start() {
  blasting = true;
  pump();
}
let blasting = false;
function pump() {
  if (!blasting) return;
  for (const ws of sockets) {
    const sock = ws._socket;
    if (sock && sock.writableLength < 64 * 1024) sock.write(batch);
  }
  setImmediate(pump);
}
// Start writing once every socket is in (or 20 s after the first); stop after SECONDS.
wss.once('connection', () => {
  setTimeout(() => blasting || start(), 20000);
});
setTimeout(() => process.exit(0), SECONDS * 1000).unref();
server.listen(PORT, '127.0.0.1');
