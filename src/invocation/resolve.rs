//! What one call attaches: the networks of the pod, resolved from multihome's config
//! (`clusterNetwork`, `defaultNetworks`, `delegates`), the pod's annotations and its
//! NetworkAttachmentDefinitions, with the devices allocated to it; then planned.

use std::collections::HashMap;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::annotations::{self, NetworkSelection};
use crate::cni::env::validate_ifname;
use crate::config::{NetConf, NetworkConfig, find_network_by_name, resolve_network};
use crate::error::{Code, coded};
use crate::flows::Invocation;
use crate::k8s::checkpoint::Devices;
use crate::k8s::{Access, Client, Nad, NadReply, Pod};
use crate::plan::{Attachment, Selection, check_namespace_isolation, plan};
use crate::policy;

/// The pod a call is for, as `CNI_ARGS` names it.
#[derive(Debug, Clone)]
pub(crate) struct PodRef {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) uid: Option<String>,
}

/// Where a call's NetworkAttachmentDefinitions come from.
pub(crate) enum Api {
    /// The API server (which the call also reports to).
    Live(Client),
    /// NADs given by hand (`explain` offline), by namespace and name.
    Offline(HashMap<(String, String), Nad>),
}

/// What Kubernetes says about the pod of one call.
pub(crate) struct Kube {
    pub(crate) api: Api,
    pub(crate) pod_ref: Option<PodRef>,
    /// `None` when there is no pod to ask about, or the API has no such pod.
    pub(crate) pod: Option<Pod>,
    /// What ADD would only warn about (a pod the API does not know, ...).
    pub(crate) warnings: Vec<String>,
}

impl Kube {
    /// The API client, when the call talks to a live API server.
    pub(crate) fn client(&self) -> Option<&Client> {
        match &self.api {
            Api::Live(c) => Some(c),
            Api::Offline(_) => None,
        }
    }

    fn get_nad(&self, namespace: &str, name: &str) -> Result<NadReply> {
        match &self.api {
            Api::Live(c) => c.get_nad(namespace, name),
            Api::Offline(nads) => Ok(nads
                .get(&(namespace.to_string(), name.to_string()))
                .cloned()
                .map_or(NadReply::Missing, NadReply::Found)),
        }
    }
}

