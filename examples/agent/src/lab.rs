//! The lab: the seed article's cluster in network namespaces (built with the
//! test lab's `SeedCluster`), one agent process per node sharing one SQLite
//! datastore, a pod per node, and what a user wants to see: `ipam show`, each
//! node's routes, and a connectivity matrix whose paths are *observed* with
//! `tcpdump` on the sending node's uplink, not assumed.
//!
//! `lab up` leaves the cluster running and records it in a state file
//! (`/run/calinet-lab/state.json`) so that `lab mode`, `lab status` and
//! `lab down` (other processes) can find the namespaces and agent pids.
//! `lab run` builds, prints and tears down in one go.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::cli::Cli;
use crate::datastore::{self, ClusterView, DynStore, read_view};
use crate::error::{Error, Result};
use crate::show::{self, IpamShowFlags, Output};

/// `lab ...`.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the cluster and leave it running (see `lab status`, `lab mode`, `lab down`).
    Up(UpArgs),
    /// Build the cluster, print everything, and tear it down again.
    Run(UpArgs),
    /// (Internal) what `lab up` runs in the background: builds the lab and
    /// owns it until SIGTERM (`lab down`).
    #[command(hide = true)]
    Hold(UpArgs),
    /// Switch the running cluster to another mode and show it re-converged.
    Mode {
        /// The new mode.
        #[arg(value_enum)]
        mode: Mode,
        /// The lab's state directory.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Print the running cluster: IPAM, routes, the matrix with observed paths.
    Status {
        /// The lab's state directory.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Stop the agents and remove every namespace of the running lab.
    Down {
        /// The lab's state directory.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

/// Where `lab up` records the running lab.
pub const DEFAULT_STATE_DIR: &str = "/run/calinet-lab";

/// `lab up` / `lab run` options.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// How pod traffic crosses nodes.
    #[arg(long, value_enum, default_value = "vxlan")]
    pub mode: Mode,
    /// The IP pool.
    #[arg(long, default_value = "172.16.0.0/16")]
    pub pool: ipnet::Ipv4Net,
    /// Block prefix length.
    #[arg(long, default_value_t = 24)]
    pub block_size: u8,
    /// The lab's state directory (datastore, agent logs, state file).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Seconds to wait for the cluster to converge.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The agent binary to run on each node (default: this executable).
    #[arg(long, hide = true)]
    pub agent_bin: Option<PathBuf>,
    /// Keep the cluster in etcd (run in the router namespace) instead of a
    /// SQLite file.
    #[arg(long)]
    pub etcd: bool,
}

impl UpArgs {
    /// Defaults: vxlan, 172.16.0.0/16 with /24 blocks, state in `state_dir`.
    pub fn new(mode: Mode, state_dir: PathBuf) -> Self {
        UpArgs {
            mode,
            pool: "172.16.0.0/16".parse().expect("constant"),
            block_size: 24,
            state_dir,
            timeout: 60,
            agent_bin: None,
            etcd: false,
        }
    }
}

/// The lab's networking modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `vxlanMode: Always`.
    Vxlan,
    /// `vxlanMode: CrossSubnet`: direct inside a subnet, VXLAN across.
    Crosssubnet,
    /// No encapsulation; the router learns the blocks (as BGP would teach it).
    Direct,
    /// WireGuard between nodes (`FelixConfiguration wireguardEnabled`).
    Wireguard,
    /// `ipipMode: Always` (only where the kernel has IPIP).
    Ipip,
}

impl Mode {
    fn vxlan_mode(self) -> &'static str {
        match self {
            Mode::Vxlan => "Always",
            Mode::Crosssubnet => "CrossSubnet",
            _ => "Never",
        }
    }

    fn ipip_mode(self) -> &'static str {
        match self {
            Mode::Ipip => "Always",
            _ => "Never",
        }
    }

    fn router_learns_blocks(self) -> bool {
        matches!(self, Mode::Direct)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Vxlan => "vxlan",
            Mode::Crosssubnet => "crosssubnet",
            Mode::Direct => "direct",
            Mode::Wireguard => "wireguard",
            Mode::Ipip => "ipip",
        })
    }
}

/// A node of the running lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    /// Node name.
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its address.
    pub addr: Ipv4Addr,
}

/// A pod of the running lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabPod {
    /// Pod name (namespace `default`).
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its namespace.
    pub netns: String,
}

/// An agent process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabAgent {
    /// Node.
    pub node: String,
    /// Process id (of `ip netns exec`, which execs the agent).
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
}

/// What `lab up` leaves behind for the other lab commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Every namespace, in creation order.
    pub namespaces: Vec<String>,
    /// The router (underlay) namespace.
    pub router: String,
    /// Nodes.
    pub nodes: Vec<LabNode>,
    /// The outside host.
    pub outside: LabNode,
    /// Pods.
    pub pods: Vec<LabPod>,
    /// Agents.
    pub agents: Vec<LabAgent>,
    /// The datastore file.
    pub datastore: PathBuf,
    /// Current mode.
    pub mode: Mode,
    /// The pool.
    pub pool: ipnet::Ipv4Net,
    /// Routes taught to the router (BGP stand-in), to remove on mode changes.
    #[serde(default)]
    pub router_routes: Vec<String>,
    /// The agent binary.
    pub agent_bin: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The `lab hold` process that owns the namespaces (`lab up`).
    #[serde(default)]
    pub holder: Option<u32>,
    /// The etcd server, when the lab keeps its cluster in etcd.
    #[serde(default)]
    pub etcd: Option<LabEtcd>,
}

/// The lab's etcd server (in the router namespace, reachable from every node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabEtcd {
    /// Process id (of `ip netns exec`, which execs etcd).
    pub pid: u32,
    /// Client URL.
    pub endpoint: String,
    /// Data directory (kept across restarts).
    pub data_dir: PathBuf,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn progress(step: &str) {
    println!("==> {step}");
}

fn require_root() -> Result<()> {
    if !testlab::skip::is_root() {
        return Err(Error::Usage(
            "the lab needs root: it creates network namespaces, veths and bridges \
             (run it as root, e.g. with sudo)"
                .into(),
        ));
    }
    for tool in ["ip", "tcpdump", "ping"] {
        if !testlab::cmd::have(tool) {
            return Err(Error::Usage(format!(
                "the lab needs `{tool}` (Debian: iproute2, tcpdump, iputils-ping)"
            )));
        }
    }
    Ok(())
}

