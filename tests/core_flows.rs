//! ADD, CHECK and DEL with static delegates and real plugins.

use serde_json::{Value, json};

use crate::harness::{World, write_json};

/// The address (CIDR) a result gives to the interface named `ifname`.
fn result_addresses(result: &Value, ifname: &str) -> Vec<String> {
    let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let index = ifaces
        .iter()
        .position(|i| i["name"] == ifname && i["sandbox"].is_string());
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ip| index.is_some() && ip["interface"].as_u64() == index.map(|i| i as u64))
        .map(|ip| ip["address"].as_str().unwrap().to_string())
        .collect()
}

fn three_networks(w: &World, version: &str) -> Value {
    w.veth_master("mvm0");
    w.conf(
        version,
        vec![
            w.cluster_net(version),
            w.macvlan_net(version, "mvm0"),
            w.ptp_net(version),
        ],
    )
}

fn assert_all_released(w: &World) {
    assert_eq!(
        w.pod.links(),
        Vec::<String>::new(),
        "pod interfaces left behind"
    );
    assert_eq!(w.all_reserved_ips(), vec![], "host-local still holds IPs");
    assert!(!w.cache_file().exists(), "cache entry left behind");
}

fn add_check_del(version: &str) {
    let w = World::new(&format!("v{}", version.replace('.', "")));
    let conf = three_networks(&w, version);
    let out = w.run("ADD", &conf).success().stdout;

    assert_eq!(
        out["cniVersion"], version,
        "answered in the caller's version"
    );
    assert_eq!(w.pod.links(), ["eth0", "net1", "net2"]);
    let eth0 = result_addresses(&out, "eth0");
    assert_eq!(eth0.len(), 1, "cluster result describes eth0: {out}");
    assert_eq!(
        w.pod.addrs_of("eth0"),
        eth0,
        "eth0 has the address of the returned result"
    );
    assert!(eth0[0].starts_with("198.18.0."));
    assert_eq!(
        w.pod.mtu_of("eth0"),
        1400,
        "the chained tuning plugin ran on eth0"
    );
    for ip in out["ips"].as_array().unwrap() {
        assert_eq!(
            ip.get("version").is_some(),
            version.starts_with("0."),
            "ips[].version per spec {version}"
        );
    }

    let cached = w.cached_results();
    assert_eq!(
        cached.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>(),
        ["eth0", "net1", "net2"]
    );
    for (ifname, result) in &cached {
        let addrs = result_addresses(result, ifname);
        assert!(
            !addrs.is_empty(),
            "{ifname}: cached result has its address: {result}"
        );
        assert_eq!(
            w.pod.addrs_of(ifname),
            addrs,
            "{ifname} carries the cached result's address"
        );
    }
    assert_eq!(w.reserved_ips("cluster").len(), 1);
    assert_eq!(w.reserved_ips("mvnet").len(), 1);
    assert_eq!(w.reserved_ips("p2p").len(), 1);

    if version != "0.3.1" {
        w.run("CHECK", &conf).success();
    } else {
        let err = w.run("CHECK", &conf).failure();
        assert_eq!(err["code"], 1, "CHECK needs 0.4.0: {err}");
    }

    w.run("DEL", &conf).success();
    assert_all_released(&w);
    w.run("DEL", &conf).success();
    assert_all_released(&w);
}

#[test]
fn add_check_del_three_networks_v031() {
    add_check_del("0.3.1");
}

#[test]
fn add_check_del_three_networks_v040() {
    add_check_del("0.4.0");
}

#[test]
fn add_check_del_three_networks_v100() {
    add_check_del("1.0.0");
}

