// The RabbitMQ side shared by requester and recorder: queue `messages` on
// the default exchange, connection retried while the broker starts.
const QUEUE = 'messages';

async function connectAmqp(amqp, who) {
  const url = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672';
  const deadline = Date.now() + 60000;
  for (;;) {
    try {
      const conn = await amqp.connect(url);
      conn.on('error', (e) => console.error(`${who}: amqp: ${e.message}`));
      conn.on('close', () => {
        console.error(`${who}: amqp connection closed`);
        process.exit(1);
      });
      const channel = await conn.createChannel();
      await channel.assertQueue(QUEUE, { durable: false });
      return channel;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

module.exports = { QUEUE, connectAmqp };
