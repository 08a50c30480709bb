//! The operator owns the event streams: STREAMGATE captures `streamgate.<type>` of every
//! type a service declares (StreamGateServices and injected pods' annotations alike), and
//! STREAMGATE_DLQ every subscription's dead-letter subject, each with the replicas, age,
//! size and duplicate window of the operator's flags (chart values). Sidecars rendered by
//! the operator only bind (`manageStreams: false`), so no sidecar changes a stream.
//!
//! Subjects another stream captures already (the seed's `TRANSCODING`) are left to it,
//! and subjects are only added, never removed (see [`streamgate_nats::streams`]).
//! A pass runs when a service or an injected pod changes what is declared, and every
//! `resync` anyway, so a stream deleted or changed by hand comes back.

use crate::labels::SERVICE_LABEL;
use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamgate_crds::StreamGateService;
use streamgate_crds::contract::events::{DEAD_LETTER_STREAM, STREAM, Subjects};
use streamgate_nats::streams::{self, Authority, StreamSettings, Want};
use tokio::sync::Notify;

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long to let a burst of changes settle before looking at what is declared.
const SETTLE: Duration = Duration::from_secs(1);

/// What the operator's streams are made of (from `--stream-*` and `--dead-letter-*`).
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    pub nats_url: String,
    pub credentials_dir: Option<PathBuf>,
    pub events: StreamSettings,
    pub dead_letters: StreamSettings,
}

/// The streams that capture `subjects`.
pub fn wants(subjects: &Subjects, config: &StreamsConfig) -> Vec<Want> {
    vec![
        Want {
            stream: STREAM.to_string(),
            subjects: subjects.events.clone(),
            settings: config.events.clone(),
        },
        Want {
            stream: DEAD_LETTER_STREAM.to_string(),
            subjects: subjects.dead_letters.clone(),
            settings: config.dead_letters.clone(),
        },
    ]
}

/// Every subject declared by the services and by injected pods. An injected pod's
/// annotations were checked by the webhook; one that no longer parses is skipped.
pub fn declared(
    services: &[Arc<StreamGateService>],
    pods: &[Arc<PartialObjectMeta<Pod>>],
) -> Subjects {
    let mut subjects = Subjects::default();
    for sgs in services {
        subjects.add(&sgs.consul_name(), &sgs.spec.events);
    }
    for pod in pods {
        let Some(service) = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_LABEL))
        else {
            continue;
        };
        let Some(annotations) = &pod.metadata.annotations else {
            continue;
        };
        match crate::webhook::annotations::events(annotations) {
            Ok(events) => subjects.add(service, &events),
            Err(e) => {
                tracing::debug!(pod = ?pod.metadata.name, error = %e, "skipping a pod's events")
            }
        }
    }
    subjects
}

