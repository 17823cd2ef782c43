//! Capture: bytes per syscall and the kernel ring buffer (`--capture-size`,
//! `--ring-buffer-*`).
use std::time::Duration;

use crate::probes::ProbeConfig;

use super::ConfigError;

/// The capture flags.
#[derive(Clone, Debug, clap::Args)]
pub struct CaptureArgs {
    /// Bytes captured per syscall (1-4096). Larger sees longer heads, costs more.
    #[arg(long, env = "PERISCOPE_CAPTURE_SIZE", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub capture_size: u32,

    /// Kernel ring buffer size in bytes (power of two).
    #[arg(long, env = "PERISCOPE_RING_BUFFER_SIZE", default_value_t = 8 * 1024 * 1024)]
    pub ring_buffer_size: u32,

    /// Bytes of events waiting in the ring buffer before the kernel wakes the agent.
    #[arg(long, env = "PERISCOPE_RING_BUFFER_WAKEUP_BYTES", default_value_t = 64 * 1024)]
    pub ring_buffer_wakeup_bytes: u32,

    /// Milliseconds between drains of the ring buffer when the kernel does not wake the agent.
    #[arg(long, env = "PERISCOPE_RING_BUFFER_DRAIN_INTERVAL", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub ring_buffer_drain_interval: u64,
}

/// The capture group resolved.
#[derive(Clone, Debug)]
pub struct CaptureSettings {
    /// What the kernel side is loaded with.
    pub probes: ProbeConfig,
    /// Between drains of the ring buffer when no wakeup came.
    pub drain_interval: Duration,
}

impl CaptureArgs {
    /// Checks the ring buffer size (a power of two of at least a page).
    pub fn resolve(&self) -> Result<CaptureSettings, ConfigError> {
        if !self.ring_buffer_size.is_power_of_two() || self.ring_buffer_size < 4096 {
            return Err(ConfigError::Invalid {
                key: "ring-buffer-size",
                message: format!("{} is not a power of two of at least 4096", self.ring_buffer_size),
            });
        }
        Ok(CaptureSettings {
            probes: ProbeConfig {
                capture_size: self.capture_size,
                ring_buffer_bytes: self.ring_buffer_size,
                wakeup_bytes: self.ring_buffer_wakeup_bytes,
            },
            drain_interval: Duration::from_millis(self.ring_buffer_drain_interval),
        })
    }
}
