//! Smoke tests proving the local platform is made of real, working components.

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use streamgate_tests::TestEnv;
use streamgate_tests::wait::eventually;

const TIMEOUT: Duration = Duration::from_secs(60);

fn deployment(name: &str, replicas: i32) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}
            }
        }
    }))?)
}

async fn ready_pods(pods: &Api<Pod>, selector: &str) -> Result<usize> {
    let list = pods.list(&ListParams::default().labels(selector)).await?;
    Ok(list
        .items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count())
}

#[tokio::test]
async fn deployment_pods_become_ready_on_kwok_nodes_and_are_garbage_collected() -> Result<()> {
    let env = TestEnv::new("deployment-gc").await?;
    let deployments: Api<Deployment> = Api::namespaced(env.client(), &env.namespace);
    let pods: Api<Pod> = Api::namespaced(env.client(), &env.namespace);
    deployments
        .create(&PostParams::default(), &deployment("web", 2)?)
        .await?;

    eventually("2 pods Ready", TIMEOUT, || async {
        Ok((ready_pods(&pods, "app=web").await? == 2).then_some(()))
    })
    .await?;
    let scheduled = pods.list(&ListParams::default().labels("app=web")).await?;
    for pod in &scheduled.items {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        assert!(
            node.is_some_and(|n| n.starts_with("kwok-node-")),
            "pod not scheduled on a kwok node"
        );
    }

    deployments
        .delete("web", &DeleteParams::background())
        .await?;
    eventually("pods garbage-collected", TIMEOUT, || async {
        let left = pods.list(&ListParams::default().labels("app=web")).await?;
        Ok(left.items.is_empty().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn podsecurity_restricted_namespace_rejects_a_privileged_pod() -> Result<()> {
    let labels = BTreeMap::from([(
        "pod-security.kubernetes.io/enforce".to_string(),
        "restricted".to_string(),
    )]);
    let env = TestEnv::with_namespace_labels("podsecurity", labels).await?;
    let pods: Api<Pod> = Api::namespaced(env.client(), &env.namespace);

    let privileged: Pod = serde_json::from_value(json!({
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{
            "name": "app", "image": "example.invalid/app:1",
            "securityContext": {"privileged": true}
        }]}
    }))?;
    let err = pods
        .create(&PostParams::default(), &privileged)
        .await
        .expect_err("a privileged pod must be rejected in a restricted namespace");
    let message = err.to_string();
    assert!(message.contains("violates PodSecurity"), "{message}");

    // The same namespace admits a pod that meets `restricted`, so the rejection above is
    // PodSecurity's verdict on the pod, not a broken namespace.
    let compliant: Pod = serde_json::from_value(json!({
        "metadata": {"name": "compliant"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app", "image": "example.invalid/app:1",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}
                }
            }]
        }
    }))?;
    pods.create(&PostParams::default(), &compliant).await?;
    Ok(())
}

#[tokio::test]
async fn service_accounts_get_signed_tokens_that_authenticate() -> Result<()> {
    let env = TestEnv::new("service-account").await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client(), &env.namespace);
    // The controller-manager gives every namespace its `default` ServiceAccount.
    eventually("default ServiceAccount", TIMEOUT, || async {
        Ok(accounts.get_opt("default").await?)
    })
    .await?;

    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = accounts
        .create_token_request("default", &PostParams::default(), &request)
        .await?
        .status
        .context("token request has no status")?
        .token;

    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&env.platform.info.kubeconfig)?,
        &Default::default(),
    )
    .await?;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    let as_account = kube::Client::try_from(config)?;
    let review: SelfSubjectReview = Api::<SelfSubjectReview>::all(as_account)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let username = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .context("no username in SelfSubjectReview")?;
    assert_eq!(
        username,
        format!("system:serviceaccount:{}:default", env.namespace)
    );
    Ok(())
}

#[tokio::test]
async fn consul_ttl_check_turns_passing_then_critical_when_not_renewed() -> Result<()> {
    let env = TestEnv::new("consul-ttl").await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let service = env.unique("smoke");
    let consul = env.consul_addr();
    http.put(format!("{consul}/v1/agent/service/register"))
        .json(&json!({
            "ID": service, "Name": service, "Address": "127.0.0.1", "Port": 9091,
            "Check": {"CheckID": format!("{service}-ttl"), "TTL": "2s"}
        }))
        .send()
        .await?
        .error_for_status()?;

    let status_of = |http: reqwest::Client, service: String| async move {
        let checks: serde_json::Value = http
            .get(format!("{consul}/v1/health/checks/{service}"))
            .send()
            .await?
            .json()
            .await?;
        Ok::<_, anyhow::Error>(checks[0]["Status"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(status_of(http.clone(), service.clone()).await?, "critical");

    http.put(format!("{consul}/v1/agent/check/pass/{service}-ttl"))
        .send()
        .await?
        .error_for_status()?;
    assert_eq!(status_of(http.clone(), service.clone()).await?, "passing");

    // Not renewed: the TTL runs out and Consul marks the instance critical by itself.
    eventually("TTL check critical", Duration::from_secs(10), || {
        let (http, service) = (http.clone(), service.clone());
        async move { Ok((status_of(http, service).await? == "critical").then_some(())) }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn jetstream_publish_is_acked_and_consumed_by_a_durable_consumer() -> Result<()> {
    use async_nats::jetstream::{self, consumer::pull, stream};
    let env = TestEnv::new("jetstream").await?;
    let client = async_nats::connect(env.nats_url()).await?;
    let js = jetstream::new(client);
    let subject_root = format!("smoke.{}", env.suffix);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: format!("SMOKE_{}", env.suffix.to_uppercase()),
            subjects: vec![format!("{subject_root}.>")],
            ..Default::default()
        })
        .await?;

    let ack = js
        .publish(format!("{subject_root}.file.uploaded"), "hello".into())
        .await?
        .await?;
    assert_eq!(ack.sequence, 1);

    let consumer = stream
        .get_or_create_consumer(
            "smoke-durable",
            pull::Config {
                durable_name: Some("smoke-durable".into()),
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await?;
    let message = messages
        .next()
        .await
        .context("no message delivered")?
        .map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(message.payload.as_ref(), b"hello");
    message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}
