//! A minimal Kubernetes API client for the calls multihome makes: get a pod, get a
//! NetworkAttachmentDefinition, merge-patch the pod's status annotations, create an event.
//!
//! One HTTPS connection per invocation (one TLS handshake): HTTP/2 where the server offers it,
//! so that requests that do not depend on each other (the NAD GETs, the events) go at once;
//! otherwise HTTP/1.1, one request after the other. Explicit connect and request timeouts, and
//! a bounded retry budget for transient failures (connection errors, 5xx, 429 with
//! `Retry-After`). API errors are reported with the Kubernetes `Status` message. The async HTTP
//! stack runs on a current-thread runtime private to this module; callers see blocking calls.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::{Method, StatusCode};
use rustls::CertificateError;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::access::Access;
use crate::error::{CniError, Code, coded};

/// `attempts` for a call that may use the whole configured retry budget (`apiAttempts`).
const FULL_BUDGET: u32 = u32::MAX;

/// Timeouts and retry budget for API calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP + TLS connection set-up.
    pub connect: Duration,
    /// One whole call, retries included.
    pub total: Duration,
    /// Attempts per call (1 = no retry).
    pub attempts: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            total: Duration::from_secs(10),
            attempts: 3,
        }
    }
}

/// Object metadata, the part of it multihome reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// `metadata.name`.
    #[serde(default)]
    pub name: String,
    /// `metadata.namespace`.
    #[serde(default)]
    pub namespace: String,
    /// `metadata.uid`.
    #[serde(default)]
    pub uid: String,
    /// `metadata.annotations`.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `metadata.resourceVersion`.
    #[serde(default)]
    pub resource_version: String,
}

/// A pod, as far as multihome reads it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Pod {
    /// Its metadata.
    pub metadata: ObjectMeta,
}

impl Pod {
    /// A static pod's mirror: its UID is not the one kubelet knows, so UID checks skip it.
    pub fn is_static(&self) -> bool {
        self.metadata
            .annotations
            .get("kubernetes.io/config.source")
            .is_some_and(|s| s != "api")
            || self
                .metadata
                .annotations
                .contains_key("kubernetes.io/config.mirror")
    }
}

/// A NetworkAttachmentDefinition.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Nad {
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    #[serde(default)]
    pub spec: NadSpec,
}

/// `spec` of a NetworkAttachmentDefinition.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct NadSpec {
    /// The CNI config or conflist, as a JSON string; empty means "look it up in confDir".
    #[serde(default)]
    pub config: String,
}

/// What the API says of one NetworkAttachmentDefinition.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub enum NadReply {
    /// It exists.
    Found(Nad),
    /// It does not exist.
    Missing,
    /// The resource type is not served (the CRD is not installed or not yet Established); the
    /// API server's message.
    NotServed(String),
}

/// How a status patch ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Patched {
    /// The pod has it.
    Written,
    /// The pod no longer exists (deleted meanwhile; its DEL is coming).
    PodGone,
}

/// The API client of one invocation.
pub struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    server: String,
    token: Option<String>,
    timeouts: Timeouts,
    /// The server answered over HTTP/2 (negotiated by ALPN): requests that do not depend on
    /// each other can share the one connection at once.
    multiplexed: AtomicBool,
    /// Told of every answer (or its absence); the daemon counts requests with it.
    observer: Option<Observer>,
}

/// What a client tells of every request it made: method, path, and the HTTP status (`None`
/// when no answer came).
pub type Observer = Box<dyn Fn(&Method, &str, Option<u16>) + Send + Sync>;

/// Objects of one LIST, and the resourceVersion a WATCH of them starts from.
#[derive(Debug)]
pub struct Listed<T> {
    /// The objects, every page of them.
    pub items: Vec<T>,
    /// The list's `metadata.resourceVersion`.
    pub resource_version: String,
}

#[derive(Deserialize)]
struct ListPage<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
    #[serde(default)]
    metadata: ListMeta,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: String,
    #[serde(default, rename = "continue")]
    next: String,
}

