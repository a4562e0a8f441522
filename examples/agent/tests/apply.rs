//! `apply -f` as a user runs it: the binary, a real SQLite file, bad inputs.
//! Every failure names the file, the document and the field, and leaves the
//! datastore exactly as it was.

use std::path::Path;
use std::process::Command;

const GOOD: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 172.16.0.0/16
  blockSize: 24
  vxlanMode: Always
  natOutgoing: true
---
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: k8s-m
spec:
  bgp:
    ipv4Address: 198.51.100.10/24
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  nodeName: k8s-m
  containers:
  - name: web
    ports: [{name: http, containerPort: 80}]
";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn agent(db: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_calinet-agent"))
        .arg("--datastore")
        .arg(db)
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// Everything a user can see of the datastore.
fn snapshot(db: &Path) -> String {
    let a = agent(db, &["get", "ippool", "-o", "yaml"]).stdout;
    let b = agent(db, &["ipam", "show", "-o", "json"]).stdout;
    let c = agent(db, &["get", "wep", "-A", "-o", "json"]).stdout;
    format!("{a}{b}{c}")
}

#[test]
fn good_input_is_applied_and_shown_with_calicoctl_columns() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ds.db");
    let f = write(dir.path(), "good.yaml", GOOD);
    let r = agent(&db, &["apply", "-f", &f]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("IPPool default-ipv4-ippool created"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Successfully applied 3 resource(s)"),
        "{}",
        r.stdout
    );
    let again = agent(&db, &["apply", "-f", &f]);
    assert!(
        again
            .stdout
            .contains("IPPool default-ipv4-ippool unchanged"),
        "{}",
        again.stdout
    );

    let wide = agent(&db, &["get", "ippool", "-o", "wide"]).stdout;
    let mut lines = wide.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "CIDR",
            "NAT",
            "IPIPMODE",
            "VXLANMODE",
            "DISABLED",
            "DISABLEBGPEXPORT",
            "SELECTOR"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        [
            "default-ipv4-ippool",
            "172.16.0.0/16",
            "true",
            "Never",
            "Always",
            "false",
            "false",
            "all()"
        ]
    );
    let show = agent(&db, &["ipam", "show"]).stdout;
    assert!(
        show.contains("| IP Pool  | 172.16.0.0/16 | 65536     | 0 (0%)"),
        "{show}"
    );
    let cfg = agent(&db, &["ipam", "show", "--show-configuration"]).stdout;
    assert!(cfg.contains("| StrictAffinity     | false |"), "{cfg}");
    let check = agent(&db, &["ipam", "check"]);
    assert_eq!(check.code, 0, "{}", check.stdout);
    assert!(
        check.stdout.contains("Check complete; found 0 problems."),
        "{}",
        check.stdout
    );
    let release = agent(&db, &["ipam", "release", "--ip", "172.16.0.9"]);
    assert_eq!(release.code, 1);
    assert!(
        release.stdout.contains("was not allocated"),
        "{}",
        release.stdout
    );
}

