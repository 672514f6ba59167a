//! The node daemon (`multihome daemon`) against the API stand-in, and the CNI call beside it:
//! the call asks the daemon and the API server reads nothing for it; the daemon resumes a broken
//! watch and lists again after 410 Gone; a call reads the API itself when the daemon is absent,
//! dead, unready, of another protocol, stuck or hangs up; SIGTERM removes the socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::wait_until;
use crate::kubernetes::{Kube, NS};

const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const METRICS_PORT: u16 = 9391;

/// `multihome daemon` in the test's host namespace, beside the stand-in; stopped (SIGTERM, then
/// SIGKILL) when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
    netns: String,
}

impl Daemon {
    fn start(k: &Kube) -> Daemon {
        let socket = socket_of(k);
        let kubeconfig = k.kubeconfig(crate::kubernetes::Auth::Token);
        // Hot-plug reads this test's config, never the machine's.
        let config = k.w.dir.join("multihome.conf");
        crate::harness::write_json(&config, &conf(k, &socket));
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &k.w.host.name,
                env!("CARGO_BIN_EXE_multihome"),
            ])
            .args(["daemon", "--node-name", "node-1", "--log-level", "debug"])
            .arg("--socket")
            .arg(&socket)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg(format!("--metrics-address=127.0.0.1:{METRICS_PORT}"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Daemon {
            child,
            socket,
            netns: k.w.host.name.clone(),
        }
    }

    /// Its hello: `(protocol, ready)`; `None` while nothing answers.
    fn hello(&self) -> Option<(u64, bool)> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.write_all(b"{\"protocol\":1}\n").ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        let v: Value = serde_json::from_str(&line).ok()?;
        Some((v["protocol"].as_u64()?, v["ready"].as_bool()?))
    }

    fn wait_ready(&self) {
        wait_until("the daemon is ready", || {
            self.hello().is_some_and(|(_, ready)| ready)
        });
    }

    /// `GET path` of its HTTP endpoint: `(status line, body)`.
    fn http(&self, path: &str) -> (String, String) {
        let ns = format!("/run/netns/{}", self.netns);
        let path = path.to_string();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&ns).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut s = std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT)).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            (head.lines().next().unwrap().to_string(), body.to_string())
        })
        .join()
        .unwrap()
    }

    /// The value of the sample `series` in its metrics; 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        self.http("/metrics")
            .1
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// SIGTERM; its exit status and stderr.
    fn stop(mut self) -> (bool, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status.success(), err);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the daemon did not stop on SIGTERM");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// multihome's config with the daemon's socket at `socket`.
fn conf(k: &Kube, socket: &Path) -> Value {
    let mut conf = k.conf();
    conf["daemonSocket"] = json!(socket);
    conf
}

/// The requests that read a pod or a NAD (a watch or a list is the daemon's).
fn reads(requests: &[String]) -> Vec<&String> {
    requests
        .iter()
        .filter(|r| r.starts_with("GET ") && !r.contains('?'))
        .collect()
}

#[test]
fn a_call_asks_the_daemon_and_the_api_server_reads_nothing_for_it() {
    let k = Kube::new("dmask");
    let uid = k.pod("web", json!({NETWORKS: "macvlan-net@storage0, ptp-net"}));
    let d = Daemon::start(&k);
    d.wait_ready();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(d.socket.parent().unwrap()),
        0o700,
        "the socket's directory"
    );
    assert_eq!(mode(&d.socket), 0o600, "the socket");
    assert_eq!(d.http("/readyz").0, "HTTP/1.1 200 OK");
    assert_eq!(d.http("/healthz").0, "HTTP/1.1 200 OK");

    k.api.take_requests();
    let conf = conf(&k, &d.socket);
    k.run("ADD", &conf, "web", &uid).success();
    assert_eq!(k.w.pod.links(), ["eth0", "net2", "storage0"]);
    assert_eq!(k.status("web").as_array().unwrap().len(), 3);
    // The events are the daemon's to post, after ADD returned.
    wait_until("the daemon posts the 3 events", || {
        k.api.events().len() == 3
    });
    let requests = k.api.take_requests();
    assert_eq!(reads(&requests), Vec::<&String>::new(), "{requests:#?}");
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.starts_with("PATCH /api/v1/namespaces/pods/pods/web/status"))
            .count(),
        1,
        "{requests:#?}"
    );
    // The call's report, counted where it happened.
    let adds = "multihome_cni_request_duration_seconds_count{command=\"ADD\",result=\"success\"}";
    wait_until("the daemon counts the ADD", || d.metric(adds) == 1.0);
    assert_eq!(
        d.metric("multihome_cni_fallbacks_total{reason=\"timeout\"}"),
        0.0
    );
    // The call told how long it waited for the daemon's answers (hello, pod, NADs).
    assert_eq!(d.metric("multihome_cni_daemon_wait_seconds_count"), 1.0);
    assert!(d.metric("multihome_cni_daemon_wait_seconds_sum") > 0.0);

    k.run("DEL", &conf, "web", &uid).success();
    k.assert_clean();
    let (ok, stderr) = d.stop();
    assert!(ok, "{stderr}");
    assert!(stderr.contains("drained"), "{stderr}");
    assert!(!socket_of(&k).exists(), "SIGTERM removes the socket");
}

