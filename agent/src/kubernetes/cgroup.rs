//! Which container and pod a process runs in, from its `/proc/PID/cgroup`.
//!
//! The kubelet puts every pod in a cgroup named after the pod's UID and the
//! container runtime puts each container in a child cgroup named after the
//! container id. The shapes seen in the field:
//!
//! * cgroup v2, systemd driver (the default since Kubernetes 1.22 with
//!   kubeadm): `0::/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid with _ for ->.slice/cri-containerd-<id>.scope`;
//!   Guaranteed pods sit directly under `kubepods.slice/kubepods-pod<uid>.slice`;
//!   cri-o names the scope `crio-<id>.scope` (its monitor `crio-conmon-<id>`),
//!   cri-dockerd `docker-<id>.scope`.
//! * cgroupfs driver (v1 or v2): `/kubepods/burstable/pod<uid>/<id>`,
//!   `/kubepods/pod<uid>/<id>`, `/kubepods/besteffort/pod<uid>/<id>`.
//! * cgroup v1 lists one line per hierarchy (`12:memory:/kubepods/...`,
//!   `1:name=systemd:/kubepods.slice/...`); any of them names the container.
//! * Plain Docker, no Kubernetes: `0::/system.slice/docker-<id>.scope`,
//!   `12:pids:/docker/<id>` (cgroupfs driver). Podman, systemd manager:
//!   `0::/machine.slice/libpod-<id>.scope/container` (rootless: under
//!   `user@<uid>.service/user.slice/`); cgroupfs manager (hosts without
//!   systemd, cgroup v1 or v2): `/libpod_parent/libpod-<id>`. Its monitor,
//!   conmon, sits in `libpod-conmon-<id>.scope` or `/libpod_parent/conmon`:
//!   not the container. cri-o with cgroupfs: `/kubepods/.../pod<uid>/crio-<id>`.
//! * Seen from inside a cgroup namespace (an agent in a container without
//!   the host's cgroup namespace) the path is relative: `0::/../../kubepods-
//!   besteffort-pod<uid>.slice/cri-containerd-<id>.scope`. Nested setups
//!   (kind: `/system.slice/docker-<node>.scope/kubepods/...`) put another
//!   container id *before* the pod. So: the pod segment is the last one that
//!   names a pod, and the container is the first container-id segment after it
//!   (or the last one when no pod is named).
//!
//! Static pods: the cgroup carries the kubelet's own UID for the pod (a
//! 32-hex-digit config hash), which the API shows as the mirror pod's
//! `kubernetes.io/config.mirror` annotation, not as its `metadata.uid`.

/// Container id (64 hex digits, as the runtime and the pod status give it
/// after `containerd://`) and pod UID of a process. At least one is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    pub container_id: Option<String>,
    /// Dashed UUID (`7e4f3b1a-2c6d-...`), or a static pod's config hash.
    pub pod_uid: Option<String>,
}

/// A container id: exactly 64 lowercase hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Runtime prefixes of container cgroups: systemd scope names
/// (`<prefix><id>.scope`) and, with the cgroupfs manager, plain directory
/// names (podman's `/libpod_parent/libpod-<id>`, cri-o's `crio-<id>`).
const SCOPE_PREFIXES: &[&str] = &["cri-containerd-", "crio-", "docker-", "libpod-", "cri-dockerd-"];

/// The per-container monitor processes of cri-o and podman (conmon): their
/// cgroups carry the container id but are not the container.
const MONITOR_PREFIXES: &[&str] = &["crio-conmon-", "libpod-conmon-"];

/// The container id a cgroup path segment names, if any.
fn container_segment(seg: &str) -> Option<&str> {
    if is_container_id(seg) {
        return Some(seg);
    }
    let name = seg.strip_suffix(".scope").unwrap_or(seg);
    if MONITOR_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return None;
    }
    SCOPE_PREFIXES.iter().find_map(|p| name.strip_prefix(p)).filter(|id| is_container_id(id))
}

