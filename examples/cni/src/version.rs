//! CNI specification versions: which this plugin speaks and what each allows.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A CNI specification version this plugin supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum CniVersion {
    /// 0.3.0 (results with `ips[].version`).
    V0_3_0,
    /// 0.3.1.
    V0_3_1,
    /// 0.4.0 (adds CHECK).
    V0_4_0,
    /// 1.0.0 (drops `ips[].version`).
    V1_0_0,
    /// 1.1.0 (adds GC, STATUS, `interfaces[].mtu`).
    V1_1_0,
}

impl CniVersion {
    /// Every supported version, oldest first (what VERSION reports).
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The newest supported version.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// The version string (`1.0.0`).
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Whether results carry `ips[].version` (before 1.0.0).
    pub fn ip_version_field(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// Whether CHECK exists (0.4.0 and later).
    pub fn has_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// Whether GC and STATUS exist, and `interfaces[].mtu` (1.1.0 and later).
    pub fn has_gc_status(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// The supported version strings.
    pub fn supported_strings() -> Vec<&'static str> {
        CniVersion::ALL.iter().map(|v| v.as_str()).collect()
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CniVersion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        CniVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| Error::IncompatibleVersion {
                version: s.to_owned(),
                rule: format!(
                    "supported versions are {}",
                    CniVersion::supported_strings().join(", ")
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_rejects_others() {
        for v in CniVersion::ALL {
            assert_eq!(v.as_str().parse::<CniVersion>().unwrap(), v);
        }
        for bad in ["", "1.0", "0.2.0", "2.0.0", "1.0.0 "] {
            let e = bad.parse::<CniVersion>().unwrap_err();
            assert_eq!(e.code(), 1, "{bad:?}");
            assert!(e.to_string().contains("supported versions are"), "{e}");
        }
    }

    #[test]
    fn feature_gates_follow_the_spec() {
        assert!(!CniVersion::V0_3_1.has_check());
        assert!(CniVersion::V0_4_0.has_check());
        assert!(CniVersion::V0_4_0.ip_version_field());
        assert!(!CniVersion::V1_0_0.ip_version_field());
        assert!(!CniVersion::V1_0_0.has_gc_status());
        assert!(CniVersion::V1_1_0.has_gc_status());
    }
}
