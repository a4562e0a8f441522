//! The policy model as the compiler and the reference semantics see it: tiers in
//! order, policies in order with their selectors made namespace-aware, profiles, and
//! endpoints with effective labels. [`PolicyModel::evaluate`] is the direct,
//! obviously-correct reading of Calico's semantics that the compiled IR is checked
//! against.
//!
//! Readings chosen where Calico's documentation leaves room:
//!
//! - Inside a namespaced NetworkPolicy, a rule side with `selector`, `notSelector`
//!   or `namespaceSelector` only matches endpoints of the policy's namespace unless
//!   a `namespaceSelector` says otherwise (the namespace term is ANDed into
//!   `selector`; `notSelector` itself stays unscoped), as Calico's rule conversion
//!   does. A `namespaceSelector` is evaluated on the inherited `pcns.*` labels;
//!   `global()` there means "not namespaced".
//! - A named port matches the `(address, protocol, port)` of endpoints that the
//!   same side's `selector` selects (all endpoints when there is none).
//! - `icmp` / `notICMP` only match packets of the protocol's family (ICMP: IPv4,
//!   ICMPv6: IPv6).
//! - `Pass` in a profile ends that profile; `Log` continues with the next rule.
//! - An endpoint no tier selects and with no profile allowing the packet is
//!   denied; an unknown workload interface is denied by the dataplane.
//! - Kubernetes policies do not get Calico's extra
//!   `projectcalico.org/orchestrator == 'k8s'` term (every namespaced endpoint is
//!   a pod and carries that label).
//! - An endpoint's namespace identity comes from [`Endpoint::namespace`] and the
//!   namespace's profile only ([`PolicyModel::effective_labels`]): a pod's own
//!   labels cannot make it a member of another namespace.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::Error;
use crate::model::{
    Action, AnyResource, EntityRule, NAMESPACE_LABEL_PREFIX, ORCHESTRATOR_LABEL, ObjectMeta,
    PolicySpec, PolicyType, Port, Protocol, Rule, is_reserved_label, profile_may_set,
};

/// The value of `projectcalico.org/orchestrator` on Kubernetes pods' endpoints.
pub const ORCHESTRATOR_K8S: &str = "k8s";
use crate::selector::{Expr, NAMESPACE_LABEL, Selector};

/// A named port of an endpoint (Kubernetes container port with a name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    /// The port name.
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its number.
    pub port: u16,
}

/// A workload endpoint on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Unique key (e.g. `namespace/pod`).
    pub name: String,
    /// Kubernetes namespace, if any.
    pub namespace: Option<String>,
    /// Whether the endpoint is on this node. Only local endpoints get an
    /// interface dispatch entry; remote ones only feed selector and named-port sets.
    pub local: bool,
    /// Host-side interface (`cali...`); unused for remote endpoints.
    pub interface: String,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
    /// Its own labels.
    pub labels: BTreeMap<String, String>,
    /// Profiles, in order (e.g. `kns.<namespace>`).
    pub profiles: Vec<String>,
    /// Named ports.
    pub named_ports: Vec<NamedPort>,
}

/// A normalised entity match.
#[derive(Clone, Debug, PartialEq)]
pub struct Entity {
    /// Any of these nets.
    pub nets: Vec<IpNet>,
    /// None of these nets.
    pub not_nets: Vec<IpNet>,
    /// An endpoint this selects owns the address (namespace constraints folded in).
    pub selector: Option<Selector>,
    /// No endpoint this selects owns the address.
    pub not_selector: Option<Selector>,
    /// Any of these ports.
    pub ports: Vec<Port>,
    /// None of these ports.
    pub not_ports: Vec<Port>,
}

