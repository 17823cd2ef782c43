//! The agent image and the lab overlay in a real container engine (issue 13):
//! rootful podman, podman-compose, and nothing from a registry.
//!
//! Images: a Debian base made by debootstrap from the archive apt uses
//! (cached in /var/cache/periscope and in podman's storage), the agent from
//! `deploy/Dockerfile.prebuilt` around the periscope binary cargo built for
//! this test, and the lab's services from `deploy/compose/lab/Dockerfile`
//! (postgresql, rabbitmq-server, nodejs, python3-grpcio from Debian).
//!
//! Compose: `deploy/compose/lab/docker-compose.lab.yml` stands in for the
//! lab's own file (mythical-database, mythical-queue, alloy, the three
//! Mythical services; one container and network namespace each), then the
//! project's overlays as they are, `docker-compose.periscope.yml` and
//! `docker-compose.podman.yml`, then `docker-compose.ground-truth.yml` (query
//! strings and statement literals kept, for the request ids). The requester
//! sends no traceparent header (`MYTHICAL_TRACEPARENT=0`): each link between
//! the requester's CLIENT span and the server's SERVER span is periscope's
//! own, from matching the two ends of a connection across network namespaces.
//!
//! Checked: the agent container starts and attaches its programs; the three
//! services are found and named (`OTEL_SERVICE_NAME` from the overlay), with
//! the podman container id of each (from the engine); HTTP server and client
//! spans, SQL spans, AMQP publish and consume spans; each server span under
//! the client span of the same request id (`?rid=<n>`) in the other container,
//! each SQL span under the server span of its request (`/* rid=<n> */`);
//! each RabbitMQ consume span under the requester's publish span (through
//! the broker's container); nearly every request the requester made in the
//! window seen; RED metrics
//! for the services on the published /metrics port (host 9091).
//!
//! Needs root and `cargo xtask deps` (podman, runc, debootstrap,
//! podman-compose, deploy/mythical's node_modules).
mod support;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use support::agent::{http_get, sample_sum};
use support::otlp_receiver::{attr_map, ReceivedSpan, Val, Via};
use support::podman::{checked, deb822_entries, one_line_entries, Podman};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// The compose project (container names are `<project>_<service>_1`).
const PROJECT: &str = "periscope-lab-test";
/// The overlay publishes the agent's :9090 here.
const METRICS_PORT: u16 = 9091;
const AGENT_IMAGE: &str = "localhost/periscope:lab-test";
const SERVICES: [&str; 3] = ["mythical-server", "mythical-requester", "mythical-recorder"];
/// How long the requester's traffic is watched once the agent watches all three.
const WINDOW: Duration = Duration::from_secs(30);
/// Server spans under their client span (of requests with both spans), SQL
/// spans under their server span, consume spans under a publish span, in
/// percent: 100 measured.
const MIN_LINKED_PCT: f64 = 99.0;
/// Requests the requester made in the window that have a server span, in
/// percent: 100 measured.
const MIN_SEEN_PCT: f64 = 95.0;
/// At least this many requests must have been seen, end to end.
const MIN_REQUESTS: usize = 100;

