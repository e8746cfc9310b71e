//! The native registry as an operator runs it (`bootstrap-worker serve`, a
//! child process): the trusted-proxy setting and `GET /metrics`.
//!
//! Trusted proxy: without `--trusted-proxy` (or from a peer outside it) a
//! client's own `X-Forwarded-For`/`Forwarded` are ignored, so it cannot
//! escape its rate limit by naming other addresses; behind a trusted proxy
//! (the test's loopback client stands in for it) two clients named by the
//! proxy get separate limits, and an address a client prepends itself does
//! not count.
//!
//! Metrics: the exposition is checked by a strict parser of the Prometheus
//! text format 0.0.4 written here, and by `promtool check metrics` when
//! promtool is on PATH. Debian ships promtool only inside the `prometheus`
//! package (the whole server, 96 MB installed; 13 s to install here, and no
//! service starts without systemd running); the test command installs it, so
//! CI always runs promtool, and a developer without it still gets the parser.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tests::process::ChildProcess;
use tests::registry_host::{binary, random_key, write_key_file};
use zajel_wire::keys;

struct Registry {
    _process: ChildProcess,
    base_url: String,
    /// With `--metrics-listen`: where the metrics are.
    metrics_url: Option<String>,
    _dir: tempfile::TempDir,
}

fn start(extra: &[&str]) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_key_file(dir.path(), &random_key());
    let mut command = Command::new(binary("bootstrap-worker").unwrap());
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--memory", "--policy", "open"])
        .arg("--signing-key-file")
        .arg(&key_file)
        .args(["--rate-limit", "2"])
        // The metrics check registers an endpoint nothing serves and counts it as listed.
        .args(["--admission-check", "off"])
        .args(extra);
    let mut process = ChildProcess::spawn("bootstrap-worker serve", command).unwrap();
    let base_url = process
        .wait_for(Duration::from_secs(20), |line| {
            line.strip_prefix("listening on ").map(str::to_string)
        })
        .unwrap();
    let metrics_url = extra.contains(&"--metrics-listen").then(|| {
        process
            .wait_for(Duration::from_secs(20), |line| {
                line.strip_prefix("metrics on ").map(str::to_string)
            })
            .unwrap()
    });
    Registry {
        _process: process,
        base_url,
        metrics_url,
        _dir: dir,
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A mutation (an unsigned unregister of nobody): the rate limit is checked
/// first, so its status says whether the client's bucket was empty (429).
fn unregister(registry: &Registry, headers: &[(&str, &str)]) -> u16 {
    let mut request = http().delete(format!("{}/servers/nobody", registry.base_url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().unwrap().status().as_u16()
}

#[test]
fn a_spoofed_forwarding_header_from_an_untrusted_peer_is_ignored() {
    // No setting, and a setting that does not include the peer (127.0.0.1).
    for extra in [&[][..], &["--trusted-proxy", "10.0.0.0/8,192.0.2.1"][..]] {
        let registry = start(extra);
        let statuses: Vec<u16> = (1..=3)
            .map(|n| {
                let named = format!("198.51.100.{n}");
                unregister(
                    &registry,
                    &[
                        ("X-Forwarded-For", named.as_str()),
                        ("Forwarded", &format!("for={named}")),
                    ],
                )
            })
            .collect();
        assert_ne!(statuses[0], 429, "{extra:?}: {statuses:?}");
        assert_ne!(statuses[1], 429, "{extra:?}: {statuses:?}");
        assert_eq!(
            statuses[2], 429,
            "{extra:?}: one bucket for the peer: {statuses:?}"
        );
    }
}

#[test]
fn behind_a_trusted_proxy_two_clients_get_separate_limits() {
    let registry = start(&["--trusted-proxy", "127.0.0.1"]);
    let a = [("X-Forwarded-For", "203.0.113.1")];
    assert_ne!(unregister(&registry, &a), 429);
    assert_ne!(unregister(&registry, &a), 429);
    assert_eq!(unregister(&registry, &a), 429, "client A's limit");
    // Client A prepends another address: the proxy appended A's, which is what counts.
    let a_spoofing = [("X-Forwarded-For", "198.51.100.77, 203.0.113.1")];
    assert_eq!(unregister(&registry, &a_spoofing), 429);
    // Client B, named by the proxy in the standard header, has its own bucket.
    let b = [("Forwarded", "for=\"[2001:db8::2]:4711\";proto=https")];
    assert_ne!(
        unregister(&registry, &b),
        429,
        "client B is not limited by A"
    );
    assert_ne!(unregister(&registry, &b), 429);
    assert_eq!(unregister(&registry, &b), 429, "client B's limit");
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn metrics_count_requests_refusals_and_entries_in_the_prometheus_format() {
    let registry = start(&["--trusted-proxy", "127.0.0.1"]);
    let key = random_key();
    let public = keys::public_key_to_base64(&key.verifying_key());
    let server_id = keys::server_id_for(&key.verifying_key());
    let body = serde_json::json!({
        "serverId": server_id, "endpoint": "wss://relay.example.org", "publicKey": public,
    });
    let client = http();
    let status = client
        .post(format!("{}/servers", registry.base_url))
        .header("X-Forwarded-For", "203.0.113.10")
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert_eq!(
        client
            .get(format!("{}/servers", registry.base_url))
            .send()
            .unwrap()
            .status(),
        200
    );
    // A forged signature on someone's unregister.
    let encoded = server_id
        .replace(':', "%3A")
        .replace('+', "%2B")
        .replace('/', "%2F");
    let forged = client
        .delete(format!("{}/servers/{encoded}", registry.base_url))
        .header("X-Forwarded-For", "203.0.113.20")
        .header("X-Zajel-Timestamp", now_ms().to_string())
        .header("X-Zajel-Signature", "A".repeat(86) + "==")
        .send()
        .unwrap()
        .status();
    assert_eq!(forged, 401);
    // Three mutations from one client: the third is rate limited.
    for _ in 0..3 {
        unregister(&registry, &[("X-Forwarded-For", "203.0.113.30")]);
    }
    let response = client
        .get(format!("{}/metrics", registry.base_url))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().unwrap();
    let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let value = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&format!(
            "zajel_registry_build_info{{version=\"{version}\"}}"
        )),
        1.0
    );
    assert_eq!(value("zajel_registry_entries"), 1.0);
    assert_eq!(
        value("zajel_registry_requests_total{method=\"POST\",route=\"/servers\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        value("zajel_registry_requests_total{method=\"GET\",route=\"/servers\",status=\"200\"}"),
        1.0
    );
    assert_eq!(value("zajel_registry_requests_total{method=\"DELETE\",route=\"/servers/{id}\",status=\"401\"}"), 1.0);
    assert_eq!(value("zajel_registry_requests_total{method=\"DELETE\",route=\"/servers/{id}\",status=\"429\"}"), 1.0);
    assert_eq!(
        value("zajel_registry_refusals_total{reason=\"invalid_signature\"}"),
        1.0
    );
    assert_eq!(
        value("zajel_registry_refusals_total{reason=\"rate_limited\"}"),
        1.0
    );
    assert_eq!(value("zajel_registry_rate_limited_total"), 1.0);
    assert_eq!(value("zajel_registry_signature_failures_total"), 1.0);
    promtool_check(&text);
}

/// `promtool check metrics` on `text`, when promtool is installed.
fn promtool_check(text: &str) {
    use std::io::Write;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: the strict parser alone checked the exposition");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Parses the Prometheus text format 0.0.4 strictly, as promtool's linter
/// would: every family has one `# HELP` and one `# TYPE` (counter or gauge)
/// before its samples, its samples are contiguous, counters end in `_total`,
/// names and label names are valid, label values are quoted with only the
/// three escapes, values are numbers, no series repeats, the text ends with
/// a newline. Returns series (name with labels as written) → value.
fn parse_exposition(text: &str) -> Result<HashMap<String, f64>, String> {
    fn valid_name(name: &str, colon: bool) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }
    if !text.ends_with('\n') {
        return Err("does not end with a newline".into());
    }
    let mut samples = HashMap::new();
    let mut helped = HashSet::new();
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut finished = HashSet::new();
    let mut current: Option<String> = None;
    for (number, line) in text.lines().enumerate() {
        let at = |what: &str| format!("line {}: {what}: {line:?}", number + 1);
        if line.is_empty() {
            return Err(at("empty line"));
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let (keyword, rest) = rest.split_once(' ').ok_or_else(|| at("bare comment"))?;
            let (name, value) = rest.split_once(' ').ok_or_else(|| at("no text"))?;
            if !valid_name(name, true) {
                return Err(at("bad metric name"));
            }
            if current.as_deref() != Some(name) {
                if let Some(previous) = current.take() {
                    finished.insert(previous);
                }
                if finished.contains(name) {
                    return Err(at("family split in two"));
                }
                current = Some(name.to_string());
            }
            match keyword {
                "HELP" => {
                    if !helped.insert(name.to_string()) || value.trim().is_empty() {
                        return Err(at("HELP repeated or empty"));
                    }
                }
                "TYPE" => {
                    if !["counter", "gauge"].contains(&value) {
                        return Err(at("unexpected type"));
                    }
                    if value == "counter" && !name.ends_with("_total") {
                        return Err(at("a counter's name must end in _total"));
                    }
                    if typed.insert(name.to_string(), value.to_string()).is_some() {
                        return Err(at("TYPE repeated"));
                    }
                }
                _ => return Err(at("unknown comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let value: f64 = value.parse().map_err(|_| at("value is not a number"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (
                name,
                Some(
                    labels
                        .strip_suffix('}')
                        .ok_or_else(|| at("unclosed labels"))?,
                ),
            ),
            None => (series, None),
        };
        if !valid_name(name, true) {
            return Err(at("bad metric name"));
        }
        if current.as_deref() != Some(name) || !typed.contains_key(name) || !helped.contains(name) {
            return Err(at("sample outside its family, or before its HELP and TYPE"));
        }
        if let Some(mut rest) = labels {
            let mut names = HashSet::new();
            while !rest.is_empty() {
                let (label, after) = rest.split_once("=\"").ok_or_else(|| at("bad label"))?;
                if !valid_name(label, false) || label.starts_with("__") || !names.insert(label) {
                    return Err(at("bad or repeated label name"));
                }
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\' | '"' | 'n')) => {}
                            _ => return Err(at("bad escape")),
                        },
                        Some((i, '"')) => break i,
                        Some((_, '\n')) | None => return Err(at("unterminated label value")),
                        Some(_) => {}
                    }
                };
                rest = &after[end + 1..];
                if let Some(more) = rest.strip_prefix(',') {
                    rest = more;
                } else if !rest.is_empty() {
                    return Err(at("junk after a label"));
                }
            }
        }
        if samples.insert(series.to_string(), value).is_some() {
            return Err(at("series repeated"));
        }
    }
    for name in typed.keys() {
        if !helped.contains(name) {
            return Err(format!("{name} has a TYPE but no HELP"));
        }
    }
    Ok(samples)
}

#[test]
fn the_strict_parser_rejects_what_promtool_rejects() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
    assert!(parse_exposition(good).is_ok());
    for bad in [
        "# HELP a_total A.\n# TYPE a_total counter\na_total 2",
        "# HELP a A.\n# TYPE a counter\na 2\n",
        "a_total 2\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1} 2\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"\\q\"} 2\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total 2\na_total 3\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total two\n",
        "# HELP a_total A.\n# TYPE a_total summary\na_total 2\n",
        "# HELP g G.\n# TYPE g gauge\ng 1\n# HELP h H.\n# TYPE h gauge\nh 1\ng{x=\"1\"} 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "{bad:?}");
    }
}

/// `--metrics-listen` (and `ZAJEL_REGISTRY_METRICS_LISTEN`): `/metrics` on
/// an address of its own and no longer on the public one (issue 19).
#[test]
fn metrics_can_listen_on_their_own_address_and_leave_the_public_one() {
    for by_env in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let key_file = write_key_file(dir.path(), &random_key());
        let mut command = Command::new(binary("bootstrap-worker").unwrap());
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--memory", "--policy", "open"])
            .arg("--signing-key-file")
            .arg(&key_file);
        if by_env {
            command.env("ZAJEL_REGISTRY_METRICS_LISTEN", "127.0.0.1:0");
        } else {
            command.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        let mut process = ChildProcess::spawn("bootstrap-worker serve", command).unwrap();
        let base_url = process
            .wait_for(Duration::from_secs(20), |line| {
                line.strip_prefix("listening on ").map(str::to_string)
            })
            .unwrap();
        let metrics_url = process
            .wait_for(Duration::from_secs(20), |line| {
                line.strip_prefix("metrics on ").map(str::to_string)
            })
            .unwrap();
        let client = http();
        let response = client.get(&metrics_url).send().unwrap();
        assert_eq!(response.status(), 200, "{by_env}");
        let text = response.text().unwrap();
        parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let public = client.get(format!("{base_url}/metrics")).send().unwrap();
        assert_eq!(public.status(), 404, "{by_env}");
        // The public side is otherwise unchanged; the metrics side serves nothing else.
        let servers = client.get(format!("{base_url}/servers")).send().unwrap();
        assert_eq!(servers.status(), 200);
        let other = metrics_url.replace("/metrics", "/servers");
        assert_eq!(client.get(other).send().unwrap().status(), 404);
    }
}

/// `GET /metrics` on the public port counts against the per-address read
/// limit like any read (it counts the registry's entries): a client that
/// floods it gets the registry's 429 with `Retry-After`, and its other
/// reads are held back with it. On the operator's own metrics address it is
/// not limited.
#[test]
fn public_metrics_reads_are_rate_limited_like_any_read() {
    let registry = start(&["--read-rate-limit", "3"]);
    let client = http();
    let metrics = format!("{}/metrics", registry.base_url);
    for n in 0..3 {
        let response = client.get(&metrics).send().unwrap();
        assert_eq!(response.status(), 200, "read {n}");
    }
    let flooded = client.get(&metrics).send().unwrap();
    assert_eq!(flooded.status(), 429);
    assert!(flooded.headers().contains_key("retry-after"));
    let body = flooded.text().unwrap();
    assert!(body.contains("\"error\""), "{body}");
    let servers = client
        .get(format!("{}/servers", registry.base_url))
        .send()
        .unwrap();
    assert_eq!(servers.status(), 429, "the same address's list read");

    let separate = start(&["--read-rate-limit", "3", "--metrics-listen", "127.0.0.1:0"]);
    let metrics_url = separate.metrics_url.expect("metrics on their own address");
    for n in 0..10 {
        let response = client.get(&metrics_url).send().unwrap();
        assert_eq!(response.status(), 200, "scrape {n} on the metrics address");
    }
}
