//! DEL: detach everything ADD recorded, in reverse, best effort, reporting every failure, without
//! the API. Idempotent: a completed DEL leaves a tombstone, so a repeated DEL (containerd's second
//! one at sandbox removal, a retry) makes no API request and runs no delegate. Without record or
//! tombstone nothing says what is attached (the record was removed by hand, lost with a tmpfs,
//! or the pod started before multihome was installed): DEL re-plans and deletes every planned
//! network, so that no IP and no interface leaks.

use anyhow::Result;

use super::{del_attachments, find_record};
use crate::cache::{Cache, CachedAttachment, Key, Lock, Record};
use crate::invocation::Invocation;
use crate::k8s::Reach;
use crate::plugin::Runner;

/// DEL of the invocation's attachment.
pub fn del(inv: &Invocation, reach: &Reach<'_>) -> Result<()> {
    let cache = inv.cache();
    let key = inv.key();
    let (lock, found) = find_record(&cache, &key)?;
    let why = match found {
        Ok(Some(record)) => {
            return teardown(
                &inv.runner(),
                &cache,
                lock,
                &key,
                &record,
                inv.conf.retry_delete_on_error,
            );
        }
        Ok(None) if cache.has_tombstone(&key) => return cache.remove(lock),
        Ok(None) => "no record and no tombstone".to_string(),
        Err(e) => format!("unreadable record: {e:#}"),
    };
    log::warn!(
        "DEL of {} ({}): {why}; deleting what the config plans",
        inv.env.container_id,
        inv.env.ifname
    );
    del_replanned(inv, reach);
    cache.leave_tombstone(&key);
    cache.remove(lock)
}

/// DEL of a recorded attachment, its record removed unless a delegate failed and
/// `keep_on_error` (`retryDeleteOnError`) asks for another try. Only a DEL that released
/// everything leaves a tombstone: after a failure, the runtime's retry re-plans.
pub(crate) fn teardown(
    runner: &Runner,
    cache: &Cache,
    lock: Lock,
    key: &Key,
    record: &Record,
    keep_on_error: bool,
) -> Result<()> {
    let outcome = del_attachments(runner, &record.attachments);
    if outcome.is_ok() {
        cache.leave_tombstone(key);
    }
    if outcome.is_ok() || !keep_on_error {
        cache.remove(lock)?;
    }
    outcome
}

/// Nothing readable says what is attached (no record, or a damaged one): DEL every planned
/// network so IPAM is released (from the API when it answers, else from the config). Nothing
/// proves these were attached, so failures are logged and never block the pod's teardown.
fn del_replanned(inv: &Invocation, reach: &Reach<'_>) {
    let kube = inv.kube(reach, false).unwrap_or_else(|e| {
        log::warn!("the API is unavailable, planning from the config alone: {e:#}");
        None
    });
    let planned = match (inv.plan(kube.as_ref()), &kube) {
        (Err(e), Some(_)) => {
            log::warn!("{e:#}; planning from the config alone");
            inv.plan(None)
        }
        (planned, _) => planned,
    };
    match planned {
        Ok(atts) => {
            let atts: Vec<_> = atts.into_iter().map(CachedAttachment::planned).collect();
            if let Err(e) = del_attachments(&inv.runner(), &atts) {
                log::warn!(
                    "DEL of the planned networks of {}: {e:#}",
                    inv.env.container_id
                );
            }
        }
        Err(e) => log::warn!(
            "the config of {} cannot be planned: {e:#}",
            inv.env.container_id
        ),
    }
}
