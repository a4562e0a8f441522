//! The compiled form: one nftables table (family `inet`) with named sets, verdict
//! maps, chains and rules, as plain data; plus a reference evaluator that runs a
//! packet through it the way the kernel would.
//!
//! Every backend (nft script text, netlink batch) renders this same value, and
//! [`Ruleset::diff`] turns two rulesets into the smallest update.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::semantics::{Direction, Packet, Verdict};

/// Mark bit a policy sets when it passes a packet to the next tier (in Calico's
/// 0xffff0000 mask). Allow needs no mark: it accepts, and each direction has its
/// own base chain, so an egress accept still meets the ingress chain.
pub const MARK_PASS: u32 = 0x0002_0000;

/// conntrack state bits (as the kernel's `ct state`).
pub mod ct {
    /// invalid
    pub const INVALID: u32 = 1;
    /// established
    pub const ESTABLISHED: u32 = 2;
    /// related
    pub const RELATED: u32 = 4;
    /// new
    pub const NEW: u32 = 8;
}

/// Address family of a family-specific match (`meta nfproto`, `ip`/`ip6`
/// address matches, set key types): calinet-types' one `Family`.
pub use calinet_types::Family;

/// Source or destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// Source address / port.
    Src,
    /// Destination address / port.
    Dst,
}

/// Input or output interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IfDir {
    /// `iifname`.
    In,
    /// `oifname`.
    Out,
}

/// Elements of a named set or map.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetElems {
    /// IPv4 addresses (hash set).
    Addr4(BTreeSet<Ipv4Addr>),
    /// IPv6 addresses (hash set).
    Addr6(BTreeSet<Ipv6Addr>),
    /// IPv4 networks (interval set).
    Net4(BTreeSet<Ipv4Net>),
    /// IPv6 networks (interval set).
    Net6(BTreeSet<Ipv6Net>),
    /// Port ranges, inclusive (interval set of `inet_service`).
    Ports(BTreeSet<(u16, u16)>),
    /// `ipv4_addr . inet_proto . inet_service` (named ports).
    AddrProtoPort4(BTreeSet<(Ipv4Addr, u8, u16)>),
    /// `ipv6_addr . inet_proto . inet_service` (named ports).
    AddrProtoPort6(BTreeSet<(Ipv6Addr, u8, u16)>),
    /// `ifname : verdict` map: interface to `goto <chain>`.
    IfGoto(BTreeMap<String, String>),
}

impl SetElems {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            SetElems::Addr4(s) => s.len(),
            SetElems::Addr6(s) => s.len(),
            SetElems::Net4(s) => s.len(),
            SetElems::Net6(s) => s.len(),
            SetElems::Ports(s) => s.len(),
            SetElems::AddrProtoPort4(s) => s.len(),
            SetElems::AddrProtoPort6(s) => s.len(),
            SetElems::IfGoto(s) => s.len(),
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty set of the same type.
    pub fn empty_like(&self) -> SetElems {
        match self {
            SetElems::Addr4(_) => SetElems::Addr4(BTreeSet::new()),
            SetElems::Addr6(_) => SetElems::Addr6(BTreeSet::new()),
            SetElems::Net4(_) => SetElems::Net4(BTreeSet::new()),
            SetElems::Net6(_) => SetElems::Net6(BTreeSet::new()),
            SetElems::Ports(_) => SetElems::Ports(BTreeSet::new()),
            SetElems::AddrProtoPort4(_) => SetElems::AddrProtoPort4(BTreeSet::new()),
            SetElems::AddrProtoPort6(_) => SetElems::AddrProtoPort6(BTreeSet::new()),
            SetElems::IfGoto(_) => SetElems::IfGoto(BTreeMap::new()),
        }
    }

    /// Whether the set is an interval set.
    pub fn is_interval(&self) -> bool {
        matches!(
            self,
            SetElems::Net4(_) | SetElems::Net6(_) | SetElems::Ports(_)
        )
    }

