//! The store contract: one suite, written once, that every `Store` backend must pass.
//! `contract_tests!(prefix, factory)` expands to one `#[tokio::test]` per behaviour, where
//! `factory` is an async expression yielding a fresh, empty `Arc<dyn Store>`.
#![allow(dead_code, missing_docs)]

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock},
    time::{Duration, SystemTime},
};

use keyscope::{
    domain::{
        Actor, AuditEvent, AuditId, AuditOperation, AuditRecord, AuditTarget, Day, Key, KeyId, KeyState, Members,
        Metadata, PreviousSecret, Principal, RateLimit, RequestId, Role, Rules, Scope, ScopeId, ScopeMode, SecretHash,
        Subject, Tenant, TenantPolicy, parse_cidrs,
    },
    store::{
        AuditPage, AuditQuery, AuditWrite, DETACH_BATCH, DailyUsage, KeyQuery, KeyWrite, Owner, PrincipalGrants,
        ScopeDelete, ScopeDetach, Store, StoreError, UsageDelta,
    },
};

/// An audit event of tenant `t` at `ms` milliseconds after 2023-11-14, under request `request`.
pub fn audit_record(t: &str, operation: AuditOperation, target: AuditTarget, request: &str, ms: u64) -> AuditRecord {
    AuditRecord {
        tenant: tenant(t),
        at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms),
        actor: Actor::Key(key_id(900)),
        operation,
        target,
        changed: vec!["description".into(), "scope_ids".into()],
        details: BTreeMap::from([("scope_ids".to_owned(), "s1,s2".to_owned())]),
        request_id: request.parse::<RequestId>().expect("request id"),
    }
}

static NOTED: LazyLock<AuditRecord> =
    LazyLock::new(|| audit_record("acme", AuditOperation::UpdateKey, AuditTarget::Key(key_id(0)), "noted", 0));

/// The audit event of a change whose event is not what a case checks.
pub fn noted() -> AuditWrite<'static> {
    AuditWrite { record: &NOTED, max_events: 1000, access_version: None }
}

fn kept(record: &AuditRecord, max_events: usize) -> AuditWrite<'_> {
    AuditWrite { record, max_events, access_version: None }
}

async fn audit_page(store: &dyn Store, t: &str, query: &AuditQuery) -> AuditPage {
    store.list_audit(&tenant(t), query).await.expect("list audit")
}

/// The request ids of a tenant's whole log, newest first.
async fn audit_requests(store: &dyn Store, t: &str) -> Vec<String> {
    let all = AuditQuery { limit: 10_000, ..Default::default() };
    audit_page(store, t, &all).await.events.iter().map(|e| e.record.request_id.to_string()).collect()
}

pub fn tenant(name: &str) -> Tenant {
    name.parse().expect("tenant")
}

pub fn key_id(n: usize) -> KeyId {
    format!("k{n:019}").parse().expect("key id")
}

pub fn scope_id(name: &str) -> ScopeId {
    name.parse().expect("scope id")
}

pub fn scope(t: &str, id: &str, label: &str) -> Scope {
    let none: &[&str] = &[];
    Scope {
        id: scope_id(id),
        tenant: tenant(t),
        label: label.parse().expect("label"),
        description: String::new(),
        mode: ScopeMode::Allow,
        rules: Rules::parse([none, &["courses"], none, none]).expect("rules"),
        builtin: false,
        version: 1,
        created_at: SystemTime::UNIX_EPOCH,
        updated_at: SystemTime::UNIX_EPOCH,
    }
}

pub fn key(t: &str, n: usize, scopes: &[&str]) -> Key {
    Key {
        id: key_id(n),
        tenant: tenant(t),
        description: String::new(),
        owner: format!("owner-{}", n % 2),
        scope_ids: scopes.iter().map(|s| scope_id(s)).collect(),
        state: KeyState::Active,
        expires_at: None,
        metadata: Metadata::new(),
        version: 1,
        created_at: SystemTime::UNIX_EPOCH,
        updated_at: SystemTime::UNIX_EPOCH,
        last_used_at: None,
        secret_hash: SecretHash::from_bytes([n as u8; 32]),
        previous_secret: None,
        rotated_at: None,
        allowed_cidrs: Vec::new(),
        rate_limit: None,
    }
}

pub async fn create_scope(store: &dyn Store, s: &Scope) {
    store.put_scope(s, None, &[], 1000, noted()).await.expect("create scope");
}

pub async fn create_key(store: &dyn Store, k: &Key) {
    let stored = k.scope_ids.clone();
    store
        .put_key(KeyWrite { key: k, expected_version: None, stored_scopes: &stored, audit: noted() }, 1000)
        .await
        .expect("create key");
}

fn query(limit: usize) -> KeyQuery {
    KeyQuery { limit, ..Default::default() }
}

pub async fn keys_are_created_read_and_isolated_by_tenant(store: Arc<dyn Store>) {
    let s = scope("acme", "s1", "one");
    create_scope(&*store, &s).await;
    let k = key("acme", 1, &["s1"]);
    create_key(&*store, &k).await;
    let got = store.get_key(&tenant("acme"), &k.id).await.expect("get").expect("present");
    assert_eq!(*got, k);
    assert_eq!(store.get_key(&tenant("globex"), &k.id).await.expect("get"), None);
    let cred = store.credential(&k.id).await.expect("credential").expect("present");
    assert_eq!(*cred.key, k);
    assert_eq!(cred.scopes.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), vec![scope_id("s1")]);
    assert!(store.credential(&key_id(99)).await.expect("credential").is_none());
}

pub async fn key_writes_are_guarded_by_version_and_write_nothing_when_refused(store: Arc<dyn Store>) {
    create_scope(&*store, &scope("acme", "s1", "one")).await;
    let k = key("acme", 1, &["s1"]);
    create_key(&*store, &k).await;
    let stored = vec![scope_id("s1")];
    let again =
        store.put_key(KeyWrite { key: &k, expected_version: None, stored_scopes: &stored, audit: noted() }, 1000).await;
    assert!(matches!(again, Err(StoreError::AlreadyExists(_))), "{again:?}");
    let mut changed = k.clone();
    changed.description = "changed".into();
    changed.version = 3;
    let stale = store
        .put_key(KeyWrite { key: &changed, expected_version: Some(2), stored_scopes: &stored, audit: noted() }, 1000)
        .await;
    assert!(matches!(stale, Err(StoreError::VersionConflict { expected: 2, found: 1, .. })), "{stale:?}");
    assert_eq!(store.get_key(&tenant("acme"), &k.id).await.expect("get").expect("present").description, "");
    changed.version = 2;
    store
        .put_key(KeyWrite { key: &changed, expected_version: Some(1), stored_scopes: &stored, audit: noted() }, 1000)
        .await
        .expect("update");
    assert_eq!(store.get_key(&tenant("acme"), &k.id).await.expect("get").expect("present").version, 2);
    let missing = key("acme", 7, &["s1"]);
    let r = store
        .put_key(KeyWrite { key: &missing, expected_version: Some(1), stored_scopes: &stored, audit: noted() }, 1000)
        .await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    let mut other_tenant = changed.clone();
    other_tenant.tenant = tenant("globex");
    other_tenant.version = 3;
    let r = store
        .put_key(KeyWrite { key: &other_tenant, expected_version: Some(2), stored_scopes: &[], audit: noted() }, 1000)
        .await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "a key cannot move tenants: {r:?}");
}

pub async fn keys_naming_a_missing_scope_are_refused(store: Arc<dyn Store>) {
    create_scope(&*store, &scope("globex", "s1", "one")).await;
    let k = key("acme", 1, &["s1"]);
    let stored = vec![scope_id("s1")];
    let r =
        store.put_key(KeyWrite { key: &k, expected_version: None, stored_scopes: &stored, audit: noted() }, 1000).await;
    assert!(matches!(r, Err(StoreError::ScopeMissing(ref id)) if *id == scope_id("s1")), "{r:?}");
    assert_eq!(store.get_key(&tenant("acme"), &k.id).await.expect("get"), None);
    assert!(store.scope_holders(&tenant("globex"), &scope_id("s1")).await.expect("holders").is_empty());
}

pub async fn tenant_quotas_are_enforced(store: Arc<dyn Store>) {
    for n in 0..2 {
        let k = key("acme", n, &[]);
        store
            .put_key(KeyWrite { key: &k, expected_version: None, stored_scopes: &[], audit: noted() }, 2)
            .await
            .expect("within quota");
    }
    let k = key("acme", 2, &[]);
    let r = store.put_key(KeyWrite { key: &k, expected_version: None, stored_scopes: &[], audit: noted() }, 2).await;
    assert!(matches!(r, Err(StoreError::QuotaReached { what: "keys", limit: 2, .. })), "{r:?}");
    let other = key("globex", 3, &[]);
    store
        .put_key(KeyWrite { key: &other, expected_version: None, stored_scopes: &[], audit: noted() }, 2)
        .await
        .expect("quota is per tenant");
    store.put_scope(&scope("acme", "a", "a"), None, &[], 1, noted()).await.expect("first scope");
    let r = store.put_scope(&scope("acme", "b", "b"), None, &[], 1, noted()).await;
    assert!(matches!(r, Err(StoreError::QuotaReached { what: "scopes", .. })), "{r:?}");
}

