//! The Redis store: every real deployment's shared engine, standalone or Redis Cluster.
//!
//! # Layout
//! Every key starts with the configured prefix (default `keyscope`), so deployments can share
//! one Redis. A tenant's records all carry the hash tag `{<tenant>}`, so each atomic change
//! (one Lua script) stays in one cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:schema` | string | the stored schema version, checked at start |
//! | `P:kt:<key id>` | string | the tenant of a key (ids are global; written before the key) |
//! | `P:{T}:key:<id>` | hash | `v` version, `scopes` ids comma-separated, `updated`, `body` JSON |
//! | `P:{T}:keys` | sorted set | the tenant's key ids (score 0, ordered by id) |
//! | `P:{T}:scope:<id>` | hash | `v`, `label`, `folded` label, `body` JSON |
//! | `P:{T}:scopes` | sorted set | the tenant's stored scope ids |
//! | `P:{T}:labels` | hash | folded label -> scope id |
//! | `P:{T}:holders:<scope id>` | sorted set | ids of the keys holding the scope |
//! | `P:{system}:bootstrap` | string | the bootstrap admin key's id |
//! | `P:{T}:used` | sorted set | key id -> its last use (microseconds since the epoch) |
//! | `P:{T}:usage:<key id>:<YYYY-MM-DD>` | hash | `a` allowed, `d` denied checks that UTC day; expires with the retention |
//! | `P:{T}:audit` | stream | the tenant's audit events (field `e`: JSON), newest `max_events` kept |
//! | `P:{T}:policy` | hash | the tenant's key policy: `v` version, `body` JSON (`max_key_lifetime_ms`, `updated_at`) |
//! | `P:{T}:principal:<subject>` | hash | `v` version, `roles` newline-separated, `body` JSON |
//! | `P:{T}:principals` | sorted set | the tenant's registered subjects (score 0, ordered by subject) |
//! | `P:{T}:gone` | set | subjects of deleted principals (their keys are denied) until registered again |
//! | `P:{T}:members:<scope id>` | hash | `v` version, `subjects` and `roles` newline-separated |
//! | `P:{T}:bound:s:<subject>` | set | ids of the scopes bound to the subject |
//! | `P:{T}:bound:r:<role>` | set | ids of the scopes bound to the role |
//!
//! No record that decides access has a TTL (only the usage counts expire), and at connect the
//! store refuses a Redis whose `maxmemory-policy` could evict one (any `allkeys-*` policy).
//!
//! Mutations are Lua scripts (`src/store/lua/`), atomic by construction; each one appends its
//! audit event to the tenant's stream in the same script (`lua/audit.lua`). A check that misses
//! every cache costs two round trips: the key's tenant, then one script returning the key and
//! its scopes; the key -> tenant mapping never changes, so it is kept, and a key seen before
//! costs one. Lists page through the sorted sets; nothing on a request path uses `KEYS` or
//! `SCAN`. `redis::` types never leave this file.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use redis::{
    AsyncCommands, Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Script,
    ScriptInvocation, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo},
};
use serde::{Deserialize, Serialize};

use super::{
    AUDIT_SCAN_MAX, AuditPage, AuditQuery, AuditWrite, Change, ChangeSink, Credential, DailyUsage, KeyQuery, KeyWrite,
    Owner, PrincipalGrants, ScopeDelete, ScopeDetach, Store, StoreError, UsageDelta,
};
use crate::domain::{
    AuditEvent, AuditId, AuditRecord, AuditTarget, Day, Key, KeyId, KeyState, Members, Pattern, Principal, Role, Rules,
    Scope, ScopeId, ScopeMode, SecretHash, Subject, Tenant, millis,
};
use crate::domain::{PreviousSecret, RateLimit, TenantPolicy, shorten_for_message};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: &str = "1";

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` URL (with user and password when ACLs are on); for a cluster,
    /// one or more seed node URLs separated by commas.
    pub url: String,
    /// Whether `url` names Redis Cluster seed nodes.
    pub cluster: bool,
    /// Prefix of every key.
    pub prefix: String,
    /// Longest wait for Redis on the check path.
    pub check_timeout: Duration,
    /// Longest wait for Redis on admin calls and start-up.
    pub admin_timeout: Duration,
    /// ACL user, instead of the URL's.
    pub username: Option<String>,
    /// Password, instead of the URL's.
    pub password: Option<String>,
    /// TLS material for `rediss://` URLs (none: the system's CAs, no client certificate).
    pub tls: RedisTls,
}

/// TLS material for `rediss://`, as PEM.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// CA certificates to trust instead of the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and its key, for Redis's `tls-auth-clients`.
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisTls {
    fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca_pem.is_none() && self.client_pem.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client_pem
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
            root_cert: self.ca_pem.clone(),
        })
    }
}

impl RedisOptions {
    /// Options for `url` with the defaults of `store.redis.*`: standalone, prefix `keyscope`,
    /// no credentials or TLS material beyond the URL's.
    pub fn new(url: impl Into<String>) -> RedisOptions {
        RedisOptions {
            url: url.into(),
            cluster: false,
            prefix: "keyscope".into(),
            check_timeout: Duration::from_millis(100),
            admin_timeout: Duration::from_millis(2000),
            username: None,
            password: None,
            tls: RedisTls::default(),
        }
    }

    /// The seed URLs (one unless a cluster).
    fn nodes(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
    }

    /// A client of one node, with the configured credentials and TLS material.
    fn client(&self, url: &str) -> Result<redis::Client, RedisError> {
        let mut info = url.into_connection_info()?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        info = info.set_redis_settings(settings);
        match self.tls.certificates() {
            Some(certs) => redis::Client::build_with_tls(info, certs),
            None => redis::Client::open(info),
        }
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &"[redacted]")
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("check_timeout", &self.check_timeout)
            .field("admin_timeout", &self.admin_timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("tls_ca", &self.tls.ca_pem.is_some())
            .field("tls_client_cert", &self.tls.client_pem.is_some())
            .finish()
    }
}

/// One multiplexed connection, to a standalone Redis (reconnecting) or to a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Scripts {
    put_key: Script,
    put_scope: Script,
    delete_scope: Script,
    detach_scope: Script,
    claim_bootstrap: Script,
    release_bootstrap: Script,
    credential: Script,
    record_usage: Script,
    put_policy: Script,
    put_principal: Script,
    delete_principal: Script,
    set_members: Script,
    principal_grants: Script,
}

/// Keys and scopes in Redis. Cloning shares the connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    /// Nodes to follow the change feed on, tried in turn (on a cluster, any node sees every
    /// PUBLISH).
    pubsub_nodes: Arc<[redis::Client]>,
    /// Redis's clock minus ours, in microseconds, measured at connect: write deadlines are
    /// given in Redis's time.
    clock_offset_us: i64,
    /// Key id -> tenant. The mapping never changes once written, so it needs no
    /// invalidation: a check whose key record is not cached costs one round trip, not two.
    tenants: moka::sync::Cache<KeyId, Tenant>,
    prefix: Arc<str>,
    check_timeout: Duration,
    admin_timeout: Duration,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn unavailable(error: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {error}"))
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {detail}"))
}