fn check_mode(mode: Mode) -> Result<()> {
    match mode {
        Mode::Ipip => testlab::Feature::check(testlab::Feature::Ipip).map_err(|reason| {
            Error::Usage(format!(
                "--mode ipip: {reason}; this kernel cannot create tunl0. \
                 Use --mode vxlan, crosssubnet, direct or wireguard."
            ))
        }),
        Mode::Wireguard => testlab::Feature::check(testlab::Feature::WireguardGo)
            .map_err(|reason| Error::Usage(format!("--mode wireguard: {reason}"))),
        _ => Ok(()),
    }
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn save_state(dir: &Path, state: &LabState) -> Result<()> {
    let path = state_file(dir);
    std::fs::write(&path, serde_json::to_vec_pretty(state).expect("serialises")).map_err(|source| {
        Error::Io {
            what: "write the lab state file",
            path,
            source,
        }
    })
}

fn load_state(dir: &Path) -> Result<LabState> {
    let path = state_file(dir);
    let bytes = std::fs::read(&path).map_err(|source| Error::Io {
        what: "read the lab state file (is a lab up? `lab up` writes it)",
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
        key: path.display().to_string(),
        source,
    })
}

/// The cluster's YAML for `mode`: pool, IPAM configuration, nodes, Felix
/// configuration, and one pod per node with its sandbox's namespace.
pub fn cluster_yaml(state: &LabState, block_size: u8) -> String {
    let mut y = format!(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: default-ipv4-ippool\n\
         spec:\n  cidr: {}\n  blockSize: {block_size}\n  ipipMode: {}\n  vxlanMode: {}\n  natOutgoing: true\n  nodeSelector: all()\n",
        state.pool,
        state.mode.ipip_mode(),
        state.mode.vxlan_mode()
    );
    y.push_str(
        "---\napiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata:\n  name: default\n\
         spec:\n  strictAffinity: false\n  autoAllocateBlocks: true\n  maxBlocksPerHost: 0\n",
    );
    let _ = write!(
        y,
        "---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n  name: default\n\
         spec:\n  wireguardEnabled: {}\n",
        state.mode == Mode::Wireguard
    );
    for n in &state.nodes {
        let prefix = if testlab::seed::LAN1.contains(&n.addr) {
            testlab::seed::LAN1.prefix_len()
        } else {
            testlab::seed::LAN2.prefix_len()
        };
        let _ = write!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: {}\n  labels:\n    kubernetes.io/hostname: {}\n\
             spec:\n  bgp:\n    ipv4Address: {}/{prefix}\n",
            n.name, n.name, n.addr
        );
    }
    for p in &state.pods {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: default\n  labels:\n    app: web\n    run: {}\n\
             \x20 annotations:\n    calinet.io/netns: /run/netns/{}\nspec:\n  nodeName: {}\n  containers:\n  - name: web\n    ports:\n    - name: http\n      containerPort: 80\n",
            p.name, p.name, p.netns, p.node
        );
    }
    y
}

fn apply_text(store: &dyn calinet_ipam::Store, text: &str) -> Result<()> {
    let docs = crate::resources::parse_documents("<lab>", text)?;
    datastore::apply(store, &docs)?;
    Ok(())
}

fn spawn_agent(state: &LabState, node: &LabNode) -> Result<LabAgent> {
    let (state_dir, datastore, exe) = (&state.state_dir, &state.datastore, &state.agent_bin);
    let log = state_dir.join(format!("agent-{}.log", node.name));
    // Appended: a restarted agent's log follows its predecessor's.
    let (file, err) = append_log(&log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(exe)
        .args(datastore_args(state, datastore))
        .args(["run", "--node", &node.name, "--poll-ms", "300"])
        // Frequent full resyncs, so the lab exercises them (Calico: 90 s).
        .args(["--resync-secs", "8"])
        // wireguard-go's control sockets share /var/run/wireguard machine-wide.
        .args(["--wireguard-ifname", &wg_ifname(state, node)])
        .arg("--datastore-fault-file")
        .arg(fault_file(state, &node.name))
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        // Its own process group: it outlives `lab up`, and `lab down` stops it.
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Io {
            what: "start the agent with",
            path: "ip netns exec".into(),
            source,
        })?;
    Ok(LabAgent {
        node: node.name.clone(),
        pid: child.id(),
        log,
    })
}

/// While this file exists, the agent of `node` sees a datastore outage.
pub fn fault_file(state: &LabState, node: &str) -> PathBuf {
    state.state_dir.join(format!("datastore-outage-{node}"))
}

/// A WireGuard device name unique on the machine: `wg<pid of the lab>n<i>`.
fn wg_ifname(state: &LabState, node: &LabNode) -> String {
    let i = state
        .nodes
        .iter()
        .position(|n| n.name == node.name)
        .unwrap_or(0);
    let id: String = state
        .router
        .chars()
        .filter(char::is_ascii_digit)
        .take(9)
        .collect();
    format!("wg{id}n{i}")
}

