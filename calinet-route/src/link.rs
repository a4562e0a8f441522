//! Links and addresses: lookups, create/delete/set, tunnel links reconciled from a
//! [`LinkSpec`], and host-MTU detection (a pure function over links).

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkMessage};
use rtnetlink::{LinkIpIp, LinkMessageBuilder, LinkUnspec, LinkVxlan};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernel::{self, LinkIndex, LinkState};
use crate::nl::Conn;
use crate::spec::{IfName, LinkKind, LinkSpec, MacAddr};

/// All links of the connection's namespace.
pub async fn dump_links(conn: &mut Conn) -> Result<LinkIndex> {
    // Skip the per-link statistics: the reconciler needs names, indices and state,
    // and with hundreds of workload interfaces the stats dominate the dump.
    let mut req = LinkMessage::default();
    req.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let msgs = conn
        .dump(&RouteNetlinkMessage::GetLink(req), "links")
        .await?;
    Ok(LinkIndex::new(msgs.into_iter().filter_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => kernel::link_from_message(&l),
        _ => None,
    })))
}

/// The link named `name`, or `None` when it does not exist.
pub async fn get_link(conn: &mut Conn, name: &IfName) -> Result<Option<LinkState>> {
    let msg = LinkUnspec::new_with_name(name.as_str()).build();
    match conn
        .request(
            &RouteNetlinkMessage::GetLink(msg),
            0,
            &format!("link show {name}"),
        )
        .await?
    {
        Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => kernel::link_from_message(&l),
            _ => None,
        })),
        Err(n) if n.errno == libc::ENODEV => Ok(None),
        Err(n) => Err(n.into_error(format!("link show {name}"))),
    }
}

/// Sends a link creation message (`NLM_F_CREATE | NLM_F_EXCL`).
pub async fn create_link(conn: &mut Conn, msg: LinkMessage, what: &str) -> Result<()> {
    conn.request(
        &RouteNetlinkMessage::NewLink(msg),
        NLM_F_CREATE | NLM_F_EXCL,
        what,
    )
    .await?
    .map(|_| ())
    .map_err(|n| n.into_error(what.to_string()))
}

/// Deletes the link named `name`. Returns `false` when it did not exist.
pub async fn delete_link(conn: &mut Conn, name: &IfName) -> Result<bool> {
    let msg = LinkUnspec::new_with_name(name.as_str()).build();
    let what = format!("link del {name}");
    match conn
        .request(&RouteNetlinkMessage::DelLink(msg), 0, &what)
        .await?
    {
        Ok(_) => Ok(true),
        Err(n) if n.errno == libc::ENODEV => Ok(false),
        Err(n) => Err(n.into_error(what)),
    }
}

/// Link attributes to change; `None` leaves one alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkChange {
    /// Admin state.
    pub up: Option<bool>,
    /// MTU.
    pub mtu: Option<u32>,
    /// MAC address.
    pub mac: Option<MacAddr>,
}

/// Applies `change` to the link with `index` (one `RTM_SETLINK`).
pub async fn set_link(
    conn: &mut Conn,
    index: u32,
    name: &IfName,
    change: &LinkChange,
) -> Result<()> {
    let mut b = LinkUnspec::new_with_index(index);
    let mut what = format!("link set {name}");
    if let Some(mtu) = change.mtu {
        b = b.mtu(mtu);
        what.push_str(&format!(" mtu {mtu}"));
    }
    if let Some(mac) = change.mac {
        b = b.address(mac.0.to_vec());
        what.push_str(&format!(" address {mac}"));
    }
    match change.up {
        Some(true) => {
            b = b.up();
            what.push_str(" up");
        }
        Some(false) => {
            b = b.down();
            what.push_str(" down");
        }
        None => {}
    }
    conn.request(&RouteNetlinkMessage::SetLink(b.build()), 0, &what)
        .await?
        .map(|_| ())
        .map_err(|n| n.into_error(what))
}

