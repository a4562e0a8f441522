//! Applying 1,000 peers to a wireguard-go device through calinet-wg's UAPI
//! backend vs `wg setconf` of the same config, in the same run; and a
//! one-peer change (one control operation carrying only that peer) vs
//! re-running `wg setconf` with the whole changed config.
//!
//! Needs root and wireguard-go (prints SKIPPED otherwise).
//! Run: `cargo bench -p calinet-wg --bench apply`

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use calinet_wg::backend::uapi::UapiBackend;
use calinet_wg::backend::{Backend, sync};
use calinet_wg::{
    DeviceConfig, DeviceDelta, IfName, PeerConfig, PrivateKey, PublicKey, render_showconf,
};

const PEERS: u32 = 1000;
const ROUNDS: usize = 7;

fn config(private: &PrivateKey, extra_on: Option<u32>) -> DeviceConfig {
    let peers = (0..PEERS)
        .map(|i| {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&(i + 1).to_be_bytes());
            key[31] = 0x42;
            let mut allowed_ips = vec![IpAddr::V4(Ipv4Addr::from(0xac10_0000 + i)).into()];
            if extra_on == Some(i) {
                allowed_ips.push("172.17.0.9/32".parse().expect("valid"));
            }
            PeerConfig {
                public_key: PublicKey::from_bytes(key),
                preshared_key: None,
                endpoint: Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(198, 51, 100, (i % 250) as u8 + 1)),
                    51820,
                )),
                allowed_ips,
                persistent_keepalive: None,
            }
        })
        .collect();
    DeviceConfig {
        private_key: Some(private.clone()),
        listen_port: 51820,
        fwmark: 0x100000,
        peers,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn write_conf(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::io::Write;
    let p = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&p)
        .expect("write config");
    f.write_all(text.as_bytes()).expect("write config");
    p
}

fn reset(backend: &mut UapiBackend, dev: &IfName) {
    let observed = backend.read(dev).expect("read device");
    let delta = DeviceDelta {
        peers: observed
            .peers
            .iter()
            .map(|p| calinet_wg::PeerUpdate::remove(p.public_key))
            .collect(),
        ..Default::default()
    };
    backend.apply(dev, &delta).expect("empty the device");
}

fn main() {
    if !testlab::skip::is_root() || !testlab::Feature::WireguardGo.available() {
        eprintln!("SKIPPED: needs root and wireguard-go");
        return;
    }
    let lab = testlab::Lab::new("wg_bench").expect("lab");
    let ns_a = lab.netns("a").expect("netns");
    let ns_b = lab.netns("b").expect("netns");
    let dev_a = format!("{}ba", lab.prefix());
    let dev_b = format!("{}bb", lab.prefix());
    let _wa = lab.wireguard_go(&ns_a, &dev_a).expect("wireguard-go");
    let _wb = lab.wireguard_go(&ns_b, &dev_b).expect("wireguard-go");
    let ifa: IfName = dev_a.parse().expect("ifname");
    let ifb: IfName = dev_b.parse().expect("ifname");
    let dir = tempfile::tempdir().expect("tempdir");
    let private = PrivateKey::generate().expect("key");
    let full = config(&private, None);
    let changed = config(&private, Some(500));
    let full_conf = write_conf(dir.path(), "full.conf", &render_showconf(&full));
    let changed_conf = write_conf(dir.path(), "changed.conf", &render_showconf(&changed));
    let empty_conf = write_conf(dir.path(), "empty.conf", "[Interface]\n");
    let mut backend = UapiBackend::new();
    let (mut ours, mut theirs, mut ours_one, mut theirs_one) = (vec![], vec![], vec![], vec![]);
    let mut one_report = None;
    for _ in 0..ROUNDS {
        reset(&mut backend, &ifa);
        let t = Instant::now();
        let (_, report) = sync(&mut backend, &ifa, &full).expect("sync 1000 peers");
        ours.push(t.elapsed());
        assert_eq!(
            (report.operations, report.peer_entries),
            (1, PEERS as usize)
        );

        let t = Instant::now();
        let (_, report) = sync(&mut backend, &ifa, &changed).expect("sync one change");
        ours_one.push(t.elapsed());
        assert_eq!((report.operations, report.peer_entries), (1, 1));
        one_report = Some(report);

        ns_b.run(&["wg", "setconf", &dev_b, empty_conf.to_str().expect("path")])
            .expect("reset b");
        let t = Instant::now();
        ns_b.run(&["wg", "setconf", &dev_b, full_conf.to_str().expect("path")])
            .expect("wg setconf");
        theirs.push(t.elapsed());
        let t = Instant::now();
        ns_b.run(&[
            "wg",
            "setconf",
            &dev_b,
            changed_conf.to_str().expect("path"),
        ])
        .expect("wg setconf");
        theirs_one.push(t.elapsed());
    }
    // Both devices ended in the same state.
    let a = backend.read(&ifa).expect("read a");
    let b = backend.read(&ifb).expect("read b");
    assert_eq!(a.peers.len(), b.peers.len());
    let (o, w, o1, w1) = (
        median(ours),
        median(theirs),
        median(ours_one),
        median(theirs_one),
    );
    let r = one_report.expect("ran");
    println!(
        "calinet-wg apply ({ROUNDS} rounds, medians, wireguard-go, {PEERS} peers, one /32 each)"
    );
    println!(
        "  full: calinet-wg UAPI sync (read + plan + 1 set) {:>9.2?}   wg setconf {:>9.2?}   ratio {:.2}x",
        o,
        w,
        w.as_secs_f64() / o.as_secs_f64()
    );
    println!(
        "  one-peer change: calinet-wg {:>9.2?} ({} operation, {} peer entry, {} bytes)   wg setconf (whole config) {:>9.2?}   ratio {:.2}x",
        o1,
        r.operations,
        r.peer_entries,
        r.bytes,
        w1,
        w1.as_secs_f64() / o1.as_secs_f64()
    );
}
