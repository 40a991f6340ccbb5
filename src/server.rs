//! Wires the gRPC services, health and reflection, and serves them on a listener until a
//! shutdown future resolves. Tests call [`serve`] on `127.0.0.1:0`.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::ServingStatus;

use crate::{
    domain::limits,
    grpc::{
        AdminMethods, AuditLogService, CheckerService, Edge, ExtAuthzService, ExtAuthzSettings, KeyAdminService,
        PrincipalAdminService, ScopeAdminService, bearer_interceptor, call_span,
        pb::{
            self, audit_log_server::AuditLogServer, checker_server::CheckerServer, key_admin_server::KeyAdminServer,
            principal_admin_server::PrincipalAdminServer, scope_admin_server::ScopeAdminServer,
        },
    },
    service::Keyscope,
    telemetry::{CheckTracer, MeteredStore, Metrics, SpanExport},
    tls::{LoadedTls, ServerTlsFiles},
};

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What a server runs with besides the core.
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// How ext_authz maps HTTP requests to checks.
    pub ext_authz: ExtAuthzSettings,
    /// Where checks, store calls and admin calls are counted.
    pub metrics: Arc<Metrics>,
    /// The HTTP listener for `/metrics` and the probes, if any.
    pub http: Option<TcpListener>,
    /// Starts the span of each check (off by default).
    pub tracer: CheckTracer,
    /// After the shutdown future resolves: how long health reports NOT_SERVING while calls are
    /// still accepted, before draining.
    pub shutdown_delay: Duration,
    /// TLS on the gRPC port: the files (reloaded when they change) and their first reading.
    pub tls: Option<(ServerTlsFiles, LoadedTls)>,
    /// Readiness does not follow the store (it still goes NOT_SERVING at shutdown).
    pub ready_without_store: bool,
}

/// Serves keyscope's gRPC API on `listener` until `shutdown` resolves, then drains in-flight
/// calls and returns.
pub async fn serve(
    listener: TcpListener,
    core: Arc<Keyscope>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with(listener, core, ServeOptions::default(), shutdown).await
}

/// The gRPC health of every service and the readiness the HTTP probe reports, together.
#[derive(Clone)]
struct Health {
    reporter: tonic_health::server::HealthReporter,
    ready: Arc<AtomicBool>,
}

