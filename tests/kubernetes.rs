//! Kubernetes mode end to end: the API stand-in in the test's host namespace, real plugins,
//! pods whose annotations ask for networks.

use std::path::PathBuf;

use base64::Engine;
use serde_json::{Value, json};

use crate::apiserver::{ApiServer, Fault, ServerCert};
use crate::harness::{Run, World, write_json};

pub const NS: &str = "pods";
const STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

pub enum Auth {
    Token,
    ClientCert,
    WrongToken,
    ForbiddenToken,
}

pub struct Kube {
    pub w: World,
    pub api: ApiServer,
}

impl Kube {
    pub fn new(tag: &str) -> Kube {
        Self::with_cert(tag, ServerCert::SignedByCa)
    }

    pub fn with_cert(tag: &str, cert: ServerCert) -> Kube {
        let w = World::new(tag);
        let api = ApiServer::start_with(&w.host.name, cert);
        w.veth_master("mvm0");
        let k = Kube { w, api };
        k.api.add_nad(
            NS,
            "macvlan-net",
            Some(&k.w.macvlan_net("1.0.0", "mvm0")),
            json!({}),
        );
        k.api
            .add_nad(NS, "ptp-net", Some(&k.w.ptp_net("1.0.0")), json!({}));
        k
    }

    pub fn kubeconfig(&self, auth: Auth) -> PathBuf {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let c = &self.api.creds;
        let user = match auth {
            Auth::Token => format!("token: {}", c.token),
            Auth::WrongToken => "token: expired-token".to_string(),
            Auth::ForbiddenToken => format!("token: {}", c.forbidden_token),
            Auth::ClientCert => format!(
                "client-certificate-data: {}\n    client-key-data: {}",
                b64(&c.client_cert_pem),
                b64(&c.client_key_pem)
            ),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: multihome\n  user:\n    {user}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: multihome\n",
            self.api.url(),
            b64(&c.ca_pem)
        );
        let path = self.w.dir.join(format!("kubeconfig-{}", rand_suffix()));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// multihome's config: the cluster network inline, Kubernetes through a token kubeconfig.
    pub fn conf(&self) -> Value {
        let mut conf = self.w.conf("1.0.0", vec![self.w.cluster_net("1.0.0")]);
        conf["kubeconfig"] = json!(self.kubeconfig(Auth::Token));
        conf
    }

    pub fn pod(&self, name: &str, annotations: Value) -> String {
        self.api.add_pod(NS, name, annotations)
    }

    pub fn run(&self, command: &str, conf: &Value, pod: &str, uid: &str) -> Run {
        self.w
            .run_with(command, conf, &[("CNI_ARGS", &self.args(pod, uid))])
    }

    /// Starts multihome for `pod` without waiting for it.
    pub fn spawn(&self, command: &str, conf: &Value, pod: &str, uid: &str) -> std::process::Child {
        self.w
            .spawn_with(command, conf, &[("CNI_ARGS", &self.args(pod, uid))])
    }

    fn args(&self, pod: &str, uid: &str) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={uid}",
            self.w.container_id
        )
    }

    pub fn status(&self, pod: &str) -> Value {
        let p = self.api.pod(NS, pod);
        let text = p["metadata"]["annotations"][STATUS]
            .as_str()
            .expect("network-status written");
        serde_json::from_str(text).unwrap()
    }

    pub fn assert_clean(&self) {
        assert_eq!(
            self.w.pod.links(),
            Vec::<String>::new(),
            "pod interfaces left behind"
        );
        assert_eq!(
            self.w.all_reserved_ips(),
            vec![],
            "host-local still holds IPs"
        );
        assert!(!self.w.cache_file().exists(), "cache entry left behind");
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

pub fn ip_of(w: &World, ifname: &str) -> String {
    let a = w.pod.addrs_of(ifname);
    assert_eq!(a.len(), 1, "{ifname}: {a:?}");
    a[0].split('/').next().unwrap().to_string()
}

pub fn mac_of(w: &World, ifname: &str) -> String {
    let out = crate::harness::sh(&["ip", "-n", &w.pod.name, "-j", "link", "show", ifname]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["address"].as_str().unwrap().to_string()
}

#[test]
fn short_form_with_iface_attaches_writes_status_and_counts_requests() {
    let k = Kube::new("k8short");
    let uid = k.pod(
        "web",
        json!({"k8s.v1.cni.cncf.io/networks": "macvlan-net@storage0, ptp-net", "keep": "me"}),
    );
    let conf = k.conf();
    let out = k.run("ADD", &conf, "web", &uid).success().stdout;
    assert_eq!(out["cniVersion"], "1.0.0");
    assert_eq!(
        k.w.pod.links(),
        ["eth0", "net2", "storage0"],
        "index counts over the whole list"
    );

    let status = k.status("web");
    let entries = status.as_array().unwrap();
    assert_eq!(entries.len(), 3);
    let e0 = &entries[0];
    assert_eq!(e0["name"], "cluster");
    assert_eq!(e0["interface"], "eth0");
    assert_eq!(e0["default"], true);
    assert_eq!(e0["ips"], json!([ip_of(&k.w, "eth0")]));
    assert_eq!(e0["mac"], mac_of(&k.w, "eth0"));
    assert_eq!(e0["gateway"], json!(["198.18.0.1"]));
    assert_eq!(e0["dns"], json!({}));
    let e1 = &entries[1];
    assert_eq!(
        (e1["name"].as_str(), e1["interface"].as_str()),
        (Some("pods/macvlan-net"), Some("storage0"))
    );
    assert_eq!(e1["default"], false);
    assert_eq!(e1["ips"], json!([ip_of(&k.w, "storage0")]));
    assert_eq!(e1["mac"], mac_of(&k.w, "storage0"));
    assert!(e1.get("gateway").is_none());
    let e2 = &entries[2];
    assert_eq!(
        (e2["name"].as_str(), e2["interface"].as_str()),
        (Some("pods/ptp-net"), Some("net2"))
    );
    assert_eq!(e2["ips"], json!([ip_of(&k.w, "net2")]));
    assert_eq!(
        k.api.pod(NS, "web")["metadata"]["annotations"]["keep"],
        "me",
        "the merge patch kept other annotations"
    );

    let requests = k.api.take_requests();
    assert_eq!(
        requests[..4],
        [
            "GET /api/v1/namespaces/pods/pods/web".to_string(),
            "GET /apis/k8s.cni.cncf.io/v1/namespaces/pods/network-attachment-definitions/macvlan-net".to_string(),
            "GET /apis/k8s.cni.cncf.io/v1/namespaces/pods/network-attachment-definitions/ptp-net".to_string(),
            "PATCH /api/v1/namespaces/pods/pods/web/status".to_string(),
        ]
    );
    assert_eq!(
        requests[4..],
        vec!["POST /api/v1/namespaces/pods/events".to_string(); 3],
        "{requests:?}"
    );
    assert_eq!(
        k.api.take_connections(),
        1,
        "one TLS connection per invocation"
    );
    let events = k.api.events();
    assert_eq!(events[1]["reason"], "AddedInterface");
    assert!(
        events[1]["message"]
            .as_str()
            .unwrap()
            .starts_with("Add storage0 [198.18.1."),
        "{}",
        events[1]["message"]
    );

    k.w.run("CHECK", &conf).success();
    k.run("DEL", &conf, "web", &uid).success();
    assert_eq!(
        k.api.take_requests(),
        Vec::<String>::new(),
        "DEL from the cache makes no API request"
    );
    k.assert_clean();
    // containerd's second DEL, at sandbox removal, without a netns: nothing recorded, nothing
    // asked.
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME=web;K8S_POD_UID={uid}");
    k.w.run_with("DEL", &conf, &[("CNI_NETNS", ""), ("CNI_ARGS", &args)])
        .success();
    assert_eq!(k.api.take_requests(), Vec::<String>::new());
    assert_eq!(k.w.cache_files(), Vec::<String>::new());
}

#[test]
fn a_self_signed_server_certificate_given_as_the_ca_is_trusted_as_kubectl_does() {
    let k = Kube::with_cert("k8selfsigned", ServerCert::SelfSignedCa);
    let conf = k.conf();
    let uid = k.pod("p", json!({"k8s.v1.cni.cncf.io/networks": "ptp-net"}));
    k.run("ADD", &conf, "p", &uid).success();
    assert_eq!(k.w.pod.links(), ["eth0", "net1"]);
    k.run("DEL", &conf, "p", &uid).success();
    k.assert_clean();
    // Another server's self-signed certificate is no CA for this one.
    let other = Kube::with_cert("k8otherself", ServerCert::SelfSignedCa);
    let mut wrong = conf.clone();
    wrong["kubeconfig"] = json!(other.kubeconfig(Auth::Token));
    let text = std::fs::read_to_string(wrong["kubeconfig"].as_str().unwrap())
        .unwrap()
        .replace(&other.api.url(), &k.api.url());
    std::fs::write(wrong["kubeconfig"].as_str().unwrap(), text).unwrap();
    let err = k.run("ADD", &wrong, "p", &uid).failure();
    assert!(
        err["msg"].as_str().unwrap().contains("certificate"),
        "{err}"
    );
    k.assert_clean();
}

#[test]
fn json_form_interface_request_namespaces_and_repeated_networks() {
    let k = Kube::new("k8json");
    k.api
        .add_nad("shared", "ptp-net", Some(&k.w.ptp_net("1.0.0")), json!({}));
    let annotation = json!([
        {"name": "macvlan-net", "interfaceRequest": "legacy0"},
        {"name": "ptp-net", "namespace": "shared", "interface": "p2p0"},
        {"name": "macvlan-net", "unknown-key": true}
    ]);
    let uid = k.pod(
        "db",
        json!({"k8s.v1.cni.cncf.io/networks": annotation.to_string()}),
    );
    let conf = k.conf();
    k.run("ADD", &conf, "db", &uid).success();
    assert_eq!(k.w.pod.links(), ["eth0", "legacy0", "net3", "p2p0"]);
    let names: Vec<String> = k
        .status("db")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "cluster",
            "pods/macvlan-net",
            "shared/ptp-net",
            "pods/macvlan-net"
        ]
    );
    let nad_gets = k
        .api
        .take_requests()
        .iter()
        .filter(|r| r.contains("network-attachment-definitions"))
        .count();
    assert_eq!(nad_gets, 2, "one GET per distinct NAD");
    k.run("DEL", &conf, "db", &uid).success();
    k.assert_clean();
}

