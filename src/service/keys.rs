//! Key administration: create, read, list, update and the state changes.

use std::{sync::Arc, time::SystemTime};

use ipnet::IpNet;

use super::{Caller, Keyscope, Page, RETRIES, ServiceError, invariant::Judged};
use crate::{
    domain::{
        AuditOperation, AuditRecord, InputError, Key, KeyId, KeyState, Metadata, Mutation, RateLimit, Rule, ScopeId,
        Secret,
    },
    store::{KeyQuery, KeyWrite, StoreError},
};

/// A key to create, its fields already validated.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// Free text.
    pub description: String,
    /// Free-form owner.
    pub owner: String,
    /// 1 to 32 distinct scope ids of the tenant.
    pub scope_ids: Vec<ScopeId>,
    /// Optional expiry, in the future.
    pub expires_at: Option<SystemTime>,
    /// Labels.
    pub metadata: Metadata,
    /// Source networks (empty: any).
    pub allowed_cidrs: Vec<IpNet>,
    /// Optional rate limit.
    pub rate_limit: Option<RateLimit>,
}

/// The fields an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyChanges {
    /// New description.
    pub description: Option<String>,
    /// New owner.
    pub owner: Option<String>,
    /// New scopes.
    pub scope_ids: Option<Vec<ScopeId>>,
    /// New expiry (`Some(None)` removes it).
    pub expires_at: Option<Option<SystemTime>>,
    /// New metadata (replaces all of it).
    pub metadata: Option<Metadata>,
    /// New source networks (an empty list: any source).
    pub allowed_cidrs: Option<Vec<IpNet>>,
    /// New rate limit (`Some(None)` removes it).
    pub rate_limit: Option<Option<RateLimit>>,
}

fn key_not_found(id: &KeyId, tenant: &crate::domain::Tenant) -> ServiceError {
    ServiceError::NotFound(format!("no key `{id}` in tenant `{tenant}`"))
}

impl Keyscope {
    fn check_expiry(&self, expires_at: Option<SystemTime>) -> Result<(), ServiceError> {
        if expires_at.is_some_and(|at| at <= self.clock.now()) {
            return Err(InputError::invalid("expires_at", "must be in the future").into());
        }
        Ok(())
    }

    /// Refuses a key written as `key` (`current`: as it was) that would give any credential a
    /// reserved grant the caller lacks. With `issued`, the key is judged as new: its token goes
    /// to the caller (create, rotate), or its grants are handed out again (any update).
    pub(super) async fn admit_key(
        &self,
        caller: &Caller,
        field: &str,
        current: Option<&Arc<Key>>,
        key: &Key,
        issued: bool,
    ) -> Result<Judged, ServiceError> {
        let change = Mutation::PutKey { id: key.id.clone(), facts: self.key_facts(key), issued };
        self.enforce(caller, field, &change, current.map(std::slice::from_ref).unwrap_or_default(), Rule::NoEscalation)
            .await
    }

    /// Writes a key with its audit event, naming the field when a scope vanished meanwhile.
    pub(super) async fn write_key(
        &self,
        key: &Key,
        expected_version: Option<u64>,
        audit: &AuditRecord,
        judged: Judged,
    ) -> Result<(), ServiceError> {
        let stored_scopes = self.stored_ids(&key.scope_ids);
        let audit = self.judged_write(audit, judged);
        let write = KeyWrite { key, expected_version, stored_scopes: &stored_scopes, audit };
        match self.store.put_key(write, self.quotas.max_keys_per_tenant).await {
            Err(StoreError::ScopeMissing(id)) => {
                let i = key.scope_ids.iter().position(|s| *s == id).unwrap_or(0);
                Err(InputError::invalid(
                    format!("scope_ids[{i}]"),
                    format!("no scope `{id}` in tenant `{}`", key.tenant),
                )
                .into())
            }
            other => Ok(other?),
        }
    }

    /// Creates a key in the caller's tenant; returns it with its token, shown only now.
    pub async fn create_key(&self, caller: &Caller, new: NewKey) -> Result<(Key, Secret), ServiceError> {
        self.check_expiry(new.expires_at)?;
        self.check_lifetime(&caller.tenant, new.expires_at).await?;
        self.tenant_scopes(&caller.tenant, "scope_ids", &new.scope_ids).await?;
        let id = self.tokens.new_key_id()?;
        let (token, text) = self.tokens.issue(&id)?;
        let now = self.clock.now();
        let key = Key {
            secret_hash: self.pepper.hash(&id, &token.secret),
            id,
            tenant: caller.tenant.clone(),
            description: new.description,
            owner: new.owner,
            scope_ids: new.scope_ids,
            state: KeyState::Active,
            expires_at: new.expires_at,
            metadata: new.metadata,
            version: 1,
            created_at: now,
            updated_at: now,
            last_used_at: None,
            previous_secret: None,
            rotated_at: None,
            allowed_cidrs: new.allowed_cidrs,
            rate_limit: new.rate_limit,
        };
        let audit = self.key_event(&caller.author(), AuditOperation::CreateKey, None, &key);
        let (key_ref, audit) = (&key, &audit);
        self.until_judged(move || async move {
            let judged = self.admit_key(caller, "scope_ids", None, key_ref, true).await?;
            self.write_key(key_ref, None, audit, judged).await
        })
        .await?;
        tracing::info!(key_id = %key.id, tenant = %key.tenant, actor = %caller.key.id, "key created");
        Ok((key, text))
    }

