//! Aggregation (medians, per-pair ratios) and the outputs: Markdown, JSON and
//! the stdout summary.
use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{json, Value};

use super::{util::median, Arm, Kind, Run, Scenario};

pub struct Meta {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: String,
    pub memory: String,
    pub versions: Vec<(String, String)>,
    pub pairs: usize,
    pub run_seconds: u64,
    pub rate: f64,
    pub quick: bool,
    pub measured_seconds: f64,
    pub total_seconds: f64,
    pub foreign_programs_at_start: usize,
}

/// Per-run derived agent costs.
struct Derived {
    ebpf_ns_per_run: f64,
    ebpf_runs_per_req: f64,
    ebpf_ns_per_req: f64,
    cpu_us_per_req: f64,
    cpu_pct: f64,
    rss_mb: f64,
}

fn derived(r: &Run) -> Option<Derived> {
    let c = r.costs.as_ref()?;
    let req = r.load.requests.max(1) as f64;
    Some(Derived {
        ebpf_ns_per_run: c.bpf_run_time_ns as f64 / c.bpf_run_cnt.max(1) as f64,
        ebpf_runs_per_req: c.bpf_run_cnt as f64 / req,
        ebpf_ns_per_req: c.bpf_run_time_ns as f64 / req,
        cpu_us_per_req: c.cpu_seconds * 1e6 / req,
        cpu_pct: c.cpu_seconds / c.seconds.max(1e-9) * 100.0,
        rss_mb: c.peak_rss_bytes as f64 / (1024.0 * 1024.0),
    })
}

fn runs(sc: &Scenario, arm: Arm) -> impl Iterator<Item = &Run> {
    sc.runs.iter().filter(move |r| r.arm == arm)
}

fn med(sc: &Scenario, arm: Arm, f: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
    median(runs(sc, arm).filter_map(f))
}

/// Per-pair ratios arm/A of `f`.
fn ratios(sc: &Scenario, arm: Arm, f: impl Fn(&Run) -> Option<f64>) -> Vec<f64> {
    ratios_to(sc, arm, Arm::Without, f)
}

/// Per-pair ratios arm/base of `f`.
fn ratios_to(sc: &Scenario, arm: Arm, base: Arm, f: impl Fn(&Run) -> Option<f64>) -> Vec<f64> {
    runs(sc, arm)
        .filter_map(|b| {
            let a = sc.runs.iter().find(|a| a.arm == base && a.pair == b.pair)?;
            let (x, y) = (f(b)?, f(a)?);
            (y > 0.0).then_some(x / y)
        })
        .collect()
}

/// Program name -> (run_time_ns, run_cnt), summed over the runs of `arm`.
fn programs(sc: &Scenario, arm: Arm) -> BTreeMap<String, (u64, u64)> {
    let mut per: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for c in runs(sc, arm).filter_map(|r| r.costs.as_ref()) {
        for (name, t, n) in &c.bpf_per_program {
            let e = per.entry(name.clone()).or_default();
            e.0 += t;
            e.1 += n;
        }
    }
    per
}

/// The runtime hooks' programs of a scenario: uprobes on the Go runtime,
/// net/http and crypto/tls; on libuv and node's timers (names as the kernel
/// truncates them, 15 characters).
fn hook_program(kind: Kind, name: &str) -> bool {
    match kind {
        Kind::Go => name.starts_with("handle_go_"),
        _ => name.starts_with("handle_uv_") || name.starts_with("handle_node_"),
    }
}

fn hooks_title(kind: Kind) -> &'static str {
    match kind {
        Kind::Go => "Go runtime hooks",
        _ => "Node.js runtime hooks (libuv's thread pool, JavaScript timers)",
    }
}

fn hooks_switch(kind: Kind) -> &'static str {
    match kind {
        Kind::Go => "--go-runtime false",
        _ => "--libuv-uprobes false",
    }
}

