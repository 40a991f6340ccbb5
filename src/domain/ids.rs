//! Validated names: an invalid tenant, module, pattern or id cannot exist past the edge.

use std::{fmt, str::FromStr, sync::Arc};

use super::{error::Problem, limits};

/// Prefix of the reserved modules that administer keyscope itself.
pub const RESERVED_ROOT: &str = "keyscope";

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn is_base62(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// An isolated namespace: `^[a-z0-9][a-z0-9-]{0,62}$`. `system` is the reserved admin tenant.
    Tenant
);
string_newtype!(
    /// An area of the caller's API: lowercase segments `[a-z0-9][a-z0-9_-]*` joined by `.`.
    Module
);
string_newtype!(
    /// A key's public id: 20 base62 characters.
    KeyId
);
string_newtype!(
    /// A scope's id: `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$` (`scp_...` when generated).
    ScopeId
);
string_newtype!(
    /// A scope's label, unique per tenant case-insensitively.
    Label
);

impl Tenant {
    /// The reserved tenant whose admin keys may act in every tenant.
    pub const SYSTEM: &'static str = "system";

    /// The `system` tenant.
    pub fn system() -> Self {
        Tenant(Arc::from(Self::SYSTEM))
    }

    /// Whether this is the reserved `system` tenant.
    pub fn is_system(&self) -> bool {
        &*self.0 == Self::SYSTEM
    }
}

impl FromStr for Tenant {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= limits::TENANT_MAX
            && is_lower_alnum(b[0])
            && b.iter().all(|&c| is_lower_alnum(c) || c == b'-');
        if !ok {
            return Err(Problem::new(format!("`{}` is not a tenant name (^[a-z0-9][a-z0-9-]{{0,62}}$)", shorten(s))));
        }
        Ok(Tenant(Arc::from(s)))
    }
}

fn valid_segment(seg: &[u8]) -> bool {
    !seg.is_empty() && is_lower_alnum(seg[0]) && seg.iter().all(|&c| is_lower_alnum(c) || c == b'_' || c == b'-')
}

impl Module {
    /// The key administration module.
    pub fn keys() -> Self {
        Module(Arc::from("keyscope.keys"))
    }

    /// The scope administration module.
    pub fn scopes() -> Self {
        Module(Arc::from("keyscope.scopes"))
    }

    /// The audit log module.
    pub fn audit() -> Self {
        Module(Arc::from("keyscope.audit"))
    }

    /// Every reserved module keyscope knows today.
    pub fn reserved_known() -> [Module; 4] {
        [Module::keys(), Module::scopes(), Module::audit(), Module::principals()]
    }

    /// The principal administration module.
    pub fn principals() -> Self {
        Module(Arc::from("keyscope.principals"))
    }

    /// Whether the module administers keyscope (`keyscope` or below it).
    pub fn is_reserved(&self) -> bool {
        is_reserved_name(&self.0)
    }

    /// A module name that no pattern names exactly: it stands for "any other module" below
    /// `parent` (or at the top when `parent` is `None`) when sets of patterns are compared.
    pub(crate) fn unnamed_below(parent: Option<&str>) -> Self {
        // INVARIANT: `~` never passes validation, so this module cannot collide with a real one.
        match parent {
            Some(p) => Module(Arc::from(format!("{p}.~"))),
            None => Module(Arc::from("~")),
        }
    }
}

fn is_reserved_name(name: &str) -> bool {
    name == RESERVED_ROOT || name.strip_prefix(RESERVED_ROOT).is_some_and(|rest| rest.starts_with('.'))
}

impl FromStr for Module {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        let ok =
            !s.is_empty() && s.len() <= limits::MODULE_MAX && s.as_bytes().split(|&c| c == b'.').all(valid_segment);
        if !ok {
            return Err(Problem::new(format!(
                "`{}` is not a module name (lowercase segments [a-z0-9][a-z0-9_-]* joined by `.`, at most {} characters)",
                shorten(s),
                limits::MODULE_MAX
            )));
        }
        Ok(Module(Arc::from(s)))
    }
}

/// What a rule lists: one module, every ordinary module, or every module below a name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// `*`: every module (reserved ones only when denying).
    Any,
    /// An exact module name.
    Exact(Module),
    /// `NAME.*`: every module below `NAME.`, not `NAME` itself.
    Below(Module),
}

