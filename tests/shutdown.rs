//! Graceful shutdown of the real binary: SIGTERM under load. Health goes NOT_SERVING while
//! calls are still taken for `server.shutdown_delay_ms`; then no new call is accepted, every
//! call already accepted is answered, the spans of all of them are exported before the process
//! exits, and it exits with status 0 within `server.shutdown_grace_ms`.
// Tests fail by panicking.
#![allow(clippy::panic)]

#[path = "common/process.rs"]
mod process;
#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "common/scrape.rs"]
mod scrape;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keyscope::grpc::pb::{self, checker_client::CheckerClient, key_admin_client::KeyAdminClient};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use process::ServerOptions;
use redis_server::{RedisServer, fresh_prefix};
use tonic::{Request, Response, Status};

/// Counts the `check` spans it receives.
#[derive(Clone, Default)]
struct Receiver(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let checks = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .filter(|s| s.name == "check")
            .count();
        self.0.fetch_add(checks as u64, Ordering::SeqCst);
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// What the load saw.
#[derive(Default)]
struct Outcome {
    answered: AtomicU64,
    answered_after_sigterm: AtomicU64,
    refused: Mutex<Vec<(tonic::Code, String)>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_accepted_check_and_flushes_spans() {
    let redis = RedisServer::start();
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let collector = listener.local_addr().expect("addr");
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .expect("receiver");
    });

    let prefix = fresh_prefix();
    let mut server = ServerOptions::default()
        .env("KEYSCOPE__STORE__KIND", "redis")
        .env("KEYSCOPE__STORE__REDIS__URL", &redis.url())
        .env("KEYSCOPE__STORE__REDIS__PREFIX", &prefix)
        // Only the shutdown flushes usage.
        .env("KEYSCOPE__USAGE__FLUSH_INTERVAL_MS", "3600000")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{collector}"))
        // Long enough that only the shutdown flushes the last spans.
        .env("KEYSCOPE__TELEMETRY__EXPORT_INTERVAL_MS", "60000")
        .env("KEYSCOPE__SERVER__SHUTDOWN_DELAY_MS", "1500")
        .env("KEYSCOPE__SERVER__SHUTDOWN_GRACE_MS", "10000")
        .start();
    let url = server.url();
    let admin = server.admin_token().to_owned();
    let channel = tonic::transport::Endpoint::from_shared(url.clone()).expect("uri").connect().await.expect("connect");
    let mut create = Request::new(pb::CreateKeyRequest {
        tenant: "acme".into(),
        scope_ids: vec!["read-only".into()],
        ..Default::default()
    });
    create.metadata_mut().insert("authorization", format!("Bearer {admin}").parse().expect("ascii"));
    let created = KeyAdminClient::new(channel).create_key(create).await.expect("create key").into_inner();
    let (token, key_id) = (created.token, created.key.expect("key").id);

    // Eight clients, each on its own connection, check in a loop until refused.
    let outcome = Arc::new(Outcome::default());
    let sigterm_sent = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (outcome, sigterm_sent, token, url) = (outcome.clone(), sigterm_sent.clone(), token.clone(), url.clone());
        load.push(tokio::spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(url).expect("uri").connect().await.expect("connect");
            let mut checker = CheckerClient::new(channel);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let after_sigterm = sigterm_sent.load(Ordering::SeqCst);
                let request = pb::CheckRequest {
                    credential: Some(pb::check_request::Credential::Token(token.clone())),
                    tenant: String::new(),
                    module: "courses".into(),
                    action: pb::Action::Read.into(),
                    explain: false,
                    source_address: Default::default(),
                };
                match checker.check(request).await {
                    Ok(answer) => {
                        assert!(answer.into_inner().allowed, "a wrong answer during shutdown");
                        outcome.answered.fetch_add(1, Ordering::SeqCst);
                        if after_sigterm {
                            outcome.answered_after_sigterm.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(status) => {
                        outcome
                            .refused
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((status.code(), format!("{status:?}")));
                        return;
                    }
                }
            }
            panic!("the server never stopped taking checks");
        }));
    }
    while outcome.answered.load(Ordering::SeqCst) < 400 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sigterm_sent.store(true, Ordering::SeqCst);
    server.terminate();
    // During the delay: NOT_SERVING on both probes, and checks still answered.
    let http = server.http_addr.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape::get(&http, "/readyz").await.0 != 503 {
        assert!(Instant::now() < deadline, "/readyz never said 503 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(url.clone()).expect("uri").connect().await.expect("connect"),
    );
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health answers during the delay")
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::NotServing as i32);
    let before = outcome.answered.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while outcome.answered.load(Ordering::SeqCst) == before {
        assert!(Instant::now() < deadline, "no check answered while NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(15));
        (status, server.output())
    })
    .await
    .expect("join");
    let (status, output) = status;
    let status = status.expect("keyscope exits within the grace period");
    assert!(status.success(), "exit status {status:?}\n{}", output.all());
    for task in load {
        task.await.expect("a load task");
    }

    let answered = outcome.answered.load(Ordering::SeqCst);
    let refused = outcome.refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(outcome.answered_after_sigterm.load(Ordering::SeqCst) > 0, "checks were taken during the delay");
    assert!(!output.all().contains("grace period ended"), "everything finished within the grace period");
    // Every accepted check was answered and its span exported before the exit; a check cut
    // off mid-way would have a span but no answer.
    assert_eq!(receiver.0.load(Ordering::SeqCst), answered, "check spans vs answered checks");
    // The checks refused were never taken: the stream was refused or the client's connection
    // had closed before it was sent (the transport's UNAVAILABLE or CANCELLED).
    let never_taken =
        |(code, _): &(tonic::Code, String)| matches!(code, tonic::Code::Unavailable | tonic::Code::Cancelled);
    assert!(refused.iter().all(never_taken), "refused with {refused:#?}");
    let log = output.all();
    assert!(log.contains("shutdown signal received") && log.contains("keyscope stopped"), "{log}");
    // And every answered check was counted in the key's usage, written to Redis at shutdown.
    let days = redis.cli(&["KEYS", &format!("{prefix}:{{acme}}:usage:{key_id}:*")]).unwrap_or_default();
    let counted: u64 = days
        .lines()
        .filter(|d| !d.is_empty())
        .map(|day| redis.cli(&["HGET", day, "a"]).and_then(|a| a.trim().parse::<u64>().ok()).unwrap_or(0))
        .sum();
    assert_eq!(counted, answered, "allowed checks in the flushed usage vs answered checks");
}
