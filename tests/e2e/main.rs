//! End-to-end tests on a real one-node Kubernetes (`scripts/cluster.sh up`; `make e2e` starts
//! it, runs these and stops it): kube-apiserver, kubelet and containerd, multihome installed the
//! way a user installs it (its image, `kubectl apply -f conf/multihome-daemonset.yml`), pods
//! created and inspected through kubectl only. Without a cluster they fail, saying how to start
//! one; `cargo test` does not build them (`make e2e` does).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

// The HTTPS stand-in the integration tests use for fault injection, held against the real server.
#[allow(dead_code)]
#[path = "../apiserver.rs"]
mod apiserver;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

/// The running cluster, as `scripts/cluster.sh` left it.
struct Cluster {
    /// The node's network namespace, where the API server listens.
    netns: String,
    kubeconfig: PathBuf,
    /// The node's directories (what it sees as /var/lib/cni, /etc/cni/net.d, ...).
    node: PathBuf,
    /// The API server's audit log (every request, at the Metadata level).
    audit: PathBuf,
    /// The script's work directory (images, PKI, state).
    work: PathBuf,
    /// How long pods took to start on the bridge alone, before multihome was installed.
    bridge_alone: Series,
}

/// The API server, in the node's network namespace.
const API_SERVER: &str = "https://198.18.250.1:6443";

/// Pods per latency series.
const SAMPLES: usize = 5;

/// A timestamp of an audit log entry.
fn at(entry: &Value, key: &str) -> SystemTime {
    humantime::parse_rfc3339(entry[key].as_str().unwrap()).expect("an audit timestamp")
}

/// One request, as the API server's audit log has it.
#[derive(Debug)]
struct Request {
    /// `VERB resource[/subresource]`.
    what: String,
    received: SystemTime,
    answered: SystemTime,
}

/// Whether the requests were in the server's hands at the same time, all of them.
fn overlapping(requests: &[&Request]) -> bool {
    let first_answer = requests.iter().map(|r| r.answered).min();
    requests.iter().all(|r| Some(r.received) < first_answer)
}

/// Pod-start latencies of one series of pods.
#[derive(Default, Clone)]
struct Series {
    /// Created -> Running, from the API server's audit log.
    running: Vec<Duration>,
    /// containerd's RunPodSandbox, from its log.
    sandbox: Vec<Duration>,
}

const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

/// The cluster with multihome installed, once per run. First, a pod is started on the primary
/// network alone, before multihome exists: [`a_pod_started_before_multihome_is_released_after`]
/// deletes it afterwards.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let work = PathBuf::from(
            std::env::var("MH_CLUSTER_DIR").unwrap_or("/tmp/multihome-cluster".into()),
        );
        let netns = std::fs::read_to_string(work.join("netns")).unwrap_or_else(|_| {
            panic!(
                "no cluster in {}: run `scripts/cluster.sh up` first (`make e2e` does)",
                work.display()
            )
        });
        let mut c = Cluster {
            netns: netns.trim().to_string(),
            kubeconfig: work.join("admin.kubeconfig"),
            node: work.join("node"),
            audit: work.join("audit.log"),
            work,
            bridge_alone: Series::default(),
        };
        c.bridge_alone = c.start_series("bridge-alone", &json!({}));
        c.start(&pod("before-multihome", json!({})));
        c.kubectl_ok(&["apply", "-f", "conf/multihome-daemonset.yml"]);
        c.wait_until("the DaemonSet's pod is ready", || {
            c.get("daemonset", "kube-system", "multihome")["status"]["numberReady"] == 1
        });
        c.wait_until("multihome's config is written", || {
            c.node.join("conf/00-multihome.conflist").exists()
        });
        for nad in nads() {
            c.apply(&nad);
        }
        c
    })
}

