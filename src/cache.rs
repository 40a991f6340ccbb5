//! Each replica's cache of key records and scopes (moka), in front of a shared store, and its
//! invalidation.
//!
//! A check that hits the cache touches no store at all. Entries live at most
//! `time_to_live` (never `time_to_idle`: a hot revoked key must not live forever); unknown key
//! ids are remembered for a shorter `negative_ttl`. Every change made through any replica is
//! published by the store and dropped here ([`ChangeSink`]); this replica's own changes are
//! also dropped at once, before the call returns. Whenever the change feed is (re)established
//! the whole cache is cleared first, since changes may have been missed while it was down;
//! while it is down, cached entries keep answering within their TTL (so a Redis outage does
//! not stop hot checks). A fill that raced an invalidation is not kept, so a stale record read
//! before a change cannot outlive it.
//!
//! Worst-case staleness: the feed's delivery delay (milliseconds) while the feed is up; at most
//! `time_to_live` while it is down or if a change is otherwise missed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use moka::sync::Cache as Moka;

use crate::{
    domain::{Day, Key, KeyId, Members, Principal, Role, Scope, ScopeId, Subject, Tenant, TenantPolicy},
    store::{
        AuditPage, AuditQuery, AuditWrite, Change, ChangeSink, Credential, DailyUsage, KeyQuery, KeyWrite,
        PrincipalGrants, ScopeDelete, ScopeDetach, Store, StoreError, UsageDelta,
    },
};

/// The field of the check spans that says whether the key came from the cache.
pub const CACHE_HIT_FIELD: &str = "cache_hit";

/// Tells the check's spans (the log span, current here, and the OpenTelemetry span, active
/// here) whether the key came from the cache.
fn mark_cache_hit(hit: bool) {
    tracing::Span::current().record(CACHE_HIT_FIELD, hit);
    crate::telemetry::annotate(|| vec![opentelemetry::KeyValue::new(CACHE_HIT_FIELD, hit)]);
}

/// Cache sizes and lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Most key records kept.
    pub max_keys: u64,
    /// Most scope entries kept.
    pub max_scopes: u64,
    /// Longest an entry is kept, however often it is used.
    pub time_to_live: Duration,
    /// How long an unknown key id is remembered as unknown.
    pub negative_ttl: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_keys: 100_000,
            max_scopes: 100_000,
            time_to_live: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(2),
        }
    }
}

/// Hit and miss counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Checks answered with no store access.
    pub hits: AtomicU64,
    /// Checks that went to the store.
    pub misses: AtomicU64,
    /// Checks answered "unknown key" from the negative cache.
    pub negative_hits: AtomicU64,
    /// Entries dropped because they changed.
    pub invalidations: AtomicU64,
    /// Times the whole cache was cleared (change feed (re)established).
    pub resets: AtomicU64,
}

/// A snapshot of [`CacheStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`CacheStats::hits`].
    pub hits: u64,
    /// See [`CacheStats::misses`].
    pub misses: u64,
    /// See [`CacheStats::negative_hits`].
    pub negative_hits: u64,
    /// See [`CacheStats::invalidations`].
    pub invalidations: u64,
    /// See [`CacheStats::resets`].
    pub resets: u64,
}

/// How many entries each cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryCounts {
    /// Key records.
    pub keys: u64,
    /// Scope entries (a stored scope, or the absence of one).
    pub scopes: u64,
    /// Key ids remembered as unknown.
    pub unknown: u64,
}

type GrantsKey = (Tenant, Subject, Vec<Role>);

struct Inner {
    /// What a check needs of a key, as one shared record: a hit clones one `Arc`. A change to
    /// the key drops its record; a change to a scope drops every record holding it.
    keys: Moka<KeyId, Arc<Credential>>,
    /// The stored scopes the records hold, so that keys holding the same scope share one copy.
    scopes: Moka<(Tenant, ScopeId), Arc<Scope>>,
    unknown: Moka<KeyId, ()>,
    /// A principal's grants by (tenant, subject, roles asked for). Any change to a principal,
    /// a member binding or a scope of a tenant drops all of that tenant's entries.
    grants: Moka<GrantsKey, Arc<PrincipalGrants>>,
    /// Grows with every invalidation; a fill started before a change is not kept.
    epoch: AtomicU64,
    stats: CacheStats,
}

