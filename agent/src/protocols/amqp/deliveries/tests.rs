//! The settlement tracker on hand-made deliveries and settles.
use super::*;

fn delivery(channel: u16, tag: u64) -> Delivery {
    Delivery {
        channel,
        delivery_tag: tag,
        consumer_tag: Some("c".into()),
        queue: Some("q".into()),
        exchange: String::new(),
        routing_key: "q".into(),
        redelivered: false,
        body_size: 1,
        traceparent: None,
        tracestate: None,
        message_id: None,
        correlation_id: None,
        fingerprint: None,
        no_ack: false,
        via_get: false,
        ts_received: tag,
    }
}

fn settle(channel: u16, tag: u64, multiple: bool) -> Settle {
    Settle { channel, delivery_tag: tag, multiple, outcome: SettleOutcome::Ack, ts: 1_000_000 }
}

#[test]
fn tracker_matches_multiple_and_stays_bounded() {
    let mut t = Deliveries::new();
    let mut out = Vec::new();
    for tag in 1..=5 {
        t.on_delivery(delivery(1, tag), &mut out);
    }
    t.on_settle(&settle(1, 3, true), &mut out);
    assert_eq!(out.iter().map(|m| m.delivery.delivery_tag).collect::<Vec<_>>(), [1, 2, 3]);
    t.on_settle(&settle(1, 9, false), &mut out);
    assert_eq!(t.stats().unmatched_settles, 1);
    t.on_settle(&settle(1, 0, true), &mut out);
    assert_eq!(out.len(), 5, "tag 0 + multiple settles everything");
    assert_eq!(t.pending(), 0);
    out.clear();

    for tag in 1..=(MAX_PENDING_PER_CHANNEL as u64 + 10) {
        t.on_delivery(delivery(1, tag), &mut out);
    }
    assert_eq!(t.pending(), MAX_PENDING_PER_CHANNEL);
    assert_eq!(out.len(), 10);
    assert!(out.iter().all(|m| m.settlement == Settlement::Unsettled && m.delivery.delivery_tag <= 10));
    for ch in 2..=(MAX_TRACKED_CHANNELS as u16 + 5) {
        t.on_delivery(delivery(ch, 1), &mut out);
    }
    // Channel 1 and 63 new ones are tracked; the last 5 are let go at once.
    assert_eq!(t.stats().evicted, 10 + 5);
    t.on_closed(Some(1), &mut out);
    assert_eq!(t.pending(), MAX_TRACKED_CHANNELS - 1);
    t.on_closed(None, &mut out);
    assert_eq!(t.pending(), 0);
}
