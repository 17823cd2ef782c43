//! The fixtures are real conversations between amqplib 0.10.9 and RabbitMQ
//! 3.10.8 (Debian 12), recorded by `agent/tests/fixtures/amqp/record.js`
//! through a TCP proxy. Each `.bin` is a list of records: one byte
//! direction (1: client -> broker, 0: broker -> client), u32 LE length, the
//! bytes of one `data` event. Frame layouts follow the AMQP 0-9-1
//! specification (frame = type, channel, size, payload, 0xCE).
//!
//! producer.bin: connection start (frameMax 8192), exchange `shop`, queues
//! orders/audit/jobs/batch, then on channel 1: a publish to shop /
//! order.created (traceparent, tracestate, message id m-1, correlation id
//! c-1), to the default exchange for `audit` (headers of several field types
//! before traceparent), a 20000-byte message to `orders` (three body
//! frames), two to `jobs`, three to `batch`, a mandatory unroutable publish
//! (basic.return 312 NO_ROUTE); on channel 2 (confirm mode) two publishes
//! acked by the broker; closes.
//!
//! consumer.bin: channel 1 consumes `orders` (manual ack, broker-chosen tag)
//! and `audit` (no-ack, tag audit-reader), acks delivery 1, nacks delivery
//! 2; channel 2 basic.get twice (ack 1, reject 2) then get-empty; channel 3
//! consumes `batch` and acks 3 deliveries with one multiple ack; channel 4
//! is closed by the broker with 404 NOT_FOUND (queue.declare passive).

use super::*;
use crate::protocols::sql::tests::Rng;

const PRODUCER: &[u8] = include_bytes!("fixtures/producer.bin");
const CONSUMER: &[u8] = include_bytes!("fixtures/consumer.bin");

const TP_ORDER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TP_AUDIT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TP_BIG: &str = "00-11111111111111111111111111111111-2222222222222222-01";
const TP_JOB: &str = "00-abcdefabcdefabcdefabcdefabcdefab-1234567812345678-00";

/// (from client, bytes) per recorded data event.
fn records(file: &[u8]) -> Vec<(bool, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < file.len() {
        let dir = file[i] == 1;
        let n = u32::from_le_bytes(file[i + 1..i + 5].try_into().unwrap()) as usize;
        out.push((dir, file[i + 5..i + 5 + n].to_vec()));
        i += 5 + n;
    }
    out
}

/// Feeds records as the client process saw them (its writes are Egress),
/// each cut into pieces by `split`, capturing at most `capture` bytes of
/// each piece. Timestamps advance 1000 ns per chunk.
fn replay_with(
    recs: &[(bool, Vec<u8>)],
    role: Side,
    capture: usize,
    mut split: impl FnMut(usize) -> Vec<usize>,
) -> (Vec<AmqpEvent>, AmqpSession) {
    let mut s = AmqpSession::new(role);
    let mut out = Vec::new();
    let mut ts = 1_000;
    for (from_client, bytes) in recs {
        let direction = match (role, from_client) {
            (Side::Client, true) | (Side::Server, false) => Direction::Egress,
            _ => Direction::Ingress,
        };
        let mut at = 0;
        for len in split(bytes.len()) {
            let piece = &bytes[at..at + len];
            at += len;
            let chunk = Chunk {
                direction,
                data: &piece[..piece.len().min(capture)],
                total: piece.len(),
                ts_enter: ts,
                ts_exit: ts + 500,
            };
            s.on_chunk(&chunk, &mut out);
            ts += 1_000;
        }
    }
    (out, s)
}

fn replay(file: &[u8]) -> (Vec<AmqpEvent>, AmqpSession) {
    replay_with(&records(file), Side::Client, usize::MAX, |n| vec![n])
}

fn publishes(ev: &[AmqpEvent]) -> Vec<&Publish> {
    ev.iter().filter_map(|e| if let AmqpEvent::Publish(p) = e { Some(p) } else { None }).collect()
}

fn deliveries(ev: &[AmqpEvent]) -> Vec<&Delivery> {
    ev.iter().filter_map(|e| if let AmqpEvent::Deliver(d) = e { Some(d) } else { None }).collect()
}

