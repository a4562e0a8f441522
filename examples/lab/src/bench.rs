//! `calinet-lab bench-route-latency` (hidden): how long a new block affinity
//! in the datastore takes to become a route in every other node's kernel, on
//! the 4-node lab. In a BGP mode the owner's BIRD announces it and the other
//! BIRDs program it (`proto bird`); in VXLAN mode every agent programs it from
//! the datastore.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use crate::cluster::RunningLab;
use crate::error::{Error, Result};

/// One mode's samples, in milliseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Per sample: time until the last of the other nodes had the route.
    pub samples_ms: Vec<f64>,
}

impl Latencies {
    /// The median.
    pub fn median(&self) -> f64 {
        percentile(&self.samples_ms, 0.5)
    }

    /// The smallest and largest sample.
    pub fn range(&self) -> (f64, f64) {
        let min = self.samples_ms.iter().copied().fold(f64::MAX, f64::min);
        let max = self.samples_ms.iter().copied().fold(0.0, f64::max);
        (min, max)
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    s[i]
}

/// Claims `samples` new blocks for `owner`, one at a time, and measures each
/// until every other node's kernel routes it. Blocks come from the pool's
/// upper half (`172.16.200.0/24` on), which the lab's pods never use.
pub fn route_latency(lab: &RunningLab, owner: &str, samples: usize) -> Result<Latencies> {
    let store = crate::store::open(&lab.state)?;
    let ipam = calinet_ipam::Ipam::new(store);
    let node: calinet_ipam::NodeName =
        owner
            .parse()
            .map_err(|e: <calinet_ipam::NodeName as std::str::FromStr>::Err| {
                Error::Usage(e.to_string())
            })?;
    let others: Vec<_> = lab
        .state
        .nodes
        .iter()
        .filter(|n| n.name != owner)
        .cloned()
        .collect();
    let base = lab.state.pool.network().octets();
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let third = u8::try_from(200 + i)
            .map_err(|_| Error::Usage("at most 55 samples fit the pool's upper half".into()))?;
        let addr = Ipv4Addr::new(base[0], base[1], third, 5);
        let block = format!("{}.{}.{third}.0/24", base[0], base[1]);
        let handle: calinet_ipam::HandleId = format!("bench-route-latency.{i}")
            .parse()
            .map_err(|e: calinet_ipam::Error| Error::Usage(e.to_string()))?;
        let attrs = BTreeMap::from([("node".to_owned(), owner.to_owned())]);
        let t0 = Instant::now();
        ipam.assign_ip(IpAddr::V4(addr), &handle, &attrs, &node, SystemTime::now())
            .map_err(|e| Error::Lab(format!("claim {block}: {e}")))?;
        let mut pending: Vec<_> = others.iter().collect();
        while !pending.is_empty() {
            pending.retain(|n| {
                let out = testlab::cmd::run("ip", &["-n", &n.netns, "route", "show", &block])
                    .unwrap_or_default();
                out.trim().is_empty()
            });
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(Error::Lab(format!(
                    "{block} not routed on {:?} after 30 s",
                    pending.iter().map(|n| &n.name).collect::<Vec<_>>()
                )));
            }
        }
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
        // Spread the samples out so each one starts from a quiet cluster.
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(Latencies { samples_ms: out })
}
