//! A real DNS-over-HTTPS server for discovery tests: Debian's `unbound`
//! (built with nghttp2) serving a local zone on 127.0.0.1 over DoH, with a
//! certificate from the test CA. Started as a [`ChildProcess`], so it is
//! killed with its group when the test ends.

use std::time::Duration;

use crate::process::ChildProcess;
use crate::test_ca::TestCa;

/// A running unbound answering DoH on 127.0.0.1.
pub struct UnboundDoh {
    pub port: u16,
    /// `https://127.0.0.1:<port>/dns-query`
    pub url: String,
    process: ChildProcess,
    _dir: tempfile::TempDir,
}

impl UnboundDoh {
    /// Serves `zone` (e.g. `example.test`) as a static local zone holding
    /// `records`, each a zone-file line (`<name> <ttl> IN TXT "…" "…"`).
    pub fn start(ca: &TestCa, zone: &str, records: &[String]) -> Result<Self, String> {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            listener.local_addr().map_err(|e| e.to_string())?.port()
        };
        Self::start_at(
            ca,
            zone,
            records,
            "127.0.0.1".parse().expect("ip"),
            port,
            None,
        )
    }

    /// The same, listening on `address:port`, inside `namespace` when given
    /// (run through `ip netns exec`).
    pub fn start_at(
        ca: &TestCa,
        zone: &str,
        records: &[String],
        address: std::net::IpAddr,
        port: u16,
        namespace: Option<&crate::netns::Namespace>,
    ) -> Result<Self, String> {
        let mut zone_config = format!("\tlocal-zone: \"{zone}.\" static\n");
        for record in records {
            if record.contains('\'') {
                return Err(format!("record line has a single quote: {record}"));
            }
            zone_config.push_str(&format!("\tlocal-data: '{record}'\n"));
        }
        Self::launch(ca, address, port, namespace, &zone_config, "")
    }

    /// A DoH front for an authoritative server: `zone` is a stub zone
    /// resolved by asking `authoritative` (over TCP), with nothing cached,
    /// so every query shows what the authoritative server serves now.
    pub fn start_stub(
        ca: &TestCa,
        zone: &str,
        authoritative: std::net::SocketAddr,
    ) -> Result<Self, String> {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            listener.local_addr().map_err(|e| e.to_string())?.port()
        };
        // `transparent` lifts unbound's default local zones (`test.` among them) for this zone.
        let server = format!(
            "\tdo-not-query-localhost: no\n\ttcp-upstream: yes\n\
             \tcache-max-ttl: 0\n\tcache-max-negative-ttl: 0\n\
             \tqname-minimisation: no\n\tlocal-zone: \"{zone}.\" transparent\n"
        );
        let stub = format!(
            "stub-zone:\n\tname: \"{zone}.\"\n\tstub-addr: {}@{}\n",
            authoritative.ip(),
            authoritative.port()
        );
        Self::launch(
            ca,
            "127.0.0.1".parse().expect("ip"),
            port,
            None,
            &server,
            &stub,
        )
    }

    /// Writes the configuration (`server_extra` inside `server:`, `tail` after it), checks it, starts unbound.
    fn launch(
        ca: &TestCa,
        address: std::net::IpAddr,
        port: u16,
        namespace: Option<&crate::netns::Namespace>,
        server_extra: &str,
        tail: &str,
    ) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut config = format!(
            "server:\n\
             \tinterface: {address}@{port}\n\
             \thttps-port: {port}\n\
             \ttls-service-key: \"{key}\"\n\
             \ttls-service-pem: \"{cert}\"\n\
             \tdo-daemonize: no\n\
             \tuse-syslog: no\n\
             \tlogfile: \"\"\n\
             \tverbosity: 1\n\
             \tchroot: \"\"\n\
             \tusername: \"\"\n\
             \tdirectory: \"{dir}\"\n\
             \tpidfile: \"{dir}/unbound.pid\"\n\
             \tdo-ip6: no\n\
             \tdo-udp: no\n\
             \taccess-control: 0.0.0.0/0 allow\n\
             \tmodule-config: \"iterator\"\n\
             \trrset-roundrobin: no\n",
            key = ca.key_file.display(),
            cert = ca.cert_file.display(),
            dir = dir.path().display(),
        );
        config.push_str(server_extra);
        config.push_str(tail);
        config.push_str("remote-control:\n\tcontrol-enable: no\n");
        let path = dir.path().join("unbound.conf");
        std::fs::write(&path, &config).map_err(|e| e.to_string())?;
        let check = std::process::Command::new("unbound-checkconf")
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run unbound-checkconf (apt-get install unbound): {e}"))?;
        if !check.status.success() {
            return Err(format!(
                "unbound-checkconf refused the configuration:\n{}{}\n{config}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            ));
        }
        let mut command = match namespace {
            Some(namespace) => namespace.command("unbound"),
            None => std::process::Command::new("unbound"),
        };
        command.arg("-d").arg("-c").arg(&path);
        let mut process = ChildProcess::spawn("unbound", command)?;
        process.wait_for(Duration::from_secs(20), |line| {
            line.contains("start of service").then_some(())
        })?;
        Ok(Self {
            port,
            url: format!("https://{address}:{port}/dns-query"),
            process,
            _dir: dir,
        })
    }

    /// Everything unbound printed so far.
    pub fn output(&self) -> String {
        self.process.output()
    }
}
