//! The command line: `run`, `up`, `mode`, `status`, `down`, and the
//! internal `hold` that `up` leaves running in the background.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cluster::{self, RunningLab, progress, require_root};
use crate::error::{Error, Result, chain};
use crate::report::report;
use crate::state::{self, DEFAULT_STATE_DIR, Mode, state_file};
use crate::supervise;

/// The seed article's cluster in network namespaces with one `calinet-agent`
/// per node (needs root).
#[derive(Debug, Parser)]
#[command(name = "calinet-lab", version)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: LabCommand,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the cluster and leave it running (see `status`, `mode`, `down`).
    Up(UpArgs),
    /// Build the cluster, print everything, and tear it down again.
    Run(UpArgs),
    /// (Internal) what `up` runs in the background: builds the lab and owns
    /// it until SIGTERM (`down`).
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
    /// Turn the nodes' BGP peering with the router on or off in the running
    /// lab (applies or deletes the `BGPPeer`s), then print the report.
    PeerRouter {
        /// `on` or `off`.
        #[arg(value_enum)]
        state: OnOff,
        /// The lab's state directory.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Measure the time from a new block affinity in the datastore to its
    /// route in every other node's kernel: BGP (direct mode) and VXLAN.
    #[command(hide = true)]
    BenchRouteLatency {
        /// Samples per mode.
        #[arg(long, default_value_t = 20)]
        samples: usize,
        /// The state directory of the labs the benchmark builds.
        #[arg(long, default_value = "/run/calinet-lab-bench")]
        state_dir: PathBuf,
        /// The agent binary (default: beside this one).
        #[arg(long)]
        agent_bin: Option<PathBuf>,
    },
    /// Stop the agents and remove every namespace of the running lab.
    Down {
        /// The lab's state directory.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// `up` / `run` options.
#[derive(Debug, Clone, Args)]
#[non_exhaustive]
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
    /// The agent binary to run on each node (default: `calinet-agent` next
    /// to this executable).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Keep the cluster in etcd (run in the router namespace) instead of a
    /// SQLite file.
    #[arg(long)]
    pub etcd: bool,
    /// The underlay's MTU (every node's uplink, the router's and the outside
    /// host's links); 9001 gives the seed article's numbers (tunl0 and pod
    /// veths 8981, wireguard.cali 8941).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1280..=65535))]
    pub underlay_mtu: u32,
    /// Make the nodes peer with the router over BGP (`BGPPeer`s to the
    /// router's address on each segment, AS 64513); BGP modes only.
    #[arg(long)]
    pub peer_router: bool,
    /// Turn the node-to-node mesh off and make NODE a route reflector that
    /// every other node peers with; BGP modes only.
    #[arg(long, value_name = "NODE")]
    pub route_reflector: Option<String>,
    /// Run a Prometheus server in the router's namespace scraping every
    /// agent, and ask it every query of the agent's Grafana dashboard
    /// (`run`: printed before the teardown; `up`: kept running until `down`).
    #[arg(long)]
    pub prometheus: bool,
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
            underlay_mtu: 1500,
            peer_router: false,
            route_reflector: None,
            prometheus: false,
        }
    }

    /// The same options as command-line arguments (for `hold`).
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec![
            "--mode".into(),
            self.mode.to_string().into(),
            "--pool".into(),
            self.pool.to_string().into(),
            "--block-size".into(),
            self.block_size.to_string().into(),
            "--state-dir".into(),
            self.state_dir.clone().into(),
            "--timeout".into(),
            self.timeout.to_string().into(),
            "--underlay-mtu".into(),
            self.underlay_mtu.to_string().into(),
        ];
        if let Some(b) = &self.agent_bin {
            v.extend(["--agent-bin".into(), b.clone().into()]);
        }
        if self.etcd {
            v.push("--etcd".into());
        }
        if self.peer_router {
            v.push("--peer-router".into());
        }
        if let Some(rr) = &self.route_reflector {
            v.extend(["--route-reflector".into(), rr.into()]);
        }
        if self.prometheus {
            v.push("--prometheus".into());
        }
        v
    }
}

/// The line `hold` prints once the lab is up (and its report written).
const READY: &str = "LAB-READY";
/// How long `--prometheus` waits for every dashboard query to have data
/// (rates and quantiles need a few scrapes, one a second).
const DASHBOARD_WAIT: Duration = Duration::from_secs(60);

/// The prefix of the line `hold` prints when the lab did not come up.
const FAILED: &str = "LAB-FAILED";

/// `up`: starts `hold` detached (so the namespaces' owner stays alive, and
/// the test lab's sweep of dead owners leaves them alone), follows its
/// progress, prints its report.
fn up_in_background(args: &UpArgs) -> Result<i32> {
    cluster::prepare_state_dir(args)?;
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        what: "find this executable",
        path: "/proc/self/exe".into(),
        source,
    })?;
    let log_path = args.state_dir.join("hold.log");
    let _ = std::fs::remove_file(&log_path);
    let mut holder = testlab::DetachedCommand::new(&exe, &log_path)
        .arg("hold")
        .args(args.to_args())
        .pid_file(args.state_dir.join("hold.pid"))
        .spawn()?;
    let mut shown = 0;
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        for line in text[shown..].lines() {
            if line == READY || line.starts_with(FAILED) {
                continue;
            }
            println!("{line}");
        }
        shown = text.len();
        if text.contains(&format!("\n{READY}\n")) {
            break;
        }
        if let Some(status) = holder.exited() {
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
        "\nlab is up (mode {}), held by pid {}; state in {}.\n\
         Next: `calinet-lab mode MODE`, `calinet-lab status`, `calinet-lab down`.",
        args.mode,
        holder.pid(),
        state_file(&args.state_dir).display()
    );
    Ok(i32::from(report.contains("FAIL")))
}