impl Health {
    async fn set(&self, serving: bool) {
        self.ready.store(serving, Ordering::Relaxed);
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.reporter.set_service_status("", status).await;
        for name in SERVICES {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// The gRPC health service name that reports liveness, not readiness.
pub const LIVENESS: &str = "liveness";

/// The keyscope services health reports on.
const SERVICES: [&str; 5] = [
    <CheckerServer<CheckerService> as tonic::server::NamedService>::NAME,
    <KeyAdminServer<KeyAdminService> as tonic::server::NamedService>::NAME,
    <ScopeAdminServer<ScopeAdminService> as tonic::server::NamedService>::NAME,
    <AuditLogServer<AuditLogService> as tonic::server::NamedService>::NAME,
    <PrincipalAdminServer<PrincipalAdminService> as tonic::server::NamedService>::NAME,
];

/// The services whose calls are admin calls (counted, and traced as admin spans).
const ADMIN_SERVICES: [&str; 4] = [SERVICES[1], SERVICES[2], SERVICES[3], SERVICES[4]];

/// [`serve`] with the options of the deployment.
pub async fn serve_with(
    listener: TcpListener,
    core: Arc<Keyscope>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let ServeOptions { ext_authz, metrics, http, tracer, shutdown_delay, tls, ready_without_store } = options;
    // Everything that can fail comes before any task is spawned.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    // For liveness probes: SERVING while the process serves, whatever the store does (a
    // restart would not bring Redis back, only empty the cache).
    reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
    let health = Health { reporter, ready: Arc::new(AtomicBool::new(false)) };
    let answers = core.store_ready().await;
    health.set(answers || ready_without_store).await;
    let readiness = tokio::spawn(follow_readiness(core.clone(), health.clone(), answers, ready_without_store));

    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = http.map(|listener| {
        let state = crate::http::HttpState { metrics: metrics.clone(), ready: health.ready.clone() };
        tokio::spawn(crate::http::serve(listener, state, async {
            let _ = http_stopped.await;
        }))
    });

    let checker = CheckerServer::new(CheckerService::new(core.clone(), metrics.clone(), tracer.clone()))
        .max_decoding_message_size(limits::MESSAGE_MAX_BYTES);
    let keys =
        KeyAdminServer::new(KeyAdminService::new(core.clone())).max_decoding_message_size(limits::MESSAGE_MAX_BYTES);
    let envoy = AuthorizationServer::new(ExtAuthzService::new(core.clone(), ext_authz, metrics.clone(), tracer))
        .max_decoding_message_size(limits::MESSAGE_MAX_BYTES);
    let audit =
        AuditLogServer::new(AuditLogService::new(core.clone())).max_decoding_message_size(limits::MESSAGE_MAX_BYTES);
    let principals = PrincipalAdminServer::new(PrincipalAdminService::new(core.clone()))
        .max_decoding_message_size(limits::MESSAGE_MAX_BYTES);
    let scopes =
        ScopeAdminServer::new(ScopeAdminService::new(core)).max_decoding_message_size(limits::MESSAGE_MAX_BYTES);
    let methods = Arc::new(AdminMethods::new(pb::FILE_DESCRIPTOR_SET, &ADMIN_SERVICES));
    let (admin_keys, admin_scopes, admin_audit) = (
        Edge::admin(InterceptedService::new(keys, bearer_interceptor), metrics.clone(), methods.clone()),
        Edge::admin(InterceptedService::new(scopes, bearer_interceptor), metrics.clone(), methods.clone()),
        Edge::admin(InterceptedService::new(audit, bearer_interceptor), metrics.clone(), methods.clone()),
    );
    let admin_principals =
        Edge::admin(InterceptedService::new(principals, bearer_interceptor), metrics.clone(), methods.clone());

    let drained = async move {
        shutdown.await;
        // Wait for the task: a `set(true)` under way must not land after the `set(false)`.
        readiness.abort();
        let _ = readiness.await;
        health.set(false).await;
        if !shutdown_delay.is_zero() {
            tracing::info!(
                delay_ms = shutdown_delay.as_millis() as u64,
                "shutting down: NOT_SERVING, still accepting calls"
            );
            tokio::time::sleep(shutdown_delay).await;
        }
        tracing::info!("shutting down: draining in-flight calls");
    };

    let router = Server::builder()
        .trace_fn(move |request| call_span(request, &methods))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(Edge::checks(checker))
        .add_service(envoy)
        .add_service(admin_keys)
        .add_service(admin_scopes)
        .add_service(admin_audit)
        .add_service(admin_principals);
    let served = match tls {
        // Checks are small request/response pairs: without TCP_NODELAY, Nagle's algorithm and
        // delayed ACKs add tens of milliseconds to some of them.
        None => {
            router.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), drained).await
        }
        Some((files, loaded)) => {
            let (incoming, acceptor) = crate::tls::incoming(listener, files, loaded, metrics.clone());
            let drained = async move {
                drained.await;
                // Stop accepting (this closes the listener) while in-flight calls drain.
                acceptor.abort();
            };
            router.serve_with_incoming_shutdown(incoming, drained).await
        }
    };
    // The probes and metrics stay up while gRPC drains, then stop with it.
    let _ = http_stop.send(());
    if let Some(task) = http_task
        && let Ok(Err(error)) = task.await
    {
        tracing::warn!(%error, "the HTTP endpoint failed");
    }
    served?;
    Ok(())
}

/// How often readiness asks the store whether it answers.
const READINESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps health (gRPC and the HTTP readiness probe) in step with the store: NOT_SERVING while
/// it does not answer, unless `without_store` (then the outage is only logged).
async fn follow_readiness(core: Arc<Keyscope>, health: Health, mut answered: bool, without_store: bool) {
    loop {
        tokio::time::sleep(READINESS_INTERVAL).await;
        let answers = core.store_ready().await;
        if answers != answered {
            if !without_store {
                health.set(answers).await;
            }
            match (answers, without_store) {
                (true, _) => tracing::info!("store answers again: serving"),
                (false, false) => tracing::warn!("store does not answer: health is NOT_SERVING"),
                (false, true) => tracing::warn!(
                    "store does not answer: still SERVING (server.ready_without_store), from the cache; \
                     uncached checks fail closed"
                ),
            }
            answered = answers;
        }
    }
}

/// Why `keyscope serve` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store could not be reached or is not usable.
    #[error("store: {0}")]
    Store(crate::store::StoreError),
    /// The bootstrap admin key could not be ensured.
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] crate::service::ServiceError),
    /// The listen address could not be bound, or the token file written.
    #[error("{0}")]
    Io(String),
    /// Serving failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// The service and what runs beside it.
