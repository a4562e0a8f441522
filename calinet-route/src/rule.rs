//! Routing rules (`ip rule`) as specs, and a reconciler that keeps the owned
//! ones exactly as desired.
//!
//! The spec itself, [`RuleSpec`], is calinet-types' (re-exported here).
//! A rule is owned when its protocol (`FRA_PROTOCOL`, what `ip rule` shows
//! as `proto`) is the caller's (Calico's 80 by default), as routes are.
//! Rules with selectors this spec does not model (source/destination
//! prefixes, interfaces, ports, uid ranges...) or another action than
//! `lookup` are never touched, whatever their protocol. Rules cannot be
//! replaced in place: a changed rule is added first and the old one deleted
//! after, so there is no moment without either.
//!
//! ```
//! use calinet_route::rule::{RuleSpec, plan_rules};
//! use calinet_route::{Family, RouteProtocol};
//!
//! // Calico's WireGuard rule: unmarked packets look up table 1.
//! let wg = RuleSpec::lookup(Family::V4, 99, 1).fwmark(0x10_0000, 0x10_0000).invert();
//! assert_eq!(wg.to_string(), "99: not from all fwmark 0x100000/0x100000 lookup 1 proto 80");
//! // Observed: an old owned rule for table 2, and someone else's rule.
//! let old = RuleSpec::lookup(Family::V4, 99, 2).fwmark(0x10_0000, 0x10_0000).invert();
//! let theirs = RuleSpec::lookup(Family::V4, 100, 7).protocol(RouteProtocol::BOOT);
//! let plan = plan_rules(&[wg.clone()], &[old.clone(), theirs], RouteProtocol::CALICO).unwrap();
//! assert_eq!((plan.adds, plan.deletions), (vec![wg], vec![old]));
//! ```
use calinet_netlink::consts::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_NOOP, RTM_DELRULE, RTM_GETRULE,
    RTM_NEWRULE,
};
use calinet_netlink::{Acks, DumpEnd, Netns, Protocol, Socket, Writer, attributes};

use calinet_types::Family;
pub use calinet_types::RuleSpec;

use crate::error::{Error, Result};
use crate::spec::RouteProtocol;

const FR_ACT_TO_TBL: u8 = 1;
const FIB_RULE_INVERT: u32 = 0x2;
const FRA_DST: u16 = 1;
const FRA_SRC: u16 = 2;
const FRA_IIFNAME: u16 = 3;
const FRA_GOTO: u16 = 4;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TUN_ID: u16 = 12;
const FRA_SUPPRESS_IFGROUP: u16 = 13;
const FRA_SUPPRESS_PREFIXLEN: u16 = 14;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FRA_OIFNAME: u16 = 17;
const FRA_L3MDEV: u16 = 19;
const FRA_UID_RANGE: u16 = 20;
const FRA_PROTOCOL: u16 = 21;
const FRA_IP_PROTO: u16 = 22;
const FRA_SPORT_RANGE: u16 = 23;
const FRA_DPORT_RANGE: u16 = 24;
/// Selectors a [`RuleSpec`] cannot express: a rule carrying one is not ours.
/// (`FRA_SUPPRESS_*` are reported on every rule, as -1 when unset.)
const UNMODELLED: [u16; 11] = [
    FRA_DST,
    FRA_SRC,
    FRA_IIFNAME,
    FRA_GOTO,
    FRA_TUN_ID,
    FRA_OIFNAME,
    FRA_L3MDEV,
    FRA_UID_RANGE,
    FRA_IP_PROTO,
    FRA_SPORT_RANGE,
    FRA_DPORT_RANGE,
];
/// The kernel's address family number of `family`.
fn af(family: Family) -> u8 {
    match family {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    }
}

/// What a rule reconcile will do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulePlan {
    /// Desired rules missing from the kernel.
    pub adds: Vec<RuleSpec>,
    /// Owned rules that are not desired.
    pub deletions: Vec<RuleSpec>,
}

impl RulePlan {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.adds.is_empty() && self.deletions.is_empty()
    }
}

