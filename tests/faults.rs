//! Redis faults never turn a deny into an allow: with the test's own redis-server paused
//! (SIGSTOP) or killed, cached checks are still answered, uncached checks and admin calls are
//! UNAVAILABLE with nothing written, readiness is NOT_SERVING; when Redis returns, keyscope
//! recovers with no restart.

#![allow(clippy::panic)] // tests fail by panicking

mod common;
#[path = "common/process.rs"]
mod process;
#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "common/scrape.rs"]
mod scrape;

use std::time::Duration;

use common::{TestServer, eventually};
use keyscope::{cache::CacheSettings, grpc::pb};
use redis_server::{RedisServer, fresh_prefix};
use tonic::Code;

const ACME: &str = "acme";
const WITHIN: Duration = Duration::from_secs(15);

fn cache() -> CacheSettings {
    CacheSettings { time_to_live: Duration::from_secs(600), ..CacheSettings::default() }
}

/// A server on its own Redis (append-only, so data survives a kill), with one cached key and
/// one key it has never checked.
async fn setup(redis: &RedisServer) -> (TestServer, String, String) {
    let server = TestServer::start_on_redis(&redis.url(), &fresh_prefix(), cache(), None).await;
    let (_, cached) = server.key(ACME, &["read-only"]).await;
    let (_, uncached) = server.key(ACME, &["read-only"]).await;
    // The change feed echoes the creations back and may drop a fill made before the echo
    // arrives: check until a check is answered from the cache.
    let cache = server.cache.clone().expect("cache");
    eventually("the key is cached", WITHIN, || async {
        let before = cache.stats().hits;
        server.check(&cached, "courses", pb::Action::Read).await.allowed && cache.stats().hits > before
    })
    .await;
    assert!(server.serving().await);
    (server, cached, uncached)
}

