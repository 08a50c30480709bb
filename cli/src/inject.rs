//! `streamgate inject -f FILE`: each workload's pod template goes through the webhook's
//! own injection ([`streamgate_operator::webhook::inject::inject`]) with the sidecar
//! defaults the operator takes from the same flags, so applying the output gives the
//! pods the webhook would have made (and the webhook, seeing them marked injected,
//! leaves them alone). Other documents pass through unchanged.

use anyhow::{Context, Result, bail};
use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use streamgate_operator::cli::{SidecarArgs, StreamArgs};
use streamgate_operator::identity::Authorities;
use streamgate_operator::sidecar_defaults::{SidecarDefaults, SidecarIdentity};
use streamgate_operator::webhook::inject::{Injection, InjectionScope, inject};

#[derive(Args, Debug)]
pub struct InjectArgs {
    /// File of workloads: YAML, several documents allowed; `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Namespace of the workloads that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Inject every pod that does not opt out, as the webhook does in a namespace
    /// labelled `streamgate.io/inject=enabled`.
    #[arg(long)]
    pub namespace_enabled: bool,
    /// The operator's namespace, whose pods are never injected.
    #[arg(long, default_value = "streamgate-system")]
    pub operator_namespace: String,
    /// The operator's Consul address (the sidecars' default, as its --consul-address).
    #[arg(
        long,
        env = "CONSUL_HTTP_ADDR",
        default_value = "http://127.0.0.1:8500"
    )]
    pub consul_address: String,
    /// The operator's cluster id. Default: the kube-system namespace's UID, read from the
    /// cluster of KUBECONFIG (as the operator does).
    #[arg(long, env = "STREAMGATE_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// The identity endpoint the sidecars get their certificates from. Default: read,
    /// with the trust bundle, from the operator's MutatingWebhookConfiguration.
    #[arg(long, env = "STREAMGATE_IDENTITY_URL", requires = "trust_bundle_file")]
    pub identity_url: Option<String>,
    /// PEM file of the CA that verifies the identity endpoint (the operator's webhook
    /// CA), with --identity-url.
    #[arg(long, requires = "identity_url")]
    pub trust_bundle_file: Option<PathBuf>,
    /// The operator's MutatingWebhookConfiguration (`--webhook-config-name`).
    #[arg(long, default_value = "streamgate-sidecar-injector")]
    pub webhook_config_name: String,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
}