pub async fn key_listing_pages_by_id_with_filters(store: Arc<dyn Store>) {
    create_scope(&*store, &scope("acme", "s1", "one")).await;
    create_scope(&*store, &scope("acme", "s2", "two")).await;
    for n in (0..7).rev() {
        let scopes: &[&str] = if n % 3 == 0 { &["s1", "s2"] } else { &["s1"] };
        create_key(&*store, &key("acme", n, scopes)).await;
    }
    create_key(&*store, &key("globex", 50, &[])).await;
    let first = store.list_keys(&tenant("acme"), &query(3)).await.expect("list");
    let ids: Vec<KeyId> = first.iter().map(|k| k.id.clone()).collect();
    assert_eq!(ids, vec![key_id(0), key_id(1), key_id(2)]);
    let after = KeyQuery { after: Some(key_id(2)), ..query(10) };
    let rest: Vec<KeyId> =
        store.list_keys(&tenant("acme"), &after).await.expect("list").iter().map(|k| k.id.clone()).collect();
    assert_eq!(rest, (3..7).map(key_id).collect::<Vec<_>>());
    let by_scope = KeyQuery { scope: Some(scope_id("s2")), ..query(10) };
    let got: Vec<KeyId> =
        store.list_keys(&tenant("acme"), &by_scope).await.expect("list").iter().map(|k| k.id.clone()).collect();
    assert_eq!(got, vec![key_id(0), key_id(3), key_id(6)]);
    let by_owner = KeyQuery { owner: Some("owner-1".into()), ..query(10) };
    let got: Vec<KeyId> =
        store.list_keys(&tenant("acme"), &by_owner).await.expect("list").iter().map(|k| k.id.clone()).collect();
    assert_eq!(got, vec![key_id(1), key_id(3), key_id(5)]);
    let mut disabled = key("acme", 4, &["s1"]);
    disabled.state = KeyState::Disabled;
    disabled.version = 2;
    let stored = vec![scope_id("s1")];
    store
        .put_key(KeyWrite { key: &disabled, expected_version: Some(1), stored_scopes: &stored, audit: noted() }, 1000)
        .await
        .expect("update");
    let by_state = KeyQuery { state: Some(KeyState::Disabled), ..query(10) };
    let got: Vec<KeyId> =
        store.list_keys(&tenant("acme"), &by_state).await.expect("list").iter().map(|k| k.id.clone()).collect();
    assert_eq!(got, vec![key_id(4)]);
    // The scope index follows a key that leaves a scope.
    let by_s2 = KeyQuery { scope: Some(scope_id("s2")), after: Some(key_id(0)), ..query(10) };
    let got: Vec<KeyId> =
        store.list_keys(&tenant("acme"), &by_s2).await.expect("list").iter().map(|k| k.id.clone()).collect();
    assert_eq!(got, vec![key_id(3), key_id(6)]);
    assert!(store.list_keys(&tenant("nobody"), &query(10)).await.expect("list").is_empty());
}

pub async fn scope_index_follows_key_updates(store: Arc<dyn Store>) {
    create_scope(&*store, &scope("acme", "s1", "one")).await;
    create_scope(&*store, &scope("acme", "s2", "two")).await;
    let k = key("acme", 1, &["s1"]);
    create_key(&*store, &k).await;
    let mut moved = k.clone();
    moved.scope_ids = vec![scope_id("s2")];
    moved.version = 2;
    let stored = vec![scope_id("s2")];
    store
        .put_key(KeyWrite { key: &moved, expected_version: Some(1), stored_scopes: &stored, audit: noted() }, 1000)
        .await
        .expect("update");
    assert!(store.scope_holders(&tenant("acme"), &scope_id("s1")).await.expect("holders").is_empty());
    let holders = store.scope_holders(&tenant("acme"), &scope_id("s2")).await.expect("holders");
    assert_eq!(holders.iter().map(|k| k.id.clone()).collect::<Vec<_>>(), vec![k.id.clone()]);
}

pub async fn scope_labels_are_unique_per_tenant_case_insensitively(store: Arc<dyn Store>) {
    create_scope(&*store, &scope("acme", "s1", "Website")).await;
    let r = store.put_scope(&scope("acme", "s2", "WEBSITE"), None, &[], 1000, noted()).await;
    assert!(matches!(r, Err(StoreError::AlreadyExists(_))), "{r:?}");
    create_scope(&*store, &scope("globex", "s2", "website")).await;
    let r = store.put_scope(&scope("acme", "s3", "Admin"), None, &["admin".into()], 1000, noted()).await;
    assert!(matches!(r, Err(StoreError::AlreadyExists(_))), "reserved labels are refused: {r:?}");
    let mut relabelled = scope("acme", "s1", "site");
    relabelled.version = 2;
    store.put_scope(&relabelled, Some(1), &[], 1000, noted()).await.expect("relabel");
    create_scope(&*store, &scope("acme", "s4", "website")).await;
    let r = store.put_scope(&scope("acme", "s1", "x"), None, &[], 1000, noted()).await;
    assert!(matches!(r, Err(StoreError::AlreadyExists(_))), "ids are unique: {r:?}");
    let mut stale = scope("acme", "s1", "other");
    stale.version = 9;
    let r = store.put_scope(&stale, Some(1), &[], 1000, noted()).await;
    assert!(matches!(r, Err(StoreError::VersionConflict { expected: 1, found: 2, .. })), "{r:?}");
    let got = store.get_scope(&tenant("acme"), &scope_id("s1")).await.expect("get").expect("present");
    assert_eq!(got.label.as_str(), "site");
    let r = store.put_scope(&scope("acme", "nope", "n"), Some(1), &[], 1000, noted()).await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
}

pub async fn scope_listing_pages_by_id(store: Arc<dyn Store>) {
    for i in (0..5).rev() {
        create_scope(&*store, &scope("acme", &format!("s{i}"), &format!("l{i}"))).await;
    }
    let first = store.list_scopes(&tenant("acme"), None, 2).await.expect("list");
    assert_eq!(first.iter().map(|s| s.id.as_str().to_owned()).collect::<Vec<_>>(), ["s0", "s1"]);
    let after = scope_id("s1");
    let rest = store.list_scopes(&tenant("acme"), Some(&after), 10).await.expect("list");
    assert_eq!(rest.iter().map(|s| s.id.as_str().to_owned()).collect::<Vec<_>>(), ["s2", "s3", "s4"]);
    assert!(store.list_scopes(&tenant("globex"), None, 10).await.expect("list").is_empty());
    let wanted = [scope_id("s3"), scope_id("nope"), scope_id("s1")];
    let mut got: Vec<String> =
        store.get_scopes(&tenant("acme"), &wanted).await.expect("get").iter().map(|s| s.id.to_string()).collect();
    got.sort();
    assert_eq!(got, ["s1", "s3"]);
    assert!(store.get_scopes(&tenant("globex"), &wanted).await.expect("get").is_empty(), "scopes stay in their tenant");
}

pub async fn scope_delete_is_guarded_by_its_holders(store: Arc<dyn Store>) {
    create_scope(&*store, &scope("acme", "s1", "one")).await;
    create_scope(&*store, &scope("acme", "s2", "two")).await;
    create_key(&*store, &key("acme", 1, &["s1", "s2"])).await;
    create_key(&*store, &key("acme", 2, &["s1"])).await;
    let t = tenant("acme");
    let id = scope_id("s1");
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
    let unused = ScopeDelete { tenant: &t, id: &id, expected_version: None, holders: &[], now, audit: noted() };
    assert!(matches!(store.delete_scope(unused).await, Err(StoreError::UsersChanged(_))));
    let stale_holder = [(key_id(1), 1), (key_id(2), 5)];
    let stale = ScopeDelete { holders: &stale_holder, ..unused };
    assert!(matches!(store.delete_scope(stale).await, Err(StoreError::UsersChanged(_))));
    let wrong_version = ScopeDelete { expected_version: Some(4), holders: &[(key_id(1), 1), (key_id(2), 1)], ..unused };
    assert!(matches!(store.delete_scope(wrong_version).await, Err(StoreError::VersionConflict { .. })));
    assert!(store.get_scope(&t, &id).await.expect("get").is_some(), "refused deletes write nothing");
    let holders = [(key_id(2), 1), (key_id(1), 1)];
    store.delete_scope(ScopeDelete { holders: &holders, ..unused }).await.expect("delete");
    assert!(store.get_scope(&t, &id).await.expect("get").is_none());
    let k1 = store.get_key(&t, &key_id(1)).await.expect("get").expect("present");
    assert_eq!(k1.scope_ids, vec![scope_id("s2")]);
    assert_eq!(k1.version, 2);
    assert_eq!(k1.updated_at, now);
    let k2 = store.get_key(&t, &key_id(2)).await.expect("get").expect("present");
    assert!(k2.scope_ids.is_empty());
    assert!(store.scope_holders(&t, &id).await.expect("holders").is_empty());
    // The label is free again.
    create_scope(&*store, &scope("acme", "s3", "one")).await;
    let gone = ScopeDelete { holders: &[], ..unused };
    assert!(matches!(store.delete_scope(gone).await, Err(StoreError::NotFound(_))));
}

