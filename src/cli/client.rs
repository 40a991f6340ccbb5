//! gRPC clients for the CLI, with the admin token sent as `authorization: Bearer`.

use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use crate::grpc::pb::{
    audit_log_client::AuditLogClient, checker_client::CheckerClient, key_admin_client::KeyAdminClient,
    scope_admin_client::ScopeAdminClient,
};

/// Why the CLI could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// keyscope could not be reached.
    #[error("cannot reach keyscope at {server}: {reason}")]
    Connect {
        /// The address tried.
        server: String,
        /// What failed.
        reason: String,
    },
    /// keyscope answered with an error status.
    #[error("{code}: {message}", code = code_name(.0.code()), message = .0.message())]
    Status(#[from] Status),
    /// The command's arguments are not usable.
    #[error("{0}")]
    Usage(String),
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Adds the admin token to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection to keyscope.
pub struct Connection {
    channel: Channel,
    bearer: Bearer,
}

impl Connection {
    /// Connects to `server`, sending `token` (if any) on admin calls.
    pub async fn open(server: &str, token: Option<&str>) -> Result<Self, CliError> {
        let connect_error = |reason: String| CliError::Connect { server: server.to_owned(), reason };
        let endpoint = Endpoint::from_shared(server.to_owned()).map_err(|e| connect_error(e.to_string()))?;
        let channel = endpoint
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| connect_error(source_chain(&e)))?;
        let bearer = match token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| CliError::Usage("--token: not a usable token (unprintable characters)".into()))?,
            ),
            None => None,
        };
        Ok(Connection { channel, bearer: Bearer(bearer) })
    }

    /// The Checker client.
    pub fn checker(&self) -> CheckerClient<Channel> {
        CheckerClient::new(self.channel.clone())
    }

    /// The KeyAdmin client.
    pub fn keys(&self) -> KeyAdminClient<InterceptedService<Channel, Bearer>> {
        KeyAdminClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    /// The AuditLog client.
    pub fn audit(&self) -> AuditLogClient<InterceptedService<Channel, Bearer>> {
        AuditLogClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    /// The ScopeAdmin client.
    pub fn scopes(&self) -> ScopeAdminClient<InterceptedService<Channel, Bearer>> {
        ScopeAdminClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
