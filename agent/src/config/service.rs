//! Service naming: `--service-name`, `--service-namespace`, `--host-name`.
use crate::discovery::{HostName, ServiceOptions};

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

    /// host.name of every watched process (and the prefix of its
    /// service.instance.id). Default: NODE_NAME, else the host's own name
    /// (the UTS namespace of pid 1), else this process's.
    #[arg(long, env = "PERISCOPE_HOST_NAME")]
    pub host_name: Option<String>,
}

impl ServiceArgs {
    /// What discovery names services with; `host` is the resolved host name.
    pub fn resolve(&self, host: &HostName) -> ServiceOptions {
        ServiceOptions {
            namespace: self.service_namespace.clone(),
            name_override: self.service_name.clone(),
            host_name: host.name.clone(),
            rules: Vec::new(),
        }
    }
}
