//! The decision of the decision rules: a total function from scopes, module and action to an
//! answer with its reason and the scopes that decided. Deny is the default.

use std::fmt::{self, Write as _};

use smallvec::SmallVec;

use super::{
    action::Action,
    ids::{Module, RESERVED_ROOT, ScopeId},
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
    /// How many reasons there are: [`Reason::index`] is below it.
    pub const COUNT: usize = 15;

    /// A dense index, `0..Reason::COUNT`, for tables kept per reason.
    pub fn index(self) -> usize {
        match self {
            Reason::Ok => 0,
            Reason::MalformedCredential => 1,
            Reason::UnknownKey => 2,
            Reason::KeyRevoked => 3,
            Reason::KeyDisabled => 4,
            Reason::KeyExpired => 5,
            Reason::TenantMismatch => 6,
            Reason::NoScope => 7,
            Reason::DeniedByScope => 8,
            Reason::NotGranted => 9,
            Reason::SourceNotAllowed => 10,
            Reason::RateLimited => 11,
            Reason::OwnerDenied => 12,
            Reason::OwnerDisabled => 13,
            Reason::PrincipalDisabled => 14,
        }
    }

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

/// The scopes that decided a check: at most a few, kept inline (no heap allocation for two).
pub type Deciding<'a> = SmallVec<[&'a Scope; 2]>;

/// Whose access a check was decided on: the one the reason is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    /// The credential itself (malformed, unknown, or a key's state, tenant or networks).
    Credential,
    /// The key's own scopes.
    Key,
    /// The key's owner, a registered principal (its ceiling).
    Owner,
    /// A bearer principal (its subject's and roles' bound scopes).
    Principal,
    /// A set of scopes evaluated on their own (`EvaluateScopes`, the invariant's judge).
    Scopes,
}

/// The answer for one module and action: the reason, the scopes that decided it, and whose
/// access it was decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Why.
    pub reason: Reason,
    /// Every denying scope for [`Reason::DeniedByScope`] (or a ceiling's denial), every
    /// granting scope for [`Reason::Ok`], sorted by id; empty otherwise.
    pub deciding: Deciding<'a>,
    /// Scope ids the credential holds that exist nowhere (deleted meanwhile): they deny
    /// everything, since a missing deny-mode scope must not widen. Empty otherwise.
    pub missing: SmallVec<[&'a ScopeId; 1]>,
    /// Whose access decided.
    pub whose: Whose,
}

impl<'a> Decision<'a> {
    /// A decision with no deciding scope.
    pub fn bare(reason: Reason, whose: Whose) -> Self {
        Decision { reason, deciding: SmallVec::new(), missing: SmallVec::new(), whose }
    }

    /// Whether the check is allowed.
    pub fn allowed(&self) -> bool {
        self.reason == Reason::Ok
    }

    /// The ids of the deciding scopes (or of the missing ones that denied), sorted.
    pub fn scope_ids(&self) -> SmallVec<[ScopeId; 2]> {
        if self.missing.is_empty() {
            self.deciding.iter().map(|s| s.id.clone()).collect()
        } else {
            self.missing.iter().map(|id| (*id).clone()).collect()
        }
    }

    /// A one-line explanation of a decision by scopes alone, e.g.
    /// `scope 'website' (scp_1) denies read on 'users'`.
    pub fn message(&self, module: &Module, action: Action) -> String {
        if let Some(id) = self.missing.first() {
            return format!("scope `{id}` no longer exists; it denies everything");
        }
        let (one, many) = match self.reason {
            Reason::Ok => ("allows", "allow"),
            Reason::DeniedByScope | Reason::OwnerDenied if !self.deciding.is_empty() => ("denies", "deny"),
            Reason::NoScope => return "no scope, so everything is denied".to_owned(),
            Reason::NotGranted | Reason::OwnerDenied => return format!("no scope grants {action} on '{module}'"),
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

/// Decides `action` on `module` by `scopes` alone (steps 1 to 4 of the decision rules):
/// no scope denies everything, any denying scope denies (deny wins), else any granting scope
/// allows. One pass, no heap allocation for up to two deciding scopes.
pub fn evaluate<'a>(scopes: &[&'a Scope], module: &Module, action: Action) -> Decision<'a> {
    decide_scopes(scopes.iter().copied(), module, action, Whose::Scopes)
}

/// [`evaluate`] over any scopes, on behalf of `whose`.
pub(super) fn decide_scopes<'a>(
    scopes: impl Iterator<Item = &'a Scope>,
    module: &Module,
    action: Action,
    whose: Whose,
) -> Decision<'a> {
    let mut any = false;
    let mut denying = Deciding::new();
    let mut granting = Deciding::new();
    for scope in scopes {
        any = true;
        if scope.denies(module, action) {
            denying.push(scope);
        } else if denying.is_empty() && scope.grants(module, action) {
            granting.push(scope);
        }
    }
    let (reason, mut deciding) = if !any {
        (Reason::NoScope, Deciding::new())
    } else if !denying.is_empty() {
        (Reason::DeniedByScope, denying)
    } else if !granting.is_empty() {
        (Reason::Ok, granting)
    } else {
        (Reason::NotGranted, Deciding::new())
    };
    deciding.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    deciding.dedup_by(|a, b| a.id == b.id);
    Decision { reason, deciding, missing: SmallVec::new(), whose }
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
    use super::*;
    use crate::domain::{ScopeMode, testing::scope};

    fn module(s: &str) -> Module {
        s.parse().expect("test module")
    }

    #[test]
    fn every_reason_has_its_own_index_below_the_count() {
        use Reason::*;
        let all = [
            Ok,
            MalformedCredential,
            UnknownKey,
            KeyRevoked,
            KeyDisabled,
            KeyExpired,
            TenantMismatch,
            NoScope,
            DeniedByScope,
            NotGranted,
            SourceNotAllowed,
            RateLimited,
            OwnerDenied,
            OwnerDisabled,
            PrincipalDisabled,
        ];
        let mut seen = [false; Reason::COUNT];
        for reason in all {
            assert!(!std::mem::replace(&mut seen[reason.index()], true), "{reason} shares its index");
        }
        assert!(seen.iter().all(|s| *s), "Reason::COUNT is larger than the reasons");
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
