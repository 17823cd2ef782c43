//! `cargo xtask demo --containers`: the same lab under a real container
//! engine, as the container test runs it (agent/tests/lab_containers.rs,
//! deploy/README.md "Tested in a container engine"): rootful podman and
//! podman-compose, a Debian base image made by debootstrap (cached), the lab
//! services' image from `deploy/compose/lab/Dockerfile`, the agent's from
//! `deploy/Dockerfile.prebuilt` around the periscope just built, each service
//! in its own container and network namespace, and the project's overlay
//! files used as they are. The requester sends no `traceparent`: every link
//! between two services is periscope's, across two containers. Spans go to
//! the lab's `alloy` (an OTLP/gRPC receiver writing them to a file the demo
//! reads), or to `--otlp-endpoint`; the table is read from the overlay's
//! published `/metrics`.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use opentelemetry_proto::tonic::{collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value};
use prost::Message;

use super::{check_every_service, Options, Table, DEMO_BUCKETS, REFRESH};
use crate::{
    bench::util::http_get,
    cmd::{self, cmd},
    deps::workspace_root,
    mythical::SERVICES,
    podman::Podman,
};

/// The compose project (container names are `<project>_<service>_1`).
const PROJECT: &str = "periscope-demo";
/// The overlay publishes the agent's :9090 here.
const METRICS_PORT: u16 = 9091;
const LAB_IMAGE: &str = "localhost/periscope-lab:bookworm";
const AGENT_IMAGE: &str = "localhost/periscope:demo";

fn container(service: &str) -> String {
    format!("{PROJECT}_{service}_1")
}

/// The compose stack; `down` when dropped, whatever happened.
struct Stack<'a> {
    podman: &'a Podman,
    files: Vec<PathBuf>,
    env: Vec<(&'static str, String)>,
}

