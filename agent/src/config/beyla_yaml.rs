//! A Beyla/OBI YAML configuration file, read for the parts periscope has:
//!
//! | Beyla/OBI key | periscope |
//! |---|---|
//! | `open_port`, `discovery.{services,instrument}[].open_ports` | `--open-port` (their union) |
//! | `discovery.instrument[].exe_path` (glob), `discovery.services[].exe_path`, `executable_path`, `executable_name` (regexps: literal ones only) | `--exe-path` |
//! | `discovery.*[].name`, `.namespace` | names of the processes that entry selects ([`NamingRule`]) |
//! | `service_name`, `service_namespace` | `--service-name`, `--service-namespace` |
//! | `routes.{patterns, ignored_patterns, unmatched}` | `--routes`, `--ignored-routes`, `--route-unmatched` |
//! | `otel_traces_export.{endpoint, protocol, sampler}` | `--otlp-traces-endpoint`, `--otlp-protocol`, `--traces-sampler[-arg]` |
//! | `otel_metrics_export.{endpoint, protocol, interval}` | `--otlp-metrics-endpoint`, `--otlp-protocol`, `--metric-export-interval` |
//! | `prometheus_export.{port, path}` | `--prometheus-port`, `--prometheus-path` |
//! | `{otel_metrics_export,prometheus_export}.buckets.duration_histogram` | `--duration-histogram-buckets` |
//! | `*.features` with `application_span` / `application_service_graph` | `--span-metrics`, `--service-graph-metrics` |
//! | `attributes.kubernetes.{enable, cluster_name}` | `--kubernetes`, `--kubernetes-cluster-name` |
//! | `trace_printer`, `log_level` | `--trace-printer`, `--log-level` |
//!
//! Every other key gets one note naming it (ignored, never an error); a value
//! periscope cannot take the way the file means it is an error naming its
//! key. Our own option names may stand next to Beyla's in the same file.
use serde_yaml_ng::{Mapping, Value};

use super::compat::printer_value;
use crate::discovery::{ExeGlobs, NamingRule, PortSet};

/// What a Beyla/OBI file says, in periscope's terms.
#[derive(Debug, Default)]
pub(super) struct Translated {
    /// (flag name, value), for the file's place in the precedence.
    pub flags: Vec<(String, String)>,
    /// One line per key ignored or value adapted.
    pub notes: Vec<String>,
    /// Names per `discovery` entry.
    pub rules: Vec<NamingRule>,
}

/// Top-level keys of Beyla/OBI files that are none of ours: one of them (or
/// `routes` as a mapping) makes a file Beyla-shaped.
const BEYLA_SECTIONS: &[&str] = &[
    "discovery",
    "otel_traces_export",
    "otel_metrics_export",
    "prometheus_export",
    "attributes",
    "metrics",
    "ebpf",
    "network",
    "filter",
    "name_resolver",
    "internal_metrics",
    "executable_path",
    "executable_name",
    "shutdown_timeout",
    "channel_buffer_len",
    "channel_send_timeout",
    "enforce_sys_caps",
    "profile_port",
    "log_config",
    "nodejs",
    "javaagent",
];

/// Whether `map` is a Beyla/OBI configuration rather than periscope's own.
pub(super) fn is_beyla_shaped(map: &Mapping) -> bool {
    map.iter()
        .any(|(k, v)| k.as_str().is_some_and(|k| BEYLA_SECTIONS.contains(&k) || (k == "routes" && v.is_mapping())))
}

