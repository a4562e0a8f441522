//! The calinet CNI plugin beside the agents (root), as Calico's CNI plugin
//! runs beside Felix: containers ADDed by the plugin (executed as a runtime
//! executes it) get routes to other nodes and policy from the agents, survive
//! an agent restart untouched, and vanish cleanly on DEL.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use calinet_lab::cli::UpArgs;
use calinet_lab::cluster::RunningLab;
use calinet_lab::state::{LabPod, Mode};

/// A binary cargo built next to `calinet-lab` (in `target/<profile>/`).
fn sibling_bin(name: &str, package: &str) -> PathBuf {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_calinet-lab")).with_file_name(name);
    assert!(
        bin.is_file(),
        "{} is missing: build it with cargo build -p {package} \
         (cargo test -p calinet-lab -p calinet-agent -p calinet-cni builds it too)",
        bin.display()
    );
    bin
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out waiting until {what}");
}

/// Runs the plugin for `container` (pod `default/<container>`) in the node's
/// namespace, as a runtime does; returns its stdout, panicking on failure.
fn cni(lab: &RunningLab, command: &str, node: &str, container: &str, netns: &str) -> String {
    let n = lab.state.nodes.iter().find(|n| n.name == node).unwrap();
    let node_ns = testlab::Netns::existing(&n.netns).unwrap().path();
    let config = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"calinet","mtu":1400,
            "nodename":"{node}","datastore_path":"{}",
            "ipam":{{"type":"calinet-ipam","ipv4_pools":["{}"]}}}}"#,
        lab.state.datastore.display(),
        lab.state.pool
    );
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", node_ns.display()))
        .arg(sibling_bin("calinet", "calinet-cni"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"),
        )
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command} {container}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn host_ifindex(lab: &RunningLab, node: &str, container: &str) -> Option<u32> {
    let n = lab.state.nodes.iter().find(|n| n.name == node).unwrap();
    let ifname = calinet_route::IfName::calico_workload("default", container).to_string();
    testlab::Netns::existing(&n.netns)
        .unwrap()
        .link(&ifname)
        .unwrap()
        .map(|l| l.ifindex)
}

fn handle_held(lab: &RunningLab, container: &str) -> bool {
    let h = format!("k8s-pod-network.{container}");
    lab.view()
        .unwrap()
        .ipam
        .handles
        .iter()
        .any(|x| x.handle_id == h)
}

fn wep_of(lab: &RunningLab, container: &str) -> bool {
    lab.view()
        .unwrap()
        .weps
        .values()
        .any(|(w, _)| w.spec.container_id.as_deref() == Some(container))
}

#[test]
fn cni_pods_beside_the_agents() {
    testlab::require!(testlab::Feature::Vxlan, testlab::Feature::Nftables);
    let cni_bin = sibling_bin("calinet", "calinet-cni");
    assert!(cni_bin.is_file());
    let dir = tempfile::tempdir().unwrap();
    let mut args = UpArgs::new(Mode::Vxlan, dir.path().join("lab"));
    args.agent_bin = Some(sibling_bin("calinet-agent", "calinet-agent"));
    let mut lab = RunningLab::up(&args).expect("lab up");
    let agent_pod = lab.state.pods[0].clone();
    let nodes: Vec<String> = lab.state.nodes.iter().map(|n| n.name.clone()).collect();
    let (a, b) = (nodes[0].clone(), nodes[nodes.len() - 1].clone());
    assert_ne!(a, b);

    // The sandboxes, as a runtime makes them (no Pod resource: only the
    // plugin knows them, through the WorkloadEndpoints it writes).
    let sandboxes = testlab::Lab::new("labcni").unwrap();
    let (sa, sb) = (
        sandboxes.pod("cni-a").unwrap(),
        sandboxes.pod("cni-b").unwrap(),
    );
    cni(&lab, "ADD", &a, "cni-a", sa.name());
    cni(&lab, "ADD", &b, "cni-b", sb.name());
    for (name, node, ns) in [("cni-a", &a, &sa), ("cni-b", &b, &sb)] {
        lab.state.pods.push(LabPod {
            name: name.into(),
            node: node.clone(),
            netns: ns.name().to_owned(),
        });
    }
    // Routes to the other node and policy (the namespace's profile) come
    // from the agents.
    eventually("cni-a reaches cni-b on another node", || {
        lab.ping_pod("cni-a", "cni-b").unwrap_or(false)
    });
    eventually("an agent's pod reaches cni-a", || {
        lab.ping_pod(&agent_pod.name, "cni-a").unwrap_or(false)
    });

    // The agents removed nothing of the plugin's, also across a restart.
    let index = host_ifindex(&lab, &a, "cni-a").expect("cni-a's host veth");
    lab.restart_agent(&a).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    eventually("cni-a still reaches cni-b after the restart", || {
        lab.ping_pod("cni-a", "cni-b").unwrap_or(false)
    });
    assert_eq!(host_ifindex(&lab, &a, "cni-a"), Some(index));
    assert!(handle_held(&lab, "cni-a"));
    assert!(wep_of(&lab, "cni-a"));

    // DEL: interface, address and endpoint gone.
    cni(&lab, "DEL", &a, "cni-a", sa.name());
    assert_eq!(host_ifindex(&lab, &a, "cni-a"), None);
    assert!(sa.link("eth0").unwrap().is_none());
    assert!(!handle_held(&lab, "cni-a"));
    assert!(!wep_of(&lab, "cni-a"));
    assert!(host_ifindex(&lab, &b, "cni-b").is_some(), "cni-b untouched");
    cni(&lab, "DEL", &b, "cni-b", sb.name());
    assert!(!handle_held(&lab, "cni-b") && !wep_of(&lab, "cni-b"));
    lab.state.pods.retain(|p| !p.name.starts_with("cni-"));
}
