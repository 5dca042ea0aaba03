//! TLS certificates for sluice's listeners, read once at start into a rustls acceptor: MQTT over
//! TLS (device SDKs connect on 8883 by default) and HTTPS for the API (MNS signatures over plain
//! HTTP can be replayed by anyone on the path).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The `purpose` of the MQTT listeners' certificates.
pub const MQTT: &str = "MQTT";
/// The `purpose` of the HTTP API's certificate.
pub const HTTP: &str = "HTTP";

/// Why the TLS listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("{purpose} TLS certificate {path}: {message}")]
    Cert {
        /// Which listener (`MQTT`, `HTTP`).
        purpose: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key file could not be read or holds no PEM private key.
    #[error("{purpose} TLS key {path}: {message}")]
    Key {
        /// Which listener (`MQTT`, `HTTP`).
        purpose: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("{purpose} TLS certificate and key: {source}")]
    Config {
        /// Which listener (`MQTT`, `HTTP`).
        purpose: &'static str,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
}

/// Builds the acceptor from a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or
/// SEC1). The crypto provider is ring, named explicitly so the choice never depends on which
/// features other crates switch on. `purpose` names the listener in errors.
pub fn load_acceptor(
    purpose: &'static str,
    cert: &Path,
    key: &Path,
) -> Result<TlsAcceptor, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        purpose,
        path: cert.to_path_buf(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        purpose,
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    let config_err = |source| TlsError::Config { purpose, source };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(config_err)?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(config_err)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
