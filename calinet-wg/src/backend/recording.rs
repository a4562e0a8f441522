//! An in-memory device that applies deltas with WireGuard's semantics and
//! records every operation, for unit tests without root.

use std::collections::BTreeMap;

use crate::backend::{ApplyReport, Backend};
use crate::delta::{DeviceDelta, MessageSizer, split};
use crate::error::{Error, Result};
use crate::model::{IfName, ObservedDevice, PeerConfig};

/// One recorded control operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Device.
    pub ifname: IfName,
    /// What was sent in this operation.
    pub delta: DeviceDelta,
}

/// In-memory devices plus a log of operations.
#[derive(Default)]
pub struct RecordingBackend {
    /// Devices by name.
    pub devices: BTreeMap<IfName, ObservedDevice>,
    /// Every operation in order.
    pub log: Vec<Recorded>,
    /// If set, deltas are split like a message-size-limited backend would.
    pub split: Option<(usize, Box<dyn MessageSizer + Send>)>,
}

impl std::fmt::Debug for RecordingBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingBackend")
            .field("devices", &self.devices)
            .field("log", &self.log.len())
            .field("split_budget", &self.split.as_ref().map(|(b, _)| *b))
            .finish()
    }
}

impl RecordingBackend {
    /// A backend with one empty device.
    pub fn with_device(ifname: &IfName) -> Self {
        let mut b = Self::default();
        b.devices.insert(ifname.clone(), ObservedDevice::default());
        b
    }

    /// Apply one message to `dev` as WireGuard does.
    fn apply_one(dev: &mut ObservedDevice, delta: &DeviceDelta) {
        if let Some(k) = &delta.private_key {
            dev.public_key = Some(k.public_key());
        }
        if let Some(p) = delta.listen_port {
            dev.listen_port = p;
        }
        if let Some(m) = delta.fwmark {
            dev.fwmark = m;
        }
        for u in &delta.peers {
            let pos = dev.peers.iter().position(|p| p.public_key == u.public_key);
            if u.remove {
                if let Some(i) = pos {
                    dev.peers.remove(i);
                }
                continue;
            }
            let i = match pos {
                Some(i) => i,
                None if u.update_only => continue,
                None => {
                    dev.peers.push(PeerConfig {
                        public_key: u.public_key,
                        preshared_key: None,
                        endpoint: None,
                        allowed_ips: Vec::new(),
                        persistent_keepalive: None,
                    });
                    dev.peers.len() - 1
                }
            };
            // An allowed IP belongs to one peer: adding it elsewhere moves it.
            for (j, other) in dev.peers.iter_mut().enumerate() {
                if j != i {
                    other.allowed_ips.retain(|n| !u.allowed_ips.contains(n));
                }
            }
            let peer = &mut dev.peers[i];
            if let Some(psk) = &u.preshared_key {
                peer.preshared_key = (!psk.is_zero()).then(|| psk.clone());
            }
            if let Some(ep) = u.endpoint {
                peer.endpoint = Some(ep);
            }
            if let Some(ka) = u.persistent_keepalive {
                peer.persistent_keepalive = (ka != 0).then_some(ka);
            }
            if u.replace_allowed_ips {
                peer.allowed_ips.clear();
            }
            for n in &u.allowed_ips {
                if !peer.allowed_ips.contains(n) {
                    peer.allowed_ips.push(*n);
                }
            }
        }
    }
}

impl Backend for RecordingBackend {
    fn read(&mut self, ifname: &IfName) -> Result<ObservedDevice> {
        self.devices
            .get(ifname)
            .cloned()
            .ok_or_else(|| Error::UapiErrno {
                ifname: ifname.to_string(),
                op: "get",
                errno: libc::ENODEV,
            })
    }

    fn apply(&mut self, ifname: &IfName, delta: &DeviceDelta) -> Result<ApplyReport> {
        if delta.is_empty() {
            return Ok(ApplyReport::default());
        }
        let parts = match &self.split {
            Some((budget, sizer)) => split(delta, *budget, sizer.as_ref())?,
            None => vec![delta.clone()],
        };
        let dev = self
            .devices
            .get_mut(ifname)
            .ok_or_else(|| Error::UapiErrno {
                ifname: ifname.to_string(),
                op: "set",
                errno: libc::ENODEV,
            })?;
        let mut report = ApplyReport::default();
        for part in parts {
            Self::apply_one(dev, &part);
            report += ApplyReport {
                operations: 1,
                peer_entries: part.peers.len(),
                allowed_ips: part.allowed_ip_count(),
                bytes: 0,
            };
            self.log.push(Recorded {
                ifname: ifname.clone(),
                delta: part,
            });
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kernel::NetlinkSizer;
    use crate::backend::sync;
    use crate::model::{DeviceConfig, DeviceSettings};
    use crate::peers::compute_device;
    use crate::seed;
    use crate::showconf::normalized;

    fn observed_as_config(o: &ObservedDevice, d: &DeviceConfig) -> DeviceConfig {
        DeviceConfig {
            private_key: d.private_key.clone(),
            listen_port: o.listen_port,
            fwmark: o.fwmark,
            peers: o.peers.clone(),
        }
    }

    /// A tiny tracing layer that keeps every event as `LEVEL field=value...`.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Fields(String);
            impl tracing::field::Visit for Fields {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0.push_str(&format!(" {}={v:?}", f.name()));
                }
            }
            let mut fields = Fields(event.metadata().level().to_string());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }

