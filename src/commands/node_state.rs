//! `multihome node-state`: the links of the namespace it runs in (the node's, normally), for
//! choosing masters and host interfaces: kind, state, MTU, MAC, master, addresses, and from
//! sysfs the PCI address, driver and SR-IOV VFs; and the host interfaces multihome moved into
//! pods (from its records). Read-only.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::cli::{self, Parser, config_help};
use super::{Common, cell};
use crate::cache::Cache;
use crate::netlink;
use crate::netns::NetNs;

const HELP: &str = concat!(
    "\
This namespace's links (the node's), for choosing masters and host interfaces; and the host
interfaces multihome moved into pods.

Usage: multihome node-state [OPTIONS]

Options:
",
    config_help!(),
    "      --json         One JSON document instead of a table
  -h, --help         Print help
"
);

/// `node-state`'s arguments.
#[derive(Default)]
pub struct Args {
    common: Common,
}

impl Args {
    /// Reads them; `None` when help was asked for instead.
    pub(super) fn parse(p: &mut Parser) -> Result<Option<Args>> {
        let mut common = Common::default();
        let run = cli::options(p, HELP, |name, p| common.take(name, p))?;
        Ok(run.map(|()| Args { common }))
    }
}

/// Reports the namespace's links.
pub fn node_state(args: Args) -> Result<ExitCode> {
    let (_, conf) = args.common.load()?;
    let (links, addresses) = NetNs::current()?
        .with_netlink(
            |h| async move { Ok((netlink::links(&h).await?, netlink::addresses(&h).await?)) },
        )
        .context("listing this namespace's links")?;
    let sysfs = Path::new("/sys/class/net");
    let interfaces: Vec<Value> = links
        .iter()
        .map(|l| {
            let device = sysfs.join(&l.name).join("device");
            let base = |p: &Path| {
                std::fs::canonicalize(p)
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            };
            let pci = std::fs::canonicalize(&device)
                .ok()
                .filter(|p| p.to_string_lossy().contains("/pci"))
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
            let read = |f: &str| {
                std::fs::read_to_string(device.join(f))
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
            };
            let sriov = read("sriov_totalvfs")
                .map(|total| json!({"totalVfs": total, "numVfs": read("sriov_numvfs")}));
            json!({
                "name": l.name,
                "index": l.index,
                "kind": l.kind,
                "state": l.state,
                "mtu": l.mtu,
                "mac": l.mac,
                "master": l.master.and_then(|m| links.iter().find(|x| x.index == m)).map(|m| &m.name),
                "addresses": addresses.iter().filter(|(i, _)| *i == l.index).map(|(_, a)| a.to_string()).collect::<Vec<_>>(),
                "pciAddress": pci,
                "driver": base(&device.join("driver")),
                "sriov": sriov,
            })
        })
        .collect();
    let moved: Vec<Value> = Cache::new(&conf.cni_dir)
        .records()?
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .flat_map(|r| {
            r.attachments
                .iter()
                .filter_map(|a| {
                    a.host_link.as_ref().map(|h| {
                        json!({"hostLink": h, "interface": a.attachment.ifname, "network": a.attachment.name,
                               "containerID": r.container_id, "netns": r.netns})
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let doc = json!({"interfaces": interfaces, "movedIntoPods": moved});
    if args.common.json {
        println!("{doc:#}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<9} {:<15} {:>6} {:<18} {:<12} {:<13} ADDRESSES",
        "NAME", "KIND", "STATE", "MTU", "MAC", "MASTER", "PCI"
    );
    for i in doc["interfaces"].as_array().into_iter().flatten() {
        let addrs: Vec<String> = i["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(cell)
            .collect();
        let mut pci = cell(&i["pciAddress"]);
        if let Some(s) = i["sriov"].as_object() {
            pci.push_str(&format!(
                " ({}/{} VFs)",
                cell(&s["numVfs"]),
                cell(&s["totalVfs"])
            ));
        }
        println!(
            "{:<16} {:<9} {:<15} {:>6} {:<18} {:<12} {:<13} {}",
            cell(&i["name"]),
            cell(&i["kind"]),
            cell(&i["state"]),
            cell(&i["mtu"]),
            cell(&i["mac"]),
            cell(&i["master"]),
            pci,
            addrs.join(", ")
        );
    }
    for m in doc["movedIntoPods"].as_array().into_iter().flatten() {
        println!(
            "\nmoved into a pod: {} is {} of container {} ({})",
            cell(&m["hostLink"]),
            cell(&m["interface"]),
            cell(&m["containerID"]),
            cell(&m["netns"])
        );
    }
    Ok(ExitCode::SUCCESS)
}
