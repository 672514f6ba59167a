//! The `CNI_*` environment of one invocation, parsed and validated.
//!
//! The variables are passed in through a lookup function, so parsing is pure and testable.
//! libcni sets every variable, possibly to an empty string: empty counts as absent.

use std::path::PathBuf;

use anyhow::Result;

use crate::error::{Code, coded};

/// The operation requested through `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the networks.
    Add,
    /// Detach it (best effort, idempotent).
    Del,
    /// Verify the attachments are as ADD left them.
    Check,
    /// Report the supported spec versions.
    Version,
    /// Garbage-collect stale attachments (spec 1.1.0).
    Gc,
    /// Report readiness (spec 1.1.0).
    Status,
}

impl Command {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => {
                return Err(coded(
                    Code::InvalidEnv,
                    format!("CNI_COMMAND: unknown command {s:?}"),
                ));
            }
        })
    }

    /// The command as spelled in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// One `KEY=VALUE` pair of `CNI_ARGS`, in the order given.
pub type Arg = (String, String);

/// The validated environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION, GC, STATUS).
    pub container_id: String,
    /// `CNI_NETNS`, absent when unset or empty.
    pub netns: Option<String>,
    /// `CNI_IFNAME` (empty for VERSION, GC, STATUS).
    pub ifname: String,
    /// `CNI_ARGS` split into pairs.
    pub args: Vec<Arg>,
    /// `CNI_PATH` split on `:`.
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// Reads the environment through `get`. `Ok(None)` when `CNI_COMMAND` is absent (the binary
    /// was run by hand).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Option<CniEnv>> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let Some(command) = get("CNI_COMMAND") else {
            return Ok(None);
        };
        let command = Command::parse(&command)?;
        let attaching = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        let netns = get("CNI_NETNS");
        if attaching {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname).map_err(|e| e.context("CNI_IFNAME"))?;
            if command != Command::Del && netns.is_none() {
                return Err(coded(
                    Code::InvalidEnv,
                    format!("CNI_NETNS is required for {}", command.as_str()),
                ));
            }
        }
        let args = parse_args(get("CNI_ARGS").as_deref().unwrap_or_default())?;
        let path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        }))
    }

    /// The value of a `CNI_ARGS` key, if given.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits `K=V;K2=V2` into pairs (empty segments are skipped).
pub fn parse_args(s: &str) -> Result<Vec<Arg>> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(coded(
                Code::InvalidEnv,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
            )),
        })
        .collect()
}

/// Joins pairs back into the `CNI_ARGS` wire form.
pub fn format_args(args: &[Arg]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in args.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, as the spec requires of container IDs and network names.
pub fn is_valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn validate_container_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(coded(Code::InvalidEnv, "CNI_CONTAINERID is required"));
    }
    if !is_valid_name(id) {
        return Err(coded(
            Code::InvalidEnv,
            format!(
                "CNI_CONTAINERID {id:?} is invalid: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
            ),
        ));
    }
    Ok(())
}

/// Linux interface name rules as libcni applies them: 1-15 bytes, not `.`/`..`, no `/`, `:` or
/// whitespace.
pub fn validate_ifname(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name.len() > 15 {
        "is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "is not a valid name"
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        "contains '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(coded(
        Code::InvalidEnv,
        format!("interface name {name:?} {problem}"),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::error::CniError;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<CniEnv>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::parse(|k| map.get(k).cloned())
    }

    fn add_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAME=p;IP=198.18.0.9/24",
            ),
            ("CNI_PATH", "/a::/b"),
        ]
    }

    fn code_and_msg(r: Result<Option<CniEnv>>) -> (u32, String) {
        let e = CniError::from_anyhow(&r.unwrap_err());
        (e.code, e.msg)
    }

    #[test]
    fn parses_a_full_add_environment() {
        let e = env(&add_env()).unwrap().unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.netns.as_deref(), Some("/run/netns/x"));
        assert_eq!(e.arg("K8S_POD_NAME"), Some("p"));
        assert_eq!(e.arg("IP"), Some("198.18.0.9/24"));
        assert_eq!(e.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    }

    #[test]
    fn no_command_means_run_by_hand_and_empty_counts_as_absent() {
        assert_eq!(env(&[]).unwrap(), None);
        assert_eq!(env(&[("CNI_COMMAND", "")]).unwrap(), None);
        let mut vars = add_env();
        vars.retain(|(k, _)| *k != "CNI_NETNS");
        vars.push(("CNI_NETNS", ""));
        let (code, msg) = code_and_msg(env(&vars));
        assert_eq!(code, 4);
        assert!(msg.contains("CNI_NETNS"));
    }

    #[test]
    fn del_needs_no_netns() {
        let mut vars = add_env();
        vars.retain(|(k, _)| *k != "CNI_NETNS" && *k != "CNI_COMMAND");
        vars.push(("CNI_COMMAND", "DEL"));
        let e = env(&vars).unwrap().unwrap();
        assert_eq!((e.command, e.netns), (Command::Del, None));
    }

    #[test]
    fn invalid_variables_are_code_4_and_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("CNI_COMMAND", "FROB", "CNI_COMMAND"),
            ("CNI_CONTAINERID", "", "CNI_CONTAINERID"),
            ("CNI_CONTAINERID", "-abc", "CNI_CONTAINERID"),
            ("CNI_CONTAINERID", "a/b", "CNI_CONTAINERID"),
            ("CNI_IFNAME", "", "CNI_IFNAME"),
            ("CNI_IFNAME", "averyveryverylongname", "CNI_IFNAME"),
            ("CNI_IFNAME", "et h0", "CNI_IFNAME"),
            ("CNI_IFNAME", "a/b", "CNI_IFNAME"),
            ("CNI_IFNAME", "a:b", "CNI_IFNAME"),
            ("CNI_IFNAME", "..", "CNI_IFNAME"),
            ("CNI_ARGS", "K8S_POD_NAME", "CNI_ARGS"),
            ("CNI_ARGS", "=v", "CNI_ARGS"),
        ];
        for (key, value, named) in cases {
            let mut vars = add_env();
            vars.retain(|(k, _)| k != key);
            vars.push((key, value));
            let (code, msg) = code_and_msg(env(&vars));
            assert_eq!(code, 4, "{key}={value}");
            assert!(msg.contains(named), "{key}={value}: {msg}");
        }
    }

    #[test]
    fn args_round_trip_and_keep_equals_in_values() {
        let args = parse_args("A=1;;B=x=y;C=").unwrap();
        assert_eq!(
            args,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("C".into(), "".into())
            ]
        );
        assert_eq!(format_args(&args), "A=1;B=x=y;C=");
    }

    #[test]
    fn name_rule() {
        assert!(is_valid_name("a") && is_valid_name("A9_.-x"));
        assert!(!is_valid_name("") && !is_valid_name("_a") && !is_valid_name("a b"));
    }
}
