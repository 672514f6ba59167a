//! The ADD, DEL and CHECK flows, as a library the one-shot binary (and later a node daemon)
//! calls.
//!
//! ADD validates everything before the first delegate runs, records the plan in the cache, adds
//! in order, reports to Kubernetes, and rolls back on any failure. DEL works from the cache, in
//! reverse, best effort, idempotently, without the API. CHECK re-checks every delegate against
//! its cached result.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::annotations::{self, NetworkSelection, StatusInput};
use crate::cache::{Cache, CachedAttachment, Durability, KIND, Lock, Record};
use crate::cni::env::{CniEnv, validate_ifname};
use crate::cni::result::convert;
use crate::cni::version::Version;
use crate::config::{NetConf, NetworkConfig, find_network_by_name, resolve_network};
use crate::default_route;
use crate::delegate::{Runner, check_available, search_path};
use crate::error::{CniError, Code, coded};
use crate::k8s::checkpoint::Devices;
use crate::k8s::{Access, Client, Pod};
use crate::netns::NetNs;
use crate::plan::{Attachment, Selection, check_namespace_isolation, plan};

/// How long ADD waits for `readinessindicatorfile` (Multus waits 45 s).
const READINESS_TIMEOUT: Duration = Duration::from_secs(45);
const READINESS_POLL: Duration = Duration::from_millis(100);

/// One invocation: the validated environment and multihome's config.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The `CNI_*` environment.
    pub env: CniEnv,
    /// multihome's config (stdin).
    pub conf: NetConf,
}

/// The pod a call is for, as `CNI_ARGS` names it.
#[derive(Debug, Clone)]
struct PodRef {
    namespace: String,
    name: String,
    uid: Option<String>,
}

/// What Kubernetes says about the pod of one call.
struct Kube {
    client: Client,
    pod_ref: Option<PodRef>,
    /// `None` when there is no pod to ask about, or the API has no such pod.
    pod: Option<Pod>,
}

impl Invocation {
    fn runner(&self) -> Runner {
        Runner {
            search_path: search_path(&self.conf.bin_dir, &self.env.path),
            container_id: self.env.container_id.clone(),
            netns: self.env.netns.clone(),
        }
    }

    fn cache(&self) -> Cache {
        Cache::new(&self.conf.cni_dir)
    }

    fn pod_ref(&self) -> Option<PodRef> {
        let arg = |k| self.env.arg(k).filter(|v| !v.is_empty()).map(String::from);
        Some(PodRef {
            namespace: arg("K8S_POD_NAMESPACE")?,
            name: arg("K8S_POD_NAME")?,
            uid: arg("K8S_POD_UID"),
        })
    }

    /// The API client, when multihome is configured for Kubernetes (`kubeconfig`, or the
    /// in-cluster environment).
    fn client(&self) -> Result<Option<Client>> {
        let access = match &self.conf.kubeconfig {
            Some(path) => Access::from_kubeconfig(path)?,
            None => match Access::in_cluster(
                |k| std::env::var(k).ok(),
                crate::k8s::access::SERVICE_ACCOUNT_DIR.as_ref(),
            )? {
                Some(a) => a,
                None => return Ok(None),
            },
        };
        Client::new(&access, self.conf.api_timeouts).map(Some)
    }

    /// Connects to the API and fetches the pod. On ADD a UID mismatch (the pod was deleted and
    /// recreated) is an error, except for static pods whose mirror has its own UID.
    fn kube(&self, adding: bool) -> Result<Option<Kube>> {
        let Some(client) = self.client()? else {
            return Ok(None);
        };
        let pod_ref = self.pod_ref();
        let mut pod = None;
        if let Some(r) = &pod_ref {
            pod = client
                .get_pod(&r.namespace, &r.name)
                .with_context(|| format!("getting pod {}/{}", r.namespace, r.name))?;
            match &pod {
                None => log::warn!(
                    "pod {}/{} not found: attaching the cluster network only",
                    r.namespace,
                    r.name
                ),
                Some(p) => {
                    let stale = r
                        .uid
                        .as_deref()
                        .filter(|u| *u != p.metadata.uid && !p.is_static());
                    if let Some(uid) = stale {
                        if adding {
                            return Err(coded(
                                Code::UnknownContainer,
                                format!(
                                    "pod {}/{}: expected UID {uid:?} but the API has {:?} (the pod was deleted and recreated)",
                                    r.namespace, r.name, p.metadata.uid
                                ),
                            ));
                        }
                        // DEL of the old pod's sandbox: the new pod's annotations are not ours.
                        pod = None;
                    }
                }
            }
        }
        Ok(Some(Kube {
            client,
            pod_ref,
            pod,
        }))
    }