/// An address on a link as observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedAddress {
    /// Link index.
    pub index: u32,
    /// Address with prefix length.
    pub address: IpNet,
    /// Still doing duplicate address detection.
    pub tentative: bool,
}

/// All addresses of the namespace (optionally of one link).
pub async fn addresses(conn: &mut Conn, index: Option<u32>) -> Result<Vec<ObservedAddress>> {
    let msgs = conn
        .dump(
            &RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            "addresses",
        )
        .await?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        if index.is_some_and(|i| i != a.header.index) {
            continue;
        }
        let mut addr = None;
        let mut local = None;
        let mut tentative = a.header.flags.contains(AddressHeaderFlags::Tentative);
        for at in &a.attributes {
            match at {
                AddressAttribute::Address(x) => addr = Some(*x),
                AddressAttribute::Local(x) => local = Some(*x),
                AddressAttribute::Flags(f) => tentative |= f.contains(AddressFlags::Tentative),
                _ => {}
            }
        }
        if let Some(ip) = local.or(addr)
            && let Ok(net) = IpNet::new(ip, a.header.prefix_len)
        {
            out.push(ObservedAddress {
                index: a.header.index,
                address: net,
                tentative,
            });
        }
    }
    Ok(out)
}

pub(crate) fn address_message(index: u32, net: IpNet, nodad: bool) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = match net {
        IpNet::V4(_) => netlink_packet_route::AddressFamily::Inet,
        IpNet::V6(_) => netlink_packet_route::AddressFamily::Inet6,
    };
    m.header.prefix_len = net.prefix_len();
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(net.addr()));
    m.attributes.push(AddressAttribute::Address(net.addr()));
    if nodad {
        m.header.flags |= AddressHeaderFlags::Nodad;
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    m
}

/// Adds (or replaces) `net` on the link with `index`. `nodad` skips IPv6 duplicate
/// address detection, so the address is usable at once.
pub async fn add_address(
    conn: &mut Conn,
    index: u32,
    name: &IfName,
    net: IpNet,
    nodad: bool,
) -> Result<()> {
    let what = format!("addr replace {net} dev {name}");
    conn.request(
        &RouteNetlinkMessage::NewAddress(address_message(index, net, nodad)),
        NLM_F_CREATE | NLM_F_REPLACE,
        &what,
    )
    .await?
    .map(|_| ())
    .map_err(|n| n.into_error(what))
}

/// Removes `net` from the link with `index`.
pub async fn del_address(conn: &mut Conn, index: u32, name: &IfName, net: IpNet) -> Result<()> {
    let what = format!("addr del {net} dev {name}");
    conn.request(
        &RouteNetlinkMessage::DelAddress(address_message(index, net, false)),
        0,
        &what,
    )
    .await?
    .map(|_| ())
    .map_err(|n| n.into_error(what))
}

/// What [`reconcile_link`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkReport {
    /// The device was created (it did not exist).
    pub created: bool,
    /// The device existed with other kind parameters and was deleted and recreated.
    pub recreated: Option<String>,
    /// Attribute changes (MTU, MAC, admin state) applied in place.
    pub changed: Vec<String>,
    /// Addresses added.
    pub addresses_added: Vec<IpNet>,
    /// Addresses removed.
    pub addresses_removed: Vec<IpNet>,
}

impl LinkReport {
    /// Whether nothing had to change.
    pub fn unchanged(&self) -> bool {
        !self.created
            && self.recreated.is_none()
            && self.changed.is_empty()
            && self.addresses_added.is_empty()
            && self.addresses_removed.is_empty()
    }
}

