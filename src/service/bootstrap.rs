//! The first admin key: on start keyscope makes sure a `system` admin key exists, from a
//! configured token or else by creating one that is shown once.
//!
//! A bootstrap key has no owner, so no principal anybody registers can bound it (an owner is
//! a subject, and a subject is never empty). A key made by an older version has the owner
//! `keyscope`; start-up says so, and refuses a configured key that its owner bounds.

use std::{collections::BTreeMap, sync::Arc};

use super::{Keyscope, ServiceError, audit::Author, builtins::ADMIN, check::Holder};
use crate::{
    domain::{
        Action, Actor, AuditOperation, AuditRecord, AuditTarget, Key, KeyId, KeyState, Metadata, Module, RequestId,
        Secret, Tenant, Token,
    },
    store::{Credential, KeyWrite, StoreError},
};

/// The owner older versions gave the bootstrap key. A principal of that subject registered in
/// tenant `system` bounds such a key; start-up warns about it.
pub const LEGACY_BOOTSTRAP_OWNER: &str = "keyscope";

/// What start-up found or did about the bootstrap admin key.
#[derive(Debug)]
pub enum Bootstrap {
    /// The configured token's key already existed (or another replica made it meanwhile).
    Configured(KeyId),
    /// The configured token's key was created now.
    ConfiguredCreated(KeyId),
    /// A bootstrap key made on an earlier start exists; nothing was created.
    Existing(KeyId),
    /// A key was created now; its token must be shown once, or the key released again
    /// ([`Keyscope::release_bootstrap`]).
    Created(KeyId, Secret),
}

