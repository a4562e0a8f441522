//! The etcd v3 datastore (feature `etcd`), for clusters that outgrow one host.
//!
//! # Mapping
//!
//! - revisions are etcd's mod revisions (store-wide, from the response header);
//! - `create` is `Txn(If create_revision(key) == 0 Then Put Else Get)`;
//! - `update` / `delete` are `Txn(If mod_revision(key) == expected Then Put/Delete
//!   Else Get)`; the `Else Get` tells `NotFound` from `RevisionMismatch` in
//!   the same round trip;
//! - `list` is a range read of `[prefix, prefix_end)` in pages of
//!   [`EtcdConfig::page_size`] keys, every page pinned to the revision of the
//!   first, so a large listing is still one consistent snapshot;
//! - the multi-key `txn` is one etcd `Txn` with all compares and all writes;
//! - `watch` is an etcd watch with `start_revision`, re-created on another
//!   endpoint (or the same, once it is back) from the next revision after a
//!   disconnect; a compacted start revision is reported as
//!   [`WatchError::Compacted`].
//!
//! Keys and values are whatever the caller writes: the allocator writes
//! Calico's etcd v3 keys ([`crate::keys`]) with Calico's JSON, so `etcdctl get
//! --prefix /calico/ipam/v2/` shows what a Calico user expects.
//!
//! # Blocking
//!
//! [`Store`] is synchronous. An `EtcdStore` owns a small tokio runtime (one
//! worker thread) that drives the gRPC connections and watches; each call
//! blocks the calling thread on it until the answer (or the timeout) comes.
//! Many threads may call one `EtcdStore` at the same time; their requests
//! share the HTTP/2 connection. Calling it from inside an async task would
//! block that task's executor: use `spawn_blocking` there. A call made on a
//! thread that is already running a tokio runtime is refused with an error
//! rather than a panic.
//!
//! # Failures
//!
//! Each endpoint has its own client, so every error names the endpoint and the
//! key. A request that fails because no connection could be made (nothing was
//! sent), and a read that fails in any transient way (connection lost,
//! timeout, leader change), is retried on the next endpoint after a backoff
//! ([`RetryPolicy`]); when the attempts are used up the call returns
//! [`StoreError::Unavailable`], the typed retryable error, with an
//! [`EtcdError`] naming the endpoint. A write whose request was sent but whose
//! answer was lost is not repeated blindly (it may have been applied): it
//! returns `Unavailable` at once with [`EtcdError::outcome_unknown`] set, and
//! the caller re-reads before trying again, as after any CAS conflict.
//! Broken connections are dropped and re-made on the next use.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOpResponse,
    WatchOptions,
};

use super::{
    KeyValue, Listing, Revision, Store, StoreError, StoreResult, TxnOp, WatchError, WatchEvent,
    WatchSource, Watcher, check_distinct_keys, txn_keys,
};

/// Certificate files for a TLS connection to etcd (`https://` endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA that signed the etcd server certificates
    /// (etcd's `--trusted-ca-file`).
    pub ca: PathBuf,
    /// PEM client certificate and key, when etcd requires client
    /// certificates (`--client-cert-auth`).
    pub client: Option<(PathBuf, PathBuf)>,
    /// Server name to verify instead of the endpoint's host name.
    pub domain: Option<String>,
}

/// etcd user credentials (`etcdctl --user name:password`). The password is
/// redacted in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How a call retries when no etcd endpoint can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call in total, across endpoints (at least 1).
    pub attempts: u32,
    /// Wait after the first failed attempt; doubles after each further one.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, failed_attempts: u32) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(1 << exp)
            .min(self.max_backoff)
    }
}