    /// Same element type.
    pub fn same_type(&self, other: &SetElems) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// Merges overlapping and adjacent inclusive ranges (interval sets refuse overlaps).
pub fn merge_ranges<T: Copy + Ord>(
    mut v: Vec<(T, T)>,
    succ: impl Fn(T) -> Option<T>,
) -> Vec<(T, T)> {
    v.sort();
    let mut out: Vec<(T, T)> = Vec::new();
    for (a, b) in v {
        if let Some(last) = out.last_mut() {
            let touches = b <= last.1 || a <= last.1 || succ(last.1).is_some_and(|n| a <= n);
            if touches {
                if b > last.1 {
                    last.1 = b;
                }
                continue;
            }
        }
        out.push((a, b));
    }
    out
}

/// Inclusive u32 ranges of IPv4 networks, merged.
pub fn v4_ranges(nets: &BTreeSet<Ipv4Net>) -> Vec<(u32, u32)> {
    merge_ranges(
        nets.iter()
            .map(|n| (u32::from(n.network()), u32::from(n.broadcast())))
            .collect(),
        |x| x.checked_add(1),
    )
}

/// Inclusive u128 ranges of IPv6 networks, merged.
pub fn v6_ranges(nets: &BTreeSet<Ipv6Net>) -> Vec<(u128, u128)> {
    merge_ranges(
        nets.iter()
            .map(|n| (u128::from(n.network()), u128::from(n.broadcast())))
            .collect(),
        |x| x.checked_add(1),
    )
}

/// Port ranges, merged.
pub fn port_ranges(ports: &BTreeSet<(u16, u16)>) -> Vec<(u16, u16)> {
    merge_ranges(ports.iter().copied().collect(), |x| x.checked_add(1))
}

/// One match of a rule; a rule matches when all its matches do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Match {
    /// `meta nfproto ipv4|ipv6`.
    Family(Family),
    /// `meta l4proto [!=] N`.
    L4Proto {
        /// Protocol number.
        proto: u8,
        /// `!=`.
        negate: bool,
    },
    /// `iifname|oifname "prefix*"`.
    IfPrefix {
        /// Which interface.
        dir: IfDir,
        /// Name prefix.
        prefix: String,
    },
    /// `ip|ip6 saddr|daddr [!=] @set` (address or network set).
    Addr {
        /// Which address.
        side: Side,
        /// Family of the set.
        family: Family,
        /// Set name.
        set: String,
        /// `!=`.
        negate: bool,
    },
    /// `ip|ip6 saddr|daddr [!=] <prefix>`: one network inline, as nft
    /// compiles it (no set to create and look up by name: a policy's single
    /// CIDR is static, so it never needs set-element updates).
    Prefix {
        /// Which address.
        side: Side,
        /// The network (its family is the match's).
        net: IpNet,
        /// `!=`.
        negate: bool,
    },
    /// `th sport|dport [!=] @set`.
    Port {
        /// Which port.
        side: Side,
        /// Set name.
        set: String,
        /// `!=`.
        negate: bool,
    },
    /// `ip daddr . meta l4proto . th dport [!=] @set` (named ports).
    AddrProtoPort {
        /// Which address and port.
        side: Side,
        /// Family of the set.
        family: Family,
        /// Set name.
        set: String,
        /// `!=`.
        negate: bool,
    },
    /// ICMP type (and code): the first one or two bytes of the transport header.
    Icmp {
        /// Type.
        icmp_type: u8,
        /// Code.
        code: Option<u8>,
        /// `!=`.
        negate: bool,
    },
    /// `meta mark & mask != 0`.
    MarkAny(u32),
    /// `ct state & bits != 0`.
    CtState(u32),
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stmt {
    /// Accept (ends the hook).
    Accept,
    /// Drop.
    Drop,
    /// Return to the calling chain.
    Return,
    /// Call a chain; continue here when it returns.
    Jump(String),
    /// `meta mark set mark | bits`, then return.
    SetMarkReturn(u32),
    /// `meta mark set mark & ~bits`, then continue.
    ClearMark(u32),
    /// Log with a prefix, then continue.
    Log(String),
    /// `iifname|oifname vmap @map`: continue when the interface is not in the map.
    Dispatch {
        /// Which interface.
        dir: IfDir,
        /// The map.
        map: String,
    },
    /// `masquerade fully-random`.
    MasqueradeFullyRandom,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// All must match.
    pub matches: Vec<Match>,
    /// Then this.
    pub stmt: Stmt,
    /// Why the rule exists (policy, rule index).
    pub comment: Option<String>,
}

impl Rule {
    /// A rule.
    pub fn new(matches: Vec<Match>, stmt: Stmt) -> Rule {
        Rule {
            matches,
            stmt,
            comment: None,
        }
    }

