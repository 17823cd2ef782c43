//! The `kubernetes` options: flags, environment variables and the YAML block
//!
//! ```yaml
//! kubernetes:
//!   enable: auto            # --kubernetes / PERISCOPE_KUBERNETES_ENABLE
//!   node_name: worker-1     # --kubernetes-node-name / NODE_NAME
//!   cluster_name: prod-eu   # --kubernetes-cluster-name
//!   namespace: [shop, "team-*"]        # --kubernetes-namespace
//!   pod_label: ["app=web*"]            # --kubernetes-pod-label
//!   owner_name: [checkout]             # --kubernetes-owner-name
//! ```
use clap::ValueEnum;

use super::{selector::PodSelector, KubernetesError};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Enable {
    /// On when running in a pod (`KUBERNETES_SERVICE_HOST` is set).
    #[default]
    Auto,
    True,
    False,
}

#[derive(Clone, Debug, clap::Args)]
pub struct KubernetesArgs {
    /// Kubernetes metadata (k8s.* attributes, service names from pods): auto
    /// (on when running in a pod), true or false.
    #[arg(long = "kubernetes", env = "PERISCOPE_KUBERNETES_ENABLE", value_enum, default_value = "auto",
          num_args = 0..=1, default_missing_value = "true", value_name = "WHEN")]
    pub enable: Enable,

    /// This node's name; only its pods are watched. Defaults to the host name.
    #[arg(long = "kubernetes-node-name", env = "NODE_NAME", value_name = "NODE")]
    pub node_name: Option<String>,

    /// k8s.cluster.name of every watched process.
    #[arg(long = "kubernetes-cluster-name", env = "PERISCOPE_KUBERNETES_CLUSTER_NAME")]
    pub cluster_name: Option<String>,

    /// Watch processes of pods in these namespaces (globs, comma-separated).
    #[arg(
        long = "kubernetes-namespace",
        env = "PERISCOPE_KUBERNETES_NAMESPACE",
        value_delimiter = ',',
        value_name = "GLOB"
    )]
    pub namespace: Vec<String>,

    /// Watch processes of pods with these labels (key=glob, comma-separated; all must match).
    #[arg(
        long = "kubernetes-pod-label",
        env = "PERISCOPE_KUBERNETES_POD_LABEL",
        value_delimiter = ',',
        value_name = "KEY=GLOB"
    )]
    pub pod_label: Vec<String>,

    /// Watch processes of pods owned by these workloads (Deployment, ReplicaSet,
    /// StatefulSet, DaemonSet, Job names; globs, comma-separated).
    #[arg(
        long = "kubernetes-owner-name",
        env = "PERISCOPE_KUBERNETES_OWNER_NAME",
        value_delimiter = ',',
        value_name = "GLOB"
    )]
    pub owner_name: Vec<String>,
}

/// The resolved `kubernetes` options.
#[derive(Clone, Debug, Default)]
pub struct KubernetesSettings {
    pub enabled: bool,
    /// Empty when disabled.
    pub node_name: String,
    /// True when `node_name` is this machine's host name, not given.
    pub node_name_guessed: bool,
    pub cluster_name: Option<String>,
    /// Processes of pods matching this are watched (one more discovery
    /// criterion, OR-ed with ports, executables and pids).
    pub pod_selector: Option<PodSelector>,
}

impl KubernetesArgs {
    /// `in_cluster`: whether `KUBERNETES_SERVICE_HOST` is set.
    pub fn resolve(
        &self,
        in_cluster: bool,
        host_name: impl FnOnce() -> String,
    ) -> Result<KubernetesSettings, KubernetesError> {
        let enabled = match self.enable {
            Enable::Auto => in_cluster,
            Enable::True => true,
            Enable::False => false,
        };
        let selector = PodSelector::new(&self.namespace, &self.pod_label, &self.owner_name)?;
        if !enabled {
            if !selector.is_empty() {
                return Err(KubernetesError::SelectorWithoutMetadata);
            }
            return Ok(KubernetesSettings::default());
        }
        let given = self.node_name.as_deref().map(str::trim).filter(|n| !n.is_empty());
        let (node_name, node_name_guessed) = match given {
            Some(n) => (n.to_owned(), false),
            None => (host_name(), true),
        };
        Ok(KubernetesSettings {
            enabled,
            node_name,
            node_name_guessed,
            cluster_name: self.cluster_name.clone().filter(|c| !c.trim().is_empty()),
            pod_selector: (!selector.is_empty()).then_some(selector),
        })
    }
}

/// YAML keys of the `kubernetes:` block and the flags they stand for.
const YAML_KEYS: &[(&str, &str)] = &[
    ("enable", "kubernetes"),
    ("enabled", "kubernetes"),
    ("node_name", "kubernetes-node-name"),
    ("cluster_name", "kubernetes-cluster-name"),
    ("namespace", "kubernetes-namespace"),
    ("namespaces", "kubernetes-namespace"),
    ("pod_label", "kubernetes-pod-label"),
    ("pod_labels", "kubernetes-pod-label"),
    ("owner_name", "kubernetes-owner-name"),
    ("owner_names", "kubernetes-owner-name"),
];

