//! The `OTEL_*` variables this crate honours, read and checked in one place.

use opentelemetry_sdk::trace::Sampler;
use std::time::Duration;

/// A tracing variable with a value this process cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: {reason}")]
pub struct SettingsError {
    pub variable: &'static str,
    pub value: String,
    pub reason: String,
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The collector's OTLP/gRPC address (`http://host:4317`, or `https://` with the
    /// system's root certificates).
    pub endpoint: String,
    pub sampler: SamplerSetting,
    /// Finished spans waiting for export at most; more are dropped and counted.
    pub max_queue_size: usize,
    /// One export's limit (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub export_timeout: Duration,
}

/// `OTEL_TRACES_SAMPLER` (with its argument), as the specification names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

impl SamplerSetting {
    pub fn sampler(self) -> Sampler {
        match self {
            SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
            SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
            SamplerSetting::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
            SamplerSetting::ParentBasedAlwaysOn => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
            }
            SamplerSetting::ParentBasedAlwaysOff => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
            }
            SamplerSetting::ParentBasedTraceIdRatio(ratio) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }
}

impl std::fmt::Display for SamplerSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SamplerSetting::AlwaysOn => f.write_str("always_on"),
            SamplerSetting::AlwaysOff => f.write_str("always_off"),
            SamplerSetting::TraceIdRatio(r) => write!(f, "traceidratio {r}"),
            SamplerSetting::ParentBasedAlwaysOn => f.write_str("parentbased_always_on"),
            SamplerSetting::ParentBasedAlwaysOff => f.write_str("parentbased_always_off"),
            SamplerSetting::ParentBasedTraceIdRatio(r) => write!(f, "parentbased_traceidratio {r}"),
        }
    }
}

const DEFAULT_QUEUE: usize = 2048;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl TraceSettings {
    /// The settings `var` gives (the process environment, or a test's map); `None` when
    /// traces are off.
    pub fn from_env(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, SettingsError> {
        let set = |name: &str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match set("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(error(
                    "OTEL_TRACES_EXPORTER",
                    other,
                    "only otlp (or none) is supported",
                ));
            }
        }
        let (variable, endpoint) = match (
            set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            set("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(e), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e),
            (None, Some(e)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", e),
            (None, None) => return Ok(None),
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(error(
                variable,
                &endpoint,
                "must be an http:// or https:// URL of an OTLP/gRPC receiver, e.g. http://otel-collector:4317",
            ));
        }
        for protocol in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = set(protocol)
                && value != "grpc"
            {
                return Err(error(
                    protocol,
                    &value,
                    "only grpc is supported (the collector's OTLP/gRPC port, usually 4317)",
                ));
            }
        }
        let sampler = sampler(set("OTEL_TRACES_SAMPLER"), set("OTEL_TRACES_SAMPLER_ARG"))?;
        let max_queue_size = match set("OTEL_BSP_MAX_QUEUE_SIZE") {
            None => DEFAULT_QUEUE,
            Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                error("OTEL_BSP_MAX_QUEUE_SIZE", &v, "must be a positive integer")
            })?,
        };
        let timeout_var = [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ]
        .into_iter()
        .find_map(|name| set(name).map(|v| (name, v)));
        let export_timeout = match timeout_var {
            None => DEFAULT_TIMEOUT,
            Some((name, v)) => v
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| error(name, &v, "must be a positive number of milliseconds"))?,
        };
        Ok(Some(TraceSettings {
            endpoint,
            sampler,
            max_queue_size,
            export_timeout,
        }))
    }
}

fn sampler(name: Option<String>, arg: Option<String>) -> Result<SamplerSetting, SettingsError> {
    let ratio = || -> Result<f64, SettingsError> {
        match &arg {
            // The specification's default ratio.
            None => Ok(1.0),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    error(
                        "OTEL_TRACES_SAMPLER_ARG",
                        v,
                        "must be a sampling ratio from 0 to 1 (0.01 samples 1% of traces)",
                    )
                }),
        }
    };
    Ok(match name.as_deref() {
        None | Some("parentbased_always_on") => SamplerSetting::ParentBasedAlwaysOn,
        Some("always_on") => SamplerSetting::AlwaysOn,
        Some("always_off") => SamplerSetting::AlwaysOff,
        Some("traceidratio") => SamplerSetting::TraceIdRatio(ratio()?),
        Some("parentbased_always_off") => SamplerSetting::ParentBasedAlwaysOff,
        Some("parentbased_traceidratio") => SamplerSetting::ParentBasedTraceIdRatio(ratio()?),
        Some(other) => {
            return Err(error(
                "OTEL_TRACES_SAMPLER",
                other,
                "must be one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio",
            ));
        }
    })
}

fn error(variable: &'static str, value: &str, reason: &str) -> SettingsError {
    SettingsError {
        variable,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<Option<TraceSettings>, SettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TraceSettings::from_env(&|name| map.get(name).cloned())
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert_eq!(read(&[]).unwrap(), None);
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        assert_eq!(
            read(&[endpoint, ("OTEL_SDK_DISABLED", "true")]).unwrap(),
            None
        );
        assert_eq!(
            read(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            None
        );
    }

    #[test]
    fn the_traces_endpoint_wins_and_defaults_follow_the_specification() {
        let settings = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(settings.endpoint, "http://b:4317");
        assert_eq!(settings.sampler, SamplerSetting::ParentBasedAlwaysOn);
        assert_eq!(settings.max_queue_size, 2048);
        assert_eq!(settings.export_timeout, Duration::from_secs(10));
    }

    #[test]
    fn a_parent_based_ratio_is_read_with_its_argument() {
        let settings = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            settings.sampler,
            SamplerSetting::ParentBasedTraceIdRatio(0.01)
        );
        assert_eq!(settings.max_queue_size, 64);
        assert_eq!(settings.export_timeout, Duration::from_millis(500));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317");
        let cases: [(&[(&str, &str)], &str); 6] = [
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                &[endpoint, ("OTEL_TRACES_SAMPLER", "sometimes")],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                &[
                    endpoint,
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                &[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                &[endpoint, ("OTEL_BSP_MAX_QUEUE_SIZE", "0")],
                "OTEL_BSP_MAX_QUEUE_SIZE",
            ),
            (
                &[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")],
                "OTEL_TRACES_EXPORTER",
            ),
        ];
        for (vars, variable) in cases {
            let e = read(vars).unwrap_err();
            assert_eq!(e.variable, variable, "{e}");
            assert!(e.to_string().starts_with(variable), "{e}");
        }
    }
}
