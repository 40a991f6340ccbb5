//! Shared test harness: a real keyscope gRPC server on 127.0.0.1:0 inside the test process,
//! its bootstrap admin token, and clients that send a bearer token.
#![allow(dead_code, missing_docs)]

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use keyscope::{
    cache::{CacheSettings, CachedStore},
    domain::{Pepper, TokenFormat},
    grpc::ExtAuthzSettings,
    grpc::pb::{
        self, audit_log_client::AuditLogClient, checker_client::CheckerClient, key_admin_client::KeyAdminClient,
        scope_admin_client::ScopeAdminClient,
    },
    server::ServeOptions,
    service::{Bootstrap, Builtins, Keyscope, ManualClock, Preset},
    store::{MemoryStore, RedisOptions, RedisStore, Store},
    telemetry::{MeteredStore, Metrics},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

pub const PEPPER: &[u8] = b"test-pepper-0123456789";

/// A running server and what tests need to talk to it.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The `system` admin token made at bootstrap.
    pub admin_token: String,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn Store>,
    /// The server's core, so tests can flush usage at once instead of waiting for an interval.
    pub core: Arc<Keyscope>,
    /// The replica cache, for servers on Redis.
    pub cache: Option<CachedStore>,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// Where `/metrics`, `/livez` and `/readyz` are served.
    pub http_addr: SocketAddr,
    channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    feed: Option<JoinHandle<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(feed) = &self.feed {
            feed.abort();
        }
    }
}

/// Adds `authorization: Bearer <token>` when a token is set.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

pub type Keys = KeyAdminClient<InterceptedService<Channel, Bearer>>;
pub type Scopes = ScopeAdminClient<InterceptedService<Channel, Bearer>>;
pub type Audit = AuditLogClient<InterceptedService<Channel, Bearer>>;

fn bearer(token: Option<&str>) -> Bearer {
    Bearer(token.map(|t| format!("Bearer {t}").parse().expect("ascii token")))
}

impl TestServer {
    /// Starts a server on the memory store with no presets.
    pub async fn start() -> TestServer {
        Self::start_with(Arc::new(MemoryStore::new()), &[]).await
    }

    /// Starts a server on `store` with the given presets.
    pub async fn start_with(store: Arc<dyn Store>, presets: &[Preset]) -> TestServer {
        Self::launch(store, presets, None, ExtAuthzSettings::default(), Arc::new(Metrics::new())).await
    }

    /// Starts a server on the memory store with these ext_authz settings.
    pub async fn start_with_ext_authz(ext_authz: ExtAuthzSettings) -> TestServer {
        Self::launch(Arc::new(MemoryStore::new()), &[], None, ext_authz, Arc::new(Metrics::new())).await
    }

    /// Starts a server on the memory store, behind a replica cache, with its store calls and
    /// cache counted (as `keyscope serve` does on Redis).
    pub async fn start_cached(ext_authz: ExtAuthzSettings) -> TestServer {
        let metrics = Arc::new(Metrics::new());
        let metered = MeteredStore::new(Arc::new(MemoryStore::new()), metrics.clone());
        let cached = CachedStore::new(Arc::new(metered), CacheSettings::default());
        metrics.observe_cache(cached.clone());
        let mut server = Self::launch(Arc::new(cached.clone()), &[], None, ext_authz, metrics).await;
        server.cache = Some(cached);
        server
    }

    /// Starts a replica on Redis at `url` under `prefix`, with its cache following the change
    /// feed. The first replica of a prefix makes the bootstrap key; later ones are given its
    /// token.
    pub async fn start_on_redis(
        url: &str,
        prefix: &str,
        cache: CacheSettings,
        admin_token: Option<&str>,
    ) -> TestServer {
        Self::start_on_redis_with(url, false, prefix, cache, admin_token).await
    }

