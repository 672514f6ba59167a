//! The multihome benchmark (`make bench`, or `cargo bench --bench bench -- --pods N`).
//!
//! For N pods, each in its own network namespace, with the real reference plugins (a bridge
//! cluster network, then `macvlan-net@net1` and `bridge-net` from the pod annotation), it runs,
//! interleaved pod by pod so machine noise hits every series alike:
//!
//! 1. the three delegates called directly (the floor),
//! 2. multihome with static `delegates`,
//! 3. multihome through the HTTPS API stand-in,
//! 4. multihome VERSION,
//!
//! and prints median, p95 and max of ADD and DEL per series, multihome's overhead over the floor,
//! the API requests per ADD and DEL, TLS handshakes per ADD, peak RSS and binary size. Then a
//! burst: M pods added by W parallel workers, throughput, and checks that every pod got all its
//! interfaces and that DEL leaked nothing. It exits non-zero when a check fails, never because
//! of a timing. Needs root.

#![allow(clippy::unwrap_used)] // a benchmark: a panic is the report

#[allow(dead_code)]
#[path = "apiserver.rs"]
mod apiserver;
#[allow(dead_code)]
#[path = "harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use apiserver::ApiServer;
use harness::{Netns, PLUGINS, sh};

const BIN: &str = env!("CARGO_BIN_EXE_multihome");
const NS: &str = "bench";

struct Args {
    pods: usize,
    burst: usize,
    workers: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        pods: 50,
        burst: 100,
        workers: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match a.as_str() {
            "--pods" => args.pods = num("--pods")?,
            "--burst" => args.burst = num("--burst")?,
            "--workers" => args.workers = num("--workers")?.max(1),
            // cargo bench passes --bench to harness-less benches.
            "--bench" => {}
            other => {
                return Err(format!(
                    "unknown argument {other:?} (--pods N --burst M --workers W)"
                ));
            }
        }
    }
    Ok(args)
}

/// Runs `bin` with exactly `env` as its CNI environment; returns the wall time and stdout, or
/// an error with everything it printed.
fn invoke(bin: &str, env: &[(&str, String)], stdin: &[u8]) -> Result<(Duration, String), String> {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("CNI_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("{bin}: {e}"))?;
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{bin}: {e}"))?;
    let took = start.elapsed();
    writer.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{bin} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((took, stdout))
}

/// Everything the scenarios share.
struct Bench {
    dir: PathBuf,
    api: ApiServer,
    kubeconfig: PathBuf,
    /// Where the stub delegate is.
    stub_dir: PathBuf,
    /// The UIDs the stand-in gave the pods, as kubelet passes them in `K8S_POD_UID`.
    uids: Vec<String>,
    cluster: Value,
    macvlan: Value,
    bridge: Value,
    /// The node daemon's socket (`multihome daemon`, started beside the stand-in).
    socket: PathBuf,
}

impl Bench {
    fn ipam(&self, subnet: &str, default_route: bool) -> Value {
        let mut ipam =
            json!({"type": "host-local", "subnet": subnet, "dataDir": self.dir.join("ipam")});
        if default_route {
            ipam["routes"] = json!([{"dst": "0.0.0.0/0"}]);
        }
        ipam
    }

    fn env(
        &self,
        command: &str,
        cid: &str,
        pod: &Netns,
        ifname: &str,
        i: usize,
    ) -> Vec<(&'static str, String)> {
        let pod_name = format!("pod-{i}");
        let uid = &self.uids[i];
        vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", cid.to_string()),
            ("CNI_NETNS", pod.path()),
            ("CNI_IFNAME", ifname.to_string()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={pod_name};K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID={uid}"
                ),
            ),
            ("CNI_PATH", PLUGINS.to_string()),
        ]
    }

    fn static_conf(&self) -> Value {
        json!({"cniVersion": "1.0.0", "name": "multihome", "type": "multihome", "binDir": PLUGINS,
               "cniDir": self.dir.join("cache"), "delegates": [self.cluster, self.macvlan, self.bridge]})
    }

    /// Through the API itself (`daemon`: false) or the node daemon.
    fn api_conf(&self, daemon: bool) -> Value {
        let socket = if daemon {
            self.socket.as_path()
        } else {
            Path::new("")
        };
        json!({"cniVersion": "1.0.0", "name": "multihome", "type": "multihome", "binDir": PLUGINS,
               "cniDir": self.dir.join("cache"), "kubeconfig": self.kubeconfig, "delegates": [self.cluster],
               "daemonSocket": socket})
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Series {
    Floor,
    Static,
    Api,
    Daemon,
    Version,
    StubFloor,
    StubStatic,
}

impl Series {
    fn label(self) -> &'static str {
        match self {
            Series::Floor => "delegates called directly",
            Series::Static => "multihome, static delegates",
            Series::Api => "multihome, through the API",
            Series::Daemon => "multihome, through the daemon",
            Series::Version => "multihome VERSION",
            Series::StubFloor => "stub delegates called directly",
            Series::StubStatic => "multihome, stub delegates",
        }
    }

    fn stubs(self) -> bool {
        matches!(self, Series::StubFloor | Series::StubStatic)
    }
}