pub async fn bootstrap_is_claimed_once(store: Arc<dyn Store>) {
    let first = key("system", 1, &[]);
    assert_eq!(store.claim_bootstrap(&first, noted()).await.expect("claim"), None);
    assert!(store.get_key(&tenant("system"), &first.id).await.expect("get").is_some());
    let second = key("system", 2, &[]);
    assert_eq!(store.claim_bootstrap(&second, noted()).await.expect("claim"), Some(first.id.clone()));
    assert!(store.get_key(&tenant("system"), &second.id).await.expect("get").is_none());
}

/// A claim whose token was never shown is undone: the key, its indexes and the marker go
/// together (audited), only while the marker names the key and the key is unchanged; then a
/// new claim succeeds, as on a store that was never claimed.
pub async fn a_bootstrap_claim_is_released_only_while_it_is_the_claimed_key(store: Arc<dyn Store>) {
    let t = tenant("system");
    let first = key("system", 1, &["admin"]);
    assert_eq!(store.claim_bootstrap(&first, noted()).await.expect("claim"), None);
    let before = audit_requests(&*store, "system").await;
    let refused = audit_record("system", AuditOperation::DeleteKey, AuditTarget::Key(key_id(1)), "refused", 2);
    let other = key("system", 2, &["admin"]);
    let write = KeyWrite { key: &other, expected_version: None, stored_scopes: &[], audit: noted() };
    store.put_key(write, 1000).await.expect("another system key");
    let before_other = audit_requests(&*store, "system").await;
    assert!(!store.release_bootstrap(&other, kept(&refused, 1000)).await.expect("release"), "not the claimed key");
    let mut changed = first.clone();
    changed.version = 2;
    assert!(!store.release_bootstrap(&changed, kept(&refused, 1000)).await.expect("release"), "not at that version");
    assert_eq!(audit_requests(&*store, "system").await, before_other, "a refused release records nothing");
    assert!(before_other.len() == before.len() + 1);
    assert!(store.get_key(&t, &first.id).await.expect("get").is_some(), "a refused release removes nothing");

    let released = audit_record("system", AuditOperation::DeleteKey, AuditTarget::Key(key_id(1)), "released", 3);
    assert!(store.release_bootstrap(&first, kept(&released, 1000)).await.expect("release"));
    assert!(store.get_key(&t, &first.id).await.expect("get").is_none());
    assert!(store.credential(&first.id).await.expect("credential").is_none());
    let listed = store.list_keys(&t, &KeyQuery { limit: 10, ..Default::default() }).await.expect("list");
    assert_eq!(listed.iter().map(|k| k.id.clone()).collect::<Vec<_>>(), vec![other.id.clone()]);
    let holders = store.scope_holders(&t, &scope_id("admin")).await.expect("holders");
    assert_eq!(holders.iter().map(|k| k.id.clone()).collect::<Vec<_>>(), vec![other.id.clone()]);
    assert_eq!(audit_requests(&*store, "system").await.first().map(String::as_str), Some("released"));
    assert!(!store.release_bootstrap(&first, noted()).await.expect("release again"), "nothing left to release");

    // As if never claimed: the next claim makes its key the bootstrap key.
    let third = key("system", 3, &["admin"]);
    assert_eq!(store.claim_bootstrap(&third, noted()).await.expect("claim"), None);
    assert_eq!(store.claim_bootstrap(&key("system", 4, &[]), noted()).await.expect("claim"), Some(third.id.clone()));
    assert!(!store.release_bootstrap(&first, noted()).await.expect("release"), "the old id is not the claimed key");
    assert!(store.get_key(&t, &third.id).await.expect("get").is_some());
}

/// Many writers add keys on a scope while another deletes it through the guarded protocol:
/// afterwards no key names a missing scope.
pub async fn concurrent_key_writes_never_leave_a_key_on_a_deleted_scope(store: Arc<dyn Store>) {
    create_scope(&*store, &scope("acme", "s1", "one")).await;
    let mut writers = Vec::new();
    for n in 0..40 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let k = key("acme", n, &["s1"]);
            let stored = vec![scope_id("s1")];
            store
                .put_key(KeyWrite { key: &k, expected_version: None, stored_scopes: &stored, audit: noted() }, 1000)
                .await
        }));
    }
    let deleter = {
        let store = store.clone();
        tokio::spawn(async move {
            let t = tenant("acme");
            let id = scope_id("s1");
            loop {
                let holders: Vec<(KeyId, u64)> = store
                    .scope_holders(&t, &id)
                    .await
                    .expect("holders")
                    .iter()
                    .map(|k| (k.id.clone(), k.version))
                    .collect();
                let d = ScopeDelete {
                    tenant: &t,
                    id: &id,
                    expected_version: None,
                    holders: &holders,
                    now: SystemTime::UNIX_EPOCH,
                    audit: noted(),
                };
                match store.delete_scope(d).await {
                    Ok(()) => return,
                    Err(StoreError::UsersChanged(_)) => tokio::task::yield_now().await,
                    Err(e) => panic!("delete: {e}"),
                }
            }
        })
    };
    for w in writers {
        match w.await.expect("writer") {
            Ok(()) | Err(StoreError::ScopeMissing(_)) => {}
            Err(e) => panic!("unexpected writer error: {e}"),
        }
    }
    deleter.await.expect("deleter");
    let keys = store.list_keys(&tenant("acme"), &query(100)).await.expect("list");
    for k in keys {
        assert!(k.scope_ids.is_empty(), "key {} still names the deleted scope", k.id);
    }
}

fn delta(t: &str, n: usize, day: Day, allowed: u64, denied: u64, last_used_at: SystemTime) -> UsageDelta {
    UsageDelta { tenant: tenant(t), key_id: key_id(n), day, allowed, denied, last_used_at }
}

fn today() -> Day {
    Day::of(SystemTime::now())
}

/// A whole-second instant on `day` (stored usage keeps microseconds).
fn on(day: Day, secs: u64) -> SystemTime {
    day.start() + Duration::from_secs(secs)
}

pub async fn usage_adds_up_per_key_and_day_and_stays_in_its_tenant(store: Arc<dyn Store>) {
    for (t, n) in [("acme", 1), ("acme", 2), ("globex", 3)] {
        create_key(&*store, &key(t, n, &[])).await;
    }
    let (d1, d2) = (today().minus(1), today());
    let batch = [
        delta("acme", 1, d1, 3, 1, on(d1, 10)),
        delta("acme", 1, d2, 1, 0, on(d2, 20)),
        delta("acme", 2, d1, 0, 2, on(d1, 30)),
    ];
    store.record_usage(&batch, 90).await.expect("record");
    store.record_usage(&batch[..1], 90).await.expect("record again");
    store.record_usage(&[delta("globex", 3, d2, 7, 0, on(d2, 5))], 90).await.expect("record another tenant");
    let acme = tenant("acme");
    let k1 = store.key_usage(&acme, &key_id(1), d1, d2).await.expect("usage");
    assert_eq!(
        k1,
        vec![DailyUsage { day: d1, allowed: 6, denied: 2 }, DailyUsage { day: d2, allowed: 1, denied: 0 }],
        "two writes add up, day by day"
    );
    let only_d2 = store.key_usage(&acme, &key_id(1), d2, d2).await.expect("usage");
    assert_eq!(only_d2, vec![DailyUsage { day: d2, allowed: 1, denied: 0 }], "the range is respected");
    let k2 = store.key_usage(&acme, &key_id(2), d1, d2).await.expect("usage");
    assert_eq!(k2, vec![DailyUsage { day: d1, allowed: 0, denied: 2 }], "days without checks are left out");
    assert!(store.key_usage(&tenant("globex"), &key_id(1), d1, d2).await.expect("usage").is_empty());
    assert!(store.key_usage(&acme, &key_id(3), d1, d2).await.expect("usage").is_empty(), "another tenant's key");
    let k3 = store.key_usage(&tenant("globex"), &key_id(3), d1, d2).await.expect("usage");
    assert_eq!(k3, vec![DailyUsage { day: d2, allowed: 7, denied: 0 }]);
}

