//! The one place where errors become gRPC statuses. No catch-all arm: a new error variant
//! does not compile until it is mapped here. [`oversize_is_exhausted`] fixes the one status the
//! transport makes itself (an over-size request).

use tonic::{Code, Status, codegen::http};

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
            ServiceError::RateLimited(..) => Code::ResourceExhausted,
            ServiceError::Store(store) => match store {
                StoreError::VersionConflict { .. } | StoreError::UsersChanged(_) | StoreError::AccessChanged => {
                    Code::Aborted
                }
                StoreError::NotFound(_) => Code::NotFound,
                StoreError::ScopeMissing(_) => Code::InvalidArgument,
                StoreError::AlreadyExists(_) => Code::AlreadyExists,
                StoreError::QuotaReached { .. } => Code::ResourceExhausted,
                StoreError::Unavailable(_) => Code::Unavailable,
                StoreError::Corrupt(_) | StoreError::Unsafe(_) => Code::Internal,
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

/// The code of a response whose request was over the decoding limit
/// (`limits::MESSAGE_MAX_BYTES`): `RESOURCE_EXHAUSTED`, the code gRPC and the API give an
/// exceeded message size, where tonic's decoder says `OUT_OF_RANGE`. Only that decoder produces
/// `OUT_OF_RANGE` here: no keyscope error maps to it. Applied to every response by
/// [`super::Edge`].
pub(super) fn oversize_is_exhausted(headers: &mut http::HeaderMap) {
    if headers.get("grpc-status").is_some_and(|code| code == "11") {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
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
