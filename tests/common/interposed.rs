//! A store that forwards every call to another one, and lets a test act at chosen points of a
//! scenario (its [`Hooks`]): to make replicas race, or to stop a forced scope delete between
//! its batches. The test file declares it with `#[path = "common/interposed.rs"] mod interposed;`.
#![allow(dead_code, missing_docs)]

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use async_trait::async_trait;
use keyscope::{
    domain::{Day, Key, KeyId, Members, Principal, Role, Scope, ScopeId, Subject, Tenant, TenantPolicy},
    store::{
        AuditPage, AuditQuery, AuditWrite, Credential, DailyUsage, KeyQuery, KeyWrite, PrincipalGrants, ScopeDelete,
        ScopeDetach, Store, StoreError, UsageDelta,
    },
};
use tokio::sync::Notify;

/// Where a test acts; each does nothing unless a test says otherwise.
#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    /// After a check's key read ([`Store::credential`]), before it is answered.
    async fn after_credential(&self) {}
    /// Before a batch of a forced scope delete ([`Store::detach_scope`]) is written.
    async fn before_detach(&self) {}
}

/// `inner`, with `hooks` called where they say.
pub struct Interposed<H> {
    pub inner: Arc<dyn Store>,
    pub hooks: H,
}

/// Holds the `nth` (1 = first) batch of a forced scope delete until the test lets it go:
/// [`PauseBeforeDetach::reached`] returns once the delete waits there, with every earlier
/// batch written.
#[derive(Default)]
pub struct PauseBeforeDetach {
    nth: usize,
    seen: AtomicUsize,
    reached: Notify,
    resume: Notify,
}

impl PauseBeforeDetach {
    pub fn before(nth: usize) -> Self {
        PauseBeforeDetach { nth, ..Self::default() }
    }

    /// Waits until the delete stands before the batch.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the delete go on.
    pub fn resume(&self) {
        self.resume.notify_one();
    }

    /// How many batches were about to be written so far.
    pub fn batches(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Hooks for Arc<PauseBeforeDetach> {
    async fn before_detach(&self) {
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.nth {
            self.reached.notify_one();
            self.resume.notified().await;
        }
    }
}

#[async_trait]
impl<H: Hooks> Store for Interposed<H> {
    async fn credential(&self, id: &KeyId) -> Result<Option<Arc<Credential>>, StoreError> {
        let found = self.inner.credential(id).await;
        self.hooks.after_credential().await;
        found
    }
    async fn get_key(&self, t: &Tenant, id: &KeyId) -> Result<Option<Arc<Key>>, StoreError> {
        self.inner.get_key(t, id).await
    }
    async fn list_keys(&self, t: &Tenant, q: &KeyQuery) -> Result<Vec<Arc<Key>>, StoreError> {
        self.inner.list_keys(t, q).await
    }
    async fn put_key(&self, w: KeyWrite<'_>, max: usize) -> Result<(), StoreError> {
        self.inner.put_key(w, max).await
    }
    async fn get_scope(&self, t: &Tenant, id: &ScopeId) -> Result<Option<Arc<Scope>>, StoreError> {
        self.inner.get_scope(t, id).await
    }
    async fn get_scopes(&self, t: &Tenant, ids: &[ScopeId]) -> Result<Vec<Arc<Scope>>, StoreError> {
        self.inner.get_scopes(t, ids).await
    }
    async fn list_scopes(
        &self,
        t: &Tenant,
        after: Option<&ScopeId>,
        limit: usize,
    ) -> Result<Vec<Arc<Scope>>, StoreError> {
        self.inner.list_scopes(t, after, limit).await
    }
    async fn put_scope(
        &self,
        s: &Scope,
        v: Option<u64>,
        reserved: &[String],
        max: usize,
        a: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        self.inner.put_scope(s, v, reserved, max, a).await
    }
    async fn scope_holders(&self, t: &Tenant, id: &ScopeId) -> Result<Vec<Arc<Key>>, StoreError> {
        self.inner.scope_holders(t, id).await
    }
    async fn detach_scope(&self, d: ScopeDetach<'_>) -> Result<u64, StoreError> {
        self.hooks.before_detach().await;
        self.inner.detach_scope(d).await
    }
    async fn delete_scope(&self, d: ScopeDelete<'_>) -> Result<(), StoreError> {
        self.inner.delete_scope(d).await
    }
    async fn claim_bootstrap(&self, k: &Key, a: AuditWrite<'_>) -> Result<Option<KeyId>, StoreError> {
        self.inner.claim_bootstrap(k, a).await
    }
    async fn release_bootstrap(&self, k: &Key, a: AuditWrite<'_>) -> Result<bool, StoreError> {
        self.inner.release_bootstrap(k, a).await
    }
    async fn list_audit(&self, t: &Tenant, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        self.inner.list_audit(t, q).await
    }
    async fn record_usage(&self, batch: &[UsageDelta], days: u32) -> Result<(), StoreError> {
        self.inner.record_usage(batch, days).await
    }
    async fn key_usage(&self, t: &Tenant, id: &KeyId, a: Day, b: Day) -> Result<Vec<DailyUsage>, StoreError> {
        self.inner.key_usage(t, id, a, b).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn access_version(&self, t: &Tenant) -> Result<u64, StoreError> {
        self.inner.access_version(t).await
    }
    async fn get_tenant_policy(&self, t: &Tenant) -> Result<Option<TenantPolicy>, StoreError> {
        self.inner.get_tenant_policy(t).await
    }
    async fn put_tenant_policy(&self, p: &TenantPolicy, v: u64, a: AuditWrite<'_>) -> Result<(), StoreError> {
        self.inner.put_tenant_policy(p, v, a).await
    }
    async fn get_principal(&self, t: &Tenant, s: &Subject) -> Result<Option<Arc<Principal>>, StoreError> {
        self.inner.get_principal(t, s).await
    }
    async fn list_principals(
        &self,
        t: &Tenant,
        after: Option<&Subject>,
        limit: usize,
    ) -> Result<Vec<Arc<Principal>>, StoreError> {
        self.inner.list_principals(t, after, limit).await
    }
    async fn put_principal(&self, p: &Principal, v: Option<u64>, a: AuditWrite<'_>) -> Result<(), StoreError> {
        self.inner.put_principal(p, v, a).await
    }
    async fn delete_principal(
        &self,
        t: &Tenant,
        s: &Subject,
        v: Option<u64>,
        a: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        self.inner.delete_principal(t, s, v, a).await
    }
    async fn get_members(&self, t: &Tenant, id: &ScopeId) -> Result<Members, StoreError> {
        self.inner.get_members(t, id).await
    }
    async fn set_members(
        &self,
        t: &Tenant,
        id: &ScopeId,
        m: &Members,
        v: u64,
        stored: bool,
        a: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        self.inner.set_members(t, id, m, v, stored, a).await
    }
    async fn principal_grants(
        &self,
        t: &Tenant,
        s: &Subject,
        roles: &[Role],
    ) -> Result<Arc<PrincipalGrants>, StoreError> {
        self.inner.principal_grants(t, s, roles).await
    }
    async fn principal_grants_now(
        &self,
        t: &Tenant,
        s: &Subject,
        roles: &[Role],
    ) -> Result<Arc<PrincipalGrants>, StoreError> {
        self.inner.principal_grants_now(t, s, roles).await
    }
}
