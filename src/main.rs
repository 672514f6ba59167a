//! The `multihome` binary: with `CNI_COMMAND` set, read the CNI environment and stdin, run,
//! print the result or a CNI error object on stdout (in CNI mode this is the only place
//! anything is written to stdout); without it, the command-line tool.

use std::io::{Read, Write};
use std::process::ExitCode;

use multihome::cni::env::CniEnv;
use multihome::cni::version::{CURRENT, Version};
use multihome::error::CniError;
use serde_json::Value;

fn main() -> ExitCode {
    let env = match CniEnv::parse(|k| std::env::var(k).ok()) {
        Ok(Some(env)) => env,
        // No CNI_COMMAND: the command-line tool.
        Ok(None) => return multihome::commands::run(),
        Err(e) => return fail(&e, &[]),
    };
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return fail(&anyhow::Error::new(e).context("reading stdin"), &[]);
    }
    match multihome::run(env, &stdin) {
        Ok(Some(out)) => print(&out),
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => fail(&e, &stdin),
    }
}

fn print(value: &Value) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match serde_json::to_writer(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Prints the CNI error object, in the caller's version when it is known.
fn fail(err: &anyhow::Error, stdin: &[u8]) -> ExitCode {
    let cni = CniError::from_anyhow(err);
    let version = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .and_then(|s| Version::parse(s).ok())
        })
        .filter(|v| v.is_supported())
        .map_or_else(|| CURRENT.to_string(), |v| v.to_string());
    let mut obj = serde_json::json!({"cniVersion": version, "code": cni.code, "msg": cni.msg});
    if !cni.details.is_empty() {
        obj["details"] = Value::String(cni.details);
    }
    print(&obj);
    ExitCode::FAILURE
}
