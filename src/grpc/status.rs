//! The one place where errors become gRPC statuses. No catch-all arm: a new error variant
//! does not compile until it is mapped here. [`OversizeIsExhausted`] fixes the one status the
//! transport makes itself (an over-size request).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{
    Code, Status,
    codegen::{Service, http},
    server::NamedService,
};

use crate::{domain::InputError, service::ServiceError, store::StoreError};

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        let message = error.to_string();
        let code = match &error {
            ServiceError::Input(InputError::Invalid { .. }) => Code::InvalidArgument,
            ServiceError::Input(InputError::TooMany { .. }) => Code::ResourceExhausted,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServiceError::Aborted(_) => Code::Aborted,
            ServiceError::Random(_) => Code::Internal,
            ServiceError::Store(store) => match store {
                StoreError::VersionConflict { .. } | StoreError::UsersChanged(_) => Code::Aborted,
                StoreError::NotFound(_) => Code::NotFound,
                StoreError::ScopeMissing(_) => Code::InvalidArgument,
                StoreError::AlreadyExists(_) => Code::AlreadyExists,
                StoreError::QuotaReached { .. } => Code::ResourceExhausted,
                StoreError::Unavailable(_) => Code::Unavailable,
                StoreError::Corrupt(_) => Code::Internal,
            },
        };
        // The store's own words (which may name Redis users, keys or hosts) go to the log only;
        // callers, who need not be authenticated, learn what happened and nothing more.
        let message = match code {
            Code::Unavailable => {
                tracing::warn!(error = %message, "store unavailable");
                "the store is unavailable: no decision or change could be made; nothing was written".to_owned()
            }
            Code::Internal => {
                tracing::error!(error = %message, "internal error");
                "internal error; see the keyscope log".to_owned()
            }
            _ => message,
        };
        Status::new(code, message)
    }
}

impl From<InputError> for Status {
    fn from(error: InputError) -> Status {
        ServiceError::from(error).into()
    }
}

/// Answers a request over the decoding limit (`limits::MESSAGE_MAX_BYTES`) with `RESOURCE_EXHAUSTED`, the code
/// gRPC and SPEC section 6 give an exceeded message size; tonic's decoder says `OUT_OF_RANGE`.
/// Only that decoder produces `OUT_OF_RANGE` here: no keyscope error maps to it (`grpc::status`).
#[derive(Debug, Clone)]
pub struct OversizeIsExhausted<S>(pub S);

impl<S: NamedService> NamedService for OversizeIsExhausted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for OversizeIsExhausted<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = self.0.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            let status = response.headers_mut();
            if status.get("grpc-status").is_some_and(|code| code == "11") {
                status.insert("grpc-status", http::HeaderValue::from_static("8"));
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_errors_name_the_field_and_pick_the_code() {
        let s = Status::from(InputError::invalid("rules.read[2]", "bad"));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "rules.read[2]: bad");
        let s = Status::from(InputError::TooMany { field: "items".into(), limit: 128, got: 200 });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("items") && s.message().contains("128"));
    }

    #[test]
    fn stale_versions_abort_and_store_outages_are_unavailable() {
        let conflict = StoreError::VersionConflict { what: "key `k`".into(), expected: 1, found: 2 };
        assert_eq!(Status::from(ServiceError::from(conflict)).code(), Code::Aborted);
        let down = StoreError::Unavailable("connection refused".into());
        assert_eq!(Status::from(ServiceError::from(down)).code(), Code::Unavailable);
    }
}
