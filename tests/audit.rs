//! The audit log over real sockets: one event per admin call with its actor, operation,
//! target, changed fields and request id; forced deletes name the keys they touched; no
//! secret in any event; pagination and filters; tenant isolation and authorization on
//! `keyscope.audit`; events kept on Redis across a restart.

// The shared harness panics on a broken test setup, which is what a test harness should do.
#[allow(clippy::panic)]
mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::{collections::HashMap, time::Duration};

use common::{TestServer, all_rules, assert_status, mask, read_rules};
use keyscope::{domain::TokenFormat, grpc::pb, service::Clock};
use prost_types::Timestamp;
use tonic::{Code, Request};

const ACME: &str = "acme";

/// A request carrying `x-request-id`.
fn with_id<T>(message: T, id: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("x-request-id", id.parse().expect("ascii request id"));
    request
}

fn key_id_of(token: &str) -> String {
    TokenFormat::new("ks").expect("prefix").parse(token).expect("token").key_id.to_string()
}

/// Every event of `tenant` the token may read, newest first, following page tokens.
async fn all_events(server: &TestServer, token: &str, request: pb::ListAuditEventsRequest) -> Vec<pb::AuditEvent> {
    let mut client = server.audit_as(Some(token));
    let mut out = Vec::new();
    let mut request = request;
    loop {
        let page = client.list_audit_events(request.clone()).await.expect("list audit").into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return out;
        }
        request.page_token = page.next_page_token;
    }
}

fn by_request(events: &[pb::AuditEvent]) -> HashMap<String, pb::AuditEvent> {
    events.iter().map(|e| (e.request_id.clone(), e.clone())).collect()
}

#[track_caller]
fn assert_event(
    events: &HashMap<String, pb::AuditEvent>,
    request_id: &str,
    actor: &str,
    operation: pb::AuditOperation,
    target: (&str, &str),
    changed: &[&str],
) -> pb::AuditEvent {
    let event = events.get(request_id).expect("an event for the request id");
    assert_eq!(event.actor_key_id, actor, "{event:?}");
    assert_eq!(pb::AuditOperation::try_from(event.operation), Ok(operation), "{event:?}");
    assert_eq!((event.target_type.as_str(), event.target_id.as_str()), target, "{event:?}");
    assert_eq!(event.changed_fields, changed, "{event:?}");
    assert!(event.time.is_some(), "{event:?}");
    event.clone()
}

fn state_request(id: &str, version: u64) -> pb::KeyStateRequest {
    pb::KeyStateRequest { tenant: String::new(), id: id.into(), version }
}

