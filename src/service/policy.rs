//! Tenant key policies: the maximum key lifetime, stored per tenant with a configured
//! default, enforced when a key is created, given a new expiry or rotated.

use std::time::{Duration, SystemTime};

use super::{Caller, Keyscope, ServiceError};
use crate::domain::{AuditOperation, AuditTarget, Tenant, TenantPolicy, check_key_lifetime};

impl Keyscope {
    /// Sets the default maximum key lifetime of tenants with no stored policy
    /// (`limits.max_key_lifetime`; `None`: no maximum).
    pub fn with_max_key_lifetime(mut self, max: Option<Duration>) -> Self {
        self.default_max_key_lifetime = max;
        self
    }

    /// The policy that applies to `tenant`: its stored one, else the configured default
    /// (version 0).
    pub(super) async fn effective_policy(&self, tenant: &Tenant) -> Result<TenantPolicy, ServiceError> {
        Ok(match self.store.get_tenant_policy(tenant).await? {
            Some(policy) => policy,
            None => TenantPolicy {
                tenant: tenant.clone(),
                max_key_lifetime: self.default_max_key_lifetime,
                version: 0,
                updated_at: SystemTime::UNIX_EPOCH,
            },
        })
    }

    /// Refuses an expiry (`None`: never) beyond the tenant's maximum key lifetime from now.
    pub(super) async fn check_lifetime(
        &self,
        tenant: &Tenant,
        expires_at: Option<SystemTime>,
    ) -> Result<(), ServiceError> {
        let policy = self.effective_policy(tenant).await?;
        Ok(check_key_lifetime(policy.max_key_lifetime, self.clock.now(), expires_at)?)
    }

    /// The caller's tenant's key policy.
    pub async fn get_tenant_policy(&self, caller: &Caller) -> Result<TenantPolicy, ServiceError> {
        self.effective_policy(&caller.tenant).await
    }

    /// Sets the caller's tenant's maximum key lifetime (`None`: none). With
    /// `expected_version`, only if the stored policy is still at it (0: none stored). Keys
    /// that exist keep their expiry.
    pub async fn set_tenant_policy(
        &self,
        caller: &Caller,
        max_key_lifetime: Option<Duration>,
        expected_version: Option<u64>,
    ) -> Result<TenantPolicy, ServiceError> {
        let current = self.store.get_tenant_policy(&caller.tenant).await?;
        let found = current.as_ref().map_or(0, |p| p.version);
        super::at_version(|| format!("the policy of tenant `{}`", caller.tenant), expected_version, found)?;
        let policy = TenantPolicy {
            tenant: caller.tenant.clone(),
            max_key_lifetime,
            version: found + 1,
            updated_at: self.clock.now(),
        };
        let mut details = std::collections::BTreeMap::from([("version".to_owned(), policy.version.to_string())]);
        let shown = |d: Option<Duration>| d.map_or_else(|| "none".to_owned(), |d| d.as_secs().to_string());
        details.insert("max_key_lifetime_secs".into(), shown(max_key_lifetime));
        if let Some(old) = &current {
            details.insert("previous_max_key_lifetime_secs".into(), shown(old.max_key_lifetime));
        }
        let changed = super::audit::changed_names(&[(
            "max_key_lifetime",
            current.as_ref().is_none_or(|c| c.max_key_lifetime != max_key_lifetime),
        )]);
        let audit = self.record(
            &caller.author(),
            &caller.tenant,
            AuditOperation::SetTenantPolicy,
            AuditTarget::Tenant(caller.tenant.clone()),
            changed,
            details,
        );
        self.store.put_tenant_policy(&policy, found, self.audit_write(&audit)).await?;
        tracing::info!(tenant = %caller.tenant, actor = %caller.key.id, "tenant policy set");
        Ok(policy)
    }
}
