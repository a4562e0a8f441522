//! Prints the BIRD configuration of node n1 in a three-node mesh.
use calinet_bgp::{Input, NodeBgpSpec, NodeInfo, Pool, plan, render};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut input = Input::new("n1");
    for (name, ip) in [
        ("n1", "198.51.100.10/24"),
        ("n2", "198.51.100.11/24"),
        ("n3", "198.51.100.12/24"),
    ] {
        input
            .nodes
            .push(NodeInfo::new(name, NodeBgpSpec::ipv4(ip.parse()?)));
    }
    input.pools.push(Pool::new("10.65.0.0/16".parse()?));
    input.blocks.push("10.65.1.0/26".parse()?);
    input.borrowed.push("10.65.2.7/32".parse()?);
    print!("{}", render(&plan(&input)?));
    Ok(())
}
