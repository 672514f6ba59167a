//! multihome's own configuration (the Multus keys, same names and defaults) and the delegate
//! network configurations it refers to.
//!
//! [`NetConf::parse`] and [`NetworkConfig::from_value`] are pure. The loaders at the bottom read
//! `clusterNetwork`/`defaultNetworks` from files, directories or `confDir`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::cni::env::is_valid_name;
use crate::cni::version::Version;
use crate::error::{CniError, Code, coded};
use crate::k8s::Timeouts;
use crate::k8s::socket::{DEFAULT_SOCKET, DEFAULT_WAIT, DaemonSocket};
use crate::logfile::LogOptions;
use crate::policy::Rule;

/// Default `confDir`, as in Multus.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/multus/net.d";
/// Default `cniDir` (the cache), as in Multus.
pub const DEFAULT_CNI_DIR: &str = "/var/lib/cni/multus";
/// Default `binDir`, searched before `CNI_PATH`.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";

/// Log verbosity, Multus names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing but fatal conditions.
    Panic,
    /// Errors.
    Error,
    /// Informational messages.
    Verbose,
    /// Everything.
    Debug,
}

impl LogLevel {
    /// A `logLevel` value, as Multus spells it.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "panic" => LogLevel::Panic,
            "error" => LogLevel::Error,
            "verbose" => LogLevel::Verbose,
            "debug" => LogLevel::Debug,
            _ => return None,
        })
    }
}

/// The wire form of multihome's configuration: every key optional, unknown keys ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(default)]
    capabilities: Map<String, Value>,
    #[serde(default)]
    runtime_config: Map<String, Value>,
    delegates: Option<Vec<Value>>,
    cluster_network: Option<String>,
    #[serde(default)]
    default_networks: Vec<String>,
    kubeconfig: Option<PathBuf>,
    conf_dir: Option<PathBuf>,
    cni_dir: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
    log_file: Option<PathBuf>,
    log_level: Option<String>,
    log_to_stderr: Option<bool>,
    #[serde(rename = "readinessindicatorfile", alias = "readinessIndicatorFile")]
    readiness_indicator_file: Option<PathBuf>,
    #[serde(default)]
    retry_delete_on_error: bool,
    #[serde(default)]
    namespace_isolation: bool,
    global_namespaces: Option<String>,
    system_namespaces: Option<Vec<String>>,
    multus_namespace: Option<String>,
    auxiliary_c_n_i_chain_name: Option<String>,
    #[serde(default)]
    log_options: Map<String, Value>,
    api_connect_timeout: Option<f64>,
    api_timeout: Option<f64>,
    api_attempts: Option<u32>,
    delegate_timeout: Option<f64>,
    daemon_socket: Option<PathBuf>,
    daemon_timeout: Option<f64>,
    nad_policy: Option<Vec<Rule>>,
    kubelet_checkpoint_file: Option<PathBuf>,
    device_info_dir: Option<PathBuf>,
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        deserialize_with = "present"
    )]
    valid_attachments: Option<Value>,
    #[serde(rename = "cni.dev/attachments", default, deserialize_with = "present")]
    attachments: Option<Value>,
}

