//! The agent's own counters: every event, message or span it drops is counted
//! here and exported on /metrics (and over OTLP) under `periscope_*`.
use std::sync::atomic::{AtomicU64, Ordering};

/// One of the agent's own counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    EventsReceived,
    EventsLostRingbuf,
    EventsLostPending,
    KernelConnMapFull,
    KernelIovTruncated,
    KernelReadFailed,
    EventsMalformed,
    EventsUntracked,
    ParseErrors,
    UnknownProtocol,
    ProtocolDesync,
    SkippedMessages,
    RequestsUnmatched,
    ConnectionsEvicted,
    SpansProduced,
    SpansDroppedQueue,
    SpansExported,
    ExportErrors,
    ExportBatchesDropped,
    MetricOverflow,
    RouteOverflow,
    ProcessesTracked,
    ProcessesForgotten,
    ContextMissing,
    ContextThreadsReset,
    ContextExpired,
    ContextForced,
    LinkPartnerLate,
    SpansLinked,
    SpansSampledOut,
    ContextHandoffs,
    ServiceGraphExpired,
    ServiceGraphDropped,
    KubernetesApiErrors,
    KubernetesObjectsDropped,
}

impl Counter {
    pub const ALL: [Counter; 35] = [
        Counter::EventsReceived,
        Counter::EventsLostRingbuf,
        Counter::EventsLostPending,
        Counter::KernelConnMapFull,
        Counter::KernelIovTruncated,
        Counter::KernelReadFailed,
        Counter::EventsMalformed,
        Counter::EventsUntracked,
        Counter::ParseErrors,
        Counter::UnknownProtocol,
        Counter::ProtocolDesync,
        Counter::SkippedMessages,
        Counter::RequestsUnmatched,
        Counter::ConnectionsEvicted,
        Counter::SpansProduced,
        Counter::SpansDroppedQueue,
        Counter::SpansExported,
        Counter::ExportErrors,
        Counter::ExportBatchesDropped,
        Counter::MetricOverflow,
        Counter::RouteOverflow,
        Counter::ProcessesTracked,
        Counter::ProcessesForgotten,
        Counter::ContextMissing,
        Counter::ContextThreadsReset,
        Counter::ContextExpired,
        Counter::ContextForced,
        Counter::LinkPartnerLate,
        Counter::SpansLinked,
        Counter::SpansSampledOut,
        Counter::ContextHandoffs,
        Counter::ServiceGraphExpired,
        Counter::ServiceGraphDropped,
        Counter::KubernetesApiErrors,
        Counter::KubernetesObjectsDropped,
    ];

