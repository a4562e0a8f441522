//! Watching a prefix for changes, the same way on every backend.
//!
//! # Design
//!
//! The [`Store`](super::Store) trait is synchronous, so a watch is a blocking
//! pull: [`Store::watch`](super::Store::watch) returns a [`Watcher`], and the
//! caller asks it for the next change with a timeout
//! ([`Watcher::next_timeout`]), without waiting ([`Watcher::try_next`]) or
//! forever (the [`Iterator`] impl). A node agent's loop stays a plain loop
//! that can also tick its own timers between changes.
//!
//! The model is etcd's: every write of the store gets a store-wide revision,
//! a watch starts at a revision and sees every later change under its prefix,
//! in revision order, and a write of several keys in one transaction shows up
//! as several events with the same revision. The usual pattern is:
//!
//! 1. [`Store::list_with_revision`](super::Store::list_with_revision) reads the
//!    prefix and the revision `r` it was read at;
//! 2. `watch(prefix, r + 1)` delivers exactly the changes after that read;
//! 3. after any interruption, `watch(prefix, watcher.next_revision())` resumes
//!    without a gap (events of one revision may be repeated, never skipped);
//! 4. when the backend no longer has the history to resume
//!    ([`WatchError::Compacted`]), go back to step 1.
//!
//! Backends keep a bounded history: etcd until it is compacted, `SqliteStore`
//! a configurable number of revisions in the file (so watchers in other
//! processes see them), `MemStore` in memory once a watch was asked for.
//!
//! ```
//! use std::time::Duration;
//! use calinet_ipam::{MemStore, Store, WatchError, WatchEvent};
//!
//! let store = MemStore::new();
//! store.create("/calico/ipam/v2/handle/a", b"{}").unwrap();
//! // 1. list, 2. watch from just after the listing.
//! let listing = store.list_with_revision("/calico/ipam/v2/handle/").unwrap();
//! let mut watch = store.watch("/calico/ipam/v2/handle/", listing.revision + 1).unwrap();
//! store.create("/calico/ipam/v2/handle/b", b"{}").unwrap();
//! match watch.next_timeout(Duration::from_secs(1)) {
//!     Ok(Some(WatchEvent::Put(kv))) => assert_eq!(kv.key, "/calico/ipam/v2/handle/b"),
//!     Ok(other) => panic!("unexpected {other:?}"),
//!     // 4. history gone: list again and watch from the new listing.
//!     Err(e) if e.needs_relist() => unreachable!("nothing was compacted"),
//!     Err(e) => panic!("{e}"),
//! }
//! // 3. resume later without a gap.
//! let resume_at = watch.next_revision();
//! drop(watch);
//! let _again = store.watch("/calico/ipam/v2/handle/", resume_at).unwrap();
//! # let _: Option<WatchError> = None;
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use super::{KeyValue, Revision, StoreError};

/// One change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// The key was created or replaced; `kv.mod_revision` is the write's revision.
    Put(KeyValue),
    /// The key was deleted at `revision`.
    Delete {
        /// The deleted key.
        key: String,
        /// Revision of the delete.
        revision: Revision,
    },
}

impl WatchEvent {
    /// The key that changed.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// A consistent read of a prefix: the keys and the store revision they were
/// read at. Watching from `revision + 1` continues exactly after this read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The keys under the prefix, in key order.
    pub kvs: Vec<KeyValue>,
    /// The store revision of the read.
    pub revision: Revision,
}

/// Why a watch cannot deliver more changes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The history the watch needs was compacted away: changes between
    /// `requested` and `compact_revision` are lost. Re-list the prefix
    /// ([`Store::list_with_revision`](super::Store::list_with_revision)) and
    /// watch again from the listing's revision + 1.
    #[error(
        "watch on {prefix:?} cannot continue from revision {requested}: history before revision \
         {compact_revision} was compacted; re-list and watch again"
    )]
    Compacted {
        /// The watched prefix.
        prefix: String,
        /// The first revision the watch still needed.
        requested: Revision,
        /// The store's compaction point: the oldest revision still in the
        /// history (etcd's `compact_revision`); everything before it is gone.
        compact_revision: Revision,
    },
    /// The backend failed in a way the watch could not recover from by
    /// itself (transient outages are retried inside the watch). Resume with
    /// `watch(prefix, next_revision())` once the store is back.
    #[error("watch on {prefix:?} failed at revision {next_revision}")]
    Store {
        /// The watched prefix.
        prefix: String,
        /// Where to resume.
        next_revision: Revision,
        /// The cause.
        #[source]
        source: StoreError,
    },
}

