//! The plan: which delegate networks a container gets, in which order, under which interface
//! names, with which `CNI_ARGS` and `runtimeConfig`. A pure function of the configuration, the
//! environment and the resolved networks, so it can be tested (and later printed by `explain`)
//! without touching anything.

use std::collections::HashMap;
use std::net::IpAddr;

use anyhow::Result;
use serde_json::{Map, Value, json};

use crate::annotations::NetworkSelection;
use crate::cni::env::{Arg, CniEnv};
use crate::config::NetworkConfig;
use crate::error::{Code, coded};

/// One network selected for the container, before interface names are assigned.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The delegate network.
    pub network: NetworkConfig,
    /// Display name for errors and status (e.g. `ns/name`).
    pub name: String,
    /// An explicitly requested interface name.
    pub ifname: Option<String>,
    /// Capability arguments for this attachment only.
    pub runtime_config: Map<String, Value>,
    /// `CNI_ARGS` pairs for this attachment only.
    pub args: Vec<Arg>,
    /// The device plugin's description of the allocated device, for network-status.
    pub device_info: Option<Value>,
    /// `default-route` gateways requested for this attachment (`Some(vec![])`: the empty list).
    pub default_route: Option<Vec<IpAddr>>,
    /// Where the network's config came from (for `explain`).
    pub source: String,
    /// The `nadPolicy` rule that admitted it, when it is a NAD judged by a policy.
    pub policy_rule: Option<usize>,
}

impl Selection {
    /// A selection with no per-attachment requests, its config from `source`.
    pub fn plain(network: NetworkConfig, source: String) -> Self {
        Selection {
            name: network.name.clone(),
            network,
            ifname: None,
            runtime_config: Map::new(),
            args: Vec::new(),
            device_info: None,
            default_route: None,
            source,
            policy_rule: None,
        }
    }
}

impl Selection {
    /// The selection for one annotation element resolved to `network`. `device_id` is the device
    /// allocated through the NAD's `resourceName`, if any: it is written into every plugin config
    /// (`deviceID`, `pciBusID`) and passed as the `deviceID` capability.
    pub fn from_element(
        el: &NetworkSelection,
        mut network: NetworkConfig,
        device_id: Option<String>,
    ) -> Result<Self> {
        let name = el.qualified_name();
        let mut runtime_config = el.runtime_config();
        // The network spec (4.1.2.1.x): a request no plugin of the network can honour is an
        // error, not something to drop silently.
        for capability in runtime_config.keys() {
            let declared = network.plugins.iter().any(|p| {
                p.get("capabilities")
                    .and_then(|c| c.get(capability))
                    .and_then(Value::as_bool)
                    == Some(true)
            });
            if !declared {
                return Err(coded(
                    Code::InvalidConfig,
                    format!(
                        "network {name:?}: the pod asks for {capability:?} but no plugin of network {:?} declares the {capability:?} capability",
                        network.name
                    ),
                ));
            }
        }
        for plugin in network.plugins.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(args) = &el.cni_args {
                let all = plugin.entry("args").or_insert_with(|| json!({}));
                if let Some(all) = all.as_object_mut() {
                    let cni = all.entry("cni").or_insert_with(|| json!({}));
                    if let Some(cni) = cni.as_object_mut() {
                        cni.extend(args.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                }
            }
            if let Some(id) = &device_id {
                plugin.insert("deviceID".into(), json!(id));
                plugin.insert("pciBusID".into(), json!(id));
            }
        }
        if let Some(id) = device_id {
            runtime_config.insert("deviceID".into(), json!(id));
        }
        Ok(Selection {
            source: format!("NetworkAttachmentDefinition {name}"),
            network,
            name,
            ifname: el.interface.clone(),
            runtime_config,
            args: el.cni_args(),
            device_info: None,
            default_route: el.default_route.clone(),
            policy_rule: None,
        })
    }
}

/// `namespaceIsolation`: a pod may use NADs of its own namespace and of the global ones only.
pub fn check_namespace_isolation(
    pod_namespace: &str,
    target: &NetworkSelection,
    global: &[String],
) -> Result<()> {
    if target.namespace == pod_namespace || global.contains(&target.namespace) {
        return Ok(());
    }
    Err(coded(
        Code::InvalidConfig,
        format!(
            "namespaceIsolation: pod namespace {pod_namespace:?} may not use network {:?} (allowed: its own namespace and {})",
            target.qualified_name(),
            global.join(", ")
        ),
    ))
}

/// One delegate call of the plan, as it will run (the cache records it in a layout of its own).
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// Display name (e.g. `ns/name`).
    pub name: String,
    /// The delegate network.
    pub network: NetworkConfig,
    /// The interface name given to the delegate.
    pub ifname: String,
    /// The full `CNI_ARGS` the delegate gets.
    pub cni_args: Vec<Arg>,
    /// Capability arguments, filtered per plugin by its `capabilities` at call time.
    pub runtime_config: Map<String, Value>,
    /// The allocated device's description (network-status `device-info`).
    pub device_info: Option<Value>,
    /// `default-route` gateways this attachment should carry the pod's default route(s) through.
    pub default_route: Option<Vec<IpAddr>>,
    /// Where the network's config came from (shown by `explain`; DEL does not need it).
    pub source: String,
    /// The `nadPolicy` rule that admitted the NAD, if a policy judged it.
    pub policy_rule: Option<usize>,
}