/// Stops the `wireguard-go -f <ifname>` an agent started (it outlives agent
/// restarts like a kernel device would). Found by its exact command line.
fn stop_wireguard_go(ifname: &str) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    let want = format!("wireguard-go\0-f\0{ifname}\0");
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmdline == want.as_bytes() {
            // SAFETY: signalling the wireguard-go this lab's agent started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && e.path().exists() {
                std::thread::sleep(Duration::from_millis(50));
            }
            if e.path().exists() {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Whether `pid` is a live calinet-agent process (not a zombie).
fn is_ours(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains("calinet-agent") && !stat.contains(") Z")
}

/// Checks before `lab up` builds anything: root, a known mode, no lab already
/// up in the state directory (which is created).
fn prepare_state_dir(args: &UpArgs) -> Result<()> {
    require_root()?;
    check_mode(args.mode)?;
    if state_file(&args.state_dir).exists() {
        return Err(Error::Usage(format!(
            "a lab is already up ({} exists); run `lab down` first",
            state_file(&args.state_dir).display()
        )));
    }
    std::fs::create_dir_all(&args.state_dir).map_err(|source| Error::Io {
        what: "create the state directory",
        path: args.state_dir.clone(),
        source,
    })?;
    Ok(())
}

/// `lab up`: starts `lab hold` in the background (so the namespaces' owner
/// stays alive, and the test lab's sweep of dead owners leaves them alone),
/// follows its progress, prints its report.
fn up_in_background(args: &UpArgs) -> Result<i32> {
    prepare_state_dir(args)?;
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        what: "find the agent binary",
        path: "/proc/self/exe".into(),
        source,
    })?;
    let log_path = args.state_dir.join("hold.log");
    let log = std::fs::File::create(&log_path).map_err(|source| Error::Io {
        what: "create",
        path: log_path.clone(),
        source,
    })?;
    let err = log.try_clone().map_err(|source| Error::Io {
        what: "open",
        path: log_path.clone(),
        source,
    })?;
    let mut cmd = Command::new(&exe);
    cmd.args(["lab", "hold", "--mode", &args.mode.to_string()])
        .args(["--pool", &args.pool.to_string()])
        .args(["--block-size", &args.block_size.to_string()])
        .arg("--state-dir")
        .arg(&args.state_dir)
        .args(["--timeout", &args.timeout.to_string()]);
    if let Some(b) = &args.agent_bin {
        cmd.arg("--agent-bin").arg(b);
    }
    if args.etcd {
        cmd.arg("--etcd");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Io {
            what: "start `lab hold` from",
            path: exe.clone(),
            source,
        })?;
    let mut shown = 0;
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        for line in text[shown..].lines() {
            if line == "LAB-READY" || line.starts_with("LAB-FAILED") {
                continue;
            }
            println!("{line}");
        }
        shown = text.len();
        if text.contains("\nLAB-READY\n") {
            break;
        }
        if let Some(status) = child.try_wait().ok().flatten() {
            return Err(Error::Lab(format!(
                "the lab holder exited ({status}); see above"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let report_path = args.state_dir.join("report.txt");
    let report = std::fs::read_to_string(&report_path).map_err(|source| Error::Io {
        what: "read",
        path: report_path,
        source,
    })?;
    print!("{report}");
    println!(
        "\nlab is up (mode {}), held by pid {}; state in {}.\nNext: `calinet-agent lab mode MODE`, `lab status`, `lab down`.",
        args.mode,
        child.id(),
        state_file(&args.state_dir).display()
    );
    Ok(i32::from(report.contains("FAIL")))
}

/// `lab hold`: builds the lab, then owns it until SIGTERM / SIGINT.
fn hold(args: &UpArgs) -> Result<i32> {
    let mut lab = match RunningLab::up(args) {
        Ok(l) => l,
        Err(e) => {
            println!("LAB-FAILED: {}", crate::error::chain(&e));
            return Err(e);
        }
    };
    lab.state.holder = Some(std::process::id());
    save_state(&args.state_dir, &lab.state)?;
    let text = lab
        .report()
        .map(|r| r.text)
        .unwrap_or_else(|e| format!("report failed: {}\n", crate::error::chain(&e)));
    let path = args.state_dir.join("report.txt");
    std::fs::write(&path, text).map_err(|source| Error::Io {
        what: "write",
        path,
        source,
    })?;
    println!("LAB-READY");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "start the runtime",
            path: "tokio".into(),
            source,
        })?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| Error::Io {
                what: "install the SIGTERM handler",
                path: "signal".into(),
                source,
            })?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<(), Error>(())
    })?;
    // Mode switches by other processes changed the state file: use it.
    if let Ok(s) = load_state(&args.state_dir) {
        lab.state = s;
    }
    drop(lab);
    Ok(0)
}

/// `--datastore FILE` or `--etcd-endpoints URL`.
fn datastore_args(state: &LabState, datastore: &Path) -> Vec<std::ffi::OsString> {
    match &state.etcd {
        Some(e) => vec!["--etcd-endpoints".into(), e.endpoint.clone().into()],
        None => vec!["--datastore".into(), datastore.as_os_str().to_owned()],
    }
}

/// `log` opened for appending (created if missing), twice: a child's stdout
/// and stderr.
fn append_log(log: &Path) -> Result<(std::fs::File, std::fs::File)> {
    let io = |what| {
        move |source| Error::Io {
            what,
            path: log.to_path_buf(),
            source,
        }
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io("open the log for appending"))?;
    let err = file
        .try_clone()
        .map_err(io("duplicate the log's file handle"))?;
    Ok((file, err))
}

/// The lab's router address on the first segment: etcd listens there.
fn etcd_endpoint() -> String {
    let router = testlab::seed::LAN1.hosts().next().expect("a /24 has hosts");
    format!("http://{router}:2379")
}

/// Starts etcd in the router namespace (data kept in `data_dir`).
fn spawn_etcd(state: &LabState, data_dir: &Path) -> Result<LabEtcd> {
    if !testlab::cmd::have("etcd") {
        return Err(Error::Usage(
            "--etcd: etcd is not installed (Debian: etcd-server)".into(),
        ));
    }
    let endpoint = etcd_endpoint();
    let log = state.state_dir.join("etcd.log");
    let (file, err) = append_log(&log)?;
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &state.router,
            "etcd",
            "--name",
            "calinet-lab",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
        ])
        .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-cluster", "calinet-lab=http://127.0.0.1:2380"])
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Io {
            what: "start etcd in",
            path: state.router.clone().into(),
            source,
        })?;
    let etcd = LabEtcd {
        pid: child.id(),
        endpoint,
        data_dir: data_dir.to_path_buf(),
    };
    let mut probe = state.clone();
    probe.etcd = Some(etcd.clone());
    let store = lab_store(&probe)?;
    let t0 = Instant::now();
    while store.list("/calico/").is_err() {
        if t0.elapsed() > Duration::from_secs(20) {
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

/// Stops the lab's etcd (SIGTERM to its process group, then wait).
fn stop_etcd(etcd: &LabEtcd) {
    // SAFETY: signalling the process group of the etcd this lab started.
    unsafe { libc::kill(-(etcd.pid as i32), libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && is_alive(etcd.pid) {
        let mut status = 0;
        // SAFETY: reaps our child if it is one; WNOHANG never blocks.
        unsafe { libc::waitpid(etcd.pid as i32, &mut status, libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_alive(etcd.pid) {
        // SAFETY: as above.
        unsafe { libc::kill(-(etcd.pid as i32), libc::SIGKILL) };
    }
}

fn is_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z")
}

/// The lab's datastore as seen from this process: the SQLite file, or etcd
/// through a thread inside the router namespace (etcd listens there).
pub fn lab_store(state: &LabState) -> Result<DynStore> {
    match &state.etcd {
        None => datastore::open(&state.datastore, None),
        Some(e) => Ok(std::sync::Arc::new(NetnsStore::open(
            &state.router,
            &e.endpoint,
        )?)),
    }
}

type Job = Box<dyn FnOnce(&dyn calinet_ipam::Store) + Send>;

/// A store whose every call runs on a thread inside another network
/// namespace (with the etcd client and its runtime created there).
struct NetnsStore {
    tx: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
}

impl std::fmt::Debug for NetnsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetnsStore")
    }
}

impl NetnsStore {
    fn open(netns: &str, endpoint: &str) -> Result<Self> {
        use std::os::fd::AsRawFd as _;
        let path = Path::new("/run/netns").join(netns);
        let file = std::fs::File::open(&path).map_err(|source| Error::Io {
            what: "open namespace",
            path: path.clone(),
            source,
        })?;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let endpoint = endpoint.to_owned();
        std::thread::spawn(move || {
            // SAFETY: setns on an open namespace fd, for this thread only; the
            // etcd client's runtime threads are spawned from here and inherit it.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(std::io::Error::last_os_error().to_string()));
                return;
            }
            let store =
                match calinet_ipam::EtcdStore::connect(calinet_ipam::EtcdConfig::new([endpoint])) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(crate::error::chain(&e)));
                        return;
                    }
                };
            let _ = ready_tx.send(Ok(()));
            for job in rx {
                job(&store);
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(NetnsStore {
                tx: std::sync::Mutex::new(tx),
            }),
            Ok(Err(e)) => Err(Error::Lab(format!("etcd client in {netns}: {e}"))),
            Err(_) => Err(Error::Lab(format!("etcd client thread in {netns} died"))),
        }
    }

    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn calinet_ipam::Store) -> T + Send + 'static,
    ) -> T {
        let (rtx, rrx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move |s| {
            let _ = rtx.send(f(s));
        });
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .expect("the store thread lives as long as the store");
        rrx.recv().expect("the store thread answers every call")
    }
}

