//! Routing rules (`ip rule`) as desired-state values; calinet-route plans
//! and programs them.

use std::fmt;

use crate::error::{Error, Result};
use crate::family::Family;
use crate::spec::RouteProtocol;

/// The kernel's `local` table rule sits at priority 0.
const LOCAL_RULE_PRIORITY: u32 = 0;

/// `[not] from all [fwmark M/MASK] lookup TABLE`, at a priority, tagged with a
/// protocol.
///
/// ```
/// use calinet_types::{Family, RuleSpec};
///
/// // Calico's WireGuard rule: unmarked packets look up table 1.
/// let wg = RuleSpec::lookup(Family::V4, 99, 1).fwmark(0x10_0000, 0x10_0000).invert();
/// assert_eq!(wg.to_string(), "99: not from all fwmark 0x100000/0x100000 lookup 1 proto 80");
/// assert!(wg.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct RuleSpec {
    /// IPv4 or IPv6.
    pub family: Family,
    /// Priority (`pref`); lower runs first.
    pub priority: u32,
    /// Firewall mark to match, with its mask (`fwmark M/MASK`).
    pub fwmark: Option<(u32, u32)>,
    /// Table to look up.
    pub table: u32,
    /// `not`: the rule matches packets that do NOT match its selectors.
    pub invert: bool,
    /// The protocol the rule is tagged with; ownership is decided by it.
    pub protocol: RouteProtocol,
}

impl RuleSpec {
    /// `from all lookup TABLE` at `priority`, protocol 80 (Calico's).
    #[must_use]
    pub fn lookup(family: Family, priority: u32, table: u32) -> Self {
        RuleSpec {
            family,
            priority,
            fwmark: None,
            table,
            invert: false,
            protocol: RouteProtocol::CALICO,
        }
    }

    /// Matches packets whose mark, masked with `mask`, is `mark`.
    #[must_use]
    pub fn fwmark(mut self, mark: u32, mask: u32) -> Self {
        self.fwmark = Some((mark, mask));
        self
    }

    /// Inverts the match (`not`).
    #[must_use]
    pub fn invert(mut self) -> Self {
        self.invert = true;
        self
    }

    /// Tags the rule with `protocol`.
    #[must_use]
    pub fn protocol(mut self, protocol: RouteProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Checks the rules the kernel would otherwise enforce half-way, or not at
    /// all.
    pub fn validate(&self) -> Result<()> {
        let bad = |rule: &str| {
            Err(Error::InvalidRule {
                entry: self.to_string(),
                rule: rule.to_string(),
            })
        };
        if self.table == 0 {
            return bad("table 0 (unspec) cannot be looked up");
        }
        if self.priority == LOCAL_RULE_PRIORITY {
            return bad("priority 0 belongs to the kernel's local-table rule");
        }
        if let Some((mark, mask)) = self.fwmark {
            if mask == 0 {
                return bad("an fwmark mask of 0 matches every packet; leave fwmark out instead");
            }
            if mark & !mask != 0 {
                return bad("the fwmark has bits outside its mask, so no packet can match");
            }
        }
        Ok(())
    }
}

impl fmt::Display for RuleSpec {
    /// As `ip rule` prints it, plus the protocol:
    /// `99: not from all fwmark 0x100000/0x100000 lookup 1 proto 80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.priority)?;
        if self.invert {
            f.write_str("not ")?;
        }
        f.write_str("from all ")?;
        if let Some((mark, mask)) = self.fwmark {
            write!(f, "fwmark {mark:#x}/{mask:#x} ")?;
        }
        write!(f, "lookup {} proto {}", self.table, self.protocol.0)?;
        if self.family == Family::V6 {
            f.write_str(" (ipv6)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rules_are_refused_naming_the_rule() {
        let e = RuleSpec::lookup(Family::V4, 99, 0)
            .validate()
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid rule 99: from all lookup 0 proto 80: table 0 (unspec) cannot be looked up"
        );
        let e = RuleSpec::lookup(Family::V4, 99, 1)
            .fwmark(0x3, 0x1)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("bits outside its mask"), "{e}");
        let e = RuleSpec::lookup(Family::V6, 99, 1)
            .fwmark(0, 0)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("mask of 0"), "{e}");
        assert!(RuleSpec::lookup(Family::V4, 0, 1).validate().is_err());
        assert_eq!(
            RuleSpec::lookup(Family::V6, 98, 2).to_string(),
            "98: from all lookup 2 proto 80 (ipv6)"
        );
    }
}
