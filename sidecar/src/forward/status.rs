//! gRPC answers the sidecar makes itself: "trailers-only" responses (HTTP 200 with
//! `grpc-status` and `grpc-message` in the headers), which every gRPC client reads as
//! the call's status.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Response, header};

/// A response carrying `code` and `message` as the call's status.
pub fn grpc_error(code: tonic::Code, message: &str) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", code_value(code));
    // grpc-message is percent-encoded; a header value must be visible ASCII.
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", value);
    }
    response
}

/// The numeric `grpc-status` value of `code`.
pub fn code_value(code: tonic::Code) -> HeaderValue {
    HeaderValue::from(code as i32)
}

/// The `grpc-status` in `headers` (response headers of a trailers-only answer, or
/// trailers); `None` when absent.
pub fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(tonic::Code::from)
}

/// Percent-encodes as the gRPC spec asks for `grpc-message`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_a_trailers_only_response() {
        let response = grpc_error(tonic::Code::Unavailable, "no instance of upload: 100%");
        assert_eq!(response.status(), 200);
        assert_eq!(
            grpc_status(response.headers()),
            Some(tonic::Code::Unavailable)
        );
        assert_eq!(
            response.headers()["grpc-message"],
            "no instance of upload: 100%25"
        );
    }

    #[test]
    fn non_ascii_messages_are_encoded() {
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }
}
