//! keyscope: an authorization service for API keys.
//!
//! It issues API keys, holds scopes (which modules a key may create, read, update or delete),
//! and answers *may this credential do ACTION on MODULE?* over gRPC.
//!
//! # Layout
//! - [`domain`]: the pure, synchronous core: names, scopes, the decision, the token format,
//!   the audit log's records, principals and scope member bindings.
//! - [`store`]: the `Store` trait and its backends: the embedded memory store and Redis
//!   (standalone or cluster), with the change feed; keys, scopes, key usage, principals, scope
//!   member bindings and each tenant's audit log.
//! - [`cache`]: each replica's moka cache in front of a shared store, and its invalidation.
//! - [`service`]: the use cases: checks (with the owner ceiling, and bearer principals) and
//!   admin calls, with admin authorization; key usage counted in memory and flushed to the store.
//! - [`grpc`]: one thin file per gRPC service; `status.rs` maps errors to gRPC codes.
//! - [`server`]: wires the store, cache, services, health (readiness follows the store),
//!   reflection and the usage flusher, and serves until shutdown (then flushes usage).
//! - [`config`]: settings from defaults, an optional YAML file and `KEYSCOPE__` variables.
//! - [`telemetry`]: logs, OpenTelemetry traces (OTLP export, `traceparent`), Prometheus
//!   metrics and the metered store.
//! - [`http`]: the HTTP port: `/metrics`, `/livez`, `/readyz`.
//! - [`cli`]: the `keyscope` command line (client side).

#![forbid(unsafe_code)]

pub mod cache;
pub mod cli;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod http;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;
