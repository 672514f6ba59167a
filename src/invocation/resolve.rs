//! What one call attaches: the networks of the pod, resolved from multihome's config
//! (`clusterNetwork`, `defaultNetworks`, `delegates`), the pod's annotations and its
//! NetworkAttachmentDefinitions, with the devices allocated to it; then planned.

use std::collections::HashMap;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::Invocation;
use crate::annotations::{self, NetworkSelection};
use crate::cni::env::validate_ifname;
use crate::config::{NetConf, NetworkConfig, find_network_by_name, resolve_network};
use crate::error::{Code, coded};
use crate::k8s::checkpoint::Devices;
use crate::k8s::{Cluster, NadReply, Pod, Reach};
use crate::plan::{Attachment, Selection, check_namespace_isolation, plan};
use crate::policy;

/// The pod a call is for, as `CNI_ARGS` names it.
#[derive(Debug, Clone)]
pub(crate) struct PodRef {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) uid: Option<String>,
}

/// What the cluster says about the pod of one call.
pub(crate) struct Kube<'a> {
    /// Where its NetworkAttachmentDefinitions come from, and status and events go.
    pub(crate) cluster: Box<dyn Cluster + 'a>,
    pub(crate) pod_ref: Option<PodRef>,
    /// `None` when there is no pod to ask about, or the cluster has no such pod.
    pub(crate) pod: Option<Pod>,
    /// What ADD would only warn about (a pod the API does not know, ...).
    pub(crate) warnings: Vec<String>,
}

/// Where one network every pod gets is configured.
enum Configured<'a> {
    /// An inline `delegates` entry.
    Inline(&'a Value),
    /// `clusterNetwork` or a `defaultNetworks` entry: a NAD name, a file, a directory or a
    /// `confDir` name.
    Reference {
        reference: &'a str,
        /// A `defaultNetworks` entry (not given to pods of `systemNamespaces`).
        in_default_networks: bool,
    },
}

/// The networks every pod gets, before its annotations, in order (the cluster network first),
/// each with the config key it is from: inline `delegates`, or `clusterNetwork` then
/// `defaultNetworks`.
fn configured(conf: &NetConf) -> Vec<(String, Configured<'_>)> {
    let Some(cluster) = &conf.cluster_network else {
        return conf
            .delegates
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    format!("multihome config \"delegates\"[{i}]"),
                    Configured::Inline(d),
                )
            })
            .collect();
    };
    fn reference<'a>(key: &str, reference: &'a str) -> (String, Configured<'a>) {
        let configured = Configured::Reference {
            reference,
            in_default_networks: key == "defaultNetworks",
        };
        (format!("{key} {reference:?}"), configured)
    }
    std::iter::once(reference("clusterNetwork", cluster))
        .chain(
            conf.default_networks
                .iter()
                .map(|n| reference("defaultNetworks", n)),
        )
        .collect()
}

