//! The public decision cases of the decision rules, run three ways: through the pure core,
//! through `ScopeAdmin.EvaluateScopes` with inline scopes, and through `Checker.Check` on
//! real keys holding stored scopes, over a real socket. The cases with owners, member
//! bindings and bearer principals run through the pure core, `Checker.Check` and ext_authz.

#![allow(clippy::panic)] // tests fail by panicking

mod common;
#[path = "common/fixtures.rs"]
mod fixtures;

use std::{collections::BTreeMap, time::SystemTime};

use common::TestServer;
use fixtures::{Case, CaseScope};
use keyscope::{
    domain::{
        Action, Held, Key, KeyCheck, KeyState, Module, OwnerBound, PrincipalCheck, PrincipalState, Reason, Rules,
        Scope, ScopeId, ScopeLookup, ScopeMode, SecretHash, Subject, Tenant, evaluate,
    },
    grpc::{ExtAuthzSettings, IdentityHeaders, pb},
    service::{Builtins, HttpMapping, PrincipalHeaders, default_methods},
};

fn domain_scope(s: &CaseScope) -> Scope {
    let [c, r, u, d] = s.patterns();
    Scope {
        id: s.id.parse::<ScopeId>().expect("fixture scope id"),
        tenant: "fixtures".parse::<Tenant>().expect("tenant"),
        label: s.id.parse().expect("fixture label"),
        description: String::new(),
        mode: match s.mode.as_str() {
            "allow" => ScopeMode::Allow,
            "deny" => ScopeMode::Deny,
            other => panic!("fixture mode {other}"),
        },
        rules: Rules::parse([&c[..], &r[..], &u[..], &d[..]]).expect("fixture rules"),
        builtin: false,
        version: 1,
        created_at: SystemTime::UNIX_EPOCH,
        updated_at: SystemTime::UNIX_EPOCH,
    }
}

fn pb_mode(mode: &str) -> pb::ScopeMode {
    if mode == "deny" { pb::ScopeMode::Deny } else { pb::ScopeMode::Allow }
}

fn pb_rules(s: &CaseScope) -> pb::Rules {
    let [create, read, update, delete] = s.patterns();
    pb::Rules { create, read, update, delete }
}

fn pb_action(action: &str) -> pb::Action {
    let a: Action = action.parse().expect("fixture action");
    keyscope::grpc::convert::action_to_pb(a)
}

fn reason_name(raw: i32) -> String {
    pb::Reason::try_from(raw).expect("known reason").as_str_name().trim_start_matches("REASON_").to_owned()
}

#[test]
fn decision_cases_hold_in_the_core() {
    for case in fixtures::load() {
        let scopes: Vec<Scope> = case.scopes.iter().map(domain_scope).collect();
        let refs: Vec<&Scope> = scopes.iter().collect();
        let module: Module = case.check.module.parse().expect("fixture module");
        let action: Action = case.check.action.parse().expect("fixture action");
        let decision = evaluate(&refs, &module, action);
        let ids: Vec<&str> = decision.deciding.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(decision.allowed(), case.expect.allowed, "{}", case.name);
        assert_eq!(decision.reason.as_str(), case.expect.reason, "{}", case.name);
        assert_eq!(ids, case.expect.scopes, "{}", case.name);
        assert!(!decision.message(&module, action).is_empty(), "{}", case.name);
    }
}

#[tokio::test]
async fn decision_cases_hold_through_evaluate_scopes() {
    let server = TestServer::start().await;
    let mut scopes = server.scopes();
    for case in fixtures::load() {
        let inline_scopes = case
            .scopes
            .iter()
            .map(|s| pb::Scope {
                id: s.id.clone(),
                mode: pb_mode(&s.mode).into(),
                rules: Some(pb_rules(s)),
                ..Default::default()
            })
            .collect();
        let answer = scopes
            .evaluate_scopes(pb::EvaluateScopesRequest {
                tenant: "fixtures".into(),
                scope_ids: vec![],
                inline_scopes,
                module: case.check.module.clone(),
                action: pb_action(&case.check.action).into(),
            })
            .await
            .unwrap_or_else(|s| panic!("{}: {s:?}", case.name))
            .into_inner();
        assert_eq!(answer.allowed, case.expect.allowed, "{}", case.name);
        assert_eq!(reason_name(answer.reason), case.expect.reason, "{}", case.name);
        assert_eq!(answer.scope_ids, case.expect.scopes, "{}", case.name);
        assert!(!answer.message.is_empty(), "{}", case.name);
    }
    server.stop().await;
}

