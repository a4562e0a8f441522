//! The compiler: policy model + local endpoints + IP pools -> [`Ruleset`].
//!
//! Shape of the result (table `inet <name>`):
//!
//! - `forward` (hook forward, filter, priority 0): established/related
//!   accepted, invalid dropped, traffic from a workload interface jumps to
//!   `from-wl` (the sender's egress policy).
//! - `forward-to-wl` (hook forward, filter, priority 1): established/related
//!   accepted, traffic to a workload interface jumps to `to-wl` (the receiver's
//!   ingress policy). Two base chains let Allow be a plain `accept`: an accept
//!   ends only its own base chain, so a packet between two local workloads that
//!   egress allows still meets ingress, with no mark set and tested per policy.
//! - `input` (hook input, filter, priority 0): traffic from a workload to
//!   this host. Established/related accepted, then from a workload interface:
//!   invalid dropped, the ICMPv6 types the host needs as the workloads' router
//!   accepted ([`HOST_ICMPV6_TYPES`], as Felix, before any policy), and a jump
//!   to `from-wl`, the same egress dispatch as forwarded traffic (an unknown
//!   workload interface is dropped there).
//! - `input-to-host` (hook input, filter, priority 1): what egress policy
//!   allowed meets [`Options::endpoint_to_host`] (Felix's
//!   `DefaultEndpointToHostAction`, Drop by default). A base chain of its own
//!   for the same reason as `forward-to-wl`: egress Allow is an accept, which
//!   ends only `input`.
//! - `from-wl` / `to-wl`: clear the pass bit, dispatch by interface through the
//!   verdict maps `fw-dispatch` / `tw-dispatch` (O(1)), and drop anything on a
//!   workload interface the map does not know (fail closed).
//! - One chain per distinct *endpoint signature* (`fw-*`/`tw-*`): for each tier
//!   whose policies apply to the endpoint, a jump to each of those policies and
//!   the tier's default drop (which ends the chain); profiles and a final drop
//!   only when no tier ends it. Endpoints with the same signature share the
//!   chain, so adding such an endpoint only adds map entries and set elements.
//! - One chain per policy and direction (`pol-*`) and per profile and direction
//!   (`prof-*`): Allow accepts, Deny drops. Pass sets mark bit [`MARK_PASS`] and
//!   returns, so a tier with a policy that can pass gets a chain of its own
//!   (`tier-*`, per tier and applicable policies) that tests the bit after that
//!   policy and returns, skipping the rest of the tier; the signature chain
//!   clears the bit before the next tier.
//! - Named sets: selector address sets (`sel4-*`, `sel6-*`, keyed by the selector,
//!   so endpoint changes only edit elements), network and port interval sets, and
//!   `address . protocol . port` sets for named ports. A rule's `nets` that are
//!   one network per family are matched inline instead (`ip saddr 192.0.2.0/24`):
//!   they never change without the policy changing, and every set costs the
//!   kernel a walk of the table's set list to create and to find by name.
//! - `postrouting` (hook postrouting, nat): masquerade fully-random when the
//!   source is in a natOutgoing pool and the destination in no pool.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::Error;
use crate::ir::{
    BaseChain, Chain, Family, Hook, IfDir, MARK_PASS, Match, Rule, Ruleset, SetElems, Side, Stmt,
    ct,
};
use crate::model::{Action, Port};
use crate::selector::Selector;
use crate::semantics::{Direction, Endpoint, Endpoints, Entity, NRule, PolicyDef, PolicyModel};

/// An IP pool, for natOutgoing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// The pool's CIDR.
    pub cidr: IpNet,
    /// Masquerade traffic from this pool to destinations outside all pools.
    pub nat_outgoing: bool,
}

/// Compiler options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// nftables table name (family inet).
    pub table: String,
    /// Workload interface prefix (Calico: `cali`).
    pub workload_prefix: String,
    /// Prefix for Log actions.
    pub log_prefix: String,
    /// Compile IPv6 rules and sets (Felix's `ipv6Support`). Off, no IPv6 rule
    /// or set is made and IPv6 packets from or to a workload interface are
    /// dropped (fail closed): for a cluster with no IPv6 pool that removes
    /// every IPv6 twin of an address match and half the selector sets, which
    /// would otherwise stay empty.
    pub ipv6: bool,
    /// What happens to traffic from a workload to this host once the
    /// workload's egress policy allowed it.
    pub endpoint_to_host: EndpointToHostAction,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            table: "calinet".into(),
            workload_prefix: "cali".into(),
            log_prefix: "calico-packet: ".into(),
            ipv6: true,
            endpoint_to_host: EndpointToHostAction::Drop,
        }
    }
}

/// Felix's `DefaultEndpointToHostAction`: the verdict for a packet from a
/// workload to its own host after the workload's egress policy allowed it
/// (a packet egress policy denies is dropped whatever this says).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointToHostAction {
    /// Drop it (Felix's default): a workload cannot reach its host.
    #[default]
    Drop,
    /// Leave it to the host's other rules: our table accepts it and any other
    /// table's input chain still decides (Felix returns to the host's `INPUT`).
    Return,
    /// Accept it. Within one nftables table this is the same as `Return`:
    /// an accept ends only this table's chain.
    Accept,
}

impl EndpointToHostAction {
    /// Felix's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointToHostAction::Drop => "Drop",
            EndpointToHostAction::Return => "Return",
            EndpointToHostAction::Accept => "Accept",
        }
    }
}

impl std::fmt::Display for EndpointToHostAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EndpointToHostAction {
    type Err = Error;

    /// `Drop`, `Return` or `Accept`, any case (Felix also takes `DROP` etc.).
    fn from_str(s: &str) -> Result<Self, Error> {
        [
            EndpointToHostAction::Drop,
            EndpointToHostAction::Return,
            EndpointToHostAction::Accept,
        ]
        .into_iter()
        .find(|a| a.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| Error::Invalid {
            resource: "FelixConfiguration".into(),
            field: "spec.defaultEndpointToHostAction".into(),
            reason: format!("{s:?} is not one of Drop, Return, Accept"),
        })
    }
}

/// ICMPv6 types a workload may always send to its host, before and whatever
/// its egress policy and the endpoint-to-host action (as Felix): multicast
/// listener query/report/done (130-132), router solicitation (133), neighbour
/// solicitation and advertisement (135, 136). Without neighbour discovery an
/// IPv6 workload cannot reach its gateway, the host's link-local address.
pub const HOST_ICMPV6_TYPES: [u8; 6] = [130, 131, 132, 133, 135, 136];

/// Stable short name for content: FNV-1a 64 in hex.
pub fn content_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