fn container(service: &str) -> String {
    format!("{PROJECT}_{service}_1")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn service(s: &ReceivedSpan) -> String {
    match s.resource.get("service.name") {
        Some(Val::Str(n)) => n.clone(),
        _ => String::new(),
    }
}

fn resource_str(s: &ReceivedSpan, key: &str) -> Option<String> {
    match s.resource.get(key) {
        Some(Val::Str(v)) => Some(v.clone()),
        _ => None,
    }
}

/// The request id of a span: `rid=N` in its query, URL or statement.
fn rid(s: &ReceivedSpan) -> Option<u64> {
    let text = s.attr_str("url.query").or_else(|| s.attr_str("url.full")).or_else(|| s.attr_str("db.query.text"))?;
    let i = text.find("rid=")?;
    text[i + 4..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

fn child_of(c: &ReceivedSpan, p: &ReceivedSpan) -> bool {
    c.span.parent_span_id == p.span.span_id && c.span.trace_id == p.span.trace_id
}

fn pct(ok: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * ok as f64 / total as f64
    }
}

/// The receiver's file: records of an 8-byte big-endian length and an
/// ExportTraceServiceRequest.
fn read_spans(path: &Path) -> Vec<ReceivedSpan> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 8;
        assert!(at + len <= bytes.len(), "{}: a record cut short", path.display());
        let req = ExportTraceServiceRequest::decode(&bytes[at..at + len]).expect("an ExportTraceServiceRequest");
        at += len;
        for rs in req.resource_spans {
            let resource = attr_map(&rs.resource.map(|r| r.attributes).unwrap_or_default());
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push(ReceivedSpan {
                        via: Via::Grpc,
                        resource: resource.clone(),
                        scope: ss.scope.clone(),
                        span,
                    });
                }
            }
        }
    }
    out
}

/// The compose project, taken down when the test ends (with every
/// container's last lines printed when it failed).
struct Lab<'a> {
    podman: &'a Podman,
    files: Vec<PathBuf>,
    env: Vec<(&'static str, String)>,
}

impl Lab<'_> {
    fn compose(&self, args: &[&str]) -> String {
        let mut c = self.podman.compose(PROJECT, &self.files, args);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        checked(&mut c)
    }

    fn all_containers() -> Vec<String> {
        ["periscope", "mythical-database", "mythical-queue", "alloy"]
            .into_iter()
            .chain(SERVICES)
            .map(container)
            .collect()
    }
}

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in Self::all_containers() {
                eprintln!("--- {c} ({}):\n{}", self.podman.state(&c), self.podman.logs(&c, 30));
            }
        }
        let mut c = self.podman.compose(PROJECT, &self.files, &["down", "-t", "5"]);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        let _ = c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status();
    }
}

/// The agent image from `deploy/Dockerfile.prebuilt` around this test's
/// periscope binary (DWARF stripped, as deploy/build-in-image.sh does).
fn agent_image(podman: &Podman, base: &str, work: &Path) {
    let context = work.join("agent-image");
    std::fs::create_dir_all(&context).unwrap();
    checked(
        std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(env!("CARGO_BIN_EXE_periscope"))
            .arg(context.join("periscope")),
    );
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", context.join("ca-certificates.crt")).unwrap();
    // Replaced, not retagged: no untagged agent image is left behind per run.
    drop(podman.cmd(["rmi", "-f", AGENT_IMAGE]).output());
    podman.build(AGENT_IMAGE, &repo().join("deploy/Dockerfile.prebuilt"), &context, &[("RUNTIME_IMAGE", base)]);
}

/// A line of the requester's own counters, read inside its container.
fn requester_counter(podman: &Podman, name: &str) -> f64 {
    let script = "require('http').get('http://127.0.0.1:4001/metrics', (r) => r.pipe(process.stdout))";
    let out = checked(&mut podman.cmd(["exec", &container("mythical-requester"), "node", "-e", script]));
    sample_sum(&out, name, &[])
}

#[test]
fn apt_entries_are_read_in_both_formats() {
    let deb822 = "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                  Components: main\n\nTypes: deb-src\nURIs: http://x/debian\nSuites: sid\n";
    let uri = "http://deb.debian.org/debian".to_owned();
    assert_eq!(deb822_entries(deb822), [(uri.clone(), "bookworm".into()), (uri, "bookworm-updates".into())]);
    let one = "deb [signed-by=/k.gpg] https://pkgs.example/apt cloud main\ndeb http://m/debian trixie main # x\n";
    assert_eq!(
        one_line_entries(one),
        [("https://pkgs.example/apt".into(), "cloud".into()), ("http://m/debian".into(), "trixie".into())]
    );
}

