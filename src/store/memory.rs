//! The embedded store: everything in one process's memory, behind one lock, so every
//! mutation is atomic by construction (a change and its audit event included). Each tenant's
//! audit log is a ring of its newest events. The default for trying keyscope and for tests.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    ops::Bound,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::SystemTime,
};

use async_trait::async_trait;

use super::{
    AuditPage, AuditQuery, AuditWrite, Credential, DailyUsage, KeyQuery, KeyWrite, Owner, PrincipalGrants, ScopeDelete,
    ScopeDetach, Store, StoreError, UsageDelta,
};
use crate::domain::{
    AuditEvent, AuditId, Day, Key, KeyId, Members, Principal, Role, Scope, ScopeId, Subject, Tenant, TenantPolicy,
};

/// Keys and scopes in memory. Cloning shares the same data.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<KeyId, Arc<Key>>,
    tenants: HashMap<Tenant, TenantData>,
    /// Kept apart from the key records, as in Redis: usage never changes a key's version.
    usage: HashMap<Tenant, TenantUsage>,
    bootstrap: Option<KeyId>,
}

#[derive(Debug, Default)]
struct TenantUsage {
    last_used: HashMap<KeyId, SystemTime>,
    /// Key id -> day -> (allowed, denied).
    days: HashMap<KeyId, BTreeMap<Day, (u64, u64)>>,
}

#[derive(Debug, Default)]
struct TenantData {
    key_ids: BTreeSet<KeyId>,
    scopes: BTreeMap<ScopeId, Arc<Scope>>,
    /// Folded label -> scope id.
    labels: HashMap<String, ScopeId>,
    /// Scope id -> keys holding it (builtin scope ids included).
    holders: HashMap<ScopeId, BTreeSet<KeyId>>,
    /// The newest audit events, oldest first.
    audit: VecDeque<AuditEvent>,
    /// The tenant's key policy, once set.
    policy: Option<TenantPolicy>,
    /// Registered principals.
    principals: BTreeMap<Subject, Arc<Principal>>,
    /// Subjects of deleted principals (until registered again).
    gone: BTreeSet<Subject>,
    /// Grows with every audited change (see [`Store::access_version`]).
    access: u64,
    /// Member bindings per scope id (builtin ids included).
    members: HashMap<ScopeId, Members>,
    /// Subject -> scopes bound to it.
    by_subject: HashMap<Subject, BTreeSet<ScopeId>>,
    /// Role -> scopes bound to it.
    by_role: HashMap<Role, BTreeSet<ScopeId>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    // A poisoned lock means a panic happened while writing; the data is still consistent
    // because every mutation validates before it changes anything, so it is safe to go on.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn key_name(id: &KeyId) -> String {
    format!("key `{id}`")
}

fn scope_name(id: &ScopeId) -> String {
    format!("scope `{id}`")
}

fn principal_name(subject: &Subject) -> String {
    format!("principal `{}`", crate::domain::shorten_for_message(subject.as_str()))
}

fn members_name(id: &ScopeId) -> String {
    format!("members of scope `{id}`")
}

impl Inner {
    /// The tenant's access version (see [`Store::access_version`]).
    fn access(&self, tenant: &Tenant) -> u64 {
        self.tenants.get(tenant).map_or(0, |d| d.access)
    }

    /// Refuses a write judged against an access version that no longer holds.
    fn judged(&self, tenant: &Tenant, audit: AuditWrite<'_>) -> Result<(), StoreError> {
        match audit.access_version {
            Some(expected) if expected != self.access(tenant) => Err(StoreError::AccessChanged),
            _ => Ok(()),
        }
    }

    fn tenant_key(&self, tenant: &Tenant, id: &KeyId) -> Option<&Arc<Key>> {
        self.keys.get(id).filter(|k| k.tenant == *tenant)
    }

    fn last_used(&self, key: &Key) -> Option<SystemTime> {
        self.usage.get(&key.tenant).and_then(|u| u.last_used.get(&key.id)).copied().or(key.last_used_at)
    }

    /// The key as a reader sees it: with its last use from the recorded usage.
    fn with_usage(&self, key: &Arc<Key>) -> Arc<Key> {
        let last_used_at = self.last_used(key);
        if last_used_at == key.last_used_at {
            return key.clone();
        }
        Arc::new(Key { last_used_at, ..Key::clone(key) })
    }

