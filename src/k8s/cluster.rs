//! The cluster as one call sees it: the seam between the flows and wherever pods and
//! NetworkAttachmentDefinitions come from. The entry point decides how a call reaches the
//! cluster ([`Reach`]) and passes it into the flows, which never look at the process
//! environment themselves.
//!
//! Implementations of [`Cluster`]: the live API server ([`Client`]), NADs given by hand
//! ([`Offline`], `explain --nad`), and the node daemon's watch cache to come.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;

use super::access::{Access, SERVICE_ACCOUNT_DIR};
use super::client::{Client, Nad, NadReply, Patched, Pod, Timeouts};
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

/// The in-cluster environment of a pod's process (`KUBERNETES_SERVICE_HOST`/`_PORT`), as the
/// entry point read it.
#[derive(Debug, Clone, Default)]
pub struct InCluster {
    /// `KUBERNETES_SERVICE_HOST`.
    pub host: Option<String>,
    /// `KUBERNETES_SERVICE_PORT`.
    pub port: Option<String>,
}

impl InCluster {
    /// What this process's environment says.
    pub fn from_env() -> InCluster {
        let var = |k| std::env::var(k).ok();
        InCluster {
            host: var("KUBERNETES_SERVICE_HOST"),
            port: var("KUBERNETES_SERVICE_PORT"),
        }
    }

    fn get(&self, key: &str) -> Option<String> {
        match key {
            "KUBERNETES_SERVICE_HOST" => self.host.clone(),
            "KUBERNETES_SERVICE_PORT" => self.port.clone(),
            _ => None,
        }
    }
}

/// How one call reaches the cluster, as its entry point decided.
pub enum Reach<'a> {
    /// No Kubernetes: multihome's config alone.
    Nowhere,
    /// The API server, connected when a flow first needs it (a DEL from its record never
    /// does): through `kubeconfig` when given, else the in-cluster service account.
    Api {
        /// multihome's `kubeconfig`.
        kubeconfig: Option<PathBuf>,
        /// The in-cluster environment, used without `kubeconfig`.
        in_cluster: InCluster,
        /// `apiTimeout`-style limits of every call.
        timeouts: Timeouts,
    },
    /// A cluster the entry point already has (NADs given by hand; the daemon's cache).
    Given(&'a dyn Cluster),
}

impl Reach<'_> {
    /// The reach of a CNI call configured with `kubeconfig` in an `in_cluster` environment:
    /// [`Reach::Nowhere`] when neither names an API server.
    pub fn api(kubeconfig: Option<&Path>, in_cluster: InCluster, timeouts: Timeouts) -> Self {
        let configured =
            kubeconfig.is_some() || in_cluster.host.as_deref().is_some_and(|h| !h.is_empty());
        if !configured {
            return Reach::Nowhere;
        }
        Reach::Api {
            kubeconfig: kubeconfig.map(Path::to_path_buf),
            in_cluster,
            timeouts,
        }
    }

    /// Whether there is a cluster to ask at all (plain names may then be NADs).
    pub fn configured(&self) -> bool {
        !matches!(self, Reach::Nowhere)
    }

    /// The cluster, connected; `None` without one.
    pub fn connect(&self) -> Result<Option<Box<dyn Cluster + '_>>> {
        match self {
            Reach::Nowhere => Ok(None),
            Reach::Given(cluster) => Ok(Some(Box::new(*cluster))),
            Reach::Api {
                kubeconfig,
                in_cluster,
                timeouts,
            } => {
                let access = match kubeconfig {
                    Some(path) => Access::from_kubeconfig(path)?,
                    None => match Access::in_cluster(
                        |k| in_cluster.get(k),
                        SERVICE_ACCOUNT_DIR.as_ref(),
                    )? {
                        Some(a) => a,
                        None => return Ok(None),
                    },
                };
                Ok(Some(Box::new(Client::new(&access, *timeouts)?)))
            }
        }
    }
}