    /// The networks of this call, cluster network first.
    fn selections(&self, kube: Option<&Kube>) -> Result<Vec<Selection>> {
        let conf = &self.conf;
        let mut resolver = Resolver {
            conf,
            kube,
            nads: HashMap::new(),
            devices: None,
        };
        let pod = kube.and_then(|k| k.pod.as_ref());
        let annotation = |key: &str| {
            pod.and_then(|p| p.metadata.annotations.get(key))
                .filter(|a| !a.trim().is_empty())
        };
        let pod_namespace = pod
            .map(|p| p.metadata.namespace.clone())
            .or_else(|| self.env.arg("K8S_POD_NAMESPACE").map(String::from))
            .unwrap_or_default();

        let mut selections = Vec::new();
        if let Some(text) = annotation(annotations::DEFAULT_NETWORK) {
            let el = annotations::parse_default_network(text, &conf.multus_namespace)
                .with_context(|| format!("pod annotation {}", annotations::DEFAULT_NETWORK))?;
            selections.push(resolver.element(&el)?);
        }
        match &conf.cluster_network {
            Some(cluster) => {
                if selections.is_empty() {
                    selections.push(
                        resolver
                            .reference(cluster)
                            .with_context(|| format!("clusterNetwork {cluster:?}"))?,
                    );
                }
                if !conf.system_namespaces.contains(&pod_namespace) {
                    for name in &conf.default_networks {
                        selections.push(
                            resolver
                                .reference(name)
                                .with_context(|| format!("defaultNetworks {name:?}"))?,
                        );
                    }
                }
            }
            None => {
                for (i, d) in conf.delegates.iter().enumerate() {
                    if i == 0 && !selections.is_empty() {
                        continue;
                    }
                    let net = NetworkConfig::from_value(d.clone(), conf.cni_version)
                        .with_context(|| format!("multihome config \"delegates\"[{i}]"))?;
                    selections.push(Selection::plain(net));
                }
            }
        }
        if let Some(text) = annotation(annotations::NETWORKS) {
            let elements = annotations::parse_networks(text, &pod_namespace)
                .with_context(|| format!("pod annotation {}", annotations::NETWORKS))?;
            for el in &elements {
                if conf.namespace_isolation {
                    check_namespace_isolation(&pod_namespace, el, &conf.global_namespaces)?;
                }
                selections.push(resolver.element(el)?);
            }
        }
        Ok(selections)
    }

    fn plan(&self, kube: Option<&Kube>) -> Result<Vec<Attachment>> {
        let attachments = plan(&self.env, &self.conf.runtime_config, self.selections(kube)?)?;
        for att in &attachments {
            validate_ifname(&att.ifname).with_context(|| format!("network {:?}", att.name))?;
        }
        Ok(attachments)
    }
}

/// A resolved NetworkAttachmentDefinition: its network and its `resourceName`.
type ResolvedNad = (NetworkConfig, Option<String>);

/// Resolves network references of one call, fetching each NetworkAttachmentDefinition once.
struct Resolver<'a> {
    conf: &'a NetConf,
    kube: Option<&'a Kube>,
    nads: HashMap<(String, String), Option<ResolvedNad>>,
    devices: Option<Devices>,
}