impl RedisStore {
    /// Connects, loads the scripts and checks (or, on an empty Redis, writes) the schema
    /// version.
    pub async fn connect(options: RedisOptions) -> Result<Self, StoreError> {
        let conn = tokio::time::timeout(options.admin_timeout, Self::open(&options))
            .await
            .map_err(|_| StoreError::Unavailable("redis: timed out connecting".into()))??;
        let pubsub_nodes: Arc<[redis::Client]> = options
            .nodes()
            .into_iter()
            .map(|url| options.client(url))
            .collect::<Result<_, _>>()
            .map_err(unavailable)?;
        let mut store = RedisStore {
            conn,
            pubsub_nodes,
            clock_offset_us: 0,
            tenants: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            prefix: Arc::from(options.prefix.as_str()),
            check_timeout: options.check_timeout,
            admin_timeout: options.admin_timeout,
            scripts: Arc::new(Scripts {
                put_key: Script::new(concat!(include_str!("lua/audit.lua"), include_str!("lua/put_key.lua"))),
                put_scope: Script::new(concat!(include_str!("lua/audit.lua"), include_str!("lua/put_scope.lua"))),
                delete_scope: Script::new(concat!(
                    include_str!("lua/audit.lua"),
                    include_str!("lua/unbind.lua"),
                    include_str!("lua/detach.lua"),
                    include_str!("lua/delete_scope.lua")
                )),
                detach_scope: Script::new(concat!(
                    include_str!("lua/detach.lua"),
                    include_str!("lua/detach_scope.lua")
                )),
                claim_bootstrap: Script::new(concat!(
                    include_str!("lua/audit.lua"),
                    include_str!("lua/claim_bootstrap.lua")
                )),
                release_bootstrap: Script::new(concat!(
                    include_str!("lua/audit.lua"),
                    include_str!("lua/release_bootstrap.lua")
                )),
                credential: Script::new(concat!(
                    include_str!("lua/scope_records.lua"),
                    include_str!("lua/credential.lua")
                )),
                record_usage: Script::new(include_str!("lua/record_usage.lua")),
                put_policy: Script::new(concat!(include_str!("lua/audit.lua"), include_str!("lua/put_policy.lua"))),
                put_principal: Script::new(concat!(
                    include_str!("lua/audit.lua"),
                    include_str!("lua/put_principal.lua")
                )),
                delete_principal: Script::new(concat!(
                    include_str!("lua/audit.lua"),
                    include_str!("lua/delete_principal.lua")
                )),
                set_members: Script::new(concat!(
                    include_str!("lua/audit.lua"),
                    include_str!("lua/unbind.lua"),
                    include_str!("lua/set_members.lua")
                )),
                principal_grants: Script::new(concat!(
                    include_str!("lua/scope_records.lua"),
                    include_str!("lua/principal_grants.lua")
                )),
            }),
        };
        // First, so that a refused Redis is not written to at all.
        store.check_eviction_policy().await?;
        store.check_schema().await?;
        store.clock_offset_us = store.measure_clock_offset().await?;
        Ok(store)
    }

