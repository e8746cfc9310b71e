//! The real-browser harness: Debian's Chromium driven by playwright-core
//! (node_modules) through a Node script in `tests/browser/`, and the HTTPS
//! page server the browser loads from on 127.0.0.1: discovery-web's example
//! page and its built package (`scripts/build-web`), and an RFC 8484
//! DNS-over-HTTPS endpoint (`POST /dns-query`, same origin, so no CORS)
//! answering the `_zajel` TXT records it is given. Chromium trusts the test
//! certificate by its SPKI hash (`--ignore-certificate-errors-spki-list`),
//! which covers the page, DoH, `wss://` and `turns:` alike.
//!
//! [`BrowserEnv::find`] decides whether the test can run: it skips (with a
//! message) only when Chromium is absent and `CI` is not `true`; in CI a
//! missing browser or driver is a failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hickory_server::proto::op::{Message, MessageType, ResponseCode};
use hickory_server::proto::rr::rdata::TXT;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::process::ChildProcess;

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The flags every run of Chromium gets (Playwright adds `--headless` and a
/// fresh `--user-data-dir`): no network beyond what the page asks for,
/// loopback ICE candidates, a fake microphone.
pub const CHROMIUM_ARGS: &[&str] = &[
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
];

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// What a browser test needs, found.
pub struct BrowserEnv {
    pub chromium: PathBuf,
    pub node: PathBuf,
    /// discovery-web's built package (`scripts/build-web`).
    pub pkg_dir: PathBuf,
}

impl BrowserEnv {
    /// `None` (after saying why) when the test should be skipped; panics in
    /// CI when something is missing.
    pub fn find() -> Option<Self> {
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let chromium = PathBuf::from(CHROMIUM);
        if !chromium.exists() {
            assert!(
                !in_ci,
                "{CHROMIUM} is missing and CI=true: the browser test must run (scripts/test installs chromium)"
            );
            eprintln!("SKIPPED: {CHROMIUM} is not installed (apt-get install chromium); not in CI");
            return None;
        }
        let driver = workspace().join("node_modules/playwright-core/package.json");
        assert!(
            driver.exists(),
            "{} is missing: run npm ci (playwright-core is a devDependency)",
            driver.display()
        );
        let pkg_dir = build_package();
        Some(Self {
            chromium,
            node: PathBuf::from("node"),
            pkg_dir,
        })
    }

    /// Starts `tests/browser/<script>` with `args` (and `env`).
    pub fn spawn_script(
        &self,
        script: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<ChildProcess, String> {
        let mut command = Command::new(&self.node);
        command
            .arg(workspace().join("tests/browser").join(script))
            .args(args)
            .env("ZAJEL_CHROMIUM", &self.chromium)
            .env("ZAJEL_CHROMIUM_ARGS", CHROMIUM_ARGS.join(" "))
            .envs(env.iter().copied());
        ChildProcess::spawn(script, command)
    }

    /// Runs `tests/browser/<script>` with `args` and returns the JSON line it
    /// prints last (the script prints one `RESULT <json>` line).
    pub fn run_script(
        &self,
        script: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let child = self.spawn_script(script, args, &[])?;
        script_result(child, script, timeout)
    }
}

/// Waits for a script's `RESULT <json>` line.
pub fn script_result(
    mut child: ChildProcess,
    script: &str,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    {
        let result = child.wait_for(timeout, |line| {
            line.strip_prefix("RESULT ")
                .map(serde_json::from_str::<serde_json::Value>)
        });
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(format!(
                "{script}: bad RESULT line: {e}\n{}",
                child.output()
            )),
            Err(e) => Err(e),
        }
    }
}

/// A WAV file (48 kHz, mono, 16-bit) of a `hz` sine at -12 dBFS lasting
/// `seconds`: what Chromium's fake microphone plays
/// (`--use-file-for-fake-audio-capture`, looped).
pub fn tone_wav(path: &Path, hz: f64, seconds: u32) -> std::io::Result<()> {
    const RATE: u32 = 48_000;
    let samples = RATE * seconds;
    let amplitude = 10f64.powf(-12.0 / 20.0) * 32767.0;
    let mut bytes = Vec::with_capacity(44 + 2 * samples as usize);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + 2 * samples).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
    bytes.extend_from_slice(&RATE.to_le_bytes());
    bytes.extend_from_slice(&(RATE * 2).to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&(2 * samples).to_le_bytes());
    for n in 0..samples {
        let t = f64::from(n) / f64::from(RATE);
        let value = (amplitude * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16;
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    std::fs::write(path, bytes)
}

/// Builds discovery-web with `scripts/build-web` into target/discovery-web/pkg,
/// once per test process (the tests of one binary share it).
fn build_package() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(run_build_web).clone()
}

fn run_build_web() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let pkg = target.join("discovery-web/pkg");
    let status = Command::new("bash")
        .arg(workspace().join("scripts/build-web"))
        .arg(&pkg)
        .status()
        .expect("run scripts/build-web");
    assert!(status.success(), "scripts/build-web failed: {status}");
    pkg
}