pub async fn last_use_is_the_latest_and_never_changes_the_key_record(store: Arc<dyn Store>) {
    create_key(&*store, &key("acme", 1, &[])).await;
    create_key(&*store, &key("acme", 2, &[])).await;
    let day = today();
    store.record_usage(&[delta("acme", 1, day, 1, 0, on(day, 50))], 90).await.expect("record");
    store.record_usage(&[delta("acme", 1, day, 1, 0, on(day, 40))], 90).await.expect("record an earlier use");
    let acme = tenant("acme");
    let got = store.get_key(&acme, &key_id(1)).await.expect("get").expect("present");
    assert_eq!(got.last_used_at, Some(on(day, 50)), "a later use is never overwritten by an earlier one");
    assert_eq!(got.version, 1, "usage is not a change of the key");
    let never = store.get_key(&acme, &key_id(2)).await.expect("get").expect("present");
    assert_eq!(never.last_used_at, None);
    let listed = store.list_keys(&acme, &query(10)).await.expect("list");
    let uses: Vec<Option<SystemTime>> = listed.iter().map(|k| k.last_used_at).collect();
    assert_eq!(uses, vec![Some(on(day, 50)), None]);
    assert!(store.get_key(&tenant("globex"), &key_id(1)).await.expect("get").is_none());
    // A key write after a use keeps the use.
    let mut updated = Key::clone(&got);
    updated.description = "changed".into();
    updated.version = 2;
    store
        .put_key(KeyWrite { key: &updated, expected_version: Some(1), stored_scopes: &[], audit: noted() }, 1000)
        .await
        .expect("update");
    store.record_usage(&[delta("acme", 1, day, 1, 0, on(day, 60))], 90).await.expect("record");
    let got = store.get_key(&acme, &key_id(1)).await.expect("get").expect("present");
    assert_eq!((got.last_used_at, got.version), (Some(on(day, 60)), 2));
}

pub async fn keys_unused_since_an_instant_are_listed_for_review(store: Arc<dyn Store>) {
    for n in 0..5 {
        create_key(&*store, &key("acme", n, &[])).await;
    }
    let day = today();
    let uses = [(0, 10), (2, 100), (3, 99), (4, 200)];
    let batch: Vec<UsageDelta> = uses.iter().map(|&(n, s)| delta("acme", n, day, 1, 0, on(day, s))).collect();
    store.record_usage(&batch, 90).await.expect("record");
    store.record_usage(&[delta("globex", 1, day, 1, 0, on(day, 500))], 90).await.expect("other tenant");
    let acme = tenant("acme");
    let idle = KeyQuery { unused_since: Some(on(day, 100)), ..query(10) };
    let got: Vec<KeyId> = store.list_keys(&acme, &idle).await.expect("list").iter().map(|k| k.id.clone()).collect();
    assert_eq!(got, vec![key_id(0), key_id(1), key_id(3)], "used before the instant, or never");
    let paged = KeyQuery { unused_since: Some(on(day, 100)), after: Some(key_id(0)), ..query(1) };
    let got: Vec<KeyId> = store.list_keys(&acme, &paged).await.expect("list").iter().map(|k| k.id.clone()).collect();
    assert_eq!(got, vec![key_id(1)]);
    let none = KeyQuery { unused_since: Some(on(day, 0)), ..query(10) };
    let got: Vec<KeyId> = store.list_keys(&acme, &none).await.expect("list").iter().map(|k| k.id.clone()).collect();
    assert_eq!(got, vec![key_id(1)], "only the never-used key is idle since before every use");
}

pub async fn usage_older_than_the_retention_is_dropped(store: Arc<dyn Store>) {
    create_key(&*store, &key("acme", 1, &[])).await;
    let day = today();
    let old = day.minus(3);
    store.record_usage(&[delta("acme", 1, old, 5, 0, on(old, 1))], 3).await.expect("record");
    store.record_usage(&[delta("acme", 1, day, 1, 0, on(day, 1))], 3).await.expect("record");
    let got = store.key_usage(&tenant("acme"), &key_id(1), day.minus(10), day).await.expect("usage");
    assert_eq!(got, vec![DailyUsage { day, allowed: 1, denied: 0 }], "3 days kept: today and the 2 before");
    let kept = day.minus(2);
    store.record_usage(&[delta("acme", 1, kept, 2, 0, on(kept, 1))], 3).await.expect("record");
    let got = store.key_usage(&tenant("acme"), &key_id(1), day.minus(10), day).await.expect("usage");
    assert_eq!(got, vec![DailyUsage { day: kept, allowed: 2, denied: 0 }, DailyUsage { day, allowed: 1, denied: 0 }]);
}

pub async fn changes_record_their_audit_events_atomically(store: Arc<dyn Store>) {
    let s1 = scope("acme", "s1", "one");
    let on_s1 = AuditTarget::Scope(scope_id("s1"));
    let created = audit_record("acme", AuditOperation::CreateScope, on_s1.clone(), "r1", 1);
    store.put_scope(&s1, None, &[], 1000, kept(&created, 1000)).await.expect("create scope");
    let k = key("acme", 1, &["s1"]);
    let on_k = AuditTarget::Key(k.id.clone());
    let mut key_created = audit_record("acme", AuditOperation::CreateKey, on_k.clone(), "r2", 2);
    key_created.actor = Actor::Keyscope;
    let stored = vec![scope_id("s1")];
    let write = KeyWrite { key: &k, expected_version: None, stored_scopes: &stored, audit: kept(&key_created, 1000) };
    store.put_key(write, 1000).await.expect("create key");
    let t = tenant("acme");
    let id = scope_id("s1");
    let holders = [(k.id.clone(), 1)];
    let deleted = audit_record("acme", AuditOperation::DeleteScope, on_s1.clone(), "r3", 3);
    let delete = ScopeDelete {
        tenant: &t,
        id: &id,
        expected_version: None,
        holders: &holders,
        now: SystemTime::UNIX_EPOCH,
        audit: kept(&deleted, 1000),
    };
    store.delete_scope(delete).await.expect("delete");
    let boot = audit_record("system", AuditOperation::CreateKey, AuditTarget::Key(key_id(5)), "r4", 4);
    store.claim_bootstrap(&key("system", 5, &[]), kept(&boot, 1000)).await.expect("claim");

    let page = audit_page(&*store, "acme", &AuditQuery { limit: 10, ..Default::default() }).await;
    assert_eq!(page.next, None);
    let got: Vec<&AuditRecord> = page.events.iter().map(|e| &e.record).collect();
    assert_eq!(got, vec![&deleted, &key_created, &created], "every field round-trips, newest first");
    assert!(page.events.windows(2).all(|w| w[0].id > w[1].id));
    for event in &page.events {
        assert_eq!(event.record.at, event.id.time());
    }
    assert_eq!(audit_requests(&*store, "system").await, ["r4"]);
    assert!(audit_requests(&*store, "globex").await.is_empty(), "logs are per tenant");
}

pub async fn refused_changes_record_no_audit_event(store: Arc<dyn Store>) {
    let refused = audit_record("acme", AuditOperation::UpdateKey, AuditTarget::Key(key_id(1)), "refused", 9);
    let no = kept(&refused, 1000);
    create_scope(&*store, &scope("acme", "s1", "one")).await;
    let k = key("acme", 1, &["s1"]);
    create_key(&*store, &k).await;
    let before = audit_requests(&*store, "acme").await;
    assert_eq!(before.len(), 2);
    let stored = vec![scope_id("s1")];
    let mut stale = k.clone();
    stale.version = 5;
    let r = store
        .put_key(KeyWrite { key: &stale, expected_version: Some(4), stored_scopes: &stored, audit: no }, 1000)
        .await;
    assert!(matches!(r, Err(StoreError::VersionConflict { .. })), "{r:?}");
    let r = store
        .put_key(KeyWrite { key: &key("acme", 2, &[]), expected_version: None, stored_scopes: &[], audit: no }, 1)
        .await;
    assert!(matches!(r, Err(StoreError::QuotaReached { .. })), "{r:?}");
    let missing = vec![scope_id("gone")];
    let lost = key("acme", 3, &["gone"]);
    let r =
        store.put_key(KeyWrite { key: &lost, expected_version: None, stored_scopes: &missing, audit: no }, 1000).await;
    assert!(matches!(r, Err(StoreError::ScopeMissing(_))), "{r:?}");
    let r = store.put_scope(&scope("acme", "s2", "ONE"), None, &[], 1000, no).await;
    assert!(matches!(r, Err(StoreError::AlreadyExists(_))), "{r:?}");
    let r = store.put_scope(&scope("acme", "s3", "three"), None, &[], 1, no).await;
    assert!(matches!(r, Err(StoreError::QuotaReached { .. })), "{r:?}");
    let t = tenant("acme");
    let id = scope_id("s1");
    let d = ScopeDelete {
        tenant: &t,
        id: &id,
        expected_version: None,
        holders: &[],
        now: SystemTime::UNIX_EPOCH,
        audit: no,
    };
    assert!(matches!(store.delete_scope(d).await, Err(StoreError::UsersChanged(_))));
    store.claim_bootstrap(&key("acme", 7, &[]), noted()).await.expect("first claim");
    let after_claim = audit_requests(&*store, "acme").await;
    assert_eq!(store.claim_bootstrap(&key("acme", 8, &[]), no).await.expect("claim"), Some(key_id(7)));
    assert_eq!(audit_requests(&*store, "acme").await, after_claim, "a refused change records nothing");
    assert!(!after_claim.contains(&"refused".to_owned()));
}

