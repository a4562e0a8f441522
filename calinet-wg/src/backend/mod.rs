//! Backends that read and change a WireGuard device: the userspace control
//! socket ([`uapi`]), the kernel's generic netlink family ([`kernel`]), and an
//! in-memory [`recording::RecordingBackend`] for unit tests.

pub mod kernel;
pub mod recording;
pub mod uapi;

use crate::delta::{DeviceDelta, plan_delta};
use crate::error::Result;
use crate::model::{DeviceConfig, IfName, ObservedDevice};

/// What one `apply` cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyReport {
    /// Control operations (UAPI `set` round trips or netlink messages).
    pub operations: usize,
    /// Peer entries sent (a split peer counts once per message).
    pub peer_entries: usize,
    /// Allowed IPs sent.
    pub allowed_ips: usize,
    /// Bytes written to the socket.
    pub bytes: usize,
}

impl std::ops::AddAssign for ApplyReport {
    fn add_assign(&mut self, o: Self) {
        self.operations += o.operations;
        self.peer_entries += o.peer_entries;
        self.allowed_ips += o.allowed_ips;
        self.bytes += o.bytes;
    }
}

/// A way to read and change a WireGuard device.
pub trait Backend {
    /// Read the device's current state.
    fn read(&mut self, ifname: &IfName) -> Result<ObservedDevice>;
    /// Apply `delta`. An empty delta costs no operation.
    fn apply(&mut self, ifname: &IfName, delta: &DeviceDelta) -> Result<ApplyReport>;
}

/// Read the device, plan the delta to `desired`, apply it. Returns what was
/// sent and what it cost.
pub fn sync(
    backend: &mut dyn Backend,
    ifname: &IfName,
    desired: &DeviceConfig,
) -> Result<(DeviceDelta, ApplyReport)> {
    let observed = backend.read(ifname)?;
    let delta = plan_delta(desired, &observed);
    if delta.is_empty() {
        return Ok((delta, ApplyReport::default()));
    }
    let report = backend.apply(ifname, &delta)?;
    // Counts and the device only: keys (even public ones) stay out of logs.
    tracing::info!(
        device = %ifname,
        added_or_changed = delta.peers.iter().filter(|p| !p.remove).count(),
        removed = delta.peers.iter().filter(|p| p.remove).count(),
        device_fields = delta.has_device_fields(),
        "WireGuard peers changed"
    );
    Ok((delta, report))
}
