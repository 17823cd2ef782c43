//! The OTel Resource of a watched process: service name/namespace/instance and
//! the process, host and telemetry.sdk attributes.
//!
//! `service.name`, first match wins:
//! 1. `OTEL_SERVICE_NAME` in the target's own environment;
//! 2. `service.name` in its `OTEL_RESOURCE_ATTRIBUTES`;
//! 3. in a Kubernetes pod whose metadata is known: the pod annotation
//!    `resource.opentelemetry.io/service.name`, the label
//!    `app.kubernetes.io/name`, the owner (Deployment, StatefulSet, ...) name,
//!    the pod name (see [`crate::kubernetes::attributes`]);
//! 4. the first [`NamingRule`] that selects the process (the `name` of a
//!    Beyla/OBI `discovery` entry), then [`ServiceOptions::name_override`]
//!    (`--service-name`);
//! 5. the executable name, except for interpreters (node, python*, java,
//!    ruby*, php*, dotnet) where the program they run names the service better
//!    (see [`interpreter_service_name`]): `node server.js` -> `server`,
//!    `python3 -m http.server` -> `http.server`, `python3 app.py` -> `app`,
//!    `java -jar shop.jar` -> `shop`, `dotnet Api.dll` -> `Api`.
//!
//! `service.namespace`: `service.namespace` in `OTEL_RESOURCE_ATTRIBUTES`, then
//! in a pod the annotation `resource.opentelemetry.io/service.namespace`, the
//! label `app.kubernetes.io/part-of`, the Kubernetes namespace; then the
//! first matching [`NamingRule`]'s; then `--service-namespace`.
//!
//! `service.instance.id` is `{host.name}-{pid}-{start time}` ([`instance_id`]):
//! unique per process on a host even when pids are reused, and the same
//! for as long as the process lives, whatever happens to the agent (an
//! agent restart, or its container recreated, gives the same ids: `host.name`
//! is the host's, see [`super::host`]). An `service.instance.id` in the
//! target's env is ignored so that the id stays unique per process.
use crate::semconv;
use std::path::Path;

use crate::kubernetes::{KubernetesMetadata, KubernetesResource};
use crate::model::{AttrValue, Service};

use super::ProcessInfo;

/// The language of the *target* process, reported as `telemetry.sdk.language`
/// (as Beyla does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Language {
    Nodejs,
    Python,
    Java,
    Go,
    Ruby,
    Php,
    Dotnet,
    #[default]
    Unknown,
}

/// `prefix` followed by nothing or a version (`3`, `3.11`, `2.7`).
fn is_versioned(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Nodejs => "nodejs",
            Language::Python => "python",
            Language::Java => "java",
            Language::Go => "go",
            Language::Ruby => "ruby",
            Language::Php => "php",
            Language::Dotnet => "dotnet",
            Language::Unknown => "unknown",
        }
    }

    /// Guess from the executable's file name. Go binaries have arbitrary
    /// names; [`super::read_process`] recognises them from their ELF sections.
    pub fn from_exe_name(name: &str) -> Self {
        match name {
            "node" | "nodejs" => Language::Nodejs,
            "java" => Language::Java,
            "dotnet" => Language::Dotnet,
            n if is_versioned(n, "python") || is_versioned(n, "pypy") => Language::Python,
            n if is_versioned(n, "ruby") => Language::Ruby,
            n if is_versioned(n, "php") || n.starts_with("php-fpm") || n.starts_with("php-cgi") => Language::Php,
            _ => Language::Unknown,
        }
    }
}

/// `service.instance.id` of the process `pid` that started `start_time_ticks`
/// after boot (field 22 of `/proc/PID/stat`) on `host`.
pub fn instance_id(host: &str, pid: u32, start_time_ticks: u64) -> String {
    format!("{host}-{pid}-{start_time_ticks}")
}

/// Configuration that applies to every discovered service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    /// `--service-namespace`: used when the target's env sets none.
    pub namespace: Option<String>,
    /// `--service-name`: used when the target's env sets none.
    pub name_override: Option<String>,
    /// `host.name`, and the prefix of `service.instance.id`
    /// ([`super::resolve_host_name`]: the host's, not the agent container's).
    pub host_name: String,
    /// Names for the processes some criteria select (a Beyla/OBI config's
    /// `discovery` entries with a `name` or `namespace`); first match wins.
    pub rules: Vec<NamingRule>,
}