/// Per-request agent CPU and eBPF time of B_nohooks -> B.
fn hook_ratios(sc: &Scenario) -> (Vec<f64>, Vec<f64>) {
    let per_req = |f: fn(&Derived) -> f64| move |r: &Run| derived(r).map(|d| f(&d));
    (
        ratios_to(sc, Arm::With, Arm::WithoutHooks, per_req(|d| d.cpu_us_per_req)),
        ratios_to(sc, Arm::With, Arm::WithoutHooks, per_req(|d| d.ebpf_ns_per_req)),
    )
}

/// One program in one arm, over all its runs.
struct ProgramCost {
    runs_per_req: f64,
    /// None when it never ran.
    ns_per_run: Option<f64>,
}

/// One row of the hooks' program table.
struct ProgramRow {
    name: String,
    hooks: ProgramCost,
    no_hooks: ProgramCost,
}

/// Rows of the hooks' program table: every handle_go_* program, then the
/// five programs B spends most time in.
fn hook_program_rows(sc: &Scenario) -> Vec<ProgramRow> {
    let (b, off) = (programs(sc, Arm::With), programs(sc, Arm::WithoutHooks));
    let mut names: Vec<&String> = b.keys().filter(|n| hook_program(sc.kind, n)).collect();
    let mut top: Vec<(&String, u64)> =
        b.iter().filter(|(n, _)| !hook_program(sc.kind, n)).map(|(n, v)| (n, v.0)).collect();
    top.sort_by_key(|e| std::cmp::Reverse(e.1));
    names.extend(top.into_iter().take(5).map(|e| e.0));
    let cell = |per: &BTreeMap<String, (u64, u64)>, arm: Arm, name: &str| {
        let (t, n) = per.get(name).copied().unwrap_or((0, 0));
        let req = requests_sum(sc, arm).max(1) as f64;
        ProgramCost { runs_per_req: n as f64 / req, ns_per_run: (n > 0).then(|| t as f64 / n as f64) }
    };
    names
        .into_iter()
        .map(|n| ProgramRow {
            name: n.clone(),
            hooks: cell(&b, Arm::With, n),
            no_hooks: cell(&off, Arm::WithoutHooks, n),
        })
        .collect()
}

fn hooks_markdown(m: &mut String, sc: &Scenario) {
    let (cpu, ebpf) = hook_ratios(sc);
    let d = |arm: Arm, f: fn(&Derived) -> f64| med(sc, arm, |r| derived(r).map(|d| f(&d)));
    let _ = writeln!(
        m,
        "\n## {} ({}): B (hooks on, the default) vs B_nohooks (`{}`)\n",
        hooks_title(sc.kind),
        sc.key,
        hooks_switch(sc.kind)
    );
    let _ = writeln!(m, "| | B | B_nohooks | ratio B / B_nohooks |\n|---|---:|---:|---:|");
    let _ = writeln!(
        m,
        "| agent CPU µs / request | {} | {} | {} |",
        num(d(Arm::With, |d| d.cpu_us_per_req), 2),
        num(d(Arm::WithoutHooks, |d| d.cpu_us_per_req), 2),
        ratio_cell(&cpu)
    );
    let _ = writeln!(
        m,
        "| eBPF ns / request | {} | {} | {} |",
        num(d(Arm::With, |d| d.ebpf_ns_per_req), 0),
        num(d(Arm::WithoutHooks, |d| d.ebpf_ns_per_req), 0),
        ratio_cell(&ebpf)
    );
    let _ = writeln!(
        m,
        "| throughput req/s | {} | {} | {} |",
        num(med(sc, Arm::With, |r| Some(r.load.rate)), 0),
        num(med(sc, Arm::WithoutHooks, |r| Some(r.load.rate)), 0),
        ratio_cell(&ratios_to(sc, Arm::With, Arm::WithoutHooks, |r| Some(r.load.rate)))
    );
    if let Some(r) = median(cpu.iter().copied()) {
        let _ = writeln!(
            m,
            "\nThe hooks change the agent's CPU per request by **{:+.1}%** (target: at most +10%).",
            (r - 1.0) * 100.0
        );
    }
    let _ = writeln!(m, "\nPer program (all runs of each arm summed; the hooks' uprobes first, then the five programs B spent most in):\n");
    let _ = writeln!(m, "| program | B runs / request | B ns / run | B_nohooks runs / request | B_nohooks ns / run |");
    let _ = writeln!(m, "|---|---:|---:|---:|---:|");
    for r in hook_program_rows(sc) {
        let _ = writeln!(
            m,
            "| {} | {:.2} | {} | {:.2} | {} |",
            r.name,
            r.hooks.runs_per_req,
            num(r.hooks.ns_per_run, 0),
            r.no_hooks.runs_per_req,
            num(r.no_hooks.ns_per_run, 0)
        );
    }
}

