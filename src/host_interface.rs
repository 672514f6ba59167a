//! The built-in `host-interface` delegate: moves an existing host interface (a NIC, an SR-IOV
//! VF, a veth end) into the pod under the attachment's name, keeping its MTU and MAC, and gives
//! it back on DEL. No extra binary is needed, and the name does not shadow the reference
//! `host-device` plugin.
//!
//! Config keys (one selects the host link): `device` (name), `hwaddr` (MAC), `kernelpath`
//! (its sysfs path), `pciBusID` or `deviceID` (a PCI address, as `resourceName` injects). With an
//! `ipam` section the IPAM plugin runs and its addresses and routes are applied over netlink.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use crate::cni::env::Command;
use crate::cni::result::convert;
use crate::cni::version::Version;
use crate::error::{Code, coded};
use crate::netlink::{self, Link};
use crate::netns::NetNs;
use crate::plan::Attachment;
use crate::plugin::Runner;

/// The `type` that selects this delegate.
pub const TYPE: &str = "host-interface";

/// The `ipam.type` of a host-interface config, if it has an IPAM section.
pub fn ipam_type(plugin: &Value) -> Result<Option<&str>> {
    match plugin.get("ipam") {
        None | Some(Value::Null) => Ok(None),
        Some(ipam) => match ipam.get("type").and_then(Value::as_str) {
            Some(t) if !t.is_empty() && !t.contains('/') => Ok(Some(t)),
            _ => Err(coded(
                Code::InvalidConfig,
                "host-interface: \"ipam\" needs a plugin name in \"type\"",
            )),
        },
    }
}

fn key<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The name of the host link the config selects, among `links` of the host namespace.
fn select(request: &Value, links: &[Link], sysfs: &Path) -> Result<String> {
    let found = |name: &str| links.iter().any(|l| l.name == name);
    if let Some(device) = key(request, "device") {
        return if found(device) {
            Ok(device.to_string())
        } else {
            Err(coded(
                Code::InvalidConfig,
                format!("host-interface: no host interface named {device:?}"),
            ))
        };
    }
    if let Some(mac) = key(request, "hwaddr") {
        return links
            .iter()
            .find(|l| {
                l.mac
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(mac))
            })
            .map(|l| l.name.clone())
            .ok_or_else(|| {
                coded(
                    Code::InvalidConfig,
                    format!("host-interface: no host interface with MAC {mac}"),
                )
            });
    }
    if let Some(path) = key(request, "kernelpath") {
        let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.into());
        return links
            .iter()
            .find(|l| {
                std::fs::canonicalize(sysfs.join("class/net").join(&l.name))
                    .is_ok_and(|p| p == want)
            })
            .map(|l| l.name.clone())
            .ok_or_else(|| {
                coded(
                    Code::InvalidConfig,
                    format!("host-interface: no host interface at kernelpath {path}"),
                )
            });
    }
    if let Some(pci) = key(request, "pciBusID").or_else(|| key(request, "deviceID")) {
        let dir = sysfs.join("bus/pci/devices").join(pci).join("net");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| {
                format!(
                    "host-interface: PCI device {pci} has no network interface ({})",
                    dir.display()
                )
            })?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| found(n))
            .collect();
        names.sort();
        return names.into_iter().next().ok_or_else(|| {
            coded(
                Code::InvalidConfig,
                format!("host-interface: PCI device {pci} has no interface in this namespace"),
            )
        });
    }
    Err(coded(
        Code::InvalidConfig,
        "host-interface: set one of \"device\", \"hwaddr\", \"kernelpath\" or \"pciBusID\"",
    ))
}

/// Moves the selected host link into the pod as the attachment's interface, runs IPAM, and
/// returns the result (in the network's version) and the link's original name. On failure the
/// link is given back and IPAM released before the error is returned.
pub fn add(runner: &Runner, att: &Attachment, request: &Value) -> Result<(Value, String)> {
    let host = NetNs::current()?;
    let pod = NetNs::open(runner.netns.as_deref().unwrap_or_default())?;
    let host_links = host.with_netlink(|h| async move { netlink::links(&h).await })?;
    let original = select(request, &host_links, Path::new("/sys"))?;
    let index = host_links
        .iter()
        .find(|l| l.name == original)
        .map(|l| l.index)
        .context("selected link vanished")?;
    let ifname = att.ifname.clone();
    let target = pod.file();
    host.with_netlink(|h| async move { netlink::move_link(&h, index, target, &ifname).await })
        .with_context(|| {
            format!(
                "moving host interface {original} into the pod as {}",
                att.ifname
            )
        })?;

    let configured = configure(runner, att, request, &pod);
    match configured {
        Ok(result) => Ok((result, original)),
        Err(err) => {
            if let Err(e) = give_back(&pod, &host, &att.ifname, &original) {
                log::error!("host-interface: giving {original} back after a failed ADD: {e:#}");
            }
            Err(err)
        }
    }
}

