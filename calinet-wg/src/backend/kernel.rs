//! Kernel WireGuard through generic netlink (`WG_CMD_GET_DEVICE` /
//! `WG_CMD_SET_DEVICE`, include/uapi/linux/wireguard.h).
//!
//! The messages are built and parsed here at the byte level (a few dozen lines
//! of TLV code) instead of through `wireguard-control` 2.0.0, whose kernel
//! backend pulls netlink-packet-core 0.7 / netlink-packet-route 0.21 next to
//! the workspace's 0.9 / 0.34 and has no update-only peer flag (it splits
//! large requests itself, but with its own fixed limit and no way to report
//! how many messages an apply took). The kernel of the build machines has no
//! WireGuard module, so this backend is tested on encoded bytes (also against
//! rust-netlink's independent `netlink-packet-wireguard` in
//! `tests/netlink_oracle.rs`); its live test reports SKIPPED there.
//!
//! Splitting: like `wg(8)`, a set request is cut into messages of at most a
//! byte budget (default 8192, libmnl's socket buffer size); a peer whose allowed
//! IPs do not fit continues in the next message as update-only and appending.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use ipnet::IpNet;

use crate::backend::{ApplyReport, Backend};
use crate::delta::{DeviceDelta, MessageSizer, PeerUpdate, split};
use crate::error::{Error, Result};
use crate::key::{KEY_LEN, PresharedKey, PrivateKey, PublicKey};
use crate::model::{IfName, ObservedDevice, PeerConfig};

/// Generic netlink family name of WireGuard.
pub const WG_GENL_NAME: &str = "wireguard";
const WG_GENL_VERSION: u8 = 1;
/// `WG_CMD_GET_DEVICE`.
pub const WG_CMD_GET_DEVICE: u8 = 0;
/// `WG_CMD_SET_DEVICE`.
pub const WG_CMD_SET_DEVICE: u8 = 1;

use calinet_netlink::consts::{
    CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME, CTRL_CMD_GETFAMILY, GENL_HDRLEN, GENL_ID_CTRL,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTI, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
};
use calinet_netlink::genl::genl_header as genl;
use calinet_netlink::{Protocol, Socket};

mod a {
    pub const DEV_IFNAME: u16 = 2;
    pub const DEV_PRIVATE_KEY: u16 = 3;
    pub const DEV_PUBLIC_KEY: u16 = 4;
    pub const DEV_LISTEN_PORT: u16 = 6;
    pub const DEV_FWMARK: u16 = 7;
    pub const DEV_PEERS: u16 = 8;
    pub const PEER_PUBLIC_KEY: u16 = 1;
    pub const PEER_PRESHARED_KEY: u16 = 2;
    pub const PEER_FLAGS: u16 = 3;
    pub const PEER_ENDPOINT: u16 = 4;
    pub const PEER_KEEPALIVE: u16 = 5;
    pub const PEER_ALLOWEDIPS: u16 = 9;
    pub const AIP_FAMILY: u16 = 1;
    pub const AIP_IPADDR: u16 = 2;
    pub const AIP_CIDR: u16 = 3;
    pub const PEER_F_REMOVE_ME: u32 = 1;
    pub const PEER_F_REPLACE_ALLOWEDIPS: u32 = 2;
    pub const PEER_F_UPDATE_ONLY: u32 = 4;
}

/// Default message budget in bytes.
pub const DEFAULT_BUDGET: usize = 8192;

fn sockaddr_len(ep: &SocketAddr) -> usize {
    match ep {
        SocketAddr::V4(_) => 16,
        SocketAddr::V6(_) => 28,
    }
}

/// Exact byte sizes of [`encode_set`]'s output, for [`split`].
#[derive(Debug, Clone)]
pub struct NetlinkSizer {
    ifname_len: usize,
}

impl NetlinkSizer {
    /// Sizes for messages addressed to `ifname`.
    pub fn new(ifname: &IfName) -> Self {
        Self {
            ifname_len: ifname.as_str().len(),
        }
    }
}

