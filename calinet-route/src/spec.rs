//! Desired-state types. The specs themselves are calinet-types' (re-exported
//! here); what this crate adds is [`Ownership`]: which routes its reconciler
//! may touch.

use std::collections::BTreeSet;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use calinet_types::{
    CALICO_VNI, DEFAULT_WORKLOAD_PREFIX, FdbSpec, IFNAME_MAX_LEN, IfName, IpipSpec, LinkKind,
    LinkSpec, MAIN_TABLE, MacAddr, NeighbourSpec, POD_GATEWAY_V4, RouteKey, RouteProtocol,
    RouteScope, RouteSpec, RouteType, TUNL0, VXLAN_PORT, VxlanSpec, WorkloadSpec,
};

/// Which routes the reconciler owns. Routes it does not own are never touched.
///
/// A route in one of [`Ownership::tables`] is owned when its protocol equals
/// [`Ownership::protocol`], or its device starts with one of
/// [`Ownership::interface_prefixes`] (except routes the kernel derived from addresses,
/// `proto kernel`, and IPv6 link-local destinations: the kernel keeps those).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ownership {
    /// Routes with this protocol are owned (default 80, Calico's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<RouteProtocol>,
    /// Routes through an interface with one of these prefixes are owned.
    #[serde(default)]
    pub interface_prefixes: Vec<String>,
    /// Tables the reconciler manages; `None` means every table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<BTreeSet<u32>>,
}

impl Default for Ownership {
    /// Protocol 80 in the main table, no interface prefixes.
    fn default() -> Self {
        Ownership {
            protocol: Some(RouteProtocol::CALICO),
            interface_prefixes: Vec::new(),
            tables: Some(BTreeSet::from([MAIN_TABLE])),
        }
    }
}

impl Ownership {
    /// Owns routes with `protocol`, main table only.
    pub fn by_protocol(protocol: RouteProtocol) -> Self {
        Ownership {
            protocol: Some(protocol),
            ..Ownership::default()
        }
    }

    /// Also owns routes through interfaces starting with `prefix`.
    pub fn interface_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.interface_prefixes.push(prefix.into());
        self
    }

    /// Manage only these tables.
    pub fn tables(mut self, tables: impl IntoIterator<Item = u32>) -> Self {
        self.tables = Some(tables.into_iter().collect());
        self
    }

    /// Manage every table.
    pub fn all_tables(mut self) -> Self {
        self.tables = None;
        self
    }

    /// Whether the reconciler manages `table`.
    pub fn manages_table(&self, table: u32) -> bool {
        self.tables.as_ref().is_none_or(|t| t.contains(&table))
    }

    /// Whether an observed route is owned.
    pub fn owns(&self, route: &RouteSpec) -> bool {
        if !self.manages_table(route.table) {
            return false;
        }
        if self.protocol == Some(route.protocol) {
            return true;
        }
        if route.protocol == RouteProtocol::KERNEL {
            return false;
        }
        if let IpNet::V6(n) = route.destination
            && n.addr().segments()[0] & 0xffc0 == 0xfe80
        {
            return false;
        }
        match &route.device {
            Some(dev) => self
                .interface_prefixes
                .iter()
                .any(|p| !p.is_empty() && dev.as_str().starts_with(p.as_str())),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_rules() {
        let own = Ownership::default().interface_prefix("cali");
        let dev: IfName = "cali0123456789a".parse().unwrap();
        let by_dev = RouteSpec::direct("10.0.0.1/32".parse().unwrap(), dev.clone())
            .protocol(RouteProtocol::BOOT);
        assert!(own.owns(&by_dev));
        assert!(!own.owns(&by_dev.clone().table(100)));
        let kernel = by_dev.clone().protocol(RouteProtocol::KERNEL);
        assert!(!own.owns(&kernel));
        let ll = RouteSpec::direct("fe80::/64".parse().unwrap(), dev).protocol(RouteProtocol::BOOT);
        assert!(!own.owns(&ll));
        let foreign =
            RouteSpec::blackhole("10.0.0.0/24".parse().unwrap()).protocol(RouteProtocol::BIRD);
        assert!(!own.owns(&foreign));
        assert!(own.owns(&foreign.protocol(RouteProtocol::CALICO)));
    }
}
