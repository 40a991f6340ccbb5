//! The decision of SPEC section 2: a total function from scopes, module and action to an
//! answer with its reason and the scopes that decided. Deny is the default.

use std::fmt::{self, Write as _};

use super::{
    action::Action,
    ids::{Module, RESERVED_ROOT},
    scope::{Scope, ScopeMode},
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

/// Decides `action` on `module` for a key holding `scopes` (SPEC section 2, steps 1 to 4).
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

fn allowed(scopes: &[&Scope], module: &Module, action: Action) -> bool {
    evaluate(scopes, module, action).allowed()
}

/// Modules that tell apart everything the patterns of `scopes` can tell apart: any module is
/// matched by exactly the same patterns as one of these, so comparing two sets of scopes on
/// these modules compares them on every module.
fn witnesses<'s>(scopes: impl Iterator<Item = &'s Scope>) -> Vec<Module> {
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

/// The first action and module that `after` allows and `before` does not, among those `keep`
/// admits: whether replacing a key's scopes `before` with `after` widens its access there. A
/// module in the answer may be an unnamed stand-in for "any module below X"; show it with
/// [`describe_module`].
pub fn widens(before: &[&Scope], after: &[&Scope], keep: impl Fn(Action, &Module) -> bool) -> Option<(Action, Module)> {
    let modules = witnesses(before.iter().chain(after).copied());
    for action in Action::ALL {
        for module in modules.iter().filter(|m| keep(action, m)) {
            if allowed(after, module, action) && !allowed(before, module, action) {
                return Some((action, module.clone()));
            }
        }
    }
    None
}

/// The first administrative grant (on a reserved module) that `granted` gives and `holder`
/// lacks: an admin may hand out only the administrative grants it holds.
pub fn grants_reserved(granted: &[&Scope], holder: &[&Scope]) -> Option<(Action, Module)> {
    let any_reserved = granted.iter().any(|s| {
        s.mode == ScopeMode::Allow && Action::ALL.iter().any(|&a| s.rules.patterns(a).iter().any(|p| p.is_reserved()))
    });
    if !any_reserved {
        return None;
    }
    widens(holder, granted, |_, m| m.is_reserved())
}

/// The first administrative grant that changing a scope from `old` to `new` hands out and
/// `holder` lacks: what `new` grants on reserved modules, and every reserved module `old`
/// denied and `new` no longer does (which widens any key holding the scope beside a grant).
pub fn change_grants_reserved(old: Option<&Scope>, new: &Scope, holder: &[&Scope]) -> Option<(Action, Module)> {
    if let Some(found) = grants_reserved(&[new], holder) {
        return Some(found);
    }
    let old = old.filter(|o| o.mode == ScopeMode::Deny)?;
    let modules = witnesses(holder.iter().copied().chain([old, new]));
    for action in Action::ALL {
        for module in modules.iter().filter(|m| m.is_reserved()) {
            if old.denies(module, action) && !new.denies(module, action) && !allowed(holder, module, action) {
                return Some((action, module.clone()));
            }
        }
    }
    None
}

/// How a module from [`widens`] reads in a message: `'billing'`, or `'billing.*'` for the
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
    use crate::domain::{Rules, ScopeId, Tenant};

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

    #[test]
    fn removing_a_deny_scope_beside_a_broad_allow_widens() {
        let all = scope("all", ScopeMode::Allow, &["*"]);
        let no_billing = scope("no-billing", ScopeMode::Deny, &["billing.*"]);
        let widened = widens(&[&all, &no_billing], &[&all], |_, _| true);
        assert_eq!(widened.map(|(a, m)| (a, describe_module(&m))), Some((Action::Read, "'billing.*'".to_owned())));
    }

    #[test]
    fn removing_an_allow_scope_never_widens() {
        let all = scope("all", ScopeMode::Allow, &["*"]);
        let some = scope("some", ScopeMode::Allow, &["courses"]);
        let deny = scope("deny", ScopeMode::Deny, &["users"]);
        assert_eq!(widens(&[&all, &some, &deny], &[&all, &deny], |_, _| true), None);
        assert_eq!(widens(&[&deny], &[], |_, _| true), None);
    }

    #[test]
    fn removing_a_deny_scope_that_nothing_else_overrides_does_not_widen() {
        let courses = scope("courses", ScopeMode::Allow, &["courses"]);
        let no_users = scope("no-users", ScopeMode::Deny, &["users"]);
        assert_eq!(widens(&[&courses, &no_users], &[&courses], |_, _| true), None);
    }

    #[test]
    fn a_reserved_grant_needs_a_holder_that_has_it() {
        let admin_keys = scope("ak", ScopeMode::Allow, &["keyscope.keys"]);
        let admin_all = scope("aa", ScopeMode::Allow, &["keyscope.*"]);
        let deny_keys = scope("dk", ScopeMode::Deny, &["keyscope.keys"]);
        assert_eq!(grants_reserved(&[&admin_keys], &[&admin_all]), None);
        assert!(grants_reserved(&[&admin_all], &[&admin_keys]).is_some());
        // Holding keyscope.* minus keyscope.keys is not enough to hand out keyscope.*.
        let got = grants_reserved(&[&admin_all], &[&admin_all, &deny_keys]);
        assert_eq!(got.map(|(a, m)| (a, m.as_str().to_owned())), Some((Action::Read, "keyscope.keys".to_owned())));
        // Ordinary grants are never escalation.
        let all = scope("all", ScopeMode::Allow, &["*"]);
        assert_eq!(grants_reserved(&[&all], &[]), None);
    }

    #[test]
    fn lifting_a_reserved_denial_hands_out_that_grant() {
        let admin = scope("admin", ScopeMode::Allow, &["keyscope.*"]);
        let no_keys = scope("nk", ScopeMode::Deny, &["keyscope.keys"]);
        let lifted = scope("nk", ScopeMode::Deny, &[]);
        // The caller holds admin but is itself denied keyscope.keys: it may not lift that denial.
        let got = change_grants_reserved(Some(&no_keys), &lifted, &[&admin, &no_keys]);
        assert_eq!(got.map(|(a, m)| (a, m.as_str().to_owned())), Some((Action::Read, "keyscope.keys".to_owned())));
        let to_allow = scope("nk", ScopeMode::Allow, &[]);
        assert!(change_grants_reserved(Some(&no_keys), &to_allow, &[&admin, &no_keys]).is_some());
        // A caller that holds the grant may lift it; ordinary denials are anyone's to lift.
        assert_eq!(change_grants_reserved(Some(&no_keys), &lifted, &[&admin]), None);
        let no_users = scope("nu", ScopeMode::Deny, &["users"]);
        assert_eq!(change_grants_reserved(Some(&no_users), &lifted, &[]), None);
    }

    #[test]
    fn holding_each_named_reserved_module_is_not_holding_the_whole_prefix() {
        let three = scope("three", ScopeMode::Allow, &["keyscope.keys", "keyscope.scopes", "keyscope.audit"]);
        let prefix = scope("prefix", ScopeMode::Allow, &["keyscope.*"]);
        let got = grants_reserved(&[&prefix], &[&three]).map(|(_, m)| describe_module(&m));
        assert_eq!(got, Some("'keyscope.*'".to_owned()));
    }
}
