//! Scope administration: create, read, list, update, delete, clone and evaluate.

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use super::{Builtins, Caller, Keyscope, Page, ServiceError};
use crate::{
    domain::{
        Action, AuditOperation, AuditRecord, InputError, KeyId, Label, Module, Mutation, Reason, Rule, Rules, Scope,
        ScopeId, ScopeMode, evaluate,
    },
    store::{DETACH_BATCH, ScopeDelete, ScopeDetach, StoreError},
};

/// A scope to create, its fields already validated.
#[derive(Debug, Clone)]
pub struct ScopeDraft {
    /// Unique per tenant, case-insensitively.
    pub label: Label,
    /// Free text.
    pub description: String,
    /// Allow or deny.
    pub mode: ScopeMode,
    /// Patterns per action.
    pub rules: Rules,
}

/// The fields an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ScopeChanges {
    /// New label.
    pub label: Option<Label>,
    /// New description.
    pub description: Option<String>,
    /// New mode.
    pub mode: Option<ScopeMode>,
    /// New rules.
    pub rules: Option<Rules>,
}

fn scope_not_found(id: &ScopeId, caller: &Caller) -> ServiceError {
    ServiceError::NotFound(format!("no scope `{id}` in tenant `{}`", caller.tenant))
}

fn locked(id: &ScopeId) -> ServiceError {
    ServiceError::FailedPrecondition(format!("scope `{id}` is builtin and locked"))
}

impl Keyscope {
    /// Writes a scope created (`old` none) or changed from `old`, guarded by `old`'s version,
    /// with its audit event.
    async fn write_scope(
        &self,
        caller: &Caller,
        old: Option<&Scope>,
        scope: &Scope,
        audit: &AuditRecord,
    ) -> Result<(), ServiceError> {
        let change = Mutation::PutScope(Arc::new(scope.clone()));
        let reserved = self.builtins.folded_labels();
        let expected_version = old.map(|o| o.version);
        let max = self.quotas.max_scopes_per_tenant;
        let change = &change;
        self.until_judged(move || async move {
            let judged = self.enforce(caller, "rules", change, &[], Rule::NoEscalation).await?;
            let audit = self.judged_write(audit, judged);
            Ok(self.store.put_scope(scope, expected_version, reserved, max, audit).await?)
        })
        .await
    }

    /// Creates a scope in the caller's tenant.
    pub async fn create_scope(&self, caller: &Caller, draft: ScopeDraft) -> Result<Scope, ServiceError> {
        self.insert_scope(caller, draft, AuditOperation::CreateScope, BTreeMap::new()).await
    }

    /// Creates a scope, audited as `operation` with `details`.
    async fn insert_scope(
        &self,
        caller: &Caller,
        draft: ScopeDraft,
        operation: AuditOperation,
        details: BTreeMap<String, String>,
    ) -> Result<Scope, ServiceError> {
        let now = self.clock.now();
        let scope = Scope {
            id: ScopeId::generate()?,
            tenant: caller.tenant.clone(),
            label: draft.label,
            description: draft.description,
            mode: draft.mode,
            rules: draft.rules,
            builtin: false,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let audit = self.scope_event(&caller.author(), operation, None, &scope, details);
        self.write_scope(caller, None, &scope, &audit).await?;
        tracing::info!(scope_id = %scope.id, tenant = %scope.tenant, actor = %caller.key.id, "scope created");
        Ok(scope)
    }

    /// One scope of the caller's tenant, builtins included.
    pub async fn get_scope(&self, caller: &Caller, id: &ScopeId) -> Result<Scope, ServiceError> {
        if let Some(builtin) = self.builtins.get(id) {
            return Ok(Builtins::in_tenant(builtin, &caller.tenant));
        }
        let scope = self.store.get_scope(&caller.tenant, id).await?;
        scope.map(|s| Scope::clone(&s)).ok_or_else(|| scope_not_found(id, caller))
    }

    /// A page of the caller's tenant's scopes, builtins and stored merged by id.
    pub async fn list_scopes(
        &self,
        caller: &Caller,
        after: Option<&ScopeId>,
        limit: usize,
    ) -> Result<Page<Scope>, ServiceError> {
        let stored = self.store.list_scopes(&caller.tenant, after, limit + 1).await?;
        let mut all: Vec<Scope> = self
            .builtins
            .after(after)
            .map(|b| Builtins::in_tenant(b, &caller.tenant))
            .chain(stored.iter().map(|s| Scope::clone(s)))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Page::cut(all, limit))
    }

