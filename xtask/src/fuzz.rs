//! `cargo xtask fuzz`: builds the libFuzzer targets of `fuzz/` with
//! cargo-fuzz (installing it when missing) and runs each one for a number
//! of executions and/or seconds, then reports executions, crashes and
//! corpus size per target. Exits non-zero when any target crashed.
//!
//! cargo-fuzz needs nightly-only rustc flags (`-Zsanitizer`, sancov passes);
//! `RUSTC_BOOTSTRAP=1` enables them on the stable toolchain.
//!
//! Seeds live in `fuzz/corpus/<target>/` (committed, read only here); what
//! the fuzzer learns goes to `fuzz/target/corpus/<target>/` (not committed),
//! and crashing inputs to `fuzz/artifacts/<target>/`.
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};

pub const TARGETS: &[&str] = &[
    "http1_session",
    "http1_head",
    "http2_session",
    "hpack",
    "chunked",
    "postgres_session",
    "mysql_session",
    "amqp_session",
    "sql_text",
    "traceparent_and_routes",
    "ring_record",
];

#[derive(clap::Args)]
pub struct Options {
    /// Executions per target (default 20000 unless --seconds is given, in
    /// which case the time alone bounds the run).
    #[arg(long)]
    runs: Option<u64>,
    /// Time limit per target, in seconds.
    #[arg(long)]
    seconds: Option<u64>,
    /// Only these targets (repeat or comma-separate); default: all.
    #[arg(long = "target", value_delimiter = ',')]
    targets: Vec<String>,
    /// Targets fuzzed at the same time (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Build optimised (`cargo fuzz build -O`): slower to build, several
    /// times more executions per second; for long runs. The default is an
    /// unoptimised build, the quickest to compile (what CI wants).
    #[arg(long)]
    release: bool,
    /// libFuzzer sanitizer: none, address, ... (cargo fuzz --sanitizer).
    /// The parsers are safe Rust but for one bounds-checked unaligned read;
    /// overflow checks and debug assertions are always on.
    #[arg(long, default_value = "none")]
    sanitizer: String,
    /// Longest input libFuzzer generates (bytes).
    #[arg(long, default_value_t = 20_000)]
    max_len: usize,
    /// Append the results as rows of the table in fuzz/RESULTS.md.
    #[arg(long)]
    record: bool,
}

struct Outcome {
    target: String,
    executions: u64,
    seconds: f64,
    crashed: bool,
    artifact: Option<String>,
    corpus_files: usize,
    corpus_bytes: u64,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn host_triple() -> anyhow::Result<String> {
    let out = Command::new("rustc").arg("-vV").output().context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("no host triple in rustc -vV")
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        let t = Instant::now();
        eprintln!("xtask: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
        let status = Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]).status()?;
        if !status.success() {
            bail!("cargo install cargo-fuzz failed with {status}");
        }
        eprintln!("xtask: cargo-fuzz installed in {:.0}s", t.elapsed().as_secs_f64());
    }
    Ok(())
}

