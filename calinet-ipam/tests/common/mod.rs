//! Helpers shared by the etcd test binaries.

use std::time::Duration;

use calinet_ipam::{EtcdConfig, EtcdStore, RetryPolicy};

/// A store on `endpoint` with short timeouts, so fault tests stay quick.
pub fn store(endpoint: &str) -> EtcdStore {
    EtcdStore::connect(
        EtcdConfig::new([endpoint])
            .with_timeouts(Duration::from_secs(1), Duration::from_secs(3))
            .with_retry(RetryPolicy {
                attempts: 3,
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
            }),
    )
    .expect("connect")
}
