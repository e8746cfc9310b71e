//! An in-process DNS-over-HTTPS server built on hickory-server, for demos and
//! tests that should not depend on a Debian package (call-probe's demo): an
//! authoritative in-memory zone with TXT records, served over DoH (HTTP/2,
//! `/dns-query`) on 127.0.0.1 with the TLS configuration it is given.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::proto::rr::rdata::{SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::proto::ProtoError;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;

/// Why the in-process DoH server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DohServerError {
    /// The zone's name is not a DNS name.
    #[error("zone {zone}: {source}")]
    Zone {
        zone: String,
        #[source]
        source: ProtoError,
    },
    /// A name derived from the zone (its SOA's) is not a DNS name.
    #[error(transparent)]
    SoaName(ProtoError),
    /// A record's owner name is not a DNS name.
    #[error("name {name}: {source}")]
    RecordName {
        name: String,
        #[source]
        source: ProtoError,
    },
    /// The zone refused a record (its owner is outside the zone).
    #[error("record {name} refused by the zone")]
    RecordRefused { name: String },
    /// The listener, the server's runtime or its HTTPS listener could not be set up.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The server's thread ended before saying it was ready.
    #[error("DoH server thread ended early")]
    ThreadEnded,
}

impl DohServerError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Zone { .. } => "doh_zone",
            Self::SoaName(_) => "doh_soa_name",
            Self::RecordName { .. } => "doh_record_name",
            Self::RecordRefused { .. } => "doh_record_refused",
            Self::Io(_) => "doh_io",
            Self::ThreadEnded => "doh_thread_ended",
        }
    }
}

/// A running in-process DoH server; stopped when dropped.
pub struct InProcessDoh {
    pub address: SocketAddr,
    /// `https://localhost:<port>/dns-query`
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessDoh {
    /// Serves `zone` with TXT records given as (owner name, character-strings), over TLS
    /// with `tls` (its ALPN is set to `h2`), on 127.0.0.1 with a free port.
    pub fn start(
        tls: rustls::ServerConfig,
        zone: &str,
        records: &[(String, Vec<String>)],
    ) -> Result<Self, DohServerError> {
        let origin =
            Name::from_str(&format!("{}.", zone.trim_end_matches('.'))).map_err(|source| {
                DohServerError::Zone {
                    zone: zone.to_string(),
                    source,
                }
            })?;
        let mut handler: InMemoryZoneHandler =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let serial = 1;
        let soa = SOA::new(
            Name::from_str(&format!("ns.{origin}")).map_err(DohServerError::SoaName)?,
            Name::from_str(&format!("hostmaster.{origin}")).map_err(DohServerError::SoaName)?,
            serial,
            3600,
            600,
            86400,
            60,
        );
        handler.upsert_mut(
            Record::from_rdata(origin.clone(), 3600, RData::SOA(soa)),
            serial,
        );
        for (name, strings) in records {
            let owner = Name::from_str(name).map_err(|source| DohServerError::RecordName {
                name: name.clone(),
                source,
            })?;
            let record = Record::from_rdata(owner, 60, RData::TXT(TXT::new(strings.clone())));
            if !handler.upsert_mut(record, serial) {
                return Err(DohServerError::RecordRefused { name: name.clone() });
            }
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
        let mut tls = tls;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let tls = Arc::new(tls);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), std::io::Error>>();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let mut server = Server::new(catalog);
                if let Err(e) = server.register_https_listener_with_tls_config(
                    listener,
                    Duration::from_secs(5),
                    tls,
                    None,
                    "/dns-query".to_string(),
                ) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                let _ = stopped.await;
                let _ = server.shutdown_gracefully().await;
            });
        });
        ready_rx.recv().map_err(|_| DohServerError::ThreadEnded)??;
        Ok(Self {
            address,
            url: format!("https://localhost:{}/dns-query", address.port()),
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for InProcessDoh {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> rustls::ServerConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap()
    }

    #[test]
    fn a_record_whose_owner_is_not_a_name_is_refused_by_name() {
        let owner = format!("{}.zajel.test.", "x".repeat(64));
        let records = [(owner.clone(), vec!["v=1".to_string()])];
        let error = match InProcessDoh::start(tls(), "zajel.test", &records) {
            Ok(_) => panic!("a 64-character label was served"),
            Err(error) => error,
        };
        assert_eq!(error.kind(), "doh_record_name");
        assert!(
            error.to_string().starts_with(&format!("name {owner}: ")),
            "{error}"
        );
    }

    #[test]
    fn a_zone_that_is_not_a_name_says_so() {
        let label = "x".repeat(64);
        let error = match InProcessDoh::start(tls(), &label, &[]) {
            Ok(_) => panic!("a 64-character label made a zone"),
            Err(error) => error,
        };
        assert_eq!(error.kind(), "doh_zone");
        assert!(
            error.to_string().starts_with(&format!("zone {label}: ")),
            "{error}"
        );
    }
}
