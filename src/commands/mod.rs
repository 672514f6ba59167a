//! The command-line tool: what the binary is when no `CNI_COMMAND` is set. One module per verb,
//! each with one entry function; all but `install` only read. The CNI path never gets here, so it pays
//! nothing for the argument parser.

mod attachments;
mod cli;
mod explain;
mod install;
mod install_watch;
mod node_state;
mod version;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow};

use crate::config::{NetConf, RUNTIME_CONF_DIR, runtime_config};
use crate::error::CniError;
use cli::Parser;
use lexopt::Arg::{Long, Short};

const HELP: &str = "\
multihome: a CNI meta-plugin that gives pods several networks.

Run by a container runtime with CNI_COMMAND set, it is the plugin. Without it, it is this tool.

Usage: multihome <VERB> [OPTIONS]

Verbs:
  version      The version, and the CNI spec versions spoken
  install      The DaemonSet's entrypoint: install the binary, kubeconfig and config, keep them
               current
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
    Explain(explain::Args),
    Attachments(attachments::Args),
    NodeState(node_state::Args),
}

impl Verb {
    /// Reads the command line after the verb's name: `None` for no such verb, `Ok(None)` when
    /// it asked for help instead.
    fn parse(name: &str, p: &mut Parser) -> Option<Result<Option<Verb>>> {
        Some(match name {
            "version" => {
                cli::options(p, version::HELP, |_, _| Ok(false)).map(|v| v.map(|()| Verb::Version))
            }
            "install" => install::Args::parse(p).map(|a| a.map(Verb::Install)),
            "explain" => explain::Args::parse(p).map(|a| a.map(Verb::Explain)),
            "attachments" => attachments::Args::parse(p).map(|a| a.map(Verb::Attachments)),
            "node-state" => node_state::Args::parse(p).map(|a| a.map(Verb::NodeState)),
            _ => return None,
        })
    }
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
    let mut p = Parser::from_env();
    let (name, verb) = match parse(&mut p) {
        Ok((_, None)) => return ExitCode::SUCCESS,
        Ok((name, Some(verb))) => (name, verb),
        Err((name, e)) => {
            // A usage error exits 2, as clap's and Go's flag packages do.
            eprintln!("multihome{name}: {e:#}\nSee `multihome{name} --help`.");
            return ExitCode::from(2);
        }
    };
    let outcome = match verb {
        Verb::Version => version::version(),
        Verb::Install(args) => install::install(args),
        Verb::Explain(args) => explain::explain(args),
        Verb::Attachments(args) => attachments::attachments(args),
        Verb::NodeState(args) => node_state::node_state(args),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("multihome {name}: {}", CniError::from_anyhow(&e).msg);
        ExitCode::FAILURE
    })
}

/// The verb's name and what it was asked; a failure carries the verb's name (with a leading
/// space, empty before one is known) for the message.
fn parse(p: &mut Parser) -> std::result::Result<(String, Option<Verb>), (String, anyhow::Error)> {
    let name = match p.next() {
        Ok(Some(lexopt::Arg::Value(v))) => v.to_string_lossy().into_owned(),
        Ok(Some(Long("help") | Short('h'))) => {
            print!("{HELP}");
            return Ok((String::new(), None));
        }
        Ok(Some(Long("version") | Short('V'))) => return Ok((String::new(), Some(Verb::Version))),
        Ok(Some(arg)) => return Err((String::new(), arg.unexpected().into())),
        Ok(None) => return Err((String::new(), anyhow!("no verb given"))),
        Err(e) => return Err((String::new(), e.into())),
    };
    match Verb::parse(&name, p) {
        Some(Ok(verb)) => Ok((name, verb)),
        Some(Err(e)) => Err((format!(" {name}"), e)),
        None => Err((
            String::new(),
            anyhow!(
                "no verb {name:?}: expected version, install, explain, attachments or node-state"
            ),
        )),
    }
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

    fn parse_all(args: &[&str]) -> std::result::Result<(String, Option<Verb>), (String, String)> {
        parse(&mut Parser::from_args(args.iter().copied())).map_err(|(n, e)| (n, format!("{e:#}")))
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
            (" attachments", "invalid option '--jsn'")
        );
        let Err((name, e)) = parse_all(&["instal"]) else {
            panic!("a misspelt verb is refused");
        };
        assert_eq!(name, "");
        assert!(
            e.starts_with("no verb \"instal\": expected version, install"),
            "{e}"
        );
    }
}