    fn check_key_write(&self, write: &KeyWrite<'_>, max_keys: usize) -> Result<(), StoreError> {
        let key = write.key;
        let data = self.tenants.get(&key.tenant);
        match (write.expected_version, self.keys.get(&key.id)) {
            (None, Some(_)) => return Err(StoreError::AlreadyExists(key_name(&key.id))),
            (None, None) => {
                if data.is_some_and(|d| d.key_ids.len() >= max_keys) {
                    return Err(StoreError::QuotaReached { tenant: key.tenant.clone(), what: "keys", limit: max_keys });
                }
            }
            (Some(_), None) => return Err(StoreError::NotFound(key_name(&key.id))),
            (Some(_), Some(old)) if old.tenant != key.tenant => return Err(StoreError::NotFound(key_name(&key.id))),
            (Some(expected), Some(old)) if old.version != expected => {
                return Err(StoreError::VersionConflict { what: key_name(&key.id), expected, found: old.version });
            }
            (Some(_), Some(_)) => {}
        }
        for id in write.stored_scopes {
            if !data.is_some_and(|d| d.scopes.contains_key(id)) {
                return Err(StoreError::ScopeMissing(id.clone()));
            }
        }
        Ok(())
    }
}

impl TenantData {
    /// Appends the audit event of a change of `tenant`, dropping the oldest beyond the bound.
    fn record(&mut self, tenant: &Tenant, audit: AuditWrite<'_>) {
        if audit.access_version.is_some() {
            self.access += 1;
        }
        let id = AuditId::next(self.audit.back().map(|e| e.id), audit.record.at);
        let mut record = audit.record.clone();
        record.tenant = tenant.clone();
        self.audit.push_back(AuditEvent::stored(id, record));
        while self.audit.len() > audit.max_events.max(1) {
            self.audit.pop_front();
        }
    }

    fn index(&mut self, key: &Key, old: Option<&Key>) {
        if let Some(old) = old {
            for id in &old.scope_ids {
                if let Some(set) = self.holders.get_mut(id) {
                    set.remove(&old.id);
                    if set.is_empty() {
                        self.holders.remove(id);
                    }
                }
            }
        }
        for id in &key.scope_ids {
            self.holders.entry(id.clone()).or_default().insert(key.id.clone());
        }
        self.key_ids.insert(key.id.clone());
    }

    /// Takes scope `id` from the keys `holders` (records and index), bumping their versions.
    fn detach(&mut self, keys: &mut HashMap<KeyId, Arc<Key>>, id: &ScopeId, holders: &[(KeyId, u64)], now: SystemTime) {
        for (key_id, _) in holders {
            if let Some(old) = keys.get(key_id) {
                let mut key = Key::clone(old);
                key.scope_ids.retain(|s| s != id);
                key.version += 1;
                key.updated_at = now;
                keys.insert(key_id.clone(), Arc::new(key));
            }
            if let Some(set) = self.holders.get_mut(id) {
                set.remove(key_id);
                if set.is_empty() {
                    self.holders.remove(id);
                }
            }
        }
    }

    /// Drops a removed key from the indexes.
    fn unindex(&mut self, key: &Key) {
        for id in &key.scope_ids {
            if let Some(set) = self.holders.get_mut(id) {
                set.remove(&key.id);
                if set.is_empty() {
                    self.holders.remove(id);
                }
            }
        }
        self.key_ids.remove(&key.id);
    }

