//! The `streamgate.io/*` annotations of an existing workload, read into the same sidecar
//! configuration a StreamGateService spec gives. Every bad value is an error naming its
//! annotation, so a pod is refused rather than started with a wrong or missing sidecar.

use std::collections::BTreeMap;
use streamgate_crds::sidecar_config::{ServiceConfig, SidecarConfig};
use streamgate_crds::{
    Events, FieldError, HealthCheck, HealthCheckType, LogLevel, Protocol, SidecarSpec,
    Subscription, Upstream,
};

pub const PREFIX: &str = "streamgate.io/";
pub const INJECT: &str = "streamgate.io/inject";
pub const SERVICE_NAME: &str = "streamgate.io/service-name";
pub const APP_PORT: &str = "streamgate.io/app-port";
pub const PROTOCOL: &str = "streamgate.io/protocol";
pub const TAGS: &str = "streamgate.io/tags";
pub const HEALTH_TYPE: &str = "streamgate.io/health-type";
pub const HEALTH_PATH: &str = "streamgate.io/health-path";
pub const HEALTH_PORT: &str = "streamgate.io/health-port";
pub const HEALTH_PERIOD: &str = "streamgate.io/health-period-seconds";
pub const HEALTH_TIMEOUT: &str = "streamgate.io/health-timeout-seconds";
pub const HEALTH_FAILURES: &str = "streamgate.io/health-failure-threshold";
pub const HEALTH_SUCCESSES: &str = "streamgate.io/health-success-threshold";
pub const PUBLISH: &str = "streamgate.io/publish";
pub const SUBSCRIBE: &str = "streamgate.io/subscribe";
pub const UPSTREAMS: &str = "streamgate.io/upstreams";
pub const ALLOWED_CALLERS: &str = "streamgate.io/allowed-callers";
pub const SIDECAR_IMAGE: &str = "streamgate.io/sidecar-image";
pub const SIDECAR_LOG_LEVEL: &str = "streamgate.io/sidecar-log-level";
pub const SIDECAR_CPU_REQUEST: &str = "streamgate.io/sidecar-cpu-request";
pub const SIDECAR_MEMORY_REQUEST: &str = "streamgate.io/sidecar-memory-request";
pub const SIDECAR_MEMORY_LIMIT: &str = "streamgate.io/sidecar-memory-limit";
pub const LEAVE_FIRST: &str = "streamgate.io/leave-first";
pub const LEAVE_DELAY: &str = "streamgate.io/leave-delay";
pub const TRACE_SAMPLING_RATIO: &str = "streamgate.io/trace-sampling-ratio";
/// Set by the webhook on the pods it injected.
pub const INJECTED: &str = "streamgate.io/injected";

/// Every annotation the webhook understands; any other `streamgate.io/` key is a typo
/// and is refused.
const KNOWN: &[&str] = &[
    INJECT,
    SERVICE_NAME,
    APP_PORT,
    PROTOCOL,
    TAGS,
    HEALTH_TYPE,
    HEALTH_PATH,
    HEALTH_PORT,
    HEALTH_PERIOD,
    HEALTH_TIMEOUT,
    HEALTH_FAILURES,
    HEALTH_SUCCESSES,
    PUBLISH,
    SUBSCRIBE,
    UPSTREAMS,
    ALLOWED_CALLERS,
    SIDECAR_IMAGE,
    SIDECAR_LOG_LEVEL,
    SIDECAR_CPU_REQUEST,
    SIDECAR_MEMORY_REQUEST,
    SIDECAR_MEMORY_LIMIT,
    LEAVE_FIRST,
    LEAVE_DELAY,
    TRACE_SAMPLING_RATIO,
    INJECTED,
    crate::labels::CONFIG_HASH_ANNOTATION,
];

/// Which annotation carries each field of the sidecar config, to name it in errors.
const FIELD_ANNOTATIONS: &[(&str, &str)] = &[
    ("service.serviceName", SERVICE_NAME),
    ("service.port", APP_PORT),
    ("service.health.path", HEALTH_PATH),
    ("service.health.port", HEALTH_PORT),
    ("service.health.periodSeconds", HEALTH_PERIOD),
    ("service.health.timeoutSeconds", HEALTH_TIMEOUT),
    ("service.health.failureThreshold", HEALTH_FAILURES),
    ("service.health.successThreshold", HEALTH_SUCCESSES),
    ("service.events.publish", PUBLISH),
    ("service.events.subscribe", SUBSCRIBE),
    ("service.upstreams", UPSTREAMS),
    ("service.allowedCallers", ALLOWED_CALLERS),
];