/// A key that is present, `null` included (`Option<Value>` alone reads `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// multihome's validated configuration, with Multus defaults applied.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// `cniVersion` of multihome's own config: the version results are answered in.
    pub cni_version: Version,
    /// `name`.
    pub name: String,
    /// `capabilities` multihome declares to its runtime.
    pub capabilities: Map<String, Value>,
    /// `runtimeConfig` from the runtime: pod-wide, so it goes to the cluster network only.
    pub runtime_config: Map<String, Value>,
    /// Inline `delegates` (used when `clusterNetwork` is absent).
    pub delegates: Vec<Value>,
    /// `clusterNetwork`: a file, a directory, or a network name.
    pub cluster_network: Option<String>,
    /// `defaultNetworks`, attached to every pod after the cluster network.
    pub default_networks: Vec<String>,
    /// `kubeconfig` path.
    pub kubeconfig: Option<PathBuf>,
    /// `confDir`.
    pub conf_dir: PathBuf,
    /// `cniDir`: where the per-container cache lives.
    pub cni_dir: PathBuf,
    /// `binDir`, searched before `CNI_PATH`.
    pub bin_dir: PathBuf,
    /// `logFile`.
    pub log_file: Option<PathBuf>,
    /// `logLevel`.
    pub log_level: LogLevel,
    /// `logToStderr`.
    pub log_to_stderr: bool,
    /// `readinessindicatorfile`: ADD waits for it to exist.
    pub readiness_indicator_file: Option<PathBuf>,
    /// `retryDeleteOnError`: keep the cache when a delegate DEL fails, so DEL can be retried.
    pub retry_delete_on_error: bool,
    /// `namespaceIsolation`.
    pub namespace_isolation: bool,
    /// `globalNamespaces` (comma separated in the config).
    pub global_namespaces: Vec<String>,
    /// `systemNamespaces`: pods there get no `defaultNetworks`.
    pub system_namespaces: Vec<String>,
    /// `multusNamespace`: where `clusterNetwork`/`defaultNetworks` NADs live.
    pub multus_namespace: String,
    /// `auxiliaryCNIChainName`.
    pub auxiliary_cni_chain_name: Option<String>,
    /// `logOptions`: rotation of `logFile`.
    pub log_options: LogOptions,
    /// `apiConnectTimeout`, `apiTimeout` (seconds) and `apiAttempts`.
    pub api_timeouts: Timeouts,
    /// `delegateTimeout`: how long one delegate call may take before it is killed.
    pub delegate_timeout: Duration,
    /// `daemonSocket` (`""`: none) and `daemonTimeout` (seconds): the node daemon a call asks
    /// first for the pod and its NADs.
    pub daemon_socket: Option<DaemonSocket>,
    /// `nadPolicy`: what NADs of which namespaces may use (`None`: anything).
    pub nad_policy: Option<Vec<Rule>>,
    /// `kubeletCheckpointFile`: where device-plugin allocations are read for `resourceName`.
    pub kubelet_checkpoint_file: PathBuf,
    /// `deviceInfoDir`: the device-info directory of the NPWG device-info spec.
    pub device_info_dir: PathBuf,
    /// GC's `cni.dev/valid-attachments` and the older `cni.dev/attachments`, as given (checked
    /// by GC only: no other command reads them).
    pub gc_attachments: [Option<Value>; 2],
}

/// Default `delegateTimeout`: longer than any real IPAM takes (DHCP included), and as long as
/// kubelet's default runtime request timeout, past which the runtime gives up anyway.
pub const DEFAULT_DELEGATE_TIMEOUT: Duration = Duration::from_secs(120);

/// Default `deviceInfoDir`.
pub const DEFAULT_DEVICE_INFO_DIR: &str = "/var/run/k8s.cni.cncf.io/devinfo";

/// Default `kubeletCheckpointFile`.
pub const DEFAULT_CHECKPOINT_FILE: &str =
    "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint";

fn seconds(key: &str, value: Option<f64>, default: Duration) -> Result<Duration> {
    match value {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(coded(
            Code::InvalidConfig,
            format!("multihome config {key:?}: {s} is not a number of seconds in (0, 3600]"),
        )),
    }
}