fn hooks_json(sc: &Scenario) -> Value {
    let (cpu, ebpf) = hook_ratios(sc);
    let rows: Vec<Value> = hook_program_rows(sc)
        .into_iter()
        .map(|r| {
            json!({"name": r.name, "B_runs_per_request": r.hooks.runs_per_req, "B_ns_per_run": r.hooks.ns_per_run,
                   "B_nohooks_runs_per_request": r.no_hooks.runs_per_req, "B_nohooks_ns_per_run": r.no_hooks.ns_per_run})
        })
        .collect();
    json!({
        "agent_cpu_us_per_request_ratio_median": median(cpu.iter().copied()),
        "ratios_agent_cpu_us_per_request": cpu,
        "bpf_ns_per_request_ratio_median": median(ebpf.iter().copied()),
        "ratios_bpf_ns_per_request": ebpf,
        "programs": rows,
    })
}

fn ratio_cell(v: &[f64]) -> String {
    let Some(m) = median(v.iter().copied()) else { return "–".into() };
    if v.len() > 1 {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("**{m:.3}** ({lo:.2}–{hi:.2})")
    } else {
        format!("**{m:.3}**")
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) => format!("{x:.digits$}"),
        None => "–".into(),
    }
}

fn counter_sum(sc: &Scenario, arm: Arm, name: &str) -> f64 {
    runs(sc, arm).filter_map(|r| r.costs.as_ref()).map(|c| c.counter(name)).sum()
}

fn requests_sum(sc: &Scenario, arm: Arm) -> u64 {
    runs(sc, arm).map(|r| r.load.requests).sum()
}

fn unit(kind: Kind) -> &'static str {
    if kind == Kind::Pgbench {
        "tx/s"
    } else {
        "req/s"
    }
}

pub fn run_line(kind: Kind, r: &Run) -> String {
    let mut s =
        format!("{:>9.0} {}  p50 {:>7.0} µs  p99 {:>7.0} µs", r.load.rate, unit(kind), r.load.p50_us, r.load.p99_us);
    if r.load.errors > 0 {
        let _ = write!(s, "  errors {}", r.load.errors);
    }
    if let (Some(c), Some(d)) = (&r.costs, derived(r)) {
        let _ = write!(
            s,
            "  | eBPF {:.0} ns/req, agent {:.1} µs/req ({:.0}% core), RSS {:.0} MB, spans {:.0}/{} , lost {:.0}+{:.0}",
            d.ebpf_ns_per_req,
            d.cpu_us_per_req,
            d.cpu_pct,
            d.rss_mb,
            c.counter("periscope_spans_produced_total"),
            r.load.requests,
            c.counter("periscope_events_lost_ringbuf_total"),
            c.counter("periscope_events_lost_pending_map_total"),
        );
    }
    if let Some(n) = r.sink_requests {
        let _ = write!(s, ", OTLP sink {n} posts");
    }
    s
}

