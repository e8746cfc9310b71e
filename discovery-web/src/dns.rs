//! DNS-over-HTTPS in RFC 8484's wire format, without the transport: the TXT
//! query a page POSTs as `application/dns-message` ([`txt_query`], ID 0 as
//! RFC 8484 §4.1 asks, recursion desired) and the reading of the answer
//! ([`read_txt_answer`]) into the records discovery-core's
//! `txt::check_answer` verifies. Messages are built and parsed with
//! hickory-proto (the DNS library the native client resolves with).
//!
//! Reading rules: a body larger than a DNS message (65,535 bytes) is refused
//! before parsing; a message that does not parse, is not a response, or
//! answers another question is a protocol error; a truncated message says so
//! (DoH never needs truncation); NXDOMAIN or no TXT record is `empty`; any
//! other response code is a DNS failure. Every TXT record of the answer is
//! kept (junk records must not hide the genuine ones; `check_answer` bounds
//! the work).

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use zajel_discovery_core::report::Outcome;
use zajel_discovery_core::txt::MAX_ANSWER_BYTES;

pub use zajel_discovery_core::txt::TxtAnswer;

/// The media type of RFC 8484 requests and answers.
pub const DNS_MESSAGE: &str = "application/dns-message";

/// Why a query could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TXT query for {name:?}: {reason}")]
pub struct QueryError {
    pub name: String,
    pub reason: String,
}

/// The wire bytes of a TXT query for `name` (ID 0, recursion desired).
pub fn txt_query(name: &str) -> Result<Vec<u8>, QueryError> {
    let failed = |reason: String| QueryError {
        name: name.to_string(),
        reason,
    };
    let mut fqdn = Name::from_ascii(name).map_err(|e| failed(e.to_string()))?;
    fqdn.set_fqdn(true);
    let mut message = Message::new(0, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(fqdn, RecordType::TXT));
    message.to_vec().map_err(|e| failed(e.to_string()))
}

/// Reads a DoH answer to the TXT query for `name`.
pub fn read_txt_answer(name: &str, body: &[u8]) -> TxtAnswer {
    if body.len() > MAX_ANSWER_BYTES {
        return TxtAnswer::failed(
            Outcome::Protocol,
            format!(
                "answer of {} bytes is larger than a DNS message",
                body.len()
            ),
        );
    }
    let message = match Message::from_vec(body) {
        Ok(message) => message,
        Err(e) => return TxtAnswer::failed(Outcome::Protocol, format!("not a DNS message: {e}")),
    };
    if message.metadata.message_type != MessageType::Response {
        return TxtAnswer::failed(Outcome::Protocol, "not a DNS response");
    }
    let asked = Name::from_ascii(name).map(|mut n| {
        n.set_fqdn(true);
        n
    });
    let same_question = message.queries.len() == 1
        && asked.as_ref().is_ok_and(|asked| {
            let query = &message.queries[0];
            query.name().eq_case(asked) || *query.name() == *asked
        });
    if !same_question {
        return TxtAnswer::failed(Outcome::Protocol, "the answer is for another question");
    }
    if message.metadata.truncation {
        return TxtAnswer::failed(Outcome::Protocol, "truncated DNS message");
    }
    match message.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return TxtAnswer::failed(Outcome::Empty, format!("{name}: no such name"))
        }
        code => return TxtAnswer::failed(Outcome::DnsFailure, format!("response code {code}")),
    }
    let records: Vec<Vec<u8>> = message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::TXT(txt) => Some(txt.txt_data.concat()),
            _ => None,
        })
        .collect();
    TxtAnswer::of_records(records, format!("{name}: no TXT records"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::TXT;
    use hickory_proto::rr::Record;

    const NAME: &str = "_zajel.example.org";

    fn answer(name: &str, records: &[&[&str]], tweak: impl FnOnce(&mut Message)) -> Vec<u8> {
        let mut message = Message::new(0, MessageType::Response, OpCode::Query);
        let fqdn = Name::from_ascii(format!("{name}.")).unwrap();
        message.add_query(Query::query(fqdn.clone(), RecordType::TXT));
        for strings in records {
            let txt = TXT::new(strings.iter().map(|s| s.to_string()).collect());
            message
                .answers
                .push(Record::from_rdata(fqdn.clone(), 300, RData::TXT(txt)));
        }
        tweak(&mut message);
        message.to_vec().unwrap()
    }

    #[test]
    fn the_query_is_rfc_8484s_id_0_txt_question() {
        let bytes = txt_query(NAME).unwrap();
        let message = Message::from_vec(&bytes).unwrap();
        assert_eq!(message.metadata.id, 0);
        assert!(message.metadata.recursion_desired);
        assert_eq!(message.metadata.message_type, MessageType::Query);
        assert_eq!(message.queries.len(), 1);
        assert_eq!(message.queries[0].query_type(), RecordType::TXT);
        assert_eq!(message.queries[0].name().to_ascii(), "_zajel.example.org.");
        assert!(txt_query("bad..name").is_err());
    }

    #[test]
    fn every_txt_record_is_kept_with_its_strings_joined() {
        let body = answer(NAME, &[&["v=zajel1 a", "b"], &["junk"]], |_| {});
        let read = read_txt_answer(NAME, &body);
        assert_eq!(read.outcome, Outcome::Ok);
        assert_eq!(
            read.records,
            vec![b"v=zajel1 ab".to_vec(), b"junk".to_vec()]
        );
    }

    #[test]
    fn hostile_or_failed_answers_are_named_and_give_no_records() {
        let cases: Vec<(Vec<u8>, Outcome, &str)> = vec![
            (
                vec![0u8; MAX_ANSWER_BYTES + 1],
                Outcome::Protocol,
                "larger than",
            ),
            (
                b"<html>blocked</html>".to_vec(),
                Outcome::Protocol,
                "not a DNS message",
            ),
            (
                answer(NAME, &[&["x"]], |m| {
                    m.metadata.message_type = MessageType::Query
                }),
                Outcome::Protocol,
                "not a DNS response",
            ),
            (
                answer("_zajel.evil.example", &[&["x"]], |_| {}),
                Outcome::Protocol,
                "another question",
            ),
            (
                answer(NAME, &[&["x"]], |m| m.metadata.truncation = true),
                Outcome::Protocol,
                "truncated",
            ),
            (
                answer(NAME, &[], |m| {
                    m.metadata.response_code = ResponseCode::NXDomain
                }),
                Outcome::Empty,
                "no such name",
            ),
            (
                answer(NAME, &[&["x"]], |m| {
                    m.metadata.response_code = ResponseCode::ServFail
                }),
                Outcome::DnsFailure,
                "response code",
            ),
            (answer(NAME, &[], |_| {}), Outcome::Empty, "no TXT records"),
        ];
        for (body, outcome, detail) in cases {
            let read = read_txt_answer(NAME, &body);
            assert_eq!(read.outcome, outcome, "{read:?}");
            assert!(read.detail.contains(detail), "{read:?}");
            assert!(read.records.is_empty() || outcome == Outcome::Ok);
        }
    }
}
