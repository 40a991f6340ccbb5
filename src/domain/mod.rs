//! The pure core of keyscope: names, scopes, the decision, the token format and the audit
//! log's records.
//!
//! Everything here is synchronous and does no I/O (beyond asking the OS for random bytes
//! when a token is made). No tokio, tonic, redis or moka: the service and the stores call
//! into this module, never the other way round.

mod action;
mod audit;
mod check;
mod day;
mod decision;
mod error;
mod ids;
mod invariant;
mod key;
pub mod limits;
mod network;
mod policy;
mod principal;
mod scope;
#[cfg(test)]
pub(crate) mod testing;
mod token;

pub use action::Action;
pub use audit::{
    Actor, AuditEvent, AuditId, AuditOperation, AuditRecord, AuditTarget, REQUEST_ID_MAX, RequestId, millis,
};
pub use check::{
    Held, KeyCheck, OwnerBound, PrincipalCheck, PrincipalState, ScopeLookup, rate_limited_message, refusal_message,
};
pub use day::{Day, LAST_DAY};
pub use decision::{Deciding, Decision, Reason, Whose, describe_module, evaluate};
pub use error::{InputError, Problem, parse_field};
pub use ids::{KeyId, Label, Module, Pattern, ScopeId, Shown, Tenant, shorten as shorten_for_message, shown};
pub use invariant::{
    AccessGraph, Credential, Holding, KeyFacts, Mutation, OwnerCeiling, Registration, Rule, Violation, judge,
};
pub use key::{
    Key, KeyState, Metadata, key_status, validate_description, validate_metadata, validate_owner, validate_scope_ids,
};
pub use key::{PreviousSecret, RateLimit};
pub use network::{parse_cidrs, parse_source_address, source_allowed};
pub use policy::{
    MAX_KEY_LIFETIME_LIMIT, TenantPolicy, check_key_lifetime, format_duration, validate_max_key_lifetime,
};
pub use principal::{Members, Principal, Role, Subject, parse_names};
pub use scope::{Rules, Scope, ScopeMode};
pub use token::{Malformed, Pepper, RandomError, Secret, SecretHash, Token, TokenFormat, TokenSecret};
