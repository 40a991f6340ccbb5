//! `envoy.service.auth.v3.Authorization/Check`: keyscope as Envoy's external authorization
//! server. The HTTP request is mapped to a check (`service::http`), decided by the same path
//! as `Checker.Check` (same cache, same span), and answered as Envoy expects: an explicit OK
//! status with identity headers for the upstream, or an explicit denial with an HTTP status and
//! a JSON body. When no decision can be made the call fails with `UNAVAILABLE`, so Envoy's
//! `failure_mode_allow` / `status_on_error` apply.

use std::{
    borrow::Cow,
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use envoy_types::{
    ext_authz::v3::{
        CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
        pb::{Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode},
    },
    pb::google::protobuf::{Struct, Value, value::Kind},
};
use opentelemetry::KeyValue;
use tonic::{Request, Response, Status};

use crate::{
    domain::{Action, parse_source_address},
    service::{CheckAnswer, Explain, HttpMapping, HttpRequestView, Keyscope, Mapped, Unmapped, decision_name},
    telemetry::{CheckPath, CheckTracer, Metrics, annotate, propagation, spans},
};

/// Names of the headers keyscope sets for the upstream on an allowed request.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// The key's id (default `x-keyscope-key-id`).
    pub key_id: String,
    /// The key's tenant (default `x-keyscope-tenant`).
    pub tenant: String,
    /// The key's owner (default `x-keyscope-owner`).
    pub owner: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            key_id: "x-keyscope-key-id".into(),
            tenant: "x-keyscope-tenant".into(),
            owner: "x-keyscope-owner".into(),
        }
    }
}

/// How ext_authz answers (config `ext_authz.*`).
#[derive(Debug, Clone, Default)]
pub struct ExtAuthzSettings {
    /// Request -> check mapping.
    pub mapping: HttpMapping,
    /// Identity header names.
    pub identity: IdentityHeaders,
    /// Remove the credential headers (`authorization`, the API-key header) before the request
    /// goes upstream.
    pub strip_credential: bool,
    /// Where a check's source address comes from: 0, the request's source address as Envoy
    /// reports it (`attributes.source.address`); N, the Nth address from the right of
    /// `x-forwarded-for` (1 = the rightmost), as Envoy's `xff_num_trusted_hops` does.
    pub trusted_proxy_hops: u32,
}

/// The ext_authz service over the core.
#[derive(Debug, Clone)]
pub struct ExtAuthzService {
    core: Arc<Keyscope>,
    settings: Arc<ExtAuthzSettings>,
    metrics: Arc<Metrics>,
    tracer: CheckTracer,
}

impl ExtAuthzService {
    /// The service over `core`, counting into `metrics`, tracing with `tracer`.
    pub fn new(core: Arc<Keyscope>, settings: ExtAuthzSettings, metrics: Arc<Metrics>, tracer: CheckTracer) -> Self {
        ExtAuthzService { core, settings: Arc::new(settings), metrics, tracer }
    }
}

/// Prefix of the headers a client must never be able to send upstream itself.
const RESERVED_HEADER_PREFIX: &str = "x-keyscope-";

/// The request's headers, from `headers` and `header_map` together. Envoy sends lowercase
/// names; lookups fall back to a case-insensitive match. Borrowed when there is no
/// `header_map` (the usual case), so the hot path copies nothing.
fn collect_headers(
    http: &envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest,
) -> Cow<'_, HashMap<String, String>> {
    let Some(map) = &http.header_map else { return Cow::Borrowed(&http.headers) };
    let mut headers: HashMap<String, String> =
        http.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
    for h in &map.headers {
        let value =
            if h.value.is_empty() { String::from_utf8_lossy(&h.raw_value).into_owned() } else { h.value.clone() };
        headers.entry(h.key.to_ascii_lowercase()).or_insert(value);
    }
    Cow::Owned(headers)
}

/// `dynamic_metadata` for Envoy's access log: string fields.
fn metadata(fields: &[(&str, &str)]) -> Struct {
    let text = |v: &str| Value { kind: Some(Kind::StringValue(v.to_owned())) };
    Struct { fields: fields.iter().map(|(k, v)| ((*k).to_owned(), text(v))).collect() }
}

/// The span attributes of a request answered before any check (no route, no credential...).
fn decided(allowed: bool, reason: &'static str) -> Vec<KeyValue> {
    vec![KeyValue::new("decision", decision_name(allowed)), KeyValue::new("reason", reason)]
}

/// 401 for credential problems, 429 for a rate limit, 403 for everything else.
fn http_status(reason: &str) -> HttpStatusCode {
    match reason {
        "RATE_LIMITED" => HttpStatusCode::TooManyRequests,
        "MISSING_CREDENTIAL"
        | "MALFORMED_CREDENTIAL"
        | "UNKNOWN_KEY"
        | "KEY_REVOKED"
        | "KEY_DISABLED"
        | "KEY_EXPIRED" => HttpStatusCode::Unauthorized,
        _ => HttpStatusCode::Forbidden,
    }
}

