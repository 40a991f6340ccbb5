//! The audit log: the event each admin change records (built here from names and ids only,
//! never a token, secret or hash) and its listing, authorized on `keyscope.audit`.

use std::collections::BTreeMap;

use super::{Caller, Keyscope, ServiceError};
use crate::{
    domain::{Actor, AuditOperation, AuditRecord, AuditTarget, Key, KeyId, RequestId, Scope, ScopeId},
    store::{AuditPage, AuditQuery, AuditWrite},
};

/// Most detached key ids a forced scope delete names in its event (`detached_keys` always
/// gives the count; `detached_key_ids_truncated` says when the list was cut).
pub const AUDIT_DETACHED_IDS_MAX: usize = 100;

/// Default and bounds of `audit.max_events_per_tenant`.
pub const AUDIT_MAX_EVENTS_DEFAULT: usize = 100_000;

/// Who made a change and under which request.
#[derive(Debug, Clone)]
pub(super) struct Author {
    pub(super) actor: Actor,
    pub(super) request_id: RequestId,
}

impl Caller {
    pub(super) fn author(&self) -> Author {
        Author { actor: Actor::Key(self.key.id.clone()), request_id: self.request_id.clone() }
    }
}

/// Names or ids as one comma-separated audit detail.
pub(super) fn ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    ids.into_iter().collect::<Vec<_>>().join(",")
}

/// The names of the fields marked changed.
pub(super) fn changed_names(fields: &[(&str, bool)]) -> Vec<String> {
    fields.iter().filter(|(_, changed)| *changed).map(|(name, _)| (*name).to_owned()).collect()
}

/// The names of the fields of a key that differ between `old` (none: a new key, compared
/// with empty values) and `new`.
pub(super) fn key_changes(old: Option<&Key>, new: &Key) -> Vec<String> {
    let fields: [(&str, bool); 9] = match old {
        Some(old) => [
            ("description", old.description != new.description),
            ("owner", old.owner != new.owner),
            ("scope_ids", old.scope_ids != new.scope_ids),
            ("state", old.state != new.state),
            ("expires_at", old.expires_at != new.expires_at),
            ("metadata", old.metadata != new.metadata),
            ("allowed_cidrs", old.allowed_cidrs != new.allowed_cidrs),
            ("rate_limit", old.rate_limit != new.rate_limit),
            // Only the name: never the secret or its hash.
            ("secret", old.secret_hash != new.secret_hash),
        ],
        None => [
            ("description", !new.description.is_empty()),
            ("owner", !new.owner.is_empty()),
            ("scope_ids", true),
            ("state", false),
            ("expires_at", new.expires_at.is_some()),
            ("metadata", !new.metadata.is_empty()),
            ("allowed_cidrs", !new.allowed_cidrs.is_empty()),
            ("rate_limit", new.rate_limit.is_some()),
            ("secret", false),
        ],
    };
    changed_names(&fields)
}

/// The same for a scope.
pub(super) fn scope_changes(old: Option<&Scope>, new: &Scope) -> Vec<String> {
    let fields: [(&str, bool); 4] = match old {
        Some(old) => [
            ("label", old.label != new.label),
            ("description", old.description != new.description),
            ("mode", old.mode != new.mode),
            ("rules", old.rules != new.rules),
        ],
        None => [("label", true), ("description", !new.description.is_empty()), ("mode", true), ("rules", true)],
    };
    changed_names(&fields)
}

impl Keyscope {
    /// The store write of `record`, with the configured retention.
    pub(super) fn audit_write<'a>(&self, record: &'a AuditRecord) -> AuditWrite<'a> {
        AuditWrite { record, max_events: self.audit_max_events, access_version: None }
    }

    pub(super) fn record(
        &self,
        author: &Author,
        tenant: &crate::domain::Tenant,
        operation: AuditOperation,
        target: AuditTarget,
        changed: Vec<String>,
        details: BTreeMap<String, String>,
    ) -> AuditRecord {
        AuditRecord {
            tenant: tenant.clone(),
            at: self.clock.now(),
            actor: author.actor.clone(),
            operation,
            target,
            changed,
            details,
            request_id: author.request_id.clone(),
        }
    }

    /// The event of a key written by `author`: created (`old` none), updated or changed state.
    pub(super) fn key_event(
        &self,
        author: &Author,
        operation: AuditOperation,
        old: Option<&Key>,
        new: &Key,
    ) -> AuditRecord {
        let changed = key_changes(old, new);
        let mut details = BTreeMap::from([("version".to_owned(), new.version.to_string())]);
        if changed.iter().any(|c| c == "scope_ids") {
            details.insert("scope_ids".into(), ids(new.scope_ids.iter().map(ScopeId::as_str)));
        }
        if old.is_none_or(|o| o.state != new.state) {
            details.insert("state".into(), new.state.as_str().to_owned());
        }
        if let Some(old) = old.filter(|o| o.state != new.state) {
            details.insert("previous_state".into(), old.state.as_str().to_owned());
        }
        self.record(author, &new.tenant, operation, AuditTarget::Key(new.id.clone()), changed, details)
    }

    /// The event of a scope written by `author`: created or cloned (`old` none) or updated.
    pub(super) fn scope_event(
        &self,
        author: &Author,
        operation: AuditOperation,
        old: Option<&Scope>,
        new: &Scope,
        mut details: BTreeMap<String, String>,
    ) -> AuditRecord {
        let changed = scope_changes(old, new);
        details.insert("version".into(), new.version.to_string());
        details.insert("label".into(), new.label.to_string());
        if changed.iter().any(|c| c == "mode") {
            details.insert("mode".into(), new.mode.as_str().to_owned());
        }
        self.record(author, &new.tenant, operation, AuditTarget::Scope(new.id.clone()), changed, details)
    }

    /// The event of a scope deleted by `caller`, naming the keys it was removed from.
    pub(super) fn delete_event(&self, caller: &Caller, scope: &Scope, force: bool, detached: &[KeyId]) -> AuditRecord {
        let mut details =
            BTreeMap::from([("label".to_owned(), scope.label.to_string()), ("force".to_owned(), force.to_string())]);
        if !detached.is_empty() {
            details.insert("detached_keys".into(), detached.len().to_string());
            let listed = detached.iter().take(AUDIT_DETACHED_IDS_MAX).map(KeyId::as_str);
            details.insert("detached_key_ids".into(), ids(listed));
            if detached.len() > AUDIT_DETACHED_IDS_MAX {
                details.insert("detached_key_ids_truncated".into(), "true".into());
            }
        }
        let target = AuditTarget::Scope(scope.id.clone());
        self.record(&caller.author(), &caller.tenant, AuditOperation::DeleteScope, target, Vec::new(), details)
    }

    /// A page of the caller's tenant's audit events, newest first. The service asks the store
    /// for exactly `query.limit`; the store says where the next page starts.
    pub async fn list_audit(&self, caller: &Caller, query: AuditQuery) -> Result<AuditPage, ServiceError> {
        Ok(self.store.list_audit(&caller.tenant, &query).await?)
    }
}
