//! Prometheus metrics (OpenMetrics text, served on `server.http_addr` at `/metrics`).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `keyscope_checks_total` | counter | `path` (native, batch, ext_authz), `decision` (allow, deny, error), `reason` |
//! | `keyscope_check_duration_seconds` | histogram | `path` |
//! | `keyscope_cache_hits_total`, `_misses_total`, `_negative_hits_total` | counter | |
//! | `keyscope_cache_invalidations_total`, `_resets_total` | counter | |
//! | `keyscope_cache_entries` | gauge | `cache` (keys, scopes, unknown) |
//! | `keyscope_store_calls_total`, `keyscope_store_errors_total` | counter | `op` |
//! | `keyscope_store_call_duration_seconds` | histogram | `op` |
//! | `keyscope_admin_calls_total` | counter | `method`, `code` |
//! | `keyscope_usage_flushes_total` | counter | `result` (ok, error) |
//! | `keyscope_tls_handshake_failures_total` | counter | (gRPC port: no or untrusted client certificate, bad client) |
//! | `keyscope_tls_reloads_total` | counter | `result` (ok: changed files in use; error: kept the last good ones) |
//! | `keyscope_trace_spans_exported_total`, `_dropped_total`, `_failed_total` | counter | |
//! | `keyscope_build_info` | info | `version` |
//!
//! Recording is a few atomic operations: label sets are `&'static str` where they can be, so a
//! check allocates nothing for its metrics. Counters kept elsewhere (the cache's, the span
//! export's) are read at scrape time.

use std::{
    sync::{Arc, OnceLock, atomic::Ordering},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::Histogram,
        info::Info,
    },
    registry::{Registry, Unit},
};

use super::otlp::ExportStats;
use crate::{cache::CachedStore, domain::Reason};

/// Which API a check came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum CheckPath {
    /// `keyscope.v1.Checker/Check`.
    Native,
    /// `keyscope.v1.Checker/BatchCheck` (one count per item).
    Batch,
    /// Envoy's `ext_authz` Check.
    ExtAuthz,
}