/// A normalised rule.
#[derive(Clone, Debug, PartialEq)]
pub struct NRule {
    /// Action.
    pub action: Action,
    /// 4 or 6.
    pub ip_version: Option<u8>,
    /// Protocol.
    pub protocol: Option<Protocol>,
    /// Not this protocol.
    pub not_protocol: Option<Protocol>,
    /// ICMP type and code.
    pub icmp: Option<(u8, Option<u8>)>,
    /// Not this ICMP type and code.
    pub not_icmp: Option<(u8, Option<u8>)>,
    /// Source.
    pub src: Entity,
    /// Destination.
    pub dst: Entity,
}

/// A policy inside a tier.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyDef {
    /// Stable identity: `<namespace>/<name>` or `<name>` for global policies.
    pub id: String,
    /// Order (None sorts last).
    pub order: Option<f64>,
    /// Endpoints it applies to.
    pub applies_to: Selector,
    /// Ingress rules, if the policy has the Ingress type.
    pub ingress: Option<Vec<NRule>>,
    /// Egress rules, if the policy has the Egress type.
    pub egress: Option<Vec<NRule>>,
}

impl PolicyDef {
    /// The rules for a direction, if the policy applies in that direction.
    pub fn rules(&self, dir: Direction) -> Option<&[NRule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// A tier with its policies in evaluation order.
#[derive(Clone, Debug, PartialEq)]
pub struct TierDef {
    /// Name.
    pub name: String,
    /// Order (None sorts last).
    pub order: Option<f64>,
    /// `Deny` or `Pass`.
    pub default_action: Action,
    /// Policies, sorted by order then id.
    pub policies: Vec<PolicyDef>,
}

/// A profile's rules.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileDef {
    /// Name.
    pub name: String,
    /// Ingress rules.
    pub ingress: Vec<NRule>,
    /// Egress rules.
    pub egress: Vec<NRule>,
    /// Labels inherited by endpoints.
    pub labels: BTreeMap<String, String>,
}

/// Direction relative to an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic to the endpoint.
    Ingress,
    /// Traffic from the endpoint.
    Egress,
}

/// Final decision for a packet in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted.
    Allow,
    /// Dropped.
    Deny,
}

/// A packet header, as policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// Source port (TCP/UDP/SCTP/UDPLite).
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// ICMP type (ICMP/ICMPv6).
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
}

impl Packet {
    /// A packet of any IP protocol, without ports or ICMP fields.
    pub fn other(src: IpAddr, dst: IpAddr, protocol: u8) -> Packet {
        Packet {
            src,
            dst,
            protocol,
            src_port: 0,
            dst_port: 0,
            icmp_type: 0,
            icmp_code: 0,
        }
    }

    fn with_ports(protocol: Protocol, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Packet {
        Packet {
            src_port: sport,
            dst_port: dport,
            ..Packet::other(src, dst, protocol.0)
        }
    }

    /// A TCP packet.
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Packet {
        Packet::with_ports(Protocol::TCP, src, sport, dst, dport)
    }

    /// A UDP packet.
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Packet {
        Packet::with_ports(Protocol::UDP, src, sport, dst, dport)
    }

    /// An SCTP packet.
    pub fn sctp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Packet {
        Packet::with_ports(Protocol::SCTP, src, sport, dst, dport)
    }

    /// An ICMP packet for IPv4 addresses, ICMPv6 for IPv6 ones.
    pub fn icmp(src: IpAddr, dst: IpAddr, icmp_type: u8, icmp_code: u8) -> Packet {
        let proto = if src.is_ipv4() {
            Protocol::ICMP
        } else {
            Protocol::ICMPV6
        };
        Packet {
            icmp_type,
            icmp_code,
            ..Packet::other(src, dst, proto.0)
        }
    }

    /// Whether the packet is IPv4 (both addresses must be of one family).
    pub fn is_v4(&self) -> bool {
        self.src.is_ipv4()
    }

    fn has_ports(&self) -> bool {
        Protocol(self.protocol).has_ports()
    }
}

/// Endpoints with their effective labels (own, then namespace, then profiles).
#[derive(Clone, Debug, Default)]
pub struct Endpoints {
    /// By name.
    pub by_name: BTreeMap<String, Endpoint>,
    effective: BTreeMap<String, BTreeMap<String, String>>,
    // label (key, value) -> endpoints carrying it: selectors that require an
    // equality only look at those candidates.
    by_label: std::collections::HashMap<(String, String), Vec<String>>,
}

impl Endpoints {
    /// Builds the set; profile labels come from `model`.
    pub fn new(model: &PolicyModel, eps: impl IntoIterator<Item = Endpoint>) -> Endpoints {
        let mut out = Endpoints::default();
        for ep in eps {
            let eff = model.effective_labels(&ep);
            for (k, v) in &eff {
                out.by_label
                    .entry((k.clone(), v.clone()))
                    .or_default()
                    .push(ep.name.clone());
            }
            out.effective.insert(ep.name.clone(), eff);
            out.by_name.insert(ep.name.clone(), ep);
        }
        for v in out.by_label.values_mut() {
            v.sort();
            v.dedup();
        }
        out
    }

