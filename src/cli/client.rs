//! gRPC clients for the CLI, with the admin token sent as `authorization: Bearer`.

use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::args::TlsArgs;

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

/// The TLS settings of a client: the given CA or the system's, and a client certificate.
fn client_tls(args: &TlsArgs) -> Result<ClientTlsConfig, CliError> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| CliError::Usage(format!("{flag}: cannot read `{}`: {e}", path.display())))
    };
    let tls = ClientTlsConfig::new();
    let mut tls = match &args.tls_ca_file {
        Some(path) => tls.ca_certificate(Certificate::from_pem(read("--tls-ca-file", path)?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
        tls = tls.identity(Identity::from_pem(read("--tls-cert-file", cert)?, read("--tls-key-file", key)?));
    }
    Ok(tls)
}

/// A connection to keyscope.
pub struct Connection {
    channel: Channel,
    bearer: Bearer,
}

impl Connection {
    /// Connects to `server` (over TLS when it is `https://`), sending `token` (if any) on admin
    /// calls.
    pub async fn open(server: &str, tls: &TlsArgs, token: Option<&str>) -> Result<Self, CliError> {
        let connect_error = |reason: String| CliError::Connect { server: server.to_owned(), reason };
        let mut endpoint = Endpoint::from_shared(server.to_owned()).map_err(|e| connect_error(e.to_string()))?;
        if server.starts_with("https://") {
            endpoint = endpoint.tls_config(client_tls(tls)?).map_err(|e| connect_error(source_chain(&e)))?;
        } else if tls.tls_ca_file.is_some() || tls.tls_cert_file.is_some() {
            return Err(CliError::Usage("--tls-ca-file and --tls-cert-file need an https:// --server".into()));
        }
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

    /// The PrincipalAdmin client.
    pub fn principals(
        &self,
    ) -> crate::grpc::pb::principal_admin_client::PrincipalAdminClient<InterceptedService<Channel, Bearer>> {
        crate::grpc::pb::principal_admin_client::PrincipalAdminClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
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
