//! `multihome version`.

use std::process::ExitCode;

use anyhow::Result;

/// `multihome version --help`.
pub(super) const HELP: &str = "\
Print the version, and the CNI spec versions spoken.

Usage: multihome version
";

/// Prints the version and the CNI spec versions multihome speaks.
pub fn version() -> Result<ExitCode> {
    println!(
        "multihome {} (CNI spec {})",
        env!("CARGO_PKG_VERSION"),
        crate::cni::version::SUPPORTED.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