/// Makes a key in a fresh tenant holding stored copies of the case's scopes; returns the
/// token and the map from stored id to fixture id.
async fn key_for(server: &TestServer, tenant: &str, case: &Case) -> (String, BTreeMap<String, String>) {
    let mut ids = BTreeMap::new();
    for s in &case.scopes {
        // Fixture ids such as `admin` are builtin labels, so the stored copies get a prefix.
        let stored = server.scope(tenant, &format!("f-{}", s.id), pb_mode(&s.mode), pb_rules(s)).await;
        ids.insert(stored.id, s.id.clone());
    }
    if ids.is_empty() {
        // A key always starts with a scope; a forced delete leaves it with none.
        let placeholder = server.scope(tenant, "placeholder", pb::ScopeMode::Allow, common::read_rules(&["*"])).await;
        let (_, token) = server.key(tenant, &[&placeholder.id]).await;
        server
            .scopes()
            .delete_scope(pb::DeleteScopeRequest { tenant: tenant.into(), id: placeholder.id, force: true, version: 0 })
            .await
            .expect("forced delete");
        return (token, ids);
    }
    let scope_ids: Vec<&str> = ids.keys().map(String::as_str).collect();
    let (_, token) = server.key(tenant, &scope_ids).await;
    (token, ids)
}

#[tokio::test]
async fn decision_cases_hold_through_check_on_real_keys() {
    let server = TestServer::start().await;
    for (i, case) in fixtures::load().iter().enumerate() {
        let tenant = format!("case-{i}");
        let (token, ids) = key_for(&server, &tenant, case).await;
        let answer = server.check(&token, &case.check.module, pb_action(&case.check.action)).await;
        assert_eq!(answer.allowed, case.expect.allowed, "{}", case.name);
        assert_eq!(reason_name(answer.reason), case.expect.reason, "{}", case.name);
        assert_eq!(answer.tenant, tenant, "{}", case.name);
        let mut sorted = answer.scope_ids.clone();
        sorted.sort();
        assert_eq!(answer.scope_ids, sorted, "{}: deciding scopes come sorted by id", case.name);
        let mut named: Vec<String> = answer.scope_ids.iter().map(|id| ids[id].clone()).collect();
        named.sort();
        assert_eq!(named, case.expect.scopes, "{}", case.name);
    }
    server.stop().await;
}

/// Finds case scopes by id: the builtins, then the case's scopes.
struct CaseLookup<'a> {
    builtins: &'a Builtins,
    stored: &'a [Scope],
}

impl ScopeLookup for CaseLookup<'_> {
    fn scope(&self, id: &ScopeId) -> Option<&Scope> {
        self.builtins.get(id).map(|s| &**s).or_else(|| self.stored.iter().find(|s| s.id == *id))
    }
}

fn scope_ids(ids: &[String]) -> Vec<ScopeId> {
    ids.iter().map(|id| id.parse().expect("fixture scope id")).collect()
}

