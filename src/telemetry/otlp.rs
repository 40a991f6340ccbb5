//! Span export over OTLP/gRPC through a bounded queue.
//!
//! The SDK's batch processor drops spans when its queue is full but does not expose how many;
//! keyscope must count them (an operator has to know when traces are incomplete), so spans go
//! through [`QueueProcessor`]: `on_end` is one non-blocking `try_send` on a bounded channel
//! (a full queue drops the span and counts it), and one task exports batches with a deadline.
//! A collector that is slow or down therefore costs a check nothing but the enqueue.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{Sampler, SdkTracer, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor},
};
use tokio::sync::{mpsc, oneshot};

/// Validated trace settings (`telemetry.*`, falling back to the standard `OTEL_*` variables).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// OTLP/gRPC endpoint, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// For an `https://` endpoint: CAs to trust instead of the system's (PEM).
    pub ca_pem: Option<Vec<u8>>,
    /// `service.name`; `None`: `OTEL_SERVICE_NAME`, else `keyscope`.
    pub service_name: Option<String>,
    /// Extra resource attributes (over `OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: BTreeMap<String, String>,
    /// Parent-based sampling ratio of root spans; `None`: `OTEL_TRACES_SAMPLER` (and `_ARG`),
    /// else every span.
    pub sampling_ratio: Option<f64>,
    /// Most spans waiting for export; more are dropped and counted.
    pub queue_size: usize,
    /// Most spans per export call.
    pub batch_size: usize,
    /// Longest a span waits before its batch is exported.
    pub export_interval: Duration,
    /// Longest one export call may take.
    pub export_timeout: Duration,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            endpoint: String::new(),
            ca_pem: None,
            service_name: None,
            resource_attributes: BTreeMap::new(),
            sampling_ratio: None,
            queue_size: 16_384,
            // Larger batches cost less per span to export (BENCHMARKS.md: 2048 vs 512).
            batch_size: 2048,
            export_interval: Duration::from_millis(1000),
            export_timeout: Duration::from_millis(5000),
        }
    }
}

/// Counters of what happened to finished spans.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full (or export had stopped).
    pub dropped: AtomicU64,
    /// Spans lost in export calls that failed or timed out.
    pub failed: AtomicU64,
}

enum Control {
    Flush(oneshot::Sender<()>),
}

/// A span processor with a bounded queue and counted drops; see the module docs.
#[derive(Debug)]
pub struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
    stats: Arc<ExportStats>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    // Flushing is asynchronous here: [`SpanExport::flush`] waits for it.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The trace pipeline: tracer provider, export task and its counters.
#[derive(Debug, Clone)]
pub struct SpanExport {
    provider: SdkTracerProvider,
    control: mpsc::Sender<Control>,
    stats: Arc<ExportStats>,
}

/// Why the trace pipeline could not be built.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint: {0}")]
pub struct TraceSetupError(String);

impl SpanExport {
    /// Builds the OTLP exporter (it connects lazily: a collector that is down at start is no
    /// error) and starts the export task on the current tokio runtime.
    pub fn start(settings: &TraceSettings) -> Result<SpanExport, TraceSetupError> {
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.export_timeout);
        if settings.endpoint.starts_with("https://") {
            // tonic trusts no CA unless told which.
            let tls = tonic::transport::ClientTlsConfig::new();
            builder = builder.with_tls_config(match &settings.ca_pem {
                Some(pem) => tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            });
        }
        let exporter = builder.build().map_err(|e| TraceSetupError(e.to_string()))?;
        Ok(Self::with_exporter(settings, exporter))
    }

    /// The pipeline over any exporter (tests use in-process ones).
    pub fn with_exporter(settings: &TraceSettings, exporter: impl SpanExporter + 'static) -> SpanExport {
        let (queue, spans) = mpsc::channel(settings.queue_size.max(1));
        let (control, controls) = mpsc::channel(4);
        let stats = Arc::new(ExportStats::default());
        let mut resource = Resource::builder();
        if let Some(name) = &settings.service_name {
            resource = resource.with_service_name(name.clone());
        } else {
            // Named by neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES: the SDK says
            // `unknown_service`; keyscope is a better default.
            let detected = Resource::builder().build();
            let named = detected
                .get(&opentelemetry::Key::from_static_str("service.name"))
                .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
            if !named {
                resource = resource.with_service_name("keyscope");
            }
        }
        let resource = resource
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_attributes(settings.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
            .build();
        let mut exporter = exporter;
        exporter.set_resource(&resource);
        let mut provider = SdkTracerProvider::builder()
            .with_span_processor(QueueProcessor { queue, stats: stats.clone() })
            .with_resource(resource);
        if let Some(ratio) = settings.sampling_ratio {
            provider = provider.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))));
        }
        let worker = Worker {
            batch_size: settings.batch_size.max(1),
            timeout: settings.export_timeout,
            stats: stats.clone(),
            last_warning: None,
        };
        tokio::spawn(worker.run(exporter, spans, controls, settings.export_interval));
        SpanExport { provider: provider.build(), control, stats }
    }

    /// The tracer the `tracing` layer creates spans with.
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("keyscope")
    }

    /// The counters.
    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }

    /// Exports every span finished so far, waiting at most `within`; `false` if that was not
    /// enough (graceful shutdown goes on regardless).
    pub async fn flush(&self, within: Duration) -> bool {
        let (done, finished) = oneshot::channel();
        let flushed = async { self.control.send(Control::Flush(done)).await.is_ok() && finished.await.is_ok() };
        tokio::time::timeout(within, flushed).await.unwrap_or(false)
    }
}

struct Worker {
    batch_size: usize,
    timeout: Duration,
    stats: Arc<ExportStats>,
    last_warning: Option<Instant>,
}

/// How often a collector that keeps failing is logged about.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl Worker {
    async fn run(
        mut self,
        exporter: impl SpanExporter,
        mut spans: mpsc::Receiver<SpanData>,
        mut controls: mpsc::Receiver<Control>,
        interval: Duration,
    ) {
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let room = self.batch_size - batch.len();
            tokio::select! {
                received = spans.recv_many(&mut batch, room) => {
                    if received == 0 {
                        self.export(&exporter, &mut batch).await;
                        return;
                    }
                    if batch.len() >= self.batch_size {
                        self.export(&exporter, &mut batch).await;
                    }
                }
                _ = tick.tick() => self.export(&exporter, &mut batch).await,
                Some(Control::Flush(done)) = controls.recv() => {
                    while let Ok(span) = spans.try_recv() {
                        batch.push(span);
                        if batch.len() >= self.batch_size {
                            self.export(&exporter, &mut batch).await;
                        }
                    }
                    self.export(&exporter, &mut batch).await;
                    let _ = done.send(());
                }
            }
        }
    }

    async fn export(&mut self, exporter: &impl SpanExporter, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let spans = std::mem::replace(batch, Vec::with_capacity(self.batch_size));
        let result = match tokio::time::timeout(self.timeout, exporter.export(spans)).await {
            Ok(result) => result,
            Err(_) => Err(OTelSdkError::Timeout(self.timeout)),
        };
        match result {
            Ok(()) => {
                self.stats.exported.fetch_add(count, Ordering::Relaxed);
            }
            Err(error) => {
                self.stats.failed.fetch_add(count, Ordering::Relaxed);
                if self.last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    self.last_warning = Some(Instant::now());
                    tracing::warn!(%error, spans = count, "span export failed; spans are dropped and counted (logged at most once a minute)");
                }
            }
        }
    }
}
