//! Routing the device needs: its MTU, its routing table (as calinet-types
//! `RouteSpec`s, which calinet-route programs), and
//! the rule `not from all fwmark M/M lookup T` (priority 99).
//!
//! Order matters: the rule sends every unmarked packet to table T, so it is
//! added only after the device is up and the table's routes exist
//! (`rule_decision` says when); otherwise traffic to peers would hit an
//! empty table and fall through unencrypted or be dropped mid-update.
//! calinet-route has no rule support, so [`RuleSocket`] programs the rule
//! through rtnetlink (`RTM_NEWRULE`) itself.

use std::fmt;

use crate::error::{Error, Result};
use crate::model::{DeviceSettings, Family, RULE_PRIORITY};
use crate::nl::{Msg, ack_errno, attributes, messages};

/// The device MTU: the host MTU (smallest MTU of the up uplinks) minus
/// WireGuard's overhead, 60 bytes over IPv4 and 80 over IPv6 (seed: 9001 -> 8941).
pub fn device_mtu(host_mtu: u32, family: Family) -> u32 {
    host_mtu.saturating_sub(crate::model::overhead(family))
}

/// `not from all fwmark M/M lookup T` at a priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FwmarkRule {
    /// IPv4 or IPv6 rule.
    pub family: Family,
    /// Mark value.
    pub mark: u32,
    /// Mark mask.
    pub mask: u32,
    /// Table to look up.
    pub table: u32,
    /// Rule priority (Calico: 99).
    pub priority: u32,
    /// `not`: match packets WITHOUT the mark.
    pub invert: bool,
}

impl FwmarkRule {
    /// Calico's rule for `settings`: unmarked packets look up the device's table.
    pub fn for_device(settings: &DeviceSettings) -> Self {
        Self {
            family: settings.family,
            mark: settings.fwmark,
            mask: settings.fwmark,
            table: settings.table,
            priority: RULE_PRIORITY,
            invert: true,
        }
    }
    /// Whether an observed rule is this one.
    pub fn matches(&self, o: &ObservedRule) -> bool {
        o.family == self.family
            && o.priority == Some(self.priority)
            && o.fwmark == Some(self.mark)
            && o.fwmask.unwrap_or(u32::MAX) == self.mask
            && o.table == self.table
            && o.invert == self.invert
            && o.action == FR_ACT_TO_TBL
            && o.src_len == 0
            && o.dst_len == 0
    }
}

impl fmt::Display for FwmarkRule {
    /// As `ip rule` prints it: `99: not from all fwmark 0x100000/0x100000 lookup 1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}from all fwmark {:#x}/{:#x} lookup {}",
            self.priority,
            if self.invert { "not " } else { "" },
            self.mark,
            self.mask,
            self.table
        )
    }
}

/// A rule as the kernel reports it (the fields a fwmark rule uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObservedRule {
    /// Family.
    pub family: Family,
    /// `FRA_PRIORITY`.
    pub priority: Option<u32>,
    /// `FRA_FWMARK`.
    pub fwmark: Option<u32>,
    /// `FRA_FWMASK`.
    pub fwmask: Option<u32>,
    /// Table (`FRA_TABLE`, else the header's).
    pub table: u32,
    /// `FIB_RULE_INVERT`.
    pub invert: bool,
    /// Action (1 = lookup table).
    pub action: u8,
    /// Source prefix length (0 = from all).
    pub src_len: u8,
    /// Destination prefix length.
    pub dst_len: u8,
}

const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RTM_GETRULE: u16 = 34;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const FR_ACT_TO_TBL: u8 = 1;
const FIB_RULE_INVERT: u32 = 0x2;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;

fn af(family: Family) -> u8 {
    match family {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    }
}

/// `struct fib_rule_hdr`: family, dst_len, src_len, tos, table, res1, res2, action, flags.
fn fib_rule_hdr(family: Family, table: u32, action: u8, flags: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = af(family);
    h[4] = u8::try_from(table).unwrap_or(0); // RT_TABLE_UNSPEC: FRA_TABLE carries it
    h[7] = action;
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h
}

