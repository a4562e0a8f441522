//! What a Calico user looks at, with calicoctl's columns: `ipam show`,
//! `ipam check`, `get ippool`, `get workloadendpoint`, `node status`; plus JSON
//! and YAML output for scripts.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use calinet_ipam::report::{self, Grouping, ShowReport, render_table};
use calinet_ipam::{EncapMode, HandleId, IpPool, NodeName, TunnelKind};
use serde::Serialize;

use crate::datastore::{AgentStatus, ClusterView};
use crate::error::{Error, Result};

/// Output format of the `get` and `show` commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// calicoctl's table.
    Table,
    /// calicoctl's table with more columns.
    Wide,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

fn encode<T: Serialize>(value: &T, output: Output) -> Result<String> {
    match output {
        Output::Json => Ok(serde_json::to_string_pretty(value).expect("serialisable") + "\n"),
        Output::Yaml => serde_norway::to_string(value).map_err(|e| Error::Usage(e.to_string())),
        _ => unreachable!("tables are rendered by the caller"),
    }
}

/// One usage row, serialisable.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageJson {
    grouping: &'static str,
    cidr: String,
    ips_total: u128,
    ips_in_use: u128,
    ips_reserved: u128,
    ips_free: u128,
}

/// Which `ipam show` view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpamShowFlags {
    /// `--show-blocks`.
    pub blocks: bool,
    /// `--show-borrowed`.
    pub borrowed: bool,
    /// `--show-configuration`.
    pub configuration: bool,
}

/// `calicoctl ipam show [...]`.
pub fn ipam_show(view: &ClusterView, flags: IpamShowFlags, output: Output) -> Result<String> {
    let r: ShowReport = report::show_from(&view.ipam);
    let table = matches!(output, Output::Table | Output::Wide);
    if flags.configuration {
        if table {
            return Ok(r.render_configuration());
        }
        let map: BTreeMap<_, _> = r.configuration.iter().cloned().collect();
        return encode(&map, output);
    }
    if flags.borrowed {
        if table {
            return Ok(r.render_borrowed());
        }
        let rows: Vec<BTreeMap<&str, String>> = r
            .borrowed
            .iter()
            .map(|b| {
                BTreeMap::from([
                    ("ip", b.ip.to_string()),
                    ("borrowingNode", b.borrowing_node.clone()),
                    ("block", b.block.to_string()),
                    ("blockOwner", b.block_owner.clone()),
                    ("type", b.kind.clone()),
                    ("allocatedTo", b.allocated_to.clone()),
                ])
            })
            .collect();
        return encode(&rows, output);
    }
    if table {
        return Ok(r.render(flags.blocks));
    }
    let rows: Vec<UsageJson> = r
        .pools
        .iter()
        .chain(if flags.blocks { &r.blocks[..] } else { &[] })
        .map(|u| UsageJson {
            grouping: match u.grouping {
                Grouping::IpPool => "IP Pool",
                _ => "Block",
            },
            cidr: u.cidr.to_string(),
            ips_total: u.total,
            ips_in_use: u.in_use,
            ips_reserved: u.reserved,
            ips_free: u.free,
        })
        .collect();
    encode(&rows, output)
}

/// The handles that are legitimately in use: pods that exist and tunnel
/// addresses of nodes that exist.
pub fn live_handles(view: &ClusterView) -> HashSet<HandleId> {
    let mut live: HashSet<HandleId> = view.pods.values().map(|p| p.handle()).collect();
    for name in view.nodes.keys() {
        if let Ok(node) = name.parse::<NodeName>() {
            for kind in [TunnelKind::Vxlan, TunnelKind::Ipip, TunnelKind::VxlanV6] {
                live.insert(HandleId::tunnel(kind, &node));
            }
            if let Ok(h) = format!("wireguard-tunnel-addr-{name}").parse() {
                live.insert(h);
            }
        }
    }
    live
}

