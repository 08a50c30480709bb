//! W3C trace context carried in HTTP/2 headers (forwarded calls, deliveries to the app)
//! and in an event's envelope (`traceparent`, `tracestate` fields).

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::SpanContext;

/// Reads propagation fields from request headers.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The two fields as strings, as an envelope carries them.
pub(crate) struct Pair<'a> {
    pub traceparent: &'a str,
    pub tracestate: Option<&'a str>,
}

impl Extractor for Pair<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// `span`'s W3C `traceparent` (version 00), for an envelope.
pub fn traceparent(span: &SpanContext) -> String {
    String::from_utf8_lossy(&traceparent_bytes(span)).into_owned()
}

/// The same as a header value, built on the stack.
pub(crate) fn traceparent_header(span: &SpanContext) -> http::HeaderValue {
    let bytes = traceparent_bytes(span);
    http::HeaderValue::from_bytes(&bytes).expect("hex digits and dashes are a valid header value")
}

/// `00-<32 hex>-<16 hex>-<2 hex>`: 55 bytes.
fn traceparent_bytes(span: &SpanContext) -> [u8; 55] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 55];
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            out[at + 2 * i] = HEX[usize::from(b >> 4)];
            out[at + 2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
    };
    put(0, &[0]);
    put(3, &span.trace_id().to_bytes());
    put(36, &span.span_id().to_bytes());
    put(53, &[span.trace_flags().to_u8()]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    #[test]
    fn a_traceparent_written_reads_back_as_the_same_context() {
        let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", given.parse().unwrap());
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        let span = cx.span().span_context().clone();
        assert!(span.is_valid() && span.is_remote() && span.is_sampled());
        assert_eq!(traceparent(&span), given);
        assert_eq!(traceparent_header(&span), given);
    }
}