    /// Adds or replaces one endpoint (labels from `model`'s profiles).
    pub fn upsert(&mut self, model: &PolicyModel, ep: Endpoint) {
        self.remove(&ep.name);
        let eff = model.effective_labels(&ep);
        for (k, v) in &eff {
            let names = self.by_label.entry((k.clone(), v.clone())).or_default();
            if let Err(i) = names.binary_search(&ep.name) {
                names.insert(i, ep.name.clone());
            }
        }
        self.effective.insert(ep.name.clone(), eff);
        self.by_name.insert(ep.name.clone(), ep);
    }

    /// Removes one endpoint.
    pub fn remove(&mut self, name: &str) -> Option<Endpoint> {
        let ep = self.by_name.remove(name)?;
        if let Some(eff) = self.effective.remove(name) {
            for (k, v) in eff {
                let key = (k, v);
                if let Some(names) = self.by_label.get_mut(&key) {
                    names.retain(|n| n != name);
                    if names.is_empty() {
                        self.by_label.remove(&key);
                    }
                }
            }
        }
        Some(ep)
    }

    /// The effective labels of an endpoint.
    pub fn labels(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.effective.get(name)
    }

    /// Endpoints whose effective labels `sel` matches.
    pub fn selected<'a>(
        &'a self,
        sel: &'a Selector,
    ) -> Box<dyn Iterator<Item = &'a Endpoint> + 'a> {
        let matches = move |e: &&Endpoint| sel.matches(&self.effective[&e.name]);
        match required_eq(sel.expr()) {
            Some((k, v)) => {
                let names = self
                    .by_label
                    .get(&(k.to_owned(), v.to_owned()))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                Box::new(names.iter().map(|n| &self.by_name[n]).filter(matches))
            }
            None => Box::new(self.by_name.values().filter(matches)),
        }
    }
}

/// A `key == value` every match of `e` must satisfy, if there is an obvious one.
fn required_eq(e: &Expr) -> Option<(&str, &str)> {
    match e {
        Expr::Eq(k, v) => Some((k, v)),
        Expr::And(es) => es.iter().find_map(required_eq),
        _ => None,
    }
}

/// Tiers, policies and profiles, normalised and ordered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyModel {
    /// Tiers in evaluation order.
    pub tiers: Vec<TierDef>,
    /// Profiles by name.
    pub profiles: BTreeMap<String, ProfileDef>,
}

