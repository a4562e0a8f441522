//! Every switch between two modes (IPIP Always / CrossSubnet, Never, VXLAN
//! Always / CrossSubnet), applied through calinet-route's reconciler on its
//! recording `MemoryBackend`: after the switch the fake kernel holds exactly
//! the new mode's routes, links and VTEP entries. This covers the IPIP
//! switches, which this kernel cannot run (no IPIP); the lab tests cover the
//! VXLAN ones on the real kernel.

use std::collections::BTreeSet;

use calinet_encap::route::RouteSpecs;
use calinet_encap::{Block, EncapMode, Input, Node, Pool, Uplink, decide};
use calinet_route::{LinkKind, MemoryBackend, Ownership, Reconciler, RouteProtocol};

use EncapMode::{Always, CrossSubnet, Never};

const SEED: [(&str, &str, &str); 4] = [
    ("k8s-m", "198.51.100.10/24", "172.16.116.0/24"),
    ("k8s-w1", "198.51.100.101/24", "172.16.158.0/24"),
    ("k8s-w2", "198.51.100.102/24", "172.16.184.0/24"),
    ("k8s-w0", "203.0.113.100/24", "172.16.34.0/24"),
];

fn specs(me: &str, ipip: EncapMode, vxlan: EncapMode) -> RouteSpecs {
    let mut local = None;
    let mut remotes = Vec::new();
    let mut blocks = Vec::new();
    for (n, addr, block) in SEED {
        let tunnel: ipnet::Ipv4Net = block.parse().unwrap();
        let node = Node::new(n.parse().unwrap())
            .with_address(addr.parse().unwrap())
            .with_ipip_tunnel(tunnel.network())
            .with_vxlan_tunnel(tunnel.network().into());
        blocks.push(Block::new(block.parse().unwrap(), n.parse().unwrap()));
        if n == me {
            local = Some(node);
        } else {
            remotes.push(node);
        }
    }
    let uplink =
        Uplink::new("eth0".parse().unwrap(), 1500).with_gateway("198.51.100.1".parse().unwrap());
    let mut input = Input::new(local.unwrap(), uplink);
    input.remotes = remotes;
    input.blocks = blocks;
    input.pools = vec![
        Pool::new("p", "172.16.0.0/16".parse().unwrap())
            .ipip(ipip)
            .vxlan(vxlan),
    ];
    decide(&input).unwrap().route_specs(RouteProtocol::CALICO)
}

/// Applies specs the way an agent would: links, routes, VTEP entries, then
/// removals. The memory backend stands in for the kernel's links.
async fn apply(rec: &mut Reconciler<MemoryBackend>, s: &RouteSpecs) {
    for l in &s.links {
        rec.backend_mut().add_link(l.name.as_str(), l.up);
    }
    let routes = rec.reconcile_routes(&s.routes).await.unwrap();
    assert!(
        routes.converged(),
        "{:?} {:?}",
        routes.pending,
        routes.failures
    );
    let vxlan: BTreeSet<_> = s
        .links
        .iter()
        .filter(|l| matches!(l.kind, LinkKind::Vxlan(_)))
        .map(|l| l.name.clone())
        .collect();
    let (n, f) = rec
        .reconcile_neighbours(&s.neighbours, &s.fdb, &vxlan)
        .await
        .unwrap();
    assert!(n.converged() && f.converged());
    for q in &s.quiesce_links {
        if rec.backend().links.contains_key(q.name.as_str()) {
            rec.backend_mut().set_link_up(q.name.as_str(), false);
        }
    }
    for name in &s.remove_links {
        rec.backend_mut().remove_link(name.as_str());
    }
}

fn state(b: &MemoryBackend) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    (
        b.routes.iter().map(ToString::to_string).collect(),
        b.neighbours.iter().map(|n| n.spec.to_string()).collect(),
        b.fdb.iter().map(|f| f.spec.to_string()).collect(),
    )
}

#[test]
fn every_mode_switch_converges_to_the_new_mode_only() {
    let modes = [
        (Always, Never),
        (CrossSubnet, Never),
        (Never, Never),
        (Never, Always),
        (Never, CrossSubnet),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut switches = 0;
    for from in modes {
        for to in modes {
            let label = format!(
                "ipip {} vxlan {} -> ipip {} vxlan {}",
                from.0, from.1, to.0, to.1
            );
            let mut kernel = MemoryBackend::new();
            kernel.add_link("eth0", true);
            let mut rec = Reconciler::new(kernel, Ownership::default());
            let (old, new) = (specs("k8s-w1", from.0, from.1), specs("k8s-w1", to.0, to.1));
            rt.block_on(apply(&mut rec, &old));
            rt.block_on(apply(&mut rec, &new));

            let (routes, neigh, fdb) = state(rec.backend());
            let want: BTreeSet<String> = new.routes.iter().map(ToString::to_string).collect();
            assert_eq!(routes, want, "{label}");
            let want: BTreeSet<String> = new.neighbours.iter().map(ToString::to_string).collect();
            assert_eq!(neigh, want, "{label}");
            let want: BTreeSet<String> = new.fdb.iter().map(ToString::to_string).collect();
            assert_eq!(fdb, want, "{label}");
            for name in &new.remove_links {
                assert!(
                    !rec.backend().links.contains_key(name.as_str()),
                    "{label}: {name} left"
                );
            }
            if to.0 == Never
                && let Some(tunl0) = rec.backend().links.get("tunl0")
            {
                assert!(!tunl0.up, "{label}: tunl0 left up");
            }
            // Converged: the same mode again writes nothing.
            let before = rec.backend().log.len();
            rt.block_on(apply(&mut rec, &new));
            assert_eq!(
                rec.backend().log.len(),
                before,
                "{label}: {:?}",
                &rec.backend().log[before..]
            );
            switches += 1;
        }
    }
    assert_eq!(switches, 25);
}
