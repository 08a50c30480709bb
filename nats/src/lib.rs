//! StreamGate's one home for NATS, shared by the operator and the sidecar:
//! [`credentials`] reads a mounted credentials Secret into connect options, and
//! [`streams`] makes JetStream streams capture the subjects services declare, with the
//! authority of its caller (the operator owns the streams' settings; a sidecar only binds
//! or, run without the operator, adds its subjects).

pub mod credentials;
pub mod streams;
