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
