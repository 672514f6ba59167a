//! The Kubernetes API: where the server is and how to authenticate ([`access`]), a small client
//! for the handful of calls multihome makes ([`client`]), the seam the flows see it through
//! ([`cluster`]), and kubelet's device allocations ([`checkpoint`]).

pub mod access;
pub mod checkpoint;
pub mod client;
pub mod cluster;

pub use access::Access;
pub use client::{Client, Nad, NadReply, Patched, Pod, Timeouts};
pub use cluster::{Cluster, InCluster, Offline, Reach};
