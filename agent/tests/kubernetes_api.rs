//! Kubernetes metadata end to end: the kube-rs watchers against an API
//! endpoint serving recorded objects (tests/fixtures/kubernetes: a PodList,
//! a metadata-only ReplicaSet list, a NodeList, and watch events in the
//! API's newline-delimited `WatchEvent` form).
//!
//! The server implements what the watchers request: `GET <collection>` (a
//! list) and `GET <collection>?watch=true` (a stream that stays open; the
//! recorded events first, then whatever the test pushes). It records every
//! request, and can die (listener closed, streams cut) like an API server
//! that went away.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{header, StatusCode},
    response::Response,
    Router,
};
use periscope::{
    discovery::{resolve_service, ProcessInfo, ServiceOptions},
    kubernetes::{ContainerRef, Kubernetes, KubernetesSettings, StoreLimits},
    model::AttrValue,
    telemetry::{Counter, Telemetry},
};
use tokio::sync::{broadcast, watch};

const NODE: &str = "worker-1";
const WAIT: Duration = Duration::from_secs(15);

fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubernetes").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Container ids of the recorded pods (sha256 of a name, as in the fixtures).
const CHECKOUT: &str = "c7761e58969f7edd498186641b2021e8477e1bcd230de4cf3435242da4a40d14";
const ISTIO_PROXY: &str = "b8e9c2a497daf0198e1b79d0044361efcbeb110b0e12096e96fcf46aadefd73e";
const CART: &str = "1c42ddc0285b9c25135be3bf345e6a041271b784b22a6f6cab6588dab93c5980";
const PAYMENTS: &str = "df384ae97c77ad3001626aab01f2eb2aad176448109165df1d64c57b7091cd1c";
const NODE_EXPORTER: &str = "2303824a4e3dc61fe3195d1a6e978029d4774876cc9aba9d2c60ef85eb96a845";
const LEGACY: &str = "c49fea7425fa7f8699897a97c159c6690267d9003bb78c53fafa8fc15c325d84";
const PENDING: &str = "26748e9211814dc08c4d645f79a6a870f665c3964e21a49b1ca80d8225519888";
const PENDING_UID: &str = "8c7b6a5f-4e3d-4c2b-9a1f-0e9d8c7b6a5f";
const MIGRATE_INIT: &str = "9490be4058e03b7603b81fb5f077816aa0263395d83e7d54c4259f49ae2413f1";

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: HashMap<String, String>,
    accept: String,
}