fn settles(ev: &[AmqpEvent]) -> Vec<&Settle> {
    ev.iter().filter_map(|e| if let AmqpEvent::Settle(s) = e { Some(s) } else { None }).collect()
}

fn assert_clean(s: &AmqpSession) {
    let st = s.stats();
    assert_eq!(
        (st.desyncs, st.parse_errors, st.messages_incomplete, st.orphan_content, st.chunks_dropped),
        (0, 0, 0, 0, 0),
        "{st:?}"
    );
}

#[test]
fn producer_fixture_publishes() {
    let (ev, s) = replay(PRODUCER);
    assert_clean(&s);
    assert_eq!(s.vhost(), Some("/"));
    let p = publishes(&ev);
    let keys: Vec<(&str, &str, u64)> =
        p.iter().map(|p| (p.exchange.as_str(), p.routing_key.as_str(), p.body_size)).collect();
    assert_eq!(
        keys,
        [
            ("shop", "order.created", 27),
            ("", "audit", 11),
            ("", "orders", 20000),
            ("", "jobs", 5),
            ("", "jobs", 5),
            ("", "batch", 7),
            ("", "batch", 7),
            ("", "batch", 7),
            ("shop", "nowhere", 4),
            ("", "jobs", 5),
            ("", "jobs", 5),
        ]
    );
    assert_eq!(p[0].traceparent.map(|t| t.to_string()).as_deref(), Some(TP_ORDER));
    assert_eq!(p[0].tracestate.as_deref(), Some("vendor=opaque"));
    assert_eq!(p[0].message_id.as_deref(), Some("m-1"));
    assert_eq!(p[0].correlation_id.as_deref(), Some("c-1"));
    assert_eq!(p[1].traceparent.map(|t| t.to_string()).as_deref(), Some(TP_AUDIT), "found after b/t/F/l fields");
    assert_eq!(p[2].traceparent.map(|t| t.to_string()).as_deref(), Some(TP_BIG));
    assert_eq!(p[3].traceparent.map(|t| t.to_string()).as_deref(), Some(TP_JOB));
    assert_eq!(p[4].traceparent, None);
    assert!(p[8].mandatory && !p[0].mandatory);
    assert!(p.iter().all(|p| p.fingerprint.is_some()));
    assert_ne!(p[3].fingerprint, p[4].fingerprint, "job-1 and job-2 differ");
    assert_eq!(p[5].channel, 1);
    // Confirm mode on channel 2: publishes numbered from 1, both acked.
    assert_eq!((p[9].channel, p[9].confirm_seq, p[10].confirm_seq), (2, Some(1), Some(2)));
    assert_eq!(p[0].confirm_seq, None);
    let confirms: Vec<(u16, u64, bool)> = ev
        .iter()
        .filter_map(|e| if let AmqpEvent::Confirm(c) = e { Some((c.channel, c.delivery_tag, c.ack)) } else { None })
        .collect();
    assert_eq!(confirms, [(2, 1, true), (2, 2, true)]);
    let ret: Vec<&Returned> =
        ev.iter().filter_map(|e| if let AmqpEvent::Return(r) = e { Some(r) } else { None }).collect();
    assert_eq!(ret.len(), 1);
    assert_eq!((ret[0].reply_code, ret[0].reply_text.as_str()), (312, "NO_ROUTE"));
    assert_eq!((ret[0].exchange.as_str(), ret[0].routing_key.as_str()), ("shop", "nowhere"));
    assert_eq!(ret[0].fingerprint, p[8].fingerprint, "the returned message is the published one");
    // The 20000-byte message: one write (3 body frames) in the same chunk.
    assert!(p[2].ts_start <= p[2].ts_end);
    let closes: Vec<(u16, u16, bool)> = ev
        .iter()
        .filter_map(|e| if let AmqpEvent::Close(c) = e { Some((c.channel, c.reply_code, c.by_client)) } else { None })
        .collect();
    assert_eq!(closes, [(2, 200, true), (1, 200, true), (0, 200, true)]);
    assert_eq!(s.channels_tracked(), 0, "closed channels are forgotten");
}

