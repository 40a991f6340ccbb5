//! The gRPC edge: one thin file per service. Each handler authorizes (admin calls),
//! validates and converts the request (`convert`), calls the service, and converts back.
//! Errors become `tonic::Status` in one place (`status`).

mod audit;
mod auth;
mod checker;
pub mod convert;
mod ext_authz;
mod key_admin;
mod observe;
mod principal_admin;
mod scope_admin;
mod status;

pub use audit::AuditLogService;
pub use auth::{AdminToken, REQUEST_ID_HEADER, bearer_interceptor};
pub use checker::CheckerService;
pub use ext_authz::{ExtAuthzService, ExtAuthzSettings, IdentityHeaders};
pub use key_admin::KeyAdminService;
pub use observe::{AdminMethods, Edge, call_span};
pub use principal_admin::PrincipalAdminService;
pub use scope_admin::ScopeAdminService;

/// The generated protobuf messages, clients and servers of `keyscope.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("keyscope.v1");

    /// The encoded descriptors of `keyscope.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/keyscope_descriptor.bin"));
}