/// service.name and/or service.namespace for the processes that listen on
/// one of `ports` and whose executable matches `exe` (both, when both are
/// set: an entry of Beyla's `discovery.services` requires every criterion it
/// lists).
#[derive(Debug, Clone)]
pub struct NamingRule {
    pub ports: Option<super::PortSet>,
    pub exe: Option<super::ExeGlobs>,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

impl NamingRule {
    /// Whether the rule names this process (a rule without criteria names none).
    pub fn matches(&self, info: &ProcessInfo) -> bool {
        let port = self.ports.as_ref().map(|p| info.listening_ports.iter().any(|&l| p.contains(l)));
        let exe = self.exe.as_ref().map(|g| info.exe_path.as_deref().is_some_and(|e| g.is_match(e)));
        match (port, exe) {
            (None, None) => false,
            (p, e) => p.unwrap_or(true) && e.unwrap_or(true),
        }
    }
}

impl PartialEq for NamingRule {
    fn eq(&self, other: &Self) -> bool {
        self.ports == other.ports
            && self.exe.as_ref().map(super::ExeGlobs::patterns) == other.exe.as_ref().map(super::ExeGlobs::patterns)
            && self.name == other.name
            && self.namespace == other.namespace
    }
}

impl Eq for NamingRule {}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `%XX` decoding (W3C Baggage style; `+` stays `+`). `None` on a bad escape
/// or when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES` (`k1=v1,k2=v2`, percent-encoded keys and
/// values, whitespace around them trimmed). Malformed pairs (no `=`, empty
/// key, bad `%` escape, non-UTF-8) are skipped, not fatal. Duplicates are kept
/// in order; consumers let the last one win.
pub fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|item| {
            let (k, v) = item.split_once('=')?;
            let k = percent_decode(k.trim())?;
            let v = percent_decode(v.trim())?;
            (!k.is_empty()).then_some((k, v))
        })
        .collect()
}

/// The script/module/jar an interpreter runs, as a service name: the file
/// name without its directory and language extension (`server.js` ->
/// `server`, `/srv/app.py` -> `app`, `pkg/__main__.py` -> `pkg`), a Python
/// `-m` module as given (`http.server`), a Java main class's simple name
/// (`com.example.Shop` -> `Shop`) or `-jar` file stem, a dotnet `.dll` stem.
/// `ruby bundle exec puma` -> `puma`. `None` when `exe_name` is not an
/// interpreter or the program is inline (`-c`, `-e`, `-r`) or stdin.
pub fn interpreter_service_name(exe_name: &str, cmdline: &[String]) -> Option<String> {
    let args = cmdline.get(1..)?;
    let name = match Language::from_exe_name(exe_name) {
        Language::Nodejs => node_script(args).map(|s| stem(s, &["js", "mjs", "cjs", "ts"])),
        Language::Python => python_target(args),
        Language::Java => java_target(args),
        Language::Ruby => ruby_script(args),
        Language::Php if is_versioned(exe_name, "php") => php_script(args).map(|s| stem(s, &["php", "phar"])),
        Language::Dotnet => dotnet_dll(args),
        _ => None,
    }?;
    let name = name.trim().to_owned();
    (!name.is_empty()).then_some(name)
}

/// File name of `path` without one of `exts`; `__main__`/`index`-free.
fn stem(path: &str, exts: &[&str]) -> String {
    let p = Path::new(path);
    let file = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let base = match file.rsplit_once('.') {
        Some((b, ext)) if !b.is_empty() && exts.contains(&ext) => b.to_owned(),
        _ => file,
    };
    if base == "__main__" {
        if let Some(dir) = p.parent().and_then(Path::file_name) {
            return dir.to_string_lossy().into_owned();
        }
    }
    base
}

