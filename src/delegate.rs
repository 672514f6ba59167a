//! Running delegate plugins: finding the binary, building each plugin's stdin (name, version,
//! `prevResult`, filtered `runtimeConfig`), executing it from the host namespace with its own
//! `CNI_*` environment, and decoding its result or error.
//!
//! A delegate network is a chain: ADD runs its plugins in order, feeding each the previous
//! result; DEL runs them in reverse and keeps going past failures; CHECK runs them in order.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Map, Value, json};

use crate::cni::env::{Arg, Command, format_args};
use crate::cni::result::convert;
use crate::config::{NetworkConfig, plugin_type};
use crate::error::{CniError, Code, coded};
use crate::host_interface;
use crate::plan::{Attachment, filter_runtime_config};

/// A successful ADD of one attachment.
#[derive(Debug, Clone)]
pub struct Added {
    /// The chain's result.
    pub result: Value,
    /// The original name of a host interface the built-in `host-interface` delegate moved in.
    pub host_link: Option<String>,
}

/// What every delegate call of one invocation shares.
#[derive(Debug, Clone)]
pub struct Runner {
    /// Where plugin binaries are looked up: `binDir`, then `CNI_PATH`.
    pub search_path: Vec<PathBuf>,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be absent on DEL).
    pub netns: Option<String>,
    /// How long one plugin call may take (`delegateTimeout`).
    pub timeout: Duration,
}

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
        let mut errors = Vec::new();
        for (i, plugin) in att.network.plugins.iter().enumerate().rev() {
            let request = plugin_request(att, plugin, prev.as_ref());
            let outcome = match plugin_type(plugin)? {
                host_interface::TYPE => host_interface::del(self, att, &request, host_link),
                kind => self.exec(Command::Del, att, kind, &request).map(drop),
            };
            if let Err(e) = outcome {
                errors.push(format!("{}: {:#}", step(att, i), e));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(Code::Internal, errors.join("; ")).into())
        }
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

    /// Runs the plugin binary `kind` with `request` on stdin and the attachment's environment (an
    /// IPAM plugin is run with its parent's config). `Ok(None)` when it succeeded and printed
    /// nothing.
    pub fn exec(
        &self,
        command: Command,
        att: &Attachment,
        kind: &str,
        request: &Value,
    ) -> Result<Option<Value>> {
        let call = Call {
            label: &att.name,
            ifname: &att.ifname,
            args: &att.cni_args,
        };
        self.run(command, &call, kind, request)
    }

    /// GC of one delegate network: every plugin of the chain (and the built-in's IPAM) gets
    /// `valid`, its own attachments, as `cni.dev/valid-attachments`. Goes on past failures and
    /// reports them all.
    pub fn gc(&self, network: &NetworkConfig, valid: &[(String, String)]) -> Result<()> {
        let list: Vec<Value> = valid
            .iter()
            .map(|(cid, ifname)| json!({"containerID": cid, "ifname": ifname}))
            .collect();
        let mut errors = Vec::new();
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
                errors.push(format!(
                    "{}: {}",
                    network_step(network, i),
                    CniError::from_anyhow(&e).msg
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(coded(Code::Internal, errors.join("; ")))
        }
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

    /// Feeds the delegate its stdin and collects its output, killing its whole process group
    /// when it takes longer than `delegateTimeout`.
    fn wait(
        &self,
        pipe: Option<std::process::ChildStdin>,
        child: std::process::Child,
        stdin: Vec<u8>,
    ) -> Result<std::process::Output> {
        let mut pipe = pipe.context("plugin stdin")?;
        let group = Pid::from_raw(i32::try_from(child.id()).context("plugin pid")?);
        std::thread::scope(|s| {
            // Written from a thread of its own: a plugin that prints before reading all of stdin
            // must not deadlock against us. A plugin may exit without reading stdin; its exit
            // status tells what happened.
            s.spawn(move || {
                let _ = pipe.write_all(&stdin);
            });
            let (tx, rx) = std::sync::mpsc::channel();
            s.spawn(move || {
                let _ = tx.send(child.wait_with_output());
            });
            match rx.recv_timeout(self.timeout) {
                Ok(output) => output.context("waiting for it"),
                Err(_) => {
                    let _ = killpg(group, Signal::SIGKILL);
                    let _ = rx.recv();
                    Err(coded(
                        Code::TryAgainLater,
                        format!(
                            "it did not finish within {}s (delegateTimeout) and was killed",
                            self.timeout.as_secs_f64()
                        ),
                    ))
                }
            }
        })
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

    fn run(
        &self,
        command: Command,
        call: &Call<'_>,
        kind: &str,
        request: &Value,
    ) -> Result<Option<Value>> {
        let binary = find_plugin(kind, &self.search_path)?;
        let stdin = serde_json::to_vec(request).context("encoding plugin config")?;
        log::debug!(
            "{} {} ifname={} binary={}",
            command.as_str(),
            call.label,
            call.ifname,
            binary.display()
        );
        let mut child = Process::new(&binary);
        // The rest of the environment (PATH for iptables, XTABLES_LOCKFILE, ...) is inherited as
        // libcni does; every CNI_* variable is set afresh for this delegate.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("CNI_")) {
                child.env_remove(key);
            }
        }
        child
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", self.netns.as_deref().unwrap_or_default())
            .env("CNI_IFNAME", call.ifname)
            .env("CNI_ARGS", format_args(call.args))
            .env(
                "CNI_PATH",
                std::env::join_paths(&self.search_path).unwrap_or_default(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tie_to_us(&mut child);
        let mut child = child
            .spawn()
            .with_context(|| format!("executing {}", binary.display()))?;
        let output = self
            .wait(child.stdin.take(), child, stdin)
            .with_context(|| format!("plugin {kind} ({})", binary.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !stderr.trim().is_empty() {
            log::debug!("{kind} stderr: {}", stderr.trim());
        }
        if output.status.success() {
            if stdout.trim().is_empty() {
                return Ok(None);
            }
            let value = serde_json::from_str(&stdout).map_err(|e| {
                coded(
                    Code::Decode,
                    format!(
                        "plugin {kind} printed invalid JSON ({e}): {}",
                        stdout.trim()
                    ),
                )
            })?;
            return Ok(Some(value));
        }
        Err(plugin_error(kind, &output.status, &stdout, &stderr).into())
    }
}

/// Who a plugin call is for: the environment beyond the runner's.
struct Call<'a> {
    /// Network or attachment name, for logs.
    label: &'a str,
    /// `CNI_IFNAME` (empty for network-wide calls).
    ifname: &'a str,
    /// `CNI_ARGS` pairs.
    args: &'a [Arg],
}

/// Makes a delegate die with multihome and lead its own process group. When the runtime gives up
/// on an ADD and kills multihome, a delegate left running would finish its ADD after the
/// runtime's DEL and leak what it made; with its own group, a timeout kills whatever it started
/// too (its IPAM plugin).
#[allow(unsafe_code)]
fn tie_to_us(child: &mut Process) {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: prctl(2) and getppid(2), with no allocation and no lock.
    unsafe {
        child.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // Killed between fork and prctl: nobody would ever signal us, so do not start.
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
    child.process_group(0);
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

/// The first `dir/kind` that is an executable file.
pub fn find_plugin(kind: &str, search_path: &[PathBuf]) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    for dir in search_path {
        let candidate = dir.join(kind);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    let dirs: Vec<String> = search_path
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    Err(coded(
        Code::InvalidConfig,
        format!(
            "plugin {kind:?} not found in binDir or CNI_PATH ({})",
            if dirs.is_empty() {
                "empty".into()
            } else {
                dirs.join(":")
            }
        ),
    ))
}

/// A failed plugin's error: its CNI error object when it printed one (even without
/// `cniVersion`), otherwise its stderr or exit status.
fn plugin_error(
    kind: &str,
    status: &std::process::ExitStatus,
    stdout: &str,
    stderr: &str,
) -> CniError {
    if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(stdout) {
        if let Some(code) = obj.get("code").and_then(Value::as_u64) {
            let msg = obj.get("msg").and_then(Value::as_str).unwrap_or_default();
            let mut details = obj
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if details.is_empty() {
                details = stderr.trim().to_string();
            }
            return CniError {
                code: u32::try_from(code).unwrap_or(Code::Internal as u32),
                msg: format!("plugin {kind} failed with code {code}: {msg}"),
                details,
            };
        }
    }
    let text = [stdout.trim(), stderr.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let how = match status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    };
    CniError::new(
        Code::Internal,
        if text.is_empty() {
            format!("plugin {kind} failed ({how})")
        } else {
            format!("plugin {kind} failed ({how}): {text}")
        },
    )
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

/// The search path: `binDir` first, then `CNI_PATH`.
pub fn search_path(bin_dir: &Path, cni_path: &[PathBuf]) -> Vec<PathBuf> {
    let mut path = vec![bin_dir.to_path_buf()];
    path.extend(cni_path.iter().filter(|p| p.as_path() != bin_dir).cloned());
    path
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

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

    #[test]
    fn plugin_errors_keep_code_message_and_details() {
        let fail = std::process::ExitStatus::from_raw(1 << 8);
        let e = plugin_error(
            "bridge",
            &fail,
            r#"{"code":7,"msg":"bad master","details":"d"}"#,
            "",
        );
        assert_eq!((e.code, e.details.as_str()), (7, "d"));
        assert!(e.msg.contains("bridge") && e.msg.contains("bad master"));
        let e = plugin_error("x", &fail, "", "panic: oops\n");
        assert_eq!(e.code, 999);
        assert!(e.msg.contains("panic: oops") && e.msg.contains("exit status 1"));
        let e = plugin_error("x", &fail, r#"{"code":11,"msg":"busy"}"#, "stderr text");
        assert_eq!((e.code, e.details.as_str()), (11, "stderr text"));
        let killed = std::process::ExitStatus::from_raw(9);
        assert!(plugin_error("x", &killed, "", "").msg.contains("signal"));
    }

    #[test]
    fn search_path_puts_bin_dir_first_once() {
        let p = search_path(
            Path::new("/opt/cni/bin"),
            &[PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
        );
        assert_eq!(
            p,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn missing_plugin_is_a_config_error_naming_it_and_the_path() {
        let e = CniError::from_anyhow(
            &find_plugin("nope-plugin", &[PathBuf::from("/nonexistent")]).unwrap_err(),
        );
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("nope-plugin") && e.msg.contains("/nonexistent"));
    }
}