/// channel, delivery tag, queue, exchange, routing key, no-ack, via get.
type DeliveryRow<'a> = (u16, u64, Option<&'a str>, &'a str, &'a str, bool, bool);

#[test]
fn consumer_fixture_deliveries_and_settles() {
    let (ev, s) = replay(CONSUMER);
    assert_clean(&s);
    let d = deliveries(&ev);
    let got: Vec<DeliveryRow<'_>> = d
        .iter()
        .map(|d| {
            (
                d.channel,
                d.delivery_tag,
                d.queue.as_deref(),
                d.exchange.as_str(),
                d.routing_key.as_str(),
                d.no_ack,
                d.via_get,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, 1, Some("orders"), "shop", "order.created", false, false),
            (1, 2, Some("orders"), "", "orders", false, false),
            (1, 3, Some("audit"), "", "audit", true, false),
            (2, 1, Some("jobs"), "", "jobs", false, true),
            (2, 2, Some("jobs"), "", "jobs", false, true),
            (3, 1, Some("batch"), "", "batch", false, false),
            (3, 2, Some("batch"), "", "batch", false, false),
            (3, 3, Some("batch"), "", "batch", false, false),
        ]
    );
    assert_eq!(d[0].traceparent.map(|t| t.to_string()).as_deref(), Some(TP_ORDER));
    assert_eq!(d[0].tracestate.as_deref(), Some("vendor=opaque"));
    assert_eq!((d[0].message_id.as_deref(), d[0].correlation_id.as_deref()), (Some("m-1"), Some("c-1")));
    assert_eq!((d[1].body_size, d[1].traceparent.map(|t| t.to_string()).as_deref()), (20000, Some(TP_BIG)));
    assert_eq!(d[2].traceparent.map(|t| t.to_string()).as_deref(), Some(TP_AUDIT));
    assert_eq!(d[2].consumer_tag.as_deref(), Some("audit-reader"));
    assert!(d[0].consumer_tag.as_deref().unwrap().starts_with("amq.ctag-"));
    assert_eq!(
        (d[3].traceparent.map(|t| t.to_string()).as_deref(), d[3].consumer_tag.as_deref()),
        (Some(TP_JOB), None)
    );
    assert!(!d[0].redelivered);

    let st: Vec<(u16, u64, bool, SettleOutcome)> =
        settles(&ev).iter().map(|s| (s.channel, s.delivery_tag, s.multiple, s.outcome)).collect();
    assert_eq!(
        st,
        [
            (1, 1, false, SettleOutcome::Ack),
            (1, 2, false, SettleOutcome::Nack { requeue: false }),
            (2, 1, false, SettleOutcome::Ack),
            (2, 2, false, SettleOutcome::Reject { requeue: false }),
            (3, 3, true, SettleOutcome::Ack),
        ]
    );
    // Settles are written after the deliveries were read.
    assert!(settles(&ev)[0].ts > d[0].ts_received);
    let errors: Vec<&Close> = ev
        .iter()
        .filter_map(|e| if let AmqpEvent::Close(c) = e { Some(c) } else { None })
        .filter(|c| c.is_error())
        .collect();
    assert_eq!(errors.len(), 1);
    let e = errors[0];
    assert_eq!((e.channel, e.reply_code, e.class_id, e.method_id, e.by_client), (4, 404, 50, 10, false));
    assert!(e.reply_text.starts_with("NOT_FOUND - no queue 'does-not-exist'"), "{}", e.reply_text);
}

#[test]
fn fingerprints_match_publish_to_delivery() {
    let (pe, _) = replay(PRODUCER);
    let (ce, _) = replay(CONSUMER);
    let p = publishes(&pe);
    let d = deliveries(&ce);
    assert_eq!(d[0].fingerprint, p[0].fingerprint); // shop order
    assert_eq!(d[1].fingerprint, p[2].fingerprint); // the 20000-byte one
    assert_eq!(d[2].fingerprint, p[1].fingerprint); // audit
    assert_eq!(d[3].fingerprint, p[3].fingerprint); // job-1
    assert_ne!(d[3].fingerprint, d[4].fingerprint);
}

