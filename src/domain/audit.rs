//! The audit log's records: who (the calling key) changed what (operation, target, changed
//! field names, a few non-secret details), when, and under which request id.
//!
//! Pure data. A store keeps the events of each tenant, newest last, and gives each one its
//! [`AuditId`]. Nothing here may ever hold a token, a secret, a secret hash or the pepper:
//! events are built by the service from names and ids only.

use std::{
    collections::BTreeMap,
    fmt,
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{KeyId, Problem, ScopeId, Subject, Tenant, token::RandomError};

/// What an admin change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuditOperation {
    /// A key was created (by an admin, or by keyscope itself at bootstrap).
    CreateKey,
    /// A key's description, owner, scopes, expiry or metadata changed.
    UpdateKey,
    /// A key was disabled.
    DisableKey,
    /// A disabled key was enabled.
    EnableKey,
    /// A key was revoked.
    RevokeKey,
    /// A scope was created.
    CreateScope,
    /// A scope's label, description, mode or rules changed.
    UpdateScope,
    /// A scope was created as a copy of another.
    CloneScope,
    /// A scope was deleted (forced: removed from the keys holding it).
    DeleteScope,
    /// A key's secret was rotated (the event gives the grace period, never a secret).
    RotateKey,
    /// A tenant's policy (maximum key lifetime) was set.
    SetTenantPolicy,
    /// A principal was registered, or its roles or enabled flag changed.
    PutPrincipal,
    /// A principal was deleted (its keys are denied from then on).
    DeletePrincipal,
    /// A scope's member bindings (subjects and roles) were replaced.
    SetScopeMembers,
    /// A key was deleted. Only keyscope itself deletes a key: the bootstrap admin key it
    /// had just made, when its token could not be shown (printed or written to the token
    /// file), so that the next start makes a new one.
    DeleteKey,
}

impl AuditOperation {
    /// Every operation, in wire order.
    pub const ALL: [AuditOperation; 15] = [
        AuditOperation::CreateKey,
        AuditOperation::UpdateKey,
        AuditOperation::DisableKey,
        AuditOperation::EnableKey,
        AuditOperation::RevokeKey,
        AuditOperation::CreateScope,
        AuditOperation::UpdateScope,
        AuditOperation::CloneScope,
        AuditOperation::DeleteScope,
        AuditOperation::RotateKey,
        AuditOperation::SetTenantPolicy,
        AuditOperation::PutPrincipal,
        AuditOperation::DeletePrincipal,
        AuditOperation::SetScopeMembers,
        AuditOperation::DeleteKey,
    ];

    /// The stored and printed name, e.g. `create_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOperation::CreateKey => "create_key",
            AuditOperation::UpdateKey => "update_key",
            AuditOperation::DisableKey => "disable_key",
            AuditOperation::EnableKey => "enable_key",
            AuditOperation::RevokeKey => "revoke_key",
            AuditOperation::CreateScope => "create_scope",
            AuditOperation::UpdateScope => "update_scope",
            AuditOperation::CloneScope => "clone_scope",
            AuditOperation::DeleteScope => "delete_scope",
            AuditOperation::RotateKey => "rotate_key",
            AuditOperation::SetTenantPolicy => "set_tenant_policy",
            AuditOperation::PutPrincipal => "put_principal",
            AuditOperation::DeletePrincipal => "delete_principal",
            AuditOperation::SetScopeMembers => "set_scope_members",
            AuditOperation::DeleteKey => "delete_key",
        }
    }
}

impl fmt::Display for AuditOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditOperation {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        AuditOperation::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| Problem::new(format!("`{}` is not an audit operation", super::shorten_for_message(s))))
    }
}

/// Who made a change: a calling admin key, or keyscope itself (the bootstrap admin key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    /// keyscope itself, written `keyscope` (never a valid key id).
    Keyscope,
    /// The calling admin key.
    Key(KeyId),
}

impl Actor {
    /// How keyscope itself is named as an actor.
    pub const KEYSCOPE: &'static str = "keyscope";
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Keyscope => f.write_str(Actor::KEYSCOPE),
            Actor::Key(id) => write!(f, "{id}"),
        }
    }
}