#[test]
fn the_lab_overlay_runs_in_podman_and_links_across_containers() {
    let started = Instant::now();
    let repo = repo();
    assert!(
        repo.join("deploy/mythical/node_modules/express").exists(),
        "deploy/mythical/node_modules is missing: run `cargo xtask deps`"
    );
    let work = std::env::temp_dir().join(format!("periscope-lab-containers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let out = work.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let podman = Podman::new(&work);

    // Images: base (cached), lab services (layers cached), agent (new binary each run).
    let base = podman.debian_base();
    let lab_dir = repo.join("deploy/compose/lab");
    let lab_image = "localhost/periscope-lab:bookworm";
    podman.build(lab_image, &lab_dir.join("Dockerfile"), &lab_dir, &[("BASE_IMAGE", &base)]);
    agent_image(&podman, &base, &work);
    let images_s = started.elapsed().as_secs_f64();

    let compose = repo.join("deploy/compose");
    let lab = Lab {
        podman: &podman,
        files: vec![
            lab_dir.join("docker-compose.lab.yml"),
            compose.join("docker-compose.periscope.yml"),
            compose.join("docker-compose.podman.yml"),
            lab_dir.join("docker-compose.ground-truth.yml"),
        ],
        env: vec![
            ("LAB_OUT", out.to_string_lossy().into_owned()),
            ("LAB_IMAGE", lab_image.to_owned()),
            ("PERISCOPE_IMAGE", AGENT_IMAGE.to_owned()),
        ],
    };
    // A project left over by an interrupted run would hold the names and the port.
    drop(podman.compose(PROJECT, &lab.files, &["down", "-t", "1"]).envs(lab.env.clone()).output());
    // Otherwise /healthz and /metrics below would be someone else's.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT)).is_err(),
        "port {METRICS_PORT} (the overlay's published /metrics) is taken before the lab starts"
    );
    lab.compose(&["up", "-d"]);
    let agent = container("periscope");
    let all = Lab::all_containers();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();

    // The agent: running, its programs attached (/healthz answers only then).
    podman.wait("the agent's /healthz on the published port", Duration::from_secs(90), &all, || {
        let state = podman.state(&agent);
        assert!(
            state == "running" || state == "created" || state == "configured",
            "the agent container is {state}:\n{}",
            podman.logs(&agent, 60)
        );
        http_get(METRICS_PORT, "/healthz").filter(|b| !b.is_empty())
    });
    let agent_log = podman.logs(&agent, 200);
    assert!(
        !agent_log.contains("seccomp filter denies"),
        "the overlay's seccomp setting did not reach the agent:\n{agent_log}"
    );
    podman.wait("the three Mythical services to be watched", Duration::from_secs(120), &all, || {
        let t = http_get(METRICS_PORT, "/targets")?;
        SERVICES.iter().all(|s| t.contains(s)).then_some(())
    });
    let first_rid = requester_counter(&podman, "mythical_requester_calls_total");
    std::thread::sleep(WINDOW);
    let last_rid = requester_counter(&podman, "mythical_requester_calls_total");
    let metrics = http_get(METRICS_PORT, "/metrics").unwrap_or_default();
    // SIGTERM: the agent flushes what it holds and exits.
    checked(&mut podman.cmd(["stop", "-t", "30", &agent]));
    let ids: HashMap<&str, String> = SERVICES.iter().map(|s| (*s, podman.id(&container(s)))).collect();
    let agent_log = podman.logs(&agent, 400);
    std::thread::sleep(Duration::from_secs(1));
    let spans = read_spans(&out.join("traces.bin"));

    // Services: found, named, in their namespace, with their container's id.
    let mut wrong: Vec<String> = Vec::new();
    for s in SERVICES {
        let of: Vec<&ReceivedSpan> = spans.iter().filter(|x| service(x) == s).collect();
        if of.is_empty() {
            wrong.push(format!("no spans of {s}"));
            continue;
        }
        let namespaces: HashSet<Option<String>> = of.iter().map(|x| resource_str(x, "service.namespace")).collect();
        let containers: HashSet<Option<String>> = of.iter().map(|x| resource_str(x, "container.id")).collect();
        if namespaces != HashSet::from([Some("mythical".to_owned())]) {
            wrong.push(format!("{s}: service.namespace {namespaces:?}"));
        }
        if containers != HashSet::from([Some(ids[s].clone())]) {
            wrong.push(format!("{s}: container.id {containers:?}, podman says {}", ids[s]));
        }
    }

    // Spans by request id, and by kind.
    #[derive(Default)]
    struct Request<'a> {
        client: Vec<&'a ReceivedSpan>,
        server: Vec<&'a ReceivedSpan>,
        sql: Vec<&'a ReceivedSpan>,
    }
    let mut by_rid: HashMap<u64, Request<'_>> = HashMap::new();
    let (mut publish, mut consume, mut sql, mut server, mut client) = (0, 0, 0, 0, 0);
    let producers: HashSet<&[u8]> = spans
        .iter()
        .filter(|s| service(s) == "mythical-requester" && s.span.kind == PRODUCER)
        .map(|s| s.span.span_id.as_slice())
        .collect();
    let mut consume_linked = 0;
    for s in &spans {
        let svc = service(s);
        let is_sql = s.attr_str("db.system.name").as_deref() == Some("postgresql");
        let is_amqp = s.attr_str("messaging.system").as_deref() == Some("rabbitmq");
        match (svc.as_str(), s.span.kind) {
            ("mythical-requester", PRODUCER) if is_amqp => publish += 1,
            ("mythical-recorder", CONSUMER) if is_amqp => {
                consume += 1;
                consume_linked += usize::from(producers.contains(s.span.parent_span_id.as_slice()));
            }
            ("mythical-server", CLIENT) if is_sql => sql += 1,
            ("mythical-server", SERVER) if s.attr_str("http.request.method").is_some() => server += 1,
            ("mythical-requester", CLIENT) if s.attr_str("http.request.method").is_some() => client += 1,
            _ => {}
        }
        let Some(id) = rid(s) else { continue };
        let r = by_rid.entry(id).or_default();
        match (svc.as_str(), s.span.kind) {
            ("mythical-requester", CLIENT) => r.client.push(s),
            ("mythical-server", SERVER) => r.server.push(s),
            ("mythical-server", CLIENT) if is_sql => r.sql.push(s),
            _ => {}
        }
    }
    for (what, n) in [
        ("HTTP SERVER spans of mythical-server", server),
        ("HTTP CLIENT spans of mythical-requester", client),
        ("PostgreSQL CLIENT spans of mythical-server", sql),
        ("RabbitMQ PRODUCER spans of mythical-requester", publish),
        ("RabbitMQ CONSUMER spans of mythical-recorder", consume),
    ] {
        if n == 0 {
            wrong.push(format!("no {what}"));
        }
    }

    // Links: server under the client of its request (another container),
    // SQL under the server span of its request.
    let (mut linked, mut servers, mut sql_ok, mut sql_total) = (0, 0, 0, 0);
    let mut unlinked = Vec::new();
    for (id, r) in &by_rid {
        for q in &r.sql {
            sql_total += 1;
            sql_ok += usize::from(r.server.iter().any(|s| child_of(q, s)));
        }
        // A request made before the agent watched the requester has no client span to be under.
        if r.client.is_empty() {
            continue;
        }
        for s in &r.server {
            servers += 1;
            if r.client.iter().any(|c| child_of(s, c)) {
                linked += 1;
            } else if unlinked.len() < 10 {
                unlinked.push(format!("rid {id}: server span not under its client span"));
            }
        }
    }
    // Ground truth: the requester's own count of calls; those made in the
    // window (rids first_rid+1..=last_rid) should all have a server span.
    let window: Vec<u64> = ((first_rid as u64 + 1)..=(last_rid as u64)).collect();
    let seen = window.iter().filter(|id| by_rid.get(id).is_some_and(|r| !r.server.is_empty())).count();
    let red = |metric: &str, svc: &str| sample_sum(&metrics, metric, &[&format!("service_name=\"{svc}\"")]);
    let red_series = [
        ("http_server_request_duration_seconds_count", "mythical-server"),
        ("http_client_request_duration_seconds_count", "mythical-requester"),
        ("db_client_operation_duration_seconds_count", "mythical-server"),
        ("messaging_client_operation_duration_seconds_count", "mythical-requester"),
    ];
    for (metric, svc) in red_series {
        if red(metric, svc) <= 0.0 {
            wrong.push(format!("/metrics on :{METRICS_PORT}: no {metric} for {svc}"));
        }
    }
    let link_counters: Vec<&str> = metrics.lines().filter(|l| l.starts_with("periscope_link")).collect();
    eprintln!(
        "images ready after {images_s:.0} s, test {:.0} s; {} spans\n\
         spans: {server} HTTP server, {client} HTTP client, {sql} SQL, {publish} AMQP publish, {consume} AMQP consume \
         ({consume_linked} under a publish span)\n\
         server under its client (across containers; requests with both): {linked}/{servers} ({:.1}%)\n\
         SQL under its request: {sql_ok}/{sql_total} ({:.1}%)\n\
         requests in the window (requester's count): {}, with a server span: {seen} ({:.1}%)\n\
         {link_counters:#?}\nfirst unlinked: {unlinked:#?}",
        started.elapsed().as_secs_f64(),
        spans.len(),
        pct(linked, servers),
        pct(sql_ok, sql_total),
        window.len(),
        pct(seen, window.len()),
    );
    if servers < MIN_REQUESTS || window.len() < MIN_REQUESTS {
        wrong.push(format!("too few requests: {servers} server spans, {} in the window", window.len()));
    }
    if pct(linked, servers) < MIN_LINKED_PCT {
        wrong.push(format!("server spans under their client span: {:.1}%", pct(linked, servers)));
    }
    if pct(sql_ok, sql_total) < MIN_LINKED_PCT {
        wrong.push(format!("SQL spans under their server span: {:.1}%", pct(sql_ok, sql_total)));
    }
    // Through the broker, a third container: each delivery under the publish of its message.
    if pct(consume_linked, consume) < MIN_LINKED_PCT {
        wrong.push(format!("AMQP consume spans under a publish span: {consume_linked}/{consume}"));
    }
    if pct(seen, window.len()) < MIN_SEEN_PCT {
        wrong.push(format!("requests of the window seen by periscope: {:.1}%", pct(seen, window.len())));
    }
    assert!(wrong.is_empty(), "{wrong:#?}\nagent log:\n{agent_log}");
    drop(lab);
    checked(&mut podman.cmd(["rmi", AGENT_IMAGE]));
    let _ = std::fs::remove_dir_all(&work);
}