/// The base64 SHA-256 of a certificate's SubjectPublicKeyInfo, as
/// `--ignore-certificate-errors-spki-list` takes it.
pub fn spki_hash(cert: &CertificateDer<'_>) -> String {
    let parsed = webpki::EndEntityCert::try_from(cert).expect("a test certificate parses");
    let spki = parsed.subject_public_key_info();
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki.as_ref()))
}

/// The page server: static files and DoH, over HTTPS on 127.0.0.1.
pub struct PageServer {
    /// `https://127.0.0.1:<port>`
    pub origin: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Served {
    /// URL path prefix → directory.
    roots: Vec<(String, PathBuf)>,
    /// Owner name (lower case, with the final dot) → TXT records' strings.
    txt: HashMap<String, Vec<Vec<String>>>,
}

impl PageServer {
    /// Serves `roots` (URL prefix, directory) and the TXT `records` (owner
    /// name, strings) at `/dns-query`, with `tls`.
    pub async fn start(
        tls: rustls::ServerConfig,
        roots: Vec<(String, PathBuf)>,
        records: &[(String, Vec<String>)],
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let origin = format!("https://{}", listener.local_addr()?);
        let mut txt: HashMap<String, Vec<Vec<String>>> = HashMap::new();
        for (name, strings) in records {
            let mut name = name.to_ascii_lowercase();
            if !name.ends_with('.') {
                name.push('.');
            }
            txt.entry(name).or_default().push(strings.clone());
        }
        let served = Arc::new(Served { roots, txt });
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let served = served.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = serve_connection(stream, &served).await;
                    }
                });
            }
        });
        Ok(Self { origin, task })
    }
}

async fn serve_connection<S>(mut stream: S, served: &Served) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // One request per connection (answered with Connection: close).
    let mut buffer = Vec::new();
    {
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 || buffer.len() > 64 * 1024 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let length: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        let body = buffer[head_end..head_end + length].to_vec();
        let (status, content_type, reply) = respond(served, &method, &path, &body);
        let header = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            reply.len()
        );
        stream.write_all(header.as_bytes()).await?;
        stream.write_all(&reply).await?;
        stream.flush().await?;
        let _ = stream.shutdown().await;
    }
    Ok(())
}

fn respond(
    served: &Served,
    method: &str,
    path: &str,
    body: &[u8],
) -> (&'static str, String, Vec<u8>) {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if path == "/dns-query" && method == "POST" {
        return match answer_dns(served, body) {
            Some(answer) => ("200 OK", "application/dns-message".into(), answer),
            None => (
                "400 Bad Request",
                "text/plain".into(),
                b"bad DNS message".to_vec(),
            ),
        };
    }
    if method != "GET" || path.contains("..") {
        return ("404 Not Found", "text/plain".into(), Vec::new());
    }
    for (prefix, dir) in &served.roots {
        if let Some(rest) = path.strip_prefix(prefix.as_str()) {
            let rest = if rest.is_empty() || rest.ends_with('/') {
                format!("{rest}index.html")
            } else {
                rest.to_string()
            };
            if let Ok(bytes) = std::fs::read(dir.join(rest.trim_start_matches('/'))) {
                let content_type = match Path::new(&rest).extension().and_then(|e| e.to_str()) {
                    Some("html") => "text/html; charset=utf-8",
                    Some("js" | "mjs") => "text/javascript",
                    Some("wasm") => "application/wasm",
                    Some("json") => "application/json",
                    _ => "application/octet-stream",
                };
                return ("200 OK", content_type.into(), bytes);
            }
        }
    }
    ("404 Not Found", "text/plain".into(), Vec::new())
}

/// Answers one TXT question from the served records (NXDOMAIN otherwise).
fn answer_dns(served: &Served, query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries.first()?.clone();
    let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.add_query(question.clone());
    let name = question.name().to_ascii().to_ascii_lowercase();
    match served.txt.get(&name) {
        Some(records) if question.query_type() == RecordType::TXT => {
            let owner = Name::from_ascii(&name).ok()?;
            for strings in records {
                answer.answers.push(Record::from_rdata(
                    owner.clone(),
                    60,
                    RData::TXT(TXT::new(strings.clone())),
                ));
            }
        }
        Some(_) => {}
        None => answer.metadata.response_code = ResponseCode::NXDomain,
    }
    debug_assert_eq!(answer.metadata.message_type, MessageType::Response);
    answer.to_vec().ok()
}
