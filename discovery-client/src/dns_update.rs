//! Publishing the signed `_zajel.<domain>` TXT set into an authoritative DNS
//! server by RFC 2136 dynamic update, authenticated with TSIG (RFC 8945),
//! through hickory's client (`zajel-discover txt publish --rfc2136 …`).
//!
//! One update message replaces the whole set, guarded by a prerequisite on
//! what was read just before: "RRset exists (value dependent)" with the exact
//! records served (RFC 2136 §2.4.2), or "RRset does not exist" (§2.4.3) when
//! there were none. If another publisher changed the set in between, the
//! server answers `NXRRSET`/`YXRRSET` and nothing changes ([`UpdateError::Raced`]).
//!
//! The TSIG key file holds one line in `knsupdate`/`kdig -y` form,
//! `hmac-sha256:<key name>:<base64 secret>` (`#` comments and blank lines
//! ignored; `hmac-sha384` and `hmac-sha512` also accepted), or BIND's `key`
//! clause as `tsig-keygen` prints it
//! (`key "name" { algorithm hmac-sha256; secret "…"; };`). The secret is
//! never logged nor shown by `Debug`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::{DnsResponse, ResponseCode};
use hickory_net::proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_net::proto::rr::rdata::TXT;
use hickory_net::proto::rr::{DNSClass, Name, RData, Record, RecordSet, RecordType, TSigner};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::xfer::DnsMultiplexer;
use hickory_net::{DnsError, NetError};
use serde::Serialize;

use crate::txt::PublishedRecord;

/// How far apart the publisher's and the server's clocks may be (TSIG fudge).
const TSIG_FUDGE_SECS: u16 = 300;

/// Why the records could not be read or replaced.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The TSIG key file is missing, unreadable or not `algorithm:name:secret`.
    #[error("TSIG key file {path}: {detail}")]
    KeyFile { path: String, detail: String },
    /// A name (domain or zone) is not a valid DNS name, or the record is outside the zone.
    #[error("bad name: {0}")]
    Name(String),
    /// The server could not be reached or did not answer in time.
    #[error("DNS server {server}: {detail}")]
    Unreachable { server: SocketAddr, detail: String },
    /// The server did not accept the signed update: the key is unknown to it,
    /// its secret is wrong, the clocks differ, or the key lacks update rights
    /// (Knot and BIND answer NOTAUTH to all of these).
    #[error("DNS server {server} did not accept the signed update ({rcode}): the TSIG key is unknown to it, its secret is wrong, or the key lacks update rights for the zone")]
    TsigRejected { server: SocketAddr, rcode: String },
    /// The server refused the update (the key lacks rights, updates not allowed for the zone).
    #[error("DNS server {server} refused the update ({rcode}): the key may lack update rights for the zone")]
    Refused { server: SocketAddr, rcode: String },
    /// The set changed between reading and updating (another publisher): nothing was changed.
    #[error("the _zajel TXT set on {server} changed while publishing ({rcode}); nothing was changed, run again")]
    Raced { server: SocketAddr, rcode: String },
    /// Any other error response.
    #[error("DNS server {server} answered {rcode}")]
    Failed { server: SocketAddr, rcode: String },
}

impl UpdateError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::KeyFile { .. } => "tsig_key_file",
            Self::Name(_) => "dns_name",
            Self::Unreachable { .. } => "dns_unreachable",
            Self::TsigRejected { .. } => "tsig_rejected",
            Self::Refused { .. } => "dns_update_refused",
            Self::Raced { .. } => "dns_update_raced",
            Self::Failed { .. } => "dns_update_failed",
        }
    }
}

