//! `keyscope.v1.ScopeAdmin`: scope administration, authorized on `keyscope.scopes`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{auth::admin, convert, pb};
use crate::{
    domain::{Action, InputError, Label, Module, ScopeId, limits, parse_field, parse_names, validate_description},
    service::{Keyscope, ScopeChanges, ScopeDraft, inline_scope},
};

/// The ScopeAdmin service over the core.
#[derive(Debug, Clone)]
pub struct ScopeAdminService {
    core: Arc<Keyscope>,
}

impl ScopeAdminService {
    /// The service over `core`.
    pub fn new(core: Arc<Keyscope>) -> Self {
        ScopeAdminService { core }
    }
}

const UPDATE_PATHS: &[&str] = &["label", "description", "mode", "rules"];

fn scope_response(scope: &crate::domain::Scope) -> Response<pb::Scope> {
    Response::new(convert::scope_to_pb(scope))
}

#[tonic::async_trait]
impl pb::scope_admin_server::ScopeAdmin for ScopeAdminService {
    async fn create_scope(&self, request: Request<pb::CreateScopeRequest>) -> Result<Response<pb::Scope>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::scopes(), Action::Create).await?;
        let pb::CreateScopeRequest { tenant: _, label, description, mode, rules } = request.into_inner();
        validate_description("description", &description)?;
        let draft = ScopeDraft {
            label: convert::required("label", &label)?,
            description,
            mode: convert::mode("mode", mode)?,
            rules: convert::rules("rules", rules.as_ref())?,
        };
        let scope = self.core.create_scope(&caller, draft).await?;
        Ok(scope_response(&scope))
    }

    async fn get_scope(&self, request: Request<pb::GetScopeRequest>) -> Result<Response<pb::Scope>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::scopes(), Action::Read).await?;
        let pb::GetScopeRequest { tenant: _, id } = request.into_inner();
        let scope = self.core.get_scope(&caller, &convert::required("id", &id)?).await?;
        Ok(scope_response(&scope))
    }

    async fn list_scopes(
        &self,
        request: Request<pb::ListScopesRequest>,
    ) -> Result<Response<pb::ListScopesResponse>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::scopes(), Action::Read).await?;
        let pb::ListScopesRequest { tenant: _, page_size, page_token } = request.into_inner();
        let after: Option<ScopeId> = convert::page_cursor("page_token", &page_token)?;
        let limit = convert::page_size("page_size", page_size)?;
        let page = self.core.list_scopes(&caller, after.as_ref(), limit).await?;
        let next_page_token = match (page.more, page.items.last()) {
            (true, Some(last)) => convert::page_token(last.id.as_str()),
            _ => String::new(),
        };
        let scopes = page.items.iter().map(convert::scope_to_pb).collect();
        Ok(Response::new(pb::ListScopesResponse { scopes, next_page_token }))
    }

    async fn update_scope(&self, request: Request<pb::UpdateScopeRequest>) -> Result<Response<pb::Scope>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::scopes(), Action::Update).await?;
        let pb::UpdateScopeRequest { tenant: _, id, version, update_mask, label, description, mode, rules } =
            request.into_inner();
        let id: ScopeId = convert::required("id", &id)?;
        if version == 0 {
            return Err(InputError::invalid("version", "is required: the version the change is based on").into());
        }
        let mut changes = ScopeChanges::default();
        for path in convert::mask("update_mask", update_mask.as_ref(), UPDATE_PATHS)? {
            match path {
                "label" => changes.label = Some(convert::required("label", &label)?),
                "description" => {
                    validate_description("description", &description)?;
                    changes.description = Some(description.clone());
                }
                "mode" => changes.mode = Some(convert::mode("mode", mode)?),
                "rules" => changes.rules = Some(convert::rules("rules", rules.as_ref())?),
                // `mask` admits only UPDATE_PATHS, all handled above.
                _ => {}
            }
        }
        let scope = self.core.update_scope(&caller, &id, version, changes).await?;
        Ok(scope_response(&scope))
    }

    async fn delete_scope(
        &self,
        request: Request<pb::DeleteScopeRequest>,
    ) -> Result<Response<pb::DeleteScopeResponse>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::scopes(), Action::Delete).await?;
        let pb::DeleteScopeRequest { tenant: _, id, force, version } = request.into_inner();
        let id: ScopeId = convert::required("id", &id)?;
        let detached = self.core.delete_scope(&caller, &id, force, (version != 0).then_some(version)).await?;
        Ok(Response::new(pb::DeleteScopeResponse {
            detached_key_ids: detached.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn clone_scope(&self, request: Request<pb::CloneScopeRequest>) -> Result<Response<pb::Scope>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::scopes(), Action::Create).await?;
        let pb::CloneScopeRequest { tenant: _, id, label, description } = request.into_inner();
        let id: ScopeId = convert::required("id", &id)?;
        let label: Label = convert::required("label", &label)?;
        validate_description("description", &description)?;
        let description = (!description.is_empty()).then_some(description);
        let scope = self.core.clone_scope(&caller, &id, label, description).await?;
        Ok(scope_response(&scope))
    }

    async fn evaluate_scopes(
        &self,
        request: Request<pb::EvaluateScopesRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::scopes(), Action::Read).await?;
        let pb::EvaluateScopesRequest { tenant: _, scope_ids, inline_scopes, module, action } = request.into_inner();
        let module: Module = convert::required("module", &module)?;
        let action = convert::action("action", action)?;
        InputError::check_count("scope_ids", scope_ids.len(), limits::EVALUATE_SCOPE_IDS_MAX)?;
        InputError::check_count("inline_scopes", inline_scopes.len(), limits::EVALUATE_INLINE_MAX)?;
        let ids = scope_ids
            .iter()
            .enumerate()
            .map(|(i, id)| parse_field(&format!("scope_ids[{i}]"), id))
            .collect::<Result<Vec<ScopeId>, InputError>>()?;
        let mut inline = Vec::with_capacity(inline_scopes.len());
        for (i, scope) in inline_scopes.iter().enumerate() {
            let at = |e: InputError| e.within(&format!("inline_scopes[{i}]"));
            let id: ScopeId = convert::required("id", &scope.id).map_err(at)?;
            let label: Option<Label> =
                if scope.label.is_empty() { None } else { Some(parse_field("label", &scope.label).map_err(at)?) };
            let mode = convert::mode("mode", scope.mode).map_err(at)?;
            let rules = convert::rules("rules", scope.rules.as_ref()).map_err(at)?;
            inline.push(inline_scope(&caller, id, label, mode, rules).map_err(at)?);
        }
        let (reason, ids, message) = self.core.evaluate_scopes(&caller, &ids, inline, &module, action).await?;
        Ok(Response::new(pb::CheckResponse {
            allowed: reason == crate::domain::Reason::Ok,
            reason: convert::reason_to_pb(reason).into(),
            key_id: String::new(),
            tenant: caller.tenant.to_string(),
            owner: String::new(),
            scope_ids: ids.iter().map(ToString::to_string).collect(),
            message,
            retry_after: None,
            subject: String::new(),
        }))
    }

    async fn set_scope_members(
        &self,
        request: Request<pb::SetScopeMembersRequest>,
    ) -> Result<Response<pb::ScopeMembers>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::scopes(), Action::Update).await?;
        let pb::SetScopeMembersRequest { tenant: _, scope_id, subjects, roles, version } = request.into_inner();
        let id: ScopeId = convert::required("scope_id", &scope_id)?;
        let subjects = parse_names("subjects", &subjects, limits::MEMBER_SUBJECTS_MAX)?;
        let roles = parse_names("roles", &roles, limits::MEMBER_ROLES_MAX)?;
        let members = self.core.set_scope_members(&caller, &id, subjects, roles, version).await?;
        Ok(Response::new(convert::members_to_pb(&id, &members)))
    }

    async fn get_scope_members(
        &self,
        request: Request<pb::GetScopeMembersRequest>,
    ) -> Result<Response<pb::ScopeMembers>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::scopes(), Action::Read).await?;
        let pb::GetScopeMembersRequest { tenant: _, scope_id } = request.into_inner();
        let id: ScopeId = convert::required("scope_id", &scope_id)?;
        let members = self.core.get_scope_members(&caller, &id).await?;
        Ok(Response::new(convert::members_to_pb(&id, &members)))
    }
}
