//! The lab's processes: one `calinet-agent run` per node and the optional
//! etcd, started detached inside their namespaces through the test lab's
//! process helpers, found again by pid (recorded in the state file) and
//! stopped by pid.

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testlab::{DetachedCommand, Netns};

use crate::error::{Error, Result};
use crate::state::{LabAgent, LabEtcd, LabNode, LabState};

/// The `calinet-agent` binary next to this executable (cargo builds both
/// into `target/<profile>/`).
pub fn agent_beside_self() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        what: "find this executable",
        path: "/proc/self/exe".into(),
        source,
    })?;
    let agent = exe.with_file_name("calinet-agent");
    if agent.is_file() {
        Ok(agent)
    } else {
        Err(Error::Usage(format!(
            "the agent binary {} is missing: the lab runs it on every node; \
             build it with cargo build -p calinet-agent",
            agent.display()
        )))
    }
}

/// While this file exists, the agent of `node` sees a datastore outage.
pub fn fault_file(state: &LabState, node: &str) -> PathBuf {
    state.state_dir.join(format!("datastore-outage-{node}"))
}

/// The WireGuard device: Calico's name on every node. Each node's agent (and
/// the `wireguard-go` it starts) runs in a mount namespace of its own where
/// [`wg_run_dir`] is mounted on `/run/wireguard`, so the nodes' control
/// sockets (`/var/run/wireguard/<name>.sock`) do not collide.
pub const WG_IFNAME: &str = "wireguard.cali";

/// Where `node`'s WireGuard control socket lives (mounted on `/run/wireguard`
/// for its agent).
pub fn wg_run_dir(state: &LabState, node: &str) -> PathBuf {
    state.state_dir.join(format!("wireguard-{node}"))
}

/// `unshare -m --propagation slave sh -c SCRIPT DIR PROGRAM ARGS...`: runs
/// PROGRAM in a mount namespace of its own with DIR mounted on
/// /run/wireguard. Slave, not private: mounts made later outside (the
/// `/run/netns/*` of pods created after the agent started) must still reach
/// it, while its own mount stays inside (and vanishes with it).
const PRIVATE_WG_DIR: [&str; 6] = [
    "-m",
    "--propagation",
    "slave",
    "sh",
    "-c",
    "mount --bind \"$0\" /run/wireguard && exec \"$@\"",
];

/// Creates `node`'s WireGuard directory and the mount point.
fn prepare_wg_dir(state: &LabState, node: &str) -> Result<PathBuf> {
    let dir = wg_run_dir(state, node);
    for d in [dir.as_path(), Path::new("/run/wireguard")] {
        std::fs::create_dir_all(d).map_err(|source| Error::Io {
            what: "create the WireGuard socket directory",
            path: d.to_path_buf(),
            source,
        })?;
    }
    Ok(dir)
}

/// Runs `wg ARGS` in `node`'s namespaces (network and WireGuard socket
/// directory); returns its output.
pub fn wg(state: &LabState, node: &LabNode, args: &[&str]) -> Result<String> {
    let dir = prepare_wg_dir(state, &node.name)?;
    let dir = dir.to_string_lossy();
    let mut argv = vec!["netns", "exec", &node.netns, "unshare"];
    argv.extend(PRIVATE_WG_DIR);
    argv.extend([dir.as_ref(), "wg"]);
    argv.extend(args);
    Ok(testlab::cmd::run("ip", &argv)?)
}

/// `--datastore FILE` or `--etcd-endpoints URL`.
fn datastore_args(state: &LabState) -> Vec<OsString> {
    match &state.etcd {
        Some(e) => vec!["--etcd-endpoints".into(), e.endpoint.clone().into()],
        None => vec!["--datastore".into(), state.datastore.as_os_str().to_owned()],
    }
}