/// A TSIG key: algorithm, name and secret. `Debug` hides the secret.
#[derive(Clone)]
pub struct TsigKey {
    pub name: Name,
    pub algorithm: TsigAlgorithm,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// Parses `hmac-sha256:<name>:<base64 secret>` (comments and blank lines
    /// ignored) or a BIND `key` clause. Errors never quote the secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        let first = without_comment_lines(text);
        if first.starts_with("key ") || first.starts_with("key\t") || first.starts_with("key\"") {
            return Self::parse_bind_clause(text);
        }
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = lines
            .next()
            .ok_or("empty: expected `hmac-sha256:<key name>:<base64 secret>`")?;
        if lines.next().is_some() {
            return Err("more than one key line".into());
        }
        let mut parts = line.splitn(3, ':');
        let (Some(algorithm), Some(name), Some(secret)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err("expected `hmac-sha256:<key name>:<base64 secret>`".into());
        };
        Self::from_parts(algorithm, name, secret)
    }

    /// `key "name" { algorithm hmac-sha256; secret "base64"; };` (as `tsig-keygen` prints it).
    fn parse_bind_clause(text: &str) -> Result<Self, String> {
        let expected = "expected `key \"<name>\" { algorithm <alg>; secret \"<base64>\"; };`";
        // Whole-line comments only: a base64 secret may hold `//`.
        let text = without_comment_lines(text);
        let rest = text.trim_start().strip_prefix("key").ok_or(expected)?;
        let (name, body) = rest.split_once('{').ok_or(expected)?;
        let name = name.trim().trim_matches('"');
        let body = body.rsplit_once('}').ok_or(expected)?.0;
        let mut algorithm = None;
        let mut secret = None;
        for statement in body.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (word, value) = statement.split_once(char::is_whitespace).ok_or(expected)?;
            let value = value.trim().trim_matches('"');
            match word {
                "algorithm" => algorithm = Some(value),
                "secret" => secret = Some(value),
                _ => return Err(format!("unknown statement `{word}` in the key clause")),
            }
        }
        Self::from_parts(
            algorithm.ok_or("the key clause has no algorithm")?,
            name,
            secret.ok_or("the key clause has no secret")?,
        )
    }

    fn from_parts(algorithm: &str, name: &str, secret: &str) -> Result<Self, String> {
        let algorithm = match algorithm.to_ascii_lowercase().as_str() {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(format!(
                    "algorithm {other:?} not supported (hmac-sha256, hmac-sha384, hmac-sha512)"
                ))
            }
        };
        if name.is_empty() {
            return Err("the key has no name".into());
        }
        let name = Name::from_ascii(name).map_err(|e| format!("key name: {e}"))?;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret.trim())
            .map_err(|_| "the secret is not base64".to_string())?;
        if secret.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(Self {
            name,
            algorithm,
            secret,
        })
    }

    /// Reads and parses a key file.
    pub fn from_file(path: &Path) -> Result<Self, UpdateError> {
        let error = |detail: String| UpdateError::KeyFile {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Self::parse(&text).map_err(error)
    }

    fn signer(&self) -> Result<TSigner, String> {
        TSigner::new(
            self.secret.clone(),
            self.algorithm.clone(),
            self.name.clone(),
            TSIG_FUDGE_SECS,
        )
        .map_err(|e| e.to_string())
    }
}

/// `text` without blank lines and whole-line `#` or `//` comments, trimmed.
fn without_comment_lines(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where to publish: an authoritative server (its TCP port), the zone and the key.
#[derive(Debug, Clone)]
pub struct Rfc2136Target {
    pub server: SocketAddr,
    /// The zone the `_zajel` name lives in (its SOA owner), e.g. `example.org`.
    pub zone: String,
    pub key: TsigKey,
    pub timeout: Duration,
}

/// A TXT record compared by what it says: TTL and character-strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ServedTxt {
    pub ttl: u32,
    pub strings: Vec<String>,
}

impl ServedTxt {
    fn from_published(record: &PublishedRecord) -> Self {
        Self {
            ttl: record.ttl,
            strings: record.strings.clone(),
        }
    }

