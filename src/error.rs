//! CNI error codes and the single boundary where any error becomes a CNI error object.
//!
//! Library code returns `anyhow::Error` with context. Where the right CNI code is known (bad env,
//! bad config, a delegate's own error) the root cause is a [`CniError`]; [`CniError::from_anyhow`]
//! finds it in the chain and renders the whole chain as the message, so the caller sees both the
//! well-known code and every layer of context.

use std::fmt;

use serde::Serialize;

/// Well-known CNI error codes (spec section "Error"), plus Go's 999 for "internal".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// Incompatible CNI version.
    IncompatibleVersion = 1,
    /// Unsupported field in the network configuration.
    UnsupportedField = 2,
    /// Container unknown or does not exist.
    UnknownContainer = 3,
    /// Invalid necessary environment variables.
    InvalidEnv = 4,
    /// I/O failure.
    Io = 5,
    /// Failed to decode content.
    Decode = 6,
    /// Invalid network config.
    InvalidConfig = 7,
    /// Try again later.
    TryAgainLater = 11,
    /// STATUS: the plugin cannot serve ADD now.
    NotAvailable = 50,
    /// STATUS: not available, and existing containers may have limited connectivity.
    LimitedConnectivity = 51,
    /// Anything without a better code.
    Internal = 999,
}

/// A CNI error object, as printed on stdout by a failing plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    /// The CNI error code (1-99 reserved by the spec, 100+ plugin specific).
    pub code: u32,
    /// Human readable message.
    pub msg: String,
    /// Longer details (e.g. a delegate's stderr); omitted when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// A new error with a well-known code.
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Maps an error chain to one CNI error: the code of the [`CniError`] at its root (or a code
    /// guessed from I/O and decode errors), the whole chain as the message.
    pub fn from_anyhow(err: &anyhow::Error) -> Self {
        let mut code = None;
        let mut details = String::new();
        for cause in err.chain() {
            if let Some(e) = cause.downcast_ref::<CniError>() {
                code = Some(e.code);
                details.clone_from(&e.details);
                break;
            }
        }
        let code = code.unwrap_or_else(|| {
            if err.chain().any(|c| c.is::<serde_json::Error>()) {
                Code::Decode as u32
            } else if err.chain().any(|c| c.is::<std::io::Error>()) {
                Code::Io as u32
            } else {
                Code::Internal as u32
            }
        });
        CniError {
            code,
            msg: format!("{err:#}"),
            details,
        }
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for CniError {}

/// Shorthand for an `anyhow::Error` carrying a well-known code.
pub fn coded(code: Code, msg: impl Into<String>) -> anyhow::Error {
    CniError::new(code, msg).into()
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn code_comes_from_the_coded_root_and_message_keeps_every_layer() {
        let err = Err::<(), _>(coded(Code::InvalidConfig, "missing \"type\""))
            .context("delegate 2")
            .unwrap_err();
        let e = CniError::from_anyhow(&err);
        assert_eq!(e.code, 7);
        assert_eq!(e.msg, "delegate 2: missing \"type\"");
    }

    #[test]
    fn uncoded_errors_get_a_code_from_their_kind() {
        let io = anyhow::Error::new(std::io::Error::other("disk")).context("writing cache");
        assert_eq!(CniError::from_anyhow(&io).code, 5);
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        assert_eq!(CniError::from_anyhow(&anyhow::Error::new(json)).code, 6);
        assert_eq!(CniError::from_anyhow(&anyhow::anyhow!("boom")).code, 999);
    }

    #[test]
    fn details_are_omitted_when_empty() {
        let s = serde_json::to_string(&CniError::new(Code::Io, "x")).unwrap();
        assert_eq!(s, r#"{"code":5,"msg":"x"}"#);
    }
}