fn cmp_order(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Turns a namespaceSelector into a selector over endpoint labels: keys become the
/// inherited `pcns.<key>`, `global()` means "not namespaced".
pub fn namespace_selector_to_labels(ns: &Selector) -> Selector {
    let global = Expr::Not(Box::new(Expr::Has(NAMESPACE_LABEL.to_owned())));
    Selector::from_expr(
        ns.expr()
            .map_keys(&|k| format!("{NAMESPACE_LABEL_PREFIX}{k}"), &global),
    )
}

fn in_namespace(ns: &str) -> Selector {
    Selector::from_expr(Expr::Eq(NAMESPACE_LABEL.to_owned(), ns.to_owned()))
}

fn normalise_entity(e: &EntityRule, namespace: Option<&str>) -> Entity {
    let mut selector = e.selector.clone();
    if let Some(nss) = &e.namespace_selector {
        let base = selector.unwrap_or_default();
        selector = Some(base.and(&namespace_selector_to_labels(nss)));
    } else if let Some(ns) = namespace
        && (e.selector.is_some() || e.not_selector.is_some())
    {
        // Inside a namespaced policy, selectors only see that namespace.
        selector = Some(selector.unwrap_or_default().and(&in_namespace(ns)));
    }
    Entity {
        nets: e.nets.iter().map(IpNet::trunc).collect(),
        not_nets: e.not_nets.iter().map(IpNet::trunc).collect(),
        selector,
        not_selector: e.not_selector.clone(),
        ports: e.ports.clone(),
        not_ports: e.not_ports.clone(),
    }
}

fn normalise_rule(r: &Rule, namespace: Option<&str>) -> NRule {
    let icmp =
        |f: &Option<crate::model::IcmpFields>| f.and_then(|f| f.icmp_type.map(|t| (t, f.code)));
    NRule {
        action: r.action,
        ip_version: r.ip_version,
        protocol: r.protocol,
        not_protocol: r.not_protocol,
        icmp: icmp(&r.icmp),
        not_icmp: icmp(&r.not_icmp),
        src: normalise_entity(&r.source, namespace),
        dst: normalise_entity(&r.destination, namespace),
    }
}

impl PolicyModel {
    /// Builds the model from resources (Kubernetes policies are converted). Fails
    /// on invalid resources, duplicates, and policies naming a tier that does not exist.
    pub fn build(resources: &[AnyResource]) -> Result<PolicyModel, Error> {
        let mut tiers: BTreeMap<String, TierDef> = BTreeMap::new();
        tiers.insert(
            crate::model::DEFAULT_TIER.to_owned(),
            TierDef {
                name: crate::model::DEFAULT_TIER.to_owned(),
                // Calico's default tier order: after every ordered tier a user is
                // likely to create, before tiers without an order.
                order: Some(crate::model::DEFAULT_TIER_ORDER),
                default_action: Action::Deny,
                policies: Vec::new(),
            },
        );
        let mut policies: Vec<(String, PolicyDef)> = Vec::new();
        let mut profiles = BTreeMap::new();
        for r in resources {
            crate::model::validate_resource(r)?;
            match r {
                AnyResource::Tier(t) => {
                    tiers.insert(
                        t.metadata.name.clone(),
                        TierDef {
                            name: t.metadata.name.clone(),
                            order: t.spec.order,
                            default_action: t.spec.default_action.unwrap_or(Action::Deny),
                            policies: Vec::new(),
                        },
                    );
                }
                AnyResource::NetworkPolicy(p) => {
                    policies.push(policy_def("NetworkPolicy", &p.metadata, &p.spec, true)?);
                }
                AnyResource::GlobalNetworkPolicy(p) => {
                    policies.push(policy_def(
                        "GlobalNetworkPolicy",
                        &p.metadata,
                        &p.spec,
                        false,
                    )?);
                }
                AnyResource::K8sNetworkPolicy(k) => {
                    let p = k.to_calico()?;
                    policies.push(policy_def("NetworkPolicy", &p.metadata, &p.spec, true)?);
                }
                AnyResource::Profile(p) => {
                    let def = ProfileDef {
                        name: p.metadata.name.clone(),
                        ingress: p
                            .spec
                            .ingress
                            .iter()
                            .map(|r| normalise_rule(r, None))
                            .collect(),
                        egress: p
                            .spec
                            .egress
                            .iter()
                            .map(|r| normalise_rule(r, None))
                            .collect(),
                        labels: p.spec.labels_to_apply.clone(),
                    };
                    if profiles.insert(def.name.clone(), def).is_some() {
                        return Err(Error::Invalid {
                            resource: format!("Profile {}", p.metadata.name),
                            field: "metadata.name".into(),
                            reason: "defined twice".into(),
                        });
                    }
                }
            }
        }
        for (tier, def) in policies {
            let Some(t) = tiers.get_mut(&tier) else {
                return Err(Error::Invalid {
                    resource: format!("policy {}", def.id),
                    field: "spec.tier".into(),
                    reason: format!("tier {tier:?} does not exist"),
                });
            };
            if t.policies.iter().any(|p| p.id == def.id) {
                return Err(Error::Invalid {
                    resource: format!("policy {}", def.id),
                    field: "metadata.name".into(),
                    reason: "defined twice".into(),
                });
            }
            t.policies.push(def);
        }
        let mut tiers: Vec<TierDef> = tiers.into_values().collect();
        for t in &mut tiers {
            t.policies
                .sort_by(|a, b| cmp_order(a.order, b.order).then_with(|| a.id.cmp(&b.id)));
        }
        tiers.sort_by(|a, b| cmp_order(a.order, b.order).then_with(|| a.name.cmp(&b.name)));
        Ok(PolicyModel { tiers, profiles })
    }

    /// Effective labels of an endpoint: its own labels over its profiles'
    /// labels (earlier profiles first), then the identity labels that only the
    /// namespace and service account set (see [`crate::model::is_reserved_label`]):
    /// `projectcalico.org/namespace` and `projectcalico.org/orchestrator: k8s`
    /// from [`Endpoint::namespace`], `pcns.*` from the `kns.<namespace>` profile,
    /// `pcsa.*` from its `ksa.<namespace>.<serviceaccount>` profiles. Reserved
    /// keys among the endpoint's own labels, or from any other profile, are
    /// ignored, so no pod can claim another namespace's identity.
    pub fn effective_labels(&self, ep: &Endpoint) -> BTreeMap<String, String> {
        let ns = ep.namespace.as_deref();
        let mut out = BTreeMap::new();
        for p in ep.profiles.iter().rev() {
            if let Some(def) = self.profiles.get(p) {
                out.extend(
                    def.labels
                        .iter()
                        .filter(|(k, _)| !is_reserved_label(k) || profile_may_set(p, ns, k))
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
            }
        }
        out.extend(
            ep.labels
                .iter()
                .filter(|(k, _)| !is_reserved_label(k))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        if let Some(ns) = ns {
            out.insert(NAMESPACE_LABEL.to_owned(), ns.to_owned());
            out.insert(ORCHESTRATOR_LABEL.to_owned(), ORCHESTRATOR_K8S.to_owned());
        }
        out
    }

    /// Calico's verdict for `pkt` in direction `dir` of endpoint `ep`, evaluated
    /// directly on the model (the reference for the compiler). Fails with
    /// [`Error::Endpoint`] when `eps` has no endpoint named `ep`.
    pub fn evaluate(
        &self,
        eps: &Endpoints,
        ep: &str,
        dir: Direction,
        pkt: &Packet,
    ) -> Result<Verdict, Error> {
        let (Some(labels), Some(endpoint)) = (eps.labels(ep), eps.by_name.get(ep)) else {
            return Err(Error::Endpoint {
                endpoint: ep.to_owned(),
                reason: "no such endpoint to evaluate".into(),
            });
        };
        Ok(self.verdict(labels, endpoint, dir, pkt, eps))
    }

    fn verdict(
        &self,
        labels: &BTreeMap<String, String>,
        endpoint: &Endpoint,
        dir: Direction,
        pkt: &Packet,
        eps: &Endpoints,
    ) -> Verdict {
        'tiers: for tier in &self.tiers {
            let applicable: Vec<&PolicyDef> = tier
                .policies
                .iter()
                .filter(|p| p.rules(dir).is_some() && p.applies_to.matches(labels))
                .collect();
            if applicable.is_empty() {
                continue;
            }
            for p in applicable {
                for r in p.rules(dir).unwrap_or_default() {
                    if rule_matches(r, pkt, eps) {
                        match r.action {
                            Action::Allow => return Verdict::Allow,
                            Action::Deny => return Verdict::Deny,
                            Action::Pass => continue 'tiers,
                            Action::Log => {}
                        }
                    }
                }
            }
            if tier.default_action != Action::Pass {
                return Verdict::Deny;
            }
        }
        for prof in &endpoint.profiles {
            let Some(def) = self.profiles.get(prof) else {
                continue;
            };
            let rules = match dir {
                Direction::Ingress => &def.ingress,
                Direction::Egress => &def.egress,
            };
            for r in rules {
                if rule_matches(r, pkt, eps) {
                    match r.action {
                        Action::Allow => return Verdict::Allow,
                        Action::Deny => return Verdict::Deny,
                        // Pass in a profile ends this profile, Log continues.
                        Action::Pass => break,
                        Action::Log => {}
                    }
                }
            }
        }
        Verdict::Deny
    }
}

fn policy_def(
    kind: &str,
    meta: &ObjectMeta,
    spec: &PolicySpec,
    namespaced: bool,
) -> Result<(String, PolicyDef), Error> {
    let tier = spec
        .tier
        .clone()
        .unwrap_or_else(|| crate::model::DEFAULT_TIER.to_owned());
    let ns = if namespaced {
        Some(meta.namespace.clone().ok_or_else(|| Error::Invalid {
            resource: format!("{kind} {}", meta.name),
            field: "metadata.namespace".into(),
            reason: "a NetworkPolicy needs a namespace".into(),
        })?)
    } else {
        None
    };
    let mut applies_to = spec.selector.clone().unwrap_or_default();
    if let Some(ns) = &ns {
        applies_to = applies_to.and(&in_namespace(ns));
    }
    if let Some(nss) = &spec.namespace_selector {
        applies_to = applies_to.and(&namespace_selector_to_labels(nss));
    }
    let types = spec.effective_types();
    let nsr = ns.as_deref();
    let rules = |rs: &[Rule]| {
        rs.iter()
            .map(|r| normalise_rule(r, nsr))
            .collect::<Vec<_>>()
    };
    let id = match &ns {
        Some(ns) => format!("{ns}/{}", meta.name),
        None => meta.name.clone(),
    };
    Ok((
        tier,
        PolicyDef {
            id,
            order: spec.order,
            applies_to,
            ingress: types
                .contains(&PolicyType::Ingress)
                .then(|| rules(&spec.ingress)),
            egress: types
                .contains(&PolicyType::Egress)
                .then(|| rules(&spec.egress)),
        },
    ))
}

fn family_v4(addr: &IpAddr) -> bool {
    addr.is_ipv4()
}

fn icmp_matches(want: (u8, Option<u8>), pkt: &Packet) -> bool {
    pkt.icmp_type == want.0 && want.1.is_none_or(|c| c == pkt.icmp_code)
}

fn addr_selected(sel: &Selector, addr: IpAddr, eps: &Endpoints) -> bool {
    eps.selected(sel).any(|e| e.addrs.contains(&addr))
}

fn port_in(
    ports: &[Port],
    addr: IpAddr,
    port: u16,
    proto: u8,
    selector: Option<&Selector>,
    eps: &Endpoints,
) -> bool {
    let all = Selector::all();
    let sel = selector.unwrap_or(&all);
    ports.iter().any(|p| match p {
        Port::Named(name) => eps.selected(sel).any(|e| {
            e.addrs.contains(&addr)
                && e.named_ports
                    .iter()
                    .any(|np| &np.name == name && np.protocol.0 == proto && np.port == port)
        }),
        other => other.contains(port),
    })
}

fn entity_matches(e: &Entity, addr: IpAddr, port: u16, pkt: &Packet, eps: &Endpoints) -> bool {
    if !e.nets.is_empty() && !e.nets.iter().any(|n| n.contains(&addr)) {
        return false;
    }
    if e.not_nets.iter().any(|n| n.contains(&addr)) {
        return false;
    }
    if let Some(s) = &e.selector
        && !addr_selected(s, addr, eps)
    {
        return false;
    }
    if let Some(s) = &e.not_selector
        && addr_selected(s, addr, eps)
    {
        return false;
    }
    let ports_ok = e.ports.is_empty()
        || (pkt.has_ports()
            && port_in(&e.ports, addr, port, pkt.protocol, e.selector.as_ref(), eps));
    let sel = e.selector.as_ref();
    let not_ports_ok = e.not_ports.is_empty()
        || (pkt.has_ports() && !port_in(&e.not_ports, addr, port, pkt.protocol, sel, eps));
    if !(ports_ok && not_ports_ok) {
        return false;
    }
    true
}

/// Whether a normalised rule matches a packet (selectors resolved over `eps`).
pub fn rule_matches(r: &NRule, pkt: &Packet, eps: &Endpoints) -> bool {
    let v4 = family_v4(&pkt.src);
    if let Some(v) = r.ip_version
        && (v == 4) != v4
    {
        return false;
    }
    if let Some(p) = r.protocol
        && p.0 != pkt.protocol
    {
        return false;
    }
    if let Some(p) = r.not_protocol
        && p.0 == pkt.protocol
    {
        return false;
    }
    // ICMP type matches read the header of the protocol's own family.
    let icmp_family_ok = match r.protocol {
        Some(Protocol::ICMP) => v4,
        Some(Protocol::ICMPV6) => !v4,
        _ => false,
    };
    let icmp_ok = r
        .icmp
        .is_none_or(|w| icmp_family_ok && icmp_matches(w, pkt));
    let not_icmp_ok = r
        .not_icmp
        .is_none_or(|w| icmp_family_ok && !icmp_matches(w, pkt));
    if !(icmp_ok && not_icmp_ok) {
        return false;
    }
    entity_matches(&r.src, pkt.src, pkt.src_port, pkt, eps)
        && entity_matches(&r.dst, pkt.dst, pkt.dst_port, pkt, eps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_yaml;

    fn ep(name: &str, ns: &str, ifname: &str, addr: &str, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            name: name.into(),
            namespace: Some(ns.into()),
            local: true,
            interface: ifname.into(),
            addrs: vec![addr.parse().unwrap()],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            profiles: vec![format!("kns.{ns}")],
            named_ports: vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::TCP,
                port: 8080,
            }],
        }
    }

    fn setup(yaml: &str) -> (PolicyModel, Endpoints) {
        let mut res = parse_yaml(yaml).unwrap();
        for ns in ["a", "b"] {
            let labels = [("team".to_string(), ns.to_string())].into_iter().collect();
            res.push(AnyResource::Profile(crate::model::Profile::for_namespace(
                ns, &labels,
            )));
        }
        let m = PolicyModel::build(&res).unwrap();
        let eps = Endpoints::new(
            &m,
            [
                ep("a/web", "a", "caliweb", "10.0.0.1", &[("app", "web")]),
                ep("a/db", "a", "calidb", "10.0.0.2", &[("app", "db")]),
                ep("b/web", "b", "caliwebb", "10.0.1.1", &[("app", "web")]),
            ],
        );
        (m, eps)
    }

    fn tcp(src: &str, dst: &str, port: u16) -> Packet {
        Packet::tcp(src.parse().unwrap(), 40000, dst.parse().unwrap(), port)
    }

    #[test]
    fn unselected_endpoints_fall_through_to_profiles() {
        let (m, eps) = setup("");
        let p = tcp("10.0.0.1", "10.0.0.2", 5432);
        assert_eq!(
            m.evaluate(&eps, "a/db", Direction::Ingress, &p).unwrap(),
            Verdict::Allow
        );
    }

    #[test]
    fn selected_endpoints_drop_what_no_rule_allows() {
        let (m, eps) = setup(
            r#"
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
"#,
        );
        let ing = Direction::Ingress;
        assert_eq!(
            m.evaluate(&eps, "a/db", ing, &tcp("10.0.0.1", "10.0.0.2", 5432))
                .unwrap(),
            Verdict::Allow
        );
        assert_eq!(
            m.evaluate(&eps, "a/db", ing, &tcp("10.0.0.1", "10.0.0.2", 22))
                .unwrap(),
            Verdict::Deny
        );
        // Named port: the db endpoint has http = 8080.
        assert_eq!(
            m.evaluate(&eps, "a/db", ing, &tcp("10.0.0.1", "10.0.0.2", 8080))
                .unwrap(),
            Verdict::Allow
        );
        // The web pod in namespace b is not selected by a namespaced rule selector.
        assert_eq!(
            m.evaluate(&eps, "a/db", ing, &tcp("10.0.1.1", "10.0.0.2", 5432))
                .unwrap(),
            Verdict::Deny
        );
        // Egress is not governed by the policy (types default to Ingress): profile allows.
        assert_eq!(
            m.evaluate(
                &eps,
                "a/db",
                Direction::Egress,
                &tcp("10.0.0.2", "10.0.0.1", 1)
            )
            .unwrap(),
            Verdict::Allow
        );
        // The web endpoint is not selected: profile.
        assert_eq!(
            m.evaluate(&eps, "a/web", ing, &tcp("10.0.1.1", "10.0.0.1", 22))
                .unwrap(),
            Verdict::Allow
        );
    }

    #[test]
    fn tiers_pass_and_deny_in_order() {
        let (m, eps) = setup(
            r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 10}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pass-team-a}
spec:
  tier: security
  order: 1
  namespaceSelector: team == 'a'
  ingress:
  - action: Deny
    protocol: TCP
    destination: {ports: [23]}
  - action: Pass
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: default-deny-ssh}
spec:
  order: 5
  selector: all()
  ingress:
  - action: Deny
    protocol: TCP
    destination: {notPorts: ['1:1024']}
  - action: Allow
