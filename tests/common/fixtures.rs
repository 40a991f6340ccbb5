//! Loads the public decision cases of the decision rules (`tests/fixtures/decisions.yaml`).
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Cases {
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    pub scopes: Vec<CaseScope>,
    pub check: CaseCheck,
    pub expect: Expect,
}

#[derive(Debug, Deserialize)]
pub struct CaseScope {
    pub id: String,
    pub mode: String,
    #[serde(default)]
    pub rules: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct CaseCheck {
    pub module: String,
    pub action: String,
}

#[derive(Debug, Deserialize)]
pub struct Expect {
    pub allowed: bool,
    pub reason: String,
    pub scopes: Vec<String>,
}

impl CaseScope {
    /// Patterns in the order create, read, update, delete.
    pub fn patterns(&self) -> [Vec<String>; 4] {
        let get = |a: &str| self.rules.get(a).cloned().unwrap_or_default();
        for key in self.rules.keys() {
            assert!(["create", "read", "update", "delete"].contains(&key.as_str()), "unknown action {key} in fixture");
        }
        [get("create"), get("read"), get("update"), get("delete")]
    }
}

pub fn load() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/decisions.yaml");
    let text = std::fs::read_to_string(path).expect("read decisions.yaml");
    let cases: Cases = serde_yaml_ng::from_str(&text).expect("parse decisions.yaml");
    assert!(cases.cases.len() >= 28, "expected the public decision cases, got {}", cases.cases.len());
    cases.cases
}

/// The cases with owners, member bindings and bearer principals
/// (`tests/fixtures/principal_decisions.yaml`).
#[derive(Debug, Deserialize)]
pub struct PrincipalCases {
    pub cases: Vec<PrincipalCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalCase {
    pub name: String,
    #[serde(default)]
    pub scopes: Vec<CaseScope>,
    #[serde(default)]
    pub members: Vec<CaseMembers>,
    #[serde(default)]
    pub principals: Vec<CasePrincipal>,
    pub key: Option<CaseKey>,
    pub principal: Option<CaseBearer>,
    pub check: CaseCheck,
    pub expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseMembers {
    pub scope: String,
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasePrincipal {
    pub subject: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// `enabled` (the default), `disabled` or `deleted`.
    #[serde(default = "enabled")]
    pub state: String,
}

fn enabled() -> String {
    "enabled".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseKey {
    pub scopes: Vec<String>,
    #[serde(default)]
    pub owner: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseBearer {
    pub subject: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

impl PrincipalCase {
    /// The ids of the scopes bound to `subject`, to any of `roles`, or to any role of the
    /// registered (not deleted) principal of that subject: sorted, distinct.
    pub fn bound(&self, subject: &str, roles: &[String]) -> Vec<String> {
        let mut held: Vec<&String> = roles.iter().collect();
        if let Some(p) = self.principals.iter().find(|p| p.subject == subject && p.state != "deleted") {
            held.extend(&p.roles);
        }
        let mut ids: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.subjects.iter().any(|s| s == subject) || m.roles.iter().any(|r| held.contains(&r)))
            .map(|m| m.scope.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The registered principal of `subject`, if the case has one.
    pub fn registered(&self, subject: &str) -> Option<&CasePrincipal> {
        self.principals.iter().find(|p| p.subject == subject)
    }
}

pub fn load_principal_cases() -> Vec<PrincipalCase> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/principal_decisions.yaml");
    let text = std::fs::read_to_string(path).expect("read principal_decisions.yaml");
    let cases: PrincipalCases = serde_yaml_ng::from_str(&text).expect("parse principal_decisions.yaml");
    assert!(cases.cases.len() >= 20, "expected the principal decision cases, got {}", cases.cases.len());
    for case in &cases.cases {
        assert!(case.key.is_some() != case.principal.is_some(), "{}: a key or a principal", case.name);
    }
    cases.cases
}
