//! Faults a hostile node brings: a full or read-only cniDir, multihome killed at each step of
//! ADD, an API server that fails in every way, damaged records, and parallel ADD/DEL. Every
//! case ends with nothing leaked: no link in the pod, no IP held by host-local, no file of the
//! container in cniDir.

use std::process::Command;

use serde_json::{Value, json};

use crate::apiserver::Fault;
use crate::harness::{World, wait_until, write_json};
use crate::kubernetes::Kube;

fn assert_clean(w: &World) {
    assert_eq!(
        w.pod.links(),
        Vec::<String>::new(),
        "pod interfaces left behind"
    );
    assert_eq!(w.all_reserved_ips(), vec![], "host-local still holds IPs");
    assert_eq!(
        w.cache_files(),
        Vec::<String>::new(),
        "files left in cniDir"
    );
}

/// The outcome of one multihome call made inside [`in_own_mounts`].
struct Step {
    rc: i32,
    out: Value,
    /// multihome's log (the test configs log at debug level).
    log: String,
}

/// Runs `steps` (shell lines; `mh COMMAND` runs multihome with this world's environment and
/// config, recording its outcome) in a private mount namespace where `cniDir` is a tmpfs
/// mounted with `options`. The mounts vanish with the namespace.
fn in_own_mounts(w: &World, conf: &Value, options: &str, steps: &str) -> Vec<Step> {
    let conf_file = w.dir.join("conf.json");
    write_json(&conf_file, conf);
    let results = w.dir.join("steps");
    std::fs::create_dir_all(&results).unwrap();
    let cache = w.cache_dir();
    std::fs::create_dir_all(&cache).unwrap();
    let script = format!(
        r#"set -u
n=0
mh() {{
  n=$((n+1))
  CNI_COMMAND=$1 ip netns exec {host} {bin} < {conf} > {results}/$n.out 2> {results}/$n.log
  echo $? > {results}/$n.rc
}}
mount -t tmpfs -o {options} tmpfs {cache}
{steps}
"#,
        host = w.host.name,
        bin = env!("CARGO_BIN_EXE_multihome"),
        conf = conf_file.display(),
        results = results.display(),
        cache = cache.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("CNI_CONTAINERID", &w.container_id)
        .env("CNI_NETNS", w.pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", crate::harness::PLUGINS)
        .output()
        .expect("running unshare (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut steps = Vec::new();
    for n in 1.. {
        let Ok(rc) = std::fs::read_to_string(results.join(format!("{n}.rc"))) else {
            break;
        };
        let text = std::fs::read_to_string(results.join(format!("{n}.out"))).unwrap();
        steps.push(Step {
            rc: rc.trim().parse().unwrap(),
            out: serde_json::from_str(&text).unwrap_or(Value::Null),
            log: std::fs::read_to_string(results.join(format!("{n}.log"))).unwrap(),
        });
    }
    std::fs::remove_dir_all(&results).unwrap();
    steps
}

fn two_networks(w: &World) -> Value {
    w.conf("1.0.0", vec![w.cluster_net("1.0.0"), w.ptp_net("1.0.0")])
}

#[test]
fn a_full_cni_dir_fails_add_with_an_io_error_before_or_after_the_delegates() {
    let w = World::new("full");
    let conf = two_networks(&w);
    // Room for the lock file only: the plan cannot be recorded, so no delegate may run.
    let steps = in_own_mounts(&w, &conf, "size=64k,nr_inodes=2", "mh ADD");
    assert_eq!(steps[0].rc, 1);
    assert_eq!(steps[0].out["code"], 5, "{}", steps[0].out);
    let msg = steps[0].out["msg"].as_str().unwrap();
    assert!(
        msg.contains("writing cache") && msg.contains("No space left"),
        "{msg}"
    );
    assert!(
        !steps[0].log.contains("binary="),
        "no delegate ran: {}",
        steps[0].log
    );
    assert_eq!(w.pod.links(), Vec::<String>::new());
    assert_eq!(w.all_reserved_ips(), vec![]);
    // Room for the plan but not for the results: everything added is rolled back.
    let steps = in_own_mounts(&w, &conf, "size=64k,nr_inodes=3", "mh ADD");
    assert_eq!(steps[0].out["code"], 5, "{}", steps[0].out);
    assert!(
        steps[0].out["msg"]
            .as_str()
            .unwrap()
            .contains("No space left")
    );
    let log = &steps[0].log;
    assert!(
        log.contains("ADD p2p") && log.contains("DEL p2p") && log.contains("DEL cluster"),
        "added, then rolled back: {log}"
    );
    assert_eq!(w.pod.links(), Vec::<String>::new(), "rolled back");
    assert_eq!(w.all_reserved_ips(), vec![]);
}

#[test]
fn a_read_only_cni_dir_refuses_add_and_del_still_releases_what_was_added() {
    let w = World::new("rofs");
    let conf = two_networks(&w);
    let cache = w.cache_dir();
    let steps = in_own_mounts(
        &w,
        &conf,
        "size=1m",
        &format!(
            "mh ADD\nmount -o remount,ro {c}\nmh DEL\nCNI_CONTAINERID=other mh ADD\nmount -o remount,rw {c}\nmh DEL\nls -A {c} | grep -vx deleted | wc -l > {d}/left",
            c = cache.display(),
            d = w.dir.display()
        ),
    );
    assert_eq!(steps[0].rc, 0, "{}", steps[0].out);
    // DEL on the read-only directory: the delegates release everything, the record cannot go.
    assert_eq!(steps[1].out["code"], 5, "{}", steps[1].out);
    assert!(
        steps[1].log.contains("DEL p2p") && steps[1].log.contains("DEL cluster"),
        "{}",
        steps[1].log
    );
    assert!(
        steps[1].out["msg"].as_str().unwrap().contains("Read-only"),
        "{}",
        steps[1].out
    );
    // A new ADD there fails before any delegate runs.
    assert_eq!(steps[2].out["code"], 5, "{}", steps[2].out);
    assert!(!steps[2].log.contains("binary="), "{}", steps[2].log);
    // Writable again: the runtime's retried DEL finishes the job (records and locks gone; the
    // tombstone it leaves is in its own directory).
    assert_eq!(steps[3].rc, 0, "{}", steps[3].out);
    assert_eq!(
        std::fs::read_to_string(w.dir.join("left")).unwrap().trim(),
        "0"
    );
    assert_eq!(w.pod.links(), Vec::<String>::new());
    assert_eq!(w.all_reserved_ips(), vec![]);
}

#[test]
fn multihome_killed_at_each_step_of_add_leaves_nothing_after_the_runtimes_del() {
    // Held: the pod GET (before the first delegate), the status PATCH (after the last one),
    // the first event (after the status is written).
    for (step, held) in [
        ("before the first delegate", "/pods/web"),
        ("during the status write", "/status"),
        ("while the events are sent", "/events"),
    ] {
        let k = Kube::new("k8kill");
        let conf = k.conf();
        let uid = k.pod(
            "web",
            json!({"k8s.v1.cni.cncf.io/networks": "macvlan-net, ptp-net"}),
        );
        k.api.delay(held, 30_000);
        let mut add = k.spawn("ADD", &conf, "web", &uid);
        wait_until(step, || k.api.delayed() == 1);
        add.kill().unwrap();
        add.wait().unwrap();
        k.run("DEL", &conf, "web", &uid).success();
        assert_clean(&k.w);
    }
    // Between delegates: the cluster network is added, the next one is under way.
    let w = World::new("killmid");
    let mut conf = w.conf(
        "1.0.0",
        vec![
            w.cluster_net("1.0.0"),
            json!({"cniVersion": "1.0.0", "name": "stubnet", "type": "stub11"}),
            w.ptp_net("1.0.0"),
        ],
    );
    conf["binDir"] = json!(w.spy_bin());
    std::fs::write(w.dir.join("stub.block"), b"").unwrap();
    let mut add = w.spawn_with("ADD", &conf, &[]);
    wait_until("the stub's ADD", || w.dir.join("stub.pid").exists());
    add.kill().unwrap();
    add.wait().unwrap();
    std::fs::remove_file(w.dir.join("stub.block")).unwrap();
    w.run("DEL", &conf).success();
    assert_clean(&w);
}

#[test]
fn api_faults_during_add_fail_it_cleanly() {
    let k = Kube::new("k8faults");
    let mut conf = k.conf();
    conf["apiTimeout"] = json!(1.5);
    conf["apiAttempts"] = json!(2);
    let uid = k.pod("p", json!({"k8s.v1.cni.cncf.io/networks": "ptp-net"}));
    let fault = |code, path: &'static str| Fault {
        code,
        retry_after: None,
        path_contains: path,
    };
    type Setup<'a> = Box<dyn Fn(&mut Value) + 'a>;
    let cases: Vec<(&str, u64, Setup)> = vec![
        (
            "500 on the pod",
            11,
            Box::new(|_| {
                k.api.inject(fault(500, "/pods/p"));
                k.api.inject(fault(500, "/pods/p"));
            }),
        ),
        (
            "429 on the NAD",
            11,
            Box::new(|_| {
                k.api.inject(fault(429, "ptp-net"));
                k.api.inject(fault(429, "ptp-net"));
            }),
        ),
        (
            "500 on the status write",
            11,
            Box::new(|_| {
                k.api.inject(fault(500, "/status"));
                k.api.inject(fault(500, "/status"));
            }),
        ),
        ("slow NAD", 11, Box::new(|_| k.api.delay("ptp-net", 4_000))),
        (
            "401",
            7,
            Box::new(|c| {
                c["kubeconfig"] = json!(k.kubeconfig(crate::kubernetes::Auth::WrongToken))
            }),
        ),
        (
            "down",
            11,
            Box::new(|c| {
                let dead = k.w.dir.join("dead.kubeconfig");
                let text = std::fs::read_to_string(c["kubeconfig"].as_str().unwrap())
                    .unwrap()
                    .replace(&k.api.url(), "https://127.0.0.1:1");
                std::fs::write(&dead, text).unwrap();
                c["kubeconfig"] = json!(dead);
            }),
        ),
    ];
    for (what, code, setup) in cases {
        let mut c = conf.clone();
        setup(&mut c);
        let err = k.run("ADD", &c, "p", &uid).failure();
        assert_eq!(err["code"], code, "{what}: {err}");
        assert_clean(&k.w);
        // The runtime's DEL after a failed ADD.
        k.run("DEL", &c, "p", &uid).success();
        assert_clean(&k.w);
    }
}

#[test]
fn a_damaged_record_still_lets_del_release_everything() {
    for (i, damage) in [
        &b""[..],
        b"\x00\xff garbage",
        br#"{"kind":"somebody/v9","attachments":[]}"#,
        br#"{"kind":"multihome/v1"}"#,
        br#"[1, 2, 3]"#,
    ]
    .into_iter()
    .enumerate()
    {
        let w = World::new(&format!("damaged{i}"));
        let conf = two_networks(&w);
        w.run("ADD", &conf).success();
        std::fs::write(w.cache_file(), damage).unwrap();
        w.run("DEL", &conf).success();
        assert_clean(&w);
    }
}

#[test]
fn parallel_add_and_del_of_the_same_and_of_different_containers_leak_nothing() {
    let w = World::new("burst");
    let conf = two_networks(&w);
    let pods: Vec<crate::harness::Netns> = (0..4)
        .map(|i| crate::harness::Netns::create(format!("{}-{i}", w.host.name)))
        .collect();
    let env =
        |i: usize| -> (String, String) { (format!("{}-{i}", w.container_id), pods[i].path()) };
    for _round in 0..3 {
        std::thread::scope(|s| {
            for i in 0..pods.len() {
                for command in ["ADD", "DEL", "ADD"] {
                    let (cid, netns) = env(i);
                    let conf = &conf;
                    let w = &w;
                    s.spawn(move || {
                        // Any outcome is allowed while they race; the end state is what counts.
                        let _ = w.run_with(
                            command,
                            conf,
                            &[("CNI_CONTAINERID", &cid), ("CNI_NETNS", &netns)],
                        );
                    });
                }
            }
        });
    }
    for (i, pod) in pods.iter().enumerate() {
        let (cid, netns) = env(i);
        w.run_with(
            "DEL",
            &conf,
            &[("CNI_CONTAINERID", &cid), ("CNI_NETNS", &netns)],
        )
        .success();
        assert_eq!(pod.links(), Vec::<String>::new(), "pod {i}");
    }
    assert_eq!(w.all_reserved_ips(), vec![]);
    assert_eq!(w.cache_files(), Vec::<String>::new());
}