/// The pod UID a cgroup path segment names, if any: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_segment(seg: &str) -> Option<String> {
    let raw = if let Some(slice) = seg.strip_suffix(".slice") {
        let rest = slice.strip_prefix("kubepods-")?;
        let rest = rest.strip_prefix("burstable-").or_else(|| rest.strip_prefix("besteffort-")).unwrap_or(rest);
        rest.strip_prefix("pod")?
    } else {
        seg.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    let is_uuid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    // Static pods: the kubelet's config hash (32 hex digits).
    let is_hash = uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit());
    (is_uuid || is_hash).then(|| uid.to_ascii_lowercase())
}

/// The container and pod named by one cgroup path.
fn parse_path(path: &str) -> Option<ContainerRef> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let pod_at = segs.iter().rposition(|s| pod_segment(s).is_some());
    let container_id = match pod_at {
        Some(i) => segs[i + 1..].iter().find_map(|s| container_segment(s)),
        None => segs.iter().rev().find_map(|s| container_segment(s)),
    };
    let pod_uid = pod_at.and_then(|i| pod_segment(segs[i]));
    (container_id.is_some() || pod_uid.is_some())
        .then(|| ContainerRef { container_id: container_id.map(str::to_owned), pod_uid })
}

/// Parses the text of `/proc/PID/cgroup`. Lines are `id:controllers:path`;
/// the first line naming a container wins, else the first naming a pod.
/// `None` for a process outside any container (or unreadable text).
pub fn parse_cgroup(text: &str) -> Option<ContainerRef> {
    let mut pod_only = None;
    for line in text.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        match parse_path(path) {
            Some(r) if r.container_id.is_some() => return Some(r),
            Some(r) if pod_only.is_none() => pod_only = Some(r),
            _ => {}
        }
    }
    pod_only
}

