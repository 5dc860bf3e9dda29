//! HTTPS on the listener: PEM files to a rustls server configuration (TLS 1.2 and 1.3 only),
//! and the acceptor whose configuration a reload swaps without touching open connections.
//!
//! A handshake takes the configuration current when it starts; connections already set up keep
//! theirs until they close. Nothing here logs key material.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
    /// The key file holds no PEM private key.
    #[error("{0} holds no PEM private key")]
    NoKey(String),
    /// rustls refused the pair (a key that does not match the certificate, say).
    #[error("certificate and key refused: {0}")]
    Refused(String),
}

/// Builds the server configuration for `files`: TLS 1.3 and 1.2, HTTP/1.1 over ALPN.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| TlsError::Refused(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| TlsError::Refused(err.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The listener's TLS acceptor; `replace` swaps the configuration new handshakes use.
#[derive(Clone)]
pub struct Acceptor {
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl Acceptor {
    /// An acceptor serving `files`.
    pub fn new(files: &TlsFiles) -> Result<Acceptor, TlsError> {
        Ok(Acceptor {
            current: Arc::new(RwLock::new(server_config(files)?)),
        })
    }

    /// Loads `files` and, when they are good, uses them for every handshake from now on.
    /// On error the previous certificate stays in use.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let config = server_config(files)?;
        self.replace(config);
        Ok(())
    }

    /// Uses `config` for every handshake from now on.
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = config;
    }

    /// An acceptor for one handshake, with the current configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let current = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tokio_rustls::TlsAcceptor::from(current.clone())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|err| TlsError::Read {
        path: path.display().to_string(),
        reason: err.to_string(),
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Read {
            path: path.display().to_string(),
            reason: err.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.display().to_string()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|_| TlsError::NoKey(path.display().to_string()))?
        .ok_or_else(|| TlsError::NoKey(path.display().to_string()))
}
