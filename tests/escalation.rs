//! Regression tests, through the real gRPC server, for the ways admin calls added with owners
//! and members used to escalate or widen access. Each is refused now, names who would gain what,
//! and changes nothing. The last two act through the server's core with a caller authorized
//! before its own access was cut, as a call racing that cut would.

#![allow(clippy::panic)] // tests fail by panicking

mod common;

use common::{TestServer, all_rules, assert_status};
use keyscope::{
    domain::{Action, Module},
    grpc::pb,
    service::{Caller, Clock, NewKey, ServiceError},
};
use tonic::Code;

const ACME: &str = "acme";

/// A tenant admin key held to its owner `alice`, who may administer keys and principals only;
/// the role `ops` is bound to the builtin `admin` scope (every reserved module). Returns the
/// server and the key's token.
async fn bounded_admin() -> (TestServer, String) {
    let server = TestServer::start().await;
    let keys_and_principals = server
        .scope(ACME, "keys and principals", pb::ScopeMode::Allow, all_rules(&["keyscope.keys", "keyscope.principals"]))
        .await;
    server.bind(ACME, &keys_and_principals.id, &["alice"], &[]).await;
    server.bind(ACME, "admin", &[], &["ops"]).await;
    server.principal(ACME, "alice", &[]).await;
    let (_, token) = server.owned_key(ACME, "alice", &["admin"]).await;
    // Held to its owner: scopes administration is out of its reach.
    let answer = server.check(&token, "keyscope.scopes", pb::Action::Read).await;
    assert_eq!(answer.reason, pb::Reason::OwnerDenied as i32, "{answer:?}");
    (server, token)
}

#[tokio::test]
async fn a_key_cannot_give_its_own_owner_an_admin_role() {
    let (server, token) = bounded_admin().await;
    let mut principals = server.principals_as(Some(&token));
    let alice = principals
        .get_principal(pb::GetPrincipalRequest { tenant: ACME.into(), subject: "alice".into() })
        .await
        .expect("get")
        .into_inner();
    let refused = principals
        .set_principal_roles(pb::SetPrincipalRolesRequest {
            tenant: ACME.into(),
            subject: "alice".into(),
            roles: vec!["ops".into()],
            version: alice.version,
        })
        .await;
    let status = assert_status(refused, Code::PermissionDenied, "which the calling key does not hold");
    assert!(status.message().contains("keyscope."), "{}", status.message());
    // UpsertPrincipal without a version replaces a registered principal only with `update`, and
    // is held to the same rule.
    let refused = principals
        .upsert_principal(pb::UpsertPrincipalRequest {
            tenant: ACME.into(),
            subject: "alice".into(),
            roles: vec!["ops".into()],
            ..Default::default()
        })
        .await;
    assert_status(refused, Code::PermissionDenied, "which the calling key does not hold");
    let answer = server.check(&token, "keyscope.scopes", pb::Action::Read).await;
    assert_eq!(answer.reason, pb::Reason::OwnerDenied as i32, "nothing changed: {answer:?}");
}

#[tokio::test]
async fn replacing_a_registered_principal_needs_update() {
    let server = TestServer::start().await;
    let create_only = server
        .scope(
            ACME,
            "principal creator",
            pb::ScopeMode::Allow,
            pb::Rules { create: vec!["keyscope.principals".into()], ..Default::default() },
        )
        .await;
    let (_, token) = server.key(ACME, &[&create_only.id]).await;
    server.principal(ACME, "bob", &["dev"]).await;
    let replace = |subject: &str| pb::UpsertPrincipalRequest {
        tenant: ACME.into(),
        subject: subject.into(),
        disabled: true,
        ..Default::default()
    };
    let refused = server.principals_as(Some(&token)).upsert_principal(replace("bob")).await;
    assert_status(refused, Code::PermissionDenied, "needs update on `keyscope.principals`");
    // Registering a new one is a creation.
    server.principals_as(Some(&token)).upsert_principal(replace("carol")).await.expect("register");
}

