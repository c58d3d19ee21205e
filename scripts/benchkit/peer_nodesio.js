// Peer for scripts/bench: the original stack, Node socket.io v4 fed by an amqplib consumer.
// Written as its documentation shows it: JWT checked in a namespace middleware, one room per
// user, io.of(ns).to(room).emit(...) per event, one ack per message. Same envelope as the
// gateway: {"event", "data", "id", "ts", "topic"}.
// Usage: node peer_nodesio.js PORT AMQP_URL EXCHANGE SECRET
'use strict';

const http = require('http');
const { Server } = require('socket.io');
const amqp = require('amqplib');
const jwt = require('jsonwebtoken');

const [PORT, AMQP_URL, EXCHANGE, SECRET] = process.argv.slice(2);
const stats = { events: 0 };

const server = http.createServer((req, res) => {
  if (req.url === '/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(stats));
  }
});
const io = new Server(server, { cors: { origin: '*' } });

function auth(socket, next) {
  try {
    const claims = jwt.verify(socket.handshake.auth.token, SECRET, { algorithms: ['HS256'] });
    if (typeof claims.sub !== 'string' || !claims.exp) throw new Error('bad claims');
    socket.data.user = claims.sub;
    next();
  } catch (e) {
    next(new Error('unauthorized'));
  }
}
const dashboard = io.of('/dashboard');
dashboard.use(auth);
const notifications = io.of('/notifications');
notifications.use(auth);
notifications.on('connection', (socket) => socket.join(`user:${socket.data.user}`));
dashboard.on('connection', () => {});

async function consume() {
  const conn = await amqp.connect(AMQP_URL);
  const ch = await conn.createChannel();
  await ch.prefetch(256);
  await ch.assertExchange(EXCHANGE, 'topic', { durable: true });
  const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true });
  await ch.bindQueue(queue, EXCHANGE, 'dashboard.#');
  await ch.bindQueue(queue, EXCHANGE, 'notification.#');
  await ch.consume(queue, (msg) => {
    stats.events++;
    try {
      const payload = JSON.parse(msg.content.toString());
      const key = msg.fields.routingKey;
      const envelope = { data: payload.data, id: msg.properties.messageId, ts: Date.now() };
      if (key.startsWith('dashboard.')) {
        envelope.topic = key.slice('dashboard.'.length);
        dashboard.emit(payload.event || 'dashboard_update', envelope);
      } else if (key.startsWith('notification.user.')) {
        const room = 'user:' + key.slice('notification.user.'.length);
        notifications.to(room).emit(payload.event || 'notification_new', envelope);
      }
    } finally {
      ch.ack(msg);
    }
  });
}

consume().then(
  () => server.listen(Number(PORT), '127.0.0.1'),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
