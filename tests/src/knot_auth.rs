//! A real authoritative DNS server for the publishing tests: Debian's Knot
//! (`knotd`), on 127.0.0.1, serving one zone that accepts RFC 2136 updates
//! signed with one TSIG key (`publisher`) and holding a second key
//! (`reader`) that may not update. Started as a [`ChildProcess`], so it is
//! killed with its group when the test ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;

use crate::process::ChildProcess;

/// A running knotd.
pub struct KnotAuth {
    /// Where it answers (UDP and TCP).
    pub address: SocketAddr,
    pub zone: String,
    /// `hmac-sha256:publisher:<secret>` — may update the zone.
    pub publisher_key_file: PathBuf,
    /// The publisher's key as a BIND `key` clause (as `tsig-keygen` prints it).
    pub publisher_bind_key_file: PathBuf,
    /// `hmac-sha256:reader:<secret>` — known to Knot, no update right.
    pub reader_key_file: PathBuf,
    /// The publisher's name with a wrong secret.
    pub wrong_key_file: PathBuf,
    process: ChildProcess,
    _dir: tempfile::TempDir,
}

fn secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("random");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl KnotAuth {
    /// Serves `zone` (an SOA and an NS, nothing else).
    pub fn start(zone: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            listener.local_addr().map_err(|e| e.to_string())?.port()
        };
        let (publisher, reader, wrong) = (secret(), secret(), secret());
        let d = dir.path().display();
        let zone_file = dir.path().join(format!("{zone}.zone"));
        std::fs::write(
            &zone_file,
            format!(
                "$ORIGIN {zone}.\n$TTL 60\n\
                 @ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 1\n\
                 @ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let config = format!(
            "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n\
             log:\n  - target: stderr\n    any: info\n\
             database:\n    storage: \"{d}\"\n\
             control:\n    listen: \"{d}/knot.sock\"\n\
             key:\n  - id: publisher\n    algorithm: hmac-sha256\n    secret: {publisher}\n\
             \x20 - id: reader\n    algorithm: hmac-sha256\n    secret: {reader}\n\
             acl:\n  - id: publish\n    key: publisher\n    action: update\n\
             \x20   update-type: TXT\n    update-owner: name\n    update-owner-match: equal\n\
             \x20   update-owner-name: _zajel\n\
             zone:\n  - domain: {zone}\n    file: \"{zone_file}\"\n    acl: publish\n    zonefile-sync: -1\n",
            zone_file = zone_file.display(),
        );
        let config_path = dir.path().join("knot.conf");
        std::fs::write(&config_path, &config).map_err(|e| e.to_string())?;
        let write_key = |name: &str, key_name: &str, secret: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("hmac-sha256:{key_name}:{secret}\n"))
                .map(|_| path)
                .map_err(|e| e.to_string())
        };
        let publisher_key_file = write_key("publisher.key", "publisher", &publisher)?;
        let publisher_bind_key_file = dir.path().join("publisher.bind.key");
        std::fs::write(
            &publisher_bind_key_file,
            format!(
                "key \"publisher\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{publisher}\";\n}};\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let reader_key_file = write_key("reader.key", "reader", &reader)?;
        let wrong_key_file = write_key("wrong.key", "publisher", &wrong)?;
        let mut command = std::process::Command::new("knotd");
        command.arg("-c").arg(&config_path);
        let mut process = ChildProcess::spawn("knotd", command)
            .map_err(|e| format!("{e} (apt-get install knot)"))?;
        process.wait_for(Duration::from_secs(20), |line| {
            line.contains("loaded, serial").then_some(())
        })?;
        Ok(Self {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            zone: zone.into(),
            publisher_key_file,
            publisher_bind_key_file,
            reader_key_file,
            wrong_key_file,
            process,
            _dir: dir,
        })
    }

    /// Everything knotd printed so far.
    pub fn output(&self) -> String {
        self.process.output()
    }
}