/// The DaemonSet's pod template as a Pod for `podman kube play` (podman 4.3
/// plays Pods and Deployments, not DaemonSets), after deploy/kubernetes's
/// ConfigMap. Two changes for podman 4.3, which does not know them:
/// `NODE_NAME` from `fieldRef: spec.nodeName` becomes the value `node`
/// ("fieldPath spec.nodeName is either not valid or not supported"), and
/// `seccompProfile: Unconfined` is also given as the annotation podman reads
/// (`seccomp.security.alpha.kubernetes.io/pod: unconfined`).
fn daemonset_as_pod(image: &str, node: &str) -> String {
    use serde_yaml_ng::Value;
    let k8s = repo().join("deploy/kubernetes");
    let read = |f: &str| std::fs::read_to_string(k8s.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let ds: Value = serde_yaml_ng::from_str(&read("daemonset.yaml")).unwrap();
    assert_eq!(ds["kind"], "DaemonSet");
    let template = &ds["spec"]["template"];
    let mut pod: Value = serde_yaml_ng::from_str("apiVersion: v1\nkind: Pod\nmetadata: {name: periscope}\n").unwrap();
    pod["metadata"]["labels"] = template["metadata"]["labels"].clone();
    let mut annotations = template["metadata"]["annotations"].clone();
    annotations["seccomp.security.alpha.kubernetes.io/pod"] = "unconfined".into();
    pod["metadata"]["annotations"] = annotations;
    pod["spec"] = template["spec"].clone();
    let container = &mut pod["spec"]["containers"][0];
    container["image"] = image.into();
    let env = container["env"].as_sequence_mut().expect("the container's env");
    let node_name = env.iter_mut().find(|e| e["name"] == "NODE_NAME").expect("NODE_NAME in the DaemonSet");
    assert!(node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName");
    node_name.as_mapping_mut().unwrap().remove("valueFrom");
    node_name["value"] = node.into();
    format!("{}\n---\n{}", read("configmap.yaml"), serde_yaml_ng::to_string(&pod).unwrap())
}

/// `podman kube down` of the played file when the test ends.
struct Played<'a> {
    podman: &'a Podman,
    file: PathBuf,
}

impl Drop for Played<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- periscope-periscope:\n{}", self.podman.logs("periscope-periscope", 40));
        }
        drop(self.podman.cmd(["kube", "down"]).arg(&self.file).output());
    }
}

