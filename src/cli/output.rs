//! How the CLI prints keys, scopes and answers: aligned text for people, JSON for machines.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::grpc::{convert, pb};

fn time(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let at = convert::timestamp("", Some(ts)).ok().flatten()?;
    Some(humantime::format_rfc3339_seconds(at).to_string())
}

fn enum_name(name: Option<&str>, prefix: &str) -> String {
    name.map(|n| n.strip_prefix(prefix).unwrap_or(n).to_ascii_lowercase()).unwrap_or_else(|| "unknown".into())
}

fn state(raw: i32) -> String {
    enum_name(pb::KeyState::try_from(raw).ok().map(|s| s.as_str_name()), "KEY_STATE_")
}

fn mode(raw: i32) -> String {
    enum_name(pb::ScopeMode::try_from(raw).ok().map(|s| s.as_str_name()), "SCOPE_MODE_")
}

/// The reason name without its `REASON_` prefix.
pub fn reason(raw: i32) -> String {
    pb::Reason::try_from(raw)
        .ok()
        .map(|r| r.as_str_name().trim_start_matches("REASON_").to_owned())
        .unwrap_or_else(|| "UNKNOWN".into())
}

fn rules_json(rules: Option<&pb::Rules>) -> Value {
    let r = rules.cloned().unwrap_or_default();
    json!({"create": r.create, "read": r.read, "update": r.update, "delete": r.delete})
}

/// A key as JSON.
pub fn key_json(key: &pb::Key) -> Value {
    json!({
        "id": key.id,
        "tenant": key.tenant,
        "description": key.description,
        "owner": key.owner,
        "scope_ids": key.scope_ids,
        "state": state(key.state),
        "expires_at": time(key.expires_at.as_ref()),
        "metadata": key.metadata,
        "version": key.version,
        "created_at": time(key.created_at.as_ref()),
        "last_used_at": time(key.last_used_at.as_ref()),
        "allowed_cidrs": key.allowed_cidrs,
        "rate_limit": key.rate_limit.as_ref().map(|r| json!({"requests_per_second": r.requests_per_second, "burst": r.burst})),
        "previous_secret_expires_at": time(key.previous_secret_expires_at.as_ref()),
        "rotated_at": time(key.rotated_at.as_ref()),
    })
}

fn duration_text(d: Option<&prost_types::Duration>) -> Option<String> {
    let d = convert::duration("", d).ok().flatten()?;
    Some(crate::domain::format_duration(d))
}

/// A tenant policy as JSON.
pub fn policy_json(policy: &pb::TenantPolicy) -> Value {
    json!({
        "tenant": policy.tenant,
        "max_key_lifetime": duration_text(policy.max_key_lifetime.as_ref()),
        "version": policy.version,
    })
}

/// A tenant policy as aligned lines.
pub fn policy_text(policy: &pb::TenantPolicy) -> String {
    let lines = [
        ("tenant", policy.tenant.clone()),
        ("max key lifetime", duration_text(policy.max_key_lifetime.as_ref()).unwrap_or_else(|| "none".into())),
        ("version", policy.version.to_string()),
    ];
    lines.iter().map(|(k, v)| format!("{k:<18}{v}\n")).collect()
}

/// A key as aligned lines.
pub fn key_text(key: &pb::Key) -> String {
    let mut meta: Vec<String> = key.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
    meta.sort();
    let lines = [
        ("key", key.id.clone()),
        ("tenant", key.tenant.clone()),
        ("state", state(key.state)),
        ("scopes", key.scope_ids.join(", ")),
        ("owner", key.owner.clone()),
        ("description", key.description.clone()),
        ("expires", time(key.expires_at.as_ref()).unwrap_or_else(|| "never".into())),
        ("metadata", meta.join(", ")),
        ("version", key.version.to_string()),
        ("created", time(key.created_at.as_ref()).unwrap_or_default()),
        ("last used", time(key.last_used_at.as_ref()).unwrap_or_else(|| "never".into())),
    ];
    let mut text = aligned(&lines);
    let mut extra = Vec::new();
    if !key.allowed_cidrs.is_empty() {
        extra.push(("sources", key.allowed_cidrs.join(", ")));
    }
    if let Some(r) = &key.rate_limit {
        extra.push(("rate limit", format!("{}/s, burst {}", r.requests_per_second, r.burst)));
    }
    if let Some(at) = time(key.rotated_at.as_ref()) {
        extra.push(("rotated", at));
    }
    if let Some(at) = time(key.previous_secret_expires_at.as_ref()) {
        extra.push(("old secret", format!("valid until {at}")));
    }
    text.push_str(&aligned(&extra));
    text
}

