//! The bootstrap admin key (README, "Bootstrap"): made once, from a configured token or a new one,
//! and refused at start when the configured token's key can no longer administer. A start
//! that cannot serve or cannot show the token leaves no key behind; no principal anybody
//! registers bounds the key; replicas starting together with one configured token all start.

#![allow(clippy::panic)] // tests fail by panicking

mod common;
#[path = "common/interposed.rs"]
mod interposed;
#[path = "common/process.rs"]
mod process;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::{sync::Arc, time::Duration};

use common::TestServer;
use interposed::{Hooks, Interposed};
use keyscope::{
    domain::{
        Action, Actor, AuditOperation, AuditRecord, AuditTarget, Key, KeyState, Metadata, Module, Pepper, RequestId,
        Secret, Tenant, TokenFormat,
    },
    grpc::pb,
    service::{Bootstrap, Builtins, Keyscope, ServiceError},
    store::{AuditQuery, AuditWrite, KeyWrite, MemoryStore, RedisStore, Store},
};
use process::ServerOptions;
use redis_server::RedisServer;

fn core_with(store: Arc<dyn Store>, pepper: &[u8]) -> Keyscope {
    Keyscope::new(
        store,
        Builtins::new(&[]).expect("builtins"),
        TokenFormat::new("ks").expect("prefix"),
        Pepper::new(pepper).expect("pepper"),
    )
}

fn core(store: Arc<dyn Store>) -> Keyscope {
    core_with(store, b"bootstrap-test-pepper")
}

fn new_token() -> Secret {
    let tokens = TokenFormat::new("ks").expect("prefix");
    tokens.issue(&tokens.new_key_id().expect("random")).expect("random").1
}

#[tokio::test]
async fn a_created_bootstrap_key_is_made_once_per_store() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let Bootstrap::Created(id, token) = core(store.clone()).ensure_bootstrap(None).await.expect("first start") else {
        panic!("a fresh store gets a new bootstrap key")
    };
    // A second replica (or restart) on the same store finds it and prints nothing.
    match core(store.clone()).ensure_bootstrap(None).await.expect("second start") {
        Bootstrap::Existing(existing) => assert_eq!(existing, id),
        other => panic!("expected the existing key, got {other:?}"),
    }
    let caller = core(store).authorize(Some(token.expose()), "acme", &Module::scopes(), Action::Delete).await;
    assert!(
        caller.is_ok_and(|c| c.key.id == id && c.tenant.as_str() == "acme"),
        "the bootstrap key administers any tenant"
    );
}

#[tokio::test]
async fn a_configured_token_becomes_the_admin_key_and_is_refused_once_revoked() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let tokens = TokenFormat::new("ks").expect("prefix");
    let text = new_token();
    let configured = Some(text.expose());
    assert!(matches!(core(store.clone()).ensure_bootstrap(configured).await, Ok(Bootstrap::ConfiguredCreated(_))));
    assert!(matches!(core(store.clone()).ensure_bootstrap(configured).await, Ok(Bootstrap::Configured(_))));

    let service = core(store.clone());
    let caller = service.authorize(configured, "", &Module::keys(), Action::Update).await.expect("admin");
    let id = caller.key.id.clone();
    service.set_key_state(&caller, &id, None, KeyState::Revoked).await.expect("revoke");
    let restart = core(store.clone()).ensure_bootstrap(configured).await;
    assert!(
        matches!(&restart, Err(ServiceError::FailedPrecondition(m)) if m.contains("not an active `system` admin key")),
        "{restart:?}"
    );

    // The same key id with another secret is refused too, and the message shows no secret.
    let (_, other) = tokens.issue(&id).expect("random");
    let refused = core(store).ensure_bootstrap(Some(other.expose())).await;
    let message = format!("{:?}", refused.expect_err("different secret"));
    assert!(message.contains("different secret") && !message.contains(other.expose()), "{message}");
}

/// Every operation a tenant's audit log recorded, oldest first.
async fn operations(store: &dyn Store, tenant: &str) -> Vec<AuditOperation> {
    let query = AuditQuery { limit: 100, ..Default::default() };
    let page = store.list_audit(&tenant.parse().expect("tenant"), &query).await.expect("audit");
    page.events.iter().rev().map(|e| e.record.operation).collect()
}

