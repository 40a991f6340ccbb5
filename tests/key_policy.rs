//! Issue 7, parts 4 to 7: key rotation with a grace period, source networks, per-key rate
//! limits and the tenant's maximum key lifetime, through `Check`, `BatchCheck` and Envoy's
//! ext_authz, on the memory store, behind a replica cache, and on Redis (two replicas).

#![allow(clippy::panic)] // tests fail by panicking

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::{sync::Arc, time::Duration};

use common::{TestServer, assert_status, eventually, mask, read_rules};
use envoy_types::pb::envoy::{
    config::core::v3::{Address, SocketAddress, address},
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, attribute_context, authorization_client::AuthorizationClient,
        check_response::HttpResponse,
    },
};
use keyscope::{
    cache::CacheSettings,
    grpc::{ExtAuthzSettings, pb},
    store::MemoryStore,
};
use redis_server::{RedisServer, fresh_prefix};
use tonic::Code;

const ACME: &str = "acme";
const WITHIN: Duration = Duration::from_secs(5);
const HOUR: Duration = Duration::from_secs(3600);

fn reason(r: &pb::CheckResponse) -> pb::Reason {
    pb::Reason::try_from(r.reason).expect("known reason")
}

fn grace(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: d.as_secs() as i64, nanos: 0 })
}

fn rate(requests_per_second: f64, burst: u32) -> Option<pb::RateLimit> {
    Some(pb::RateLimit { requests_per_second, burst })
}

/// A new scope reading `courses` in `acme`; returns its id.
async fn courses(server: &TestServer) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let label = format!("courses-{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    server.scope(ACME, &label, pb::ScopeMode::Allow, read_rules(&["courses"])).await.id
}

/// Creates a key in `acme` from `request` (tenant and scopes filled in).
async fn key_with(server: &TestServer, scope: &str, request: pb::CreateKeyRequest) -> (pb::Key, String) {
    let request = pb::CreateKeyRequest { tenant: ACME.into(), scope_ids: vec![scope.into()], ..request };
    let response = server.keys().create_key(request).await.expect("create key").into_inner();
    (response.key.expect("key"), response.token)
}

async fn check_from(server: &TestServer, token: &str, module: &str, source: &str) -> pb::CheckResponse {
    let request = pb::CheckRequest {
        credential: Some(pb::check_request::Credential::Token(token.into())),
        module: module.into(),
        action: pb::Action::Read.into(),
        explain: true,
        source_address: source.into(),
        ..Default::default()
    };
    server.checker().check(request).await.expect("check").into_inner()
}

async fn rotate(server: &TestServer, id: &str, by: Duration) -> (pb::Key, String) {
    let request = pb::RotateKeyRequest { tenant: ACME.into(), id: id.into(), grace: grace(by), expected_version: 0 };
    let response = server.keys().rotate_key(request).await.expect("rotate").into_inner();
    (response.key.expect("key"), response.token)
}

/// An ext_authz request for `GET /courses` with this API key, from `peer`, with extra headers.
fn envoy_request(token: &str, peer: Option<&str>, headers: &[(&str, &str)]) -> CheckRequest {
    let mut all: std::collections::HashMap<String, String> =
        headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    all.insert("x-api-key".into(), token.into());
    let http = attribute_context::HttpRequest {
        method: "GET".into(),
        path: "/courses".into(),
        headers: all,
        ..Default::default()
    };
    let source = peer.map(|ip| attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress { address: ip.into(), ..Default::default() })),
        }),
        ..Default::default()
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source,
            request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
            context_extensions: [("keyscope_module".to_owned(), "courses".to_owned())].into(),
            ..Default::default()
        }),
    }
}

async fn envoy(server: &TestServer, request: CheckRequest) -> CheckResponse {
    AuthorizationClient::new(server.channel()).check(request).await.expect("ext_authz").into_inner()
}

/// The HTTP status Envoy would answer (200 for an allow), the reason and the response headers.
fn http(r: &CheckResponse) -> (i32, String, std::collections::HashMap<String, String>) {
    if let Some(HttpResponse::OkResponse(_)) = &r.http_response {
        return (200, "OK".into(), Default::default());
    }
    let (status, body, headers) = common::envoy_denial(r);
    let error = match status {
        401 => "unauthorized",
        429 => "too_many_requests",
        _ => "forbidden",
    };
    assert_eq!(body["error"], error, "the body's error matches the status {status}");
    (status, body["reason"].as_str().unwrap_or_default().to_owned(), headers)
}

// ---------------------------------------------------------------------------------------------
// Rotation