impl Pattern {
    /// Whether the pattern matches the module, ignoring the reserved-module rule.
    pub fn matches(&self, module: &Module) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(m) => m == module,
            Pattern::Below(parent) => {
                module.as_str().strip_prefix(parent.as_str()).is_some_and(|rest| rest.starts_with('.'))
            }
        }
    }

    /// Whether an allow-mode rule with this pattern may grant `module`: `*` never grants a
    /// reserved module, only a pattern that names one does.
    pub fn grants(&self, module: &Module) -> bool {
        match self {
            Pattern::Any => !module.is_reserved(),
            _ => self.matches(module),
        }
    }

    /// Whether the pattern names reserved modules (`keyscope.keys`, `keyscope.*`, ...).
    pub fn is_reserved(&self) -> bool {
        match self {
            Pattern::Any => false,
            Pattern::Exact(m) | Pattern::Below(m) => m.is_reserved(),
        }
    }

    /// Modules that tell apart every set of modules this pattern can match: the module it
    /// names, or one unnamed module below it.
    pub(crate) fn witnesses(&self) -> Vec<Module> {
        match self {
            Pattern::Any => vec![Module::unnamed_below(None), Module::unnamed_below(Some(RESERVED_ROOT))],
            Pattern::Exact(m) => vec![m.clone()],
            Pattern::Below(m) => vec![m.clone(), Module::unnamed_below(Some(m.as_str()))],
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::Exact(m) => f.write_str(m.as_str()),
            Pattern::Below(m) => write!(f, "{m}.*"),
        }
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({self})")
    }
}

impl FromStr for Pattern {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        if s == "*" {
            return Ok(Pattern::Any);
        }
        let bad = || {
            Problem::new(format!(
                "`{}` is not a pattern (a module name, `*`, or `NAME.*`, at most {} characters)",
                shorten(s),
                limits::MODULE_MAX
            ))
        };
        if s.len() > limits::MODULE_MAX {
            return Err(bad());
        }
        match s.strip_suffix(".*") {
            Some(parent) => parent.parse().map(Pattern::Below).map_err(|_| bad()),
            None => s.parse().map(Pattern::Exact).map_err(|_| bad()),
        }
    }
}

impl KeyId {
    /// Length of every key id.
    pub const LEN: usize = 20;

    pub(crate) fn from_generated(s: String) -> Self {
        KeyId(Arc::from(s))
    }
}

impl FromStr for KeyId {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        if s.len() != Self::LEN || !s.bytes().all(is_base62) {
            // The value is not echoed: a caller who pastes a whole token here must not see it
            // come back in an error that may be logged.
            return Err(Problem::new(format!(
                "not a key id ({} base62 characters; got {} characters)",
                Self::LEN,
                s.chars().count()
            )));
        }
        Ok(KeyId(Arc::from(s)))
    }
}

impl ScopeId {
    /// Prefix of generated scope ids.
    pub const GENERATED_PREFIX: &'static str = "scp_";

    /// A fresh random id: `scp_` and 20 base62 characters.
    pub fn generate() -> Result<Self, super::token::RandomError> {
        let tail = super::token::random_base62(20)?;
        Ok(ScopeId(Arc::from(format!("{}{tail}", Self::GENERATED_PREFIX))))
    }
}

impl FromStr for ScopeId {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= limits::SCOPE_ID_MAX
            && is_base62(b[0])
            && b.iter().all(|&c| is_base62(c) || c == b'_' || c == b'-')
            && longest_alnum_run(s) <= ALNUM_RUN_MAX;
        if !ok {
            // Scope ids are echoed in later messages, so one that could hold a secret (a long
            // run of letters and digits, as in a pasted token) is refused here.
            return Err(Problem::new(format!(
                "`{}` is not a scope id (^[A-Za-z0-9][A-Za-z0-9_-]{{0,63}}$, at most {ALNUM_RUN_MAX} letters and digits in a row)",
                shorten(s)
            )));
        }
        Ok(ScopeId(Arc::from(s)))
    }
}

impl Label {
    /// The form labels are compared in: lowercase.
    pub fn folded(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl FromStr for Label {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= limits::LABEL_MAX
            && b[0].is_ascii_alphanumeric()
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b' ' | b'_' | b'.' | b'-'));
        if !ok {
            return Err(Problem::new(format!(
                "`{}` is not a label (1 to {} characters: letters, digits, space, `_`, `.`, `-`, starting with a letter or digit)",
                shorten(s),
                limits::LABEL_MAX
            )));
        }
        Ok(Label(Arc::from(s)))
    }
}

/// Longest run of letters and digits that rejected input may have and still be echoed, and
/// that a scope id may hold: key ids and generated scope ids have 20; a secret has 22 or more.
const ALNUM_RUN_MAX: usize = 20;

fn longest_alnum_run(s: &str) -> usize {
    s.split(|c: char| !c.is_ascii_alphanumeric()).map(str::len).max().unwrap_or(0)
}

/// [`shorten`] as a value to format: nothing is computed unless it is formatted (a check
/// that explains nothing pays nothing).
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(&'a str);

/// `s` as an error message or a log line may show it (see [`shorten`]).
pub fn shown(s: &str) -> Shown<'_> {
    Shown(s)
}

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&shorten(self.0))
    }
}

