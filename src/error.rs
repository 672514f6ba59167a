//! CNI error codes and the single boundary where any error becomes a CNI error object.
//!
//! Library code returns `anyhow::Error` with context. Where the right CNI code is known (bad env,
//! bad config, a delegate's own error) the root cause is a [`CniError`]; [`CniError::from_anyhow`]
//! finds it in the chain and renders the whole chain as the message, so the caller sees both the
//! well-known code and every layer of context.

use std::fmt;

use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    /// The CNI error code (1-99 reserved by the spec, 100+ plugin specific).
    pub code: u32,
    /// Human readable message.
    pub msg: String,
    /// Longer details (e.g. a delegate's stderr); omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
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
            if let Some(list) = cause.downcast_ref::<Failures>() {
                code = Some(list.code());
                details = list.details();
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

/// Every failure of an operation that goes on past them (DEL of each plugin of a chain and of
/// each attachment, GC of each record and network), each with its own code. It stays a list
/// until [`CniError::from_anyhow`] flattens it at the boundary: the code the failures share, or
/// 999 when they differ; their messages joined; their details one per line.
#[derive(Debug, Default)]
pub struct Failures {
    list: Vec<CniError>,
    /// `(operation, items)`: read as "DEL failed for 2 attachment(s): a | b" rather than "a; b".
    heading: Option<(&'static str, &'static str)>,
}

impl Failures {
    /// A list that reads as its failures alone, joined with "; ".
    pub fn new() -> Self {
        Failures::default()
    }

    /// A list that reads "`operation` failed for N `items`: a | b".
    pub fn headed(operation: &'static str, items: &'static str) -> Self {
        Failures {
            list: Vec::new(),
            heading: Some((operation, items)),
        }
    }

    /// Adds `err`, its message after `about` when that is not empty.
    pub fn push(&mut self, about: &str, err: &anyhow::Error) {
        let mut e = CniError::from_anyhow(err);
        if !about.is_empty() {
            e.msg = format!("{about}: {}", e.msg);
        }
        self.list.push(e);
    }

    /// The failures, each with its code.
    pub fn list(&self) -> &[CniError] {
        &self.list
    }

    /// `Ok` when nothing failed, else the list as the error.
    pub fn into_result(self) -> anyhow::Result<()> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(self.into())
        }
    }

    /// The code of the whole: the one every failure has, else 999.
    pub fn code(&self) -> u32 {
        match self.list.split_first() {
            Some((first, rest)) if rest.iter().all(|e| e.code == first.code) => first.code,
            _ => Code::Internal as u32,
        }
    }

    fn details(&self) -> String {
        let details: Vec<&str> = self
            .list
            .iter()
            .map(|e| e.details.as_str())
            .filter(|d| !d.is_empty())
            .collect();
        details.join("\n")
    }
}

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let messages: Vec<&str> = self.list.iter().map(|e| e.msg.as_str()).collect();
        match self.heading {
            Some((operation, items)) => write!(
                f,
                "{operation} failed for {} {items}: {}",
                messages.len(),
                messages.join(" | ")
            ),
            None => f.write_str(&messages.join("; ")),
        }
    }
}

impl std::error::Error for Failures {}

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
    fn a_list_of_failures_keeps_each_code_until_flattened() {
        let mut inner = Failures::new();
        inner.push("plugin 1", &coded(Code::TryAgainLater, "busy"));
        inner.push("", &coded(Code::TryAgainLater, "later"));
        let mut outer = Failures::headed("DEL", "attachment(s)");
        outer.push("network a", &anyhow::Error::new(inner));
        let mut again = CniError::new(Code::TryAgainLater, "gone");
        again.details = "stderr".into();
        outer.push("network b", &again.into());
        assert_eq!(
            outer.list().iter().map(|e| e.code).collect::<Vec<_>>(),
            [11, 11]
        );
        let flat = CniError::from_anyhow(&outer.into_result().unwrap_err());
        assert_eq!(flat.code, 11, "the code all of them share");
        assert_eq!(
            flat.msg,
            "DEL failed for 2 attachment(s): network a: plugin 1: busy; later | network b: gone"
        );
        assert_eq!(flat.details, "stderr");

        let mut mixed = Failures::new();
        mixed.push("", &coded(Code::Io, "disk"));
        mixed.push("", &coded(Code::TryAgainLater, "busy"));
        assert_eq!(
            CniError::from_anyhow(&mixed.into_result().unwrap_err()).code,
            999
        );
        assert!(Failures::new().into_result().is_ok());
    }

    #[test]
    fn details_are_omitted_when_empty() {
        let s = serde_json::to_string(&CniError::new(Code::Io, "x")).unwrap();
        assert_eq!(s, r#"{"code":5,"msg":"x"}"#);
    }
}