/// Where and how to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs (`http://host:2379` or, with [`EtcdConfig::tls`],
    /// `https://host:2379`). Calls go to one endpoint and move to the next
    /// when it cannot be reached.
    pub endpoints: Vec<String>,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one request (not for watch streams).
    pub request_timeout: Duration,
    /// Retries of calls that could not reach any endpoint.
    pub retry: RetryPolicy,
    /// TLS certificate files; `None` for plain HTTP.
    pub tls: Option<TlsFiles>,
    /// User and password when etcd has authentication enabled.
    pub credentials: Option<Credentials>,
    /// Keys per page of a `list`.
    pub page_size: i64,
}

impl EtcdConfig {
    /// Defaults for the given endpoints: 2 s connect timeout, 5 s request
    /// timeout, 4 attempts with 50 ms..1 s backoff, no TLS, pages of 500 keys.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            tls: None,
            credentials: None,
            page_size: 500,
        }
    }

    /// Set the connect and request timeouts.
    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> EtcdConfig {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    /// Set the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> EtcdConfig {
        self.retry = retry;
        self
    }

    /// Use TLS with these certificate files.
    pub fn with_tls(mut self, tls: TlsFiles) -> EtcdConfig {
        self.tls = Some(tls);
        self
    }

    /// Authenticate as `user` (etcd's `auth enable`).
    pub fn with_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> EtcdConfig {
        self.credentials = Some(Credentials {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// Set the page size of `list`.
    pub fn with_page_size(mut self, keys: i64) -> EtcdConfig {
        self.page_size = keys;
        self
    }

    fn validate(&self) -> Result<(), EtcdError> {
        let bad = |rule: String| Err(EtcdError::Config { rule });
        if self.endpoints.is_empty() {
            return bad("at least one endpoint is required".into());
        }
        for e in &self.endpoints {
            let https = e.starts_with("https://");
            if !(https || e.starts_with("http://")) {
                return bad(format!(
                    "endpoint {e:?} must start with http:// or https://"
                ));
            }
            if https != self.tls.is_some() {
                return bad(format!(
                    "endpoint {e:?}: https:// endpoints need TLS files and http:// endpoints must not have them"
                ));
            }
        }
        if self.page_size < 1 {
            return bad(format!("page size {} must be at least 1", self.page_size));
        }
        if self.retry.attempts < 1 {
            return bad("retry attempts must be at least 1".into());
        }
        Ok(())
    }
}

/// What went wrong talking to etcd; the `source` of a [`StoreError`] from an
/// [`EtcdStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// A request to one endpoint failed.
    #[error(
        "etcd endpoint {endpoint} failed after {attempts} attempt(s){}",
        if *outcome_unknown { " (the write may or may not have been applied)" } else { "" }
    )]
    Endpoint {
        /// The endpoint of the last attempt.
        endpoint: String,
        /// Attempts made by this call.
        attempts: u32,
        /// The request was sent but its answer lost: a write may have happened.
        outcome_unknown: bool,
        /// The client's error (an `etcd_client::Error`, boxed so that the
        /// client library's type is not part of this API).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The configuration broke a rule.
    #[error("invalid etcd configuration: {rule}")]
    Config {
        /// The rule.
        rule: String,
    },
    /// A TLS file could not be read.
    #[error("cannot read TLS file {path}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The runtime could not be made or was used from inside another runtime.
    #[error("{0}")]
    Runtime(String),
    /// etcd returned a key that is not UTF-8 (calinet keys always are).
    #[error("etcd returned a non-UTF-8 key {0:?}")]
    NonUtf8Key(String),
}

impl EtcdError {
    /// Whether a write may have been applied although the call failed.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            EtcdError::Endpoint {
                outcome_unknown: true,
                ..
            }
        )
    }
}

/// How a client error should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Nothing reached the server: safe to retry anything.
    NotSent,
    /// The connection broke or timed out with the request in flight.
    InFlight,
    /// The server answered with an error: retrying will not help.
    Permanent,
}

