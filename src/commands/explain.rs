//! `multihome explain`: the plan ADD would carry out for a pod, in the order ADD would run it,
//! made by exactly the code ADD uses (resolution, planning, the binary check), with the error
//! ADD would return when it would fail. It only reads: GETs from the API, files, and the links
//! of the namespace it runs in.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::cli::{self, Parser, config_help};
use super::{Common, cell};
use crate::annotations;
use crate::cni::env::{CniEnv, Command, format_args};
use crate::config::plugin_type;
use crate::error::{CniError, Code, coded};
use crate::flows::check_binaries;
use crate::host_interface;
use crate::invocation::Invocation;
use crate::invocation::resolve::{Kube, PodRef};
use crate::k8s::client::ObjectMeta;
use crate::k8s::socket::Unused;
use crate::k8s::{InCluster, Nad, Offline, Pod, Reach};
use crate::netns::NetNs;
use crate::plan::{Attachment, filter_runtime_config};
use crate::plugin::find_plugin;

const HELP: &str = concat!(
    "\
What ADD would attach for a pod, in the order ADD would run it, made by the code ADD uses; exits
non-zero, with ADD's error, when ADD would fail. Changes nothing.

Usage: multihome explain --pod NAMESPACE/NAME [OPTIONS]
       multihome explain [--annotation NETWORKS] [--default-network NETWORK] [--nad FILE]... [OPTIONS]

Options:
",
    config_help!(),
    "      --pod NAMESPACE/NAME
                     The pod, from the API (through the config's kubeconfig)
      --namespace NAMESPACE
                     Offline: the pod's namespace [default: default]
      --annotation NETWORKS
                     Offline: the pod's k8s.v1.cni.cncf.io/networks annotation
      --default-network NETWORK
                     Offline: the pod's v1.multus-cni.io/default-network annotation
      --nad FILE     Offline: a NetworkAttachmentDefinition, YAML or JSON (repeatable)
      --uid UID      The pod UID the runtime would pass; checked against the API's as ADD
                     checks it
      --ifname NAME  The runtime's interface name (CNI_IFNAME), the cluster network's
                     [default: eth0]
      --json         One JSON document instead of a table
  -h, --help         Print help
"
);

/// `explain`'s arguments.
pub struct Args {
    common: Common,
    pod: Option<String>,
    namespace: String,
    annotation: Option<String>,
    default_network: Option<String>,
    nad: Vec<PathBuf>,
    uid: Option<String>,
    ifname: String,
}

impl Args {
    /// Reads them; `None` when help was asked for instead.
    pub(super) fn parse(p: &mut Parser) -> Result<Option<Args>> {
        let mut args = Args {
            common: Common::default(),
            pod: None,
            namespace: "default".into(),
            annotation: None,
            default_network: None,
            nad: Vec::new(),
            uid: None,
            ifname: "eth0".into(),
        };
        let run = cli::options(p, HELP, |name, p| {
            match name {
                "pod" => args.pod = Some(cli::string(p)?),
                "namespace" => args.namespace = cli::string(p)?,
                "annotation" => args.annotation = Some(cli::string(p)?),
                "default-network" => args.default_network = Some(cli::string(p)?),
                "nad" => args.nad.push(cli::path(p)?),
                "uid" => args.uid = Some(cli::string(p)?),
                "ifname" => args.ifname = cli::string(p)?,
                _ => return args.common.take(name, p),
            }
            Ok(true)
        })?;
        if run.is_none() {
            return Ok(None);
        }
        let offline = args.annotation.is_some() || args.default_network.is_some();
        if args.pod.is_some() && (offline || !args.nad.is_empty()) {
            bail!(
                "--pod reads the pod and its NADs from the API; --annotation, --default-network \
                 and --nad describe one offline: give one or the other"
            );
        }
        Ok(Some(args))
    }
}

/// Explains the plan for one pod; exits non-zero when ADD would fail.
pub fn explain(args: Args) -> Result<ExitCode> {
    let (file, conf) = args.common.load()?;
    let (namespace, name) = match &args.pod {
        Some(p) => p
            .split_once('/')
            .map(|(ns, n)| (ns.to_string(), n.to_string()))
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
            .ok_or_else(|| {
                coded(
                    Code::InvalidEnv,
                    format!("--pod {p:?}: expected NAMESPACE/NAME"),
                )
            })?,
        None => (args.namespace.clone(), "explain".to_string()),
    };
    let mut pairs = vec![
        ("K8S_POD_NAMESPACE".to_string(), namespace.clone()),
        ("K8S_POD_NAME".to_string(), name.clone()),
    ];
    if let Some(uid) = &args.uid {
        pairs.push(("K8S_POD_UID".to_string(), uid.clone()));
    }
    let env = CniEnv {
        command: Command::Add,
        container_id: "explain".into(),
        netns: None,
        ifname: args.ifname.clone(),
        args: pairs,
        path: std::env::var_os("CNI_PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default(),
    };
    let reach = Reach::api(
        conf.kubeconfig.as_deref(),
        InCluster::from_env(),
        conf.api_timeouts,
        conf.daemon_socket.clone(),
    );
    let inv = Invocation::new(env, conf);

    let mut attachments = Vec::new();
    let mut warnings = Vec::new();
    let outcome = (|| -> Result<()> {
        let kube = match &args.pod {
            Some(_) => inv.kube(&reach, true)?,
            None => Some(offline(&args, &namespace, &name)?),
        };
        if let Some(k) = &kube {
            warnings.clone_from(&k.warnings);
        }
        attachments = inv.plan(kube.as_ref())?;
        check_binaries(&inv, &attachments)
    })();
    let links = NetNs::current()
        .and_then(|ns| ns.link_names())
        .context("listing this namespace's links")?;
    let error = outcome.err().map(|e| CniError::from_anyhow(&e));
    // Whether the pod came from the node daemon's cache or from the API itself.
    let daemon = args
        .pod
        .as_ref()
        .and_then(|_| reach.daemon())
        .map(|(socket, seen)| {
            let unused = seen.unused.get();
            json!({"socket": socket.path, "answered": unused.is_none(),
                   "reason": unused.map(Unused::as_str)})
        });
    let doc = json!({
        "config": file,
        "pod": format!("{namespace}/{name}"),
        "daemon": daemon,
        "attachments": attachments.iter().map(|a| describe(&inv, a, &links)).collect::<Vec<_>>(),
        "warnings": warnings,
        "error": error.as_ref().map(|e| json!({"code": e.code, "msg": e.msg})),
    });
    if args.common.json {
        println!("{doc:#}");
    } else {
        print_table(&doc);
    }
    Ok(if error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The pod given by hand: its namespace, annotations and NADs, as the API would have them.
fn offline(args: &Args, namespace: &str, name: &str) -> Result<Kube<'static>> {
    let mut nads = HashMap::new();
    for file in &args.nad {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading --nad {}", file.display()))?;
        let mut nad: Nad = serde_yaml_ng::from_str(&text).map_err(|e| {
            coded(
                Code::InvalidConfig,
                format!(
                    "--nad {}: not a NetworkAttachmentDefinition: {e}",
                    file.display()
                ),
            )
        })?;
        if nad.metadata.namespace.is_empty() {
            nad.metadata.namespace = namespace.to_string();
        }
        let key = (nad.metadata.namespace.clone(), nad.metadata.name.clone());
        nads.insert(key, nad);
    }
    let mut annotations = BTreeMap::new();
    if let Some(a) = &args.annotation {
        annotations.insert(annotations::NETWORKS.to_string(), a.clone());
    }
    if let Some(a) = &args.default_network {
        annotations.insert(annotations::DEFAULT_NETWORK.to_string(), a.clone());
    }
    let pod = Pod {
        metadata: ObjectMeta {
            name: name.to_string(),
            namespace: namespace.to_string(),
            uid: args.uid.clone().unwrap_or_default(),
            annotations,
            ..ObjectMeta::default()
        },
    };
    Ok(Kube {
        cluster: Box::new(Offline(nads)),
        pod_ref: Some(PodRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: args.uid.clone(),
        }),
        pod: Some(pod),
        warnings: Vec::new(),
    })
}

/// The plugin keys that name a host interface by name.
const HOST_LINK_KEYS: [&str; 2] = ["master", "device"];

fn describe(inv: &Invocation, att: &Attachment, links: &[String]) -> Value {
    let search_path = inv.runner().search_path;
    let mut host = Vec::new();
    let plugins: Vec<Value> = att
        .network
        .plugins
        .iter()
        .map(|p| {
            let kind = plugin_type(p).unwrap_or("?");
            let path = if kind == host_interface::TYPE {
                Some("built in".to_string())
            } else {
                find_plugin(kind, &search_path)
                    .ok()
                    .map(|p| p.display().to_string())
            };
            for key in HOST_LINK_KEYS {
                if let Some(link) = p.get(key).and_then(Value::as_str) {
                    host.push(json!({"key": key, "name": link, "exists": links.iter().any(|l| l == link)}));
                }
            }
            json!({
                "type": kind,
                "path": path,
                "cniArgs": format_args(&att.cni_args),
                "runtimeConfig": filter_runtime_config(p, &att.runtime_config),
            })
        })
        .collect();
    let policy = att.policy_rule.map(|r| {
        let namespaces = inv
            .conf
            .nad_policy
            .as_ref()
            .and_then(|rules| rules.get(r))
            .map(|rule| rule.namespaces.join(", "))
            .unwrap_or_default();
        format!("admitted by nadPolicy rule {r} (namespaces {namespaces})")
    });
    json!({
        "interface": att.ifname,
        "network": att.name,
        "source": att.source,
        "cniVersion": att.network.cni_version.to_string(),
        "plugins": plugins,
        "device": att.runtime_config.get("deviceID"),
        "defaultRoute": att.default_route,
        "hostInterfaces": host,
        "policy": policy,
    })
}

fn print_table(doc: &Value) {
    println!("config: {}", cell(&doc["config"]));
    println!("pod:    {}", cell(&doc["pod"]));
    let daemon = &doc["daemon"];
    if !daemon.is_null() {
        let how = if daemon["answered"] == true {
            "answered".to_string()
        } else {
            format!("not used ({}): read from the API", cell(&daemon["reason"]))
        };
        println!("daemon: {how} ({})", cell(&daemon["socket"]));
    }
    for a in doc["attachments"].as_array().into_iter().flatten() {
        println!();
        println!(
            "{:<15} {}  (cniVersion {}; from {})",
            cell(&a["interface"]),
            cell(&a["network"]),
            cell(&a["cniVersion"]),
            cell(&a["source"])
        );
        for p in a["plugins"].as_array().into_iter().flatten() {
            let path = p["path"].as_str().unwrap_or("MISSING");
            println!("  {:<13} {path}", cell(&p["type"]));
            println!("    CNI_ARGS       {}", cell(&p["cniArgs"]));
            if p["runtimeConfig"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
            {
                println!("    runtimeConfig  {}", p["runtimeConfig"]);
            }
        }
        if !a["device"].is_null() {
            println!("  device         {}", cell(&a["device"]));
        }
        if let Some(gws) = a["defaultRoute"].as_array() {
            if gws.is_empty() {
                println!(
                    "  default route  keeps its own delegate's default routes, drops the others"
                );
            } else {
                let list: Vec<String> = gws.iter().map(cell).collect();
                println!("  default route  via {}", list.join(", "));
            }
        }
        for h in a["hostInterfaces"].as_array().into_iter().flatten() {
            let state = if h["exists"] == true {
                "present"
            } else {
                "NOT ON THIS NODE"
            };
            println!("  {:<13}  {} ({state})", cell(&h["key"]), cell(&h["name"]));
        }
        if !a["policy"].is_null() {
            println!("  policy         {}", cell(&a["policy"]));
        }
    }
    for w in doc["warnings"].as_array().into_iter().flatten() {
        println!("\nwarning: {}", cell(w));
    }
    if let Some(e) = doc["error"].as_object() {
        println!(
            "\nADD would fail (code {}): {}",
            e["code"],
            e["msg"].as_str().unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>> {
        Args::parse(&mut Parser::from_args(args.iter().copied()))
    }

    #[test]
    fn offline_options_repeat_and_default() {
        let a = parse(&["--nad", "a.yml", "--nad=b.json", "--annotation", "x@net7"])
            .unwrap()
            .unwrap();
        assert_eq!(a.nad, [PathBuf::from("a.yml"), PathBuf::from("b.json")]);
        assert_eq!(a.annotation.as_deref(), Some("x@net7"));
        assert_eq!(
            (a.namespace.as_str(), a.ifname.as_str()),
            ("default", "eth0")
        );
        assert!(a.pod.is_none() && !a.common.json);
    }

    #[test]
    fn the_api_pod_and_an_offline_one_exclude_each_other() {
        for offline in [
            ["--nad", "a.yml"],
            ["--annotation", "x"],
            ["--default-network", "y"],
        ] {
            let mut args = vec!["--pod", "ns/p"];
            args.extend(offline);
            let err = parse(&args).err().expect("refused").to_string();
            assert!(err.starts_with("--pod reads the pod"), "{err}");
        }
        assert!(parse(&["--pod", "ns/p", "--uid", "u", "--json"]).is_ok());
    }
}
