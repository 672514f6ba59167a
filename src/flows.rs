//! The ADD, DEL and CHECK flows, as a library the one-shot binary (and later a node daemon)
//! calls.
//!
//! ADD validates everything before the first delegate runs, records the plan in the cache, adds
//! in order, reports to Kubernetes, and rolls back on any failure. DEL works from the cache, in
//! reverse, best effort, idempotently, without the API. CHECK re-checks every delegate against
//! its cached result.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::cache::{Cache, CachedAttachment, Durability, KIND, Lock, Record};
use crate::cni::env::CniEnv;
use crate::cni::result::convert;
use crate::config::NetConf;
use crate::default_route;
use crate::delegate::{Runner, check_available, search_path};
use crate::error::{CniError, Code, coded};
use crate::k8s::report;
use crate::netns::NetNs;

/// How long ADD waits for `readinessindicatorfile` (Multus waits 45 s).
const READINESS_TIMEOUT: Duration = Duration::from_secs(45);
const READINESS_POLL: Duration = Duration::from_millis(100);

/// One invocation: the validated environment and multihome's config.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The `CNI_*` environment.
    pub env: CniEnv,
    /// multihome's config (stdin).
    pub conf: NetConf,
}

impl Invocation {
    pub(crate) fn runner(&self) -> Runner {
        Runner {
            search_path: search_path(&self.conf.bin_dir, &self.env.path),
            container_id: self.env.container_id.clone(),
            netns: self.env.netns.clone(),
        }
    }

    pub(crate) fn cache(&self) -> Cache {
        Cache::new(&self.conf.cni_dir)
    }
}

/// ADD: attach every planned network; returns the cluster network's result in the caller's
/// version. On failure nothing stays attached.
pub fn add(inv: &Invocation) -> Result<Value> {
    wait_for_readiness(&inv.conf)?;
    // The pod's interfaces are listed over netlink while the API is asked about the pod; a bad
    // CNI_NETNS is reported after the config's own errors.
    let (kube, pod_links) = std::thread::scope(|s| {
        let links = s.spawn(|| -> Result<(NetNs, Vec<String>)> {
            let netns = NetNs::open(inv.env.netns.as_deref().unwrap_or_default())?;
            let names = netns.link_names()?;
            Ok((netns, names))
        });
        (inv.kube(true), links.join())
    });
    let kube = kube?;
    let attachments = inv.plan(kube.as_ref())?;
    let runner = inv.runner();
    for att in &attachments {
        check_available(att, &runner.search_path)?;
    }
    let (netns, existing) = pod_links.map_err(|_| anyhow::anyhow!("netlink thread panicked"))??;
    for att in &attachments {
        if existing.contains(&att.ifname) {
            return Err(coded(
                Code::InvalidConfig,
                format!(
                    "interface {:?} (network {:?}) already exists in {}",
                    att.ifname,
                    att.name,
                    netns.path().display()
                ),
            ));
        }
    }

    let cache = inv.cache();
    let lock = cache.lock(&inv.env.container_id)?;
    if cache
        .load(&lock, &inv.env.container_id)
        .ok()
        .flatten()
        .is_some()
    {
        log::warn!(
            "ADD for {} replaces a cache entry that no DEL removed",
            inv.env.container_id
        );
    }
    let mut record = Record {
        kind: KIND.into(),
        container_id: inv.env.container_id.clone(),
        netns: inv.env.netns.clone(),
        ifname: inv.env.ifname.clone(),
        attachments: attachments
            .into_iter()
            .map(CachedAttachment::planned)
            .collect(),
    };
    // Recorded before the first delegate runs, so DEL knows the whole plan even if this process
    // is killed mid-ADD. Not fsynced (about 1 ms): after a power loss the pod's namespace is gone
    // too, and DEL without a record re-plans from the config and still releases IPAM.
    cache.save(&lock, &record, Durability::Atomic)?;

    for k in 0..record.attachments.len() {
        let att = &record.attachments[k].attachment;
        match runner.add(att) {
            Ok(added) => {
                record.attachments[k].result = Some(added.result);
                record.attachments[k].host_link = added.host_link;
            }
            Err(err) => {
                let err = err.context(format!("adding network {:?} as {}", att.name, att.ifname));
                rollback(&runner, &cache, lock, &mut record, Some(k))?;
                return Err(err);
            }
        }
    }
    let mut default_index = 0;
    let request = record.attachments.iter().enumerate().find_map(|(r, a)| {
        let gateways = a.attachment.default_route.clone()?;
        Some((r, a.attachment.ifname.clone(), gateways))
    });
    if let Some((r, ifname, gateways)) = request {
        let settled = default_route::settle(&netns, &ifname, &gateways).and_then(|routes| {
            default_route::rewrite_results(&mut record, &ifname, &routes).map(|()| routes)
        });
        match settled {
            Ok(routes) if default_route::carries(&routes, &ifname) => default_index = r,
            Ok(_) => {}
            Err(err) => {
                rollback(&runner, &cache, lock, &mut record, None)?;
                return Err(err);
            }
        }
    }
    // The durable write of the record (an fsync, the slowest step of multihome's own) runs
    // while Kubernetes is told about the attachments.
    let (reported, saved) = std::thread::scope(|s| {
        let saver = s.spawn(|| cache.save(&lock, &record, Durability::Durable));
        let reported = kube.as_ref().map_or(Ok(()), |kube| {
            report::report_status(kube, &record, default_index)
                .inspect(|()| report::send_events(kube, &record))
        });
        (reported, saver.join())
    });
    let saved = saved.map_err(|_| anyhow::anyhow!("cache writer panicked"))?;
    if let Err(err) = reported.and(saved) {
        rollback(&runner, &cache, lock, &mut record, None)?;
        return Err(err);
    }
    let first = record
        .attachments
        .first()
        .and_then(|a| a.result.as_ref())
        .context("no attachment")?;
    let version = record.attachments[0].attachment.network.cni_version;
    convert(first, version, inv.conf.cni_version).context("converting the cluster network's result")
}

