//! A throwaway certificate authority for tests: a CA certificate the client
//! is told to trust, and a server certificate it signs for `localhost` and
//! `127.0.0.1`, written as PEM files in a temporary directory.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA and one server certificate, as PEM files and as DER.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA certificate (what clients trust).
    pub ca_file: PathBuf,
    pub ca_der: CertificateDer<'static>,
    /// The server certificate (leaf) and its key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestCa {
    /// A new CA and a server certificate for `localhost` and `127.0.0.1`.
    pub fn new() -> Self {
        Self::for_names(&["localhost".to_string(), "127.0.0.1".to_string()])
    }

    /// A new CA and a server certificate for `names` (DNS names or IP
    /// addresses; the first is also the common name).
    pub fn for_names(names: &[String]) -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "zajel test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, &ca_key);
        let leaf_key = KeyPair::generate().expect("server key");
        let mut leaf_params = CertificateParams::new(names.to_vec()).expect("server params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, names.first().map_or("localhost", |n| n));
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("server certificate");
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca_file = dir.path().join("ca.pem");
        let cert_file = dir.path().join("server.pem");
        let key_file = dir.path().join("server.key");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");
        std::fs::write(&cert_file, leaf.pem()).expect("write certificate");
        std::fs::write(&key_file, leaf_key.serialize_pem()).expect("write key");
        Self {
            dir,
            ca_file,
            ca_der: ca_cert.der().clone(),
            cert_file,
            key_file,
            cert_der: leaf.der().clone(),
            key_der: leaf_key.serialize_der(),
        }
    }

    /// A rustls server configuration presenting the server certificate.
    pub fn server_config(&self, alpn: &[&[u8]]) -> rustls::ServerConfig {
        let mut config = zajel_client_net::tls::server_config_builder()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
