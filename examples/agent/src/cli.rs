//! The command line (clap): calicoctl-like commands and `run`.

use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};

use crate::datastore::{self, DynStore, read_view};
use crate::error::{Error, Result, chain};
use crate::show::{self, IpamShowFlags, Output};

/// The calinet reference node agent: calicoctl-like commands over the
/// datastore, and the node agent itself (`run`).
#[derive(Debug, Parser)]
#[command(name = "calinet-agent", version)]
pub struct Cli {
    /// The embedded SQLite datastore file.
    #[arg(
        long,
        global = true,
        env = "CALINET_DATASTORE",
        default_value = "/var/lib/calinet/datastore.db"
    )]
    pub datastore: PathBuf,
    /// etcd endpoints (comma separated) instead of SQLite.
    #[arg(long, global = true, env = "CALINET_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Option<String>,
    /// etcd CA certificate (PEM), with --etcd-endpoints.
    #[arg(long, global = true, requires = "etcd_endpoints")]
    pub etcd_ca_file: Option<PathBuf>,
    /// etcd client certificate (PEM), with --etcd-endpoints.
    #[arg(long, global = true, requires_all = ["etcd_endpoints", "etcd_key_file"])]
    pub etcd_cert_file: Option<PathBuf>,
    /// etcd client key (PEM), with --etcd-endpoints.
    #[arg(long, global = true, requires_all = ["etcd_endpoints", "etcd_cert_file"])]
    pub etcd_key_file: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update resources from YAML files (all or nothing).
    Apply(FileArgs),
    /// Delete the resources named in YAML files.
    Delete(FileArgs),
    /// IP address management.
    #[command(subcommand)]
    Ipam(IpamCommand),
    /// Show resources.
    Get(GetArgs),
    /// Change a resource with a JSON merge patch (RFC 7386), validated like
    /// `apply`: `patch ippool default-ipv4-ippool -p '{"spec":{"vxlanMode":"CrossSubnet"}}'`.
    Patch(PatchArgs),
    /// Node commands.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Run the node agent.
    Run(RunArgs),
}

/// `-f FILE...`.
#[derive(Debug, Args)]
pub struct FileArgs {
    /// YAML files (`-` reads stdin); several documents per file separated by `---`.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
}

/// `ipam ...`.
#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// Usage per pool (and block).
    Show {
        /// One row per block too.
        #[arg(long)]
        show_blocks: bool,
        /// Addresses borrowed from other nodes' blocks.
        #[arg(long, conflicts_with_all = ["show_blocks", "show_configuration"])]
        show_borrowed: bool,
        /// The IPAM configuration.
        #[arg(long, conflicts_with = "show_blocks")]
        show_configuration: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Check IPAM for leaks and inconsistencies (exit code 1 when problems).
    Check,
    /// Release an address.
    Release {
        /// The address.
        #[arg(long)]
        ip: IpAddr,
    },
}

/// `patch KIND NAME -p PATCH`.
#[derive(Debug, Args)]
pub struct PatchArgs {
    /// `ippool` or `felixconfiguration`.
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// The patch (JSON).
    #[arg(short, long)]
    pub patch: String,
    /// The patch type; calicoctl's only one is a merge patch.
    #[arg(short = 't', long = "type", default_value = "merge", value_parser = ["merge"])]
    pub patch_type: String,
}