impl MessageSizer for NetlinkSizer {
    fn device(&self, d: &DeviceDelta) -> usize {
        NLMSG_HDRLEN
            + GENL_HDRLEN
            + nla(self.ifname_len + 1)
            + d.private_key.as_ref().map_or(0, |_| nla(KEY_LEN))
            + d.listen_port.map_or(0, |_| nla(2))
            + d.fwmark.map_or(0, |_| nla(4))
            + NLA_HDRLEN // the peers nest (counted even when empty: conservative)
    }
    fn peer(&self, p: &PeerUpdate) -> usize {
        NLA_HDRLEN
            + nla(KEY_LEN)
            + nla(4)
            + p.preshared_key.as_ref().map_or(0, |_| nla(KEY_LEN))
            + p.endpoint.as_ref().map_or(0, |e| nla(sockaddr_len(e)))
            + p.persistent_keepalive.map_or(0, |_| nla(2))
            + NLA_HDRLEN
    }
    fn allowed_ip(&self, net: &IpNet) -> usize {
        let addr = match net {
            IpNet::V4(_) => 4,
            IpNet::V6(_) => 16,
        };
        NLA_HDRLEN + nla(2) + nla(addr) + nla(1)
    }
}

pub use crate::nl::RawMessage;
use crate::nl::{Msg, NLA_HDRLEN, NLMSG_HDRLEN, ack_errno, malformed, nla};
pub use crate::nl::{attributes, messages};

fn sockaddr(ep: &SocketAddr) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    match ep {
        SocketAddr::V4(v4) => {
            b.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b.extend_from_slice(&v4.port().to_be_bytes());
            b.extend_from_slice(&v4.ip().octets());
            b.extend_from_slice(&[0; 8]);
        }
        SocketAddr::V6(v6) => {
            b.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b.extend_from_slice(&v6.port().to_be_bytes());
            b.extend_from_slice(&v6.flowinfo().to_be_bytes());
            b.extend_from_slice(&v6.ip().octets());
            b.extend_from_slice(&v6.scope_id().to_ne_bytes());
        }
    }
    b
}

fn encode_one(ifname: &IfName, family: u16, seq: u32, d: &DeviceDelta) -> Vec<u8> {
    let mut m = Msg::new(
        family,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        &genl(WG_CMD_SET_DEVICE, WG_GENL_VERSION),
    );
    let mut name = ifname.as_str().as_bytes().to_vec();
    name.push(0);
    m.attr(a::DEV_IFNAME, &name);
    if let Some(k) = &d.private_key {
        m.attr(a::DEV_PRIVATE_KEY, k.expose_bytes());
    }
    if let Some(p) = d.listen_port {
        m.attr(a::DEV_LISTEN_PORT, &p.to_ne_bytes());
    }
    if let Some(f) = d.fwmark {
        m.attr(a::DEV_FWMARK, &f.to_ne_bytes());
    }
    let peers = m.begin(a::DEV_PEERS);
    for (i, p) in d.peers.iter().enumerate() {
        let peer = m.begin(i as u16);
        m.attr(a::PEER_PUBLIC_KEY, p.public_key.as_bytes());
        let mut flags = 0;
        if p.remove {
            flags |= a::PEER_F_REMOVE_ME;
        }
        if p.update_only && !p.remove {
            flags |= a::PEER_F_UPDATE_ONLY;
        }
        if p.replace_allowed_ips && !p.remove {
            flags |= a::PEER_F_REPLACE_ALLOWEDIPS;
        }
        m.attr(a::PEER_FLAGS, &flags.to_ne_bytes());
        if !p.remove {
            if let Some(psk) = &p.preshared_key {
                m.attr(a::PEER_PRESHARED_KEY, psk.expose_bytes());
            }
            if let Some(ep) = &p.endpoint {
                m.attr(a::PEER_ENDPOINT, &sockaddr(ep));
            }
            if let Some(ka) = p.persistent_keepalive {
                m.attr(a::PEER_KEEPALIVE, &ka.to_ne_bytes());
            }
        }
        let ips = m.begin(a::PEER_ALLOWEDIPS);
        for (j, net) in p.allowed_ips.iter().enumerate() {
            let ip = m.begin(j as u16);
            let (fam, addr): (u16, Vec<u8>) = match net {
                IpNet::V4(n) => (libc::AF_INET as u16, n.addr().octets().to_vec()),
                IpNet::V6(n) => (libc::AF_INET6 as u16, n.addr().octets().to_vec()),
            };
            m.attr(a::AIP_FAMILY, &fam.to_ne_bytes());
            m.attr(a::AIP_IPADDR, &addr);
            m.attr(a::AIP_CIDR, &[net.prefix_len()]);
            m.end(ip);
        }
        m.end(ips);
        m.end(peer);
    }
    m.end(peers);
    m.finish()
}