impl NetConf {
    /// Parses multihome's config from stdin bytes.
    pub fn parse(bytes: &[u8]) -> Result<NetConf> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let wire: Wire = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let code = if e.inner().is_data() {
                Code::InvalidConfig
            } else {
                Code::Decode
            };
            coded(
                code,
                format!("invalid multihome config: key {path:?}: {}", e.into_inner()),
            )
        })?;
        let cni_version = Version::parse_supported(wire.cni_version.as_deref().unwrap_or_default())
            .context("multihome config \"cniVersion\"")?;
        let name = wire.name.unwrap_or_default();
        if !is_valid_name(&name) {
            return Err(coded(
                Code::InvalidConfig,
                format!(
                    "multihome config \"name\" {name:?} is missing or invalid (^[a-zA-Z0-9][a-zA-Z0-9_.-]*$)"
                ),
            ));
        }
        let delegates = wire.delegates.unwrap_or_default();
        let cluster_network = wire.cluster_network.filter(|s| !s.is_empty());
        if delegates.is_empty() && cluster_network.is_none() {
            return Err(coded(
                Code::InvalidConfig,
                "multihome config needs \"clusterNetwork\" or a non-empty \"delegates\" list",
            ));
        }
        let log_level = match wire.log_level.as_deref() {
            None | Some("") => LogLevel::Error,
            Some(s) => LogLevel::parse(s).ok_or_else(|| {
                coded(
                    Code::InvalidConfig,
                    format!("multihome config \"logLevel\" {s:?}: expected debug, verbose, error or panic"),
                )
            })?,
        };
        let global_namespaces = match wire.global_namespaces.as_deref() {
            None | Some("") => vec!["default".to_string()],
            Some(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        };
        let defaults = Timeouts::default();
        let api_timeouts = Timeouts {
            connect: seconds(
                "apiConnectTimeout",
                wire.api_connect_timeout,
                defaults.connect,
            )?,
            total: seconds("apiTimeout", wire.api_timeout, defaults.total)?,
            attempts: match wire.api_attempts {
                None => defaults.attempts,
                Some(n @ 1..=10) => n,
                Some(n) => {
                    return Err(coded(
                        Code::InvalidConfig,
                        format!("multihome config \"apiAttempts\": {n} is not in 1..=10"),
                    ));
                }
            },
        };
        Ok(NetConf {
            cni_version,
            name,
            capabilities: wire.capabilities,
            runtime_config: wire.runtime_config,
            delegates,
            cluster_network,
            default_networks: wire.default_networks,
            kubeconfig: wire.kubeconfig.filter(|p| !p.as_os_str().is_empty()),
            conf_dir: wire.conf_dir.unwrap_or_else(|| DEFAULT_CONF_DIR.into()),
            cni_dir: wire.cni_dir.unwrap_or_else(|| DEFAULT_CNI_DIR.into()),
            bin_dir: wire.bin_dir.unwrap_or_else(|| DEFAULT_BIN_DIR.into()),
            log_file: wire.log_file.filter(|p| !p.as_os_str().is_empty()),
            log_level,
            log_to_stderr: wire.log_to_stderr.unwrap_or(true),
            readiness_indicator_file: wire
                .readiness_indicator_file
                .filter(|p| !p.as_os_str().is_empty()),
            retry_delete_on_error: wire.retry_delete_on_error,
            namespace_isolation: wire.namespace_isolation,
            global_namespaces,
            system_namespaces: wire
                .system_namespaces
                .unwrap_or_else(|| vec!["kube-system".into()]),
            multus_namespace: wire
                .multus_namespace
                .unwrap_or_else(|| "kube-system".into()),
            auxiliary_cni_chain_name: wire.auxiliary_c_n_i_chain_name.filter(|s| !s.is_empty()),
            log_options: LogOptions::parse(&wire.log_options)?,
            api_timeouts,
            delegate_timeout: seconds(
                "delegateTimeout",
                wire.delegate_timeout,
                DEFAULT_DELEGATE_TIMEOUT,
            )?,
            daemon_socket: match wire.daemon_socket {
                Some(p) if p.as_os_str().is_empty() => None,
                path => Some(DaemonSocket {
                    path: path.unwrap_or_else(|| DEFAULT_SOCKET.into()),
                    wait: seconds("daemonTimeout", wire.daemon_timeout, DEFAULT_WAIT)?,
                }),
            },
            nad_policy: wire.nad_policy,
            kubelet_checkpoint_file: wire
                .kubelet_checkpoint_file
                .unwrap_or_else(|| DEFAULT_CHECKPOINT_FILE.into()),
            device_info_dir: wire
                .device_info_dir
                .unwrap_or_else(|| DEFAULT_DEVICE_INFO_DIR.into()),
            gc_attachments: [wire.valid_attachments, wire.attachments],
        })
    }
}

/// A delegate network: a conflist, or a single plugin config seen as a one-plugin list (the
/// plugin then carries its own `name` and `cniVersion`, so nothing changes for it).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The network name, injected into every plugin.
    pub name: String,
    /// The version the plugins are called with.
    pub cni_version: Version,
    /// Skip CHECK for this network.
    pub disable_check: bool,
    /// Skip GC for this network (`disableGC`).
    pub disable_gc: bool,
    /// The plugin configs, in chain order, exactly as given.
    pub plugins: Vec<Value>,
}