/// Flattens a `kubernetes:` mapping of a YAML config file into top-level
/// `flag-name: value` entries (other entries pass through unchanged).
/// `kubernetes: true` (a scalar) stays as it is: it is `--kubernetes=true`.
pub fn flatten_yaml(map: serde_yaml_ng::Mapping) -> Result<Vec<(serde_yaml_ng::Value, serde_yaml_ng::Value)>, String> {
    use serde_yaml_ng::Value;
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let block = match (&k, v) {
            (Value::String(s), Value::Mapping(m)) if s == "kubernetes" => m,
            (_, v) => {
                out.push((k, v));
                continue;
            }
        };
        for (sub, value) in block {
            let sub = sub.as_str().ok_or("keys of the kubernetes block must be strings")?.replace('-', "_");
            let flag = YAML_KEYS
                .iter()
                .find(|(key, _)| *key == sub)
                .map(|(_, flag)| *flag)
                .ok_or_else(|| format!("unknown key {sub:?} in the kubernetes block"))?;
            out.push((Value::String(flag.to_owned()), value));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(enable: Enable) -> KubernetesArgs {
        KubernetesArgs {
            enable,
            node_name: None,
            cluster_name: None,
            namespace: vec![],
            pod_label: vec![],
            owner_name: vec![],
        }
    }

    #[test]
    fn auto_follows_the_service_host_variable() {
        let host = || "box".to_owned();
        assert!(!args(Enable::Auto).resolve(false, host).unwrap().enabled);
        let s = args(Enable::Auto).resolve(true, host).unwrap();
        assert!(s.enabled && s.node_name == "box" && s.node_name_guessed);
        assert!(args(Enable::True).resolve(false, host).unwrap().enabled);
        assert!(!args(Enable::False).resolve(true, host).unwrap().enabled);
        let mut a = args(Enable::True);
        a.node_name = Some("worker-1".into());
        let s = a.resolve(false, host).unwrap();
        assert_eq!((s.node_name.as_str(), s.node_name_guessed), ("worker-1", false));
    }

    #[test]
    fn pod_selector_needs_metadata() {
        let mut a = args(Enable::False);
        a.namespace = vec!["shop".into()];
        assert!(matches!(a.resolve(false, String::new), Err(KubernetesError::SelectorWithoutMetadata)));
        a.enable = Enable::True;
        assert!(a.resolve(false, String::new).unwrap().pod_selector.is_some());
        a.pod_label = vec!["bad".into()];
        assert!(a.resolve(false, String::new).is_err());
    }

    #[test]
    fn yaml_block_is_flattened() {
        let doc: serde_yaml_ng::Mapping = serde_yaml_ng::from_str(
            "open_port: 80\nkubernetes:\n  enable: true\n  node-name: w1\n  namespaces: [a, b]\n",
        )
        .unwrap();
        let flat = flatten_yaml(doc).unwrap();
        let keys: Vec<&str> = flat.iter().map(|(k, _)| k.as_str().unwrap()).collect();
        assert_eq!(keys, ["open_port", "kubernetes", "kubernetes-node-name", "kubernetes-namespace"]);
        let doc: serde_yaml_ng::Mapping = serde_yaml_ng::from_str("kubernetes:\n  nod_name: w1\n").unwrap();
        assert!(flatten_yaml(doc).unwrap_err().contains("nod_name"));
        let doc: serde_yaml_ng::Mapping = serde_yaml_ng::from_str("kubernetes: false\n").unwrap();
        assert_eq!(flatten_yaml(doc).unwrap().len(), 1);
    }
}

#[cfg(test)]
mod settings_tests {
    use crate::config::Settings;

    #[test]
    fn flags_and_yaml_block_reach_the_settings() {
        let s = Settings::from_args([
            "periscope",
            "--kubernetes",
            "--kubernetes-node-name",
            "worker-1",
            "--kubernetes-namespace",
            "shop,team-*",
        ])
        .unwrap();
        assert!(s.kubernetes.enabled);
        assert_eq!(s.kubernetes.node_name, "worker-1");
        assert!(s.selector.pods.is_some() && !s.selector.is_empty(), "a pod selector alone is something to watch");

        let path = std::env::temp_dir().join(format!("periscope-k8s-{}.yaml", std::process::id()));
        std::fs::write(
            &path,
            "open_port: 8080\nkubernetes:\n  enable: true\n  node_name: worker-2\n  cluster_name: lab\n  pod_labels: [\"app=web*\"]\n",
        )
        .unwrap();
        let s = Settings::from_args(["periscope", "--config", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        let s = s.unwrap();
        assert!(s.kubernetes.enabled);
        assert_eq!((s.kubernetes.node_name.as_str(), s.kubernetes.cluster_name.as_deref()), ("worker-2", Some("lab")));
        assert!(s.selector.pods.is_some());

        let err = Settings::from_args(["periscope", "--kubernetes=false", "--kubernetes-namespace", "shop"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("need Kubernetes metadata"), "{err}");
    }
}