    /// Refuses a Redis whose `maxmemory-policy` may evict keyscope's records (on a cluster,
    /// every master is asked): a lost member binding, deny-mode scope or deleted-owner marker
    /// would widen access. keyscope's records have no TTL (only usage counts expire), so
    /// `noeviction` and the `volatile-*` policies never evict one. A Redis that does not let
    /// keyscope read its configuration (`CONFIG` renamed, or denied by an ACL, as on some
    /// managed services) is used, with a warning: its operator must keep the policy safe.
    async fn check_eviction_policy(&self) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let limit = self.admin_timeout;
        let late = || StoreError::Unavailable(format!("redis: no answer within {} ms", limit.as_millis()));
        // Each node (`None`: the one server) and its reply, or the error it answered with.
        let replies: Vec<(Option<String>, Result<Value, RedisError>)> = match &self.conn {
            Conn::Single(conn) => {
                let mut conn = conn.clone();
                let reply = match tokio::time::timeout(limit, cmd.query_async::<Value>(&mut conn)).await {
                    Err(_) => return Err(late()),
                    Ok(Ok(Value::ServerError(error))) => Err(RedisError::from(error)),
                    Ok(reply) => reply,
                };
                vec![(None, reply)]
            }
            Conn::Cluster(conn) => {
                let mut conn = conn.clone();
                let masters = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let reply = tokio::time::timeout(limit, conn.route_command(cmd, masters))
                    .await
                    .map_err(|_| late())?
                    .map_err(unavailable)?;
                let Value::Map(nodes) = reply else { return Err(corrupt("CONFIG GET reply", "not one per node")) };
                nodes
                    .into_iter()
                    .map(|(node, reply)| {
                        let node = String::from_redis_value(node).unwrap_or_default();
                        let reply = match reply {
                            Value::ServerError(error) => Err(RedisError::from(error)),
                            other => Ok(other),
                        };
                        (Some(node), reply)
                    })
                    .collect()
            }
        };
        for (node, reply) in replies {
            let name = node.as_deref().map_or_else(|| "redis".to_owned(), |n| format!("redis node {n}"));
            let config: BTreeMap<String, String> = match reply {
                Ok(value) => FromRedisValue::from_redis_value(value).map_err(|e| corrupt("CONFIG GET reply", e))?,
                // The server answered, with a refusal: CONFIG is renamed or not allowed.
                Err(error) if error.code().is_some() => {
                    tracing::warn!(
                        node = %name,
                        %error,
                        "cannot read Redis's maxmemory-policy; keep it `noeviction` (or `volatile-*`): an evicting policy could drop keyscope's records and widen access"
                    );
                    continue;
                }
                Err(error) => return Err(unavailable(error)),
            };
            match config.get("maxmemory-policy") {
                Some(policy) => {
                    if let Some(problem) = eviction_problem(&name, policy) {
                        return Err(StoreError::Unsafe(problem));
                    }
                }
                None => tracing::warn!(
                    node = %name,
                    "Redis did not report its maxmemory-policy; keep it `noeviction` (or `volatile-*`): an evicting policy could drop keyscope's records and widen access"
                ),
            }
        }
        Ok(())
    }

    async fn open(options: &RedisOptions) -> Result<Conn, StoreError> {
        crate::tls::install_default_provider();
        if options.cluster {
            let mut builder = ClusterClientBuilder::new(options.nodes())
                .connection_timeout(options.admin_timeout)
                .response_timeout(options.admin_timeout);
            if let Some(user) = &options.username {
                builder = builder.username(user);
            }
            if let Some(password) = &options.password {
                builder = builder.password(password);
            }
            if let Some(certs) = options.tls.certificates() {
                builder = builder.certs(certs);
            }
            let client = builder.build().map_err(unavailable)?;
            return Ok(Conn::Cluster(client.get_async_connection().await.map_err(unavailable)?));
        }
        let client = options.client(&options.url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.admin_timeout))
            .set_response_timeout(Some(options.admin_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        Ok(Conn::Single(ConnectionManager::new_with_config(client, config).await.map_err(unavailable)?))
    }

    async fn check_schema(&self) -> Result<(), StoreError> {
        let key = format!("{}:schema", self.prefix);
        let mut conn = self.conn.clone();
        let set: bool = self
            .admin(redis::cmd("SET").arg(&key).arg(SCHEMA_VERSION).arg("NX").query_async::<Option<String>>(&mut conn))
            .await?
            .is_some();
        if set {
            return Ok(());
        }
        let found: Option<String> = self.admin(conn.get(&key)).await?;
        match found.as_deref() {
            Some(SCHEMA_VERSION) => Ok(()),
            other => Err(StoreError::Corrupt(format!(
                "stored schema version {} at `{key}`; this build reads version {SCHEMA_VERSION}",
                other.unwrap_or("(none)")
            ))),
        }
    }

    /// Runs a command with the admin timeout.
    async fn admin<T>(&self, call: impl Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
        Self::bounded(self.admin_timeout, call).await
    }

    async fn bounded<T>(limit: Duration, call: impl Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable(format!("redis: no answer within {} ms", limit.as_millis()))),
        }
    }

    /// Redis's clock minus this host's, in microseconds (taken at the middle of a `TIME`
    /// round trip).
    async fn measure_clock_offset(&self) -> Result<i64, StoreError> {
        let mut conn = self.conn.clone();
        let before = local_micros(SystemTime::now());
        let (secs, micros): (i64, i64) = self.admin(redis::cmd("TIME").query_async(&mut conn)).await?;
        let after = local_micros(SystemTime::now());
        let offset = secs * 1_000_000 + micros - (before + after) / 2;
        if offset.abs() > 1_000_000 {
            tracing::warn!(
                offset_ms = offset / 1000,
                "Redis's clock differs from this host's; write deadlines account for it"
            );
        }
        Ok(offset)
    }

    /// The instant (microseconds since the epoch, by Redis's clock) after which a write must
    /// not apply: the caller has given up on it by then.
    fn deadline(&self) -> i64 {
        local_micros(SystemTime::now() + self.admin_timeout) + self.clock_offset_us
    }

    fn base(&self, tenant: &Tenant) -> String {
        format!("{}:{{{}}}:", self.prefix, tenant)
    }

    fn tenant_of(&self, id: &KeyId) -> String {
        format!("{}:kt:{}", self.prefix, id)
    }

    /// Records which tenant a new key id belongs to, before the key is written. The mapping
    /// is never removed: a create that fails (or times out) may leave it pointing at no key,
    /// which is harmless (a check then finds no key) and lets a retry with the same id go on.
    /// A mapping to another tenant means the id is taken.
    async fn map_tenant(&self, id: &KeyId, tenant: &Tenant) -> Result<(), StoreError> {
        let mapping = self.tenant_of(id);
        let mut conn = self.conn.clone();
        let set: Option<String> =
            self.admin(redis::cmd("SET").arg(&mapping).arg(tenant.as_str()).arg("NX").query_async(&mut conn)).await?;
        if set.is_some() {
            return Ok(());
        }
        let found: Option<String> = self.admin(conn.get(&mapping)).await?;
        if found.as_deref() == Some(tenant.as_str()) {
            return Ok(());
        }
        Err(StoreError::AlreadyExists(format!("key `{id}`")))
    }

    /// The fields of several hashes of one tenant, in one round trip.
    async fn hashes(&self, keys: &[String], fields: &[&str]) -> Result<Vec<Vec<Option<String>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HMGET").arg(key).arg(fields);
        }
        let mut conn = self.conn.clone();
        self.admin(pipe.query_async(&mut conn)).await
    }

    /// Keys of a tenant by id (missing ones left out), each with its last use: the records
    /// and the `used` scores in one round trip.
    async fn keys_by_id(&self, tenant: &Tenant, ids: &[String]) -> Result<Vec<Arc<Key>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let base = self.base(tenant);
        let used = format!("{base}used");
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET").arg(format!("{base}key:{id}")).arg(&KEY_FIELDS);
        }
        for id in ids {
            pipe.cmd("ZSCORE").arg(&used).arg(id);
        }
        let mut conn = self.conn.clone();
        let mut replies: Vec<Value> = self.admin(pipe.query_async(&mut conn)).await?;
        let scores = replies.split_off(ids.len().min(replies.len()));
        let mut keys = Vec::with_capacity(ids.len());
        for ((id, row), score) in ids.iter().zip(replies).zip(scores) {
            let what = || format!("key `{id}`");
            let row: Vec<Option<String>> = FromRedisValue::from_redis_value(row).map_err(|e| corrupt(&what(), e))?;
            let score: Option<f64> = FromRedisValue::from_redis_value(score).map_err(|e| corrupt(&what(), e))?;
            if let Some(mut key) = decode_key(tenant, id, &row)? {
                if let Some(micros) = score {
                    key.last_used_at = Some(from_micros(micros));
                }
                keys.push(Arc::new(key));
            }
        }
        Ok(keys)
    }

    async fn scopes_by_id(&self, tenant: &Tenant, ids: &[String]) -> Result<Vec<Arc<Scope>>, StoreError> {
        let base = self.base(tenant);
        let names: Vec<String> = ids.iter().map(|id| format!("{base}scope:{id}")).collect();
        let rows = self.hashes(&names, &SCOPE_FIELDS).await?;
        let mut scopes = Vec::with_capacity(rows.len());
        for (id, row) in ids.iter().zip(rows) {
            if let Some(scope) = decode_scope(tenant, id, &row)? {
                scopes.push(Arc::new(scope));
            }
        }
        Ok(scopes)
    }

    /// Ids from a sorted set after `after`, in id order.
    async fn ids_after(&self, set: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        let min = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let mut conn = self.conn.clone();
        self.admin(conn.zrangebylex_limit(set, min, "+", 0, limit as isize)).await
    }
}

/// Why a `maxmemory-policy` is not safe for keyscope, if it is not: any policy but
/// `noeviction` and `volatile-*` (unknown ones included) may evict a record without a TTL.
fn eviction_problem(node: &str, policy: &str) -> Option<String> {
    if policy == "noeviction" || policy.starts_with("volatile-") {
        return None;
    }
    Some(format!(
        "{node} has maxmemory-policy `{}`, which may evict keyscope's records (a lost binding or deny marker would widen access); set it to `noeviction`",
        shorten_for_message(policy)
    ))
}

fn local_micros(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// An instant stored as a sorted-set score in microseconds (exact below 2^53, year 2255).
fn from_micros(micros: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros.max(0.0) as u64)
}

