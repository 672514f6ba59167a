//! Running one plugin binary: finding it on the search path, executing it from the host
//! namespace with its own `CNI_*` environment in a process group of its own (killed whole after
//! `delegateTimeout`, and with multihome), and decoding its result or error. Below both the
//! delegate chains ([`crate::delegate`]) and the built-in `host-interface` delegate, which runs
//! its IPAM plugin through it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;

use crate::cni::env::{Arg, Command, format_args};
use crate::error::{CniError, Code, coded};
use crate::plan::Attachment;

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
    /// Where each plugin call's duration goes.
    pub timings: Timings,
}

/// How long one plugin call took.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// The network (or attachment) it was for.
    pub network: String,
    /// The plugin's type.
    pub plugin: String,
    /// The CNI command.
    pub command: Command,
    /// How long it took.
    pub seconds: f64,
    /// It succeeded.
    pub ok: bool,
}

/// The durations of an invocation's plugin calls, shared by its runners.
#[derive(Debug, Clone, Default)]
pub struct Timings(Arc<Mutex<Vec<Timing>>>);

impl Timings {
    fn push(&self, timing: Timing) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(timing);
    }

    /// Every timing so far, taken out.
    pub fn take(&self) -> Vec<Timing> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl Runner {
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

    /// Runs the plugin binary `kind` for `call`, and keeps how long it took.
    pub(crate) fn run(
        &self,
        command: Command,
        call: &Call<'_>,
        kind: &str,
        request: &Value,
    ) -> Result<Option<Value>> {
        let start = Instant::now();
        let outcome = self.call(command, call, kind, request);
        self.timings.push(Timing {
            network: call.label.to_string(),
            plugin: kind.to_string(),
            command,
            seconds: start.elapsed().as_secs_f64(),
            ok: outcome.is_ok(),
        });
        outcome
    }

    fn call(
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
pub(crate) struct Call<'a> {
    /// Network or attachment name, for logs.
    pub(crate) label: &'a str,
    /// `CNI_IFNAME` (empty for network-wide calls).
    pub(crate) ifname: &'a str,
    /// `CNI_ARGS` pairs.
    pub(crate) args: &'a [Arg],
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

/// The search path: `binDir` first, then `CNI_PATH`.
pub fn search_path(bin_dir: &Path, cni_path: &[PathBuf]) -> Vec<PathBuf> {
    let mut path = vec![bin_dir.to_path_buf()];
    path.extend(cni_path.iter().filter(|p| p.as_path() != bin_dir).cloned());
    path
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

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
