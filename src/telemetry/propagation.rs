//! The caller's W3C trace context (`traceparent`, `tracestate`), read from gRPC metadata or
//! from the HTTP headers Envoy forwards in an ext_authz request. A missing or malformed
//! header gives an empty context: the span starts a new trace.

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::codegen::http;

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Envoy sends lowercase header names; anything else is matched case-insensitively.
struct Forwarded<'a>(&'a HashMap<String, String>);

impl Extractor for Forwarded<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .or_else(|| self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
            .map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

fn extract(extractor: &dyn Extractor) -> Context {
    // Not `extract`, which would start from whatever context is current on this thread.
    TraceContextPropagator::new().extract_with_context(&Context::new(), extractor)
}

/// The trace context of a gRPC request's headers (its metadata).
pub fn from_headers(headers: &http::HeaderMap) -> Context {
    extract(&Headers(headers))
}

/// The trace context of a gRPC request's metadata.
pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Context {
    from_headers(metadata.as_ref())
}

/// The trace context of an ext_authz request: the gRPC call's own (Envoy's ext_authz client
/// span, when Envoy traces), else the forwarded HTTP request's headers.
pub fn from_ext_authz(metadata: &tonic::metadata::MetadataMap, http: &HashMap<String, String>) -> Context {
    let own = from_metadata(metadata);
    if own.span().span_context().is_valid() { own } else { extract(&Forwarded(http)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_traceparent_header_becomes_the_remote_parent() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static(PARENT));
        let cx = from_headers(&headers);
        let span = cx.span();
        let parent = span.span_context();
        assert!(parent.is_remote() && parent.is_sampled());
        assert_eq!(parent.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(parent.span_id().to_string(), "b7ad6b7169203331");
    }

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_new_trace() {
        assert!(!from_headers(&http::HeaderMap::new()).span().span_context().is_valid());
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static("00-zz-b7ad6b7169203331-01"));
        assert!(!from_headers(&headers).span().span_context().is_valid());
    }

    #[test]
    fn ext_authz_prefers_the_grpc_call_then_the_forwarded_headers() {
        let other = "00-11111111111111111111111111111111-2222222222222222-01";
        let forwarded: HashMap<String, String> = [("TraceParent".to_owned(), other.to_owned())].into();
        let cx = from_ext_authz(&tonic::metadata::MetadataMap::new(), &forwarded);
        assert_eq!(cx.span().span_context().trace_id().to_string(), "11111111111111111111111111111111");
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("traceparent", PARENT.parse().expect("ascii"));
        let cx = from_ext_authz(&metadata, &forwarded);
        assert_eq!(cx.span().span_context().trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
    }
}