/// Orders the selections into attachments. The first selection is the cluster network: it gets
/// `CNI_IFNAME` and everything the runtime passed for the pod as a whole (extra `CNI_ARGS` such as
/// `IP=`/`MAC=`, and `runtimeConfig`; network spec §7.5). The others get `net<index>` (index over
/// the whole list) unless they request a name, and only their own values.
pub fn plan(
    env: &CniEnv,
    pod_runtime_config: &Map<String, Value>,
    selections: Vec<Selection>,
) -> Result<Vec<Attachment>> {
    check_default_route(&selections)?;
    let mut attachments: Vec<Attachment> = Vec::with_capacity(selections.len());
    let mut taken: HashMap<String, usize> = HashMap::new();
    for (index, sel) in selections.into_iter().enumerate() {
        let cluster = index == 0;
        let ifname = match sel.ifname {
            Some(name) => name,
            None if cluster => env.ifname.clone(),
            None => format!("net{index}"),
        };
        if let Some(&other) = taken.get(&ifname) {
            return Err(coded(
                Code::InvalidConfig,
                format!(
                    "interface name {ifname:?} is used twice: by network {:?} (attachment {other}) and network {:?} (attachment {index})",
                    attachments[other].name, sel.name
                ),
            ));
        }
        taken.insert(ifname.clone(), index);
        let mut cni_args = delegate_args(&env.args, cluster);
        for (k, v) in sel.args {
            set_arg(&mut cni_args, k, v);
        }
        let runtime_config = if cluster {
            let mut rc = pod_runtime_config.clone();
            rc.extend(sel.runtime_config);
            rc
        } else {
            sel.runtime_config
        };
        attachments.push(Attachment {
            name: sel.name,
            network: sel.network,
            ifname,
            cni_args,
            runtime_config,
            device_info: sel.device_info,
            default_route: sel.default_route,
            source: sel.source,
            policy_rule: sel.policy_rule,
        });
    }
    Ok(attachments)
}