fn node_script(args: &[String]) -> Option<&str> {
    const WITH_VALUE: &[&str] = &[
        "-r",
        "--require",
        "--import",
        "--loader",
        "--experimental-loader",
        "-C",
        "--conditions",
        "--title",
        "--env-file",
        "--input-type",
    ];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-e" | "--eval" | "-p" | "--print" | "-" | "-i" | "--interactive" => return None,
            "--" => return it.next().map(String::as_str),
            s if WITH_VALUE.contains(&s) => {
                it.next();
            }
            s if s.starts_with('-') => {}
            s => return Some(s),
        }
    }
    None
}

fn python_target(args: &[String]) -> Option<String> {
    let script = |s: &str| stem(s, &["py", "pyc", "pyw", "pyz"]);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            return it.next().map(|s| script(s));
        }
        if a == "-" {
            return None;
        }
        if let Some(long) = a.strip_prefix("--") {
            if long == "check-hash-based-pycs" {
                it.next();
            }
            continue;
        }
        let Some(cluster) = a.strip_prefix('-') else {
            return Some(script(a));
        };
        // Short options may be clustered: `-um http.server`, `-Wignore`.
        for (i, c) in cluster.char_indices() {
            let rest = &cluster[i + c.len_utf8()..];
            match c {
                'm' => {
                    return if rest.is_empty() { it.next().cloned() } else { Some(rest.to_owned()) };
                }
                'c' => return None,
                'W' | 'X' => {
                    if rest.is_empty() {
                        it.next();
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    None
}

fn java_target(args: &[String]) -> Option<String> {
    const WITH_VALUE: &[&str] = &[
        "-cp",
        "-classpath",
        "--class-path",
        "-p",
        "--module-path",
        "--upgrade-module-path",
        "--add-modules",
        "--limit-modules",
        "--add-reads",
        "--add-exports",
        "--add-opens",
        "--patch-module",
        "--enable-native-access",
    ];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-jar" => return it.next().map(|j| stem(j, &["jar", "war"])),
            "-m" | "--module" => return it.next().map(|m| m.split('/').next().unwrap_or(m).to_owned()),
            s if WITH_VALUE.contains(&s) => {
                it.next();
            }
            s if s.starts_with('-') || s.starts_with('@') => {}
            class => {
                return Some(class.rsplit('.').next().unwrap_or(class).to_owned());
            }
        }
    }
    None
}

fn ruby_script(args: &[String]) -> Option<String> {
    const WITH_VALUE: &[&str] = &["-I", "-r", "-C", "-E", "--encoding"];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-" => return None,
            s if s.starts_with("-e") => return None,
            "--" => return it.next().map(|s| stem(s, &["rb"])),
            s if WITH_VALUE.contains(&s) => {
                it.next();
            }
            s if s.starts_with('-') => {}
            s => {
                let name = stem(s, &["rb"]);
                // `ruby .../bundle exec puma ...` runs puma.
                if name == "bundle" {
                    let mut rest = it.clone();
                    if rest.next().map(String::as_str) == Some("exec") {
                        if let Some(cmd) = rest.next() {
                            return Some(stem(cmd, &["rb"]));
                        }
                    }
                }
                return Some(name);
            }
        }
    }
    None
}

fn php_script(args: &[String]) -> Option<&str> {
    const WITH_VALUE: &[&str] = &["-c", "-d", "-z", "-t", "-S"];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-r" | "-a" | "-B" | "-R" | "-F" | "-E" => return None,
            "-f" | "--" => return it.next().map(String::as_str),
            s if WITH_VALUE.contains(&s) => {
                it.next();
            }
            s if s.starts_with('-') => {}
            s => return Some(s),
        }
    }
    None
}

fn dotnet_dll(args: &[String]) -> Option<String> {
    const EXEC_WITH_VALUE: &[&str] =
        &["--runtimeconfig", "--depsfile", "--additionalprobingpath", "--fx-version", "--roll-forward"];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "exec" => {}
            s if EXEC_WITH_VALUE.contains(&s) => {
                it.next();
            }
            s if s.starts_with('-') => {}
            s if s.to_ascii_lowercase().ends_with(".dll") => return Some(stem(s, &["dll", "DLL"])),
            _ => return None, // `dotnet run`, `dotnet watch`, ...
        }
    }
    None
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

