//! The RabbitMQ test harness on its own (no agent): a private node starts,
//! an amqplib client publishes and consumes one message through it, and the
//! node stops with the guard. Needs root (the node runs as user rabbitmq),
//! `rabbitmq-server` and the npm modules of tests/fixtures/amqp
//! (`cargo xtask deps`).
mod support;

use std::{path::Path, process::Command, time::Instant};

use support::rabbitmq::{answers_amqp, RabbitMq};

#[test]
fn private_node_carries_a_message_from_amqplib_to_amqplib() {
    let started = Instant::now();
    let rmq = RabbitMq::start("smoke");
    eprintln!("rabbitmq node {} on port {} up in {:?}", rmq.node, rmq.port, started.elapsed());
    assert_ne!(rmq.port, 5672, "never the system node's port");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/amqp/pubsub.js");
    let out = Command::new("node").arg(&script).arg(rmq.url()).output().expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pubsub.js failed ({}): {stdout}{}\nnode log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        rmq.log()
    );
    assert_eq!(
        stdout.trim(),
        "received hello tag=1 traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    // The broker's own view: the queue exists and the message was acked.
    let queues = rmq.ctl(&["list_queues", "name", "messages", "messages_unacknowledged"]);
    assert!(queues.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["smoke", "0", "0"]), "{queues}");
    let (port, dir) = (rmq.port, rmq.dir.clone());
    drop(rmq);
    assert!(!answers_amqp(port), "the node stops with its guard");
    assert!(!dir.exists(), "its directory is removed");
}