#[derive(Default)]
struct Samples {
    add: BTreeMap<Series, Vec<Duration>>,
    del: BTreeMap<Series, Vec<Duration>>,
    requests_add: BTreeMap<(Series, String), usize>,
    requests_del: BTreeMap<(Series, String), usize>,
    handshakes: BTreeMap<Series, usize>,
    api_adds: BTreeMap<Series, usize>,
    failures: Vec<String>,
}

/// "GET /api/v1/namespaces/bench/pods/pod-3" -> "GET pods"
fn request_kind(r: &str) -> String {
    let (verb, path) = r.split_once(' ').unwrap_or((r, ""));
    let parts: Vec<&str> = path.split('/').collect();
    let resource = match parts.as_slice() {
        [.., "pods", _, "status"] => "pods/status",
        [.., "pods", _] => "pods",
        [.., "network-attachment-definitions", _] => "network-attachment-definitions",
        [.., "events"] => "events",
        _ => path,
    };
    format!("{verb} {resource}")
}

fn links(pod: &Netns) -> Vec<String> {
    let mut l = pod.links();
    l.sort();
    l
}

fn ips_held(dir: &Path) -> usize {
    let Ok(nets) = std::fs::read_dir(dir.join("ipam")) else {
        return 0;
    };
    nets.filter_map(|n| n.ok())
        .flat_map(|n| {
            std::fs::read_dir(n.path())
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
        })
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .parse::<std::net::IpAddr>()
                .is_ok()
        })
        .count()
}

/// Files and bytes in the cache directory (records, locks, anything left), tombstones aside.
fn cache_usage(dir: &Path) -> (usize, u64) {
    std::fs::read_dir(dir.join("cache"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name() != "deleted")
                .filter_map(|e| e.metadata().ok())
                .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
        })
        .unwrap_or((0, 0))
}

/// The tombstones completed DELs left in the cache directory.
fn tombstones(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("cache/deleted"))
        .into_iter()
        .flatten()
        .filter_map(|hour| std::fs::read_dir(hour.ok()?.path()).ok())
        .map(|entries| entries.count())
        .sum()
}

