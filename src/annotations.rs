//! The pod annotations of the Kubernetes network model (NPWG multi-network spec), parsed and
//! built without any I/O:
//!
//! - `k8s.v1.cni.cncf.io/networks`: the networks a pod asks for, as a short comma list
//!   (`[ns/]name[@iface]`) or a JSON list of selection elements;
//! - `v1.multus-cni.io/default-network`: a replacement for the cluster network;
//! - `k8s.v1.cni.cncf.io/network-status`: what was attached, written back after ADD.
//!
//! A malformed annotation is an error quoting the bad element: multihome never silently attaches
//! fewer networks than the pod asked for.

use std::net::IpAddr;

use anyhow::Result;
use ipnetwork::IpNetwork;
use serde_json::{Map, Value, json};

use crate::cni::env::validate_ifname;
use crate::error::{Code, coded};

/// The networks annotation.
pub const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
/// The cluster-network override annotation.
pub const DEFAULT_NETWORK: &str = "v1.multus-cni.io/default-network";
/// The status annotation multihome writes.
pub const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
/// The NAD annotation naming a device-plugin resource.
pub const RESOURCE_NAME: &str = "k8s.v1.cni.cncf.io/resourceName";

/// One selection element: a network the pod asks for and its per-attachment requests.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NetworkSelection {
    /// NetworkAttachmentDefinition name.
    pub name: String,
    /// Its namespace (the default applied when the element gave none).
    pub namespace: String,
    /// Requested interface name (`interface`, or the legacy `interfaceRequest`).
    pub interface: Option<String>,
    /// Requested addresses (IP or CIDR), to the `ips` capability and `IP=`.
    pub ips: Vec<String>,
    /// Requested MAC, to the `mac` capability and `MAC=`.
    pub mac: Option<String>,
    /// `infiniband-guid`, to the `infinibandGUID` capability.
    pub infiniband_guid: Option<String>,
    /// `default-route` gateways; `Some(vec![])` is the spec's empty list.
    pub default_route: Option<Vec<IpAddr>>,
    /// `portMappings`, to the capability of that name.
    pub port_mappings: Option<Value>,
    /// `bandwidth`, to the capability of that name.
    pub bandwidth: Option<Value>,
    /// `cni-args`, merged into every plugin's `args.cni`.
    pub cni_args: Option<Map<String, Value>>,
    /// `deviceID`, to the capability of that name.
    pub device_id: Option<String>,
    /// `ipam-claim-reference` (multi-net spec v1.3).
    pub ipam_claim_reference: Option<String>,
}

impl NetworkSelection {
    /// `namespace/name`, the name status entries and errors use.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Capability arguments this element requests (capability name -> value).
    pub fn runtime_config(&self) -> Map<String, Value> {
        let mut rc = Map::new();
        if !self.ips.is_empty() {
            rc.insert("ips".into(), json!(self.ips));
        }
        if let Some(mac) = &self.mac {
            rc.insert("mac".into(), json!(mac));
        }
        if let Some(guid) = &self.infiniband_guid {
            rc.insert("infinibandGUID".into(), json!(guid));
        }
        if let Some(pm) = &self.port_mappings {
            rc.insert("portMappings".into(), pm.clone());
        }
        if let Some(bw) = &self.bandwidth {
            rc.insert("bandwidth".into(), bw.clone());
        }
        if let Some(id) = &self.device_id {
            rc.insert("deviceID".into(), json!(id));
        }
        rc
    }

    /// `CNI_ARGS` pairs this element adds (`IP=`/`MAC=`, as Multus passes them).
    pub fn cni_args(&self) -> Vec<(String, String)> {
        let mut args = Vec::new();
        if !self.ips.is_empty() {
            args.push(("IP".to_string(), self.ips.join(",")));
        }
        if let Some(mac) = &self.mac {
            args.push(("MAC".to_string(), mac.clone()));
        }
        args
    }
}

