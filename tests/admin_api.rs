//! Key and scope administration over real sockets: key states and check reasons, tenants,
//! builtin scopes, versions, deletes, clones, pagination, admin authorization
//! and the validation of every request field.

// The shared harness panics on a broken test setup, which is what a test harness should do.
#[allow(clippy::panic)]
mod common;

use std::{collections::HashMap, time::Duration};

use common::{TestServer, all_rules, assert_status, mask, read_rules};
use keyscope::{
    domain::{KeyId, TokenFormat},
    grpc::pb,
    service::Clock,
};
use prost_types::Timestamp;
use tonic::Code;

const ACME: &str = "acme";

// ---------------------------------------------------------------------------------------------
// helpers

fn token_credential(token: &str) -> Option<pb::check_request::Credential> {
    Some(pb::check_request::Credential::Token(token.into()))
}

fn check_request(token: &str, tenant: &str, module: &str, action: pb::Action) -> pb::CheckRequest {
    pb::CheckRequest {
        credential: token_credential(token),
        tenant: tenant.into(),
        module: module.into(),
        action: action.into(),
        explain: true,
        source_address: Default::default(),
    }
}

#[track_caller]
fn assert_reason(response: &pb::CheckResponse, expected: pb::Reason) {
    assert_eq!(pb::Reason::try_from(response.reason), Ok(expected), "unexpected answer: {response:?}");
    assert_eq!(response.allowed, expected == pb::Reason::Ok, "allowed must match the reason: {response:?}");
}

/// Creates a key as the system admin from a full request.
async fn create_key(server: &TestServer, request: pb::CreateKeyRequest) -> (pb::Key, String) {
    let response = server.keys().create_key(request).await.expect("create key").into_inner();
    (response.key.expect("key"), response.token)
}

async fn get_key(server: &TestServer, tenant: &str, id: &str) -> pb::Key {
    server
        .keys()
        .get_key(pb::GetKeyRequest { tenant: tenant.into(), id: id.into() })
        .await
        .expect("get key")
        .into_inner()
}

async fn get_scope(server: &TestServer, tenant: &str, id: &str) -> pb::Scope {
    server
        .scopes()
        .get_scope(pb::GetScopeRequest { tenant: tenant.into(), id: id.into() })
        .await
        .expect("get scope")
        .into_inner()
}

fn state_request(tenant: &str, id: &str) -> pb::KeyStateRequest {
    pb::KeyStateRequest { tenant: tenant.into(), id: id.into(), version: 0 }
}

fn ids_of_keys(keys: &[pb::Key]) -> Vec<String> {
    keys.iter().map(|k| k.id.clone()).collect()
}

fn ids_of_scopes(scopes: &[pb::Scope]) -> Vec<String> {
    scopes.iter().map(|s| s.id.clone()).collect()
}

fn timestamp_in(server: &TestServer, offset_secs: i64) -> Timestamp {
    let now = Timestamp::from(server.clock.now());
    Timestamp { seconds: now.seconds + offset_secs, nanos: now.nanos }
}

/// The token's last `_`-separated part: the secret and its checksum.
fn secret_part(token: &str) -> String {
    token.rsplit_once('_').expect("token has separators").1.to_owned()
}

// ---------------------------------------------------------------------------------------------
// 1. key states and their reasons

#[tokio::test]
async fn key_states_decide_the_check_reason_and_revoked_is_final() {
    let server = TestServer::start().await;
    let (key, token) = server.key(ACME, &["full-access"]).await;

    assert_reason(&server.check(&token, "courses", pb::Action::Read).await, pb::Reason::Ok);

    let disabled = server.keys().disable_key(state_request(ACME, &key.id)).await.expect("disable").into_inner();
    assert_eq!(disabled.state, pb::KeyState::Disabled as i32);
    assert_eq!(disabled.version, key.version + 1);
    assert_reason(&server.check(&token, "courses", pb::Action::Read).await, pb::Reason::KeyDisabled);

    let enabled = server.keys().enable_key(state_request(ACME, &key.id)).await.expect("enable").into_inner();
    assert_eq!(enabled.state, pb::KeyState::Active as i32);
    assert_reason(&server.check(&token, "courses", pb::Action::Read).await, pb::Reason::Ok);

    let revoked = server.keys().revoke_key(state_request(ACME, &key.id)).await.expect("revoke").into_inner();
    assert_eq!(revoked.state, pb::KeyState::Revoked as i32);
    assert_reason(&server.check(&token, "courses", pb::Action::Read).await, pb::Reason::KeyRevoked);

    assert_status(server.keys().enable_key(state_request(ACME, &key.id)).await, Code::FailedPrecondition, "revoked");
    assert_status(server.keys().disable_key(state_request(ACME, &key.id)).await, Code::FailedPrecondition, "revoked");
    let after = get_key(&server, ACME, &key.id).await;
    assert_eq!(after.state, pb::KeyState::Revoked as i32);
    assert_eq!(after.version, revoked.version);
    assert_reason(&server.check(&token, "courses", pb::Action::Read).await, pb::Reason::KeyRevoked);
}

#[tokio::test]
async fn create_key_refuses_an_expiry_in_the_past() {
    let server = TestServer::start().await;
    let before = server.all_keys(ACME).await.len();
    let result = server
        .keys()
        .create_key(pb::CreateKeyRequest {
            tenant: ACME.into(),
            scope_ids: vec!["full-access".into()],
            expires_at: Some(timestamp_in(&server, -60)),
            ..Default::default()
        })
        .await;
    assert_status(result, Code::InvalidArgument, "expires_at");
    assert_eq!(server.all_keys(ACME).await.len(), before);
}

#[tokio::test]
async fn key_expires_when_the_clock_passes_expires_at() {
    let server = TestServer::start().await;
    let (key, token) = create_key(
        &server,
        pb::CreateKeyRequest {
            tenant: ACME.into(),
            scope_ids: vec!["full-access".into()],
            expires_at: Some(timestamp_in(&server, 60)),
            ..Default::default()
        },
    )
    .await;
    assert!(key.expires_at.is_some());
    assert_reason(&server.check(&token, "courses", pb::Action::Read).await, pb::Reason::Ok);
    server.advance(Duration::from_secs(61));
    assert_reason(&server.check(&token, "courses", pb::Action::Read).await, pb::Reason::KeyExpired);
}

#[tokio::test]
async fn unknown_key_and_wrong_secret_both_answer_unknown_key() {
    let server = TestServer::start().await;
    let (key, token) = server.key(ACME, &["full-access"]).await;
    let format = TokenFormat::new("ks").expect("prefix");

    let stranger = format.new_key_id().expect("random");
    let (_, unknown) = format.issue(&stranger).expect("random");
    let response = server.check(unknown.expose(), "courses", pb::Action::Read).await;
    assert_reason(&response, pb::Reason::UnknownKey);
    assert_eq!(response.tenant, "");

    let id: KeyId = key.id.parse().expect("key id");
    let (_, wrong) = format.issue(&id).expect("random");
    assert_ne!(wrong.expose(), token);
    let response = server.check(wrong.expose(), "courses", pb::Action::Read).await;
    assert_reason(&response, pb::Reason::UnknownKey);
    assert_eq!(response.key_id, key.id);
    assert_eq!(response.tenant, "", "the tenant is not shown before the secret is verified");
    assert_eq!(response.owner, "");

    // The right token still works.
    assert_reason(&server.check(&token, "courses", pb::Action::Read).await, pb::Reason::Ok);
}

#[tokio::test]
async fn garbage_token_is_a_malformed_credential_answer_not_an_error() {
    let server = TestServer::start().await;
    for garbage in ["garbage", "ks_abc_def", "", "Bearer ks_x"] {
        let response = server
            .checker()
            .check(check_request(garbage, "", "courses", pb::Action::Read))
            .await
            .expect("a denial is status OK")
            .into_inner();
        assert_reason(&response, pb::Reason::MalformedCredential);
        assert_eq!(response.key_id, "");
    }
}

#[tokio::test]
async fn key_pair_credential_of_key_id_and_last_token_part_is_accepted() {
    let server = TestServer::start().await;
    let (key, token) = server.key(ACME, &["read-only"]).await;
    let pair = |secret: String| pb::CheckRequest {
        credential: Some(pb::check_request::Credential::KeyPair(pb::KeyPair { key_id: key.id.clone(), secret })),
        tenant: String::new(),
        module: "courses".into(),
        action: pb::Action::Read.into(),
        explain: false,
        source_address: Default::default(),
    };
    let response = server.checker().check(pair(secret_part(&token))).await.expect("check").into_inner();
    assert_reason(&response, pb::Reason::Ok);
    assert_eq!(response.key_id, key.id);
    assert_eq!(response.tenant, ACME);

    // A changed secret fails the checksum: malformed, not unknown.
    let mut bad = secret_part(&token);
    bad.replace_range(0..1, if bad.starts_with('a') { "b" } else { "a" });
    let response = server.checker().check(pair(bad)).await.expect("check").into_inner();
    assert_reason(&response, pb::Reason::MalformedCredential);
}

