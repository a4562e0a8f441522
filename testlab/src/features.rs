//! Kernel and tool feature probes, run once per process in a scratch namespace.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::cmd;

/// Something a test may need that this machine might not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// The kernel's IPIP tunnel driver (`tunl0`).
    Ipip,
    /// The kernel's VXLAN driver.
    Vxlan,
    /// The kernel's WireGuard module.
    KernelWireguard,
    /// nftables (kernel support and the `nft` command).
    Nftables,
    /// The userspace `wireguard-go` and a TUN device, plus `wg`.
    WireguardGo,
    /// An `etcd` server binary (and `etcdctl`).
    Etcd,
    /// `tcpdump` for packet captures.
    Tcpdump,
}

impl Feature {
    /// Every feature, for reports.
    pub const ALL: [Feature; 7] = [
        Feature::Ipip,
        Feature::Vxlan,
        Feature::KernelWireguard,
        Feature::Nftables,
        Feature::WireguardGo,
        Feature::Etcd,
        Feature::Tcpdump,
    ];

    /// `Ok(())` when available, else the reason it is not (as a skip message).
    pub fn check(self) -> Result<(), String> {
        static PROBED: OnceLock<HashMap<Feature, Result<(), String>>> = OnceLock::new();
        PROBED
            .get_or_init(probe_all)
            .get(&self)
            .cloned()
            .unwrap_or_else(|| Err(format!("{self:?} was not probed")))
    }

    /// Whether the feature is available.
    pub fn available(self) -> bool {
        self.check().is_ok()
    }
}

fn probe_all() -> HashMap<Feature, Result<(), String>> {
    let mut results = HashMap::new();
    for tool in [
        (Feature::WireguardGo, &["wireguard-go", "wg"][..]),
        (Feature::Etcd, &["etcd", "etcdctl"][..]),
        (Feature::Tcpdump, &["tcpdump"][..]),
    ] {
        let missing: Vec<&str> = tool.1.iter().copied().filter(|p| !cmd::have(p)).collect();
        let result = if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{} not installed", missing.join(", ")))
        };
        results.insert(tool.0, result);
    }
    if results[&Feature::WireguardGo].is_ok() && !std::path::Path::new("/dev/net/tun").exists() {
        results.insert(
            Feature::WireguardGo,
            Err("wireguard-go needs /dev/net/tun, absent here".into()),
        );
    }
    let kernel = probe_kernel();
    results.extend(kernel);
    results
}

/// Creates each kind of device in a throwaway namespace: the only reliable
/// test, since modules may be built in, loadable, or absent.
fn probe_kernel() -> Vec<(Feature, Result<(), String>)> {
    let kernel_features = [
        Feature::Ipip,
        Feature::Vxlan,
        Feature::KernelWireguard,
        Feature::Nftables,
    ];
    if !crate::skip::is_root() {
        return kernel_features
            .iter()
            .map(|f| (*f, Err(format!("{f:?} cannot be probed without root"))))
            .collect();
    }
    let ns = format!("clprobe{}", std::process::id());
    if let Err(e) = cmd::run("ip", &["netns", "add", &ns]) {
        return kernel_features
            .iter()
            .map(|f| (*f, Err(format!("cannot create a probe namespace: {e}"))))
            .collect();
    }
    let try_in = |args: &[&str]| -> Result<(), String> {
        let mut full = vec!["-n", ns.as_str()];
        full.extend_from_slice(args);
        cmd::run("ip", &full).map(|_| ()).map_err(|e| e.to_string())
    };
    let mut results = vec![
        (
            Feature::Ipip,
            try_in(&[
                "link",
                "add",
                "probe0",
                "type",
                "ipip",
                "remote",
                "192.0.2.1",
            ])
            .map_err(|e| format!("IPIP not available in this kernel ({e})")),
        ),
        (
            Feature::Vxlan,
            try_in(&[
                "link", "add", "probe1", "type", "vxlan", "id", "42", "dstport", "4789",
            ])
            .map_err(|e| format!("VXLAN not available in this kernel ({e})")),
        ),
        (
            Feature::KernelWireguard,
            try_in(&["link", "add", "probe2", "type", "wireguard"])
                .map_err(|e| format!("kernel WireGuard not available in this kernel ({e})")),
        ),
    ];
    let nft = if cmd::have("nft") {
        cmd::run(
            "ip",
            &["netns", "exec", &ns, "nft", "add", "table", "inet", "probe"],
        )
        .map(|_| ())
        .map_err(|e| format!("nftables not available in this kernel ({e})"))
    } else {
        Err("nft not installed".to_owned())
    };
    results.push((Feature::Nftables, nft));
    let _ = cmd::run("ip", &["netns", "del", &ns]);
    results
}
