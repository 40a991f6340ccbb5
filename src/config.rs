//! Settings: built-in defaults, then an optional YAML file, then `KEYSCOPE__SECTION__KEY`
//! environment variables. Validated once at start; a bad setting is one clear line naming
//! the key. Secrets (pepper, bootstrap token) are never printed, not even in `Debug`.

use std::{fmt, net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use crate::{
    cache::CacheSettings,
    domain::{Pepper, TokenFormat, shorten_for_message},
    grpc::{ExtAuthzSettings, IdentityHeaders},
    service::{Builtins, Preset, Quotas, RateLimiterSettings, UsageSettings},
    service::{HttpMapping, PrincipalHeaders, Route, default_methods, route_prefix_problem},
    store::{RedisOptions, RedisTls},
    telemetry::TraceSettings,
    tls::{self, ClientAuth, LoadedTls, ServerTlsFiles, TlsError},
};

/// A configured secret: shown as `[redacted]`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The pepper used when none is configured: fine for trying keyscope, never for real keys.
pub const DEV_PEPPER: &str = "keyscope-development-pepper-do-not-use";

/// All settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Listen addresses.
    pub server: ServerSettings,
    /// Which store.
    pub store: StoreSettings,
    /// Pepper and token format.
    pub security: SecuritySettings,
    /// The first admin key.
    pub bootstrap: BootstrapSettings,
    /// Per-tenant quotas.
    pub limits: LimitSettings,
    /// The audit log of admin changes.
    pub audit: AuditSettings,
    /// Each replica's cache (Redis store only).
    pub cache: CacheConfig,
    /// Key usage counts: how often they are flushed, how long they are kept.
    pub usage: UsageConfig,
    /// Envoy ext_authz: how HTTP requests map to checks.
    pub ext_authz: ExtAuthzConfig,
    /// Locked preset scopes added to every tenant.
    pub presets: Vec<Preset>,
    /// Log output.
    pub log: LogSettings,
    /// Traces (OpenTelemetry, OTLP/gRPC).
    pub telemetry: TelemetrySettings,
    /// Per-key rate limits: each replica's buckets.
    pub rate_limit: RateLimitConfig,
}

/// `rate_limit.*`: how each replica keeps the per-key rate-limit buckets.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The part of every key's rate and burst each replica allows, more than 0 and at most 1
    /// (1: each replica allows the whole limit; `1/N` for N replicas sharing the load evenly).
    pub replica_share: f64,
    /// Most keys with a bucket at once on a replica (1 to 10000000).
    pub max_keys: u64,
    /// A bucket unused this long is dropped and starts full again (1000 to 86400000).
    pub idle_ttl_ms: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let d = RateLimiterSettings::default();
        RateLimitConfig { replica_share: d.share, max_keys: d.max_keys, idle_ttl_ms: d.idle_ttl.as_millis() as u64 }
    }
}

impl RateLimitConfig {
    fn validate(&self) -> Result<RateLimiterSettings, ConfigError> {
        if !(self.replica_share > 0.0 && self.replica_share <= 1.0) {
            return Err(bad("rate_limit.replica_share", "must be more than 0 and at most 1"));
        }
        if !(1..=10_000_000).contains(&self.max_keys) {
            return Err(bad("rate_limit.max_keys", "must be between 1 and 10000000"));
        }
        if !(1_000..=86_400_000).contains(&self.idle_ttl_ms) {
            return Err(bad("rate_limit.idle_ttl_ms", "must be between 1000 and 86400000"));
        }
        Ok(RateLimiterSettings {
            share: self.replica_share,
            max_keys: self.max_keys,
            idle_ttl: std::time::Duration::from_millis(self.idle_ttl_ms),
        })
    }
}

/// `server.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// gRPC listen address.
    pub grpc_addr: String,
    /// HTTP address for Prometheus metrics (`/metrics`) and probes (`/livez`, `/readyz`).
    pub http_addr: String,
    /// After SIGTERM, how long health reports NOT_SERVING while calls are still accepted, so
    /// that load balancers stop sending new ones, in milliseconds.
    pub shutdown_delay_ms: u64,
    /// After SIGTERM, the longest keyscope takes to exit (the delay, draining in-flight calls,
    /// flushing usage and spans), in milliseconds.
    pub shutdown_grace_ms: u64,
    /// `server.tls.*`: TLS (and mutual TLS) on the gRPC port.
    pub tls: ServerTlsSettings,
    /// Stay ready (gRPC health, `/readyz`) while the store does not answer: checks are then
    /// answered from the cache and fail closed otherwise, instead of every replica leaving the
    /// load balancer during a store outage.
    pub ready_without_store: bool,
}

/// `server.tls.*`: TLS on the gRPC port, on when `cert_file` and `key_file` are set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// The server's certificate chain, leaf first (PEM).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CAs that sign client certificates (PEM).
    pub client_ca_file: Option<PathBuf>,
    /// `none`, `optional` or `required`: whether clients present a certificate.
    pub client_auth: ClientAuth,
    /// How often the files are read again (renewed certificates need no restart), in
    /// milliseconds.
    pub reload_interval_ms: u64,
}

impl Default for ServerTlsSettings {
    fn default() -> Self {
        ServerTlsSettings {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            client_auth: ClientAuth::None,
            reload_interval_ms: 60_000,
        }
    }
}

impl ServerTlsSettings {
    /// The files, or `None` when TLS is off; the files are read once here so that a bad one
    /// stops the start.
    fn validate(&self) -> Result<Option<(ServerTlsFiles, LoadedTls)>, ConfigError> {
        let (cert_file, key_file) = match (&self.cert_file, &self.key_file) {
            (None, None) => {
                if self.client_ca_file.is_some() || self.client_auth != ClientAuth::None {
                    return Err(bad(
                        "server.tls.cert_file",
                        "client certificates need TLS: set cert_file and key_file",
                    ));
                }
                return Ok(None);
            }
            (Some(_), None) => return Err(bad("server.tls.key_file", "is required with server.tls.cert_file")),
            (None, Some(_)) => return Err(bad("server.tls.cert_file", "is required with server.tls.key_file")),
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        };
        if self.client_auth == ClientAuth::None && self.client_ca_file.is_some() {
            return Err(bad(
                "server.tls.client_auth",
                "is `none` but client_ca_file is set: choose `optional` or `required`",
            ));
        }
        if !(1_000..=86_400_000).contains(&self.reload_interval_ms) {
            return Err(bad("server.tls.reload_interval_ms", "must be between 1000 and 86400000"));
        }
        let files = ServerTlsFiles {
            cert_file,
            key_file,
            client_ca_file: self.client_ca_file.clone(),
            client_auth: self.client_auth,
            reload_interval: std::time::Duration::from_millis(self.reload_interval_ms),
        };
        let loaded = files.load().map_err(|e| ConfigError(e.to_string()))?;
        Ok(Some((files, loaded)))
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            grpc_addr: "127.0.0.1:50051".into(),
            http_addr: "127.0.0.1:9464".into(),
            shutdown_delay_ms: 0,
            shutdown_grace_ms: 25_000,
            tls: ServerTlsSettings::default(),
            ready_without_store: false,
        }
    }
}

