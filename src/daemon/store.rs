//! The daemon's cache: the pods of its node and every NetworkAttachmentDefinition, as their
//! watches last delivered them, each kept to what planning reads (metadata and a NAD's
//! config). Changing it is pure; the reflectors feed it, the server reads it.

use std::collections::HashMap;
use std::time::Instant;

use crate::annotations;
use crate::k8s::client::ObjectMeta;
use crate::k8s::{Listed, Nad, Pod, WatchEvent};

/// `(namespace, name)`.
pub type Key = (String, String);

/// An object the cache keeps.
pub trait Cached {
    /// Its metadata.
    fn meta(&self) -> &ObjectMeta;

    /// What of it, when it changes, makes it worth a hot-plug: a pod's networks annotation.
    fn plugs(&self) -> Option<&str> {
        None
    }
}

impl Cached for Pod {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn plugs(&self) -> Option<&str> {
        self.metadata
            .annotations
            .get(annotations::NETWORKS)
            .map(String::as_str)
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
    /// Replaces everything with a fresh list; returns the objects whose [`Cached::plugs`]
    /// changed meanwhile: on the first list, every object (what changed while no daemon watched
    /// is not known), then those that were there before and changed.
    pub fn replace(&mut self, listed: Listed<T>) -> Vec<Key> {
        let items: HashMap<Key, T> = listed
            .items
            .into_iter()
            .map(|o| (key(o.meta()), o))
            .collect();
        let first = !self.listed;
        let changed = items
            .iter()
            .filter(|(k, o)| first || self.replugged(k, o))
            .map(|(k, _)| k.clone())
            .collect();
        self.items = items;
        self.resource_version = listed.resource_version;
        self.listed = true;
        self.seen();
        changed
    }

    /// Applies one event of the watch; returns the object when it was there before and its
    /// [`Cached::plugs`] changed. An error event changes nothing here: the reflector decides
    /// what it means.
    pub fn apply(&mut self, event: WatchEvent<T>) -> Option<Key> {
        let mut changed = None;
        let rv = match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                let rv = o.meta().resource_version.clone();
                let k = key(o.meta());
                if self.replugged(&k, &o) {
                    changed = Some(k.clone());
                }
                self.items.insert(k, o);
                rv
            }
            WatchEvent::Deleted(o) => {
                self.items.remove(&key(o.meta()));
                o.meta().resource_version.clone()
            }
            WatchEvent::Bookmark(o) => o.meta().resource_version.clone(),
            WatchEvent::Error(_) => return None,
        };
        if !rv.is_empty() {
            self.resource_version = rv;
        }
        self.seen();
        changed
    }

    /// `o` was cached under `k` before, with other [`Cached::plugs`].
    fn replugged(&self, k: &Key, o: &T) -> bool {
        self.items
            .get(k)
            .is_some_and(|old| old.plugs() != o.plugs())
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
        let mut first = o.replace(Listed {
            items: vec![pod("a", "5", "n1"), pod("b", "6", "n1")],
            resource_version: "10".into(),
        });
        first.sort();
        assert_eq!(
            first,
            [
                ("ns".to_string(), "a".to_string()),
                ("ns".to_string(), "b".to_string())
            ],
            "the first list: changes made while nobody watched are not known"
        );
        assert!(o.ready());
        assert_eq!(o.resource_version, "10");
        let a = ("ns".to_string(), "a".to_string());
        assert_eq!(
            o.apply(WatchEvent::Modified(pod("a", "11", "n2"))),
            Some(a.clone())
        );
        assert_eq!(
            o.apply(WatchEvent::Modified(pod("a", "11", "n2"))),
            None,
            "the same networks"
        );
        assert_eq!(o.apply(WatchEvent::Deleted(pod("b", "12", "n1"))), None);
        assert_eq!(
            o.apply(WatchEvent::Added(pod("c", "13", "n3"))),
            None,
            "a new pod is ADD's"
        );
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
        let changed = o.replace(Listed {
            items: vec![pod("c", "30", "n4"), pod("d", "30", "n1")],
            resource_version: "31".into(),
        });
        assert_eq!(
            changed,
            [("ns".to_string(), "c".to_string())],
            "changed while unwatched"
        );
        assert!(o.ready());
        assert_eq!(o.items.len(), 2);
        assert_eq!(networks(&o, "c").as_deref(), Some("n4"));
        assert_eq!(o.resource_version, "31");
    }
}