/// Where this test's daemon listens.
fn socket_of(k: &Kube) -> PathBuf {
    k.w.dir.join("run/multihome/daemon.sock")
}

#[test]
fn the_daemon_resumes_a_broken_watch_and_lists_again_after_410_gone() {
    let k = Kube::new("dmwatch");
    let d = Daemon::start(&k);
    d.wait_ready();
    let nad_lists = |requests: &[String]| {
        requests
            .iter()
            .filter(|r| {
                r.starts_with("GET /apis/k8s.cni.cncf.io/v1/network-attachment-definitions?limit=")
            })
            .count()
    };

    // Broken: resumed from where it was, no list.
    k.api
        .add_nad(NS, "between", Some(&k.w.ptp_net("1.0.0")), json!({}));
    wait_until("the daemon has the new NAD", || {
        d.metric("multihome_cache_objects{resource=\"network-attachment-definitions\"}") == 3.0
    });
    k.api.take_requests();
    k.api.break_watches();
    wait_until("both watches are resumed", || {
        d.metric("multihome_watch_restarts_total{resource=\"pods\"}") == 1.0
            && d.metric(
                "multihome_watch_restarts_total{resource=\"network-attachment-definitions\"}",
            ) == 1.0
    });
    let requests = k.api.take_requests();
    assert_eq!(nad_lists(&requests), 0, "{requests:#?}");

    // Compacted and broken: 410 Gone, then a list.
    k.api.compact();
    k.api.break_watches();
    wait_until("the NADs are listed again", || {
        d.metric("multihome_watch_relists_total{resource=\"network-attachment-definitions\"}")
            == 2.0
    });
    d.wait_ready();
    // A NAD made after the list reaches a pod from the daemon's memory.
    k.api
        .add_nad(NS, "late", Some(&k.w.ptp_net("1.0.0")), json!({}));
    wait_until("the daemon has the late NAD", || {
        d.metric("multihome_cache_objects{resource=\"network-attachment-definitions\"}") == 4.0
    });
    let uid = k.pod("late-pod", json!({NETWORKS: "late"}));
    // Started once its watch event is in (a pod faster than that is read live, once).
    wait_until("the daemon has the pod", || {
        d.metric("multihome_cache_objects{resource=\"pods\"}") == 1.0
    });
    k.api.take_requests();
    let conf = conf(&k, &d.socket);
    k.run("ADD", &conf, "late-pod", &uid).success();
    let requests = k.api.take_requests();
    assert_eq!(reads(&requests), Vec::<&String>::new(), "{requests:#?}");
    k.run("DEL", &conf, "late-pod", &uid).success();
    k.assert_clean();
}

/// How a stand-in for the daemon misbehaves.
#[derive(Clone, Copy, Debug)]
enum Misbehaves {
    /// Its hello says it is not synced.
    Unready,
    /// Its hello is of another protocol.
    Foreign,
    /// It accepts and never answers.
    Stuck,
    /// It answers the hello, then hangs up at the first request.
    HangsUp,
}

/// A socket at `path` that answers as `how`, for as long as the test runs.
fn misbehaving(path: &Path, how: Misbehaves) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            let hello: &[u8] = match how {
                Misbehaves::Unready => b"{\"protocol\":1,\"ready\":false}\n",
                Misbehaves::Foreign => b"{\"protocol\":2,\"ready\":true}\n",
                Misbehaves::Stuck => {
                    held.push(stream);
                    continue;
                }
                Misbehaves::HangsUp => b"{\"protocol\":1,\"ready\":true}\n",
            };
            let _ = stream.write_all(hello);
        }
    });
}

#[test]
fn a_call_reads_the_api_itself_when_the_daemon_is_gone_dead_unready_foreign_stuck_or_hangs_up() {
    let k = Kube::new("dmfall");
    let uid = k.pod("web", json!({NETWORKS: "ptp-net"}));
    let dir = k.w.dir.join("sockets");
    std::fs::create_dir_all(&dir).unwrap();
    // A socket file nobody listens on: a daemon killed without removing it.
    let dead = dir.join("dead.sock");
    drop(UnixListener::bind(&dead).unwrap());
    let mut cases = vec![("absent", dir.join("absent.sock")), ("dead", dead)];
    for how in [
        Misbehaves::Unready,
        Misbehaves::Foreign,
        Misbehaves::Stuck,
        Misbehaves::HangsUp,
    ] {
        let path = dir.join(format!("{how:?}.sock"));
        misbehaving(&path, how);
        cases.push((format!("{how:?}").leak(), path));
    }
    for (case, socket) in cases {
        k.api.take_requests();
        let conf = conf(&k, &socket);
        let started = Instant::now();
        let run = k.run("ADD", &conf, "web", &uid).success();
        let took = started.elapsed();
        assert_eq!(k.w.pod.links(), ["eth0", "net1"], "{case}");
        let requests = k.api.take_requests();
        assert_eq!(
            reads(&requests).len(),
            2,
            "{case}: the pod and its NAD: {requests:#?}"
        );
        assert!(
            run.stderr.contains("asking the API server directly"),
            "{case}: says so: {}",
            run.stderr
        );
        // A stuck daemon costs the call its wait (0.1 s), never the API timeout (10 s).
        assert!(took < Duration::from_secs(5), "{case}: {took:?}");
        k.run("DEL", &conf, "web", &uid).success();
        k.assert_clean();
    }
}

