//! Where option values come from besides flags and clap's own environment
//! variables: the YAML file (`--config`, periscope's own keys or a Beyla/OBI
//! file), Beyla's and OBI's variables ([`super::compat`]) and their feature
//! lists. All become flag arguments placed so that precedence holds: flag >
//! environment > file > default.
use std::{ffi::OsString, path::PathBuf};

use clap::CommandFactory;

use super::{beyla_yaml, compat, Args, ConfigError};
use crate::discovery::NamingRule;

/// Beyla's switches for trace-derived metrics: `--span-metrics=true` /
/// `--service-graph-metrics=true` when a Beyla or OBI feature list names them
/// and neither the flag nor its PERISCOPE_* variable is given. Placed as
/// flags so they beat the YAML file, as environment variables do. With one
/// line per variable read.
pub(super) fn beyla_feature_args(
    cli: &[OsString],
    get: &dyn Fn(&str) -> Option<String>,
) -> (Vec<OsString>, Vec<String>) {
    let mut notes = Vec::new();
    let mut features: Vec<String> = Vec::new();
    for var in compat::FEATURE_VARS {
        if let Some(list) = get(var).filter(|l| !l.trim().is_empty()) {
            notes.push(format!("{var} read: application_span and application_service_graph switch on --span-metrics and --service-graph-metrics"));
            features.extend(list.split(',').map(|f| f.trim().to_owned()));
        }
    }
    let mut out = Vec::new();
    for (flag, env, feature) in [
        ("span-metrics", "PERISCOPE_SPAN_METRICS", "application_span"),
        ("service-graph-metrics", "PERISCOPE_SERVICE_GRAPH_METRICS", "application_service_graph"),
    ] {
        if !compat::on_cli(cli, flag)
            && get(env).is_none()
            && features.iter().any(|f| f == feature || f == "all" || f == "*")
        {
            out.push(OsString::from(format!("--{flag}=true")));
        }
    }
    (out, notes)
}

/// Turns one YAML value into the text of a flag's value.
fn yaml_text(key: &str, v: &serde_yaml_ng::Value) -> Result<String, String> {
    use serde_yaml_ng::Value;
    Ok(match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Sequence(items) => items.iter().map(|i| yaml_text(key, i)).collect::<Result<Vec<_>, _>>()?.join(","),
        Value::Null => return Err(format!("key {key:?} has no value")),
        _ => return Err(format!("key {key:?} must be a string, number, boolean or list")),
    })
}

/// What a `--config` file gives.
#[derive(Debug, Default)]
pub(super) struct FileArgs {
    /// Flags for the options that no flag or variable sets.
    pub args: Vec<OsString>,
    /// Lines to log: the keys of a Beyla/OBI file ignored or adapted.
    pub notes: Vec<String>,
    /// Names per discovery entry (Beyla/OBI files).
    pub rules: Vec<NamingRule>,
}

/// Flags from the YAML file, for options that no flag or env var sets. The
/// file holds periscope's options (keys: flag names), or is a Beyla/OBI
/// configuration ([`beyla_yaml`]), whose unknown keys are noted, not refused.
pub(super) fn file_args(path: &PathBuf, cli: &[OsString]) -> Result<FileArgs, ConfigError> {
    let err = |message: String| ConfigError::File { path: path.clone(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| err(format!("not valid YAML: {e}")))?;
    let map = match doc {
        serde_yaml_ng::Value::Mapping(m) => m,
        serde_yaml_ng::Value::Null => return Ok(FileArgs::default()),
        _ => return Err(err("the top level must be a mapping of option: value".into())),
    };
    let cmd = Args::command();
    let flag_arg = |flag: &str| cmd.get_arguments().find(|a| a.get_long() == Some(flag) && flag != "config");
    let mut out = FileArgs::default();
    let pairs: Vec<(String, String)> = if beyla_yaml::is_beyla_shaped(&map) {
        let t = beyla_yaml::translate(map, &|flag| flag_arg(flag).is_some()).map_err(err)?;
        out.notes = t.notes;
        out.rules = t.rules;
        t.flags
    } else {
        let mut pairs = Vec::new();
        for (k, v) in crate::kubernetes::config::flatten_yaml(map).map_err(err)? {
            let key = k.as_str().ok_or_else(|| err("keys must be strings".into()))?.replace('_', "-");
            flag_arg(&key).ok_or_else(|| err(format!("unknown key {key:?}")))?;
            let mut value = yaml_text(&key, &v).map_err(err)?;
            if key == "trace-printer" {
                // Beyla's values (`disabled`, `json_indent`) are accepted here too.
                value = compat::printer_value(&value).map_err(|e| err(format!("key \"trace-printer\": {e}")))?.0;
            }
            pairs.push((key, value));
        }
        pairs
    };
    for (flag, value) in pairs {
        let arg = flag_arg(&flag).ok_or_else(|| err(format!("unknown key {flag:?}")))?;
        let in_env = arg.get_env().is_some_and(|e| std::env::var_os(e).is_some());
        if compat::on_cli(cli, &flag) || in_env {
            continue;
        }
        out.args.push(OsString::from(format!("--{flag}={value}")));
    }
    Ok(out)
}