/// `hold`: builds the lab, then owns it until SIGTERM / SIGINT.
fn hold(args: &UpArgs) -> Result<i32> {
    let mut lab = match RunningLab::up(args) {
        Ok(l) => l,
        Err(e) => {
            println!("{FAILED}: {}", chain(&e));
            return Err(e);
        }
    };
    lab.state.holder = Some(std::process::id());
    state::save(&args.state_dir, &lab.state)?;
    let mut text = lab
        .report()
        .map(|r| r.text)
        .unwrap_or_else(|e| format!("report failed: {}\n", chain(&e)));
    // Kept running as long as this process holds the lab.
    let _prometheus = if args.prometheus {
        progress("starting Prometheus in the router's namespace");
        let server = crate::prometheus::start(&lab.state)?;
        let (dashboard, _) = crate::prometheus::dashboard_report(&lab.state, DASHBOARD_WAIT)?;
        text.push_str(&dashboard);
        Some(server)
    } else {
        None
    };
    let path = args.state_dir.join("report.txt");
    std::fs::write(&path, text).map_err(|source| Error::Io {
        what: "write",
        path,
        source,
    })?;
    println!("{READY}");
    wait_for_termination()?;
    // Mode switches by other processes changed the state file: use it.
    if let Ok(s) = state::load(&args.state_dir) {
        lab.state = s;
    }
    drop(lab);
    Ok(0)
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_termination() -> Result<()> {
    let io = |what| {
        move |source| Error::Io {
            what,
            path: "signal".into(),
            source,
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start the runtime for"))?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(io("install the SIGTERM handler for"))?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}

/// Runs a parsed command line; returns the exit code.
pub fn execute(command: &LabCommand) -> Result<i32> {
    match command {
        LabCommand::Up(args) => up_in_background(args),
        LabCommand::Hold(args) => hold(args),
        LabCommand::Run(args) => {
            let lab = RunningLab::up(args)?;
            let r = lab.report();
            if let Ok(r) = &r {
                print!("{}", r.text);
            }
            let dashboard = if args.prometheus {
                progress("starting Prometheus in the router's namespace");
                crate::prometheus::start(&lab.state).and_then(|server| {
                    let d = crate::prometheus::dashboard_report(&lab.state, DASHBOARD_WAIT);
                    drop(server);
                    d
                })
            } else {
                Ok((String::new(), true))
            };
            if let Ok((text, _)) = &dashboard {
                print!("{text}");
            }
            progress("tearing the lab down");
            drop(lab);
            let r = r?;
            let (_, answered) = dashboard?;
            Ok(i32::from(
                r.probes.iter().any(|p| !p.reachable) || !answered,
            ))
        }
        LabCommand::Mode { mode, state_dir } => {
            let state = cluster::switch_mode(state_dir, *mode)?;
            let r = report(&state)?;
            print!("{}", r.text);
            Ok(i32::from(r.probes.iter().any(|p| !p.reachable)))
        }
        LabCommand::Status { state_dir } => {
            require_root()?;
            let state = state::load(state_dir)?;
            println!("lab mode {}; agents:", state.mode);
            for a in &state.agents {
                let alive = supervise::is_running(a.pid, "calinet-agent");
                let node = state.nodes.iter().find(|n| n.name == a.node);
                let writes = node
                    .and_then(|n| supervise::agent_metrics(&n.netns).ok())
                    .and_then(|m| {
                        calinet_agent::metrics::sample(&m, "calinet_dataplane_writes_total")
                    });
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
        LabCommand::PeerRouter { state, state_dir } => {
            let state = cluster::set_peer_router(state_dir, *state == OnOff::On)?;
            let r = report(&state)?;
            print!("{}", r.text);
            Ok(i32::from(r.probes.iter().any(|p| !p.reachable)))
        }
        LabCommand::BenchRouteLatency {
            samples,
            state_dir,
            agent_bin,
        } => {
            let mut results = Vec::new();
            for mode in [Mode::Direct, Mode::Vxlan] {
                let mut args = UpArgs::new(mode, state_dir.clone());
                args.agent_bin.clone_from(agent_bin);
                let lab = RunningLab::up(&args)?;
                progress(&format!(
                    "mode {mode}: {samples} new blocks for k8s-w1, each timed until k8s-m, k8s-w2 and k8s-w0 route it"
                ));
                let l = crate::bench::route_latency(&lab, "k8s-w1", *samples);
                drop(lab);
                results.push((mode, l?));
            }
            println!(
                "new block affinity -> route in every other node's kernel (4-node lab, {samples} samples):"
            );
            for (mode, l) in &results {
                let (min, max) = l.range();
                let path = if mode.bgp() {
                    "BGP (BIRD announces, peers program proto bird)"
                } else {
                    "datastore (every agent programs VXLAN)"
                };
                println!(
                    "  {mode:<7} {path:<48} median {:>7.1} ms  (min {min:.1}, max {max:.1})",
                    l.median()
                );
            }
            Ok(0)
        }
        LabCommand::Down { state_dir } => {
            require_root()?;
            cluster::down(state_dir)?;
            println!("lab removed");
            Ok(0)
        }
    }
}

/// The program: parses the command line, runs it, prints an error with its
/// causes; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match execute(&cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            1
        }
    }
}
