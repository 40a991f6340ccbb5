//! The check path: credential -> key -> state -> scopes -> answer. A denial is an answer;
//! only a store that cannot answer is an error, and then nothing is allowed.

use std::{net::IpAddr, sync::Arc, time::Duration};

use opentelemetry::KeyValue;
use tracing::{Instrument, field::Empty};

use smallvec::SmallVec;

use super::{Builtins, Keyscope, ServiceError, principals::Ceiling};
use crate::domain::{
    Action, Held, Key, KeyCheck, KeyId, Module, OwnerBound, Reason, Scope, ScopeId, ScopeLookup, Tenant, Token, Whose,
    key_status, rate_limited_message, refusal_message,
};
use crate::store::Credential;
use crate::telemetry::annotate;

/// A credential as presented, not yet parsed.
#[derive(Clone, PartialEq, Eq)]
pub enum Presented {
    /// A whole token.
    Token(String),
    /// A key id and the token's last part, presented separately.
    Pair {
        /// The key id.
        key_id: String,
        /// The secret and checksum.
        secret: String,
    },
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Presented([redacted])")
    }
}

/// When an answer carries its one-line message (building it costs an allocation or two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explain {
    /// Never: the hot path.
    Never,
    /// Always (`explain` in the API, EvaluateScopes).
    Always,
    /// Only when the answer is a denial (ext_authz puts it in the deny body).
    Denials,
}

impl Explain {
    pub(super) fn wants(self, reason: Reason) -> bool {
        match self {
            Explain::Never => false,
            Explain::Always => true,
            Explain::Denials => reason != Reason::Ok,
        }
    }
}

impl From<bool> for Explain {
    fn from(explain: bool) -> Self {
        if explain { Explain::Always } else { Explain::Never }
    }
}

/// The answer to one module and action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckAnswer {
    /// Why; only [`Reason::Ok`] allows.
    pub reason: Reason,
    /// The key the credential named, when it was well formed.
    pub key_id: Option<KeyId>,
    /// The key's tenant, once its secret is verified and the key is in good standing.
    pub tenant: Option<Tenant>,
    /// The key's owner, likewise.
    pub owner: String,
    /// The deciding scopes, sorted.
    pub scope_ids: SmallVec<[ScopeId; 2]>,
    /// With [`Explain`]: one human line.
    pub message: String,
    /// With [`Reason::RateLimited`]: how long until the key's limit admits one more check.
    pub retry_after: Option<Duration>,
    /// The subject of a bearer principal credential (empty for a key).
    pub subject: String,
}

impl CheckAnswer {
    /// Whether the check is allowed.
    pub fn allowed(&self) -> bool {
        self.reason == Reason::Ok
    }

    /// `allow` or `deny`, as logs, spans and metrics name it.
    pub fn decision(&self) -> &'static str {
        decision_name(self.allowed())
    }
}

/// `allow` or `deny`: how logs, spans and metrics name a decision.
pub fn decision_name(allowed: bool) -> &'static str {
    if allowed { "allow" } else { "deny" }
}

/// Finds scope ids among the builtins, then among a tenant's stored scopes.
pub(super) struct Lookup<'a> {
    pub builtins: &'a Builtins,
    pub stored: &'a [Arc<Scope>],
}

impl ScopeLookup for Lookup<'_> {
    fn scope(&self, id: &ScopeId) -> Option<&Scope> {
        self.builtins.get(id).or_else(|| self.stored.iter().find(|s| s.id == *id)).map(Arc::as_ref)
    }
}

/// A key whose secret is verified: its record as the store (or the replica cache) holds it.
#[derive(Debug, Clone)]
pub(super) struct Holder {
    pub record: Arc<Credential>,
}

impl Holder {
    /// The key.
    pub fn key(&self) -> &Arc<Key> {
        &self.record.key
    }
}

/// How a credential resolved: a verified key, or the reason it was refused.
pub(super) enum Resolved {
    Holder(Holder),
    Refused { reason: Reason, key_id: Option<KeyId> },
}

