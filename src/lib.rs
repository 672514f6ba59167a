//! multihome: a Multus-style CNI meta-plugin.
//!
//! The runtime calls multihome as a CNI plugin; multihome calls the delegate plugins of every
//! network the pod gets, in order, and records what it did so DEL can undo it.
//!
//! - [`cni`]: the protocol (environment, versions, result conversion);
//! - [`config`]: multihome's configuration and delegate network configs;
//! - [`invocation`]: one call, and what it attaches (from the config, the pod and its NADs);
//! - [`plan`]: the pure plan, networks + environment -> ordered attachments;
//! - [`policy`]: the admin's policy for NetworkAttachmentDefinitions (pure);
//! - [`plugin`]: running one plugin binary (find, exec, timeout, error decoding);
//! - [`delegate`]: delegate networks: plugin chains and the built-in `host-interface`;
//! - [`netns`]: namespaces and netlink;
//! - [`cache`]: the per-attachment record, and its on-disk layouts ([`cache::record`]);
//! - [`k8s`]: the cluster as a call sees it ([`k8s::Cluster`], [`k8s::Reach`]), the API access
//!   and client, kubelet's device checkpoint;
//! - [`flows`]: ADD, DEL, CHECK, GC and STATUS, and the network-status and events ADD reports;
//! - [`commands`]: the command-line tool (`explain`, `attachments`, `daemon`, ...);
//! - [`daemon`]: the node daemon: watch cache, socket, metrics;
//! - [`error`]: CNI error codes, lists of failures, and the boundary mapping.

pub mod annotations;
pub mod cache;
pub mod cni;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod default_route;
pub mod delegate;
pub mod error;
pub mod flows;
pub mod host_interface;
pub mod invocation;
pub mod k8s;
pub mod logfile;
pub mod logging;
pub mod netlink;
pub mod netns;
pub mod plan;
pub mod plugin;
pub mod policy;

use anyhow::Result;
use serde_json::Value;

use cni::env::{CniEnv, Command};
use cni::version::version_reply;
use config::NetConf;
use error::{CniError, Code, coded};
use invocation::Invocation;
use k8s::socket::{DelegateCall, Report};
use k8s::{InCluster, Reach};

/// Runs one CNI invocation: the entry point of the one-shot CNI process, which sets up its
/// logging from the config and decides how the flows reach the cluster. Returns what goes to
/// stdout on success (`None`: print nothing).
pub fn run(env: CniEnv, stdin: &[u8]) -> Result<Option<Value>> {
    let start = std::time::Instant::now();
    if env.command == Command::Version {
        let requested = serde_json::from_slice::<Value>(stdin).ok();
        let requested = requested
            .as_ref()
            .and_then(|v| v.get("cniVersion"))
            .and_then(Value::as_str);
        return Ok(Some(version_reply(requested)));
    }
    let conf = NetConf::parse(stdin)?;
    logging::init(
        conf.log_level,
        conf.log_to_stderr,
        conf.log_file.as_deref(),
        &conf.log_options,
    )?;
    if matches!(env.command, Command::Gc | Command::Status)
        && !conf.cni_version.supports_gc_status()
    {
        return Err(coded(
            Code::IncompatibleVersion,
            format!(
                "config version {} does not allow {} (needs 1.1.0)",
                conf.cni_version,
                env.command.as_str()
            ),
        ));
    }
    // Only this entry point looks at the process environment for the API server; the flows get
    // the reach (connected only when a flow needs it: a DEL from its record never does).
    let reach = Reach::api(
        conf.kubeconfig.as_deref(),
        InCluster::from_env(),
        conf.api_timeouts,
        conf.daemon_socket.clone(),
    );
    let inv = Invocation::new(env, conf);
    let outcome = match inv.env.command {
        Command::Add => flows::add(&inv, &reach).map(Some),
        Command::Del => flows::del(&inv, &reach).map(|()| None),
        Command::Check => flows::check(&inv).map(|()| None),
        Command::Gc => flows::gc(&inv, &reach).map(|()| None),
        Command::Status => flows::status(&inv, &reach).map(|()| None),
        Command::Version => unreachable!("answered above"),
    };
    if let Err(e) = &outcome {
        log::error!(
            "{} {}: {e:#}",
            inv.env.command.as_str(),
            inv.env.container_id
        );
    }
    // The daemon's metrics count the call where it happened; nothing waits for it.
    if let Some((socket, seen)) = reach.daemon() {
        let report = Report {
            command: inv.env.command.as_str().to_string(),
            code: outcome
                .as_ref()
                .err()
                .map(|e| CniError::from_anyhow(e).code),
            seconds: start.elapsed().as_secs_f64(),
            unused: seen.unused.get(),
            daemon_wait: seen.longest.get().map(|d| d.as_secs_f64()),
            delegates: inv
                .timings
                .take()
                .into_iter()
                .map(|t| DelegateCall {
                    network: t.network,
                    plugin: t.plugin,
                    command: t.command.as_str().to_string(),
                    seconds: t.seconds,
                    ok: t.ok,
                })
                .collect(),
        };
        k8s::socket::report(&socket.path, socket.wait, report);
    }
    outcome
}
