//! CNI 1.1 GC and STATUS, records keyed by attachment, records of the layout before, and DEL
//! that costs nothing when nothing is recorded: the built binary, real plugins, and a 1.1.0 stub
//! delegate that records the calls it gets.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Netns, World, wait_until};

const STUB: &str = "stub11";

fn stub_net() -> Value {
    json!({"cniVersion": "1.1.0", "name": "stubnet", "type": STUB})
}

/// multihome at 1.1.0 over the bridge cluster network and the stub, plugins through the spies.
fn conf(w: &World) -> Value {
    let mut conf = w.conf("1.1.0", vec![w.cluster_net("1.0.0"), stub_net()]);
    conf["binDir"] = json!(w.spy_bin());
    conf
}

fn with_valid(conf: &Value, valid: &[(&str, &str)]) -> Value {
    let list: Vec<Value> = valid
        .iter()
        .map(|(c, i)| json!({"containerID": c, "ifname": i}))
        .collect();
    let mut conf = conf.clone();
    conf["cni.dev/valid-attachments"] = json!(list);
    conf["cni.dev/attachments"] = json!(list);
    conf
}

/// As libcni runs GC and STATUS: no container, interface or namespace.
const NETWORK_WIDE: [(&str, &str); 3] = [
    ("CNI_CONTAINERID", ""),
    ("CNI_IFNAME", ""),
    ("CNI_NETNS", ""),
];

fn calls_of(w: &World, command: &str) -> Vec<String> {
    w.calls()
        .into_iter()
        .filter(|c| c.starts_with(&format!("{command} ")))
        .collect()
}

/// Waits until process `pid` is gone (or a zombie); fails after 20 s.
pub fn wait_gone(pid: &str) {
    let start = Instant::now();
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z')) =>
            {
                return;
            }
            Ok(_) => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the delegate (pid {pid}) outlived multihome"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_hung_delegate_is_killed_after_delegate_timeout_and_the_add_rolled_back() {
    let w = World::new("hung");
    let mut conf = conf(&w);
    conf["delegateTimeout"] = json!(1);
    std::fs::write(w.dir.join("stub.block"), b"").unwrap();
    let err = w.run("ADD", &conf).failure();
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains(STUB) && msg.contains("delegateTimeout") && msg.contains("stubnet"),
        "{msg}"
    );
    assert_eq!(err["code"], 11, "{err}");
    let stub = std::fs::read_to_string(w.dir.join("stub.pid")).unwrap();
    wait_gone(stub.trim());
    assert_eq!(w.pod.links(), Vec::<String>::new(), "rolled back");
    assert_eq!(w.all_reserved_ips(), vec![]);
    assert_eq!(w.cache_files(), Vec::<String>::new());
}