struct Compiler<'a> {
    model: &'a PolicyModel,
    eps: &'a Endpoints,
    opts: &'a Options,
    rs: Ruleset,
    // endpoint name -> (tier index, policy index) of every policy selecting it,
    // in evaluation order.
    applies: BTreeMap<&'a str, Vec<(usize, usize)>>,
    // What each endpoint-derived set is made of, so an incremental update can
    // patch it for one endpoint.
    sources: BTreeMap<String, SetSource>,
}

/// What an endpoint-derived set holds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SetSource {
    /// Addresses of the endpoints a selector matches.
    Selector(Selector, Family),
    /// `address . protocol . port` of named ports of the endpoints a selector matches.
    NamedPorts(Selector, Vec<String>, Family),
}

/// Compiles the model for the endpoints of this node.
pub fn compile(
    model: &PolicyModel,
    eps: &Endpoints,
    pools: &[Pool],
    opts: &Options,
) -> Result<Ruleset, Error> {
    compile_with_sources(model, eps, pools, opts).map(|(rs, _)| rs)
}

fn check_interfaces(eps: &Endpoints, opts: &Options) -> Result<(), Error> {
    let p = &opts.workload_prefix;
    if p.is_empty() || p.len() > 14 || !p.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        return Err(Error::Invalid {
            resource: "compiler options".into(),
            field: "workload_prefix".into(),
            reason: format!("{p:?} is not 1 to 14 printable bytes of an interface name"),
        });
    }
    let mut seen_if = BTreeMap::new();
    for ep in eps.by_name.values().filter(|e| e.local) {
        check_interface(ep, opts)?;
        if let Some(other) = seen_if.insert(ep.interface.clone(), ep.name.clone()) {
            return Err(Error::Endpoint {
                endpoint: ep.name.clone(),
                reason: format!(
                    "interface {} is also used by endpoint {other}",
                    ep.interface
                ),
            });
        }
    }
    Ok(())
}

fn compile_with_sources(
    model: &PolicyModel,
    eps: &Endpoints,
    pools: &[Pool],
    opts: &Options,
) -> Result<(Ruleset, BTreeMap<String, SetSource>), Error> {
    check_interfaces(eps, opts)?;
    let mut c = Compiler {
        model,
        eps,
        opts,
        rs: Ruleset {
            table: opts.table.clone(),
            ..Ruleset::default()
        },
        applies: BTreeMap::new(),
        sources: BTreeMap::new(),
    };
    // Evaluate each policy's selector once (through the label index) instead of
    // every policy against every endpoint.
    for (ti, tier) in model.tiers.iter().enumerate() {
        for (pi, p) in tier.policies.iter().enumerate() {
            for ep in eps.selected(&p.applies_to) {
                c.applies
                    .entry(ep.name.as_str())
                    .or_default()
                    .push((ti, pi));
            }
        }
    }
    c.base_chains();
    let mut fw = BTreeMap::new();
    let mut tw = BTreeMap::new();
    for ep in eps.by_name.values().filter(|e| e.local) {
        let f = c.signature_chain(ep, Direction::Egress);
        fw.insert(ep.interface.clone(), f);
        let t = c.signature_chain(ep, Direction::Ingress);
        tw.insert(ep.interface.clone(), t);
    }
    c.rs.sets.insert("fw-dispatch".into(), SetElems::IfGoto(fw));
    c.rs.sets.insert("tw-dispatch".into(), SetElems::IfGoto(tw));
    c.nat(pools);
    Ok((c.rs, c.sources))
}

/// A compiled ruleset kept current endpoint by endpoint: adding or removing an
/// endpoint evaluates the existing selector sets and the policies against that
/// one endpoint (work proportional to the change, not to the cluster), and the
/// result is always equal to a full [`compile`] of the same state.
///
/// Endpoint addresses are assumed unique across endpoints.
#[derive(Debug)]
pub struct Incremental {
    model: PolicyModel,
    pools: Vec<Pool>,
    opts: Options,
    eps: Endpoints,
    rs: Ruleset,
    sources: BTreeMap<String, SetSource>,
}

impl Incremental {
    /// Compiles the initial state.
    pub fn new(
        model: PolicyModel,
        endpoints: impl IntoIterator<Item = Endpoint>,
        pools: Vec<Pool>,
        opts: Options,
    ) -> Result<Self, Error> {
        let eps = Endpoints::new(&model, endpoints);
        let (rs, sources) = compile_with_sources(&model, &eps, &pools, &opts)?;
        Ok(Incremental {
            model,
            pools,
            opts,
            eps,
            rs,
            sources,
        })
    }