    /// [`TestServer::start_on_redis`], on a standalone Redis or a cluster (`url`: seeds).
    pub async fn start_on_redis_with(
        url: &str,
        cluster: bool,
        prefix: &str,
        cache: CacheSettings,
        admin_token: Option<&str>,
    ) -> TestServer {
        let options = RedisOptions {
            cluster,
            prefix: prefix.to_owned(),
            check_timeout: Duration::from_millis(300),
            admin_timeout: Duration::from_millis(1500),
            ..RedisOptions::new(url)
        };
        let redis = RedisStore::connect(options).await.expect("connect to the test redis");
        let metrics = Arc::new(Metrics::new());
        let metered = MeteredStore::new(Arc::new(redis.clone()), metrics.clone());
        let cached = CachedStore::new(Arc::new(metered), cache);
        metrics.observe_cache(cached.clone());
        let feed = redis.follow_changes(cached.sink()).await.expect("follow the change feed");
        let mut server =
            Self::launch(Arc::new(cached.clone()), &[], admin_token, ExtAuthzSettings::default(), metrics).await;
        server.cache = Some(cached);
        server.feed = Some(feed);
        server
    }

    async fn launch(
        store: Arc<dyn Store>,
        presets: &[Preset],
        admin_token: Option<&str>,
        ext_authz: ExtAuthzSettings,
        metrics: Arc<Metrics>,
    ) -> TestServer {
        Self::launch_with(store, presets, admin_token, ext_authz, metrics, |core| core).await
    }