impl WatchError {
    /// Whether the caller must re-list (history is gone) rather than resume.
    pub fn needs_relist(&self) -> bool {
        matches!(self, WatchError::Compacted { .. })
    }
}

/// What a backend plugs into a [`Watcher`]: a blocking source of batches of
/// events in revision order, starting at the revision the watch was created
/// with. Implement it to add watch support to a new backend.
pub trait WatchSource: Send + fmt::Debug {
    /// Wait up to `timeout` for the next events. An empty batch means the
    /// timeout passed. Errors are final for this source.
    fn poll(&mut self, timeout: Duration) -> Result<Vec<WatchEvent>, WatchError>;
}

/// A running watch of one prefix (see the [module docs](self) for the design).
///
/// Dropping it stops the watch and releases its backend resources.
#[derive(Debug)]
pub struct Watcher {
    prefix: String,
    next_revision: Revision,
    buffered: VecDeque<WatchEvent>,
    source: Box<dyn WatchSource>,
    failed: bool,
}

impl Watcher {
    /// Wrap a backend source that starts at revision `from` (>= 1).
    pub fn new(prefix: &str, from: Revision, source: Box<dyn WatchSource>) -> Watcher {
        Watcher {
            prefix: prefix.to_owned(),
            next_revision: from,
            buffered: VecDeque::new(),
            source,
            failed: false,
        }
    }

    /// The watched prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The revision to resume from with `watch(prefix, next_revision())` so
    /// that no change is missed. When a transaction's events were only partly
    /// taken, this is that transaction's revision (its events repeat).
    pub fn next_revision(&self) -> Revision {
        self.next_revision
    }

    /// The next change, waiting at most `timeout`; `Ok(None)` when none came.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<WatchEvent>, WatchError> {
        if self.buffered.is_empty() && !self.failed {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.source.poll(left) {
                    Ok(batch) => {
                        // A source may hand back events it already gave (after
                        // an internal reconnect); drop what is behind us.
                        let floor = self.next_revision;
                        self.buffered
                            .extend(batch.into_iter().filter(|e| e.revision() >= floor));
                    }
                    Err(mut e) => {
                        self.failed = true;
                        // The watcher's own position is the one to resume from.
                        if let WatchError::Store { next_revision, .. } = &mut e {
                            *next_revision = self.next_revision;
                        }
                        return Err(e);
                    }
                }
                if !self.buffered.is_empty() || Instant::now() >= deadline {
                    break;
                }
            }
        }
        let Some(ev) = self.buffered.pop_front() else {
            return Ok(None);
        };
        let rev = ev.revision();
        // Resume after this revision only once all of its events are taken.
        if self.buffered.front().is_none_or(|n| n.revision() != rev) {
            self.next_revision = rev + 1;
        } else {
            self.next_revision = rev;
        }
        Ok(Some(ev))
    }

    /// The next change if one is ready now.
    pub fn try_next(&mut self) -> Result<Option<WatchEvent>, WatchError> {
        self.next_timeout(Duration::ZERO)
    }

    /// Collect changes until `count` arrived or `timeout` passed in total.
    pub fn collect_timeout(
        &mut self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<WatchEvent>, WatchError> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_timeout(left)? {
                Some(ev) => out.push(ev),
                None => break,
            }
        }
        Ok(out)
    }
}

/// Blocks until the next change; ends (returns `None`) after an error.
impl Iterator for Watcher {
    type Item = Result<WatchEvent, WatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed && self.buffered.is_empty() {
                return None;
            }
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(ev)) => return Some(Ok(ev)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