#[tokio::test]
async fn batch_check_answers_each_item_in_request_order() {
    let server = TestServer::start().await;
    let allow = server.scope(ACME, "courses", pb::ScopeMode::Allow, read_rules(&["courses", "billing.*"])).await;
    let deny = server.scope(ACME, "no invoices", pb::ScopeMode::Deny, read_rules(&["billing.invoices"])).await;
    let (key, token) = server.key(ACME, &[&allow.id, &deny.id]).await;
    let items = [
        ("courses", pb::Action::Read, pb::Reason::Ok),
        ("billing.invoices", pb::Action::Read, pb::Reason::DeniedByScope),
        ("courses", pb::Action::Delete, pb::Reason::Ok), // the deny-mode scope grants what it does not list
        ("keyscope.keys", pb::Action::Read, pb::Reason::NotGranted),
        ("billing.refunds", pb::Action::Read, pb::Reason::Ok),
    ];
    let response = server
        .checker()
        .batch_check(pb::BatchCheckRequest {
            credential: Some(pb::batch_check_request::Credential::Token(token.clone())),
            tenant: ACME.into(),
            items: items.iter().map(|(m, a, _)| pb::CheckItem { module: (*m).into(), action: (*a).into() }).collect(),
            explain: true,
            source_address: Default::default(),
        })
        .await
        .expect("batch check")
        .into_inner();
    assert_eq!(response.results.len(), items.len());
    for (result, (module, _, reason)) in response.results.iter().zip(items) {
        assert_eq!(pb::Reason::try_from(result.reason), Ok(reason), "{module}: {result:?}");
        assert_eq!(result.key_id, key.id);
    }
    assert_eq!(response.results[1].scope_ids, vec![deny.id.clone()]);

    // A refused credential gives the same refusal for every item.
    let response = server
        .checker()
        .batch_check(pb::BatchCheckRequest {
            credential: Some(pb::batch_check_request::Credential::Token("nope".into())),
            tenant: String::new(),
            items: vec![pb::CheckItem { module: "a".into(), action: pb::Action::Read.into() }; 3],
            explain: false,
            source_address: Default::default(),
        })
        .await
        .expect("batch check")
        .into_inner();
    assert_eq!(response.results.len(), 3);
    for result in &response.results {
        assert_reason(result, pb::Reason::MalformedCredential);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. tenants

#[tokio::test]
async fn check_naming_another_tenant_answers_tenant_mismatch() {
    let server = TestServer::start().await;
    let (_, token) = server.key(ACME, &["full-access"]).await;
    let ask = |tenant: &str| check_request(&token, tenant, "courses", pb::Action::Read);
    let other = server.checker().check(ask("other")).await.expect("check").into_inner();
    assert_reason(&other, pb::Reason::TenantMismatch);
    let own = server.checker().check(ask(ACME)).await.expect("check").into_inner();
    assert_reason(&own, pb::Reason::Ok);
    assert_eq!(own.tenant, ACME);
}

// ---------------------------------------------------------------------------------------------
// 3. builtin scopes

#[tokio::test]
async fn builtin_scopes_are_listed_and_cannot_be_updated_or_deleted() {
    let server = TestServer::start().await;
    for id in ["full-access", "read-only", "admin"] {
        let update = server
            .scopes()
            .update_scope(pb::UpdateScopeRequest {
                tenant: ACME.into(),
                id: id.into(),
                version: 1,
                update_mask: mask(&["description"]),
                description: "changed".into(),
                ..Default::default()
            })
            .await;
        assert_status(update, Code::FailedPrecondition, id);
        let delete = server
            .scopes()
            .delete_scope(pb::DeleteScopeRequest { tenant: ACME.into(), id: id.into(), force: true, version: 0 })
            .await;
        assert_status(delete, Code::FailedPrecondition, id);
        let after = get_scope(&server, ACME, id).await;
        assert!(after.builtin);
        assert_ne!(after.description, "changed");
    }
    let listed = server.all_scopes(ACME).await;
    for id in ["full-access", "read-only", "admin"] {
        let scope = listed.iter().find(|s| s.id == id);
        assert!(scope.is_some(), "{id} is listed");
        let scope = scope.expect("listed");
        assert!(scope.builtin, "{id} is builtin");
        assert_eq!(scope.tenant, ACME, "a builtin is shown in the tenant asked about");
    }
}

#[tokio::test]
async fn scope_labels_are_unique_case_insensitively_including_builtins() {
    let server = TestServer::start().await;
    let create = |label: &str| pb::CreateScopeRequest {
        tenant: ACME.into(),
        label: label.into(),
        description: String::new(),
        mode: pb::ScopeMode::Allow.into(),
        rules: Some(read_rules(&["courses"])),
    };
    assert_status(server.scopes().create_scope(create("Admin")).await, Code::AlreadyExists, "Admin");
    assert_status(server.scopes().create_scope(create("READ-ONLY")).await, Code::AlreadyExists, "READ-ONLY");
    server.scopes().create_scope(create("Billing")).await.expect("first billing");
    assert_status(server.scopes().create_scope(create("bILLING")).await, Code::AlreadyExists, "bILLING");
    let stored: Vec<_> = server.all_scopes(ACME).await.into_iter().filter(|s| !s.builtin).collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].label, "Billing");
    // The same label is fine in another tenant.
    server
        .scopes()
        .create_scope(pb::CreateScopeRequest { tenant: "globex".into(), ..create("billing") })
        .await
        .expect("labels are per tenant");
}

// ---------------------------------------------------------------------------------------------
// 4. versions

#[tokio::test]
async fn update_key_with_a_stale_version_aborts_and_writes_nothing() {
    let server = TestServer::start().await;
    let (key, _) = server.key(ACME, &["read-only"]).await;
    assert_eq!(key.version, 1);
    let update = |version: u64, description: &str| pb::UpdateKeyRequest {
        tenant: ACME.into(),
        id: key.id.clone(),
        version,
        update_mask: mask(&["description", "scope_ids"]),
        description: description.into(),
        scope_ids: vec!["full-access".into()],
        ..Default::default()
    };
    let v2 = server.keys().update_key(update(1, "second")).await.expect("update").into_inner();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.description, "second");

    assert_status(server.keys().update_key(update(1, "stale")).await, Code::Aborted, "version");
    let now = get_key(&server, ACME, &key.id).await;
    assert_eq!(now.version, 2);
    assert_eq!(now.description, "second");

    assert_status(server.keys().update_key(update(0, "zero")).await, Code::InvalidArgument, "version");
    assert_eq!(get_key(&server, ACME, &key.id).await, now);
}

#[tokio::test]
async fn update_scope_with_a_stale_version_aborts_and_writes_nothing() {
    let server = TestServer::start().await;
    let scope = server.scope(ACME, "web", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
    assert_eq!(scope.version, 1);
    let update = |version: u64, label: &str| pb::UpdateScopeRequest {
        tenant: ACME.into(),
        id: scope.id.clone(),
        version,
        update_mask: mask(&["label", "rules"]),
        label: label.into(),
        rules: Some(read_rules(&["courses", "bookings"])),
        ..Default::default()
    };
    let v2 = server.scopes().update_scope(update(1, "website")).await.expect("update").into_inner();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.label, "website");

    assert_status(server.scopes().update_scope(update(1, "stale")).await, Code::Aborted, "version");
    let now = get_scope(&server, ACME, &scope.id).await;
    assert_eq!(now.version, 2);
    assert_eq!(now.label, "website");
    assert_eq!(now.rules, Some(read_rules(&["bookings", "courses"])));

    assert_status(server.scopes().update_scope(update(0, "zero")).await, Code::InvalidArgument, "version");
    assert_eq!(get_scope(&server, ACME, &scope.id).await, now);
}

