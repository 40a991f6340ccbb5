//! The store contract suite (tests/common/contract.rs) against every backend.

#![allow(clippy::panic)] // tests fail by panicking

#[path = "common/contract.rs"]
mod contract;

use std::sync::Arc;

use keyscope::store::{MemoryStore, Store};

contract_tests!(memory, async { Arc::new(MemoryStore::new()) as Arc<dyn Store> });
