//! What the agent knows about the pods of its node, fed by the watchers.
//!
//! Pods are kept in a compact form ([`PodMeta`]: the fields the Resource and
//! the selectors need), indexed by UID, by container id and by static-pod
//! config hash. ReplicaSets are kept only as `(namespace, name) ->
//! Deployment`. Everything is bounded ([`StoreLimits`]); what does not fit is
//! dropped and counted (`periscope_kubernetes_objects_dropped_total`).
//!
//! Staleness: an entry goes away only when the API says so, by a `DELETED`
//! event or by its absence from a complete re-list. When the API server is
//! unreachable nothing is removed: the last known state keeps answering.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Node, core::v1::Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;

use super::cgroup::{strip_runtime_scheme, ContainerRef};
use crate::telemetry::{Counter, Telemetry};

/// Annotations with this prefix name resource attributes (OTel convention:
/// `resource.opentelemetry.io/service.name`, `.../deployment.environment`).
pub const RESOURCE_ANNOTATION_PREFIX: &str = "resource.opentelemetry.io/";
/// The kubelet's hash of a static pod, as seen in its cgroup.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Resource annotations kept per pod, and their longest value.
const MAX_RESOURCE_ANNOTATIONS: usize = 32;
const MAX_ANNOTATION_VALUE: usize = 1024;

/// The controller of an object (`ownerReferences[controller=true]`, else the
/// first owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMeta {
    /// Without the `containerd://` scheme.
    pub id: String,
    pub name: String,
}

/// The parts of a Pod the agent uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node_name: String,
    pub labels: BTreeMap<String, String>,
    /// Only `resource.opentelemetry.io/*` annotations (bounded).
    pub resource_annotations: BTreeMap<String, String>,
    pub owner: Option<OwnerRef>,
    /// Started containers (regular, init and ephemeral) that have an id.
    pub containers: Vec<ContainerMeta>,
    /// Static pods: the hash their cgroup carries instead of the UID.
    pub mirror_hash: Option<String>,
}

fn controller_of(
    refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
) -> Option<OwnerRef> {
    let refs = refs?;
    let r = refs.iter().find(|r| r.controller == Some(true)).or_else(|| refs.first())?;
    Some(OwnerRef { kind: r.kind.clone(), name: r.name.clone() })
}

impl PodMeta {
    /// `None` for a pod without a UID (never sent by a real API server).
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let m = &pod.metadata;
        let uid = m.uid.clone().filter(|u| !u.is_empty())?;
        let annotations = m.annotations.as_ref();
        let resource_annotations = annotations
            .into_iter()
            .flatten()
            .filter(|(k, v)| k.starts_with(RESOURCE_ANNOTATION_PREFIX) && v.len() <= MAX_ANNOTATION_VALUE)
            .take(MAX_RESOURCE_ANNOTATIONS)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut containers = Vec::new();
        if let Some(status) = &pod.status {
            let all =
                [&status.container_statuses, &status.init_container_statuses, &status.ephemeral_container_statuses];
            for cs in all.into_iter().flatten().flatten() {
                if let Some(id) = cs.container_id.as_deref().map(strip_runtime_scheme).filter(|i| !i.is_empty()) {
                    containers.push(ContainerMeta { id: id.to_owned(), name: cs.name.clone() });
                }
            }
        }
        Some(Self {
            uid,
            name: m.name.clone().unwrap_or_default(),
            namespace: m.namespace.clone().unwrap_or_default(),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
            labels: m.labels.clone().unwrap_or_default(),
            resource_annotations,
            owner: controller_of(m.owner_references.as_ref()),
            containers,
            mirror_hash: annotations.and_then(|a| a.get(MIRROR_ANNOTATION)).cloned(),
        })
    }
}

/// The node the agent runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeMeta {
    pub name: String,
    pub uid: String,
}

/// Caps on what the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Pods of this node (the kubelet's default limit is 110 per node).
    pub max_pods: usize,
    /// ReplicaSets owned by a Deployment, cluster-wide.
    pub max_replicasets: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self { max_pods: 1024, max_replicasets: 100_000 }
    }
}

/// A pod as found for a process, with the container when the process's
/// container id is one of the pod's.
#[derive(Debug, Clone)]
pub struct PodMatch {
    pub pod: Arc<PodMeta>,
    pub container_name: Option<String>,
    pub container_id: Option<String>,
    /// The Deployment of the pod's ReplicaSet, when the pod has one.
    pub deployment: Option<String>,
    pub node: Option<NodeMeta>,
}