impl NetworkConfig {
    /// Reads a conf or conflist. `fallback_version` is used when it declares none.
    pub fn from_value(value: Value, fallback_version: Version) -> Result<NetworkConfig> {
        let Value::Object(mut obj) = value else {
            return Err(coded(
                Code::InvalidConfig,
                "network config is not a JSON object",
            ));
        };
        let name = match obj.get("name") {
            Some(Value::String(s)) if is_valid_name(s) => s.clone(),
            Some(Value::String(s)) if !s.is_empty() => {
                return Err(coded(
                    Code::InvalidConfig,
                    format!("network \"name\" {s:?} is invalid (^[a-zA-Z0-9][a-zA-Z0-9_.-]*$)"),
                ));
            }
            _ => return Err(coded(Code::InvalidConfig, "network config has no \"name\"")),
        };
        let cni_version =
            network_version(&obj, fallback_version).with_context(|| format!("network {name:?}"))?;
        let plugins = match obj.remove("plugins") {
            Some(Value::Array(plugins)) => {
                if plugins.is_empty() {
                    return Err(coded(
                        Code::InvalidConfig,
                        format!("network {name:?}: \"plugins\" is empty"),
                    ));
                }
                plugins
            }
            Some(_) => {
                return Err(coded(
                    Code::InvalidConfig,
                    format!("network {name:?}: \"plugins\" is not a list"),
                ));
            }
            None if obj.contains_key("type") => vec![Value::Object(obj.clone())],
            None => {
                return Err(coded(
                    Code::InvalidConfig,
                    format!("network {name:?} has neither \"type\" nor \"plugins\""),
                ));
            }
        };
        for (i, plugin) in plugins.iter().enumerate() {
            plugin_type(plugin).with_context(|| format!("network {name:?}, plugin {i}"))?;
        }
        Ok(NetworkConfig {
            disable_check: flag(&obj, "disableCheck")
                .with_context(|| format!("network {name:?}"))?,
            disable_gc: flag(&obj, "disableGC").with_context(|| format!("network {name:?}"))?,
            name,
            cni_version,
            plugins,
        })
    }
}

/// A boolean key of a conflist; libcni >= 1.2 also takes the strings "true" and "false".
fn flag(obj: &Map<String, Value>, key: &str) -> Result<bool> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(other) => Err(coded(
            Code::InvalidConfig,
            format!("{key:?} must be a boolean, got {other}"),
        )),
    }
}

/// The highest supported version of `{cniVersion} ∪ cniVersions` (spec 1.1.0 selection rule).
fn network_version(obj: &Map<String, Value>, fallback: Version) -> Result<Version> {
    let mut candidates = Vec::new();
    if let Some(v) = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
    {
        candidates.push(Version::parse(v)?);
    }
    for v in obj
        .get("cniVersions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        candidates.push(Version::parse(v.as_str().unwrap_or_default())?);
    }
    if candidates.is_empty() {
        return Ok(fallback);
    }
    candidates
        .iter()
        .copied()
        .filter(|v| v.is_supported())
        .max()
        .ok_or_else(|| {
            let list: Vec<_> = candidates.iter().map(Version::to_string).collect();
            coded(
                Code::IncompatibleVersion,
                format!("no supported CNI version among {}", list.join(", ")),
            )
        })
}

/// A plugin's `type`, which names a binary and so must not be a path.
pub fn plugin_type(plugin: &Value) -> Result<&str> {
    match plugin.get("type") {
        Some(Value::String(t)) if t.is_empty() => {
            Err(coded(Code::InvalidConfig, "\"type\" is empty"))
        }
        Some(Value::String(t)) if t.contains('/') || t == "." || t == ".." => Err(coded(
            Code::InvalidConfig,
            format!("\"type\" {t:?} must be a plugin name, not a path"),
        )),
        Some(Value::String(t)) => Ok(t),
        Some(_) => Err(coded(Code::InvalidConfig, "\"type\" is not a string")),
        None => Err(coded(Code::InvalidConfig, "plugin has no \"type\"")),
    }
}

const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// The config files of a directory, sorted by name (as libcni's `ConfFiles`).
pub(crate) fn config_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e))
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The runtime's config directory, where `explain` and the other tools look for multihome's
/// config by default.
pub const RUNTIME_CONF_DIR: &str = "/etc/cni/net.d";

