//! Workload plumbing, Calico's way: a veth pair from the host into the pod's
//! namespace, the host side with MAC `ee:ee:ee:ee:ee:ee`, proxy ARP/NDP and the
//! host routes; the pod side `eth0` with /32 and /128 addresses and default routes
//! through `169.254.1.1` (IPv4) and the host side's link-local address (IPv6).

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernel::{LinkIndex, RouteMsgKind, route_message};
use crate::link::{self, LinkChange};
use crate::netns::Netns;
use crate::nl::Conn;
use crate::spec::{IfName, MacAddr, POD_GATEWAY_V4, RouteProtocol, RouteSpec, WorkloadSpec};

/// How often the host MAC is set and read back before giving up.
const MAC_ATTEMPTS: u32 = 5;
/// How long to wait for the host side's IPv6 link-local address.
const LINK_LOCAL_WAIT: Duration = Duration::from_secs(3);

/// The sysctls Calico sets on a host-side workload interface, as
/// (`/proc/sys` key, value).
pub fn host_sysctls(ifname: &IfName, ipv6: bool) -> Vec<(String, String)> {
    let mut v = vec![
        (format!("net/ipv4/conf/{ifname}/proxy_arp"), "1".to_string()),
        (
            format!("net/ipv4/neigh/{ifname}/proxy_delay"),
            "0".to_string(),
        ),
        (
            format!("net/ipv4/conf/{ifname}/forwarding"),
            "1".to_string(),
        ),
        (
            format!("net/ipv4/conf/{ifname}/route_localnet"),
            "1".to_string(),
        ),
    ];
    if ipv6 {
        v.extend([
            (format!("net/ipv6/conf/{ifname}/proxy_ndp"), "1".to_string()),
            (
                format!("net/ipv6/conf/{ifname}/forwarding"),
                "1".to_string(),
            ),
            (
                format!("net/ipv6/conf/{ifname}/accept_dad"),
                "0".to_string(),
            ),
            (format!("net/ipv6/conf/{ifname}/accept_ra"), "0".to_string()),
        ]);
    }
    v
}

/// The pod-side routes: `169.254.1.1 dev eth0 scope link`, `default via 169.254.1.1
/// dev eth0`, and for IPv6 `default via <host link-local> dev eth0`.
pub fn pod_routes(spec: &WorkloadSpec, host_link_local: Option<IpAddr>) -> Vec<RouteSpec> {
    let dev = spec.pod_ifname.clone();
    let mut v = Vec::new();
    if spec.ipv4.is_some() {
        v.push(
            RouteSpec::direct(IpNet::from(IpAddr::V4(POD_GATEWAY_V4)), dev.clone())
                .protocol(RouteProtocol::BOOT),
        );
        v.push(
            RouteSpec::via(
                "0.0.0.0/0".parse().expect("valid"),
                IpAddr::V4(POD_GATEWAY_V4),
            )
            .device(dev.clone())
            .protocol(RouteProtocol::BOOT),
        );
    }
    if let (Some(_), Some(ll)) = (spec.ipv6, host_link_local) {
        v.push(
            RouteSpec::via("::/0".parse().expect("valid"), ll)
                .device(dev)
                .protocol(RouteProtocol::BOOT),
        );
    }
    v
}

/// The pod's addresses: /32 and /128.
pub fn pod_addresses(spec: &WorkloadSpec) -> Vec<IpNet> {
    let mut v = Vec::new();
    if let Some(a) = spec.ipv4 {
        v.push(IpNet::from(IpAddr::V4(a)));
    }
    if let Some(a) = spec.ipv6 {
        v.push(IpNet::from(IpAddr::V6(a)));
    }
    v
}

/// One way the kernel differs from a workload's expected state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// What was checked (`host link cali123 mtu`, `pod route default ...`).
    pub item: String,
    /// What it should be.
    pub expected: String,
    /// What it is.
    pub observed: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {}, observed {}",
            self.item, self.expected, self.observed
        )
    }
}