#[test]
fn namespace_isolation_allows_own_and_global_namespaces_and_denies_others() {
    let k = Kube::new("k8iso");
    k.api
        .add_nad("default", "ptp-net", Some(&k.w.ptp_net("1.0.0")), json!({}));
    k.api
        .add_nad("other", "ptp-net", Some(&k.w.ptp_net("1.0.0")), json!({}));
    let mut conf = k.conf();
    conf["namespaceIsolation"] = json!(true);

    let uid = k.pod(
        "ok",
        json!({"k8s.v1.cni.cncf.io/networks": "macvlan-net,default/ptp-net"}),
    );
    k.run("ADD", &conf, "ok", &uid).success();
    assert_eq!(k.w.pod.links(), ["eth0", "net1", "net2"]);
    k.run("DEL", &conf, "ok", &uid).success();
    k.assert_clean();

    for annotation in [
        "other/ptp-net".to_string(),
        json!([{"name": "ptp-net", "namespace": "other"}]).to_string(),
    ] {
        let uid = k.pod("denied", json!({"k8s.v1.cni.cncf.io/networks": annotation}));
        let err = k.run("ADD", &conf, "denied", &uid).failure();
        let msg = err["msg"].as_str().unwrap();
        assert!(
            msg.contains("namespaceIsolation") && msg.contains("other/ptp-net"),
            "{annotation}: {msg}"
        );
        assert_eq!(err["code"], 7);
        k.assert_clean();
    }
}