#[tokio::test]
async fn every_admin_call_records_one_event_and_no_secret() {
    let server = TestServer::start().await;
    let system_admin = key_id_of(&server.admin_token);
    let (admin_key, admin) = server.key(ACME, &["admin"]).await;
    let mut tokens = vec![server.admin_token.clone(), admin.clone()];
    let mut scopes = server.scopes_as(Some(&admin));
    let mut keys = server.keys_as(Some(&admin));

    let create = pb::CreateScopeRequest {
        tenant: String::new(),
        label: "website".into(),
        description: String::new(),
        mode: pb::ScopeMode::Allow.into(),
        rules: Some(read_rules(&["courses"])),
    };
    let website = scopes.create_scope(with_id(create, "create-scope")).await.expect("create").into_inner();
    let update = pb::UpdateScopeRequest {
        tenant: String::new(),
        id: website.id.clone(),
        version: website.version,
        update_mask: mask(&["description", "rules"]),
        label: String::new(),
        description: "public site".into(),
        mode: 0,
        rules: Some(all_rules(&["courses"])),
    };
    scopes.update_scope(with_id(update, "update-scope")).await.expect("update scope");
    let clone = pb::CloneScopeRequest {
        tenant: String::new(),
        id: website.id.clone(),
        label: "website-copy".into(),
        description: String::new(),
    };
    let copy = scopes.clone_scope(with_id(clone, "clone-scope")).await.expect("clone").into_inner();

    let create = pb::CreateKeyRequest {
        tenant: String::new(),
        description: "site key".into(),
        owner: "web".into(),
        scope_ids: vec![website.id.clone()],
        expires_at: None,
        metadata: HashMap::new(),
        allowed_cidrs: Default::default(),
        rate_limit: Default::default(),
    };
    let created = keys.create_key(with_id(create, "create-key")).await.expect("create key").into_inner();
    tokens.push(created.token.clone());
    let key = created.key.expect("key");
    let update = pb::UpdateKeyRequest {
        tenant: String::new(),
        id: key.id.clone(),
        version: key.version,
        update_mask: mask(&["description", "owner", "scope_ids"]),
        description: "renamed".into(),
        owner: "web".into(),
        scope_ids: vec![website.id.clone(), copy.id.clone()],
        expires_at: None,
        metadata: HashMap::new(),
        allowed_cidrs: Default::default(),
        rate_limit: Default::default(),
    };
    let key = keys.update_key(with_id(update, "update-key")).await.expect("update key").into_inner();
    let key = keys.disable_key(with_id(state_request(&key.id, 0), "disable")).await.expect("disable").into_inner();
    keys.disable_key(with_id(state_request(&key.id, 0), "disable-again")).await.expect("no-op disable");
    keys.enable_key(with_id(state_request(&key.id, 0), "enable")).await.expect("enable");
    keys.revoke_key(with_id(state_request(&key.id, 0), "revoke")).await.expect("revoke");
    let refused = keys.enable_key(with_id(state_request(&key.id, 0), "refused")).await;
    assert_status(refused, Code::FailedPrecondition, "revoked");

    let (holder, holder_token) = server.key(ACME, &[&copy.id]).await;
    tokens.push(holder_token);
    let delete = pb::DeleteScopeRequest { tenant: String::new(), id: copy.id.clone(), force: false, version: 0 };
    let refused = scopes.delete_scope(with_id(delete.clone(), "refused-delete")).await;
    assert_status(refused, Code::FailedPrecondition, "used by");
    let forced = pb::DeleteScopeRequest { force: true, ..delete };
    scopes.delete_scope(with_id(forced, "delete-scope")).await.expect("forced delete");
    // A request id that is not sane is replaced by one keyscope makes up.
    let plain = pb::CreateScopeRequest {
        tenant: String::new(),
        label: "plain".into(),
        description: String::new(),
        mode: pb::ScopeMode::Deny.into(),
        rules: None,
    };
    let plain = scopes.create_scope(with_id(plain, "has a space")).await.expect("create").into_inner();

    let events = all_events(&server, &admin, pb::ListAuditEventsRequest::default()).await;
    assert!(events.iter().all(|e| e.tenant == ACME), "{events:?}");
    let found = by_request(&events);
    for absent in ["disable-again", "refused", "refused-delete", "has a space"] {
        assert!(!found.contains_key(absent), "`{absent}` recorded an event");
    }
    let actor = admin_key.id.as_str();
    let e = assert_event(
        &found,
        "create-scope",
        actor,
        pb::AuditOperation::CreateScope,
        ("scope", &website.id),
        &["label", "mode", "rules"],
    );
    assert_eq!(e.details.get("label").map(String::as_str), Some("website"));
    assert_event(
        &found,
        "update-scope",
        actor,
        pb::AuditOperation::UpdateScope,
        ("scope", &website.id),
        &["description", "rules"],
    );
    let e = assert_event(
        &found,
        "clone-scope",
        actor,
        pb::AuditOperation::CloneScope,
        ("scope", &copy.id),
        &["label", "description", "mode", "rules"],
    );
    assert_eq!(e.details.get("source_id"), Some(&website.id));
    let e = assert_event(
        &found,
        "create-key",
        actor,
        pb::AuditOperation::CreateKey,
        ("key", &key.id),
        &["description", "owner", "scope_ids"],
    );
    assert_eq!(e.details.get("scope_ids"), Some(&website.id));
    assert_eq!(e.details.get("state").map(String::as_str), Some("active"));
    // The owner was sent unchanged, so only description and scopes changed.
    let e = assert_event(
        &found,
        "update-key",
        actor,
        pb::AuditOperation::UpdateKey,
        ("key", &key.id),
        &["description", "scope_ids"],
    );
    assert_eq!(e.details.get("scope_ids"), Some(&format!("{},{}", website.id, copy.id)));
    let e = assert_event(&found, "disable", actor, pb::AuditOperation::DisableKey, ("key", &key.id), &["state"]);
    assert_eq!(e.details.get("state").map(String::as_str), Some("disabled"));
    assert_eq!(e.details.get("previous_state").map(String::as_str), Some("active"));
    assert_event(&found, "enable", actor, pb::AuditOperation::EnableKey, ("key", &key.id), &["state"]);
    let e = assert_event(&found, "revoke", actor, pb::AuditOperation::RevokeKey, ("key", &key.id), &["state"]);
    assert_eq!(e.details.get("state").map(String::as_str), Some("revoked"));
    let e = assert_event(&found, "delete-scope", actor, pb::AuditOperation::DeleteScope, ("scope", &copy.id), &[]);
    assert_eq!(e.details.get("force").map(String::as_str), Some("true"));
    assert_eq!(e.details.get("detached_keys").map(String::as_str), Some("2"));
    let mut detached: Vec<&str> = e.details["detached_key_ids"].split(',').collect();
    detached.sort_unstable();
    let mut expected = vec![key.id.as_str(), holder.id.as_str()];
    expected.sort_unstable();
    assert_eq!(detached, expected, "a forced delete names the keys it was removed from");
    let made_up = events.iter().find(|e| e.target_id == plain.id).expect("plain scope's event");
    assert!(made_up.request_id.starts_with("req_") && made_up.request_id.len() > 4, "{made_up:?}");
    // The system admin made the tenant admin key and the holder.
    let by_system: Vec<&pb::AuditEvent> = events.iter().filter(|e| e.actor_key_id == system_admin).collect();
    let targets: Vec<&str> = by_system.iter().map(|e| e.target_id.as_str()).collect();
    assert_eq!(targets, [holder.id.as_str(), admin_key.id.as_str()], "newest first");
    assert_eq!(events.len(), 12, "one event per change: {events:?}");
    let seconds = |e: &pb::AuditEvent| e.time.as_ref().map(|t| (t.seconds, t.nanos));
    assert!(events.windows(2).all(|w| seconds(&w[0]) >= seconds(&w[1])), "newest first");

    // The bootstrap key was made by keyscope itself, in tenant `system`.
    let system = all_events(
        &server,
        &server.admin_token,
        pb::ListAuditEventsRequest { tenant: "system".into(), ..Default::default() },
    )
    .await;
    assert_eq!(system.len(), 1, "{system:?}");
    assert_eq!(system[0].actor_key_id, "keyscope");
    assert_eq!(system[0].target_id, system_admin);
    assert_eq!(pb::AuditOperation::try_from(system[0].operation), Ok(pb::AuditOperation::CreateKey));

    // No token, secret or secret hash anywhere in the events.
    let dump = format!("{events:?}{system:?}");
    for token in &tokens {
        let id = key_id_of(token);
        let secret = token.rsplit('_').next().expect("secret part");
        assert!(!dump.contains(token.as_str()) && !dump.contains(secret), "a secret of key {id} is in the audit log");
        let stored = server
            .store
            .get_key(&key_tenant(&server, &id), &id.parse().expect("id"))
            .await
            .expect("get")
            .expect("present");
        let hash = stored.secret_hash.as_bytes();
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(hash);
        assert!(!dump.contains(&hex) && !dump.contains(&b64), "the secret hash of key {id} is in the audit log");
    }
    server.stop().await;
}

