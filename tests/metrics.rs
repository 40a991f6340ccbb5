//! Metrics and probes on the HTTP port: after known traffic through Check, BatchCheck,
//! ext_authz and the admin API, `/metrics` shows exactly the counts that traffic makes; the
//! cache and store counters move as checks hit and miss; `/livez` and `/readyz` answer.
// Tests fail by panicking.
#![allow(clippy::panic)]

mod common;
#[path = "common/scrape.rs"]
mod scrape;

use common::TestServer;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
};
use keyscope::{
    domain::TokenFormat,
    grpc::{ExtAuthzSettings, pb},
};
use scrape::{count, metrics, sample};

const ACME: &str = "acme";

fn envoy(headers: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/courses".into(),
                    headers: headers.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("keyscope_module".to_owned(), "courses".to_owned())].into(),
            ..Default::default()
        }),
    }
}

async fn check(server: &TestServer, token: &str, module: &str, action: pb::Action) -> Result<bool, tonic::Status> {
    server.try_check(token, module, action).await.map(|a| a.allowed)
}

#[tokio::test]
async fn counters_follow_known_traffic() {
    let server = TestServer::start_cached(ExtAuthzSettings::default()).await;
    let addr = server.http_addr.to_string();
    let (key, token) = server.key(ACME, &["read-only"]).await;

    // Checker: 3 allowed, 2 not granted, 1 malformed, 1 unknown key, 1 invalid request.
    for _ in 0..3 {
        assert_eq!(check(&server, &token, "courses", pb::Action::Read).await.ok(), Some(true));
    }
    for _ in 0..2 {
        assert_eq!(check(&server, &token, "courses", pb::Action::Delete).await.ok(), Some(false));
    }
    assert_eq!(check(&server, "not-a-token", "courses", pb::Action::Read).await.ok(), Some(false));
    let tokens = TokenFormat::new("ks").expect("prefix");
    let (_, unknown) = tokens.issue(&tokens.new_key_id().expect("id")).expect("token");
    assert_eq!(check(&server, unknown.expose(), "courses", pb::Action::Read).await.ok(), Some(false));
    let invalid = check(&server, &token, "Not A Module", pb::Action::Read).await;
    assert_eq!(invalid.map_err(|s| s.code()), Err(tonic::Code::InvalidArgument));

    // BatchCheck: one call, three items.
    let batch = pb::BatchCheckRequest {
        credential: Some(pb::batch_check_request::Credential::Token(token.clone())),
        tenant: String::new(),
        items: vec![
            pb::CheckItem { module: "courses".into(), action: pb::Action::Read.into() },
            pb::CheckItem { module: "billing".into(), action: pb::Action::Read.into() },
            pb::CheckItem { module: "courses".into(), action: pb::Action::Create.into() },
        ],
        explain: false,
        source_address: Default::default(),
    };
    server.checker().batch_check(batch).await.expect("batch");

    // ext_authz: one allowed, one without a credential.
    let mut envoy_client = AuthorizationClient::new(server.channel());
    let bearer = format!("Bearer {token}");
    envoy_client.check(envoy(&[("authorization", &bearer)])).await.expect("ext_authz");
    envoy_client.check(envoy(&[])).await.expect("ext_authz");

    // Admin: a refused call without a token, one refused for lack of permission.
    let anonymous = server.keys_as(None).get_key(pb::GetKeyRequest { tenant: ACME.into(), id: key.id.clone() }).await;
    assert_eq!(anonymous.map(|_| ()).map_err(|s| s.code()), Err(tonic::Code::Unauthenticated));
    let not_admin = server.keys_as(Some(&token)).get_key(pb::GetKeyRequest { tenant: ACME.into(), id: key.id }).await;
    assert_eq!(not_admin.map(|_| ()).map_err(|s| s.code()), Err(tonic::Code::PermissionDenied));

    // A method the service does not have: counted, but not under its name.
    let mut grpc = tonic::client::Grpc::new(server.channel());
    grpc.ready().await.expect("ready");
    let unknown = grpc
        .unary(
            tonic::Request::new(pb::GetKeyRequest::default()),
            "/keyscope.v1.KeyAdmin/NoSuchMethod".parse().expect("path"),
            tonic_prost::ProstCodec::<pb::GetKeyRequest, pb::Key>::default(),
        )
        .await;
    assert_eq!(unknown.map(|_| ()).map_err(|s| s.code()), Err(tonic::Code::Unimplemented));

    let text = metrics(&addr).await;
    let checks = "keyscope_checks_total";
    for (path, decision, reason, expected) in [
        ("native", "allow", "OK", 3.0),
        ("native", "deny", "NOT_GRANTED", 2.0),
        ("native", "deny", "MALFORMED_CREDENTIAL", 1.0),
        ("native", "deny", "UNKNOWN_KEY", 1.0),
        ("native", "error", "INVALID_ARGUMENT", 1.0),
        ("batch", "allow", "OK", 2.0),
        ("batch", "deny", "NOT_GRANTED", 1.0),
        ("ext_authz", "allow", "OK", 1.0),
        ("ext_authz", "deny", "MISSING_CREDENTIAL", 1.0),
    ] {
        let labels = [("path", path), ("decision", decision), ("reason", reason)];
        assert_eq!(count(&text, checks, &labels), expected, "{checks}{labels:?}\n{text}");
    }
    let timed = |path: &str| count(&text, "keyscope_check_duration_seconds_count", &[("path", path)]);
    assert_eq!(timed("native"), 8.0, "every Check is timed, failed ones too");
    assert_eq!(timed("batch"), 1.0, "a batch is timed once");
    assert_eq!(timed("ext_authz"), 2.0);

    let admin = "keyscope_admin_calls_total";
    assert_eq!(count(&text, admin, &[("method", "CreateKey"), ("code", "OK")]), 1.0);
    assert_eq!(count(&text, admin, &[("method", "GetKey"), ("code", "UNAUTHENTICATED")]), 1.0);
    assert_eq!(count(&text, admin, &[("method", "GetKey"), ("code", "PERMISSION_DENIED")]), 1.0);
    assert_eq!(count(&text, admin, &[("method", "unknown"), ("code", "UNIMPLEMENTED")]), 1.0);
    assert!(!text.contains("NoSuchMethod"), "a caller's method name is no label");
    assert_eq!(sample(&text, "keyscope_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
}

#[tokio::test]
async fn cache_and_store_counters_move_with_hits_and_misses() {
    let server = TestServer::start_cached(ExtAuthzSettings::default()).await;
    let addr = server.http_addr.to_string();
    let cache = server.cache.clone().expect("a cached server");
    let (key, token) = server.key(ACME, &["read-only"]).await;

    let before = metrics(&addr).await;
    assert_eq!(check(&server, &token, "courses", pb::Action::Read).await.ok(), Some(true));
    let after_miss = metrics(&addr).await;
    let delta = |a: &str, b: &str, name: &str, labels: &[(&str, &str)]| count(b, name, labels) - count(a, name, labels);
    assert_eq!(delta(&before, &after_miss, "keyscope_cache_misses_total", &[]), 1.0, "{after_miss}");
    assert_eq!(delta(&before, &after_miss, "keyscope_cache_hits_total", &[]), 0.0);
    assert_eq!(delta(&before, &after_miss, "keyscope_store_calls_total", &[("op", "credential")]), 1.0);
    assert_eq!(delta(&before, &after_miss, "keyscope_store_call_duration_seconds_count", &[("op", "credential")]), 1.0);

    for _ in 0..5 {
        assert_eq!(check(&server, &token, "courses", pb::Action::Read).await.ok(), Some(true));
    }
    let after_hits = metrics(&addr).await;
    assert_eq!(delta(&after_miss, &after_hits, "keyscope_cache_hits_total", &[]), 5.0);
    assert_eq!(
        delta(&after_miss, &after_hits, "keyscope_store_calls_total", &[("op", "credential")]),
        0.0,
        "a hit is no store call"
    );

    let cached = cache.cached_keys();
    assert!(cached >= 1);
    let text = metrics(&addr).await;
    assert_eq!(sample(&text, "keyscope_cache_entries", &[("cache", "keys")]), Some(cached as f64));

    // Disabling the key drops it from the cache.
    server
        .keys()
        .disable_key(pb::KeyStateRequest { tenant: ACME.into(), id: key.id, version: 0 })
        .await
        .expect("disable");
    let after_change = metrics(&addr).await;
    assert!(delta(&text, &after_change, "keyscope_cache_invalidations_total", &[]) >= 1.0, "{after_change}");
    assert!(delta(&text, &after_change, "keyscope_store_calls_total", &[("op", "put_key")]) >= 1.0);
    assert_eq!(count(&after_change, "keyscope_store_errors_total", &[("op", "put_key")]), 0.0);
}

#[tokio::test]
async fn probes_answer_on_the_http_port() {
    let server = TestServer::start().await;
    let addr = server.http_addr.to_string();
    assert_eq!(scrape::get(&addr, "/livez").await, (200, "ok\n".to_owned()));
    assert_eq!(scrape::get(&addr, "/healthz").await.0, 200);
    assert_eq!(scrape::get(&addr, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(scrape::get(&addr, "/nope").await.0, 404);
    let (status, body) = scrape::get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
}
