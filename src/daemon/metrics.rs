//! The daemon's metrics, in the Prometheus text format (prometheus-client), and the small HTTP
//! endpoint that serves them with the liveness and readiness probes: `/metrics`, `/healthz`
//! (the daemon answers) and `/readyz` (its cache is synced).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::k8s::socket::Report;

type Labels<const N: usize> = [(&'static str, String); N];
type Counters<const N: usize> = Family<Labels<N>, Counter>;
type Gauges = Family<Labels<1>, Gauge<f64, std::sync::atomic::AtomicU64>>;

/// Every metric the daemon keeps.
pub struct Metrics {
    registry: Registry,
    cni_duration: Family<Labels<2>, Histogram, fn() -> Histogram>,
    delegate_duration: Family<Labels<4>, Histogram, fn() -> Histogram>,
    daemon_wait: Histogram,
    cache_misses: Counters<1>,
    cni_errors: Counters<1>,
    fallbacks: Counters<1>,
    requests: Counters<2>,
    api_requests: Counters<3>,
    watch_restarts: Counters<1>,
    relists: Counters<1>,
    cache_objects: Gauges,
    cache_age: Gauges,
    hotplugs: Counters<1>,
}

fn cni_buckets() -> Histogram {
    // 5 ms to about 20 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("multihome"),
            cni_duration: Family::new_with_constructor(cni_buckets),
            delegate_duration: Family::new_with_constructor(cni_buckets),
            // 0.1 ms to about 0.8 s: around any sensible daemonTimeout.
            daemon_wait: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            cache_misses: Counters::default(),
            cni_errors: Counters::default(),
            fallbacks: Counters::default(),
            requests: Counters::default(),
            api_requests: Counters::default(),
            watch_restarts: Counters::default(),
            relists: Counters::default(),
            cache_objects: Gauges::default(),
            cache_age: Gauges::default(),
            hotplugs: Counters::default(),
        };
        let r = &mut m.registry;
        r.register(
            "cni_request_duration_seconds",
            "CNI calls on this node, by command and result, as the calls measured them",
            m.cni_duration.clone(),
        );
        r.register(
            "delegate_duration_seconds",
            "Plugin calls of the CNI calls on this node, by network, plugin, command and result",
            m.delegate_duration.clone(),
        );
        r.register(
            "cni_daemon_wait_seconds",
            "The longest each CNI call that asked the daemon waited for one of its answers \
             (hello or read from the cache); calls near daemonTimeout fall back",
            m.daemon_wait.clone(),
        );
        r.register(
            "cache_misses",
            "Pods and NADs asked for that the watch had not delivered: read from the API \
             server by the daemon, by resource",
            m.cache_misses.clone(),
        );
        r.register(
            "cni_errors",
            "Failed CNI calls by CNI error code",
            m.cni_errors.clone(),
        );
        r.register(
            "cni_fallbacks",
            "CNI calls that read the API server themselves, by why the daemon was not used",
            m.fallbacks.clone(),
        );
        r.register(
            "daemon_requests",
            "Requests over the daemon's socket, by operation and result",
            m.requests.clone(),
        );
        r.register(
            "api_requests",
            "The daemon's requests to the API server, by verb, resource and HTTP status",
            m.api_requests.clone(),
        );
        r.register(
            "watch_restarts",
            "Watches that failed and were resumed, by resource",
            m.watch_restarts.clone(),
        );
        r.register(
            "watch_relists",
            "Lists of a resource (the first one, and each after a watch expired or kept failing)",
            m.relists.clone(),
        );
        r.register(
            "hotplug_operations",
            "Hot-plug changes of pods' networks, by result (ok, retry, error)",
            m.hotplugs.clone(),
        );
        r.register(
            "cache_objects",
            "Objects in the daemon's cache, by resource",
            m.cache_objects.clone(),
        );
        r.register(
            "cache_sync_age_seconds",
            "Time since the cache of a resource was last known current",
            m.cache_age.clone(),
        );
        m
    }
}

impl Metrics {
    /// A CNI call's report.
    pub fn report(&self, report: &Report) {
        let result = match report.code {
            None => "success".to_string(),
            Some(_) => "error".to_string(),
        };
        self.cni_duration
            .get_or_create(&[("command", report.command.clone()), ("result", result)])
            .observe(report.seconds);
        for d in &report.delegates {
            let result = if d.ok { "success" } else { "error" };
            self.delegate_duration
                .get_or_create(&[
                    ("network", d.network.clone()),
                    ("plugin", d.plugin.clone()),
                    ("command", d.command.clone()),
                    ("result", result.to_string()),
                ])
                .observe(d.seconds);
        }
        if let Some(code) = report.code {
            self.cni_errors
                .get_or_create(&[("code", code.to_string())])
                .inc();
        }
        if let Some(waited) = report.daemon_wait {
            self.daemon_wait.observe(waited);
        }
        if let Some(why) = report.unused {
            self.fallbacks
                .get_or_create(&[("reason", why.as_str().to_string())])
                .inc();
        }
    }

    /// A pod or NAD asked for was not in the cache: read live.
    pub fn cache_miss(&self, resource: &str) {
        self.cache_misses
            .get_or_create(&[("resource", resource.to_string())])
            .inc();
    }

    /// A request over the socket.
    pub fn request(&self, op: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.requests
            .get_or_create(&[("op", op.to_string()), ("result", result.to_string())])
            .inc();
    }

