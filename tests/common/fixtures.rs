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
