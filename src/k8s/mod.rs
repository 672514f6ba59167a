//! The Kubernetes API: where the server is and how to authenticate ([`access`]), a small client
//! for the handful of calls multihome makes ([`client`]), the seam the flows see it through
//! ([`cluster`]), how a call reaches it ([`reach`]), the node daemon's socket ([`socket`]), and
//! kubelet's device allocations ([`checkpoint`]).

pub mod access;
pub mod checkpoint;
pub mod client;
pub mod cluster;
pub mod reach;
pub mod socket;

pub use access::Access;
pub use client::{Client, Listed, Nad, NadReply, Patched, Pod, Timeouts, Watch, WatchEvent};
pub use cluster::{Cluster, Offline};
pub use reach::{InCluster, Reach};