/// A store with a replica-local cache in front of the check path.
#[derive(Clone)]
pub struct CachedStore {
    store: Arc<dyn Store>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore").field("keys", &self.inner.keys.entry_count()).finish_non_exhaustive()
    }
}

impl CachedStore {
    /// A cache in front of `store`.
    pub fn new(store: Arc<dyn Store>, settings: CacheSettings) -> Self {
        let inner = Inner {
            keys: Moka::builder().max_capacity(settings.max_keys).time_to_live(settings.time_to_live).build(),
            scopes: Moka::builder().max_capacity(settings.max_scopes).time_to_live(settings.time_to_live).build(),
            unknown: Moka::builder().max_capacity(settings.max_keys).time_to_live(settings.negative_ttl).build(),
            grants: Moka::builder().max_capacity(settings.max_keys).time_to_live(settings.time_to_live).build(),
            epoch: AtomicU64::new(0),
            stats: CacheStats::default(),
        };
        CachedStore { store, inner: Arc::new(inner) }
    }

    /// The counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.stats;
        StatsSnapshot {
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            negative_hits: s.negative_hits.load(Ordering::Relaxed),
            invalidations: s.invalidations.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
        }
    }

    /// Key records currently cached (after finishing the cache's pending housekeeping).
    pub fn cached_keys(&self) -> u64 {
        self.inner.keys.run_pending_tasks();
        self.inner.scopes.run_pending_tasks();
        self.inner.unknown.run_pending_tasks();
        self.inner.keys.entry_count()
    }

    /// Entries held now, by cache (approximate: moka counts lazily).
    pub fn entry_counts(&self) -> EntryCounts {
        EntryCounts {
            keys: self.inner.keys.entry_count(),
            scopes: self.inner.scopes.entry_count(),
            unknown: self.inner.unknown.entry_count(),
        }
    }

    /// The change sink that drops what changed.
    pub fn sink(&self) -> Arc<dyn ChangeSink> {
        self.inner.clone()
    }

    /// Caches what the store answered for `id` (read since `epoch`), and returns the record
    /// to answer with: its scopes shared with the other cached records holding them.
    fn fill(&self, epoch: u64, id: &KeyId, found: Option<Arc<Credential>>) -> Option<Arc<Credential>> {
        let inner = &self.inner;
        // A change arrived while the store was read: what was read may predate it.
        if inner.epoch.load(Ordering::SeqCst) != epoch {
            return found;
        }
        let Some(credential) = found else {
            inner.keep(epoch, &inner.unknown, id.clone(), ());
            return None;
        };
        let tenant = &credential.key.tenant;
        let scopes = credential
            .scopes
            .iter()
            .map(|scope| {
                // Shared only when identical to what was just read: an older copy interned by a
                // racing fill is replaced, never served.
                let entry = (tenant.clone(), scope.id.clone());
                match inner.scopes.get(&entry) {
                    Some(shared) if shared == *scope => shared,
                    _ => {
                        inner.scopes.insert(entry, scope.clone());
                        scope.clone()
                    }
                }
            })
            .collect();
        let record = Arc::new(Credential { key: credential.key.clone(), scopes });
        inner.keep(epoch, &inner.keys, id.clone(), record.clone());
        Some(record)
    }
}

impl Inner {
    /// Caches `value` under `key` unless a change arrived since `epoch` (what was read may
    /// predate it). A change that bumps the epoch after the first look may have dropped its
    /// entries before this insert: the second look takes it out again, so whichever way the
    /// two interleave, either the change's invalidation follows the insert or this sees its bump.
    fn keep<K, V>(&self, epoch: u64, cache: &Moka<K, V>, key: K, value: V)
    where
        K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        cache.insert(key.clone(), value);
        if self.epoch.load(Ordering::SeqCst) != epoch {
            cache.invalidate(&key);
        }
    }
}

