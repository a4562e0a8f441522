//! Building the cluster (the seed article's topology from the test lab, a pod
//! namespace per node and a second on k8s-w1, the underlay's MTU), its
//! resources, convergence, mode switches (through the agent's `patch`) and
//! teardown; [`RunningLab`] owns a cluster built by this process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use calinet_agent::datastore::{self, ClusterView, read_view};

use crate::bgp;
use crate::cli::UpArgs;
use crate::error::{Error, Result};
use crate::report::{LabReport, report};
use crate::state::{self, LabNode, LabPod, LabState, Mode, state_file, unix_now};
use crate::supervise::{self, fault_file, spawn_agent, stop_agent, stop_etcd};

/// Prints one progress line.
pub fn progress(step: &str) {
    println!("==> {step}");
}

/// Root and the commands the lab runs, or an error saying what is missing.
pub fn require_root() -> Result<()> {
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

/// Whether this machine can run `mode`.
pub fn check_mode(mode: Mode) -> Result<()> {
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

/// Checks before a lab is built: root, a mode this machine has, no lab
/// already up in the state directory (which is created).
pub fn prepare_state_dir(args: &UpArgs) -> Result<()> {
    require_root()?;
    check_mode(args.mode)?;
    if (args.peer_router || args.route_reflector.is_some()) && !args.mode.bgp() {
        return Err(Error::Usage(format!(
            "--peer-router and --route-reflector need a BGP mode (direct, wireguard or ipip): \
             mode {} uses VXLAN, where no BIRD runs",
            args.mode
        )));
    }
    if state_file(&args.state_dir).exists() {
        return Err(Error::Usage(format!(
            "a lab is already up ({} exists); run `calinet-lab down` first",
            state_file(&args.state_dir).display()
        )));
    }
    std::fs::create_dir_all(&args.state_dir).map_err(|source| Error::Io {
        what: "create the state directory",
        path: args.state_dir.clone(),
        source,
    })
}

/// The cluster's YAML for the state's mode: pool, IPAM configuration, Felix
/// configuration, nodes, and the pods with their sandboxes' namespaces.
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

/// Applies YAML to `store` in one transaction, as `calinet-agent apply -f`.
fn apply_text(store: &dyn calinet_ipam::Store, text: &str) -> Result<()> {
    let docs = calinet_agent::resources::parse_documents("<lab>", text)?;
    datastore::apply(store, &docs)?;
    Ok(())
}

/// Builds the namespaces; returns the test lab (whose drop removes them) and
/// the state.
fn build(args: &UpArgs) -> Result<(testlab::Lab, LabState)> {
    prepare_state_dir(args)?;
    let agent_bin = match &args.agent_bin {
        Some(b) if b.is_file() => b.clone(),
        Some(b) => {
            return Err(Error::Usage(format!(
                "--agent-bin {}: no such file (build it with cargo build -p calinet-agent)",
                b.display()
            )));
        }
        None => supervise::agent_beside_self()?,
    };
    let datastore = args.state_dir.join("datastore.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", datastore.display()));
    }
    progress(
        "building the seed cluster: router, 198.51.100.0/24, 203.0.113.0/24, outside host 192.0.2.100",
    );
    let lab = testlab::Lab::new("calinet-lab")?;
    let seed = testlab::seed::SeedCluster::build(&lab)?;
    if args.underlay_mtu != 1500 {
        progress(&format!("underlay MTU {}", args.underlay_mtu));
        for ns in lab.namespaces() {
            set_mtu(&ns, args.underlay_mtu)?;
        }
    }
    let mut pods = Vec::new();
    // One pod per node, and a second on k8s-w1 for the seed article's
    // same-node experiment.
    let names = seed
        .nodes
        .iter()
        .map(|n| (format!("web-{}", n.name), n.name.clone()))
        .chain([("web2-k8s-w1".to_owned(), "k8s-w1".to_owned())]);
    for (name, node) in names {
        let ns = lab.pod(&format!("pod-{name}"))?;
        pods.push(LabPod {
            name,
            node,
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
        peer_router: args.peer_router,
        route_reflector: args.route_reflector.clone(),
        agent_bin,
        state_dir: args.state_dir.clone(),
        holder: None,
        etcd: None,
    };
    Ok((lab, state))
}

/// Sets `mtu` on every link of `ns` but the loopback: ports first, then the
/// bridges (a bridge's MTU may not exceed its ports').
fn set_mtu(ns: &testlab::Netns, mtu: u32) -> Result<()> {
    let links = ns.links()?;
    let is_bridge = |l: &testlab::ipjson::Link| {
        l.linkinfo.as_ref().and_then(|i| i.info_kind.as_deref()) == Some("bridge")
    };
    let mut order: Vec<&testlab::ipjson::Link> = links
        .iter()
        .filter(|l| l.link_type.as_deref() != Some("loopback"))
        .collect();
    order.sort_by_key(|l| is_bridge(l));
    for l in order {
        ns.ip(&["link", "set", "dev", &l.ifname, "mtu", &mtu.to_string()])?;
    }
    Ok(())
}

/// Starts etcd (with `--etcd`) and the agents, applies the cluster and waits
/// for convergence; the state file is updated after each process started.
fn start(args: &UpArgs, mut state: LabState) -> Result<LabState> {
    if args.etcd {
        let data = args.state_dir.join("etcd-data");
        let etcd = supervise::spawn_etcd(&state, &data)?;
        progress(&format!(
            "etcd at {} in the router namespace (pid {}, data {})",
            etcd.endpoint,
            etcd.pid,
            data.display()
        ));
        state.etcd = Some(etcd);
        state::save(&args.state_dir, &state)?;
    }
    let where_ = match &state.etcd {
        Some(e) => format!("etcd {}", e.endpoint),
        None => state.datastore.display().to_string(),
    };
    progress(&format!(
        "datastore {where_} : pool {} /{} (mode {}), {} nodes, {} pods",
        state.pool,
        args.block_size,
        state.mode,
        state.nodes.len(),
        state.pods.len()
    ));
    let store = crate::store::open(&state)?;
    apply_text(store.as_ref(), &cluster_yaml(&state, args.block_size))?;
    if state.mode.bgp() {
        bgp_setup(&state, store.as_ref())?;
    }
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
        state::save(&args.state_dir, &state)?;
    }
    converge(
        &mut state,
        store.as_ref(),
        unix_now(),
        Duration::from_secs(args.timeout),
    )?;
    state::save(&args.state_dir, &state)?;
    Ok(state)
}

/// The BGP side of a BGP mode: the router's BIRD (always; it peers only
/// with nodes a `BGPPeer` sends to it), the route reflector resources and
/// the router peering as the state asks.
fn bgp_setup(state: &LabState, store: &dyn calinet_ipam::Store) -> Result<()> {
    if bgp::sessions_of_router_answer(state) {
        return Ok(());
    }
    bgp::start_router_bird(state)?;
    progress(&format!(
        "router BIRD started in {} (AS {}, learns only from nodes that peer with it)",
        state.router,
        bgp::ROUTER_AS
    ));
    if let Some(rr) = &state.route_reflector {
        apply_text(store, &bgp::route_reflector_yaml(state, rr)?)?;
        progress(&format!(
            "node-to-node mesh off; {rr} is a route reflector (cluster id {}), every other node peers with it",
            bgp::RR_CLUSTER_ID
        ));
    }
    if state.peer_router {
        apply_text(store, &bgp::peer_router_yaml(state))?;
        progress(&format!(
            "BGPPeers router-lan1/router-lan2: every node peers with the router (AS {})",
            bgp::ROUTER_AS
        ));
    }
    Ok(())
}

/// In a BGP mode, waits for every BGP session (and, when peered, for the
/// router to have learned every block).
fn wait_bgp(state: &LabState, store: &dyn calinet_ipam::Store) -> Result<()> {
    if !state.mode.bgp() {
        return Ok(());
    }
    progress("waiting for the BGP sessions");
    let view = read_view(store)?;
    let blocks = view
        .ipam
        .blocks
        .iter()
        .filter(|(b, _)| b.affinity().is_some_and(|a| a.starts_with("host:")))
        .count();
    let t0 = Instant::now();
    bgp::wait_established(state, blocks, Duration::from_secs(60))?;
    progress(&format!(
        "BGP established on every node in {:.1}s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Turns the router peering on (applies the `BGPPeer`s) or off (deletes
/// them) in a running lab, and waits for BGP to settle.
pub fn set_peer_router(state_dir: &Path, on: bool) -> Result<LabState> {
    require_root()?;
    let mut state = state::load(state_dir)?;
    if !state.mode.bgp() {
        return Err(Error::Usage(format!(
            "peer-router: the lab runs mode {}, where no BIRD runs (use a BGP mode: direct)",
            state.mode
        )));
    }
    let store = crate::store::open(&state)?;
    let yaml = bgp::peer_router_yaml(&state);
    if on {
        apply_text(store.as_ref(), &yaml)?;
    } else {
        for d in calinet_agent::resources::parse_documents("<lab>", &yaml)? {
            datastore::delete_if_present(store.as_ref(), &d.resource.key_value().0)?;
        }
    }
    progress(&format!(
        "router peering {}",
        if on {
            "on (BGPPeers applied)"
        } else {
            "off (BGPPeers deleted)"
        }
    ));
    state.peer_router = on;
    state::save(state_dir, &state)?;
    wait_bgp(&state, store.as_ref())?;
    if !on {
        // The router drops the routes of sessions that went away.
        let t0 = Instant::now();
        while !bgp::router_learned(&state)?.is_empty() && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    Ok(state)
}

/// The last `n` lines of `log`, for error messages.
fn log_tail(log: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut tail: Vec<String> = text.lines().rev().take(n).map(str::to_owned).collect();
    tail.reverse();
    tail
}

/// Waits until every agent reports a converged reconcile that started after
/// `since` with every pod plumbed, and in BGP modes for the BGP sessions.
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
                        && s.endpoints == state.pods.iter().filter(|p| p.node == n.name).count()
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
        // Printed when the counts change, not on every poll.
        if line.split(", ").take(2).collect::<String>() != last_line {
            println!("{line}");
            last_line = line.split(", ").take(2).collect();
        }
        if ready.len() == state.nodes.len() {
            return wait_bgp(state, store);
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
                    for l in log_tail(&a.log, 4) {
                        let _ = writeln!(detail, "    log: {l}");
                    }
                }
            }
            return Err(Error::Lab(format!(
                "not converged after {timeout:?}: only {ready:?} are.\n{detail}"
            )));
        }
        for a in &state.agents {
            if !testlab::is_alive(a.pid) {
                return Err(Error::Lab(format!(
                    "the agent of {} exited; last log lines:\n{}",
                    a.node,
                    log_tail(&a.log, 5).join("\n")
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

/// Stops every process of the lab: agents, the wireguard-go they started, etcd.
fn stop_processes(state: &LabState) {
    for a in &state.agents {
        stop_agent(a);
    }
    for n in &state.nodes {
        supervise::stop_wireguard_go(n);
    }
    if let Some(e) = &state.etcd {
        stop_etcd(e);
    }
    bgp::stop_all(state);
}

/// Tears a lab down from its state file: through its holder when it has one
/// (which then tears down itself), else agents, namespaces and the directory.
pub fn down(state_dir: &Path) -> Result<()> {
    let state = state::load(state_dir)?;
    if let Some(pid) = state.holder
        && supervise::is_running(pid, "calinet-lab")
    {
        testlab::signal(pid, testlab::Signal::Terminate);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && supervise::is_running(pid, "calinet-lab") {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !state_file(state_dir).exists() {
            return Ok(());
        }
    }
    stop_processes(&state);
    for ns in state.namespaces.iter().rev() {
        let _ = testlab::cmd::run("ip", &["netns", "del", ns]);
    }
    let _ = std::fs::remove_dir_all(state_dir);
    Ok(())
}

/// The patches that switch the cluster to `mode`: the pool's encapsulation
/// and Felix's `wireguardEnabled`.
pub fn mode_patches(mode: Mode) -> [(&'static str, &'static str, String); 2] {
    [
        (
            "ippool",
            "default-ipv4-ippool",
            format!(
                r#"{{"spec":{{"ipipMode":"{}","vxlanMode":"{}"}}}}"#,
                mode.ipip_mode(),
                mode.vxlan_mode()
            ),
        ),
        (
            "felixconfiguration",
            "default",
            format!(
                r#"{{"spec":{{"wireguardEnabled":{}}}}}"#,
                mode == Mode::Wireguard
            ),
        ),
    ]
}

/// Switches the running lab to `mode` and waits for it to re-converge.
pub fn switch_mode(state_dir: &Path, mode: Mode) -> Result<LabState> {
    require_root()?;
    check_mode(mode)?;
    let mut state = state::load(state_dir)?;
    let store = crate::store::open(&state)?;
    progress(&format!("switching the lab from {} to {mode}", state.mode));
    state.mode = mode;
    let since = unix_now();
    // As the seed article does it: calicoctl patch, here the agent's `patch`.
    for (kind, name, patch) in mode_patches(mode) {
        println!("$ calinet-agent patch {kind} {name} -p '{patch}'");
        let what = calinet_agent::datastore::patch(store.as_ref(), kind, name, &patch)?;
        let kind = what.split(' ').next().unwrap_or_default();
        println!("Successfully patched 1 '{kind}' resource");
    }
    if mode.bgp() {
        bgp_setup(&state, store.as_ref())?;
    }
    converge(&mut state, store.as_ref(), since, Duration::from_secs(60))?;
    state::save(state_dir, &state)?;
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
        state::save(&args.state_dir, &state)?;
        let mut running = RunningLab {
            lab: Some(lab),
            known: std::sync::Mutex::default(),
            state,
        };
        match start(args, running.state.clone()) {
            Ok(s) => running.state = s,
            Err(e) => {
                // Processes started before the failure are in the state file;
                // dropping `running` stops them.
                if let Ok(s) = state::load(&args.state_dir) {
                    running.state.agents = s.agents;
                    running.state.etcd = s.etcd;
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
        state::save(&self.state.state_dir, &self.state)
    }

    /// Turns the nodes' BGP peering with the router on or off and waits for
    /// BGP to settle.
    pub fn set_peer_router(&mut self, on: bool) -> Result<()> {
        self.state = set_peer_router(&self.state.state_dir, on)?;
        Ok(())
    }

    /// The pid of `node`'s BIRD (from its pid file), while it answers.
    pub fn bird_pid(&self, node: &str) -> Option<u32> {
        let dir = bgp::node_bird_dir(&self.state, node);
        calinet_bgp::BirdProcess::new(&dir).connect().ok()?;
        std::fs::read_to_string(dir.join("bird.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Kills `node`'s BIRD with SIGKILL (a crash: no shutdown, no
    /// notification to its peers); returns the pid killed.
    pub fn kill_bird(&self, node: &str) -> Result<u32> {
        let pid = self
            .bird_pid(node)
            .ok_or_else(|| Error::Lab(format!("{node}: BIRD is not running")))?;
        testlab::signal(pid, testlab::Signal::Kill);
        Ok(pid)
    }

    /// Takes `node` out of the cluster as a node that went away: its agent and
    /// its BIRD stop, then its Node resource is deleted.
    pub fn remove_node(&mut self, node: &str) -> Result<()> {
        if let Some(a) = self.state.agents.iter().find(|a| a.node == node) {
            stop_agent(a);
        }
        bgp::stop_bird(&bgp::node_bird_dir(&self.state, node));
        let store = crate::store::open(&self.state)?;
        datastore::delete_if_present(
            store.as_ref(),
            &format!("{}{node}", calinet_agent::resources::keys::NODES),
        )?;
        Ok(())
    }

    /// `ip route` of `node` (or of the router with `"router"`).
    pub fn routes(&self, node: &str) -> Result<String> {
        let ns = if node == "router" {
            self.state.router.clone()
        } else {
            self.state
                .nodes
                .iter()
                .find(|n| n.name == node)
                .map(|n| n.netns.clone())
                .ok_or_else(|| Error::Lab(format!("no node {node}")))?
        };
        Ok(testlab::cmd::run("ip", &["-n", &ns, "route"])?)
    }

    /// The Prometheus text of `node`'s agent.
    pub fn metrics(&self, node: &str) -> Result<String> {
        let n = self
            .state
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| Error::Lab(format!("no node {node}")))?;
        supervise::agent_metrics(&n.netns)
    }

    /// Applies YAML to the lab's datastore (as `apply -f` does).
    pub fn apply(&self, yaml: &str) -> Result<()> {
        let store = crate::store::open(&self.state)?;
        apply_text(store.as_ref(), yaml)
    }

    /// Deletes the resources named in YAML (as `delete -f` does).
    pub fn delete(&self, yaml: &str) -> Result<()> {
        let store = crate::store::open(&self.state)?;
        for d in calinet_agent::resources::parse_documents("<lab>", yaml)? {
            datastore::delete_if_present(store.as_ref(), &d.resource.key_value().0)?;
        }
        Ok(())
    }

    /// The datastore's current view.
    pub fn view(&self) -> Result<ClusterView> {
        let store = crate::store::open(&self.state)?;
        Ok(read_view(store.as_ref())?)
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
        state::save(&self.state.state_dir, &self.state)?;
        self.apply(&yaml)?;
        Ok(yaml)
    }

    /// Removes a pod added with [`RunningLab::add_pod`] from the datastore and
    /// from the lab's pod list (its namespace goes with the lab).
    pub fn remove_pod(&mut self, name: &str, yaml: &str) -> Result<()> {
        self.delete(yaml)?;
        self.state.pods.retain(|p| p.name != name);
        state::save(&self.state.state_dir, &self.state)
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
            self.state.etcd = Some(supervise::spawn_etcd(&self.state, &etcd.data_dir)?);
        } else {
            stop_etcd(&etcd);
        }
        state::save(&self.state.state_dir, &self.state)
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
        Ok(crate::probe::ping(&src.netns, addr))
    }
}

impl Drop for RunningLab {
    fn drop(&mut self) {
        stop_processes(&self.state);
        drop(self.lab.take());
        let _ = std::fs::remove_dir_all(&self.state.state_dir);
    }
}