/// Parses the networks annotation. `default_namespace` is the pod's namespace.
pub fn parse_networks(annotation: &str, default_namespace: &str) -> Result<Vec<NetworkSelection>> {
    let text = annotation.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    // The detection rule of Multus and the NAD client: any of these characters means JSON.
    if text.contains(['[', '{', '"']) {
        parse_json(text, default_namespace)
    } else {
        text.split(',')
            .enumerate()
            .map(|(i, item)| {
                parse_short(item.trim(), default_namespace).map_err(|e| {
                    coded(
                        Code::InvalidConfig,
                        format!("networks annotation element {i} ({:?}): {e}", item.trim()),
                    )
                })
            })
            .collect()
    }
}

/// `[namespace/]name[@interface]`.
fn parse_short(
    item: &str,
    default_namespace: &str,
) -> std::result::Result<NetworkSelection, String> {
    if item.is_empty() {
        return Err("empty element".into());
    }
    let (ns_name, interface) = match item.split_once('@') {
        Some((n, i)) => (n, Some(i)),
        None => (item, None),
    };
    let (namespace, name) = match ns_name.split_once('/') {
        Some((ns, n)) => (ns, n),
        None => (default_namespace, ns_name),
    };
    if name.contains('/') || interface.is_some_and(|i| i.contains('@')) {
        return Err("expected [namespace/]name[@interface]".into());
    }
    check_name(name)?;
    check_namespace(namespace)?;
    if let Some(i) = interface {
        check_interface(i)?;
    }
    Ok(NetworkSelection {
        name: name.into(),
        namespace: namespace.into(),
        interface: interface.map(String::from),
        ..Default::default()
    })
}

fn parse_json(text: &str, default_namespace: &str) -> Result<Vec<NetworkSelection>> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        coded(
            Code::InvalidConfig,
            format!("networks annotation is not valid JSON: {e}"),
        )
    })?;
    let Value::Array(items) = value else {
        return Err(coded(
            Code::InvalidConfig,
            "networks annotation: JSON form must be a list of selection elements",
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            parse_element(item, default_namespace).map_err(|e| {
                coded(
                    Code::InvalidConfig,
                    format!("networks annotation element {i} ({item}): {e}"),
                )
            })
        })
        .collect()
}

