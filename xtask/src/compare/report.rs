//! `compare/report.md` and `compare/latency.png`.
use std::{collections::BTreeSet, fmt::Write, path::Path};

use anyhow::Context;
use plotters::prelude::*;

use super::{
    analysis::{percentile, Analysis, Parent, Row, PARENT_KINDS},
    spans::Side,
};

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

fn diff(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:+.2}", b - a),
        _ => "-".to_owned(),
    }
}

fn parent_label(p: Parent) -> &'static str {
    match p {
        Parent::Agree => "agree",
        Parent::AgreeViaSdkHeader => "agree via SDK header",
        Parent::Missing => "root where SDK has a parent",
        Parent::NoCounterpart => "parent without SDK counterpart",
        Parent::Wrong => "different parent",
        Parent::Unknown => "parent id unknown to both",
    }
}

/// A value cut for a table cell (no `|`, at most 40 characters).
fn short(v: &str) -> String {
    let v = v.replace('|', "/");
    if v.chars().count() > 40 {
        format!("{}…", v.chars().take(39).collect::<String>())
    } else {
        v
    }
}

/// Attribute names as a comma-separated list of code spans.
fn list(keys: &BTreeSet<String>) -> String {
    if keys.is_empty() {
        "-".to_owned()
    } else {
        keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
    }
}

/// Figures of the whole run, computed: coverage, durations, links.
pub fn summary(a: &Analysis) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "## Summary\n");
    let both: Vec<&Row> = a.rows.values().filter(|r| !r.sdk.is_empty() && !r.periscope.is_empty()).collect();
    let sdk_in_both: usize = both.iter().map(|r| r.sdk.len()).sum();
    // Pairs whose SDK span started in the window (a periscope span at the
    // window's edge may pair with an SDK span just outside it).
    let matched: usize = both.iter().map(|r| r.pairs.iter().filter(|(_, si)| r.sdk.contains(si)).count()).sum();
    let status: usize = both.iter().map(|r| r.status_agree).sum();
    let pairs: usize = both.iter().map(|r| r.pairs.len()).sum();
    let _ = writeln!(
        m,
        "* Rows both sides have: {} of {}. There, {matched} of {sdk_in_both} SDK spans have a periscope counterpart \
         ({:.1} %); status agrees on {status} of {pairs} pairs.",
        both.len(),
        a.rows.len(),
        100.0 * matched as f64 / sdk_in_both.max(1) as f64
    );
    let only = |sdk: bool| -> String {
        let v: Vec<String> = a
            .rows
            .iter()
            .filter(|(_, r)| if sdk { r.periscope.is_empty() } else { r.sdk.is_empty() })
            .map(|(g, r)| format!("{g} ({})", if sdk { r.sdk.len() } else { r.periscope.len() }))
            .collect();
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join("; ")
        }
    };
    let _ = writeln!(m, "* Only the SDK: {}.", only(true));
    let _ = writeln!(m, "* Only periscope: {}.", only(false));
    for (label, pred) in [("HTTP server", " SERVER "), ("HTTP client", " CLIENT "), ("SQL", " SQL ")] {
        let d: Vec<f64> = a
            .rows
            .iter()
            .filter(|(g, _)| g.contains(pred))
            .flat_map(|(_, r)| r.pairs.iter().map(|&(p, s)| a.periscope[p].duration_ms() - a.sdk[s].duration_ms()))
            .collect();
        if let (Some(p50), Some(p5), Some(p95)) = (percentile(&d, 50.0), percentile(&d, 5.0), percentile(&d, 95.0)) {
            let _ = writeln!(
                m,
                "* {label} durations, periscope − SDK over {} pairs: median {p50:+.3} ms (p5 {p5:+.3}, p95 {p95:+.3}).",
                d.len()
            );
        }
    }
    let mut verdicts = std::collections::BTreeMap::new();
    for r in a.rows.values() {
        for (k, n) in &r.parents {
            *verdicts.entry(*k).or_insert(0) += n;
        }
    }
    let list: Vec<String> = verdicts.iter().map(|(k, n)| format!("{} {n}", parent_label(*k))).collect();
    let _ = writeln!(m, "* Parents of matched periscope spans: {}.", list.join(", "));
    let _ = writeln!(
        m,
        "* SDK spans periscope has no kind of equivalent for (INTERNAL): {}.\n",
        a.sdk_unclassified.values().sum::<usize>()
    );
    m
}