/// `calicoctl ipam check`: returns the report text and the number of problems.
pub fn ipam_check(view: &ClusterView) -> (String, usize) {
    let live = live_handles(view);
    let r = report::check_dump(&view.ipam, Some(&live));
    let mut s = String::from("Checking IPAM for inconsistencies...\n\n");
    let allocations: usize = view
        .ipam
        .blocks
        .iter()
        .map(|(b, _)| b.allocated_count() as usize)
        .sum();
    let _ = writeln!(s, "Loading all IPAM blocks...");
    let _ = writeln!(s, "Found {} IPAM blocks.", view.ipam.blocks.len());
    for (b, _) in &view.ipam.blocks {
        let _ = writeln!(
            s,
            " IPAM block {} affinity={}:",
            b.cidr(),
            b.affinity().unwrap_or("<none>")
        );
    }
    let _ = writeln!(s, "IPAM blocks record {allocations} allocations.\n");
    let _ = writeln!(s, "Loading all IPAM pools...");
    for p in &view.ipam.pools {
        let _ = writeln!(s, "  {}", p.spec.cidr);
    }
    let _ = writeln!(
        s,
        "Found {} active IP pools.\n",
        view.ipam.pools.iter().filter(|p| p.enabled()).count()
    );
    let _ = writeln!(
        s,
        "Loading all nodes and pods: {} nodes, {} pods.",
        view.nodes.len(),
        view.pods.len()
    );
    let _ = writeln!(
        s,
        "Workloads and nodes are using {} IPs.\n",
        r.addresses_in_use
    );
    let _ = writeln!(
        s,
        "Scanning for IPs that are allocated but not actually in use..."
    );
    for l in &r.leaked {
        let _ = writeln!(s, "  {} leaked (handle {})", l.addr, l.handle);
    }
    let _ = writeln!(
        s,
        "Found {} IPs that are allocated in IPAM but not actually in use.",
        r.leaked.len()
    );
    for a in &r.allocations_without_handle {
        let _ = writeln!(s, "  {} in block {} has no handle record", a.addr, a.block);
    }
    for h in &r.orphan_handles {
        let _ = writeln!(s, "  handle {h} has no allocation");
    }
    for m in &r.handle_mismatches {
        let _ = writeln!(
            s,
            "  handle {} records {} in {}, the block has {}",
            m.handle, m.recorded, m.block, m.actual
        );
    }
    for d in &r.duplicates {
        let _ = writeln!(s, "  {d} is allocated in more than one block");
    }
    for a in &r.affinity_problems {
        let _ = writeln!(s, "  affinity {} {}: {}", a.node, a.block, a.reason);
    }
    for i in &r.invalid {
        let _ = writeln!(s, "  invalid document {}: {}", i.key, i.reason);
    }
    let problems = r.leaked.len()
        + r.allocations_without_handle.len()
        + r.orphan_handles.len()
        + r.handle_mismatches.len()
        + r.duplicates.len()
        + r.affinity_problems.len()
        + r.invalid.len();
    let _ = writeln!(s, "\nCheck complete; found {problems} problems.");
    (s, problems)
}

fn mode(m: Option<EncapMode>) -> &'static str {
    match m.unwrap_or_default() {
        EncapMode::Always => "Always",
        EncapMode::CrossSubnet => "CrossSubnet",
        _ => "Never",
    }
}

/// `calicoctl get ippool [-o wide|json|yaml]`.
pub fn get_ippool(view: &ClusterView, output: Output) -> Result<String> {
    let mut pools: Vec<&IpPool> = view.ipam.pools.iter().collect();
    pools.sort_by(|a, b| a.name().cmp(b.name()));
    match output {
        Output::Table => Ok(plain_table(
            &["NAME", "CIDR", "SELECTOR"],
            pools
                .iter()
                .map(|p| {
                    vec![
                        p.name().to_owned(),
                        p.spec.cidr.to_string(),
                        p.node_selector().to_owned(),
                    ]
                })
                .collect(),
        )),
        Output::Wide => Ok(plain_table(
            &[
                "NAME",
                "CIDR",
                "NAT",
                "IPIPMODE",
                "VXLANMODE",
                "DISABLED",
                "DISABLEBGPEXPORT",
                "SELECTOR",
            ],
            pools
                .iter()
                .map(|p| {
                    vec![
                        p.name().to_owned(),
                        p.spec.cidr.to_string(),
                        p.spec.nat_outgoing.unwrap_or(false).to_string(),
                        mode(p.spec.ipip_mode).to_owned(),
                        mode(p.spec.vxlan_mode).to_owned(),
                        p.spec.disabled.unwrap_or(false).to_string(),
                        p.spec.disable_bgp_export.unwrap_or(false).to_string(),
                        p.node_selector().to_owned(),
                    ]
                })
                .collect(),
        )),
        _ => encode(&pools, output),
    }
}

