//! The CNI protocol: environment, versions and result formats.
//!
//! Everything here is pure: it parses and converts, it never touches the system.

pub mod env;
pub mod result;
pub mod version;
