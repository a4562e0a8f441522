//! Policy and natOutgoing: the cluster's policies, this node's workload
//! endpoints (and the other nodes' as selector members) and the pools compiled
//! by calinet-policy into one nftables table, installed through its netlink
//! backend.
//!
//! A restarted agent must not rewrite a table that is already right: the
//! compiled ruleset's hash is kept in the table itself (the comment of the one
//! rule of chain `calinet-version`), and checked before the first install.

use std::collections::{BTreeMap, BTreeSet};

use calinet_policy::compile::{self, Options, Pool};
use calinet_policy::ir::{Chain, Rule, Ruleset, Stmt};
use calinet_policy::model::{AnyResource, Profile};
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
            addrs: w.spec.ipv4.map(std::net::IpAddr::V4).into_iter().collect(),
            labels: pod.metadata.labels.clone(),
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
    // Pods elsewhere count for selectors and named ports.
    for (w, _) in view.weps.values() {
        if w.spec.node == node {
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
            local: false,
            interface: String::new(),
            addrs: w.spec.ip_networks.iter().map(|n| n.addr()).collect(),
            labels: pod.map(|p| p.metadata.labels.clone()).unwrap_or_default(),
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
    let opts = Options {
        table: TABLE.into(),
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