fn classify(e: &etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => Failure::NotSent,
        E::GRpcStatus(s) => {
            // gRPC status codes (stable wire values).
            const CANCELLED: i32 = 1;
            const UNKNOWN: i32 = 2;
            const DEADLINE_EXCEEDED: i32 = 4;
            const ABORTED: i32 = 10;
            const UNAVAILABLE: i32 = 14;
            let msg = s.message().to_ascii_lowercase();
            match i32::from(s.code()) {
                // tonic's wording when no connection could be made; note
                // that "connection reset" (in flight) must not match.
                UNAVAILABLE
                    if msg.contains("error trying to connect")
                        || msg.contains("tcp connect error")
                        || msg.contains("connection refused")
                        || msg.contains("dns error") =>
                {
                    Failure::NotSent
                }
                UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | UNKNOWN | ABORTED => {
                    Failure::InFlight
                }
                _ if msg.contains("etcdserver: leader changed")
                    || msg.contains("etcdserver: no leader")
                    || msg.contains("etcdserver: request timed out") =>
                {
                    Failure::InFlight
                }
                _ => Failure::Permanent,
            }
        }
        _ => Failure::Permanent,
    }
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.message().contains("required revision has been compacted"))
}

/// One endpoint and its (lazily made, dropped when broken) client.
struct Endpoint {
    url: String,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let connected = self.client.lock().map(|c| c.is_some()).unwrap_or(false);
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("connected", &connected)
            .finish()
    }
}

/// The [`Store`] on etcd v3 (see the [module docs](self) for the mapping,
/// blocking and failure behaviour).
#[derive(Debug)]
pub struct EtcdStore {
    /// Shared with running watches, which may outlive the store handle.
    rt: std::sync::Arc<tokio::runtime::Runtime>,
    shared: std::sync::Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: EtcdConfig,
    options: ConnectOptions,
    endpoints: Vec<Endpoint>,
    current: AtomicUsize,
}

fn read_tls_file(path: &Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::TlsFile {
        path: path.to_owned(),
        source,
    })
}

fn store_err(op: &'static str, key: &str, e: EtcdError) -> StoreError {
    StoreError::Backend {
        op,
        key: key.to_owned(),
        source: Box::new(e),
    }
}

/// The smallest key above every key starting with `prefix`; `\0` (etcd's
/// "to the end") when there is none.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0xFF {
            b.push(last + 1);
            return b;
        }
    }
    vec![0]
}

/// The start key of a prefix range (etcd needs a non-empty key).
fn range_start(prefix: &str) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    }
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue, EtcdError> {
    let key = std::str::from_utf8(kv.key())
        .map_err(|_| EtcdError::NonUtf8Key(String::from_utf8_lossy(kv.key()).into_owned()))?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    })
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map_or(0, |h| h.revision())
}

