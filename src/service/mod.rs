//! The use cases of keyscope: checks, key usage, key and scope administration with admin
//! authorization, and the audit log of admin changes. Async because the store is; every rule it applies comes from
//! [`crate::domain`]. Transport-neutral: gRPC (and later Envoy) call in here.

mod admin;
mod audit;
mod bootstrap;
mod builtins;
mod check;
mod http;
mod invariant;
mod keys;
mod policy;
mod principals;
mod ratelimit;
mod rotation;
mod scopes;
mod usage;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

pub use admin::Caller;
pub use audit::{AUDIT_DETACHED_IDS_MAX, AUDIT_MAX_EVENTS_DEFAULT};
pub use bootstrap::Bootstrap;
pub use builtins::{Builtins, Preset};
pub use check::{CheckAnswer, Explain, Presented, decision_name};
pub use http::{
    HttpMapping, HttpRequestView, Mapped, PathRefusal, PrincipalHeaders, Route, Unmapped, default_methods,
    route_prefix_problem,
};
pub use keys::{KeyChanges, NewKey};
pub use principals::PrincipalCredential;
pub use ratelimit::{RateLimiter, RateLimiterSettings};
pub use scopes::{ScopeChanges, ScopeDraft, inline_scope};
pub use usage::{DEFAULT_USAGE_DAYS, KeyUsage, UsageRecorder, UsageSettings};

use crate::{
    domain::{InputError, Pepper, RandomError, TokenFormat},
    store::{Store, StoreError},
};

/// Everything a use case can fail with. `grpc::status` maps each variant to a gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request field is invalid or over its limit.
    #[error(transparent)]
    Input(#[from] InputError),
    /// No admin credential, or one that does not authenticate.
    #[error("{0}")]
    Unauthenticated(String),
    /// The admin credential is valid but not allowed this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The named key or scope does not exist (in the tenant).
    #[error("{0}")]
    NotFound(String),
    /// The target is in a state that forbids the change (builtin scope, revoked key, in use).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Concurrent writers kept changing the target; the client may retry.
    #[error("{0}")]
    Aborted(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The OS random source failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The calling admin key's rate limit is reached; retry after the duration.
    #[error("{0}")]
    RateLimited(String, Duration),
}

/// Refuses a change asked at version `expected` (when given) of a record now at `found`: a
/// version conflict on `what`.
fn at_version(what: impl FnOnce() -> String, expected: Option<u64>, found: u64) -> Result<(), ServiceError> {
    match expected {
        Some(expected) if expected != found => {
            Err(StoreError::VersionConflict { what: what(), expected, found }.into())
        }
        _ => Ok(()),
    }
}

/// Where "now" comes from; tests use a clock they move by hand.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that stands still until moved; for tests.
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<SystemTime>);

impl ManualClock {
    /// A clock reading `at`.
    pub fn new(at: SystemTime) -> Self {
        ManualClock(std::sync::Mutex::new(at))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Per-tenant quotas.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// Most keys a tenant may hold.
    pub max_keys_per_tenant: usize,
    /// Most stored scopes a tenant may hold (builtins not counted).
    pub max_scopes_per_tenant: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas { max_keys_per_tenant: 100_000, max_scopes_per_tenant: 1_000 }
    }
}

/// keyscope's use cases over one store.
pub struct Keyscope {
    store: Arc<dyn Store>,
    builtins: Builtins,
    tokens: TokenFormat,
    pepper: Pepper,
    quotas: Quotas,
    /// How many audit events each tenant's log keeps.
    audit_max_events: usize,
    clock: Arc<dyn Clock>,
    usage: Arc<UsageRecorder>,
    usage_settings: UsageSettings,
    /// The maximum key lifetime of tenants with no stored policy.
    default_max_key_lifetime: Option<Duration>,
    /// This replica's rate-limit buckets.
    rate_limiter: RateLimiter,
}

impl std::fmt::Debug for Keyscope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyscope").field("tokens", &self.tokens).field("quotas", &self.quotas).finish_non_exhaustive()
    }
}

impl Keyscope {
    /// Use cases over `store`, with the builtin scopes, token format and pepper of the
    /// deployment.
    pub fn new(store: Arc<dyn Store>, builtins: Builtins, tokens: TokenFormat, pepper: Pepper) -> Self {
        Keyscope {
            store,
            builtins,
            tokens,
            pepper,
            quotas: Quotas::default(),
            clock: Arc::new(SystemClock),
            usage: Arc::new(UsageRecorder::new()),
            usage_settings: UsageSettings::default(),
            audit_max_events: AUDIT_MAX_EVENTS_DEFAULT,
            default_max_key_lifetime: None,
            rate_limiter: RateLimiter::new(RateLimiterSettings::default()),
        }
    }

    /// Replaces how many audit events each tenant's log keeps (`audit.max_events_per_tenant`).
    pub fn with_audit_retention(mut self, max_events_per_tenant: usize) -> Self {
        self.audit_max_events = max_events_per_tenant.max(1);
        self
    }

    /// Replaces the per-tenant quotas.
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// Replaces the rate limiter's settings (`rate_limit.*`).
    pub fn with_rate_limiter(mut self, settings: RateLimiterSettings) -> Self {
        self.rate_limiter = RateLimiter::new(settings);
        self
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The token format of this deployment.
    pub fn tokens(&self) -> &TokenFormat {
        &self.tokens
    }

    /// The builtin scopes of every tenant.
    pub fn builtins(&self) -> &Builtins {
        &self.builtins
    }

    /// Whether the store answers now; readiness follows it.
    pub async fn store_ready(&self) -> bool {
        self.store.ping().await.is_ok()
    }
}

/// A page of a listing and whether more follow.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items, in id order.
    pub items: Vec<T>,
    /// Whether a next page exists (its cursor is the last item's id).
    pub more: bool,
}

impl<T> Page<T> {
    /// Cuts `items` (fetched with one extra) to `limit`.
    fn cut(mut items: Vec<T>, limit: usize) -> Self {
        let more = items.len() > limit;
        items.truncate(limit);
        Page { items, more }
    }
}

/// How many times a read-modify-write is retried when a concurrent writer got in first.
const RETRIES: usize = 5;
