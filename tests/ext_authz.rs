//! Envoy's `envoy.service.auth.v3.Authorization/Check` over a real socket, with a client built
//! from envoy-types' stubs: the public decision cases, every credential form, denial statuses
//! and bodies, header spoofing, unmapped routes, unknown methods, malformed requests, and paths
//! spelled to reach a laxer route (path parameters, percent escapes, letter case, dot segments).

#![allow(clippy::panic)] // tests fail by panicking

mod common;
#[path = "common/fixtures.rs"]
mod fixtures;

use std::collections::HashMap;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use common::{TestServer, envoy_denial};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context, authorization_client::AuthorizationClient,
    check_response::HttpResponse,
};
use keyscope::grpc::pb;

const ACME: &str = "acme";

fn request(method: &str, path: &str, headers: &[(&str, &str)], context: &[(&str, &str)]) -> CheckRequest {
    let http = attribute_context::HttpRequest {
        method: method.into(),
        path: path.into(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
            context_extensions: context.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }),
    }
}

async fn ask(server: &TestServer, request: CheckRequest) -> CheckResponse {
    AuthorizationClient::new(server.channel()).check(request).await.expect("ext_authz check").into_inner()
}

fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().expect("the status is always set explicitly").code
}

/// (headers set, headers removed) of an allow.
fn allowed(r: &CheckResponse) -> (HashMap<String, String>, Vec<String>) {
    assert_eq!(code(r), 0, "{r:?}");
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else { panic!("expected an OK response, got {r:?}") };
    let set: HashMap<String, String> =
        ok.headers.iter().filter_map(|h| h.header.as_ref()).map(|h| (h.key.clone(), h.value.clone())).collect();
    // Envoy removes after it sets: a header both set and removed would be lost.
    for removed in &ok.headers_to_remove {
        assert!(!set.keys().any(|k| k.eq_ignore_ascii_case(removed)), "{removed} is both set and removed");
    }
    (set, ok.headers_to_remove.clone())
}

fn method_of(action: &str) -> &'static str {
    match action {
        "create" => "POST",
        "read" => "GET",
        "update" => "PUT",
        _ => "DELETE",
    }
}

