//! Error wording shared by the clients: an error and its sources in one line,
//! the form reports and logs give a failed connection or request.

use std::error::Error;

/// The whole error chain in one line (`a: b: c`), each text once (a source
/// whose text its error already shows is left out).
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(error) = current {
        let text = error.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        current = error.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("request failed")]
    struct Wrapper(#[source] std::io::Error);

    #[test]
    fn sources_are_joined_and_repeated_texts_left_out() {
        let io = || std::io::Error::other("connection refused");
        assert_eq!(
            error_chain(&Wrapper(io())),
            "request failed: connection refused"
        );
        assert_eq!(error_chain(&Outer(io())), "connection refused");
    }
}
