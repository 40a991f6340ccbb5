//! Conversions between `keyscope.v1` messages and domain types, with the validation of every
//! field on the way in. The only place that knows both sides.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use prost_types::Timestamp;

use super::pb;
use crate::{
    domain::{
        Action, AuditEvent, AuditOperation, AuditTarget, InputError, Key, KeyId, KeyState, Metadata, Problem,
        RateLimit, Reason, Rules, Scope, ScopeId, ScopeMode, Subject, TenantPolicy, limits, parse_field,
        validate_metadata,
    },
    service::{CheckAnswer, KeyUsage},
};

/// An action from the wire; `ACTION_UNSPECIFIED` and unknown values are refused.
pub fn action(field: &str, raw: i32) -> Result<Action, InputError> {
    match pb::Action::try_from(raw) {
        Ok(pb::Action::Create) => Ok(Action::Create),
        Ok(pb::Action::Read) => Ok(Action::Read),
        Ok(pb::Action::Update) => Ok(Action::Update),
        Ok(pb::Action::Delete) => Ok(Action::Delete),
        Ok(pb::Action::Unspecified) | Err(_) => {
            Err(InputError::invalid(field, "must be one of ACTION_CREATE, ACTION_READ, ACTION_UPDATE, ACTION_DELETE"))
        }
    }
}

/// The wire form of an action.
pub fn action_to_pb(action: Action) -> pb::Action {
    match action {
        Action::Create => pb::Action::Create,
        Action::Read => pb::Action::Read,
        Action::Update => pb::Action::Update,
        Action::Delete => pb::Action::Delete,
    }
}

/// A scope mode from the wire; unspecified is refused.
pub fn mode(field: &str, raw: i32) -> Result<ScopeMode, InputError> {
    match pb::ScopeMode::try_from(raw) {
        Ok(pb::ScopeMode::Allow) => Ok(ScopeMode::Allow),
        Ok(pb::ScopeMode::Deny) => Ok(ScopeMode::Deny),
        Ok(pb::ScopeMode::Unspecified) | Err(_) => {
            Err(InputError::invalid(field, "must be SCOPE_MODE_ALLOW or SCOPE_MODE_DENY"))
        }
    }
}

/// A key state filter: unspecified means any.
pub fn state_filter(field: &str, raw: i32) -> Result<Option<KeyState>, InputError> {
    match pb::KeyState::try_from(raw) {
        Ok(pb::KeyState::Unspecified) => Ok(None),
        Ok(pb::KeyState::Active) => Ok(Some(KeyState::Active)),
        Ok(pb::KeyState::Disabled) => Ok(Some(KeyState::Disabled)),
        Ok(pb::KeyState::Revoked) => Ok(Some(KeyState::Revoked)),
        Err(_) => Err(InputError::invalid(field, format!("{raw} is not a key state"))),
    }
}

fn state_to_pb(state: KeyState) -> pb::KeyState {
    match state {
        KeyState::Active => pb::KeyState::Active,
        KeyState::Disabled => pb::KeyState::Disabled,
        KeyState::Revoked => pb::KeyState::Revoked,
    }
}

/// The wire form of a reason.
pub fn reason_to_pb(reason: Reason) -> pb::Reason {
    match reason {
        Reason::Ok => pb::Reason::Ok,
        Reason::MalformedCredential => pb::Reason::MalformedCredential,
        Reason::UnknownKey => pb::Reason::UnknownKey,
        Reason::KeyRevoked => pb::Reason::KeyRevoked,
        Reason::KeyDisabled => pb::Reason::KeyDisabled,
        Reason::KeyExpired => pb::Reason::KeyExpired,
        Reason::TenantMismatch => pb::Reason::TenantMismatch,
        Reason::NoScope => pb::Reason::NoScope,
        Reason::DeniedByScope => pb::Reason::DeniedByScope,
        Reason::NotGranted => pb::Reason::NotGranted,
        Reason::SourceNotAllowed => pb::Reason::SourceNotAllowed,
        Reason::RateLimited => pb::Reason::RateLimited,
        Reason::OwnerDenied => pb::Reason::OwnerDenied,
        Reason::OwnerDisabled => pb::Reason::OwnerDisabled,
        Reason::PrincipalDisabled => pb::Reason::PrincipalDisabled,
    }
}