struct ApiState {
    /// Collection name (`pods`, `replicasets`, `nodes`) -> list body.
    lists: Mutex<HashMap<&'static str, String>>,
    requests: Mutex<Vec<Seen>>,
    /// Collection -> the events its first watch starts with.
    recorded: Mutex<HashMap<&'static str, String>>,
    /// Collections whose recorded watch stream was already served.
    watched: Mutex<HashSet<&'static str>>,
    pushed: broadcast::Sender<(&'static str, String)>,
    dead: watch::Receiver<bool>,
}

struct ApiServer {
    addr: SocketAddr,
    state: Arc<ApiState>,
    kill: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn collection(path: &str) -> Option<&'static str> {
    match path {
        "/api/v1/pods" => Some("pods"),
        "/apis/apps/v1/replicasets" => Some("replicasets"),
        "/api/v1/nodes" => Some("nodes"),
        _ => None,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
            .flatten();
        match (hex, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, c) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Applies a `path.to.field=value` field selector to a list, as the API
/// server does (the selectors the watchers use are of this one form).
fn filter_list(body: &str, selector: Option<&String>) -> String {
    let Some((field, want)) = selector.and_then(|s| s.split_once('=')) else {
        return body.to_owned();
    };
    let mut list: serde_json::Value = serde_json::from_str(body).unwrap();
    let items = list["items"].as_array_mut().unwrap();
    items.retain(|item| field.split('.').fold(item, |v, k| &v[k]).as_str() == Some(want));
    list.to_string()
}

fn json(status: StatusCode, body: String) -> Response {
    Response::builder().status(status).header(header::CONTENT_TYPE, "application/json").body(Body::from(body)).unwrap()
}

async fn api(State(st): State<Arc<ApiState>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    st.requests.lock().unwrap().push(Seen { path: path.clone(), query: query.clone(), accept });
    if *st.dead.borrow() {
        return json(StatusCode::SERVICE_UNAVAILABLE, String::new());
    }
    let Some(name) = collection(&path) else {
        let status = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#;
        return json(StatusCode::NOT_FOUND, status.to_owned());
    };
    if query.get("watch").map(String::as_str) != Some("true") {
        let body = st.lists.lock().unwrap().get(name).cloned().unwrap();
        return json(StatusCode::OK, filter_list(&body, query.get("fieldSelector")));
    }
    // A watch: the recorded events on the first one, then pushed events,
    // until the server dies.
    let first = st.watched.lock().unwrap().insert(name);
    let recorded: VecDeque<String> = match first {
        true => st.recorded.lock().unwrap()[name].lines().map(str::to_owned).collect(),
        false => VecDeque::new(),
    };
    let rx = st.pushed.subscribe();
    let dead = st.dead.clone();
    let stream =
        futures_util::stream::unfold((recorded, rx, dead), move |(mut recorded, mut rx, mut dead)| async move {
            if let Some(line) = recorded.pop_front() {
                return Some((Ok::<_, Infallible>(Bytes::from(line + "\n")), (recorded, rx, dead)));
            }
            loop {
                let next = tokio::select! {
                    _ = dead.wait_for(|d| *d) => None,
                    ev = rx.recv() => match ev {
                        Ok((c, line)) if c == name => Some(line),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => None,
                    },
                };
                return next.map(|line| (Ok(Bytes::from(line + "\n")), (recorded, rx, dead)));
            }
        });
    Response::builder().header(header::CONTENT_TYPE, "application/json").body(Body::from_stream(stream)).unwrap()
}

impl ApiServer {
    async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), &[], &[]).await
    }

    /// A server on `addr` whose lists and first watch events are the
    /// recorded ones except for the overrides (collection, body).
    async fn start_on(addr: SocketAddr, lists: &[(&'static str, String)], watches: &[(&'static str, String)]) -> Self {
        let overrides = lists;
        let mut lists = HashMap::from([
            ("pods", fixture("pods-list.json")),
            ("replicasets", fixture("replicasets-list.json")),
            ("nodes", fixture("nodes-list.json")),
        ]);
        lists.extend(overrides.iter().cloned());
        let mut recorded: HashMap<&'static str, String> =
            ["pods", "replicasets", "nodes"].into_iter().map(|c| (c, fixture(&format!("{c}-watch.jsonl")))).collect();
        recorded.extend(watches.iter().cloned());
        let (kill, dead) = watch::channel(false);
        let state = Arc::new(ApiState {
            lists: Mutex::new(lists),
            recorded: Mutex::new(recorded),
            requests: Mutex::new(Vec::new()),
            watched: Mutex::new(HashSet::new()),
            pushed: broadcast::channel(64).0,
            dead: dead.clone(),
        });
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(api).with_state(state.clone());
        let mut dead_signal = dead;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = dead_signal.wait_for(|d| *d).await;
                })
                .await;
        });
        Self { addr, state, kill, task }
    }

    /// Sends one watch event line on the open watch of `collection`.
    fn push(&self, collection: &'static str, line: &str) {
        self.state.pushed.send((collection, line.trim().to_owned())).expect("a watch is open");
    }

    fn set_list(&self, collection: &'static str, body: String) {
        self.state.lists.lock().unwrap().insert(collection, body);
    }

    fn requests(&self) -> Vec<Seen> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The API server goes away: streams cut, connections closed, the port
    /// refuses connections.
    async fn die(self) {
        self.kill.send_replace(true);
        tokio::time::timeout(WAIT, self.task).await.expect("server stops").unwrap();
    }
}

