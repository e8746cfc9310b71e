//! TLS with rustls on ring, for every client of the toolkit and the provider
//! of its servers.
//!
//! - [`install_crypto_provider`]: the one place ring becomes the process's
//!   default rustls provider (webrtc-rs's DTLS and libraries that build their
//!   own configurations ask for the default; builds that also hold aws-lc-rs
//!   have no default until one is installed).
//! - [`provider`]: ring, for servers that build their own `ServerConfig`
//!   ([`server_config_builder`]).
//! - Client configurations: [`client_config`] (the webpki roots plus extra
//!   CAs), [`client_config_with_roots`] (exactly these roots), and
//!   [`read_pem_certificates`] to load extra CAs from a PEM file.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Why a TLS setting could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {path}: {reason}")]
    ReadCa { path: String, reason: String },
    #[error("CA file {path}: {reason}")]
    BadCa { path: String, reason: String },
    #[error("CA file {0} holds no PEM certificate")]
    NoCertificate(String),
    #[error("extra CA certificate refused: {0}")]
    RefusedCa(String),
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Installs ring as the process's default rustls provider (once; harmless if
/// one is already installed).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The ring provider every configuration of the toolkit is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration builder on ring with the safe default protocol
/// versions; the server adds its certificate.
pub fn server_config_builder(
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>, TlsError> {
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))
}

/// Reads every certificate of a PEM file (at least one).
pub fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = || path.display().to_string();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::ReadCa {
            path: shown(),
            reason: e.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCa {
            path: shown(),
            reason: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate(shown()));
    }
    Ok(certificates)
}

/// The Mozilla root certificates compiled into `webpki-roots`.
pub fn webpki_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

/// A client configuration trusting the webpki roots and `extra_roots`.
pub fn client_config(extra_roots: &[CertificateDer<'static>]) -> Result<ClientConfig, TlsError> {
    let mut roots = webpki_roots();
    add_roots(&mut roots, extra_roots)?;
    client_config_with_roots(roots)
}

/// A client configuration trusting only `certificates` (a test CA, or a
/// self-signed server's own certificate).
pub fn client_config_trusting_only(
    certificates: &[CertificateDer<'static>],
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    add_roots(&mut roots, certificates)?;
    client_config_with_roots(roots)
}

/// A client configuration trusting exactly `roots`.
pub fn client_config_with_roots(roots: RootCertStore) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn add_roots(
    roots: &mut RootCertStore,
    certificates: &[CertificateDer<'static>],
) -> Result<(), TlsError> {
    for certificate in certificates {
        roots
            .add(certificate.clone())
            .map_err(|e| TlsError::RefusedCa(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_with_webpki_roots_and_refuses_garbage_ca_files() {
        assert!(client_config(&[]).is_ok());
        assert!(!webpki_roots().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let error = read_pem_certificates(&path).unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
        let error = read_pem_certificates(&dir.path().join("missing")).unwrap_err();
        assert!(error.to_string().contains("cannot read"), "{error}");
    }

    #[test]
    fn a_certificate_that_is_not_der_is_refused_as_a_root() {
        let garbage = CertificateDer::from(vec![1u8, 2, 3]);
        let error = client_config_trusting_only(&[garbage]).unwrap_err();
        assert!(matches!(error, TlsError::RefusedCa(_)), "{error}");
        assert!(client_config_trusting_only(&[]).is_ok());
    }

    #[test]
    fn configurations_use_ring() {
        let config = client_config(&[]).unwrap();
        assert_eq!(
            config.crypto_provider().cipher_suites,
            rustls::crypto::ring::default_provider().cipher_suites
        );
    }
}