fn key_tenant(server: &TestServer, id: &str) -> keyscope::domain::Tenant {
    let system = key_id_of(&server.admin_token);
    if id == system { "system" } else { ACME }.parse().expect("tenant")
}

#[tokio::test]
async fn events_page_newest_first_and_filter_by_target_actor_and_time() {
    let server = TestServer::start().await;
    let (_, admin) = server.key(ACME, &["admin"]).await;
    let admin_id = key_id_of(&admin);
    let start = server.clock.now();
    let mut labels = Vec::new();
    for n in 0..7 {
        server.advance(Duration::from_secs(10));
        let token = if n % 2 == 0 { admin.clone() } else { server.admin_token.clone() };
        let scope = server
            .scopes_as(Some(&token))
            .create_scope(pb::CreateScopeRequest {
                tenant: ACME.into(),
                label: format!("s{n}"),
                description: String::new(),
                mode: pb::ScopeMode::Allow.into(),
                rules: None,
            })
            .await
            .expect("create")
            .into_inner();
        labels.push(scope.id);
    }
    let mut client = server.audit_as(Some(&admin));
    // Pages of 3: 8 events (the admin key's creation and 7 scopes).
    let first = client
        .list_audit_events(pb::ListAuditEventsRequest { page_size: 3, ..Default::default() })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(first.events.len(), 3);
    assert_eq!(first.events[0].target_id, labels[6]);
    assert!(!first.next_page_token.is_empty());
    let all = all_events(&server, &admin, pb::ListAuditEventsRequest { page_size: 3, ..Default::default() }).await;
    assert_eq!(all.len(), 8);
    let targets: Vec<&str> = all.iter().take(7).map(|e| e.target_id.as_str()).collect();
    let mut expected: Vec<&str> = labels.iter().map(String::as_str).collect();
    expected.reverse();
    assert_eq!(targets, expected);
    let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), 8, "no event twice across pages");

    let on = |target: &str| pb::ListAuditEventsRequest { target_id: target.into(), ..Default::default() };
    let got = all_events(&server, &admin, on(&labels[3])).await;
    assert_eq!(got.iter().map(|e| e.target_id.as_str()).collect::<Vec<_>>(), [labels[3].as_str()]);
    let mine = pb::ListAuditEventsRequest { actor_key_id: admin_id.clone(), page_size: 1, ..Default::default() };
    let got = all_events(&server, &admin, mine).await;
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.iter().all(|e| e.actor_key_id == admin_id));
    let at = |secs: u64| keyscope::grpc::convert::timestamp_to_pb(start + Duration::from_secs(secs));
    let window = pb::ListAuditEventsRequest { start_time: Some(at(20)), end_time: Some(at(40)), ..Default::default() };
    let got = all_events(&server, &admin, window).await;
    let expected: Vec<&str> = [4, 3, 2].iter().map(|&i| labels[i - 1].as_str()).collect();
    assert_eq!(got.iter().map(|e| e.target_id.as_str()).collect::<Vec<_>>(), expected);

    // Bad requests name their field and change nothing.
    let bad = |request: pb::ListAuditEventsRequest| {
        let mut client = server.audit_as(Some(&admin));
        async move { client.list_audit_events(request).await }
    };
    let cases = [
        (pb::ListAuditEventsRequest { page_token: "garbage!".into(), ..Default::default() }, "page_token"),
        (pb::ListAuditEventsRequest { page_size: -1, ..Default::default() }, "page_size"),
        (pb::ListAuditEventsRequest { target_id: "not an id".into(), ..Default::default() }, "target_id"),
        (pb::ListAuditEventsRequest { actor_key_id: "nobody".into(), ..Default::default() }, "actor_key_id"),
        (
            pb::ListAuditEventsRequest { start_time: Some(Timestamp { seconds: -5, nanos: 0 }), ..Default::default() },
            "start_time",
        ),
        (
            pb::ListAuditEventsRequest { start_time: Some(at(40)), end_time: Some(at(20)), ..Default::default() },
            "end_time",
        ),
        (pb::ListAuditEventsRequest { tenant: "Not A Tenant".into(), ..Default::default() }, "tenant"),
    ];
    for (request, field) in cases {
        assert_status(bad(request).await, Code::InvalidArgument, field);
    }
    assert_eq!(all_events(&server, &admin, pb::ListAuditEventsRequest::default()).await.len(), 8);
    server.stop().await;
}