/// What a DEL costs by what it finds for the attachment (README, "DEL and CHECK"): the record;
/// a tombstone (the runtime's repeated DEL); nothing (the record lost); a damaged record. For
/// each, over `n` pods through the API: median time, API requests and delegate runs per DEL,
/// and a check that nothing leaked.
fn del_cases(b: &Bench, pods: &[Netns], failures: &mut Vec<String>) {
    // Wrappers that count the delegates multihome runs (their IPAM comes from CNI_PATH).
    let spy = b.dir.join("spy");
    std::fs::create_dir_all(&spy).unwrap();
    let calls = b.dir.join("spy.calls");
    for plugin in ["bridge", "macvlan"] {
        let path = spy.join(plugin);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"$CNI_COMMAND\" >> {}\nexec {PLUGINS}/{plugin}\n",
                calls.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let mut conf = b.api_conf(false);
    conf["binDir"] = json!(spy);
    let conf = conf.to_string();
    let record = |cid: &str| {
        b.dir
            .join("cache")
            .join(format!("multihome+{cid}+eth0.json"))
    };
    let runs = || {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == "DEL")
            .count()
    };
    println!();
    println!(
        "{:<44} {:>9} {:>13} {:>14}",
        "DEL finds (through the API)", "med (ms)", "API requests", "delegate runs"
    );
    // What is done to the record after ADD; `None`: no ADD, the previous case's pods again.
    type Prepare = Option<fn(&Path)>;
    let cases: [(&str, Prepare); 4] = [
        ("the record", Some(|_| {})),
        ("a tombstone (repeated DEL)", None),
        (
            "nothing (record lost): re-plans",
            Some(|r| std::fs::remove_file(r).unwrap()),
        ),
        (
            "a damaged record: re-plans",
            Some(|r| std::fs::write(r, b"{\"kind\":").unwrap()),
        ),
    ];
    for (round, (label, prepare)) in cases.into_iter().enumerate() {
        let (mut took, mut requests, mut delegates) = (Vec::new(), 0, 0);
        for (i, pod) in pods.iter().enumerate() {
            // The tombstone case DELs again what the record case deleted.
            let source = if prepare.is_some() { round } else { round - 1 };
            let cid = format!("delcase-{source}-{i}");
            if let Some(prepare) = prepare {
                if let Err(e) = invoke(BIN, &b.env("ADD", &cid, pod, "eth0", i), conf.as_bytes()) {
                    failures.push(format!("DEL cases, ADD {cid}: {e}"));
                    continue;
                }
                prepare(&record(&cid));
            }
            b.api.take_requests();
            let before = runs();
            match invoke(BIN, &b.env("DEL", &cid, pod, "eth0", i), conf.as_bytes()) {
                Ok((t, _)) => took.push(t),
                Err(e) => failures.push(format!("DEL cases, {label}, {cid}: {e}")),
            }
            requests += b.api.take_requests().len();
            delegates += runs() - before;
            if !links(pod).is_empty() || record(&cid).exists() {
                failures.push(format!(
                    "DEL cases, {label}: {cid} left interfaces or its record"
                ));
            }
        }
        let n = pods.len().max(1) as f64;
        println!(
            "{label:<44} {:>9.2} {:>13.2} {:>14.2}",
            stats(&took).0,
            requests as f64 / n,
            delegates as f64 / n
        );
    }
    if ips_held(&b.dir) > 0 {
        failures.push("DEL cases: IPs leaked".into());
    }
}

const EXPECTED: [&str; 3] = ["eth0", "net1", "net2"];

/// The stub delegate: `/bin/sh`, prints a minimal result on ADD. Stubs make delegate cost small
/// and steady, so multihome's own cost stands out of the noise (and its peak RSS is its own).
const STUB: &str = "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && printf '{\"cniVersion\":\"1.0.0\",\"interfaces\":[{\"name\":\"%s\",\"sandbox\":\"%s\"}],\"ips\":[{\"address\":\"198.18.250.1/24\",\"interface\":0}]}' \"$CNI_IFNAME\" \"$CNI_NETNS\"\nexit 0\n";

fn write_stub(dir: &Path) -> PathBuf {
    let stub_dir = dir.join("stub");
    std::fs::create_dir_all(&stub_dir).unwrap();
    let stub = stub_dir.join("stub");
    std::fs::write(&stub, STUB).unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    stub_dir
}

fn stub_net(name: &str) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "type": "stub"})
}