#[test]
fn gc_tears_down_what_the_runtime_no_longer_lists_and_forwards_to_delegates() {
    let w = World::new("gc");
    let conf = conf(&w);
    let second = Netns::create(format!("{}-q", w.host.name));
    let b = format!("{}-b", w.container_id);
    w.run("ADD", &conf).success();
    w.run_with(
        "ADD",
        &conf,
        &[("CNI_CONTAINERID", &b), ("CNI_NETNS", &second.path())],
    )
    .success();
    assert_eq!(w.reserved_ips("cluster").len(), 2);
    // What crashed processes leave, and a record of another network sharing the directory.
    let dir = w.cache_dir();
    std::fs::write(dir.join(".multihome+ctr-gone+eth0.json.tmp"), b"{").unwrap();
    std::fs::write(dir.join("multihome+ctr-gone2+eth0.lock"), b"").unwrap();
    std::fs::write(dir.join("othernet+ctr-x+eth0.json"), b"{}").unwrap();

    let a = w.container_id.clone();
    let gc = with_valid(&conf, &[(&a, "eth0")]);
    w.run_with("GC", &gc, &NETWORK_WIDE).success();
    assert_eq!(
        second.links(),
        Vec::<String>::new(),
        "the unlisted container is torn down"
    );
    assert_eq!(w.pod.links(), ["eth0"], "the listed one is not touched");
    assert_eq!(w.reserved_ips("cluster").len(), 1, "its IP was released");
    assert_eq!(
        w.cache_files(),
        [
            format!("multihome+{a}+eth0.json"),
            "othernet+ctr-x+eth0.json".to_string()
        ],
        "exactly one record per valid attachment, other networks' files untouched"
    );
    let dels: Vec<String> = calls_of(&w, "DEL");
    assert!(
        dels.iter().all(|c| c.contains(&b)) && dels.iter().any(|c| c.starts_with("DEL bridge")),
        "{dels:?}"
    );
    // Forwarded once to the 1.1.0 delegate with its own attachments; not to the 1.0.0 bridge.
    assert_eq!(calls_of(&w, "GC"), vec![format!("GC {STUB}  ")]);
    let sent = w.stub_stdin().pop().unwrap();
    let expect = json!([{"containerID": a, "ifname": "net1"}]);
    assert_eq!(sent["cni.dev/valid-attachments"], expect);
    assert_eq!(sent["cni.dev/attachments"], expect);
    assert_eq!(
        (sent["name"].as_str(), sent["cniVersion"].as_str()),
        (Some("stubnet"), Some("1.1.0"))
    );

    // Idempotent.
    w.run_with("GC", &gc, &NETWORK_WIDE).success();
    assert_eq!(w.pod.links(), ["eth0"]);
    assert_eq!(calls_of(&w, "GC").len(), 2);
    // Nothing valid any more: everything of this network goes, the stub hears of no attachment.
    w.run_with("GC", &with_valid(&conf, &[]), &NETWORK_WIDE)
        .success();
    assert_eq!(w.pod.links(), Vec::<String>::new());
    assert_eq!(w.all_reserved_ips(), vec![]);
    assert_eq!(w.cache_files(), ["othernet+ctr-x+eth0.json"]);
    assert_eq!(
        w.stub_stdin().pop().unwrap()["cni.dev/valid-attachments"],
        json!([])
    );
}

#[test]
fn gc_below_1_1_0_or_with_a_malformed_list_deletes_nothing() {
    let w = World::new("gcbad");
    let conf = conf(&w);
    w.run("ADD", &conf).success();
    let mut old = with_valid(&conf, &[]);
    old["cniVersion"] = json!("1.0.0");
    let err = w.run_with("GC", &old, &NETWORK_WIDE).failure();
    assert_eq!(err["code"], 1, "{err}");
    for bad in [
        json!({"a": 1}),
        json!([{"containerID": "x"}]),
        json!([{"containerID": "", "ifname": "eth0"}]),
    ] {
        let mut c = conf.clone();
        c["cni.dev/valid-attachments"] = bad.clone();
        let err = w.run_with("GC", &c, &NETWORK_WIDE).failure();
        assert_eq!(err["code"], 7, "{bad}: {err}");
        assert!(
            err["msg"].as_str().unwrap().contains("nothing was deleted"),
            "{err}"
        );
    }
    let err = w.run_with("GC", &conf, &NETWORK_WIDE).failure();
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("cni.dev/valid-attachments"),
        "{err}"
    );
    assert!(w.cache_file().exists());
    assert_eq!(w.pod.links(), ["eth0"]);
    assert!(calls_of(&w, "DEL").is_empty() && calls_of(&w, "GC").is_empty());
    w.run("DEL", &conf).success();
    assert_eq!(w.all_reserved_ips(), vec![]);
}

