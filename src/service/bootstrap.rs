//! The first admin key: on start keyscope makes sure a `system` admin key exists, from a
//! configured token or else by creating one that is shown once.

use super::{Keyscope, ServiceError, audit::Author, builtins::ADMIN};
use crate::domain::{
    Action, Actor, AuditOperation, AuditRecord, Key, KeyId, KeyState, Metadata, Module, RequestId, Secret, Tenant,
    Token, key_status,
};

/// What start-up found or did about the bootstrap admin key.
#[derive(Debug)]
pub enum Bootstrap {
    /// The configured token's key already existed.
    Configured(KeyId),
    /// The configured token's key was created now.
    ConfiguredCreated(KeyId),
    /// A bootstrap key made on an earlier start exists; nothing was created.
    Existing(KeyId),
    /// A key was created now; its token must be shown once.
    Created(KeyId, Secret),
}

impl Keyscope {
    fn bootstrap_key(&self, token: &Token) -> Key {
        let now = self.clock.now();
        Key {
            id: token.key_id.clone(),
            tenant: Tenant::system(),
            description: "bootstrap admin key".into(),
            owner: "keyscope".into(),
            // INVARIANT: `admin` is a builtin id and always parses.
            scope_ids: vec![ADMIN.parse().expect("INVARIANT: builtin scope id")],
            state: KeyState::Active,
            expires_at: None,
            metadata: Metadata::new(),
            version: 1,
            created_at: now,
            updated_at: now,
            last_used_at: None,
            secret_hash: self.pepper.hash(&token.key_id, &token.secret),
            previous_secret: None,
            rotated_at: None,
            allowed_cidrs: Vec::new(),
            rate_limit: None,
        }
    }

    /// The audit event of a bootstrap key: created by keyscope itself.
    fn bootstrap_event(&self, key: &Key) -> Result<AuditRecord, ServiceError> {
        let author = Author { actor: Actor::Keyscope, request_id: RequestId::generate()? };
        Ok(self.key_event(&author, AuditOperation::CreateKey, None, key))
    }

    /// Makes sure a `system` admin key exists: the configured token's, or a new one.
    pub async fn ensure_bootstrap(&self, configured: Option<&str>) -> Result<Bootstrap, ServiceError> {
        if let Some(text) = configured {
            let token = self.tokens.parse(text).map_err(|_| {
                ServiceError::FailedPrecondition("bootstrap.admin_token is not a well-formed keyscope token".into())
            })?;
            return match self.store.credential(&token.key_id).await? {
                Some(found) if self.pepper.verify(&token, Some(&found.key.secret_hash)) => {
                    let holder = self.holder(found.key, found.scopes);
                    let usable = holder.key.tenant.is_system()
                        && key_status(&holder.key, self.clock.now(), None).is_none()
                        && [Module::keys(), Module::scopes()]
                            .iter()
                            .all(|m| Action::ALL.iter().all(|&a| holder.decide(m, a, super::Explain::Never).allowed()));
                    if !usable {
                        return Err(ServiceError::FailedPrecondition(format!(
                            "bootstrap.admin_token names key `{}`, which is not an active `system` admin key",
                            token.key_id
                        )));
                    }
                    Ok(Bootstrap::Configured(token.key_id))
                }
                Some(_) => Err(ServiceError::FailedPrecondition(format!(
                    "bootstrap.admin_token names key `{}`, which exists with a different secret",
                    token.key_id
                ))),
                None => {
                    let key = self.bootstrap_key(&token);
                    let audit = self.bootstrap_event(&key)?;
                    match self.store.claim_bootstrap(&key, self.audit_write(&audit)).await? {
                        None => Ok(Bootstrap::ConfiguredCreated(token.key_id)),
                        // Another bootstrap key exists (made before a token was configured):
                        // add the configured one beside it.
                        Some(_) => {
                            let write = crate::store::KeyWrite {
                                key: &key,
                                expected_version: None,
                                stored_scopes: &[],
                                audit: self.audit_write(&audit),
                            };
                            self.store.put_key(write, usize::MAX).await?;
                            Ok(Bootstrap::ConfiguredCreated(token.key_id))
                        }
                    }
                }
            };
        }
        let id = self.tokens.new_key_id()?;
        let (token, text) = self.tokens.issue(&id)?;
        let key = self.bootstrap_key(&token);
        let audit = self.bootstrap_event(&key)?;
        match self.store.claim_bootstrap(&key, self.audit_write(&audit)).await? {
            Some(existing) => Ok(Bootstrap::Existing(existing)),
            None => Ok(Bootstrap::Created(id, text)),
        }
    }
}