/// Plans `observed` (the kernel's modelled rules) toward `desired`, owning
/// rules tagged with `protocol`. Bad input (an invalid rule, a desired rule
/// with another protocol, which the reconcile could never delete again) is
/// rejected before anything is planned.
pub fn plan_rules(
    desired: &[RuleSpec],
    observed: &[RuleSpec],
    protocol: RouteProtocol,
) -> Result<RulePlan> {
    for d in desired {
        d.validate()?;
        if d.protocol != protocol {
            return Err(Error::InvalidEntry {
                what: "rule",
                entry: d.to_string(),
                rule: format!(
                    "its protocol is not the owned one ({}), so it would never be removed",
                    protocol.0
                ),
            });
        }
    }
    let mut plan = RulePlan::default();
    for d in desired {
        if !observed.contains(d) && !plan.adds.contains(d) {
            plan.adds.push(d.clone());
        }
    }
    for o in observed {
        if o.protocol == protocol && !desired.contains(o) && !plan.deletions.contains(o) {
            plan.deletions.push(o.clone());
        }
    }
    Ok(plan)
}

/// `struct fib_rule_hdr`: family, dst_len, src_len, tos, table, res1, res2,
/// action, flags.
fn fib_rule_hdr(family: Family, table: u32, action: u8, flags: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = af(family);
    // Tables above 255 travel in FRA_TABLE only (RT_TABLE_UNSPEC here).
    h[4] = u8::try_from(table).unwrap_or(0);
    h[7] = action;
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h
}

/// Writes `RTM_NEWRULE` or `RTM_DELRULE` for `rule`, with every attribute, so a
/// delete removes exactly this rule (the kernel compares the protocol too).
///
/// Adds are not exclusive: the kernel's duplicate check ignores the protocol,
/// so with `NLM_F_EXCL` a foreign rule of the same shape would block ours.
/// The planner adds only rules it did not observe.
pub fn write_rule(w: &mut Writer, rule: &RuleSpec, delete: bool, seq: u32) {
    let (ty, flags) = if delete {
        (RTM_DELRULE, NLM_F_REQUEST)
    } else {
        (RTM_NEWRULE, NLM_F_REQUEST | NLM_F_CREATE)
    };
    let m = w.begin_message(ty, flags, seq);
    let rule_flags = if rule.invert { FIB_RULE_INVERT } else { 0 };
    w.family_header(&fib_rule_hdr(
        rule.family,
        rule.table,
        FR_ACT_TO_TBL,
        rule_flags,
    ));
    w.attr_u32(FRA_PRIORITY, rule.priority);
    if let Some((mark, mask)) = rule.fwmark {
        w.attr_u32(FRA_FWMARK, mark);
        w.attr_u32(FRA_FWMASK, mask);
    }
    w.attr_u32(FRA_TABLE, rule.table);
    w.attr_u8(FRA_PROTOCOL, rule.protocol.0);
    w.end_message(m);
}

/// Reads one `RTM_NEWRULE` payload as a spec; `None` for rules this spec
/// does not model (other families, actions or selectors).
pub fn parse_rule(payload: &[u8]) -> Result<Option<RuleSpec>> {
    let Some(h) = payload.get(..12) else {
        return Err(Error::Decode {
            context: "rule dump".into(),
            message: format!("fib_rule_hdr of {} bytes", payload.len()),
        });
    };
    let family = match i32::from(h[0]) {
        libc::AF_INET => Family::V4,
        libc::AF_INET6 => Family::V6,
        _ => return Ok(None),
    };
    let flags = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
    if h[1] != 0 || h[2] != 0 || h[3] != 0 || h[7] != FR_ACT_TO_TBL {
        return Ok(None);
    }
    let mut r = RuleSpec::lookup(family, 0, u32::from(h[4])).protocol(RouteProtocol::UNSPEC);
    r.invert = flags & FIB_RULE_INVERT != 0;
    let (mut mark, mut mask) = (None, None);
    let decode = |e: calinet_netlink::Error| Error::Decode {
        context: "rule dump".into(),
        message: e.to_string(),
    };
    for a in attributes(&payload[12..]) {
        let a = a.map_err(decode)?;
        match a.ty {
            FRA_PRIORITY => r.priority = a.u32().map_err(decode)?,
            FRA_FWMARK => mark = Some(a.u32().map_err(decode)?),
            FRA_FWMASK => mask = Some(a.u32().map_err(decode)?),
            FRA_TABLE => r.table = a.u32().map_err(decode)?,
            FRA_PROTOCOL => r.protocol = RouteProtocol(a.u8().map_err(decode)?),
            FRA_SUPPRESS_IFGROUP | FRA_SUPPRESS_PREFIXLEN
                if a.u32().map_err(decode)? != u32::MAX =>
            {
                return Ok(None);
            }
            t if UNMODELLED.contains(&t) => return Ok(None),
            _ => {}
        }
    }
    // The kernel reports a mark without a mask as mask 0xffffffff.
    r.fwmark = mark.map(|m| (m, mask.unwrap_or(u32::MAX)));
    Ok(Some(r))
}