#[derive(Default)]
struct Inner {
    pods: HashMap<String, Arc<PodMeta>>,
    /// container id -> (pod uid, container name)
    by_container: HashMap<String, (String, String)>,
    /// static pod config hash -> pod uid
    by_mirror: HashMap<String, String>,
    /// (namespace, replicaset) -> deployment
    replicasets: HashMap<(String, String), String>,
    node: Option<NodeMeta>,
    /// Objects of an ongoing re-list, swapped in at its end.
    pod_relist: Option<HashMap<String, Arc<PodMeta>>>,
    rs_relist: Option<HashMap<(String, String), String>>,
}

impl Inner {
    fn unindex(&mut self, pod: &PodMeta) {
        for c in &pod.containers {
            if self.by_container.get(&c.id).is_some_and(|(uid, _)| *uid == pod.uid) {
                self.by_container.remove(&c.id);
            }
        }
        if let Some(h) = &pod.mirror_hash {
            if self.by_mirror.get(h) == Some(&pod.uid) {
                self.by_mirror.remove(h);
            }
        }
    }

    fn index(&mut self, pod: &PodMeta) {
        for c in &pod.containers {
            self.by_container.insert(c.id.clone(), (pod.uid.clone(), c.name.clone()));
        }
        if let Some(h) = &pod.mirror_hash {
            self.by_mirror.insert(h.clone(), pod.uid.clone());
        }
    }

    fn remove_pod(&mut self, uid: &str) -> bool {
        match self.pods.remove(uid) {
            Some(old) => {
                self.unindex(&old);
                true
            }
            None => false,
        }
    }

    fn replace_pods(&mut self, pods: HashMap<String, Arc<PodMeta>>) {
        self.pods = pods;
        self.by_container.clear();
        self.by_mirror.clear();
        let all: Vec<Arc<PodMeta>> = self.pods.values().cloned().collect();
        for p in all {
            self.index(&p);
        }
    }
}

/// Shared, thread-safe metadata of this node's pods. Cloning shares it.
#[derive(Clone)]
pub struct MetadataStore {
    inner: Arc<RwLock<Inner>>,
    generation: Arc<AtomicU64>,
    warned_full: Arc<AtomicBool>,
    limits: StoreLimits,
    telemetry: Arc<Telemetry>,
}

impl std::fmt::Debug for MetadataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataStore").field("generation", &self.generation()).field("limits", &self.limits).finish()
    }
}

fn rs_deployment(rs: &PartialObjectMeta<ReplicaSet>) -> Option<((String, String), String)> {
    let m = &rs.metadata;
    let owner = controller_of(m.owner_references.as_ref()).filter(|o| o.kind == "Deployment")?;
    Some(((m.namespace.clone()?, m.name.clone()?), owner.name))
}

