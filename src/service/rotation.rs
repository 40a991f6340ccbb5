//! Key rotation: a new secret for the same key, the old one accepted for a grace period.

use std::time::Duration;

use super::{Caller, Keyscope, RETRIES, ServiceError};
use crate::{
    domain::{AuditOperation, InputError, Key, KeyId, KeyState, PreviousSecret, Secret, limits, millis},
    store::StoreError,
};

/// Checks a rotation's grace period: 0 to 30 days.
pub fn validate_grace(field: &str, grace: Duration) -> Result<Duration, InputError> {
    if grace > Duration::from_secs(limits::ROTATION_GRACE_MAX_SECS) {
        return Err(InputError::invalid(field, "must be at most 30 days"));
    }
    Ok(grace)
}

impl Keyscope {
    /// Issues a new secret for a key of the caller's tenant and returns the key and its new
    /// token (shown only now). The key keeps its id, scopes, owner and metadata; its version
    /// grows by one. The old secret stays valid for `grace` (zero: it dies at once); a secret
    /// kept from an earlier rotation is replaced. With `version`, only if the key is still at
    /// it; without, the rotation is retried over concurrent writers.
    pub async fn rotate_key(
        &self,
        caller: &Caller,
        id: &KeyId,
        grace: Duration,
        version: Option<u64>,
    ) -> Result<(Key, Secret), ServiceError> {
        let grace = validate_grace("grace", grace)?;
        for _ in 0..RETRIES {
            let current = self.key_at(caller, id, version).await?;
            if current.state == KeyState::Revoked {
                return Err(ServiceError::FailedPrecondition(format!(
                    "key `{id}` is revoked; a revoked key cannot be rotated"
                )));
            }
            // A new secret extends the key's useful life: it must fit the tenant's policy.
            self.check_lifetime(&caller.tenant, current.expires_at).await?;
            // The caller receives a working token for the key: it must hold any administrative
            // grant the key has.
            let judged = self.admit_key(caller, "id", Some(&current), &current, true).await?;
            let (token, text) = self.tokens.issue(id)?;
            let now = self.clock.now();
            let mut key = Key::clone(&current);
            key.previous_secret = (!grace.is_zero())
                .then(|| PreviousSecret { hash: current.secret_hash.clone(), expires_at: now + grace });
            key.secret_hash = self.pepper.hash(id, &token.secret);
            key.rotated_at = Some(now);
            key.version += 1;
            key.updated_at = now;
            let mut audit = self.key_event(&caller.author(), AuditOperation::RotateKey, Some(&current), &key);
            audit.details.insert("grace_secs".into(), grace.as_secs().to_string());
            if let Some(previous) = &key.previous_secret {
                audit.details.insert("previous_secret_expires_at_ms".into(), millis(previous.expires_at).to_string());
            }
            match self.write_key(&key, Some(current.version), &audit, judged).await {
                Err(ServiceError::Store(StoreError::VersionConflict { .. })) if version.is_none() => continue,
                Err(ServiceError::Store(StoreError::AccessChanged)) => continue,
                other => other?,
            }
            tracing::info!(key_id = %key.id, tenant = %key.tenant, actor = %caller.key.id, grace_secs = grace.as_secs(), "key rotated");
            return Ok((key, text));
        }
        Err(ServiceError::Aborted(format!("key `{id}` kept changing under concurrent writers; retry")))
    }
}