/// `store.*`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `memory` or `redis`.
    pub kind: StoreKind,
    /// `store.redis.*`
    pub redis: RedisSettings,
}

/// Which store backs keyscope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded in-memory store.
    #[default]
    Memory,
    /// Redis (standalone or cluster).
    Redis,
}

/// `store.redis.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL (for a cluster: seed node URLs, comma-separated); may
    /// hold a password, so it is redacted.
    pub url: Option<SecretString>,
    /// Whether `url` names Redis Cluster seed nodes.
    pub cluster: bool,
    /// Prefix of every Redis key, so deployments can share one Redis.
    pub prefix: String,
    /// Longest wait for Redis on the check path, in milliseconds.
    pub check_timeout_ms: u64,
    /// Longest wait for Redis on admin calls and at start, in milliseconds.
    pub admin_timeout_ms: u64,
    /// ACL user, instead of the URL's.
    pub username: Option<String>,
    /// Password, instead of the URL's (so the URL can live in a ConfigMap); redacted.
    pub password: Option<SecretString>,
    /// `store.redis.tls.*`: for `rediss://` URLs.
    pub tls: RedisTlsSettings,
}

/// `store.redis.tls.*`: the CA to trust instead of the system's, and a client certificate
/// (for Redis's `tls-auth-clients`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisTlsSettings {
    /// CA certificates that sign Redis's certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// keyscope's client certificate (PEM).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
}

impl RedisTlsSettings {
    fn validate(&self, url: &str) -> Result<RedisTls, ConfigError> {
        let wants_tls = self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        if wants_tls && url.split(',').any(|node| !node.trim().starts_with("rediss://")) {
            return Err(bad("store.redis.tls", "is set, so store.redis.url must use rediss://"));
        }
        let read_checked =
            |key: &'static str,
             path: &PathBuf,
             check: fn(&'static str, &std::path::Path, &[u8]) -> Result<(), TlsError>| {
                let pem = tls::read_pem(key, path).map_err(|e| ConfigError(e.to_string()))?;
                check(key, path, &pem).map_err(|e| ConfigError(e.to_string()))?;
                Ok::<_, ConfigError>(pem)
            };
        let certs = |key, path: &std::path::Path, pem: &[u8]| tls::certificates(key, path, pem).map(drop);
        let key_pem = |key, path: &std::path::Path, pem: &[u8]| tls::private_key(key, path, pem).map(drop);
        let ca = self.ca_file.as_ref().map(|p| read_checked("store.redis.tls.ca_file", p, certs)).transpose()?;
        let client = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                read_checked("store.redis.tls.cert_file", cert, certs)?,
                read_checked("store.redis.tls.key_file", key, key_pem)?,
            )),
            (Some(_), None) => {
                return Err(bad("store.redis.tls.key_file", "is required with store.redis.tls.cert_file"));
            }
            (None, Some(_)) => {
                return Err(bad("store.redis.tls.cert_file", "is required with store.redis.tls.key_file"));
            }
        };
        Ok(RedisTls { ca_pem: ca, client_pem: client })
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: None,
            cluster: false,
            prefix: "keyscope".into(),
            check_timeout_ms: 100,
            admin_timeout_ms: 2000,
            username: None,
            password: None,
            tls: RedisTlsSettings::default(),
        }
    }
}

/// `security.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    /// Key of the secret hashes, at least 16 bytes.
    pub pepper: Option<SecretString>,
    /// Prefix of every token.
    pub token_prefix: String,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        SecuritySettings { pepper: None, token_prefix: "ks".into() }
    }
}

/// `bootstrap.*`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapSettings {
    /// A keyscope token (from `keyscope token new`) that becomes the `system` admin key.
    pub admin_token: Option<SecretString>,
    /// Where to write a created bootstrap token instead of printing it.
    pub token_file: Option<PathBuf>,
}

/// `limits.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Most keys per tenant.
    pub max_keys_per_tenant: usize,
    /// Most stored scopes per tenant.
    pub max_scopes_per_tenant: usize,
    /// The maximum key lifetime of tenants with no stored policy (humantime, e.g. `90d`);
    /// unset: none.
    pub max_key_lifetime: Option<String>,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let q = Quotas::default();
        LimitSettings {
            max_keys_per_tenant: q.max_keys_per_tenant,
            max_scopes_per_tenant: q.max_scopes_per_tenant,
            max_key_lifetime: None,
        }
    }
}

/// `audit.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// How many audit events each tenant keeps (the oldest go first), 100 to 10000000.
    pub max_events_per_tenant: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings { max_events_per_tenant: crate::service::AUDIT_MAX_EVENTS_DEFAULT }
    }
}

/// Bounds of `audit.max_events_per_tenant`.
const AUDIT_MAX_EVENTS_RANGE: std::ops::RangeInclusive<usize> = 100..=10_000_000;

/// `cache.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Most key records kept per replica.
    pub max_keys: u64,
    /// Most scope entries kept per replica.
    pub max_scopes: u64,
    /// Longest any entry is kept, in milliseconds: the worst-case staleness if a change is
    /// missed.
    pub ttl_ms: u64,
    /// How long an unknown key id is remembered, in milliseconds.
    pub negative_ttl_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        let d = CacheSettings::default();
        CacheConfig {
            max_keys: d.max_keys,
            max_scopes: d.max_scopes,
            ttl_ms: d.time_to_live.as_millis() as u64,
            negative_ttl_ms: d.negative_ttl.as_millis() as u64,
        }
    }
}

/// `usage.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// How often each replica writes its usage counts to the store, in milliseconds.
    pub flush_interval_ms: u64,
    /// Days of daily counts kept (today included); also the longest GetKeyUsage range.
    pub retention_days: u32,
}