/// Translates a Beyla-shaped file; `is_ours` says whether a key (with `-`)
/// is one of periscope's flags, taken as such.
pub(super) fn translate(map: Mapping, is_ours: &dyn Fn(&str) -> bool) -> Result<Translated, String> {
    let mut t = Translator::default();
    for (k, v) in map {
        let key = k.as_str().ok_or("keys must be strings")?.to_owned();
        match key.as_str() {
            "open_port" => t.ports(&key, &v)?,
            "service_name" => t.flag("service-name", text(&key, &v)?),
            "service_namespace" => t.flag("service-namespace", text(&key, &v)?),
            "trace_printer" => t.printer(&key, &v)?,
            "log_level" => t.flag("log-level", text(&key, &v)?.to_ascii_lowercase()),
            "executable_path" | "executable_name" => {
                let glob = regexp_glob(&key, &text(&key, &v)?)?;
                t.globs.push(glob);
            }
            "routes" => t.routes(&v)?,
            "discovery" => t.discovery(&v)?,
            "otel_traces_export" => t.otlp_traces(&v)?,
            "otel_metrics_export" => t.otlp_metrics(&v)?,
            "prometheus_export" => t.prometheus(&v)?,
            "metrics" => t.section(&key, &v, |t, sub, path, v| match sub {
                "features" => t.features(path, v),
                _ => Ok(false),
            })?,
            "attributes" => t.attributes(&v)?,
            _ if is_ours(&key.replace('_', "-")) => {
                let flag = key.replace('_', "-");
                let value = text(&key, &v)?;
                t.flag(&flag, value);
            }
            _ => t.ignored(&key),
        }
    }
    t.finish()
}

#[derive(Default)]
struct Translator {
    out: Translated,
    ports: Vec<String>,
    globs: Vec<String>,
    span_metrics: bool,
    service_graph: bool,
    protocol: Option<(String, String)>,
}

impl Translator {
    fn flag(&mut self, flag: &str, value: String) {
        self.out.flags.push((flag.to_owned(), value));
    }

    fn ignored(&mut self, path: &str) {
        self.out.notes.push(format!("{path}: not read by periscope (ignored)"));
    }

    fn note(&mut self, line: String) {
        self.out.notes.push(line);
    }

    /// Walks a mapping at `path`, giving each entry to `known`; entries it
    /// does not take (`Ok(false)`) are noted as ignored.
    fn section(
        &mut self,
        path: &str,
        v: &Value,
        mut known: impl FnMut(&mut Self, &str, &str, &Value) -> Result<bool, String>,
    ) -> Result<(), String> {
        let map = match v {
            Value::Mapping(m) => m,
            Value::Null => return Ok(()),
            _ => return Err(format!("{path}: must be a mapping")),
        };
        for (k, v) in map {
            let sub = k.as_str().ok_or_else(|| format!("{path}: keys must be strings"))?;
            let full = format!("{path}.{sub}");
            if !known(self, sub, &full, v)? {
                self.ignored(&full);
            }
        }
        Ok(())
    }

    fn ports(&mut self, path: &str, v: &Value) -> Result<(), String> {
        let list = text(path, v)?;
        list.parse::<PortSet>().map_err(|e| format!("{path}: {e}"))?;
        self.ports.push(list);
        Ok(())
    }

    fn printer(&mut self, path: &str, v: &Value) -> Result<(), String> {
        let raw = text(path, v)?;
        let (value, note) = printer_value(&raw).map_err(|e| format!("{path}: {e}"))?;
        if let Some(note) = note {
            self.note(format!("{path}: {note}"));
        }
        self.flag("trace-printer", value);
        Ok(())
    }