impl MetadataStore {
    pub fn new(limits: StoreLimits, telemetry: Arc<Telemetry>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Inner::default())),
            generation: Arc::new(AtomicU64::new(0)),
            warned_full: Arc::new(AtomicBool::new(false)),
            limits,
            telemetry,
        }
    }

    /// Bumped on every change: a caller that found nothing for a process can
    /// skip retrying until this moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn dropped(&self, what: &str) {
        self.telemetry.inc(Counter::KubernetesObjectsDropped);
        if !self.warned_full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max_pods = self.limits.max_pods,
                max_replicasets = self.limits.max_replicasets,
                "kubernetes metadata store full: {what} not kept (counted in periscope_kubernetes_objects_dropped_total)"
            );
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than losing all metadata would.
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces a pod.
    pub fn apply_pod(&self, pod: PodMeta) {
        let mut inner = self.write();
        if !inner.pods.contains_key(&pod.uid) && inner.pods.len() >= self.limits.max_pods {
            drop(inner);
            self.dropped("pod");
            return;
        }
        inner.remove_pod(&pod.uid);
        inner.index(&pod);
        inner.pods.insert(pod.uid.clone(), Arc::new(pod));
        drop(inner);
        self.changed();
    }

    pub fn delete_pod(&self, uid: &str) {
        if self.write().remove_pod(uid) {
            self.changed();
        }
    }

    /// Feeds one pod watcher event. A re-list (`Init` .. `InitDone`) replaces
    /// the whole set at its end; until then the previous set keeps answering.
    pub fn on_pod_event(&self, event: Event<Pod>) {
        match event {
            Event::Apply(p) => {
                if let Some(m) = PodMeta::from_pod(&p) {
                    self.apply_pod(m);
                }
            }
            Event::Delete(p) => {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    self.delete_pod(uid);
                }
            }
            Event::Init => self.write().pod_relist = Some(HashMap::new()),
            Event::InitApply(p) => {
                let Some(m) = PodMeta::from_pod(&p) else { return };
                let mut inner = self.write();
                let Some(buf) = inner.pod_relist.as_mut() else { return };
                if buf.len() >= self.limits.max_pods && !buf.contains_key(&m.uid) {
                    drop(inner);
                    self.dropped("pod");
                    return;
                }
                buf.insert(m.uid.clone(), Arc::new(m));
            }
            Event::InitDone => {
                let mut inner = self.write();
                if let Some(pods) = inner.pod_relist.take() {
                    inner.replace_pods(pods);
                    drop(inner);
                    self.changed();
                }
            }
        }
    }

    /// Feeds one ReplicaSet (metadata only) watcher event. Only ReplicaSets
    /// controlled by a Deployment are kept.
    pub fn on_replicaset_event(&self, event: Event<PartialObjectMeta<ReplicaSet>>) {
        match event {
            Event::Apply(rs) => {
                let Some((key, deployment)) = rs_deployment(&rs) else {
                    return;
                };
                let mut inner = self.write();
                if !inner.replicasets.contains_key(&key) && inner.replicasets.len() >= self.limits.max_replicasets {
                    drop(inner);
                    self.dropped("replicaset");
                    return;
                }
                inner.replicasets.insert(key, deployment);
                drop(inner);
                self.changed();
            }
            Event::Delete(rs) => {
                let m = &rs.metadata;
                if let (Some(ns), Some(name)) = (m.namespace.clone(), m.name.clone()) {
                    if self.write().replicasets.remove(&(ns, name)).is_some() {
                        self.changed();
                    }
                }
            }
            Event::Init => self.write().rs_relist = Some(HashMap::new()),
            Event::InitApply(rs) => {
                let Some((key, deployment)) = rs_deployment(&rs) else {
                    return;
                };
                let mut inner = self.write();
                let Some(buf) = inner.rs_relist.as_mut() else { return };
                if buf.len() >= self.limits.max_replicasets && !buf.contains_key(&key) {
                    drop(inner);
                    self.dropped("replicaset");
                    return;
                }
                buf.insert(key, deployment);
            }
            Event::InitDone => {
                let mut inner = self.write();
                if let Some(rs) = inner.rs_relist.take() {
                    inner.replicasets = rs;
                    drop(inner);
                    self.changed();
                }
            }
        }
    }

    /// Feeds one event of the watcher on this node's Node object.
    pub fn on_node_event(&self, event: Event<Node>) {
        let node = match event {
            Event::Apply(n) | Event::InitApply(n) => {
                Some(NodeMeta { name: n.metadata.name.unwrap_or_default(), uid: n.metadata.uid.unwrap_or_default() })
            }
            Event::Delete(_) => None,
            Event::Init | Event::InitDone => return,
        };
        self.write().node = node;
        self.changed();
    }

    /// Number of pods known (for tests and logs).
    pub fn pod_count(&self) -> usize {
        self.read().pods.len()
    }

    pub fn pod_by_uid(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.read().pods.get(uid).cloned()
    }

    /// The pod (and container) of a process. By container id first (which
    /// also names the container), else by pod UID (or static-pod hash).
    pub fn find(&self, cref: &ContainerRef) -> Option<PodMatch> {
        let inner = self.read();
        let by_container = cref
            .container_id
            .as_ref()
            .and_then(|id| inner.by_container.get(id))
            .and_then(|(uid, name)| Some((inner.pods.get(uid)?, Some(name.clone()))));
        let (pod, container_name) = match by_container {
            Some(found) => found,
            None => {
                let uid = cref.pod_uid.as_ref()?;
                let uid = inner.by_mirror.get(uid).unwrap_or(uid);
                (inner.pods.get(uid)?, None)
            }
        };
        let deployment = match &pod.owner {
            Some(o) if o.kind == "ReplicaSet" => inner
                .replicasets
                .get(&(pod.namespace.clone(), o.name.clone()))
                .cloned()
                .or_else(|| deployment_from_hash(pod, &o.name)),
            _ => None,
        };
        Some(PodMatch {
            pod: pod.clone(),
            container_name,
            container_id: cref.container_id.clone(),
            deployment,
            node: inner.node.clone(),
        })
    }
}

