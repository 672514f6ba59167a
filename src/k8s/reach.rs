//! How one call reaches the cluster ([`Reach`]): the entry point decides it and passes it into
//! the flows, which never look at the process environment themselves. Through the node daemon
//! when one answers, else the API server itself.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::access::{Access, SERVICE_ACCOUNT_DIR};
use super::client::{Client, Timeouts};
use super::cluster::Cluster;
use super::socket::{Asked, DaemonSocket, Link, Seen};

/// The in-cluster environment of a pod's process (`KUBERNETES_SERVICE_HOST`/`_PORT`), as the
/// entry point read it.
#[derive(Debug, Clone, Default)]
pub struct InCluster {
    /// `KUBERNETES_SERVICE_HOST`.
    pub host: Option<String>,
    /// `KUBERNETES_SERVICE_PORT`.
    pub port: Option<String>,
    /// Where the service account's token and CA are; `None`: the standard directory.
    pub service_account_dir: Option<PathBuf>,
}

impl InCluster {
    /// What this process's environment says.
    pub fn from_env() -> InCluster {
        let var = |k| std::env::var(k).ok();
        InCluster {
            host: var("KUBERNETES_SERVICE_HOST"),
            port: var("KUBERNETES_SERVICE_PORT"),
            service_account_dir: None,
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
    /// does): through the node daemon when one answers, else through `kubeconfig` when given,
    /// else the in-cluster service account.
    Api {
        /// multihome's `kubeconfig`.
        kubeconfig: Option<PathBuf>,
        /// The in-cluster environment, used without `kubeconfig`.
        in_cluster: InCluster,
        /// `apiTimeout`-style limits of every call.
        timeouts: Timeouts,
        /// The node daemon to ask first (`daemonSocket`).
        daemon: Option<DaemonSocket>,
        /// What the call saw of the daemon: why it did not use it, how long it waited.
        seen: Seen,
    },
    /// A cluster the entry point already has (NADs given by hand; the daemon's cache).
    Given(&'a dyn Cluster),
}

impl Reach<'_> {
    /// The reach of a CNI call configured with `kubeconfig` and `daemon` in an `in_cluster`
    /// environment: [`Reach::Nowhere`] when neither names an API server.
    pub fn api(
        kubeconfig: Option<&Path>,
        in_cluster: InCluster,
        timeouts: Timeouts,
        daemon: Option<DaemonSocket>,
    ) -> Self {
        let configured =
            kubeconfig.is_some() || in_cluster.host.as_deref().is_some_and(|h| !h.is_empty());
        if !configured {
            return Reach::Nowhere;
        }
        Reach::Api {
            kubeconfig: kubeconfig.map(Path::to_path_buf),
            in_cluster,
            timeouts,
            daemon,
            seen: Seen::default(),
        }
    }

    /// The daemon this call was to ask, and what the call saw of it.
    pub fn daemon(&self) -> Option<(&DaemonSocket, &Seen)> {
        match self {
            Reach::Api {
                daemon: Some(d),
                seen,
                ..
            } => Some((d, seen)),
            _ => None,
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
                daemon,
                seen,
            } => {
                let direct = move || direct(kubeconfig.as_deref(), in_cluster, *timeouts);
                if let Some(socket) = daemon {
                    match seen.timed(|| Link::open(socket)) {
                        Ok(link) => {
                            let asked =
                                Asked::new(link, socket, timeouts.total, seen, Box::new(direct));
                            return Ok(Some(Box::new(asked)));
                        }
                        Err(why) => {
                            log::info!(
                                "no daemon answered at {} ({}): asking the API server directly",
                                socket.path.display(),
                                why.as_str()
                            );
                            seen.unused.set(Some(why));
                        }
                    }
                }
                Ok(direct()?.map(|c| Box::new(c) as Box<dyn Cluster>))
            }
        }
    }
}

/// The API server itself: through `kubeconfig` when given, else the in-cluster service account
/// (`None` outside a cluster).
fn direct(
    kubeconfig: Option<&Path>,
    in_cluster: &InCluster,
    timeouts: Timeouts,
) -> Result<Option<Client>> {
    match access(kubeconfig, in_cluster)? {
        Some(access) => Client::new(&access, timeouts).map(Some),
        None => Ok(None),
    }
}

/// How to reach the API server: through `kubeconfig` when given, else the in-cluster service
/// account (`None` outside a cluster). Read anew on every call: tokens rotate.
pub fn access(kubeconfig: Option<&Path>, in_cluster: &InCluster) -> Result<Option<Access>> {
    match kubeconfig {
        Some(path) => Access::from_kubeconfig(path).map(Some),
        None => {
            let dir = in_cluster
                .service_account_dir
                .as_deref()
                .unwrap_or(SERVICE_ACCOUNT_DIR.as_ref());
            Access::in_cluster(|k| in_cluster.get(k), dir)
        }
    }
}