#[test]
fn status_checks_readiness_binaries_and_delegates_but_never_the_api() {
    let w = World::new("status");
    let mut conf = conf(&w);
    w.run_with("STATUS", &conf, &NETWORK_WIDE).success();
    assert_eq!(
        calls_of(&w, "STATUS"),
        vec![format!("STATUS {STUB}  ")],
        "1.1.0 delegates only"
    );

    let indicator = w.dir.join("ready");
    conf["readinessindicatorfile"] = json!(indicator);
    let started = Instant::now();
    let err = w.run_with("STATUS", &conf, &NETWORK_WIDE).failure();
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "STATUS never waits for the file"
    );
    assert_eq!(err["code"], 50, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains(indicator.to_str().unwrap()),
        "{err}"
    );
    std::fs::write(&indicator, b"").unwrap();
    w.run_with("STATUS", &conf, &NETWORK_WIDE).success();

    // The delegate's own 50/51 pass through, naming it; anything else it says is 50.
    for (said, code) in [(51, 51), (50, 50), (4, 50)] {
        std::fs::write(
            w.dir.join("stub.status"),
            json!({"cniVersion": "1.1.0", "code": said, "msg": "uplink down"}).to_string(),
        )
        .unwrap();
        let err = w.run_with("STATUS", &conf, &NETWORK_WIDE).failure();
        assert_eq!(err["code"], code, "{err}");
        let msg = err["msg"].as_str().unwrap();
        assert!(msg.contains(STUB) && msg.contains("uplink down"), "{msg}");
    }
    std::fs::remove_file(w.dir.join("stub.status")).unwrap();

    let mut missing = conf.clone();
    missing["delegates"][1]["type"] = json!("no-such-plugin");
    let err = w.run_with("STATUS", &missing, &NETWORK_WIDE).failure();
    assert_eq!(err["code"], 50);
    assert!(
        err["msg"].as_str().unwrap().contains("no-such-plugin"),
        "{err}"
    );

    // An API server that does not answer: STATUS does not ask it (a clusterNetwork that is a
    // NAD name is left to the ADDs that fetch it).
    let kubeconfig = w.dir.join("dead.kubeconfig");
    std::fs::write(
        &kubeconfig,
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n",
    )
    .unwrap();
    let mut api = conf.clone();
    api["kubeconfig"] = json!(kubeconfig);
    api["clusterNetwork"] = json!("cluster-nad");
    w.run_with("STATUS", &api, &NETWORK_WIDE).success();
    api["kubeconfig"] = Value::Null;
    let err = w.run_with("STATUS", &api, &NETWORK_WIDE).failure();
    assert_eq!(
        err["code"], 50,
        "without an API the name must be a file: {err}"
    );

    let mut old = conf.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(
        w.run_with("STATUS", &old, &NETWORK_WIDE).failure()["code"],
        1
    );
}

#[test]
fn one_container_on_two_multihome_networks_keeps_two_records() {
    let w = World::new("twonets");
    let mut a = w.conf("1.0.0", vec![w.cluster_net("1.0.0")]);
    a["name"] = json!("mh-a");
    let mut b = w.conf("1.1.0", vec![w.ptp_net("1.0.0")]);
    b["name"] = json!("mh-b");
    let cid = w.container_id.clone();
    let eth1 = [("CNI_IFNAME", "eth1")];
    w.run("ADD", &a).success();
    w.run_with("ADD", &b, &eth1).success();
    assert_eq!(w.pod.links(), ["eth0", "eth1"]);
    assert_eq!(
        w.cache_files(),
        [
            format!("mh-a+{cid}+eth0.json"),
            format!("mh-b+{cid}+eth1.json")
        ]
    );
    // GC of one network only touches its own records.
    w.run_with("GC", &with_valid(&b, &[(&cid, "eth1")]), &NETWORK_WIDE)
        .success();
    assert_eq!(w.pod.links(), ["eth0", "eth1"]);
    w.run("DEL", &a).success();
    assert_eq!(
        w.pod.links(),
        ["eth1"],
        "the other network's attachment is intact"
    );
    assert!(w.reserved_ips("cluster").is_empty());
    assert_eq!(w.reserved_ips("p2p").len(), 1);
    assert_eq!(w.cache_files(), [format!("mh-b+{cid}+eth1.json")]);
    w.run_with("CHECK", &b, &eth1).success();
    w.run_with("DEL", &b, &eth1).success();
    assert_eq!(w.pod.links(), Vec::<String>::new());
    assert_eq!(w.all_reserved_ips(), vec![]);
    assert_eq!(w.cache_files(), Vec::<String>::new());
}

#[test]
fn a_record_of_the_layout_before_is_checked_and_deleted_after_an_upgrade() {
    let w = World::new("legacy");
    let conf = w.conf("1.0.0", vec![w.cluster_net("1.0.0"), w.ptp_net("1.0.0")]);
    w.run("ADD", &conf).success();
    // Turn the record into what multihome 0.1.0 wrote: one `<containerID>.json`, no network.
    let mut record: Value =
        serde_json::from_slice(&std::fs::read(w.cache_file()).unwrap()).unwrap();
    let obj = record.as_object_mut().unwrap();
    obj.remove("network");
    obj.remove("added");
    for name in w.cache_files() {
        std::fs::remove_file(w.cache_dir().join(name)).unwrap();
    }
    let legacy = w.cache_dir().join(format!("{}.json", w.container_id));
    std::fs::write(&legacy, serde_json::to_vec(&record).unwrap()).unwrap();

    w.run("CHECK", &conf).success();
    // A DEL for another runtime interface of the container leaves it alone.
    w.run_with("DEL", &conf, &[("CNI_IFNAME", "eth9")])
        .success();
    assert!(legacy.exists());
    w.run("DEL", &conf).success();
    assert_eq!(w.pod.links(), Vec::<String>::new());
    assert_eq!(w.all_reserved_ips(), vec![]);
    assert_eq!(w.cache_files(), Vec::<String>::new());
}

