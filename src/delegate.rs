//! Delegate networks: building each plugin's stdin (name, version, `prevResult`, filtered
//! `runtimeConfig`) and running a network's chain through [`crate::plugin`], or the built-in
//! `host-interface` delegate.
//!
//! A delegate network is a chain: ADD runs its plugins in order, feeding each the previous
//! result; DEL runs them in reverse and keeps going past failures; CHECK runs them in order.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use crate::cni::env::Command;
use crate::cni::result::convert;
use crate::config::{NetworkConfig, plugin_type};
use crate::error::{Code, Failures, coded};
use crate::host_interface;
use crate::plan::{Attachment, filter_runtime_config};
use crate::plugin::{Call, Runner, find_plugin};

/// A successful ADD of one attachment.
#[derive(Debug, Clone)]
pub struct Added {
    /// The chain's result.
    pub result: Value,
    /// The original name of a host interface the built-in `host-interface` delegate moved in.
    pub host_link: Option<String>,
}

// The network-level calls: a chain of plugins, each run by [`Runner::exec`].
impl Runner {
    /// ADD one attachment: runs its chain and returns the last plugin's result.
    pub fn add(&self, att: &Attachment) -> Result<Added> {
        let mut prev: Option<Value> = None;
        let mut host_link = None;
        for (i, plugin) in att.network.plugins.iter().enumerate() {
            let request = plugin_request(att, plugin, prev.as_ref());
            let out = match plugin_type(plugin)? {
                host_interface::TYPE => {
                    let (result, original) =
                        host_interface::add(self, att, &request).with_context(|| step(att, i))?;
                    host_link = Some(original);
                    Some(result)
                }
                kind => self
                    .exec(Command::Add, att, kind, &request)
                    .with_context(|| step(att, i))?,
            };
            let mut result = out
                .ok_or_else(|| coded(Code::Decode, "plugin printed no result"))
                .with_context(|| step(att, i))?;
            if let Value::Object(obj) = &mut result {
                // libcni's fixupResultVersion: a result without a version has the config's.
                obj.entry("cniVersion")
                    .or_insert_with(|| Value::String(att.network.cni_version.to_string()));
            }
            prev = Some(result);
        }
        let result = prev.ok_or_else(|| {
            coded(
                Code::InvalidConfig,
                format!("network {:?} has no plugins", att.network.name),
            )
        })?;
        Ok(Added { result, host_link })
    }

    /// DEL one attachment: every plugin in reverse, continuing past failures. `cached` is the
    /// attachment's ADD result, given to plugins as `prevResult` from 0.4.0 on.
    /// `host_link` is the original name of a host interface the built-in delegate moved in.
    pub fn del(
        &self,
        att: &Attachment,
        cached: Option<&Value>,
        host_link: Option<&str>,
    ) -> Result<()> {
        let prev = self.prev_result(att, cached);
        let mut failures = Failures::new();
        for (i, plugin) in att.network.plugins.iter().enumerate().rev() {
            let request = plugin_request(att, plugin, prev.as_ref());
            let outcome = match plugin_type(plugin)? {
                host_interface::TYPE => host_interface::del(self, att, &request, host_link),
                kind => self.exec(Command::Del, att, kind, &request).map(drop),
            };
            if let Err(e) = outcome {
                failures.push(&step(att, i), &e);
            }
        }
        failures.into_result()
    }

    /// CHECK one attachment against its cached ADD result. Networks below 0.4.0 (no CHECK in
    /// their spec) and networks with `disableCheck` are skipped, as libcni does.
    pub fn check(&self, att: &Attachment, cached: &Value) -> Result<()> {
        if att.network.disable_check || !att.network.cni_version.supports_check() {
            log::debug!("CHECK skipped for {} ({})", att.name, att.ifname);
            return Ok(());
        }
        let prev = self.prev_result(att, Some(cached));
        for (i, plugin) in att.network.plugins.iter().enumerate() {
            let request = plugin_request(att, plugin, prev.as_ref());
            match plugin_type(plugin)? {
                host_interface::TYPE => host_interface::check(self, att),
                kind => self.exec(Command::Check, att, kind, &request).map(drop),
            }
            .with_context(|| step(att, i))?;
        }
        Ok(())
    }

    /// The cached result in the network's own version, when that version passes `prevResult`
    /// on DEL and CHECK (0.4.0 on).
    fn prev_result(&self, att: &Attachment, cached: Option<&Value>) -> Option<Value> {
        let version = att.network.cni_version;
        if !version.supports_check() {
            return None;
        }
        let cached = cached?;
        match convert(cached, version, version) {
            Ok(v) => Some(v),
            Err(e) => {
                log::warn!("{}: cached result unusable as prevResult: {e:#}", att.name);
                None
            }
        }
    }

    /// GC of one delegate network: every plugin of the chain (and the built-in's IPAM) gets
    /// `valid`, its own attachments, as `cni.dev/valid-attachments`. Goes on past failures and
    /// reports them all.
    pub fn gc(&self, network: &NetworkConfig, valid: &[(String, String)]) -> Result<()> {
        let list: Vec<Value> = valid
            .iter()
            .map(|(cid, ifname)| json!({"containerID": cid, "ifname": ifname}))
            .collect();
        let mut failures = Failures::new();
        for (i, plugin) in network.plugins.iter().enumerate() {
            let mut request = network_request(network, plugin);
            // Both names: the spec's tag text said "cni.dev/attachments", libcni >= 1.2.3 sends both.
            request.insert(
                "cni.dev/valid-attachments".into(),
                Value::Array(list.clone()),
            );
            request.insert("cni.dev/attachments".into(), Value::Array(list.clone()));
            let request = Value::Object(request);
            if let Err(e) = self.network_call(Command::Gc, network, plugin, &request) {
                failures.push(&network_step(network, i), &e);
            }
        }
        failures.into_result()
    }