/// How many times a rule dump is retried when interrupted.
const DUMP_ATTEMPTS: u32 = 10;

fn socket_error(e: calinet_netlink::Error) -> Error {
    e.into()
}

/// Every modelled IPv4 and IPv6 rule the socket's namespace has.
pub fn dump_rules(sock: &Socket) -> Result<Vec<RuleSpec>> {
    let mut rx = vec![0u8; 1 << 16];
    'attempt: for attempt in 1..=DUMP_ATTEMPTS {
        let mut out = Vec::new();
        for (i, family) in [Family::V4, Family::V6].into_iter().enumerate() {
            let seq = attempt * 2 + i as u32;
            let mut w = Writer::new();
            let m = w.begin_message(RTM_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, seq);
            w.family_header(&fib_rule_hdr(family, 0, 0, 0));
            w.end_message(m);
            let req = w.finish().map_err(socket_error)?;
            let mut parse_failure = None;
            let end = sock
                .dump(&req, seq, &mut rx, "rules", |msg| {
                    if msg.ty == RTM_NEWRULE {
                        match parse_rule(msg.payload) {
                            Ok(Some(r)) => out.push(r),
                            Ok(None) => {}
                            Err(e) => parse_failure = Some(e),
                        }
                    }
                    Ok(())
                })
                .map_err(socket_error)?;
            if let Some(e) = parse_failure {
                return Err(e);
            }
            if end != DumpEnd::Consistent {
                continue 'attempt;
            }
        }
        return Ok(out);
    }
    Err(Error::DumpInconsistent {
        what: "rules",
        attempts: DUMP_ATTEMPTS,
    })
}

/// What one rule reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleReport {
    /// The plan that was applied.
    pub plan: RulePlan,
    /// Write requests sent.
    pub writes: u64,
}

