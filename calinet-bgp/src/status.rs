//! `calicoctl node status`: the plan's sessions joined with BIRD's state.

use std::net::IpAddr;

use crate::control::ProtocolStatus;
use crate::plan::{Family, PeerType, Plan};

/// One row of `calicoctl node status` (one table per family).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStatus {
    /// The family table the row belongs to.
    pub family: Family,
    /// PEER ADDRESS.
    pub peer_address: IpAddr,
    /// PEER TYPE.
    pub peer_type: PeerType,
    /// STATE: BIRD's protocol state (`up`, `start`), empty when BIRD does not
    /// run the session (yet).
    pub state: String,
    /// SINCE.
    pub since: String,
    /// INFO: `Established`, `Active`, `Connect`, ...
    pub info: String,
}

/// The status rows of `plan`'s sessions, in the plan's order, from BIRD's
/// `show protocols all` (matched by protocol name).
pub fn node_status(plan: &Plan, protocols: &[ProtocolStatus]) -> Vec<PeerStatus> {
    plan.sessions
        .iter()
        .map(|s| {
            let p = protocols.iter().find(|p| p.name == s.name);
            PeerStatus {
                family: s.family,
                peer_address: s.peer_address,
                peer_type: s.peer_type,
                state: p.map(|p| p.state.clone()).unwrap_or_default(),
                since: p.map(|p| p.since.clone()).unwrap_or_default(),
                info: p.map(|p| p.info.clone()).unwrap_or_default(),
            }
        })
        .collect()
}
