//! Span export: a bounded, non-blocking queue in front of a batching task.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    trace::v1::{self as otlp, span::SpanKind as OtlpKind, status::StatusCode, ResourceSpans, ScopeSpans},
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{
    config::{OtlpConfig, OtlpSignal},
    convert::{key_value, resource, scope},
    encode::encode_request,
    transport::{deliver, Backoff, Outbox, Payload, Pending, Transport},
    ExportError,
};
use crate::{
    model::{Span, SpanKind, SpanStatus},
    telemetry::{Counter, Telemetry},
};

/// Bit 8 of OTLP `Span.flags`: whether the parent's remoteness is known.
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
/// Bit 9: the parent is remote.
const FLAG_IS_REMOTE: u32 = 0x200;

pub(super) fn otlp_kind(kind: SpanKind) -> OtlpKind {
    match kind {
        SpanKind::Server => OtlpKind::Server,
        SpanKind::Client => OtlpKind::Client,
        SpanKind::Producer => OtlpKind::Producer,
        SpanKind::Consumer => OtlpKind::Consumer,
        SpanKind::Internal => OtlpKind::Internal,
    }
}

/// OTLP `Span.flags`: the W3C trace flags, and whether the parent is remote.
/// The parent of a span the agent sees is in another process (server spans:
/// the caller) or unknown; only server/consumer parents are known remote.
pub(super) fn span_flags(span: &Span) -> u32 {
    let mut flags = u32::from(span.trace_flags);
    if span.parent_span_id.is_some() && matches!(span.kind, SpanKind::Server | SpanKind::Consumer) {
        flags |= FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE;
    }
    flags
}

/// One span as the generated OTLP type (tests, tools; the exporter writes
/// bytes directly: `encode.rs`).
pub fn span_to_otlp(span: &Span) -> otlp::Span {
    let kind = otlp_kind(span.kind);
    let status = match &span.status {
        SpanStatus::Unset => None,
        SpanStatus::Error(msg) => Some(otlp::Status { message: msg.clone(), code: StatusCode::Error as i32 }),
    };
    let flags = span_flags(span);
    otlp::Span {
        trace_id: span.trace_id.0.to_vec(),
        span_id: span.span_id.0.to_vec(),
        trace_state: span.trace_state.clone().unwrap_or_default(),
        parent_span_id: span.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags,
        name: span.name.clone(),
        kind: kind as i32,
        start_time_unix_nano: span.start_unix_nanos,
        end_time_unix_nano: span.end_unix_nanos,
        attributes: span.attributes.iter().map(|a| key_value(a.key, &a.value)).collect(),
        status,
        ..Default::default()
    }
}

/// One request for a batch: one ResourceSpans per service instance, in
/// first-seen order, as the generated types (what `encode::encode_request`
/// writes as bytes).
pub fn build_request(spans: &[Span]) -> ExportTraceServiceRequest {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<ResourceSpans> = Vec::new();
    for span in spans {
        let i = *index.entry(span.service.instance_id.as_str()).or_insert_with(|| {
            out.push(ResourceSpans {
                resource: Some(resource(&span.service)),
                scope_spans: vec![ScopeSpans { scope: Some(scope()), ..Default::default() }],
                ..Default::default()
            });
            out.len() - 1
        });
        out[i].scope_spans[0].spans.push(span_to_otlp(span));
    }
    ExportTraceServiceRequest { resource_spans: out }
}

struct Tasks {
    shutdown: Option<oneshot::Sender<()>>,
    batcher: Option<JoinHandle<()>>,
    sender: Option<JoinHandle<()>>,
}

/// Where the pipeline hands finished spans. Cheap to clone; `submit` never blocks.
#[derive(Clone)]
pub struct TraceQueue {
    tx: mpsc::Sender<Span>,
    telemetry: Arc<Telemetry>,
    outbox: Arc<Outbox>,
    tasks: Arc<Mutex<Tasks>>,
}

impl TraceQueue {
    /// Queues the span; drops it (counted in `SpansDroppedQueue`) when the queue is full.
    pub fn submit(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.telemetry.inc(Counter::SpansDroppedQueue);
        }
    }

    /// Sealed batches waiting for delivery (bounded by `max_pending_batches`).
    pub fn pending_batches(&self) -> usize {
        self.outbox.len()
    }

    /// Stops accepting batches, sends what is queued and pending, and gives up
    /// (counting dropped batches) after `deadline`. Later `submit`s are dropped.
    pub async fn shutdown(&self, deadline: Duration) {
        let (shutdown, batcher, sender) = {
            let mut t = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            (t.shutdown.take(), t.batcher.take(), t.sender.take())
        };
        if let Some(s) = shutdown {
            let _ = s.send(());
        }
        let abort = sender.as_ref().map(|s| s.abort_handle());
        let work = async {
            if let Some(b) = batcher {
                let _ = b.await;
            }
            if let Some(s) = sender {
                let _ = s.await;
            }
        };
        if tokio::time::timeout(deadline, work).await.is_err() {
            tracing::warn!("OTLP trace export did not finish before the shutdown deadline");
            if let Some(a) = abort {
                a.abort();
            }
            self.outbox.close();
            self.outbox.discard_all();
        }
    }
}

/// Starts the batching and delivery tasks (needs a tokio runtime).
pub fn spawn_trace_exporter(cfg: &OtlpConfig, telemetry: Arc<Telemetry>) -> Result<TraceQueue, ExportError> {
    let signal_cfg = cfg.traces.as_ref().ok_or(ExportError::NotConfigured(OtlpSignal::Traces))?;
    let transport = Transport::new(signal_cfg)?;
    let b = cfg.batch.clone();
    let (tx, rx) = mpsc::channel(b.queue_capacity.max(1));
    let outbox = Outbox::new(b.max_pending_batches, telemetry.clone());
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let batcher = tokio::spawn(batch_loop(rx, shutdown_rx, outbox.clone(), b.max_batch_size.max(1), b.max_batch_delay));
    let sender = tokio::spawn(deliver(
        outbox.clone(),
        transport,
        Backoff::new(b.backoff_initial, b.backoff_max),
        OtlpSignal::Traces,
    ));
    Ok(TraceQueue {
        tx,
        telemetry,
        outbox,
        tasks: Arc::new(Mutex::new(Tasks {
            shutdown: Some(shutdown_tx),
            batcher: Some(batcher),
            sender: Some(sender),
        })),
    })
}

fn seal(batch: &mut Vec<Span>, outbox: &Outbox) {
    if batch.is_empty() {
        return;
    }
    let items = batch.len() as u64;
    outbox.push(Pending { payload: Payload::Traces(encode_request(batch)), items });
    batch.clear();
}

async fn batch_loop(
    mut rx: mpsc::Receiver<Span>,
    mut shutdown: oneshot::Receiver<()>,
    outbox: Arc<Outbox>,
    max_batch: usize,
    max_delay: Duration,
) {
    let mut batch: Vec<Span> = Vec::with_capacity(max_batch);
    let mut deadline = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            span = rx.recv() => match span {
                Some(span) => {
                    if batch.is_empty() {
                        deadline = tokio::time::Instant::now() + max_delay;
                    }
                    batch.push(span);
                    if batch.len() >= max_batch {
                        seal(&mut batch, &outbox);
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline), if !batch.is_empty() => seal(&mut batch, &outbox),
        }
    }
    // Flush: whatever is already queued, then stop.
    rx.close();
    while let Ok(span) = rx.try_recv() {
        batch.push(span);
        if batch.len() >= max_batch {
            seal(&mut batch, &outbox);
        }
    }
    seal(&mut batch, &outbox);
    outbox.close();
}