/// Hot-plug: the networks annotation of a running pod changed; the daemon adds and removes its
/// interfaces from multihome's record, as an ADD of the new annotation would have made them,
/// and network-status and events follow. A NAD that does not exist changes nothing and is an
/// event; the pod's DEL then releases everything, what hot-plug added included.
#[test]
fn hot_plug_follows_the_networks_annotation_of_a_running_pod() {
    let k = Kube::new("dmplug");
    let uid = k.pod("web", json!({NETWORKS: "macvlan-net@storage0"}));
    let d = Daemon::start(&k);
    let conf = conf(&k, &d.socket);
    d.wait_ready();
    k.run("ADD", &conf, "web", &uid).success();
    assert_eq!(k.w.pod.links(), ["eth0", "storage0"]);
    let interfaces = |k: &Kube| -> Vec<String> {
        k.status("web")
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    s["interface"].as_str().unwrap(),
                    s["name"].as_str().unwrap()
                )
            })
            .collect()
    };

    // Added.
    k.api.set_annotations(
        NS,
        "web",
        json!({NETWORKS: "macvlan-net@storage0, ptp-net"}),
    );
    wait_until("net2 appears", || {
        k.w.pod.links() == ["eth0", "net2", "storage0"]
    });
    wait_until("network-status follows", || interfaces(&k).len() == 3);
    assert_eq!(
        interfaces(&k),
        [
            "eth0 cluster",
            "storage0 pods/macvlan-net",
            "net2 pods/ptp-net"
        ]
    );
    let reasons = |k: &Kube| -> Vec<String> {
        k.api
            .events()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["reason"].as_str().unwrap(),
                    e["message"].as_str().unwrap()
                )
            })
            .collect()
    };
    wait_until("an AddedInterface event for net2", || {
        reasons(&k)
            .iter()
            .any(|r| r.starts_with("AddedInterface Add net2 "))
    });

    // A NAD that does not exist: nothing changes, and the pod hears why.
    k.api.set_annotations(
        NS,
        "web",
        json!({NETWORKS: "macvlan-net@storage0, ptp-net, absent-net"}),
    );
    wait_until("a NetworkChangeFailed event naming the NAD", || {
        reasons(&k)
            .iter()
            .any(|r| r.starts_with("NetworkChangeFailed") && r.contains("absent-net"))
    });
    assert_eq!(k.w.pod.links(), ["eth0", "net2", "storage0"]);

    // Removed: the pod ends as an ADD of the annotation would have left it.
    k.api
        .set_annotations(NS, "web", json!({NETWORKS: "ptp-net"}));
    wait_until("storage0 is gone", || k.w.pod.links() == ["eth0", "net1"]);
    wait_until("network-status follows", || {
        interfaces(&k) == ["eth0 cluster", "net1 pods/ptp-net"]
    });
    // Events follow network-status.
    wait_until("a RemovedInterface event for storage0", || {
        reasons(&k)
            .iter()
            .any(|r| r.starts_with("RemovedInterface Remove storage0 (pods/macvlan-net)"))
    });
    let ok = "multihome_hotplug_operations_total{result=\"ok\"}";
    wait_until("the daemon counts both changes", || d.metric(ok) >= 2.0);

    // The pod's DEL releases what hot-plug added too.
    k.run("DEL", &conf, "web", &uid).success();
    k.assert_clean();
}

/// A change made while no daemon ran is caught up with when one starts: its first list has no
/// earlier state to compare with, so every pod of its node is checked against its record.
#[test]
fn hot_plug_catches_up_with_a_change_made_while_no_daemon_ran() {
    let k = Kube::new("dmcatch");
    let uid = k.pod("web", json!({NETWORKS: "macvlan-net@storage0"}));
    let conf = conf(&k, &socket_of(&k));
    k.run("ADD", &conf, "web", &uid).success();
    assert_eq!(k.w.pod.links(), ["eth0", "storage0"]);
    k.api.set_annotations(
        NS,
        "web",
        json!({NETWORKS: "macvlan-net@storage0, ptp-net"}),
    );
    let d = Daemon::start(&k);
    d.wait_ready();
    wait_until("net2 appears", || {
        k.w.pod.links() == ["eth0", "net2", "storage0"]
    });
    k.run("DEL", &conf, "web", &uid).success();
    k.assert_clean();
}
