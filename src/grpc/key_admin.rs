//! `keyscope.v1.KeyAdmin`: key administration, authorized on `keyscope.keys`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{auth::admin, convert, pb};
use crate::{
    domain::{
        Action, Day, Key, KeyId, KeyState, Module, Secret, parse_cidrs, validate_description,
        validate_max_key_lifetime, validate_owner, validate_scope_ids,
    },
    service::{KeyChanges, Keyscope, NewKey},
    store::KeyQuery,
};

/// A key and its new token: the only answer that ever holds a secret (CreateKey, RotateKey).
fn issued(key: &Key, token: &Secret) -> Response<pb::CreateKeyResponse> {
    Response::new(pb::CreateKeyResponse { key: Some(convert::key_to_pb(key)), token: token.expose().to_owned() })
}

/// The KeyAdmin service over the core.
#[derive(Debug, Clone)]
pub struct KeyAdminService {
    core: Arc<Keyscope>,
}

impl KeyAdminService {
    /// The service over `core`.
    pub fn new(core: Arc<Keyscope>) -> Self {
        KeyAdminService { core }
    }

    async fn set_state(
        &self,
        request: Request<pb::KeyStateRequest>,
        target: KeyState,
    ) -> Result<Response<pb::Key>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::keys(), Action::Update).await?;
        let pb::KeyStateRequest { tenant: _, id, version } = request.into_inner();
        let id: KeyId = convert::required("id", &id)?;
        let version = (version != 0).then_some(version);
        let key = self.core.set_key_state(&caller, &id, version, target).await?;
        Ok(Response::new(convert::key_to_pb(&key)))
    }
}

const UPDATE_PATHS: &[&str] =
    &["description", "owner", "scope_ids", "expires_at", "metadata", "allowed_cidrs", "rate_limit"];