/// The networks every pod gets, as far as they are known without asking the cluster: inline
/// `delegates`, and `clusterNetwork`/`defaultNetworks` given as a file, a directory or a
/// `confDir` name. A plain name found nowhere in `confDir` is, when the cluster is `reach`able,
/// a NetworkAttachmentDefinition (`Ok(None)`). Each comes with the config key it is from.
pub(crate) fn static_networks(
    conf: &NetConf,
    reach: &Reach<'_>,
) -> Vec<(String, Result<Option<NetworkConfig>>)> {
    configured(conf)
        .into_iter()
        .map(|(what, source)| {
            let net = match source {
                Configured::Inline(d) => {
                    NetworkConfig::from_value(d.clone(), conf.cni_version).map(Some)
                }
                Configured::Reference { reference, .. } => {
                    match resolve_network(reference, &conf.conf_dir, conf.cni_version) {
                        Err(_) if reach.configured() && !reference.contains('/') => Ok(None),
                        other => other.map(Some),
                    }
                }
            };
            (what, net)
        })
        .collect()
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

    /// Connects to the cluster and fetches the pod; `None` when the call has no cluster. On ADD
    /// a UID mismatch (the pod was deleted and recreated) is an error, except for static pods
    /// whose mirror has its own UID.
    pub(crate) fn kube<'a>(&self, reach: &'a Reach<'_>, adding: bool) -> Result<Option<Kube<'a>>> {
        let Some(cluster) = reach.connect()? else {
            return Ok(None);
        };
        let pod_ref = self.pod_ref();
        let mut pod = None;
        let mut warnings = Vec::new();
        if let Some(r) = &pod_ref {
            pod = cluster
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
            cluster,
            pod_ref,
            pod,
            warnings,
        }))
    }

    /// The networks of this call, cluster network first.
    fn selections(&self, kube: Option<&Kube<'_>>) -> Result<Vec<Selection>> {
        let conf = &self.conf;
        let mut resolver = Resolver {
            conf,
            kube,
            nads: HashMap::new(),
            fetched: HashMap::new(),
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

        let default_network = annotation(annotations::DEFAULT_NETWORK)
            .map(|text| {
                annotations::parse_default_network(text, &conf.multus_namespace)
                    .with_context(|| format!("pod annotation {}", annotations::DEFAULT_NETWORK))
            })
            .transpose()?;
        // Its error, if any, is reported where it always was: after the networks before it.
        let elements = annotation(annotations::NETWORKS).map(|text| {
            annotations::parse_networks(text, &pod_namespace)
                .with_context(|| format!("pod annotation {}", annotations::NETWORKS))
        });
        // The networks every pod gets, as this pod gets them: the default-network annotation
        // takes the cluster network's place, and pods of systemNamespaces get no
        // defaultNetworks.
        let configured: Vec<(String, Configured<'_>)> = configured(conf)
            .into_iter()
            .enumerate()
            .filter(|(i, (_, source))| match source {
                _ if *i == 0 => default_network.is_none(),
                Configured::Reference {
                    in_default_networks: true,
                    ..
                } => !conf.system_namespaces.contains(&pod_namespace),
                _ => true,
            })
            .map(|(_, c)| c)
            .collect();
        let isolated = |el: &NetworkSelection| {
            !conf.namespace_isolation
                || check_namespace_isolation(&pod_namespace, el, &conf.global_namespaces).is_ok()
        };

        // Every NAD the walk below asks for, fetched at once (where the cluster can) before it
        // walks: nothing the walk would not ask for, so no request a denial would have saved.
        let mut wanted: Vec<(String, String)> = Vec::new();
        let key = |el: &NetworkSelection| (el.namespace.clone(), el.name.clone());
        wanted.extend(default_network.as_ref().map(key));
        for (_, source) in &configured {
            // A path is a file; a plain name may be a NAD in multusNamespace.
            if let Configured::Reference { reference, .. } = source {
                if !reference.contains('/') {
                    wanted.push((conf.multus_namespace.clone(), reference.to_string()));
                }
            }
        }
        if let Some(Ok(elements)) = &elements {
            wanted.extend(elements.iter().filter(|el| isolated(el)).map(key));
        }
        resolver.prefetch(wanted);

        let mut selections = Vec::new();
        if let Some(el) = &default_network {
            selections.push(resolver.element(el)?);
        }
        for (what, source) in configured {
            selections.push(match source {
                Configured::Inline(d) => {
                    let net = NetworkConfig::from_value(d.clone(), conf.cni_version)
                        .with_context(|| what.clone())?;
                    Selection::plain(net, what)
                }
                Configured::Reference { reference, .. } => {
                    resolver.reference(reference).with_context(|| what)?
                }
            });
        }
        if let Some(elements) = elements {
            for el in &elements? {
                if conf.namespace_isolation {
                    check_namespace_isolation(&pod_namespace, el, &conf.global_namespaces)?;
                }
                selections.push(resolver.element(el)?);
            }
        }
        Ok(selections)
    }

    pub(crate) fn plan(&self, kube: Option<&Kube<'_>>) -> Result<Vec<Attachment>> {
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
    kube: Option<&'a Kube<'a>>,
    nads: HashMap<(String, String), NadState>,
    /// The cluster's answers fetched ahead of the walk, taken as the walk reaches each.
    fetched: HashMap<(String, String), Result<NadReply>>,
    devices: Option<Devices>,
}

impl Resolver<'_> {
    /// Asks the cluster for the NADs `wanted` (each once) in one go.
    fn prefetch(&mut self, mut wanted: Vec<(String, String)>) {
        let Some(kube) = self.kube else {
            return;
        };
        let mut seen = std::collections::HashSet::new();
        wanted.retain(|k| seen.insert(k.clone()));
        if wanted.len() < 2 {
            // Nothing to overlap: the walk asks for it itself.
            return;
        }
        let replies = kube.cluster.get_nads(&wanted);
        self.fetched = wanted.into_iter().zip(replies).collect();
    }

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
        let reply = match self.fetched.remove(&key) {
            Some(reply) => reply,
            None => kube.cluster.get_nad(namespace, name),
        };
        let state = match reply? {
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
                    Some(rules) => Some(policy::check(rules, namespace, name, &network.plugins)?),
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;
    use crate::cni::env::{CniEnv, Command};
    use crate::k8s::client::{NadSpec, ObjectMeta};
    use crate::k8s::{Nad, Patched};

    /// NADs in memory; records every request.
    #[derive(Default)]
    struct Recorder {
        nads: Vec<Nad>,
        asked: RefCell<Vec<String>>,
    }

    impl Cluster for Recorder {
        fn get_pod(&self, _: &str, _: &str) -> Result<Option<Pod>> {
            unreachable!("the pod is given")
        }
        fn get_nad(&self, namespace: &str, name: &str) -> Result<NadReply> {
            self.asked
                .borrow_mut()
                .push(format!("GET {namespace}/{name}"));
            Ok(self
                .nads
                .iter()
                .find(|n| n.metadata.namespace == namespace && n.metadata.name == name)
                .cloned()
                .map_or(NadReply::Missing, NadReply::Found))
        }
        fn get_nads(&self, keys: &[(String, String)]) -> Vec<Result<NadReply>> {
            let keys: Vec<String> = keys.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
            self.asked
                .borrow_mut()
                .push(format!("GET at once {}", keys.join(" ")));
            let quiet = Recorder {
                nads: self.nads.clone(),
                ..Recorder::default()
            };
            keys.iter()
                .map(|k| {
                    let (ns, n) = k.split_once('/').unwrap();
                    quiet.get_nad(ns, n)
                })
                .collect()
        }
        fn patch_pod_status(&self, _: &str, _: &str, _: &Value) -> Result<Patched> {
            unreachable!("planning writes nothing")
        }
        fn create_event(&self, _: &str, _: &Value) -> Result<()> {
            unreachable!("planning writes nothing")
        }
    }

    fn nad(namespace: &str, name: &str) -> Nad {
        Nad {
            metadata: ObjectMeta {
                namespace: namespace.into(),
                name: name.into(),
                ..ObjectMeta::default()
            },
            spec: NadSpec {
                config: json!({"cniVersion": "1.0.0", "type": "bridge"}).to_string(),
            },
        }
    }

    fn plan_for(conf: Value, networks: &str, cluster: &Recorder) -> Result<Vec<Attachment>> {
        let inv = Invocation::new(
            CniEnv {
                command: Command::Add,
                container_id: "c".into(),
                netns: None,
                ifname: "eth0".into(),
                args: vec![],
                path: vec![],
            },
            NetConf::parse(conf.to_string().as_bytes()).unwrap(),
        );
        let pod = Pod {
            metadata: ObjectMeta {
                namespace: "tenant".into(),
                name: "p".into(),
                annotations: BTreeMap::from([(annotations::NETWORKS.into(), networks.into())]),
                ..ObjectMeta::default()
            },
        };
        let kube = Kube {
            cluster: Box::new(cluster),
            pod_ref: None,
            pod: Some(pod),
            warnings: vec![],
        };
        inv.plan(Some(&kube))
    }

    fn conf() -> Value {
        json!({"cniVersion": "1.0.0", "name": "mh", "clusterNetwork": "primary",
               "multusNamespace": "kube-system"})
    }

    #[test]
    fn the_nads_of_a_call_are_asked_for_at_once_each_once_in_order() {
        let cluster = Recorder {
            nads: vec![
                nad("kube-system", "primary"),
                nad("tenant", "a"),
                nad("infra", "b"),
            ],
            ..Recorder::default()
        };
        let planned = plan_for(conf(), "a, infra/b, a@second", &cluster).unwrap();
        let names: Vec<&str> = planned.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            ["kube-system/primary", "tenant/a", "infra/b", "tenant/a"]
        );
        assert_eq!(
            *cluster.asked.borrow(),
            ["GET at once kube-system/primary tenant/a infra/b"]
        );
    }

    #[test]
    fn a_nad_the_isolation_denies_is_never_asked_for_and_errors_keep_their_order() {
        let cluster = Recorder {
            nads: vec![nad("kube-system", "primary"), nad("tenant", "a")],
            ..Recorder::default()
        };
        let mut isolated = conf();
        isolated["namespaceIsolation"] = json!(true);
        let e = plan_for(isolated, "a, infra/b", &cluster).unwrap_err();
        assert!(format!("{e:#}").contains("infra"), "{e:#}");
        assert_eq!(
            *cluster.asked.borrow(),
            ["GET at once kube-system/primary tenant/a"]
        );

        // A NAD that does not exist, then a bad annotation: the same errors as one at a time.
        let missing = plan_for(conf(), "absent", &cluster).unwrap_err();
        assert!(
            format!("{missing:#}").contains("tenant/absent not found"),
            "{missing:#}"
        );
        let bad = plan_for(conf(), "[{\"name\": ", &cluster).unwrap_err();
        assert!(
            format!("{bad:#}").contains(annotations::NETWORKS),
            "{bad:#}"
        );
    }
}