    /// The current ruleset.
    pub fn ruleset(&self) -> &Ruleset {
        &self.rs
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> &Endpoints {
        &self.eps
    }

    /// The pools the ruleset was compiled with.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// Adds an endpoint, or replaces the one with the same name.
    pub fn upsert_endpoint(&mut self, ep: Endpoint) -> Result<(), Error> {
        if ep.local {
            check_interface(&ep, &self.opts)?;
            if let Some(other) = self
                .eps
                .by_name
                .values()
                .find(|o| o.local && o.name != ep.name && o.interface == ep.interface)
            {
                return Err(Error::Endpoint {
                    endpoint: ep.name.clone(),
                    reason: format!(
                        "interface {} is also used by endpoint {}",
                        ep.interface, other.name
                    ),
                });
            }
        }
        if self.eps.by_name.contains_key(&ep.name) {
            self.remove_endpoint(&ep.name);
        }
        self.eps.upsert(&self.model, ep.clone());
        let labels = self.eps.labels(&ep.name).cloned().unwrap_or_default();
        for (name, src) in &self.sources {
            let Some(set) = self.rs.sets.get_mut(name) else {
                continue;
            };
            match src {
                SetSource::Selector(sel, _) if sel.matches(&labels) => {
                    for a in &ep.addrs {
                        insert_addr(set, *a);
                    }
                }
                SetSource::NamedPorts(sel, names, _) if sel.matches(&labels) => {
                    for np in ep.named_ports.iter().filter(|np| names.contains(&np.name)) {
                        for a in &ep.addrs {
                            insert_named(set, *a, np.protocol.0, np.port);
                        }
                    }
                }
                _ => {}
            }
        }
        if !ep.local {
            return Ok(());
        }
        let mut applies = Vec::new();
        for (ti, tier) in self.model.tiers.iter().enumerate() {
            for (pi, p) in tier.policies.iter().enumerate() {
                if p.applies_to.matches(&labels) {
                    applies.push((ti, pi));
                }
            }
        }
        let mut c = Compiler {
            model: &self.model,
            eps: &self.eps,
            opts: &self.opts,
            rs: std::mem::take(&mut self.rs),
            applies: [(ep.name.as_str(), applies)].into_iter().collect(),
            sources: std::mem::take(&mut self.sources),
        };
        let fw = c.signature_chain(&ep, Direction::Egress);
        let tw = c.signature_chain(&ep, Direction::Ingress);
        for (map, chain) in [("fw-dispatch", fw), ("tw-dispatch", tw)] {
            if let Some(SetElems::IfGoto(m)) = c.rs.sets.get_mut(map) {
                m.insert(ep.interface.clone(), chain);
            }
        }
        self.rs = c.rs;
        self.sources = c.sources;
        Ok(())
    }

    /// Removes an endpoint (no-op when unknown); chains and sets nothing uses
    /// any more are dropped.
    pub fn remove_endpoint(&mut self, name: &str) {
        let Some(ep) = self.eps.remove(name) else {
            return;
        };
        for set_name in self.sources.keys() {
            if let Some(set) = self.rs.sets.get_mut(set_name) {
                for a in &ep.addrs {
                    remove_addr(set, *a);
                }
            }
        }
        if ep.local {
            for map in ["fw-dispatch", "tw-dispatch"] {
                if let Some(SetElems::IfGoto(m)) = self.rs.sets.get_mut(map) {
                    m.remove(&ep.interface);
                }
            }
        }
        self.gc();
    }

    /// Drops chains no base chain reaches and sets no remaining rule uses.
    fn gc(&mut self) {
        let mut reach: std::collections::BTreeSet<String> = self
            .rs
            .chains
            .iter()
            .filter(|(_, c)| c.base.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        let mut todo: Vec<String> = reach.iter().cloned().collect();
        let mut used_sets = std::collections::BTreeSet::new();
        while let Some(name) = todo.pop() {
            let Some(chain) = self.rs.chains.get(&name) else {
                continue;
            };
            for r in &chain.rules {
                let mut next = Vec::new();
                if let Stmt::Jump(t) = &r.stmt {
                    next.push(t.clone());
                }
                for s in crate::ir::rule_sets(r) {
                    used_sets.insert(s.clone());
                    if let Some(SetElems::IfGoto(m)) = self.rs.sets.get(s) {
                        next.extend(m.values().cloned());
                    }
                }
                for n in next {
                    if reach.insert(n.clone()) {
                        todo.push(n);
                    }
                }
            }
        }
        self.rs.chains.retain(|n, _| reach.contains(n));
        self.rs.sets.retain(|n, _| used_sets.contains(n));
        self.sources.retain(|n, _| used_sets.contains(n));
    }
}

fn insert_addr(set: &mut SetElems, a: IpAddr) {
    match (set, a) {
        (SetElems::Addr4(s), IpAddr::V4(a)) => {
            s.insert(a);
        }
        (SetElems::Addr6(s), IpAddr::V6(a)) => {
            s.insert(a);
        }
        _ => {}
    }
}

fn insert_named(set: &mut SetElems, a: IpAddr, proto: u8, port: u16) {
    match (set, a) {
        (SetElems::AddrProtoPort4(s), IpAddr::V4(a)) => {
            s.insert((a, proto, port));
        }
        (SetElems::AddrProtoPort6(s), IpAddr::V6(a)) => {
            s.insert((a, proto, port));
        }
        _ => {}
    }
}

fn remove_addr(set: &mut SetElems, a: IpAddr) {
    match (set, a) {
        (SetElems::Addr4(s), IpAddr::V4(a)) => {
            s.remove(&a);
        }
        (SetElems::Addr6(s), IpAddr::V6(a)) => {
            s.remove(&a);
        }
        (SetElems::AddrProtoPort4(s), IpAddr::V4(a)) => s.retain(|(x, _, _)| *x != a),
        (SetElems::AddrProtoPort6(s), IpAddr::V6(a)) => s.retain(|(x, _, _)| *x != a),
        _ => {}
    }
}

fn check_interface(ep: &Endpoint, opts: &Options) -> Result<(), Error> {
    let i = &ep.interface;
    let ok = i.len() <= 15
        && i.len() > opts.workload_prefix.len()
        && i.starts_with(&opts.workload_prefix)
        && i.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'"');
    if ok {
        Ok(())
    } else {
        Err(Error::Endpoint {
            endpoint: ep.name.clone(),
            reason: format!(
                "interface {i:?} is not a workload interface name ({}<suffix>, at most 15 bytes)",
                opts.workload_prefix
            ),
        })
    }
}

fn fam_tag(f: Family) -> &'static str {
    match f {
        Family::V4 => "4",
        Family::V6 => "6",
    }
}

fn dir_tag(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "i",
        Direction::Egress => "o",
    }
}