/// What [`setup_workload`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupReport {
    /// False when the workload was already exactly as specified (nothing written).
    pub changed: bool,
    /// When the workload existed but differed: what differed (it was rebuilt).
    pub rebuilt_because: Vec<Difference>,
    /// When the workload existed and only its host side's MTU differed: that
    /// difference, fixed in place (the interfaces keep their indexes).
    pub changed_in_place: Vec<Difference>,
    /// The pod side's MTU when it differs from the spec's and the workload was
    /// not rebuilt: the pod keeps its MTU until it is re-created (as in Calico).
    pub pod_mtu_kept: Option<u32>,
    /// The host side's IPv6 link-local address (the pod's IPv6 gateway).
    pub host_link_local: Option<IpAddr>,
    /// Attempts needed until the host MAC read back as `ee:ee:ee:ee:ee:ee`.
    pub mac_attempts: u32,
    /// The pod side's MAC (the CNI result's sandbox interface): the one it was
    /// created with, or the kernel's when the workload was found unchanged, so
    /// that callers need not ask the pod's namespace again.
    pub pod_mac: Option<MacAddr>,
}

/// What [`teardown_workload`] found and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeardownReport {
    /// The host-side interface existed and was deleted (its peer and its routes go
    /// with it).
    pub host_link_deleted: bool,
    /// A leftover pod-side interface was deleted.
    pub pod_link_deleted: bool,
    /// The pod's namespace no longer existed.
    pub netns_missing: bool,
    /// An interface that was left alone because another owner is recorded on
    /// it ([`teardown_owned_workload`]): that owner (empty when none is).
    pub kept_for: Option<String>,
}

fn ll_of(addrs: &[link::ObservedAddress]) -> Option<IpAddr> {
    addrs.iter().find_map(|a| match a.address {
        IpNet::V6(n) if n.addr().segments()[0] & 0xffc0 == 0xfe80 && !a.tentative => {
            Some(IpAddr::V6(n.addr()))
        }
        _ => None,
    })
}

async fn host_link_local(host: &mut Conn, index: u32, wait: Duration) -> Result<Option<IpAddr>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(ll) = ll_of(&link::addresses(host, Some(index)).await?) {
            return Ok(Some(ll));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends routes as replacements and fails on the first rejection.
/// One write of a pipelined batch, with what to name it in an error.
struct Request {
    msg: RouteNetlinkMessage,
    flags: u16,
    what: String,
}

fn alias_request(index: u32, name: &IfName, alias: &str) -> Request {
    Request {
        msg: RouteNetlinkMessage::SetLink(
            LinkUnspec::new_with_index(index)
                .append_extra_attribute(LinkAttribute::IfAlias(alias.to_owned()))
                .build(),
        ),
        flags: 0,
        what: format!("link set {name} alias {alias}"),
    }
}

/// Records `alias` (a workload's owner) on the link `index`.
async fn set_alias(conn: &mut Conn, index: u32, name: &IfName, alias: &str) -> Result<()> {
    execute_all(conn, vec![alias_request(index, name, alias)]).await
}

fn up_request(index: u32, name: &IfName) -> Request {
    Request {
        msg: RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(index).up().build()),
        flags: 0,
        what: format!("link set {name} up"),
    }
}

/// `route replace` requests for `routes`, devices resolved through `links`.
fn route_requests(conn: &Conn, routes: &[RouteSpec], links: &LinkIndex) -> Result<Vec<Request>> {
    routes
        .iter()
        .map(|r| {
            let oif = match &r.device {
                Some(d) => Some(
                    links
                        .by_name(d)
                        .ok_or_else(|| Error::LinkNotFound {
                            name: d.to_string(),
                            netns: conn.netns().to_string(),
                        })?
                        .index,
                ),
                None => None,
            };
            Ok(Request {
                msg: RouteNetlinkMessage::NewRoute(route_message(
                    &r.normalized(),
                    oif,
                    RouteMsgKind::New,
                )),
                flags: NLM_F_CREATE | NLM_F_REPLACE,
                what: format!("route replace {r}"),
            })
        })
        .collect()
}

/// Sends `batch` as one pipelined write; the first rejected request is the
/// error (the kernel still applies the others, which the caller's rollback
/// removes with the link).
async fn execute_all(conn: &mut Conn, batch: Vec<Request>) -> Result<()> {
    let (reqs, whats): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|r| ((r.msg, r.flags), r.what))
        .unzip();
    let what = whats.join(", ");
    let out = conn.execute(&reqs, &what).await?;
    match out
        .into_iter()
        .zip(whats)
        .find_map(|(o, w)| o.map(|n| (n, w)))
    {
        Some((n, request)) => Err(n.into_error(request)),
        None => Ok(()),
    }
}

