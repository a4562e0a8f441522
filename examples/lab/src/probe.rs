//! Probes: a ping from every pod to every other pod and to the outside host,
//! with `tcpdump` on the sending node's uplink, and the capture classified
//! into the path the packets took.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use calinet_agent::datastore::ClusterView;
use serde::{Deserialize, Serialize};
use testlab::Netns;

use crate::error::{Error, Result};
use crate::state::{LabNode, LabState};

/// How traffic was seen on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservedPath {
    /// Pod addresses in plain sight on the uplink.
    Direct,
    /// Inside `VXLAN vni 4096` between node addresses.
    Vxlan,
    /// IP-in-IP between node addresses.
    Ipip,
    /// Only UDP 51820 between node addresses (encrypted).
    Wireguard,
    /// Leaving with the node's address as source (natOutgoing).
    Masqueraded,
    /// Seen on the pods' `cali*` interfaces, nothing on the uplink (two pods
    /// on one node).
    #[serde(rename = "same-node")]
    SameNode,
    /// Nothing seen on the uplink.
    NotSeen,
}

impl std::fmt::Display for ObservedPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObservedPath::Direct => "direct",
            ObservedPath::Vxlan => "VXLAN",
            ObservedPath::Ipip => "IPIP",
            ObservedPath::Wireguard => "WireGuard",
            ObservedPath::Masqueraded => "direct+SNAT",
            ObservedPath::SameNode => "same-node",
            ObservedPath::NotSeen => "not seen",
        })
    }
}

/// One probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    /// Source pod.
    pub from: String,
    /// The source pod's node.
    #[serde(default)]
    pub from_node: String,
    /// Target (pod name or `outside`).
    pub to: String,
    /// Target address.
    pub addr: IpAddr,
    /// Ping answered.
    pub reachable: bool,
    /// What the capture showed.
    pub path: ObservedPath,
}

/// The first address of pod `pod`'s workload endpoint.
pub fn pod_addr(view: &ClusterView, pod: &str) -> Option<IpAddr> {
    view.weps
        .values()
        .find(|(w, _)| w.spec.pod == pod)
        .and_then(|(w, _)| w.spec.ip_networks.first().map(|n| n.addr()))
}

/// The host-side interface of pod `pod`'s workload endpoint.
pub fn pod_interface(view: &ClusterView, pod: &str) -> Option<String> {
    view.weps
        .values()
        .find(|(w, _)| w.spec.pod == pod)
        .map(|(w, _)| w.spec.interface_name.clone())
}

/// One ping (2 s) from namespace `netns` to `addr`.
pub fn ping(netns: &str, addr: IpAddr) -> bool {
    Netns::existing(netns).is_ok_and(|ns| ns.ping(addr, Duration::from_secs(2)))
}

/// Pings every target from every pod, capturing on the sender's uplink.
pub fn probe_all(state: &LabState, view: &ClusterView) -> Result<Vec<Probe>> {
    let mut targets: Vec<(String, IpAddr, Option<&LabNode>)> = Vec::new();
    for p in &state.pods {
        let addr = pod_addr(view, &p.name)
            .ok_or_else(|| Error::Lab(format!("pod {} has no address yet", p.name)))?;
        targets.push((
            p.name.clone(),
            addr,
            state.nodes.iter().find(|n| n.name == p.node),
        ));
    }
    targets.push(("outside".into(), IpAddr::V4(state.outside.addr), None));
    let mut probes = Vec::new();
    for p in &state.pods {
        let node = state
            .nodes
            .iter()
            .find(|n| n.name == p.node)
            .ok_or_else(|| Error::Lab(format!("pod {} on unknown node {}", p.name, p.node)))?;
        let src = pod_addr(view, &p.name)
            .ok_or_else(|| Error::Lab(format!("pod {} has no address yet", p.name)))?;
        let uplink = Netns::existing(&node.netns)?;
        for (to, addr, dst_node) in &targets {
            if *to == p.name {
                continue;
            }
            let cap = uplink.capture(
                "eth0",
                "icmp or udp port 4789 or udp port 51820 or ip proto 4",
            )?;
            // A pod on the same node: also watch the target's cali interface.
            let same_node = dst_node.is_some_and(|d| d.name == node.name);
            let local = match pod_interface(view, to) {
                Some(ifname) if same_node => Some(uplink.capture(&ifname, "icmp")?),
                _ => None,
            };
            let reachable = ping(&p.netns, *addr);
            let packets = cap.stop()?;
            let mut path = classify(
                &packets.lines,
                src,
                *addr,
                node.addr,
                dst_node.map(|n| n.addr),
            );
            if let Some(local) = local {
                let seen = local.stop()?;
                let inner = format!("{src} > {addr}: ICMP echo request");
                if path == ObservedPath::NotSeen && seen.lines.iter().any(|l| l.contains(&inner)) {
                    path = ObservedPath::SameNode;
                }
            }
            probes.push(Probe {
                from: p.name.clone(),
                from_node: p.node.clone(),
                to: to.clone(),
                addr: *addr,
                reachable,
                path,
            });
        }
    }
    Ok(probes)
}

