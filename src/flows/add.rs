//! ADD: validate everything, record the plan durably, add in order, settle default routes,
//! report to Kubernetes; on any failure, roll back what was added.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use serde_json::Value;

use super::del_attachments;
use super::report;
use crate::cache::{Cache, CachedAttachment, Durability, Key, Lock, Record};
use crate::cni::result::convert;
use crate::config::NetConf;
use crate::default_route;
use crate::delegate::check_available;
use crate::error::{Code, coded};
use crate::invocation::Invocation;
use crate::invocation::resolve::Kube;
use crate::k8s::Reach;
use crate::netns::NetNs;
use crate::plan::Attachment;
use crate::plugin::Runner;

/// How long ADD waits for `readinessindicatorfile` (Multus waits 45 s).
const READINESS_TIMEOUT: Duration = Duration::from_secs(45);
const READINESS_POLL: Duration = Duration::from_millis(100);

/// ADD: attach every planned network; returns the cluster network's result in the caller's
/// version. On failure nothing stays attached.
pub fn add(inv: &Invocation, reach: &Reach<'_>) -> Result<Value> {
    let cache = inv.cache();
    let key = inv.key();
    if let Err(e) = wait_for_readiness(&inv.conf) {
        attached_nothing(&cache, cache.lock(&key)?, &key);
        return Err(e);
    }
    // Held from here on: an ADD racing another ADD or a DEL of the same attachment must see
    // what that one left, interfaces and record alike.
    let lock = cache.lock(&key)?;
    let (kube, attachments, netns) = match prepare(inv, reach, &cache, &lock) {
        Ok(prepared) => prepared,
        Err(e) => {
            attached_nothing(&cache, lock, &key);
            return Err(e);
        }
    };
    let runner = inv.runner();
    let mut record = Record {
        network: inv.conf.name.clone(),
        container_id: inv.env.container_id.clone(),
        netns: inv.env.netns.clone(),
        ifname: inv.env.ifname.clone(),
        added: Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
        attachments: attachments
            .into_iter()
            .map(CachedAttachment::planned)
            .collect(),
    };
    // Recorded durably before the first delegate runs, so DEL knows the whole plan whatever
    // happens next (the process killed, the node losing power).
    cache.save(&lock, &record, Durability::Durable)?;
    // The record speaks for the attachment now; a tombstone of an earlier DEL of the same key
    // would make a DEL after the record's loss believe nothing is attached.
    cache.clear_tombstone(&key);

    for k in 0..record.attachments.len() {
        let att = &record.attachments[k].attachment;
        match runner.add(att) {
            Ok(added) => {
                record.attachments[k].result = Some(added.result);
                record.attachments[k].host_link = added.host_link;
            }
            Err(err) => {
                let err = err.context(format!("adding network {:?} as {}", att.name, att.ifname));
                rollback(&runner, &cache, lock, &key, &mut record, Some(k))?;
                return Err(err);
            }
        }
    }
    let request = record.attachments.iter().find_map(|a| {
        let gateways = a.attachment.default_route.clone()?;
        Some((a.attachment.ifname.clone(), gateways))
    });
    if let Some((ifname, gateways)) = request {
        let settled = default_route::settle(&netns, &ifname, &gateways)
            .and_then(|routes| default_route::rewrite_results(&mut record, &ifname, &routes));
        if let Err(err) = settled {
            rollback(&runner, &cache, lock, &key, &mut record, None)?;
            return Err(err);
        }
    }
    // The results matter to DEL (prevResult, a moved host link's name) but not to its safety:
    // after a power loss the durable plan alone still lets DEL release everything.
    let saved = cache.save(&lock, &record, Durability::Atomic);
    let reported = saved.and_then(|()| {
        kube.as_ref().map_or(Ok(()), |kube| {
            report::report_status(kube, &record).inspect(|()| report::send_events(kube, &record))
        })
    });
    if let Err(err) = reported {
        rollback(&runner, &cache, lock, &key, &mut record, None)?;
        return Err(err);
    }
    cache.unlock(lock);
    let first = record
        .attachments
        .first()
        .and_then(|a| a.result.as_ref())
        .context("no attachment")?;
    let version = record.attachments[0].attachment.network.cni_version;
    convert(first, version, inv.conf.cni_version).context("converting the cluster network's result")
}

/// That every plugin binary of the plan can be found, as ADD checks before any delegate runs
/// (`explain` reports the same error).
pub(crate) fn check_binaries(inv: &Invocation, attachments: &[Attachment]) -> Result<()> {
    let search_path = inv.runner().search_path;
    for att in attachments {
        check_available(&att.network, &att.name, &search_path)?;
    }
    Ok(())
}

/// Everything ADD checks before its first delegate runs: the pod and its networks (from the
/// API), the plan, the plugin binaries, and that no planned interface exists in the pod. A
/// record left by an ADD that no DEL followed describes attachments that are gone (their
/// interfaces are not in the pod): it is torn down first, so that its IPAM is not leaked.
fn prepare<'a>(
    inv: &Invocation,
    reach: &'a Reach<'_>,
    cache: &Cache,
    lock: &Lock,
) -> Result<(Option<Kube<'a>>, Vec<Attachment>, NetNs)> {
    // The pod's interfaces are listed over netlink while the API is asked about the pod; a bad
    // CNI_NETNS is reported after the config's own errors.
    let (kube, pod_links) = std::thread::scope(|s| {
        let links = s.spawn(|| -> Result<(NetNs, Vec<String>)> {
            let netns = NetNs::open(inv.env.netns.as_deref().unwrap_or_default())?;
            let names = netns.link_names()?;
            Ok((netns, names))
        });
        (inv.kube(reach, true), links.join())
    });
    let kube = kube?;
    let attachments = inv.plan(kube.as_ref())?;
    check_binaries(inv, &attachments)?;
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
    if let Ok(Some(stale)) = cache.load(lock) {
        log::warn!(
            "ADD for {} ({}) finds a record that no DEL removed; deleting what it lists first",
            inv.env.container_id,
            inv.env.ifname
        );
        let runner = inv.runner_in(&stale.container_id, stale.netns.clone());
        if let Err(e) = del_attachments(&runner, &stale.attachments) {
            log::warn!("DEL of the stale record: {e:#}");
        }
    }
    Ok((kube, attachments, netns))
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
    key: &Key,
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
        Ok(()) => {
            cache.leave_tombstone(key);
            cache.remove(lock)
        }
        Err(e) => {
            log::error!("rollback after failed ADD left errors (record kept for DEL): {e:#}");
            cache.save(&lock, record, Durability::Durable)
        }
    }
}

/// An ADD that failed before its record was written: nothing is attached, which a tombstone
/// tells the runtime's DEL that follows. A record already there (an earlier ADD's, a stale one)
/// still speaks for the attachment.
fn attached_nothing(cache: &Cache, lock: Lock, key: &Key) {
    if matches!(cache.load(&lock), Ok(None)) {
        cache.leave_tombstone(key);
    }
    cache.unlock(lock);
}

/// Waits (bounded) for `readinessindicatorfile`, the cluster network's signal that it is ready.
pub(super) fn wait_for_readiness(conf: &NetConf) -> Result<()> {
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
