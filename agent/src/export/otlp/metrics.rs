//! Periodic metrics export: span-derived histograms per service plus the
//! agent's own counters under `service.name=periscope`.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::KeyValue,
    metrics::v1::{
        metric::Data, number_data_point, AggregationTemporality, Histogram, HistogramDataPoint, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};
use tokio::{sync::oneshot, task::JoinHandle};

use super::{
    config::{OtlpConfig, OtlpSignal},
    convert::{key_value, resource, scope},
    transport::{deliver, Backoff, Outbox, Payload, Pending, Transport},
    ExportError,
};
use crate::{
    metrics::{now_unix_nanos, service_graph, span_metrics, HistogramData, Metrics, MetricsSnapshot, ServiceMetrics},
    model::AttrValue,
    telemetry::{Sample as CounterSample, Telemetry},
};

/// Cumulative snapshots supersede each other: keep only the latest two while failing.
const MAX_PENDING_METRIC_REQUESTS: usize = 2;

fn string_attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| key_value(k, &AttrValue::Str(v.clone()))).collect()
}

fn histogram_point(labels: &[(String, String)], start: u64, now: u64, h: &HistogramData) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes: string_attributes(labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        count: h.count,
        sum: Some(h.sum),
        bucket_counts: h.bucket_counts.clone(),
        explicit_bounds: h.bounds.to_vec(),
        min: h.min,
        max: h.max,
        ..Default::default()
    }
}

fn counter_point(labels: &[(String, String)], start: u64, now: u64, v: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: string_attributes(labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsInt(i64::try_from(v).unwrap_or(i64::MAX))),
        ..Default::default()
    }
}

fn histogram_metric(name: &str, description: &str, points: Vec<HistogramDataPoint>) -> Metric {
    Metric {
        name: name.to_owned(),
        description: description.to_owned(),
        data: Some(Data::Histogram(Histogram {
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            data_points: points,
        })),
        ..Default::default()
    }
}

