//! `cargo xtask <command>`: project chores. Each command lives in its own module.
mod bench;
mod cmd;
mod compare;
mod demo;
mod deploy_check;
mod deps;
mod fuzz;
mod mythical;
mod otlp_sink;
/// The container test's podman helpers, shared with `demo --containers`.
#[path = "../../agent/tests/support/podman.rs"]
mod podman;
mod soak;
mod test;

use clap::Parser;

#[derive(Parser)]
#[command(name = "xtask", about = "periscope build, demo and test helpers")]
enum Command {
    /// Install what building and testing need (apt packages, tracefs).
    Deps(deps::Options),
    /// Run the whole test suite, kernel tests included (needs root).
    Test(test::Options),
    /// Fuzz the protocol parsers (cargo-fuzz / libFuzzer).
    Fuzz(fuzz::Options),
    /// Long reliability runs: a dead OTLP endpoint for minutes, 1000 short-lived processes.
    Soak(soak::Options),
    /// Measure the agent's overhead with interleaved A/B runs.
    Bench(bench::Options),
    /// Watch real uninstrumented services and show their spans and RED metrics.
    Demo(demo::Options),
    /// Lint and validate deploy/ (Dockerfile, compose, Kubernetes, dashboards) without Docker.
    DeployCheck(deploy_check::Options),
    /// The Mythical services under the OpenTelemetry Node SDK and periscope at once: spans compared.
    Compare(compare::Options),
}

fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::Deps(o) => deps::run(o),
        Command::Test(o) => test::run(o),
        Command::Demo(o) => demo::run(o),
        Command::Bench(o) => bench::run(o),
        Command::Fuzz(o) => fuzz::run(o),
        Command::Soak(o) => soak::run(o),
        Command::DeployCheck(o) => deploy_check::run(o),
        Command::Compare(o) => compare::run(o),
    }
}