#[test]
fn cluster_network_from_a_nad_and_the_default_network_override() {
    let k = Kube::new("k8cluster");
    k.api.add_nad(
        "kube-system",
        "cluster-nad",
        Some(&k.w.cluster_net("1.0.0")),
        json!({}),
    );
    let mut alt = k.w.ptp_net("1.0.0");
    alt["name"] = json!("alt-cluster");
    alt["ipam"]["subnet"] = json!("198.18.7.0/24");
    k.api
        .add_nad("kube-system", "alt-cluster", Some(&alt), json!({}));
    let mut conf = k.conf();
    conf.as_object_mut().unwrap().remove("delegates");
    conf["clusterNetwork"] = json!("cluster-nad");

    let uid = k.pod("a", json!({"k8s.v1.cni.cncf.io/networks": "ptp-net"}));
    k.run("ADD", &conf, "a", &uid).success();
    assert!(ip_of(&k.w, "eth0").starts_with("198.18.0."));
    assert_eq!(k.status("a")[0]["name"], "kube-system/cluster-nad");
    k.run("DEL", &conf, "a", &uid).success();
    k.assert_clean();

    let uid = k.pod("b", json!({"v1.multus-cni.io/default-network": "alt-cluster", "k8s.v1.cni.cncf.io/networks": "macvlan-net"}));
    k.run("ADD", &conf, "b", &uid).success();
    assert!(
        ip_of(&k.w, "eth0").starts_with("198.18.7."),
        "the annotation replaced the cluster network"
    );
    let status = k.status("b");
    assert_eq!(
        (status[0]["name"].as_str(), status[0]["default"].as_bool()),
        (Some("kube-system/alt-cluster"), Some(true))
    );
    assert_eq!(status[1]["interface"], "net1");
    k.run("DEL", &conf, "b", &uid).success();
    k.assert_clean();
}