fn summary(ev: &[AmqpEvent]) -> Vec<String> {
    // Timestamps depend on how bytes were chunked: compare the rest.
    ev.iter()
        .map(|e| match e {
            AmqpEvent::Publish(p) => format!("{:?}", Publish { ts_start: 0, ts_end: 0, ..p.clone() }),
            AmqpEvent::Deliver(d) => format!("{:?}", Delivery { ts_received: 0, ..d.clone() }),
            AmqpEvent::Settle(s) => format!("{:?}", Settle { ts: 0, ..s.clone() }),
            AmqpEvent::Confirm(c) => format!("{:?}", Confirm { ts: 0, ..c.clone() }),
            AmqpEvent::Return(r) => format!("{:?}", Returned { ts: 0, ..r.clone() }),
            AmqpEvent::Close(c) => format!("{:?}", Close { ts: 0, ..c.clone() }),
        })
        .collect()
}

#[test]
fn any_split_gives_the_same_events() {
    for file in [PRODUCER, CONSUMER] {
        let recs = records(file);
        let (whole, _) = replay(file);
        let (bytes, s) = replay_with(&recs, Side::Client, usize::MAX, |n| vec![1; n]);
        assert_clean(&s);
        assert_eq!(summary(&bytes), summary(&whole), "one byte per chunk");
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..20 {
            let (ev, s) = replay_with(&recs, Side::Client, usize::MAX, |mut n| {
                let mut v = Vec::new();
                while n > 0 {
                    let k = (rng.below(40) + 1).min(n);
                    v.push(k);
                    n -= k;
                }
                v
            });
            assert_clean(&s);
            assert_eq!(summary(&ev), summary(&whole));
        }
    }
}

#[test]
fn coalesced_records_give_the_same_events() {
    // Several frames per syscall: merge runs of same-direction records.
    for file in [PRODUCER, CONSUMER] {
        let mut merged: Vec<(bool, Vec<u8>)> = Vec::new();
        for (dir, b) in records(file) {
            match merged.last_mut() {
                Some((d, acc)) if *d == dir => acc.extend_from_slice(&b),
                _ => merged.push((dir, b)),
            }
        }
        let (ev, s) = replay_with(&merged, Side::Client, usize::MAX, |n| vec![n]);
        assert_clean(&s);
        assert_eq!(summary(&ev), summary(&replay(file).0));
    }
}

#[test]
fn broker_side_role_sees_the_same_messages() {
    // The tracked process is the broker: client frames are read (Ingress).
    let (ev, s) = replay_with(&records(CONSUMER), Side::Server, usize::MAX, |n| vec![n]);
    assert_clean(&s);
    assert_eq!(summary(&ev), summary(&replay(CONSUMER).0));
}

#[test]
fn truncated_capture_skips_body_frames_by_size() {
    // Only the first 512 bytes of each syscall are captured (the agent's
    // default). The 20000-byte message is predicted through its body
    // frames; what follows it in the same write is lost, then framing
    // resumes at the next syscall.
    let (ev, s) = replay_with(&records(PRODUCER), Side::Client, 512, |n| vec![n]);
    let p = publishes(&ev);
    assert_eq!(p[2].routing_key, "orders");
    assert_eq!((p[2].body_size, p[2].traceparent.map(|t| t.to_string()).as_deref()), (20000, Some(TP_BIG)));
    let whole = replay(PRODUCER).0;
    assert_eq!(p[2].fingerprint, publishes(&whole)[2].fingerprint, "first 64 body bytes were captured");
    assert_eq!(s.stats().desyncs, 1, "{:?}", s.stats());
    assert!(s.stats().gap_frames >= 2);
    // After the resync: the unroutable publish's return, confirm channel.
    assert_eq!(p.last().unwrap().confirm_seq, Some(2));
    assert!(ev.iter().any(|e| matches!(e, AmqpEvent::Return(_))));

    let (ev, s) = replay_with(&records(CONSUMER), Side::Client, 512, |n| vec![n]);
    let d = deliveries(&ev);
    assert_eq!(d.len(), 8, "{:?}", s.stats());
    assert_eq!((d[1].body_size, d[1].traceparent.map(|t| t.to_string()).as_deref()), (20000, Some(TP_BIG)));
    assert_eq!(s.stats().desyncs, 0, "the big delivery ends its read: {:?}", s.stats());
}