impl Compiler<'_> {
    fn base_chains(&mut self) {
        let wl = &self.opts.workload_prefix;
        let established = || {
            Rule::new(
                vec![Match::CtState(ct::ESTABLISHED | ct::RELATED)],
                Stmt::Accept,
            )
        };
        let to_workload_chain = |dir: IfDir, chain: &str| {
            Rule::new(
                vec![Match::IfPrefix {
                    dir,
                    prefix: wl.clone(),
                }],
                Stmt::Jump(chain.into()),
            )
        };
        let forward = |priority: i32, rules: Vec<Rule>| Chain {
            base: Some(BaseChain {
                hook: Hook::Forward,
                priority,
            }),
            rules,
        };
        let egress = forward(
            0,
            vec![
                established(),
                Rule::new(vec![Match::CtState(ct::INVALID)], Stmt::Drop),
                to_workload_chain(IfDir::In, "from-wl"),
            ],
        );
        let ingress = forward(
            1,
            vec![established(), to_workload_chain(IfDir::Out, "to-wl")],
        );
        self.rs.chains.insert("forward".into(), egress);
        self.rs.chains.insert("forward-to-wl".into(), ingress);
        self.input_chains();
        for (name, dir, map) in [
            ("from-wl", IfDir::In, "fw-dispatch"),
            ("to-wl", IfDir::Out, "tw-dispatch"),
        ] {
            let mut rules = Vec::new();
            if !self.opts.ipv6 {
                rules.push(
                    Rule::new(vec![Match::Family(Family::V6)], Stmt::Drop).comment("IPv6 off"),
                );
            }
            rules.extend([
                // A pass bit left by the other direction's base chain (or set
                // outside this table) must not make a tier skip.
                Rule::new(vec![], Stmt::ClearMark(MARK_PASS)),
                Rule::new(
                    vec![],
                    Stmt::Dispatch {
                        dir,
                        map: map.into(),
                    },
                ),
                Rule::new(vec![], Stmt::Drop).comment("unknown workload interface"),
            ]);
            self.rs
                .chains
                .insert(name.into(), Chain { base: None, rules });
        }
    }

    /// The input hook: a workload's traffic to this host meets its egress
    /// policy, then the endpoint-to-host action. Traffic from other
    /// interfaces is not this table's business (the chains end, policy accept).
    fn input_chains(&mut self) {
        let from_wl = || Match::IfPrefix {
            dir: IfDir::In,
            prefix: self.opts.workload_prefix.clone(),
        };
        let established = || {
            Rule::new(
                vec![Match::CtState(ct::ESTABLISHED | ct::RELATED)],
                Stmt::Accept,
            )
        };
        let icmpv6: Vec<Rule> = if self.opts.ipv6 {
            HOST_ICMPV6_TYPES
                .iter()
                .map(|&t| {
                    Rule::new(
                        vec![
                            from_wl(),
                            Match::Family(Family::V6),
                            Match::L4Proto {
                                proto: 58,
                                negate: false,
                            },
                            Match::Icmp {
                                icmp_type: t,
                                code: None,
                                negate: false,
                            },
                        ],
                        Stmt::Accept,
                    )
                    .comment("ICMPv6 the host needs as router")
                })
                .collect()
        } else {
            Vec::new()
        };
        let input = |priority: i32, rules: Vec<Rule>| Chain {
            base: Some(BaseChain {
                hook: Hook::Input,
                priority,
            }),
            rules,
        };
        let mut policy = vec![
            established(),
            Rule::new(vec![from_wl(), Match::CtState(ct::INVALID)], Stmt::Drop),
        ];
        policy.extend(icmpv6.iter().cloned());
        policy.push(Rule::new(vec![from_wl()], Stmt::Jump("from-wl".into())));
        let stmt = match self.opts.endpoint_to_host {
            EndpointToHostAction::Drop => Stmt::Drop,
            EndpointToHostAction::Return => Stmt::Return,
            EndpointToHostAction::Accept => Stmt::Accept,
        };
        let mut action = vec![established()];
        action.extend(icmpv6);
        action.push(Rule::new(vec![from_wl()], stmt).comment(format!(
            "defaultEndpointToHostAction {}",
            self.opts.endpoint_to_host
        )));
        self.rs.chains.insert("input".into(), input(0, policy));
        self.rs
            .chains
            .insert("input-to-host".into(), input(1, action));
    }

    fn families(&self) -> &'static [Family] {
        if self.opts.ipv6 {
            &[Family::V4, Family::V6]
        } else {
            &[Family::V4]
        }
    }

    fn nat(&mut self, pools: &[Pool]) {
        let mut rules = Vec::new();
        for &fam in self.families() {
            let nat: Vec<IpNet> = pools
                .iter()
                .filter(|p| p.nat_outgoing && Family::of(p.cidr) == fam)
                .map(|p| p.cidr.trunc())
                .collect();
            let all: Vec<IpNet> = pools
                .iter()
                .filter(|p| Family::of(p.cidr) == fam)
                .map(|p| p.cidr.trunc())
                .collect();
            let t = fam_tag(fam);
            let nat_set = format!("nat-pools{t}");
            let all_set = format!("all-pools{t}");
            self.rs.sets.insert(nat_set.clone(), net_elems(&nat, fam));
            self.rs.sets.insert(all_set.clone(), net_elems(&all, fam));
            rules.push(
                Rule::new(
                    vec![
                        Match::Family(fam),
                        Match::Addr {
                            side: Side::Src,
                            family: fam,
                            set: nat_set,
                            negate: false,
                        },
                        Match::Addr {
                            side: Side::Dst,
                            family: fam,
                            set: all_set,
                            negate: true,
                        },
                    ],
                    Stmt::MasqueradeFullyRandom,
                )
                .comment("natOutgoing"),
            );
        }
        self.rs.chains.insert(
            "postrouting".into(),
            Chain {
                base: Some(BaseChain {
                    hook: Hook::Postrouting,
                    priority: 100,
                }),
                rules,
            },
        );
    }

    /// The chain for an endpoint's direction, shared with every endpoint whose
    /// applicable tiers, policies and profiles are the same.
    fn signature_chain(&mut self, ep: &Endpoint, dir: Direction) -> String {
        let mut tiers: Vec<(usize, Vec<usize>)> = Vec::new();
        let model = self.model;
        for &(ti, pi) in self
            .applies
            .get(ep.name.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if model.tiers[ti].policies[pi].rules(dir).is_none() {
                continue;
            }
            match tiers.last_mut() {
                Some((t, ps)) if *t == ti => ps.push(pi),
                _ => tiers.push((ti, vec![pi])),
            }
        }
        let mut key = String::from(dir_tag(dir));
        let mut rules = Vec::new();
        let mut ended = false;
        for (i, (ti, ps)) in tiers.iter().enumerate() {
            let tier = &model.tiers[*ti];
            if ps
                .iter()
                .any(|&pi| policy_can_pass(&tier.policies[pi], dir))
            {
                // Only a chain of its own can skip the rest of a tier on Pass.
                let tier_chain = self.tier_chain(dir, *ti, ps);
                key.push_str(&format!("|{tier_chain}"));
                rules.push(Rule::new(vec![], Stmt::Jump(tier_chain)));
                // A tier that passed returns with the pass bit set; the next
                // tier tests it, so it starts clear.
                if i + 1 < tiers.len() {
                    rules.push(Rule::new(vec![], Stmt::ClearMark(MARK_PASS)));
                }
                continue;
            }
            // No policy here can pass: call them from this chain. The tier's
            // default drop then ends it; nothing after would be reachable.
            for &pi in ps {
                let pc = self.policy_chain(&tier.name, &tier.policies[pi], dir);
                key.push_str(&format!("|{pc}"));
                rules.push(Rule::new(vec![], Stmt::Jump(pc)));
            }
            if tier.default_action != Action::Pass {
                key.push_str(&format!("|end {}", tier.name));
                rules.push(
                    Rule::new(vec![], Stmt::Drop).comment(format!("end of tier {}", tier.name)),
                );
                ended = true;
                break;
            }
        }
        if !ended {
            for prof in &ep.profiles {
                if let Some(pc) = self.profile_chain(prof, dir) {
                    key.push_str(&format!("|{pc}"));
                    rules.push(Rule::new(vec![], Stmt::Jump(pc)));
                }
            }
            rules.push(Rule::new(vec![], Stmt::Drop).comment("no policy or profile allowed it"));
        }
        let name = format!(
            "{}-{}",
            if dir == Direction::Egress { "fw" } else { "tw" },
            content_hash(&key)
        );
        self.rs
            .chains
            .entry(name.clone())
            .or_insert(Chain { base: None, rules });
        name
    }

    fn tier_chain(&mut self, dir: Direction, ti: usize, ps: &[usize]) -> String {
        let tier = &self.model.tiers[ti];
        let mut key = format!("{}|{}", dir_tag(dir), tier.name);
        let mut rules = Vec::new();
        let policies: Vec<PolicyDef> = ps.iter().map(|i| tier.policies[*i].clone()).collect();
        let tier_name = tier.name.clone();
        let default_action = tier.default_action;
        for p in &policies {
            let pc = self.policy_chain(&tier_name, p, dir);
            key.push_str(&format!("|{pc}"));
            rules.push(Rule::new(vec![], Stmt::Jump(pc)));
            // Allow and Deny end the hook's chain themselves; only a pass
            // comes back here needing to skip the rest of the tier.
            if policy_can_pass(p, dir) {
                rules.push(Rule::new(vec![Match::MarkAny(MARK_PASS)], Stmt::Return));
            }
        }
        if default_action != Action::Pass {
            rules.push(Rule::new(vec![], Stmt::Drop).comment(format!("end of tier {tier_name}")));
        }
        let name = format!("tier-{}", content_hash(&key));
        self.rs
            .chains
            .entry(name.clone())
            .or_insert(Chain { base: None, rules });
        name
    }

    fn policy_chain(&mut self, tier: &str, p: &PolicyDef, dir: Direction) -> String {
        let name = format!(
            "pol-{}-{}",
            dir_tag(dir),
            content_hash(&format!("{tier}|{}", p.id))
        );
        if self.rs.chains.contains_key(&name) {
            return name;
        }
        let mut rules = Vec::new();
        for (i, r) in p.rules(dir).unwrap_or_default().iter().enumerate() {
            let comment = format!("policy {} rule {i}", p.id);
            for ir in self.compile_rule(r, policy_stmt(r.action, &self.opts.log_prefix)) {
                rules.push(ir.comment(comment.clone()));
            }
        }
        self.rs
            .chains
            .insert(name.clone(), Chain { base: None, rules });
        name
    }

    fn profile_chain(&mut self, prof: &str, dir: Direction) -> Option<String> {
        let def = self.model.profiles.get(prof)?.clone();
        let name = format!("prof-{}-{}", dir_tag(dir), content_hash(prof));
        if self.rs.chains.contains_key(&name) {
            return Some(name);
        }
        let rs = match dir {
            Direction::Ingress => &def.ingress,
            Direction::Egress => &def.egress,
        };
        let mut rules = Vec::new();
        for (i, r) in rs.iter().enumerate() {
            let stmt = match r.action {
                // A profile has no tier to pass to: Pass ends the profile.
                Action::Pass => Stmt::Return,
                a => policy_stmt(a, &self.opts.log_prefix),
            };
            let comment = format!("profile {prof} rule {i}");
            for ir in self.compile_rule(r, stmt) {
                rules.push(ir.comment(comment.clone()));
            }
        }
        self.rs
            .chains
            .insert(name.clone(), Chain { base: None, rules });
        Some(name)
    }

    fn sel_set(&mut self, sel: &Selector, fam: Family) -> String {
        let name = format!("sel{}-{}", fam_tag(fam), content_hash(&sel.to_string()));
        if !self.rs.sets.contains_key(&name) {
            let addrs: Vec<IpAddr> = self
                .eps
                .selected(sel)
                .flat_map(|e| e.addrs.iter().copied())
                .collect();
            let elems = match fam {
                Family::V4 => SetElems::Addr4(
                    addrs
                        .iter()
                        .filter_map(|a| match a {
                            IpAddr::V4(a) => Some(*a),
                            IpAddr::V6(_) => None,
                        })
                        .collect(),
                ),
                Family::V6 => SetElems::Addr6(
                    addrs
                        .iter()
                        .filter_map(|a| match a {
                            IpAddr::V6(a) => Some(*a),
                            IpAddr::V4(_) => None,
                        })
                        .collect(),
                ),
            };
            self.rs.sets.insert(name.clone(), elems);
            self.sources
                .insert(name.clone(), SetSource::Selector(sel.clone(), fam));
        }
        name
    }

    fn net_set(&mut self, nets: &[IpNet], fam: Family) -> String {
        let mine: Vec<IpNet> = nets
            .iter()
            .filter(|n| Family::of(*n) == fam)
            .copied()
            .collect();
        let key: Vec<String> = mine.iter().map(ToString::to_string).collect();
        let name = format!("net{}-{}", fam_tag(fam), content_hash(&key.join(",")));
        self.rs
            .sets
            .entry(name.clone())
            .or_insert_with(|| net_elems(&mine, fam));
        name
    }

    /// The match for a rule's `nets` / `notNets` of one family: a single
    /// network inline (as nft writes it; nothing for the kernel to find by
    /// name), several through an interval set.
    fn nets_match(&mut self, nets: &[IpNet], side: Side, fam: Family, negate: bool) -> Match {
        let of_family: BTreeSet<IpNet> = nets
            .iter()
            .filter(|n| Family::of(*n) == fam)
            .map(IpNet::trunc)
            .collect();
        match of_family.first() {
            Some(net) if of_family.len() == 1 && net.prefix_len() > 0 => Match::Prefix {
                side,
                net: *net,
                negate,
            },
            _ => Match::Addr {
                side,
                family: fam,
                set: self.net_set(nets, fam),
                negate,
            },
        }
    }

    fn port_set(&mut self, ports: &[(u16, u16)]) -> String {
        let elems: BTreeSet<(u16, u16)> = ports.iter().copied().collect();
        let key: Vec<String> = elems.iter().map(|(a, b)| format!("{a}-{b}")).collect();
        let name = format!("port-{}", content_hash(&key.join(",")));
        self.rs
            .sets
            .entry(name.clone())
            .or_insert(SetElems::Ports(elems));
        name
    }

    fn named_port_set(&mut self, sel: Option<&Selector>, names: &[String], fam: Family) -> String {
        let sel = sel.cloned().unwrap_or_default();
        let name = format!(
            "np{}-{}",
            fam_tag(fam),
            content_hash(&format!("{sel}|{}", names.join(",")))
        );
        if !self.rs.sets.contains_key(&name) {
            let mut v4 = BTreeSet::new();
            let mut v6 = BTreeSet::new();
            for e in self.eps.selected(&sel) {
                for np in e.named_ports.iter().filter(|np| names.contains(&np.name)) {
                    for a in &e.addrs {
                        match a {
                            IpAddr::V4(a) => {
                                v4.insert((*a, np.protocol.0, np.port));
                            }
                            IpAddr::V6(a) => {
                                v6.insert((*a, np.protocol.0, np.port));
                            }
                        }
                    }
                }
            }
            let elems = match fam {
                Family::V4 => SetElems::AddrProtoPort4(v4),
                Family::V6 => SetElems::AddrProtoPort6(v6),
            };
            self.rs.sets.insert(name.clone(), elems);
            self.sources.insert(
                name.clone(),
                SetSource::NamedPorts(sel.clone(), names.to_vec(), fam),
            );
        }
        name
    }

    /// One Calico rule becomes one IR rule per address family it can match (when it
    /// matches on addresses) and per alternative of "numeric or named port".
    fn compile_rule(&mut self, r: &NRule, stmt: Stmt) -> Vec<Rule> {
        let family_specific = r.icmp.is_some()
            || r.not_icmp.is_some()
            || entity_is_addr_specific(&r.src)
            || entity_is_addr_specific(&r.dst);
        let mut fams: Vec<Option<Family>> = if family_specific {
            vec![Some(Family::V4), Some(Family::V6)]
        } else {
            vec![None]
        };
        let allowed = |f: Family| -> bool {
            let v = if f == Family::V4 { 4 } else { 6 };
            if r.ip_version.is_some_and(|iv| iv != v) {
                return false;
            }
            if (r.icmp.is_some() || r.not_icmp.is_some())
                && r.protocol
                    != Some(if f == Family::V4 {
                        crate::model::Protocol::ICMP
                    } else {
                        crate::model::Protocol::ICMPV6
                    })
            {
                return false;
            }
            for e in [&r.src, &r.dst] {
                if !e.nets.is_empty() && !e.nets.iter().any(|n| Family::of(n) == f) {
                    return false;
                }
            }
            true
        };
        fams.retain(|f| f.is_none_or(allowed));
        // Without addresses, ipVersion still restricts the family.
        if !family_specific && let Some(v) = r.ip_version {
            fams = vec![Some(if v == 4 { Family::V4 } else { Family::V6 })];
        }
        if !self.opts.ipv6 {
            fams.retain(|f| *f != Some(Family::V6));
        }
        let mut out = Vec::new();
        for fam in fams {
            let mut base = Vec::new();
            if let Some(f) = fam {
                base.push(Match::Family(f));
            }
            if let Some(p) = r.protocol {
                base.push(Match::L4Proto {
                    proto: p.0,
                    negate: false,
                });
            }
            if let Some(p) = r.not_protocol {
                base.push(Match::L4Proto {
                    proto: p.0,
                    negate: true,
                });
            }
            if let Some((t, c)) = r.icmp {
                base.push(Match::Icmp {
                    icmp_type: t,
                    code: c,
                    negate: false,
                });
            }
            if let Some((t, c)) = r.not_icmp {
                base.push(Match::Icmp {
                    icmp_type: t,
                    code: c,
                    negate: true,
                });
            }
            let mut src_fixed = base.clone();
            self.entity_addr_matches(&r.src, Side::Src, fam, &mut src_fixed);
            self.entity_addr_matches(&r.dst, Side::Dst, fam, &mut src_fixed);
            let src_alts = self.port_alternatives(&r.src, Side::Src, fam);
            let dst_alts = self.port_alternatives(&r.dst, Side::Dst, fam);
            for sa in &src_alts {
                for da in &dst_alts {
                    let mut m = src_fixed.clone();
                    m.extend(sa.iter().cloned());
                    m.extend(da.iter().cloned());
                    out.push(Rule::new(m, stmt.clone()));
                }
            }
        }
        out
    }

    fn entity_addr_matches(
        &mut self,
        e: &Entity,
        side: Side,
        fam: Option<Family>,
        out: &mut Vec<Match>,
    ) {
        let Some(f) = fam else { return };
        if !e.nets.is_empty() {
            out.push(self.nets_match(&e.nets, side, f, false));
        }
        if e.not_nets.iter().any(|n| Family::of(n) == f) {
            out.push(self.nets_match(&e.not_nets, side, f, true));
        }
        if let Some(s) = &e.selector {
            let set = self.sel_set(s, f);
            out.push(Match::Addr {
                side,
                family: f,
                set,
                negate: false,
            });
        }
        if let Some(s) = &e.not_selector {
            let set = self.sel_set(s, f);
            out.push(Match::Addr {
                side,
                family: f,
                set,
                negate: true,
            });
        }
    }

    /// The port matches of an entity: a list of alternatives (OR), each a list of
    /// matches (AND). `ports: [80, http]` is two alternatives; `notPorts` adds
    /// negated matches to every alternative.
    fn port_alternatives(
        &mut self,
        e: &Entity,
        side: Side,
        fam: Option<Family>,
    ) -> Vec<Vec<Match>> {
        let (num, named) = split_ports(&e.ports);
        let mut alts: Vec<Vec<Match>> = Vec::new();
        if e.ports.is_empty() {
            alts.push(Vec::new());
        } else {
            if !num.is_empty() {
                let set = self.port_set(&num);
                alts.push(vec![Match::Port {
                    side,
                    set,
                    negate: false,
                }]);
            }
            if !named.is_empty()
                && let Some(f) = fam
            {
                let set = self.named_port_set(e.selector.as_ref(), &named, f);
                alts.push(vec![Match::AddrProtoPort {
                    side,
                    family: f,
                    set,
                    negate: false,
                }]);
            }
        }
        let (nnum, nnamed) = split_ports(&e.not_ports);
        let mut neg = Vec::new();
        if !nnum.is_empty() {
            let set = self.port_set(&nnum);
            neg.push(Match::Port {
                side,
                set,
                negate: true,
            });
        }
        if !nnamed.is_empty()
            && let Some(f) = fam
        {
            let set = self.named_port_set(e.selector.as_ref(), &nnamed, f);
            neg.push(Match::AddrProtoPort {
                side,
                family: f,
                set,
                negate: true,
            });
        }
        for a in &mut alts {
            a.extend(neg.iter().cloned());
        }
        alts
    }
}

