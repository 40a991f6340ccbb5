//! The one place every admin mutation passes before it is written: it loads the part of the
//! tenant's access graph the change can affect, applies the change to a copy, and refuses it
//! when [`crate::domain::judge`] finds a credential that would gain what the rule forbids.
//!
//! What is loaded, and so what one admin call costs (documented in docs/invariants.md):
//! the tenant's stored scopes (at most `limits.max_scopes_per_tenant`) and their member
//! bindings, its registered principals, and the keys the change can touch: the key changed,
//! the keys holding a changed or deleted scope, and (only when some principal's ceiling
//! changes) the keys owned by those principals, found by one pass over the tenant's keys; and
//! for each subject a key names as its owner or a binding names that is not registered, one
//! read of whether it was deleted.
//!
//! The calling key is read again too, after the tenant's access version: a change is judged
//! against what its caller holds then, not what it held when the call was authorized (see
//! `CallerNow`).

use std::{collections::BTreeSet, sync::Arc};

use super::{Caller, Keyscope, ServiceError, principals::Ceiling};
use crate::{
    domain::{
        AccessGraph, AuditRecord, Holding, Key, KeyFacts, KeyId, Mutation, Registration, Rule, Scope, Subject, Tenant,
        judge, key_status,
    },
    store::{AuditWrite, KeyQuery, Owner, StoreError},
};

/// Page size when the loader walks a tenant's scopes, principals or keys.
const LOAD_PAGE: usize = 1000;

/// How many times a change is judged and written again when other changes of the tenant land
/// in between.
pub(super) const JUDGE_ATTEMPTS: usize = 32;

/// Proof that a change was judged: the tenant's access version it was judged against. The
/// store writes the change only if that version still holds, so two changes racing in one
/// tenant can never combine into what neither alone would be allowed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Judged(Option<u64>);

impl Judged {
    /// A change that only takes access away (disabling or revoking a key): it cannot make any
    /// credential gain, alone or together with any change judged meanwhile, so it needs no
    /// judgment and is not guarded (nor does it make others judge again).
    pub(super) const NARROWING: Judged = Judged(None);

    /// The tenant's access version the change is guarded by (`None`: not guarded).
    pub(super) fn access_version(self) -> Option<u64> {
        self.0
    }

    /// The same judgment after a write of part of the change itself (a batch of a forced
    /// scope delete) moved the tenant's access version on to `now`: that write was refused
    /// unless nothing else was recorded since the judgment, so it still holds for the rest.
    pub(super) fn after_own_write(self, now: u64) -> Judged {
        Judged(self.0.map(|_| now))
    }
}

/// The calling key as it is when its change is judged, read after the tenant's access
/// version: what it holds then, not what it held when the call was authorized. A judged change
/// that cut it (its scopes, their rules, its owner's roles, bindings or state) either landed
/// before that read, and is seen, or after it, and moves the version on so that this change's
/// write is refused and judged again. Disabling or revoking the key moves no version: the
/// call is then decided as of the read.
enum CallerNow {
    /// The key is gone, not live, names a missing scope, or its owner denies everything.
    Nothing,
    /// A key of the tenant the change is made in: resolved in the graph loaded under the
    /// version, like every key the change is judged on.
    InTenant(KeyFacts),
    /// A key of another tenant (a `system` key): its scopes and its owner's bound scopes, read
    /// from its own tenant just after the version (changes there move this tenant's version
    /// on only if they are made in it, so such a cut is seen only if it landed before).
    Elsewhere(Vec<Vec<Arc<Scope>>>),
}

impl CallerNow {
    /// What the calling key holds, `graph` being the tenant's as loaded for the judgment.
    fn holding<'g>(&'g self, graph: &'g AccessGraph) -> Holding<'g> {
        match self {
            CallerNow::Nothing => Holding::Nothing,
            CallerNow::InTenant(facts) => graph.facts_holding(facts),
            CallerNow::Elsewhere(layers) => {
                Holding::Layers(layers.iter().map(|layer| layer.iter().map(Arc::as_ref).collect()).collect())
            }
        }
    }

    /// The key's owner, when the graph must know whether it is a deleted principal.
    fn owner(&self) -> Option<Subject> {
        match self {
            CallerNow::InTenant(facts) => facts.owner.parse().ok(),
            _ => None,
        }
    }
}

impl Caller {
    /// What the calling key holds: its scopes, within its registered owner's bound scopes.
    pub(super) fn holding(&self) -> Holding<'_> {
        let own: Vec<&Scope> = self.scopes.iter().map(Arc::as_ref).collect();
        let ceiling = self.owner_scopes.as_ref().map(|o| o.iter().map(Arc::as_ref).collect());
        Holding::Layers(std::iter::once(own).chain(ceiling).collect())
    }
}

