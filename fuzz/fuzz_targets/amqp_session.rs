//! AmqpSession (client or broker role) on a fuzzed connection history, its
//! events through the settle tracker and the messaging span builders.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use periscope::model::Service;
use periscope::protocols::amqp::{
    looks_like_amqp, AmqpEvent, AmqpSession, Deliveries, Side, MAX_CHANNELS, MAX_PENDING_PER_CHANNEL,
    MAX_TRACKED_CHANNELS,
};
use periscope::spans::clock::Clock;
use periscope::spans::messaging::{build_consumed, build_publish, MessagingContext};
use periscope_fuzz::{Script, Step};

fuzz_target!(|input: &[u8]| {
    let (flags, script) = Script::new(input);
    let role = if flags & 1 == 0 { Side::Server } else { Side::Client };
    let service = Arc::new(Service { name: "f".into(), namespace: None, instance_id: "i".into(), attributes: vec![] });
    let ctx = MessagingContext {
        service: &service,
        local: "127.0.0.1:40000".parse().unwrap(),
        remote: "127.0.0.1:5672".parse().unwrap(),
    };
    let clock = Clock::with_offset(0);
    let mut s = AmqpSession::new(role);
    let mut tracker = Deliveries::new();
    let mut events = Vec::new();
    let mut consumed = Vec::new();
    let mut spans = 0usize;
    let mut first = true;
    for step in script {
        if let Step::Chunk(c) = step {
            if first {
                let _ = looks_like_amqp(c.data, c.direction);
                first = false;
            }
            s.on_chunk(&c, &mut events);
        }
        for e in events.drain(..) {
            match e {
                AmqpEvent::Publish(p) => {
                    let m = build_publish(&p, &ctx, &clock);
                    assert!(m.end_unix_nanos >= m.start_unix_nanos);
                    spans += 1;
                }
                AmqpEvent::Deliver(d) => tracker.on_delivery(d, &mut consumed),
                AmqpEvent::Settle(st) => tracker.on_settle(&st, &mut consumed),
                AmqpEvent::Close(c) => tracker.on_closed((c.channel != 0).then_some(c.channel), &mut consumed),
                AmqpEvent::Confirm(_) | AmqpEvent::Return(_) => {}
            }
        }
        for m in consumed.drain(..) {
            let span = build_consumed(&m, &ctx, &clock);
            assert!(span.end_unix_nanos >= span.start_unix_nanos);
            spans += 1;
        }
        assert!(s.channels_tracked() <= MAX_CHANNELS);
        assert!(tracker.pending() <= MAX_PENDING_PER_CHANNEL * MAX_TRACKED_CHANNELS);
    }
    s.on_close(&mut events);
    tracker.on_closed(None, &mut consumed);
    if periscope_fuzz::verbose() {
        eprintln!("{spans} spans vhost={:?} {:?} {:?}", s.vhost(), s.stats(), tracker.stats());
    }
});