impl Cluster {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "kubectl"])
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("running kubectl");
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, object: &Value) {
        let out = self.kubectl(&["apply", "-f", "-"], Some(&object.to_string()));
        assert!(
            out.status.success(),
            "apply {object}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An object as JSON (`Null` when it does not exist).
    fn get(&self, kind: &str, namespace: &str, name: &str) -> Value {
        let out = self.kubectl(&["-n", namespace, "get", kind, name, "-o", "json"], None);
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn pod(&self, name: &str) -> Value {
        self.get("pod", "default", name)
    }

    fn wait_until(&self, what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "timed out waiting until {what}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Creates the pod afresh (one of the same name left by an earlier run is deleted first)
    /// and waits until it is Running; how long that took.
    fn start(&self, pod: &Value) -> Duration {
        let name = pod["metadata"]["name"].as_str().unwrap();
        self.kubectl_ok(&["delete", "pod", name, "--ignore-not-found", "--wait=true"]);
        let started = Instant::now();
        self.apply(pod);
        self.wait_running(name);
        started.elapsed()
    }

    /// How long each of [`SAMPLES`] pods with `annotations` took from created to Running, one
    /// after the other, each deleted before the next (their names start with `prefix`).
    fn start_series(&self, prefix: &str, annotations: &Value) -> Series {
        let mut series = Series::default();
        for i in 0..SAMPLES {
            let name = format!("{prefix}-{i}");
            self.start(&pod(&name, annotations.clone()));
            series
                .running
                .push(self.created_to_running(&name, SystemTime::now()));
            series.sandbox.push(self.sandbox_time(&name));
            self.delete(&name);
        }
        series
    }

    /// How long containerd's RunPodSandbox took for the pod (its network set up by the CNI
    /// plugin included), from containerd's log, to the nanosecond: unlike created -> Running, not
    /// rounded to kubelet's one-second relisting.
    fn sandbox_time(&self, name: &str) -> Duration {
        let text = std::fs::read_to_string(self.work.join("logs/containerd.log")).unwrap();
        let tag = format!("RunPodSandbox for &PodSandboxMetadata{{Name:{name},");
        let mut asked = None;
        let mut answered = None;
        for line in text.lines().filter(|l| l.contains(&tag)) {
            let at = line
                .strip_prefix("time=\"")
                .and_then(|l| l.split('"').next())
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .expect("containerd's timestamp");
            if line.contains("returns sandbox id") {
                answered = Some(at);
            } else {
                asked = Some(at);
            }
        }
        let (Some(asked), Some(answered)) = (asked, answered) else {
            panic!("containerd's log lacks the sandbox of pod {name}");
        };
        answered.duration_since(asked).unwrap()
    }

    /// Every request the API server answered, as its audit log has it.
    fn audited(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["stage"] == "ResponseComplete")
            .collect()
    }

    /// Waits until the DaemonSet's rollout is complete.
    fn rolled_out(&self) {
        self.kubectl_ok(&[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "daemonset/multihome",
            "--timeout=120s",
        ]);
    }

    /// From the API server's audit log, to the microsecond (polling through kubectl could not
    /// tell 30 ms apart): from the pod's creation to the last status kubelet wrote for it before
    /// `seen`, the moment it was seen Running (a sleeping pod's status then stays as it is).
    fn created_to_running(&self, name: &str, seen: SystemTime) -> Duration {
        let mut created = None;
        let mut running = None;
        for e in self
            .audited()
            .into_iter()
            .filter(|e| e["objectRef"]["resource"] == "pods" && e["objectRef"]["name"] == name)
        {
            if e["verb"] == "create" {
                created = Some(at(&e, "requestReceivedTimestamp"));
            } else if e["verb"] == "patch"
                && e["objectRef"]["subresource"] == "status"
                && e["user"]["username"] == "system:node:mh-node"
                && at(&e, "requestReceivedTimestamp") < seen
            {
                running = Some(at(&e, "stageTimestamp"));
            }
        }
        let (Some(created), Some(running)) = (created, running) else {
            panic!("the audit log lacks the creation or kubelet's status of pod {name}");
        };
        running.duration_since(created).unwrap()
    }

    /// Every request the API server received for `user` since `since` about the objects `names`
    /// (events named after one of them included), sorted by what it was, then when.
    fn requests_about(&self, user: &str, names: &[&str], since: SystemTime) -> Vec<Request> {
        // RFC 3339 in UTC with microseconds, as the audit log writes it: compared as text.
        let since = humantime::format_rfc3339_micros(since).to_string();
        let mut found: Vec<Request> = self
            .audited()
            .into_iter()
            .filter(|e| e["user"]["username"] == user)
            .filter(|e| e["requestReceivedTimestamp"].as_str() >= Some(since.as_str()))
            .filter(|e| {
                let object = e["objectRef"]["name"].as_str().unwrap_or_default();
                // An event is named after its object: "<pod>.<hex>".
                let of = object.split('.').next().unwrap_or_default();
                names.contains(&object)
                    || (e["objectRef"]["resource"] == "events" && names.contains(&of))
            })
            .map(|e| {
                let object = &e["objectRef"];
                let sub = object["subresource"]
                    .as_str()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default();
                Request {
                    what: format!(
                        "{} {}{sub}",
                        e["verb"].as_str().unwrap_or_default(),
                        object["resource"].as_str().unwrap_or_default()
                    ),
                    received: at(&e, "requestReceivedTimestamp"),
                    answered: at(&e, "stageTimestamp"),
                }
            })
            .collect();
        found.sort_by(|a, b| (&a.what, a.received).cmp(&(&b.what, b.received)));
        found
    }

    fn wait_running(&self, name: &str) {
        self.wait_until(&format!("pod {name} is Running"), || {
            self.pod(name)["status"]["phase"] == "Running"
        });
    }

    /// Deletes the pod and waits until the API no longer has it (kubelet ran its DEL).
    fn delete(&self, name: &str) {
        self.kubectl_ok(&["delete", "pod", name, "--wait=false"]);
        self.wait_until(&format!("pod {name} is gone"), || self.pod(name).is_null());
    }

    /// The pod's network-status.
    fn status(&self, name: &str) -> Vec<Value> {
        let text = self.pod(name)["metadata"]["annotations"][STATUS]
            .as_str()
            .unwrap_or_else(|| panic!("pod {name} has no {STATUS}"))
            .to_string();
        serde_json::from_str::<Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// The pod's network-status as `name interface[ default]`, one entry per attachment.
    fn attachments(&self, name: &str) -> Vec<String> {
        self.status(name)
            .iter()
            .map(|s| {
                let default = if s["default"] == true { " default" } else { "" };
                format!(
                    "{} {}{default}",
                    s["name"].as_str().unwrap(),
                    s["interface"].as_str().unwrap()
                )
            })
            .collect()
    }

    /// `(interface, [addresses])` inside the pod, as its own `ip` sees them.
    fn interfaces(&self, name: &str) -> Vec<(String, Vec<String>)> {
        let out = self.kubectl_ok(&["exec", name, "--", "ip", "-o", "addr", "show"]);
        let mut found: Vec<(String, Vec<String>)> = Vec::new();
        for line in out.lines() {
            // "3: eth0    inet 198.18.8.5/24 brd ... scope global eth0"
            let words: Vec<&str> = line.split_whitespace().collect();
            let (Some(ifname), Some(family), Some(addr)) =
                (words.get(1), words.get(2), words.get(3))
            else {
                continue;
            };
            if *ifname == "lo" || *family != "inet" {
                continue;
            }
            let ifname = ifname.split('@').next().unwrap().to_string();
            match found.iter_mut().find(|(n, _)| *n == ifname) {
                Some((_, addrs)) => addrs.push(addr.to_string()),
                None => found.push((ifname, vec![addr.to_string()])),
            }
        }
        found.sort();
        found
    }

    /// The pod's default routes, as its own `ip` lists them (busybox's lists every route
    /// whatever the selector).
    fn default_routes(&self, name: &str) -> Vec<String> {
        let out = self.kubectl_ok(&["exec", name, "--", "ip", "route", "show"]);
        out.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| l.starts_with("default "))
            .collect()
    }

    /// The messages of the pod's events with `reason`.
    fn events(&self, name: &str, reason: &str) -> Vec<String> {
        let out = self.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name},reason={reason}"),
            "-o",
            "json",
        ]);
        let list: Value = serde_json::from_str(&out).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The IPs host-local holds for `network` on the node.
    fn held_ips(&self, network: &str) -> Vec<String> {
        let dir = self.node.join("cni-cache/networks").join(network);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return vec![];
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// The node daemon's socket, as the node sees it at /run/multihome/daemon.sock.
    fn daemon_socket(&self) -> PathBuf {
        self.node.join("run/multihome/daemon.sock")
    }

    /// Runs `f` with the daemon's socket moved aside, as on a node without the daemon: the CNI
    /// calls find no socket and read the API server themselves. The daemon keeps running.
    fn without_daemon<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Back<'a>(&'a Cluster);
        impl Drop for Back<'_> {
            fn drop(&mut self) {
                let socket = self.0.daemon_socket();
                let _ = std::fs::rename(socket.with_extension("off"), socket);
            }
        }
        let socket = self.daemon_socket();
        std::fs::rename(&socket, socket.with_extension("off")).unwrap();
        let _back = Back(self);
        f()
    }

    /// The daemon's metrics, scraped from inside the node as Prometheus on it would.
    fn metrics(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "busybox", "wget", "-qO-"])
            .arg("http://127.0.0.1:9391/metrics")
            .output()
            .unwrap();
        assert!(out.status.success(), "scraping the daemon: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The PIDs of the node's `multihome daemon` processes: in the node's network namespace, so
    /// only this cluster's.
    fn daemon_pids(&self) -> Vec<i32> {
        use std::os::unix::fs::MetadataExt;
        let node_net = std::fs::metadata(format!("/run/netns/{}", self.netns))
            .unwrap()
            .ino();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let mut args = cmdline.split(|b| *b == 0);
                let program = args.next().unwrap_or_default();
                program.ends_with(b"multihome")
                    && args.next() == Some(b"daemon".as_slice())
                    && std::fs::metadata(format!("/proc/{pid}/ns/net"))
                        .is_ok_and(|m| m.ino() == node_net)
            })
            .collect()
    }

    /// Creates `pods` with one request and waits until every one is Running.
    fn start_all(&self, pods: &[Value]) {
        for p in pods {
            let name = p["metadata"]["name"].as_str().unwrap();
            self.kubectl_ok(&["delete", "pod", name, "--ignore-not-found", "--wait=true"]);
        }
        let list = json!({"apiVersion": "v1", "kind": "List", "items": pods});
        let out = self.kubectl(&["apply", "-f", "-"], Some(&list.to_string()));
        assert!(out.status.success(), "creating the pods: {out:?}");
        for p in pods {
            self.wait_running(p["metadata"]["name"].as_str().unwrap());
        }
    }

    /// Deletes `names` at once and waits until every IP they held on `networks` is released
    /// and no record of theirs is left.
    fn delete_all_released(&self, names: &[String], networks: &[&str]) {
        let uids: Vec<String> = names
            .iter()
            .map(|n| self.pod(n)["metadata"]["uid"].as_str().unwrap().to_string())
            .collect();
        let ips: Vec<(String, String)> = names
            .iter()
            .flat_map(|n| self.status(n))
            .filter_map(|s| {
                let network = s["name"].as_str()?.rsplit('/').next()?.to_string();
                let ip = s["ips"][0].as_str()?.to_string();
                networks
                    .contains(&network.as_str())
                    .then_some((network, ip))
            })
            .collect();
        let mut args = vec!["delete", "pod", "--wait=false"];
        args.extend(names.iter().map(String::as_str));
        self.kubectl_ok(&args);
        for n in names {
            self.wait_until(&format!("pod {n} is gone"), || self.pod(n).is_null());
        }
        for uid in &uids {
            self.wait_until(&format!("the records of pod {uid} are removed"), || {
                self.records_of(uid).is_empty()
            });
        }
        for (network, ip) in &ips {
            self.wait_until(&format!("{network} releases {ip}"), || {
                !self.held_ips(network).contains(ip)
            });
        }
    }

    /// multihome's records (in its default cniDir on the node) of the pod with `uid`.
    fn records_of(&self, uid: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.node.join("cni-cache/multus")) else {
            return vec![];
        };
        entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(uid)))
            .collect()
    }
}