impl Invocation {
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
    pub(crate) fn kube(&self, adding: bool) -> Result<Option<Kube>> {
        let Some(client) = self.client()? else {
            return Ok(None);
        };
        let pod_ref = self.pod_ref();
        let mut pod = None;
        let mut warnings = Vec::new();
        if let Some(r) = &pod_ref {
            pod = client
                .get_pod(&r.namespace, &r.name)
                .with_context(|| format!("getting pod {}/{}", r.namespace, r.name))?;
            match &pod {
                None => {
                    let warning = format!(
                        "pod {}/{} not found: attaching the cluster network only",
                        r.namespace, r.name
                    );
                    log::warn!("{warning}");
                    warnings.push(warning);
                }
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
            api: Api::Live(client),
            pod_ref,
            pod,
            warnings,
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
                    let what = format!("multihome config \"delegates\"[{i}]");
                    let net = NetworkConfig::from_value(d.clone(), conf.cni_version)
                        .with_context(|| what.clone())?;
                    selections.push(Selection::plain(net, what));
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

    pub(crate) fn plan(&self, kube: Option<&Kube>) -> Result<Vec<Attachment>> {
        let attachments = plan(&self.env, &self.conf.runtime_config, self.selections(kube)?)?;
        for att in &attachments {
            validate_ifname(&att.ifname).with_context(|| format!("network {:?}", att.name))?;
        }
        Ok(attachments)
    }
}

/// A resolved NetworkAttachmentDefinition.
#[derive(Clone)]
struct ResolvedNad {
    network: NetworkConfig,
    /// Its `resourceName`.
    resource: Option<String>,
    /// The `nadPolicy` rule that admitted it.
    rule: Option<usize>,
}

/// What one call knows of a NetworkAttachmentDefinition.
#[derive(Clone)]
enum NadState {
    Found(ResolvedNad),
    Missing,
    NotServed(String),
}

/// Resolves network references of one call, fetching each NetworkAttachmentDefinition once.
struct Resolver<'a> {
    conf: &'a NetConf,
    kube: Option<&'a Kube>,
    nads: HashMap<(String, String), NadState>,
    devices: Option<Devices>,
}

impl Resolver<'_> {
    /// A NAD as a network config plus its `resourceName`; `None` when it does not exist. The
    /// NAD resource type not being served (no CRD, or not Established yet) is an error to retry.
    fn nad(&mut self, namespace: &str, name: &str) -> Result<Option<ResolvedNad>> {
        match self.lookup(namespace, name)? {
            NadState::Found(nad) => Ok(Some(nad)),
            NadState::Missing => Ok(None),
            NadState::NotServed(message) => Err(coded(
                Code::TryAgainLater,
                format!(
                    "NetworkAttachmentDefinition {namespace}/{name}: the API does not serve network-attachment-definitions.k8s.cni.cncf.io (the CRD is not installed or not yet Established): {message}"
                ),
            )),
        }
    }

    /// A NAD, fetched once per call.
    fn lookup(&mut self, namespace: &str, name: &str) -> Result<NadState> {
        let Some(kube) = self.kube else {
            return Ok(NadState::Missing);
        };
        let key = (namespace.to_string(), name.to_string());
        if let Some(hit) = self.nads.get(&key) {
            return Ok(hit.clone());
        }
        let state = match kube.get_nad(namespace, name)? {
            NadReply::Missing => NadState::Missing,
            NadReply::NotServed(m) => NadState::NotServed(m),
            NadReply::Found(nad) => {
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
                // Whatever the NAD resolved to (a confDir file included) is judged by the
                // namespace the NAD lives in: that is who could write it.
                let rule = match &self.conf.nad_policy {
                    Some(rules) => Some(policy::check(rules, namespace, name, &network)?),
                    None => None,
                };
                let resource = nad
                    .metadata
                    .annotations
                    .get(annotations::RESOURCE_NAME)
                    .filter(|r| !r.is_empty())
                    .cloned();
                NadState::Found(ResolvedNad {
                    network,
                    resource,
                    rule,
                })
            }
        };
        self.nads.insert(key, state.clone());
        Ok(state)
    }

    /// `clusterNetwork`/`defaultNetworks`: a NAD in `multusNamespace` when the value is a plain
    /// name and the API serves one, else a file, a directory or a name in `confDir`.
    fn reference(&mut self, reference: &str) -> Result<Selection> {
        if !reference.contains('/') {
            let ns = self.conf.multus_namespace.clone();
            if let NadState::Found(nad) = self.lookup(&ns, reference)? {
                let mut sel = Selection::plain(
                    nad.network,
                    format!("NetworkAttachmentDefinition {ns}/{reference}"),
                );
                sel.name = format!("{ns}/{reference}");
                sel.policy_rule = nad.rule;
                return Ok(sel);
            }
        }
        let source = if reference.contains('/') {
            format!("file {reference}")
        } else {
            format!(
                "confDir {} (network {reference:?})",
                self.conf.conf_dir.display()
            )
        };
        resolve_network(reference, &self.conf.conf_dir, self.conf.cni_version)
            .map(|net| Selection::plain(net, source))
    }

    /// An annotation element: its NAD (which must exist), device and requests.
    fn element(&mut self, el: &NetworkSelection) -> Result<Selection> {
        let nad = self.nad(&el.namespace, &el.name)?.ok_or_else(|| {
            coded(
                Code::InvalidConfig,
                format!(
                    "NetworkAttachmentDefinition {} not found",
                    el.qualified_name()
                ),
            )
        })?;
        let Some(resource) = nad.resource else {
            let mut sel = Selection::from_element(el, nad.network, None)?;
            sel.policy_rule = nad.rule;
            return Ok(sel);
        };
        let id = self
            .device(&resource)
            .with_context(|| format!("network {:?}", el.qualified_name()))?;
        let info = device_info(&self.conf.device_info_dir, &resource, &id);
        let mut sel = Selection::from_element(el, nad.network, Some(id))?;
        sel.device_info = info;
        sel.policy_rule = nad.rule;
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