fn dir_size(dir: &Path) -> (usize, u64) {
    let Ok(rd) = std::fs::read_dir(dir) else { return (0, 0) };
    rd.flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

/// Runs one target's binary and reads libFuzzer's summary from its log.
fn fuzz_one(bin: &Path, fuzz_dir: &Path, target: &str, o: &Options) -> anyhow::Result<Outcome> {
    let work_corpus = fuzz_dir.join("target/corpus").join(target);
    let seeds = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let logs = fuzz_dir.join("target/logs");
    for d in [&work_corpus, &artifacts, &logs] {
        std::fs::create_dir_all(d)?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)?;
    let runs = match (o.runs, o.seconds) {
        (Some(r), _) => r as i64,
        (None, Some(_)) => -1,
        (None, None) => 20_000,
    };
    let mut cmd = Command::new(bin);
    cmd.arg(format!("-runs={runs}"))
        .arg(format!("-max_len={}", o.max_len))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    if let Some(s) = o.seconds {
        cmd.arg(format!("-max_total_time={s}"));
    }
    // New inputs go to the first directory; the seeds are only read.
    cmd.arg(&work_corpus).arg(&seeds);
    let t = Instant::now();
    let status =
        cmd.stdout(log.try_clone()?).stderr(log).status().with_context(|| format!("running {}", bin.display()))?;
    let seconds = t.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let executions = text
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| {
            // "Done 20000 runs in 3 second(s)"
            text.lines().find_map(|l| l.strip_prefix("Done ")).and_then(|l| l.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let artifact = text.lines().find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim().to_owned()));
    let crashed = !status.success() || artifact.is_some();
    if crashed {
        eprintln!("xtask: {target} FAILED ({status}); log: {}", log_path.display());
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for l in tail.into_iter().rev() {
            eprintln!("  | {l}");
        }
    } else {
        eprintln!("xtask: {target}: {executions} executions in {seconds:.0}s, no crash");
    }
    let (corpus_files, corpus_bytes) = dir_size(&work_corpus);
    Ok(Outcome { target: target.to_owned(), executions, seconds, crashed, artifact, corpus_files, corpus_bytes })
}

pub fn run(o: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let fuzz_dir = root().join("fuzz");
    let targets: Vec<String> = if o.targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        for t in &o.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("unknown fuzz target {t:?}; targets: {}", TARGETS.join(", "));
            }
        }
        o.targets.clone()
    };
    ensure_cargo_fuzz()?;

    // One cargo invocation builds every target.
    let build = Instant::now();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&fuzz_dir).env("RUSTC_BOOTSTRAP", "1").args(["fuzz", "build", "--debug-assertions"]);
    cmd.args(["--sanitizer", &o.sanitizer]);
    if !o.release {
        cmd.arg("--dev");
    }
    let status = cmd.status().context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed with {status}");
    }
    let build_secs = build.elapsed().as_secs_f64();
    eprintln!("xtask: fuzz targets built in {build_secs:.0}s");

    let bin_dir = fuzz_dir.join("target").join(host_triple()?).join(if o.release { "release" } else { "debug" });
    let jobs =
        o.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)).clamp(1, targets.len());
    let queue = Arc::new(Mutex::new(targets.iter().cloned().collect::<VecDeque<_>>()));
    let results = Arc::new(Mutex::new(Vec::new()));
    let o = Arc::new(o);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let (queue, results, o, bin_dir, fuzz_dir) = (&queue, &results, &o, &bin_dir, &fuzz_dir);
            s.spawn(move || loop {
                let Some(t) = queue.lock().unwrap().pop_front() else { break };
                let r = fuzz_one(&bin_dir.join(&t), fuzz_dir, &t, o);
                results.lock().unwrap().push((t, r));
            });
        }
    });
    let mut results = std::mem::take(&mut *results.lock().unwrap());
    results.sort_by_key(|(t, _)| targets.iter().position(|x| x == t));

    let mut outcomes = Vec::new();
    for (t, r) in results {
        outcomes.push(r.with_context(|| format!("fuzzing {t}"))?);
    }
    let total_secs = started.elapsed().as_secs_f64();
    let mode = format!(
        "{} build, sanitizer {}, {} job(s)",
        if o.release { "optimised" } else { "unoptimised" },
        o.sanitizer,
        jobs
    );
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|d| String::from_utf8_lossy(&d.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut rows = String::new();
    for r in &outcomes {
        rows.push_str(&format!(
            "| {date} | {} | {} | {:.0} | {} | {} files, {} KiB | {mode} |\n",
            r.target,
            r.executions,
            r.seconds,
            if r.crashed { 1 } else { 0 },
            r.corpus_files,
            r.corpus_bytes / 1024
        ));
    }
    println!("| date | target | executions | seconds | crashes | corpus | mode |");
    println!("|---|---|---|---|---|---|---|");
    print!("{rows}");
    let total: u64 = outcomes.iter().map(|r| r.executions).sum();
    println!("\n{total} executions over {} targets; build {build_secs:.0}s, total {total_secs:.0}s", outcomes.len());
    if o.record {
        let path = fuzz_dir.join("RESULTS.md");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(&rows);
        std::fs::write(&path, text)?;
    }
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|r| r.crashed).collect();
    if !crashed.is_empty() {
        for r in &crashed {
            eprintln!(
                "xtask: crash in {}: {} (reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -a {} <file>)",
                r.target,
                r.artifact.as_deref().unwrap_or("no artifact"),
                r.target
            );
        }
        bail!("{} of {} fuzz targets crashed", crashed.len(), outcomes.len());
    }
    Ok(())
}
