//! Allocate from one pool on two nodes (in an SQLite file) and print what
//! `calicoctl ipam show --show-blocks`, `--show-borrowed` and
//! `--show-configuration` would show, then `ipam check`.
//!
//! Run: `cargo run -p calinet-ipam --example ipam_show`

use std::time::SystemTime;

use calinet_ipam::{AutoAssignRequest, IpPool, IpPoolSpec, Ipam, SqliteStore, report};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let ipam = Ipam::new(SqliteStore::open(dir.path().join("ipam.db"))?);
    let mut spec = IpPoolSpec::with_cidr("172.16.0.0/16".parse()?);
    spec.block_size = Some(24);
    ipam.put_pool(&IpPool::new("default-ipv4-ippool", spec))?;
    let now = SystemTime::now();
    for (node, pods) in [("node-a", 3), ("node-b", 2)] {
        for i in 0..pods {
            let handle = format!("k8s-pod-network.{node}-pod{i}").parse()?;
            let got = ipam.auto_assign(&AutoAssignRequest::v4(handle, node.parse()?, 1), now)?;
            println!("{node} pod{i}: {}", got.v4[0].net());
        }
    }
    let show = report::show(ipam.store())?;
    print!("{}", show.render(true));
    print!("{}", show.render_borrowed());
    print!("{}", show.render_configuration());
    let check = report::check(ipam.store(), None)?;
    println!(
        "ipam check: consistent={} clean={} addresses in use={}",
        check.is_consistent(),
        check.is_clean(),
        check.addresses_in_use
    );
    Ok(())
}
