//! `multihome daemon`: the DaemonSet's long-running container beside `install`. It reads its
//! arguments and the environment (the node's name, the in-cluster service), sets up its own
//! logging once, blocks the stop signals before any thread starts, and runs [`crate::daemon`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::cli::{self, Parser};
use super::install_watch::block_signals;
use crate::config::LogLevel;
use crate::daemon::{self, Options};
use crate::k8s::socket::DEFAULT_SOCKET;
use crate::k8s::{InCluster, Timeouts};
use crate::logfile::LogOptions;

pub(super) const HELP: &str = "\
The node daemon: keeps its node's pods and every NetworkAttachmentDefinition in memory (LIST +
WATCH), answers the CNI calls of its node over a unix socket, brings a running pod's changed
networks annotation about in the pod (hot-plug), and serves Prometheus metrics. A CNI call that
finds no daemon, or an unready or slow one, reads the API server itself.

Usage: multihome daemon [OPTIONS]

Options:
      --node-name NAME        This node [default: $NODE_NAME]
      --socket PATH           The socket (directory 0700, socket 0600) [default:
                              /run/multihome/daemon.sock]
      --metrics-address ADDR  Serve /metrics, /healthz and /readyz on ADDR (host:port)
                              [default: not at all]
      --kubeconfig FILE       Reach the API server through FILE [default: the in-cluster
                              service account]
      --drain-seconds N       How long SIGTERM waits for requests in progress [default: 5]
      --hotplug[=BOOL]        Bring a running pod's changed networks annotation about in the pod
                              (needs the privileges of a CNI plugin) [default: true]
      --config FILE           multihome's config, for hot-plug [default: the first config in
                              /etc/cni/net.d, as a runtime picks it]
      --host-root DIR         The node's root as mounted in this container: the daemon enters it
                              (chroot) after opening its service account, so that paths are the
                              node's [default: run where it is]
      --log-level LEVEL       debug, verbose, error or panic [default: verbose]
  -h, --help                  Print help
";

/// `daemon`'s arguments.
pub struct Args {
    node: Option<String>,
    socket: PathBuf,
    metrics: Option<SocketAddr>,
    kubeconfig: Option<PathBuf>,
    drain: Duration,
    log_level: LogLevel,
    hotplug: bool,
    config: Option<PathBuf>,
    host_root: Option<PathBuf>,
}

impl Args {
    /// Reads them; `None` when help was asked for instead.
    pub(super) fn parse(p: &mut Parser) -> Result<Option<Args>> {
        let mut args = Args {
            node: None,
            socket: DEFAULT_SOCKET.into(),
            metrics: None,
            kubeconfig: None,
            drain: Duration::from_secs(5),
            log_level: LogLevel::Verbose,
            hotplug: true,
            config: None,
            host_root: None,
        };
        let run = cli::options(p, HELP, |name, p| {
            match name {
                "node-name" => args.node = Some(cli::string(p)?),
                "socket" => args.socket = cli::path(p)?,
                "metrics-address" => {
                    let s = cli::string(p)?;
                    let addr = s
                        .parse()
                        .with_context(|| format!("--metrics-address {s:?}: expected host:port"))?;
                    args.metrics = Some(addr);
                }
                "kubeconfig" => args.kubeconfig = Some(cli::path(p)?),
                "drain-seconds" => args.drain = Duration::from_secs(cli::seconds(p, name)?),
                "hotplug" => args.hotplug = cli::flag(p, name)?,
                "config" => args.config = Some(cli::path(p)?),
                "host-root" => args.host_root = Some(cli::path(p)?),
                "log-level" => {
                    let s = cli::string(p)?;
                    args.log_level = LogLevel::parse(&s).with_context(|| {
                        format!("--log-level {s:?}: expected debug, verbose, error or panic")
                    })?;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(run.map(|()| args))
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn daemon(args: Args) -> Result<ExitCode> {
    let node = match args.node.or_else(|| std::env::var("NODE_NAME").ok()) {
        Some(n) if !n.is_empty() => n,
        _ => bail!(
            "no node name: give --node-name, or set NODE_NAME (the downward API's spec.nodeName)"
        ),
    };
    crate::logging::init(args.log_level, true, None, &LogOptions::default())?;
    // Before any thread starts, so that every thread inherits the mask and the signal waits
    // for sigwait below.
    let signals = block_signals()?;
    let opts = Options {
        node,
        socket: args.socket,
        metrics: args.metrics,
        kubeconfig: args.kubeconfig,
        in_cluster: InCluster::from_env(),
        timeouts: Timeouts::default(),
        drain: args.drain,
        hotplug: args.hotplug,
        config: args.config,
        host_root: args.host_root,
    };
    daemon::run(&opts, || {
        let signal = signals.wait().context("waiting for a signal")?;
        Ok(signal.as_str().to_string())
    })?;
    Ok(ExitCode::SUCCESS)
}
