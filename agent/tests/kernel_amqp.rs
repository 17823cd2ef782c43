//! RabbitMQ end to end against the real kernel (issue 5): a private
//! RabbitMQ node, an uninstrumented Node HTTP server that publishes a
//! message per request with amqplib, and an amqplib consumer that acks each
//! message after 5-20 ms of work, all three tracked. Checks, span by span:
//! PRODUCER `publish jobs` is a child of the HTTP request that published it;
//! CONSUMER `process jobs` is a child of that PRODUCER span in the same trace
//! (matched on this host by the message, or named by the traceparent the app
//! put in the message itself); the messaging metrics on /metrics. Then a
//! consumer that fell behind (1000 deliveries piled up in its socket, tens
//! of KiB per read): one CONSUMER span per message, under the traceparent
//! it carried, at the default capture size.
//! Needs root and `cargo xtask deps` (rabbitmq-server, amqplib).
mod support;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use std::io::Write;

use support::agent::{free_port, wait_listening, Agent, Proc};
use support::otlp_receiver::{ReceivedSpan, Receiver, Val};
use support::rabbitmq::RabbitMq;

const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/amqp");
    assert!(
        dir.join("node_modules/amqplib").exists(),
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

/// GET `path` on 127.0.0.1:`port` (a fresh connection); returns the body.
fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_and_consumer_spans_join_the_publishing_request() {
    let fx = fixtures();
    let rmq = RabbitMq::start("ctx");
    let rx = Receiver::start().await;
    // The default capture size: up to 10 deliveries (prefetch) arrive in one
    // read, each seen through the kernel's AMQP frame capture.
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.grpc_endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
        ("PERISCOPE_LOG_LEVEL", "info,periscope::protocols::amqp=debug".into()),
    ];
    // Gates: both processes start once periscope watches them, so it sees
    // their AMQP connections from the protocol header on.
    let gate = |script: &str, args: &[String], name: &str| {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "read go; exec node \"$@\"", "sh"]).arg(fx.join(script)).args(args);
        Proc(cmd.env("OTEL_SERVICE_NAME", name).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap())
    };
    let port = free_port();
    let mut producer = gate("ctx_producer.js", &[port.to_string(), rmq.url()], "producer");
    let mut consumer = gate("ctx_consumer.js", &[rmq.url()], "consumer");
    let pids = format!("{},{}", producer.pid(), consumer.pid());
    let agent = Agent::start(&["--pid", &pids], &env);
    agent.wait_tracked(producer.pid());
    agent.wait_tracked(consumer.pid());
    for p in [&mut consumer, &mut producer] {
        p.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        p.0.stdin.as_mut().unwrap().flush().unwrap();
        let mut line = String::new();
        BufReader::new(p.0.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("ready") || line.starts_with("listening"), "{line}");
    }
    wait_listening(port);

    // 20 messages: even ids carry the app's own traceparent.
    let mut own_tp: HashMap<u32, String> = HashMap::new();
    for id in 0..20u32 {
        let body = get(port, &format!("/job/{id}{}", if id % 2 == 0 { "?tp=1" } else { "" }));
        if id % 2 == 0 {
            assert!(body.starts_with("00-"), "{body}");
            own_tp.insert(id, body);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let spans = rx.spans();
        let n = |k: i32| spans.iter().filter(|s| s.span.kind == k).count();
        if n(SERVER) >= 20 && n(PRODUCER) >= 20 && n(CONSUMER) >= 20 {
            break;
        }
        if std::time::Instant::now() > deadline {
            let names: Vec<String> =
                spans.iter().map(|s| format!("{} {} {}", service(s), s.span.kind, s.span.name)).collect();
            let m = agent.metrics();
            let nonzero: Vec<&str> = m.lines().filter(|l| l.starts_with("periscope_") && !l.ends_with(" 0")).collect();
            panic!("timed out waiting for 20 server, producer and consumer spans: {names:#?}\n{nonzero:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A little longer, so that extra (wrong) spans would show up too.
    std::thread::sleep(Duration::from_millis(500));
    let spans = rx.spans();
    let by_id: HashMap<Vec<u8>, &ReceivedSpan> = spans.iter().map(|s| (s.span.span_id.clone(), s)).collect();

    let servers: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| s.span.kind == SERVER && service(s) == "producer").collect();
    let producers: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.span.kind == PRODUCER).collect();
    let consumers: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.span.kind == CONSUMER).collect();
    assert_eq!((servers.len(), producers.len(), consumers.len()), (20, 20, 20), "exactly one of each per request");

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    // trace id -> span id the app wrote in its own traceparents.
    let app_tp: HashMap<String, String> =
        own_tp.values().map(|tp| (tp[3..35].to_owned(), tp[36..52].to_owned())).collect();
    for p in &producers {
        assert_eq!(service(p), "producer");
        assert_eq!(p.span.name, "publish jobs");
        assert_eq!(p.attr_str("messaging.system").as_deref(), Some("rabbitmq"));
        assert_eq!(p.attr_str("messaging.operation.type").as_deref(), Some("send"));
        assert_eq!(p.attr_str("messaging.destination.name").as_deref(), Some("jobs"));
        assert_eq!(p.attr_int("server.port"), Some(i64::from(rmq.port)));
        match app_tp.get(&hex(&p.span.trace_id)) {
            // The app started a trace of its own for the message: the span
            // is the one its traceparent names, the root of that trace.
            Some(span_id) => {
                assert_eq!(&hex(&p.span.span_id), span_id);
                assert!(p.span.parent_span_id.is_empty(), "no parent in another trace");
            }
            None => {
                let parent = by_id.get(&p.span.parent_span_id).expect("a producer's parent is exported");
                assert_eq!(parent.span.kind, SERVER, "published while handling an HTTP request");
                assert_eq!(parent.span.trace_id, p.span.trace_id);
                assert_eq!(parent.attr_str("url.path").map(|u| u.starts_with("/job/")), Some(true));
            }
        }
    }
    assert_eq!(producers.iter().filter(|p| app_tp.contains_key(&hex(&p.span.trace_id))).count(), 10);
    for c in &consumers {
        assert_eq!(service(c), "consumer");
        assert_eq!(c.span.name, "process jobs");
        assert_eq!(c.attr_str("messaging.operation.type").as_deref(), Some("process"));
        let producer = by_id
            .get(&c.span.parent_span_id)
            .unwrap_or_else(|| panic!("consumer {:?} has no exported parent", c.span.span_id));
        assert_eq!(producer.span.kind, PRODUCER);
        assert_eq!(producer.span.trace_id, c.span.trace_id, "one trace from the HTTP request to the consumer");
        let ms = (c.span.end_time_unix_nano - c.span.start_time_unix_nano) as f64 / 1e6;
        assert!((4.0..2000.0).contains(&ms), "process lasts until the ack (5-20 ms of work): {ms} ms");
    }
    // The app's own traceparents name the trace of their messages.
    let tp_traces: Vec<String> = own_tp.values().map(|tp| tp[3..35].to_owned()).collect();
    let consumer_traces: Vec<String> = consumers.iter().map(|c| hex(&c.span.trace_id)).collect();
    for t in &tp_traces {
        assert!(consumer_traces.contains(t), "trace {t} of an app traceparent reaches the consumer");
    }
    // Messaging metrics.
    let metrics = agent.metrics();
    let count = |m: &str| support::agent::sample_sum(&metrics, m, &["messaging_system=\"rabbitmq\""]);
    assert_eq!(count("messaging_client_operation_duration_seconds_count"), 20.0, "{metrics}");
    assert_eq!(count("messaging_process_duration_seconds_count"), 20.0);
    let linked = support::agent::sample_sum(&metrics, "periscope_spans_linked_total", &[]);
    assert!(linked >= 10.0, "the 10 messages without traceparent were linked on this host: {linked}");
}

