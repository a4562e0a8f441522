//! WireGuard between nodes (FelixConfiguration `wireguardEnabled`): the node's
//! key (0600 file, public key published on its Node), a userspace
//! `wireguard-go` device (this kernel has no WireGuard module), peers computed
//! by calinet-wg from every node's key, address, blocks and tunnel addresses
//! and applied as a delta over the UAPI socket, the device's address from
//! IPAM, the device's routing table 1 (through the route
//! reconciler) and the `not fwmark 0x100000 lookup 1` rule, added only once the
//! device and its routes exist.

use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calinet_route::{RouteProtocol, RouteSpec};
use calinet_wg::backend::uapi::UapiBackend;
use calinet_wg::{Computed, DeviceSettings, NodeState, PrivateKey, PublicKey};

use crate::datastore::ClusterView;
use crate::error::{Error, Result};
use crate::resources::NodeExt as _;

/// WireGuard settings of the agent.
#[derive(Debug, Clone)]
pub struct WgOptions {
    /// Device name (Calico: `wireguard.cali`; the userspace control socket is
    /// in `/var/run/wireguard`, so nodes sharing a machine need distinct names
    /// or mount namespaces of their own).
    pub ifname: String,
    /// The private key file (created 0600 when missing).
    pub key_file: PathBuf,
}

/// Calico's device settings with the configured name.
pub fn settings(opts: &WgOptions) -> Result<DeviceSettings> {
    let mut s = DeviceSettings::calico_v4();
    s.ifname = opts.ifname.parse()?;
    Ok(s)
}

/// Every node as calinet-wg sees it. Pure.
pub fn node_states(view: &ClusterView) -> Vec<NodeState> {
    view.nodes
        .iter()
        .filter_map(|(name, (n, _))| {
            let mut s = NodeState::new(name.parse().ok()?);
            s.public_key = n
                .status
                .wireguard_public_key
                .as_deref()
                .and_then(|k| PublicKey::from_base64(k).ok());
            s.endpoint = n.ipv4().map(|a| IpAddr::V4(a.addr()));
            let aff = format!("host:{name}");
            for (b, _) in &view.ipam.blocks {
                if b.affinity() == Some(aff.as_str()) {
                    s.blocks.push(b.cidr().net());
                }
                for (o, a) in b.allocations() {
                    let user = a.secondary.as_ref().and_then(|x| x.get("node"));
                    if user == Some(name) && b.affinity() != Some(aff.as_str()) {
                        s.borrowed.push(b.addr(o));
                    }
                }
            }
            // The peer's tunnel addresses, as `wg showconf` shows in Calico.
            let wg_addr = n
                .spec
                .wireguard
                .as_ref()
                .and_then(|w| w.interface_ipv4_address);
            for t in [
                wg_addr,
                n.spec.ipip_tunnel_addr(),
                n.spec.ipv4_vxlan_tunnel_addr,
            ]
            .into_iter()
            .flatten()
            {
                s.tunnel_addresses.push(IpAddr::V4(t));
            }
            Some(s)
        })
        .collect()
}

/// The desired device and its table-1 routes (protocol 80, so the route
/// reconciler owns them). Pure.
pub fn compute(
    view: &ClusterView,
    node: &str,
    key: &PrivateKey,
    settings: &DeviceSettings,
) -> Result<(Computed, Vec<RouteSpec>)> {
    let local = node.parse()?;
    let computed = calinet_wg::compute_device(
        &local,
        key,
        settings,
        &node_states(view),
        &Default::default(),
    );
    let routes = calinet_wg::routing::route_specs(settings, &computed)
        .into_iter()
        .map(|r| r.protocol(RouteProtocol::CALICO))
        .collect();
    Ok((computed, routes))
}

/// The WireGuard edge: key, `wireguard-go` process, UAPI, fwmark rule.
#[derive(Debug)]
pub struct WgPlane {
    opts: WgOptions,
    key: Option<PrivateKey>,
    child: Option<Child>,
    uapi: UapiBackend,
}

impl WgPlane {
    /// A plane that does nothing until WireGuard is enabled.
    pub fn new(opts: WgOptions) -> Self {
        WgPlane {
            opts,
            key: None,
            child: None,
            uapi: UapiBackend::new(),
        }
    }

    /// The options.
    pub fn options(&self) -> &WgOptions {
        &self.opts
    }

