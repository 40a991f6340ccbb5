//! A check as one decision: a total, synchronous function from everything a check is decided
//! on to a [`Decision`]. Key checks, admin authorization, bearer principals and
//! `EvaluateScopes` all go through here; the service only finds the inputs (the credential
//! and its records), applies the rate limit and counts usage.
//!
//! The order is the decision rules': for a key, its state (revoked, disabled, expired), the
//! tenant asked for, its scopes (deny wins), its owner's ceiling (a registered principal's
//! bound scopes), then its source networks. The first that refuses decides. Denial messages
//! are written here, and only when asked for ([`KeyCheck::explain`],
//! [`PrincipalCheck::explain`], [`refusal_message`]).

use std::{net::IpAddr, time::Duration, time::SystemTime};

use smallvec::SmallVec;

use super::{
    action::Action,
    decision::{Decision, Reason, Whose, decide_scopes},
    ids::{Module, ScopeId, Tenant, shown},
    key::{Key, key_status},
    network::source_allowed,
    principal::Subject,
    scope::Scope,
};

/// Finds the scopes a credential names by id: the builtins, then its tenant's stored scopes.
pub trait ScopeLookup {
    /// The scope with this id, or `None` when it exists nowhere.
    fn scope(&self, id: &ScopeId) -> Option<&Scope>;
}

impl ScopeLookup for Vec<&Scope> {
    fn scope(&self, id: &ScopeId) -> Option<&Scope> {
        self.iter().find(|s| s.id == *id).copied()
    }
}

/// Scopes a credential holds, by id. An id that resolves nowhere denies everything (fail
/// closed: a deleted deny-mode scope must not widen).
#[derive(Clone, Copy)]
pub struct Held<'a> {
    /// The ids held.
    pub ids: &'a [ScopeId],
    /// Where they are found.
    pub lookup: &'a dyn ScopeLookup,
}

impl<'a> Held<'a> {
    /// Decides `action` on `module` by these scopes, on behalf of `whose`.
    fn decide(self, module: &Module, action: Action, whose: Whose) -> Decision<'a> {
        let lookup = self.lookup;
        let missing: SmallVec<[&'a ScopeId; 1]> = self.ids.iter().filter(|id| lookup.scope(id).is_none()).collect();
        if !missing.is_empty() {
            return Decision { missing, ..Decision::bare(Reason::DeniedByScope, whose) };
        }
        decide_scopes(self.ids.iter().filter_map(|id| lookup.scope(id)), module, action, whose)
    }
}

/// What a key's owner allows.
#[derive(Clone, Copy)]
pub enum OwnerBound<'a> {
    /// No owner, or one that is not a registered principal of the key's tenant: the key's
    /// scopes alone decide.
    Unbounded,
    /// The owner was registered and deleted: the key is denied everything until a principal
    /// of that subject is registered again.
    Gone,
    /// The owner is registered and disabled: the key is denied everything.
    Disabled,
    /// The owner is registered: the scopes bound to it or its roles bound the key.
    Bound(Held<'a>),
}

/// Everything a key's check is decided on.
#[derive(Clone, Copy)]
pub struct KeyCheck<'a> {
    /// The key, its secret verified.
    pub key: &'a Key,
    /// Its scopes.
    pub scopes: Held<'a>,
    /// Its owner's ceiling.
    pub owner: OwnerBound<'a>,
    /// The time of the check.
    pub now: SystemTime,
    /// The tenant the request named, if any.
    pub tenant: Option<&'a Tenant>,
    /// Where the request came from, if known.
    pub source: Option<IpAddr>,
}

