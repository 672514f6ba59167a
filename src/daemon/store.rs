//! The daemon's cache: the pods of its node and every NetworkAttachmentDefinition, as their
//! watches last delivered them, each kept to what planning reads (metadata and a NAD's
//! config). Changing it is pure; the reflectors feed it, the server reads it.

use std::collections::HashMap;
use std::time::Instant;

use crate::k8s::client::ObjectMeta;
use crate::k8s::{Listed, Nad, Pod, WatchEvent};

/// `(namespace, name)`.
pub type Key = (String, String);

/// An object the cache keeps.
pub trait Cached {
    /// Its metadata.
    fn meta(&self) -> &ObjectMeta;
}

impl Cached for Pod {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Cached for Nad {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

/// The objects of one resource, and where its watch stands.
#[derive(Debug)]
pub struct Objects<T> {
    /// By namespace and name.
    pub items: HashMap<Key, T>,
    /// Where the next watch resumes.
    pub resource_version: String,
    /// Listed at least once: an absent object is absent.
    pub listed: bool,
    /// The last list, event or orderly end of a watch: the cache was current then.
    pub current_at: Option<Instant>,
    /// Its watch failed and has not been re-established since.
    pub failing: bool,
}

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Objects {
            items: HashMap::new(),
            resource_version: String::new(),
            listed: false,
            current_at: None,
            failing: false,
        }
    }
}

fn key(meta: &ObjectMeta) -> Key {
    (meta.namespace.clone(), meta.name.clone())
}

impl<T: Cached> Objects<T> {
    /// Replaces everything with a fresh list.
    pub fn replace(&mut self, listed: Listed<T>) {
        self.items = listed
            .items
            .into_iter()
            .map(|o| (key(o.meta()), o))
            .collect();
        self.resource_version = listed.resource_version;
        self.listed = true;
        self.seen();
    }

    /// Applies one event of the watch. An error event changes nothing here: the reflector
    /// decides what it means.
    pub fn apply(&mut self, event: WatchEvent<T>) {
        let rv = match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                let rv = o.meta().resource_version.clone();
                self.items.insert(key(o.meta()), o);
                rv
            }
            WatchEvent::Deleted(o) => {
                self.items.remove(&key(o.meta()));
                o.meta().resource_version.clone()
            }
            WatchEvent::Bookmark(o) => o.meta().resource_version.clone(),
            WatchEvent::Error(_) => return,
        };
        if !rv.is_empty() {
            self.resource_version = rv;
        }
        self.seen();
    }

    /// The watch is established, or ended in order: what the cache holds is current.
    pub fn seen(&mut self) {
        self.current_at = Some(Instant::now());
        self.failing = false;
    }

    /// Serves answers: listed, and its watch not failing.
    pub fn ready(&self) -> bool {
        self.listed && !self.failing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::client::WatchStatus;

    fn pod(name: &str, rv: &str, networks: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = "ns".into();
        p.metadata.name = name.into();
        p.metadata.resource_version = rv.into();
        p.metadata
            .annotations
            .insert("k8s.v1.cni.cncf.io/networks".into(), networks.into());
        p
    }

    fn networks(o: &Objects<Pod>, name: &str) -> Option<String> {
        o.items
            .get(&("ns".to_string(), name.to_string()))
            .map(|p| p.metadata.annotations["k8s.v1.cni.cncf.io/networks"].clone())
    }

    #[test]
    fn a_list_then_events_keep_the_objects_and_where_to_resume() {
        let mut o = Objects::default();
        assert!(!o.ready(), "not ready before the first list");
        o.replace(Listed {
            items: vec![pod("a", "5", "n1"), pod("b", "6", "n1")],
            resource_version: "10".into(),
        });
        assert!(o.ready());
        assert_eq!(o.resource_version, "10");
        o.apply(WatchEvent::Modified(pod("a", "11", "n2")));
        o.apply(WatchEvent::Deleted(pod("b", "12", "n1")));
        o.apply(WatchEvent::Added(pod("c", "13", "n3")));
        assert_eq!(networks(&o, "a").as_deref(), Some("n2"));
        assert_eq!(networks(&o, "b"), None);
        assert_eq!(networks(&o, "c").as_deref(), Some("n3"));
        assert_eq!(o.resource_version, "13");

        // A bookmark moves only where the watch resumes.
        let mut mark = Pod::default();
        mark.metadata.resource_version = "20".into();
        o.apply(WatchEvent::Bookmark(mark));
        assert_eq!((o.items.len(), o.resource_version.as_str()), (2, "20"));

        // An error event changes nothing: the reflector relists or resumes.
        o.apply(WatchEvent::Error(WatchStatus {
            code: 410,
            message: "too old".into(),
        }));
        assert_eq!((o.items.len(), o.resource_version.as_str()), (2, "20"));

        // A relist replaces everything, dropping what was deleted while nobody watched.
        o.failing = true;
        assert!(!o.ready(), "a failing watch is not served from");
        o.replace(Listed {
            items: vec![pod("c", "30", "n4")],
            resource_version: "31".into(),
        });
        assert!(o.ready());
        assert_eq!(o.items.len(), 1);
        assert_eq!(networks(&o, "c").as_deref(), Some("n4"));
        assert_eq!(o.resource_version, "31");
    }
}
