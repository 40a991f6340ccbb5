//! Principals (the users or services that own keys, or call with a bearer token) and the
//! member bindings of scopes (which subjects and roles a scope is bound to).
//!
//! Pure data and validation. A principal's own permissions are the scopes bound to its
//! subject or to any of its roles, evaluated with the ordinary decision rules
//! ([`super::evaluate`]: deny wins); the service applies them as the owner ceiling of its keys
//! and to bearer-principal checks.

use std::{fmt, str::FromStr, sync::Arc, time::SystemTime};

use super::{InputError, Problem, Tenant, limits, shorten_for_message};

/// A principal's name in its tenant: 1 to 256 bytes, printable, no whitespace (e.g. a JWT
/// `sub`, an e-mail address, a user id). Compared exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(Arc<str>);

impl Subject {
    /// The subject's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject as messages and logs show it: shortened, since a subject may be a pasted
    /// token ([`super::shown`]).
    pub fn shown(&self) -> super::Shown<'_> {
        super::shown(&self.0)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Subject {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        let ok =
            !s.is_empty() && s.len() <= limits::SUBJECT_MAX && s.chars().all(|c| !c.is_whitespace() && !c.is_control());
        if !ok {
            return Err(Problem::new(format!(
                "`{}` is not a subject (1 to {} bytes, printable, no spaces)",
                shorten_for_message(s),
                limits::SUBJECT_MAX
            )));
        }
        Ok(Subject(Arc::from(s)))
    }
}

/// A role name: `[a-z0-9][a-z0-9_.-]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Role(Arc<str>);

impl Role {
    /// The role's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Role {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        let b = s.as_bytes();
        let lower_alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let ok = !b.is_empty()
            && b.len() <= limits::ROLE_MAX
            && lower_alnum(b[0])
            && b.iter().all(|&c| lower_alnum(c) || matches!(c, b'_' | b'.' | b'-'));
        if !ok {
            return Err(Problem::new(format!(
                "`{}` is not a role name (^[a-z0-9][a-z0-9_.-]{{0,63}}$)",
                shorten_for_message(s)
            )));
        }
        Ok(Role(Arc::from(s)))
    }
}

/// A registered principal of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant.
    pub tenant: Tenant,
    /// Its name, unique in the tenant.
    pub subject: Subject,
    /// Its roles, sorted and distinct (at most [`limits::ROLES_PER_PRINCIPAL_MAX`]).
    pub roles: Vec<Role>,
    /// A disabled principal's keys are denied everything (`OWNER_DISABLED`), and so is the
    /// principal itself as a bearer credential (`PRINCIPAL_DISABLED`).
    pub enabled: bool,
    /// Grows with every change.
    pub version: u64,
    /// When it was registered.
    pub created_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
}

/// The member bindings of one scope: the subjects and roles it is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Subjects, sorted and distinct (at most [`limits::MEMBER_SUBJECTS_MAX`]).
    pub subjects: Vec<Subject>,
    /// Roles, sorted and distinct (at most [`limits::MEMBER_ROLES_MAX`]).
    pub roles: Vec<Role>,
    /// Grows with every change; 0 for a scope never bound.
    pub version: u64,
}

impl Members {
    /// Whether the scope is bound to nobody.
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty() && self.roles.is_empty()
    }

    /// The same bindings with both lists sorted and distinct, as they are kept.
    pub fn normalized(mut self) -> Self {
        self.subjects.sort();
        self.subjects.dedup();
        self.roles.sort();
        self.roles.dedup();
        self
    }
}

/// Parses a list of names of field `field`, at most `limit`, into a sorted, distinct list.
pub fn parse_names<T: FromStr<Err = Problem> + Ord>(
    field: &str,
    values: &[String],
    limit: usize,
) -> Result<Vec<T>, InputError> {
    InputError::check_count(field, values.len(), limit)?;
    let mut out = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        out.push(value.parse::<T>().map_err(|Problem(p)| InputError::invalid(format!("{field}[{i}]"), p))?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_that_is_a_token_is_shown_by_its_key_id_only() {
        let subject: Subject = "ks_AbCdEfGhIjKlMnOpQrSt_0123456789abcdefghijKLMNOPqr".parse().expect("a subject");
        assert_eq!(subject.shown().to_string(), "ks_AbCdEfGhIjKlMnOpQrSt_…");
        let plain: Subject = "alice@example.com".parse().expect("a subject");
        assert_eq!(plain.shown().to_string(), "alice@example.com");
    }

    #[test]
    fn subjects_are_printable_without_spaces_and_bounded() {
        for good in ["alice", "user@example.com", "auth0|123", "ü", &"a".repeat(limits::SUBJECT_MAX)] {
            assert!(good.parse::<Subject>().is_ok(), "{good}");
        }
        for bad in ["", "a b", "tab\t", "nl\n", "\u{7f}", &"a".repeat(limits::SUBJECT_MAX + 1)] {
            assert!(bad.parse::<Subject>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roles_follow_their_pattern() {
        for good in ["admin", "billing.viewer", "a_b-c", "0", &"r".repeat(limits::ROLE_MAX)] {
            assert!(good.parse::<Role>().is_ok(), "{good}");
        }
        for bad in ["", "Admin", "-x", ".x", "a b", "a/b", &"r".repeat(limits::ROLE_MAX + 1)] {
            assert!(bad.parse::<Role>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn name_lists_are_sorted_distinct_bounded_and_name_the_bad_entry() {
        let roles: Vec<Role> = parse_names("roles", &["b".into(), "a".into(), "b".into()], 3).expect("roles");
        assert_eq!(roles.iter().map(Role::as_str).collect::<Vec<_>>(), ["a", "b"]);
        let err = parse_names::<Role>("roles", &["a".into(), "B".into()], 3).expect_err("bad");
        assert_eq!(err.field(), "roles[1]");
        let err = parse_names::<Role>("roles", &vec!["a".to_owned(); 4], 3).expect_err("too many");
        assert!(matches!(err, InputError::TooMany { limit: 3, got: 4, .. }));
    }
}
