// mythical-recorder, shaped like the intro-to-mltp lab's: consumes the
// RabbitMQ queue `messages`, spends 20-1500 ms of work on each, acks it.
// No OpenTelemetry code here.
// Environment: AMQP_URL (amqp://guest:guest@127.0.0.1:5672), PORT (4002,
// serves GET /metrics), RECORDER_WORK_MIN_MS (20), RECORDER_WORK_MAX_MS (1500),
// RECORDER_PREFETCH (messages in work at once, 100; 0: no limit, as the lab's
// recorder, which never sets one: the broker then pushes every queued message),
// RECORDER_BUSY_MS (0: CPU time spent synchronously on each message as it
// arrives, like the lab's logging and SDK work; the broker's deliveries then
// pile up in the socket and arrive many per read).
const http = require('http');
const amqp = require('amqplib');
const { connectAmqp, QUEUE } = require('./queue');

// LISTEN_ADDRESS: where it listens (0.0.0.0, so that other containers can
// reach it; the demo and the tests run it with 127.0.0.1).
const listenAddress = process.env.LISTEN_ADDRESS || '0.0.0.0';

const minMs = Number(process.env.RECORDER_WORK_MIN_MS ?? 20);
const maxMs = Math.max(minMs, Number(process.env.RECORDER_WORK_MAX_MS ?? 1500));
const prefetch = Number(process.env.RECORDER_PREFETCH ?? 100);
const busyMs = Number(process.env.RECORDER_BUSY_MS ?? 0);
const counts = { received: 0, acked: 0 };

async function main() {
  const channel = await connectAmqp(amqp, 'mythical-recorder');
  if (prefetch > 0) await channel.prefetch(prefetch);
  await channel.consume(QUEUE, (msg) => {
    if (msg === null) return; // queue deleted
    counts.received++;
    for (const until = Date.now() + busyMs; Date.now() < until; );
    const work = minMs + Math.random() * (maxMs - minMs);
    setTimeout(() => {
      channel.ack(msg);
      counts.acked++;
    }, work);
  });
  http
    .createServer((req, res) => {
      res.setHeader('content-type', 'text/plain; version=0.0.4');
      res.end(`mythical_recorder_received_total ${counts.received}\nmythical_recorder_acked_total ${counts.acked}\n`);
    })
    .listen(Number(process.env.PORT || 4002), listenAddress);
}

main().catch((e) => {
  console.error(`mythical-recorder: ${e.message}`);
  process.exit(1);
});