/// Reads the rules of `netns`, plans toward `desired` (owning rules tagged
/// `protocol`; pass every rule of that protocol the caller wants) and applies
/// the plan in one batch: adds first, then deletions. Bad input is rejected
/// before anything is written; the first rejected write is returned as
/// [`Error::Netlink`] naming the rule, after the rest of the batch ran.
///
/// Blocking, one netlink round trip per dump and one for the batch.
pub fn reconcile_rules(
    netns: &Netns,
    desired: &[RuleSpec],
    protocol: RouteProtocol,
) -> Result<RuleReport> {
    for d in desired {
        d.validate()?;
    }
    let sock = Socket::open_in(netns, Protocol::Route)?;
    sock.set_cap_ack(true)?;
    sock.set_ext_ack(true)?;
    let observed = dump_rules(&sock)?;
    let plan = plan_rules(desired, &observed, protocol)?;
    if plan.is_empty() {
        return Ok(RuleReport { plan, writes: 0 });
    }
    let ops: Vec<(&RuleSpec, bool)> = plan
        .adds
        .iter()
        .map(|r| (r, false))
        .chain(plan.deletions.iter().map(|r| (r, true)))
        .collect();
    let base = 1000;
    let mut w = Writer::new();
    for (i, (rule, delete)) in ops.iter().enumerate() {
        write_rule(&mut w, rule, *delete, base + i as u32);
    }
    let noop = base + ops.len() as u32;
    let m = w.begin_message(NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, noop);
    w.end_message(m);
    let mut acks = Acks::new(base, ops.len()).until(noop);
    let batch = w.finish().map_err(socket_error)?;
    sock.transact(&batch, &mut acks, &mut [0u8; 1 << 14], "rule batch")
        .map_err(socket_error)?;
    if let Some((i, nack)) = acks.first_failure() {
        let (rule, delete) = ops[i];
        let verb = if delete { "del" } else { "add" };
        return Err(nack
            .clone()
            .into_error::<Error>(format!("rule {verb} {rule} in netns {netns}")));
    }
    Ok(RuleReport {
        writes: ops.len() as u64,
        plan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use calinet_netlink::messages;

    fn wg() -> RuleSpec {
        RuleSpec::lookup(Family::V4, 99, 1)
            .fwmark(0x10_0000, 0x10_0000)
            .invert()
    }

    /// Layout from include/uapi/linux/fib_rules.h; the same bytes as
    /// `ip rule add not fwmark 0x100000/0x100000 lookup 1 priority 99 protocol 80`
    /// sends (checked against the kernel by tests/rules.rs).
    #[test]
    #[cfg(target_endian = "little")]
    fn rule_message_bytes() {
        let mut w = Writer::new();
        write_rule(&mut w, &wg(), false, 5);
        let m = w.finish().unwrap();
        let want: Vec<u8> = [
            &[68u8, 0, 0, 0, 32, 0, 0x01, 0x04, 5, 0, 0, 0, 0, 0, 0, 0][..], // NEWRULE, REQ|CREATE
            &[2, 0, 0, 0, 1, 0, 0, 1, 2, 0, 0, 0], // AF_INET, table 1, TO_TBL, INVERT
            &[8, 0, 6, 0, 99, 0, 0, 0],            // FRA_PRIORITY
            &[8, 0, 10, 0, 0, 0, 0x10, 0],         // FRA_FWMARK
            &[8, 0, 16, 0, 0, 0, 0x10, 0],         // FRA_FWMASK
            &[8, 0, 15, 0, 1, 0, 0, 0],            // FRA_TABLE
            &[5, 0, 21, 0, 80, 0, 0, 0],           // FRA_PROTOCOL
        ]
        .concat();
        assert_eq!(m, want);
        let msg = messages(&m).next().unwrap().unwrap();
        assert_eq!(parse_rule(msg.payload).unwrap(), Some(wg()));
        // The kernel adds FRA_SUPPRESS_PREFIXLEN = -1 to every rule it reports
        // (seen in an RTM_GETRULE dump of `ip rule add ... protocol 80`); unset,
        // it does not make the rule foreign. Set, it does.
        for (value, ours) in [(u32::MAX, true), (0, false)] {
            let mut w = Writer::new();
            let mm = w.begin_message(RTM_NEWRULE, 0, 1);
            w.family_header(&fib_rule_hdr(Family::V4, 1, FR_ACT_TO_TBL, FIB_RULE_INVERT));
            w.attr_u32(FRA_TABLE, 1);
            w.attr_u32(FRA_SUPPRESS_PREFIXLEN, value);
            w.attr_u8(FRA_PROTOCOL, 80);
            w.attr_u32(FRA_PRIORITY, 99);
            w.attr_u32(FRA_FWMARK, 0x10_0000);
            w.attr_u32(FRA_FWMASK, 0x10_0000);
            w.end_message(mm);
            let b = w.finish().unwrap();
            let msg = messages(&b).next().unwrap().unwrap();
            let parsed = parse_rule(msg.payload).unwrap();
            assert_eq!(parsed == Some(wg()), ours, "{value:#x}: {parsed:?}");
        }
    }

    #[test]
    fn unmodelled_rules_are_not_read_as_ours() {
        let mut w = Writer::new();
        let m = w.begin_message(RTM_NEWRULE, 0, 1);
        w.family_header(&fib_rule_hdr(Family::V4, 5, FR_ACT_TO_TBL, 0));
        w.attr_u32(FRA_PRIORITY, 7);
        w.attr_u8(FRA_PROTOCOL, 80);
        w.attr_str(FRA_IIFNAME, "eth0");
        w.end_message(m);
        let b = w.finish().unwrap();
        let msg = messages(&b).next().unwrap().unwrap();
        assert_eq!(parse_rule(msg.payload).unwrap(), None);
        assert!(parse_rule(&[2, 0]).is_err());
    }

    #[test]
    fn plan_adds_missing_deletes_only_owned() {
        let theirs = RuleSpec::lookup(Family::V4, 99, 1).protocol(RouteProtocol::BOOT);
        let stale = RuleSpec::lookup(Family::V6, 99, 1);
        let p = plan_rules(
            &[wg()],
            &[theirs.clone(), stale.clone()],
            RouteProtocol::CALICO,
        )
        .unwrap();
        assert_eq!(p.adds, vec![wg()]);
        assert_eq!(p.deletions, vec![stale]);
        // Converged: nothing to do.
        let p = plan_rules(&[wg()], &[wg(), theirs], RouteProtocol::CALICO).unwrap();
        assert!(p.is_empty());
    }

    #[test]
    fn bad_rules_are_refused_naming_the_rule() {
        let e = plan_rules(
            &[RuleSpec::lookup(Family::V4, 99, 0)],
            &[],
            RouteProtocol::CALICO,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("invalid rule 99: from all lookup 0 proto 80: table 0"),
            "{e}"
        );
        let e = RuleSpec::lookup(Family::V4, 99, 1)
            .fwmark(0x3, 0x1)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("bits outside its mask"), "{e}");
        let e = plan_rules(
            &[wg().protocol(RouteProtocol::BOOT)],
            &[],
            RouteProtocol::CALICO,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("never be removed"), "{e}");
        assert!(RuleSpec::lookup(Family::V4, 0, 1).validate().is_err());
    }
}
