//! Where finished spans go: metrics sinks see every span as soon as it
//! finishes (sampled or not, before its trace id is decided), trace sinks
//! see sampled spans with their final ids. The series of a departed process
//! stay a grace period, so that their last values are exported and scraped.
use std::{collections::VecDeque, time::Duration, time::Instant};

use crate::model::Span;

/// Somewhere finished spans go (printer, OTLP queue, metrics). Must not block.
pub trait SpanSink: Send {
    fn submit(&mut self, span: &Span);

    /// Metrics sinks see every span as soon as it finishes, sampled or not,
    /// before its trace id is decided; trace sinks see sampled spans with
    /// their final ids.
    fn sees_every_span(&self) -> bool {
        false
    }

    /// A service's process exited a while ago: drop what is kept for it.
    fn forget_service(&mut self, _instance_id: &str) {}
}

/// How long a dead process's metric series stay, so that the last values are
/// exported and scraped before they go.
const SERVICE_GRACE: Duration = Duration::from_secs(120);

/// The sinks, fanned out to.
pub struct Sinks {
    sinks: Vec<Box<dyn SpanSink>>,
    /// Instance ids of exited processes, with when they exited.
    departed: VecDeque<(Instant, String)>,
}

impl Sinks {
    pub fn new(sinks: Vec<Box<dyn SpanSink>>) -> Self {
        Self { sinks, departed: VecDeque::new() }
    }

    /// A span with its final id and parent, trace not decided yet.
    pub fn finished(&mut self, span: &Span) {
        for sink in self.sinks.iter_mut().filter(|s| s.sees_every_span()) {
            sink.submit(span);
        }
    }

    /// Spans whose trace is decided and sampled.
    pub fn decided(&mut self, spans: &mut Vec<Span>) {
        for span in spans.drain(..) {
            for sink in self.sinks.iter_mut().filter(|s| !s.sees_every_span()) {
                sink.submit(&span);
            }
        }
    }

    /// A service's process exited: its series go after the grace period.
    pub fn departed(&mut self, instance_id: String) {
        self.departed.push_back((Instant::now(), instance_id));
    }

    /// Forgets the services whose grace period is over.
    pub fn tick(&mut self) {
        while self.departed.front().is_some_and(|(since, _)| since.elapsed() >= SERVICE_GRACE) {
            let Some((_, instance)) = self.departed.pop_front() else { break };
            for sink in &mut self.sinks {
                sink.forget_service(&instance);
            }
        }
    }
}
