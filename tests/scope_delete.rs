//! A forced delete of a scope held by more keys than one store write takes (`DETACH_BATCH`),
//! through the real gRPC server, on the memory store and on a `redis-server` of its own: the
//! scope leaves its keys in batches, checks answered between two batches are never wider than
//! before, a key given the scope between batches leaves it too, and a delete stopped between
//! batches (its caller gone) leaves nothing inconsistent and is finished by a retry. One
//! audit event records the whole delete.

#![allow(clippy::panic)] // tests fail by panicking

mod common;
#[path = "common/interposed.rs"]
mod interposed;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;

use common::{TestServer, all_rules};
use interposed::{Interposed, PauseBeforeDetach};
use keyscope::{
    domain::{Action, Module, ScopeId},
    grpc::pb,
    store::{DETACH_BATCH, MemoryStore, Store},
};
use redis_server::RedisServer;
use tokio::task::JoinHandle;

const ACME: &str = "acme";

/// How many keys hold the scope deleted: two batches and one key for the last write.
const HELD: usize = 2 * DETACH_BATCH + 1;

/// A server on a store (memory, or `redis` when given) that holds the second batch of a
/// forced scope delete until the test lets it go, and the keys of [`held`] on it.
struct Scenario {
    pause: Arc<PauseBeforeDetach>,
    server: TestServer,
    /// The scope to delete.
    billing: String,
    keys: Vec<Holder>,
}

async fn scenario(redis: Option<&RedisServer>) -> Scenario {
    let inner: Arc<dyn Store> = match redis {
        Some(redis) => Arc::new(redis_server::store(redis.url(), false).await),
        None => Arc::new(MemoryStore::new()),
    };
    let pause = Arc::new(PauseBeforeDetach::before(2));
    let server = TestServer::start_with(Arc::new(Interposed { inner, hooks: pause.clone() }), &[]).await;
    let (billing, keys) = held(&server, HELD).await;
    Scenario { pause, server, billing, keys }
}

/// A key made by [`held`]: its id and token.
struct Holder {
    id: String,
    token: String,
}

/// Scopes `courses` and `billing` (both allow) and `n` keys holding both, by ascending id
/// (the order the delete takes them in). Returns the id of `billing` and the keys.
async fn held(server: &TestServer, n: usize) -> (String, Vec<Holder>) {
    let courses = server.scope(ACME, "courses", pb::ScopeMode::Allow, all_rules(&["courses"])).await;
    let billing = server.scope(ACME, "billing", pb::ScopeMode::Allow, all_rules(&["billing"])).await;
    let mut makers = tokio::task::JoinSet::new();
    // A few at a time: each creation is judged, and judged again when another lands first.
    for part in 0..4 {
        let keys = server.keys();
        let scope_ids = vec![courses.id.clone(), billing.id.clone()];
        makers.spawn(async move {
            let mut keys = keys;
            let mut made = Vec::new();
            for _ in (part..n).step_by(4) {
                let request =
                    pb::CreateKeyRequest { tenant: ACME.into(), scope_ids: scope_ids.clone(), ..Default::default() };
                let response = keys.create_key(request).await.expect("create key").into_inner();
                made.push(Holder { id: response.key.expect("key").id, token: response.token });
            }
            made
        });
    }
    let mut holders: Vec<Holder> = makers.join_all().await.into_iter().flatten().collect();
    holders.sort_by(|a, b| a.id.cmp(&b.id));
    (billing.id, holders)
}

/// Whether `key` is allowed to read `module`.
async fn reads(server: &TestServer, key: &Holder, module: &str) -> bool {
    server.check(&key.token, module, pb::Action::Read).await.reason == pb::Reason::Ok as i32
}

/// A forced delete of `scope` as the system admin, through gRPC, under way: the keys it was
/// taken from.
fn force_delete(server: &TestServer, scope: &str) -> JoinHandle<Vec<String>> {
    let mut scopes = server.scopes();
    let request = pb::DeleteScopeRequest { tenant: ACME.into(), id: scope.into(), force: true, version: 0 };
    tokio::spawn(
        async move { scopes.delete_scope(request).await.expect("forced delete").into_inner().detached_key_ids },
    )
}

/// The keys holding `scope` now.
async fn holding(server: &TestServer, scope: &str) -> usize {
    server.all_keys(ACME).await.iter().filter(|k| k.scope_ids.iter().any(|s| s == scope)).count()
}

/// No key holds `scope` any more, and one event recorded its delete, taking it from
/// `detached` keys.
async fn assert_deleted_once(server: &TestServer, scope: &str, detached: usize) {
    assert_eq!(holding(server, scope).await, 0);
    assert_eq!(delete_events(server, scope).await, [detached.to_string()], "one event for the whole delete");
}

/// The `detached_keys` of every DeleteScope event of `scope`, newest first.
async fn delete_events(server: &TestServer, scope: &str) -> Vec<String> {
    let request = pb::ListAuditEventsRequest {
        tenant: ACME.into(),
        target_id: scope.into(),
        target_type: "scope".into(),
        page_size: 500,
        ..Default::default()
    };
    let page = server.audit().list_audit_events(request).await.expect("audit").into_inner();
    page.events
        .iter()
        .filter(|e| e.operation == pb::AuditOperation::DeleteScope as i32)
        .map(|e| e.details.get("detached_keys").cloned().unwrap_or_default())
        .collect()
}

