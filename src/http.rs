//! The HTTP port (`server.http_addr`): Prometheus metrics and probes for whatever cannot speak
//! gRPC health.
//!
//! | path | answers |
//! |---|---|
//! | `GET /metrics` | every metric, OpenMetrics text (Prometheus scrapes it as is) |
//! | `GET /livez` (`/healthz`) | `200 ok` while the process serves |
//! | `GET /readyz` | `200 ready` while the store answers and keyscope is not shutting down, else `503` |

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use crate::telemetry::Metrics;

/// What the HTTP endpoints read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness, kept in step with gRPC health.
    pub ready: Arc<AtomicBool>,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], state.metrics.encode())
}

async fn live() -> &'static str {
    "ok\n"
}

async fn ready(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(live))
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .with_state(state)
}

/// Serves the HTTP endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