/// A busybox pod in `default` that sleeps, with `annotations`.
fn pod(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "localhost/busybox:e2e",
                            "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]
        }
    })
}

fn nad(name: &str, config: Value) -> Value {
    json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"config": config.to_string()}
    })
}

/// A macvlan NAD on the node's second interface and a bridge NAD, each with host-local.
fn nads() -> Vec<Value> {
    vec![
        nad(
            "macvlan-net",
            json!({"cniVersion": "1.0.0", "name": "macvlan-net", "type": "macvlan",
                   "master": "mhk1", "mode": "bridge", "capabilities": {"mac": true},
                   "ipam": {"type": "host-local", "subnet": "198.18.9.0/24"}}),
        ),
        nad(
            "bridge-net",
            json!({"cniVersion": "1.0.0", "name": "bridge-net", "type": "bridge",
                   "bridge": "mhbr1",
                   "ipam": {"type": "host-local", "subnet": "198.18.10.0/24"}}),
        ),
    ]
}

#[test]
fn the_short_form_gives_the_pod_its_networks_status_and_events() {
    let c = cluster();
    c.start(&pod(
        "short",
        json!({NETWORKS: "macvlan-net@data0, default/bridge-net"}),
    ));
    let ifs = c.interfaces("short");
    let names: Vec<&str> = ifs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["data0", "eth0", "net2"], "{ifs:?}");
    let subnet_of = |n: &str| {
        ifs.iter().find(|(i, _)| i == n).unwrap().1[0]
            .rsplit_once('.')
            .unwrap()
            .0
            .to_string()
    };
    assert_eq!(subnet_of("eth0"), "198.18.8");
    assert_eq!(subnet_of("data0"), "198.18.9");
    assert_eq!(subnet_of("net2"), "198.18.10");

    assert_eq!(
        c.attachments("short"),
        [
            "cbr eth0 default",
            "default/macvlan-net data0",
            "default/bridge-net net2"
        ]
    );
    let events = c.events("short", "AddedInterface");
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events.iter().any(|e| e.starts_with("Add data0 [198.18.9.")),
        "{events:?}"
    );
    c.delete("short");
}

#[test]
fn json_selection_sets_the_interface_name_and_mac() {
    let c = cluster();
    c.apply(&nad(
        "static-net",
        json!({"cniVersion": "1.0.0", "name": "static-net", "type": "bridge", "bridge": "mhbr3",
               "capabilities": {"ips": true}, "ipam": {"type": "static"}}),
    ));
    let networks = json!([
        {"name": "macvlan-net", "interface": "fixed0", "mac": "02:00:5e:10:00:42"},
        {"name": "bridge-net", "default-route": []},
        {"name": "static-net", "ips": ["198.18.12.5/24"]}
    ]);
    c.start(&pod("selected", json!({NETWORKS: networks.to_string()})));
    let link = c.kubectl_ok(&["exec", "selected", "--", "ip", "link", "show", "fixed0"]);
    assert!(link.contains("02:00:5e:10:00:42"), "{link}");
    let status = c.status("selected");
    assert_eq!(status[1]["mac"], "02:00:5e:10:00:42");
    assert_eq!(status[2]["interface"], "net2");
    assert_eq!(status[3]["interface"], "net3");
    assert_eq!(status[3]["ips"], json!(["198.18.12.5"]));
    let ifs = c.interfaces("selected");
    assert!(
        ifs.contains(&("net3".to_string(), vec!["198.18.12.5/24".to_string()])),
        "the requested address inside the pod: {ifs:?}"
    );
    assert_eq!(
        c.default_routes("selected"),
        ["default via 198.18.8.1 dev eth0"],
        "default-route: [] leaves the cluster network's default route alone"
    );
    assert_eq!(
        status[0]["default"], true,
        "default stays on the cluster network"
    );
    c.delete("selected");
}

