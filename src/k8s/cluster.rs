//! The cluster as one call sees it: the seam between the flows and wherever pods and
//! NetworkAttachmentDefinitions come from. How a call reaches it is [`super::Reach`].
//!
//! Implementations of [`Cluster`]: the live API server ([`Client`]), the node daemon asked
//! over its socket ([`Asked`]), NADs given by hand ([`Offline`], `explain --nad`), and the
//! daemon's own watch cache.

use std::collections::HashMap;

use anyhow::Result;
use serde_json::Value;

use super::client::{Client, Nad, NadReply, Patched, Pod};
use crate::error::{Code, coded};

/// What a call asks of the cluster and tells it.
pub trait Cluster {
    /// The pod; `None` when the cluster has no such pod.
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>>;
    /// A NetworkAttachmentDefinition, or why there is none.
    fn get_nad(&self, namespace: &str, name: &str) -> Result<NadReply>;
    /// JSON-merge-patches the pod's `status` subresource (annotations live in its metadata).
    fn patch_pod_status(&self, namespace: &str, name: &str, patch: &Value) -> Result<Patched>;
    /// Creates an event in `namespace`.
    fn create_event(&self, namespace: &str, event: &Value) -> Result<()>;

    /// NetworkAttachmentDefinitions, `(namespace, name)`, answered in order; a cluster that can
    /// ask for them at once does.
    fn get_nads(&self, keys: &[(String, String)]) -> Vec<Result<NadReply>> {
        keys.iter()
            .map(|(namespace, name)| self.get_nad(namespace, name))
            .collect()
    }

    /// Creates events in `namespace`, answered in order; a cluster that can send them at once
    /// does.
    fn create_events(&self, namespace: &str, events: &[Value]) -> Vec<Result<()>> {
        events
            .iter()
            .map(|e| self.create_event(namespace, e))
            .collect()
    }
}

impl<T: Cluster + ?Sized> Cluster for &T {
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>> {
        (**self).get_pod(namespace, name)
    }
    fn get_nad(&self, namespace: &str, name: &str) -> Result<NadReply> {
        (**self).get_nad(namespace, name)
    }
    fn patch_pod_status(&self, namespace: &str, name: &str, patch: &Value) -> Result<Patched> {
        (**self).patch_pod_status(namespace, name, patch)
    }
    fn create_event(&self, namespace: &str, event: &Value) -> Result<()> {
        (**self).create_event(namespace, event)
    }
    fn get_nads(&self, keys: &[(String, String)]) -> Vec<Result<NadReply>> {
        (**self).get_nads(keys)
    }
    fn create_events(&self, namespace: &str, events: &[Value]) -> Vec<Result<()>> {
        (**self).create_events(namespace, events)
    }
}

impl Cluster for Client {
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>> {
        Client::get_pod(self, namespace, name)
    }
    fn get_nad(&self, namespace: &str, name: &str) -> Result<NadReply> {
        Client::get_nad(self, namespace, name)
    }
    fn patch_pod_status(&self, namespace: &str, name: &str, patch: &Value) -> Result<Patched> {
        Client::patch_pod_status(self, namespace, name, patch)
    }
    fn create_event(&self, namespace: &str, event: &Value) -> Result<()> {
        Client::create_event(self, namespace, event)
    }
    fn get_nads(&self, keys: &[(String, String)]) -> Vec<Result<NadReply>> {
        Client::get_nads(self, keys)
    }
    fn create_events(&self, namespace: &str, events: &[Value]) -> Vec<Result<()>> {
        Client::create_events(self, namespace, events)
    }
}

/// NetworkAttachmentDefinitions given by hand, by namespace and name; no pods, and nothing to
/// write to.
#[derive(Debug, Default)]
pub struct Offline(pub HashMap<(String, String), Nad>);

impl Cluster for Offline {
    fn get_pod(&self, _: &str, _: &str) -> Result<Option<Pod>> {
        Ok(None)
    }
    fn get_nad(&self, namespace: &str, name: &str) -> Result<NadReply> {
        Ok(self
            .0
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
            .map_or(NadReply::Missing, NadReply::Found))
    }
    fn patch_pod_status(&self, namespace: &str, name: &str, _: &Value) -> Result<Patched> {
        Err(offline(&format!("the status of pod {namespace}/{name}")))
    }
    fn create_event(&self, namespace: &str, _: &Value) -> Result<()> {
        Err(offline(&format!("an event in {namespace}")))
    }
}

fn offline(what: &str) -> anyhow::Error {
    coded(
        Code::Internal,
        format!("offline: there is no API server to write {what} to"),
    )
}