#[tokio::test]
async fn decision_cases_hold_through_ext_authz() {
    let server = TestServer::start().await;
    for (i, case) in fixtures::load().iter().enumerate() {
        let tenant = format!("envoy-{i}");
        let mut ids = Vec::new();
        for s in &case.scopes {
            let [create, read, update, delete] = s.patterns();
            let mode = if s.mode == "deny" { pb::ScopeMode::Deny } else { pb::ScopeMode::Allow };
            let rules = pb::Rules { create, read, update, delete };
            ids.push(server.scope(&tenant, &format!("f-{}", s.id), mode, rules).await.id);
        }
        let token = if ids.is_empty() {
            let placeholder =
                server.scope(&tenant, "placeholder", pb::ScopeMode::Allow, common::read_rules(&["*"])).await;
            let (_, token) = server.key(&tenant, &[&placeholder.id]).await;
            let delete = pb::DeleteScopeRequest { tenant: tenant.clone(), id: placeholder.id, force: true, version: 0 };
            server.scopes().delete_scope(delete).await.expect("forced delete");
            token
        } else {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            server.key(&tenant, &refs).await.1
        };
        let bearer = format!("Bearer {token}");
        let r = ask(
            &server,
            request(
                method_of(&case.check.action),
                "/any",
                &[("authorization", &bearer)],
                &[("keyscope_module", &case.check.module)],
            ),
        )
        .await;
        if case.expect.allowed {
            let (set, _) = allowed(&r);
            assert_eq!(set.get("x-keyscope-tenant"), Some(&tenant), "{}", case.name);
        } else {
            let (status, body, _) = envoy_denial(&r);
            assert_eq!(status, 403, "{}", case.name);
            assert_eq!(body["reason"], case.expect.reason.as_str(), "{}", case.name);
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn every_credential_form_is_accepted_and_missing_or_bad_ones_are_401() {
    let server = TestServer::start().await;
    let (key, token) = server.key(ACME, &["read-only"]).await;
    let (_, secret) = token.rsplit_once('_').expect("token parts");
    let module = [("keyscope_module", "courses")];
    let pair = format!("Basic {}", STANDARD.encode(format!("{}:{secret}", key.id)));
    let whole = format!("Basic {}", STANDARD.encode(format!(":{token}")));
    let bearer = format!("Bearer {token}");
    for headers in [
        vec![("authorization", bearer.as_str())],
        vec![("Authorization", bearer.as_str())],
        vec![("x-api-key", token.as_str())],
        vec![("X-API-KEY", token.as_str())],
        vec![("authorization", pair.as_str())],
        vec![("authorization", whole.as_str())],
    ] {
        let (set, _) = allowed(&ask(&server, request("GET", "/courses", &headers, &module)).await);
        assert_eq!(set.get("x-keyscope-key-id"), Some(&key.id), "{headers:?}");
    }
    let missing = ask(&server, request("GET", "/courses", &[], &module)).await;
    let (status, body, headers) = envoy_denial(&missing);
    assert_eq!((status, body["reason"].as_str()), (401, Some("MISSING_CREDENTIAL")));
    assert!(headers.get("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    assert_eq!(headers.get("content-type").map(String::as_str), Some("application/json"));
    let garbage = ask(&server, request("GET", "/courses", &[("authorization", "Bearer nonsense")], &module)).await;
    let (status, body, headers) = envoy_denial(&garbage);
    assert_eq!((status, body["reason"].as_str()), (401, Some("MALFORMED_CREDENTIAL")));
    assert!(headers["www-authenticate"].contains("invalid_token"));
    assert_ne!(code(&garbage), 0, "a denial never carries an OK status");
    // Revoked: 401; a scope denial: 403; no secret in any body.
    server
        .keys()
        .revoke_key(pb::KeyStateRequest { tenant: ACME.into(), id: key.id.clone(), version: 0 })
        .await
        .expect("revoke");
    let revoked = ask(&server, request("GET", "/courses", &[("authorization", &bearer)], &module)).await;
    let (status, body, _) = envoy_denial(&revoked);
    assert_eq!((status, body["reason"].as_str()), (401, Some("KEY_REVOKED")));
    assert!(!body.to_string().contains(secret));
    server.stop().await;
}

#[tokio::test]
async fn clients_cannot_spoof_identity_headers() {
    let server = TestServer::start().await;
    let (key, token) = server.key(ACME, &["read-only"]).await;
    let bearer = format!("Bearer {token}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("x-keyscope-key-id", "forged"),
        ("x-keyscope-owner", "root"),
        ("x-keyscope-admin", "1"),
    ];
    let r = ask(&server, request("GET", "/courses", &headers, &[("keyscope_module", "courses")])).await;
    let (set, removed) = allowed(&r);
    assert_eq!(set.get("x-keyscope-key-id"), Some(&key.id), "overwritten with the real key id");
    assert!(removed.iter().any(|h| h == "x-keyscope-owner"), "the key has no owner: the forged one is removed");
    assert!(removed.iter().any(|h| h == "x-keyscope-admin"), "unknown x-keyscope-* headers are removed");
    // Mixed case is no way around it, and identity names are removed even if keyscope never saw them.
    let headers = [("authorization", bearer.as_str()), ("X-Keyscope-Admin", "1")];
    let (_, removed) =
        allowed(&ask(&server, request("GET", "/courses", &headers, &[("keyscope_module", "courses")])).await);
    assert!(removed.iter().any(|h| h.eq_ignore_ascii_case("x-keyscope-admin")));
    assert!(removed.iter().any(|h| h == "x-keyscope-owner"), "the unset owner header is always removed");
    let fields = &r.dynamic_metadata.as_ref().expect("metadata for the access log").fields;
    assert!(fields.contains_key("key_id") && fields.contains_key("module") && fields.contains_key("reason"));
    server.stop().await;
}

#[tokio::test]
async fn unmapped_routes_unknown_methods_and_malformed_requests_are_denied() {
    let server = TestServer::start().await;
    let (_, token) = server.key(ACME, &["full-access"]).await;
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    let unmapped = envoy_denial(&ask(&server, request("GET", "/courses", &auth, &[])).await);
    assert_eq!((unmapped.0, unmapped.1["reason"].as_str()), (403, Some("UNMAPPED_ROUTE")));
    let method = envoy_denial(&ask(&server, request("TRACE", "/x", &auth, &[("keyscope_module", "courses")])).await);
    assert_eq!((method.0, method.1["reason"].as_str()), (403, Some("UNKNOWN_METHOD")));
    let bad_route =
        envoy_denial(&ask(&server, request("GET", "/x", &auth, &[("keyscope_module", "Not A Module")])).await);
    assert_eq!(bad_route.1["reason"], "BAD_ROUTE_CONFIG");
    let empty = envoy_denial(&ask(&server, CheckRequest { attributes: None }).await);
    assert_eq!((empty.0, empty.1["reason"].as_str()), (403, Some("NO_HTTP_ATTRIBUTES")));
    let huge = "x".repeat(100_000);
    let odd_path = "/\u{0}\u{7f}%ff/../../courses?x=\u{fffd}";
    let garbage_token = format!("Bearer {huge}");
    for r in [
        request("GET", odd_path, &auth, &[("keyscope_module", "courses")]),
        request("GET", "/x", &[("authorization", garbage_token.as_str())], &[("keyscope_module", "courses")]),
        request(
            "GET",
            "/x",
            &[("x-huge", huge.as_str()), ("authorization", bearer.as_str())],
            &[("keyscope_module", "courses")],
        ),
    ] {
        let answer = ask(&server, r).await;
        assert!(answer.status.is_some(), "always an explicit status");
    }
    let ok = ask(&server, request("GET", odd_path, &auth, &[("keyscope_module", "courses")])).await;
    allowed(&ok);
    server.stop().await;
}

#[tokio::test]
async fn the_route_table_maps_paths_by_longest_prefix_and_context_extensions_win() {
    use keyscope::{
        grpc::{ExtAuthzSettings, IdentityHeaders},
        service::{HttpMapping, Route, default_methods},
    };
    let routes = vec![
        Route { prefix: "/api".into(), module: "api".parse().expect("module"), tenant: None },
        Route { prefix: "/api/billing".into(), module: "billing".parse().expect("module"), tenant: None },
    ];
    let settings = ExtAuthzSettings {
        mapping: HttpMapping::new("x-api-key", routes, false, default_methods()),
        identity: IdentityHeaders::default(),
        strip_credential: true,
        trusted_proxy_hops: Default::default(),
    };
    let server = TestServer::start_with_ext_authz(settings).await;
    let scope = server.scope(ACME, "billing only", pb::ScopeMode::Allow, common::read_rules(&["billing"])).await;
    let (_, token) = server.key(ACME, &[&scope.id]).await;
    let key_header = [("x-api-key", token.as_str())];
    // Longest prefix: /api/billing -> billing (granted); the query is never matched.
    let (_, removed) = allowed(&ask(&server, request("GET", "/api/billing/invoices?x=/api", &key_header, &[])).await);
    assert!(removed.iter().any(|h| h == "x-api-key"), "strip_credential removes the credential header");
    // /api -> api (not granted): 403.
    let other = envoy_denial(&ask(&server, request("GET", "/api/courses", &key_header, &[])).await);
    assert_eq!((other.0, other.1["reason"].as_str()), (403, Some("NOT_GRANTED")));
    // context_extensions win over the table.
    allowed(&ask(&server, request("GET", "/api/courses", &key_header, &[("keyscope_module", "billing")])).await);
    // A route's tenant must be the key's.
    let wrong = envoy_denial(
        &ask(
            &server,
            request("GET", "/x", &key_header, &[("keyscope_module", "billing"), ("keyscope_tenant", "globex")]),
        )
        .await,
    );
    assert_eq!((wrong.0, wrong.1["reason"].as_str()), (403, Some("TENANT_MISMATCH")));
    server.stop().await;
}

#[tokio::test]
async fn headers_sent_as_header_map_with_raw_values_are_read() {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    let server = TestServer::start().await;
    let (key, token) = server.key(ACME, &["read-only"]).await;
    let mut r = request("GET", "/courses", &[], &[("keyscope_module", "courses")]);
    let http = r.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|q| q.http.as_mut()).expect("http");
    http.header_map = Some(HeaderMap {
        headers: vec![
            HeaderValue {
                key: "Authorization".into(),
                value: String::new(),
                raw_value: format!("Bearer {token}").into_bytes(),
            },
            HeaderValue { key: "X-Keyscope-Tenant".into(), value: "forged".into(), raw_value: Vec::new() },
        ],
    });
    let (set, _) = allowed(&ask(&server, r).await);
    assert_eq!(set.get("x-keyscope-key-id"), Some(&key.id));
    assert_eq!(set.get("x-keyscope-tenant").map(String::as_str), Some(ACME), "the forged tenant is overwritten");
    server.stop().await;
}

/// A server whose route table is `/admin -> admin, / -> public`, and tokens of keys that may
/// read `public` only and `admin` only.
async fn admin_and_public(case_insensitive_routes: bool) -> (TestServer, String, String) {
    use keyscope::{
        grpc::{ExtAuthzSettings, IdentityHeaders},
        service::{HttpMapping, Route, default_methods},
    };
    let route = |prefix: &str, module: &str| Route {
        prefix: prefix.into(),
        module: module.parse().expect("module"),
        tenant: None,
    };
    let mapping =
        HttpMapping::new("x-api-key", vec![route("/admin", "admin"), route("/", "public")], false, default_methods())
            .with_case_insensitive_routes(case_insensitive_routes);
    let settings = ExtAuthzSettings {
        mapping,
        identity: IdentityHeaders::default(),
        strip_credential: false,
        trusted_proxy_hops: Default::default(),
    };
    let server = TestServer::start_with_ext_authz(settings).await;
    let mut tokens = Vec::new();
    for module in ["public", "admin"] {
        let scope =
            server.scope(ACME, &format!("{module} only"), pb::ScopeMode::Allow, common::read_rules(&[module])).await;
        tokens.push(server.key(ACME, &[&scope.id]).await.1);
    }
    let admin = tokens.pop().expect("admin token");
    let public = tokens.pop().expect("public token");
    (server, public, admin)
}

/// The module a check was made for, from the access-log metadata.
fn checked_module(r: &CheckResponse) -> String {
    use envoy_types::pb::google::protobuf::value::Kind;
    let fields = &r.dynamic_metadata.as_ref().expect("metadata for the access log").fields;
    match fields.get("module").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(module)) => module.clone(),
        other => panic!("no module in the metadata: {other:?}"),
    }
}

#[tokio::test]
async fn path_parameters_and_encodings_never_reach_a_laxer_route() {
    let (server, public, admin) = admin_and_public(true).await;
    for path in ["/admin;jsessionid=x/users", "/admin;x", "/%61dmin/users", "/Admin/users"] {
        let denied = ask(&server, request("GET", path, &[("x-api-key", &public)], &[])).await;
        assert_eq!(checked_module(&denied), "admin", "{path}");
        let (status, body, _) = envoy_denial(&denied);
        assert_eq!((status, body["reason"].as_str()), (403, Some("NOT_GRANTED")), "{path}");
        let allowed_admin = ask(&server, request("GET", path, &[("x-api-key", &admin)], &[])).await;
        allowed(&allowed_admin);
        assert_eq!(checked_module(&allowed_admin), "admin", "{path}");
    }
    // The public route still serves public paths.
    allowed(&ask(&server, request("GET", "/users;x", &[("x-api-key", &public)], &[])).await);
    server.stop().await;
}

#[tokio::test]
async fn paths_upstreams_resolve_differently_are_refused_with_a_reason() {
    let (server, public, admin) = admin_and_public(true).await;
    for (path, reason, says) in [
        ("/public/..;/admin/users", "UNSAFE_PATH", "`.` or `..` segment"),
        ("/public/%2e%2e/admin", "UNSAFE_PATH", "`.` or `..` segment"),
        ("/admin%2Fusers", "UNSAFE_PATH", "encoded `/` or `;`"),
        ("/admin%3Bx/users", "UNSAFE_PATH", "encoded `/` or `;`"),
        ("/admin%5Cusers", "UNSAFE_PATH", "backslash"),
        ("/%2561dmin/users", "UNSAFE_PATH", "double-encoded"),
        ("/admin%00", "UNSAFE_PATH", "control character"),
        ("/admin%zz", "UNSAFE_PATH", "malformed percent escape"),
        ("/\u{212a}eys", "UNSAFE_PATH", "ASCII letter"),
        ("/adminx/users", "AMBIGUOUS_ROUTE", "inside a segment"),
    ] {
        for token in [&public, &admin] {
            let (status, body, headers) =
                envoy_denial(&ask(&server, request("GET", path, &[("x-api-key", token)], &[])).await);
            assert_eq!((status, body["reason"].as_str()), (403, Some(reason)), "{path}");
            assert!(body["message"].as_str().is_some_and(|m| m.contains(says)), "{path}: {body}");
            assert_eq!(headers.get("content-type").map(String::as_str), Some("application/json"));
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn with_case_sensitive_routes_another_case_takes_the_route_of_that_case() {
    let (server, public, admin) = admin_and_public(false).await;
    // A case-sensitive upstream does not serve `/Admin/users` from its admin API.
    let r = ask(&server, request("GET", "/Admin/users", &[("x-api-key", &public)], &[])).await;
    allowed(&r);
    assert_eq!(checked_module(&r), "public");
    let (status, body, _) =
        envoy_denial(&ask(&server, request("GET", "/Admin/users", &[("x-api-key", &admin)], &[])).await);
    assert_eq!((status, body["reason"].as_str()), (403, Some("NOT_GRANTED")));
    // Parameters and encodings are read as before.
    for path in ["/admin;jsessionid=x/users", "/%61dmin/users"] {
        let denied = ask(&server, request("GET", path, &[("x-api-key", &public)], &[])).await;
        assert_eq!(checked_module(&denied), "admin", "{path}");
        assert_eq!(envoy_denial(&denied).1["reason"], "NOT_GRANTED", "{path}");
    }
    server.stop().await;
}
