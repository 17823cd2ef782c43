//! The agent itself: logging, priority, discovery pace, connection limit,
//! `--check-config`.
use std::time::Duration;

/// The agent flags.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// Milliseconds between scans for new processes to watch.
    #[arg(long, env = "PERISCOPE_DISCOVERY_INTERVAL", default_value_t = 500)]
    pub discovery_interval: u64,

    /// Connections tracked at once (oldest evicted beyond).
    #[arg(long, env = "PERISCOPE_MAX_CONNECTIONS", default_value_t = 65536)]
    pub max_connections: usize,

    /// Scheduling priority of the agent (-20..19; negative needs root or
    /// CAP_SYS_NICE). On a saturated host the fair scheduler may give the
    /// agent less CPU than it needs, and the kernel drops events (counted);
    /// e.g. -5 puts it ahead of the workload. 0 leaves it as started.
    #[arg(long, env = "PERISCOPE_NICE", default_value_t = 0, allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: i32,

    /// Log filter (error, warn, info, debug, or a tracing EnvFilter).
    #[arg(long, env = "PERISCOPE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Validate the configuration (flags, environment, file), print it and
    /// the host checks, then exit: 0 if the configuration is valid.
    #[arg(long)]
    pub check_config: bool,
}

/// The agent group resolved.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// Between scans of /proc for processes to watch.
    pub discovery_interval: Duration,
    /// Connections tracked at once.
    pub max_connections: usize,
    /// The agent's nice value; 0 leaves it as started.
    pub nice: i32,
    /// A tracing `EnvFilter`.
    pub log_level: String,
    /// Validate, print and exit instead of running.
    pub check_config: bool,
}

impl AgentArgs {
    /// Nothing here can be wrong once clap accepted it.
    pub fn resolve(&self) -> AgentSettings {
        AgentSettings {
            discovery_interval: Duration::from_millis(self.discovery_interval),
            max_connections: self.max_connections,
            nice: self.nice,
            log_level: self.log_level.clone(),
            check_config: self.check_config,
        }
    }
}
