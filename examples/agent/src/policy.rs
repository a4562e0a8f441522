//! Policy and natOutgoing: the cluster's policies, this node's workload
//! endpoints (and the other nodes' as selector members) and the pools compiled
//! by calinet-policy into one nftables table, installed through its netlink
//! backend.
//!
//! A pod's traffic to this node meets the pod's egress policy and then
//! FelixConfiguration's `defaultEndpointToHostAction` (`node.<name>` over
//! `default`; Drop when unset, as Felix), so by default no pod reaches its node.
//!
//! A restarted agent must not rewrite a table that is already right: the
//! compiled ruleset's hash is kept in the table itself (the comment of the one
//! rule of chain `calinet-version`), and checked before the first install.

use std::collections::{BTreeMap, BTreeSet};

use calinet_policy::compile::{self, Options, Pool};
use calinet_policy::ir::{Chain, Rule, Ruleset, Stmt};
use calinet_policy::model::{AnyResource, Profile, without_reserved_labels};
use calinet_policy::netlink::{NetlinkBackend, NetlinkSocket};
use calinet_policy::semantics::{Endpoint, Endpoints, NamedPort, PolicyModel};

use crate::datastore::ClusterView;
use crate::error::Result;
use crate::plan::LocalWorkload;

/// The nftables table (family inet) the agent owns.
pub const TABLE: &str = "calinet";
/// The chain whose only rule carries the ruleset's hash.
pub const VERSION_CHAIN: &str = "calinet-version";

fn protocol(p: Option<&str>) -> calinet_policy::model::Protocol {
    let n = match p.unwrap_or("TCP") {
        "UDP" => 17,
        "SCTP" => 132,
        _ => 6,
    };
    calinet_policy::model::Protocol(n)
}

/// The desired table for `node`, its hash, and its rule count. Pure.
pub fn desired_ruleset(
    view: &ClusterView,
    node: &str,
    workloads: &[LocalWorkload],
) -> Result<(Ruleset, String, usize)> {
    let mut resources = view.policies.clone();
    // Kubernetes namespaces map to allow-all profiles (as Calico's do).
    let namespaces: BTreeSet<&str> = view.pods.values().map(|p| p.namespace()).collect();
    for ns in namespaces {
        let name = format!("kns.{ns}");
        let stored = resources
            .iter()
            .any(|r| matches!(r, AnyResource::Profile(p) if p.metadata.name == name));
        if !stored {
            resources.push(AnyResource::Profile(Profile::for_namespace(
                ns,
                &BTreeMap::new(),
            )));
        }
    }
    let model = PolicyModel::build(&resources)?;
    let mut eps = Vec::new();
    for w in workloads {
        let pod = &w.pod;
        eps.push(Endpoint {
            name: pod.key(),
            namespace: Some(pod.namespace().to_owned()),
            local: true,
            interface: w.spec.host_ifname.to_string(),
            addrs: (w.spec.ipv4.map(std::net::IpAddr::V4).into_iter())
                .chain(w.spec.ipv6.map(std::net::IpAddr::V6))
                .collect(),
            labels: without_reserved_labels(&pod.metadata.labels),
            profiles: vec![format!("kns.{}", pod.namespace())],
            named_ports: pod
                .spec
                .containers
                .iter()
                .flat_map(|c| &c.ports)
                .filter_map(|p| {
                    Some(NamedPort {
                        name: p.name.clone()?,
                        protocol: protocol(p.protocol.as_deref()),
                        port: p.container_port,
                    })
                })
                .collect(),
        });
    }
    // Pods elsewhere count for selectors and named ports; on this node,
    // endpoints a CNI plugin plumbed (with a containerID) are local ones.
    for (w, _) in view.weps.values() {
        let cni_local = w.spec.node == node && w.spec.container_id.is_some();
        if w.spec.node == node && !cni_local {
            continue;
        }
        let ns = w
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let key = format!("{ns}/{}", w.spec.pod);
        let pod = view.pods.get(&key);
        eps.push(Endpoint {
            name: key,
            namespace: Some(ns.clone()),
            local: cni_local,
            interface: if cni_local {
                w.spec.interface_name.clone()
            } else {
                String::new()
            },
            addrs: w.spec.ip_networks.iter().map(|n| n.addr()).collect(),
            labels: pod
                .map(|p| without_reserved_labels(&p.metadata.labels))
                .unwrap_or_default(),
            profiles: vec![format!("kns.{ns}")],
            named_ports: w
                .spec
                .ports
                .iter()
                .map(|p| NamedPort {
                    name: p.name.clone(),
                    protocol: protocol(Some(&p.protocol)),
                    port: p.port,
                })
                .collect(),
        });
    }
    let pools: Vec<Pool> = view
        .ipam
        .pools
        .iter()
        .filter(|p| p.enabled())
        .map(|p| Pool {
            cidr: p.spec.cidr,
            nat_outgoing: p.spec.nat_outgoing.unwrap_or(false),
        })
        .collect();
    // IPv6 rules only where IPv6 is in use (Felix's ipv6Support): an IPv6 pool,
    // enabled or not (workloads keep addresses from a disabled pool), or an
    // endpoint with an IPv6 address.
    let ipv6 = view.ipam.pools.iter().any(|p| p.spec.cidr.addr().is_ipv6())
        || eps.iter().flat_map(|e| &e.addrs).any(|a| a.is_ipv6());
    let opts = Options {
        table: TABLE.into(),
        ipv6,
        endpoint_to_host: view.endpoint_to_host_action(node),
        ..Options::default()
    };
    let mut rs = compile::compile(&model, &Endpoints::new(&model, eps), &pools, &opts)?;
    let hash = compile::content_hash(&calinet_policy::nft::render_full(&rs));
    let rules = rs.chains.values().map(|c| c.rules.len()).sum();
    rs.chains.insert(
        VERSION_CHAIN.into(),
        Chain {
            base: None,
            rules: vec![Rule::new(Vec::new(), Stmt::Return).comment(format!("ruleset {hash}"))],
        },
    );
    Ok((rs, hash, rules))
}