type SR<T> = std::result::Result<T, calinet_ipam::StoreError>;

impl calinet_ipam::Store for NetnsStore {
    fn get(&self, key: &str) -> SR<Option<calinet_ipam::KeyValue>> {
        let key = key.to_owned();
        self.call(move |s| s.get(&key))
    }
    fn list(&self, prefix: &str) -> SR<Vec<calinet_ipam::KeyValue>> {
        let prefix = prefix.to_owned();
        self.call(move |s| s.list(&prefix))
    }
    fn create(&self, key: &str, value: &[u8]) -> SR<calinet_ipam::Revision> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.call(move |s| s.create(&key, &value))
    }
    fn update(
        &self,
        key: &str,
        value: &[u8],
        expected: calinet_ipam::Revision,
    ) -> SR<calinet_ipam::Revision> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.call(move |s| s.update(&key, &value, expected))
    }
    fn delete(&self, key: &str, expected: calinet_ipam::Revision) -> SR<()> {
        let key = key.to_owned();
        self.call(move |s| s.delete(&key, expected))
    }
    fn txn(&self, ops: &[calinet_ipam::TxnOp]) -> SR<calinet_ipam::Revision> {
        let ops = ops.to_vec();
        self.call(move |s| s.txn(&ops))
    }
}

/// Sends SIGTERM to an agent (if the pid is still one of ours) and waits.
fn stop_agent(agent: &LabAgent) {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid)).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains("calinet-agent") {
        return;
    }
    // SAFETY: signalling a process we started (checked by its command line).
    unsafe { libc::kill(agent.pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && Path::new(&format!("/proc/{}", agent.pid)).exists() {
        let mut status = 0;
        // Reap it when it is our child (lab run); harmless otherwise.
        // SAFETY: waitpid with WNOHANG on a pid.
        unsafe { libc::waitpid(agent.pid as i32, &mut status, libc::WNOHANG) };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", agent.pid)).unwrap_or_default();
        if stat.contains(") Z") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if Path::new(&format!("/proc/{}", agent.pid)).exists() {
        // SAFETY: as above.
        unsafe { libc::kill(agent.pid as i32, libc::SIGKILL) };
    }
}

/// Builds the cluster; returns the lab (whose drop removes the namespaces) and
/// the state.
fn build(args: &UpArgs) -> Result<(testlab::Lab, LabState)> {
    prepare_state_dir(args)?;
    let datastore = args.state_dir.join("datastore.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", datastore.display()));
    }
    progress(
        "building the seed cluster: router, 198.51.100.0/24, 203.0.113.0/24, outside host 192.0.2.100",
    );
    let lab = testlab::Lab::new("calinet-lab")?;
    let seed = testlab::seed::SeedCluster::build(&lab)?;
    let mut pods = Vec::new();
    for n in &seed.nodes {
        let ns = lab.pod(&format!("pod-{}", n.name))?;
        pods.push(LabPod {
            name: format!("web-{}", n.name),
            node: n.name.clone(),
            netns: ns.name().to_owned(),
        });
    }
    let state = LabState {
        namespaces: lab
            .namespaces()
            .iter()
            .map(|n| n.name().to_owned())
            .collect(),
        router: seed.router.name().to_owned(),
        nodes: seed
            .nodes
            .iter()
            .map(|n| LabNode {
                name: n.name.clone(),
                netns: n.ns.name().to_owned(),
                addr: n.address(),
            })
            .collect(),
        outside: LabNode {
            name: "outside".into(),
            netns: seed.outside.ns.name().to_owned(),
            addr: seed.outside.address(),
        },
        pods,
        agents: Vec::new(),
        datastore,
        mode: args.mode,
        pool: args.pool,
        router_routes: Vec::new(),
        agent_bin: match &args.agent_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe().map_err(|source| Error::Io {
                what: "find the agent binary",
                path: "/proc/self/exe".into(),
                source,
            })?,
        },
        state_dir: args.state_dir.clone(),
        holder: None,
        etcd: None,
    };
    Ok((lab, state))
}

fn start(args: &UpArgs, mut state: LabState) -> Result<LabState> {
    if args.etcd {
        let data = args.state_dir.join("etcd-data");
        let etcd = spawn_etcd(&state, &data)?;
        progress(&format!(
            "etcd at {} in the router namespace (pid {}, data {})",
            etcd.endpoint,
            etcd.pid,
            data.display()
        ));
        state.etcd = Some(etcd);
        save_state(&args.state_dir, &state)?;
    }
    let where_ = match &state.etcd {
        Some(e) => format!("etcd {}", e.endpoint),
        None => state.datastore.display().to_string(),
    };
    progress(&format!(
        "datastore {where_} : pool {} /{} (mode {}), 4 nodes, 4 pods",
        state.pool, args.block_size, state.mode
    ));
    let store = lab_store(&state)?;
    apply_text(store.as_ref(), &cluster_yaml(&state, args.block_size))?;
    for n in state.nodes.clone() {
        let a = spawn_agent(&state, &n)?;
        progress(&format!(
            "agent for {} started in netns {} (pid {}, log {})",
            n.name,
            n.netns,
            a.pid,
            a.log.display()
        ));
        state.agents.push(a);
    }
    save_state(&args.state_dir, &state)?;
    converge(
        &mut state,
        store.as_ref(),
        unix_now(),
        Duration::from_secs(args.timeout),
    )?;
    save_state(&args.state_dir, &state)?;
    Ok(state)
}