impl<'a> KeyCheck<'a> {
    /// Decides `action` on `module` for this key: state, tenant, scopes, owner, networks.
    pub fn decide(&self, module: &Module, action: Action) -> Decision<'a> {
        if let Some(reason) = key_status(self.key, self.now, self.tenant) {
            return Decision::bare(reason, Whose::Credential);
        }
        let by_key = self.scopes.decide(module, action, Whose::Key);
        if !by_key.allowed() {
            return by_key;
        }
        match self.owner {
            OwnerBound::Unbounded => {}
            OwnerBound::Gone => return Decision::bare(Reason::OwnerDenied, Whose::Owner),
            OwnerBound::Disabled => return Decision::bare(Reason::OwnerDisabled, Whose::Owner),
            OwnerBound::Bound(held) => {
                let by_owner = held.decide(module, action, Whose::Owner);
                if !by_owner.allowed() {
                    // Whatever the owner's scopes say, the key is refused because of its owner.
                    return Decision { reason: Reason::OwnerDenied, ..by_owner };
                }
            }
        }
        if !source_allowed(&self.key.allowed_cidrs, self.source) {
            return Decision::bare(Reason::SourceNotAllowed, Whose::Credential);
        }
        by_key
    }

    /// One human line on `decision` (made by [`KeyCheck::decide`] for `module` and `action`).
    pub fn explain(&self, decision: &Decision<'_>, module: &Module, action: Action) -> String {
        let owner = shown(&self.key.owner);
        match (decision.whose, decision.reason) {
            (Whose::Credential, Reason::SourceNotAllowed) => match self.source {
                Some(source) => format!("the key may not be used from {source}"),
                None => "the key allows only some source addresses and the check gave none".to_owned(),
            },
            (Whose::Credential, reason) => refusal_message(reason),
            (Whose::Owner, Reason::OwnerDisabled) => format!("the key's owner `{owner}` is disabled"),
            (Whose::Owner, _) if matches!(self.owner, OwnerBound::Gone) => {
                format!("the key's owner `{owner}` was deleted; the key is denied everything")
            }
            (Whose::Owner, _) => match decision.missing.first() {
                Some(id) => {
                    format!("scope `{id}` bound to the key's owner `{owner}` no longer exists; the key is denied")
                }
                None if decision.reason == Reason::OwnerDenied
                    && matches!(self.owner, OwnerBound::Bound(held) if held.ids.is_empty()) =>
                {
                    format!(
                        "the key's owner `{owner}` is not allowed {action} on '{module}': no scope is bound to it or its roles"
                    )
                }
                None => format!(
                    "the key's owner `{owner}` is not allowed {action} on '{module}': {}",
                    decision.message(module, action)
                ),
            },
            (_, Reason::NoScope) => "the key has no scope".to_owned(),
            _ => match decision.missing.first() {
                Some(id) => format!("scope `{id}` of the key no longer exists; the key is denied everything"),
                None => decision.message(module, action),
            },
        }
    }
}

/// A registered principal's state, as a bearer check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalState {
    /// No principal of that subject is registered: the credential's own bindings decide.
    Unregistered,
    /// Registered, enabled or not.
    Registered {
        /// Whether it may be used.
        enabled: bool,
    },
    /// Registered and deleted: denied everything until registered again.
    Gone,
}

/// Everything a bearer principal's check is decided on.
#[derive(Clone, Copy)]
pub struct PrincipalCheck<'a> {
    /// The subject presented.
    pub subject: &'a Subject,
    /// Its registered principal, if any.
    pub state: PrincipalState,
    /// The scopes bound to the subject, to the roles presented and to the registered
    /// principal's roles.
    pub scopes: Held<'a>,
}

impl<'a> PrincipalCheck<'a> {
    /// Decides `action` on `module` for this principal.
    pub fn decide(&self, module: &Module, action: Action) -> Decision<'a> {
        match self.state {
            PrincipalState::Gone | PrincipalState::Registered { enabled: false } => {
                Decision::bare(Reason::PrincipalDisabled, Whose::Principal)
            }
            PrincipalState::Unregistered | PrincipalState::Registered { enabled: true } => {
                self.scopes.decide(module, action, Whose::Principal)
            }
        }
    }

    /// One human line on `decision` (made by [`PrincipalCheck::decide`]).
    pub fn explain(&self, decision: &Decision<'_>, module: &Module, action: Action) -> String {
        let named = self.subject.shown();
        match decision.reason {
            Reason::PrincipalDisabled if self.state == PrincipalState::Gone => {
                format!("principal `{named}` was deleted")
            }
            Reason::PrincipalDisabled => format!("principal `{named}` is disabled"),
            Reason::NoScope => format!("no scope is bound to principal `{named}` or its roles"),
            _ => match decision.missing.first() {
                Some(id) => {
                    format!("scope `{id}` bound to principal `{named}` no longer exists; it is denied everything")
                }
                None => decision.message(module, action),
            },
        }
    }
}

/// The message of a credential refused before any scope is read.
pub fn refusal_message(reason: Reason) -> String {
    match reason {
        Reason::MalformedCredential => "the credential is not a well-formed keyscope token",
        Reason::UnknownKey => "unknown key or wrong secret",
        Reason::KeyRevoked => "the key is revoked",
        Reason::KeyDisabled => "the key is disabled",
        Reason::KeyExpired => "the key has expired",
        Reason::TenantMismatch => "the key belongs to another tenant",
        other => other.as_str(),
    }
    .to_owned()
}

