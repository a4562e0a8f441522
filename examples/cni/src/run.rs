//! The process edge: read stdin and the `CNI_*` variables, open the
//! datastore, run the command, print the reply, choose the exit status.

use std::io::{Read, Write};

use calinet_ipam::NodeName;

use crate::config::{Config, Datastore, resolve_nodename};
use crate::edge::{KernelPlumber, StoreIpam, open_sqlite};
use crate::env::{Command, Env};
use crate::error::{Error, Result};
use crate::plugin::{self, AddressManager, Attach};
use crate::result::{ErrorResult, VersionResult};

/// Which binary is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// `calinet`: IPAM plus workload plumbing.
    Plugin,
    /// `calinet-ipam`: IPAM only.
    IpamOnly,
}

/// Runs one invocation and returns the exit status: 0 on success (with the
/// result, if any, on `stdout`), 1 with the spec's error object otherwise.
pub fn run(
    mode: Mode,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    var: impl Fn(&str) -> Option<String>,
) -> i32 {
    let mut input = Vec::new();
    let read = stdin.read_to_end(&mut input).map_err(Error::ReadStdin);
    let reply = read.and_then(|_| dispatch(mode, &input, var));
    let (text, status) = match reply {
        Ok(Some(json)) => (Some(json), 0),
        Ok(None) => (None, 0),
        Err(e) => {
            let v = Config::version_hint(&input);
            let er = ErrorResult::from_error(&e, v);
            (
                Some(serde_json::to_string(&er).expect("error reply serialises")),
                1,
            )
        }
    };
    if let Some(t) = text {
        // Nothing sensible is left to do when stdout itself fails.
        let _ = writeln!(stdout, "{t}");
        let _ = stdout.flush();
    }
    status
}

fn json<T: serde::Serialize>(v: &T) -> Result<Option<String>> {
    Ok(Some(serde_json::to_string(v).expect("reply serialises")))
}

fn node_name(cfg: &Config) -> Result<NodeName> {
    let file = std::fs::read_to_string(&cfg.nodename_file).ok();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    resolve_nodename(cfg.nodename.as_deref(), file.as_deref(), &host)
}

/// The IPAM edge for the configured datastore: the SQLite file (with the WAL
/// keeper) or etcd (calinet-ipam's `EtcdStore`, cargo feature `etcd`).
fn open_ipam(cfg: &Config) -> Result<Box<dyn AddressManager>> {
    match &cfg.ipam.datastore {
        Datastore::Sqlite { path } => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| Error::DatastoreDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            let store = open_sqlite(path).map_err(|source| Error::Ipam {
                operation: format!("opening datastore {}", path.display()),
                source,
            })?;
            Ok(Box::new(StoreIpam::new(
                store,
                Some(cfg.ipam.lock_file.clone()),
            )))
        }
        #[cfg(feature = "etcd")]
        Datastore::Etcd {
            endpoints,
            key_file,
            cert_file,
            ca_cert_file,
        } => {
            let mut ec = calinet_ipam::EtcdConfig::new(endpoints.iter().cloned());
            if let Some(ca) = ca_cert_file {
                // Config validation guarantees the certificate and key come as a pair.
                let client = cert_file.clone().zip(key_file.clone());
                ec = ec.with_tls(calinet_ipam::TlsFiles {
                    ca: ca.clone(),
                    client,
                    domain: None,
                });
            }
            let store = calinet_ipam::EtcdStore::connect(ec).map_err(|e| Error::Ipam {
                operation: format!("connecting to etcd {}", endpoints.join(",")),
                source: e.into(),
            })?;
            Ok(Box::new(StoreIpam::new(
                store,
                Some(cfg.ipam.lock_file.clone()),
            )))
        }
        #[cfg(not(feature = "etcd"))]
        Datastore::Etcd { endpoints, .. } => Err(Error::UnsupportedField {
            field: "datastore_type".into(),
            value: "etcdv3".into(),
            why: format!(
                "this build has no etcd datastore (cargo feature `etcd` off; endpoints {})",
                endpoints.join(",")
            ),
        }),
    }
}

fn dispatch(
    mode: Mode,
    input: &[u8],
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>> {
    let env = Env::from_lookup(var)?;
    if env.command == Command::Version {
        return json(&VersionResult::ours());
    }
    let cfg = Config::parse(input)?;
    let mut ipam: Box<dyn AddressManager> = match open_ipam(&cfg) {
        Ok(i) => i,
        // STATUS reports an unusable datastore as "not available" (code 50).
        Err(e)
            if env.command == Command::Status && !matches!(e, Error::UnsupportedField { .. }) =>
        {
            return Err(Error::NotAvailable {
                reason: format!("{e}: {}", e.details()),
            });
        }
        Err(e) => return Err(e),
    };
    let mut plumber;
    let attach = match mode {
        Mode::Plugin => {
            plumber = KernelPlumber::new()?;
            Attach::Plugin(&mut plumber)
        }
        Mode::IpamOnly => Attach::IpamOnly,
    };
    match env.command {
        Command::Add => {
            let node = node_name(&cfg)?;
            json(&plugin::add(&cfg, &env, &node, ipam.as_mut(), attach)?)
        }
        Command::Del => plugin::del(&cfg, &env, ipam.as_mut(), attach).map(|()| None),
        Command::Check => plugin::check(&cfg, &env, ipam.as_mut(), attach).map(|()| None),
        Command::Gc => {
            let node = node_name(&cfg)?;
            plugin::gc(&cfg, &node, ipam.as_mut(), attach).map(|_| None)
        }
        Command::Status => plugin::status(&cfg, ipam.as_mut()).map(|()| None),
        Command::Version => json(&VersionResult::ours()),
    }
}

/// Process-wide SQLite settings for a process that opens the datastore once:
/// SQLite allocates from [`crate::sqlite_memory`] (free lists, nothing handed
/// back to the C allocator before exit), and has no lookaside memory and no
/// up-front page-cache block per connection: both are sized for long-lived
/// connections; here they were written once (about 20 page faults, ~0.05 ms in
/// our VMs) and thrown away. Best effort: SQLite refuses (and keeps its
/// defaults) if it is already initialised.
fn configure_sqlite_for_one_operation() {
    use rusqlite::ffi;
    use std::os::raw::{c_int, c_void};
    crate::sqlite_memory::install();
    // SAFETY: sqlite3_config before any connection exists, with the argument
    // types these two options take (SQLite docs, "Configuration Options").
    unsafe {
        ffi::sqlite3_config(ffi::SQLITE_CONFIG_LOOKASIDE, 0 as c_int, 0 as c_int);
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_PAGECACHE,
            std::ptr::null_mut::<c_void>(),
            0 as c_int,
            0 as c_int,
        );
    }
}

/// `main` of both binaries.
pub fn main_for(mode: Mode) -> ! {
    configure_sqlite_for_one_operation();
    let status = run(
        mode,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        |k| std::env::var(k).ok(),
    );
    std::process::exit(status)
}