/// One JSON selection element. Unknown keys are ignored (the spec reserves them for extensions).
pub fn parse_element(
    item: &Value,
    default_namespace: &str,
) -> std::result::Result<NetworkSelection, String> {
    let Value::Object(obj) = item else {
        return Err("not a JSON object".into());
    };
    let string = |key: &str| -> std::result::Result<Option<String>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{key:?} must be a string")),
        }
    };
    let name = string("name")?
        .filter(|s| !s.is_empty())
        .ok_or("\"name\" is required")?;
    check_name(&name)?;
    let namespace = string("namespace")?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default_namespace.into());
    check_namespace(&namespace)?;
    let interface = match string("interface")?.filter(|s| !s.is_empty()) {
        Some(i) => Some(i),
        None => string("interfaceRequest")?.filter(|s| !s.is_empty()),
    };
    if let Some(i) = &interface {
        check_interface(i)?;
    }
    let ips = match obj.get("ips") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|ip| match ip.as_str() {
                Some(s) if s.parse::<IpAddr>().is_ok() || s.parse::<IpNetwork>().is_ok() => {
                    Ok(s.to_string())
                }
                _ => Err(format!("\"ips\": {ip} is not an IP address or CIDR")),
            })
            .collect::<std::result::Result<_, _>>()?,
        Some(_) => return Err("\"ips\" must be a list of IP addresses".into()),
    };
    let mac = string("mac")?.filter(|s| !s.is_empty());
    if let Some(m) = &mac {
        if !is_mac(m) {
            return Err(format!("\"mac\" {m:?} is not a MAC address"));
        }
    }
    let default_route = match obj.get("default-route") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(
            list.iter()
                .map(|gw| {
                    gw.as_str()
                        .and_then(|s| s.parse::<IpAddr>().ok())
                        .ok_or_else(|| format!("\"default-route\": {gw} is not an IP address"))
                })
                .collect::<std::result::Result<_, _>>()?,
        ),
        Some(_) => return Err("\"default-route\" must be a list of gateway IPs".into()),
    };
    let port_mappings = match obj.get("portMappings") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => {
            for pm in list {
                check_port_mapping(pm)?;
            }
            Some(Value::Array(list.clone()))
        }
        Some(_) => return Err("\"portMappings\" must be a list".into()),
    };
    let bandwidth = match obj.get("bandwidth") {
        None | Some(Value::Null) => None,
        Some(Value::Object(bw)) => {
            for (k, v) in bw {
                if !v.is_u64() {
                    return Err(format!(
                        "\"bandwidth\".{k:?} must be a non-negative integer"
                    ));
                }
            }
            Some(Value::Object(bw.clone()))
        }
        Some(_) => return Err("\"bandwidth\" must be an object".into()),
    };
    let cni_args = match obj.get("cni-args") {
        None | Some(Value::Null) => None,
        Some(Value::Object(args)) => Some(args.clone()),
        Some(_) => return Err("\"cni-args\" must be an object".into()),
    };
    let ipam_claim_reference = string("ipam-claim-reference")?.filter(|s| !s.is_empty());
    if ipam_claim_reference.is_some() && !ips.is_empty() {
        return Err("\"ipam-claim-reference\" and \"ips\" cannot be combined".into());
    }
    Ok(NetworkSelection {
        name,
        namespace,
        interface,
        ips,
        mac,
        infiniband_guid: string("infiniband-guid")?.filter(|s| !s.is_empty()),
        default_route,
        port_mappings,
        bandwidth,
        cni_args,
        device_id: string("deviceID")?.filter(|s| !s.is_empty()),
        ipam_claim_reference,
    })
}

fn check_port_mapping(pm: &Value) -> std::result::Result<(), String> {
    let port = |key: &str, required: bool| match pm.get(key) {
        None if !required => Ok(()),
        Some(v) if v.as_u64().is_some_and(|p| (1..=65535).contains(&p)) => Ok(()),
        _ => Err(format!(
            "\"portMappings\": {pm}: {key:?} must be a port number"
        )),
    };
    if !pm.is_object() {
        return Err(format!("\"portMappings\": {pm} is not an object"));
    }
    port("containerPort", true)?;
    port("hostPort", false)?;
    match pm.get("protocol") {
        None => Ok(()),
        Some(Value::String(p))
            if ["tcp", "udp", "sctp"].contains(&p.to_ascii_lowercase().as_str()) =>
        {
            Ok(())
        }
        Some(p) => Err(format!(
            "\"portMappings\": protocol {p} must be tcp, udp or sctp"
        )),
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// NAD names are object names: DNS-1123 subdomains.
fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.len() <= 253 && name.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(format!(
            "network name {name:?} is not a valid DNS-1123 name (lower case alphanumerics, '-', '.')"
        ))
    }
}

fn check_namespace(ns: &str) -> std::result::Result<(), String> {
    if is_dns_label(ns) {
        Ok(())
    } else {
        Err(format!("namespace {ns:?} is not a valid DNS-1123 label"))
    }
}

fn check_interface(name: &str) -> std::result::Result<(), String> {
    validate_ifname(name).map_err(|e| format!("{e:#}"))
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    matches!(parts.len(), 6 | 8 | 20)
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses `v1.multus-cni.io/default-network`: exactly one element, default namespace
/// `multus_namespace`.
pub fn parse_default_network(annotation: &str, multus_namespace: &str) -> Result<NetworkSelection> {
    let mut list = parse_networks(annotation, multus_namespace)?;
    if list.len() != 1 {
        return Err(coded(
            Code::InvalidConfig,
            format!(
                "{DEFAULT_NETWORK} must name exactly one network, got {}: {annotation:?}",
                list.len()
            ),
        ));
    }
    Ok(list.remove(0))
}

/// One attachment as network-status reports it.
#[derive(Debug, Clone)]
pub struct StatusInput<'a> {
    /// `ns/name` (or the network name for file-based networks).
    pub name: &'a str,
    /// The interface the attachment was given.
    pub ifname: &'a str,
    /// Whether it is the cluster network.
    pub default: bool,
    /// Its ADD result, in the 1.0 shape.
    pub result: &'a Value,
    /// The device-info of its device, if any.
    pub device_info: Option<&'a Value>,
}