/// Why an existing device does not match `spec`'s kind parameters (which the
/// kernel cannot change in place), or `None` when it matches.
pub fn kind_mismatch(spec: &LinkSpec, observed: &LinkState, links: &LinkIndex) -> Option<String> {
    match &spec.kind {
        LinkKind::Vxlan(v) => {
            if observed.kind.as_deref() != Some("vxlan") {
                return Some(format!("kind {:?} is not vxlan", observed.kind));
            }
            let o = observed.vxlan.clone().unwrap_or_default();
            if o.vni != Some(v.vni) {
                return Some(format!("vni {:?} != {}", o.vni, v.vni));
            }
            if o.port.unwrap_or(0) != v.port {
                return Some(format!("port {:?} != {}", o.port, v.port));
            }
            let parent = o
                .parent_index
                .filter(|&i| i != 0)
                .and_then(|i| links.by_index(i))
                .map(|l| l.name.clone());
            if parent != v.parent {
                return Some(format!("parent {parent:?} != {:?}", v.parent));
            }
            if o.local != v.local {
                return Some(format!("local {:?} != {:?}", o.local, v.local));
            }
            if o.learning.unwrap_or(true) != v.learning {
                return Some(format!("learning {:?} != {}", o.learning, v.learning));
            }
            None
        }
        LinkKind::Ipip(p) => {
            if observed.kind.as_deref() != Some("ipip") {
                return Some(format!("kind {:?} is not ipip", observed.kind));
            }
            let o = observed.ipip.clone().unwrap_or_default();
            if o != *p {
                return Some(format!("endpoints {o:?} != {p:?}"));
            }
            None
        }
        other => Some(format!("link kind {other:?} is not supported")),
    }
}

fn create_message(spec: &LinkSpec, links: &LinkIndex, netns: &str) -> Result<LinkMessage> {
    let name = spec.name.as_str();
    let mut msg = match &spec.kind {
        LinkKind::Vxlan(v) => {
            let mut b = LinkVxlan::new(name, v.vni)
                .port(v.port)
                .learning(v.learning);
            if let Some(parent) = &v.parent {
                let l = links.by_name(parent).ok_or_else(|| Error::LinkNotFound {
                    name: format!("{parent} (parent of {})", spec.name),
                    netns: netns.to_string(),
                })?;
                b = b.dev(l.index);
            }
            match v.local {
                Some(IpAddr::V4(a)) => b = b.local(a),
                Some(IpAddr::V6(a)) => b = b.local6(a),
                None => {}
            }
            if let Some(mtu) = spec.mtu {
                b = b.mtu(mtu);
            }
            if let Some(mac) = spec.mac {
                b = b.address(mac.0.to_vec());
            }
            b.build()
        }
        LinkKind::Ipip(p) => {
            let mut b: LinkMessageBuilder<LinkIpIp> = LinkIpIp::new(name);
            if let Some(l) = p.local {
                b = b.local(l);
            }
            if let Some(r) = p.remote {
                b = b.remote(r);
            }
            if let Some(mtu) = spec.mtu {
                b = b.mtu(mtu);
            }
            b.build()
        }
        other => {
            return Err(Error::InvalidLink {
                name: spec.name.to_string(),
                rule: format!("link kind {other:?} is not supported"),
            });
        }
    };
    if spec.up {
        msg.header.flags |= netlink_packet_route::link::LinkFlags::Up;
        msg.header.change_mask |= netlink_packet_route::link::LinkFlags::Up;
    }
    Ok(msg)
}