/// `default-route` naming a NAD's gateway: the pod's one default route goes through that
/// network's interface instead of the cluster network's.
#[test]
fn a_default_route_request_moves_the_pods_default_route() {
    let c = cluster();
    let networks = json!([{"name": "bridge-net", "default-route": ["198.18.10.1"]}]);
    c.start(&pod("rerouted", json!({NETWORKS: networks.to_string()})));
    assert_eq!(
        c.default_routes("rerouted"),
        ["default via 198.18.10.1 dev net1"]
    );
    c.delete("rerouted");
}

#[test]
fn a_missing_nad_holds_the_pod_until_it_is_created() {
    let c = cluster();
    c.apply(&pod("waits", json!({NETWORKS: "late-net"})));
    c.wait_until("multihome's error is on the pod's events", || {
        c.events("waits", "FailedCreatePodSandBox")
            .iter()
            .any(|m| m.contains("late-net"))
    });
    assert_ne!(c.pod("waits")["status"]["phase"], "Running");
    c.apply(&nad(
        "late-net",
        json!({"cniVersion": "1.0.0", "name": "late-net", "type": "bridge", "bridge": "mhbr2",
               "ipam": {"type": "host-local", "subnet": "198.18.11.0/24"}}),
    ));
    c.wait_running("waits");
    assert_eq!(c.status("waits").len(), 2);
    c.delete("waits");
}

#[test]
fn deleting_a_pod_releases_every_ip_and_leaves_no_record() {
    let c = cluster();
    c.start(&pod(
        "released",
        json!({NETWORKS: "macvlan-net, bridge-net"}),
    ));
    let uid = c.pod("released")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let status = c.status("released");
    let ips: Vec<String> = status
        .iter()
        .map(|s| s["ips"][0].as_str().unwrap().to_string())
        .collect();
    assert!(
        c.held_ips("bridge-net").contains(&ips[2]),
        "{ips:?} {:?}",
        c.held_ips("bridge-net")
    );
    assert_eq!(
        c.records_of(&uid).len(),
        1,
        "one record for the pod's attachment"
    );
    c.delete("released");
    // kubelet tears the sandbox down after the API object is gone, in its own time.
    c.wait_until("the pod's record is removed", || {
        c.records_of(&uid).is_empty()
    });
    for (network, ip) in ["cbr", "macvlan-net", "bridge-net"].iter().zip(&ips) {
        c.wait_until(&format!("{network} releases {ip} of pod {uid}"), || {
            !c.held_ips(network).contains(ip)
        });
    }
}