    /// The character-strings quoted, as a zone file shows them.
    pub fn content(&self) -> String {
        self.strings
            .iter()
            .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What replacing the served set with the wanted one changes (records compared by strings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SetDiff {
    pub keep: Vec<ServedTxt>,
    pub add: Vec<ServedTxt>,
    pub remove: Vec<ServedTxt>,
}

impl SetDiff {
    /// Compares what is served with what is wanted.
    pub fn between(served: &[ServedTxt], wanted: &[ServedTxt]) -> Self {
        let same = |a: &ServedTxt, b: &ServedTxt| a.strings == b.strings;
        let mut diff = SetDiff::default();
        for w in wanted {
            if served.iter().any(|s| same(s, w)) {
                diff.keep.push(w.clone());
            } else {
                diff.add.push(w.clone());
            }
        }
        for s in served {
            if !wanted.iter().any(|w| same(s, w)) {
                diff.remove.push(s.clone());
            }
        }
        diff
    }

    /// Nothing to add nor remove.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Lines for a human: `+ "…"`, `- "…"`, `= "…"`.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        lines.extend(self.remove.iter().map(|r| format!("- {}", r.content())));
        lines.extend(self.add.iter().map(|r| format!("+ {}", r.content())));
        lines.extend(self.keep.iter().map(|r| format!("= {}", r.content())));
        lines
    }
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdateOutcome {
    /// The set was already what was wanted: no update was sent.
    pub unchanged: bool,
    pub diff: SetDiff,
}

fn zone_and_name(target: &Rfc2136Target, name: &str) -> Result<(Name, Name), UpdateError> {
    let zone = Name::from_ascii(target.zone.trim_end_matches('.').to_string() + ".")
        .map_err(|e| UpdateError::Name(format!("zone {}: {e}", target.zone)))?;
    let name = Name::from_ascii(name).map_err(|e| UpdateError::Name(format!("{name}: {e}")))?;
    if !zone.zone_of(&name) {
        return Err(UpdateError::Name(format!(
            "{name} is not inside the zone {zone}"
        )));
    }
    Ok((zone, name))
}

async fn connect(target: &Rfc2136Target) -> Result<Client<TokioRuntimeProvider>, UpdateError> {
    let unreachable = |detail: String| UpdateError::Unreachable {
        server: target.server,
        detail,
    };
    let signer = target.key.signer().map_err(|e| UpdateError::KeyFile {
        path: "(key)".into(),
        detail: e,
    })?;
    let (connecting, handle) = TcpClientStream::new(
        target.server,
        None,
        Some(target.timeout),
        TokioRuntimeProvider::default(),
    );
    let stream = tokio::time::timeout(target.timeout, connecting)
        .await
        .map_err(|_| unreachable("no connection in time".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let multiplexer = DnsMultiplexer::new(stream, handle)
        .with_timeout(target.timeout)
        .with_signer(signer);
    let (client, background) = Client::<TokioRuntimeProvider>::from_sender(multiplexer);
    tokio::spawn(background);
    Ok(client)
}

fn classify(server: SocketAddr, rcode: ResponseCode) -> UpdateError {
    let text = rcode.to_string();
    match rcode {
        ResponseCode::NotAuth
        | ResponseCode::BADSIG
        | ResponseCode::BADKEY
        | ResponseCode::BADTIME => UpdateError::TsigRejected {
            server,
            rcode: text,
        },
        ResponseCode::Refused => UpdateError::Refused {
            server,
            rcode: text,
        },
        ResponseCode::YXRRSet
        | ResponseCode::NXRRSet
        | ResponseCode::YXDomain
        | ResponseCode::NXDomain => UpdateError::Raced {
            server,
            rcode: text,
        },
        _ => UpdateError::Failed {
            server,
            rcode: text,
        },
    }
}

fn response(
    server: SocketAddr,
    answer: Result<DnsResponse, NetError>,
) -> Result<DnsResponse, UpdateError> {
    match answer {
        Ok(response) if response.response_code == ResponseCode::NoError => Ok(response),
        Ok(response) => Err(classify(server, response.response_code)),
        Err(NetError::Dns(DnsError::ResponseCode(rcode))) => Err(classify(server, rcode)),
        // A server that refuses the key (or its rights) answers NOTAUTH with a
        // TSIG record hickory cannot verify (no MAC): that error, not the rcode, arrives.
        Err(e) if e.to_string().to_ascii_lowercase().contains("tsig") => {
            tracing::debug!(%server, error = %e, "answer to a signed update failed TSIG verification");
            Err(UpdateError::TsigRejected {
                server,
                rcode: "an answer not signed with the key".into(),
            })
        }
        Err(e) => Err(UpdateError::Unreachable {
            server,
            detail: e.to_string(),
        }),
    }
}

/// The TXT set the authoritative server serves now for `name` (unsigned query over TCP).
pub async fn served(target: &Rfc2136Target, name: &str) -> Result<Vec<ServedTxt>, UpdateError> {
    let (_, name) = zone_and_name(target, name)?;
    let mut client = connect(target).await?;
    served_with(&mut client, target, &name).await
}

async fn served_with(
    client: &mut Client<TokioRuntimeProvider>,
    target: &Rfc2136Target,
    name: &Name,
) -> Result<Vec<ServedTxt>, UpdateError> {
    let answer = tokio::time::timeout(
        target.timeout,
        client.query(name.clone(), DNSClass::IN, RecordType::TXT),
    )
    .await
    .map_err(|_| UpdateError::Unreachable {
        server: target.server,
        detail: "no answer in time".into(),
    })?;
    // No such name (yet) or no TXT at it: an empty set.
    let answer = match answer {
        Err(NetError::Dns(DnsError::NoRecordsFound(_))) => return Ok(Vec::new()),
        Err(NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain))) => return Ok(Vec::new()),
        Ok(answer) if answer.response_code == ResponseCode::NXDomain => return Ok(Vec::new()),
        other => response(target.server, other)?,
    };
    let mut records: Vec<ServedTxt> = answer
        .answers
        .iter()
        .filter(|r| r.name == *name)
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(ServedTxt {
                ttl: r.ttl,
                strings: txt
                    .txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            }),
            _ => None,
        })
        .collect();
    records.sort();
    Ok(records)
}

fn record_set(name: &Name, records: &[ServedTxt]) -> RecordSet {
    let mut set = RecordSet::new(name.clone(), RecordType::TXT, 0);
    for record in records {
        let mut rr = Record::from_rdata(
            name.clone(),
            record.ttl,
            RData::TXT(TXT::new(record.strings.clone())),
        );
        rr.dns_class = DNSClass::IN;
        set.insert(rr, 0);
    }
    set
}

/// Replaces the `_zajel` TXT set with `records` in one signed update guarded
/// by a prerequisite on what was read; with `dry_run`, only reads and
/// returns the difference. An unchanged set sends no update.
pub async fn replace(
    target: &Rfc2136Target,
    records: &[PublishedRecord],
    dry_run: bool,
) -> Result<UpdateOutcome, UpdateError> {
    let (zone, name, wanted) = checked(target, records)?;
    let mut client = connect(target).await?;
    let served = served_with(&mut client, target, &name).await?;
    let diff = SetDiff::between(&served, &wanted);
    let ttl_changed = served.iter().any(|s| wanted.iter().all(|w| w.ttl != s.ttl));
    let unchanged = diff.is_empty() && !ttl_changed;
    if dry_run || unchanged {
        return Ok(UpdateOutcome { unchanged, diff });
    }
    send_update(&mut client, target, zone, &name, &served, &wanted).await?;
    Ok(UpdateOutcome {
        unchanged: false,
        diff,
    })
}

/// The update [`replace`] sends, guarded by `expected` instead of a fresh
/// read: it succeeds only if the server's set is exactly `expected` (empty:
/// no set), otherwise [`UpdateError::Raced`] and nothing changes. (What a
/// publisher racing another one meets; tests use it to prove the guard.)
pub async fn replace_if_served(
    target: &Rfc2136Target,
    records: &[PublishedRecord],
    expected: &[ServedTxt],
) -> Result<(), UpdateError> {
    let (zone, name, wanted) = checked(target, records)?;
    let mut client = connect(target).await?;
    send_update(&mut client, target, zone, &name, expected, &wanted).await
}

/// The zone, the one name of `records`, and the records as TXT data.
fn checked(
    target: &Rfc2136Target,
    records: &[PublishedRecord],
) -> Result<(Name, Name, Vec<ServedTxt>), UpdateError> {
    let Some(first) = records.first() else {
        return Err(UpdateError::Name("no records to publish".into()));
    };
    let (zone, name) = zone_and_name(target, &first.name)?;
    if let Some(other) = records.iter().find(|r| r.name != first.name) {
        return Err(UpdateError::Name(format!(
            "records for two names: {} and {}",
            first.name, other.name
        )));
    }
    Ok((
        zone,
        name,
        records.iter().map(ServedTxt::from_published).collect(),
    ))
}

async fn send_update(
    client: &mut Client<TokioRuntimeProvider>,
    target: &Rfc2136Target,
    zone: Name,
    name: &Name,
    expected: &[ServedTxt],
    wanted: &[ServedTxt],
) -> Result<(), UpdateError> {
    let new = record_set(name, wanted);
    let request = if expected.is_empty() {
        // Prerequisite: the set does not exist (RFC 2136 §2.4.3).
        client.create(new, zone)
    } else {
        // Prerequisite: the set is exactly `expected` (§2.4.2); delete it, add the new one.
        client.compare_and_swap(record_set(name, expected), new, zone)
    };
    let answer = tokio::time::timeout(target.timeout, request)
        .await
        .map_err(|_| UpdateError::Unreachable {
            server: target.server,
            detail: "no answer to the update in time".into(),
        })?;
    response(target.server, answer)?;
    tracing::info!(
        server = %target.server,
        name = %name,
        key = %target.key.name,
        records = wanted.len(),
        "_zajel TXT set replaced by RFC 2136 update"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_knsupdate_key_line_parses_and_debug_hides_the_secret() {
        let key =
            TsigKey::parse("# zajel\nhmac-sha256:zajel-publish:c2VjcmV0LXNlY3JldA==\n").unwrap();
        assert_eq!(key.name.to_ascii(), "zajel-publish");
        assert_eq!(key.algorithm, TsigAlgorithm::HmacSha256);
        let shown = format!("{key:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn a_bind_key_clause_parses_as_tsig_keygen_prints_it() {
        let text = "key \"zajel-publish\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LXNlY3JldA==\";\n};\n";
        let key = TsigKey::parse(text).unwrap();
        assert_eq!(key.name.to_ascii(), "zajel-publish");
        assert_eq!(key.algorithm, TsigAlgorithm::HmacSha256);
        assert_eq!(key.secret, b"secret-secret");
        // A secret holding `//`, after a comment line.
        let text = "# made by tsig-keygen\nkey \"k\" {\n\talgorithm hmac-sha256;\n\tsecret \"a//8\";\n};\n";
        assert_eq!(TsigKey::parse(text).unwrap().secret, [0x6b, 0xff, 0xfc]);
        for bad in [
            "key \"k\" { algorithm hmac-sha256; };",
            "key \"k\" { secret \"c2VjcmV0\"; };",
            "key \"k\" { algorithm hmac-md5; secret \"c2VjcmV0\"; };",
            "key \"k\" algorithm",
        ] {
            let error = TsigKey::parse(bad).unwrap_err();
            assert!(!error.contains("c2VjcmV0"), "{error}");
        }
    }

    #[test]
    fn bad_key_files_are_refused_without_quoting_the_secret() {
        for text in [
            "",
            "hmac-md5:k:c2VjcmV0",
            "hmac-sha256:k",
            "hmac-sha256:k:not base64 !!",
            "hmac-sha256:k:c2VjcmV0\nhmac-sha256:k2:c2VjcmV0",
        ] {
            let error = TsigKey::parse(text).unwrap_err();
            assert!(!error.contains("c2VjcmV0"), "{error}");
            assert!(!error.contains("not base64 !!"), "{error}");
        }
    }

    fn txt(ttl: u32, s: &str) -> ServedTxt {
        ServedTxt {
            ttl,
            strings: vec![s.into()],
        }
    }

    #[test]
    fn the_diff_keeps_adds_and_removes_by_content() {
        let served = [txt(300, "a"), txt(300, "b")];
        let wanted = [txt(300, "b"), txt(300, "c")];
        let diff = SetDiff::between(&served, &wanted);
        assert_eq!(diff.keep, vec![txt(300, "b")]);
        assert_eq!(diff.add, vec![txt(300, "c")]);
        assert_eq!(diff.remove, vec![txt(300, "a")]);
        assert_eq!(diff.lines(), vec!["- \"a\"", "+ \"c\"", "= \"b\""]);
        assert!(SetDiff::between(&wanted, &wanted).is_empty());
    }

    #[test]
    fn a_record_outside_the_zone_is_refused() {
        let target = Rfc2136Target {
            server: "127.0.0.1:53".parse().unwrap(),
            zone: "example.org".into(),
            key: TsigKey::parse("hmac-sha256:k:c2VjcmV0").unwrap(),
            timeout: Duration::from_secs(1),
        };
        let error = zone_and_name(&target, "_zajel.example.net.").unwrap_err();
        assert_eq!(error.kind(), "dns_name");
        assert!(zone_and_name(&target, "_zajel.example.org.").is_ok());
    }
}
