//! Hot-plug: a running pod's attachments brought in line with its networks annotation as it is
//! now, from multihome's own record (the pod's netns, container and arguments are in it: no CRI
//! socket). The plan is ADD's, so interface names follow ADD's rules and the pod ends as an ADD
//! of the new annotation would have left it. It holds the attachment's lock throughout, as ADD
//! and DEL do, so it never races the runtime's calls; a DEL after it removes what it added.
//!
//! Only the networks of the annotation change: the networks every pod gets (the cluster network,
//! `defaultNetworks`) are left alone, and when they no longer match the record (the config
//! changed since the pod started) nothing is done.

use anyhow::{Context, Result};

use super::report::{self, Note};
use crate::annotations;
use crate::cache::{Cache, CachedAttachment, Durability, Key, Record};
use crate::cni::env::{CniEnv, Command};
use crate::config::NetConf;
use crate::error::{Code, Failures, coded};
use crate::invocation::Invocation;
use crate::invocation::resolve::Kube;
use crate::k8s::{Pod, Reach};
use crate::plan::Attachment;

/// The `CNI_ARGS` a pod's networks are planned from (the runtime's other arguments belong to
/// the cluster network's ADD only).
const POD_ARGS: [&str; 5] = [
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_UID",
    "K8S_POD_INFRA_CONTAINER_ID",
];

/// What a hot-plug changed: `ifname (network)` of each.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plugged {
    /// Attachments added.
    pub added: Vec<String>,
    /// Attachments removed.
    pub removed: Vec<String>,
}

/// Brings the attachments recorded under `key` in line with the pod's networks annotation as
/// `reach` has it now. `Ok` with nothing changed when there is no record (the pod's DEL came
/// first) or nothing to change. Each failure is an event on the pod too; the others go ahead.
pub fn hotplug(conf: &NetConf, key: &Key, reach: &Reach<'_>) -> Result<Plugged> {
    let cache = Cache::new(&conf.cni_dir);
    let lock = cache.lock(key)?;
    let Some(mut record) = cache.load(&lock)? else {
        cache.unlock(lock);
        return Ok(Plugged::default());
    };
    let inv = Invocation::new(recorded_env(&record), conf.clone());
    let kube = inv
        .kube(reach, true)?
        .context("hot-plug needs the cluster")?;
    let (Some(pod), Some(pod_ref)) = (&kube.pod, &kube.pod_ref) else {
        cache.unlock(lock);
        return Ok(Plugged::default());
    };
    let planned = plan_tail(&inv, &kube, &record, pod, &pod_ref.namespace);
    let (desired, every_pod) = match planned {
        Ok(p) => p,
        Err(e) => {
            cache.unlock(lock);
            report::announce(
                &kube,
                vec![Note {
                    reason: "NetworkChangeFailed",
                    warning: true,
                    message: format!("{e:#}"),
                }],
            );
            return Err(e);
        }
    };
    let (kept, dropped): (Vec<CachedAttachment>, Vec<CachedAttachment>) = record
        .attachments
        .split_off(every_pod)
        .into_iter()
        .partition(|r| desired[every_pod..].iter().any(|d| same(&r.attachment, d)));
    let new: Vec<Attachment> = desired[every_pod..]
        .iter()
        .filter(|d| !kept.iter().any(|k| same(&k.attachment, d)))
        .cloned()
        .collect();
    if dropped.is_empty() && new.is_empty() {
        record.attachments.extend(kept);
        cache.unlock(lock);
        return Ok(Plugged::default());
    }

    let runner = inv.runner();
    let mut failures = Failures::headed("hot-plug", "attachment(s)");
    let mut notes = Vec::new();
    let mut plugged = Plugged::default();
    record.attachments.extend(kept);
    // Removed first, in reverse, so that a name they free can be taken by what is added.
    for gone in dropped.iter().rev() {
        let about = describe(&gone.attachment);
        match runner.del(
            &gone.attachment,
            gone.result.as_ref(),
            gone.host_link.as_deref(),
        ) {
            Ok(()) => {
                notes.push(Note {
                    reason: "RemovedInterface",
                    warning: false,
                    message: format!("Remove {about}"),
                });
                plugged.removed.push(about);
            }
            Err(e) => {
                // Kept in the record: the pod's DEL tries again.
                record.attachments.push(gone.clone());
                failures.push(&about, &e);
            }
        }
    }
    cache.save(&lock, &record, Durability::Durable)?;
    for att in new {
        let about = describe(&att);
        if let Err(e) = super::check_binaries(&inv, std::slice::from_ref(&att)) {
            failures.push(&about, &e);
            continue;
        }
        // Recorded before its delegate runs, as ADD records its plan: a DEL after a crash here
        // still releases it.
        record.attachments.push(CachedAttachment::planned(att));
        cache.save(&lock, &record, Durability::Durable)?;
        let last = record.attachments.len() - 1;
        match runner.add(&record.attachments[last].attachment) {
            Ok(added) => {
                record.attachments[last].result = Some(added.result);
                record.attachments[last].host_link = added.host_link;
                notes.push(report::added(&record.attachments[last]));
                plugged.added.push(about);
            }
            Err(e) => {
                let failed = record
                    .attachments
                    .pop()
                    .context("the attachment just added")?;
                if let Err(undo) = runner.del(&failed.attachment, None, None) {
                    log::warn!("DEL of the failed hot-plug of {about}: {undo:#}");
                }
                failures.push(&about, &e);
            }
        }
        cache.save(&lock, &record, Durability::Atomic)?;
    }
    // In the annotation's order, as an ADD would have recorded them.
    order_as(&mut record, &desired, every_pod);
    cache.save(&lock, &record, Durability::Atomic)?;
    let reported = report::report_status(&kube, &record);
    cache.unlock(lock);
    if let Err(e) = &reported {
        failures.push("network-status", e);
    }
    notes.extend(failures.list().iter().map(|f| Note {
        reason: "NetworkChangeFailed",
        warning: true,
        message: f.msg.clone(),
    }));
    report::announce(&kube, notes);
    failures.into_result().map(|()| plugged)
}

