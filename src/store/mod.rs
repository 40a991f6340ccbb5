//! Storage of keys, scopes and key usage behind one trait, so that every backend passes the same
//! contract tests (`tests/store_contract.rs`).
//!
//! A store keeps records and their indexes exact and every mutation atomic; it knows nothing
//! of admin authorization or of the builtin scopes (which the service adds on top). Backend
//! error types never leave their backend's file: they become a [`StoreError`].

mod memory;
mod redis;

use std::{sync::Arc, time::SystemTime};

use async_trait::async_trait;

pub use self::redis::{RedisOptions, RedisStore, RedisTls, SCHEMA_VERSION};
pub use memory::MemoryStore;

use crate::domain::{
    Actor, AuditEvent, AuditId, AuditRecord, Day, Key, KeyId, KeyState, Members, Principal, Role, Scope, ScopeId,
    Subject, Tenant, TenantPolicy, millis,
};

/// What a store can fail with. Every variant means nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The record changed since the version the caller read.
    #[error("{what} was changed by someone else (expected version {expected}, found {found})")]
    VersionConflict {
        /// What was being changed, e.g. "key `abc`".
        what: String,
        /// The version the caller based its change on.
        expected: u64,
        /// The version found.
        found: u64,
    },
    /// The set of keys holding a scope changed since the caller looked.
    #[error("the keys holding scope `{0}` changed meanwhile")]
    UsersChanged(ScopeId),
    /// The record to change does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A key names a scope that does not exist in its tenant.
    #[error("scope `{0}` does not exist in the tenant")]
    ScopeMissing(ScopeId),
    /// Another scope of the tenant has the label (case-insensitively), or the id is taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A per-tenant quota is reached.
    #[error("tenant `{tenant}` already has the most {what} allowed ({limit})")]
    QuotaReached {
        /// The tenant.
        tenant: Tenant,
        /// "keys" or "scopes".
        what: &'static str,
        /// The configured limit.
        limit: usize,
    },
    /// A stored record cannot be read back (or the stored schema is not this build's).
    #[error("store data unreadable: {0}")]
    Corrupt(String),
    /// The tenant's access (its keys, scopes, bindings or principals) changed since the change
    /// was judged against it; the caller may judge it again.
    #[error("the tenant's keys, scopes or principals changed meanwhile; retry")]
    AccessChanged,
    /// The backend cannot be reached or failed; no decision or change was possible.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend is set up in a way that could lose keyscope's records (e.g. a Redis that
    /// may evict them); keyscope refuses to use it.
    #[error("store unsafe: {0}")]
    Unsafe(String),
}

/// A key with the stored scopes it names, loaded together for a check.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The key.
    pub key: Arc<Key>,
    /// Those of the key's scopes that the store holds, in no particular order. Builtin scope
    /// ids are not stored and so not here.
    pub scopes: Vec<Arc<Scope>>,
}

/// Which keys a listing returns: a page after a cursor, with optional filters.
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    /// Only keys whose id sorts after this one.
    pub after: Option<KeyId>,
    /// At most this many.
    pub limit: usize,
    /// Only keys of this owner.
    pub owner: Option<String>,
    /// Only keys holding this scope.
    pub scope: Option<ScopeId>,
    /// Only keys in this state.
    pub state: Option<KeyState>,
    /// Only keys last used before this instant, or never used.
    pub unused_since: Option<SystemTime>,
}

/// Usage of one key on one UTC day, to add to what the store holds. Usage is kept apart from
/// the key record: writing it never changes a key's version and never invalidates a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// The key's tenant.
    pub tenant: Tenant,
    /// The key.
    pub key_id: KeyId,
    /// The UTC day of the checks.
    pub day: Day,
    /// Checks allowed.
    pub allowed: u64,
    /// Checks denied after the key's secret was verified.
    pub denied: u64,
    /// The latest use seen; the store keeps the latest of all it is given.
    pub last_used_at: SystemTime,
}

/// A key's counts on one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyUsage {
    /// The day.
    pub day: Day,
    /// Checks allowed.
    pub allowed: u64,
    /// Checks denied after the key's secret was verified.
    pub denied: u64,
}