/// What to keep in mind reading the tables (facts of the method).
pub const NOTES: &str = "## Reading the numbers\n\n\
* The Node SDK's span start times have millisecond resolution (its clock is anchored to `Date.now()`; \
durations come from the high-resolution timer), so an SDK span may sit up to 1 ms before periscope's view of the \
same operation; matching allows 1 ms of slack. Compare durations, not start times.\n\
* The SDK's HTTP instrumentation replaces the requester's hand-made `traceparent` with its own, and periscope \
honours incoming headers: periscope's server spans take the SDK client span as parent. periscope also gives an \
uninstrumented client's span the span id of the `traceparent` the client wrote, so here its requester CLIENT \
spans carry the SDK's span ids. Without the SDK (the demo, the lab with Beyla-style agents) the header is the \
requester's own and the ids are periscope's alone.\n\
* periscope watches the whole process, so it also sees the SDK's own OTLP exports (`POST /v1/traces` rows): \
traffic that exists only because the SDK is loaded.\n\
* Messages: the SDK's amqplib instrumentation writes a `traceparent` into each message's headers; \
periscope's PRODUCER span takes the ids of that header (as for an uninstrumented HTTP client's own header), so \
with the SDK on, periscope's PRODUCER spans carry the SDK's span ids, and its CONSUMER spans join the trace the \
header names. Without the SDK they are linked on this host by the message itself (docs/trace-context.md).\n\
* SQL parents: the SDK parents `pg` spans under Express's handler span; the comparison walks up to the nearest \
ancestor that has a row (the server span), which is where periscope puts them.\n\
* SQL durations: periscope's is the wire time, from the write of the statement to the read of its answer; the \
SDK's `pg` span starts when the app calls `query()`, so it also counts the wait in the client's own queue. With \
one shared `pg.Client` under a burst (`--load lab`) that wait is seconds and the two differ by it; without a \
backlog they agree to a fraction of a millisecond. SQL spans are therefore paired by their end (both end when the \
answer is read) and the SDK's must contain periscope's.\n\
* The SDK's `server.port` on server spans comes from the `Host` header (the scraper sends `Host: localhost`, \
hence 80); periscope's from the socket.\n\n";