#[tokio::test]
async fn enabling_or_registering_again_gives_no_grant_the_caller_lacks() {
    let (server, token) = bounded_admin().await;
    // bob's key holds every reserved module through bob's role.
    server.principal(ACME, "bob", &["ops"]).await;
    let (_, bobs) = server.owned_key(ACME, "bob", &["admin"]).await;
    let state = pb::PrincipalStateRequest { tenant: ACME.into(), subject: "bob".into() };
    server.principals().disable_principal(state.clone()).await.expect("system disables bob");
    let refused = server.principals_as(Some(&token)).enable_principal(state.clone()).await;
    assert_status(refused, Code::PermissionDenied, "which the calling key does not hold");
    let answer = server.check(&bobs, "keyscope.keys", pb::Action::Read).await;
    assert_eq!(answer.reason, pb::Reason::OwnerDisabled as i32, "{answer:?}");

    // Deleted, then registered again by the bounded key: refused too.
    server.principals().enable_principal(state).await.expect("system enables bob");
    server
        .principals()
        .delete_principal(pb::DeletePrincipalRequest { tenant: ACME.into(), subject: "bob".into(), version: 0 })
        .await
        .expect("system deletes bob");
    let again = pb::UpsertPrincipalRequest {
        tenant: ACME.into(),
        subject: "bob".into(),
        roles: vec!["ops".into()],
        ..Default::default()
    };
    let refused = server.principals_as(Some(&token)).upsert_principal(again).await;
    assert_status(refused, Code::PermissionDenied, "which the calling key does not hold");
    let answer = server.check(&bobs, "keyscope.keys", pb::Action::Read).await;
    assert_eq!(answer.reason, pb::Reason::OwnerDenied as i32, "{answer:?}");
}

#[tokio::test]
async fn a_key_cannot_unbind_a_denial_from_its_own_owner() {
    let server = TestServer::start().await;
    let no_keys = server.scope(ACME, "no key admin", pb::ScopeMode::Deny, all_rules(&["keyscope.keys"])).await;
    server.bind(ACME, "admin", &["alice"], &[]).await;
    server.bind(ACME, &no_keys.id, &["alice"], &[]).await;
    server.principal(ACME, "alice", &[]).await;
    let (_, token) = server.owned_key(ACME, "alice", &["admin"]).await;
    let answer = server.check(&token, "keyscope.keys", pb::Action::Update).await;
    assert_eq!(answer.reason, pb::Reason::OwnerDenied as i32, "{answer:?}");

    let members = server
        .scopes_as(Some(&token))
        .get_scope_members(pb::GetScopeMembersRequest { tenant: ACME.into(), scope_id: no_keys.id.clone() })
        .await
        .expect("read members")
        .into_inner();
    let refused = server
        .scopes_as(Some(&token))
        .set_scope_members(pb::SetScopeMembersRequest {
            tenant: ACME.into(),
            scope_id: no_keys.id.clone(),
            subjects: Vec::new(),
            roles: Vec::new(),
            version: members.version,
        })
        .await;
    let status = assert_status(refused, Code::PermissionDenied, "on 'keyscope.keys'");
    assert!(status.message().contains("which the calling key does not hold"), "{}", status.message());
    let answer = server.check(&token, "keyscope.keys", pb::Action::Update).await;
    assert_eq!(answer.reason, pb::Reason::OwnerDenied as i32, "still denied: {answer:?}");
    // The system admin, which holds keyscope.keys, may lift it.
    server.bind(ACME, &no_keys.id, &[], &[]).await;
    let answer = server.check(&token, "keyscope.keys", pb::Action::Update).await;
    assert_eq!(answer.reason, pb::Reason::Ok as i32, "{answer:?}");
}

