//! Tempo-compatible service-graph metrics: `traces_service_graph_request_total`,
//! `..._request_failed_total`, `..._request_client_seconds` and
//! `..._request_server_seconds`, labelled `client`, `server`, `connection_type`.
//!
//! Where edges come from (same rules as Tempo's metrics-generator):
//! - a CLIENT (or PRODUCER) span and the SERVER (or CONSUMER) span whose parent
//!   it is, both seen by this agent, are paired by (trace id, span id):
//!   `client` and `server` are their services; `connection_type` is `""`, or
//!   `messaging_system` when either side is a producer/consumer span;
//! - a CLIENT span of a database call (`db.system.name`, `db.system`,
//!   `db.namespace` or `db.name`) is an edge at once: `connection_type`
//!   `database`, server named by [`database_node`], both latencies the client
//!   span's duration;
//! - a SERVER/CONSUMER span with no parent (nobody upstream sent a
//!   `traceparent`) is an edge from `user`, `connection_type` `virtual_node`;
//! - a CLIENT/PRODUCER span whose partner did not arrive within the wait (the
//!   peer is not tracked, or did not propagate the context) becomes an edge to
//!   a virtual node named by its first peer attribute (`peer.service`,
//!   `messaging.system`, `server.address`, `net.peer.name`); without one it is
//!   dropped. A SERVER span whose client never arrived is dropped. Both are
//!   counted in `periscope_service_graph_expired_total`.
//! - [`EdgeObservation`]s given to `Metrics::observe_edge` (edges known by
//!   other means, e.g. linking the two ends of a local connection).
//!
//! As in Tempo, both histograms are observed for every request; a side that
//! has no span (virtual nodes) is observed as 0.
use crate::semconv;
use std::{
    collections::VecDeque,
    hash::{Hash, Hasher},
    net::IpAddr,
};

use rustc_hash::{FxHashMap, FxHasher};

use super::{HistogramData, OVERFLOW_ATTRIBUTE};
use crate::{
    model::{AttrValue, ServiceRef, Signal, Span, SpanId, SpanKind, SpanStatus},
    telemetry::{Counter, Telemetry},
};

/// Tempo's default service-graph buckets: `ExponentialBuckets(0.1, 2, 8)`.
pub const SERVICE_GRAPH_BOUNDS: &[f64] = &[0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8];

pub const REQUEST_TOTAL_NAME: &str = "traces_service_graph_request_total";
pub const REQUEST_FAILED_NAME: &str = "traces_service_graph_request_failed_total";
pub const CLIENT_SECONDS_NAME: &str = "traces_service_graph_request_client_seconds";
pub const SERVER_SECONDS_NAME: &str = "traces_service_graph_request_server_seconds";

/// Client name of edges into a service that nobody upstream announced.
pub const USER_NODE: &str = "user";

/// Attributes naming the peer of an unpaired client span, first found wins.
const PEER_ATTRIBUTES: &[&str] =
    &[semconv::PEER_SERVICE, semconv::MESSAGING_SYSTEM, semconv::SERVER_ADDRESS, semconv::old::NET_PEER_NAME];

/// Tempo's `connection_type` label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionType {
    /// Between two instrumented services: `""`.
    Direct,
    MessagingSystem,
    Database,
    VirtualNode,
}

impl ConnectionType {
    pub fn label(self) -> &'static str {
        match self {
            ConnectionType::Direct => "",
            ConnectionType::MessagingSystem => "messaging_system",
            ConnectionType::Database => "database",
            ConnectionType::VirtualNode => "virtual_node",
        }
    }
}

/// One request between two nodes of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeObservation<'a> {
    pub client: &'a str,
    pub server: &'a str,
    pub connection_type: ConnectionType,
    /// Duration seen by the client; `None` (recorded as 0, as Tempo does) when unknown.
    pub client_secs: Option<f64>,
    pub server_secs: Option<f64>,
    pub failed: bool,
}

#[derive(Clone, Debug)]
pub struct ServiceGraphConfig {
    /// How long a span waits for its partner (Tempo: `wait`, 10 s).
    pub wait_nanos: u64,
    /// Spans waiting at once (Tempo: `max_items`, 10 000); more are dropped and counted.
    pub max_pending: usize,
}

impl Default for ServiceGraphConfig {
    fn default() -> Self {
        Self { wait_nanos: 10_000_000_000, max_pending: 10_000 }
    }
}

fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match span.attr(key) {
        Some(AttrValue::Str(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

fn is_database(span: &Span) -> bool {
    span.signal == Signal::Db
}

/// Server node of a database call. Tempo's order is peer.service,
/// server.address, network.peer.address, db.name; the agent only knows the
/// server's IP address, so a database name or system reads better than an IP
/// and is preferred to it: peer.service, server.address when a host name,
/// db.namespace (db.name), db.system.name (db.system), then the IP address.
pub fn database_node(span: &Span) -> Option<&str> {
    if let Some(p) = str_attr(span, semconv::PEER_SERVICE) {
        return Some(p);
    }
    let address = str_attr(span, semconv::SERVER_ADDRESS);
    if let Some(a) = address.filter(|a| a.parse::<IpAddr>().is_err()) {
        return Some(a);
    }
    [semconv::DB_NAMESPACE, semconv::old::DB_NAME, semconv::DB_SYSTEM_NAME, semconv::old::DB_SYSTEM]
        .iter()
        .find_map(|k| str_attr(span, k))
        .or(address)
}

fn peer_node(span: &Span) -> Option<&str> {
    PEER_ATTRIBUTES.iter().find_map(|k| str_attr(span, k))
}

pub(super) struct Side {
    service: ServiceRef,
    secs: f64,
}

struct Pending {
    client: Option<Side>,
    server: Option<Side>,
    failed: bool,
    messaging: bool,
    peer: Option<String>,
    seq: u64,
}

/// An edge whose two ends are known, or whose wait is over.
pub(super) enum Finished {
    Paired {
        client: Side,
        server: Side,
        failed: bool,
        messaging: bool,
    },
    /// A client whose server never showed up, towards a named peer.
    Virtual {
        client: Side,
        peer: String,
        failed: bool,
    },
}

impl Finished {
    /// The service whose series hold the edge (the client's if tracked), and the edge.
    pub(super) fn parts(&self) -> ([&ServiceRef; 2], EdgeObservation<'_>) {
        match self {
            Finished::Paired { client, server, failed, messaging } => (
                [&client.service, &server.service],
                EdgeObservation {
                    client: &client.service.name,
                    server: &server.service.name,
                    connection_type: if *messaging { ConnectionType::MessagingSystem } else { ConnectionType::Direct },
                    client_secs: Some(client.secs),
                    server_secs: Some(server.secs),
                    failed: *failed,
                },
            ),
            Finished::Virtual { client, peer, failed } => (
                [&client.service, &client.service],
                EdgeObservation {
                    client: &client.service.name,
                    server: peer,
                    connection_type: ConnectionType::VirtualNode,
                    client_secs: Some(client.secs),
                    server_secs: None,
                    failed: *failed,
                },
            ),
        }
    }
}

/// The client span's id. Not with the trace id: metrics see spans as soon as
/// their ids and parents are known, before their trace id is decided (see
/// `context::assembly`); span ids are random 64-bit numbers.
type EdgeKey = SpanId;

/// Spans waiting for their partner, oldest first.
#[derive(Default)]
pub(super) struct PendingEdges {
    map: FxHashMap<EdgeKey, Pending>,
    /// (deadline, seq, key); entries of edges completed early stay until their deadline.
    order: VecDeque<(u64, u64, EdgeKey)>,
    next_seq: u64,
}

/// What a span means for the graph.
pub(super) enum SpanEdge<'a> {
    None,
    /// Complete at once (database call, root server span).
    Now(EdgeObservation<'a>),
    /// Waits for its partner.
    Finished(Finished),
}

impl PendingEdges {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Files the span; returns the edge it completes, if any.
    pub(super) fn observe_span<'a>(
        &mut self,
        cfg: &ServiceGraphConfig,
        span: &'a Span,
        now: u64,
        telemetry: &Telemetry,
    ) -> SpanEdge<'a> {
        let failed = matches!(span.status, SpanStatus::Error(_));
        let secs = span.duration_secs();
        let (key, is_client, messaging) = match span.kind {
            SpanKind::Client if is_database(span) => {
                return match database_node(span) {
                    Some(server) => SpanEdge::Now(EdgeObservation {
                        client: &span.service.name,
                        server,
                        connection_type: ConnectionType::Database,
                        client_secs: Some(secs),
                        server_secs: Some(secs),
                        failed,
                    }),
                    None => SpanEdge::None,
                };
            }
            SpanKind::Client | SpanKind::Producer => (span.span_id, true, span.kind == SpanKind::Producer),
            SpanKind::Server | SpanKind::Consumer => match span.parent_span_id {
                None => {
                    return SpanEdge::Now(EdgeObservation {
                        client: USER_NODE,
                        server: &span.service.name,
                        connection_type: ConnectionType::VirtualNode,
                        client_secs: None,
                        server_secs: Some(secs),
                        failed,
                    })
                }
                Some(parent) => (parent, false, span.kind == SpanKind::Consumer),
            },
            SpanKind::Internal => return SpanEdge::None,
        };
        let side = Side { service: span.service.clone(), secs };
        if let Some(p) = self.map.get_mut(&key) {
            let complete = if is_client { p.server.is_some() } else { p.client.is_some() };
            if !complete {
                // A second span with the same key on the same side: keep the first.
                return SpanEdge::None;
            }
            let p = self.map.remove(&key).expect("present");
            let (client, server) =
                if is_client { (side, p.server.expect("checked")) } else { (p.client.expect("checked"), side) };
            return SpanEdge::Finished(Finished::Paired {
                client,
                server,
                failed: failed || p.failed,
                messaging: messaging || p.messaging,
            });
        }
        if self.map.len() >= cfg.max_pending {
            telemetry.inc(Counter::ServiceGraphDropped);
            return SpanEdge::None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let peer = if is_client { peer_node(span).map(str::to_owned) } else { None };
        let (client, server) = if is_client { (Some(side), None) } else { (None, Some(side)) };
        self.map.insert(key, Pending { client, server, failed, messaging, peer, seq });
        self.order.push_back((now.saturating_add(cfg.wait_nanos), seq, key));
        SpanEdge::None
    }

    /// Ends the wait of every span whose deadline is past (or the oldest ones
    /// when too many completed entries pile up in the order queue).
    pub(super) fn expire(
        &mut self,
        cfg: &ServiceGraphConfig,
        now: u64,
        telemetry: &Telemetry,
        mut out: impl FnMut(Finished),
    ) {
        let max_order = cfg.max_pending.saturating_mul(4).max(1024);
        while let Some(&(deadline, seq, key)) = self.order.front() {
            if deadline > now && self.order.len() <= max_order {
                break;
            }
            self.order.pop_front();
            if self.map.get(&key).is_none_or(|p| p.seq != seq) {
                continue; // completed (or replaced) already
            }
            let p = self.map.remove(&key).expect("present");
            telemetry.inc(Counter::ServiceGraphExpired);
            if let (Some(client), Some(peer)) = (p.client, p.peer) {
                out(Finished::Virtual { client, peer, failed: p.failed });
            }
        }
    }
}

/// One edge series of a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgePoint {
    /// `client`, `server`, `connection_type` (or the overflow label alone).
    pub labels: Vec<(String, String)>,
    pub start_unix_nanos: u64,
    pub failed: u64,
    /// Its count is the request total.
    pub client: HistogramData,
    pub server: HistogramData,
}

struct EdgeSeries {
    client: String,
    server: String,
    connection_type: ConnectionType,
    start_unix_nanos: u64,
    failed: u64,
    client_h: HistogramData,
    server_h: HistogramData,
}

impl EdgeSeries {
    fn new(client: &str, server: &str, connection_type: ConnectionType, now: u64) -> Self {
        Self {
            client: client.to_owned(),
            server: server.to_owned(),
            connection_type,
            start_unix_nanos: now,
            failed: 0,
            client_h: HistogramData::new(SERVICE_GRAPH_BOUNDS),
            server_h: HistogramData::new(SERVICE_GRAPH_BOUNDS),
        }
    }

    fn record(&mut self, e: &EdgeObservation<'_>) {
        self.client_h.record(e.client_secs.unwrap_or(0.0));
        self.server_h.record(e.server_secs.unwrap_or(0.0));
        self.failed += u64::from(e.failed);
    }

    fn point(&self, labels: Vec<(String, String)>) -> EdgePoint {
        EdgePoint {
            labels,
            start_unix_nanos: self.start_unix_nanos,
            failed: self.failed,
            client: self.client_h.clone(),
            server: self.server_h.clone(),
        }
    }
}

/// The edge series of one service.
#[derive(Default)]
pub(super) struct EdgeState {
    index: FxHashMap<u64, Vec<usize>>,
    series: Vec<EdgeSeries>,
    overflow: Option<EdgeSeries>,
}

impl EdgeState {
    /// Records one request. Nothing is allocated when its series exists.
    pub(super) fn record(&mut self, e: &EdgeObservation<'_>, limit: usize, now: u64, telemetry: &Telemetry) {
        let mut h = FxHasher::default();
        (e.client, e.server, e.connection_type).hash(&mut h);
        let hash = h.finish();
        let series = &self.series;
        let found = self.index.get(&hash).and_then(|ids| {
            ids.iter().copied().find(|&i| {
                let s = &series[i];
                s.connection_type == e.connection_type && s.client == e.client && s.server == e.server
            })
        });
        if let Some(i) = found {
            self.series[i].record(e);
        } else if self.series.len() < limit {
            let mut s = EdgeSeries::new(e.client, e.server, e.connection_type, now);
            s.record(e);
            self.series.push(s);
            self.index.entry(hash).or_default().push(self.series.len() - 1);
        } else {
            telemetry.inc(Counter::MetricOverflow);
            self.overflow.get_or_insert_with(|| EdgeSeries::new("", "", ConnectionType::Direct, now)).record(e);
        }
    }

    pub(super) fn points(&self) -> Vec<EdgePoint> {
        let mut out: Vec<EdgePoint> = self
            .series
            .iter()
            .map(|s| {
                s.point(vec![
                    ("client".to_owned(), s.client.clone()),
                    ("server".to_owned(), s.server.clone()),
                    ("connection_type".to_owned(), s.connection_type.label().to_owned()),
                ])
            })
            .collect();
        if let Some(s) = &self.overflow {
            out.push(s.point(vec![(super::span_metrics::label_name(OVERFLOW_ATTRIBUTE), "true".to_owned())]));
        }
        out
    }
}
