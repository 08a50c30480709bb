//! The owned objects as the operator last knew them: the watch cache, or — for a moment
//! after the operator created one, until the watch shows it — what the API server answered.
//!
//! A reconcile that creates a Deployment and a Service is woken again by the first of the
//! two watch events; without this, the other child would still be missing from its cache
//! and be applied (and announced in an Event) a second time.
//!
//! Only creations are remembered: once the cache holds the object at all, it is as new as
//! the answer or newer (a watch delivers one object's changes in order), so no resource
//! versions need comparing.

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Instant;

pub use crate::recent::CATCH_UP;
use crate::recent::Recent;

/// One owned object as last seen.
pub struct Current<K> {
    pub object: Option<Arc<K>>,
    /// A recent creation's answer stood in for the cache: a change made by someone else
    /// meanwhile shows only once the cache catches up, so look again within [`CATCH_UP`].
    pub provisional: bool,
}

pub struct Known<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    cache: Store<K>,
    answers: Recent<ObjectRef<K>, Arc<K>>,
}

impl<K> Known<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    pub fn new(cache: Store<K>) -> Self {
        Known {
            cache,
            answers: Recent::default(),
        }
    }

    /// The object named `name` in `namespace`.
    pub fn get(&self, name: &str, namespace: &str) -> Current<K> {
        self.get_at(name, namespace, Instant::now())
    }

    fn get_at(&self, name: &str, namespace: &str, now: Instant) -> Current<K> {
        let key = ObjectRef::new(name).within(namespace);
        let cached = self.cache.get(&key);
        match self.answers.get(&key, now, |_| cached.is_some()) {
            Some(answer) => Current {
                object: Some(answer),
                provisional: true,
            },
            None => Current {
                object: cached,
                provisional: false,
            },
        }
    }

    /// Remembers what the API server answered when the operator created `object`.
    pub fn remember_created(&self, object: K) {
        self.remember_at(object, Instant::now())
    }

    fn remember_at(&self, mut object: K, now: Instant) {
        // Like the cache, without managedFields (most of an applied object's size).
        object.meta_mut().managed_fields = None;
        self.answers
            .insert(ObjectRef::from_obj(&object), Arc::new(object), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn service(resource_version: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("upload".into()),
                namespace: Some("shop".into()),
                resource_version: Some(resource_version.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn rv(current: &Current<Service>) -> Option<String> {
        current.object.as_ref()?.metadata.resource_version.clone()
    }

    #[test]
    fn an_answer_stands_in_until_the_cache_shows_it() {
        let (cache, mut writer) = store::<Service>();
        let known = Known::new(cache);
        let now = Instant::now();
        assert!(known.get_at("upload", "shop", now).object.is_none());

        known.remember_at(service("7"), now);
        let current = known.get_at("upload", "shop", now);
        assert_eq!(rv(&current), Some("7".into()));
        assert!(current.provisional);

        writer.apply_watcher_event(&Event::Apply(service("7")));
        let current = known.get_at("upload", "shop", now);
        assert_eq!(rv(&current), Some("7".into()));
        assert!(!current.provisional);
    }

    #[test]
    fn once_caught_up_the_cache_rules_even_if_the_object_goes() {
        let (cache, mut writer) = store::<Service>();
        let known = Known::new(cache);
        let now = Instant::now();
        known.remember_at(service("7"), now);
        writer.apply_watcher_event(&Event::Apply(service("7")));
        assert!(!known.get_at("upload", "shop", now).provisional);
        // Deleted by hand: it must be seen missing, so the reconcile restores it.
        writer.apply_watcher_event(&Event::Delete(service("7")));
        assert!(known.get_at("upload", "shop", now).object.is_none());
    }

    #[test]
    fn a_cache_that_moved_past_the_answer_rules() {
        let (cache, mut writer) = store::<Service>();
        let known = Known::new(cache);
        let now = Instant::now();
        known.remember_at(service("7"), now);
        writer.apply_watcher_event(&Event::Apply(service("9")));
        let current = known.get_at("upload", "shop", now);
        assert_eq!(rv(&current), Some("9".into()));
        assert!(!current.provisional);
    }

    #[test]
    fn an_answer_older_than_the_catch_up_time_is_forgotten() {
        let (cache, _writer) = store::<Service>();
        let known = Known::new(cache);
        let then = Instant::now();
        known.remember_at(service("7"), then);
        let current = known.get_at("upload", "shop", then + CATCH_UP / 2);
        assert_eq!(rv(&current), Some("7".into()));
        let current = known.get_at("upload", "shop", then + CATCH_UP * 2);
        assert!(current.object.is_none());
        assert!(!current.provisional);
    }
}
