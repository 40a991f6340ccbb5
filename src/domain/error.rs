//! Input errors: which field was wrong and why, in words a caller can act on.

use std::str::FromStr;

/// Why a single value is not acceptable; the caller adds the field name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem(pub String);

impl Problem {
    /// A problem described in lowercase words, without a final period.
    pub fn new(text: impl Into<String>) -> Self {
        Problem(text.into())
    }
}

/// A request field that cannot be accepted. Nothing is written when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The value is malformed or out of its documented bounds.
    #[error("{field}: {problem}")]
    Invalid {
        /// Path of the field, e.g. `rules.read[2]`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A list or map holds more entries than its documented limit.
    #[error("{field}: at most {limit} allowed, got {got}")]
    TooMany {
        /// Path of the list.
        field: String,
        /// The documented limit.
        limit: usize,
        /// How many the request held.
        got: usize,
    },
}

impl InputError {
    /// An invalid value at `field`.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        InputError::Invalid { field: field.into(), problem: problem.into() }
    }

    /// Fails when `got` exceeds `limit`.
    pub fn check_count(field: &str, got: usize, limit: usize) -> Result<(), InputError> {
        if got > limit {
            return Err(InputError::TooMany { field: field.to_owned(), limit, got });
        }
        Ok(())
    }

    /// The same error seen from an enclosing message: `items[3]` + `module` -> `items[3].module`.
    pub fn within(self, parent: &str) -> Self {
        let join = |field: String| {
            if field.starts_with('[') { format!("{parent}{field}") } else { format!("{parent}.{field}") }
        };
        match self {
            InputError::Invalid { field, problem } => InputError::Invalid { field: join(field), problem },
            InputError::TooMany { field, limit, got } => InputError::TooMany { field: join(field), limit, got },
        }
    }

    /// The field path this error names.
    pub fn field(&self) -> &str {
        match self {
            InputError::Invalid { field, .. } | InputError::TooMany { field, .. } => field,
        }
    }
}

/// Parses `value` as `T`, naming `field` in the error.
pub fn parse_field<T: FromStr<Err = Problem>>(field: &str, value: &str) -> Result<T, InputError> {
    value.parse().map_err(|Problem(problem)| InputError::invalid(field, problem))
}