/// A change to a key, guarded by the version it was based on.
#[derive(Debug, Clone, Copy)]
pub struct KeyWrite<'a> {
    /// The new record (its `version` is the new version).
    pub key: &'a Key,
    /// The version the stored record must have; `None` for a key that must not exist yet.
    pub expected_version: Option<u64>,
    /// Scope ids of the key that the store must hold (its builtin scope ids excluded).
    pub stored_scopes: &'a [ScopeId],
    /// The audit event recorded with the change, atomically.
    pub audit: AuditWrite<'a>,
}

/// A delete of a scope, guarded by what the caller saw.
#[derive(Debug, Clone, Copy)]
pub struct ScopeDelete<'a> {
    /// The tenant.
    pub tenant: &'a Tenant,
    /// The scope.
    pub id: &'a ScopeId,
    /// When set, the scope must still be at this version.
    pub expected_version: Option<u64>,
    /// The keys that must be holding the scope, each at the version the caller checked;
    /// the scope is removed from each (and each key's version bumped). Empty: the scope must
    /// be unused. At most [`DETACH_BATCH`]: a scope held by more keys is first taken from
    /// the others with [`Store::detach_scope`].
    pub holders: &'a [(KeyId, u64)],
    /// The time of the change, recorded as the holders' `updated_at`.
    pub now: SystemTime,
    /// The audit event recorded with the change, atomically.
    pub audit: AuditWrite<'a>,
}

/// Most keys one store write takes a scope from. A forced delete of a scope held by more keys
/// first takes it from them in [`Store::detach_scope`] writes of at most this many keys each,
/// and the [`Store::delete_scope`] that ends it is given at most this many: so no single write
/// (on Redis, one Lua script, which blocks every other client while it runs) grows with the
/// number of holders. See docs/invariants.md for why the states in between are safe.
pub const DETACH_BATCH: usize = 500;

/// A batch of a forced scope delete: the scope leaves some of the keys holding it and stays
/// otherwise as it is (its record, its bindings, its other holders). The delete's last write
/// ([`Store::delete_scope`]) records the one audit event of the whole delete, so a batch
/// records none; it is judged like any change that moves access.
#[derive(Debug, Clone, Copy)]
pub struct ScopeDetach<'a> {
    /// The tenant.
    pub tenant: &'a Tenant,
    /// The scope.
    pub id: &'a ScopeId,
    /// The keys to take the scope from (at most [`DETACH_BATCH`]), each at the version the
    /// caller judged: each must still hold the scope at that version. The scope is removed
    /// from each (and each key's version bumped).
    pub holders: &'a [(KeyId, u64)],
    /// The time of the change, recorded as the holders' `updated_at`.
    pub now: SystemTime,
    /// The tenant's access version the delete was judged against, or the one the previous
    /// batch of the same delete returned: refused ([`StoreError::AccessChanged`]) if another
    /// judged change was recorded since, and moved on otherwise. `None`: not guarded.
    pub access_version: Option<u64>,
}

/// The audit event a change records, in the same atomic write: a refused change records
/// nothing. The tenant's log then keeps only its newest `max_events` events.
#[derive(Debug, Clone, Copy)]
pub struct AuditWrite<'a> {
    /// What happened (its tenant is the log it goes to).
    pub record: &'a AuditRecord,
    /// How many events the tenant's log keeps (`audit.max_events_per_tenant`); at least 1.
    pub max_events: usize,
    /// The tenant's access version the change was judged against
    /// ([`Store::access_version`]): the write is refused ([`StoreError::AccessChanged`]) if
    /// another change was recorded since. `None`: not guarded.
    pub access_version: Option<u64>,
}

/// Which audit events a listing returns: newest first, older than a cursor, with filters.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only events older than this one (the cursor of a previous page).
    pub before: Option<AuditId>,
    /// At most this many.
    pub limit: usize,
    /// Only events on this target id (a key id, a scope id, a subject or a tenant).
    pub target: Option<String>,
    /// Only events on this kind of target (one of [`AuditTarget::KINDS`]).
    pub target_type: Option<&'static str>,
    /// Only events by this actor.
    pub actor: Option<Actor>,
    /// Only events at or after this instant. Event times are kept in whole milliseconds, so
    /// both bounds are compared in whole milliseconds (an event recorded at `since` matches).
    pub since: Option<SystemTime>,
    /// Only events at or before this instant (in whole milliseconds).
    pub until: Option<SystemTime>,
}

