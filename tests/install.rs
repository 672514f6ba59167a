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
}

impl Root {
    fn new(k: &Kube, primary: Option<&Value>) -> Root {
        let top = k.w.dir.join(format!("root-{}", rand()));
        let root = Root {
            conf: top.join("etc/cni/net.d"),
            bin: top.join("opt/cni/bin"),
            sa: top.join("serviceaccount"),
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
        [
            "install",
            "--cni-conf-dir",
            self.conf.to_str().unwrap(),
            "--cni-bin-dir",
            self.bin.to_str().unwrap(),
            "--cni-conf-dir-host",
            self.conf.to_str().unwrap(),
            "--multus-kubeconfig-file-host",
            self.kube_dir().join("multus.kubeconfig").to_str().unwrap(),
            "--service-account-dir",
            self.sa.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
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

fn spawn(k: &Kube, root: &Root, extra: &[&str]) -> Child {
    let mut args = root.args();
    args.extend(extra.iter().map(|s| s.to_string()));
    install(k, &args).stderr(Stdio::null()).spawn().unwrap()
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

    // A pod through it, as the runtime runs it: eth0 from the primary, net1/net2 from NADs.
    let conf = runtime_conf(&k, &root);
    let uid = k.pod(
        "web",
        json!({"k8s.v1.cni.cncf.io/networks": "macvlan-net, ptp-net"}),
    );
    k.run("ADD", &conf, "web", &uid).success();
    assert_eq!(k.w.pod.links(), ["eth0", "net1", "net2"]);
    assert_eq!(k.status("web").as_array().unwrap().len(), 3);
    k.run("DEL", &conf, "web", &uid).success();
    k.assert_clean();

    // Watching: the primary changes, the token rotates (the old one revoked).
    let mut watcher = spawn(&k, &root, &[]);
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
    crate::harness::sh(&["kill", "-TERM", &watcher.id().to_string()]);
    assert!(watcher.wait().unwrap().success());
    assert!(root.generated().exists());
    // Multus's behaviour on request.
    let mut watcher = spawn(&k, &root, &["--cleanup-config-on-exit"]);
    std::thread::sleep(Duration::from_millis(500));
    crate::harness::sh(&["kill", "-TERM", &watcher.id().to_string()]);
    assert!(watcher.wait().unwrap().success());
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