/// Seconds since the epoch at which a usage day's counts expire: `retention_days` after it
/// starts, so the last `retention_days` days (today included) are kept.
fn usage_expiry(day: Day, retention_days: u32) -> u64 {
    day.plus(retention_days).start().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How many holder ids one read of a scope's holders takes.
const HOLDERS_PAGE: usize = 1000;

const KEY_FIELDS: [&str; 4] = ["v", "scopes", "updated", "body"];
const SCOPE_FIELDS: [&str; 3] = ["v", "label", "body"];

/// An instant as (seconds, nanoseconds) since the epoch.
type Instant = (u64, u32);

fn instant(at: SystemTime) -> Instant {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

fn system_time((secs, nanos): Instant) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

fn instant_text(at: SystemTime) -> String {
    let (s, n) = instant(at);
    format!("{s}.{n:09}")
}

fn parse_instant_text(text: &str) -> Option<SystemTime> {
    let (s, n) = text.split_once('.')?;
    Some(system_time((s.parse().ok()?, n.parse().ok()?)))
}

#[derive(Serialize, Deserialize)]
struct KeyBody {
    description: String,
    owner: String,
    state: String,
    expires_at: Option<Instant>,
    metadata: BTreeMap<String, String>,
    created_at: Instant,
    last_used_at: Option<Instant>,
    secret_hash: String,
    /// The rotated-out secret's hash and the end of its grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_secret: Option<(String, Instant)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotated_at: Option<Instant>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allowed_cidrs: Vec<String>,
    /// Requests per second and burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit: Option<(f64, u32)>,
}

#[derive(Serialize, Deserialize)]
struct PolicyBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_key_lifetime_ms: Option<u64>,
    updated_at: Instant,
}

#[derive(Serialize, Deserialize)]
struct ScopeBody {
    description: String,
    mode: String,
    rules: [Vec<String>; 4],
    created_at: Instant,
    updated_at: Instant,
}

fn join_ids(ids: &[ScopeId]) -> String {
    ids.iter().map(ScopeId::as_str).collect::<Vec<_>>().join(",")
}

fn encode_key(key: &Key) -> Result<String, StoreError> {
    let body = KeyBody {
        description: key.description.clone(),
        owner: key.owner.clone(),
        state: key.state.as_str().to_owned(),
        expires_at: key.expires_at.map(instant),
        metadata: key.metadata.clone(),
        created_at: instant(key.created_at),
        last_used_at: key.last_used_at.map(instant),
        secret_hash: STANDARD.encode(key.secret_hash.as_bytes()),
        previous_secret: key
            .previous_secret
            .as_ref()
            .map(|p| (STANDARD.encode(p.hash.as_bytes()), instant(p.expires_at))),
        rotated_at: key.rotated_at.map(instant),
        allowed_cidrs: key.allowed_cidrs.iter().map(ToString::to_string).collect(),
        rate_limit: key.rate_limit.map(|r| (r.requests_per_second, r.burst)),
    };
    serde_json::to_string(&body).map_err(|e| corrupt("key body", e))
}

fn decode_key(tenant: &Tenant, id: &str, row: &[Option<String>]) -> Result<Option<Key>, StoreError> {
    let [Some(v), scopes, updated, Some(body)] = row else { return Ok(None) };
    let what = format!("key `{id}`");
    let body: KeyBody = serde_json::from_str(body).map_err(|e| corrupt(&what, e))?;
    let state = match body.state.as_str() {
        "active" => KeyState::Active,
        "disabled" => KeyState::Disabled,
        "revoked" => KeyState::Revoked,
        other => return Err(corrupt(&what, format!("state `{other}`"))),
    };
    let decode_hash = |text: &str| -> Result<SecretHash, StoreError> {
        let bytes: [u8; 32] =
            STANDARD.decode(text).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt(&what, "secret hash"))?;
        Ok(SecretHash::from_bytes(bytes))
    };
    let secret_hash = decode_hash(&body.secret_hash)?;
    let previous_secret = match &body.previous_secret {
        Some((hash, until)) => Some(PreviousSecret { hash: decode_hash(hash)?, expires_at: system_time(*until) }),
        None => None,
    };
    // An unreadable network is an error, never skipped: skipping one would not widen, but
    // an empty list would.
    let allowed_cidrs = body
        .allowed_cidrs
        .iter()
        .map(|c| c.parse::<ipnet::IpNet>().map_err(|_| corrupt(&what, "allowed cidr")))
        .collect::<Result<Vec<_>, _>>()?;
    let rate_limit = match body.rate_limit {
        Some((rate, burst)) => {
            Some(RateLimit::new("rate_limit", rate, burst).map_err(|_| corrupt(&what, "rate limit"))?)
        }
        None => None,
    };
    let scope_ids = scopes
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<ScopeId>().map_err(|_| corrupt(&what, "scope id")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Key {
        id: id.parse().map_err(|_| corrupt(&what, "id"))?,
        tenant: tenant.clone(),
        description: body.description,
        owner: body.owner,
        scope_ids,
        state,
        expires_at: body.expires_at.map(system_time),
        metadata: body.metadata,
        version: v.parse().map_err(|_| corrupt(&what, "version"))?,
        created_at: system_time(body.created_at),
        updated_at: updated.as_deref().and_then(parse_instant_text).ok_or_else(|| corrupt(&what, "updated"))?,
        last_used_at: body.last_used_at.map(system_time),
        secret_hash,
        previous_secret,
        rotated_at: body.rotated_at.map(system_time),
        allowed_cidrs,
        rate_limit,
    }))
}

fn encode_scope(scope: &Scope) -> Result<String, StoreError> {
    let list = |a| scope.rules.patterns(a).iter().map(ToString::to_string).collect();
    let body = ScopeBody {
        description: scope.description.clone(),
        mode: scope.mode.as_str().to_owned(),
        rules: crate::domain::Action::ALL.map(list),
        created_at: instant(scope.created_at),
        updated_at: instant(scope.updated_at),
    };
    serde_json::to_string(&body).map_err(|e| corrupt("scope body", e))
}

/// A field of a script's reply, `""` when it is nil.
fn text(field: &Option<String>) -> &str {
    field.as_deref().unwrap_or_default()
}

/// The scope records a check-path script appended (`scope_records.lua`): id, version, label and
/// body of each stored scope.
fn decode_scope_records(tenant: &Tenant, rows: &[Option<String>]) -> Result<Vec<Arc<Scope>>, StoreError> {
    let mut scopes = Vec::with_capacity(rows.len() / 4);
    for chunk in rows.chunks(4) {
        if let [Some(sid), rest @ ..] = chunk
            && let Some(scope) = decode_scope(tenant, sid, rest)?
        {
            scopes.push(Arc::new(scope));
        }
    }
    Ok(scopes)
}

fn decode_scope(tenant: &Tenant, id: &str, row: &[Option<String>]) -> Result<Option<Scope>, StoreError> {
    let [Some(v), Some(label), Some(body)] = row else { return Ok(None) };
    let what = format!("scope `{id}`");
    let body: ScopeBody = serde_json::from_str(body).map_err(|e| corrupt(&what, e))?;
    let mode = match body.mode.as_str() {
        "allow" => ScopeMode::Allow,
        "deny" => ScopeMode::Deny,
        other => return Err(corrupt(&what, format!("mode `{other}`"))),
    };
    // An unreadable pattern is an error, never skipped: skipping a deny-mode pattern would widen.
    let mut patterns: [Vec<Pattern>; 4] = Default::default();
    for (list, raw) in patterns.iter_mut().zip(&body.rules) {
        for p in raw {
            list.push(p.parse().map_err(|_| corrupt(&what, "pattern"))?);
        }
    }
    Ok(Some(Scope {
        id: id.parse().map_err(|_| corrupt(&what, "id"))?,
        tenant: tenant.clone(),
        label: label.parse().map_err(|_| corrupt(&what, "label"))?,
        description: body.description,
        mode,
        rules: Rules::from_patterns(patterns),
        builtin: false,
        version: v.parse().map_err(|_| corrupt(&what, "version"))?,
        created_at: system_time(body.created_at),
        updated_at: system_time(body.updated_at),
    }))
}

#[derive(Serialize, Deserialize)]
struct PrincipalBody {
    enabled: bool,
    created_at: Instant,
    updated_at: Instant,
}

fn join_lines<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

fn split_lines<T: std::str::FromStr>(text: &str, what: &str) -> Result<Vec<T>, StoreError> {
    text.split('\n').filter(|s| !s.is_empty()).map(|s| s.parse().map_err(|_| corrupt(what, "name"))).collect()
}

/// How messages name a principal: its subject shortened (a subject may be a pasted token).
fn principal_name(subject: &str) -> String {
    format!("principal `{}`", shorten_for_message(subject))
}