/// Automatic findings worth a human's attention.
fn findings(meta: &Meta, sc: &Scenario) -> Vec<String> {
    let mut out = sc.notes.clone();
    for &arm in sc.arms.iter().filter(|a| **a != Arm::Without) {
        let lost = counter_sum(sc, arm, "periscope_events_lost_ringbuf_total")
            + counter_sum(sc, arm, "periscope_events_lost_pending_map_total");
        if lost > 0.0 {
            out.push(format!("{} {}: {lost:.0} kernel events lost", sc.key, arm.key()));
        }
        let spans = counter_sum(sc, arm, "periscope_spans_produced_total");
        let req = requests_sum(sc, arm) as f64;
        if req > 0.0 && ((spans - req) / req).abs() > 0.02 {
            out.push(format!(
                "{} {}: spans produced ({spans:.0}) differ from requests completed ({req:.0}) by {:+.1}%",
                sc.key,
                arm.key(),
                (spans - req) / req * 100.0
            ));
        }
        for c in [
            "periscope_spans_dropped_total",
            "periscope_export_batches_dropped_total",
            "periscope_export_errors_total",
            "periscope_protocol_desync_total",
            "periscope_parse_errors_total",
        ] {
            let v = counter_sum(sc, arm, c);
            if v > 0.0 {
                out.push(format!("{} {}: {c} = {v:.0}", sc.key, arm.key()));
            }
        }
    }
    if sc.kind == Kind::FixedRate {
        for arm in [Arm::Without, Arm::With] {
            if let Some(r) = med(sc, arm, |r| Some(r.load.rate)) {
                if r < meta.rate * 0.97 {
                    out.push(format!(
                        "fixed-rate {}: achieved {r:.0} req/s of the {:.0} asked (the generator or the server fell behind)",
                        arm.key(),
                        meta.rate
                    ));
                }
            }
        }
    }
    let errors: u64 = sc.runs.iter().map(|r| r.load.errors).sum();
    if errors > 0 {
        out.push(format!("{}: {errors} load-generator errors (socket errors, non-2xx, failed transactions)", sc.key));
    }
    out
}