/// Rules from the wire (absent: no rules), naming `field.read[2]` on a bad pattern.
pub fn rules(field: &str, raw: Option<&pb::Rules>) -> Result<Rules, InputError> {
    let empty = pb::Rules::default();
    let pb::Rules { create, read, update, delete } = raw.unwrap_or(&empty);
    Rules::parse([&create[..], &read[..], &update[..], &delete[..]]).map_err(|e| e.within(field))
}

/// The wire form of rules.
pub fn rules_to_pb(rules: &Rules) -> pb::Rules {
    let list = |a: Action| rules.patterns(a).iter().map(ToString::to_string).collect();
    pb::Rules {
        create: list(Action::Create),
        read: list(Action::Read),
        update: list(Action::Update),
        delete: list(Action::Delete),
    }
}

/// Latest instant accepted: the end of year 9999.
const MAX_SECONDS: i64 = 253_402_300_799;

/// An optional instant from the wire, between 1970 and 9999.
pub fn timestamp(field: &str, raw: Option<&Timestamp>) -> Result<Option<SystemTime>, InputError> {
    let Some(ts) = raw else { return Ok(None) };
    let nanos = u32::try_from(ts.nanos).ok().filter(|&n| n < 1_000_000_000);
    let seconds = u64::try_from(ts.seconds).ok().filter(|&s| s <= MAX_SECONDS as u64);
    match (seconds, nanos) {
        (Some(s), Some(n)) => Ok(Some(UNIX_EPOCH + Duration::new(s, n))),
        _ => Err(InputError::invalid(field, "must be a valid instant between 1970 and 9999")),
    }
}

/// The wire form of an instant.
pub fn timestamp_to_pb(at: SystemTime) -> Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX), nanos: since.subsec_nanos() as i32 }
}

/// Metadata from the wire, validated.
pub fn metadata(field: &str, raw: &HashMap<String, String>) -> Result<Metadata, InputError> {
    let metadata: Metadata = raw.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    validate_metadata(field, &metadata)?;
    Ok(metadata)
}

/// The wire form of a key (never its secret or hash).
pub fn key_to_pb(key: &Key) -> pb::Key {
    pb::Key {
        id: key.id.to_string(),
        tenant: key.tenant.to_string(),
        description: key.description.clone(),
        owner: key.owner.clone(),
        scope_ids: key.scope_ids.iter().map(ToString::to_string).collect(),
        state: state_to_pb(key.state).into(),
        expires_at: key.expires_at.map(timestamp_to_pb),
        metadata: key.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        version: key.version,
        created_at: Some(timestamp_to_pb(key.created_at)),
        last_used_at: key.last_used_at.map(timestamp_to_pb),
        allowed_cidrs: key.allowed_cidrs.iter().map(ToString::to_string).collect(),
        rate_limit: key.rate_limit.map(rate_limit_to_pb),
        previous_secret_expires_at: key.previous_secret.as_ref().map(|p| timestamp_to_pb(p.expires_at)),
        rotated_at: key.rotated_at.map(timestamp_to_pb),
    }
}

/// The wire form of a rate limit.
pub fn rate_limit_to_pb(limit: RateLimit) -> pb::RateLimit {
    pb::RateLimit { requests_per_second: limit.requests_per_second, burst: limit.burst }
}

/// An optional rate limit from the wire, within its bounds.
pub fn rate_limit(field: &str, raw: Option<&pb::RateLimit>) -> Result<Option<RateLimit>, InputError> {
    raw.map(|r| RateLimit::new(field, r.requests_per_second, r.burst)).transpose()
}

