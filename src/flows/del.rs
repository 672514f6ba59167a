//! DEL: detach everything ADD recorded, in reverse, best effort, reporting every failure, without
//! the API. Idempotent: ADD records its plan durably before the first delegate runs, so no record
//! means nothing is attached (a repeated DEL, such as containerd's second one at sandbox removal,
//! makes no API request and runs no delegate).

use anyhow::Result;

use super::{Invocation, del_attachments, find_record};
use crate::cache::{Cache, CachedAttachment, Lock, Record};
use crate::delegate::Runner;

/// DEL of the invocation's attachment.
pub fn del(inv: &Invocation) -> Result<()> {
    let cache = inv.cache();
    let (lock, found) = find_record(&cache, &inv.key())?;
    match found {
        Ok(Some(record)) => teardown(
            &inv.runner(),
            &cache,
            lock,
            &record,
            inv.conf.retry_delete_on_error,
        ),
        Ok(None) => cache.remove(lock),
        Err(e) => {
            log::warn!(
                "unreadable record for {} ({}): {e:#}; deleting what the config plans",
                inv.env.container_id,
                inv.env.ifname
            );
            del_replanned(inv);
            cache.remove(lock)
        }
    }
}

/// DEL of a recorded attachment, its record removed unless a delegate failed and
/// `keep_on_error` (`retryDeleteOnError`) asks for another try.
pub(crate) fn teardown(
    runner: &Runner,
    cache: &Cache,
    lock: Lock,
    record: &Record,
    keep_on_error: bool,
) -> Result<()> {
    let outcome = del_attachments(runner, &record.attachments);
    if outcome.is_ok() || !keep_on_error {
        cache.remove(lock)?;
    }
    outcome
}

/// The record exists but says nothing readable (a damaged disk, a hand edit): DEL every planned
/// network so IPAM is released (from the API when it answers, else from the config). Nothing
/// proves these were attached, so failures are logged and never block the pod's teardown.
fn del_replanned(inv: &Invocation) {
    let kube = inv.kube(false).unwrap_or_else(|e| {
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
