//! THE sidecar renderer: the one function that turns a sidecar configuration into the
//! sidecar container (and the volumes it needs). The operator's Deployments and the
//! injection webhook both call [`render_sidecar`], so an injected pod and a
//! StreamGateService pod get the same sidecar.

use crate::sidecar_defaults::SidecarDefaults;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    EphemeralVolumeSource, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PersistentVolumeClaimSpec, PersistentVolumeClaimTemplate, Probe, ProjectedVolumeSource,
    SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};
use streamgate_crds::contract::identity;
use streamgate_crds::contract::lifecycle::LEAVE_PATH;
use streamgate_crds::contract::mounts::{NATS_CREDS_DIR, SPOOL_DIR};
use streamgate_crds::contract::spool;
use streamgate_crds::sidecar_config::{
    ADMIN_PORT, APP_PORT, CONFIG_ENV, INBOUND_PORT, IdentityConfig, SidecarConfig,
};
use streamgate_crds::{GoDuration, SidecarSpec};

/// Name of the sidecar container.
pub const SIDECAR_NAME: &str = "streamgate-sidecar";
/// Names the address the app reaches its sidecar at (`127.0.0.1:APP_PORT`).
pub const SIDECAR_ADDR_ENV: &str = "STREAMGATE_SIDECAR_ADDR";
const SPOOL_VOLUME: &str = "streamgate-spool";
const NATS_CREDS_VOLUME: &str = "streamgate-nats-credentials";
const IDENTITY_TOKEN_VOLUME: &str = "streamgate-identity-token";
/// Non-root user the sidecar runs as (PodSecurity `restricted`).
const SIDECAR_UID: i64 = 65532;

/// The rendered sidecar and what the pod needs around it.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedSidecar {
    /// A native sidecar: an init container with `restartPolicy: Always`.
    pub container: Container,
    /// Volumes the container mounts, to add to the pod.
    pub volumes: Vec<Volume>,
    /// The configuration document handed to the sidecar.
    pub config_yaml: String,
    /// Digest of `config_yaml`, for the pod template annotation.
    pub config_hash: String,
    /// The `preStop` hook every app container gets (unless it has its own): the pod
    /// leaves the mesh before the kubelet stops the app. `None` when the service opted
    /// out (`leaveFirst: false`).
    pub app_pre_stop: Option<Lifecycle>,
    /// The pod's `fsGroup` the sidecar needs, unless the pod sets one: a claimed spool
    /// volume's root is the provisioner's (often `root` 0755), which the non-root sidecar
    /// could not write; an emptyDir needs none.
    pub fs_group: Option<i64>,
}