pub fn markdown(meta: &Meta, scs: &[Scenario]) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# periscope overhead benchmark{}\n", if meta.quick { " (quick smoke run)" } else { "" });
    let _ =
        writeln!(m, "Generated by `cargo xtask bench{}` on {}.\n", if meta.quick { " --quick" } else { "" }, meta.date);
    let _ = writeln!(m, "| machine | |\n|---|---|");
    let _ = writeln!(m, "| kernel | {} |", meta.kernel);
    let _ = writeln!(m, "| CPU | {} |", meta.cpu.trim());
    let _ = writeln!(m, "| cores | {} |", meta.cores);
    let _ = writeln!(m, "| memory | {} |", meta.memory);
    for (k, v) in &meta.versions {
        let _ = writeln!(m, "| {k} | {v} |");
    }
    let _ = writeln!(
        m,
        "\n{} interleaved pairs per scenario (A B, then B A, ...), {} s per run; medians over runs; **ratio = median of the per-pair ratios B/A** (min–max in parentheses). Measuring took {:.0} s ({:.0} s with the build and setup).\n",
        meta.pairs, meta.run_seconds, meta.measured_seconds, meta.total_seconds
    );

    let la: Vec<f64> = scs.iter().flat_map(|s| s.runs.iter().map(|r| r.loadavg)).collect();
    if !la.is_empty() {
        let lo = la.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = la.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            m,
            "The machine is shared (other work runs next to the bench): the 1-minute load average at the start of the runs went from {lo:.1} to {hi:.1} \
             (the bench's own load accounts for about 2). Per-run values are in results.json.\n"
        );
    }
    let _ = writeln!(m, "## Throughput and latency\n");
    let _ = writeln!(m, "| scenario | arm | throughput | ratio | p50 µs | ratio | p99 µs | ratio |");
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|");
    for sc in scs {
        for &arm in &sc.arms {
            let base = arm == Arm::Without;
            let cell = |f: fn(&Run) -> Option<f64>| if base { "".to_owned() } else { ratio_cell(&ratios(sc, arm, f)) };
            let _ = writeln!(
                m,
                "| {} | {} | {} {} | {} | {} | {} | {} | {} |",
                sc.title,
                arm.label(),
                num(med(sc, arm, |r| Some(r.load.rate)), 0),
                unit(sc.kind),
                cell(|r| Some(r.load.rate)),
                num(med(sc, arm, |r| Some(r.load.p50_us)), 0),
                cell(|r| Some(r.load.p50_us)),
                num(med(sc, arm, |r| Some(r.load.p99_us)), 0),
                cell(|r| Some(r.load.p99_us)),
            );
        }
    }

    let _ = writeln!(m, "\n## Agent cost (B runs; medians, sums where noted)\n");
    let _ = writeln!(
        m,
        "| scenario | arm | eBPF ns / program run | program runs / request | eBPF ns / request | agent CPU µs / request | agent CPU, % of one core | peak RSS MB | requests (sum) | spans produced (sum) | lost ringbuf (sum) | lost pending-map (sum) |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for sc in scs {
        for &arm in sc.arms.iter().filter(|a| **a != Arm::Without) {
            let d = |f: fn(&Derived) -> f64| med(sc, arm, |r| derived(r).map(|d| f(&d)));
            let rss = runs(sc, arm).filter_map(derived).map(|d| d.rss_mb).fold(0.0, f64::max);
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {:.1} (max) | {} | {:.0} | {:.0} | {:.0} |",
                sc.key,
                arm.key(),
                num(d(|d| d.ebpf_ns_per_run), 0),
                num(d(|d| d.ebpf_runs_per_req), 1),
                num(d(|d| d.ebpf_ns_per_req), 0),
                num(d(|d| d.cpu_us_per_req), 2),
                num(d(|d| d.cpu_pct), 0),
                rss,
                requests_sum(sc, arm),
                counter_sum(sc, arm, "periscope_spans_produced_total"),
                counter_sum(sc, arm, "periscope_events_lost_ringbuf_total"),
                counter_sum(sc, arm, "periscope_events_lost_pending_map_total"),
            );
        }
    }

    if let Some(sc) = scs.iter().find(|s| s.kind == Kind::FixedRate) {
        let _ = writeln!(m, "\n## Fixed rate ({:.0} req/s asked), latency from the scheduled send time\n", meta.rate);
        let _ = writeln!(m, "| arm | achieved req/s | p50 µs | p99 µs | p99.9 µs | max µs | service p50 µs | service p99 µs | errors (sum) |");
        let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &arm in &sc.arms {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                arm.label(),
                num(med(sc, arm, |r| Some(r.load.rate)), 0),
                num(med(sc, arm, |r| Some(r.load.p50_us)), 0),
                num(med(sc, arm, |r| Some(r.load.p99_us)), 0),
                num(med(sc, arm, |r| r.load.p999_us), 0),
                num(med(sc, arm, |r| r.load.max_us), 0),
                num(med(sc, arm, |r| r.load.service_p50_us), 0),
                num(med(sc, arm, |r| r.load.service_p99_us), 0),
                runs(sc, arm).map(|r| r.load.errors).sum::<u64>(),
            );
        }
        let p99 = ratios(sc, Arm::With, |r| Some(r.load.p99_us));
        let _ = writeln!(m, "\np99 ratio B/A (per pair): {}", ratio_cell(&p99));
    }

    if let Some(sc) = scs.iter().find(|s| s.arms.contains(&Arm::WithOtlp)) {
        let arm = Arm::WithOtlp;
        let _ = writeln!(m, "\n## OTLP arm ({}): spans exported to a discarding OTLP/HTTP endpoint\n", sc.key);
        let _ = writeln!(m, "| spans produced | spans exported | spans dropped (queue full) | export errors | batches dropped | sink POSTs | sink MB |");
        let _ = writeln!(m, "|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            m,
            "| {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} |",
            counter_sum(sc, arm, "periscope_spans_produced_total"),
            counter_sum(sc, arm, "periscope_spans_exported_total"),
            counter_sum(sc, arm, "periscope_spans_dropped_total"),
            counter_sum(sc, arm, "periscope_export_errors_total"),
            counter_sum(sc, arm, "periscope_export_batches_dropped_total"),
            runs(sc, arm).filter_map(|r| r.sink_requests).sum::<u64>(),
            runs(sc, arm).filter_map(|r| r.sink_bytes).sum::<u64>() as f64 / 1e6,
        );
    }

    for sc in scs.iter().filter(|s| s.arms.contains(&Arm::WithoutHooks)) {
        hooks_markdown(&mut m, sc);
    }

    let _ = writeln!(m, "\n## Where the eBPF time goes (B runs, all scenarios' runs summed per scenario)\n");
    let _ = writeln!(m, "| scenario | program (name as the kernel truncates it) | runs | ns / run | share |");
    let _ = writeln!(m, "|---|---|---:|---:|---:|");
    for sc in scs {
        let per = programs(sc, Arm::With);
        let total: u64 = per.values().map(|v| v.0).sum();
        let mut v: Vec<_> = per.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1 .0));
        for (name, (t, n)) in v.iter().take(5) {
            let _ = writeln!(
                m,
                "| {} | {name} | {n} | {:.0} | {:.0}% |",
                sc.key,
                *t as f64 / (*n).max(1) as f64,
                *t as f64 / total.max(1) as f64 * 100.0
            );
        }
    }

    let _ = writeln!(m, "\n## Findings\n");
    let mut any = false;
    if meta.foreign_programs_at_start > 0 {
        any = true;
        let _ = writeln!(
            m,
            "* {} handle_* BPF programs of another periscope were loaded at the start.",
            meta.foreign_programs_at_start
        );
    }
    for sc in scs {
        for f in findings(meta, sc) {
            any = true;
            let _ = writeln!(m, "* {f}");
        }
    }
    if !any {
        let _ = writeln!(m, "* nothing unusual: no lost events, spans = requests within 2%, no load errors.");
    }

    let _ = writeln!(m, "\n## Method\n");
    let _ = writeln!(
        m,
        "* A = the scenario without periscope; B = `target/release/periscope --trace-printer off --prometheus-port P` (no OTLP endpoint: spans feed only the RED metrics) \
         selecting the server with `--open-port` (a, b, d, e) or the pgbench client with `--pid` of a `sh -c 'read go; exec pgbench ...'` \
         (plus `--exe-path '*/pgbench'`; c). Load starts only once `/targets` lists the pids; the agent is stopped with SIGTERM after each B run \
         and the bench waits until the process is gone and none of its BPF program ids is loaded any more.\n\
         * eBPF time: `kernel.bpf_stats_enabled=1` for the whole bench (restored after), deltas of `run_time_ns`/`run_cnt` from `bpftool prog show -j`, \
         only for the program ids the agent holds (from /proc/PID/fdinfo). The tracepoints fire for every process's syscalls (the tracked-pid filter runs inside \
         the program), so this is the whole kernel-side cost, including the load generator's syscalls. bpf_stats itself adds two clock reads per program run, to B only.\n\
         Runs that lost events show less eBPF time per request: a failed ring-buffer reservation skips the copy, so their cost is understated, \
         and the agent then also has less to parse.\n\
         * Agent CPU: utime+stime deltas from /proc/PID/stat over the load (plus 0.5 s of drain); RSS: VmHWM at the end of the run (includes startup).\n\
         * Spans: `periscope_spans_produced_total` delta; requests: as the load generator counts them (wrk: completed responses; pgbench: transactions, one SELECT each).\n\
         * (d) uses the bench's own open-loop generator (wrk2 is not packaged in Debian): {} keep-alive connections, one thread each, requests due on a fixed \
         schedule; latency is measured from the due time, so falling behind shows up as latency (as wrk2 corrects coordinated omission); service time is from the actual send.\n\
         * Nothing is pinned: on 2 cores the agent has to run somewhere, and pinning server and load generator to one core each would make it steal from one of them arbitrarily.\n\
         * The OTLP arm sends traces over OTLP/HTTP protobuf to a discarding endpoint inside the bench process (which itself costs some CPU on the same 2 cores).\n\
         * (e) serves GET /items/1 with Go's net/http (`xtask/src/bench/go_server.go`, built with Debian's golang-go in GOPATH mode, GOMAXPROCS unset). \
         B has the Go runtime hooks (the default; its load starts only once /metrics counts the process as instrumented); B_nohooks is B with \
         `--go-runtime false` (per-thread context, the Go programs loaded but attached nowhere). The hooks' ratios are per pair, B over the B_nohooks of the same pair.",
        super::CONNS
    );
    m
}