#[test]
fn empty_nad_config_falls_back_to_the_conf_dir_file_of_that_name() {
    let k = Kube::new("k8empty");
    let conf_dir = k.w.dir.join("net.d");
    let mut file_net = k.w.ptp_net("1.0.0");
    file_net["name"] = json!("from-file");
    write_json(&conf_dir.join("30-from-file.conf"), &file_net);
    k.api.add_nad(NS, "from-file", None, json!({}));
    let mut conf = k.conf();
    conf["confDir"] = json!(conf_dir);
    let uid = k.pod("f", json!({"k8s.v1.cni.cncf.io/networks": "from-file"}));
    k.run("ADD", &conf, "f", &uid).success();
    assert!(ip_of(&k.w, "net1").starts_with("198.18.2."));
    k.run("DEL", &conf, "f", &uid).success();
    k.assert_clean();
}

#[test]
fn static_ip_and_mac_through_ips_and_mac_with_static_ipam_and_tuning() {
    let k = Kube::new("k8static");
    let nad = json!({"cniVersion": "1.0.0", "name": "static-net", "plugins": [
        {"type": "macvlan", "master": "mvm0", "mode": "bridge", "capabilities": {"ips": true},
         "ipam": {"type": "static"}},
        {"type": "tuning", "capabilities": {"mac": true}}
    ]});
    k.api.add_nad(NS, "static-net", Some(&nad), json!({}));
    let annotation = json!([{"name": "static-net", "ips": ["198.18.3.10/24"], "mac": "02:11:22:33:44:55",
                             "cni-args": {"note": "from-annotation"}}]);
    let uid = k.pod(
        "s",
        json!({"k8s.v1.cni.cncf.io/networks": annotation.to_string()}),
    );
    let conf = k.conf();
    k.run("ADD", &conf, "s", &uid).success();
    assert_eq!(k.w.pod.addrs_of("net1"), ["198.18.3.10/24"]);
    assert_eq!(mac_of(&k.w, "net1"), "02:11:22:33:44:55");
    let status = k.status("s");
    assert_eq!(
        (status[1]["ips"].clone(), status[1]["mac"].clone()),
        (json!(["198.18.3.10"]), json!("02:11:22:33:44:55"))
    );
    let cache: Value = serde_json::from_slice(&std::fs::read(k.w.cache_file()).unwrap()).unwrap();
    let att = &cache["attachments"][1];
    assert_eq!(
        att["network"]["plugins"][0]["args"]["cni"]["note"], "from-annotation",
        "cni-args reached the delegate config"
    );
    assert!(
        att["cniArgs"].to_string().contains("198.18.3.10/24"),
        "IP= is passed too: {}",
        att["cniArgs"]
    );
    k.run("DEL", &conf, "s", &uid).success();
    k.assert_clean();

    // A request the network cannot honour is refused before anything runs.
    let uid = k.pod("nocap", json!({"k8s.v1.cni.cncf.io/networks": json!([{"name": "ptp-net", "mac": "02:00:00:00:00:09"}]).to_string()}));
    let err = k.run("ADD", &conf, "nocap", &uid).failure();
    assert!(
        err["msg"].as_str().unwrap().contains("\"mac\" capability"),
        "{err}"
    );
    k.assert_clean();
}

