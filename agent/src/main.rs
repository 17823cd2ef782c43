//! `periscope`: parse the configuration, start the stages, wait for a signal.
use std::process::ExitCode;

fn main() -> ExitCode {
    let settings = match periscope::config::Settings::from_args(std::env::args_os()) {
        Ok(s) => s,
        Err(periscope::config::ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("periscope: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    periscope::run::init_logging(&settings.raw.log_level);
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
