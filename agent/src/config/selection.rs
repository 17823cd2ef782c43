//! Which processes to watch: `--open-port`, `--exe-path`, `--pid` (and the
//! Kubernetes pod selector, added by [`super::Settings`]).
use crate::discovery::{PortSet, Selector};

use super::ConfigError;

/// The selection flags.
#[derive(Clone, Debug, clap::Args)]
pub struct SelectionArgs {
    /// Watch processes listening on these TCP ports: "80,443,8000-8999".
    #[arg(long, env = "PERISCOPE_OPEN_PORT", value_name = "PORTS")]
    pub open_port: Option<String>,

    /// Watch processes whose executable path matches a glob (comma-separated).
    #[arg(long, env = "PERISCOPE_EXE_PATH", value_name = "GLOB", value_delimiter = ',')]
    pub exe_path: Vec<String>,

    /// Watch these process ids (comma-separated).
    #[arg(long, env = "PERISCOPE_PID", value_name = "PID", value_delimiter = ',')]
    pub pid: Vec<u32>,
}

impl SelectionArgs {
    /// The selector of ports, executables and pids (no pod criterion yet).
    pub fn resolve(&self) -> Result<Selector, ConfigError> {
        // Parsed alone first so that a bad port list is named as such.
        let open_port = self
            .open_port
            .as_deref()
            .map(|p| p.parse::<PortSet>())
            .transpose()
            .map_err(|e| ConfigError::Invalid { key: "open-port", message: e.to_string() })?;
        let selector = Selector::from_parts(self.open_port.as_deref(), &self.exe_path, &self.pid)
            .map_err(|e| ConfigError::Invalid { key: "exe-path", message: e.to_string() })?;
        debug_assert_eq!(open_port.is_some(), selector.open_ports.is_some());
        Ok(selector)
    }
}

/// Fails when `selector` (pods included) selects nothing.
pub fn ensure_something_to_watch(selector: &Selector) -> Result<(), ConfigError> {
    if selector.is_empty() {
        return Err(ConfigError::Invalid {
            key: "open-port",
            message:
                "nothing to watch: give --open-port, --exe-path, --pid or --kubernetes-namespace/-pod-label/-owner-name"
                    .into(),
        });
    }
    Ok(())
}
