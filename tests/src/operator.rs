//! Running the real `streamgate-operator` against the platform, the way a cluster runs
//! it: CRD installed, least-privilege RBAC from `charts/streamgate/files/operator-rbac.yaml`, and the
//! operator authenticated as its own ServiceAccount (never as an administrator), watching
//! the test's namespace only and electing its leader through a Lease there.

use crate::bins::binary;
use crate::ports::free_port;
use crate::process::Proc;
use crate::shared::TestEnv;
use crate::tools::repo_root;
use crate::wait::eventually;
use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

pub const OPERATOR_ACCOUNT: &str = "streamgate-operator";

/// Installs the CRD and the operator's ClusterRoles once per platform.
pub fn install_crd_and_rbac(env: &TestEnv) -> Result<()> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let info = &env.platform.info;
            let crd = repo_root().join("crds/streamgateservice.yaml");
            let rbac = repo_root().join("charts/streamgate/files/operator-rbac.yaml");
            let run = || -> Result<()> {
                info.kubectl(
                    &["apply", "--server-side", "-f", &crd.to_string_lossy()],
                    None,
                )?;
                info.kubectl(
                    &[
                        "wait",
                        "--for=condition=Established",
                        "--timeout=60s",
                        "crd/streamgateservices.streamgate.io",
                    ],
                    None,
                )?;
                info.kubectl(
                    &["apply", "--server-side", "-f", &rbac.to_string_lossy()],
                    None,
                )?;
                Ok(())
            };
            run().map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// A kubeconfig authenticating as the operator's ServiceAccount in the test namespace,
/// bound to the operator's ClusterRole (and its leader-election role in the namespace).
pub async fn operator_kubeconfig(env: &TestEnv) -> Result<PathBuf> {
    operator_kubeconfig_in(env, &env.namespace).await
}

/// Like [`operator_kubeconfig`], with the operator's own namespace (its Lease and webhook
/// Secret) being `home` instead of the test namespace, which is then injectable.
pub async fn operator_kubeconfig_in(env: &TestEnv, home: &str) -> Result<PathBuf> {
    install_crd_and_rbac(env)?;
    let ns = &env.namespace;
    if home != ns {
        let manifest = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {home}}}\n");
        env.platform
            .info
            .kubectl(&["apply", "-f", "-"], Some(&manifest))?;
    }
    let manifest = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {OPERATOR_ACCOUNT}, namespace: {ns}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: streamgate-operator-{ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: streamgate-operator}}\n\
         subjects: [{{kind: ServiceAccount, name: {OPERATOR_ACCOUNT}, namespace: {ns}}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: streamgate-operator-namespaced, namespace: {home}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: streamgate-operator-namespaced}}\n\
         subjects: [{{kind: ServiceAccount, name: {OPERATOR_ACCOUNT}, namespace: {ns}}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: streamgate-operator-webhook-{ns}}}\n\
         rules: [{{apiGroups: [admissionregistration.k8s.io], resources: [mutatingwebhookconfigurations], resourceNames: [{registration}], verbs: [get, patch]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: streamgate-operator-webhook-{ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: streamgate-operator-webhook-{ns}}}\n\
         subjects: [{{kind: ServiceAccount, name: {OPERATOR_ACCOUNT}, namespace: {ns}}}]\n",
        registration = registration_name(env),
    );
    env.platform
        .info
        .kubectl(&["apply", "-f", "-"], Some(&manifest))?;
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client(), ns);
    let token = accounts
        .create_token_request(
            OPERATOR_ACCOUNT,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?
        .status
        .context("token request without status")?
        .token;
    let info = &env.platform.info;
    let ca = info.dir.join("pki/ca.crt");
    let path = info.dir.join(format!("kubeconfig-operator-{ns}"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: operator\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context: {{cluster: local, user: operator, namespace: {ns}}}\ncurrent-context: local\n",
            info.apiserver_url,
            ca.display()
        ),
    )?;
    Ok(path)
}