#[tokio::test]
async fn a_forced_delete_of_a_bound_deny_scope_never_widens() {
    let server = TestServer::start().await;
    let no_billing = server.scope(ACME, "no billing", pb::ScopeMode::Deny, all_rules(&["billing"])).await;
    server.bind(ACME, "full-access", &["alice"], &[]).await;
    server.bind(ACME, &no_billing.id, &["alice"], &[]).await;
    server.principal(ACME, "alice", &[]).await;
    let (_, token) = server.owned_key(ACME, "alice", &["full-access"]).await;
    let answer = server.check(&token, "billing", pb::Action::Read).await;
    assert_eq!(answer.reason, pb::Reason::OwnerDenied as i32, "{answer:?}");

    let delete = pb::DeleteScopeRequest { tenant: ACME.into(), id: no_billing.id.clone(), force: true, version: 0 };
    let refused = server.scopes().delete_scope(delete).await;
    let status = assert_status(refused, Code::FailedPrecondition, "would widen the access of");
    assert!(status.message().contains("'billing'"), "names what would be gained: {}", status.message());
    // Nothing changed: the key and alice's bearer checks are still denied billing.
    let answer = server.check(&token, "billing", pb::Action::Read).await;
    assert_eq!(answer.reason, pb::Reason::OwnerDenied as i32, "{answer:?}");
    let bearer = server.try_check_principal(ACME, "alice", &[], "billing", pb::Action::Read).await.expect("check");
    assert_eq!(bearer.reason, pb::Reason::DeniedByScope as i32, "{bearer:?}");
    // Once alice no longer holds it, the delete goes through.
    server.bind(ACME, &no_billing.id, &[], &[]).await;
    let delete = pb::DeleteScopeRequest { tenant: ACME.into(), id: no_billing.id, force: true, version: 0 };
    server.scopes().delete_scope(delete).await.expect("delete an unbound scope");
}

#[tokio::test]
async fn deleting_a_principal_never_widens_its_bearer_checks() {
    let server = TestServer::start().await;
    server.bind(ACME, "read-only", &["dave"], &[]).await;
    server.principal(ACME, "dave", &[]).await;
    let state = pb::PrincipalStateRequest { tenant: ACME.into(), subject: "dave".into() };
    server.principals().disable_principal(state).await.expect("disable");
    // A deleted principal is denied everything until registered again, as a disabled one is:
    // deleting it can never give its subject back what its bindings grant.
    server
        .principals()
        .delete_principal(pb::DeletePrincipalRequest { tenant: ACME.into(), subject: "dave".into(), version: 0 })
        .await
        .expect("delete");
    let bearer = server.try_check_principal(ACME, "dave", &[], "courses", pb::Action::Read).await.expect("check");
    assert_eq!(bearer.reason, pb::Reason::PrincipalDisabled as i32, "{bearer:?}");
    assert!(bearer.message.contains("was deleted"), "{bearer:?}");
    // Registered again, its bindings apply.
    server.principal(ACME, "dave", &[]).await;
    let bearer = server.try_check_principal(ACME, "dave", &[], "courses", pb::Action::Read).await.expect("check");
    assert_eq!(bearer.reason, pb::Reason::Ok as i32, "{bearer:?}");
}