pub async fn audit_log_keeps_only_the_newest_events(store: Arc<dyn Store>) {
    for n in 0..7 {
        let s = scope("acme", &format!("s{n}"), &format!("l{n}"));
        let r =
            audit_record("acme", AuditOperation::CreateScope, AuditTarget::Scope(s.id.clone()), &format!("r{n}"), n);
        store.put_scope(&s, None, &[], 1000, kept(&r, 3)).await.expect("create");
    }
    assert_eq!(audit_requests(&*store, "acme").await, ["r6", "r5", "r4"]);
    let other = audit_record("globex", AuditOperation::CreateScope, AuditTarget::Scope(scope_id("g")), "g", 0);
    store.put_scope(&scope("globex", "g", "g"), None, &[], 1000, kept(&other, 3)).await.expect("create");
    assert_eq!(audit_requests(&*store, "acme").await, ["r6", "r5", "r4"], "each tenant has its own bound");
}

pub async fn audit_listing_pages_newest_first_with_filters(store: Arc<dyn Store>) {
    create_scope(&*store, &scope("acme", "s1", "one")).await;
    let base = audit_requests(&*store, "acme").await.len();
    assert_eq!(base, 1);
    // Times: 10, 20, ..., 80 ms; the last one is stamped before its predecessor (a clock
    // that stepped back) and still gets a newer id.
    for n in 1..=8u64 {
        let k = key("acme", n as usize, &[]);
        let ms = if n == 8 { 15 } else { n * 10 };
        let mut r =
            audit_record("acme", AuditOperation::UpdateKey, AuditTarget::Key(k.id.clone()), &format!("r{n}"), ms);
        r.target = AuditTarget::Key(key_id(if n % 2 == 0 { 2 } else { 1 }));
        if n >= 5 {
            r.actor = Actor::Keyscope;
        }
        let w = KeyWrite { key: &k, expected_version: None, stored_scopes: &[], audit: kept(&r, 1000) };
        store.put_key(w, 1000).await.expect("create");
    }
    let mut pages = Vec::new();
    let mut query = AuditQuery { limit: 3, ..Default::default() };
    loop {
        let page = audit_page(&*store, "acme", &query).await;
        assert!(page.events.len() <= 3);
        pages.push(page.events.iter().map(|e| e.record.request_id.to_string()).collect::<Vec<_>>());
        match page.next {
            Some(next) => query.before = Some(next),
            None => break,
        }
    }
    let all: Vec<String> = pages.concat();
    assert_eq!(all, ["r8", "r7", "r6", "r5", "r4", "r3", "r2", "r1", "noted"]);
    let ids = |page: AuditPage| page.events.iter().map(|e| e.record.request_id.to_string()).collect::<Vec<_>>();
    let newest: AuditEvent =
        audit_page(&*store, "acme", &AuditQuery { limit: 1, ..Default::default() }).await.events[0].clone();
    let seventh =
        audit_page(&*store, "acme", &AuditQuery { limit: 1, before: Some(newest.id), ..Default::default() }).await;
    assert!(newest.id > seventh.events[0].id, "ids grow even when the clock steps back");
    assert_eq!(newest.record.at, seventh.events[0].record.at, "its time is its predecessor's");

    let by_target = AuditQuery { limit: 10, target: Some(key_id(2).to_string()), ..Default::default() };
    assert_eq!(ids(audit_page(&*store, "acme", &by_target).await), ["r8", "r6", "r4", "r2"]);
    let by_actor = AuditQuery { limit: 10, actor: Some(Actor::Keyscope), ..Default::default() };
    assert_eq!(ids(audit_page(&*store, "acme", &by_actor).await), ["r8", "r7", "r6", "r5"]);
    let both = AuditQuery { limit: 1, ..by_target.clone() };
    let first = audit_page(&*store, "acme", &AuditQuery { actor: Some(Actor::Keyscope), ..both.clone() }).await;
    assert_eq!(ids(first.clone()), ["r8"]);
    let second = AuditQuery { before: first.next, actor: Some(Actor::Keyscope), ..both };
    let second = audit_page(&*store, "acme", &second).await;
    assert_eq!(ids(second.clone()), ["r6"]);
    assert_eq!(second.next, None, "no older event matches");
    let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms);
    let window = AuditQuery { limit: 10, since: Some(at(20)), until: Some(at(50)), ..Default::default() };
    assert_eq!(ids(audit_page(&*store, "acme", &window).await), ["r5", "r4", "r3", "r2"]);
    let inside = AuditQuery {
        limit: 10,
        since: Some(at(20) + Duration::from_micros(1)),
        until: Some(at(50) - Duration::from_micros(1)),
        ..Default::default()
    };
    assert_eq!(ids(audit_page(&*store, "acme", &inside).await), ["r4", "r3", "r2"], "bounds are whole milliseconds");
    let none = AuditQuery { limit: 10, before: Some(AuditId { ms: 0, seq: 0 }), ..Default::default() };
    assert_eq!(audit_page(&*store, "acme", &none).await, AuditPage::default());
    assert!(audit_page(&*store, "globex", &by_actor).await.events.is_empty());
}

/// Every contract case, by name; the macros below expand over this list.
#[macro_export]
macro_rules! contract_cases {
    ($callback:ident ! ($($args:tt)*)) => {
        $callback!($($args)*;
            keys_are_created_read_and_isolated_by_tenant,
            key_writes_are_guarded_by_version_and_write_nothing_when_refused,
            keys_naming_a_missing_scope_are_refused,
            tenant_quotas_are_enforced,
            key_listing_pages_by_id_with_filters,
            scope_index_follows_key_updates,
            scope_labels_are_unique_per_tenant_case_insensitively,
            scope_listing_pages_by_id,
            scope_delete_is_guarded_by_its_holders,
            bootstrap_is_claimed_once,
            a_bootstrap_claim_is_released_only_while_it_is_the_claimed_key,
            concurrent_key_writes_never_leave_a_key_on_a_deleted_scope,
            usage_adds_up_per_key_and_day_and_stays_in_its_tenant,
            last_use_is_the_latest_and_never_changes_the_key_record,
            keys_unused_since_an_instant_are_listed_for_review,
            usage_older_than_the_retention_is_dropped,
            changes_record_their_audit_events_atomically,
            refused_changes_record_no_audit_event,
            audit_log_keeps_only_the_newest_events,
            audit_listing_pages_newest_first_with_filters,
            rotation_source_networks_and_rate_limits_round_trip,
            tenant_policies_are_versioned_audited_and_isolated,
            principals_are_registered_changed_listed_and_isolated_by_tenant,
            deleted_principals_are_remembered_as_gone_until_registered_again,
            member_bindings_are_versioned_and_feed_principal_grants,
            deleting_a_scope_drops_its_member_bindings,
            principal_changes_record_their_audit_events,
            writes_judged_against_an_older_access_version_are_refused,
            a_scope_held_by_more_than_one_batch_leaves_its_keys_in_judged_batches,
            a_holder_added_between_batches_is_refused_until_the_delete_is_judged_again,
        );
    };
}