/// Makes the tunnel link match `spec`: creates it when missing, recreates it when a
/// kind parameter differs (VNI, port, parent, local, learning; IPIP endpoints), sets
/// MTU / MAC / admin state in place, and makes its addresses exactly
/// `spec.addresses` (IPv6 link-local addresses, which the kernel manages, are kept).
///
/// IPIP's `tunl0` is special in the kernel: it is the fallback device the `ipip`
/// module creates itself, so it cannot be deleted or recreated; a mismatch there is
/// an error instead.
pub async fn reconcile_link(conn: &mut Conn, spec: &LinkSpec) -> Result<LinkReport> {
    spec.validate()?;
    let mut report = LinkReport::default();
    let links = dump_links(conn).await?;
    let mut current = links.by_name(&spec.name).cloned();
    let mismatch = current
        .as_ref()
        .and_then(|cur| kind_mismatch(spec, cur, &links));
    // Build the creation message before deleting anything, so that a spec that
    // cannot be created (e.g. a missing parent) leaves the old device in place.
    let create = if current.is_none() || mismatch.is_some() {
        Some(create_message(spec, &links, &conn.netns().to_string())?)
    } else {
        None
    };
    if let (Some(cur), Some(why)) = (&current, &mismatch) {
        if spec.name.as_str() == crate::spec::TUNL0 && cur.kind.as_deref() == Some("ipip") {
            return Err(Error::InvalidLink {
                name: spec.name.to_string(),
                rule: format!(
                    "tunl0 is the kernel's fallback device and cannot be recreated: {why}"
                ),
            });
        }
        delete_link(conn, &spec.name).await?;
        report.recreated = Some(why.clone());
        current = None;
    }
    let cur = match (current, create) {
        (Some(c), _) => c,
        (None, msg) => {
            let msg = msg.ok_or_else(|| Error::InvalidLink {
                name: spec.name.to_string(),
                rule: "internal: no creation message".to_string(),
            })?;
            let what = format!("link add {} ({:?})", spec.name, spec.kind);
            match create_link(conn, msg, &what).await {
                Ok(()) => {}
                // Loading the ipip module creates tunl0 itself (the fallback
                // device), so creating "tunl0" can race with it: use that one.
                Err(e)
                    if e.errno() == Some(libc::EEXIST)
                        && spec.name.as_str() == crate::spec::TUNL0 => {}
                Err(e) => return Err(e),
            }
            if report.recreated.is_none() {
                report.created = true;
            }
            get_link(conn, &spec.name)
                .await?
                .ok_or_else(|| Error::LinkNotFound {
                    name: spec.name.to_string(),
                    netns: conn.netns().to_string(),
                })?
        }
    };
    let mut change = LinkChange::default();
    if let Some(mtu) = spec.mtu
        && cur.mtu != mtu
    {
        change.mtu = Some(mtu);
        report.changed.push(format!("mtu {} -> {mtu}", cur.mtu));
    }
    if let Some(mac) = spec.mac
        && cur.mac != Some(mac)
    {
        change.mac = Some(mac);
        report
            .changed
            .push(format!("address {:?} -> {mac}", cur.mac));
    }
    if cur.up != spec.up {
        change.up = Some(spec.up);
        report
            .changed
            .push(if spec.up { "up" } else { "down" }.to_string());
    }
    if change != LinkChange::default() {
        set_link(conn, cur.index, &spec.name, &change).await?;
    }
    let have = addresses(conn, Some(cur.index)).await?;
    for want in &spec.addresses {
        if !have.iter().any(|h| h.address == *want) {
            add_address(conn, cur.index, &spec.name, *want, true).await?;
            report.addresses_added.push(*want);
        }
    }
    for h in have {
        let link_local =
            matches!(h.address, IpNet::V6(n) if n.addr().segments()[0] & 0xffc0 == 0xfe80);
        if !link_local && !spec.addresses.contains(&h.address) {
            del_address(conn, cur.index, &spec.name, h.address).await?;
            report.addresses_removed.push(h.address);
        }
    }
    Ok(report)
}

/// Whether `name` looks like a host uplink under Calico's default MTU interface
/// pattern `^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)`.
pub fn calico_uplink_name(name: &str) -> bool {
    if ["eth", "wlan", "wwan"].iter().any(|p| name.starts_with(p)) {
        return true;
    }
    let b = name.as_bytes();
    b.len() >= 3
        && ["en", "wl", "ww", "sl", "ib"]
            .iter()
            .any(|p| name.starts_with(p))
        && b"Pcopsvx".contains(&b[2])
}

