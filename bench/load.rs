//! keyscope's load generator and the benchmarks of BENCHMARKS.md, in one run on one machine.
//!
//! `cargo bench --bench load -- [SCENARIO...] [--concurrency N] [--duration SECS] [--requests N]`
//!
//! Scenarios (all by default): `hit` (Check answered from the cache, next to a no-op tonic
//! server with the same client, then at half the measured maximum rate), `miss` (Check with no
//! replica cache, next to Redis's own round trip), `propagation` (RevokeKey on replica A until
//! replica B denies), `scale` (1,000 vs 1,000,000 keys in Redis, 1 vs 32 scopes per key, and
//! resident memory per cached key), `envoy` (ext_authz Check next to the native Check),
//! `traces` (the real binary with every check traced and exported over OTLP to a receiver in
//! this process, next to the same binary with traces off), `tls` (the binary serving TLS next
//! to the same binary in plaintext: steady checks, then new connections each with one check),
//! `health` (the binary's CPU time per allowed `Checker/Check` next to that per
//! `grpc.health.v1.Health/Check` of the same process, on the memory store and on Redis behind
//! a warm replica cache),
//! `health-callgrind` (the same pairs under callgrind: instructions per request; not run by
//! default, it needs valgrind).
//! Everything runs against 127.0.0.1 only, is bounded in
//! requests and time, and stops by itself. It starts its own `redis-server`.

#![allow(clippy::panic, clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/certs.rs"]
mod certs;
#[path = "../tests/common/process.rs"]
mod process;
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use keyscope::{
    cache::{CacheSettings, CachedStore},
    domain::{Action, Key, Module, Pepper, TokenFormat},
    grpc::pb::{self, checker_client::CheckerClient, checker_server::Checker},
    service::{Bootstrap, Builtins, Keyscope, NewKey, ScopeDraft},
    store::{RedisOptions, RedisStore, Store},
};
use redis_server::RedisServer;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, transport::Channel};

struct Args {
    scenarios: Vec<String>,
    concurrency: usize,
    duration: Duration,
    requests: u64,
}

fn args() -> Args {
    let mut args =
        Args { scenarios: Vec::new(), concurrency: 32, duration: Duration::from_secs(5), requests: 2_000_000 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--concurrency" => args.concurrency = it.next().and_then(|v| v.parse().ok()).expect("--concurrency N"),
            "--duration" => {
                args.duration = Duration::from_secs_f64(it.next().and_then(|v| v.parse().ok()).expect("--duration S"))
            }
            "--requests" => args.requests = it.next().and_then(|v| v.parse().ok()).expect("--requests N"),
            "--bench" => {}
            other if !other.starts_with('-') => args.scenarios.push(other.to_owned()),
            other => panic!("unknown argument {other}"),
        }
    }
    if args.scenarios.is_empty() {
        args.scenarios =
            ["hit", "miss", "propagation", "scale", "envoy", "traces", "tls", "health"].map(String::from).to_vec();
    }
    args
}

/// Latencies and throughput of one run.
struct Report {
    latencies_us: Vec<u64>,
    errors: u64,
    elapsed: Duration,
}

impl Report {
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn throughput(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn line(&self, name: &str) -> String {
        format!(
            "| {name} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
            self.throughput(),
            self.pct(0.50),
            self.pct(0.90),
            self.pct(0.99),
            self.pct(0.999),
            self.latencies_us.len(),
            self.errors
        )
    }
}

const HEADER: &str = "| run | checks/s | p50 ms | p90 ms | p99 ms | p99.9 ms | requests | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|";

/// One kind of call the load generator makes.
#[derive(Clone)]
enum Call {
    /// `keyscope.v1.Checker/Check`.
    Native(pb::CheckRequest),
    /// `envoy.service.auth.v3.Authorization/Check`.
    Envoy(Box<envoy_types::pb::envoy::service::auth::v3::CheckRequest>),
    /// `grpc.health.v1.Health/Check`.
    Health(tonic_health::pb::HealthCheckRequest),
}

impl Call {
    async fn once(&self, channel: &Channel) -> bool {
        match self {
            Call::Native(request) => CheckerClient::new(channel.clone()).check(request.clone()).await.is_ok(),
            Call::Envoy(request) => {
                envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
                    channel.clone(),
                )
                .check(request.as_ref().clone())
                .await
                .is_ok_and(|r| r.into_inner().status.is_some_and(|s| s.code == 0))
            }
            Call::Health(request) => tonic_health::pb::health_client::HealthClient::new(channel.clone())
                .check(request.clone())
                .await
                .is_ok_and(|r| {
                    r.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                }),
        }
    }
}

/// Drives `Check` with `concurrency` workers until `duration` or `requests`; with `rate`,
/// paces the workers to that many requests per second in total (open loop per worker).
async fn drive(
    channel: Channel,
    request: pb::CheckRequest,
    concurrency: usize,
    duration: Duration,
    requests: u64,
    rate: Option<f64>,
) -> Report {
    drive_call(channel, Call::Native(request), concurrency, duration, requests, rate).await
}