fn client(addr: SocketAddr) -> kube::Client {
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn settings() -> KubernetesSettings {
    KubernetesSettings {
        enabled: true,
        node_name: NODE.into(),
        node_name_guessed: false,
        cluster_name: Some("lab".into()),
        pod_selector: None,
    }
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Agent {
    kube: Kubernetes,
    telemetry: Arc<Telemetry>,
}

async fn start_agent(server: &ApiServer) -> Agent {
    let telemetry = Arc::new(Telemetry::default());
    let kube =
        Kubernetes::start_with_client(client(server.addr), &settings(), StoreLimits::default(), telemetry.clone());
    let store = kube.metadata.store().clone();
    // Six pods listed; the node too.
    wait_until("the pod list", || store.pod_count() == 6).await;
    let m = kube.metadata.clone();
    wait_until("the node and replicasets", || {
        m.resource(&by_id(CHECKOUT)).is_some_and(|r| {
            get(&r.attributes, "k8s.node.uid").is_some() && get(&r.attributes, "k8s.deployment.name").is_some()
        })
    })
    .await;
    Agent { kube, telemetry }
}

fn by_id(id: &str) -> ContainerRef {
    ContainerRef { container_id: Some(id.into()), pod_uid: None }
}

fn get<'a>(attrs: &'a [(String, AttrValue)], key: &str) -> Option<&'a str> {
    attrs.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
        AttrValue::Str(s) => Some(s.as_str()),
        _ => None,
    })
}

fn process_in(container: ContainerRef) -> ProcessInfo {
    ProcessInfo {
        pid: 4242,
        comm: "java".into(),
        exe_path: Some("/usr/bin/java".into()),
        exe_name: "java".into(),
        cmdline: vec!["java".into(), "-jar".into(), "/app/app.jar".into()],
        container: Some(container),
        ..ProcessInfo::default()
    }
}

fn options() -> ServiceOptions {
    ServiceOptions { namespace: None, name_override: None, host_name: NODE.into(), rules: Vec::new() }
}