#[test]
fn a_020_caller_gets_an_020_result_from_newer_delegates() {
    let w = World::new("v020");
    w.veth_master("mvm0");
    let mut conf = w.conf(
        "0.2.0",
        vec![w.cluster_net("1.0.0"), w.macvlan_net("0.3.1", "mvm0")],
    );
    conf["cniVersion"] = json!("0.2.0");
    let out = w.run("ADD", &conf).success().stdout;
    assert_eq!(out["cniVersion"], "0.2.0");
    let ip = out["ip4"]["ip"].as_str().expect("ip4.ip in a 0.2.0 result");
    assert_eq!(w.pod.addrs_of("eth0"), [ip]);
    assert_eq!(out["ip4"]["gateway"], "198.18.0.1");
    assert!(
        out.get("interfaces").is_none() && out.get("ips").is_none(),
        "{out}"
    );
    let err = w.run("CHECK", &conf).failure();
    assert_eq!(err["code"], 1);
    w.run("DEL", &conf).success();
    assert_all_released(&w);
}

#[test]
fn failing_middle_delegate_leaves_nothing_behind() {
    let w = World::new("fail");
    let conf = w.conf(
        "1.0.0",
        vec![
            w.cluster_net("1.0.0"),
            w.macvlan_net("1.0.0", "nosuchmaster0"),
            w.ptp_net("1.0.0"),
        ],
    );
    let err = w.run("ADD", &conf).failure();
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("mvnet") && msg.contains("macvlan") && msg.contains("net1"),
        "error names the delegate: {msg}"
    );
    assert!(
        msg.contains("Link not found"),
        "the delegate's own message is kept: {msg}"
    );
    assert_eq!(err["cniVersion"], "1.0.0");
    assert_all_released(&w);
    assert!(
        !w.ipam_dir().join("p2p").exists(),
        "the delegate after the failure never ran"
    );
    w.run("DEL", &conf).success();
}

#[test]
fn failing_delegate_keeps_its_error_code_and_details() {
    // Debian's plugins (libcni 1.1.2) answer a 1.1.0 config with code 1 and the versions they
    // support in "details".
    let w = World::new("code");
    let conf = w.conf("1.0.0", vec![w.cluster_net("1.0.0"), w.ptp_net("1.1.0")]);
    let err = w.run("ADD", &conf).failure();
    assert_eq!(err["code"], 1, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("ptp"), "{err}");
    assert!(
        err["details"]
            .as_str()
            .unwrap_or_default()
            .contains("1.0.0"),
        "{err}"
    );
    assert_all_released(&w);
}

#[test]
fn duplicate_interface_names_are_rejected_before_anything_runs() {
    let w = World::new("dup");
    let conf = w.conf("1.0.0", vec![w.cluster_net("1.0.0"), w.ptp_net("1.0.0")]);
    let err = w
        .run_with("ADD", &conf, &[("CNI_IFNAME", "net1")])
        .failure();
    assert_eq!(err["code"], 7);
    assert!(err["msg"].as_str().unwrap().contains("\"net1\""), "{err}");
    assert!(!w.ipam_dir().exists(), "no delegate ran");
    assert_eq!(w.pod.links(), Vec::<String>::new());
}

#[test]
fn an_interface_already_in_the_pod_is_refused() {
    let w = World::new("exists");
    w.pod.exec(&[
        "ip", "link", "add", "net1", "type", "veth", "peer", "name", "other1",
    ]);
    let conf = w.conf("1.0.0", vec![w.cluster_net("1.0.0"), w.ptp_net("1.0.0")]);
    let err = w.run("ADD", &conf).failure();
    assert!(
        err["msg"].as_str().unwrap().contains("\"net1\"")
            && err["msg"].as_str().unwrap().contains("already exists"),
        "{err}"
    );
    assert!(!w.ipam_dir().exists(), "no delegate ran");
    assert_eq!(w.pod.links(), ["net1", "other1"]);
}

