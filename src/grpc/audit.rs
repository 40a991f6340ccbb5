//! `keyscope.v1.AuditLog`: the audit log of admin changes, authorized on `keyscope.audit`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{auth::admin, convert, pb};
use crate::{
    domain::{Action, InputError, Module, parse_field},
    service::Keyscope,
    store::AuditQuery,
};

/// The AuditLog service over the core.
#[derive(Debug, Clone)]
pub struct AuditLogService {
    core: Arc<Keyscope>,
}

impl AuditLogService {
    /// The service over `core`.
    pub fn new(core: Arc<Keyscope>) -> Self {
        AuditLogService { core }
    }
}

#[tonic::async_trait]
impl pb::audit_log_server::AuditLog for AuditLogService {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = admin(&self.core, &request, &request.get_ref().tenant, Module::audit(), Action::Read).await?;
        let pb::ListAuditEventsRequest {
            tenant: _,
            page_size,
            page_token,
            target_id,
            actor_key_id,
            start_time,
            end_time,
            target_type,
        } = request.into_inner();
        let query = AuditQuery {
            before: convert::page_cursor("page_token", &page_token)?,
            limit: convert::page_size("page_size", page_size)?,
            target: convert::target_filter("target_id", &target_id)?,
            target_type: convert::target_type_filter("target_type", &target_type)?,
            actor: if actor_key_id.is_empty() { None } else { Some(parse_field("actor_key_id", &actor_key_id)?) },
            since: convert::timestamp("start_time", start_time.as_ref())?,
            until: convert::timestamp("end_time", end_time.as_ref())?,
        };
        if let (Some(since), Some(until)) = (query.since, query.until)
            && until < since
        {
            return Err(InputError::invalid("end_time", "must not be before start_time").into());
        }
        let page = self.core.list_audit(&caller, query).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: page.events.iter().map(convert::audit_event_to_pb).collect(),
            next_page_token: page.next.map(|id| convert::page_token(&id.to_string())).unwrap_or_default(),
        }))
    }
}
