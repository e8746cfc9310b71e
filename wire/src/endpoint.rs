//! Signaling endpoints: the URL a server registers and clients connect to.
//!
//! The registry accepts `ws`, `wss`, `http` and `https` URLs with a host, at most
//! [`MAX_ENDPOINT_LEN`] characters. Clients connect over WebSocket, turning
//! `https://` into `wss://`, `http://` into `ws://` and a bare host into
//! `wss://host`, as Zajel's clients do.

use url::Url;

/// Longest endpoint the registry stores.
pub const MAX_ENDPOINT_LEN: usize = 512;

/// Why an endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint is longer than {MAX_ENDPOINT_LEN} characters")]
    TooLong,
    #[error("endpoint is not a valid URL")]
    NotUrl,
    #[error("endpoint scheme must be ws, wss, http or https")]
    Scheme,
    #[error("endpoint has no host")]
    NoHost,
    #[error("endpoint must not carry credentials")]
    Credentials,
}

/// Checks an endpoint as the registry stores it (the text is kept as given).
pub fn validate_endpoint(endpoint: &str) -> Result<Url, EndpointError> {
    if endpoint.chars().count() > MAX_ENDPOINT_LEN {
        return Err(EndpointError::TooLong);
    }
    let url = Url::parse(endpoint).map_err(|_| EndpointError::NotUrl)?;
    if !matches!(url.scheme(), "ws" | "wss" | "http" | "https") {
        return Err(EndpointError::Scheme);
    }
    match url.host_str() {
        Some(host) if !host.is_empty() => {}
        _ => return Err(EndpointError::NoHost),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EndpointError::Credentials);
    }
    Ok(url)
}

/// The WebSocket URL a client connects to for an endpoint or a bare host.
pub fn signaling_url(endpoint: &str) -> Result<Url, EndpointError> {
    let endpoint = endpoint.trim();
    let with_scheme = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("wss://{endpoint}")
    };
    let mut url = validate_endpoint(&with_scheme)?;
    let scheme = match url.scheme() {
        "https" => Some("wss"),
        "http" => Some("ws"),
        _ => None,
    };
    if let Some(scheme) = scheme {
        // Switching between special schemes of the same kind always succeeds.
        url.set_scheme(scheme).map_err(|_| EndpointError::Scheme)?;
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_four_schemes_with_a_host() {
        for ok in [
            "ws://relay.example:8080",
            "wss://relay.example/ws",
            "http://127.0.0.1:9000",
            "https://[::1]:443/signal",
        ] {
            assert!(validate_endpoint(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(
            validate_endpoint("ftp://relay.example"),
            Err(EndpointError::Scheme)
        );
        assert_eq!(
            validate_endpoint("javascript:alert(1)"),
            Err(EndpointError::Scheme)
        );
        assert_eq!(
            validate_endpoint("relay.example"),
            Err(EndpointError::NotUrl)
        );
        assert_eq!(validate_endpoint("wss://"), Err(EndpointError::NotUrl));
        assert_eq!(validate_endpoint(""), Err(EndpointError::NotUrl));
        assert_eq!(
            validate_endpoint("wss://user:pw@relay.example"),
            Err(EndpointError::Credentials)
        );
        let long = format!("wss://relay.example/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert_eq!(validate_endpoint(&long), Err(EndpointError::TooLong));
        let exact = format!("wss://r.ex/{}", "a".repeat(MAX_ENDPOINT_LEN - 11));
        assert_eq!(exact.len(), MAX_ENDPOINT_LEN);
        assert!(validate_endpoint(&exact).is_ok());
    }

    #[test]
    fn clients_map_http_to_websocket_and_bare_hosts_to_wss() {
        assert_eq!(
            signaling_url("https://relay.example/x").unwrap().as_str(),
            "wss://relay.example/x"
        );
        assert_eq!(
            signaling_url("http://127.0.0.1:9000").unwrap().as_str(),
            "ws://127.0.0.1:9000/"
        );
        assert_eq!(
            signaling_url("relay.example:8443").unwrap().as_str(),
            "wss://relay.example:8443/"
        );
        assert_eq!(
            signaling_url("ws://relay.example").unwrap().as_str(),
            "ws://relay.example/"
        );
    }
}
