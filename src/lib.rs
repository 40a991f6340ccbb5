//! keyscope: an authorization service for API keys.
//!
//! It issues API keys, holds scopes (which modules a key may create, read, update or delete),
//! and answers *may this credential do ACTION on MODULE?* over gRPC.
//!
//! # Layout
//! - [`domain`]: the pure, synchronous core: names, scopes, the decision, the token format,
//!   the audit log's records.
//! - [`store`]: the `Store` trait and its backends: the embedded memory store and Redis
//!   (standalone or cluster), with the change feed and each tenant's audit log.
//! - [`cache`]: each replica's moka cache in front of a shared store, and its invalidation.
//! - [`service`]: the use cases: checks and admin calls, with admin authorization.
//! - [`grpc`]: one thin file per gRPC service; `status.rs` maps errors to gRPC codes.
//! - [`server`]: wires the store, cache, services, health (readiness follows the store) and
//!   reflection, and serves until shutdown.
//! - [`config`]: settings from defaults, an optional YAML file and `KEYSCOPE__` variables.
//! - [`telemetry`]: the tracing subscriber.
//! - [`cli`]: the `keyscope` command line (client side).

pub mod cache;
pub mod cli;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
