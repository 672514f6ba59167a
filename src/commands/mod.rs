//! The command-line tool: what the binary is when no `CNI_COMMAND` is set. One module per verb,
//! each with one entry function; all but `install` only read. The CNI path never gets here, so it pays
//! nothing for the argument parser.

mod attachments;
mod cli;
mod daemon;
mod explain;
mod install;
mod install_watch;
mod node_state;
mod version;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::config::{NetConf, RUNTIME_CONF_DIR, runtime_config};
use crate::error::CniError;
use cli::Parser;
use lexopt::Arg::{Long, Short, Value};

const HELP: &str = "\
multihome: a CNI meta-plugin that gives pods several networks.

Run by a container runtime with CNI_COMMAND set, it is the plugin. Without it, it is this tool.

Usage: multihome <VERB> [OPTIONS]

Verbs:
  version      The version, and the CNI spec versions spoken
  install      The DaemonSet's entrypoint: install the binary, kubeconfig and config, keep them
               current
  daemon       The node daemon: a watch-fed cache the CNI calls ask over a socket, and metrics
  explain      What ADD would attach for a pod, from the API or given by hand; changes nothing
  attachments  What is attached now, from multihome's records
  node-state   This namespace's links (the node's), for choosing masters and host interfaces

Options:
  -h, --help     Print help (`multihome <VERB> --help` for a verb's)
  -V, --version  Print the version
";

/// A verb and its arguments.
enum Verb {
    Version,
    Install(install::Args),
    Daemon(daemon::Args),
    Explain(explain::Args),
    Attachments(attachments::Args),
    NodeState(node_state::Args),
}

/// Runs the tool with the process's arguments. Without any, prints what the binary is to stderr
/// and exits 0, as a CNI plugin run by hand does.
pub fn run() -> ExitCode {
    if std::env::args_os().len() <= 1 {
        eprintln!(
            "multihome {}: CNI meta-plugin (CNI spec {}); run by a container runtime with CNI_COMMAND set, or see `multihome --help`",
            env!("CARGO_PKG_VERSION"),
            crate::cni::version::SUPPORTED.join(", ")
        );
        return ExitCode::SUCCESS;
    }
    let mut who = String::from("multihome");
    let verb = match parse(&mut Parser::from_env(), &mut who) {
        Ok(Some(verb)) => verb,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            // A usage error exits 2, as clap's and Go's flag packages do.
            eprintln!("{who}: {e:#}\nSee `{who} --help`.");
            return ExitCode::from(2);
        }
    };
    let outcome = match verb {
        Verb::Version => version::version(),
        Verb::Install(args) => install::install(args),
        Verb::Daemon(args) => daemon::daemon(args),
        Verb::Explain(args) => explain::explain(args),
        Verb::Attachments(args) => attachments::attachments(args),
        Verb::NodeState(args) => node_state::node_state(args),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("{who}: {}", CniError::from_anyhow(&e).msg);
        ExitCode::FAILURE
    })
}

/// Reads the command line: the verb and its arguments, or `None` when it asked for help instead.
/// Once the verb is known, its name is added to `who`, the name messages are given under.
fn parse(p: &mut Parser, who: &mut String) -> Result<Option<Verb>> {
    let name = match p.next()? {
        Some(Value(v)) => v.to_string_lossy().into_owned(),
        Some(Long("help") | Short('h')) => {
            print!("{HELP}");
            return Ok(None);
        }
        Some(Long("version") | Short('V')) => return Ok(Some(Verb::Version)),
        Some(arg) => return Err(arg.unexpected().into()),
        None => bail!("no verb given"),
    };
    let verb: fn(&mut Parser) -> Result<Option<Verb>> = match name.as_str() {
        "version" => {
            |p| Ok(cli::options(p, version::HELP, |_, _| Ok(false))?.map(|()| Verb::Version))
        }
        "install" => |p| Ok(install::Args::parse(p)?.map(Verb::Install)),
        "daemon" => |p| Ok(daemon::Args::parse(p)?.map(Verb::Daemon)),
        "explain" => |p| Ok(explain::Args::parse(p)?.map(Verb::Explain)),
        "attachments" => |p| Ok(attachments::Args::parse(p)?.map(Verb::Attachments)),
        "node-state" => |p| Ok(node_state::Args::parse(p)?.map(Verb::NodeState)),
        _ => {
            bail!(
                "no verb {name:?}: expected version, install, daemon, explain, attachments or node-state"
            )
        }
    };
    who.push(' ');
    who.push_str(&name);
    verb(p)
}

/// A JSON value as a table cell: `-` for nothing, a string as it is.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The options the read-only verbs share: `--config FILE`, multihome's config (by default the
/// one a runtime would use from `/etc/cni/net.d`), and `--json`.
#[derive(Default)]
struct Common {
    config: Option<PathBuf>,
    json: bool,
}

impl Common {
    /// Reads the value of `--config` or `--json`; `false` for any other option.
    fn take(&mut self, name: &str, p: &mut Parser) -> Result<bool> {
        match name {
            "config" => self.config = Some(cli::path(p)?),
            "json" => self.json = cli::flag(p, name)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The config `--config` names.
    fn load(&self) -> Result<(PathBuf, NetConf)> {
        let (file, bytes) = runtime_config(self.config.as_deref(), RUNTIME_CONF_DIR.as_ref())?;
        let conf = NetConf::parse(&bytes)
            .map_err(|e| e.context(format!("multihome config {}", file.display())))?;
        Ok((file, conf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who the messages are from, and the outcome.
    fn parse_all(args: &[&str]) -> std::result::Result<(String, Option<Verb>), (String, String)> {
        let mut who = String::from("multihome");
        match parse(&mut Parser::from_args(args.iter().copied()), &mut who) {
            Ok(verb) => Ok((who, verb)),
            Err(e) => Err((who, format!("{e:#}"))),
        }
    }

    #[test]
    fn verbs_are_dispatched_and_errors_name_the_verb() {
        assert!(matches!(
            parse_all(&["version"]),
            Ok((_, Some(Verb::Version)))
        ));
        assert!(matches!(parse_all(&["-V"]), Ok((_, Some(Verb::Version)))));
        assert!(matches!(
            parse_all(&["node-state", "--json"]),
            Ok((_, Some(Verb::NodeState(_))))
        ));
        assert!(matches!(
            parse_all(&["attachments", "--container", "c1"]),
            Ok((_, Some(Verb::Attachments(_))))
        ));
        assert!(matches!(
            parse_all(&["install", "--once"]),
            Ok((_, Some(Verb::Install(_))))
        ));
        assert!(matches!(parse_all(&["--help"]), Ok((_, None))));
        assert!(matches!(parse_all(&["explain", "-h"]), Ok((_, None))));

        let Err((name, e)) = parse_all(&["attachments", "--jsn"]) else {
            panic!("a misspelt option is refused");
        };
        assert_eq!(
            (name.as_str(), e.as_str()),
            ("multihome attachments", "invalid option '--jsn'")
        );
        let Err((name, e)) = parse_all(&["instal"]) else {
            panic!("a misspelt verb is refused");
        };
        assert_eq!(name, "multihome");
        assert!(
            e.starts_with("no verb \"instal\": expected version, install"),
            "{e}"
        );
    }
}