fn run_json(r: &Run) -> Value {
    let d = derived(r);
    json!({
        "pair": r.pair + 1,
        "arm": r.arm.key(),
        "requests": r.load.requests,
        "rate": r.load.rate,
        "p50_us": r.load.p50_us,
        "p99_us": r.load.p99_us,
        "p999_us": r.load.p999_us,
        "max_us": r.load.max_us,
        "service_p50_us": r.load.service_p50_us,
        "service_p99_us": r.load.service_p99_us,
        "errors": r.load.errors,
        "loadavg_1m_at_start": r.loadavg,
        "agent": r.costs.as_ref().map(|c| json!({
            "seconds": c.seconds,
            "bpf_run_time_ns": c.bpf_run_time_ns,
            "bpf_run_cnt": c.bpf_run_cnt,
            "bpf_ns_per_run": d.as_ref().map(|d| d.ebpf_ns_per_run),
            "bpf_ns_per_request": d.as_ref().map(|d| d.ebpf_ns_per_req),
            "bpf_programs": c.bpf_per_program.iter().map(|(n, t, k)| json!({"name": n, "run_time_ns": t, "run_cnt": k})).collect::<Vec<_>>(),
            "cpu_seconds": c.cpu_seconds,
            "cpu_us_per_request": d.as_ref().map(|d| d.cpu_us_per_req),
            "cpu_percent_of_core": d.as_ref().map(|d| d.cpu_pct),
            "peak_rss_bytes": c.peak_rss_bytes,
            "counters": c.counters,
            "startup_s": r.agent_startup_s,
            "tracked_after_s": r.agent_tracked_after_s,
            "stop_s": r.agent_stop_s,
            "otlp_sink_posts": r.sink_requests,
            "otlp_sink_bytes": r.sink_bytes,
        })),
    })
}