#[test]
fn uid_mismatch_is_refused_except_for_static_pods() {
    let k = Kube::new("k8uid");
    let conf = k.conf();
    k.pod(
        "recreated",
        json!({"k8s.v1.cni.cncf.io/networks": "ptp-net"}),
    );
    let err = k
        .run("ADD", &conf, "recreated", "uid-of-the-old-pod")
        .failure();
    assert_eq!(err["code"], 3);
    assert!(
        err["msg"].as_str().unwrap().contains("uid-of-the-old-pod"),
        "{err}"
    );
    k.assert_clean();

    k.pod(
        "static-web",
        json!({"kubernetes.io/config.source": "file", "kubernetes.io/config.mirror": "abc",
                               "k8s.v1.cni.cncf.io/networks": "ptp-net"}),
    );
    k.run("ADD", &conf, "static-web", "kubelet-local-uid")
        .success();
    assert_eq!(k.w.pod.links(), ["eth0", "net1"]);
    k.run("DEL", &conf, "static-web", "kubelet-local-uid")
        .success();
    k.assert_clean();
}

#[test]
fn pod_not_found_attaches_the_cluster_network_only() {
    let k = Kube::new("k8nopod");
    let conf = k.conf();
    k.run("ADD", &conf, "mirror-not-yet", "u").success();
    assert_eq!(k.w.pod.links(), ["eth0"]);
    let requests = k.api.take_requests();
    assert_eq!(
        requests,
        ["GET /api/v1/namespaces/pods/pods/mirror-not-yet"],
        "no status write for a missing pod"
    );
    k.run("DEL", &conf, "mirror-not-yet", "u").success();
    k.assert_clean();
}

#[test]
fn del_works_from_the_cache_when_the_api_server_is_down() {
    let mut k = Kube::new("k8down");
    let uid = k.pod(
        "p",
        json!({"k8s.v1.cni.cncf.io/networks": "macvlan-net,ptp-net"}),
    );
    let conf = k.conf();
    k.run("ADD", &conf, "p", &uid).success();
    k.api.shutdown();
    k.run("DEL", &conf, "p", &uid).success();
    k.assert_clean();
    k.run("DEL", &conf, "p", &uid).success();
}