    /// Replaces the member bindings of a scope and the indexes that follow them.
    fn bind(&mut self, scope: &ScopeId, members: &Members) {
        if let Some(old) = self.members.remove(scope) {
            for subject in &old.subjects {
                if let Some(set) = self.by_subject.get_mut(subject) {
                    set.remove(scope);
                    if set.is_empty() {
                        self.by_subject.remove(subject);
                    }
                }
            }
            for role in &old.roles {
                if let Some(set) = self.by_role.get_mut(role) {
                    set.remove(scope);
                    if set.is_empty() {
                        self.by_role.remove(role);
                    }
                }
            }
        }
        if members.is_empty() && members.version == 0 {
            return;
        }
        for subject in &members.subjects {
            self.by_subject.entry(subject.clone()).or_default().insert(scope.clone());
        }
        for role in &members.roles {
            self.by_role.entry(role.clone()).or_default().insert(scope.clone());
        }
        self.members.insert(scope.clone(), members.clone());
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn credential(&self, id: &KeyId) -> Result<Option<Arc<Credential>>, StoreError> {
        let inner = self.read();
        let Some(key) = inner.keys.get(id) else { return Ok(None) };
        let scopes = inner
            .tenants
            .get(&key.tenant)
            .map(|data| key.scope_ids.iter().filter_map(|id| data.scopes.get(id).cloned()).collect())
            .unwrap_or_default();
        Ok(Some(Arc::new(Credential { key: key.clone(), scopes })))
    }

    async fn get_key(&self, tenant: &Tenant, id: &KeyId) -> Result<Option<Arc<Key>>, StoreError> {
        let inner = self.read();
        Ok(inner.tenant_key(tenant, id).map(|k| inner.with_usage(k)))
    }

    async fn list_keys(&self, tenant: &Tenant, query: &KeyQuery) -> Result<Vec<Arc<Key>>, StoreError> {
        let inner = self.read();
        let Some(data) = inner.tenants.get(tenant) else { return Ok(Vec::new()) };
        let lower = query.after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let ids: Box<dyn Iterator<Item = &KeyId>> = match &query.scope {
            Some(scope) => match data.holders.get(scope) {
                Some(set) => Box::new(set.range((lower, Bound::Unbounded))),
                None => return Ok(Vec::new()),
            },
            None => Box::new(data.key_ids.range((lower, Bound::Unbounded))),
        };
        Ok(ids
            .filter_map(|id| inner.keys.get(id))
            .filter(|k| query.owner.as_ref().is_none_or(|o| k.owner == *o))
            .filter(|k| query.state.is_none_or(|s| k.state == s))
            .filter(|k| query.unused_since.is_none_or(|since| inner.last_used(k).is_none_or(|at| at < since)))
            .take(query.limit)
            .map(|k| inner.with_usage(k))
            .collect())
    }

    async fn put_key(&self, write: KeyWrite<'_>, max_keys: usize) -> Result<(), StoreError> {
        let mut inner = self.write();
        inner.judged(&write.key.tenant, write.audit)?;
        inner.check_key_write(&write, max_keys)?;
        let key = Arc::new(write.key.clone());
        let old = inner.keys.insert(key.id.clone(), key.clone());
        let data = inner.tenants.entry(key.tenant.clone()).or_default();
        data.index(&key, old.as_deref());
        data.record(&key.tenant, write.audit);
        Ok(())
    }

    async fn get_scope(&self, tenant: &Tenant, id: &ScopeId) -> Result<Option<Arc<Scope>>, StoreError> {
        Ok(self.read().tenants.get(tenant).and_then(|d| d.scopes.get(id)).cloned())
    }

    async fn get_scopes(&self, tenant: &Tenant, ids: &[ScopeId]) -> Result<Vec<Arc<Scope>>, StoreError> {
        let inner = self.read();
        let Some(data) = inner.tenants.get(tenant) else { return Ok(Vec::new()) };
        Ok(ids.iter().filter_map(|id| data.scopes.get(id).cloned()).collect())
    }

    async fn list_scopes(
        &self,
        tenant: &Tenant,
        after: Option<&ScopeId>,
        limit: usize,
    ) -> Result<Vec<Arc<Scope>>, StoreError> {
        let inner = self.read();
        let Some(data) = inner.tenants.get(tenant) else { return Ok(Vec::new()) };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(data.scopes.range((lower, Bound::Unbounded)).take(limit).map(|(_, s)| s.clone()).collect())
    }

    async fn put_scope(
        &self,
        scope: &Scope,
        expected_version: Option<u64>,
        reserved_labels: &[String],
        max_scopes: usize,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        let mut inner = self.write();
        inner.judged(&scope.tenant, audit)?;
        // A tenant's entry is made only once the write is known to succeed.
        let empty = TenantData::default();
        let data = inner.tenants.get(&scope.tenant).unwrap_or(&empty);
        let old = data.scopes.get(&scope.id).cloned();
        match (expected_version, &old) {
            (None, Some(_)) => return Err(StoreError::AlreadyExists(scope_name(&scope.id))),
            (None, None) if data.scopes.len() >= max_scopes => {
                return Err(StoreError::QuotaReached {
                    tenant: scope.tenant.clone(),
                    what: "scopes",
                    limit: max_scopes,
                });
            }
            (Some(_), None) => return Err(StoreError::NotFound(scope_name(&scope.id))),
            (Some(expected), Some(old)) if old.version != expected => {
                return Err(StoreError::VersionConflict { what: scope_name(&scope.id), expected, found: old.version });
            }
            _ => {}
        }
        let folded = scope.label.folded();
        let taken =
            reserved_labels.contains(&folded) || data.labels.get(&folded).is_some_and(|owner| *owner != scope.id);
        if taken {
            return Err(StoreError::AlreadyExists(format!(
                "a scope labelled `{}`",
                crate::domain::shorten_for_message(scope.label.as_str())
            )));
        }
        let data = inner.tenants.entry(scope.tenant.clone()).or_default();
        if let Some(old) = &old {
            data.labels.remove(&old.label.folded());
        }
        data.labels.insert(folded, scope.id.clone());
        data.scopes.insert(scope.id.clone(), Arc::new(scope.clone()));
        data.record(&scope.tenant, audit);
        Ok(())
    }

    async fn scope_holders(&self, tenant: &Tenant, id: &ScopeId) -> Result<Vec<Arc<Key>>, StoreError> {
        let inner = self.read();
        let Some(set) = inner.tenants.get(tenant).and_then(|d| d.holders.get(id)) else { return Ok(Vec::new()) };
        Ok(set.iter().filter_map(|k| inner.keys.get(k).cloned()).collect())
    }

    async fn detach_scope(&self, detach: ScopeDetach<'_>) -> Result<u64, StoreError> {
        let mut inner = self.write();
        let guarded = detach.access_version.is_some();
        if detach.access_version.is_some_and(|v| v != inner.access(detach.tenant)) {
            return Err(StoreError::AccessChanged);
        }
        let Inner { keys, tenants, .. } = &mut *inner;
        let data = tenants.get_mut(detach.tenant).ok_or_else(|| StoreError::NotFound(scope_name(detach.id)))?;
        if !data.scopes.contains_key(detach.id) {
            return Err(StoreError::NotFound(scope_name(detach.id)));
        }
        let held = data.holders.get(detach.id);
        let holds = |(key_id, version): &(KeyId, u64)| {
            held.is_some_and(|set| set.contains(key_id)) && keys.get(key_id).is_some_and(|k| k.version == *version)
        };
        if !detach.holders.iter().all(holds) {
            return Err(StoreError::UsersChanged(detach.id.clone()));
        }
        data.detach(keys, detach.id, detach.holders, detach.now);
        if guarded {
            data.access += 1;
        }
        Ok(data.access)
    }

    async fn delete_scope(&self, delete: ScopeDelete<'_>) -> Result<(), StoreError> {
        let mut inner = self.write();
        inner.judged(delete.tenant, delete.audit)?;
        let Inner { keys, tenants, .. } = &mut *inner;
        let data = tenants.get_mut(delete.tenant).ok_or_else(|| StoreError::NotFound(scope_name(delete.id)))?;
        let scope = data.scopes.get(delete.id).ok_or_else(|| StoreError::NotFound(scope_name(delete.id)))?;
        if let Some(expected) = delete.expected_version.filter(|&v| v != scope.version) {
            return Err(StoreError::VersionConflict { what: scope_name(delete.id), expected, found: scope.version });
        }
        let current: Vec<(KeyId, u64)> = data
            .holders
            .get(delete.id)
            .into_iter()
            .flatten()
            .filter_map(|k| keys.get(k).map(|key| (k.clone(), key.version)))
            .collect();
        let mut expected: Vec<(KeyId, u64)> = delete.holders.to_vec();
        expected.sort();
        if current != expected {
            return Err(StoreError::UsersChanged(delete.id.clone()));
        }
        data.detach(keys, delete.id, &current, delete.now);
        data.holders.remove(delete.id);
        data.bind(delete.id, &Members::default());
        if let Some(scope) = data.scopes.remove(delete.id) {
            data.labels.remove(&scope.label.folded());
        }
        data.record(delete.tenant, delete.audit);
        Ok(())
    }

    async fn claim_bootstrap(&self, key: &Key, audit: AuditWrite<'_>) -> Result<Option<KeyId>, StoreError> {
        let mut inner = self.write();
        inner.judged(&key.tenant, audit)?;
        if let Some(existing) = &inner.bootstrap {
            return Ok(Some(existing.clone()));
        }
        if inner.keys.contains_key(&key.id) {
            return Err(StoreError::AlreadyExists(key_name(&key.id)));
        }
        let stored = Arc::new(key.clone());
        inner.keys.insert(key.id.clone(), stored.clone());
        let data = inner.tenants.entry(key.tenant.clone()).or_default();
        data.index(&stored, None);
        data.record(&key.tenant, audit);
        inner.bootstrap = Some(key.id.clone());
        Ok(None)
    }

    async fn release_bootstrap(&self, key: &Key, audit: AuditWrite<'_>) -> Result<bool, StoreError> {
        let mut inner = self.write();
        let Inner { keys, tenants, usage, bootstrap } = &mut *inner;
        let claimed = bootstrap.as_ref() == Some(&key.id)
            && keys.get(&key.id).is_some_and(|k| k.tenant == key.tenant && k.version == key.version);
        if !claimed {
            return Ok(false);
        }
        if let Some(stored) = keys.remove(&key.id) {
            let data = tenants.entry(key.tenant.clone()).or_default();
            data.unindex(&stored);
            data.record(&key.tenant, audit);
        }
        if let Some(used) = usage.get_mut(&key.tenant) {
            used.last_used.remove(&key.id);
            used.days.remove(&key.id);
        }
        *bootstrap = None;
        Ok(true)
    }

    async fn record_usage(&self, batch: &[UsageDelta], retention_days: u32) -> Result<(), StoreError> {
        let mut inner = self.write();
        let mut touched: HashMap<&Tenant, Day> = HashMap::new();
        for delta in batch {
            let usage = inner.usage.entry(delta.tenant.clone()).or_default();
            let last = usage.last_used.entry(delta.key_id.clone()).or_insert(delta.last_used_at);
            *last = (*last).max(delta.last_used_at);
            let day = usage.days.entry(delta.key_id.clone()).or_default().entry(delta.day).or_default();
            day.0 = day.0.saturating_add(delta.allowed);
            day.1 = day.1.saturating_add(delta.denied);
            let newest = touched.entry(&delta.tenant).or_insert(delta.day);
            *newest = (*newest).max(delta.day);
        }
        for (tenant, newest) in touched {
            let oldest_kept = newest.minus(retention_days.saturating_sub(1));
            if let Some(usage) = inner.usage.get_mut(tenant) {
                usage.days.retain(|_, days| {
                    days.retain(|day, _| *day >= oldest_kept);
                    !days.is_empty()
                });
            }
        }
        Ok(())
    }

    async fn key_usage(
        &self,
        tenant: &Tenant,
        id: &KeyId,
        first: Day,
        last: Day,
    ) -> Result<Vec<DailyUsage>, StoreError> {
        let inner = self.read();
        let Some(days) = inner.usage.get(tenant).and_then(|u| u.days.get(id)) else { return Ok(Vec::new()) };
        if first > last {
            return Ok(Vec::new());
        }
        Ok(days.range(first..=last).map(|(&day, &(allowed, denied))| DailyUsage { day, allowed, denied }).collect())
    }

    async fn list_audit(&self, tenant: &Tenant, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let inner = self.read();
        let Some(data) = inner.tenants.get(tenant) else { return Ok(AuditPage::default()) };
        let Some(newest) = query.newest() else { return Ok(AuditPage::default()) };
        let oldest = query.oldest();
        let mut found = data
            .audit
            .iter()
            .rev()
            .skip_while(|e| e.id > newest)
            .take_while(|e| e.id >= oldest)
            .filter(|e| query.matches(e));
        let events: Vec<AuditEvent> = found.by_ref().take(query.limit).cloned().collect();
        let next = match (found.next(), events.last()) {
            (Some(_), Some(last)) => Some(last.id),
            _ => None,
        };
        Ok(AuditPage { events, next })
    }

    async fn access_version(&self, tenant: &Tenant) -> Result<u64, StoreError> {
        Ok(self.read().access(tenant))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn get_tenant_policy(&self, tenant: &Tenant) -> Result<Option<TenantPolicy>, StoreError> {
        Ok(self.read().tenants.get(tenant).and_then(|d| d.policy.clone()))
    }

    async fn put_tenant_policy(
        &self,
        policy: &TenantPolicy,
        expected_version: u64,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        let mut inner = self.write();
        inner.judged(&policy.tenant, audit)?;
        let found = inner.tenants.get(&policy.tenant).and_then(|d| d.policy.as_ref()).map_or(0, |p| p.version);
        if found != expected_version {
            return Err(StoreError::VersionConflict {
                what: format!("the policy of tenant `{}`", policy.tenant),
                expected: expected_version,
                found,
            });
        }
        let data = inner.tenants.entry(policy.tenant.clone()).or_default();
        data.policy = Some(policy.clone());
        data.record(&policy.tenant, audit);
        Ok(())
    }

    async fn get_principal(&self, tenant: &Tenant, subject: &Subject) -> Result<Option<Arc<Principal>>, StoreError> {
        Ok(self.read().tenants.get(tenant).and_then(|d| d.principals.get(subject).cloned()))
    }

    async fn list_principals(
        &self,
        tenant: &Tenant,
        after: Option<&Subject>,
        limit: usize,
    ) -> Result<Vec<Arc<Principal>>, StoreError> {
        let inner = self.read();
        let Some(data) = inner.tenants.get(tenant) else { return Ok(Vec::new()) };
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.clone()));
        Ok(data.principals.range((start, Bound::Unbounded)).take(limit).map(|(_, p)| p.clone()).collect())
    }

