//! The node daemon (`multihome daemon`): a watch-fed cache of its node's pods and of every
//! NetworkAttachmentDefinition, answered over a unix socket to the CNI calls of its node, and
//! Prometheus metrics.
//!
//! Nothing a pod start does waits on it: the socket is up before the cache is synced and
//! answers "not ready" until it is; a call that finds no daemon, an unready one, one of another
//! protocol or a slow one reads the API itself (`k8s::socket`). Delegates stay in the CNI
//! process, so the daemon's memory is its cache's, bounded by its node. SIGTERM stops new
//! connections, removes the socket (calls then read the API at once) and lets the work in
//! progress finish; the CNI config stays where `install` wrote it.
//!
//! - [`store`]: the cache (pure);
//! - [`reflector`]: LIST + WATCH of one resource into it;
//! - [`api`]: the API connection, renewed as credentials rotate;
//! - [`server`]: the socket, and [`server::Served`], the daemon's `k8s::Cluster`;
//! - [`hotplug`]: a pod's changed networks annotation brought about in the pod;
//! - [`metrics`]: the metrics and the HTTP endpoint with the probes.

pub mod api;
pub mod hotplug;
pub mod metrics;
pub mod reflector;
pub mod server;
pub mod store;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::k8s::access::SERVICE_ACCOUNT_DIR;
use crate::k8s::{InCluster, Nad, Pod, Timeouts};
use api::Api;
use metrics::{Figures, Metrics};
use reflector::{Resource, read};
use server::InFlight;
use store::Objects;

/// What `multihome daemon` is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name: only its pods are watched.
    pub node: String,
    /// The socket's path; its directory is made 0700, the socket 0600.
    pub socket: PathBuf,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: not at all.
    pub metrics: Option<SocketAddr>,
    /// A kubeconfig; `None`: the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// The in-cluster environment, read by the entry point.
    pub in_cluster: InCluster,
    /// Limits of the daemon's own API calls.
    pub timeouts: Timeouts,
    /// How long SIGTERM waits for the work in progress.
    pub drain: Duration,
    /// Hot-plug of changed networks annotations into running pods.
    pub hotplug: bool,
    /// multihome's config, for hot-plug (`None`: the one a runtime would use).
    pub config: Option<PathBuf>,
    /// The node's root as mounted in the daemon's container: the daemon enters it (chroot) so
    /// that hot-plug's delegates find the node's plugins, libraries, records and network
    /// namespaces where the runtime's CNI calls find them.
    pub host_root: Option<PathBuf>,
}

/// The daemon's state, shared by its threads.
pub struct Daemon {
    api: Api,
    pods: RwLock<Objects<Pod>>,
    nads: RwLock<Objects<Nad>>,
    metrics: Arc<Metrics>,
    in_flight: InFlight,
}

impl Daemon {
    /// Both resources listed and their watches not failing.
    fn ready(&self) -> bool {
        read(&self.pods).ready() && read(&self.nads).ready()
    }

    fn figures(&self) -> Figures {
        let age = |at: Option<Instant>| at.map(|t| t.elapsed());
        let (pods, nads) = (read(&self.pods), read(&self.nads));
        Figures {
            ready: pods.ready() && nads.ready(),
            caches: vec![
                ("pods", pods.items.len(), age(pods.current_at)),
                (
                    "network-attachment-definitions",
                    nads.items.len(),
                    age(nads.current_at),
                ),
            ],
        }
    }
}

