//! The span of every check, made with the OpenTelemetry SDK directly.
//!
//! A check is answered in a few microseconds; going through the `tracing` layer for it cost
//! more than the check itself (measured in BENCHMARKS.md), so the edges (`Check`, `BatchCheck`,
//! ext_authz) start a span here, run the check with it active, and end it; whoever knows
//! something about the check on the way ([`annotate`]: the core, the replica cache) adds it to
//! the active span. With traces off nothing here does any work.

use std::future::Future;

use opentelemetry::{
    Context, KeyValue,
    context::FutureExt as _,
    trace::{SpanKind, Status, TraceContextExt, Tracer, get_active_span},
};
use opentelemetry_sdk::trace::SdkTracer;

/// Starts check spans, or does nothing when traces are off.
#[derive(Debug, Clone, Default)]
pub struct CheckTracer(Option<SdkTracer>);

impl CheckTracer {
    /// Spans from `tracer`.
    pub fn new(tracer: SdkTracer) -> Self {
        CheckTracer(Some(tracer))
    }

    /// A server span named `name` for the gRPC method `service`/`method`, child of the context
    /// `parent` reads (the caller's `traceparent`); `None` when traces are off, without calling
    /// `parent`.
    pub fn start(
        &self,
        name: &'static str,
        (service, method): (&'static str, &'static str),
        parent: impl FnOnce() -> Context,
    ) -> Option<Context> {
        let tracer = self.0.as_ref()?;
        let parent = parent();
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", service),
                KeyValue::new("rpc.method", method),
            ])
            .start_with_context(tracer, &parent);
        Some(parent.with_span(span))
    }
}

/// Runs `call` with the span of `trace` active, so that [`annotate`] reaches it.
pub async fn within<F: Future>(trace: Option<&Context>, call: F) -> F::Output {
    match trace {
        Some(cx) => call.with_context(cx.clone()).await,
        None => call.await,
    }
}

/// Ends the span of `trace` with the call's gRPC status code.
pub fn end(trace: Option<Context>, code: tonic::Code) {
    let Some(cx) = trace else { return };
    let span = cx.span();
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
    if is_server_error(code) {
        span.set_status(Status::error(super::metrics::code_name(code)));
    }
    span.end();
}

/// OpenTelemetry's gRPC conventions: on a server, only these codes are errors of the server;
/// the others are the caller's (bad input, no permission...).
pub fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Adds attributes to the active check span; `attributes` is called only when one records.
pub fn annotate(attributes: impl FnOnce() -> Vec<KeyValue>) {
    get_active_span(|span| {
        if span.is_recording() {
            span.set_attributes(attributes());
        }
    });
}