    fn routes(&mut self, v: &Value) -> Result<(), String> {
        self.section("routes", v, |t, sub, path, v| {
            match sub {
                "patterns" => t.flag("routes", text(path, v)?),
                "ignored_patterns" => t.flag("ignored-routes", text(path, v)?),
                "unmatched" => {
                    let mode = text(path, v)?;
                    let ours = match mode.as_str() {
                        "heuristic" | "path" | "wildcard" | "unset" => mode.clone(),
                        "low-cardinality" => {
                            t.note(format!("{path}: low-cardinality is not built here: heuristic instead"));
                            "heuristic".to_owned()
                        }
                        _ => {
                            return Err(format!(
                                "{path}: unknown mode {mode:?} (heuristic, path, wildcard, unset, low-cardinality)"
                            ))
                        }
                    };
                    t.flag("route-unmatched", ours);
                }
                "ignore_mode" => {
                    let mode = text(path, v)?;
                    if mode != "all" {
                        t.note(format!(
                            "{path}: {mode:?} is not built here: ignored routes are left out of traces and metrics alike"
                        ));
                    }
                }
                "wildcard_char" => {
                    if text(path, v)? != "*" {
                        t.note(format!("{path}: periscope's wildcard is always \"*\""));
                    }
                }
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    fn discovery(&mut self, v: &Value) -> Result<(), String> {
        self.section("discovery", v, |t, sub, path, v| {
            // `services` selects by regular expressions, `instrument` (OBI,
            // newer Beyla) by globs.
            let globs = match sub {
                "services" => false,
                "instrument" => true,
                _ => return Ok(false),
            };
            let entries = match v {
                Value::Sequence(s) => s,
                Value::Null => return Ok(true),
                _ => return Err(format!("{path}: must be a list of entries")),
            };
            for (i, entry) in entries.iter().enumerate() {
                t.discovery_entry(&format!("{path}[{i}]"), entry, globs)?;
            }
            Ok(true)
        })
    }

    fn discovery_entry(&mut self, path: &str, entry: &Value, globs: bool) -> Result<(), String> {
        let mut ports = None;
        let mut exe = None;
        let mut name = None;
        let mut namespace = None;
        self.section(path, entry, |t, sub, full, v| {
            match sub {
                "open_ports" => {
                    let list = text(full, v)?;
                    ports = Some(list.parse::<PortSet>().map_err(|e| format!("{full}: {e}"))?);
                    t.ports.push(list);
                }
                "exe_path" => {
                    let raw = text(full, v)?;
                    let glob = if globs { raw } else { regexp_glob(full, &raw)? };
                    exe = Some(ExeGlobs::new([glob.as_str()]).map_err(|e| format!("{full}: {e}"))?);
                    t.globs.push(glob);
                }
                "name" => name = Some(text(full, v)?),
                "namespace" => namespace = Some(text(full, v)?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        if ports.is_some() && exe.is_some() {
            self.note(format!(
                "{path}: both open_ports and exe_path: Beyla watches processes matching both, periscope those matching either (the names apply to those matching both)"
            ));
        }
        if name.is_some() || namespace.is_some() {
            self.out.rules.push(NamingRule { ports, exe, name, namespace });
        }
        Ok(())
    }

    fn otlp_traces(&mut self, v: &Value) -> Result<(), String> {
        self.section("otel_traces_export", v, |t, sub, path, v| {
            match sub {
                "endpoint" => t.flag("otlp-traces-endpoint", text(path, v)?),
                "protocol" => t.protocol(path, v)?,
                "sampler" => t.section(path, v, |t, sub, path, v| {
                    match sub {
                        "name" => t.flag("traces-sampler", text(path, v)?),
                        "arg" => t.flag("traces-sampler-arg", text(path, v)?),
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?,
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    fn otlp_metrics(&mut self, v: &Value) -> Result<(), String> {
        self.section("otel_metrics_export", v, |t, sub, path, v| {
            match sub {
                "endpoint" => t.flag("otlp-metrics-endpoint", text(path, v)?),
                "protocol" => t.protocol(path, v)?,
                "interval" => t.flag("metric-export-interval", duration_ms(path, v)?.to_string()),
                "features" => return t.features(path, v),
                "buckets" => t.buckets(path, v)?,
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    /// `buckets.duration_histogram` (either export section; one setting
    /// here); `request_size_histogram` / `response_size_histogram` keep
    /// periscope's body-size buckets.
    fn buckets(&mut self, path: &str, v: &Value) -> Result<(), String> {
        self.section(path, v, |t, sub, full, v| {
            match sub {
                "duration_histogram" => {
                    let list = text(full, v)?;
                    match t.out.flags.iter().find(|(f, _)| f == "duration-histogram-buckets") {
                        Some((_, first)) if *first != list => {
                            return Err(format!(
                                "{full}: {list:?} differs from the other section's {first:?}, and periscope has one set of duration buckets"
                            ))
                        }
                        Some(_) => {}
                        None => t.flag("duration-histogram-buckets", list),
                    }
                }
                "request_size_histogram" | "response_size_histogram" => {
                    t.note(format!("{full}: body-size buckets are fixed here (0, 32 B ... 8 KiB)"))
                }
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    /// One `--otlp-protocol` for both signals: the first given; another
    /// value for the other signal is an error (periscope has one).
    fn protocol(&mut self, path: &str, v: &Value) -> Result<(), String> {
        let p = text(path, v)?;
        if !["grpc", "http/protobuf"].contains(&p.as_str()) {
            return Err(format!("{path}: {p:?} is not supported (grpc, http/protobuf)"));
        }
        match &self.protocol {
            Some((first, value)) if *value != p => {
                return Err(format!(
                    "{path}: {p:?} differs from {first}: {value:?}, and periscope has one OTLP protocol"
                ))
            }
            Some(_) => {}
            None => {
                self.protocol = Some((path.to_owned(), p.clone()));
                self.flag("otlp-protocol", p);
            }
        }
        Ok(())
    }

    fn prometheus(&mut self, v: &Value) -> Result<(), String> {
        self.section("prometheus_export", v, |t, sub, path, v| {
            match sub {
                "port" => {
                    let port = text(path, v)?;
                    match port.parse::<u16>() {
                        Ok(0) => t.note(format!("{path}: 0, no Prometheus endpoint")),
                        Ok(p) => t.flag("prometheus-port", p.to_string()),
                        Err(_) => return Err(format!("{path}: {port:?} is not a port (0-65535)")),
                    }
                }
                "path" => t.flag("prometheus-path", text(path, v)?),
                "features" => return t.features(path, v),
                "buckets" => t.buckets(path, v)?,
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    /// Beyla's metric groups: the trace-derived ones switch periscope's on;
    /// the application RED metrics are always on; the rest do not exist here.
    fn features(&mut self, path: &str, v: &Value) -> Result<bool, String> {
        for f in text(path, v)?.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            match f {
                "application" => {}
                "application_span" => self.span_metrics = true,
                "application_service_graph" => self.service_graph = true,
                "all" | "*" => (self.span_metrics, self.service_graph) = (true, true),
                other => self.note(format!("{path}: {other} is not built here (ignored)")),
            }
        }
        Ok(true)
    }

    fn attributes(&mut self, v: &Value) -> Result<(), String> {
        self.section("attributes", v, |t, sub, path, v| {
            if sub != "kubernetes" {
                return Ok(false);
            }
            t.section(path, v, |t, sub, path, v| {
                match sub {
                    "enable" => {
                        let e = text(path, v)?;
                        let ours = match e.as_str() {
                            "true" => "true",
                            "false" => "false",
                            "autodetect" | "auto" => "auto",
                            _ => return Err(format!("{path}: {e:?} (true, false, autodetect)")),
                        };
                        t.flag("kubernetes", ours.to_owned());
                    }
                    "cluster_name" => t.flag("kubernetes-cluster-name", text(path, v)?),
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            Ok(true)
        })
    }

    fn finish(mut self) -> Result<Translated, String> {
        if !self.ports.is_empty() {
            let ports = self.ports.join(",");
            self.flag("open-port", ports);
        }
        if !self.globs.is_empty() {
            let globs = self.globs.join(",");
            self.flag("exe-path", globs);
        }
        if self.span_metrics {
            self.flag("span-metrics", "true".into());
        }
        if self.service_graph {
            self.flag("service-graph-metrics", "true".into());
        }
        Ok(self.out)
    }
}

/// A scalar (or a list of them, comma-joined) as text.
fn text(path: &str, v: &Value) -> Result<String, String> {
    Ok(match v {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Sequence(items) => items.iter().map(|i| text(path, i)).collect::<Result<Vec<_>, _>>()?.join(","),
        Value::Null => return Err(format!("{path}: has no value")),
        _ => return Err(format!("{path}: must be a string, number, boolean or list")),
    })
}

/// Beyla's executable regexps match anywhere in the path; periscope's globs
/// match the whole of it. A regexp made of literal characters (the usual
/// `node`, `/usr/bin/java`) is the glob `*<it>*`; anything else is refused.
fn regexp_glob(path: &str, re: &str) -> Result<String, String> {
    let (start, end) = (re.starts_with('^'), re.ends_with('$') && !re.ends_with("\\$"));
    let core = &re[usize::from(start)..re.len() - usize::from(end)];
    if core.is_empty() || !core.chars().all(|c| c.is_ascii_alphanumeric() || "/_-".contains(c) || c == '.') {
        return Err(format!(
            "{path}: the regular expression {re:?} has no glob equivalent: use discovery.instrument[].exe_path with a glob, or --exe-path"
        ));
    }
    // An unescaped `.` in a regexp matches any character; as a literal it is the closest.
    Ok(format!("{}{core}{}", if start { "" } else { "*" }, if end { "" } else { "*" }))
}

/// A Go duration (`5s`, `500ms`, `1m30s`) or a number of milliseconds.
fn duration_ms(path: &str, v: &Value) -> Result<u64, String> {
    let raw = text(path, v)?;
    if let Ok(ms) = raw.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || format!("{path}: {raw:?} is not a duration (e.g. 5s, 500ms, 1m30s)");
    let mut total = 0f64;
    let mut rest = raw.as_str();
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !c.is_ascii_digit() && c != '.').ok_or_else(bad)?;
        let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 6e4,
            "h" => 3.6e6,
            _ => return Err(bad()),
        };
        total += value * factor;
        rest = &rest[unit_end..];
    }
    Ok(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Mapping {
        serde_yaml_ng::from_str(text).unwrap()
    }

    fn flags(t: &Translated) -> Vec<(&str, &str)> {
        t.flags.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect()
    }

    fn ours(flag: &str) -> bool {
        ["capture-size", "open-port", "routes"].contains(&flag)
    }

    #[test]
    fn duration_buckets_from_either_export_section() {
        let t = translate(
            parse(
                "prometheus_export:\n  buckets:\n    duration_histogram: [0, 0.0005, 0.001]\n    request_size_histogram: [0, 10]\n\
                 otel_metrics_export:\n  buckets:\n    duration_histogram: [0, 0.0005, 0.001]\n",
            ),
            &ours,
        )
        .unwrap();
        assert_eq!(flags(&t), [("duration-histogram-buckets", "0,0.0005,0.001")]);
        assert!(t.notes.iter().any(|n| n.contains("request_size_histogram")), "{:?}", t.notes);
        let err = translate(
            parse("prometheus_export: {buckets: {duration_histogram: [0, 1]}}\notel_metrics_export: {buckets: {duration_histogram: [0, 2]}}\n"),
            &ours,
        )
        .unwrap_err();
        assert!(err.contains("differs"), "{err}");
    }

    #[test]
    fn shapes_are_told_apart() {
        assert!(is_beyla_shaped(&parse("routes: {patterns: [/a], unmatched: heuristic}\n")));
        assert!(is_beyla_shaped(&parse("discovery: {services: [{open_ports: 80}]}\n")));
        assert!(!is_beyla_shaped(&parse("routes: [/a]\nopen_port: 80\n")));
        assert!(!is_beyla_shaped(&parse("open_port: 80\ncapture_size: 256\n")));
    }

    #[test]
    fn a_full_beyla_file_becomes_flags_notes_and_names() {
        let t = translate(
            parse(
                "open_port: 8080
log_level: DEBUG
trace_printer: json_indent
routes:
  patterns: ['/user/{id}', /basic/:rnd]
  ignored_patterns: [/metrics]
  unmatched: low-cardinality
  ignore_mode: traces
discovery:
  services:
    - open_ports: 4000
      name: mythical-server
      namespace: mythical
    - exe_path: node
      k8s_namespace: shop
  instrument:
    - exe_path: '*/python3*'
  exclude_services:
    - exe_path: sshd
otel_traces_export:
  endpoint: http://alloy:4317
  protocol: grpc
  sampler: {name: parentbased_traceidratio, arg: \"0.5\"}
  batch_timeout: 5s
otel_metrics_export:
  endpoint: http://alloy:4318/v1/metrics
  interval: 1m30s
  features: [application, application_span, network]
prometheus_export:
  port: 9090
  path: /internal/metrics
  features: application_service_graph
attributes:
  kubernetes:
    enable: autodetect
    cluster_name: prod
  select: {}
ebpf: {wakeup_len: 100}
capture_size: 256
",
            ),
            &ours,
        )
        .unwrap();
        assert_eq!(
            flags(&t),
            [
                ("log-level", "debug"),
                ("trace-printer", "json"),
                ("routes", "/user/{id},/basic/:rnd"),
                ("ignored-routes", "/metrics"),
                ("route-unmatched", "heuristic"),
                ("otlp-traces-endpoint", "http://alloy:4317"),
                ("otlp-protocol", "grpc"),
                ("traces-sampler", "parentbased_traceidratio"),
                ("traces-sampler-arg", "0.5"),
                ("otlp-metrics-endpoint", "http://alloy:4318/v1/metrics"),
                ("metric-export-interval", "90000"),
                ("prometheus-port", "9090"),
                ("prometheus-path", "/internal/metrics"),
                ("kubernetes", "auto"),
                ("kubernetes-cluster-name", "prod"),
                ("capture-size", "256"),
                ("open-port", "8080,4000"),
                ("exe-path", "*node*,*/python3*"),
                ("span-metrics", "true"),
                ("service-graph-metrics", "true"),
            ]
        );
        for expected in [
            "trace_printer: json_indent prints one JSON line per span here",
            "routes.unmatched: low-cardinality is not built here: heuristic instead",
            "discovery.services[1].k8s_namespace: not read by periscope (ignored)",
            "discovery.exclude_services: not read by periscope (ignored)",
            "otel_traces_export.batch_timeout: not read by periscope (ignored)",
            "otel_metrics_export.features: network is not built here (ignored)",
            "attributes.select: not read by periscope (ignored)",
            "ebpf: not read by periscope (ignored)",
        ] {
            assert!(t.notes.iter().any(|n| n == expected), "missing note {expected:?} in {:#?}", t.notes);
        }
        assert!(t.notes.iter().any(|n| n.starts_with("routes.ignore_mode: \"traces\"")), "{:#?}", t.notes);
        assert_eq!(t.rules.len(), 1);
        assert_eq!(t.rules[0].name.as_deref(), Some("mythical-server"));
        assert_eq!(t.rules[0].namespace.as_deref(), Some("mythical"));
        assert!(t.rules[0].ports.as_ref().is_some_and(|p| p.contains(4000)));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (yaml, expected) in [
            ("routes: {unmatched: sometimes}\n", "routes.unmatched: unknown mode \"sometimes\""),
            ("prometheus_export: {port: lots}\n", "prometheus_export.port: \"lots\" is not a port"),
            ("discovery: {services: [{open_ports: 99999}]}\n", "discovery.services[0].open_ports:"),
            ("discovery: {services: [{exe_path: \"^/usr/bin/(node|deno)$\"}]}\n", "has no glob equivalent"),
            (
                "otel_traces_export: {protocol: http/json}\n",
                "otel_traces_export.protocol: \"http/json\" is not supported",
            ),
            (
                "otel_traces_export: {protocol: grpc}\notel_metrics_export: {protocol: http/protobuf}\n",
                "periscope has one OTLP protocol",
            ),
            ("otel_metrics_export: {interval: soon}\n", "otel_metrics_export.interval: \"soon\" is not a duration"),
            ("attributes: {kubernetes: {enable: maybe}}\n", "attributes.kubernetes.enable"),
            ("trace_printer: fancy\ndiscovery: {}\n", "trace_printer: unknown trace printer \"fancy\""),
            ("discovery: {services: 3}\n", "discovery.services: must be a list"),
        ] {
            let err = translate(parse(yaml), &ours).unwrap_err();
            assert!(err.contains(expected), "{yaml}: {err}");
        }
    }

    #[test]
    fn regexps_and_durations() {
        assert_eq!(regexp_glob("k", "node").unwrap(), "*node*");
        assert_eq!(regexp_glob("k", "^/usr/bin/java$").unwrap(), "/usr/bin/java");
        assert_eq!(regexp_glob("k", "/app/server$").unwrap(), "*/app/server");
        assert!(regexp_glob("k", ".*").is_err());
        assert!(regexp_glob("k", "").is_err());
        let v = |s: &str| Value::String(s.into());
        assert_eq!(duration_ms("k", &v("5s")).unwrap(), 5000);
        assert_eq!(duration_ms("k", &v("500ms")).unwrap(), 500);
        assert_eq!(duration_ms("k", &v("1m30s")).unwrap(), 90_000);
        assert_eq!(duration_ms("k", &Value::Number(250.into())).unwrap(), 250);
        assert!(duration_ms("k", &v("5 s")).is_err());
    }
}