/// A page of audit events and where the next one starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditPage {
    /// Matching events, newest first.
    pub events: Vec<AuditEvent>,
    /// The cursor (`before`) of the next page; `None` when no older event can match. A store
    /// that bounds its work per call may return fewer than `limit` events with a cursor.
    pub next: Option<AuditId>,
}

/// Most log entries a store reads for one audit listing (filters are applied to what it
/// reads); a listing that reaches it returns what it found and a cursor to go on from.
pub const AUDIT_SCAN_MAX: usize = 10_000;

impl AuditQuery {
    /// Whether `event` passes the filters (not the cursor).
    pub fn matches(&self, event: &AuditEvent) -> bool {
        let r = &event.record;
        self.target.as_deref().is_none_or(|t| r.target.id() == t)
            && self.target_type.is_none_or(|k| r.target.kind() == k)
            && self.actor.as_ref().is_none_or(|a| r.actor == *a)
            && self.since.is_none_or(|s| millis(r.at) >= millis(s))
            && self.until.is_none_or(|u| millis(r.at) <= millis(u))
    }

    /// The newest id a matching event may have (from `before` and `until`); `None` if none
    /// can match.
    pub fn newest(&self) -> Option<AuditId> {
        let before = match self.before {
            Some(b) => b.prev()?,
            None => AuditId::last_of(u64::MAX),
        };
        let until = self.until.map_or(AuditId::last_of(u64::MAX), |u| AuditId::last_of(millis(u)));
        Some(before.min(until))
    }

    /// The oldest id a matching event may have (from `since`).
    pub fn oldest(&self) -> AuditId {
        AuditId { ms: self.since.map_or(0, millis), seq: 0 }
    }
}

/// A record that changed: what every replica's cache must drop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// A key's record (its state, scopes, expiry...).
    Key(KeyId),
    /// A stored scope of a tenant.
    Scope(Tenant, ScopeId),
    /// A principal of a tenant (registered, changed or deleted).
    Principal(Tenant, Subject),
    /// The member bindings of a scope of a tenant.
    Members(Tenant, ScopeId),
}

impl Change {
    /// The wire form published by the Redis store: `k:<key id>` or `s:<tenant>:<scope id>`.
    pub fn encode(&self) -> String {
        match self {
            Change::Key(id) => format!("k:{id}"),
            Change::Scope(tenant, id) => format!("s:{tenant}:{id}"),
            Change::Principal(tenant, subject) => format!("p:{tenant}:{subject}"),
            Change::Members(tenant, id) => format!("m:{tenant}:{id}"),
        }
    }

    /// Parses the wire form; `None` for anything else.
    pub fn decode(text: &str) -> Option<Change> {
        match text.split_once(':')? {
            ("k", id) => id.parse().ok().map(Change::Key),
            ("s", rest) => {
                let (tenant, id) = rest.split_once(':')?;
                Some(Change::Scope(tenant.parse().ok()?, id.parse().ok()?))
            }
            ("p", rest) => {
                let (tenant, subject) = rest.split_once(':')?;
                Some(Change::Principal(tenant.parse().ok()?, subject.parse().ok()?))
            }
            ("m", rest) => {
                let (tenant, id) = rest.split_once(':')?;
                Some(Change::Members(tenant.parse().ok()?, id.parse().ok()?))
            }
            _ => None,
        }
    }
}

/// Where a store's change feed delivers: a replica's cache.
pub trait ChangeSink: Send + Sync + 'static {
    /// Drop what `change` names.
    fn changed(&self, change: &Change);
    /// The feed was (re)established: changes may have been missed, drop everything.
    fn reset(&self);
}