#[tokio::test]
async fn recorded_api_resolves_pods_owners_and_service_names() {
    let server = ApiServer::start().await;
    let agent = start_agent(&server).await;
    let m = &agent.kube.metadata;

    // The app container of a Deployment's pod: everything, the Deployment
    // through the watched ReplicaSet.
    let r = m.resource(&by_id(CHECKOUT)).unwrap();
    let a = &r.attributes;
    assert_eq!(get(a, "k8s.namespace.name"), Some("shop"));
    assert_eq!(get(a, "k8s.pod.name"), Some("checkout-7d9f8b6c5-x2x9q"));
    assert_eq!(get(a, "k8s.pod.uid"), Some("0f6c2d3e-8a1b-4c5d-9e7f-1a2b3c4d5e6f"));
    assert_eq!(get(a, "k8s.container.name"), Some("checkout"));
    assert_eq!(get(a, "container.id"), Some(CHECKOUT));
    assert_eq!(get(a, "k8s.node.name"), Some(NODE));
    assert_eq!(get(a, "k8s.node.uid"), Some("5b1e0c1a-7d2f-4e3b-9a8c-6d5e4f3a2b1c"));
    assert_eq!(get(a, "k8s.replicaset.name"), Some("checkout-7d9f8b6c5"));
    assert_eq!(get(a, "k8s.deployment.name"), Some("checkout"));
    assert_eq!(get(a, "k8s.cluster.name"), Some("lab"));
    assert_eq!((r.service_name.as_str(), r.service_namespace.as_str()), ("checkout", "shop"));
    // The sidecar of the same pod: same workload, its own container name.
    let r = m.resource(&by_id(ISTIO_PROXY)).unwrap();
    assert_eq!(get(&r.attributes, "k8s.container.name"), Some("istio-proxy"));
    assert_eq!(r.service_name, "checkout");
    // An init container's id is known too.
    let r = m.resource(&by_id(MIGRATE_INIT)).unwrap();
    assert_eq!(get(&r.attributes, "k8s.container.name"), Some("migrate"));

    // service.name precedence: annotation > label > owner.
    let r = m.resource(&by_id(CART)).unwrap();
    assert_eq!((r.service_name.as_str(), r.service_namespace.as_str()), ("cart", "webshop"), "annotations");
    assert_eq!(get(&r.attributes, "deployment.environment"), Some("production"));
    assert_eq!(get(&r.attributes, "k8s.deployment.name"), Some("cart"));
    let r = m.resource(&by_id(PAYMENTS)).unwrap();
    assert_eq!((r.service_name.as_str(), r.service_namespace.as_str()), ("payments-api", "billing-suite"), "labels");
    assert_eq!(get(&r.attributes, "k8s.statefulset.name"), Some("payments"));
    let r = m.resource(&by_id(NODE_EXPORTER)).unwrap();
    assert_eq!((r.service_name.as_str(), r.service_namespace.as_str()), ("node-exporter", "monitoring"), "owner");
    assert_eq!(get(&r.attributes, "k8s.daemonset.name"), Some("node-exporter"));
    // A ReplicaSet the API did not list: the Deployment from pod-template-hash.
    let r = m.resource(&by_id(LEGACY)).unwrap();
    assert_eq!(get(&r.attributes, "k8s.deployment.name"), Some("legacy"));
    assert_eq!(r.service_name, "legacy");

    // The process's own environment still beats the pod.
    let mut info = process_in(by_id(CART));
    let svc = resolve_service(&info, &options(), Some(m)).service;
    assert_eq!(svc.name, "cart");
    assert_eq!(get(&svc.attributes, "k8s.pod.name"), Some("cart-5c8d7f9b4-qwert"));
    info.env_service_name = Some("cart-from-env".into());
    let svc = resolve_service(&info, &options(), Some(m)).service;
    assert_eq!((svc.name.as_str(), svc.namespace.as_deref()), ("cart-from-env", Some("webshop")));

    // What was asked: pods of this node only, ReplicaSets as metadata only,
    // this node only; each listed then watched.
    let seen = server.requests();
    let pods: Vec<&Seen> = seen.iter().filter(|s| s.path == "/api/v1/pods").collect();
    assert!(
        pods.iter().any(|s| !s.query.contains_key("watch"))
            && pods.iter().any(|s| s.query.get("watch").is_some_and(|w| w == "true"))
    );
    for s in &pods {
        assert_eq!(s.query.get("fieldSelector").map(String::as_str), Some("spec.nodeName=worker-1"), "{s:?}");
    }
    let nodes: Vec<&Seen> = seen.iter().filter(|s| s.path == "/api/v1/nodes").collect();
    assert!(!nodes.is_empty());
    for s in &nodes {
        assert_eq!(s.query.get("fieldSelector").map(String::as_str), Some("metadata.name=worker-1"), "{s:?}");
    }
    let rs: Vec<&Seen> = seen.iter().filter(|s| s.path == "/apis/apps/v1/replicasets").collect();
    assert!(!rs.is_empty());
    for s in &rs {
        assert!(s.accept.contains("as=PartialObjectMetadata"), "{s:?}");
        assert!(!s.query.contains_key("fieldSelector"), "{s:?}");
    }
    assert_eq!(agent.telemetry.get(Counter::KubernetesApiErrors), 0);
}

