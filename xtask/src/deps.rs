//! Installs the build and test dependencies with apt-get (Debian), once;
//! plus the tests' client libraries (npm into the SQL and AMQP fixtures
//! directories, psycopg for python3). Quick when everything is already there.
use std::process::Command;

use anyhow::bail;

use crate::cmd::{self, cmd};

#[derive(clap::Args)]
pub struct Options {}

/// Debian packages the build and the tests use.
pub(crate) const PACKAGES: &[&str] = &[
    "clang-19",
    "llvm-19",
    // `cargo xtask test` checks the kernel C against ebpf/.clang-format.
    "clang-format-19",
    "libbpf-dev",
    "bpftool",
    "nginx-light",
    "openssl",
    "curl",
    "python3",
    "nodejs",
    "npm",
    // SQL tests: servers started by the tests themselves (never the system's
    // own clusters/services), psql and the mariadb CLI, libpq for psycopg.
    "postgresql",
    "mariadb-server",
    "mariadb-client",
    "libpq5",
    // Cross-namespace link tests: namespaces, veths, bridges, NAT rules.
    "iproute2",
    "iptables",
    // The Go frontend of kernel_context (Go runtime hooks): built offline in
    // GOPATH mode against Debian's lib/pq.
    "golang-go",
    "golang-github-lib-pq-dev",
    // The demo and the comparison: the Mythical services' message broker,
    // and a font for the comparison's latency chart.
    "rabbitmq-server",
    "fonts-dejavu-core",
    // The container test (agent/tests/lab_containers.rs): rootful podman with
    // netavark + aardvark-dns (one network namespace per container, service
    // names in DNS), runc (crun refuses hybrid cgroup hierarchies), and
    // debootstrap for the Debian base image (no registry).
    "podman",
    "runc",
    "netavark",
    "aardvark-dns",
    "debootstrap",
];

/// Node projects (a directory with a committed package-lock.json, and the
/// modules whose absence means an install is due): the SQL tests' clients, and
/// the Mythical services of the demo and the comparison.
const NODE_PROJECTS: &[(&str, &[&str])] = &[
    ("agent/tests/fixtures/sql", &["pg", "mysql2"]),
    ("agent/tests/fixtures/amqp", &["amqplib"]),
    ("agent/tests/fixtures/grpc", &["@grpc/grpc-js"]),
    (
        "deploy/mythical",
        &["express", "pg", "amqplib", "@opentelemetry/sdk-node", "@opentelemetry/auto-instrumentations-node"],
    ),
];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// rustfmt and clippy for the gates of `cargo xtask test` (rustup adds them when missing).
fn ensure_rust_components() -> anyhow::Result<()> {
    let missing = |sub: &str| !cmd::succeeds(&mut cmd("cargo", [sub, "--version"]));
    if missing("fmt") || missing("clippy") {
        eprintln!("xtask: rustup component add rustfmt clippy");
        cmd::run(&mut cmd("rustup", ["component", "add", "rustfmt", "clippy"]))?;
    }
    Ok(())
}

/// Whether `program` is an executable file on PATH.
fn have(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

pub fn run(_: Options) -> anyhow::Result<()> {
    ensure()
}

pub fn ensure() -> anyhow::Result<()> {
    ensure_packages(PACKAGES)?;
    ensure_rust_components()?;
    ensure_node_modules()?;
    ensure_psycopg()?;
    ensure_podman_compose()?;
    crate::deploy_check::ensure_tools()?;
    if !std::path::Path::new("/sys/kernel/tracing/events").exists() {
        eprintln!("xtask: mounting tracefs");
        cmd::run(&mut cmd("mount", ["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))?;
    }
    Ok(())
}

/// Installs the Debian packages of `packages` that are missing.
pub fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    // node may come from the machine image rather than Debian's package.
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let provided = match *p {
                "nodejs" => have("node"),
                "npm" | "python3" => have(p),
                _ => false,
            };
            !installed(p) && !provided
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing with apt-get: {}", missing.join(" "));
        cmd::run(&mut cmd("apt-get", ["update", "-qq"]))?;
        cmd::run_quiet(
            cmd("apt-get", ["install", "-y", "-qq"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    Ok(())
}

pub(crate) fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// `npm install` (from the lock file) in each Node project with a module missing.
fn ensure_node_modules() -> anyhow::Result<()> {
    for (project, modules) in NODE_PROJECTS {
        let dir = workspace_root().join(project);
        let missing = modules.iter().any(|m| !dir.join("node_modules").join(m).join("package.json").exists());
        if missing {
            eprintln!("xtask: npm install in {}", dir.display());
            cmd::run(cmd("npm", ["install", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&dir))?;
        }
    }
    Ok(())
}

/// podman-compose for the container test, from PyPI: Debian 12's 1.0.3
/// ignores `pid:` (the agent would see only its own pid namespace) and puts
/// every service in one pod (one network namespace).
const PODMAN_COMPOSE: &str = "podman-compose==1.5.0";

fn ensure_podman_compose() -> anyhow::Result<()> {
    let version = cmd::read(&mut cmd("python3", ["-m", "podman_compose", "version"]));
    let wanted = PODMAN_COMPOSE.trim_start_matches("podman-compose==");
    if version.contains(&format!("podman-compose version {wanted}")) {
        return Ok(());
    }
    eprintln!("xtask: installing {PODMAN_COMPOSE} for python3");
    cmd::run(&mut cmd("python3", ["-m", "pip", "install", "--quiet", PODMAN_COMPOSE]))
}

/// psycopg 3, gunicorn (the pre-fork test of kernel_context), aiohttp,
/// asyncpg, FastAPI/uvicorn, httpx and uvloop (its asyncio tests), grpcio
/// and hypercorn (kernel_http2's gRPC and h2c servers) for the `python3` on PATH: pip,
/// or Debian's packages when pip refuses an externally managed system Python.
fn ensure_psycopg() -> anyhow::Result<()> {
    for (import, pip, deb) in [
        ("import psycopg; psycopg.pq.version()", "psycopg[binary]", "python3-psycopg"),
        ("import gunicorn", "gunicorn", "python3-gunicorn"),
        // kernel_context's asyncio frontend.
        ("import aiohttp", "aiohttp", "python3-aiohttp"),
        ("import asyncpg", "asyncpg", "python3-asyncpg"),
        ("import fastapi, uvicorn", "fastapi uvicorn", "python3-fastapi python3-uvicorn"),
        ("import httpx", "httpx", "python3-httpx"),
        ("import uvloop", "uvloop", "python3-uvloop"),
        ("import grpc", "grpcio", "python3-grpcio"),
        // kernel_http2's `Upgrade: h2c` server.
        ("import hypercorn", "hypercorn", "python3-hypercorn"),
    ] {
        let ok = || cmd::succeeds(&mut cmd("python3", ["-c", import]));
        if ok() {
            continue;
        }
        eprintln!("xtask: installing {pip} for python3");
        let pips = pip.split_whitespace();
        if cmd::run(cmd("python3", ["-m", "pip", "install", "--quiet"]).args(pips)).is_err() || !ok() {
            ensure_packages(&deb.split_whitespace().collect::<Vec<_>>())?;
        }
        if !ok() {
            bail!("python3 cannot `{import}` after installing {pip}");
        }
    }
    Ok(())
}