pub async fn rotation_source_networks_and_rate_limits_round_trip(store: Arc<dyn Store>) {
    create_scope(&*store, &scope("acme", "s1", "one")).await;
    let plain = key("acme", 1, &["s1"]);
    create_key(&*store, &plain).await;
    let mut k = plain.clone();
    k.version = 2;
    k.previous_secret = Some(PreviousSecret {
        hash: SecretHash::from_bytes([9; 32]),
        expires_at: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5),
    });
    k.secret_hash = SecretHash::from_bytes([8; 32]);
    k.rotated_at = Some(SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, 7));
    k.allowed_cidrs =
        parse_cidrs("allowed_cidrs", &["10.0.0.0/8".to_owned(), "2001:db8::/32".to_owned()]).expect("cidrs");
    k.rate_limit = Some(RateLimit::new("rate_limit", 2.5, 10).expect("rate limit"));
    let stored = [scope_id("s1")];
    let write = KeyWrite { key: &k, expected_version: Some(1), stored_scopes: &stored, audit: noted() };
    store.put_key(write, 100).await.expect("update");
    let read = store.get_key(&tenant("acme"), &k.id).await.expect("get").expect("found");
    assert_eq!(*read, k, "every key-policy field comes back as written");
    let checked = store.credential(&k.id).await.expect("credential").expect("found");
    assert_eq!(*checked.key, k, "the check path reads the same record");
    // A second rotation with no grace drops the previous secret.
    let mut again = k.clone();
    again.version = 3;
    again.previous_secret = None;
    again.allowed_cidrs.clear();
    again.rate_limit = None;
    let write = KeyWrite { key: &again, expected_version: Some(2), stored_scopes: &stored, audit: noted() };
    store.put_key(write, 100).await.expect("update");
    let read = store.credential(&k.id).await.expect("credential").expect("found");
    assert_eq!(*read.key, again);
}

pub async fn tenant_policies_are_versioned_audited_and_isolated(store: Arc<dyn Store>) {
    assert_eq!(store.get_tenant_policy(&tenant("acme")).await.expect("get"), None);
    let policy = |version, days: Option<u64>| TenantPolicy {
        tenant: tenant("acme"),
        max_key_lifetime: days.map(|d| Duration::from_secs(d * 86_400)),
        version,
        updated_at: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 0),
    };
    let event = audit_record("acme", AuditOperation::SetTenantPolicy, AuditTarget::Tenant(tenant("acme")), "p1", 1);
    let first = policy(1, Some(90));
    store.put_tenant_policy(&first, 0, kept(&event, 100)).await.expect("create");
    assert_eq!(store.get_tenant_policy(&tenant("acme")).await.expect("get"), Some(first.clone()));
    assert_eq!(store.get_tenant_policy(&tenant("globex")).await.expect("get"), None, "per tenant");
    // A stale version is refused and writes nothing, not even its event.
    let stale = audit_record("acme", AuditOperation::SetTenantPolicy, AuditTarget::Tenant(tenant("acme")), "p2", 2);
    let refused = store.put_tenant_policy(&policy(2, Some(1)), 0, kept(&stale, 100)).await;
    assert!(matches!(refused, Err(StoreError::VersionConflict { expected: 0, found: 1, .. })), "{refused:?}");
    assert_eq!(store.get_tenant_policy(&tenant("acme")).await.expect("get"), Some(first));
    let cleared = policy(2, None);
    let event3 = audit_record("acme", AuditOperation::SetTenantPolicy, AuditTarget::Tenant(tenant("acme")), "p3", 3);
    store.put_tenant_policy(&cleared, 1, kept(&event3, 100)).await.expect("update");
    assert_eq!(store.get_tenant_policy(&tenant("acme")).await.expect("get"), Some(cleared));
    assert_eq!(audit_requests(&*store, "acme").await, ["p3", "p1"]);
    let page = audit_page(&*store, "acme", &AuditQuery { limit: 1, ..Default::default() }).await;
    assert_eq!(page.events[0].record.target, AuditTarget::Tenant(tenant("acme")));
    assert_eq!(page.events[0].record.operation, AuditOperation::SetTenantPolicy);
}

pub fn subject(s: &str) -> Subject {
    s.parse().expect("subject")
}

pub fn role(r: &str) -> Role {
    r.parse().expect("role")
}

pub fn principal(t: &str, s: &str, roles: &[&str], version: u64) -> Principal {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    Principal {
        tenant: tenant(t),
        subject: subject(s),
        roles: roles.iter().map(|r| role(r)).collect(),
        enabled: true,
        version,
        created_at: at,
        updated_at: at,
    }
}

pub fn members(subjects: &[&str], roles: &[&str], version: u64) -> Members {
    Members {
        subjects: subjects.iter().map(|s| subject(s)).collect(),
        roles: roles.iter().map(|r| role(r)).collect(),
        version,
    }
}

fn grant_ids(grants: &PrincipalGrants) -> Vec<String> {
    grants.scope_ids.iter().map(ToString::to_string).collect()
}

fn stored_grant_ids(grants: &PrincipalGrants) -> Vec<String> {
    let mut ids: Vec<String> = grants.scopes.iter().map(|s| s.id.to_string()).collect();
    ids.sort();
    ids
}

pub async fn principals_are_registered_changed_listed_and_isolated_by_tenant(store: Arc<dyn Store>) {
    let alice = principal("acme", "alice@example.com", &["admin", "viewer"], 1);
    store.put_principal(&alice, None, noted()).await.expect("register");
    assert!(matches!(store.put_principal(&alice, None, noted()).await, Err(StoreError::AlreadyExists(_))));
    let got = store.get_principal(&tenant("acme"), &alice.subject).await.expect("get").expect("present");
    assert_eq!(*got, alice, "read back exactly");
    assert!(store.get_principal(&tenant("globex"), &alice.subject).await.expect("get").is_none(), "per tenant");
    let mut changed = principal("acme", "alice@example.com", &["viewer"], 2);
    changed.enabled = false;
    assert!(matches!(
        store.put_principal(&changed, Some(7), noted()).await,
        Err(StoreError::VersionConflict { expected: 7, found: 1, .. })
    ));
    store.put_principal(&changed, Some(1), noted()).await.expect("change");
    let got = store.get_principal(&tenant("acme"), &alice.subject).await.expect("get").expect("present");
    assert_eq!(*got, changed);
    let nobody = principal("acme", "nobody", &[], 2);
    assert!(matches!(store.put_principal(&nobody, Some(1), noted()).await, Err(StoreError::NotFound(_))));
    for s in ["carol", "bob", "dave"] {
        store.put_principal(&principal("acme", s, &[], 1), None, noted()).await.expect("register");
    }
    store.put_principal(&principal("globex", "zed", &[], 1), None, noted()).await.expect("register");
    let page = store.list_principals(&tenant("acme"), None, 2).await.expect("list");
    let names: Vec<&str> = page.iter().map(|p| p.subject.as_str()).collect();
    assert_eq!(names, ["alice@example.com", "bob"]);
    let page = store.list_principals(&tenant("acme"), Some(&subject("bob")), 10).await.expect("list");
    let names: Vec<&str> = page.iter().map(|p| p.subject.as_str()).collect();
    assert_eq!(names, ["carol", "dave"]);
}

pub async fn deleted_principals_are_remembered_as_gone_until_registered_again(store: Arc<dyn Store>) {
    let t = tenant("acme");
    let bob = principal("acme", "bob", &["ops"], 1);
    let grants = store.principal_grants(&t, &bob.subject, &[]).await.expect("grants");
    assert_eq!(grants.owner, Owner::Unregistered);
    store.put_principal(&bob, None, noted()).await.expect("register");
    let grants = store.principal_grants(&t, &bob.subject, &[]).await.expect("grants");
    assert_eq!(grants.owner, Owner::Registered(Arc::new(bob.clone())));
    assert!(matches!(
        store.delete_principal(&t, &bob.subject, Some(3), noted()).await,
        Err(StoreError::VersionConflict { .. })
    ));
    store.delete_principal(&t, &bob.subject, Some(1), noted()).await.expect("delete");
    assert!(store.get_principal(&t, &bob.subject).await.expect("get").is_none());
    assert!(store.list_principals(&t, None, 10).await.expect("list").is_empty());
    assert_eq!(store.principal_grants(&t, &bob.subject, &[]).await.expect("grants").owner, Owner::Gone);
    assert!(matches!(store.delete_principal(&t, &bob.subject, None, noted()).await, Err(StoreError::NotFound(_))));
    store.put_principal(&bob, None, noted()).await.expect("register again");
    assert!(matches!(store.principal_grants(&t, &bob.subject, &[]).await.expect("grants").owner, Owner::Registered(_)));
}

