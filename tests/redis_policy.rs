//! A Redis that may evict keyscope's records is refused at start: a lost member binding,
//! deny-mode scope or deleted-owner marker would widen access. `noeviction` and the
//! `volatile-*` policies start (keyscope's records have no TTL); a Redis that hides its
//! configuration starts with a warning.

#![allow(clippy::panic)] // tests fail by panicking

#[path = "common/process.rs"]
mod process;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use keyscope::store::{RedisStore, StoreError};
use process::ServerOptions;
use redis_server::{RedisCluster, RedisServer};

/// How long a start that must fail may take.
const QUICKLY: Duration = Duration::from_secs(20);

fn on_redis(redis: &RedisServer, prefix: &str) -> ServerOptions {
    ServerOptions::default()
        .env("KEYSCOPE__STORE__KIND", "redis")
        .env("KEYSCOPE__STORE__REDIS__URL", &redis.url())
        .env("KEYSCOPE__STORE__REDIS__PREFIX", prefix)
}

#[test]
fn a_redis_that_may_evict_keyscope_keys_is_refused_at_start() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let prefix = redis_server::fresh_prefix();
    let (code, output) = on_redis(&redis, &prefix).run_to_exit(QUICKLY);
    assert!(code.is_some_and(|c| c != 0), "an evicting Redis must not be served\n{output}");
    let errors: Vec<&str> = output.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line\n{output}");
    let line = errors[0];
    assert!(line.contains("maxmemory-policy `allkeys-lru`") && line.contains("noeviction"), "{line}");
    assert!(line.contains("widen access"), "the line says why: {line}");
    assert!(!output.contains("its token is shown once"), "no bootstrap key is made\n{output}");
    let written = redis.cli(&["DBSIZE"]).expect("redis-cli DBSIZE");
    assert_eq!(written, "0", "nothing is written to a refused Redis");

    // The same Redis, made safe, is served.
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]).expect("CONFIG SET");
    let server = on_redis(&redis, &prefix).start();
    server.cli().args(["key", "list", "--tenant", "system"]).run().success();
}

#[test]
fn a_redis_with_a_volatile_policy_is_served() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "volatile-lru"]);
    let server = on_redis(&redis, &redis_server::fresh_prefix()).start();
    server.cli().args(["key", "list", "--tenant", "system"]).run().success();
}

#[test]
fn a_redis_that_hides_its_configuration_is_served_with_a_warning() {
    // CONFIG renamed away, or denied to keyscope's ACL user (as managed services do).
    let renamed = RedisServer::start_with(&["--rename-command", "CONFIG", ""]);
    let acl = RedisServer::start_with(&["--user", "keyscope", "on", ">ks-pw", "~*", "&*", "+@all", "-config"]);
    for (redis, user) in [(&renamed, None), (&acl, Some(("keyscope", "ks-pw")))] {
        let mut options = on_redis(redis, &redis_server::fresh_prefix());
        if let Some((name, password)) = user {
            options =
                options.env("KEYSCOPE__STORE__REDIS__USERNAME", name).env("KEYSCOPE__STORE__REDIS__PASSWORD", password);
        }
        let server = options.start();
        server.cli().args(["key", "list", "--tenant", "system"]).run().success();
        let warned = server.stderr_lines().iter().any(|l| l.contains("cannot read Redis's maxmemory-policy"));
        assert!(warned, "no warning about the unreadable policy:\n{}", server.stderr_lines().join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_master_of_a_cluster_is_asked() {
    let cluster = RedisCluster::start();
    let evicting = &cluster.nodes[1];
    evicting.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"]).expect("CONFIG SET");
    let refused = RedisStore::connect(redis_server::options(cluster.url(), true)).await;
    let Err(StoreError::Unsafe(message)) = &refused else { panic!("{refused:?}") };
    assert!(message.contains(&evicting.port.to_string()) && message.contains("allkeys-lfu"), "{message}");
    evicting.cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-ttl"]).expect("CONFIG SET");
    RedisStore::connect(redis_server::options(cluster.url(), true)).await.expect("a safe cluster is used");
}