/// Between two batches, a key already detached has lost only what the scope gave, and one
/// not reached yet answers as before: no check is wider than before the delete. The scope
/// exists until the last write; then every key has left it, recorded by one event.
async fn checks_between_batches_are_never_wider(redis: Option<&RedisServer>) {
    let Scenario { pause, server, billing, keys } = scenario(redis).await;
    let n = HELD;
    let (first, last) = (&keys[0], &keys[n - 1]);
    let delete = force_delete(&server, &billing);
    pause.reached().await;
    assert!(reads(&server, first, "courses").await && !reads(&server, first, "billing").await, "detached");
    assert!(reads(&server, last, "courses").await && reads(&server, last, "billing").await, "not reached yet");
    assert_eq!(holding(&server, &billing).await, n - DETACH_BATCH, "the first batch is written");
    let scope = pb::GetScopeRequest { tenant: ACME.into(), id: billing.clone() };
    server.scopes().get_scope(scope).await.expect("the scope exists until the last write");
    assert!(delete_events(&server, &billing).await.is_empty(), "no event before the delete is written");
    pause.resume();

    let detached = delete.await.expect("delete task");
    assert_eq!(detached.len(), n);
    assert_eq!(pause.batches(), 2, "two batches, then the last write");
    for key in [first, &keys[DETACH_BATCH], last] {
        assert!(reads(&server, key, "courses").await && !reads(&server, key, "billing").await, "{}", key.id);
    }
    assert_deleted_once(&server, &billing, n).await;
    server.stop().await;
}

/// A key given the scope between two batches (a judged change) makes the next batch fail; the
/// delete is judged again on the keys holding the scope then, and the newcomer leaves it too.
async fn a_holder_added_between_batches_leaves_the_scope_too(redis: Option<&RedisServer>) {
    let Scenario { pause, server, billing, keys } = scenario(redis).await;
    let n = HELD;
    let delete = force_delete(&server, &billing);
    pause.reached().await;
    let (newcomer, token) = server.key(ACME, &[&billing]).await;
    pause.resume();

    let detached = delete.await.expect("delete task");
    assert_eq!(detached.len(), n + 1, "every key that held it, the newcomer too");
    assert!(detached.contains(&newcomer.id));
    assert!(pause.batches() > 2, "the batch after the newcomer was refused and written again");
    let newcomer = Holder { id: newcomer.id, token };
    assert!(!reads(&server, &newcomer, "billing").await);
    assert!(!reads(&server, &keys[n - 1], "billing").await);
    assert_deleted_once(&server, &billing, n + 1).await;
    server.stop().await;
}

/// A delete whose caller goes away between two batches (a crash, a cancelled call) leaves
/// every key either as it was or without the scope, and the scope in place; a retry
/// finishes the delete.
async fn a_delete_stopped_between_batches_is_finished_by_a_retry(redis: Option<&RedisServer>) {
    let Scenario { pause, server, billing, keys } = scenario(redis).await;
    let n = HELD;
    let token = Some(server.admin_token.as_str());
    let caller = server.core.authorize(token, ACME, &Module::scopes(), Action::Delete).await.expect("admin");
    let core = server.core.clone();
    let id: ScopeId = billing.parse().expect("scope id");
    let delete = tokio::spawn(async move { core.delete_scope(&caller, &id, true, None).await });
    pause.reached().await;
    delete.abort();
    assert!(delete.await.is_err_and(|e| e.is_cancelled()), "stopped between batches");

    assert_eq!(holding(&server, &billing).await, n - DETACH_BATCH);
    assert!(!reads(&server, &keys[0], "billing").await, "a detached key stays detached");
    assert!(reads(&server, &keys[n - 1], "billing").await, "a key not reached holds what it held");
    assert!(delete_events(&server, &billing).await.is_empty(), "the delete did not happen");
    let detached = force_delete(&server, &billing).await.expect("retry");
    assert_eq!(detached.len(), n - DETACH_BATCH, "the retry takes the scope from the rest");
    assert!(keys.iter().take(3).all(|k| !detached.contains(&k.id)));
    assert_deleted_once(&server, &billing, n - DETACH_BATCH).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_between_batches_are_never_wider_on_memory() {
    checks_between_batches_are_never_wider(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_between_batches_are_never_wider_on_redis() {
    checks_between_batches_are_never_wider(Some(&RedisServer::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_added_between_batches_leaves_the_scope_too_on_memory() {
    a_holder_added_between_batches_leaves_the_scope_too(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_added_between_batches_leaves_the_scope_too_on_redis() {
    a_holder_added_between_batches_leaves_the_scope_too(Some(&RedisServer::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_stopped_between_batches_is_finished_by_a_retry_on_memory() {
    a_delete_stopped_between_batches_is_finished_by_a_retry(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_stopped_between_batches_is_finished_by_a_retry_on_redis() {
    a_delete_stopped_between_batches_is_finished_by_a_retry(Some(&RedisServer::start())).await;
}