/// Renders the sidecar for `config` (the service part comes from a StreamGateService spec
/// or from injection annotations), with `spec`'s image, resources and log level
/// overriding the operator-wide `settings`.
pub fn render_sidecar(
    config: &SidecarConfig,
    spec: &SidecarSpec,
    settings: &SidecarDefaults,
) -> RenderedSidecar {
    let config = completed_config(config, spec, settings);
    let config_yaml = serde_yaml::to_string(&config).expect("sidecar config always serializes");
    let config_hash = digest(&config_yaml);
    let (volumes, mounts) = volumes(&config, settings);
    let claimed_spool = volumes.iter().any(|v| v.ephemeral.is_some());
    let container = Container {
        name: SIDECAR_NAME.to_string(),
        image: Some(spec.image.clone().unwrap_or_else(|| settings.image.clone())),
        env: Some(sidecar_env(&config_yaml, &config, spec, settings)),
        ports: Some(vec![
            port("sg-inbound", INBOUND_PORT),
            port("sg-admin", ADMIN_PORT),
        ]),
        // Native sidecar: started before the app containers (its startup probe gates
        // them), stopped after them, and never keeps a Job's pod alive.
        restart_policy: Some("Always".to_string()),
        startup_probe: Some(probe("/livez", 1, 1, 60)),
        readiness_probe: Some(probe("/readyz", 0, 2, 1)),
        liveness_probe: Some(probe("/livez", 0, 10, 3)),
        resources: Some(
            spec.resources
                .clone()
                .unwrap_or_else(|| settings.resources.clone()),
        ),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    RenderedSidecar {
        container,
        volumes,
        config_yaml,
        config_hash,
        app_pre_stop: spec.leaves_first().then(leave_first_hook),
        fs_group: claimed_spool.then_some(SIDECAR_UID),
    }
}

impl RenderedSidecar {
    /// Gives the pod the `fsGroup` the sidecar needs, unless it has one of its own.
    pub fn add_fs_group(&self, pod: &mut k8s_openapi::api::core::v1::PodSpec) {
        let Some(group) = self.fs_group else {
            return;
        };
        let context = pod.security_context.get_or_insert_with(Default::default);
        if context.fs_group.is_none() {
            context.fs_group = Some(group);
            context.fs_group_change_policy = Some("OnRootMismatch".to_string());
        }
    }

    /// Gives an app container the leave-first hook. A `preStop` of the app's own is
    /// kept (Kubernetes allows one): that pod leaves Consul only on the sidecar's SIGTERM.
    pub fn add_pre_stop(&self, app: &mut Container) {
        let Some(hook) = &self.app_pre_stop else {
            return;
        };
        let lifecycle = app.lifecycle.get_or_insert_with(Default::default);
        if lifecycle.pre_stop.is_none() {
            lifecycle.pre_stop = hook.pre_stop.clone();
        }
    }
}

/// The kubelet's HTTP GET on the sidecar's admin port, answered once the pod left
/// Consul and stopped taking calls (the sidecar's `departure`).
fn leave_first_hook() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            http_get: Some(HTTPGetAction {
                path: Some(LEAVE_PATH.to_string()),
                port: IntOrString::Int(i32::from(ADMIN_PORT)),
                scheme: Some("HTTP".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The configuration document with what the operator decides: where Consul, NATS and
/// the spool are, and the log level.
fn completed_config(
    config: &SidecarConfig,
    spec: &SidecarSpec,
    settings: &SidecarDefaults,
) -> SidecarConfig {
    let mut config = config.clone();
    config.consul.address = Some(settings.consul_address.clone());
    config.consul.cluster_id = Some(settings.cluster_id.clone());
    config.consul.mode = settings.consul_mode;
    config.nats.url = Some(settings.nats_url.clone());
    config.spool_dir = Some(SPOOL_DIR.to_string());
    config.log_level = spec.log_level;
    if let Some(delay) = spec.leave_delay {
        config.leave_delay = delay;
    }
    if settings.nats_credentials_secret.is_some() {
        config.nats.credentials_dir = Some(NATS_CREDS_DIR.to_string());
    }
    config.identity = settings.identity.as_ref().and_then(|identity| {
        Some(IdentityConfig {
            endpoint: identity.endpoint.clone(),
            endpoint_ca: identity.ca.endpoint_ca()?,
            mode: identity.mode,
        })
    });
    if let Some(Ok(bytes)) = config.service.events.spool.as_ref().and_then(|s| s.bytes()) {
        let mut relay = config.nats.relay.clone().unwrap_or_default();
        relay.spool_max_bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        config.nats.relay = Some(relay);
    }
    if let Some(owned) = settings.owned_streams {
        let mut relay = config.nats.relay.clone().unwrap_or_default();
        relay.manage_streams = false;
        relay.duplicate_window = GoDuration::from_millis(millis(owned.duplicate_window));
        relay.stream_max_age = GoDuration::from_millis(millis(owned.max_age));
        config.nats.relay = Some(relay);
    }
    config
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The configuration document, the pod's identity from the downward API, the Consul
/// token from its Secret when there is one, and the trace export settings.
fn sidecar_env(
    config_yaml: &str,
    config: &SidecarConfig,
    spec: &SidecarSpec,
    settings: &SidecarDefaults,
) -> Vec<EnvVar> {
    let mut env = vec![EnvVar {
        name: CONFIG_ENV.to_string(),
        value: Some(config_yaml.to_string()),
        ..Default::default()
    }];
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_UID", "metadata.uid"),
        ("POD_IP", "status.podIP"),
        ("HOST_IP", "status.hostIP"),
        // The Consul node of a catalog-mode instance.
        ("NODE_NAME", "spec.nodeName"),
    ] {
        env.push(field_env(name, path));
    }
    if let Some(secret) = &settings.consul_token_secret {
        env.push(EnvVar {
            name: "CONSUL_HTTP_TOKEN".to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: "token".to_string(),
                    optional: Some(true),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(traces) = &settings.traces {
        let ratio = spec.trace_sampling_ratio.unwrap_or(traces.sampling_ratio);
        let service = &config.service.service_name;
        // `$(POD_…)` expands the variables defined above (the kubelet's own expansion).
        let resource =
            "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME),service.namespace=$(POD_NAMESPACE)"
                .to_string();
        for (name, value) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", traces.endpoint.clone()),
            (
                "OTEL_TRACES_SAMPLER",
                "parentbased_traceidratio".to_string(),
            ),
            ("OTEL_TRACES_SAMPLER_ARG", ratio.to_string()),
            ("OTEL_SERVICE_NAME", service.clone()),
            ("OTEL_RESOURCE_ATTRIBUTES", resource),
        ] {
            env.push(EnvVar {
                name: name.to_string(),
                value: Some(value),
                ..Default::default()
            });
        }
    }
    env
}

/// The spool's volume, `bytes` large: an emptyDir, or a generic ephemeral volume of
/// `storage_class` (a claim made and deleted with the pod, on the class's storage).
fn spool_volume_source(bytes: u64, storage_class: Option<String>) -> Volume {
    let size = Quantity(bytes.to_string());
    let Some(class) = storage_class else {
        return Volume {
            name: SPOOL_VOLUME.to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(size),
                ..Default::default()
            }),
            ..Default::default()
        };
    };
    Volume {
        name: SPOOL_VOLUME.to_string(),
        ephemeral: Some(EphemeralVolumeSource {
            volume_claim_template: Some(PersistentVolumeClaimTemplate {
                metadata: Some(ObjectMeta {
                    labels: Some(crate::labels::managed_by()),
                    ..Default::default()
                }),
                spec: PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_string()]),
                    storage_class_name: Some(class),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some([("storage".to_string(), size)].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            }),
        }),
        ..Default::default()
    }
}

/// The spool, the identity token and the NATS credentials, with their mounts.
fn volumes(config: &SidecarConfig, settings: &SidecarDefaults) -> (Vec<Volume>, Vec<VolumeMount>) {
    let spool_max = config
        .nats
        .relay
        .clone()
        .unwrap_or_default()
        .spool_max_bytes;
    let spool_volume = spool::volume_bytes(u64::try_from(spool_max).unwrap_or_default());
    let storage_class = config
        .service
        .events
        .spool
        .as_ref()
        .and_then(|s| s.storage_class.clone());
    let mut volumes = vec![spool_volume_source(spool_volume, storage_class)];
    let mut mounts = vec![VolumeMount {
        name: SPOOL_VOLUME.to_string(),
        mount_path: SPOOL_DIR.to_string(),
        ..Default::default()
    }];
    // The projected ServiceAccount token the sidecar proves itself with to the identity
    // endpoint (audience `streamgate`, bound to this pod; the kubelet renews it).
    if config.identity.is_some() {
        volumes.push(identity_token_volume());
        mounts.push(read_only_mount(IDENTITY_TOKEN_VOLUME, identity::TOKEN_DIR));
    }
    if let Some(secret) = &settings.nats_credentials_secret {
        volumes.push(secret_volume(NATS_CREDS_VOLUME, secret.clone()));
        mounts.push(read_only_mount(NATS_CREDS_VOLUME, NATS_CREDS_DIR));
    }
    (volumes, mounts)
}

fn identity_token_volume() -> Volume {
    Volume {
        name: IDENTITY_TOKEN_VOLUME.to_string(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(identity::TOKEN_AUDIENCE.to_string()),
                    expiration_seconds: Some(identity::TOKEN_EXPIRATION_SECONDS),
                    path: identity::TOKEN_FILE.to_string(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An optional Secret volume: the pod starts without it and gets the files once the
/// Secret exists.
fn secret_volume(name: &str, secret: String) -> Volume {
    Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn read_only_mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// The environment variable that tells the app where its sidecar is.
pub fn sidecar_addr_env() -> EnvVar {
    EnvVar {
        name: SIDECAR_ADDR_ENV.to_string(),
        value: Some(format!("127.0.0.1:{APP_PORT}")),
        ..Default::default()
    }
}

fn digest(text: &str) -> String {
    let sum = Sha256::digest(text.as_bytes());
    sum.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                api_version: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(number),
        protocol: Some("TCP".to_string()),
        ..Default::default()
    }
}

fn probe(path: &str, initial_delay: i32, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..Default::default()
        }),
        // The API server drops a zero delay; leaving it out keeps re-applies no-ops.
        initial_delay_seconds: (initial_delay > 0).then_some(initial_delay),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

/// Meets PodSecurity `restricted`, so the sidecar never stops a pod from being admitted.
fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(SIDECAR_UID),
        run_as_group: Some(SIDECAR_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamgate_crds::LogLevel;
    use streamgate_crds::sidecar_config::ServiceConfig;

    fn config() -> SidecarConfig {
        serde_yaml::from_str("service: {serviceName: upload, port: 9091}").unwrap()
    }

    #[test]
    fn renders_a_native_sidecar_gated_by_a_startup_probe() {
        let r = render_sidecar(
            &config(),
            &SidecarSpec::default(),
            &SidecarDefaults::for_tests(),
        );
        assert_eq!(r.container.restart_policy.as_deref(), Some("Always"));
        assert!(r.container.startup_probe.is_some());
        assert_eq!(
            r.container.image.as_deref(),
            Some("streamgate/sidecar:test")
        );
        let env = r.container.env.unwrap();
        let config_env = env.iter().find(|e| e.name == CONFIG_ENV).unwrap();
        let rendered: SidecarConfig =
            serde_yaml::from_str(config_env.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            rendered.consul.address.as_deref(),
            Some("http://127.0.0.1:8500")
        );
        assert!(env.iter().any(|e| e.name == "POD_IP"));
    }

    #[test]
    fn a_spool_size_and_storage_class_render_a_claim_above_the_spool() {
        let mut with_spool = config();
        with_spool.service.events.spool = Some(streamgate_crds::events::SpoolVolume {
            size: Some("1Gi".into()),
            storage_class: Some("fast-retain".into()),
        });
        let r = render_sidecar(
            &with_spool,
            &SidecarSpec::default(),
            &SidecarDefaults::for_tests(),
        );
        let rendered: SidecarConfig = serde_yaml::from_str(&r.config_yaml).unwrap();
        assert_eq!(rendered.nats.relay.unwrap().spool_max_bytes, 1 << 30);
        let spool = r.volumes.iter().find(|v| v.name == SPOOL_VOLUME).unwrap();
        assert!(spool.empty_dir.is_none());
        let claim = spool
            .ephemeral
            .as_ref()
            .and_then(|e| e.volume_claim_template.as_ref())
            .unwrap();
        assert_eq!(
            claim.spec.storage_class_name.as_deref(),
            Some("fast-retain")
        );
        let requested = &claim
            .spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"];
        assert_eq!(requested.0, spool::volume_bytes(1 << 30).to_string());
        assert_eq!(
            r.fs_group,
            Some(SIDECAR_UID),
            "the claimed volume is made writable"
        );
        let mut pod = k8s_openapi::api::core::v1::PodSpec::default();
        r.add_fs_group(&mut pod);
        assert_eq!(pod.security_context.unwrap().fs_group, Some(SIDECAR_UID));
        let plain = render_sidecar(
            &config(),
            &SidecarSpec::default(),
            &SidecarDefaults::for_tests(),
        );
        assert_eq!(plain.fs_group, None, "an emptyDir needs no fsGroup");
    }

    #[test]
    fn sidecars_of_an_operator_owning_the_streams_only_bind() {
        let mut settings = SidecarDefaults::for_tests();
        let r = render_sidecar(&config(), &SidecarSpec::default(), &settings);
        let rendered: SidecarConfig = serde_yaml::from_str(&r.config_yaml).unwrap();
        assert!(rendered.nats.relay.unwrap_or_default().manage_streams);
        settings.owned_streams = Some(crate::sidecar_defaults::OwnedStreams {
            duplicate_window: std::time::Duration::from_secs(300),
            max_age: std::time::Duration::from_secs(86_400),
        });
        let r = render_sidecar(&config(), &SidecarSpec::default(), &settings);
        let relay = serde_yaml::from_str::<SidecarConfig>(&r.config_yaml)
            .unwrap()
            .nats
            .relay
            .unwrap();
        assert!(!relay.manage_streams);
        assert_eq!(relay.duplicate_window.as_duration().as_secs(), 300);
    }

    #[test]
    fn the_spool_volume_holds_more_than_the_spool_may() {
        let size_of = |config: &SidecarConfig| {
            let r = render_sidecar(
                config,
                &SidecarSpec::default(),
                &SidecarDefaults::for_tests(),
            );
            let spool = r.volumes.iter().find(|v| v.name == SPOOL_VOLUME).unwrap();
            let limit = spool
                .empty_dir
                .as_ref()
                .unwrap()
                .size_limit
                .clone()
                .unwrap();
            limit.0.parse::<u64>().unwrap()
        };
        let default_max = 256u64 << 20;
        let room = size_of(&config()) - default_max;
        assert!(
            room >= 2 * spool::SEGMENT_BYTES,
            "room for the sent part of a segment and an overshoot: {room}"
        );
        let mut small: SidecarConfig = config();
        let mut relay = small.nats.relay.clone().unwrap_or_default();
        relay.spool_max_bytes = 16 << 20;
        small.nats.relay = Some(relay);
        assert!(size_of(&small) > 16 << 20);
        assert!(
            size_of(&small) < default_max,
            "follows nats.relay.spoolMaxBytes"
        );
    }

    #[test]
    fn hash_changes_with_the_configuration_only() {
        let settings = SidecarDefaults::for_tests();
        let a = render_sidecar(&config(), &SidecarSpec::default(), &settings);
        let again = render_sidecar(&config(), &SidecarSpec::default(), &settings);
        assert_eq!(a.config_hash, again.config_hash);
        let mut changed = config();
        changed.service = ServiceConfig {
            port: 9092,
            ..changed.service
        };
        let b = render_sidecar(&changed, &SidecarSpec::default(), &settings);
        assert_ne!(a.config_hash, b.config_hash);
        let debug = SidecarSpec {
            log_level: LogLevel::Debug,
            ..Default::default()
        };
        assert_ne!(
            a.config_hash,
            render_sidecar(&config(), &debug, &settings).config_hash
        );
    }

    #[test]
    fn spec_image_and_secrets_are_honoured() {
        let settings = SidecarDefaults {
            consul_token_secret: Some("consul-acl".into()),
            nats_credentials_secret: Some("nats-creds".into()),
            ..SidecarDefaults::for_tests()
        };
        let spec = SidecarSpec {
            image: Some("example/sidecar:dev".into()),
            ..Default::default()
        };
        let r = render_sidecar(&config(), &spec, &settings);
        assert_eq!(r.container.image.as_deref(), Some("example/sidecar:dev"));
        assert!(r.volumes.iter().any(|v| v.name == NATS_CREDS_VOLUME));
        let env = r.container.env.unwrap();
        assert!(env.iter().any(|e| e.name == "CONSUL_HTTP_TOKEN"));
    }
    #[test]
    fn app_containers_leave_the_mesh_before_they_are_stopped() {
        let settings = SidecarDefaults::for_tests();
        let spec = SidecarSpec {
            leave_delay: Some(streamgate_crds::GoDuration::from_millis(7_000)),
            ..Default::default()
        };
        let r = render_sidecar(&config(), &spec, &settings);
        let mut app = Container::default();
        r.add_pre_stop(&mut app);
        let hook = app.lifecycle.unwrap().pre_stop.unwrap().http_get.unwrap();
        assert_eq!(hook.path.as_deref(), Some(LEAVE_PATH));
        assert_eq!(hook.port, IntOrString::Int(i32::from(ADMIN_PORT)));
        let rendered: SidecarConfig = serde_yaml::from_str(&r.config_yaml).unwrap();
        assert_eq!(rendered.leave_delay.as_duration().as_millis(), 7_000);
        // The kubelet's hook comes from the node's address: the sidecar must know it.
        let env = r.container.env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "HOST_IP"));
        assert!(env.iter().any(|e| e.name == "NODE_NAME"));

        // An app's own preStop is kept.
        let own = Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(k8s_openapi::api::core::v1::SleepAction { seconds: 9 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut app = Container {
            lifecycle: Some(own.clone()),
            ..Default::default()
        };
        r.add_pre_stop(&mut app);
        assert_eq!(app.lifecycle, Some(own));

        // Opted out: no hook.
        let opted_out = SidecarSpec {
            leave_first: Some(false),
            ..Default::default()
        };
        let r = render_sidecar(&config(), &opted_out, &settings);
        let mut app = Container::default();
        r.add_pre_stop(&mut app);
        assert!(app.lifecycle.is_none());
    }
}
