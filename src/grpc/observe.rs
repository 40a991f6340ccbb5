//! Calls at the edge: the span each runs in (an admin call's is exported, parented by the
//! caller's `traceparent`), and [`Edge`], the wrapper of every keyscope service.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use prost::Message as _;

use tonic::{
    Code,
    codegen::{Service, http},
    server::NamedService,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::status::oversize_is_exhausted;
use crate::telemetry::{Metrics, SPAN_TARGET, propagation};

/// The methods of the admin services, read from the compiled descriptors: only these names
/// become span names and metric labels, so a caller cannot invent new ones.
#[derive(Debug, Default)]
pub struct AdminMethods {
    /// Service name -> its method names.
    services: HashMap<String, HashSet<String>>,
}

impl AdminMethods {
    /// The methods of `services` (full names, e.g. `keyscope.v1.KeyAdmin`) found in the
    /// encoded descriptor set `descriptors`.
    pub fn new(descriptors: &[u8], services: &[&str]) -> Self {
        let mut known: HashMap<String, HashSet<String>> = HashMap::new();
        let set = prost_types::FileDescriptorSet::decode(descriptors).unwrap_or_default();
        for file in &set.file {
            for service in &file.service {
                let name = format!("{}.{}", file.package(), service.name());
                if services.contains(&name.as_str()) {
                    let methods = service.method.iter().map(|m| m.name().to_owned()).collect();
                    known.insert(name, methods);
                }
            }
        }
        AdminMethods { services: known }
    }

    /// For a request path `/<service>/<method>` of an admin service: the service and the
    /// method (`unknown` for a method it does not have); `None` for any other service.
    pub fn resolve<'p>(&self, path: &'p str) -> Option<(&'p str, &'p str)> {
        let (service, method) = path.trim_start_matches('/').split_once('/')?;
        let methods = self.services.get(service)?;
        Some((service, if methods.contains(method) { method } else { "unknown" }))
    }
}

/// The span a gRPC call runs in: for an admin service the exported admin span, named after
/// its method and joined to the caller's trace; for every other call a `grpc` span that only
/// logs see (a check makes its own exported span).
pub fn call_span(request: &http::Request<()>, admin: &AdminMethods) -> tracing::Span {
    let path = request.uri().path();
    let Some((service, method)) = admin.resolve(path) else {
        return tracing::debug_span!("grpc", path = %path);
    };
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "admin",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        tenant = tracing::field::Empty,
        actor_key_id = tracing::field::Empty,
    );
    // An error only means no OpenTelemetry layer is installed (traces are off).
    let _ = span.set_parent(propagation::from_headers(request.headers()));
    span
}

/// Every keyscope service at the edge: fixes the status of over-size requests
/// ([`super::status::oversize_is_exhausted`]) and, for an admin service, counts each call by
/// method and final status code and records the code on the call's `admin` span.
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
    admin: Option<(Arc<Metrics>, Arc<AdminMethods>)>,
}

impl<S> Edge<S> {
    /// A service whose calls are checks (they count themselves).
    pub fn checks(inner: S) -> Self {
        Edge { inner, admin: None }
    }

    /// An admin service, counted into `metrics` by its `methods`.
    pub fn admin(inner: S, metrics: Arc<Metrics>, methods: Arc<AdminMethods>) -> Self {
        Edge { inner, admin: Some((metrics, methods)) }
    }
}

impl<S: NamedService> NamedService for Edge<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for Edge<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let admin = self.admin.as_ref().map(|(metrics, methods)| {
            let method = methods.resolve(request.uri().path()).map_or("unknown", |(_, m)| m).to_owned();
            (metrics.clone(), method)
        });
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            oversize_is_exhausted(response.headers_mut());
            if let Some((metrics, method)) = admin {
                record_admin_call(&metrics, &method, response.headers());
            }
            Ok(response)
        })
    }
}

fn record_admin_call(metrics: &Metrics, method: &str, headers: &http::HeaderMap) {
    // A handler's error travels in the headers (a trailers-only response); a success has none
    // there and sends OK in the trailers.
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32);
    metrics.admin_call(method, code);
    let span = tracing::Span::current();
    span.record("rpc.grpc.status_code", code as i32);
    if crate::telemetry::spans::is_server_error(code) {
        span.record("otel.status_code", "error");
    }
}
