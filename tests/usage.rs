//! Key usage end to end: known traffic through `Check` and `BatchCheck`, flushed, then read
//! back with `GetKeyUsage`, `GetKey` and `ListKeys`; days split at UTC midnight; flushes add
//! up; on Redis the counts survive a restart of keyscope, replicas' flushes sum, and a
//! graceful stop of the real binary flushes; tenants never see each other's usage; bad input
//! is refused naming the field. Tests flush through the core instead of waiting for the
//! interval.

#![allow(clippy::panic)] // tests fail by panicking

mod common;
#[path = "common/process.rs"]
mod process;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestServer, assert_status, read_rules};
use keyscope::{
    cache::CacheSettings,
    domain::{Day, KeyId, TokenFormat},
    grpc::pb,
};
use redis_server::{RedisServer, fresh_prefix};
use tonic::Code;

const ACME: &str = "acme";
const GLOBEX: &str = "globex";

/// A key of `tenant` that may read `courses` (and nothing else); returns it and its token.
async fn reader_key(server: &TestServer, tenant: &str) -> (pb::Key, String) {
    let scope = server.scope(tenant, "reader", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
    server.key(tenant, &[&scope.id]).await
}

async fn usage(server: &TestServer, tenant: &str, id: &str, start: &str, end: &str) -> pb::GetKeyUsageResponse {
    try_usage(server, Some(&server.admin_token), tenant, id, start, end).await.expect("get key usage")
}

async fn try_usage(
    server: &TestServer,
    token: Option<&str>,
    tenant: &str,
    id: &str,
    start: &str,
    end: &str,
) -> Result<pb::GetKeyUsageResponse, tonic::Status> {
    let request =
        pb::GetKeyUsageRequest { tenant: tenant.into(), id: id.into(), start_date: start.into(), end_date: end.into() };
    server.keys_as(token).get_key_usage(request).await.map(tonic::Response::into_inner)
}

async fn get_key(server: &TestServer, tenant: &str, id: &str) -> pb::Key {
    let request = pb::GetKeyRequest { tenant: tenant.into(), id: id.into() };
    server.keys().get_key(request).await.expect("get key").into_inner()
}

/// Sends `n` checks of `action` on `courses` and returns their reasons.
async fn checks(server: &TestServer, token: &str, action: pb::Action, n: usize) -> Vec<pb::Reason> {
    let mut reasons = Vec::new();
    for _ in 0..n {
        let answer = server.check(token, "courses", action).await;
        reasons.push(pb::Reason::try_from(answer.reason).expect("reason"));
    }
    reasons
}

async fn check_in_tenant(server: &TestServer, token: &str, tenant: &str) -> pb::CheckResponse {
    let request = pb::CheckRequest {
        credential: Some(pb::check_request::Credential::Token(token.into())),
        tenant: tenant.into(),
        module: "courses".into(),
        action: pb::Action::Read.into(),
        explain: false,
        source_address: Default::default(),
    };
    server.checker().check(request).await.expect("check").into_inner()
}

/// The server's clock.
fn now(server: &TestServer) -> SystemTime {
    use keyscope::service::Clock;
    server.clock.now()
}

fn today(server: &TestServer) -> Day {
    Day::of(now(server))
}

/// `(date, allowed, denied)` of the days with any checks.
fn busy_days(response: &pb::GetKeyUsageResponse) -> Vec<(String, u64, u64)> {
    response.days.iter().filter(|d| d.allowed + d.denied > 0).map(|d| (d.date.clone(), d.allowed, d.denied)).collect()
}

/// An instant as the Redis store keeps it: whole microseconds.
fn micros(at: SystemTime) -> prost_types::Timestamp {
    let since = at.duration_since(UNIX_EPOCH).expect("after the epoch");
    keyscope::grpc::convert::timestamp_to_pb(UNIX_EPOCH + Duration::from_micros(since.as_micros() as u64))
}

/// A well-formed token naming `id` with a secret that is not the key's.
fn wrong_secret(id: &KeyId) -> String {
    let (_, text) = TokenFormat::new("ks").expect("prefix").issue(id).expect("issue");
    text.expose().to_owned()
}

/// A well-formed token of a key that does not exist.
fn unknown_key() -> String {
    wrong_secret(&TokenFormat::new("ks").expect("prefix").new_key_id().expect("id"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_traffic_is_counted_exactly_and_only_verified_uses_count() {
    let server = TestServer::start().await;
    let (key, token) = reader_key(&server, ACME).await;
    let (other, _) = reader_key(&server, GLOBEX).await;

    let allowed = checks(&server, &token, pb::Action::Read, 3).await;
    assert_eq!(allowed, vec![pb::Reason::Ok; 3]);
    let denied = checks(&server, &token, pb::Action::Update, 2).await;
    assert_eq!(denied, vec![pb::Reason::NotGranted; 2]);
    let mismatch = check_in_tenant(&server, &token, GLOBEX).await;
    assert_eq!(mismatch.reason, pb::Reason::TenantMismatch as i32);
    // Not the key's use: a wrong secret for its id, an unknown key, malformed credentials.
    let parse = |id: &str| -> KeyId { id.parse().expect("key id") };
    for credential in [wrong_secret(&parse(&key.id)), wrong_secret(&parse(&other.id)), unknown_key()] {
        let answer = server.check(&credential, "courses", pb::Action::Read).await;
        assert_eq!(answer.reason, pb::Reason::UnknownKey as i32);
    }
    for malformed in ["ks_nope", "", &format!("ks_{}_short", key.id)] {
        let answer = server.check(malformed, "courses", pb::Action::Read).await;
        assert_eq!(answer.reason, pb::Reason::MalformedCredential as i32, "{malformed:?}");
    }
    let pair = pb::check_request::Credential::KeyPair(pb::KeyPair { key_id: key.id.clone(), secret: "x".into() });
    let request = pb::CheckRequest {
        credential: Some(pair),
        tenant: String::new(),
        module: "courses".into(),
        action: pb::Action::Read.into(),
        explain: false,
        source_address: Default::default(),
    };
    assert!(!server.checker().check(request).await.expect("check").into_inner().allowed);
    // A batch counts each item: 2 allowed, 2 denied.
    let item = |module: &str, action: pb::Action| pb::CheckItem { module: module.into(), action: action.into() };
    let batch = pb::BatchCheckRequest {
        credential: Some(pb::batch_check_request::Credential::Token(token.clone())),
        tenant: String::new(),
        items: vec![
            item("courses", pb::Action::Read),
            item("courses", pb::Action::Delete),
            item("courses", pb::Action::Read),
            item("billing", pb::Action::Read),
        ],
        explain: false,
        source_address: Default::default(),
    };
    let results = server.checker().batch_check(batch).await.expect("batch").into_inner().results;
    assert_eq!(results.iter().filter(|r| r.allowed).count(), 2);

    // Nothing reaches the store before a flush: no store write per check.
    let before = usage(&server, ACME, &key.id, "", "").await;
    assert!(busy_days(&before).is_empty() && before.last_used_at.is_none(), "{before:?}");
    assert!(get_key(&server, ACME, &key.id).await.last_used_at.is_none());

    let used_at = now(&server);
    assert!(server.core.flush_usage().await.expect("flush") >= 1);
    let after = usage(&server, ACME, &key.id, "", "").await;
    let day = today(&server).to_string();
    assert_eq!(busy_days(&after), vec![(day.clone(), 3 + 2, 2 + 1 + 2)]);
    assert_eq!(after.key_id, key.id);
    assert_eq!(after.days.len(), 30, "the default range: 30 days ending today");
    assert_eq!(after.days.last().map(|d| d.date.clone()), Some(day.clone()));
    assert!(after.days.windows(2).all(|w| w[0].date < w[1].date), "oldest first");
    let expected = Some(keyscope::grpc::convert::timestamp_to_pb(used_at));
    assert_eq!(after.last_used_at, expected);
    assert_eq!(get_key(&server, ACME, &key.id).await.last_used_at, expected, "GetKey shows the last use");
    assert_eq!(get_key(&server, ACME, &key.id).await.version, 1, "usage never changes the key's version");
    let untouched = usage(&server, GLOBEX, &other.id, "", "").await;
    assert!(busy_days(&untouched).is_empty(), "the other key was never verified: {untouched:?}");

    // Denials after verification count, whatever the state: disabled, then revoked.
    let state = pb::KeyStateRequest { tenant: ACME.into(), id: key.id.clone(), version: 0 };
    server.keys().disable_key(state.clone()).await.expect("disable");
    assert_eq!(checks(&server, &token, pb::Action::Read, 1).await, vec![pb::Reason::KeyDisabled]);
    server.keys().revoke_key(state).await.expect("revoke");
    assert_eq!(checks(&server, &token, pb::Action::Read, 2).await, vec![pb::Reason::KeyRevoked; 2]);
    server.core.flush_usage().await.expect("flush");
    let last = usage(&server, ACME, &key.id, &day, &day).await;
    assert_eq!(busy_days(&last), vec![(day, 5, 5 + 3)], "a second flush adds to the first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_split_when_the_clock_crosses_utc_midnight() {
    let server = TestServer::start().await;
    let (key, token) = reader_key(&server, ACME).await;
    let day = today(&server);
    let to_last_second = day.plus(1).start().duration_since(now(&server)).expect("before midnight");
    server.advance(to_last_second - Duration::from_secs(1));
    checks(&server, &token, pb::Action::Read, 2).await;
    checks(&server, &token, pb::Action::Delete, 1).await;
    server.advance(Duration::from_secs(2));
    checks(&server, &token, pb::Action::Read, 3).await;
    server.core.flush_usage().await.expect("flush");
    let (d1, d2) = (day.to_string(), day.plus(1).to_string());
    let got = usage(&server, ACME, &key.id, &d1, &d2).await;
    assert_eq!(busy_days(&got), vec![(d1.clone(), 2, 1), (d2.clone(), 3, 0)]);
    assert_eq!(got.days.len(), 2);
    // "Today" follows the clock: the default range now ends on the new day.
    let default = usage(&server, ACME, &key.id, "", "").await;
    assert_eq!(default.days.last().map(|d| d.date.clone()), Some(d2));
    assert_eq!(default.days.first().map(|d| d.date.clone()), Some(day.plus(1).minus(29).to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_keys_finds_keys_unused_since_a_date() {
    let server = TestServer::start().await;
    let scope = server.scope(ACME, "reader", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
    let (early, early_token) = server.key(ACME, &[&scope.id]).await;
    let (never, _) = server.key(ACME, &[&scope.id]).await;
    let (late, late_token) = server.key(ACME, &[&scope.id]).await;
    checks(&server, &early_token, pb::Action::Read, 1).await;
    server.advance(Duration::from_secs(3600));
    let cutoff = now(&server);
    server.advance(Duration::from_secs(3600));
    checks(&server, &late_token, pb::Action::Update, 1).await;
    server.core.flush_usage().await.expect("flush");
    let request = pb::ListKeysRequest {
        tenant: ACME.into(),
        unused_since: Some(keyscope::grpc::convert::timestamp_to_pb(cutoff)),
        ..Default::default()
    };
    let listed = server.keys().list_keys(request.clone()).await.expect("list").into_inner().keys;
    let mut expected = vec![early.id.clone(), never.id.clone()];
    expected.sort();
    assert_eq!(listed.iter().map(|k| k.id.clone()).collect::<Vec<_>>(), expected);
    assert!(listed.iter().any(|k| k.last_used_at.is_some()), "listed keys carry their last use");
    let all = server.all_keys(ACME).await;
    let late_listed = all.iter().find(|k| k.id == late.id).expect("late key");
    assert!(late_listed.last_used_at.is_some());
    let bad = pb::ListKeysRequest { unused_since: Some(prost_types::Timestamp { seconds: 1, nanos: -5 }), ..request };
    assert_status(server.keys().list_keys(bad).await, Code::InvalidArgument, "unused_since");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_admin_never_sees_another_tenants_usage() {
    let server = TestServer::start().await;
    let (acme_key, acme_token) = reader_key(&server, ACME).await;
    let (globex_key, _) = reader_key(&server, GLOBEX).await;
    let (acme_admin_key, acme_admin) = server.key(ACME, &["admin"]).await;
    checks(&server, &acme_token, pb::Action::Read, 2).await;
    server.core.flush_usage().await.expect("flush");

    let own = try_usage(&server, Some(&acme_admin), "", &acme_key.id, "", "").await.expect("own tenant");
    assert_eq!(busy_days(&own).len(), 1);
    let named = try_usage(&server, Some(&acme_admin), GLOBEX, &globex_key.id, "", "").await;
    assert_status(named, Code::PermissionDenied, GLOBEX);
    let by_id = try_usage(&server, Some(&acme_admin), "", &globex_key.id, "", "").await;
    assert_status(by_id, Code::NotFound, &globex_key.id);
    let cross = try_usage(&server, Some(&server.admin_token), GLOBEX, &acme_key.id, "", "").await;
    assert_status(cross, Code::NotFound, &acme_key.id);
    assert_status(try_usage(&server, None, ACME, &acme_key.id, "", "").await, Code::Unauthenticated, "");
    let (_, reader_only) = reader_key(&server, "initech").await;
    let no_grant = try_usage(&server, Some(&reader_only), "", &acme_key.id, "", "").await;
    assert_status(no_grant, Code::PermissionDenied, "keyscope.keys");
    // Admin calls are checks of the admin key: two allowed, one refused (another tenant).
    server.core.flush_usage().await.expect("flush");
    let admin_use = usage(&server, ACME, &acme_admin_key.id, "", "").await;
    assert_eq!(busy_days(&admin_use), vec![(today(&server).to_string(), 2, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_requests_are_refused_naming_the_field() {
    let server = TestServer::start().await;
    let (key, _) = reader_key(&server, ACME).await;
    let today = today(&server);
    let t = today.to_string();
    let cases: [(&str, &str, &str, Code, &str); 8] = [
        ("", "2024-13-01", "", Code::InvalidArgument, "start_date"),
        ("", "", "yesterday", Code::InvalidArgument, "end_date"),
        ("", "2023-02-29", &t, Code::InvalidArgument, "start_date"),
        ("", &t, &today.minus(1).to_string(), Code::InvalidArgument, "start_date"),
        ("", &today.minus(90).to_string(), &t, Code::InvalidArgument, "90"),
        ("", "", "", Code::InvalidArgument, "id"),
        ("not an id", "", "", Code::InvalidArgument, "id"),
        ("abcdefghijABCDEFGHIJ", "", "", Code::NotFound, "abcdefghijABCDEFGHIJ"),
    ];
    for (id, start, end, code, needle) in cases {
        let id = if id.is_empty() && needle != "id" { key.id.as_str() } else { id };
        assert_status(try_usage(&server, Some(&server.admin_token), ACME, id, start, end).await, code, needle);
    }
    // The longest range allowed is exactly the retention.
    let longest = usage(&server, ACME, &key.id, &today.minus(89).to_string(), &t).await;
    assert_eq!(longest.days.len(), 90);
}

fn redis_cache() -> CacheSettings {
    CacheSettings::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_replicas_flushes_sum_and_survive_a_restart_of_keyscope() {
    let redis = RedisServer::start();
    let prefix = fresh_prefix();
    let a = TestServer::start_on_redis(&redis.url(), &prefix, redis_cache(), None).await;
    let b = TestServer::start_on_redis(&redis.url(), &prefix, redis_cache(), Some(&a.admin_token)).await;
    let (key, token) = reader_key(&a, ACME).await;
    let (other, other_token) = reader_key(&a, GLOBEX).await;
    checks(&a, &token, pb::Action::Read, 2).await;
    checks(&b, &token, pb::Action::Read, 3).await;
    checks(&b, &token, pb::Action::Update, 1).await;
    checks(&b, &other_token, pb::Action::Read, 4).await;
    a.core.flush_usage().await.expect("flush a");
    let partial = usage(&b, ACME, &key.id, "", "").await;
    assert_eq!(busy_days(&partial), vec![(today(&a).to_string(), 2, 0)], "A's flush alone");
    b.core.flush_usage().await.expect("flush b");
    let day = today(&b).to_string();
    let summed = usage(&a, ACME, &key.id, "", "").await;
    assert_eq!(busy_days(&summed), vec![(day.clone(), 5, 1)], "both replicas' counts");
    let latest = now(&a).max(now(&b));
    assert_eq!(summed.last_used_at, Some(micros(latest)), "the later of the two replicas' uses");
    let admin = a.admin_token.clone();
    a.stop().await;
    b.stop().await;

    let c = TestServer::start_on_redis(&redis.url(), &prefix, redis_cache(), Some(&admin)).await;
    let again = usage(&c, ACME, &key.id, &day, &day).await;
    assert_eq!(busy_days(&again), vec![(day.clone(), 5, 1)], "a new keyscope on the same Redis sees them");
    assert_eq!(get_key(&c, ACME, &key.id).await.last_used_at, Some(micros(latest)));
    let globex = usage(&c, GLOBEX, &other.id, &day, &day).await;
    assert_eq!(busy_days(&globex), vec![(day.clone(), 4, 0)]);
    assert_status(try_usage(&c, Some(&admin), ACME, &other.id, "", "").await, Code::NotFound, &other.id);
}

/// The real binary on Redis, with a flush interval far beyond the test: only the flush at a
/// graceful stop (SIGTERM) can have written the counts a new keyscope then reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_flushes_usage() {
    let redis = RedisServer::start();
    let prefix = fresh_prefix();
    let server = process::ServerOptions::default()
        .env("KEYSCOPE__STORE__KIND", "redis")
        .env("KEYSCOPE__STORE__REDIS__URL", &redis.url())
        .env("KEYSCOPE__STORE__REDIS__PREFIX", &prefix)
        .env("KEYSCOPE__USAGE__FLUSH_INTERVAL_MS", "3600000")
        .env("KEYSCOPE__SECURITY__PEPPER", std::str::from_utf8(common::PEPPER).expect("text pepper"))
        .start();
    let admin = server.admin_token().to_owned();
    let scope = server.cli().args(["--json", "scope", "create", "--tenant", ACME, "--label", "r", "--read", "courses"]);
    let scope_id = scope.run().success().json()["id"].as_str().expect("scope id").to_owned();
    let created = server.cli().args(["--json", "key", "create", "--tenant", ACME, "--scope", &scope_id]).run();
    let created = created.success().json();
    let (key_id, token) = (created["id"].as_str().expect("id"), created["token"].as_str().expect("token"));
    for (action, code) in [("read", 0), ("read", 0), ("delete", 3)] {
        server.cli_anonymous().args(["check", "courses", action, "--credential", token]).run().expect_code(code);
    }
    let (code, output) = server.stop_gracefully();
    assert_eq!(code, Some(0), "{}", output.all());
    assert!(output.all().contains("key usage flushed at shutdown"), "{}", output.all());

    let reader = TestServer::start_on_redis(&redis.url(), &prefix, redis_cache(), Some(&admin)).await;
    let got = usage(&reader, ACME, key_id, "", "").await;
    let day = Day::of(SystemTime::now()).to_string();
    assert_eq!(busy_days(&got), vec![(day, 2, 1)]);
    assert!(got.last_used_at.is_some());
}