/// Starts `calinet-agent run` for `node` in its namespace; its log is
/// appended to, so a restarted agent's log follows its predecessor's.
pub fn spawn_agent(state: &LabState, node: &LabNode) -> Result<LabAgent> {
    let log = state.state_dir.join(format!("agent-{}.log", node.name));
    let wg_dir = prepare_wg_dir(state, &node.name)?;
    // `unshare` and `sh` exec in place: the pid is the agent's.
    let child = DetachedCommand::new("unshare", &log)
        .in_netns(&Netns::existing(&node.netns)?)
        .args(PRIVATE_WG_DIR)
        .arg(wg_dir)
        .arg(&state.agent_bin)
        .args(datastore_args(state))
        .args(["run", "--node", &node.name, "--poll-ms", "300"])
        // Frequent full resyncs, so the lab exercises them (Calico: 90 s).
        .args(["--resync-secs", "8"])
        .args(["--wireguard-ifname", WG_IFNAME])
        .arg("--bgp-runtime-dir")
        .arg(crate::bgp::node_bird_dir(state, &node.name))
        .arg("--datastore-fault-file")
        .arg(fault_file(state, &node.name))
        .spawn()?;
    Ok(LabAgent {
        node: node.name.clone(),
        pid: child.pid(),
        log,
    })
}

/// Whether `pid` is a live process whose command line mentions `program`
/// (a recorded pid may since belong to someone else).
pub fn is_running(pid: u32, program: &str) -> bool {
    testlab::is_alive(pid) && testlab::cmdline(pid).iter().any(|w| w.contains(program))
}

/// Stops an agent (SIGTERM, SIGKILL after 5 s) if the pid is still an agent.
pub fn stop_agent(agent: &LabAgent) {
    if is_running(agent.pid, "calinet-agent") {
        testlab::stop_pid(agent.pid, false, Duration::from_secs(5));
    }
}

/// Stops the `wireguard-go -f wireguard.cali` the agent of `node` started
/// (it outlives agent restarts like a kernel device would): found by its
/// exact command line and by running in the node's network namespace.
pub fn stop_wireguard_go(node: &LabNode) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(ns) = std::fs::metadata(format!("/run/netns/{}", node.netns)) else {
        return;
    };
    let want = format!("net:[{}]", ns.ino());
    for pid in testlab::pids_with_cmdline(&["wireguard-go", "-f", WG_IFNAME]) {
        let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap_or_default();
        if net.to_string_lossy() == want {
            testlab::stop_pid(pid, false, Duration::from_secs(3));
        }
    }
}

/// The lab's router address on the first segment: etcd listens there.
fn etcd_endpoint() -> String {
    let router = testlab::seed::LAN1.hosts().next().expect("a /24 has hosts");
    format!("http://{router}:2379")
}

/// Starts etcd in the router namespace (data kept in `data_dir`) and waits
/// until it answers.
pub fn spawn_etcd(state: &LabState, data_dir: &Path) -> Result<LabEtcd> {
    if !testlab::cmd::have("etcd") {
        return Err(Error::Usage(
            "--etcd: etcd is not installed (Debian: etcd-server)".into(),
        ));
    }
    let endpoint = etcd_endpoint();
    let log = state.state_dir.join("etcd.log");
    let child = DetachedCommand::new("etcd", &log)
        .in_netns(&Netns::existing(&state.router)?)
        .args(["--name", "calinet-lab", "--data-dir"])
        .arg(data_dir)
        .args(["--listen-client-urls", &endpoint])
        .args(["--advertise-client-urls", &endpoint])
        .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-cluster", "calinet-lab=http://127.0.0.1:2380"])
        .spawn()?;
    let etcd = LabEtcd {
        pid: child.pid(),
        endpoint,
        data_dir: data_dir.to_path_buf(),
    };
    let mut probe = state.clone();
    probe.etcd = Some(etcd.clone());
    let store = crate::store::open(&probe)?;
    let t0 = Instant::now();
    while store.list("/calico/").is_err() {
        if t0.elapsed() > Duration::from_secs(20) {
            stop_etcd(&etcd);
            return Err(Error::Lab(format!(
                "etcd in {} did not answer within 20 s (log {})",
                state.router,
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(etcd)
}

/// Stops the lab's etcd (its whole session: SIGTERM, SIGKILL after 10 s).
pub fn stop_etcd(etcd: &LabEtcd) {
    testlab::stop_pid(etcd.pid, true, Duration::from_secs(10));
}

/// Reads the metrics of the agent in namespace `netns` (its default port on
/// that namespace's loopback).
pub fn agent_metrics(netns: &str) -> Result<String> {
    let ns = Netns::existing(netns)?;
    let path = ns.path();
    ns.enter(|| -> std::io::Result<String> {
        let addr =
            std::net::SocketAddr::from(([127, 0, 0, 1], calinet_agent::metrics::DEFAULT_PORT));
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or(out))
    })?
    .map_err(|source| Error::Io {
        what: "read metrics of the agent in",
        path,
        source,
    })
}
