//! The operator's one error type, with a short label per kind for metrics.

use streamgate_crds::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[source] kube::Error),
    #[error("Consul error: {0}")]
    Consul(#[source] crate::consul::ConsulError),
    #[error("invalid spec: {0}")]
    Invalid(#[source] FieldError),
    #[error("finalizer error: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("resource has no {0}")]
    MissingField(&'static str),
}

impl Error {
    /// A short, stable label for the `kind` of reconcile errors in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Consul(_) => "consul",
            Error::Invalid(_) => "invalid_spec",
            Error::Finalizer(_) => "finalizer",
            Error::MissingField(_) => "missing_field",
        }
    }
}

/// The finalizer wraps the reconcile's own error: take it out, so the error policy and
/// the metrics see what really failed (an invalid spec, Consul, the API).
impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner,
            F::AddFinalizer(kube) | F::RemoveFinalizer(kube) => Error::Kube(kube),
            other => Error::Finalizer(Box::new(other)),
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

impl From<crate::consul::ConsulError> for Error {
    fn from(e: crate::consul::ConsulError) -> Self {
        Error::Consul(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::finalizer::Error as F;

    #[test]
    fn the_finalizer_error_gives_back_the_reconcile_error() {
        let invalid = Error::Invalid(FieldError::new("spec.port", "must be 1..65535"));
        let unwrapped: Error = F::ApplyFailed(invalid).into();
        assert_eq!(unwrapped.kind(), "invalid_spec");
        let consul = Error::MissingField("namespace");
        let unwrapped: Error = F::CleanupFailed(consul).into();
        assert_eq!(unwrapped.kind(), "missing_field");
        let unnamed: Error = F::<Error>::UnnamedObject.into();
        assert_eq!(unnamed.kind(), "finalizer");
    }
}