impl Default for UsageConfig {
    fn default() -> Self {
        let d = UsageSettings::default();
        UsageConfig { flush_interval_ms: d.flush_interval.as_millis() as u64, retention_days: d.retention_days }
    }
}

impl UsageConfig {
    fn validate(&self) -> Result<UsageSettings, ConfigError> {
        if !(100..=3_600_000).contains(&self.flush_interval_ms) {
            return Err(bad("usage.flush_interval_ms", "must be between 100 and 3600000"));
        }
        if !(1..=3660).contains(&self.retention_days) {
            return Err(bad("usage.retention_days", "must be between 1 and 3660"));
        }
        Ok(UsageSettings {
            flush_interval: std::time::Duration::from_millis(self.flush_interval_ms),
            retention_days: self.retention_days,
        })
    }
}

/// `ext_authz.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtAuthzConfig {
    /// Header carrying a whole token (matched case-insensitively).
    pub api_key_header: String,
    /// Path prefix -> module (and tenant); the longest prefix wins. Routes with
    /// `keyscope_module` in their context_extensions need no entry.
    pub routes: Vec<RouteConfig>,
    /// Let requests that no route maps through unchecked (default: denied with 403).
    pub allow_unmapped: bool,
    /// Match route prefixes ASCII-case-insensitively, so `/Admin` takes the `/admin` route
    /// (default). `false` only for upstreams that route case-sensitively.
    pub case_insensitive_routes: bool,
    /// HTTP method -> action (`create`, `read`, `update`, `delete`); replaces the default map.
    pub methods: Option<std::collections::BTreeMap<String, String>>,
    /// Header names set for the upstream on an allowed request.
    pub identity_headers: IdentityHeaderConfig,
    /// Remove `authorization` and the API-key header before the request goes upstream.
    pub strip_credential: bool,
    /// 0: a check's source address is the request's source as Envoy reports it; N (up to
    /// 16): the Nth address from the right of `x-forwarded-for`.
    pub trusted_proxy_hops: u32,
    /// Headers carrying a bearer principal set by Envoy's `jwt_authn` filter (off unless set).
    pub principal_headers: Option<PrincipalHeaderConfig>,
}

/// `ext_authz.principal_headers.*`: only behind Envoy's `jwt_authn` filter, which sets them
/// from a verified JWT and strips any a client sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalHeaderConfig {
    /// The subject's header, e.g. `x-jwt-sub`.
    pub subject: String,
    /// The roles' header (comma-separated), e.g. `x-jwt-roles`.
    pub roles: String,
}

impl Default for ExtAuthzConfig {
    fn default() -> Self {
        ExtAuthzConfig {
            api_key_header: "x-api-key".into(),
            routes: Vec::new(),
            allow_unmapped: false,
            case_insensitive_routes: true,
            methods: None,
            identity_headers: IdentityHeaderConfig::default(),
            strip_credential: false,
            trusted_proxy_hops: 0,
            principal_headers: None,
        }
    }
}

/// One `ext_authz.routes` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix: starts with `/`, printable ASCII without spaces, `%`, `;`, `?`, `#` or
    /// backslashes, no empty or dot segments (`service::route_prefix_problem`).
    pub prefix: String,
    /// Module the prefix maps to.
    pub module: String,
    /// Tenant the key must belong to, if any.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// `ext_authz.identity_headers.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityHeaderConfig {
    /// Default `x-keyscope-key-id`.
    pub key_id: String,
    /// Default `x-keyscope-tenant`.
    pub tenant: String,
    /// Default `x-keyscope-owner`.
    pub owner: String,
}

impl Default for IdentityHeaderConfig {
    fn default() -> Self {
        let d = IdentityHeaders::default();
        IdentityHeaderConfig { key_id: d.key_id, tenant: d.tenant, owner: d.owner }
    }
}

impl ExtAuthzConfig {
    fn validate(&self) -> Result<ExtAuthzSettings, ConfigError> {
        let header_ok =
            |h: &str| !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !header_ok(&self.api_key_header) {
            return Err(bad("ext_authz.api_key_header", "must be a header name [A-Za-z0-9-]{1,64}"));
        }
        let i = &self.identity_headers;
        for (key, name) in [("key_id", &i.key_id), ("tenant", &i.tenant), ("owner", &i.owner)] {
            if !header_ok(name) {
                return Err(bad(
                    &format!("ext_authz.identity_headers.{key}"),
                    "must be a header name [A-Za-z0-9-]{1,64}",
                ));
            }
        }
        let names = [&i.key_id, &i.tenant, &i.owner].map(|n| n.to_ascii_lowercase());
        let api_key = self.api_key_header.to_ascii_lowercase();
        for (n, name) in names.iter().enumerate() {
            let clash =
                names[..n].contains(name) || ["authorization", "host", api_key.as_str()].contains(&name.as_str());
            if clash {
                return Err(bad(
                    "ext_authz.identity_headers",
                    format!("`{name}` is used twice or is a credential or host header"),
                ));
            }
        }
        let mut routes = Vec::with_capacity(self.routes.len());
        for (n, r) in self.routes.iter().enumerate() {
            let at = |field: &str| format!("ext_authz.routes[{n}].{field}");
            if let Some(problem) = route_prefix_problem(&r.prefix) {
                return Err(bad(&at("prefix"), problem));
            }
            let same = |p: &RouteConfig| {
                let (a, b) = (p.prefix.trim_end_matches('/'), r.prefix.trim_end_matches('/'));
                if self.case_insensitive_routes { a.eq_ignore_ascii_case(b) } else { a == b }
            };
            if let Some(m) = self.routes[..n].iter().position(same) {
                let case = if self.case_insensitive_routes { " (prefixes compare case-insensitively)" } else { "" };
                return Err(bad(&at("prefix"), format!("is the prefix of routes[{m}] too{case}")));
            }
            let module = r.module.parse().map_err(|p: crate::domain::Problem| bad(&at("module"), p.0))?;
            let tenant = match &r.tenant {
                Some(t) => Some(t.parse().map_err(|p: crate::domain::Problem| bad(&at("tenant"), p.0))?),
                None => None,
            };
            routes.push(Route { prefix: r.prefix.clone(), module, tenant });
        }
        let methods = match &self.methods {
            None => default_methods(),
            Some(map) => {
                let mut methods = std::collections::HashMap::new();
                for (method, action) in map {
                    let action = action
                        .parse()
                        .map_err(|p: crate::domain::Problem| bad(&format!("ext_authz.methods.{method}"), p.0))?;
                    methods.insert(method.clone(), action);
                }
                methods
            }
        };
        let mut mapping = HttpMapping::new(&self.api_key_header, routes, self.allow_unmapped, methods)
            .with_case_insensitive_routes(self.case_insensitive_routes);
        if let Some(p) = &self.principal_headers {
            for (key, name) in [("subject", &p.subject), ("roles", &p.roles)] {
                let at = format!("ext_authz.principal_headers.{key}");
                if !header_ok(name) {
                    return Err(bad(&at, "must be a header name [A-Za-z0-9-]{1,64}"));
                }
                let lower = name.to_ascii_lowercase();
                let clash = names.contains(&lower)
                    || ["authorization", "host", api_key.as_str()].contains(&lower.as_str())
                    || lower.starts_with("x-keyscope-");
                if clash {
                    return Err(bad(&at, format!("`{lower}` is a credential, host, identity or `x-keyscope-` header")));
                }
            }
            if p.subject.eq_ignore_ascii_case(&p.roles) {
                return Err(bad("ext_authz.principal_headers", "subject and roles must be different headers"));
            }
            mapping =
                mapping.with_principal_headers(PrincipalHeaders { subject: p.subject.clone(), roles: p.roles.clone() });
        }
        Ok(ExtAuthzSettings {
            mapping,
            identity: IdentityHeaders {
                key_id: i.key_id.to_ascii_lowercase(),
                tenant: i.tenant.to_ascii_lowercase(),
                owner: i.owner.to_ascii_lowercase(),
            },
            strip_credential: self.strip_credential,
            trusted_proxy_hops: self.trusted_proxy_hops,
        })
    }
}

