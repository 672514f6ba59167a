//! The command-line tool: what the binary is when no `CNI_COMMAND` is set. One module per verb,
//! each with one entry function; all but `install` only read. The CNI path never gets here, so it pays
//! nothing for the argument parser.

mod attachments;
mod explain;
mod install;
mod install_watch;
mod node_state;
mod version;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{NetConf, RUNTIME_CONF_DIR, runtime_config};
use crate::error::CniError;

/// multihome: a CNI meta-plugin that gives pods several networks.
#[derive(Parser)]
#[command(name = "multihome", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// The version, and the CNI spec versions spoken.
    Version,
    /// The DaemonSet's entrypoint: install the binary, kubeconfig and config, keep them current.
    Install(install::Args),
    /// What ADD would attach for a pod, from the API or given by hand; changes nothing.
    Explain(explain::Args),
    /// What is attached now, from multihome's records.
    Attachments(attachments::Args),
    /// This namespace's links (the node's), for choosing masters and host interfaces.
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
    let outcome = match Cli::parse().verb {
        Verb::Version => version::version(),
        Verb::Install(args) => install::install(args),
        Verb::Explain(args) => explain::explain(args),
        Verb::Attachments(args) => attachments::attachments(args),
        Verb::NodeState(args) => node_state::node_state(args),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("multihome: {}", CniError::from_anyhow(&e).msg);
        ExitCode::FAILURE
    })
}

/// A JSON value as a table cell: `-` for nothing, a string as it is.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `--config FILE`: multihome's config, by default the one a runtime would use from
/// `/etc/cni/net.d`.
#[derive(clap::Args)]
struct ConfigArg {
    /// multihome's config: a .conf of type multihome, or a conflist with a multihome plugin
    /// [default: the first config in /etc/cni/net.d, as a runtime picks it]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> Result<(PathBuf, NetConf)> {
        let (file, bytes) = runtime_config(self.config.as_deref(), RUNTIME_CONF_DIR.as_ref())?;
        let conf = NetConf::parse(&bytes)
            .map_err(|e| e.context(format!("multihome config {}", file.display())))?;
        Ok((file, conf))
    }
}