fn decode_principal(tenant: &Tenant, subject: &str, v: &str, roles: &str, body: &str) -> Result<Principal, StoreError> {
    let what = principal_name(subject);
    let body: PrincipalBody = serde_json::from_str(body).map_err(|e| corrupt(&what, e))?;
    Ok(Principal {
        tenant: tenant.clone(),
        subject: subject.parse().map_err(|_| corrupt(&what, "subject"))?,
        roles: split_lines(roles, &what)?,
        enabled: body.enabled,
        version: v.parse().map_err(|_| corrupt(&what, "version"))?,
        created_at: system_time(body.created_at),
        updated_at: system_time(body.updated_at),
    })
}

/// An audit event as stored in the stream (its tenant and time come from the stream key and id).
#[derive(Serialize, Deserialize)]
struct EventBody {
    actor: String,
    operation: String,
    target_kind: String,
    target: String,
    changed: Vec<String>,
    details: BTreeMap<String, String>,
    request_id: String,
}

/// Appends the audit event's arguments (time, bound, body) before the deadline.
fn audit_args(call: &mut ScriptInvocation<'_>, audit: AuditWrite<'_>) -> Result<(), StoreError> {
    let r = audit.record;
    let body = EventBody {
        actor: r.actor.to_string(),
        operation: r.operation.as_str().to_owned(),
        target_kind: r.target.kind().to_owned(),
        target: r.target.id().to_owned(),
        changed: r.changed.clone(),
        details: r.details.clone(),
        request_id: r.request_id.to_string(),
    };
    let body = serde_json::to_string(&body).map_err(|e| corrupt("audit event", e))?;
    call.arg(audit.access_version.map(|v| v.to_string()).unwrap_or_default())
        .arg(millis(r.at))
        .arg(audit.max_events.max(1))
        .arg(body);
    Ok(())
}

fn decode_event(tenant: &Tenant, id: &str, fields: &[String]) -> Result<AuditEvent, StoreError> {
    let what = format!("audit event `{id}`");
    let id: AuditId = id.parse().map_err(|_| corrupt(&what, "id"))?;
    let body = match fields {
        [name, body] if name == "e" => body,
        _ => return Err(corrupt(&what, "fields")),
    };
    let body: EventBody = serde_json::from_str(body).map_err(|e| corrupt(&what, e))?;
    let record = AuditRecord {
        tenant: tenant.clone(),
        at: id.time(),
        actor: body.actor.parse().map_err(|_| corrupt(&what, "actor"))?,
        operation: body.operation.parse().map_err(|_| corrupt(&what, "operation"))?,
        target: AuditTarget::from_parts(&body.target_kind, &body.target).ok_or_else(|| corrupt(&what, "target"))?,
        changed: body.changed,
        details: body.details,
        request_id: body.request_id.parse().map_err(|_| corrupt(&what, "request id"))?,
    };
    Ok(AuditEvent::stored(id, record))
}