/// Encode `RTM_NEWRULE` (create, exclusive) or `RTM_DELRULE` for `rule`.
pub fn encode_rule(rule: &FwmarkRule, delete: bool, seq: u32) -> Vec<u8> {
    let (ty, flags) = if delete {
        (RTM_DELRULE, NLM_F_REQUEST | NLM_F_ACK)
    } else {
        (
            RTM_NEWRULE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
    };
    let rule_flags = if rule.invert { FIB_RULE_INVERT } else { 0 };
    let mut m = Msg::new(
        ty,
        flags,
        seq,
        &fib_rule_hdr(rule.family, rule.table, FR_ACT_TO_TBL, rule_flags),
    );
    m.attr(FRA_PRIORITY, &rule.priority.to_ne_bytes());
    m.attr(FRA_FWMARK, &rule.mark.to_ne_bytes());
    m.attr(FRA_FWMASK, &rule.mask.to_ne_bytes());
    m.attr(FRA_TABLE, &rule.table.to_ne_bytes());
    m.finish()
}

/// Encode an `RTM_GETRULE` dump request for `family`.
pub fn encode_rule_dump(family: Family, seq: u32) -> Vec<u8> {
    Msg::new(
        RTM_GETRULE,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        &fib_rule_hdr(family, 0, 0, 0),
    )
    .finish()
}

fn u32_of(p: &[u8]) -> Option<u32> {
    p.get(0..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Parse rule dump replies; returns the rules and whether `NLMSG_DONE` was seen.
pub fn parse_rules(buf: &[u8]) -> Result<(Vec<ObservedRule>, bool)> {
    let mut rules = Vec::new();
    let mut done = false;
    for msg in messages("rules", buf)? {
        match msg.ty {
            NLMSG_DONE => done = true,
            NLMSG_ERROR => {
                let errno = ack_errno("rules", &msg)?;
                if errno != 0 {
                    return Err(Error::RuleErrno {
                        rule: "(dump)".into(),
                        op: "dump rules",
                        errno,
                    });
                }
            }
            RTM_NEWRULE if msg.payload.len() >= 12 => {
                let h = &msg.payload[..12];
                let family = match i32::from(h[0]) {
                    libc::AF_INET => Family::V4,
                    libc::AF_INET6 => Family::V6,
                    _ => continue,
                };
                let mut r = ObservedRule {
                    family,
                    priority: None,
                    fwmark: None,
                    fwmask: None,
                    table: u32::from(h[4]),
                    invert: u32_of(&h[8..12]).unwrap_or(0) & FIB_RULE_INVERT != 0,
                    action: h[7],
                    src_len: h[2],
                    dst_len: h[1],
                };
                for (ty, p) in attributes("rules", &msg.payload[12..])? {
                    match ty {
                        FRA_PRIORITY => r.priority = u32_of(p),
                        FRA_FWMARK => r.fwmark = u32_of(p),
                        FRA_FWMASK => r.fwmask = u32_of(p),
                        FRA_TABLE => r.table = u32_of(p).unwrap_or(r.table),
                        _ => {}
                    }
                }
                rules.push(r);
            }
            _ => {}
        }
    }
    Ok((rules, done))
}

/// An rtnetlink socket for rules, in the network namespace of the thread
/// that opens it.
pub struct RuleSocket {
    socket: netlink_sys::Socket,
    seq: u32,
}

impl fmt::Debug for RuleSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSocket")
            .field("seq", &self.seq)
            .finish()
    }
}

impl RuleSocket {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let io = |op| {
            move |source| Error::RuleIo {
                rule: "-".into(),
                op,
                source,
            }
        };
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)
            .map_err(io("open rtnetlink socket"))?;
        socket.bind_auto().map_err(io("bind"))?;
        socket
            .connect(&netlink_sys::SocketAddr::new(0, 0))
            .map_err(io("connect"))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Every rule of `family`.
    pub fn list(&mut self, family: Family) -> Result<Vec<ObservedRule>> {
        let io = |op| {
            move |source| Error::RuleIo {
                rule: "(dump)".into(),
                op,
                source,
            }
        };
        self.seq = self.seq.wrapping_add(1);
        self.socket
            .send(&encode_rule_dump(family, self.seq), 0)
            .map_err(io("send dump"))?;
        let mut all = Vec::new();
        loop {
            let (buf, _) = self.socket.recv_from_full().map_err(io("receive dump"))?;
            let (rules, done) = parse_rules(&buf)?;
            all.extend(rules);
            if done {
                return Ok(all);
            }
        }
    }

    fn write(&mut self, rule: &FwmarkRule, delete: bool) -> Result<i32> {
        let op = if delete { "delete" } else { "add" };
        let io = |what| {
            let rule = rule.to_string();
            move |source| Error::RuleIo {
                rule,
                op: what,
                source,
            }
        };
        self.seq = self.seq.wrapping_add(1);
        self.socket
            .send(&encode_rule(rule, delete, self.seq), 0)
            .map_err(io("send"))?;
        let (buf, _) = self.socket.recv_from_full().map_err(io("receive ack"))?;
        for msg in messages("rules", &buf)? {
            if msg.ty == NLMSG_ERROR {
                return ack_errno("rules", &msg);
            }
        }
        Err(Error::RuleErrno {
            rule: rule.to_string(),
            op,
            errno: libc::EPROTO,
        })
    }

    /// Add `rule` unless it exists. Returns whether it was added. Call only
    /// once the device and its routes exist (see the module docs).
    pub fn ensure(&mut self, rule: &FwmarkRule) -> Result<bool> {
        if self.list(rule.family)?.iter().any(|o| rule.matches(o)) {
            return Ok(false);
        }
        match self.write(rule, false)? {
            0 => Ok(true),
            libc::EEXIST => Ok(false),
            errno => Err(Error::RuleErrno {
                rule: rule.to_string(),
                op: "add",
                errno,
            }),
        }
    }

    /// Remove `rule` if present. Returns whether it was there.
    pub fn remove(&mut self, rule: &FwmarkRule) -> Result<bool> {
        match self.write(rule, true)? {
            0 => Ok(true),
            libc::ENOENT => Ok(false),
            errno => Err(Error::RuleErrno {
                rule: rule.to_string(),
                op: "delete",
                errno,
            }),
        }
    }
}