/// What the pod's annotations ask for.
#[derive(Clone, Debug, PartialEq)]
pub struct AnnotatedSidecar {
    pub config: SidecarConfig,
    pub sidecar: SidecarSpec,
}

fn bad(annotation: &str, reason: impl std::fmt::Display) -> FieldError {
    FieldError::new(annotation, reason.to_string())
}

fn int(annotations: &BTreeMap<String, String>, key: &str) -> Result<Option<i32>, FieldError> {
    annotations
        .get(key)
        .map(|v| {
            v.trim()
                .parse::<i32>()
                .map_err(|_| bad(key, format!("{v:?} is not a whole number")))
        })
        .transpose()
}

/// A comma-separated list. An empty value is an empty list; an empty item (`a,,b`,
/// a trailing comma) is refused naming the annotation, since it is most likely a typo.
fn list(annotation: &str, value: &str) -> Result<Vec<String>, FieldError> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, item)| match item {
            "" => Err(bad(
                annotation,
                format!("item {} of {value:?} is empty", i + 1),
            )),
            item => Ok(item.to_string()),
        })
        .collect()
}

/// Reads the annotations. `default_name` is used when `streamgate.io/service-name` is
/// absent (the workload's `app.kubernetes.io/name` or `app` label); `container_ports`
/// are the app containers' ports, used when `streamgate.io/app-port` is absent and
/// there is exactly one.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    default_name: Option<&str>,
    container_ports: &[i32],
) -> Result<AnnotatedSidecar, FieldError> {
    if let Some(unknown) = annotations
        .keys()
        .find(|k| k.starts_with(PREFIX) && !KNOWN.contains(&k.as_str()))
    {
        return Err(bad(unknown, "unknown StreamGate annotation"));
    }
    let service = ServiceConfig {
        service_name: service_name(annotations, default_name)?,
        port: app_port(annotations, container_ports)?,
        protocol: protocol(annotations)?,
        tags: list_of(annotations, TAGS)?,
        meta: BTreeMap::new(),
        health: health(annotations)?,
        events: events(annotations)?,
        upstreams: annotations
            .get(UPSTREAMS)
            .map(|v| parse_upstreams(v))
            .transpose()?
            .unwrap_or_default(),
        allowed_callers: list_of(annotations, ALLOWED_CALLERS)?,
    };
    service.validate().map_err(|e| {
        let annotation = FIELD_ANNOTATIONS
            .iter()
            .find(|(field, _)| e.field.starts_with(field))
            .map(|(_, a)| *a)
            .unwrap_or(INJECT);
        bad(annotation, format!("{} ({})", e.reason, e.field))
    })?;
    let log_level = log_level(annotations)?;
    let sidecar = SidecarSpec {
        image: annotations.get(SIDECAR_IMAGE).map(|s| s.trim().to_string()),
        resources: parse_resources(annotations)?,
        log_level,
        leave_first: leave_first(annotations)?,
        leave_delay: leave_delay(annotations)?,
        trace_sampling_ratio: trace_sampling_ratio(annotations)?,
    };
    let mut config: SidecarConfig =
        serde_json::from_value(serde_json::json!({ "service": service }))
            .map_err(|e| bad(INJECT, e))?;
    config.log_level = log_level;
    Ok(AnnotatedSidecar { config, sidecar })
}

