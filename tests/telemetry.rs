//! Traces end to end: the real `keyscope` binary on its own redis-server exports its spans
//! over OTLP/gRPC to a real receiver inside the test (OpenTelemetry's own TraceService from
//! `opentelemetry-proto`), configured only through the standard `OTEL_*` variables. The spans
//! of Check, BatchCheck, ext_authz and admin calls arrive with their names, attributes and the
//! caller's trace as parent, and none holds a token or a secret. With the receiver down, checks
//! still succeed and the lost spans are counted.
// Tests fail by panicking.
#![allow(clippy::panic)]

#[path = "common/certs.rs"]
mod certs;
#[path = "common/process.rs"]
mod process;
#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "common/scrape.rs"]
mod scrape;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest as EnvoyCheck, attribute_context, authorization_client::AuthorizationClient,
};
use keyscope::grpc::pb::{self, checker_client::CheckerClient, key_admin_client::KeyAdminClient};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value},
    trace::v1::{Span, span::SpanKind},
};
use process::{Server, ServerOptions};
use redis_server::{RedisServer, fresh_prefix};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, transport::Channel};

/// A received span with its resource's attributes.
type Received = (HashMap<String, String>, Span);

/// An OTLP trace receiver: keeps every span with its resource's attributes.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (resource.clone(), s)));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Serves on a free port until the returned task is aborted.
    async fn start() -> (Receiver, SocketAddr, tokio::task::JoinHandle<()>) {
        Self::start_with(None).await
    }

    /// Serves over TLS with this certificate, or in plaintext.
    async fn start_with(tls: Option<&certs::Leaf>) -> (Receiver, SocketAddr, tokio::task::JoinHandle<()>) {
        let receiver = Receiver::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = TraceServiceServer::new(receiver.clone());
        let mut builder = tonic::transport::Server::builder();
        if let Some(leaf) = tls {
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(leaf.identity()))
                .expect("receiver TLS");
        }
        let task = tokio::spawn(async move {
            builder
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("receiver");
        });
        (receiver, addr, task)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `count` spans named `name` arrived; returns them.
    async fn wait_for(&self, name: &str, count: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found: Vec<Span> = self.spans().into_iter().map(|(_, s)| s).filter(|s| s.name == name).collect();
            if found.len() >= count {
                return found;
            }
            assert!(Instant::now() < deadline, "only {} `{name}` spans arrived, expected {count}", found.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(list: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    list.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A W3C traceparent for a trace and parent span of the caller's, sampled.
fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

fn with_traceparent<T>(message: T, value: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("traceparent", value.parse().expect("ascii"));
    request
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    request
}

async fn channel(server: &Server) -> Channel {
    tonic::transport::Endpoint::from_shared(server.url()).expect("uri").connect().await.expect("connect")
}

/// Creates a read-only key in tenant `acme`.
async fn read_only_key(keys: &mut KeyAdminClient<Channel>, admin: &str) -> pb::CreateKeyResponse {
    keys.create_key(bearer(
        pb::CreateKeyRequest { tenant: "acme".into(), scope_ids: vec!["read-only".into()], ..Default::default() },
        admin,
    ))
    .await
    .expect("create key")
    .into_inner()
}

fn check(token: &str, module: &str, action: pb::Action) -> pb::CheckRequest {
    pb::CheckRequest {
        credential: Some(pb::check_request::Credential::Token(token.into())),
        tenant: String::new(),
        module: module.into(),
        action: action.into(),
        explain: false,
        source_address: Default::default(),
    }
}

fn envoy(token: &str, module: &str, headers: &[(&str, &str)]) -> EnvoyCheck {
    let mut all: HashMap<String, String> = headers.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    all.insert("authorization".into(), format!("Bearer {token}"));
    EnvoyCheck {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/api/courses".into(),
                    headers: all,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("keyscope_module".to_owned(), module.to_owned())].into(),
            ..Default::default()
        }),
    }
}