async fn drive_call(
    channel: Channel,
    call: Call,
    concurrency: usize,
    duration: Duration,
    requests: u64,
    rate: Option<f64>,
) -> Report {
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let channel = channel.clone();
        let call = call.clone();
        let sent = sent.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut ticker = rate.map(|r| {
                let mut t = tokio::time::interval(Duration::from_secs_f64(concurrency as f64 / r));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while start.elapsed() < duration && sent.fetch_add(1, Ordering::Relaxed) < requests {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let t0 = Instant::now();
                if call.once(&channel).await {
                    latencies.push(t0.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut report = Report { latencies_us: Vec::new(), errors: 0, elapsed: Duration::ZERO };
    for w in workers {
        let (l, e) = w.await.expect("worker");
        report.latencies_us.extend(l);
        report.errors += e;
    }
    report.elapsed = start.elapsed();
    report.latencies_us.sort_unstable();
    report
}

struct Noop;

#[tonic::async_trait]
impl Checker for Noop {
    async fn check(&self, _: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        Ok(Response::new(pb::CheckResponse { allowed: true, reason: pb::Reason::Ok.into(), ..Default::default() }))
    }

    async fn batch_check(&self, _: Request<pb::BatchCheckRequest>) -> Result<Response<pb::BatchCheckResponse>, Status> {
        Ok(Response::new(pb::BatchCheckResponse::default()))
    }
}

async fn connect(addr: std::net::SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect")
}

async fn start_noop() -> Channel {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::checker_server::CheckerServer::new(Noop))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    connect(addr).await
}

/// A keyscope replica on `redis` under `prefix`: with a cache (the default deployment) or
/// without (every check goes to Redis).
struct Replica {
    core: Arc<Keyscope>,
    channel: Channel,
    cache: Option<CachedStore>,
    redis: RedisStore,
}

async fn replica(url: &str, prefix: &str, cached: bool) -> Replica {
    let options = RedisOptions {
        prefix: prefix.to_owned(),
        check_timeout: Duration::from_millis(500),
        admin_timeout: Duration::from_secs(5),
        ..RedisOptions::new(url)
    };
    let redis = RedisStore::connect(options).await.expect("redis");
    let (store, cache): (Arc<dyn Store>, _) = if cached {
        let cache = CachedStore::new(
            Arc::new(redis.clone()),
            CacheSettings { max_keys: 2_000_000, max_scopes: 2_000_000, ..CacheSettings::default() },
        );
        std::mem::forget(redis.follow_changes(cache.sink()).await.expect("feed"));
        (Arc::new(cache.clone()), Some(cache))
    } else {
        (Arc::new(redis.clone()), None)
    };
    let core = Arc::new(
        Keyscope::new(
            store,
            Builtins::new(&[]).unwrap(),
            TokenFormat::new("ks").unwrap(),
            Pepper::new(b"load-generator-pepper-0123").unwrap(),
        )
        .with_quotas(keyscope::service::Quotas { max_keys_per_tenant: 10_000_000, max_scopes_per_tenant: 10_000 }),
    );
    let _ = core.ensure_bootstrap(None).await.expect("bootstrap");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = core.clone();
    tokio::spawn(async move { keyscope::server::serve(listener, serving, std::future::pending()).await });
    Replica { core, channel: connect(addr).await, cache, redis }
}

/// An admin caller in tenant `bench`.
async fn admin(core: &Keyscope) -> keyscope::service::Caller {
    let tokens = TokenFormat::new("ks").unwrap();
    let (t, text) = tokens.issue(&tokens.new_key_id().unwrap()).unwrap();
    drop(t);
    // The bootstrap token was printed only to the store's first caller; make our own admin.
    match core.ensure_bootstrap(Some(text.expose())).await.expect("bootstrap key") {
        Bootstrap::ConfiguredCreated(_) | Bootstrap::Configured(_) => {}
        other => panic!("unexpected {other:?}"),
    }
    core.authorize(Some(text.expose()), "bench", &Module::keys(), Action::Create).await.expect("admin")
}

async fn key_with_scopes(core: &Keyscope, caller: &keyscope::service::Caller, scopes: usize) -> String {
    let mut ids = Vec::new();
    for i in 0..scopes {
        let last = i + 1 == scopes;
        let patterns: Vec<String> =
            (0..8).map(|p| format!("area{i}.module{p}")).chain(last.then(|| "courses".to_owned())).collect();
        let none: &[String] = &[];
        let draft = ScopeDraft {
            label: format!("bench-{}-{i}-{}", scopes, rand_suffix()).parse().unwrap(),
            description: String::new(),
            mode: keyscope::domain::ScopeMode::Allow,
            rules: keyscope::domain::Rules::parse([none, &patterns[..], none, none]).unwrap(),
        };
        ids.push(core.create_scope(caller, draft).await.expect("scope").id);
    }
    let (_, token) = core.create_key(caller, NewKey { scope_ids: ids, ..Default::default() }).await.expect("key");
    token.expose().to_owned()
}

fn rand_suffix() -> String {
    TokenFormat::new("x").unwrap().new_key_id().unwrap().as_str()[..8].to_owned()
}

fn check_request(token: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        credential: Some(pb::check_request::Credential::Token(token.to_owned())),
        tenant: String::new(),
        module: "courses".into(),
        action: pb::Action::Read.into(),
        explain: false,
        source_address: Default::default(),
    }
}

async fn hit(redis: &RedisServer, a: &Args) {
    println!(
        "\n## hit: Check answered from the cache vs a no-op tonic server (concurrency {}, {:?} each)\n",
        a.concurrency, a.duration
    );
    let noop = start_noop().await;
    let r = replica(&redis.url(), "bench-hit", true).await;
    let caller = admin(&r.core).await;
    let token = key_with_scopes(&r.core, &caller, 1).await;
    let request = check_request(&token);
    // Warm up both (connections, cache) before measuring.
    drive(noop.clone(), request.clone(), a.concurrency, Duration::from_secs(1), a.requests, None).await;
    drive(r.channel.clone(), request.clone(), a.concurrency, Duration::from_secs(1), a.requests, None).await;
    let base = drive(noop.clone(), request.clone(), a.concurrency, a.duration, a.requests, None).await;
    let ks = drive(r.channel.clone(), request.clone(), a.concurrency, a.duration, a.requests, None).await;
    let half_rate = ks.throughput() / 2.0;
    let half = drive(r.channel.clone(), request.clone(), a.concurrency, a.duration, a.requests, Some(half_rate)).await;
    println!("{HEADER}");
    println!("{}", base.line("no-op tonic server, max"));
    println!("{}", ks.line("keyscope Check (cache hit), max"));
    println!("{}", half.line(&format!("keyscope Check (cache hit), paced at {half_rate:.0}/s")));
    println!("\nthroughput ratio keyscope / no-op: {:.2}", ks.throughput() / base.throughput());
    let stats = r.cache.as_ref().unwrap().stats();
    println!("cache: {} hits, {} misses", stats.hits, stats.misses);
}

async fn envoy(redis: &RedisServer, a: &Args) {
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, attribute_context};
    println!(
        "\n## envoy: ext_authz Check next to the native Check, cache hit (concurrency {}, {:?} each)\n",
        a.concurrency, a.duration
    );
    let r = replica(&redis.url(), "bench-envoy", true).await;
    let caller = admin(&r.core).await;
    let token = key_with_scopes(&r.core, &caller, 1).await;
    let native = Call::Native(check_request(&token));
    let http = attribute_context::HttpRequest {
        method: "GET".into(),
        path: "/api/courses/42".into(),
        headers: [
            ("authorization".to_owned(), format!("Bearer {token}")),
            ("x-request-id".to_owned(), "bench".to_owned()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let envoy = Call::Envoy(Box::new(CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
            context_extensions: [("keyscope_module".to_owned(), "courses".to_owned())].into_iter().collect(),
            ..Default::default()
        }),
    }));
    drive_call(r.channel.clone(), native.clone(), a.concurrency, Duration::from_secs(1), a.requests, None).await;
    drive_call(r.channel.clone(), envoy.clone(), a.concurrency, Duration::from_secs(1), a.requests, None).await;
    let n = drive_call(r.channel.clone(), native, a.concurrency, a.duration, a.requests, None).await;
    let e = drive_call(r.channel.clone(), envoy, a.concurrency, a.duration, a.requests, None).await;
    println!("{HEADER}");
    println!("{}", n.line("keyscope.v1.Checker/Check"));
    println!("{}", e.line("envoy.service.auth.v3.Authorization/Check"));
    println!("\nthroughput ratio ext_authz / native: {:.2}", e.throughput() / n.throughput());
}

/// An OTLP trace receiver that counts the spans it is sent.
#[derive(Clone, Default)]
struct SpanCounter(Arc<AtomicU64>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for SpanCounter {
    async fn export(
        &self,
        request: Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    ) -> Result<Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>, Status> {
        let spans: usize =
            request.into_inner().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(Response::new(Default::default()))
    }
}

/// A running keyscope binary, a channel to it and a check request it allows.
struct Bin {
    server: process::Server,
    channel: Channel,
    request: pb::CheckRequest,
    /// `https://localhost:<port>` and the CA that signed its certificate, when TLS is on.
    tls: Option<(String, String)>,
}

/// A client endpoint of `bin` (over TLS when it serves TLS).
fn endpoint_of(server: &process::Server, tls: Option<&str>) -> tonic::transport::Endpoint {
    match tls {
        None => tonic::transport::Endpoint::from_shared(server.url()).unwrap(),
        Some(ca) => {
            let port = server.addr.rsplit(':').next().unwrap();
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .domain_name("localhost");
            tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
        }
    }
}

/// The real `keyscope` binary (memory store), with `envs`, and a check request for a key made
/// through its admin API; `tls` is the CA of the certificate it serves, if it serves TLS.
async fn binary(envs: &[(&str, &str)], tls: Option<&str>) -> Bin {
    let mut options = process::ServerOptions::default();
    for (name, value) in envs {
        options = options.env(name, value);
    }
    binary_with(options, tls).await
}

/// [`binary`] started with `options`.
async fn binary_with(options: process::ServerOptions, tls: Option<&str>) -> Bin {
    let server = options.start();
    let channel = endpoint_of(&server, tls).connect().await.expect("connect");
    let mut create = Request::new(pb::CreateKeyRequest {
        tenant: "bench".into(),
        scope_ids: vec!["read-only".into()],
        ..Default::default()
    });
    create.metadata_mut().insert("authorization", format!("Bearer {}", server.admin_token()).parse().unwrap());
    let created = pb::key_admin_client::KeyAdminClient::new(channel.clone()).create_key(create).await.expect("key");
    let request = check_request(&created.into_inner().token);
    let tls = tls.map(|ca| (server.addr.clone(), ca.to_owned()));
    Bin { server, channel, request, tls }
}

/// `rounds` alternating runs of `first` and `second`, after a warm-up of each: per round the
/// two reports, and each process's CPU time over its measured runs.
struct Paired {
    rows: Vec<(Report, Report)>,
    cpu: (Duration, Duration),
}

impl Paired {
    /// Warms both up for `warm_up`, then runs the rounds.
    async fn run(a: &Args, first: &Bin, second: &Bin, rounds: usize, warm_up: Duration) -> Paired {
        let run = |bin: &Bin, duration: Duration| {
            drive(bin.channel.clone(), bin.request.clone(), a.concurrency, duration, a.requests, None)
        };
        run(first, warm_up).await;
        run(second, warm_up).await;
        Self::measure(a, first, second, rounds).await
    }

    async fn measure(a: &Args, first: &Bin, second: &Bin, rounds: usize) -> Paired {
        let run = |bin: &Bin, duration: Duration| {
            drive(bin.channel.clone(), bin.request.clone(), a.concurrency, duration, a.requests, None)
        };
        let (mut rows, mut cpu) = (Vec::new(), (Duration::ZERO, Duration::ZERO));
        for _ in 0..rounds {
            let before = cpu_time(first.server.pid());
            let one = run(first, a.duration).await;
            cpu.0 += cpu_time(first.server.pid()) - before;
            let before = cpu_time(second.server.pid());
            let two = run(second, a.duration).await;
            cpu.1 += cpu_time(second.server.pid()) - before;
            rows.push((one, two));
        }
        Paired { rows, cpu }
    }

    fn answered(&self) -> (usize, usize) {
        let n = |pick: fn(&(Report, Report)) -> &Report| self.rows.iter().map(|r| pick(r).latencies_us.len()).sum();
        (n(|r| &r.0), n(|r| &r.1))
    }

    /// Prints the rounds, the throughput ratio first / second and the CPU per check.
    fn print(&self, first: &str, second: &str) {
        println!("{HEADER}");
        for (i, (one, two)) in self.rows.iter().enumerate() {
            println!("{}", one.line(&format!("{first}, round {}", i + 1)));
            println!("{}", two.line(&format!("{second}, round {}", i + 1)));
        }
        let mut ratios: Vec<f64> = self.rows.iter().map(|(one, two)| one.throughput() / two.throughput()).collect();
        ratios.sort_by(f64::total_cmp);
        let (n1, n2) = self.answered();
        let rate = |n: usize, pick: fn(&(Report, Report)) -> &Report| {
            n as f64 / self.rows.iter().map(|r| pick(r).elapsed.as_secs_f64()).sum::<f64>()
        };
        println!(
            "\nthroughput ratio {first} / {second}: {:.2} over all rounds; per round {}",
            rate(n1, |r| &r.0) / rate(n2, |r| &r.1),
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
        );
        let per_check = |cpu: Duration, n: usize| cpu.as_secs_f64() * 1e6 / n.max(1) as f64;
        println!(
            "keyscope process CPU per check: {first} {:.1} us, {second} {:.1} us (ratio {:.2})",
            per_check(self.cpu.0, n1),
            per_check(self.cpu.1, n2),
            per_check(self.cpu.1, n2) / per_check(self.cpu.0, n1)
        );
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (in parentheses, which may hold spaces).
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name; in
    // clock ticks (`getconf CLK_TCK`).
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / clock_ticks_per_second())
}

/// `getconf CLK_TCK`, asked once (100 when it cannot be asked, as on every Linux).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

async fn traces(a: &Args) {
    const ROUNDS: usize = 4;
    println!(
        "\n## traces: the keyscope binary with every check traced and exported over OTLP to a local \
         receiver vs traces off (concurrency {}, {:?} each, {ROUNDS} alternating rounds)\n",
        a.concurrency, a.duration
    );
    let counter = SpanCounter::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    let service = opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(
        counter.clone(),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    let endpoint = format!("http://{receiver}");
    let traced =
        binary(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_TRACES_SAMPLER", "always_on")], None).await;
    let plain = binary(&[], None).await;
    // A longer warm-up than the other scenarios: the traced process's first seconds (the
    // exporter's connection and buffers) are not its steady state.
    Paired::run(a, &traced, &plain, 0, Duration::from_secs(3)).await;
    let spans_before = counter.0.load(Ordering::Relaxed);
    let paired = Paired::measure(a, &traced, &plain, ROUNDS).await;
    // Let the last batch arrive before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spans = counter.0.load(Ordering::Relaxed) - spans_before;
    let metrics = process_metrics(&traced.server.http_addr).await;
    paired.print("traces on (every check exported)", "traces off");
    let on_n = paired.answered().0;
    println!("spans received by the collector during the measured rounds: {spans} (checks answered: {on_n})");
    println!("{metrics}");
    drop((traced, plain));
}

/// New connections to `bin`, each answering one check, from `workers` tasks for `duration`:
/// connections per second, and the server's CPU time per connection in microseconds.
async fn connection_churn(bin: &Bin, workers: usize, duration: Duration) -> (f64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let cpu = cpu_time(bin.server.pid());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let endpoint = endpoint_of(&bin.server, bin.tls.as_ref().map(|(_, ca)| ca.as_str()));
        let (request, done) = (bin.request.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < duration {
                let channel = endpoint.connect().await.expect("connect");
                CheckerClient::new(channel).check(request.clone()).await.expect("check");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed).max(1) as f64;
    let cpu = (cpu_time(bin.server.pid()) - cpu).as_secs_f64() * 1e6 / n;
    (n / start.elapsed().as_secs_f64(), cpu)
}

async fn tls(a: &Args) {
    const ROUNDS: usize = 4;
    println!(
        "\n## tls: Check over TLS (rustls, TLS 1.3, ECDSA P-256) vs plaintext, two keyscope binaries \
         (memory store; concurrency {}, {:?} each, {ROUNDS} alternating rounds; then new connections)\n",
        a.concurrency, a.duration
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::Ca::new("bench CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let secured = binary(
        &[("KEYSCOPE__SERVER__TLS__CERT_FILE", &cert), ("KEYSCOPE__SERVER__TLS__KEY_FILE", &key)],
        Some(&ca.pem),
    )
    .await;
    let plain = binary(&[], None).await;
    let paired = Paired::run(a, &secured, &plain, ROUNDS, Duration::from_secs(1)).await;
    paired.print("TLS", "plaintext");
    let churn = Duration::from_secs(3);
    let (tls_rate, tls_cpu) = connection_churn(&secured, 4, churn).await;
    let (plain_rate, plain_cpu) = connection_churn(&plain, 4, churn).await;
    println!(
        "new connections (connect + one Check, 4 workers, {churn:?}): TLS {tls_rate:.0}/s ({tls_cpu:.0} us keyscope CPU \
         each), plaintext {plain_rate:.0}/s ({plain_cpu:.0} us each)"
    );
}

/// Requests of each kind per round of the `health` scenario (fewer with `--requests`).
const HEALTH_REQUESTS: u64 = 200_000;
/// The same under callgrind, where the server runs some 50 times slower.
const CALLGRIND_REQUESTS: u64 = 20_000;
/// The longest one round of the `health` scenarios may take: they stop even if a server stalls.
const HEALTH_ROUND_LIMIT: Duration = Duration::from_secs(600);

/// How long the `health` scenarios warm a server's connection up before measuring. Every
/// response carries hyper's `date` header, whose value changes each second: each new value
/// enters the connection's HPACK table (4 KiB) and lengthens h2's search of it on every later
/// response, until the table is full after about a minute (about 5,000 instructions more per
/// response by then, under callgrind). Measured before that, later rounds cost more than
/// earlier ones whatever the code does.
const HEALTH_WARM_UP: Duration = Duration::from_secs(70);

/// The two calls the `health` scenarios compare on `bin`, `grpc.health.v1.Health/Check` of
/// the checks service and an allowed `Checker/Check` (asserted here, once), after a warm-up
/// of both (see [`HEALTH_WARM_UP`]; the cache and the allocator's free lists warm up too).
async fn health_pair(bin: &Bin, concurrency: usize) -> [(&'static str, Call); 2] {
    let answer = CheckerClient::new(bin.channel.clone()).check(bin.request.clone()).await.expect("check");
    assert!(answer.into_inner().allowed, "the benchmark key is allowed");
    let service = <pb::checker_server::CheckerServer<Noop> as tonic::server::NamedService>::NAME;
    let calls = [
        ("grpc.health.v1.Health/Check", Call::Health(tonic_health::pb::HealthCheckRequest { service: service.into() })),
        ("keyscope.v1.Checker/Check", Call::Native(bin.request.clone())),
    ];
    for (_, call) in &calls {
        drive_call(bin.channel.clone(), call.clone(), concurrency, HEALTH_WARM_UP / 2, u64::MAX, None).await;
    }
    calls
}

/// `n` calls of `call` to `bin` with `concurrency` workers on its one connection; panics on
/// any failed call, since the figures would then mean something else.
async fn health_round(bin: &Bin, call: &Call, concurrency: usize, n: u64) -> Report {
    let report = drive_call(bin.channel.clone(), call.clone(), concurrency, HEALTH_ROUND_LIMIT, n, None).await;
    assert_eq!(report.errors, 0, "every call answers");
    assert_eq!(report.latencies_us.len() as u64, n, "the round ended before its last call");
    report
}

/// The servers the `health` scenarios measure, as options of the binary: on the memory store,
/// and on Redis behind its replica cache (warm after the warm-up).
fn health_servers(redis: &RedisServer) -> [(&'static str, process::ServerOptions); 2] {
    let redis_store = process::ServerOptions::default()
        .env("KEYSCOPE__STORE__KIND", "redis")
        .env("KEYSCOPE__STORE__REDIS__URL", &redis.url())
        .env("KEYSCOPE__STORE__REDIS__PREFIX", &format!("bench-health-{}", rand_suffix()));
    [("memory store", process::ServerOptions::default()), ("Redis, warm replica cache", redis_store)]
}

/// Prints the health-vs-Check summary: `per_request` holds, per server, the cost of one
/// health call and of one Check in `unit`, shown with `decimals`.
fn health_summary(unit: &str, decimals: usize, per_request: &[(&str, f64, f64)]) {
    println!("\n| server | health, {unit} per request | Check, {unit} per request | ratio Check / health |");
    println!("|---|---:|---:|---:|");
    for (server, health, check) in per_request {
        println!("| {server} | {health:.decimals$} | {check:.decimals$} | {:.3} |", check / health);
    }
    println!("(issue 12 asks for a ratio of at most 1.05)");
}

/// `health`: the keyscope binary's CPU time (utime + stime) per request, `Checker/Check`
/// (allowed) against `grpc.health.v1.Health/Check` of the same process, in alternating rounds
/// of a fixed number of requests; on the memory store, then on Redis behind a warm cache.
async fn health(redis: &RedisServer, a: &Args) {
    const ROUNDS: usize = 3;
    let n = a.requests.min(HEALTH_REQUESTS);
    println!(
        "\n## health: keyscope process CPU per request, Checker/Check (allowed) vs grpc.health.v1.Health/Check \
         of the same binary (concurrency {}, one HTTP/2 connection, {n} requests of each per round, {ROUNDS} \
         alternating rounds after a {HEALTH_WARM_UP:?} warm-up)\n",
        a.concurrency
    );
    println!("| server | call | round | requests/s | p50 ms | server CPU us per request |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    for (server, options) in health_servers(redis) {
        let bin = binary_with(options, None).await;
        let pid = bin.server.pid();
        let calls = health_pair(&bin, a.concurrency).await;
        let mut totals = [Duration::ZERO; 2];
        for round in 1..=ROUNDS {
            for ((name, call), total) in calls.iter().zip(&mut totals) {
                let before = cpu_time(pid);
                let report = health_round(&bin, call, a.concurrency, n).await;
                let cpu = cpu_time(pid) - before;
                *total += cpu;
                let per = cpu.as_secs_f64() * 1e6 / n as f64;
                println!(
                    "| {server} | {name} | {round} | {:.0} | {:.3} | {per:.2} |",
                    report.throughput(),
                    report.pct(0.5)
                );
            }
        }
        let [health, check] = totals.map(|cpu| cpu.as_secs_f64() * 1e6 / (n * ROUNDS as u64) as f64);
        summary.push((server, health, check));
    }
    health_summary("CPU us", 2, &summary);
}

/// `health-callgrind`: the pairs of the `health` scenario with the binary under
/// `valgrind --tool=callgrind`: the instructions it executes per request, from a dump
/// (`callgrind_control -d`, which zeroes the counters) after each batch of requests.
/// Repeatable to about a percent whatever else loads the machine. With
/// `KEYSCOPE_BENCH_CALLGRIND_DIR` set, the dumps are kept there (one folder per server) for
/// `callgrind_annotate`: where a Check's instructions go that a health call's do not.
async fn health_callgrind(redis: &RedisServer, a: &Args) {
    const ROUNDS: usize = 3;
    let n = a.requests.min(CALLGRIND_REQUESTS);
    println!(
        "\n## health-callgrind: instructions per request under callgrind, Checker/Check (allowed) vs \
         grpc.health.v1.Health/Check of the same binary (concurrency {}, {n} requests of each per round, \
         {ROUNDS} alternating rounds after a {HEALTH_WARM_UP:?} warm-up)\n",
        a.concurrency
    );
    println!("| server | call | round | requests/s | instructions per request |");
    println!("|---|---|---:|---:|---:|");
    let kept = std::env::var_os("KEYSCOPE_BENCH_CALLGRIND_DIR").map(std::path::PathBuf::from);
    let mut summary = Vec::new();
    for (server, options) in health_servers(redis) {
        let temp = tempfile::tempdir().unwrap();
        let dir = match &kept {
            // `memory` or `redis`.
            Some(kept) => kept.join(server.split([' ', ',']).next().unwrap_or(server).to_lowercase()),
            None => temp.path().to_owned(),
        };
        std::fs::create_dir_all(&dir).unwrap();
        let options = options.wrapped(
            "valgrind",
            [
                "--tool=callgrind".to_owned(),
                "--collect-atstart=yes".to_owned(),
                // %p: the process id, so that the dumps of an earlier run are never read again.
                format!("--callgrind-out-file={}", dir.join("callgrind.out.%p").display()),
                format!("--log-file={}", dir.join("valgrind.log.%p").display()),
            ],
        );
        let bin = binary_with(options, None).await;
        let pid = bin.server.pid();
        let calls = health_pair(&bin, a.concurrency).await;
        // Zeroes the counters: everything before (start-up, warm-up) is left out.
        callgrind_dump(pid, &dir);
        let mut totals = [0u64; 2];
        for round in 1..=ROUNDS {
            for ((name, call), total) in calls.iter().zip(&mut totals) {
                let report = health_round(&bin, call, a.concurrency, n).await;
                let (instructions, dump) = callgrind_dump(pid, &dir);
                *total += instructions;
                let per = instructions as f64 / n as f64;
                let file = if kept.is_some() { format!(" ({})", dump.display()) } else { String::new() };
                println!("| {server} | {name} | {round} | {:.0} | {per:.0}{file} |", report.throughput());
            }
        }
        let [health, check] = totals.map(|total| total as f64 / (n * ROUNDS as u64) as f64);
        summary.push((server, health, check));
    }
    health_summary("instructions", 0, &summary);
}

/// Has callgrind in process `pid` dump its counters into `dir` (it zeroes them after) and
/// returns the instructions (Ir) of that dump, those executed since the previous one, and
/// its file.
fn callgrind_dump(pid: u32, dir: &std::path::Path) -> (u64, std::path::PathBuf) {
    let dumps = || -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.retain(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("callgrind.out")));
        files
    };
    let before = dumps();
    let control = std::process::Command::new("callgrind_control")
        .args(["-d", &pid.to_string()])
        .output()
        .expect("run callgrind_control (valgrind)");
    assert!(
        control.status.success(),
        "callgrind_control -d {pid} failed: {}",
        String::from_utf8_lossy(&control.stderr)
    );
    // The dump is complete once its `totals:` line (its last) is written.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let totals = dumps().into_iter().filter(|p| !before.contains(p)).find_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            let line = text.lines().find(|l| l.starts_with("totals:"))?;
            Some((line.split_whitespace().nth(1)?.parse().ok()?, p))
        });
        if let Some(totals) = totals {
            return totals;
        }
        assert!(Instant::now() < deadline, "no callgrind dump of {pid} appeared in {}", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The span export counters of a running binary.
async fn process_metrics(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text.lines().filter(|l| l.starts_with("keyscope_trace_spans")).collect::<Vec<_>>().join("\n")
}

async fn redis_rtt(redis: &RedisStore, n: usize) -> Report {
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        redis.ping().await.expect("ping");
        latencies.push(t0.elapsed().as_micros() as u64);
    }
    latencies.sort_unstable();
    Report { latencies_us: latencies, errors: 0, elapsed: start.elapsed() }
}

async fn miss(redis: &RedisServer, a: &Args) {
    println!("\n## miss: Check with no replica cache (every check reads Redis), concurrency 1 and {}\n", a.concurrency);
    let hot = replica(&redis.url(), "bench-miss", true).await;
    let cold = replica(&redis.url(), "bench-miss", false).await;
    let caller = admin(&cold.core).await;
    let token = key_with_scopes(&cold.core, &caller, 1).await;
    let request = check_request(&token);
    drive(hot.channel.clone(), request.clone(), 1, Duration::from_secs(1), a.requests, None).await;
    drive(cold.channel.clone(), request.clone(), 1, Duration::from_secs(1), a.requests, None).await;
    let hit1 = drive(hot.channel.clone(), request.clone(), 1, a.duration, a.requests, None).await;
    let miss1 = drive(cold.channel.clone(), request.clone(), 1, a.duration, a.requests, None).await;
    let missn = drive(cold.channel.clone(), request.clone(), a.concurrency, a.duration, a.requests, None).await;
    let rtt = redis_rtt(&cold.redis, 5000).await;
    println!("{HEADER}");
    println!("{}", hit1.line("Check, cache hit, 1 client"));
    println!("{}", miss1.line("Check, cache miss, 1 client"));
    println!("{}", missn.line(&format!("Check, cache miss, {} clients", a.concurrency)));
    println!("{}", rtt.line("redis PING from the same process, 1 client"));
    println!(
        "\nmiss - hit at p50: {:.3} ms; Redis round trip p50: {:.3} ms -> {:.2} round trips",
        miss1.pct(0.5) - hit1.pct(0.5),
        rtt.pct(0.5),
        (miss1.pct(0.5) - hit1.pct(0.5)) / rtt.pct(0.5)
    );
    let cli = std::process::Command::new("timeout")
        .args(["3", "redis-cli", "-p", &redis.port.to_string(), "--latency", "--raw"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("redis-cli --latency --raw (min max avg samples, ms, 3 s): {cli}");
}

async fn propagation(redis: &RedisServer) {
    const ROUNDS: usize = 300;
    println!("\n## propagation: RevokeKey on replica A until replica B denies ({ROUNDS} keys)\n");
    let a = replica(&redis.url(), "bench-prop", true).await;
    let b = replica(&redis.url(), "bench-prop", true).await;
    let caller = admin(&a.core).await;
    let mut b_client = CheckerClient::new(b.channel.clone());
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let (key, token) = a
            .core
            .create_key(&caller, NewKey { scope_ids: vec!["read-only".parse().unwrap()], ..Default::default() })
            .await
            .unwrap();
        let request = check_request(token.expose());
        assert!(b_client.check(request.clone()).await.unwrap().into_inner().allowed);
        a.core.set_key_state(&caller, &key.id, None, keyscope::domain::KeyState::Revoked).await.unwrap();
        let revoked_at = Instant::now();
        loop {
            let answer = b_client.check(request.clone()).await.unwrap().into_inner();
            if !answer.allowed {
                break;
            }
            assert!(revoked_at.elapsed() < Duration::from_secs(10), "B never saw the revocation");
        }
        samples.push(revoked_at.elapsed().as_micros() as u64);
    }
    samples.sort_unstable();
    let report = Report { latencies_us: samples, errors: 0, elapsed: Duration::from_secs(1) };
    println!("| revocation seen by B | p50 ms | p90 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|");
    println!(
        "| {ROUNDS} revocations | {:.3} | {:.3} | {:.3} | {:.3} |",
        report.pct(0.5),
        report.pct(0.9),
        report.pct(0.99),
        report.pct(1.0)
    );
    println!("(each figure includes one B Check round trip, the way a client would notice)");
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 4096
}

/// Writes `n` keys of tenant `bench` holding `read-only` straight through the store.
async fn populate(store: &RedisStore, n: usize, pepper: &Pepper) -> Vec<keyscope::domain::KeyId> {
    let tokens = TokenFormat::new("ks").unwrap();
    let ids: Vec<_> = (0..n).map(|_| tokens.new_key_id().unwrap()).collect();
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..64 {
        let (store, ids, next, pepper, tokens) =
            (store.clone(), ids.clone(), next.clone(), pepper.clone(), tokens.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(id) = ids.get(i) else { break };
                let (token, _) = tokens.issue(id).unwrap();
                let now = SystemTime::now();
                let key = Key {
                    id: id.clone(),
                    tenant: "bench".parse().unwrap(),
                    description: String::new(),
                    owner: format!("owner-{}", i % 100),
                    scope_ids: vec!["read-only".parse().unwrap()],
                    state: keyscope::domain::KeyState::Active,
                    expires_at: None,
                    metadata: Default::default(),
                    version: 1,
                    created_at: now,
                    updated_at: now,
                    last_used_at: None,
                    secret_hash: pepper.hash(id, &token.secret),
                    previous_secret: None,
                    rotated_at: None,
                    allowed_cidrs: Vec::new(),
                    rate_limit: None,
                };
                let record = keyscope::domain::AuditRecord {
                    tenant: key.tenant.clone(),
                    at: now,
                    actor: keyscope::domain::Actor::Keyscope,
                    operation: keyscope::domain::AuditOperation::CreateKey,
                    target: keyscope::domain::AuditTarget::Key(key.id.clone()),
                    changed: Vec::new(),
                    details: Default::default(),
                    request_id: "bench-populate".parse().unwrap(),
                };
                // The bench's populated keys keep a short audit log: retention is not measured here.
                let audit = keyscope::store::AuditWrite { record: &record, max_events: 100, access_version: None };
                let write = keyscope::store::KeyWrite { key: &key, expected_version: None, stored_scopes: &[], audit };
                store.put_key(write, usize::MAX).await.expect("populate");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    Arc::try_unwrap(ids).unwrap()
}

async fn scale(redis: &RedisServer, a: &Args) {
    println!("\n## scale: hit-path latency with 1,000 vs 1,000,000 keys, 1 vs 32 scopes; memory per cached key\n");
    let mut rows = Vec::new();
    let pepper = Pepper::new(b"load-generator-pepper-0123").unwrap();
    for (prefix, keys) in [("bench-1k", 1_000usize), ("bench-1m", 1_000_000)] {
        let r = replica(&redis.url(), prefix, true).await;
        let started = Instant::now();
        let ids = populate(&r.redis, keys, &pepper).await;
        println!("populated {keys} keys in {:.1} s", started.elapsed().as_secs_f64());
        // Fill the cache with every key (as many distinct hot keys), measuring memory.
        let cache = r.cache.as_ref().unwrap();
        let before = rss_bytes();
        let mut fills = Vec::new();
        let ids = Arc::new(ids);
        let next = Arc::new(AtomicU64::new(0));
        for _ in 0..32 {
            let (cache, ids, next) = (cache.clone(), ids.clone(), next.clone());
            fills.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(id) = ids.get(i) else { break };
                    cache.credential(id).await.expect("fill");
                }
            }));
        }
        for f in fills {
            f.await.unwrap();
        }
        let cached = cache.cached_keys();
        let per_key = (rss_bytes().saturating_sub(before)) as f64 / cached.max(1) as f64;
        let caller = admin(&r.core).await;
        for scopes in [1usize, 32] {
            let token = key_with_scopes(&r.core, &caller, scopes).await;
            let request = check_request(&token);
            drive(r.channel.clone(), request.clone(), 1, Duration::from_millis(500), a.requests, None).await;
            let one = drive(r.channel.clone(), request.clone(), 1, a.duration, a.requests, None).await;
            let many = drive(r.channel.clone(), request, a.concurrency, a.duration, a.requests, None).await;
            rows.push((keys, scopes, one, many, cached, per_key));
        }
    }
    println!(
        "| keys in Redis | scopes per key | 1 client p50 ms | 1 client p99 ms | {} clients checks/s | {} clients p99 ms | keys cached | RSS per cached key |",
        a.concurrency, a.concurrency
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (keys, scopes, one, many, cached, per_key) in &rows {
        println!(
            "| {keys} | {scopes} | {:.3} | {:.3} | {:.0} | {:.3} | {cached} | {per_key:.0} B |",
            one.pct(0.5),
            one.pct(0.99),
            many.throughput(),
            many.pct(0.99)
        );
    }
    let p50 = |k: usize, s: usize| rows.iter().find(|r| r.0 == k && r.1 == s).map(|r| r.2.pct(0.5)).unwrap_or(f64::NAN);
    println!("\nratio p50 1M/1k keys (1 scope): {:.2}", p50(1_000_000, 1) / p50(1_000, 1));
    println!("ratio p50 32/1 scopes (1k keys): {:.2}", p50(1_000, 32) / p50(1_000, 1));
    println!("ratio p50 32/1 scopes (1M keys): {:.2}", p50(1_000_000, 32) / p50(1_000_000, 1));
}

fn main() {
    let a = args();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let redis = RedisServer::start();
        println!(
            "# keyscope load run: {} (redis-server on 127.0.0.1:{})",
            humantime::format_rfc3339_seconds(SystemTime::now()),
            redis.port
        );
        for s in &a.scenarios {
            match s.as_str() {
                "hit" => hit(&redis, &a).await,
                "miss" => miss(&redis, &a).await,
                "propagation" => propagation(&redis).await,
                "scale" => scale(&redis, &a).await,
                "envoy" => envoy(&redis, &a).await,
                "traces" => traces(&a).await,
                "tls" => tls(&a).await,
                "health" => health(&redis, &a).await,
                "health-callgrind" => health_callgrind(&redis, &a).await,
                other => panic!("unknown scenario {other}"),
            }
        }
    });
}