#[test]
fn tiny_captures_and_gaps_never_panic_and_stay_bounded() {
    for file in [PRODUCER, CONSUMER] {
        for capture in [0, 1, 7, 8, 13, 40, 100] {
            let (_, s) = replay_with(&records(file), Side::Client, capture, |n| vec![n]);
            assert!(s.channels_tracked() <= MAX_CHANNELS);
        }
    }
}

#[test]
fn starts_mid_connection() {
    // Attach after the handshake and queue setup: frame_max is unknown.
    let recs = records(CONSUMER);
    let at = recs.iter().position(|(c, b)| *c && b.len() == 38).expect("consume audit");
    let (ev, s) = replay_with(&recs[at..], Side::Client, usize::MAX, |n| vec![n]);
    assert_eq!(s.stats().desyncs, 0);
    let d = deliveries(&ev);
    assert_eq!(d[0].queue.as_deref(), Some("audit"), "its consume was seen");
    assert!(d.iter().any(|d| d.delivery_tag == 1 && d.channel == 2), "{d:?}");
    // The orders consumer was registered before: deliveries on its tag
    // would have no queue; its settles still come through.
    assert_eq!(settles(&ev).len(), 5);
}

fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(0xCE);
    v
}

fn method(channel: u16, class: u16, id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(args);
    frame(1, channel, &p)
}

fn egress(data: &[u8]) -> Chunk<'_> {
    Chunk { direction: Direction::Egress, data, total: data.len(), ts_enter: 10, ts_exit: 20 }
}

#[test]
fn corrupt_frame_end_resyncs_within_the_chunk() {
    let recs = records(PRODUCER);
    // The write with the audit, big, jobs and batch publishes.
    let at = recs.iter().position(|(c, b)| *c && b.len() > 20000).unwrap();
    let (mut out, mut s) = replay_with(&recs[..at], Side::Client, usize::MAX, |n| vec![n]);
    let before = publishes(&out).len();
    let mut bad = recs[at].1.clone();
    // The first frame is the audit publish method: break its end octet.
    let size = u32::from_be_bytes(bad[3..7].try_into().unwrap()) as usize;
    bad[7 + size] = 0;
    s.on_chunk(&egress(&bad), &mut out);
    assert_eq!(s.stats().desyncs, 1);
    // The audit message is lost: framing resumes at its content header,
    // an orphan like its body, then the next publish is read.
    let p = &publishes(&out)[before..];
    assert_eq!(p.first().map(|p| p.routing_key.as_str()), Some("orders"), "{:?}", s.stats());
    assert_eq!(p.len(), 7);
    assert_eq!(s.stats().orphan_content, 2, "{:?}", s.stats());
}

#[test]
fn heartbeats_and_other_protocols() {
    let mut s = AmqpSession::new(Side::Client);
    let mut out = Vec::new();
    s.on_chunk(&egress(&frame(8, 0, &[])), &mut out);
    assert_eq!((s.stats().heartbeats, s.stats().desyncs), (1, 0));
    assert!(looks_like_amqp(&frame(8, 0, &[]), Direction::Ingress));
    // AMQP 1.0: nothing more is parsed.
    let mut s = AmqpSession::new(Side::Client);
    s.on_chunk(&egress(b"AMQP\x00\x01\x00\x00"), &mut out);
    assert!(s.stats().unsupported_protocol);
    s.on_chunk(&egress(&method(1, 60, 40, b"\0\0\0\x01q\0")), &mut out);
    assert_eq!(s.stats().frames, 0);
}