#[test]
fn a_pod_started_before_multihome_is_released_after() {
    let c = cluster();
    let ip = c.pod("before-multihome")["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(c.held_ips("cbr").contains(&ip));
    c.delete("before-multihome");
    c.wait_until(
        &format!("the primary IP {ip} of a pod older than multihome is released"),
        || !c.held_ips("cbr").contains(&ip),
    );
}

#[test]
fn a_bad_annotation_is_an_event_naming_it_and_the_pod_never_starts() {
    let c = cluster();
    c.apply(&pod(
        "badnote",
        json!({NETWORKS: "[{\"name\": \"macvlan-net\""}),
    ));
    c.wait_until("multihome's error is on the pod's events", || {
        c.events("badnote", "FailedCreatePodSandBox")
            .iter()
            .any(|m| m.contains(NETWORKS))
    });
    assert_ne!(c.pod("badnote")["status"]["phase"], "Running");
    c.delete("badnote");
}

#[test]
fn the_default_network_annotation_replaces_the_cluster_network() {
    let c = cluster();
    c.start(&pod(
        "altdefault",
        json!({"v1.multus-cni.io/default-network": "default/bridge-net",
               NETWORKS: "macvlan-net"}),
    ));
    assert_eq!(
        c.attachments("altdefault"),
        [
            "default/bridge-net eth0 default",
            "default/macvlan-net net1"
        ]
    );
    let ifs = c.interfaces("altdefault");
    assert!(
        ifs[0].0 == "eth0" && ifs[0].1[0].starts_with("198.18.10."),
        "{ifs:?}"
    );
    c.delete("altdefault");
}

/// What a pod start costs the real API server, from its audit log, and how long pods take to
/// start with multihome against the bridge alone (printed: `cargo test --test e2e -- --nocapture`).
#[test]
fn a_pod_start_reads_nothing_with_the_daemon_and_makes_seven_requests_at_once_without() {
    let c = cluster();
    // NADs of its own, so that other tests' requests are not counted.
    for (name, of) in [("counted-a", 0), ("counted-b", 1)] {
        let mut copy = nads()[of].clone();
        copy["metadata"]["name"] = json!(name);
        c.apply(&copy);
    }
    let multihome = "system:serviceaccount:kube-system:multihome";
    let networks = json!({NETWORKS: "counted-a, counted-b"});

    // With the daemon: the pod and its NADs come from its cache, the status patch from its
    // connection, the events after the pod started.
    let since = SystemTime::now();
    c.start(&pod("counted", networks.clone()));
    c.wait_until("the pod's events are posted", || {
        c.events("counted", "AddedInterface").len() == 3
    });
    let requests = c.requests_about(multihome, &["counted", "counted-a", "counted-b"], since);
    let whats =
        |requests: &[Request]| -> Vec<String> { requests.iter().map(|r| r.what.clone()).collect() };
    let events = ["create events"; 3];
    assert_eq!(
        whats(&requests),
        [&events[..], &["patch pods/status"]].concat(),
        "multihome's requests for a pod with two NADs, with the daemon"
    );
    c.delete("counted");

    // Without it, the call reads the API itself; over HTTP/2, which the API server offers, the
    // requests that do not depend on each other are in its hands at once.
    let since = SystemTime::now();
    c.without_daemon(|| c.start(&pod("counted-direct", networks.clone())));
    let requests = c.requests_about(
        multihome,
        &["counted-direct", "counted-a", "counted-b"],
        since,
    );
    let reads = [
        "get network-attachment-definitions",
        "get network-attachment-definitions",
        "get pods",
    ];
    assert_eq!(
        whats(&requests),
        [&events[..], &reads, &["patch pods/status"]].concat(),
        "multihome's requests for a pod with two NADs, without the daemon"
    );
    let of = |what: &str| -> Vec<&Request> { requests.iter().filter(|r| r.what == what).collect() };
    assert!(
        overlapping(&of("get network-attachment-definitions")),
        "the NAD GETs at once: {requests:#?}"
    );
    assert!(
        overlapping(&of("create events")),
        "the events at once: {requests:#?}"
    );
    c.delete("counted-direct");
    let series = [
        ("the bridge alone, before multihome", c.bridge_alone.clone()),
        ("multihome, no NAD", c.start_series("plain", &json!({}))),
        (
            "multihome, two NADs, daemon",
            c.start_series("two-nads", &networks),
        ),
        (
            "multihome, two NADs, no daemon",
            c.without_daemon(|| c.start_series("two-nads-direct", &networks)),
        ),
    ];
    println!("pod start ({SAMPLES} pods each, one after the other; median [all], ms):");
    let ms = |mut took: Vec<Duration>| {
        took.sort();
        let all: Vec<String> = took.iter().map(|d| d.as_millis().to_string()).collect();
        format!(
            "{:5} [{}]",
            took[took.len() / 2].as_millis(),
            all.join(", ")
        )
    };
    for (what, s) in series {
        println!(
            "  {what:36} sandbox (containerd) {}   created -> Running {}",
            ms(s.sandbox),
            ms(s.running)
        );
    }
}

/// One request, as multihome makes it, to a server: `(status code, body)`.
fn call(
    netns: &str,
    base: &str,
    ca: &std::path::Path,
    token: &str,
    (method, path, content_type, body): (&str, &str, &str, &str),
) -> (u16, Value) {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        netns,
        "curl",
        "-sS",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ])
    .args(["--cacert", ca.to_str().unwrap(), "-X", method])
    .args(["-H", &format!("Authorization: Bearer {token}")])
    .args(["-H", "Accept: application/json"]);
    if !body.is_empty() {
        cmd.args([
            "-H",
            &format!("Content-Type: {content_type}"),
            "--data",
            body,
        ]);
    }
    let out = cmd.arg(format!("{base}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// Where `stand_in`'s shape is not the real server's: every key the stand-in answers with must
/// be in the real answer with a value of the same JSON type (the real server says more).
fn unlike(stand_in: &Value, real: &Value, at: &str, out: &mut Vec<String>) {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if kind(stand_in) != kind(real) {
        out.push(format!(
            "{at}: {} here, {} on the real server",
            kind(stand_in),
            kind(real)
        ));
        return;
    }
    if let (Value::Object(a), Value::Object(b)) = (stand_in, real) {
        for (k, v) in a {
            match b.get(k) {
                Some(w) => unlike(v, w, &format!("{at}.{k}"), out),
                None => out.push(format!("{at}.{k}: not on the real server")),
            }
        }
    }
}

/// The stand-in answers multihome's requests as the real API server does: the same status codes,
/// and bodies of the same shape (pods, NADs, both 404s, status merge PATCH and its 409 and 415,
/// events, a bad token), so faults injected through it are faults the real server can make.
#[test]
fn the_api_stand_in_answers_as_the_real_server_does() {
    let c = cluster();
    let work = c.kubeconfig.parent().unwrap();
    let token = std::fs::read_to_string(c.node.join("conf/multus.d/token")).unwrap();
    // Labelled as the stand-in labels its pods.
    let mut compared = pod("compared", json!({}));
    compared["metadata"]["labels"] = json!({"app": "compared"});
    c.apply(&compared);
    let mut nad_config = nads()[1].clone();
    nad_config["metadata"]["name"] = json!("compared-net");
    c.apply(&nad_config);

    let stand_in = apiserver::ApiServer::start_with(&c.netns, apiserver::ServerCert::SignedByCa);
    stand_in.add_pod("default", "compared", json!({}));
    stand_in.add_nad(
        "default",
        "compared-net",
        Some(&serde_json::from_str(nad_config["spec"]["config"].as_str().unwrap()).unwrap()),
        json!({}),
    );
    let stand_in_ca = work.join("stand-in-ca.crt");
    std::fs::write(&stand_in_ca, &stand_in.creds.ca_pem).unwrap();

    let pods = "/api/v1/namespaces/default/pods";
    let nads = "/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions";
    let merge = "application/merge-patch+json";
    let annotate = json!({"metadata": {"annotations": {STATUS: "[]"}}}).to_string();
    let stale =
        json!({"metadata": {"resourceVersion": "1", "annotations": {STATUS: "[]"}}}).to_string();
    let event = json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("compared.{}", std::process::id()), "namespace": "default"},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": "default", "name": "compared"},
        "reason": "AddedInterface", "message": "compared", "type": "Normal"})
    .to_string();
    let status_path = format!("{pods}/compared/status");
    let get = |path: String| ("GET", path, "", String::new());
    let cases = [
        ("GET a pod", get(format!("{pods}/compared"))),
        ("GET a missing pod", get(format!("{pods}/absent"))),
        ("GET a NAD", get(format!("{nads}/compared-net"))),
        ("GET a missing NAD", get(format!("{nads}/absent"))),
        (
            "merge PATCH of status",
            ("PATCH", status_path.clone(), merge, annotate.clone()),
        ),
        (
            "stale merge PATCH",
            ("PATCH", status_path.clone(), merge, stale),
        ),
        (
            "PATCH of another type",
            ("PATCH", status_path, "application/x-bogus", annotate),
        ),
        (
            "POST an event",
            (
                "POST",
                "/api/v1/namespaces/default/events".into(),
                "application/json",
                event,
            ),
        ),
        // What the daemon's reflectors ask.
        ("LIST pods", get("/api/v1/pods?limit=500".into())),
        (
            "LIST NADs",
            get("/apis/k8s.cni.cncf.io/v1/network-attachment-definitions?limit=500".into()),
        ),
        (
            "WATCH from a compacted resourceVersion",
            get("/apis/k8s.cni.cncf.io/v1/network-attachment-definitions?watch=1&allowWatchBookmarks=true&resourceVersion=1&timeoutSeconds=1".into()),
        ),
    ];
    stand_in.compact();
    let real_ca = work.join("pki/ca.crt");
    let real = |token: &str, (method, path, content_type, body): &(&str, String, &str, String)| {
        let request = (*method, path.as_str(), *content_type, body.as_str());
        call(&c.netns, API_SERVER, &real_ca, token, request)
    };
    let ours = |token: &str, (method, path, content_type, body): &(&str, String, &str, String)| {
        let request = (*method, path.as_str(), *content_type, body.as_str());
        call(&c.netns, &stand_in.url(), &stand_in_ca, token, request)
    };
    let mut differences = Vec::new();
    let mut compare = |what: &str, ours: (u16, Value), real: (u16, Value)| {
        if real.0 != ours.0 {
            differences.push(format!(
                "{what}: {} here, {} on the real server",
                ours.0, real.0
            ));
        }
        let mut shape = Vec::new();
        unlike(&ours.1, &real.1, "", &mut shape);
        differences.extend(shape.into_iter().map(|d| format!("{what}: body{d}")));
    };
    for (what, request) in &cases {
        compare(
            what,
            ours(&stand_in.creds.token, request),
            real(token.trim(), request),
        );
    }
    let (_, bad_token) = &cases[0];
    compare(
        "a bad token",
        ours("not-a-token", bad_token),
        real("not-a-token", bad_token),
    );
    // The NAD CRD not installed: its group is not served at all. Asked with rights on every
    // group (RBAC answers 403 before anything else to whom has none).
    stand_in.uninstall_crd();
    let admin = std::fs::read_to_string(&c.kubeconfig).unwrap();
    let admin = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap();
    compare(
        "CRD not served",
        ours(&stand_in.creds.token, &get(format!("{nads}/x"))),
        real(
            admin,
            &get(
                "/apis/absent.example.com/v1/namespaces/default/network-attachment-definitions/x"
                    .into(),
            ),
        ),
    );
    assert_eq!(differences, Vec::<String>::new());
    c.delete("compared");
}