/// Waits until every agent reports a converged reconcile that started after
/// `since` with every pod plumbed; teaches the router the blocks in direct mode.
fn converge(
    state: &mut LabState,
    store: &dyn calinet_ipam::Store,
    since: u64,
    timeout: Duration,
) -> Result<()> {
    progress("waiting for the agents to converge");
    let t0 = Instant::now();
    let mut last_line = String::new();
    loop {
        let view = read_view(store)?;
        let ready: Vec<&str> = state
            .nodes
            .iter()
            .filter(|n| {
                view.statuses.get(&n.name).is_some_and(|(s, _)| {
                    s.converged
                        && s.last_reconcile >= since
                        && s.endpoints == 1
                        && s.peers.len() == state.nodes.len() - 1
                        && s.peers.iter().all(|p| {
                            let peer = state.nodes.iter().find(|m| m.name == p.node);
                            peer.is_some_and(|m| path_matches(state.mode, n, m, &p.path))
                        })
                })
            })
            .map(|n| n.name.as_str())
            .collect();
        let line = format!(
            "    {}/{} nodes converged ({}), {} workload endpoints, {:.1}s",
            ready.len(),
            state.nodes.len(),
            ready.join(", "),
            view.weps.len(),
            t0.elapsed().as_secs_f64()
        );
        if line.split(", ").take(2).collect::<String>() != last_line {
            println!("{line}");
            last_line = line.split(", ").take(2).collect();
        }
        if ready.len() == state.nodes.len() {
            teach_router(state, &view)?;
            return Ok(());
        }
        if t0.elapsed() > timeout {
            let mut detail = String::new();
            for n in state
                .nodes
                .iter()
                .filter(|n| !ready.contains(&n.name.as_str()))
            {
                let status = view.statuses.get(&n.name).map(|(s, _)| s);
                let _ = writeln!(detail, "  {}: status {status:?}", n.name);
                if let Some(a) = state.agents.iter().find(|a| a.node == n.name) {
                    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(4).collect();
                    for l in tail.into_iter().rev() {
                        let _ = writeln!(detail, "    log: {l}");
                    }
                }
            }
            return Err(Error::Lab(format!(
                "not converged after {timeout:?}: only {ready:?} are.\n{detail}"
            )));
        }
        for a in &state.agents {
            if !Path::new(&format!("/proc/{}", a.pid)).exists() {
                let log = std::fs::read_to_string(&a.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(Error::Lab(format!(
                    "the agent of {} exited; last log lines:\n{}",
                    a.node,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether an agent's reported path from `a` to `b` is what `mode` asks for.
fn path_matches(mode: Mode, a: &LabNode, b: &LabNode, path: &str) -> bool {
    let lan1 = testlab::seed::LAN1;
    let same_subnet = lan1.contains(&a.addr) == lan1.contains(&b.addr);
    match mode {
        Mode::Vxlan => path == "vxlan",
        Mode::Crosssubnet => path == if same_subnet { "direct" } else { "vxlan" },
        Mode::Direct => path == "direct",
        Mode::Wireguard => path == "wireguard (underlying direct)",
        Mode::Ipip => path == "ipip",
    }
}

/// In direct (and WireGuard) mode the router must know where each block lives,
/// as BGP would teach it; in the other modes it must not need to.
fn teach_router(state: &mut LabState, view: &ClusterView) -> Result<()> {
    for r in std::mem::take(&mut state.router_routes) {
        let _ = testlab::cmd::run("ip", &["-n", &state.router, "route", "del", &r]);
    }
    if !state.mode.router_learns_blocks() {
        return Ok(());
    }
    for (b, _) in &view.ipam.blocks {
        let Some(owner) = b.affinity().and_then(|a| a.strip_prefix("host:")) else {
            continue;
        };
        let Some(n) = state.nodes.iter().find(|n| n.name == owner) else {
            continue;
        };
        let dst = b.cidr().to_string();
        testlab::cmd::run(
            "ip",
            &[
                "-n",
                &state.router,
                "route",
                "replace",
                &dst,
                "via",
                &n.addr.to_string(),
            ],
        )?;
        state.router_routes.push(dst);
    }
    progress(&format!(
        "router taught {} block routes (what BGP would announce)",
        state.router_routes.len()
    ));
    Ok(())
}

/// Everything the lab prints about the running cluster.
pub fn report(state: &LabState) -> Result<LabReport> {
    let store = lab_store(state)?;
    let view = read_view(store.as_ref())?;
    let mut out = String::new();
    let _ = writeln!(out, "\n$ calinet-agent ipam show --show-blocks");
    out.push_str(&show::ipam_show(
        &view,
        IpamShowFlags {
            blocks: true,
            ..IpamShowFlags::default()
        },
        Output::Table,
    )?);
    let _ = writeln!(out, "\n$ calinet-agent get ippool -o wide");
    out.push_str(&show::get_ippool(&view, Output::Wide)?);
    let _ = writeln!(out, "\n$ calinet-agent get workloadendpoint");
    out.push_str(&show::get_weps(&view, Some("default"), Output::Table)?);
    let _ = writeln!(out, "\n$ calinet-agent node status --node k8s-m");
    out.push_str(&show::node_status(&view, "k8s-m", unix_now(), 15)?);
    for n in &state.nodes {
        let _ = writeln!(out, "\n[{}]$ ip route", n.name);
        out.push_str(&testlab::cmd::run("ip", &["-n", &n.netns, "route"])?);
    }
    if state.mode == Mode::Wireguard
        && let Some(n) = state.nodes.first()
    {
        // `wg show`, not `showconf`: it never prints the private key.
        let ifname = wg_ifname(state, n);
        let _ = writeln!(out, "\n[{}]$ wg show {ifname}", n.name);
        out.push_str(&testlab::cmd::run(
            "ip",
            &["netns", "exec", &n.netns, "wg", "show", &ifname],
        )?);
        let _ = writeln!(out, "\n[{}]$ ip rule; ip route show table 1", n.name);
        out.push_str(&testlab::cmd::run("ip", &["-n", &n.netns, "rule"])?);
        out.push_str(&testlab::cmd::run(
            "ip",
            &["-n", &n.netns, "route", "show", "table", "1"],
        )?);
    }
    let probes = probe_all(state, &view)?;
    let _ = writeln!(
        out,
        "\nconnectivity (ping) and the path observed on the sender's uplink (tcpdump):"
    );
    out.push_str(&render_matrix(&probes));
    Ok(LabReport { text: out, probes })
}

/// The lab's printout and the probe results.
#[derive(Debug, Clone)]
pub struct LabReport {
    /// Human-readable report.
    pub text: String,
    /// One entry per (source pod, target).
    pub probes: Vec<Probe>,
}

/// How traffic was seen on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservedPath {
    /// Pod addresses in plain sight on the uplink.
    Direct,
    /// Inside `VXLAN vni 4096` between node addresses.
    Vxlan,
    /// IP-in-IP between node addresses.
    Ipip,
    /// Only UDP 51820 between node addresses (encrypted).
    Wireguard,
    /// Leaving with the node's address as source (natOutgoing).
    Masqueraded,
    /// Nothing seen on the uplink.
    NotSeen,
}

impl std::fmt::Display for ObservedPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObservedPath::Direct => "direct",
            ObservedPath::Vxlan => "VXLAN",
            ObservedPath::Ipip => "IPIP",
            ObservedPath::Wireguard => "WireGuard",
            ObservedPath::Masqueraded => "direct+SNAT",
            ObservedPath::NotSeen => "not seen",
        })
    }
}

/// One probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    /// Source pod.
    pub from: String,
    /// Target (pod name or `outside`).
    pub to: String,
    /// Target address.
    pub addr: IpAddr,
    /// Ping answered.
    pub reachable: bool,
    /// What the capture showed.
    pub path: ObservedPath,
}

fn pod_addr(view: &ClusterView, pod: &str) -> Option<IpAddr> {
    view.weps
        .values()
        .find(|(w, _)| w.spec.pod == pod)
        .and_then(|(w, _)| w.spec.ip_networks.first().map(|n| n.addr()))
}

/// Pings every target from every pod, capturing on the sender's uplink.
pub fn probe_all(state: &LabState, view: &ClusterView) -> Result<Vec<Probe>> {
    let mut targets: Vec<(String, IpAddr, Option<&LabNode>)> = Vec::new();
    for p in &state.pods {
        let addr = pod_addr(view, &p.name)
            .ok_or_else(|| Error::Lab(format!("pod {} has no address yet", p.name)))?;
        targets.push((
            p.name.clone(),
            addr,
            state.nodes.iter().find(|n| n.name == p.node),
        ));
    }
    targets.push(("outside".into(), IpAddr::V4(state.outside.addr), None));
    let mut probes = Vec::new();
    for p in &state.pods {
        let node = state
            .nodes
            .iter()
            .find(|n| n.name == p.node)
            .ok_or_else(|| Error::Lab(format!("pod {} on unknown node {}", p.name, p.node)))?;
        let src = pod_addr(view, &p.name)
            .ok_or_else(|| Error::Lab(format!("pod {} has no address yet", p.name)))?;
        for (to, addr, dst_node) in &targets {
            if *to == p.name {
                continue;
            }
            let cap = Capture::start(
                &node.netns,
                "eth0",
                "icmp or udp port 4789 or udp port 51820 or ip proto 4",
            )?;
            let reachable = ping(&p.netns, *addr);
            let lines = cap.stop()?;
            let path = classify(&lines, src, *addr, node.addr, dst_node.map(|n| n.addr));
            probes.push(Probe {
                from: p.name.clone(),
                to: to.clone(),
                addr: *addr,
                reachable,
                path,
            });
        }
    }
    Ok(probes)
}

/// Reads a capture of the sender's uplink: which way did `src -> dst` go?
pub fn classify(
    lines: &[String],
    src: IpAddr,
    dst: IpAddr,
    src_node: Ipv4Addr,
    dst_node: Option<Ipv4Addr>,
) -> ObservedPath {
    let inner = format!("{src} > {dst}: ICMP echo request");
    for (i, l) in lines.iter().enumerate() {
        if l.contains(&inner) {
            let outer = i.checked_sub(1).map(|j| lines[j].as_str()).unwrap_or("");
            // tcpdump prints IP-in-IP on one line: `IP a > b: IP src > dst: ICMP ...`.
            let before = l.find(&inner).map_or("", |pos| &l[..pos]);
            let ipip = before.contains(" > ");
            return if outer.contains("VXLAN") || l.contains("VXLAN") {
                ObservedPath::Vxlan
            } else if ipip {
                ObservedPath::Ipip
            } else {
                ObservedPath::Direct
            };
        }
    }
    if let Some(dn) = dst_node {
        let wg = format!("{src_node}.");
        let to = format!("> {dn}.51820");
        if lines
            .iter()
            .any(|l| l.contains(&wg) && l.contains(&to) && l.contains("UDP"))
        {
            return ObservedPath::Wireguard;
        }
    }
    if lines
        .iter()
        .any(|l| l.contains(&format!("{src_node} > {dst}: ICMP echo request")))
    {
        return ObservedPath::Masqueraded;
    }
    ObservedPath::NotSeen
}

/// The matrix: rows are sources, columns targets, each cell reachability and
/// the observed path.
pub fn render_matrix(probes: &[Probe]) -> String {
    let mut sources: Vec<&str> = Vec::new();
    let mut targets: Vec<&str> = Vec::new();
    for p in probes {
        if !sources.contains(&p.from.as_str()) {
            sources.push(&p.from);
        }
        if !targets.contains(&p.to.as_str()) {
            targets.push(&p.to);
        }
    }
    // Targets in source order, the outside host last.
    targets.sort_by_key(|t| sources.iter().position(|s| s == t).unwrap_or(usize::MAX));
    let cell = |from: &str, to: &str| -> String {
        match probes.iter().find(|p| p.from == from && p.to == to) {
            None => "-".into(),
            Some(p) if p.reachable => format!("ok {}", p.path),
            Some(p) => format!("FAIL ({})", p.path),
        }
    };
    let mut header = vec!["from \\ to".to_owned()];
    header.extend(targets.iter().map(|t| (*t).to_owned()));
    let mut rows = vec![header];
    for s in &sources {
        let mut row = vec![(*s).to_owned()];
        row.extend(targets.iter().map(|t| cell(s, t)));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let addrs: BTreeMap<&str, IpAddr> = probes.iter().map(|p| (p.to.as_str(), p.addr)).collect();
    let legend: Vec<String> = addrs.iter().map(|(n, a)| format!("{n}={a}")).collect();
    let _ = writeln!(out, "({})", legend.join(", "));
    out
}

fn ping(netns: &str, addr: IpAddr) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", netns, "ping", "-n", "-q", "-c", "1", "-i", "0.2", "-w", "2",
        ])
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running `tcpdump` in a namespace.
struct Capture {
    child: Child,
}

impl Capture {
    fn start(netns: &str, interface: &str, filter: &str) -> Result<Self> {
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", netns, "tcpdump", "-i", interface, "-nn", "-l",
            ])
            .args(["--immediate-mode", filter])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Io {
                what: "start tcpdump in",
                path: netns.into(),
                source,
            })?;
        // Ready once tcpdump says it listens.
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                    let _ = std::io::copy(&mut r, &mut std::io::sink());
                    return;
                }
                line.clear();
            }
        });
        if rx.recv_timeout(Duration::from_secs(5)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Lab(format!(
                "tcpdump on {interface} in {netns} did not start"
            )));
        }
        Ok(Capture { child })
    }

    fn stop(mut self) -> Result<Vec<String>> {
        std::thread::sleep(Duration::from_millis(150));
        // SAFETY: SIGINT to our own child makes tcpdump flush and exit.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        let _ = self.child.wait();
        Ok(out.lines().map(str::to_owned).collect())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tears a lab down from its state: agents, then namespaces, then the directory.
pub fn down(state_dir: &Path) -> Result<()> {
    let state = load_state(state_dir)?;
    if let Some(pid) = state.holder
        && is_ours(pid)
    {
        // The holder tears everything down itself on SIGTERM.
        // SAFETY: signalling the `lab hold` process this lab started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && is_ours(pid) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !state_file(state_dir).exists() {
            return Ok(());
        }
    }
    for a in &state.agents {
        stop_agent(a);
    }
    for n in &state.nodes {
        stop_wireguard_go(&wg_ifname(&state, n));
    }
    if let Some(e) = &state.etcd {
        stop_etcd(e);
    }
    for ns in state.namespaces.iter().rev() {
        let _ = testlab::cmd::run("ip", &["netns", "del", ns]);
    }
    let _ = std::fs::remove_dir_all(state_dir);
    Ok(())
}