fn aligned(lines: &[(&str, String)]) -> String {
    lines.iter().map(|(k, v)| format!("{}\n", format!("{k:<12}{v}").trim_end())).collect()
}

/// A scope as JSON.
pub fn scope_json(scope: &pb::Scope) -> Value {
    json!({
        "id": scope.id,
        "tenant": scope.tenant,
        "label": scope.label,
        "description": scope.description,
        "mode": mode(scope.mode),
        "rules": rules_json(scope.rules.as_ref()),
        "builtin": scope.builtin,
        "version": scope.version,
        "created_at": time(scope.created_at.as_ref()),
        "updated_at": time(scope.updated_at.as_ref()),
    })
}

/// A scope as aligned lines.
pub fn scope_text(scope: &pb::Scope) -> String {
    let r = scope.rules.clone().unwrap_or_default();
    let lines = [
        ("scope", scope.id.clone()),
        ("label", scope.label.clone()),
        ("tenant", scope.tenant.clone()),
        ("mode", mode(scope.mode)),
        ("builtin", scope.builtin.to_string()),
        ("create", r.create.join(", ")),
        ("read", r.read.join(", ")),
        ("update", r.update.join(", ")),
        ("delete", r.delete.join(", ")),
        ("description", scope.description.clone()),
        ("version", scope.version.to_string()),
    ];
    aligned(&lines)
}

/// A check answer as JSON.
pub fn answer_json(answer: &pb::CheckResponse) -> Value {
    json!({
        "allowed": answer.allowed,
        "reason": reason(answer.reason),
        "key_id": answer.key_id,
        "tenant": answer.tenant,
        "owner": answer.owner,
        "scope_ids": answer.scope_ids,
        "message": answer.message,
        "retry_after_ms": convert::duration("", answer.retry_after.as_ref()).ok().flatten().map(|d| d.as_millis() as u64),
    })
}

/// A check answer as one line.
pub fn answer_text(answer: &pb::CheckResponse) -> String {
    let verdict = if answer.allowed { "allowed" } else { "denied" };
    let mut line = format!("{verdict} ({})", reason(answer.reason));
    if !answer.message.is_empty() {
        line.push_str(": ");
        line.push_str(&answer.message);
    }
    if let Some(wait) = duration_text(answer.retry_after.as_ref()) {
        line.push_str(&format!(" (retry after {wait})"));
    }
    line.push('\n');
    line
}

/// A table row per key.
pub fn key_row(key: &pb::Key) -> String {
    format!(
        "{}\n",
        format!("{:<22}{:<10}{:<40}{}", key.id, state(key.state), key.scope_ids.join(","), key.owner).trim_end()
    )
}

/// A table row per scope.
pub fn scope_row(scope: &pb::Scope) -> String {
    let builtin = if scope.builtin { "builtin" } else { "" };
    format!("{}\n", format!("{:<28}{:<24}{:<7}{}", scope.id, scope.label, mode(scope.mode), builtin).trim_end())
}

fn operation(raw: i32) -> String {
    enum_name(pb::AuditOperation::try_from(raw).ok().map(|o| o.as_str_name()), "AUDIT_OPERATION_")
}

/// An audit event as JSON.
pub fn audit_json(event: &pb::AuditEvent) -> Value {
    json!({
        "id": event.id,
        "tenant": event.tenant,
        "time": event.time.as_ref().and_then(|t| convert::timestamp("", Some(t)).ok().flatten())
            .map(|at| humantime::format_rfc3339_millis(at).to_string()),
        "actor_key_id": event.actor_key_id,
        "operation": operation(event.operation),
        "target_type": event.target_type,
        "target_id": event.target_id,
        "changed_fields": event.changed_fields,
        "details": event.details,
        "request_id": event.request_id,
    })
}