/// Whether the pod's namespace holds an interface named `name` that may be
/// deleted as a leftover of an earlier setup: `false` when there is none, an
/// error naming it when it is not ours. Ours are veths whose peer lives in another
/// namespace (the kernel then reports `IFLA_LINK_NETNSID`); a bridge, a dummy or a
/// veth pair made inside the pod's namespace belongs to someone else.
async fn pod_leftover(pod: &mut Conn, name: &IfName) -> Result<bool> {
    use netlink_packet_route::link::LinkMessage;

    let what = format!("link show {name}");
    let mut req = LinkMessage::default();
    req.attributes.push(LinkAttribute::IfName(name.to_string()));
    let replies = match pod
        .request(&RouteNetlinkMessage::GetLink(req), 0, &what)
        .await?
    {
        Ok(r) => r,
        Err(n) if n.errno == libc::ENODEV => return Ok(false),
        Err(n) => return Err(n.into_error(what)),
    };
    let Some(msg) = replies.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(l),
        _ => None,
    }) else {
        return Ok(false);
    };
    let kind = crate::kernel::link_from_message(msg).and_then(|l| l.kind);
    let peer_elsewhere = msg
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)));
    let reason = match (kind.as_deref(), peer_elsewhere) {
        (Some("veth"), true) => return Ok(true),
        (Some("veth"), false) => "its veth peer is in the same namespace",
        _ => "not a veth",
    };
    Err(Error::ForeignInterface {
        netns: pod.netns().to_string(),
        name: name.to_string(),
        kind: kind.unwrap_or_else(|| "none".to_string()),
        reason,
    })
}

/// Plumbs one workload. `host` is a connection in the node's namespace; host routes
/// get `protocol` (the reconciler that owns them should use the same).
///
/// Idempotent: when the workload already matches, nothing is written; when it
/// exists but differs, it is deleted and rebuilt (Calico's ADD semantics),
/// except for MTUs: a host side whose MTU alone differs gets the new MTU in
/// place, and the pod side keeps its MTU until the pod is re-created (Calico
/// never deletes a running pod's interface for a configuration change). Needs
/// a tokio runtime with the time driver.
///
/// An interface named `pod_ifname` already in the pod's namespace is deleted only
/// when it is a veth leading out of that namespace (a leftover plumbing);
/// anything else fails with [`Error::ForeignInterface`] before any change.
pub async fn setup_workload(
    host: &mut Conn,
    spec: &WorkloadSpec,
    protocol: RouteProtocol,
) -> Result<SetupReport> {
    setup_owned_workload(host, spec, protocol, None).await
}

