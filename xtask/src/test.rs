//! The whole suite: the kernel C's formatting, unit tests, then the kernel
//! integration tests one at a time (they load eBPF programs and start real
//! servers).
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context};

use crate::{
    cmd::{self, cmd},
    deps,
};

/// The formatter `ebpf/.clang-format` is written for (`cargo xtask deps` installs it).
const CLANG_FORMAT: &str = "clang-format-19";

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
    let filter: Vec<String> = o.filter.into_iter().collect();
    if filter.is_empty() {
        // The gates first: formatting (Rust and kernel C) and clippy, warnings as errors.
        check_c_format()?;
        eprintln!("xtask: cargo fmt --all --check");
        cmd::run(&mut cmd("cargo", ["fmt", "--all", "--check"]))
            .context("the Rust is not formatted as rustfmt.toml says; run: cargo fmt --all")?;
        eprintln!("xtask: cargo clippy --workspace --all-targets -- -D warnings");
        cmd::run(&mut cmd(
            "cargo",
            [
                "clippy",
                "-q",
                "--workspace",
                "--all-targets",
                "--features",
                "periscope/root-tests",
                "--",
                "-D",
                "warnings",
            ],
        ))?;
    }
    cmd::run(cmd("cargo", ["test", "--workspace", "--lib", "--bins", "--"]).args(&filter))?;
    if filter.is_empty() {
        // deploy/ linted and validated; its agent-side test runs with the integration tests.
        crate::deploy_check::check(false)?;
    }
    // The root-only tests are behind the `root-tests` feature (a plain `cargo test` skips them).
    cmd::run(
        cmd("cargo", ["test", "-p", "periscope", "--features", "root-tests", "--test", "*", "--", "--test-threads=1"])
            .args(&filter),
    )?;
    if filter.is_empty() {
        // The demo, non-interactive (~40 s): fails unless periscope saw
        // every Mythical service.
        cmd::run(&mut cmd("cargo", ["xtask", "demo", "--duration", "20s"]))?;
        // A short run of every fuzz target (the long runs: cargo xtask fuzz --runs N).
        cmd::run(&mut cmd("cargo", ["xtask", "fuzz"]))?;
    }
    Ok(())
}

/// The kernel sources under `ebpf/src` and the shared `events.h`, never the
/// generated `vmlinux.h`: formatted as `ebpf/.clang-format` says.
fn check_c_format() -> anyhow::Result<()> {
    let ebpf = deps::workspace_root().join("ebpf");
    let mut files: Vec<PathBuf> = std::fs::read_dir(ebpf.join("src"))
        .context("ebpf/src")?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|x| x == "c" || x == "h"));
    files.sort();
    files.push(ebpf.join("include/events.h"));
    eprintln!("xtask: {CLANG_FORMAT} --dry-run --Werror on ebpf/src and ebpf/include/events.h");
    let status = Command::new(CLANG_FORMAT)
        .args(["--dry-run", "--Werror", "--style=file"])
        .args(&files)
        .status()
        .with_context(|| format!("running {CLANG_FORMAT} (cargo xtask deps installs it)"))?;
    if !status.success() {
        bail!(
            "the kernel C is not formatted as ebpf/.clang-format says (above); run: \
             {CLANG_FORMAT} -i ebpf/src/*.[ch] ebpf/include/events.h"
        );
    }
    Ok(())
}