    /// With a comment.
    pub fn comment(mut self, c: impl Into<String>) -> Rule {
        self.comment = Some(c.into());
        self
    }
}

/// Netfilter hook of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Hook {
    /// input (packets to this host), type filter.
    Input,
    /// forward, type filter.
    Forward,
    /// postrouting, type nat.
    Postrouting,
}

/// A base chain's registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BaseChain {
    /// Hook.
    pub hook: Hook,
    /// Priority.
    pub priority: i32,
}

/// A chain.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Chain {
    /// Set for base chains (policy accept).
    pub base: Option<BaseChain>,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

/// A whole table.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Ruleset {
    /// Table name (family inet).
    pub table: String,
    /// Named sets and maps.
    pub sets: BTreeMap<String, SetElems>,
    /// Chains.
    pub chains: BTreeMap<String, Chain>,
}

/// The difference between two rulesets: what one transaction must do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Sets to create (with their elements).
    pub add_sets: BTreeMap<String, SetElems>,
    /// Sets to delete (after the chains that use them).
    pub del_sets: BTreeSet<String>,
    /// Interval sets to flush and refill in place.
    pub reload_sets: BTreeMap<String, SetElems>,
    /// Elements to add to existing sets.
    pub add_elems: BTreeMap<String, SetElems>,
    /// Elements to remove from existing sets.
    pub del_elems: BTreeMap<String, SetElems>,
    /// Chains to create.
    pub add_chains: BTreeMap<String, Chain>,
    /// Chains whose rules change: flushed and refilled.
    pub replace_chains: BTreeMap<String, Chain>,
    /// Chains to delete.
    pub del_chains: BTreeSet<String>,
}

impl Diff {
    /// Whether the diff touches any chain or rule (as opposed to elements only).
    pub fn touches_rules(&self) -> bool {
        !(self.add_chains.is_empty()
            && self.replace_chains.is_empty()
            && self.del_chains.is_empty())
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        !self.touches_rules()
            && self.add_sets.is_empty()
            && self.del_sets.is_empty()
            && self.reload_sets.is_empty()
            && self.add_elems.is_empty()
            && self.del_elems.is_empty()
    }
}