/// Short lease, sweep and resync periods so tests see effects quickly.
pub const TEST_TIMINGS: &[&str] = &[
    "--lease-duration",
    "3s",
    "--lease-renew",
    "500ms",
    "--sweep-interval",
    "2s",
    "--resync-ready",
    "2s",
    "--resync-not-ready",
    "1s",
];

/// The webhook registration a test's operator maintains (its RBAC names it: the
/// operator may change no other).
pub fn registration_name(env: &TestEnv) -> String {
    format!("streamgate-injector-{}", env.namespace)
}

/// The test timings and the flags of a webhook (and identity endpoint) on a free port of
/// `host`, registered under a name of the test's own; with the URL it serves at.
pub fn webhook_flags(env: &TestEnv, host: &str) -> Result<(Vec<String>, String)> {
    let port = crate::ports::free_port()?;
    let url = format!("https://{host}:{port}");
    let mut args: Vec<String> = TEST_TIMINGS.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--webhook-listen".to_string(),
        format!("{host}:{port}"),
        "--webhook-url".to_string(),
        url.clone(),
        "--webhook-config-name".to_string(),
        registration_name(env),
    ]);
    Ok((args, url))
}

/// The operator's defaults, for measurements.
pub const PRODUCTION_TIMINGS: &[&str] = &[];

/// A running operator process.
pub struct Operator {
    pub identity: String,
    pub metrics_url: String,
    proc: Proc,
}

/// How one operator process is started.
struct Launch<'a, S> {
    /// Its own namespace (Lease, webhook Secret).
    home: &'a str,
    /// The namespace it watches; `None`: every namespace.
    watch: Option<&'a str>,
    extra: &'a [S],
    /// Return once `/readyz` answers (else `/livez`).
    wait_ready: bool,
    env: &'a [(String, String)],
}

impl Operator {
    /// Starts an operator watching the test namespace, with short timings for tests.
    pub async fn start(env: &TestEnv, kubeconfig: &PathBuf, identity: &str) -> Result<Operator> {
        Self::start_with(env, kubeconfig, identity, TEST_TIMINGS).await
    }

    /// Starts an operator with these extra flags (timings such as [`TEST_TIMINGS`], the
    /// webhook's flags, ...).
    pub async fn start_with<S: AsRef<std::ffi::OsStr>>(
        env: &TestEnv,
        kubeconfig: &PathBuf,
        identity: &str,
        extra: &[S],
    ) -> Result<Operator> {
        Self::start_in(env, kubeconfig, identity, &env.namespace, extra).await
    }

    /// Starts an operator whose own namespace (Lease, webhook Secret) is `home`.
    pub async fn start_in<S: AsRef<std::ffi::OsStr>>(
        env: &TestEnv,
        kubeconfig: &PathBuf,
        identity: &str,
        home: &str,
        extra: &[S],
    ) -> Result<Operator> {
        let how = Launch {
            home,
            watch: Some(&env.namespace),
            extra,
            wait_ready: true,
            env: &[],
        };
        Self::launch(env, kubeconfig, identity, how).await
    }

    /// Like [`Operator::start_in`] in the test namespace, with `vars` added to the
    /// operator's environment (its `OTEL_*` settings).
    pub async fn start_with_env<S: AsRef<std::ffi::OsStr>>(
        env: &TestEnv,
        kubeconfig: &PathBuf,
        identity: &str,
        extra: &[S],
        vars: &[(String, String)],
    ) -> Result<Operator> {
        let how = Launch {
            home: &env.namespace,
            watch: Some(&env.namespace),
            extra,
            wait_ready: true,
            env: vars,
        };
        Self::launch(env, kubeconfig, identity, how).await
    }

    /// Like [`Operator::start_in`], returning once `/livez` answers, ready or not (for
    /// tests of a replica that must stay up but not ready).
    pub async fn start_unready_in<S: AsRef<std::ffi::OsStr>>(
        env: &TestEnv,
        kubeconfig: &PathBuf,
        identity: &str,
        home: &str,
        extra: &[S],
    ) -> Result<Operator> {
        let how = Launch {
            home,
            watch: Some(&env.namespace),
            extra,
            wait_ready: false,
            env: &[],
        };
        Self::launch(env, kubeconfig, identity, how).await
    }

