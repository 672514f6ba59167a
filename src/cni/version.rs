//! CNI spec versions: parsing, the versions multihome speaks, and the VERSION reply.

use std::fmt;

use serde_json::{Value, json};

use crate::error::{Code, coded};

/// Every spec version multihome accepts from callers and can emit results in.
pub const SUPPORTED: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The newest spec version multihome implements.
pub const CURRENT: &str = "1.1.0";

/// A parsed `major.minor.patch` CNI version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Patch number.
    pub patch: u32,
}

/// The three shapes a CNI result has taken over the versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFormat {
    /// 0.1.0 and 0.2.0: `ip4`/`ip6` objects.
    V02,
    /// 0.3.0, 0.3.1 and 0.4.0: `interfaces`/`ips` with `ips[].version`.
    V04,
    /// 1.0.0 and 1.1.0: like 0.4.0 without `ips[].version`; 1.1 adds interface fields.
    V1,
}

impl Version {
    /// Builds a version from its parts.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Parses `x.y.z` (an empty string is 0.1.0, as libcni treats a missing `cniVersion`).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if s.is_empty() {
            return Ok(Version::new(0, 1, 0));
        }
        let mut parts = s.split('.').map(|p| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                p.parse::<u32>().ok()
            }
        });
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Some(major)), Some(Some(minor)), Some(Some(patch)), None) => {
                Ok(Version::new(major, minor, patch))
            }
            _ => Err(coded(
                Code::Decode,
                format!("invalid cniVersion {s:?}: expected major.minor.patch"),
            )),
        }
    }

    /// Parses a version and requires multihome to support it.
    pub fn parse_supported(s: &str) -> anyhow::Result<Self> {
        let v = Version::parse(s)?;
        if !v.is_supported() {
            return Err(coded(
                Code::IncompatibleVersion,
                format!(
                    "incompatible CNI version {s:?}: multihome supports {}",
                    SUPPORTED.join(", ")
                ),
            ));
        }
        Ok(v)
    }

    /// Whether this version is one of [`SUPPORTED`].
    pub fn is_supported(self) -> bool {
        SUPPORTED
            .iter()
            .any(|s| Version::parse(s).ok() == Some(self))
    }

    /// The result shape of this version.
    pub fn result_format(self) -> ResultFormat {
        if self < Version::new(0, 3, 0) {
            ResultFormat::V02
        } else if self < Version::new(1, 0, 0) {
            ResultFormat::V04
        } else {
            ResultFormat::V1
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn supports_check(self) -> bool {
        self >= Version::new(0, 4, 0)
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn supports_gc_status(self) -> bool {
        self >= Version::new(1, 1, 0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        Version::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The reply to `CNI_COMMAND=VERSION`: the caller's version echoed when it is one we speak.
pub fn version_reply(requested: Option<&str>) -> Value {
    let version = requested
        .and_then(|r| Version::parse(r).ok())
        .filter(|v| v.is_supported())
        .map_or_else(|| CURRENT.to_string(), |v| v.to_string());
    json!({ "cniVersion": version, "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_versions() {
        assert!(Version::parse("0.3.1").unwrap() < Version::parse("0.4.0").unwrap());
        assert!(Version::parse("1.0.0").unwrap() < Version::parse("1.1.0").unwrap());
        assert_eq!(Version::parse("").unwrap(), Version::new(0, 1, 0));
        assert_eq!(Version::parse("10.20.30").unwrap().to_string(), "10.20.30");
    }

    #[test]
    fn rejects_malformed_versions_with_decode_code() {
        for bad in [
            "1",
            "1.0",
            "1.0.0.0",
            "a.b.c",
            "1..0",
            "-1.0.0",
            "1.0.0-rc1",
            " 1.0.0",
        ] {
            let err = Version::parse(bad).unwrap_err();
            let cni = crate::error::CniError::from_anyhow(&err);
            assert_eq!(cni.code, 6, "{bad}");
            assert!(cni.msg.contains(bad), "{}", cni.msg);
        }
    }

    #[test]
    fn unsupported_version_is_code_1() {
        let err = Version::parse_supported("2.0.0").unwrap_err();
        assert_eq!(crate::error::CniError::from_anyhow(&err).code, 1);
        assert!(Version::parse_supported("0.3.0").is_ok());
    }

    #[test]
    fn result_formats_by_version() {
        let f = |s| Version::parse(s).unwrap().result_format();
        assert_eq!(f("0.1.0"), ResultFormat::V02);
        assert_eq!(f("0.2.0"), ResultFormat::V02);
        assert_eq!(f("0.3.0"), ResultFormat::V04);
        assert_eq!(f("0.4.0"), ResultFormat::V04);
        assert_eq!(f("1.0.0"), ResultFormat::V1);
        assert_eq!(f("1.1.0"), ResultFormat::V1);
    }

    #[test]
    fn version_reply_lists_all_and_echoes_known_requests() {
        let r = version_reply(Some("0.4.0"));
        assert_eq!(r["cniVersion"], "0.4.0");
        assert_eq!(r["supportedVersions"].as_array().unwrap().len(), 7);
        assert_eq!(version_reply(Some("9.9.9"))["cniVersion"], CURRENT);
        assert_eq!(version_reply(None)["cniVersion"], CURRENT);
    }
}
