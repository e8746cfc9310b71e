//! TLS for `wss://`, `https://` and `turns:`: a rustls server configuration
//! (the ring provider of `zajel_client_net::tls`) whose certificate is a
//! [`ServedCertificate`], read from PEM certificate-chain and private-key
//! files and re-read on demand ([`ServedCertificate::reload`], on SIGHUP) or
//! when the files change ([`ServedCertificate::reload_if_changed`], polled).
//! New handshakes get the new certificate; established connections keep
//! theirs. A replacement that cannot be read, or whose key does not fit its
//! certificate, is refused and the old certificate stays in service.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why TLS could not be set up, or why a certificate was not (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate file {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("TLS certificate file {0} holds no certificate")]
    NoCert(String),
    #[error("cannot read TLS private key file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS certificate and key do not fit together: {0}")]
    Config(String),
}

impl TlsError {
    /// A machine-readable kind: `cert_unreadable`, `no_cert`,
    /// `key_unreadable` or `key_mismatch`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Cert { .. } => "cert_unreadable",
            Self::NoCert(_) => "no_cert",
            Self::Key { .. } => "key_unreadable",
            Self::Config(_) => "key_mismatch",
        }
    }
}

/// When and how big each file was when last looked at: a change in either
/// is a new certificate to load.
type FileStamp = [Option<(SystemTime, u64)>; 2];

/// The certificate a TLS listener serves, swappable while it runs. The
/// private key never leaves it (its `Debug` shows the paths only).
pub struct ServedCertificate {
    /// Certificate chain and key files; `None` for one given as PEM text,
    /// which cannot be reloaded.
    files: Option<(PathBuf, PathBuf)>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamp at the last load attempt, good or bad (a bad file is
    /// reported once, not on every poll).
    seen: Mutex<FileStamp>,
}

impl std::fmt::Debug for ServedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCertificate")
            .field("files", &self.files)
            .field("key", &"<hidden>")
            .finish()
    }
}

