//! The operator's one error type. Each variant belongs to one step of the reconcile, and
//! its [`Error::step`] label is what the errors metric counts, so a dashboard says where
//! reconciles fail (validation, an apply, the status write, the cleanup), not just that
//! they do.

use streamgate_crds::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Step `validate`: the spec breaks a rule the schema cannot express.
    #[error("invalid spec: {0}")]
    Invalid(#[source] FieldError),
    /// Step `apply`: a child object could not be applied.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Step `status`: the status could not be written.
    #[error("writing the status: {0}")]
    WriteStatus(#[source] kube::Error),
    /// Step `cleanup`: the pods could not be stopped before the Consul cleanup.
    #[error("stopping the pods: {0}")]
    StopPods(#[source] kube::Error),
    /// Step `cleanup`: Consul could not be cleaned (retried until the grace period ends).
    #[error("deregistering from Consul: {0}")]
    ConsulCleanup(#[source] crate::consul::ConsulError),
    /// Adding or removing the finalizer itself failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] kube::Error),
    /// Anything else kube's finalizer helper refuses (e.g. an object without a name).
    #[error("finalizer: {0}")]
    FinalizerOther(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("resource has no {0}")]
    MissingField(&'static str),
}

/// Every value [`Error::step`] gives, so the error counter has each series (at 0) from
/// the start and dashboards and alerts see no gaps.
pub const STEPS: [&str; 6] = [
    "validate",
    "apply",
    "status",
    "cleanup",
    "finalizer",
    "read",
];

impl Error {
    /// The reconcile step that failed: a short, stable label for metrics.
    pub fn step(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "validate",
            Error::Apply { .. } => "apply",
            Error::WriteStatus(_) => "status",
            Error::StopPods(_) | Error::ConsulCleanup(_) => "cleanup",
            Error::Finalizer(_) | Error::FinalizerOther(_) => "finalizer",
            Error::MissingField(_) => "read",
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
            F::AddFinalizer(kube) | F::RemoveFinalizer(kube) => Error::Finalizer(kube),
            other => Error::FinalizerOther(Box::new(other)),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::finalizer::Error as F;

    #[test]
    fn the_finalizer_error_gives_back_the_step_that_failed() {
        let invalid = Error::Invalid(FieldError::new("spec.port", "must be 1..65535"));
        let unwrapped: Error = F::ApplyFailed(invalid).into();
        assert_eq!(unwrapped.step(), "validate");
        let stop = Error::StopPods(kube::Error::LinesCodecMaxLineLengthExceeded);
        let unwrapped: Error = F::CleanupFailed(stop).into();
        assert_eq!(unwrapped.step(), "cleanup");
        let add: Error =
            F::<Error>::AddFinalizer(kube::Error::LinesCodecMaxLineLengthExceeded).into();
        assert_eq!(add.step(), "finalizer");
        let unnamed: Error = F::<Error>::UnnamedObject.into();
        assert_eq!(unnamed.step(), "finalizer");
    }
}