/// A created key whose token could not be shown is released: the store is as if it had never
/// been claimed (the removal is audited), and the next start makes a new one.
async fn an_unshown_bootstrap_key_is_released(store: Arc<dyn Store>) {
    let first = core(store.clone());
    let Bootstrap::Created(id, token) = first.ensure_bootstrap(None).await.expect("first start") else {
        panic!("a fresh store gets a new bootstrap key")
    };
    assert!(first.release_bootstrap(&id).await.expect("release"), "the claimed key is removed");
    assert!(store.credential(&id).await.expect("read").is_none(), "the key is gone");
    assert!(store.get_key(&Tenant::system(), &id).await.expect("read").is_none());
    let refused = first.authorize(Some(token.expose()), "", &Module::keys(), Action::Read).await;
    assert!(matches!(refused, Err(ServiceError::Unauthenticated(_))), "{refused:?}");
    assert!(!first.release_bootstrap(&id).await.expect("release again"), "nothing left to release");
    assert_eq!(operations(&*store, "system").await, [AuditOperation::CreateKey, AuditOperation::DeleteKey]);

    let Bootstrap::Created(again, token) = core(store.clone()).ensure_bootstrap(None).await.expect("next start") else {
        panic!("the next start makes a new key, it does not find the released one")
    };
    assert_ne!(again, id);
    assert!(core(store.clone()).authorize(Some(token.expose()), "", &Module::keys(), Action::Read).await.is_ok());
    // Only the key the marker names is ever released.
    assert!(!core(store.clone()).release_bootstrap(&id).await.expect("release the old id"));
    assert!(store.credential(&again).await.expect("read").is_some());
}

