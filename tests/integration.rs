//! Integration tests: the built `multihome` binary, the real reference plugins from
//! `/usr/lib/cni`, and network namespaces each test creates and removes. They need root (CI runs
//! them as root) and fail loudly, never skip, without it.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod apiserver;
mod harness;
mod host_interface;
mod install;

mod binary;
mod core_flows;
mod daemon;
mod default_route;
mod faults;
mod gc_status;
mod kubernetes;
mod tools;
