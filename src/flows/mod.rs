//! The CNI operations as a library the one-shot binary (and later a node daemon) calls: one
//! module per operation.
//!
//! ADD validates everything before the first delegate runs, records the plan durably, adds in
//! order, reports to Kubernetes, and rolls back on any failure. DEL works from the record, in
//! reverse, best effort, idempotently, without the API. CHECK re-checks every delegate against
//! its recorded result. GC tears down what the runtime no longer knows and forwards GC to the
//! delegates; STATUS says whether an ADD can be served.

mod add;
mod check;
mod del;
mod gc;
mod status;

pub use add::add;
pub(crate) use add::check_binaries;
pub use check::check;
pub use del::del;
pub use gc::gc;
pub use status::status;

use anyhow::Result;

use crate::cache::{Cache, CachedAttachment, Key, Lock, Record};
use crate::cni::env::CniEnv;
use crate::config::{NetConf, NetworkConfig, resolve_network};
use crate::delegate::{Runner, search_path};
use crate::error::{CniError, Code, coded};

/// One invocation: the validated environment and multihome's config.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The `CNI_*` environment.
    pub env: CniEnv,
    /// multihome's config (stdin).
    pub conf: NetConf,
}

impl Invocation {
    /// A runner for delegate calls about `netns` (the invocation's own, or a recorded one).
    pub(crate) fn runner_in(&self, container_id: &str, netns: Option<String>) -> Runner {
        Runner {
            search_path: search_path(&self.conf.bin_dir, &self.env.path),
            container_id: container_id.to_string(),
            netns,
            timeout: self.conf.delegate_timeout,
        }
    }

    pub(crate) fn runner(&self) -> Runner {
        self.runner_in(&self.env.container_id, self.env.netns.clone())
    }

    pub(crate) fn cache(&self) -> Cache {
        Cache::new(&self.conf.cni_dir)
    }

    /// The CNI attachment this invocation is about.
    pub(crate) fn key(&self) -> Key {
        Key {
            network: self.conf.name.clone(),
            container_id: self.env.container_id.clone(),
            ifname: self.env.ifname.clone(),
        }
    }
}

/// The record of `key`, with the held lock of the file it came from: the current layout first,
/// then the one record per container that multihome wrote before records were keyed by
/// attachment (used when it is for the same runtime interface). A record that cannot be read is
/// the inner `Err`, so the caller can decide how to survive it.
pub(crate) fn find_record(cache: &Cache, key: &Key) -> Result<(Lock, Result<Option<Record>>)> {
    let lock = cache.lock(key)?;
    match cache.load(&lock) {
        Ok(None) => {}
        found => return Ok((lock, found)),
    }
    if !cache.has_legacy(&key.container_id) {
        return Ok((lock, Ok(None)));
    }
    let legacy = cache.lock_legacy(&key.container_id)?;
    match cache.load(&legacy) {
        Ok(Some(r)) if r.ifname != key.ifname => Ok((lock, Ok(None))),
        Ok(None) => Ok((lock, Ok(None))),
        found => {
            // From here on the old record is the one to act on; ours holds nothing.
            cache.remove(lock)?;
            Ok((legacy, found))
        }
    }
}

/// The networks every pod gets, as far as they are known without the API: inline `delegates`,
/// and `clusterNetwork`/`defaultNetworks` given as a file, a directory or a `confDir` name. A
/// plain name found nowhere in `confDir` is, when the API is configured, a
/// NetworkAttachmentDefinition (`Ok(None)`). Each comes with the config key it is from.
pub(crate) fn static_networks(conf: &NetConf) -> Vec<(String, Result<Option<NetworkConfig>>)> {
    let Some(cluster) = &conf.cluster_network else {
        return conf
            .delegates
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let net = NetworkConfig::from_value(d.clone(), conf.cni_version).map(Some);
                (format!("multihome config \"delegates\"[{i}]"), net)
            })
            .collect();
    };
    let api = conf.kubeconfig.is_some()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty());
    std::iter::once(("clusterNetwork", cluster))
        .chain(conf.default_networks.iter().map(|n| ("defaultNetworks", n)))
        .map(|(key, reference)| {
            let net = match resolve_network(reference, &conf.conf_dir, conf.cni_version) {
                Err(_) if api && !reference.contains('/') => Ok(None),
                other => other.map(Some),
            };
            (format!("{key} {reference:?}"), net)
        })
        .collect()
}

/// DEL of the given attachments in reverse, continuing past failures and reporting them all.
pub(crate) fn del_attachments(runner: &Runner, attachments: &[CachedAttachment]) -> Result<()> {
    let errors: Vec<String> = attachments
        .iter()
        .rev()
        .filter_map(|a| {
            runner
                .del(&a.attachment, a.result.as_ref(), a.host_link.as_deref())
                .err()
                .map(|e| {
                    format!(
                        "network {:?} ({}): {}",
                        a.attachment.name,
                        a.attachment.ifname,
                        CniError::from_anyhow(&e).msg
                    )
                })
        })
        .collect();
    reported("DEL", "attachment(s)", &errors)
}

/// `Ok` when nothing failed, else one error listing every failure of `what` (the operations
/// that go on past failures report them all at the end).
pub(crate) fn reported(what: &str, items: &str, errors: &[String]) -> Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    Err(coded(
        Code::Internal,
        format!(
            "{what} failed for {} {items}: {}",
            errors.len(),
            errors.join(" | ")
        ),
    ))
}