/// Messages the burst consumer publishes, then consumes all at once.
const BURST: u32 = 1000;

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_that_fell_behind_gets_a_consumer_span_per_message() {
    // Deliveries pile up in the consumer's socket and one read returns tens
    // of KiB of them: every one is captured (the kernel's AMQP frame
    // capture, at the default capture size), with the traceparent the
    // message carries.
    let fx = fixtures();
    let rmq = RabbitMq::start("burst");
    let rx = Receiver::start().await;
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.grpc_endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
        ("PERISCOPE_LOG_LEVEL", "info,periscope::protocols::amqp=debug".into()),
    ];
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "read go; exec node \"$@\"", "sh"])
        .arg(fx.join("burst_consumer.js"))
        .args([rmq.url(), BURST.to_string()]);
    let mut consumer =
        Proc(cmd.env("OTEL_SERVICE_NAME", "burst").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap());
    let agent = Agent::start(&["--pid", &consumer.pid().to_string()], &env);
    agent.wait_tracked(consumer.pid());
    consumer.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    consumer.0.stdin.as_mut().unwrap().flush().unwrap();
    let mut out = BufReader::new(consumer.0.stdout.take().unwrap());
    for want in ["ready", "acked"] {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with(want), "{want}: {line}");
    }

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let consumers = loop {
        let spans = rx.spans();
        let consumers: Vec<ReceivedSpan> = spans.into_iter().filter(|s| s.span.kind == CONSUMER).collect();
        if consumers.len() >= BURST as usize || std::time::Instant::now() > deadline {
            break consumers;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let metrics = agent.metrics();
    let counters: Vec<&str> = metrics.lines().filter(|l| l.starts_with("periscope_") && !l.ends_with(" 0")).collect();
    let producers = rx.spans().iter().filter(|s| s.span.kind == PRODUCER).count();
    eprintln!(
        "burst: {} CONSUMER spans, {producers} PRODUCER spans for {BURST} messages\n{counters:#?}",
        consumers.len()
    );
    assert_eq!(consumers.len(), BURST as usize, "one CONSUMER span per message");
    // Message i carried traceparent 00-<i>-<i>-01: its span is in that trace, under that span.
    let mut seen: Vec<u64> = consumers
        .iter()
        .map(|c| {
            let trace = u64::from_str_radix(&hex(&c.span.trace_id)[16..], 16).unwrap();
            assert_eq!(
                hex(&c.span.parent_span_id),
                format!("{trace:016x}"),
                "the message's traceparent names the parent"
            );
            trace
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=u64::from(BURST)).collect::<Vec<_>>(), "every message once");
    let kernel_incomplete = support::agent::sample_sum(&metrics, "periscope_kernel_capture_incomplete_total", &[]);
    assert_eq!(kernel_incomplete, 0.0, "the kernel captured every AMQP read");
}