pub fn json(meta: &Meta, scs: &[Scenario]) -> Value {
    let scenarios: Vec<Value> = scs
        .iter()
        .map(|sc| {
            let arms: serde_json::Map<String, Value> = sc
                .arms
                .iter()
                .map(|&arm| {
                    let mut v = json!({
                        "rate_median": med(sc, arm, |r| Some(r.load.rate)),
                        "p50_us_median": med(sc, arm, |r| Some(r.load.p50_us)),
                        "p99_us_median": med(sc, arm, |r| Some(r.load.p99_us)),
                        "requests_sum": requests_sum(sc, arm),
                        "errors_sum": runs(sc, arm).map(|r| r.load.errors).sum::<u64>(),
                    });
                    if arm != Arm::Without {
                        let d = |f: fn(&Derived) -> f64| med(sc, arm, |r| derived(r).map(|d| f(&d)));
                        v["ratio_rate_median"] = json!(median(ratios(sc, arm, |r| Some(r.load.rate))));
                        v["ratio_p50_median"] = json!(median(ratios(sc, arm, |r| Some(r.load.p50_us))));
                        v["ratio_p99_median"] = json!(median(ratios(sc, arm, |r| Some(r.load.p99_us))));
                        v["ratios_rate"] = json!(ratios(sc, arm, |r| Some(r.load.rate)));
                        v["ratios_p99"] = json!(ratios(sc, arm, |r| Some(r.load.p99_us)));
                        v["bpf_ns_per_run_median"] = json!(d(|d| d.ebpf_ns_per_run));
                        v["bpf_ns_per_request_median"] = json!(d(|d| d.ebpf_ns_per_req));
                        v["agent_cpu_us_per_request_median"] = json!(d(|d| d.cpu_us_per_req));
                        v["agent_cpu_percent_of_core_median"] = json!(d(|d| d.cpu_pct));
                        v["peak_rss_mb_max"] =
                            json!(runs(sc, arm).filter_map(derived).map(|d| d.rss_mb).fold(0.0, f64::max));
                        for c in super::agent::COUNTERS {
                            v[format!("{c}_sum")] = json!(counter_sum(sc, arm, c));
                        }
                    }
                    (arm.key().to_owned(), v)
                })
                .collect();
            let mut v = json!({
                "key": sc.key,
                "title": sc.title,
                "unit": unit(sc.kind),
                "arms": arms,
                "findings": findings(meta, sc),
                "runs": sc.runs.iter().map(run_json).collect::<Vec<_>>(),
            });
            if sc.arms.contains(&Arm::WithoutHooks) {
                v["runtime_hooks"] = hooks_json(sc);
            }
            v
        })
        .collect();
    json!({
        "date": meta.date,
        "machine": {"kernel": meta.kernel, "cpu": meta.cpu.trim(), "cores": meta.cores, "memory": meta.memory},
        "versions": meta.versions.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "settings": {"pairs": meta.pairs, "run_seconds": meta.run_seconds, "fixed_rate": meta.rate, "quick": meta.quick,
                     "wrk_connections": super::CONNS, "pgbench_clients": super::PG_CLIENTS},
        "measured_seconds": meta.measured_seconds,
        "total_seconds": meta.total_seconds,
        "foreign_programs_at_start": meta.foreign_programs_at_start,
        "scenarios": scenarios,
    })
}