/// Encode `delta` as `WG_CMD_SET_DEVICE` messages for `ifname`, none larger
/// than `budget` bytes. `family` is the resolved generic netlink family id;
/// sequence numbers start at `seq`. The buffers hold key material when the
/// delta does: zero them after sending.
pub fn encode_set(
    ifname: &IfName,
    family: u16,
    seq: u32,
    delta: &DeviceDelta,
    budget: usize,
) -> Result<Vec<Vec<u8>>> {
    let parts = split(delta, budget, &NetlinkSizer::new(ifname))?;
    Ok(parts
        .iter()
        .enumerate()
        .map(|(i, d)| encode_one(ifname, family, seq.wrapping_add(i as u32), d))
        .collect())
}

/// Encode a `WG_CMD_GET_DEVICE` dump request for `ifname`.
pub fn encode_get(ifname: &IfName, family: u16, seq: u32) -> Vec<u8> {
    let mut m = Msg::new(
        family,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        &genl(WG_CMD_GET_DEVICE, WG_GENL_VERSION),
    );
    let mut name = ifname.as_str().as_bytes().to_vec();
    name.push(0);
    m.attr(a::DEV_IFNAME, &name);
    m.finish()
}

/// Encode the controller request resolving the `wireguard` family id.
pub fn encode_get_family(seq: u32) -> Vec<u8> {
    let mut m = Msg::new(
        GENL_ID_CTRL,
        NLM_F_REQUEST,
        seq,
        &genl(CTRL_CMD_GETFAMILY, 1),
    );
    m.attr(CTRL_ATTR_FAMILY_NAME, b"wireguard\0");
    m.finish()
}

fn key_bytes(ifname: &str, b: &[u8]) -> Result<[u8; KEY_LEN]> {
    b.try_into()
        .map_err(|_| malformed(ifname, format!("key attribute of {} bytes", b.len())))
}

fn parse_sockaddr(ifname: &str, b: &[u8]) -> Result<SocketAddr> {
    let fam = b.get(0..2).map(|f| u16::from_ne_bytes([f[0], f[1]]));
    match (fam.map(i32::from), b.len()) {
        (Some(libc::AF_INET), 16..) => Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(b[4], b[5], b[6], b[7]),
            u16::from_be_bytes([b[2], b[3]]),
        ))),
        (Some(libc::AF_INET6), 28..) => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[8..24]);
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                u16::from_be_bytes([b[2], b[3]]),
                u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                u32::from_ne_bytes([b[24], b[25], b[26], b[27]]),
            )))
        }
        _ => Err(malformed(ifname, "endpoint is not a sockaddr_in/in6")),
    }
}

fn parse_allowed_ip(ifname: &str, b: &[u8]) -> Result<IpNet> {
    let (mut fam, mut addr, mut cidr) = (None, None, None);
    for (ty, p) in attributes(ifname, b)? {
        match ty {
            a::AIP_FAMILY if p.len() >= 2 => {
                fam = Some(i32::from(u16::from_ne_bytes([p[0], p[1]])))
            }
            a::AIP_IPADDR => addr = Some(p),
            a::AIP_CIDR if !p.is_empty() => cidr = Some(p[0]),
            _ => {}
        }
    }
    let ip: IpAddr = match (fam, addr) {
        (Some(libc::AF_INET), Some(p)) if p.len() == 4 => {
            Ipv4Addr::new(p[0], p[1], p[2], p[3]).into()
        }
        (Some(libc::AF_INET6), Some(p)) if p.len() == 16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(p);
            Ipv6Addr::from(o).into()
        }
        _ => return Err(malformed(ifname, "allowed IP without valid family/address")),
    };
    IpNet::new(ip, cidr.unwrap_or(0)).map_err(|_| malformed(ifname, "allowed IP prefix too long"))
}

