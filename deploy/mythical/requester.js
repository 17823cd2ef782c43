// mythical-requester, shaped like the intro-to-mltp lab's: calls the server
// in a loop (GET, POST, DELETE on a random beast) with a hand-made W3C
// `traceparent` header, and publishes each call as a message to the RabbitMQ
// queue `messages` (default exchange). No OpenTelemetry code here.
// Environment: SERVER_URL (http://127.0.0.1:4000), AMQP_URL
// (amqp://guest:guest@127.0.0.1:5672), PORT (4001, serves GET /metrics),
// REQUEST_INTERVAL_MS (pause between calls, 100), NAMELESS_POST_RATIO (0.1),
// UNKNOWN_BEAST_RATIO (0.02).
const http = require('http');
const crypto = require('crypto');
const amqp = require('amqplib');
const { BEASTS } = require('./beasts');
const { connectAmqp, QUEUE } = require('./queue');

const server = new URL(process.env.SERVER_URL || 'http://127.0.0.1:4000');
const interval = Number(process.env.REQUEST_INTERVAL_MS ?? 100);
const namelessRatio = Number(process.env.NAMELESS_POST_RATIO ?? 0.1);
const unknownRatio = Number(process.env.UNKNOWN_BEAST_RATIO ?? 0.02);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const counts = { calls: 0, failures: 0, published: 0 };
// Names inserted and not yet deleted, per beast (bounded).
const names = new Map(BEASTS.map((b) => [b, []]));

function call(method, path, body) {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const headers = { traceparent: `00-${crypto.randomBytes(16).toString('hex')}-${crypto.randomBytes(8).toString('hex')}-01` };
  if (payload !== undefined) {
    headers['content-type'] = 'application/json';
    headers['content-length'] = Buffer.byteLength(payload);
  }
  return new Promise((resolve) => {
    const req = http.request(
      { host: server.hostname, port: server.port, method, path, headers, agent },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      },
    );
    req.setTimeout(10000, () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(0));
    req.end(payload);
  });
}

function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}

async function once(channel) {
  const beast = Math.random() < unknownRatio ? 'dragon' : pick(BEASTS);
  const known = names.get(beast) ?? [];
  const roll = Math.random();
  let method;
  let body;
  if (roll < 0.5) {
    method = 'GET';
  } else if (roll < 0.8 || known.length === 0) {
    method = 'POST';
    const name = `${beast}-${crypto.randomBytes(6).toString('hex')}`;
    body = Math.random() < namelessRatio ? {} : { name };
    if (body.name && known.length < 1000) known.push(name);
  } else {
    method = 'DELETE';
    body = { name: known.splice(Math.floor(Math.random() * known.length), 1)[0] };
  }
  const status = await call(method, `/${beast}`, body);
  counts.calls++;
  if (status === 0 || status >= 500) counts.failures++;
  const message = JSON.stringify({ method, beast, status, at: Date.now() });
  channel.sendToQueue(QUEUE, Buffer.from(message));
  counts.published++;
}

async function main() {
  const channel = await connectAmqp(amqp, 'mythical-requester');
  http
    .createServer((req, res) => {
      res.setHeader('content-type', 'text/plain; version=0.0.4');
      res.end(
        `mythical_requester_calls_total ${counts.calls}\nmythical_requester_failures_total ${counts.failures}\n` +
          `mythical_requester_published_total ${counts.published}\n`,
      );
    })
    .listen(Number(process.env.PORT || 4001), '127.0.0.1');
  for (;;) {
    await once(channel);
    if (interval > 0) await new Promise((r) => setTimeout(r, interval));
  }
}

main().catch((e) => {
  console.error(`mythical-requester: ${e.message}`);
  process.exit(1);
});
