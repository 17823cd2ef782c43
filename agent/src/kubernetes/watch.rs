//! The watchers that keep a [`MetadataStore`] up to date.
//!
//! Three list+watch loops (kube-runtime's `watcher`, which re-lists on
//! `410 Gone` and resumes from the last resourceVersion otherwise):
//! * Pods of this node only: field selector `spec.nodeName=<node>`, so the
//!   agent's cost does not grow with the cluster;
//! * ReplicaSets, metadata only (`PartialObjectMetadata`), cluster-wide: the
//!   owner of a pod's ReplicaSet names its Deployment (there is no node
//!   filter for ReplicaSets; only those owned by a Deployment are kept);
//! * this node's Node object (`metadata.name=<node>`).
//!
//! Every error (API server down, 403, broken stream) is counted in
//! `periscope_kubernetes_api_errors_total`, logged once per outage, and
//! retried with kube's default backoff (0.8 s doubling to 30 s, jittered,
//! reset after 2 minutes of health). The store keeps what it had meanwhile.
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Node, core::v1::Pod};
use kube::{
    core::PartialObjectMeta,
    runtime::{
        watcher::{self, watcher, Event},
        WatchStreamExt,
    },
    Api, Client,
};
use tokio::task::JoinHandle;

use super::{store::MetadataStore, KubernetesError};
use crate::telemetry::{Counter, Telemetry};

/// The field selector of the pod watch: the pods scheduled on `node`.
pub fn pod_field_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// Running watcher tasks; dropping this stops them.
#[derive(Debug)]
pub struct Watchers {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Drives one watcher stream into the store until it ends (it does not:
/// errors are retried after a backoff).
async fn drive<K, S>(what: &'static str, stream: S, telemetry: Arc<Telemetry>, mut apply: impl FnMut(Event<K>))
where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    futures_util::pin_mut!(stream);
    let mut failing = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if failing {
                    tracing::info!("kubernetes {what} watch recovered");
                    failing = false;
                }
                apply(event);
            }
            Err(e) => {
                telemetry.inc(Counter::KubernetesApiErrors);
                if !failing {
                    tracing::warn!("kubernetes {what} watch failed, keeping the last known metadata and retrying: {e}");
                    failing = true;
                } else {
                    tracing::debug!("kubernetes {what} watch still failing: {e}");
                }
            }
        }
    }
}

/// Starts the watchers on the tokio runtime. `node` is this node's name.
pub fn spawn(client: Client, node: &str, store: MetadataStore, telemetry: Arc<Telemetry>) -> Watchers {
    // `any_semantic`: re-lists may be served from the API server's cache
    // (resourceVersion=0), as client-go informers do; cheaper for the server.
    let pods = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&pod_field_selector(node)).any_semantic(),
    )
    .default_backoff();
    let replicasets =
        watcher(Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()), watcher::Config::default().any_semantic())
            .default_backoff();
    let nodes = watcher(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node}")).any_semantic(),
    )
    .default_backoff();

    let mut tasks = Vec::with_capacity(3);
    let (s, t) = (store.clone(), telemetry.clone());
    tasks.push(tokio::spawn(drive("pod", pods, t, move |e| s.on_pod_event(e))));
    let (s, t) = (store.clone(), telemetry.clone());
    tasks.push(tokio::spawn(drive("replicaset", replicasets, t, move |e| s.on_replicaset_event(e))));
    tasks.push(tokio::spawn(drive("node", nodes, telemetry, move |e| store.on_node_event(e))));
    Watchers { tasks }
}

/// A client for the API server: in-cluster (service account token and CA)
/// when `KUBERNETES_SERVICE_HOST` is set, else the kubeconfig.
pub async fn default_client() -> Result<Client, KubernetesError> {
    let config = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        kube::Config::incluster().map_err(|e| KubernetesError::Config(e.to_string()))?
    } else {
        kube::Config::infer().await.map_err(|e| KubernetesError::Config(e.to_string()))?
    };
    Ok(Client::try_from(config)?)
}