impl Keyscope {
    fn bootstrap_key(&self, token: &Token) -> Key {
        let now = self.clock.now();
        Key {
            id: token.key_id.clone(),
            tenant: Tenant::system(),
            description: "bootstrap admin key".into(),
            // No owner: an owner is bounded by the principal of that subject, which any
            // `system` principals admin could register.
            owner: String::new(),
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

    /// keyscope itself, as the author of its own changes.
    fn keyscope_author() -> Result<Author, ServiceError> {
        Ok(Author { actor: Actor::Keyscope, request_id: RequestId::generate()? })
    }

    /// The audit event of a bootstrap key: created by keyscope itself.
    fn bootstrap_event(&self, key: &Key) -> Result<AuditRecord, ServiceError> {
        Ok(self.key_event(&Self::keyscope_author()?, AuditOperation::CreateKey, None, key))
    }

    /// Makes sure a `system` admin key exists: the configured token's, or a new one.
    pub async fn ensure_bootstrap(&self, configured: Option<&str>) -> Result<Bootstrap, ServiceError> {
        if let Some(text) = configured {
            return self.ensure_configured(text).await;
        }
        let id = self.tokens.new_key_id()?;
        let (token, text) = self.tokens.issue(&id)?;
        let key = self.bootstrap_key(&token);
        let audit = self.bootstrap_event(&key)?;
        match self.store.claim_bootstrap(&key, self.audit_write(&audit)).await? {
            Some(existing) => {
                self.report_existing(&existing).await?;
                Ok(Bootstrap::Existing(existing))
            }
            None => Ok(Bootstrap::Created(id, text)),
        }
    }

    /// The configured token's key: checked when it exists, else created (idempotently:
    /// replicas starting together with the same token all succeed).
    async fn ensure_configured(&self, text: &str) -> Result<Bootstrap, ServiceError> {
        let token = self.tokens.parse(text).map_err(|_| {
            ServiceError::FailedPrecondition("bootstrap.admin_token is not a well-formed keyscope token".into())
        })?;
        if let Some(found) = self.store.credential(&token.key_id).await? {
            self.check_configured(&token, found).await?;
            return Ok(Bootstrap::Configured(token.key_id));
        }
        let key = self.bootstrap_key(&token);
        let audit = self.bootstrap_event(&key)?;
        let created = match self.store.claim_bootstrap(&key, self.audit_write(&audit)).await {
            Ok(None) => true,
            // A replica with the same token claimed it meanwhile.
            Ok(Some(existing)) if existing == token.key_id => false,
            // Another bootstrap key exists (made before a token was configured): add the
            // configured one beside it.
            Ok(Some(_)) => {
                let write =
                    KeyWrite { key: &key, expected_version: None, stored_scopes: &[], audit: self.audit_write(&audit) };
                match self.store.put_key(write, usize::MAX).await {
                    Ok(()) => true,
                    Err(StoreError::AlreadyExists(_)) => false,
                    Err(error) => return Err(error.into()),
                }
            }
            Err(StoreError::AlreadyExists(_)) => false,
            Err(error) => return Err(error.into()),
        };
        if created {
            return Ok(Bootstrap::ConfiguredCreated(token.key_id));
        }
        // Lost the race: what the other replica made must be this token's usable key.
        let found = self.store.credential(&token.key_id).await?.ok_or_else(|| {
            ServiceError::FailedPrecondition(format!(
                "bootstrap.admin_token names key `{}`, which another replica was creating and which cannot be read back",
                token.key_id
            ))
        })?;
        self.check_configured(&token, found).await?;
        Ok(Bootstrap::Configured(token.key_id))
    }

    /// Refuses a configured token whose key has another secret or cannot administer.
    async fn check_configured(&self, token: &Token, found: Arc<Credential>) -> Result<(), ServiceError> {
        if !self.pepper.verify(token, Some(&found.key.secret_hash)) {
            return Err(ServiceError::FailedPrecondition(format!(
                "bootstrap.admin_token names key `{}`, which exists with a different secret",
                token.key_id
            )));
        }
        let key = found.key.clone();
        if let Some(why) = self.cannot_administer(&found).await? {
            return Err(ServiceError::FailedPrecondition(format!(
                "bootstrap.admin_token names key `{}`, which is not an active `system` admin key: {why}; set bootstrap.admin_token to a new token (`keyscope token new`) to add another",
                token.key_id
            )));
        }
        warn_legacy_owner(&key);
        Ok(())
    }

    /// Says when the bootstrap key made on an earlier start can no longer administer (it may
    /// have been retired on purpose, so start-up goes on).
    async fn report_existing(&self, id: &KeyId) -> Result<(), ServiceError> {
        let Some(found) = self.store.credential(id).await? else {
            tracing::warn!(key_id = %id, "the bootstrap admin key made on an earlier start no longer exists");
            return Ok(());
        };
        let key = found.key.clone();
        match self.cannot_administer(&found).await? {
            Some(why) => tracing::warn!(
                key_id = %id,
                %why,
                "the bootstrap admin key made on an earlier start cannot administer; if no other admin key can, set bootstrap.admin_token to a new token (`keyscope token new`) to add one"
            ),
            None => warn_legacy_owner(&key),
        }
        Ok(())
    }

    /// Why `key` could not make every admin call in every tenant, by the checks a real admin
    /// call makes: its state and tenant, its scopes, then its owner's ceiling. Its source
    /// networks and rate limit are not checked: they depend on where and how often it is used.
    async fn cannot_administer(&self, found: &Credential) -> Result<Option<String>, ServiceError> {
        let key = &found.key;
        if !key.tenant.is_system() {
            return Ok(Some(format!("it belongs to tenant `{}`", key.tenant)));
        }
        let ceiling = self.ceiling(key).await?;
        // Everything a real admin call checks but its source networks and rate limit.
        let key = Arc::new(Key { allowed_cidrs: Vec::new(), ..(**key).clone() });
        let holder = Holder { record: Arc::new(Credential { key, scopes: found.scopes.clone() }) };
        for module in Module::reserved_known() {
            for action in Action::ALL {
                let refusal = self.with_key_check(&holder, &ceiling, None, None, |check| {
                    let decision = check.decide(&module, action);
                    (!decision.allowed()).then(|| check.explain(&decision, &module, action))
                });
                if let Some(why) = refusal {
                    return Ok(Some(format!("{action} on `{module}` is refused: {why}")));
                }
            }
        }
        Ok(None)
    }

    /// Removes the bootstrap key created by this start ([`Bootstrap::Created`]) when its token
    /// could not be shown, so that the next start makes a new one instead of finding a key
    /// nobody can use. Only that key, and only while it is still the bootstrap key, unchanged;
    /// the removal is audited. Returns whether it was removed.
    pub async fn release_bootstrap(&self, id: &KeyId) -> Result<bool, ServiceError> {
        let Some(key) = self.store.get_key(&Tenant::system(), id).await? else { return Ok(false) };
        let details = BTreeMap::from([
            ("version".to_owned(), key.version.to_string()),
            ("reason".to_owned(), "its token could not be shown".to_owned()),
        ]);
        let audit = self.record(
            &Self::keyscope_author()?,
            &key.tenant,
            AuditOperation::DeleteKey,
            AuditTarget::Key(key.id.clone()),
            Vec::new(),
            details,
        );
        Ok(self.store.release_bootstrap(&key, self.audit_write(&audit)).await?)
    }
}

/// Warns about a bootstrap key made by an older version, whose owner a principal could bound.
fn warn_legacy_owner(key: &Key) {
    if key.owner == LEGACY_BOOTSTRAP_OWNER {
        tracing::warn!(
            key_id = %key.id,
            "the bootstrap admin key has the owner `keyscope` (made by an older version): a principal `keyscope` registered in tenant `system` would bound it; clear its owner (`keyscope key update {} --tenant system --version N --owner ''`)",
            key.id
        );
    }
}
