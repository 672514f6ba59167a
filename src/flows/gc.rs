//! GC (CNI 1.1): tear down every recorded attachment of this network that the runtime no longer
//! lists in `cni.dev/valid-attachments`, exactly as DEL would; reclaim what crashed processes
//! left (temporary and lock files) and expired tombstones; then forward GC to each delegate
//! network with its own valid attachments, so delegate IPAM can reclaim leaks multihome never
//! knew about. No API needed.

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use anyhow::Result;
use serde_json::Value;

use super::del::teardown;
use crate::cache::{Key, Lock, Record};
use crate::config::{NetConf, NetworkConfig};
use crate::error::{Code, Failures, coded};
use crate::invocation::Invocation;
use crate::invocation::resolve::static_networks;
use crate::k8s::Reach;

/// A runtime attachment: container ID and interface name.
type Attachment = (String, String);

/// GC of this network's records and its delegates.
pub fn gc(inv: &Invocation, reach: &Reach<'_>) -> Result<()> {
    let valid = valid_attachments(&inv.conf)?;
    let started = SystemTime::now();
    let cache = inv.cache();
    let listing = cache.list(&inv.conf.name)?;
    let mut failures = Failures::headed("GC", "item(s)");
    let mut kept: Vec<Record> = Vec::new();
    let mut removed: Vec<Record> = Vec::new();
    let mut visit = |lock: Lock, record: Result<Option<Record>>, live: &dyn Fn(&Record) -> bool| {
        match record {
            // Listed, or added after this GC began: not ours to touch.
            Ok(Some(r)) if live(&r) || added_after(&r, started) => {
                cache.unlock(lock);
                kept.push(r);
            }
            Ok(Some(r)) => {
                let runner = inv.runner_in(&r.container_id, r.netns.clone());
                let key = Key {
                    network: inv.conf.name.clone(),
                    container_id: r.container_id.clone(),
                    ifname: r.ifname.clone(),
                };
                if let Err(e) = teardown(&runner, &cache, lock, &key, &r, false) {
                    failures.push(&format!("container {} ({})", r.container_id, r.ifname), &e);
                }
                removed.push(r);
            }
            // A lock or temporary file without a record: a crashed process's leftovers.
            Ok(None) => note(&mut failures, cache.remove(lock)),
            Err(e) => {
                log::warn!("GC removes an unreadable record: {e:#}");
                note(&mut failures, cache.remove(lock));
            }
        }
    };
    for key in &listing.keys {
        // Held by an ADD or DEL under way (which the runtime should not run beside GC): skip.
        let Some(lock) = cache.try_lock(key)? else {
            continue;
        };
        let record = cache.load(&lock);
        let listed = valid.contains(&(key.container_id.clone(), key.ifname.clone()));
        visit(lock, record, &|_| listed);
    }
    // Records of the layout before name no network: one is taken for this network's only when
    // its runtime attachment is not listed.
    for container_id in &listing.legacy {
        let Some(lock) = cache.try_lock_legacy(container_id)? else {
            continue;
        };
        let record = cache.load(&lock);
        visit(lock, record, &|r| {
            valid.contains(&(r.container_id.clone(), r.ifname.clone()))
        });
    }
    cache.expire_tombstones();
    forward(inv, reach, &kept, &removed, &mut failures);
    failures.into_result()
}

fn note(failures: &mut Failures, outcome: Result<()>) {
    if let Err(e) = outcome {
        failures.push("", &e);
    }
}

fn added_after(record: &Record, started: SystemTime) -> bool {
    record
        .added
        .as_deref()
        .and_then(|a| humantime::parse_rfc3339(a).ok())
        .is_some_and(|added| added > started)
}