/// The message of a check refused by the key's rate limit, to retry after `wait`.
pub fn rate_limited_message(wait: Duration) -> String {
    format!("the key's rate limit is reached; retry after {} ms", wait.as_millis().max(1))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::domain::{
        KeyState, ScopeMode, parse_cidrs,
        testing::{key, scope},
    };

    fn module(s: &str) -> Module {
        s.parse().expect("test module")
    }

    fn ids(decision: &Decision<'_>) -> Vec<String> {
        decision.scope_ids().iter().map(ToString::to_string).collect()
    }

    /// The scopes every test may name: `courses` and `all` allow, `no-users` denies.
    fn world() -> Vec<Scope> {
        vec![
            scope("courses", ScopeMode::Allow, &["courses"]),
            scope("all", ScopeMode::Allow, &["*"]),
            scope("no-users", ScopeMode::Deny, &["users"]),
        ]
    }

    fn check<'a>(key: &'a Key, lookup: &'a dyn ScopeLookup, owner: OwnerBound<'a>) -> KeyCheck<'a> {
        KeyCheck {
            key,
            scopes: Held { ids: &key.scope_ids, lookup },
            owner,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
            tenant: None,
            source: None,
        }
    }

    #[test]
    fn the_key_state_is_decided_first() {
        let world = world();
        let refs: Vec<&Scope> = world.iter().collect();
        let mut revoked = key(&["all"], "");
        revoked.state = KeyState::Revoked;
        let decision = check(&revoked, &refs, OwnerBound::Unbounded).decide(&module("courses"), Action::Read);
        assert_eq!((decision.reason, decision.whose), (Reason::KeyRevoked, Whose::Credential));
        let mut expired = key(&["all"], "");
        expired.expires_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(999));
        let decision = check(&expired, &refs, OwnerBound::Gone).decide(&module("courses"), Action::Read);
        assert_eq!(decision.reason, Reason::KeyExpired, "the state comes before the owner");
        let plain = key(&["all"], "");
        let other: Tenant = "u".parse().expect("tenant");
        let decision = KeyCheck { tenant: Some(&other), ..check(&plain, &refs, OwnerBound::Unbounded) }
            .decide(&module("courses"), Action::Read);
        assert_eq!(decision.reason, Reason::TenantMismatch);
    }

    #[test]
    fn the_owner_ceiling_only_takes_away() {
        let world = world();
        let refs: Vec<&Scope> = world.iter().collect();
        let owned = key(&["all"], "alice");
        let courses = module("courses");
        let owner_ids: Vec<ScopeId> = vec!["courses".parse().expect("id")];
        let bound = OwnerBound::Bound(Held { ids: &owner_ids, lookup: &refs });
        let allowed = check(&owned, &refs, bound).decide(&courses, Action::Read);
        assert_eq!((allowed.reason, ids(&allowed)), (Reason::Ok, vec!["all".to_owned()]), "the key's scopes decide");
        let denied = check(&owned, &refs, bound).decide(&module("bookings"), Action::Read);
        assert_eq!((denied.reason, denied.whose), (Reason::OwnerDenied, Whose::Owner));
        let message = check(&owned, &refs, bound).explain(&denied, &module("bookings"), Action::Read);
        assert!(message.contains("owner `alice` is not allowed read on 'bookings'"), "{message}");
        // The owner never widens: what the key's scopes deny stays denied, by the key.
        let narrow = key(&["courses"], "alice");
        let wide_ids: Vec<ScopeId> = vec!["all".parse().expect("id")];
        let wide = OwnerBound::Bound(Held { ids: &wide_ids, lookup: &refs });
        let decision = check(&narrow, &refs, wide).decide(&module("bookings"), Action::Read);
        assert_eq!((decision.reason, decision.whose), (Reason::NotGranted, Whose::Key));
        for (owner, reason) in [(OwnerBound::Gone, Reason::OwnerDenied), (OwnerBound::Disabled, Reason::OwnerDisabled)]
        {
            let decision = check(&owned, &refs, owner).decide(&courses, Action::Read);
            assert_eq!((decision.reason, ids(&decision)), (reason, Vec::<String>::new()));
        }
        let empty = OwnerBound::Bound(Held { ids: &[], lookup: &refs });
        let decision = check(&owned, &refs, empty).decide(&courses, Action::Read);
        assert_eq!(decision.reason, Reason::OwnerDenied, "an owner with nothing bound allows nothing");
        let message = check(&owned, &refs, empty).explain(&decision, &courses, Action::Read);
        assert!(message.contains("no scope is bound"), "{message}");
        let dangling_ids: Vec<ScopeId> = vec!["courses".parse().expect("id"), "scp_gone".parse().expect("id")];
        let dangling = OwnerBound::Bound(Held { ids: &dangling_ids, lookup: &refs });
        let decision = check(&owned, &refs, dangling).decide(&courses, Action::Read);
        assert_eq!((decision.reason, ids(&decision)), (Reason::OwnerDenied, vec!["scp_gone".to_owned()]));
    }

    #[test]
    fn a_missing_scope_of_the_key_denies_everything() {
        let world = world();
        let refs: Vec<&Scope> = world.iter().collect();
        let dangling = key(&["all", "scp_gone"], "");
        let decision = check(&dangling, &refs, OwnerBound::Unbounded).decide(&module("courses"), Action::Read);
        assert_eq!((decision.reason, ids(&decision)), (Reason::DeniedByScope, vec!["scp_gone".to_owned()]));
        let message =
            check(&dangling, &refs, OwnerBound::Unbounded).explain(&decision, &module("courses"), Action::Read);
        assert!(message.contains("`scp_gone` of the key no longer exists"), "{message}");
    }

    #[test]
    fn source_networks_come_after_the_scopes_and_the_owner() {
        let world = world();
        let refs: Vec<&Scope> = world.iter().collect();
        let mut fenced = key(&["courses"], "");
        fenced.allowed_cidrs = parse_cidrs("allowed_cidrs", &["10.0.0.0/8".to_owned()]).expect("cidrs");
        let inside: IpAddr = "10.1.2.3".parse().expect("ip");
        let outside: IpAddr = "192.0.2.1".parse().expect("ip");
        let base = check(&fenced, &refs, OwnerBound::Unbounded);
        let at = |source| KeyCheck { source, ..base };
        assert_eq!(at(Some(inside)).decide(&module("courses"), Action::Read).reason, Reason::Ok);
        let outside_decision = at(Some(outside)).decide(&module("courses"), Action::Read);
        assert_eq!(outside_decision.reason, Reason::SourceNotAllowed);
        let message = at(Some(outside)).explain(&outside_decision, &module("courses"), Action::Read);
        assert_eq!(message, "the key may not be used from 192.0.2.1");
        assert_eq!(at(None).decide(&module("courses"), Action::Read).reason, Reason::SourceNotAllowed);
        let by_scope = at(Some(outside)).decide(&module("bookings"), Action::Read);
        assert_eq!(by_scope.reason, Reason::NotGranted, "a denial by scope is told first");
        let owner_gone = KeyCheck { owner: OwnerBound::Gone, ..at(Some(outside)) };
        assert_eq!(owner_gone.decide(&module("courses"), Action::Read).reason, Reason::OwnerDenied);
    }

    #[test]
    fn a_bearer_principal_is_decided_by_its_bound_scopes_unless_disabled_or_deleted() {
        let world = world();
        let refs: Vec<&Scope> = world.iter().collect();
        let subject: Subject = "alice".parse().expect("subject");
        let bound: Vec<ScopeId> = vec!["all".parse().expect("id"), "no-users".parse().expect("id")];
        let principal =
            |state| PrincipalCheck { subject: &subject, state, scopes: Held { ids: &bound, lookup: &refs } };
        let enabled = principal(PrincipalState::Registered { enabled: true });
        assert_eq!(enabled.decide(&module("courses"), Action::Read).reason, Reason::Ok);
        let users = enabled.decide(&module("users"), Action::Read);
        assert_eq!((users.reason, ids(&users)), (Reason::DeniedByScope, vec!["no-users".to_owned()]));
        assert_eq!(principal(PrincipalState::Unregistered).decide(&module("courses"), Action::Read).reason, Reason::Ok);
        for state in [PrincipalState::Registered { enabled: false }, PrincipalState::Gone] {
            let decision = principal(state).decide(&module("courses"), Action::Read);
            assert_eq!((decision.reason, decision.whose), (Reason::PrincipalDisabled, Whose::Principal));
        }
        let gone = principal(PrincipalState::Gone);
        let message = gone.explain(&gone.decide(&module("courses"), Action::Read), &module("courses"), Action::Read);
        assert_eq!(message, "principal `alice` was deleted");
        let nothing = PrincipalCheck { scopes: Held { ids: &[], lookup: &refs }, ..enabled };
        let decision = nothing.decide(&module("courses"), Action::Read);
        assert_eq!(decision.reason, Reason::NoScope);
        assert!(
            nothing.explain(&decision, &module("courses"), Action::Read).contains("no scope is bound to principal")
        );
    }
}
