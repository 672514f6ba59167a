//! `multihome install` end to end: a test-made host root (conf dir with a primary bridge
//! conflist, bin dir, a service-account directory laid out as kubelet projects it) and the API
//! stand-in as the in-cluster API. The config it generates is then driven as a runtime does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{wait_until, write_json};
use crate::kubernetes::{Kube, NS};

struct Root {
    conf: PathBuf,
    bin: PathBuf,
    sa: PathBuf,
    /// Whether `--cni-conf-dir-host` is passed (multihome's own flag; Multus has none).
    host_flag: bool,
}

impl Root {
    fn new(k: &Kube, primary: Option<&Value>) -> Root {
        Self::laid_out(k, primary, "etc/cni/net.d", true)
    }

    /// A host root as k3s lays it out, installed with Multus's DaemonSet flags alone.
    fn k3s(k: &Kube, primary: &Value) -> Root {
        Self::laid_out(
            k,
            Some(primary),
            "var/lib/rancher/k3s/agent/etc/cni/net.d",
            false,
        )
    }

    fn laid_out(k: &Kube, primary: Option<&Value>, conf_dir: &str, host_flag: bool) -> Root {
        let top = k.w.dir.join(format!("root-{}", rand()));
        let root = Root {
            conf: top.join(conf_dir),
            bin: top.join("opt/cni/bin"),
            sa: top.join("serviceaccount"),
            host_flag,
        };
        std::fs::create_dir_all(&root.conf).unwrap();
        std::fs::create_dir_all(&root.bin).unwrap();
        std::fs::create_dir_all(&root.sa).unwrap();
        if let Some(p) = primary {
            write_json(&root.conf.join("10-bridge.conflist"), p);
        }
        project(
            &root.sa,
            &k.api.creds.token,
            &k.api.creds.ca_pem,
            "..2026_12_01_00_00_00.1",
        );
        std::os::unix::fs::symlink("..data/token", root.sa.join("token")).unwrap();
        std::os::unix::fs::symlink("..data/ca.crt", root.sa.join("ca.crt")).unwrap();
        root
    }

    fn kube_dir(&self) -> PathBuf {
        self.conf.join("multus.d")
    }

    fn generated(&self) -> PathBuf {
        self.conf.join("00-multihome.conflist")
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "install",
            "--cni-conf-dir",
            self.conf.to_str().unwrap(),
            "--multus-autoconfig-dir",
            self.conf.to_str().unwrap(),
            "--multus-conf-file=auto",
            "--cni-bin-dir",
            self.bin.to_str().unwrap(),
            "--multus-kubeconfig-file-host",
            self.kube_dir().join("multus.kubeconfig").to_str().unwrap(),
            "--service-account-dir",
            self.sa.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        if self.host_flag {
            args.extend([
                "--cni-conf-dir-host".into(),
                self.conf.display().to_string(),
            ]);
        }
        args
    }
}

fn rand() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// As kubelet updates a projected volume: the files in a new timestamped directory, then the
/// `..data` symlink swapped to it in one rename.
fn project(sa: &Path, token: &str, ca: &str, stamp: &str) {
    let dir = sa.join(stamp);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
    std::fs::write(dir.join("ca.crt"), ca).unwrap();
    let tmp = sa.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(stamp, &tmp).unwrap();
    std::fs::rename(&tmp, sa.join("..data")).unwrap();
}