/// [`setup_workload`] for a workload with an owner (a CNI container id, an
/// agent's handle): the host side is created with `owner` as its alias
/// (`IFLA_IFALIAS`), so the kernel keeps who a workload belongs to, and an
/// interface named `pod_ifname` in the pod's namespace whose host-side peer
/// records another owner fails with [`Error::InterfaceInUse`] before any
/// change (the CNI specification requires ADD to fail when the interface
/// exists).
pub async fn setup_owned_workload(
    host: &mut Conn,
    spec: &WorkloadSpec,
    protocol: RouteProtocol,
    owner: Option<&str>,
) -> Result<SetupReport> {
    spec.validate()?;
    if let Some(owner) = owner {
        let pod_ns = Netns::open(&spec.pod_netns)?;
        if let PodInterface::Owned(other) =
            pod_interface_owner(host, &pod_ns, &spec.pod_ifname).await?
            && other != owner
        {
            return Err(Error::InterfaceInUse {
                netns: pod_ns.to_string(),
                name: spec.pod_ifname.to_string(),
                owner: other,
            });
        }
    }
    let mut rebuilt_because = Vec::new();
    if let Some(existing) = link::get_link(host, &spec.host_ifname).await? {
        let check = check_classified(host, spec, protocol).await?;
        if check.rebuild.is_empty() {
            // Only MTUs differ (or nothing): the host side is changed in place,
            // the pod side keeps its MTU; the index read above still holds.
            let mut changed_in_place = Vec::new();
            if let Some(d) = check.host_mtu {
                link::set_link(
                    host,
                    existing.index,
                    &spec.host_ifname,
                    &LinkChange {
                        mtu: Some(spec.mtu),
                        ..LinkChange::default()
                    },
                )
                .await?;
                changed_in_place.push(d);
            }
            // A workload plumbed before owners were recorded is adopted by
            // the owner that finds it as specified; another owner's stays its.
            if let Some(o) = owner
                && host_owner(host, &spec.host_ifname).await?.is_none()
            {
                set_alias(host, existing.index, &spec.host_ifname, o).await?;
                changed_in_place.push(Difference {
                    item: format!("host link {} owner", spec.host_ifname),
                    expected: o.to_owned(),
                    observed: "none".into(),
                });
            }
            let ll = if spec.ipv6.is_some() {
                host_link_local(host, existing.index, Duration::ZERO).await?
            } else {
                None
            };
            return Ok(SetupReport {
                changed: !changed_in_place.is_empty(),
                rebuilt_because,
                changed_in_place,
                pod_mtu_kept: check.pod_mtu,
                host_link_local: ll,
                mac_attempts: 0,
                pod_mac: check.pod_mac,
            });
        }
        rebuilt_because = check.all();
        link::delete_link(host, &spec.host_ifname).await?;
    }

    let pod_ns = Netns::open(&spec.pod_netns)?;
    let mut pod = Conn::open(&pod_ns).await?;
    // A leftover pod interface of the same name would make the create fail; only
    // a veth leading out of the pod's namespace can be a leftover of ours.
    if pod_leftover(&mut pod, &spec.pod_ifname).await? {
        link::delete_link(&mut pod, &spec.pod_ifname).await?;
    }

    // The veth pair, peer created directly in the pod's namespace, with a MAC
    // chosen here (random, locally administered, as the kernel would pick) so
    // that nothing has to ask the pod's namespace for it afterwards.
    let pod_mac = random_mac();
    let pod_fd = std::os::fd::AsRawFd::as_raw_fd(pod_ns.file());
    let peer = LinkUnspec::new_with_name(spec.pod_ifname.as_str())
        .mtu(spec.mtu)
        .address(pod_mac.0.to_vec())
        .setns_by_fd(pod_fd)
        .build();
    let veth = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(
        netlink_packet_route::link::InfoKind::Veth,
    )
    .name(spec.host_ifname.as_str())
    .mtu(spec.mtu)
    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
    .append_extra_attribute(LinkAttribute::Address(MacAddr::WORKLOAD_HOST.0.to_vec()))
    .build();
    let what = format!(
        "link add {} type veth peer name {} netns {}",
        spec.host_ifname, spec.pod_ifname, pod_ns
    );
    // NLM_F_ECHO: the kernel (6.2+) answers with the new host link, peer index
    // included, which saves asking for both ends again.
    let replies = host
        .request(
            &RouteNetlinkMessage::NewLink(veth),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
            &what,
        )
        .await?
        .map_err(|n| n.into_error::<Error>(what.clone()))?;
    let created = replies.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => {
            let state = crate::kernel::link_from_message(l)?;
            (state.name == spec.host_ifname).then(|| (state, peer_index(l)))
        }
        _ => None,
    });
    // From here on a failure must not leave a half-plumbed workload behind.
    let new = NewVeth {
        created,
        pod_mac,
        owner,
    };
    match finish_setup(host, &mut pod, &pod_ns, spec, protocol, new).await {
        Ok((host_ll, mac_attempts, pod_mac)) => Ok(SetupReport {
            changed: true,
            rebuilt_because,
            changed_in_place: Vec::new(),
            pod_mtu_kept: None,
            host_link_local: host_ll,
            mac_attempts,
            pod_mac,
        }),
        Err(e) => {
            // Best effort: the original error is what the caller needs to see.
            let _ = link::delete_link(host, &spec.host_ifname).await;
            Err(e)
        }
    }
}

/// A random, locally administered unicast MAC (what the kernel's
/// `eth_random_addr` makes). std seeds every `RandomState` from the operating
/// system's random source, so its hasher gives unpredictable bits without
/// unsafe code or another dependency; the time makes two calls differ.
fn random_mac() -> MacAddr {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(now);
    let bits = h.finish().to_le_bytes();
    let mut b = [0u8; 6];
    b.copy_from_slice(&bits[..6]);
    b[0] = (b[0] & 0xfe) | 0x02;
    MacAddr(b)
}

/// `IFLA_LINK` of a veth end: its peer's index (in the peer's namespace).
fn peer_index(m: &netlink_packet_route::link::LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}

/// What [`setup_owned_workload`] knows of the veth pair it just created.
struct NewVeth<'a> {
    /// The host link the kernel echoed with its peer's index (asked for again
    /// when missing: kernels before 6.2 do not echo).
    created: Option<(crate::kernel::LinkState, Option<u32>)>,
    /// The MAC the pod side was created with.
    pod_mac: MacAddr,
    /// The owner to record on the host side (its alias).
    owner: Option<&'a str>,
}