#[derive(Debug)]
pub struct Built {
    /// The use cases.
    pub core: Arc<Keyscope>,
    /// The metrics of this server (store calls and the cache are already reported).
    pub metrics: Arc<Metrics>,
    /// The replica's cache, when the store is shared (Redis).
    pub cache: Option<crate::cache::CachedStore>,
    /// The task following the store's change feed, when there is a cache.
    pub feed: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Built {
    fn drop(&mut self) {
        if let Some(feed) = &self.feed {
            feed.abort();
        }
    }
}

/// Builds the service from validated settings on the configured store: the memory store, or
/// Redis (connected, schema checked) behind this replica's cache, which follows Redis's change
/// feed.
pub async fn build(validated: &crate::config::Validated) -> Result<Built, StartError> {
    let metrics = Arc::new(Metrics::new());
    let (store, cache, feed): (Arc<dyn crate::store::Store>, _, _) = match &validated.redis {
        None => (Arc::new(MeteredStore::new(Arc::new(crate::store::MemoryStore::new()), metrics.clone())), None, None),
        Some(options) => {
            let redis = crate::store::RedisStore::connect(options.clone()).await.map_err(StartError::Store)?;
            let metered = MeteredStore::new(Arc::new(redis.clone()), metrics.clone());
            let cache = crate::cache::CachedStore::new(Arc::new(metered), validated.cache);
            metrics.observe_cache(cache.clone());
            let feed = redis.follow_changes(cache.sink()).await.map_err(StartError::Store)?;
            (Arc::new(cache.clone()), Some(cache), Some(feed))
        }
    };
    let core = Keyscope::new(store, validated.builtins.clone(), validated.tokens.clone(), validated.pepper.clone())
        .with_quotas(validated.quotas)
        .with_usage(validated.usage)
        .with_audit_retention(validated.audit_max_events)
        .with_max_key_lifetime(validated.max_key_lifetime)
        .with_rate_limiter(validated.rate_limiter);
    Ok(Built { core: Arc::new(core), metrics, cache, feed })
}

/// Tells the operator about the bootstrap admin key: a created token is printed once on
/// stdout (or written to `bootstrap.token_file`); nothing else ever shows a token. A created
/// key whose token cannot be shown is removed again, so that the next start makes a new one
/// instead of finding a key nobody holds.
async fn announce(
    core: &Keyscope,
    outcome: crate::service::Bootstrap,
    token_file: Option<&std::path::Path>,
) -> Result<(), StartError> {
    use crate::service::Bootstrap;
    let (id, token) = match outcome {
        Bootstrap::Configured(id) | Bootstrap::ConfiguredCreated(id) => {
            tracing::info!(key_id = %id, "bootstrap admin key from bootstrap.admin_token is ready");
            return Ok(());
        }
        Bootstrap::Existing(id) => {
            tracing::info!(key_id = %id, "bootstrap admin key exists");
            return Ok(());
        }
        Bootstrap::Created(id, token) => (id, token),
    };
    let shown = match token_file {
        Some(path) => write_private(path, token.expose())
            .await
            .map(|()| {
                tracing::info!(key_id = %id, path = %path.display(), "bootstrap admin key created; its token was written to bootstrap.token_file");
            })
            .map_err(|e| format!("bootstrap.token_file `{}`: {e}", path.display())),
        None => {
            tracing::info!(key_id = %id, "bootstrap admin key created; its token is printed once on stdout");
            print_banner(&id, token.expose()).map_err(|e| format!("cannot print the bootstrap token on stdout: {e}"))
        }
    };
    let Err(problem) = shown else { return Ok(()) };
    let outcome = match core.release_bootstrap(&id).await {
        Ok(true) => "the key was removed again; the next start makes a new one".to_owned(),
        Ok(false) => "the key could not be removed (it is no longer the unchanged bootstrap key)".to_owned(),
        Err(error) => format!("the key could not be removed ({error}); set bootstrap.admin_token to add another"),
    };
    Err(StartError::Io(format!("{problem}; bootstrap admin key `{id}`: {outcome}")))
}

/// The three lines that show a created bootstrap token, written at once (no panic if stdout
/// is closed: the error is returned).
fn print_banner(id: &crate::domain::KeyId, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    write!(
        out,
        "keyscope: created the bootstrap admin key {id} (tenant `system`, scope `admin`).\nkeyscope: its token is shown once; store it now:\n{token}\n"
    )?;
    out.flush()
}

async fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).await?;
    // `mode` applies only when the file is created: an existing file keeps its permissions,
    // so make it private before the token goes in.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600)).await?;
    file.write_all(format!("{text}\n").as_bytes()).await?;
    file.sync_all().await
}