/// The source address of the request: Envoy's view of the peer, or the trusted
/// `x-forwarded-for` hop. `None` when it is missing or not an address (a key with source
/// networks is then denied).
fn source_address(request: &CheckRequest, headers: &HashMap<String, String>, hops: u32) -> Option<IpAddr> {
    let text = if hops == 0 {
        let source = request.attributes.as_ref()?.source.as_ref()?.address.as_ref()?;
        match source.address.as_ref()? {
            envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(socket) => &socket.address,
            _ => return None,
        }
    } else {
        let xff = headers.get("x-forwarded-for")?;
        xff.rsplit(',').nth(usize::try_from(hops).ok()?.checked_sub(1)?)?.trim()
    };
    parse_source_address("source_address", text).ok()
}

fn denied(reason: &str, message: &str, retry_after: Option<Duration>) -> CheckResponse {
    let status = http_status(reason);
    let unauthorized = status == HttpStatusCode::Unauthorized;
    let error = match status {
        HttpStatusCode::Unauthorized => "unauthorized",
        HttpStatusCode::TooManyRequests => "too_many_requests",
        _ => "forbidden",
    };
    let body = serde_json::json!({
        "error": error,
        "reason": reason,
        "message": message,
    });
    let mut http = DeniedHttpResponseBuilder::new();
    http.set_http_status(status).set_body(body.to_string()).add_header(
        "content-type",
        "application/json",
        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
        false,
    );
    if let Some(wait) = retry_after {
        // Whole seconds, rounded up: a client retrying then is admitted.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        http.add_header(
            "retry-after",
            seconds.max(1).to_string(),
            Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
            false,
        );
    }
    if unauthorized {
        let challenge = if reason == "MISSING_CREDENTIAL" {
            r#"Bearer realm="keyscope""#
        } else {
            r#"Bearer realm="keyscope", error="invalid_token""#
        };
        http.add_header("www-authenticate", challenge, Some(HeaderAppendAction::OverwriteIfExistsOrAdd), false);
    }
    let code = match status {
        HttpStatusCode::Unauthorized => tonic::Code::Unauthenticated,
        HttpStatusCode::TooManyRequests => tonic::Code::ResourceExhausted,
        _ => tonic::Code::PermissionDenied,
    };
    let mut response = CheckResponse::with_status(Status::new(code, reason));
    response.set_http_response(http);
    response
}

fn unmapped_message(why: Unmapped) -> &'static str {
    match why {
        Unmapped::NoCredential => {
            "no credential: send `authorization: Bearer <token>`, an API-key header or HTTP Basic"
        }
        Unmapped::NoRoute => "no keyscope module is configured for this route",
        Unmapped::UnknownMethod => "the request method maps to no action",
        Unmapped::BadRouteConfig => "the route's keyscope_module or keyscope_tenant is invalid",
        Unmapped::UnsafePath(why) => why.message(),
        Unmapped::AmbiguousRoute => {
            "the path extends a route prefix inside a segment (like `/adminx` for `/admin`), which proxies route differently"
        }
        Unmapped::NoTenant => "a principal credential needs the route's tenant (`keyscope_tenant` or a route's tenant)",
        Unmapped::BadPrincipal => "the principal headers hold no valid subject or roles",
    }
}