/// The steps after the veth pair exists: owner, sysctls, MAC, addresses, up,
/// routes.
async fn finish_setup(
    host: &mut Conn,
    pod: &mut Conn,
    pod_ns: &Netns,
    spec: &WorkloadSpec,
    protocol: RouteProtocol,
    new: NewVeth<'_>,
) -> Result<(Option<IpAddr>, u32, Option<MacAddr>)> {
    let NewVeth {
        created,
        pod_mac,
        owner,
    } = new;
    let (host_link, peer) = match created {
        Some(c) => c,
        None => (
            link::get_link(host, &spec.host_ifname)
                .await?
                .ok_or_else(|| Error::LinkNotFound {
                    name: spec.host_ifname.to_string(),
                    netns: host.netns().to_string(),
                })?,
            None,
        ),
    };

    // Sysctls before the link comes up (accept_dad / accept_ra matter at up time).
    host.netns()
        .write_sysctls(&host_sysctls(&spec.host_ifname, spec.ipv6.is_some()))?;

    // The kernel sometimes ignores a MAC given at creation: set, read back, retry.
    let mut mac_attempts = 0;
    let mut observed_mac = host_link.mac;
    while observed_mac != Some(MacAddr::WORKLOAD_HOST) {
        mac_attempts += 1;
        if mac_attempts > MAC_ATTEMPTS {
            return Err(Error::NotConverged {
                what: "host-side MAC",
                name: spec.host_ifname.to_string(),
                detail: format!(
                    "still {observed_mac:?} after {MAC_ATTEMPTS} attempts to set {}",
                    MacAddr::WORKLOAD_HOST
                ),
            });
        }
        link::set_link(
            host,
            host_link.index,
            &spec.host_ifname,
            &LinkChange {
                mac: Some(MacAddr::WORKLOAD_HOST),
                ..LinkChange::default()
            },
        )
        .await?;
        observed_mac = link::get_link(host, &spec.host_ifname)
            .await?
            .and_then(|l| l.mac);
    }

    let pod_link = match peer {
        // What the pod side is, from its creation: no need to ask.
        Some(index) => crate::kernel::LinkState {
            index,
            name: spec.pod_ifname.clone(),
            up: false,
            lower_up: false,
            loopback: false,
            mtu: spec.mtu,
            mac: Some(pod_mac),
            kind: Some("veth".into()),
            vxlan: None,
            ipip: None,
        },
        None => link::get_link(pod, &spec.pod_ifname)
            .await?
            .ok_or_else(|| Error::LinkNotFound {
                name: spec.pod_ifname.to_string(),
                netns: pod_ns.to_string(),
            })?,
    };
    let pod_links = LinkIndex::new([crate::kernel::LinkState {
        up: true,
        ..pod_link.clone()
    }]);
    let host_routes = spec.host_routes(protocol);
    let host_links = LinkIndex::new([host_link.clone()]);

    // Pipelined writes: each batch is one send and one wait, and the kernel
    // applies its requests in order (a link comes up before routes through
    // it). Host side first, so the pod's link has a carrier when it comes up.
    // IPv4 only: everything goes in these two batches. With IPv6 the pod's
    // routes wait for the host side's link-local address (their gateway).
    let ipv4_only = spec.ipv6.is_none();
    let mut host_batch = Vec::new();
    // The owner goes in a request of its own: the kernel ignores
    // IFLA_IFALIAS when it creates a link.
    if let Some(o) = owner {
        host_batch.push(alias_request(host_link.index, &spec.host_ifname, o));
    }
    host_batch.push(up_request(host_link.index, &spec.host_ifname));
    if ipv4_only {
        host_batch.extend(route_requests(host, &host_routes, &host_links)?);
    }
    execute_all(host, host_batch).await?;
    let mut pod_batch = vec![up_request(pod_link.index, &spec.pod_ifname)];
    for a in pod_addresses(spec) {
        pod_batch.push(Request {
            msg: RouteNetlinkMessage::NewAddress(link::address_message(pod_link.index, a, true)),
            flags: NLM_F_CREATE | NLM_F_REPLACE,
            what: format!("addr replace {a} dev {}", spec.pod_ifname),
        });
    }
    if ipv4_only {
        pod_batch.extend(route_requests(pod, &pod_routes(spec, None), &pod_links)?);
    }
    execute_all(pod, pod_batch).await?;
    if ipv4_only {
        return Ok((None, mac_attempts, pod_link.mac));
    }

    let ll = host_link_local(host, host_link.index, LINK_LOCAL_WAIT).await?;
    let Some(host_ll) = ll else {
        return Err(Error::NotConverged {
            what: "host-side IPv6 link-local address",
            name: spec.host_ifname.to_string(),
            detail: format!("none appeared within {LINK_LOCAL_WAIT:?}"),
        });
    };
    let batch = route_requests(pod, &pod_routes(spec, Some(host_ll)), &pod_links)?;
    execute_all(pod, batch).await?;
    let batch = route_requests(host, &host_routes, &host_links)?;
    execute_all(host, batch).await?;
    Ok((Some(host_ll), mac_attempts, pod_link.mac))
}

