//! CNI results of every version, and conversion between them.
//!
//! Results stay `serde_json::Value` so that keys multihome does not know (vendor extensions,
//! newer spec fields) survive a pass through it. Conversion follows libcni's rules
//! (`pkg/types/{020,040,100}`): see `shared/reference/cni-spec.md` §1.4.

use anyhow::{Context, Result, bail};
use ipnetwork::IpNetwork;
use serde_json::{Map, Value, json};

use super::version::{ResultFormat, Version};
use crate::error::{Code, coded};

/// Interface fields that exist only from 1.1.0 on and are dropped below 1.0.0.
const V11_INTERFACE_FIELDS: [&str; 3] = ["mtu", "socketPath", "pciID"];

/// The version a result declares, or `fallback` when it has none (libcni fills it in the same way).
pub fn result_version(result: &Value, fallback: Version) -> Result<Version> {
    match result.get("cniVersion").and_then(Value::as_str) {
        Some(v) if !v.is_empty() => Version::parse(v),
        _ => Ok(fallback),
    }
}

/// Converts `result` (declaring its own `cniVersion`, else `fallback`) to version `to`.
pub fn convert(result: &Value, fallback: Version, to: Version) -> Result<Value> {
    let from = result_version(result, fallback)?;
    let Value::Object(obj) = result else {
        return Err(coded(
            Code::Decode,
            format!("CNI result is not a JSON object: {result}"),
        ));
    };
    let current = match from.result_format() {
        ResultFormat::V02 => v02_to_current(obj)?,
        ResultFormat::V04 | ResultFormat::V1 => v04_to_current(obj),
    };
    // As libcni's typed results do: an address that is no CIDR fails every conversion, not
    // only the ones that happen to look at its family.
    for (i, ip) in array(&current, "ips").iter().enumerate() {
        let addr = ip.get("address").and_then(Value::as_str).ok_or_else(|| {
            coded(
                Code::Decode,
                format!("CNI result ips[{i}] has no \"address\" string"),
            )
        })?;
        parse_cidr(addr).map_err(|e| coded(Code::Decode, format!("{e:#}")))?;
    }
    let mut out = match to.result_format() {
        ResultFormat::V1 => current,
        ResultFormat::V04 => current_to_v04(current)?,
        ResultFormat::V02 => current_to_v02(&current)?,
    };
    out.insert("cniVersion".into(), Value::String(to.to_string()));
    Ok(Value::Object(out))
}

fn parse_cidr(s: &str) -> Result<IpNetwork> {
    s.parse::<IpNetwork>()
        .with_context(|| format!("invalid CIDR {s:?} in CNI result"))
}

fn array<'a>(obj: &'a Map<String, Value>, key: &str) -> &'a [Value] {
    obj.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// 0.3/0.4/1.x -> 1.x shape: drop `ips[].version`.
fn v04_to_current(obj: &Map<String, Value>) -> Map<String, Value> {
    let mut out = obj.clone();
    if let Some(Value::Array(ips)) = out.get_mut("ips") {
        for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
            ip.remove("version");
        }
    }
    out
}

/// 0.1/0.2 -> 1.x shape: `ip4`/`ip6` become `ips`, their routes are concatenated.
fn v02_to_current(obj: &Map<String, Value>) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for key in ["ip4", "ip6"] {
        let Some(fam) = obj.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        let ip = fam
            .get("ip")
            .and_then(Value::as_str)
            .ok_or_else(|| coded(Code::Decode, format!("0.2.0 result: {key}.ip missing")))?;
        let mut entry = Map::new();
        entry.insert("address".into(), json!(ip));
        if let Some(gw) = fam.get("gateway").filter(|g| !g.is_null()) {
            entry.insert("gateway".into(), gw.clone());
        }
        ips.push(Value::Object(entry));
        routes.extend(
            fam.get("routes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    for (k, v) in obj {
        if k != "ip4" && k != "ip6" {
            out.insert(k.clone(), v.clone());
        }
    }
    out.insert("ips".into(), Value::Array(ips));
    if !routes.is_empty() {
        out.insert("routes".into(), Value::Array(routes));
    }
    Ok(out)
}

/// 1.x -> 0.3/0.4: add `ips[].version`, drop the 1.1 interface fields.
fn current_to_v04(mut obj: Map<String, Value>) -> Result<Map<String, Value>> {
    if let Some(Value::Array(ips)) = obj.get_mut("ips") {
        for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
            let addr = ip
                .get("address")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let version = if parse_cidr(addr)?.is_ipv4() {
                "4"
            } else {
                "6"
            };
            ip.insert("version".into(), json!(version));
        }
    }
    if let Some(Value::Array(ifaces)) = obj.get_mut("interfaces") {
        for iface in ifaces.iter_mut().filter_map(Value::as_object_mut) {
            for field in V11_INTERFACE_FIELDS {
                iface.remove(field);
            }
        }
    }
    Ok(obj)
}

