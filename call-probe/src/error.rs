//! The machine-readable names of this crate's failures: [`ErrorKind`], which every public
//! error enum's `kind()` returns and which the JSON reports carry as `error_kind` beside their
//! human `error` message (the kinds are listed in the README).

use serde::Serialize;
use zajel_client_net::signaling::SessionError;

/// What failed, as a stable snake_case name (serialized as such).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The system gave no random bytes.
    NoRandomness,
    /// A host name did not resolve (or had no address).
    Resolve,
    /// A TLS setting (trusted certificates, server name) could not be built.
    TlsSetup,
    /// A TURN stream bridge (TCP/TLS) or TURN tap could not be started.
    TurnBridge,
    /// The relay's URL is not a signaling URL.
    SignalingUrl,
    /// The relay's host name did not resolve.
    SignalingDns,
    /// The TCP connection to the relay failed.
    SignalingTcp,
    /// The TLS handshake with the relay failed.
    SignalingTls,
    /// The WebSocket upgrade failed.
    SignalingUpgrade,
    /// A signaling step timed out.
    SignalingTimeout,
    /// The relay did not greet with `server_info`.
    SignalingNoGreeting,
    /// The relay refused (registration, a message).
    SignalingRefused,
    /// The relay connection closed.
    SignalingClosed,
    /// `--relay-only` and the relay handed out no usable TURN server.
    NoTurnServer,
    /// The peer rejected pairing.
    PairRejected,
    /// The relay refused the pair request (`pair_error`).
    PairRefused,
    /// The pair request timed out at the relay.
    PairTimeout,
    /// The relay answered with an `error`.
    RelayError,
    /// The relay connection is gone (the line's task ended).
    RelayClosed,
    /// An awaited event did not come in time.
    Timeout,
    /// The call engine stopped.
    EngineStopped,
    /// The engine could not place the call.
    PlaceCall,
    /// The engine could not hang up.
    Hangup,
    /// The call ended before media flowed (rejected, ringing timeout…).
    CallEndedEarly,
    /// Media flowed, but not audio both ways.
    OneWayAudio,
    /// With `--video`: video did not flow both ways (frames decoded on each side).
    OneWayVideo,
    /// Ctrl-C or SIGTERM: the run hung up (`call_hangup`) and stopped (exit 130).
    Interrupted,
    /// A server given (link, `--server`) is not a relay address.
    BadServer,
    /// Discovery ran and found no server.
    NoServerFound,
    /// Discovery could not be set up.
    DiscoveryConfig,
    /// The sharing link could not be drawn as a QR code.
    QrCode,
    /// `check`: not a STUN/TURN URL.
    NotAnIceUrl,
    /// `check`: the relay offers no server of this kind.
    NotOffered,
    /// `check`: no UDP socket.
    UdpSocket,
    /// `check`: the TURN client failed.
    TurnClient,
    /// `check`: no STUN answer in time (UDP blocked?).
    NoStunAnswer,
    /// `check`: no TURN allocation in time.
    NoAllocation,
    /// `check`: no TURN allocation, and the stream bridge never got its TCP/TLS stream up.
    TurnStreamFailed,
    /// `check`: a TURN allocation was granted, but no datagram went through the relay and back.
    NotRelayed,
    /// `demo`: the local world could not be started.
    World,
    /// The state folder, the identity key or the contacts file could not be read or written.
    StateDir,
    /// `--contact NAME` or `contacts rename|remove NAME`: no contact has that name (exit 2).
    UnknownContact,
    /// A contact name that is blank, too long, or already another contact's (exit 2).
    ContactName,
    /// `call --contact`: the contact did not show up at rendezvous within the time budget
    /// (`--find-timeout`), so no pairing and no call (exit 1).
    ContactNotFound,
    /// The peer's call authentication failed (bad `auth`, a certificate other than the
    /// authenticated one, a downgrade, or none with `--require-authenticated`): exit code 6.
    MediaNotAuthenticated,
    /// Pairing handed a public key other than the one pinned with `--peer-key`: exit code 6.
    PeerKeyMismatch,
    /// The relay the call connected to did not prove the key discovery verified for it (another
    /// server answered at that address since discovery checked it): `call` moves on.
    IdentityMismatch,
}

/// The kind of a signaling session failure.
pub fn session_kind(error: &SessionError) -> ErrorKind {
    match error {
        SessionError::Url(_) => ErrorKind::SignalingUrl,
        SessionError::Dns(_) => ErrorKind::SignalingDns,
        SessionError::Tcp(_) => ErrorKind::SignalingTcp,
        SessionError::Tls(_) => ErrorKind::SignalingTls,
        SessionError::Upgrade(_) => ErrorKind::SignalingUpgrade,
        SessionError::Timeout(_) => ErrorKind::SignalingTimeout,
        SessionError::NoGreeting(_) => ErrorKind::SignalingNoGreeting,
        SessionError::Refused(_) => ErrorKind::SignalingRefused,
        SessionError::Closed => ErrorKind::SignalingClosed,
    }
}