fn install(k: &Kube, args: &[String]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &k.w.host.name,
        env!("CARGO_BIN_EXE_multihome"),
    ])
    .args(args)
    .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    .env("KUBERNETES_SERVICE_PORT", k.api.addr.port().to_string());
    for (key, _) in std::env::vars() {
        if key.starts_with("CNI_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn once(k: &Kube, root: &Root, extra: &[&str]) -> (bool, String) {
    let mut args = root.args();
    args.push("--once".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = install(k, &args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A watching install, killed when dropped (a failed assertion leaves no watcher behind).
struct Watcher(Child);

impl Watcher {
    /// SIGTERM, as kubelet stops the container; whether it then exited cleanly.
    fn terminate(&mut self) -> bool {
        crate::harness::sh(&["kill", "-TERM", &self.0.id().to_string()]);
        self.0.wait().unwrap().success()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A watching install; its log goes to `log`.
fn spawn(k: &Kube, root: &Root, extra: &[&str], log: &Path) -> Watcher {
    let mut args = root.args();
    args.extend(extra.iter().map(|s| s.to_string()));
    Watcher(
        install(k, &args)
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
            .spawn()
            .unwrap(),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn primary(k: &Kube, with_bandwidth: bool) -> Value {
    let mut ipam = k.w.ipam("198.18.0.0/24");
    ipam["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    let mut plugins = vec![
        json!({"type": "bridge", "bridge": "mhbr0", "isGateway": true, "ipam": ipam}),
        json!({"type": "portmap", "capabilities": {"portMappings": true}}),
    ];
    if with_bandwidth {
        plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    }
    json!({"cniVersion": "1.0.0", "name": "cbr", "plugins": plugins})
}

/// The config a runtime would load (the conf dir's first file), kept to this test's cniDir.
fn runtime_conf(k: &Kube, root: &Root) -> Value {
    let (file, bytes) = multihome::config::runtime_config(None, &root.conf).unwrap();
    assert_eq!(file, root.generated(), "multihome's config comes first");
    let mut conf: Value = serde_json::from_slice(&bytes).unwrap();
    conf["cniDir"] = json!(k.w.cache_dir());
    conf
}

/// A pod with two NADs through `conf`, as the runtime runs it: eth0 from the primary, net1 and
/// net2 from the NADs. Its network-status; the pod is deleted again, leaving nothing.
fn pod_with_two_nads(k: &Kube, conf: &Value, name: &str) -> Value {
    let uid = k.pod(
        name,
        json!({"k8s.v1.cni.cncf.io/networks": "macvlan-net, ptp-net"}),
    );
    k.run("ADD", conf, name, &uid).success();
    assert_eq!(k.w.pod.links(), ["eth0", "net1", "net2"]);
    let status = k.status(name);
    k.run("DEL", conf, name, &uid).success();
    k.assert_clean();
    status
}

#[test]
fn install_then_add_through_the_generated_config_follow_changes_and_exit_cleanly() {
    let k = Kube::new("k8install");
    let root = Root::new(&k, Some(&primary(&k, false)));
    let (ok, log) = once(&k, &root, &[]);
    assert!(ok, "{log}");
    let copied = root.bin.join("multihome");
    assert_eq!(
        std::fs::read(&copied).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_multihome")).unwrap()
    );
    assert_eq!(mode(&copied), 0o755);
    assert_eq!(mode(&root.kube_dir()), 0o700);
    for f in ["multus.kubeconfig", "token", "ca.crt"] {
        assert_eq!(mode(&root.kube_dir().join(f)), 0o600, "{f}");
    }
    let kubeconfig = std::fs::read_to_string(root.kube_dir().join("multus.kubeconfig")).unwrap();
    assert!(
        kubeconfig.contains("tokenFile: token") && !kubeconfig.contains(&k.api.creds.token),
        "no token embedded"
    );
    let generated: Value =
        serde_json::from_slice(&std::fs::read(root.generated()).unwrap()).unwrap();
    assert_eq!(generated["cniVersion"], "1.0.0");
    let plugin = &generated["plugins"][0];
    assert_eq!(plugin["type"], "multihome");
    assert_eq!(plugin["capabilities"], json!({"portMappings": true}));
    assert_eq!(
        plugin["clusterNetwork"],
        json!(root.conf.join("10-bridge.conflist"))
    );
    // A second install changes nothing.
    let before = std::fs::metadata(root.generated())
        .unwrap()
        .modified()
        .unwrap();
    let (ok, log) = once(&k, &root, &[]);
    assert!(ok && log.contains("up to date"), "{log}");
    assert_eq!(
        std::fs::metadata(root.generated())
            .unwrap()
            .modified()
            .unwrap(),
        before
    );

    let status = pod_with_two_nads(&k, &runtime_conf(&k, &root), "web");
    assert_eq!(status.as_array().unwrap().len(), 3);

    // Watching: the primary changes, the token rotates (the old one revoked).
    let mut watcher = spawn(&k, &root, &[], &k.w.dir.join("install.log"));
    std::thread::sleep(Duration::from_millis(500));
    write_json(&root.conf.join("10-bridge.conflist"), &primary(&k, true));
    wait_until("the config follows the primary", || {
        std::fs::read_to_string(root.generated())
            .unwrap_or_default()
            .contains("bandwidth")
    });
    let token = k.api.rotate_token();
    project(
        &root.sa,
        &token,
        &k.api.creds.ca_pem,
        "..2026_12_01_01_00_00.2",
    );
    wait_until("the token is renewed", || {
        std::fs::read_to_string(root.kube_dir().join("token")).unwrap_or_default() == token
    });
    let conf = runtime_conf(&k, &root);
    let uid = k.pod("web2", json!({"k8s.v1.cni.cncf.io/networks": "ptp-net"}));
    k.run("ADD", &conf, "web2", &uid).success();
    k.run("DEL", &conf, "web2", &uid).success();
    k.assert_clean();
    // SIGTERM: the config stays, so no pod starts without multihome during an upgrade.
    assert!(watcher.terminate());
    assert!(root.generated().exists());
    // Multus's behaviour on request.
    let mut watcher = spawn(
        &k,
        &root,
        &["--cleanup-config-on-exit"],
        &k.w.dir.join("install2.log"),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(watcher.terminate());
    assert!(!root.generated().exists());
    let _ = NS;
}

#[test]
fn bad_inputs_are_clear_errors_naming_the_file_and_nothing_is_half_written() {
    let k = Kube::new("k8installbad");
    // No primary: waits, then a clear error.
    let root = Root::new(&k, None);
    let (ok, log) = once(&k, &root, &["--primary-timeout", "1"]);
    assert!(
        !ok && log.contains("waiting for a primary") && log.contains(root.conf.to_str().unwrap()),
        "{log}"
    );
    assert!(!root.generated().exists());
    // A primary that is not JSON.
    std::fs::write(root.conf.join("10-broken.conflist"), "{ not json").unwrap();
    let (ok, log) = once(&k, &root, &[]);
    assert!(
        !ok && log.contains("10-broken.conflist") && log.contains("not valid JSON"),
        "{log}"
    );
    assert!(!root.generated().exists(), "never an empty config");
    // The tenant policy from a file (the DaemonSet's ConfigMap): checked, then carried over.
    let root = Root::new(&k, Some(&primary(&k, false)));
    let policy = k.w.dir.join("nad-policy.json");
    std::fs::write(&policy, r#"[{"namespaces": ["*"], "masters": []}]"#).unwrap();
    let (ok, log) = once(&k, &root, &["--nad-policy", policy.to_str().unwrap()]);
    assert!(
        !ok && log.contains("nad-policy.json") && log.contains("masters"),
        "{log}"
    );
    assert!(!root.generated().exists());
    std::fs::write(&policy, r#"[{"namespaces": ["*"], "master": ["ens*"]}]"#).unwrap();
    let (ok, log) = once(&k, &root, &["--nad-policy", policy.to_str().unwrap()]);
    assert!(ok, "{log}");
    let generated: Value =
        serde_json::from_slice(&std::fs::read(root.generated()).unwrap()).unwrap();
    assert_eq!(
        generated["plugins"][0]["nadPolicy"][0]["master"],
        json!(["ens*"])
    );
    // An unwritable bin dir.
    let root = Root::new(&k, Some(&primary(&k, false)));
    std::fs::remove_dir(&root.bin).unwrap();
    std::fs::write(&root.bin, b"a file, not a directory").unwrap();
    let (ok, log) = once(&k, &root, &[]);
    assert!(!ok && log.contains(root.bin.to_str().unwrap()), "{log}");
    assert!(!root.generated().exists());
    let parent = root.bin.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A Multus user's DaemonSet flags, unchanged, on a host whose conf dir is not
/// `/etc/cni/net.d` (k3s): the primary travels inside the generated config, so the runtime's
/// ADD gets eth0 and the NADs; a change of the primary is followed; and the watch, once
/// settled, stays quiet (it never wakes itself).
#[test]
fn with_multus_flags_alone_the_config_works_where_the_conf_dir_is_elsewhere() {
    let k = Kube::new("k8k3s");
    let root = Root::k3s(&k, &primary(&k, false));
    let log = k.w.dir.join("install.log");
    let mut watcher = spawn(&k, &root, &[], &log);
    wait_until("the config is generated", || root.generated().exists());
    let generated: Value =
        serde_json::from_slice(&std::fs::read(root.generated()).unwrap()).unwrap();
    let plugin = &generated["plugins"][0];
    assert_eq!(plugin.get("clusterNetwork"), None, "{plugin}");
    assert_eq!(plugin["delegates"], json!([primary(&k, false)]));
    assert_eq!(plugin["capabilities"], json!({"portMappings": true}));

    let status = pod_with_two_nads(&k, &runtime_conf(&k, &root), "web");
    assert_eq!(status[0]["name"], "cbr");
    assert!(
        status[0]["ips"][0]
            .as_str()
            .unwrap()
            .starts_with("198.18.0.")
    );

    // The primary changes: the copy follows, and pods get the new chain.
    write_json(&root.conf.join("10-bridge.conflist"), &primary(&k, true));
    wait_until("the config follows the primary", || {
        std::fs::read_to_string(root.generated())
            .unwrap_or_default()
            .contains("bandwidth")
    });
    let conf = runtime_conf(&k, &root);
    let uid = k.pod("web2", json!({"k8s.v1.cni.cncf.io/networks": "ptp-net"}));
    k.run("ADD", &conf, "web2", &uid).success();
    assert_eq!(k.w.pod.links(), ["eth0", "net1"]);
    k.run("DEL", &conf, "web2", &uid).success();
    k.assert_clean();

    // Settled, nothing changes: no pass runs (each pass says "up to date").
    std::thread::sleep(Duration::from_millis(1000));
    let passes = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap()
            .matches("00-multihome.conflist is up to date")
            .count()
    };
    let before = passes(&log);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(passes(&log), before, "the watch wakes itself");
    assert!(watcher.terminate());
}

/// A DaemonSet upgrade replaces the binary while the runtime starts it: never "text file busy"
/// (the copy is closed before it takes the binary's name).
#[test]
fn the_binary_replaced_while_it_is_executed_never_fails_an_exec() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let k = Kube::new("k8txtbsy");
    let root = Root::new(&k, Some(&primary(&k, false)));
    // Two builds that differ, so that every install replaces the binary; written before any
    // thread forks, so that no child inherits a write handle of them.
    let variants: Vec<PathBuf> = (0..2)
        .map(|i| {
            let path = k.w.dir.join(format!("multihome-{i}"));
            let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_multihome")).unwrap();
            bytes.extend_from_slice(format!("\nvariant {i}").as_bytes());
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        })
        .collect();
    let mut args = root.args();
    args.extend(["--once".into(), "--skip-config-watch".into()]);
    let install_with = |binary: &Path| {
        let out = Command::new("ip")
            .args(["netns", "exec", &k.w.host.name])
            .arg(binary)
            .args(&args)
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", k.api.addr.port().to_string())
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    install_with(&variants[0]);
    let installed = root.bin.join("multihome");
    let (installs, execs) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let failures = std::thread::scope(|s| {
        let runner = s.spawn(|| {
            let mut failures = Vec::new();
            while execs.load(Ordering::SeqCst) < 2000 || installs.load(Ordering::SeqCst) < 50 {
                let out = Command::new(&installed)
                    .arg("version")
                    .env_remove("CNI_COMMAND")
                    .output();
                match out {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => failures.push(format!("{:?}", out.status)),
                    Err(e) => failures.push(e.to_string()),
                }
                execs.fetch_add(1, Ordering::SeqCst);
            }
            failures
        });
        let mut i = 1;
        while !runner.is_finished() {
            install_with(&variants[i % 2]);
            installs.fetch_add(1, Ordering::SeqCst);
            i += 1;
        }
        runner.join().unwrap()
    });
    let (installs, execs) = (installs.into_inner(), execs.into_inner());
    assert!(
        installs >= 50 && execs >= 2000,
        "{installs} installs, {execs} execs"
    );
    assert_eq!(
        failures,
        Vec::<String>::new(),
        "of {execs} execs over {installs} installs"
    );
}
