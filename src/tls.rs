//! TLS for the gRPC port: the server's certificate, optional client certificates (mutual
//! TLS), and reloading both when their files change (cert-manager renews them in place); and
//! the PEM reading shared with the Redis and OTLP clients. One crypto provider (ring) is used
//! everywhere. Errors name the setting and the file, never what the file holds.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::Deserialize;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;

use crate::telemetry::Metrics;

/// Whether the gRPC server asks clients for a certificate (`server.tls.client_auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A client may present a certificate; one that does must chain to the client CA.
    Optional,
    /// Every client must present a certificate that chains to the client CA.
    Required,
}

/// TLS material that cannot be used: the setting, the file and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TlsError {
    /// The setting naming the file, e.g. `server.tls.cert_file`.
    pub key: &'static str,
    /// What is wrong (never the file's contents).
    pub reason: String,
}

impl TlsError {
    fn new(key: &'static str, reason: impl Into<String>) -> TlsError {
        TlsError { key, reason: reason.into() }
    }
}

/// The crypto provider of every TLS connection keyscope makes or accepts.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default provider, for the libraries that build their own rustls
/// configuration (the Redis client). Calling it again is harmless.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads a PEM file named by setting `key`.
pub fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(key, format!("cannot read `{}`: {e}", path.display())))
}

/// The certificates in a PEM file's contents: at least one.
pub fn certificates(key: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(key, format!("`{}` is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::new(key, format!("`{}` holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

/// The private key in a PEM file's contents (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(key: &'static str, path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The parser's error could quote the file; say only where the key was looked for.
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|_| TlsError::new(key, format!("`{}` holds no PEM private key", path.display())))
}

/// Where the gRPC server's TLS material lives (`server.tls.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// The certificate's private key (PEM).
    pub key_file: PathBuf,
    /// CAs that sign client certificates (PEM); required unless `client_auth` is `none`.
    pub client_ca_file: Option<PathBuf>,
    /// Whether clients must present a certificate.
    pub client_auth: ClientAuth,
    /// How often the files are read again; a changed, valid set is used for new connections.
    pub reload_interval: Duration,
}

/// The files' contents as last read, and the server configuration made from them.
#[derive(Debug, Clone)]
pub struct LoadedTls {
    files: [Vec<u8>; 3],
    config: Arc<ServerConfig>,
}

impl ServerTlsFiles {
    /// Reads the files and builds the server's TLS configuration (HTTP/2 only).
    pub fn load(&self) -> Result<LoadedTls, TlsError> {
        self.built(self.load_bytes()?)
    }

    /// The configuration made from the files' contents `files` (certificate, key, client CA).
    fn built(&self, files: [Vec<u8>; 3]) -> Result<LoadedTls, TlsError> {
        let [cert_pem, key_pem, ca_pem] = &files;
        let config = self.configure(cert_pem, key_pem, ca_pem)?;
        Ok(LoadedTls { files, config })
    }

    fn configure(&self, cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = certificates("server.tls.cert_file", &self.cert_file, cert_pem)?;
        let key = private_key("server.tls.key_file", &self.key_file, key_pem)?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new("server.tls", e.to_string()))?;
        let builder = match (self.client_auth, &self.client_ca_file) {
            (ClientAuth::None, _) => builder.with_no_client_auth(),
            (_, None) => {
                return Err(TlsError::new("server.tls.client_ca_file", "is required when client_auth is not `none`"));
            }
            (mode, Some(path)) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates("server.tls.client_ca_file", path, ca_pem)? {
                    roots.add(cert).map_err(|e| {
                        TlsError::new("server.tls.client_ca_file", format!("`{}`: {e}", path.display()))
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if mode == ClientAuth::Optional { verifier.allow_unauthenticated() } else { verifier };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::new("server.tls.client_ca_file", format!("`{}`: {e}", path.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
            rustls::Error::InvalidCertificate(_) => TlsError::new(
                "server.tls.cert_file",
                format!("`{}` is not a usable certificate (X.509 v3 needed): {e}", self.cert_file.display()),
            ),
            _ => {
                TlsError::new("server.tls.key_file", format!("does not match server.tls.cert_file or is unusable: {e}"))
            }
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// Reads the files again: `Ok(None)` when they have not changed since `current`.
    pub fn reload(&self, current: &LoadedTls) -> Result<Option<LoadedTls>, TlsError> {
        let fresh = self.load_bytes()?;
        if fresh == current.files {
            return Ok(None);
        }
        self.built(fresh).map(Some)
    }

    fn load_bytes(&self) -> Result<[Vec<u8>; 3], TlsError> {
        Ok([
            read_pem("server.tls.cert_file", &self.cert_file)?,
            read_pem("server.tls.key_file", &self.key_file)?,
            match &self.client_ca_file {
                Some(path) => read_pem("server.tls.client_ca_file", path)?,
                None => Vec::new(),
            },
        ])
    }
}

/// The longest a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes under way at once; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 1024;

/// Connections that completed their TLS handshake, for the gRPC server.
pub type TlsIncoming = ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>;

/// Accepts connections on `listener` and completes their handshakes side by side (a slow or
/// failing client holds up no one), each bounded by [`HANDSHAKE_TIMEOUT`]. The files are read
/// again every `reload_interval`; a changed set that is valid serves the connections accepted
/// after it, and one that is not is logged and ignored. The task stops when the server drops
/// the stream or the handle is aborted (which closes the listener).
pub fn incoming(
    listener: TcpListener,
    files: ServerTlsFiles,
    loaded: LoadedTls,
    metrics: Arc<Metrics>,
) -> (TlsIncoming, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        let mut loaded = loaded;
        // A file left broken is reported once, not at every look.
        let mut last_error: Option<TlsError> = None;
        let start = tokio::time::Instant::now() + files.reload_interval;
        let mut reload = tokio::time::interval_at(start, files.reload_interval);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Checks are small request/response pairs: no Nagle delay.
                        let _ = stream.set_nodelay(true);
                        let Ok(permit) = handshakes.clone().acquire_owned().await else { break };
                        let acceptor = TlsAcceptor::from(loaded.config.clone());
                        let (tx, metrics) = (tx.clone(), metrics.clone());
                        tokio::spawn(async move {
                            let _permit = permit;
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => {
                                    let _ = tx.send(Ok(tls)).await;
                                }
                                Ok(Err(error)) => {
                                    metrics.tls_handshake_failed();
                                    tracing::debug!(%peer, %error, "TLS handshake failed");
                                }
                                Err(_) => {
                                    metrics.tls_handshake_failed();
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                }
                            }
                        });
                    }
                    Err(error) => {
                        // Out of file descriptors, say: wait a little rather than spin.
                        tracing::warn!(%error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = reload.tick() => match files.reload(&loaded) {
                    Ok(Some(fresh)) => {
                        tracing::info!("TLS files changed: new connections use them");
                        metrics.tls_reload(true);
                        loaded = fresh;
                        last_error = None;
                    }
                    Ok(None) => last_error = None,
                    Err(error) => {
                        if last_error.as_ref() != Some(&error) {
                            tracing::warn!(%error, "TLS files not reloaded; still using the last good ones");
                            metrics.tls_reload(false);
                        }
                        last_error = Some(error);
                    }
                },
                _ = tx.closed() => break,
            }
        }
    });
    (ReceiverStream::new(rx), task)
}