/// Switches the running lab to `mode` and waits for it to re-converge.
pub fn switch_mode(state_dir: &Path, mode: Mode) -> Result<LabState> {
    require_root()?;
    check_mode(mode)?;
    let mut state = load_state(state_dir)?;
    let store = lab_store(&state)?;
    let view = read_view(store.as_ref())?;
    let block_size = view
        .ipam
        .pools
        .first()
        .map(calinet_ipam::IpPool::block_size)
        .unwrap_or(24);
    progress(&format!("switching the lab from {} to {mode}", state.mode));
    state.mode = mode;
    let since = unix_now();
    apply_text(store.as_ref(), &cluster_yaml(&state, block_size))?;
    converge(&mut state, store.as_ref(), since, Duration::from_secs(60))?;
    save_state(state_dir, &state)?;
    Ok(state)
}

/// A lab built by this process. Dropping it stops the agents and removes the
/// namespaces and the state directory.
#[derive(Debug)]
pub struct RunningLab {
    lab: Option<testlab::Lab>,
    known: std::sync::Mutex<BTreeMap<String, IpAddr>>,
    /// The lab's state (also in its state file).
    pub state: LabState,
}

impl RunningLab {
    /// Builds the cluster, starts the agents, waits for convergence.
    pub fn up(args: &UpArgs) -> Result<RunningLab> {
        let (lab, state) = build(args)?;
        save_state(&args.state_dir, &state)?;
        let mut running = RunningLab {
            lab: Some(lab),
            known: std::sync::Mutex::default(),
            state,
        };
        match start(args, running.state.clone()) {
            Ok(s) => running.state = s,
            Err(e) => {
                // Agents started before the failure are in the state file.
                if let Ok(s) = load_state(&args.state_dir) {
                    running.state.agents = s.agents;
                }
                return Err(e);
            }
        }
        Ok(running)
    }

