//! Admin authorization (README, API section): an admin call is allowed when its bearer key may do
//! the matching action on a reserved module, in its own tenant (or any, for `system` keys).
//! The caller carries the request id its changes are audited under.

use std::sync::Arc;

use super::{
    Explain, Keyscope, Presented, ServiceError,
    check::{CheckAnswer, Holder, Resolved},
    principals::Ceiling,
};
use crate::domain::{Action, InputError, Key, Module, Reason, RequestId, Scope, ScopeId, Tenant, parse_field};

/// An authenticated admin caller and the tenant its call acts in.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The calling key, as it was when the call was authorized.
    pub key: Arc<Key>,
    /// The calling key's scopes, then.
    pub scopes: Vec<Arc<Scope>>,
    /// The scopes bound to the calling key's owner, when the owner is a registered principal
    /// (its ceiling), then: what the caller may hand out is bounded by both. A change is
    /// judged against the key as it is when the change is judged, read again then.
    pub owner_scopes: Option<Vec<Arc<Scope>>>,
    /// The tenant the call acts in: the one the request named, or the key's own.
    pub tenant: Tenant,
    /// The reserved module the call was authorized on: a change made by the call is refused
    /// if, when it is judged, the key no longer holds `action` on it.
    pub module: Module,
    /// The action the call was authorized for.
    pub action: Action,
    /// The id of the request, recorded in the audit events it causes: a fresh one unless
    /// the edge sets the caller's own ([`Caller::with_request_id`]).
    pub request_id: RequestId,
}

impl Caller {
    /// The caller with the request id the client sent, if it is sane (see [`RequestId`]);
    /// otherwise the fresh one stays.
    pub fn with_request_id(mut self, sent: Option<&str>) -> Self {
        if let Some(id) = sent.and_then(RequestId::from_caller) {
            self.request_id = id;
        }
        self
    }
}

const BAD_TOKEN: &str = "missing or invalid admin credential: send `authorization: Bearer <token>`";

impl Keyscope {
    /// Authenticates the bearer token and authorizes `action` on the reserved `module` in
    /// the tenant the request names (`""`: the key's own tenant).
    pub async fn authorize(
        &self,
        bearer: Option<&str>,
        tenant: &str,
        module: &Module,
        action: Action,
    ) -> Result<Caller, ServiceError> {
        self.authorize_from(bearer, None, tenant, module, action).await
    }

    /// [`Keyscope::authorize`] for a call from `source` (the gRPC peer, when known): an admin
    /// call is a check of its key on a reserved module, decided as every check is (state,
    /// scopes, owner, source networks), then its rate limit (a key with networks and no known
    /// source is refused).
    pub async fn authorize_from(
        &self,
        bearer: Option<&str>,
        source: Option<std::net::IpAddr>,
        tenant: &str,
        module: &Module,
        action: Action,
    ) -> Result<Caller, ServiceError> {
        let Some(bearer) = bearer else { return Err(ServiceError::Unauthenticated(BAD_TOKEN.to_owned())) };
        let resolved = self.resolve(&Presented::Token(bearer.to_owned())).await?;
        let outcome = match &resolved {
            Resolved::Holder(holder) => {
                let ceiling = self.ceiling(holder.key()).await?;
                let answer = self.answer_key(holder, &ceiling, None, source, module, action, Explain::Denials);
                self.admit(holder, &ceiling, &answer, tenant, module, action)
            }
            Resolved::Refused { .. } => Err(ServiceError::Unauthenticated(BAD_TOKEN.to_owned())),
        };
        // An admin call is a check of its key on a reserved module: it counts as a use (denied
        // when refused), so an admin key in daily use never looks stale.
        let allowed = u64::from(outcome.is_ok());
        resolved.note_use(self, allowed, 1 - allowed);
        outcome
    }