pub async fn member_bindings_are_versioned_and_feed_principal_grants(store: Arc<dyn Store>) {
    let t = tenant("acme");
    for (id, label) in [("s1", "one"), ("s2", "two"), ("s3", "three")] {
        create_scope(&*store, &scope("acme", id, label)).await;
    }
    create_scope(&*store, &scope("globex", "s9", "nine")).await;
    assert_eq!(store.get_members(&t, &scope_id("s1")).await.expect("members"), Members::default());
    let by_subject = members(&["alice"], &[], 1);
    assert!(matches!(
        store.set_members(&t, &scope_id("s1"), &by_subject, 4, true, noted()).await,
        Err(StoreError::VersionConflict { expected: 4, found: 0, .. })
    ));
    store.set_members(&t, &scope_id("s1"), &by_subject, 0, true, noted()).await.expect("bind s1");
    store.set_members(&t, &scope_id("s2"), &members(&[], &["ops"], 1), 0, true, noted()).await.expect("bind s2");
    store
        .set_members(&t, &scope_id("s3"), &members(&["bob"], &["viewer"], 1), 0, true, noted())
        .await
        .expect("bind s3");
    // A stored scope must exist (a binding never outlives a scope deleted meanwhile).
    assert!(matches!(
        store.set_members(&t, &scope_id("s8"), &members(&["alice"], &[], 1), 0, true, noted()).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.get_members(&t, &scope_id("s8")).await.expect("members"), Members::default());
    // A builtin scope id binds too; the store holds no record of it.
    store
        .set_members(&t, &scope_id("read-only"), &members(&[], &["ops"], 1), 0, false, noted())
        .await
        .expect("builtin");
    store
        .set_members(&tenant("globex"), &scope_id("s9"), &members(&["alice"], &["ops"], 1), 0, true, noted())
        .await
        .expect("bind");
    assert_eq!(store.get_members(&t, &scope_id("s3")).await.expect("members"), members(&["bob"], &["viewer"], 1));

    // By subject only (an unregistered subject still has its subject bindings).
    let grants = store.principal_grants(&t, &subject("alice"), &[]).await.expect("grants");
    assert_eq!(grant_ids(&grants), ["s1"]);
    assert_eq!(stored_grant_ids(&grants), ["s1"]);
    // Roles asked for.
    let grants = store.principal_grants(&t, &subject("alice"), &[role("ops")]).await.expect("grants");
    assert_eq!(grant_ids(&grants), ["read-only", "s1", "s2"]);
    assert_eq!(stored_grant_ids(&grants), ["s1", "s2"], "builtin ids are not stored");
    // Roles held by the registered principal.
    store.put_principal(&principal("acme", "carol", &["viewer", "ops"], 1), None, noted()).await.expect("register");
    let grants = store.principal_grants(&t, &subject("carol"), &[]).await.expect("grants");
    assert_eq!(grant_ids(&grants), ["read-only", "s2", "s3"]);

    // Replacing the bindings moves the indexes.
    store.set_members(&t, &scope_id("s1"), &members(&["bob"], &["viewer"], 2), 1, true, noted()).await.expect("rebind");
    let grants = store.principal_grants(&t, &subject("alice"), &[]).await.expect("grants");
    assert!(grant_ids(&grants).is_empty(), "alice is no longer bound");
    let grants = store.principal_grants(&t, &subject("bob"), &[]).await.expect("grants");
    assert_eq!(grant_ids(&grants), ["s1", "s3"]);
    store.set_members(&t, &scope_id("s1"), &members(&[], &[], 3), 2, true, noted()).await.expect("unbind");
    assert_eq!(store.get_members(&t, &scope_id("s1")).await.expect("members"), members(&[], &[], 3));
    let grants = store.principal_grants(&t, &subject("bob"), &[]).await.expect("grants");
    assert_eq!(grant_ids(&grants), ["s3"]);
}

pub async fn deleting_a_scope_drops_its_member_bindings(store: Arc<dyn Store>) {
    let t = tenant("acme");
    create_scope(&*store, &scope("acme", "s1", "one")).await;
    store.set_members(&t, &scope_id("s1"), &members(&["alice"], &["ops"], 1), 0, true, noted()).await.expect("bind");
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
    let id = scope_id("s1");
    let delete = ScopeDelete { tenant: &t, id: &id, expected_version: None, holders: &[], now, audit: noted() };
    store.delete_scope(delete).await.expect("delete");
    assert_eq!(store.get_members(&t, &id).await.expect("members"), Members::default());
    let grants = store.principal_grants(&t, &subject("alice"), &[role("ops")]).await.expect("grants");
    assert!(grant_ids(&grants).is_empty(), "no binding outlives its scope");
}

pub async fn principal_changes_record_their_audit_events(store: Arc<dyn Store>) {
    let t = tenant("acme");
    let alice = principal("acme", "alice", &[], 1);
    let put = audit_record("acme", AuditOperation::PutPrincipal, AuditTarget::Principal(subject("alice")), "r1", 1);
    store.put_principal(&alice, None, kept(&put, 100)).await.expect("register");
    let refused = audit_record("acme", AuditOperation::PutPrincipal, AuditTarget::Principal(subject("alice")), "r2", 2);
    assert!(store.put_principal(&alice, None, kept(&refused, 100)).await.is_err());
    let bind =
        audit_record("acme", AuditOperation::SetScopeMembers, AuditTarget::Scope(scope_id("read-only")), "r3", 3);
    store
        .set_members(&t, &scope_id("read-only"), &members(&["alice"], &[], 1), 0, false, kept(&bind, 100))
        .await
        .expect("bind");
    let delete =
        audit_record("acme", AuditOperation::DeletePrincipal, AuditTarget::Principal(subject("alice")), "r4", 4);
    store.delete_principal(&t, &subject("alice"), None, kept(&delete, 100)).await.expect("delete");
    let page = audit_page(&*store, "acme", &AuditQuery { limit: 10, ..Default::default() }).await;
    let seen: Vec<(AuditOperation, String, String)> = page
        .events
        .iter()
        .map(|e| (e.record.operation, e.record.target.id().to_owned(), e.record.request_id.to_string()))
        .collect();
    assert_eq!(
        seen,
        [
            (AuditOperation::DeletePrincipal, "alice".to_owned(), "r4".to_owned()),
            (AuditOperation::SetScopeMembers, "read-only".to_owned(), "r3".to_owned()),
            (AuditOperation::PutPrincipal, "alice".to_owned(), "r1".to_owned()),
        ],
        "refused changes record nothing"
    );
    assert_eq!(page.events[2].record.target.kind(), "principal");
}

/// One `#[tokio::test]` per case; `$factory` is an async expression yielding a fresh empty
/// store and a guard that keeps its backend alive for the test.
#[macro_export]
macro_rules! contract_tests {
    ($backend:ident, $factory:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::contract_cases!(contract_each!($factory));
        }
    };
}

#[macro_export]
macro_rules! contract_each {
    ($factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $factory.await;
                contract::$name(store).await;
            }
        )*
    };
}

/// One test running every case in turn, each on a fresh store from `$factory` (which gets the
/// shared `$setup` value): for backends too costly to start per case, like a cluster.
#[macro_export]
macro_rules! contract_suite {
    ($test:ident, $setup:expr, $factory:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let shared = $setup;
            $crate::contract_cases!(contract_in_turn!(shared, $factory));
        }
    };
}

#[macro_export]
macro_rules! contract_in_turn {
    ($shared:ident, $factory:expr; $($name:ident),* $(,)?) => {
        $(
            contract::$name(($factory)(&$shared).await).await;
        )*
    };
}

/// Every judged change moves its tenant's access version on; a change judged against an
/// older version writes nothing; unjudged changes and another tenant's do not move it.
pub async fn writes_judged_against_an_older_access_version_are_refused(store: Arc<dyn Store>) {
    let t = tenant("acme");
    let guarded = |v: u64| AuditWrite { access_version: Some(v), ..noted() };
    let start = store.access_version(&t).await.expect("version");
    create_scope(store.as_ref(), &scope("acme", "s0", "zero")).await;
    assert_eq!(store.access_version(&t).await.expect("version"), start, "an unjudged change does not move it");
    store.put_scope(&scope("acme", "s1", "one"), None, &[], 1000, guarded(start)).await.expect("judged scope");
    let judged = store.access_version(&t).await.expect("version");
    assert!(judged > start, "a judged change moves the version on");
    let other = tenant("other");
    let theirs = store.access_version(&other).await.expect("version");
    store.put_scope(&scope("other", "s1", "one"), None, &[], 1000, guarded(theirs)).await.expect("other tenant");
    assert_eq!(store.access_version(&t).await.expect("version"), judged, "other tenants do not move it");

    let k = key("acme", 1, &["s1"]);
    let stored = k.scope_ids.clone();
    let write = |v: u64| KeyWrite { key: &k, expected_version: None, stored_scopes: &stored, audit: guarded(v) };
    // Someone else changes the tenant between the judgment and the write.
    store.put_scope(&scope("acme", "s2", "two"), None, &[], 1000, guarded(judged)).await.expect("judged scope");
    assert_eq!(store.put_key(write(judged), 1000).await, Err(StoreError::AccessChanged));
    assert!(store.get_key(&t, &k.id).await.expect("read").is_none(), "nothing written");
    let refused = store.set_members(&t, &scope_id("s1"), &members(&["alice"], &[], 1), 0, true, guarded(judged)).await;
    assert_eq!(refused, Err(StoreError::AccessChanged));
    assert!(store.get_members(&t, &scope_id("s1")).await.expect("read").is_empty(), "nothing bound");
    let refused = store.put_principal(&principal("acme", "alice", &[], 1), None, guarded(judged)).await;
    assert_eq!(refused, Err(StoreError::AccessChanged));
    // Judged again, against the current version, it goes through.
    let now = store.access_version(&t).await.expect("version");
    store.put_key(write(now), 1000).await.expect("judged against the current version");
    assert!(store.access_version(&t).await.expect("version") > now);
}

