//! Principals and scope members (issue 7, parts 1 to 3): their administration, the owner
//! ceiling of keys, and checks of bearer principal credentials.
//!
//! A principal's permissions are the scopes bound to its subject or to any of its roles,
//! evaluated with the ordinary decision rules (deny wins). A key whose owner is a registered
//! principal of its tenant is allowed only what both its scopes and its owner allow: the
//! owner is evaluated after the key's scopes allow (later checks come after
//! the scopes). A key whose owner is not registered is bounded by its scopes only. A deleted
//! owner is remembered by the store (it leaves a marker), so its keys are denied
//! (`OWNER_DENIED`) until a principal of that subject is registered again: deleting an owner
//! never widens a key.

use std::{collections::BTreeMap, sync::Arc};

use opentelemetry::KeyValue;
use tracing::field::Empty;

use super::{
    Caller, CheckAnswer, Explain, Keyscope, Page, RETRIES, ServiceError,
    audit::{changed_names, ids},
    check::{Lookup, decided},
};
use crate::{
    domain::{
        Action, AuditOperation, AuditRecord, AuditTarget, Held, InputError, Key, Members, Module, Mutation, Principal,
        PrincipalCheck, PrincipalState, Registration, Role, Rule, Scope, ScopeId, Subject, Tenant, limits, parse_field,
        parse_names,
    },
    store::{Owner, PrincipalGrants, StoreError},
    telemetry::annotate,
};

/// What a key's owner allows, read once per check.
#[derive(Debug, Clone)]
pub(crate) enum Ceiling {
    /// No owner, or one that is not a registered principal: the key's scopes alone decide.
    None,
    /// The owner was registered and deleted: the key is denied everything.
    Gone,
    /// The owner is registered and disabled: the key is denied everything.
    Disabled,
    /// The owner is registered: the scopes bound to it or its roles bound the key.
    Bound(Arc<PrincipalGrants>),
}

/// A bearer principal credential: a caller the client has already authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalCredential {
    /// The subject.
    pub subject: Subject,
    /// The roles the caller presents (the registered principal's roles are added to them).
    pub roles: Vec<Role>,
}

impl PrincipalCredential {
    /// Validates a credential from the wire, naming `field.subject` or `field.roles[i]`.
    pub fn parse(field: &str, subject: &str, roles: &[String]) -> Result<Self, InputError> {
        Ok(PrincipalCredential {
            subject: parse_field("subject", subject).map_err(|e| e.within(field))?,
            roles: parse_names("roles", roles, limits::ROLES_PER_PRINCIPAL_MAX).map_err(|e| e.within(field))?,
        })
    }
}

fn principal_not_found(subject: &Subject, tenant: &Tenant) -> ServiceError {
    ServiceError::NotFound(format!("no principal `{}` in tenant `{tenant}`", subject.shown()))
}

fn retry_exhausted(what: &str) -> ServiceError {
    ServiceError::Aborted(format!("{what} kept changing; retry"))
}

impl Keyscope {
    /// The owner ceiling of a verified key: one store read (cached per replica) when the key
    /// names an owner.
    pub(super) async fn ceiling(&self, key: &Key) -> Result<Ceiling, ServiceError> {
        self.ceiling_read(key, false).await
    }

    /// [`Keyscope::ceiling`] read past any replica cache, for an admin judgment (see
    /// [`crate::store::Store::principal_grants_now`]).
    pub(super) async fn ceiling_now(&self, key: &Key) -> Result<Ceiling, ServiceError> {
        self.ceiling_read(key, true).await
    }

    async fn ceiling_read(&self, key: &Key, now: bool) -> Result<Ceiling, ServiceError> {
        if key.owner.is_empty() {
            return Ok(Ceiling::None);
        }
        // An owner that is not a valid subject can never be a registered principal.
        let Ok(subject) = key.owner.parse::<Subject>() else { return Ok(Ceiling::None) };
        let grants = if now {
            self.store.principal_grants_now(&key.tenant, &subject, &[]).await?
        } else {
            self.store.principal_grants(&key.tenant, &subject, &[]).await?
        };
        Ok(match &grants.owner {
            Owner::Unregistered => Ceiling::None,
            Owner::Gone => Ceiling::Gone,
            Owner::Registered(p) if !p.enabled => Ceiling::Disabled,
            Owner::Registered(_) => Ceiling::Bound(grants.clone()),
        })
    }

