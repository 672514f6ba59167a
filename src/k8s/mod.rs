//! Access to the Kubernetes API: where the server is and how to authenticate ([`access`]), and a
//! small client for the handful of calls multihome makes ([`client`]).

pub mod access;
pub mod checkpoint;
pub mod client;

pub use access::Access;
pub use client::{Client, Nad, Pod, Timeouts};