/// Reads a capture of the sender's uplink: which way did `src -> dst` go?
pub fn classify(
    lines: &[String],
    src: IpAddr,
    dst: IpAddr,
    src_node: Ipv4Addr,
    dst_node: Option<Ipv4Addr>,
) -> ObservedPath {
    let inner = format!("{src} > {dst}: ICMP echo request");
    for (i, l) in lines.iter().enumerate() {
        if l.contains(&inner) {
            let outer = i.checked_sub(1).map(|j| lines[j].as_str()).unwrap_or("");
            // tcpdump prints IP-in-IP on one line: `IP a > b: IP src > dst: ICMP ...`.
            let before = l.find(&inner).map_or("", |pos| &l[..pos]);
            let ipip = before.contains(" > ");
            return if outer.contains("VXLAN") || l.contains("VXLAN") {
                ObservedPath::Vxlan
            } else if ipip {
                ObservedPath::Ipip
            } else {
                ObservedPath::Direct
            };
        }
    }
    if let Some(dn) = dst_node {
        let wg = format!("{src_node}.");
        let to = format!("> {dn}.51820");
        if lines
            .iter()
            .any(|l| l.contains(&wg) && l.contains(&to) && l.contains("UDP"))
        {
            return ObservedPath::Wireguard;
        }
    }
    if lines
        .iter()
        .any(|l| l.contains(&format!("{src_node} > {dst}: ICMP echo request")))
    {
        return ObservedPath::Masqueraded;
    }
    ObservedPath::NotSeen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    #[test]
    fn classifies_captured_paths() {
        let src: IpAddr = "172.16.116.1".parse().unwrap();
        let dst: IpAddr = "172.16.158.1".parse().unwrap();
        let a: Ipv4Addr = "198.51.100.10".parse().unwrap();
        let b: Ipv4Addr = "198.51.100.101".parse().unwrap();
        // Captured with `tcpdump -i eth0 -nn -l` on k8s-m during a lab run.
        let vx = lines(
            "12:00:00.1 IP 198.51.100.10.40000 > 198.51.100.101.4789: VXLAN, flags [I] (0x08), vni 4096\n\
             IP 172.16.116.1 > 172.16.158.1: ICMP echo request, id 1, seq 1, length 64",
        );
        assert_eq!(classify(&vx, src, dst, a, Some(b)), ObservedPath::Vxlan);
        let direct = lines(
            "12:00:00.1 IP 172.16.116.1 > 172.16.158.1: ICMP echo request, id 1, seq 1, length 64",
        );
        assert_eq!(
            classify(&direct, src, dst, a, Some(b)),
            ObservedPath::Direct
        );
        let wg = lines("12:00:00.1 IP 198.51.100.10.51820 > 198.51.100.101.51820: UDP, length 128");
        assert_eq!(classify(&wg, src, dst, a, Some(b)), ObservedPath::Wireguard);
        let out: IpAddr = "192.0.2.100".parse().unwrap();
        let nat = lines(
            "12:00:00.1 IP 198.51.100.10 > 192.0.2.100: ICMP echo request, id 1, seq 1, length 64",
        );
        assert_eq!(classify(&nat, src, out, a, None), ObservedPath::Masqueraded);
        assert_eq!(classify(&[], src, dst, a, Some(b)), ObservedPath::NotSeen);
        // IP-in-IP as tcpdump prints it (outer and inner on one line).
        let ipip = lines(
            "12:00:00.1 IP 198.51.100.10 > 198.51.100.101: IP 172.16.116.1 > 172.16.158.1: ICMP echo request, id 1, seq 1, length 64 (ipip-proto-4)",
        );
        assert_eq!(classify(&ipip, src, dst, a, Some(b)), ObservedPath::Ipip);
    }
}