#[test]
fn detection() {
    let recs = records(PRODUCER);
    assert!(looks_like_amqp(&recs[0].1, Direction::Egress), "protocol header");
    assert!(looks_like_amqp(&recs[1].1, Direction::Ingress), "connection.start");
    for (_, b) in &recs[2..] {
        assert!(looks_like_amqp(b, Direction::Egress), "{:?}", &b[..b.len().min(16)]);
    }
    assert!(!looks_like_amqp(b"AMQP\x00\x01\x00\x00", Direction::Egress), "AMQP 1.0");
    assert!(!looks_like_amqp(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Direction::Egress));
    assert!(!looks_like_amqp(b"Q\0\0\0\x0dSELECT 1\0", Direction::Egress));
    assert!(!looks_like_amqp(&[1, 0, 1, 0, 0, 0, 5, 0, 60, 0, 40, 0, 0], Direction::Egress), "end octet missing");
    // A body frame alone is not enough (it could be anything).
    assert!(!looks_like_amqp(&frame(3, 1, b"hello"), Direction::Egress));
    // A plausible frame followed by garbage.
    let mut f = method(1, 60, 80, &[0, 0, 0, 0, 0, 0, 0, 1, 0]);
    f.extend_from_slice(b"garbage!");
    assert!(!looks_like_amqp(&f, Direction::Egress));
}

#[test]
fn channels_consumers_and_requests_are_bounded() {
    let mut s = AmqpSession::new(Side::Client);
    let mut out = Vec::new();
    let mut data = Vec::new();
    for ch in 1..=1000u16 {
        // queue.declare-ok from the broker creates channel state.
        data.extend(method(ch, 50, 11, b"\x01q\0\0\0\0\0\0\0\0"));
    }
    let chunk = Chunk { direction: Direction::Ingress, data: &data, total: data.len(), ts_enter: 1, ts_exit: 2 };
    s.on_chunk(&chunk, &mut out);
    assert_eq!(s.channels_tracked(), MAX_CHANNELS);
    assert_eq!(s.stats().channels_untracked, 1000 - MAX_CHANNELS as u64);
    // Consumers on one channel: consume(no-wait, tag) x 1000.
    let mut data = Vec::new();
    for i in 0..1000 {
        let tag = format!("t{i}");
        let mut args = vec![0, 0, 1, b'q', tag.len() as u8];
        args.extend_from_slice(tag.as_bytes());
        args.extend_from_slice(&[8, 0, 0, 0, 0]);
        data.extend(method(1, 60, 20, &args));
        // basic.get without answers.
        data.extend(method(1, 60, 70, b"\0\0\x01q\0"));
    }
    s.on_chunk(&egress(&data), &mut out);
    let ch = &s.st.channels[&1];
    assert_eq!(ch.consumers.len(), MAX_CONSUMERS);
    assert_eq!(ch.gets.len(), MAX_PENDING_REQUESTS);
    assert_eq!(s.stats().parse_errors, 0);
}

#[test]
fn random_bytes_and_mutations_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let recs = records(CONSUMER);
    for _ in 0..300 {
        let mut s = AmqpSession::new(if rng.below(2) == 0 { Side::Client } else { Side::Server });
        let mut out = Vec::new();
        for (from_client, b) in &recs {
            let mut b = b.clone();
            for _ in 0..rng.below(3) {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
            }
            let cut = rng.below(b.len() + 1);
            let direction = if *from_client { Direction::Egress } else { Direction::Ingress };
            let total = b.len() + if rng.below(8) == 0 { rng.below(100_000) } else { 0 };
            let chunk = Chunk { direction, data: &b[..cut], total, ts_enter: 1, ts_exit: 2 };
            s.on_chunk(&chunk, &mut out);
        }
        s.on_close(&mut out);
        assert!(s.channels_tracked() <= MAX_CHANNELS);
        let _ = looks_like_amqp(&recs[rng.below(recs.len())].1, Direction::Egress);
    }
}

// ---------------------------------------------------------------------------
// Frame-aware capture (PERISCOPE_CAPTURE_AMQP_FRAMES): reads arrive as
// segments, with the bytes between them not captured.
// ---------------------------------------------------------------------------