/// The installed table.
#[derive(Debug, Default)]
pub struct PolicyPlane {
    backend: Option<NetlinkBackend>,
    installed: Option<String>,
}

impl PolicyPlane {
    /// Installs `rs` unless the table already holds ruleset `hash`; returns the
    /// netlink messages sent (0 when nothing changed).
    pub fn apply(&mut self, rs: &Ruleset, hash: &str) -> Result<u64> {
        if self.installed.as_deref() == Some(hash) {
            return Ok(0);
        }
        if self.installed.is_none() && kernel_has(hash) {
            tracing::info!(%hash, "nftables table already holds this ruleset; not rewritten");
            self.installed = Some(hash.to_owned());
            return Ok(0);
        }
        let backend = match &mut self.backend {
            Some(b) => b,
            None => self
                .backend
                .insert(NetlinkBackend::new(NetlinkSocket::open()?)),
        };
        let stats = backend.apply(rs)?;
        tracing::info!(%hash, messages = stats.messages, touched_rules = stats.touched_rules,
            "nftables policy/NAT table updated");
        self.installed = Some(hash.to_owned());
        Ok(stats.messages as u64)
    }
}

/// Whether the kernel's table carries ruleset `hash` (read with `nft`).
fn kernel_has(hash: &str) -> bool {
    calinet_policy::nft::NftCli::default()
        .list_table(TABLE)
        .is_ok_and(|text| text.contains(&format!("ruleset {hash}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{apply, read_view};
    use crate::resources::parse_documents;
    use calinet_ipam::MemStore;
    use calinet_policy::semantics::{Direction, Packet, Verdict};
    use calinet_route::{IfName, WorkloadSpec};

    const CLUSTER: &str = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 172.16.0.0/16, natOutgoing: true}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec: {nodeName: a}\n";
    const DENY: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: deny-web}\nspec:\n  selector: app == 'web'\n  ingress: [{action: Deny}]\n";

    fn ruleset(extra: &str) -> (Ruleset, String, usize) {
        let store = MemStore::new();
        apply(
            &store,
            &parse_documents("t", &format!("{CLUSTER}{extra}")).unwrap(),
        )
        .unwrap();
        let view = read_view(&store).unwrap();
        let pod = view.pods["default/web"].clone();
        let spec = WorkloadSpec::new(
            IfName::calico_workload("default", "web"),
            "/run/netns/x",
            1450,
        )
        .ipv4("172.16.1.1".parse().unwrap());
        desired_ruleset(&view, "a", &[LocalWorkload { pod, spec }]).unwrap()
    }

    #[test]
    fn nat_and_policy_compile_to_a_stamped_table() {
        let (rs, hash, rules) = ruleset("");
        assert_eq!(rs.table, TABLE);
        let text = calinet_policy::nft::render_full(&rs);
        assert!(text.contains("masquerade"), "{text}");
        assert!(text.contains(&format!("ruleset {hash}")), "{text}");
        assert!(rules > 0);
        // Same input, same hash; a new policy changes it, and the ruleset
        // enforces it: the namespace profile allowed traffic to the pod, the
        // policy selecting the pod denies it.
        assert_eq!(ruleset("").1, hash);
        let (with_policy, other, _) = ruleset(&format!("---\n{DENY}"));
        assert_ne!(other, hash);
        let iface = IfName::calico_workload("default", "web");
        let to_pod = Packet::tcp(
            "198.51.100.7".parse().unwrap(),
            40000,
            "172.16.1.1".parse().unwrap(),
            80,
        );
        let verdict = |rs: &Ruleset| {
            rs.evaluate(&to_pod, iface.as_str(), Direction::Ingress)
                .unwrap()
        };
        assert_eq!(verdict(&rs), Verdict::Allow);
        assert_eq!(verdict(&with_policy), Verdict::Deny);
        // An IPv4-only cluster gets no IPv6 rules or sets.
        assert!(!text.contains("ip6 "), "{text}");
        assert!(text.contains("meta nfproto ipv6 drop"), "{text}");
    }
}
