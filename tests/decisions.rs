//! The public decision cases of the decision rules, run three ways: through the pure core,
//! through `ScopeAdmin.EvaluateScopes` with inline scopes, and through `Checker.Check` on
//! real keys holding stored scopes, over a real socket.

#![allow(clippy::panic)] // tests fail by panicking

mod common;
#[path = "common/fixtures.rs"]
mod fixtures;

use std::{collections::BTreeMap, time::SystemTime};

use common::TestServer;
use fixtures::{Case, CaseScope};
use keyscope::{
    domain::{Action, Module, Rules, Scope, ScopeId, ScopeMode, Tenant, evaluate},
    grpc::pb,
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