impl Shared {
    /// The client of endpoint `i`, connecting if needed.
    async fn client(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let ep = &self.endpoints[i];
        if let Some(c) = ep.client.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        let c = Client::connect([ep.url.as_str()], Some(self.options.clone())).await?;
        *ep.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Forget endpoint `i`'s connection and move on to the next endpoint.
    fn fail_over(&self, i: usize) {
        let n = self.endpoints.len();
        tracing::warn!(
            from = %self.endpoints[i].url,
            to = %self.endpoints[(i + 1) % n].url,
            "etcd endpoint failed; failing over"
        );
        *self.endpoints[i]
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        let _ = self
            .current
            .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }
}

impl EtcdStore {
    /// Connect to etcd. Connections are made lazily, so this succeeds while
    /// etcd is down; it fails only on a bad configuration or TLS file.
    pub fn connect(config: EtcdConfig) -> StoreResult<EtcdStore> {
        let what = config.endpoints.join(",");
        config
            .validate()
            .map_err(|e| store_err("connect", &what, e))?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(10), config.request_timeout);
        if let Some(c) = &config.credentials {
            options = options
                .with_user(c.user.clone(), c.password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &config.tls {
            let ca = read_tls_file(&tls.ca).map_err(|e| store_err("connect", &what, e))?;
            let mut t = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(ca));
            if let Some((cert, key)) = &tls.client {
                let cert = read_tls_file(cert).map_err(|e| store_err("connect", &what, e))?;
                let key = read_tls_file(key).map_err(|e| store_err("connect", &what, e))?;
                t = t.identity(etcd_client::Identity::from_pem(cert, key));
            }
            if let Some(d) = &tls.domain {
                t = t.domain_name(d.clone());
            }
            options = options.with_tls(t);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("calinet-etcd")
            .enable_all()
            .build()
            .map_err(|e| store_err("connect", &what, EtcdError::Runtime(e.to_string())))?;
        let endpoints = config
            .endpoints
            .iter()
            .map(|url| Endpoint {
                url: url.clone(),
                client: Mutex::new(None),
            })
            .collect();
        Ok(EtcdStore {
            rt: std::sync::Arc::new(rt),
            shared: std::sync::Arc::new(Shared {
                config,
                options,
                endpoints,
                current: AtomicUsize::new(0),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EtcdConfig {
        &self.shared.config
    }

    /// Compact etcd's history up to `revision` (as `etcdctl compact`);
    /// watches that still need it report [`WatchError::Compacted`].
    pub fn compact(&self, revision: Revision) -> StoreResult<()> {
        self.call("compact", "", false, move |mut c| async move {
            c.compact(revision, None).await.map(|_| ())
        })
    }

    /// The current store revision.
    pub fn revision(&self) -> StoreResult<Revision> {
        self.call("revision", "", false, |mut c| async move {
            let r = c
                .get(vec![0], Some(GetOptions::new().with_count_only()))
                .await?;
            Ok(header_revision(r.header()))
        })
    }

    /// Run one request with endpoint fail-over and backoff.
    fn call<T, F, Fut>(&self, op: &'static str, key: &str, write: bool, f: F) -> StoreResult<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(store_err(
                op,
                key,
                EtcdError::Runtime(
                    "EtcdStore is blocking and was called from inside an async runtime; \
                     call it through spawn_blocking"
                        .into(),
                ),
            ));
        }
        let sh = &self.shared;
        let policy = sh.config.retry;
        let mut attempts = 0;
        loop {
            let i = sh.current.load(Ordering::Relaxed) % sh.endpoints.len();
            attempts += 1;
            let res = self.rt.block_on(async {
                let c = sh.client(i).await?;
                f(c).await
            });
            let e = match res {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let failure = classify(&e);
            if failure != Failure::Permanent {
                sh.fail_over(i);
            }
            let endpoint = sh.endpoints[i].url.clone();
            let outcome_unknown = write && failure == Failure::InFlight;
            let give_up =
                failure == Failure::Permanent || outcome_unknown || attempts >= policy.attempts;
            if give_up {
                let err = EtcdError::Endpoint {
                    endpoint,
                    attempts,
                    outcome_unknown,
                    source: Box::new(e),
                };
                return Err(if failure == Failure::Permanent {
                    store_err(op, key, err)
                } else {
                    StoreError::Unavailable {
                        op,
                        key: key.to_owned(),
                        source: Box::new(err),
                    }
                });
            }
            tracing::info!(
                op,
                key,
                endpoint = %endpoint,
                attempt = attempts,
                error = %e,
                "etcd request failed; retrying"
            );
            std::thread::sleep(policy.backoff(attempts));
        }
    }

    /// A single-key conditional write: `Txn(If cmp Then op Else Get key)`.
    fn write_one(&self, op_name: &'static str, op: TxnOp) -> StoreResult<Revision> {
        let key = op.key().to_owned();
        let resp = self.call(op_name, &key, true, |mut c| {
            let txn = build_txn(std::slice::from_ref(&op), true);
            async move { c.txn(txn).await }
        })?;
        let rev = header_revision(resp.header());
        if resp.succeeded() {
            return Ok(rev);
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.mod_revision())),
            _ => None,
        });
        let current = current.flatten();
        Err(match (&op, current) {
            (TxnOp::Create { .. }, _) => StoreError::AlreadyExists { key },
            (_, None) => StoreError::NotFound { key },
            (TxnOp::Update { expected, .. } | TxnOp::Delete { expected, .. }, Some(actual)) => {
                StoreError::RevisionMismatch {
                    key,
                    expected: *expected,
                    actual,
                }
            }
        })
    }
}

/// One etcd transaction for `ops`; `else_get` reads the keys back on failure.
fn build_txn(ops: &[TxnOp], else_get: bool) -> Txn {
    let mut cmps = Vec::with_capacity(ops.len());
    let mut writes = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            TxnOp::Create { key, value } => {
                cmps.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
                writes.push(etcd_client::TxnOp::put(key.as_str(), value.clone(), None));
            }
            TxnOp::Update {
                key,
                value,
                expected,
            } => {
                cmps.push(Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    *expected,
                ));
                writes.push(etcd_client::TxnOp::put(key.as_str(), value.clone(), None));
            }
            TxnOp::Delete { key, expected } => {
                cmps.push(Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    *expected,
                ));
                writes.push(etcd_client::TxnOp::delete(key.as_str(), None));
            }
        }
    }
    let txn = Txn::new().when(cmps).and_then(writes);
    if else_get {
        let gets: Vec<_> = ops
            .iter()
            .map(|op| etcd_client::TxnOp::get(op.key(), None))
            .collect();
        txn.or_else(gets)
    } else {
        txn
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let resp = self.call(
            "get",
            key,
            false,
            |mut c| async move { c.get(key, None).await },
        )?;
        resp.kvs()
            .first()
            .map(convert_kv)
            .transpose()
            .map_err(|e| store_err("get", key, e))
    }

    fn list(&self, prefix: &str) -> StoreResult<Vec<KeyValue>> {
        self.list_with_revision(prefix).map(|l| l.kvs)
    }

    fn list_with_revision(&self, prefix: &str) -> StoreResult<Listing> {
        let page = self.shared.config.page_size;
        let end = range_end(prefix);
        // A compaction between pages invalidates the pinned revision; start over.
        'restart: for _ in 0..3 {
            let mut revision = 0;
            let mut start = range_start(prefix);
            let mut kvs = Vec::new();
            loop {
                let opts = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(page)
                    .with_revision(revision);
                let from = start.clone();
                let res = self.call("list", prefix, false, |mut c| {
                    let (from, opts) = (from.clone(), opts.clone());
                    async move { c.get(from, Some(opts)).await }
                });
                let resp = match res {
                    Ok(r) => r,
                    Err(StoreError::Backend { source, .. })
                        if revision > 0
                            && source
                                .downcast_ref::<EtcdError>()
                                .is_some_and(|e| matches!(e, EtcdError::Endpoint { source, .. } if source.downcast_ref().is_some_and(is_compacted))) =>
                    {
                        continue 'restart;
                    }
                    Err(e) => return Err(e),
                };
                if revision == 0 {
                    revision = header_revision(resp.header());
                }
                for kv in resp.kvs() {
                    kvs.push(convert_kv(kv).map_err(|e| store_err("list", prefix, e))?);
                }
                match (resp.more(), resp.kvs().last()) {
                    (true, Some(last)) => {
                        start = last.key().to_vec();
                        start.push(0);
                    }
                    _ => return Ok(Listing { kvs, revision }),
                }
            }
        }
        Err(store_err(
            "list",
            prefix,
            EtcdError::Runtime("history kept being compacted while paging".into()),
        ))
    }

    fn create(&self, key: &str, value: &[u8]) -> StoreResult<Revision> {
        self.write_one(
            "create",
            TxnOp::Create {
                key: key.to_owned(),
                value: value.to_vec(),
            },
        )
    }

    fn update(&self, key: &str, value: &[u8], expected: Revision) -> StoreResult<Revision> {
        self.write_one(
            "update",
            TxnOp::Update {
                key: key.to_owned(),
                value: value.to_vec(),
                expected,
            },
        )
    }

    fn delete(&self, key: &str, expected: Revision) -> StoreResult<()> {
        self.write_one(
            "delete",
            TxnOp::Delete {
                key: key.to_owned(),
                expected,
            },
        )
        .map(|_| ())
    }

    fn txn(&self, ops: &[TxnOp]) -> StoreResult<Revision> {
        check_distinct_keys(ops)?;
        let key0 = ops.first().map(|o| o.key().to_owned()).unwrap_or_default();
        let resp = self.call("txn", &key0, true, |mut c| {
            let txn = build_txn(ops, false);
            async move { c.txn(txn).await }
        })?;
        if resp.succeeded() {
            Ok(header_revision(resp.header()))
        } else {
            Err(StoreError::TxnConflict {
                keys: txn_keys(ops),
            })
        }
    }

    fn watch(&self, prefix: &str, from: Revision) -> StoreResult<Watcher> {
        let from = if from <= 0 {
            self.revision()? + 1
        } else {
            from
        };
        let (tx, rx) = mpsc::channel();
        let task = self
            .rt
            .spawn(run_watch(self.shared.clone(), prefix.to_owned(), from, tx));
        let source = EtcdWatch {
            rx,
            task: task.abort_handle(),
            prefix: prefix.to_owned(),
            _rt: self.rt.clone(),
        };
        Ok(Watcher::new(prefix, from, Box::new(source)))
    }
}

