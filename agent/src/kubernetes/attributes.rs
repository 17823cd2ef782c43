//! Resource attributes of a process from the pod it runs in.
//!
//! `service.name` from Kubernetes metadata, first match wins (the process's
//! own `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` come before all of
//! these, see `discovery::service`):
//! 1. the pod annotation `resource.opentelemetry.io/service.name`;
//! 2. the pod label `app.kubernetes.io/name`;
//! 3. the name of the pod's top owner: Deployment (through its ReplicaSet),
//!    else the ReplicaSet, StatefulSet, DaemonSet, Job, or any other
//!    controller;
//! 4. the pod name (a bare pod).
//!
//! `service.namespace`: the annotation `resource.opentelemetry.io/service.namespace`,
//! the label `app.kubernetes.io/part-of`, else the pod's Kubernetes
//! namespace. These are Beyla's default metadata sources (its
//! `DefaultMetadataSources`: the same two annotations, the labels
//! `app.kubernetes.io/name` and `app.kubernetes.io/part-of`, then the owner
//! name and the Kubernetes namespace), so dashboards keyed by
//! `service_name`/`service_namespace` keep working across the two.
//!
//! Other `resource.opentelemetry.io/<key>` annotations become the resource
//! attribute `<key>` (the OpenTelemetry operator's convention).
use super::store::{PodMatch, RESOURCE_ANNOTATION_PREFIX};
use crate::model::AttrValue;
use crate::semconv;

/// Kubernetes' part of a process's Resource.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesResource {
    pub service_name: String,
    pub service_namespace: String,
    /// `k8s.*` and `container.id`, then annotation attributes, in export order.
    pub attributes: Vec<(String, AttrValue)>,
}

/// The owner names of a pod, from its direct controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    pub replicaset: Option<String>,
    pub deployment: Option<String>,
    pub statefulset: Option<String>,
    pub daemonset: Option<String>,
    pub job: Option<String>,
    /// A controller of another kind (`kind`, `name`).
    pub other: Option<(String, String)>,
}

impl Owners {
    pub fn of(m: &PodMatch) -> Self {
        let mut o = Owners { deployment: m.deployment.clone(), ..Owners::default() };
        if let Some(owner) = &m.pod.owner {
            let name = Some(owner.name.clone());
            match owner.kind.as_str() {
                "ReplicaSet" => o.replicaset = name,
                "StatefulSet" => o.statefulset = name,
                "DaemonSet" => o.daemonset = name,
                "Job" => o.job = name,
                kind => o.other = Some((kind.to_owned(), owner.name.clone())),
            }
        }
        o
    }

    /// The name the workload is known by: the top of the owner chain.
    pub fn top(&self) -> Option<&str> {
        self.deployment
            .as_deref()
            .or(self.replicaset.as_deref())
            .or(self.statefulset.as_deref())
            .or(self.daemonset.as_deref())
            .or(self.job.as_deref())
            .or(self.other.as_ref().map(|(_, n)| n.as_str()))
    }

    /// Every owner name (for selectors): ReplicaSet and Deployment both.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        [&self.replicaset, &self.deployment, &self.statefulset, &self.daemonset, &self.job]
            .into_iter()
            .filter_map(|n| n.as_deref())
            .chain(self.other.as_ref().map(|(_, n)| n.as_str()))
    }
}