pub fn main(args: InjectArgs) -> ExitCode {
    match run(&args) {
        Ok(Outcome::Printed(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Refused(errors)) => {
            for e in errors {
                eprintln!("streamgate inject: {e}");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("streamgate inject: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Outcome {
    Printed(String),
    /// A workload whose annotations the webhook would refuse, one line each.
    Refused(Vec<String>),
}

fn run(args: &InjectArgs) -> Result<Outcome> {
    let input = read_input(&args.file)?;
    let cluster = match &args.cluster_id {
        Some(id) => streamgate_operator::run::checked_cluster_id(id)?,
        None => cluster_id_from_kubeconfig()?,
    };
    let mut settings =
        SidecarDefaults::from_flags(&args.sidecar, &args.streams, &args.consul_address, &cluster);
    // Bad annotations are refused before anything is looked up in the cluster; the
    // identity section is only needed once a workload is injected.
    let first = inject_all(&input, args, &settings)?;
    if !first.refused.is_empty() {
        return Ok(Outcome::Refused(first.refused));
    }
    let last = if first.injected {
        settings.identity = Some(sidecar_identity(args)?);
        inject_all(&input, args, &settings)?
    } else {
        first
    };
    for skipped in &last.skipped {
        eprintln!("streamgate inject: {skipped}");
    }
    let documents = last.documents;
    let mut text = String::new();
    for doc in &documents {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(doc)?);
    }
    Ok(Outcome::Printed(text))
}

/// Every document of the input, injected where it asks for it.
struct Pass {
    documents: Vec<Value>,
    /// A workload whose annotations the webhook would refuse, one line each.
    refused: Vec<String>,
    /// A workload left as it is, and why.
    skipped: Vec<String>,
    injected: bool,
}

fn inject_all(input: &str, args: &InjectArgs, settings: &SidecarDefaults) -> Result<Pass> {
    let mut pass = Pass {
        documents: Vec::new(),
        refused: Vec::new(),
        skipped: Vec::new(),
        injected: false,
    };
    for (i, document) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let mut doc = Value::deserialize(document)
            .with_context(|| format!("{}: document {}", args.file.display(), i + 1))?;
        if doc.is_null() {
            continue;
        }
        let name = describe(&doc);
        match inject_document(&mut doc, args, settings) {
            Ok(Some(reason)) => pass
                .skipped
                .push(format!("{name}: not injected ({reason})")),
            Ok(None) => pass.injected = true,
            Err(e) => pass.refused.push(format!("{name}: {e}")),
        }
        pass.documents.push(doc);
    }
    Ok(pass)
}

fn read_input(file: &PathBuf) -> Result<String> {
    let mut input = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut input)
            .context("reading standard input")?;
    } else {
        input =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    }
    Ok(input)
}

/// `kind/name` for messages.
fn describe(doc: &Value) -> String {
    let kind = doc["kind"].as_str().unwrap_or("document").to_lowercase();
    let name = doc["metadata"]["name"].as_str().unwrap_or("<unnamed>");
    format!("{kind}/{name}")
}

/// Where a workload kind keeps its pod template (a Pod is its own).
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects the document's pod in place; `Some(reason)` when it is left as it is.
fn inject_document(
    doc: &mut Value,
    args: &InjectArgs,
    settings: &SidecarDefaults,
) -> Result<Option<&'static str>> {
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(Some("not a workload"));
    };
    let namespace = doc["metadata"]["namespace"]
        .as_str()
        .unwrap_or(&args.namespace)
        .to_string();
    let template = doc
        .pointer_mut(pointer)
        .context("the workload has no pod template")?;
    let pod = Pod {
        metadata: serde_json::from_value(template["metadata"].clone()).unwrap_or_default(),
        spec: serde_json::from_value(template["spec"].clone()).context("the pod spec")?,
        status: None,
    };
    let scope = InjectionScope {
        namespace: &namespace,
        namespace_enabled: args.namespace_enabled,
        operator_namespace: &args.operator_namespace,
    };
    match inject(&pod, &scope, settings) {
        Injection::Skip(reason) => Ok(Some(reason)),
        Injection::Reject(e) => bail!("{}: {}", e.field, e.reason),
        Injection::Injected(injected) => {
            let object = template.as_object_mut().context("the pod template")?;
            object.insert("metadata".into(), serde_json::to_value(&injected.metadata)?);
            object.insert("spec".into(), serde_json::to_value(&injected.spec)?);
            Ok(None)
        }
    }
}

/// The identity endpoint and its CA as the webhook renders them: from the flags, else
/// from the operator's MutatingWebhookConfiguration (its `caBundle` is that CA, its
/// client config where the operator serves).
fn sidecar_identity(args: &InjectArgs) -> Result<SidecarIdentity> {
    let mode = streamgate_operator::sidecar_defaults::mtls_mode(&args.sidecar.mtls_mode);
    let (endpoint, bundle) = match (&args.identity_url, &args.trust_bundle_file) {
        (Some(url), Some(file)) => {
            let bundle = std::fs::read_to_string(file)
                .with_context(|| format!("--trust-bundle-file {}", file.display()))?;
            (url.trim_end_matches('/').to_string(), bundle)
        }
        _ => identity_from_cluster(&args.webhook_config_name).with_context(|| {
            format!(
                "reading the identity endpoint from MutatingWebhookConfiguration {} (or give --identity-url and --trust-bundle-file)",
                args.webhook_config_name
            )
        })?,
    };
    Ok(SidecarIdentity {
        endpoint,
        mode,
        ca: Authorities::with_endpoint_ca(&bundle),
    })
}