/// The annotation's comma-separated list, empty when it is absent.
fn list_of(annotations: &BTreeMap<String, String>, key: &str) -> Result<Vec<String>, FieldError> {
    annotations
        .get(key)
        .map(|v| list(key, v))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// The events of `streamgate.io/publish` and `streamgate.io/subscribe` (the operator's
/// streams capture those of injected pods too).
pub fn events(annotations: &BTreeMap<String, String>) -> Result<Events, FieldError> {
    Ok(Events {
        publish: list_of(annotations, PUBLISH)?,
        subscribe: annotations
            .get(SUBSCRIBE)
            .map(|v| parse_subscriptions(v))
            .transpose()?
            .unwrap_or_default(),
        spool: None,
    })
}

fn service_name(
    annotations: &BTreeMap<String, String>,
    default_name: Option<&str>,
) -> Result<String, FieldError> {
    match (annotations.get(SERVICE_NAME), default_name) {
        (Some(name), _) => Ok(name.trim().to_string()),
        (None, Some(name)) => Ok(name.to_string()),
        (None, None) => Err(bad(
            SERVICE_NAME,
            "required: the pod has no app.kubernetes.io/name or app label to default it from",
        )),
    }
}

fn app_port(
    annotations: &BTreeMap<String, String>,
    container_ports: &[i32],
) -> Result<i32, FieldError> {
    match (int(annotations, APP_PORT)?, container_ports) {
        (Some(port), _) => Ok(port),
        (None, [only]) => Ok(*only),
        (None, _) => Err(bad(
            APP_PORT,
            "required: the app containers do not declare exactly one port",
        )),
    }
}

fn protocol(annotations: &BTreeMap<String, String>) -> Result<Protocol, FieldError> {
    match annotations.get(PROTOCOL).map(|s| s.trim()) {
        None | Some("grpc") => Ok(Protocol::Grpc),
        Some("http") => Ok(Protocol::Http),
        Some(other) => Err(bad(PROTOCOL, format!("{other:?} is not grpc or http"))),
    }
}

fn health(annotations: &BTreeMap<String, String>) -> Result<HealthCheck, FieldError> {
    let kind = match annotations.get(HEALTH_TYPE).map(|s| s.trim()) {
        None | Some("http") => HealthCheckType::Http,
        Some("grpc") => HealthCheckType::Grpc,
        Some("tcp") => HealthCheckType::Tcp,
        Some(other) => {
            return Err(bad(
                HEALTH_TYPE,
                format!("{other:?} is not http, grpc or tcp"),
            ));
        }
    };
    let mut health = HealthCheck {
        kind,
        path: annotations.get(HEALTH_PATH).map(|p| p.trim().to_string()),
        port: int(annotations, HEALTH_PORT)?,
        ..Default::default()
    };
    let numbers = [
        (HEALTH_PERIOD, &mut health.period_seconds),
        (HEALTH_TIMEOUT, &mut health.timeout_seconds),
        (HEALTH_FAILURES, &mut health.failure_threshold),
        (HEALTH_SUCCESSES, &mut health.success_threshold),
    ];
    for (annotation, field) in numbers {
        if let Some(v) = int(annotations, annotation)? {
            *field = v;
        }
    }
    Ok(health)
}

fn leave_first(annotations: &BTreeMap<String, String>) -> Result<Option<bool>, FieldError> {
    match annotations.get(LEAVE_FIRST).map(|s| s.trim()) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(bad(LEAVE_FIRST, format!("{other:?} is not true or false"))),
    }
}

fn leave_delay(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<streamgate_crds::GoDuration>, FieldError> {
    let Some(text) = annotations.get(LEAVE_DELAY).map(|s| s.trim()) else {
        return Ok(None);
    };
    let delay = streamgate_crds::GoDuration::parse(text).map_err(|e| bad(LEAVE_DELAY, e))?;
    let spec = SidecarSpec {
        leave_delay: Some(delay),
        ..Default::default()
    };
    spec.validate().map_err(|e| bad(LEAVE_DELAY, e.reason))?;
    Ok(Some(delay))
}

fn trace_sampling_ratio(annotations: &BTreeMap<String, String>) -> Result<Option<f64>, FieldError> {
    let Some(text) = annotations.get(TRACE_SAMPLING_RATIO).map(|s| s.trim()) else {
        return Ok(None);
    };
    text.parse::<f64>()
        .ok()
        .filter(|ratio| (0.0..=1.0).contains(ratio))
        .map(Some)
        .ok_or_else(|| {
            bad(
                TRACE_SAMPLING_RATIO,
                format!("{text:?} is not a sampling ratio from 0 to 1 (0.01 samples 1%)"),
            )
        })
}

fn log_level(annotations: &BTreeMap<String, String>) -> Result<LogLevel, FieldError> {
    match annotations.get(SIDECAR_LOG_LEVEL).map(|s| s.trim()) {
        None => Ok(LogLevel::Info),
        Some(text) => {
            serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|_| {
                bad(
                    SIDECAR_LOG_LEVEL,
                    format!("{text:?} is not error, warn, info, debug or trace"),
                )
            })
        }
    }
}

