//! Keys: who holds which scopes, and the state checks made before any scope is consulted.

use std::{collections::BTreeMap, time::SystemTime};

use ipnet::IpNet;

use super::{
    decision::Reason,
    error::InputError,
    ids::{KeyId, ScopeId, Tenant},
    limits,
    token::SecretHash,
};

/// The lifecycle state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Checks are decided by the scopes.
    Active,
    /// Every check is denied until the key is enabled again.
    Disabled,
    /// Every check is denied, for good.
    Revoked,
}

impl KeyState {
    /// The lowercase name, as in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Disabled => "disabled",
            KeyState::Revoked => "revoked",
        }
    }
}

/// Free-form labels on a key, validated against the documented limits.
pub type Metadata = BTreeMap<String, String>;

/// An API key as stored: everything but the secret itself, of which only a keyed hash is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Public id, part of the token.
    pub id: KeyId,
    /// The tenant it belongs to.
    pub tenant: Tenant,
    /// Free text.
    pub description: String,
    /// Who the key belongs to (free-form, may be empty).
    pub owner: String,
    /// The scopes it holds, in the tenant.
    pub scope_ids: Vec<ScopeId>,
    /// Active, disabled or revoked.
    pub state: KeyState,
    /// When set, checks are denied from this instant.
    pub expires_at: Option<SystemTime>,
    /// Free-form labels.
    pub metadata: Metadata,
    /// Grows by one with every change, from 1.
    pub version: u64,
    /// When it was made.
    pub created_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
    /// When it was last used in a check, if known.
    pub last_used_at: Option<SystemTime>,
    /// HMAC-SHA256 of the secret under the server's pepper.
    pub secret_hash: SecretHash,
    /// The secret before the last rotation, while its grace period lasts (or lasted: it is
    /// compared with the time of each check, and a later rotation replaces it).
    pub previous_secret: Option<PreviousSecret>,
    /// When the secret was last rotated.
    pub rotated_at: Option<SystemTime>,
    /// The source networks checks may come from; empty: any source.
    pub allowed_cidrs: Vec<IpNet>,
    /// The most checks allowed per second, with a burst; `None`: no limit.
    pub rate_limit: Option<RateLimit>,
}

/// A rotated-out secret, still accepted until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    /// Its keyed hash.
    pub hash: SecretHash,
    /// From this instant it is no longer accepted.
    pub expires_at: SystemTime,
}

impl Key {
    /// The previous secret's hash if it is still accepted at `now`.
    pub fn previous_hash_at(&self, now: SystemTime) -> Option<&SecretHash> {
        self.previous_secret.as_ref().filter(|p| now < p.expires_at).map(|p| &p.hash)
    }
}

/// A key's rate limit: `requests_per_second` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained rate, `0 < r <= 1e6`.
    pub requests_per_second: f64,
    /// Checks allowed at once after a quiet period, 1 to 1e6.
    pub burst: u32,
}

// A validated rate is finite and positive, so equality is total.
impl Eq for RateLimit {}

impl RateLimit {
    /// A rate limit within the documented bounds, naming `field.requests_per_second` or
    /// `field.burst` otherwise.
    pub fn new(field: &str, requests_per_second: f64, burst: u32) -> Result<RateLimit, InputError> {
        let max = limits::RATE_LIMIT_MAX as f64;
        if !(requests_per_second.is_finite() && requests_per_second > 0.0 && requests_per_second <= max) {
            return Err(InputError::invalid(
                format!("{field}.requests_per_second"),
                format!("must be more than 0 and at most {}", limits::RATE_LIMIT_MAX),
            ));
        }
        if burst == 0 || burst > limits::RATE_LIMIT_MAX {
            return Err(InputError::invalid(
                format!("{field}.burst"),
                format!("must be 1 to {}", limits::RATE_LIMIT_MAX),
            ));
        }
        Ok(RateLimit { requests_per_second, burst })
    }
}

/// The state checks of the decision rules, in order, once the secret is verified:
/// revoked -> disabled -> expired -> tenant mismatch. `None` means "go on to the scopes".
pub fn key_status(key: &Key, now: SystemTime, requested_tenant: Option<&Tenant>) -> Option<Reason> {
    match key.state {
        KeyState::Revoked => return Some(Reason::KeyRevoked),
        KeyState::Disabled => return Some(Reason::KeyDisabled),
        KeyState::Active => {}
    }
    if key.expires_at.is_some_and(|at| now >= at) {
        return Some(Reason::KeyExpired);
    }
    if requested_tenant.is_some_and(|t| *t != key.tenant) {
        return Some(Reason::TenantMismatch);
    }
    None
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), InputError> {
    if value.len() > max {
        return Err(InputError::invalid(field, format!("at most {max} bytes, got {}", value.len())));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(InputError::invalid(field, "control characters are not allowed"));
    }
    Ok(())
}

/// A description: at most [`limits::DESCRIPTION_MAX`] bytes, no control characters but tab
/// and newline.
pub fn validate_description(field: &str, value: &str) -> Result<(), InputError> {
    check_text(field, value, limits::DESCRIPTION_MAX)
}