fn entity_is_addr_specific(e: &Entity) -> bool {
    !e.nets.is_empty()
        || !e.not_nets.is_empty()
        || e.selector.is_some()
        || e.not_selector.is_some()
        || e.ports
            .iter()
            .chain(&e.not_ports)
            .any(|p| matches!(p, Port::Named(_)))
}

fn split_ports(ports: &[Port]) -> (Vec<(u16, u16)>, Vec<String>) {
    let mut num = Vec::new();
    let mut named = Vec::new();
    for p in ports {
        match p {
            Port::Number(n) => num.push((*n, *n)),
            Port::Range(a, b) => num.push((*a, *b)),
            Port::Named(n) => named.push(n.clone()),
        }
    }
    named.sort();
    named.dedup();
    (num, named)
}

/// Whether a policy has a Pass rule for the direction.
fn policy_can_pass(p: &PolicyDef, dir: Direction) -> bool {
    p.rules(dir)
        .unwrap_or_default()
        .iter()
        .any(|r| r.action == Action::Pass)
}

fn policy_stmt(a: Action, log_prefix: &str) -> Stmt {
    match a {
        Action::Allow => Stmt::Accept,
        Action::Pass => Stmt::SetMarkReturn(MARK_PASS),
        Action::Deny => Stmt::Drop,
        Action::Log => Stmt::Log(log_prefix.to_owned()),
    }
}

