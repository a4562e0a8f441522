//! What the lab prints about the running cluster: the agent's views (the
//! same tables `calinet-agent ipam show`, `get ippool -o wide`, `get
//! workloadendpoint`, `get node -o wide` and `node status` print), each node's
//! links with their MTUs and its routes, in WireGuard mode the Node resource,
//! the device's address and `wg showconf` (private key hidden), and the
//! connectivity matrix with the observed paths.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use calinet_agent::datastore::read_view;
use calinet_agent::show::{self, IpamShowFlags, Output};

use crate::error::Result;
use crate::probe::{ObservedPath, Probe, probe_all};
use crate::state::{LabState, Mode, unix_now};
use crate::supervise::{WG_IFNAME, wg};

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
    let _ = writeln!(out, "\n$ calinet-agent get node -o wide");
    out.push_str(&show::get_nodes(&view, None, Output::Wide)?);
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
        let _ = writeln!(out, "\n[{}]$ ip link | grep mtu", n.name);
        out.push_str(&links_with_mtu(&testlab::cmd::run(
            "ip",
            &["-n", &n.netns, "link"],
        )?));
        let _ = writeln!(out, "[{}]$ ip route", n.name);
        out.push_str(&testlab::cmd::run("ip", &["-n", &n.netns, "route"])?);
    }
    if state.mode.bgp() {
        let _ = writeln!(out, "\n[router]$ ip route");
        out.push_str(&testlab::cmd::run("ip", &["-n", &state.router, "route"])?);
    }
    if state.mode == Mode::Wireguard
        && let Some(n) = state.nodes.first()
    {
        let _ = writeln!(out, "\n$ calinet-agent get node {} -o yaml", n.name);
        out.push_str(&show::get_nodes(&view, Some(&n.name), Output::Yaml)?);
        let _ = writeln!(out, "\n[{}]$ ip addr show {WG_IFNAME}", n.name);
        out.push_str(&testlab::cmd::run(
            "ip",
            &["-n", &n.netns, "addr", "show", WG_IFNAME],
        )?);
        let _ = writeln!(out, "\n[{}]$ wg showconf {WG_IFNAME}", n.name);
        out.push_str(&hide_private_key(&wg(state, n, &["showconf", WG_IFNAME])?));
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

/// The first line of each link in `ip link` output (name, flags, MTU).
pub fn links_with_mtu(ip_link: &str) -> String {
    ip_link
        .lines()
        .filter(|l| l.contains(" mtu "))
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}

/// `wg showconf` without the private key (the report is printed and kept).
pub fn hide_private_key(showconf: &str) -> String {
    showconf
        .lines()
        .map(|l| {
            if l.starts_with("PrivateKey") {
                "PrivateKey = (hidden)\n".to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect()
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
    fn link_lines_and_a_hidden_key() {
        let ip = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\n    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n2: eth0@if7: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 9001 qdisc noqueue state UP mode DEFAULT group default qlen 1000\n    link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff link-netns r\n";
        assert_eq!(
            links_with_mtu(ip),
            "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\n\
             2: eth0@if7: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 9001 qdisc noqueue state UP mode DEFAULT group default qlen 1000\n"
        );
        let conf = "[Interface]\nListenPort = 51820\nFwMark = 0x100000\nPrivateKey = aGVsbG8=\n\n[Peer]\nAllowedIPs = 172.16.158.0/24, 172.16.158.7/32\n";
        let shown = hide_private_key(conf);
        assert!(!shown.contains("aGVsbG8="), "{shown}");
        assert!(shown.contains("PrivateKey = (hidden)\n"), "{shown}");
        assert!(shown.contains("AllowedIPs = 172.16.158.0/24, 172.16.158.7/32\n"));
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