/// A decoded `WG_CMD_SET_DEVICE` message (for tests and debugging tools).
pub fn decode_set(ifname: &str, msg: &RawMessage<'_>) -> Result<DeviceDelta> {
    let mut d = DeviceDelta::default();
    for (ty, p) in attributes(ifname, msg.payload.get(GENL_HDRLEN..).unwrap_or_default())? {
        match ty {
            a::DEV_PRIVATE_KEY => {
                d.private_key = Some(PrivateKey::from_bytes(key_bytes(ifname, p)?))
            }
            a::DEV_LISTEN_PORT if p.len() >= 2 => {
                d.listen_port = Some(u16::from_ne_bytes([p[0], p[1]]))
            }
            a::DEV_FWMARK if p.len() >= 4 => {
                d.fwmark = Some(u32::from_ne_bytes([p[0], p[1], p[2], p[3]]))
            }
            a::DEV_PEERS => {
                for (_, peer) in attributes(ifname, p)? {
                    let mut u = PeerUpdate::touch(PublicKey::from_bytes([0; 32]));
                    u.update_only = false;
                    for (ty, p) in attributes(ifname, peer)? {
                        match ty {
                            a::PEER_PUBLIC_KEY => {
                                u.public_key = PublicKey::from_bytes(key_bytes(ifname, p)?)
                            }
                            a::PEER_PRESHARED_KEY => {
                                u.preshared_key =
                                    Some(PresharedKey::from_bytes(key_bytes(ifname, p)?));
                            }
                            a::PEER_FLAGS if p.len() >= 4 => {
                                let f = u32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
                                u.remove = f & a::PEER_F_REMOVE_ME != 0;
                                u.update_only = f & a::PEER_F_UPDATE_ONLY != 0;
                                u.replace_allowed_ips = f & a::PEER_F_REPLACE_ALLOWEDIPS != 0;
                            }
                            a::PEER_ENDPOINT => u.endpoint = Some(parse_sockaddr(ifname, p)?),
                            a::PEER_KEEPALIVE if p.len() >= 2 => {
                                u.persistent_keepalive = Some(u16::from_ne_bytes([p[0], p[1]]));
                            }
                            a::PEER_ALLOWEDIPS => {
                                for (_, ip) in attributes(ifname, p)? {
                                    u.allowed_ips.push(parse_allowed_ip(ifname, ip)?);
                                }
                            }
                            _ => {}
                        }
                    }
                    d.peers.push(u);
                }
            }
            _ => {}
        }
    }
    Ok(d)
}

/// Parse the replies of a `WG_CMD_GET_DEVICE` dump. The kernel splits big
/// peers across messages; consecutive entries with one key are merged.
pub fn parse_get(ifname: &str, family: u16, buf: &[u8]) -> Result<(ObservedDevice, bool)> {
    let mut dev = ObservedDevice::default();
    let done = merge_get(ifname, family, buf, &mut dev)?;
    Ok((dev, done))
}

