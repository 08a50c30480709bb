//! OpenTelemetry traces for the sidecar and the operator, one home for both.
//!
//! Configured by the standard variables (the OpenTelemetry SDK specification's
//! environment variables), so the chart, the CRD and a user's own tooling all speak the
//! same language:
//!
//! - on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//!   (and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`); OTLP over gRPC
//!   only (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`, the default);
//! - sampling by `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, checked here so a bad
//!   value is an error naming the variable rather than the SDK's silent fallback;
//! - batching by `OTEL_BSP_*`; the resource by `OTEL_SERVICE_NAME` and
//!   `OTEL_RESOURCE_ATTRIBUTES`.
//!
//! Off, nothing is built and the data path pays one branch per call. On, an unsampled
//! call pays for ids and a sampling decision only: attributes are set on recording
//! spans alone. Finished spans go through a bounded queue to a background exporter
//! thread; when the queue is full (the collector is slow or down) a span is dropped and
//! counted (`<prefix>_trace_spans_dropped_total`), never waited for.

mod counting;
mod propagation;
mod settings;

pub use counting::SpanCounters;
pub use propagation::{HeaderExtractor, traceparent};
pub use settings::{SamplerSetting, SettingsError, TraceSettings};

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use std::sync::Arc;

pub use opentelemetry::KeyValue;

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
pub use opentelemetry::trace::{Span, SpanKind, Status, Tracer};
pub use opentelemetry_sdk::trace::{SdkTracer, Span as SdkSpan};

/// Why traces could not be set up (the process refuses to start: a tracing setting
/// that is silently ignored is worse than none).
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("the OTLP exporter for {endpoint} could not be built: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// The tracer of a process whose traces are on.
pub struct Traces {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    propagator: TraceContextPropagator,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

impl Traces {
    /// Traces as the `OTEL_*` variables say: `None` when they are off. Call from within
    /// the tokio runtime: the exporter's gRPC channel lives on it.
    pub fn from_env(
        service_name: &str,
        counters: SpanCounters,
    ) -> Result<Option<Arc<Traces>>, TraceError> {
        let settings = TraceSettings::from_env(&|name| std::env::var(name).ok())?;
        match settings {
            Some(settings) => Self::start(service_name, &settings, counters).map(Some),
            None => Ok(None),
        }
    }

    /// Traces exported to `settings.endpoint`.
    pub fn start(
        service_name: &str,
        settings: &TraceSettings,
        counters: SpanCounters,
    ) -> Result<Arc<Traces>, TraceError> {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.export_timeout)
            .build()
            .map_err(|source| TraceError::Exporter {
                endpoint: settings.endpoint.clone(),
                source,
            })?;
        let (exporter, gate) = counting::wrap(exporter, settings.max_queue_size, counters);
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queue_size)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service_name.to_string());
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(gate.around(processor))
            .with_sampler(settings.sampler.sampler())
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("streamgate");
        tracing::info!(
            endpoint = %settings.endpoint,
            sampler = %settings.sampler,
            "exporting traces over OTLP/gRPC"
        );
        Ok(Arc::new(Traces {
            tracer,
            provider,
            propagator: TraceContextPropagator::new(),
        }))
    }

    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// The remote parent a request's `traceparent`/`tracestate` headers name (an empty
    /// context when they name none or are malformed: the span becomes a root).
    pub fn extract(&self, headers: &http::HeaderMap) -> Context {
        // Most calls carry none: skip the propagator (and its copy of the current
        // context) for them.
        if !headers.contains_key(TRACEPARENT) {
            return Context::new();
        }
        self.propagator
            .extract_with_context(&Context::new(), &HeaderExtractor(headers))
    }

    /// The remote parent a `traceparent` (and `tracestate`) given as strings name, as an
    /// event's envelope carries them.
    pub fn extract_pair(&self, traceparent: &str, tracestate: Option<&str>) -> Context {
        let pair = propagation::Pair {
            traceparent,
            tracestate,
        };
        self.propagator.extract_with_context(&Context::new(), &pair)
    }

    /// Writes `span`'s context as the request's `traceparent` (and its `tracestate`,
    /// when it has one), so the next hop's spans are its children (and a not-sampled
    /// decision travels too). Written straight into the header, without the
    /// propagator's context and strings: this runs on every forwarded call.
    pub fn inject(&self, span: &SpanContext, headers: &mut http::HeaderMap) {
        if !span.is_valid() {
            return;
        }
        // Marked sensitive, which HPACK encodes "never indexed": a value new on every call
        // would otherwise enter the connection's dynamic table each time and evict the
        // entries that make every other header of the call one byte (measured: ~10% of
        // two sidecars' CPU per call at 1% sampling before, for a header that costs
        // nothing to index).
        let mut value = propagation::traceparent_header(span);
        value.set_sensitive(true);
        headers.insert(TRACEPARENT, value);
        let state = span.trace_state().header();
        if state.is_empty() {
            headers.remove(TRACESTATE);
        } else if let Ok(mut value) = http::HeaderValue::from_str(&state) {
            value.set_sensitive(true);
            headers.insert(TRACESTATE, value);
        }
    }

    /// Exports what is queued and stops, waiting at most two seconds: a collector that
    /// is down must not hold up a pod's exit (what is left is dropped).
    pub fn shutdown(&self) {
        if let Err(e) = self
            .provider
            .shutdown_with_timeout(std::time::Duration::from_secs(2))
        {
            tracing::debug!(error = %e, "trace exporter shutdown");
        }
    }
}