    /// What the lab prints, with probes.
    pub fn report(&self) -> Result<LabReport> {
        let r = report(&self.state)?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for p in &r.probes {
            known.insert(p.to.clone(), p.addr);
        }
        Ok(r)
    }

    /// Switches the mode and waits for the agents to re-converge.
    pub fn switch_mode(&mut self, mode: Mode) -> Result<()> {
        self.state = switch_mode(&self.state.state_dir, mode)?;
        Ok(())
    }

    /// Stops the agent of `node` (SIGTERM) and starts a new one.
    pub fn restart_agent(&mut self, node: &str) -> Result<()> {
        let i = self
            .state
            .agents
            .iter()
            .position(|a| a.node == node)
            .ok_or_else(|| Error::Lab(format!("no agent for node {node}")))?;
        stop_agent(&self.state.agents[i]);
        let n = self
            .state
            .nodes
            .iter()
            .find(|n| n.name == node)
            .cloned()
            .ok_or_else(|| Error::Lab(format!("no node {node}")))?;
        self.state.agents[i] = spawn_agent(&self.state, &n)?;
        save_state(&self.state.state_dir, &self.state)
    }

    /// The Prometheus text of `node`'s agent.
    pub fn metrics(&self, node: &str) -> Result<String> {
        let n = self
            .state
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| Error::Lab(format!("no node {node}")))?;
        agent_metrics(&n.netns)
    }

    /// Applies YAML to the lab's datastore (as `apply -f` does).
    pub fn apply(&self, yaml: &str) -> Result<()> {
        let store = lab_store(&self.state)?;
        apply_text(store.as_ref(), yaml)
    }

    /// Deletes the resources named in YAML (as `delete -f` does).
    pub fn delete(&self, yaml: &str) -> Result<()> {
        let store = lab_store(&self.state)?;
        for d in crate::resources::parse_documents("<lab>", yaml)? {
            datastore::delete_if_present(store.as_ref(), &d.resource.key_value().0)?;
        }
        Ok(())
    }

    /// The datastore's current view.
    pub fn view(&self) -> Result<ClusterView> {
        let store = lab_store(&self.state)?;
        read_view(store.as_ref())
    }

    /// Adds pod `name` on `node` (a new sandbox namespace and its Pod resource);
    /// returns the Pod YAML (to delete it later).
    pub fn add_pod(&mut self, name: &str, node: &str) -> Result<String> {
        let lab = self
            .lab
            .as_ref()
            .ok_or_else(|| Error::Lab("the lab is no longer owned by this process".into()))?;
        let ns = lab.pod(&format!("pod-{name}"))?;
        self.state.namespaces.push(ns.name().to_owned());
        let pod = LabPod {
            name: name.to_owned(),
            node: node.to_owned(),
            netns: ns.name().to_owned(),
        };
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{run: {name}}}\n  annotations:\n    calinet.io/netns: /run/netns/{}\nspec:\n  nodeName: {node}\n",
            pod.netns
        );
        self.state.pods.push(pod);
        save_state(&self.state.state_dir, &self.state)?;
        self.apply(&yaml)?;
        Ok(yaml)
    }

    /// Removes a pod added with [`RunningLab::add_pod`] from the datastore and
    /// from the lab's pod list (its namespace goes with the lab).
    pub fn remove_pod(&mut self, name: &str, yaml: &str) -> Result<()> {
        self.delete(yaml)?;
        self.state.pods.retain(|p| p.name != name);
        save_state(&self.state.state_dir, &self.state)
    }

    /// Starts or ends a datastore outage for the agent of `node`.
    pub fn datastore_outage(&self, node: &str, on: bool) -> Result<()> {
        let f = fault_file(&self.state, node);
        let r = if on {
            std::fs::write(&f, b"outage\n")
        } else {
            std::fs::remove_file(&f)
        };
        r.map_err(|source| Error::Io {
            what: "toggle the outage marker",
            path: f,
            source,
        })
    }

    /// Stops (`false`) or restarts (`true`) the lab's etcd, keeping its data.
    pub fn etcd_running(&mut self, running: bool) -> Result<()> {
        let etcd = self
            .state
            .etcd
            .clone()
            .ok_or_else(|| Error::Lab("this lab does not use etcd".into()))?;
        if running {
            self.state.etcd = Some(spawn_etcd(&self.state, &etcd.data_dir)?);
        } else {
            stop_etcd(&etcd);
        }
        save_state(&self.state.state_dir, &self.state)
    }

    /// Whether pod `from` gets an answer from pod `to` (one ping, 2 s).
    pub fn ping_pod(&self, from: &str, to: &str) -> Result<bool> {
        // While the datastore is down, the addresses last read are used.
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(view) = self.view() {
            for (w, _) in view.weps.values() {
                if let Some(n) = w.spec.ip_networks.first() {
                    known.insert(w.spec.pod.clone(), n.addr());
                }
            }
        }
        let src = self
            .state
            .pods
            .iter()
            .find(|p| p.name == from)
            .ok_or_else(|| Error::Lab(format!("no pod {from}")))?;
        let addr = *known
            .get(to)
            .ok_or_else(|| Error::Lab(format!("pod {to} has no address")))?;
        Ok(ping(&src.netns, addr))
    }
}