/// The DaemonSet's ClusterRole grants what multihome needs (every test above runs with it) and
/// nothing more: the real RBAC's own list of what the service account may do.
#[test]
fn multihome_may_do_exactly_what_it_needs_and_nothing_more() {
    let c = cluster();
    let sa = "--as=system:serviceaccount:kube-system:multihome";
    for namespace in ["default", "kube-system"] {
        let out = c.kubectl_ok(&["auth", "can-i", "--list", sa, "-n", namespace]);
        let mut granted: Vec<String> = out
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| {
                let resource = l.split_whitespace().next()?;
                let verbs = &l[l.rfind('[')?..];
                // Every authenticated user may ask what it may do (system:basic-user).
                (!resource.starts_with("selfsubject")).then(|| format!("{resource} {verbs}"))
            })
            .collect();
        granted.sort();
        assert_eq!(
            granted,
            [
                "events [create]",
                "network-attachment-definitions.k8s.cni.cncf.io [get list watch]",
                "pods [get list watch]",
                "pods/status [patch]"
            ],
            "in {namespace}"
        );
    }
}

/// kubelet restarted with pods running: they keep their interfaces and addresses (no second
/// ADD), a new pod starts, and deleting them releases everything.
#[test]
fn pods_keep_their_networks_across_a_kubelet_restart() {
    let c = cluster();
    c.start(&pod("steady", json!({NETWORKS: "bridge-net"})));
    let before = c.interfaces("steady");
    let status = Command::new("scripts/cluster.sh")
        .arg("restart-kubelet")
        .status()
        .unwrap();
    assert!(status.success());
    c.start(&pod("after-restart", json!({NETWORKS: "bridge-net"})));
    assert_eq!(c.pod("steady")["status"]["phase"], "Running");
    assert_eq!(c.interfaces("steady"), before, "the running pod's networks");
    let ips: Vec<String> = ["steady", "after-restart"]
        .iter()
        .map(|p| c.status(p)[1]["ips"][0].as_str().unwrap().to_string())
        .collect();
    c.delete("steady");
    c.delete("after-restart");
    for ip in &ips {
        c.wait_until(&format!("bridge-net releases {ip}"), || {
            !c.held_ips("bridge-net").contains(ip)
        });
    }
}

/// A NAD of another namespace: used as it is by default; refused (an event naming the
/// isolation, the pod never starting) once the DaemonSet runs with `--namespace-isolation`,
/// which a rolling update of the DaemonSet carries into the generated config.
#[test]
fn namespace_isolation_refuses_another_namespaces_nad_once_rolled_out() {
    let c = cluster();
    c.kubectl(&["create", "namespace", "tenant"], None);
    let mut theirs = nads()[1].clone();
    theirs["metadata"] = json!({"name": "tenant-net", "namespace": "tenant"});
    c.apply(&theirs);
    c.start(&pod("crossing", json!({NETWORKS: "tenant/tenant-net"})));
    assert_eq!(c.attachments("crossing")[1], "tenant/tenant-net net1");
    c.delete("crossing");

    let config = c.node.join("conf/00-multihome.conflist");
    let isolated = || {
        std::fs::read_to_string(&config).is_ok_and(|t| t.contains("\"namespaceIsolation\": true"))
    };
    c.kubectl_ok(&[
        "-n",
        "kube-system",
        "patch",
        "daemonset",
        "multihome",
        "--type=json",
        "-p",
        r#"[{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--namespace-isolation=true"}]"#,
    ]);
    c.wait_until("the rolled-out installer isolates namespaces", isolated);
    c.apply(&pod("isolated", json!({NETWORKS: "tenant/tenant-net"})));
    c.wait_until("the isolation is on the pod's events", || {
        c.events("isolated", "FailedCreatePodSandBox")
            .iter()
            .any(|m| m.contains("tenant") && m.contains("namespaceIsolation"))
    });
    assert_ne!(c.pod("isolated")["status"]["phase"], "Running");
    c.delete("isolated");

    c.kubectl_ok(&["apply", "-f", "conf/multihome-daemonset.yml"]);
    c.wait_until("the installer is back to the manifest", || !isolated());
}

/// The NAD CRD deleted (its NADs go with it): a pod asking for a NAD waits with multihome's
/// "try again later" in its events; once the CRD and the NAD are back, kubelet's retry succeeds.
#[test]
fn without_the_nad_crd_pods_wait_and_start_once_it_is_back() {
    let c = cluster();
    let crd = "network-attachment-definitions.k8s.cni.cncf.io";
    c.kubectl_ok(&["delete", "crd", crd, "--wait=true"]);
    c.apply(&pod("crdless", json!({NETWORKS: "bridge-net"})));
    c.wait_until("multihome's error is on the pod's events", || {
        c.events("crdless", "FailedCreatePodSandBox")
            .iter()
            .any(|m| m.contains("CRD") && m.contains("bridge-net"))
    });
    assert_ne!(c.pod("crdless")["status"]["phase"], "Running");
    c.kubectl_ok(&["apply", "-f", "conf/multihome-daemonset.yml"]);
    c.kubectl_ok(&["wait", "--for=condition=Established", &format!("crd/{crd}")]);
    for nad in nads() {
        c.apply(&nad);
    }
    c.wait_running("crdless");
    assert_eq!(c.attachments("crdless")[1], "default/bridge-net net1");
    c.delete("crdless");
}

