//! Installs the build and test dependencies with apt-get (Debian), once.
use std::process::Command;

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct Options {}

/// Debian packages the build and the tests use.
const PACKAGES: &[&str] = &["clang-19", "llvm-19", "libbpf-dev", "bpftool", "nginx-light", "curl", "python3", "nodejs"];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn have(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().is_ok_and(|o| o.status.success())
}

pub fn run(_: Options) -> anyhow::Result<()> {
    ensure()
}

pub fn ensure() -> anyhow::Result<()> {
    ensure_packages(PACKAGES)?;
    if !std::path::Path::new("/sys/kernel/tracing/events").exists() {
        eprintln!("xtask: mounting tracefs");
        sh("mount -t tracefs nodev /sys/kernel/tracing")?;
    }
    Ok(())
}

/// Installs the Debian packages of `packages` that are missing.
pub fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    // node may come from the machine image rather than Debian's package.
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !installed(p) && !(*p == "nodejs" && have("node")) && !(*p == "python3" && have("python3")))
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing with apt-get: {}", missing.join(" "));
        sh("apt-get update -qq")?;
        sh(&format!("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {} >/dev/null", missing.join(" ")))?;
    }
    Ok(())
}

pub fn sh(script: &str) -> anyhow::Result<()> {
    let status = Command::new("sh").args(["-c", script]).status().with_context(|| format!("running {script}"))?;
    if !status.success() {
        bail!("`{script}` failed with {status}");
    }
    Ok(())
}