/// `type=path[:maxDeliver]`, comma-separated: `transcoding.completed=/events:5,job.failed=/jobs`.
fn parse_subscriptions(value: &str) -> Result<Vec<Subscription>, FieldError> {
    list(SUBSCRIBE, value)?
        .iter()
        .map(|entry| {
            let (event_type, rest) = entry.split_once('=').ok_or_else(|| {
                bad(
                    SUBSCRIBE,
                    format!("{entry:?} is not type=/path[:maxDeliver]"),
                )
            })?;
            let (path, max_deliver) = match rest.rsplit_once(':') {
                Some((path, n)) => (
                    path,
                    n.parse::<i32>().map_err(|_| {
                        bad(
                            SUBSCRIBE,
                            format!("maxDeliver {n:?} in {entry:?} is not a whole number"),
                        )
                    })?,
                ),
                None => (rest, 5),
            };
            Ok(Subscription {
                event_type: event_type.trim().to_string(),
                path: path.trim().to_string(),
                max_deliver,
                // By the pod's protocol annotation, as for a StreamGateService.
                delivery: None,
            })
        })
        .collect()
}

/// Either a comma-separated list of service names, or a JSON list with the spec's
/// upstream objects (`[{"service":"metadata","timeout":"2s"}]`).
fn parse_upstreams(value: &str) -> Result<Vec<Upstream>, FieldError> {
    let trimmed = value.trim();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed)
            .map_err(|e| bad(UPSTREAMS, format!("invalid JSON: {e}")));
    }
    list(UPSTREAMS, trimmed)?
        .into_iter()
        .map(|service| {
            serde_json::from_value(serde_json::json!({ "service": service }))
                .map_err(|e| bad(UPSTREAMS, e))
        })
        .collect()
}