/// Turns a script's status reply into the store's answer.
fn outcome(reply: &[String], what: impl Fn() -> String, expected: Option<u64>) -> Result<(), StoreError> {
    match reply.first().map(String::as_str) {
        Some("ok") => Ok(()),
        Some("exists") => Err(StoreError::AlreadyExists(what())),
        Some("notfound") => Err(StoreError::NotFound(what())),
        Some("conflict") => Err(StoreError::VersionConflict {
            what: what(),
            expected: expected.unwrap_or(0),
            found: reply.get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
        }),
        Some("stale") => Err(StoreError::AccessChanged),
        Some("expired") => Err(StoreError::Unavailable(
            "redis took the write after its deadline and refused it; nothing was written".into(),
        )),
        Some("scopemissing") => Err(StoreError::ScopeMissing(
            reply.get(1).and_then(|s| s.parse().ok()).ok_or_else(|| corrupt("script reply", "scope id"))?,
        )),
        other => Err(corrupt("script reply", format!("{other:?}"))),
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn credential(&self, id: &KeyId) -> Result<Option<Arc<Credential>>, StoreError> {
        let mut conn = self.conn.clone();
        let known = self.tenants.get(id);
        let call = async {
            let tenant = match known {
                Some(tenant) => tenant.to_string(),
                None => {
                    let found: Option<String> = conn.get(self.tenant_of(id)).await?;
                    let Some(tenant) = found else { return Ok(None) };
                    tenant
                }
            };
            let base = format!("{}:{{{}}}:", self.prefix, tenant);
            let reply: Vec<Option<String>> =
                self.scripts.credential.key(format!("{base}key:{id}")).arg(&base).invoke_async(&mut conn).await?;
            Ok(Some((tenant, reply)))
        };
        let Some((tenant, reply)) = Self::bounded(self.check_timeout, call).await? else { return Ok(None) };
        let tenant: Tenant = tenant.parse().map_err(|_| corrupt("key tenant", id))?;
        if reply.len() < 4 {
            return Ok(None);
        }
        let Some(key) = decode_key(&tenant, id.as_str(), &reply[..4])? else { return Ok(None) };
        // Only a mapping whose key exists is remembered (a failed create leaves one behind).
        self.tenants.insert(id.clone(), tenant.clone());
        let scopes = decode_scope_records(&tenant, &reply[4..])?;
        Ok(Some(Arc::new(Credential { key: Arc::new(key), scopes })))
    }

    async fn get_key(&self, tenant: &Tenant, id: &KeyId) -> Result<Option<Arc<Key>>, StoreError> {
        Ok(self.keys_by_id(tenant, &[id.to_string()]).await?.pop())
    }

    async fn list_keys(&self, tenant: &Tenant, query: &KeyQuery) -> Result<Vec<Arc<Key>>, StoreError> {
        let base = self.base(tenant);
        let set = match &query.scope {
            Some(scope) => format!("{base}holders:{scope}"),
            None => format!("{base}keys"),
        };
        let chunk = (query.limit * 2).clamp(16, 1000);
        let mut out = Vec::new();
        let mut after = query.after.as_ref().map(ToString::to_string);
        while out.len() < query.limit {
            let ids = self.ids_after(&set, after.as_deref(), chunk).await?;
            let Some(last) = ids.last().cloned() else { break };
            let exhausted = ids.len() < chunk;
            for key in self.keys_by_id(tenant, &ids).await? {
                let owner_ok = query.owner.as_ref().is_none_or(|o| key.owner == *o);
                let state_ok = query.state.is_none_or(|s| key.state == s);
                let unused_ok = query.unused_since.is_none_or(|since| key.last_used_at.is_none_or(|at| at < since));
                if owner_ok && state_ok && unused_ok && out.len() < query.limit {
                    out.push(key);
                }
            }
            if exhausted {
                break;
            }
            after = Some(last);
        }
        Ok(out)
    }

    async fn put_key(&self, write: KeyWrite<'_>, max_keys: usize) -> Result<(), StoreError> {
        let key = write.key;
        let base = self.base(&key.tenant);
        let mut conn = self.conn.clone();
        if write.expected_version.is_none() {
            self.map_tenant(&key.id, &key.tenant).await?;
        }
        let mut call = self.scripts.put_key.key(format!("{base}keys"));
        call.arg(&base)
            .arg(key.id.as_str())
            .arg(write.expected_version.map(|v| v.to_string()).unwrap_or_default())
            .arg(max_keys.min(i64::MAX as usize) as i64)
            .arg(key.version)
            .arg(join_ids(&key.scope_ids))
            .arg(instant_text(key.updated_at))
            .arg(encode_key(key)?)
            .arg(write.stored_scopes.len())
            .arg(write.stored_scopes.iter().map(ScopeId::as_str).collect::<Vec<_>>());
        audit_args(&mut call, write.audit)?;
        call.arg(self.deadline());
        let reply: Vec<String> = self.admin(call.invoke_async(&mut conn)).await?;
        if reply.first().map(String::as_str) == Some("quota") {
            return Err(StoreError::QuotaReached { tenant: key.tenant.clone(), what: "keys", limit: max_keys });
        }
        outcome(&reply, || format!("key `{}`", key.id), write.expected_version)
    }

    async fn get_scope(&self, tenant: &Tenant, id: &ScopeId) -> Result<Option<Arc<Scope>>, StoreError> {
        Ok(self.scopes_by_id(tenant, &[id.to_string()]).await?.pop())
    }

    async fn get_scopes(&self, tenant: &Tenant, ids: &[ScopeId]) -> Result<Vec<Arc<Scope>>, StoreError> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        self.scopes_by_id(tenant, &ids).await
    }

    async fn list_scopes(
        &self,
        tenant: &Tenant,
        after: Option<&ScopeId>,
        limit: usize,
    ) -> Result<Vec<Arc<Scope>>, StoreError> {
        let set = format!("{}scopes", self.base(tenant));
        let ids = self.ids_after(&set, after.map(ScopeId::as_str), limit).await?;
        self.scopes_by_id(tenant, &ids).await
    }

    async fn put_scope(
        &self,
        scope: &Scope,
        expected_version: Option<u64>,
        reserved_labels: &[String],
        max_scopes: usize,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        let base = self.base(&scope.tenant);
        let mut call = self.scripts.put_scope.key(format!("{base}scopes"));
        call.arg(&base)
            .arg(scope.id.as_str())
            .arg(expected_version.map(|v| v.to_string()).unwrap_or_default())
            .arg(max_scopes.min(i64::MAX as usize) as i64)
            .arg(scope.version)
            .arg(scope.label.as_str())
            .arg(scope.label.folded())
            .arg(encode_scope(scope)?)
            .arg(reserved_labels.len())
            .arg(reserved_labels);
        audit_args(&mut call, audit)?;
        call.arg(self.deadline());
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.admin(call.invoke_async(&mut conn)).await?;
        match reply.first().map(String::as_str) {
            Some("quota") => {
                Err(StoreError::QuotaReached { tenant: scope.tenant.clone(), what: "scopes", limit: max_scopes })
            }
            Some("labeltaken") => Err(StoreError::AlreadyExists(format!(
                "a scope labelled `{}`",
                shorten_for_message(scope.label.as_str())
            ))),
            Some("exists") => Err(StoreError::AlreadyExists(format!("scope `{}`", scope.id))),
            _ => outcome(&reply, || format!("scope `{}`", scope.id), expected_version),
        }
    }

    async fn scope_holders(&self, tenant: &Tenant, id: &ScopeId) -> Result<Vec<Arc<Key>>, StoreError> {
        // In pages, so that no single command grows with the number of holders.
        let set = format!("{}holders:{id}", self.base(tenant));
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut ids = self.ids_after(&set, after.as_deref(), HOLDERS_PAGE).await?;
            keys.extend(self.keys_by_id(tenant, &ids).await?);
            if ids.len() < HOLDERS_PAGE {
                return Ok(keys);
            }
            after = ids.pop();
        }
    }

    async fn detach_scope(&self, detach: ScopeDetach<'_>) -> Result<u64, StoreError> {
        let base = self.base(detach.tenant);
        let mut call = self.scripts.detach_scope.key(format!("{base}scopes"));
        call.arg(&base)
            .arg(detach.id.as_str())
            .arg(instant_text(detach.now))
            .arg(detach.access_version.map(|v| v.to_string()).unwrap_or_default())
            .arg(detach.holders.len());
        for (key_id, version) in detach.holders {
            call.arg(key_id.as_str()).arg(*version);
        }
        call.arg(self.deadline());
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.admin(call.invoke_async(&mut conn)).await?;
        match reply.first().map(String::as_str) {
            Some("ok") => {
                reply.get(1).and_then(|v| v.parse().ok()).ok_or_else(|| corrupt("script reply", "access version"))
            }
            Some("users") => Err(StoreError::UsersChanged(detach.id.clone())),
            _ => Err(outcome(&reply, || format!("scope `{}`", detach.id), None)
                .err()
                .unwrap_or_else(|| corrupt("script reply", "no access version"))),
        }
    }

    async fn delete_scope(&self, delete: ScopeDelete<'_>) -> Result<(), StoreError> {
        let base = self.base(delete.tenant);
        let mut call = self.scripts.delete_scope.key(format!("{base}scopes"));
        call.arg(&base)
            .arg(delete.id.as_str())
            .arg(delete.expected_version.map(|v| v.to_string()).unwrap_or_default())
            .arg(instant_text(delete.now))
            .arg(delete.holders.len());
        for (key_id, version) in delete.holders {
            call.arg(key_id.as_str()).arg(*version);
        }
        audit_args(&mut call, delete.audit)?;
        call.arg(self.deadline());
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.admin(call.invoke_async(&mut conn)).await?;
        match reply.first().map(String::as_str) {
            Some("users") => Err(StoreError::UsersChanged(delete.id.clone())),
            _ => outcome(&reply, || format!("scope `{}`", delete.id), delete.expected_version),
        }
    }

    async fn claim_bootstrap(&self, key: &Key, audit: AuditWrite<'_>) -> Result<Option<KeyId>, StoreError> {
        let base = self.base(&key.tenant);
        let mut conn = self.conn.clone();
        self.map_tenant(&key.id, &key.tenant).await?;
        let mut call = self.scripts.claim_bootstrap.key(format!("{base}keys"));
        call.arg(&base)
            .arg(key.id.as_str())
            .arg(key.version)
            .arg(join_ids(&key.scope_ids))
            .arg(instant_text(key.updated_at))
            .arg(encode_key(key)?);
        audit_args(&mut call, audit)?;
        call.arg(self.deadline());
        let reply: Vec<String> = self.admin(call.invoke_async(&mut conn)).await?;
        match reply.first().map(String::as_str) {
            Some("existing") => {
                let id =
                    reply.get(1).and_then(|s| s.parse().ok()).ok_or_else(|| corrupt("bootstrap marker", "key id"))?;
                Ok(Some(id))
            }
            _ => outcome(&reply, || format!("key `{}`", key.id), None).map(|()| None),
        }
    }

    async fn release_bootstrap(&self, key: &Key, audit: AuditWrite<'_>) -> Result<bool, StoreError> {
        let base = self.base(&key.tenant);
        let mut conn = self.conn.clone();
        let mut call = self.scripts.release_bootstrap.key(format!("{base}keys"));
        call.arg(&base).arg(key.id.as_str()).arg(key.version);
        audit_args(&mut call, audit)?;
        call.arg(self.deadline());
        let reply: Vec<String> = self.admin(call.invoke_async(&mut conn)).await?;
        match reply.first().map(String::as_str) {
            Some("other" | "changed") => return Ok(false),
            _ => outcome(&reply, || format!("key `{}`", key.id), None)?,
        }
        // The key -> tenant mapping lives in another slot, so it goes after the script. Left
        // behind (if this fails) it names no key, as after any create that did not last, and a
        // check treats it as an unknown key.
        self.tenants.invalidate(&key.id);
        let removed: Result<(), StoreError> = self.admin(conn.del(self.tenant_of(&key.id))).await;
        if let Err(error) = removed {
            tracing::debug!(key_id = %key.id, %error, "the released key's tenant mapping stays");
        }
        Ok(true)
    }

    async fn record_usage(&self, batch: &[UsageDelta], retention_days: u32) -> Result<(), StoreError> {
        // One script per tenant, in the tenant's slot; the first failure stops the rest.
        let mut tenants: Vec<&Tenant> = Vec::new();
        for delta in batch {
            if !tenants.contains(&&delta.tenant) {
                tenants.push(&delta.tenant);
            }
        }
        for tenant in tenants {
            let base = self.base(tenant);
            let deltas: Vec<&UsageDelta> = batch.iter().filter(|d| d.tenant == *tenant).collect();
            let mut call = self.scripts.record_usage.key(format!("{base}used"));
            call.arg(&base).arg(deltas.len());
            for d in deltas {
                call.arg(d.key_id.as_str())
                    .arg(d.day.to_string())
                    .arg(d.allowed)
                    .arg(d.denied)
                    .arg(local_micros(d.last_used_at))
                    .arg(usage_expiry(d.day, retention_days));
            }
            call.arg(self.deadline());
            let mut conn = self.conn.clone();
            let reply: Vec<String> = self.admin(call.invoke_async(&mut conn)).await?;
            outcome(&reply, || format!("usage of tenant `{tenant}`"), None)?;
        }
        Ok(())
    }

    async fn key_usage(
        &self,
        tenant: &Tenant,
        id: &KeyId,
        first: Day,
        last: Day,
    ) -> Result<Vec<DailyUsage>, StoreError> {
        let base = self.base(tenant);
        let days: Vec<Day> = first.through(last).collect();
        let names: Vec<String> = days.iter().map(|day| format!("{base}usage:{id}:{day}")).collect();
        let rows = self.hashes(&names, &["a", "d"]).await?;
        let mut out = Vec::new();
        for (day, row) in days.into_iter().zip(rows) {
            let count = |v: Option<&Option<String>>| -> Result<u64, StoreError> {
                v.and_then(Option::as_deref).map_or(Ok(0), |t| t.parse().map_err(|_| corrupt("usage count", t)))
            };
            let (allowed, denied) = (count(row.first())?, count(row.get(1))?);
            if allowed > 0 || denied > 0 {
                out.push(DailyUsage { day, allowed, denied });
            }
        }
        Ok(out)
    }

    /// Reads the stream newest first from the query's bounds, in chunks, filtering in Rust;
    /// reads at most [`AUDIT_SCAN_MAX`] entries per call.
    async fn list_audit(&self, tenant: &Tenant, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let stream = format!("{}audit", self.base(tenant));
        let Some(mut newest) = query.newest() else { return Ok(AuditPage::default()) };
        let oldest = query.oldest();
        let chunk = (query.limit + 1).clamp(16, 1000);
        let mut events: Vec<AuditEvent> = Vec::new();
        let mut scanned = 0;
        while newest >= oldest {
            let count = chunk.min(AUDIT_SCAN_MAX - scanned);
            let mut conn = self.conn.clone();
            let rows: Vec<(String, Vec<String>)> = self
                .admin(
                    redis::cmd("XREVRANGE")
                        .arg(&stream)
                        .arg(newest.to_string())
                        .arg(oldest.to_string())
                        .arg("COUNT")
                        .arg(count)
                        .query_async(&mut conn),
                )
                .await?;
            scanned += rows.len();
            let mut last = None;
            for (id, fields) in &rows {
                let event = decode_event(tenant, id, fields)?;
                last = Some(event.id);
                if query.matches(&event) {
                    if events.len() == query.limit {
                        let next = events.last().map(|e| e.id);
                        return Ok(AuditPage { events, next });
                    }
                    events.push(event);
                }
            }
            let Some(last) = last.filter(|_| rows.len() == count) else { break };
            if scanned >= AUDIT_SCAN_MAX {
                return Ok(AuditPage { events, next: Some(last) });
            }
            let Some(prev) = last.prev() else { break };
            newest = prev;
        }
        Ok(AuditPage { events, next: None })
    }

    async fn access_version(&self, tenant: &Tenant) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let name = format!("{}access", self.base(tenant));
        let found: Option<u64> = self.admin(redis::cmd("GET").arg(name).query_async(&mut conn)).await?;
        Ok(found.unwrap_or(0))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = Self::bounded(self.check_timeout, redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(())
    }

    async fn get_tenant_policy(&self, tenant: &Tenant) -> Result<Option<TenantPolicy>, StoreError> {
        let name = format!("{}policy", self.base(tenant));
        let row = self.hashes(&[name], &["v", "body"]).await?.pop().unwrap_or_default();
        let what = format!("the policy of tenant `{tenant}`");
        let [Some(v), Some(body)] = row.as_slice() else { return Ok(None) };
        let body: PolicyBody = serde_json::from_str(body).map_err(|e| corrupt(&what, e))?;
        Ok(Some(TenantPolicy {
            tenant: tenant.clone(),
            max_key_lifetime: body.max_key_lifetime_ms.map(Duration::from_millis),
            version: v.parse().map_err(|_| corrupt(&what, "version"))?,
            updated_at: system_time(body.updated_at),
        }))
    }

    async fn put_tenant_policy(
        &self,
        policy: &TenantPolicy,
        expected_version: u64,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        let base = self.base(&policy.tenant);
        let body = PolicyBody {
            max_key_lifetime_ms: policy.max_key_lifetime.map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64),
            updated_at: instant(policy.updated_at),
        };
        let body = serde_json::to_string(&body).map_err(|e| corrupt("policy body", e))?;
        let mut conn = self.conn.clone();
        let mut call = self.scripts.put_policy.key(format!("{base}policy"));
        call.arg(&base).arg(expected_version).arg(policy.version).arg(body);
        audit_args(&mut call, audit)?;
        call.arg(self.deadline());
        let reply: Vec<String> = self.admin(call.invoke_async(&mut conn)).await?;
        outcome(&reply, || format!("the policy of tenant `{}`", policy.tenant), Some(expected_version))
    }

    async fn get_principal(&self, tenant: &Tenant, subject: &Subject) -> Result<Option<Arc<Principal>>, StoreError> {
        Ok(self.principals_by_subject(tenant, &[subject.to_string()]).await?.pop())
    }

    async fn list_principals(
        &self,
        tenant: &Tenant,
        after: Option<&Subject>,
        limit: usize,
    ) -> Result<Vec<Arc<Principal>>, StoreError> {
        let set = format!("{}principals", self.base(tenant));
        let subjects = self.ids_after(&set, after.map(Subject::as_str), limit).await?;
        self.principals_by_subject(tenant, &subjects).await
    }

    async fn put_principal(
        &self,
        principal: &Principal,
        expected_version: Option<u64>,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        let base = self.base(&principal.tenant);
        let body = PrincipalBody {
            enabled: principal.enabled,
            created_at: instant(principal.created_at),
            updated_at: instant(principal.updated_at),
        };
        let body = serde_json::to_string(&body).map_err(|e| corrupt("principal body", e))?;
        let mut call = self.scripts.put_principal.key(format!("{base}principals"));
        call.arg(&base)
            .arg(principal.subject.as_str())
            .arg(expected_version.map(|v| v.to_string()).unwrap_or_default())
            .arg(principal.version)
            .arg(join_lines(&principal.roles))
            .arg(body);
        audit_args(&mut call, audit)?;
        call.arg(self.deadline());
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.admin(call.invoke_async(&mut conn)).await?;
        outcome(&reply, || principal_name(principal.subject.as_str()), expected_version)
    }

    async fn delete_principal(
        &self,
        tenant: &Tenant,
        subject: &Subject,
        expected_version: Option<u64>,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        let base = self.base(tenant);
        let mut call = self.scripts.delete_principal.key(format!("{base}principals"));
        call.arg(&base).arg(subject.as_str()).arg(expected_version.map(|v| v.to_string()).unwrap_or_default());
        audit_args(&mut call, audit)?;
        call.arg(self.deadline());
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.admin(call.invoke_async(&mut conn)).await?;
        outcome(&reply, || principal_name(subject.as_str()), expected_version)
    }

    async fn get_members(&self, tenant: &Tenant, scope: &ScopeId) -> Result<Members, StoreError> {
        let key = format!("{}members:{scope}", self.base(tenant));
        let rows = self.hashes(&[key], &["v", "subjects", "roles"]).await?;
        let Some([Some(v), subjects, roles]) = rows.first().map(Vec::as_slice) else { return Ok(Members::default()) };
        let what = format!("members of scope `{scope}`");
        Ok(Members {
            subjects: split_lines(subjects.as_deref().unwrap_or(""), &what)?,
            roles: split_lines(roles.as_deref().unwrap_or(""), &what)?,
            version: v.parse().map_err(|_| corrupt(&what, "version"))?,
        })
    }

    async fn set_members(
        &self,
        tenant: &Tenant,
        scope: &ScopeId,
        members: &Members,
        expected_version: u64,
        stored: bool,
        audit: AuditWrite<'_>,
    ) -> Result<(), StoreError> {
        let base = self.base(tenant);
        let mut call = self.scripts.set_members.key(format!("{base}members:{scope}"));
        call.arg(&base)
            .arg(scope.as_str())
            .arg(expected_version)
            .arg(members.version)
            .arg(if stored { "1" } else { "0" })
            .arg(members.subjects.len())
            .arg(members.subjects.iter().map(Subject::as_str).collect::<Vec<_>>())
            .arg(members.roles.len())
            .arg(members.roles.iter().map(Role::as_str).collect::<Vec<_>>());
        audit_args(&mut call, audit)?;
        call.arg(self.deadline());
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.admin(call.invoke_async(&mut conn)).await?;
        match reply.first().map(String::as_str) {
            Some("notfound") => Err(StoreError::NotFound(format!("scope `{scope}`"))),
            _ => outcome(&reply, || format!("members of scope `{scope}`"), Some(expected_version)),
        }
    }

    async fn principal_grants(
        &self,
        tenant: &Tenant,
        subject: &Subject,
        roles: &[Role],
    ) -> Result<Arc<PrincipalGrants>, StoreError> {
        let base = self.base(tenant);
        let mut call = self.scripts.principal_grants.key(format!("{base}principal:{subject}"));
        call.arg(&base).arg(subject.as_str()).arg(roles.iter().map(Role::as_str).collect::<Vec<_>>());
        let mut conn = self.conn.clone();
        let reply: Vec<Option<String>> = Self::bounded(self.check_timeout, call.invoke_async(&mut conn)).await?;
        let what = principal_name(subject.as_str());
        let [state, v, held, body, count, rest @ ..] = reply.as_slice() else {
            return Err(corrupt(&what, "grants reply"));
        };
        let (state, v, held, body, count) = (text(state), text(v), text(held), text(body), text(count));
        let owner = match state {
            "reg" => Owner::Registered(Arc::new(decode_principal(tenant, subject.as_str(), v, held, body)?)),
            "gone" => Owner::Gone,
            _ => Owner::Unregistered,
        };
        let count: usize = count.parse().map_err(|_| corrupt(&what, "grants reply"))?;
        let (ids, found) = rest.split_at(count.min(rest.len()));
        let mut scope_ids = ids
            .iter()
            .map(|id| text(id).parse().map_err(|_| corrupt(&what, "scope id")))
            .collect::<Result<Vec<ScopeId>, _>>()?;
        scope_ids.sort();
        let scopes = decode_scope_records(tenant, found)?;
        Ok(Arc::new(PrincipalGrants { owner, scope_ids, scopes }))
    }
}

