//! The in-process DNS-over-HTTPS server (`discovery_client::doh_server`, on
//! hickory-server) with the test CA's certificate: the cheap path for tests
//! that should not depend on a Debian package. The real-server tests use
//! [`crate::unbound_doh`].

use std::net::SocketAddr;

use crate::test_ca::TestCa;

/// A running in-process DoH server; stopped when dropped.
pub struct InProcessDoh {
    pub address: SocketAddr,
    /// `https://localhost:<port>/dns-query`
    pub url: String,
    _server: discovery_client::doh_server::InProcessDoh,
}

impl InProcessDoh {
    /// Serves `zone` with TXT records given as (owner name, character-strings),
    /// with the test CA's server certificate.
    pub fn start(
        ca: &TestCa,
        zone: &str,
        records: &[(String, Vec<String>)],
    ) -> Result<Self, String> {
        let server =
            discovery_client::doh_server::InProcessDoh::start(ca.server_config(&[]), zone, records)
                .map_err(|e| e.to_string())?;
        Ok(Self {
            address: server.address,
            url: server.url.clone(),
            _server: server,
        })
    }
}