/// Storage of keys and scopes, and of the audit log of their changes. Every method is
/// atomic; a failed call writes nothing. Every change takes the audit event that describes
/// it and records it in the same atomic write (the batches of a forced scope delete are
/// described by the event of the delete's last write: see [`ScopeDetach`]).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The key with this id and its stored scopes, for a check (any tenant).
    async fn credential(&self, id: &KeyId) -> Result<Option<Arc<Credential>>, StoreError>;

    /// One key of a tenant, with its `last_used_at` from the recorded usage.
    async fn get_key(&self, tenant: &Tenant, id: &KeyId) -> Result<Option<Arc<Key>>, StoreError>;

    /// A tenant's keys by ascending id, with their `last_used_at` from the recorded usage.
    async fn list_keys(&self, tenant: &Tenant, query: &KeyQuery) -> Result<Vec<Arc<Key>>, StoreError>;

    /// Writes a key: creates it when `expected_version` is `None` (refused once the tenant
    /// holds `max_keys`), else replaces the stored record if it is at that version. Every
    /// scope in `stored_scopes` must exist in the key's tenant. The scope -> keys index
    /// follows.
    async fn put_key(&self, write: KeyWrite<'_>, max_keys: usize) -> Result<(), StoreError>;

    /// One stored scope of a tenant.
    async fn get_scope(&self, tenant: &Tenant, id: &ScopeId) -> Result<Option<Arc<Scope>>, StoreError>;

    /// Those of `ids` that the tenant stores, in no particular order (missing ids are left out).
    async fn get_scopes(&self, tenant: &Tenant, ids: &[ScopeId]) -> Result<Vec<Arc<Scope>>, StoreError>;

    /// A tenant's stored scopes by ascending id, after `after`, at most `limit`.
    async fn list_scopes(
        &self,
        tenant: &Tenant,
        after: Option<&ScopeId>,
        limit: usize,
    ) -> Result<Vec<Arc<Scope>>, StoreError>;

    /// Writes a scope: creates it when `expected_version` is `None` (refused once the tenant
    /// holds `max_scopes`), else replaces the stored record at that version. Labels stay
    /// unique per tenant, case-insensitively; `reserved_labels` (folded) are refused too.
    async fn put_scope(
        &self,
        scope: &Scope,
        expected_version: Option<u64>,
        reserved_labels: &[String],
        max_scopes: usize,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError>;

    /// The keys holding a scope, by ascending id. A backend may read them in pages (so that
    /// no single read grows with the number of holders): the list is then not one snapshot,
    /// which the guarded writes that use it ([`ScopeDelete`], [`ScopeDetach`]) make up for.
    async fn scope_holders(&self, tenant: &Tenant, id: &ScopeId) -> Result<Vec<Arc<Key>>, StoreError>;

    /// Takes a scope from a batch of the keys holding it if what the caller saw still holds
    /// (see [`ScopeDetach`]), and returns the tenant's access version after the write.
    async fn detach_scope(&self, detach: ScopeDetach<'_>) -> Result<u64, StoreError>;

    /// Deletes a scope if what the caller saw still holds (see [`ScopeDelete`]).
    async fn delete_scope(&self, delete: ScopeDelete<'_>) -> Result<(), StoreError>;

    /// Makes `key` the bootstrap admin key unless one was made before; returns the id of the
    /// one made before, if any (and then records nothing).
    async fn claim_bootstrap(&self, key: &Key, audit: AuditWrite<'_>) -> Result<Option<KeyId>, StoreError>;

    /// Undoes [`Store::claim_bootstrap`] for a key whose token could never be shown: removes
    /// the key (record and indexes) and the bootstrap marker together, recording `audit`, but
    /// only while the marker still names `key.id` and the stored key is still at
    /// `key.version`. Returns whether it did; `false` wrote nothing. Afterwards the store is
    /// as if the claim never happened (a later claim makes a new bootstrap key).
    async fn release_bootstrap(&self, key: &Key, audit: AuditWrite<'_>) -> Result<bool, StoreError>;

    /// A page of a tenant's audit events, newest first (see [`AuditQuery`]).
    async fn list_audit(&self, tenant: &Tenant, query: &AuditQuery) -> Result<AuditPage, StoreError>;

    /// Adds usage: each delta's counts to its key's day, and its `last_used_at` when later
    /// than the one kept. Days older than `retention_days` (counted back from the newest day
    /// written, that day included) are dropped. Atomic per tenant: the deltas of one tenant
    /// are applied all or none (the service sends one tenant per call). Touches no key record.
    async fn record_usage(&self, batch: &[UsageDelta], retention_days: u32) -> Result<(), StoreError>;

    /// A key's recorded daily counts from `first` to `last` (inclusive), oldest first; days
    /// with no checks are left out. Another tenant's key has none.
    async fn key_usage(
        &self,
        tenant: &Tenant,
        id: &KeyId,
        first: Day,
        last: Day,
    ) -> Result<Vec<DailyUsage>, StoreError>;

    /// A number that grows with every judged change of the tenant (one whose audit write
    /// carries an access version), in the same atomic write: a change judged against this
    /// version is written only if it still holds. Unjudged changes (they only narrow access, or
    /// change none) leave it as it is.
    async fn access_version(&self, tenant: &Tenant) -> Result<u64, StoreError>;

    /// Whether the store answers now (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// A tenant's stored key policy, if one was ever set.
    async fn get_tenant_policy(&self, tenant: &Tenant) -> Result<Option<TenantPolicy>, StoreError>;

    /// Writes a tenant's key policy if the stored one is at `expected_version` (0: none is
    /// stored yet); `policy.version` is the new version.
    async fn put_tenant_policy(
        &self,
        policy: &TenantPolicy,
        expected_version: u64,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError>;

    /// One registered principal of a tenant (a deleted one is `None`).
    async fn get_principal(&self, tenant: &Tenant, subject: &Subject) -> Result<Option<Arc<Principal>>, StoreError>;

    /// A tenant's registered principals by ascending subject, after `after`, at most `limit`.
    async fn list_principals(
        &self,
        tenant: &Tenant,
        after: Option<&Subject>,
        limit: usize,
    ) -> Result<Vec<Arc<Principal>>, StoreError>;

    /// Writes a principal: registers it when `expected_version` is `None` (refused if it is
    /// registered; a deleted one may be registered again), else replaces the registered record
    /// at that version. The role -> scopes index is not touched: bindings live on the scopes.
    async fn put_principal(
        &self,
        principal: &Principal,
        expected_version: Option<u64>,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError>;

    /// Deletes a registered principal at `expected_version` (when given), leaving a marker so
    /// that keys naming it as their owner are denied ([`Owner::Gone`]) until it is registered
    /// again. Member bindings naming its subject are kept.
    async fn delete_principal(
        &self,
        tenant: &Tenant,
        subject: &Subject,
        expected_version: Option<u64>,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError>;

    /// The member bindings of a scope (empty, version 0, for a scope never bound). The store
    /// does not check that the scope exists (builtin scope ids are bound too).
    async fn get_members(&self, tenant: &Tenant, scope: &ScopeId) -> Result<Members, StoreError>;

    /// Replaces the member bindings of a scope if they are at `expected_version` (0: never
    /// bound); `members.version` is the new version. With `stored`, the scope must be a stored
    /// scope of the tenant (else `NotFound`, so no binding outlives a scope deleted meanwhile);
    /// without, it is a builtin id. The subject -> scopes and role -> scopes indexes follow.
    async fn set_members(
        &self,
        tenant: &Tenant,
        scope: &ScopeId,
        members: &Members,
        expected_version: u64,
        stored: bool,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError>;

    /// Everything a check needs about a principal, in one read (one round trip on Redis): the
    /// registered principal named `subject` (or whether it was deleted), and the scopes bound
    /// to `subject`, to any of `roles` or to any of the registered principal's roles.
    async fn principal_grants(
        &self,
        tenant: &Tenant,
        subject: &Subject,
        roles: &[Role],
    ) -> Result<Arc<PrincipalGrants>, StoreError>;

    /// [`Store::principal_grants`] read from the store itself, past any replica cache: an
    /// admin change is judged on what was recorded before the tenant's access version it read,
    /// and a cache fed by another replica's change feed may not have seen that yet (a deleted
    /// owner still registered, a role still bound). A store without a cache answers as
    /// [`Store::principal_grants`] does.
    async fn principal_grants_now(
        &self,
        tenant: &Tenant,
        subject: &Subject,
        roles: &[Role],
    ) -> Result<Arc<PrincipalGrants>, StoreError> {
        self.principal_grants(tenant, subject, roles).await
    }
}

/// What a store knows of a principal named by a key's owner or a bearer credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Never registered (or registered and deleted long ago and registered again: then it is
    /// [`Owner::Registered`]).
    Unregistered,
    /// Registered once and deleted since.
    Gone,
    /// Registered now.
    Registered(Arc<Principal>),
}

/// A principal and the scopes bound to it, read together for a check.
#[derive(Debug, Clone)]
pub struct PrincipalGrants {
    /// The principal's record, if any.
    pub owner: Owner,
    /// Ids of the scopes bound to the subject or to any of the roles asked for or held,
    /// sorted and distinct (builtin scope ids included).
    pub scope_ids: Vec<ScopeId>,
    /// Those of `scope_ids` that the store holds, in no particular order.
    pub scopes: Vec<Arc<Scope>>,
}
