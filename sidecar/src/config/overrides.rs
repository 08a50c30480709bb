//! Flags and environment variables over the document, field by field.
//!
//! Values arrive as text so that a bad one is refused like a bad document value: one
//! line naming the document's field and the flag or variable it came from.

use crate::cli::Overrides;
use streamgate_crds::sidecar_config::{ConsulMode, SidecarConfig};
use streamgate_crds::{FieldError, GoDuration, HealthCheckType, LogLevel};

/// Applies every override that is set.
pub fn apply(doc: &mut SidecarConfig, o: &Overrides) -> Result<(), FieldError> {
    let service = &mut doc.service;
    set(&mut service.service_name, &o.service_name);
    if let Some(v) = &o.app_port {
        service.port = int("service.port", "--app-port", v)?;
    }
    set(&mut doc.app_host, &o.app_host);

    let health = &mut service.health;
    if let Some(v) = &o.health_type {
        health.kind = parse_enum::<HealthCheckType>("service.health.type", "--health-type", v)?;
    }
    if o.health_path.is_some() {
        health.path.clone_from(&o.health_path);
    }
    if let Some(v) = &o.health_port {
        health.port = Some(int("service.health.port", "--health-port", v)?);
    }
    let thresholds = [
        (
            &o.health_period_seconds,
            &mut health.period_seconds,
            "periodSeconds",
            "--health-period-seconds",
        ),
        (
            &o.health_timeout_seconds,
            &mut health.timeout_seconds,
            "timeoutSeconds",
            "--health-timeout-seconds",
        ),
        (
            &o.health_failure_threshold,
            &mut health.failure_threshold,
            "failureThreshold",
            "--health-failure-threshold",
        ),
        (
            &o.health_success_threshold,
            &mut health.success_threshold,
            "successThreshold",
            "--health-success-threshold",
        ),
    ];
    for (value, target, field, flag) in thresholds {
        if let Some(v) = value {
            *target = int(&format!("service.health.{field}"), flag, v)?;
        }
    }

    set(&mut doc.pod.name, &o.pod_name);
    set(&mut doc.pod.namespace, &o.pod_namespace);
    set(&mut doc.pod.uid, &o.pod_uid);
    set(&mut doc.pod.ip, &o.pod_ip);
    set(&mut doc.pod.host_ip, &o.host_ip);
    set(&mut doc.pod.node_name, &o.node_name);

    set_opt(&mut doc.listen.app, &o.app_listen);
    set_opt(&mut doc.listen.inbound, &o.inbound_listen);
    set_opt(&mut doc.listen.admin, &o.admin_listen);

    set_opt(&mut doc.consul.address, &o.consul_address);
    set_opt(&mut doc.consul.token_file, &o.consul_token_file);
    if let Some(v) = &o.consul_mode {
        doc.consul.mode = parse_enum::<ConsulMode>("consul.mode", "--consul-mode", v)?;
    }
    if let Some(v) = &o.deregister_critical_after {
        doc.consul.deregister_critical_after = duration(
            "consul.deregisterCriticalAfter",
            "--deregister-critical-after",
            v,
        )?;
    }
    set_opt(&mut doc.nats.url, &o.nats_url);
    if let Some(v) = &o.drain_timeout {
        doc.drain_timeout = duration("drainTimeout", "--drain-timeout", v)?;
    }
    if let Some(v) = &o.leave_delay {
        doc.leave_delay = duration("leaveDelay", "--leave-delay", v)?;
    }
    if let Some(v) = &o.log_level {
        doc.log_level = parse_enum::<LogLevel>("logLevel", "--log-level", v)?;
    }
    Ok(())
}

fn set(target: &mut String, value: &Option<String>) {
    if let Some(v) = value {
        target.clone_from(v);
    }
}

fn set_opt(target: &mut Option<String>, value: &Option<String>) {
    if value.is_some() {
        target.clone_from(value);
    }
}

fn int(field: &str, flag: &str, text: &str) -> Result<i32, FieldError> {
    text.trim().parse().map_err(|_| {
        FieldError::new(
            field,
            format!("{text:?} (from {flag}) is not a whole number"),
        )
    })
}

fn duration(field: &str, flag: &str, text: &str) -> Result<GoDuration, FieldError> {
    GoDuration::parse(text.trim()).map_err(|e| FieldError::new(field, format!("{e} (from {flag})")))
}

/// Parses a lower-case enum value through its serde names, so flags accept exactly
/// what the document accepts.
fn parse_enum<T: serde::de::DeserializeOwned>(
    field: &str,
    flag: &str,
    text: &str,
) -> Result<T, FieldError> {
    serde_yaml::from_str::<T>(text.trim())
        .map_err(|_| FieldError::new(field, format!("{text:?} (from {flag}) is not allowed")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn doc() -> SidecarConfig {
        crate::config::parse_document(
            "service: {serviceName: upload, port: 9091}\npod: {name: from-file, ip: 127.0.0.9}",
        )
        .unwrap()
    }

    #[test]
    fn overrides_win_over_the_document() {
        let mut d = doc();
        let o = Overrides {
            pod_name: Some("from-env".into()),
            health_type: Some("grpc".into()),
            health_failure_threshold: Some("7".into()),
            drain_timeout: Some("3s".into()),
            consul_address: Some("127.0.0.1:9500".into()),
            ..Default::default()
        };
        apply(&mut d, &o).unwrap();
        assert_eq!(d.pod.name, "from-env");
        assert_eq!(
            d.pod.ip, "127.0.0.9",
            "unset overrides keep the document's value"
        );
        assert_eq!(d.service.health.kind, HealthCheckType::Grpc);
        assert_eq!(d.service.health.failure_threshold, 7);
        assert_eq!(d.drain_timeout.as_duration(), Duration::from_secs(3));
        assert_eq!(d.consul.address.as_deref(), Some("127.0.0.1:9500"));
    }

    #[test]
    fn bad_override_values_name_the_field_and_the_flag() {
        let cases = [
            (
                Overrides {
                    app_port: Some("abc".into()),
                    ..Default::default()
                },
                "service.port",
            ),
            (
                Overrides {
                    health_type: Some("icmp".into()),
                    ..Default::default()
                },
                "service.health.type",
            ),
            (
                Overrides {
                    health_period_seconds: Some("1.5".into()),
                    ..Default::default()
                },
                "service.health.periodSeconds",
            ),
            (
                Overrides {
                    drain_timeout: Some("10".into()),
                    ..Default::default()
                },
                "drainTimeout",
            ),
            (
                Overrides {
                    log_level: Some("loud".into()),
                    ..Default::default()
                },
                "logLevel",
            ),
        ];
        for (o, field) in cases {
            let err = apply(&mut doc(), &o).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.reason.contains("--"), "names the flag: {err}");
        }
    }
}