/// Byte ranges of a frame stream the kernel copies with the AMQP frame
/// policy (ebpf/src/amqp_capture.h), merged where they touch.
fn kernel_ranges(stream: &[u8]) -> Vec<(usize, usize)> {
    use crate::probes::wire::{PERISCOPE_AMQP_BODY_KEEP, PERISCOPE_AMQP_HEADER_KEEP, PERISCOPE_AMQP_METHOD_KEEP};
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    while at + 7 <= stream.len() {
        let size = u32::from_be_bytes(stream[at + 3..at + 7].try_into().unwrap()) as usize;
        let keep = match stream[at] {
            1 => PERISCOPE_AMQP_METHOD_KEEP,
            2 => PERISCOPE_AMQP_HEADER_KEEP,
            3 => PERISCOPE_AMQP_BODY_KEEP,
            _ => 0,
        } as usize;
        let len = size + 8;
        let mut want = 7 + size.min(keep);
        if want + 1 >= len {
            want = len;
        }
        match out.last_mut() {
            Some(last) if last.1 == at => last.1 = at + want,
            _ => out.push((at, at + want)),
        }
        at += len;
    }
    out
}

/// The chunks of one read of bytes `r0..r1` of `stream`, as the agent
/// builds them from the kernel's segments (capture::DataEvent::chunks).
fn segmented_read(stream: &[u8], ranges: &[(usize, usize)], r0: usize, r1: usize) -> Vec<(Vec<u8>, usize)> {
    let segs: Vec<(usize, usize)> =
        ranges.iter().map(|&(a, b)| (a.max(r0), b.min(r1))).filter(|(a, b)| a < b).collect();
    let mut out = Vec::new();
    let first = segs.first().map_or(r1, |s| s.0);
    if first > r0 {
        out.push((Vec::new(), first - r0));
    }
    for (i, &(a, b)) in segs.iter().enumerate() {
        let next = segs.get(i + 1).map_or(r1, |s| s.0);
        out.push((stream[a..b].to_vec(), next - a));
    }
    out
}

/// Replays a client's recording with the broker's frames read as the
/// kernel captures them with the frame policy: runs of broker records
/// between two client records form one stream cut into reads by `cut`
/// (lengths), each read sent as its segments. Client writes are whole.
fn replay_segmented(
    recs: &[(bool, Vec<u8>)],
    mut cut: impl FnMut(usize) -> Vec<usize>,
) -> (Vec<AmqpEvent>, AmqpSession) {
    let mut stream = Vec::new();
    let mut runs: Vec<Result<(usize, usize), usize>> = Vec::new();
    for (i, (from_client, b)) in recs.iter().enumerate() {
        if *from_client {
            runs.push(Err(i));
            continue;
        }
        let at = stream.len();
        stream.extend_from_slice(b);
        match runs.last_mut() {
            Some(Ok(run)) => run.1 = stream.len(),
            _ => runs.push(Ok((at, stream.len()))),
        }
    }
    let ranges = kernel_ranges(&stream);
    let mut s = AmqpSession::new(Side::Client);
    let mut out = Vec::new();
    let mut ts = 1_000;
    for run in runs {
        let reads = match run {
            Err(i) => {
                s.on_chunk(&Chunk { ts_enter: ts, ts_exit: ts + 500, ..egress(&recs[i].1) }, &mut out);
                ts += 1_000;
                continue;
            }
            Ok((a, b)) => (a, cut(b - a)),
        };
        let mut r0 = reads.0;
        for len in reads.1 {
            for (data, total) in segmented_read(&stream, &ranges, r0, r0 + len) {
                let chunk =
                    Chunk { direction: Direction::Ingress, data: &data, total, ts_enter: ts, ts_exit: ts + 500 };
                s.on_chunk(&chunk, &mut out);
            }
            r0 += len;
            ts += 1_000;
        }
    }
    (out, s)
}

#[test]
fn segmented_reads_give_the_same_events() {
    let recs = records(CONSUMER);
    let whole = summary(&replay(CONSUMER).0);
    // Each run of broker records in one read, then in reads cut anywhere
    // (inside headers, payloads, at end octets), down to one byte.
    let (ev, s) = replay_segmented(&recs, |n| vec![n]);
    assert_clean(&s);
    assert_eq!(summary(&ev), whole);
    assert!(s.stats().gap_frames > 0, "bytes were left out: {:?}", s.stats());
    let (ev, s) = replay_segmented(&recs, |n| vec![1; n]);
    assert_clean(&s);
    assert_eq!(summary(&ev), whole);
    let mut rng = Rng(0x6a09_e667_f3bc_c908);
    for _ in 0..50 {
        let (ev, s) = replay_segmented(&recs, |mut n| {
            let mut v = Vec::new();
            while n > 0 {
                let most = if rng.below(2) == 0 { 12 } else { 3000 };
                let k = (rng.below(most) + 1).min(n);
                v.push(k);
                n -= k;
            }
            v
        });
        assert_clean(&s);
        assert_eq!(summary(&ev), whole);
    }
}

