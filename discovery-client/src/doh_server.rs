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
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;

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
    ) -> Result<Self, String> {
        let origin = Name::from_str(&format!("{}.", zone.trim_end_matches('.')))
            .map_err(|e| format!("zone {zone}: {e}"))?;
        let mut handler: InMemoryZoneHandler =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let serial = 1;
        let soa = SOA::new(
            Name::from_str(&format!("ns.{origin}")).map_err(|e| e.to_string())?,
            Name::from_str(&format!("hostmaster.{origin}")).map_err(|e| e.to_string())?,
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
            let owner = Name::from_str(name).map_err(|e| format!("name {name}: {e}"))?;
            let record = Record::from_rdata(owner, 60, RData::TXT(TXT::new(strings.clone())));
            if !handler.upsert_mut(record, serial) {
                return Err(format!("record {name} refused by the zone"));
            }
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
        let mut tls = tls;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let tls = Arc::new(tls);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
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
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                let _ = stopped.await;
                let _ = server.shutdown_gracefully().await;
            });
        });
        ready_rx
            .recv()
            .map_err(|_| "DoH server thread ended early".to_string())??;
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
