//! The check path: credential -> key -> state -> scopes -> answer. A denial is an answer;
//! only a store that cannot answer is an error, and then nothing is allowed.

use std::{net::IpAddr, sync::Arc, time::Duration};

use opentelemetry::KeyValue;
use tracing::{Instrument, field::Empty};

use super::{Keyscope, ServiceError, principals::Ceiling};
use crate::domain::{
    Action, Decision, Key, KeyId, Module, Reason, Scope, ScopeId, Tenant, Token, evaluate, key_status, source_allowed,
};
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
    fn wants(self, reason: Reason) -> bool {
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
    /// The key's tenant, once its secret is verified.
    pub tenant: Option<Tenant>,
    /// The key's owner, once its secret is verified.
    pub owner: String,
    /// The deciding scopes, sorted.
    pub scope_ids: Vec<ScopeId>,
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

/// A key whose secret is verified, with its scopes resolved.
#[derive(Debug, Clone)]
pub(super) struct Holder {
    pub key: Arc<Key>,
    pub scopes: Vec<Arc<Scope>>,
    /// Scope ids the key names that exist neither in the store nor among the builtins; they
    /// deny everything (fail closed).
    pub missing: Vec<ScopeId>,
}

/// How a credential resolved: a verified key, or the reason it was refused.
pub(super) enum Resolved {
    Holder(Holder),
    /// `verified`: the key's tenant when its secret was verified (the refusal is then a use
    /// of the key, counted as denied).
    Refused {
        reason: Reason,
        key_id: Option<KeyId>,
        verified: Option<Tenant>,
    },
}

impl Resolved {
    /// Counts this resolution's `allowed` and `denied` answers as a use of the key, when the
    /// key was verified.
    pub(super) fn note_use(&self, core: &Keyscope, allowed: u64, denied: u64) {
        match self {
            Resolved::Holder(holder) => core.note_use(&holder.key.tenant, &holder.key.id, allowed, denied),
            Resolved::Refused { key_id: Some(id), verified: Some(tenant), .. } => {
                core.note_use(tenant, id, 0, allowed + denied)
            }
            Resolved::Refused { .. } => {}
        }
    }
}

impl Holder {
    /// Decides one module and action by this key's scopes (the later checks follow in
    /// [`Keyscope::later_checks`]).
    pub fn decide(&self, module: &Module, action: Action, explain: Explain) -> CheckAnswer {
        let scopes: Vec<&Scope> = self.scopes.iter().map(Arc::as_ref).collect();
        let (reason, scope_ids, message) = if self.missing.is_empty() {
            let decision = evaluate(&scopes, module, action);
            explained(&decision, module, action, explain)
        } else {
            let message = if explain.wants(Reason::DeniedByScope) {
                format!("scope `{}` of the key no longer exists; the key is denied everything", self.missing[0])
            } else {
                String::new()
            };
            (Reason::DeniedByScope, self.missing.clone(), message)
        };
        CheckAnswer {
            reason,
            key_id: Some(self.key.id.clone()),
            tenant: Some(self.key.tenant.clone()),
            owner: self.key.owner.clone(),
            scope_ids,
            message,
            retry_after: None,
            subject: String::new(),
        }
    }

    /// An allowed `answer` of this key, bounded by its owner's `ceiling` (a denial is returned
    /// as it is: the owner only ever takes away).
    pub fn cap(
        &self,
        ceiling: &Ceiling,
        mut answer: CheckAnswer,
        module: &Module,
        action: Action,
        explain: Explain,
    ) -> CheckAnswer {
        if answer.allowed()
            && let Some((reason, scope_ids, message)) = ceiling.bound(&self.key.owner, module, action, explain)
        {
            answer.reason = reason;
            answer.scope_ids = scope_ids;
            answer.message = message;
        }
        answer
    }
}

/// The reason, the deciding scope ids and, when `explain` wants it, the message of a decision.
pub(super) fn explained(
    decision: &Decision<'_>,
    module: &Module,
    action: Action,
    explain: Explain,
) -> (Reason, Vec<ScopeId>, String) {
    let ids = decision.deciding.iter().map(|s| s.id.clone()).collect();
    let message = if explain.wants(decision.reason) { decision.message(module, action) } else { String::new() };
    (decision.reason, ids, message)
}

fn refused(reason: Reason, key_id: Option<KeyId>, explain: Explain) -> CheckAnswer {
    let message = if explain.wants(reason) { refusal_message(reason) } else { String::new() };
    CheckAnswer {
        reason,
        key_id,
        tenant: None,
        owner: String::new(),
        scope_ids: Vec::new(),
        message,
        retry_after: None,
        subject: String::new(),
    }
}

fn refusal_message(reason: Reason) -> String {
    match reason {
        Reason::MalformedCredential => "the credential is not a well-formed keyscope token",
        Reason::UnknownKey => "unknown key or wrong secret",
        Reason::KeyRevoked => "the key is revoked",
        Reason::KeyDisabled => "the key is disabled",
        Reason::KeyExpired => "the key has expired",
        Reason::TenantMismatch => "the key belongs to another tenant",
        other => other.as_str(),
    }
    .to_owned()
}

impl Keyscope {
    /// Parses, looks up and verifies a credential, then applies the key state checks.
    pub(super) async fn resolve(
        &self,
        presented: &Presented,
        tenant: Option<&Tenant>,
    ) -> Result<Resolved, ServiceError> {
        let parsed = match presented {
            Presented::Token(text) => self.tokens.parse(text),
            Presented::Pair { key_id, secret } => self.tokens.parse_pair(key_id, secret),
        };
        let Ok(token) = parsed else {
            return Ok(Resolved::Refused { reason: Reason::MalformedCredential, key_id: None, verified: None });
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
            return Ok(Resolved::Refused { reason: Reason::UnknownKey, key_id: Some(key_id.clone()), verified: None });
        }
        let Some(credential) = credential else {
            return Ok(Resolved::Refused { reason: Reason::UnknownKey, key_id: Some(key_id.clone()), verified: None });
        };
        if let Some(reason) = key_status(&credential.key, now, tenant) {
            let verified = Some(credential.key.tenant.clone());
            return Ok(Resolved::Refused { reason, key_id: Some(key_id.clone()), verified });
        }
        Ok(Resolved::Holder(self.holder(credential.key, credential.scopes)))
    }

    /// The owner ceiling of a verified key when its scopes allowed something (`needed`): the
    /// owner is a later check, so a denied request costs no owner read.
    pub(super) async fn ceiling_if(&self, holder: &Holder, needed: bool) -> Result<Ceiling, ServiceError> {
        if needed { self.ceiling(&holder.key).await } else { Ok(Ceiling::None) }
    }

    /// Resolves a key's scope ids against the builtins and the stored scopes given.
    pub(super) fn holder(&self, key: Arc<Key>, stored: Vec<Arc<Scope>>) -> Holder {
        let mut scopes = Vec::with_capacity(key.scope_ids.len());
        let mut missing = Vec::new();
        for (id, scope) in key.scope_ids.iter().zip(self.resolve_ids(&key.scope_ids, &stored)) {
            match scope {
                Some(scope) => scopes.push(scope),
                None => missing.push(id.clone()),
            }
        }
        Holder { key, scopes, missing }
    }

    /// Each of `ids` as a builtin or one of the `stored` scopes; `None` where it is neither.
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
        let resolved = self.resolve(presented, tenant).instrument(span.clone()).await?;
        let answer = match &resolved {
            Resolved::Refused { reason, key_id, .. } => refused(*reason, key_id.clone(), explain),
            Resolved::Holder(holder) => {
                let by_scopes = holder.decide(module, action, explain);
                let ceiling = self.ceiling_if(holder, by_scopes.allowed()).await?;
                self.later_checks(holder, &ceiling, source, by_scopes, module, action, explain)
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
        let resolved = self.resolve(presented, tenant).instrument(span.clone()).await?;
        let (credential, answers): (Reason, Vec<CheckAnswer>) = match &resolved {
            Resolved::Refused { reason, key_id, .. } => {
                (*reason, items.iter().map(|_| refused(*reason, key_id.clone(), explain)).collect())
            }
            Resolved::Holder(holder) => {
                let by_scopes: Vec<CheckAnswer> = items.iter().map(|(m, a)| holder.decide(m, *a, explain)).collect();
                let ceiling = self.ceiling_if(holder, by_scopes.iter().any(CheckAnswer::allowed)).await?;
                let answers = by_scopes.into_iter().zip(items).map(|(answer, (module, action))| {
                    self.later_checks(holder, &ceiling, source, answer, module, *action, explain)
                });
                (Reason::Ok, answers.collect())
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

impl Keyscope {
    /// The checks of the decision rules that follow the key's scopes, for an `answer` they gave, in
    /// order: the owner `ceiling`, then the key's own limits ([`Keyscope::key_limits`]).
    #[allow(clippy::too_many_arguments)] // one check's full context
    pub(super) fn later_checks(
        &self,
        holder: &Holder,
        ceiling: &Ceiling,
        source: Option<IpAddr>,
        answer: CheckAnswer,
        module: &Module,
        action: Action,
        explain: Explain,
    ) -> CheckAnswer {
        let answer = holder.cap(ceiling, answer, module, action, explain);
        if !answer.allowed() {
            return answer;
        }
        match self.key_limits(&holder.key, source, explain) {
            None => answer,
            Some(Limited { reason, message, retry_after }) => {
                CheckAnswer { reason, scope_ids: Vec::new(), message, retry_after, ..answer }
            }
        }
    }

    /// The key's own limits on a check that everything else allows, in order: its source
    /// networks, then its rate limit (last, so that a denied check spends no quota). `None`
    /// when the check is within them (it has then spent one check of the rate limit).
    pub(super) fn key_limits(&self, key: &Key, source: Option<IpAddr>, explain: Explain) -> Option<Limited> {
        if !source_allowed(&key.allowed_cidrs, source) {
            let message = if !explain.wants(Reason::SourceNotAllowed) {
                String::new()
            } else if let Some(source) = source {
                format!("the key may not be used from {source}")
            } else {
                "the key allows only some source addresses and the check gave none".to_owned()
            };
            return Some(Limited { reason: Reason::SourceNotAllowed, message, retry_after: None });
        }
        let wait = self.rate_limiter.acquire(&key.id, key.rate_limit?, std::time::Instant::now()).err()?;
        let message = if explain.wants(Reason::RateLimited) {
            format!("the key's rate limit is reached; retry after {} ms", wait.as_millis().max(1))
        } else {
            String::new()
        };
        Some(Limited { reason: Reason::RateLimited, message, retry_after: Some(wait) })
    }
}

/// A check refused by the key's own limits.
pub(super) struct Limited {
    pub reason: Reason,
    pub message: String,
    /// With [`Reason::RateLimited`]: when the limit admits one more check.
    pub retry_after: Option<Duration>,
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
