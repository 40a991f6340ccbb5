//! Principals, scope members and the owner ceiling (issue 7, parts 1 to 3), through the real
//! server: `Check`, `BatchCheck` and Envoy's ext_authz, on the memory store and on Redis, and
//! across two replicas sharing one Redis (a demoted owner shrinks its key on the other
//! replica through the change feed).

#![allow(clippy::panic)] // tests fail by panicking

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use common::{TestServer, all_rules, assert_status, eventually, read_rules};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
    check_response::HttpResponse,
};
use keyscope::{
    cache::CacheSettings,
    grpc::{ExtAuthzSettings, IdentityHeaders, pb},
    service::{HttpMapping, PrincipalHeaders, default_methods},
};
use redis_server::{RedisServer, fresh_prefix};
use tonic::Code;

const ACME: &str = "acme";
const WITHIN: Duration = Duration::from_secs(5);

fn reason(r: &pb::CheckResponse) -> pb::Reason {
    pb::Reason::try_from(r.reason).expect("known reason")
}

/// What Envoy is told for `token` on `method` to a route of `module`: `None` when allowed,
/// else the HTTP status and the body's reason.
async fn envoy(server: &TestServer, token: &str, module: &str, method: &str) -> Option<(i32, String)> {
    let auth = format!("Bearer {token}");
    envoy_with(server, method, &[("authorization", &auth)], &[("keyscope_module", module)]).await
}

/// Asserts the answer to `token` for `action` on `module`, through Check and through ext_authz.
async fn expect(server: &TestServer, token: &str, module: &str, action: pb::Action, want: pb::Reason) {
    let answer = server.check(token, module, action).await;
    assert_eq!(reason(&answer), want, "Check {action:?} on {module}: {answer:?}");
    let method = match action {
        pb::Action::Read => "GET",
        pb::Action::Update => "PUT",
        pb::Action::Create => "POST",
        _ => "DELETE",
    };
    let seen = envoy(server, token, module, method).await;
    if want == pb::Reason::Ok {
        assert_eq!(seen, None, "ext_authz {method} on {module}");
    } else {
        let name = want.as_str_name().trim_start_matches("REASON_").to_owned();
        assert_eq!(seen, Some((403, name)), "ext_authz {method} on {module}");
    }
}

