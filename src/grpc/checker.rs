//! `keyscope.v1.Checker`: Check and BatchCheck.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    convert,
    pb::{self, batch_check_request, check_request},
};
use crate::{
    domain::{InputError, Module, Tenant, limits, parse_field},
    service::{Keyscope, Presented},
};

/// The Checker service over the core.
#[derive(Debug, Clone)]
pub struct CheckerService {
    core: Arc<Keyscope>,
}

impl CheckerService {
    /// The service over `core`.
    pub fn new(core: Arc<Keyscope>) -> Self {
        CheckerService { core }
    }
}

fn missing_credential() -> InputError {
    InputError::invalid("credential", "set `token` or `key_pair`")
}

fn pair(pair: pb::KeyPair) -> Presented {
    let pb::KeyPair { key_id, secret } = pair;
    Presented::Pair { key_id, secret }
}

fn tenant(raw: &str) -> Result<Option<Tenant>, InputError> {
    if raw.is_empty() { Ok(None) } else { parse_field("tenant", raw).map(Some) }
}

#[tonic::async_trait]
impl pb::checker_server::Checker for CheckerService {
    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let pb::CheckRequest { credential, tenant: raw_tenant, module, action, explain } = request.into_inner();
        let module: Module = convert::required("module", &module)?;
        let action = convert::action("action", action)?;
        let tenant = tenant(&raw_tenant)?;
        let presented = match credential.ok_or_else(missing_credential)? {
            check_request::Credential::Token(token) => Presented::Token(token),
            check_request::Credential::KeyPair(p) => pair(p),
        };
        let answer = self.core.check(&presented, tenant.as_ref(), &module, action, explain).await?;
        Ok(Response::new(convert::answer_to_pb(answer)))
    }

    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let pb::BatchCheckRequest { credential, tenant: raw_tenant, items, explain } = request.into_inner();
        if items.is_empty() {
            return Err(InputError::invalid("items", "at least one item is required").into());
        }
        InputError::check_count("items", items.len(), limits::BATCH_ITEMS_MAX)?;
        let items = items
            .iter()
            .enumerate()
            .map(|(i, pb::CheckItem { module, action })| {
                let at = |e: InputError| e.within(&format!("items[{i}]"));
                Ok((convert::required("module", module).map_err(at)?, convert::action("action", *action).map_err(at)?))
            })
            .collect::<Result<Vec<_>, InputError>>()?;
        let tenant = tenant(&raw_tenant)?;
        let presented = match credential.ok_or_else(missing_credential)? {
            batch_check_request::Credential::Token(token) => Presented::Token(token),
            batch_check_request::Credential::KeyPair(p) => pair(p),
        };
        let answers = self.core.batch_check(&presented, tenant.as_ref(), &items, explain).await?;
        let results = answers.into_iter().map(convert::answer_to_pb).collect();
        Ok(Response::new(pb::BatchCheckResponse { results }))
    }
}