/// multihome's config as the runtime would pass it on stdin, from `path` (a `.conf` of type
/// `multihome`, or a conflist with a `multihome` plugin, which gets the list's `name` and
/// `cniVersion` as libcni gives them), or, without a path, from the first config file of
/// `dir`, the one a runtime uses. Returns the file and the stdin bytes.
pub fn runtime_config(path: Option<&Path>, dir: &Path) -> Result<(PathBuf, Vec<u8>)> {
    let file = match path {
        Some(p) => p.to_path_buf(),
        None => config_files(dir)?.into_iter().next().ok_or_else(|| {
            coded(
                Code::InvalidConfig,
                format!("no .conf, .conflist or .json file in {}", dir.display()),
            )
        })?,
    };
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| coded(Code::Decode, format!("{}: {e}", file.display())))?;
    let is_ours = |v: &Value| v.get("type").and_then(Value::as_str) == Some("multihome");
    if is_ours(&value) {
        return Ok((file, bytes));
    }
    let plugin = value
        .get("plugins")
        .and_then(Value::as_array)
        .and_then(|p| p.iter().find(|p| is_ours(p)))
        .ok_or_else(|| {
            coded(
                Code::InvalidConfig,
                format!(
                    "{} is not multihome's config (no plugin of type \"multihome\"); name it with --config",
                    file.display()
                ),
            )
        })?;
    let mut conf = plugin.clone();
    for key in ["name", "cniVersion"] {
        if let Some(v) = value.get(key) {
            conf[key] = v.clone();
        }
    }
    Ok((
        file,
        serde_json::to_vec(&conf).context("encoding the config")?,
    ))
}

/// Reads one conf/conflist file.
pub fn load_network_file(path: &Path, fallback_version: Version) -> Result<NetworkConfig> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading network config {}", path.display()))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        coded(
            Code::Decode,
            format!("network config {}: {e}", path.display()),
        )
    })?;
    NetworkConfig::from_value(value, fallback_version)
        .with_context(|| format!("network config {}", path.display()))
}

/// Resolves a `clusterNetwork`/`defaultNetworks` value: a path (file, or directory whose first
/// config file is used) when it contains `/`, otherwise the network `name` of a file in
/// `conf_dir`.
pub fn resolve_network(
    reference: &str,
    conf_dir: &Path,
    fallback_version: Version,
) -> Result<NetworkConfig> {
    if reference.contains('/') {
        let path = Path::new(reference);
        if path.is_dir() {
            let first = config_files(path)?.into_iter().next().ok_or_else(|| {
                coded(
                    Code::InvalidConfig,
                    format!("directory {reference} holds no .conf, .conflist or .json file"),
                )
            })?;
            return load_network_file(&first, fallback_version);
        }
        return load_network_file(path, fallback_version);
    }
    find_network_by_name(reference, conf_dir, fallback_version)
}

