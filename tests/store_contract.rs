//! The store contract suite (tests/common/contract.rs) against every backend: memory,
//! standalone Redis (a redis-server per test) and a three-master Redis Cluster.

#![allow(clippy::panic)] // tests fail by panicking

#[path = "common/contract.rs"]
mod contract;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;

use keyscope::store::{MemoryStore, Store};
use redis_server::{RedisCluster, RedisServer};

contract_tests!(memory, async { (Arc::new(MemoryStore::new()) as Arc<dyn Store>, ()) });

contract_tests!(cached_memory, async {
    let cached = keyscope::cache::CachedStore::new(Arc::new(MemoryStore::new()), Default::default());
    (Arc::new(cached) as Arc<dyn Store>, ())
});

contract_tests!(redis, async {
    let server = RedisServer::start();
    let store = redis_server::store(server.url(), false).await;
    (Arc::new(store) as Arc<dyn Store>, server)
});

contract_suite!(redis_cluster_passes_every_contract_case, RedisCluster::start(), |cluster: &RedisCluster| {
    let url = cluster.url();
    async move { Arc::new(redis_server::store(url, true).await) as Arc<dyn Store> }
});
