// mythical-requester, shaped like the intro-to-mltp lab's: calls the server
// (GET, POST, DELETE on a random beast) with a hand-made W3C `traceparent`
// header, and publishes each call as a message to the RabbitMQ queue
// `messages` (default exchange). No OpenTelemetry code here.
//
// Two load shapes (MYTHICAL_LOAD):
//   loop (default): one call at a time, REQUEST_INTERVAL_MS apart, a fresh
//     traceparent per call, one keep-alive connection.
//   lab: the lab requester's own shape. Four chains start LAB_START_MS,
//     +1 s, +2 s, +3 s after startup; each chain fires a call WITHOUT waiting
//     for it and schedules its next one; a counter shared by the chains
//     cycles through LAB_BURST_CALLS iterations 0-50 ms apart (a burst of
//     ~160 req/s) then LAB_CALM_CALLS 100-1100 ms apart. Each iteration is a
//     GET (then, with a probability that grows with the beast's index, a
//     DELETE of the first name returned) or a POST of a new name; the GET and
//     its DELETE are sent with the SAME header object (one traceparent); each
//     answered call is published. Node's default agent: a new connection
//     whenever none is free, no client timeout. LAB_MAX_CALLS > 0 stops
//     after that many iterations (tests).
// Environment: SERVER_URL (http://127.0.0.1:4000), AMQP_URL
// (amqp://guest:guest@127.0.0.1:5672), PORT (4001, serves GET /metrics),
// REQUEST_INTERVAL_MS (loop: pause between calls, 100), NAMELESS_POST_RATIO
// (0.1), UNKNOWN_BEAST_RATIO (loop: 0.02), MYTHICAL_TAG_REQUESTS (1: every
// call carries `?rid=<n>`, a request id tests use as ground truth; the
// published message names it too), MYTHICAL_TRACEPARENT (0: no `traceparent`
// header at all, so that a link between the requester's and the server's
// spans can only come from periscope matching the connection's two ends).
const http = require('http');
const crypto = require('crypto');
const amqp = require('amqplib');
const { BEASTS } = require('./beasts');
const { connectAmqp, QUEUE } = require('./queue');

const env = (name, fallback) => Number(process.env[name] ?? fallback);
// LISTEN_ADDRESS: where it listens (0.0.0.0, so that other containers can
// reach it; the demo and the tests run it with 127.0.0.1).
const listenAddress = process.env.LISTEN_ADDRESS || '0.0.0.0';
const server = new URL(process.env.SERVER_URL || 'http://127.0.0.1:4000');
const load = process.env.MYTHICAL_LOAD || 'loop';
const interval = env('REQUEST_INTERVAL_MS', 100);
const namelessRatio = env('NAMELESS_POST_RATIO', 0.1);
const unknownRatio = env('UNKNOWN_BEAST_RATIO', load === 'lab' ? 0 : 0.02);
const tagRequests = process.env.MYTHICAL_TAG_REQUESTS === '1';
const sendTraceparent = process.env.MYTHICAL_TRACEPARENT !== '0';
const counts = { calls: 0, failures: 0, published: 0, issued: 0, done: 0 };
// Names inserted and not yet deleted, per beast (bounded).
const names = new Map(BEASTS.map((b) => [b, []]));
let nextRid = 1;

// The headers of one call (or of one lab iteration): a fresh traceparent, or none.
function traceHeaders() {
  return sendTraceparent ? { traceparent: traceparent() } : {};
}

function traceparent() {
  return `00-${crypto.randomBytes(16).toString('hex')}-${crypto.randomBytes(8).toString('hex')}-01`;
}

// One HTTP call; resolves with { status, body } (status 0: it failed).
function call(method, beast, body, headers, agent, timeoutMs) {
  const rid = tagRequests ? nextRid++ : 0;
  const path = rid ? `/${beast}?rid=${rid}` : `/${beast}`;
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const h = { ...headers };
  if (payload !== undefined) {
    h['content-type'] = 'application/json';
    h['content-length'] = Buffer.byteLength(payload);
  }
  return new Promise((resolve) => {
    const req = http.request({ host: server.hostname, port: server.port, method, path, headers: h, agent }, (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(parts), rid }));
    });
    if (timeoutMs) req.setTimeout(timeoutMs, () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve({ status: 0, body: Buffer.alloc(0), rid }));
    req.end(payload);
  });
}