/// basic.deliver on channel 1, its content header (a traceparent in the
/// headers table) and body.
fn delivery_frames(tag: u64, tp: &str, body: &[u8]) -> Vec<u8> {
    let mut args = vec![9];
    args.extend_from_slice(b"amq.ctag1");
    args.extend_from_slice(&tag.to_be_bytes());
    args.extend_from_slice(&[0, 0, 8]);
    args.extend_from_slice(b"messages");
    let mut v = method(1, 60, 60, &args);
    let mut table = vec![11];
    table.extend_from_slice(b"traceparent");
    table.push(b'S');
    table.extend_from_slice(&(tp.len() as u32).to_be_bytes());
    table.extend_from_slice(tp.as_bytes());
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&(body.len() as u64).to_be_bytes());
    header.extend_from_slice(&(1u16 << 13).to_be_bytes());
    header.extend_from_slice(&(table.len() as u32).to_be_bytes());
    header.extend_from_slice(&table);
    v.extend(frame(2, 1, &header));
    v.extend(frame(3, 1, body));
    v
}

#[test]
fn a_burst_of_deliveries_in_large_reads_is_seen_whole() {
    // A consumer that fell behind: 500 deliveries read 64 KiB at a time.
    // Each keeps its traceparent and its fingerprint, as if nothing had
    // been left out.
    let mut stream = Vec::new();
    for tag in 1..=500u64 {
        let tp = format!("00-{tag:032x}-{tag:016x}-01");
        let body: Vec<u8> = (0..(100 + tag as usize * 7 % 400)).map(|i| (i as u64 * tag) as u8).collect();
        stream.extend(delivery_frames(tag, &tp, &body));
    }
    let ranges = kernel_ranges(&stream);
    let captured: usize = ranges.iter().map(|(a, b)| b - a).sum();
    assert!(captured * 2 < stream.len(), "most body bytes are left out: {captured} of {}", stream.len());
    let mut whole = AmqpSession::new(Side::Client);
    let mut expected = Vec::new();
    let all = Chunk { direction: Direction::Ingress, data: &stream, total: stream.len(), ts_enter: 1, ts_exit: 2 };
    whole.on_chunk(&all, &mut expected);
    let mut s = AmqpSession::new(Side::Client);
    let mut out = Vec::new();
    for r0 in (0..stream.len()).step_by(65_536) {
        let r1 = (r0 + 65_536).min(stream.len());
        for (data, total) in segmented_read(&stream, &ranges, r0, r1) {
            let chunk = Chunk { direction: Direction::Ingress, data: &data, total, ts_enter: 1, ts_exit: 2 };
            s.on_chunk(&chunk, &mut out);
        }
    }
    assert_clean(&s);
    let d = deliveries(&out);
    assert_eq!(d.len(), 500);
    assert_eq!(d, deliveries(&expected));
    assert!(d.iter().all(|d| d.traceparent.is_some() && d.fingerprint.is_some()));
    // With the default 512-byte prefix of each read, most are lost.
    let mut s = AmqpSession::new(Side::Client);
    let mut out = Vec::new();
    for r0 in (0..stream.len()).step_by(65_536) {
        let r1 = (r0 + 65_536).min(stream.len());
        let chunk = Chunk {
            direction: Direction::Ingress,
            data: &stream[r0..r0 + 512],
            total: r1 - r0,
            ts_enter: 1,
            ts_exit: 2,
        };
        s.on_chunk(&chunk, &mut out);
    }
    assert!(deliveries(&out).len() < 50, "{}", deliveries(&out).len());
}
