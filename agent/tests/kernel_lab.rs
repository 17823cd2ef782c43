//! The lab's own services under the lab's own load, against the real kernel
//! (issue 10): `deploy/mythical`'s server (Express 5, ONE `pg.Client`),
//! requester (`MYTHICAL_LOAD=lab`: four chains firing without waiting, a
//! burst of ~160 req/s then a calm tail, one traceparent header object reused
//! for a GET and the DELETE after it, a message published per answered call)
//! and recorder (no prefetch limit: the broker pushes deliveries in bursts),
//! with a private PostgreSQL and RabbitMQ. Every statement sleeps a little in
//! PostgreSQL, so that under the burst the shared client's queue backs up and
//! requests last well beyond `--trace-max-wait` (10 s), as on the lab's
//! crowded host. periscope starts after the services and finds them by port
//! (the compose overlay's way), so it adopts the server's PostgreSQL
//! connection after its startup message.
//!
//! Ground truth comes from the services: the request id travels in the URL
//! (`?rid=N`) and in the statement (`/* rid=N */`); the recorder counts the
//! messages it received. Checked span by span: each SERVER span under the
//! requester's CLIENT span of the same request, in the same trace; each SQL
//! span under the SERVER span of the request that issued it; one CONSUMER
//! span per message received; span ids unique; `db.namespace` on every SQL
//! span.
//! Needs root and `cargo xtask deps` (PostgreSQL, RabbitMQ, deploy/mythical's
//! node_modules).
mod support;

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::agent::{free_port, http_get, sample_sum, wait_for, wait_listening, Agent, Proc};
use support::db::Postgres;
use support::otlp_receiver::{ReceivedSpan, Receiver, Val};
use support::rabbitmq::RabbitMq;

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// Iterations of the requester: the lab's burst (2000 calls 0-50 ms apart)
/// and a short calm tail.
const BURST: u32 = 2000;
const TOTAL: u32 = 2030;
/// Per-statement sleep in PostgreSQL: the one client then serves ~80
/// statements per second against ~190 offered, so the queue backs up.
const DB_DELAY_MS: u32 = 12;
/// The recorder's synchronous work per message: deliveries pile up in its
/// socket while it works and arrive many per read, as in the lab.
const RECORDER_BUSY_MS: u32 = 15;

fn mythical() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mythical");
    assert!(
        dir.join("node_modules/express").exists(),
        "{}/node_modules is missing: run `cargo xtask deps`",
        dir.display()
    );
    dir
}

fn service(s: &ReceivedSpan) -> String {
    match s.resource.get("service.name") {
        Some(Val::Str(n)) => n.clone(),
        _ => String::new(),
    }
}

/// The request id of a span: `rid=N` in its query, URL or statement.
fn rid(s: &ReceivedSpan) -> Option<u64> {
    let text = s.attr_str("url.query").or_else(|| s.attr_str("url.full")).or_else(|| s.attr_str("db.query.text"))?;
    let i = text.find("rid=")?;
    text[i + 4..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

fn counter(port: u16, name: &str) -> f64 {
    http_get(port, "/metrics").map_or(0.0, |m| sample_sum(&m, name, &[]))
}

fn node(dir: &Path, script: &str, name: &str, env: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script))
        .current_dir(dir)
        .env("OTEL_SERVICE_NAME", name)
        .env("LISTEN_ADDRESS", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}")))
}

/// Share of `ok` in `total`, in percent.
fn pct(ok: usize, total: usize) -> f64 {
    if total == 0 {
        100.0
    } else {
        100.0 * ok as f64 / total as f64
    }
}

#[derive(Default, Debug)]
struct Request<'a> {
    client: Vec<&'a ReceivedSpan>,
    server: Vec<&'a ReceivedSpan>,
    sql: Vec<&'a ReceivedSpan>,
}

fn child_of(c: &ReceivedSpan, p: &ReceivedSpan) -> bool {
    c.span.parent_span_id == p.span.span_id && c.span.trace_id == p.span.trace_id
}

