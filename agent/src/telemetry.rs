//! The agent's own counters: every event, message or span it drops is counted
//! here and exported on /metrics (and over OTLP) under `periscope_*`.
//! Counters about traffic can be broken down by protocol (and a reason):
//! `periscope_protocol_desync_total{protocol="http",reason="..."}`.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Declares `Counter` and its name and help tables from one list.
macro_rules! counters {
    ($($variant:ident => $name:literal, $help:literal),+ $(,)?) => {
        /// One of the agent's own counters.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Counter {
            $($variant),+
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant),+];

            /// Prometheus name (with the `_total` suffix).
            pub fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name),+
                }
            }

            pub fn help(self) -> &'static str {
                match self {
                    $(Counter::$variant => $help),+
                }
            }
        }
    };
}

counters! {
    EventsReceived => "periscope_events_received_total", "Events read from the kernel ring buffer.",
    EventsLostRingbuf => "periscope_events_lost_ringbuf_total", "Events the kernel dropped because the ring buffer was full.",
    EventsLostPending => "periscope_events_lost_pending_map_total", "Syscalls not followed because the kernel pending-args map was full.",
    KernelConnMapFull => "periscope_kernel_conn_map_full_total", "Connections the kernel could not cache.",
    KernelIovTruncated => "periscope_kernel_iov_truncated_total", "Vectored I/O calls with more iovecs than the kernel walks.",
    KernelReadFailed => "periscope_kernel_read_failed_total", "User buffers the kernel could not read.",
    KernelCaptureIncomplete => "periscope_kernel_capture_incomplete_total", "Syscalls on connections with a protocol-aware capture (AMQP, HTTP/2 frames) that the kernel captured only in part, by protocol and reason: framing not known (sent as a prefix) or limits reached.",
    CapturePolicyFailed => "periscope_capture_policy_failed_total", "Connections whose protocol-aware capture could not be set in the kernel (captured as prefixes).",
    EventsMalformed => "periscope_events_malformed_total", "Ring buffer records too short or of unknown kind.",
    EventsUntracked => "periscope_events_untracked_total", "Events of processes the agent no longer tracks.",
    ParseErrors => "periscope_parse_errors_total", "Protocol messages that could not be parsed.",
    UnknownProtocol => "periscope_unknown_protocol_connections_total", "Connections whose traffic matched no known protocol.",
    ProtocolDesync => "periscope_protocol_desync_total", "Times a connection's message framing was lost and resynchronised.",
    SkippedMessages => "periscope_skipped_messages_total", "Protocol messages recognised and deliberately skipped (COPY, TLS, cancel, ...).",
    RequestsUnmatched => "periscope_requests_unmatched_total", "Requests or responses with no partner, dropped (connection closed or timed out).",
    ConnectionsEvicted => "periscope_connections_evicted_total", "Connection states evicted because the connection table was full.",
    DbNamespaceLookups => "periscope_db_namespace_lookups_total", "Databases looked up for PostgreSQL connections adopted after their startup, by result (index: known when adopted; rescan: found by a rescan of /proc; not found: no backend on this host names the connection; dropped: too many lookups in flight).",
    DbNamespaceUnknown => "periscope_db_namespace_unknown_total", "PostgreSQL spans without db.namespace (their connection was adopted after its startup), by reason (lookup pending: finished before the answer; not found).",
    SpansProduced => "periscope_spans_produced_total", "Spans finished by the pipeline.",
    SpansDroppedQueue => "periscope_spans_dropped_total", "Spans dropped because the export queue was full.",
    SpansExported => "periscope_spans_exported_total", "Spans accepted by the OTLP endpoint.",
    ExportErrors => "periscope_export_errors_total", "Failed OTLP export attempts (traces and metrics).",
    ExportBatchesDropped => "periscope_export_batches_dropped_total", "OTLP batches given up after retries or because the retry queue was full.",
    MetricOverflow => "periscope_metric_overflow_total", "Measurements folded into otel.metric.overflow=true because of the attribute-set cap.",
    RouteOverflow => "periscope_route_overflow_total", "Routes folded into the catch-all because of the per-service route cap.",
    ProcessesTracked => "periscope_processes_tracked_total", "Processes that started being tracked.",
    ProcessesForgotten => "periscope_processes_forgotten_total", "Tracked processes that exited and were forgotten.",
    ContextMissing => "periscope_context_missing_total", "Exchanges whose start was not seen as such (mid-stream, pipelined): made roots of their own traces.",
    ContextThreadsReset => "periscope_context_threads_reset_total", "Per-thread current requests dropped because the thread table was full.",
    ContextExpired => "periscope_context_expired_total", "Spans whose trace group was already forgotten: exported as roots of new traces.",
    ContextForced => "periscope_context_forced_total", "Trace groups decided before their link to a caller was known (waited too long, or the table was full).",
    ContextEvicted => "periscope_context_evicted_total", "Decided trace groups forgotten while exchanges of theirs were still open (the table was full, or they never ended): their later spans start new traces.",
    LinkPartnerLate => "periscope_link_partner_late_total", "Server spans whose tracked caller's request was not seen within the link wait: not linked (also in periscope_links_missed_total, reason \"partner late\").",
    LinksTried => "periscope_links_tried_total", "Server requests whose caller looked like a tracked process on this host, by how it was looked for: the same connection's other end (reason \"same connection\") or the connection before address translation, asked of conntrack (\"translated\"). Each ends made or missed.",
    SpansLinked => "periscope_spans_linked_total", "Server spans made children of a tracked caller's client span on this host, by how: the other end in the same network namespace, across namespaces, through an address translation (conntrack); CONSUMER spans under the PRODUCER of the same message (amqp, message).",
    LinksMissed => "periscope_links_missed_total", "Links tried and not made, by reason: partner late (the caller's request not seen within the link wait), translation late (no conntrack answer within it), not translated (conntrack knows no translation to a tracked client), lookup failed (conntrack could not be asked: privileges, queue full), partner gone (the client connection closed before it was known), ambiguous (one address in two namespaces, both calling at once).",
    SpansSampledOut => "periscope_spans_sampled_out_total", "Spans not exported because their trace was not sampled (metrics still count them).",
    DiscoveryRequestsDropped => "periscope_discovery_requests_dropped_total", "Requests to the discovery thread (what a forked or exec'd process is, which watched ones are gone, a database lookup) dropped because its queue was full.",
    ContextHandoffs => "periscope_context_handoffs_total", "Client requests attributed to a queued request of the thread (a connection handed on by an in-process queue).",
    ContextWaitingDropped => "periscope_context_waiting_dropped_total", "Server requests dropped from a thread's queue bookkeeping because it held too many (their queued calls may get the wrong parent).",
    ContextAsyncHops => "periscope_context_async_hops_total", "Runtime async hops (libuv thread-pool work: dns.lookup, fs, crypto) seen by uprobes, by runtime and outcome: carried (the callback ran for the request that submitted it), no request (submitted outside any request), unmatched (a callback whose submit was not seen or was forgotten).",
    ContextAsyncDropped => "periscope_context_async_dropped_total", "Async hops forgotten before their callback because too many were in flight (their callbacks' calls start new traces).",
    UprobeAttach => "periscope_uprobe_attach_total", "Runtime uprobe attachments, by runtime and result (attached, failed); one line is logged per failure.",
    ServiceGraphExpired => "periscope_service_graph_expired_total", "Service-graph spans whose partner span did not arrive in time (a client span with a known peer still counts as an edge to a virtual node).",
    ServiceGraphDropped => "periscope_service_graph_dropped_total", "Service-graph spans not paired because too many spans were waiting for their partner.",
    KubernetesApiErrors => "periscope_kubernetes_api_errors_total", "Failed Kubernetes API list/watch calls (retried with backoff; the last known metadata is kept).",
    TlsLibrariesAttached => "periscope_tls_libraries_attached_total", "TLS library files (OpenSSL: a shared libssl, or an executable embedding it; GnuTLS: a shared libgnutls) whose uprobes attached, by kind (reason: libssl, embedded, gnutls), and Go processes whose crypto/tls got its uprobes (reason: go crypto/tls).",
    TlsAttachFailed => "periscope_tls_attach_failed_total", "TLS library files whose uprobes did not (all) attach, by kind (reason: libssl, embedded, gnutls); the log names the file and why.",
    TlsCiphertextDropped => "periscope_tls_ciphertext_dropped_total", "Socket syscalls of TLS connections the kernel did not send (ciphertext; their plaintext comes from the TLS uprobes).",
    TlsPlaintextEvents => "periscope_tls_plaintext_events_total", "Data events of TLS plaintext (SSL_read/SSL_write) the kernel sent.",
    TlsPlaintextDropped => "periscope_tls_plaintext_dropped_total", "TLS plaintext the kernel did not send, by reason (socket unknown: no syscall of the SSL object seen yet).",
    GoRuntimeProcesses => "periscope_go_runtime_processes_total", "Tracked processes inspected for the Go runtime hooks (goroutine context), by reason: instrumented, not go, unsupported version, unsupported architecture, runtime not understood, unreadable, attach failed, inspector busy. All but instrumented keep per-thread context.",
    GoroutineEvents => "periscope_goroutine_events_total", "Goroutine creations, wake-ups and exits the Go runtime hooks reported (goroutines that did socket I/O or descend from one).",
    KubernetesObjectsDropped => "periscope_kubernetes_objects_dropped_total", "Pods or ReplicaSets not kept because the Kubernetes metadata store was full.",
}