    /// Applies `changes` to a stored scope still at `version`.
    pub async fn update_scope(
        &self,
        caller: &Caller,
        id: &ScopeId,
        version: u64,
        changes: ScopeChanges,
    ) -> Result<Scope, ServiceError> {
        if self.builtins.contains(id) {
            return Err(locked(id));
        }
        let current = self.get_scope(caller, id).await?;
        super::at_version(|| format!("scope `{id}`"), Some(version), current.version)?;
        let ScopeChanges { label, description, mode, rules } = changes;
        let mut scope = current.clone();
        if let Some(v) = label {
            scope.label = v;
        }
        if let Some(v) = description {
            scope.description = v;
        }
        if let Some(v) = mode {
            scope.mode = v;
        }
        if let Some(v) = rules {
            scope.rules = v;
        }
        scope.version = version + 1;
        scope.updated_at = self.clock.now();
        let audit =
            self.scope_event(&caller.author(), AuditOperation::UpdateScope, Some(&current), &scope, BTreeMap::new());
        self.write_scope(caller, Some(&current), &scope, &audit).await?;
        tracing::info!(scope_id = %scope.id, tenant = %scope.tenant, actor = %caller.key.id, "scope updated");
        Ok(scope)
    }

    /// Copies a scope (a builtin too) under a new label.
    pub async fn clone_scope(
        &self,
        caller: &Caller,
        id: &ScopeId,
        label: Label,
        description: Option<String>,
    ) -> Result<Scope, ServiceError> {
        let source = self.get_scope(caller, id).await?;
        let draft = ScopeDraft {
            label,
            description: description.unwrap_or(source.description),
            mode: source.mode,
            rules: source.rules,
        };
        let details = BTreeMap::from([("source_id".to_owned(), id.to_string())]);
        self.insert_scope(caller, draft, AuditOperation::CloneScope, details).await
    }