/// The Resource of one process. Attribute order: service.name,
/// service.namespace (if any), service.instance.id, process.pid,
/// process.executable.name, process.executable.path (if known),
/// process.command, host.name, telemetry.sdk.{name,version,language}, then
/// the remaining `OTEL_RESOURCE_ATTRIBUTES` pairs of the target (last
/// duplicate wins; never overriding the keys above).
pub fn build_service(info: &ProcessInfo, opts: &ServiceOptions) -> Service {
    build_service_in_pod(info, opts, None)
}

/// A Resource, and whether Kubernetes metadata it could use is still missing.
#[derive(Debug, Clone)]
pub struct ResolvedService {
    pub service: Service,
    /// The process runs in a pod (its cgroup says so) whose metadata, or its
    /// container's entry in the pod status, is not known yet: build the
    /// Resource again once [`KubernetesMetadata::generation`] has moved.
    pub awaiting_kubernetes: bool,
}

/// The Resource of a process, with its pod's metadata when `kubernetes` knows
/// it. The metadata may arrive after the process is discovered (a new pod's
/// container is running before the kubelet reports its id, and the watch
/// event follows); `awaiting_kubernetes` tells the caller to try again on a
/// later discovery scan.
pub fn resolve_service(
    info: &ProcessInfo,
    opts: &ServiceOptions,
    kubernetes: Option<&KubernetesMetadata>,
) -> ResolvedService {
    let (Some(kubernetes), Some(container)) = (kubernetes, info.container.as_ref()) else {
        return ResolvedService { service: build_service(info, opts), awaiting_kubernetes: false };
    };
    let found = kubernetes.find(container);
    let in_pod = container.pod_uid.is_some();
    let awaiting = match &found {
        None => in_pod,
        Some(m) => container.container_id.is_some() && m.container_name.is_none(),
    };
    let k8s = found.map(|m| kubernetes.resource_of(&m));
    ResolvedService { service: build_service_in_pod(info, opts, k8s.as_ref()), awaiting_kubernetes: awaiting }
}