/// The write of a change judged against access version `v`.
fn judged_at(v: u64) -> AuditWrite<'static> {
    AuditWrite { access_version: Some(v), ..noted() }
}

/// Makes scope `s1` (and `s2`) in `acme` and keys `0..n` holding both; returns the holders as
/// a delete guards them.
async fn held_by(store: &dyn Store, n: usize) -> Vec<(KeyId, u64)> {
    create_scope(store, &scope("acme", "s1", "one")).await;
    create_scope(store, &scope("acme", "s2", "two")).await;
    for i in 0..n {
        create_key(store, &key("acme", i, &["s1", "s2"])).await;
    }
    (0..n).map(|i| (key_id(i), 1)).collect()
}

/// A forced delete of a scope held by more keys than one write takes: each batch takes it
/// from its keys only if they still hold it at the version given and the tenant's access is
/// still what the delete was judged against, moves that version on (returning it) and records
/// no audit event; the scope stays until the last write, which deletes it with its event.
pub async fn a_scope_held_by_more_than_one_batch_leaves_its_keys_in_judged_batches(store: Arc<dyn Store>) {
    let t = tenant("acme");
    let id = scope_id("s1");
    let n = DETACH_BATCH + 3;
    let holders = held_by(&*store, n).await;
    create_key(&*store, &key("acme", n, &["s2"])).await;
    let (batch, rest) = holders.split_at(DETACH_BATCH);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
    let judged = store.access_version(&t).await.expect("version");
    let detach = ScopeDetach { tenant: &t, id: &id, holders: batch, now, access_version: Some(judged) };
    // Another judged change lands between the judgment and the batch: nothing is written.
    store.put_scope(&scope("acme", "s3", "three"), None, &[], 1000, judged_at(judged)).await.expect("judged scope");
    assert_eq!(store.detach_scope(detach).await, Err(StoreError::AccessChanged));
    assert_eq!(store.scope_holders(&t, &id).await.expect("holders").len(), n, "nothing detached");
    let judged = store.access_version(&t).await.expect("version");
    let detach = ScopeDetach { access_version: Some(judged), ..detach };
    // A key not holding the scope, or at another version, refuses the whole batch.
    let stranger = [(key_id(0), 1), (key_id(n), 1)];
    let refused = store.detach_scope(ScopeDetach { holders: &stranger, ..detach }).await;
    assert_eq!(refused, Err(StoreError::UsersChanged(id.clone())));
    let moved = [(key_id(0), 1), (key_id(1), 7)];
    let refused = store.detach_scope(ScopeDetach { holders: &moved, ..detach }).await;
    assert_eq!(refused, Err(StoreError::UsersChanged(id.clone())));
    assert_eq!(store.access_version(&t).await.expect("version"), judged, "refused batches move nothing");

    let events = audit_requests(&*store, "acme").await;
    let after = store.detach_scope(detach).await.expect("batch");
    assert!(after > judged, "a batch is a judged change");
    assert_eq!(store.access_version(&t).await.expect("version"), after);
    assert_eq!(audit_requests(&*store, "acme").await, events, "a batch records no event");
    let first = store.get_key(&t, &key_id(0)).await.expect("get").expect("present");
    assert_eq!((first.scope_ids.clone(), first.version, first.updated_at), (vec![scope_id("s2")], 2, now));
    let untouched = store.get_key(&t, &key_id(n - 1)).await.expect("get").expect("present");
    assert_eq!((untouched.scope_ids.clone(), untouched.version), (vec![scope_id("s1"), scope_id("s2")], 1));
    assert!(store.get_scope(&t, &id).await.expect("get").is_some(), "the scope stays until the last write");
    let left: Vec<(KeyId, u64)> =
        store.scope_holders(&t, &id).await.expect("holders").iter().map(|k| (k.id.clone(), k.version)).collect();
    assert_eq!(left, rest, "the index follows");
    let by_scope = KeyQuery { scope: Some(id.clone()), ..query(10) };
    assert_eq!(store.list_keys(&t, &by_scope).await.expect("list").len(), rest.len());
    // The same batch again: its keys no longer hold the scope.
    let again = store.detach_scope(ScopeDetach { access_version: Some(after), ..detach }).await;
    assert_eq!(again, Err(StoreError::UsersChanged(id.clone())));

    // The last write, guarded by the version the batch left, takes the rest and deletes it.
    let record = audit_record("acme", AuditOperation::DeleteScope, AuditTarget::Scope(id.clone()), "deleted", 5);
    let last = ScopeDelete {
        tenant: &t,
        id: &id,
        expected_version: Some(1),
        holders: rest,
        now,
        audit: AuditWrite { access_version: Some(judged), ..kept(&record, 1000) },
    };
    assert_eq!(store.delete_scope(last).await, Err(StoreError::AccessChanged), "the version before the batch");
    let last = ScopeDelete { audit: AuditWrite { access_version: Some(after), ..last.audit }, ..last };
    store.delete_scope(last).await.expect("delete");
    assert!(store.get_scope(&t, &id).await.expect("get").is_none());
    assert!(store.scope_holders(&t, &id).await.expect("holders").is_empty());
    for i in 0..n {
        let k = store.get_key(&t, &key_id(i)).await.expect("get").expect("present");
        assert_eq!(k.scope_ids, vec![scope_id("s2")], "key {i}");
    }
    let requests = audit_requests(&*store, "acme").await;
    assert_eq!((requests.len(), requests.first().map(String::as_str)), (events.len() + 1, Some("deleted")));
}

/// A key given the scope between two batches of its delete moves the access version on: the
/// rest of the delete, planned on the old holders, is refused until it is judged again on the
/// keys holding the scope then, and then finishes. Once the scope is deleted, no key may
/// name it.
pub async fn a_holder_added_between_batches_is_refused_until_the_delete_is_judged_again(store: Arc<dyn Store>) {
    let t = tenant("acme");
    let id = scope_id("s1");
    let n = DETACH_BATCH + 1;
    let holders = held_by(&*store, n).await;
    let (batch, rest) = holders.split_at(DETACH_BATCH);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
    let judged = store.access_version(&t).await.expect("version");
    let detach = ScopeDetach { tenant: &t, id: &id, holders: batch, now, access_version: Some(judged) };
    let after = store.detach_scope(detach).await.expect("batch");
    // Meanwhile, a judged create gives a new key the scope.
    let newcomer = key("acme", n, &["s1"]);
    let stored = newcomer.scope_ids.clone();
    let create = KeyWrite { key: &newcomer, expected_version: None, stored_scopes: &stored, audit: judged_at(after) };
    store.put_key(create, 1000).await.expect("a key made between batches");
    let last = ScopeDelete { tenant: &t, id: &id, expected_version: None, holders: rest, now, audit: judged_at(after) };
    assert_eq!(store.delete_scope(last).await, Err(StoreError::AccessChanged));
    let current = store.access_version(&t).await.expect("version");
    let last = ScopeDelete { audit: judged_at(current), ..last };
    assert_eq!(store.delete_scope(last).await, Err(StoreError::UsersChanged(id.clone())), "the holders changed");
    assert!(store.get_scope(&t, &id).await.expect("get").is_some(), "nothing deleted");

    let holding: Vec<(KeyId, u64)> =
        store.scope_holders(&t, &id).await.expect("holders").iter().map(|k| (k.id.clone(), k.version)).collect();
    assert_eq!(holding, [rest[0].clone(), (newcomer.id.clone(), 1)]);
    store.delete_scope(ScopeDelete { holders: &holding, ..last }).await.expect("judged again, the delete finishes");
    let k = store.get_key(&t, &newcomer.id).await.expect("get").expect("present");
    assert!(k.scope_ids.is_empty(), "the newcomer left the scope too");
    let late = key("acme", n + 1, &["s1"]);
    let stored = late.scope_ids.clone();
    let create = KeyWrite { key: &late, expected_version: None, stored_scopes: &stored, audit: noted() };
    assert_eq!(store.put_key(create, 1000).await, Err(StoreError::ScopeMissing(id.clone())));
}
