//! The daemon's connection to the API server, kept current as its credentials rotate: kubelet
//! replaces a service-account token while the daemon runs for days, so the credentials are
//! read again every little while and a new client is made when they changed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::k8s::client::Observer;
use crate::k8s::reach::access;
use crate::k8s::{Access, Client, InCluster, Timeouts};

/// How often the credentials are read again.
const RECHECK: Duration = Duration::from_secs(10);

/// What a client is told of every request, shared by every client made.
pub type SharedObserver = Arc<dyn Fn(&reqwest::Method, &str, Option<u16>) + Send + Sync>;

/// The API server, as the daemon reaches it.
pub struct Api {
    kubeconfig: Option<PathBuf>,
    in_cluster: InCluster,
    timeouts: Timeouts,
    observer: SharedObserver,
    current: Mutex<Current>,
}

struct Current {
    client: Arc<Client>,
    credentials: Credentials,
    checked: Instant,
}

/// What makes two reads of the access the same connection.
type Credentials = (String, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);

fn credentials(a: &Access) -> Credentials {
    (
        a.server.clone(),
        a.token.clone(),
        a.ca_pem.clone(),
        a.client_cert_pem.clone(),
    )
}

impl Api {
    /// Reads the credentials (`kubeconfig`, else the in-cluster service account) and makes
    /// the first client; nothing is sent yet.
    pub fn new(
        kubeconfig: Option<PathBuf>,
        in_cluster: InCluster,
        timeouts: Timeouts,
        observer: SharedObserver,
    ) -> Result<Api> {
        let access = read(kubeconfig.as_deref(), &in_cluster)?;
        let client = Arc::new(make(&access, timeouts, &observer)?);
        Ok(Api {
            current: Mutex::new(Current {
                client,
                credentials: credentials(&access),
                checked: Instant::now(),
            }),
            kubeconfig,
            in_cluster,
            timeouts,
            observer,
        })
    }

    /// The client; a new one when the credentials changed since they were last read. A read
    /// that fails keeps the client there is (the token file is being replaced, say).
    pub fn client(&self) -> Arc<Client> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.checked.elapsed() >= RECHECK {
            current.checked = Instant::now();
            let renewed = read(self.kubeconfig.as_deref(), &self.in_cluster).and_then(|a| {
                let fresh = credentials(&a);
                if fresh == current.credentials {
                    return Ok(None);
                }
                Ok(Some((make(&a, self.timeouts, &self.observer)?, fresh)))
            });
            match renewed {
                Ok(Some((client, fresh))) => {
                    log::info!("credentials changed: reconnecting to the API server");
                    current.client = Arc::new(client);
                    current.credentials = fresh;
                }
                Ok(None) => {}
                Err(e) => log::warn!("re-reading credentials (the old ones stay): {e:#}"),
            }
        }
        Arc::clone(&current.client)
    }
}

fn read(kubeconfig: Option<&std::path::Path>, in_cluster: &InCluster) -> Result<Access> {
    access(kubeconfig, in_cluster)?.context(
        "no API server: give --kubeconfig, or run in a pod (KUBERNETES_SERVICE_HOST/_PORT)",
    )
}

fn make(access: &Access, timeouts: Timeouts, observer: &SharedObserver) -> Result<Client> {
    let observer = Arc::clone(observer);
    let tell: Observer = Box::new(move |method, path, status| observer(method, path, status));
    Ok(Client::new(access, timeouts)?.observed(tell))
}
