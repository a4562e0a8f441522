//! Explicit network namespaces.
//!
//! Every kernel operation of this crate names the namespace it works in with a
//! [`Netns`]. Work that must run *inside* a namespace (creating a netlink socket,
//! writing `/proc/sys`) runs on a short-lived dedicated thread that calls `setns`,
//! so the caller's threads never change namespace; when the caller's thread is
//! already in the target namespace, the work runs directly on it.

use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

/// An open network namespace: a file descriptor on `/run/netns/NAME`,
/// `/proc/PID/ns/net` or similar, plus its path for messages.
#[derive(Clone)]
pub struct Netns {
    file: Arc<File>,
    path: PathBuf,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Netns({})", self.path.display())
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

impl Netns {
    /// Opens the namespace file at `path` (e.g. `/run/netns/pod1`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| Error::Netns {
            path: path.clone(),
            source,
        })?;
        Ok(Netns {
            file: Arc::new(file),
            path,
        })
    }

    /// Opens `/run/netns/NAME` (what `ip netns add NAME` creates).
    pub fn named(name: &str) -> Result<Self> {
        Netns::open(Path::new("/run/netns").join(name))
    }

    /// The namespace of the calling thread (`/proc/thread-self/ns/net`), taken
    /// explicitly so that later work is pinned to it even if threads move.
    pub fn current() -> Result<Self> {
        Netns::open("/proc/thread-self/ns/net")
    }

    /// Wraps an already open namespace file.
    pub fn from_file(file: File, path: impl Into<PathBuf>) -> Self {
        Netns {
            file: Arc::new(file),
            path: path.into(),
        }
    }

    /// The open namespace file (e.g. to hand its fd to `IFLA_NET_NS_FD`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the calling thread is already in this namespace: same
    /// `(st_dev, st_ino)` as `/proc/thread-self/ns/net` (how the kernel identifies a
    /// namespace). `false` when either cannot be read, so that the caller takes the
    /// safe path.
    fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (
            self.file.metadata(),
            std::fs::metadata("/proc/thread-self/ns/net"),
        ) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Runs `f` inside this namespace and returns its result. Sockets created by `f`
    /// stay bound to this namespace after it returns.
    ///
    /// When the calling thread is already in this namespace, `f` runs right here:
    /// a `setns` into it would be a no-op, `f` only sees the namespace (not which
    /// thread it is on), and the caller's thread is not changed either way; this
    /// saves a thread spawn per call (e.g. the CNI plugin's host-side socket and
    /// sysctls). Otherwise `f` runs on a fresh thread that enters the namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        if self.is_current() {
            return Ok(f());
        }
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on a valid, open namespace fd; it only affects this
                // thread, which ends when the scope ends.
                let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(Error::Netns {
                        path: self.path.clone(),
                        source: std::io::Error::last_os_error(),
                    });
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Writes `value` to `/proc/sys/<key>` (key with `/` separators, e.g.
    /// `net/ipv4/conf/cali123/proxy_arp`) inside this namespace.
    pub fn write_sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.write_sysctls(&[(key.to_string(), value.to_string())])
    }

    /// Writes several sysctls in one namespace switch.
    pub fn write_sysctls(&self, entries: &[(String, String)]) -> Result<()> {
        let netns = self.to_string();
        self.run(|| {
            for (key, value) in entries {
                let path = format!("/proc/sys/{key}");
                std::fs::write(&path, value).map_err(|source| Error::Sysctl {
                    path: path.clone(),
                    netns: netns.clone(),
                    source,
                })?;
            }
            Ok(())
        })?
    }

    /// Reads `/proc/sys/<key>` inside this namespace (trimmed).
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let netns = self.to_string();
        self.run(|| {
            let path = format!("/proc/sys/{key}");
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|source| Error::Sysctl {
                    path,
                    netns,
                    source,
                })
        })?
    }
}