"#,
        );
        let ing = Direction::Ingress;
        assert_eq!(m.tiers[0].name, "security");
        // Port 23 denied in the security tier.
        assert_eq!(
            m.evaluate(&eps, "a/db", ing, &tcp("10.0.0.1", "10.0.0.2", 23))
                .unwrap(),
            Verdict::Deny
        );
        // Passed to default tier: 22 allowed (in 1..1024), 5432 denied by notPorts.
        assert_eq!(
            m.evaluate(&eps, "a/db", ing, &tcp("10.0.0.1", "10.0.0.2", 22))
                .unwrap(),
            Verdict::Allow
        );
        assert_eq!(
            m.evaluate(&eps, "a/db", ing, &tcp("10.0.0.1", "10.0.0.2", 5432))
                .unwrap(),
            Verdict::Deny
        );
        // Namespace b is not selected by the security tier: goes straight to default tier.
        assert_eq!(
            m.evaluate(&eps, "b/web", ing, &tcp("10.0.0.1", "10.0.1.1", 23))
                .unwrap(),
            Verdict::Allow
        );
    }

    #[test]
    fn build_rejects_missing_tiers_and_duplicates() {
        let e = PolicyModel::build(
            &parse_yaml("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\nspec: {tier: nope}\n").unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "policy x: spec.tier: tier \"nope\" does not exist"
        );
        let y = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n";
        let e = PolicyModel::build(&parse_yaml(y).unwrap()).unwrap_err();
        assert!(e.to_string().contains("defined twice"), "{e}");
    }
}
