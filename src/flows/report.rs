//! Telling Kubernetes what was attached: the pod's `k8s.v1.cni.cncf.io/network-status`
//! annotation and an event per attachment added (or, by hot-plug, removed).

use std::time::SystemTime;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::annotations::{self, StatusInput};
use crate::cache::{CachedAttachment, Record};
use crate::cni::result::convert;
use crate::cni::version::Version;
use crate::invocation::resolve::Kube;
use crate::k8s::Patched;

/// The status entries of the recorded attachments, results read in the 1.0 shape. The first
/// attachment is the cluster-wide default network's and the only one marked `default` (network
/// spec 5.3.5), whichever carries the default route: `gateway` says where that goes, and
/// consumers (KubeVirt) take the `default` entry for the pod's primary network.
fn status_of(record: &Record) -> Result<Value> {
    let v1 = Version::new(1, 0, 0);
    let results: Vec<Value> = record
        .attachments
        .iter()
        .map(|a| {
            let r = a.result.as_ref().context("attachment without result")?;
            convert(r, a.attachment.network.cni_version, v1)
        })
        .collect::<Result<_>>()?;
    let inputs: Vec<StatusInput<'_>> = record
        .attachments
        .iter()
        .zip(&results)
        .enumerate()
        .map(|(i, (a, result))| StatusInput {
            name: &a.attachment.name,
            ifname: &a.attachment.ifname,
            default: i == 0,
            result,
            device_info: a.attachment.device_info.as_ref(),
        })
        .collect();
    Ok(annotations::network_status(&inputs))
}

/// Writes `network-status` with a merge PATCH of the pod's status subresource: only that
/// annotation changes, so nothing else written by others can be lost. A pod deleted meanwhile
/// is not an error (its DEL is coming).
pub(crate) fn report_status(kube: &Kube<'_>, record: &Record) -> Result<()> {
    let (Some(pod), Some(r)) = (&kube.pod, &kube.pod_ref) else {
        return Ok(());
    };
    let status = serde_json::to_string(&status_of(record)?).context("encoding network-status")?;
    let patch = json!({"metadata": {"annotations": {annotations::NETWORK_STATUS: status}}});
    match kube.cluster.patch_pod_status(&r.namespace, &r.name, &patch) {
        Ok(Patched::Written) => Ok(()),
        Ok(Patched::PodGone) => {
            log::warn!(
                "pod {}/{} ({}) vanished before network-status was written",
                r.namespace,
                r.name,
                pod.metadata.uid
            );
            Ok(())
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "writing {} of pod {}/{}",
                annotations::NETWORK_STATUS,
                r.namespace,
                r.name
            )
        }),
    }
}

/// An `AddedInterface` event per attachment, at once where the cluster can take them so. Best
/// effort: an event failing never fails ADD.
pub(crate) fn send_events(kube: &Kube<'_>, record: &Record) {
    let added = record.attachments.iter().map(added).collect();
    announce(kube, added);
}

/// What an `AddedInterface` event says of an attachment.
pub(crate) fn added(a: &CachedAttachment) -> Note {
    let ips: Vec<&str> = a
        .result
        .as_ref()
        .and_then(|r| r.get("ips"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .collect();
    Note {
        reason: "AddedInterface",
        warning: false,
        message: format!(
            "Add {} [{}] from {}",
            a.attachment.ifname,
            ips.join(", "),
            a.attachment.name
        ),
    }
}

/// One event to tell of the pod.
pub(crate) struct Note {
    /// `AddedInterface`, ...
    pub(crate) reason: &'static str,
    /// A `Warning` (else `Normal`).
    pub(crate) warning: bool,
    /// What happened.
    pub(crate) message: String,
}

/// Posts `notes` as events of the pod, at once where the cluster can take them so. Best effort:
/// a failed event is logged.
pub(crate) fn announce(kube: &Kube<'_>, notes: Vec<Note>) {
    let (Some(pod), Some(r)) = (&kube.pod, &kube.pod_ref) else {
        return;
    };
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let events: Vec<Value> = notes
        .iter()
        .enumerate()
        .map(|(i, note)| {
            json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": format!("{}.{:x}", r.name, nanos + i as u128), "namespace": r.namespace},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": r.namespace, "name": r.name,
                                   "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version},
                "reason": note.reason,
                "message": note.message,
                "type": if note.warning { "Warning" } else { "Normal" },
                "source": {"component": "multihome"},
                "reportingComponent": "multihome",
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            })
        })
        .collect();
    for (sent, note) in kube
        .cluster
        .create_events(&r.namespace, &events)
        .into_iter()
        .zip(&notes)
    {
        if let Err(e) = sent {
            log::warn!(
                "event {} for {}/{}: {e:#}",
                note.reason,
                r.namespace,
                r.name
            );
        }
    }
}