/// The Deployment controller names a ReplicaSet `<deployment>-<hash>` and
/// labels its pods `pod-template-hash=<hash>`: the Deployment name without a
/// watch on ReplicaSets (not yet received, or not allowed by RBAC).
fn deployment_from_hash(pod: &PodMeta, rs_name: &str) -> Option<String> {
    let hash = pod.labels.get("pod-template-hash")?;
    let name = rs_name.strip_suffix(hash.as_str())?.strip_suffix('-')?;
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, name: &str, containers: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            name: name.into(),
            namespace: "shop".into(),
            node_name: "worker-1".into(),
            containers: containers
                .iter()
                .map(|(id, n)| ContainerMeta { id: (*id).into(), name: (*n).into() })
                .collect(),
            ..PodMeta::default()
        }
    }

    fn cref(id: Option<&str>, uid: Option<&str>) -> ContainerRef {
        ContainerRef { container_id: id.map(Into::into), pod_uid: uid.map(Into::into) }
    }

    fn store(max_pods: usize) -> (MetadataStore, Arc<Telemetry>) {
        let t = Arc::new(Telemetry::default());
        (MetadataStore::new(StoreLimits { max_pods, max_replicasets: 2 }, t.clone()), t)
    }

    #[test]
    fn finds_by_container_then_uid_and_reindexes_updates() {
        let (s, _) = store(10);
        s.apply_pod(pod("u1", "a", &[("c1", "app")]));
        let m = s.find(&cref(Some("c1"), None)).unwrap();
        assert_eq!((m.pod.name.as_str(), m.container_name.as_deref()), ("a", Some("app")));
        // Unknown container of a known pod: the pod, no container name.
        let m = s.find(&cref(Some("zz"), Some("u1"))).unwrap();
        assert_eq!(m.container_name, None);
        assert!(s.find(&cref(Some("zz"), Some("nope"))).is_none());
        // The container restarted with a new id: the old id no longer matches.
        let g = s.generation();
        s.apply_pod(pod("u1", "a", &[("c2", "app")]));
        assert!(s.generation() > g);
        assert!(s.find(&cref(Some("c1"), None)).is_none());
        assert!(s.find(&cref(Some("c2"), None)).is_some());
        s.delete_pod("u1");
        assert!(s.find(&cref(Some("c2"), Some("u1"))).is_none());
        assert_eq!(s.pod_count(), 0);
    }

    #[test]
    fn static_pods_by_mirror_hash() {
        let (s, _) = store(10);
        let mut p = pod("api-uid", "kube-apiserver-worker-1", &[]);
        p.mirror_hash = Some("5d2c0b8e6a1f4c3b9e7d8a6f5c4b3a21".into());
        s.apply_pod(p);
        let m = s.find(&cref(None, Some("5d2c0b8e6a1f4c3b9e7d8a6f5c4b3a21"))).unwrap();
        assert_eq!(m.pod.uid, "api-uid");
    }

    #[test]
    fn bounded_and_counted() {
        let (s, t) = store(2);
        for i in 0..4 {
            s.apply_pod(pod(&format!("u{i}"), "p", &[]));
        }
        assert_eq!(s.pod_count(), 2);
        assert_eq!(t.get(Counter::KubernetesObjectsDropped), 2);
        // Updates of kept pods still apply.
        s.apply_pod(pod("u0", "renamed", &[]));
        assert_eq!(s.pod_by_uid("u0").unwrap().name, "renamed");
    }

    #[test]
    fn relist_swaps_at_the_end() {
        let (s, _) = store(10);
        s.apply_pod(pod("old", "gone-during-outage", &[("c-old", "x")]));
        s.apply_pod(pod("kept", "kept", &[]));
        let to_pod = |m: PodMeta| {
            let mut p = Pod::default();
            p.metadata.uid = Some(m.uid);
            p.metadata.name = Some(m.name);
            p
        };
        s.on_pod_event(Event::Init);
        s.on_pod_event(Event::InitApply(to_pod(pod("kept", "kept", &[]))));
        s.on_pod_event(Event::InitApply(to_pod(pod("new", "new", &[]))));
        // Mid re-list: the previous state still answers.
        assert!(s.find(&cref(Some("c-old"), None)).is_some());
        s.on_pod_event(Event::InitDone);
        assert!(s.find(&cref(Some("c-old"), Some("old"))).is_none());
        assert!(s.pod_by_uid("kept").is_some() && s.pod_by_uid("new").is_some());
    }

    #[test]
    fn deployment_name_from_pod_template_hash() {
        let mut p = pod("u", "web-5d8f7c9b4-x2x9q", &[]);
        p.labels.insert("pod-template-hash".into(), "5d8f7c9b4".into());
        assert_eq!(deployment_from_hash(&p, "web-5d8f7c9b4").as_deref(), Some("web"));
        assert_eq!(deployment_from_hash(&p, "other-rs"), None);
        p.labels.clear();
        assert_eq!(deployment_from_hash(&p, "web-5d8f7c9b4"), None);
    }
}
