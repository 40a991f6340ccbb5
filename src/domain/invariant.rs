//! keyscope's two promises about admin changes, stated once and measured in one place.
//!
//! - **No escalation**: after a change, no credential holds a grant on a reserved module
//!   (`keyscope.*`) that it did not hold before, unless the calling admin holds that grant
//!   itself (its key's scopes, within its owner's ceiling).
//! - **No widening by removal**: a delete (a scope, with the bindings a forced delete takes
//!   along, or a principal) never widens any credential's access to any module.
//!
//! An admin change is a [`Mutation`] of an [`AccessGraph`]: the facts of one tenant that decide
//! what its credentials may do (scopes, member bindings, registered principals, keys). The
//! service loads the part of the graph a change can affect, applies the mutation to a copy and
//! asks [`judge`] whether any credential gains what the [`Rule`] forbids. Adding a role,
//! enabling a principal, registering a deleted subject again, unbinding a deny scope and
//! updating a scope are all just mutations whose effect is measured; no RPC has a rule of its
//! own.
//!
//! The credentials measured are:
//! - every key in the graph: its own scopes, bounded by its owner when the owner is a
//!   registered principal (a deleted or disabled owner, a dead key or a missing scope: nothing);
//! - every bearer principal: a subject (any subject, registered or not) presenting any set of
//!   roles. The set of role sets is infinite, but whether some role set gains a grant is
//!   decided exactly from per-role facts (see [`bearer_gain`]), so no combination is missed;
//! - a changed scope on its own (so a scope is never made to grant a reserved module its
//!   author does not hold, whoever holds it later);
//! - a key whose token the change hands to the caller (created, rotated, any key update),
//!   judged as if it held nothing before and as if it held all its own scopes allow, whatever
//!   its state or its owner's ceiling now: both may be lifted later, and the token stays.
//!
//! Modules are compared on witnesses ([`super::decision::witnesses`]): one module for every
//! class of modules the patterns involved cannot tell apart, so the comparison is exact.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    sync::Arc,
};

use super::{
    Action, KeyId, Members, Module, Role, Scope, ScopeId, Subject, decision::witnesses, describe_module,
    shorten_for_message,
};

/// What the graph knows of a key: enough to decide what it may do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyFacts {
    /// The scope ids it holds.
    pub scope_ids: Vec<ScopeId>,
    /// Its owner (free text; a registered principal when it names one).
    pub owner: String,
    /// Active and not expired: a key that is not live is denied everything.
    pub live: bool,
}

/// What a tenant knows of a subject as a principal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Registration {
    /// Registered with these roles.
    Registered {
        /// Its roles.
        roles: Vec<Role>,
        /// A disabled principal and its keys are denied everything.
        enabled: bool,
    },
    /// Registered once and deleted: its keys are denied everything.
    Gone,
}

/// The facts of one tenant that decide what its credentials may do. Keys are those the change
/// can affect; scopes, bindings and principals are the tenant's (a subject absent from
/// `principals` was never registered).
#[derive(Debug, Clone, Default)]
pub struct AccessGraph {
    /// Scopes by id, builtins included. A bound or held id that is absent denies everything.
    pub scopes: BTreeMap<ScopeId, Arc<Scope>>,
    /// Member bindings by scope id (scopes bound to nobody may be absent).
    pub members: BTreeMap<ScopeId, Members>,
    /// Registered (or deleted) principals by subject.
    pub principals: BTreeMap<Subject, Registration>,
    /// Keys by id.
    pub keys: BTreeMap<KeyId, KeyFacts>,
    /// Keys whose token this change hands to the caller: judged as if they held nothing before.
    pub issued: BTreeSet<KeyId>,
}

/// One admin change, as it changes the graph.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// A key is created or changed; `issued`: its token goes to the caller (create, rotate).
    PutKey {
        /// The key.
        id: KeyId,
        /// Its facts after the change.
        facts: KeyFacts,
        /// Whether the caller receives its token (or may use it as before: any key update).
        issued: bool,
    },
    /// A scope is created or changed.
    PutScope(Arc<Scope>),
    /// A scope is deleted: it leaves every key holding it, and its bindings go with it.
    DeleteScope(ScopeId),
    /// A scope's member bindings are replaced.
    SetMembers(ScopeId, Members),
    /// A principal is registered or changed.
    PutPrincipal(Subject, Registration),
    /// A principal is deleted (a marker remains: its keys are denied everything).
    DeletePrincipal(Subject),
}

