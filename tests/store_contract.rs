//! The store contract suite (tests/common/contract.rs) against every backend.

#[path = "common/contract.rs"]
mod contract;

use std::sync::Arc;

use keyscope::store::{MemoryStore, Store};

contract_tests!(memory, async { Arc::new(MemoryStore::new()) as Arc<dyn Store> });
