//! Validated names: Linux interface names and Calico node names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::error::{Error, Result};

/// The kernel's interface-name limit (`IFNAMSIZ` minus the terminating NUL).
pub const IFNAME_MAX_LEN: usize = 15;

/// Calico's default prefix for host-side workload interfaces.
pub const DEFAULT_WORKLOAD_PREFIX: &str = "cali";

/// A validated Linux interface name: 1..=15 bytes, not `.`/`..`, no `/`, `:`, NUL
/// or whitespace (the kernel's `dev_valid_name` rules).
///
/// ```
/// use calinet_types::IfName;
/// let name: IfName = "vxlan.calico".parse().unwrap();
/// assert_eq!(name.as_str(), "vxlan.calico");
/// let err = "a-name-of-16-byt".parse::<IfName>().unwrap_err();
/// assert_eq!(err.to_string(), r#"invalid interface name "a-name-of-16-byt": longer than 15 bytes"#);
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl IfName {
    /// Validates `name` against the kernel's rules.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let rule = if name.is_empty() {
            Some("empty")
        } else if name.len() > IFNAME_MAX_LEN {
            Some("longer than 15 bytes")
        } else if name == "." || name == ".." {
            Some("\".\" and \"..\" are not allowed")
        } else if name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
        {
            Some("contains '/', ':', NUL or whitespace")
        } else {
            None
        };
        match rule {
            Some(rule) => Err(Error::InvalidIfName { name, rule }),
            None => Ok(IfName(name)),
        }
    }

    /// A name written into the program, such as `"wireguard.cali"`.
    ///
    /// # Panics
    ///
    /// If `name` breaks the kernel's rules: a constant that does is a bug.
    #[must_use]
    pub fn from_static(name: &'static str) -> Self {
        match IfName::new(name) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        }
    }

    /// Calico's host-side workload interface name: `prefix` followed by the first 11
    /// hex characters of SHA-1 of `"<namespace>.<pod>"`.
    ///
    /// ```
    /// use calinet_types::IfName;
    /// let name = IfName::workload("cali", "default", "nginx").unwrap();
    /// assert_eq!(name.as_str().len(), 15);
    /// assert!(name.as_str().starts_with("cali"));
    /// ```
    pub fn workload(prefix: &str, namespace: &str, pod: &str) -> Result<Self> {
        let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        IfName::new(format!("{prefix}{}", &hex[..11]))
    }

    /// [`IfName::workload`] with the default prefix `cali`.
    pub fn calico_workload(namespace: &str, pod: &str) -> Self {
        // Cannot fail: "cali" + 11 hex characters is a valid 15-byte name.
        match IfName::workload(DEFAULT_WORKLOAD_PREFIX, namespace, pod) {
            Ok(name) => name,
            Err(_) => unreachable!("cali + 11 hex is always valid"),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for IfName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        IfName::new(s)
    }
}

impl TryFrom<String> for IfName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        IfName::new(s)
    }
}

impl TryFrom<&str> for IfName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        IfName::new(s)
    }
}

impl From<IfName> for String {
    fn from(n: IfName) -> String {
        n.0
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A Calico node name (`metadata.name` of a `Node`; the Kubernetes node name
/// under Kubernetes).
///
/// Validated once, by Calico's documented rule: 1..=253 characters of ASCII
/// letters, digits, `.`, `_` and `-`, starting and ending with a letter or
/// digit. Names are parts of datastore keys, so `/` is never allowed.
///
/// ```
/// use calinet_types::NodeName;
/// assert!("k8s-w1".parse::<NodeName>().is_ok());
/// let err = "a/b".parse::<NodeName>().unwrap_err();
/// assert!(err.to_string().starts_with(r#"invalid node name "a/b": "#));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// The name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |rule: &'static str| {
            Err(Error::InvalidNodeName {
                name: s.to_owned(),
                rule,
            })
        };
        if s.is_empty() || s.len() > 253 {
            return bad("must be 1 to 253 characters long");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return bad("may contain only letters, digits, '.', '-' and '_'");
        }
        let (first, last) = (s.as_bytes()[0], s.as_bytes()[s.len() - 1]);
        if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return bad("must start and end with a letter or digit");
        }
        Ok(NodeName(s.to_owned()))
    }
}

impl TryFrom<String> for NodeName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl TryFrom<&str> for NodeName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        s.parse()
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

impl AsRef<str> for NodeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_name_matches_calico_rule() {
        // sha1("default.nginx") computed independently: `printf default.nginx | sha1sum` = c440f455693b...
        let n = IfName::calico_workload("default", "nginx");
        assert_eq!(n.as_str(), "calic440f455693");
        assert!(IfName::workload("calico-long", "ns", "pod").is_err());
    }

    #[test]
    fn ifname_rules() {
        assert!(IfName::new("eth0").is_ok());
        assert!(IfName::new("wg-v6.cali").is_ok());
        assert!(IfName::new("a23456789012345").is_ok());
        for (bad, rule) in [
            ("", "empty"),
            ("a234567890123456", "longer than 15 bytes"),
            (".", "\".\" and \"..\" are not allowed"),
            ("..", "\".\" and \"..\" are not allowed"),
            ("a/b", "contains '/', ':', NUL or whitespace"),
            ("a:b", "contains '/', ':', NUL or whitespace"),
            ("a b", "contains '/', ':', NUL or whitespace"),
            ("a\0b", "contains '/', ':', NUL or whitespace"),
        ] {
            let err = IfName::new(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid interface name {bad:?}: {rule}")
            );
        }
        assert!(serde_json::from_str::<IfName>("\"a234567890123456\"").is_err());
        let back: IfName = serde_json::from_str("\"eth0\"").unwrap();
        assert_eq!(back.as_str(), "eth0");
    }

    #[test]
    fn node_name_rules() {
        for good in ["k8s-w1", "node-a.example", "Node_1", "n"] {
            assert!(good.parse::<NodeName>().is_ok(), "{good}");
        }
        let long = "x".repeat(254);
        for bad in ["", "-a", "a-", ".a", "a/b", "a b", "a:b", long.as_str()] {
            let err = bad.parse::<NodeName>().unwrap_err();
            assert!(
                matches!(&err, Error::InvalidNodeName { name, .. } if name == bad),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(serde_json::from_str::<NodeName>("\"a b\"").is_err());
    }
}