/// An owner: at most [`limits::OWNER_MAX`] bytes, on one line.
pub fn validate_owner(field: &str, value: &str) -> Result<(), InputError> {
    check_text(field, value, limits::OWNER_MAX)?;
    if value.contains(['\n', '\t']) {
        return Err(InputError::invalid(field, "must be one line"));
    }
    Ok(())
}

/// Validates key metadata: entry count, key syntax and value length.
pub fn validate_metadata(field: &str, metadata: &Metadata) -> Result<(), InputError> {
    InputError::check_count(field, metadata.len(), limits::METADATA_ENTRIES_MAX)?;
    for (k, v) in metadata {
        let ok_key = !k.is_empty()
            && k.len() <= limits::METADATA_KEY_MAX
            && k.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'/' | b'-'));
        if !ok_key {
            return Err(InputError::invalid(
                field,
                format!(
                    "key `{}` must be 1 to {} characters [A-Za-z0-9_.:/-]",
                    super::ids::shorten(k),
                    limits::METADATA_KEY_MAX
                ),
            ));
        }
        // The key names the entry, shortened: a metadata key may be a pasted token.
        check_text(&format!("{field}[{}]", super::ids::shorten(k)), v, limits::METADATA_VALUE_MAX)?;
    }
    Ok(())
}

/// Validates a key's scope list: 1 to [`limits::SCOPES_PER_KEY_MAX`] distinct ids.
pub fn validate_scope_ids(field: &str, raw: &[String]) -> Result<Vec<ScopeId>, InputError> {
    if raw.is_empty() {
        return Err(InputError::invalid(field, "a key needs at least one scope"));
    }
    InputError::check_count(field, raw.len(), limits::SCOPES_PER_KEY_MAX)?;
    let mut ids: Vec<ScopeId> = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let id: ScopeId = super::error::parse_field(&format!("{field}[{i}]"), s)?;
        if ids.contains(&id) {
            return Err(InputError::invalid(format!("{field}[{i}]"), format!("scope `{id}` is listed twice")));
        }
        ids.push(id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(state: KeyState, expires_at: Option<SystemTime>) -> Key {
        let tenant = "acme".parse().expect("test tenant");
        Key { state, expires_at, tenant, ..crate::domain::testing::key(&[], "") }
    }

    #[test]
    fn a_token_used_as_a_metadata_key_is_named_by_its_key_id_only() {
        let token = "ks_AbCdEfGhIjKlMnOpQrSt_0123456789abcdefghijKLMNOPqr";
        let too_long: Metadata = [(token.to_owned(), "x".repeat(600))].into_iter().collect();
        let error = validate_metadata("metadata", &too_long).expect_err("value too long");
        assert_eq!(error.field(), "metadata[ks_AbCdEfGhIjKlMnOpQrSt_…]");
        assert!(!error.to_string().contains("0123456789abcdefghij"), "{error}");
        let bad_key: Metadata = [(format!("{token}!"), String::new())].into_iter().collect();
        let error = validate_metadata("metadata", &bad_key).expect_err("bad key");
        assert!(!error.to_string().contains("0123456789abcdefghij"), "{error}");
    }

    #[test]
    fn state_checks_come_in_spec_order() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let past = Some(now - Duration::from_secs(1));
        let other: Tenant = "other".parse().expect("test tenant");
        assert_eq!(key_status(&key(KeyState::Revoked, past), now, Some(&other)), Some(Reason::KeyRevoked));
        assert_eq!(key_status(&key(KeyState::Disabled, past), now, Some(&other)), Some(Reason::KeyDisabled));
        assert_eq!(key_status(&key(KeyState::Active, past), now, Some(&other)), Some(Reason::KeyExpired));
        assert_eq!(key_status(&key(KeyState::Active, Some(now)), now, None), Some(Reason::KeyExpired));
        assert_eq!(key_status(&key(KeyState::Active, None), now, Some(&other)), Some(Reason::TenantMismatch));
        let own: Tenant = "acme".parse().expect("test tenant");
        assert_eq!(key_status(&key(KeyState::Active, Some(now + Duration::from_secs(1))), now, Some(&own)), None);
    }

    #[test]
    fn metadata_limits_name_the_field() {
        let mut m = Metadata::new();
        m.insert("bad key".into(), "v".into());
        assert_eq!(validate_metadata("metadata", &m).map_err(|e| e.field().to_owned()), Err("metadata".into()));
        let many: Metadata = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(matches!(validate_metadata("metadata", &many), Err(InputError::TooMany { limit: 32, .. })));
    }

    #[test]
    fn scope_lists_need_one_to_thirty_two_distinct_ids() {
        assert!(validate_scope_ids("scope_ids", &[]).is_err());
        let dup = vec!["a".to_owned(), "a".to_owned()];
        assert_eq!(validate_scope_ids("scope_ids", &dup).map_err(|e| e.field().to_owned()), Err("scope_ids[1]".into()));
        let many: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
        assert!(matches!(validate_scope_ids("scope_ids", &many), Err(InputError::TooMany { .. })));
    }
}