impl Keyscope {
    /// What the graph knows of `key` now.
    pub(super) fn key_facts(&self, key: &Key) -> KeyFacts {
        KeyFacts {
            scope_ids: key.scope_ids.clone(),
            owner: key.owner.clone(),
            live: key_status(key, self.clock.now(), None).is_none(),
        }
    }

    /// Refuses `change`, made by `caller` in its tenant, if it breaks `rule` for any
    /// credential it can affect (`PERMISSION_DENIED` for escalation, `FAILED_PRECONDITION` for
    /// a removal that would widen), naming the request `field` that asked for it. `keys` are
    /// the keys the change names, as read.
    pub(super) async fn enforce(
        &self,
        caller: &Caller,
        field: &str,
        change: &Mutation,
        keys: &[Arc<Key>],
        rule: Rule,
    ) -> Result<Judged, ServiceError> {
        // Read first: any change recorded while the graph loads moves it on, and the write
        // guarded by it is refused.
        let version = self.store.access_version(&caller.tenant).await?;
        let mut before = self.access_graph(&caller.tenant).await?;
        let current = self.caller_now(caller).await?;
        for key in keys {
            before.keys.insert(key.id.clone(), self.key_facts(key));
        }
        if let Some(scope) = change.scope() {
            for key in self.store.scope_holders(&caller.tenant, scope).await? {
                before.keys.insert(key.id.clone(), self.key_facts(&key));
            }
        }
        let mut probe = before.clone();
        change.apply(&mut probe);
        let owners = changed_owners(&before, &probe);
        if !owners.is_empty() {
            self.load_owned_keys(&caller.tenant, &owners, &mut before).await?;
        }
        // Whether the subjects named before or after the change (a key's new owner, a new
        // binding) are deleted principals: their keys and bearer checks are denied everything.
        let mut probe = before.clone();
        change.apply(&mut probe);
        let owners = before.keys.values().chain(probe.keys.values()).filter_map(|k| k.owner.parse().ok());
        let bound = before.members.values().chain(probe.members.values()).flat_map(|m| m.subjects.iter().cloned());
        let named: BTreeSet<Subject> =
            owners.chain(bound).chain(change.subject().cloned()).chain(current.owner()).collect();
        self.load_deleted(&caller.tenant, named, &mut before).await?;
        let holding = current.holding(&before);
        // The call was authorized for this action; the key must still be allowed it.
        if !holding.allows(&caller.module, caller.action) {
            tracing::info!(tenant = %caller.tenant, actor = %caller.key.id, "admin change refused: the calling key was cut");
            return Err(ServiceError::PermissionDenied(format!(
                "key `{}` is no longer allowed {} on `{}`",
                caller.key.id, caller.action, caller.module
            )));
        }
        let mut after = before.clone();
        change.apply(&mut after);
        match judge(&before, &after, &holding, rule) {
            None => Ok(Judged(Some(version))),
            Some(violation) => {
                tracing::info!(tenant = %caller.tenant, actor = %caller.key.id, rule = ?violation.rule, "admin change refused");
                Err(match violation.rule {
                    Rule::NoEscalation => ServiceError::PermissionDenied(format!("{field}: {}", violation.message())),
                    Rule::NoWidening => ServiceError::FailedPrecondition(format!("{field}: {}", violation.message())),
                })
            }
        }
    }