impl Resolver<'_> {
    /// A NAD as a network config plus its `resourceName`; `None` when it does not exist.
    fn nad(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(NetworkConfig, Option<String>)>> {
        let Some(kube) = self.kube else {
            return Ok(None);
        };
        let key = (namespace.to_string(), name.to_string());
        if let Some(hit) = self.nads.get(&key) {
            return Ok(hit.clone());
        }
        let resolved = match kube.client.get_nad(namespace, name)? {
            None => None,
            Some(nad) => {
                let what = format!("NetworkAttachmentDefinition {namespace}/{name}");
                let network = if nad.spec.config.trim().is_empty() {
                    find_network_by_name(name, &self.conf.conf_dir, self.conf.cni_version)
                        .with_context(|| format!("{what} has no spec.config"))?
                } else {
                    let mut value: Value = serde_json::from_str(&nad.spec.config).map_err(|e| {
                        coded(
                            Code::InvalidConfig,
                            format!("{what}: spec.config is not valid JSON: {e}"),
                        )
                    })?;
                    if let Some(obj) = value.as_object_mut() {
                        if obj
                            .get("name")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                        {
                            obj.insert("name".into(), json!(name));
                        }
                    }
                    NetworkConfig::from_value(value, self.conf.cni_version)
                        .with_context(|| what.clone())?
                };
                let resource = nad
                    .metadata
                    .annotations
                    .get(annotations::RESOURCE_NAME)
                    .filter(|r| !r.is_empty())
                    .cloned();
                Some((network, resource))
            }
        };
        self.nads.insert(key, resolved.clone());
        Ok(resolved)
    }

    /// `clusterNetwork`/`defaultNetworks`: a NAD in `multusNamespace` when the value is a plain
    /// name and the API is available, else a file, a directory or a name in `confDir`.
    fn reference(&mut self, reference: &str) -> Result<Selection> {
        if !reference.contains('/') {
            let ns = self.conf.multus_namespace.clone();
            if let Some((network, _)) = self.nad(&ns, reference)? {
                let mut sel = Selection::plain(network);
                sel.name = format!("{ns}/{reference}");
                return Ok(sel);
            }
        }
        resolve_network(reference, &self.conf.conf_dir, self.conf.cni_version).map(Selection::plain)
    }

    /// An annotation element: its NAD (which must exist), device and requests.
    fn element(&mut self, el: &NetworkSelection) -> Result<Selection> {
        let (network, resource) = self.nad(&el.namespace, &el.name)?.ok_or_else(|| {
            coded(
                Code::InvalidConfig,
                format!(
                    "NetworkAttachmentDefinition {} not found: is it created, and is the k8s.cni.cncf.io CRD installed?",
                    el.qualified_name()
                ),
            )
        })?;
        let Some(resource) = resource else {
            return Selection::from_element(el, network, None);
        };
        let id = self
            .device(&resource)
            .with_context(|| format!("network {:?}", el.qualified_name()))?;
        let info = device_info(&self.conf.device_info_dir, &resource, &id);
        let mut sel = Selection::from_element(el, network, Some(id))?;
        sel.device_info = info;
        Ok(sel)
    }

    fn device(&mut self, resource: &str) -> Result<String> {
        let devices = match self.devices.take() {
            Some(d) => d,
            None => {
                let uid = self
                    .kube
                    .and_then(|k| k.pod.as_ref())
                    .map(|p| p.metadata.uid.as_str())
                    .unwrap_or_default();
                let path = &self.conf.kubelet_checkpoint_file;
                let bytes = std::fs::read(path)
                    .with_context(|| format!("reading kubelet checkpoint {}", path.display()))?;
                Devices::from_checkpoint(&bytes, uid)?
            }
        };
        self.devices.insert(devices).take(resource)
    }
}

/// The device plugin's device-info file for a device (NPWG device-info spec), if it wrote one:
/// `<dir>/dp/<resource with '/' as '-'>-<device ID with '/' as '-'>-device.json`.
fn device_info(dir: &std::path::Path, resource: &str, id: &str) -> Option<Value> {
    let file = dir.join("dp").join(format!(
        "{}-{}-device.json",
        resource.replace('/', "-"),
        id.replace('/', "-")
    ));
    let bytes = std::fs::read(&file).ok()?;
    serde_json::from_slice(&bytes)
        .map_err(|e| log::warn!("ignoring device-info {}: {e}", file.display()))
        .ok()
}