/// `telemetry.*`: traces. Each key left unset falls back to the standard OpenTelemetry
/// variable (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
/// `OTEL_TRACES_SAMPLER_ARG`). With no endpoint at all, or `OTEL_SDK_DISABLED=true`, or
/// `OTEL_TRACES_EXPORTER=none`, no span is exported.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/gRPC collector endpoint, e.g. `http://otel-collector:4317` (or `https://`).
    pub otlp_endpoint: Option<String>,
    /// CA certificates that sign an `https://` collector's certificate (PEM); none: the
    /// system's.
    pub otlp_ca_file: Option<PathBuf>,
    /// `service.name` of the spans (default `keyscope`).
    pub service_name: Option<String>,
    /// More resource attributes, e.g. `deployment.environment: prod`.
    pub resource_attributes: std::collections::BTreeMap<String, String>,
    /// Parent-based sampling ratio for traces keyscope starts (0 to 1; default every check). A
    /// caller's sampled `traceparent` is always followed.
    pub sampling_ratio: Option<f64>,
    /// Most finished spans waiting for export; more are dropped and counted.
    pub queue_size: usize,
    /// Most spans per export call.
    pub batch_size: usize,
    /// Longest a finished span waits for its batch, in milliseconds.
    pub export_interval_ms: u64,
    /// Longest one export call may take, in milliseconds.
    pub export_timeout_ms: u64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        let d = TraceSettings::default();
        TelemetrySettings {
            otlp_endpoint: None,
            otlp_ca_file: None,
            service_name: None,
            resource_attributes: std::collections::BTreeMap::new(),
            sampling_ratio: None,
            queue_size: d.queue_size,
            batch_size: d.batch_size,
            export_interval_ms: d.export_interval.as_millis() as u64,
            export_timeout_ms: d.export_timeout.as_millis() as u64,
        }
    }
}

impl TelemetrySettings {
    /// The trace settings, or `None` when traces are off; `env` reads environment variables.
    fn validate(&self, env: impl Fn(&str) -> Option<String>) -> Result<Option<TraceSettings>, ConfigError> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let endpoint = match &self.otlp_endpoint {
            Some(e) => Some(("telemetry.otlp_endpoint", e.clone())),
            None => set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .map(|e| ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e))
                .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT").map(|e| ("OTEL_EXPORTER_OTLP_ENDPOINT", e))),
        };
        let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
        let Some((source, endpoint)) = endpoint.filter(|(_, e)| !e.is_empty()) else { return Ok(None) };
        // Switched off, an endpoint from the environment is not even looked at.
        if disabled && source != "telemetry.otlp_endpoint" {
            return Ok(None);
        }
        let uri = endpoint.parse::<tonic::transport::Uri>().ok().filter(|u| u.host().is_some_and(|h| !h.is_empty()));
        let https = match uri.as_ref().and_then(|u| u.scheme_str()) {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad(source, format!("`{endpoint}` is not a URL like http://otel-collector:4317"))),
        };
        let ca_file = match &self.otlp_ca_file {
            Some(path) => Some(("telemetry.otlp_ca_file", path.clone())),
            None => set("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
                .map(|p| ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", PathBuf::from(p)))
                .or_else(|| {
                    set("OTEL_EXPORTER_OTLP_CERTIFICATE").map(|p| ("OTEL_EXPORTER_OTLP_CERTIFICATE", p.into()))
                }),
        };
        let ca_pem = match ca_file {
            Some((key, _)) if !https => {
                return Err(bad(key, "is set but the collector is not https://"));
            }
            Some((key, path)) => {
                let pem = tls::read_pem(key, &path).map_err(|e| ConfigError(e.to_string()))?;
                tls::certificates(key, &path, &pem).map_err(|e| ConfigError(e.to_string()))?;
                Some(pem)
            }
            None => None,
        };
        if let Some(name) = &self.service_name
            && (name.is_empty() || name.len() > 255)
        {
            return Err(bad("telemetry.service_name", "must be 1 to 255 bytes"));
        }
        for key in self.resource_attributes.keys() {
            if key.is_empty() || key.len() > 255 {
                return Err(bad("telemetry.resource_attributes", "keys must be 1 to 255 bytes"));
            }
        }
        if let Some(ratio) = self.sampling_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(bad("telemetry.sampling_ratio", "must be between 0 and 1"));
        }
        if self.queue_size == 0 || self.queue_size > 1_000_000 {
            return Err(bad("telemetry.queue_size", "must be between 1 and 1000000"));
        }
        if self.batch_size == 0 || self.batch_size > self.queue_size {
            return Err(bad("telemetry.batch_size", "must be between 1 and telemetry.queue_size"));
        }
        if self.export_interval_ms == 0 || self.export_interval_ms > 60_000 {
            return Err(bad("telemetry.export_interval_ms", "must be between 1 and 60000"));
        }
        if self.export_timeout_ms == 0 || self.export_timeout_ms > 60_000 {
            return Err(bad("telemetry.export_timeout_ms", "must be between 1 and 60000"));
        }
        if disabled {
            return Ok(None);
        }
        Ok(Some(TraceSettings {
            endpoint,
            ca_pem,
            service_name: self.service_name.clone(),
            resource_attributes: self.resource_attributes.clone(),
            sampling_ratio: self.sampling_ratio,
            queue_size: self.queue_size,
            batch_size: self.batch_size,
            export_interval: std::time::Duration::from_millis(self.export_interval_ms),
            export_timeout: std::time::Duration::from_millis(self.export_timeout_ms),
        }))
    }
}