/// Keeps the streams in step with what is declared, until the task is dropped.
pub async fn run(
    client: kube::Client,
    namespace: Option<String>,
    config: StreamsConfig,
    metrics: Metrics,
    resync: Duration,
) {
    let js = match connect(&config).await {
        Ok(js) => js,
        Err(e) => {
            tracing::error!(error = %e, "cannot manage the event streams");
            metrics.stream_errors.inc();
            return;
        }
    };
    let changed = Arc::new(Notify::new());
    let (services, pods) = watch_declarations(client, namespace, changed.clone());
    services.wait_until_ready().await.ok();
    pods.wait_until_ready().await.ok();
    // After a failure: 1 s, doubling to 30 s.
    let mut retry = RETRY_MIN;
    let mut in_sync: Option<Subjects> = None;
    let mut last_error = None;
    // A pass runs when what is declared changed (not before `retry_at` after a failure)
    // and at `next_resync` in any case: deadlines kept across wake-ups, so a busy
    // cluster's stream of pod updates can neither postpone the resync nor skip the
    // backoff.
    let mut next_resync = Instant::now();
    let mut retry_at = Instant::now();
    loop {
        let subjects = declared(&services.state(), &pods.state());
        let now = Instant::now();
        let changed_since = in_sync.as_ref() != Some(&subjects);
        if (changed_since && now >= retry_at) || now >= next_resync {
            match streams::ensure(&js, &wants(&subjects, &config), Authority::Own).await {
                Ok(written) => {
                    metrics.stream_writes.inc_by(written.len() as u64);
                    metrics.streams_in_sync.set(1);
                    if last_error.take().is_some() || !written.is_empty() {
                        tracing::info!(
                            events = subjects.events.len(),
                            dead_letters = subjects.dead_letters.len(),
                            "the event streams capture every declared subject"
                        );
                    }
                    in_sync = Some(subjects);
                    retry = RETRY_MIN;
                    retry_at = now;
                    next_resync = now + resync;
                }
                Err(e) => {
                    metrics.streams_in_sync.set(0);
                    metrics.stream_errors.inc();
                    let message = e.to_string();
                    if last_error.as_ref() != Some(&message) {
                        tracing::warn!(error = %message, "cannot bring the event streams in step; retrying");
                    }
                    last_error = Some(message);
                    in_sync = None;
                    retry_at = now + retry;
                    next_resync = retry_at;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        let wake = if in_sync.is_some() {
            next_resync
        } else {
            retry_at
        };
        tokio::select! {
            _ = changed.notified() => {
                // Many changes arrive together (a rollout): look at most once a second.
                tokio::time::sleep(SETTLE).await;
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

async fn connect(config: &StreamsConfig) -> anyhow::Result<async_nats::jetstream::Context> {
    use anyhow::Context as _;
    let (options, _) = streamgate_nats::credentials::options(config.credentials_dir.as_deref())
        .await
        .context("--nats-credentials-dir")?;
    let client = options
        .name("streamgate-operator")
        .require_tls(config.nats_url.starts_with("tls://"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(config.nats_url.as_str())
        .await
        .with_context(|| format!("--nats-url {}", config.nats_url))?;
    tracing::info!(url = %config.nats_url, "managing the event streams");
    Ok(async_nats::jetstream::new(client))
}

/// Stores of the StreamGateServices and of the injected pods' metadata (their
/// annotations declare events), notifying `changed` on every change.
fn watch_declarations(
    client: kube::Client,
    namespace: Option<String>,
    changed: Arc<Notify>,
) -> (Store<StreamGateService>, Store<PartialObjectMeta<Pod>>) {
    let (services, services_writer) = reflector::store();
    let (pods, pods_writer) = reflector::store();
    // Pods as metadata only: the annotations are all that is read.
    let (service_api, pod_api): (Api<StreamGateService>, Api<PartialObjectMeta<Pod>>) =
        match &namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client, ns),
            ),
            None => (Api::all(client.clone()), Api::all(client)),
        };
    let notify = changed.clone();
    let service_events = reflector::reflector(
        services_writer,
        watcher(service_api, watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .for_each(move |_| {
        notify.notify_one();
        async {}
    });
    let pod_events = reflector::reflector(
        pods_writer,
        watcher(pod_api, watcher::Config::default().labels(SERVICE_LABEL)),
    )
    .default_backoff()
    .touched_objects()
    .for_each(move |_| {
        changed.notify_one();
        async {}
    });
    tokio::spawn(service_events);
    tokio::spawn(pod_events);
    (services, pods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Arc<PartialObjectMeta<Pod>> {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        let mut meta = PartialObjectMeta::<Pod>::default();
        meta.metadata.labels = map(labels);
        meta.metadata.annotations = map(annotations);
        Arc::new(meta)
    }

    #[test]
    fn services_and_injected_pods_declare_subjects() {
        let sgs: StreamGateService = serde_yaml::from_str(
            "apiVersion: streamgate.io/v1alpha1\nkind: StreamGateService\nmetadata: {name: web, namespace: a}\nspec: {image: x, port: 1, events: {publish: [file.uploaded], subscribe: [{type: video.ready}]}}",
        )
        .unwrap();
        let sgs = Arc::new(sgs);
        let injected = pod(
            &[(SERVICE_LABEL, "legacy")],
            &[("streamgate.io/subscribe", "file.uploaded=/events")],
        );
        let unlabelled = pod(&[], &[("streamgate.io/publish", "other.thing")]);
        let subjects = declared(&[sgs], &[injected, unlabelled]);
        assert_eq!(
            subjects.events,
            ["streamgate.file.uploaded", "streamgate.video.ready"]
        );
        assert_eq!(
            subjects.dead_letters,
            [
                "streamgate.dlq.legacy.file.uploaded",
                "streamgate.dlq.web.video.ready"
            ]
        );
    }
}