/// The network spec allows `default-route` on one element only, and multihome installs one
/// default route per family (no ECMP).
fn check_default_route(selections: &[Selection]) -> Result<()> {
    let requesting: Vec<&Selection> = selections
        .iter()
        .filter(|s| s.default_route.is_some())
        .collect();
    if let [first, second, ..] = requesting.as_slice() {
        return Err(coded(
            Code::InvalidConfig,
            format!(
                "\"default-route\" is set on more than one network ({:?} and {:?}); only one may carry it",
                first.name, second.name
            ),
        ));
    }
    if let Some(sel) = requesting.first() {
        let gws = sel.default_route.as_deref().unwrap_or_default();
        for v4 in [true, false] {
            let family: Vec<String> = gws
                .iter()
                .filter(|g| g.is_ipv4() == v4)
                .map(IpAddr::to_string)
                .collect();
            if family.len() > 1 {
                return Err(coded(
                    Code::InvalidConfig,
                    format!(
                        "network {:?}: \"default-route\" has more than one IPv{} gateway ({}); ECMP default routes are not supported",
                        sel.name,
                        if v4 { 4 } else { 6 },
                        family.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// What to change so that the attachment on link `oif` carries the default routes `request`
/// asks for, given the namespace's default routes `(is IPv4, gateway, output link)`. Returns the
/// indices of `current` to delete and the gateways to add a default route through on `oif`.
///
/// - A gateway of a family: every other default route of that family goes, then the route via
///   the gateway is added (unless exactly it is there already).
/// - The empty list: in each family where `oif` already has a default route (its delegate
///   installed one), the default routes of that family on other links go; other families are
///   left alone.
pub fn default_route_changes(
    current: &[(bool, Option<IpAddr>, Option<u32>)],
    oif: u32,
    request: &[IpAddr],
) -> (Vec<usize>, Vec<IpAddr>) {
    let mut delete = Vec::new();
    let mut add = Vec::new();
    for v4 in [true, false] {
        let family: Vec<usize> = (0..current.len()).filter(|&i| current[i].0 == v4).collect();
        match request.iter().find(|g| g.is_ipv4() == v4) {
            Some(gw) => {
                let keep = family
                    .iter()
                    .copied()
                    .find(|&i| current[i].1 == Some(*gw) && current[i].2 == Some(oif));
                delete.extend(family.iter().copied().filter(|&i| Some(i) != keep));
                if keep.is_none() {
                    add.push(*gw);
                }
            }
            None if request.is_empty() && family.iter().any(|&i| current[i].2 == Some(oif)) => {
                delete.extend(
                    family
                        .iter()
                        .copied()
                        .filter(|&i| current[i].2 != Some(oif)),
                );
            }
            None => {}
        }
    }
    (delete, add)
}

/// `IgnoreUnknown=1` and the pod identity (`K8S_*`) for every delegate; the caller's other pairs
/// only for the cluster network.
fn delegate_args(caller: &[Arg], cluster: bool) -> Vec<Arg> {
    let mut args = vec![("IgnoreUnknown".to_string(), "1".to_string())];
    for (k, v) in caller {
        if k == "IgnoreUnknown" {
            continue;
        }
        if cluster || k.starts_with("K8S_") {
            set_arg(&mut args, k.clone(), v.clone());
        }
    }
    args
}

/// Sets a pair, replacing an earlier value of the same key (delegates parse `CNI_ARGS` into a
/// map; a duplicated key is at best ignored and at worst an error).
fn set_arg(args: &mut Vec<Arg>, key: String, value: String) {
    match args.iter_mut().find(|(k, _)| *k == key) {
        Some(pair) => pair.1 = value,
        None => args.push((key, value)),
    }
}

/// The `runtimeConfig` a plugin receives: only the capabilities it declares `true` for.
pub fn filter_runtime_config(
    plugin: &Value,
    runtime_config: &Map<String, Value>,
) -> Map<String, Value> {
    let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) else {
        return Map::new();
    };
    runtime_config
        .iter()
        .filter(|(k, _)| caps.get(k.as_str()).and_then(Value::as_bool) == Some(true))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cni::env::{Command, parse_args};
    use crate::cni::version::Version;

    fn env(ifname: &str, args: &str) -> CniEnv {
        CniEnv {
            command: Command::Add,
            container_id: "c".into(),
            netns: Some("/run/netns/x".into()),
            ifname: ifname.into(),
            args: parse_args(args).unwrap(),
            path: vec![],
        }
    }

    fn net(name: &str) -> NetworkConfig {
        NetworkConfig::from_value(
            json!({"name": name, "type": "bridge"}),
            Version::new(1, 0, 0),
        )
        .unwrap()
    }

    fn names(atts: &[Attachment]) -> Vec<&str> {
        atts.iter().map(|a| a.ifname.as_str()).collect()
    }

    #[test]
    fn cluster_gets_cni_ifname_then_net_index() {
        let sels = vec![
            Selection::plain(net("a"), String::new()),
            Selection::plain(net("b"), String::new()),
            Selection::plain(net("c"), String::new()),
        ];
        let atts = plan(&env("eth0", ""), &Map::new(), sels).unwrap();
        assert_eq!(names(&atts), ["eth0", "net1", "net2"]);
    }

    #[test]
    fn requested_names_keep_the_index_count() {
        let mut b = Selection::plain(net("b"), String::new());
        b.ifname = Some("storage".into());
        let sels = vec![
            Selection::plain(net("a"), String::new()),
            b,
            Selection::plain(net("c"), String::new()),
        ];
        let atts = plan(&env("eth0", ""), &Map::new(), sels).unwrap();
        assert_eq!(names(&atts), ["eth0", "storage", "net2"]);
    }

    #[test]
    fn duplicate_names_are_rejected_naming_both() {
        let sels = vec![
            Selection::plain(net("a"), String::new()),
            Selection::plain(net("b"), String::new()),
        ];
        let err = plan(&env("net1", ""), &Map::new(), sels).unwrap_err();
        let e = crate::error::CniError::from_anyhow(&err);
        assert_eq!(e.code, 7);
        assert!(
            e.msg.contains("\"net1\"") && e.msg.contains("\"a\"") && e.msg.contains("\"b\""),
            "{}",
            e.msg
        );
    }

    #[test]
    fn pod_wide_args_and_runtime_config_go_to_the_cluster_network_only() {
        let rc: Map<String, Value> =
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80}]})
                .as_object()
                .unwrap()
                .clone();
        let mut b = Selection::plain(net("b"), String::new());
        b.runtime_config
            .insert("mac".into(), json!("02:00:00:00:00:01"));
        b.args.push(("MAC".into(), "02:00:00:00:00:01".into()));
        let sels = vec![Selection::plain(net("a"), String::new()), b];
        let e = env(
            "eth0",
            "IgnoreUnknown=true;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;IP=198.18.0.5;MAC=02:00:00:00:00:09",
        );
        let atts = plan(&e, &rc, sels).unwrap();
        let args = |i: usize| crate::cni::env::format_args(&atts[i].cni_args);
        assert_eq!(
            args(0),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;IP=198.18.0.5;MAC=02:00:00:00:00:09"
        );
        assert_eq!(
            args(1),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;MAC=02:00:00:00:00:01"
        );
        assert_eq!(atts[0].runtime_config, rc);
        assert_eq!(
            Value::Object(atts[1].runtime_config.clone()),
            json!({"mac": "02:00:00:00:00:01"})
        );
    }

    fn element(json: &str) -> NetworkSelection {
        crate::annotations::parse_networks(json, "pods")
            .unwrap()
            .remove(0)
    }

    #[test]
    fn element_requests_need_a_declared_capability() {
        let plain = net("mv");
        let err = Selection::from_element(
            &element(r#"[{"name":"mv","mac":"02:00:00:00:00:01"}]"#),
            plain.clone(),
            None,
        )
        .unwrap_err();
        let e = crate::error::CniError::from_anyhow(&err);
        assert_eq!(e.code, 7);
        assert!(
            e.msg.contains("\"mac\"") && e.msg.contains("pods/mv"),
            "{}",
            e.msg
        );
        let capable = NetworkConfig::from_value(
            json!({"name": "mv", "plugins": [{"type": "macvlan"}, {"type": "tuning", "capabilities": {"mac": true}}]}),
            Version::new(1, 0, 0),
        )
        .unwrap();
        let sel = Selection::from_element(
            &element(r#"[{"name":"mv","mac":"02:00:00:00:00:01","interface":"x1"}]"#),
            capable,
            None,
        )
        .unwrap();
        assert_eq!(sel.name, "pods/mv");
        assert_eq!(sel.ifname.as_deref(), Some("x1"));
        assert_eq!(sel.runtime_config["mac"], "02:00:00:00:00:01");
        assert_eq!(
            sel.args,
            vec![("MAC".to_string(), "02:00:00:00:00:01".to_string())]
        );
    }

    #[test]
    fn cni_args_merge_into_every_plugin_and_device_ids_are_injected() {
        let network = NetworkConfig::from_value(
            json!({"name": "sriov", "plugins": [{"type": "host-device", "args": {"cni": {"keep": 1, "k": "old"}, "other": 2}}, {"type": "tuning"}]}),
            Version::new(1, 0, 0),
        )
        .unwrap();
        let el = element(r#"[{"name":"sriov","cni-args":{"k":"new"}}]"#);
        let sel = Selection::from_element(&el, network, Some("0000:03:02.1".into())).unwrap();
        let p0 = &sel.network.plugins[0];
        assert_eq!(
            p0["args"],
            json!({"cni": {"keep": 1, "k": "new"}, "other": 2})
        );
        assert_eq!(sel.network.plugins[1]["args"], json!({"cni": {"k": "new"}}));
        assert_eq!(
            (p0["deviceID"].as_str(), p0["pciBusID"].as_str()),
            (Some("0000:03:02.1"), Some("0000:03:02.1"))
        );
        assert_eq!(sel.runtime_config["deviceID"], "0000:03:02.1");
    }

    #[test]
    fn namespace_isolation_allows_own_and_global_namespaces_only() {
        let global = vec!["default".to_string(), "shared".to_string()];
        for (target, ok) in [
            ("pods/a", true),
            ("default/a", true),
            ("shared/a", true),
            ("other/a", false),
        ] {
            let el = crate::annotations::parse_networks(target, "pods")
                .unwrap()
                .remove(0);
            assert_eq!(
                check_namespace_isolation("pods", &el, &global).is_ok(),
                ok,
                "{target}"
            );
        }
        let el = crate::annotations::parse_networks("other/a", "pods")
            .unwrap()
            .remove(0);
        let msg = format!(
            "{:#}",
            check_namespace_isolation("pods", &el, &global).unwrap_err()
        );
        assert!(msg.contains("other/a") && msg.contains("\"pods\""), "{msg}");
    }

    #[test]
    fn default_route_is_validated_before_anything_runs() {
        let with = |name: &str, gws: &[&str]| {
            let mut s = Selection::plain(net(name), String::new());
            s.default_route = Some(gws.iter().map(|g| g.parse().unwrap()).collect());
            s
        };
        let two = vec![
            Selection::plain(net("a"), String::new()),
            with("b", &[]),
            with("c", &["198.18.1.1"]),
        ];
        let e = crate::error::CniError::from_anyhow(
            &plan(&env("eth0", ""), &Map::new(), two).unwrap_err(),
        );
        assert!(
            e.msg.contains("more than one network")
                && e.msg.contains("\"b\"")
                && e.msg.contains("\"c\""),
            "{}",
            e.msg
        );
        let ecmp = vec![
            Selection::plain(net("a"), String::new()),
            with("b", &["198.18.1.1", "198.18.1.2"]),
        ];
        let e = crate::error::CniError::from_anyhow(
            &plan(&env("eth0", ""), &Map::new(), ecmp).unwrap_err(),
        );
        assert!(
            e.msg.contains("more than one IPv4 gateway") && e.msg.contains("198.18.1.2"),
            "{}",
            e.msg
        );
        let dual = vec![
            Selection::plain(net("a"), String::new()),
            with("b", &["198.18.1.1", "2001:db8::1"]),
        ];
        let atts = plan(&env("eth0", ""), &Map::new(), dual).unwrap();
        assert_eq!(atts[1].default_route.as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn default_route_changes_table() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        // eth0 = 2 (cluster, v4 + v6 defaults), net1 = 3.
        let current = vec![
            (true, Some(ip("198.18.0.1")), Some(2)),
            (false, Some(ip("2001:db8::1")), Some(2)),
        ];
        // IPv4 gateway on net1: the v4 default of eth0 goes, v6 untouched.
        assert_eq!(
            default_route_changes(&current, 3, &[ip("198.18.1.1")]),
            (vec![0], vec![ip("198.18.1.1")])
        );
        // Both families requested.
        assert_eq!(
            default_route_changes(&current, 3, &[ip("198.18.1.1"), ip("fe80::1")]),
            (vec![0, 1], vec![ip("198.18.1.1"), ip("fe80::1")])
        );
        // The requested route exists already: nothing to add, the other v4 default goes.
        let both = vec![
            (true, Some(ip("198.18.0.1")), Some(2)),
            (true, Some(ip("198.18.1.1")), Some(3)),
        ];
        assert_eq!(
            default_route_changes(&both, 3, &[ip("198.18.1.1")]),
            (vec![0], vec![])
        );
        // The empty list: keep net1's own v4 default, drop eth0's; v6 (none on net1) untouched.
        let own = vec![
            (true, Some(ip("198.18.0.1")), Some(2)),
            (false, Some(ip("2001:db8::1")), Some(2)),
            (true, Some(ip("198.18.1.1")), Some(3)),
        ];
        assert_eq!(default_route_changes(&own, 3, &[]), (vec![0], vec![]));
        // The empty list on an attachment whose delegate installed no default: nothing changes.
        assert_eq!(default_route_changes(&current, 3, &[]), (vec![], vec![]));
    }

    #[test]
    fn capability_filter_passes_only_declared_true_capabilities() {
        let rc = json!({"portMappings": [1], "bandwidth": {"ingressRate": 1}, "mac": "m"});
        let rc = rc.as_object().unwrap();
        let plugin =
            json!({"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}});
        assert_eq!(
            Value::Object(filter_runtime_config(&plugin, rc)),
            json!({"portMappings": [1]})
        );
        assert!(filter_runtime_config(&json!({"type": "bridge"}), rc).is_empty());
        let odd = json!({"type": "x", "capabilities": {"mac": "yes"}});
        assert!(filter_runtime_config(&odd, rc).is_empty());
    }
}