fn duration_s(s: &ReceivedSpan) -> f64 {
    s.span.end_time_unix_nano.saturating_sub(s.span.start_time_unix_nano) as f64 / 1e9
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lab_load_keeps_every_trace_connected() {
    let dir = mythical();
    let rx = Receiver::start().await;
    let pg = Postgres::start("lab");
    let rmq = RabbitMq::start("lab");
    let (server_port, requester_port, recorder_port) = (free_port(), free_port(), free_port());

    let pg_env = vec![
        ("PGHOST", "127.0.0.1".to_owned()),
        ("PGPORT", pg.port.to_string()),
        ("PGUSER", "app".to_owned()),
        ("PGPASSWORD", "secret".to_owned()),
        ("PGDATABASE", "shop".to_owned()),
    ];
    let mut server_env = pg_env.clone();
    server_env.extend([
        ("PORT", server_port.to_string()),
        ("MYTHICAL_DB_DELAY_MS", DB_DELAY_MS.to_string()),
        ("MYTHICAL_TAG_QUERIES", "1".to_owned()),
    ]);
    let _server = node(&dir, "server.js", "mythical-server", &server_env);
    let _recorder = node(
        &dir,
        "recorder.js",
        "mythical-recorder",
        &[
            ("PORT", recorder_port.to_string()),
            ("AMQP_URL", rmq.url()),
            ("RECORDER_PREFETCH", "0".to_owned()),
            ("RECORDER_BUSY_MS", RECORDER_BUSY_MS.to_string()),
            ("RECORDER_WORK_MIN_MS", "20".to_owned()),
            ("RECORDER_WORK_MAX_MS", "1500".to_owned()),
        ],
    );
    let mut requester = node(
        &dir,
        "requester.js",
        "mythical-requester",
        &[
            ("PORT", requester_port.to_string()),
            ("AMQP_URL", rmq.url()),
            ("SERVER_URL", format!("http://127.0.0.1:{server_port}")),
            ("MYTHICAL_LOAD", "lab".to_owned()),
            ("MYTHICAL_TAG_REQUESTS", "1".to_owned()),
            ("LAB_WAIT_STDIN", "1".to_owned()),
            ("LAB_START_MS", "0".to_owned()),
            ("LAB_BURST_CALLS", BURST.to_string()),
            ("LAB_MAX_CALLS", TOTAL.to_string()),
        ],
    );
    for port in [server_port, requester_port, recorder_port] {
        wait_listening(port);
    }

    // The compose overlay's settings; literals and query strings opted in
    // (the request ids are the ground truth).
    let ports = format!("{server_port},{requester_port},{recorder_port}");
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.grpc_endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
        ("OTEL_SEMCONV_STABILITY_OPT_IN", "http/dup,database/dup".into()),
        ("PERISCOPE_SERVICE_NAMESPACE", "mythical".into()),
        ("PERISCOPE_ROUTES", "/owlbear,/unicorn,/manticore,/illithid,/beholder".into()),
        ("PERISCOPE_IGNORED_ROUTES", "/metrics".into()),
        ("PERISCOPE_DB_QUERY_LITERALS", "true".into()),
        ("PERISCOPE_INCLUDE_QUERY_STRING", "true".into()),
    ];
    if let Ok(l) = std::env::var("LAB_TEST_LOG") {
        env.push(("PERISCOPE_LOG_LEVEL", l));
    }
    let mut agent = Agent::start(&["--open-port", &ports], &env);
    wait_for("the three services to be watched", Duration::from_secs(30), || {
        let t = agent.targets();
        ["mythical-server", "mythical-requester", "mythical-recorder"].iter().all(|s| t.contains(s)).then_some(())
    });

    let started = Instant::now();
    let stdin = requester.0.stdin.as_mut().unwrap();
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    // Every iteration answered, then every published message consumed.
    wait_for("the requester's iterations to finish", Duration::from_secs(240), || {
        (counter(requester_port, "mythical_requester_done_total") >= f64::from(TOTAL)).then_some(())
    });
    let load_s = started.elapsed().as_secs_f64();
    let published = counter(requester_port, "mythical_requester_published_total");
    wait_for("the recorder to ack every message", Duration::from_secs(60), || {
        (counter(recorder_port, "mythical_recorder_acked_total") >= published).then_some(())
    });
    let received = counter(recorder_port, "mythical_recorder_received_total") as usize;
    // Held spans leave once their trace is decided; the agent's exit flushes the rest.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics =
        wait_for("periscope's /metrics", Duration::from_secs(20), || Some(agent.metrics()).filter(|m| !m.is_empty()));
    assert!(agent.stop(), "periscope exited uncleanly");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spans = rx.spans();
    if let Ok(path) = std::env::var("LAB_TEST_DUMP") {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let lines: Vec<String> = spans
            .iter()
            .map(|s| {
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    service(s),
                    s.span.kind,
                    rid(s).unwrap_or(0),
                    hex(&s.span.span_id),
                    hex(&s.span.parent_span_id),
                    hex(&s.span.trace_id),
                    s.span.start_time_unix_nano,
                    s.span.end_time_unix_nano,
                    s.span.name
                )
            })
            .collect();
        std::fs::write(path, lines.join("\n")).unwrap();
    }

    let mut by_rid: HashMap<u64, Request<'_>> = HashMap::new();
    let mut consumers = Vec::new();
    let mut producers = HashSet::new();
    let mut sql_spans = Vec::new();
    for s in &spans {
        match (service(s).as_str(), s.span.kind) {
            ("mythical-recorder", CONSUMER) => consumers.push(s),
            ("mythical-requester", PRODUCER) => {
                producers.insert(s.span.span_id.clone());
            }
            ("mythical-server", CLIENT) if s.attr_str("db.system.name").is_some() => sql_spans.push(s),
            _ => {}
        }
        let Some(id) = rid(s) else { continue };
        let r = by_rid.entry(id).or_default();
        match (service(s).as_str(), s.span.kind) {
            ("mythical-requester", CLIENT) => r.client.push(s),
            ("mythical-server", SERVER) => r.server.push(s),
            ("mythical-server", CLIENT) => r.sql.push(s),
            _ => {}
        }
    }

    // Relations, each counted once per request.
    let (mut server_total, mut server_ok, mut long_total, mut long_ok) = (0, 0, 0, 0);
    let (mut sql_total, mut sql_ok) = (0, 0);
    let mut wrong = Vec::new();
    for (id, r) in &by_rid {
        for s in &r.server {
            server_total += 1;
            let long = duration_s(s) >= 10.0;
            long_total += usize::from(long);
            if r.client.iter().any(|c| child_of(s, c)) {
                server_ok += 1;
                long_ok += usize::from(long);
            } else if wrong.len() < 20 {
                wrong.push(format!("rid {id}: server span ({:.1} s) not under its client span", duration_s(s)));
            }
        }
        for q in &r.sql {
            sql_total += 1;
            if r.server.iter().any(|s| child_of(q, s)) {
                sql_ok += 1;
            } else if wrong.len() < 20 {
                let owner =
                    by_rid.iter().find(|(_, o)| o.server.iter().any(|s| s.span.span_id == q.span.parent_span_id));
                wrong.push(format!("rid {id}: SQL span under {:?}", owner.map(|(i, _)| i)));
            }
        }
    }
    let mut ids = HashSet::new();
    let duplicate_ids = spans.iter().filter(|s| !ids.insert(s.span.span_id.clone())).count();
    let consumer_linked = consumers.iter().filter(|c| producers.contains(&c.span.parent_span_id)).count();
    let with_namespace = sql_spans.iter().filter(|s| s.attr_str("db.namespace").as_deref() == Some("shop")).count();
    let with_db_name = sql_spans.iter().filter(|s| s.attr_str("db.name").as_deref() == Some("shop")).count();
    let server_spans: Vec<_> =
        spans.iter().filter(|s| s.span.kind == SERVER && service(s) == "mythical-server").collect();
    let peer_name_is_host = server_spans
        .iter()
        .filter(|s| s.attr_str("net.peer.name").is_some_and(|n| Some(n) == s.attr_str("server.address")))
        .count();
    let agent_counters: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            [
                "periscope_context",
                "periscope_link",
                "periscope_protocol_desync",
                "periscope_requests_unmatched",
                "periscope_kernel_capture_incomplete",
                "periscope_capture_policy",
                "periscope_events_lost",
                "periscope_db_namespace",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect();
    eprintln!(
        "lab load: {TOTAL} iterations in {load_s:.0} s, {} spans\n\
         server under client: {server_ok}/{server_total} ({:.1}%), of which >= 10 s: {long_ok}/{long_total}\n\
         SQL under its request: {sql_ok}/{sql_total} ({:.1}%)\n\
         CONSUMER spans: {} for {received} messages received, {consumer_linked} under a PRODUCER span\n\
         duplicate span ids: {duplicate_ids}\n\
         db.namespace on SQL spans: {with_namespace}/{} (db.name {with_db_name})\n\
         server spans with net.peer.name = own host: {peer_name_is_host}/{}\n\
         {agent_counters:#?}\nfirst wrong: {wrong:#?}",
        spans.len(),
        pct(server_ok, server_total),
        pct(sql_ok, sql_total),
        consumers.len(),
        sql_spans.len(),
        server_spans.len(),
    );

    // The load was the lab's: many requests outlived --trace-max-wait.
    assert!(long_total >= 100, "only {long_total} server spans of 10 s or more: the load did not back up");
    assert!(server_total as f64 >= 0.99 * f64::from(TOTAL), "server spans: {server_total} for {TOTAL} iterations");
    assert!(pct(server_ok, server_total) >= 99.0, "server spans under their client span: {server_ok}/{server_total}");
    assert!(pct(long_ok, long_total) >= 99.0, "requests of 10 s or more: {long_ok}/{long_total}");
    assert!(pct(sql_ok, sql_total) >= 99.0, "SQL spans under their request: {sql_ok}/{sql_total}");
    assert!(sql_total as f64 >= 0.99 * server_total as f64, "SQL spans: {sql_total} for {server_total} requests");
    assert_eq!(duplicate_ids, 0, "span ids must be unique");
    assert!(pct(consumers.len(), received) >= 99.0, "CONSUMER spans: {} for {received} messages", consumers.len());
    assert!(consumers.len() <= received, "more CONSUMER spans than messages: {} > {received}", consumers.len());
    assert!(pct(consumer_linked, consumers.len()) >= 99.0, "CONSUMER spans under a PRODUCER: {consumer_linked}");
    assert_eq!(with_namespace, sql_spans.len(), "db.namespace on every SQL span");
    assert_eq!(with_db_name, sql_spans.len(), "db.name (database/dup) on every SQL span");
    assert_eq!(peer_name_is_host, 0, "net.peer.name on a SERVER span names the client, not the server");
    // Well-formed traffic: nothing unmatched, no framing lost but for the
    // PostgreSQL answers larger than the capture (counted with that reason).
    assert_eq!(sample_sum(&metrics, "periscope_requests_unmatched_total", &[]), 0.0, "{agent_counters:#?}");
    for protocol in ["http", "amqp"] {
        let label = format!("protocol=\"{protocol}\"");
        assert_eq!(sample_sum(&metrics, "periscope_protocol_desync_total", &[&label]), 0.0, "{agent_counters:#?}");
    }
    let pg_desync = sample_sum(&metrics, "periscope_protocol_desync_total", &["protocol=\"postgresql\""]);
    let beyond = sample_sum(&metrics, "periscope_protocol_desync_total", &["reason=\"message beyond capture\""]);
    assert_eq!(pg_desync, beyond, "{agent_counters:#?}");
    assert_eq!(sample_sum(&metrics, "periscope_kernel_capture_incomplete_total", &[]), 0.0, "{agent_counters:#?}");
    drop(rmq);
    drop(pg);
}
