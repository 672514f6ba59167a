//! `multihome attachments`: what is attached now, from the records in `cniDir`, with the
//! records whose network namespace is gone marked stale: the view to take before a GC; and
//! whether the node daemon would answer the next CNI call.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::{Value, json};

use super::cli::{self, Parser, config_help};
use super::{Common, cell};
use crate::cache::{Cache, Record};
use crate::cni::result::convert;
use crate::cni::version::Version;
use crate::k8s::socket::Link;

const HELP: &str = concat!(
    "\
What is attached now, from multihome's records.

Usage: multihome attachments [OPTIONS]

Options:
",
    config_help!(),
    "      --container ID
                     Only this container
      --json         One JSON document instead of a table
  -h, --help         Print help
"
);

/// `attachments`' arguments.
#[derive(Default)]
pub struct Args {
    common: Common,
    container: Option<String>,
}

impl Args {
    /// Reads them; `None` when help was asked for instead.
    pub(super) fn parse(p: &mut Parser) -> Result<Option<Args>> {
        let mut args = Args::default();
        let run = cli::options(p, HELP, |name, p| {
            match name {
                "container" => args.container = Some(cli::string(p)?),
                _ => return args.common.take(name, p),
            }
            Ok(true)
        })?;
        Ok(run.map(|()| args))
    }
}

/// Lists the records.
pub fn attachments(args: Args) -> Result<ExitCode> {
    let (_, conf) = args.common.load()?;
    let cache = Cache::new(&conf.cni_dir);
    let mut records = Vec::new();
    let mut unreadable = Vec::new();
    for (file, record) in cache.records()? {
        match record {
            Ok(r) if args.container.as_ref().is_none_or(|c| *c == r.container_id) => {
                records.push(describe(&file, &r));
            }
            Ok(_) => {}
            Err(e) => unreadable.push(json!({"file": file, "error": format!("{e:#}")})),
        }
    }
    // The node daemon as the next CNI call would find it.
    let daemon = conf.daemon_socket.as_ref().map(|socket| {
        let state = match Link::open(socket) {
            Ok(_) => "ready",
            Err(why) => why.as_str(),
        };
        json!({"socket": socket.path, "state": state})
    });
    let doc = json!({"cniDir": conf.cni_dir, "daemon": daemon, "records": records,
                     "unreadable": unreadable});
    if args.common.json {
        println!("{doc:#}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("cniDir: {}", conf.cni_dir.display());
    if let Some(d) = doc["daemon"].as_object() {
        println!("daemon: {} ({})", cell(&d["state"]), cell(&d["socket"]));
    }
    for r in doc["records"].as_array().into_iter().flatten() {
        println!();
        println!(
            "{}  {} ({})  netns {}{}  added {}",
            cell(&r["containerID"]),
            cell(&r["network"]),
            cell(&r["ifname"]),
            cell(&r["netns"]),
            if r["stale"] == true {
                " [STALE: gone]"
            } else {
                ""
            },
            cell(&r["added"]),
        );
        for a in r["attachments"].as_array().into_iter().flatten() {
            let ips: Vec<String> = a["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .map(cell)
                .collect();
            println!(
                "  {:<15} {:<30} {}{}",
                cell(&a["interface"]),
                cell(&a["network"]),
                ips.join(", "),
                if a["added"] == true {
                    ""
                } else {
                    " [ADD did not finish]"
                }
            );
        }
    }
    for u in doc["unreadable"].as_array().into_iter().flatten() {
        println!("\nunreadable: {}", cell(&u["error"]));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(file: &str, r: &Record) -> Value {
    let stale = r.netns.as_deref().is_none_or(|n| !Path::new(n).exists());
    let attachments: Vec<Value> = r
        .attachments
        .iter()
        .map(|a| {
            let ips: Vec<Value> = a
                .result
                .as_ref()
                .and_then(|res| {
                    convert(res, a.attachment.network.cni_version, Version::new(1, 0, 0)).ok()
                })
                .and_then(|res| res.get("ips").cloned())
                .and_then(|ips| ips.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|ip| ip.get("address").cloned())
                .collect();
            json!({
                "network": a.attachment.name,
                "interface": a.attachment.ifname,
                "ips": ips,
                "added": a.result.is_some(),
                "hostLink": a.host_link,
            })
        })
        .collect();
    json!({
        "file": file,
        "network": if r.network.is_empty() { Value::Null } else { json!(r.network) },
        "containerID": r.container_id,
        "netns": r.netns,
        "stale": stale,
        "ifname": r.ifname,
        "added": r.added,
        "attachments": attachments,
    })
}