    /// Starts an operator watching every namespace (as the chart runs it). Only for a
    /// test binary of its own: its webhook sees every test's pods.
    pub async fn start_cluster_wide<S: AsRef<std::ffi::OsStr>>(
        env: &TestEnv,
        kubeconfig: &PathBuf,
        identity: &str,
        home: &str,
        extra: &[S],
    ) -> Result<Operator> {
        let how = Launch {
            home,
            watch: None,
            extra,
            wait_ready: true,
            env: &[],
        };
        Self::launch(env, kubeconfig, identity, how).await
    }

    async fn launch<S: AsRef<std::ffi::OsStr>>(
        env: &TestEnv,
        kubeconfig: &PathBuf,
        identity: &str,
        how: Launch<'_, S>,
    ) -> Result<Operator> {
        let Launch {
            home,
            watch,
            extra,
            wait_ready,
            env: vars,
        } = how;
        let bin = binary("streamgate-operator", "streamgate-operator")?;
        let port = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,streamgate_operator=debug")
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("NATS_URL")
            .args(["run", "--log-format", "text"])
            .args(watch.map(|ns| ["--namespace", ns]).into_iter().flatten())
            .args(["--lease-namespace", home])
            .args(["--identity", identity])
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
            .args(["--consul-address", env.consul_addr()])
            .args(["--nats-url", env.nats_url()])
            .args(extra)
            .envs(vars.iter().map(|(k, v)| (k, v)));
        let log = env
            .platform
            .info
            .logs
            .join(format!("operator-{}-{identity}.log", env.namespace));
        let proc = Proc::spawn(&format!("operator {identity}"), cmd, &log)?;
        let operator = Operator {
            identity: identity.to_string(),
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            proc,
        };
        let probe = if wait_ready { "readyz" } else { "livez" };
        let readyz = format!("http://127.0.0.1:{port}/{probe}");
        let http = reqwest::Client::new();
        eventually(
            &format!("operator /{probe}"),
            Duration::from_secs(30),
            || async {
                if let Some(status) = operator.proc.exit_status() {
                    anyhow::bail!(
                        "operator exited ({status}):\n{}",
                        operator.proc.log_tail(30)
                    );
                }
                let ok = http
                    .get(&readyz)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                Ok(ok.then_some(()))
            },
        )
        .await?;
        Ok(operator)
    }

    /// True while this replica reports holding the leader lease.
    pub async fn is_leader(&self) -> bool {
        let Ok(resp) = reqwest::get(&self.metrics_url).await else {
            return false;
        };
        let text = resp.text().await.unwrap_or_default();
        text.lines()
            .any(|l| l.trim() == "streamgate_operator_leader 1")
    }

    /// How many reconciles this replica has run (its `streamgate_operator_reconciles_total`
    /// counter; 0 when it has run none or cannot be reached).
    pub async fn reconciles(&self) -> u64 {
        let Ok(resp) = reqwest::get(&self.metrics_url).await else {
            return 0;
        };
        let text = resp.text().await.unwrap_or_default();
        text.lines()
            .filter_map(|l| l.strip_prefix("streamgate_operator_reconciles_total"))
            .filter_map(|rest| rest.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// SIGTERM and wait (a clean shutdown releases the lease).
    pub fn stop(&self) {
        self.proc.stop(Duration::from_secs(15));
    }

    /// SIGKILL: no chance to release anything.
    pub fn kill(&self) {
        self.proc.kill();
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn exited(&self) -> bool {
        self.proc.exit_status().is_some()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- operator {} -----\n{}",
                self.identity,
                self.proc.log_tail(40)
            );
        }
        self.proc.stop(Duration::from_secs(5));
    }
}