    /// One key of the caller's tenant.
    pub async fn get_key(&self, caller: &Caller, id: &KeyId) -> Result<Arc<Key>, ServiceError> {
        self.store.get_key(&caller.tenant, id).await?.ok_or_else(|| key_not_found(id, &caller.tenant))
    }

    /// A key of the caller's tenant about to change: with `expected`, only if it is still at
    /// that version (else a version conflict).
    pub(super) async fn key_at(
        &self,
        caller: &Caller,
        id: &KeyId,
        expected: Option<u64>,
    ) -> Result<Arc<Key>, ServiceError> {
        let current = self.get_key(caller, id).await?;
        super::at_version(|| format!("key `{id}`"), expected, current.version)?;
        Ok(current)
    }

    /// A page of the caller's tenant's keys.
    pub async fn list_keys(&self, caller: &Caller, mut query: KeyQuery) -> Result<Page<Arc<Key>>, ServiceError> {
        let limit = query.limit;
        query.limit = limit + 1;
        let keys = self.store.list_keys(&caller.tenant, &query).await?;
        Ok(Page::cut(keys, limit))
    }

    /// Applies `changes` to a key still at `version`.
    pub async fn update_key(
        &self,
        caller: &Caller,
        id: &KeyId,
        version: u64,
        changes: KeyChanges,
    ) -> Result<Key, ServiceError> {
        let current = self.key_at(caller, id, Some(version)).await?;
        if current.state == KeyState::Revoked {
            return Err(ServiceError::FailedPrecondition(format!(
                "key `{id}` is revoked; a revoked key cannot change"
            )));
        }
        let KeyChanges { description, owner, scope_ids, expires_at, metadata, allowed_cidrs, rate_limit } = changes;
        if let Some(at) = expires_at {
            self.check_expiry(at)?;
            // A new expiry must be within the tenant's maximum key lifetime. Other changes
            // are not held to it: narrowing an older key's scopes must stay possible.
            self.check_lifetime(&caller.tenant, at).await?;
        }
        if let Some(ids) = &scope_ids {
            self.tenant_scopes(&caller.tenant, "scope_ids", ids).await?;
        }
        let mut key = Key::clone(&current);
        if let Some(v) = description {
            key.description = v;
        }
        if let Some(v) = owner {
            key.owner = v;
        }
        if let Some(v) = scope_ids {
            key.scope_ids = v;
        }
        if let Some(v) = expires_at {
            key.expires_at = v;
        }
        if let Some(v) = metadata {
            key.metadata = v;
        }
        if let Some(v) = allowed_cidrs {
            key.allowed_cidrs = v;
        }
        if let Some(v) = rate_limit {
            key.rate_limit = v;
        }
        key.version = version + 1;
        key.updated_at = self.clock.now();
        // Any change to a key hands its grants out again: the caller must hold the reserved
        // ones, not only when its scopes change.
        let audit = self.key_event(&caller.author(), AuditOperation::UpdateKey, Some(&current), &key);
        let (key_ref, current, audit) = (&key, &current, &audit);
        self.until_judged(move || async move {
            let judged = self.admit_key(caller, "scope_ids", Some(current), key_ref, true).await?;
            self.write_key(key_ref, Some(version), audit, judged).await
        })
        .await?;
        tracing::info!(key_id = %key.id, tenant = %key.tenant, actor = %caller.key.id, "key updated");
        Ok(key)
    }

    /// Disables, enables or revokes a key. With `version`, only if the key is still at it;
    /// without, the change is retried over concurrent writers. Asking for the state a key is
    /// already in changes nothing.
    pub async fn set_key_state(
        &self,
        caller: &Caller,
        id: &KeyId,
        version: Option<u64>,
        target: KeyState,
    ) -> Result<Key, ServiceError> {
        for _ in 0..RETRIES {
            let current = self.key_at(caller, id, version).await?;
            if current.state == target {
                return Ok(Key::clone(&current));
            }
            if current.state == KeyState::Revoked {
                return Err(ServiceError::FailedPrecondition(format!(
                    "key `{id}` is revoked; it cannot become {}",
                    target.as_str()
                )));
            }
            let mut key = Key::clone(&current);
            key.state = target;
            key.version += 1;
            key.updated_at = self.clock.now();
            // Enabling hands the key's grants back out; disabling and revoking only narrow.
            let judged = match target {
                KeyState::Active => self.admit_key(caller, "id", Some(&current), &key, false).await?,
                KeyState::Disabled | KeyState::Revoked => Judged::NARROWING,
            };
            let operation = match target {
                KeyState::Active => AuditOperation::EnableKey,
                KeyState::Disabled => AuditOperation::DisableKey,
                KeyState::Revoked => AuditOperation::RevokeKey,
            };
            let audit = self.key_event(&caller.author(), operation, Some(&current), &key);
            match self.write_key(&key, Some(current.version), &audit, judged).await {
                Err(ServiceError::Store(StoreError::VersionConflict { .. })) if version.is_none() => continue,
                Err(ServiceError::Store(StoreError::AccessChanged)) => continue,
                other => other?,
            }
            tracing::info!(key_id = %key.id, tenant = %key.tenant, actor = %caller.key.id, state = target.as_str(), "key state changed");
            return Ok(key);
        }
        Err(ServiceError::Aborted(format!("key `{id}` kept changing under concurrent writers; retry")))
    }
}