impl ExtAuthzService {
    fn allowed(
        &self,
        headers: &HashMap<String, String>,
        answer: Option<(&CheckAnswer, &str, Action)>,
    ) -> CheckResponse {
        let identity = &self.settings.identity;
        let mut http = OkHttpResponseBuilder::new();
        // The identity headers set below overwrite whatever a client sent; every other identity
        // name is removed whether or not keyscope saw it (Envoy may forward headers keyscope
        // is not shown), and so is any other client-sent `x-keyscope-*` header. Envoy applies
        // removals after additions, so a name set below must never be removed.
        let set: Vec<&str> = match answer {
            // A bearer principal has no key: only its tenant goes upstream.
            Some((a, _, _)) if a.key_id.is_none() => vec![&identity.tenant],
            Some((a, _, _)) if a.owner.is_empty() => vec![&identity.key_id, &identity.tenant],
            Some(_) => vec![&identity.key_id, &identity.tenant, &identity.owner],
            None => Vec::new(),
        };
        let is_set = |name: &str| set.iter().any(|s| s.eq_ignore_ascii_case(name));
        for name in [&identity.key_id, &identity.tenant, &identity.owner] {
            if !is_set(name) {
                http.remove_header(name.clone());
            }
        }
        for name in headers.keys() {
            let reserved = name
                .as_bytes()
                .get(..RESERVED_HEADER_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_HEADER_PREFIX.as_bytes()));
            if reserved
                && !is_set(name)
                && ![&identity.key_id, &identity.tenant, &identity.owner].iter().any(|i| i.eq_ignore_ascii_case(name))
            {
                http.remove_header(name.clone());
            }
        }
        if self.settings.strip_credential {
            http.remove_header("authorization");
            http.remove_header(self.settings.mapping.api_key_header.clone());
        }
        let mut response = CheckResponse::with_status(Status::ok(""));
        if let Some((answer, module, action)) = answer {
            let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
            let key_id = answer.key_id.as_ref().map(ToString::to_string).unwrap_or_default();
            let tenant = answer.tenant.as_ref().map(ToString::to_string).unwrap_or_default();
            if answer.key_id.is_some() {
                http.add_header(identity.key_id.clone(), key_id.clone(), overwrite, false);
            }
            http.add_header(identity.tenant.clone(), tenant.clone(), overwrite, false);
            if !answer.owner.is_empty() {
                http.add_header(identity.owner.clone(), answer.owner.clone(), overwrite, false);
            }
            let fields = [
                ("key_id", key_id.as_str()),
                ("tenant", tenant.as_str()),
                ("module", module),
                ("action", action.as_str()),
                ("reason", answer.reason.as_str()),
            ];
            response.set_dynamic_metadata(Some(metadata(&fields)));
        }
        response.set_http_response(http);
        response
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let (grpc_metadata, _, request) = request.into_parts();
        let trace = self.tracer.start("check", ("envoy.service.auth.v3.Authorization", "Check"), || {
            let http = request.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
            let empty = HashMap::new();
            let headers = http.map_or(Cow::Borrowed(&empty), collect_headers);
            propagation::from_ext_authz(&grpc_metadata, &headers)
        });
        let answer = spans::within(trace.as_ref(), self.answer(&request)).await;
        spans::end(trace, answer.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok));
        self.metrics.check_time(CheckPath::ExtAuthz, started.elapsed());
        match &answer {
            Ok((allowed, reason, _)) => self.metrics.check(CheckPath::ExtAuthz, *allowed, reason),
            Err(status) => self.metrics.check_failed(CheckPath::ExtAuthz, status.code()),
        }
        answer.map(|(_, _, response)| Response::new(response))
    }
}

impl ExtAuthzService {
    /// The answer to Envoy, whether it allows, and its reason.
    async fn answer(&self, request: &CheckRequest) -> Result<(bool, &'static str, CheckResponse), Status> {
        let attributes = request.attributes.as_ref();
        let Some(http) = attributes.and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref()) else {
            let reason = "NO_HTTP_ATTRIBUTES";
            annotate(|| decided(false, reason));
            return Ok((false, reason, denied(reason, "the check request carries no HTTP request", None)));
        };
        let headers = collect_headers(http);
        let empty = HashMap::new();
        let context = attributes.map_or(&empty, |a| &a.context_extensions);
        let view = HttpRequestView { method: &http.method, path: &http.path, headers: &headers, context };
        Ok(match self.settings.mapping.map(&view) {
            Mapped::Unchecked => {
                annotate(|| decided(true, "UNMAPPED_ALLOWED"));
                (true, "UNMAPPED_ALLOWED", self.allowed(&headers, None))
            }
            Mapped::Refused(why) => {
                annotate(|| decided(false, why.as_str()));
                (false, why.as_str(), denied(why.as_str(), unmapped_message(why), None))
            }
            Mapped::Principal { credential, module, action, tenant } => {
                let items = [(module, action)];
                let mut answers = self.core.check_principal(&tenant, &credential, &items, Explain::Denials).await?;
                let [(module, action)] = items;
                // INVARIANT: one answer per item, and there is one item.
                let answer = answers.pop().ok_or_else(|| Status::internal("no answer"))?;
                let reason = answer.reason.as_str();
                if answer.allowed() {
                    (true, reason, self.allowed(&headers, Some((&answer, module.as_str(), action))))
                } else {
                    let mut response = denied(reason, &answer.message, answer.retry_after);
                    let fields = [
                        ("subject", answer.subject.as_str()),
                        ("module", module.as_str()),
                        ("action", action.as_str()),
                        ("reason", reason),
                    ];
                    response.set_dynamic_metadata(Some(metadata(&fields)));
                    (false, reason, response)
                }
            }
            Mapped::Check { presented, module, action, tenant } => {
                // The message is only needed for a denial's body: an allowed check skips it.
                let source = source_address(request, &headers, self.settings.trusted_proxy_hops);
                let answer = self
                    .core
                    .check_from(&presented, tenant.as_ref(), source, &module, action, Explain::Denials)
                    .await?;
                let reason = answer.reason.as_str();
                if answer.allowed() {
                    (true, reason, self.allowed(&headers, Some((&answer, module.as_str(), action))))
                } else {
                    let mut response = denied(answer.reason.as_str(), &answer.message, answer.retry_after);
                    let key_id = answer.key_id.as_ref().map(ToString::to_string).unwrap_or_default();
                    let fields = [
                        ("key_id", key_id.as_str()),
                        ("module", module.as_str()),
                        ("action", action.as_str()),
                        ("reason", answer.reason.as_str()),
                    ];
                    response.set_dynamic_metadata(Some(metadata(&fields)));
                    (false, reason, response)
                }
            }
        })
    }
}
