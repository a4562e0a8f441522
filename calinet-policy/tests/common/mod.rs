//! A policy set that uses every feature of the compiler, shared by the kernel tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use calinet_policy::compile::{Options, Pool, compile};
use calinet_policy::ir::Ruleset;
use calinet_policy::model::{AnyResource, Profile, Protocol, parse_yaml};
use calinet_policy::semantics::{Endpoint, Endpoints, NamedPort, PolicyModel};

pub const RICH: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: quarantine}
spec:
  tier: security
  order: 1
  selector: has(quarantine)
  types: [Ingress, Egress]
  ingress:
  - action: Log
  - action: Deny
  egress:
  - action: Deny
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: icmp}
spec:
  tier: security
  order: 2
  namespaceSelector: team == 'a'
  ingress:
  - action: Allow
    protocol: ICMP
    icmp: {type: 8, code: 0}
  - action: Deny
    protocol: ICMP
    notICMP: {type: 3}
  - action: Allow
    protocol: ICMPv6
    icmp: {type: 128}
  - action: Pass
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db, namespace: a}
spec:
  selector: app == 'db'
  order: 10
  types: [Ingress, Egress]
  ingress:
  - action: Allow
    protocol: TCP
    source: {selector: app == 'web', notNets: [10.0.0.128/25]}
    destination: {ports: [5432, "6000:6010", http], notPorts: [6005]}
  - action: Deny
    protocol: UDP
    source: {nets: [192.0.2.0/24, "2001:db8::/32"], notSelector: app == 'web'}
  - action: Allow
    notProtocol: UDP
    ipVersion: 6
  egress:
  - action: Allow
    protocol: UDP
    destination: {ports: [53], nets: [10.96.0.10/32]}
  - action: Allow
    protocol: TCP
    destination: {namespaceSelector: team == 'b', selector: all(), ports: [alt]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}
    - namespaceSelector: {matchLabels: {team: b}}
    ports:
    - port: 80
    - port: 8000
      endPort: 8100
"#;

pub fn endpoint(
    name: &str,
    ns: &str,
    ifname: &str,
    v4: &str,
    v6: &str,
    labels: &[(&str, &str)],
) -> Endpoint {
    Endpoint {
        name: name.into(),
        namespace: Some(ns.into()),
        local: true,
        interface: ifname.into(),
        addrs: vec![v4.parse().unwrap(), v6.parse().unwrap()],
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        profiles: vec![format!("kns.{ns}")],
        named_ports: vec![
            NamedPort {
                name: "http".into(),
                protocol: Protocol::TCP,
                port: 8080,
            },
            NamedPort {
                name: "alt".into(),
                protocol: Protocol::TCP,
                port: 9090,
            },
        ],
    }
}

pub fn model() -> PolicyModel {
    let mut res = parse_yaml(RICH).unwrap();
    for ns in ["a", "b"] {
        let labels: BTreeMap<String, String> =
            [("team".to_string(), ns.to_string())].into_iter().collect();
        res.push(AnyResource::Profile(Profile::for_namespace(ns, &labels)));
    }
    PolicyModel::build(&res).unwrap()
}

pub fn base_endpoints() -> Vec<Endpoint> {
    vec![
        endpoint(
            "a/web",
            "a",
            "caliweb",
            "10.0.0.1",
            "fd00::1",
            &[("app", "web")],
        ),
        endpoint(
            "a/db",
            "a",
            "calidb",
            "10.0.0.2",
            "fd00::2",
            &[("app", "db")],
        ),
        endpoint(
            "b/api",
            "b",
            "caliapi",
            "10.0.1.1",
            "fd00::101",
            &[("app", "api")],
        ),
        endpoint(
            "b/bad",
            "b",
            "calibad",
            "10.0.1.2",
            "fd00::102",
            &[("quarantine", "")],
        ),
    ]
}

pub fn pools() -> Vec<Pool> {
    vec![
        Pool {
            cidr: "10.0.0.0/16".parse().unwrap(),
            nat_outgoing: true,
        },
        Pool {
            cidr: "fd00::/64".parse().unwrap(),
            nat_outgoing: true,
        },
        Pool {
            cidr: "10.1.0.0/16".parse().unwrap(),
            nat_outgoing: false,
        },
    ]
}

pub fn ruleset(model: &PolicyModel, eps: Vec<Endpoint>) -> Ruleset {
    let eps = Endpoints::new(model, eps);
    compile(model, &eps, &pools(), &Options::default()).unwrap()
}

/// `nft -j list ruleset` with object handles removed and objects in a canonical
/// order: sets, maps and chains by name (creation order differs between a full
/// load and a sequence of diffs), rules kept in their order within each chain.
pub fn normalized_listing(nft: &calinet_policy::nft::NftCli) -> serde_json::Value {
    use serde_json::Value;
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("handle");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_str(&nft.list_json().unwrap()).unwrap();
    strip(&mut v);
    if let Some(items) = v.get_mut("nftables").and_then(Value::as_array_mut) {
        items.sort_by_key(|item| {
            let (kind, obj) = item
                .as_object()
                .and_then(|o| o.iter().next())
                .map(|(k, o)| (k.clone(), o.clone()))
                .unwrap_or_default();
            let name = obj
                .get(if kind == "rule" { "chain" } else { "name" })
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            (kind, name)
        });
    }
    v
}
