//! The decision of the decision rules: a total function from scopes, module and action to an
//! answer with its reason and the scopes that decided. Deny is the default.

use std::fmt::{self, Write as _};

use super::{
    action::Action,
    ids::{Module, RESERVED_ROOT},
    scope::Scope,
};

/// Why a check was answered the way it was. Only [`Reason::Ok`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Allowed.
    Ok,
    /// The credential is not a keyscope token.
    MalformedCredential,
    /// No such key, or a wrong secret.
    UnknownKey,
    /// The key was revoked.
    KeyRevoked,
    /// The key is disabled.
    KeyDisabled,
    /// The key has expired.
    KeyExpired,
    /// The request named another tenant.
    TenantMismatch,
    /// The key has no scope.
    NoScope,
    /// A deny-mode scope lists the module.
    DeniedByScope,
    /// No scope grants the module.
    NotGranted,
    /// The key allows only some source networks and the request came from none of them (or
    /// gave no source address).
    SourceNotAllowed,
    /// The key's rate limit is reached.
    RateLimited,
    /// The key's scopes allow, but its owner (a registered principal) is not allowed, or is
    /// gone (deleted).
    OwnerDenied,
    /// The key's owner is a registered principal that is disabled.
    OwnerDisabled,
    /// The bearer principal is registered and disabled.
    PrincipalDisabled,
}

impl Reason {
    /// The name used in logs, fixtures and the API (without the `REASON_` prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "OK",
            Reason::MalformedCredential => "MALFORMED_CREDENTIAL",
            Reason::UnknownKey => "UNKNOWN_KEY",
            Reason::KeyRevoked => "KEY_REVOKED",
            Reason::KeyDisabled => "KEY_DISABLED",
            Reason::KeyExpired => "KEY_EXPIRED",
            Reason::TenantMismatch => "TENANT_MISMATCH",
            Reason::NoScope => "NO_SCOPE",
            Reason::DeniedByScope => "DENIED_BY_SCOPE",
            Reason::NotGranted => "NOT_GRANTED",
            Reason::SourceNotAllowed => "SOURCE_NOT_ALLOWED",
            Reason::RateLimited => "RATE_LIMITED",
            Reason::OwnerDenied => "OWNER_DENIED",
            Reason::OwnerDisabled => "OWNER_DISABLED",
            Reason::PrincipalDisabled => "PRINCIPAL_DISABLED",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer for one module and action: the reason and the scopes that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Why.
    pub reason: Reason,
    /// Every denying scope for [`Reason::DeniedByScope`], every granting scope for
    /// [`Reason::Ok`], sorted by id; empty otherwise.
    pub deciding: Vec<&'a Scope>,
}

impl<'a> Decision<'a> {
    /// Whether the check is allowed.
    pub fn allowed(&self) -> bool {
        self.reason == Reason::Ok
    }

    /// A one-line explanation, e.g. `scope 'website' (scp_1) denies read on 'users'`.
    pub fn message(&self, module: &Module, action: Action) -> String {
        let (one, many) = match self.reason {
            Reason::Ok => ("allows", "allow"),
            Reason::DeniedByScope => ("denies", "deny"),
            Reason::NoScope => return "the key has no scope".to_owned(),
            Reason::NotGranted => return format!("no scope grants {action} on '{module}'"),
            other => return other.as_str().to_owned(),
        };
        let mut out = String::from(if self.deciding.len() == 1 { "scope " } else { "scopes " });
        for (i, scope) in self.deciding.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(out, "{sep}'{}' ({})", scope.label, scope.id);
        }
        let verb = if self.deciding.len() == 1 { one } else { many };
        let _ = write!(out, " {verb} {action} on '{module}'");
        out
    }
}

/// Decides `action` on `module` for a key holding `scopes` (steps 1 to 4 of README "How a check
/// is decided").
pub fn evaluate<'a>(scopes: &[&'a Scope], module: &Module, action: Action) -> Decision<'a> {
    if scopes.is_empty() {
        return Decision { reason: Reason::NoScope, deciding: Vec::new() };
    }
    let pick = |keep: &dyn Fn(&Scope) -> bool| {
        let mut chosen: Vec<&'a Scope> = scopes.iter().copied().filter(|s| keep(s)).collect();
        chosen.sort_by(|a, b| a.id.cmp(&b.id));
        chosen.dedup_by(|a, b| a.id == b.id);
        chosen
    };
    let denying = pick(&|s| s.denies(module, action));
    if !denying.is_empty() {
        return Decision { reason: Reason::DeniedByScope, deciding: denying };
    }
    let granting = pick(&|s| s.grants(module, action));
    if !granting.is_empty() {
        return Decision { reason: Reason::Ok, deciding: granting };
    }
    Decision { reason: Reason::NotGranted, deciding: Vec::new() }
}

/// Modules that tell apart everything the patterns of `scopes` can tell apart: any module is
/// matched by exactly the same patterns as one of these, so comparing two sets of scopes on
/// these modules compares them on every module.
pub(super) fn witnesses<'s>(scopes: impl Iterator<Item = &'s Scope>) -> Vec<Module> {
    let mut out = vec![Module::unnamed_below(None), Module::unnamed_below(Some(RESERVED_ROOT))];
    for scope in scopes {
        for action in Action::ALL {
            for pattern in scope.rules.patterns(action) {
                out.extend(pattern.witnesses());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// How a witness module (see [`witnesses`]) reads in a message: `'billing'`, or `'billing.*'` for the
/// stand-in of any module below `billing`.
pub fn describe_module(module: &Module) -> String {
    match module.as_str() {
        "~" => "any module".to_owned(),
        name => match name.strip_suffix(".~") {
            Some(parent) => format!("'{parent}.*'"),
            None => format!("'{name}'"),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::domain::{Rules, ScopeId, ScopeMode, Tenant};

    fn scope(id: &str, mode: ScopeMode, read: &[&str]) -> Scope {
        let none: &[&str] = &[];
        Scope {
            id: id.parse::<ScopeId>().expect("test id"),
            tenant: "t".parse::<Tenant>().expect("test tenant"),
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

    fn module(s: &str) -> Module {
        s.parse().expect("test module")
    }

    #[test]
    fn message_names_the_deciding_scope() {
        let web = scope("website", ScopeMode::Deny, &["users"]);
        let d = evaluate(&[&web], &module("users"), Action::Read);
        assert_eq!(d.message(&module("users"), Action::Read), "scope 'website' (website) denies read on 'users'");
        let a = scope("a", ScopeMode::Allow, &["*"]);
        let b = scope("b", ScopeMode::Allow, &["courses"]);
        let d = evaluate(&[&b, &a], &module("courses"), Action::Read);
        assert_eq!(d.message(&module("courses"), Action::Read), "scopes 'a' (a), 'b' (b) allow read on 'courses'");
    }
}
