//! Scopes: named sets of patterns per action, in allow or deny mode.

use std::time::SystemTime;

use super::{
    action::Action,
    error::{InputError, parse_field},
    ids::{Label, Pattern, ScopeId, Tenant},
    limits,
};

/// How a scope's rules are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeMode {
    /// Grants exactly what the rules list.
    Allow,
    /// Denies what the rules list and grants every other ordinary module.
    Deny,
}

impl ScopeMode {
    /// The lowercase name, as in config and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeMode::Allow => "allow",
            ScopeMode::Deny => "deny",
        }
    }
}

/// Patterns per action; each list is sorted and free of duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    by_action: [Vec<Pattern>; 4],
}

impl Rules {
    /// Validates raw patterns per action, in the order of [`Action::ALL`]. Field names are
    /// the action names (`read[2]`); callers add their own prefix with [`InputError::within`].
    pub fn parse<S: AsRef<str>>(raw: [&[S]; 4]) -> Result<Rules, InputError> {
        let mut rules = Rules::default();
        for (action, patterns) in Action::ALL.into_iter().zip(raw) {
            let field = action.as_str();
            InputError::check_count(field, patterns.len(), limits::PATTERNS_PER_RULE_MAX)?;
            let list = &mut rules.by_action[action.index()];
            for (i, raw) in patterns.iter().enumerate() {
                let pattern: Pattern = parse_field(&format!("{field}[{i}]"), raw.as_ref())?;
                if list.contains(&pattern) {
                    return Err(InputError::invalid(format!("{field}[{i}]"), format!("`{pattern}` is listed twice")));
                }
                list.push(pattern);
            }
            list.sort();
        }
        Ok(rules)
    }

    /// Rules from already valid patterns, e.g. for the builtin scopes.
    pub fn from_patterns(by_action: [Vec<Pattern>; 4]) -> Rules {
        let mut rules = Rules { by_action };
        for list in &mut rules.by_action {
            list.sort();
            list.dedup();
        }
        rules
    }

    /// The patterns listed under an action.
    pub fn patterns(&self, action: Action) -> &[Pattern] {
        &self.by_action[action.index()]
    }

    /// Whether no action lists anything.
    pub fn is_empty(&self) -> bool {
        self.by_action.iter().all(Vec::is_empty)
    }
}

/// A scope as stored. Builtin scopes are locked: they cannot be updated or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Unique within the tenant.
    pub id: ScopeId,
    /// The tenant it belongs to.
    pub tenant: Tenant,
    /// Unique per tenant, case-insensitively.
    pub label: Label,
    /// Free text, at most [`limits::DESCRIPTION_MAX`] bytes.
    pub description: String,
    /// Allow or deny.
    pub mode: ScopeMode,
    /// Patterns per action.
    pub rules: Rules,
    /// Locked: a builtin or an operator's preset.
    pub builtin: bool,
    /// Grows by one with every change, from 1.
    pub version: u64,
    /// When it was made.
    pub created_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
}

impl Scope {
    /// Whether this scope denies `module` for `action` (its mode is deny and a pattern matches).
    pub fn denies(&self, module: &super::Module, action: Action) -> bool {
        self.mode == ScopeMode::Deny && self.rules.patterns(action).iter().any(|p| p.matches(module))
    }

    /// Whether this scope grants `module` for `action`, explicitly (allow mode) or implicitly
    /// (deny mode, not listed). Reserved modules are granted only by a pattern naming them.
    pub fn grants(&self, module: &super::Module, action: Action) -> bool {
        match self.mode {
            ScopeMode::Allow => self.rules.patterns(action).iter().any(|p| p.grants(module)),
            ScopeMode::Deny => !module.is_reserved() && !self.denies(module, action),
        }
    }
}
