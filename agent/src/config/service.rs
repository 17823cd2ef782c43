//! Service naming: `--service-name`, `--service-namespace`.
use crate::discovery::ServiceOptions;

/// The service-naming flags.
#[derive(Clone, Debug, clap::Args)]
pub struct ServiceArgs {
    /// service.name for every watched process, instead of the one found in
    /// the process's own OTEL_SERVICE_NAME or its executable name.
    #[arg(long, env = "PERISCOPE_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// service.namespace of watched processes that do not set their own.
    #[arg(long, env = "PERISCOPE_SERVICE_NAMESPACE")]
    pub service_namespace: Option<String>,
}

impl ServiceArgs {
    /// What discovery names services with; `host_name` is this machine's.
    pub fn resolve(&self, host_name: impl FnOnce() -> String) -> ServiceOptions {
        ServiceOptions {
            namespace: self.service_namespace.clone(),
            name_override: self.service_name.clone(),
            host_name: host_name(),
        }
    }
}
