//! `host.name` comes from the host, not from the agent's container: the
//! agent runs in a UTS namespace of its own (as in a container) inside a PID
//! namespace whose pid 1 keeps another UTS namespace, the "host's" (as with
//! `pid: host`). Namespaces made with util-linux `unshare`; root only.
use std::process::Command;

const HOST: &str = "periscope-test-host";
const CONTAINER: &str = "periscope-test-ctr";

/// `--check-config`'s `host.name:` line of an agent started by `agent` (a
/// shell command line run in the container namespace), with `env` set.
fn host_name_line(agent: &str, env: &[(&str, &str)]) -> String {
    let periscope = env!("CARGO_BIN_EXE_periscope");
    // The outer shell is pid 1 of the new PID namespace and must stay in the
    // "host" UTS namespace: its last command is `exit`, so it never execs the
    // inner unshare (which would move pid 1 itself).
    let script = format!(
        "echo {HOST} > /proc/sys/kernel/hostname; \
         unshare --uts sh -c 'echo {CONTAINER} > /proc/sys/kernel/hostname; exec {agent}'; \
         status=$?; exit $status"
    );
    let script = script.replace("PERISCOPE", periscope);
    let out = Command::new("unshare")
        .args(["--uts", "--pid", "--fork", "--mount-proc", "sh", "-c", &script])
        .envs(env.iter().copied())
        .output()
        .expect("unshare (util-linux) is needed");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .find(|l| l.starts_with("host.name: "))
        .unwrap_or_else(|| panic!("no host.name line:\n{stdout}"))
        .to_owned()
}

#[test]
fn host_name_is_the_hosts_not_the_containers() {
    let line = host_name_line("PERISCOPE --check-config --pid 1", &[]);
    assert_eq!(line, format!("host.name: {HOST} (from the host's UTS namespace, through /proc/1/ns/uts)"));
}

#[test]
fn settings_come_before_the_namespace() {
    let line = host_name_line("PERISCOPE --check-config --pid 1", &[("NODE_NAME", "node-7")]);
    assert_eq!(line, "host.name: node-7 (from NODE_NAME)");
    let line = host_name_line("PERISCOPE --check-config --pid 1 --host-name given", &[("NODE_NAME", "node-7")]);
    assert_eq!(line, "host.name: given (from --host-name)");
    let line = host_name_line("PERISCOPE --check-config --pid 1", &[("PERISCOPE_HOST_NAME", "from-env")]);
    assert_eq!(line, "host.name: from-env (from --host-name)");
}

/// deploy/'s capability set has no CAP_SYS_ADMIN, so joining pid 1's UTS
/// namespace is refused: the agent keeps the container's name and says what
/// to set instead (the compose overlay sets `uts: host`, the DaemonSet NODE_NAME).
#[test]
fn without_sys_admin_the_container_name_is_kept_and_the_fix_named() {
    let agent = "setpriv --bounding-set -all,+bpf,+perfmon,+sys_ptrace,+dac_read_search --inh-caps -all \
                 PERISCOPE --check-config --pid 1";
    let line = host_name_line(agent, &[]);
    assert!(line.starts_with(&format!("host.name: {CONTAINER} (this container's own UTS namespace: ")), "{line}");
    assert!(line.contains("joining pid 1's UTS namespace failed: Operation not permitted"), "{line}");
    assert!(line.contains("set NODE_NAME or --host-name, run with uts: host"), "{line}");
}
