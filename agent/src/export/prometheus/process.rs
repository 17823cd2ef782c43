//! The agent's own CPU, memory and file descriptors, under the names every
//! Prometheus client library uses (`process_*`), read from /proc/self.
use std::fmt::Write as _;

/// Families appended to /metrics, with their type.
pub const PROCESS_METRICS: &[(&str, &str)] = &[
    ("process_cpu_seconds_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_virtual_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_start_time_seconds", "gauge"),
];

/// The fields of /proc/self/stat used here (after the `(comm)` field).
#[derive(Debug, PartialEq)]
pub(crate) struct SelfStat {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub start_ticks: u64,
    pub vsize_bytes: u64,
    pub rss_pages: u64,
}

/// Parses /proc/self/stat: fields 14-15 (utime, stime), 22 (starttime),
/// 23 (vsize), 24 (rss), counted from 1, after the last `)`.
pub(crate) fn parse_self_stat(s: &str) -> Option<SelfStat> {
    let rest: Vec<&str> = s[s.rfind(')')? + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| rest.get(n - 3)?.parse::<u64>().ok();
    Some(SelfStat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// `btime 1732425600` of /proc/stat: boot time in seconds since the epoch.
pub(crate) fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// Appends the `process_*` families; a family whose source cannot be read is left out.
pub fn append(out: &mut String) {
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let stat = std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_self_stat);
    let boot = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(parse_boot_time);
    let fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
    let mut family = |name: &str, help: &str, value: Option<f64>| {
        let Some(v) = value else { return };
        let kind = PROCESS_METRICS.iter().find(|(n, _)| *n == name).map_or("gauge", |(_, k)| k);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    let per_tick = if ticks > 0 { 1.0 / ticks as f64 } else { 0.01 };
    family(
        "process_cpu_seconds_total",
        "User and system CPU time spent, in seconds.",
        stat.as_ref().map(|s| (s.utime_ticks + s.stime_ticks) as f64 * per_tick),
    );
    family(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        stat.as_ref().filter(|_| page > 0).map(|s| (s.rss_pages * page as u64) as f64),
    );
    family(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        stat.as_ref().map(|s| s.vsize_bytes as f64),
    );
    family("process_open_fds", "Open file descriptors.", fds);
    family(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds.",
        stat.as_ref().zip(boot).map(|(s, b)| b as f64 + s.start_ticks as f64 * per_tick),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_stat_fields() {
        // A real line (comm with a space and a parenthesis, as the kernel allows).
        let line = "4242 (tokio (rt) 2) S 1 4242 4242 0 -1 4194560 2915 0 0 0 153 47 0 0 20 0 4 0 \
                    98123 31563776 2890 18446744073709551615 1 1 0 0 0 0 0 4096 17663 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_self_stat(line),
            Some(SelfStat {
                utime_ticks: 153,
                stime_ticks: 47,
                start_ticks: 98123,
                vsize_bytes: 31563776,
                rss_pages: 2890
            })
        );
        assert_eq!(parse_self_stat("4242 (x) S 1"), None);
        assert_eq!(parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1732425600\nprocesses 9\n"), Some(1732425600));
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[test]
    fn this_process_is_described() {
        let mut out = String::new();
        append(&mut out);
        for (name, kind) in PROCESS_METRICS {
            assert!(out.contains(&format!("# TYPE {name} {kind}\n")), "{name} missing:\n{out}");
        }
        let value = |name: &str| -> f64 {
            let line = out.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
            line.split(' ').nth(1).unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6, "{out}");
        assert!(value("process_open_fds") >= 3.0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(start <= now + 1.0 && start > now - 86400.0, "start {start} now {now}");
    }
}
