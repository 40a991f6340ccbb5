//! Admin authentication at the edge: the interceptor takes the bearer token out of the
//! metadata (so nothing downstream can log it) and hands it to the handlers, which authorize
//! it for their reserved module with [`admin`], which also takes the request id.

use std::fmt;

use tonic::{Request, Status, metadata::MetadataMap};

use crate::{
    domain::{Action, Module},
    service::{Caller, Keyscope},
};

/// The bearer token of an admin call, moved from the metadata into the request extensions.
#[derive(Clone)]
pub struct AdminToken(String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

fn take_bearer(metadata: &mut MetadataMap) -> Option<String> {
    let value = metadata.remove("authorization")?;
    let text = value.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// Moves `authorization: Bearer <token>` into an [`AdminToken`] extension. A missing or
/// non-bearer credential is left for the handler to refuse as `UNAUTHENTICATED`.
pub fn bearer_interceptor(mut request: Request<()>) -> Result<Request<()>, Status> {
    if let Some(token) = take_bearer(request.metadata_mut()) {
        request.extensions_mut().insert(AdminToken(token));
    }
    Ok(request)
}

/// The metadata that carries a client's request id, recorded in the audit events of its
/// changes.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Authorizes an admin call: `action` on the reserved `module`, in `tenant` (empty: the
/// calling key's own), from the gRPC peer's address (for keys with source networks). The
/// caller carries the request's `x-request-id` when it is sane.
pub(super) async fn admin<T>(
    core: &Keyscope,
    request: &Request<T>,
    tenant: &str,
    module: Module,
    action: Action,
) -> Result<Caller, Status> {
    let token = request.extensions().get::<AdminToken>().map(|t| t.0.as_str());
    let sent = request.metadata().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok());
    let peer = request.remote_addr().map(|a| a.ip());
    Ok(core.authorize_from(token, peer, tenant, &module, action).await?.with_request_id(sent))
}
