//! Typed views of `ip -j` and `bridge -j` output: the independent oracle that
//! calinet's netlink code is checked against. Fields a test rarely needs stay
//! available in `extra`.

use serde::Deserialize;
use serde_json::{Map, Value};

/// One route (`ip -j -d route show`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Route {
    /// `unicast`, `blackhole`, `throw`, ...
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Destination: a CIDR, a bare address (host route) or `default`.
    pub dst: String,
    /// Next hop.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Output device.
    #[serde(default)]
    pub dev: Option<String>,
    /// Protocol, by name (`kernel`, `boot`, `static`) or number (`"80"`).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Scope (`link`, `global`, `host`).
    #[serde(default)]
    pub scope: Option<String>,
    /// Metric (priority).
    #[serde(default)]
    pub metric: Option<u32>,
    /// Table, when listing more than one table.
    #[serde(default)]
    pub table: Option<String>,
    /// Flags such as `onlink`, `linkdown`.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Preferred source address.
    #[serde(default)]
    pub prefsrc: Option<String>,
    /// Route metrics such as `mtu`.
    #[serde(default)]
    pub metrics: Vec<Map<String, Value>>,
    /// Everything else `ip` printed.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Route {
    /// Whether the route carries a flag (`onlink`).
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The route's MTU metric, if set.
    pub fn mtu(&self) -> Option<u64> {
        self.metrics
            .iter()
            .find_map(|m| m.get("mtu").and_then(Value::as_u64))
    }

    /// The destination as a CIDR, host routes given their full prefix length.
    pub fn dst_net(&self) -> Option<ipnet::IpNet> {
        if let Ok(net) = self.dst.parse() {
            return Some(net);
        }
        self.dst
            .parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    }
}

/// Finds routes by destination (`"172.16.1.0/24"`, host routes as `"10.0.0.1"`
/// or `"10.0.0.1/32"`).
pub fn routes_to<'a>(routes: &'a [Route], dst: &str) -> Vec<&'a Route> {
    let want = dst
        .parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| dst.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from));
    routes
        .iter()
        .filter(|r| match want {
            Some(net) => r.dst_net() == Some(net),
            None => r.dst == dst,
        })
        .collect()
}