fn elems_minus(a: &SetElems, b: &SetElems) -> SetElems {
    match (a, b) {
        (SetElems::Addr4(x), SetElems::Addr4(y)) => SetElems::Addr4(x - y),
        (SetElems::Addr6(x), SetElems::Addr6(y)) => SetElems::Addr6(x - y),
        (SetElems::Net4(x), SetElems::Net4(y)) => SetElems::Net4(x - y),
        (SetElems::Net6(x), SetElems::Net6(y)) => SetElems::Net6(x - y),
        (SetElems::Ports(x), SetElems::Ports(y)) => SetElems::Ports(x - y),
        (SetElems::AddrProtoPort4(x), SetElems::AddrProtoPort4(y)) => {
            SetElems::AddrProtoPort4(x - y)
        }
        (SetElems::AddrProtoPort6(x), SetElems::AddrProtoPort6(y)) => {
            SetElems::AddrProtoPort6(x - y)
        }
        (SetElems::IfGoto(x), SetElems::IfGoto(y)) => SetElems::IfGoto(
            x.iter()
                .filter(|(k, v)| y.get(*k) != Some(v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => a.clone(),
    }
}

impl Ruleset {
    /// What to do to turn `self` (installed) into `next`.
    ///
    /// Interval sets whose elements change are flushed and refilled (their ranges
    /// are merged, so element-wise edits could split or join ranges); hash sets and
    /// maps change element by element.
    pub fn diff(&self, next: &Ruleset) -> Diff {
        let mut d = Diff::default();
        for (name, new) in &next.sets {
            match self.sets.get(name) {
                None => {
                    d.add_sets.insert(name.clone(), new.clone());
                }
                Some(old) if old == new => {}
                Some(old) if !old.same_type(new) || new.is_interval() => {
                    // Merged ranges cannot be patched element by element: flush the
                    // set and fill it again (allowed while rules refer to it).
                    d.reload_sets.insert(name.clone(), new.clone());
                }
                Some(old) => {
                    let add = elems_minus(new, old);
                    let del = elems_minus(old, new);
                    // A map entry whose target changed is deleted and re-added.
                    let del = match (&del, new) {
                        (SetElems::IfGoto(dm), SetElems::IfGoto(_)) => SetElems::IfGoto(dm.clone()),
                        _ => del,
                    };
                    if !add.is_empty() {
                        d.add_elems.insert(name.clone(), add);
                    }
                    if !del.is_empty() {
                        d.del_elems.insert(name.clone(), del);
                    }
                }
            }
        }
        for name in self.sets.keys() {
            if !next.sets.contains_key(name) {
                d.del_sets.insert(name.clone());
            }
        }
        for (name, new) in &next.chains {
            match self.chains.get(name) {
                None => {
                    d.add_chains.insert(name.clone(), new.clone());
                }
                Some(old) if old == new => {}
                Some(_) => {
                    d.replace_chains.insert(name.clone(), new.clone());
                }
            }
        }
        for name in self.chains.keys() {
            if !next.chains.contains_key(name) {
                d.del_chains.insert(name.clone());
            }
        }
        d
    }

    /// Set names in the order backends create them: most referenced first, then
    /// by name. The kernel finds a rule's set by walking the table's set list by
    /// name, so hot sets (shared port sets, dispatch maps) early make a big
    /// transaction markedly cheaper to load.
    pub fn set_order(&self) -> Vec<&String> {
        // Counted in a hash map over borrowed names (no allocation per rule):
        // this runs on every full apply, over every rule.
        let mut refs: std::collections::HashMap<&str, (usize, &String), Fnv> =
            self.sets.keys().map(|k| (k.as_str(), (0, k))).collect();
        for c in self.chains.values() {
            for r in &c.rules {
                for s in rule_set_refs(r) {
                    if let Some((n, _)) = refs.get_mut(s.as_str()) {
                        *n += 1;
                    }
                }
            }
        }
        let mut v: Vec<(usize, &String)> = refs.into_values().collect();
        v.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        v.into_iter().map(|(_, k)| k).collect()
    }

    /// Number of rules in all chains.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }
}

/// FNV-1a: a fast hash for short, trusted keys (set names counted on every
/// full apply; SipHash's DoS resistance buys nothing there).
#[derive(Default)]
struct FnvHasher(u64);

impl std::hash::Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type Fnv = std::hash::BuildHasherDefault<FnvHasher>;

/// Sets a rule refers to.
pub fn rule_sets(r: &Rule) -> Vec<&String> {
    rule_set_refs(r).collect()
}

/// The sets and maps a rule refers to, without collecting them.
fn rule_set_refs(r: &Rule) -> impl Iterator<Item = &String> {
    let map = match &r.stmt {
        Stmt::Dispatch { map, .. } => Some(map),
        _ => None,
    };
    r.matches
        .iter()
        .filter_map(|m| match m {
            Match::Addr { set, .. }
            | Match::Port { set, .. }
            | Match::AddrProtoPort { set, .. } => Some(set),
            _ => None,
        })
        .chain(map)
}

/// What happened to a packet in one hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookResult {
    /// Accepted (explicitly or by the base chain policy).
    Accept,
    /// Dropped.
    Drop,
    /// Masqueraded (postrouting).
    Masquerade,
}

enum Flow {
    Continue,
    Final(HookResult),
}

struct Ctx<'a> {
    pkt: &'a Packet,
    iif: &'a str,
    oif: &'a str,
    mark: u32,
    ct_state: u32,
}

/// Errors of the reference evaluator (a malformed IR, never a packet's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// A rule names a chain that does not exist.
    #[error("chain {0:?} does not exist")]
    NoChain(String),
    /// A rule names a set that does not exist or has the wrong type.
    #[error("set {0:?} does not exist or has the wrong type")]
    BadSet(String),
    /// Jumps nest too deeply (a loop).
    #[error("jump depth exceeded at chain {0:?}")]
    TooDeep(String),
}

impl Ruleset {
    /// Runs a packet through the base chain registered at `hook` (new connection,
    /// mark 0), entering on `iif` and leaving on `oif`.
    pub fn run_hook(
        &self,
        hook: Hook,
        pkt: &Packet,
        iif: &str,
        oif: &str,
    ) -> Result<HookResult, EvalError> {
        self.run_hook_ct(hook, pkt, iif, oif, ct::NEW)
    }