/// `keyscope serve`: validate settings, start telemetry, connect the store, bind the ports,
/// ensure the bootstrap key (and show a created token), serve until SIGINT/SIGTERM, then shut
/// down gracefully within `server.shutdown_grace_ms`: health goes NOT_SERVING (for
/// `server.shutdown_delay_ms` calls are still accepted), in-flight calls finish, then buffered
/// spans are flushed.
pub async fn run(settings: crate::config::Settings) -> Result<(), StartError> {
    let validated = settings.validate()?;
    let spans = match &validated.traces {
        Some(traces) => Some(SpanExport::start(traces).map_err(|e| StartError::Io(format!("config: {e}")))?),
        None => None,
    };
    crate::telemetry::init(settings.log.format, spans.as_ref());
    if validated.dev_pepper {
        tracing::warn!(
            "security.pepper is not set: using the built-in development pepper; set KEYSCOPE__SECURITY__PEPPER for real keys"
        );
    }
    let built = build(&validated).await?;
    if let Some(spans) = &spans {
        built.metrics.observe_spans(spans.stats());
    }
    let core = built.core.clone();
    // The ports are bound before the bootstrap key is made: a start that cannot serve must
    // not leave behind a key whose token was never shown.
    let listener = TcpListener::bind(validated.grpc_addr)
        .await
        .map_err(|e| StartError::Io(format!("server.grpc_addr {}: {e}", validated.grpc_addr)))?;
    let http = TcpListener::bind(validated.http_addr)
        .await
        .map_err(|e| StartError::Io(format!("server.http_addr {}: {e}", validated.http_addr)))?;
    let local = listener.local_addr().map_err(|e| StartError::Io(e.to_string()))?;
    let http_local = http.local_addr().map_err(|e| StartError::Io(e.to_string()))?;
    let outcome = core.ensure_bootstrap(settings.bootstrap.admin_token.as_ref().map(|t| t.expose())).await?;
    announce(&core, outcome, settings.bootstrap.token_file.as_deref()).await?;
    let store = if validated.redis.is_some() { "redis" } else { "memory" };
    let tls = match &validated.tls {
        None => "off",
        Some((files, _)) => match files.client_auth {
            crate::tls::ClientAuth::None => "on",
            crate::tls::ClientAuth::Optional => "on, client certificates optional",
            crate::tls::ClientAuth::Required => "on, client certificates required",
        },
    };
    tracing::info!(addr = %local, http_addr = %http_local, store, tls, traces = spans.is_some(), "keyscope serving gRPC");

    let options = ServeOptions {
        ext_authz: validated.ext_authz.clone(),
        metrics: built.metrics.clone(),
        http: Some(http),
        tracer: spans.as_ref().map(|s| CheckTracer::new(s.tracer())).unwrap_or_default(),
        shutdown_delay: validated.shutdown_delay,
        tls: validated.tls.clone(),
        ready_without_store: validated.ready_without_store,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let flusher =
        spawn_usage_flusher(core.clone(), built.metrics.clone(), validated.usage.flush_interval, stopped.clone());
    let serving = serve_with(listener, core.clone(), options, async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    tokio::pin!(serving);
    let deadline = tokio::select! {
        served = &mut serving => {
            served?;
            tokio::time::Instant::now() + validated.shutdown_grace
        }
        () = shutdown_signal() => {
            let deadline = tokio::time::Instant::now() + validated.shutdown_grace;
            tracing::info!(grace_ms = validated.shutdown_grace.as_millis() as u64, "shutdown signal received");
            let _ = stop.send(true);
            // The last fifth of the grace period is kept for flushing (config ensures the delay
            // ends before it).
            let drain_until = deadline - validated.shutdown_grace / 5;
            match tokio::time::timeout_at(drain_until, &mut serving).await {
                Ok(served) => served?,
                Err(_) => tracing::warn!("the grace period ended before every in-flight call finished; exiting"),
            }
            deadline
        }
    };
    // The flusher stopped at the signal (finishing a flush under way, within the grace
    // period); the checks drained since are counted in one last flush, while the buffered
    // spans go out at the same time: a Redis that is down must not cost the spans their turn.
    let _ = stop.send(true);
    let mut flusher = flusher;
    if tokio::time::timeout_at(deadline, &mut flusher).await.is_err() {
        flusher.abort();
    }
    let usage = async {
        if tokio::time::timeout_at(deadline, final_usage_flush(&core, &built.metrics)).await.is_err() {
            tracing::warn!(
                pending = core.pending_usage(),
                "the grace period ended before key usage was flushed; it is lost"
            );
        }
    };
    let traces = async {
        if let Some(spans) = &spans {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !spans.flush(left).await {
                tracing::warn!("not every span could be exported before the grace period ended");
            }
        }
    };
    tokio::join!(usage, traces);
    tracing::info!("keyscope stopped");
    Ok(())
}

/// Flushes key usage every `every` until `stop` turns true (a flush under way finishes first);
/// a failed flush is logged and its counts kept for the next one.
pub fn spawn_usage_flusher(
    core: Arc<Keyscope>,
    metrics: Arc<Metrics>,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let flushed = core.flush_usage().await;
            metrics.usage_flush(flushed.is_ok());
            match flushed {
                Ok(written) => tracing::debug!(written, "key usage flushed"),
                Err(error) => tracing::warn!(%error, "key usage flush failed; the counts are kept for the next one"),
            }
        }
    })
}

/// The flush at shutdown, logged either way.
pub async fn final_usage_flush(core: &Keyscope, metrics: &Metrics) {
    let flushed = core.flush_usage().await;
    metrics.usage_flush(flushed.is_ok());
    match flushed {
        Ok(written) => tracing::info!(written, "key usage flushed at shutdown"),
        Err(error) => tracing::warn!(
            %error,
            pending = core.pending_usage(),
            "key usage could not be flushed at shutdown; the unflushed counts are lost"
        ),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