fn diff(
    out: &mut Vec<Difference>,
    item: String,
    expected: impl fmt::Display,
    observed: impl fmt::Display,
) {
    out.push(Difference {
        item,
        expected: expected.to_string(),
        observed: observed.to_string(),
    });
}

/// Compares the kernel with what [`setup_workload`] would make a new
/// workload; empty when equal. MTU differences are included, though
/// [`setup_workload`] changes the host side's MTU in place and leaves the pod
/// side's alone.
pub async fn check_workload(
    host: &mut Conn,
    spec: &WorkloadSpec,
    protocol: RouteProtocol,
) -> Result<Vec<Difference>> {
    Ok(check_classified(host, spec, protocol).await?.all())
}

/// A workload's differences sorted by what [`setup_workload`] does about them.
#[derive(Debug, Default)]
struct Check {
    /// Differences only a rebuild fixes.
    rebuild: Vec<Difference>,
    /// The host side's MTU differs (set in place).
    host_mtu: Option<Difference>,
    /// The pod side's MTU, when it differs (kept until the pod is re-created).
    pod_mtu: Option<u32>,
    /// That difference, for [`check_workload`].
    pod_mtu_diff: Option<Difference>,
    /// The pod side's MAC when the pod link was found.
    pod_mac: Option<MacAddr>,
}

impl Check {
    /// Every difference: the host MTU's, the others, the pod MTU's.
    fn all(self) -> Vec<Difference> {
        self.host_mtu
            .into_iter()
            .chain(self.rebuild)
            .chain(self.pod_mtu_diff)
            .collect()
    }
}

/// Checks a workload against the kernel, MTU differences kept apart.
async fn check_classified(
    host: &mut Conn,
    spec: &WorkloadSpec,
    protocol: RouteProtocol,
) -> Result<Check> {
    let mut check = Check::default();
    let (out, pod_mac) = check_rest(host, spec, protocol, &mut check).await?;
    check.rebuild = out;
    check.pod_mac = pod_mac;
    Ok(check)
}

