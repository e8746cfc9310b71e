//! A local stand-in for Cloudflare's DNS API (v4), because the real one
//! cannot be reached from tests: an in-process HTTP/1.1 server on
//! 127.0.0.1 answering the calls `zajel-discover txt publish
//! --cloudflare-zone` makes, in the documented request and response shapes
//! (envelope `{"success","errors","messages","result","result_info"}`):
//! `GET /zones?name=`, `GET /zones/:id/dns_records?type=&name=&page=&per_page=`,
//! `POST /zones/:id/dns_records`, `DELETE /zones/:id/dns_records/:id`, each
//! with `Authorization: Bearer <token>` (anything else: 403 with code 10000,
//! as Cloudflare answers). It keeps the records in memory and counts the
//! changes, so tests can check idempotence.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One DNS record as the API stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub id: String,
    pub record_type: String,
    pub name: String,
    pub content: String,
    pub ttl: u32,
}

#[derive(Debug, Default)]
struct State {
    records: Vec<StoredRecord>,
    next_id: u64,
    creates: usize,
    deletes: usize,
    requests: Vec<String>,
    /// The one token accepted.
    token: String,
}

/// The running stand-in.
pub struct CloudflareStandIn {
    /// `http://127.0.0.1:<port>/client/v4`
    pub api: String,
    pub zone: String,
    pub zone_id: String,
    state: Arc<Mutex<State>>,
    _task: tokio::task::JoinHandle<()>,
}

impl CloudflareStandIn {
    /// Serves one zone, accepting `token` only. Call inside a Tokio runtime.
    pub async fn start(zone: &str, token: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let state = Arc::new(Mutex::new(State {
            token: token.to_string(),
            ..State::default()
        }));
        let zone_id = "023e105f4ecef8ad9ca31a8372d0c353".to_string();
        let shared = (state.clone(), zone.to_string(), zone_id.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, shared).await;
                });
            }
        });
        Self {
            api: format!("http://127.0.0.1:{port}/client/v4"),
            zone: zone.into(),
            zone_id,
            state,
            _task: task,
        }
    }

    /// Stores a record as if made earlier (through the dashboard).
    pub fn insert(&self, record_type: &str, name: &str, content: &str, ttl: u32) {
        let mut state = self.state.lock().expect("state");
        state.next_id += 1;
        let id = format!("old{:028}", state.next_id);
        state.records.push(StoredRecord {
            id,
            record_type: record_type.into(),
            name: name.into(),
            content: content.into(),
            ttl,
        });
    }

    /// Accepts `token` from now on instead (the old one is refused, as after
    /// a token is rolled or revoked in the dashboard).
    pub fn replace_token(&self, token: &str) {
        self.state.lock().expect("state").token = token.to_string();
    }

    /// Removes a stored record (as if deleted through the dashboard).
    pub fn remove(&self, id: &str) {
        self.state
            .lock()
            .expect("state")
            .records
            .retain(|r| r.id != id);
    }

    /// The stored records.
    pub fn records(&self) -> Vec<StoredRecord> {
        self.state.lock().expect("state").records.clone()
    }

    /// (creations, deletions) so far.
    pub fn changes(&self) -> (usize, usize) {
        let state = self.state.lock().expect("state");
        (state.creates, state.deletes)
    }

    /// Every request line so far (`GET /client/v4/zones?name=…`).
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("state").requests.clone()
    }
}

fn envelope(success: bool, result: Value, errors: Value, info: Option<Value>) -> Value {
    let mut body = json!({"success": success, "errors": errors, "messages": [], "result": result});
    if let Some(info) = info {
        body["result_info"] = info;
    }
    body
}