/// 1.x -> 0.2: the first address of each family, routes split by family, no interfaces.
fn current_to_v02(obj: &Map<String, Value>) -> Result<Map<String, Value>> {
    let mut families: [Option<Map<String, Value>>; 2] = [None, None];
    for ip in array(obj, "ips") {
        let addr = ip
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let slot = usize::from(!parse_cidr(addr)?.is_ipv4());
        if families[slot].is_none() {
            let mut fam = Map::new();
            fam.insert("ip".into(), json!(addr));
            if let Some(gw) = ip.get("gateway").filter(|g| !g.is_null()) {
                fam.insert("gateway".into(), gw.clone());
            }
            families[slot] = Some(fam);
        }
    }
    if families.iter().all(Option::is_none) {
        bail!(coded(
            Code::IncompatibleVersion,
            "cannot convert result to CNI 0.2.0: it has no IP addresses",
        ));
    }
    for route in array(obj, "routes") {
        let dst = route.get("dst").and_then(Value::as_str).unwrap_or_default();
        let slot = usize::from(!parse_cidr(dst)?.is_ipv4());
        if let Some(fam) = families[slot].as_mut() {
            let mut r = Map::new();
            r.insert("dst".into(), json!(dst));
            if let Some(gw) = route.get("gw").filter(|g| !g.is_null()) {
                r.insert("gw".into(), gw.clone());
            }
            let routes = fam
                .entry("routes")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = routes {
                list.push(Value::Object(r));
            }
        }
    }
    let mut out = Map::new();
    for (key, fam) in ["ip4", "ip6"].into_iter().zip(families) {
        if let Some(fam) = fam {
            out.insert(key.into(), Value::Object(fam));
        }
    }
    if let Some(dns) = obj.get("dns") {
        out.insert("dns".into(), dns.clone());
    }
    Ok(out)
}