/// The networks a series attaches, with the interface each gets, and where their plugins are.
fn networks(b: &Bench, series: Series) -> (Vec<(Value, &'static str)>, PathBuf) {
    if series.stubs() {
        let nets = vec![
            (stub_net("a"), "eth0"),
            (stub_net("b"), "net1"),
            (stub_net("c"), "net2"),
        ];
        (nets, b.stub_dir.clone())
    } else {
        let nets = vec![
            (b.cluster.clone(), "eth0"),
            (b.macvlan.clone(), "net1"),
            (b.bridge.clone(), "net2"),
        ];
        (nets, PathBuf::from(PLUGINS))
    }
}

/// The delegates called directly, as a runtime calls them: name and version injected, and on DEL
/// the ADD result as prevResult (libcni does so from 0.4.0 on).
fn direct(
    b: &Bench,
    series: Series,
    cid: &str,
    pod: &Netns,
    i: usize,
) -> Result<(Duration, Duration), String> {
    let (nets, dir) = networks(b, series);
    let calls: Vec<(String, Value, &str)> = nets
        .into_iter()
        .map(|(net, ifname)| {
            let mut conf = net
                .get("plugins")
                .map_or_else(|| net.clone(), |p| p[0].clone());
            conf["name"] = net["name"].clone();
            conf["cniVersion"] = json!("1.0.0");
            (
                dir.join(conf["type"].as_str().unwrap())
                    .display()
                    .to_string(),
                conf,
                ifname,
            )
        })
        .collect();
    let mut add = Duration::ZERO;
    let mut results = Vec::new();
    for (bin, conf, ifname) in &calls {
        let (t, out) = invoke(
            bin,
            &b.env("ADD", cid, pod, ifname, i),
            conf.to_string().as_bytes(),
        )?;
        add += t;
        results.push(serde_json::from_str::<Value>(&out).map_err(|e| format!("{bin}: {e}"))?);
    }
    check_links(pod, series)?;
    let mut del = Duration::ZERO;
    for ((bin, conf, ifname), result) in calls.iter().zip(results).rev() {
        let mut conf = conf.clone();
        conf["prevResult"] = result;
        let (t, _) = invoke(
            bin,
            &b.env("DEL", cid, pod, ifname, i),
            conf.to_string().as_bytes(),
        )?;
        del += t;
    }
    Ok((add, del))
}

/// multihome ADD then DEL with `conf`; API requests are counted for the API series.
fn through_multihome(
    b: &Bench,
    s: &Mutex<Samples>,
    series: Series,
    cid: &str,
    pod: &Netns,
    i: usize,
) -> Result<(Duration, Duration), String> {
    let conf = match series {
        Series::Api => b.api_conf(false),
        Series::Daemon => b.api_conf(true),
        Series::StubStatic => {
            let (nets, dir) = networks(b, series);
            json!({"cniVersion": "1.0.0", "name": "multihome", "binDir": dir, "cniDir": b.dir.join("cache"),
                   "delegates": nets.into_iter().map(|(n, _)| n).collect::<Vec<_>>()})
        }
        _ => b.static_conf(),
    };
    let stdin = conf.to_string();
    b.api.take_requests();
    b.api.take_connections();
    let counted = matches!(series, Series::Api | Series::Daemon);
    // The daemon's own watches are not the call's.
    let count = |into: &mut BTreeMap<(Series, String), usize>| {
        for r in b
            .api
            .take_requests()
            .iter()
            .filter(|r| !r.contains("watch=1"))
        {
            *into.entry((series, request_kind(r))).or_default() += 1;
        }
    };
    let (add, _) = invoke(BIN, &b.env("ADD", cid, pod, "eth0", i), stdin.as_bytes())?;
    if counted {
        let mut st = s.lock().unwrap();
        count(&mut st.requests_add);
        *st.handshakes.entry(series).or_default() += b.api.take_connections();
        *st.api_adds.entry(series).or_default() += 1;
    }
    check_links(pod, series)?;
    let (del, _) = invoke(BIN, &b.env("DEL", cid, pod, "eth0", i), stdin.as_bytes())?;
    if counted {
        count(&mut s.lock().unwrap().requests_del);
    }
    Ok((add, del))
}

/// One series on one pod: ADD, check, DEL, check.
fn run_series(
    b: &Bench,
    s: &Mutex<Samples>,
    series: Series,
    pod: &Netns,
    i: usize,
) -> Result<(), String> {
    let cid = format!("bench-{i}-{series:?}");
    let (add, del) = match series {
        Series::Version => {
            let env = vec![("CNI_COMMAND", "VERSION".to_string())];
            let (t, _) = invoke(BIN, &env, br#"{"cniVersion":"1.0.0"}"#)?;
            s.lock().unwrap().add.entry(series).or_default().push(t);
            return Ok(());
        }
        Series::Floor | Series::StubFloor => direct(b, series, &cid, pod, i)?,
        Series::Static | Series::Api | Series::Daemon | Series::StubStatic => {
            through_multihome(b, s, series, &cid, pod, i)?
        }
    };
    if !links(pod).is_empty() {
        return Err(format!(
            "{}: pod {i} still has {:?} after DEL",
            series.label(),
            links(pod)
        ));
    }
    let mut st = s.lock().unwrap();
    st.add.entry(series).or_default().push(add);
    st.del.entry(series).or_default().push(del);
    Ok(())
}

/// After ADD: real delegates made all three interfaces; stubs make none.
fn check_links(pod: &Netns, series: Series) -> Result<(), String> {
    let got = links(pod);
    let expected: &[&str] = if series.stubs() { &[] } else { &EXPECTED };
    if got != expected {
        return Err(format!(
            "{}: pod {} has {got:?}, expected {expected:?}",
            series.label(),
            pod.name
        ));
    }
    Ok(())
}

fn stats(v: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let pick = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    (pick(0.5), pick(0.95), ms[ms.len() - 1])
}

/// The peak RSS of multihome itself, in a process of its own whose only children are multihome
/// and `/bin/sh` stub delegates (getrusage of children counts the largest process of the whole
/// subtree, so the Go delegates must not be in it).
fn rss_probe(pod_path: &str, kubeconfig: &str, dir: &str) -> ExitCode {
    let stub_dir = write_stub(Path::new(dir));
    let mut conf = json!({"cniVersion": "1.0.0", "name": "multihome", "binDir": stub_dir, "cniDir": Path::new(dir).join("probe-cache"),
                          "delegates": [stub_net("a"), stub_net("b"), stub_net("c")]});
    if !kubeconfig.is_empty() {
        conf["kubeconfig"] = json!(kubeconfig);
        conf["delegates"] = json!([stub_net("a")]);
    }
    let env = |cmd: &str| {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "rss-probe".to_string()),
            ("CNI_NETNS", pod_path.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME=probe;K8S_POD_UID=uid-probe"
                ),
            ),
            ("CNI_PATH", stub_dir.display().to_string()),
        ]
    };
    let stdin = conf.to_string();
    for cmd in ["ADD", "DEL"] {
        if let Err(e) = invoke(BIN, &env(cmd), stdin.as_bytes()) {
            eprintln!("rss probe: {e}");
            return ExitCode::FAILURE;
        }
    }
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    println!("{}", usage.max_rss());
    ExitCode::SUCCESS
}

