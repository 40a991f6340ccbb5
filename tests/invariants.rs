//! No escalation and no widening by removal, proven against a reference model.
//!
//! Random sequences of admin calls (random callers among several admin keys with owners, roles,
//! bound allow and deny scopes, across two tenants) run against keyscope's use cases, and a
//! small reference model written here, independently of keyscope's code, follows them: its
//! own decision rules, owner ceilings and bearer principals. After every call:
//! - every credential (every key, and every bearer subject with every set of roles) is checked
//!   through keyscope's check path and must answer what the model says;
//! - the call must have been accepted exactly when the model accepts it: the caller is
//!   authorized, and, measured by brute force over every credential, no credential gains a
//!   reserved grant the caller lacks (edits) or gains anything (deletes);
//! - after an accepted call, both rules hold for what keyscope actually answers, and the other
//!   tenant answers exactly as before.
//!
//! On the memory store with `KEYSCOPE_MODEL_STEPS` steps (default 2000) and on a real
//! redis-server (default 300); `KEYSCOPE_MODEL_SEED` replays one sequence.

#![allow(clippy::panic)] // tests fail by panicking

#[path = "common/redis_server.rs"]
mod redis_server;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use keyscope::{
    domain::{Action, KeyState, Label, Module, Pepper, Role, Rules, ScopeId, ScopeMode, Subject, Tenant, TokenFormat},
    service::{
        Bootstrap, Builtins, Caller, KeyChanges, Keyscope, NewKey, Presented, PrincipalCredential, ScopeChanges,
        ScopeDraft, ServiceError,
    },
    store::{MemoryStore, RedisOptions, RedisStore, Store},
};
use redis_server::{RedisServer, fresh_prefix};

const TENANTS: [&str; 2] = ["acme", "beta"];
const SUBJECTS: [&str; 3] = ["alice", "bob", "carol"];
/// A subject no call ever names: it stands for every subject keyscope has never heard of.
const STRANGER: &str = "zed";
const ROLES: [&str; 3] = ["ops", "dev", "aud"];
const PATTERNS: [&str; 7] =
    ["keyscope.*", "keyscope.keys", "keyscope.scopes", "keyscope.principals", "courses", "billing.*", "*"];
/// Modules that tell apart everything the patterns above can: each pattern's module, one module
/// below each `X.*`, and one module no pattern names, on both sides of `keyscope`.
const MODULES: [&str; 10] = [
    "keyscope",
    "keyscope.keys",
    "keyscope.scopes",
    "keyscope.principals",
    "keyscope.audit",
    "courses",
    "billing",
    "billing.invoices",
    "other",
    "keyscope.other",
];
const BUILTINS: [&str; 3] = ["admin", "full-access", "read-only"];