#[test]
fn pod_wide_cni_args_go_to_the_cluster_network_only() {
    // host-local honours IP= from CNI_ARGS. Had it reached the macvlan network (another subnet),
    // host-local there would have refused it.
    let w = World::new("ipargs");
    w.veth_master("mvm0");
    let conf = w.conf(
        "1.0.0",
        vec![w.cluster_net("1.0.0"), w.macvlan_net("1.0.0", "mvm0")],
    );
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod;IP=198.18.0.77";
    w.run_with("ADD", &conf, &[("CNI_ARGS", args)]).success();
    assert_eq!(w.pod.addrs_of("eth0"), ["198.18.0.77/24"]);
    assert_eq!(w.pod.addrs_of("net1").len(), 1);
    assert!(w.pod.addrs_of("net1")[0].starts_with("198.18.1."));
    w.run("DEL", &conf).success();
    assert_all_released(&w);
}

#[test]
fn del_with_a_damaged_record_still_releases_every_delegate() {
    let w = World::new("torn");
    let conf = three_networks(&w, "1.0.0");
    w.run("ADD", &conf).success();
    std::fs::write(w.cache_file(), b"{\"kind\":\"multihome/v1\",\"atta").unwrap();
    w.run("DEL", &conf).success();
    assert_all_released(&w);
}

#[test]
fn del_after_the_pod_namespace_is_gone_releases_ips() {
    let w = World::new("gone");
    let conf = three_networks(&w, "0.4.0");
    w.run("ADD", &conf).success();
    std::process::Command::new("ip")
        .args(["netns", "del", &w.pod.name])
        .status()
        .unwrap();
    w.run("DEL", &conf).success();
    assert_eq!(w.all_reserved_ips(), vec![]);
    assert!(!w.cache_file().exists());
    w.run_with("DEL", &conf, &[("CNI_NETNS", "")]).success();
}

#[test]
fn del_uses_the_cached_configs_even_when_the_config_changed() {
    let w = World::new("changed");
    let conf = three_networks(&w, "1.0.0");
    w.run("ADD", &conf).success();
    // The operator now points multihome at one network only: DEL must still undo all three.
    let shrunk = w.conf("1.0.0", vec![w.cluster_net("1.0.0")]);
    w.run("DEL", &shrunk).success();
    assert_all_released(&w);
}

#[test]
fn cluster_network_and_default_networks_from_conf_dir() {
    let w = World::new("confdir");
    w.veth_master("mvm0");
    let conf_dir = w.dir.join("net.d");
    write_json(
        &conf_dir.join("10-cluster.conflist"),
        &w.cluster_net("1.0.0"),
    );
    write_json(
        &conf_dir.join("20-mv.conf"),
        &w.macvlan_net("1.0.0", "mvm0"),
    );
    std::fs::write(conf_dir.join("05-broken.conf"), "{").unwrap();
    let base = json!({"cniVersion": "1.0.0", "name": "multihome", "binDir": crate::harness::PLUGINS,
                      "cniDir": w.cache_dir(), "confDir": conf_dir, "defaultNetworks": ["mvnet"]});
    for cluster in [
        "cluster".to_string(),
        conf_dir.join("10-cluster.conflist").display().to_string(),
    ] {
        let mut conf = base.clone();
        conf["clusterNetwork"] = json!(cluster);
        w.run("ADD", &conf).success();
        assert_eq!(w.pod.links(), ["eth0", "net1"], "clusterNetwork {cluster}");
        assert!(w.pod.addrs_of("net1")[0].starts_with("198.18.1."));
        w.run("DEL", &conf).success();
        assert_all_released(&w);
    }
    // Pods in a system namespace get no defaultNetworks.
    let mut conf = base.clone();
    conf["clusterNetwork"] = json!("cluster");
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns";
    w.run_with("ADD", &conf, &[("CNI_ARGS", args)]).success();
    assert_eq!(w.pod.links(), ["eth0"]);
    w.run_with("DEL", &conf, &[("CNI_ARGS", args)]).success();
    assert_all_released(&w);
}

