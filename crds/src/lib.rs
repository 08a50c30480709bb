//! StreamGate's Kubernetes API: the `streamgate.io` group and its types.
//!
//! The `StreamGateService` resource itself lands with the operator; this crate is where
//! every API type lives so the operator, the webhook and the tests share one definition.

/// The API group of every StreamGate resource.
pub const GROUP: &str = "streamgate.io";
/// The version served and stored.
pub const VERSION: &str = "v1alpha1";