pub fn summary(meta: &Meta, scs: &[Scenario]) -> String {
    let mut s = format!(
        "\nperiscope overhead ({} pairs x {} s, {} cores, kernel {}; measured in {:.0} s, {:.0} s in all)\n",
        meta.pairs, meta.run_seconds, meta.cores, meta.kernel, meta.measured_seconds, meta.total_seconds
    );
    for sc in scs {
        for &arm in sc.arms.iter().filter(|a| **a != Arm::Without) {
            let d = |f: fn(&Derived) -> f64| med(sc, arm, |r| derived(r).map(|d| f(&d)));
            let _ = writeln!(
                s,
                "  {:<11} {:<9} throughput x{} p99 x{}  | eBPF {} ns/req, agent {} µs/req, RSS {:.0} MB, spans {:.0}/{} req, lost {:.0}",
                sc.key,
                arm.key(),
                num(median(ratios(sc, arm, |r| Some(r.load.rate))), 3),
                num(median(ratios(sc, arm, |r| Some(r.load.p99_us))), 2),
                num(d(|d| d.ebpf_ns_per_req), 0),
                num(d(|d| d.cpu_us_per_req), 2),
                runs(sc, arm).filter_map(derived).map(|d| d.rss_mb).fold(0.0, f64::max),
                counter_sum(sc, arm, "periscope_spans_produced_total"),
                requests_sum(sc, arm),
                counter_sum(sc, arm, "periscope_events_lost_ringbuf_total")
                    + counter_sum(sc, arm, "periscope_events_lost_pending_map_total"),
            );
        }
        if sc.arms.contains(&Arm::WithoutHooks) {
            let (cpu, ebpf) = hook_ratios(sc);
            let _ = writeln!(
                s,
                "  {:<11} hooks     agent µs/req x{} (target <= 1.10), eBPF ns/req x{} (B / B_nohooks)",
                sc.key,
                num(median(cpu.iter().copied()), 3),
                num(median(ebpf.iter().copied()), 3),
            );
        }
        for f in findings(meta, sc) {
            let _ = writeln!(s, "      ! {f}");
        }
    }
    s
}