async fn serve(
    stream: tokio::net::TcpStream,
    (state, zone, zone_id): (Arc<Mutex<State>>, String, String),
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        let mut authorization = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => authorization = value.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let (status, answer) = {
            let mut state = state.lock().expect("state");
            state.requests.push(format!("{method} {target}"));
            if authorization == format!("Bearer {}", state.token) {
                handle(&mut state, &zone, &zone_id, &method, &target, &body)
            } else {
                (
                    403,
                    envelope(
                        false,
                        Value::Null,
                        json!([{"code": 10000, "message": "Authentication error"}]),
                        None,
                    ),
                )
            }
        };
        let text = answer.to_string();
        let response = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
            if status < 300 { "OK" } else { "Error" },
            text.len()
        );
        write.write_all(response.as_bytes()).await?;
    }
}

fn handle(
    state: &mut State,
    zone: &str,
    zone_id: &str,
    method: &str,
    target: &str,
    body: &[u8],
) -> (u16, Value) {
    let url = url::Url::parse(&format!("http://x{target}")).expect("target");
    let query = |key: &str| {
        url.query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    let path = url.path().trim_start_matches("/client/v4");
    let records_path = format!("/zones/{zone_id}/dns_records");
    let not_found = (
        404,
        envelope(
            false,
            Value::Null,
            json!([{"code": 7003, "message": "Could not route"}]),
            None,
        ),
    );
    match (method, path) {
        ("GET", "/zones") => {
            let result: Vec<Value> = if query("name").as_deref() == Some(zone) {
                vec![json!({"id": zone_id, "name": zone, "status": "active"})]
            } else {
                Vec::new()
            };
            let count = result.len();
            (
                200,
                envelope(
                    true,
                    json!(result),
                    json!([]),
                    Some(
                        json!({"page": 1, "per_page": 20, "count": count, "total_count": count, "total_pages": 1}),
                    ),
                ),
            )
        }
        ("GET", p) if p == records_path => {
            let matching: Vec<&StoredRecord> = state
                .records
                .iter()
                .filter(|r| query("type").is_none_or(|t| t == r.record_type))
                .filter(|r| query("name").is_none_or(|n| n == r.name))
                .collect();
            let per_page: usize = query("per_page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            let page: usize = query("page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)
                .max(1);
            let total_pages = matching.len().div_ceil(per_page).max(1);
            let result: Vec<Value> = matching
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|r| json!({"id": r.id, "type": r.record_type, "name": r.name, "content": r.content, "ttl": r.ttl, "proxied": false}))
                .collect();
            let count = result.len();
            (
                200,
                envelope(
                    true,
                    json!(result),
                    json!([]),
                    Some(
                        json!({"page": page, "per_page": per_page, "count": count, "total_count": matching.len(), "total_pages": total_pages}),
                    ),
                ),
            )
        }
        ("POST", p) if p == records_path => {
            let Ok(request) = serde_json::from_slice::<Value>(body) else {
                return (
                    400,
                    envelope(
                        false,
                        Value::Null,
                        json!([{"code": 9207, "message": "Request body is invalid."}]),
                        None,
                    ),
                );
            };
            state.next_id += 1;
            let record = StoredRecord {
                id: format!("rec{:028}", state.next_id),
                record_type: request["type"].as_str().unwrap_or("").into(),
                name: request["name"].as_str().unwrap_or("").into(),
                content: request["content"].as_str().unwrap_or("").into(),
                ttl: request["ttl"].as_u64().unwrap_or(1) as u32,
            };
            state.creates += 1;
            let result = json!({"id": record.id, "type": record.record_type, "name": record.name, "content": record.content, "ttl": record.ttl});
            state.records.push(record);
            (200, envelope(true, result, json!([]), None))
        }
        ("DELETE", p) if p.starts_with(&format!("{records_path}/")) => {
            let id = &p[records_path.len() + 1..];
            let before = state.records.len();
            state.records.retain(|r| r.id != id);
            if state.records.len() == before {
                return (
                    404,
                    envelope(
                        false,
                        Value::Null,
                        json!([{"code": 81044, "message": "Record does not exist."}]),
                        None,
                    ),
                );
            }
            state.deletes += 1;
            (200, envelope(true, json!({"id": id}), json!([]), None))
        }
        _ => not_found,
    }
}
