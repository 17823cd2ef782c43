//! Wiring: builds the sinks, loads the probes, runs the pipeline until
//! SIGINT/SIGTERM, then flushes the exporters.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;

use crate::{
    capture::reader::RingReader,
    config::Settings,
    export::{
        otlp::{spawn_metrics_exporter, spawn_trace_exporter, TraceQueue},
        printer::TracePrinter,
        prometheus::{PrometheusServer, PrometheusState},
    },
    metrics::Metrics,
    model::Span,
    pipeline::{Pipeline, SpanSink, TargetsView},
    probes::Probes,
    telemetry::Telemetry,
};

pub fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout belongs to the trace printer.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

impl SpanSink for TracePrinter {
    fn submit(&mut self, span: &Span) {
        self.print(span);
    }
}

impl SpanSink for TraceQueue {
    fn submit(&mut self, span: &Span) {
        TraceQueue::submit(self, span.clone());
    }

    fn submit_owned(&mut self, span: Span) {
        TraceQueue::submit(self, span);
    }
}

struct MetricsSink(Arc<Metrics>);

impl SpanSink for MetricsSink {
    fn submit(&mut self, span: &Span) {
        self.0.record_span(span);
    }

    fn sees_every_span(&self) -> bool {
        true
    }

    fn forget_service(&mut self, instance_id: &str) {
        self.0.forget_service(instance_id);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    crate::preflight::check()?;
    // After the startup checks: when they fail, their lines are all there is.
    let host = &settings.host;
    match host.source {
        crate::discovery::HostNameSource::Container { .. } => {
            tracing::warn!("host.name {} is {}", host.name, host.source)
        }
        _ => tracing::info!("host.name {} ({})", host.name, host.source),
    }
    let telemetry = Arc::new(Telemetry::default());
    let metrics = Arc::new(Metrics::new(settings.metrics.clone(), telemetry.clone()));

    let mut sinks: Vec<Box<dyn SpanSink>> = vec![Box::new(MetricsSink(metrics.clone()))];
    if let Some(format) = settings.export.printer {
        sinks.push(Box::new(TracePrinter::new(format, Box::new(std::io::stdout()))));
    }
    let mut trace_queue = None;
    let mut metrics_exporter = None;
    if let Some(cfg) = &settings.export.otlp {
        if cfg.traces.is_some() {
            let q = spawn_trace_exporter(cfg, telemetry.clone()).context("starting the OTLP trace exporter")?;
            sinks.push(Box::new(q.clone()));
            trace_queue = Some(q);
        }
        if cfg.metrics.is_some() {
            metrics_exporter = Some(
                spawn_metrics_exporter(cfg, metrics.clone(), telemetry.clone())
                    .context("starting the OTLP metrics exporter")?,
            );
        }
    }

    // Probes first: /healthz answering means the kernel side is attached.
    let (probes, ring) = Probes::load(&settings.capture.probes)?;
    tracing::info!(programs = probes.program_names().len(), "kernel programs attached");
    let view: TargetsView = Arc::new(Mutex::new(Vec::new()));
    if let Some(addr) = settings.export.prometheus {
        let targets = view.clone();
        let state = PrometheusState::new(metrics.clone(), telemetry.clone())
            .with_metrics_path(&settings.export.prometheus_path)
            .with_targets(move || {
                let list = targets.lock().map(|v| v.clone()).unwrap_or_default();
                serde_json::to_value(list).unwrap_or_default()
            });
        let server = PrometheusServer::bind(addr, state)
            .await
            .with_context(|| format!("cannot serve Prometheus metrics on {addr}"))?;
        tracing::info!(%addr, path = %settings.export.prometheus_path, "serving Prometheus metrics");
        tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!("Prometheus endpoint stopped: {e}");
            }
        });
    }

    // Kubernetes metadata: watchers fill the store in the background. Failing
    // to reach the API is not fatal: processes are still watched, unnamed by k8s.
    let kubernetes = if settings.kubernetes.enabled {
        let k = &settings.kubernetes;
        match crate::kubernetes::Kubernetes::start(k, telemetry.clone()).await {
            Ok(kube) => {
                tracing::info!(node = %k.node_name, guessed = k.node_name_guessed, "watching Kubernetes metadata of this node's pods");
                Some(kube)
            }
            Err(e) => {
                tracing::warn!("continuing without Kubernetes metadata: {e}");
                None
            }
        }
    } else {
        None
    };

    let reader = RingReader::new(ring).context("watching the ring buffer")?;
    let metadata = kubernetes.as_ref().map(|k| k.metadata.clone());
    let pipeline = Pipeline::new(settings, probes, telemetry.clone(), sinks, view, metadata);
    pipeline.run(reader, shutdown_signal()).await.context("event pipeline failed")?;
    drop(kubernetes);

    if let Some(q) = trace_queue {
        q.shutdown(Duration::from_secs(5)).await;
    }
    if let Some(m) = metrics_exporter {
        m.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}
