//! The locked scopes every tenant has: `full-access`, `read-only`, `admin`, and the
//! operator's presets from config. They are not stored; the service adds them on top.

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use crate::domain::{InputError, Pattern, Rules, Scope, ScopeId, ScopeMode, Tenant, parse_field};

/// A locked scope defined in config (`presets:`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Its id in every tenant.
    pub id: String,
    /// Its label; the id when empty.
    #[serde(default)]
    pub label: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// `allow` or `deny`.
    pub mode: PresetMode,
    /// Patterns per action.
    #[serde(default)]
    pub rules: PresetRules,
}

/// `allow` or `deny`, as written in config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresetMode {
    /// Grants what is listed.
    Allow,
    /// Denies what is listed, grants the rest.
    Deny,
}

/// Patterns per action, as written in config.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetRules {
    /// Patterns for create.
    #[serde(default)]
    pub create: Vec<String>,
    /// Patterns for read.
    #[serde(default)]
    pub read: Vec<String>,
    /// Patterns for update.
    #[serde(default)]
    pub update: Vec<String>,
    /// Patterns for delete.
    #[serde(default)]
    pub delete: Vec<String>,
}

/// The id of the builtin scope that grants every action on `keyscope.*`.
pub const ADMIN: &str = "admin";
/// The id of the builtin scope that grants every action on every ordinary module.
pub const FULL_ACCESS: &str = "full-access";
/// The id of the builtin scope that grants read on every ordinary module.
pub const READ_ONLY: &str = "read-only";

/// The builtin scopes, by id. Their `tenant` is `system`; callers that show one set it.
#[derive(Debug, Clone)]
pub struct Builtins {
    scopes: BTreeMap<ScopeId, Arc<Scope>>,
    folded_labels: Vec<String>,
}

fn template(id: &str, label: &str, description: &str, mode: ScopeMode, rules: Rules) -> Result<Scope, InputError> {
    Ok(Scope {
        id: parse_field("presets.id", id)?,
        tenant: Tenant::system(),
        label: parse_field("presets.label", if label.is_empty() { id } else { label })?,
        description: description.to_owned(),
        mode,
        rules,
        builtin: true,
        version: 1,
        created_at: SystemTime::UNIX_EPOCH,
        updated_at: SystemTime::UNIX_EPOCH,
    })
}

fn every_action(pattern: &str) -> [Vec<Pattern>; 4] {
    let p: Pattern = pattern.parse().expect("INVARIANT: only literal patterns that parse are passed");
    [vec![p.clone()], vec![p.clone()], vec![p.clone()], vec![p]]
}

impl Builtins {
    /// The three builtins plus the operator's presets. A preset may not reuse a builtin's id
    /// or label, nor take a generated id's `scp_` prefix.
    pub fn new(presets: &[Preset]) -> Result<Self, InputError> {
        let mut list = vec![
            template(
                FULL_ACCESS,
                FULL_ACCESS,
                "every action on every ordinary module",
                ScopeMode::Allow,
                Rules::from_patterns(every_action("*")),
            )?,
            template(
                READ_ONLY,
                READ_ONLY,
                "read on every ordinary module",
                ScopeMode::Allow,
                Rules::from_patterns([vec![], vec![Pattern::Any], vec![], vec![]]),
            )?,
            template(
                ADMIN,
                ADMIN,
                "every action on keyscope's own administration (keyscope.*)",
                ScopeMode::Allow,
                Rules::from_patterns(every_action("keyscope.*")),
            )?,
        ];
        for (i, preset) in presets.iter().enumerate() {
            let field = format!("presets[{i}]");
            let r = &preset.rules;
            let rules = Rules::parse([&r.create[..], &r.read[..], &r.update[..], &r.delete[..]])
                .map_err(|e| e.within(&format!("{field}.rules")))?;
            let mode = match preset.mode {
                PresetMode::Allow => ScopeMode::Allow,
                PresetMode::Deny => ScopeMode::Deny,
            };
            let scope = template(&preset.id, &preset.label, &preset.description, mode, rules).map_err(|e| match e {
                InputError::Invalid { field: f, problem } => {
                    InputError::invalid(format!("{field}.{}", f.trim_start_matches("presets.")), problem)
                }
                other => other,
            })?;
            if scope.id.as_str().starts_with(ScopeId::GENERATED_PREFIX) {
                return Err(InputError::invalid(format!("{field}.id"), "must not start with `scp_`"));
            }
            if list.iter().any(|s| s.id == scope.id || s.label.folded() == scope.label.folded()) {
                return Err(InputError::invalid(field, format!("id or label of `{}` is already taken", scope.id)));
            }
            list.push(scope);
        }
        let folded_labels = list.iter().map(|s| s.label.folded()).collect();
        let scopes = list.into_iter().map(|s| (s.id.clone(), Arc::new(s))).collect();
        Ok(Builtins { scopes, folded_labels })
    }

    /// The builtin with this id, if any.
    pub fn get(&self, id: &ScopeId) -> Option<&Arc<Scope>> {
        self.scopes.get(id)
    }

    /// Whether `id` names a builtin.
    pub fn contains(&self, id: &ScopeId) -> bool {
        self.scopes.contains_key(id)
    }

    /// Builtins with ids after `after`, in id order.
    pub fn after<'a>(&'a self, after: Option<&'a ScopeId>) -> impl Iterator<Item = &'a Arc<Scope>> + 'a {
        self.scopes.iter().filter(move |(id, _)| after.is_none_or(|a| *id > a)).map(|(_, s)| s)
    }

    /// The builtins' labels, lowercase: no stored scope may take one.
    pub fn folded_labels(&self) -> &[String] {
        &self.folded_labels
    }

    /// The builtin as seen in `tenant`.
    pub fn in_tenant(scope: &Scope, tenant: &Tenant) -> Scope {
        Scope { tenant: tenant.clone(), ..scope.clone() }
    }
}
