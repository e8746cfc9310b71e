//! What `call`, `answer` and `demo` share: how a phone line reaches its relay (whom it
//! trusts), how its calls may reach TURN, which addresses they use, the tone they send and
//! their timeouts, which identity it pairs with and how strictly it authenticates calls
//! ([`LineOptions`]), and the one place those become the engine's
//! [`CallConfig`] ([`LineOptions::call_config`]). Each mode embeds a `LineOptions` and adds
//! what is its own (the caller's target and video, the answerer's echo and answer policy).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use url::Url;
use zajel_wire::pairing::PairingCode;
use zajel_wire::signaling::IceServer as WireIceServer;

use crate::client::{self, Registered, TurnPaths, TurnTransport};
use crate::config::{CallConfig, CallTimeouts, IceServer};
use crate::contacts::{Contacts, ContactsError};
use crate::error::ErrorKind;
use crate::identity::{default_state_dir, Identity, IdentityError};
use crate::line::LineKeys;
use zajel_client_net::signaling::{SessionError, TrustAnchors};

/// Which pairing identity a line uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IdentityChoice {
    /// A fresh identity in memory, contacts in memory: nothing read or written
    /// (`--ephemeral-identity`; the library's default, so tests and the demo keep no state).
    #[default]
    Ephemeral,
    /// The identity and contacts kept in this state folder (`None`: the default folder, see
    /// [`crate::identity::default_state_dir`]).
    StateDir(Option<PathBuf>),
}

/// Why the line's identity or contacts could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Contacts(#[from] ContactsError),
}

impl StateError {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Identity(error) => error.kind(),
            Self::Contacts(error) => error.kind(),
        }
    }
}

/// How one phone line on a relay sets up its calls.
#[derive(Debug, Clone)]
pub struct LineOptions {
    /// What `wss://` sessions trust.
    pub trust: TrustAnchors,
    /// Extra CAs, trusted besides the web PKI for `turns:` through the stream bridge.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// ICE transport policy relay (TURN only).
    pub relay_only: bool,
    /// The TURN transports calls may use.
    pub turn_transport: TurnTransport,
    /// Loopback addresses only (tests, demo).
    pub loopback: bool,
    /// Keep `stun:` servers (srflx candidates); never with `loopback`.
    pub with_stun: bool,
    /// Frequency of the tone this side sends, in Hz.
    pub tone_hz: f64,
    /// Each signaling step and each call step may take this long.
    pub step_timeout: Duration,
    /// The call state machine's timeouts.
    pub timeouts: CallTimeouts,
    /// The pairing identity and where contacts are kept.
    pub identity: IdentityChoice,
    /// Refuse calls from peers that send no call authentication.
    pub require_authenticated: bool,
    /// The name a new contact is saved under (`--name`); `None`: its pairing code.
    pub contact_name: Option<String>,
    /// Keep remote candidates on loopback and other local-only addresses (always with
    /// `loopback`).
    pub allow_loopback_candidates: bool,
}

impl LineOptions {
    /// Defaults for a line sending a `tone_hz` tone: the web PKI, any TURN transport, every
    /// address, STUN kept, 15 s steps, Zajel's timeouts.
    pub fn new(tone_hz: f64) -> Self {
        Self {
            trust: TrustAnchors::WebPki,
            extra_roots: Vec::new(),
            relay_only: false,
            turn_transport: TurnTransport::Auto,
            loopback: false,
            with_stun: true,
            tone_hz,
            step_timeout: Duration::from_secs(15),
            timeouts: CallTimeouts::default(),
            identity: IdentityChoice::Ephemeral,
            require_authenticated: false,
            contact_name: None,
            allow_loopback_candidates: false,
        }
    }

    /// The identity and contacts this line uses (loaded or created, or fresh in memory).
    pub fn line_keys(&self) -> Result<LineKeys, StateError> {
        let (identity, contacts) = match &self.identity {
            IdentityChoice::Ephemeral => (Identity::ephemeral()?, Contacts::in_memory()),
            IdentityChoice::StateDir(dir) => {
                let dir = match dir {
                    Some(dir) => dir.clone(),
                    None => default_state_dir()?,
                };
                let (identity, created) = Identity::load_or_create(&dir)?;
                if created {
                    tracing::info!(dir = %dir.display(), "created a new pairing identity");
                }
                (identity, Contacts::load(&dir)?)
            }
        };
        Ok(LineKeys {
            identity,
            contacts: Arc::new(Mutex::new(contacts)),
            new_contact_name: self.contact_name.clone(),
        })
    }