/// The DaemonSet rolled to a new image (other bytes: the installer must replace the binary
/// kubelet's runtime executes; the daemon is replaced too, so pods started with the old daemon
/// are deleted with the new one and the other way round) while pods keep starting and
/// stopping: every pod gets its networks and releases them, the node runs the new binary, then
/// the old one again.
#[test]
fn rolling_the_daemonset_to_a_new_image_while_pods_come_and_go() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let c = cluster();
    let installed = c.node.join("opt/cni/bin/multihome");
    let next = std::fs::read(c.work.join("images/next/multihome")).unwrap();
    let rolled = AtomicBool::new(false);
    let released = std::thread::scope(|s| {
        let churn = s.spawn(|| {
            let mut ips = Vec::new();
            // Pods until two have started after the rollout, whatever its speed.
            let mut after = 0;
            for i in 0..60 {
                let name = format!("churn-{i}");
                c.start(&pod(&name, json!({NETWORKS: "bridge-net"})));
                assert_eq!(c.attachments(&name)[1], "default/bridge-net net1");
                ips.push(c.status(&name)[1]["ips"][0].as_str().unwrap().to_string());
                c.delete(&name);
                if rolled.load(Ordering::SeqCst) {
                    after += 1;
                    if after == 2 {
                        break;
                    }
                }
            }
            assert_eq!(after, 2, "pods kept starting after the rollout");
            ips
        });
        std::thread::sleep(Duration::from_secs(2));
        c.kubectl_ok(&[
            "-n",
            "kube-system",
            "set",
            "image",
            "daemonset/multihome",
            "install=localhost/multihome:next",
            "daemon=localhost/multihome:next",
        ]);
        c.rolled_out();
        c.wait_until("the node runs the new binary", || {
            std::fs::read(&installed).is_ok_and(|b| b == next)
        });
        rolled.store(true, Ordering::SeqCst);
        churn.join().unwrap()
    });
    assert!(released.len() >= 3, "{released:?}");
    for ip in &released {
        c.wait_until(&format!("bridge-net releases {ip}"), || {
            !c.held_ips("bridge-net").contains(ip)
        });
    }
    c.kubectl_ok(&["apply", "-f", "conf/multihome-daemonset.yml"]);
    c.rolled_out();
    c.wait_until("the node runs the manifest's binary again", || {
        std::fs::read(&installed).is_ok_and(|b| b != next)
    });
    c.start(&pod("rolled-back", json!({NETWORKS: "bridge-net"})));
    c.delete("rolled-back");
}

/// The service account's token rotated under the installer, the old one revoked: a token from
/// the TokenRequest API (what a projected volume holds) replaces the secret's, kubelet swaps the
/// volume's `..data` link as it does for a projected token, and the installer follows it. A pod
/// started in between gets its networks once the new token is in place (the API server refusing
/// the old one is only a retry for kubelet), as does every pod after.
#[test]
fn a_rotated_token_is_followed_and_pods_keep_starting() {
    let c = cluster();
    let copy = c.node.join("conf/multus.d/token");
    let old = std::fs::read_to_string(&copy).unwrap();
    let secret = c.kubectl_ok(&[
        "-n",
        "kube-system",
        "get",
        "serviceaccount",
        "multihome",
        "-o",
        "jsonpath={.secrets[0].name}",
    ]);
    let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                         "spec": {"expirationSeconds": 86400}});
    let out = c.kubectl(
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/kube-system/serviceaccounts/multihome/token",
            "-f",
            "-",
        ],
        Some(&request.to_string()),
    );
    assert!(out.status.success(), "{out:?}");
    let issued: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new = issued["status"]["token"].as_str().unwrap();
    // A legacy token is valid only while its secret holds it.
    c.kubectl_ok(&[
        "-n",
        "kube-system",
        "patch",
        "secret",
        &secret,
        "-p",
        &json!({"stringData": {"token": new}}).to_string(),
    ]);
    // The API server sees the secret through its informer cache: refused within moments.
    c.wait_until("the API server refuses the old token", || {
        let (code, _) = call(
            &c.netns,
            API_SERVER,
            &c.work.join("pki/ca.crt"),
            old.trim(),
            ("GET", "/api/v1/namespaces/default/pods/rotating", "", ""),
        );
        code == 401
    });
    c.apply(&pod("rotating", json!({NETWORKS: "bridge-net"})));
    c.wait_until("the installer copies the rotated token", || {
        std::fs::read_to_string(&copy).is_ok_and(|t| t.trim() == new)
    });
    c.wait_running("rotating");
    assert_eq!(c.attachments("rotating")[1], "default/bridge-net net1");
    c.start(&pod("rotated", json!({NETWORKS: "bridge-net"})));
    assert_eq!(c.attachments("rotated")[1], "default/bridge-net net1");
    c.delete("rotating");
    c.delete("rotated");
}

/// The node daemon's burst: 20 pods created at once, each with two NADs, all Running with their
/// networks; the API server read nothing for them (no pod or NAD GET), and the daemon's metrics
/// count every ADD.
#[test]
fn twenty_pods_at_once_with_the_daemon_read_nothing_and_are_counted() {
    let c = cluster();
    let adds = |text: &str| {
        metric(
            text,
            "multihome_cni_request_duration_seconds_count{command=\"ADD\",result=\"success\"}",
        )
    };
    let before = adds(&c.metrics());
    let names: Vec<String> = (0..20).map(|i| format!("burst-{i}")).collect();
    let pods: Vec<Value> = names
        .iter()
        .map(|n| pod(n, json!({NETWORKS: "macvlan-net, bridge-net"})))
        .collect();
    let since = SystemTime::now();
    let started = Instant::now();
    c.start_all(&pods);
    println!(
        "20 pods with two NADs each, created at once: all Running in {:?}",
        started.elapsed()
    );
    for n in &names {
        assert_eq!(c.attachments(n).len(), 3, "pod {n}'s network-status");
    }
    let mut refs: Vec<&str> = names.iter().map(String::as_str).collect();
    refs.extend(["macvlan-net", "bridge-net"]);
    let requests = c.requests_about("system:serviceaccount:kube-system:multihome", &refs, since);
    let reads: Vec<&Request> = requests
        .iter()
        .filter(|r| r.what.starts_with("get "))
        .collect();
    let fallbacks: Vec<String> = c
        .metrics()
        .lines()
        .filter(|l| {
            [
                "multihome_cni_fallbacks_total",
                "multihome_cache_misses_total",
                "multihome_cni_daemon_wait_seconds",
                "multihome_api_requests_total{verb=\"GET\"",
            ]
            .iter()
            .any(|s| l.starts_with(s))
        })
        .map(str::to_string)
        .collect();
    println!("the daemon's counts after the burst: {fallbacks:#?}");
    assert!(reads.is_empty(), "reads for the burst: {reads:#?}");
    let patches = requests
        .iter()
        .filter(|r| r.what == "patch pods/status")
        .count();
    assert_eq!(patches, 20, "one status patch per pod");
    // Reports reach the daemon after each call returned: give them a moment.
    c.wait_until("the daemon counted 20 more ADDs", || {
        adds(&c.metrics()) >= before + 20.0
    });
    let text = c.metrics();
    assert_eq!(
        metric(
            &text,
            "multihome_cache_objects{resource=\"network-attachment-definitions\"}"
        ) >= 2.0,
        true,
        "{text}"
    );
    c.delete_all_released(&names, &["macvlan-net", "bridge-net"]);
}

