//! What the operator and the sidecar agree on about an instance in Consul: how it is
//! named, which meta it carries, and how a blocking query's index moves on. Both sides
//! use these items and nothing else, so a change here is a change of both (and of the
//! seed-compatible names DESIGN.md fixes).

/// Meta key marking instances a StreamGate sidecar registered (the operator's sweep
/// only ever removes these).
pub const META_MANAGED_BY: &str = "managed-by";
/// The value of [`META_MANAGED_BY`].
pub const MANAGED_BY_STREAMGATE: &str = "streamgate";
/// Meta key: the pod's namespace.
pub const META_NAMESPACE: &str = "k8s-namespace";
/// Meta key: the pod's name.
pub const META_POD: &str = "k8s-pod";
/// Meta key: the pod's UID (a recreated pod with the same name is another instance).
pub const META_POD_UID: &str = "k8s-pod-uid";
/// Meta key: the cluster the pod runs in (the operator's `--cluster-id`, by default
/// the `kube-system` namespace's UID). Clusters sharing one Consul each clean up only
/// their own instances.
pub const META_CLUSTER: &str = "k8s-cluster";
/// The index for the next blocking query after an answer carrying `returned`, per
/// Consul's advice: start over when the index went backwards (Consul restarted or
/// its raft log was restored), and never block on 0, which returns at once forever.
pub fn next_blocking_index(previous: Option<u64>, returned: Option<u64>) -> Option<u64> {
    match (previous, returned) {
        (_, None) => None,
        (Some(previous), Some(returned)) if returned < previous => None,
        (_, Some(returned)) => Some(returned.max(1)),
    }
}

/// A cluster id is a Consul meta value: 1–63 letters, digits, `.`, `_` or `-` (a
/// Kubernetes UID qualifies).
pub fn is_valid_cluster_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}
/// Meta key an instance sets when its inbound listener requires mTLS.
pub const META_INBOUND: &str = "streamgate-inbound";
/// The value of [`META_INBOUND`] for an mTLS inbound listener.
pub const INBOUND_MTLS: &str = "mtls";

/// `<serviceName>.<namespace>.<podName>`: unique per pod (pod names are unique in a
/// namespace), stable across sidecar restarts in the same pod so a restart replaces
/// rather than duplicates, and readable in the Consul UI. Dots, because service and
/// namespace names are DNS labels and never hold one: with dashes, service `a` in
/// namespace `b-c` and service `a-b` in namespace `c` would share IDs.
pub fn instance_id(service: &str, namespace: &str, pod: &str) -> String {
    format!("{service}.{namespace}.{pod}")
}

/// The ID of the TTL check the sidecar keeps for an instance (Consul's own
/// convention for a service's check).
pub fn check_id(instance_id: &str) -> String {
    format!("service:{instance_id}")
}

/// Meta key: how the sidecar wrote the instance (`agent` or `catalog`). A catalog
/// instance has no TTL that runs out when its sidecar dies, so the operator's sweep
/// removes one whose pod is gone even while it still reads passing.
pub const META_REGISTRATION: &str = "streamgate-registration";
/// The value of [`META_REGISTRATION`] for an instance written through a local agent.
pub const REGISTERED_BY_AGENT: &str = "agent";
/// The value of [`META_REGISTRATION`] for an instance written to the catalog.
pub const REGISTERED_IN_CATALOG: &str = "catalog";
/// Node meta marking a node StreamGate created in the catalog for a Kubernetes node
/// (no Consul agent runs as it), as consul-k8s marks its own.
pub const NODE_META_SYNTHETIC: &str = "synthetic-node";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blocking_index_restarts_when_it_goes_backwards_and_is_never_zero() {
        use super::next_blocking_index as next;
        assert_eq!(next(None, Some(42)), Some(42));
        assert_eq!(next(Some(42), Some(57)), Some(57));
        assert_eq!(next(Some(42), Some(42)), Some(42));
        assert_eq!(next(Some(42), Some(7)), None);
        assert_eq!(next(Some(42), Some(0)), None);
        assert_eq!(next(None, Some(0)), Some(1));
        assert_eq!(next(Some(42), None), None);
    }

    #[test]
    fn instance_ids_of_different_pods_never_collide() {
        assert_ne!(instance_id("a", "b-c", "d"), instance_id("a-b", "c", "d"));
        assert_eq!(
            instance_id("upload", "media", "upload-7d9f-x2"),
            "upload.media.upload-7d9f-x2"
        );
    }

    #[test]
    fn the_check_id_is_consuls_convention_for_a_services_check() {
        let id = instance_id("upload", "media", "upload-7d9f-x2");
        assert_eq!(check_id(&id), "service:upload.media.upload-7d9f-x2");
    }
}