/// The pod's attachments as ADD would plan them now, and how many of them every pod gets (the
/// rest are the annotation's); an error when the ones every pod gets are not the record's.
fn plan_tail(
    inv: &Invocation,
    kube: &Kube<'_>,
    record: &Record,
    pod: &Pod,
    namespace: &str,
) -> Result<(Vec<Attachment>, usize)> {
    let desired = inv.plan(Some(kube))?;
    let requested = pod
        .metadata
        .annotations
        .get(annotations::NETWORKS)
        .filter(|a| !a.trim().is_empty())
        .map(|a| annotations::parse_networks(a, namespace))
        .transpose()?
        .map_or(0, |elements| elements.len());
    let every_pod = desired.len() - requested;
    let unchanged = record.attachments.len() >= every_pod
        && record.attachments[..every_pod]
            .iter()
            .zip(&desired[..every_pod])
            .all(|(r, d)| same(&r.attachment, d));
    if !unchanged {
        return Err(coded(
            Code::InvalidConfig,
            "the networks every pod gets changed since the pod started (multihome's config): hot-plug leaves the pod as it is",
        ));
    }
    Ok((desired, every_pod))
}

/// The same attachment: network and interface.
fn same(a: &Attachment, b: &Attachment) -> bool {
    a.name == b.name && a.ifname == b.ifname
}

/// `ifname (network)`.
fn describe(att: &Attachment) -> String {
    format!("{} ({})", att.ifname, att.name)
}

/// The environment of the record's ADD, as far as planning the pod's networks needs it.
fn recorded_env(record: &Record) -> CniEnv {
    let args = record
        .attachments
        .first()
        .map(|a| {
            a.attachment
                .cni_args
                .iter()
                .filter(|(k, _)| POD_ARGS.contains(&k.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    CniEnv {
        command: Command::Add,
        container_id: record.container_id.clone(),
        netns: record.netns.clone(),
        ifname: record.ifname.clone(),
        args,
        path: Vec::new(),
    }
}

/// Orders the attachments after the first `every_pod` as `desired` has them; those it does not
/// have (their DEL failed) go last.
fn order_as(record: &mut Record, desired: &[Attachment], every_pod: usize) {
    let position = |a: &CachedAttachment| {
        desired
            .iter()
            .position(|d| same(&a.attachment, d))
            .unwrap_or(usize::MAX)
    };
    record.attachments[every_pod..].sort_by_key(position);
}
