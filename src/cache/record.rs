//! The record as it is written to disk: types of its own, converted to and from the in-memory
//! [`Record`], so that a change to the plan's types can never change what an upgraded multihome
//! reads back from the records of the pods already running (DEL must work after an upgrade in
//! place). Every layout ever written is a golden file in `tests/golden`, read back here and
//! DELeted by the integration tests.
//!
//! Layouts so far, both of kind [`KIND`]:
//! - per container (the first, until 44232ca): one `<containerID>.json` per container, without
//!   `network`, `added` or `disableGC`;
//! - per attachment (since): `<network>+<containerID>+<ifname>.json`, with `network` and
//!   `added`.
//!
//! A new layout gets a new kind and its own types beside these, decoded by [`decode`] from
//! whichever kind a file has.

use std::borrow::Cow;
use std::net::IpAddr;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{CachedAttachment, Record};
use crate::cni::env::Arg;
use crate::cni::version::Version;
use crate::config::NetworkConfig;
use crate::plan::Attachment;

/// The kind of the records written today.
pub const KIND: &str = "multihome/v1";

// One set of types for both directions: borrowed from the in-memory record when writing (ADD
// writes twice; copying every config and result first would cost more than the serialising),
// owned when reading.

/// A record of kind `multihome/v1`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordV1<'a> {
    kind: Cow<'a, str>,
    /// Empty in records per container.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    network: Cow<'a, str>,
    container_id: Cow<'a, str>,
    netns: Option<Cow<'a, str>>,
    ifname: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    added: Option<Cow<'a, str>>,
    attachments: Vec<AttachmentV1<'a>>,
}

/// One attachment of a `multihome/v1` record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachmentV1<'a> {
    name: Cow<'a, str>,
    network: NetworkV1<'a>,
    ifname: Cow<'a, str>,
    cni_args: Cow<'a, [Arg]>,
    runtime_config: Cow<'a, Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_info: Option<Cow<'a, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_route: Option<Cow<'a, [IpAddr]>>,
    result: Option<Cow<'a, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_link: Option<Cow<'a, str>>,
}

/// A delegate network of a `multihome/v1` record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkV1<'a> {
    name: Cow<'a, str>,
    cni_version: Version,
    #[serde(default)]
    disable_check: bool,
    /// Absent from records per container.
    #[serde(default, rename = "disableGC")]
    disable_gc: bool,
    plugins: Cow<'a, [Value]>,
}

/// The bytes of `record` in today's layout.
pub fn encode(record: &Record) -> Result<Vec<u8>> {
    let v1 = RecordV1 {
        kind: KIND.into(),
        network: record.network.as_str().into(),
        container_id: record.container_id.as_str().into(),
        netns: record.netns.as_deref().map(Cow::from),
        ifname: record.ifname.as_str().into(),
        added: record.added.as_deref().map(Cow::from),
        attachments: record.attachments.iter().map(AttachmentV1::from).collect(),
    };
    Ok(serde_json::to_vec(&v1)?)
}

/// A record from the bytes of any layout ever written.
pub fn decode(bytes: &[u8]) -> Result<Record> {
    let v1: RecordV1<'_> = match serde_json::from_slice(bytes) {
        Ok(v1) => v1,
        Err(e) => {
            // A record of a kind this version does not know is reported as such, rather than
            // as whatever field it lacks; the kind is only looked at again on this path.
            #[derive(Deserialize)]
            struct Kind {
                kind: String,
            }
            return Err(match serde_json::from_slice::<Kind>(bytes) {
                Ok(Kind { kind }) if kind != KIND => anyhow::anyhow!("unknown kind {kind:?}"),
                _ => e.into(),
            });
        }
    };
    if v1.kind != KIND {
        bail!("unknown kind {:?}", v1.kind);
    }
    Ok(Record {
        network: v1.network.into_owned(),
        container_id: v1.container_id.into_owned(),
        netns: v1.netns.map(Cow::into_owned),
        ifname: v1.ifname.into_owned(),
        added: v1.added.map(Cow::into_owned),
        attachments: v1
            .attachments
            .into_iter()
            .map(CachedAttachment::from)
            .collect(),
    })
}