    /// Runs `f` with `Captured` as this thread's subscriber; returns the events.
    fn capture(f: impl FnOnce()) -> Vec<String> {
        use tracing_subscriber::layer::SubscriberExt;
        let cap = Captured::default();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(cap.clone()), f);
        cap.0.lock().unwrap().clone()
    }

    #[test]
    fn changed_peers_are_logged_without_keys() {
        let (nodes, key) = seed::nodes();
        let s = DeviceSettings::calico_v4();
        let want = compute_device(&seed::local(), &key, &s, &nodes, &Default::default()).device;
        let mut b = RecordingBackend::with_device(&s.ifname);
        let events = capture(|| {
            sync(&mut b, &s.ifname, &want).unwrap();
            // Converged: nothing changes, nothing is logged.
            sync(&mut b, &s.ifname, &want).unwrap();
        });
        assert_eq!(
            events,
            vec![
                "INFO message=WireGuard peers changed device=wireguard.cali \
                 added_or_changed=3 removed=0 device_fields=true"
                    .to_string()
            ]
        );
    }

    #[test]
    fn sync_converges_and_second_sync_is_free() {
        let (nodes, key) = seed::nodes();
        let s = DeviceSettings::calico_v4();
        let want = compute_device(&seed::local(), &key, &s, &nodes, &Default::default()).device;
        let mut b = RecordingBackend::with_device(&s.ifname);
        let (_, r) = sync(&mut b, &s.ifname, &want).unwrap();
        assert_eq!(r.operations, 1);
        assert_eq!(r.peer_entries, 3);
        let got = b.read(&s.ifname).unwrap();
        assert_eq!(
            normalized(&observed_as_config(&got, &want)),
            normalized(&want)
        );
        let (delta, r) = sync(&mut b, &s.ifname, &want).unwrap();
        assert!(delta.is_empty());
        assert_eq!(r.operations, 0);
    }

    #[test]
    fn one_node_change_is_one_operation_with_one_peer() {
        let (mut nodes, key) = seed::nodes();
        let s = DeviceSettings::calico_v4();
        let mut b = RecordingBackend::with_device(&s.ifname);
        let want = compute_device(&seed::local(), &key, &s, &nodes, &Default::default()).device;
        sync(&mut b, &s.ifname, &want).unwrap();
        nodes[2].borrowed.push("172.16.34.200".parse().unwrap());
        let want = compute_device(&seed::local(), &key, &s, &nodes, &Default::default()).device;
        let before = b.log.len();
        let (_, r) = sync(&mut b, &s.ifname, &want).unwrap();
        assert_eq!((r.operations, r.peer_entries), (1, 1));
        assert_eq!(b.log.len(), before + 1);
        assert_eq!(
            b.log[before].delta.peers[0].public_key,
            seed::W1_KEY.parse().unwrap()
        );
    }

    #[test]
    fn removing_a_node_removes_its_peer() {
        let (mut nodes, key) = seed::nodes();
        let s = DeviceSettings::calico_v4();
        let mut b = RecordingBackend::with_device(&s.ifname);
        let want = compute_device(&seed::local(), &key, &s, &nodes, &Default::default()).device;
        sync(&mut b, &s.ifname, &want).unwrap();
        nodes.remove(3);
        let want = compute_device(&seed::local(), &key, &s, &nodes, &Default::default()).device;
        sync(&mut b, &s.ifname, &want).unwrap();
        let got = b.read(&s.ifname).unwrap();
        assert_eq!(got.peers.len(), 2);
        assert!(
            got.peers
                .iter()
                .all(|p| p.public_key != seed::W2_KEY.parse().unwrap())
        );
    }

    #[test]
    fn peer_with_thousands_of_ips_through_a_split_backend() {
        let (mut nodes, key) = seed::nodes();
        for i in 0..4000u32 {
            nodes[1]
                .borrowed
                .push(std::net::IpAddr::from(std::net::Ipv4Addr::from(
                    0xac1f_0000 + i,
                )));
        }
        let s = DeviceSettings::calico_v4();
        let mut b = RecordingBackend::with_device(&s.ifname);
        b.split = Some((8192, Box::new(NetlinkSizer::new(&s.ifname))));
        let want = compute_device(&seed::local(), &key, &s, &nodes, &Default::default()).device;
        let (_, r) = sync(&mut b, &s.ifname, &want).unwrap();
        assert!(r.operations > 10, "{r:?}");
        let got = b.read(&s.ifname).unwrap();
        assert_eq!(
            normalized(&observed_as_config(&got, &want)),
            normalized(&want)
        );
        // Replacing that peer's set later: the first part replaces, the rest append.
        nodes[1].borrowed.truncate(3000);
        let want = compute_device(&seed::local(), &key, &s, &nodes, &Default::default()).device;
        sync(&mut b, &s.ifname, &want).unwrap();
        let got = b.read(&s.ifname).unwrap();
        assert_eq!(
            normalized(&observed_as_config(&got, &want)),
            normalized(&want)
        );
    }
}
