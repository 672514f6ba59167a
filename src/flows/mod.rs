//! The CNI operations as a library the one-shot binary (and later a node daemon) calls: one
//! module per operation, each given the [`Invocation`](crate::invocation::Invocation) and how to
//! reach the cluster ([`Reach`](crate::k8s::Reach)) by its entry point.
//!
//! ADD validates everything before the first delegate runs, records the plan durably, adds in
//! order, reports to Kubernetes, and rolls back on any failure. DEL works from the record, in
//! reverse, best effort, idempotently, without the API. CHECK re-checks every delegate against
//! its recorded result. GC tears down what the runtime no longer knows and forwards GC to the
//! delegates; STATUS says whether an ADD can be served. Hot-plug brings a running pod's
//! attachments in line with its changed networks annotation (the node daemon calls it).

mod add;
mod check;
mod del;
mod gc;
mod hotplug;
mod report;
mod status;

pub use add::add;
pub(crate) use add::check_binaries;
pub use check::check;
pub use del::del;
pub use gc::gc;
pub use hotplug::{Plugged, hotplug};
pub use status::status;

use anyhow::Result;

use crate::cache::{Cache, CachedAttachment, Key, Lock, Record};
use crate::error::Failures;
use crate::plugin::Runner;

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

/// DEL of the given attachments in reverse, continuing past failures and reporting them all.
pub(crate) fn del_attachments(runner: &Runner, attachments: &[CachedAttachment]) -> Result<()> {
    let mut failures = Failures::headed("DEL", "attachment(s)");
    for a in attachments.iter().rev() {
        if let Err(e) = runner.del(&a.attachment, a.result.as_ref(), a.host_link.as_deref()) {
            let about = format!("network {:?} ({})", a.attachment.name, a.attachment.ifname);
            failures.push(&about, &e);
        }
    }
    failures.into_result()
}