/// One change a WATCH delivers.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "object")]
pub enum WatchEvent<T> {
    /// A new object (or one the watch had not reported yet).
    #[serde(rename = "ADDED")]
    Added(T),
    /// A changed object.
    #[serde(rename = "MODIFIED")]
    Modified(T),
    /// A deleted object, as it last was.
    #[serde(rename = "DELETED")]
    Deleted(T),
    /// Only `metadata.resourceVersion`: where to resume, with nothing changed.
    #[serde(rename = "BOOKMARK")]
    Bookmark(T),
    /// The watch failed; a `Status`.
    #[serde(rename = "ERROR")]
    Error(WatchStatus),
}

/// The `Status` of a failed watch.
#[derive(Debug, Default, Deserialize)]
pub struct WatchStatus {
    /// Its HTTP-like code (410: the resourceVersion is too old).
    #[serde(default)]
    pub code: u16,
    /// Its message.
    #[serde(default)]
    pub message: String,
}

/// An open WATCH: its events, as they arrive.
pub struct Watch<'a, T> {
    client: &'a Client,
    resp: reqwest::Response,
    pending: Vec<u8>,
    path: String,
    of: std::marker::PhantomData<T>,
}

impl<T: serde::de::DeserializeOwned> Watch<'_, T> {
    /// The next event; `None` when the server ended the watch (resume from the last
    /// resourceVersion seen).
    pub fn next_event(&mut self) -> Result<Option<WatchEvent<T>>> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return decode(&line, &self.path).map(Some);
            }
            let chunk = self.client.runtime.block_on(self.resp.chunk());
            match chunk {
                Ok(Some(bytes)) => self.pending.extend_from_slice(&bytes),
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(coded(
                        Code::TryAgainLater,
                        format!("WATCH {}: {}", self.path, error_chain(&e)),
                    ));
                }
            }
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `access`. Nothing is sent until the first call.
    pub fn new(access: &Access, timeouts: Timeouts) -> Result<Client> {
        let tls =
            tls_config(access).with_context(|| format!("TLS set-up for {}", access.server))?;
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.total)
            .no_proxy()
            .pool_max_idle_per_host(1)
            .user_agent(concat!("multihome/", env!("CARGO_PKG_VERSION")));
        let mut server = access.server.clone();
        if let Some(name) = &access.tls_server_name {
            // Verify the certificate against tls-server-name while connecting to the address in
            // `server`: address the name, and resolve it to that address.
            let url =
                reqwest::Url::parse(&server).with_context(|| format!("server URL {server:?}"))?;
            let addr = url
                .socket_addrs(|| Some(443))
                .with_context(|| format!("resolving {server}"))?
                .into_iter()
                .next()
                .with_context(|| format!("no address for {server}"))?;
            builder = builder.resolve(name, addr);
            server = format!("https://{name}:{}", addr.port());
        }
        let http = builder.build().context("building the HTTP client")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the API client runtime")?;
        Ok(Client {
            http,
            runtime,
            server,
            token: access.token.clone(),
            timeouts,
            multiplexed: AtomicBool::new(false),
            observer: None,
        })
    }

    /// This client, telling `observer` of every request it makes.
    pub fn observed(mut self, observer: Observer) -> Client {
        self.observer = Some(observer);
        self
    }

    /// `LIST`s `path` (every page, 500 objects at a time) with `query` (selectors).
    pub fn list<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &str,
    ) -> Result<Listed<T>> {
        let mut items = Vec::new();
        let mut next = String::new();
        loop {
            let mut url = format!("{path}?limit=500&{query}");
            if !next.is_empty() {
                url.push_str("&continue=");
                url.push_str(&next);
            }
            let body = match self.call(Method::GET, &url, None, FULL_BUDGET)? {
                Reply::Ok(body) => body,
                Reply::NotFound(s) => {
                    return Err(coded(Code::Internal, format!("LIST {path}: {}", s.message)));
                }
            };
            let page: ListPage<T> = decode(&body, path)?;
            items.extend(page.items);
            if page.metadata.next.is_empty() {
                return Ok(Listed {
                    items,
                    resource_version: page.metadata.resource_version,
                });
            }
            next = page.metadata.next;
        }
    }

    /// Opens a `WATCH` of `path` with `query` from `resource_version`, with bookmarks; the
    /// server ends it after about `timeout`. `Ok(None)`: 410 Gone, the resourceVersion is older
    /// than the server keeps (list again).
    pub fn watch<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &str,
        resource_version: &str,
        timeout: Duration,
    ) -> Result<Option<Watch<'_, T>>> {
        let url = format!(
            "{}{path}?{query}&watch=1&allowWatchBookmarks=true&resourceVersion={resource_version}&timeoutSeconds={}",
            self.server,
            timeout.as_secs()
        );
        let mut req = self
            .http
            .get(&url)
            .header("Accept", "application/json")
            // The server ends the watch after `timeout`; this only catches a dead connection.
            .timeout(timeout + Duration::from_secs(30));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        // Sent inside the runtime: the request's timer is made when it is sent.
        let sent = self.runtime.block_on(async { req.send().await });
        self.observe(
            &Method::GET,
            path,
            sent.as_ref().ok().map(|r| r.status().as_u16()),
        );
        let resp = sent.map_err(|e| {
            coded(
                Code::TryAgainLater,
                format!("WATCH {path}: {}", error_chain(&e)),
            )
        })?;
        match resp.status() {
            StatusCode::GONE => Ok(None),
            status if !status.is_success() => {
                let body = self.runtime.block_on(resp.bytes()).unwrap_or_default();
                Err(ApiStatus::from_body(status.as_u16(), &body).into_error(&Method::GET, path))
            }
            _ => Ok(Some(Watch {
                client: self,
                resp,
                pending: Vec::new(),
                path: path.to_string(),
                of: std::marker::PhantomData,
            })),
        }
    }

    fn observe(&self, method: &Method, path: &str, status: Option<u16>) {
        if let Some(observer) = &self.observer {
            // The path without its query: the resource, not the selector.
            observer(method, path.split('?').next().unwrap_or(path), status);
        }
    }

    /// `GET` a pod; `Ok(None)` when it does not exist.
    pub fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>> {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        match self.call(Method::GET, &path, None, FULL_BUDGET)? {
            Reply::NotFound(_) => Ok(None),
            Reply::Ok(body) => Ok(Some(decode(&body, &path)?)),
        }
    }

    /// `GET` a NetworkAttachmentDefinition.
    pub fn get_nad(&self, namespace: &str, name: &str) -> Result<NadReply> {
        self.runtime.block_on(self.nad(namespace, name))
    }

    /// `GET`s NetworkAttachmentDefinitions, `(namespace, name)`, answered in order (see
    /// [`Client::all`]).
    pub fn get_nads(&self, keys: &[(String, String)]) -> Vec<Result<NadReply>> {
        self.all(keys.iter().map(|(ns, name)| self.nad(ns, name)))
    }

    async fn nad(&self, namespace: &str, name: &str) -> Result<NadReply> {
        let path = format!(
            "/apis/k8s.cni.cncf.io/v1/namespaces/{namespace}/network-attachment-definitions/{name}"
        );
        match self
            .call_async(Method::GET, &path, None, FULL_BUDGET)
            .await?
        {
            Reply::Ok(body) => Ok(NadReply::Found(decode(&body, &path)?)),
            // A missing object's 404 names it; a 404 for the resource type (no CRD, or one not
            // Established yet) does not.
            Reply::NotFound(s) if s.names_object => Ok(NadReply::Missing),
            Reply::NotFound(s) => Ok(NadReply::NotServed(s.message)),
        }
    }

    /// JSON-merge-patches the pod's `status` subresource (annotations live in its metadata).
    pub fn patch_pod_status(&self, namespace: &str, name: &str, patch: &Value) -> Result<Patched> {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}/status");
        let body = serde_json::to_vec(patch).context("encoding patch")?;
        match self.call(
            Method::PATCH,
            &path,
            Some(("application/merge-patch+json", body)),
            FULL_BUDGET,
        )? {
            Reply::Ok(_) => Ok(Patched::Written),
            Reply::NotFound(s) => {
                log::debug!("PATCH {path}: {}", s.message);
                Ok(Patched::PodGone)
            }
        }
    }

    /// Creates an event in `namespace`, in one attempt: events are best effort, and retrying one
    /// would only delay the pod.
    pub fn create_event(&self, namespace: &str, event: &Value) -> Result<()> {
        self.runtime.block_on(self.event(namespace, event))
    }

    /// Creates events in `namespace`, answered in order (see [`Client::all`]).
    pub fn create_events(&self, namespace: &str, events: &[Value]) -> Vec<Result<()>> {
        self.all(events.iter().map(|e| self.event(namespace, e)))
    }

    /// Runs `calls`, requests that do not depend on each other, answered in order: at once over
    /// a connection that multiplexes (HTTP/2), else one after the other (a second HTTP/1.1
    /// request in flight would cost a second TLS handshake).
    fn all<T, F: Future<Output = Result<T>>>(
        &self,
        calls: impl Iterator<Item = F>,
    ) -> Vec<Result<T>> {
        if self.multiplexed.load(Ordering::Relaxed) {
            self.runtime.block_on(futures_util::future::join_all(calls))
        } else {
            calls.map(|call| self.runtime.block_on(call)).collect()
        }
    }

    async fn event(&self, namespace: &str, event: &Value) -> Result<()> {
        let path = format!("/api/v1/namespaces/{namespace}/events");
        let body = serde_json::to_vec(event).context("encoding event")?;
        match self
            .call_async(Method::POST, &path, Some(("application/json", body)), 1)
            .await?
        {
            Reply::Ok(_) => Ok(()),
            Reply::NotFound(s) => Err(coded(Code::Internal, format!("POST {path}: {}", s.message))),
        }
    }

    /// One API call, retried within the budget (`attempts` caps it further).
    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        attempts: u32,
    ) -> Result<Reply> {
        self.runtime
            .block_on(self.call_async(method, path, body, attempts))
    }

    async fn call_async(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        attempts: u32,
    ) -> Result<Reply> {
        let url = format!("{}{path}", self.server);
        let deadline = Instant::now() + self.timeouts.total;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("Accept", "application/json");
            if let Some(token) = &self.token {
                req = req.bearer_auth(token);
            }
            if let Some((content_type, bytes)) = &body {
                req = req
                    .header("Content-Type", *content_type)
                    .body(bytes.clone());
            }
            let outcome = async {
                let resp = req.send().await;
                self.observe(
                    &method,
                    path,
                    resp.as_ref().ok().map(|r| r.status().as_u16()),
                );
                let resp = resp?;
                if resp.version() == reqwest::Version::HTTP_2 {
                    self.multiplexed.store(true, Ordering::Relaxed);
                }
                let status = resp.status();
                let retry_after = resp
                    .headers()
                    .get("Retry-After")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let bytes = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, retry_after, bytes.to_vec()))
            }
            .await;
            let (retry, wait, err) = match outcome {
                Ok((status, _, bytes)) if status.is_success() => return Ok(Reply::Ok(bytes)),
                Ok((StatusCode::NOT_FOUND, _, bytes)) => {
                    return Ok(Reply::NotFound(ApiStatus::from_body(404, &bytes)));
                }
                Ok((status, retry_after, bytes)) => {
                    let st = ApiStatus::from_body(status.as_u16(), &bytes);
                    let transient =
                        status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                    let wait = retry_after.map(Duration::from_secs);
                    (transient, wait, st.into_error(&method, path))
                }
                Err(e) => {
                    let transient = e.is_connect() || e.is_timeout() || e.is_request();
                    let code = if transient {
                        Code::TryAgainLater
                    } else {
                        Code::Io
                    };
                    (
                        transient,
                        None,
                        coded(code, format!("{method} {url}: {}", error_chain(&e))),
                    )
                }
            };
            let backoff = wait.unwrap_or(Duration::from_millis(100 << attempt.min(6)));
            if !retry
                || attempt >= attempts.min(self.timeouts.attempts)
                || Instant::now() + backoff >= deadline
            {
                return Err(err);
            }
            log::info!("retrying {method} {path} in {backoff:?}: {err:#}");
            tokio::time::sleep(backoff).await;
        }
    }
}

