//! Model-based property test: random assign / release / claim / borrow / GC
//! sequences across nodes, pools and two allocators, against a reference model.

use std::sync::Arc;

use calinet_ipam::MemStore;
use calinet_ipam::proptest_support::{ops_strategy, run_model};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn mem_store_matches_the_reference_model(ops in ops_strategy(3, 6, 60)) {
        let store = Arc::new(MemStore::new());
        if let Err(e) = run_model(store, &ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[cfg(feature = "sqlite")]
proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn sqlite_store_matches_the_reference_model(ops in ops_strategy(3, 6, 40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(calinet_ipam::SqliteStore::open(dir.path().join("m.db")).expect("open"));
        if let Err(e) = run_model(store, &ops) {
            prop_assert!(false, "{}", e);
        }
    }
}