#[tokio::test]
async fn late_metadata_then_a_deleted_pod() {
    let server = ApiServer::start().await;
    let agent = start_agent(&server).await;
    let m = &agent.kube.metadata;
    wait_until("the pod watch", || server.state.watched.lock().unwrap().contains("pods")).await;

    // A container of the pending pod runs before the kubelet reported its id:
    // the pod is known, the container is not, the Resource waits for it.
    let pending = ContainerRef { container_id: Some(PENDING.into()), pod_uid: Some(PENDING_UID.into()) };
    let info = process_in(pending.clone());
    let first = resolve_service(&info, &options(), Some(m));
    assert!(first.awaiting_kubernetes);
    assert_eq!(get(&first.service.attributes, "k8s.pod.name"), Some("checkout-7d9f8b6c5-pndng"));
    assert_eq!(get(&first.service.attributes, "k8s.container.name"), None);
    let generation = m.generation();

    server.push("pods", &fixture("pod-pending-started.json"));
    wait_until("the MODIFIED event", || m.generation() != generation).await;
    let again = resolve_service(&info, &options(), Some(m));
    assert!(!again.awaiting_kubernetes);
    assert_eq!(again.service.name, "checkout");
    assert_eq!(get(&again.service.attributes, "k8s.container.name"), Some("checkout"));

    // DELETED removes the pod and its containers; the others stay.
    assert!(m.resource(&by_id(CHECKOUT)).is_some());
    server.push("pods", &fixture("pod-checkout-deleted.json"));
    wait_until("the DELETED event", || m.resource(&by_id(CHECKOUT)).is_none()).await;
    assert!(m.resource(&by_id(ISTIO_PROXY)).is_none());
    assert!(m.resource(&by_id(CART)).is_some());
    assert_eq!(m.store().pod_count(), 5);
}

#[tokio::test]
async fn api_outage_keeps_the_last_known_metadata_and_counts_errors() {
    let server = ApiServer::start().await;
    let agent = start_agent(&server).await;
    let m = agent.kube.metadata.clone();
    wait_until("the watches", || server.state.watched.lock().unwrap().len() == 3).await;
    assert_eq!(agent.telemetry.get(Counter::KubernetesApiErrors), 0);

    let addr = server.addr;
    server.die().await;
    // The watches end, the watchers retry against a closed port.
    wait_until("API errors", || agent.telemetry.get(Counter::KubernetesApiErrors) >= 3).await;
    let r = m.resource(&by_id(CHECKOUT)).expect("metadata kept while the API is down");
    assert_eq!(get(&r.attributes, "k8s.deployment.name"), Some("checkout"));
    assert_eq!(get(&r.attributes, "k8s.node.uid"), Some("5b1e0c1a-7d2f-4e3b-9a8c-6d5e4f3a2b1c"));
    assert_eq!(m.store().pod_count(), 6);

    // The API comes back (same address) after the pod watch's resourceVersion
    // was compacted: the resumed watch gets 410 Gone, the watcher re-lists
    // and catches up with what changed meanwhile.
    let back = ApiServer::start_on(
        addr,
        &[("pods", fixture("pods-relist.json"))],
        &[("pods", fixture("pods-watch-gone.json"))],
    )
    .await;
    wait_until("the re-list after the outage", || m.resource(&by_id(LEGACY)).is_none()).await;
    assert_eq!(m.store().pod_count(), 5);
    assert!(m.resource(&by_id(CHECKOUT)).is_some());
    assert!(back.requests().iter().any(|s| s.path == "/api/v1/pods" && !s.query.contains_key("watch")));
}

#[tokio::test]
async fn a_relist_after_410_gone_drops_pods_no_longer_listed() {
    let server = ApiServer::start().await;
    let agent = start_agent(&server).await;
    let m = &agent.kube.metadata;
    wait_until("the pod watch", || server.state.watched.lock().unwrap().contains("pods")).await;
    assert!(m.resource(&by_id(LEGACY)).is_some());

    // The watch expired: the API answers the next list without the pod that
    // went away meanwhile (its DELETED event was never seen).
    server.set_list("pods", fixture("pods-relist.json"));
    server.push("pods", &fixture("pods-watch-gone.json"));
    wait_until("the re-list", || m.resource(&by_id(LEGACY)).is_none()).await;
    assert_eq!(m.store().pod_count(), 5);
    assert!(m.resource(&by_id(CHECKOUT)).is_some());
    assert_eq!(agent.telemetry.get(Counter::KubernetesApiErrors), 1, "the 410 is counted");
}
