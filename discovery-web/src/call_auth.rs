//! Call authentication for a page's calls (issue 13's `auth` member of
//! `call_offer`/`call_answer`, see `zajel_wire::call`): the page's pairing
//! identity ([`CallKeys`], an X25519 secret that never leaves the wasm
//! module: only its public key goes out, on `register`), the MAC of an offer
//! or answer for the paired peer, its verification, and the check that the
//! DTLS certificate the peer presented (the DER from the page's `getStats`
//! `certificate` entry) is one its authenticated SDP named. The keys and the
//! MAC input are wire's, the same as call-probe's, so a browser's calls with
//! call-probe can be authenticated both ways.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zajel_wire::call::{certificate_fingerprint, sdp_fingerprints, CallAuth, CallAuthRole};
use zajel_wire::peer_keys;

/// Why call authentication could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallAuthError {
    /// No randomness for the secret.
    #[error("no random source: {0}")]
    Random(String),
    /// The peer's public key is not standard base64 of 32 bytes.
    #[error("peer public key: not base64 of 32 bytes")]
    PeerKey,
    /// The peer's key gives no shared secret (low order).
    #[error(transparent)]
    LowOrder(#[from] peer_keys::PeerKeyError),
    /// The role is neither `offer` nor `answer`.
    #[error("role {0:?}: expected offer or answer")]
    Role(String),
}

impl CallAuthError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Random(_) => "call_auth_random",
            Self::PeerKey => "call_auth_peer_key",
            Self::LowOrder(_) => "call_auth_low_order",
            Self::Role(_) => "call_auth_role",
        }
    }
}

/// A page's pairing identity.
pub struct CallKeys {
    secret: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for CallKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never printed.
        f.debug_struct("CallKeys")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

fn decode_key(text: &str) -> Result<[u8; 32], CallAuthError> {
    STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or(CallAuthError::PeerKey)
}

/// `offer` or `answer`.
pub fn role(text: &str) -> Result<CallAuthRole, CallAuthError> {
    match text {
        "offer" => Ok(CallAuthRole::Offer),
        "answer" => Ok(CallAuthRole::Answer),
        other => Err(CallAuthError::Role(other.to_string())),
    }
}

impl CallKeys {
    /// A fresh identity.
    pub fn generate() -> Result<Self, CallAuthError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| CallAuthError::Random(e.to_string()))?;
        Ok(Self::from_secret(secret))
    }

    /// The identity of `secret` (tests).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self {
            public: peer_keys::public_key(&secret),
            secret,
        }
    }

    /// The public key as `register`'s `publicKey` carries it.
    pub fn public_key(&self) -> String {
        STANDARD.encode(self.public)
    }

    fn auth_key(&self, peer: &[u8; 32]) -> Result<[u8; 32], CallAuthError> {
        let session = peer_keys::session_key(&self.secret, peer)?;
        Ok(peer_keys::call_auth_key(&session))
    }

    /// The `auth` of our `role` payload with `call_id` and `sdp`, for the peer
    /// whose public key `pair_matched` handed.
    pub fn sign(
        &self,
        peer_public: &str,
        role: CallAuthRole,
        call_id: &str,
        sdp: &str,
    ) -> Result<CallAuth, CallAuthError> {
        let peer = decode_key(peer_public)?;
        let key = self.auth_key(&peer)?;
        Ok(CallAuth::sign(
            &key,
            role,
            call_id,
            sdp,
            &self.public,
            &peer,
        ))
    }

    /// Whether the peer's `auth` (the member as received) is the MAC of its
    /// `role` payload with `call_id` and `sdp`. A present but unreadable
    /// `auth` is a failure, never "absent".
    pub fn verify(
        &self,
        peer_public: &str,
        role: CallAuthRole,
        call_id: &str,
        sdp: &str,
        auth: &serde_json::Value,
    ) -> Result<bool, CallAuthError> {
        let peer = decode_key(peer_public)?;
        let key = self.auth_key(&peer)?;
        Ok(CallAuth::from_value(auth).verify(&key, role, call_id, sdp, &peer, &self.public))
    }
}

/// Whether the DTLS certificate the peer presented (DER, standard base64, as
/// `getStats` gives it) is one the authenticated `sdp` named.
pub fn certificate_matches(sdp: &str, certificate_base64: &str) -> bool {
    let Ok(der) = STANDARD.decode(certificate_base64.trim()) else {
        return false;
    };
    sdp_fingerprints(sdp).contains(&certificate_fingerprint(&der))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\na=fingerprint:sha-256 AA:BB\r\n";

    #[test]
    fn a_page_and_a_peer_authenticate_each_other_and_a_swapped_fingerprint_fails() {
        let page = CallKeys::from_secret([1u8; 32]);
        let peer = CallKeys::from_secret([2u8; 32]);
        let auth = page
            .sign(&peer.public_key(), CallAuthRole::Offer, "call-1", SDP)
            .unwrap();
        let auth = serde_json::to_value(&auth).unwrap();
        let check = |sdp: &str, role, id: &str, auth: &serde_json::Value| {
            peer.verify(&page.public_key(), role, id, sdp, auth)
                .unwrap()
        };
        assert!(check(SDP, CallAuthRole::Offer, "call-1", &auth));
        let swapped = SDP.replace("AA:BB", "CC:DD");
        assert!(!check(&swapped, CallAuthRole::Offer, "call-1", &auth));
        assert!(!check(SDP, CallAuthRole::Answer, "call-1", &auth));
        assert!(!check(SDP, CallAuthRole::Offer, "call-2", &auth));
        assert!(!check(
            SDP,
            CallAuthRole::Offer,
            "call-1",
            &serde_json::json!({"v": 1})
        ));
        let stranger = CallKeys::from_secret([3u8; 32]);
        assert!(!stranger
            .verify(
                &page.public_key(),
                CallAuthRole::Offer,
                "call-1",
                SDP,
                &auth
            )
            .unwrap());
    }

    #[test]
    fn bad_keys_roles_and_certificates_are_refused() {
        let page = CallKeys::from_secret([1u8; 32]);
        let error = page
            .sign("not base64", CallAuthRole::Offer, "c", SDP)
            .unwrap_err();
        assert_eq!(error.kind(), "call_auth_peer_key");
        let zero = STANDARD.encode([0u8; 32]);
        let error = page.sign(&zero, CallAuthRole::Offer, "c", SDP).unwrap_err();
        assert_eq!(error.kind(), "call_auth_low_order");
        assert_eq!(role("renegotiate").unwrap_err().kind(), "call_auth_role");
        assert!(!format!("{page:?}").contains(&STANDARD.encode([1u8; 32])));

        let der = b"certificate";
        let sdp = format!("a=fingerprint:{}\r\n", certificate_fingerprint(der));
        assert!(certificate_matches(&sdp, &STANDARD.encode(der)));
        assert!(!certificate_matches(&sdp, &STANDARD.encode(b"another")));
        assert!(!certificate_matches(&sdp, "%%%"));
    }
}