#[tokio::test]
async fn an_unshown_bootstrap_key_is_released_on_memory() {
    an_unshown_bootstrap_key_is_released(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unshown_bootstrap_key_is_released_on_redis() {
    let redis = RedisServer::start();
    an_unshown_bootstrap_key_is_released(Arc::new(redis_server::store(redis.url(), false).await)).await;
}

/// Replicas started together, each with the same configured token: every one starts, exactly
/// one creates the key, and the token administers.
async fn concurrent_first_starts(stores: Vec<Arc<dyn Store>>) {
    let text = new_token();
    let starts: Vec<_> = stores
        .iter()
        .map(|store| {
            let (store, text) = (store.clone(), text.clone());
            tokio::spawn(async move { core(store).ensure_bootstrap(Some(text.expose())).await })
        })
        .collect();
    let mut created = 0;
    for start in starts {
        match start.await.expect("join") {
            Ok(Bootstrap::ConfiguredCreated(_)) => created += 1,
            Ok(Bootstrap::Configured(_)) => {}
            other => panic!("a replica failed to start: {other:?}"),
        }
    }
    assert_eq!(created, 1, "exactly one replica creates the key");
    let admin = core(stores[0].clone()).authorize(Some(text.expose()), "acme", &Module::keys(), Action::Create).await;
    assert!(admin.is_ok(), "{admin:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_starts_with_a_configured_token_all_succeed_on_memory() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    concurrent_first_starts(Gated::replicas(vec![store; 4])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_starts_with_a_configured_token_all_succeed_on_redis() {
    let redis = RedisServer::start();
    let options = redis_server::options(redis.url(), false);
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..4 {
        // One connection per replica, all under one prefix.
        stores.push(Arc::new(RedisStore::connect(options.clone()).await.expect("connect")));
    }
    concurrent_first_starts(Gated::replicas(stores)).await;
}

/// One replica's store, whose first key read waits until every replica has made its first
/// read: they all see "no key yet" before any of them creates it, so concurrent first starts
/// race every time rather than by luck.
struct Gated;

struct Gate {
    barrier: tokio::sync::Barrier,
    readers: usize,
    reads: std::sync::atomic::AtomicUsize,
}

impl Gated {
    fn replicas(stores: Vec<Arc<dyn Store>>) -> Vec<Arc<dyn Store>> {
        let gate = Arc::new(Gate {
            barrier: tokio::sync::Barrier::new(stores.len()),
            readers: stores.len(),
            reads: Default::default(),
        });
        stores.into_iter().map(|inner| Arc::new(Interposed { inner, hooks: gate.clone() }) as Arc<dyn Store>).collect()
    }
}

#[async_trait::async_trait]
impl Hooks for Arc<Gate> {
    async fn after_credential(&self) {
        if self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < self.readers {
            self.barrier.wait().await;
        }
    }
}

/// The bootstrap key has no owner, so a `system` principal named like the owner older
/// versions gave it (or like anything) bounds nothing: registered with nothing bound,
/// disabled, or deleted (which leaves a marker), the key still administers.
async fn a_principal_named_like_the_owner_bounds_nothing(server: &TestServer) {
    let list = pb::ListKeysRequest { tenant: "system".into(), ..Default::default() };
    let listed = server.keys().list_keys(list).await.expect("list system keys").into_inner().keys;
    let bootstrap = listed.iter().find(|k| k.description == "bootstrap admin key").expect("the bootstrap key");
    assert_eq!(bootstrap.owner, "", "the bootstrap key has no owner");

    let administers = || async {
        let scope = pb::CreateScopeRequest {
            tenant: "acme".into(),
            label: format!("s{}", rand_suffix()),
            mode: pb::ScopeMode::Allow.into(),
            rules: Some(common::read_rules(&["courses"])),
            ..Default::default()
        };
        let created = server.scopes().create_scope(scope).await.map(|_| ());
        let listed = server
            .principals()
            .list_principals(pb::ListPrincipalsRequest { tenant: "system".into(), ..Default::default() })
            .await
            .map(|_| ());
        created.and(listed).map_err(|status| status.message().to_owned())
    };
    server.principal("system", "keyscope", &[]).await;
    assert_eq!(administers().await, Ok(()), "a registered principal `keyscope` with nothing bound bounds nothing");
    server
        .principals()
        .disable_principal(pb::PrincipalStateRequest { tenant: "system".into(), subject: "keyscope".into() })
        .await
        .expect("disable");
    assert_eq!(administers().await, Ok(()), "nor does a disabled one");
    server
        .principals()
        .delete_principal(pb::DeletePrincipalRequest {
            tenant: "system".into(),
            subject: "keyscope".into(),
            version: 0,
        })
        .await
        .expect("delete");
    assert_eq!(administers().await, Ok(()), "nor does the marker a deleted one leaves");
    // A restart finds the key usable.
    assert!(matches!(server.core.ensure_bootstrap(None).await, Ok(Bootstrap::Existing(_))));
}

fn rand_suffix() -> String {
    RequestId::generate().expect("random").to_string().replace('_', "")
}

on_memory_and_redis!(
    a_principal_named_like_the_owner_bounds_nothing:
        a_registered_principal_named_like_the_bootstrap_owner_does_not_bound_it_on_memory,
        a_registered_principal_named_like_the_bootstrap_owner_does_not_bound_it_on_redis
);

/// A configured key made by an older version has the owner `keyscope`: while no principal
/// of that subject is registered it starts, and once one bounds it start-up refuses it by
/// the same check an admin call makes, saying why and how to recover.
async fn a_legacy_owner_that_bounds_the_key_is_refused_at_start(server: &TestServer) {
    let tokens = TokenFormat::new("ks").expect("prefix");
    let pepper = Pepper::new(common::PEPPER).expect("pepper");
    let text = new_token();
    let token = tokens.parse(text.expose()).expect("token");
    let now = std::time::SystemTime::now();
    let legacy = Key {
        id: token.key_id.clone(),
        tenant: Tenant::system(),
        description: "bootstrap admin key".into(),
        owner: "keyscope".into(),
        scope_ids: vec!["admin".parse().expect("scope id")],
        state: KeyState::Active,
        expires_at: None,
        metadata: Metadata::new(),
        version: 1,
        created_at: now,
        updated_at: now,
        last_used_at: None,
        secret_hash: pepper.hash(&token.key_id, &token.secret),
        previous_secret: None,
        rotated_at: None,
        allowed_cidrs: Vec::new(),
        rate_limit: None,
    };
    let event = AuditRecord {
        tenant: Tenant::system(),
        at: now,
        actor: Actor::Keyscope,
        operation: AuditOperation::CreateKey,
        target: AuditTarget::Key(legacy.id.clone()),
        changed: Vec::new(),
        details: Default::default(),
        request_id: RequestId::generate().expect("random"),
    };
    let write = KeyWrite {
        key: &legacy,
        expected_version: None,
        stored_scopes: &[],
        audit: AuditWrite { record: &event, max_events: 100, access_version: None },
    };
    server.store.put_key(write, usize::MAX).await.expect("an older version's key");
    let start = || core_with(server.store.clone(), common::PEPPER);
    assert!(matches!(start().ensure_bootstrap(Some(text.expose())).await, Ok(Bootstrap::Configured(_))));

    server.principal("system", "keyscope", &[]).await;
    let refused = start().ensure_bootstrap(Some(text.expose())).await;
    let Err(ServiceError::FailedPrecondition(message)) = &refused else { panic!("{refused:?}") };
    assert!(message.contains("owner `keyscope`") && message.contains("keyscope token new"), "{message}");
    // A real admin call is refused the same way.
    let call = start().authorize(Some(text.expose()), "", &Module::keys(), Action::Read).await;
    assert!(matches!(call, Err(ServiceError::PermissionDenied(_))), "{call:?}");
    // Recovery: a new configured token adds a key beside it, with no owner.
    let fresh = new_token();
    assert!(matches!(start().ensure_bootstrap(Some(fresh.expose())).await, Ok(Bootstrap::ConfiguredCreated(_))));
    assert!(start().authorize(Some(fresh.expose()), "", &Module::keys(), Action::Update).await.is_ok());
}

on_memory_and_redis!(
    a_legacy_owner_that_bounds_the_key_is_refused_at_start:
        a_configured_key_bounded_by_its_legacy_owner_is_refused_at_start_on_memory,
        a_configured_key_bounded_by_its_legacy_owner_is_refused_at_start_on_redis
);

/// How long a start that must fail may take.
const QUICKLY: Duration = Duration::from_secs(20);

/// `keyscope serve` on `redis` under `prefix`.
fn on_redis(redis: &RedisServer, prefix: &str) -> ServerOptions {
    ServerOptions::default()
        .env("KEYSCOPE__STORE__KIND", "redis")
        .env("KEYSCOPE__STORE__REDIS__URL", &redis.url())
        .env("KEYSCOPE__STORE__REDIS__PREFIX", prefix)
}

/// Whether Redis holds a bootstrap marker or any `system` key under `prefix`.
fn bootstrap_left(redis: &RedisServer, prefix: &str) -> Option<String> {
    let marker = redis.cli(&["GET", &format!("{prefix}:{{system}}:bootstrap")]).expect("redis-cli GET");
    let keys = redis.cli(&["ZCARD", &format!("{prefix}:{{system}}:keys")]).expect("redis-cli ZCARD");
    let mappings = redis.cli(&["KEYS", &format!("{prefix}:kt:*")]).expect("redis-cli KEYS");
    (!marker.is_empty() || keys != "0" || !mappings.is_empty())
        .then(|| format!("marker {marker:?}, {keys} system key(s), key mappings {mappings:?}"))
}

/// A failed start prints one `error:` line naming `what`, and no token.
fn failed(code: Option<i32>, output: &str, what: &str) {
    assert!(code.is_some_and(|c| c != 0), "the start must fail\n{output}");
    let errors: Vec<&str> = output.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line\n{output}");
    assert!(errors[0].contains(what), "the error does not name {what}: {}", errors[0]);
    assert!(!output.contains("its token is shown once"), "a token was shown\n{output}");
}

#[test]
fn a_first_start_that_cannot_bind_leaves_no_bootstrap_key() {
    let redis = RedisServer::start();
    let prefix = redis_server::fresh_prefix();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    for port in ["KEYSCOPE__SERVER__GRPC_ADDR", "KEYSCOPE__SERVER__HTTP_ADDR"] {
        let (code, output) = on_redis(&redis, &prefix).env(port, &addr).run_to_exit(QUICKLY);
        failed(code, &output, &addr);
        assert_eq!(bootstrap_left(&redis, &prefix), None, "a start that cannot bind claims nothing\n{output}");
    }
    drop(taken);
    // The next start makes the key and shows its token; it administers.
    let server = on_redis(&redis, &prefix).start();
    server.cli().args(["key", "list", "--tenant", "system"]).run().success();
}

#[test]
fn a_first_start_that_cannot_write_the_token_file_leaves_no_bootstrap_key() {
    let redis = RedisServer::start();
    let prefix = redis_server::fresh_prefix();
    let dir = tempfile::tempdir().expect("temp dir");
    let unwritable = dir.path().join("missing-directory").join("admin.token");
    let (code, output) = on_redis(&redis, &prefix)
        .env("KEYSCOPE__BOOTSTRAP__TOKEN_FILE", unwritable.to_str().expect("utf-8"))
        .run_to_exit(QUICKLY);
    failed(code, &output, "bootstrap.token_file");
    assert!(output.contains("removed again"), "the error says the key was removed\n{output}");
    assert_eq!(bootstrap_left(&redis, &prefix), None, "the unshown key was removed\n{output}");

    // The next start, with a writable file, makes a new key whose token is in the file.
    let file = dir.path().join("admin.token");
    let server = on_redis(&redis, &prefix)
        .env("KEYSCOPE__BOOTSTRAP__TOKEN_FILE", file.to_str().expect("utf-8"))
        .expect_token(false)
        .start();
    let token = std::fs::read_to_string(&file).expect("the token file").trim().to_owned();
    let audit = server.cli_with_token(&token).args(["--json", "audit", "--tenant", "system"]).run().success();
    assert!(audit.stdout.contains("delete_key"), "the removal is audited:\n{}", audit.describe());
}