impl RedisStore {
    /// Registered principals of a tenant by subject (missing ones left out), in one round trip.
    async fn principals_by_subject(
        &self,
        tenant: &Tenant,
        subjects: &[String],
    ) -> Result<Vec<Arc<Principal>>, StoreError> {
        let base = self.base(tenant);
        let names: Vec<String> = subjects.iter().map(|s| format!("{base}principal:{s}")).collect();
        let rows = self.hashes(&names, &["v", "roles", "body"]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (subject, row) in subjects.iter().zip(rows) {
            if let [Some(v), roles, Some(body)] = row.as_slice() {
                out.push(Arc::new(decode_principal(tenant, subject, v, roles.as_deref().unwrap_or(""), body)?));
            }
        }
        Ok(out)
    }
}

impl RedisStore {
    /// The channel every mutation script publishes its changes on.
    pub fn changes_channel(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    /// Subscribes to the change feed, then follows it in a task for as long as the task
    /// lives: every change goes to `sink`. Each time the subscription is established (now, and
    /// after every loss) `sink` is reset before any message is taken, because changes may have
    /// been missed meanwhile. While the feed is down the cache keeps answering within its TTL
    /// (when Redis itself is down nothing can change). Reconnects with a capped backoff. Fails
    /// only if the first subscription fails.
    pub async fn follow_changes(&self, sink: Arc<dyn ChangeSink>) -> Result<tokio::task::JoinHandle<()>, StoreError> {
        let channel = self.changes_channel();
        let nodes = self.pubsub_nodes.clone();
        let limit = self.admin_timeout;
        let first = nodes.first().ok_or_else(|| StoreError::Unavailable("redis: no node to subscribe on".into()))?;
        let mut subscribed = Some(Self::subscribe(first, &channel, limit).await?);
        Ok(tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            let mut node = 0usize;
            loop {
                let attempt = match subscribed.take() {
                    Some(pubsub) => Ok(pubsub),
                    None => {
                        // Try the seed nodes in turn, so one dead cluster node cannot keep
                        // the feed down.
                        node = node.wrapping_add(1);
                        Self::subscribe(&nodes[node % nodes.len()], &channel, limit).await
                    }
                };
                match attempt {
                    Ok(mut pubsub) => {
                        backoff = Duration::from_millis(50);
                        sink.reset();
                        tracing::info!(%channel, "following the change feed");
                        let mut messages = pubsub.on_message();
                        while let Some(message) = tokio_stream::StreamExt::next(&mut messages).await {
                            let Ok(text) = message.get_payload::<String>() else { continue };
                            if let Some(change) = Change::decode(&text) {
                                sink.changed(&change);
                            }
                        }
                        tracing::warn!(%channel, "lost the change feed; resubscribing (the cache is cleared then)");
                    }
                    Err(error) => {
                        tracing::warn!(%channel, %error, "cannot follow the change feed; retrying");
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }))
    }

    async fn subscribe(
        client: &redis::Client,
        channel: &str,
        limit: Duration,
    ) -> Result<redis::aio::PubSub, StoreError> {
        let call = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok(pubsub)
        };
        Self::bounded(limit, call).await
    }
}