/// [`build_service`] for a process whose pod is known: `k8s` adds the
/// `k8s.*` attributes after `telemetry.sdk.language` and takes part in the
/// name and namespace (after the target's own environment). Without it, a
/// process in a container still gets `container.id`.
pub fn build_service_in_pod(info: &ProcessInfo, opts: &ServiceOptions, k8s: Option<&KubernetesResource>) -> Service {
    let env = &info.env_resource_attrs;
    let env_get = |key: &str| env.iter().rev().find(|(k, _)| k == key).and_then(|(_, v)| non_empty(v));

    let exe_name = non_empty(&info.exe_name).or_else(|| non_empty(&info.comm));
    let rule = |field: fn(&NamingRule) -> Option<&String>| {
        opts.rules.iter().filter(|r| r.matches(info)).find_map(|r| field(r).map(String::as_str).and_then(non_empty))
    };
    let name = info
        .env_service_name
        .as_deref()
        .and_then(non_empty)
        .or_else(|| env_get(semconv::SERVICE_NAME))
        .or_else(|| k8s.and_then(|k| non_empty(&k.service_name)))
        .or_else(|| rule(|r| r.name.as_ref()))
        .or_else(|| opts.name_override.as_deref().and_then(non_empty))
        .map(str::to_owned)
        .or_else(|| exe_name.and_then(|e| interpreter_service_name(e, &info.cmdline)))
        .or_else(|| exe_name.map(str::to_owned))
        .unwrap_or_else(|| "unknown_service".to_owned());

    let namespace = env_get(semconv::SERVICE_NAMESPACE)
        .or_else(|| k8s.and_then(|k| non_empty(&k.service_namespace)))
        .or_else(|| rule(|r| r.namespace.as_ref()))
        .or_else(|| opts.namespace.as_deref().and_then(non_empty))
        .map(str::to_owned);

    let instance_id = instance_id(&opts.host_name, info.pid, info.start_time_ticks);

    let language = match info.language {
        Language::Unknown => Language::from_exe_name(&info.exe_name),
        l => l,
    };

    let k8s_len = k8s.map_or(1, |k| k.attributes.len());
    let mut attrs: Vec<(String, AttrValue)> = Vec::with_capacity(12 + k8s_len + env.len());
    let mut push = |k: &str, v: AttrValue| attrs.push((k.to_owned(), v));
    push(semconv::PROCESS_PID, AttrValue::Int(i64::from(info.pid)));
    push(semconv::PROCESS_EXECUTABLE_NAME, exe_name.unwrap_or_default().into());
    if let Some(p) = &info.exe_path {
        push(semconv::PROCESS_EXECUTABLE_PATH, p.to_string_lossy().into_owned().into());
    }
    let command = info.cmdline.first().map(String::as_str).and_then(non_empty).unwrap_or(&info.comm);
    push(semconv::PROCESS_COMMAND, command.into());
    push(semconv::HOST_NAME, opts.host_name.as_str().into());
    push(semconv::TELEMETRY_SDK_NAME, "periscope".into());
    push(semconv::TELEMETRY_SDK_VERSION, env!("CARGO_PKG_VERSION").into());
    push(semconv::TELEMETRY_SDK_LANGUAGE, language.as_str().into());
    match k8s {
        Some(k) => attrs.extend(k.attributes.iter().cloned()),
        None => {
            if let Some(id) = info.container.as_ref().and_then(|c| c.container_id.as_deref()) {
                attrs.push((semconv::CONTAINER_ID.to_owned(), id.into()));
            }
        }
    }

    let fixed = attrs.len();
    for (k, v) in env {
        // The service's identities are its fields (name and namespace came
        // from these same variables above).
        let own = [semconv::SERVICE_NAME, semconv::SERVICE_NAMESPACE, semconv::SERVICE_INSTANCE_ID];
        if own.contains(&k.as_str()) || attrs[..fixed].iter().any(|(a, _)| a == k) {
            continue;
        }
        match attrs[fixed..].iter_mut().find(|(a, _)| a == k) {
            Some(slot) => slot.1 = v.clone().into(),
            None => attrs.push((k.clone(), v.clone().into())),
        }
    }

    Service { name, namespace, instance_id, attributes: attrs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn opts() -> ServiceOptions {
        ServiceOptions { namespace: None, name_override: None, host_name: "box".into(), rules: Vec::new() }
    }

    fn proc_info(exe: &str, cmdline: &[&str]) -> ProcessInfo {
        ProcessInfo {
            pid: 4242,
            ppid: 1,
            start_time_ticks: 98_765,
            comm: Path::new(exe).file_name().unwrap().to_string_lossy()[..].chars().take(15).collect(),
            exe_path: Some(exe.into()),
            exe_name: Path::new(exe).file_name().unwrap().to_string_lossy().into_owned(),
            cmdline: s(cmdline),
            ..ProcessInfo::default()
        }
    }

    /// A resource attribute, the service's own identities included.
    fn attr(svc: &Service, key: &str) -> Option<AttrValue> {
        svc.resource_attributes().find(|(k, _)| *k == key).map(|(_, v)| v.into_owned())
    }

    #[test]
    fn resource_attributes_parsing() {
        assert_eq!(
            parse_resource_attributes("service.name=shop, deployment.environment = prod ,team=a%2Cb%3Dc"),
            pairs(&[("service.name", "shop"), ("deployment.environment", "prod"), ("team", "a,b=c")])
        );
        // Percent-encoded UTF-8 and keys; `+` is literal.
        assert_eq!(parse_resource_attributes("k%20ey=caf%C3%A9,plus=a+b"), pairs(&[("k ey", "café"), ("plus", "a+b")]));
        // Malformed pairs are skipped, the rest kept.
        assert_eq!(
            parse_resource_attributes("novalue,=nokey,bad=%ZZ,trunc=%4,inv=%FF,,ok=1,empty="),
            pairs(&[("ok", "1"), ("empty", "")])
        );
        // `=` inside a value: split at the first one.
        assert_eq!(parse_resource_attributes("a=b=c"), pairs(&[("a", "b=c")]));
        assert!(parse_resource_attributes("").is_empty());
    }

    #[test]
    fn name_precedence() {
        let mut info = proc_info("/usr/bin/myserver", &["myserver", "--port", "80"]);
        let mut o = opts();
        assert_eq!(build_service(&info, &o).name, "myserver");
        o.name_override = Some("override".into());
        assert_eq!(build_service(&info, &o).name, "override");
        info.env_resource_attrs = pairs(&[("service.name", "from-attrs")]);
        assert_eq!(build_service(&info, &o).name, "from-attrs");
        info.env_service_name = Some("from-env".into());
        assert_eq!(build_service(&info, &o).name, "from-env");
        // Empty values count as unset.
        info.env_service_name = Some("  ".into());
        assert_eq!(build_service(&info, &o).name, "from-attrs");
        info.env_resource_attrs = pairs(&[("service.name", "")]);
        assert_eq!(build_service(&info, &o).name, "override");
        o.name_override = Some(String::new());
        assert_eq!(build_service(&info, &o).name, "myserver");
        // No exe path: comm.
        info.exe_path = None;
        info.exe_name = String::new();
        info.comm = "worker".into();
        assert_eq!(build_service(&info, &o).name, "worker");
    }

    #[test]
    fn namespace_precedence() {
        let mut info = proc_info("/usr/bin/x", &["x"]);
        let mut o = opts();
        let svc = build_service(&info, &o);
        assert_eq!(svc.namespace, None);
        assert!(attr(&svc, "service.namespace").is_none());
        o.namespace = Some("cli-ns".into());
        assert_eq!(build_service(&info, &o).namespace.as_deref(), Some("cli-ns"));
        info.env_resource_attrs = pairs(&[("service.namespace", "env-ns")]);
        let svc = build_service(&info, &o);
        assert_eq!(svc.namespace.as_deref(), Some("env-ns"));
        assert_eq!(attr(&svc, "service.namespace"), Some(AttrValue::from("env-ns")));
    }

    #[test]
    fn attributes_in_order() {
        let mut info = proc_info("/usr/bin/python3.11", &["python3", "app.py"]);
        info.env_resource_attrs = pairs(&[
            ("deployment.environment", "staging"),
            ("host.name", "spoofed"),
            ("service.instance.id", "spoofed"),
            ("telemetry.sdk.language", "spoofed"),
            ("service.namespace", "shop"),
            ("team", "a"),
            ("deployment.environment", "prod"),
        ]);
        let svc = build_service(&info, &opts());
        let keys: Vec<&str> = svc.resource_attributes().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "service.name",
                "service.namespace",
                "service.instance.id",
                "process.pid",
                "process.executable.name",
                "process.executable.path",
                "process.command",
                "host.name",
                "telemetry.sdk.name",
                "telemetry.sdk.version",
                "telemetry.sdk.language",
                "deployment.environment",
                "team",
            ]
        );
        assert_eq!(svc.name, "app");
        assert_eq!(svc.instance_id, "box-4242-98765");
        assert_eq!(attr(&svc, "service.instance.id"), Some(AttrValue::from("box-4242-98765")));
        assert_eq!(attr(&svc, "process.pid"), Some(AttrValue::Int(4242)));
        assert_eq!(attr(&svc, "process.executable.name"), Some(AttrValue::from("python3.11")));
        assert_eq!(attr(&svc, "process.executable.path"), Some(AttrValue::from("/usr/bin/python3.11")));
        assert_eq!(attr(&svc, "process.command"), Some(AttrValue::from("python3")));
        assert_eq!(attr(&svc, "host.name"), Some(AttrValue::from("box")));
        assert_eq!(attr(&svc, "telemetry.sdk.name"), Some(AttrValue::from("periscope")));
        assert_eq!(attr(&svc, "telemetry.sdk.language"), Some(AttrValue::from("python")));
        assert_eq!(attr(&svc, "deployment.environment"), Some(AttrValue::from("prod")));
        assert_eq!(svc.namespace.as_deref(), Some("shop"));

        // Unknown exe path: no process.executable.path; Go from ProcessInfo.
        info.exe_path = None;
        info.exe_name = "api".into();
        info.language = Language::Go;
        let svc = build_service(&info, &opts());
        assert!(attr(&svc, "process.executable.path").is_none());
        assert_eq!(attr(&svc, "telemetry.sdk.language"), Some(AttrValue::from("go")));
    }

    #[test]
    fn languages() {
        for (exe, lang) in [
            ("node", "nodejs"),
            ("nodejs", "nodejs"),
            ("python", "python"),
            ("python3", "python"),
            ("python3.12", "python"),
            ("java", "java"),
            ("ruby", "ruby"),
            ("ruby3.2", "ruby"),
            ("php", "php"),
            ("php8.2", "php"),
            ("php-fpm8.2", "php"),
            ("dotnet", "dotnet"),
            ("nginx", "unknown"),
            ("pythonista", "unknown"),
            ("nodemon", "unknown"),
        ] {
            assert_eq!(Language::from_exe_name(exe).as_str(), lang, "{exe}");
        }
    }

    #[test]
    fn interpreter_names() {
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            ("node", &["node", "server.js"], Some("server")),
            (
                "node",
                &["node", "--inspect=9229", "-r", "dotenv/config", "/srv/api/main.mjs", "--port", "3"],
                Some("main"),
            ),
            ("node", &["node", "-e", "console.log(1)"], None),
            ("node", &["node"], None),
            ("python3", &["python3", "-m", "http.server", "8000"], Some("http.server")),
            ("python3.11", &["python3", "app.py"], Some("app")),
            ("python3", &["python3", "-u", "-X", "dev", "-W", "ignore", "/srv/app.py"], Some("app")),
            ("python3", &["python3", "-um", "uvicorn", "main:app"], Some("uvicorn")),
            ("python3", &["python3", "-mhttp.server"], Some("http.server")),
            ("python3", &["python3", "-Wignore", "srv.py"], Some("srv")),
            ("python3", &["python3", "-c", "import x"], None),
            ("python3", &["python3", "/srv/pkg/__main__.py"], Some("pkg")),
            ("python", &["/usr/bin/python", "/usr/local/bin/gunicorn", "app:app"], Some("gunicorn")),
            ("java", &["java", "-Xmx1g", "-cp", "a.jar:b.jar", "com.example.Shop"], Some("Shop")),
            ("java", &["java", "-Dx=y", "-jar", "/opt/billing-1.2.jar"], Some("billing-1.2")),
            ("java", &["java", "-m", "org.app/org.app.Main"], Some("org.app")),
            ("ruby", &["ruby", "-Ilib", "app.rb"], Some("app")),
            ("ruby", &["ruby", "/usr/local/bin/bundle", "exec", "puma", "-C", "x"], Some("puma")),
            ("ruby", &["ruby", "-e", "puts 1"], None),
            ("php", &["php", "artisan", "serve"], Some("artisan")),
            ("php8.2", &["php", "-d", "x=1", "-f", "/var/www/index.php"], Some("index")),
            ("php", &["php", "-S", "0.0.0.0:8000", "-t", "public"], None),
            ("php-fpm8.2", &["php-fpm: master process"], None),
            ("dotnet", &["dotnet", "Api.dll"], Some("Api")),
            ("dotnet", &["dotnet", "exec", "--depsfile", "x.json", "/app/Orders.dll"], Some("Orders")),
            ("dotnet", &["dotnet", "run"], None),
            ("nginx", &["nginx", "-g", "daemon off;"], None),
        ];
        for (exe, cmd, want) in cases {
            assert_eq!(interpreter_service_name(exe, &s(cmd)).as_deref(), *want, "{exe} {cmd:?}");
        }
    }

    #[test]
    fn interpreter_naming_in_service() {
        let o = opts();
        let svc = build_service(&proc_info("/usr/bin/node", &["node", "server.js"]), &o);
        assert_eq!(svc.name, "server");
        assert_eq!(attr(&svc, "telemetry.sdk.language"), Some(AttrValue::from("nodejs")));
        let svc = build_service(&proc_info("/usr/bin/python3", &["python3", "-c", "x"]), &o);
        assert_eq!(svc.name, "python3");
        // The override still beats the script name.
        let o = ServiceOptions { name_override: Some("ovr".into()), ..opts() };
        assert_eq!(build_service(&proc_info("/usr/bin/node", &["node", "a.js"]), &o).name, "ovr");
    }

    #[test]
    fn kubernetes_part_of_the_resource() {
        let k8s = KubernetesResource {
            service_name: "checkout".into(),
            service_namespace: "shop".into(),
            attributes: vec![
                ("k8s.namespace.name".into(), "shop".into()),
                ("k8s.pod.name".into(), "checkout-7d9f8b6c5-x2x9q".into()),
                ("container.id".into(), "c1".into()),
            ],
        };
        let mut info = proc_info("/usr/bin/node", &["node", "server.js"]);
        info.env_resource_attrs = pairs(&[("k8s.pod.name", "spoofed"), ("team", "a")]);
        let o = ServiceOptions { name_override: Some("ovr".into()), namespace: Some("cli-ns".into()), ..opts() };
        let svc = build_service_in_pod(&info, &o, Some(&k8s));
        assert_eq!(
            (svc.name.as_str(), svc.namespace.as_deref()),
            ("checkout", Some("shop")),
            "the pod beats the flags"
        );
        let keys: Vec<&str> = svc.resource_attributes().map(|(k, _)| k).collect();
        assert_eq!(
            &keys[10..],
            ["telemetry.sdk.language", "k8s.namespace.name", "k8s.pod.name", "container.id", "team"]
        );
        assert_eq!(attr(&svc, "k8s.pod.name"), Some(AttrValue::from("checkout-7d9f8b6c5-x2x9q")));
        // The process's own environment beats the pod.
        info.env_service_name = Some("from-env".into());
        info.env_resource_attrs.push(("service.namespace".into(), "env-ns".into()));
        let svc = build_service_in_pod(&info, &o, Some(&k8s));
        assert_eq!((svc.name.as_str(), svc.namespace.as_deref()), ("from-env", Some("env-ns")));
        // Not in a known pod: container.id alone, when in a container.
        info.container = Some(crate::kubernetes::ContainerRef { container_id: Some("c2".into()), pod_uid: None });
        let svc = build_service(&info, &o);
        assert_eq!(attr(&svc, "container.id"), Some(AttrValue::from("c2")));
        assert_eq!(attr(&svc, "k8s.pod.name"), Some(AttrValue::from("spoofed")), "only the env's own");
        let resolved = resolve_service(&info, &o, None);
        assert!(!resolved.awaiting_kubernetes);
    }

    /// Beyla's per-entry names: a process selected by an entry's criteria
    /// (all of them) takes its name and namespace, after the process's own
    /// environment and before --service-name / --service-namespace.
    #[test]
    fn naming_rules_name_the_processes_their_criteria_select() {
        let rule = |ports: Option<&str>, exe: Option<&str>, name: &str, ns: Option<&str>| NamingRule {
            ports: ports.map(|p| p.parse().unwrap()),
            exe: exe.map(|g| crate::discovery::ExeGlobs::new([g]).unwrap()),
            name: Some(name.into()),
            namespace: ns.map(Into::into),
        };
        let o = ServiceOptions {
            name_override: Some("ovr".into()),
            namespace: Some("cli-ns".into()),
            rules: vec![
                rule(Some("4000"), None, "server", Some("mythical")),
                rule(Some("4001"), Some("*/python3*"), "both-needed", None),
                rule(None, Some("*/node"), "any-node", None),
            ],
            ..opts()
        };
        let mut info = proc_info("/usr/bin/node", &["node", "index.js"]);
        info.listening_ports = vec![4000];
        let svc = build_service(&info, &o);
        assert_eq!((svc.name.as_str(), svc.namespace.as_deref()), ("server", Some("mythical")));
        // Port 4001 alone is not enough for the second rule: the third names it.
        info.listening_ports = vec![4001];
        let svc = build_service(&info, &o);
        assert_eq!((svc.name.as_str(), svc.namespace.as_deref()), ("any-node", Some("cli-ns")));
        // No rule: the override.
        let info = proc_info("/usr/bin/ruby", &["ruby", "app.rb"]);
        assert_eq!(build_service(&info, &o).name, "ovr");
        // The process's own OTEL_SERVICE_NAME still comes first.
        let mut info = proc_info("/usr/bin/node", &["node", "index.js"]);
        info.listening_ports = vec![4000];
        info.env_service_name = Some("own".into());
        assert_eq!(build_service(&info, &o).name, "own");
        assert!(!NamingRule { ports: None, exe: None, name: Some("x".into()), namespace: None }.matches(&info));
    }
}