impl ChangeSink for Inner {
    fn changed(&self, change: &Change) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        match change {
            Change::Key(id) => {
                self.keys.invalidate(id);
                self.unknown.invalidate(id);
            }
            Change::Scope(tenant, id) => {
                self.scopes.invalidate(&(tenant.clone(), id.clone()));
                self.drop_holders(tenant, id);
                self.drop_grants(tenant);
            }
            Change::Principal(tenant, _) | Change::Members(tenant, _) => self.drop_grants(tenant),
        }
    }

    fn reset(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        self.keys.invalidate_all();
        self.scopes.invalidate_all();
        self.unknown.invalidate_all();
        self.grants.invalidate_all();
    }
}

impl Inner {
    /// Drops, now, the records of the keys of `tenant` that hold scope `id`.
    fn drop_holders(&self, tenant: &Tenant, id: &ScopeId) {
        drop_now(&self.keys, |_, record| record.key.tenant == *tenant && record.key.scope_ids.contains(id));
    }

    /// Drops, now, the grants of every principal of `tenant`.
    fn drop_grants(&self, tenant: &Tenant) {
        drop_now(&self.grants, |(t, _, _), _| t == tenant);
    }
}

/// Drops every entry of `cache` that `drop` picks, before returning. Not moka's
/// `invalidate_entries_if`: that only registers the predicate, and retires it once the cache's
/// housekeeping has scanned the entries it has processed; an entry inserted just before whose
/// insert that housekeeping (running on another thread) had not processed yet is never
/// checked, and is served after the change until its TTL. Iterating reads the map itself, so
/// every entry inserted before the change's epoch bump is seen; one inserted after it is taken
/// out by its own fill ([`Inner::keep`]).
fn drop_now<K, V>(cache: &Moka<K, V>, drop: impl Fn(&K, &V) -> bool)
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    for (key, value) in cache.iter() {
        if drop(&key, &value) {
            cache.invalidate(&*key);
        }
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn credential(&self, id: &KeyId) -> Result<Option<Arc<Credential>>, StoreError> {
        if self.inner.unknown.contains_key(id) {
            self.inner.stats.negative_hits.fetch_add(1, Ordering::Relaxed);
            mark_cache_hit(true);
            return Ok(None);
        }
        if let Some(found) = self.inner.keys.get(id) {
            self.inner.stats.hits.fetch_add(1, Ordering::Relaxed);
            mark_cache_hit(true);
            return Ok(Some(found));
        }
        self.inner.stats.misses.fetch_add(1, Ordering::Relaxed);
        mark_cache_hit(false);
        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        let found = self.store.credential(id).await?;
        Ok(self.fill(epoch, id, found))
    }

    async fn get_key(&self, tenant: &Tenant, id: &KeyId) -> Result<Option<Arc<Key>>, StoreError> {
        self.store.get_key(tenant, id).await
    }

    async fn list_keys(&self, tenant: &Tenant, query: &KeyQuery) -> Result<Vec<Arc<Key>>, StoreError> {
        self.store.list_keys(tenant, query).await
    }

    async fn put_key(&self, write: KeyWrite<'_>, max_keys: usize) -> Result<(), StoreError> {
        let result = self.store.put_key(write, max_keys).await;
        self.inner.changed(&Change::Key(write.key.id.clone()));
        result
    }

    async fn get_scope(&self, tenant: &Tenant, id: &ScopeId) -> Result<Option<Arc<Scope>>, StoreError> {
        self.store.get_scope(tenant, id).await
    }

    async fn get_scopes(&self, tenant: &Tenant, ids: &[ScopeId]) -> Result<Vec<Arc<Scope>>, StoreError> {
        self.store.get_scopes(tenant, ids).await
    }

    async fn list_scopes(
        &self,
        tenant: &Tenant,
        after: Option<&ScopeId>,
        limit: usize,
    ) -> Result<Vec<Arc<Scope>>, StoreError> {
        self.store.list_scopes(tenant, after, limit).await
    }

    async fn put_scope(
        &self,
        scope: &Scope,
        expected_version: Option<u64>,
        reserved_labels: &[String],
        max_scopes: usize,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        let result = self.store.put_scope(scope, expected_version, reserved_labels, max_scopes, audit).await;
        self.inner.changed(&Change::Scope(scope.tenant.clone(), scope.id.clone()));
        result
    }

    async fn scope_holders(&self, tenant: &Tenant, id: &ScopeId) -> Result<Vec<Arc<Key>>, StoreError> {
        self.store.scope_holders(tenant, id).await
    }

    async fn detach_scope(&self, detach: ScopeDetach<'_>) -> Result<u64, StoreError> {
        let result = self.store.detach_scope(detach).await;
        for (key_id, _) in detach.holders {
            self.inner.changed(&Change::Key(key_id.clone()));
        }
        result
    }

    async fn delete_scope(&self, delete: ScopeDelete<'_>) -> Result<(), StoreError> {
        let result = self.store.delete_scope(delete).await;
        for (key_id, _) in delete.holders {
            self.inner.changed(&Change::Key(key_id.clone()));
        }
        self.inner.changed(&Change::Scope(delete.tenant.clone(), delete.id.clone()));
        result
    }

    async fn claim_bootstrap(&self, key: &Key, audit: AuditWrite<'_>) -> Result<Option<KeyId>, StoreError> {
        let result = self.store.claim_bootstrap(key, audit).await;
        self.inner.changed(&Change::Key(key.id.clone()));
        result
    }

    async fn release_bootstrap(&self, key: &Key, audit: AuditWrite<'_>) -> Result<bool, StoreError> {
        let result = self.store.release_bootstrap(key, audit).await;
        self.inner.changed(&Change::Key(key.id.clone()));
        result
    }

    // Usage is not part of the cached records: writing it drops nothing.
    async fn record_usage(&self, batch: &[UsageDelta], retention_days: u32) -> Result<(), StoreError> {
        self.store.record_usage(batch, retention_days).await
    }

    async fn key_usage(
        &self,
        tenant: &Tenant,
        id: &KeyId,
        first: Day,
        last: Day,
    ) -> Result<Vec<DailyUsage>, StoreError> {
        self.store.key_usage(tenant, id, first, last).await
    }

    async fn list_audit(&self, tenant: &Tenant, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        self.store.list_audit(tenant, query).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    // Read by admin calls only, just before they write: never cached.
    async fn access_version(&self, tenant: &Tenant) -> Result<u64, StoreError> {
        self.store.access_version(tenant).await
    }

    // Policies are read by admin calls only, never by a check: not cached.
    async fn get_tenant_policy(&self, tenant: &Tenant) -> Result<Option<TenantPolicy>, StoreError> {
        self.store.get_tenant_policy(tenant).await
    }

    async fn put_tenant_policy(
        &self,
        policy: &TenantPolicy,
        expected_version: u64,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        self.store.put_tenant_policy(policy, expected_version, audit).await
    }

    async fn get_principal(&self, tenant: &Tenant, subject: &Subject) -> Result<Option<Arc<Principal>>, StoreError> {
        self.store.get_principal(tenant, subject).await
    }

    async fn list_principals(
        &self,
        tenant: &Tenant,
        after: Option<&Subject>,
        limit: usize,
    ) -> Result<Vec<Arc<Principal>>, StoreError> {
        self.store.list_principals(tenant, after, limit).await
    }

    async fn put_principal(
        &self,
        principal: &Principal,
        expected_version: Option<u64>,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        let result = self.store.put_principal(principal, expected_version, audit).await;
        self.inner.changed(&Change::Principal(principal.tenant.clone(), principal.subject.clone()));
        result
    }

    async fn delete_principal(
        &self,
        tenant: &Tenant,
        subject: &Subject,
        expected_version: Option<u64>,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        let result = self.store.delete_principal(tenant, subject, expected_version, audit).await;
        self.inner.changed(&Change::Principal(tenant.clone(), subject.clone()));
        result
    }

    async fn get_members(&self, tenant: &Tenant, scope: &ScopeId) -> Result<Members, StoreError> {
        self.store.get_members(tenant, scope).await
    }

    async fn set_members(
        &self,
        tenant: &Tenant,
        scope: &ScopeId,
        members: &Members,
        expected_version: u64,
        stored: bool,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        let result = self.store.set_members(tenant, scope, members, expected_version, stored, audit).await;
        self.inner.changed(&Change::Members(tenant.clone(), scope.clone()));
        result
    }

    async fn principal_grants(
        &self,
        tenant: &Tenant,
        subject: &Subject,
        roles: &[Role],
    ) -> Result<Arc<PrincipalGrants>, StoreError> {
        let entry = (tenant.clone(), subject.clone(), roles.to_vec());
        if let Some(found) = self.inner.grants.get(&entry) {
            return Ok(found);
        }
        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        let found = self.store.principal_grants(tenant, subject, roles).await?;
        self.inner.keep(epoch, &self.inner.grants, entry, found.clone());
        Ok(found)
    }

    // Read by admin judgments: never from the cache, which may lag another replica's change.
    async fn principal_grants_now(
        &self,
        tenant: &Tenant,
        subject: &Subject,
        roles: &[Role],
    ) -> Result<Arc<PrincipalGrants>, StoreError> {
        self.store.principal_grants_now(tenant, subject, roles).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::{
        domain::{
            ScopeMode,
            testing::{key, scope},
        },
        store::{MemoryStore, Owner},
    };

    /// Changes made one after another, each dropping the entries `FILLS` fills made just before it.
    const CHANGES: usize = 2_000;
    const FILLS: usize = 8;

    /// Runs `round` [`CHANGES`] times while another thread runs the cache's housekeeping, as
    /// the other checks of a busy replica do, then finishes that housekeeping.
    fn busy(cached: &CachedStore, round: impl Fn(usize)) {
        let stop = Arc::new(AtomicBool::new(false));
        let housekeeper = {
            let inner = cached.inner.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    inner.keys.run_pending_tasks();
                    inner.grants.run_pending_tasks();
                }
            })
        };
        (0..CHANGES).for_each(round);
        stop.store(true, Ordering::Relaxed);
        housekeeper.join().expect("housekeeper");
        cached.inner.keys.run_pending_tasks();
        cached.inner.grants.run_pending_tasks();
    }

    fn key_id(i: usize) -> KeyId {
        format!("{i:020}").parse().expect("key id")
    }

    #[test]
    fn a_record_filled_before_a_scope_change_is_never_served_after_it() {
        let cached = CachedStore::new(Arc::new(MemoryStore::new()), CacheSettings::default());
        let old = Arc::new(scope("s", ScopeMode::Allow, &["*"]));
        busy(&cached, |round| {
            // Fills that completed before the change (no race with it at all)...
            for id in (round * FILLS..(round + 1) * FILLS).map(key_id) {
                let key = Arc::new(Key { id: id.clone(), ..key(&["s"], "") });
                let epoch = cached.inner.epoch.load(Ordering::SeqCst);
                cached.fill(epoch, &id, Some(Arc::new(Credential { key, scopes: vec![old.clone()] })));
            }
            // ...then a change to the scope they hold.
            cached.inner.changed(&Change::Scope(old.tenant.clone(), old.id.clone()));
        });
        let stale = (0..CHANGES * FILLS).filter(|&i| cached.inner.keys.get(&key_id(i)).is_some()).count();
        assert_eq!(stale, 0, "records holding the old scope served after its change");
    }

    #[test]
    fn grants_read_before_a_principal_change_are_never_served_after_it() {
        let cached = CachedStore::new(Arc::new(MemoryStore::new()), CacheSettings::default());
        let tenant: Tenant = "t".parse().expect("tenant");
        let entry =
            |i: usize| -> GrantsKey { (tenant.clone(), format!("user-{i}").parse().expect("subject"), Vec::new()) };
        busy(&cached, |round| {
            for i in round * FILLS..(round + 1) * FILLS {
                let grants = PrincipalGrants { owner: Owner::Unregistered, scope_ids: Vec::new(), scopes: Vec::new() };
                let epoch = cached.inner.epoch.load(Ordering::SeqCst);
                cached.inner.keep(epoch, &cached.inner.grants, entry(i), Arc::new(grants));
            }
            cached.inner.changed(&Change::Principal(tenant.clone(), "someone".parse().expect("subject")));
        });
        let stale = (0..CHANGES * FILLS).filter(|&i| cached.inner.grants.get(&entry(i)).is_some()).count();
        assert_eq!(stale, 0, "grants of the tenant served after a change to its principals");
    }
}