    /// The scopes bound to a registered owner, resolved against the builtins; `None` when one
    /// of them exists nowhere (the owner is then denied everything).
    pub(super) fn bound_scopes(&self, grants: &PrincipalGrants) -> Option<Vec<Arc<Scope>>> {
        self.resolve_ids(&grants.scope_ids, &grants.scopes).into_iter().collect()
    }

    /// Answers checks for a bearer principal credential in `tenant`: through the scopes bound
    /// to its subject, to the roles it presents and to the roles of the registered principal
    /// of that subject (if any). A registered, disabled principal is denied everything
    /// (`PRINCIPAL_DISABLED`), and so is a deleted one until it is registered again. No usage is
    /// counted (there is no key).
    pub async fn check_principal(
        &self,
        tenant: &Tenant,
        credential: &PrincipalCredential,
        items: &[(Module, Action)],
        explain: impl Into<Explain>,
    ) -> Result<Vec<CheckAnswer>, ServiceError> {
        let explain = explain.into();
        let span = tracing::debug_span!("check_principal", %tenant, items = items.len(), allowed = Empty);
        let grants = self.store.principal_grants(tenant, &credential.subject, &credential.roles).await?;
        // A deleted principal is denied everything, like a disabled one, until it is registered
        // again: deleting it must never widen its bearer checks (its registered roles, or its
        // disabled state, go with it).
        let state = match &grants.owner {
            Owner::Unregistered => PrincipalState::Unregistered,
            Owner::Gone => PrincipalState::Gone,
            Owner::Registered(p) => PrincipalState::Registered { enabled: p.enabled },
        };
        let lookup = Lookup { builtins: &self.builtins, stored: &grants.scopes };
        let check = PrincipalCheck {
            subject: &credential.subject,
            state,
            scopes: Held { ids: &grants.scope_ids, lookup: &lookup },
        };
        let answers: Vec<CheckAnswer> = items
            .iter()
            .map(|(module, action)| {
                let decision = check.decide(module, *action);
                let message = if explain.wants(decision.reason) {
                    check.explain(&decision, module, *action)
                } else {
                    String::new()
                };
                CheckAnswer {
                    reason: decision.reason,
                    key_id: None,
                    tenant: Some(tenant.clone()),
                    owner: String::new(),
                    scope_ids: decision.scope_ids(),
                    message,
                    retry_after: None,
                    subject: credential.subject.to_string(),
                }
            })
            .collect();
        let allowed = answers.iter().filter(|a| a.allowed()).count();
        span.record("allowed", allowed);
        annotate(|| {
            let mut attributes = vec![
                KeyValue::new("tenant", tenant.as_str().to_owned()),
                KeyValue::new("credential", "principal"),
                KeyValue::new("items", items.len() as i64),
                KeyValue::new("allowed", allowed as i64),
            ];
            if let ([(module, action)], [answer]) = (items, answers.as_slice()) {
                attributes.extend(decided(module, *action, answer));
            }
            attributes
        });
        span.in_scope(|| tracing::debug!("principal check answered"));
        Ok(answers)
    }

    fn principal_event(
        &self,
        caller: &Caller,
        operation: AuditOperation,
        old: Option<&Principal>,
        new: &Principal,
    ) -> AuditRecord {
        let changed = changed_names(&[
            ("roles", old.is_none_or(|o| o.roles != new.roles)),
            ("enabled", old.is_none_or(|o| o.enabled != new.enabled)),
        ]);
        let details = BTreeMap::from([
            ("version".to_owned(), new.version.to_string()),
            ("roles".to_owned(), ids(new.roles.iter().map(Role::as_str))),
            ("enabled".to_owned(), new.enabled.to_string()),
        ]);
        self.record(
            &caller.author(),
            &caller.tenant,
            operation,
            AuditTarget::Principal(new.subject.clone()),
            changed,
            details,
        )
    }

    /// Registers a principal in the caller's tenant, or replaces the roles and enabled flag
    /// of a registered one (at `version`, when given).
    pub async fn upsert_principal(
        &self,
        caller: &Caller,
        subject: Subject,
        roles: Vec<Role>,
        enabled: bool,
        version: Option<u64>,
    ) -> Result<Principal, ServiceError> {
        self.change_principal(caller, &subject, version, true, |old| Principal {
            roles: roles.clone(),
            enabled,
            ..old.clone()
        })
        .await
    }