    /// The audit write of a judged change: written only while the tenant's access is still
    /// what it was judged against.
    pub(super) fn judged_write<'a>(&self, record: &'a AuditRecord, judged: Judged) -> AuditWrite<'a> {
        AuditWrite { access_version: judged.0, ..self.audit_write(record) }
    }

    /// Runs `change` (judge, then write) again while other changes of the tenant land between
    /// its judgment and its write.
    pub(super) async fn until_judged<T, Attempt>(&self, mut change: impl FnMut() -> Attempt) -> Result<T, ServiceError>
    where
        Attempt: Future<Output = Result<T, ServiceError>>,
    {
        for attempt in 0..JUDGE_ATTEMPTS {
            match change().await {
                Err(ServiceError::Store(StoreError::AccessChanged)) => backoff(attempt).await,
                other => return other,
            }
        }
        Err(StoreError::AccessChanged.into())
    }

    /// The calling key as it is now (see [`CallerNow`]).
    async fn caller_now(&self, caller: &Caller) -> Result<CallerNow, ServiceError> {
        let Some(key) = self.store.get_key(&caller.key.tenant, &caller.key.id).await? else {
            return Ok(CallerNow::Nothing);
        };
        if key.tenant == caller.tenant {
            return Ok(CallerNow::InTenant(self.key_facts(&key)));
        }
        if key_status(&key, self.clock.now(), None).is_some() {
            return Ok(CallerNow::Nothing);
        }
        let stored = self.store.get_scopes(&key.tenant, &self.stored_ids(&key.scope_ids)).await?;
        // A scope of the key that exists nowhere denies it everything.
        let Some(own) = self.resolve_ids(&key.scope_ids, &stored).into_iter().collect::<Option<Vec<_>>>() else {
            return Ok(CallerNow::Nothing);
        };
        Ok(match self.ceiling_now(&key).await? {
            Ceiling::None => CallerNow::Elsewhere(vec![own]),
            Ceiling::Bound(grants) => match self.bound_scopes(&grants) {
                Some(bound) => CallerNow::Elsewhere(vec![own, bound]),
                None => CallerNow::Nothing,
            },
            Ceiling::Gone | Ceiling::Disabled => CallerNow::Nothing,
        })
    }

    /// The tenant's scopes (builtins included), their bindings and its registered principals.
    async fn access_graph(&self, tenant: &Tenant) -> Result<AccessGraph, ServiceError> {
        let mut graph = AccessGraph::default();
        for builtin in self.builtins.after(None) {
            graph.scopes.insert(builtin.id.clone(), builtin.clone());
        }
        let mut after = None;
        loop {
            let page = self.store.list_scopes(tenant, after.as_ref(), LOAD_PAGE).await?;
            let more = page.len() == LOAD_PAGE;
            after = page.last().map(|s| s.id.clone());
            for scope in page {
                graph.scopes.insert(scope.id.clone(), scope);
            }
            if !more {
                break;
            }
        }
        let ids: Vec<_> = graph.scopes.keys().cloned().collect();
        for id in ids {
            let members = self.store.get_members(tenant, &id).await?;
            if !members.is_empty() {
                graph.members.insert(id, members.normalized());
            }
        }
        let mut after: Option<Subject> = None;
        loop {
            let page = self.store.list_principals(tenant, after.as_ref(), LOAD_PAGE).await?;
            let more = page.len() == LOAD_PAGE;
            after = page.last().map(|p| p.subject.clone());
            for p in page {
                let registration = Registration::Registered { roles: p.roles.clone(), enabled: p.enabled };
                graph.principals.insert(p.subject.clone(), registration);
            }
            if !more {
                break;
            }
        }
        Ok(graph)
    }

    /// Adds the tenant's keys owned by any of `owners` (one pass over its keys).
    async fn load_owned_keys(
        &self,
        tenant: &Tenant,
        owners: &BTreeSet<Subject>,
        graph: &mut AccessGraph,
    ) -> Result<(), ServiceError> {
        let mut after: Option<KeyId> = None;
        loop {
            let query = KeyQuery { after: after.clone(), limit: LOAD_PAGE, ..KeyQuery::default() };
            let page = self.store.list_keys(tenant, &query).await?;
            let more = page.len() == LOAD_PAGE;
            after = page.last().map(|k| k.id.clone());
            for key in page {
                if key.owner.parse::<Subject>().is_ok_and(|o| owners.contains(&o)) {
                    graph.keys.insert(key.id.clone(), self.key_facts(&key));
                }
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Marks which of `subjects` are deleted principals (a listing names only the registered).
    async fn load_deleted(
        &self,
        tenant: &Tenant,
        subjects: BTreeSet<Subject>,
        graph: &mut AccessGraph,
    ) -> Result<(), ServiceError> {
        for subject in subjects {
            if graph.principals.contains_key(&subject) {
                continue;
            }
            if self.store.principal_grants_now(tenant, &subject, &[]).await?.owner == Owner::Gone {
                graph.principals.insert(subject, Registration::Gone);
            }
        }
        Ok(())
    }
}

/// Waits a random time that grows with `attempt` (up to about 50 ms), so that changes racing
/// in one tenant stop meeting each other.
pub(super) async fn backoff(attempt: usize) {
    let mut byte = [0u8; 2];
    // A failing random source only loses the jitter.
    let jitter = getrandom::fill(&mut byte).map_or(0, |()| u64::from(u16::from_le_bytes(byte)));
    let ceiling_us = (250u64 << attempt.min(8)).min(50_000);
    tokio::time::sleep(std::time::Duration::from_micros(jitter % ceiling_us)).await;
}

/// The subjects whose keys' ceiling differs between the two graphs.
fn changed_owners(before: &AccessGraph, after: &AccessGraph) -> BTreeSet<Subject> {
    let subjects: BTreeSet<&Subject> = before.principals.keys().chain(after.principals.keys()).collect();
    subjects.into_iter().filter(|s| before.ceiling(s) != after.ceiling(s)).cloned().collect()
}
