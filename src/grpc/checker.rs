//! `keyscope.v1.Checker`: Check and BatchCheck.

use std::{sync::Arc, time::Instant};

use tonic::{Request, Response, Status};

use super::{
    convert,
    pb::{self, batch_check_request, check_request},
};
use crate::{
    domain::{InputError, Module, Tenant, limits, parse_field, parse_source_address},
    service::{CheckAnswer, Keyscope, Presented, PrincipalCredential},
    telemetry::{CheckPath, CheckTracer, Metrics, propagation, spans},
};

/// The service name in spans.
const SERVICE: &str = "keyscope.v1.Checker";

/// The Checker service over the core.
#[derive(Debug, Clone)]
pub struct CheckerService {
    core: Arc<Keyscope>,
    metrics: Arc<Metrics>,
    tracer: CheckTracer,
}

impl CheckerService {
    /// The service over `core`, counting into `metrics`, tracing with `tracer`.
    pub fn new(core: Arc<Keyscope>, metrics: Arc<Metrics>, tracer: CheckTracer) -> Self {
        CheckerService { core, metrics, tracer }
    }
}

fn missing_credential() -> InputError {
    InputError::invalid("credential", "set `token`, `key_pair` or `principal`")
}

/// A bearer principal credential; it names no tenant, so the request must.
fn principal(raw: pb::Principal, tenant: Option<Tenant>) -> Result<(Tenant, PrincipalCredential), InputError> {
    let pb::Principal { subject, roles } = raw;
    let tenant = tenant.ok_or_else(|| InputError::invalid("tenant", "is required with a `principal` credential"))?;
    Ok((tenant, PrincipalCredential::parse("principal", &subject, &roles)?))
}

fn pair(pair: pb::KeyPair) -> Presented {
    let pb::KeyPair { key_id, secret } = pair;
    Presented::Pair { key_id, secret }
}

fn tenant(raw: &str) -> Result<Option<Tenant>, InputError> {
    if raw.is_empty() { Ok(None) } else { parse_field("tenant", raw).map(Some) }
}

/// The optional source address of a check (empty: not given).
fn source(raw: &str) -> Result<Option<std::net::IpAddr>, InputError> {
    if raw.is_empty() { Ok(None) } else { parse_source_address("source_address", raw).map(Some) }
}

#[tonic::async_trait]
impl pb::checker_server::Checker for CheckerService {
    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let started = Instant::now();
        let trace = self.tracer.start("check", (SERVICE, "Check"), || propagation::from_metadata(request.metadata()));
        let answer = spans::within(trace.as_ref(), self.answer(request.into_inner())).await;
        spans::end(trace, answer.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok));
        self.metrics.check_time(CheckPath::Native, started.elapsed());
        match &answer {
            Ok(a) => self.metrics.check_answered(CheckPath::Native, a.reason),
            Err(status) => self.metrics.check_failed(CheckPath::Native, status.code()),
        }
        answer.map(|a| Response::new(convert::answer_to_pb(a)))
    }

    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let started = Instant::now();
        let trace = self
            .tracer
            .start("batch_check", (SERVICE, "BatchCheck"), || propagation::from_metadata(request.metadata()));
        let answers = spans::within(trace.as_ref(), self.answer_batch(request.into_inner())).await;
        spans::end(trace, answers.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok));
        self.metrics.check_time(CheckPath::Batch, started.elapsed());
        match &answers {
            Ok(answers) => {
                for a in answers {
                    self.metrics.check_answered(CheckPath::Batch, a.reason);
                }
            }
            Err(status) => self.metrics.check_failed(CheckPath::Batch, status.code()),
        }
        answers.map(|a| {
            let results = a.into_iter().map(convert::answer_to_pb).collect();
            Response::new(pb::BatchCheckResponse { results })
        })
    }
}

impl CheckerService {
    async fn answer(&self, request: pb::CheckRequest) -> Result<CheckAnswer, Status> {
        let pb::CheckRequest { credential, tenant: raw_tenant, module, action, explain, source_address } = request;
        let module: Module = convert::required("module", &module)?;
        let action = convert::action("action", action)?;
        let tenant = tenant(&raw_tenant)?;
        let source = source(&source_address)?;
        let presented = match credential.ok_or_else(missing_credential)? {
            check_request::Credential::Token(token) => Presented::Token(token),
            check_request::Credential::KeyPair(p) => pair(p),
            check_request::Credential::Principal(p) => {
                let (tenant, credential) = principal(p, tenant)?;
                let mut answers = self.core.check_principal(&tenant, &credential, &[(module, action)], explain).await?;
                // INVARIANT: one answer per item, and there is one item.
                return answers.pop().ok_or_else(|| Status::internal("no answer"));
            }
        };
        Ok(self.core.check_from(&presented, tenant.as_ref(), source, &module, action, explain).await?)
    }

    async fn answer_batch(&self, request: pb::BatchCheckRequest) -> Result<Vec<CheckAnswer>, Status> {
        let pb::BatchCheckRequest { credential, tenant: raw_tenant, items, explain, source_address } = request;
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
        let source = source(&source_address)?;
        let presented = match credential.ok_or_else(missing_credential)? {
            batch_check_request::Credential::Token(token) => Presented::Token(token),
            batch_check_request::Credential::KeyPair(p) => pair(p),
            batch_check_request::Credential::Principal(p) => {
                let (tenant, credential) = principal(p, tenant)?;
                return Ok(self.core.check_principal(&tenant, &credential, &items, explain).await?);
            }
        };
        Ok(self.core.batch_check_from(&presented, tenant.as_ref(), source, &items, explain).await?)
    }
}
