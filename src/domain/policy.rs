//! A tenant's key policy: the longest a key may live.

use std::time::{Duration, SystemTime};

use super::{error::InputError, ids::Tenant};

/// Longest maximum key lifetime a policy may set: 100 years.
pub const MAX_KEY_LIFETIME_LIMIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A tenant's stored key policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPolicy {
    /// Whose policy.
    pub tenant: Tenant,
    /// The longest a key may live from the time it is created, updated or rotated; `None`: no
    /// limit.
    pub max_key_lifetime: Option<Duration>,
    /// Grows by one with every change, from 1 (0: none stored, the configured default).
    pub version: u64,
    /// When it last changed.
    pub updated_at: SystemTime,
}

/// A maximum key lifetime from the wire: 1 second to 100 years.
pub fn validate_max_key_lifetime(field: &str, lifetime: Duration) -> Result<Duration, InputError> {
    if lifetime < Duration::from_secs(1) || lifetime > MAX_KEY_LIFETIME_LIMIT {
        return Err(InputError::invalid(field, "must be 1 second to 100 years"));
    }
    Ok(lifetime)
}

/// A duration as an operator writes it: `90d`, `12h`, `30m` or `45s` when it is a whole number
/// of that unit, else humantime's form (`1h 30m`).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 && secs > 0 {
        for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
            if secs.is_multiple_of(size) {
                return format!("{}{unit}", secs / size);
            }
        }
    }
    humantime::format_duration(d).to_string()
}

/// Whether a key expiring at `expires_at`, written at `now`, fits a maximum lifetime `max`:
/// with a maximum, the key needs an expiry no later than `now + max`. The error names
/// `expires_at` and the limit.
pub fn check_key_lifetime(
    max: Option<Duration>,
    now: SystemTime,
    expires_at: Option<SystemTime>,
) -> Result<(), InputError> {
    let Some(max) = max else { return Ok(()) };
    let limit = format_duration(max);
    match expires_at {
        None => {
            Err(InputError::invalid("expires_at", format!("is required: the tenant's maximum key lifetime is {limit}")))
        }
        Some(at) if at > now + max => Err(InputError::invalid(
            "expires_at",
            format!("is beyond the tenant's maximum key lifetime of {limit} from now"),
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_expire_within_the_maximum() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        assert_eq!(check_key_lifetime(None, now, None), Ok(()));
        assert_eq!(check_key_lifetime(Some(day), now, Some(now + day)), Ok(()));
        let late = check_key_lifetime(Some(day), now, Some(now + day + Duration::from_secs(1))).expect_err("late");
        assert_eq!(late.field(), "expires_at");
        assert!(late.to_string().contains("of 1d from now"), "{late}");
        assert_eq!(format_duration(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s 500ms");
        let never = check_key_lifetime(Some(day), now, None).expect_err("no expiry");
        assert_eq!(never.field(), "expires_at");
    }

    #[test]
    fn lifetimes_are_bounded() {
        assert!(validate_max_key_lifetime("max_key_lifetime", Duration::ZERO).is_err());
        assert!(validate_max_key_lifetime("max_key_lifetime", Duration::from_millis(999)).is_err());
        assert!(
            validate_max_key_lifetime("max_key_lifetime", MAX_KEY_LIFETIME_LIMIT + Duration::from_secs(1)).is_err()
        );
        assert_eq!(validate_max_key_lifetime("m", Duration::from_secs(60)), Ok(Duration::from_secs(60)));
    }
}