impl FromStr for Actor {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        if s == Actor::KEYSCOPE {
            return Ok(Actor::Keyscope);
        }
        s.parse().map(Actor::Key).map_err(|_| Problem::new("must be a key id or `keyscope`"))
    }
}

/// What a change was made to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuditTarget {
    /// A key.
    Key(KeyId),
    /// A stored scope.
    Scope(ScopeId),
    /// A tenant's own settings (its policy).
    Tenant(Tenant),
    /// A principal, by subject.
    Principal(Subject),
}

impl AuditTarget {
    /// Every [`AuditTarget::kind`].
    pub const KINDS: [&'static str; 4] = ["key", "scope", "principal", "tenant"];

    /// `key`, `scope`, `principal` or `tenant`.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditTarget::Key(_) => "key",
            AuditTarget::Scope(_) => "scope",
            AuditTarget::Tenant(_) => "tenant",
            AuditTarget::Principal(_) => "principal",
        }
    }

    /// The target's id.
    pub fn id(&self) -> &str {
        match self {
            AuditTarget::Key(id) => id.as_str(),
            AuditTarget::Scope(id) => id.as_str(),
            AuditTarget::Tenant(tenant) => tenant.as_str(),
            AuditTarget::Principal(subject) => subject.as_str(),
        }
    }

    /// The target from its kind and id, as stored; `None` if either is not valid.
    pub fn from_parts(kind: &str, id: &str) -> Option<AuditTarget> {
        match kind {
            "key" => id.parse().ok().map(AuditTarget::Key),
            "scope" => id.parse().ok().map(AuditTarget::Scope),
            "tenant" => id.parse().ok().map(AuditTarget::Tenant),
            "principal" => id.parse().ok().map(AuditTarget::Principal),
            _ => None,
        }
    }
}

/// Longest request id accepted from a caller.
pub const REQUEST_ID_MAX: usize = 128;

/// The id of the request that made a change: the caller's `x-request-id` when it is sane
/// (1 to 128 printable ASCII characters, no spaces), else one made up by keyscope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The caller's id if it is sane; `None` otherwise (the caller then gets a fresh one).
    pub fn from_caller(text: &str) -> Option<RequestId> {
        let sane = !text.is_empty() && text.len() <= REQUEST_ID_MAX && text.bytes().all(|b| b.is_ascii_graphic());
        sane.then(|| RequestId(Arc::from(text)))
    }

    /// A fresh random id (`req_` and 20 base62 characters).
    pub fn generate() -> Result<RequestId, RandomError> {
        Ok(RequestId(Arc::from(format!("req_{}", super::token::random_base62(20)?))))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RequestId {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        RequestId::from_caller(s)
            .ok_or_else(|| Problem::new(format!("must be 1 to {REQUEST_ID_MAX} printable ASCII characters, no spaces")))
    }
}

/// An event's id within its tenant's log, `<milliseconds>-<sequence>` (a Redis stream id).
/// Ids grow with every event of a tenant; the milliseconds are the event's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuditId {
    /// Milliseconds since the Unix epoch.
    pub ms: u64,
    /// Order among the events of the same millisecond.
    pub seq: u64,
}

impl AuditId {
    /// The largest id of millisecond `ms`.
    pub fn last_of(ms: u64) -> AuditId {
        AuditId { ms, seq: u64::MAX }
    }

    /// The id the next event gets: at `at` (in whole milliseconds), but always above `last`,
    /// so ids keep growing even if the clock steps back.
    pub fn next(last: Option<AuditId>, at: SystemTime) -> AuditId {
        let ms = millis(at);
        match last {
            Some(last) if last.ms >= ms => AuditId { ms: last.ms, seq: last.seq.saturating_add(1) },
            _ => AuditId { ms, seq: 0 },
        }
    }

    /// The id just before this one; `None` for the smallest.
    pub fn prev(self) -> Option<AuditId> {
        match (self.ms, self.seq) {
            (0, 0) => None,
            (ms, 0) => Some(AuditId::last_of(ms - 1)),
            (ms, seq) => Some(AuditId { ms, seq: seq - 1 }),
        }
    }

    /// The event's time.
    pub fn time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.ms)
    }
}

impl fmt::Display for AuditId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for AuditId {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        let bad = || Problem::new("is not an audit event id (`<milliseconds>-<sequence>`)");
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        let digits = |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(bad());
        }
        Ok(AuditId { ms: ms.parse().map_err(|_| bad())?, seq: seq.parse().map_err(|_| bad())? })
    }
}

