//! Fuzz-style tests of the resource reader: arbitrary text and mutated valid
//! documents never panic; whatever parses is valid and builds a model.

use calinet_policy::model::parse_yaml;
use calinet_policy::semantics::PolicyModel;
use proptest::prelude::*;

const SEED: &str = r#"apiVersion: projectcalico.org/v3
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
  egress:
  - action: Deny
    protocol: UDP
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}
    ports:
    - port: 80
      endPort: 90
"#;

fn mutate(seed: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut b = seed.as_bytes().to_vec();
    for &(pos, op, byte) in edits {
        if b.is_empty() {
            break;
        }
        let i = pos % b.len();
        match op % 3 {
            0 => b[i] = byte,
            1 => {
                b.remove(i);
            }
            _ => b.insert(i, byte),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = parse_yaml(&text);
    }

    #[test]
    fn mutated_documents_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>(), prop::sample::select(b" :-{}[],'\"\n0123456789abcxyz!=&|()".to_vec())), 1..6)) {
        let text = mutate(SEED, &edits);
        if let Ok(resources) = parse_yaml(&text) {
            // Accepted input is valid: the model builds unless two documents now
            // collide or name a missing tier, which must be an error, not a panic.
            let _ = PolicyModel::build(&resources);
        }
    }
}

#[test]
fn the_seed_itself_parses() {
    let r = parse_yaml(SEED).unwrap();
    assert_eq!(r.len(), 2);
    PolicyModel::build(&r).unwrap();
}