/// Kind-specific link information (`linkinfo`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LinkInfo {
    /// `veth`, `vxlan`, `bridge`, `ipip`, `tun`, ...
    #[serde(default)]
    pub info_kind: Option<String>,
    /// Kind-specific data (VXLAN: `id`, `port`, `local`, `learning`, `link`).
    #[serde(default)]
    pub info_data: Option<Value>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One link (`ip -j -d link show`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Link {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name.
    pub ifname: String,
    /// Flags such as `UP`, `LOWER_UP`.
    #[serde(default)]
    pub flags: Vec<String>,
    /// MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// `UP`, `DOWN`, `UNKNOWN`, ...
    #[serde(default)]
    pub operstate: Option<String>,
    /// Link-layer address.
    #[serde(default)]
    pub address: Option<String>,
    /// `ether`, `none`, `loopback`, ...
    #[serde(default)]
    pub link_type: Option<String>,
    /// Master device (bridge port).
    #[serde(default)]
    pub master: Option<String>,
    /// Kind-specific information.
    #[serde(default)]
    pub linkinfo: Option<LinkInfo>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Link {
    /// Whether the administrative `UP` flag is set.
    pub fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }

    /// The link kind (`vxlan`, `veth`, ...).
    pub fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }

    /// A kind-specific field (`ip -d` `info_data`), e.g. `"id"` for a VXLAN VNI.
    pub fn info(&self, key: &str) -> Option<&Value> {
        self.linkinfo.as_ref()?.info_data.as_ref()?.get(key)
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct AddrLink {
    pub(crate) ifname: String,
    #[serde(default)]
    pub(crate) addr_info: Vec<Addr>,
}

/// One address (`ip -j addr show`, flattened per address).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Addr {
    /// The interface holding the address.
    #[serde(default)]
    pub ifname: String,
    /// `inet` or `inet6`.
    pub family: String,
    /// The address.
    pub local: String,
    /// Prefix length.
    pub prefixlen: u8,
    /// Scope (`global`, `link`, `host`).
    #[serde(default)]
    pub scope: Option<String>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One neighbour entry (`ip -j neigh show`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Neighbour {
    /// The IP address.
    pub dst: String,
    /// The device.
    #[serde(default)]
    pub dev: Option<String>,
    /// Link-layer address.
    #[serde(default)]
    pub lladdr: Option<String>,
    /// States such as `PERMANENT`, `REACHABLE`.
    #[serde(default)]
    pub state: Vec<String>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Neighbour {
    /// Whether the entry is permanent.
    pub fn is_permanent(&self) -> bool {
        self.state.iter().any(|s| s == "PERMANENT")
    }
}

/// One forwarding-database entry (`bridge -j fdb show`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FdbEntry {
    /// MAC address.
    pub mac: String,
    /// Device.
    #[serde(default)]
    pub ifname: Option<String>,
    /// Remote (VXLAN) destination.
    #[serde(default)]
    pub dst: Option<String>,
    /// Flags such as `self`.
    #[serde(default)]
    pub flags: Vec<String>,
    /// `permanent`, ...
    #[serde(default)]
    pub state: Option<String>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `ip -j -d -4 route show` in a namespace on this kernel
    /// (6.18) after adding a blackhole and an onlink route with protocol 80.
    const ROUTES: &str = r#"[{"type":"blackhole","dst":"172.16.1.0/24","protocol":"80","scope":"global","flags":[]},{"type":"unicast","dst":"172.16.2.0/24","gateway":"192.0.2.9","dev":"v0","protocol":"80","scope":"global","flags":["onlink"],"metrics":[{"mtu":1400}]},{"type":"unicast","dst":"192.0.2.0/24","dev":"v0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.1","flags":[]}]"#;

    #[test]
    fn parses_captured_routes() {
        let routes: Vec<Route> = serde_json::from_str(ROUTES).unwrap();
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0].kind.as_deref(), Some("blackhole"));
        assert!(routes[1].has_flag("onlink"));
        assert_eq!(routes[1].mtu(), Some(1400));
        assert_eq!(routes[1].gateway.as_deref(), Some("192.0.2.9"));
        assert_eq!(routes_to(&routes, "172.16.2.0/24").len(), 1);
        assert_eq!(routes[2].protocol.as_deref(), Some("kernel"));
    }

    /// Captured from `ip -j -d link show vx` for a VXLAN device made with
    /// `id 4096 dstport 4789 local 192.0.2.1 nolearning dev v0`.
    #[test]
    fn parses_captured_vxlan_link() {
        let text = r#"[{"ifindex":4,"ifname":"vx","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1450,"operstate":"UNKNOWN","link_type":"ether","address":"aa:1e:79:2c:60:b1","linkinfo":{"info_kind":"vxlan","info_data":{"id":4096,"local":"192.0.2.1","link":"v0","port":4789,"learning":false}}}]"#;
        let links: Vec<Link> = serde_json::from_str(text).unwrap();
        assert_eq!(links[0].kind(), Some("vxlan"));
        assert_eq!(links[0].info("id").and_then(Value::as_u64), Some(4096));
        assert_eq!(links[0].info("learning"), Some(&Value::Bool(false)));
        assert!(links[0].is_up());
    }

    /// Captured from `ip -j neigh` and `bridge -j fdb show dev vx`.
    #[test]
    fn parses_captured_neighbour_and_fdb() {
        let n: Vec<Neighbour> = serde_json::from_str(
            r#"[{"dst":"192.0.2.5","dev":"v0","lladdr":"66:00:00:00:00:01","state":["PERMANENT"]}]"#,
        )
        .unwrap();
        assert!(n[0].is_permanent());
        let f: Vec<FdbEntry> = serde_json::from_str(
            r#"[{"mac":"66:00:00:00:00:02","dst":"192.0.2.7","flags":["self"],"state":"permanent"}]"#,
        )
        .unwrap();
        assert_eq!(f[0].dst.as_deref(), Some("192.0.2.7"));
        assert_eq!(f[0].state.as_deref(), Some("permanent"));
    }
}