fn counter_metric(name: &str, description: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.to_owned(),
        description: description.to_owned(),
        data: Some(Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

/// The Tempo-compatible metrics of one service. Names are the Prometheus
/// names Tempo writes, attribute keys its label names, and the unit is left
/// empty: translated with `add_metric_suffixes=false` (Alloy in the lab) or
/// `true` (a counter already ends in `_total`, and no unit adds `_seconds` to
/// `traces_spanmetrics_latency`), the series come out exactly as scraped from
/// /metrics, with job/instance from the resource.
pub fn trace_metrics(svc: &ServiceMetrics, now: u64) -> Vec<Metric> {
    let mut out = Vec::new();
    if !svc.span_metrics.is_empty() {
        let sm = &svc.span_metrics;
        out.push(counter_metric(
            span_metrics::CALLS_NAME,
            "Spans, by service, name, kind, status and dimensions.",
            sm.iter().map(|p| counter_point(&p.labels, p.start_unix_nanos, now, p.latency.count)).collect(),
        ));
        out.push(histogram_metric(
            span_metrics::LATENCY_NAME,
            "Span durations in seconds.",
            sm.iter().map(|p| histogram_point(&p.labels, p.start_unix_nanos, now, &p.latency)).collect(),
        ));
    }
    if !svc.service_graph.is_empty() {
        let g = &svc.service_graph;
        out.push(counter_metric(
            service_graph::REQUEST_TOTAL_NAME,
            "Requests between two nodes of the service graph.",
            g.iter().map(|p| counter_point(&p.labels, p.start_unix_nanos, now, p.client.count)).collect(),
        ));
        out.push(counter_metric(
            service_graph::REQUEST_FAILED_NAME,
            "Failed requests between two nodes of the service graph.",
            g.iter().map(|p| counter_point(&p.labels, p.start_unix_nanos, now, p.failed)).collect(),
        ));
        out.push(histogram_metric(
            service_graph::CLIENT_SECONDS_NAME,
            "Request durations seen by the client, in seconds.",
            g.iter().map(|p| histogram_point(&p.labels, p.start_unix_nanos, now, &p.client)).collect(),
        ));
        out.push(histogram_metric(
            service_graph::SERVER_SECONDS_NAME,
            "Request durations seen by the server, in seconds.",
            g.iter().map(|p| histogram_point(&p.labels, p.start_unix_nanos, now, &p.server)).collect(),
        ));
    }
    out
}

/// The histograms of a snapshot, one ResourceMetrics per service.
pub fn snapshot_to_resource_metrics(snap: &MetricsSnapshot) -> Vec<ResourceMetrics> {
    snap.services
        .iter()
        .map(|svc| ResourceMetrics {
            resource: Some(resource(&svc.service)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: svc
                    .metrics
                    .iter()
                    .map(|m| Metric {
                        name: m.instrument.name().to_owned(),
                        description: m.instrument.description().to_owned(),
                        unit: m.instrument.unit().to_owned(),
                        data: Some(Data::Histogram(Histogram {
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            data_points: m
                                .series
                                .iter()
                                .map(|s| HistogramDataPoint {
                                    attributes: s.attributes.iter().map(|(k, v)| key_value(k, v)).collect(),
                                    start_time_unix_nano: s.start_unix_nanos,
                                    time_unix_nano: snap.time_unix_nanos,
                                    count: s.data.count,
                                    sum: Some(s.data.sum),
                                    bucket_counts: s.data.bucket_counts.clone(),
                                    explicit_bounds: s.data.bounds.to_vec(),
                                    min: s.data.min,
                                    max: s.data.max,
                                    ..Default::default()
                                })
                                .collect(),
                        })),
                        ..Default::default()
                    })
                    .chain(trace_metrics(svc, snap.time_unix_nanos))
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect()
}

/// The agent's own counters as monotonic cumulative sums (names without
/// `_total`); broken-down ones with one data point per label set.
pub fn telemetry_resource_metrics(counters: &[CounterSample], start: u64, now: u64) -> ResourceMetrics {
    let mut metrics: Vec<Metric> = Vec::new();
    for sample in counters {
        let c = sample.counter;
        let name = c.name().trim_end_matches("_total");
        let point = NumberDataPoint {
            attributes: sample
                .labels
                .map(|l| {
                    let mut a = vec![key_value("protocol", &AttrValue::Str(l.protocol.into()))];
                    if !l.reason.is_empty() {
                        a.push(key_value("reason", &AttrValue::Str(l.reason.into())));
                    }
                    a
                })
                .unwrap_or_default(),
            start_time_unix_nano: start,
            time_unix_nano: now,
            value: Some(number_data_point::Value::AsInt(i64::try_from(sample.value).unwrap_or(i64::MAX))),
            ..Default::default()
        };
        match metrics.last_mut() {
            Some(Metric { name: n, data: Some(Data::Sum(sum)), .. }) if n == name => sum.data_points.push(point),
            _ => metrics.push(Metric {
                name: name.to_owned(),
                description: c.help().to_owned(),
                unit: "1".to_owned(),
                data: Some(Data::Sum(Sum {
                    data_points: vec![point],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            }),
        }
    }
    ResourceMetrics {
        resource: Some(Resource {
            attributes: vec![
                key_value("service.name", &AttrValue::Str("periscope".into())),
                key_value("service.version", &AttrValue::Str(env!("CARGO_PKG_VERSION").into())),
            ],
            ..Default::default()
        }),
        scope_metrics: vec![ScopeMetrics { scope: Some(scope()), metrics, ..Default::default() }],
        ..Default::default()
    }
}

/// Handle of the running metrics exporter.
pub struct MetricsExporter {
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    ticker: Mutex<Option<JoinHandle<()>>>,
    sender: Mutex<Option<JoinHandle<()>>>,
    outbox: Arc<Outbox>,
}

/// Exports a snapshot every `metric_export_interval` (first one after one interval).
pub fn spawn_metrics_exporter(
    cfg: &OtlpConfig,
    metrics: Arc<Metrics>,
    telemetry: Arc<Telemetry>,
) -> Result<MetricsExporter, ExportError> {
    let signal_cfg = cfg.metrics.as_ref().ok_or(ExportError::NotConfigured(OtlpSignal::Metrics))?;
    let transport = Transport::new(signal_cfg)?;
    let outbox = Outbox::new(MAX_PENDING_METRIC_REQUESTS, telemetry.clone());
    let (shutdown_tx, mut shutdown_rx) = oneshot::channel::<()>();
    let interval = cfg.metric_export_interval;
    let start = now_unix_nanos();
    let ob = outbox.clone();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown_rx => break,
                _ = tick.tick() => ob.push(collect(&metrics, &telemetry, start)),
            }
        }
        // Final export on shutdown.
        ob.push(collect(&metrics, &telemetry, start));
        ob.close();
    });
    let sender = tokio::spawn(deliver(
        outbox.clone(),
        transport,
        Backoff::new(cfg.batch.backoff_initial, cfg.batch.backoff_max),
        OtlpSignal::Metrics,
    ));
    Ok(MetricsExporter {
        shutdown: Mutex::new(Some(shutdown_tx)),
        ticker: Mutex::new(Some(ticker)),
        sender: Mutex::new(Some(sender)),
        outbox,
    })
}

fn collect(metrics: &Metrics, telemetry: &Telemetry, start: u64) -> Pending {
    let snap = metrics.snapshot();
    let mut resource_metrics = snapshot_to_resource_metrics(&snap);
    resource_metrics.push(telemetry_resource_metrics(&telemetry.snapshot(), start, snap.time_unix_nanos));
    let items = resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::Histogram(h)) => h.data_points.len() as u64,
            Some(Data::Sum(s)) => s.data_points.len() as u64,
            _ => 1,
        })
        .sum();
    Pending { payload: Payload::Metrics(ExportMetricsServiceRequest { resource_metrics }), items }
}

impl MetricsExporter {
    /// Sends one last snapshot and waits for delivery up to `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        let take = |m: &Mutex<Option<JoinHandle<()>>>| m.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(s) = self.shutdown.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = s.send(());
        }
        let (ticker, sender) = (take(&self.ticker), take(&self.sender));
        let abort = sender.as_ref().map(|s| s.abort_handle());
        let work = async {
            if let Some(t) = ticker {
                let _ = t.await;
            }
            if let Some(s) = sender {
                let _ = s.await;
            }
        };
        if tokio::time::timeout(deadline, work).await.is_err() {
            tracing::warn!("OTLP metrics export did not finish before the shutdown deadline");
            if let Some(a) = abort {
                a.abort();
            }
            self.outbox.close();
            self.outbox.discard_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metrics::{MetricsConfig, ServiceGraphConfig, SpanMetricsConfig},
        model::{Attr, Service, Span, SpanKind},
    };
    use opentelemetry_proto::tonic::common::v1::any_value;

    fn span(service: &crate::model::ServiceRef, kind: SpanKind, name: &str, attrs: Vec<Attr>) -> Span {
        let signal = crate::model::Signal::of_test_span(kind, &attrs);
        Span { signal, end_unix_nanos: 5_000_000, attributes: attrs, ..Span::for_test(service, kind, name) }
    }

    fn attrs(kvs: &[KeyValue]) -> Vec<(String, String)> {
        kvs.iter()
            .map(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => (kv.key.clone(), s.clone()),
                other => panic!("{} is not a string: {other:?}", kv.key),
            })
            .collect()
    }

    #[test]
    fn trace_metrics_convert_with_prometheus_names_and_string_labels() {
        let t = Arc::new(Telemetry::default());
        let cfg = MetricsConfig {
            span_metrics: Some(SpanMetricsConfig::default()),
            service_graph: Some(ServiceGraphConfig::default()),
            ..Default::default()
        };
        let m = Metrics::new(cfg, t);
        let s = Arc::new(Service {
            name: "mythical-server".into(),
            namespace: Some("mythical".into()),
            instance_id: "srv-1".into(),
            attributes: vec![],
        });
        let http = vec![
            Attr::new("http.request.method", "POST"),
            Attr::new("http.route", "/owlbear"),
            Attr::new("http.response.status_code", 201i64),
        ];
        m.record_span(&span(&s, SpanKind::Server, "POST /owlbear", http.clone()));
        m.record_span(&span(&s, SpanKind::Server, "POST /owlbear", http));
        m.record_span(&span(&s, SpanKind::Client, "INSERT owlbear", vec![Attr::new("db.system.name", "postgresql")]));

        let snap = m.snapshot();
        let rm = snapshot_to_resource_metrics(&snap);
        assert_eq!(rm.len(), 1);
        let metrics = &rm[0].scope_metrics[0].metrics;
        let find = |n: &str| metrics.iter().find(|m| m.name == n).unwrap_or_else(|| panic!("no {n}"));
        // The RED histograms are still there, first.
        assert_eq!(metrics[0].name, "http.server.request.duration");

        let calls = find("traces_spanmetrics_calls_total");
        assert_eq!(calls.unit, "");
        let Some(Data::Sum(sum)) = &calls.data else { panic!("calls is not a sum") };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        let server = sum
            .data_points
            .iter()
            .find(|p| attrs(&p.attributes).contains(&("span_kind".into(), "SPAN_KIND_SERVER".into())))
            .unwrap();
        assert_eq!(server.value, Some(number_data_point::Value::AsInt(2)));
        let expected: Vec<(String, String)> = [
            ("service", "mythical-server"),
            ("span_name", "POST /owlbear"),
            ("span_kind", "SPAN_KIND_SERVER"),
            ("status_code", "STATUS_CODE_UNSET"),
            ("http_method", "POST"),
            ("http_target", "/owlbear"),
            ("http_status_code", "201"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(attrs(&server.attributes), expected);
        assert_eq!(server.time_unix_nano, snap.time_unix_nanos);
        assert!(server.start_time_unix_nano > 0 && server.start_time_unix_nano <= server.time_unix_nano);

        let latency = find("traces_spanmetrics_latency");
        assert_eq!(latency.unit, "", "a unit would make the translator append _seconds");
        let Some(Data::Histogram(h)) = &latency.data else { panic!("latency is not a histogram") };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, crate::metrics::span_metrics::SPAN_METRICS_BOUNDS);
        assert_eq!((p.count, p.bucket_counts[2]), (2, 2), "5 ms in (0.004, 0.008]");

        let total = find("traces_service_graph_request_total");
        let Some(Data::Sum(sum)) = &total.data else { panic!() };
        let edges: Vec<_> = sum.data_points.iter().map(|p| attrs(&p.attributes)).collect();
        assert!(edges.contains(&vec![
            ("client".into(), "user".into()),
            ("server".into(), "mythical-server".into()),
            ("connection_type".into(), "virtual_node".into()),
        ]));
        assert!(edges.contains(&vec![
            ("client".into(), "mythical-server".into()),
            ("server".into(), "postgresql".into()),
            ("connection_type".into(), "database".into()),
        ]));
        for n in [
            "traces_service_graph_request_failed_total",
            "traces_service_graph_request_client_seconds",
            "traces_service_graph_request_server_seconds",
        ] {
            find(n);
        }
        // Items counted for the exporter include the sums' points.
        let pending = collect(&m, &Telemetry::default(), 0);
        assert!(pending.items >= 2 + 2 + 2 + 2 + 2 + 2 + 2);
    }
}