    /// Replaces a registered principal's roles, if it is at `version`.
    pub async fn set_principal_roles(
        &self,
        caller: &Caller,
        subject: &Subject,
        roles: Vec<Role>,
        version: u64,
    ) -> Result<Principal, ServiceError> {
        self.change_principal(caller, subject, Some(version), false, |old| Principal {
            roles: roles.clone(),
            ..old.clone()
        })
        .await
    }

    /// Disables or enables a registered principal.
    pub async fn set_principal_enabled(
        &self,
        caller: &Caller,
        subject: &Subject,
        enabled: bool,
    ) -> Result<Principal, ServiceError> {
        self.change_principal(caller, subject, None, false, |old| Principal { enabled, ..old.clone() }).await
    }

    /// Read-modify-write of a principal: `change` makes the new record from the registered
    /// one (or, with `create`, from a fresh one when none is registered).
    async fn change_principal(
        &self,
        caller: &Caller,
        subject: &Subject,
        version: Option<u64>,
        create: bool,
        change: impl Fn(&Principal) -> Principal,
    ) -> Result<Principal, ServiceError> {
        for _ in 0..RETRIES {
            let now = self.clock.now();
            let old = self.store.get_principal(&caller.tenant, subject).await?;
            let (new, expected, operation) = match &old {
                Some(old) => {
                    super::at_version(|| format!("principal `{}`", subject.shown()), version, old.version)?;
                    // Replacing a registered principal is a change, whatever the RPC.
                    if create && !caller.holding().allows(&Module::principals(), Action::Update) {
                        return Err(ServiceError::PermissionDenied(format!(
                            "principal `{}` is registered; replacing it needs update on `{}`",
                            subject.shown(),
                            Module::principals()
                        )));
                    }
                    let mut new = change(old);
                    new.version = old.version + 1;
                    new.updated_at = now;
                    (new, Some(old.version), AuditOperation::PutPrincipal)
                }
                None if create && version.is_none() => {
                    let fresh = Principal {
                        tenant: caller.tenant.clone(),
                        subject: subject.clone(),
                        roles: Vec::new(),
                        enabled: true,
                        version: 0,
                        created_at: now,
                        updated_at: now,
                    };
                    let mut new = change(&fresh);
                    new.version = 1;
                    (new, None, AuditOperation::PutPrincipal)
                }
                None => return Err(principal_not_found(subject, &caller.tenant)),
            };
            let registration = Registration::Registered { roles: new.roles.clone(), enabled: new.enabled };
            let change = Mutation::PutPrincipal(subject.clone(), registration);
            // A replacement is judged as an update: the key must still hold it then.
            let replacing = create && old.is_some();
            let as_update =
                replacing.then(|| Caller { module: Module::principals(), action: Action::Update, ..caller.clone() });
            let judged =
                self.enforce(as_update.as_ref().unwrap_or(caller), "roles", &change, &[], Rule::NoEscalation).await?;
            let audit = self.principal_event(caller, operation, old.as_deref(), &new);
            match self.store.put_principal(&new, expected, self.judged_write(&audit, judged)).await {
                Err(StoreError::AccessChanged) => continue,
                // Someone else registered or changed it meanwhile: start over, unless the
                // caller pinned a version.
                Err(StoreError::AlreadyExists(_) | StoreError::NotFound(_)) if version.is_none() => continue,
                Err(StoreError::VersionConflict { .. }) if version.is_none() => continue,
                other => other?,
            }
            tracing::info!(subject = %subject.shown(), tenant = %caller.tenant, actor = %caller.key.id, "principal written");
            return Ok(new);
        }
        Err(retry_exhausted(&format!("principal `{}`", subject.shown())))
    }

    /// One registered principal of the caller's tenant.
    pub async fn get_principal(&self, caller: &Caller, subject: &Subject) -> Result<Arc<Principal>, ServiceError> {
        self.store
            .get_principal(&caller.tenant, subject)
            .await?
            .ok_or_else(|| principal_not_found(subject, &caller.tenant))
    }

    /// A page of the caller's tenant's registered principals, by subject.
    pub async fn list_principals(
        &self,
        caller: &Caller,
        after: Option<&Subject>,
        limit: usize,
    ) -> Result<Page<Arc<Principal>>, ServiceError> {
        let items = self.store.list_principals(&caller.tenant, after, limit + 1).await?;
        Ok(Page::cut(items, limit))
    }