/// Before, during and after the grace period, through Check and ext_authz.
async fn rotation_scenario(server: &TestServer) {
    let scope = courses(server).await;
    let (key, old) = key_with(server, &scope, pb::CreateKeyRequest::default()).await;
    assert_eq!(reason(&server.check(&old, "courses", pb::Action::Read).await), pb::Reason::Ok, "before");
    let (rotated, new) = rotate(server, &key.id, HOUR).await;
    assert_eq!((rotated.id.as_str(), rotated.scope_ids.clone()), (key.id.as_str(), key.scope_ids.clone()));
    assert_eq!(rotated.version, key.version + 1);
    assert!(rotated.rotated_at.is_some() && rotated.previous_secret_expires_at.is_some(), "{rotated:?}");
    assert_ne!(old, new);
    // During the grace: both secrets work, through both paths.
    for token in [&old, &new] {
        assert_eq!(reason(&server.check(token, "courses", pb::Action::Read).await), pb::Reason::Ok);
        assert_eq!(http(&envoy(server, envoy_request(token, None, &[])).await).0, 200);
    }
    // After it: only the new one.
    server.advance(HOUR + Duration::from_secs(1));
    assert_eq!(reason(&server.check(&old, "courses", pb::Action::Read).await), pb::Reason::UnknownKey);
    let (status, why, _) = http(&envoy(server, envoy_request(&old, None, &[])).await);
    assert_eq!((status, why.as_str()), (401, "UNKNOWN_KEY"));
    assert_eq!(reason(&server.check(&new, "courses", pb::Action::Read).await), pb::Reason::Ok);
    // A second rotation replaces the kept secret: the first one dies at once.
    let (_, second) = rotate(server, &key.id, HOUR).await;
    let (_, third) = rotate(server, &key.id, HOUR).await;
    assert_eq!(reason(&server.check(&new, "courses", pb::Action::Read).await), pb::Reason::UnknownKey);
    assert_eq!(reason(&server.check(&second, "courses", pb::Action::Read).await), pb::Reason::Ok);
    // Zero grace: the old secret dies at once.
    let (zero, fourth) = rotate(server, &key.id, Duration::ZERO).await;
    assert!(zero.previous_secret_expires_at.is_none());
    for dead in [&second, &third] {
        assert_eq!(reason(&server.check(dead, "courses", pb::Action::Read).await), pb::Reason::UnknownKey);
    }
    assert_eq!(reason(&server.check(&fourth, "courses", pb::Action::Read).await), pb::Reason::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_grace_on_the_memory_store() {
    let server = TestServer::start().await;
    rotation_scenario(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_record_stops_accepting_the_old_secret_when_the_grace_ends() {
    let server = TestServer::start_cached(ExtAuthzSettings::default()).await;
    let cache = server.cache.clone().expect("cache");
    let scope = courses(&server).await;
    let (key, old) = key_with(&server, &scope, pb::CreateKeyRequest::default()).await;
    rotate(&server, &key.id, HOUR).await;
    eventually("the rotated key is answered from the cache", WITHIN, || async {
        let hits = cache.stats().hits;
        assert_eq!(reason(&server.check(&old, "courses", pb::Action::Read).await), pb::Reason::Ok);
        cache.stats().hits > hits
    })
    .await;
    server.advance(HOUR);
    let hits = cache.stats().hits;
    assert_eq!(reason(&server.check(&old, "courses", pb::Action::Read).await), pb::Reason::UnknownKey);
    assert!(cache.stats().hits > hits, "denied from the cached record itself");
    rotation_scenario(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_audited_without_secrets_and_refused_for_revoked_keys() {
    let server = TestServer::start().await;
    let scope = courses(&server).await;
    let (key, _) = key_with(&server, &scope, pb::CreateKeyRequest::default()).await;
    let (_, token) = rotate(&server, &key.id, HOUR).await;
    let events = server
        .audit()
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant: ACME.into(),
            target_id: key.id.clone(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    let event = &events[0];
    assert_eq!(event.operation, pb::AuditOperation::RotateKey as i32);
    assert_eq!(event.details.get("grace_secs").map(String::as_str), Some("3600"));
    assert!(event.changed_fields.contains(&"secret".to_owned()), "{event:?}");
    let (_, secret) = token.rsplit_once('_').expect("token parts");
    let text = format!("{event:?}");
    assert!(!text.contains(secret) && !text.contains(&token), "no secret in the event");
    // A stale expected version aborts; a revoked key cannot be rotated.
    let stale = pb::RotateKeyRequest { tenant: ACME.into(), id: key.id.clone(), grace: None, expected_version: 1 };
    assert_status(server.keys().rotate_key(stale).await, Code::Aborted, "version");
    let revoke = pb::KeyStateRequest { tenant: ACME.into(), id: key.id.clone(), version: 0 };
    server.keys().revoke_key(revoke).await.expect("revoke");
    let request = pb::RotateKeyRequest { tenant: ACME.into(), id: key.id.clone(), grace: None, expected_version: 0 };
    assert_status(server.keys().rotate_key(request).await, Code::FailedPrecondition, "revoked");
    assert_eq!(reason(&server.check(&token, "courses", pb::Action::Read).await), pb::Reason::KeyRevoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rotation_requests_name_the_field_and_change_nothing() {
    let server = TestServer::start().await;
    let scope = courses(&server).await;
    let (key, token) = key_with(&server, &scope, pb::CreateKeyRequest::default()).await;
    let good = pb::RotateKeyRequest { tenant: ACME.into(), id: key.id.clone(), grace: None, expected_version: 0 };
    let cases = [
        (pb::RotateKeyRequest { grace: grace(Duration::from_secs(30 * 86_400 + 1)), ..good.clone() }, "grace"),
        (
            pb::RotateKeyRequest { grace: Some(prost_types::Duration { seconds: -1, nanos: 0 }), ..good.clone() },
            "grace",
        ),
        (
            pb::RotateKeyRequest { grace: Some(prost_types::Duration { seconds: 1, nanos: -1 }), ..good.clone() },
            "grace",
        ),
        (pb::RotateKeyRequest { id: String::new(), ..good.clone() }, "id"),
        (pb::RotateKeyRequest { id: "not a key id".into(), ..good.clone() }, "id"),
        (pb::RotateKeyRequest { tenant: "Bad_Tenant".into(), ..good.clone() }, "tenant"),
    ];
    for (request, field) in cases {
        let status = assert_status(server.keys().rotate_key(request).await, Code::InvalidArgument, field);
        assert!(status.message().starts_with(field), "{status:?}");
    }
    let missing = pb::RotateKeyRequest { id: "abcdefghijABCDEFGHIJ".into(), ..good.clone() };
    assert_status(server.keys().rotate_key(missing).await, Code::NotFound, "no key");
    let read = server.keys().get_key(pb::GetKeyRequest { tenant: ACME.into(), id: key.id }).await.expect("get");
    assert_eq!(read.into_inner().version, 1, "nothing changed");
    assert_eq!(reason(&server.check(&token, "courses", pb::Action::Read).await), pb::Reason::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_on_one_replica_reaches_the_other_through_the_feed() {
    let redis = RedisServer::start();
    let prefix = fresh_prefix();
    let long = CacheSettings { time_to_live: Duration::from_secs(600), ..CacheSettings::default() };
    let a = TestServer::start_on_redis(&redis.url(), &prefix, long, None).await;
    let b = TestServer::start_on_redis(&redis.url(), &prefix, long, Some(&a.admin_token)).await;
    let scope = courses(&a).await;
    let (key, old) = key_with(&a, &scope, pb::CreateKeyRequest::default()).await;
    let cache = b.cache.clone().expect("cache");
    eventually("B answers from its cache", WITHIN, || async {
        let hits = cache.stats().hits;
        assert_eq!(reason(&b.check(&old, "courses", pb::Action::Read).await), pb::Reason::Ok);
        cache.stats().hits > hits
    })
    .await;
    // With a grace period, B accepts both secrets until its own clock passes the end.
    let (_, new) = rotate(&a, &key.id, HOUR).await;
    eventually("B accepts the new secret", WITHIN, || async {
        reason(&b.check(&new, "courses", pb::Action::Read).await) == pb::Reason::Ok
    })
    .await;
    assert_eq!(reason(&b.check(&old, "courses", pb::Action::Read).await), pb::Reason::Ok);
    assert_eq!(http(&envoy(&b, envoy_request(&old, None, &[])).await).0, 200);
    b.advance(HOUR);
    assert_eq!(reason(&b.check(&old, "courses", pb::Action::Read).await), pb::Reason::UnknownKey);
    assert_eq!(http(&envoy(&b, envoy_request(&old, None, &[])).await).0, 401);
    // Zero grace on A: B drops the previous secret as soon as the feed says so.
    let (_, newest) = rotate(&a, &key.id, Duration::ZERO).await;
    eventually("B refuses the rotated-out secret", WITHIN, || async {
        reason(&b.check(&new, "courses", pb::Action::Read).await) == pb::Reason::UnknownKey
    })
    .await;
    assert_eq!(reason(&b.check(&newest, "courses", pb::Action::Read).await), pb::Reason::Ok);
    // The whole scenario on a Redis replica too.
    rotation_scenario(&b).await;
}

// ---------------------------------------------------------------------------------------------
// Maximum key lifetime

fn policy_request(lifetime: Option<Duration>) -> pb::SetTenantPolicyRequest {
    pb::SetTenantPolicyRequest {
        tenant: ACME.into(),
        max_key_lifetime: lifetime.map(|d| prost_types::Duration { seconds: d.as_secs() as i64, nanos: 0 }),
        expected_version: 0,
    }
}

fn expiry_in(server: &TestServer, from_now: Duration) -> Option<prost_types::Timestamp> {
    let at = keyscope::service::Clock::now(&*server.clock) + from_now;
    let since = at.duration_since(std::time::UNIX_EPOCH).expect("after 1970");
    Some(prost_types::Timestamp { seconds: since.as_secs() as i64, nanos: 0 })
}

async fn lifetime_scenario(server: &TestServer) {
    let scope = courses(server).await;
    let (old_key, old_token) = key_with(server, &scope, pb::CreateKeyRequest::default()).await;
    let keys = server.keys();
    let policy = keys.clone().get_tenant_policy(pb::GetTenantPolicyRequest { tenant: ACME.into() }).await;
    let policy = policy.expect("get policy").into_inner();
    assert_eq!((policy.max_key_lifetime, policy.version), (None, 0));
    let day = Duration::from_secs(86_400);
    let set = keys.clone().set_tenant_policy(policy_request(Some(day))).await.expect("set").into_inner();
    assert_eq!((set.max_key_lifetime.map(|d| d.seconds), set.version), (Some(86_400), 1));
    // Creating with no expiry or a later one is refused, naming expires_at and the limit.
    let create = |expires_at| pb::CreateKeyRequest {
        tenant: ACME.into(),
        scope_ids: vec![scope.clone()],
        expires_at,
        ..Default::default()
    };
    for expires_at in [None, expiry_in(server, day * 2)] {
        let status = assert_status(
            keys.clone().create_key(create(expires_at)).await,
            Code::InvalidArgument,
            "maximum key lifetime",
        );
        assert!(status.message().starts_with("expires_at") && status.message().contains("1d"), "{status:?}");
    }
    let (fits, _) = key_with(server, &scope, create(expiry_in(server, day / 2))).await;
    // Existing keys keep working; an update that sets no expiry is not held to the policy,
    // one that sets an expiry is; rotation is.
    assert_eq!(reason(&server.check(&old_token, "courses", pb::Action::Read).await), pb::Reason::Ok);
    let update = |version, expires_at| pb::UpdateKeyRequest {
        tenant: ACME.into(),
        id: old_key.id.clone(),
        version,
        update_mask: mask(&["expires_at"]),
        expires_at,
        ..Default::default()
    };
    assert_status(keys.clone().update_key(update(1, None)).await, Code::InvalidArgument, "expires_at");
    assert_status(
        keys.clone().update_key(update(1, expiry_in(server, day * 3))).await,
        Code::InvalidArgument,
        "expires_at",
    );
    let described = pb::UpdateKeyRequest {
        tenant: ACME.into(),
        id: old_key.id.clone(),
        version: 1,
        update_mask: mask(&["description"]),
        description: "still fine".into(),
        ..Default::default()
    };
    keys.clone().update_key(described).await.expect("update without an expiry change");
    let rotate_old = pb::RotateKeyRequest { tenant: ACME.into(), id: old_key.id.clone(), ..Default::default() };
    assert_status(keys.clone().rotate_key(rotate_old.clone()).await, Code::InvalidArgument, "expires_at");
    keys.clone().update_key(update(2, expiry_in(server, day))).await.expect("within the limit");
    keys.clone().rotate_key(rotate_old).await.expect("rotation of a key within the limit");
    let rotate_fits = pb::RotateKeyRequest { tenant: ACME.into(), id: fits.id.clone(), ..Default::default() };
    keys.clone().rotate_key(rotate_fits).await.expect("rotate");
    // Clearing the policy lifts the limit.
    let cleared = pb::SetTenantPolicyRequest { expected_version: 1, ..policy_request(None) };
    let cleared = keys.clone().set_tenant_policy(cleared).await.expect("clear").into_inner();
    assert_eq!((cleared.max_key_lifetime, cleared.version), (None, 2));
    key_with(server, &scope, pb::CreateKeyRequest::default()).await;
    let stale = pb::SetTenantPolicyRequest { expected_version: 1, ..policy_request(Some(day)) };
    assert_status(keys.clone().set_tenant_policy(stale).await, Code::Aborted, "policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_key_lifetime_on_the_memory_store() {
    let server = TestServer::start().await;
    lifetime_scenario(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_key_lifetime_on_redis() {
    let redis = RedisServer::start();
    let server = TestServer::start_on_redis(&redis.url(), &fresh_prefix(), CacheSettings::default(), None).await;
    lifetime_scenario(&server).await;
    let events = server
        .audit()
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant: ACME.into(),
            target_id: String::new(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    let set: Vec<_> = events.iter().filter(|e| e.operation == pb::AuditOperation::SetTenantPolicy as i32).collect();
    assert_eq!(set.len(), 2, "one event per change, none for the refused one");
    assert_eq!((set[0].target_type.as_str(), set[0].target_id.as_str()), ("tenant", ACME));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_default_applies_to_tenants_without_a_policy() {
    let server = TestServer::start_configured(Arc::new(MemoryStore::new()), ExtAuthzSettings::default(), |core| {
        core.with_max_key_lifetime(Some(Duration::from_secs(7 * 86_400)))
    })
    .await;
    let scope = courses(&server).await;
    let policy = server.keys().get_tenant_policy(pb::GetTenantPolicyRequest { tenant: ACME.into() }).await;
    let policy = policy.expect("get").into_inner();
    assert_eq!((policy.max_key_lifetime.map(|d| d.seconds), policy.version), (Some(7 * 86_400), 0));
    let request = pb::CreateKeyRequest { tenant: ACME.into(), scope_ids: vec![scope.clone()], ..Default::default() };
    assert_status(server.keys().create_key(request).await, Code::InvalidArgument, "expires_at");
    // A tenant policy overrides the default.
    server.keys().set_tenant_policy(policy_request(None)).await.expect("set");
    key_with(&server, &scope, pb::CreateKeyRequest::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_name_the_field_and_change_nothing() {
    let server = TestServer::start().await;
    let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
    for bad in [d(0, 0), d(-1, 0), d(0, 5), d(1, -1), d(100 * 366 * 86_400, 0)] {
        let request = pb::SetTenantPolicyRequest { max_key_lifetime: bad, ..policy_request(None) };
        let status =
            assert_status(server.keys().set_tenant_policy(request).await, Code::InvalidArgument, "max_key_lifetime");
        assert!(status.message().starts_with("max_key_lifetime"), "{status:?}");
    }
    let bad_tenant = pb::SetTenantPolicyRequest { tenant: "Bad_Tenant".into(), ..policy_request(None) };
    assert_status(server.keys().set_tenant_policy(bad_tenant).await, Code::InvalidArgument, "tenant");
    let bad_tenant = pb::GetTenantPolicyRequest { tenant: "-bad".into() };
    assert_status(server.keys().get_tenant_policy(bad_tenant).await, Code::InvalidArgument, "tenant");
    let policy = server.keys().get_tenant_policy(pb::GetTenantPolicyRequest { tenant: ACME.into() }).await;
    assert_eq!(policy.expect("get").into_inner().version, 0, "nothing stored");
    // Only `system` keys may name another tenant; a tenant key needs `update` on keyscope.keys.
    let read_only = server.key(ACME, &["read-only"]).await.1;
    let denied = server.keys_as(Some(&read_only)).set_tenant_policy(policy_request(None)).await;
    assert_status(denied, Code::PermissionDenied, "keyscope.keys");
}

// ---------------------------------------------------------------------------------------------
// Source networks

async fn cidr_scenario(server: &TestServer) {
    let scope = courses(server).await;
    let cidrs = vec!["10.0.0.0/8".to_owned(), "2001:db8::1/32".to_owned()];
    let (key, token) =
        key_with(server, &scope, pb::CreateKeyRequest { allowed_cidrs: cidrs, ..Default::default() }).await;
    assert_eq!(key.allowed_cidrs, ["10.0.0.0/8", "2001:db8::/32"], "normalised");
    for (source, expected) in [
        ("10.1.2.3", pb::Reason::Ok),
        ("::ffff:10.9.9.9", pb::Reason::Ok),
        ("2001:db8:abcd::7", pb::Reason::Ok),
        ("11.0.0.1", pb::Reason::SourceNotAllowed),
        ("2001:db9::1", pb::Reason::SourceNotAllowed),
        ("", pb::Reason::SourceNotAllowed),
    ] {
        let answer = check_from(server, &token, "courses", source).await;
        assert_eq!(reason(&answer), expected, "{source}: {answer:?}");
        if expected != pb::Reason::Ok {
            assert!(answer.scope_ids.is_empty() && !answer.message.is_empty(), "{answer:?}");
        }
    }
    // The scopes come first: a module no scope grants is NOT_GRANTED from anywhere.
    assert_eq!(reason(&check_from(server, &token, "billing", "11.0.0.1").await), pb::Reason::NotGranted);
    for (peer, status, why) in [
        (Some("10.1.2.3"), 200, "OK"),
        (Some("2001:db8::9"), 200, "OK"),
        (Some("192.0.2.1"), 403, "SOURCE_NOT_ALLOWED"),
        (Some("not an address"), 403, "SOURCE_NOT_ALLOWED"),
        (None, 403, "SOURCE_NOT_ALLOWED"),
    ] {
        let (got, reason, _) = http(&envoy(server, envoy_request(&token, peer, &[])).await);
        assert_eq!((got, reason.as_str()), (status, why), "{peer:?}");
    }
    // Clearing the list (an empty list in the mask) lets any source in again.
    let clear = pb::UpdateKeyRequest {
        tenant: ACME.into(),
        id: key.id.clone(),
        version: key.version,
        update_mask: mask(&["allowed_cidrs"]),
        ..Default::default()
    };
    let cleared = server.keys().update_key(clear).await.expect("clear").into_inner();
    assert!(cleared.allowed_cidrs.is_empty());
    eventually("any source is allowed again", WITHIN, || async {
        reason(&check_from(server, &token, "courses", "").await) == pb::Reason::Ok
    })
    .await;
}

on_memory_and_redis!(cidr_scenario: source_networks_on_the_memory_store, source_networks_on_redis);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_takes_the_trusted_forwarded_hop() {
    let settings = ExtAuthzSettings { trusted_proxy_hops: 2, ..ExtAuthzSettings::default() };
    let server = TestServer::start_with_ext_authz(settings).await;
    let scope = courses(&server).await;
    let cidrs = vec!["10.0.0.0/8".to_owned()];
    let (_, token) =
        key_with(&server, &scope, pb::CreateKeyRequest { allowed_cidrs: cidrs, ..Default::default() }).await;
    for (xff, status) in [
        ("203.0.113.9, 10.0.0.9, 192.168.0.1", 200),
        ("10.0.0.9,192.168.0.1", 200),
        ("10.0.0.9, 8.8.8.8, 1.1.1.1", 403),
        ("192.168.0.1", 403),
        ("garbage, 192.168.0.1", 403),
    ] {
        // The peer is inside the allowed network: only the forwarded hop may decide.
        let request = envoy_request(&token, Some("10.0.0.1"), &[("x-forwarded-for", xff)]);
        assert_eq!(http(&envoy(&server, request).await).0, status, "{xff}");
    }
    let request = envoy_request(&token, Some("10.0.0.1"), &[]);
    assert_eq!(http(&envoy(&server, request).await).1, "SOURCE_NOT_ALLOWED", "no header: no source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_source_fields_name_the_field_and_change_nothing() {
    let server = TestServer::start().await;
    let scope = courses(&server).await;
    let good = pb::CreateKeyRequest { tenant: ACME.into(), scope_ids: vec![scope.clone()], ..Default::default() };
    let many: Vec<String> = (0..33).map(|i| format!("10.0.{i}.0/24")).collect();
    for (cidrs, code, field) in [
        (vec!["10.0.0.0/33".to_owned()], Code::InvalidArgument, "allowed_cidrs[0]"),
        (vec!["10.0.0.0/8".to_owned(), "example.com".to_owned()], Code::InvalidArgument, "allowed_cidrs[1]"),
        (vec![String::new()], Code::InvalidArgument, "allowed_cidrs[0]"),
        (many, Code::ResourceExhausted, "allowed_cidrs"),
    ] {
        let request = pb::CreateKeyRequest { allowed_cidrs: cidrs.clone(), ..good.clone() };
        let status = assert_status(server.keys().create_key(request).await, code, field);
        assert!(status.message().starts_with(field), "{status:?}");
    }
    let (key, token) = key_with(&server, &scope, pb::CreateKeyRequest::default()).await;
    let update = pb::UpdateKeyRequest {
        tenant: ACME.into(),
        id: key.id.clone(),
        version: key.version,
        update_mask: mask(&["allowed_cidrs"]),
        allowed_cidrs: vec!["fe80::1%eth0".into()],
        ..Default::default()
    };
    assert_status(server.keys().update_key(update).await, Code::InvalidArgument, "allowed_cidrs[0]");
    let check = |source: &str| pb::CheckRequest {
        credential: Some(pb::check_request::Credential::Token(token.clone())),
        module: "courses".into(),
        action: pb::Action::Read.into(),
        source_address: source.into(),
        ..Default::default()
    };
    for bad in ["10.0.0.1:80", "10.0.0.0/8", "localhost", "[::1]"] {
        assert_status(server.checker().check(check(bad)).await, Code::InvalidArgument, "source_address");
        let batch = pb::BatchCheckRequest {
            credential: Some(pb::batch_check_request::Credential::Token(token.clone())),
            items: vec![pb::CheckItem { module: "courses".into(), action: pb::Action::Read.into() }],
            source_address: bad.into(),
            ..Default::default()
        };
        assert_status(server.checker().batch_check(batch).await, Code::InvalidArgument, "source_address");
    }
    let read = server.keys().get_key(pb::GetKeyRequest { tenant: ACME.into(), id: key.id }).await.expect("get");
    assert_eq!(read.into_inner().version, 1, "nothing changed");
}

// ---------------------------------------------------------------------------------------------
// Rate limits

async fn rate_limit_scenario(server: &TestServer) {
    let scope = courses(server).await;
    // A limit that does not refill during the test: 2 checks, then none.
    let (_, token) = key_with(
        server,
        &scope,
        pb::CreateKeyRequest {
            rate_limit: rate(0.001, 2),
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..Default::default()
        },
    )
    .await;
    // Denied checks spend no quota: scopes and source come first.
    for _ in 0..5 {
        assert_eq!(reason(&check_from(server, &token, "billing", "10.0.0.1").await), pb::Reason::NotGranted);
        assert_eq!(reason(&check_from(server, &token, "courses", "192.0.2.1").await), pb::Reason::SourceNotAllowed);
    }
    for _ in 0..2 {
        assert_eq!(reason(&check_from(server, &token, "courses", "10.0.0.1").await), pb::Reason::Ok);
    }
    let limited = check_from(server, &token, "courses", "10.0.0.1").await;
    assert_eq!(reason(&limited), pb::Reason::RateLimited, "{limited:?}");
    let wait = limited.retry_after.expect("retry_after");
    assert!(wait.seconds > 0 || wait.nanos > 0, "{wait:?}");
    assert!(limited.scope_ids.is_empty() && !limited.message.is_empty());
    let (status, why, headers) = http(&envoy(server, envoy_request(&token, Some("10.0.0.1"), &[])).await);
    assert_eq!((status, why.as_str()), (429, "RATE_LIMITED"));
    let seconds: u64 = headers.get("retry-after").expect("retry-after").parse().expect("whole seconds");
    assert!(seconds >= 1);

    // BatchCheck: each allowed item spends one, in order; denied items spend none.
    let (_, batch_token) =
        key_with(server, &scope, pb::CreateKeyRequest { rate_limit: rate(0.001, 3), ..Default::default() }).await;
    let item = |module: &str| pb::CheckItem { module: module.into(), action: pb::Action::Read.into() };
    let batch = pb::BatchCheckRequest {
        credential: Some(pb::batch_check_request::Credential::Token(batch_token.clone())),
        items: vec![item("courses"), item("billing"), item("courses"), item("courses"), item("courses")],
        ..Default::default()
    };
    let results = server.checker().batch_check(batch).await.expect("batch").into_inner().results;
    let reasons: Vec<pb::Reason> = results.iter().map(reason).collect();
    use pb::Reason::{NotGranted, Ok, RateLimited};
    assert_eq!(reasons, [Ok, NotGranted, Ok, Ok, RateLimited]);
    assert!(results[4].retry_after.is_some());

    // Reached and recovered: a quick limit refills.
    let (_, quick) =
        key_with(server, &scope, pb::CreateKeyRequest { rate_limit: rate(20.0, 1), ..Default::default() }).await;
    eventually("the limit is reached", WITHIN, || async {
        reason(&server.check(&quick, "courses", pb::Action::Read).await) == pb::Reason::RateLimited
    })
    .await;
    eventually("the limit recovers", WITHIN, || async {
        reason(&server.check(&quick, "courses", pb::Action::Read).await) == pb::Reason::Ok
    })
    .await;
    eventually("ext_authz answers 429", WITHIN, || async {
        http(&envoy(server, envoy_request(&quick, None, &[])).await).0 == 429
    })
    .await;
    eventually("ext_authz recovers", WITHIN, || async {
        http(&envoy(server, envoy_request(&quick, None, &[])).await).0 == 200
    })
    .await;
}

on_memory_and_redis!(rate_limit_scenario: rate_limits_on_the_memory_store, rate_limits_on_redis);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_can_be_set_and_removed_and_bad_ones_name_the_field() {
    let server = TestServer::start().await;
    let scope = courses(&server).await;
    let good = pb::CreateKeyRequest { tenant: ACME.into(), scope_ids: vec![scope.clone()], ..Default::default() };
    let holders = pb::ListKeysRequest { tenant: ACME.into(), scope_id: scope.clone(), ..Default::default() };
    for (limit, field) in [
        (rate(0.0, 1), "rate_limit.requests_per_second"),
        (rate(-1.0, 1), "rate_limit.requests_per_second"),
        (rate(f64::NAN, 1), "rate_limit.requests_per_second"),
        (rate(f64::INFINITY, 1), "rate_limit.requests_per_second"),
        (rate(1_000_001.0, 1), "rate_limit.requests_per_second"),
        (rate(1.0, 0), "rate_limit.burst"),
        (rate(1.0, 1_000_001), "rate_limit.burst"),
    ] {
        let request = pb::CreateKeyRequest { rate_limit: limit, ..good.clone() };
        let status = assert_status(server.keys().create_key(request).await, Code::InvalidArgument, field);
        assert!(status.message().starts_with(field), "{status:?}");
    }
    let created = server.keys().list_keys(holders).await.expect("list").into_inner().keys;
    assert!(created.is_empty(), "a refused CreateKey creates nothing: {created:?}");
    let (key, token) =
        key_with(&server, &scope, pb::CreateKeyRequest { rate_limit: rate(0.001, 1), ..Default::default() }).await;
    assert_eq!(key.rate_limit, rate(0.001, 1));
    assert_eq!(reason(&server.check(&token, "courses", pb::Action::Read).await), pb::Reason::Ok);
    assert_eq!(reason(&server.check(&token, "courses", pb::Action::Read).await), pb::Reason::RateLimited);
    let update = |limit, version| pb::UpdateKeyRequest {
        tenant: ACME.into(),
        id: key.id.clone(),
        version,
        update_mask: mask(&["rate_limit"]),
        rate_limit: limit,
        ..Default::default()
    };
    assert_status(
        server.keys().update_key(update(rate(1.0, 0), key.version)).await,
        Code::InvalidArgument,
        "rate_limit.burst",
    );
    // Raised: the debt run up under the old limit (1000 s) is not carried over.
    let raised = server.keys().update_key(update(rate(1000.0, 1000), key.version)).await.expect("raise").into_inner();
    eventually("the raised limit applies", WITHIN, || async {
        reason(&server.check(&token, "courses", pb::Action::Read).await) == pb::Reason::Ok
    })
    .await;
    let cleared = server.keys().update_key(update(None, raised.version)).await.expect("clear").into_inner();
    assert_eq!(cleared.rate_limit, None);
    assert_eq!(reason(&server.check(&token, "courses", pb::Action::Read).await), pb::Reason::Ok);
}

// ---------------------------------------------------------------------------------------------
// Admin calls are checks of their key: its source networks and rate limit apply.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_are_held_to_their_source_networks_and_rate_limit() {
    let server = TestServer::start().await;
    let admin_key = |request: pb::CreateKeyRequest| {
        let keys = server.keys();
        async move {
            let request = pb::CreateKeyRequest { tenant: ACME.into(), scope_ids: vec!["admin".into()], ..request };
            keys.clone().create_key(request).await.expect("create admin key").into_inner().token
        }
    };
    let list = |token: String| {
        let keys = server.keys_as(Some(&token));
        async move { keys.clone().list_keys(pb::ListKeysRequest { tenant: ACME.into(), ..Default::default() }).await }
    };
    // The test client connects from 127.0.0.1.
    let elsewhere =
        admin_key(pb::CreateKeyRequest { allowed_cidrs: vec!["10.0.0.0/8".into()], ..Default::default() }).await;
    assert_status(list(elsewhere).await, Code::PermissionDenied, "127.0.0.1");
    let local =
        admin_key(pb::CreateKeyRequest { allowed_cidrs: vec!["127.0.0.0/8".into()], ..Default::default() }).await;
    list(local).await.expect("an admin call from an allowed network");
    let limited = admin_key(pb::CreateKeyRequest { rate_limit: rate(0.001, 1), ..Default::default() }).await;
    list(limited.clone()).await.expect("the first call");
    assert_status(list(limited).await, Code::ResourceExhausted, "rate limit");
}

// ---------------------------------------------------------------------------------------------
// With principals: the owner ceiling comes right after the key's scopes, before the source
// networks and the rate limit (so an owner's denial spends no quota either).

async fn owner_first_scenario(server: &TestServer) {
    let scope = courses(server).await;
    server.principal(ACME, "pat", &["teacher"]).await;
    server.bind(ACME, &scope, &[], &["teacher"]).await;
    let (key, token) = key_with(
        server,
        &scope,
        pb::CreateKeyRequest {
            owner: "pat".into(),
            rate_limit: rate(0.001, 2),
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..Default::default()
        },
    )
    .await;
    // Demoted: the owner denies, from an allowed source or not, and no quota is spent.
    server.bind(ACME, &scope, &[], &[]).await;
    for _ in 0..5 {
        assert_eq!(reason(&check_from(server, &token, "courses", "10.0.0.1").await), pb::Reason::OwnerDenied);
        assert_eq!(reason(&check_from(server, &token, "courses", "192.0.2.1").await), pb::Reason::OwnerDenied);
    }
    let (status, why, _) = http(&envoy(server, envoy_request(&token, Some("192.0.2.1"), &[])).await);
    assert_eq!((status, why.as_str()), (403, "OWNER_DENIED"));
    // Restored: the source is checked again, then the whole burst is still there.
    server.bind(ACME, &scope, &[], &["teacher"]).await;
    assert_eq!(reason(&check_from(server, &token, "courses", "192.0.2.1").await), pb::Reason::SourceNotAllowed);
    for _ in 0..2 {
        assert_eq!(reason(&check_from(server, &token, "courses", "10.0.0.1").await), pb::Reason::Ok);
    }
    assert_eq!(reason(&check_from(server, &token, "courses", "10.0.0.1").await), pb::Reason::RateLimited);
    // A rotated key keeps its owner, networks and limit: the new secret is bounded the same way.
    let (rotated, new_token) = rotate(server, &key.id, Duration::ZERO).await;
    assert_eq!((rotated.owner.as_str(), rotated.allowed_cidrs.len()), ("pat", 1));
    assert!(rotated.rate_limit.is_some());
    server.bind(ACME, &scope, &[], &[]).await;
    assert_eq!(reason(&check_from(server, &new_token, "courses", "10.0.0.1").await), pb::Reason::OwnerDenied);
}

on_memory_and_redis!(
    owner_first_scenario: the_owner_ceiling_comes_before_source_and_rate_limit_on_the_memory_store,
    the_owner_ceiling_comes_before_source_and_rate_limit_on_redis
);