/// `get node [NAME]`: calicoctl's `NAME` table, `-o wide` with `ASN IPV4
/// IPV6` (the default AS in parentheses), `-o yaml|json` the resources with
/// the tunnel and WireGuard fields the agents publish.
pub fn get_nodes(view: &ClusterView, name: Option<&str>, output: Output) -> Result<String> {
    let nodes: Vec<&crate::resources::CalicoNode> = match name {
        Some(n) => vec![
            &view
                .nodes
                .get(n)
                .ok_or_else(|| Error::Usage(format!("resource does not exist: Node({n})")))?
                .0,
        ],
        None => view.nodes.values().map(|(n, _)| n).collect(),
    };
    let bgp = |n: &crate::resources::CalicoNode| n.spec.bgp.clone().unwrap_or_default();
    match output {
        Output::Table => Ok(plain_table(
            &["NAME"],
            nodes
                .iter()
                .map(|n| vec![n.metadata.name.clone()])
                .collect(),
        )),
        Output::Wide => Ok(plain_table(
            &["NAME", "ASN", "IPV4", "IPV6"],
            nodes
                .iter()
                .map(|n| {
                    let b = bgp(n);
                    let asn = b
                        .extra
                        .get("asNumber")
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "(64512)".into());
                    vec![
                        n.metadata.name.clone(),
                        asn,
                        b.ipv4_address.map(|a| a.to_string()).unwrap_or_default(),
                        b.ipv6_address.map(|a| a.to_string()).unwrap_or_default(),
                    ]
                })
                .collect(),
        )),
        _ if name.is_some() => encode(&nodes[0], output),
        _ => encode(&list("NodeList", &nodes), output),
    }
}

/// `get felixconfiguration [NAME]`: calicoctl's `NAME` table (also for
/// `-o wide`), `-o yaml|json` the resources.
pub fn get_felix(view: &ClusterView, name: Option<&str>, output: Output) -> Result<String> {
    let felix: Vec<&crate::resources::FelixConfiguration> = match name {
        Some(n) => vec![view.felix.get(n).ok_or_else(|| {
            Error::Usage(format!("resource does not exist: FelixConfiguration({n})"))
        })?],
        None => view.felix.values().collect(),
    };
    match output {
        Output::Table | Output::Wide => Ok(plain_table(
            &["NAME"],
            felix
                .iter()
                .map(|f| vec![f.metadata.name.clone()])
                .collect(),
        )),
        _ if name.is_some() => encode(&felix[0], output),
        _ => encode(&list("FelixConfigurationList", &felix), output),
    }
}

/// calicoctl's list document (`apiVersion`, `items`, `kind`).
fn list<T: Serialize>(kind: &str, items: &[T]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": crate::resources::CALICO_API,
        "items": items,
        "kind": kind,
    })
}

/// calicoctl's plain `get` table: left-aligned columns separated by spaces.
pub fn plain_table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<width$}   ", width = w[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `calicoctl get workloadendpoint [-n NS | -A]`.
pub fn get_weps(view: &ClusterView, namespace: Option<&str>, output: Output) -> Result<String> {
    let weps: Vec<_> = view
        .weps
        .values()
        .map(|(w, _)| w)
        .filter(|w| namespace.is_none_or(|ns| w.metadata.namespace.as_deref() == Some(ns)))
        .collect();
    let all = namespace.is_none();
    match output {
        Output::Table | Output::Wide => {
            let mut headers = vec!["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"];
            if all {
                headers.insert(0, "NAMESPACE");
            }
            if output == Output::Wide {
                headers.push("PROFILES");
            }
            let rows = weps
                .iter()
                .map(|w| {
                    let mut row = vec![
                        w.spec.pod.clone(),
                        w.spec.node.clone(),
                        w.spec
                            .ip_networks
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        w.spec.interface_name.clone(),
                    ];
                    if all {
                        row.insert(0, w.metadata.namespace.clone().unwrap_or_default());
                    }
                    if output == Output::Wide {
                        row.push(w.spec.profiles.join(","));
                    }
                    row
                })
                .collect();
            Ok(plain_table(&headers, rows))
        }
        _ => encode(&weps, output),
    }
}

/// `calicoctl get bgpconfiguration`: NAME, LOGSEVERITY, MESHENABLED, ASNUMBER.
pub fn get_bgp_configurations(view: &ClusterView, output: Output) -> Result<String> {
    let configs: Vec<_> = view.bgp_configs.values().collect();
    match output {
        Output::Table | Output::Wide => {
            let rows = configs
                .iter()
                .map(|c| {
                    vec![
                        c.metadata.name.clone(),
                        c.spec.log_severity().to_owned(),
                        c.spec.mesh_enabled().to_string(),
                        c.spec.as_number().to_string(),
                    ]
                })
                .collect();
            Ok(plain_table(
                &["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"],
                rows,
            ))
        }
        _ => encode(&configs, output),
    }
}

