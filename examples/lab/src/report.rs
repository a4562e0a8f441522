//! What the lab prints about the running cluster: the agent's views (the
//! same tables `calinet-agent ipam show`, `get ippool -o wide`, `get
//! workloadendpoint` and `node status` print), each node's routes, and the
//! connectivity matrix with the observed paths.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use calinet_agent::datastore::read_view;
use calinet_agent::show::{self, IpamShowFlags, Output};

use crate::error::Result;
use crate::probe::{ObservedPath, Probe, probe_all};
use crate::state::{LabState, Mode, unix_now};
use crate::supervise::wg_ifname;

/// The lab's printout and the probe results.
#[derive(Debug, Clone)]
pub struct LabReport {
    /// Human-readable report.
    pub text: String,
    /// One entry per (source pod, target).
    pub probes: Vec<Probe>,
}

/// Everything the lab prints about the running cluster.
pub fn report(state: &LabState) -> Result<LabReport> {
    let store = crate::store::open(state)?;
    let view = read_view(store.as_ref())?;
    let mut out = String::new();
    let _ = writeln!(out, "\n$ calinet-agent ipam show --show-blocks");
    out.push_str(&show::ipam_show(
        &view,
        IpamShowFlags {
            blocks: true,
            ..IpamShowFlags::default()
        },
        Output::Table,
    )?);
    let _ = writeln!(out, "\n$ calinet-agent get ippool -o wide");
    out.push_str(&show::get_ippool(&view, Output::Wide)?);
    let _ = writeln!(out, "\n$ calinet-agent get workloadendpoint");
    out.push_str(&show::get_weps(&view, Some("default"), Output::Table)?);
    if state.mode.bgp() {
        let _ = writeln!(out, "\n$ calinet-agent get bgpconfiguration");
        out.push_str(&show::get_bgp_configurations(&view, Output::Table)?);
        let _ = writeln!(out, "\n$ calinet-agent get bgppeer");
        out.push_str(&show::get_bgp_peers(&view, Output::Table)?);
    }
    for n in &state.nodes {
        let _ = writeln!(out, "\n[{}]$ calinet-agent node status", n.name);
        out.push_str(&show::node_status(
            &view,
            &n.name,
            unix_now(),
            15,
            &crate::bgp::node_bird_dir(state, &n.name),
        )?);
        // Only the first node's table in VXLAN modes: there is no BGP to show.
        if !state.mode.bgp() {
            break;
        }
    }
    for n in &state.nodes {
        let _ = writeln!(out, "\n[{}]$ ip route", n.name);
        out.push_str(&testlab::cmd::run("ip", &["-n", &n.netns, "route"])?);
    }
    if state.mode.bgp() {
        let _ = writeln!(out, "\n[router]$ ip route");
        out.push_str(&testlab::cmd::run("ip", &["-n", &state.router, "route"])?);
    }
    if state.mode == Mode::Wireguard
        && let Some(n) = state.nodes.first()
    {
        // `wg show`, not `showconf`: it never prints the private key.
        let ifname = wg_ifname(state, n);
        let _ = writeln!(out, "\n[{}]$ wg show {ifname}", n.name);
        out.push_str(&testlab::cmd::run(
            "ip",
            &["netns", "exec", &n.netns, "wg", "show", &ifname],
        )?);
        let _ = writeln!(out, "\n[{}]$ ip rule; ip route show table 1", n.name);
        out.push_str(&testlab::cmd::run("ip", &["-n", &n.netns, "rule"])?);
        out.push_str(&testlab::cmd::run(
            "ip",
            &["-n", &n.netns, "route", "show", "table", "1"],
        )?);
    }
    let probes = probe_all(state, &view)?;
    let _ = writeln!(
        out,
        "\nconnectivity (ping) and the path observed on the sender's uplink (tcpdump):"
    );
    out.push_str(&render_matrix(&probes));
    Ok(LabReport { text: out, probes })
}

/// The matrix: rows are sources, columns targets, each cell reachability and
/// the observed path; then the targets' addresses.
pub fn render_matrix(probes: &[Probe]) -> String {
    let mut sources: Vec<&str> = Vec::new();
    let mut targets: Vec<&str> = Vec::new();
    for p in probes {
        if !sources.contains(&p.from.as_str()) {
            sources.push(&p.from);
        }
        if !targets.contains(&p.to.as_str()) {
            targets.push(&p.to);
        }
    }
    // Targets in source order, the outside host last.
    targets.sort_by_key(|t| sources.iter().position(|s| s == t).unwrap_or(usize::MAX));
    let cell = |from: &str, to: &str| -> String {
        match probes.iter().find(|p| p.from == from && p.to == to) {
            None => "-".into(),
            Some(p) if p.reachable => format!("ok {}", p.path),
            // The request was captured leaving the sender's node.
            Some(p) if p.path != ObservedPath::NotSeen => {
                format!("FAIL (request left {}, no reply)", p.from_node)
            }
            Some(p) => format!("FAIL ({})", p.path),
        }
    };
    let mut header = vec!["from \\ to".to_owned()];
    header.extend(targets.iter().map(|t| (*t).to_owned()));
    let mut rows = vec![header];
    for s in &sources {
        let mut row = vec![(*s).to_owned()];
        row.extend(targets.iter().map(|t| cell(s, t)));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let addrs: BTreeMap<&str, IpAddr> = probes.iter().map(|p| (p.to.as_str(), p.addr)).collect();
    let legend: Vec<String> = addrs.iter().map(|(n, a)| format!("{n}={a}")).collect();
    let _ = writeln!(out, "({})", legend.join(", "));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(from: &str, to: &str, addr: &str, reachable: bool, path: ObservedPath) -> Probe {
        Probe {
            from: from.into(),
            from_node: from.trim_start_matches("web-").into(),
            to: to.into(),
            addr: addr.parse().unwrap(),
            reachable,
            path,
        }
    }

    #[test]
    fn matrix_puts_targets_in_source_order_and_outside_last() {
        let probes = [
            probe(
                "web-b",
                "outside",
                "192.0.2.100",
                true,
                ObservedPath::Masqueraded,
            ),
            probe("web-b", "web-a", "172.16.1.1", false, ObservedPath::NotSeen),
            probe("web-a", "web-b", "172.16.2.1", true, ObservedPath::Vxlan),
            probe(
                "web-a",
                "outside",
                "192.0.2.100",
                true,
                ObservedPath::Masqueraded,
            ),
        ];
        assert_eq!(
            render_matrix(&probes),
            "from \\ to  web-b     web-a            outside\n\
             web-b      -         FAIL (not seen)  ok direct+SNAT\n\
             web-a      ok VXLAN  -                ok direct+SNAT\n\
             (outside=192.0.2.100, web-a=172.16.1.1, web-b=172.16.2.1)\n"
        );
    }
}