/// Runs the daemon until `stop` returns (a signal came), then drains.
pub fn run(opts: &Options, stop: impl FnOnce() -> Result<String>) -> Result<()> {
    let mut in_cluster = opts.in_cluster.clone();
    // Kept open for the life of the daemon: its token is read anew through it as it rotates.
    let _service_account = match &opts.host_root {
        Some(root) => Some(enter(root, &mut in_cluster)?),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let observer = {
        let metrics = Arc::clone(&metrics);
        Arc::new(move |m: &reqwest::Method, p: &str, s: Option<u16>| metrics.api_request(m, p, s))
    };
    let api = Api::new(opts.kubeconfig.clone(), in_cluster, opts.timeouts, observer)?;
    let daemon = Arc::new(Daemon {
        api,
        pods: RwLock::default(),
        nads: RwLock::default(),
        metrics,
        in_flight: InFlight::default(),
    });
    let pods = Resource {
        name: "pods",
        path: "/api/v1/pods".into(),
        query: format!("fieldSelector=spec.nodeName={}", opts.node),
    };
    let nads = Resource {
        name: "network-attachment-definitions",
        path: "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions".into(),
        query: String::new(),
    };
    // The hot-plug worker's line, when there is one.
    let jobs = opts.hotplug.then(|| {
        let (jobs, queue) = std::sync::mpsc::channel::<hotplug::Job>();
        let (d, config, again) = (Arc::clone(&daemon), opts.config.clone(), jobs.clone());
        std::thread::spawn(move || hotplug::work(&d, config, queue, again));
        jobs
    });
    {
        let d = Arc::clone(&daemon);
        std::thread::spawn(move || {
            let changed = |pod| {
                if let Some(jobs) = &jobs {
                    let _ = jobs.send(hotplug::Job::new(pod));
                }
            };
            reflector::run(&d.api, &pods, &d.pods, &d.metrics, &changed)
        });
        let d = Arc::clone(&daemon);
        std::thread::spawn(move || reflector::run(&d.api, &nads, &d.nads, &d.metrics, &|_| {}));
    }
    if let Some(addr) = opts.metrics {
        let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        log::info!("metrics and probes on http://{addr}");
        let d = Arc::clone(&daemon);
        std::thread::spawn(move || metrics::serve(listener, &d.metrics, || d.figures()));
    }
    let (listener, inode) = listen(&opts.socket)?;
    log::info!("serving {} for node {:?}", opts.socket.display(), opts.node);
    {
        let d = Arc::clone(&daemon);
        std::thread::spawn(move || server::serve(listener, d));
    }

    let signal = stop()?;
    log::info!("{signal}: no new connections; draining");
    daemon
        .in_flight
        .stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Only our own socket goes: a newer daemon may have put its own in place already.
    if std::fs::metadata(&opts.socket).is_ok_and(|m| m.ino() == inode) {
        let _ = std::fs::remove_file(&opts.socket);
    }
    let deadline = Instant::now() + opts.drain;
    while daemon.in_flight.count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    match daemon.in_flight.count() {
        0 => log::info!("drained"),
        n => log::warn!("{n} request(s) still in progress after {:?}", opts.drain),
    }
    Ok(())
}

/// Enters the node's root `root` (chroot), keeping the container's service-account directory
/// open first and pointing `in_cluster` at it through /proc (the node's).
fn enter(root: &Path, in_cluster: &mut InCluster) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(SERVICE_ACCOUNT_DIR)
        .with_context(|| format!("opening {SERVICE_ACCOUNT_DIR}"))?;
    nix::unistd::chroot(root)
        .with_context(|| format!("entering the node's root {}", root.display()))?;
    std::env::set_current_dir("/").context("entering /")?;
    in_cluster.service_account_dir = Some(format!("/proc/self/fd/{}", dir.as_raw_fd()).into());
    log::info!("entered the node's root {}", root.display());
    Ok(dir)
}

/// Binds the socket: its directory 0700, the socket 0600 before it is in place (bound under a
/// name of its own, then renamed over whatever a previous daemon left). Returns its inode.
fn listen(path: &Path) -> Result<(UnixListener, u64)> {
    let dir = path
        .parent()
        .with_context(|| format!("socket {} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} 0700", dir.display()))?;
    let fresh = dir.join(format!(".daemon.{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&fresh);
    let listener =
        UnixListener::bind(&fresh).with_context(|| format!("binding {}", fresh.display()))?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} 0600", fresh.display()))?;
    std::fs::rename(&fresh, path)
        .with_context(|| format!("moving {} into place", path.display()))?;
    let inode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .ino();
    Ok((listener, inode))
}