    /// The caller of an admin call whose key's check gave `answer`, in the tenant named
    /// (`""`: its own); or why it is refused.
    fn admit(
        &self,
        holder: &Holder,
        ceiling: &Ceiling,
        answer: &CheckAnswer,
        tenant: &str,
        module: &Module,
        action: Action,
    ) -> Result<Caller, ServiceError> {
        let key = holder.key();
        match answer.reason {
            Reason::Ok => {}
            // A key that is not in good standing is no admin credential at all.
            Reason::KeyRevoked | Reason::KeyDisabled | Reason::KeyExpired | Reason::TenantMismatch => {
                return Err(ServiceError::Unauthenticated(BAD_TOKEN.to_owned()));
            }
            Reason::RateLimited => {
                let wait = answer.retry_after.unwrap_or_default();
                return Err(ServiceError::RateLimited(format!("key `{}`: {}", key.id, answer.message), wait));
            }
            Reason::SourceNotAllowed => {
                return Err(ServiceError::PermissionDenied(format!("key `{}`: {}", key.id, answer.message)));
            }
            reason => {
                tracing::info!(key_id = %key.id, %module, %action, %reason, "admin call refused");
                return Err(ServiceError::PermissionDenied(format!(
                    "key `{}` is not allowed {action} on `{module}`",
                    key.id
                )));
            }
        }
        let own = &key.tenant;
        let tenant: Tenant = if tenant.is_empty() { own.clone() } else { parse_field("tenant", tenant)? };
        if tenant != *own && !own.is_system() {
            return Err(ServiceError::PermissionDenied(format!(
                "key `{}` of tenant `{own}` may not act in tenant `{tenant}`",
                key.id
            )));
        }
        // The admin call's span (when there is one) names who acted where; never the token.
        let span = tracing::Span::current();
        span.record("tenant", tenant.as_str());
        span.record("actor_key_id", key.id.as_str());
        // Admitted, so any owner ceiling is a registered owner's bound scopes, all of which
        // exist (a deleted or disabled owner, or a missing bound scope, denies everything).
        let owner_scopes = match ceiling {
            Ceiling::Bound(grants) => self.bound_scopes(grants),
            _ => None,
        };
        let scopes = self.resolve_ids(&key.scope_ids, &holder.record.scopes).into_iter().flatten().collect();
        Ok(Caller {
            key: key.clone(),
            scopes,
            owner_scopes,
            tenant,
            module: module.clone(),
            action,
            request_id: RequestId::generate()?,
        })
    }

    /// Looks up scope ids of a tenant, builtins included; `None` where a scope does not exist.
    pub(super) async fn lookup_scopes(
        &self,
        tenant: &Tenant,
        ids: &[ScopeId],
    ) -> Result<Vec<Option<Arc<Scope>>>, ServiceError> {
        let stored = self.store.get_scopes(tenant, &self.stored_ids(ids)).await?;
        Ok(self.resolve_ids(ids, &stored))
    }

    /// Looks up scope ids of the caller's tenant (builtins included), naming the field of
    /// any that does not exist there.
    pub(super) async fn tenant_scopes(
        &self,
        tenant: &Tenant,
        field: &str,
        ids: &[ScopeId],
    ) -> Result<Vec<Arc<Scope>>, ServiceError> {
        let found = self.lookup_scopes(tenant, ids).await?;
        let mut scopes = Vec::with_capacity(ids.len());
        for (i, (id, scope)) in ids.iter().zip(found).enumerate() {
            let scope = scope.ok_or_else(|| {
                InputError::invalid(format!("{field}[{i}]"), format!("no scope `{id}` in tenant `{tenant}`"))
            })?;
            scopes.push(scope);
        }
        Ok(scopes)
    }

    /// The ids among `ids` that are stored rather than builtin.
    pub(super) fn stored_ids(&self, ids: &[ScopeId]) -> Vec<ScopeId> {
        ids.iter().filter(|id| !self.builtins.contains(id)).cloned().collect()
    }
}