/// The Markdown tables of the comparison (the header is the caller's).
pub fn tables(a: &Analysis) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "## Spans per endpoint and statement\n");
    let _ = writeln!(
        m,
        "Rows: one per service, kind and HTTP method + path (client: + peer port), SQL operation + table, or \
         messaging destination; the five beasts are folded into `{{beast}}`. Counts are spans that started inside \
         the measured window. *matched*: periscope spans with an SDK counterpart (the same span id, else same key, \
         overlapping, starts < 200 ms apart; SQL: ends < 200 ms apart, the SDK's containing periscope's). *status*: matched pairs whose ERROR/not-ERROR status agrees. Durations in ms over all \
         spans of each side; *paired Δ*: median of (periscope − SDK) over the matched pairs.\n"
    );
    let _ = writeln!(
        m,
        "| row | SDK | periscope | matched | status agree | SDK p50 | periscope p50 | Δp50 | SDK p95 | periscope p95 | Δp95 | paired Δ |"
    );
    let _ = writeln!(m, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (group, row) in &a.rows {
        let (ds, dp) = (a.durations(row, Side::Sdk), a.durations(row, Side::Periscope));
        let (s50, p50, s95, p95) =
            (percentile(&ds, 50.0), percentile(&dp, 50.0), percentile(&ds, 95.0), percentile(&dp, 95.0));
        let status =
            if row.pairs.is_empty() { "-".to_owned() } else { format!("{}/{}", row.status_agree, row.pairs.len()) };
        let _ = writeln!(
            m,
            "| {group} | {} | {} | {} | {status} | {} | {} | {} | {} | {} | {} | {} |",
            row.sdk.len(),
            row.periscope.len(),
            row.pairs.len(),
            ms(s50),
            ms(p50),
            diff(s50, p50),
            ms(s95),
            ms(p95),
            diff(s95, p95),
            a.paired_delta_ms(row).map_or_else(|| "-".to_owned(), |d| format!("{d:+.2}")),
        );
    }

    let _ = writeln!(m, "\n## Parent/child agreement\n");
    let _ = writeln!(
        m,
        "For each matched periscope span: is its parent the counterpart of the SDK span's parent? The SDK's \
         parent is taken as its nearest ancestor with a row (Express's INTERNAL middleware and handler spans are \
         skipped, since periscope has no equivalent). *agree via SDK header*: periscope's parent id is the SDK \
         span id that the SDK itself wrote into the `traceparent` header it injected (the SDK replaces the \
         requester's hand-made header), so the link is right but comes from the SDK, not from periscope.\n"
    );
    let _ = write!(m, "| row | matched |");
    for p in PARENT_KINDS {
        let _ = write!(m, " {} |", parent_label(p));
    }
    let _ = writeln!(m, " parent id is an SDK span id |");
    let _ = writeln!(m, "|---|--:|{}--:|", "--:|".repeat(PARENT_KINDS.len()));
    for (group, row) in a.rows.iter().filter(|(_, r)| !r.pairs.is_empty()) {
        let _ = write!(m, "| {group} | {} |", row.pairs.len());
        for p in PARENT_KINDS {
            let _ = write!(m, " {} |", row.parents.get(&p).copied().unwrap_or(0));
        }
        let _ = writeln!(m, " {} |", row.parent_id_from_sdk);
    }
    let _ = writeln!(
        m,
        "\nperiscope spans whose parent id is an SDK span id: {} ({} of them in that SDK span's trace). \
         periscope spans whose own span id is an SDK span id: {} (periscope gives an uninstrumented client's \
         span the id written in its outgoing `traceparent`; here the SDK wrote that header, so periscope's \
         client span and the SDK's carry the same id: in a backend receiving both they would collide).",
        a.sdk_header_parents, a.sdk_header_same_trace, a.shared_span_ids
    );

    let _ = writeln!(m, "\n## Attributes one side has and the other lacks\n");
    let _ = writeln!(m, "Attribute names seen on any span of the row (periscope runs with `OTEL_SEMCONV_STABILITY_OPT_IN=http/dup,database/dup`, so it emits old and new names).\n");
    let _ = writeln!(
        m,
        "| row | only SDK | only periscope | same name, different value (pairs; first example SDK → periscope) |"
    );
    let _ = writeln!(m, "|---|---|---|---|");
    for (group, row) in a.rows.iter().filter(|(_, r)| !r.sdk.is_empty() && !r.periscope.is_empty()) {
        let only_s = row.attrs_sdk.difference(&row.attrs_periscope).cloned().collect();
        let only_p = row.attrs_periscope.difference(&row.attrs_sdk).cloned().collect();
        let diffs: Vec<String> = row
            .value_diffs
            .iter()
            .map(|(k, (n, sv, pv))| format!("`{k}` ({n}; `{}` → `{}`)", short(sv), short(pv)))
            .collect();
        let diffs = if diffs.is_empty() { "-".to_owned() } else { diffs.join(", ") };
        let _ = writeln!(m, "| {group} | {} | {} | {diffs} |", list(&only_s), list(&only_p));
    }
    let _ = writeln!(m, "\nResource attributes:\n");
    let _ = writeln!(m, "| service | only SDK | only periscope |");
    let _ = writeln!(m, "|---|---|---|");
    let services: BTreeSet<&str> = a.sdk.iter().chain(&a.periscope).map(|s| s.service.as_str()).collect();
    for svc in services {
        let keys = |spans: &[super::spans::Span]| -> BTreeSet<String> {
            spans.iter().filter(|s| s.service == svc).flat_map(|s| s.resource.keys().cloned()).collect()
        };
        let (s, p) = (keys(&a.sdk), keys(&a.periscope));
        let _ = writeln!(
            m,
            "| {svc} | {} | {} |",
            list(&s.difference(&p).cloned().collect()),
            list(&p.difference(&s).cloned().collect())
        );
    }

    let _ = writeln!(m, "\n## Spans without a row\n");
    let _ = writeln!(m, "| side | service, kind, name | spans |");
    let _ = writeln!(m, "|---|---|--:|");
    for (name, n) in &a.sdk_unclassified {
        let _ = writeln!(m, "| SDK | {name} | {n} |");
    }
    for (name, n) in &a.periscope_unclassified {
        let _ = writeln!(m, "| periscope | {name} | {n} |");
    }
    m
}

