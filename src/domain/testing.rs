//! Records for the domain's unit tests.

use std::time::SystemTime;

use super::{Key, KeyState, Metadata, Rules, Scope, ScopeMode, SecretHash};

/// An active key of tenant `t` holding `scope_ids`, owned by `owner`.
pub(crate) fn key(scope_ids: &[&str], owner: &str) -> Key {
    Key {
        id: "abcdefghijABCDEFGHIJ".parse().expect("test id"),
        tenant: "t".parse().expect("test tenant"),
        description: String::new(),
        owner: owner.to_owned(),
        scope_ids: scope_ids.iter().map(|s| s.parse().expect("test scope id")).collect(),
        state: KeyState::Active,
        expires_at: None,
        metadata: Metadata::new(),
        version: 1,
        created_at: SystemTime::UNIX_EPOCH,
        updated_at: SystemTime::UNIX_EPOCH,
        last_used_at: None,
        secret_hash: SecretHash::from_bytes([0; 32]),
        previous_secret: None,
        rotated_at: None,
        allowed_cidrs: Vec::new(),
        rate_limit: None,
    }
}

/// A scope of tenant `t` whose rules list `read` patterns only.
pub(crate) fn scope(id: &str, mode: ScopeMode, read: &[&str]) -> Scope {
    let none: &[&str] = &[];
    Scope {
        id: id.parse().expect("test id"),
        tenant: "t".parse().expect("test tenant"),
        label: id.parse().expect("test label"),
        description: String::new(),
        mode,
        rules: Rules::parse([none, read, none, none]).expect("test rules"),
        builtin: false,
        version: 1,
        created_at: SystemTime::UNIX_EPOCH,
        updated_at: SystemTime::UNIX_EPOCH,
    }
}