/// `get KIND [NAME]`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// `ippool`, `node`, `felixconfiguration`, `workloadendpoint`,
    /// `bgpconfiguration` or `bgppeer` (plurals
    /// and `wep` accepted).
    pub kind: String,
    /// Only this resource (nodes and Felix configurations).
    pub name: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// Namespace (workload endpoints).
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// All namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// `node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// The agent's status and its paths to the other nodes.
    Status {
        /// The node (default: the host name).
        #[arg(long)]
        node: Option<String>,
        /// The node's BIRD runtime directory, as given to `run` (default:
        /// beside the datastore, `bird-<node>`).
        #[arg(long)]
        bgp_runtime_dir: Option<PathBuf>,
    },
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// This node's name.
    #[arg(long)]
    pub node: String,
    /// Uplink interface (default: the default route's device).
    #[arg(long)]
    pub uplink: Option<String>,
    /// Metrics port (0 disables; Felix's `PrometheusMetricsPort`).
    #[arg(long, env = "CALINET_METRICS_PORT", default_value_t = crate::metrics::DEFAULT_PORT)]
    pub metrics_port: u16,
    /// Metrics listen address (Felix's `PrometheusMetricsHost`).
    #[arg(long, env = "CALINET_METRICS_HOST", default_value = "0.0.0.0")]
    pub metrics_address: IpAddr,
    /// Health port for `/liveness` and `/readiness` (0 disables; Felix's `HealthPort`).
    #[arg(long, env = "CALINET_HEALTH_PORT", default_value_t = crate::http::DEFAULT_HEALTH_PORT)]
    pub health_port: u16,
    /// Health listen host, a name or an address (Felix's `HealthHost`).
    #[arg(long, env = "CALINET_HEALTH_HOST", default_value = crate::http::DEFAULT_HEALTH_HOST)]
    pub health_host: String,
    /// Datastore poll interval in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub poll_ms: u64,
    /// Full resync interval in seconds (Calico: 90).
    #[arg(long, default_value_t = 90)]
    pub resync_secs: u64,
    /// WireGuard device name (`wireguard-go`'s control socket is
    /// `/var/run/wireguard/<name>.sock`: nodes sharing a machine need distinct
    /// names or, as the lab does, mount namespaces of their own).
    #[arg(long, default_value = calinet_wg::model::DEFAULT_IFNAME_V4)]
    pub wireguard_ifname: String,
    /// WireGuard private key file (default: beside the datastore,
    /// `wireguard-<node>.key`), created 0600.
    #[arg(long)]
    pub wireguard_key_file: Option<PathBuf>,
    /// BIRD's runtime directory (default: beside the datastore, `bird-<node>`).
    #[arg(long)]
    pub bgp_runtime_dir: Option<PathBuf>,
    /// Directory with BGPPeer passwords, laid out like a mounted Kubernetes
    /// secret (`<dir>/<secret name>/<key>`).
    #[arg(long)]
    pub bgp_secrets_dir: Option<PathBuf>,
    /// Fault injection: every datastore operation fails while this file exists.
    #[arg(long, hide = true)]
    pub datastore_fault_file: Option<PathBuf>,
}

fn read_input(file: &str) -> Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|source| Error::Io {
                what: "read",
                path: "<stdin>".into(),
                source,
            })?;
        return Ok(s);
    }
    std::fs::read_to_string(file).map_err(|source| Error::Io {
        what: "read",
        path: file.into(),
        source,
    })
}

fn parse_files(files: &[String]) -> Result<Vec<crate::resources::Parsed>> {
    let mut docs = Vec::new();
    for f in files {
        let name = if f == "-" { "<stdin>" } else { f.as_str() };
        docs.extend(crate::resources::parse_documents(name, &read_input(f)?)?);
    }
    Ok(docs)
}

/// Unix seconds now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `host:port` as one socket address, IPv4 first (`localhost` resolves to
/// both 127.0.0.1 and ::1).
fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::Usage(format!("--health-host {host}: cannot resolve: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| Error::Usage(format!("--health-host {host}: resolves to no address")))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            1
        }
    }
}

fn store(cli: &Cli) -> Result<DynStore> {
    let etcd = cli
        .etcd_endpoints
        .as_ref()
        .map(|endpoints| datastore::EtcdArgs {
            endpoints: endpoints.clone(),
            ca: cli.etcd_ca_file.clone(),
            client: cli.etcd_cert_file.clone().zip(cli.etcd_key_file.clone()),
        });
    datastore::open(&cli.datastore, etcd.as_ref())
}