impl CheckPath {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckPath::Native => "native",
            CheckPath::Batch => "batch",
            CheckPath::ExtAuthz => "ext_authz",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CheckLabels {
    path: &'static str,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PathLabels {
    path: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AdminLabels {
    method: String,
    code: &'static str,
}

type Timings<L> = Family<L, Histogram, fn() -> Histogram>;

/// The store operations every uncached check makes.
const HOT_OPS: [&str; 2] = ["credential", "principal_grants"];

/// Buckets from 25 µs to 2.5 s: checks answered from the cache take tens of microseconds,
/// store round trips a fraction of a millisecond, timeouts up to seconds.
fn latency() -> Histogram {
    Histogram::new([
        0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5,
    ])
}

/// Every metric of one keyscope server. Tests run several servers in one process, so nothing
/// here is global.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    checks: Family<CheckLabels, Counter>,
    /// Per path and reason, the counter of `checks` answered with it, looked up once (on first
    /// use, so a reason never given shows no series) rather than on every check.
    answered: [[OnceLock<Counter>; Reason::COUNT]; 3],
    /// One histogram per path, looked up once here rather than on every check.
    check_seconds: [Histogram; 3],
    store_calls: Family<OpLabels, Counter>,
    store_errors: Family<OpLabels, Counter>,
    store_seconds: Timings<OpLabels>,
    /// For the store operations of the check path ([`HOT_OPS`]), their call counter and
    /// latency histogram, looked up once rather than on every check.
    hot_ops: [OnceLock<(Counter, Histogram)>; HOT_OPS.len()],
    admin_calls: Family<AdminLabels, Counter>,
    usage_flushes: Family<ResultLabels, Counter>,
    tls_handshake_failures: Counter,
    tls_reloads: Family<ResultLabels, Counter>,
    sources: Arc<Sources>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Counters kept by other parts, read at scrape time.
#[derive(Debug, Default)]
struct Sources {
    cache: OnceLock<CachedStore>,
    spans: OnceLock<Arc<ExportStats>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keyscope");
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register("checks", "Checks answered, by API path, decision and reason", checks.clone());
        let check_seconds: Timings<PathLabels> = Family::new_with_constructor(latency);
        registry.register_with_unit(
            "check_duration",
            "Time to answer a check (a whole BatchCheck counts once), by API path",
            Unit::Seconds,
            check_seconds.clone(),
        );
        let check_seconds = [CheckPath::Native, CheckPath::Batch, CheckPath::ExtAuthz]
            .map(|path| check_seconds.get_or_create(&PathLabels { path: path.as_str() }).clone());
        let store_calls = Family::<OpLabels, Counter>::default();
        registry.register("store_calls", "Calls to the store (Redis or memory), by operation", store_calls.clone());
        let store_errors = Family::<OpLabels, Counter>::default();
        registry.register("store_errors", "Store calls that failed, by operation", store_errors.clone());
        let store_seconds: Timings<OpLabels> = Family::new_with_constructor(latency);
        registry.register_with_unit(
            "store_call_duration",
            "Time of store calls, by operation",
            Unit::Seconds,
            store_seconds.clone(),
        );
        let admin_calls = Family::<AdminLabels, Counter>::default();
        registry.register("admin_calls", "Admin calls, by gRPC method and status code", admin_calls.clone());
        let usage_flushes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "usage_flushes",
            "Writes of the key usage counts to the store, by result",
            usage_flushes.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on the gRPC port that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Changed TLS files on the gRPC port, by whether they were taken into use",
            tls_reloads.clone(),
        );
        registry.register(
            "build",
            "The keyscope build",
            Info::new(vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]),
        );
        let sources = Arc::new(Sources::default());
        registry.register_collector(Box::new(sources.clone()));
        Metrics {
            registry,
            checks,
            answered: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            hot_ops: std::array::from_fn(|_| OnceLock::new()),
            check_seconds,
            store_calls,
            store_errors,
            store_seconds,
            admin_calls,
            usage_flushes,
            tls_handshake_failures,
            tls_reloads,
            sources,
        }
    }

    /// Reports this cache's counters and sizes from now on.
    pub fn observe_cache(&self, cache: CachedStore) {
        let _ = self.sources.cache.set(cache);
    }

    /// Reports these span export counters from now on.
    pub fn observe_spans(&self, stats: Arc<ExportStats>) {
        let _ = self.sources.spans.set(stats);
    }

    /// Counts one answered check.
    pub fn check_answered(&self, path: CheckPath, reason: Reason) {
        let labels = || CheckLabels {
            path: path.as_str(),
            decision: crate::service::decision_name(reason == Reason::Ok),
            reason: reason.as_str(),
        };
        self.answered[path as usize][reason.index()].get_or_init(|| self.checks.get_or_create(&labels()).clone()).inc();
    }

    /// Counts one answered check by its decision and reason name (ext_authz's own reasons
    /// included).
    pub fn check(&self, path: CheckPath, allowed: bool, reason: &'static str) {
        let decision = crate::service::decision_name(allowed);
        self.checks.get_or_create(&CheckLabels { path: path.as_str(), decision, reason }).inc();
    }

    /// Counts one check that could not be decided (the store was unavailable, bad input).
    pub fn check_failed(&self, path: CheckPath, code: tonic::Code) {
        self.checks
            .get_or_create(&CheckLabels { path: path.as_str(), decision: "error", reason: code_name(code) })
            .inc();
    }

    /// Records how long a check (or a whole batch) took.
    pub fn check_time(&self, path: CheckPath, took: Duration) {
        self.check_seconds[path as usize].observe(took.as_secs_f64());
    }

    /// Records one store call.
    pub fn store_call(&self, op: &'static str, ok: bool, took: Duration) {
        let labels = OpLabels { op };
        if !ok {
            self.store_errors.get_or_create(&labels).inc();
        }
        let resolve =
            || (self.store_calls.get_or_create(&labels).clone(), self.store_seconds.get_or_create(&labels).clone());
        let observe = |(calls, seconds): &(Counter, Histogram)| {
            calls.inc();
            seconds.observe(took.as_secs_f64());
        };
        match HOT_OPS.iter().position(|hot| *hot == op) {
            Some(i) => observe(self.hot_ops[i].get_or_init(resolve)),
            None => observe(&resolve()),
        }
    }

    /// Counts one admin call.
    pub fn admin_call(&self, method: &str, code: tonic::Code) {
        self.admin_calls.get_or_create(&AdminLabels { method: method.to_owned(), code: code_name(code) }).inc();
    }

    /// Counts one flush of the key usage counts.
    pub fn usage_flush(&self, ok: bool) {
        self.usage_flushes.get_or_create(&ResultLabels { result: if ok { "ok" } else { "error" } }).inc();
    }

    /// Counts one failed TLS handshake on the gRPC port.
    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    /// Counts one change of the gRPC port's TLS files: taken into use, or refused.
    pub fn tls_reload(&self, ok: bool) {
        self.tls_reloads.get_or_create(&ResultLabels { result: if ok { "ok" } else { "error" } }).inc();
    }

    /// Everything, as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8192);
        // INVARIANT: writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The canonical name of a gRPC status code, as the `code` label.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(cache) = self.cache.get() {
            let s = cache.stats();
            counter(&mut encoder, "cache_hits", "Checks answered from the replica cache", s.hits)?;
            counter(&mut encoder, "cache_misses", "Checks that went to the store", s.misses)?;
            counter(
                &mut encoder,
                "cache_negative_hits",
                "Checks answered unknown from the negative cache",
                s.negative_hits,
            )?;
            counter(
                &mut encoder,
                "cache_invalidations",
                "Cache entries dropped because they changed",
                s.invalidations,
            )?;
            counter(
                &mut encoder,
                "cache_resets",
                "Times the whole cache was cleared (change feed re-established)",
                s.resets,
            )?;
            let sizes = cache.entry_counts();
            let gauge = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(
                "cache_entries",
                "Entries in the replica cache (approximate), by cache",
                None,
                gauge.metric_type(),
            )?;
            for (name, count) in [("keys", sizes.keys), ("scopes", sizes.scopes), ("unknown", sizes.unknown)] {
                let labels = [("cache", name)];
                ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX)).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(spans) = self.spans.get() {
            let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            counter(&mut encoder, "trace_spans_exported", "Spans the OTLP collector accepted", load(&spans.exported))?;
            counter(
                &mut encoder,
                "trace_spans_dropped",
                "Spans dropped because the export queue was full",
                load(&spans.dropped),
            )?;
            counter(
                &mut encoder,
                "trace_spans_failed",
                "Spans lost in failed or timed-out exports",
                load(&spans.failed),
            )?;
        }
        Ok(())
    }
}
