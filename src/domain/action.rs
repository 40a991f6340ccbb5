//! The four actions a scope grants or denies.

use std::fmt;

use super::error::Problem;

/// An operation on a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Create.
    Create,
    /// Read.
    Read,
    /// Update.
    Update,
    /// Delete.
    Delete,
}

impl Action {
    /// Every action, in rule order.
    pub const ALL: [Action; 4] = [Action::Create, Action::Read, Action::Update, Action::Delete];

    /// The lowercase name used in rules, messages and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Read => "read",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }

    /// Position in [`Action::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Action {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        Action::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| {
            Problem::new(format!("`{}` is not one of create, read, update, delete", super::ids::shorten(s)))
        })
    }
}