/// Executes a parsed command line; returns the exit code.
pub fn execute(cli: Cli) -> Result<i32> {
    match &cli.command {
        Command::Apply(a) => {
            let docs = parse_files(&a.files)?;
            let store = store(&cli)?;
            let outcomes = datastore::apply(store.as_ref(), &docs)?;
            for (what, outcome) in &outcomes {
                println!("{what} {outcome}");
            }
            println!("Successfully applied {} resource(s)", outcomes.len());
            Ok(0)
        }
        Command::Delete(a) => {
            let docs = parse_files(&a.files)?;
            let store = store(&cli)?;
            let mut n = 0;
            for d in &docs {
                let (key, _) = d.resource.key_value();
                if datastore::delete_if_present(store.as_ref(), &key)? {
                    println!("{} deleted", d.resource.describe());
                    n += 1;
                } else {
                    println!("{} not found", d.resource.describe());
                }
            }
            println!("Successfully deleted {n} resource(s)");
            Ok(0)
        }
        Command::Ipam(IpamCommand::Show {
            show_blocks,
            show_borrowed,
            show_configuration,
            output,
        }) => {
            let view = read_view(store(&cli)?.as_ref())?;
            let flags = IpamShowFlags {
                blocks: *show_blocks,
                borrowed: *show_borrowed,
                configuration: *show_configuration,
            };
            print!("{}", show::ipam_show(&view, flags, *output)?);
            Ok(0)
        }
        Command::Ipam(IpamCommand::Check) => {
            let view = read_view(store(&cli)?.as_ref())?;
            let (text, problems) = show::ipam_check(&view);
            print!("{text}");
            Ok(i32::from(problems > 0))
        }
        Command::Ipam(IpamCommand::Release { ip }) => {
            let store = store(&cli)?;
            let ipam = calinet_ipam::Ipam::new(store);
            if ipam.release_ip(*ip, None, None, SystemTime::now())? {
                println!("Successfully released IP address {ip}");
                Ok(0)
            } else {
                println!("IP address {ip} was not allocated");
                Ok(1)
            }
        }
        Command::Get(g) => {
            let view = read_view(store(&cli)?.as_ref())?;
            let text = match g.kind.to_ascii_lowercase().as_str() {
                "ippool" | "ippools" => show::get_ippool(&view, g.output)?,
                "bgpconfiguration" | "bgpconfigurations" | "bgpconfig" => {
                    show::get_bgp_configurations(&view, g.output)?
                }
                "bgppeer" | "bgppeers" => show::get_bgp_peers(&view, g.output)?,
                "workloadendpoint" | "workloadendpoints" | "wep" | "weps" => {
                    let ns = (!g.all_namespaces).then_some(g.namespace.as_str());
                    show::get_weps(&view, ns, g.output)?
                }
                "node" | "nodes" => show::get_nodes(&view, g.name.as_deref(), g.output)?,
                "felixconfiguration" | "felixconfigurations" | "felixconfig" => {
                    show::get_felix(&view, g.name.as_deref(), g.output)?
                }
                other => {
                    return Err(Error::Usage(format!(
                        "get {other}: known kinds are ippool, node, felixconfiguration, workloadendpoint, bgpconfiguration and bgppeer"
                    )));
                }
            };
            print!("{text}");
            Ok(0)
        }
        Command::Patch(p) => {
            let store = store(&cli)?;
            let what = datastore::patch(store.as_ref(), &p.kind, &p.name, &p.patch)?;
            let kind = what.split(' ').next().unwrap_or_default();
            println!("Successfully patched 1 '{kind}' resource");
            Ok(0)
        }
        Command::Node(NodeCommand::Status {
            node,
            bgp_runtime_dir,
        }) => {
            let view = read_view(store(&cli)?.as_ref())?;
            let node = node.clone().unwrap_or_else(hostname);
            let now = unix_now();
            let dir = bgp_runtime_dir
                .clone()
                .unwrap_or_else(|| crate::bgp::default_runtime_dir(&cli.datastore, &node));
            print!("{}", show::node_status(&view, &node, now, 15, &dir)?);
            Ok(0)
        }
        Command::Run(r) => {
            let mut store = store(&cli)?;
            if let Some(marker) = &r.datastore_fault_file {
                store = std::sync::Arc::new(datastore::FaultStore::new(store, marker.clone()));
            }
            let metrics =
                (r.metrics_port != 0).then(|| SocketAddr::new(r.metrics_address, r.metrics_port));
            let health = match r.health_port {
                0 => None,
                port => Some(resolve(&r.health_host, port)?),
            };
            crate::agent::run(
                store,
                crate::agent::RunOptions {
                    node: r.node.clone(),
                    uplink: r.uplink.clone(),
                    metrics,
                    health,
                    poll: Duration::from_millis(r.poll_ms),
                    resync: Duration::from_secs(r.resync_secs),
                    max_reconciles: None,
                    wireguard: crate::wireguard::WgOptions {
                        ifname: r.wireguard_ifname.clone(),
                        key_file: r.wireguard_key_file.clone().unwrap_or_else(|| {
                            cli.datastore
                                .with_file_name(format!("wireguard-{}.key", r.node))
                        }),
                    },
                    bgp_secrets: r.bgp_secrets_dir.clone(),
                    bgp_dir: r.bgp_runtime_dir.clone().unwrap_or_else(|| {
                        crate::bgp::default_runtime_dir(&cli.datastore, &r.node)
                    }),
                },
            )?;
            Ok(0)
        }
    }
}