/// The config in `conf_dir` whose network `name` is `name`. Unreadable files are skipped with a
/// warning rather than aborting the search (one broken file must not hide the others).
pub fn find_network_by_name(
    name: &str,
    conf_dir: &Path,
    fallback_version: Version,
) -> Result<NetworkConfig> {
    for file in config_files(conf_dir).with_context(|| format!("looking up network {name:?}"))? {
        match load_network_file(&file, fallback_version) {
            Ok(net) if net.name == name => return Ok(net),
            Ok(_) => {}
            Err(e) => log::warn!(
                "skipping {}: {}",
                file.display(),
                CniError::from_anyhow(&e).msg
            ),
        }
    }
    Err(coded(
        Code::InvalidConfig,
        format!("no network named {name:?} in {}", conf_dir.display()),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn err_of(r: Result<NetConf>) -> CniError {
        CniError::from_anyhow(&r.unwrap_err())
    }

    #[test]
    fn defaults_match_multus() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"mh","delegates":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert_eq!(c.conf_dir, PathBuf::from("/etc/cni/multus/net.d"));
        assert_eq!(c.cni_dir, PathBuf::from("/var/lib/cni/multus"));
        assert_eq!(c.bin_dir, PathBuf::from("/opt/cni/bin"));
        assert!(c.log_to_stderr);
        assert!(!c.retry_delete_on_error && !c.namespace_isolation);
        assert_eq!(c.global_namespaces, vec!["default"]);
        assert_eq!(c.system_namespaces, vec!["kube-system"]);
        assert_eq!(c.multus_namespace, "kube-system");
        assert_eq!(c.log_level, LogLevel::Error);
        assert_eq!(c.api_timeouts.connect, Duration::from_secs(2));
        assert_eq!(c.api_timeouts.total, Duration::from_secs(10));
        assert_eq!(c.api_timeouts.attempts, 3);
        assert_eq!(c.delegate_timeout, Duration::from_secs(120));
        assert_eq!(
            c.kubelet_checkpoint_file,
            PathBuf::from(DEFAULT_CHECKPOINT_FILE)
        );
    }

    #[test]
    fn parses_every_multus_key() {
        let c = NetConf::parse(
            json!({
                "cniVersion": "0.3.1", "name": "multus-cni-network", "type": "multihome",
                "capabilities": {"portMappings": true}, "runtimeConfig": {"portMappings": []},
                "clusterNetwork": "/etc/cni/net.d/10-flannel.conflist",
                "defaultNetworks": ["sidecar"], "kubeconfig": "/etc/cni/net.d/multus.d/multus.kubeconfig",
                "confDir": "/c", "cniDir": "/d", "binDir": "/b", "logFile": "/l", "logLevel": "VERBOSE",
                "logToStderr": false, "readinessindicatorfile": "/r", "retryDeleteOnError": true,
                "namespaceIsolation": true, "globalNamespaces": "default, shared ,", "systemNamespaces": ["a", "b"],
                "multusNamespace": "multus", "auxiliaryCNIChainName": "aux", "logOptions": {"maxAge": 5},
                "apiConnectTimeout": 0.5, "apiTimeout": 3, "apiAttempts": 1, "kubeletCheckpointFile": "/cp",
                "unknownKey": {"ignored": true}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.cni_version.to_string(), "0.3.1");
        assert_eq!(
            c.cluster_network.as_deref(),
            Some("/etc/cni/net.d/10-flannel.conflist")
        );
        assert_eq!(c.default_networks, vec!["sidecar"]);
        assert_eq!(c.log_level, LogLevel::Verbose);
        assert!(!c.log_to_stderr && c.retry_delete_on_error && c.namespace_isolation);
        assert_eq!(c.global_namespaces, vec!["default", "shared"]);
        assert_eq!(c.system_namespaces, vec!["a", "b"]);
        assert_eq!(c.multus_namespace, "multus");
        assert_eq!(c.readiness_indicator_file, Some(PathBuf::from("/r")));
        assert_eq!(c.auxiliary_cni_chain_name.as_deref(), Some("aux"));
        assert_eq!(c.api_timeouts.connect, Duration::from_millis(500));
        assert_eq!(
            (c.api_timeouts.total, c.api_timeouts.attempts),
            (Duration::from_secs(3), 1)
        );
        assert_eq!(c.kubelet_checkpoint_file, PathBuf::from("/cp"));
        assert_eq!(
            c.kubeconfig,
            Some(PathBuf::from("/etc/cni/net.d/multus.d/multus.kubeconfig"))
        );
        assert!(
            c.capabilities.contains_key("portMappings")
                && c.runtime_config.contains_key("portMappings")
        );
    }

    #[test]
    fn camel_case_readiness_key_is_accepted_too() {
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"m","clusterNetwork":"x","readinessIndicatorFile":"/r"}"#)
            .unwrap();
        assert_eq!(c.readiness_indicator_file, Some(PathBuf::from("/r")));
    }

    #[test]
    fn bad_configs_are_code_7_and_name_the_key() {
        let cases: &[(&str, u32, &str)] = &[
            (r#"{"cniVersion":"1.0.0","name":"m"}"#, 7, "clusterNetwork"),
            (
                r#"{"cniVersion":"1.0.0","name":"m","delegates":[]}"#,
                7,
                "delegates",
            ),
            (r#"{"cniVersion":"1.0.0","delegates":[{}]}"#, 7, "name"),
            (
                r#"{"cniVersion":"1.0.0","name":"a b","delegates":[{}]}"#,
                7,
                "name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","clusterNetwork":"x","logToStderr":"yes"}"#,
                7,
                "logToStderr",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","clusterNetwork":"x","logLevel":"loud"}"#,
                7,
                "logLevel",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","delegates":{"type":"x"}}"#,
                7,
                "delegates",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","clusterNetwork":"x","defaultNetworks":"y"}"#,
                7,
                "defaultNetworks",
            ),
            (
                r#"{"cniVersion":"9.0.0","name":"m","clusterNetwork":"x"}"#,
                1,
                "9.0.0",
            ),
            (
                r#"{"cniVersion":"one","name":"m","clusterNetwork":"x"}"#,
                6,
                "one",
            ),
            (r#"{"cniVersion":"1.0.0","name":"m","#, 6, "EOF"),
            (
                r#"{"cniVersion":"1.0.0","name":"m","clusterNetwork":"x","nadPolicy":[{"namespaces":["*"],"masters":[]}]}"#,
                7,
                "nadPolicy[0]",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","clusterNetwork":"x","delegateTimeout":0}"#,
                7,
                "delegateTimeout",
            ),
        ];
        for (input, code, named) in cases {
            let e = err_of(NetConf::parse(input.as_bytes()));
            assert_eq!(e.code, *code, "{input}: {}", e.msg);
            assert!(e.msg.contains(named), "{input}: {}", e.msg);
        }
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn single_conf_becomes_a_one_plugin_list() {
        let n = NetworkConfig::from_value(
            json!({"cniVersion":"0.3.1","name":"br","type":"bridge","x":1}),
            v("1.0.0"),
        )
        .unwrap();
        assert_eq!(n.name, "br");
        assert_eq!(n.cni_version, v("0.3.1"));
        assert_eq!(
            n.plugins,
            vec![json!({"cniVersion":"0.3.1","name":"br","type":"bridge","x":1})]
        );
    }

    #[test]
    fn conflist_keeps_plugins_and_inherits_version() {
        let n = NetworkConfig::from_value(
            json!({"name":"c","disableCheck":"true","plugins":[{"type":"bridge"},{"type":"tuning","mtu":1400}]}),
            v("0.4.0"),
        )
        .unwrap();
        assert_eq!(n.cni_version, v("0.4.0"));
        assert!(n.disable_check);
        assert_eq!(n.plugins.len(), 2);
    }

    #[test]
    fn cni_versions_picks_highest_supported() {
        let n = NetworkConfig::from_value(
            json!({"name":"c","cniVersion":"0.4.0","cniVersions":["1.0.0","7.0.0"],"plugins":[{"type":"x"}]}),
            v("0.4.0"),
        )
        .unwrap();
        assert_eq!(n.cni_version, v("1.0.0"));
    }

    #[test]
    fn bad_network_configs_are_named() {
        let cases = [
            (json!({"type":"bridge"}), "no \"name\""),
            (json!({"name":"n"}), "neither"),
            (json!({"name":"n","plugins":[]}), "empty"),
            (
                json!({"name":"n","plugins":[{"type":"a"},{"ipam":{}}]}),
                "plugin 1",
            ),
            (json!({"name":"n","type":"../../bin/sh"}), "not a path"),
            (json!({"name":"n","type":""}), "empty"),
            (
                json!({"name":"n","type":"x","disableCheck":3}),
                "disableCheck",
            ),
            (
                json!({"name":"n","type":"x","cniVersion":"5.0.0"}),
                "no supported CNI version",
            ),
            (json!(["x"]), "not a JSON object"),
        ];
        for (input, named) in cases {
            let e = CniError::from_anyhow(
                &NetworkConfig::from_value(input.clone(), v("1.0.0")).unwrap_err(),
            );
            assert!(e.msg.contains(named), "{input}: {}", e.msg);
            assert!(e.code == 7 || e.code == 1, "{input}: {}", e.code);
        }
    }

    #[test]
    fn resolves_files_directories_and_names() {
        let dir = std::env::temp_dir().join(format!("mh-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("10-b.conf"),
            r#"{"cniVersion":"0.3.1","name":"bee","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(dir.join("05-broken.conf"), "{not json").unwrap();
        std::fs::write(
            dir.join("20-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"ay","plugins":[{"type":"ptp"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.join("README"), "ignored").unwrap();
        let fb = v("1.0.0");
        let d = dir.to_str().unwrap();
        assert_eq!(
            resolve_network(&format!("{d}/20-a.conflist"), &dir, fb)
                .unwrap()
                .name,
            "ay"
        );
        assert_eq!(resolve_network("ay", &dir, fb).unwrap().name, "ay");
        assert_eq!(resolve_network("bee", &dir, fb).unwrap().name, "bee");
        let first = CniError::from_anyhow(&resolve_network(d, &dir, fb).unwrap_err());
        assert!(
            first.msg.contains("05-broken.conf"),
            "directory uses its first file: {}",
            first.msg
        );
        let missing = CniError::from_anyhow(&resolve_network("nope", &dir, fb).unwrap_err());
        assert_eq!(missing.code, 7);
        assert!(missing.msg.contains("nope"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
