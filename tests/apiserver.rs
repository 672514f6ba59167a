//! A stand-in for kube-apiserver: a real HTTPS server (its own CA, TLS 1.2/1.3) that serves Pod
//! and NetworkAttachmentDefinition objects shaped as the real server returns them, and is as
//! strict as the real one where multihome could get it wrong:
//!
//! - authentication by bearer token or client certificate, 401 otherwise; tokens bound to a
//!   user without rights get 403;
//! - errors are `Status` objects with `reason` and `code`;
//! - every write bumps `resourceVersion`; a patch carrying a stale `resourceVersion` gets 409;
//! - PATCH takes `application/merge-patch+json` only (RFC 7386 semantics), 415 otherwise; the
//!   status subresource cannot change `spec`; annotation values must be strings;
//! - events need a name (or generateName) and a namespace matching the URL;
//! - the NAD CRD can be "uninstalled" or not yet Established (the plain-text 404 of an unknown
//!   path, unlike the `Status` 404 of a missing object, which names it).
//!
//! The e2e suite sends the same requests to it and to a real kube-apiserver and compares the
//! answers' codes and shapes (`tests/e2e`).
//!
//! Pods and NADs can be listed and watched (LIST with `limit`, WATCH as a chunked stream of
//! `ADDED`/`MODIFIED` events after a resourceVersion, as the daemon uses them); watches can be
//! broken, and a compaction makes a watch from before it answer 410 Gone.
//!
//! It runs on 127.0.0.1 inside a network namespace, records every request, counts TLS
//! connections, and can be told to fail the next requests (500, 429 with Retry-After) or to hold
//! them for a while.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// A forced reply for the next request.
#[derive(Clone, Debug)]
pub struct Fault {
    pub code: u16,
    pub retry_after: Option<u64>,
    /// Only requests whose path contains this are failed (all requests when empty).
    pub path_contains: &'static str,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<(String, String), Value>,
    nads: BTreeMap<(String, String), Value>,
    events: Vec<Value>,
    requests: Vec<(String, String)>,
    connections: usize,
    resource_version: u64,
    faults: VecDeque<Fault>,
    crd_missing: bool,
    crd_not_established: bool,
    /// Requests to hold before answering: (path fragment, milliseconds).
    delays: VecDeque<(&'static str, u64)>,
    /// Requests held so far.
    delayed: usize,
    /// The valid bearer token once rotated (the one in `Credentials` until then).
    token: Option<String>,
    /// Watches from a resourceVersion below this get 410 Gone (compacted).
    compacted_below: u64,
    /// Bumped to break every open watch.
    watch_generation: u64,
}

/// The PEM material a client needs.
pub struct Credentials {
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub token: String,
    pub forbidden_token: String,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    pub creds: Credentials,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// How the server's certificate is made.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ServerCert {
    /// A leaf signed by the test CA (what kubeadm makes).
    SignedByCa,
    /// One self-signed certificate with CA:TRUE used as the server's own (what `openssl req
    /// -x509` makes); clients are given exactly it as their CA.
    SelfSignedCa,
}

impl ApiServer {
    /// Starts the server on 127.0.0.1 of the network namespace `netns`, with the given kind of
    /// certificate.
    pub fn start_with(netns: &str, shape: ServerCert) -> ApiServer {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "multihome-test-ca");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let (server_cert, ca_pem) = match shape {
            ServerCert::SignedByCa => (
                server_params.signed_by(&server_key, &issuer).unwrap(),
                ca_pem,
            ),
            ServerCert::SelfSignedCa => {
                server_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                let cert = server_params.self_signed(&server_key).unwrap();
                let pem = cert.pem();
                (cert, pem)
            }
        };

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "system:multihome");
        let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_cert.der().to_vec()))
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server_cert.der().to_vec())],
                PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        let config = Arc::new(config);

        // Bind inside the namespace from a thread of our own; the socket stays in that
        // namespace wherever it is used from.
        let ns_path = format!("/run/netns/{netns}");
        let listener = std::thread::spawn(move || {
            let f = std::fs::File::open(&ns_path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind("127.0.0.1:0").unwrap()
        })
        .join()
        .unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();

        let creds = Credentials {
            ca_pem,
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            token: format!("token-{}", std::process::id()),
            forbidden_token: "token-without-rights".to_string(),
        };
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            let tokens = (creds.token.clone(), creds.forbidden_token.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    // Wait for a connection like a real server (no polling delay); the timeout
                    // only bounds how late a shutdown is noticed.
                    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                    if !matches!(poll(&mut fds, PollTimeout::from(50u16)), Ok(n) if n > 0) {
                        continue;
                    }
                    if let Ok((stream, _)) = listener.accept() {
                        let (state, config, tokens, stop) =
                            (state.clone(), config.clone(), tokens.clone(), stop.clone());
                        std::thread::spawn(move || serve(stream, config, state, tokens, stop));
                    }
                }
            })
        };
        ApiServer {
            addr,
            creds,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops listening and drops open connections: the API is down.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn next_rv(state: &mut State) -> String {
        state.resource_version += 1;
        state.resource_version.to_string()
    }

    /// Adds a pod on node-1; returns its UID.
    pub fn add_pod(&self, namespace: &str, name: &str, annotations: Value) -> String {
        self.add_pod_on(namespace, name, annotations, "node-1")
    }

    /// Adds a pod bound to `node`; returns its UID.
    pub fn add_pod_on(
        &self,
        namespace: &str,
        name: &str,
        annotations: Value,
        node: &str,
    ) -> String {
        let mut st = self.state.lock().unwrap();
        let uid = format!("uid-{namespace}-{name}-{}", st.resource_version + 1);
        let rv = Self::next_rv(&mut st);
        let pod = json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": rv,
                         "creationTimestamp": "2026-11-22T06:00:00Z", "annotations": annotations,
                         "labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}], "nodeName": node,
                     "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"},
            "status": {"phase": "Pending", "qosClass": "BestEffort"}
        });
        st.pods.insert((namespace.into(), name.into()), pod);
        uid
    }

    /// Sets the pod's `annotations` (the others stay, as with `kubectl annotate
    /// --overwrite`): a new resourceVersion, so watches see it.
    pub fn set_annotations(&self, namespace: &str, name: &str, annotations: Value) {
        let mut st = self.state.lock().unwrap();
        let rv = Self::next_rv(&mut st);
        let pod = st
            .pods
            .get_mut(&(namespace.to_string(), name.to_string()))
            .unwrap();
        merge_patch(&mut pod["metadata"]["annotations"], &annotations);
        pod["metadata"]["resourceVersion"] = json!(rv);
    }

    /// Adds a NetworkAttachmentDefinition with `config` as `spec.config` (None: empty spec).
    pub fn add_nad(&self, namespace: &str, name: &str, config: Option<&Value>, annotations: Value) {
        let mut st = self.state.lock().unwrap();
        let rv = Self::next_rv(&mut st);
        let spec = match config {
            Some(c) => json!({"config": c.to_string()}),
            None => json!({}),
        };
        let nad = json!({
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("nad-uid-{rv}"), "resourceVersion": rv,
                         "generation": 1, "creationTimestamp": "2026-11-22T06:00:00Z", "annotations": annotations},
            "spec": spec
        });
        st.nads.insert((namespace.into(), name.into()), nad);
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Value {
        self.state.lock().unwrap().pods[&(namespace.to_string(), name.to_string())].clone()
    }

    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
    }

    /// Requests since the last call, as "METHOD path".
    pub fn take_requests(&self) -> Vec<String> {
        let mut st = self.state.lock().unwrap();
        st.requests
            .drain(..)
            .map(|(m, p)| format!("{m} {p}"))
            .collect()
    }

    /// TLS connections since the last call.
    pub fn take_connections(&self) -> usize {
        std::mem::take(&mut self.state.lock().unwrap().connections)
    }

    pub fn inject(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push_back(fault);
    }

    /// Issues a new bearer token and revokes the old one (a bound service-account token
    /// expiring); returns the new one.
    pub fn rotate_token(&self) -> String {
        let mut st = self.state.lock().unwrap();
        let token = format!("token-rotated-{}", st.resource_version + 1);
        st.token = Some(token.clone());
        token
    }

    /// Holds the next request whose path contains `path_contains` for `ms` before answering it
    /// (a slow API server, or a moment to kill the client in).
    pub fn delay(&self, path_contains: &'static str, ms: u64) {
        self.state
            .lock()
            .unwrap()
            .delays
            .push_back((path_contains, ms));
    }

    /// How many requests have been held so far.
    pub fn delayed(&self) -> usize {
        self.state.lock().unwrap().delayed
    }

    /// Breaks every open watch: its connection drops mid-stream.
    pub fn break_watches(&self) {
        self.state.lock().unwrap().watch_generation += 1;
    }

    /// Compacts history: the resourceVersion moves on (as other writes would move it), and a
    /// watch from one before it gets 410 Gone; a list gives the new one.
    pub fn compact(&self) {
        let mut st = self.state.lock().unwrap();
        st.resource_version += 1;
        st.compacted_below = st.resource_version;
    }

    pub fn uninstall_crd(&self) {
        self.state.lock().unwrap().crd_missing = true;
    }

    /// The CRD exists but is not Established yet (just created, names not accepted).
    pub fn crd_not_established(&self) {
        self.state.lock().unwrap().crd_not_established = true;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn serve(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: Arc<Mutex<State>>,
    tokens: (String, String),
    stop: Arc<AtomicBool>,
) {
    // Blocking reads: each multihome process closes its connection when it exits. No Nagle, as
    // Go's net/http (the real API server) does not either.
    stream.set_nonblocking(false).unwrap();
    stream.set_nodelay(true).unwrap();
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, stream);
    // Complete the handshake before counting the connection.
    while tls.conn.is_handshaking() {
        if stop.load(Ordering::SeqCst) || tls.conn.complete_io(&mut tls.sock).is_err() {
            return;
        }
    }
    state.lock().unwrap().connections += 1;
    let has_client_cert = tls.conn.peer_certificates().is_some_and(|c| !c.is_empty());
    let mut reader = BufReader::new(tls);
    while let Some(req) = read_request(&mut reader) {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let delay = {
            let mut st = state.lock().unwrap();
            let hit = st.delays.iter().position(|(p, _)| req.path.contains(p));
            hit.and_then(|i| st.delays.remove(i)).map(|(_, ms)| {
                st.delayed += 1;
                ms
            })
        };
        if let Some(ms) = delay {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let (code, body, extra) = handle(&req, &state, &tokens, has_client_cert);
        if code == WATCH {
            return stream_watch(&req, &state, reader.get_mut(), &stop);
        }
        // A string is a plain-text body (the real server's answer to an unknown path).
        let (body, content_type) = match body {
            Value::String(text) => (text.into_bytes(), "text/plain; charset=utf-8"),
            body => (serde_json::to_vec(&body).unwrap(), "application/json"),
        };
        let mut head = format!(
            "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            reason_phrase(code),
            body.len()
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        // One write: one TLS record, as a real server sends a small response.
        let mut response = head.into_bytes();
        response.extend_from_slice(&body);
        let out = reader.get_mut();
        if out.write_all(&response).and_then(|_| out.flush()).is_err() {
            return;
        }
    }
}

type Reply = (u16, Value, Vec<(String, String)>);

/// What `handle` answers for an authorized WATCH: `serve` streams it.
const WATCH: u16 = 0;

/// A query parameter of `path`.
fn param<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    let query = path.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// The objects of a collection path, with a pod field selector on `spec.nodeName` applied.
fn collection(st: &State, path: &str) -> Option<Vec<Value>> {
    let node = param(path, "fieldSelector").and_then(|f| f.strip_prefix("spec.nodeName="));
    match path.split('?').next()? {
        "/api/v1/pods" => Some(
            st.pods
                .values()
                .filter(|p| node.is_none_or(|n| p["spec"]["nodeName"] == n))
                .cloned()
                .collect(),
        ),
        "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions" => {
            Some(st.nads.values().cloned().collect())
        }
        _ => None,
    }
}

fn rv_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A WATCH: every object changed after the requested resourceVersion, as a chunked stream of
/// events, until `timeoutSeconds`, a broken watch or the server's stop; 410 Gone as an ERROR
/// event when that resourceVersion was compacted.
fn stream_watch(req: &Request, state: &Mutex<State>, out: &mut impl Write, stop: &AtomicBool) {
    let chunk = |out: &mut dyn Write, event: &Value| {
        let mut line = serde_json::to_vec(event).unwrap();
        line.push(b'\n');
        let mut bytes = format!("{:x}\r\n", line.len()).into_bytes();
        bytes.extend_from_slice(&line);
        bytes.extend_from_slice(b"\r\n");
        out.write_all(&bytes).and_then(|()| out.flush())
    };
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut since: u64 = param(&req.path, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout: u64 = param(&req.path, "timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let generation = state.lock().unwrap().watch_generation;
    if since < state.lock().unwrap().compacted_below {
        let gone = json!({"type": "ERROR", "object": status(410, "Expired",
            &format!("too old resource version: {since}"))});
        let _ = chunk(out, &gone);
        let _ = out.write_all(b"0\r\n\r\n");
        return;
    }
    while std::time::Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        let changed: Vec<Value> = {
            let st = state.lock().unwrap();
            if st.watch_generation != generation {
                // Broken: the connection drops without the last chunk.
                return;
            }
            let mut changed: Vec<Value> = collection(&st, &req.path)
                .unwrap_or_default()
                .into_iter()
                .filter(|o| rv_of(o) > since)
                .collect();
            changed.sort_by_key(rv_of);
            changed
        };
        for object in changed {
            since = rv_of(&object);
            if chunk(out, &json!({"type": "MODIFIED", "object": object})).is_err() {
                return;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = out.write_all(b"0\r\n\r\n").and_then(|()| out.flush());
}

fn error(code: u16, reason: &str, message: &str) -> Reply {
    (code, status(code, reason, message), vec![])
}

fn method_not_allowed() -> Reply {
    error(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
}

fn handle(
    req: &Request,
    state: &Mutex<State>,
    tokens: &(String, String),
    client_cert: bool,
) -> Reply {
    let mut st = state.lock().unwrap();
    st.requests.push((req.method.clone(), req.path.clone()));
    let hit = st
        .faults
        .iter()
        .position(|f| req.path.contains(f.path_contains));
    if let Some(f) = hit.and_then(|i| st.faults.remove(i)) {
        let extra = f
            .retry_after
            .map(|s| vec![("Retry-After".to_string(), s.to_string())])
            .unwrap_or_default();
        let reason = if f.code == 429 {
            "TooManyRequests"
        } else {
            "InternalError"
        };
        return (f.code, status(f.code, reason, "injected fault"), extra);
    }
    // Authentication, then authorization.
    let valid = st.token.clone().unwrap_or_else(|| tokens.0.clone());
    match req
        .headers
        .get("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
    {
        Some(t) if t == valid => {}
        Some(t) if t == tokens.1 => {
            let msg = format!(
                "User \"system:serviceaccount:kube-system:nobody\" cannot {} resource at {}",
                req.method.to_lowercase(),
                req.path
            );
            return error(403, "Forbidden", &msg);
        }
        Some(_) => return error(401, "Unauthorized", "Unauthorized"),
        None if client_cert => {}
        None => return error(401, "Unauthorized", "Unauthorized"),
    }
    let path = req.path.split('?').next().unwrap_or_default();
    if req.method == "GET" {
        if let Some(items) = collection(&st, &req.path) {
            if param(&req.path, "watch") == Some("1") {
                return (WATCH, Value::Null, vec![]);
            }
            let rv = st.resource_version.to_string();
            return (
                200,
                json!({"kind": "List", "apiVersion": "v1",
                                "metadata": {"resourceVersion": rv}, "items": items}),
                vec![],
            );
        }
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name] => match req.method.as_str() {
            "GET" => match st.pods.get(&(ns.to_string(), name.to_string())) {
                Some(p) => (200, p.clone(), vec![]),
                None => error(404, "NotFound", &format!("pods \"{name}\" not found")),
            },
            _ => method_not_allowed(),
        },
        ["api", "v1", "namespaces", ns, "pods", name, "status"] => match req.method.as_str() {
            "PATCH" => patch_pod_status(&mut st, ns, name, req),
            _ => method_not_allowed(),
        },
        ["api", "v1", "namespaces", ns, "events"] if req.method == "POST" => {
            create_event(&mut st, ns, req)
        }
        [
            "apis",
            "k8s.cni.cncf.io",
            "v1",
            "namespaces",
            ns,
            "network-attachment-definitions",
            name,
        ] => {
            // No CRD, or one that is not Established yet: the apiextensions handler passes
            // the request on to the server's not-found handler, as for any unknown path.
            if st.crd_missing || st.crd_not_established {
                return not_found_resource();
            }
            match (
                req.method.as_str(),
                st.nads.get(&(ns.to_string(), name.to_string())),
            ) {
                ("GET", Some(n)) => (200, n.clone(), vec![]),
                ("GET", None) => {
                    let mut reply = error(
                        404,
                        "NotFound",
                        &format!(
                            "network-attachment-definitions.k8s.cni.cncf.io \"{name}\" not found"
                        ),
                    );
                    // A missing object names itself; a missing resource type does not.
                    reply.1["details"] = json!({"name": name, "group": "k8s.cni.cncf.io",
                                                "kind": "network-attachment-definitions"});
                    reply
                }
                _ => method_not_allowed(),
            }
        }
        _ => not_found_resource(),
    }
}

/// What the server answers for a path no resource type serves: its not-found handler's plain
/// text, no `Status` (as the real server answers, checked by the e2e suite).
fn not_found_resource() -> Reply {
    (404, json!("404 page not found\n"), vec![])
}

fn patch_pod_status(st: &mut State, ns: &str, name: &str, req: &Request) -> Reply {
    let content_type = req
        .headers
        .get("content-type")
        .map(String::as_str)
        .unwrap_or_default();
    if content_type != "application/merge-patch+json" {
        let msg = format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {content_type:?}"
        );
        return error(415, "UnsupportedMediaType", &msg);
    }
    let Ok(patch) = serde_json::from_slice::<Value>(&req.body) else {
        return error(400, "BadRequest", "error decoding patch");
    };
    let key = (ns.to_string(), name.to_string());
    let rv = st.resource_version + 1;
    let Some(pod) = st.pods.get_mut(&key) else {
        return error(404, "NotFound", &format!("pods \"{name}\" not found"));
    };
    if let Some(want) = patch
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        if pod["metadata"]["resourceVersion"] != want {
            let msg = format!(
                "Operation cannot be fulfilled on pods \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            );
            return error(409, "Conflict", &msg);
        }
    }
    let mut updated = pod.clone();
    merge_patch(&mut updated, &patch);
    if let Some(annotations) = updated
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        if let Some((k, _)) = annotations.iter().find(|(_, v)| !v.is_string()) {
            let msg = format!(
                "Pod in version \"v1\" cannot be handled as a Pod: metadata.annotations[{k:?}] must be a string"
            );
            return error(400, "BadRequest", &msg);
        }
    }
    // The status subresource ignores spec changes, as the real pod status strategy does.
    updated["spec"] = pod["spec"].clone();
    updated["metadata"]["resourceVersion"] = json!(rv.to_string());
    *pod = updated.clone();
    st.resource_version = rv;
    (200, updated, vec![])
}

fn create_event(st: &mut State, ns: &str, req: &Request) -> Reply {
    let Ok(mut ev) = serde_json::from_slice::<Value>(&req.body) else {
        return error(400, "BadRequest", "error decoding event");
    };
    if ev["metadata"]["namespace"]
        .as_str()
        .is_some_and(|n| n != ns)
    {
        return error(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        );
    }
    let name = ev["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if name.is_empty()
        || ev["involvedObject"]["name"].as_str().is_none()
        || ev["reason"].as_str().is_none()
    {
        return error(
            422,
            "Invalid",
            "Event is invalid: metadata.name, involvedObject and reason are required",
        );
    }
    if st
        .events
        .iter()
        .any(|e| e["metadata"]["name"] == name.as_str())
    {
        return error(
            409,
            "AlreadyExists",
            &format!("events \"{name}\" already exists"),
        );
    }
    let rv = ApiServer::next_rv(st);
    ev["metadata"]["resourceVersion"] = json!(rv);
    st.events.push(ev.clone());
    (201, ev, vec![])
}