#[tonic::async_trait]
impl pb::key_admin_server::KeyAdmin for KeyAdminService {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::keys(), Action::Create).await?;
        let pb::CreateKeyRequest {
            tenant: _,
            description,
            owner,
            scope_ids,
            expires_at,
            metadata,
            allowed_cidrs,
            rate_limit,
        } = request.into_inner();
        validate_description("description", &description)?;
        validate_owner("owner", &owner)?;
        let new = NewKey {
            scope_ids: validate_scope_ids("scope_ids", &scope_ids)?,
            expires_at: convert::timestamp("expires_at", expires_at.as_ref())?,
            metadata: convert::metadata("metadata", &metadata)?,
            description,
            owner,
            allowed_cidrs: parse_cidrs("allowed_cidrs", &allowed_cidrs)?,
            rate_limit: convert::rate_limit("rate_limit", rate_limit.as_ref())?,
        };
        let (key, token) = self.core.create_key(&caller, new).await?;
        Ok(issued(&key, &token))
    }

    async fn get_key(&self, request: Request<pb::GetKeyRequest>) -> Result<Response<pb::Key>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::keys(), Action::Read).await?;
        let pb::GetKeyRequest { tenant: _, id } = request.into_inner();
        let key = self.core.get_key(&caller, &convert::required("id", &id)?).await?;
        Ok(Response::new(convert::key_to_pb(&key)))
    }

    async fn list_keys(&self, request: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::keys(), Action::Read).await?;
        let pb::ListKeysRequest { tenant: _, page_size, page_token, owner, scope_id, state, unused_since } =
            request.into_inner();
        validate_owner("owner", &owner)?;
        let query = KeyQuery {
            after: convert::page_cursor("page_token", &page_token)?,
            limit: convert::page_size("page_size", page_size)?,
            owner: if owner.is_empty() { None } else { Some(owner) },
            scope: if scope_id.is_empty() { None } else { Some(convert::required("scope_id", &scope_id)?) },
            state: convert::state_filter("state", state)?,
            unused_since: convert::timestamp("unused_since", unused_since.as_ref())?,
        };
        let page = self.core.list_keys(&caller, query).await?;
        let next_page_token = match (page.more, page.items.last()) {
            (true, Some(last)) => convert::page_token(last.id.as_str()),
            _ => String::new(),
        };
        let keys = page.items.iter().map(|k| convert::key_to_pb(k)).collect();
        Ok(Response::new(pb::ListKeysResponse { keys, next_page_token }))
    }

    async fn update_key(&self, request: Request<pb::UpdateKeyRequest>) -> Result<Response<pb::Key>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::keys(), Action::Update).await?;
        let pb::UpdateKeyRequest {
            tenant: _,
            id,
            version,
            update_mask,
            description,
            owner,
            scope_ids,
            expires_at,
            metadata,
            allowed_cidrs,
            rate_limit,
        } = request.into_inner();
        let id: KeyId = convert::required("id", &id)?;
        if version == 0 {
            return Err(crate::domain::InputError::invalid(
                "version",
                "is required: the version the change is based on",
            )
            .into());
        }
        let mut changes = KeyChanges::default();
        for path in convert::mask("update_mask", update_mask.as_ref(), UPDATE_PATHS)? {
            match path {
                "description" => {
                    validate_description("description", &description)?;
                    changes.description = Some(description.clone());
                }
                "owner" => {
                    validate_owner("owner", &owner)?;
                    changes.owner = Some(owner.clone());
                }
                "scope_ids" => changes.scope_ids = Some(validate_scope_ids("scope_ids", &scope_ids)?),
                "expires_at" => changes.expires_at = Some(convert::timestamp("expires_at", expires_at.as_ref())?),
                "metadata" => changes.metadata = Some(convert::metadata("metadata", &metadata)?),
                "allowed_cidrs" => changes.allowed_cidrs = Some(parse_cidrs("allowed_cidrs", &allowed_cidrs)?),
                "rate_limit" => changes.rate_limit = Some(convert::rate_limit("rate_limit", rate_limit.as_ref())?),
                // `mask` admits only UPDATE_PATHS, all handled above.
                _ => {}
            }
        }
        let key = self.core.update_key(&caller, &id, version, changes).await?;
        Ok(Response::new(convert::key_to_pb(&key)))
    }

    async fn disable_key(&self, request: Request<pb::KeyStateRequest>) -> Result<Response<pb::Key>, Status> {
        self.set_state(request, KeyState::Disabled).await
    }

    async fn enable_key(&self, request: Request<pb::KeyStateRequest>) -> Result<Response<pb::Key>, Status> {
        self.set_state(request, KeyState::Active).await
    }

    async fn revoke_key(&self, request: Request<pb::KeyStateRequest>) -> Result<Response<pb::Key>, Status> {
        self.set_state(request, KeyState::Revoked).await
    }

    async fn get_key_usage(
        &self,
        request: Request<pb::GetKeyUsageRequest>,
    ) -> Result<Response<pb::GetKeyUsageResponse>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::keys(), Action::Read).await?;
        let pb::GetKeyUsageRequest { tenant: _, id, start_date, end_date } = request.into_inner();
        let id: KeyId = convert::required("id", &id)?;
        let start: Option<Day> = convert::optional("start_date", &start_date)?;
        let end: Option<Day> = convert::optional("end_date", &end_date)?;
        let usage = self.core.key_usage(&caller, &id, start, end).await?;
        Ok(Response::new(convert::usage_to_pb(&usage)))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::keys(), Action::Update).await?;
        let pb::RotateKeyRequest { tenant: _, id, grace, expected_version } = request.into_inner();
        let id: KeyId = convert::required("id", &id)?;
        // The core checks the grace period's range (it names `grace`).
        let grace = convert::duration("grace", grace.as_ref())?.unwrap_or_default();
        let version = (expected_version != 0).then_some(expected_version);
        let (key, token) = self.core.rotate_key(&caller, &id, grace, version).await?;
        Ok(issued(&key, &token))
    }

    async fn set_tenant_policy(
        &self,
        request: Request<pb::SetTenantPolicyRequest>,
    ) -> Result<Response<pb::TenantPolicy>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::keys(), Action::Update).await?;
        let pb::SetTenantPolicyRequest { tenant: _, max_key_lifetime, expected_version } = request.into_inner();
        let max = convert::duration("max_key_lifetime", max_key_lifetime.as_ref())?
            .map(|d| validate_max_key_lifetime("max_key_lifetime", d))
            .transpose()?;
        let version = (expected_version != 0).then_some(expected_version);
        let policy = self.core.set_tenant_policy(&caller, max, version).await?;
        Ok(Response::new(convert::policy_to_pb(&policy)))
    }

    async fn get_tenant_policy(
        &self,
        request: Request<pb::GetTenantPolicyRequest>,
    ) -> Result<Response<pb::TenantPolicy>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::keys(), Action::Read).await?;
        let policy = self.core.get_tenant_policy(&caller).await?;
        Ok(Response::new(convert::policy_to_pb(&policy)))
    }
}
