//! Wires the gRPC services, health and reflection, and serves them on a listener until a
//! shutdown future resolves. Tests call [`serve`] on `127.0.0.1:0`.

use std::{future::Future, sync::Arc};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{service::interceptor::InterceptedService, transport::Server};

use crate::{
    domain::limits,
    grpc::{
        CheckerService, KeyAdminService, OversizeIsExhausted, ScopeAdminService, bearer_interceptor,
        pb::{
            self, checker_server::CheckerServer, key_admin_server::KeyAdminServer, scope_admin_server::ScopeAdminServer,
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
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CheckerServer<CheckerService>>().await;
    health.set_serving::<KeyAdminServer<KeyAdminService>>().await;
    health.set_serving::<ScopeAdminServer<ScopeAdminService>>().await;

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
    let scopes =
        ScopeAdminServer::new(ScopeAdminService::new(core)).max_decoding_message_size(limits::MESSAGE_MAX_BYTES);

    let drained = async move {
        shutdown.await;
        health.set_not_serving::<CheckerServer<CheckerService>>().await;
        tracing::info!("shutting down: draining in-flight calls");
    };

    Server::builder()
        .trace_fn(|request| tracing::info_span!("grpc", path = %request.uri().path()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(OversizeIsExhausted(checker))
        .add_service(OversizeIsExhausted(InterceptedService::new(keys, bearer_interceptor)))
        .add_service(OversizeIsExhausted(InterceptedService::new(scopes, bearer_interceptor)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), drained)
        .await?;
    Ok(())
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

/// Builds the service from validated settings on the configured store (connecting to Redis
/// and checking its schema version when that is the store).
pub async fn build(validated: &crate::config::Validated) -> Result<Arc<Keyscope>, StartError> {
    let store: Arc<dyn crate::store::Store> = match &validated.redis {
        None => Arc::new(crate::store::MemoryStore::new()),
        Some(options) => Arc::new(crate::store::RedisStore::connect(options.clone()).await.map_err(StartError::Store)?),
    };
    Ok(Arc::new(
        Keyscope::new(store, validated.builtins.clone(), validated.tokens.clone(), validated.pepper.clone())
            .with_quotas(validated.quotas),
    ))
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
    let core = build(&validated).await?;
    let outcome = core.ensure_bootstrap(settings.bootstrap.admin_token.as_ref().map(|t| t.expose())).await?;
    let listener = TcpListener::bind(validated.grpc_addr)
        .await
        .map_err(|e| StartError::Io(format!("server.grpc_addr {}: {e}", validated.grpc_addr)))?;
    let local = listener.local_addr().map_err(|e| StartError::Io(e.to_string()))?;
    announce(outcome, settings.bootstrap.token_file.as_deref()).await?;
    let store = if validated.redis.is_some() { "redis" } else { "memory" };
    tracing::info!(addr = %local, store, "keyscope serving gRPC");
    serve(listener, core, shutdown_signal()).await?;
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