#[tokio::test]
async fn disable_key_with_a_stale_version_aborts() {
    let server = TestServer::start().await;
    let (key, token) = server.key(ACME, &["read-only"]).await;
    let bumped = server
        .keys()
        .update_key(pb::UpdateKeyRequest {
            tenant: ACME.into(),
            id: key.id.clone(),
            version: 1,
            update_mask: mask(&["owner"]),
            owner: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(bumped.version, 2);
    let stale = pb::KeyStateRequest { tenant: ACME.into(), id: key.id.clone(), version: 1 };
    assert_status(server.keys().disable_key(stale).await, Code::Aborted, "version");
    let now = get_key(&server, ACME, &key.id).await;
    assert_eq!(now.state, pb::KeyState::Active as i32);
    assert_eq!(now.version, 2);
    assert_reason(&server.check(&token, "courses", pb::Action::Read).await, pb::Reason::Ok);

    let current = pb::KeyStateRequest { tenant: ACME.into(), id: key.id.clone(), version: 2 };
    let disabled = server.keys().disable_key(current).await.expect("disable at the current version").into_inner();
    assert_eq!(disabled.version, 3);
}

// ---------------------------------------------------------------------------------------------
// 5. deleting scopes in use

#[tokio::test]
async fn delete_scope_in_use_needs_force_and_then_detaches_it_from_its_keys() {
    let server = TestServer::start().await;
    let web = server.scope(ACME, "web", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
    let (both, both_token) = server.key(ACME, &[&web.id, "read-only"]).await;
    let (only, only_token) = server.key(ACME, &[&web.id]).await;

    let refused = server
        .scopes()
        .delete_scope(pb::DeleteScopeRequest { tenant: ACME.into(), id: web.id.clone(), force: false, version: 0 })
        .await;
    assert_status(refused, Code::FailedPrecondition, "2 key");
    assert_eq!(get_scope(&server, ACME, &web.id).await, web);
    assert_eq!(get_key(&server, ACME, &only.id).await.version, only.version);

    let deleted = server
        .scopes()
        .delete_scope(pb::DeleteScopeRequest { tenant: ACME.into(), id: web.id.clone(), force: true, version: 0 })
        .await
        .expect("forced delete")
        .into_inner();
    let mut detached = deleted.detached_key_ids.clone();
    detached.sort();
    let mut expected = vec![both.id.clone(), only.id.clone()];
    expected.sort();
    assert_eq!(detached, expected);

    assert_status(
        server.scopes().get_scope(pb::GetScopeRequest { tenant: ACME.into(), id: web.id.clone() }).await,
        Code::NotFound,
        &web.id,
    );
    let both_now = get_key(&server, ACME, &both.id).await;
    assert_eq!(both_now.scope_ids, vec!["read-only".to_owned()]);
    assert!(both_now.version > both.version);
    let only_now = get_key(&server, ACME, &only.id).await;
    assert!(only_now.scope_ids.is_empty());
    assert!(only_now.version > only.version);

    assert_reason(&server.check(&only_token, "courses", pb::Action::Read).await, pb::Reason::NoScope);
    assert_reason(&server.check(&both_token, "courses", pb::Action::Read).await, pb::Reason::Ok);
}

#[tokio::test]
async fn forced_delete_of_a_deny_scope_that_would_widen_a_key_is_refused() {
    let server = TestServer::start().await;
    let everything = server.scope(ACME, "everything", pb::ScopeMode::Allow, all_rules(&["*"])).await;
    let no_billing = server.scope(ACME, "no billing", pb::ScopeMode::Deny, read_rules(&["billing.*"])).await;
    let (key, token) = server.key(ACME, &[&everything.id, &no_billing.id]).await;
    assert_reason(&server.check(&token, "billing.invoices", pb::Action::Read).await, pb::Reason::DeniedByScope);

    let refused = server
        .scopes()
        .delete_scope(pb::DeleteScopeRequest {
            tenant: ACME.into(),
            id: no_billing.id.clone(),
            force: true,
            version: 0,
        })
        .await;
    let status = assert_status(refused, Code::FailedPrecondition, "widen");
    assert!(status.message().contains(&key.id), "names the key: {}", status.message());

    assert_eq!(get_scope(&server, ACME, &no_billing.id).await, no_billing);
    assert_eq!(get_key(&server, ACME, &key.id).await, key);
    assert_reason(&server.check(&token, "billing.invoices", pb::Action::Read).await, pb::Reason::DeniedByScope);
}

#[tokio::test]
async fn forced_delete_of_a_keys_only_deny_scope_leaves_it_with_no_scope() {
    let server = TestServer::start().await;
    let no_billing = server.scope(ACME, "no billing", pb::ScopeMode::Deny, read_rules(&["billing.*"])).await;
    let (key, token) = server.key(ACME, &[&no_billing.id]).await;
    assert_reason(&server.check(&token, "courses", pb::Action::Read).await, pb::Reason::Ok);

    let deleted = server
        .scopes()
        .delete_scope(pb::DeleteScopeRequest {
            tenant: ACME.into(),
            id: no_billing.id.clone(),
            force: true,
            version: 0,
        })
        .await
        .expect("forced delete")
        .into_inner();
    assert_eq!(deleted.detached_key_ids, vec![key.id.clone()]);
    assert!(get_key(&server, ACME, &key.id).await.scope_ids.is_empty());
    assert_reason(&server.check(&token, "courses", pb::Action::Read).await, pb::Reason::NoScope);
    assert_reason(&server.check(&token, "billing.invoices", pb::Action::Read).await, pb::Reason::NoScope);
}

#[tokio::test]
async fn delete_unused_scope_succeeds_without_force() {
    let server = TestServer::start().await;
    let scope = server.scope(ACME, "unused", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
    let deleted = server
        .scopes()
        .delete_scope(pb::DeleteScopeRequest { tenant: ACME.into(), id: scope.id.clone(), force: false, version: 0 })
        .await
        .expect("delete")
        .into_inner();
    assert!(deleted.detached_key_ids.is_empty());
    assert!(server.all_scopes(ACME).await.iter().all(|s| s.id != scope.id));
}

// ---------------------------------------------------------------------------------------------
// 6. clone

#[tokio::test]
async fn clone_scope_copies_mode_and_rules_under_a_new_label_and_id() {
    let server = TestServer::start().await;
    let rules = pb::Rules {
        create: vec!["bookings".into()],
        read: vec!["billing.*".into(), "courses".into()],
        update: vec![],
        delete: vec!["*".into()],
    };
    let source = server.scope(ACME, "source", pb::ScopeMode::Deny, rules.clone()).await;
    let source = server
        .scopes()
        .update_scope(pb::UpdateScopeRequest {
            tenant: ACME.into(),
            id: source.id.clone(),
            version: 1,
            update_mask: mask(&["description"]),
            description: "original text".into(),
            ..Default::default()
        })
        .await
        .expect("bump the source's version")
        .into_inner();
    assert_eq!(source.version, 2);

    let copy = server
        .scopes()
        .clone_scope(pb::CloneScopeRequest {
            tenant: ACME.into(),
            id: source.id.clone(),
            label: "copy".into(),
            description: String::new(),
        })
        .await
        .expect("clone")
        .into_inner();
    assert_ne!(copy.id, source.id);
    assert!(copy.id.starts_with("scp_"));
    assert_eq!(copy.label, "copy");
    assert_eq!(copy.mode, pb::ScopeMode::Deny as i32);
    assert_eq!(copy.rules, source.rules);
    assert_eq!(copy.description, "original text");
    assert!(!copy.builtin);
    assert_eq!(copy.version, 1);
    assert_eq!(copy.tenant, ACME);
    assert_eq!(get_scope(&server, ACME, &copy.id).await, copy);
    assert_eq!(get_scope(&server, ACME, &source.id).await, source, "the source is unchanged");
}

#[tokio::test]
async fn clone_of_a_builtin_is_an_ordinary_scope() {
    let server = TestServer::start().await;
    let builtin = get_scope(&server, ACME, "read-only").await;
    let copy = server
        .scopes()
        .clone_scope(pb::CloneScopeRequest {
            tenant: ACME.into(),
            id: "read-only".into(),
            label: "my read only".into(),
            description: "editable".into(),
        })
        .await
        .expect("clone builtin")
        .into_inner();
    assert!(!copy.builtin);
    assert_eq!(copy.version, 1);
    assert_eq!(copy.mode, builtin.mode);
    assert_eq!(copy.rules, builtin.rules);
    assert_eq!(copy.description, "editable");
    // Unlike the builtin, the copy can be changed.
    server
        .scopes()
        .update_scope(pb::UpdateScopeRequest {
            tenant: ACME.into(),
            id: copy.id.clone(),
            version: 1,
            update_mask: mask(&["rules"]),
            rules: Some(read_rules(&["courses"])),
            ..Default::default()
        })
        .await
        .expect("a clone is not locked");
}

#[tokio::test]
async fn clone_to_an_existing_label_is_already_exists() {
    let server = TestServer::start().await;
    let source = server.scope(ACME, "source", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
    server.scope(ACME, "taken", pb::ScopeMode::Allow, read_rules(&["bookings"])).await;
    let before = server.all_scopes(ACME).await;
    for label in ["TAKEN", "source", "Full-Access"] {
        let result = server
            .scopes()
            .clone_scope(pb::CloneScopeRequest {
                tenant: ACME.into(),
                id: source.id.clone(),
                label: label.into(),
                description: String::new(),
            })
            .await;
        assert_status(result, Code::AlreadyExists, label);
    }
    assert_eq!(server.all_scopes(ACME).await, before);
}

// ---------------------------------------------------------------------------------------------
// 7. pagination

#[tokio::test]
async fn list_keys_pages_through_every_key_in_id_order() {
    let server = TestServer::start().await;
    let tenant = "pager";
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(server.key(tenant, &["read-only"]).await.0.id);
    }
    created.sort();
    // Keys of other tenants never show.
    server.key("elsewhere", &["read-only"]).await;

    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .keys()
            .list_keys(pb::ListKeysRequest { tenant: tenant.into(), page_size: 3, page_token, ..Default::default() })
            .await
            .expect("list")
            .into_inner();
        sizes.push(page.keys.len());
        assert!(page.keys.iter().all(|k| k.tenant == tenant));
        seen.extend(ids_of_keys(&page.keys));
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(sizes.len() < 10, "pagination does not end");
        page_token = page.next_page_token;
    }
    assert_eq!(sizes, vec![3, 3, 1]);
    assert_eq!(seen, created, "every key once, sorted by id");
}

#[tokio::test]
async fn list_keys_filters_by_owner_scope_and_state() {
    let server = TestServer::start().await;
    let tenant = "filters";
    let web = server.scope(tenant, "web", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
    let mut alice = Vec::new();
    let mut with_web = Vec::new();
    let mut all = Vec::new();
    for i in 0..6 {
        let owner = if i % 2 == 0 { "alice" } else { "bob" };
        let scopes = if i < 2 { vec![web.id.clone(), "read-only".into()] } else { vec!["read-only".into()] };
        let (key, _) = create_key(
            &server,
            pb::CreateKeyRequest {
                tenant: tenant.into(),
                owner: owner.into(),
                scope_ids: scopes,
                ..Default::default()
            },
        )
        .await;
        if owner == "alice" {
            alice.push(key.id.clone());
        }
        if i < 2 {
            with_web.push(key.id.clone());
        }
        all.push(key.id);
    }
    for id in [&all[1], &all[4]] {
        server.keys().disable_key(state_request(tenant, id)).await.expect("disable");
    }
    let list = |owner: &str, scope_id: &str, state: pb::KeyState| pb::ListKeysRequest {
        tenant: tenant.into(),
        page_size: 2,
        page_token: String::new(),
        owner: owner.into(),
        scope_id: scope_id.into(),
        state: state.into(),
        unused_since: None,
    };
    async fn collect(server: &TestServer, mut request: pb::ListKeysRequest) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            let page = server.keys().list_keys(request.clone()).await.expect("list").into_inner();
            ids.extend(ids_of_keys(&page.keys));
            if page.next_page_token.is_empty() {
                return ids;
            }
            request.page_token = page.next_page_token;
        }
    }
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(collect(&server, list("alice", "", pb::KeyState::Unspecified)).await, sorted(alice.clone()));
    assert_eq!(collect(&server, list("", &web.id, pb::KeyState::Unspecified)).await, sorted(with_web.clone()));
    assert_eq!(
        collect(&server, list("", "read-only", pb::KeyState::Unspecified)).await,
        sorted(all.clone()),
        "builtin scope ids filter too"
    );
    assert_eq!(
        collect(&server, list("", "", pb::KeyState::Disabled)).await,
        sorted(vec![all[1].clone(), all[4].clone()])
    );
    let active: Vec<String> =
        all.iter().enumerate().filter(|(i, _)| *i != 1 && *i != 4).map(|(_, id)| id.clone()).collect();
    assert_eq!(collect(&server, list("", "", pb::KeyState::Active)).await, sorted(active));
    // Filters combine: alice's disabled keys are all[4].
    assert_eq!(collect(&server, list("alice", "", pb::KeyState::Disabled)).await, vec![all[4].clone()]);
    assert!(collect(&server, list("", "", pb::KeyState::Revoked)).await.is_empty());
    assert!(collect(&server, list("carol", "", pb::KeyState::Unspecified)).await.is_empty());
}

#[tokio::test]
async fn list_scopes_pages_across_builtins_and_stored_scopes() {
    let server = TestServer::start().await;
    let tenant = "scoped";
    let mut stored = Vec::new();
    for label in ["a", "b", "c", "d"] {
        stored.push(server.scope(tenant, label, pb::ScopeMode::Allow, read_rules(&["courses"])).await.id);
    }
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .scopes()
            .list_scopes(pb::ListScopesRequest { tenant: tenant.into(), page_size: 3, page_token })
            .await
            .expect("list")
            .into_inner();
        pages.push(page.scopes);
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(pages.len() < 10, "pagination does not end");
        page_token = page.next_page_token;
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 1]);
    let all: Vec<pb::Scope> = pages.into_iter().flatten().collect();
    let ids = ids_of_scopes(&all);
    let mut expected: Vec<String> = ["admin", "full-access", "read-only"].iter().map(|s| s.to_string()).collect();
    expected.extend(stored);
    expected.sort();
    assert_eq!(ids, expected, "every scope once, sorted by id");
    assert_eq!(all.iter().filter(|s| s.builtin).count(), 3);
    assert!(all.iter().all(|s| s.tenant == tenant));
}

