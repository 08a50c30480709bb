//! The sidecar's way into Consul: the shared [`Registry`] in the registration mode the
//! configuration asks for, with a metric per call. `auto` is decided once, on the first
//! contact that answers (asking what runs at the address), and kept for the process.

use crate::config::{ConsulMode, ConsulSettings};
use crate::metrics::Metrics;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use streamgate_consul::registry::{AgentKind, CheckStatus, Registry, Target, detect_agent};
use streamgate_consul::{ConsulError, ConsulHttp, Seen, Timeouts};
use tokio::sync::OnceCell;

use super::instance::PodInstance;

/// Every call but the blocking watch: anything slower means Consul is in trouble and a
/// retry is better than waiting.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long Consul holds a blocking watch open when nothing changes.
pub const WATCH_WAIT: Duration = Duration::from_secs(60);

pub struct ConsulClient {
    http: ConsulHttp,
    mode: ConsulMode,
    /// The catalog node: the Kubernetes node's name and address.
    node: Option<(String, IpAddr)>,
    registry: OnceCell<Registry>,
    metrics: Arc<Metrics>,
}

impl ConsulClient {
    /// `node_address` is where the node is reached (the host IP, else the pod's own).
    pub fn new(
        settings: &ConsulSettings,
        node_address: IpAddr,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConsulError> {
        let timeouts = Timeouts {
            connect: CONNECT_TIMEOUT,
            call: CALL_TIMEOUT,
        };
        let token = settings.token.as_ref().map(|t| t.0.clone());
        Ok(ConsulClient {
            http: ConsulHttp::new(&settings.address, token, timeouts)?,
            mode: settings.mode,
            node: settings.node_name.clone().map(|n| (n, node_address)),
            registry: OnceCell::new(),
            metrics,
        })
    }

    pub fn address(&self) -> &str {
        self.http.base()
    }

    /// The registry in the configured mode; `auto` asks Consul on first use.
    async fn registry(&self) -> Result<&Registry, ConsulError> {
        self.registry
            .get_or_try_init(|| async {
                let target = match self.mode {
                    ConsulMode::Agent => Target::Agent,
                    ConsulMode::Catalog => self.catalog_target()?,
                    ConsulMode::Auto => {
                        let kind = detect_agent(&self.http).await;
                        self.metrics.observe_consul("detect", kind.is_ok());
                        match kind? {
                            AgentKind::Local => Target::Agent,
                            AgentKind::NoLocalAgent => self.catalog_target()?,
                        }
                    }
                };
                tracing::info!(mode = target.mode(), consul = %self.http.base(),
                    "Consul registration mode");
                Ok(Registry::new(self.http.clone(), target))
            })
            .await
    }

    fn catalog_target(&self) -> Result<Target, ConsulError> {
        let (node, address) = self.node.clone().ok_or_else(|| {
            ConsulError::Setup(
                "catalog registration needs the Kubernetes node's name (pod.nodeName, NODE_NAME): \
             what answers at consul.address is not a local agent"
                    .to_string(),
            )
        })?;
        Ok(Target::Catalog {
            node,
            node_address: address.to_string(),
        })
    }

    /// Whether the check needs refreshing to stay passing (agent mode's TTL).
    pub async fn needs_refresh(&self) -> Result<bool, ConsulError> {
        Ok(self.registry().await?.needs_refresh())
    }

    pub async fn register(
        &self,
        instance: &PodInstance,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), ConsulError> {
        self.call("register", async |r| {
            r.register(instance, status, output).await
        })
        .await
    }

    pub async fn set_check(
        &self,
        instance: &PodInstance,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), ConsulError> {
        self.call("update_check", async |r| {
            r.set_check(instance, status, output).await
        })
        .await
    }

    /// Removes the instance; one Consul no longer has counts as removed.
    pub async fn deregister(&self, instance: &PodInstance) -> Result<(), ConsulError> {
        self.call("deregister", async |r| r.deregister(&instance.id).await)
            .await
    }

    /// A blocking query on the instance (see [`Registry::watch`]).
    pub async fn watch(
        &self,
        instance: &PodInstance,
        seen: Option<Seen>,
    ) -> Result<Seen, ConsulError> {
        self.call("watch", async |r| {
            r.watch(instance, seen.as_ref(), WATCH_WAIT).await
        })
        .await
    }

    /// One call through the registry, counted in the Consul metrics by `operation`.
    async fn call<T>(
        &self,
        operation: &'static str,
        call: impl AsyncFnOnce(&Registry) -> Result<T, ConsulError>,
    ) -> Result<T, ConsulError> {
        let result = match self.registry().await {
            Ok(registry) => call(registry).await,
            Err(e) => Err(e),
        };
        self.metrics.observe_consul(operation, result.is_ok());
        result
    }
}