#[test]
fn authentication_failures_are_clear_and_client_certificates_work() {
    let k = Kube::new("k8auth");
    let uid = k.pod("p", json!({"k8s.v1.cni.cncf.io/networks": "ptp-net"}));
    let mut conf = k.conf();

    conf["kubeconfig"] = json!(k.kubeconfig(Auth::WrongToken));
    let err = k.run("ADD", &conf, "p", &uid).failure();
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("401") && msg.contains("Unauthorized") && msg.contains("pods/p"),
        "{msg}"
    );
    assert!(msg.contains("kubeconfig"), "says what to check: {msg}");
    k.assert_clean();

    conf["kubeconfig"] = json!(k.kubeconfig(Auth::ForbiddenToken));
    let err = k.run("ADD", &conf, "p", &uid).failure();
    assert!(err["msg"].as_str().unwrap().contains("403"), "{err}");
    k.assert_clean();

    conf["kubeconfig"] = json!(k.kubeconfig(Auth::ClientCert));
    k.run("ADD", &conf, "p", &uid).success();
    assert_eq!(k.w.pod.links(), ["eth0", "net1"]);
    k.run("DEL", &conf, "p", &uid).success();
    k.assert_clean();
}

#[test]
fn missing_nad_or_crd_fails_naming_it() {
    let k = Kube::new("k8missing");
    let conf = k.conf();
    let uid = k.pod(
        "p",
        json!({"k8s.v1.cni.cncf.io/networks": "ptp-net, nope-net"}),
    );
    let err = k.run("ADD", &conf, "p", &uid).failure();
    assert!(
        err["msg"].as_str().unwrap().contains("pods/nope-net"),
        "{err}"
    );
    assert_eq!(err["code"], 7, "a missing NAD: {err}");
    assert!(err["msg"].as_str().unwrap().contains("not found"), "{err}");
    k.assert_clean();
    // The CRD created but not Established yet, then not installed at all: the API serves no
    // such resource (a 404 that names no object); try again later, code 11.
    let uid = k.pod("q", json!({"k8s.v1.cni.cncf.io/networks": "ptp-net"}));
    for step in ["not established", "uninstalled"] {
        if step == "uninstalled" {
            k.api.uninstall_crd();
        } else {
            k.api.crd_not_established();
        }
        let err = k.run("ADD", &conf, "q", &uid).failure();
        assert_eq!(err["code"], 11, "{step}: {err}");
        let msg = err["msg"].as_str().unwrap();
        assert!(
            msg.contains("CRD")
                && msg.contains("pods/ptp-net")
                && !msg.contains("\"ptp-net\" not found"),
            "{step}: {msg}"
        );
        k.assert_clean();
    }
}