/// Everything but the MTUs goes to the returned list; the MTUs to `check`.
async fn check_rest(
    host: &mut Conn,
    spec: &WorkloadSpec,
    protocol: RouteProtocol,
    check: &mut Check,
) -> Result<(Vec<Difference>, Option<MacAddr>)> {
    let mut out = Vec::new();
    let h = &spec.host_ifname;
    let Some(host_link) = link::get_link(host, h).await? else {
        diff(&mut out, format!("host link {h}"), "present", "missing");
        return Ok((out, None));
    };
    if host_link.kind.as_deref() != Some("veth") {
        diff(
            &mut out,
            format!("host link {h} kind"),
            "veth",
            format!("{:?}", host_link.kind),
        );
    }
    if host_link.mac != Some(MacAddr::WORKLOAD_HOST) {
        diff(
            &mut out,
            format!("host link {h} address"),
            MacAddr::WORKLOAD_HOST,
            format!("{:?}", host_link.mac),
        );
    }
    if host_link.mtu != spec.mtu {
        let mut d = Vec::new();
        diff(
            &mut d,
            format!("host link {h} mtu"),
            spec.mtu,
            host_link.mtu,
        );
        check.host_mtu = d.pop();
    }
    if !host_link.up {
        diff(&mut out, format!("host link {h} state"), "up", "down");
    }
    let sysctls = host_sysctls(h, spec.ipv6.is_some());
    let values = host.netns().run(|| {
        sysctls
            .iter()
            .map(|(k, _)| {
                std::fs::read_to_string(format!("/proc/sys/{k}"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|e| format!("<{e}>"))
            })
            .collect::<Vec<_>>()
    })?;
    for ((k, want), have) in sysctls.iter().zip(values) {
        if *want != have {
            diff(&mut out, format!("sysctl {k}"), want, have);
        }
    }
    let host_links = link::dump_links(host).await?;
    let routes = crate::backend::dump_routes(host, &host_links).await?;
    for want in spec.host_routes(protocol) {
        let want = want.normalized();
        if !routes.contains(&want) {
            let same_key: Vec<String> = routes
                .iter()
                .filter(|r| r.key() == want.key())
                .map(|r| r.to_string())
                .collect();
            diff(
                &mut out,
                format!("host route {}", want.destination),
                &want,
                if same_key.is_empty() {
                    "missing".to_string()
                } else {
                    same_key.join("; ")
                },
            );
        }
    }

    // Pod side.
    let pod_ns = match Netns::open(&spec.pod_netns) {
        Ok(ns) => ns,
        Err(e) => {
            diff(
                &mut out,
                "pod netns".to_string(),
                spec.pod_netns.display(),
                e,
            );
            return Ok((out, None));
        }
    };
    let mut pod = Conn::open(&pod_ns).await?;
    let p = &spec.pod_ifname;
    let Some(pod_link) = link::get_link(&mut pod, p).await? else {
        diff(&mut out, format!("pod link {p}"), "present", "missing");
        return Ok((out, None));
    };
    if pod_link.mtu != spec.mtu {
        let mut d = Vec::new();
        diff(&mut d, format!("pod link {p} mtu"), spec.mtu, pod_link.mtu);
        check.pod_mtu_diff = d.pop();
        check.pod_mtu = Some(pod_link.mtu);
    }
    if !pod_link.up {
        diff(&mut out, format!("pod link {p} state"), "up", "down");
    }
    let addrs = link::addresses(&mut pod, Some(pod_link.index)).await?;
    for a in pod_addresses(spec) {
        if !addrs.iter().any(|o| o.address == a) {
            diff(&mut out, format!("pod address {a}"), "present", "missing");
        }
    }
    let host_ll = if spec.ipv6.is_some() {
        ll_of(&link::addresses(host, Some(host_link.index)).await?)
    } else {
        None
    };
    if spec.ipv6.is_some() && host_ll.is_none() {
        diff(
            &mut out,
            format!("host link {h} IPv6 link-local"),
            "present",
            "missing",
        );
    }
    let pod_links = link::dump_links(&mut pod).await?;
    let pod_observed = crate::backend::dump_routes(&mut pod, &pod_links).await?;
    for want in pod_routes(spec, host_ll) {
        let want = want.normalized();
        let found = pod_observed.iter().any(|r| {
            r.key() == want.key()
                && r.device == want.device
                && r.gateway == want.gateway
                && r.kind == want.kind
                && (want.is_ipv6() || r.scope == want.scope)
        });
        if !found {
            diff(
                &mut out,
                format!("pod route {}", want.destination),
                &want,
                "missing or different",
            );
        }
    }
    Ok((out, pod_link.mac))
}

/// Removes a workload: deletes the host-side interface (its peer and its routes
/// go with it). Tolerates a missing interface and a missing namespace; when the
/// host side is already gone but the pod's namespace still holds `pod_ifname`, that
/// is deleted too.
pub async fn teardown_workload(
    host: &mut Conn,
    host_ifname: &IfName,
    pod_netns: Option<&Path>,
    pod_ifname: &IfName,
) -> Result<TeardownReport> {
    let mut report = TeardownReport {
        host_link_deleted: link::delete_link(host, host_ifname).await?,
        ..TeardownReport::default()
    };
    if let Some(path) = pod_netns {
        match Netns::open(path) {
            Ok(ns) => {
                if !report.host_link_deleted {
                    let mut pod = Conn::open(&ns).await?;
                    if let Some(l) = link::get_link(&mut pod, pod_ifname).await?
                        && l.kind.as_deref() == Some("veth")
                    {
                        report.pod_link_deleted = link::delete_link(&mut pod, pod_ifname).await?;
                    }
                }
            }
            Err(calinet_netlink::Error::Netns { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                report.netns_missing = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report)
}

/// A link's raw message, by name or by index (`None` when there is none).
async fn link_message(
    conn: &mut Conn,
    name: Option<&IfName>,
    index: u32,
) -> Result<Option<netlink_packet_route::link::LinkMessage>> {
    let (msg, what) = match name {
        Some(n) => (
            LinkUnspec::new_with_name(n.as_str()).build(),
            format!("link show {n}"),
        ),
        None => (
            LinkUnspec::new_with_index(index).build(),
            format!("link show index {index}"),
        ),
    };
    match conn
        .request(&RouteNetlinkMessage::GetLink(msg), 0, &what)
        .await?
    {
        Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })),
        Err(n) if n.errno == libc::ENODEV => Ok(None),
        Err(n) => Err(n.into_error(what)),
    }
}

fn alias_of(m: &netlink_packet_route::link::LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

fn is_veth(m: &netlink_packet_route::link::LinkMessage) -> bool {
    crate::kernel::link_from_message(m)
        .and_then(|l| l.kind)
        .as_deref()
        == Some("veth")
}

/// What an interface in a pod's namespace is, as far as ownership goes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PodInterface {
    /// There is no interface of that name.
    Absent,
    /// A veth whose peer is a host-side interface in the host namespace that
    /// records this owner (its alias).
    Owned(String),
    /// Something else: not a veth, a veth whose peer is not in the host
    /// namespace, or a host side without a recorded owner.
    Unowned,
}

/// Who owns the interface `pod_ifname` in `pod_ns`: the alias of its veth
/// peer in `host`'s namespace. The peer is found by the pod side's
/// `IFLA_LINK` and must point back at the pod side, so an unrelated host
/// interface with the same index is never taken for it.
pub async fn pod_interface_owner(
    host: &mut Conn,
    pod_ns: &Netns,
    pod_ifname: &IfName,
) -> Result<PodInterface> {
    let mut pod = Conn::open(pod_ns).await?;
    let Some(pod_link) = link_message(&mut pod, Some(pod_ifname), 0).await? else {
        return Ok(PodInterface::Absent);
    };
    let peer_elsewhere = pod_link
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)));
    let Some(peer) = peer_index(&pod_link).filter(|_| is_veth(&pod_link) && peer_elsewhere) else {
        return Ok(PodInterface::Unowned);
    };
    let Some(host_link) = link_message(host, None, peer).await? else {
        return Ok(PodInterface::Unowned);
    };
    if !is_veth(&host_link) || peer_index(&host_link) != Some(pod_link.header.index) {
        return Ok(PodInterface::Unowned);
    }
    Ok(match alias_of(&host_link) {
        Some(a) if !a.is_empty() => PodInterface::Owned(a.to_owned()),
        _ => PodInterface::Unowned,
    })
}

