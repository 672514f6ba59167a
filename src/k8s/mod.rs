//! The Kubernetes API: where the server is and how to authenticate ([`access`]), a small client
//! for the handful of calls multihome makes ([`client`]), kubelet's device allocations
//! ([`checkpoint`]), and what multihome writes back ([`report`]).

pub mod access;
pub mod checkpoint;
pub mod client;
pub mod report;

pub use access::Access;
pub use client::{Client, Nad, NadReply, Pod, Timeouts};