/// GC of every delegate network multihome knows (from records, kept and removed, and from the
/// config), once per network, with the attachments multihome gave it that are still valid.
/// Networks below 1.1.0 or with `disableGC` get none.
fn forward(
    inv: &Invocation,
    reach: &Reach<'_>,
    kept: &[Record],
    removed: &[Record],
    failures: &mut Failures,
) {
    let mut networks: BTreeMap<String, (NetworkConfig, Vec<Attachment>)> = BTreeMap::new();
    for (record, live) in kept
        .iter()
        .map(|r| (r, true))
        .chain(removed.iter().map(|r| (r, false)))
    {
        for a in &record.attachments {
            let entry = networks
                .entry(a.attachment.network.name.clone())
                .or_insert_with(|| (a.attachment.network.clone(), Vec::new()));
            if live {
                entry
                    .1
                    .push((record.container_id.clone(), a.attachment.ifname.clone()));
            }
        }
    }
    for (_, net) in static_networks(&inv.conf, reach) {
        if let Ok(Some(net)) = net {
            networks
                .entry(net.name.clone())
                .or_insert_with(|| (net, Vec::new()));
        }
    }
    let runner = inv.runner_in("", None);
    for (net, valid) in networks.values() {
        if !net.cni_version.supports_gc_status() || net.disable_gc {
            continue;
        }
        if let Err(e) = runner.gc(net, valid) {
            failures.push("", &e);
        }
    }
}

/// The runtime's valid attachments: the union of `cni.dev/valid-attachments` and the older
/// `cni.dev/attachments` (libcni sends both; `null`, Go's empty list, counts as empty). Without
/// either, or with a malformed one, GC deletes nothing.
fn valid_attachments(conf: &NetConf) -> Result<HashSet<Attachment>> {
    let mut valid = HashSet::new();
    let mut given = false;
    for (key, value) in ["cni.dev/valid-attachments", "cni.dev/attachments"]
        .into_iter()
        .zip(&conf.gc_attachments)
    {
        let items = match value {
            None => continue,
            Some(Value::Null) => &Vec::new(),
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(coded(
                    Code::InvalidConfig,
                    format!(
                        "GC: {key:?} must be a list of {{\"containerID\", \"ifname\"}}; nothing was deleted"
                    ),
                ));
            }
        };
        given = true;
        for (i, item) in items.iter().enumerate() {
            let field = |name: &str| {
                item.get(name)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .ok_or_else(|| {
                        coded(
                            Code::InvalidConfig,
                            format!("GC: {key:?}[{i}] ({item}): {name:?} must be a non-empty string; nothing was deleted"),
                        )
                    })
            };
            valid.insert((field("containerID")?, field("ifname")?));
        }
    }
    if !given {
        return Err(coded(
            Code::InvalidConfig,
            "GC needs \"cni.dev/valid-attachments\", the runtime's attachments; nothing was deleted",
        ));
    }
    Ok(valid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CniError;

    fn conf(extra: &str) -> NetConf {
        NetConf::parse(
            format!(
                r#"{{"cniVersion":"1.1.0","name":"mh","delegates":[{{"type":"bridge"}}]{extra}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn valid_attachments_take_both_keys_and_null_as_empty() {
        let both = conf(
            r#","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],"cni.dev/attachments":[{"containerID":"b","ifname":"eth0"}]"#,
        );
        let v = valid_attachments(&both).unwrap();
        assert!(
            v.contains(&("a".into(), "eth0".into())) && v.contains(&("b".into(), "eth0".into()))
        );
        assert!(
            valid_attachments(&conf(r#","cni.dev/valid-attachments":null"#))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_missing_or_malformed_list_is_an_error_naming_it() {
        for (extra, fragment) in [
            ("", "needs \"cni.dev/valid-attachments\""),
            (r#","cni.dev/valid-attachments":{"a":1}"#, "must be a list"),
            (
                r#","cni.dev/valid-attachments":[{"containerID":"a"}]"#,
                "\"ifname\"",
            ),
            (
                r#","cni.dev/attachments":[{"containerID":"","ifname":"x"}]"#,
                "cni.dev/attachments\"[0]",
            ),
        ] {
            let e = CniError::from_anyhow(&valid_attachments(&conf(extra)).unwrap_err());
            assert_eq!(e.code, 7, "{extra}");
            assert!(
                e.msg.contains(fragment) && e.msg.contains("nothing was deleted"),
                "{extra}: {}",
                e.msg
            );
        }
    }
}