#[tokio::test]
async fn tenants_see_only_their_own_log_and_reading_needs_keyscope_audit() {
    let server = TestServer::start().await;
    let (_, acme_admin) = server.key(ACME, &["admin"]).await;
    let (globex_key, _) = server.key("globex", &["read-only"]).await;
    let mine = all_events(&server, &acme_admin, pb::ListAuditEventsRequest::default()).await;
    assert_eq!(mine.len(), 1);
    assert!(mine.iter().all(|e| e.tenant == ACME && e.target_id != globex_key.id));
    let other = server
        .audit_as(Some(&acme_admin))
        .list_audit_events(pb::ListAuditEventsRequest { tenant: "globex".into(), ..Default::default() })
        .await;
    assert_status(other, Code::PermissionDenied, "may not act in tenant `globex`");
    let globex = all_events(
        &server,
        &server.admin_token,
        pb::ListAuditEventsRequest { tenant: "globex".into(), ..Default::default() },
    )
    .await;
    assert_eq!(globex.iter().map(|e| e.target_id.as_str()).collect::<Vec<_>>(), [globex_key.id.as_str()]);
    assert!(globex.iter().all(|e| e.tenant == "globex"));

    // Admin rights on keys and scopes, or `read` on everything, do not reach the audit log.
    let key_admin =
        server.scope(ACME, "key-admin", pb::ScopeMode::Allow, all_rules(&["keyscope.keys", "keyscope.scopes"])).await;
    let (_, key_admin) = server.key(ACME, &[&key_admin.id]).await;
    let (_, reader) = server.key(ACME, &["read-only"]).await;
    for token in [key_admin.as_str(), reader.as_str()] {
        let denied = server.audit_as(Some(token)).list_audit_events(pb::ListAuditEventsRequest::default()).await;
        assert_status(denied, Code::PermissionDenied, "keyscope.audit");
    }
    let auditor = server.scope(ACME, "auditor", pb::ScopeMode::Allow, read_rules(&["keyscope.audit"])).await;
    let (_, auditor) = server.key(ACME, &[&auditor.id]).await;
    let read = all_events(&server, &auditor, pb::ListAuditEventsRequest::default()).await;
    assert!(read.len() >= 5, "{read:?}");
    let anonymous = server.audit_as(None).list_audit_events(pb::ListAuditEventsRequest::default()).await;
    assert_status(anonymous, Code::Unauthenticated, "Bearer");
    server.stop().await;
}