impl Mutation {
    /// The graph after the change.
    pub fn apply(&self, graph: &mut AccessGraph) {
        match self {
            Mutation::PutKey { id, facts, issued } => {
                graph.keys.insert(id.clone(), facts.clone());
                if *issued {
                    graph.issued.insert(id.clone());
                }
            }
            Mutation::PutScope(scope) => {
                graph.scopes.insert(scope.id.clone(), scope.clone());
            }
            Mutation::DeleteScope(id) => {
                graph.scopes.remove(id);
                graph.members.remove(id);
                for key in graph.keys.values_mut() {
                    key.scope_ids.retain(|s| s != id);
                }
            }
            Mutation::SetMembers(id, members) => {
                graph.members.insert(id.clone(), members.clone().normalized());
            }
            Mutation::PutPrincipal(subject, registration) => {
                graph.principals.insert(subject.clone(), registration.clone());
            }
            Mutation::DeletePrincipal(subject) => {
                graph.principals.insert(subject.clone(), Registration::Gone);
            }
        }
    }

    /// The principal the change registers, changes or deletes, if any.
    pub fn subject(&self) -> Option<&Subject> {
        match self {
            Mutation::PutPrincipal(subject, _) | Mutation::DeletePrincipal(subject) => Some(subject),
            _ => None,
        }
    }

    /// The scope whose holders the change affects directly, if any.
    pub fn scope(&self) -> Option<&ScopeId> {
        match self {
            Mutation::PutScope(scope) => Some(&scope.id),
            Mutation::DeleteScope(id) | Mutation::SetMembers(id, _) => Some(id),
            _ => None,
        }
    }
}

/// Which promise a change is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Edits (create, update, bind, register, enable): no credential gains a reserved grant
    /// the caller lacks.
    NoEscalation,
    /// Deletes: no credential gains anything at all.
    NoWidening,
}

/// A credential a change would widen, as a message names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A key.
    Key(KeyId),
    /// A scope judged on its own.
    Scope(ScopeId),
    /// A bearer principal: a subject (`None`: any subject not otherwise named) presenting roles.
    Bearer(Option<Subject>, Vec<Role>),
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Key(id) => write!(f, "key `{id}`"),
            Credential::Scope(id) => write!(f, "scope `{id}`"),
            Credential::Bearer(subject, roles) => {
                match subject {
                    Some(s) => write!(f, "principal `{}`", shorten_for_message(s.as_str()))?,
                    None => f.write_str("any bearer principal")?,
                }
                if !roles.is_empty() {
                    let mut list = String::new();
                    for (i, r) in roles.iter().enumerate() {
                        let _ = write!(list, "{}{r}", if i == 0 { "" } else { ", " });
                    }
                    write!(f, " presenting roles [{list}]")?;
                }
                Ok(())
            }
        }
    }
}

/// A credential that would gain what the rule forbids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule broken.
    pub rule: Rule,
    /// Who would gain.
    pub credential: Credential,
    /// The action gained.
    pub action: Action,
    /// The module gained (possibly a stand-in for "any module below X": see
    /// [`describe_module`]).
    pub module: Module,
}

impl Violation {
    /// One line saying who would gain what.
    pub fn message(&self) -> String {
        let grant = format!("{} on {}", self.action, describe_module(&self.module));
        match self.rule {
            Rule::NoEscalation => {
                format!("the change would give {} {grant}, which the calling key does not hold", self.credential)
            }
            Rule::NoWidening => format!(
                "the change would widen the access of {} (it would gain {grant}); a removal never widens access",
                self.credential
            ),
        }
    }
}

/// What a credential holds: nothing, or what every layer of scopes allows (a key's own
/// scopes, then its owner's ceiling).
#[derive(Debug, Clone)]
pub enum Holding<'a> {
    /// Denied everything.
    Nothing,
    /// Allowed what each layer allows, by the ordinary decision.
    Layers(Vec<Vec<&'a Scope>>),
}