    /// Trusts `extra_roots` (`--ca-file`): `wss://` only them when any is given, `turns:`
    /// them besides the web PKI.
    pub fn trusting(self, extra_roots: Vec<CertificateDer<'static>>) -> Self {
        Self {
            trust: client::trust_anchors(&extra_roots),
            extra_roots,
            ..self
        }
    }

    /// Connects to `server` and registers `code` (random when `None`) with `identity`'s public
    /// key, asking for the relay's ICE servers.
    pub async fn register(
        &self,
        server: &Url,
        code: Option<PairingCode>,
        identity: &Identity,
    ) -> Result<Registered, SessionError> {
        client::connect_and_register_as(server, &self.trust, code, identity, self.step_timeout)
            .await
    }

    /// The engine's ICE servers for the relay's `offered` ones (TURN over the allowed
    /// transports behind taps and bridges; STUN kept when asked and not on loopback) and the
    /// routes to TURN behind them.
    pub async fn engine_ice_servers(
        &self,
        offered: &[WireIceServer],
    ) -> Result<(Vec<IceServer>, TurnPaths), client::TurnRouteError> {
        client::engine_ice_servers(
            offered,
            self.turn_transport,
            self.with_stun && !self.loopback,
            &self.extra_roots,
        )
        .await
    }

    /// The engine's configuration for calls through `ice_servers`: loopback-only or every
    /// address, the relay policy, this line's tone and timeouts. The mode then sets what is
    /// its own (video, echo, answer policy).
    pub fn call_config(&self, ice_servers: Vec<IceServer>) -> CallConfig {
        let base = if self.loopback {
            CallConfig::loopback()
        } else {
            CallConfig::default()
        };
        CallConfig {
            ice_servers,
            relay_only: self.relay_only,
            tone_hz: self.tone_hz,
            timeouts: self.timeouts,
            require_authenticated: self.require_authenticated,
            allow_loopback_candidates: self.loopback || self.allow_loopback_candidates,
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AnswerPolicy;

    fn turn() -> Vec<IceServer> {
        vec![IceServer {
            urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            username: "u".into(),
            credential: "c".into(),
        }]
    }

    #[test]
    fn a_loopback_line_gives_a_loopback_engine() {
        let options = LineOptions {
            loopback: true,
            relay_only: true,
            ..LineOptions::new(660.0)
        };
        let config = options.call_config(turn());
        assert!(config.loopback_only && config.include_loopback);
        assert!(config.udp_bind.ip().is_loopback());
        assert!(config.relay_only);
        assert_eq!(config.tone_hz, 660.0);
        assert_eq!(config.ice_servers, turn());
    }

    #[test]
    fn an_open_line_uses_every_address_and_its_own_timeouts() {
        let mut options = LineOptions::new(440.0);
        options.timeouts.ringing = Duration::from_millis(1500);
        let config = options.call_config(Vec::new());
        assert!(!config.loopback_only && !config.include_loopback);
        assert!(config.udp_bind.ip().is_unspecified());
        assert!(!config.relay_only);
        assert_eq!(config.tone_hz, 440.0);
        assert_eq!(config.timeouts.ringing, Duration::from_millis(1500));
        // What the mode sets is left at the engine's defaults.
        assert_eq!(config.answer_policy, AnswerPolicy::Manual);
        assert!(!config.echo);
    }

    #[test]
    fn extra_roots_replace_the_web_pki_for_wss() {
        let plain = LineOptions::new(440.0).trusting(Vec::new());
        assert!(matches!(plain.trust, TrustAnchors::WebPki));
        let root = CertificateDer::from(vec![1, 2, 3]);
        let pinned = LineOptions::new(440.0).trusting(vec![root.clone()]);
        assert!(
            matches!(&pinned.trust, TrustAnchors::Only(roots) if roots == std::slice::from_ref(&root))
        );
        assert_eq!(pinned.extra_roots, [root]);
    }
}