#[test]
fn the_daemonset_pod_spec_plays_in_podman_and_attaches() {
    let work = std::env::temp_dir().join(format!("periscope-kube-play-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let podman = Podman::new(&work);
    let base = podman.debian_base();
    agent_image(&podman, &base, &work);
    let file = work.join("periscope-pod.yaml");
    std::fs::write(&file, daemonset_as_pod(AGENT_IMAGE, "lab-node")).unwrap();
    drop(podman.cmd(["kube", "down"]).arg(&file).output());
    checked(podman.cmd(["kube", "play"]).arg(&file));
    let played = Played { podman: &podman, file: file.clone() };
    let agent = "periscope-periscope";

    // Attached, by its log and by /healthz on the pod's address (answered
    // only once the kernel programs are attached).
    let log = podman.wait("the pod's agent to attach its programs", Duration::from_secs(90), &[agent], || {
        let log = podman.logs(agent, 200);
        assert!(!log.contains("startup check(s) failed"), "the agent stopped at its startup checks:\n{log}");
        log.contains("kernel programs attached").then_some(log)
    });
    let infra = checked(&mut podman.cmd(["pod", "inspect", "periscope", "--format", "{{.InfraContainerID}}"]));
    let ip = checked(&mut podman.cmd([
        "inspect",
        &infra,
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    ]));
    let healthz =
        podman.wait(&format!("/healthz on the pod's address {ip}:9090"), Duration::from_secs(30), &[agent], || {
            let mut s = std::net::TcpStream::connect((ip.as_str(), 9090)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            use std::io::{Read, Write};
            write!(s, "GET /healthz HTTP/1.0\r\n\r\n").ok()?;
            let mut body = String::new();
            s.read_to_string(&mut body).ok()?;
            (body.split_whitespace().nth(1) == Some("200")).then_some(body)
        });
    let pid_mode = checked(&mut podman.cmd(["inspect", agent, "--format", "{{.HostConfig.PidMode}}"]));
    eprintln!(
        "kube play: {}; /healthz: {:?}; pid namespace: {pid_mode} (hostPID {} by podman 4.3)",
        log.lines().find(|l| l.contains("kernel programs attached")).unwrap_or_default(),
        healthz.lines().last().unwrap_or_default(),
        if pid_mode == "host" { "honoured" } else { "not honoured" },
    );
    drop(played);
    checked(&mut podman.cmd(["rmi", AGENT_IMAGE]));
    let _ = std::fs::remove_dir_all(&work);
}