impl Holding<'_> {
    /// Whether the credential may do `action` on `module`.
    pub fn allows(&self, module: &Module, action: Action) -> bool {
        match self {
            Holding::Nothing => false,
            Holding::Layers(layers) => layers.iter().all(|layer| super::evaluate(layer, module, action).allowed()),
        }
    }

    fn scopes(&self) -> impl Iterator<Item = &Scope> {
        let layers: &[Vec<&Scope>] = match self {
            Holding::Nothing => &[],
            Holding::Layers(layers) => layers,
        };
        layers.iter().flatten().copied()
    }
}

/// What a subject puts on the keys it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerCeiling<'g> {
    /// Not a registered principal: its keys are bounded by their scopes only.
    Unbounded,
    /// Deleted, disabled, or bound to a scope that no longer exists: its keys hold nothing.
    DeniesAll,
    /// Registered: its keys hold only what the scopes bound to it and its roles allow.
    Bound(Vec<&'g Scope>),
}

/// A subject's or role's scopes in one graph: `None` when one of them is missing (which
/// denies everything).
type Bound<'g> = Option<Vec<&'g Scope>>;

impl AccessGraph {
    fn resolve<'g, 'i>(&'g self, ids: impl IntoIterator<Item = &'i ScopeId>) -> Bound<'g> {
        ids.into_iter().map(|id| self.scopes.get(id).map(Arc::as_ref)).collect()
    }

    /// Scope ids bound to the subject, or to any of the roles.
    fn bound_ids(&self, subject: Option<&Subject>, roles: &[Role]) -> BTreeSet<&ScopeId> {
        self.members
            .iter()
            .filter(|(_, m)| {
                subject.is_some_and(|s| m.subjects.binary_search(s).is_ok())
                    || roles.iter().any(|r| m.roles.binary_search(r).is_ok())
            })
            .map(|(id, _)| id)
            .collect()
    }

    /// The ceiling a subject puts on the keys it owns.
    pub fn ceiling(&self, subject: &Subject) -> OwnerCeiling<'_> {
        match self.principals.get(subject) {
            None => OwnerCeiling::Unbounded,
            Some(Registration::Gone | Registration::Registered { enabled: false, .. }) => OwnerCeiling::DeniesAll,
            Some(Registration::Registered { roles, .. }) => match self.resolve(self.bound_ids(Some(subject), roles)) {
                Some(scopes) => OwnerCeiling::Bound(scopes),
                None => OwnerCeiling::DeniesAll,
            },
        }
    }

    /// What a key of this graph holds (nothing if absent).
    pub fn key_holding(&self, id: &KeyId) -> Holding<'_> {
        let Some(key) = self.keys.get(id) else { return Holding::Nothing };
        self.facts_holding(key)
    }

    /// What a key of this graph could hold if it were live and its owner allowed everything:
    /// its own scopes (nothing if one is missing).
    fn potential_holding(&self, id: &KeyId) -> Holding<'_> {
        let own = self.keys.get(id).and_then(|key| self.resolve(&key.scope_ids));
        own.map_or(Holding::Nothing, |own| Holding::Layers(vec![own]))
    }

    /// What a key with these facts holds in this graph (its scopes, its owner: the graph must
    /// know whether the owner is a deleted principal).
    pub fn facts_holding<'g>(&'g self, key: &KeyFacts) -> Holding<'g> {
        if !key.live {
            return Holding::Nothing;
        }
        let Some(own) = self.resolve(&key.scope_ids) else { return Holding::Nothing };
        // An owner that is not a valid subject can never be registered: no ceiling.
        let ceiling = match key.owner.parse::<Subject>().map(|owner| self.ceiling(&owner)) {
            Err(_) | Ok(OwnerCeiling::Unbounded) => None,
            Ok(OwnerCeiling::DeniesAll) => return Holding::Nothing,
            Ok(OwnerCeiling::Bound(scopes)) => Some(scopes),
        };
        Holding::Layers(std::iter::once(own).chain(ceiling).collect())
    }

    /// Every role bound to some scope.
    fn bound_roles(&self) -> BTreeSet<&Role> {
        self.members.values().flat_map(|m| m.roles.iter()).collect()
    }

    /// Every subject the graph names (registered, deleted or bound).
    fn named_subjects(&self) -> BTreeSet<&Subject> {
        self.principals.keys().chain(self.members.values().flat_map(|m| m.subjects.iter())).collect()
    }

    /// A bearer subject's base (`None`: any subject the graph does not name): `Err(())` when
    /// it is denied everything whatever it presents (disabled, or a bound scope is missing).
    fn bearer_base(&self, subject: Option<&Subject>) -> Result<Vec<&Scope>, ()> {
        let Some(subject) = subject else { return Ok(Vec::new()) };
        let roles: &[Role] = match self.principals.get(subject) {
            Some(Registration::Registered { enabled: false, .. } | Registration::Gone) => return Err(()),
            Some(Registration::Registered { roles, .. }) => roles,
            None => &[],
        };
        self.resolve(self.bound_ids(Some(subject), roles)).ok_or(())
    }
}

