//! The lab's datastore as seen from the lab process: the SQLite file, or
//! etcd through a thread inside the router namespace (where etcd listens).

use std::sync::Mutex;
use std::sync::mpsc::{self, Sender};

use calinet_agent::datastore::{self, DynStore};
use calinet_ipam::{KeyValue, Revision, Store, StoreError, TxnOp};

use crate::error::{Error, Result};
use crate::state::LabState;

/// Opens the lab's datastore.
pub fn open(state: &LabState) -> Result<DynStore> {
    match &state.etcd {
        None => Ok(datastore::open(&state.datastore, None)?),
        Some(e) => Ok(std::sync::Arc::new(NetnsStore::open(
            &state.router,
            &e.endpoint,
        )?)),
    }
}

type Job = Box<dyn FnOnce(&dyn Store) + Send>;

/// A store whose every call runs on a thread inside another network
/// namespace (with the etcd client and its runtime created there).
struct NetnsStore {
    tx: Mutex<Sender<Job>>,
}

impl std::fmt::Debug for NetnsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetnsStore")
    }
}

impl NetnsStore {
    fn open(netns: &str, endpoint: &str) -> Result<Self> {
        let ns = testlab::Netns::existing(netns)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let endpoint = endpoint.to_owned();
        // The thread ends when the store (the sender) is dropped.
        let _thread = ns.spawn(move || {
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
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(NetnsStore { tx: Mutex::new(tx) }),
            Ok(Err(e)) => Err(Error::Lab(format!("etcd client in {netns}: {e}"))),
            Err(_) => Err(Error::Lab(format!("etcd client thread in {netns} died"))),
        }
    }

    fn call<T: Send + 'static>(&self, f: impl FnOnce(&dyn Store) -> T + Send + 'static) -> T {
        let (rtx, rrx) = mpsc::channel();
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

type SR<T> = std::result::Result<T, StoreError>;

impl Store for NetnsStore {
    fn get(&self, key: &str) -> SR<Option<KeyValue>> {
        let key = key.to_owned();
        self.call(move |s| s.get(&key))
    }
    fn list(&self, prefix: &str) -> SR<Vec<KeyValue>> {
        let prefix = prefix.to_owned();
        self.call(move |s| s.list(&prefix))
    }
    fn create(&self, key: &str, value: &[u8]) -> SR<Revision> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.call(move |s| s.create(&key, &value))
    }
    fn update(&self, key: &str, value: &[u8], expected: Revision) -> SR<Revision> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.call(move |s| s.update(&key, &value, expected))
    }
    fn delete(&self, key: &str, expected: Revision) -> SR<()> {
        let key = key.to_owned();
        self.call(move |s| s.delete(&key, expected))
    }
    fn txn(&self, ops: &[TxnOp]) -> SR<Revision> {
        let ops = ops.to_vec();
        self.call(move |s| s.txn(&ops))
    }
}
