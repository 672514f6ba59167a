//! Network namespaces and netlink inside them.
//!
//! Netlink work for a pod runs on a dedicated, short-lived thread that enters the pod's netns
//! and owns its own socket and single-threaded runtime; no other code ever runs on it, and the
//! thread that executes delegates never leaves the host namespace (children inherit the forking
//! thread's namespace, and the spec requires delegates to run in the runtime's).

use std::fs::File;
use std::future::Future;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

use crate::error::{Code, coded};
use crate::netlink;

/// An open network namespace file (`/run/netns/x`, `/proc/<pid>/ns/net`).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: String,
}

impl NetNs {
    /// Opens `path` (the value of `CNI_NETNS`).
    pub fn open(path: &str) -> Result<NetNs> {
        let file = File::open(path).map_err(|e| {
            coded(
                Code::InvalidEnv,
                format!("CNI_NETNS {path:?} cannot be opened: {e}"),
            )
        })?;
        Ok(NetNs {
            file,
            path: path.to_string(),
        })
    }

    /// The namespace of the calling thread: the runtime's (host) namespace for the thread that
    /// runs delegates.
    pub fn current() -> Result<NetNs> {
        let path = "/proc/thread-self/ns/net";
        let file = File::open(path).with_context(|| format!("opening {path}"))?;
        Ok(NetNs {
            file,
            path: path.to_string(),
        })
    }

    /// The open namespace file (to move links into it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` with a netlink handle bound to this namespace, on a dedicated thread.
    pub fn with_netlink<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce(Handle) -> Fut + Send,
        Fut: Future<Output = Result<T>>,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                // This thread is ours alone and ends with this call, so it never has to return
                // to the host namespace.
                setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                    coded(
                        Code::InvalidEnv,
                        format!("CNI_NETNS {:?} is not a network namespace: {e}", self.path),
                    )
                })?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .context("starting the netlink runtime")?;
                runtime.block_on(async {
                    let (connection, handle, _) =
                        rtnetlink::new_connection().context("opening a netlink socket")?;
                    tokio::spawn(connection);
                    f(handle).await
                })
            })
            .join()
            .map_err(|_| anyhow!("netlink thread for {} panicked", self.path))?
        })
    }

    /// Names of all links in the namespace.
    pub fn link_names(&self) -> Result<Vec<String>> {
        self.with_netlink(|handle| async move {
            Ok(netlink::links(&handle)
                .await?
                .into_iter()
                .map(|l| l.name)
                .collect())
        })
        .with_context(|| format!("in netns {}", self.path))
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        Path::new(&self.path)
    }
}