enum Reply {
    Ok(Vec<u8>),
    NotFound(ApiStatus),
}

/// The interesting part of a Kubernetes `Status` error body.
#[derive(Debug, Default)]
struct ApiStatus {
    code: u16,
    reason: String,
    message: String,
    /// `details.name` is set: the error is about one object (not a resource type or a path).
    names_object: bool,
}

impl ApiStatus {
    fn from_body(code: u16, body: &[u8]) -> ApiStatus {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) if v.get("kind").and_then(Value::as_str) == Some("Status") => ApiStatus {
                code,
                reason: v
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                message: v
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                names_object: v
                    .pointer("/details/name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty()),
            },
            _ => ApiStatus {
                code,
                reason: String::new(),
                message: String::from_utf8_lossy(body).trim().to_string(),
                names_object: false,
            },
        }
    }

    fn into_error(self, method: &Method, path: &str) -> anyhow::Error {
        let code = match self.code {
            401 | 403 => Code::InvalidConfig,
            429 | 500..=599 => Code::TryAgainLater,
            _ => Code::Internal,
        };
        let hint = match self.code {
            401 => " (the token or client certificate was rejected: is the kubeconfig current?)",
            403 => " (RBAC does not allow this)",
            _ => "",
        };
        let reason = if self.reason.is_empty() {
            String::new()
        } else {
            format!(" {}", self.reason)
        };
        CniError::new(
            code,
            format!(
                "{method} {path}: {}{reason}: {}{hint}",
                self.code, self.message
            ),
        )
        .into()
    }
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8], path: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| coded(Code::Decode, format!("decoding {path}: {e}")))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn tls_config(access: &Access) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = if access.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let ca = access.ca_pem.as_deref().ok_or_else(|| {
            coded(
                Code::InvalidConfig,
                format!("no certificate-authority for {}: set certificate-authority(-data) in the kubeconfig", access.server),
            )
        })?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(server_verifier(ca, provider)?)
    };
    let mut config = match (&access.client_cert_pem, &access.client_key_pem) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_slice_iter(cert)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| {
                    coded(
                        Code::InvalidConfig,
                        "client-certificate is not a PEM certificate",
                    )
                })?;
            // A PEM parse error can quote a line of the key: report none of it.
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
                coded(
                    Code::InvalidConfig,
                    "client-key is not a PEM private key (PKCS#1, PKCS#8 or SEC1)",
                )
            })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                coded(
                    Code::InvalidConfig,
                    format!("client certificate and key: {e}"),
                )
            })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(coded(
            Code::InvalidConfig,
            "client-certificate and client-key must be given together",
        )),
    }?;
    // HTTP/2 when the server offers it (kube-apiserver does), so that the requests of one call
    // that do not depend on each other share the one connection at once.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The verifier of the API server's certificate: chains to the kubeconfig's CA certificates, or