pub use with_route::{RuleDecision, missing_routes, route_specs, rule_decision};

mod with_route {
    use std::collections::BTreeMap;

    use calinet_types::{RouteKey, RouteSpec, RouteType};

    use crate::model::DeviceSettings;
    use crate::peers::Computed;

    /// The device's routing table: `range dev <device> scope link table T` for
    /// every peer range, `throw range table T` for every fallback range (nodes
    /// without a usable key, the local node's own ranges), so a wider peer
    /// route never captures them. Where a range is both, the throw wins.
    pub fn route_specs(settings: &DeviceSettings, computed: &Computed) -> Vec<RouteSpec> {
        let device = &settings.ifname;
        let mut by_key: BTreeMap<RouteKey, RouteSpec> = BTreeMap::new();
        for peer in &computed.device.peers {
            for net in &peer.allowed_ips {
                let r = RouteSpec::direct(*net, device.clone()).table(settings.table);
                by_key.entry(r.key()).or_insert(r);
            }
        }
        for fb in &computed.fallback {
            for net in &fb.ranges {
                let r = RouteSpec::throw(*net).table(settings.table);
                by_key.insert(r.key(), r);
            }
        }
        by_key.into_values().collect()
    }

    /// Whether the fwmark rule may be installed now.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum RuleDecision {
        /// Device and every table route exist: add (or keep) the rule.
        Add,
        /// The device does not exist yet: the rule would black-hole traffic.
        WaitForDevice,
        /// This many table routes are still missing.
        WaitForRoutes(usize),
    }

    /// The ordering rule as a value: the rule goes in only after the device
    /// and all of its table's routes exist.
    pub fn rule_decision(
        device_present: bool,
        desired: &[RouteSpec],
        observed: &[RouteSpec],
    ) -> RuleDecision {
        if !device_present {
            return RuleDecision::WaitForDevice;
        }
        match missing_routes(desired, observed).len() {
            0 => RuleDecision::Add,
            n => RuleDecision::WaitForRoutes(n),
        }
    }

    /// Desired routes not (yet) in `observed`, compared on key, type and
    /// device. The fwmark rule may be added only when this is empty.
    pub fn missing_routes<'a>(
        desired: &'a [RouteSpec],
        observed: &[RouteSpec],
    ) -> Vec<&'a RouteSpec> {
        desired
            .iter()
            .filter(|d| {
                !observed.iter().any(|o| {
                    o.key() == d.key()
                        && o.kind == d.kind
                        && (d.kind != RouteType::Unicast || o.device == d.device)
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_follows_the_seed() {
        assert_eq!(device_mtu(9001, Family::V4), 8941);
        assert_eq!(device_mtu(1500, Family::V4), 1440);
        assert_eq!(device_mtu(1500, Family::V6), 1420);
        assert_eq!(device_mtu(40, Family::V4), 0);
    }

    #[test]
    fn calico_rule_text() {
        let r = FwmarkRule::for_device(&DeviceSettings::calico_v4());
        assert_eq!(
            r.to_string(),
            "99: not from all fwmark 0x100000/0x100000 lookup 1"
        );
    }

    /// Layout from include/uapi/linux/fib_rules.h; cross-checked against the
    /// `ip rule add not fwmark 0x100000/0x100000 lookup 1 priority 99` dump
    /// that the lab test reads back.
    #[test]
    #[cfg(target_endian = "little")]
    fn rule_message_bytes() {
        let r = FwmarkRule::for_device(&DeviceSettings::calico_v4());
        let m = encode_rule(&r, false, 5);
        let want: Vec<u8> = [
            &[60u8, 0, 0, 0, 32, 0, 0x05, 0x06, 5, 0, 0, 0, 0, 0, 0, 0][..], // nlmsghdr: NEWRULE, REQ|ACK|EXCL|CREATE
            &[2, 0, 0, 0, 1, 0, 0, 1, 2, 0, 0, 0], // fib_rule_hdr: AF_INET, table 1, TO_TBL, INVERT
            &[8, 0, 6, 0, 99, 0, 0, 0],            // FRA_PRIORITY
            &[8, 0, 10, 0, 0, 0, 0x10, 0],         // FRA_FWMARK
            &[8, 0, 16, 0, 0, 0, 0x10, 0],         // FRA_FWMASK
            &[8, 0, 15, 0, 1, 0, 0, 0],            // FRA_TABLE
        ]
        .concat();
        assert_eq!(m, want);
        // Its own dump form parses back and matches.
        let mut reply = m.clone();
        reply[4..6].copy_from_slice(&RTM_NEWRULE.to_ne_bytes());
        let (rules, done) = parse_rules(&reply).unwrap();
        assert!(!done);
        assert!(r.matches(&rules[0]), "{:?}", rules[0]);
        let mut other = r;
        other.invert = false;
        assert!(!other.matches(&rules[0]));
    }

    #[test]
    fn table_routes_for_the_seed() {
        use calinet_types::RouteType;
        let (mut nodes, key) = crate::seed::nodes();
        nodes[1].public_key = None; // k8s-w0 falls back
        let s = DeviceSettings::calico_v4();
        let c = crate::compute_device(&crate::seed::local(), &key, &s, &nodes, &Default::default());
        let routes = route_specs(&s, &c);
        let show: Vec<String> = routes.iter().map(ToString::to_string).collect();
        assert!(
            show.contains(
                &"172.16.158.0/24 dev wireguard.cali table 1 proto 80 scope link".to_owned()
            ),
            "{show:#?}"
        );
        assert!(
            show.contains(&"throw 172.16.34.0/24 table 1 proto 80".to_owned()),
            "{show:#?}"
        );
        assert!(
            show.contains(&"throw 172.16.116.2/32 table 1 proto 80".to_owned()),
            "{show:#?}"
        );
        assert!(routes.iter().all(|r| r.table == 1 && r.validate().is_ok()));
        assert_eq!(
            routes
                .iter()
                .filter(|r| r.kind == RouteType::Unicast)
                .count(),
            6
        );
        assert_eq!(missing_routes(&routes, &routes).len(), 0);
        assert_eq!(missing_routes(&routes, &routes[1..]).len(), 1);
        assert_eq!(rule_decision(true, &routes, &routes), RuleDecision::Add);
        assert_eq!(
            rule_decision(false, &routes, &routes),
            RuleDecision::WaitForDevice
        );
        assert_eq!(
            rule_decision(true, &routes, &routes[2..]),
            RuleDecision::WaitForRoutes(2)
        );
        // A route with the right key on another device does not count.
        let mut wrong = routes.clone();
        let i = wrong
            .iter()
            .position(|r| r.kind == RouteType::Unicast)
            .unwrap();
        wrong[i].device = Some("eth0".parse().unwrap());
        assert_eq!(
            rule_decision(true, &routes, &wrong),
            RuleDecision::WaitForRoutes(1)
        );
    }
}