impl Stack<'_> {
    fn compose(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.podman.compose(PROJECT, &self.files, args);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn containers() -> Vec<String> {
        ["periscope", "mythical-database", "mythical-queue", "alloy"]
            .into_iter()
            .chain(SERVICES)
            .map(container)
            .collect()
    }

    /// The last lines of every container's log, for an error.
    fn logs(&self) -> String {
        Self::containers()
            .iter()
            .map(|c| format!("--- {c} ({}):\n{}", self.podman.state(c), self.podman.logs(c, 20)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Polls `f` every 500 ms until it gives a value, `timeout` passes
    /// (an error with every log) or Ctrl-C.
    fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        stop: &AtomicBool,
        mut f: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let start = Instant::now();
        loop {
            if let Some(v) = f()? {
                return Ok(v);
            }
            if stop.load(Ordering::SeqCst) {
                bail!("interrupted while waiting for {what}");
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Stack<'_> {
    fn drop(&mut self) {
        eprintln!("demo: stopping the containers (compose down)");
        let _ = self.compose(&["down", "-t", "5"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// The compose file the demo adds after the project's: its finer duration
/// buckets, its load, and an OTLP endpoint of the user's instead of `alloy`.
fn demo_compose_file(o: &Options) -> String {
    let mut agent = vec![("PERISCOPE_DURATION_HISTOGRAM_BUCKETS".to_owned(), DEMO_BUCKETS.to_owned())];
    if let Some(endpoint) = &o.otlp_endpoint {
        agent.push(("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint.clone()));
        agent.push(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".to_owned(), endpoint.clone()));
    }
    let mut services: Vec<(String, String)> =
        super::service_options(o).load_env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    services.push(("REQUEST_INTERVAL_MS".to_owned(), o.request_interval_ms.to_string()));
    let block = |env: &[(String, String)]| -> String {
        // JSON strings are YAML strings: any value is quoted safely.
        env.iter().map(|(k, v)| format!("      {k}: {}\n", serde_json::Value::from(v.as_str()))).collect()
    };
    let mut out = String::from("# Written by `cargo xtask demo --containers`.\nservices:\n");
    out += &format!("  periscope:\n    environment:\n{}", block(&agent));
    for s in SERVICES {
        out += &format!("  {s}:\n    environment:\n{}", block(&services));
    }
    out
}

/// Spans per service in the receiver's file: records of an 8-byte
/// big-endian length and an ExportTraceServiceRequest, read as it grows.
struct ReceivedSpans {
    path: PathBuf,
    offset: usize,
    per_service: BTreeMap<String, u64>,
}

impl ReceivedSpans {
    fn update(&mut self) {
        let Ok(bytes) = std::fs::read(&self.path) else { return };
        while self.offset + 8 <= bytes.len() {
            let len = u64::from_be_bytes(bytes[self.offset..self.offset + 8].try_into().expect("8 bytes")) as usize;
            let Some(body) = bytes.get(self.offset + 8..self.offset + 8 + len) else { return };
            self.offset += 8 + len;
            let Ok(req) = ExportTraceServiceRequest::decode(body) else { continue };
            for rs in req.resource_spans {
                let name = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        any_value::Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| "?".to_owned());
                let n: usize = rs.scope_spans.iter().map(|ss| ss.spans.len()).sum();
                *self.per_service.entry(name).or_default() += n as u64;
            }
        }
    }
}

/// The agent image around the periscope `cargo xtask demo` just built
/// (DWARF stripped, as deploy/build-in-image.sh does).
fn agent_image(podman: &Podman, base: &str, dir: &Path) -> anyhow::Result<()> {
    let context = dir.join("agent-image");
    std::fs::create_dir_all(&context)?;
    let binary = workspace_root().join("target/debug/periscope");
    cmd::run_quiet(cmd("objcopy", ["--strip-debug"]).arg(&binary).arg(context.join("periscope")))?;
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", context.join("ca-certificates.crt"))
        .context("copying the CA bundle into the agent image")?;
    // Replaced, not retagged: no untagged agent image is left behind per run.
    drop(podman.cmd(["rmi", "-f", AGENT_IMAGE]).output());
    podman.build(
        AGENT_IMAGE,
        &workspace_root().join("deploy/Dockerfile.prebuilt"),
        &context,
        &[("RUNTIME_IMAGE", base)],
    );
    Ok(())
}

pub fn run(o: &Options, stop: &AtomicBool) -> anyhow::Result<()> {
    let repo = workspace_root();
    let dir = std::env::temp_dir().join("periscope-mythical-containers");
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("out");
    std::fs::create_dir_all(&out)?;
    let podman = Podman::new(&dir);

    eprintln!("demo: images (the first time: debootstrap of a Debian base ~1 min, the lab image ~70 s)");
    let base = podman.debian_base();
    let lab_dir = repo.join("deploy/compose/lab");
    podman.build(LAB_IMAGE, &lab_dir.join("Dockerfile"), &lab_dir, &[("BASE_IMAGE", &base)]);
    agent_image(&podman, &base, &dir)?;

    let demo_file = dir.join("docker-compose.demo.yml");
    std::fs::write(&demo_file, demo_compose_file(o))?;
    let compose = repo.join("deploy/compose");
    let stack = Stack {
        podman: &podman,
        files: vec![
            lab_dir.join("docker-compose.lab.yml"),
            compose.join("docker-compose.periscope.yml"),
            compose.join("docker-compose.podman.yml"),
            demo_file,
        ],
        env: vec![
            ("LAB_OUT", out.to_string_lossy().into_owned()),
            ("LAB_IMAGE", LAB_IMAGE.to_owned()),
            ("PERISCOPE_IMAGE", AGENT_IMAGE.to_owned()),
        ],
    };
    // A stack left over by an interrupted run would hold the names and the port.
    drop(stack.compose(&["down", "-t", "1"]).output());
    if std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT)).is_ok() {
        bail!("port {METRICS_PORT} (the overlay publishes the agent's /metrics there) is taken");
    }
    let files: Vec<String> = stack.files.iter().map(|f| f.display().to_string()).collect();
    eprintln!("demo: podman-compose -p {PROJECT} -f {} up -d", files.join(" -f "));
    cmd::run_quiet(&mut stack.compose(&["up", "-d"]))?;

    let agent = container("periscope");
    let agent_running = || {
        let state = podman.state(&agent);
        match state.as_str() {
            "running" | "created" | "configured" => Ok(()),
            _ => Err(anyhow::anyhow!("the agent container is {state:?}:\n{}", podman.logs(&agent, 60))),
        }
    };
    stack.wait("the agent's /healthz on port 9091", Duration::from_secs(90), stop, || {
        agent_running()?;
        Ok(http_get(METRICS_PORT, "/healthz").ok().filter(|b| !b.is_empty()))
    })?;
    stack.wait("the three Mythical services to be watched", Duration::from_secs(120), stop, || {
        let targets = http_get(METRICS_PORT, "/targets").unwrap_or_default();
        Ok(SERVICES.iter().all(|s| targets.contains(s)).then_some(()))
    })?;

    let spans_where = match &o.otlp_endpoint {
        Some(e) => format!("spans: OTLP to {e} (from the agent's container)"),
        None => format!("spans: OTLP/gRPC to the `alloy` container, kept in {}", out.join("traces.bin").display()),
    };
    let mut spans = ReceivedSpans { path: out.join("traces.bin"), offset: 0, per_service: BTreeMap::new() };
    let mut table = Table::default();
    let start = Instant::now();
    let mut outcome = Ok(());
    while !stop.load(Ordering::SeqCst) && o.duration.is_none_or(|d| start.elapsed() < d) {
        std::thread::sleep(REFRESH);
        match http_get(METRICS_PORT, "/metrics") {
            Ok(text) => table.push(&text),
            Err(e) => eprintln!("demo: cannot read periscope's /metrics: {e}"),
        }
        spans.update();
        let screen = format!(
            "periscope demo in containers (podman, project {PROJECT}): the Mythical services, {:.0} s; Ctrl-C stops\n\
             {spans_where}\nperiscope: http://127.0.0.1:{METRICS_PORT}/metrics; logs: podman logs {}\n{}",
            start.elapsed().as_secs_f64(),
            container("<service>"),
            table.render(&spans.per_service)
        );
        super::show(&screen, o);
        if let Err(e) = agent_running() {
            outcome = Err(e);
            break;
        }
    }
    let spans_checked = o.otlp_endpoint.is_none().then_some(&spans.per_service);
    let checked = match outcome {
        Ok(()) if o.duration.is_some() => check_every_service(&table, spans_checked).map_err(|e| {
            anyhow::anyhow!("{e}\n{}", stack.logs()) // the logs before `down` removes them
        }),
        other => other,
    };
    drop(stack);
    checked?;
    if o.duration.is_some() {
        eprintln!("demo: every service has spans and metrics, from its own container");
    }
    Ok(())
}