/// Every record layout multihome ever wrote (tests/golden, byte for byte as the release that
/// introduced it wrote it), put in place of the record of a live ADD of the same two networks:
/// DEL releases every link and IP it lists, as after an upgrade in place, from the record alone.
#[test]
fn records_of_every_layout_ever_written_are_deleted() {
    for (layout, file, text) in [
        (
            "per container",
            "@CONTAINER@.json",
            include_str!("golden/per-container/@CONTAINER@.json"),
        ),
        (
            "per attachment",
            "multihome+@CONTAINER@+eth0.json",
            include_str!("golden/per-attachment/multihome+@CONTAINER@+eth0.json"),
        ),
    ] {
        let w = World::new("golden");
        let conf = w.conf("1.0.0", vec![w.cluster_net("1.0.0"), w.ptp_net("1.0.0")]);
        w.run("ADD", &conf).success();
        assert_eq!(w.all_reserved_ips().len(), 2, "{layout}");
        for name in w.cache_files() {
            std::fs::remove_file(w.cache_dir().join(name)).unwrap();
        }
        let ours = |t: &str| {
            t.replace("@CONTAINER@", &w.container_id)
                .replace("@NETNS@", &w.pod.path())
                .replace("@IPAM@", w.ipam_dir().to_str().unwrap())
        };
        std::fs::write(w.cache_dir().join(ours(file)), ours(text)).unwrap();

        // Only the record knows of p2p: a DEL that could not read it would re-plan from this
        // config and leave net1 and its IP behind.
        let cluster_only = w.conf("1.0.0", vec![w.cluster_net("1.0.0")]);
        let del = w.run("DEL", &cluster_only).success();
        assert!(
            !del.stderr.contains("deleting what the config plans"),
            "{layout}: {}",
            del.stderr
        );
        assert_eq!(w.pod.links(), Vec::<String>::new(), "{layout}");
        assert_eq!(w.all_reserved_ips(), vec![], "{layout}");
        assert_eq!(w.cache_files(), Vec::<String>::new(), "{layout}");
    }
}

#[test]
fn a_repeated_del_runs_no_delegate() {
    let w = World::new("del2");
    let mut conf = w.conf("1.0.0", vec![w.cluster_net("1.0.0"), w.ptp_net("1.0.0")]);
    conf["binDir"] = json!(w.spy_bin());
    w.run("ADD", &conf).success();
    w.run("DEL", &conf).success();
    let calls = w.calls().len();
    assert!(calls_of(&w, "DEL").len() >= 3, "{:?}", w.calls());
    // containerd's second DEL (at sandbox removal, no netns), and one more.
    w.run_with("DEL", &conf, &[("CNI_NETNS", "")]).success();
    w.run("DEL", &conf).success();
    assert_eq!(w.calls().len(), calls, "{:?}", w.calls());
    assert_eq!(w.cache_files(), Vec::<String>::new());
}

#[test]
fn a_killed_add_leaves_a_record_from_which_del_releases_everything() {
    let w = World::new("killed");
    let conf = conf(&w);
    std::fs::write(w.dir.join("stub.block"), b"").unwrap();
    let mut add = w.spawn_with("ADD", &conf, &[]);
    wait_until("the stub's ADD", || w.dir.join("stub.pid").exists());
    // The cluster network is added, the stub is under way: the runtime gives up.
    add.kill().unwrap();
    add.wait().unwrap();
    let stub = std::fs::read_to_string(w.dir.join("stub.pid")).unwrap();
    wait_gone(stub.trim());
    assert!(
        w.cache_file().exists(),
        "the plan was recorded before the first delegate ran"
    );
    assert_eq!(w.reserved_ips("cluster").len(), 1);
    std::fs::remove_file(w.dir.join("stub.block")).unwrap();
    w.run("DEL", &conf).success();
    assert_eq!(w.pod.links(), Vec::<String>::new());
    assert_eq!(w.all_reserved_ips(), vec![]);
    assert_eq!(w.cache_files(), Vec::<String>::new());
}

