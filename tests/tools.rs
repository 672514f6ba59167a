//! The command-line tool: its help and usage errors; `explain` agrees with the ADD it predicts
//! and changes nothing; `attachments` shows the records; `node-state` sees the links of the
//! namespace it runs in.

use serde_json::{Value, json};

use crate::harness::{run_tool, write_json};
use crate::kubernetes::{Kube, NS};

fn explain(k: &Kube, conf_file: &str, extra: &[&str]) -> (bool, Value) {
    let mut args = vec!["explain", "--config", conf_file, "--json"];
    args.extend_from_slice(extra);
    let (ok, out, err) = run_tool(&k.w.host.name, &args);
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    (ok, doc)
}

/// Two string fields of every element of a JSON list.
fn pairs(list: &Value, first: &str, second: &str) -> Vec<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[first].as_str().unwrap().to_string(),
                e[second].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn interfaces(doc: &Value) -> Vec<(String, String)> {
    pairs(&doc["attachments"], "interface", "network")
}

#[test]
fn explain_agrees_with_add_on_every_interface_network_and_error_and_changes_nothing() {
    let k = Kube::new("k8explain");
    let mut conf = k.conf();
    conf["binDir"] = json!(k.w.spy_bin());
    let conf_file = k.w.dir.join("00-multihome.conf");
    write_json(&conf_file, &conf);
    let conf_file = conf_file.to_str().unwrap().to_string();
    let cases = [
        json!("macvlan-net@storage0, ptp-net"),
        json!([{"name": "ptp-net", "interface": "p2p0"}, {"name": "macvlan-net"}]),
        json!("nope-net"),
        json!("Bad_Name"),
        json!([{"name": "macvlan-net", "mac": "02:00:00:00:00:09"}]),
        json!("ptp-net@eth0"),
        json!([{"name": "ptp-net", "default-route": ["198.18.2.1", "198.18.2.2"]}]),
    ];
    for (i, annotation) in cases.iter().enumerate() {
        let pod = format!("p{i}");
        let text = annotation
            .as_str()
            .map_or_else(|| annotation.to_string(), String::from);
        let uid = k.pod(&pod, json!({"k8s.v1.cni.cncf.io/networks": text}));
        k.api.take_requests();
        let (ok, doc) = explain(
            &k,
            &conf_file,
            &["--pod", &format!("{NS}/{pod}"), "--uid", &uid],
        );
        let requests = k.api.take_requests();
        assert!(
            requests.iter().all(|r| r.starts_with("GET ")),
            "only reads: {requests:?}"
        );
        assert_eq!(k.w.calls(), Vec::<String>::new(), "no delegate ran");
        assert_eq!(k.w.cache_files(), Vec::<String>::new(), "no record written");
        let add = k.run("ADD", &conf, &pod, &uid);
        if add.ok {
            assert!(ok && doc["error"].is_null(), "{text}: {doc}");
            let mut links: Vec<String> = interfaces(&doc).into_iter().map(|(i, _)| i).collect();
            links.sort();
            assert_eq!(k.w.pod.links(), links, "{text}");
            let status = pairs(&k.status(&pod), "interface", "name");
            assert_eq!(interfaces(&doc), status, "{text}");
            k.run("DEL", &conf, &pod, &uid).success();
        } else {
            let err = add.failure();
            assert!(!ok, "{text}: explain must exit non-zero");
            assert_eq!(doc["error"]["code"], err["code"], "{text}");
            assert_eq!(doc["error"]["msg"], err["msg"], "{text}");
        }
        k.assert_clean();
        std::fs::remove_file(k.w.dir.join("calls.log")).ok();
    }
    // A pod the API does not know: ADD attaches the cluster network only, with a warning; so
    // does explain, and says so.
    let (ok, doc) = explain(&k, &conf_file, &["--pod", &format!("{NS}/ghost")]);
    assert!(ok, "{doc}");
    assert_eq!(
        interfaces(&doc),
        [("eth0".to_string(), "cluster".to_string())]
    );
    assert!(
        doc["warnings"][0].as_str().unwrap().contains("not found"),
        "{doc}"
    );
}