#[test]
fn check_reports_a_broken_attachment() {
    let w = World::new("check");
    let conf = w.conf("1.0.0", vec![w.cluster_net("1.0.0"), w.ptp_net("1.0.0")]);
    w.run("ADD", &conf).success();
    w.run("CHECK", &conf).success();
    w.pod.exec(&["ip", "addr", "flush", "dev", "net1"]);
    let err = w.run("CHECK", &conf).failure();
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("p2p") && msg.contains("ptp"),
        "CHECK names the broken network: {msg}"
    );
    w.run("DEL", &conf).success();
    assert_all_released(&w);
}

#[test]
fn check_skips_networks_with_disable_check() {
    let w = World::new("nocheck");
    let mut p2p = w.ptp_net("1.0.0");
    p2p["disableCheck"] = json!(true);
    let conf = w.conf("1.0.0", vec![w.cluster_net("1.0.0"), p2p]);
    w.run("ADD", &conf).success();
    w.pod.exec(&["ip", "addr", "flush", "dev", "net1"]);
    w.run("CHECK", &conf).success();
    w.run("DEL", &conf).success();
    assert_all_released(&w);
}

#[test]
fn parallel_adds_for_different_pods() {
    let worlds: Vec<World> = (0..4).map(|i| World::new(&format!("par{i}"))).collect();
    std::thread::scope(|s| {
        for w in &worlds {
            s.spawn(move || {
                let conf = w.conf("1.0.0", vec![w.cluster_net("1.0.0"), w.ptp_net("1.0.0")]);
                w.run("ADD", &conf).success();
                assert_eq!(w.pod.links(), ["eth0", "net1"]);
                w.run("DEL", &conf).success();
                assert_all_released(w);
            });
        }
    });
}

#[test]
fn del_reports_failures_continues_and_honours_retry_delete_on_error() {
    for retry in [false, true] {
        let w = World::new(if retry { "retry" } else { "noretry" });
        w.veth_master("mvm0");
        let mut conf = w.conf(
            "1.0.0",
            vec![w.cluster_net("1.0.0"), w.macvlan_net("1.0.0", "mvm0")],
        );
        conf["retryDeleteOnError"] = json!(retry);
        w.run("ADD", &conf).success();
        // Without its master, Debian's macvlan cannot even load its config on DEL.
        crate::harness::sh(&["ip", "-n", &w.host.name, "link", "del", "mvm0"]);
        let err = w.run("DEL", &conf).failure();
        let msg = err["msg"].as_str().unwrap();
        assert!(
            msg.contains("mvnet") && msg.contains("Link not found"),
            "{msg}"
        );
        assert!(
            w.reserved_ips("cluster").is_empty(),
            "DEL went on to the cluster network"
        );
        assert_eq!(
            w.cache_file().exists(),
            retry,
            "retryDeleteOnError={retry} keeps the cache"
        );
        if retry {
            w.veth_master("mvm0");
            w.run("DEL", &conf).success();
            assert_eq!(
                w.all_reserved_ips(),
                vec![],
                "the retried DEL released macvlan's IP"
            );
            assert!(!w.cache_file().exists());
        }
    }
}

#[test]
fn add_waits_for_the_readiness_indicator_file_and_del_does_not() {
    let w = World::new("ready");
    let indicator = w.dir.join("cluster-ready");
    let mut conf = w.conf("1.0.0", vec![w.cluster_net("1.0.0")]);
    conf["readinessindicatorfile"] = json!(indicator);
    let started = std::time::Instant::now();
    let writer = {
        let indicator = indicator.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(400));
            std::fs::write(indicator, "ok").unwrap();
        })
    };
    w.run("ADD", &conf).success();
    writer.join().unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(400),
        "ADD waited for the file"
    );
    assert_eq!(w.pod.links(), ["eth0"]);
    std::fs::remove_file(&indicator).unwrap();
    w.run("DEL", &conf).success();
    assert_all_released(&w);
}
