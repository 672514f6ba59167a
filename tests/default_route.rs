//! `default-route` end to end: the pod namespace's routes after ADD, and the returned result, the
//! cache and network-status agreeing with them.

use serde_json::{Value, json};

use crate::kubernetes::{Kube, NS};

/// `(gateway, dev)` of the pod's default routes of one family.
fn defaults(k: &Kube, v6: bool) -> Vec<(String, String)> {
    let family = if v6 { "-6" } else { "-4" };
    let out = crate::harness::sh(&[
        "ip",
        "-n",
        &k.w.pod.name,
        family,
        "-j",
        "route",
        "show",
        "default",
    ]);
    let routes: Vec<Value> = serde_json::from_str(&out).unwrap();
    routes
        .iter()
        .map(|r| {
            (
                r["gateway"].as_str().unwrap_or("").to_string(),
                r["dev"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Default routes (dst, gw) a result lists.
fn result_defaults(result: &Value) -> Vec<(String, Option<String>)> {
    result["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["dst"] == "0.0.0.0/0" || r["dst"] == "::/0")
        .map(|r| {
            (
                r["dst"].as_str().unwrap().to_string(),
                r["gw"].as_str().map(String::from),
            )
        })
        .collect()
}

fn cached(k: &Kube) -> Vec<Value> {
    k.w.cached_results().into_iter().map(|(_, r)| r).collect()
}

fn add_pod(k: &Kube, name: &str, networks: Value) -> String {
    k.pod(
        name,
        json!({"k8s.v1.cni.cncf.io/networks": networks.to_string()}),
    )
}

#[test]
fn a_gateway_moves_the_default_route_to_the_attachment() {
    let k = Kube::new("drgw");
    let uid = add_pod(
        &k,
        "p",
        json!([{"name": "macvlan-net", "default-route": ["198.18.1.1", "fe80::1"]}]),
    );
    let conf = k.conf();
    let out = k.run("ADD", &conf, "p", &uid).success().stdout;

    assert_eq!(
        defaults(&k, false),
        [("198.18.1.1".to_string(), "net1".to_string())],
        "IPv4 default via net1 only"
    );
    assert_eq!(
        defaults(&k, true),
        [("fe80::1".to_string(), "net1".to_string())],
        "link-local IPv6 gateway"
    );
    assert_eq!(
        result_defaults(&out),
        vec![],
        "the returned cluster result lost its default route"
    );
    let cache = cached(&k);
    assert_eq!(result_defaults(&cache[0]), vec![]);
    assert_eq!(
        result_defaults(&cache[1]),
        [
            ("0.0.0.0/0".to_string(), Some("198.18.1.1".to_string())),
            ("::/0".to_string(), Some("fe80::1".to_string()))
        ]
    );
    // `default` marks the cluster-wide default network's attachment (network spec 5.3.5), not
    // the one that carries the default route: `gateway` tells that.
    let status = k.status("p");
    assert_eq!(
        (status[0]["default"].as_bool(), status[0].get("gateway")),
        (Some(true), None)
    );
    assert_eq!(status[1]["default"], false);
    assert_eq!(status[1]["gateway"], json!(["198.18.1.1", "fe80::1"]));

    k.w.run("CHECK", &conf).success();
    k.run("DEL", &conf, "p", &uid).success();
    k.assert_clean();
}

#[test]
fn the_empty_list_keeps_the_attachments_own_default_route_only() {
    let k = Kube::new("drempty");
    let mut own = k.w.macvlan_net("1.0.0", "mvm0");
    own["name"] = json!("own-default");
    own["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    k.api.add_nad(NS, "own-default", Some(&own), json!({}));
    let uid = add_pod(
        &k,
        "p",
        json!([{"name": "own-default", "default-route": []}]),
    );
    let conf = k.conf();
    let out = k.run("ADD", &conf, "p", &uid).success().stdout;
    assert_eq!(
        defaults(&k, false),
        [("198.18.1.1".to_string(), "net1".to_string())]
    );
    assert_eq!(result_defaults(&out), vec![]);
    assert_eq!(
        result_defaults(&cached(&k)[1]),
        [("0.0.0.0/0".to_string(), Some("198.18.1.1".to_string()))]
    );
    let status = k.status("p");
    assert_eq!(status[1]["gateway"], json!(["198.18.1.1"]));
    assert_eq!(
        (
            status[0]["default"].as_bool(),
            status[1]["default"].as_bool()
        ),
        (Some(true), Some(false)),
        "default stays on the cluster network"
    );
    k.w.run("CHECK", &conf).success();
    k.run("DEL", &conf, "p", &uid).success();
    k.assert_clean();

    // The empty list on a network whose delegate installs no default route changes nothing.
    let uid = add_pod(&k, "q", json!([{"name": "ptp-net", "default-route": []}]));
    k.run("ADD", &conf, "q", &uid).success();
    assert_eq!(
        defaults(&k, false),
        [("198.18.0.1".to_string(), "eth0".to_string())]
    );
    assert_eq!(k.status("q")[0]["default"], true);
    k.run("DEL", &conf, "q", &uid).success();
    k.assert_clean();
}

#[test]
fn dual_stack_keeps_the_ipv6_default_when_only_ipv4_is_requested() {
    let k = Kube::new("drdual");
    let mut conf = k.conf();
    let mut cluster = k.w.cluster_net("1.0.0");
    cluster["plugins"][0]["ipam"] = json!({
        "type": "host-local", "dataDir": k.w.ipam_dir(),
        "ranges": [[{"subnet": "198.18.0.0/24"}], [{"subnet": "2001:db8::/64"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    });
    conf["delegates"] = json!([cluster]);
    let uid = add_pod(
        &k,
        "p",
        json!([{"name": "macvlan-net", "default-route": ["198.18.1.1"]}]),
    );
    let out = k.run("ADD", &conf, "p", &uid).success().stdout;
    assert_eq!(
        defaults(&k, false),
        [("198.18.1.1".to_string(), "net1".to_string())]
    );
    assert_eq!(
        defaults(&k, true),
        [("2001:db8::1".to_string(), "eth0".to_string())],
        "IPv6 default untouched"
    );
    assert_eq!(
        result_defaults(&out),
        [("::/0".to_string(), None)],
        "the cluster result keeps its IPv6 default"
    );
    let status = k.status("p");
    assert_eq!(status[0]["gateway"], json!(["2001:db8::1"]));
    assert_eq!(status[1]["gateway"], json!(["198.18.1.1"]));
    k.run("DEL", &conf, "p", &uid).success();
    k.assert_clean();
}

#[test]
fn conflicting_default_route_requests_are_rejected_before_anything_runs() {
    let k = Kube::new("drbad");
    let conf = k.conf();
    let cases = [
        (
            json!([{"name": "macvlan-net", "default-route": []}, {"name": "ptp-net", "default-route": ["198.18.2.1"]}]),
            "more than one network",
        ),
        (
            json!([{"name": "macvlan-net", "default-route": ["198.18.1.1", "198.18.1.2"]}]),
            "more than one IPv4 gateway",
        ),
    ];
    for (i, (networks, fragment)) in cases.into_iter().enumerate() {
        let uid = add_pod(&k, &format!("p{i}"), networks);
        let err = k.run("ADD", &conf, &format!("p{i}"), &uid).failure();
        assert_eq!(err["code"], 7);
        assert!(err["msg"].as_str().unwrap().contains(fragment), "{err}");
        assert!(!k.w.ipam_dir().exists(), "no delegate ran");
        k.assert_clean();
    }
}

#[test]
fn an_unreachable_gateway_fails_add_and_rolls_back() {
    let k = Kube::new("drunreach");
    let conf = k.conf();
    let uid = add_pod(
        &k,
        "p",
        json!([{"name": "macvlan-net", "default-route": ["198.18.99.1"]}]),
    );
    let err = k.run("ADD", &conf, "p", &uid).failure();
    assert!(
        err["msg"].as_str().unwrap().contains("198.18.99.1"),
        "{err}"
    );
    k.assert_clean();
}

#[test]
fn the_cluster_attachment_itself_may_carry_the_request() {
    // A ptp cluster network (from the default-network annotation) installs no default route;
    // asking for one through it puts it there, and the status and result say so.
    let k = Kube::new("drcluster");
    let mut alt = k.w.ptp_net("1.0.0");
    alt["name"] = json!("alt-cluster");
    alt["ipam"]["subnet"] = json!("198.18.7.0/24");
    k.api
        .add_nad("kube-system", "alt-cluster", Some(&alt), json!({}));
    let conf = k.conf();
    let default_network =
        json!([{"name": "alt-cluster", "default-route": ["198.18.7.1"]}]).to_string();
    let uid = k.pod("p", json!({"v1.multus-cni.io/default-network": default_network, "k8s.v1.cni.cncf.io/networks": "macvlan-net"}));
    let out = k.run("ADD", &conf, "p", &uid).success().stdout;
    assert_eq!(
        defaults(&k, false),
        [("198.18.7.1".to_string(), "eth0".to_string())]
    );
    assert_eq!(
        result_defaults(&out),
        [("0.0.0.0/0".to_string(), Some("198.18.7.1".to_string()))]
    );
    let status = k.status("p");
    assert_eq!(
        (status[0]["default"].as_bool(), status[0]["gateway"].clone()),
        (Some(true), json!(["198.18.7.1"]))
    );
    assert_eq!(status[1]["default"], false);
    k.w.run("CHECK", &conf).success();
    k.run("DEL", &conf, "p", &uid).success();
    k.assert_clean();
}