/// `log.*`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A setting that cannot be used; its message is the one line printed before exiting.
#[derive(Debug, thiserror::Error)]
#[error("config: {0}")]
pub struct ConfigError(String);

/// How deep a config file may nest (keyscope's settings need 4).
const NESTING_MAX: usize = 16;

/// Refuses a config file the `config` crate would mishandle: a key it reads as an array
/// subscript (`a[709551615]` makes it grow an array to that length, which aborts the process)
/// or nesting deeper than [`NESTING_MAX`]. Every other problem is left to the loader, which
/// names the setting.
fn check_keys(text: &str, source: &str) -> Result<(), ConfigError> {
    let documents = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| ConfigError(format!("{source}: {e}")))?;
    documents.iter().try_for_each(|document| check_node(document, "", 0))
}

fn check_node(node: &yaml_rust2::Yaml, at: &str, depth: usize) -> Result<(), ConfigError> {
    use yaml_rust2::Yaml;
    if depth > NESTING_MAX {
        return Err(bad(at, format!("nests deeper than {NESTING_MAX} levels")));
    }
    match node {
        Yaml::Hash(map) => map.iter().try_for_each(|(key, value)| {
            let name = match key {
                Yaml::String(s) | Yaml::Real(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                Yaml::Boolean(b) => b.to_string(),
                _ => return Err(bad(at, "a key must be a plain name")),
            };
            if name.contains(['[', ']']) {
                return Err(bad(at, format!("`{}`: a key may not contain `[` or `]`", shorten_for_message(&name))));
            }
            let path = if at.is_empty() { name } else { format!("{at}.{name}") };
            check_node(value, &path, depth + 1)
        }),
        Yaml::Array(items) => items.iter().try_for_each(|item| check_node(item, at, depth + 1)),
        _ => Ok(()),
    }
}

fn bad(key: &str, problem: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {problem}"))
}

/// Everything validated settings produce for the service.
#[derive(Debug, Clone)]
pub struct Validated {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// After SIGTERM: NOT_SERVING while still accepting calls for this long.
    pub shutdown_delay: std::time::Duration,
    /// After SIGTERM: the longest time to exit.
    pub shutdown_grace: std::time::Duration,
    /// TLS on the gRPC port, when configured: the files and what was read from them.
    pub tls: Option<(ServerTlsFiles, LoadedTls)>,
    /// Readiness ignores the store (`server.ready_without_store`).
    pub ready_without_store: bool,
    /// Span export, when traces are on.
    pub traces: Option<TraceSettings>,
    /// Token format.
    pub tokens: TokenFormat,
    /// Hash key.
    pub pepper: Pepper,
    /// Whether the pepper is the development default.
    pub dev_pepper: bool,
    /// The store to use: `None` for the memory store.
    pub redis: Option<RedisOptions>,
    /// The cache in front of Redis.
    pub cache: CacheSettings,
    /// Envoy ext_authz settings.
    pub ext_authz: ExtAuthzSettings,
    /// Builtins and presets.
    pub builtins: Builtins,
    /// Quotas.
    pub quotas: Quotas,
    /// Key usage flushing and retention.
    pub usage: UsageSettings,
    /// How many audit events each tenant keeps.
    pub audit_max_events: usize,
    /// The default maximum key lifetime (`limits.max_key_lifetime`).
    pub max_key_lifetime: Option<std::time::Duration>,
    /// The rate limiter's settings (`rate_limit.*`).
    pub rate_limiter: RateLimiterSettings,
}

impl RedisSettings {
    fn validate(&self) -> Result<RedisOptions, ConfigError> {
        let url = self.url.as_ref().map(SecretString::expose).unwrap_or_default();
        if url.is_empty() {
            return Err(bad("store.redis.url", "is required when store.kind is `redis` (e.g. redis://127.0.0.1:6379)"));
        }
        for (i, node) in url.split(',').enumerate() {
            let node = node.trim();
            if !(node.starts_with("redis://") || node.starts_with("rediss://")) {
                // The URL may hold a password: say which part is wrong, never what it says.
                return Err(bad("store.redis.url", format!("entry {i} must start with redis:// or rediss://")));
            }
            if i > 0 && !self.cluster {
                return Err(bad("store.redis.url", "several URLs need store.redis.cluster: true"));
            }
        }
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= 64
            && self.prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !prefix_ok {
            return Err(bad("store.redis.prefix", "must be 1 to 64 characters [A-Za-z0-9_.-]"));
        }
        if self.check_timeout_ms == 0 || self.check_timeout_ms > 60_000 {
            return Err(bad("store.redis.check_timeout_ms", "must be between 1 and 60000"));
        }
        if self.admin_timeout_ms == 0 || self.admin_timeout_ms > 600_000 {
            return Err(bad("store.redis.admin_timeout_ms", "must be between 1 and 600000"));
        }
        if self.username.as_ref().is_some_and(|u| u.is_empty() || u.len() > 256) {
            return Err(bad("store.redis.username", "must be 1 to 256 bytes"));
        }
        if self.password.as_ref().is_some_and(|p| p.expose().is_empty() || p.expose().len() > 4096) {
            return Err(bad("store.redis.password", "must be 1 to 4096 bytes"));
        }
        let tls = self.tls.validate(url)?;
        Ok(RedisOptions {
            username: self.username.clone(),
            password: self.password.as_ref().map(|p| p.expose().to_owned()),
            tls,
            url: url.to_owned(),
            cluster: self.cluster,
            prefix: self.prefix.clone(),
            check_timeout: std::time::Duration::from_millis(self.check_timeout_ms),
            admin_timeout: std::time::Duration::from_millis(self.admin_timeout_ms),
        })
    }
}

impl Settings {
    /// Loads defaults, then `file` (YAML) if given, then `KEYSCOPE__...` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!("--config: no such file `{}`", path.display())));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("--config: cannot read `{}`: {e}", path.display())))?;
            check_keys(&text, &format!("`{}`", path.display()))?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Yaml));
        }
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("KEYSCOPE__") && name.contains(['[', ']']) {
                return Err(ConfigError(format!(
                    "`{}`: a setting's name may not contain `[` or `]`",
                    shorten_for_message(&name)
                )));
            }
        }
        builder =
            builder.add_source(config::Environment::with_prefix("KEYSCOPE").prefix_separator("__").separator("__"));
        Self::build(builder)
    }

    /// Loads defaults, then `yaml` (the text of a config file); no file, no environment
    /// variables. For tests and fuzzing; call [`Settings::validate`] after it, as after `load`.
    pub fn from_yaml_str(yaml: &str) -> Result<Settings, ConfigError> {
        check_keys(yaml, "the config file")?;
        Self::build(config::Config::builder().add_source(config::File::from_str(yaml, config::FileFormat::Yaml)))
    }

    fn build(builder: config::ConfigBuilder<config::builder::DefaultState>) -> Result<Settings, ConfigError> {
        let raw = builder.build().map_err(|e| ConfigError(e.to_string()))?;
        raw.try_deserialize().map_err(|e| ConfigError(e.to_string()))
    }

    /// Checks every setting and derives what the service needs.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let addr = |key: &str, value: &str| {
            value
                .parse::<SocketAddr>()
                .map_err(|_| bad(key, format!("`{value}` is not a socket address like 127.0.0.1:50051")))
        };
        let grpc_addr = addr("server.grpc_addr", &self.server.grpc_addr)?;
        let http_addr = addr("server.http_addr", &self.server.http_addr)?;
        let redis = match self.store.kind {
            StoreKind::Memory => None,
            StoreKind::Redis => Some(self.store.redis.validate()?),
        };
        let tokens = TokenFormat::new(&self.security.token_prefix).map_err(|p| bad("security.token_prefix", p.0))?;
        let (pepper_text, dev_pepper) = match &self.security.pepper {
            Some(p) => (p.expose(), false),
            None => (DEV_PEPPER, true),
        };
        let pepper = Pepper::new(pepper_text.as_bytes()).map_err(|p| bad("security.pepper", p.0))?;
        if let Some(token) = &self.bootstrap.admin_token {
            tokens.parse(token.expose()).map_err(|_| {
                bad(
                    "bootstrap.admin_token",
                    format!(
                        "not a well-formed keyscope token with prefix `{}` (make one with `keyscope token new`)",
                        tokens.prefix()
                    ),
                )
            })?;
        }
        let builtins = Builtins::new(&self.presets).map_err(|e| ConfigError(e.to_string()))?;
        if self.limits.max_keys_per_tenant == 0 {
            return Err(bad("limits.max_keys_per_tenant", "must be at least 1"));
        }
        if self.limits.max_scopes_per_tenant == 0 {
            return Err(bad("limits.max_scopes_per_tenant", "must be at least 1"));
        }
        let quotas = Quotas {
            max_keys_per_tenant: self.limits.max_keys_per_tenant,
            max_scopes_per_tenant: self.limits.max_scopes_per_tenant,
        };
        let c = &self.cache;
        if c.max_keys == 0 || c.max_scopes == 0 {
            return Err(bad("cache.max_keys", "cache.max_keys and cache.max_scopes must be at least 1"));
        }
        if c.ttl_ms == 0 || c.ttl_ms > 3_600_000 {
            return Err(bad("cache.ttl_ms", "must be between 1 and 3600000"));
        }
        if c.negative_ttl_ms == 0 || c.negative_ttl_ms > c.ttl_ms {
            return Err(bad("cache.negative_ttl_ms", "must be between 1 and cache.ttl_ms"));
        }
        let cache = CacheSettings {
            max_keys: c.max_keys,
            max_scopes: c.max_scopes,
            time_to_live: std::time::Duration::from_millis(c.ttl_ms),
            negative_ttl: std::time::Duration::from_millis(c.negative_ttl_ms),
        };
        let ext_authz = self.ext_authz.validate()?;
        if ext_authz.trusted_proxy_hops > 16 {
            return Err(bad("ext_authz.trusted_proxy_hops", "must be between 0 and 16"));
        }
        let max_key_lifetime = match &self.limits.max_key_lifetime {
            None => None,
            Some(raw) => {
                let d = humantime::parse_duration(raw).map_err(|e| {
                    bad("limits.max_key_lifetime", format!("`{raw}` is not a duration like `90d`: {e}"))
                })?;
                Some(
                    crate::domain::validate_max_key_lifetime("limits.max_key_lifetime", d)
                        .map_err(|_| bad("limits.max_key_lifetime", "must be 1 second to 100 years"))?,
                )
            }
        };
        let rate_limiter = self.rate_limit.validate()?;
        let usage = self.usage.validate()?;
        let traces = self.telemetry.validate(|name| std::env::var(name).ok())?;
        let server = &self.server;
        if server.shutdown_grace_ms == 0 || server.shutdown_grace_ms > 3_600_000 {
            return Err(bad("server.shutdown_grace_ms", "must be between 1 and 3600000"));
        }
        // The last fifth of the grace period is kept for flushing usage and spans.
        if server.shutdown_delay_ms.saturating_mul(5) >= server.shutdown_grace_ms.saturating_mul(4) {
            return Err(bad("server.shutdown_delay_ms", "must be less than 80% of server.shutdown_grace_ms"));
        }
        let audit_max_events = self.audit.max_events_per_tenant;
        if !AUDIT_MAX_EVENTS_RANGE.contains(&audit_max_events) {
            return Err(bad("audit.max_events_per_tenant", "must be between 100 and 10000000"));
        }
        Ok(Validated {
            grpc_addr,
            http_addr,
            shutdown_delay: std::time::Duration::from_millis(server.shutdown_delay_ms),
            shutdown_grace: std::time::Duration::from_millis(server.shutdown_grace_ms),
            tls: server.tls.validate()?,
            ready_without_store: server.ready_without_store,
            traces,
            tokens,
            pepper,
            dev_pepper,
            redis,
            cache,
            ext_authz,
            builtins,
            quotas,
            usage,
            audit_max_events,
            max_key_lifetime,
            rate_limiter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let v = Settings::default().validate().expect("defaults are valid");
        assert!(v.dev_pepper);
        assert_eq!(v.grpc_addr.port(), 50051);
    }

    #[test]
    fn key_policy_settings_are_checked() {
        let mut s = Settings::default();
        s.limits.max_key_lifetime = Some("90d".into());
        s.ext_authz.trusted_proxy_hops = 2;
        s.rate_limit.replica_share = 0.25;
        let v = s.validate().expect("valid");
        assert_eq!(v.max_key_lifetime, Some(std::time::Duration::from_secs(90 * 86_400)));
        assert_eq!(v.ext_authz.trusted_proxy_hops, 2);
        assert_eq!(v.rate_limiter.share, 0.25);
        let named = |s: Settings| s.validate().err().map(|e| e.to_string()).unwrap_or_default();
        let mut s = Settings::default();
        s.limits.max_key_lifetime = Some("soon".into());
        assert!(named(s).starts_with("config: limits.max_key_lifetime:"));
        let mut s = Settings::default();
        s.limits.max_key_lifetime = Some("0s".into());
        assert!(named(s).starts_with("config: limits.max_key_lifetime:"));
        let mut s = Settings::default();
        s.ext_authz.trusted_proxy_hops = 17;
        assert!(named(s).starts_with("config: ext_authz.trusted_proxy_hops:"));
        for share in [0.0, 1.5, f64::NAN] {
            let mut s = Settings::default();
            s.rate_limit.replica_share = share;
            assert!(named(s).starts_with("config: rate_limit.replica_share:"), "{share}");
        }
    }

    #[test]
    fn errors_name_the_setting() {
        let mut s = Settings::default();
        s.server.grpc_addr = "nope".into();
        assert!(s.validate().err().is_some_and(|e| e.to_string().starts_with("config: server.grpc_addr:")));
        let mut s = Settings::default();
        s.security.pepper = Some(SecretString("short".into()));
        assert!(s.validate().err().is_some_and(|e| e.to_string().starts_with("config: security.pepper:")));
        let mut s = Settings::default();
        s.bootstrap.admin_token = Some(SecretString("ks_not_a_token_but_secret".into()));
        let e = s.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("config: bootstrap.admin_token:") && !e.contains("not_a_token_but_secret"), "{e}");
    }

    #[test]
    fn ext_authz_routes_and_methods_are_validated() {
        let mut s = Settings::default();
        s.ext_authz.routes = vec![RouteConfig { prefix: "/api".into(), module: "Bad Module".into(), tenant: None }];
        let e = s.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("config: ext_authz.routes[0].module:"), "{e}");
        let mut s = Settings::default();
        s.ext_authz.routes = vec![RouteConfig { prefix: "api".into(), module: "api".into(), tenant: None }];
        assert!(s.validate().err().is_some_and(|e| e.to_string().contains("ext_authz.routes[0].prefix")));
        let mut s = Settings::default();
        s.ext_authz.methods = Some([("GET".to_owned(), "fetch".to_owned())].into_iter().collect());
        assert!(s.validate().err().is_some_and(|e| e.to_string().contains("ext_authz.methods.GET")));
        let mut s = Settings::default();
        s.ext_authz.identity_headers.owner = "bad header".into();
        assert!(s.validate().err().is_some_and(|e| e.to_string().contains("ext_authz.identity_headers.owner")));
        let mut s = Settings::default();
        s.ext_authz.identity_headers.owner = "X-Api-Key".into();
        assert!(s.validate().err().is_some_and(|e| e.to_string().contains("ext_authz.identity_headers")));
    }

    #[test]
    fn route_prefixes_must_read_as_themselves_and_be_distinct() {
        let routes = |prefixes: &[&str]| {
            prefixes.iter().map(|p| RouteConfig { prefix: (*p).into(), module: "api".into(), tenant: None }).collect()
        };
        for bad in ["/admin;x", "/a//b", "/a/../b", "/a/./b", "/%61dmin", "/a?b", "/a#b", "/a\\b", "/a b", "/caf\u{e9}"]
        {
            let mut s = Settings::default();
            s.ext_authz.routes = routes(&["/ok", bad]);
            let e = s.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.starts_with("config: ext_authz.routes[1].prefix:"), "{bad}: {e}");
        }
        let mut s = Settings::default();
        s.ext_authz.routes = routes(&["/", "/api/", "/v1/projects:list", "/users/@me"]);
        assert!(s.validate().is_ok(), "a trailing `/` and sub-delimiters are fine");
        assert!(s.ext_authz.case_insensitive_routes, "case-insensitive routes by default");
        s.ext_authz.routes = routes(&["/admin", "/Admin/"]);
        let e = s.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("config: ext_authz.routes[1].prefix: is the prefix of routes[0] too"), "{e}");
        s.ext_authz.case_insensitive_routes = false;
        assert!(s.validate().is_ok(), "case-sensitive routes may differ in case only");
        s.ext_authz.routes = routes(&["/admin", "/admin/"]);
        assert!(s.validate().is_err(), "a trailing `/` makes no other prefix");
    }

    #[test]
    fn traces_follow_the_config_then_the_standard_variables() {
        let none = |_: &str| None;
        let t = TelemetrySettings::default();
        assert_eq!(t.validate(none).ok(), Some(None), "no endpoint: traces are off");
        let env = |name: &str| (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://collector:4317".to_owned());
        let on = t.validate(env).ok().flatten().expect("the standard variable turns traces on");
        assert_eq!(on.endpoint, "http://collector:4317");
        let t = TelemetrySettings { otlp_endpoint: Some("http://mine:4317".into()), ..TelemetrySettings::default() };
        assert_eq!(t.validate(env).ok().flatten().map(|s| s.endpoint).as_deref(), Some("http://mine:4317"));
        let off = |name: &str| (name == "OTEL_SDK_DISABLED").then(|| "true".to_owned());
        assert_eq!(t.validate(off).ok(), Some(None), "OTEL_SDK_DISABLED wins");
        // Switched off, a bad endpoint from the environment does not stop the start.
        let off_and_bad = |name: &str| match name {
            "OTEL_TRACES_EXPORTER" => Some("none".to_owned()),
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("https://collector:4317".to_owned()),
            _ => None,
        };
        assert_eq!(TelemetrySettings::default().validate(off_and_bad).ok(), Some(None));
    }

    #[test]
    fn trace_settings_are_validated_naming_the_key() {
        let none = |_: &str| None;
        let with = |f: fn(&mut TelemetrySettings)| {
            let mut t = TelemetrySettings { otlp_endpoint: Some("http://c:4317".into()), ..Default::default() };
            f(&mut t);
            t.validate(none).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(with(|t| t.otlp_endpoint = Some("c:4317".into())).contains("telemetry.otlp_endpoint"));
        assert!(with(|t| t.otlp_endpoint = Some("ftp://c:4317".into())).contains("telemetry.otlp_endpoint"));
        assert!(with(|t| t.otlp_ca_file = Some("/no/such/ca.crt".into())).contains("telemetry.otlp_ca_file"));
        let https = TelemetrySettings { otlp_endpoint: Some("https://c:4317".into()), ..Default::default() };
        assert!(
            https.validate(none).is_ok_and(|t| t.is_some_and(|t| t.ca_pem.is_none())),
            "https with the system's CAs"
        );
        let missing_ca = |name: &str| (name == "OTEL_EXPORTER_OTLP_CERTIFICATE").then(|| "/no/such/ca.crt".to_owned());
        let e = https.validate(missing_ca).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read"), "{e}");
        assert!(with(|t| t.sampling_ratio = Some(1.5)).contains("telemetry.sampling_ratio"));
        assert!(with(|t| t.queue_size = 0).contains("telemetry.queue_size"));
        assert!(with(|t| t.batch_size = t.queue_size + 1).contains("telemetry.batch_size"));
        assert!(with(|t| t.export_timeout_ms = 0).contains("telemetry.export_timeout_ms"));
        let bad_env = |name: &str| (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "nope".to_owned());
        let e = TelemetrySettings::default().validate(bad_env).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
        let mut s = Settings::default();
        s.server.shutdown_delay_ms = s.server.shutdown_grace_ms;
        assert!(s.validate().err().is_some_and(|e| e.to_string().contains("server.shutdown_delay_ms")));
        // The last fifth of the grace period is for flushing.
        s.server.shutdown_delay_ms = s.server.shutdown_grace_ms / 5 * 4;
        assert!(s.validate().err().is_some_and(|e| e.to_string().contains("80%")));
        s.server.shutdown_delay_ms -= 1;
        assert!(s.validate().is_ok());
    }

    #[test]
    fn usage_settings_are_bounded_and_named() {
        let v = Settings::default().validate().expect("defaults are valid");
        assert_eq!(v.usage, UsageSettings::default());
        for (interval, retention, key) in [
            (99, 90, "usage.flush_interval_ms"),
            (3_600_001, 90, "usage.flush_interval_ms"),
            (10_000, 0, "usage.retention_days"),
            (10_000, 3661, "usage.retention_days"),
        ] {
            let usage = UsageConfig { flush_interval_ms: interval, retention_days: retention };
            let s = Settings { usage, ..Settings::default() };
            let e = s.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.starts_with(&format!("config: {key}:")), "{e}");
        }
        let usage = UsageConfig { flush_interval_ms: 100, retention_days: 3660 };
        let s = Settings { usage, ..Settings::default() };
        assert_eq!(s.validate().expect("bounds are inclusive").usage.retention_days, 3660);
    }

    #[test]
    fn audit_retention_is_bounded() {
        assert_eq!(Settings::default().validate().map(|v| v.audit_max_events).ok(), Some(100_000));
        for bad_value in [0, 99, 10_000_001] {
            let mut s = Settings::default();
            s.audit.max_events_per_tenant = bad_value;
            let e = s.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.starts_with("config: audit.max_events_per_tenant:"), "{e}");
        }
        let mut s = Settings::default();
        s.audit.max_events_per_tenant = 100;
        assert_eq!(s.validate().map(|v| v.audit_max_events).ok(), Some(100));
    }

    #[test]
    fn settings_load_from_yaml_text() {
        let s = Settings::from_yaml_str("server:\n  grpc_addr: 0.0.0.0:7000\nsecurity:\n  token_prefix: acme\n")
            .expect("valid yaml");
        assert_eq!(s.server.grpc_addr, "0.0.0.0:7000");
        assert_eq!(s.security.token_prefix, "acme");
        assert_eq!(s.server.http_addr, ServerSettings::default().http_addr, "defaults fill the rest");
        assert!(Settings::from_yaml_str("server: [").is_err());
        // Keys the config crate would read as array subscripts, at any depth: refused, never
        // an array grown to that length (found by the `config` fuzz target).
        for yaml in ["-[709551615]:\n", "server:\n  grpc_addr[99999999999]: x\n", "a[1]: 2\n"] {
            let error = Settings::from_yaml_str(yaml).expect_err(yaml);
            assert!(error.to_string().contains("may not contain `[` or `]`"), "{error}");
        }
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        assert!(Settings::from_yaml_str(&deep).expect_err("deep").to_string().contains("nests deeper"));
        assert!(Settings::from_yaml_str("no_such_section: 1").is_err());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut s = Settings::default();
        s.security.pepper = Some(SecretString("a-very-secret-pepper-value".into()));
        assert!(!format!("{s:?}").contains("a-very-secret-pepper-value"));
    }

    #[test]
    fn principal_headers_are_off_by_default_and_validated() {
        let v = Settings::default().validate().expect("defaults");
        assert!(v.ext_authz.mapping.principal_headers().is_none());
        let mut s = Settings::default();
        s.ext_authz.principal_headers =
            Some(PrincipalHeaderConfig { subject: "X-Jwt-Sub".into(), roles: "x-jwt-roles".into() });
        let v = s.validate().expect("valid");
        let want = PrincipalHeaders { subject: "x-jwt-sub".into(), roles: "x-jwt-roles".into() };
        assert_eq!(v.ext_authz.mapping.principal_headers(), Some(&want));
        for (subject, roles, field) in [
            ("bad header", "x-r", "ext_authz.principal_headers.subject"),
            ("x-s", "authorization", "ext_authz.principal_headers.roles"),
            ("x-api-key", "x-r", "ext_authz.principal_headers.subject"),
            ("x-keyscope-sub", "x-r", "ext_authz.principal_headers.subject"),
            ("x-same", "X-Same", "ext_authz.principal_headers"),
        ] {
            s.ext_authz.principal_headers =
                Some(PrincipalHeaderConfig { subject: subject.into(), roles: roles.into() });
            let err = s.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(field), "{subject}/{roles}: {err}");
        }
    }
}