fn identity_from_cluster(name: &str) -> Result<(String, String)> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("no cluster (KUBECONFIG or in-cluster)")?;
        let configs: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(client.clone());
        let config = configs.get(name).await?;
        let client_config = config
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .next()
            .context("it has no webhook yet (is the operator running?)")?
            .client_config;
        let bundle = client_config.ca_bundle.context("it has no caBundle yet")?;
        let bundle = String::from_utf8(bundle.0).context("its caBundle is not PEM")?;
        let endpoint = match (client_config.url, client_config.service) {
            (Some(url), _) => base_url(&url),
            (None, Some(service)) => {
                streamgate_operator::identity::service_url(
                    &client,
                    &service.namespace,
                    &service.name,
                    service.port.unwrap_or(443),
                )
                .await
            }
            (None, None) => bail!("its webhook has neither a url nor a service"),
        };
        Ok((endpoint, bundle))
    })
}

/// `https://host:port` of a webhook URL (the operator serves the identity endpoint on
/// the same server).
fn base_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let host = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{host}")
}

/// The kube-system namespace's UID, as the operator takes it for its cluster id.
fn cluster_id_from_kubeconfig() -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default().await.context(
            "no --cluster-id, and no cluster to read it from (KUBECONFIG or in-cluster)",
        )?;
        streamgate_operator::run::kube_system_uid(&client).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        inject: InjectArgs,
    }

    fn args(extra: &[&str]) -> InjectArgs {
        let mut argv = vec!["streamgate", "-f", "-", "--cluster-id", "c1"];
        argv.extend(extra);
        Wrapper::parse_from(argv).inject
    }

    fn injected(yaml: &str, extra: &[&str]) -> Result<Value> {
        let args = args(extra);
        let settings =
            SidecarDefaults::from_flags(&args.sidecar, &args.streams, "http://c:8500", "c1");
        let mut doc: Value = serde_yaml::from_str(yaml)?;
        let skipped = inject_document(&mut doc, &args, &settings)?;
        assert_eq!(skipped, None);
        Ok(doc)
    }

    #[test]
    fn a_deployments_template_gets_the_sidecar_and_the_injected_mark() {
        let doc = injected(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    metadata:\n      labels: {app: web}\n      annotations: {streamgate.io/inject: \"true\", streamgate.io/app-port: \"8080\"}\n    spec:\n      containers: [{name: app, image: web:1}]\n",
            &[],
        )
        .unwrap();
        let template = &doc["spec"]["template"];
        assert_eq!(
            template["spec"]["initContainers"][0]["name"],
            "streamgate-sidecar"
        );
        assert_eq!(
            template["metadata"]["annotations"]["streamgate.io/injected"],
            "true"
        );
        assert_eq!(
            template["metadata"]["labels"]["streamgate.io/service"],
            "web"
        );
    }

    #[test]
    fn a_cronjobs_pod_is_found_and_other_kinds_pass_through() {
        let doc = injected(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly}\nspec:\n  jobTemplate:\n    spec:\n      template:\n        metadata:\n          labels: {app: nightly}\n          annotations: {streamgate.io/inject: \"true\", streamgate.io/app-port: \"9000\"}\n        spec:\n          containers: [{name: app, image: job:1}]\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][0]["name"],
            "streamgate-sidecar"
        );
        let args = args(&[]);
        let settings = SidecarDefaults::from_flags(&args.sidecar, &args.streams, "x", "c1");
        let mut config_map: Value =
            serde_yaml::from_str("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}").unwrap();
        let before = config_map.clone();
        let skipped = inject_document(&mut config_map, &args, &settings).unwrap();
        assert_eq!((skipped, config_map), (Some("not a workload"), before));
    }

    #[test]
    fn a_wrong_annotation_is_named() {
        let args = args(&[]);
        let settings = SidecarDefaults::from_flags(&args.sidecar, &args.streams, "x", "c1");
        let mut doc: Value = serde_yaml::from_str(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {streamgate.io/inject: \"yes\"}\nspec:\n  containers: [{name: app, image: a:1}]\n",
        )
        .unwrap();
        let err = inject_document(&mut doc, &args, &settings).unwrap_err();
        assert!(err.to_string().contains("streamgate.io/inject"), "{err}");
    }
}