impl Resolved {
    /// Counts this resolution's `allowed` and `denied` answers as a use of the key, when the
    /// key was verified.
    pub(super) fn note_use(&self, core: &Keyscope, allowed: u64, denied: u64) {
        if let Resolved::Holder(holder) = self {
            core.note_use(&holder.key().tenant, &holder.key().id, allowed, denied);
        }
    }
}

fn refused(reason: Reason, key_id: Option<KeyId>, explain: Explain) -> CheckAnswer {
    let message = if explain.wants(reason) { refusal_message(reason) } else { String::new() };
    CheckAnswer {
        reason,
        key_id,
        tenant: None,
        owner: String::new(),
        scope_ids: SmallVec::new(),
        message,
        retry_after: None,
        subject: String::new(),
    }
}

impl Keyscope {
    /// Parses, looks up and verifies a credential.
    pub(super) async fn resolve(&self, presented: &Presented) -> Result<Resolved, ServiceError> {
        let parsed = match presented {
            Presented::Token(text) => self.tokens.parse(text),
            Presented::Pair { key_id, secret } => self.tokens.parse_pair(key_id, secret),
        };
        let Ok(token) = parsed else {
            return Ok(Resolved::Refused { reason: Reason::MalformedCredential, key_id: None });
        };
        let Token { key_id, .. } = &token;
        let credential = self.store.credential(key_id).await?;
        let now = self.clock.now();
        let stored = credential.as_ref().map(|c| &c.key.secret_hash);
        // The secret before a rotation, until its grace period ends: a cached record is
        // compared with the time of this check, so it never outlives its end.
        let previous = credential.as_ref().and_then(|c| c.key.previous_hash_at(now));
        // Unknown keys are verified against a decoy hash, so both cost the same; both hashes
        // are always compared, so neither tells which secret was presented.
        if !self.pepper.verify_rotated(&token, stored, previous) {
            return Ok(Resolved::Refused { reason: Reason::UnknownKey, key_id: Some(key_id.clone()) });
        }
        match credential {
            Some(record) => Ok(Resolved::Holder(Holder { record })),
            None => Ok(Resolved::Refused { reason: Reason::UnknownKey, key_id: Some(key_id.clone()) }),
        }
    }

