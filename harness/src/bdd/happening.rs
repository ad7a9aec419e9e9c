//! What happened in a scenario, as the steps read it: the events of our servers and
//! simulated clients and what the DTLS layers reported, each with its (virtual) time.

use std::time::Duration;

use lwm2m_dtls::{CloseReason, FailureReason, Identity};
use lwm2m_proto::bootstrap::BootstrapEvent;
use lwm2m_proto::client::ClientEvent;
use lwm2m_proto::server::ServerEvent;

use crate::accounts::ServerRole;

/// Something that happened in a scenario, from any party.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "happenings are moved once into the timeline; boxing would burden every match"
)]
pub enum Happening {
    /// The LwM2M Server reported it.
    Server(ServerEvent),
    /// The Bootstrap Server reported it.
    Bootstrap(BootstrapEvent),
    /// A simulated client reported it.
    Client {
        /// The client's endpoint name.
        endpoint: String,
        /// What it reported.
        event: ClientEvent,
    },
    /// A DTLS layer reported it (CoAP over DTLS, RFC 7252 §9).
    Dtls(DtlsHappening),
}

impl Happening {
    /// True if the Bootstrap Server reported it (its events, its DTLS listener's).
    pub fn is_bootstrap(&self) -> bool {
        match self {
            Self::Bootstrap(_) => true,
            Self::Dtls(
                DtlsHappening::Established { server, .. }
                | DtlsHappening::HandshakeFailed { server, .. }
                | DtlsHappening::Refused { server, .. }
                | DtlsHappening::Closed { server, .. },
            ) => *server == ServerRole::Bootstrap,
            Self::Server(_) | Self::Client { .. } => false,
        }
    }
}

/// Which side of a DTLS session saw something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtlsSide {
    /// The LwM2M Server's DTLS listener.
    Server,
    /// The client.
    Client,
}

/// What a DTLS layer reported; `endpoint` is the client of the session (by its address).
#[derive(Debug, Clone, PartialEq)]
pub enum DtlsHappening {
    /// The LwM2M Server's listener completed a handshake: the client authenticated as
    /// `identity` (PSK identity, or certificate common name).
    Established {
        /// The client.
        endpoint: String,
        /// The server of the session.
        server: ServerRole,
        /// Who it authenticated as.
        identity: Identity,
    },
    /// A handshake failed, as `side` saw it.
    HandshakeFailed {
        /// The client.
        endpoint: String,
        /// The server of the session.
        server: ServerRole,
        /// Who saw it.
        side: DtlsSide,
        /// The PSK identity claimed, if the server got that far.
        identity: Option<Identity>,
        /// Why.
        reason: FailureReason,
    },
    /// A request over an established session was answered 4.03: its endpoint name is not
    /// the session identity's (Core TS 1.1 §7.1.8).
    Refused {
        /// The client that sent it.
        client: String,
        /// The server of the session.
        server: ServerRole,
        /// The session's identity.
        identity: Identity,
        /// The endpoint the request claimed.
        endpoint: String,
        /// The endpoint the identity belongs to, if any.
        owner: Option<String>,
    },
    /// An established session ended.
    Closed {
        /// The client.
        endpoint: String,
        /// The server of the session.
        server: ServerRole,
        /// Why.
        reason: CloseReason,
    },
}

/// A [`Happening`] with the (virtual) time it happened, since the start of the scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// When.
    pub at: Duration,
    /// What.
    pub happening: Happening,
}