/// is one of them (see [`TrustedLeaf`]).
fn server_verifier(
    ca: &[u8],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<TrustedLeaf>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        let cert =
            cert.map_err(|e| coded(Code::InvalidConfig, format!("certificate-authority: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| coded(Code::InvalidConfig, format!("certificate-authority: {e}")))?;
    }
    if roots.is_empty() {
        return Err(coded(
            Code::InvalidConfig,
            "certificate-authority holds no PEM certificate",
        ));
    }
    let pinned = CertificateDer::pem_slice_iter(ca)
        .filter_map(|c| c.ok())
        .collect();
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| coded(Code::InvalidConfig, format!("certificate-authority: {e}")))?;
    Ok(Arc::new(TrustedLeaf { inner, pinned }))
}

/// The usual chain verification, plus Go's rule (which kubectl and Multus follow): a server
/// certificate that is itself one of the kubeconfig's CA certificates is trusted, as a
/// self-signed `openssl req -x509` certificate (CA:TRUE) used as the API server's own is.
/// webpki refuses a CA as an end entity; for exactly such a certificate, byte for byte, the
/// server name is still checked here, and the validity period was checked by webpki before it
/// refused (it checks validity first; a unit test holds it to that).
#[derive(Debug)]
struct TrustedLeaf {
    inner: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for TrustedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let err = match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(e) => e,
        };
        let ca_as_leaf = matches!(&err, rustls::Error::InvalidCertificate(CertificateError::Other(o))
            if o.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity));
        if !ca_as_leaf
            || !self
                .pinned
                .iter()
                .any(|c| c.as_ref() == end_entity.as_ref())
        {
            return Err(err);
        }
        webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| err)?
            .verify_is_valid_for_subject_name(server_name)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecure-skip-tls-verify`: the operator asked not to verify the server. Signatures are still
/// checked so the handshake itself is sound.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, date_time_ymd};
    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    /// A self-signed certificate for `127.0.0.1`, valid over the given years.
    fn self_signed(ca: bool, years: (i32, i32)) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params.not_before = date_time_ymd(years.0, 1, 1);
        params.not_after = date_time_ymd(years.1, 1, 1);
        params.self_signed(&key).unwrap().pem()
    }

    /// Verifies `presented` as the server certificate for `name`, with `trusted` as the CA.
    fn verify(trusted: &str, presented: &str, name: &str) -> std::result::Result<(), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = server_verifier(trusted.as_bytes(), provider).unwrap();
        let leaf = CertificateDer::pem_slice_iter(presented.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_trusted_self_signed_ca_itself_is_accepted_as_the_server_certificate() {
        let cert = self_signed(true, (2000, 2999));
        assert_eq!(verify(&cert, &cert, "127.0.0.1"), Ok(()));
    }

    #[test]
    fn only_exactly_that_certificate_and_still_checked_for_name_and_dates() {
        let cert = self_signed(true, (2000, 2999));
        let other = self_signed(true, (2000, 2999));
        assert!(
            verify(&cert, &other, "127.0.0.1").is_err(),
            "another self-signed CA"
        );
        let e = verify(&cert, &cert, "198.18.0.1").unwrap_err();
        assert!(e.contains("NotValidForName"), "{e}");
        for years in [(2000, 2001), (2998, 2999)] {
            let dated = self_signed(true, years);
            let e = verify(&dated, &dated, "127.0.0.1").unwrap_err();
            assert!(
                e.contains("expired") || e.contains("not valid yet"),
                "{years:?}: {e}"
            );
        }
    }

    #[test]
    fn a_broken_client_key_is_reported_without_quoting_it() {
        let cert = self_signed(false, (2000, 2999));
        let access = Access {
            server: "https://127.0.0.1".into(),
            insecure: true,
            client_cert_pem: Some(cert.into_bytes()),
            client_key_pem: Some(
                b"-----BEGIN PRIVATE KEY-----\nSECRET-KEY-MATERIAL\n-----BEGIN X-----\n".to_vec(),
            ),
            ..Access::default()
        };
        let e = CniError::from_anyhow(&tls_config(&access).unwrap_err());
        assert!(
            e.msg.contains("client-key") && !e.msg.contains("SECRET"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn a_self_signed_leaf_without_ca_true_is_webpkis_own_business() {
        // webpki accepts it as its own trust anchor (as Go does); name and dates still count.
        let leaf = self_signed(false, (2000, 2999));
        assert_eq!(verify(&leaf, &leaf, "127.0.0.1"), Ok(()));
        assert!(verify(&leaf, &leaf, "198.18.0.1").is_err());
    }
}
