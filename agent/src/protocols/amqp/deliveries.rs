//! Pairs the deliveries of one AMQP connection with the client's
//! settlements (ack / nack / reject, single or multiple), per channel:
//! a [`ConsumedMessage`] is a delivery and how its handling ended.
use std::collections::{HashMap, VecDeque};

use super::{Delivery, Settle, SettleOutcome};

/// How a delivery ended, as far as the client's connection shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Settled by the client: start of the write of the settling method.
    Settled { ts: u64, outcome: SettleOutcome },
    /// No settlement will be seen (no-ack, or the channel or connection
    /// closed before it).
    Unsettled,
}

/// A delivery together with its settlement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedMessage {
    pub delivery: Delivery,
    pub settlement: Settlement,
}

/// Deliveries awaiting settlement, per channel of one connection.
pub const MAX_PENDING_PER_CHANNEL: usize = 1024;
pub const MAX_TRACKED_CHANNELS: usize = 64;

/// Counters of a [`Deliveries`] tracker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Deliveries let go unsettled because a bound was reached.
    pub evicted: u64,
    /// Settles that matched no pending delivery.
    pub unmatched_settles: u64,
}

/// Pairs deliveries with the client's settlements on one connection.
/// Bounded per channel and in channels; whatever is let go comes out as
/// [`Settlement::Unsettled`].
#[derive(Default)]
pub struct Deliveries {
    channels: HashMap<u16, VecDeque<Delivery>>,
    stats: DeliveryStats,
}

impl Deliveries {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    pub fn pending(&self) -> usize {
        self.channels.values().map(VecDeque::len).sum()
    }

    /// A delivery was read. No-ack deliveries are finished at once.
    pub fn on_delivery(&mut self, d: Delivery, out: &mut Vec<ConsumedMessage>) {
        if d.no_ack {
            out.push(ConsumedMessage { delivery: d, settlement: Settlement::Unsettled });
            return;
        }
        if !self.channels.contains_key(&d.channel) && self.channels.len() >= MAX_TRACKED_CHANNELS {
            self.stats.evicted += 1;
            out.push(ConsumedMessage { delivery: d, settlement: Settlement::Unsettled });
            return;
        }
        let q = self.channels.entry(d.channel).or_default();
        if q.len() >= MAX_PENDING_PER_CHANNEL {
            if let Some(old) = q.pop_front() {
                self.stats.evicted += 1;
                out.push(ConsumedMessage { delivery: old, settlement: Settlement::Unsettled });
            }
        }
        q.push_back(d);
    }

    /// The client settled one delivery, or with `multiple` all up to the
    /// tag (tag 0 with `multiple`: all outstanding ones).
    pub fn on_settle(&mut self, s: &Settle, out: &mut Vec<ConsumedMessage>) {
        let Some(q) = self.channels.get_mut(&s.channel) else {
            self.stats.unmatched_settles += 1;
            return;
        };
        let settlement = Settlement::Settled { ts: s.ts, outcome: s.outcome };
        let before = out.len();
        if s.multiple {
            let all = s.delivery_tag == 0;
            let mut keep = VecDeque::with_capacity(q.len());
            for d in q.drain(..) {
                if all || d.delivery_tag <= s.delivery_tag {
                    out.push(ConsumedMessage { delivery: d, settlement: settlement.clone() });
                } else {
                    keep.push_back(d);
                }
            }
            *q = keep;
        } else if let Some(i) = q.iter().position(|d| d.delivery_tag == s.delivery_tag) {
            let d = q.remove(i).expect("index from position");
            out.push(ConsumedMessage { delivery: d, settlement });
        }
        if out.len() == before {
            self.stats.unmatched_settles += 1;
        }
        if q.is_empty() {
            self.channels.remove(&s.channel);
        }
    }

    /// The channel closed (or, with `None`, the connection): the broker
    /// requeues what was not settled.
    pub fn on_closed(&mut self, channel: Option<u16>, out: &mut Vec<ConsumedMessage>) {
        let drained: Vec<VecDeque<Delivery>> = match channel {
            Some(c) => self.channels.remove(&c).into_iter().collect(),
            None => self.channels.drain().map(|(_, q)| q).collect(),
        };
        for d in drained.into_iter().flatten() {
            out.push(ConsumedMessage { delivery: d, settlement: Settlement::Unsettled });
        }
    }
}

#[cfg(test)]
mod tests;
