//! A real container engine for the container test: rootful podman, images
//! made without a registry (a Debian base by debootstrap from the archive apt
//! already uses, cached under /var/cache/periscope; images on it from
//! Dockerfiles in deploy/), and podman-compose runs of compose files.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Where the debootstrap tarballs are kept between runs (one per suite and architecture).
pub const CACHE_DIR: &str = "/var/cache/periscope";

/// podman-compose 1.0 (Debian 12's) ignores `pid:` and `uts:`; 1.1 and later pass `pid:` on.
pub const PODMAN_COMPOSE_MIN: (u32, u32) = (1, 1);

/// The highest RLIMIT_NPROC a container gets here: runc could not set the
/// host's own hard limit (96362 measured) on a container's process, while
/// podman's usual 32768 goes through.
const NPROC_MAX: u64 = 32768;

/// Rootful podman with an engine configuration of the test's own
/// (`CONTAINERS_CONF`), so that the host's containers.conf is left alone.
pub struct Podman {
    conf: PathBuf,
}

/// What `program args` printed, failing the test with both streams when it fails.
pub fn checked(c: &mut Command) -> String {
    let out = c.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn output(c: &mut Command) -> Option<Output> {
    c.stdin(Stdio::null()).output().ok()
}

/// The hard limit of `name` ("Max open files") from /proc/self/limits.
fn hard_limit(name: &str) -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let rest = limits.lines().find_map(|l| l.strip_prefix(name))?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

impl Podman {
    /// Checks that podman and podman-compose are there and writes the
    /// engine configuration into `dir`: runc (crun 1.8 refuses a hybrid
    /// cgroup v1 + v2 hierarchy: "cgroups in hybrid mode not supported") and
    /// rlimits no higher than the host's hard limits (podman's rootful
    /// default asks for RLIMIT_NOFILE 1048576, which a host without
    /// CAP_SYS_RESOURCE cannot grant: "error setting rlimit type 7").
    pub fn new(dir: &Path) -> Podman {
        for program in ["podman", "runc", "debootstrap"] {
            assert!(
                output(Command::new(program).arg("--version")).is_some_and(|o| o.status.success()),
                "{program} is missing: run `cargo xtask deps`"
            );
        }
        let version = output(Command::new("python3").args(["-m", "podman_compose", "version"]))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let compose = version.lines().find_map(|l| l.strip_prefix("podman-compose version ")).and_then(|v| {
            let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??))
        });
        assert!(
            compose.is_some_and(|v| v >= PODMAN_COMPOSE_MIN),
            "python3 -m podman_compose: need version {PODMAN_COMPOSE_MIN:?} or later, found {compose:?} \
             ({version}): run `cargo xtask deps`"
        );
        let nofile = hard_limit("Max open files").unwrap_or(1024).min(1 << 20);
        let nproc = hard_limit("Max processes").unwrap_or(NPROC_MAX).min(NPROC_MAX);
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
                 [engine]\nruntime = \"runc\"\n"
            ),
        )
        .unwrap();
        Podman { conf }
    }

    /// `podman args` with the test's engine configuration.
    pub fn cmd<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(&self, args: I) -> Command {
        let mut c = Command::new("podman");
        c.args(args).env("CONTAINERS_CONF", &self.conf);
        c
    }

    /// `python3 -m podman_compose -p project --in-pod false -f file... args`.
    pub fn compose(&self, project: &str, files: &[PathBuf], args: &[&str]) -> Command {
        let mut c = Command::new("python3");
        c.args(["-m", "podman_compose", "-p", project, "--in-pod", "false"]);
        for f in files {
            c.arg("-f").arg(f);
        }
        c.args(args).env("CONTAINERS_CONF", &self.conf);
        c
    }

    pub fn image_exists(&self, image: &str) -> bool {
        output(&mut self.cmd(["image", "exists", image])).is_some_and(|o| o.status.success())
    }

    /// The Debian base image of the host's own suite and architecture,
    /// `localhost/periscope-debian:<suite>-<arch>`: in podman's storage
    /// already, else imported from the cached tarball, else made by
    /// debootstrap (minbase) from the mirror apt uses, then cached.
    pub fn debian_base(&self) -> String {
        let (mirror, suite) = apt_archive();
        let arch = checked(Command::new("dpkg").arg("--print-architecture"));
        let image = format!("localhost/periscope-debian:{suite}-{arch}");
        if self.image_exists(&image) {
            eprintln!("base image {image}: in podman's storage");
            return image;
        }
        let tarball = Path::new(CACHE_DIR).join(format!("debian-{suite}-{arch}.tar"));
        if !tarball.exists() {
            let started = Instant::now();
            std::fs::create_dir_all(CACHE_DIR).unwrap();
            let rootfs = Path::new(CACHE_DIR).join(format!("rootfs-{suite}-{arch}.tmp"));
            let _ = std::fs::remove_dir_all(&rootfs);
            eprintln!("base image {image}: debootstrap --variant=minbase {suite} from {mirror}");
            checked(Command::new("debootstrap").args(["--variant=minbase", &suite]).arg(&rootfs).arg(&mirror));
            // Package files and lists: the images' own apt-get update fetches fresh ones.
            for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
                for entry in std::fs::read_dir(rootfs.join(dir)).into_iter().flatten().flatten() {
                    if entry.path().is_file() {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
            let partial = tarball.with_extension("tar.partial");
            checked(
                Command::new("tar").arg("--numeric-owner").arg("-C").arg(&rootfs).arg("-cf").arg(&partial).arg("."),
            );
            std::fs::rename(&partial, &tarball).unwrap();
            std::fs::remove_dir_all(&rootfs).unwrap();
            eprintln!("base image {image}: debootstrap took {:.0} s", started.elapsed().as_secs_f64());
        }
        eprintln!("base image {image}: podman import {}", tarball.display());
        checked(self.cmd(["import", "--change", "CMD [\"/bin/bash\"]"]).arg(&tarball).arg(&image));
        image
    }

    /// `podman build` of `dockerfile` in `context` with `--build-arg`s (layers
    /// cached by podman: a second build of unchanged inputs takes seconds).
    pub fn build(&self, tag: &str, dockerfile: &Path, context: &Path, build_args: &[(&str, &str)]) {
        let started = Instant::now();
        let mut c = self.cmd(["build", "-q", "-t", tag, "-f"]);
        c.arg(dockerfile);
        for (k, v) in build_args {
            c.arg("--build-arg").arg(format!("{k}={v}"));
        }
        c.arg(context);
        checked(&mut c);
        eprintln!("image {tag}: built in {:.0} s", started.elapsed().as_secs_f64());
    }

    /// The container's state (`running`, `exited`, ...), or "" when there is none.
    pub fn state(&self, container: &str) -> String {
        output(&mut self.cmd(["inspect", "--format", "{{.State.Status}}", container]))
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    /// The full id of a container.
    pub fn id(&self, container: &str) -> String {
        checked(&mut self.cmd(["inspect", "--format", "{{.Id}}", container]))
    }

    /// The last lines of a container's output, both streams.
    pub fn logs(&self, container: &str, lines: usize) -> String {
        output(&mut self.cmd(["logs", "--tail", &lines.to_string(), container]))
            .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_default()
    }

    /// Polls `f` every 500 ms for up to `timeout`; on timeout fails naming
    /// `what`, with the logs of `containers`.
    pub fn wait<T>(&self, what: &str, timeout: Duration, containers: &[&str], mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > timeout {
                let logs: Vec<String> =
                    containers.iter().map(|c| format!("--- {c} ({}):\n{}", self.state(c), self.logs(c, 40))).collect();
                panic!("timed out after {timeout:?} waiting for {what}\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The Debian archive apt uses, as (mirror URI, suite): the first `deb`
/// entry of /etc/apt/sources.list or /etc/apt/sources.list.d/* (one-line or
/// deb822 `.sources`) whose URI ends in `/debian` and whose suite has no
/// `-` (not `-updates`, not `-security`).
pub fn apt_archive() -> (String, String) {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    let mut more: Vec<PathBuf> =
        std::fs::read_dir("/etc/apt/sources.list.d").into_iter().flatten().flatten().map(|e| e.path()).collect();
    more.sort();
    files.extend(more);
    let mut entries: Vec<(String, String)> = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        if file.extension().is_some_and(|e| e == "sources") {
            entries.extend(deb822_entries(&text));
        } else {
            entries.extend(one_line_entries(&text));
        }
    }
    entries
        .into_iter()
        .find(|(uri, suite)| uri.trim_end_matches('/').ends_with("/debian") && !suite.contains('-'))
        .unwrap_or_else(|| panic!("no Debian archive (…/debian, a suite without '-') in /etc/apt/sources.list*"))
}

pub fn one_line_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.split('#').next()?.trim();
            let rest = l.strip_prefix("deb ")?.trim_start();
            // Options in brackets: `deb [signed-by=...] uri suite components`.
            let rest = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']')?.1.trim_start(),
                None => rest,
            };
            let mut words = rest.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

pub fn deb822_entries(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for paragraph in text.split("\n\n") {
        let field = |name: &str| {
            paragraph.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let (Some(types), Some(uris), Some(suites)) = (field("Types"), field("URIs"), field("Suites")) else {
            continue;
        };
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        for uri in uris.split_whitespace() {
            for suite in suites.split_whitespace() {
                out.push((uri.to_owned(), suite.to_owned()));
            }
        }
    }
    out
}
