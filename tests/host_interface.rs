//! The built-in `host-interface` delegate: a veth end made in the test's host namespace is moved
//! into the pod and given back.

use serde_json::{Value, json};

use crate::harness::{World, sh};

/// A veth pair in the host namespace; returns the MAC of `name`. Its MTU is set to 1400 so
/// keeping it is visible.
fn host_link(w: &World, name: &str) -> String {
    let peer = format!("{name}p");
    sh(&[
        "ip",
        "-n",
        &w.host.name,
        "link",
        "add",
        name,
        "mtu",
        "1400",
        "type",
        "veth",
        "peer",
        "name",
        &peer,
    ]);
    link_info(w, &w.host.name, name).unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string()
}

fn link_info(_w: &World, netns: &str, name: &str) -> Option<Value> {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "-j", "link", "show", name])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0).cloned()
}

fn net(selector: Value, ipam: Value) -> Value {
    let mut n =
        json!({"cniVersion": "1.0.0", "name": "hostnet", "type": "host-interface", "ipam": ipam});
    for (k, v) in selector.as_object().unwrap() {
        n[k] = v.clone();
    }
    n
}

fn static_ipam() -> Value {
    json!({"type": "static", "addresses": [{"address": "198.18.6.10/24", "gateway": "198.18.6.1"}],
           "routes": [{"dst": "198.18.60.0/24"}]})
}

#[test]
fn moves_a_host_interface_in_with_static_ipam_and_gives_it_back() {
    let w = World::new("hidev");
    let mac = host_link(&w, "hostveth0");
    let conf = w.conf(
        "1.0.0",
        vec![
            w.cluster_net("1.0.0"),
            net(json!({"device": "hostveth0"}), static_ipam()),
        ],
    );
    let out = w.run("ADD", &conf).success().stdout;
    assert_eq!(
        out["interfaces"].as_array().unwrap().last().unwrap()["name"],
        "eth0",
        "cluster result returned"
    );

    assert!(
        link_info(&w, &w.host.name, "hostveth0").is_none(),
        "gone from the host"
    );
    let moved = link_info(&w, &w.pod.name, "net1").expect("net1 in the pod");
    assert_eq!(moved["address"], mac.as_str(), "MAC kept");
    assert_eq!(moved["mtu"], 1400, "MTU kept");
    assert!(moved["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(w.pod.addrs_of("net1"), ["198.18.6.10/24"]);
    let routes = w.pod.exec(&["ip", "route", "show", "198.18.60.0/24"]);
    assert!(
        routes.contains("via 198.18.6.1 dev net1"),
        "route via the IPAM gateway: {routes}"
    );

    let cached = w.cached_results();
    let result = &cached[1].1;
    assert_eq!(result["interfaces"][0]["name"], "net1");
    assert_eq!(result["interfaces"][0]["mac"], mac.as_str());
    assert_eq!(result["interfaces"][0]["sandbox"], w.pod.path());
    assert_eq!(result["ips"][0]["address"], "198.18.6.10/24");
    assert_eq!(result["ips"][0]["interface"], 0);
    assert!(
        result["interfaces"][0].get("mtu").is_none(),
        "no 1.1 fields in a 1.0.0 result"
    );

    w.run("CHECK", &conf).success();
    w.run("DEL", &conf).success();
    let back =
        link_info(&w, &w.host.name, "hostveth0").expect("back in the host under its old name");
    assert_eq!(
        (back["address"].as_str(), back["mtu"].as_u64()),
        (Some(mac.as_str()), Some(1400))
    );
    assert_eq!(w.pod.links(), Vec::<String>::new());
    w.run("DEL", &conf).success();
}

#[test]
fn selects_by_hwaddr_and_kernelpath() {
    let w = World::new("hisel");
    let mac = host_link(&w, "hostveth1");
    let kernelpath = w
        .host
        .exec(&["readlink", "-f", "/sys/class/net/hostveth1"])
        .trim()
        .to_string();
    for selector in [
        json!({"hwaddr": mac.to_uppercase()}),
        json!({"kernelpath": kernelpath}),
    ] {
        let conf = w.conf(
            "1.0.0",
            vec![w.cluster_net("1.0.0"), net(selector.clone(), static_ipam())],
        );
        w.run("ADD", &conf).success();
        assert_eq!(
            link_info(&w, &w.pod.name, "net1").unwrap()["address"],
            mac.as_str(),
            "{selector}"
        );
        w.run("DEL", &conf).success();
        assert!(
            link_info(&w, &w.host.name, "hostveth1").is_some(),
            "{selector}"
        );
    }
}

#[test]
fn a_failing_later_attachment_gives_the_interface_back() {
    let w = World::new("hiroll");
    host_link(&w, "hostveth2");
    let conf = w.conf(
        "1.0.0",
        vec![
            w.cluster_net("1.0.0"),
            net(json!({"device": "hostveth2"}), static_ipam()),
            w.macvlan_net("1.0.0", "nosuchmaster0"),
        ],
    );
    let err = w.run("ADD", &conf).failure();
    assert!(err["msg"].as_str().unwrap().contains("mvnet"), "{err}");
    assert!(
        link_info(&w, &w.host.name, "hostveth2").is_some(),
        "given back to the host"
    );
    assert_eq!(w.pod.links(), Vec::<String>::new());
    assert_eq!(w.all_reserved_ips(), vec![]);
}

#[test]
fn del_after_the_pod_namespace_is_gone_releases_ipam() {
    let w = World::new("higone");
    host_link(&w, "hostveth3");
    let conf = w.conf(
        "1.0.0",
        vec![
            w.cluster_net("1.0.0"),
            net(json!({"device": "hostveth3"}), w.ipam("198.18.6.0/24")),
        ],
    );
    w.run("ADD", &conf).success();
    assert_eq!(w.reserved_ips("hostnet").len(), 1);
    sh(&["ip", "netns", "del", &w.pod.name]);
    w.run("DEL", &conf).success();
    assert_eq!(w.all_reserved_ips(), vec![], "IPAM released");
}

#[test]
fn a_missing_host_interface_is_a_clear_error_and_nothing_stays() {
    let w = World::new("himiss");
    let conf = w.conf(
        "1.0.0",
        vec![
            w.cluster_net("1.0.0"),
            net(json!({"device": "nosuchdev0"}), static_ipam()),
        ],
    );
    let err = w.run("ADD", &conf).failure();
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("no host interface named \"nosuchdev0\""),
        "{err}"
    );
    assert_eq!(w.pod.links(), Vec::<String>::new());
    assert_eq!(w.all_reserved_ips(), vec![]);
}