/// The record removed by hand (an operator cleaning "stale" files, a cniDir on a tmpfs that a
/// reboot emptied while the IPAM store survived): DEL cannot know what was attached, re-plans
/// from the config and releases it all; then it leaves a tombstone, and the runtime's next DEL
/// is free again.
#[test]
fn a_del_whose_record_was_lost_releases_everything_and_the_next_del_is_free() {
    let w = World::new("lost");
    w.veth_master("mvm0");
    let mut conf = w.conf(
        "1.0.0",
        vec![
            w.cluster_net("1.0.0"),
            w.macvlan_net("1.0.0", "mvm0"),
            w.ptp_net("1.0.0"),
        ],
    );
    conf["binDir"] = json!(w.spy_bin());
    w.run("ADD", &conf).success();
    assert_eq!(w.pod.links().len(), 3, "{:?}", w.pod.links());
    assert_eq!(w.all_reserved_ips().len(), 3);
    std::fs::remove_file(w.cache_file()).unwrap();

    w.run("DEL", &conf).success();
    assert_eq!(w.pod.links(), Vec::<String>::new(), "interfaces left");
    assert_eq!(w.all_reserved_ips(), vec![], "host-local still holds IPs");
    assert_eq!(w.cache_files(), Vec::<String>::new());
    let dels = calls_of(&w, "DEL");
    for plugin in ["bridge", "macvlan", "ptp"] {
        assert!(
            dels.iter()
                .any(|c| c.starts_with(&format!("DEL {plugin} "))),
            "{plugin} got no DEL: {dels:?}"
        );
    }
    assert_eq!(w.tombstones().len(), 1, "{:?}", w.tombstones());

    // containerd's second DEL, at sandbox removal: the tombstone makes it free.
    let calls = w.calls().len();
    w.run_with("DEL", &conf, &[("CNI_NETNS", "")]).success();
    assert_eq!(w.calls().len(), calls, "{:?}", w.calls());

    // The same attachment added again: its tombstone is cleared, so losing the new record
    // still does not leak.
    w.run("ADD", &conf).success();
    assert_eq!(w.tombstones(), Vec::<String>::new());
    std::fs::remove_file(w.cache_file()).unwrap();
    w.run("DEL", &conf).success();
    assert_eq!(w.pod.links(), Vec::<String>::new());
    assert_eq!(w.all_reserved_ips(), vec![]);
}

/// A failed ADD leaves nothing attached and says so: the runtime's DEL after it is free.
#[test]
fn a_del_after_a_failed_add_runs_no_delegate() {
    let w = World::new("failadd");
    let mut conf = conf(&w);
    conf["delegates"][1]["type"] = json!("no-such-plugin");
    w.run("ADD", &conf).failure();
    let calls = w.calls().len();
    w.run("DEL", &conf).success();
    assert_eq!(w.calls().len(), calls, "{:?}", w.calls());
    assert_eq!(w.cache_files(), Vec::<String>::new());
}

/// 1 000 pods added and deleted: cniDir holds no record, lock or temporary file afterwards,
/// one tombstone per deleted attachment, and tombstones of past hours are gone.
#[test]
fn cni_dir_stays_bounded_over_a_thousand_add_del_cycles() {
    let w = World::new("bounded");
    let mut conf = w.conf("1.1.0", vec![stub_net()]);
    conf["binDir"] = json!(w.spy_bin());
    let old = w.cache_dir().join("deleted").join("1");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("multihome+ctr-old+eth0"), b"").unwrap();
    for i in 0..1000 {
        let cid = format!("ctr-{i}");
        w.run_with("ADD", &conf, &[("CNI_CONTAINERID", &cid)])
            .success();
        w.run_with("DEL", &conf, &[("CNI_CONTAINERID", &cid)])
            .success();
    }
    assert_eq!(w.cache_files(), Vec::<String>::new());
    assert!(!old.exists(), "tombstones of past hours expire");
    let tombstones = w.tombstones();
    assert_eq!(tombstones.len(), 1000);
    assert!(
        tombstones
            .iter()
            .all(|t| t.contains("+ctr-") && t.ends_with("+eth0")),
        "{:?}",
        &tombstones[..3]
    );
}