/// Removes a workload only where it belongs to `owner`: the host side
/// `host_ifname` when its alias is `owner`, else the interface `pod_ifname`
/// in `pod_netns` when its host-side peer's alias is `owner` (see
/// [`pod_interface_owner`]). An interface recording another owner, or none,
/// is left alone and named in [`TeardownReport::kept_for`]. Tolerates
/// missing interfaces and a missing namespace.
pub async fn teardown_owned_workload(
    host: &mut Conn,
    host_ifname: &IfName,
    pod_netns: Option<&Path>,
    pod_ifname: &IfName,
    owner: &str,
) -> Result<TeardownReport> {
    let mut report = TeardownReport::default();
    if let Some(m) = link_message(host, Some(host_ifname), 0).await? {
        match alias_of(&m) {
            Some(a) if a == owner => {
                report.host_link_deleted = link::delete_link(host, host_ifname).await?;
            }
            other => report.kept_for = Some(other.unwrap_or_default().to_owned()),
        }
    }
    if report.host_link_deleted {
        return Ok(report);
    }
    let Some(path) = pod_netns else {
        return Ok(report);
    };
    let ns = match Netns::open(path) {
        Ok(ns) => ns,
        Err(calinet_netlink::Error::Netns { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            report.netns_missing = true;
            return Ok(report);
        }
        Err(e) => return Err(e.into()),
    };
    match pod_interface_owner(host, &ns, pod_ifname).await? {
        PodInterface::Absent => {}
        PodInterface::Owned(o) if o == owner => {
            let mut pod = Conn::open(&ns).await?;
            report.pod_link_deleted = link::delete_link(&mut pod, pod_ifname).await?;
        }
        PodInterface::Owned(o) => report.kept_for = Some(o),
        PodInterface::Unowned => {
            report.kept_for.get_or_insert_with(String::new);
        }
    }
    Ok(report)
}

/// The owner recorded on the host-side interface `host_ifname` (its alias):
/// `None` when there is no such interface or it records none.
pub async fn host_owner(host: &mut Conn, host_ifname: &IfName) -> Result<Option<String>> {
    Ok(link_message(host, Some(host_ifname), 0)
        .await?
        .as_ref()
        .and_then(alias_of)
        .filter(|a| !a.is_empty())
        .map(str::to_owned))
}