fn non_empty(s: Option<&String>) -> Option<&str> {
    s.map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// The Resource contribution of the pod a process runs in. `node_name` is
/// the agent's own node, used when the pod does not say (it always does once
/// scheduled); `cluster_name`, when configured, becomes `k8s.cluster.name`.
pub fn resource_of(m: &PodMatch, node_name: &str, cluster_name: Option<&str>) -> KubernetesResource {
    let pod = &m.pod;
    let owners = Owners::of(m);
    let annotation = |key: &str| non_empty(pod.resource_annotations.get(&format!("{RESOURCE_ANNOTATION_PREFIX}{key}")));
    let label = |key: &str| non_empty(pod.labels.get(key));

    let service_name = annotation(semconv::SERVICE_NAME)
        .or_else(|| label("app.kubernetes.io/name"))
        .or(owners.top())
        .unwrap_or(&pod.name)
        .to_owned();
    let service_namespace = annotation(semconv::SERVICE_NAMESPACE)
        .or_else(|| label("app.kubernetes.io/part-of"))
        .unwrap_or(&pod.namespace)
        .to_owned();

    let mut attrs: Vec<(String, AttrValue)> = Vec::with_capacity(12);
    let mut push = |k: &str, v: &str| attrs.push((k.to_owned(), v.into()));
    push("k8s.namespace.name", &pod.namespace);
    push("k8s.pod.name", &pod.name);
    push("k8s.pod.uid", &pod.uid);
    if let Some(c) = &m.container_name {
        push("k8s.container.name", c);
    }
    if let Some(id) = &m.container_id {
        push(semconv::CONTAINER_ID, id);
    }
    let node = if pod.node_name.is_empty() { node_name } else { &pod.node_name };
    if !node.is_empty() {
        push("k8s.node.name", node);
    }
    if let Some(n) = m.node.as_ref().filter(|n| n.name == node && !n.uid.is_empty()) {
        push("k8s.node.uid", &n.uid);
    }
    for (key, value) in [
        ("k8s.deployment.name", &owners.deployment),
        ("k8s.replicaset.name", &owners.replicaset),
        ("k8s.statefulset.name", &owners.statefulset),
        ("k8s.daemonset.name", &owners.daemonset),
        ("k8s.job.name", &owners.job),
    ] {
        if let Some(v) = value {
            push(key, v);
        }
    }
    if let Some(top) = owners.top() {
        push("k8s.owner.name", top);
    }
    if let Some(c) = cluster_name.filter(|c| !c.is_empty()) {
        push("k8s.cluster.name", c);
    }
    for (k, v) in &pod.resource_annotations {
        let key = &k[RESOURCE_ANNOTATION_PREFIX.len()..];
        if key.is_empty()
            || key == semconv::SERVICE_NAME
            || key == semconv::SERVICE_NAMESPACE
            || attrs.iter().any(|(a, _)| a == key)
        {
            continue;
        }
        attrs.push((key.to_owned(), v.as_str().into()));
    }
    KubernetesResource { service_name, service_namespace, attributes: attrs }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kubernetes::store::{NodeMeta, OwnerRef, PodMeta};

    fn matched(owner: Option<(&str, &str)>, deployment: Option<&str>) -> PodMatch {
        PodMatch {
            pod: Arc::new(PodMeta {
                uid: "u-1".into(),
                name: "web-5d8f7c9b4-x2x9q".into(),
                namespace: "shop".into(),
                node_name: "worker-1".into(),
                owner: owner.map(|(k, n)| OwnerRef { kind: k.into(), name: n.into() }),
                ..PodMeta::default()
            }),
            container_name: Some("web".into()),
            container_id: Some("c".repeat(64)),
            deployment: deployment.map(Into::into),
            node: Some(NodeMeta { name: "worker-1".into(), uid: "node-uid".into() }),
        }
    }

    fn get<'a>(r: &'a KubernetesResource, k: &str) -> Option<&'a AttrValue> {
        r.attributes.iter().find(|(a, _)| a == k).map(|(_, v)| v)
    }

    #[test]
    fn name_and_namespace_precedence() {
        let mut m = matched(Some(("ReplicaSet", "web-5d8f7c9b4")), Some("web"));
        let r = resource_of(&m, "", None);
        assert_eq!((r.service_name.as_str(), r.service_namespace.as_str()), ("web", "shop"));
        let pod = Arc::make_mut(&mut m.pod);
        pod.labels.insert("app.kubernetes.io/name".into(), "web-label".into());
        pod.labels.insert("app.kubernetes.io/part-of".into(), "webshop".into());
        let r = resource_of(&m, "", None);
        assert_eq!((r.service_name.as_str(), r.service_namespace.as_str()), ("web-label", "webshop"));
        let pod = Arc::make_mut(&mut m.pod);
        pod.resource_annotations.insert("resource.opentelemetry.io/service.name".into(), "web-annot".into());
        pod.resource_annotations.insert("resource.opentelemetry.io/service.namespace".into(), "ns-annot".into());
        pod.resource_annotations.insert("resource.opentelemetry.io/deployment.environment".into(), "prod".into());
        let r = resource_of(&m, "", None);
        assert_eq!((r.service_name.as_str(), r.service_namespace.as_str()), ("web-annot", "ns-annot"));
        assert_eq!(get(&r, "deployment.environment"), Some(&AttrValue::from("prod")));
        assert!(get(&r, "service.name").is_none(), "service.name is not a plain attribute here");
        // Empty values do not count.
        let pod = Arc::make_mut(&mut m.pod);
        pod.resource_annotations.insert("resource.opentelemetry.io/service.name".into(), " ".into());
        assert_eq!(resource_of(&m, "", None).service_name, "web-label");
    }

    #[test]
    fn owners_and_fallbacks() {
        let r = resource_of(&matched(Some(("ReplicaSet", "web-5d8f7c9b4")), None), "", None);
        assert_eq!(r.service_name, "web-5d8f7c9b4", "a ReplicaSet without a known Deployment");
        let r = resource_of(&matched(Some(("StatefulSet", "db")), None), "", None);
        assert_eq!(r.service_name, "db");
        assert_eq!(get(&r, "k8s.statefulset.name"), Some(&AttrValue::from("db")));
        let r = resource_of(&matched(Some(("DaemonSet", "agent")), None), "", None);
        assert_eq!(get(&r, "k8s.daemonset.name"), Some(&AttrValue::from("agent")));
        let r = resource_of(&matched(Some(("Rollout", "canary")), None), "", None);
        assert_eq!((r.service_name.as_str(), get(&r, "k8s.owner.name")), ("canary", Some(&AttrValue::from("canary"))));
        let r = resource_of(&matched(None, None), "", None);
        assert_eq!(r.service_name, "web-5d8f7c9b4-x2x9q", "a bare pod is named after itself");
        assert!(get(&r, "k8s.owner.name").is_none());
    }

    #[test]
    fn attribute_order() {
        let r = resource_of(&matched(Some(("ReplicaSet", "web-5d8f7c9b4")), Some("web")), "worker-1", Some("prod-eu"));
        let keys: Vec<&str> = r.attributes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "k8s.namespace.name",
                "k8s.pod.name",
                "k8s.pod.uid",
                "k8s.container.name",
                "container.id",
                "k8s.node.name",
                "k8s.node.uid",
                "k8s.deployment.name",
                "k8s.replicaset.name",
                "k8s.owner.name",
                "k8s.cluster.name",
            ]
        );
    }
}