/// Undoes a failed ADD. When attachment `failed` is the one that failed: it returned no result,
/// and a DEL of it often fails for the very reason its ADD did (a missing master, an unsupported
/// version), so its DEL is attempted and only logged and cannot make every later DEL fail too.
/// The attachments before it were fully added; if any of their DELs fails, the cache keeps just
/// those for the runtime's DEL to retry.
fn rollback(
    runner: &Runner,
    cache: &Cache,
    lock: Lock,
    record: &mut Record,
    failed: Option<usize>,
) -> Result<()> {
    if let Some(failed) = failed {
        let att = &record.attachments[failed];
        if let Err(e) = runner.del(&att.attachment, None, None) {
            log::warn!(
                "DEL of the failed network {:?} ({}): {e:#}",
                att.attachment.name,
                att.attachment.ifname
            );
        }
        record.attachments.truncate(failed);
    }
    match del_attachments(runner, &record.attachments) {
        Ok(()) => cache.remove(lock, &record.container_id),
        Err(e) => {
            log::error!("rollback after failed ADD left errors (cache kept for DEL): {e:#}");
            cache.save(&lock, record, Durability::Durable)
        }
    }
}

/// DEL: detach everything ADD recorded, in reverse, best effort, reporting every failure. Never
/// needs the API when the cache has the container. Succeeds when things are already gone; with
/// no usable cache it re-plans (from the API when it answers, else from the config) so delegates
/// still release their resources (IPAM) rather than leak them.
pub fn del(inv: &Invocation) -> Result<()> {
    let runner = inv.runner();
    let cache = inv.cache();
    let lock = cache.lock(&inv.env.container_id)?;
    let from_cache = match cache.load(&lock, &inv.env.container_id) {
        Ok(Some(record)) => Some(record.attachments),
        Ok(None) => None,
        Err(e) => {
            log::warn!(
                "ignoring unreadable cache for {}: {e:#}",
                inv.env.container_id
            );
            None
        }
    };
    let Some(attachments) = from_cache else {
        // Nothing says what was attached (no ADD, a rolled-back ADD, a lost cache): DEL every
        // planned network so IPAM is released, but a failure here proves nothing was leaked and
        // must not block the pod's teardown.
        let kube = inv.kube(false).unwrap_or_else(|e| {
            log::warn!(
                "DEL without cache: the API is unavailable, planning from the config alone: {e:#}"
            );
            None
        });
        let planned = match (inv.plan(kube.as_ref()), &kube) {
            (Err(e), Some(_)) => {
                log::warn!("DEL without cache: {e:#}; planning from the config alone");
                inv.plan(None)
            }
            (planned, _) => planned,
        };
        match planned {
            Ok(atts) => {
                let atts: Vec<_> = atts.into_iter().map(CachedAttachment::planned).collect();
                if let Err(e) = del_attachments(&runner, &atts) {
                    log::warn!(
                        "DEL without a cache entry for {}: {e:#}",
                        inv.env.container_id
                    );
                }
            }
            Err(e) => log::warn!(
                "no cache for {} and the config cannot be planned: {e:#}",
                inv.env.container_id
            ),
        }
        return cache.remove(lock, &inv.env.container_id);
    };
    let outcome = del_attachments(&runner, &attachments);
    if outcome.is_ok() || !inv.conf.retry_delete_on_error {
        cache.remove(lock, &inv.env.container_id)?;
    }
    outcome
}

