//! Kubernetes metadata for an agent running as a DaemonSet.
//!
//! * [`cgroup`]: the container id and pod UID of a process, from
//!   `/proc/PID/cgroup` (pure parsing).
//! * [`store`]: the pods of this node (and the Deployments of ReplicaSets,
//!   and this Node), indexed by pod UID and container id, bounded, kept when
//!   the API server is unreachable.
//! * [`watch`]: kube-rs watchers feeding the store, with backoff; errors are
//!   counted in `periscope_kubernetes_api_errors_total`.
//! * [`attributes`]: the `k8s.*` attributes and the service name/namespace a
//!   pod gives its processes.
//! * [`selector`]: discovery by namespace, pod labels and owner name.
//! * [`config`]: `--kubernetes*` flags and the `kubernetes:` YAML block.
//!
//! Only processes in containers get Kubernetes attributes; a process seen
//! before its pod's metadata arrived gets them on a later discovery scan
//! (see [`KubernetesMetadata::generation`]).
//!
//! What the DaemonSet needs: `NODE_NAME` from the downward API
//! (`fieldRef: spec.nodeName`); `hostPID: true` (to read other pods'
//! `/proc/PID/cgroup`); a ClusterRole allowing `list` and `watch` on `pods`
//! and `nodes` (core group) and `replicasets` (`apps`). Without the
//! ReplicaSet permission the Deployment name still comes from the pods'
//! `pod-template-hash` label; the refused watch is counted as API errors.
//! No Namespace watch: nothing in the Resource or the selectors needs more
//! than a pod's own namespace name.
use std::sync::Arc;

pub mod attributes;
pub mod cgroup;
pub mod config;
pub mod selector;
pub mod store;
pub mod watch;

pub use attributes::{resource_of, KubernetesResource, Owners};
pub use cgroup::{parse_cgroup, ContainerRef};
pub use config::{Enable, KubernetesArgs, KubernetesSettings};
pub use selector::{PodSelector, PodSelectorError};
pub use store::{MetadataStore, PodMatch, PodMeta, StoreLimits};
pub use watch::Watchers;

use crate::telemetry::Telemetry;

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("no Kubernetes API configuration (in-cluster service account or kubeconfig): {0}")]
    Config(String),
    #[error("creating the Kubernetes API client: {0}")]
    Client(#[from] kube::Error),
    #[error(transparent)]
    Selector(#[from] PodSelectorError),
    #[error("pod selectors (--kubernetes-namespace, -pod-label, -owner-name) need Kubernetes metadata: set --kubernetes=true")]
    SelectorWithoutMetadata,
}

/// What discovery needs to decorate and select processes: the store plus
/// this node's identity. Cheap to clone.
#[derive(Clone, Debug)]
pub struct KubernetesMetadata {
    store: MetadataStore,
    node_name: Arc<str>,
    cluster_name: Option<Arc<str>>,
}

impl KubernetesMetadata {
    pub fn new(store: MetadataStore, node_name: &str, cluster_name: Option<&str>) -> Self {
        Self { store, node_name: node_name.into(), cluster_name: cluster_name.map(Into::into) }
    }

    pub fn store(&self) -> &MetadataStore {
        &self.store
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Changes whenever the metadata does: a process whose pod was unknown
    /// is worth looking up again only after this moved.
    pub fn generation(&self) -> u64 {
        self.store.generation()
    }

    pub fn find(&self, container: &ContainerRef) -> Option<PodMatch> {
        self.store.find(container)
    }

    /// The Kubernetes part of the Resource of a process in `container`.
    pub fn resource(&self, container: &ContainerRef) -> Option<KubernetesResource> {
        Some(self.resource_of(&self.find(container)?))
    }

    /// The Kubernetes part of the Resource of a process in this pod.
    pub fn resource_of(&self, pod: &PodMatch) -> KubernetesResource {
        resource_of(pod, &self.node_name, self.cluster_name.as_deref())
    }
}

/// The running Kubernetes side: metadata handle plus its watchers (stopped
/// when this is dropped).
#[derive(Debug)]
pub struct Kubernetes {
    pub metadata: KubernetesMetadata,
    _watchers: Watchers,
}

impl Kubernetes {
    /// Connects to the API server (in-cluster or kubeconfig) and starts the
    /// watchers. Returns at once: metadata arrives in the background.
    pub async fn start(settings: &KubernetesSettings, telemetry: Arc<Telemetry>) -> Result<Self, KubernetesError> {
        let client = watch::default_client().await?;
        Ok(Self::start_with_client(client, settings, StoreLimits::default(), telemetry))
    }

    /// The same with a given client (tests point it at a recorded API).
    pub fn start_with_client(
        client: kube::Client,
        settings: &KubernetesSettings,
        limits: StoreLimits,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let store = MetadataStore::new(limits, telemetry.clone());
        let watchers = watch::spawn(client, &settings.node_name, store.clone(), telemetry);
        Self {
            metadata: KubernetesMetadata::new(store, &settings.node_name, settings.cluster_name.as_deref()),
            _watchers: watchers,
        }
    }
}