/// ADD: attach every planned network; returns the cluster network's result in the caller's
/// version. On failure nothing stays attached.
pub fn add(inv: &Invocation) -> Result<Value> {
    wait_for_readiness(&inv.conf)?;
    // The pod's interfaces are listed over netlink while the API is asked about the pod; a bad
    // CNI_NETNS is reported after the config's own errors.
    let (kube, pod_links) = std::thread::scope(|s| {
        let links = s.spawn(|| -> Result<(NetNs, Vec<String>)> {
            let netns = NetNs::open(inv.env.netns.as_deref().unwrap_or_default())?;
            let names = netns.link_names()?;
            Ok((netns, names))
        });
        (inv.kube(true), links.join())
    });
    let kube = kube?;
    let attachments = inv.plan(kube.as_ref())?;
    let runner = inv.runner();
    for att in &attachments {
        check_available(att, &runner.search_path)?;
    }
    let (netns, existing) = pod_links.map_err(|_| anyhow::anyhow!("netlink thread panicked"))??;
    for att in &attachments {
        if existing.contains(&att.ifname) {
            return Err(coded(
                Code::InvalidConfig,
                format!(
                    "interface {:?} (network {:?}) already exists in {}",
                    att.ifname,
                    att.name,
                    netns.path().display()
                ),
            ));
        }
    }

    let cache = inv.cache();
    let lock = cache.lock(&inv.env.container_id)?;
    if cache
        .load(&lock, &inv.env.container_id)
        .ok()
        .flatten()
        .is_some()
    {
        log::warn!(
            "ADD for {} replaces a cache entry that no DEL removed",
            inv.env.container_id
        );
    }
    let mut record = Record {
        kind: KIND.into(),
        container_id: inv.env.container_id.clone(),
        netns: inv.env.netns.clone(),
        ifname: inv.env.ifname.clone(),
        attachments: attachments
            .into_iter()
            .map(CachedAttachment::planned)
            .collect(),
    };
    // Recorded before the first delegate runs, so DEL knows the whole plan even if this process
    // is killed mid-ADD. Not fsynced (about 1 ms): after a power loss the pod's namespace is gone
    // too, and DEL without a record re-plans from the config and still releases IPAM.
    cache.save(&lock, &record, Durability::Atomic)?;

    let request = record
        .attachments
        .iter()
        .position(|a| a.attachment.default_route.is_some());
    let gateways = request
        .and_then(|r| record.attachments[r].attachment.default_route.clone())
        .unwrap_or_default();
    for k in 0..record.attachments.len() {
        let att = &record.attachments[k].attachment;
        match runner.add(att) {
            Ok(added) => {
                record.attachments[k].result = Some(added.result);
                record.attachments[k].host_link = added.host_link;
            }
            Err(err) => {
                let err = err.context(format!("adding network {:?} as {}", att.name, att.ifname));
                rollback(&runner, &cache, lock, &mut record, Some(k))?;
                return Err(err);
            }
        }
    }
    let mut default_index = 0;
    if let Some(r) = request {
        let ifname = record.attachments[r].attachment.ifname.clone();
        let settled = default_route::settle(&netns, &ifname, &gateways).and_then(|routes| {
            default_route::rewrite_results(&mut record, &ifname, &routes).map(|()| routes)
        });
        match settled {
            Ok(routes) if default_route::carries(&routes, &ifname) => default_index = r,
            Ok(_) => {}
            Err(err) => {
                rollback(&runner, &cache, lock, &mut record, None)?;
                return Err(err);
            }
        }
    }
    // The durable write of the record (an fsync, the slowest step of multihome's own) runs
    // while Kubernetes is told about the attachments.
    let (reported, saved) = std::thread::scope(|s| {
        let saver = s.spawn(|| cache.save(&lock, &record, Durability::Durable));
        let reported = kube.as_ref().map_or(Ok(()), |kube| {
            report_status(kube, &record, default_index).inspect(|()| send_events(kube, &record))
        });
        (reported, saver.join())
    });
    let saved = saved.map_err(|_| anyhow::anyhow!("cache writer panicked"))?;
    if let Err(err) = reported.and(saved) {
        rollback(&runner, &cache, lock, &mut record, None)?;
        return Err(err);
    }
    let first = record
        .attachments
        .first()
        .and_then(|a| a.result.as_ref())
        .context("no attachment")?;
    let version = record.attachments[0].attachment.network.cni_version;
    convert(first, version, inv.conf.cni_version).context("converting the cluster network's result")
}