    /// The node's key, loaded or generated (0600) on first use.
    pub fn key(&mut self) -> Result<&PrivateKey> {
        if self.key.is_none() {
            if let Some(dir) = self.opts.key_file.parent() {
                std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                    what: "create the key directory",
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            let (k, origin) = calinet_wg::key::load_or_generate(&self.opts.key_file)?;
            tracing::info!(file = %self.opts.key_file.display(), ?origin,
                public_key = %k.public_key().to_base64(), "WireGuard key ready");
            self.key = Some(k);
        }
        Ok(self.key.as_ref().expect("just set"))
    }

    /// Makes sure the device exists (starting `wireguard-go` when it does
    /// not) and returns whether it had to be created.
    pub fn ensure_device(&mut self, link_exists: bool) -> Result<bool> {
        let sock = self.uapi.socket_path(&self.opts.ifname.parse()?);
        if link_exists && sock.exists() {
            return Ok(false);
        }
        let child = Command::new("wireguard-go")
            .args(["-f", &self.opts.ifname])
            .env("LOG_LEVEL", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: it keeps running across agent restarts, like a
            // kernel device would.
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Io {
                what: "start wireguard-go for",
                path: self.opts.ifname.clone().into(),
                source,
            })?;
        tracing::info!(ifname = %self.opts.ifname, pid = child.id(), "started wireguard-go");
        self.child = Some(child);
        let t0 = Instant::now();
        while !sock.exists() {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(Error::Usage(format!(
                    "wireguard-go did not create {} within 10 s",
                    sock.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(true)
    }

    /// Applies the peers as a delta; returns the UAPI operations sent.
    pub fn sync(&mut self, computed: &Computed) -> Result<u64> {
        let ifname = self.opts.ifname.parse()?;
        let (delta, report) = calinet_wg::backend::sync(&mut self.uapi, &ifname, &computed.device)?;
        if !delta.is_empty() {
            tracing::info!(
                peers = computed.device.peers.len(),
                operations = report.operations,
                "WireGuard peers updated"
            );
        }
        Ok(report.operations as u64)
    }

    /// Adds (`want`) or removes the fwmark rule; returns whether it wrote.
    pub fn rule(&mut self, settings: &DeviceSettings, want: bool) -> Result<bool> {
        let rule = calinet_wg::routing::rule_spec(settings);
        let netns = calinet_route::Netns::current().map_err(calinet_route::Error::from)?;
        // The reconciler owns every protocol-80 rule here; the agent has no
        // other, so the desired set is this rule or nothing.
        let desired = if want { vec![rule.clone()] } else { Vec::new() };
        let wrote =
            calinet_route::reconcile_rules(&netns, &desired, RouteProtocol::CALICO)?.writes > 0;
        if wrote {
            tracing::info!(%rule, added = want, "WireGuard routing rule");
        }
        Ok(wrote)
    }

    /// Forgets the child (the device is being removed with it).
    pub fn stopped(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{apply, read_view};
    use crate::resources::parse_documents;
    use calinet_ipam::{AutoAssignRequest, Ipam, MemStore};

    #[test]
    fn peers_come_from_published_keys_and_blocks() {
        let store = MemStore::new();
        let key_b = PrivateKey::generate().unwrap();
        let text = format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: p}}\nspec: {{cidr: 172.16.0.0/16, blockSize: 24}}\n\
---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: a}}\nspec: {{bgp: {{ipv4Address: 198.51.100.10/24}}}}\n\
---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: b}}\nspec: {{bgp: {{ipv4Address: 198.51.100.11/24}}}}\nstatus: {{wireguardPublicKey: {}}}\n\
---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: c}}\nspec: {{bgp: {{ipv4Address: 203.0.113.12/24}}}}\n",
            key_b.public_key().to_base64()
        );
        apply(&store, &parse_documents("t", &text).unwrap()).unwrap();
        let ipam = Ipam::new(&store);
        let now = std::time::SystemTime::UNIX_EPOCH;
        for n in ["a", "b", "c"] {
            let req =
                AutoAssignRequest::v4(format!("h-{n}").parse().unwrap(), n.parse().unwrap(), 1);
            ipam.auto_assign(&req, now).unwrap();
        }
        let view = read_view(&store).unwrap();
        let key_a = PrivateKey::generate().unwrap();
        let s = DeviceSettings::calico_v4();
        let (computed, routes) = compute(&view, "a", &key_a, &s).unwrap();
        // b published a key: one peer; c did not: it falls back (throw route).
        assert_eq!(computed.device.peers.len(), 1);
        let peer = &computed.device.peers[0];
        assert_eq!(peer.public_key, key_b.public_key());
        assert_eq!(peer.endpoint, Some("198.51.100.11:51820".parse().unwrap()));
        assert_eq!(peer.allowed_ips.len(), 1);
        let text: Vec<String> = routes.iter().map(ToString::to_string).collect();
        assert_eq!(
            text.iter().filter(|r| r.starts_with("throw")).count(),
            2,
            "{text:?}"
        );
        assert!(
            routes
                .iter()
                .all(|r| r.protocol == RouteProtocol::CALICO && r.table == 1)
        );
    }

    #[test]
    fn a_peers_allowed_ips_carry_its_tunnel_addresses() {
        let store = MemStore::new();
        let key_b = PrivateKey::generate().unwrap();
        // The seed's shape: block, then the node's tunnel addresses as /32s.
        let text = format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: p}}\nspec: {{cidr: 172.16.0.0/16, blockSize: 24}}\n\
---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: a}}\nspec: {{bgp: {{ipv4Address: 198.51.100.10/24}}}}\n\
---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: b}}\nspec:\n  bgp: {{ipv4Address: 198.51.100.11/24, ipv4IPIPTunnelAddr: 172.16.9.9}}\n  wireguard: {{interfaceIPv4Address: 172.16.9.7}}\nstatus: {{wireguardPublicKey: {}}}\n",
            key_b.public_key().to_base64()
        );
        apply(&store, &parse_documents("t", &text).unwrap()).unwrap();
        let ipam = Ipam::new(&store);
        let now = std::time::SystemTime::UNIX_EPOCH;
        let req = AutoAssignRequest::v4("h-b".parse().unwrap(), "b".parse().unwrap(), 1);
        let block = ipam.auto_assign(&req, now).unwrap().v4[0].block;
        let view = read_view(&store).unwrap();
        let (computed, _) = compute(
            &view,
            "a",
            &PrivateKey::generate().unwrap(),
            &DeviceSettings::calico_v4(),
        )
        .unwrap();
        let allowed: Vec<String> = computed.device.peers[0]
            .allowed_ips
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            allowed,
            [
                block.to_string(),
                "172.16.9.7/32".to_owned(),
                "172.16.9.9/32".to_owned()
            ]
        );
    }
}