#[test]
fn malformed_annotation_fails_quoting_the_element() {
    let k = Kube::new("k8bad");
    let conf = k.conf();
    let uid = k.pod("p", json!({"k8s.v1.cni.cncf.io/networks": r#"[{"name":"ptp-net"},{"name":"macvlan-net","ips":"198.18.1.9"}]"#}));
    let err = k.run("ADD", &conf, "p", &uid).failure();
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("element 1") && msg.contains(r#""ips":"198.18.1.9""#),
        "{msg}"
    );
    assert_eq!(err["code"], 7);
    k.assert_clean();
}

#[test]
fn transient_api_errors_are_retried_within_the_budget() {
    let k = Kube::new("k8retry");
    let conf = k.conf();
    let uid = k.pod("p", json!({"k8s.v1.cni.cncf.io/networks": "ptp-net"}));
    k.api.inject(Fault {
        code: 500,
        retry_after: None,
        path_contains: "",
    });
    k.api.inject(Fault {
        code: 429,
        retry_after: Some(1),
        path_contains: "",
    });
    k.run("ADD", &conf, "p", &uid).success();
    let gets = k
        .api
        .take_requests()
        .iter()
        .filter(|r| r.ends_with("/pods/p"))
        .count();
    assert_eq!(gets, 3, "two failures, then the pod");
    k.run("DEL", &conf, "p", &uid).success();

    let mut one_try = conf.clone();
    one_try["apiAttempts"] = json!(1);
    k.api.inject(Fault {
        code: 500,
        retry_after: None,
        path_contains: "",
    });
    let err = k.run("ADD", &one_try, "p", &uid).failure();
    assert_eq!(
        err["code"], 11,
        "a server error is 'try again later': {err}"
    );
    k.assert_clean();
}

#[test]
fn resource_name_hands_out_checkpointed_devices() {
    let k = Kube::new("k8dev");
    let uid = k.pod("p", json!({"k8s.v1.cni.cncf.io/networks": "vf-a,vf-b"}));
    let mut vf = k.w.ptp_net("1.0.0");
    vf["capabilities"] = json!({"deviceID": true});
    for (name, subnet) in [("vf-a", "198.18.4.0/24"), ("vf-b", "198.18.5.0/24")] {
        let mut net = vf.clone();
        net["name"] = json!(name);
        net["ipam"]["subnet"] = json!(subnet);
        k.api.add_nad(
            NS,
            name,
            Some(&net),
            json!({"k8s.v1.cni.cncf.io/resourceName": "example.com/vf"}),
        );
    }
    let checkpoint = k.w.dir.join("kubelet_internal_checkpoint");
    let cp = json!({"Data": {"PodDeviceEntries": [
        {"PodUID": uid, "ContainerName": "app", "ResourceName": "example.com/vf",
         "DeviceIDs": {"0": ["0000:03:00.2", "0000:03:00.1"]}}], "RegisteredDevices": {}}, "Checksum": 0});
    write_json(&checkpoint, &cp);
    let devinfo = k.w.dir.join("devinfo");
    let info = json!({"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:03:00.1"}});
    write_json(
        &devinfo.join("dp/example.com-vf-0000:03:00.1-device.json"),
        &info,
    );
    let mut conf = k.conf();
    conf["kubeletCheckpointFile"] = json!(checkpoint);
    conf["deviceInfoDir"] = json!(devinfo);
    k.run("ADD", &conf, "p", &uid).success();
    let cache: Value = serde_json::from_slice(&std::fs::read(k.w.cache_file()).unwrap()).unwrap();
    for (i, id) in [(1, "0000:03:00.1"), (2, "0000:03:00.2")] {
        let att = &cache["attachments"][i];
        assert_eq!(att["network"]["plugins"][0]["deviceID"], id);
        assert_eq!(att["network"]["plugins"][0]["pciBusID"], id);
        assert_eq!(att["runtimeConfig"]["deviceID"], id);
    }
    let status = k.status("p");
    assert_eq!(
        status[1]["device-info"], info,
        "the device plugin's device-info is reported"
    );
    assert!(
        status[2].get("device-info").is_none(),
        "no file, no device-info"
    );
    k.run("DEL", &conf, "p", &uid).success();
    k.assert_clean();
}

#[test]
fn a_failing_event_never_fails_add() {
    let k = Kube::new("k8event");
    let conf = k.conf();
    let uid = k.pod("p", json!({"k8s.v1.cni.cncf.io/networks": "ptp-net"}));
    for _ in 0..10 {
        k.api.inject(Fault {
            code: 500,
            retry_after: None,
            path_contains: "/events",
        });
    }
    k.api.take_requests();
    k.run("ADD", &conf, "p", &uid).success();
    assert_eq!(k.w.pod.links(), ["eth0", "net1"]);
    assert_eq!(
        k.status("p").as_array().unwrap().len(),
        2,
        "network-status was still written"
    );
    let events = k
        .api
        .take_requests()
        .iter()
        .filter(|r| r.ends_with("/events"))
        .count();
    assert_eq!(events, 2, "one attempt per event, no retries");
    k.run("DEL", &conf, "p", &uid).success();
    k.assert_clean();
}

#[test]
fn nad_policy_keeps_tenants_off_the_nodes_interfaces() {
    let k = Kube::new("k8policy");
    k.w.veth_master("uplink0");
    let mut conf = k.conf();
    conf["nadPolicy"] = json!([
        {"namespaces": ["kube-system"]},
        {"namespaces": ["*"], "types": ["macvlan", "ptp", "host-local"], "master": ["mvm*"],
         "device": [], "hwaddr": [], "pciBusID": [], "kernelpath": []}
    ]);
    // Allowed: a macvlan on a master the rule names, and ptp.
    let uid = k.pod(
        "ok",
        json!({"k8s.v1.cni.cncf.io/networks": "macvlan-net, ptp-net"}),
    );
    k.run("ADD", &conf, "ok", &uid).success();
    assert_eq!(k.w.pod.links(), ["eth0", "net1", "net2"]);
    k.run("DEL", &conf, "ok", &uid).success();
    k.assert_clean();
    // The node's uplink, directly or as a master, or through an admin's confDir file that an
    // empty NAD names: denied before any delegate runs.
    let conf_dir = k.w.dir.join("confdir");
    crate::harness::write_json(
        &conf_dir.join("grab.conf"),
        &json!({"cniVersion": "1.0.0", "name": "grab", "type": "host-device", "device": "uplink0"}),
    );
    conf["confDir"] = json!(conf_dir);
    k.api.add_nad(NS, "grab", None, json!({}));
    k.api.add_nad(
        NS,
        "take-uplink",
        Some(&json!({"cniVersion": "1.0.0", "type": "host-device", "device": "uplink0"})),
        json!({}),
    );
    let mut on_uplink = k.w.macvlan_net("1.0.0", "uplink0");
    on_uplink["name"] = json!("mv-uplink");
    k.api.add_nad(NS, "mv-uplink", Some(&on_uplink), json!({}));
    for (nad, fragment) in [
        ("take-uplink", r#"plugin 0 type "host-device""#),
        ("mv-uplink", r#""master" "uplink0""#),
        ("grab", r#"plugin 0 type "host-device""#),
    ] {
        let uid = k.pod(
            nad,
            json!({"k8s.v1.cni.cncf.io/networks": format!("ptp-net, {nad}")}),
        );
        let err = k.run("ADD", &conf, nad, &uid).failure();
        let msg = err["msg"].as_str().unwrap();
        assert_eq!(err["code"], 7, "{msg}");
        assert!(
            msg.contains(&format!("{NS}/{nad}"))
                && msg.contains(fragment)
                && msg.contains("nadPolicy rule 1"),
            "{nad}: {msg}"
        );
        k.assert_clean();
        assert!(
            crate::harness::sh(&["ip", "-n", &k.w.host.name, "link", "show", "uplink0"])
                .contains("uplink0"),
            "the uplink stays on the node"
        );
    }
}

/// The record lost (a cniDir on a tmpfs a reboot emptied, a hand clean-up): DEL re-plans from
/// the pod's annotation and its NADs and releases every network; the runtime's next DEL is free
/// and asks the API nothing.
#[test]
fn a_del_whose_record_was_lost_releases_the_pods_nads_too() {
    let k = Kube::new("k8lost");
    let uid = k.pod(
        "p",
        json!({"k8s.v1.cni.cncf.io/networks": "macvlan-net,ptp-net"}),
    );
    let conf = k.conf();
    k.run("ADD", &conf, "p", &uid).success();
    assert_eq!(k.w.pod.links().len(), 3);
    assert_eq!(k.w.all_reserved_ips().len(), 3);
    std::fs::remove_file(k.w.cache_file()).unwrap();
    k.api.take_requests();

    k.run("DEL", &conf, "p", &uid).success();
    k.assert_clean();
    assert_eq!(k.w.cache_files(), Vec::<String>::new());
    let asked = k.api.take_requests();
    assert!(
        asked.iter().any(|r| r.contains("/pods/p")),
        "the pod's networks come from the API: {asked:?}"
    );

    k.run("DEL", &conf, "p", &uid).success();
    assert_eq!(k.api.take_requests(), Vec::<String>::new());
    assert_eq!(k.w.cache_files(), Vec::<String>::new());
}