fn case_key(key: &fixtures::CaseKey) -> Key {
    Key {
        id: "k0000000000000000000".parse().expect("key id"),
        tenant: "fixtures".parse().expect("tenant"),
        description: String::new(),
        owner: key.owner.clone(),
        scope_ids: scope_ids(&key.scopes),
        state: KeyState::Active,
        expires_at: None,
        metadata: Default::default(),
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

#[test]
fn principal_decision_cases_hold_in_the_core() {
    let builtins = Builtins::new(&[]).expect("builtins");
    for case in fixtures::load_principal_cases() {
        let stored: Vec<Scope> = case.scopes.iter().map(domain_scope).collect();
        let lookup = CaseLookup { builtins: &builtins, stored: &stored };
        let module: Module = case.check.module.parse().expect("fixture module");
        let action: Action = case.check.action.parse().expect("fixture action");
        let (reason, ids, message) = if let Some(k) = &case.key {
            let key = case_key(k);
            let owner_ids: Vec<ScopeId>;
            let owner = match case.registered(&k.owner) {
                None => OwnerBound::Unbounded,
                Some(p) if p.state == "deleted" => OwnerBound::Gone,
                Some(p) if p.state == "disabled" => OwnerBound::Disabled,
                Some(_) => {
                    owner_ids = scope_ids(&case.bound(&k.owner, &[]));
                    OwnerBound::Bound(Held { ids: &owner_ids, lookup: &lookup })
                }
            };
            let check = KeyCheck {
                key: &key,
                scopes: Held { ids: &key.scope_ids, lookup: &lookup },
                owner,
                now: SystemTime::now(),
                tenant: None,
                source: None,
            };
            let decision = check.decide(&module, action);
            (decision.reason, decision.scope_ids(), check.explain(&decision, &module, action))
        } else {
            let bearer = case.principal.as_ref().expect("a key or a principal");
            let subject: Subject = bearer.subject.parse().expect("fixture subject");
            let state = match case.registered(&bearer.subject) {
                None => PrincipalState::Unregistered,
                Some(p) if p.state == "deleted" => PrincipalState::Gone,
                Some(p) => PrincipalState::Registered { enabled: p.state == "enabled" },
            };
            let bound = scope_ids(&case.bound(&bearer.subject, &bearer.roles));
            let check = PrincipalCheck { subject: &subject, state, scopes: Held { ids: &bound, lookup: &lookup } };
            let decision = check.decide(&module, action);
            (decision.reason, decision.scope_ids(), check.explain(&decision, &module, action))
        };
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(reason == Reason::Ok, case.expect.allowed, "{}", case.name);
        assert_eq!(reason.as_str(), case.expect.reason, "{}", case.name);
        assert_eq!(ids, case.expect.scopes, "{}", case.name);
        assert!(!message.is_empty(), "{}", case.name);
    }
}

/// Sets up a case in `tenant` on `server` as the system admin: its scopes (stored copies
/// named `f-<id>`), bindings, principals and (for a key case) the key. Returns the key's
/// token, if any, and the map from stored scope id to fixture id (builtins map to themselves).
async fn set_up(
    server: &TestServer,
    tenant: &str,
    case: &fixtures::PrincipalCase,
) -> (String, BTreeMap<String, String>) {
    let mut ids: BTreeMap<String, String> =
        ["full-access", "read-only", "admin"].iter().map(|b| (b.to_string(), b.to_string())).collect();
    for s in &case.scopes {
        let stored = server.scope(tenant, &format!("f-{}", s.id), pb_mode(&s.mode), pb_rules(s)).await;
        ids.insert(stored.id, s.id.clone());
    }
    let stored_id =
        |fixture: &str| ids.iter().find(|(_, f)| *f == fixture).map(|(s, _)| s.clone()).expect("known scope");
    for m in &case.members {
        let subjects: Vec<&str> = m.subjects.iter().map(String::as_str).collect();
        let roles: Vec<&str> = m.roles.iter().map(String::as_str).collect();
        server.bind(tenant, &stored_id(&m.scope), &subjects, &roles).await;
    }
    for p in &case.principals {
        let roles: Vec<&str> = p.roles.iter().map(String::as_str).collect();
        server.principal(tenant, &p.subject, &roles).await;
    }
    let token = match &case.key {
        Some(k) => {
            let held: Vec<String> = k.scopes.iter().map(|s| stored_id(s)).collect();
            let held: Vec<&str> = held.iter().map(String::as_str).collect();
            server.owned_key(tenant, &k.owner, &held).await.1
        }
        None => String::new(),
    };
    // States last: a disabled or deleted principal is set up like any other first.
    for p in &case.principals {
        let (tenant, subject) = (tenant.to_owned(), p.subject.clone());
        match p.state.as_str() {
            "enabled" => {}
            "disabled" => {
                let request = pb::PrincipalStateRequest { tenant, subject };
                server.principals().disable_principal(request).await.expect("disable");
            }
            "deleted" => {
                let request = pb::DeletePrincipalRequest { tenant, subject, version: 0 };
                server.principals().delete_principal(request).await.expect("delete");
            }
            other => panic!("{}: unknown principal state {other}", case.name),
        }
    }
    (token, ids)
}

#[tokio::test]
async fn principal_decision_cases_hold_through_check() {
    let server = TestServer::start().await;
    for (i, case) in fixtures::load_principal_cases().iter().enumerate() {
        let tenant = format!("pcase-{i}");
        let (token, ids) = set_up(&server, &tenant, case).await;
        let action = pb_action(&case.check.action);
        let answer = match &case.principal {
            None => server.check(&token, &case.check.module, action).await,
            Some(p) => {
                let roles: Vec<&str> = p.roles.iter().map(String::as_str).collect();
                server
                    .try_check_principal(&tenant, &p.subject, &roles, &case.check.module, action)
                    .await
                    .unwrap_or_else(|s| panic!("{}: {s:?}", case.name))
            }
        };
        assert_eq!(answer.allowed, case.expect.allowed, "{}: {}", case.name, answer.message);
        assert_eq!(reason_name(answer.reason), case.expect.reason, "{}: {}", case.name, answer.message);
        let mut named: Vec<String> = answer.scope_ids.iter().map(|id| ids[id].clone()).collect();
        named.sort();
        assert_eq!(named, case.expect.scopes, "{}", case.name);
        assert!(!answer.message.is_empty(), "{}", case.name);
    }
    server.stop().await;
}

#[tokio::test]
async fn principal_decision_cases_hold_through_ext_authz() {
    use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
        check_response::HttpResponse,
    };
    let mapping = HttpMapping::new("x-api-key", Vec::new(), false, default_methods())
        .with_principal_headers(PrincipalHeaders { subject: "x-jwt-sub".into(), roles: "x-jwt-roles".into() });
    let settings = ExtAuthzSettings {
        mapping,
        identity: IdentityHeaders::default(),
        strip_credential: false,
        trusted_proxy_hops: 0,
    };
    let server = TestServer::start_with_ext_authz(settings).await;
    for (i, case) in fixtures::load_principal_cases().iter().enumerate() {
        let tenant = format!("penvoy-{i}");
        let (token, _) = set_up(&server, &tenant, case).await;
        let headers: Vec<(String, String)> = match &case.principal {
            None => vec![("x-api-key".into(), token)],
            Some(p) => vec![("x-jwt-sub".into(), p.subject.clone()), ("x-jwt-roles".into(), p.roles.join(","))],
        };
        let method = match case.check.action.as_str() {
            "create" => "POST",
            "read" => "GET",
            "update" => "PUT",
            _ => "DELETE",
        };
        let http = attribute_context::HttpRequest {
            method: method.into(),
            path: "/any".into(),
            headers: headers.into_iter().collect(),
            ..Default::default()
        };
        let context = [("keyscope_module", case.check.module.clone()), ("keyscope_tenant", tenant.clone())];
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
                context_extensions: context.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                ..Default::default()
            }),
        };
        let response = AuthorizationClient::new(server.channel()).check(request).await.expect("ext_authz").into_inner();
        match (&response.http_response, case.expect.allowed) {
            (Some(HttpResponse::OkResponse(_)), true) => {}
            (Some(HttpResponse::DeniedResponse(denied)), false) => {
                let body: serde_json::Value = serde_json::from_str(&denied.body).expect("a JSON body");
                assert_eq!(denied.status.as_ref().map(|s| s.code), Some(403), "{}", case.name);
                assert_eq!(body["reason"], case.expect.reason.as_str(), "{}", case.name);
            }
            (other, _) => panic!("{}: expected allowed={}, got {other:?}", case.name, case.expect.allowed),
        }
    }
    server.stop().await;
}
