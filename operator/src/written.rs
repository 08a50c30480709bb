//! Statuses the operator wrote moments ago, standing in for the resource cache until its
//! watch shows them.
//!
//! A new resource's Deployment and Service each wake a reconcile as their watch events
//! arrive, milliseconds apart. The second reconcile often reads the resource from a cache
//! that does not show the first one's status write yet, sees no status, and would write
//! the same status again: about 700 needless writes per 1,000 new resources. Comparing the
//! freshly computed status with what was written (and computing it from that, so condition
//! transition times carry over) avoids them.

use crate::recent::Recent;
use kube::runtime::reflector::ObjectRef;
use std::time::Instant;
use streamgate_crds::{StreamGateService, StreamGateServiceStatus};

/// What was written, and to which resource: one deleted and created again under the same
/// name has another uid and starts afresh.
type Written = (Option<String>, StreamGateServiceStatus);

#[derive(Default)]
pub struct WrittenStatuses {
    written: Recent<ObjectRef<StreamGateService>, Written>,
}

impl WrittenStatuses {
    /// The status `sgs` has as far as the operator knows: the one it wrote if the cache
    /// has not shown that yet (for up to [`crate::known::CATCH_UP`]), else the cached
    /// one. `Some` only when the written one stands in; a status someone else wrote in the
    /// meantime shows once the cache catches up, so the caller looks again by then.
    pub fn stand_in(&self, sgs: &StreamGateService) -> Option<StreamGateServiceStatus> {
        self.stand_in_at(sgs, Instant::now())
    }

    fn stand_in_at(
        &self,
        sgs: &StreamGateService,
        now: Instant,
    ) -> Option<StreamGateServiceStatus> {
        let (_, status) = self
            .written
            .get(&ObjectRef::from_obj(sgs), now, |(uid, status)| {
                sgs.status.as_ref() == Some(status) || *uid != sgs.metadata.uid
            })?;
        Some(status)
    }

    /// Remembers that `status` was just written to `sgs`.
    pub fn remember(&self, sgs: &StreamGateService, status: StreamGateServiceStatus) {
        self.remember_at(sgs, status, Instant::now())
    }

    fn remember_at(&self, sgs: &StreamGateService, status: StreamGateServiceStatus, now: Instant) {
        self.written.insert(
            ObjectRef::from_obj(sgs),
            (sgs.metadata.uid.clone(), status),
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::known::CATCH_UP;
    use kube::api::ObjectMeta;
    use std::time::Duration;
    use streamgate_crds::StreamGateServiceSpec;

    fn sgs(uid: &str, status: Option<StreamGateServiceStatus>) -> StreamGateService {
        let spec: StreamGateServiceSpec =
            serde_json::from_value(serde_json::json!({"image": "app:1", "port": 9091}))
                .expect("a valid spec");
        StreamGateService {
            metadata: ObjectMeta {
                name: Some("upload".into()),
                namespace: Some("shop".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec,
            status,
        }
    }

    fn status(ready_replicas: i32) -> StreamGateServiceStatus {
        StreamGateServiceStatus {
            ready_replicas,
            ..Default::default()
        }
    }

    #[test]
    fn nothing_written_means_the_cache_is_trusted() {
        let written = WrittenStatuses::default();
        assert_eq!(written.stand_in(&sgs("a", None)), None);
    }

    #[test]
    fn a_write_the_cache_does_not_show_yet_stands_in() {
        let written = WrittenStatuses::default();
        let t0 = Instant::now();
        written.remember_at(&sgs("a", None), status(1), t0);
        let stale = sgs("a", None);
        assert_eq!(
            written.stand_in_at(&stale, t0 + Duration::from_millis(10)),
            Some(status(1))
        );
        // A later write replaces the earlier one.
        written.remember_at(&stale, status(2), t0 + Duration::from_millis(20));
        assert_eq!(
            written.stand_in_at(&sgs("a", Some(status(1))), t0 + Duration::from_millis(30)),
            Some(status(2))
        );
    }

    #[test]
    fn the_cache_is_trusted_once_it_shows_the_write_or_after_catch_up() {
        let written = WrittenStatuses::default();
        let t0 = Instant::now();
        written.remember_at(&sgs("a", None), status(1), t0);
        assert_eq!(
            written.stand_in_at(&sgs("a", Some(status(1))), t0 + Duration::from_millis(10)),
            None
        );
        // Forgotten: even a stale cache is trusted now.
        assert_eq!(
            written.stand_in_at(&sgs("a", None), t0 + Duration::from_millis(20)),
            None
        );

        written.remember_at(&sgs("a", None), status(1), t0);
        assert_eq!(
            written.stand_in_at(&sgs("a", None), t0 + CATCH_UP + Duration::from_millis(1)),
            None
        );
    }

    #[test]
    fn a_resource_created_again_under_the_same_name_starts_afresh() {
        let written = WrittenStatuses::default();
        let t0 = Instant::now();
        written.remember_at(&sgs("a", None), status(1), t0);
        assert_eq!(
            written.stand_in_at(&sgs("b", None), t0 + Duration::from_millis(10)),
            None
        );
    }
}
