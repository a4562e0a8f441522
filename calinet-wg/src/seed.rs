//! The four nodes of the seed article (`wg showconf wireguard.cali` on
//! `k8s-m`), for examples and tests.
//!
//! The private key below was published in that article; it is sample data,
//! never to be used for a real device.

use crate::key::PrivateKey;
use crate::model::{NodeName, NodeState};

/// `k8s-m`'s private key as printed by `wg showconf` in the article.
pub const M_PRIVATE: &str = "yF8F44A8v5Spr9jX5YwRSCKktNkPvkoYbLd1nuG8i0M=";
/// `k8s-m`'s public key (`wireguardPublicKey`).
pub const M_KEY: &str = "nGJDPnehiHNMwf9Z25Q8hGN1PCTeCTefh1pNAEjiPC8=";
/// `k8s-w0`'s public key.
pub const W0_KEY: &str = "DwdcNTZ9CzJdaW5SxmvfrHNqDcHZgFTUqhf+srC/1yk=";
/// `k8s-w1`'s public key.
pub const W1_KEY: &str = "rWepcpPRToZHtb563t5AKAhIHT69rMgTOIuCE8o3AgE=";
/// `k8s-w2`'s public key.
pub const W2_KEY: &str = "XK6OS/pP/4/ntGg3WdPYTQP9SQLWNM884DlC/8OgK1s=";

fn node(name: &str, key: &str, ip: &str, block: &str, tunnels: &[&str]) -> NodeState {
    let parse_err = "seed data is valid";
    NodeState {
        name: name.parse().expect(parse_err),
        public_key: Some(key.parse().expect(parse_err)),
        endpoint: Some(ip.parse().expect(parse_err)),
        blocks: vec![block.parse().expect(parse_err)],
        borrowed: Vec::new(),
        tunnel_addresses: tunnels
            .iter()
            .map(|t| t.parse().expect(parse_err))
            .collect(),
    }
}

/// The nodes `k8s-m`, `k8s-w0`, `k8s-w1`, `k8s-w2` (in that order) and
/// `k8s-m`'s private key.
pub fn nodes() -> (Vec<NodeState>, PrivateKey) {
    let nodes = vec![
        node(
            "k8s-m",
            M_KEY,
            "192.168.10.10",
            "172.16.116.0/24",
            &["172.16.116.0", "172.16.116.2"],
        ),
        node(
            "k8s-w0",
            W0_KEY,
            "192.168.20.100",
            "172.16.34.0/24",
            &["172.16.34.2", "172.16.34.4"],
        ),
        node(
            "k8s-w1",
            W1_KEY,
            "192.168.10.101",
            "172.16.158.0/24",
            &["172.16.158.7", "172.16.158.9"],
        ),
        node(
            "k8s-w2",
            W2_KEY,
            "192.168.10.102",
            "172.16.184.0/24",
            &["172.16.184.1", "172.16.184.3"],
        ),
    ];
    let key = PrivateKey::from_base64(M_PRIVATE).expect("seed key is valid");
    (nodes, key)
}

/// The local node of the article.
pub fn local() -> NodeName {
    "k8s-m".parse().expect("valid")
}
