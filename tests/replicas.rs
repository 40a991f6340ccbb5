//! Two keyscope replicas sharing one Redis: a change made through A reaches B's cache through
//! the change feed well before the cache TTL, for revoke, disable, scope update and forced
//! scope delete; concurrent writers never leave a key on a deleted scope or widen access.

#![allow(clippy::panic)] // tests fail by panicking

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use common::{TestServer, eventually, read_rules};
use keyscope::{cache::CacheSettings, grpc::pb};
use redis_server::{RedisCluster, RedisServer, fresh_prefix};

const ACME: &str = "acme";
/// Far longer than any test waits: whatever B sees within the test came through the feed.
const LONG_TTL: Duration = Duration::from_secs(600);
const WITHIN: Duration = Duration::from_secs(5);

fn cache() -> CacheSettings {
    CacheSettings { time_to_live: LONG_TTL, negative_ttl: LONG_TTL, ..CacheSettings::default() }
}

async fn pair(redis: &RedisServer) -> (TestServer, TestServer) {
    let prefix = fresh_prefix();
    let a = TestServer::start_on_redis(&redis.url(), &prefix, cache(), None).await;
    let b = TestServer::start_on_redis(&redis.url(), &prefix, cache(), Some(&a.admin_token)).await;
    (a, b)
}

fn reason(r: &pb::CheckResponse) -> pb::Reason {
    pb::Reason::try_from(r.reason).expect("known reason")
}

/// B answers from its cache: the check is a hit the second time.
/// Checks on B until B answers from its cache (the feed's echo of the key's creation may drop
/// an earlier fill).
async fn warm(b: &TestServer, token: &str, module: &str) {
    let cache = b.cache.clone().expect("cache");
    eventually("B answers from its cache", WITHIN, || async {
        let before = cache.stats().hits;
        let answer = b.check(token, module, pb::Action::Read).await;
        assert!(answer.allowed, "{answer:?}");
        cache.stats().hits > before
    })
    .await;
}

async fn denied_on_b(b: &TestServer, token: &str, module: &str, expected: pb::Reason) -> Duration {
    eventually(&format!("B answers {expected:?}"), WITHIN, || async {
        reason(&b.check(token, module, pb::Action::Read).await) == expected
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_and_disable_on_a_reach_b_through_the_feed() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let (revoked, revoked_token) = a.key(ACME, &["read-only"]).await;
    let (disabled, disabled_token) = a.key(ACME, &["read-only"]).await;
    warm(&b, &revoked_token, "courses").await;
    warm(&b, &disabled_token, "courses").await;

    let state = |id: &str| pb::KeyStateRequest { tenant: ACME.into(), id: id.into(), version: 0 };
    a.keys().revoke_key(state(&revoked.id)).await.expect("revoke");
    a.keys().disable_key(state(&disabled.id)).await.expect("disable");
    denied_on_b(&b, &revoked_token, "courses", pb::Reason::KeyRevoked).await;
    denied_on_b(&b, &disabled_token, "courses", pb::Reason::KeyDisabled).await;
    assert!(b.cache.as_ref().expect("cache").stats().invalidations >= 2);

    // Enabling is seen too.
    a.keys().enable_key(state(&disabled.id)).await.expect("enable");
    eventually("B allows the enabled key", WITHIN, || async {
        b.check(&disabled_token, "courses", pb::Action::Read).await.allowed
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_update_and_forced_delete_on_a_reach_b_through_the_feed() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let narrowed = a.scope(ACME, "courses and users", pb::ScopeMode::Allow, read_rules(&["courses", "users"])).await;
    let deleted = a.scope(ACME, "billing", pb::ScopeMode::Allow, read_rules(&["billing"])).await;
    let (_, token) = a.key(ACME, &[&narrowed.id, &deleted.id]).await;
    warm(&b, &token, "users").await;
    warm(&b, &token, "billing").await;

    a.set_rules(ACME, &narrowed, read_rules(&["courses"])).await;
    denied_on_b(&b, &token, "users", pb::Reason::NotGranted).await;
    assert!(b.check(&token, "courses", pb::Action::Read).await.allowed, "what the scope still grants stays allowed");

    a.scopes()
        .delete_scope(pb::DeleteScopeRequest { tenant: ACME.into(), id: deleted.id.clone(), force: true, version: 0 })
        .await
        .expect("forced delete");
    denied_on_b(&b, &token, "billing", pb::Reason::NotGranted).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_created_on_a_scope_while_it_is_deleted_never_outlive_it() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    for force in [false, true] {
        let tenant = if force { "forced" } else { "plain" };
        let scope = a.scope(tenant, "contested", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
        let mut creators = Vec::new();
        for i in 0..16 {
            let mut keys = if i % 2 == 0 { a.keys() } else { b.keys() };
            let request =
                pb::CreateKeyRequest { tenant: tenant.into(), scope_ids: vec![scope.id.clone()], ..Default::default() };
            creators.push(tokio::spawn(async move { keys.create_key(request).await.map(|r| r.into_inner().token) }));
        }
        let mut deleter = a.scopes();
        let delete = pb::DeleteScopeRequest { tenant: tenant.into(), id: scope.id.clone(), force, version: 0 };
        let deleted = deleter.delete_scope(delete).await.is_ok();
        let mut tokens = Vec::new();
        for creator in creators {
            match creator.await.expect("creator task") {
                Ok(token) => tokens.push(token),
                Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}"),
            }
        }
        let keys = a.all_keys(tenant).await;
        if deleted {
            for key in &keys {
                assert!(!key.scope_ids.contains(&scope.id), "key {} names the deleted scope", key.id);
            }
            // No access was widened: every key is now denied, on both replicas.
            for token in &tokens {
                for replica in [&a, &b] {
                    let answer = replica.check(token, "courses", pb::Action::Read).await;
                    assert_eq!(reason(&answer), pb::Reason::NoScope, "{answer:?}");
                }
            }
        } else {
            assert!(!force, "a forced delete of an allow-mode scope always succeeds");
            assert_eq!(keys.len(), tokens.len(), "every created key holds the scope");
        }
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_changes_reach_the_other_replica_too() {
    let cluster = RedisCluster::start();
    let prefix = fresh_prefix();
    let a = TestServer::start_on_redis_with(&cluster.url(), true, &prefix, cache(), None).await;
    let b = TestServer::start_on_redis_with(&cluster.url(), true, &prefix, cache(), Some(&a.admin_token)).await;
    // Tenants land on different masters; each one's changes are seen by B.
    for tenant in ["acme", "globex", "initech", "umbrella"] {
        let scope = a.scope(tenant, "web", pb::ScopeMode::Allow, read_rules(&["courses", "users"])).await;
        let (key, token) = a.key(tenant, &[&scope.id]).await;
        warm(&b, &token, "users").await;
        a.set_rules(tenant, &scope, read_rules(&["courses"])).await;
        denied_on_b(&b, &token, "users", pb::Reason::NotGranted).await;
        let state = pb::KeyStateRequest { tenant: tenant.into(), id: key.id.clone(), version: 0 };
        a.keys().revoke_key(state).await.expect("revoke");
        denied_on_b(&b, &token, "courses", pb::Reason::KeyRevoked).await;
    }
    a.stop().await;
    b.stop().await;
}