fn parse_resources(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<k8s_openapi::api::core::v1::ResourceRequirements>, FieldError> {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let quantity = |key: &str| -> Result<Option<Quantity>, FieldError> {
        match annotations.get(key) {
            None => Ok(None),
            Some(v) if is_quantity(v.trim()) => Ok(Some(Quantity(v.trim().to_string()))),
            Some(v) => Err(bad(
                key,
                format!("{v:?} is not a quantity such as 100m or 64Mi"),
            )),
        }
    };
    let cpu = quantity(SIDECAR_CPU_REQUEST)?;
    let memory = quantity(SIDECAR_MEMORY_REQUEST)?;
    let limit = quantity(SIDECAR_MEMORY_LIMIT)?;
    if cpu.is_none() && memory.is_none() && limit.is_none() {
        return Ok(None);
    }
    // Only what the annotations name; the webhook fills the rest from the operator's
    // configured defaults (settings::merge_resources).
    let mut defaults = k8s_openapi::api::core::v1::ResourceRequirements::default();
    let requests = defaults.requests.get_or_insert_with(BTreeMap::new);
    if let Some(cpu) = cpu {
        requests.insert("cpu".into(), cpu);
    }
    if let Some(memory) = memory {
        requests.insert("memory".into(), memory);
    }
    if let Some(limit) = limit {
        defaults
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert("memory".into(), limit);
    }
    Ok(Some(defaults))
}

/// A Kubernetes quantity: digits (one optional decimal point), then an optional suffix.
fn is_quantity(text: &str) -> bool {
    const SUFFIXES: &[&str] = &["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"];
    let digits = text
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    digits > 0 && text[..digits].matches('.').count() <= 1 && SUFFIXES.contains(&&text[digits..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn full_annotation_set_becomes_the_same_config_a_spec_gives() {
        let a = annotations(&[
            (INJECT, "true"),
            (SERVICE_NAME, "upload"),
            (APP_PORT, "9091"),
            (HEALTH_TYPE, "grpc"),
            (PUBLISH, "file.uploaded"),
            (SUBSCRIBE, "transcoding.completed=/events:7"),
            (UPSTREAMS, "metadata, cache"),
            (ALLOWED_CALLERS, "api-gateway"),
            (SIDECAR_MEMORY_LIMIT, "96Mi"),
        ]);
        let parsed = parse(&a, None, &[]).unwrap();
        let s = &parsed.config.service;
        assert_eq!((s.service_name.as_str(), s.port), ("upload", 9091));
        assert_eq!(s.health.kind, HealthCheckType::Grpc);
        assert_eq!(s.events.subscribe[0].max_deliver, 7);
        assert_eq!(s.upstreams.len(), 2);
        let limits = parsed.sidecar.resources.unwrap().limits.unwrap();
        assert_eq!(limits["memory"].0, "96Mi");
    }

    #[test]
    fn name_and_port_default_from_labels_and_the_single_container_port() {
        let parsed = parse(&annotations(&[(INJECT, "true")]), Some("web"), &[8080]).unwrap();
        assert_eq!(parsed.config.service.service_name, "web");
        assert_eq!(parsed.config.service.port, 8080);
    }

    #[test]
    fn each_bad_annotation_is_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[(APP_PORT, "http")], APP_PORT),
            (&[(APP_PORT, "70000")], APP_PORT),
            (&[(SERVICE_NAME, "Bad_Name")], SERVICE_NAME),
            (&[(PROTOCOL, "udp")], PROTOCOL),
            (&[(HEALTH_TYPE, "exec")], HEALTH_TYPE),
            (&[(HEALTH_TIMEOUT, "9")], HEALTH_TIMEOUT),
            (&[(PUBLISH, "File.Uploaded")], PUBLISH),
            (&[(SUBSCRIBE, "a.b")], SUBSCRIBE),
            (&[(UPSTREAMS, "[{\"service\": 1}]")], UPSTREAMS),
            (&[(SIDECAR_LOG_LEVEL, "loud")], SIDECAR_LOG_LEVEL),
            // An empty item is a typo, not an item to drop.
            (&[(UPSTREAMS, "ok,,")], UPSTREAMS),
            (&[(TAGS, "v1,")], TAGS),
            (&[(ALLOWED_CALLERS, ",api-gateway")], ALLOWED_CALLERS),
            (&[(PUBLISH, "a.b, ,c.d")], PUBLISH),
            (&[(SUBSCRIBE, "a.b=/x,,")], SUBSCRIBE),
            (&[(SIDECAR_MEMORY_LIMIT, "lots")], SIDECAR_MEMORY_LIMIT),
            (&[(LEAVE_FIRST, "yes")], LEAVE_FIRST),
            (&[(LEAVE_DELAY, "3")], LEAVE_DELAY),
            (&[(LEAVE_DELAY, "2m")], LEAVE_DELAY),
            (&[(TRACE_SAMPLING_RATIO, "5%")], TRACE_SAMPLING_RATIO),
            (&[(TRACE_SAMPLING_RATIO, "1.5")], TRACE_SAMPLING_RATIO),
            (
                &[("streamgate.io/app-prot", "80")],
                "streamgate.io/app-prot",
            ),
        ];
        for (pairs, expected) in cases {
            let mut a = annotations(&[(INJECT, "true"), (SERVICE_NAME, "svc"), (APP_PORT, "8080")]);
            a.extend(annotations(pairs));
            let err = parse(&a, None, &[]).unwrap_err();
            assert_eq!(&err.field, expected, "{pairs:?}: {err}");
        }
    }

    #[test]
    fn leaving_first_can_be_tuned_or_turned_off() {
        let base = [(INJECT, "true"), (SERVICE_NAME, "svc"), (APP_PORT, "8080")];
        let parsed = parse(&annotations(&base), None, &[]).unwrap();
        assert!(parsed.sidecar.leaves_first());
        let mut a = annotations(&base);
        a.extend(annotations(&[(LEAVE_FIRST, "false"), (LEAVE_DELAY, "10s")]));
        let parsed = parse(&a, None, &[]).unwrap();
        assert!(!parsed.sidecar.leaves_first());
        assert_eq!(
            parsed
                .sidecar
                .leave_delay
                .map(|d| d.as_duration().as_secs()),
            Some(10)
        );
    }

    #[test]
    fn missing_name_or_port_is_named() {
        let a = annotations(&[(INJECT, "true")]);
        assert_eq!(parse(&a, None, &[80]).unwrap_err().field, SERVICE_NAME);
        assert_eq!(parse(&a, Some("x"), &[80, 81]).unwrap_err().field, APP_PORT);
    }
}