    /// Prometheus name (with the `_total` suffix).
    pub fn name(self) -> &'static str {
        match self {
            Counter::EventsReceived => "periscope_events_received_total",
            Counter::EventsLostRingbuf => "periscope_events_lost_ringbuf_total",
            Counter::EventsLostPending => "periscope_events_lost_pending_map_total",
            Counter::KernelConnMapFull => "periscope_kernel_conn_map_full_total",
            Counter::KernelIovTruncated => "periscope_kernel_iov_truncated_total",
            Counter::KernelReadFailed => "periscope_kernel_read_failed_total",
            Counter::EventsMalformed => "periscope_events_malformed_total",
            Counter::EventsUntracked => "periscope_events_untracked_total",
            Counter::ParseErrors => "periscope_parse_errors_total",
            Counter::UnknownProtocol => "periscope_unknown_protocol_connections_total",
            Counter::ProtocolDesync => "periscope_protocol_desync_total",
            Counter::SkippedMessages => "periscope_skipped_messages_total",
            Counter::RequestsUnmatched => "periscope_requests_unmatched_total",
            Counter::ConnectionsEvicted => "periscope_connections_evicted_total",
            Counter::SpansProduced => "periscope_spans_produced_total",
            Counter::SpansDroppedQueue => "periscope_spans_dropped_total",
            Counter::SpansExported => "periscope_spans_exported_total",
            Counter::ExportErrors => "periscope_export_errors_total",
            Counter::ExportBatchesDropped => "periscope_export_batches_dropped_total",
            Counter::MetricOverflow => "periscope_metric_overflow_total",
            Counter::RouteOverflow => "periscope_route_overflow_total",
            Counter::ProcessesTracked => "periscope_processes_tracked_total",
            Counter::ProcessesForgotten => "periscope_processes_forgotten_total",
            Counter::ContextMissing => "periscope_context_missing_total",
            Counter::ContextThreadsReset => "periscope_context_threads_reset_total",
            Counter::ContextExpired => "periscope_context_expired_total",
            Counter::ContextForced => "periscope_context_forced_total",
            Counter::LinkPartnerLate => "periscope_link_partner_late_total",
            Counter::SpansLinked => "periscope_spans_linked_total",
            Counter::SpansSampledOut => "periscope_spans_sampled_out_total",
            Counter::ContextHandoffs => "periscope_context_handoffs_total",
            Counter::ServiceGraphExpired => "periscope_service_graph_expired_total",
            Counter::ServiceGraphDropped => "periscope_service_graph_dropped_total",
            Counter::KubernetesApiErrors => "periscope_kubernetes_api_errors_total",
            Counter::KubernetesObjectsDropped => "periscope_kubernetes_objects_dropped_total",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            Counter::EventsReceived => "Events read from the kernel ring buffer.",
            Counter::EventsLostRingbuf => "Events the kernel dropped because the ring buffer was full.",
            Counter::EventsLostPending => "Syscalls not followed because the kernel pending-args map was full.",
            Counter::KernelConnMapFull => "Connections the kernel could not cache.",
            Counter::KernelIovTruncated => "Vectored I/O calls with more iovecs than the kernel walks.",
            Counter::KernelReadFailed => "User buffers the kernel could not read.",
            Counter::EventsMalformed => "Ring buffer records too short or of unknown kind.",
            Counter::EventsUntracked => "Events of processes the agent no longer tracks.",
            Counter::ParseErrors => "Protocol messages that could not be parsed.",
            Counter::UnknownProtocol => "Connections whose traffic matched no known protocol.",
            Counter::ProtocolDesync => "Times a connection's message framing was lost and resynchronised.",
            Counter::SkippedMessages => "Protocol messages recognised and deliberately skipped (COPY, TLS, cancel, ...).",
            Counter::RequestsUnmatched => "Requests or responses with no partner, dropped (connection closed or timed out).",
            Counter::ConnectionsEvicted => "Connection states evicted because the connection table was full.",
            Counter::SpansProduced => "Spans finished by the pipeline.",
            Counter::SpansDroppedQueue => "Spans dropped because the export queue was full.",
            Counter::SpansExported => "Spans accepted by the OTLP endpoint.",
            Counter::ExportErrors => "Failed OTLP export attempts (traces and metrics).",
            Counter::ExportBatchesDropped => "OTLP batches given up after retries or because the retry queue was full.",
            Counter::MetricOverflow => "Measurements folded into otel.metric.overflow=true because of the attribute-set cap.",
            Counter::RouteOverflow => "Routes folded into the catch-all because of the per-service route cap.",
            Counter::ProcessesTracked => "Processes that started being tracked.",
            Counter::ProcessesForgotten => "Tracked processes that exited and were forgotten.",
            Counter::ContextMissing => "Exchanges whose start was not seen as such (mid-stream, pipelined): made roots of their own traces.",
            Counter::ContextThreadsReset => "Per-thread current requests dropped because the thread table was full.",
            Counter::ContextExpired => "Spans whose trace group was already forgotten: exported as roots of new traces.",
            Counter::ContextForced => "Trace groups decided before they were complete (waited too long, or too many held).",
            Counter::LinkPartnerLate => "Server spans whose tracked caller's request was not seen within the link wait: not linked.",
            Counter::SpansLinked => "Server spans made children of a tracked caller's client span on this host.",
            Counter::SpansSampledOut => "Spans not exported because their trace was not sampled (metrics still count them).",
            Counter::ContextHandoffs => "Client requests attributed to a queued request of the thread (a connection handed on by an in-process queue).",
            Counter::ServiceGraphExpired => "Service-graph spans whose partner span did not arrive in time (a client span with a known peer still counts as an edge to a virtual node).",
            Counter::ServiceGraphDropped => "Service-graph spans not paired because too many spans were waiting for their partner.",
            Counter::KubernetesApiErrors => "Failed Kubernetes API list/watch calls (retried with backoff; the last known metadata is kept).",
            Counter::KubernetesObjectsDropped => "Pods or ReplicaSets not kept because the Kubernetes metadata store was full.",
        }
    }
}

/// Process-wide counters: relaxed atomics, cheap enough for the hot path.
#[derive(Debug)]
pub struct Telemetry {
    values: [AtomicU64; Counter::ALL.len()],
}

impl Default for Telemetry {
    fn default() -> Self {
        Self { values: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl Telemetry {
    pub fn add(&self, counter: Counter, n: u64) {
        self.values[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Overwrites a counter whose source of truth is elsewhere (the kernel's
    /// per-CPU counters are summed and stored here).
    pub fn set(&self, counter: Counter, value: u64) {
        self.values[counter as usize].store(value, Ordering::Relaxed);
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize].load(Ordering::Relaxed)
    }

    /// (counter, value) of every counter, in declaration order.
    pub fn snapshot(&self) -> Vec<(Counter, u64)> {
        Counter::ALL.iter().map(|&c| (c, self.get(c))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_independent_and_named_uniquely() {
        let t = Telemetry::default();
        t.inc(Counter::ParseErrors);
        t.add(Counter::SpansDroppedQueue, 3);
        assert_eq!(t.get(Counter::ParseErrors), 1);
        assert_eq!(t.get(Counter::SpansDroppedQueue), 3);
        assert_eq!(t.get(Counter::EventsReceived), 0);
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
        assert!(names.iter().all(|n| n.starts_with("periscope_") && n.ends_with("_total")));
    }
}
