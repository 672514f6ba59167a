//! The admin's policy for NetworkAttachmentDefinitions (`nadPolicy` in multihome's own config,
//! never in a NAD): which plugin types, and which host interfaces as `master`, `device`,
//! `hwaddr`, `pciBusID` or `kernelpath`, the NADs of which namespaces may use. Whoever may create
//! a NAD in a namespace could otherwise move the node's uplink into a pod (`host-device` with
//! `device: eth0`) or put a macvlan on any host interface.
//!
//! Pure: [`check`] judges one resolved network; resolution calls it for every NAD before any
//! delegate runs. No policy means no restriction, as in Multus.

use anyhow::Result;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Code, coded};

/// One rule: for NADs in `namespaces`, what they may use. A key left out is not restricted; a
/// list (empty included) admits only what matches one of its patterns (`*` matches any run of
/// characters).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The NAD namespaces this rule is for.
    pub namespaces: Vec<String>,
    /// Plugin types (and IPAM types) allowed.
    pub types: Option<Vec<String>>,
    /// Host interfaces allowed as `master` (macvlan, ipvlan, ...).
    pub master: Option<Vec<String>>,
    /// Host interfaces allowed as `device` (host-device, host-interface).
    pub device: Option<Vec<String>>,
    /// MAC addresses allowed as `hwaddr`.
    pub hwaddr: Option<Vec<String>>,
    /// PCI addresses allowed as `pciBusID` (or `deviceID`).
    #[serde(rename = "pciBusID")]
    pub pci_bus_id: Option<Vec<String>>,
    /// sysfs paths allowed as `kernelpath`.
    pub kernelpath: Option<Vec<String>>,
}

impl Rule {
    fn allowed(&self, key: &str) -> Option<&[String]> {
        match key {
            "master" => self.master.as_deref(),
            "device" => self.device.as_deref(),
            "hwaddr" => self.hwaddr.as_deref(),
            "pciBusID" | "deviceID" => self.pci_bus_id.as_deref(),
            "kernelpath" => self.kernelpath.as_deref(),
            _ => None,
        }
    }
}

/// The plugin keys that name a host interface, and the rule key that governs each.
const HOST_KEYS: [(&str, &str); 6] = [
    ("master", "master"),
    ("device", "device"),
    ("hwaddr", "hwaddr"),
    ("pciBusID", "pciBusID"),
    ("deviceID", "pciBusID"),
    ("kernelpath", "kernelpath"),
];

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut text) = text.strip_prefix(head) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let tail = parts.pop().unwrap_or_default();
    for part in parts {
        match text.find(part) {
            Some(at) => text = &text[at + part.len()..],
            None => return false,
        }
    }
    text.len() >= tail.len() && text.ends_with(tail)
}

fn any(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|p| glob(p, text))
}