/// Replaces a result's default routes of one family (IPv4 when `v4`) with routes through
/// `gateways` (`None`: a default route without next hop). Works on every result version.
pub fn set_default_routes(
    result: &mut Value,
    fallback: Version,
    v4: bool,
    gateways: &[Option<std::net::IpAddr>],
) -> Result<()> {
    let dst = if v4 { "0.0.0.0/0" } else { "::/0" };
    let is_default = |r: &Value| {
        r.get("dst")
            .and_then(Value::as_str)
            .and_then(|d| d.parse::<IpNetwork>().ok())
            .is_some_and(|n| n.prefix() == 0 && n.is_ipv4() == v4)
    };
    let legacy = result_version(result, fallback)?.result_format() == ResultFormat::V02;
    let Value::Object(obj) = result else {
        return Err(coded(Code::Decode, "CNI result is not a JSON object"));
    };
    let holder = if legacy {
        match obj
            .get_mut(if v4 { "ip4" } else { "ip6" })
            .and_then(Value::as_object_mut)
        {
            Some(fam) => fam,
            // 0.2.0 cannot express a route of a family it has no address of.
            None => return Ok(()),
        }
    } else {
        obj
    };
    if let Some(Value::Array(routes)) = holder.get_mut("routes") {
        routes.retain(|r| !is_default(r));
    }
    for gw in gateways {
        let route = match gw {
            Some(gw) => json!({"dst": dst, "gw": gw.to_string()}),
            None => json!({"dst": dst}),
        };
        if let Value::Array(routes) = holder
            .entry("routes")
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            routes.push(route);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn v1_result() -> Value {
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
                {"name": "eth0", "mac": "aa:bb:cc:00:00:02", "sandbox": "/run/netns/p",
                 "mtu": 1400, "socketPath": "/s", "pciID": "0000:00:01.0"}
            ],
            "ips": [
                {"address": "198.18.0.2/24", "gateway": "198.18.0.1", "interface": 1},
                {"address": "2001:db8::2/64", "gateway": "2001:db8::1", "interface": 1},
                {"address": "198.18.9.2/24", "interface": 1}
            ],
            "routes": [
                {"dst": "0.0.0.0/0", "gw": "198.18.0.1", "mtu": 1300},
                {"dst": "::/0", "gw": "2001:db8::1"}
            ],
            "dns": {"nameservers": ["198.18.0.53"]},
            "vendorKey": {"kept": true}
        })
    }

    fn v02_result() -> Value {
        json!({
            "cniVersion": "0.2.0",
            "ip4": {"ip": "198.18.0.2/24", "gateway": "198.18.0.1",
                    "routes": [{"dst": "0.0.0.0/0", "gw": "198.18.0.1"}]},
            "ip6": {"ip": "2001:db8::2/64", "routes": [{"dst": "::/0"}]},
            "dns": {}
        })
    }

    #[test]
    fn v1_to_v04_adds_version_drops_11_interface_fields_keeps_route_extras() {
        for to in ["0.3.0", "0.3.1", "0.4.0"] {
            let out = convert(&v1_result(), v("1.1.0"), v(to)).unwrap();
            assert_eq!(out["cniVersion"], to);
            assert_eq!(out["ips"][0]["version"], "4");
            assert_eq!(out["ips"][1]["version"], "6");
            assert_eq!(out["ips"][1]["interface"], 1);
            let eth0 = out["interfaces"][1].as_object().unwrap();
            assert!(!eth0.contains_key("mtu") && !eth0.contains_key("socketPath"));
            assert!(!eth0.contains_key("pciID"));
            assert_eq!(eth0["sandbox"], "/run/netns/p");
            assert_eq!(
                out["routes"][0]["mtu"], 1300,
                "route extras survive like in Go"
            );
            assert_eq!(out["vendorKey"]["kept"], true);
        }
    }

    #[test]
    fn v04_to_v1_drops_version_only() {
        let v04 = convert(&v1_result(), v("1.1.0"), v("0.4.0")).unwrap();
        for to in ["1.0.0", "1.1.0"] {
            let out = convert(&v04, v("0.4.0"), v(to)).unwrap();
            assert_eq!(out["cniVersion"], to);
            assert!(out["ips"][0].get("version").is_none());
            assert_eq!(out["ips"][0]["address"], "198.18.0.2/24");
            assert_eq!(out["dns"]["nameservers"][0], "198.18.0.53");
        }
    }

    #[test]
    fn between_1_0_and_1_1_only_the_version_changes() {
        let out = convert(&v1_result(), v("1.1.0"), v("1.0.0")).unwrap();
        let mut expected = v1_result();
        expected["cniVersion"] = json!("1.0.0");
        assert_eq!(out, expected);
    }

    #[test]
    fn within_the_04_family_only_the_version_changes() {
        let v04 = convert(&v1_result(), v("1.1.0"), v("0.4.0")).unwrap();
        let out = convert(&v04, v("0.4.0"), v("0.3.0")).unwrap();
        let mut expected = v04.clone();
        expected["cniVersion"] = json!("0.3.0");
        assert_eq!(out, expected);
    }

    #[test]
    fn v02_to_newer_builds_ips_and_concatenates_routes() {
        let out = convert(&v02_result(), v("0.2.0"), v("0.4.0")).unwrap();
        assert_eq!(
            out["ips"][0],
            json!({"address": "198.18.0.2/24", "gateway": "198.18.0.1", "version": "4"})
        );
        assert_eq!(
            out["ips"][1],
            json!({"address": "2001:db8::2/64", "version": "6"})
        );
        assert_eq!(out["routes"].as_array().unwrap().len(), 2);
        assert!(out.get("interfaces").is_none());
        let out1 = convert(&v02_result(), v("0.2.0"), v("1.0.0")).unwrap();
        assert!(out1["ips"][0].get("version").is_none());
        assert!(out1.get("ip4").is_none());
    }

    #[test]
    fn newer_to_v02_keeps_first_address_per_family_and_splits_routes() {
        for to in ["0.1.0", "0.2.0"] {
            let out = convert(&v1_result(), v("1.1.0"), v(to)).unwrap();
            assert_eq!(out["cniVersion"], to);
            assert_eq!(out["ip4"]["ip"], "198.18.0.2/24", "first v4 only");
            assert_eq!(out["ip4"]["gateway"], "198.18.0.1");
            assert_eq!(
                out["ip4"]["routes"],
                json!([{"dst": "0.0.0.0/0", "gw": "198.18.0.1"}])
            );
            assert_eq!(
                out["ip6"]["routes"],
                json!([{"dst": "::/0", "gw": "2001:db8::1"}])
            );
            assert!(out.get("interfaces").is_none() && out.get("ips").is_none());
            assert_eq!(out["dns"]["nameservers"][0], "198.18.0.53");
        }
    }

    #[test]
    fn v02_round_trip_through_v04() {
        let up = convert(&v02_result(), v("0.2.0"), v("0.3.1")).unwrap();
        let down = convert(&up, v("0.3.1"), v("0.2.0")).unwrap();
        assert_eq!(down, v02_result());
    }

    /// Found by the result_conversion fuzz target: 0.3.0 -> 1.1.0 let a broken address through,
    /// and only the way back failed on it.
    #[test]
    fn an_address_that_is_no_cidr_fails_every_conversion() {
        let missing = json!({"cniVersion": "1.0.0", "ips": [{"gateway": "198.18.0.1"}]});
        let e = convert(&missing, Version::new(1, 0, 0), Version::new(1, 1, 0)).unwrap_err();
        assert!(format!("{e:#}").contains("ips[0]"), "{e:#}");
        let r =
            json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "19881..0.2/24"}]});
        for to in ["0.4.0", "1.0.0", "1.1.0", "0.2.0"] {
            let e = convert(&r, Version::new(0, 4, 0), Version::parse(to).unwrap()).unwrap_err();
            let e = crate::error::CniError::from_anyhow(&e);
            assert_eq!(e.code, 6, "{to}");
            assert!(e.msg.contains("19881..0.2/24"), "{to}: {}", e.msg);
        }
    }

    /// Every (from, to) pair of supported versions: the output has exactly the shape of `to`.
    #[test]
    fn conversion_table_over_every_version_pair() {
        use crate::cni::version::SUPPORTED;
        for from in SUPPORTED {
            let source = convert(&v1_result(), v("1.1.0"), v(from)).unwrap();
            for to in SUPPORTED {
                let out = convert(&source, v(from), v(to))
                    .unwrap_or_else(|e| panic!("{from} -> {to}: {e:#}"));
                assert_eq!(out["cniVersion"], to, "{from} -> {to}");
                match v(to).result_format() {
                    ResultFormat::V02 => {
                        assert_eq!(out["ip4"]["ip"], "198.18.0.2/24", "{from} -> {to}");
                        assert!(out.get("ips").is_none(), "{from} -> {to}");
                    }
                    ResultFormat::V04 => {
                        assert_eq!(out["ips"][0]["version"], "4", "{from} -> {to}");
                        assert_eq!(out["ips"][0]["address"], "198.18.0.2/24", "{from} -> {to}");
                    }
                    ResultFormat::V1 => {
                        assert!(out["ips"][0].get("version").is_none(), "{from} -> {to}");
                        assert_eq!(out["ips"][0]["gateway"], "198.18.0.1", "{from} -> {to}");
                    }
                }
            }
        }
    }

    #[test]
    fn ip_less_result_cannot_become_v02() {
        let r = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "dns": {}});
        let err = convert(&r, v("1.0.0"), v("0.2.0")).unwrap_err();
        let cni = crate::error::CniError::from_anyhow(&err);
        assert_eq!(cni.code, 1);
        assert!(cni.msg.contains("no IP addresses"));
        assert!(convert(&r, v("1.0.0"), v("0.4.0")).is_ok());
    }

    #[test]
    fn missing_version_uses_fallback() {
        let mut r = v02_result();
        r.as_object_mut().unwrap().remove("cniVersion");
        let out = convert(&r, v("0.2.0"), v("1.0.0")).unwrap();
        assert_eq!(out["ips"][0]["address"], "198.18.0.2/24");
    }

    #[test]
    fn default_routes_are_replaced_per_family_in_every_format() {
        let gw: std::net::IpAddr = "198.18.9.1".parse().unwrap();
        let mut r = v1_result();
        set_default_routes(&mut r, v("1.1.0"), true, &[Some(gw)]).unwrap();
        assert_eq!(
            r["routes"],
            json!([{"dst": "::/0", "gw": "2001:db8::1"}, {"dst": "0.0.0.0/0", "gw": "198.18.9.1"}])
        );
        set_default_routes(&mut r, v("1.1.0"), false, &[]).unwrap();
        assert_eq!(
            r["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "198.18.9.1"}])
        );
        let mut none = json!({"cniVersion": "1.0.0", "ips": []});
        set_default_routes(&mut none, v("1.0.0"), true, &[None]).unwrap();
        assert_eq!(none["routes"], json!([{"dst": "0.0.0.0/0"}]));
        let mut old = v02_result();
        set_default_routes(&mut old, v("0.2.0"), true, &[]).unwrap();
        assert_eq!(old["ip4"]["routes"], json!([]));
        assert_eq!(
            old["ip6"]["routes"],
            json!([{"dst": "::/0"}]),
            "the other family is untouched"
        );
    }

    #[test]
    fn bad_address_is_reported() {
        let r = json!({"cniVersion": "1.0.0", "ips": [{"address": "nonsense"}]});
        let err = convert(&r, v("1.0.0"), v("0.4.0")).unwrap_err();
        assert!(format!("{err:#}").contains("nonsense"));
    }
}