/// What the roles bound in a tenant say about one module and action, before and after a
/// change, summed up once for every subject: among the roles that do not deny after (the only
/// ones a gaining bearer may present), one that grants after, one that denies before (and
/// whether it grants after), and one that grants after and not before.
#[derive(Debug, Clone, Copy, Default)]
struct RoleFacts<'r> {
    granter: Option<&'r Role>,
    before_denier: Option<(&'r Role, bool)>,
    new_granter: Option<&'r Role>,
}

impl<'r> RoleFacts<'r> {
    fn of(roles: impl Iterator<Item = (&'r Role, [Facts; 2])>) -> Self {
        let mut out = RoleFacts::default();
        for (role, [before, after]) in roles.filter(|(_, [_, a])| !a.denies) {
            if after.grants {
                out.granter.get_or_insert(role);
                if !before.grants {
                    out.new_granter.get_or_insert(role);
                }
            }
            if before.denies {
                out.before_denier.get_or_insert((role, after.grants));
            }
        }
        out
    }
}

/// Decides whether some role set `P` makes a bearer subject allowed `action` on `module`
/// after the change and not before, from its base's facts and the roles' summary. Returns the
/// smallest such `P` (at most two roles) when there is one.
///
/// Allowed in a world iff the base is alive and does not deny, no presented role denies (a role
/// bound to a missing scope denies), and the base or some presented role grants. Only roles
/// that do not deny after may be presented; among them, one role that denies before (or a
/// base that does) plus one that grants after suffices, else a role that grants after and not
/// before, with a base that does not grant before.
fn bearer_gain<'r>(base: [Facts; 2], roles: &RoleFacts<'r>) -> Option<Vec<&'r Role>> {
    let [before, after] = base;
    if after.dead || after.denies || (!after.grants && roles.granter.is_none()) {
        return None;
    }
    // A grant after: the base's, or one more role's.
    let with_grant = |mut set: Vec<&'r Role>, grants: bool| {
        if !after.grants && !grants {
            set.extend(roles.granter);
        }
        set.sort();
        set.dedup();
        Some(set)
    };
    if before.dead || before.denies {
        return with_grant(Vec::new(), false);
    }
    if let Some((role, grants)) = roles.before_denier {
        return with_grant(vec![role], grants);
    }
    if before.grants {
        return None;
    }
    if after.grants {
        return Some(Vec::new());
    }
    roles.new_granter.map(|role| vec![role])
}

/// What a set of scopes says about one module and action.
#[derive(Debug, Clone, Copy, Default)]
struct Facts {
    /// Denied everything (disabled, or a missing scope).
    dead: bool,
    /// Some scope denies.
    denies: bool,
    /// Some scope grants.
    grants: bool,
}

impl Facts {
    fn of(scopes: &Bound<'_>, module: &Module, action: Action) -> Facts {
        match scopes {
            None => Facts { dead: true, denies: true, grants: false },
            Some(scopes) => Facts {
                dead: false,
                denies: scopes.iter().any(|s| s.denies(module, action)),
                grants: scopes.iter().any(|s| s.grants(module, action)),
            },
        }
    }
}