/// Judges the NAD `namespace/name` resolved to a network of `plugins`: the first rule whose
/// `namespaces` match decides; none matching is a denial. Returns the index of the admitting
/// rule.
pub fn check(rules: &[Rule], namespace: &str, name: &str, plugins: &[Value]) -> Result<usize> {
    let nad = format!("NetworkAttachmentDefinition {namespace}/{name}");
    let Some((index, rule)) = rules
        .iter()
        .enumerate()
        .find(|(_, r)| any(&r.namespaces, namespace))
    else {
        return Err(coded(
            Code::InvalidConfig,
            format!("{nad}: no nadPolicy rule admits NADs of namespace {namespace:?}"),
        ));
    };
    let deny = |what: String, allowed: &[String]| {
        coded(
            Code::InvalidConfig,
            format!(
                "{nad}: {what} is not allowed by nadPolicy rule {index} (namespaces {:?}), which allows {allowed:?}",
                rule.namespaces
            ),
        )
    };
    for (i, plugin) in plugins.iter().enumerate() {
        let kind = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ipam = plugin
            .pointer("/ipam/type")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        if let Some(types) = &rule.types {
            for (what, t) in [("type", Some(kind)), ("ipam type", ipam)] {
                if let Some(t) = t.filter(|t| !any(types, t)) {
                    return Err(deny(format!("plugin {i} {what} {t:?}"), types));
                }
            }
        }
        for (key, governed_by) in HOST_KEYS {
            let Some(value) = plugin
                .get(key)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
            else {
                continue;
            };
            if let Some(allowed) = rule.allowed(governed_by) {
                if !any(allowed, value) {
                    return Err(deny(
                        format!("plugin {i} ({kind}) {key:?} {value:?}"),
                        allowed,
                    ));
                }
            }
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::CniError;

    /// The plugins of a network config: its `plugins` list, or the config itself.
    fn net(v: Value) -> Vec<Value> {
        match v.get("plugins") {
            Some(Value::Array(plugins)) => plugins.clone(),
            _ => vec![v],
        }
    }

    fn rules() -> Vec<Rule> {
        serde_json::from_value(json!([
            {"namespaces": ["kube-system", "infra-*"]},
            {"namespaces": ["*"], "types": ["macvlan", "ipvlan", "host-local", "static", "tuning"],
             "master": ["ens2f*", "bond0"], "device": [], "hwaddr": [], "pciBusID": [], "kernelpath": []}
        ]))
        .unwrap()
    }

    #[test]
    fn glob_matches_stars_anywhere() {
        for (p, t, ok) in [
            ("*", "", true),
            ("ens*", "ens2f0", true),
            ("ens*", "eth0", false),
            ("*f0", "ens2f0", true),
            ("e*s*0", "ens2f0", true),
            ("e*s*1", "ens2f0", false),
            ("a*a", "a", false),
            ("bond0", "bond0", true),
            ("bond0", "bond01", false),
        ] {
            assert_eq!(glob(p, t), ok, "{p} ~ {t}");
        }
    }

    #[test]
    fn the_first_matching_rule_decides_and_names_field_and_rule() {
        let macvlan = net(
            json!({"name": "m", "type": "macvlan", "master": "ens2f1", "ipam": {"type": "host-local"}}),
        );
        assert_eq!(check(&rules(), "tenant", "m", &macvlan).unwrap(), 1);
        let uplink = net(json!({"name": "u", "type": "host-device", "device": "eth0"}));
        assert_eq!(
            check(&rules(), "infra-net", "u", &uplink).unwrap(),
            0,
            "admins' namespaces"
        );
        for (v, fragment) in [
            (
                json!({"name": "u", "type": "host-device", "device": "eth0"}),
                r#"plugin 0 type "host-device""#,
            ),
            (
                json!({"name": "m", "type": "macvlan", "master": "eth0"}),
                r#"plugin 0 (macvlan) "master" "eth0""#,
            ),
            (
                json!({"name": "m", "type": "macvlan", "master": "ens2f0", "ipam": {"type": "dhcp"}}),
                r#"ipam type "dhcp""#,
            ),
            (
                json!({"name": "h", "plugins": [{"type": "tuning"}, {"type": "ipvlan", "pciBusID": "0000:03:00.1"}]}),
                r#"plugin 1 (ipvlan) "pciBusID""#,
            ),
            (
                json!({"name": "h", "type": "ipvlan", "deviceID": "0000:03:00.1"}),
                r#""deviceID" "0000:03:00.1""#,
            ),
            (
                json!({"name": "h", "type": "ipvlan", "kernelpath": "/sys/devices/x"}),
                r#""kernelpath""#,
            ),
            (
                json!({"name": "h", "type": "ipvlan", "hwaddr": "02:00:00:00:00:01"}),
                r#""hwaddr""#,
            ),
        ] {
            let e = CniError::from_anyhow(
                &check(&rules(), "tenant", "n", &net(v.clone())).unwrap_err(),
            );
            assert_eq!(e.code, 7);
            assert!(
                e.msg.contains(fragment)
                    && e.msg.contains("tenant/n")
                    && e.msg.contains("nadPolicy rule 1"),
                "{v}: {}",
                e.msg
            );
        }
        let only_admins: Vec<Rule> =
            serde_json::from_value(json!([{"namespaces": ["kube-system"]}])).unwrap();
        let e = CniError::from_anyhow(&check(&only_admins, "tenant", "m", &macvlan).unwrap_err());
        assert!(
            e.msg.contains("no nadPolicy rule admits") && e.msg.contains("\"tenant\""),
            "{}",
            e.msg
        );
    }

    #[test]
    fn a_misspelt_key_is_refused_rather_than_ignored() {
        let r = serde_json::from_value::<Vec<Rule>>(json!([{"namespaces": ["*"], "masters": []}]));
        assert!(r.unwrap_err().to_string().contains("masters"));
    }
}