fn net_elems(nets: &[IpNet], fam: Family) -> SetElems {
    match fam {
        Family::V4 => SetElems::Net4(
            nets.iter()
                .filter_map(|n| match n {
                    IpNet::V4(n) => Some(n.trunc()),
                    IpNet::V6(_) => None,
                })
                .collect(),
        ),
        Family::V6 => SetElems::Net6(
            nets.iter()
                .filter_map(|n| match n {
                    IpNet::V6(n) => Some(n.trunc()),
                    IpNet::V4(_) => None,
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::HookResult;
    use crate::model::{AnyResource, Profile, parse_yaml};
    use crate::semantics::{NamedPort, Packet, Verdict};

    fn ep(name: &str, ifname: &str, addr: &str, app: &str) -> Endpoint {
        Endpoint {
            name: name.into(),
            namespace: Some("a".into()),
            local: true,
            interface: ifname.into(),
            addrs: vec![addr.parse().unwrap()],
            labels: [("app".to_string(), app.to_string())].into_iter().collect(),
            profiles: vec!["kns.a".into()],
            named_ports: vec![NamedPort {
                name: "http".into(),
                protocol: crate::model::Protocol::TCP,
                port: 8080,
            }],
        }
    }

    const POLICY: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db, namespace: a}
spec:
  selector: app == 'db'
  ingress:
  - action: Allow
    protocol: TCP
    source: {selector: app == 'web'}
    destination: {ports: [5432, http]}
"#;

    fn build(eps: Vec<Endpoint>) -> (PolicyModel, Endpoints, Ruleset) {
        let mut res = parse_yaml(POLICY).unwrap();
        res.push(AnyResource::Profile(Profile::for_namespace(
            "a",
            &BTreeMap::new(),
        )));
        let m = PolicyModel::build(&res).unwrap();
        let eps = Endpoints::new(&m, eps);
        let pools = [
            Pool {
                cidr: "10.0.0.0/16".parse().unwrap(),
                nat_outgoing: true,
            },
            Pool {
                cidr: "10.1.0.0/16".parse().unwrap(),
                nat_outgoing: false,
            },
        ];
        let rs = compile(&m, &eps, &pools, &Options::default()).unwrap();
        (m, eps, rs)
    }

    #[test]
    fn compiled_ruleset_enforces_policy_and_fails_closed() {
        let (_, _, rs) = build(vec![
            ep("a/web", "caliweb", "10.0.0.1", "web"),
            ep("a/db", "calidb", "10.0.0.2", "db"),
        ]);
        let p = |port| {
            Packet::tcp(
                "10.0.0.1".parse().unwrap(),
                40000,
                "10.0.0.2".parse().unwrap(),
                port,
            )
        };
        let ing = Direction::Ingress;
        assert_eq!(
            rs.evaluate(&p(5432), "calidb", ing).unwrap(),
            Verdict::Allow
        );
        assert_eq!(
            rs.evaluate(&p(8080), "calidb", ing).unwrap(),
            Verdict::Allow
        );
        assert_eq!(rs.evaluate(&p(22), "calidb", ing).unwrap(), Verdict::Deny);
        assert_eq!(rs.evaluate(&p(22), "caliweb", ing).unwrap(), Verdict::Allow);
        // An interface no endpoint owns is dropped.
        assert_eq!(
            rs.evaluate(&p(5432), "caliunknown", ing).unwrap(),
            Verdict::Deny
        );
        assert_eq!(
            rs.evaluate(&p(5432), "caliunknown", Direction::Egress)
                .unwrap(),
            Verdict::Deny
        );
        // Non-workload traffic is not policed.
        assert_eq!(
            rs.run_hook(Hook::Forward, &p(22), "eth0", "eth1").unwrap(),
            HookResult::Accept
        );
        // Established connections pass whatever the policy says now.
        assert_eq!(
            rs.run_hook_ct(Hook::Forward, &p(22), "eth0", "calidb", ct::ESTABLISHED)
                .unwrap(),
            HookResult::Accept
        );
    }

    #[test]
    fn traffic_to_the_host_meets_egress_policy_then_the_endpoint_to_host_action() {
        const EGRESS: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: web-out, namespace: a}
spec:
  selector: app == 'web'
  types: [Egress]
  egress:
  - action: Allow
    protocol: TCP
    destination: {ports: [9091]}
"#;
        let mut res = parse_yaml(EGRESS).unwrap();
        res.push(AnyResource::Profile(Profile::for_namespace(
            "a",
            &BTreeMap::new(),
        )));
        let m = PolicyModel::build(&res).unwrap();
        let eps = Endpoints::new(
            &m,
            [
                ep("a/web", "caliweb", "10.0.0.1", "web"),
                ep("a/db", "calidb", "10.0.0.2", "db"),
            ],
        );
        let to_host = |port| {
            Packet::tcp(
                "10.0.0.1".parse().unwrap(),
                40000,
                "192.0.2.10".parse().unwrap(),
                port,
            )
        };
        let from_db = Packet::tcp(
            "10.0.0.2".parse().unwrap(),
            40000,
            "192.0.2.10".parse().unwrap(),
            9091,
        );
        let ns = Packet::icmp(
            "fd00::2".parse().unwrap(),
            "fe80::1".parse().unwrap(),
            135,
            0,
        );
        let echo = Packet::icmp(
            "fd00::2".parse().unwrap(),
            "fe80::1".parse().unwrap(),
            128,
            0,
        );
        for action in [
            EndpointToHostAction::Drop,
            EndpointToHostAction::Return,
            EndpointToHostAction::Accept,
        ] {
            let opts = Options {
                endpoint_to_host: action,
                ..Options::default()
            };
            let rs = compile(&m, &eps, &[], &opts).unwrap();
            let open = action != EndpointToHostAction::Drop;
            let v = |b: bool| if b { Verdict::Allow } else { Verdict::Deny };
            let host = |p: &Packet, iif: &str| rs.evaluate_to_host(p, iif).unwrap();
            // Egress policy allows 9091 only; the action decides the rest.
            assert_eq!(host(&to_host(9091), "caliweb"), v(open), "{action}");
            assert_eq!(host(&to_host(22), "caliweb"), Verdict::Deny, "{action}");
            // No policy: the profile allows egress, the action decides.
            assert_eq!(host(&from_db, "calidb"), v(open), "{action}");
            // Unknown workload interfaces are dropped whatever the action.
            assert_eq!(host(&from_db, "caliunknown"), Verdict::Deny, "{action}");
            // Neighbour discovery passes regardless; other ICMPv6 does not.
            assert_eq!(host(&ns, "calidb"), Verdict::Allow, "{action}");
            assert_eq!(host(&ns, "caliunknown"), Verdict::Allow, "{action}");
            assert_eq!(host(&echo, "calidb"), v(open), "{action}");
            // Replies and non-workload traffic are not this table's business.
            assert_eq!(
                rs.run_hook_ct(Hook::Input, &to_host(22), "caliweb", "", ct::ESTABLISHED)
                    .unwrap(),
                HookResult::Accept
            );
            assert_eq!(host(&to_host(22), "eth0"), Verdict::Allow);
            // Forwarded traffic is unchanged by the action.
            assert_eq!(
                rs.evaluate(&to_host(22), "caliweb", Direction::Egress)
                    .unwrap(),
                Verdict::Deny
            );
            assert_eq!(
                rs.evaluate(&from_db, "calidb", Direction::Egress).unwrap(),
                Verdict::Allow
            );
        }
    }

    #[test]
    fn endpoint_to_host_action_parses_felix_spellings() {
        for (s, a) in [
            ("Drop", EndpointToHostAction::Drop),
            ("RETURN", EndpointToHostAction::Return),
            ("accept", EndpointToHostAction::Accept),
        ] {
            assert_eq!(s.parse::<EndpointToHostAction>().unwrap(), a);
        }
        let err = "Reject".parse::<EndpointToHostAction>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "FelixConfiguration: spec.defaultEndpointToHostAction: \"Reject\" is not one of Drop, Return, Accept"
        );
    }

    #[test]
    fn nat_outgoing_masquerades_only_pool_to_outside() {
        let (_, _, rs) = build(vec![ep("a/web", "caliweb", "10.0.0.1", "web")]);
        let pk = |s: &str, d: &str| Packet::tcp(s.parse().unwrap(), 1, d.parse().unwrap(), 80);
        let nat = |p| {
            rs.run_hook(Hook::Postrouting, &p, "caliweb", "eth0")
                .unwrap()
        };
        assert_eq!(nat(pk("10.0.0.1", "203.0.113.5")), HookResult::Masquerade);
        assert_eq!(
            nat(pk("10.0.0.1", "10.0.9.9")),
            HookResult::Accept,
            "to own pool"
        );
        assert_eq!(
            nat(pk("10.0.0.1", "10.1.0.9")),
            HookResult::Accept,
            "to another pool"
        );
        assert_eq!(
            nat(pk("10.1.0.1", "203.0.113.5")),
            HookResult::Accept,
            "pool without natOutgoing"
        );
        assert_eq!(
            nat(pk("192.0.2.1", "203.0.113.5")),
            HookResult::Accept,
            "not from a pool"
        );
    }

    /// Egress and ingress run in two base chains; the pass bit the sender's
    /// egress leaves set must not make the receiver's tier skip its policies.
    #[test]
    fn between_local_workloads_egress_then_ingress_apply_with_a_fresh_pass_bit() {
        let yaml = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 10}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: web-egress-pass}
spec:
  tier: security
  order: 1
  selector: app == 'web'
  types: [Egress]
  egress:
  - action: Pass
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: db-ssh-pass}
spec:
  tier: security
  order: 2
  selector: app == 'db'
  types: [Ingress]
  ingress:
  - action: Pass
    protocol: TCP
    destination: {ports: [22]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: db-deny}
