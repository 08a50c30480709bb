//! The command line: `streamgate-operator crd` and `streamgate-operator run`. Every
//! `run` flag has an environment fallback.

use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

/// The StreamGate operator: reconciles StreamGateService resources into Deployments and
/// Services, keeps Consul clean and injects the StreamGate sidecar into annotated workloads.
#[derive(Parser, Debug)]
#[command(name = "streamgate-operator", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the StreamGateService CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller (in-cluster config, or KUBECONFIG outside a cluster). A flag
    /// given twice takes its last value (as with kubectl), so wrappers can override.
    #[command(args_override_self = true)]
    Run(Box<RunArgs>),
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "STREAMGATE_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of /metrics, /livez and /readyz.
    #[arg(
        long,
        env = "STREAMGATE_METRICS_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub metrics_listen: std::net::SocketAddr,
    /// Log format: json or text.
    #[arg(long, env = "STREAMGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Most StreamGateServices reconciled at once. Bounds the operator's memory and its
    /// share of the API server when thousands of resources change together.
    #[arg(long, env = "STREAMGATE_MAX_CONCURRENT_RECONCILES", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    #[command(flatten)]
    pub consul: ConsulArgs,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub timing: TimingArgs,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Event streams")]
pub struct StreamArgs {
    /// The operator owns the JetStream streams (STREAMGATE for events, STREAMGATE_DLQ for
    /// dead letters) at --nats-url: it makes them capture every declared subject and keeps
    /// their settings, and sidecars only bind. False: each sidecar creates or extends the
    /// STREAMGATE stream itself, never changing its settings.
    #[arg(long, env = "STREAMGATE_MANAGE_STREAMS", default_value_t = true, action = clap::ArgAction::Set)]
    pub manage_streams: bool,
    /// The operator's own NATS credentials directory (a mounted Secret: creds, nkey,
    /// token or username/password, and ca.crt), needing the JetStream API of the streams.
    #[arg(long, env = "STREAMGATE_NATS_CREDENTIALS_DIR")]
    pub nats_credentials_dir: Option<std::path::PathBuf>,
    /// Copies of each stream in a JetStream cluster (1 on a single server).
    #[arg(long, env = "STREAMGATE_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// How long the events stream keeps an event.
    #[arg(long, env = "STREAMGATE_STREAM_MAX_AGE", default_value = "168h", value_parser = parse_duration)]
    pub stream_max_age: Duration,
    /// Size limit of the events stream in bytes (-1: none); the oldest go first.
    #[arg(long, env = "STREAMGATE_STREAM_MAX_BYTES", default_value_t = -1, value_parser = clap::value_parser!(i64).range(-1..))]
    pub stream_max_bytes: i64,
    /// A second publish of one event id within this window is dropped (sidecars drop a
    /// delivered id within it too).
    #[arg(long, env = "STREAMGATE_STREAM_DUPLICATE_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub stream_duplicate_window: Duration,
    /// How long the dead-letter stream keeps an event.
    #[arg(long, env = "STREAMGATE_DEAD_LETTER_MAX_AGE", default_value = "720h", value_parser = parse_duration)]
    pub dead_letter_max_age: Duration,
    /// Size limit of the dead-letter stream in bytes (-1: none).
    #[arg(long, env = "STREAMGATE_DEAD_LETTER_MAX_BYTES", default_value_t = -1, value_parser = clap::value_parser!(i64).range(-1..))]
    pub dead_letter_max_bytes: i64,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Injection webhook")]
pub struct WebhookArgs {
    /// Where the webhook's HTTPS server listens (no webhook when absent).
    #[arg(long, env = "STREAMGATE_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<std::net::SocketAddr>,
    /// Base URL the API server calls when the operator runs outside the cluster;
    /// otherwise it calls --webhook-service in the operator's namespace on port 443.
    #[arg(long, env = "STREAMGATE_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// The chart's Service in front of the webhook.
    #[arg(
        long,
        env = "STREAMGATE_WEBHOOK_SERVICE",
        default_value = "streamgate-operator-webhook"
    )]
    pub webhook_service: String,
    /// Name of the MutatingWebhookConfiguration the operator maintains.
    #[arg(
        long,
        env = "STREAMGATE_WEBHOOK_CONFIG_NAME",
        default_value = "streamgate-sidecar-injector"
    )]
    pub webhook_config_name: String,
    /// Secret (in the operator's namespace) holding the webhook's CA and certificate.
    #[arg(
        long,
        env = "STREAMGATE_WEBHOOK_SECRET",
        default_value = "streamgate-webhook-certs"
    )]
    pub webhook_secret: String,
    /// What the API server does when the webhook cannot be reached: Fail (refuse the pod,
    /// never start it without its sidecar) or Ignore.
    #[arg(long, env = "STREAMGATE_WEBHOOK_FAILURE_POLICY", value_enum, default_value_t = FailurePolicy::Fail)]
    pub webhook_failure_policy: FailurePolicy,
    /// Seconds the API server waits for the webhook.
    #[arg(long, env = "STREAMGATE_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=30))]
    pub webhook_timeout_seconds: i32,
    /// Validity of the serving certificate; it is reissued with a third left.
    #[arg(long, env = "STREAMGATE_WEBHOOK_CERT_VALIDITY", default_value = "24h", value_parser = parse_duration)]
    pub webhook_cert_validity: Duration,
    /// Where sidecars reach the identity endpoint (served beside the webhook): default
    /// --webhook-url, else the webhook Service's cluster IP on port 443 (pods need no
    /// cluster DNS for it).
    #[arg(long, env = "STREAMGATE_IDENTITY_URL")]
    pub identity_url: Option<String>,
    /// Secret (in the operator's namespace) of the workload CA that signs sidecar
    /// certificates: `tls.crt`, `tls.key`, optionally `ca.crt` (its root) and
    /// `bundle.pem` (further trusted roots, for a rotation). Made, self-signed, when
    /// missing; one provided from outside (e.g. by cert-manager) is used as it is.
    #[arg(
        long,
        env = "STREAMGATE_IDENTITY_CA_SECRET",
        default_value = "streamgate-identity-ca"
    )]
    pub identity_ca_secret: String,
    /// Validity of the workload certificates sidecars get; they renew at half of it.
    #[arg(long, env = "STREAMGATE_WORKLOAD_CERT_VALIDITY", default_value = "24h", value_parser = parse_duration)]
    pub workload_cert_validity: Duration,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Consul")]