/// A small deterministic generator (SplitMix64): the seed replays a whole sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn name(&mut self, names: &[&'static str]) -> &'static str {
        names[self.below(names.len())]
    }

    fn subset<T: Clone>(&mut self, items: &[T], percent: u64) -> Vec<T> {
        items.iter().filter(|_| self.chance(percent)).cloned().collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The reference model: the decision rules written out plainly, over plain data.

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelScope {
    deny: bool,
    /// Patterns per action, in `Action::ALL` order.
    rules: [Vec<&'static str>; 4],
}

fn matches(pattern: &str, module: &str) -> bool {
    match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(parent) => module.strip_prefix(parent).is_some_and(|rest| rest.starts_with('.')),
        None => pattern == module,
    }
}

fn reserved(module: &str) -> bool {
    module == "keyscope" || module.starts_with("keyscope.")
}

impl ModelScope {
    fn denies(&self, module: &str, action: usize) -> bool {
        self.deny && self.rules[action].iter().any(|p| matches(p, module))
    }

    fn grants(&self, module: &str, action: usize) -> bool {
        if self.deny {
            !reserved(module) && !self.denies(module, action)
        } else {
            self.rules[action].iter().any(|p| matches(p, module) && (*p != "*" || !reserved(module)))
        }
    }
}

fn decide(scopes: &[&ModelScope], module: &str, action: usize) -> bool {
    !scopes.is_empty()
        && !scopes.iter().any(|s| s.denies(module, action))
        && scopes.iter().any(|s| s.grants(module, action))
}

/// What a credential may do: (module index, action index) pairs.
type Allowed = BTreeSet<(usize, usize)>;

fn allowed_by(scopes: Option<Vec<&ModelScope>>) -> Allowed {
    let Some(scopes) = scopes else { return Allowed::new() };
    let mut out = Allowed::new();
    for (m, module) in MODULES.iter().enumerate() {
        for a in 0..4 {
            if decide(&scopes, module, a) {
                out.insert((m, a));
            }
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ModelPrincipal {
    Registered { roles: BTreeSet<&'static str>, enabled: bool },
    Gone,
}

#[derive(Debug, Clone)]
struct ModelKey {
    token: String,
    scopes: Vec<String>,
    owner: &'static str,
    state: KeyState,
}

#[derive(Debug, Clone, Default)]
struct ModelTenant {
    scopes: BTreeMap<String, ModelScope>,
    members: BTreeMap<String, (BTreeSet<&'static str>, BTreeSet<&'static str>)>,
    principals: BTreeMap<&'static str, ModelPrincipal>,
    keys: BTreeMap<String, ModelKey>,
    /// Key and scope ids in the order they were made (ids are random: picking in this order
    /// makes a seed replay the same sequence).
    made: Vec<String>,
}

/// A credential, as the model and the assertions name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Cred {
    Key(String),
    /// A subject presenting the roles of a bit mask over `ROLES`.
    Bearer(&'static str, usize),
}

fn role_set(mask: usize) -> Vec<&'static str> {
    ROLES.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, r)| *r).collect()
}

impl ModelTenant {
    fn bound(&self, subject: Option<&str>, roles: &BTreeSet<&str>) -> Option<Vec<&ModelScope>> {
        self.members
            .iter()
            .filter(|(_, (subjects, bound_roles))| {
                subject.is_some_and(|s| subjects.contains(s)) || bound_roles.iter().any(|r| roles.contains(r))
            })
            .map(|(id, _)| self.scopes.get(id))
            .collect()
    }

    fn key_allowed(&self, key: &ModelKey) -> Allowed {
        if key.state != KeyState::Active {
            return Allowed::new();
        }
        let own: Option<Vec<&ModelScope>> = key.scopes.iter().map(|id| self.scopes.get(id)).collect();
        let mut allowed = allowed_by(own);
        match self.principals.get(key.owner) {
            None => {}
            Some(ModelPrincipal::Gone | ModelPrincipal::Registered { enabled: false, .. }) => return Allowed::new(),
            Some(ModelPrincipal::Registered { roles, .. }) => {
                let ceiling = allowed_by(self.bound(Some(key.owner), roles));
                allowed.retain(|p| ceiling.contains(p));
            }
        }
        allowed
    }

    fn bearer_allowed(&self, subject: &str, mask: usize) -> Allowed {
        let mut roles: BTreeSet<&str> = role_set(mask).into_iter().collect();
        match self.principals.get(subject) {
            Some(ModelPrincipal::Registered { enabled: false, .. } | ModelPrincipal::Gone) => return Allowed::new(),
            Some(ModelPrincipal::Registered { roles: registered, .. }) => roles.extend(registered.iter().copied()),
            _ => {}
        }
        allowed_by(self.bound(Some(subject), &roles))
    }

    fn credentials(&self) -> BTreeMap<Cred, Allowed> {
        let mut out = BTreeMap::new();
        for (id, key) in &self.keys {
            out.insert(Cred::Key(id.clone()), self.key_allowed(key));
        }
        for subject in SUBJECTS.iter().chain([&STRANGER]) {
            for mask in 0..(1 << ROLES.len()) {
                out.insert(Cred::Bearer(subject, mask), self.bearer_allowed(subject, mask));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Admin calls.

#[derive(Debug, Clone)]
enum Op {
    CreateKey { scopes: Vec<String>, owner: &'static str },
    UpdateKey { id: String, scopes: Vec<String>, owner: &'static str },
    SetKeyState { id: String, state: KeyState },
    RotateKey { id: String },
    CreateScope { scope: ModelScope },
    UpdateScope { id: String, scope: ModelScope },
    DeleteScope { id: String },
    SetMembers { id: String, subjects: Vec<&'static str>, roles: Vec<&'static str> },
    Upsert { subject: &'static str, roles: Vec<&'static str>, enabled: bool },
    SetRoles { subject: &'static str, roles: Vec<&'static str> },
    SetEnabled { subject: &'static str, enabled: bool },
    DeletePrincipal { subject: &'static str },
}

impl Op {
    /// The reserved module and action the call is authorized on.
    fn authorized_on(&self) -> (&'static str, usize) {
        use Op::*;
        let (create, update, delete) = (0, 2, 3);
        match self {
            CreateKey { .. } => ("keyscope.keys", create),
            UpdateKey { .. } | SetKeyState { .. } | RotateKey { .. } => ("keyscope.keys", update),
            CreateScope { .. } => ("keyscope.scopes", create),
            UpdateScope { .. } | SetMembers { .. } => ("keyscope.scopes", update),
            DeleteScope { .. } => ("keyscope.scopes", delete),
            Upsert { .. } => ("keyscope.principals", create),
            SetRoles { .. } | SetEnabled { .. } => ("keyscope.principals", update),
            DeletePrincipal { .. } => ("keyscope.principals", delete),
        }
    }

    fn is_removal(&self) -> bool {
        matches!(self, Op::DeleteScope { .. } | Op::DeletePrincipal { .. })
    }
}

fn random_scope(rng: &mut Rng) -> ModelScope {
    let deny = rng.chance(35);
    let mut rules: [Vec<&'static str>; 4] = Default::default();
    for action in &mut rules {
        *action = rng.subset(&PATTERNS, 18);
    }
    ModelScope { deny, rules }
}

fn random_op(rng: &mut Rng, tenant: &ModelTenant, callers: &[String]) -> Op {
    let made = || tenant.made.iter().cloned();
    let scope_ids: Vec<String> =
        BUILTINS.iter().map(|b| (*b).to_owned()).chain(made().filter(|id| tenant.scopes.contains_key(id))).collect();
    let stored: Vec<String> = scope_ids.iter().filter(|id| !BUILTINS.contains(&id.as_str())).cloned().collect();
    // The calling keys change rarely, so that the sequence keeps callers that may act.
    let spare_callers = rng.chance(5);
    let live_keys: Vec<String> = made()
        .filter(|id| tenant.keys.get(id).is_some_and(|k| k.state != KeyState::Revoked))
        .filter(|id| spare_callers || !callers.contains(id))
        .collect();
    let bindable: Vec<String> = if rng.chance(10) || stored.is_empty() { scope_ids.clone() } else { stored.clone() };
    let owners = ["alice", "bob", "carol", ""];
    loop {
        let scopes = {
            let mut s = rng.subset(&scope_ids, 25);
            if s.is_empty() {
                s.push(rng.pick(&scope_ids).clone());
            }
            s.truncate(4);
            s
        };
        let op = match rng.below(13) {
            0 | 1 => Op::CreateKey { scopes, owner: rng.name(&owners) },
            2 if !live_keys.is_empty() => {
                Op::UpdateKey { id: rng.pick(&live_keys).clone(), scopes, owner: rng.name(&owners) }
            }
            3 if !live_keys.is_empty() => {
                let state = *rng.pick(&[KeyState::Active, KeyState::Disabled, KeyState::Disabled, KeyState::Revoked]);
                Op::SetKeyState { id: rng.pick(&live_keys).clone(), state }
            }
            4 if !live_keys.is_empty() => Op::RotateKey { id: rng.pick(&live_keys).clone() },
            5 => Op::CreateScope { scope: random_scope(rng) },
            6 if !stored.is_empty() => Op::UpdateScope { id: rng.pick(&stored).clone(), scope: random_scope(rng) },
            7 if !stored.is_empty() => Op::DeleteScope { id: rng.pick(&stored).clone() },
            8 | 9 => Op::SetMembers {
                id: rng.pick(&bindable).clone(),
                subjects: rng.subset(&SUBJECTS, 30),
                roles: rng.subset(&ROLES, 30),
            },
            10 => Op::Upsert { subject: rng.name(&SUBJECTS), roles: rng.subset(&ROLES, 40), enabled: rng.chance(80) },
            11 => match rng.below(3) {
                0 => Op::SetRoles { subject: rng.name(&SUBJECTS), roles: rng.subset(&ROLES, 40) },
                1 => Op::SetEnabled { subject: rng.name(&SUBJECTS), enabled: rng.chance(50) },
                _ => Op::DeletePrincipal { subject: rng.name(&SUBJECTS) },
            },
            12 if !stored.is_empty() => Op::DeleteScope { id: rng.pick(&stored).clone() },
            _ => continue,
        };
        return op;
    }
}

/// How a call ended, as compared with the model.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Unauthenticated,
    PermissionDenied,
    FailedPrecondition,
    NotFound,
}

/// What the model says about `op` by `caller` (a key of `tenant`): the outcome, and the
/// tenant afterwards when accepted. `issued`: keys judged as new (their token goes to the
/// caller, or their grants are handed out again).
fn model_outcome(tenant: &ModelTenant, caller: &str, op: &Op, created: Option<&str>) -> (Outcome, ModelTenant) {
    if tenant.keys.get(caller).is_none_or(|k| k.state != KeyState::Active) {
        return (Outcome::Unauthenticated, tenant.clone());
    }
    let held = tenant.keys.get(caller).map(|k| tenant.key_allowed(k)).unwrap_or_default();
    let (module, action) = op.authorized_on();
    let module_index = MODULES.iter().position(|m| *m == module).expect("known module");
    if !held.contains(&(module_index, action)) {
        return (Outcome::PermissionDenied, tenant.clone());
    }
    let mut after = tenant.clone();
    let mut issued: Option<String> = None;
    let mut changed_scope: Option<(Option<ModelScope>, ModelScope)> = None;
    let registered = |s: &str| matches!(tenant.principals.get(s), Some(ModelPrincipal::Registered { .. }));
    match op {
        Op::CreateKey { scopes, owner } => {
            let id = created.expect("a created key's id").to_owned();
            after.keys.insert(
                id.clone(),
                ModelKey { token: String::new(), scopes: scopes.clone(), owner, state: KeyState::Active },
            );
            issued = Some(id);
        }
        Op::UpdateKey { id, scopes, owner } => {
            let key = after.keys.get_mut(id).expect("known key");
            key.scopes = scopes.clone();
            key.owner = owner;
            issued = Some(id.clone());
        }
        Op::SetKeyState { id, state } => {
            after.keys.get_mut(id).expect("known key").state = *state;
        }
        Op::RotateKey { id } => issued = Some(id.clone()),
        Op::CreateScope { scope } => {
            let id = created.expect("a created scope's id").to_owned();
            after.scopes.insert(id, scope.clone());
            changed_scope = Some((None, scope.clone()));
        }
        Op::UpdateScope { id, scope } => {
            changed_scope = Some((tenant.scopes.get(id).cloned(), scope.clone()));
            after.scopes.insert(id.clone(), scope.clone());
        }
        Op::DeleteScope { id } => {
            after.scopes.remove(id);
            after.members.remove(id);
            for key in after.keys.values_mut() {
                key.scopes.retain(|s| s != id);
            }
        }
        Op::SetMembers { id, subjects, roles } => {
            after.members.insert(id.clone(), (subjects.iter().copied().collect(), roles.iter().copied().collect()));
        }
        Op::Upsert { subject, roles, enabled } => {
            if registered(subject) && !held.contains(&(3, 2)) {
                return (Outcome::PermissionDenied, tenant.clone());
            }
            let roles = roles.iter().copied().collect();
            after.principals.insert(subject, ModelPrincipal::Registered { roles, enabled: *enabled });
        }
        Op::SetRoles { subject, .. } | Op::SetEnabled { subject, .. } | Op::DeletePrincipal { subject }
            if !registered(subject) =>
        {
            return (Outcome::NotFound, tenant.clone());
        }
        Op::SetRoles { subject, roles } => {
            if let Some(ModelPrincipal::Registered { roles: r, .. }) = after.principals.get_mut(subject) {
                *r = roles.iter().copied().collect();
            }
        }
        Op::SetEnabled { subject, enabled } => {
            if let Some(ModelPrincipal::Registered { enabled: e, .. }) = after.principals.get_mut(subject) {
                *e = *enabled;
            }
        }
        Op::DeletePrincipal { subject } => {
            after.principals.insert(subject, ModelPrincipal::Gone);
        }
    }
    // Brute force over every credential of the tenant.
    let before = tenant.credentials();
    let mut gains: Vec<(Cred, Allowed)> = Vec::new();
    for (cred, now) in after.credentials() {
        let was = match &cred {
            Cred::Key(id) if issued.as_deref() == Some(id.as_str()) => Allowed::new(),
            _ => before.get(&cred).cloned().unwrap_or_default(),
        };
        gains.push((cred, now.difference(&was).copied().collect()));
    }
    // A token handed to the caller: everything its key's own scopes allow, whatever its state
    // or owner now (both may be lifted later).
    if let Some(key) = issued.as_ref().and_then(|id| after.keys.get(id)) {
        let own: Option<Vec<&ModelScope>> = key.scopes.iter().map(|id| after.scopes.get(id)).collect();
        gains.push((Cred::Key("<the token handed out>".into()), allowed_by(own)));
    }
    if let Some((old, new)) = &changed_scope {
        let was = old.as_ref().map(|s| allowed_by(Some(vec![s]))).unwrap_or_default();
        let now = allowed_by(Some(vec![new]));
        gains.push((Cred::Key("<the scope alone>".into()), now.difference(&was).copied().collect()));
    }
    let broken = gains.iter().any(|(_, gained)| {
        if op.is_removal() {
            !gained.is_empty()
        } else {
            gained.iter().any(|(m, a)| reserved(MODULES[*m]) && !held.contains(&(*m, *a)))
        }
    });
    match (broken, op.is_removal()) {
        (false, _) => (Outcome::Accepted, after),
        (true, false) => (Outcome::PermissionDenied, tenant.clone()),
        (true, true) => (Outcome::FailedPrecondition, tenant.clone()),
    }
}

// ---------------------------------------------------------------------------------------------
// Driving keyscope.

fn parse<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("valid name")
}

fn rules_of(scope: &ModelScope) -> Rules {
    let lists: [&[&str]; 4] = [&scope.rules[0], &scope.rules[1], &scope.rules[2], &scope.rules[3]];
    Rules::parse(lists).expect("valid patterns")
}

fn mode_of(scope: &ModelScope) -> ScopeMode {
    if scope.deny { ScopeMode::Deny } else { ScopeMode::Allow }
}

fn items() -> Vec<(Module, Action)> {
    MODULES.iter().flat_map(|m| Action::ALL.iter().map(move |a| (parse::<Module>(m), *a))).collect()
}

struct World {
    core: Keyscope,
    system: String,
    tenants: Vec<ModelTenant>,
    /// Per tenant, the keys that call: created at the start, changed by the calls like any key.
    callers: Vec<Vec<String>>,
    labels: std::sync::atomic::AtomicUsize,
}

fn outcome_of<T>(result: &Result<T, ServiceError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Accepted,
        Err(ServiceError::PermissionDenied(_)) => Outcome::PermissionDenied,
        Err(ServiceError::FailedPrecondition(_)) => Outcome::FailedPrecondition,
        Err(ServiceError::NotFound(_)) => Outcome::NotFound,
        Err(ServiceError::Unauthenticated(_)) => Outcome::Unauthenticated,
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

impl World {
    async fn new(store: Arc<dyn Store>) -> World {
        let core = Keyscope::new(
            store,
            Builtins::new(&[]).expect("builtins"),
            TokenFormat::new("ks").expect("prefix"),
            Pepper::new(b"model-test-pepper-0123456789").expect("pepper"),
        );
        let system = match core.ensure_bootstrap(None).await.expect("bootstrap") {
            Bootstrap::Created(_, token) => token.expose().to_owned(),
            other => panic!("unexpected bootstrap {other:?}"),
        };
        let admin = ModelScope { deny: false, rules: std::array::from_fn(|_| vec!["keyscope.*"]) };
        let full = ModelScope { deny: false, rules: std::array::from_fn(|_| vec!["*"]) };
        let read = ModelScope { deny: false, rules: [vec![], vec!["*"], vec![], vec![]] };
        let mut world = World { core, system, tenants: Vec::new(), callers: Vec::new(), labels: Default::default() };
        for t in 0..TENANTS.len() {
            let mut model = ModelTenant::default();
            for (id, scope) in BUILTINS.iter().zip([&admin, &full, &read]) {
                model.scopes.insert((*id).to_owned(), scope.clone());
            }
            world.tenants.push(model);
            world.callers.push(Vec::new());
            // Admin keys: one unbounded, one owned by alice, one by bob, one by a role holder.
            let no_keys = world
                .system_scope(t, ModelScope { deny: true, rules: std::array::from_fn(|_| vec!["keyscope.keys"]) })
                .await;
            for owner in ["", "alice", "bob", "carol"] {
                let id = world.system_key(t, vec!["admin".to_owned()], owner).await;
                world.callers[t].push(id);
            }
            world.system_members(t, "admin", &["alice"], &["ops"]).await;
            world.system_members(t, &no_keys, &["bob"], &[]).await;
            world.system_principal(t, "alice", &[]).await;
            world.system_principal(t, "bob", &["ops"]).await;
            world.system_principal(t, "carol", &["ops", "aud"]).await;
        }
        world
    }

    fn tenant(&self, t: usize) -> Tenant {
        parse(TENANTS[t])
    }

    async fn as_caller(&self, token: &str, t: usize, module: &str, action: usize) -> Result<Caller, ServiceError> {
        self.core.authorize(Some(token), TENANTS[t], &parse(module), Action::ALL[action]).await
    }

    async fn system_caller(&self, t: usize) -> Caller {
        self.as_caller(&self.system.clone(), t, "keyscope.keys", 1).await.expect("system admin")
    }

    async fn system_scope(&mut self, t: usize, scope: ModelScope) -> String {
        let caller = self.system_caller(t).await;
        let created = self.create_scope(&caller, &scope).await.expect("system creates a scope");
        self.tenants[t].scopes.insert(created.clone(), scope);
        self.tenants[t].made.push(created.clone());
        created
    }

    async fn system_key(&mut self, t: usize, scopes: Vec<String>, owner: &'static str) -> String {
        let caller = self.system_caller(t).await;
        let (id, token) = self.create_key(&caller, &scopes, owner).await.expect("system creates a key");
        self.tenants[t].keys.insert(id.clone(), ModelKey { token, scopes, owner, state: KeyState::Active });
        self.tenants[t].made.push(id.clone());
        id
    }

    async fn system_members(&mut self, t: usize, id: &str, subjects: &[&'static str], roles: &[&'static str]) {
        let caller = self.system_caller(t).await;
        let op = Op::SetMembers { id: id.to_owned(), subjects: subjects.to_vec(), roles: roles.to_vec() };
        self.call(&caller, t, &op).await.expect("system binds");
        self.tenants[t]
            .members
            .insert(id.to_owned(), (subjects.iter().copied().collect(), roles.iter().copied().collect()));
    }

    async fn system_principal(&mut self, t: usize, subject: &'static str, roles: &[&'static str]) {
        let caller = self.system_caller(t).await;
        let op = Op::Upsert { subject, roles: roles.to_vec(), enabled: true };
        self.call(&caller, t, &op).await.expect("system registers");
        let roles = roles.iter().copied().collect();
        self.tenants[t].principals.insert(subject, ModelPrincipal::Registered { roles, enabled: true });
    }

    async fn create_scope(&self, caller: &Caller, scope: &ModelScope) -> Result<String, ServiceError> {
        let label = self.labels.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let draft = ScopeDraft {
            label: parse::<Label>(&format!("scope-{label}")),
            description: String::new(),
            mode: mode_of(scope),
            rules: rules_of(scope),
        };
        Ok(self.core.create_scope(caller, draft).await?.id.to_string())
    }

    async fn create_key(
        &self,
        caller: &Caller,
        scopes: &[String],
        owner: &str,
    ) -> Result<(String, String), ServiceError> {
        let new = NewKey {
            owner: owner.to_owned(),
            scope_ids: scopes.iter().map(|s| parse::<ScopeId>(s)).collect(),
            ..NewKey::default()
        };
        let (key, token) = self.core.create_key(caller, new).await?;
        Ok((key.id.to_string(), token.expose().to_owned()))
    }

    /// Makes the call; returns the id of what it created, and the new token of a key.
    async fn call(&self, caller: &Caller, t: usize, op: &Op) -> Result<(Option<String>, Option<String>), ServiceError> {
        let core = &self.core;
        let system = self.system_caller(t).await;
        let roles = |r: &[&str]| r.iter().map(|r| parse::<Role>(r)).collect::<Vec<_>>();
        match op {
            Op::CreateKey { scopes, owner } => {
                let (id, token) = self.create_key(caller, scopes, owner).await?;
                Ok((Some(id), Some(token)))
            }
            Op::UpdateKey { id, scopes, owner } => {
                let key = core.get_key(&system, &parse(id)).await.expect("key");
                let changes = KeyChanges {
                    owner: Some((*owner).to_owned()),
                    scope_ids: Some(scopes.iter().map(|s| parse::<ScopeId>(s)).collect()),
                    ..KeyChanges::default()
                };
                core.update_key(caller, &parse(id), key.version, changes).await?;
                Ok((None, None))
            }
            Op::SetKeyState { id, state } => {
                core.set_key_state(caller, &parse(id), None, *state).await?;
                Ok((None, None))
            }
            Op::RotateKey { id } => {
                let (_, token) = core.rotate_key(caller, &parse(id), Duration::ZERO, None).await?;
                Ok((None, Some(token.expose().to_owned())))
            }
            Op::CreateScope { scope } => Ok((Some(self.create_scope(caller, scope).await?), None)),
            Op::UpdateScope { id, scope } => {
                let current = core.get_scope(&system, &parse(id)).await.expect("scope");
                let changes = ScopeChanges {
                    mode: Some(mode_of(scope)),
                    rules: Some(rules_of(scope)),
                    ..ScopeChanges::default()
                };
                core.update_scope(caller, &parse(id), current.version, changes).await?;
                Ok((None, None))
            }
            Op::DeleteScope { id } => {
                core.delete_scope(caller, &parse(id), true, None).await?;
                Ok((None, None))
            }
            Op::SetMembers { id, subjects, roles: bound } => {
                let current = core.get_scope_members(&system, &parse(id)).await.expect("members");
                let subjects = subjects.iter().map(|s| parse::<Subject>(s)).collect();
                core.set_scope_members(caller, &parse(id), subjects, roles(bound), current.version).await?;
                Ok((None, None))
            }
            Op::Upsert { subject, roles: r, enabled } => {
                core.upsert_principal(caller, parse(subject), roles(r), *enabled, None).await?;
                Ok((None, None))
            }
            Op::SetRoles { subject, roles: r } => {
                let version = match core.get_principal(&system, &parse(subject)).await {
                    Ok(p) => p.version,
                    Err(e) => return Err(e),
                };
                core.set_principal_roles(caller, &parse(subject), roles(r), version).await?;
                Ok((None, None))
            }
            Op::SetEnabled { subject, enabled } => {
                core.set_principal_enabled(caller, &parse(subject), *enabled).await?;
                Ok((None, None))
            }
            Op::DeletePrincipal { subject } => {
                core.delete_principal(caller, &parse(subject), None).await?;
                Ok((None, None))
            }
        }
    }

    /// What keyscope answers for every credential of tenant `t`.
    async fn observed(&self, t: usize) -> BTreeMap<Cred, Allowed> {
        let items = items();
        let to_set = |answers: Vec<keyscope::service::CheckAnswer>| -> Allowed {
            answers.iter().enumerate().filter(|(_, a)| a.allowed()).map(|(i, _)| (i / 4, i % 4)).collect()
        };
        let mut out = BTreeMap::new();
        for (id, key) in &self.tenants[t].keys {
            let answers =
                self.core.batch_check(&Presented::Token(key.token.clone()), None, &items, false).await.expect("check");
            out.insert(Cred::Key(id.clone()), to_set(answers));
        }
        for subject in SUBJECTS.iter().chain([&STRANGER]) {
            for mask in 0..(1 << ROLES.len()) {
                let roles: Vec<String> = role_set(mask).iter().map(|r| (*r).to_owned()).collect();
                let credential = PrincipalCredential::parse("principal", subject, &roles).expect("credential");
                let answers =
                    self.core.check_principal(&self.tenant(t), &credential, &items, false).await.expect("check");
                out.insert(Cred::Bearer(subject, mask), to_set(answers));
            }
        }
        out
    }
}

fn describe(allowed: &Allowed) -> Vec<String> {
    allowed.iter().map(|(m, a)| format!("{} {}", Action::ALL[*a], MODULES[*m])).collect()
}

async fn run_model(store: Arc<dyn Store>, steps: usize, seed: u64) {
    let mut world = World::new(store).await;
    let mut rng = Rng(seed);
    let mut accepted = [0usize; 2];
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for t in 0..TENANTS.len() {
        assert_eq!(world.observed(t).await, world.tenants[t].credentials(), "set-up of tenant {t} (seed {seed})");
    }
    for step in 0..steps {
        let t = rng.below(TENANTS.len());
        let caller_id = rng.pick(&world.callers[t]).clone();
        let op = random_op(&mut rng, &world.tenants[t], &world.callers[t]);
        let context = format!("seed {seed}, step {step}, tenant {}, caller {caller_id}, {op:?}", TENANTS[t]);
        let token = world.tenants[t].keys[&caller_id].token.clone();
        let before = world.observed(t).await;
        let other = 1 - t;
        let other_before = world.observed(other).await;

        let (module, action) = op.authorized_on();
        let result = match world.as_caller(&token, t, module, action).await {
            Ok(caller) => world.call(&caller, t, &op).await,
            Err(e) => Err(e),
        };
        let created = result.as_ref().ok().and_then(|(id, _)| id.clone());
        let placeholder = created.clone().unwrap_or_else(|| "not-made".to_owned());
        let (expected, after_model) = model_outcome(&world.tenants[t], &caller_id, &op, Some(&placeholder));
        let got = outcome_of(&result);
        if got != expected {
            let m = &world.tenants[t];
            panic!(
                "{context}: keyscope answered {result:?}, the model {expected:?}\nscopes {:?}\nmembers {:?}\nprincipals {:?}\nkeys {:?}",
                m.scopes,
                m.members,
                m.principals,
                m.keys.iter().map(|(id, k)| (id, &k.scopes, k.owner, k.state)).collect::<Vec<_>>()
            );
        }
        *outcomes.entry(format!("{got:?}")).or_insert(0usize) += 1;
        if got != Outcome::Accepted {
            continue;
        }
        accepted[usize::from(op.is_removal())] += 1;
        world.tenants[t] = after_model;
        world.tenants[t].made.extend(created.clone());
        if let Ok((id, Some(token))) = &result {
            let id = match &op {
                Op::RotateKey { id } => id.clone(),
                _ => id.clone().expect("a created key"),
            };
            world.tenants[t].keys.get_mut(&id).expect("known key").token = token.clone();
        }
        let after = world.observed(t).await;
        assert_eq!(after, world.tenants[t].credentials(), "{context}: keyscope and the model disagree");
        // Both rules, on what keyscope answers.
        let held = &before[&Cred::Key(caller_id.clone())];
        for (cred, now) in &after {
            let issued = match (&op, cred) {
                (Op::CreateKey { .. }, Cred::Key(id)) => created.as_deref() == Some(id.as_str()),
                (Op::UpdateKey { id: changed, .. } | Op::RotateKey { id: changed }, Cred::Key(id)) => changed == id,
                _ => false,
            };
            let was = if issued { Allowed::new() } else { before.get(cred).cloned().unwrap_or_default() };
            let gained: Allowed = now.difference(&was).copied().collect();
            if op.is_removal() {
                assert!(gained.is_empty(), "{context}: a removal widened {cred:?}: {:?}", describe(&gained));
            }
            let escalated: Allowed =
                gained.iter().filter(|(m, a)| reserved(MODULES[*m]) && !held.contains(&(*m, *a))).copied().collect();
            assert!(escalated.is_empty(), "{context}: {cred:?} escalated to {:?}", describe(&escalated));
        }
        assert_eq!(world.observed(other).await, other_before, "{context}: the other tenant changed");
    }
    println!("{steps} steps (seed {seed}): {outcomes:?}; accepted edits and removals: {accepted:?}");
    // The sequence must have exercised both kinds of change, accepted and refused.
    assert!(accepted[0] > steps / 20 && accepted[1] > steps / 100, "too few accepted changes: {accepted:?}");
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test]
async fn admin_changes_never_escalate_or_widen_on_the_memory_store() {
    let steps = setting("KEYSCOPE_MODEL_STEPS", 2000) as usize;
    run_model(Arc::new(MemoryStore::new()), steps, setting("KEYSCOPE_MODEL_SEED", 0x6b65_7973_636f_7065)).await;
}

#[tokio::test]
async fn admin_changes_never_escalate_or_widen_on_redis() {
    let redis = RedisServer::start();
    // The model checks answers, not latency: a check's Redis timeout as long as an admin call's,
    // so that a loaded machine cannot fail a step with UNAVAILABLE.
    let options = RedisOptions {
        prefix: fresh_prefix(),
        check_timeout: std::time::Duration::from_secs(2),
        ..RedisOptions::new(redis.url())
    };
    let store = RedisStore::connect(options).await.expect("connect to the test redis");
    let steps = setting("KEYSCOPE_MODEL_STEPS", 2000) as usize / 7;
    run_model(Arc::new(store), steps, setting("KEYSCOPE_MODEL_SEED", 0x0072_6564_6973)).await;
}
