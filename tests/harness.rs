//! A world per test: a "host" namespace where multihome and its delegates run (bridges, veth
//! masters), a pod namespace, and a scratch directory for the cache, IPAM state and configs.
//! Everything is removed on drop, also when the test fails.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

/// Where the reference plugins live on Debian.
pub const PLUGINS: &str = "/usr/lib/cni";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs a command and panics with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: String) -> Netns {
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("running ip (is iproute2 installed?)");
        assert!(
            out.status.success(),
            "cannot create network namespace {name}: these tests need root and iproute2: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        sh(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -j addr` inside the namespace: interface name -> its global addresses (CIDR).
    pub fn addresses(&self) -> Vec<(String, Vec<String>)> {
        let out = sh(&["ip", "-n", &self.name, "-j", "addr", "show"]);
        let links: Vec<Value> = serde_json::from_str(&out).expect("ip -j output");
        links
            .iter()
            .map(|l| {
                let addrs = l["addr_info"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| a["scope"] == "global")
                    .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
                    .collect();
                (l["ifname"].as_str().unwrap().to_string(), addrs)
            })
            .collect()
    }

    /// Interface names, loopback excluded.
    pub fn links(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .addresses()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n != "lo")
            .collect();
        names.sort();
        names
    }

    pub fn addrs_of(&self, ifname: &str) -> Vec<String> {
        self.addresses()
            .into_iter()
            .find(|(n, _)| n == ifname)
            .map(|(_, a)| a)
            .unwrap_or_default()
    }

    pub fn mtu_of(&self, ifname: &str) -> u64 {
        let out = sh(&["ip", "-n", &self.name, "-j", "link", "show", ifname]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v[0]["mtu"].as_u64().unwrap()
    }

    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What one multihome invocation did.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: Value,
    pub stdout_raw: String,
    pub stderr: String,
}

impl Run {
    /// Panics with everything printed unless the call succeeded.
    pub fn success(self) -> Run {
        assert!(
            self.ok,
            "multihome failed:\nstdout: {}\nstderr: {}",
            self.stdout_raw, self.stderr
        );
        self
    }

    /// Panics unless the call failed; returns the CNI error object.
    pub fn failure(self) -> Value {
        assert!(
            !self.ok,
            "multihome unexpectedly succeeded:\nstdout: {}\nstderr: {}",
            self.stdout_raw, self.stderr
        );
        self.stdout
    }
}

/// One test's namespaces and scratch directory.
pub struct World {
    pub host: Netns,
    pub pod: Netns,
    pub dir: PathBuf,
    pub container_id: String,
}

impl World {
    pub fn new(tag: &str) -> World {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("mh-{tag}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let host = Netns::create(format!("{id}-h"));
        let pod = Netns::create(format!("{id}-p"));
        World {
            host,
            pod,
            dir,
            container_id: format!("ctr-{id}"),
        }
    }

    /// A veth pair in the host namespace, both ends up; `name` serves as a macvlan master.
    pub fn veth_master(&self, name: &str) {
        let peer = format!("{name}p");
        sh(&[
            "ip",
            "-n",
            &self.host.name,
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        sh(&["ip", "-n", &self.host.name, "link", "set", name, "up"]);
        sh(&["ip", "-n", &self.host.name, "link", "set", &peer, "up"]);
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// The record of this world's container on the `multihome` network as `eth0`.
    pub fn cache_file(&self) -> PathBuf {
        self.cache_dir()
            .join(format!("multihome+{}+eth0.json", self.container_id))
    }

    /// The names of the files in the cache directory (records, locks, temporary files),
    /// sorted; the directory of tombstones aside (see [`World::tombstones`]).
    pub fn cache_files(&self) -> Vec<String> {
        sorted_names(&self.cache_dir())
            .into_iter()
            .filter(|n| n != "deleted")
            .collect()
    }

    /// The tombstones completed DELs left: `hour/attachment`, sorted.
    pub fn tombstones(&self) -> Vec<String> {
        let root = self.cache_dir().join("deleted");
        let mut names: Vec<String> = sorted_names(&root)
            .into_iter()
            .flat_map(|hour| {
                sorted_names(&root.join(&hour))
                    .into_iter()
                    .map(move |n| format!("{hour}/{n}"))
            })
            .collect();
        names.sort();
        names
    }

    /// A plugin directory where every reference plugin is a wrapper that logs its call
    /// (`COMMAND plugin container ifname`, to [`World::calls`]) and runs the real one, plus the
    /// 1.1.0 stub delegate `stub11`. Used as `binDir`, so delegates' own IPAM calls go through
    /// it too.
    pub fn spy_bin(&self) -> PathBuf {
        let dir = self.dir.join("bin");
        std::fs::create_dir_all(&dir).unwrap();
        let log = self.dir.join("calls.log");
        for entry in std::fs::read_dir(PLUGINS).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            write_script(
                &dir.join(&name),
                &format!(
                    "echo \"$CNI_COMMAND {name} $CNI_CONTAINERID $CNI_IFNAME\" >> {log}\nexec {PLUGINS}/{name}\n",
                    log = log.display()
                ),
            );
        }
        // The 1.1.0 stub: records its calls and stdin; ADD blocks while `stub.block` exists
        // (its pid in `stub.pid`); STATUS fails with the error object in `stub.status`.
        let d = self.dir.display();
        write_script(
            &dir.join("stub11"),
            &format!(
                r#"input=$(cat)
echo "$CNI_COMMAND stub11 $CNI_CONTAINERID $CNI_IFNAME" >> {log}
printf '%s
' "$input" >> {d}/stub.stdin
case "$CNI_COMMAND" in
ADD)
  if [ -e {d}/stub.block ]; then echo $$ > {d}/stub.pid; exec sleep 600; fi
  printf '{{"cniVersion":"1.1.0","interfaces":[{{"name":"%s","sandbox":"%s"}}],"ips":[]}}' "$CNI_IFNAME" "$CNI_NETNS" ;;
STATUS)
  if [ -e {d}/stub.status ]; then cat {d}/stub.status; exit 1; fi ;;
VERSION)
  printf '{{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}}' ;;
esac
"#,
                log = log.display()
            ),
        );
        dir
    }

    /// The plugin calls the wrappers of [`World::spy_bin`] logged, in order.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// The stdin the stub got, one JSON document per call, in order.
    pub fn stub_stdin(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("stub.stdin"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// IPs host-local holds for `network` (files named after addresses in its data dir).
    pub fn reserved_ips(&self, network: &str) -> Vec<IpAddr> {
        let Ok(entries) = std::fs::read_dir(self.ipam_dir().join(network)) else {
            return vec![];
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Every IP any host-local network of this world still holds.
    pub fn all_reserved_ips(&self) -> Vec<(String, IpAddr)> {
        let Ok(nets) = std::fs::read_dir(self.ipam_dir()) else {
            return vec![];
        };
        nets.filter_map(|e| e.ok())
            .flat_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                self.reserved_ips(&name)
                    .into_iter()
                    .map(move |ip| (name.clone(), ip))
            })
            .collect()
    }

    /// multihome's own config around `delegates`, with this world's cache directory.
    pub fn conf(&self, version: &str, delegates: Vec<Value>) -> Value {
        json!({
            "cniVersion": version,
            "name": "multihome",
            "type": "multihome",
            "binDir": PLUGINS,
            "cniDir": self.cache_dir(),
            "logLevel": "debug",
            "delegates": delegates,
        })
    }

    /// host-local IPAM with its state in this world.
    pub fn ipam(&self, subnet: &str) -> Value {
        json!({"type": "host-local", "subnet": subnet, "dataDir": self.ipam_dir()})
    }

    /// The cluster network: bridge + host-local, gateway .1, default route, then tuning.
    pub fn cluster_net(&self, version: &str) -> Value {
        let mut ipam = self.ipam("198.18.0.0/24");
        ipam["routes"] = json!([{"dst": "0.0.0.0/0"}]);
        json!({
            "cniVersion": version,
            "name": "cluster",
            "plugins": [
                {"type": "bridge", "bridge": "mhbr0", "isGateway": true, "ipam": ipam},
                {"type": "tuning", "mtu": 1400}
            ]
        })
    }

    pub fn macvlan_net(&self, version: &str, master: &str) -> Value {
        json!({"cniVersion": version, "name": "mvnet", "type": "macvlan", "master": master, "mode": "bridge",
               "ipam": self.ipam("198.18.1.0/24")})
    }

    pub fn ptp_net(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "p2p", "type": "ptp", "ipam": self.ipam("198.18.2.0/24")})
    }

    /// Runs multihome in the host namespace.
    pub fn run(&self, command: &str, conf: &Value) -> Run {
        self.run_with(command, conf, &[])
    }

    /// Runs multihome with extra/overridden environment variables.
    pub fn run_with(&self, command: &str, conf: &Value, env: &[(&str, &str)]) -> Run {
        let vars = self.vars(command, env);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_binary(Some(&self.host.name), &vars, conf.to_string().as_bytes())
    }

    /// Starts multihome (see [`World::run_with`]) without waiting for it.
    pub fn spawn_with(
        &self,
        command: &str,
        conf: &Value,
        env: &[(&str, &str)],
    ) -> std::process::Child {
        let vars = self.vars(command, env);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spawn_binary(Some(&self.host.name), &vars, conf.to_string().as_bytes())
    }

    fn vars<'a>(&self, command: &str, env: &[(&'a str, &str)]) -> Vec<(&'a str, String)> {
        let mut vars: Vec<(&str, String)> = vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.pod.path()),
            ("CNI_IFNAME", "eth0".to_string()),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod".to_string(),
            ),
            ("CNI_PATH", PLUGINS.to_string()),
        ];
        for (k, v) in env {
            vars.retain(|(key, _)| key != k);
            vars.push((k, v.to_string()));
        }
        vars
    }

    /// The cached ADD results, attachment by attachment.
    pub fn cached_results(&self) -> Vec<(String, Value)> {
        let bytes = std::fs::read(self.cache_file()).expect("cache file");
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["ifname"].as_str().unwrap().to_string(),
                    a["result"].clone(),
                )
            })
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the binary (inside `netns` when given) with exactly `vars` as its CNI environment;
/// stdin is written and closed, stdout and stderr are piped.
pub fn spawn_binary(
    netns: Option<&str>,
    vars: &[(&str, &str)],
    stdin: &[u8],
) -> std::process::Child {
    let bin = env!("CARGO_BIN_EXE_multihome");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, bin]);
            c
        }
        None => Command::new(bin),
    };
    for (k, _) in std::env::vars() {
        if k.starts_with("CNI_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning multihome");
    let mut pipe = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = pipe.write_all(&stdin);
    });
    child
}

/// Runs the binary (inside `netns` when given) with exactly `vars` as its CNI environment.
pub fn run_binary(netns: Option<&str>, vars: &[(&str, &str)], stdin: &[u8]) -> Run {
    let child = spawn_binary(netns, vars, stdin);
    let out: Output = child.wait_with_output().unwrap();
    let stdout_raw = String::from_utf8_lossy(&out.stdout).into_owned();
    Run {
        ok: out.status.success(),
        stdout: serde_json::from_str(&stdout_raw).unwrap_or(Value::Null),
        stdout_raw,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the binary as the command-line tool (no `CNI_*` in its environment) with `args`,
/// inside `netns`; returns its exit status, stdout and stderr.
pub fn run_tool(netns: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_multihome")])
        .args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("CNI_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("running multihome");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `done` holds; fails the test after 20 s naming `what`.
pub fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{what} never happened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Writes an executable `/bin/sh` script.
/// The names of the entries of `dir` (none when it does not exist), sorted.
pub fn sorted_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Writes `value` as JSON to `path`.
pub fn write_json(path: &Path, value: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}