/// The `k8s.v1.cni.cncf.io/network-status` entries for the attachments. Addresses are written
/// without prefix length (as Multus does); `gateway` lists the next hops of default routes, a
/// route without `gw` taking the gateway of its family from `ips`, as the spec defines.
pub fn network_status(inputs: &[StatusInput<'_>]) -> Value {
    Value::Array(inputs.iter().map(status_entry).collect())
}

fn status_entry(input: &StatusInput<'_>) -> Value {
    let r = input.result;
    let empty = Vec::new();
    let ifaces = r
        .get("interfaces")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let in_sandbox = |i: &Value| {
        i.get("sandbox")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    let index = ifaces
        .iter()
        .position(|i| in_sandbox(i) && i.get("name").and_then(Value::as_str) == Some(input.ifname))
        .or_else(|| ifaces.iter().position(in_sandbox));
    let ips: Vec<&Value> = r
        .get("ips")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
        .iter()
        .filter(|ip| match ip.get("interface").and_then(Value::as_u64) {
            Some(i) => index.is_some_and(|idx| idx as u64 == i),
            None => true,
        })
        .collect();
    let mut entry = Map::new();
    entry.insert("name".into(), json!(input.name));
    entry.insert("interface".into(), json!(input.ifname));
    let addrs: Vec<String> = ips
        .iter()
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .collect();
    if !addrs.is_empty() {
        entry.insert("ips".into(), json!(addrs));
    }
    if let Some(iface) = index.map(|i| &ifaces[i]) {
        if let Some(mac) = iface
            .get("mac")
            .filter(|m| m.as_str().is_some_and(|s| !s.is_empty()))
        {
            entry.insert("mac".into(), mac.clone());
        }
        if let Some(mtu) = iface
            .get("mtu")
            .filter(|m| m.as_u64().is_some_and(|m| m > 0))
        {
            entry.insert("mtu".into(), mtu.clone());
        }
    }
    entry.insert("default".into(), json!(input.default));
    entry.insert(
        "dns".into(),
        r.get("dns").cloned().unwrap_or_else(|| json!({})),
    );
    if let Some(info) = input.device_info {
        entry.insert("device-info".into(), info.clone());
    }
    let gateways = default_gateways(r, &ips);
    if !gateways.is_empty() {
        entry.insert("gateway".into(), json!(gateways));
    }
    Value::Object(entry)
}

fn default_gateways(result: &Value, ips: &[&Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for route in result
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(dst) = route
            .get("dst")
            .and_then(Value::as_str)
            .and_then(|d| d.parse::<IpNetwork>().ok())
        else {
            continue;
        };
        if dst.prefix() != 0 {
            continue;
        }
        let gw = route
            .get("gw")
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| {
                ips.iter().find_map(|ip| {
                    let addr = ip
                        .get("address")
                        .and_then(Value::as_str)?
                        .parse::<IpNetwork>()
                        .ok()?;
                    let gw = ip.get("gateway").and_then(Value::as_str)?;
                    (addr.is_ipv4() == dst.is_ipv4()).then(|| gw.to_string())
                })
            });
        if let Some(gw) = gw.filter(|g| !out.contains(g)) {
            out.push(gw);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CniError;

    /// (annotation, Ok(expected qualified names and interfaces) | Err(fragment of the message))
    type Case = (
        &'static str,
        std::result::Result<Vec<(&'static str, Option<&'static str>)>, &'static str>,
    );

    #[test]
    fn annotation_table() {
        let cases: Vec<Case> = vec![
            ("", Ok(vec![])),
            ("   ", Ok(vec![])),
            ("macvlan-conf", Ok(vec![("pods/macvlan-conf", None)])),
            (" a , b ", Ok(vec![("pods/a", None), ("pods/b", None)])),
            ("other/a", Ok(vec![("other/a", None)])),
            ("a@net5", Ok(vec![("pods/a", Some("net5"))])),
            ("other/a@eth1", Ok(vec![("other/a", Some("eth1"))])),
            ("a,a", Ok(vec![("pods/a", None), ("pods/a", None)])),
            ("sriov.intel.com", Ok(vec![("pods/sriov.intel.com", None)])),
            ("a@storage_1", Ok(vec![("pods/a", Some("storage_1"))])),
            ("a@eth0.100", Ok(vec![("pods/a", Some("eth0.100"))])),
            ("Macvlan", Err("DNS-1123")),
            ("a_b", Err("DNS-1123")),
            ("-a", Err("DNS-1123")),
            ("a-", Err("DNS-1123")),
            ("a,,b", Err("element 1")),
            ("a,", Err("empty element")),
            ("ns/", Err("DNS-1123")),
            ("/a", Err("namespace")),
            ("Bad_NS/a", Err("namespace")),
            ("a/b/c", Err("expected [namespace/]name")),
            ("a@", Err("interface name")),
            ("a@averyveryverylongname", Err("longer than 15")),
            ("a@x@y", Err("expected [namespace/]name")),
            ("a@et h0", Err("whitespace")),
            ("a@..", Err("not a valid name")),
            (r#"[{"name":"a"}]"#, Ok(vec![("pods/a", None)])),
            (
                r#"[{"name":"a","namespace":"x","interface":"sto0"}]"#,
                Ok(vec![("x/a", Some("sto0"))]),
            ),
            (
                r#"[{"name":"a","interfaceRequest":"legacy0"}]"#,
                Ok(vec![("pods/a", Some("legacy0"))]),
            ),
            (
                r#"[{"name":"a","interface":"new0","interfaceRequest":"old0"}]"#,
                Ok(vec![("pods/a", Some("new0"))]),
            ),
            (
                r#"[{"name":"a","unknownKey":{"x":1}}]"#,
                Ok(vec![("pods/a", None)]),
            ),
            (
                r#"[{"name":"a"},{"name":"b","namespace":"o"}]"#,
                Ok(vec![("pods/a", None), ("o/b", None)]),
            ),
            ("[]", Ok(vec![])),
            (
                r#"[{"name":"a","ips":["198.18.5.5/24","2001:db8::5"]}]"#,
                Ok(vec![("pods/a", None)]),
            ),
            (
                r#"[{"name":"a","mac":"02:00:00:00:00:01"}]"#,
                Ok(vec![("pods/a", None)]),
            ),
            (
                r#"[{"name":"a","default-route":[]}]"#,
                Ok(vec![("pods/a", None)]),
            ),
            (
                r#"[{"name":"a","portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"TCP"}]}]"#,
                Ok(vec![("pods/a", None)]),
            ),
            (
                r#"[{"name":"a","bandwidth":{"ingressRate":1000,"ingressBurst":100}}]"#,
                Ok(vec![("pods/a", None)]),
            ),
            (
                r#"[{"name":"a","cni-args":{"foo":"bar"}}]"#,
                Ok(vec![("pods/a", None)]),
            ),
            (r#"[{"namespace":"x"}]"#, Err("\"name\" is required")),
            (r#"[{"name":""}]"#, Err("\"name\" is required")),
            (r#"[{"name":5}]"#, Err("\"name\" must be a string")),
            (r#"{"name":"a"}"#, Err("must be a list")),
            (r#"[{"name":"a"}"#, Err("not valid JSON")),
            (r#"["a"]"#, Err("not a JSON object")),
            (
                r#"[{"name":"a","ips":"198.18.0.1"}]"#,
                Err("\"ips\" must be a list"),
            ),
            (
                r#"[{"name":"a","ips":["198.18.0.300"]}]"#,
                Err("not an IP address or CIDR"),
            ),
            (
                r#"[{"name":"a","mac":"02:00:00:00:01"}]"#,
                Err("not a MAC address"),
            ),
            (
                r#"[{"name":"a","mac":"zz:00:00:00:00:01"}]"#,
                Err("not a MAC address"),
            ),
            (
                r#"[{"name":"a","default-route":"198.18.0.1"}]"#,
                Err("\"default-route\" must be a list"),
            ),
            (
                r#"[{"name":"a","default-route":["gw"]}]"#,
                Err("not an IP address"),
            ),
            (
                r#"[{"name":"a","portMappings":[{"hostPort":8080}]}]"#,
                Err("containerPort"),
            ),
            (
                r#"[{"name":"a","portMappings":[{"containerPort":80,"protocol":"icmp"}]}]"#,
                Err("protocol"),
            ),
            (
                r#"[{"name":"a","portMappings":{"containerPort":80}}]"#,
                Err("must be a list"),
            ),
            (
                r#"[{"name":"a","bandwidth":{"ingressRate":"fast"}}]"#,
                Err("ingressRate"),
            ),
            (
                r#"[{"name":"a","cni-args":["x"]}]"#,
                Err("\"cni-args\" must be an object"),
            ),
            (r#"[{"name":"a","interface":"a/b"}]"#, Err("interface name")),
            (r#"[{"name":"a","namespace":"NS"}]"#, Err("namespace")),
            (
                r#"[{"name":"a","ips":["198.18.0.1"],"ipam-claim-reference":"c"}]"#,
                Err("cannot be combined"),
            ),
            (r#"[{"name":"a"},{"name":"B"}]"#, Err("element 1")),
        ];
        assert!(cases.len() >= 40);
        for (input, expected) in cases {
            let got = parse_networks(input, "pods");
            match (expected, got) {
                (Ok(want), Ok(got)) => {
                    let got: Vec<(String, Option<String>)> = got
                        .iter()
                        .map(|s| (s.qualified_name(), s.interface.clone()))
                        .collect();
                    let want: Vec<(String, Option<String>)> = want
                        .iter()
                        .map(|(n, i)| (n.to_string(), i.map(String::from)))
                        .collect();
                    assert_eq!(got, want, "{input}");
                }
                (Err(fragment), Err(e)) => {
                    let e = CniError::from_anyhow(&e);
                    assert_eq!(e.code, 7, "{input}");
                    assert!(
                        e.msg.contains(fragment),
                        "{input}: {:?} lacks {fragment:?}",
                        e.msg
                    );
                    assert!(
                        e.msg.starts_with("networks annotation"),
                        "{input}: {}",
                        e.msg
                    );
                }
                (want, got) => panic!("{input}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn errors_quote_the_bad_element() {
        let e = parse_networks(r#"[{"name":"ok"},{"name":"bad","mac":"nope"}]"#, "d").unwrap_err();
        let msg = CniError::from_anyhow(&e).msg;
        assert!(
            msg.contains(r#"element 1 ({"name":"bad","mac":"nope"})"#),
            "{msg}"
        );
        let e = parse_networks("good, Bad", "d").unwrap_err();
        assert!(CniError::from_anyhow(&e).msg.contains("\"Bad\""));
    }

    #[test]
    fn element_requests_become_capabilities_and_args() {
        let s = &parse_networks(
            r#"[{"name":"a","ips":["198.18.5.5/24","2001:db8::5/64"],"mac":"02:00:00:00:00:01",
                "infiniband-guid":"c2:11:22:33:44:55:66:77","portMappings":[{"containerPort":80,"hostPort":8080}],
                "bandwidth":{"egressRate":10},"deviceID":"0000:03:00.1","default-route":["198.18.5.1"],
                "cni-args":{"k":"v"}}]"#,
            "d",
        )
        .unwrap()[0];
        let rc = s.runtime_config();
        assert_eq!(rc["ips"], json!(["198.18.5.5/24", "2001:db8::5/64"]));
        assert_eq!(rc["mac"], "02:00:00:00:00:01");
        assert_eq!(rc["infinibandGUID"], "c2:11:22:33:44:55:66:77");
        assert_eq!(rc["portMappings"][0]["hostPort"], 8080);
        assert_eq!(rc["bandwidth"]["egressRate"], 10);
        assert_eq!(rc["deviceID"], "0000:03:00.1");
        assert_eq!(
            s.default_route,
            Some(vec!["198.18.5.1".parse::<IpAddr>().unwrap()])
        );
        assert_eq!(s.cni_args.as_ref().unwrap()["k"], "v");
        assert_eq!(
            s.cni_args(),
            vec![
                ("IP".into(), "198.18.5.5/24,2001:db8::5/64".into()),
                ("MAC".into(), "02:00:00:00:00:01".into())
            ]
        );
        let empty = &parse_networks(r#"[{"name":"a","default-route":[]}]"#, "d").unwrap()[0];
        assert_eq!(
            empty.default_route,
            Some(vec![]),
            "the empty list is kept distinct from absent"
        );
        assert!(empty.runtime_config().is_empty() && empty.cni_args().is_empty());
    }

    #[test]
    fn default_network_annotation_takes_one_element_in_the_multus_namespace() {
        let s = parse_default_network("calico", "kube-system").unwrap();
        assert_eq!(s.qualified_name(), "kube-system/calico");
        let s = parse_default_network(
            r#"[{"name":"x","namespace":"n","interface":"eth9"}]"#,
            "kube-system",
        )
        .unwrap();
        assert_eq!(
            (s.qualified_name().as_str(), s.interface.as_deref()),
            ("n/x", Some("eth9"))
        );
        let e = parse_default_network("a,b", "kube-system").unwrap_err();
        assert!(CniError::from_anyhow(&e).msg.contains("exactly one"));
    }

    #[test]
    fn status_entries_follow_the_result() {
        let cluster = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0", "mac": "aa:00:00:00:00:01"},
                           {"name": "eth0", "mac": "aa:00:00:00:00:02", "mtu": 1400, "sandbox": "/run/netns/p"}],
            "ips": [{"address": "198.18.0.5/24", "gateway": "198.18.0.1", "interface": 1},
                    {"address": "2001:db8::5/64", "gateway": "2001:db8::1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "2001:db8::fe"}, {"dst": "198.18.9.0/24", "gw": "198.18.0.9"}],
            "dns": {"nameservers": ["198.18.0.53"]}
        });
        let secondary = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "net1", "mac": "aa:00:00:00:00:03", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "198.18.1.5/24", "interface": 0}]});
        let info =
            json!({"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:03:00.1"}});
        let status = network_status(&[
            StatusInput {
                name: "cluster",
                ifname: "eth0",
                default: true,
                result: &cluster,
                device_info: None,
            },
            StatusInput {
                name: "pods/mv",
                ifname: "net1",
                default: false,
                result: &secondary,
                device_info: Some(&info),
            },
        ]);
        assert_eq!(
            status[0],
            json!({"name": "cluster", "interface": "eth0", "ips": ["198.18.0.5", "2001:db8::5"],
                   "mac": "aa:00:00:00:00:02", "mtu": 1400, "default": true,
                   "dns": {"nameservers": ["198.18.0.53"]}, "gateway": ["198.18.0.1", "2001:db8::fe"]})
        );
        assert_eq!(
            status[1],
            json!({"name": "pods/mv", "interface": "net1", "ips": ["198.18.1.5"], "mac": "aa:00:00:00:00:03",
                   "default": false, "dns": {}, "device-info": info})
        );
    }
}
