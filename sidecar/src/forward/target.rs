//! Which service a request names: the `streamgate-service` metadata when the app sends
//! it, else the first DNS label of the `:authority` host. Apps dial the sidecar with the
//! service's name as the target (`upload:9091`, `upload.default.svc.cluster.local`), so
//! the Kubernetes-style name they already use for Services works unchanged.

use axum::http::HeaderMap;
use std::net::IpAddr;
use streamgate_crds::upstreams::is_dns_label;

/// Metadata an app sends when its `:authority` cannot carry the service's name (it
/// dials `127.0.0.1:15001` directly).
pub const SERVICE_METADATA: &str = "streamgate-service";

/// Why a request names no service we can look up; the message is meant for the
/// caller's `grpc-message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "the request names no service: dial the service by name (e.g. upload:9091) \
         or send the {SERVICE_METADATA} metadata"
    )]
    Missing,
    #[error(
        "the :authority {0:?} is an address, not a service: name the service in :authority \
         (e.g. upload:9091) or in the {SERVICE_METADATA} metadata"
    )]
    Address(String),
    #[error(
        "{0:?} is not a service name: it must be a DNS-1123 label (lower-case letters, \
         digits and '-', at most 63 characters)"
    )]
    Invalid(String),
}

/// The service a request is for. See the module documentation for the rules.
pub fn target_service(authority: Option<&str>, headers: &HeaderMap) -> Result<String, TargetError> {
    if let Some(value) = headers.get(SERVICE_METADATA) {
        let name = value
            .to_str()
            .map_err(|_| TargetError::Invalid(String::from_utf8_lossy(value.as_bytes()).into()))?;
        return validated(name.trim().to_ascii_lowercase());
    }
    let authority = authority.map(str::trim).unwrap_or_default();
    let host = host_of(authority);
    if host.is_empty() {
        return Err(TargetError::Missing);
    }
    if is_address(host) {
        return Err(TargetError::Address(authority.to_string()));
    }
    let first_label = host.split('.').next().unwrap_or(host);
    validated(first_label.to_ascii_lowercase())
}

/// The host of an authority: without `user@` and `:port`; an IPv6 literal keeps no
/// brackets.
fn host_of(authority: &str) -> &str {
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, rest)| rest);
    if let Some(bracketed) = host_port.strip_prefix('[') {
        return bracketed.split_once(']').map_or(bracketed, |(ip, _)| ip);
    }
    host_port
        .split_once(':')
        .map_or(host_port, |(host, _)| host)
}

/// Hosts that name a machine rather than a service: the app dialled the sidecar by
/// address, so the authority says nothing about where the call should go.
fn is_address(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
        || host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
}

fn validated(name: String) -> Result<String, TargetError> {
    if is_dns_label(&name) {
        Ok(name)
    } else {
        Err(TargetError::Invalid(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn no_headers() -> HeaderMap {
        HeaderMap::new()
    }

    fn with_service(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(SERVICE_METADATA, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn the_first_label_of_the_authority_host_names_the_service() {
        for authority in [
            "upload",
            "upload:9091",
            "upload.streamgate",
            "upload.default.svc.cluster.local:80",
            "UPLOAD.Default.svc:80",
            " upload:15001 ",
            "user@upload:80",
        ] {
            assert_eq!(
                target_service(Some(authority), &no_headers()).as_deref(),
                Ok("upload"),
                "{authority}"
            );
        }
    }

    #[test]
    fn the_metadata_wins_over_the_authority() {
        let headers = with_service("metadata");
        assert_eq!(
            target_service(Some("upload:9091"), &headers).as_deref(),
            Ok("metadata")
        );
        assert_eq!(
            target_service(Some("127.0.0.1:15001"), &headers).as_deref(),
            Ok("metadata")
        );
        assert_eq!(
            target_service(None, &with_service(" Metadata ")).as_deref(),
            Ok("metadata")
        );
    }

    #[test]
    fn an_address_authority_without_metadata_asks_for_a_service_name() {
        for authority in [
            "127.0.0.1:15001",
            "10.1.2.3",
            "[::1]:15001",
            "localhost:15001",
            "LOCALHOST",
        ] {
            let error = target_service(Some(authority), &no_headers()).unwrap_err();
            assert!(
                matches!(error, TargetError::Address(_)),
                "{authority}: {error:?}"
            );
            let message = error.to_string();
            assert!(message.contains(SERVICE_METADATA), "{message}");
            assert!(message.contains(":authority"), "{message}");
        }
    }

    #[test]
    fn no_authority_and_no_metadata_is_missing() {
        assert_eq!(
            target_service(None, &no_headers()),
            Err(TargetError::Missing)
        );
        assert_eq!(
            target_service(Some(":80"), &no_headers()),
            Err(TargetError::Missing)
        );
    }

    #[test]
    fn names_that_are_not_dns_labels_are_refused_by_value() {
        for (authority, named) in [
            ("up_load:80", "up_load"),
            ("-upload", "-upload"),
            ("upload-.svc", "upload-"),
        ] {
            let error = target_service(Some(authority), &no_headers()).unwrap_err();
            assert_eq!(error, TargetError::Invalid(named.into()));
            assert!(error.to_string().contains(named));
        }
        let long = "a".repeat(64);
        assert!(target_service(Some(&long), &no_headers()).is_err());
        assert!(target_service(Some(&long[..63]), &no_headers()).is_ok());
        assert_eq!(
            target_service(Some("upload"), &with_service("bad name")),
            Err(TargetError::Invalid("bad name".into()))
        );
        assert_eq!(
            target_service(Some("upload"), &with_service("")),
            Err(TargetError::Invalid(String::new()))
        );
    }
}