impl<'a> From<&'a CachedAttachment> for AttachmentV1<'a> {
    fn from(a: &'a CachedAttachment) -> Self {
        let att = &a.attachment;
        AttachmentV1 {
            name: att.name.as_str().into(),
            network: NetworkV1 {
                name: att.network.name.as_str().into(),
                cni_version: att.network.cni_version,
                disable_check: att.network.disable_check,
                disable_gc: att.network.disable_gc,
                plugins: att.network.plugins.as_slice().into(),
            },
            ifname: att.ifname.as_str().into(),
            cni_args: att.cni_args.as_slice().into(),
            runtime_config: Cow::Borrowed(&att.runtime_config),
            device_info: att.device_info.as_ref().map(Cow::Borrowed),
            default_route: att.default_route.as_deref().map(Cow::from),
            result: a.result.as_ref().map(Cow::Borrowed),
            host_link: a.host_link.as_deref().map(Cow::from),
        }
    }
}

impl From<AttachmentV1<'_>> for CachedAttachment {
    fn from(a: AttachmentV1<'_>) -> Self {
        CachedAttachment {
            attachment: Attachment {
                name: a.name.into_owned(),
                network: NetworkConfig {
                    name: a.network.name.into_owned(),
                    cni_version: a.network.cni_version,
                    disable_check: a.network.disable_check,
                    disable_gc: a.network.disable_gc,
                    plugins: a.network.plugins.into_owned(),
                },
                ifname: a.ifname.into_owned(),
                cni_args: a.cni_args.into_owned(),
                runtime_config: a.runtime_config.into_owned(),
                device_info: a.device_info.map(Cow::into_owned),
                default_route: a.default_route.map(Cow::into_owned),
                // Known at planning only; nothing after ADD needs them.
                source: String::new(),
                policy_rule: None,
            },
            result: a.result.map(Cow::into_owned),
            host_link: a.host_link.map(Cow::into_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Every layout ever written, as that version wrote it (see `tests/golden/README.md`).
    const GOLDEN: [(&str, &str); 2] = [
        (
            "per container",
            include_str!("../../tests/golden/per-container/@CONTAINER@.json"),
        ),
        (
            "per attachment",
            include_str!("../../tests/golden/per-attachment/multihome+@CONTAINER@+eth0.json"),
        ),
    ];

    #[test]
    fn every_layout_ever_written_reads_back_whole() {
        for (version, text) in GOLDEN {
            let r = decode(text.as_bytes()).unwrap_or_else(|e| panic!("{version}: {e:#}"));
            assert_eq!(
                (
                    r.container_id.as_str(),
                    r.netns.as_deref(),
                    r.ifname.as_str()
                ),
                ("@CONTAINER@", Some("@NETNS@"), "eth0"),
                "{version}"
            );
            let names: Vec<(&str, &str)> = r
                .attachments
                .iter()
                .map(|a| (a.attachment.name.as_str(), a.attachment.ifname.as_str()))
                .collect();
            assert_eq!(names, [("cluster", "eth0"), ("p2p", "net1")], "{version}");
            let cluster = &r.attachments[0].attachment.network;
            assert_eq!(cluster.plugins.len(), 2, "{version}: the whole chain");
            assert_eq!(cluster.cni_version, Version::new(1, 0, 0));
            assert!(!cluster.disable_gc, "{version}");
            assert!(
                r.attachments.iter().all(|a| a.result.is_some()),
                "{version}: results"
            );
        }
    }

    #[test]
    fn todays_layout_is_written_byte_for_byte_as_it_was() {
        let (_, text) = GOLDEN[GOLDEN.len() - 1];
        let record = decode(text.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(encode(&record).unwrap()).unwrap(),
            text.trim_end()
        );
    }

    /// The numbers: found by the delegate_config fuzz target, without serde_json's exact float
    /// parsing a long decimal read back from the cache differed from the config in its last bit.
    #[test]
    fn an_unknown_kind_is_named_and_numbers_survive_exactly() {
        let e = decode(br#"{"kind": "somebody/v9", "attachments": []}"#).unwrap_err();
        assert!(format!("{e:#}").contains("somebody/v9"), "{e:#}");
        let (_, text) = GOLDEN[GOLDEN.len() - 1];
        let mut record = decode(text.as_bytes()).unwrap();
        let odd = json!(16666666666666666666666666000.0066666);
        record.attachments[0].attachment.network.plugins[0]["x"] = odd.clone();
        let back = decode(&encode(&record).unwrap()).unwrap();
        assert_eq!(back.attachments[0].attachment.network.plugins[0]["x"], odd);
        assert_eq!(back, record);
    }
}