/// `calicoctl get bgppeer`: NAME, PEERIP, NODE, ASN.
pub fn get_bgp_peers(view: &ClusterView, output: Output) -> Result<String> {
    match output {
        Output::Table | Output::Wide => {
            let rows = view
                .bgp_peers
                .iter()
                .map(|p| {
                    let s = &p.spec;
                    vec![
                        p.metadata.name.clone(),
                        s.peer_ip
                            .clone()
                            .or_else(|| s.peer_selector.clone())
                            .unwrap_or_default(),
                        s.node
                            .clone()
                            .or_else(|| s.node_selector.clone())
                            .unwrap_or_else(|| "(global)".into()),
                        s.as_number.map(|a| a.to_string()).unwrap_or_default(),
                    ]
                })
                .collect();
            Ok(plain_table(&["NAME", "PEERIP", "NODE", "ASN"], rows))
        }
        _ => encode(&view.bgp_peers, output),
    }
}

/// `calicoctl node status` for `node`, at `now` (unix seconds): whether the
/// node's agent reported within `stale_after` seconds, then BIRD's sessions
/// as calicoctl shows them (one table per family), read from the BIRD whose
/// runtime directory is `bgp_dir` over its control socket. The peer types
/// come from the node's BGP plan.
pub fn node_status(
    view: &ClusterView,
    node: &str,
    now: u64,
    stale_after: u64,
    bgp_dir: &std::path::Path,
) -> Result<String> {
    let alive = |s: &AgentStatus| now.saturating_sub(s.last_reconcile) <= stale_after;
    let mut s = String::new();
    match view.statuses.get(node) {
        None => {
            let _ = writeln!(
                s,
                "calinet agent for node {node} is not running (it has never reported)."
            );
        }
        Some((me, _)) if alive(me) => {
            let _ = writeln!(
                s,
                "calinet agent for node {node} is running (last reconcile {}s ago, {}).",
                now.saturating_sub(me.last_reconcile),
                if me.converged {
                    "converged"
                } else {
                    "converging"
                }
            );
        }
        Some((me, _)) => {
            let _ = writeln!(
                s,
                "calinet agent for node {node} is NOT running (last report {}s ago).",
                now.saturating_sub(me.last_reconcile)
            );
        }
    }
    if let Some(reason) = crate::bgp::off_reason(view) {
        let _ = writeln!(s, "BGP is not running on this node ({reason}).");
        return Ok(s);
    }
    let mut input = crate::bgp::input(view, node)?;
    // Passwords change no session's name or type; the status needs neither
    // the secrets nor access to them.
    for r in input.peers.iter().filter_map(|p| p.spec.password.as_ref()) {
        let placeholder = calinet_bgp::Password::new("-").expect("a valid placeholder");
        input.secrets.insert(r.secret_key_ref.clone(), placeholder);
    }
    let plan = calinet_bgp::plan(&input).map_err(Error::Bgp)?;
    let bird = calinet_bgp::BirdProcess::new(bgp_dir);
    let protocols = match bird.connect().and_then(|mut c| c.protocols()) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(
                s,
                "BIRD is not running on node {node} ({}: {}).",
                bird.socket_path().display(),
                crate::error::chain(&e)
            );
            return Ok(s);
        }
    };
    let _ = writeln!(s, "BIRD is running.");
    let rows = calinet_bgp::node_status(&plan, &protocols);
    for (family, label) in [
        (calinet_bgp::Family::V4, "IPv4"),
        (calinet_bgp::Family::V6, "IPv6"),
    ] {
        let _ = writeln!(s, "\n{label} BGP status");
        let table: Vec<Vec<String>> = rows
            .iter()
            .filter(|r| r.family == family)
            .map(|r| {
                vec![
                    r.peer_address.to_string(),
                    r.peer_type.label().to_owned(),
                    r.state.clone(),
                    r.since.clone(),
                    r.info.clone(),
                ]
            })
            .collect();
        if table.is_empty() {
            let _ = writeln!(s, "No {label} peers found.");
            continue;
        }
        s.push_str(&render_table(
            &["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"],
            &table,
        ));
    }
    Ok(s)
}