/// The daemon killed (SIGKILL) while 12 pods start: every pod starts (the calls that find it
/// gone read the API themselves), kubelet restarts it, and deleting the pods while it restarts
/// again releases everything: no DEL ever needs it.
#[test]
fn the_daemon_killed_in_a_burst_and_restarted_while_pods_go_loses_nothing() {
    let c = cluster();
    let names: Vec<String> = (0..12).map(|i| format!("killed-{i}")).collect();
    let pods: Vec<Value> = names
        .iter()
        .map(|n| pod(n, json!({NETWORKS: "bridge-net"})))
        .collect();
    let killer = std::thread::spawn(move || {
        let c = cluster();
        std::thread::sleep(Duration::from_millis(700));
        let pids = c.daemon_pids();
        assert_eq!(pids.len(), 1, "one daemon on the node: {pids:?}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pids[0]),
            nix::sys::signal::SIGKILL,
        )
        .unwrap();
        pids[0]
    });
    c.start_all(&pods);
    let killed = killer.join().unwrap();
    for n in &names {
        assert_eq!(c.attachments(n).len(), 2, "pod {n}'s network-status");
    }
    c.wait_until("kubelet restarts the daemon", || {
        c.daemon_pids().iter().any(|p| *p != killed)
    });
    c.rolled_out();
    // Stopped again while the pods are deleted: their DELs run from multihome's records.
    let pids = c.daemon_pids();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    c.delete_all_released(&names, &["bridge-net"]);
    c.wait_until("the daemon is back", || !c.daemon_pids().is_empty());
    c.rolled_out();
}

/// The value of the sample `series` (name and labels, as the text format writes them); 0 when
/// absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The API server restarted under the daemon: its watches break (and one resumed from before
/// may find its resourceVersion too old); it resumes or lists again, serves again, and a NAD
/// created after the restart comes from its cache to the next pod: no reads.
#[test]
fn the_daemon_lists_again_after_the_api_server_restarts_and_serves_from_memory() {
    let c = cluster();
    let nad_watch = |text: &str| {
        metric(
            text,
            "multihome_watch_relists_total{resource=\"network-attachment-definitions\"}",
        ) + metric(
            text,
            "multihome_watch_restarts_total{resource=\"network-attachment-definitions\"}",
        )
    };
    let before = nad_watch(&c.metrics());
    let status = Command::new("scripts/cluster.sh")
        .arg("restart-apiserver")
        .status()
        .unwrap();
    assert!(status.success());
    let mut late = nads()[1].clone();
    late["metadata"]["name"] = json!("late-net");
    c.apply(&late);
    let nads_now = c
        .kubectl_ok(&[
            "get",
            "network-attachment-definitions",
            "-A",
            "--no-headers",
        ])
        .lines()
        .count() as f64;
    c.wait_until(
        "the daemon's NAD watch broke and came back with every NAD",
        || {
            let text = c.metrics();
            nad_watch(&text) > before
                && metric(
                    &text,
                    "multihome_cache_objects{resource=\"network-attachment-definitions\"}",
                ) == nads_now
        },
    );
    println!(
        "after the restart: {}",
        c.metrics()
            .lines()
            .filter(|l| l.starts_with("multihome_watch_"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let since = SystemTime::now();
    c.start(&pod("after-restart", json!({NETWORKS: "late-net"})));
    assert_eq!(c.attachments("after-restart").len(), 2);
    let requests = c.requests_about(
        "system:serviceaccount:kube-system:multihome",
        &["after-restart", "late-net"],
        since,
    );
    let reads: Vec<&Request> = requests
        .iter()
        .filter(|r| r.what.starts_with("get "))
        .collect();
    assert!(reads.is_empty(), "reads after the restart: {reads:#?}");
    c.delete("after-restart");
}

/// Hot-plug on the real node: a NAD added to a running pod's annotation appears in the pod as
/// an interface with its address, and in network-status, within seconds; a NAD that does not
/// exist is an event and changes nothing; the NAD removed again goes; deleting the pod releases
/// everything, what hot-plug added included.
#[test]
fn hot_plug_adds_and_removes_a_nad_of_a_running_pod() {
    let c = cluster();
    c.start(&pod("plugged", json!({NETWORKS: "bridge-net"})));
    assert_eq!(c.attachments("plugged").len(), 2);
    let annotate = |value: &str| {
        c.kubectl_ok(&[
            "annotate",
            "--overwrite",
            "pod",
            "plugged",
            &format!("{NETWORKS}={value}"),
        ]);
    };
    let started = Instant::now();
    annotate("bridge-net, macvlan-net");
    c.wait_until("net2 is in the pod", || {
        c.interfaces("plugged").iter().any(|(n, _)| n == "net2")
    });
    let took = started.elapsed();
    c.wait_until("network-status lists net2", || {
        c.attachments("plugged").len() == 3
    });
    println!("hot-plug: annotation changed -> interface in the pod in {took:?}");
    assert_eq!(c.attachments("plugged")[2], "default/macvlan-net net2");
    c.wait_until("an AddedInterface event for net2", || {
        c.events("plugged", "AddedInterface")
            .iter()
            .any(|m| m.starts_with("Add net2 "))
    });

    annotate("bridge-net, macvlan-net, absent-net");
    c.wait_until("a NetworkChangeFailed event naming the NAD", || {
        c.events("plugged", "NetworkChangeFailed")
            .iter()
            .any(|m| m.contains("absent-net"))
    });
    assert_eq!(c.attachments("plugged").len(), 3, "nothing changed");

    annotate("bridge-net");
    c.wait_until("net2 is gone", || {
        !c.interfaces("plugged").iter().any(|(n, _)| n == "net2")
    });
    c.wait_until("network-status follows", || {
        c.attachments("plugged").len() == 2
    });
    annotate("bridge-net, macvlan-net");
    c.wait_until("net2 is back", || {
        c.interfaces("plugged").iter().any(|(n, _)| n == "net2")
    });
    c.delete_all_released(&["plugged".to_string()], &["bridge-net", "macvlan-net"]);
}