spec:
  tier: security
  order: 3
  selector: app == 'db'
  types: [Ingress]
  ingress:
  - action: Deny
"#;
        let mut res = parse_yaml(yaml).unwrap();
        res.push(AnyResource::Profile(Profile::for_namespace(
            "a",
            &BTreeMap::new(),
        )));
        let m = PolicyModel::build(&res).unwrap();
        let eps = Endpoints::new(
            &m,
            [
                ep("a/web", "caliweb", "10.0.0.1", "web"),
                ep("a/db", "calidb", "10.0.0.2", "db"),
            ],
        );
        let rs = compile(&m, &eps, &[], &Options::default()).unwrap();
        let tcp = |port| {
            Packet::tcp(
                "10.0.0.1".parse().unwrap(),
                40000,
                "10.0.0.2".parse().unwrap(),
                port,
            )
        };
        for (port, want) in [(22, Verdict::Allow), (5432, Verdict::Deny)] {
            assert_eq!(
                m.evaluate(&eps, "a/db", Direction::Ingress, &tcp(port))
                    .unwrap(),
                want
            );
            assert_eq!(
                rs.evaluate_forward(&tcp(port), "caliweb", "calidb")
                    .unwrap(),
                want,
                "web -> db port {port}"
            );
        }
    }

    #[test]
    fn adding_an_endpoint_like_an_existing_one_changes_elements_only() {
        let (_, _, before) = build(vec![
            ep("a/web", "caliweb", "10.0.0.1", "web"),
            ep("a/db", "calidb", "10.0.0.2", "db"),
        ]);
        let (_, _, after) = build(vec![
            ep("a/web", "caliweb", "10.0.0.1", "web"),
            ep("a/web2", "caliweb2", "10.0.0.3", "web"),
            ep("a/db", "calidb", "10.0.0.2", "db"),
        ]);
        let d = before.diff(&after);
        assert!(!d.touches_rules(), "{d:#?}");
        assert!(d.add_sets.is_empty() && d.del_sets.is_empty());
        assert_eq!(d.add_elems.len(), 4, "{d:#?}"); // two maps, the web selector set, the named-port set
        let back = after.diff(&before);
        assert!(!back.touches_rules());
        // And the new endpoint is allowed to reach the database.
        let p = Packet::tcp(
            "10.0.0.3".parse().unwrap(),
            1,
            "10.0.0.2".parse().unwrap(),
            5432,
        );
        assert_eq!(
            after.evaluate(&p, "calidb", Direction::Ingress).unwrap(),
            Verdict::Allow
        );
        assert_eq!(
            before.evaluate(&p, "calidb", Direction::Ingress).unwrap(),
            Verdict::Deny
        );
    }

    #[test]
    fn bad_interfaces_are_rejected_with_the_endpoint_named() {
        let m = PolicyModel::default();
        let mut e = ep("a/x", "eth0", "10.0.0.1", "x");
        let eps = Endpoints::new(&m, [e.clone()]);
        let err = compile(&m, &eps, &[], &Options::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("a/x") && err.contains("\"eth0\""), "{err}");
        e.interface = "cali0123456789abcdef".into();
        let eps = Endpoints::new(&m, [e]);
        assert!(compile(&m, &eps, &[], &Options::default()).is_err());
        let eps = Endpoints::new(
            &m,
            [
                ep("a/x", "calix", "10.0.0.1", "x"),
                ep("a/y", "calix", "10.0.0.2", "y"),
            ],
        );
        let err = compile(&m, &eps, &[], &Options::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("also used by endpoint a/x"), "{err}");
    }
}
