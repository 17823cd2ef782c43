//! Where option values come from besides flags and clap's own environment
//! variables: the YAML file (`--config`) and Beyla's feature lists. Both
//! become flag arguments placed so that precedence holds: flag > environment
//! > file > default.
use std::{ffi::OsString, path::PathBuf};

use clap::CommandFactory;

use super::{Args, ConfigError};

/// The Beyla variables periscope reads (feature lists), all others are named at start.
pub(super) const BEYLA_FEATURE_VARS: [&str; 2] = ["BEYLA_OTEL_METRIC_FEATURES", "BEYLA_PROMETHEUS_FEATURES"];

/// Beyla's switches for trace-derived metrics: `--span-metrics=true` /
/// `--service-graph-metrics=true` when a Beyla feature list names them and
/// neither the flag nor its PERISCOPE_* variable is given. Placed as flags so
/// they beat the YAML file, as environment variables do.
pub(super) fn beyla_feature_args(cli: &[OsString], get: &dyn Fn(&str) -> Option<String>) -> Vec<OsString> {
    let features: Vec<String> = BEYLA_FEATURE_VARS
        .iter()
        .filter_map(|v| get(v))
        .flat_map(|list| list.split(',').map(|f| f.trim().to_owned()).collect::<Vec<_>>())
        .collect();
    let mut out = Vec::new();
    for (flag, env, feature) in [
        ("--span-metrics", "PERISCOPE_SPAN_METRICS", "application_span"),
        ("--service-graph-metrics", "PERISCOPE_SERVICE_GRAPH_METRICS", "application_service_graph"),
    ] {
        let on_cli = cli.iter().any(|a| a.to_str().is_some_and(|a| a == flag || a.starts_with(&format!("{flag}="))));
        if !on_cli && get(env).is_none() && features.iter().any(|f| f == feature) {
            out.push(OsString::from(format!("{flag}=true")));
        }
    }
    out
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

/// Flags from the YAML file, for options that no flag or env var sets.
pub(super) fn file_args(path: &PathBuf, cli: &[OsString]) -> Result<Vec<OsString>, ConfigError> {
    let err = |message: String| ConfigError::File { path: path.clone(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| err(format!("not valid YAML: {e}")))?;
    let map = match doc {
        serde_yaml_ng::Value::Mapping(m) => m,
        serde_yaml_ng::Value::Null => return Ok(Vec::new()),
        _ => return Err(err("the top level must be a mapping of option: value".into())),
    };
    let cmd = Args::command();
    let mut out = Vec::new();
    for (k, v) in crate::kubernetes::config::flatten_yaml(map).map_err(err)? {
        let key = k.as_str().ok_or_else(|| err("keys must be strings".into()))?.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| err(format!("unknown key {key:?}")))?;
        let flag = format!("--{key}");
        let on_cli = cli.iter().any(|a| a.to_str().is_some_and(|a| a == flag || a.starts_with(&format!("{flag}="))));
        let in_env = arg.get_env().is_some_and(|e| std::env::var_os(e).is_some());
        if on_cli || in_env {
            continue;
        }
        out.push(OsString::from(format!("{flag}={}", yaml_text(&key, &v).map_err(err)?)));
    }
    Ok(out)
}