async fn assert_degraded(server: &TestServer, cached: &str, uncached: &str) {
    // Hot checks go on from the cache.
    let hot = server.try_check(cached, "courses", pb::Action::Read).await.expect("a cached check is answered");
    assert!(hot.allowed);
    let hot_denied = server.try_check(cached, "courses", pb::Action::Delete).await.expect("answered");
    assert!(!hot_denied.allowed, "a cached key's denials stay denials");
    // Anything that needs Redis fails closed.
    let cold = server.try_check(uncached, "courses", pb::Action::Read).await;
    assert_eq!(cold.expect_err("an uncached check cannot be decided").code(), Code::Unavailable);
    let mut keys = server.keys();
    let create = keys
        .create_key(pb::CreateKeyRequest {
            tenant: ACME.into(),
            scope_ids: vec!["read-only".into()],
            description: "written while redis was down".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(create.expect_err("admin calls fail").code(), Code::Unavailable);
    eventually("readiness NOT_SERVING", WITHIN, || async { !server.serving().await }).await;
    // Liveness does not follow the store: restarting replicas would only lose their caches.
    assert!(server.health_of("liveness").await, "gRPC health `liveness` stays SERVING while Redis is down");
    // The HTTP probe and the metrics say the same.
    let addr = server.http_addr.to_string();
    assert_eq!(scrape::get(&addr, "/readyz").await.0, 503);
    let text = scrape::metrics(&addr).await;
    assert!(scrape::count(&text, "keyscope_store_errors_total", &[("op", "credential")]) >= 1.0, "{text}");
    let failed = [("path", "native"), ("decision", "error"), ("reason", "UNAVAILABLE")];
    assert!(scrape::count(&text, "keyscope_checks_total", &failed) >= 1.0, "{text}");
    assert!(
        scrape::count(&text, "keyscope_admin_calls_total", &[("method", "CreateKey"), ("code", "UNAVAILABLE")]) >= 1.0
    );
}

async fn assert_recovered(server: &TestServer, uncached: &str) {
    eventually("readiness SERVING again", WITHIN, || async { server.serving().await }).await;
    assert_eq!(scrape::get(&server.http_addr.to_string(), "/readyz").await.0, 200);
    eventually("uncached checks answered again", WITHIN, || async {
        server.try_check(uncached, "courses", pb::Action::Read).await.is_ok_and(|a| a.allowed)
    })
    .await;
    let keys = server.all_keys(ACME).await;
    assert_eq!(keys.len(), 2, "nothing was written while Redis was away");
    assert!(keys.iter().all(|k| k.description.is_empty()));
    server
        .keys()
        .create_key(pb::CreateKeyRequest {
            tenant: ACME.into(),
            scope_ids: vec!["read-only".into()],
            ..Default::default()
        })
        .await
        .expect("admin calls work again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_degrades_to_cached_checks_and_recovers() {
    let redis = RedisServer::start();
    let (server, cached, uncached) = setup(&redis).await;
    redis.pause();
    assert_degraded(&server, &cached, &uncached).await;
    redis.resume();
    assert_recovered(&server, &uncached).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_sent_to_a_paused_redis_never_applies_later() {
    let redis = RedisServer::start();
    let (server, _, _) = setup(&redis).await;
    let key = server.all_keys(ACME).await.remove(0);
    redis.pause();
    let mut keys = server.keys();
    let update = keys
        .update_key(pb::UpdateKeyRequest {
            tenant: ACME.into(),
            id: key.id.clone(),
            version: key.version,
            update_mask: common::mask(&["description"]),
            description: "sent while paused".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(update.expect_err("the call times out").code(), Code::Unavailable);
    redis.resume();
    eventually("readiness SERVING again", WITHIN, || async { server.serving().await }).await;
    let after = server.all_keys(ACME).await.into_iter().find(|k| k.id == key.id).expect("key");
    assert_eq!(after, key, "the delivered-but-late write was refused by its deadline");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_redis_degrades_and_recovers_without_a_restart() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let (server, cached, uncached) = setup(&redis).await;
    redis.stop();
    assert_degraded(&server, &cached, &uncached).await;
    redis.restart();
    assert_recovered(&server, &uncached).await;
    // The feed came back and cleared the cache, so the hot key is read from Redis again.
    let resets = server.cache.as_ref().expect("cache").stats().resets;
    assert!(resets >= 2, "the cache is cleared when the feed is re-established ({resets})");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_acl_users_authenticate_and_are_never_echoed() {
    let redis = RedisServer::start_with(&[
        "--requirepass",
        "s3cret-zqxw",
        "--user",
        "alice",
        "on",
        ">alice-pw-zqxw",
        "~*",
        "&*",
        "+@all",
    ]);
    for url in [
        format!("redis://:s3cret-zqxw@127.0.0.1:{}", redis.port),
        format!("redis://alice:alice-pw-zqxw@127.0.0.1:{}", redis.port),
    ] {
        let store = redis_server::store(url, false).await;
        keyscope::store::Store::ping(&store).await.expect("authenticated");
    }
    let wrong = keyscope::store::RedisStore::connect(redis_server::options(
        format!("redis://alice:wrong-zqxw@127.0.0.1:{}", redis.port),
        false,
    ))
    .await
    .expect_err("a wrong password is refused");
    let shown = format!("{wrong} {wrong:?}");
    assert!(!shown.contains("zqxw"), "a password was echoed: {shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_by_another_schema_version_is_refused_at_start() {
    let redis = RedisServer::start();
    let options = redis_server::options(redis.url(), false);
    // An empty Redis gets this build's schema version; connecting again finds it.
    keyscope::store::RedisStore::connect(options.clone()).await.expect("first start writes the schema version");
    keyscope::store::RedisStore::connect(options.clone()).await.expect("a second start reads it back");
    let key = format!("{}:schema", options.prefix);
    assert_eq!(redis.cli(&["GET", &key]).as_deref(), Some(keyscope::store::SCHEMA_VERSION));
    redis.cli(&["SET", &key, "999"]).expect("set a foreign schema version");
    let refused = keyscope::store::RedisStore::connect(options).await.expect_err("another schema version");
    assert!(refused.to_string().contains("schema version 999"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_fails_with_unavailable_when_no_decision_can_be_made() {
    use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
    };
    let redis = RedisServer::start();
    let (server, cached, uncached) = setup(&redis).await;
    let ask = |token: &str| {
        let http = attribute_context::HttpRequest {
            method: "GET".into(),
            path: "/courses".into(),
            headers: [("authorization".to_owned(), format!("Bearer {token}"))].into_iter().collect(),
            ..Default::default()
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
                context_extensions: [("keyscope_module".to_owned(), "courses".to_owned())].into_iter().collect(),
                ..Default::default()
            }),
        }
    };
    let mut envoy = AuthorizationClient::new(server.channel());
    redis.pause();
    // A cached key is still decided; an uncached one is a gRPC error, so Envoy's
    // failure_mode_allow / status_on_error apply (never an allow).
    let hot = envoy.check(ask(&cached)).await.expect("decided from the cache").into_inner();
    assert_eq!(hot.status.map(|s| s.code), Some(0));
    let cold = envoy.check(ask(&uncached)).await;
    assert_eq!(cold.expect_err("no decision possible").code(), Code::Unavailable);
    redis.resume();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_without_store_keeps_answering_from_the_cache_while_redis_is_down() {
    let redis = RedisServer::start();
    let server = process::ServerOptions::default()
        .env("KEYSCOPE__STORE__KIND", "redis")
        .env("KEYSCOPE__STORE__REDIS__URL", &redis.url())
        .env("KEYSCOPE__STORE__REDIS__PREFIX", &fresh_prefix())
        .env("KEYSCOPE__STORE__REDIS__CHECK_TIMEOUT_MS", "200")
        .env("KEYSCOPE__SERVER__READY_WITHOUT_STORE", "true")
        .start();
    let key =
        server.cli().args(["--json", "key", "create", "--tenant", ACME, "--scope", "read-only"]).run().success().json();
    let token = key["token"].as_str().expect("token").to_owned();
    let check = || server.cli_anonymous().args(["check", "courses", "read", "--credential", &token]).run();
    // Checked until a check is a cache hit (a fill racing the creation's echo is not kept).
    let addr = server.http_addr.clone();
    eventually("the key is cached", WITHIN, || async {
        let before = scrape::count(&scrape::metrics(&addr).await, "keyscope_cache_hits_total", &[]);
        check().code() == 0 && scrape::count(&scrape::metrics(&addr).await, "keyscope_cache_hits_total", &[]) > before
    })
    .await;

    redis.pause();
    let warned = || server.stderr_lines().iter().any(|l| l.contains("still SERVING (server.ready_without_store)"));
    eventually("the outage is logged", WITHIN, || async { warned() }).await;
    assert_eq!(scrape::get(&addr, "/readyz").await.0, 200, "still ready without the store");
    let health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(server.url()).expect("url").connect().await.expect("connect"),
    )
    .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
    .await
    .expect("health")
    .into_inner();
    assert_eq!(health.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let cached = check();
    assert!(cached.stdout.starts_with("allowed (OK)"), "answered from the cache: {}", cached.describe());
    redis.resume();
}