/// `multihome daemon` for `node` beside the stand-in, ready.
fn start_daemon(b: &Bench, node: &str) -> std::process::Child {
    let child = Command::new(BIN)
        .args([
            "daemon",
            "--node-name",
            node,
            "--log-level",
            "error",
            // The benchmark measures the socket; hot-plug would read the machine's config.
            "--hotplug=false",
            "--socket",
        ])
        .arg(&b.socket)
        .arg("--kubeconfig")
        .arg(&b.kubeconfig)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the daemon");
    let ready = || -> Option<bool> {
        let mut s = std::os::unix::net::UnixStream::connect(&b.socket).ok()?;
        s.write_all(b"{\"protocol\":1}\n").ok()?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).ok()?;
        Some(line.contains("\"ready\":true"))
    };
    let start = std::time::Instant::now();
    while ready() != Some(true) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon never got ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// SIGTERM, and the exit awaited.
fn stop(child: &mut std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
    let _ = child.wait();
}

/// "VmRSS, peak VmHWM" of a process.
fn rss_of(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    format!("{} (peak {})", field("VmRSS:"), field("VmHWM:"))
}

fn peak_rss_kib(pod: &Netns, kubeconfig: &str, dir: &Path) -> Result<u64, String> {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--rss-probe",
            &pod.path(),
            kubeconfig,
            &dir.display().to_string(),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("rss probe: {}", String::from_utf8_lossy(&out.stderr)))
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--rss-probe") {
        return rss_probe(&argv[2], &argv[3], &argv[4]);
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    let tag = format!("mhb{}", std::process::id());
    let dir = std::env::temp_dir().join(&tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let host = Netns::create(format!("{tag}-h"));
    // From here on the main thread, every thread it starts and every child run in the bench's
    // host namespace.
    let f = std::fs::File::open(host.path()).unwrap();
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    sh(&[
        "ip", "link", "add", "mvm0", "type", "veth", "peer", "name", "mvm0p",
    ]);
    sh(&["ip", "link", "set", "mvm0", "up"]);
    sh(&["ip", "link", "set", "mvm0p", "up"]);

    let api = ApiServer::start_with(&host.name, apiserver::ServerCert::SignedByCa);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: b\nclusters:\n- name: b\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    token: {}\ncontexts:\n- name: b\n  context: {{cluster: b, user: u}}\n",
            api.url(),
            b64(&api.creds.ca_pem),
            api.creds.token
        ),
    )
    .unwrap();
    let mut bench = Bench {
        dir: dir.clone(),
        api,
        kubeconfig,
        stub_dir: write_stub(&dir),
        uids: Vec::new(),
        cluster: Value::Null,
        macvlan: Value::Null,
        bridge: Value::Null,
        socket: dir.join("daemon/daemon.sock"),
    };
    bench.cluster = json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [
        {"type": "bridge", "bridge": "mhbr0", "isGateway": true, "ipam": bench.ipam("198.18.0.0/20", true)}]});
    bench.macvlan = json!({"cniVersion": "1.0.0", "name": "macvlan-net", "type": "macvlan", "master": "mvm0",
                           "mode": "bridge", "ipam": bench.ipam("198.18.64.0/20", false)});
    bench.bridge = json!({"cniVersion": "1.0.0", "name": "bridge-net", "type": "bridge", "bridge": "mhbr1",
                          "ipam": bench.ipam("198.19.0.0/20", false)});
    bench
        .api
        .add_nad(NS, "macvlan-net", Some(&bench.macvlan), json!({}));
    bench
        .api
        .add_nad(NS, "bridge-net", Some(&bench.bridge), json!({}));
    let pods_total = args.pods.max(args.burst);
    bench.uids = (0..pods_total)
        .map(|i| {
            bench.api.add_pod(
                NS,
                &format!("pod-{i}"),
                json!({"k8s.v1.cni.cncf.io/networks": "macvlan-net@net1, bridge-net"}),
            )
        })
        .collect();
    let samples = Mutex::new(Samples::default());

    println!(
        "multihome benchmark: {} pods, real plugins from {PLUGINS} (bridge cluster network + macvlan-net@net1, bridge-net)",
        args.pods
    );
    let order = [
        Series::Floor,
        Series::Static,
        Series::Api,
        Series::Daemon,
        Series::StubFloor,
        Series::StubStatic,
    ];
    let pods: Vec<Netns> = (0..pods_total)
        .map(|i| Netns::create(format!("{tag}-p{i}")))
        .collect();
    // Warm the page cache and the plugins once, outside the figures.
    if let Err(e) = run_series(
        &bench,
        &Mutex::new(Samples::default()),
        Series::Static,
        &pods[0],
        0,
    ) {
        eprintln!("bench: warm-up failed: {e}");
        return ExitCode::FAILURE;
    }
    let mut daemon = start_daemon(&bench, "node-1");
    for i in 0..args.pods {
        for k in 0..order.len() {
            let series = order[(i + k) % order.len()];
            if let Err(e) = run_series(&bench, &samples, series, &pods[i], i) {
                samples.lock().unwrap().failures.push(e);
            }
        }
        if let Err(e) = run_series(&bench, &samples, Series::Version, &pods[i], i) {
            samples.lock().unwrap().failures.push(e);
        }
    }
    let s = samples.into_inner().unwrap();

    println!();
    println!(
        "{:<30} {:>9} {:>9} {:>9}   {:>9} {:>9} {:>9}",
        "series (ms)", "ADD med", "p95", "max", "DEL med", "p95", "max"
    );
    for series in [
        Series::Floor,
        Series::Static,
        Series::Api,
        Series::Daemon,
        Series::Version,
        Series::StubFloor,
        Series::StubStatic,
    ] {
        let (am, ap, ax) = stats(s.add.get(&series).map(Vec::as_slice).unwrap_or_default());
        let del = s.del.get(&series).map(Vec::as_slice).unwrap_or_default();
        if del.is_empty() {
            println!("{:<30} {am:>9.2} {ap:>9.2} {ax:>9.2}", series.label());
        } else {
            let (dm, dp, dx) = stats(del);
            println!(
                "{:<30} {am:>9.2} {ap:>9.2} {ax:>9.2}   {dm:>9.2} {dp:>9.2} {dx:>9.2}",
                series.label()
            );
        }
    }
    let med = |m: &BTreeMap<Series, Vec<Duration>>, series| {
        stats(m.get(&series).map(Vec::as_slice).unwrap_or_default()).0
    };
    let floor = (med(&s.add, Series::Floor), med(&s.del, Series::Floor));
    println!();
    for series in [Series::Static, Series::Api, Series::Daemon] {
        println!(
            "overhead over the delegates, {:<27} ADD {:+.2} ms, DEL {:+.2} ms (medians)",
            series.label(),
            med(&s.add, series) - floor.0,
            med(&s.del, series) - floor.1
        );
    }
    println!(
        "multihome's own cost (stub delegates, low noise): ADD {:+.2} ms, DEL {:+.2} ms (medians)",
        med(&s.add, Series::StubStatic) - med(&s.add, Series::StubFloor),
        med(&s.del, Series::StubStatic) - med(&s.del, Series::StubFloor)
    );
    for series in [Series::Api, Series::Daemon] {
        let adds = s.api_adds.get(&series).copied().unwrap_or_default().max(1) as f64;
        let per = |m: &BTreeMap<(Series, String), usize>| {
            let parts: Vec<(String, usize)> = m
                .iter()
                .filter(|((of, _), _)| *of == series)
                .map(|((_, k), v)| (k.clone(), *v))
                .collect();
            let total: usize = parts.iter().map(|(_, v)| v).sum();
            let parts: Vec<String> = parts
                .iter()
                .map(|(k, v)| format!("{k}: {:.2}", *v as f64 / adds))
                .collect();
            format!(
                "{:.2} ({})",
                total as f64 / adds,
                if parts.is_empty() {
                    "none".into()
                } else {
                    parts.join(", ")
                }
            )
        };
        if series == Series::Daemon {
            println!(
                "{}: (the daemon posts the events after ADD returned: some land in the DEL's count)",
                series.label()
            );
        } else {
            println!("{}:", series.label());
        }
        println!("  API requests per ADD: {}", per(&s.requests_add));
        println!("  API requests per DEL: {}", per(&s.requests_del));
        println!(
            "  TLS handshakes per ADD: {:.2}",
            s.handshakes.get(&series).copied().unwrap_or_default() as f64 / adds
        );
    }

    let mut failures = s.failures;
    println!(
        "daemon RSS after the runs ({} local pods, 2 NADs): {}",
        pods_total,
        rss_of(daemon.id())
    );
    stop(&mut daemon);
    // The daemon's memory is its node's: 110 pods here, 10 000 on other nodes, 200 NADs.
    for i in pods_total..110 {
        bench.api.add_pod(
            NS,
            &format!("pod-{i}"),
            json!({"k8s.v1.cni.cncf.io/networks": "macvlan-net@net1, bridge-net"}),
        );
    }
    for i in 0..10_000 {
        bench.api.add_pod_on(
            NS,
            &format!("elsewhere-{i}"),
            json!({"k8s.v1.cni.cncf.io/networks": "macvlan-net@net1, bridge-net"}),
            &format!("node-{}", 2 + i % 100),
        );
    }
    for i in 0..198 {
        bench
            .api
            .add_nad(NS, &format!("nad-{i}"), Some(&bench.bridge), json!({}));
    }
    let mut big = start_daemon(&bench, "node-1");
    println!(
        "daemon RSS with 110 pods on its node, 10 000 on 100 others, 200 NADs: {}",
        rss_of(big.id())
    );
    stop(&mut big);
    let rss_pod = Netns::create(format!("{tag}-rss"));
    match (
        peak_rss_kib(&rss_pod, "", &dir),
        peak_rss_kib(&rss_pod, &bench.kubeconfig.display().to_string(), &dir),
    ) {
        (Ok(st), Ok(api)) => println!(
            "peak RSS of multihome (ADD+DEL, stub delegates): static {:.1} MiB, with the API {:.1} MiB",
            st as f64 / 1024.0,
            api as f64 / 1024.0
        ),
        (a, b) => failures.push(format!("rss probe: {a:?} {b:?}")),
    }
    println!(
        "binary: {} bytes ({BIN})",
        std::fs::metadata(BIN).map(|m| m.len()).unwrap_or(0)
    );

    // Burst: all pods added by parallel workers, checked, then all deleted.
    let conf = bench.api_conf(false).to_string();
    let next = Mutex::new(0usize);
    let errors = Mutex::new(Vec::new());
    let phase = |command: &str| {
        *next.lock().unwrap() = 0;
        let start = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..args.workers {
                scope.spawn(|| {
                    loop {
                        let i = {
                            let mut n = next.lock().unwrap();
                            if *n >= args.burst {
                                break;
                            }
                            *n += 1;
                            *n - 1
                        };
                        let env = bench.env(command, &format!("burst-{i}"), &pods[i], "eth0", i);
                        if let Err(e) = invoke(BIN, &env, conf.as_bytes()) {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("burst {command} pod {i}: {e}"));
                        }
                    }
                });
            }
        });
        start.elapsed()
    };
    let add_time = phase("ADD");
    let missing = pods[..args.burst]
        .iter()
        .filter(|p| links(p) != EXPECTED)
        .count();
    let del_time = phase("DEL");
    let left = pods[..args.burst]
        .iter()
        .filter(|p| !links(p).is_empty())
        .count();
    let (leaked, (cached, cached_bytes)) = (ips_held(&dir), cache_usage(&dir));
    println!(
        "burst: {} pods, {} workers: ADD {:.1} pods/s, DEL {:.1} pods/s; pods missing interfaces: {missing}; pods with leftovers: {left}; IPs leaked: {leaked}",
        args.burst,
        args.workers,
        args.burst as f64 / add_time.as_secs_f64(),
        args.burst as f64 / del_time.as_secs_f64()
    );
    println!(
        "cniDir after {} ADD/DEL cycles: {cached} files, {cached_bytes} bytes; {} tombstones",
        args.burst,
        tombstones(&dir)
    );
    failures.extend(errors.into_inner().unwrap());
    if missing + left + leaked + cached > 0 {
        failures.push("burst check failed".into());
    }

    // The runtime's second DEL of every pod (containerd, at sandbox removal, without a netns).
    bench.api.take_requests();
    let mut repeated = Vec::new();
    for (i, pod) in pods[..args.burst].iter().enumerate() {
        let mut env = bench.env("DEL", &format!("burst-{i}"), pod, "eth0", i);
        env.retain(|(k, _)| *k != "CNI_NETNS");
        match invoke(BIN, &env, conf.as_bytes()) {
            Ok((took, _)) => repeated.push(took),
            Err(e) => failures.push(format!("repeated DEL pod {i}: {e}")),
        }
    }
    let repeated_requests = bench.api.take_requests().len();
    println!(
        "repeated DEL (no netns, a tombstone): median {:.2} ms, API requests {repeated_requests}, files left {}",
        stats(&repeated).0,
        cache_usage(&dir).0
    );
    if repeated_requests > 0 {
        failures.push("a repeated DEL asked the API".into());
    }

    del_cases(&bench, &pods[..args.pods], &mut failures);

    // N ADDs whose DEL never comes (node crash, kubelet state wiped), then the runtime's GC.
    let gc_conf = {
        let mut c = bench.api_conf(false);
        c["cniVersion"] = json!("1.1.0");
        c
    };
    let gc_text = gc_conf.to_string();
    for (i, pod) in pods[..args.burst].iter().enumerate() {
        let env = bench.env("ADD", &format!("lost-{i}"), pod, "eth0", i);
        if let Err(e) = invoke(BIN, &env, gc_text.as_bytes()) {
            failures.push(format!("ADD before GC pod {i}: {e}"));
        }
    }
    let (before, before_bytes) = cache_usage(&dir);
    let mut gc_stdin = gc_conf.clone();
    gc_stdin["cni.dev/valid-attachments"] = json!([]);
    let network_wide: Vec<(&str, String)> =
        vec![("CNI_COMMAND", "GC".into()), ("CNI_PATH", PLUGINS.into())];
    match invoke(BIN, &network_wide, gc_stdin.to_string().as_bytes()) {
        Ok((took, _)) => {
            let (after, after_bytes) = cache_usage(&dir);
            let (leaked, left) = (
                ips_held(&dir),
                pods[..args.burst]
                    .iter()
                    .filter(|p| !links(p).is_empty())
                    .count(),
            );
            println!(
                "GC after {} ADDs without DEL: {:.1} ms; cniDir {before} files / {before_bytes} bytes before, {after} / {after_bytes} after; IPs leaked: {leaked}; pods with leftovers: {left}",
                args.burst,
                took.as_secs_f64() * 1000.0
            );
            if after + leaked + left > 0 {
                failures.push("GC left state behind".into());
            }
        }
        Err(e) => failures.push(format!("GC: {e}")),
    }

    // STATUS, as containerd 2.x calls it on every 1.1.0 config.
    let ready = dir.join("ready");
    std::fs::write(&ready, b"").unwrap();
    let mut status_conf = gc_conf.clone();
    let mut medians = Vec::new();
    for indicator in [None, Some(&ready)] {
        if let Some(file) = indicator {
            status_conf["readinessindicatorfile"] = json!(file);
        }
        let env: Vec<(&str, String)> = vec![
            ("CNI_COMMAND", "STATUS".into()),
            ("CNI_PATH", PLUGINS.into()),
        ];
        let mut took = Vec::new();
        for _ in 0..20 {
            match invoke(BIN, &env, status_conf.to_string().as_bytes()) {
                Ok((t, _)) => took.push(t),
                Err(e) => failures.push(format!("STATUS: {e}")),
            }
        }
        medians.push(stats(&took).0);
    }
    println!(
        "STATUS median: {:.2} ms without a readiness file, {:.2} ms with one",
        medians[0], medians[1]
    );
    drop(pods);
    let _ = std::fs::remove_dir_all(&dir);
    if failures.is_empty() {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        ExitCode::FAILURE
    }
}
