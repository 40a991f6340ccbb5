//! Telemetry: logs, traces and metrics.
//!
//! - Logs: a `tracing` subscriber filtered by `RUST_LOG` (default `info`), as text or JSON lines
//!   on stderr.
//! - Traces ([`otlp`]): one OpenTelemetry span for every check (`check`, `batch_check`: made
//!   with the SDK directly, [`spans`]) and every admin call (from its `tracing` span through
//!   the `tracing-opentelemetry` layer), exported over OTLP/gRPC through a bounded queue whose
//!   drops are counted; the caller's W3C `traceparent` becomes the parent ([`propagation`]).
//!   Only those spans reach the exporter, whatever `RUST_LOG` says, and none carries a
//!   credential.
//! - Metrics ([`metrics`]): Prometheus counters and histograms, served by [`crate::http`].
//!
//! What telemetry must not touch: the decision. An exporter that is slow or down never slows
//! or fails a check; a full queue drops spans and counts them.

pub mod metered_store;
pub mod metrics;
pub mod otlp;
pub mod propagation;
pub mod spans;

use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn, fmt, prelude::*};

pub use metered_store::MeteredStore;
pub use metrics::{CheckPath, Metrics};
pub use otlp::{SpanExport, TraceSettings};
pub use spans::{CheckTracer, annotate};

use crate::config::LogFormat;

/// The `tracing` target of the spans exported through the `tracing` layer: admin calls.
pub const SPAN_TARGET: &str = "keyscope::span";

/// Whether a callsite is one of the spans exported to OpenTelemetry (events never are).
fn exported(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && metadata.target() == SPAN_TARGET
}

/// Installs the global subscriber: logs filtered by `RUST_LOG`, and with `traces`, the
/// OpenTelemetry layer fed by the admin spans only (independent of `RUST_LOG`).
/// Returns `false` when a subscriber was installed before (tests): the first one stays.
pub fn init(format: LogFormat, traces: Option<&SpanExport>) -> bool {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).with_filter(filter).boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).with_filter(filter).boxed(),
    };
    let otel = traces.map(|export| {
        tracing_opentelemetry::layer()
            .with_tracer(export.tracer())
            // Each of these costs time on every check and tells an operator nothing the
            // span's own attributes do not.
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(filter_fn(exported))
    });
    tracing_subscriber::registry().with(logs).with(otel).try_init().is_ok()
}