/// Strips the runtime scheme of a pod status `containerID`
/// (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`).
pub fn strip_runtime_scheme(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1d7e6b5a4f8c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b";
    const UID: &str = "7e4f3b1a-2c6d-4e8f-9a0b-1c2d3e4f5a6b";

    fn both() -> Option<ContainerRef> {
        Some(ContainerRef { container_id: Some(ID.into()), pod_uid: Some(UID.into()) })
    }

    #[test]
    fn cgroup_v2_systemd_slices() {
        let uid_ = UID.replace('-', "_");
        for qos in [
            "kubepods-burstable.slice/kubepods-burstable-",
            "kubepods-besteffort.slice/kubepods-besteffort-",
            "kubepods-",
        ] {
            for scope in ["cri-containerd-", "crio-", "docker-"] {
                let text = format!("0::/kubepods.slice/{qos}pod{uid_}.slice/{scope}{ID}.scope\n");
                assert_eq!(parse_cgroup(&text), both(), "{text}");
            }
        }
    }

    #[test]
    fn cgroupfs_driver_paths() {
        for p in [
            format!("/kubepods/burstable/pod{UID}/{ID}"),
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
            format!("/kubepods/pod{UID}/{ID}"),
        ] {
            assert_eq!(parse_cgroup(&format!("0::{p}\n")), both(), "{p}");
        }
    }

    #[test]
    fn cgroup_v1_many_lines() {
        // A real v1 file: the unified line is empty, named hierarchies first.
        let text = format!(
            "12:hugetlb:/kubepods/burstable/pod{UID}/{ID}\n\
             11:memory:/kubepods/burstable/pod{UID}/{ID}\n\
             10:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n\
             0::/\n"
        );
        assert_eq!(parse_cgroup(&text), both());
        // The pod cgroup alone (the pause process of some runtimes, or a
        // controller the runtime does not set up per container).
        let text = format!("5:pids:/kubepods/burstable/pod{UID}\n0::/\n");
        assert_eq!(parse_cgroup(&text), Some(ContainerRef { container_id: None, pod_uid: Some(UID.into()) }));
    }

    #[test]
    fn relative_paths_in_a_cgroup_namespace_and_nesting() {
        let uid_ = UID.replace('-', "_");
        let text = format!("0::/../../kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(parse_cgroup(&text), both());
        // kind: the node is itself a docker container; the pod's container wins.
        let node = "a".repeat(64);
        let text = format!("0::/system.slice/docker-{node}.scope/kubepods/burstable/pod{UID}/{ID}\n");
        assert_eq!(parse_cgroup(&text), both());
        // A process in a child cgroup of its container.
        let text = format!("0::/kubepods/pod{UID}/{ID}/init.scope\n");
        assert_eq!(parse_cgroup(&text), both());
    }

    #[test]
    fn plain_containers_without_pods() {
        for text in [
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!("12:pids:/docker/{ID}\n0::/\n"),
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
        ] {
            assert_eq!(
                parse_cgroup(&text),
                Some(ContainerRef { container_id: Some(ID.into()), pod_uid: None }),
                "{text}"
            );
        }
    }

    /// Shapes of podman (systemd and cgroupfs managers, rootful and
    /// rootless, pods), Docker and containerd outside Kubernetes, cgroup v1
    /// and v2: every container process gets its container's id.
    #[test]
    fn engine_shapes_without_kubernetes() {
        let id_only = Some(ContainerRef { container_id: Some(ID.into()), pod_uid: None });
        for text in [
            // podman, systemd cgroup manager, cgroup v2 (rootful, rootless, in a pod).
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
            format!("0::/machine.slice/libpod-{ID}.scope\n"),
            format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"),
            format!("0::/machine.slice/machine-libpod_pod_{}.slice/libpod-{ID}.scope/container\n", "b".repeat(64)),
            // podman, cgroupfs manager (no systemd), cgroup v2 and v1.
            format!("0::/libpod_parent/libpod-{ID}\n"),
            format!("11:memory:/libpod_parent/libpod-{ID}\n4:pids:/libpod_parent/libpod-{ID}\n0::/\n"),
            // Seen from inside a private cgroup namespace.
            format!("0::/../../libpod_parent/libpod-{ID}\n"),
            // Docker: systemd driver v2, cgroupfs v2, cgroup v1.
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!("0::/docker/{ID}\n"),
            format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"),
            // containerd without Kubernetes (nerdctl's default namespace), cgroupfs.
            format!("0::/default/{ID}\n"),
        ] {
            assert_eq!(parse_cgroup(&text), id_only, "{text}");
        }
    }

    #[test]
    fn conmon_monitors_are_not_containers() {
        for text in [
            format!("0::/machine.slice/libpod-conmon-{ID}.scope\n"),
            "0::/libpod_parent/conmon\n".to_owned(),
            format!("11:memory:/libpod_parent/libpod-conmon-{ID}\n0::/\n"),
        ] {
            assert_eq!(parse_cgroup(&text), None, "{text}");
        }
    }

    #[test]
    fn cri_o_with_the_cgroupfs_driver() {
        let text = format!("0::/kubepods/burstable/pod{UID}/crio-{ID}\n");
        assert_eq!(parse_cgroup(&text), both());
        let text = format!("0::/kubepods/burstable/pod{UID}/crio-conmon-{ID}\n");
        assert_eq!(parse_cgroup(&text), Some(ContainerRef { container_id: None, pod_uid: Some(UID.into()) }));
    }

    #[test]
    fn static_pod_hash_and_conmon() {
        let hash = "5d2c0b8e6a1f4c3b9e7d8a6f5c4b3a21";
        let text = format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(parse_cgroup(&text).unwrap().pod_uid.as_deref(), Some(hash));
        let uid_ = UID.replace('-', "_");
        let text = format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope\n");
        assert_eq!(parse_cgroup(&text), Some(ContainerRef { container_id: None, pod_uid: Some(UID.into()) }));
    }

    #[test]
    fn not_containers() {
        for text in [
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/system.slice/sshd.service\n",
            "0::/\n",
            "",
            "garbage",
            "0::/kubepods.slice/kubepods-burstable.slice\n",
            // Too short / not hex / wrong uid shape.
            "0::/system.slice/docker-abc.scope\n",
            "0::/kubepods/burstable/podnot-a-uid/xyz\n",
            "0::/podcast/thing\n",
        ] {
            assert_eq!(parse_cgroup(text), None, "{text:?}");
        }
    }

    #[test]
    fn runtime_scheme() {
        assert_eq!(strip_runtime_scheme(&format!("containerd://{ID}")), ID);
        assert_eq!(strip_runtime_scheme(&format!("cri-o://{ID}")), ID);
        assert_eq!(strip_runtime_scheme(ID), ID);
    }
}
