//! Beyla's (`BEYLA_*`) and OBI's (`OTEL_EBPF_*`) variables read as aliases of
//! ours, so that a Beyla or OBI deployment switches to periscope unchanged.
//!
//! An alias is an environment variable: it beats the YAML file and loses to
//! a flag and to our own variable. Each one used (or ignored because ours is
//! set) gives one line at start. The YAML side is [`super::beyla_yaml`].
use std::ffi::OsString;

use super::ConfigError;

/// How an alias's value becomes our flag's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    /// The same syntax.
    Same,
    /// `disabled|text|json|json_indent|counter` -> `off|text|json`.
    Printer,
    /// `DEBUG|INFO|WARN|ERROR` -> lowercase.
    LogLevel,
}

/// One of our options and the Beyla/OBI variables that stand for it, first
/// match wins among theirs.
struct EnvAlias {
    flag: &'static str,
    ours: &'static str,
    theirs: &'static [&'static str],
    value: Value,
}

/// Every alias. Beyla's names are OBI's with `BEYLA_` for `OTEL_EBPF_`
/// (Beyla 2 and later are built on OBI); `OTEL_SERVICE_NAME` in the agent's
/// own environment is what both read last for the service name.
const ENV_ALIASES: &[EnvAlias] = &[
    EnvAlias {
        flag: "config",
        ours: "PERISCOPE_CONFIG",
        theirs: &["BEYLA_CONFIG_PATH", "OTEL_EBPF_CONFIG_PATH"],
        value: Value::Same,
    },
    EnvAlias {
        flag: "open-port",
        ours: "PERISCOPE_OPEN_PORT",
        theirs: &["BEYLA_OPEN_PORT", "OTEL_EBPF_OPEN_PORT"],
        value: Value::Same,
    },
    EnvAlias {
        flag: "exe-path",
        ours: "PERISCOPE_EXE_PATH",
        theirs: &["BEYLA_AUTO_TARGET_EXE", "OTEL_EBPF_AUTO_TARGET_EXE", "OTEL_GO_AUTO_TARGET_EXE"],
        value: Value::Same,
    },
    EnvAlias {
        flag: "pid",
        ours: "PERISCOPE_PID",
        theirs: &["BEYLA_TARGET_PID", "OTEL_EBPF_TARGET_PID"],
        value: Value::Same,
    },
    EnvAlias {
        flag: "service-name",
        ours: "PERISCOPE_SERVICE_NAME",
        theirs: &["BEYLA_SERVICE_NAME", "OTEL_EBPF_SERVICE_NAME", "OTEL_SERVICE_NAME"],
        value: Value::Same,
    },
    EnvAlias {
        flag: "service-namespace",
        ours: "PERISCOPE_SERVICE_NAMESPACE",
        theirs: &["BEYLA_SERVICE_NAMESPACE", "OTEL_EBPF_SERVICE_NAMESPACE"],
        value: Value::Same,
    },
    EnvAlias {
        flag: "prometheus-port",
        ours: "PERISCOPE_PROMETHEUS_PORT",
        theirs: &["BEYLA_PROMETHEUS_PORT", "OTEL_EBPF_PROMETHEUS_PORT"],
        value: Value::Same,
    },
    EnvAlias {
        flag: "prometheus-path",
        ours: "PERISCOPE_PROMETHEUS_PATH",
        theirs: &["BEYLA_PROMETHEUS_PATH", "OTEL_EBPF_PROMETHEUS_PATH"],
        value: Value::Same,
    },
    EnvAlias {
        flag: "trace-printer",
        ours: "PERISCOPE_TRACE_PRINTER",
        theirs: &["BEYLA_TRACE_PRINTER", "OTEL_EBPF_TRACE_PRINTER"],
        value: Value::Printer,
    },
    EnvAlias {
        flag: "log-level",
        ours: "PERISCOPE_LOG_LEVEL",
        theirs: &["BEYLA_LOG_LEVEL", "OTEL_EBPF_LOG_LEVEL"],
        value: Value::LogLevel,
    },
];

/// Beyla's and OBI's metric feature lists (`application_span`,
/// `application_service_graph`, ...): [`super::sources::beyla_feature_args`].
pub(super) const FEATURE_VARS: [&str; 6] = [
    "BEYLA_OTEL_METRIC_FEATURES",
    "BEYLA_PROMETHEUS_FEATURES",
    "BEYLA_METRICS_FEATURES",
    "OTEL_EBPF_METRICS_FEATURES",
    "OTEL_EBPF_OTEL_METRIC_FEATURES",
    "OTEL_EBPF_PROMETHEUS_FEATURES",
];

/// Whether periscope reads `name` as an alias (so it is no unknown variable).
pub fn is_alias(name: &str) -> bool {
    FEATURE_VARS.contains(&name) || ENV_ALIASES.iter().any(|a| a.theirs.contains(&name))
}

/// Whether `--flag` (or `--flag=...`) is among `cli`.
pub(super) fn on_cli(cli: &[OsString], flag: &str) -> bool {
    let long = format!("--{flag}");
    cli.iter().any(|a| a.to_str().is_some_and(|a| a == long || a.starts_with(&format!("{long}="))))
}

/// Translates a Beyla/OBI trace printer value (also what the YAML file's
/// `trace_printer` says). `Err` names what is accepted.
pub(super) fn printer_value(v: &str) -> Result<(String, Option<String>), String> {
    Ok(match v.trim() {
        "disabled" | "off" | "" => ("off".into(), None),
        "text" => ("text".into(), None),
        "json" => ("json".into(), None),
        "json_indent" => ("json".into(), Some("json_indent prints one JSON line per span here".into())),
        "counter" => ("off".into(), Some("the counter printer does not exist here: printer off".into())),
        other => return Err(format!("unknown trace printer {other:?} (disabled, text, json, json_indent, counter)")),
    })
}

