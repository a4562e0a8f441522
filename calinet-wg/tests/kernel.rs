//! The kernel backend against a real kernel WireGuard device. This machine's
//! kernel has no WireGuard module, so the test reports SKIPPED here; the
//! backend's messages are tested byte for byte in `src/backend/kernel.rs`.

use calinet_wg::backend::kernel::KernelBackend;
use calinet_wg::backend::sync;
use calinet_wg::{DeviceSettings, IfName, compute_device, normalized, seed};

#[test]
fn kernel_backend_programs_a_kernel_device() -> Result<(), Box<dyn std::error::Error>> {
    testlab::require!(testlab::Feature::KernelWireguard);
    let lab = testlab::Lab::new("wg_kernel")?;
    let ns = lab.netns("k")?;
    ns.ip(&["link", "add", "wgk0", "type", "wireguard"])?;
    let mut settings = DeviceSettings::calico_v4();
    settings.ifname = "wgk0".parse::<IfName>()?;
    let (mut nodes, key) = seed::nodes();
    // Thousands of allowed IPs on one peer: several netlink messages.
    for i in 0..3000u32 {
        nodes[1]
            .borrowed
            .push(std::net::Ipv4Addr::from(0xac1f_0000 + i).into());
    }
    let c = compute_device(&seed::local(), &key, &settings, &nodes, &Default::default());
    let ifname = settings.ifname.clone();
    let device = c.device.clone();
    let (report, observed) = ns.enter(move || -> calinet_wg::Result<_> {
        let mut backend = KernelBackend::new()?;
        let (_, report) = sync(&mut backend, &ifname, &device)?;
        let observed = calinet_wg::backend::Backend::read(&mut backend, &ifname)?;
        Ok((report, observed))
    })??;
    assert!(report.operations > 1, "{report:?}");
    let got = calinet_wg::DeviceConfig {
        private_key: c.device.private_key.clone(),
        listen_port: observed.listen_port,
        fwmark: observed.fwmark,
        peers: observed.peers,
    };
    assert_eq!(normalized(&got), normalized(&c.device));
    Ok(())
}