/// Milliseconds since the epoch (0 before it).
pub fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// One admin change, as the service describes it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The tenant changed.
    pub tenant: Tenant,
    /// When (the store keeps whole milliseconds, never earlier than the tenant's last event).
    pub at: SystemTime,
    /// Who.
    pub actor: Actor,
    /// What was done.
    pub operation: AuditOperation,
    /// To what.
    pub target: AuditTarget,
    /// Names of the fields that changed (e.g. `description`, `scope_ids`, `state`).
    pub changed: Vec<String>,
    /// A few non-secret facts (new state, scope ids, `force`, detached key ids, a clone's
    /// source id).
    pub details: BTreeMap<String, String>,
    /// The request that made the change.
    pub request_id: RequestId,
}

/// A recorded event: the record and the id the store gave it. `record.at` is the id's time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The event's id in its tenant's log.
    pub id: AuditId,
    /// What happened.
    pub record: AuditRecord,
}

impl AuditEvent {
    /// The event for `record` stored under `id` (its time becomes the id's).
    pub fn stored(id: AuditId, mut record: AuditRecord) -> AuditEvent {
        record.at = id.time();
        AuditEvent { id, record }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_ids_round_trip_and_order() {
        let id: AuditId = "1700000000123-7".parse().expect("id");
        assert_eq!(id, AuditId { ms: 1_700_000_000_123, seq: 7 });
        assert_eq!(id.to_string(), "1700000000123-7");
        for bad in ["", "1", "-1", "1-", "a-1", "1-2-3", "1 -2", "99999999999999999999999-0"] {
            assert!(bad.parse::<AuditId>().is_err(), "{bad}");
        }
        assert!(AuditId { ms: 5, seq: 0 } > AuditId { ms: 4, seq: 9 });
        assert_eq!(AuditId { ms: 5, seq: 0 }.prev(), Some(AuditId::last_of(4)));
        assert_eq!(AuditId { ms: 5, seq: 3 }.prev(), Some(AuditId { ms: 5, seq: 2 }));
        assert_eq!(AuditId { ms: 0, seq: 0 }.prev(), None);
    }

    #[test]
    fn next_ids_keep_growing_when_the_clock_steps_back() {
        let at = UNIX_EPOCH + Duration::from_millis(1000);
        assert_eq!(AuditId::next(None, at), AuditId { ms: 1000, seq: 0 });
        let last = AuditId { ms: 1000, seq: 0 };
        assert_eq!(AuditId::next(Some(last), at), AuditId { ms: 1000, seq: 1 });
        let earlier = UNIX_EPOCH + Duration::from_millis(10);
        assert_eq!(AuditId::next(Some(last), earlier), AuditId { ms: 1000, seq: 1 });
        let later = UNIX_EPOCH + Duration::from_millis(2000);
        assert_eq!(AuditId::next(Some(last), later), AuditId { ms: 2000, seq: 0 });
    }

    #[test]
    fn request_ids_from_callers_must_be_sane() {
        assert!(RequestId::from_caller("abc-123_X").is_some());
        assert!(RequestId::from_caller(&"a".repeat(REQUEST_ID_MAX)).is_some());
        for bad in ["", "a b", "tab\t", "é", &"a".repeat(REQUEST_ID_MAX + 1)] {
            assert!(RequestId::from_caller(bad).is_none(), "{bad:?}");
        }
        let fresh = RequestId::generate().expect("random");
        assert!(fresh.as_str().starts_with("req_") && RequestId::from_caller(fresh.as_str()).is_some());
    }

    #[test]
    fn actors_and_operations_parse_back() {
        assert_eq!("keyscope".parse::<Actor>(), Ok(Actor::Keyscope));
        let key: KeyId = "abcdefghijABCDEFGHIJ".parse().expect("key id");
        assert_eq!(Actor::Key(key.clone()).to_string().parse::<Actor>(), Ok(Actor::Key(key)));
        assert!("not a key".parse::<Actor>().is_err());
        for op in AuditOperation::ALL {
            assert_eq!(op.as_str().parse::<AuditOperation>(), Ok(op));
        }
    }
}
