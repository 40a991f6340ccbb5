//! Wires the gRPC services, health and reflection, and serves them on a listener until a
//! shutdown future resolves. Tests call [`serve`] on `127.0.0.1:0`.

use std::{future::Future, sync::Arc};

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
        AuditLogService, CheckerService, ExtAuthzService, ExtAuthzSettings, KeyAdminService, OversizeIsExhausted,
        ScopeAdminService, bearer_interceptor,
        pb::{
            self, audit_log_server::AuditLogServer, checker_server::CheckerServer, key_admin_server::KeyAdminServer,
            scope_admin_server::ScopeAdminServer,
        },
    },
    service::Keyscope,
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

/// Serves keyscope's gRPC API on `listener` until `shutdown` resolves, then drains in-flight
/// calls and returns.
pub async fn serve(
    listener: TcpListener,
    core: Arc<Keyscope>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with(listener, core, ExtAuthzSettings::default(), shutdown).await
}

/// [`serve`] with the ext_authz settings of the deployment.
pub async fn serve_with(
    listener: TcpListener,
    core: Arc<Keyscope>,
    ext_authz: ExtAuthzSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let ready = core.store_ready().await;
    set_health(&health, ready).await;
    let readiness = tokio::spawn(follow_readiness(core.clone(), health.clone(), ready));

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let checker =
        CheckerServer::new(CheckerService::new(core.clone())).max_decoding_message_size(limits::MESSAGE_MAX_BYTES);
    let keys =
        KeyAdminServer::new(KeyAdminService::new(core.clone())).max_decoding_message_size(limits::MESSAGE_MAX_BYTES);
    let envoy = AuthorizationServer::new(ExtAuthzService::new(core.clone(), ext_authz))
        .max_decoding_message_size(limits::MESSAGE_MAX_BYTES);
    let audit =
        AuditLogServer::new(AuditLogService::new(core.clone())).max_decoding_message_size(limits::MESSAGE_MAX_BYTES);
    let scopes =
        ScopeAdminServer::new(ScopeAdminService::new(core)).max_decoding_message_size(limits::MESSAGE_MAX_BYTES);

    let drained = async move {
        shutdown.await;
        readiness.abort();
        set_health(&health, false).await;
        tracing::info!("shutting down: draining in-flight calls");
    };

    Server::builder()
        .trace_fn(|request| tracing::info_span!("grpc", path = %request.uri().path()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(OversizeIsExhausted(checker))
        .add_service(envoy)
        .add_service(OversizeIsExhausted(InterceptedService::new(keys, bearer_interceptor)))
        .add_service(OversizeIsExhausted(InterceptedService::new(scopes, bearer_interceptor)))
        .add_service(OversizeIsExhausted(InterceptedService::new(audit, bearer_interceptor)))
        // Checks are small request/response pairs: without TCP_NODELAY, Nagle's algorithm and
        // delayed ACKs add tens of milliseconds to some of them.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), drained)
        .await?;
    Ok(())
}

/// How often readiness asks the store whether it answers.
const READINESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    health.set_service_status("", status).await;
    for name in [
        <CheckerServer<CheckerService> as tonic::server::NamedService>::NAME,
        <KeyAdminServer<KeyAdminService> as tonic::server::NamedService>::NAME,
        <ScopeAdminServer<ScopeAdminService> as tonic::server::NamedService>::NAME,
        <AuditLogServer<AuditLogService> as tonic::server::NamedService>::NAME,
    ] {
        health.set_service_status(name, status).await;
    }
}

/// Keeps gRPC health (readiness) in step with the store: NOT_SERVING while it does not answer.
async fn follow_readiness(core: Arc<Keyscope>, health: tonic_health::server::HealthReporter, mut last: bool) {
    loop {
        tokio::time::sleep(READINESS_INTERVAL).await;
        let ready = core.store_ready().await;
        if ready != last {
            set_health(&health, ready).await;
            if ready {
                tracing::info!("store answers again: serving");
            } else {
                tracing::warn!("store does not answer: health is NOT_SERVING");
            }
            last = ready;
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
    let (store, cache, feed): (Arc<dyn crate::store::Store>, _, _) = match &validated.redis {
        None => (Arc::new(crate::store::MemoryStore::new()), None, None),
        Some(options) => {
            let redis = crate::store::RedisStore::connect(options.clone()).await.map_err(StartError::Store)?;
            let cache = crate::cache::CachedStore::new(Arc::new(redis.clone()), validated.cache);
            let feed = redis.follow_changes(cache.sink()).await.map_err(StartError::Store)?;
            (Arc::new(cache.clone()), Some(cache), Some(feed))
        }
    };
    let core = Keyscope::new(store, validated.builtins.clone(), validated.tokens.clone(), validated.pepper.clone())
        .with_quotas(validated.quotas)
        .with_audit_retention(validated.audit_max_events);
    Ok(Built { core: Arc::new(core), cache, feed })
}

/// Tells the operator about the bootstrap admin key: a created token is printed once on
/// stdout (or written to `bootstrap.token_file`); nothing else ever shows a token.
async fn announce(outcome: crate::service::Bootstrap, token_file: Option<&std::path::Path>) -> Result<(), StartError> {
    use crate::service::Bootstrap;
    match outcome {
        Bootstrap::Configured(id) | Bootstrap::ConfiguredCreated(id) => {
            tracing::info!(key_id = %id, "bootstrap admin key from bootstrap.admin_token is ready");
        }
        Bootstrap::Existing(id) => tracing::info!(key_id = %id, "bootstrap admin key exists"),
        Bootstrap::Created(id, token) => match token_file {
            Some(path) => {
                write_private(path, token.expose())
                    .await
                    .map_err(|e| StartError::Io(format!("bootstrap.token_file `{}`: {e}", path.display())))?;
                tracing::info!(key_id = %id, path = %path.display(), "bootstrap admin key created; its token was written to bootstrap.token_file");
            }
            None => {
                tracing::info!(key_id = %id, "bootstrap admin key created; its token is printed once on stdout");
                println!("keyscope: created the bootstrap admin key {id} (tenant `system`, scope `admin`).");
                println!("keyscope: its token is shown once; store it now:");
                println!("{}", token.expose());
            }
        },
    }
    Ok(())
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

/// `keyscope serve`: validate settings, ensure the bootstrap key, serve until SIGINT/SIGTERM.
pub async fn run(settings: crate::config::Settings) -> Result<(), StartError> {
    let validated = settings.validate()?;
    if validated.dev_pepper {
        tracing::warn!(
            "security.pepper is not set: using the built-in development pepper; set KEYSCOPE__SECURITY__PEPPER for real keys"
        );
    }
    let built = build(&validated).await?;
    let core = built.core.clone();
    let outcome = core.ensure_bootstrap(settings.bootstrap.admin_token.as_ref().map(|t| t.expose())).await?;
    let listener = TcpListener::bind(validated.grpc_addr)
        .await
        .map_err(|e| StartError::Io(format!("server.grpc_addr {}: {e}", validated.grpc_addr)))?;
    let local = listener.local_addr().map_err(|e| StartError::Io(e.to_string()))?;
    announce(outcome, settings.bootstrap.token_file.as_deref()).await?;
    let store = if validated.redis.is_some() { "redis" } else { "memory" };
    tracing::info!(addr = %local, store, "keyscope serving gRPC");
    serve_with(listener, core, validated.ext_authz.clone(), shutdown_signal()).await?;
    tracing::info!("keyscope stopped");
    Ok(())
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
