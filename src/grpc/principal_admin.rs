//! `keyscope.v1.PrincipalAdmin`: principal administration, authorized on
//! `keyscope.principals`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{auth::admin, convert, pb};
use crate::{
    domain::{Action, InputError, Module, Role, Subject, limits, parse_names},
    service::Keyscope,
};

/// The PrincipalAdmin service over the core.
#[derive(Debug, Clone)]
pub struct PrincipalAdminService {
    core: Arc<Keyscope>,
}

impl PrincipalAdminService {
    /// The service over `core`.
    pub fn new(core: Arc<Keyscope>) -> Self {
        PrincipalAdminService { core }
    }

    async fn set_enabled(
        &self,
        request: Request<pb::PrincipalStateRequest>,
        enabled: bool,
    ) -> Result<Response<pb::RegisteredPrincipal>, Status> {
        let caller =
            admin(&self.core, &request, &request.get_ref().tenant, Module::principals(), Action::Update).await?;
        let pb::PrincipalStateRequest { tenant: _, subject } = request.into_inner();
        let subject: Subject = convert::required("subject", &subject)?;
        let principal = self.core.set_principal_enabled(&caller, &subject, enabled).await?;
        Ok(Response::new(convert::principal_to_pb(&principal)))
    }
}

fn roles(raw: &[String]) -> Result<Vec<Role>, InputError> {
    parse_names("roles", raw, limits::ROLES_PER_PRINCIPAL_MAX)
}

#[tonic::async_trait]
impl pb::principal_admin_server::PrincipalAdmin for PrincipalAdminService {
    async fn upsert_principal(
        &self,
        request: Request<pb::UpsertPrincipalRequest>,
    ) -> Result<Response<pb::RegisteredPrincipal>, Status> {
        let caller =
            admin(&self.core, &request, &request.get_ref().tenant, Module::principals(), Action::Create).await?;
        let pb::UpsertPrincipalRequest { tenant: _, subject, roles: raw_roles, disabled, version } =
            request.into_inner();
        let subject: Subject = convert::required("subject", &subject)?;
        let roles = roles(&raw_roles)?;
        let version = (version != 0).then_some(version);
        let principal = self.core.upsert_principal(&caller, subject, roles, !disabled, version).await?;
        Ok(Response::new(convert::principal_to_pb(&principal)))
    }

    async fn get_principal(
        &self,
        request: Request<pb::GetPrincipalRequest>,
    ) -> Result<Response<pb::RegisteredPrincipal>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::principals(), Action::Read).await?;
        let pb::GetPrincipalRequest { tenant: _, subject } = request.into_inner();
        let principal = self.core.get_principal(&caller, &convert::required("subject", &subject)?).await?;
        Ok(Response::new(convert::principal_to_pb(&principal)))
    }

    async fn list_principals(
        &self,
        request: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListPrincipalsResponse>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::principals(), Action::Read).await?;
        let pb::ListPrincipalsRequest { tenant: _, page_size, page_token } = request.into_inner();
        let after: Option<Subject> =
            convert::page_cursor_within("page_token", &page_token, limits::PRINCIPAL_PAGE_TOKEN_MAX)?;
        let limit = convert::page_size("page_size", page_size)?;
        let page = self.core.list_principals(&caller, after.as_ref(), limit).await?;
        let next_page_token = match (page.more, page.items.last()) {
            (true, Some(last)) => convert::page_token(last.subject.as_str()),
            _ => String::new(),
        };
        let principals = page.items.iter().map(|p| convert::principal_to_pb(p)).collect();
        Ok(Response::new(pb::ListPrincipalsResponse { principals, next_page_token }))
    }

    async fn disable_principal(
        &self,
        request: Request<pb::PrincipalStateRequest>,
    ) -> Result<Response<pb::RegisteredPrincipal>, Status> {
        self.set_enabled(request, false).await
    }

    async fn enable_principal(
        &self,
        request: Request<pb::PrincipalStateRequest>,
    ) -> Result<Response<pb::RegisteredPrincipal>, Status> {
        self.set_enabled(request, true).await
    }

    async fn set_principal_roles(
        &self,
        request: Request<pb::SetPrincipalRolesRequest>,
    ) -> Result<Response<pb::RegisteredPrincipal>, Status> {
        let caller =
            admin(&self.core, &request, &request.get_ref().tenant, Module::principals(), Action::Update).await?;
        let pb::SetPrincipalRolesRequest { tenant: _, subject, roles: raw_roles, version } = request.into_inner();
        let subject: Subject = convert::required("subject", &subject)?;
        let roles = roles(&raw_roles)?;
        if version == 0 {
            return Err(InputError::invalid("version", "is required: the version the change is based on").into());
        }
        let principal = self.core.set_principal_roles(&caller, &subject, roles, version).await?;
        Ok(Response::new(convert::principal_to_pb(&principal)))
    }

    async fn delete_principal(
        &self,
        request: Request<pb::DeletePrincipalRequest>,
    ) -> Result<Response<pb::DeletePrincipalResponse>, Status> {
        let caller =
            admin(&self.core, &request, &request.get_ref().tenant, Module::principals(), Action::Delete).await?;
        let pb::DeletePrincipalRequest { tenant: _, subject, version } = request.into_inner();
        let subject: Subject = convert::required("subject", &subject)?;
        self.core.delete_principal(&caller, &subject, (version != 0).then_some(version)).await?;
        Ok(Response::new(pb::DeletePrincipalResponse {}))
    }
}