/// Brings the moved link up, runs IPAM and applies its addresses and routes; the result.
fn configure(runner: &Runner, att: &Attachment, request: &Value, pod: &NetNs) -> Result<Value> {
    let ifname = att.ifname.clone();
    let link = pod.with_netlink(|h| async move {
        let link = netlink::link_by_name(&h, &ifname)
            .await?
            .with_context(|| format!("{ifname} is not in the pod"))?;
        netlink::set_up(&h, link.index).await?;
        Ok(link)
    })?;
    let v1 = Version::new(1, 0, 0);
    let mut ipam_result = json!({"cniVersion": "1.0.0"});
    if let Some(kind) = ipam_type(request)? {
        let out = runner
            .exec(Command::Add, att, kind, request)
            .context("host-interface IPAM")?;
        let out = out.ok_or_else(|| {
            coded(
                Code::Decode,
                format!("IPAM plugin {kind} printed no result"),
            )
        })?;
        ipam_result = convert(&out, att.network.cni_version, v1)?;
        let applied = apply_ipam(pod, link.index, &ipam_result);
        if let Err(err) = applied {
            if let Err(e) = runner.exec(Command::Del, att, kind, request) {
                log::error!("host-interface: releasing IPAM after a failed ADD: {e:#}");
            }
            return Err(err);
        }
    }
    let mut iface =
        json!({"name": att.ifname, "sandbox": runner.netns.clone().unwrap_or_default()});
    if let Some(mac) = &link.mac {
        iface["mac"] = json!(mac);
    }
    // Interface MTUs exist in results from 1.1.0 on.
    if let Some(mtu) = link
        .mtu
        .filter(|_| att.network.cni_version >= Version::new(1, 1, 0))
    {
        iface["mtu"] = json!(mtu);
    }
    let mut result = json!({"cniVersion": "1.1.0", "interfaces": [iface]});
    let mut ips = ipam_result.get("ips").cloned().unwrap_or_else(|| json!([]));
    for ip in ips.as_array_mut().into_iter().flatten() {
        ip["interface"] = json!(0);
    }
    result["ips"] = ips;
    for key in ["routes", "dns"] {
        if let Some(v) = ipam_result.get(key) {
            result[key] = v.clone();
        }
    }
    convert(&result, Version::new(1, 1, 0), att.network.cni_version)
}

/// Adds the IPAM result's addresses and routes to the link. A route without `gw` goes through
/// the gateway of its family from `ips`, as the spec says.
fn apply_ipam(pod: &NetNs, index: u32, result: &Value) -> Result<()> {
    let mut addrs: Vec<(IpNetwork, Option<IpAddr>)> = Vec::new();
    for ip in result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let addr = ip
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let net: IpNetwork = addr
            .parse()
            .with_context(|| format!("IPAM address {addr:?}"))?;
        let gw = ip
            .get("gateway")
            .and_then(Value::as_str)
            .and_then(|g| g.parse().ok());
        addrs.push((net, gw));
    }
    let mut routes: Vec<(IpNetwork, Option<IpAddr>)> = Vec::new();
    for r in result
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let dst = r.get("dst").and_then(Value::as_str).unwrap_or_default();
        let dst: IpNetwork = dst.parse().with_context(|| format!("IPAM route {dst:?}"))?;
        let gw = r
            .get("gw")
            .and_then(Value::as_str)
            .and_then(|g| g.parse().ok())
            .or_else(|| {
                addrs
                    .iter()
                    .find(|(a, g)| a.is_ipv4() == dst.is_ipv4() && g.is_some())
                    .and_then(|(_, g)| *g)
            });
        routes.push((dst, gw));
    }
    pod.with_netlink(|h| async move {
        for (addr, _) in &addrs {
            netlink::add_address(&h, index, *addr).await?;
        }
        for (dst, gw) in &routes {
            netlink::add_route(&h, index, dst.network(), dst.prefix(), *gw).await?;
        }
        Ok(())
    })
}

