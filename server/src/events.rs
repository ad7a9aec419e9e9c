//! What the drivers report: the machines' events, every datagram (COAPLOG), and the
//! optional packet tap a recorder plugs in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use lwm2m_dtls::{CloseReason, FailureReason, Identity};
use lwm2m_proto::bootstrap::server::BootstrapEvent;
use lwm2m_proto::server::ServerEvent;
pub use lwm2m_proto::tap::{Direction, PacketTap};
use tokio::sync::broadcast;

/// Which of our servers a socket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The LwM2M Server (Core TS 1.1 §6.2-§6.4).
    Server,
    /// The LwM2M Bootstrap Server (Core TS 1.1 §6.1).
    Bootstrap,
}

impl Role {
    /// "LwM2M Server" or "Bootstrap Server", for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Server => "LwM2M Server",
            Self::Bootstrap => "Bootstrap Server",
        }
    }
}

/// One datagram, as a COAPLOG event carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Datagram {
    /// Which server's socket.
    pub role: Role,
    /// In or out.
    pub direction: Direction,
    /// Our socket's address.
    pub local: SocketAddr,
    /// The other side.
    pub peer: SocketAddr,
    /// The UDP payload.
    pub bytes: Arc<[u8]>,
    /// When the driver saw it.
    pub at: SystemTime,
}

/// An event of one of the drivers, shared by every subscriber.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
// Events travel inside an `Arc`, built once: the size of the enum does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// The LwM2M Server machine's event (registrations, notifications, Send, outcomes).
    Server(ServerEvent),
    /// The Bootstrap Server machine's event (sessions, steps, refusals).
    Bootstrap(BootstrapEvent),
    /// A datagram in or out (only produced while someone subscribes).
    CoapLog(Datagram),
    /// An event of the security of one of our servers' sockets (handshakes, sessions,
    /// identity refusals on its DTLS listener; a plain-CoAP Register refused), with the
    /// server it concerns.
    Security(Role, SecurityEvent),
    /// An event of another `serve` instance of the cluster ([`crate::cluster`]), as that
    /// instance's API shows it.
    Remote {
        /// The instance it comes from.
        instance: String,
        /// Its event name (`NOTIFICATION`).
        name: &'static str,
        /// Its JSON.
        data: serde_json::Value,
    },
}

impl From<ServerEvent> for Event {
    fn from(e: ServerEvent) -> Self {
        Self::Server(e)
    }
}

impl From<BootstrapEvent> for Event {
    fn from(e: BootstrapEvent) -> Self {
        Self::Bootstrap(e)
    }
}

/// What happened on a DTLS socket (the LwM2M Server's or the Bootstrap Server's)
/// ([`crate::dtls`]), typed as the DTLS layer reports it; the REST event stream shows
/// identities as `psk:IDENTITY` or `cn:COMMON-NAME` ([`crate::json`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecurityEvent {
    /// A DTLS handshake completed (RFC 6347 §4.2).
    Established {
        /// The client's address.
        peer: SocketAddr,
        /// Who it authenticated as.
        identity: Identity,
    },
    /// A DTLS handshake failed: unknown identity, wrong key, timeout, alert. Other sessions
    /// are not affected.
    HandshakeFailed {
        /// The client's address.
        peer: SocketAddr,
        /// The identity it claimed, if it got that far.
        identity: Option<Identity>,
        /// Why.
        reason: FailureReason,
    },
    /// An established session ended (close_notify, replaced by a new handshake from the
    /// same address, idle).
    Closed {
        /// The client's address.
        peer: SocketAddr,
        /// Who it had authenticated as.
        identity: Identity,
        /// Why.
        reason: CloseReason,
    },
    /// A Register (or Update, De-register) or a Bootstrap-Request under an endpoint name
    /// the session's identity does not belong to was refused with 4.03 (Core TS 1.1
    /// §7.1.8).
    IdentityMismatch {
        /// The client's address.
        peer: SocketAddr,
        /// The session's identity.
        identity: Identity,
        /// The endpoint name the request acted for.
        endpoint: String,
        /// The endpoint the identity belongs to in the security store, if any.
        owner: Option<String>,
    },
    /// A Register over plain CoAP of an endpoint that has credentials in the security
    /// store, while a DTLS listener runs: refused with 4.03, it must register over DTLS
    /// (Core TS 1.1 §7.1: its account's Security Mode is not NoSec).
    Insecure {
        /// The client's address.
        peer: SocketAddr,
        /// The endpoint name it registered as.
        endpoint: String,
    },
}

/// The broadcast channel every driver of one process reports to; `subscribe` as often as
/// needed. A subscriber that falls behind by more than the capacity loses the oldest
/// events (it is told how many, [`broadcast::error::RecvError::Lagged`]).
#[derive(Debug, Clone)]
pub struct EventBus(broadcast::Sender<Arc<Event>>);

impl EventBus {
    /// A bus holding up to `capacity` events per lagging subscriber.
    pub fn new(capacity: usize) -> Self {
        Self(broadcast::channel(capacity.max(1)).0)
    }

    /// A new subscriber; it sees events sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.0.subscribe()
    }

    /// Whether anyone listens (COAPLOG events are only built then).
    pub fn has_subscribers(&self) -> bool {
        self.0.receiver_count() > 0
    }

    /// Sends an event to the current subscribers (none is fine).
    pub fn send(&self, event: Event) {
        if self.has_subscribers() {
            let _ = self.0.send(Arc::new(event));
        }
    }
}

impl Default for EventBus {
    /// Capacity 4096.
    fn default() -> Self {
        Self::new(4096)
    }
}