    /// As [`Ruleset::run_hook`] with an explicit conntrack state.
    pub fn run_hook_ct(
        &self,
        hook: Hook,
        pkt: &Packet,
        iif: &str,
        oif: &str,
        ct_state: u32,
    ) -> Result<HookResult, EvalError> {
        let mut ctx = Ctx {
            pkt,
            iif,
            oif,
            mark: 0,
            ct_state,
        };
        // Every base chain on the hook runs, lowest priority first: accept (or
        // the end of a chain, policy accept) only ends that chain; drop ends
        // the hook. The mark carries over, as the packet's does.
        let mut bases: Vec<(i32, &String)> = self
            .chains
            .iter()
            .filter_map(|(name, c)| {
                c.base
                    .filter(|b| b.hook == hook)
                    .map(|b| (b.priority, name))
            })
            .collect();
        bases.sort();
        for (_, name) in bases {
            match self.run_chain(name, &mut ctx, 0)? {
                Flow::Final(HookResult::Drop) => return Ok(HookResult::Drop),
                Flow::Final(HookResult::Masquerade) => return Ok(HookResult::Masquerade),
                Flow::Final(HookResult::Accept) | Flow::Continue => {}
            }
        }
        Ok(HookResult::Accept)
    }

    /// The verdict for a packet leaving (`Egress`) or entering (`Ingress`) the
    /// workload behind `iface`, with the other side a non-workload interface.
    pub fn evaluate(
        &self,
        pkt: &Packet,
        iface: &str,
        dir: Direction,
    ) -> Result<Verdict, EvalError> {
        let (iif, oif) = match dir {
            Direction::Egress => (iface, "eth0"),
            Direction::Ingress => ("eth0", iface),
        };
        self.evaluate_forward(pkt, iif, oif)
    }

    /// The verdict for a new connection's packet forwarded from interface `iif`
    /// to `oif`: between two workloads on this node, both the sender's egress
    /// and the receiver's ingress policy apply.
    pub fn evaluate_forward(
        &self,
        pkt: &Packet,
        iif: &str,
        oif: &str,
    ) -> Result<Verdict, EvalError> {
        Ok(match self.run_hook(Hook::Forward, pkt, iif, oif)? {
            HookResult::Drop => Verdict::Deny,
            _ => Verdict::Allow,
        })
    }

    /// The verdict for a new connection's packet that arrives on interface
    /// `iif` addressed to this host (the input hook, no output interface).
    pub fn evaluate_to_host(&self, pkt: &Packet, iif: &str) -> Result<Verdict, EvalError> {
        Ok(match self.run_hook(Hook::Input, pkt, iif, "")? {
            HookResult::Drop => Verdict::Deny,
            _ => Verdict::Allow,
        })
    }

    fn run_chain(&self, name: &str, ctx: &mut Ctx<'_>, depth: usize) -> Result<Flow, EvalError> {
        if depth > 32 {
            return Err(EvalError::TooDeep(name.to_owned()));
        }
        let chain = self
            .chains
            .get(name)
            .ok_or_else(|| EvalError::NoChain(name.to_owned()))?;
        for rule in &chain.rules {
            let mut all = true;
            for m in &rule.matches {
                if !self.matches(m, ctx)? {
                    all = false;
                    break;
                }
            }
            if !all {
                continue;
            }
            match &rule.stmt {
                Stmt::Accept => return Ok(Flow::Final(HookResult::Accept)),
                Stmt::Drop => return Ok(Flow::Final(HookResult::Drop)),
                Stmt::Return => return Ok(Flow::Continue),
                Stmt::Jump(c) => {
                    if let Flow::Final(r) = self.run_chain(c, ctx, depth + 1)? {
                        return Ok(Flow::Final(r));
                    }
                }
                Stmt::SetMarkReturn(bits) => {
                    ctx.mark |= bits;
                    return Ok(Flow::Continue);
                }
                Stmt::ClearMark(bits) => ctx.mark &= !bits,
                Stmt::Log(_) => {}
                Stmt::Dispatch { dir, map } => {
                    let key = match dir {
                        IfDir::In => ctx.iif,
                        IfDir::Out => ctx.oif,
                    };
                    let Some(SetElems::IfGoto(m)) = self.sets.get(map) else {
                        return Err(EvalError::BadSet(map.clone()));
                    };
                    if let Some(target) = m.get(key) {
                        // goto: the target's return goes to our caller.
                        return self.run_chain(target, ctx, depth + 1);
                    }
                }
                Stmt::MasqueradeFullyRandom => return Ok(Flow::Final(HookResult::Masquerade)),
            }
        }
        Ok(Flow::Continue)
    }