/// Starts keyscope on `redis`, exporting to `endpoint` with the standard variables only.
fn keyscope(redis: &RedisServer, endpoint: &str, extra: &[(&str, &str)]) -> Server {
    let mut options = ServerOptions::default()
        .env("KEYSCOPE__STORE__KIND", "redis")
        .env("KEYSCOPE__STORE__REDIS__URL", &redis.url())
        .env("KEYSCOPE__STORE__REDIS__PREFIX", &fresh_prefix())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_SERVICE_NAME", "keyscope-under-test")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        .env("KEYSCOPE__TELEMETRY__EXPORT_INTERVAL_MS", "50")
        .env("KEYSCOPE__USAGE__FLUSH_INTERVAL_MS", "100");
    for (name, value) in extra {
        options = options.env(name, value);
    }
    options.start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_checks_batches_ext_authz_and_admin_calls_reach_the_collector() {
    let redis = RedisServer::start();
    let (receiver, addr, _task) = Receiver::start().await;
    let server = keyscope(&redis, &format!("http://{addr}"), &[]);
    let admin = server.admin_token().to_owned();
    let channel = channel(&server).await;
    let mut keys = KeyAdminClient::new(channel.clone());
    let created = read_only_key(&mut keys, &admin).await;
    let token = created.token.clone();
    let key_id = created.key.expect("key").id;

    let mut checker = CheckerClient::new(channel.clone());
    let (t1, p1) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let first = checker
        .check(with_traceparent(check(&token, "courses", pb::Action::Read), &traceparent(t1, p1)))
        .await
        .expect("check")
        .into_inner();
    assert!(first.allowed);
    let refused = keys
        .get_key(bearer(pb::GetKeyRequest { tenant: "acme".into(), id: "nope".into() }, &token))
        .await
        .expect_err("a read-only key is no key admin");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let denied = checker.check(check(&token, "courses", pb::Action::Delete)).await.expect("check").into_inner();
    assert!(!denied.allowed);
    let (t2, p2) = ("11111111111111111111111111111111", "2222222222222222");
    let batch = pb::BatchCheckRequest {
        credential: Some(pb::batch_check_request::Credential::Token(token.clone())),
        tenant: String::new(),
        items: vec![
            pb::CheckItem { module: "courses".into(), action: pb::Action::Read.into() },
            pb::CheckItem { module: "courses".into(), action: pb::Action::Update.into() },
        ],
        explain: false,
        source_address: Default::default(),
    };
    checker.batch_check(with_traceparent(batch, &traceparent(t2, p2))).await.expect("batch");
    let mut envoy_client = AuthorizationClient::new(channel.clone());
    // The HTTP request's own traceparent (Envoy not tracing), then Envoy's on the gRPC call.
    let (t3, p3) = ("33333333333333333333333333333333", "4444444444444444");
    let forwarded = [("traceparent", traceparent(t3, p3))];
    let forwarded: Vec<(&str, &str)> = forwarded.iter().map(|(k, v)| (*k, v.as_str())).collect();
    envoy_client.check(envoy(&token, "courses", &forwarded)).await.expect("ext_authz");
    let (t4, p4) = ("55555555555555555555555555555555", "6666666666666666");
    envoy_client
        .check(with_traceparent(envoy(&token, "courses", &forwarded), &traceparent(t4, p4)))
        .await
        .expect("ext_authz");
    let (t5, p5) = ("77777777777777777777777777777777", "8888888888888888");
    // Without a bearer token the call is refused; its span is still joined to the trace.
    let anonymous = pb::GetKeyRequest { tenant: "acme".into(), id: key_id.clone() };
    let refused_anonymous = keys.get_key(with_traceparent(anonymous, &traceparent(t5, p5))).await;
    assert_eq!(refused_anonymous.map(|_| ()).map_err(|s| s.code()), Err(tonic::Code::Unauthenticated));

    // A bearer principal (no key): nothing is bound to it, so it is denied.
    let (t6, p6) = ("99999999999999999999999999999999", "aaaaaaaaaaaaaaaa");
    let principal = pb::CheckRequest {
        credential: Some(pb::check_request::Credential::Principal(pb::Principal {
            subject: "alice@example.com".into(),
            roles: vec!["teacher".into()],
        })),
        tenant: "acme".into(),
        module: "courses".into(),
        action: pb::Action::Read.into(),
        ..Default::default()
    };
    let answer = checker.check(with_traceparent(principal, &traceparent(t6, p6))).await.expect("check").into_inner();
    assert_eq!(answer.reason, pb::Reason::NoScope as i32);

    let checks = receiver.wait_for("check", 5).await;
    let batches = receiver.wait_for("batch_check", 1).await;
    let admin_spans = receiver.wait_for("keyscope.v1.KeyAdmin/CreateKey", 1).await;
    receiver.wait_for("keyscope.v1.KeyAdmin/GetKey", 2).await;

    // Check: the caller's trace and span are the parent; every attribute is there.
    let joined = checks.iter().find(|s| hex(&s.trace_id) == t1).expect("the check joined to trace t1");
    assert_eq!(hex(&joined.parent_span_id), p1, "the caller's span is the parent");
    assert_eq!(joined.kind, SpanKind::Server as i32);
    let a = attributes(&joined.attributes);
    for (name, value) in [
        ("tenant", "acme"),
        ("key_id", key_id.as_str()),
        ("module", "courses"),
        ("action", "read"),
        ("decision", "allow"),
        ("reason", "OK"),
        ("cache_hit", "false"),
    ] {
        assert_eq!(a.get(name).map(String::as_str), Some(value), "check attribute {name} in {a:?}");
    }
    // The next check of the same key is answered from the cache, in a trace of its own.
    let second = checks
        .iter()
        .find(|s| attributes(&s.attributes).get("action").map(String::as_str) == Some("delete"))
        .expect("the denied check");
    let a = attributes(&second.attributes);
    assert_eq!(a.get("decision").map(String::as_str), Some("deny"));
    assert_eq!(a.get("reason").map(String::as_str), Some("NOT_GRANTED"));
    assert_eq!(a.get("cache_hit").map(String::as_str), Some("true"));
    assert!(second.parent_span_id.is_empty(), "no traceparent: a root span");
    assert_ne!(hex(&second.trace_id), t1);

    // A bearer principal's check says so, and names no key.
    let by_principal = checks.iter().find(|s| hex(&s.trace_id) == t6).expect("the principal check joined to t6");
    assert_eq!(hex(&by_principal.parent_span_id), p6);
    let a = attributes(&by_principal.attributes);
    for (name, value) in [
        ("credential", "principal"),
        ("tenant", "acme"),
        ("module", "courses"),
        ("action", "read"),
        ("decision", "deny"),
        ("reason", "NO_SCOPE"),
    ] {
        assert_eq!(a.get(name).map(String::as_str), Some(value), "principal check attribute {name} in {a:?}");
    }
    assert!(!a.contains_key("key_id"), "{a:?}");

    let batch = batches.iter().find(|s| hex(&s.trace_id) == t2).expect("the batch joined to trace t2");
    assert_eq!(hex(&batch.parent_span_id), p2);
    let a = attributes(&batch.attributes);
    assert_eq!(a.get("items").map(String::as_str), Some("2"));
    assert_eq!(a.get("allowed").map(String::as_str), Some("1"));
    assert_eq!(a.get("key_id").map(String::as_str), Some(key_id.as_str()));

    let from_http = checks.iter().find(|s| hex(&s.trace_id) == t3).expect("ext_authz joined to the HTTP trace");
    assert_eq!(hex(&from_http.parent_span_id), p3);
    let from_envoy = checks.iter().find(|s| hex(&s.trace_id) == t4).expect("ext_authz joined to Envoy's trace");
    assert_eq!(hex(&from_envoy.parent_span_id), p4, "Envoy's own span wins over the forwarded header");
    let service = |s: &Span| attributes(&s.attributes).get("rpc.service").cloned().unwrap_or_default();
    assert_eq!(service(from_envoy), "envoy.service.auth.v3.Authorization");
    assert_eq!(service(joined), "keyscope.v1.Checker");

    // Admin calls: a server span per call, named by method, with who acted where.
    let create = &admin_spans[0];
    assert_eq!(create.kind, SpanKind::Server as i32);
    let a = attributes(&create.attributes);
    assert_eq!(a.get("rpc.method").map(String::as_str), Some("CreateKey"));
    assert_eq!(a.get("rpc.grpc.status_code").map(String::as_str), Some("0"));
    assert_eq!(a.get("tenant").map(String::as_str), Some("acme"));
    assert!(a.get("actor_key_id").is_some_and(|id| admin.contains(id.as_str())), "the bootstrap key acted: {a:?}");
    let gets = receiver.wait_for("keyscope.v1.KeyAdmin/GetKey", 2).await;
    assert!(
        gets.iter().any(|s| attributes(&s.attributes).get("rpc.grpc.status_code").map(String::as_str) == Some("7"))
    );
    let joined_admin = gets.iter().find(|s| hex(&s.trace_id) == t5).expect("the admin call joined to trace t5");
    assert_eq!(hex(&joined_admin.parent_span_id), p5);

    // The resource names the service as configured through the standard variables.
    let (resource, _) = receiver.spans().into_iter().next().expect("spans");
    assert_eq!(resource.get("service.name").map(String::as_str), Some("keyscope-under-test"));
    assert_eq!(resource.get("deployment.environment").map(String::as_str), Some("test"));

    // No span holds a credential, whole or in part.
    let (_, tail) = token.rsplit_once('_').expect("token shape");
    let (_, admin_tail) = admin.rsplit_once('_').expect("token shape");
    let everything = format!("{:?}", receiver.spans());
    for secret in [token.as_str(), tail, &tail[..22], admin.as_str(), admin_tail] {
        assert!(!everything.contains(secret), "a span holds a credential");
    }

    // The exporter counts a batch once the receiver has answered: poll for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape::metrics(&server.http_addr).await;
        assert_eq!(scrape::count(&text, "keyscope_trace_spans_dropped_total", &[]), 0.0);
        let exported = scrape::count(&text, "keyscope_trace_spans_exported_total", &[]);
        // The usage flusher writes to the same Redis every 100 ms.
        let flushed = scrape::count(&text, "keyscope_usage_flushes_total", &[("result", "ok")]);
        if exported >= receiver.spans().len() as f64 && flushed >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "exported {exported}, received {}:\n{text}", receiver.spans().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_succeed_and_lost_spans_are_counted_when_the_collector_is_down() {
    let redis = RedisServer::start();
    // Nothing listens there: every export fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let server = keyscope(
        &redis,
        &format!("http://127.0.0.1:{port}"),
        &[("KEYSCOPE__TELEMETRY__QUEUE_SIZE", "8"), ("KEYSCOPE__TELEMETRY__BATCH_SIZE", "4")],
    );
    let admin = server.admin_token().to_owned();
    let channel = channel(&server).await;
    let created = read_only_key(&mut KeyAdminClient::new(channel.clone()), &admin).await;
    let mut checker = CheckerClient::new(channel);
    let total = 300;
    for _ in 0..total {
        let answer = checker.check(check(&created.token, "courses", pb::Action::Read)).await.expect("check succeeds");
        assert!(answer.into_inner().allowed);
    }
    // Every span is accounted for: failed exports or a full queue, none exported.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape::metrics(&server.http_addr).await;
        let lost = scrape::count(&text, "keyscope_trace_spans_failed_total", &[])
            + scrape::count(&text, "keyscope_trace_spans_dropped_total", &[]);
        assert_eq!(scrape::count(&text, "keyscope_trace_spans_exported_total", &[]), 0.0);
        // Every check's span and the CreateKey call's.
        if lost >= f64::from(total) + 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "only {lost} of {total}+ spans counted as lost:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.stderr_lines().join("\n");
    assert!(log.contains("span export failed"), "the failure is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_sampler_variables_apply_and_a_sampled_caller_is_followed() {
    let redis = RedisServer::start();
    let (receiver, addr, _task) = Receiver::start().await;
    // Sample none of the traces keyscope starts itself, but follow the caller's decision.
    let sampler = [("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0")];
    let server = keyscope(&redis, &format!("http://{addr}"), &sampler);
    let channel = channel(&server).await;
    let created = read_only_key(&mut KeyAdminClient::new(channel.clone()), server.admin_token()).await;
    let mut checker = CheckerClient::new(channel);
    for _ in 0..20 {
        checker.check(check(&created.token, "courses", pb::Action::Read)).await.expect("check");
    }
    let (trace, parent) = ("99999999999999999999999999999999", "aaaaaaaaaaaaaaaa");
    let unsampled = with_traceparent(
        check(&created.token, "courses", pb::Action::Read),
        &format!("00-{}-{parent}-00", "b".repeat(32)),
    );
    checker.check(unsampled).await.expect("check");
    // Last: spans are exported in the order they end, so once this one has arrived, any of
    // the checks before it that had been sampled would have too.
    let sampled = with_traceparent(check(&created.token, "courses", pb::Action::Read), &traceparent(trace, parent));
    checker.check(sampled).await.expect("check");
    let checks = receiver.wait_for("check", 1).await;
    assert_eq!(checks.len(), 1, "only the check whose caller sampled its trace is exported");
    assert_eq!(hex(&checks[0].trace_id), trace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_collector_that_the_configured_ca_signed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = certs::Ca::new("collector CA");
    let ca_file = certs::write(dir.path(), "ca.crt", &ca.pem);
    let other_ca_file = certs::write(dir.path(), "other.crt", &certs::Ca::new("other CA").pem);
    let redis = RedisServer::start();
    let (receiver, addr, _task) = Receiver::start_with(Some(&ca.server())).await;
    let endpoint = format!("https://localhost:{}", addr.port());
    let run_checks = async |server: &Server| {
        let channel = channel(server).await;
        let created = read_only_key(&mut KeyAdminClient::new(channel.clone()), server.admin_token()).await;
        let mut checker = CheckerClient::new(channel);
        for _ in 0..5 {
            checker.check(check(&created.token, "courses", pb::Action::Read)).await.expect("check");
        }
    };

    let trusted = keyscope(&redis, &endpoint, &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca_file.display().to_string())]);
    run_checks(&trusted).await;
    assert_eq!(receiver.wait_for("check", 5).await.len(), 5, "the checks' spans arrive over TLS");
    drop(trusted);

    // A collector whose certificate the configured CA did not sign gets nothing.
    let before = receiver.spans().len();
    let untrusted =
        keyscope(&redis, &endpoint, &[("KEYSCOPE__TELEMETRY__OTLP_CA_FILE", &other_ca_file.display().to_string())]);
    run_checks(&untrusted).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = scrape::metrics(&untrusted.http_addr).await;
        let lost = scrape::count(&metrics, "keyscope_trace_spans_failed_total", &[])
            + scrape::count(&metrics, "keyscope_trace_spans_dropped_total", &[]);
        if lost >= 5.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the spans sent to an untrusted collector were not counted as lost");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(receiver.spans().len(), before, "nothing reached the collector over an untrusted connection");
}