/// Moves `ifname` from the pod back to the host under its original name, if it is still there.
fn give_back(pod: &NetNs, host: &NetNs, ifname: &str, original: &str) -> Result<()> {
    pod.with_netlink(|h| async move {
        match netlink::link_by_name(&h, ifname).await? {
            Some(link) => netlink::move_link(&h, link.index, host.file(), original).await,
            None => Ok(()),
        }
    })
    .with_context(|| format!("moving {ifname} back to the host as {original}"))
}

/// DEL: release IPAM (also when the pod namespace is gone), then give the link back under its
/// original name (`host_link`, from the cache; its pod name when unknown).
pub fn del(
    runner: &Runner,
    att: &Attachment,
    request: &Value,
    host_link: Option<&str>,
) -> Result<()> {
    let mut errors = Vec::new();
    if let Some(kind) = ipam_type(request)? {
        if let Err(e) = runner.exec(Command::Del, att, kind, request) {
            errors.push(format!("IPAM: {e:#}"));
        }
    }
    // No netns, or it is gone: a physical device is back in the host already, a veth end went
    // with the namespace. Nothing left to give back.
    if let Some(pod) = runner.netns.as_deref().and_then(|p| NetNs::open(p).ok()) {
        let host = NetNs::current()?;
        if let Err(e) = give_back(&pod, &host, &att.ifname, host_link.unwrap_or(&att.ifname)) {
            errors.push(format!("{e:#}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(coded(
            Code::Internal,
            format!("host-interface DEL: {}", errors.join("; ")),
        ))
    }
}

/// CHECK: the interface is in the pod.
pub fn check(runner: &Runner, att: &Attachment) -> Result<()> {
    let pod = NetNs::open(runner.netns.as_deref().unwrap_or_default())?;
    let ifname = att.ifname.clone();
    let present = pod
        .with_netlink(|h| async move { Ok(netlink::link_by_name(&h, &ifname).await?.is_some()) })?;
    if present {
        Ok(())
    } else {
        Err(coded(
            Code::Internal,
            format!("host-interface: {} is not in the pod", att.ifname),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Vec<Link> {
        vec![
            Link {
                index: 1,
                name: "lo".into(),
                mac: None,
                mtu: Some(65536),
                kind: None,
                state: "unknown".into(),
                master: None,
            },
            Link {
                index: 5,
                name: "ens5".into(),
                mac: Some("02:aa:bb:cc:dd:05".into()),
                mtu: Some(9000),
                kind: None,
                state: "up".into(),
                master: None,
            },
        ]
    }

    #[test]
    fn selects_by_name_mac_or_pci_and_explains_misses() {
        let sysfs = std::env::temp_dir().join(format!("mh-sysfs-{}", std::process::id()));
        std::fs::create_dir_all(sysfs.join("bus/pci/devices/0000:03:00.1/net/ens5")).unwrap();
        let sel = |v: Value| select(&v, &links(), &sysfs);
        assert_eq!(sel(json!({"device": "ens5"})).unwrap(), "ens5");
        assert_eq!(sel(json!({"hwaddr": "02:AA:BB:CC:DD:05"})).unwrap(), "ens5");
        assert_eq!(sel(json!({"pciBusID": "0000:03:00.1"})).unwrap(), "ens5");
        assert_eq!(sel(json!({"deviceID": "0000:03:00.1"})).unwrap(), "ens5");
        for (bad, fragment) in [
            (json!({"device": "eth9"}), "eth9"),
            (json!({"hwaddr": "02:00:00:00:00:00"}), "02:00:00:00:00:00"),
            (json!({"pciBusID": "0000:99:00.0"}), "0000:99:00.0"),
            (
                json!({"kernelpath": "/sys/devices/none"}),
                "/sys/devices/none",
            ),
            (json!({}), "set one of"),
        ] {
            let msg = format!("{:#}", sel(bad.clone()).unwrap_err());
            assert!(msg.contains(fragment), "{bad}: {msg}");
        }
        std::fs::remove_dir_all(&sysfs).unwrap();
    }

    #[test]
    fn ipam_type_is_validated() {
        assert_eq!(ipam_type(&json!({"type": TYPE})).unwrap(), None);
        assert_eq!(
            ipam_type(&json!({"ipam": {"type": "static"}})).unwrap(),
            Some("static")
        );
        assert!(ipam_type(&json!({"ipam": {}})).is_err());
        assert!(ipam_type(&json!({"ipam": {"type": "../x"}})).is_err());
    }
}