/// An optional duration from the wire (unset: `None`), not negative.
pub fn duration(field: &str, raw: Option<&prost_types::Duration>) -> Result<Option<Duration>, InputError> {
    let Some(d) = raw else { return Ok(None) };
    let seconds = u64::try_from(d.seconds).ok();
    let nanos = u32::try_from(d.nanos).ok().filter(|&n| n < 1_000_000_000);
    match (seconds, nanos) {
        (Some(s), Some(n)) => Ok(Some(Duration::new(s, n))),
        _ => Err(InputError::invalid(field, "must be a valid, non-negative duration")),
    }
}

/// The wire form of a duration.
pub fn duration_to_pb(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
}

/// The wire form of a tenant policy.
pub fn policy_to_pb(policy: &TenantPolicy) -> pb::TenantPolicy {
    pb::TenantPolicy {
        tenant: policy.tenant.to_string(),
        max_key_lifetime: policy.max_key_lifetime.map(duration_to_pb),
        version: policy.version,
    }
}

/// The wire form of a key's usage over a range of days.
pub fn usage_to_pb(usage: &KeyUsage) -> pb::GetKeyUsageResponse {
    pb::GetKeyUsageResponse {
        key_id: usage.key.id.to_string(),
        last_used_at: usage.key.last_used_at.map(timestamp_to_pb),
        days: usage
            .days
            .iter()
            .map(|d| pb::DailyUsage { date: d.day.to_string(), allowed: d.allowed, denied: d.denied })
            .collect(),
    }
}

/// The wire form of a scope.
pub fn scope_to_pb(scope: &Scope) -> pb::Scope {
    pb::Scope {
        id: scope.id.to_string(),
        tenant: scope.tenant.to_string(),
        label: scope.label.to_string(),
        description: scope.description.clone(),
        mode: match scope.mode {
            ScopeMode::Allow => pb::ScopeMode::Allow,
            ScopeMode::Deny => pb::ScopeMode::Deny,
        }
        .into(),
        rules: Some(rules_to_pb(&scope.rules)),
        builtin: scope.builtin,
        version: scope.version,
        created_at: Some(timestamp_to_pb(scope.created_at)),
        updated_at: Some(timestamp_to_pb(scope.updated_at)),
    }
}

/// The wire form of a check answer.
pub fn answer_to_pb(answer: CheckAnswer) -> pb::CheckResponse {
    let allowed = answer.allowed();
    let CheckAnswer { reason, key_id, tenant, owner, scope_ids, message, retry_after, subject } = answer;
    pb::CheckResponse {
        allowed,
        reason: reason_to_pb(reason).into(),
        key_id: key_id.map(|k| k.to_string()).unwrap_or_default(),
        tenant: tenant.map(|t| t.to_string()).unwrap_or_default(),
        owner,
        scope_ids: scope_ids.iter().map(ToString::to_string).collect(),
        message,
        retry_after: retry_after.map(duration_to_pb),
        subject,
    }
}

/// The wire form of an audit operation.
pub fn operation_to_pb(operation: AuditOperation) -> pb::AuditOperation {
    match operation {
        AuditOperation::CreateKey => pb::AuditOperation::CreateKey,
        AuditOperation::UpdateKey => pb::AuditOperation::UpdateKey,
        AuditOperation::DisableKey => pb::AuditOperation::DisableKey,
        AuditOperation::EnableKey => pb::AuditOperation::EnableKey,
        AuditOperation::RevokeKey => pb::AuditOperation::RevokeKey,
        AuditOperation::CreateScope => pb::AuditOperation::CreateScope,
        AuditOperation::UpdateScope => pb::AuditOperation::UpdateScope,
        AuditOperation::CloneScope => pb::AuditOperation::CloneScope,
        AuditOperation::DeleteScope => pb::AuditOperation::DeleteScope,
        AuditOperation::RotateKey => pb::AuditOperation::RotateKey,
        AuditOperation::SetTenantPolicy => pb::AuditOperation::SetTenantPolicy,
        AuditOperation::PutPrincipal => pb::AuditOperation::PutPrincipal,
        AuditOperation::DeletePrincipal => pb::AuditOperation::DeletePrincipal,
        AuditOperation::SetScopeMembers => pb::AuditOperation::SetScopeMembers,
        AuditOperation::DeleteKey => pb::AuditOperation::DeleteKey,
    }
}