#[test]
fn bad_input_names_file_document_and_field_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ds.db");
    let f = write(dir.path(), "good.yaml", GOOD);
    assert_eq!(agent(&db, &["apply", "-f", &f]).code, 0);
    let before = snapshot(&db);
    // Each bad file starts with a valid, new resource, so a half-applied input
    // would show.
    let prefix = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: extra}\nspec: {cidr: 10.244.0.0/16}\n---\n";
    let cases: [(&str, String, &str); 11] = [
        (
            "yaml.yaml",
            format!("{prefix}apiVersion: v1\nkind: Pod\nmetadata: {{name: x\n"),
            "document 1: .: invalid YAML",
        ),
        (
            "kind.yaml",
            format!(
                "{prefix}apiVersion: projectcalico.org/v3\nkind: IPPoool\nmetadata: {{name: x}}\n"
            ),
            "document 1: unknown kind \"IPPoool\"",
        ),
        (
            "cidr.yaml",
            format!(
                "{prefix}apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: p2}}\nspec: {{cidr: 10.96.0.0/33}}\n"
            ),
            "document 1: spec.cidr:",
        ),
        (
            "overlap.yaml",
            format!(
                "{prefix}apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: p3}}\nspec: {{cidr: 172.16.8.0/24}}\n"
            ),
            "document 1: spec.cidr: IPPool \"default-ipv4-ippool\" (172.16.0.0/16) overlaps IPPool \"p3\"",
        ),
        (
            "gateway.yaml",
            format!(
                "{prefix}apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: ll}}\nspec: {{cidr: 169.254.0.0/16}}\n"
            ),
            "document 1: spec.cidr: invalid IPPool \"ll\": cidr 169.254.0.0/16 contains 169.254.1.1, the pods' default gateway",
        ),
        (
            "multicast.yaml",
            format!(
                "{prefix}apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: mc}}\nspec: {{cidr: 224.0.0.0/16}}\n"
            ),
            "document 1: spec.cidr: invalid IPPool \"mc\": cidr 224.0.0.0/16 overlaps the IPv4 multicast range 224.0.0.0/4",
        ),
        (
            "default-route.yaml",
            format!(
                "{prefix}apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: all}}\nspec: {{cidr: 0.0.0.0/0}}\n"
            ),
            "document 1: spec.cidr: invalid IPPool \"all\": cidr 0.0.0.0/0 is the default route",
        ),
        (
            "felix.yaml",
            format!(
                "{prefix}apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: default}}\nspec: {{defaultEndpointToHostAction: Reject}}\n"
            ),
            "document 1: spec.defaultEndpointToHostAction: \"Reject\" is not one of Drop, Return, Accept",
        ),
        (
            "port.yaml",
            format!(
                "{prefix}apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: c\n    ports: [{{containerPort: 70000}}]\n"
            ),
            "document 1: spec.containers[0].ports[0].containerPort:",
        ),
        (
            "selector.yaml",
            format!(
                "{prefix}apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: g}}\nspec: {{selector: \"app == \"}}\n"
            ),
            "document 1: spec.selector:",
        ),
        (
            "node.yaml",
            format!(
                "{prefix}apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: n1}}\nspec: {{bgp: {{ipv4Address: 300.1.2.3/24}}}}\n"
            ),
            "document 1: spec.bgp.ipv4Address:",
        ),
    ];
    for (name, text, want) in &cases {
        let f = write(dir.path(), name, text);
        let r = agent(&db, &["apply", "-f", &f]);
        assert_eq!(r.code, 1, "{name}: {}", r.stdout);
        let first = r.stderr.lines().last().unwrap_or("");
        assert!(
            first.starts_with(&format!("error: {f}: {want}")),
            "{name}: expected `{want}` in:\n{}",
            r.stderr
        );
        assert_eq!(snapshot(&db), before, "{name} changed the datastore");
    }
    // Changing an immutable field fails the same way.
    let f = write(
        dir.path(),
        "immutable.yaml",
        &GOOD.replace("blockSize: 24", "blockSize: 26"),
    );
    let r = agent(&db, &["apply", "-f", &f]);
    assert!(
        r.stderr.contains(
            "document 0: spec.cidr: IPPool default-ipv4-ippool: cidr and blockSize are immutable"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(snapshot(&db), before);
}

#[test]
fn apply_and_show_against_a_real_etcd() {
    testlab::require!(testlab::Feature::Etcd);
    let lab = testlab::Lab::new("agent_etcd").unwrap();
    let etcd = lab.etcd().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let unused = dir.path().join("not-used.db");
    let endpoint = etcd.endpoint();
    let f = write(dir.path(), "good.yaml", GOOD);
    let r = agent(&unused, &["--etcd-endpoints", &endpoint, "apply", "-f", &f]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("Successfully applied 3 resource(s)"),
        "{}",
        r.stdout
    );
    assert!(!unused.exists(), "etcd was used, not SQLite");
    let show = agent(
        &unused,
        &["--etcd-endpoints", &endpoint, "get", "ippool", "-o", "wide"],
    );
    assert!(
        show.stdout
            .contains("default-ipv4-ippool   172.16.0.0/16   true"),
        "{}",
        show.stdout
    );
    // Calico's key layout, read back with etcdctl.
    let keys = Command::new("etcdctl")
        .args([
            "--endpoints",
            &endpoint,
            "get",
            "--prefix",
            "--keys-only",
            "/calico/resources/v3/projectcalico.org/",
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&keys.stdout);
    assert!(
        keys.contains("/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"),
        "{keys}"
    );
    assert!(
        keys.contains("/calico/resources/v3/projectcalico.org/nodes/k8s-m"),
        "{keys}"
    );
    // etcd down: a clear datastore error, exit code 1.
    etcd.stop();
    let r = agent(&unused, &["--etcd-endpoints", &endpoint, "ipam", "show"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("datastore"), "{}", r.stderr);
}

#[test]
fn the_agent_has_no_lab_command() {
    // The lab is its own program (calinet-lab); the agent is a node agent only.
    let dir = tempfile::tempdir().unwrap();
    let r = agent(&dir.path().join("ds.db"), &["lab", "run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("unrecognized subcommand 'lab'"),
        "{}",
        r.stderr
    );
}

const NODES_AND_FELIX: &str = "\
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: k8s-w1}
spec:
  bgp: {ipv4Address: 192.168.10.101/24}
  ipv4VXLANTunnelAddr: 172.16.158.0
  wireguard: {interfaceIPv4Address: 172.16.158.7}
status: {wireguardPublicKey: jxNeYHsHg3YYdVMNO1IfkfjKjYR7nKzdYzKStmG+cEk=}
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {wireguardEnabled: false}
";

#[test]
fn patch_merges_validates_and_get_shows_nodes_and_felix() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ds.db");
    let f = write(dir.path(), "good.yaml", GOOD);
    assert_eq!(agent(&db, &["apply", "-f", &f]).code, 0);
    let f = write(dir.path(), "nodes.yaml", NODES_AND_FELIX);
    let r = agent(&db, &["apply", "-f", &f]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // The seed article's commands.
    let r = agent(
        &db,
        &[
            "patch",
            "ippool",
            "default-ipv4-ippool",
            "-p",
            r#"{"spec":{"vxlanMode":"CrossSubnet"}}"#,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "Successfully patched 1 'IPPool' resource\n");
    let wide = agent(&db, &["get", "ippool", "-o", "wide"]).stdout;
    let row: Vec<&str> = wide.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[3..5], ["Never", "CrossSubnet"], "{wide}");
    let r = agent(
        &db,
        &[
            "patch",
            "felixconfiguration",
            "default",
            "--type=merge",
            "-p",
            r#"{"spec":{"wireguardEnabled":true}}"#,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "Successfully patched 1 'FelixConfiguration' resource\n"
    );
    let felix = agent(&db, &["get", "felixconfiguration", "default", "-o", "yaml"]).stdout;
    assert!(felix.contains("wireguardEnabled: true"), "{felix}");
    let words = |s: String| -> Vec<String> { s.split_whitespace().map(str::to_owned).collect() };
    assert_eq!(
        words(agent(&db, &["get", "felixconfiguration"]).stdout),
        ["NAME", "default"]
    );

    // Bad patches: a clear error, nothing written.
    let before = snapshot(&db);
    for (args, needle) in [
        (
            [
                "ippool",
                "default-ipv4-ippool",
                r#"{"spec":{"vxlanMode":"Sometimes"}}"#,
            ],
            "vxlanMode",
        ),
        (
            [
                "ippool",
                "default-ipv4-ippool",
                r#"{"spec":{"ipipMode":"Always"}}"#,
            ],
            "cannot both be enabled",
        ),
        (
            [
                "ippool",
                "default-ipv4-ippool",
                r#"{"spec":{"cidr":"10.0.0.0/16"}}"#,
            ],
            "immutable",
        ),
        (["ippool", "default-ipv4-ippool", "{not json"], "not JSON"),
        (["ippool", "nope", r#"{"spec":{}}"#], "does not exist"),
        (
            [
                "ippool",
                "default-ipv4-ippool",
                r#"{"metadata":{"name":"x"}}"#,
            ],
            "metadata.name",
        ),
        (["node", "k8s-w1", "{}"], "patchable kinds"),
    ] {
        let r = agent(&db, &["patch", args[0], args[1], "-p", args[2]]);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stdout);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
        assert_eq!(snapshot(&db), before, "{args:?} changed something");
    }

    // get node: the table, -o wide, -o yaml with the agent-published fields.
    assert_eq!(
        words(agent(&db, &["get", "node"]).stdout),
        ["NAME", "k8s-m", "k8s-w1"]
    );
    let wide = agent(&db, &["get", "nodes", "-o", "wide"]).stdout;
    let lines: Vec<Vec<&str>> = wide
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["NAME", "ASN", "IPV4", "IPV6"],
            vec!["k8s-m", "(64512)", "198.51.100.10/24"],
            vec!["k8s-w1", "(64512)", "192.168.10.101/24"]
        ]
    );
    let yaml = agent(&db, &["get", "node", "k8s-w1", "-o", "yaml"]).stdout;
    for field in [
        "ipv4Address: 192.168.10.101/24",
        "ipv4VXLANTunnelAddr: 172.16.158.0",
        "interfaceIPv4Address: 172.16.158.7",
        "wireguardPublicKey: jxNeYHsHg3YYdVMNO1IfkfjKjYR7nKzdYzKStmG+cEk=",
    ] {
        assert!(yaml.contains(field), "{field}:\n{yaml}");
    }
    let missing = agent(&db, &["get", "node", "k8s-w9"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("Node(k8s-w9)"),
        "{}",
        missing.stderr
    );
}

const BGP_GOOD: &str = "\
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  nodeToNodeMeshEnabled: true
  asNumber: 64512
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: rack1-tor
spec:
  nodeSelector: all()
  peerIP: 198.51.100.1
  asNumber: 64513
";

fn bgp_snapshot(db: &Path) -> String {
    let a = agent(db, &["get", "bgpconfiguration", "-o", "yaml"]).stdout;
    let b = agent(db, &["get", "bgppeer", "-o", "yaml"]).stdout;
    format!("{a}{b}{}", snapshot(db))
}

/// BGPConfiguration and BGPPeer are applied and shown; invalid ones (AS out of
/// range, a bad peerIP, a bad selector, a second peer with the same address
/// for a node) are refused with the resource and the field named, and
/// nothing of the input is applied.
#[test]
fn bgp_resources_are_applied_and_invalid_ones_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ds.db");
    let base = write(dir.path(), "good.yaml", GOOD);
    assert_eq!(agent(&db, &["apply", "-f", &base]).code, 0);
    let f = write(dir.path(), "bgp.yaml", BGP_GOOD);
    let r = agent(&db, &["apply", "-f", &f]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("BGPConfiguration default created"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("BGPPeer rack1-tor created"),
        "{}",
        r.stdout
    );
    let peers = agent(&db, &["get", "bgppeer"]).stdout;
    let row: Vec<&str> = peers.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..2], ["rack1-tor", "198.51.100.1"], "{peers}");
    assert_eq!(row.last(), Some(&"64513"), "{peers}");
    let cfg = agent(&db, &["get", "bgpconfiguration"]).stdout;
    let row: Vec<&str> = cfg.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, ["default", "Info", "true", "64512"], "{cfg}");

    let before = bgp_snapshot(&db);
    // Each bad input carries a good new pool first: it must not be applied.
    let pool = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: extra}\n\
                spec: {cidr: 10.77.0.0/16}\n---\n";
    let peer = |name: &str, spec: &str| {
        format!(
            "{pool}apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: {name}}}\nspec: {spec}\n"
        )
    };
    let cases = [
        (
            "as-range",
            peer("tor", "{peerIP: 198.51.100.1, asNumber: 4294967296}"),
            "document 1: spec.asNumber",
        ),
        (
            "as-zero",
            format!(
                "{pool}apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {{name: default}}\nspec: {{asNumber: 0}}\n"
            ),
            "spec.asNumber",
        ),
        (
            "peer-ip",
            peer("tor", "{peerIP: 198.51.100.300, asNumber: 64513}"),
            "document 1: spec.peerIP: BGPPeer tor",
        ),
        (
            "selector",
            peer(
                "tor",
                "{nodeSelector: \"kubernetes.io/hostname ==\", peerIP: 198.51.100.1, asNumber: 64513}",
            ),
            "document 1: spec.nodeSelector: BGPPeer tor",
        ),
        (
            "node-as",
            format!(
                "{pool}apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: k8s-m}}\nspec: {{bgp: {{ipv4Address: 198.51.100.10/24, asNumber: 0}}}}\n"
            ),
            "document 1: spec.bgp.asNumber: Node k8s-m",
        ),
        (
            "duplicate",
            peer(
                "rack1-again",
                "{node: k8s-m, peerIP: 198.51.100.1, asNumber: 64513}",
            ),
            "document 1: spec.peerIP: BGPPeer rack1-again and BGPPeer rack1-tor both peer node k8s-m with 198.51.100.1",
        ),
    ];
    for (name, text, want) in cases {
        let f = write(dir.path(), &format!("{name}.yaml"), &text);
        let r = agent(&db, &["apply", "-f", &f]);
        assert_ne!(r.code, 0, "{name}: refused");
        assert!(r.stderr.contains(want), "{name}: {}", r.stderr);
        assert_eq!(bgp_snapshot(&db), before, "{name}: nothing applied");
    }
}