    /// A request to the API server.
    pub fn api_request(&self, method: &reqwest::Method, path: &str, status: Option<u16>) {
        let code = status.map_or_else(|| "none".to_string(), |s| s.to_string());
        self.api_requests
            .get_or_create(&[
                ("verb", method.as_str().to_string()),
                ("resource", resource_of(path)),
                ("code", code),
            ])
            .inc();
    }

    /// A hot-plug change ended with `result`.
    pub fn hotplug(&self, result: &str) {
        self.hotplugs
            .get_or_create(&[("result", result.to_string())])
            .inc();
    }

    /// A watch of `resource` failed.
    pub fn watch_restart(&self, resource: &str) {
        self.watch_restarts
            .get_or_create(&[("resource", resource.to_string())])
            .inc();
    }

    /// `resource` is listed (again).
    pub fn relist(&self, resource: &str) {
        self.relists
            .get_or_create(&[("resource", resource.to_string())])
            .inc();
    }

    /// The text format, with the cache's figures as they are now: `(resource, objects,
    /// seconds since current)`.
    pub fn encode(&self, caches: &[(&str, usize, Option<Duration>)]) -> String {
        for (resource, objects, age) in caches {
            let labels = [("resource", (*resource).to_string())];
            self.cache_objects
                .get_or_create(&labels)
                .set(*objects as f64);
            self.cache_age
                .get_or_create(&labels)
                .set(age.map_or(f64::NAN, |a| a.as_secs_f64()));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The resource of an API path: `pods`, `pods/status`, `events`,
/// `network-attachment-definitions`.
fn resource_of(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').split('/');
    // api/v1 or apis/GROUP/VERSION
    let skip = if path.starts_with("/apis/") { 3 } else { 2 };
    let rest: Vec<&str> = parts.by_ref().skip(skip).collect();
    let rest = match rest.as_slice() {
        ["namespaces", _, rest @ ..] if !rest.is_empty() => rest,
        all => all,
    };
    match rest {
        [resource] | [resource, _] => (*resource).to_string(),
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
        [] => "namespaces".to_string(),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener`, one request at a time (a scraper
/// and two probes).
pub fn serve(listener: TcpListener, metrics: &Metrics, figures: impl Fn() -> Figures) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let mut request_line = String::new();
        let mut reader = BufReader::new(&stream);
        if reader.read_line(&mut request_line).is_err() {
            continue;
        }
        // The headers are read and ignored.
        let mut header = String::new();
        while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
            header.clear();
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or_default();
        let (status, content_type, body) = match path {
            "/metrics" => {
                let f = figures();
                (
                    "200 OK",
                    prometheus_text::CONTENT_TYPE,
                    metrics.encode(&f.caches),
                )
            }
            "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
            "/readyz" if figures().ready => ("200 OK", "text/plain", "ready\n".to_string()),
            "/readyz" => (
                "503 Service Unavailable",
                "text/plain",
                "cache not synced\n".to_string(),
            ),
            _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// What the endpoint reports of the cache.
pub struct Figures {
    /// Both resources are synced.
    pub ready: bool,
    /// `(resource, objects, seconds since current)`.
    pub caches: Vec<(&'static str, usize, Option<Duration>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::socket::{DelegateCall, Unused};

    #[test]
    fn api_paths_name_their_resource() {
        for (path, resource) in [
            ("/api/v1/pods", "pods"),
            ("/api/v1/namespaces/ns/pods/p1", "pods"),
            ("/api/v1/namespaces/ns/pods/p1/status", "pods/status"),
            ("/api/v1/namespaces/ns/events", "events"),
            (
                "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions",
                "network-attachment-definitions",
            ),
            (
                "/apis/k8s.cni.cncf.io/v1/namespaces/ns/network-attachment-definitions/n",
                "network-attachment-definitions",
            ),
        ] {
            assert_eq!(resource_of(path), resource, "{path}");
        }
    }

    #[test]
    fn reports_become_prometheus_series() {
        let m = Metrics::default();
        let calls = [
            (None, None, Some(0.0003)),
            (None, Some(Unused::Unready), Some(0.002)),
            (Some(7), None, None),
        ];
        for (code, unused, daemon_wait) in calls {
            m.report(&Report {
                command: "ADD".into(),
                code,
                seconds: 0.012,
                unused,
                delegates: vec![DelegateCall {
                    network: "default/bridge-net".into(),
                    plugin: "bridge".into(),
                    command: "ADD".into(),
                    seconds: 0.004,
                    ok: code.is_none(),
                }],
                daemon_wait,
            });
        }
        let text = m.encode(&[("pods", 3, Some(Duration::from_secs(2)))]);
        for line in [
            "# TYPE multihome_cni_request_duration_seconds histogram",
            "multihome_cni_request_duration_seconds_count{command=\"ADD\",result=\"success\"} 2",
            "multihome_cni_request_duration_seconds_bucket{command=\"ADD\",result=\"error\",le=\"0.02\"} 1",
            "multihome_cni_errors_total{code=\"7\"} 1",
            "multihome_delegate_duration_seconds_count{network=\"default/bridge-net\",plugin=\"bridge\",command=\"ADD\",result=\"success\"} 2",
            "multihome_cni_fallbacks_total{reason=\"unready\"} 1",
            "multihome_cni_daemon_wait_seconds_count 2",
            "multihome_cni_daemon_wait_seconds_bucket{le=\"0.0004\"} 1",
            "multihome_cache_objects{resource=\"pods\"} 3.0",
            "multihome_cache_sync_age_seconds{resource=\"pods\"} 2.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }
}