/// Undoes a failed ADD. When attachment `failed` is the one that failed: it returned no result,
/// and a DEL of it often fails for the very reason its ADD did (a missing master, an unsupported
/// version), so its DEL is attempted and only logged and cannot make every later DEL fail too.
/// The attachments before it were fully added; if any of their DELs fails, the cache keeps just
/// those for the runtime's DEL to retry.
fn rollback(
    runner: &Runner,
    cache: &Cache,
    lock: Lock,
    record: &mut Record,
    failed: Option<usize>,
) -> Result<()> {
    if let Some(failed) = failed {
        let att = &record.attachments[failed];
        if let Err(e) = runner.del(&att.attachment, None, None) {
            log::warn!(
                "DEL of the failed network {:?} ({}): {e:#}",
                att.attachment.name,
                att.attachment.ifname
            );
        }
        record.attachments.truncate(failed);
    }
    match del_attachments(runner, &record.attachments) {
        Ok(()) => cache.remove(lock, &record.container_id),
        Err(e) => {
            log::error!("rollback after failed ADD left errors (cache kept for DEL): {e:#}");
            cache.save(&lock, record, Durability::Durable)
        }
    }
}

/// The status entries of the recorded attachments, results read in the 1.0 shape. The
/// attachment `default_index` is the pod's default network: the cluster network, or the one
/// that took over the default route.
fn status_of(record: &Record, default_index: usize) -> Result<Value> {
    let v1 = Version::new(1, 0, 0);
    let results: Vec<Value> = record
        .attachments
        .iter()
        .map(|a| {
            let r = a.result.as_ref().context("attachment without result")?;
            convert(r, a.attachment.network.cni_version, v1)
        })
        .collect::<Result<_>>()?;
    let inputs: Vec<StatusInput<'_>> = record
        .attachments
        .iter()
        .zip(&results)
        .enumerate()
        .map(|(i, (a, result))| StatusInput {
            name: &a.attachment.name,
            ifname: &a.attachment.ifname,
            default: i == default_index,
            result,
            device_info: a.attachment.device_info.as_ref(),
        })
        .collect();
    Ok(annotations::network_status(&inputs))
}

/// Writes `network-status` with a merge PATCH of the pod's status subresource: only that
/// annotation changes, so nothing else written by others can be lost. A pod deleted meanwhile
/// is not an error (its DEL is coming).
fn report_status(kube: &Kube, record: &Record, default_index: usize) -> Result<()> {
    let (Some(pod), Some(r)) = (&kube.pod, &kube.pod_ref) else {
        return Ok(());
    };
    let status = serde_json::to_string(&status_of(record, default_index)?)
        .context("encoding network-status")?;
    let patch = json!({"metadata": {"annotations": {annotations::NETWORK_STATUS: status}}});
    match kube.client.patch_pod_status(&r.namespace, &r.name, &patch) {
        Err(e) if CniError::from_anyhow(&e).msg.contains("pod not found") => {
            log::warn!(
                "pod {}/{} ({}) vanished before network-status was written",
                r.namespace,
                r.name,
                pod.metadata.uid
            );
            Ok(())
        }
        other => other.with_context(|| {
            format!(
                "writing {} of pod {}/{}",
                annotations::NETWORK_STATUS,
                r.namespace,
                r.name
            )
        }),
    }
}

