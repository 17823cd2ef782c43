//! The whole suite: unit tests, then the kernel integration tests one at a
//! time (they load eBPF programs and start real servers).
use anyhow::bail;

use crate::deps::{self, sh};

#[derive(clap::Args)]
pub struct Options {
    /// Only run tests whose name contains this.
    filter: Option<String>,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    deps::ensure()?;
    let uid = std::process::Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("the kernel tests load eBPF programs: run as root");
    }
    let filter = o.filter.unwrap_or_default();
    sh(&format!("cargo test --workspace --lib --bins -- {filter}"))?;
    if filter.is_empty() {
        // deploy/ linted and validated; its agent-side test runs with the integration tests.
        crate::deploy_check::check(false)?;
    }
    sh(&format!("cargo test -p periscope --test '*' -- --test-threads=1 {filter}"))?;
    if filter.is_empty() {
        // The demo, non-interactive (~40 s): fails unless periscope saw
        // every Mythical service.
        sh("cargo xtask demo --duration 20s")?;
        // A short run of every fuzz target (the long runs: cargo xtask fuzz --runs N).
        sh("cargo xtask fuzz")?;
    }
    Ok(())
}