pub struct ConsulArgs {
    /// Consul HTTP address the operator uses (`http://host:port` or `host:port`).
    #[arg(
        long,
        env = "CONSUL_HTTP_ADDR",
        default_value = "http://127.0.0.1:8500"
    )]
    pub consul_address: String,
    /// Consul ACL token of the operator.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    pub consul_token: Option<String>,
    /// File holding the operator's Consul ACL token (wins over --consul-token).
    #[arg(long, env = "CONSUL_HTTP_TOKEN_FILE")]
    pub consul_token_file: Option<std::path::PathBuf>,
    /// This cluster's id in Consul (instance meta `k8s-cluster`): the sweep and the
    /// cleanup touch only instances carrying it. Default: the kube-system namespace's UID.
    #[arg(long, env = "STREAMGATE_CLUSTER_ID")]
    pub cluster_id: Option<String>,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Sidecar defaults")]
pub struct SidecarArgs {
    /// Sidecar image for pods whose spec names none.
    #[arg(long, env = "STREAMGATE_SIDECAR_IMAGE", default_value = concat!("streamgate/sidecar:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// How sidecars register their pods in Consul: `agent` (through a local agent),
    /// `catalog` (agentless, straight into the catalog) or `auto` (agent when a client or
    /// dev agent answers at the sidecar's Consul address, catalog otherwise).
    #[arg(long, env = "STREAMGATE_CONSUL_MODE", default_value = "auto", value_parser = ["agent", "catalog", "auto"])]
    pub consul_mode: String,
    /// mTLS between sidecars: `strict` (only mTLS in and out; a sidecar is ready once it
    /// holds its certificate) or `permissive` (also plaintext, for meshes with plaintext
    /// services; gives up caller verification for plaintext calls).
    #[arg(long, env = "STREAMGATE_MTLS_MODE", default_value = "strict", value_parser = ["strict", "permissive"])]
    pub mtls_mode: String,
    /// Consul address the sidecars use (default: --consul-address).
    #[arg(long, env = "STREAMGATE_SIDECAR_CONSUL_ADDR")]
    pub sidecar_consul_address: Option<String>,
    /// Secret in each pod's namespace whose key `token` is the sidecars' Consul ACL token.
    #[arg(long, env = "STREAMGATE_CONSUL_TOKEN_SECRET")]
    pub consul_token_secret: Option<String>,
    /// NATS URL the sidecars use.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Secret in each pod's namespace with NATS credentials, mounted into the sidecar.
    #[arg(long, env = "STREAMGATE_NATS_CREDENTIALS_SECRET")]
    pub nats_credentials_secret: Option<String>,
    /// Default CPU request of the sidecar container.
    #[arg(long, env = "STREAMGATE_SIDECAR_CPU_REQUEST", default_value = crate::sidecar_defaults::DEFAULT_CPU_REQUEST)]
    pub sidecar_cpu_request: String,
    /// Default memory request of the sidecar container.
    #[arg(
        long,
        env = "STREAMGATE_SIDECAR_MEMORY_REQUEST",
        default_value = crate::sidecar_defaults::DEFAULT_MEMORY_REQUEST
    )]
    pub sidecar_memory_request: String,
    /// Default memory limit of the sidecar container.
    #[arg(long, env = "STREAMGATE_SIDECAR_MEMORY_LIMIT", default_value = crate::sidecar_defaults::DEFAULT_MEMORY_LIMIT)]
    pub sidecar_memory_limit: String,
    /// OTLP/gRPC endpoint the sidecars export their spans to (e.g.
    /// `http://otel-collector.observability:4317`); none: sidecars export no traces.
    #[arg(long, env = "STREAMGATE_SIDECAR_OTLP_ENDPOINT")]
    pub sidecar_otlp_endpoint: Option<String>,
    /// The share of traces a sidecar samples when it starts one (parent-based: a call or
    /// event that arrives with a sampling decision keeps it); a spec's
    /// `sidecar.traceSamplingRatio` wins.
    #[arg(long, env = "STREAMGATE_SIDECAR_TRACE_SAMPLING_RATIO", default_value_t = 0.01, value_parser = sampling_ratio)]
    pub sidecar_trace_sampling_ratio: f64,
}