/// The labels of a broken-down counter: which protocol, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels {
    pub protocol: &'static str,
    /// What happened, in a word or two (empty when the counter has one cause).
    pub reason: &'static str,
}

/// Process-wide counters: relaxed atomics, cheap enough for the hot path.
/// Broken-down counts are rare events (a desync, a lost message) and take
/// a lock.
#[derive(Debug)]
pub struct Telemetry {
    values: Vec<AtomicU64>,
    labeled: Mutex<BTreeMap<(Counter, Labels), u64>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self { values: Counter::ALL.iter().map(|_| AtomicU64::new(0)).collect(), labeled: Mutex::default() }
    }
}

/// One exported value of a counter: its total, or one label set's share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub counter: Counter,
    pub labels: Option<Labels>,
    pub value: u64,
}

impl Telemetry {
    pub fn add(&self, counter: Counter, n: u64) {
        self.values[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Adds to a counter and to its share for `protocol` / `reason`.
    pub fn add_for(&self, counter: Counter, protocol: &'static str, reason: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        self.add(counter, n);
        if let Ok(mut m) = self.labeled.lock() {
            *m.entry((counter, Labels { protocol, reason })).or_default() += n;
        }
    }

    /// Overwrites the share of `protocol` / `reason` of a counter whose
    /// source of truth is elsewhere (a kernel counter), and the total by as
    /// much.
    pub fn set_for(&self, counter: Counter, protocol: &'static str, reason: &'static str, value: u64) {
        let Ok(mut m) = self.labeled.lock() else { return };
        let key = (counter, Labels { protocol, reason });
        if value == 0 && !m.contains_key(&key) {
            return;
        }
        let old = m.insert(key, value).unwrap_or(0);
        let total = &self.values[counter as usize];
        if value >= old {
            total.fetch_add(value - old, Ordering::Relaxed);
        } else {
            total.fetch_sub(old - value, Ordering::Relaxed);
        }
    }

    /// Overwrites a counter whose source of truth is elsewhere (the kernel's
    /// per-CPU counters are summed and stored here).
    pub fn set(&self, counter: Counter, value: u64) {
        self.values[counter as usize].store(value, Ordering::Relaxed);
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize].load(Ordering::Relaxed)
    }

    /// The share of one protocol (all reasons) of a counter.
    pub fn get_for(&self, counter: Counter, protocol: &str) -> u64 {
        self.labeled.lock().map_or(0, |m| {
            m.iter().filter(|((c, l), _)| *c == counter && l.protocol == protocol).map(|(_, v)| *v).sum()
        })
    }

    /// The share of one (protocol, reason) of a counter.
    pub fn get_labeled(&self, counter: Counter, protocol: &str, reason: &str) -> u64 {
        self.labeled.lock().map_or(0, |m| {
            m.iter()
                .filter(|((c, l), _)| *c == counter && l.protocol == protocol && l.reason == reason)
                .map(|(_, v)| *v)
                .sum()
        })
    }

    /// Every counter in declaration order: broken-down ones as one sample
    /// per label set (plus the unlabeled rest, when some of the total has
    /// no labels), the others as their total.
    pub fn snapshot(&self) -> Vec<Sample> {
        let labeled = self.labeled.lock().map(|m| m.clone()).unwrap_or_default();
        let mut out = Vec::with_capacity(Counter::ALL.len() + labeled.len());
        for &counter in Counter::ALL {
            let total = self.get(counter);
            let mut shared = 0;
            let from = (counter, Labels { protocol: "", reason: "" });
            for (&(_, labels), &value) in labeled.range(from..).take_while(|((c, _), _)| *c == counter) {
                shared += value;
                out.push(Sample { counter, labels: Some(labels), value });
            }
            if shared == 0 || total > shared {
                out.push(Sample { counter, labels: None, value: total.saturating_sub(shared) });
            }
        }
        out
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

    #[test]
    fn broken_down_counters_export_one_sample_per_protocol_and_reason() {
        let t = Telemetry::default();
        t.add_for(Counter::ProtocolDesync, "http", "head beyond capture", 2);
        t.add_for(Counter::ProtocolDesync, "postgresql", "unknown message", 1);
        t.add_for(Counter::ProtocolDesync, "http", "head beyond capture", 0);
        assert_eq!(t.get(Counter::ProtocolDesync), 3);
        assert_eq!(t.get_for(Counter::ProtocolDesync, "http"), 2);
        let desync: Vec<Sample> = t.snapshot().into_iter().filter(|s| s.counter == Counter::ProtocolDesync).collect();
        assert_eq!(desync.len(), 2, "{desync:?}");
        assert_eq!(desync.iter().map(|s| s.value).sum::<u64>(), 3);
        assert!(desync.iter().all(|s| s.labels.is_some()));
        t.set_for(Counter::KernelCaptureIncomplete, "amqp", "framing unknown", 4);
        t.set_for(Counter::KernelCaptureIncomplete, "amqp", "framing unknown", 5);
        t.set_for(Counter::KernelCaptureIncomplete, "amqp", "limits", 0);
        assert_eq!(t.get(Counter::KernelCaptureIncomplete), 5, "set, not added");
        assert_eq!(t.snapshot().iter().filter(|s| s.counter == Counter::KernelCaptureIncomplete).count(), 1);
        let parse: Vec<Sample> = t.snapshot().into_iter().filter(|s| s.counter == Counter::ParseErrors).collect();
        assert_eq!(parse, vec![Sample { counter: Counter::ParseErrors, labels: None, value: 0 }]);
    }
}