/// The owner ceiling from start to end, on whatever store `server` runs on.
async fn owner_bounds_its_keys(server: &TestServer) {
    let rw = server.scope(ACME, "courses rw", pb::ScopeMode::Allow, all_rules(&["courses", "billing"])).await;
    let courses_read = server.scope(ACME, "courses read", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
    let billing = server.scope(ACME, "billing", pb::ScopeMode::Allow, all_rules(&["billing"])).await;
    let (key, token) = server.owned_key(ACME, "alice@example.com", &[&rw.id]).await;
    let (_, ownerless) = server.key(ACME, &[&rw.id]).await;
    use pb::{Action::*, Reason};

    // Not registered: the key's scopes alone decide.
    expect(server, &token, "courses", Update, Reason::Ok).await;
    // Registered with nothing bound: its keys are denied what their scopes allow.
    server.principal(ACME, "alice@example.com", &["teacher"]).await;
    expect(server, &token, "courses", Read, Reason::OwnerDenied).await;
    let answer = server.check(&token, "courses", Read).await;
    assert!(answer.message.contains("owner `alice@example.com`"), "{answer:?}");
    assert_eq!(answer.key_id, key.id);
    // Bound by role: read on courses.
    server.bind(ACME, &courses_read.id, &[], &["teacher"]).await;
    expect(server, &token, "courses", Read, Reason::Ok).await;
    expect(server, &token, "courses", Update, Reason::OwnerDenied).await;
    // Bound by subject: billing too.
    server.bind(ACME, &billing.id, &["alice@example.com"], &[]).await;
    expect(server, &token, "billing", Update, Reason::Ok).await;
    // The key's scopes still come first: what they do not grant is theirs to deny.
    expect(server, &token, "users", Read, Reason::NotGranted).await;
    // A key with no owner is untouched.
    expect(server, &ownerless, "courses", Update, Reason::Ok).await;

    // Demoted: the role loses its binding, the key shrinks at once.
    let mut principals = server.principals();
    let alice = principals
        .get_principal(pb::GetPrincipalRequest { tenant: ACME.into(), subject: "alice@example.com".into() })
        .await
        .expect("get")
        .into_inner();
    let demoted = principals
        .set_principal_roles(pb::SetPrincipalRolesRequest {
            tenant: ACME.into(),
            subject: "alice@example.com".into(),
            roles: vec!["guest".into()],
            version: alice.version,
        })
        .await
        .expect("set roles")
        .into_inner();
    assert_eq!(demoted.roles, ["guest"]);
    expect(server, &token, "courses", Read, Reason::OwnerDenied).await;
    expect(server, &token, "billing", Read, Reason::Ok).await;

    // Disabled, then enabled.
    let state = pb::PrincipalStateRequest { tenant: ACME.into(), subject: "alice@example.com".into() };
    principals.disable_principal(state.clone()).await.expect("disable");
    expect(server, &token, "billing", Read, Reason::OwnerDisabled).await;
    principals.enable_principal(state.clone()).await.expect("enable");
    expect(server, &token, "billing", Read, Reason::Ok).await;

    // Deleted: its keys are denied, with a message saying the owner is gone.
    principals
        .delete_principal(pb::DeletePrincipalRequest {
            tenant: ACME.into(),
            subject: "alice@example.com".into(),
            version: 0,
        })
        .await
        .expect("delete");
    expect(server, &token, "billing", Read, Reason::OwnerDenied).await;
    assert!(server.check(&token, "billing", Read).await.message.contains("deleted"));
    // Registered again: the bindings by subject still hold.
    server.principal(ACME, "alice@example.com", &[]).await;
    expect(server, &token, "billing", Read, Reason::Ok).await;
    expect(server, &token, "courses", Read, Reason::OwnerDenied).await;

    // An owner in another tenant with the same name changes nothing here.
    server.principal("globex", "bob", &[]).await;
    let (_, bobs) = server.owned_key(ACME, "bob", &[&rw.id]).await;
    expect(server, &bobs, "courses", Read, Reason::Ok).await;
}

/// Bearer principal credentials, on whatever store `server` runs on.
async fn bearer_principals_use_their_bindings(server: &TestServer) {
    use pb::{Action::*, Reason};
    let courses = server.scope(ACME, "courses", pb::ScopeMode::Allow, all_rules(&["courses"])).await;
    let no_delete = server
        .scope(ACME, "no delete", pb::ScopeMode::Deny, pb::Rules { delete: vec!["*".into()], ..Default::default() })
        .await;
    server.bind(ACME, &courses.id, &["carol"], &[]).await;
    server.bind(ACME, &no_delete.id, &[], &["intern"]).await;
    server.bind(ACME, "read-only", &[], &["viewer"]).await;
    let check = |subject: &'static str, roles: &'static [&'static str], module: &'static str, action| async move {
        server.try_check_principal(ACME, subject, roles, module, action).await.expect("check")
    };
    // By subject.
    let a = check("carol", &[], "courses", Delete).await;
    assert_eq!((reason(&a), a.subject.as_str(), a.tenant.as_str()), (Reason::Ok, "carol", ACME));
    assert_eq!(a.scope_ids, std::slice::from_ref(&courses.id));
    assert!(a.key_id.is_empty());
    // By the roles presented: deny wins.
    assert_eq!(reason(&check("carol", &["intern"], "courses", Delete).await), Reason::DeniedByScope);
    assert_eq!(reason(&check("dan", &["viewer"], "users", Read).await), Reason::Ok);
    assert_eq!(reason(&check("dan", &["viewer"], "users", Update).await), Reason::NotGranted);
    // Nothing bound.
    let none = check("erin", &[], "courses", Read).await;
    assert_eq!(reason(&none), Reason::NoScope);
    assert!(none.message.contains("no scope is bound"), "{none:?}");
    // The registered principal's roles are added to those presented.
    server.principal(ACME, "dan", &["intern"]).await;
    assert_eq!(reason(&check("dan", &["viewer"], "users", Delete).await), Reason::DeniedByScope);
    // Registered and disabled.
    let state = pb::PrincipalStateRequest { tenant: ACME.into(), subject: "dan".into() };
    server.principals().disable_principal(state).await.expect("disable");
    assert_eq!(reason(&check("dan", &["viewer"], "users", Read).await), Reason::PrincipalDisabled);
    // Another tenant's bindings are not ours.
    let elsewhere = server.try_check_principal("globex", "carol", &[], "courses", Read).await.expect("check");
    assert_eq!(reason(&elsewhere), Reason::NoScope);

    // Batch: one answer per item.
    let batch = server
        .checker()
        .batch_check(pb::BatchCheckRequest {
            credential: Some(pb::batch_check_request::Credential::Principal(pb::Principal {
                subject: "carol".into(),
                roles: vec!["intern".into()],
            })),
            tenant: ACME.into(),
            items: vec![
                pb::CheckItem { module: "courses".into(), action: Read.into() },
                pb::CheckItem { module: "courses".into(), action: Delete.into() },
                pb::CheckItem { module: "users".into(), action: Read.into() },
            ],
            explain: false,
            source_address: String::new(),
        })
        .await
        .expect("batch")
        .into_inner();
    let reasons: Vec<Reason> = batch.results.iter().map(reason).collect();
    // The ordinary decision rules: a deny-mode scope grants everything it does not list.
    assert_eq!(reasons, [Reason::Ok, Reason::DeniedByScope, Reason::Ok]);
    assert!(batch.results.iter().all(|r| r.subject == "carol"));

    // Bad input names the field.
    assert_status(server.try_check_principal("", "carol", &[], "courses", Read).await, Code::InvalidArgument, "tenant");
    assert_status(
        server.try_check_principal(ACME, "two words", &[], "courses", Read).await,
        Code::InvalidArgument,
        "principal.subject",
    );
    assert_status(
        server.try_check_principal(ACME, "", &[], "courses", Read).await,
        Code::InvalidArgument,
        "principal.subject",
    );
    assert_status(
        server.try_check_principal(ACME, "carol", &["ok", "Bad"], "courses", Read).await,
        Code::InvalidArgument,
        "principal.roles[1]",
    );
    let many: Vec<String> = (0..33).map(|i| format!("r{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_status(
        server.try_check_principal(ACME, "carol", &many, "courses", Read).await,
        Code::ResourceExhausted,
        "principal.roles: at most 32",
    );
}

on_memory_and_redis!(owner_bounds_its_keys: owners_bound_their_keys_on_memory, owners_bound_their_keys_on_redis);
on_memory_and_redis!(
    bearer_principals_use_their_bindings: bearer_principals_are_checked_through_their_bindings_on_memory,
    bearer_principals_are_checked_through_their_bindings_on_redis
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demoting_an_owner_on_one_replica_shrinks_its_key_on_another() {
    let redis = RedisServer::start();
    let prefix = fresh_prefix();
    // A TTL far longer than the test: what B sees came through the change feed.
    let cache = CacheSettings { time_to_live: Duration::from_secs(600), ..CacheSettings::default() };
    let a = TestServer::start_on_redis(&redis.url(), &prefix, cache, None).await;
    let b = TestServer::start_on_redis(&redis.url(), &prefix, cache, Some(&a.admin_token)).await;
    let scope = a.scope(ACME, "courses", pb::ScopeMode::Allow, all_rules(&["courses"])).await;
    let reader = a.scope(ACME, "reader", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
    a.bind(ACME, &scope.id, &[], &["editor"]).await;
    a.bind(ACME, &reader.id, &[], &["reader"]).await;
    a.principal(ACME, "alice", &["editor"]).await;
    let (_, token) = a.owned_key(ACME, "alice", &[&scope.id]).await;
    let cache_b = b.cache.clone().expect("cache");
    eventually("B allows the update from its cache", WITHIN, || async {
        let before = cache_b.stats().hits;
        let answer = b.check(&token, "courses", pb::Action::Update).await;
        answer.allowed && cache_b.stats().hits > before
    })
    .await;

    // Demote on A: B shrinks the key.
    a.principal(ACME, "alice", &["reader"]).await;
    eventually("B denies the update", WITHIN, || async {
        reason(&b.check(&token, "courses", pb::Action::Update).await) == pb::Reason::OwnerDenied
    })
    .await;
    assert!(b.check(&token, "courses", pb::Action::Read).await.allowed, "what the owner still has stays allowed");

    // Unbinding the role on A is seen by B too.
    a.bind(ACME, &reader.id, &[], &[]).await;
    eventually("B denies the read", WITHIN, || async {
        reason(&b.check(&token, "courses", pb::Action::Read).await) == pb::Reason::OwnerDenied
    })
    .await;

    // Disabling and deleting on A too.
    a.bind(ACME, &reader.id, &["alice"], &[]).await;
    eventually("B allows the read again", WITHIN, || async {
        b.check(&token, "courses", pb::Action::Read).await.allowed
    })
    .await;
    let state = pb::PrincipalStateRequest { tenant: ACME.into(), subject: "alice".into() };
    a.principals().disable_principal(state).await.expect("disable");
    eventually("B answers OWNER_DISABLED", WITHIN, || async {
        reason(&b.check(&token, "courses", pb::Action::Read).await) == pb::Reason::OwnerDisabled
    })
    .await;
    a.principals()
        .delete_principal(pb::DeletePrincipalRequest { tenant: ACME.into(), subject: "alice".into(), version: 0 })
        .await
        .expect("delete");
    eventually("B answers OWNER_DENIED", WITHIN, || async {
        reason(&b.check(&token, "courses", pb::Action::Read).await) == pb::Reason::OwnerDenied
    })
    .await;
    a.stop().await;
    b.stop().await;
}

fn principal_settings() -> ExtAuthzSettings {
    let mapping = HttpMapping::new("x-api-key", Vec::new(), false, default_methods())
        .with_principal_headers(PrincipalHeaders { subject: "X-Jwt-Sub".into(), roles: "x-jwt-roles".into() });
    ExtAuthzSettings { mapping, identity: IdentityHeaders::default(), strip_credential: false, trusted_proxy_hops: 0 }
}

/// An ext_authz request for `method /courses` with these headers and context extensions.
fn envoy_request(method: &str, headers: &[(&str, &str)], context: &[(&str, &str)]) -> CheckRequest {
    let pairs = |list: &[(&str, &str)]| list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let http = attribute_context::HttpRequest {
        method: method.into(),
        path: "/courses".into(),
        headers: pairs(headers),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
            context_extensions: pairs(context),
            ..Default::default()
        }),
    }
}

/// What Envoy is told for a request with `headers` on `<method> /courses` of a route with the
/// `context` extensions: `None` when allowed, else the HTTP status and the body's reason.
async fn envoy_with(
    server: &TestServer,
    method: &str,
    headers: &[(&str, &str)],
    context: &[(&str, &str)],
) -> Option<(i32, String)> {
    let request = envoy_request(method, headers, context);
    let response = AuthorizationClient::new(server.channel()).check(request).await.expect("ext_authz").into_inner();
    match response.http_response {
        Some(HttpResponse::OkResponse(_)) => None,
        Some(HttpResponse::DeniedResponse(d)) => {
            let body: serde_json::Value = serde_json::from_str(&d.body).expect("json body");
            Some((d.status.map_or(0, |s| s.code), body["reason"].as_str().unwrap_or_default().to_owned()))
        }
        other => panic!("unexpected ext_authz answer {other:?}"),
    }
}

/// The headers an allowed ext_authz answer sets and removes.
async fn allowed_headers(
    server: &TestServer,
    headers: &[(&str, &str)],
    context: &[(&str, &str)],
) -> (std::collections::HashMap<String, String>, Vec<String>) {
    let request = envoy_request("GET", headers, context);
    let response = AuthorizationClient::new(server.channel()).check(request).await.expect("ext_authz").into_inner();
    let Some(HttpResponse::OkResponse(ok)) = response.http_response else { panic!("expected an allow") };
    let set = ok.headers.iter().filter_map(|h| h.header.as_ref()).map(|h| (h.key.clone(), h.value.clone())).collect();
    (set, ok.headers_to_remove)
}

/// Bearer principals through ext_authz's principal headers, on whatever store `server` runs on.
async fn principal_headers_are_checked(server: &TestServer) {
    let courses = server.scope(ACME, "courses", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
    server.bind(ACME, &courses.id, &[], &["teacher"]).await;
    server.bind(ACME, "full-access", &["root"], &[]).await;
    let route = [("keyscope_module", "courses"), ("keyscope_tenant", ACME)];
    let forbidden = |reason: &str| Some((403, reason.to_owned()));
    // By role, from the comma-separated roles header.
    let teacher = [("x-jwt-sub", "t1"), ("x-jwt-roles", "guest, teacher")];
    assert_eq!(envoy_with(server, "GET", &teacher, &route).await, None);
    assert_eq!(envoy_with(server, "PUT", &teacher, &route).await, forbidden("NOT_GRANTED"));
    // By subject, no roles header. Upstream gets the tenant, and no key id (a forged one is
    // removed).
    assert_eq!(envoy_with(server, "DELETE", &[("x-jwt-sub", "root")], &route).await, None);
    let (set, removed) =
        allowed_headers(server, &[("x-jwt-sub", "root"), ("x-keyscope-key-id", "forged")], &route).await;
    assert_eq!(set.get("x-keyscope-tenant").map(String::as_str), Some(ACME));
    assert!(!set.contains_key("x-keyscope-key-id"), "{set:?}");
    assert!(removed.iter().any(|h| h == "x-keyscope-key-id"), "{removed:?}");
    // Nothing bound.
    assert_eq!(envoy_with(server, "GET", &[("x-jwt-sub", "nobody")], &route).await, forbidden("NO_SCOPE"));
    // A registered, disabled principal.
    server.principal(ACME, "t1", &[]).await;
    let state = pb::PrincipalStateRequest { tenant: ACME.into(), subject: "t1".into() };
    server.principals().disable_principal(state).await.expect("disable");
    assert_eq!(envoy_with(server, "GET", &teacher, &route).await, forbidden("PRINCIPAL_DISABLED"));
    // The route must name the tenant.
    let no_tenant = [("keyscope_module", "courses")];
    assert_eq!(envoy_with(server, "GET", &[("x-jwt-sub", "root")], &no_tenant).await, forbidden("NO_TENANT"));
    // Bad header values are a malformed credential (401).
    let bad_role = [("x-jwt-sub", "root"), ("x-jwt-roles", "Admin")];
    assert_eq!(envoy_with(server, "GET", &bad_role, &route).await, Some((401, "MALFORMED_CREDENTIAL".to_owned())));
    let bad_subject = [("x-jwt-sub", "two words")];
    assert_eq!(envoy_with(server, "GET", &bad_subject, &route).await, Some((401, "MALFORMED_CREDENTIAL".to_owned())));
    // The API-key header wins over the principal headers: a key then decides.
    let (_, token) = server.key(ACME, &[&courses.id]).await;
    let both = [("x-jwt-sub", "root"), ("x-api-key", token.as_str())];
    assert_eq!(envoy_with(server, "DELETE", &both, &route).await, forbidden("NOT_GRANTED"));
    // Behind jwt_authn the JWT stays in `authorization` (forward: true): it is not read as a
    // keyscope token, the API key is.
    let jwt = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyb290In0.c2lnbmF0dXJl";
    let with_jwt = [("x-jwt-sub", "root"), ("authorization", jwt), ("x-api-key", token.as_str())];
    assert_eq!(envoy_with(server, "GET", &with_jwt, &route).await, None);
    assert_eq!(envoy_with(server, "DELETE", &with_jwt, &route).await, forbidden("NOT_GRANTED"));
    // No principal header and no key: no credential.
    assert_eq!(envoy_with(server, "GET", &[], &route).await, Some((401, "MISSING_CREDENTIAL".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_headers_are_checked_by_ext_authz_on_memory() {
    let server = TestServer::start_with_ext_authz(principal_settings()).await;
    principal_headers_are_checked(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_headers_are_checked_by_ext_authz_on_redis() {
    let redis = RedisServer::start();
    let server = TestServer::start_on_redis_with_ext_authz(&redis.url(), &fresh_prefix(), principal_settings()).await;
    principal_headers_are_checked(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_headers_are_ignored_unless_configured() {
    let server = TestServer::start().await;
    server.bind(ACME, "full-access", &["root"], &[]).await;
    let route = [("keyscope_module", "courses"), ("keyscope_tenant", ACME)];
    let seen = envoy_with(&server, "GET", &[("x-jwt-sub", "root")], &route).await;
    assert_eq!(seen, Some((401, "MISSING_CREDENTIAL".to_owned())), "a client cannot claim a subject by default");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_admin_registers_lists_changes_and_deletes() {
    let server = TestServer::start().await;
    let mut admin = server.principals();
    let created = admin
        .upsert_principal(pb::UpsertPrincipalRequest {
            tenant: ACME.into(),
            subject: "alice".into(),
            roles: vec!["viewer".into(), "admin".into(), "viewer".into()],
            disabled: true,
            version: 0,
        })
        .await
        .expect("register")
        .into_inner();
    assert_eq!(
        (created.roles.clone(), created.enabled, created.version),
        (vec!["admin".into(), "viewer".into()], false, 1)
    );
    assert_eq!(created.tenant, ACME);
    // Upsert of a registered one replaces roles and flag, guarded by `version` when given.
    let stale =
        pb::UpsertPrincipalRequest { tenant: ACME.into(), subject: "alice".into(), version: 7, ..Default::default() };
    assert_status(admin.upsert_principal(stale).await, Code::Aborted, "principal `alice`");
    let replaced = server.principal(ACME, "alice", &["ops"]).await;
    assert_eq!((replaced.roles.clone(), replaced.enabled, replaced.version), (vec!["ops".into()], true, 2));
    // SetPrincipalRoles needs the version.
    let roles = |version| pb::SetPrincipalRolesRequest {
        tenant: ACME.into(),
        subject: "alice".into(),
        roles: vec!["dev".into()],
        version,
    };
    assert_status(admin.set_principal_roles(roles(0)).await, Code::InvalidArgument, "version");
    assert_status(admin.set_principal_roles(roles(1)).await, Code::Aborted, "");
    assert_eq!(admin.set_principal_roles(roles(2)).await.expect("roles").into_inner().roles, ["dev"]);
    let nobody = pb::SetPrincipalRolesRequest { subject: "nobody".into(), ..roles(1) };
    assert_status(admin.set_principal_roles(nobody).await, Code::NotFound, "nobody");
    let state = |subject: &str| pb::PrincipalStateRequest { tenant: ACME.into(), subject: subject.into() };
    assert!(!admin.disable_principal(state("alice")).await.expect("disable").into_inner().enabled);
    assert!(admin.enable_principal(state("alice")).await.expect("enable").into_inner().enabled);
    assert_status(admin.disable_principal(state("nobody")).await, Code::NotFound, "nobody");

    // Listing pages by subject.
    for s in ["bob", "carol", "dave", "erin"] {
        server.principal(ACME, s, &[]).await;
    }
    server.principal("globex", "zed", &[]).await;
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_principals(pb::ListPrincipalsRequest { tenant: ACME.into(), page_size: 2, page_token })
            .await
            .expect("list")
            .into_inner();
        assert!(page.principals.len() <= 2);
        seen.extend(page.principals.into_iter().map(|p| p.subject));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, ["alice", "bob", "carol", "dave", "erin"]);
    let bad_token = pb::ListPrincipalsRequest { tenant: ACME.into(), page_size: 2, page_token: "nope".into() };
    assert_status(admin.list_principals(bad_token).await, Code::InvalidArgument, "page_token");

    // Delete, guarded by version when given.
    let delete = |version| pb::DeletePrincipalRequest { tenant: ACME.into(), subject: "bob".into(), version };
    assert_status(admin.delete_principal(delete(9)).await, Code::Aborted, "");
    admin.delete_principal(delete(1)).await.expect("delete");
    let get = pb::GetPrincipalRequest { tenant: ACME.into(), subject: "bob".into() };
    assert_status(admin.get_principal(get).await, Code::NotFound, "bob");
    assert_status(admin.delete_principal(delete(0)).await, Code::NotFound, "bob");

    // Bad input names the field and changes nothing.
    let bad = |subject: &str, roles: Vec<String>| pb::UpsertPrincipalRequest {
        tenant: ACME.into(),
        subject: subject.into(),
        roles,
        ..Default::default()
    };
    assert_status(admin.upsert_principal(bad("", vec![])).await, Code::InvalidArgument, "subject");
    assert_status(admin.upsert_principal(bad("a b", vec![])).await, Code::InvalidArgument, "subject");
    assert_status(admin.upsert_principal(bad(&"x".repeat(257), vec![])).await, Code::InvalidArgument, "subject");
    assert_status(admin.upsert_principal(bad("frank", vec!["Ops".into()])).await, Code::InvalidArgument, "roles[0]");
    let many = (0..33).map(|i| format!("r{i}")).collect();
    assert_status(admin.upsert_principal(bad("frank", many)).await, Code::ResourceExhausted, "roles");
    assert_status(
        admin
            .upsert_principal(pb::UpsertPrincipalRequest { tenant: "Bad Tenant".into(), ..bad("frank", vec![]) })
            .await,
        Code::InvalidArgument,
        "tenant",
    );
    let get = pb::GetPrincipalRequest { tenant: ACME.into(), subject: "frank".into() };
    assert_status(admin.get_principal(get).await, Code::NotFound, "frank");

    // Every change is in the audit log, under the principal's subject.
    let events = server
        .audit()
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant: ACME.into(),
            page_size: 50,
            target_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    assert_eq!(events.len(), 5, "register, upsert, roles, disable, enable: {events:?}");
    assert!(
        events.iter().all(|e| e.target_type == "principal" && e.operation == pb::AuditOperation::PutPrincipal as i32)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_and_member_admin_is_authorized_on_its_reserved_modules() {
    let server = TestServer::start().await;
    let keys_admin = server.scope(ACME, "key admin", pb::ScopeMode::Allow, all_rules(&["keyscope.keys"])).await;
    let principal_reader =
        server.scope(ACME, "principal reader", pb::ScopeMode::Allow, read_rules(&["keyscope.principals"])).await;
    let (_, keys_only) = server.key(ACME, &[&keys_admin.id]).await;
    let (_, reader) = server.key(ACME, &[&principal_reader.id]).await;
    let upsert = pb::UpsertPrincipalRequest { tenant: ACME.into(), subject: "alice".into(), ..Default::default() };
    assert_status(server.principals_as(None).upsert_principal(upsert.clone()).await, Code::Unauthenticated, "");
    assert_status(
        server.principals_as(Some(&keys_only)).upsert_principal(upsert.clone()).await,
        Code::PermissionDenied,
        "keyscope.principals",
    );
    assert_status(
        server.principals_as(Some(&reader)).upsert_principal(upsert.clone()).await,
        Code::PermissionDenied,
        "create",
    );
    server.principals().upsert_principal(upsert).await.expect("system admin registers");
    let list = pb::ListPrincipalsRequest { tenant: String::new(), page_size: 0, page_token: String::new() };
    let listed =
        server.principals_as(Some(&reader)).list_principals(list.clone()).await.expect("reader lists").into_inner();
    assert_eq!(listed.principals.len(), 1, "its own tenant by default");
    let other = pb::ListPrincipalsRequest { tenant: "globex".into(), ..list.clone() };
    assert_status(server.principals_as(Some(&reader)).list_principals(other).await, Code::PermissionDenied, "globex");
    // An admin key is bounded by its owner too.
    let (_, owned_admin) = server.owned_key(ACME, "admin-owner", &[&principal_reader.id]).await;
    server.principals_as(Some(&owned_admin)).list_principals(list.clone()).await.expect("owner not registered");
    server.principal(ACME, "admin-owner", &[]).await;
    assert_status(
        server.principals_as(Some(&owned_admin)).list_principals(list.clone()).await,
        Code::PermissionDenied,
        "keyscope.principals",
    );
    server.bind(ACME, &principal_reader.id, &["admin-owner"], &[]).await;
    server.principals_as(Some(&owned_admin)).list_principals(list.clone()).await.expect("owner bound");
    // Members need `update` / `read` on keyscope.scopes.
    let members = pb::GetScopeMembersRequest { tenant: ACME.into(), scope_id: "read-only".into() };
    assert_status(
        server.scopes_as(Some(&reader)).get_scope_members(members).await,
        Code::PermissionDenied,
        "keyscope.scopes",
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_members_are_validated_versioned_and_guard_scope_deletes() {
    let server = TestServer::start().await;
    let scope = server.scope(ACME, "courses", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
    let mut scopes = server.scopes();
    let set = |scope_id: &str, subjects: Vec<String>, roles: Vec<String>, version| pb::SetScopeMembersRequest {
        tenant: ACME.into(),
        scope_id: scope_id.into(),
        subjects,
        roles,
        version,
    };
    let get = |scope_id: &str| pb::GetScopeMembersRequest { tenant: ACME.into(), scope_id: scope_id.into() };
    let empty = scopes.get_scope_members(get(&scope.id)).await.expect("get").into_inner();
    assert_eq!((empty.subjects.len(), empty.roles.len(), empty.version), (0, 0, 0));
    let bound = scopes
        .set_scope_members(set(&scope.id, vec!["bob".into(), "alice".into()], vec!["ops".into()], 0))
        .await
        .expect("set")
        .into_inner();
    assert_eq!(
        (bound.subjects.clone(), bound.roles.clone(), bound.version),
        (vec!["alice".into(), "bob".into()], vec!["ops".into()], 1)
    );
    assert_eq!(scopes.get_scope_members(get(&scope.id)).await.expect("get").into_inner(), bound);
    // Stale version: ABORTED, nothing written.
    assert_status(scopes.set_scope_members(set(&scope.id, vec![], vec![], 0)).await, Code::Aborted, "members of scope");
    // Bad input names the field.
    assert_status(scopes.set_scope_members(set("", vec![], vec![], 1)).await, Code::InvalidArgument, "scope_id");
    assert_status(scopes.set_scope_members(set("scp_nope", vec![], vec![], 1)).await, Code::NotFound, "scp_nope");
    assert_status(
        scopes.set_scope_members(set(&scope.id, vec!["a b".into()], vec![], 1)).await,
        Code::InvalidArgument,
        "subjects[0]",
    );
    assert_status(
        scopes.set_scope_members(set(&scope.id, vec![], vec!["x".into(), "-x".into()], 1)).await,
        Code::InvalidArgument,
        "roles[1]",
    );
    let subjects: Vec<String> = (0..1001).map(|i| format!("s{i}")).collect();
    assert_status(
        scopes.set_scope_members(set(&scope.id, subjects, vec![], 1)).await,
        Code::ResourceExhausted,
        "subjects",
    );
    let roles: Vec<String> = (0..101).map(|i| format!("r{i}")).collect();
    assert_status(scopes.set_scope_members(set(&scope.id, vec![], roles, 1)).await, Code::ResourceExhausted, "roles");
    // A version no bindings can be at is bad input, not a crash.
    assert_status(
        scopes.set_scope_members(set(&scope.id, vec![], vec![], u64::MAX)).await,
        Code::InvalidArgument,
        "version",
    );
    assert_status(scopes.get_scope_members(get("not an id")).await, Code::InvalidArgument, "scope_id");
    assert_eq!(scopes.get_scope_members(get(&scope.id)).await.expect("get").into_inner(), bound, "nothing changed");
    // Binding a scope that grants reserved modules needs the grant (the system admin has it).
    let admin_scope = scopes
        .set_scope_members(set("admin", vec!["root".into()], vec![], 0))
        .await
        .expect("the system admin may bind the admin scope");
    assert_eq!(admin_scope.into_inner().version, 1);
    let member_admin = server.scope(ACME, "member admin", pb::ScopeMode::Allow, all_rules(&["keyscope.scopes"])).await;
    let (_, token) = server.key(ACME, &[&member_admin.id]).await;
    let mut limited = server.scopes_as(Some(&token));
    limited.set_scope_members(set("full-access", vec!["x".into()], vec![], 0)).await.expect("no reserved grant in it");
    assert_status(
        limited.set_scope_members(set("admin", vec!["x".into()], vec![], 1)).await,
        Code::PermissionDenied,
        "scope_id",
    );

    // A bound scope is deleted only with force, and its bindings go with it.
    let delete = |force| pb::DeleteScopeRequest { tenant: ACME.into(), id: scope.id.clone(), force, version: 0 };
    assert_status(
        scopes.delete_scope(delete(false)).await,
        Code::FailedPrecondition,
        "bound to 2 subject(s) and 1 role(s)",
    );
    scopes.delete_scope(delete(true)).await.expect("forced delete");
    assert_status(scopes.get_scope_members(get(&scope.id)).await, Code::NotFound, &scope.id);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_key_hands_out_only_what_its_owner_holds_too() {
    let server = TestServer::start().await;
    let admin = server
        .scope(ACME, "keys and scopes", pb::ScopeMode::Allow, all_rules(&["keyscope.keys", "keyscope.scopes"]))
        .await;
    let keys_only = server.scope(ACME, "keys only", pb::ScopeMode::Allow, all_rules(&["keyscope.keys"])).await;
    let (_, owned_admin) = server.owned_key(ACME, "ops", &[&admin.id]).await;
    let create =
        |scope: &str| pb::CreateKeyRequest { tenant: ACME.into(), scope_ids: vec![scope.into()], ..Default::default() };
    // Owner not registered: the key's own scopes bound what it hands out.
    server.keys_as(Some(&owned_admin)).create_key(create(&admin.id)).await.expect("the key holds `admin`");

    // Registered and bound to key administration only: the key may still create keys, but
    // only with grants its owner holds too.
    server.principal(ACME, "ops", &[]).await;
    server.bind(ACME, &keys_only.id, &["ops"], &[]).await;
    server.keys_as(Some(&owned_admin)).create_key(create(&keys_only.id)).await.expect("within the owner");
    assert_status(
        server.keys_as(Some(&owned_admin)).create_key(create(&admin.id)).await,
        Code::PermissionDenied,
        "create on 'keyscope.scopes', which the calling key does not hold",
    );
    // Nor may it take over a key that holds more, by rotating it.
    let (victim, _) = server.key(ACME, &[&admin.id]).await;
    let rotate = pb::RotateKeyRequest { tenant: ACME.into(), id: victim.id.clone(), grace: None, expected_version: 0 };
    assert_status(
        server.keys_as(Some(&owned_admin)).rotate_key(rotate).await,
        Code::PermissionDenied,
        "create on 'keyscope.scopes', which the calling key does not hold",
    );
    let untouched = server.keys().get_key(pb::GetKeyRequest { tenant: ACME.into(), id: victim.id }).await;
    assert_eq!(untouched.expect("get").into_inner().version, victim.version, "a refused rotation changes nothing");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subjects_and_roles_name_the_field_on_every_principal_call() {
    let server = TestServer::start().await;
    let registered = server.principal(ACME, "alice", &["ops"]).await;
    let mut admin = server.principals();
    for subject in ["", "two words", &"x".repeat(257)] {
        let state = pb::PrincipalStateRequest { tenant: ACME.into(), subject: subject.into() };
        assert_status(admin.disable_principal(state.clone()).await, Code::InvalidArgument, "subject");
        assert_status(admin.enable_principal(state).await, Code::InvalidArgument, "subject");
        let get = pb::GetPrincipalRequest { tenant: ACME.into(), subject: subject.into() };
        assert_status(admin.get_principal(get).await, Code::InvalidArgument, "subject");
        let delete = pb::DeletePrincipalRequest { tenant: ACME.into(), subject: subject.into(), version: 0 };
        assert_status(admin.delete_principal(delete).await, Code::InvalidArgument, "subject");
        let roles = pb::SetPrincipalRolesRequest {
            tenant: ACME.into(),
            subject: subject.into(),
            roles: vec![],
            version: registered.version,
        };
        assert_status(admin.set_principal_roles(roles).await, Code::InvalidArgument, "subject");
    }
    let bad_roles = pb::SetPrincipalRolesRequest {
        tenant: ACME.into(),
        subject: "alice".into(),
        roles: vec!["ops".into(), "Admin".into()],
        version: registered.version,
    };
    assert_status(admin.set_principal_roles(bad_roles).await, Code::InvalidArgument, "roles[1]");
    let too_many = pb::SetPrincipalRolesRequest {
        tenant: ACME.into(),
        subject: "alice".into(),
        roles: (0..33).map(|i| format!("r{i}")).collect(),
        version: registered.version,
    };
    assert_status(admin.set_principal_roles(too_many).await, Code::ResourceExhausted, "roles");
    let get = pb::GetPrincipalRequest { tenant: ACME.into(), subject: "alice".into() };
    let unchanged = admin.get_principal(get).await.expect("get").into_inner();
    assert_eq!(
        (unchanged.roles, unchanged.version, unchanged.enabled),
        (vec!["ops".to_owned()], registered.version, true)
    );

    // A bearer principal in BatchCheck is validated like one in Check.
    let batch = |subject: &str, roles: Vec<String>| pb::BatchCheckRequest {
        credential: Some(pb::batch_check_request::Credential::Principal(pb::Principal {
            subject: subject.into(),
            roles,
        })),
        tenant: ACME.into(),
        items: vec![pb::CheckItem { module: "courses".into(), action: pb::Action::Read.into() }],
        ..Default::default()
    };
    let mut checker = server.checker();
    assert_status(checker.batch_check(batch("two words", vec![])).await, Code::InvalidArgument, "principal.subject");
    assert_status(
        checker.batch_check(batch("alice", vec!["Ops".into()])).await,
        Code::InvalidArgument,
        "principal.roles[0]",
    );
    let no_tenant = pb::BatchCheckRequest { tenant: String::new(), ..batch("alice", vec![]) };
    assert_status(checker.batch_check(no_tenant).await, Code::InvalidArgument, "tenant");
    server.stop().await;
}
