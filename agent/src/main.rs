//! `periscope`: parse the configuration, start the stages, wait for a signal.
use std::process::ExitCode;

fn main() -> ExitCode {
    // One TLS provider for the whole process (ring), whatever client asks first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = match periscope::config::Settings::from_args(std::env::args_os()) {
        Ok(s) => s,
        Err(periscope::config::ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("periscope: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    periscope::run::init_logging(&settings.agent.log_level);
    let env_names: Vec<String> = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect();
    // Beyla/OBI variables read as aliases, keys of a Beyla/OBI file ignored.
    for note in &settings.notes {
        tracing::info!("{note}");
    }
    if settings.agent.check_config {
        return check_config(&settings, &env_names);
    }
    for line in periscope::config::unknown_env_vars(env_names.iter().map(String::as_str)) {
        tracing::warn!("{line}");
    }
    if settings.agent.nice != 0 {
        // Before any thread starts: they all inherit it.
        // SAFETY: setpriority(2) on the calling thread, no pointers.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, settings.agent.nice) } != 0 {
            tracing::warn!(
                nice = settings.agent.nice,
                "cannot change the agent's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("periscope: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(periscope::run::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("periscope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: the configuration (exit 0 valid, 2 invalid), then the
/// host checks for information (they do not change the exit code).
fn check_config(settings: &periscope::config::Settings, env_names: &[String]) -> ExitCode {
    match periscope::preflight::config_report(settings, env_names.iter().map(String::as_str)) {
        Ok(lines) => {
            println!("configuration is valid");
            lines.iter().for_each(|l| println!("  {l}"));
            let findings = periscope::preflight::evaluate(&periscope::preflight::HostFacts::read());
            if findings.is_empty() {
                println!("host checks: ok");
            } else {
                println!("host checks (for information):");
                findings.iter().for_each(|f| println!("  {f}"));
            }
            println!("host.name: {} ({})", settings.host.name, settings.host.source);
            ExitCode::SUCCESS
        }
        Err(problems) => {
            problems.iter().for_each(|p| eprintln!("periscope: configuration error: {p}"));
            ExitCode::from(2)
        }
    }
}