impl Drop for RunningLab {
    fn drop(&mut self) {
        for a in &self.state.agents {
            stop_agent(a);
        }
        for n in &self.state.nodes {
            stop_wireguard_go(&wg_ifname(&self.state, n));
        }
        if let Some(e) = &self.state.etcd {
            stop_etcd(e);
        }
        drop(self.lab.take());
        let _ = std::fs::remove_dir_all(&self.state.state_dir);
    }
}

/// Reads the metrics of the agent in namespace `netns` (port 9091 there).
pub fn agent_metrics(netns: &str) -> Result<String> {
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;
    let path = Path::new("/run/netns").join(netns);
    let file = std::fs::File::open(&path).map_err(|source| Error::Io {
        what: "open namespace",
        path: path.clone(),
        source,
    })?;
    let handle = std::thread::spawn(move || -> std::io::Result<String> {
        // SAFETY: setns on an open namespace fd, for this short-lived thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], crate::metrics::DEFAULT_PORT));
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or(out))
    });
    handle
        .join()
        .map_err(|_| Error::Lab("metrics reader panicked".into()))?
        .map_err(|source| Error::Io {
            what: "read metrics of the agent in",
            path,
            source,
        })
}

/// Runs a lab command.
pub fn execute(c: &LabCommand, _cli: &Cli) -> Result<i32> {
    match c {
        LabCommand::Up(args) => up_in_background(args),
        LabCommand::Hold(args) => hold(args),
        LabCommand::Run(args) => {
            let lab = RunningLab::up(args)?;
            let r = lab.report();
            if let Ok(r) = &r {
                print!("{}", r.text);
            }
            progress("tearing the lab down");
            drop(lab);
            let r = r?;
            Ok(i32::from(r.probes.iter().any(|p| !p.reachable)))
        }
        LabCommand::Mode { mode, state_dir } => {
            let state = switch_mode(state_dir, *mode)?;
            let r = report(&state)?;
            print!("{}", r.text);
            Ok(i32::from(r.probes.iter().any(|p| !p.reachable)))
        }
        LabCommand::Status { state_dir } => {
            require_root()?;
            let state = load_state(state_dir)?;
            println!("lab mode {}; agents:", state.mode);
            for a in &state.agents {
                let alive = Path::new(&format!("/proc/{}", a.pid)).exists();
                let node = state.nodes.iter().find(|n| n.name == a.node);
                let writes = node
                    .and_then(|n| agent_metrics(&n.netns).ok())
                    .and_then(|m| crate::metrics::sample(&m, "calinet_dataplane_writes_total"));
                println!(
                    "  {} pid {} {} (dataplane writes {}, log {})",
                    a.node,
                    a.pid,
                    if alive { "running" } else { "NOT running" },
                    writes.map_or("?".to_owned(), |w| w.to_string()),
                    a.log.display()
                );
            }
            let r = report(&state)?;
            print!("{}", r.text);
            Ok(i32::from(r.probes.iter().any(|p| !p.reachable)))
        }
        LabCommand::Down { state_dir } => {
            require_root()?;
            down(state_dir)?;
            println!("lab removed");
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    #[test]
    fn classifies_captured_paths() {
        let src: IpAddr = "172.16.116.1".parse().unwrap();
        let dst: IpAddr = "172.16.158.1".parse().unwrap();
        let a: Ipv4Addr = "198.51.100.10".parse().unwrap();
        let b: Ipv4Addr = "198.51.100.101".parse().unwrap();
        // Captured with `tcpdump -i eth0 -nn -l` on k8s-m during a lab run.
        let vx = lines(
            "12:00:00.1 IP 198.51.100.10.40000 > 198.51.100.101.4789: VXLAN, flags [I] (0x08), vni 4096\n\
             IP 172.16.116.1 > 172.16.158.1: ICMP echo request, id 1, seq 1, length 64",
        );
        assert_eq!(classify(&vx, src, dst, a, Some(b)), ObservedPath::Vxlan);
        let direct = lines(
            "12:00:00.1 IP 172.16.116.1 > 172.16.158.1: ICMP echo request, id 1, seq 1, length 64",
        );
        assert_eq!(
            classify(&direct, src, dst, a, Some(b)),
            ObservedPath::Direct
        );
        let wg = lines("12:00:00.1 IP 198.51.100.10.51820 > 198.51.100.101.51820: UDP, length 128");
        assert_eq!(classify(&wg, src, dst, a, Some(b)), ObservedPath::Wireguard);
        let out: IpAddr = "192.0.2.100".parse().unwrap();
        let nat = lines(
            "12:00:00.1 IP 198.51.100.10 > 192.0.2.100: ICMP echo request, id 1, seq 1, length 64",
        );
        assert_eq!(classify(&nat, src, out, a, None), ObservedPath::Masqueraded);
        assert_eq!(classify(&[], src, dst, a, Some(b)), ObservedPath::NotSeen);
        // IP-in-IP as tcpdump prints it (outer and inner on one line).
        let ipip = lines(
            "12:00:00.1 IP 198.51.100.10 > 198.51.100.101: IP 172.16.116.1 > 172.16.158.1: ICMP echo request, id 1, seq 1, length 64 (ipip-proto-4)",
        );
        assert_eq!(classify(&ipip, src, dst, a, Some(b)), ObservedPath::Ipip);
    }
}