    fn matches(&self, m: &Match, ctx: &Ctx<'_>) -> Result<bool, EvalError> {
        let pkt = ctx.pkt;
        let fam = if pkt.is_v4() { Family::V4 } else { Family::V6 };
        let addr = |side: Side| match side {
            Side::Src => pkt.src,
            Side::Dst => pkt.dst,
        };
        let port = |side: Side| match side {
            Side::Src => pkt.src_port,
            Side::Dst => pkt.dst_port,
        };
        let set = |name: &String| {
            self.sets
                .get(name)
                .ok_or_else(|| EvalError::BadSet(name.clone()))
        };
        Ok(match m {
            Match::Family(f) => *f == fam,
            Match::L4Proto { proto, negate } => (pkt.protocol == *proto) != *negate,
            Match::IfPrefix { dir, prefix } => match dir {
                IfDir::In => ctx.iif.starts_with(prefix.as_str()),
                IfDir::Out => ctx.oif.starts_with(prefix.as_str()),
            },
            Match::Addr {
                side,
                family,
                set: name,
                negate,
            } => {
                // The payload load depends on the family, like nft's implicit dependency.
                if *family != fam {
                    return Ok(false);
                }
                let a = addr(*side);
                let hit = match (set(name)?, a) {
                    (SetElems::Addr4(s), IpAddr::V4(a)) => s.contains(&a),
                    (SetElems::Addr6(s), IpAddr::V6(a)) => s.contains(&a),
                    (SetElems::Net4(s), IpAddr::V4(a)) => s.iter().any(|n| n.contains(&a)),
                    (SetElems::Net6(s), IpAddr::V6(a)) => s.iter().any(|n| n.contains(&a)),
                    _ => return Err(EvalError::BadSet(name.clone())),
                };
                hit != *negate
            }
            Match::Prefix { side, net, negate } => {
                // Like a set match, the payload load depends on the family.
                if Family::of(net) != fam {
                    return Ok(false);
                }
                net.contains(&addr(*side)) != *negate
            }
            Match::Port {
                side,
                set: name,
                negate,
            } => {
                let SetElems::Ports(s) = set(name)? else {
                    return Err(EvalError::BadSet(name.clone()));
                };
                let p = port(*side);
                s.iter().any(|(a, b)| (*a..=*b).contains(&p)) != *negate
            }
            Match::AddrProtoPort {
                side,
                family,
                set: name,
                negate,
            } => {
                if *family != fam {
                    return Ok(false);
                }
                let (a, p) = (addr(*side), port(*side));
                let hit = match (set(name)?, a) {
                    (SetElems::AddrProtoPort4(s), IpAddr::V4(a)) => {
                        s.contains(&(a, pkt.protocol, p))
                    }
                    (SetElems::AddrProtoPort6(s), IpAddr::V6(a)) => {
                        s.contains(&(a, pkt.protocol, p))
                    }
                    _ => return Err(EvalError::BadSet(name.clone())),
                };
                hit != *negate
            }
            Match::Icmp {
                icmp_type,
                code,
                negate,
            } => {
                let hit = pkt.icmp_type == *icmp_type && code.is_none_or(|c| c == pkt.icmp_code);
                hit != *negate
            }
            Match::MarkAny(mask) => ctx.mark & mask != 0,
            Match::CtState(bits) => ctx.ct_state & bits != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_overlaps_and_neighbours() {
        assert_eq!(
            merge_ranges(vec![(5u16, 9), (1, 3), (4, 4), (20, 30), (25, 26)], |x| x
                .checked_add(1)),
            vec![(1, 9), (20, 30)]
        );
        let nets: BTreeSet<Ipv4Net> = ["10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/8", "192.0.2.0/24"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            v4_ranges(&nets),
            vec![(0x0a00_0000, 0x0bff_ffff), (0xc000_0200, 0xc000_02ff)]
        );
        assert_eq!(
            merge_ranges(vec![(0u16, 65535), (65535, 65535)], |x| x.checked_add(1)),
            vec![(0, 65535)]
        );
    }
}