#[tokio::test]
async fn events_are_kept_in_redis_across_a_restart() {
    let redis = redis_server::RedisServer::start();
    let first = TestServer::start_on_redis(&redis.url(), "audit", Default::default(), None).await;
    let admin_token = first.admin_token.clone();
    let (key, token) = first.key(ACME, &["read-only"]).await;
    first
        .keys()
        .disable_key(with_id(pb::KeyStateRequest { tenant: ACME.into(), id: key.id.clone(), version: 0 }, "off"))
        .await
        .expect("disable");
    let before =
        all_events(&first, &admin_token, pb::ListAuditEventsRequest { tenant: ACME.into(), ..Default::default() })
            .await;
    assert_eq!(before.len(), 2);
    first.stop().await;

    let second = TestServer::start_on_redis(&redis.url(), "audit", Default::default(), Some(&admin_token)).await;
    let after =
        all_events(&second, &admin_token, pb::ListAuditEventsRequest { tenant: ACME.into(), ..Default::default() })
            .await;
    assert_eq!(after, before, "the log outlives the replica");
    assert_eq!(after[0].request_id, "off");
    assert_eq!(pb::AuditOperation::try_from(after[0].operation), Ok(pb::AuditOperation::DisableKey));
    let system =
        all_events(&second, &admin_token, pb::ListAuditEventsRequest { tenant: "system".into(), ..Default::default() })
            .await;
    assert_eq!(system.len(), 1, "a restart with an existing bootstrap key records nothing: {system:?}");
    // Neither the stream itself holds the secret.
    let raw = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "XRANGE", "audit:{acme}:audit", "-", "+"])
        .output()
        .expect("redis-cli");
    let raw = String::from_utf8_lossy(&raw.stdout);
    assert!(
        raw.contains(&key.id) && !raw.contains(&token) && !raw.contains(token.rsplit('_').next().unwrap_or("")),
        "{raw}"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_type_tells_apart_targets_that_share_an_id() {
    let server = TestServer::start().await;
    // Tenant `acme`'s policy and a principal whose subject is `acme`: both targets are `acme`.
    let policy = pb::SetTenantPolicyRequest {
        tenant: "acme".into(),
        max_key_lifetime: Some(prost_types::Duration { seconds: 86_400, nanos: 0 }),
        expected_version: 0,
    };
    server.keys().set_tenant_policy(policy).await.expect("policy");
    server.principal("acme", "acme", &[]).await;
    let list = |target_type: &str| pb::ListAuditEventsRequest {
        tenant: "acme".into(),
        target_id: "acme".into(),
        target_type: target_type.into(),
        ..Default::default()
    };
    let operations = |events: &[pb::AuditEvent]| -> Vec<pb::AuditOperation> {
        events.iter().map(|e| pb::AuditOperation::try_from(e.operation).expect("known")).collect()
    };
    let mut audit = server.audit();
    let both = audit.list_audit_events(list("")).await.expect("list").into_inner().events;
    assert_eq!(operations(&both), [pb::AuditOperation::PutPrincipal, pb::AuditOperation::SetTenantPolicy]);
    for (kind, want) in [
        ("principal", vec![pb::AuditOperation::PutPrincipal]),
        ("tenant", vec![pb::AuditOperation::SetTenantPolicy]),
        ("key", vec![]),
    ] {
        let got = audit.list_audit_events(list(kind)).await.expect("list").into_inner().events;
        assert_eq!(operations(&got), want, "target_type {kind}");
        assert!(got.iter().all(|e| e.target_type == kind));
    }
    assert_status(audit.list_audit_events(list("user")).await, Code::InvalidArgument, "target_type");
    server.stop().await;
}