    /// STATUS of one delegate network: every plugin of the chain (and the built-in's IPAM), in
    /// order, until one is not available.
    pub fn status(&self, network: &NetworkConfig) -> Result<()> {
        for (i, plugin) in network.plugins.iter().enumerate() {
            let request = Value::Object(network_request(network, plugin));
            self.network_call(Command::Status, network, plugin, &request)
                .with_context(|| network_step(network, i))?;
        }
        Ok(())
    }

    /// A network-wide call (GC, STATUS) of one plugin: no container, interface or arguments.
    fn network_call(
        &self,
        command: Command,
        network: &NetworkConfig,
        plugin: &Value,
        request: &Value,
    ) -> Result<()> {
        let kind = match plugin_type(plugin)? {
            host_interface::TYPE => match host_interface::ipam_type(plugin)? {
                Some(ipam) => ipam,
                None => return Ok(()),
            },
            kind => kind,
        };
        let call = Call {
            label: &network.name,
            ifname: "",
            args: &[],
        };
        self.run(command, &call, kind, request).map(drop)
    }
}

fn network_step(network: &NetworkConfig, plugin: usize) -> String {
    let kind = network
        .plugins
        .get(plugin)
        .and_then(|p| plugin_type(p).ok())
        .unwrap_or("?");
    format!(
        "delegate {kind} (plugin {plugin} of network {:?})",
        network.name
    )
}

fn step(att: &Attachment, plugin: usize) -> String {
    let kind = att
        .network
        .plugins
        .get(plugin)
        .and_then(|p| plugin_type(p).ok())
        .unwrap_or("?");
    if att.network.plugins.len() == 1 {
        format!(
            "delegate {kind} for network {:?} ({})",
            att.name, att.ifname
        )
    } else {
        format!(
            "delegate {kind} (plugin {plugin} of network {:?}, {})",
            att.name, att.ifname
        )
    }
}

/// The stdin of one plugin: its config with the network's `name` and `cniVersion`, the
/// capabilities it declares, and `prevResult` when given.
pub fn plugin_request(att: &Attachment, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut obj = network_request(&att.network, plugin);
    let rc = filter_runtime_config(plugin, &att.runtime_config);
    if !rc.is_empty() {
        let existing = obj
            .entry("runtimeConfig")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(existing) = existing {
            existing.extend(rc);
        }
    }
    match prev {
        Some(p) => obj.insert("prevResult".into(), p.clone()),
        None => obj.remove("prevResult"),
    };
    Value::Object(obj)
}

/// A plugin's config with the network's `name` and `cniVersion`, as every call starts from.
fn network_request(network: &NetworkConfig, plugin: &Value) -> Map<String, Value> {
    let mut obj = plugin.as_object().cloned().unwrap_or_default();
    obj.insert("name".into(), Value::String(network.name.clone()));
    obj.insert(
        "cniVersion".into(),
        Value::String(network.cni_version.to_string()),
    );
    obj
}

/// Fails unless every plugin binary of the network (and of the built-in's IPAM) can be found,
/// so ADD can refuse before any delegate runs.
pub fn check_available(network: &NetworkConfig, name: &str, search_path: &[PathBuf]) -> Result<()> {
    for plugin in &network.plugins {
        let kind = match plugin_type(plugin)? {
            host_interface::TYPE => match host_interface::ipam_type(plugin)? {
                Some(ipam) => ipam,
                None => continue,
            },
            kind => kind,
        };
        find_plugin(kind, search_path).with_context(|| format!("network {name:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cni::version::Version;

    fn att(network: Value, rc: Value) -> Attachment {
        Attachment {
            name: "n".into(),
            network: NetworkConfig::from_value(network, Version::new(1, 0, 0)).unwrap(),
            ifname: "net1".into(),
            cni_args: vec![],
            runtime_config: rc.as_object().unwrap().clone(),
            device_info: None,
            default_route: None,
            source: String::new(),
            policy_rule: None,
        }
    }

    #[test]
    fn request_injects_name_version_capabilities_and_prev_result() {
        let a = att(
            json!({"name": "chain", "cniVersion": "0.4.0", "plugins": [
                {"type": "bridge", "name": "ignored", "cniVersion": "0.1.0"},
                {"type": "portmap", "capabilities": {"portMappings": true}, "runtimeConfig": {"other": 1}}
            ]}),
            json!({"portMappings": [{"hostPort": 1}], "bandwidth": {}}),
        );
        let first = plugin_request(&a, &a.network.plugins[0], None);
        assert_eq!(first["name"], "chain");
        assert_eq!(first["cniVersion"], "0.4.0");
        assert!(first.get("runtimeConfig").is_none() && first.get("prevResult").is_none());
        let prev = json!({"cniVersion": "0.4.0", "ips": []});
        let second = plugin_request(&a, &a.network.plugins[1], Some(&prev));
        assert_eq!(
            second["runtimeConfig"],
            json!({"other": 1, "portMappings": [{"hostPort": 1}]})
        );
        assert_eq!(second["prevResult"], prev);
        assert_eq!(
            second["capabilities"]["portMappings"], true,
            "capabilities is passed through, as libcni does"
        );
    }
}