/// An audit event as one row, then its changed fields and details indented below it.
pub fn audit_row(event: &pb::AuditEvent) -> String {
    let target = format!("{}:{}", event.target_type, event.target_id);
    let when = time(event.time.as_ref()).unwrap_or_default();
    let op = operation(event.operation);
    let mut row = format!("{when:<22}{op:<14}{target:<32}{:<22}{}\n", event.actor_key_id, event.request_id);
    if !event.changed_fields.is_empty() {
        row.push_str(&format!("  changed: {}\n", event.changed_fields.join(", ")));
    }
    let mut details: Vec<String> = event.details.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !details.is_empty() {
        details.sort();
        row.push_str(&format!("  details: {}\n", details.join(", ")));
    }
    row
}

/// An instant for `--since`/`--until`: RFC 3339, or a duration before now (`1h`, `7d`).
pub fn parse_time(flag: &str, text: Option<&str>) -> Result<Option<prost_types::Timestamp>, String> {
    let Some(text) = text else { return Ok(None) };
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(at) => at,
        Err(_) => {
            let ago = humantime::parse_duration(text)
                .map_err(|_| format!("{flag} `{text}`: expected an RFC 3339 instant or a duration like 1h"))?;
            SystemTime::now().checked_sub(ago).ok_or_else(|| format!("{flag} `{text}`: too far in the past"))?
        }
    };
    Ok(Some(convert::timestamp_to_pb(at)))
}

/// An RFC 3339 instant parsed for `--expires-at`, or a duration from now for `--expires-in`.
pub fn parse_expiry(at: Option<&str>, within: Option<&str>) -> Result<Option<prost_types::Timestamp>, String> {
    let instant = match (at, within) {
        (Some(text), _) => humantime::parse_rfc3339_weak(text).map_err(|e| format!("--expires-at `{text}`: {e}"))?,
        (None, Some(text)) => {
            let d = humantime::parse_duration(text).map_err(|e| format!("--expires-in `{text}`: {e}"))?;
            SystemTime::now().checked_add(d).ok_or_else(|| format!("--expires-in `{text}`: too far in the future"))?
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(convert::timestamp_to_pb(instant)))
}

/// A key's usage as JSON.
pub fn usage_json(usage: &pb::GetKeyUsageResponse) -> Value {
    let days: Vec<Value> =
        usage.days.iter().map(|d| json!({"date": d.date, "allowed": d.allowed, "denied": d.denied})).collect();
    json!({"key_id": usage.key_id, "last_used_at": time(usage.last_used_at.as_ref()), "days": days})
}

/// A key's usage as a table, one row per day, with totals.
pub fn usage_text(usage: &pb::GetKeyUsageResponse) -> String {
    let mut text = aligned(&[
        ("key", usage.key_id.clone()),
        ("last used", time(usage.last_used_at.as_ref()).unwrap_or_else(|| "never".into())),
    ]);
    text.push_str(&format!("\n{:<12}{:>10}{:>10}\n", "DATE", "ALLOWED", "DENIED"));
    for d in &usage.days {
        text.push_str(&format!("{:<12}{:>10}{:>10}\n", d.date, d.allowed, d.denied));
    }
    let allowed: u64 = usage.days.iter().map(|d| d.allowed).sum();
    let denied: u64 = usage.days.iter().map(|d| d.denied).sum();
    text.push_str(&format!("{:<12}{allowed:>10}{denied:>10}\n", "total"));
    text
}

/// A `YYYY-MM-DD` date (its UTC midnight) or an RFC 3339 instant, for `flag`.
pub fn parse_date_or_instant(flag: &str, text: &str) -> Result<prost_types::Timestamp, String> {
    let instant = match text.parse::<crate::domain::Day>() {
        Ok(day) => day.start(),
        Err(_) => humantime::parse_rfc3339_weak(text)
            .map_err(|e| format!("{flag} `{text}`: expected YYYY-MM-DD or an RFC 3339 instant ({e})"))?,
    };
    Ok(convert::timestamp_to_pb(instant))
}