#[tokio::test]
async fn an_admin_key_is_unauthenticated_by_its_state_and_refused_by_its_owner() {
    let (server, token) = bounded_admin().await;
    let list = || pb::ListKeysRequest { tenant: ACME.into(), ..Default::default() };
    server.keys_as(Some(&token)).list_keys(list()).await.expect("its owner may administer keys");
    // The owner decides after the key's scopes: disabled or deleted, the key is refused.
    let alice = || pb::PrincipalStateRequest { tenant: ACME.into(), subject: "alice".into() };
    server.principals().disable_principal(alice()).await.expect("disable alice");
    assert_status(server.keys_as(Some(&token)).list_keys(list()).await, Code::PermissionDenied, "keyscope.keys");
    server.principals().enable_principal(alice()).await.expect("enable alice");
    server.keys_as(Some(&token)).list_keys(list()).await.expect("enabled again");
    let delete = pb::DeletePrincipalRequest { tenant: ACME.into(), subject: "alice".into(), version: 0 };
    server.principals().delete_principal(delete).await.expect("delete alice");
    assert_status(server.keys_as(Some(&token)).list_keys(list()).await, Code::PermissionDenied, "keyscope.keys");

    // A key that is not in good standing is no admin credential at all, whatever its scopes.
    let (disabled, disabled_token) = server.key(ACME, &["admin"]).await;
    let state = pb::KeyStateRequest { tenant: ACME.into(), id: disabled.id, version: 0 };
    server.keys().disable_key(state).await.expect("disable");
    let refused = server.keys_as(Some(&disabled_token)).list_keys(list()).await;
    let status = assert_status(refused, Code::Unauthenticated, "");
    assert!(!status.message().contains(&disabled_token), "the token is never echoed");
    let expiring = pb::CreateKeyRequest {
        tenant: ACME.into(),
        scope_ids: vec!["admin".into()],
        expires_at: Some(prost_types::Timestamp::from(server.clock.now() + std::time::Duration::from_secs(60))),
        ..Default::default()
    };
    let expiring_token = server.keys().create_key(expiring).await.expect("create").into_inner().token;
    server.keys_as(Some(&expiring_token)).list_keys(list()).await.expect("not yet expired");
    server.advance(std::time::Duration::from_secs(61));
    assert_status(server.keys_as(Some(&expiring_token)).list_keys(list()).await, Code::Unauthenticated, "");
}

/// `token`'s key authorized to create keys in acme, as an admin call is before it acts.
async fn authorized(server: &TestServer, token: &str) -> Caller {
    server.core.authorize(Some(token), ACME, &Module::keys(), Action::Create).await.expect("authorized")
}

/// A key holding `scopes`, made with `caller` straight through the service core.
async fn create_key_as(server: &TestServer, caller: &Caller, scopes: &[&str]) -> Result<(), ServiceError> {
    let scope_ids = scopes.iter().map(|s| s.parse().expect("scope id")).collect();
    server.core.create_key(caller, NewKey { scope_ids, ..NewKey::default() }).await.map(drop)
}

/// A key holding `scopes`, made with the stale `caller`, is refused with `PERMISSION_DENIED`
/// saying `why`, and no key is made.
async fn assert_refused(server: &TestServer, caller: &Caller, scopes: &[&str], why: &str) {
    let keys_before = server.all_keys(ACME).await.len();
    let refused = create_key_as(server, caller, scopes).await;
    assert!(matches!(&refused, Err(ServiceError::PermissionDenied(m)) if m.contains(why)), "{refused:?}");
    assert_eq!(server.all_keys(ACME).await.len(), keys_before, "nothing made");
}

#[tokio::test]
async fn a_caller_whose_scope_was_narrowed_after_it_was_authorized_is_refused() {
    let server = TestServer::start().await;
    let key_admin =
        server.scope(ACME, "key admin", pb::ScopeMode::Allow, all_rules(&["keyscope.keys", "courses"])).await;
    let (_, token) = server.key(ACME, &[&key_admin.id]).await;
    let stale = authorized(&server, &token).await;
    // Someone else narrows its scope between the authorization and the change.
    server.set_rules(ACME, &key_admin, all_rules(&["courses"])).await;
    assert_refused(&server, &stale, &["read-only"], "no longer allowed create on `keyscope.keys`").await;
}

