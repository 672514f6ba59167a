//! STATUS (CNI 1.1): whether multihome can serve an ADD now. It checks what is on this node
//! (the readiness indicator, the configured networks and their plugin binaries, and the STATUS
//! of every such delegate at 1.1.0 or later) and never the Kubernetes API: the node's network
//! readiness must not flap with the API server. An API that does not answer fails the ADDs
//! that need it, with code 11, and kubelet retries them.

use anyhow::{Context, Result};

use crate::delegate::check_available;
use crate::error::{CniError, Code};
use crate::invocation::Invocation;
use crate::invocation::resolve::static_networks;
use crate::k8s::Reach;

/// STATUS of multihome and the delegates every pod gets.
pub fn status(inv: &Invocation, reach: &Reach<'_>) -> Result<()> {
    let not_available =
        |msg: String| -> anyhow::Error { CniError::new(Code::NotAvailable, msg).into() };
    if let Some(file) = &inv.conf.readiness_indicator_file {
        if !file.exists() {
            return Err(not_available(format!(
                "readinessindicatorfile {} does not exist: the cluster network is not ready",
                file.display()
            )));
        }
    }
    let runner = inv.runner_in("", None);
    for (what, net) in static_networks(&inv.conf, reach) {
        let net = match net {
            Ok(Some(net)) => net,
            // A NetworkAttachmentDefinition: checked by the ADDs that fetch it.
            Ok(None) => continue,
            Err(e) => {
                return Err(not_available(format!(
                    "{what}: {}",
                    CniError::from_anyhow(&e).msg
                )));
            }
        };
        check_available(&net, &net.name, &runner.search_path)
            .map_err(|e| not_available(format!("{what}: {}", CniError::from_anyhow(&e).msg)))?;
        if !net.cni_version.supports_gc_status() {
            continue;
        }
        runner
            .status(&net)
            .map_err(|e| {
                let err = CniError::from_anyhow(&e);
                match err.code {
                    50 | 51 => e,
                    _ => CniError {
                        code: Code::NotAvailable as u32,
                        ..err
                    }
                    .into(),
                }
            })
            .with_context(|| what.clone())?;
    }
    Ok(())
}