/// An `AddedInterface` event per attachment. Best effort: an event failing never fails ADD.
fn send_events(kube: &Kube, record: &Record) {
    let (Some(pod), Some(r)) = (&kube.pod, &kube.pod_ref) else {
        return;
    };
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (i, a) in record.attachments.iter().enumerate() {
        let ips: Vec<&str> = a
            .result
            .as_ref()
            .and_then(|r| r.get("ips"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.get("address").and_then(Value::as_str))
            .collect();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": format!("{}.{:x}", r.name, nanos + i as u128), "namespace": r.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": r.namespace, "name": r.name,
                               "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version},
            "reason": "AddedInterface",
            "message": format!("Add {} [{}] from {}", a.attachment.ifname, ips.join(", "), a.attachment.name),
            "type": "Normal",
            "source": {"component": "multihome"},
            "reportingComponent": "multihome",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        if let Err(e) = kube.client.create_event(&r.namespace, &event) {
            log::warn!("event AddedInterface for {}/{}: {e:#}", r.namespace, r.name);
        }
    }
}

/// DEL: detach everything ADD recorded, in reverse, best effort, reporting every failure. Never
/// needs the API when the cache has the container. Succeeds when things are already gone; with
/// no usable cache it re-plans (from the API when it answers, else from the config) so delegates
/// still release their resources (IPAM) rather than leak them.
pub fn del(inv: &Invocation) -> Result<()> {
    let runner = inv.runner();
    let cache = inv.cache();
    let lock = cache.lock(&inv.env.container_id)?;
    let from_cache = match cache.load(&lock, &inv.env.container_id) {
        Ok(Some(record)) => Some(record.attachments),
        Ok(None) => None,
        Err(e) => {
            log::warn!(
                "ignoring unreadable cache for {}: {e:#}",
                inv.env.container_id
            );
            None
        }
    };
    let Some(attachments) = from_cache else {
        // Nothing says what was attached (no ADD, a rolled-back ADD, a lost cache): DEL every
        // planned network so IPAM is released, but a failure here proves nothing was leaked and
        // must not block the pod's teardown.
        let kube = inv.kube(false).unwrap_or_else(|e| {
            log::warn!(
                "DEL without cache: the API is unavailable, planning from the config alone: {e:#}"
            );
            None
        });
        match inv.plan(kube.as_ref()).or_else(|e| {
            log::warn!("DEL without cache: {e:#}; planning from the config alone");
            inv.plan(None)
        }) {
            Ok(atts) => {
                let atts: Vec<_> = atts.into_iter().map(CachedAttachment::planned).collect();
                if let Err(e) = del_attachments(&runner, &atts) {
                    log::warn!(
                        "DEL without a cache entry for {}: {e:#}",
                        inv.env.container_id
                    );
                }
            }
            Err(e) => log::warn!(
                "no cache for {} and the config cannot be planned: {e:#}",
                inv.env.container_id
            ),
        }
        return cache.remove(lock, &inv.env.container_id);
    };
    let outcome = del_attachments(&runner, &attachments);
    if outcome.is_ok() || !inv.conf.retry_delete_on_error {
        cache.remove(lock, &inv.env.container_id)?;
    }
    outcome
}

/// DEL of the given attachments in reverse, continuing past failures and reporting them all.
fn del_attachments(runner: &Runner, attachments: &[CachedAttachment]) -> Result<()> {
    let errors: Vec<String> = attachments
        .iter()
        .rev()
        .filter_map(|a| {
            runner
                .del(&a.attachment, a.result.as_ref(), a.host_link.as_deref())
                .err()
                .map(|e| {
                    format!(
                        "network {:?} ({}): {}",
                        a.attachment.name,
                        a.attachment.ifname,
                        CniError::from_anyhow(&e).msg
                    )
                })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(coded(
            Code::Internal,
            format!(
                "DEL failed for {} attachment(s): {}",
                errors.len(),
                errors.join(" | ")
            ),
        ))
    }
}

/// CHECK: every delegate, in order, against its cached result.
pub fn check(inv: &Invocation) -> Result<()> {
    if !inv.conf.cni_version.supports_check() {
        return Err(coded(
            Code::IncompatibleVersion,
            format!(
                "config version {} does not allow CHECK (needs 0.4.0 or later)",
                inv.conf.cni_version
            ),
        ));
    }
    let runner = inv.runner();
    let cache = inv.cache();
    let lock = cache.lock(&inv.env.container_id)?;
    let record = cache.load(&lock, &inv.env.container_id)?.ok_or_else(|| {
        coded(
            Code::UnknownContainer,
            format!(
                "no attachments recorded for container {}",
                inv.env.container_id
            ),
        )
    })?;
    for a in &record.attachments {
        let result = a.result.as_ref().ok_or_else(|| {
            coded(
                Code::UnknownContainer,
                format!(
                    "network {:?} ({}) was never fully added",
                    a.attachment.name, a.attachment.ifname
                ),
            )
        })?;
        runner
            .check(&a.attachment, result)
            .with_context(|| format!("checking network {:?}", a.attachment.name))?;
    }
    Ok(())
}

/// Waits (bounded) for `readinessindicatorfile`, the cluster network's signal that it is ready.
fn wait_for_readiness(conf: &NetConf) -> Result<()> {
    let Some(file) = &conf.readiness_indicator_file else {
        return Ok(());
    };
    let start = Instant::now();
    while !file.exists() {
        if start.elapsed() >= READINESS_TIMEOUT {
            return Err(coded(
                Code::TryAgainLater,
                format!(
                    "readinessindicatorfile {} still missing after {}s: is the cluster network ready?",
                    file.display(),
                    READINESS_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(READINESS_POLL);
    }
    Ok(())
}