/// What a scope holds on its own.
fn alone(scope: Option<&Arc<Scope>>) -> Holding<'_> {
    scope.map_or(Holding::Nothing, |s| Holding::Layers(vec![vec![s.as_ref()]]))
}

/// The first credential that `after` widens against `before` beyond what `rule` allows,
/// given what the `caller` holds. `None`: the change keeps both promises.
pub fn judge(before: &AccessGraph, after: &AccessGraph, caller: &Holding<'_>, rule: Rule) -> Option<Violation> {
    let all_scopes = before.scopes.values().chain(after.scopes.values()).map(Arc::as_ref);
    let modules = witnesses(all_scopes.chain(caller.scopes()));
    // The (action, module) pairs a gain of which breaks the rule.
    let forbidden: Vec<(Action, &Module)> = Action::ALL
        .iter()
        .flat_map(|&a| modules.iter().map(move |m| (a, m)))
        .filter(|&(a, m)| match rule {
            Rule::NoWidening => true,
            Rule::NoEscalation => m.is_reserved() && !caller.allows(m, a),
        })
        .collect();
    if forbidden.is_empty() {
        return None;
    }
    let violation = |credential: Credential, (action, module): (Action, &Module)| Violation {
        rule,
        credential,
        action,
        module: module.clone(),
    };
    let gained = |old: &Holding<'_>, new: &Holding<'_>| {
        forbidden.iter().copied().find(|&(a, m)| new.allows(m, a) && !old.allows(m, a))
    };

    // Keys, once per distinct (before, after) facts.
    let mut seen: BTreeSet<(Option<&KeyFacts>, Option<&KeyFacts>, bool)> = BTreeSet::new();
    for id in before.keys.keys().chain(after.keys.keys()) {
        let issued = after.issued.contains(id);
        if !seen.insert((before.keys.get(id), after.keys.get(id), issued)) {
            continue;
        }
        // A token handed to the caller is judged on what its key can come to hold: its own
        // scopes, whatever its state or its owner's ceiling now (both may be lifted later by
        // someone who holds the grants, and the caller would keep the token).
        let (old, new) = if issued {
            (Holding::Nothing, after.potential_holding(id))
        } else {
            (before.key_holding(id), after.key_holding(id))
        };
        if let Some(found) = gained(&old, &new) {
            return Some(violation(Credential::Key(id.clone()), found));
        }
    }

    // Each changed scope on its own.
    let scope_ids: BTreeSet<&ScopeId> = before.scopes.keys().chain(after.scopes.keys()).collect();
    for id in scope_ids {
        let (old, new) = (before.scopes.get(id), after.scopes.get(id));
        if old == new {
            continue;
        }
        if let Some(found) = gained(&alone(old), &alone(new)) {
            return Some(violation(Credential::Scope(id.clone()), found));
        }
    }

    // Bearer principals: every named subject and one that is named nowhere, with any roles.
    let roles: Vec<&Role> =
        before.bound_roles().into_iter().chain(after.bound_roles()).collect::<BTreeSet<_>>().into_iter().collect();
    let role_scopes: Vec<(&Role, [Bound<'_>; 2])> = roles
        .iter()
        .map(|&r| {
            let one = std::slice::from_ref(r);
            (r, [before.resolve(before.bound_ids(None, one)), after.resolve(after.bound_ids(None, one))])
        })
        .collect();
    let subjects: BTreeSet<&Subject> = before.named_subjects().into_iter().chain(after.named_subjects()).collect();
    // Per forbidden (action, module): what the roles say before and after, summed up once for
    // every subject, so a subject costs one step per pair whatever the number of roles.
    let per_pair: Vec<RoleFacts<'_>> = forbidden
        .iter()
        .map(|&(action, module)| {
            RoleFacts::of(
                role_scopes
                    .iter()
                    .map(|(r, [b, a])| (*r, [Facts::of(b, module, action), Facts::of(a, module, action)])),
            )
        })
        .collect();
    let mut bases_seen = BTreeSet::new();
    for subject in subjects.into_iter().map(Some).chain([None]) {
        let bases = [before.bearer_base(subject).ok(), after.bearer_base(subject).ok()];
        let signature: [Option<Vec<&ScopeId>>; 2] =
            [0, 1].map(|w| bases[w].as_ref().map(|b| b.iter().map(|s| &s.id).collect()));
        if !bases_seen.insert(signature) {
            continue;
        }
        for (&(action, module), per_role) in forbidden.iter().zip(&per_pair) {
            let base = [0, 1].map(|w| Facts::of(&bases[w], module, action));
            if let Some(presented) = bearer_gain(base, per_role) {
                let credential = Credential::Bearer(subject.cloned(), presented.into_iter().cloned().collect());
                return Some(violation(credential, (action, module)));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::domain::{Rules, ScopeMode, Tenant};

    fn scope(id: &str, mode: ScopeMode, patterns: &[&str]) -> Arc<Scope> {
        Arc::new(Scope {
            id: id.parse().expect("test id"),
            tenant: "t".parse::<Tenant>().expect("test tenant"),
            label: id.parse().expect("test label"),
            description: String::new(),
            mode,
            rules: Rules::parse([patterns; 4]).expect("test rules"),
            builtin: false,
            version: 1,
            created_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
        })
    }

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().expect("test name")
    }

    /// A tenant with an admin scope, a deny scope on keyscope.keys, and an ordinary scope.
    fn graph() -> AccessGraph {
        let mut g = AccessGraph::default();
        for s in [
            scope("admin", ScopeMode::Allow, &["keyscope.*"]),
            scope("no-keys", ScopeMode::Deny, &["keyscope.keys"]),
            scope("courses", ScopeMode::Allow, &["courses"]),
            scope("no-billing", ScopeMode::Deny, &["billing"]),
            scope("all", ScopeMode::Allow, &["*"]),
        ] {
            g.scopes.insert(s.id.clone(), s);
        }
        g
    }

    fn kid(name: &str) -> KeyId {
        format!("{name:0<20}").parse().expect("test key id")
    }

    fn members(subjects: &[&str], roles: &[&str]) -> Members {
        Members {
            subjects: subjects.iter().map(|s| id(s)).collect(),
            roles: roles.iter().map(|r| id(r)).collect(),
            version: 1,
        }
    }

    fn key(scopes: &[&str], owner: &str) -> KeyFacts {
        KeyFacts { scope_ids: scopes.iter().map(|s| id(s)).collect(), owner: owner.into(), live: true }
    }

    fn registered(roles: &[&str]) -> Registration {
        Registration::Registered { roles: roles.iter().map(|r| id(r)).collect(), enabled: true }
    }

    fn outcome(before: &AccessGraph, change: Mutation, caller: &Holding<'_>, rule: Rule) -> Option<String> {
        let mut after = before.clone();
        change.apply(&mut after);
        judge(before, &after, caller, rule).map(|v| v.message())
    }

    #[test]
    fn adding_an_admin_role_to_a_keys_owner_is_escalation() {
        let mut g = graph();
        g.members.insert(id("admin"), members(&[], &["ops"]));
        g.members.insert(id("courses"), members(&["alice"], &[]));
        g.principals.insert(id("alice"), registered(&[]));
        g.keys.insert(kid("k1"), key(&["admin"], "alice"));
        let courses = g.scopes[&id::<ScopeId>("courses")].clone();
        let caller = Holding::Layers(vec![vec![courses.as_ref()]]);
        let found = outcome(&g, Mutation::PutPrincipal(id("alice"), registered(&["ops"])), &caller, Rule::NoEscalation)
            .expect("escalation");
        assert!(found.contains("key `k1") || found.contains("principal `alice`"), "{found}");
        // A caller holding keyscope.* may do it.
        let admin = g.scopes[&id::<ScopeId>("admin")].clone();
        let holder = Holding::Layers(vec![vec![admin.as_ref()]]);
        assert_eq!(
            outcome(&g, Mutation::PutPrincipal(id("alice"), registered(&["ops"])), &holder, Rule::NoEscalation),
            None
        );
    }

    #[test]
    fn unbinding_a_reserved_denial_from_an_owner_is_escalation() {
        let mut g = graph();
        g.members.insert(id("admin"), members(&["alice"], &[]));
        g.members.insert(id("no-keys"), members(&["alice"], &[]));
        g.principals.insert(id("alice"), registered(&[]));
        g.keys.insert(kid("k1"), key(&["admin"], "alice"));
        let (admin, no_keys) = (g.scopes[&id::<ScopeId>("admin")].clone(), g.scopes[&id::<ScopeId>("no-keys")].clone());
        // The caller is that very key: admin within an owner denied keyscope.keys.
        let caller = Holding::Layers(vec![vec![admin.as_ref()], vec![admin.as_ref(), no_keys.as_ref()]]);
        let found = outcome(&g, Mutation::SetMembers(id("no-keys"), Members::default()), &caller, Rule::NoEscalation)
            .expect("escalation");
        assert!(found.contains("keyscope.keys"), "{found}");
    }

    #[test]
    fn deleting_a_bound_deny_scope_widens_and_deleting_an_allow_scope_does_not() {
        let mut g = graph();
        g.keys.insert(kid("k1"), key(&["all", "no-billing"], "bob"));
        let found = outcome(&g, Mutation::DeleteScope(id("no-billing")), &Holding::Nothing, Rule::NoWidening);
        assert!(found.is_some_and(|m| m.contains("key `k1") && m.contains("'billing'")));
        // The same through an owner's ceiling, and through bearer checks.
        g.keys.clear();
        g.members.insert(id("all"), members(&["alice"], &[]));
        g.members.insert(id("no-billing"), members(&["alice"], &[]));
        g.principals.insert(id("alice"), registered(&[]));
        g.keys.insert(kid("k2"), key(&["all"], "alice"));
        let found = outcome(&g, Mutation::DeleteScope(id("no-billing")), &Holding::Nothing, Rule::NoWidening);
        assert!(found.is_some_and(|m| m.contains("key `k2") && m.contains("'billing'")));
        g.keys.clear();
        let found = outcome(&g, Mutation::DeleteScope(id("no-billing")), &Holding::Nothing, Rule::NoWidening);
        assert!(found.is_some_and(|m| m.contains("principal `alice`") && m.contains("'billing'")));
        assert_eq!(outcome(&g, Mutation::DeleteScope(id("courses")), &Holding::Nothing, Rule::NoWidening), None);
    }

    #[test]
    fn deleting_a_principal_never_widens_its_bearer_checks_or_keys() {
        let mut g = graph();
        g.members.insert(id("courses"), members(&["alice"], &[]));
        g.principals.insert(id("alice"), Registration::Registered { roles: Vec::new(), enabled: false });
        // A deleted principal is denied everything, as a disabled one is.
        assert_eq!(outcome(&g, Mutation::DeletePrincipal(id("alice")), &Holding::Nothing, Rule::NoWidening), None);
        g.principals.insert(id("alice"), registered(&[]));
        g.keys.insert(kid("k1"), key(&["courses"], "alice"));
        assert_eq!(outcome(&g, Mutation::DeletePrincipal(id("alice")), &Holding::Nothing, Rule::NoWidening), None);
        // Registering it again is a change like any other: judged.
        let mut gone = g.clone();
        gone.principals.insert(id("alice"), Registration::Gone);
        gone.members.insert(id("admin"), members(&[], &["ops"]));
        let again = Mutation::PutPrincipal(id("alice"), registered(&["ops"]));
        let found = outcome(&gone, again, &Holding::Nothing, Rule::NoEscalation).expect("escalation");
        assert!(found.contains("principal `alice`") || found.contains("key `k1"), "{found}");
    }

    #[test]
    fn a_token_handed_out_is_judged_on_everything_its_key_can_come_to_hold() {
        let mut g = graph();
        // A disabled admin key owned by a principal bound to nothing: it holds nothing now.
        g.principals.insert(id("bob"), registered(&[]));
        g.keys.insert(kid("k1"), KeyFacts { live: false, ..key(&["admin"], "bob") });
        let rotate =
            Mutation::PutKey { id: kid("k1"), facts: KeyFacts { live: false, ..key(&["admin"], "bob") }, issued: true };
        let found = outcome(&g, rotate, &Holding::Nothing, Rule::NoEscalation).expect("escalation");
        assert!(found.contains("keyscope"), "{found}");
    }

    #[test]
    fn a_role_combination_is_found_when_no_single_role_gains() {
        // r1 is bound to a deny of keyscope.keys, r2 to admin: a bearer presenting both is
        // denied keyscope.keys until r1 is unbound.
        let mut g = graph();
        g.members.insert(id("no-keys"), members(&[], &["r1"]));
        g.members.insert(id("admin"), members(&[], &["r2"]));
        let found =
            outcome(&g, Mutation::SetMembers(id("no-keys"), Members::default()), &Holding::Nothing, Rule::NoEscalation)
                .expect("escalation");
        assert!(found.contains("presenting roles [r1, r2]"), "{found}");
    }

    #[test]
    fn a_new_scope_granting_reserved_modules_needs_a_caller_holding_them() {
        let g = graph();
        let grant = scope("new", ScopeMode::Allow, &["keyscope.audit"]);
        let found = outcome(&g, Mutation::PutScope(grant.clone()), &Holding::Nothing, Rule::NoEscalation);
        assert!(found.is_some_and(|m| m.contains("scope `new`")));
        let admin = g.scopes[&id::<ScopeId>("admin")].clone();
        assert_eq!(
            outcome(&g, Mutation::PutScope(grant), &Holding::Layers(vec![vec![admin.as_ref()]]), Rule::NoEscalation),
            None
        );
        // Ordinary grants are anyone's to give.
        let ordinary = scope("new", ScopeMode::Allow, &["*"]);
        assert_eq!(outcome(&g, Mutation::PutScope(ordinary), &Holding::Nothing, Rule::NoEscalation), None);
    }

    #[test]
    fn an_issued_key_is_judged_as_new() {
        let mut g = graph();
        g.keys.insert(kid("k1"), key(&["admin"], ""));
        let rotate = Mutation::PutKey { id: kid("k1"), facts: key(&["admin"], ""), issued: true };
        assert!(outcome(&g, rotate.clone(), &Holding::Nothing, Rule::NoEscalation).is_some());
        let narrowed = Mutation::PutKey { id: kid("k1"), facts: key(&["courses"], ""), issued: false };
        assert_eq!(outcome(&g, narrowed, &Holding::Nothing, Rule::NoEscalation), None);
    }

    #[test]
    fn a_missing_scope_denies_and_a_dead_key_holds_nothing() {
        let mut g = graph();
        g.keys.insert(kid("k1"), key(&["gone"], ""));
        assert!(!g.key_holding(&kid("k1")).allows(&id("courses"), Action::Read));
        g.keys.insert(kid("k2"), KeyFacts { live: false, ..key(&["courses"], "") });
        assert!(!g.key_holding(&kid("k2")).allows(&id("courses"), Action::Read));
        g.keys.insert(kid("k3"), key(&["courses"], "nobody"));
        assert!(g.key_holding(&kid("k3")).allows(&id("courses"), Action::Read));
    }

    #[test]
    fn holding_each_named_reserved_module_is_not_holding_the_whole_prefix() {
        let g = graph();
        let three = scope("three", ScopeMode::Allow, &["keyscope.keys", "keyscope.scopes", "keyscope.audit"]);
        let caller = Holding::Layers(vec![vec![three.as_ref()]]);
        let prefix = scope("prefix", ScopeMode::Allow, &["keyscope.*"]);
        let found = outcome(&g, Mutation::PutScope(prefix), &caller, Rule::NoEscalation).expect("escalation");
        assert!(found.contains("'keyscope.*'"), "{found}");
        // Holding keyscope.* minus keyscope.keys is not enough to hand out keyscope.*.
        let (admin, no_keys) = (g.scopes[&id::<ScopeId>("admin")].clone(), g.scopes[&id::<ScopeId>("no-keys")].clone());
        let caller = Holding::Layers(vec![vec![admin.as_ref(), no_keys.as_ref()]]);
        let found =
            outcome(&g, Mutation::PutScope(scope("p", ScopeMode::Allow, &["keyscope.*"])), &caller, Rule::NoEscalation)
                .expect("escalation");
        assert!(found.contains("'keyscope.keys'"), "{found}");
    }
}