impl ServedCertificate {
    /// Reads `cert` (PEM chain) and `key` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn from_files(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let stamp = stamp(cert, key);
        let certified = load_files(cert, key)?;
        Ok(Arc::new(Self {
            files: Some((cert.to_path_buf(), key.to_path_buf())),
            current: RwLock::new(Arc::new(certified)),
            seen: Mutex::new(stamp),
        }))
    }

    /// A fixed certificate from PEM text (tests, embedded TURN servers).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<Self>, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Cert {
                path: "<pem>".into(),
                reason: format!("bad certificate PEM: {e}"),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCert("<pem>".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
            path: "<pem>".into(),
            reason: format!("bad private key PEM: {e}"),
        })?;
        let certified = certified_key(chain, key, "<pem>")?;
        Ok(Arc::new(Self {
            files: None,
            current: RwLock::new(Arc::new(certified)),
            seen: Mutex::new([None, None]),
        }))
    }

    /// The certificate and key files, if it was read from files.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        self.files
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()))
    }

    /// The chain served now (the end-entity certificate first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current().cert.clone()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the files and serves what they hold from the next handshake
    /// on. `Ok(false)`: nothing to re-read (given as PEM text). On error
    /// the old certificate stays in service.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some((cert, key)) = &self.files else {
            return Ok(false);
        };
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamp(cert, key);
        let certified = load_files(cert, key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
        Ok(true)
    }

    /// [`Self::reload`] if either file changed (modification time or size)
    /// since the last load attempt; `None` if neither did.
    pub fn reload_if_changed(&self) -> Option<Result<bool, TlsError>> {
        let (cert, key) = self.files.as_ref()?;
        let now = stamp(cert, key);
        if *self.seen.lock().unwrap_or_else(|p| p.into_inner()) == now {
            return None;
        }
        Some(self.reload())
    }

    /// A server configuration that serves this certificate, with `alpn`.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = zajel_client_net::tls::server_config_builder()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Reloads (all files, or with `changed_only` only changed ones) and
    /// logs the outcome under `listener` (e.g. `wss`, `turns`); `None` when
    /// nothing changed.
    pub fn reload_logged(
        &self,
        listener: &str,
        changed_only: bool,
    ) -> Option<Result<bool, TlsError>> {
        let outcome = if changed_only {
            self.reload_if_changed()?
        } else {
            self.reload()
        };
        let cert = self
            .files
            .as_ref()
            .map(|(cert, _)| cert.display().to_string())
            .unwrap_or_default();
        match &outcome {
            Ok(true) => tracing::info!(listener, %cert, "TLS certificate reloaded"),
            Ok(false) => {}
            Err(error) => tracing::error!(
                listener,
                %cert,
                kind = error.kind(),
                "TLS certificate not reloaded, the old one stays in service: {error}"
            ),
        }
        Some(outcome)
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamp(cert: &Path, key: &Path) -> FileStamp {
    let one = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    [one(cert), one(key)]
}

fn load_files(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_path = cert.display().to_string();
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    certified_key(chain, key, &cert_path)
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &str,
) -> Result<CertifiedKey, TlsError> {
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert_path.to_string()));
    }
    CertifiedKey::from_der(chain, key, &zajel_client_net::tls::provider())
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// A server configuration serving `cert` (PEM chain) with `key` (PEM), and
/// the handle that reloads it.
pub fn server_config(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<rustls::ServerConfig>, Arc<ServedCertificate>), TlsError> {
    let served = ServedCertificate::from_files(cert, key)?;
    Ok((served.server_config(&[b"http/1.1"])?, served))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, (cert, key): &(String, String)) -> (PathBuf, PathBuf) {
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        (cert_path, key_path)
    }

    #[test]
    fn a_reload_serves_the_new_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write(dir.path(), &pem_pair("old.example"));
        let served = ServedCertificate::from_files(&cert, &key).unwrap();
        let old = served.chain();
        write(dir.path(), &pem_pair("new.example"));
        assert!(served.reload().unwrap());
        assert_ne!(served.chain(), old);
    }

    #[test]
    fn a_key_that_does_not_fit_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write(dir.path(), &pem_pair("old.example"));
        let served = ServedCertificate::from_files(&cert, &key).unwrap();
        let old = served.chain();
        // The new certificate with another certificate's key.
        let (new_cert, _) = pem_pair("new.example");
        let (_, other_key) = pem_pair("other.example");
        write(dir.path(), &(new_cert, other_key));
        let error = served.reload().unwrap_err();
        assert_eq!(error.kind(), "key_mismatch", "{error}");
        assert_eq!(served.chain(), old);
    }

    #[test]
    fn an_unreadable_replacement_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write(dir.path(), &pem_pair("old.example"));
        let served = ServedCertificate::from_files(&cert, &key).unwrap();
        let old = served.chain();
        std::fs::write(&cert, "not a certificate").unwrap();
        let error = served.reload().unwrap_err();
        assert_eq!(error.kind(), "no_cert", "{error}");
        std::fs::remove_file(&key).unwrap();
        assert_eq!(served.reload().unwrap_err().kind(), "key_unreadable");
        assert_eq!(served.chain(), old);
    }

    #[test]
    fn only_a_change_triggers_a_reload_when_polled() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write(dir.path(), &pem_pair("old.example"));
        let served = ServedCertificate::from_files(&cert, &key).unwrap();
        assert!(served.reload_if_changed().is_none());
        let old = served.chain();
        // A different size is a change even within the file system's timestamp resolution.
        let (new_cert, new_key) = pem_pair("a-longer-name.example");
        write(dir.path(), &(new_cert.clone() + "\n", new_key));
        assert!(served.reload_if_changed().unwrap().unwrap());
        assert_ne!(served.chain(), old);
        assert!(served.reload_if_changed().is_none());
    }
}