    async fn put_principal(
        &self,
        principal: &Principal,
        expected_version: Option<u64>,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        let mut inner = self.write();
        inner.judged(&principal.tenant, audit)?;
        let data = inner.tenants.entry(principal.tenant.clone()).or_default();
        let name = || principal_name(&principal.subject);
        match (expected_version, data.principals.get(&principal.subject)) {
            (None, Some(_)) => return Err(StoreError::AlreadyExists(name())),
            (Some(_), None) => return Err(StoreError::NotFound(name())),
            (Some(expected), Some(old)) if old.version != expected => {
                return Err(StoreError::VersionConflict { what: name(), expected, found: old.version });
            }
            _ => {}
        }
        data.gone.remove(&principal.subject);
        data.principals.insert(principal.subject.clone(), Arc::new(principal.clone()));
        data.record(&principal.tenant, audit);
        Ok(())
    }

    async fn delete_principal(
        &self,
        tenant: &Tenant,
        subject: &Subject,
        expected_version: Option<u64>,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        let mut inner = self.write();
        inner.judged(tenant, audit)?;
        let data = inner.tenants.get_mut(tenant).ok_or_else(|| StoreError::NotFound(principal_name(subject)))?;
        let old = data.principals.get(subject).ok_or_else(|| StoreError::NotFound(principal_name(subject)))?;
        if let Some(expected) = expected_version.filter(|&v| v != old.version) {
            return Err(StoreError::VersionConflict { what: principal_name(subject), expected, found: old.version });
        }
        data.principals.remove(subject);
        data.gone.insert(subject.clone());
        data.record(tenant, audit);
        Ok(())
    }

