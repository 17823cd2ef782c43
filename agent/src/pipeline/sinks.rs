//! Where finished spans go: metrics sinks see every span as soon as it
//! finishes (sampled or not, before its trace id is decided), trace sinks
//! see sampled spans with their final ids. The series of a departed process
//! stay a grace period, so that their last values are exported and scraped.
use std::{collections::VecDeque, time::Duration, time::Instant};

use crate::model::Span;

/// Somewhere finished spans go (printer, OTLP queue, metrics). Must not block.
pub trait SpanSink: Send {
    fn submit(&mut self, span: &Span);

    /// The span itself, for a sink that keeps it (the OTLP queue): given to
    /// the last trace sink, so that no span is cloned for the export queue.
    fn submit_owned(&mut self, span: Span) {
        self.submit(&span);
    }

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
        let Some(last) = self.sinks.iter().rposition(|s| !s.sees_every_span()) else {
            spans.clear();
            return;
        };
        for span in spans.drain(..) {
            for sink in self.sinks[..last].iter_mut().filter(|s| !s.sees_every_span()) {
                sink.submit(&span);
            }
            self.sinks[last].submit_owned(span);
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::model::{Service, Signal, SpanKind, SpanStatus};

    /// (span name, given owned?) in the order they came.
    type Log = Arc<Mutex<Vec<(String, bool)>>>;

    /// Records what it got and how.
    struct Recorder {
        every: bool,
        got: Log,
    }

    impl SpanSink for Recorder {
        fn submit(&mut self, span: &Span) {
            self.got.lock().unwrap().push((span.name.clone(), false));
        }
        fn submit_owned(&mut self, span: Span) {
            self.got.lock().unwrap().push((span.name, true));
        }
        fn sees_every_span(&self) -> bool {
            self.every
        }
    }

    #[test]
    fn every_trace_sink_gets_each_decided_span_and_the_last_one_owns_it() {
        let logs: Vec<Log> = (0..3).map(|_| Arc::default()).collect();
        let mut sinks = Sinks::new(vec![
            Box::new(Recorder { every: false, got: logs[0].clone() }),
            Box::new(Recorder { every: false, got: logs[1].clone() }),
            Box::new(Recorder { every: true, got: logs[2].clone() }),
        ]);
        let service =
            Arc::new(Service { name: "s".into(), namespace: None, instance_id: "i".into(), attributes: vec![] });
        let span = |name: &str| {
            Span::new(&service, SpanKind::Server, Signal::HttpServer, name.into(), 1, 2, vec![], SpanStatus::Unset)
        };
        sinks.finished(&span("early"));
        let mut decided = vec![span("a"), span("b")];
        sinks.decided(&mut decided);
        assert!(decided.is_empty());
        let got = |i: usize| logs[i].lock().unwrap().clone();
        assert_eq!(got(0), [("a".into(), false), ("b".into(), false)]);
        assert_eq!(got(1), [("a".into(), true), ("b".into(), true)], "the last trace sink owns the spans");
        assert_eq!(got(2), [("early".into(), false)], "the metrics sink sees spans as they finish only");
    }
}