#[tokio::test]
async fn tampered_page_tokens_are_invalid_argument() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        server.key(ACME, &["read-only"]).await;
    }
    let first = server
        .keys()
        .list_keys(pb::ListKeysRequest { tenant: ACME.into(), page_size: 1, ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let mut tampered = first.next_page_token.clone();
    tampered.replace_range(0..1, if tampered.starts_with('A') { "B" } else { "A" });
    for bad in [tampered.as_str(), "not a token!", "djE6", &"A".repeat(500)] {
        let keys = server
            .keys()
            .list_keys(pb::ListKeysRequest { tenant: ACME.into(), page_token: bad.into(), ..Default::default() })
            .await;
        assert_status(keys, Code::InvalidArgument, "page_token");
        let scopes = server
            .scopes()
            .list_scopes(pb::ListScopesRequest { tenant: ACME.into(), page_size: 1, page_token: bad.into() })
            .await;
        assert_status(scopes, Code::InvalidArgument, "page_token");
    }
}

// ---------------------------------------------------------------------------------------------
// 8. admin authorization

fn list_keys_in(tenant: &str) -> pb::ListKeysRequest {
    pb::ListKeysRequest { tenant: tenant.into(), ..Default::default() }
}

#[tokio::test]
async fn admin_calls_without_a_valid_token_are_unauthenticated() {
    let server = TestServer::start().await;
    let (admin, admin_token) = server.key(ACME, &["admin"]).await;
    server.keys_as(Some(&admin_token)).list_keys(list_keys_in("")).await.expect("a valid admin token works");

    assert_status(server.keys_as(None).list_keys(list_keys_in(ACME)).await, Code::Unauthenticated, "Bearer");
    assert_status(
        server.scopes_as(None).list_scopes(pb::ListScopesRequest::default()).await,
        Code::Unauthenticated,
        "",
    );
    assert_status(server.keys_as(Some("garbage")).list_keys(list_keys_in(ACME)).await, Code::Unauthenticated, "");

    // A well-formed token of a key that does not exist.
    let format = TokenFormat::new("ks").expect("prefix");
    let (_, unknown) = format.issue(&format.new_key_id().expect("random")).expect("random");
    assert_status(
        server.keys_as(Some(unknown.expose())).list_keys(list_keys_in(ACME)).await,
        Code::Unauthenticated,
        "",
    );

    // The revoked admin key's own, well-formed token.
    server.keys().revoke_key(state_request(ACME, &admin.id)).await.expect("revoke");
    let status =
        assert_status(server.keys_as(Some(&admin_token)).list_keys(list_keys_in("")).await, Code::Unauthenticated, "");
    assert!(!status.message().contains(&admin_token), "the token is never echoed");
    assert_status(
        server.scopes_as(Some(&admin_token)).list_scopes(pb::ListScopesRequest::default()).await,
        Code::Unauthenticated,
        "",
    );
}

#[tokio::test]
async fn keys_without_a_keyscope_grant_are_permission_denied() {
    let server = TestServer::start().await;
    for scope in ["read-only", "full-access"] {
        let (key, token) = server.key(ACME, &[scope]).await;
        let keys = server.keys_as(Some(&token));
        let status = assert_status(keys.clone().list_keys(list_keys_in("")).await, Code::PermissionDenied, &key.id);
        assert!(status.message().contains("keyscope.keys"), "{}", status.message());
        assert_status(
            keys.clone()
                .create_key(pb::CreateKeyRequest { scope_ids: vec!["read-only".into()], ..Default::default() })
                .await,
            Code::PermissionDenied,
            "keyscope.keys",
        );
        assert_status(
            server.scopes_as(Some(&token)).list_scopes(pb::ListScopesRequest::default()).await,
            Code::PermissionDenied,
            "keyscope.scopes",
        );
    }
    assert_eq!(server.all_keys(ACME).await.len(), 2, "nothing was created");
}

#[tokio::test]
async fn tenant_admin_acts_only_in_its_own_tenant() {
    let server = TestServer::start().await;
    let (_, token) = server.key(ACME, &["admin"]).await;
    let keys = server.keys_as(Some(&token));

    let own_default = keys
        .clone()
        .create_key(pb::CreateKeyRequest { scope_ids: vec!["read-only".into()], ..Default::default() })
        .await
        .expect("create in own tenant by default")
        .into_inner();
    assert_eq!(own_default.key.expect("key").tenant, ACME);
    let own_named = keys
        .clone()
        .create_key(pb::CreateKeyRequest {
            tenant: ACME.into(),
            scope_ids: vec!["read-only".into()],
            ..Default::default()
        })
        .await
        .expect("create in own tenant by name")
        .into_inner();
    assert_eq!(own_named.key.expect("key").tenant, ACME);
    let listed = keys.clone().list_keys(list_keys_in(ACME)).await.expect("list own").into_inner();
    assert_eq!(listed.keys.len(), 3);
    let scope = server
        .scopes_as(Some(&token))
        .create_scope(pb::CreateScopeRequest {
            tenant: String::new(),
            label: "web".into(),
            description: String::new(),
            mode: pb::ScopeMode::Allow.into(),
            rules: Some(read_rules(&["courses"])),
        })
        .await
        .expect("tenant admin creates scopes")
        .into_inner();
    assert_eq!(scope.tenant, ACME);

    assert_status(keys.clone().list_keys(list_keys_in("globex")).await, Code::PermissionDenied, "globex");
    assert_status(
        keys.clone()
            .create_key(pb::CreateKeyRequest {
                tenant: "globex".into(),
                scope_ids: vec!["read-only".into()],
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "globex",
    );
    assert_status(
        server
            .scopes_as(Some(&token))
            .list_scopes(pb::ListScopesRequest { tenant: "globex".into(), ..Default::default() })
            .await,
        Code::PermissionDenied,
        "globex",
    );
    assert_status(keys.clone().list_keys(list_keys_in("system")).await, Code::PermissionDenied, "system");
    assert!(server.all_keys("globex").await.is_empty());
}

#[tokio::test]
async fn system_admin_acts_in_any_tenant_it_names() {
    let server = TestServer::start().await;
    for tenant in ["acme", "globex", "initech"] {
        let scope = server.scope(tenant, "web", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
        assert_eq!(scope.tenant, tenant);
        let (key, token) = server.key(tenant, &[&scope.id]).await;
        assert_eq!(key.tenant, tenant);
        assert_eq!(server.all_keys(tenant).await, vec![key]);
        let answer = server.check(&token, "courses", pb::Action::Read).await;
        assert_reason(&answer, pb::Reason::Ok);
        assert_eq!(answer.tenant, tenant);
    }
    // With no tenant named, the system admin acts in its own tenant.
    let own = server.keys().list_keys(list_keys_in("")).await.expect("list").into_inner();
    assert!(own.keys.iter().all(|k| k.tenant == "system"));
    assert_eq!(own.keys.len(), 1, "just the bootstrap key");
}

#[tokio::test]
async fn read_grant_on_keyscope_keys_allows_reads_but_not_creation() {
    let server = TestServer::start().await;
    let reader_scope = server.scope(ACME, "key reader", pb::ScopeMode::Allow, read_rules(&["keyscope.keys"])).await;
    let (other, _) = server.key(ACME, &["read-only"]).await;
    let (_, token) = server.key(ACME, &[&reader_scope.id]).await;
    let keys = server.keys_as(Some(&token));

    let got = keys
        .clone()
        .get_key(pb::GetKeyRequest { tenant: String::new(), id: other.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got, other);
    let listed = keys.clone().list_keys(list_keys_in("")).await.expect("list").into_inner();
    assert_eq!(listed.keys.len(), 2);

    let before = server.all_keys(ACME).await;
    assert_status(
        keys.clone()
            .create_key(pb::CreateKeyRequest { scope_ids: vec!["read-only".into()], ..Default::default() })
            .await,
        Code::PermissionDenied,
        "create",
    );
    assert_status(keys.clone().disable_key(state_request("", &other.id)).await, Code::PermissionDenied, "update");
    assert_status(
        server.scopes_as(Some(&token)).list_scopes(pb::ListScopesRequest::default()).await,
        Code::PermissionDenied,
        "keyscope.scopes",
    );
    assert_eq!(server.all_keys(ACME).await, before);
}

#[tokio::test]
async fn key_admin_cannot_hand_out_admin_grants_it_does_not_hold() {
    let server = TestServer::start().await;
    let keys_admin_scope = server.scope(ACME, "key admin", pb::ScopeMode::Allow, all_rules(&["keyscope.keys"])).await;
    let scope_admin_scope =
        server.scope(ACME, "scope admin", pb::ScopeMode::Allow, all_rules(&["keyscope.scopes"])).await;
    let key_reader_scope = server.scope(ACME, "key reader", pb::ScopeMode::Allow, read_rules(&["keyscope.keys"])).await;
    let (_, token) = server.key(ACME, &[&keys_admin_scope.id]).await;
    let keys = server.keys_as(Some(&token));
    let scopes = server.scopes_as(Some(&token));
    let keys_before = server.all_keys(ACME).await;
    let scopes_before = server.all_scopes(ACME).await;

    for granted in
        [vec!["admin".to_owned()], vec![scope_admin_scope.id.clone()], vec!["full-access".into(), "admin".into()]]
    {
        let result =
            keys.clone().create_key(pb::CreateKeyRequest { scope_ids: granted.clone(), ..Default::default() }).await;
        // The message names the first administrative grant the caller lacks.
        let status = assert_status(result, Code::PermissionDenied, "scope_ids");
        assert!(status.message().contains("'keyscope."), "{}", status.message());
    }
    // It may not call the scope API at all: it holds nothing on keyscope.scopes.
    let create_scope = scopes
        .clone()
        .create_scope(pb::CreateScopeRequest {
            tenant: String::new(),
            label: "sneaky".into(),
            description: String::new(),
            mode: pb::ScopeMode::Allow.into(),
            rules: Some(all_rules(&["keyscope.scopes"])),
        })
        .await;
    assert_status(create_scope, Code::PermissionDenied, "keyscope.scopes");
    let update_scope = scopes
        .clone()
        .update_scope(pb::UpdateScopeRequest {
            tenant: String::new(),
            id: key_reader_scope.id.clone(),
            version: 1,
            update_mask: mask(&["rules"]),
            rules: Some(all_rules(&["keyscope.scopes"])),
            ..Default::default()
        })
        .await;
    assert_status(update_scope, Code::PermissionDenied, "keyscope.scopes");
    assert_eq!(server.all_keys(ACME).await, keys_before, "no key was created");
    assert_eq!(server.all_scopes(ACME).await, scopes_before, "no scope was created or changed");

    // What it holds itself, and ordinary grants, it may hand out.
    for granted in [vec![key_reader_scope.id.clone()], vec![keys_admin_scope.id.clone()], vec!["full-access".into()]] {
        keys.clone()
            .create_key(pb::CreateKeyRequest { scope_ids: granted, ..Default::default() })
            .await
            .expect("grants it holds or ordinary grants");
    }
    assert_eq!(server.all_keys(ACME).await.len(), keys_before.len() + 3);
}

#[tokio::test]
async fn scope_admin_cannot_create_or_widen_scopes_beyond_its_own_grants() {
    let server = TestServer::start().await;
    let rules = pb::Rules {
        create: vec!["keyscope.keys".into(), "keyscope.scopes".into()],
        read: vec!["keyscope.keys".into(), "keyscope.scopes".into()],
        update: vec!["keyscope.keys".into(), "keyscope.scopes".into()],
        delete: vec![],
    };
    let holder = server.scope(ACME, "keys and scopes", pb::ScopeMode::Allow, rules).await;
    let (_, token) = server.key(ACME, &[&holder.id]).await;
    let scopes = server.scopes_as(Some(&token));
    let create = |label: &str, rules: pb::Rules| pb::CreateScopeRequest {
        tenant: String::new(),
        label: label.into(),
        description: String::new(),
        mode: pb::ScopeMode::Allow.into(),
        rules: Some(rules),
    };
    let before = server.all_scopes(ACME).await;
    for (label, rules) in [
        ("audit", read_rules(&["keyscope.audit"])),
        ("everything admin", read_rules(&["keyscope.*"])),
        ("delete keys", pb::Rules { delete: vec!["keyscope.keys".into()], ..Default::default() }),
    ] {
        assert_status(scopes.clone().create_scope(create(label, rules)).await, Code::PermissionDenied, "keyscope");
    }
    assert_eq!(server.all_scopes(ACME).await, before, "nothing created");

    // Granting what it holds (and ordinary modules) is fine.
    let mine = scopes
        .clone()
        .create_scope(create(
            "my keys",
            pb::Rules { read: vec!["keyscope.keys".into(), "*".into()], ..Default::default() },
        ))
        .await
        .expect("a scope within its own grants")
        .into_inner();
    // Widening it to a grant the caller lacks is refused, and nothing changes.
    let widen = scopes
        .clone()
        .update_scope(pb::UpdateScopeRequest {
            tenant: String::new(),
            id: mine.id.clone(),
            version: mine.version,
            update_mask: mask(&["rules"]),
            rules: Some(all_rules(&["keyscope.*"])),
            ..Default::default()
        })
        .await;
    assert_status(widen, Code::PermissionDenied, "keyscope");
    assert_eq!(get_scope(&server, ACME, &mine.id).await, mine);
    // Switching a scope that names reserved modules to deny mode grants nothing reserved.
    let denied = scopes
        .clone()
        .update_scope(pb::UpdateScopeRequest {
            tenant: String::new(),
            id: mine.id.clone(),
            version: mine.version,
            update_mask: mask(&["mode"]),
            mode: pb::ScopeMode::Deny.into(),
            ..Default::default()
        })
        .await
        .expect("deny mode never grants reserved modules")
        .into_inner();
    assert_eq!(denied.version, mine.version + 1);
}

#[tokio::test]
async fn lifting_a_reserved_denial_from_a_scope_is_escalation() {
    let server = TestServer::start().await;
    // K holds `admin` beside a deny-mode scope that takes away creating and changing keys.
    let no_keys =
        pb::Rules { create: vec!["keyscope.keys".into()], update: vec!["keyscope.keys".into()], ..Default::default() };
    let fence = server.scope(ACME, "no key changes", pb::ScopeMode::Deny, no_keys).await;
    let (_, token) = server.key(ACME, &["admin", &fence.id]).await;
    let create = pb::CreateKeyRequest { scope_ids: vec!["read-only".into()], ..Default::default() };
    assert_status(
        server.keys_as(Some(&token)).create_key(create.clone()).await,
        Code::PermissionDenied,
        "keyscope.keys",
    );
    let scopes = server.scopes_as(Some(&token));
    let lift = |mask_path: &str, mode: pb::ScopeMode| pb::UpdateScopeRequest {
        tenant: String::new(),
        id: fence.id.clone(),
        version: fence.version,
        update_mask: mask(&[mask_path]),
        mode: mode.into(),
        rules: Some(pb::Rules::default()),
        ..Default::default()
    };
    // Emptying the deny rules or turning the scope to allow mode would hand K what it lacks.
    assert_status(
        scopes.clone().update_scope(lift("rules", pb::ScopeMode::Deny)).await,
        Code::PermissionDenied,
        "keyscope.keys",
    );
    assert_status(
        scopes.clone().update_scope(lift("mode", pb::ScopeMode::Allow)).await,
        Code::PermissionDenied,
        "keyscope.keys",
    );
    assert_eq!(get_scope(&server, ACME, &fence.id).await, fence, "nothing written");
    assert_status(
        server.keys_as(Some(&token)).create_key(create.clone()).await,
        Code::PermissionDenied,
        "keyscope.keys",
    );
    // The system admin, which holds those grants, may lift the denial.
    let by_system = pb::UpdateScopeRequest { tenant: ACME.into(), ..lift("rules", pb::ScopeMode::Deny) };
    server.scopes().update_scope(by_system).await.expect("system admin lifts it");
    server.keys_as(Some(&token)).create_key(create).await.expect("now K may create keys");
}

#[tokio::test]
async fn token_shaped_input_is_never_echoed_in_errors() {
    let server = TestServer::start().await;
    let (_, token) = server.key(ACME, &["read-only"]).await;
    let secret = secret_part(&token);
    let create = pb::CreateKeyRequest { tenant: ACME.into(), scope_ids: vec![token.clone()], ..Default::default() };
    let status = assert_status(server.keys().create_key(create).await, Code::InvalidArgument, "scope_ids[0]");
    let bad_module = server.checker().check(check_request(&token, "", &token, pb::Action::Read)).await;
    let status_module = assert_status(bad_module, Code::InvalidArgument, "module");
    let get = server.scopes().get_scope(pb::GetScopeRequest { tenant: ACME.into(), id: secret.clone() }).await;
    let status_scope = assert_status(get, Code::InvalidArgument, "id");
    for s in [status, status_module, status_scope] {
        assert!(!s.message().contains(&secret), "secret echoed in {:?}", s.message());
    }
}

// ---------------------------------------------------------------------------------------------
// 9. bad input

#[tokio::test]
async fn check_rejects_bad_fields_naming_them() {
    let server = TestServer::start().await;
    let (_, token) = server.key(ACME, &["full-access"]).await;
    let good = check_request(&token, "", "courses", pb::Action::Read);
    let cases: Vec<(pb::CheckRequest, &str)> = vec![
        (pb::CheckRequest { module: String::new(), ..good.clone() }, "module"),
        (pb::CheckRequest { module: "Bad Module".into(), ..good.clone() }, "module"),
        (pb::CheckRequest { action: pb::Action::Unspecified.into(), ..good.clone() }, "action"),
        (pb::CheckRequest { action: 42, ..good.clone() }, "action"),
        (pb::CheckRequest { tenant: "Bad_Tenant".into(), ..good.clone() }, "tenant"),
        (pb::CheckRequest { credential: None, ..good.clone() }, "credential"),
    ];
    for (request, field) in cases {
        let status = assert_status(server.checker().check(request).await, Code::InvalidArgument, field);
        assert!(!status.message().contains(&token), "the token is never echoed");
    }
    assert_reason(&server.checker().check(good).await.expect("check").into_inner(), pb::Reason::Ok);
}

#[tokio::test]
async fn batch_check_rejects_bad_items_naming_them() {
    let server = TestServer::start().await;
    let (_, token) = server.key(ACME, &["full-access"]).await;
    let item = |module: &str| pb::CheckItem { module: module.into(), action: pb::Action::Read.into() };
    let batch = |items: Vec<pb::CheckItem>| pb::BatchCheckRequest {
        credential: Some(pb::batch_check_request::Credential::Token(token.clone())),
        tenant: String::new(),
        items,
        explain: false,
        source_address: Default::default(),
    };
    assert_status(server.checker().batch_check(batch(vec![])).await, Code::InvalidArgument, "items");
    assert_status(server.checker().batch_check(batch(vec![item("a"); 129])).await, Code::ResourceExhausted, "items");
    assert_status(
        server.checker().batch_check(batch(vec![item("a"), item("Bad Module")])).await,
        Code::InvalidArgument,
        "items[1].module",
    );
    let unspecified = pb::CheckItem { module: "a".into(), action: 0 };
    assert_status(
        server.checker().batch_check(batch(vec![item("a"), item("b"), unspecified])).await,
        Code::InvalidArgument,
        "items[2].action",
    );
    assert_status(
        server.checker().batch_check(pb::BatchCheckRequest { credential: None, ..batch(vec![item("a")]) }).await,
        Code::InvalidArgument,
        "credential",
    );
    assert_status(
        server.checker().batch_check(pb::BatchCheckRequest { tenant: "-bad".into(), ..batch(vec![item("a")]) }).await,
        Code::InvalidArgument,
        "tenant",
    );
    let full = server.checker().batch_check(batch(vec![item("a"); 128])).await.expect("128 items is the limit");
    assert_eq!(full.into_inner().results.len(), 128);
}

#[tokio::test]
async fn create_key_rejects_bad_fields_and_writes_nothing() {
    let server = TestServer::start().await;
    server.key(ACME, &["read-only"]).await;
    let before = server.all_keys(ACME).await;
    let good = pb::CreateKeyRequest { tenant: ACME.into(), scope_ids: vec!["read-only".into()], ..Default::default() };
    let metadata = |entries: &[(&str, &str)]| -> HashMap<String, String> {
        entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let many_metadata: HashMap<String, String> = (0..33).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let many_scopes: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
    let cases: Vec<(pb::CreateKeyRequest, Code, &str)> = vec![
        (pb::CreateKeyRequest { scope_ids: vec![], ..good.clone() }, Code::InvalidArgument, "scope_ids"),
        (
            pb::CreateKeyRequest { scope_ids: vec!["read-only".into(), "read-only".into()], ..good.clone() },
            Code::InvalidArgument,
            "scope_ids[1]",
        ),
        (
            pb::CreateKeyRequest { scope_ids: vec!["scp_nope".into()], ..good.clone() },
            Code::InvalidArgument,
            "scope_ids[0]",
        ),
        (
            pb::CreateKeyRequest { scope_ids: vec!["bad id!".into()], ..good.clone() },
            Code::InvalidArgument,
            "scope_ids[0]",
        ),
        (pb::CreateKeyRequest { scope_ids: many_scopes, ..good.clone() }, Code::ResourceExhausted, "scope_ids"),
        (pb::CreateKeyRequest { description: "x".repeat(1025), ..good.clone() }, Code::InvalidArgument, "description"),
        (pb::CreateKeyRequest { owner: "alice\nbob".into(), ..good.clone() }, Code::InvalidArgument, "owner"),
        (pb::CreateKeyRequest { owner: "o".repeat(257), ..good.clone() }, Code::InvalidArgument, "owner"),
        (
            pb::CreateKeyRequest { metadata: metadata(&[("bad key", "v")]), ..good.clone() },
            Code::InvalidArgument,
            "metadata",
        ),
        (
            pb::CreateKeyRequest { metadata: metadata(&[("k", &"v".repeat(513))]), ..good.clone() },
            Code::InvalidArgument,
            "metadata",
        ),
        (pb::CreateKeyRequest { metadata: many_metadata, ..good.clone() }, Code::ResourceExhausted, "metadata"),
        (pb::CreateKeyRequest { tenant: "Bad Tenant".into(), ..good.clone() }, Code::InvalidArgument, "tenant"),
        (
            pb::CreateKeyRequest { expires_at: Some(Timestamp { seconds: 1, nanos: -1 }), ..good.clone() },
            Code::InvalidArgument,
            "expires_at",
        ),
    ];
    for (request, code, field) in cases {
        assert_status(server.keys().create_key(request).await, code, field);
    }
    // A scope of another tenant is unknown here.
    let foreign = server.scope("globex", "foreign", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
    assert_status(
        server.keys().create_key(pb::CreateKeyRequest { scope_ids: vec![foreign.id], ..good.clone() }).await,
        Code::InvalidArgument,
        "scope_ids[0]",
    );
    assert_eq!(server.all_keys(ACME).await, before, "no key was written");
    // The boundaries themselves are accepted.
    let at_limits = pb::CreateKeyRequest {
        description: "x".repeat(1024),
        owner: "o".repeat(256),
        metadata: (0..32).map(|i| (format!("k{i}"), "v".repeat(512))).collect(),
        ..good
    };
    server.keys().create_key(at_limits).await.expect("values at their limits are accepted");
}

#[tokio::test]
async fn key_reads_and_state_changes_reject_bad_fields() {
    let server = TestServer::start().await;
    let (key, _) = server.key(ACME, &["read-only"]).await;
    for id in ["", "short", "ks_xxxxxxxxxxxxxxxxxxxx_yyyy"] {
        assert_status(
            server.keys().get_key(pb::GetKeyRequest { tenant: ACME.into(), id: id.into() }).await,
            Code::InvalidArgument,
            "id",
        );
    }
    let list = |f: fn(&mut pb::ListKeysRequest)| {
        let mut request = list_keys_in(ACME);
        f(&mut request);
        request
    };
    assert_status(server.keys().list_keys(list(|r| r.page_size = -1)).await, Code::InvalidArgument, "page_size");
    assert_status(server.keys().list_keys(list(|r| r.state = 9)).await, Code::InvalidArgument, "state");
    assert_status(
        server.keys().list_keys(list(|r| r.page_token = "zzz".into())).await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        server.keys().list_keys(list(|r| r.scope_id = "bad id!".into())).await,
        Code::InvalidArgument,
        "scope_id",
    );
    assert_status(server.keys().list_keys(list(|r| r.tenant = "BAD".into())).await, Code::InvalidArgument, "tenant");

    for request in [state_request(ACME, ""), state_request(ACME, "bad")] {
        assert_status(server.keys().disable_key(request.clone()).await, Code::InvalidArgument, "id");
        assert_status(server.keys().enable_key(request.clone()).await, Code::InvalidArgument, "id");
        assert_status(server.keys().revoke_key(request).await, Code::InvalidArgument, "id");
    }
    // A well-formed id that does not exist is NOT_FOUND, not INVALID_ARGUMENT.
    let missing = TokenFormat::new("ks").expect("prefix").new_key_id().expect("random").to_string();
    assert_status(
        server.keys().get_key(pb::GetKeyRequest { tenant: ACME.into(), id: missing.clone() }).await,
        Code::NotFound,
        &missing,
    );
    assert_status(server.keys().revoke_key(state_request(ACME, &missing)).await, Code::NotFound, &missing);
    // A key of another tenant is not found there.
    assert_status(
        server.keys().get_key(pb::GetKeyRequest { tenant: "globex".into(), id: key.id.clone() }).await,
        Code::NotFound,
        &key.id,
    );
    assert_eq!(get_key(&server, ACME, &key.id).await, key, "nothing changed");
}

#[tokio::test]
async fn update_key_rejects_bad_masks_and_fields_and_writes_nothing() {
    let server = TestServer::start().await;
    let (key, _) = server.key(ACME, &["read-only"]).await;
    let good = pb::UpdateKeyRequest {
        tenant: ACME.into(),
        id: key.id.clone(),
        version: key.version,
        update_mask: mask(&["description"]),
        description: "new".into(),
        ..Default::default()
    };
    let cases: Vec<(pb::UpdateKeyRequest, Code, &str)> = vec![
        (pb::UpdateKeyRequest { update_mask: None, ..good.clone() }, Code::InvalidArgument, "update_mask"),
        (pb::UpdateKeyRequest { update_mask: mask(&[]), ..good.clone() }, Code::InvalidArgument, "update_mask"),
        (
            pb::UpdateKeyRequest { update_mask: mask(&["description", "state"]), ..good.clone() },
            Code::InvalidArgument,
            "update_mask.paths[1]",
        ),
        (pb::UpdateKeyRequest { id: String::new(), ..good.clone() }, Code::InvalidArgument, "id"),
        (
            pb::UpdateKeyRequest { update_mask: mask(&["scope_ids"]), scope_ids: vec![], ..good.clone() },
            Code::InvalidArgument,
            "scope_ids",
        ),
        (
            pb::UpdateKeyRequest {
                update_mask: mask(&["scope_ids"]),
                scope_ids: vec!["scp_missing".into()],
                ..good.clone()
            },
            Code::InvalidArgument,
            "scope_ids[0]",
        ),
        (
            pb::UpdateKeyRequest { update_mask: mask(&["owner"]), owner: "a\tb".into(), ..good.clone() },
            Code::InvalidArgument,
            "owner",
        ),
        (
            pb::UpdateKeyRequest {
                update_mask: mask(&["expires_at"]),
                expires_at: Some(timestamp_in(&server, -1)),
                ..good.clone()
            },
            Code::InvalidArgument,
            "expires_at",
        ),
    ];
    for (request, code, field) in cases {
        assert_status(server.keys().update_key(request).await, code, field);
    }
    assert_eq!(get_key(&server, ACME, &key.id).await, key, "nothing was written");
    let updated = server.keys().update_key(good).await.expect("the good request works").into_inner();
    assert_eq!(updated.description, "new");
    assert_eq!(updated.version, key.version + 1);
}

#[tokio::test]
async fn create_scope_rejects_bad_fields_and_writes_nothing() {
    let server = TestServer::start().await;
    let before = server.all_scopes(ACME).await;
    let good = pb::CreateScopeRequest {
        tenant: ACME.into(),
        label: "web".into(),
        description: String::new(),
        mode: pb::ScopeMode::Allow.into(),
        rules: Some(read_rules(&["courses"])),
    };
    let sixty_five: Vec<String> = (0..65).map(|i| format!("m{i}")).collect();
    let cases: Vec<(pb::CreateScopeRequest, Code, &str)> = vec![
        (pb::CreateScopeRequest { label: String::new(), ..good.clone() }, Code::InvalidArgument, "label"),
        (pb::CreateScopeRequest { label: "web!".into(), ..good.clone() }, Code::InvalidArgument, "label"),
        (pb::CreateScopeRequest { label: "l".repeat(65), ..good.clone() }, Code::InvalidArgument, "label"),
        (
            pb::CreateScopeRequest { mode: pb::ScopeMode::Unspecified.into(), ..good.clone() },
            Code::InvalidArgument,
            "mode",
        ),
        (pb::CreateScopeRequest { mode: 7, ..good.clone() }, Code::InvalidArgument, "mode"),
        (
            pb::CreateScopeRequest { rules: Some(read_rules(&["Foo*"])), ..good.clone() },
            Code::InvalidArgument,
            "rules.read[0]",
        ),
        (
            pb::CreateScopeRequest {
                rules: Some(pb::Rules { update: vec!["ok".into(), "a..b".into()], ..Default::default() }),
                ..good.clone()
            },
            Code::InvalidArgument,
            "rules.update[1]",
        ),
        (
            pb::CreateScopeRequest { rules: Some(read_rules(&["courses", "courses"])), ..good.clone() },
            Code::InvalidArgument,
            "rules.read[1]",
        ),
        (
            pb::CreateScopeRequest {
                rules: Some(pb::Rules { read: sixty_five, ..Default::default() }),
                ..good.clone()
            },
            Code::ResourceExhausted,
            "rules.read",
        ),
        (
            pb::CreateScopeRequest { description: "d".repeat(1025), ..good.clone() },
            Code::InvalidArgument,
            "description",
        ),
        (pb::CreateScopeRequest { tenant: "-acme".into(), ..good.clone() }, Code::InvalidArgument, "tenant"),
    ];
    for (request, code, field) in cases {
        assert_status(server.scopes().create_scope(request).await, code, field);
    }
    assert_eq!(server.all_scopes(ACME).await, before, "no scope was written");
    server.scopes().create_scope(good).await.expect("the good request works");
}

#[tokio::test]
async fn scope_reads_updates_deletes_and_clones_reject_bad_fields() {
    let server = TestServer::start().await;
    let scope = server.scope(ACME, "web", pb::ScopeMode::Allow, read_rules(&["courses"])).await;
    assert_status(
        server.scopes().get_scope(pb::GetScopeRequest { tenant: ACME.into(), id: "bad id!".into() }).await,
        Code::InvalidArgument,
        "id",
    );
    assert_status(
        server.scopes().get_scope(pb::GetScopeRequest { tenant: ACME.into(), id: String::new() }).await,
        Code::InvalidArgument,
        "id",
    );
    assert_status(
        server.scopes().get_scope(pb::GetScopeRequest { tenant: ACME.into(), id: "scp_missing".into() }).await,
        Code::NotFound,
        "scp_missing",
    );
    assert_status(
        server
            .scopes()
            .list_scopes(pb::ListScopesRequest { tenant: ACME.into(), page_size: 0, page_token: "@@@".into() })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        server
            .scopes()
            .list_scopes(pb::ListScopesRequest { tenant: ACME.into(), page_size: -5, page_token: String::new() })
            .await,
        Code::InvalidArgument,
        "page_size",
    );

    let update = pb::UpdateScopeRequest {
        tenant: ACME.into(),
        id: scope.id.clone(),
        version: 1,
        update_mask: mask(&["label"]),
        label: "website".into(),
        ..Default::default()
    };
    let cases: Vec<(pb::UpdateScopeRequest, &str)> = vec![
        (pb::UpdateScopeRequest { update_mask: mask(&["builtin"]), ..update.clone() }, "update_mask.paths[0]"),
        (pb::UpdateScopeRequest { update_mask: None, ..update.clone() }, "update_mask"),
        (pb::UpdateScopeRequest { label: "bad!".into(), ..update.clone() }, "label"),
        (pb::UpdateScopeRequest { update_mask: mask(&["mode"]), mode: 0, ..update.clone() }, "mode"),
        (
            pb::UpdateScopeRequest {
                update_mask: mask(&["rules"]),
                rules: Some(read_rules(&["x.*.*"])),
                ..update.clone()
            },
            "rules.read[0]",
        ),
        (pb::UpdateScopeRequest { id: String::new(), ..update.clone() }, "id"),
    ];
    for (request, field) in cases {
        assert_status(server.scopes().update_scope(request).await, Code::InvalidArgument, field);
    }
    assert_eq!(get_scope(&server, ACME, &scope.id).await, scope, "nothing was written");

    assert_status(
        server
            .scopes()
            .delete_scope(pb::DeleteScopeRequest { tenant: ACME.into(), id: String::new(), force: true, version: 0 })
            .await,
        Code::InvalidArgument,
        "id",
    );
    let before = server.all_scopes(ACME).await;
    let clone = |id: &str, label: &str| pb::CloneScopeRequest {
        tenant: ACME.into(),
        id: id.into(),
        label: label.into(),
        description: String::new(),
    };
    assert_status(server.scopes().clone_scope(clone(&scope.id, "")).await, Code::InvalidArgument, "label");
    assert_status(server.scopes().clone_scope(clone(&scope.id, "no!")).await, Code::InvalidArgument, "label");
    assert_status(server.scopes().clone_scope(clone("", "copy")).await, Code::InvalidArgument, "id");
    assert_status(server.scopes().clone_scope(clone("scp_missing", "copy")).await, Code::NotFound, "scp_missing");
    assert_eq!(server.all_scopes(ACME).await, before, "nothing was written");
}

#[tokio::test]
async fn evaluate_scopes_rejects_bad_fields_naming_them() {
    let server = TestServer::start().await;
    let inline = |id: &str, mode: pb::ScopeMode| pb::Scope {
        id: id.into(),
        mode: mode.into(),
        rules: Some(read_rules(&["courses"])),
        ..Default::default()
    };
    let good = pb::EvaluateScopesRequest {
        tenant: ACME.into(),
        scope_ids: vec!["read-only".into()],
        inline_scopes: vec![inline("web", pb::ScopeMode::Deny)],
        module: "courses".into(),
        action: pb::Action::Read.into(),
    };
    let cases: Vec<(pb::EvaluateScopesRequest, Code, &str)> = vec![
        (pb::EvaluateScopesRequest { module: String::new(), ..good.clone() }, Code::InvalidArgument, "module"),
        (pb::EvaluateScopesRequest { module: "Bad Module".into(), ..good.clone() }, Code::InvalidArgument, "module"),
        (pb::EvaluateScopesRequest { action: 0, ..good.clone() }, Code::InvalidArgument, "action"),
        (
            pb::EvaluateScopesRequest {
                inline_scopes: vec![inline("web", pb::ScopeMode::Unspecified)],
                ..good.clone()
            },
            Code::InvalidArgument,
            "inline_scopes[0].mode",
        ),
        (
            pb::EvaluateScopesRequest {
                inline_scopes: vec![inline("ok", pb::ScopeMode::Allow), inline("", pb::ScopeMode::Allow)],
                ..good.clone()
            },
            Code::InvalidArgument,
            "inline_scopes[1].id",
        ),
        (
            pb::EvaluateScopesRequest {
                inline_scopes: vec![pb::Scope {
                    rules: Some(read_rules(&["Nope"])),
                    ..inline("x", pb::ScopeMode::Allow)
                }],
                ..good.clone()
            },
            Code::InvalidArgument,
            "inline_scopes[0].rules.read[0]",
        ),
        (
            pb::EvaluateScopesRequest {
                inline_scopes: (0..17).map(|i| inline(&format!("s{i}"), pb::ScopeMode::Allow)).collect(),
                ..good.clone()
            },
            Code::ResourceExhausted,
            "inline_scopes",
        ),
        (
            pb::EvaluateScopesRequest { scope_ids: (0..33).map(|i| format!("s{i}")).collect(), ..good.clone() },
            Code::ResourceExhausted,
            "scope_ids",
        ),
        (
            pb::EvaluateScopesRequest { scope_ids: vec!["read-only".into(), "scp_unknown".into()], ..good.clone() },
            Code::InvalidArgument,
            "scope_ids[1]",
        ),
        (
            pb::EvaluateScopesRequest { scope_ids: vec!["bad id!".into()], ..good.clone() },
            Code::InvalidArgument,
            "scope_ids[0]",
        ),
    ];
    for (request, code, field) in cases {
        assert_status(server.scopes().evaluate_scopes(request).await, code, field);
    }
    let answer = server.scopes().evaluate_scopes(good).await.expect("the good request works").into_inner();
    assert_reason(&answer, pb::Reason::DeniedByScope);
    assert_eq!(answer.scope_ids, vec!["web".to_owned()]);
}

#[tokio::test]
async fn oversize_request_is_resource_exhausted_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let before = server.all_keys(ACME).await;
    let huge = pb::CreateKeyRequest {
        tenant: ACME.into(),
        description: "x".repeat(300 * 1024),
        scope_ids: vec!["read-only".into()],
        ..Default::default()
    };
    assert_status(server.keys().create_key(huge).await, Code::ResourceExhausted, "");
    let huge_check = check_request(&"t".repeat(300 * 1024), "", "courses", pb::Action::Read);
    assert_status(server.checker().check(huge_check).await, Code::ResourceExhausted, "");

    assert_eq!(server.all_keys(ACME).await, before, "nothing was written");
    let (_, token) = server.key(ACME, &["read-only"]).await;
    assert_reason(&server.check(&token, "courses", pb::Action::Read).await, pb::Reason::Ok);
}