/// Input as an error message or a log line may show it: the one helper for every echo of
/// text a caller sent (or stored, like a subject or an owner). Any run of more than 20 letters
/// and digits may be a secret (a keyscope secret has 28 with its checksum) and is replaced by
/// `…`, so a pasted keyscope token shows only its prefix and key id (`ks_<key id>_…`); the
/// rest is cut at 64 characters, with control characters escaped, so the text stays one
/// short line whatever was sent.
pub fn shorten(s: &str) -> String {
    // Each shown character, `None` for a hidden run.
    let mut shown: Vec<Option<char>> = Vec::with_capacity(s.len().min(128));
    let mut run: Vec<char> = Vec::new();
    let flush = |run: &mut Vec<char>, shown: &mut Vec<Option<char>>| {
        if run.len() > ALNUM_RUN_MAX {
            shown.push(None);
        } else {
            shown.extend(run.iter().copied().map(Some));
        }
        run.clear();
    };
    for c in s.chars() {
        if shown.len() > 64 {
            // Cut: a run still being read is dropped whole (part of a secret is not shown).
            run.clear();
            break;
        }
        if c.is_ascii_alphanumeric() {
            run.push(c);
        } else {
            flush(&mut run, &mut shown);
            shown.push(Some(c));
        }
    }
    flush(&mut run, &mut shown);
    let mut out = String::new();
    for piece in shown.iter().take(64) {
        match piece {
            Some(c) => out.extend(c.escape_default()),
            None => out.push('…'),
        }
    }
    if shown.len() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_follow_the_spec() {
        assert!("acme-1".parse::<Tenant>().is_ok());
        assert!("a".repeat(63).parse::<Tenant>().is_ok());
        for bad in ["", "-acme", "Acme", "acme_1", &"a".repeat(64), "a b"] {
            assert!(bad.parse::<Tenant>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn module_names_are_dotted_lowercase_segments() {
        for good in ["courses", "course-dates", "billing.invoices", "a_b.c-d.e9"] {
            assert!(good.parse::<Module>().is_ok(), "{good}");
        }
        for bad in ["", ".a", "a.", "a..b", "Courses", "a.*", "_a", &"a".repeat(129)] {
            assert!(bad.parse::<Module>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns_parse_star_exact_and_below() {
        assert_eq!("*".parse::<Pattern>(), Ok(Pattern::Any));
        assert!(matches!("billing.*".parse::<Pattern>(), Ok(Pattern::Below(m)) if m.as_str() == "billing"));
        assert!(matches!("billing".parse::<Pattern>(), Ok(Pattern::Exact(_))));
        for bad in ["**", "*.billing", "billing.*.*", "billing*", ".*", ""] {
            assert!(bad.parse::<Pattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn star_never_grants_reserved_modules_but_matches_them() {
        let keys = Module::keys();
        assert!(Pattern::Any.matches(&keys));
        assert!(!Pattern::Any.grants(&keys));
        assert!("keyscope.*".parse::<Pattern>().is_ok_and(|p| p.grants(&keys)));
        assert!("keyscopex".parse::<Module>().is_ok_and(|m| !m.is_reserved()));
        assert!("keyscope".parse::<Module>().is_ok_and(|m| m.is_reserved()));
    }

    #[test]
    fn token_shaped_input_is_never_echoed_nor_a_scope_id() {
        let token = "ks_AbCdEfGhIjKlMnOpQrSt_0123456789abcdefghijKLMNOPqr";
        // The key id (20 characters) is shown, never the secret and checksum (28).
        assert_eq!(shorten(token), "ks_AbCdEfGhIjKlMnOpQrSt_…");
        assert_eq!(shorten("0123456789abcdefghijKLMNOPqr"), "…");
        assert_eq!(shorten("user:0123456789abcdefghijKLMNOPqr@example"), "user:…@example");
        let refused = token.parse::<ScopeId>().err().map(|p| p.0).unwrap_or_default();
        assert!(!refused.is_empty() && !refused.contains("0123456789abcdefghij"), "{refused}");
        assert!("scp_AbCdEfGhIjKlMnOpQrSt".parse::<ScopeId>().is_ok());
        assert!(ScopeId::generate().is_ok_and(|id| id.as_str().parse::<ScopeId>().is_ok()));
        assert_eq!(shorten("Bad Module"), "Bad Module");
    }

    #[test]
    fn rejected_input_is_shortened_and_escaped() {
        let long = format!("{}\n", "x-".repeat(50));
        let shown = shorten(&long);
        assert!(shown.ends_with('…'));
        assert!(!shown.contains('\n'));
    }
}