/// The wire form of an audit event.
pub fn audit_event_to_pb(event: &AuditEvent) -> pb::AuditEvent {
    let r = &event.record;
    pb::AuditEvent {
        id: event.id.to_string(),
        tenant: r.tenant.to_string(),
        time: Some(timestamp_to_pb(r.at)),
        actor_key_id: r.actor.to_string(),
        operation: operation_to_pb(r.operation).into(),
        target_type: r.target.kind().to_owned(),
        target_id: r.target.id().to_owned(),
        changed_fields: r.changed.clone(),
        details: r.details.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        request_id: r.request_id.to_string(),
    }
}

/// An optional target id filter: a key id or a scope id (empty: any).
pub fn target_filter(field: &str, raw: &str) -> Result<Option<String>, InputError> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.parse::<KeyId>().is_ok() || raw.parse::<ScopeId>().is_ok() || raw.parse::<Subject>().is_ok() {
        return Ok(Some(raw.to_owned()));
    }
    Err(InputError::invalid(field, "must be a key id, a scope id or a principal's subject"))
}

/// An audit target kind filter from the wire (empty: any).
pub fn target_type_filter(field: &str, raw: &str) -> Result<Option<&'static str>, InputError> {
    if raw.is_empty() {
        return Ok(None);
    }
    match AuditTarget::KINDS.into_iter().find(|k| *k == raw) {
        Some(kind) => Ok(Some(kind)),
        None => Err(InputError::invalid(field, format!("must be one of {}", AuditTarget::KINDS.join(", ")))),
    }
}

/// A page size from the wire: 0 means the default, larger than the maximum means the maximum.
pub fn page_size(field: &str, raw: i32) -> Result<usize, InputError> {
    match usize::try_from(raw) {
        Ok(0) => Ok(limits::PAGE_SIZE_DEFAULT),
        Ok(n) => Ok(n.min(limits::PAGE_SIZE_MAX)),
        Err(_) => Err(InputError::invalid(field, "must not be negative")),
    }
}

const PAGE_TOKEN_VERSION: &str = "v1:";

/// The opaque token that resumes a listing after `last_id`.
pub fn page_token(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_VERSION}{last_id}"))
}

/// The cursor inside a page token (`""`: the first page).
pub fn page_cursor<T: std::str::FromStr<Err = Problem>>(field: &str, raw: &str) -> Result<Option<T>, InputError> {
    page_cursor_within(field, raw, limits::PAGE_TOKEN_MAX)
}

/// [`page_cursor`] for cursors longer than ids (principal subjects): tokens up to `max` long.
pub fn page_cursor_within<T: std::str::FromStr<Err = Problem>>(
    field: &str,
    raw: &str,
    max: usize,
) -> Result<Option<T>, InputError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = || InputError::invalid(field, "is not a page token from a previous response");
    if raw.len() > max {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let id = text.strip_prefix(PAGE_TOKEN_VERSION).ok_or_else(bad)?;
    id.parse().map(Some).map_err(|_| bad())
}

/// The paths of an update mask, each checked against `allowed`; at least one.
pub fn mask<'a>(
    field: &str,
    raw: Option<&'a prost_types::FieldMask>,
    allowed: &[&str],
) -> Result<Vec<&'a str>, InputError> {
    let paths: Vec<&str> = raw.map(|m| m.paths.iter().map(String::as_str).collect()).unwrap_or_default();
    if paths.is_empty() {
        return Err(InputError::invalid(field, format!("must name at least one of: {}", allowed.join(", "))));
    }
    for (i, path) in paths.iter().enumerate() {
        if !allowed.contains(path) {
            return Err(InputError::invalid(
                format!("{field}.paths[{i}]"),
                format!("`{}` is not one of: {}", crate::domain::shorten_for_message(path), allowed.join(", ")),
            ));
        }
    }
    Ok(paths)
}