/// Horizontal box plots (p5, p25, p50, p75, p95) of each row's durations,
/// SDK and periscope side by side, on a log axis.
pub fn chart(a: &Analysis, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let rows: Vec<(&String, &Row)> = a.rows.iter().filter(|(_, r)| r.sdk.len() + r.periscope.len() >= 5).collect();
    let height = 120 + 44 * rows.len() as u32;
    let root = BitMapBackend::new(path, (1400, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = rows
        .iter()
        .flat_map(|(_, r)| a.durations(r, Side::Sdk).into_iter().chain(a.durations(r, Side::Periscope)))
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo <= hi { ((lo * 0.8).max(0.01), hi * 1.25) } else { (0.01, 10.0) };
    let n = rows.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Span durations (ms, log scale): SDK (blue) vs periscope (orange); box p25-p75, line p50, whiskers p5-p95",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(460)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..n)?;
    let labels: Vec<String> = rows.iter().map(|(g, _)| (*g).clone()).collect();
    chart
        .configure_mesh()
        .y_labels(rows.len() * 2 + 1)
        .y_label_formatter(&|y| {
            let i = y.floor() as usize;
            if (y - y.floor() - 0.5).abs() < 0.01 {
                labels.get(rows.len().saturating_sub(i + 1)).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("ms")
        .light_line_style(WHITE)
        .label_style(("sans-serif", 15))
        .draw()?;
    let sdk_color = RGBColor(31, 119, 180);
    let p_color = RGBColor(255, 127, 14);
    for (k, (_, row)) in rows.iter().enumerate() {
        let base = (rows.len() - k - 1) as f64;
        for (side, offset, color) in [(Side::Sdk, 0.55, sdk_color), (Side::Periscope, 0.15, p_color)] {
            let d = a.durations(row, side);
            let q = |p: f64| percentile(&d, p);
            let (Some(p5), Some(p25), Some(p50), Some(p75), Some(p95)) = (q(5.0), q(25.0), q(50.0), q(75.0), q(95.0))
            else {
                continue;
            };
            let (y0, y1) = (base + offset, base + offset + 0.3);
            let ym = (y0 + y1) / 2.0;
            chart.draw_series([
                Rectangle::new([(p25, y0), (p75, y1)], color.mix(0.35).filled()),
                Rectangle::new([(p25, y0), (p75, y1)], color.stroke_width(1)),
            ])?;
            chart.draw_series([
                PathElement::new(vec![(p50, y0), (p50, y1)], color.stroke_width(3)),
                PathElement::new(vec![(p5, ym), (p25, ym)], color.stroke_width(1)),
                PathElement::new(vec![(p75, ym), (p95, ym)], color.stroke_width(1)),
                PathElement::new(vec![(p5, y0 + 0.08), (p5, y1 - 0.08)], color.stroke_width(1)),
                PathElement::new(vec![(p95, y0 + 0.08), (p95, y1 - 0.08)], color.stroke_width(1)),
            ])?;
        }
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// plotters draws text with ab_glyph from a font we hand it (no system
/// font lookup): DejaVu Sans from Debian's fonts-dejavu-core.
fn register_font() -> anyhow::Result<()> {
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let bytes =
        std::fs::read(FONT).with_context(|| format!("reading {FONT} (cargo xtask deps installs fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    Ok(())
}