/// Parse one receive buffer of a `WG_CMD_GET_DEVICE` dump into `dev`
/// (device attributes set where present, peers appended or continued).
/// Returns whether the dump is complete.
pub fn merge_get(ifname: &str, family: u16, buf: &[u8], dev: &mut ObservedDevice) -> Result<bool> {
    let mut done = false;
    for msg in messages(ifname, buf)? {
        match msg.ty {
            NLMSG_DONE => done = true,
            NLMSG_ERROR => check_ack(ifname, "get device", &msg)?,
            t if t == family => {
                for (ty, p) in
                    attributes(ifname, msg.payload.get(GENL_HDRLEN..).unwrap_or_default())?
                {
                    match ty {
                        a::DEV_PUBLIC_KEY => {
                            dev.public_key = Some(PublicKey::from_bytes(key_bytes(ifname, p)?))
                        }
                        a::DEV_LISTEN_PORT if p.len() >= 2 => {
                            dev.listen_port = u16::from_ne_bytes([p[0], p[1]])
                        }
                        a::DEV_FWMARK if p.len() >= 4 => {
                            dev.fwmark = u32::from_ne_bytes([p[0], p[1], p[2], p[3]])
                        }
                        a::DEV_PEERS => {
                            for (_, peer) in attributes(ifname, p)? {
                                let mut cfg = PeerConfig {
                                    public_key: PublicKey::from_bytes([0; 32]),
                                    preshared_key: None,
                                    endpoint: None,
                                    allowed_ips: Vec::new(),
                                    persistent_keepalive: None,
                                };
                                for (ty, p) in attributes(ifname, peer)? {
                                    match ty {
                                        a::PEER_PUBLIC_KEY => {
                                            cfg.public_key =
                                                PublicKey::from_bytes(key_bytes(ifname, p)?)
                                        }
                                        a::PEER_PRESHARED_KEY => {
                                            let k = PresharedKey::from_bytes(key_bytes(ifname, p)?);
                                            cfg.preshared_key = (!k.is_zero()).then_some(k);
                                        }
                                        a::PEER_ENDPOINT => {
                                            cfg.endpoint = Some(parse_sockaddr(ifname, p)?)
                                        }
                                        a::PEER_KEEPALIVE if p.len() >= 2 => {
                                            let ka = u16::from_ne_bytes([p[0], p[1]]);
                                            cfg.persistent_keepalive = (ka != 0).then_some(ka);
                                        }
                                        a::PEER_ALLOWEDIPS => {
                                            for (_, ip) in attributes(ifname, p)? {
                                                cfg.allowed_ips.push(parse_allowed_ip(ifname, ip)?);
                                            }
                                        }
                                        _ => {}
                                    }
                                }
                                match dev.peers.last_mut() {
                                    Some(last) if last.public_key == cfg.public_key => {
                                        last.allowed_ips.extend(cfg.allowed_ips);
                                    }
                                    _ => dev.peers.push(cfg),
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if msg.flags & NLM_F_MULTI == 0 {
                    done = true;
                }
            }
            other => {
                return Err(malformed(
                    ifname,
                    format!("unexpected message type {other}"),
                ));
            }
        }
    }
    Ok(done)
}

fn check_ack(ifname: &str, op: &'static str, msg: &RawMessage<'_>) -> Result<()> {
    match ack_errno(ifname, msg)? {
        0 => Ok(()),
        errno => Err(Error::NetlinkErrno {
            ifname: ifname.to_owned(),
            op,
            errno,
        }),
    }
}

/// Parse the controller's reply to [`encode_get_family`].
pub fn parse_family(buf: &[u8]) -> Result<u16> {
    for msg in messages("-", buf)? {
        match msg.ty {
            NLMSG_ERROR => {
                return match check_ack("-", "resolve wireguard family", &msg) {
                    Err(Error::NetlinkErrno { errno, .. }) if errno == libc::ENOENT => {
                        Err(Error::KernelWireguardUnavailable)
                    }
                    Err(e) => Err(e),
                    Ok(()) => continue,
                };
            }
            GENL_ID_CTRL => {
                for (ty, p) in attributes("-", msg.payload.get(GENL_HDRLEN..).unwrap_or_default())?
                {
                    if ty == CTRL_ATTR_FAMILY_ID && p.len() >= 2 {
                        return Ok(u16::from_ne_bytes([p[0], p[1]]));
                    }
                }
            }
            _ => {}
        }
    }
    Err(malformed("-", "no family id in controller reply"))
}

/// Receive buffer: a generic netlink dump datagram is at most a few pages.
const RX_BYTES: usize = 256 * 1024;

/// The kernel backend: one generic netlink socket.
pub struct KernelBackend {
    socket: Socket,
    rx: Vec<u8>,
    family: u16,
    seq: u32,
    budget: usize,
}

impl std::fmt::Debug for KernelBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelBackend")
            .field("family", &self.family)
            .field("budget", &self.budget)
            .finish()
    }
}

impl KernelBackend {
    /// Open a socket and resolve the `wireguard` family. Fails with
    /// [`Error::KernelWireguardUnavailable`] when the module is absent.
    pub fn new() -> Result<Self> {
        let io = |op| {
            move |source| Error::NetlinkIo {
                ifname: "-".into(),
                op,
                source,
            }
        };
        let socket = Socket::open(Protocol::Generic).map_err(|e| match e {
            calinet_netlink::Error::Socket { source, .. } => {
                io("open generic netlink socket")(source)
            }
            other => io("open generic netlink socket")(std::io::Error::other(other.to_string())),
        })?;
        let mut rx = vec![0u8; RX_BYTES];
        socket
            .send(&encode_get_family(1))
            .map_err(io("send CTRL_CMD_GETFAMILY"))?;
        let n = socket.recv(&mut rx, true).map_err(io("receive family"))?;
        let family = parse_family(&rx[..n])?;
        Ok(Self {
            socket,
            rx,
            family,
            seq: 2,
            budget: DEFAULT_BUDGET,
        })
    }

    /// Change the message budget.
    pub fn with_budget(mut self, budget: usize) -> Self {
        self.budget = budget;
        self
    }
}

impl Backend for KernelBackend {
    fn read(&mut self, ifname: &IfName) -> Result<ObservedDevice> {
        let name = ifname.to_string();
        let io = |op| {
            let ifname = name.clone();
            move |source| Error::NetlinkIo { ifname, op, source }
        };
        self.seq = self.seq.wrapping_add(1);
        self.socket
            .send(&encode_get(ifname, self.family, self.seq))
            .map_err(io("send get device"))?;
        let mut all = ObservedDevice::default();
        loop {
            let n = self
                .socket
                .recv(&mut self.rx, true)
                .map_err(io("receive get device"))?;
            let done = merge_get(&name, self.family, &self.rx[..n], &mut all)?;
            if done {
                return Ok(all);
            }
        }
    }

    fn apply(&mut self, ifname: &IfName, delta: &DeviceDelta) -> Result<ApplyReport> {
        if delta.is_empty() {
            return Ok(ApplyReport::default());
        }
        let name = ifname.to_string();
        let io = |op| {
            let ifname = name.clone();
            move |source| Error::NetlinkIo { ifname, op, source }
        };
        let parts = split(delta, self.budget, &NetlinkSizer::new(ifname))?;
        let mut report = ApplyReport::default();
        for part in &parts {
            self.seq = self.seq.wrapping_add(1);
            let mut msg = zeroize::Zeroizing::new(encode_one(ifname, self.family, self.seq, part));
            self.socket.send(&msg).map_err(io("send set device"))?;
            let n = self
                .socket
                .recv(&mut self.rx, true)
                .map_err(io("receive set ack"))?;
            for m in messages(&name, &self.rx[..n])? {
                if m.ty == NLMSG_ERROR {
                    check_ack(&name, "set device", &m)?;
                }
            }
            report += ApplyReport {
                operations: 1,
                peer_entries: part.peers.len(),
                allowed_ips: part.allowed_ip_count(),
                bytes: msg.len(),
            };
            zeroize::Zeroize::zeroize(&mut *msg);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PeerConfig;

    fn ifname() -> IfName {
        "wg0".parse().unwrap()
    }

    /// One removal message, laid out by hand from include/uapi/linux/wireguard.h
    /// and netlink(7) (little-endian host):
    /// nlmsghdr(len, type=0x20, flags=REQUEST|ACK, seq=7, pid=0), genlmsghdr(cmd=1, ver=1),
    /// WGDEVICE_A_IFNAME "wg0\0", WGDEVICE_A_PEERS{ 0{ PUBLIC_KEY, FLAGS=REMOVE_ME, ALLOWEDIPS{} } }.
    #[test]
    #[cfg(target_endian = "little")]
    fn removal_message_bytes_match_the_uapi_layout() {
        let delta = DeviceDelta {
            peers: vec![PeerUpdate::remove(PublicKey::from_bytes([0xab; 32]))],
            ..Default::default()
        };
        let msgs = encode_set(&ifname(), 0x20, 7, &delta, DEFAULT_BUDGET).unwrap();
        assert_eq!(msgs.len(), 1);
        let mut want: Vec<u8> = vec![
            84, 0, 0, 0, 0x20, 0, 5, 0, 7, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr
            1, 1, 0, 0, // genl
            8, 0, 2, 0, b'w', b'g', b'0', 0, // IFNAME
            56, 0, 8, 0x80, // PEERS nested
            52, 0, 0, 0x80, // peer 0 nested
            36, 0, 1, 0, // PUBLIC_KEY
        ];
        want.extend_from_slice(&[0xab; 32]);
        want.extend_from_slice(&[8, 0, 3, 0, 1, 0, 0, 0]); // FLAGS = REMOVE_ME
        want.extend_from_slice(&[4, 0, 9, 0x80]); // empty ALLOWEDIPS nest
        assert_eq!(msgs[0], want);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn allowed_ip_and_endpoint_encoding() {
        let peer = PeerConfig {
            public_key: PublicKey::from_bytes([1; 32]),
            preshared_key: None,
            endpoint: Some("198.51.100.10:51820".parse().unwrap()),
            allowed_ips: vec!["172.16.158.0/24".parse().unwrap()],
            persistent_keepalive: None,
        };
        let delta = DeviceDelta {
            peers: vec![PeerUpdate::create(&peer)],
            ..Default::default()
        };
        let msg = &encode_set(&ifname(), 0x20, 1, &delta, DEFAULT_BUDGET).unwrap()[0];
        let endpoint = [
            20u8, 0, 4, 0, 2, 0, 0xca, 0x6c, 198, 51, 100, 10, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert!(
            msg.windows(endpoint.len()).any(|w| w == endpoint),
            "sockaddr_in with port in network order"
        );
        let aip = [
            28u8, 0, 0, 0x80, 6, 0, 1, 0, 2, 0, 0, 0, 8, 0, 2, 0, 172, 16, 158, 0, 5, 0, 3, 0, 24,
            0, 0, 0,
        ];
        assert!(msg.windows(aip.len()).any(|w| w == aip), "allowed IP nest");
        // FLAGS = REPLACE_ALLOWEDIPS for a new peer (no UPDATE_ONLY).
        assert!(msg.windows(8).any(|w| w == [8, 0, 3, 0, 2, 0, 0, 0]));
    }

    #[test]
    fn messages_decode_back_to_the_delta() {
        let peer = PeerConfig {
            public_key: PublicKey::from_bytes([1; 32]),
            preshared_key: Some(PresharedKey::from_bytes([2; 32])),
            endpoint: Some("[2001:db8::5]:51821".parse().unwrap()),
            allowed_ips: vec![
                "fd00:1::/64".parse().unwrap(),
                "10.0.0.1/32".parse().unwrap(),
            ],
            persistent_keepalive: Some(25),
        };
        let mut upd = PeerUpdate::touch(PublicKey::from_bytes([3; 32]));
        upd.endpoint = Some("192.0.2.3:51820".parse().unwrap());
        let delta = DeviceDelta {
            private_key: Some(PrivateKey::from_bytes([9; 32])),
            listen_port: Some(51820),
            fwmark: Some(0x100000),
            peers: vec![
                PeerUpdate::create(&peer),
                upd,
                PeerUpdate::remove(PublicKey::from_bytes([4; 32])),
            ],
        };
        let msgs = encode_set(&ifname(), 0x1b, 1, &delta, DEFAULT_BUDGET).unwrap();
        assert_eq!(msgs.len(), 1);
        let raw = messages("wg0", &msgs[0]).unwrap();
        assert_eq!(raw.len(), 1);
        assert_eq!(raw[0].ty, 0x1b);
        assert_eq!(decode_set("wg0", &raw[0]).unwrap(), delta);
        assert_eq!(
            msgs[0].len(),
            NetlinkSizer::new(&ifname()).device(&delta)
                + delta
                    .peers
                    .iter()
                    .map(|p| NetlinkSizer::new(&ifname()).peer(p)
                        + p.allowed_ips
                            .iter()
                            .map(|n| NetlinkSizer::new(&ifname()).allowed_ip(n))
                            .sum::<usize>())
                    .sum::<usize>()
        );
    }

    #[test]
    fn peer_with_thousands_of_ips_is_split_under_budget_and_reassembles() {
        let ips: Vec<IpNet> = (0..5000u32)
            .map(|i| IpNet::from(IpAddr::from(Ipv4Addr::from(0xac10_0000 + i))))
            .collect();
        let peer = PeerConfig {
            public_key: PublicKey::from_bytes([1; 32]),
            preshared_key: None,
            endpoint: Some("198.51.100.11:51820".parse().unwrap()),
            allowed_ips: ips.clone(),
            persistent_keepalive: None,
        };
        let delta = DeviceDelta {
            fwmark: Some(1),
            peers: vec![PeerUpdate::create(&peer)],
            ..Default::default()
        };
        let msgs = encode_set(&ifname(), 0x1b, 100, &delta, DEFAULT_BUDGET).unwrap();
        // 5000 * 28 bytes of allowed IPs need at least 18 messages of 8 KiB.
        assert!(msgs.len() >= 18, "{}", msgs.len());
        let mut got = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            assert!(m.len() <= DEFAULT_BUDGET, "message {i}: {} bytes", m.len());
            let raw = messages("wg0", m).unwrap();
            assert_eq!(raw[0].seq, 100 + i as u32);
            let d = decode_set("wg0", &raw[0]).unwrap();
            assert_eq!(d.fwmark.is_some(), i == 0);
            let p = &d.peers[0];
            if i == 0 {
                assert!(p.replace_allowed_ips && !p.update_only && p.endpoint.is_some());
            } else {
                assert!(!p.replace_allowed_ips && p.update_only && p.endpoint.is_none());
            }
            got.extend(p.allowed_ips.iter().copied());
        }
        assert_eq!(got, ips);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn family_and_get_replies_parse() {
        // NLMSG_ERROR with -ENOENT: what this kernel answers (no wireguard module).
        let mut err = vec![36u8, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        err.extend_from_slice(&encode_get_family(1)[..16]);
        assert!(matches!(
            parse_family(&err),
            Err(Error::KernelWireguardUnavailable)
        ));
        // A controller reply carrying CTRL_ATTR_FAMILY_ID = 0x1b.
        let mut ok = Msg::new(GENL_ID_CTRL, 0, 1, &genl(1, 2));
        ok.attr(CTRL_ATTR_FAMILY_ID, &0x1bu16.to_ne_bytes());
        ok.attr(CTRL_ATTR_FAMILY_NAME, b"wireguard\0");
        assert_eq!(parse_family(&ok.finish()).unwrap(), 0x1b);
        // A get reply split over two messages for one peer merges.
        let private = PrivateKey::from_bytes([5; 32]);
        let mut buf = Vec::new();
        for (i, ips) in [["10.0.0.0/24"], ["10.0.1.0/24"]].iter().enumerate() {
            let mut m = Msg::new(0x1b, NLM_F_MULTI, 3, &genl(WG_CMD_GET_DEVICE, 1));
            if i == 0 {
                m.attr(a::DEV_PUBLIC_KEY, private.public_key().as_bytes());
                m.attr(a::DEV_LISTEN_PORT, &51820u16.to_ne_bytes());
            }
            let peers = m.begin(a::DEV_PEERS);
            let p = m.begin(0);
            m.attr(a::PEER_PUBLIC_KEY, &[7; 32]);
            let aips = m.begin(a::PEER_ALLOWEDIPS);
            let n: IpNet = ips[0].parse().unwrap();
            let x = m.begin(0);
            m.attr(a::AIP_FAMILY, &(libc::AF_INET as u16).to_ne_bytes());
            if let IpNet::V4(v4) = n {
                m.attr(a::AIP_IPADDR, &v4.addr().octets());
            }
            m.attr(a::AIP_CIDR, &[24]);
            m.end(x);
            m.end(aips);
            m.end(p);
            m.end(peers);
            buf.extend(m.finish());
        }
        buf.extend_from_slice(&[20, 0, 0, 0, 3, 0, 2, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let (dev, done) = parse_get("wg0", 0x1b, &buf).unwrap();
        assert!(done);
        assert_eq!(dev.public_key, Some(private.public_key()));
        assert_eq!(dev.listen_port, 51820);
        assert_eq!(dev.peers.len(), 1);
        assert_eq!(dev.peers[0].allowed_ips.len(), 2);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(messages("wg0", &[200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(attributes("wg0", &[2, 0, 1, 0]).is_err());
    }
}