    /// Deletes a registered principal (at `version`, when given); its keys are denied from
    /// then on.
    pub async fn delete_principal(
        &self,
        caller: &Caller,
        subject: &Subject,
        version: Option<u64>,
    ) -> Result<(), ServiceError> {
        let old = self.get_principal(caller, subject).await?;
        super::at_version(|| format!("principal `{}`", subject.shown()), version, old.version)?;
        let details = BTreeMap::from([("version".to_owned(), old.version.to_string())]);
        let audit = self.record(
            &caller.author(),
            &caller.tenant,
            AuditOperation::DeletePrincipal,
            AuditTarget::Principal(subject.clone()),
            Vec::new(),
            details,
        );
        let (change, audit) = (&Mutation::DeletePrincipal(subject.clone()), &audit);
        self.until_judged(move || async move {
            // A delete never widens: its keys and its bearer checks are denied from then on.
            let judged = self.enforce(caller, "subject", change, &[], Rule::NoWidening).await?;
            let audit = self.judged_write(audit, judged);
            match self.store.delete_principal(&caller.tenant, subject, version, audit).await {
                Err(StoreError::NotFound(_)) => Err(principal_not_found(subject, &caller.tenant)),
                other => Ok(other?),
            }
        })
        .await
    }

    /// The scope (builtin or stored) of the caller's tenant, or NOT_FOUND.
    async fn member_scope(&self, caller: &Caller, id: &ScopeId) -> Result<Arc<Scope>, ServiceError> {
        self.lookup_scopes(&caller.tenant, std::slice::from_ref(id))
            .await?
            .pop()
            .flatten()
            .ok_or_else(|| ServiceError::NotFound(format!("no scope `{id}` in tenant `{}`", caller.tenant)))
    }

    /// The member bindings of a scope of the caller's tenant.
    pub async fn get_scope_members(&self, caller: &Caller, id: &ScopeId) -> Result<Members, ServiceError> {
        self.member_scope(caller, id).await?;
        Ok(self.store.get_members(&caller.tenant, id).await?)
    }

    /// Replaces the member bindings of a scope of the caller's tenant, if they are at
    /// `version` (0: never bound). Binding a scope that grants reserved modules is refused
    /// unless the caller holds those grants itself (no escalation).
    pub async fn set_scope_members(
        &self,
        caller: &Caller,
        id: &ScopeId,
        subjects: Vec<Subject>,
        roles: Vec<Role>,
        version: u64,
    ) -> Result<Members, ServiceError> {
        self.member_scope(caller, id).await?;
        // No bindings ever reach u64::MAX: a version that large is bad input, not a conflict.
        let next = version.checked_add(1).ok_or_else(|| InputError::invalid("version", "is out of range"))?;
        let members = Members { subjects, roles, version: next }.normalized();
        let details = BTreeMap::from([
            ("version".to_owned(), members.version.to_string()),
            ("subjects".to_owned(), members.subjects.len().to_string()),
            ("roles".to_owned(), ids(members.roles.iter().map(Role::as_str))),
        ]);
        let changed = vec!["subjects".to_owned(), "roles".to_owned()];
        let audit = self.record(
            &caller.author(),
            &caller.tenant,
            AuditOperation::SetScopeMembers,
            AuditTarget::Scope(id.clone()),
            changed,
            details,
        );
        let stored = !self.builtins.contains(id);
        let (change, audit, bound) = (&Mutation::SetMembers(id.clone(), members.clone()), &audit, &members);
        self.until_judged(move || async move {
            // Binding or unbinding is an explicit edit: held to no escalation.
            let judged = self.enforce(caller, "scope_id", change, &[], Rule::NoEscalation).await?;
            let audit = self.judged_write(audit, judged);
            match self.store.set_members(&caller.tenant, id, bound, version, stored, audit).await {
                Err(StoreError::NotFound(_)) => {
                    Err(ServiceError::NotFound(format!("no scope `{id}` in tenant `{}`", caller.tenant)))
                }
                other => Ok(other?),
            }
        })
        .await?;
        tracing::info!(scope_id = %id, tenant = %caller.tenant, actor = %caller.key.id, "scope members set");
        Ok(members)
    }
}
