// mythical-server, shaped like the intro-to-mltp lab's: Express 5 on :4000,
// PostgreSQL through ONE long-lived `pg` Client. No OpenTelemetry code here.
//   GET    /:beast  SELECT name from <beast>                     (simple protocol)
//   POST   /:beast  INSERT INTO <beast>(name) VALUES ($1)  -> 201 (extended protocol;
//                   a body without name fails NOT NULL      -> 500)
//   DELETE /:beast  DELETE FROM <beast> WHERE name = $1    -> 204
//   unknown beast -> 404; GET /metrics -> a few counters as Prometheus text.
// Database: the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD,
// PGDATABASE (read by `pg` itself; database `postgres` by default).
// For tests and the lab's load on a fast machine:
//   MYTHICAL_DB_DELAY_MS (0): every statement also sleeps this long in
//     PostgreSQL (a one-time filter `(SELECT count(*) FROM pg_sleep(s)) = 1`),
//     standing in for the lab's crowded host: the one client's queue then
//     backs up under the burst and requests last many seconds.
//   MYTHICAL_TAG_QUERIES (1): a request's `?rid=<n>` is appended to its
//     statement as `/* rid=<n> */` (ground truth for tests).
const express = require('express');
const { Client } = require('pg');
const { BEASTS } = require('./beasts');

const port = Number(process.env.PORT || 4000);
// LISTEN_ADDRESS: where it listens (0.0.0.0, so that other containers can
// reach it; the demo and the tests run it with 127.0.0.1).
const listenAddress = process.env.LISTEN_ADDRESS || '0.0.0.0';
const counts = { requests: 0, errors: 0 };
const db = new Client({ database: process.env.PGDATABASE || 'postgres' });
const delayMs = Number(process.env.MYTHICAL_DB_DELAY_MS || 0);
const tagQueries = process.env.MYTHICAL_TAG_QUERIES === '1';

// The statement for `sql` (the lab's text), with the optional delay filter
// (`join`: WHERE or AND) and request tag.
function statement(req, sql, join) {
  let text = sql;
  if (delayMs > 0) text += ` ${join} (SELECT count(*) FROM pg_sleep(${delayMs / 1000})) = 1`;
  const rid = Number(req.query?.rid);
  if (tagQueries && Number.isInteger(rid) && rid > 0) text += ` /* rid=${rid} */`;
  return text;
}

const app = express();
app.use(express.json());

app.get('/metrics', (req, res) => {
  res.type('text/plain; version=0.0.4').send(
    `# TYPE mythical_requests_total counter\nmythical_requests_total ${counts.requests}\n` +
      `# TYPE mythical_errors_total counter\nmythical_errors_total ${counts.errors}\n`,
  );
});

// Every beast route: count it, refuse beasts that have no table.
app.use('/:beast', (req, res, next) => {
  counts.requests++;
  if (!BEASTS.includes(req.params.beast)) {
    res.status(404).json({ error: `no such beast: ${req.params.beast}` });
    return;
  }
  next();
});

// Express 5 passes a rejected promise to the error handler below.
app.get('/:beast', async (req, res) => {
  const result = await db.query(statement(req, `SELECT name from ${req.params.beast}`, 'WHERE'));
  res.json(result.rows);
});

app.post('/:beast', async (req, res) => {
  const insert =
    delayMs > 0
      ? statement(req, `INSERT INTO ${req.params.beast}(name) SELECT $1::varchar`, 'WHERE')
      : statement(req, `INSERT INTO ${req.params.beast}(name) VALUES ($1)`, '');
  await db.query(insert, [req.body?.name]);
  res.status(201).end();
});

app.delete('/:beast', async (req, res) => {
  await db.query(statement(req, `DELETE FROM ${req.params.beast} WHERE name = $1`, 'AND'), [req.body?.name]);
  res.status(204).end();
});

app.use((err, req, res, next) => {
  counts.errors++;
  res.status(500).json({ error: err.message });
});

async function main() {
  await db.connect();
  for (const beast of BEASTS) {
    await db.query(`CREATE TABLE IF NOT EXISTS ${beast}(id serial PRIMARY KEY, name VARCHAR (50) UNIQUE NOT NULL);`);
  }
  // A lost database connection is fatal, as with the lab's single client.
  db.on('error', (e) => {
    console.error(`mythical-server: database connection lost: ${e.message}`);
    process.exit(1);
  });
  app.listen(port, listenAddress, () => console.error(`mythical-server: listening on :${port}`));
}

main().catch((e) => {
  console.error(`mythical-server: ${e.message}`);
  process.exit(1);
});
