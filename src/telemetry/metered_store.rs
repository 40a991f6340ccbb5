//! A [`Store`] decorator that times every call into the backend: calls, errors and latency
//! by operation. It sits between the replica cache and the backend, so a cache hit is no
//! store call. Only failures of the backend itself (unavailable, unreadable) count as errors;
//! a version conflict or a missing record is an answer.

use std::{future::Future, sync::Arc, time::Instant};

use async_trait::async_trait;

use super::Metrics;
use crate::{
    domain::{Day, Key, KeyId, Members, Principal, Role, Scope, ScopeId, Subject, Tenant, TenantPolicy},
    store::{
        AuditPage, AuditQuery, AuditWrite, Credential, DailyUsage, KeyQuery, KeyWrite, PrincipalGrants, ScopeDelete,
        ScopeDetach, Store, StoreError, UsageDelta,
    },
};

/// A store whose calls are measured.
#[derive(Clone)]
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MeteredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStore").finish_non_exhaustive()
    }
}

impl MeteredStore {
    /// Measures the calls into `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        MeteredStore { inner, metrics }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        let failed = matches!(result, Err(StoreError::Unavailable(_) | StoreError::Corrupt(_)));
        self.metrics.store_call(op, !failed, started.elapsed());
        result
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn credential(&self, id: &KeyId) -> Result<Option<Arc<Credential>>, StoreError> {
        self.timed("credential", self.inner.credential(id)).await
    }

    async fn get_key(&self, tenant: &Tenant, id: &KeyId) -> Result<Option<Arc<Key>>, StoreError> {
        self.timed("get_key", self.inner.get_key(tenant, id)).await
    }

    async fn list_keys(&self, tenant: &Tenant, query: &KeyQuery) -> Result<Vec<Arc<Key>>, StoreError> {
        self.timed("list_keys", self.inner.list_keys(tenant, query)).await
    }

    async fn put_key(&self, write: KeyWrite<'_>, max_keys: usize) -> Result<(), StoreError> {
        self.timed("put_key", self.inner.put_key(write, max_keys)).await
    }

    async fn get_scope(&self, tenant: &Tenant, id: &ScopeId) -> Result<Option<Arc<Scope>>, StoreError> {
        self.timed("get_scope", self.inner.get_scope(tenant, id)).await
    }

    async fn get_scopes(&self, tenant: &Tenant, ids: &[ScopeId]) -> Result<Vec<Arc<Scope>>, StoreError> {
        self.timed("get_scopes", self.inner.get_scopes(tenant, ids)).await
    }

    async fn list_scopes(
        &self,
        tenant: &Tenant,
        after: Option<&ScopeId>,
        limit: usize,
    ) -> Result<Vec<Arc<Scope>>, StoreError> {
        self.timed("list_scopes", self.inner.list_scopes(tenant, after, limit)).await
    }

    async fn put_scope(
        &self,
        scope: &Scope,
        expected_version: Option<u64>,
        reserved_labels: &[String],
        max_scopes: usize,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        self.timed("put_scope", self.inner.put_scope(scope, expected_version, reserved_labels, max_scopes, audit)).await
    }

    async fn scope_holders(&self, tenant: &Tenant, id: &ScopeId) -> Result<Vec<Arc<Key>>, StoreError> {
        self.timed("scope_holders", self.inner.scope_holders(tenant, id)).await
    }

    async fn detach_scope(&self, detach: ScopeDetach<'_>) -> Result<u64, StoreError> {
        self.timed("detach_scope", self.inner.detach_scope(detach)).await
    }

    async fn delete_scope(&self, delete: ScopeDelete<'_>) -> Result<(), StoreError> {
        self.timed("delete_scope", self.inner.delete_scope(delete)).await
    }

    async fn claim_bootstrap(&self, key: &Key, audit: AuditWrite<'_>) -> Result<Option<KeyId>, StoreError> {
        self.timed("claim_bootstrap", self.inner.claim_bootstrap(key, audit)).await
    }

    async fn release_bootstrap(&self, key: &Key, audit: AuditWrite<'_>) -> Result<bool, StoreError> {
        self.timed("release_bootstrap", self.inner.release_bootstrap(key, audit)).await
    }

    async fn record_usage(&self, batch: &[UsageDelta], retention_days: u32) -> Result<(), StoreError> {
        self.timed("record_usage", self.inner.record_usage(batch, retention_days)).await
    }

    async fn key_usage(
        &self,
        tenant: &Tenant,
        id: &KeyId,
        first: Day,
        last: Day,
    ) -> Result<Vec<DailyUsage>, StoreError> {
        self.timed("key_usage", self.inner.key_usage(tenant, id, first, last)).await
    }

    async fn list_audit(&self, tenant: &Tenant, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        self.timed("list_audit", self.inner.list_audit(tenant, query)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }

    async fn access_version(&self, tenant: &Tenant) -> Result<u64, StoreError> {
        self.timed("access_version", self.inner.access_version(tenant)).await
    }

    async fn get_tenant_policy(&self, tenant: &Tenant) -> Result<Option<TenantPolicy>, StoreError> {
        self.timed("get_tenant_policy", self.inner.get_tenant_policy(tenant)).await
    }

    async fn put_tenant_policy(
        &self,
        policy: &TenantPolicy,
        expected_version: u64,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        self.timed("put_tenant_policy", self.inner.put_tenant_policy(policy, expected_version, audit)).await
    }

    async fn get_principal(&self, tenant: &Tenant, subject: &Subject) -> Result<Option<Arc<Principal>>, StoreError> {
        self.timed("get_principal", self.inner.get_principal(tenant, subject)).await
    }

    async fn list_principals(
        &self,
        tenant: &Tenant,
        after: Option<&Subject>,
        limit: usize,
    ) -> Result<Vec<Arc<Principal>>, StoreError> {
        self.timed("list_principals", self.inner.list_principals(tenant, after, limit)).await
    }

    async fn put_principal(
        &self,
        principal: &Principal,
        expected_version: Option<u64>,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        self.timed("put_principal", self.inner.put_principal(principal, expected_version, audit)).await
    }

    async fn delete_principal(
        &self,
        tenant: &Tenant,
        subject: &Subject,
        expected_version: Option<u64>,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        self.timed("delete_principal", self.inner.delete_principal(tenant, subject, expected_version, audit)).await
    }

    async fn get_members(&self, tenant: &Tenant, scope: &ScopeId) -> Result<Members, StoreError> {
        self.timed("get_members", self.inner.get_members(tenant, scope)).await
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
        let call = self.inner.set_members(tenant, scope, members, expected_version, stored, audit);
        self.timed("set_members", call).await
    }

    async fn principal_grants(
        &self,
        tenant: &Tenant,
        subject: &Subject,
        roles: &[Role],
    ) -> Result<Arc<PrincipalGrants>, StoreError> {
        self.timed("principal_grants", self.inner.principal_grants(tenant, subject, roles)).await
    }

    async fn principal_grants_now(
        &self,
        tenant: &Tenant,
        subject: &Subject,
        roles: &[Role],
    ) -> Result<Arc<PrincipalGrants>, StoreError> {
        self.timed("principal_grants", self.inner.principal_grants_now(tenant, subject, roles)).await
    }
}