type WatchMsg = Result<Vec<WatchEvent>, WatchError>;

/// The receiving end of a watch task.
#[derive(Debug)]
struct EtcdWatch {
    rx: mpsc::Receiver<WatchMsg>,
    task: tokio::task::AbortHandle,
    prefix: String,
    /// Keeps the runtime (and so the watch task) alive after the store is dropped.
    _rt: std::sync::Arc<tokio::runtime::Runtime>,
}

impl Drop for EtcdWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WatchSource for EtcdWatch {
    fn poll(&mut self, timeout: Duration) -> Result<Vec<WatchEvent>, WatchError> {
        match self.rx.recv_timeout(timeout) {
            Ok(msg) => msg,
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(Vec::new()),
            // The task sends a final error before it ends on its own, so this
            // means it died (a panic); say so rather than go quiet.
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(WatchError::Store {
                prefix: self.prefix.clone(),
                next_revision: 0,
                source: store_err(
                    "watch",
                    &self.prefix,
                    EtcdError::Runtime("the watch task stopped unexpectedly".into()),
                ),
            }),
        }
    }
}

/// Keep an etcd watch going from `next`, across disconnects and endpoints.
async fn run_watch(
    sh: std::sync::Arc<Shared>,
    prefix: String,
    mut next: Revision,
    tx: mpsc::Sender<WatchMsg>,
) {
    let mut failures = 0u32;
    loop {
        let i = sh.current.load(Ordering::Relaxed) % sh.endpoints.len();
        let opts = WatchOptions::new()
            .with_range(range_end(&prefix))
            .with_start_revision(next)
            .with_progress_notify();
        let stream = match sh.client(i).await {
            Ok(mut c) => c.watch(range_start(&prefix), Some(opts)).await,
            Err(e) => Err(e),
        };
        let err = match stream {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        failures = 0;
                        if resp.compact_revision() > 0 {
                            let _ = tx.send(Err(WatchError::Compacted {
                                prefix: prefix.clone(),
                                requested: next,
                                compact_revision: resp.compact_revision(),
                            }));
                            return;
                        }
                        if resp.canceled() {
                            break etcd_client::Error::WatchError(format!(
                                "watch canceled by etcd: {}",
                                resp.cancel_reason()
                            ));
                        }
                        let mut batch = Vec::with_capacity(resp.events().len());
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let kv = match convert_kv(kv) {
                                Ok(kv) => kv,
                                Err(e) => {
                                    let _ = tx.send(Err(WatchError::Store {
                                        prefix: prefix.clone(),
                                        next_revision: next,
                                        source: store_err("watch", &prefix, e),
                                    }));
                                    return;
                                }
                            };
                            batch.push(match ev.event_type() {
                                EventType::Put => WatchEvent::Put(kv),
                                EventType::Delete => WatchEvent::Delete {
                                    key: kv.key,
                                    revision: kv.mod_revision,
                                },
                            });
                        }
                        if let Some(last) = batch.last() {
                            next = last.revision() + 1;
                            if tx.send(Ok(batch)).is_err() {
                                return; // The watcher was dropped.
                            }
                        }
                    }
                    Ok(None) => {
                        break etcd_client::Error::WatchError("watch stream ended".into());
                    }
                    Err(e) => break e,
                }
            },
            Err(e) => e,
        };
        if classify(&err) == Failure::Permanent && !matches!(err, etcd_client::Error::WatchError(_))
        {
            let _ = tx.send(Err(WatchError::Store {
                prefix: prefix.clone(),
                next_revision: next,
                source: store_err(
                    "watch",
                    &prefix,
                    EtcdError::Endpoint {
                        endpoint: sh.endpoints[i].url.clone(),
                        attempts: failures + 1,
                        outcome_unknown: false,
                        source: Box::new(err),
                    },
                ),
            }));
            return;
        }
        sh.fail_over(i);
        failures += 1;
        tokio::time::sleep(sh.config.retry.backoff(failures)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(range_end("/calico/ipam/"), b"/calico/ipam0".to_vec());
        assert_eq!(range_end(""), vec![0]);
        assert_eq!(range_start(""), vec![0]);
        assert_eq!(range_start("/a"), b"/a".to_vec());
    }

    #[test]
    fn config_rules_name_the_endpoint() {
        let e = EtcdConfig::new(["127.0.0.1:2379"]).validate().unwrap_err();
        assert!(e.to_string().contains("\"127.0.0.1:2379\""), "{e}");
        let e = EtcdConfig::new(["https://a:2379"]).validate().unwrap_err();
        assert!(e.to_string().contains("need TLS files"), "{e}");
        let e = EtcdConfig::new(Vec::<String>::new())
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("at least one endpoint"), "{e}");
        let e = EtcdConfig::new(["http://a:1"])
            .with_page_size(0)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("page size 0"), "{e}");
        EtcdConfig::new(["http://a:1", "http://b:2"])
            .validate()
            .expect("valid");
    }

    fn status(code: tonic::Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg))
    }

    #[test]
    fn failures_are_classified_by_whether_the_request_was_sent() {
        use tonic::Code;
        let cases = [
            (
                status(
                    Code::Unavailable,
                    "error trying to connect: tcp connect error: Connection refused (os error 111)",
                ),
                Failure::NotSent,
            ),
            (
                etcd_client::Error::IoError(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                )),
                Failure::NotSent,
            ),
            (
                status(Code::Unavailable, "connection reset"),
                Failure::InFlight,
            ),
            (
                status(Code::DeadlineExceeded, "timeout expired"),
                Failure::InFlight,
            ),
            (
                status(Code::Unknown, "h2 protocol error"),
                Failure::InFlight,
            ),
            (
                status(Code::Unavailable, "etcdserver: leader changed"),
                Failure::InFlight,
            ),
            (
                status(
                    Code::InvalidArgument,
                    "etcdserver: too many operations in txn request",
                ),
                Failure::Permanent,
            ),
            (
                status(
                    Code::OutOfRange,
                    "etcdserver: mvcc: required revision has been compacted",
                ),
                Failure::Permanent,
            ),
            (
                etcd_client::Error::InvalidArgs("bad".into()),
                Failure::Permanent,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(classify(&e), want, "{e}");
        }
        assert!(is_compacted(&status(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )));
    }

    #[test]
    fn lost_answer_to_a_write_says_so() {
        let e = EtcdError::Endpoint {
            endpoint: "http://10.0.0.1:2379".into(),
            attempts: 1,
            outcome_unknown: true,
            source: Box::new(status(tonic::Code::Unavailable, "connection reset")),
        };
        assert!(e.outcome_unknown());
        let text = e.to_string();
        assert!(
            text.contains("http://10.0.0.1:2379")
                && text.contains("may or may not have been applied"),
            "{text}"
        );
    }

    #[test]
    fn txns_compare_creation_for_create_and_mod_revision_otherwise() {
        // The request etcd receives, field by field.
        let ops = [
            TxnOp::Create {
                key: "/k/new".into(),
                value: b"n".to_vec(),
            },
            TxnOp::Update {
                key: "/k/upd".into(),
                value: b"u".to_vec(),
                expected: 7,
            },
            TxnOp::Delete {
                key: "/k/del".into(),
                expected: 9,
            },
        ];
        let dbg = format!("{:?}", build_txn(&ops, true));
        for want in [
            "target: Create,",
            "target: Mod,",
            "CreateRevision(0)",
            "ModRevision(7)",
            "ModRevision(9)",
        ] {
            assert!(dbg.contains(want), "{want} missing in {dbg}");
        }
    }

    #[test]
    fn passwords_are_not_printed() {
        let cfg = EtcdConfig::new(["http://a:1"]).with_credentials("calinet", "s3cret-pw");
        let dbg = format!("{cfg:?}");
        assert!(
            dbg.contains("calinet") && !dbg.contains("s3cret-pw"),
            "{dbg}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            attempts: 10,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(300),
        };
        let b: Vec<u128> = (1..=5).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(b, [50, 100, 200, 300, 300]);
    }

    #[test]
    fn missing_tls_file_is_named() {
        let cfg = EtcdConfig::new(["https://127.0.0.1:1"]).with_tls(TlsFiles {
            ca: "/nonexistent/ca.pem".into(),
            client: None,
            domain: None,
        });
        let e = EtcdStore::connect(cfg).unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).expect("source"));
        assert!(chain.contains("/nonexistent/ca.pem"), "{chain}");
    }

    #[test]
    fn unreachable_endpoint_is_a_typed_retryable_error_naming_it() {
        // Port 1 on loopback: nothing listens, connect is refused at once.
        let cfg = EtcdConfig::new(["http://127.0.0.1:1"]).with_retry(RetryPolicy {
            attempts: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        });
        let s = EtcdStore::connect(cfg).expect("connect is lazy");
        let e = s.get("/calico/ipam/v2/handle/h1").unwrap_err();
        assert!(
            matches!(e, StoreError::Unavailable { op: "get", .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("/calico/ipam/v2/handle/h1"), "{e}");
        let src = std::error::Error::source(&e).expect("source").to_string();
        assert!(src.contains("http://127.0.0.1:1"), "{src}");
        assert!(src.contains("2 attempt"), "{src}");
        // Nothing was sent, so the connection failure was retried, not
        // reported as a write with an unknown outcome.
        let e = s.create("/calico/ipam/v2/handle/h1", b"{}").unwrap_err();
        let src = std::error::Error::source(&e).expect("source");
        let etcd = src.downcast_ref::<EtcdError>().expect("an EtcdError");
        assert!(
            !etcd.outcome_unknown(),
            "{etcd}: {:?}",
            std::error::Error::source(etcd)
        );
        assert!(
            matches!(etcd, EtcdError::Endpoint { attempts: 2, .. }),
            "{etcd:?}"
        );
    }
}