#[test]
fn explain_offline_from_nad_files_shows_plugins_masters_and_policy() {
    let k = Kube::new("k8offline");
    let mut conf = k.conf();
    conf["nadPolicy"] = json!([{"namespaces": ["*"], "master": ["mvm*"]}]);
    let conf_file = k.w.dir.join("multihome.conflist");
    // A conflist, as a runtime reads it: name and cniVersion come from the list.
    let mut plugin = conf.clone();
    let obj = plugin.as_object_mut().unwrap();
    obj.remove("name");
    obj.remove("cniVersion");
    write_json(
        &conf_file,
        &json!({"cniVersion": "1.0.0", "name": "multihome", "plugins": [plugin]}),
    );
    let nad = k.w.dir.join("mv.yaml");
    std::fs::write(
        &nad,
        format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: mv\nspec:\n  config: '{}'\n",
            k.w.macvlan_net("1.0.0", "mvm0")
        ),
    )
    .unwrap();
    let gone = k.w.dir.join("gone.json");
    std::fs::write(
        &gone,
        json!({"metadata": {"name": "gone", "namespace": "apps"}, "spec": {"config": k.w.macvlan_net("1.0.0", "nic9").to_string()}}).to_string(),
    )
    .unwrap();
    let (ok, doc) = explain(
        &k,
        conf_file.to_str().unwrap(),
        &[
            "--namespace",
            "apps",
            "--annotation",
            r#"[{"name": "mv", "interface": "st0", "default-route": []}]"#,
            "--nad",
            nad.to_str().unwrap(),
            "--nad",
            gone.to_str().unwrap(),
        ],
    );
    assert!(ok, "{doc}");
    assert_eq!(
        interfaces(&doc),
        [
            ("eth0".to_string(), "cluster".to_string()),
            ("st0".to_string(), "apps/mv".to_string())
        ]
    );
    let mv = &doc["attachments"][1];
    assert_eq!(mv["plugins"][0]["type"], "macvlan");
    assert_eq!(mv["plugins"][0]["path"], "/usr/lib/cni/macvlan");
    assert!(
        mv["plugins"][0]["cniArgs"]
            .as_str()
            .unwrap()
            .contains("K8S_POD_NAMESPACE=apps")
    );
    assert_eq!(
        mv["hostInterfaces"],
        json!([{"key": "master", "name": "mvm0", "exists": true}])
    );
    assert_eq!(mv["defaultRoute"], json!([]));
    assert!(
        mv["policy"].as_str().unwrap().contains("nadPolicy rule 0"),
        "{mv}"
    );
    assert!(
        mv["source"]
            .as_str()
            .unwrap()
            .contains("NetworkAttachmentDefinition apps/mv")
    );
    // The master a policy does not allow: the error ADD would give.
    let (ok, doc) = explain(
        &k,
        conf_file.to_str().unwrap(),
        &[
            "--namespace",
            "apps",
            "--annotation",
            "gone",
            "--nad",
            gone.to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert_eq!(doc["error"]["code"], 7);
    assert!(
        doc["error"]["msg"]
            .as_str()
            .unwrap()
            .contains(r#""master" "nic9""#),
        "{doc}"
    );
    // The readable table says the same.
    let (_, table, _) = run_tool(
        &k.w.host.name,
        &[
            "explain",
            "--config",
            conf_file.to_str().unwrap(),
            "--namespace",
            "apps",
            "--annotation",
            "mv",
            "--nad",
            nad.to_str().unwrap(),
        ],
    );
    assert!(
        table.contains("apps/mv") && table.contains("mvm0 (present)"),
        "{table}"
    );
}

#[test]
fn attachments_lists_the_records_and_marks_the_stale_ones() {
    let k = Kube::new("k8attach");
    let conf = k.conf();
    let conf_file = k.w.dir.join("00-multihome.conf");
    write_json(&conf_file, &conf);
    let cf = conf_file.to_str().unwrap();
    let uid = k.pod("web", json!({"k8s.v1.cni.cncf.io/networks": "ptp-net"}));
    k.run("ADD", &conf, "web", &uid).success();
    let (ok, out, err) = run_tool(&k.w.host.name, &["attachments", "--config", cf, "--json"]);
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let r = &doc["records"][0];
    assert_eq!(r["containerID"], k.w.container_id.as_str());
    assert_eq!(
        (r["network"].as_str(), r["ifname"].as_str()),
        (Some("multihome"), Some("eth0"))
    );
    assert_eq!(r["stale"], false);
    let ifs: Vec<&str> = r["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["interface"].as_str().unwrap())
        .collect();
    assert_eq!(ifs, ["eth0", "net1"]);
    let ip = crate::kubernetes::ip_of(&k.w, "net1");
    assert!(
        r["attachments"][1]["ips"][0]
            .as_str()
            .unwrap()
            .starts_with(&ip),
        "{r}"
    );
    assert!(r["added"].as_str().is_some());
    let (_, out, _) = run_tool(
        &k.w.host.name,
        &[
            "attachments",
            "--config",
            cf,
            "--container",
            "other",
            "--json",
        ],
    );
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["records"],
        json!([])
    );
    // The pod's namespace gone without a DEL: stale.
    crate::harness::sh(&["ip", "netns", "del", &k.w.pod.name]);
    let (_, out, _) = run_tool(&k.w.host.name, &["attachments", "--config", cf, "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["records"][0]["stale"],
        true
    );
    let (_, table, _) = run_tool(&k.w.host.name, &["attachments", "--config", cf]);
    assert!(table.contains("STALE") && table.contains("net1"), "{table}");
    k.run("DEL", &conf, "web", &uid).success();
    let (_, out, _) = run_tool(&k.w.host.name, &["attachments", "--config", cf, "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["records"],
        json!([])
    );
}

#[test]
fn node_state_sees_exactly_the_links_of_its_namespace_and_what_multihome_moved() {
    let w = crate::harness::World::new("nodestate");
    w.veth_master("mvm0");
    let h = w.host.name.clone();
    crate::harness::sh(&[
        "ip", "-n", &h, "link", "add", "mvx", "link", "mvm0", "type", "macvlan", "mode", "bridge",
    ]);
    crate::harness::sh(&[
        "ip", "-n", &h, "link", "add", "hif0", "type", "veth", "peer", "name", "hif0p",
    ]);
    let conf = w.conf(
        "1.0.0",
        vec![
            w.cluster_net("1.0.0"),
            json!({"cniVersion": "1.0.0", "name": "hi", "type": "host-interface", "device": "hif0p"}),
        ],
    );
    w.run("ADD", &conf).success();
    let conf_file = w.dir.join("00-multihome.conf");
    write_json(&conf_file, &conf);
    let (ok, out, err) = run_tool(
        &h,
        &[
            "node-state",
            "--config",
            conf_file.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let ifs = doc["interfaces"].as_array().unwrap();
    let by = |name: &str| {
        ifs.iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {doc}"))
    };
    for i in ifs {
        let name = i["name"].as_str().unwrap();
        let ours = ["lo", "mvm0", "mvm0p", "mvx", "hif0", "mhbr0"].contains(&name)
            || (name.starts_with("veth") && i["master"] == "mhbr0");
        assert!(ours, "{name} is not of this namespace's making: {i}");
    }
    assert_eq!(by("mvx")["kind"], "macvlan");
    assert_eq!(by("mvm0")["kind"], "veth");
    assert_eq!(by("mhbr0")["kind"], "bridge");
    assert!(
        by("mhbr0")["addresses"]
            .as_array()
            .unwrap()
            .contains(&json!("198.18.0.1/24")),
        "{doc}"
    );
    assert!(
        ifs.iter().all(|i| i["name"] != "hif0p"),
        "moved into the pod"
    );
    let moved = &doc["movedIntoPods"];
    assert_eq!(
        (
            moved[0]["hostLink"].as_str(),
            moved[0]["interface"].as_str()
        ),
        (Some("hif0p"), Some("net1")),
        "{moved}"
    );
    let (_, table, _) = run_tool(&h, &["node-state", "--config", conf_file.to_str().unwrap()]);
    assert!(
        table.contains("mvx") && table.contains("macvlan") && table.contains("hif0p is net1"),
        "{table}"
    );
    w.run("DEL", &conf).success();
}

/// Every line of `log` and its backups (`.N`, `.N.gz`).
fn log_lines(dir: &std::path::Path, log: &str) -> (Vec<String>, usize) {
    let mut lines = Vec::new();
    let mut backups = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with(log) || name.ends_with(".lock") {
            continue;
        }
        if name != log {
            backups += 1;
        }
        let mut text = String::new();
        let file = std::fs::File::open(&path).unwrap();
        if name.ends_with(".gz") {
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(file), &mut text)
                .unwrap();
        } else {
            std::io::Read::read_to_string(&mut { file }, &mut text).unwrap();
        }
        lines.extend(text.lines().map(String::from));
    }
    (lines, backups)
}

#[test]
fn log_rotation_under_four_concurrent_writers_loses_no_line_and_keeps_max_backups() {
    let w = crate::harness::World::new("logrot");
    for (max_backups, phase) in [(100, "all"), (2, "few")] {
        let log = format!("{phase}.log");
        let mut conf = w.conf("1.0.0", vec![w.ptp_net("1.0.0")]);
        conf["logFile"] = json!(w.dir.join(&log));
        conf["logLevel"] = json!("error");
        conf["logToStderr"] = json!(false);
        conf["logOptions"] = json!({"maxSize": 0.004, "maxBackups": max_backups, "compress": true});
        std::thread::scope(|s| {
            for t in 0..4 {
                let (w, conf) = (&w, &conf);
                s.spawn(move || {
                    for i in 0..40 {
                        // Fails at once (no such namespace) and logs exactly one line naming it.
                        let cid = format!("{phase}-w{t}-{i}");
                        w.run_with(
                            "ADD",
                            conf,
                            &[("CNI_CONTAINERID", &cid), ("CNI_NETNS", "/nonexistent")],
                        )
                        .failure();
                    }
                });
            }
        });
        let (lines, backups) = log_lines(&w.dir, &log);
        assert!(
            lines.iter().all(|l| l.contains("[error] multihome: ADD ")),
            "torn or foreign lines"
        );
        if max_backups == 100 {
            assert!(backups >= 3, "it rotated: {backups}");
            for t in 0..4 {
                for i in 0..40 {
                    let cid = format!("{phase}-w{t}-{i}:");
                    let n = lines.iter().filter(|l| l.contains(&cid)).count();
                    assert_eq!(n, 1, "{cid} appears {n} times");
                }
            }
        } else {
            assert_eq!(backups, 2, "maxBackups");
        }
    }
}

/// A process that opened `logFile` before others rotated it writes its line to the file that
/// is `logFile` then, not to the backup its handle became: over 20 rounds, 4 writers each
/// start an ADD held inside its delegate, 40 quick ADDs of the 4 rotate the log under them,
/// then each held ADD ends with an error line, its writer's last, which must be the last line of
/// the current file.
#[test]
fn after_a_rotation_every_writers_last_line_is_in_the_current_file() {
    use std::os::unix::fs::MetadataExt;
    let w = crate::harness::World::new("logstale");
    let bin = w.dir.join("holdbin");
    std::fs::create_dir_all(&bin).unwrap();
    let d = w.dir.display();
    // ADD waits for its release file, then fails; DEL succeeds at once.
    crate::harness::write_script(
        &bin.join("holder"),
        &format!(
            "cat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] || exit 0\ntouch {d}/started-$CNI_CONTAINERID\nwhile [ ! -e {d}/release-$CNI_CONTAINERID ]; do sleep 0.02; done\necho '{{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"released\"}}'\nexit 1\n"
        ),
    );
    let log = w.dir.join("stale.log");
    let mut conf = w.conf(
        "1.0.0",
        vec![json!({"cniVersion": "1.0.0", "name": "hold", "type": "holder"})],
    );
    conf["binDir"] = json!(bin);
    conf["logFile"] = json!(log);
    conf["logLevel"] = json!("error");
    conf["logToStderr"] = json!(false);
    // The quick writers' lines are twice as long as the held ones; the log holds nine and
    // three quarters of them, so each rotation leaves room a held line would fit in (a writer that only
    // reopened when its line no longer fitted would write it to the backup).
    let quick =
        |round: usize, t: usize, i: usize| format!("quick-{round}-w{t}-{i}-{}", "q".repeat(200));
    let mut probe = conf.clone();
    probe["logFile"] = json!(w.dir.join("probe.log"));
    w.run_with(
        "ADD",
        &probe,
        &[
            ("CNI_CONTAINERID", &quick(0, 0, 0)),
            ("CNI_NETNS", "/nonexistent"),
        ],
    )
    .failure();
    let line = std::fs::read_to_string(w.dir.join("probe.log"))
        .unwrap()
        .len();
    let max_size = (line * 39 / 4) as f64 / 1_048_576.0;
    conf["logOptions"] = json!({"maxSize": max_size, "maxBackups": 100, "compress": false});
    for round in 0..20 {
        let held: Vec<(String, std::process::Child)> = (0..4)
            .map(|t| {
                let cid = format!("held-{round}-w{t}");
                let child = w.spawn_with("ADD", &conf, &[("CNI_CONTAINERID", &cid)]);
                (cid, child)
            })
            .collect();
        for (cid, _) in &held {
            crate::harness::wait_until("the held ADD is in its delegate", || {
                w.dir.join(format!("started-{cid}")).exists()
            });
        }
        let before = std::fs::metadata(&log).map(|m| m.ino()).ok();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (w, conf, quick) = (&w, &conf, &quick);
                s.spawn(move || {
                    for i in 0..10 {
                        let cid = quick(round, t, i);
                        w.run_with(
                            "ADD",
                            conf,
                            &[("CNI_CONTAINERID", &cid), ("CNI_NETNS", "/nonexistent")],
                        )
                        .failure();
                    }
                });
            }
        });
        assert_ne!(
            std::fs::metadata(&log).map(|m| m.ino()).ok(),
            before,
            "round {round}: the quick writers rotated the log"
        );
        for (cid, child) in held {
            std::fs::write(w.dir.join(format!("release-{cid}")), b"").unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(!out.status.success(), "{cid}: the held ADD fails");
            let current = std::fs::read_to_string(&log).unwrap();
            let last = current.lines().last().unwrap_or_default();
            assert!(
                last.contains(&format!("ADD {cid}")) && last.contains("released"),
                "round {round}: {cid}'s line is not the current file's last: {last:?}"
            );
        }
    }
}

/// The tool's command line as an operator meets it: help on stdout and exit 0, a usage error
/// on stderr naming the option and exit 2 (as Go's and clap's parsers do), no verb run.
#[test]
fn help_and_usage_errors_exit_as_command_line_tools_do() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_multihome"))
            .args(args)
            .env_remove("CNI_COMMAND")
            .output()
            .expect("running multihome");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for verb in ["version", "install", "explain", "attachments", "node-state"] {
        assert!(
            out.contains(&format!("\n  {verb} ")),
            "{verb} missing from:\n{out}"
        );
        let (code, help, _) = run(&[verb, "--help"]);
        assert_eq!(code, Some(0));
        assert!(help.contains(&format!("Usage: multihome {verb}")), "{help}");
    }
    let (_, help, _) = run(&["install", "--help"]);
    for flag in [
        "--multus-conf-file",
        "--cleanup-config-on-exit",
        "--once",
        "--nad-policy",
    ] {
        assert!(help.contains(flag), "{flag} missing from install --help");
    }

    let (code, out, err) = run(&["install", "--cni-conf-dir"]);
    assert_eq!((code, out.as_str()), (Some(2), ""));
    assert_eq!(
        err,
        "multihome install: missing argument for option '--cni-conf-dir'\n\
         See `multihome install --help`.\n"
    );
    let (code, _, err) = run(&["instal", "--once"]);
    assert_eq!(code, Some(2));
    assert!(err.starts_with("multihome: no verb \"instal\""), "{err}");
    let (code, out, _) = run(&["version"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with(&format!(
        "multihome {} (CNI spec ",
        env!("CARGO_PKG_VERSION")
    )));
}