    /// [`TestServer::launch`], with the core's settings changed by `configure`.
    async fn launch_with(
        store: Arc<dyn Store>,
        presets: &[Preset],
        admin_token: Option<&str>,
        ext_authz: ExtAuthzSettings,
        metrics: Arc<Metrics>,
        configure: impl FnOnce(Keyscope) -> Keyscope,
    ) -> TestServer {
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let core = Keyscope::new(
            store.clone(),
            Builtins::new(presets).expect("valid presets"),
            TokenFormat::new("ks").expect("prefix"),
            Pepper::new(PEPPER).expect("pepper"),
        )
        .with_clock(clock.clone());
        let core = Arc::new(configure(core));
        let admin_token = match (core.ensure_bootstrap(None).await.expect("bootstrap"), admin_token) {
            (Bootstrap::Created(_, token), _) => token.expose().to_owned(),
            (Bootstrap::Existing(_), Some(token)) => token.to_owned(),
            (other, _) => panic!("unexpected bootstrap outcome {other:?}"),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let http_addr = http.local_addr().expect("http addr");
        let options = ServeOptions { ext_authz, metrics: metrics.clone(), http: Some(http), ..ServeOptions::default() };
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = core.clone();
        let task = tokio::spawn(async move {
            keyscope::server::serve_with(listener, serving, options, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        let channel = Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
        TestServer {
            addr,
            admin_token,
            clock,
            store,
            core,
            cache: None,
            metrics,
            http_addr,
            channel,
            stop: Some(stop),
            task: Some(task),
            feed: None,
        }
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn checker(&self) -> CheckerClient<Channel> {
        CheckerClient::new(self.channel.clone())
    }

    /// KeyAdmin with the given bearer token (`None`: no authorization metadata).
    pub fn keys_as(&self, token: Option<&str>) -> Keys {
        KeyAdminClient::with_interceptor(self.channel.clone(), bearer(token))
    }

    pub fn scopes_as(&self, token: Option<&str>) -> Scopes {
        ScopeAdminClient::with_interceptor(self.channel.clone(), bearer(token))
    }

    /// AuditLog with the given bearer token.
    pub fn audit_as(&self, token: Option<&str>) -> Audit {
        AuditLogClient::with_interceptor(self.channel.clone(), bearer(token))
    }

    /// AuditLog as the `system` admin.
    pub fn audit(&self) -> Audit {
        self.audit_as(Some(&self.admin_token))
    }

    /// KeyAdmin as the `system` admin.
    pub fn keys(&self) -> Keys {
        self.keys_as(Some(&self.admin_token))
    }

    /// ScopeAdmin as the `system` admin.
    pub fn scopes(&self) -> Scopes {
        self.scopes_as(Some(&self.admin_token))
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }

    /// Creates a scope in `tenant` as the system admin.
    pub async fn scope(&self, tenant: &str, label: &str, mode: pb::ScopeMode, rules: pb::Rules) -> pb::Scope {
        self.scopes()
            .create_scope(pb::CreateScopeRequest {
                tenant: tenant.into(),
                label: label.into(),
                description: String::new(),
                mode: mode.into(),
                rules: Some(rules),
            })
            .await
            .expect("create scope")
            .into_inner()
    }

    /// Replaces the rules of `scope` (as read) of `tenant`, as the system admin.
    pub async fn set_rules(&self, tenant: &str, scope: &pb::Scope, rules: pb::Rules) -> pb::Scope {
        self.scopes()
            .update_scope(pb::UpdateScopeRequest {
                tenant: tenant.into(),
                id: scope.id.clone(),
                version: scope.version,
                update_mask: mask(&["rules"]),
                rules: Some(rules),
                ..Default::default()
            })
            .await
            .expect("update the scope's rules")
            .into_inner()
    }

    /// Creates a key in `tenant` holding `scopes`, as the system admin; returns it and its token.
    pub async fn key(&self, tenant: &str, scopes: &[&str]) -> (pb::Key, String) {
        self.owned_key(tenant, "", scopes).await
    }

    /// The gRPC health status of the whole server.
    pub async fn serving(&self) -> bool {
        self.health_of("").await
    }

    /// Whether gRPC health reports `service` SERVING.
    pub async fn health_of(&self, service: &str) -> bool {
        use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
        let response =
            HealthClient::new(self.channel.clone()).check(HealthCheckRequest { service: service.into() }).await;
        response.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
    }

    /// Checks `token` for `module`/`action` with explain, keeping a gRPC error as is.
    pub async fn try_check(&self, token: &str, module: &str, action: pb::Action) -> Result<pb::CheckResponse, Status> {
        self.checker()
            .check(pb::CheckRequest {
                credential: Some(pb::check_request::Credential::Token(token.into())),
                tenant: String::new(),
                module: module.into(),
                action: action.into(),
                explain: true,
                source_address: Default::default(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Checks `token` for `module`/`action` with explain.
    pub async fn check(&self, token: &str, module: &str, action: pb::Action) -> pb::CheckResponse {
        self.try_check(token, module, action).await.expect("check")
    }

    /// Starts a server on `store` with these ext_authz settings and the core's settings
    /// changed by `configure` (e.g. a default maximum key lifetime).
    pub async fn start_configured(
        store: Arc<dyn Store>,
        ext_authz: ExtAuthzSettings,
        configure: impl FnOnce(Keyscope) -> Keyscope,
    ) -> TestServer {
        Self::launch_with(store, &[], None, ext_authz, Arc::new(Metrics::new()), configure).await
    }
}

/// Rules with only `read` patterns.
pub fn read_rules(patterns: &[&str]) -> pb::Rules {
    pb::Rules { read: patterns.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

/// Rules with the same patterns under every action.
pub fn all_rules(patterns: &[&str]) -> pb::Rules {
    let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
    pb::Rules { create: p.clone(), read: p.clone(), update: p.clone(), delete: p }
}

/// Asserts a gRPC error's code and that its message contains `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: tonic::Code, needle: &str) -> Status {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    assert!(status.message().contains(needle), "message {:?} should contain {needle:?}", status.message());
    status
}

/// A field mask naming `paths`.
pub fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|s| s.to_string()).collect() })
}

impl TestServer {
    /// Every key of `tenant`, following page tokens, as the system admin.
    pub async fn all_keys(&self, tenant: &str) -> Vec<pb::Key> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .keys()
                .list_keys(pb::ListKeysRequest {
                    tenant: tenant.into(),
                    page_size: 500,
                    page_token,
                    ..Default::default()
                })
                .await
                .expect("list keys")
                .into_inner();
            out.extend(page.keys);
            if page.next_page_token.is_empty() {
                return out;
            }
            page_token = page.next_page_token;
        }
    }

    /// Every scope of `tenant` (builtins included), following page tokens, as the system admin.
    pub async fn all_scopes(&self, tenant: &str) -> Vec<pb::Scope> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .scopes()
                .list_scopes(pb::ListScopesRequest { tenant: tenant.into(), page_size: 500, page_token })
                .await
                .expect("list scopes")
                .into_inner();
            out.extend(page.scopes);
            if page.next_page_token.is_empty() {
                return out;
            }
            page_token = page.next_page_token;
        }
    }
}

/// Polls `condition` every 10 ms until it holds; fails the test after `deadline`. Returns how
/// long it took. For effects that arrive asynchronously (the change feed, readiness).
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if condition().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < deadline, "{what}: not seen within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub type Principals = pb::principal_admin_client::PrincipalAdminClient<InterceptedService<Channel, Bearer>>;

impl TestServer {
    /// PrincipalAdmin with the given bearer token.
    pub fn principals_as(&self, token: Option<&str>) -> Principals {
        pb::principal_admin_client::PrincipalAdminClient::with_interceptor(self.channel.clone(), bearer(token))
    }

    /// PrincipalAdmin as the `system` admin.
    pub fn principals(&self) -> Principals {
        self.principals_as(Some(&self.admin_token))
    }

    /// Registers (or replaces) a principal of `tenant` as the system admin.
    pub async fn principal(&self, tenant: &str, subject: &str, roles: &[&str]) -> pb::RegisteredPrincipal {
        self.principals()
            .upsert_principal(pb::UpsertPrincipalRequest {
                tenant: tenant.into(),
                subject: subject.into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                ..Default::default()
            })
            .await
            .expect("upsert principal")
            .into_inner()
    }

    /// Replaces the member bindings of a scope of `tenant` as the system admin, whatever their
    /// version.
    pub async fn bind(&self, tenant: &str, scope_id: &str, subjects: &[&str], roles: &[&str]) -> pb::ScopeMembers {
        let current = self
            .scopes()
            .get_scope_members(pb::GetScopeMembersRequest { tenant: tenant.into(), scope_id: scope_id.into() })
            .await
            .expect("get members")
            .into_inner();
        self.scopes()
            .set_scope_members(pb::SetScopeMembersRequest {
                tenant: tenant.into(),
                scope_id: scope_id.into(),
                subjects: subjects.iter().map(|s| s.to_string()).collect(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                version: current.version,
            })
            .await
            .expect("set members")
            .into_inner()
    }

    /// Creates a key in `tenant` holding `scopes` and owned by `owner`; returns it and its token.
    pub async fn owned_key(&self, tenant: &str, owner: &str, scopes: &[&str]) -> (pb::Key, String) {
        let response = self
            .keys()
            .create_key(pb::CreateKeyRequest {
                tenant: tenant.into(),
                owner: owner.into(),
                scope_ids: scopes.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await
            .expect("create key")
            .into_inner();
        (response.key.expect("key"), response.token)
    }

    /// Checks a bearer principal credential with explain, keeping a gRPC error as is.
    pub async fn try_check_principal(
        &self,
        tenant: &str,
        subject: &str,
        roles: &[&str],
        module: &str,
        action: pb::Action,
    ) -> Result<pb::CheckResponse, Status> {
        let principal = pb::Principal { subject: subject.into(), roles: roles.iter().map(|r| r.to_string()).collect() };
        self.checker()
            .check(pb::CheckRequest {
                credential: Some(pb::check_request::Credential::Principal(principal)),
                tenant: tenant.into(),
                module: module.into(),
                action: action.into(),
                explain: true,
                source_address: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

impl TestServer {
    /// [`TestServer::start_on_redis`] (the first replica of a prefix) with these ext_authz
    /// settings.
    pub async fn start_on_redis_with_ext_authz(url: &str, prefix: &str, ext_authz: ExtAuthzSettings) -> TestServer {
        let options = RedisOptions {
            prefix: prefix.to_owned(),
            check_timeout: Duration::from_millis(300),
            admin_timeout: Duration::from_millis(1500),
            ..RedisOptions::new(url)
        };
        let redis = RedisStore::connect(options).await.expect("connect to the test redis");
        let metrics = Arc::new(Metrics::new());
        let cached = CachedStore::new(Arc::new(redis.clone()), CacheSettings::default());
        let feed = redis.follow_changes(cached.sink()).await.expect("follow the change feed");
        let mut server = Self::launch(Arc::new(cached.clone()), &[], None, ext_authz, metrics).await;
        server.cache = Some(cached);
        server.feed = Some(feed);
        server
    }
}

/// (HTTP status, body JSON, headers with lower-case names) of an ext_authz denial.
pub fn envoy_denial(
    r: &envoy_types::pb::envoy::service::auth::v3::CheckResponse,
) -> (i32, serde_json::Value, std::collections::HashMap<String, String>) {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else { panic!("expected a denial, got {r:?}") };
    let headers = d
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
        .collect();
    let body = serde_json::from_str(&d.body).expect("a JSON body");
    (d.status.as_ref().map_or(0, |s| s.code), body, headers)
}
