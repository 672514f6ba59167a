//! CHECK: every delegate, in order, against its recorded result.

use anyhow::{Context, Result};

use super::find_record;
use crate::error::{Code, coded};
use crate::invocation::Invocation;

/// CHECK of the invocation's attachment.
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
    let (lock, found) = find_record(&cache, &inv.key())?;
    let checked = found.and_then(|record| {
        let record = record.ok_or_else(|| {
            coded(
                Code::UnknownContainer,
                format!(
                    "no attachments recorded for container {} ({})",
                    inv.env.container_id, inv.env.ifname
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
    });
    cache.unlock(lock);
    checked
}
