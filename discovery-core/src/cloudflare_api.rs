//! Cloudflare's API answers, read the same way by both TXT publishers (the
//! native `zajel-discover txt publish --cloudflare-zone` and the Worker's
//! Cron Trigger): the envelope `{"success","errors","messages","result",
//! "result_info"}`, where `success: false`, a non-2xx status or a missing
//! `result` is a refusal carrying the API's own error codes and messages,
//! and list paging. Pure data, so it builds for the Worker too.

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The most pages of a list either publisher reads (100 records a page).
pub const MAX_PAGES: u32 = 100;

/// Paging of a list answer.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ResultInfo {
    #[serde(default)]
    pub page: u32,
    #[serde(default)]
    pub total_pages: u32,
}

/// A zone as the zone lookup answers it.
#[derive(Debug, Deserialize)]
pub struct Zone {
    pub id: String,
}

/// An answer that is not a success: which call, its HTTP status, and the
/// API's errors as `code: message; …` (or why the body was not an envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRefusal {
    pub what: &'static str,
    pub status: u16,
    pub errors: String,
}

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    result: Option<T>,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

#[derive(Debug, Deserialize)]
struct ApiMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

/// Reads one answer of the call `what`: its result and paging, or the refusal.
pub fn parse_answer<T: DeserializeOwned>(
    what: &'static str,
    status: u16,
    body: &[u8],
) -> Result<(T, Option<ResultInfo>), ApiRefusal> {
    let envelope: Envelope<T> = serde_json::from_slice(body).map_err(|e| ApiRefusal {
        what,
        status,
        errors: format!("not Cloudflare's answer shape: {e}"),
    })?;
    let refused = |errors: &[ApiMessage]| ApiRefusal {
        what,
        status,
        errors: if errors.is_empty() {
            "no error given".into()
        } else {
            errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        },
    };
    if !envelope.success || !(200..300).contains(&status) {
        return Err(refused(&envelope.errors));
    }
    let result = envelope.result.ok_or_else(|| refused(&envelope.errors))?;
    Ok((result, envelope.result_info))
}

/// Whether a list answer has another page after `page` (at most [`MAX_PAGES`]).
pub fn has_next_page(info: Option<ResultInfo>, page: u32) -> bool {
    info.is_some_and(|info| info.page < info.total_pages) && page < MAX_PAGES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_gives_its_result_and_paging() {
        let body = br#"{"success":true,"errors":[],"messages":[],"result":[{"id":"z1"}],"result_info":{"page":1,"total_pages":2}}"#;
        let (zones, info) = parse_answer::<Vec<Zone>>("zone lookup", 200, body).unwrap();
        assert_eq!(zones[0].id, "z1");
        assert!(has_next_page(info, 1));
        assert!(!has_next_page(info.map(|i| ResultInfo { page: 2, ..i }), 2));
        assert!(!has_next_page(info, MAX_PAGES));
    }

    #[test]
    fn refusals_carry_the_apis_errors_or_say_what_the_body_was() {
        let denied = br#"{"success":false,"errors":[{"code":10000,"message":"Authentication error"}],"messages":[],"result":null}"#;
        let refusal = parse_answer::<Vec<Zone>>("zone lookup", 403, denied).unwrap_err();
        assert_eq!(refusal.errors, "10000: Authentication error");
        assert_eq!((refusal.what, refusal.status), ("zone lookup", 403));
        // A 2xx with success true but no result, and a non-2xx that claims success.
        let empty = br#"{"success":true,"errors":[],"result":null}"#;
        assert_eq!(
            parse_answer::<Vec<Zone>>("x", 200, empty)
                .unwrap_err()
                .errors,
            "no error given"
        );
        let odd = br#"{"success":true,"errors":[],"result":[]}"#;
        assert!(parse_answer::<Vec<Zone>>("x", 500, odd).is_err());
        let html = parse_answer::<Vec<Zone>>("x", 502, b"<html>bad gateway</html>").unwrap_err();
        assert!(
            html.errors.starts_with("not Cloudflare's answer shape"),
            "{}",
            html.errors
        );
    }
}