/// Flags from the aliases that are set, for options neither a flag nor our
/// own variable gives; and one line per alias seen, saying what became of it.
pub(super) fn alias_args(
    cli: &[OsString],
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<OsString>, Vec<String>), ConfigError> {
    let mut args = Vec::new();
    let mut notes = Vec::new();
    for alias in ENV_ALIASES {
        let set: Vec<(&str, String)> =
            alias.theirs.iter().filter_map(|&n| get(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v))).collect();
        let Some(((name, raw), rest)) = set.split_first() else { continue };
        for (other, _) in rest {
            notes.push(format!("{other} ignored: {name} is set too and comes first"));
        }
        if on_cli(cli, alias.flag) {
            notes.push(format!("{name} ignored: --{} is given", alias.flag));
            continue;
        }
        if get(alias.ours).is_some_and(|v| !v.trim().is_empty()) {
            notes.push(format!("{name} ignored: {} is set", alias.ours));
            continue;
        }
        let value = match alias.value {
            Value::Same => raw.trim().to_owned(),
            Value::LogLevel => raw.trim().to_ascii_lowercase(),
            Value::Printer => {
                let (v, note) = printer_value(raw).map_err(|message| ConfigError::Invalid {
                    key: "trace-printer",
                    message: format!("{name}: {message}"),
                })?;
                if let Some(note) = note {
                    notes.push(format!("{name}={raw}: {note}"));
                }
                v
            }
        };
        notes.push(format!("{name} read as {} (--{})", alias.ours, alias.flag));
        args.push(OsString::from(format!("--{}={value}", alias.flag)));
    }
    Ok((args, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    fn strings(v: &[OsString]) -> Vec<String> {
        v.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn aliases_become_flags_and_say_so() {
        let vars = [
            ("BEYLA_OPEN_PORT", "4000"),
            ("OTEL_EBPF_SERVICE_NAMESPACE", "mythical"),
            ("BEYLA_TRACE_PRINTER", "disabled"),
            ("OTEL_EBPF_LOG_LEVEL", "DEBUG"),
            ("BEYLA_PROMETHEUS_PORT", "9090"),
            ("BEYLA_AUTO_TARGET_EXE", "*/node"),
        ];
        let (args, notes) = alias_args(&[], &env(&vars)).unwrap();
        assert_eq!(
            strings(&args),
            [
                "--open-port=4000",
                "--exe-path=*/node",
                "--service-namespace=mythical",
                "--prometheus-port=9090",
                "--trace-printer=off",
                "--log-level=debug"
            ]
        );
        assert_eq!(notes.len(), 6, "{notes:?}");
        assert!(notes.contains(&"BEYLA_OPEN_PORT read as PERISCOPE_OPEN_PORT (--open-port)".to_owned()), "{notes:?}");
    }

    #[test]
    fn our_variable_and_flags_win_and_beyla_comes_before_obi() {
        let vars = [
            ("BEYLA_OPEN_PORT", "4000"),
            ("PERISCOPE_OPEN_PORT", "5000"),
            ("BEYLA_SERVICE_NAMESPACE", "a"),
            ("OTEL_EBPF_SERVICE_NAMESPACE", "b"),
            ("BEYLA_PROMETHEUS_PORT", "9090"),
        ];
        let cli = [OsString::from("--prometheus-port=9400")];
        let (args, notes) = alias_args(&cli, &env(&vars)).unwrap();
        assert_eq!(strings(&args), ["--service-namespace=a"]);
        assert_eq!(
            notes,
            [
                "BEYLA_OPEN_PORT ignored: PERISCOPE_OPEN_PORT is set",
                "OTEL_EBPF_SERVICE_NAMESPACE ignored: BEYLA_SERVICE_NAMESPACE is set too and comes first",
                "BEYLA_SERVICE_NAMESPACE read as PERISCOPE_SERVICE_NAMESPACE (--service-namespace)",
                "BEYLA_PROMETHEUS_PORT ignored: --prometheus-port is given",
            ]
        );
    }

    #[test]
    fn printer_values_are_translated_and_bad_ones_named() {
        for (theirs, ours) in [("disabled", "off"), ("text", "text"), ("json", "json"), ("json_indent", "json")] {
            let vars = [("OTEL_EBPF_TRACE_PRINTER", theirs)];
            let (args, _) = alias_args(&[], &env(&vars)).unwrap();
            assert_eq!(strings(&args), [format!("--trace-printer={ours}")]);
        }
        let vars = [("BEYLA_TRACE_PRINTER", "counter")];
        let (args, notes) = alias_args(&[], &env(&vars)).unwrap();
        assert_eq!(strings(&args), ["--trace-printer=off"]);
        assert!(notes[0].contains("counter printer does not exist"), "{notes:?}");
        let vars = [("BEYLA_TRACE_PRINTER", "fancy")];
        let err = alias_args(&[], &env(&vars)).unwrap_err().to_string();
        assert!(err.contains("BEYLA_TRACE_PRINTER") && err.contains("\"fancy\""), "{err}");
    }

    #[test]
    fn blank_aliases_do_not_count() {
        let (args, notes) = alias_args(&[], &env(&[("BEYLA_OPEN_PORT", " ")])).unwrap();
        assert!(args.is_empty() && notes.is_empty());
        assert!(is_alias("BEYLA_OPEN_PORT") && is_alias("OTEL_EBPF_METRICS_FEATURES") && !is_alias("BEYLA_BPF_DEBUG"));
    }
}
