//! Trace context: head sampling and how long spans wait for their links
//! (`--traces-sampler*`, `--trace-link-wait`, `--trace-max-wait`, `--libuv-uprobes`, `--asyncio-uprobes`).
use std::time::Duration;

use crate::context::sampler::Sampler;

use super::ConfigError;

/// The trace-context flags.
#[derive(Clone, Debug, clap::Args)]
pub struct ContextArgs {
    /// Head sampler, as in the OpenTelemetry SDKs: always_on, always_off,
    /// traceidratio, parentbased_always_on (default), parentbased_always_off,
    /// parentbased_traceidratio. Metrics always count every request.
    #[arg(long, env = "OTEL_TRACES_SAMPLER", default_value = "parentbased_always_on")]
    pub traces_sampler: String,

    /// The sampler's argument (the ratio for the *traceidratio samplers).
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub traces_sampler_arg: Option<String>,

    /// Milliseconds a server span waits for its caller's client span when the
    /// caller is another tracked process on this host (late partners are counted).
    #[arg(long, env = "PERISCOPE_TRACE_LINK_WAIT", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub trace_link_wait: u64,

    /// Milliseconds at most that a request's finished child spans are held
    /// back until the request's trace id is known.
    #[arg(long, env = "PERISCOPE_TRACE_MAX_WAIT", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub trace_max_wait: u64,

    /// Follow libuv's thread pool (Node.js dns.lookup, fs, crypto callbacks)
    /// with uprobes on the watched processes that embed or load libuv.
    #[arg(long, env = "PERISCOPE_LIBUV_UPROBES", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub libuv_uprobes: bool,

    /// Follow CPython 3.11 asyncio Tasks (which task works for which request)
    /// with uprobes on the `_asyncio` module of watched processes.
    #[arg(long, env = "PERISCOPE_ASYNCIO_UPROBES", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub asyncio_uprobes: bool,

    /// Go processes: follow goroutines (uprobes on the Go runtime) so that
    /// the goroutine, not the OS thread, carries the current request. Off:
    /// per-thread context, wrong under concurrency (goroutines move between
    /// threads).
    #[arg(long, env = "PERISCOPE_GO_RUNTIME", default_value_t = true, action = clap::ArgAction::Set)]
    pub go_runtime: bool,
}

/// The trace-context group resolved.
#[derive(Clone, Copy, Debug)]
pub struct ContextSettings {
    /// The head sampler of new traces.
    pub sampler: Sampler,
    /// How long a server span waits for its caller's client span.
    pub link_wait: Duration,
    /// How long finished child spans are held back for their trace id.
    pub max_wait: Duration,
    /// Whether libuv's thread-pool hops are followed with uprobes.
    pub libuv_uprobes: bool,
    /// Whether asyncio Tasks are followed with uprobes.
    pub asyncio_uprobes: bool,
    /// Whether Go processes get the runtime uprobes (goroutine context).
    pub go_runtime: bool,
}

impl ContextArgs {
    /// Parses the sampler and its argument.
    pub fn resolve(&self) -> Result<ContextSettings, ConfigError> {
        let sampler = Sampler::parse(&self.traces_sampler, self.traces_sampler_arg.as_deref())
            .map_err(|e| ConfigError::Invalid { key: "traces-sampler", message: e.to_string() })?;
        Ok(ContextSettings {
            sampler,
            link_wait: Duration::from_millis(self.trace_link_wait),
            max_wait: Duration::from_millis(self.trace_max_wait),
            libuv_uprobes: self.libuv_uprobes,
            asyncio_uprobes: self.asyncio_uprobes,
            go_runtime: self.go_runtime,
        })
    }
}