    async fn get_members(&self, tenant: &Tenant, scope: &ScopeId) -> Result<Members, StoreError> {
        Ok(self.read().tenants.get(tenant).and_then(|d| d.members.get(scope).cloned()).unwrap_or_default())
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
        let mut inner = self.write();
        inner.judged(tenant, audit)?;
        let data = inner.tenants.entry(tenant.clone()).or_default();
        if stored && !data.scopes.contains_key(scope) {
            return Err(StoreError::NotFound(scope_name(scope)));
        }
        let found = data.members.get(scope).map_or(0, |m| m.version);
        if found != expected_version {
            return Err(StoreError::VersionConflict { what: members_name(scope), expected: expected_version, found });
        }
        data.bind(scope, members);
        data.record(tenant, audit);
        Ok(())
    }

    async fn principal_grants(
        &self,
        tenant: &Tenant,
        subject: &Subject,
        roles: &[Role],
    ) -> Result<Arc<PrincipalGrants>, StoreError> {
        let inner = self.read();
        let Some(data) = inner.tenants.get(tenant) else {
            return Ok(Arc::new(PrincipalGrants {
                owner: Owner::Unregistered,
                scope_ids: Vec::new(),
                scopes: Vec::new(),
            }));
        };
        let owner = match data.principals.get(subject) {
            Some(p) => Owner::Registered(p.clone()),
            None if data.gone.contains(subject) => Owner::Gone,
            None => Owner::Unregistered,
        };
        let held: &[Role] = match &owner {
            Owner::Registered(p) => &p.roles,
            _ => &[],
        };
        let mut ids: BTreeSet<ScopeId> = data.by_subject.get(subject).cloned().unwrap_or_default();
        for role in roles.iter().chain(held) {
            ids.extend(data.by_role.get(role).into_iter().flatten().cloned());
        }
        let scopes = ids.iter().filter_map(|id| data.scopes.get(id).cloned()).collect();
        Ok(Arc::new(PrincipalGrants { owner, scope_ids: ids.into_iter().collect(), scopes }))
    }
}