fn sampling_ratio(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|ratio| (0.0..=1.0).contains(ratio))
        .ok_or_else(|| format!("{text:?} is not a sampling ratio from 0 to 1 (0.01 samples 1%)"))
}

impl StreamArgs {
    /// The combinations clap cannot check, each naming its flag: values NATS would store
    /// differently (so every pass would "change" them) or sidecars would refuse.
    pub fn check(&self) -> Result<(), String> {
        if !self.manage_streams {
            return Ok(());
        }
        for (flag, bytes) in [
            ("--stream-max-bytes", self.stream_max_bytes),
            ("--dead-letter-max-bytes", self.dead_letter_max_bytes),
        ] {
            if bytes == 0 {
                return Err(format!(
                    "{flag} 0: use -1 for no limit, or a size of at least 1"
                ));
            }
        }
        let window = self.stream_duplicate_window;
        if window < Duration::from_millis(10) {
            return Err(format!(
                "--stream-duplicate-window {window:?} is shorter than 10ms"
            ));
        }
        for (flag, age) in [
            ("--stream-max-age", self.stream_max_age),
            ("--dead-letter-max-age", self.dead_letter_max_age),
        ] {
            if age < window {
                return Err(format!(
                    "{flag} {age:?} is shorter than --stream-duplicate-window {window:?} (0 is not \"no limit\" here: give a long age)"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Leader election")]
pub struct LeaderArgs {
    /// Elect one active replica through a Lease (disable only for a single replica).
    #[arg(long, env = "STREAMGATE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the Lease.
    #[arg(
        long,
        env = "STREAMGATE_LEASE_NAME",
        default_value = "streamgate-operator"
    )]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: POD_NAME, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a Lease stays valid without renewal (the failover time).
    #[arg(long, env = "STREAMGATE_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews and a standby retries.
    #[arg(long, env = "STREAMGATE_LEASE_RENEW", default_value = "5s", value_parser = parse_duration)]
    pub lease_renew: Duration,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Timing")]
pub struct TimingArgs {
    /// Period of the sweep that removes Consul instances of vanished pods.
    #[arg(long, env = "STREAMGATE_SWEEP_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// Status refresh period of a Ready service (Consul health is polled).
    #[arg(long, env = "STREAMGATE_RESYNC_READY", default_value = "30s", value_parser = parse_duration)]
    pub resync_ready: Duration,
    /// Status refresh period of a service that is not Ready yet.
    #[arg(long, env = "STREAMGATE_RESYNC_NOT_READY", default_value = "3s", value_parser = parse_duration)]
    pub resync_not_ready: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    streamgate_crds::GoDuration::parse(text)
        .map(|d| d.as_duration())
        .map_err(|e| e.to_string())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", crate::crdgen::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Run(args) => crate::run::main(*args),
    }
}

/// How the operator writes its logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines.
    Text,
}

/// What the API server does when the webhook cannot be reached (Kubernetes'
/// `failurePolicy`, spelled as there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    /// Refuse the pod: never start it without its sidecar.
    #[value(name = "Fail")]
    Fail,
    /// Admit the pod without a sidecar.
    #[value(name = "Ignore")]
    Ignore,
}

impl FailurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(flags: &[&str]) -> RunArgs {
        let mut argv = vec!["streamgate-operator", "run"];
        argv.extend(flags);
        match Cli::parse_from(argv).command {
            Command::Run(args) => *args,
            Command::Crd => unreachable!("parsed run"),
        }
    }

    #[test]
    fn stream_flags_nats_would_rewrite_are_refused_by_name() {
        assert_eq!(run_args(&[]).streams.check(), Ok(()));
        for (flags, named) in [
            (&["--stream-max-bytes", "0"][..], "--stream-max-bytes"),
            (
                &["--dead-letter-max-bytes", "0"][..],
                "--dead-letter-max-bytes",
            ),
            (
                &["--stream-duplicate-window", "0s"][..],
                "--stream-duplicate-window",
            ),
            (&["--stream-max-age", "0s"][..], "--stream-max-age"),
            (
                &["--dead-letter-max-age", "1m"][..],
                "--dead-letter-max-age",
            ),
        ] {
            let err = run_args(flags).streams.check().unwrap_err();
            assert!(err.starts_with(named), "{flags:?}: {err}");
        }
        let unmanaged = run_args(&["--manage-streams=false", "--stream-max-bytes", "0"]);
        assert_eq!(unmanaged.streams.check(), Ok(()));
    }

    #[test]
    fn a_flag_given_twice_takes_its_last_value() {
        let args = run_args(&["--nats-url", "nats://a:1", "--nats-url", "nats://b:2"]);
        assert_eq!(args.sidecar.nats_url, "nats://b:2");
    }
}
