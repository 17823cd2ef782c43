//! Environment variables that look like options but are none: a typo in a
//! `PERISCOPE_*` name, or a `BEYLA_*` / `OTEL_EBPF_*` variable that is no
//! alias ([`super::compat`]), is otherwise silently ignored.
use clap::CommandFactory;

use super::{compat, Args};

/// Environment variables periscope reads through its flags.
pub fn known_env_vars() -> Vec<String> {
    Args::command().get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect()
}

/// One line per `PERISCOPE_*` variable that is no option (a typo is otherwise
/// silently ignored) and per `BEYLA_*` / `OTEL_EBPF_*` variable periscope
/// does not read.
pub fn unknown_env_vars<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let known = known_env_vars();
    let mut out = Vec::new();
    for name in names {
        if let Some(rest) = name.strip_prefix("PERISCOPE_") {
            if !known.iter().any(|k| k == name) {
                let hint = known.iter().find(|k| k.strip_prefix("PERISCOPE_").is_some_and(|k| close_enough(k, rest)));
                out.push(match hint {
                    Some(h) => format!("{name} is not a periscope option (did you mean {h}?)"),
                    None => format!("{name} is not a periscope option"),
                });
            }
        } else if let Some(rest) =
            name.strip_prefix("BEYLA_").or_else(|| name.strip_prefix("OTEL_EBPF_")).filter(|_| !compat::is_alias(name))
        {
            let ours = format!("PERISCOPE_{rest}");
            out.push(if known.contains(&ours) {
                format!("{name} is not read by periscope: use {ours}")
            } else {
                format!("{name} is not read by periscope (no equivalent option)")
            });
        }
    }
    out
}

/// Same length and at most two differing characters, or one character more or less.
fn close_enough(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() == b.len() {
        return a.iter().zip(b).filter(|(x, y)| x != y).count() <= 2;
    }
    let (short, long) = if a.len() < b.len() { (a, b) } else { (b, a) };
    long.len() - short.len() == 1 && (0..long.len()).any(|i| long[..i] == short[..i] && long[i + 1..] == short[i..])
}