function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}

function publish(channel, text, rid) {
  const message = JSON.stringify({ call: text, rid: rid || undefined, at: Date.now() });
  channel.sendToQueue(QUEUE, Buffer.from(message));
  counts.published++;
}

function answered(method, beast, r, channel) {
  counts.calls++;
  if (r.status === 0 || r.status >= 500) counts.failures++;
  if (r.status !== 0) publish(channel, `${method} /${beast} ${r.status}`, r.rid);
}

// --- loop: one call at a time -------------------------------------------

const loopAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });

async function loopOnce(channel) {
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
  const r = await call(method, beast, body, traceHeaders(), loopAgent, 10000);
  answered(method, beast, r, channel);
}

async function loop(channel) {
  for (;;) {
    await loopOnce(channel);
    if (interval > 0) await new Promise((res) => setTimeout(res, interval));
  }
}

// --- lab: the lab requester's shape -------------------------------------

const burstCalls = env('LAB_BURST_CALLS', 2000);
const calmCalls = env('LAB_CALM_CALLS', 1000);
const maxCalls = env('LAB_MAX_CALLS', 0);
let counter = 0;

async function labIteration(channel) {
  const index = Math.floor(Math.random() * BEASTS.length);
  const beast = Math.random() < unknownRatio ? 'dragon' : BEASTS[index];
  // One header object for the whole iteration, as the lab's requester does.
  const headers = traceHeaders();
  if (Math.random() < 0.5) {
    const r = await call('GET', beast, undefined, headers, undefined, 0);
    answered('GET', beast, r, channel);
    let rows = [];
    try {
      rows = JSON.parse(r.body.toString() || '[]');
    } catch {
      rows = [];
    }
    if (r.status === 200 && rows.length > 0 && Math.random() * 100 < (index / BEASTS.length) * 100) {
      const d = await call('DELETE', beast, { name: rows[0].name }, headers, undefined, 0);
      answered('DELETE', beast, d, channel);
    }
  } else {
    const name = `${beast}-${crypto.randomBytes(6).toString('hex')}`;
    const body = Math.random() < namelessRatio ? {} : { name };
    const r = await call('POST', beast, body, headers, undefined, 0);
    answered('POST', beast, r, channel);
  }
}

function labChain(channel) {
  if (maxCalls > 0 && counts.issued >= maxCalls) return;
  counts.issued++;
  // Fired, not awaited: the chain goes on whether or not the server keeps up.
  labIteration(channel)
    .catch((e) => console.error(`mythical-requester: ${e.message}`))
    .finally(() => counts.done++);
  counter = (counter + 1) % (burstCalls + calmCalls);
  const next = counter < burstCalls ? Math.floor(Math.random() * 50) : Math.floor(Math.random() * 1000) + 100;
  setTimeout(() => labChain(channel), next);
}

function lab(channel) {
  const start = env('LAB_START_MS', 5000);
  const go = () => {
    for (let i = 0; i < 4; i++) setTimeout(() => labChain(channel), start + i * 1000);
  };
  if (process.env.LAB_WAIT_STDIN === '1') {
    // Tests: the clock starts when a line arrives on stdin.
    process.stdin.once('data', go);
  } else {
    go();
  }
}

async function main() {
  const channel = await connectAmqp(amqp, 'mythical-requester');
  http
    .createServer((req, res) => {
      res.setHeader('content-type', 'text/plain; version=0.0.4');
      res.end(
        `mythical_requester_calls_total ${counts.calls}\nmythical_requester_failures_total ${counts.failures}\n` +
          `mythical_requester_published_total ${counts.published}\nmythical_requester_issued_total ${counts.issued}\n` +
          `mythical_requester_done_total ${counts.done}\n`,
      );
    })
    .listen(Number(process.env.PORT || 4001), listenAddress);
  if (load === 'lab') {
    lab(channel);
  } else {
    await loop(channel);
  }
}

main().catch((e) => {
  console.error(`mythical-requester: ${e.message}`);
  process.exit(1);
});
