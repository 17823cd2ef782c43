//! Running programs with argument vectors, never shell command lines: an
//! argument with a space, a quote or a `$` reaches the program as it is.
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// `program` with `args`, ready for [`run`], [`run_quiet`] or [`read`].
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// How a command reads in an error message: program and arguments.
fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `c` with the terminal's stdio; fails naming the command and its exit status.
pub fn run(c: &mut Command) -> anyhow::Result<()> {
    let status = c.status().with_context(|| format!("running {}", describe(c)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", describe(c));
    }
    Ok(())
}

/// [`run`] with stdout discarded (stderr still shows what went wrong).
pub fn run_quiet(c: &mut Command) -> anyhow::Result<()> {
    run(c.stdout(Stdio::null()))
}

/// Whether `c` ran and exited 0, all output discarded.
pub fn succeeds(c: &mut Command) -> bool {
    c.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// stdout of `c`, trimmed ("" when it cannot run).
pub fn read(c: &mut Command) -> String {
    c.stderr(Stdio::null()).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}

/// stdout and stderr of `c` together, trimmed (for tools that print their
/// version on stderr, like `nginx -v`).
pub fn read_all(c: &mut Command) -> String {
    c.output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.trim().to_owned()
        })
        .unwrap_or_default()
}

/// The CPU model from /proc/cpuinfo ("" when unknown).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Total memory from /proc/meminfo, in GiB with one decimal ("" when unknown).
pub fn memory_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let kib: f64 = s.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1}Gi", kib / (1024.0 * 1024.0)))
        })
        .unwrap_or_default()
}

/// The current UTC time as RFC 3339, from `date` (std has no calendar).
pub fn utc_now() -> String {
    read(&mut cmd("date", ["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
}

/// The host name, from the kernel.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Online CPUs, as `nproc` counts them.
pub fn cores() -> String {
    std::thread::available_parallelism().map(|n| n.to_string()).unwrap_or_default()
}