/// Calico's host MTU: the smallest MTU among links that are up and whose name
/// `is_uplink` accepts (e.g. [`calico_uplink_name`]). `None` when there is none.
///
/// ```
/// use calinet_route::link::{calico_uplink_name, host_mtu};
/// use calinet_route::LinkState;
/// let link = |name: &str, mtu, up| LinkState {
///     index: 1, name: name.parse().unwrap(), up, lower_up: up, loopback: false,
///     mtu, mac: None, kind: None, vxlan: None, ipip: None,
/// };
/// let links = [link("eth0", 9001, true), link("ens5", 1500, false), link("cali1", 1400, true)];
/// assert_eq!(host_mtu(&links, calico_uplink_name), Some(9001));
/// ```
pub fn host_mtu<'a>(
    links: impl IntoIterator<Item = &'a LinkState>,
    is_uplink: impl Fn(&str) -> bool,
) -> Option<u32> {
    links
        .into_iter()
        .filter(|l| l.up && !l.loopback && is_uplink(l.name.as_str()))
        .map(|l| l.mtu)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::ObservedVxlan;
    use crate::spec::{CALICO_VNI, VxlanSpec};

    fn link(name: &str, index: u32, mtu: u32, up: bool) -> LinkState {
        LinkState {
            index,
            name: name.parse().unwrap(),
            up,
            lower_up: up,
            loopback: name == "lo",
            mtu,
            mac: None,
            kind: None,
            vxlan: None,
            ipip: None,
        }
    }

    #[test]
    fn uplink_pattern_matches_calico_default() {
        for yes in [
            "eth0", "ens5", "enp0s3", "eno1", "wlan0", "wlp2s0", "ibp1s0", "ibs1",
        ] {
            assert!(calico_uplink_name(yes), "{yes}");
        }
        for no in [
            "lo",
            "cali123",
            "vxlan.calico",
            "tunl0",
            "docker0",
            "en",
            "ena0",
            "br0",
        ] {
            assert!(!calico_uplink_name(no), "{no}");
        }
    }

    #[test]
    fn host_mtu_is_smallest_up_uplink() {
        let links = [
            link("lo", 1, 65536, true),
            link("eth0", 2, 9001, true),
            link("eth1", 3, 1500, true),
            link("eth2", 4, 1280, false),
            link("cali1", 5, 1000, true),
        ];
        assert_eq!(host_mtu(&links, calico_uplink_name), Some(1500));
        assert_eq!(host_mtu(&links[..1], calico_uplink_name), None);
        assert_eq!(host_mtu(&links, |n| n == "cali1"), Some(1000));
    }

    #[test]
    fn vxlan_kind_mismatch_names_the_parameter() {
        let eth0 = link("eth0", 2, 1500, true);
        let mut vx = link("vxlan.calico", 3, 1450, true);
        vx.kind = Some("vxlan".into());
        vx.vxlan = Some(ObservedVxlan {
            vni: Some(4096),
            port: Some(4789),
            parent_index: Some(2),
            local: Some("198.51.100.10".parse().unwrap()),
            learning: Some(false),
        });
        let links = LinkIndex::new([eth0, vx.clone()]);
        let mut v = VxlanSpec::new(CALICO_VNI);
        v.parent = Some("eth0".parse().unwrap());
        v.local = Some("198.51.100.10".parse().unwrap());
        let spec = LinkSpec::vxlan("vxlan.calico".parse().unwrap(), v.clone());
        assert_eq!(kind_mismatch(&spec, &vx, &links), None);
        let mut other = v.clone();
        other.vni = 4097;
        let s2 = LinkSpec::vxlan("vxlan.calico".parse().unwrap(), other);
        assert!(kind_mismatch(&s2, &vx, &links).unwrap().contains("vni"));
        let mut other = v.clone();
        other.learning = true;
        let s3 = LinkSpec::vxlan("vxlan.calico".parse().unwrap(), other);
        assert!(
            kind_mismatch(&s3, &vx, &links)
                .unwrap()
                .contains("learning")
        );
        let mut other = v;
        other.local = Some("198.51.100.11".parse().unwrap());
        let s4 = LinkSpec::vxlan("vxlan.calico".parse().unwrap(), other);
        assert!(kind_mismatch(&s4, &vx, &links).unwrap().contains("local"));
    }
}