/// DEL of the given attachments in reverse, continuing past failures and reporting them all.
fn del_attachments(runner: &Runner, attachments: &[CachedAttachment]) -> Result<()> {
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
    if errors.is_empty() {
        Ok(())
    } else {
        Err(coded(
            Code::Internal,
            format!(
                "DEL failed for {} attachment(s): {}",
                errors.len(),
                errors.join(" | ")
            ),
        ))
    }
}

/// CHECK: every delegate, in order, against its cached result.
pub fn check(inv: &Invocation) -> Result<()> {
    if !inv.conf.cni_version.supports_check() {
        return Err(coded(
            Code::IncompatibleVersion,
            format!(
                "config version {} does not allow CHECK (needs 0.4.0 or later)",
                inv.conf.cni_version
            ),
        ));
    }
    let runner = inv.runner();
    let cache = inv.cache();
    let lock = cache.lock(&inv.env.container_id)?;
    let record = cache.load(&lock, &inv.env.container_id)?.ok_or_else(|| {
        coded(
            Code::UnknownContainer,
            format!(
                "no attachments recorded for container {}",
                inv.env.container_id
            ),
        )
    })?;
    for a in &record.attachments {
        let result = a.result.as_ref().ok_or_else(|| {
            coded(
                Code::UnknownContainer,
                format!(
                    "network {:?} ({}) was never fully added",
                    a.attachment.name, a.attachment.ifname
                ),
            )
        })?;
        runner
            .check(&a.attachment, result)
            .with_context(|| format!("checking network {:?}", a.attachment.name))?;
    }
    Ok(())
}

/// Waits (bounded) for `readinessindicatorfile`, the cluster network's signal that it is ready.
fn wait_for_readiness(conf: &NetConf) -> Result<()> {
    let Some(file) = &conf.readiness_indicator_file else {
        return Ok(());
    };
    let start = Instant::now();
    while !file.exists() {
        if start.elapsed() >= READINESS_TIMEOUT {
            return Err(coded(
                Code::TryAgainLater,
                format!(
                    "readinessindicatorfile {} still missing after {}s: is the cluster network ready?",
                    file.display(),
                    READINESS_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(READINESS_POLL);
    }
    Ok(())
}