/// An optional string field (empty: absent) parsed into a domain type.
pub fn optional<T: std::str::FromStr<Err = Problem>>(field: &str, raw: &str) -> Result<Option<T>, InputError> {
    if raw.is_empty() { Ok(None) } else { parse_field(field, raw).map(Some) }
}

/// A required string field parsed into a domain type.
pub fn required<T: std::str::FromStr<Err = Problem>>(field: &str, raw: &str) -> Result<T, InputError> {
    if raw.is_empty() {
        return Err(InputError::invalid(field, "is required"));
    }
    parse_field(field, raw)
}

/// The wire form of a principal.
pub fn principal_to_pb(principal: &crate::domain::Principal) -> pb::RegisteredPrincipal {
    pb::RegisteredPrincipal {
        tenant: principal.tenant.to_string(),
        subject: principal.subject.to_string(),
        roles: principal.roles.iter().map(ToString::to_string).collect(),
        enabled: principal.enabled,
        version: principal.version,
        created_at: Some(timestamp_to_pb(principal.created_at)),
        updated_at: Some(timestamp_to_pb(principal.updated_at)),
    }
}

/// The wire form of a scope's member bindings.
pub fn members_to_pb(scope_id: &ScopeId, members: &crate::domain::Members) -> pb::ScopeMembers {
    pb::ScopeMembers {
        scope_id: scope_id.to_string(),
        subjects: members.subjects.iter().map(ToString::to_string).collect(),
        roles: members.roles.iter().map(ToString::to_string).collect(),
        version: members.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KeyId;

    #[test]
    fn page_tokens_round_trip_and_reject_tampering() {
        let id: KeyId = "abcdefghijABCDEFGHIJ".parse().expect("id");
        let token = page_token(id.as_str());
        assert_eq!(page_cursor::<KeyId>("page_token", &token), Ok(Some(id)));
        assert_eq!(page_cursor::<KeyId>("page_token", ""), Ok(None));
        for bad in ["!!", "djE6", "eHl6", &"A".repeat(200)] {
            assert!(page_cursor::<KeyId>("page_token", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_outside_the_supported_range_are_refused() {
        assert!(timestamp("t", Some(&Timestamp { seconds: -1, nanos: 0 })).is_err());
        assert!(timestamp("t", Some(&Timestamp { seconds: 1, nanos: -1 })).is_err());
        assert!(timestamp("t", Some(&Timestamp { seconds: i64::MAX, nanos: 0 })).is_err());
        let at = timestamp("t", Some(&Timestamp { seconds: 1_700_000_000, nanos: 5 })).expect("valid");
        assert_eq!(at.map(timestamp_to_pb), Some(Timestamp { seconds: 1_700_000_000, nanos: 5 }));
    }

    #[test]
    fn durations_must_be_valid_and_not_negative() {
        assert!(duration("grace", Some(&prost_types::Duration { seconds: -1, nanos: 0 })).is_err());
        assert!(duration("grace", Some(&prost_types::Duration { seconds: 1, nanos: -5 })).is_err());
        assert!(duration("grace", Some(&prost_types::Duration { seconds: 1, nanos: 1_000_000_000 })).is_err());
        assert_eq!(duration("grace", None), Ok(None));
        let d = duration("grace", Some(&prost_types::Duration { seconds: 3600, nanos: 5 })).expect("valid");
        assert_eq!(d, Some(Duration::new(3600, 5)));
    }

    #[test]
    fn page_sizes_default_and_clamp() {
        assert_eq!(page_size("page_size", 0), Ok(limits::PAGE_SIZE_DEFAULT));
        assert_eq!(page_size("page_size", 10_000), Ok(limits::PAGE_SIZE_MAX));
        assert!(page_size("page_size", -1).is_err());
    }

    #[test]
    fn unspecified_enums_are_refused_with_the_field() {
        assert_eq!(action("items[1].action", 0).map_err(|e| e.field().to_owned()), Err("items[1].action".into()));
        assert!(action("action", 99).is_err());
        assert!(mode("mode", 0).is_err());
        assert!(state_filter("state", 7).is_err());
    }
}
