// The seed article's four nodes under each mode: prints every node's
// decisions and checks them against the article. Run with
// `cargo run -p calinet-encap --example seed_modes`; it is also the crate's doctest.

use calinet_encap::{Block, EncapMode, Input, Node, Pool, Uplink, decide};
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // (name, uplink address, gateway, block, tunnel address)
    let seed = [
        (
            "k8s-m",
            "192.168.10.10/24",
            "192.168.10.1",
            "172.16.116.0/24",
            "172.16.116.0",
        ),
        (
            "k8s-w1",
            "192.168.10.101/24",
            "192.168.10.1",
            "172.16.158.0/24",
            "172.16.158.0",
        ),
        (
            "k8s-w2",
            "192.168.10.102/24",
            "192.168.10.1",
            "172.16.184.0/24",
            "172.16.184.0",
        ),
        (
            "k8s-w0",
            "192.168.20.100/24",
            "192.168.20.1",
            "172.16.34.0/24",
            "172.16.34.0",
        ),
    ];
    let input_for = |me: &str,
                     ipip: EncapMode,
                     vxlan: EncapMode|
     -> Result<Input, Box<dyn std::error::Error>> {
        let mut nodes = Vec::new();
        let mut local = None;
        let mut input_blocks = Vec::new();
        for (name, addr, gw, block, tunnel) in seed {
            let node = Node::new(name.parse()?)
                .with_address(addr.parse()?)
                .with_ipip_tunnel(tunnel.parse()?)
                .with_vxlan_tunnel(tunnel.parse()?);
            input_blocks.push(Block::new(block.parse()?, name.parse()?));
            if name == me {
                local = Some((
                    node,
                    Uplink::new("ens5".parse()?, 9001).with_gateway(gw.parse()?),
                ));
            } else {
                nodes.push(node);
            }
        }
        let (local, uplink) = local.expect("me is one of the seed nodes");
        let mut input = Input::new(local, uplink);
        input.remotes = nodes;
        input.blocks = input_blocks;
        input.pools = vec![
            Pool::new("default-ipv4-ippool", "172.16.0.0/16".parse()?)
                .ipip(ipip)
                .vxlan(vxlan),
        ];
        Ok(input)
    };

    use EncapMode::{Always, CrossSubnet, Never};
    let modes = [
        ("IPIP Always (the article's start)", Always, Never),
        ("Never (direct)", Never, Never),
        ("IPIP CrossSubnet", CrossSubnet, Never),
        ("VXLAN Always", Never, Always),
        ("VXLAN CrossSubnet", Never, CrossSubnet),
    ];
    for (title, ipip, vxlan) in modes {
        println!("=== {title}: ipipMode {ipip}, vxlanMode {vxlan}");
        for (me, ..) in seed {
            print!("{}", decide(&input_for(me, ipip, vxlan)?)?);
        }
    }

    // k8s-m under IPIP Always: the routes of the article's `ip route`.
    let m = decide(&input_for("k8s-m", Always, Never)?)?;
    let routes: Vec<String> = m.paths.iter().map(ToString::to_string).collect();
    assert_eq!(
        routes,
        [
            "172.16.34.0/24 via 192.168.20.100 dev tunl0 onlink",
            "172.16.158.0/24 via 192.168.10.101 dev tunl0 onlink",
            "172.16.184.0/24 via 192.168.10.102 dev tunl0 onlink",
        ]
    );
    assert_eq!(m.blackholes, ["172.16.116.0/24".parse::<ipnet::IpNet>()?]);
    assert_eq!((m.mtu.ipip, m.mtu.pod), (Some(8981), 8981)); // tunl0 and cali* MTU 8981

    // k8s-w1 after `ipipMode: Never`: same subnet direct, k8s-w0 via the router,
    // as the article's `route -n` shows.
    let w1 = decide(&input_for("k8s-w1", Never, Never)?)?;
    assert_eq!(
        w1.path("172.16.116.0/24".parse()?).unwrap().to_string(),
        "172.16.116.0/24 via 192.168.10.10 dev ens5 onlink"
    );
    assert_eq!(
        w1.path("172.16.34.0/24".parse()?).unwrap().to_string(),
        "172.16.34.0/24 via 192.168.10.1 dev ens5"
    );
    assert!(w1.devices.is_empty());

    // CrossSubnet: only k8s-w0 is tunnelled.
    let w1 = decide(&input_for("k8s-w1", Never, CrossSubnet)?)?;
    assert_eq!(w1.path_counts(), (2, 0, 1)); // (direct, ipip, vxlan)
    assert_eq!(
        w1.path("172.16.34.0/24".parse()?).unwrap().to_string(),
        "172.16.34.0/24 via 172.16.34.0 dev vxlan.calico onlink"
    );
    assert_eq!(w1.mtu.pod, 9001 - 50);
    Ok(())
}