#[tokio::test]
async fn a_caller_whose_owner_lost_a_role_after_it_was_authorized_cannot_hand_out_what_the_role_gave() {
    let server = TestServer::start().await;
    let keys_only = server.scope(ACME, "keys only", pb::ScopeMode::Allow, all_rules(&["keyscope.keys"])).await;
    server.bind(ACME, &keys_only.id, &["alice"], &[]).await;
    server.bind(ACME, "admin", &[], &["ops"]).await;
    server.principal(ACME, "alice", &["ops"]).await;
    let (_, token) = server.owned_key(ACME, "alice", &["admin"]).await;
    let stale = authorized(&server, &token).await;
    // Someone else takes `ops` from alice: her key may still administer keys, nothing else.
    server.principal(ACME, "alice", &[]).await;
    assert_refused(&server, &stale, &["admin"], "which the calling key does not hold").await;
    // What it still holds, it may still hand out.
    create_key_as(&server, &stale, &[&keys_only.id]).await.expect("a key on what the caller holds");
}

#[tokio::test]
async fn a_caller_cut_to_creating_principals_after_it_was_authorized_cannot_replace_one() {
    let server = TestServer::start().await;
    let principal_admin =
        server.scope(ACME, "principal admin", pb::ScopeMode::Allow, all_rules(&["keyscope.principals"])).await;
    let (_, token) = server.key(ACME, &[&principal_admin.id]).await;
    server.principal(ACME, "bob", &["dev"]).await;
    let stale =
        server.core.authorize(Some(&token), ACME, &Module::principals(), Action::Create).await.expect("authorized");
    // Someone else narrows its scope to registering new principals only.
    let create_only = pb::Rules { create: vec!["keyscope.principals".into()], ..Default::default() };
    server.set_rules(ACME, &principal_admin, create_only).await;
    let bob = "bob".parse().expect("subject");
    let refused = server.core.upsert_principal(&stale, bob, Vec::new(), true, None).await;
    assert!(
        matches!(&refused, Err(ServiceError::PermissionDenied(m)) if m.contains("update on `keyscope.principals`")),
        "{refused:?}"
    );
    let get = pb::GetPrincipalRequest { tenant: ACME.into(), subject: "bob".into() };
    let bob = server.principals().get_principal(get).await.expect("get").into_inner();
    assert_eq!(bob.roles, ["dev"], "nothing changed");
}

#[tokio::test]
async fn a_caller_whose_owner_was_deleted_on_another_replica_is_not_judged_unbounded() {
    use std::sync::Arc;

    use common::PEPPER;
    use keyscope::{
        cache::{CacheSettings, CachedStore},
        domain::{Pepper, TokenFormat},
        service::{Builtins, Keyscope},
        store::MemoryStore,
    };

    // Replica B answers through its cache; replica A writes to the same store, and its change
    // has not reached B's cache yet (the change feed lags, as it may between two replicas).
    let shared = Arc::new(MemoryStore::new());
    let cached = CachedStore::new(shared.clone(), CacheSettings::default());
    let server = TestServer::start_with(Arc::new(cached), &[]).await;
    let replica_a = Keyscope::new(
        shared,
        Builtins::new(&[]).expect("builtins"),
        TokenFormat::new("ks").expect("prefix"),
        Pepper::new(PEPPER).expect("pepper"),
    );
    let keys_only = server.scope(ACME, "keys only", pb::ScopeMode::Allow, all_rules(&["keyscope.keys"])).await;
    server.bind(ACME, &keys_only.id, &["alice"], &[]).await;
    server.principal(ACME, "alice", &[]).await;
    // Alice's key holds every reserved grant, held to administering keys by her ceiling.
    let (_, token) = server.owned_key(ACME, "alice", &["admin"]).await;
    let stale = authorized(&server, &token).await;
    // Alice is deleted through replica A: her key is denied everything from now on.
    let admin = replica_a
        .authorize(Some(&server.admin_token), ACME, &Module::principals(), Action::Delete)
        .await
        .expect("admin on replica A");
    let alice = "alice".parse().expect("subject");
    replica_a.delete_principal(&admin, &alice, None).await.expect("alice deleted on replica A");
    // On B, the key is judged as it is now: its owner is gone, so it holds nothing, and
    // certainly not every reserved grant its ceiling kept from it.
    assert_refused(&server, &stale, &["admin"], "no longer allowed create on `keyscope.keys`").await;
}