    /// Deletes a stored scope. In use, it is refused unless `force`; forced, the scope leaves
    /// its keys, unless that would widen any key's access (a deny-mode scope beside others),
    /// which is refused too. Returns the keys it was removed from.
    ///
    /// A scope held by more than [`DETACH_BATCH`] keys leaves them in batches, each its own
    /// judged store write, before the last write deletes the scope (see docs/invariants.md):
    /// a delete interrupted between batches leaves every key either as it was or without the
    /// scope, and a retry finishes it.
    pub async fn delete_scope(
        &self,
        caller: &Caller,
        id: &ScopeId,
        force: bool,
        version: Option<u64>,
    ) -> Result<Vec<KeyId>, ServiceError> {
        if self.builtins.contains(id) {
            return Err(locked(id));
        }
        // The keys this call took the scope from, across its attempts: a batch written stays
        // written when a later write is refused.
        let mut detached: Vec<KeyId> = Vec::new();
        // Creations and other judged changes racing the delete make it start over; each attempt
        // judges again, on the keys still holding the scope.
        for attempt in 0..super::invariant::JUDGE_ATTEMPTS {
            let Some(scope) = self.store.get_scope(&caller.tenant, id).await? else {
                return Err(scope_not_found(id, caller));
            };
            super::at_version(|| format!("scope `{id}`"), version, scope.version)?;
            let holders = self.store.scope_holders(&caller.tenant, id).await?;
            if !holders.is_empty() && !force {
                return Err(ServiceError::FailedPrecondition(format!(
                    "scope `{id}` is used by {} key(s); delete with force to remove it from them",
                    holders.len()
                )));
            }
            if !force {
                let members = self.store.get_members(&caller.tenant, id).await?;
                if !members.is_empty() {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "scope `{id}` is bound to {} subject(s) and {} role(s); delete with force to drop the bindings",
                        members.subjects.len(),
                        members.roles.len()
                    )));
                }
            }
            // A removal never widens: not the keys holding the scope, nor (through their
            // owners) the keys of the principals it is bound to, nor bearer principals. Judged
            // once for the whole delete; the batches below are parts of it.
            let judged =
                self.enforce(caller, "id", &Mutation::DeleteScope(id.clone()), &holders, Rule::NoWidening).await?;
            let guard: Vec<(KeyId, u64)> = holders.iter().map(|k| (k.id.clone(), k.version)).collect();
            match self.write_delete(caller, &scope, force, &guard, judged, &mut detached).await {
                Err(StoreError::UsersChanged(_) | StoreError::VersionConflict { .. } | StoreError::AccessChanged) => {
                    super::invariant::backoff(attempt).await;
                    continue;
                }
                Err(StoreError::NotFound(_)) => return Err(scope_not_found(id, caller)),
                other => other?,
            }
            tracing::info!(scope_id = %id, tenant = %caller.tenant, actor = %caller.key.id, detached = detached.len(), "scope deleted");
            return Ok(detached);
        }
        Err(ServiceError::Aborted(format!(
            "the keys holding scope `{id}` kept changing ({} of them left it meanwhile); retry to finish the delete",
            detached.len()
        )))
    }

    /// Writes a judged delete of `scope`, held by `holders` (each at the version judged): all
    /// but the last [`DETACH_BATCH`] of them leave it in batches of that many, each a store
    /// write guarded by the access version the one before left (so a change recorded
    /// meanwhile refuses the next write, and the delete is judged again); then the last
    /// write takes it from the rest and deletes it, with its bindings and the one audit event
    /// of the whole delete. `detached` gains the keys each successful write took it from
    /// (sorted and distinct once the delete is written).
    async fn write_delete(
        &self,
        caller: &Caller,
        scope: &Scope,
        force: bool,
        holders: &[(KeyId, u64)],
        mut judged: super::invariant::Judged,
        detached: &mut Vec<KeyId>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        let (batches, last) = holders.split_at(holders.len().saturating_sub(1) / DETACH_BATCH * DETACH_BATCH);
        for batch in batches.chunks(DETACH_BATCH) {
            let detach = ScopeDetach {
                tenant: &caller.tenant,
                id: &scope.id,
                holders: batch,
                now,
                access_version: judged.access_version(),
            };
            judged = judged.after_own_write(self.store.detach_scope(detach).await?);
            detached.extend(batch.iter().map(|(k, _)| k.clone()));
        }
        // A key may have left the scope twice (given it back meanwhile, by someone else).
        let mut all: Vec<KeyId> = detached.iter().chain(last.iter().map(|(k, _)| k)).cloned().collect();
        all.sort();
        all.dedup();
        let audit = self.delete_event(caller, scope, force, &all);
        // Guarded by the scope's version the decision was made on too, so a concurrent change
        // of its mode or rules makes the delete start over.
        let delete = ScopeDelete {
            tenant: &caller.tenant,
            id: &scope.id,
            expected_version: Some(scope.version),
            holders: last,
            now,
            audit: self.judged_write(&audit, judged),
        };
        self.store.delete_scope(delete).await?;
        *detached = all;
        Ok(())
    }

    /// Answers a check for stored scopes (by id) and inline scopes together, with no key.
    pub async fn evaluate_scopes(
        &self,
        caller: &Caller,
        ids: &[ScopeId],
        inline: Vec<Scope>,
        module: &Module,
        action: Action,
    ) -> Result<(Reason, Vec<ScopeId>, String), ServiceError> {
        let stored = self.tenant_scopes(&caller.tenant, "scope_ids", ids).await?;
        let scopes: Vec<&Scope> = stored.iter().map(Arc::as_ref).chain(inline.iter()).collect();
        let decision = evaluate(&scopes, module, action);
        Ok((decision.reason, decision.scope_ids().into_vec(), decision.message(module, action)))
    }
}

/// An inline scope for [`Keyscope::evaluate_scopes`]: not stored, named by the id given.
pub fn inline_scope(
    caller: &Caller,
    id: ScopeId,
    label: Option<Label>,
    mode: ScopeMode,
    rules: Rules,
) -> Result<Scope, InputError> {
    let label = match label {
        Some(l) => l,
        None => id.as_str().parse().map_err(|crate::domain::Problem(p)| InputError::invalid("label", p))?,
    };
    Ok(Scope {
        id,
        tenant: caller.tenant.clone(),
        label,
        description: String::new(),
        mode,
        rules,
        builtin: false,
        version: 0,
        created_at: SystemTime::UNIX_EPOCH,
        updated_at: SystemTime::UNIX_EPOCH,
    })
}