    /// Runs `decide` on everything a check of `holder` is decided on: its record, its
    /// owner's `ceiling`, the time, the tenant the request named and its source.
    pub(super) fn with_key_check<R>(
        &self,
        holder: &Holder,
        ceiling: &Ceiling,
        tenant: Option<&Tenant>,
        source: Option<IpAddr>,
        decide: impl FnOnce(&KeyCheck<'_>) -> R,
    ) -> R {
        let key = &holder.record.key;
        let own = Lookup { builtins: &self.builtins, stored: &holder.record.scopes };
        let bound;
        let owner = match ceiling {
            Ceiling::None => OwnerBound::Unbounded,
            Ceiling::Gone => OwnerBound::Gone,
            Ceiling::Disabled => OwnerBound::Disabled,
            Ceiling::Bound(grants) => {
                bound = Lookup { builtins: &self.builtins, stored: &grants.scopes };
                OwnerBound::Bound(Held { ids: &grants.scope_ids, lookup: &bound })
            }
        };
        let check = KeyCheck {
            key,
            scopes: Held { ids: &key.scope_ids, lookup: &own },
            owner,
            now: self.clock.now(),
            tenant,
            source,
        };
        decide(&check)
    }

    /// Answers one module and action for a verified key: the domain's decision, then (when it
    /// allows) the key's rate limit, last, so that a denied check spends no quota.
    #[allow(clippy::too_many_arguments)] // one check's full context
    pub(super) fn answer_key(
        &self,
        holder: &Holder,
        ceiling: &Ceiling,
        tenant: Option<&Tenant>,
        source: Option<IpAddr>,
        module: &Module,
        action: Action,
        explain: Explain,
    ) -> CheckAnswer {
        let key = holder.key();
        self.with_key_check(holder, ceiling, tenant, source, |check| {
            let decision = check.decide(module, action);
            let (reason, retry_after) = match decision.reason {
                Reason::Ok => match self.rate_limited(key) {
                    Some(wait) => (Reason::RateLimited, Some(wait)),
                    None => (Reason::Ok, None),
                },
                other => (other, None),
            };
            let message = match retry_after {
                Some(wait) if explain.wants(reason) => rate_limited_message(wait),
                _ if explain.wants(reason) => check.explain(&decision, module, action),
                _ => String::new(),
            };
            // A key refused for its state or tenant is not in good standing: the answer names
            // the key only.
            let standing = !(decision.whose == Whose::Credential && reason != Reason::SourceNotAllowed);
            let scope_ids = if retry_after.is_some() { SmallVec::new() } else { decision.scope_ids() };
            CheckAnswer {
                reason,
                key_id: Some(key.id.clone()),
                tenant: standing.then(|| key.tenant.clone()),
                owner: if standing { key.owner.clone() } else { String::new() },
                scope_ids,
                message,
                retry_after,
                subject: String::new(),
            }
        })
    }

    /// How long until the key's rate limit admits one more check, when it is reached now;
    /// otherwise `None`, and one check of the limit is spent.
    pub(super) fn rate_limited(&self, key: &Key) -> Option<Duration> {
        self.rate_limiter.acquire(&key.id, key.rate_limit?, std::time::Instant::now()).err()
    }

    /// Resolves a key's scope ids against the builtins and the stored scopes given; `None`
    /// where an id is neither.
    pub(super) fn resolve_ids(&self, ids: &[ScopeId], stored: &[Arc<Scope>]) -> Vec<Option<Arc<Scope>>> {
        ids.iter().map(|id| self.builtins.get(id).or_else(|| stored.iter().find(|s| s.id == *id)).cloned()).collect()
    }

    /// Answers one check with no source address (see [`Keyscope::check_from`]).
    pub async fn check(
        &self,
        presented: &Presented,
        tenant: Option<&Tenant>,
        module: &Module,
        action: Action,
        explain: impl Into<Explain>,
    ) -> Result<CheckAnswer, ServiceError> {
        self.check_from(presented, tenant, None, module, action, explain).await
    }

    /// Answers one check from `source` (when known), in a `check` span carrying everything
    /// but the credential.
    pub async fn check_from(
        &self,
        presented: &Presented,
        tenant: Option<&Tenant>,
        source: Option<IpAddr>,
        module: &Module,
        action: Action,
        explain: impl Into<Explain>,
    ) -> Result<CheckAnswer, ServiceError> {
        let explain = explain.into();
        // For logs, at `debug`: at the default `info` the log layer skips it altogether
        // (formatting its fields for every check is measurable). The OpenTelemetry span of the
        // check is the edge's; the same facts go to it through `annotate`.
        let span = tracing::debug_span!(
            "check",
            module = %module,
            action = %action,
            tenant = Empty,
            key_id = Empty,
            decision = Empty,
            reason = Empty,
            cache_hit = Empty,
        );
        let resolved = self.resolve(presented).instrument(span.clone()).await?;
        let answer = match &resolved {
            Resolved::Refused { reason, key_id } => refused(*reason, key_id.clone(), explain),
            Resolved::Holder(holder) => {
                let ceiling = self.ceiling(holder.key()).await?;
                self.answer_key(holder, &ceiling, tenant, source, module, action, explain)
            }
        };
        let allowed = u64::from(answer.allowed());
        resolved.note_use(self, allowed, 1 - allowed);
        record(&span, &answer);
        annotate(|| {
            let mut attributes = identity(&answer);
            attributes.extend(decided(module, action, &answer));
            attributes
        });
        span.in_scope(|| tracing::debug!("check answered"));
        Ok(answer)
    }

    /// Answers several checks with no source address (see [`Keyscope::batch_check_from`]).
    pub async fn batch_check(
        &self,
        presented: &Presented,
        tenant: Option<&Tenant>,
        items: &[(Module, Action)],
        explain: impl Into<Explain>,
    ) -> Result<Vec<CheckAnswer>, ServiceError> {
        self.batch_check_from(presented, tenant, None, items, explain).await
    }

    /// Answers several checks for one credential from `source`, resolved once, in one
    /// `batch_check` span. Each allowed item spends one check of the key's rate limit, in order.
    pub async fn batch_check_from(
        &self,
        presented: &Presented,
        tenant: Option<&Tenant>,
        source: Option<IpAddr>,
        items: &[(Module, Action)],
        explain: impl Into<Explain>,
    ) -> Result<Vec<CheckAnswer>, ServiceError> {
        let explain = explain.into();
        let span = tracing::debug_span!(
            "batch_check",
            items = items.len(),
            tenant = Empty,
            key_id = Empty,
            allowed = Empty,
            credential = Empty,
            cache_hit = Empty,
        );
        let resolved = self.resolve(presented).instrument(span.clone()).await?;
        let (credential, answers): (Reason, Vec<CheckAnswer>) = match &resolved {
            Resolved::Refused { reason, key_id } => {
                (*reason, items.iter().map(|_| refused(*reason, key_id.clone(), explain)).collect())
            }
            Resolved::Holder(holder) => {
                let ceiling = self.ceiling(holder.key()).await?;
                let standing = key_status(holder.key(), self.clock.now(), tenant).unwrap_or(Reason::Ok);
                let answers = items
                    .iter()
                    .map(|(module, action)| self.answer_key(holder, &ceiling, tenant, source, module, *action, explain))
                    .collect();
                (standing, answers)
            }
        };
        span.record("credential", credential.as_str());
        if let Some(first) = answers.first() {
            record_identity(&span, first);
        }
        let allowed = answers.iter().filter(|a| a.allowed()).count();
        resolved.note_use(self, allowed as u64, (answers.len() - allowed) as u64);
        span.record("allowed", allowed);
        annotate(|| {
            let mut attributes = answers.first().map(identity).unwrap_or_default();
            attributes.extend([
                KeyValue::new("items", items.len() as i64),
                KeyValue::new("allowed", allowed as i64),
                KeyValue::new("credential", credential.as_str()),
            ]);
            attributes
        });
        span.in_scope(|| tracing::debug!("batch check answered"));
        Ok(answers)
    }
}

/// The span attributes of one decided check: what was asked and the answer.
pub(super) fn decided(module: &Module, action: Action, answer: &CheckAnswer) -> [KeyValue; 4] {
    [
        KeyValue::new("module", module.as_str().to_owned()),
        KeyValue::new("action", action.as_str()),
        KeyValue::new("decision", answer.decision()),
        KeyValue::new("reason", answer.reason.as_str()),
    ]
}

/// The tenant and key id of an answer, as span attributes.
fn identity(answer: &CheckAnswer) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(8);
    if let Some(tenant) = &answer.tenant {
        attributes.push(KeyValue::new("tenant", tenant.as_str().to_owned()));
    }
    if let Some(key_id) = &answer.key_id {
        attributes.push(KeyValue::new("key_id", key_id.as_str().to_owned()));
    }
    attributes
}

fn record(span: &tracing::Span, answer: &CheckAnswer) {
    record_identity(span, answer);
    span.record("decision", answer.decision());
    span.record("reason", answer.reason.as_str());
}

fn record_identity(span: &tracing::Span, answer: &CheckAnswer) {
    if let Some(tenant) = &answer.tenant {
        span.record("tenant", tenant.as_str());
    }
    if let Some(key_id) = &answer.key_id {
        span.record("key_id", key_id.as_str());
    }
}
