//! # DTLS 1.2 for LwM2M
//!
//! What it does: the security layer of CoAP over DTLS (RFC 7252 §9) as LwM2M profiles it
//! (Core TS 1.1 §7.1, RFC 7925): DTLS 1.2 (RFC 6347) with `TLS_PSK_WITH_AES_128_CCM_8`
//! (pre-shared keys, Security object mode 0) and `TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8` with
//! P-256 certificates (mode 2), in two shapes:
//!
//! - sans-IO, like the CoAP exchange layer: [`DtlsServer`] routes the datagrams of any number
//!   of peers arriving on one socket to one session per peer address, and [`DtlsClient`] is
//!   one client session. Datagrams enter through `handle_datagram(now, ..)`, leave through
//!   `poll_transmit()`; time is passed in (`poll_timeout` / `handle_timeout`); what happened
//!   comes out of `poll_event()`. A simulator drives thousands of [`DtlsClient`]s over a few
//!   sockets this way.
//! - over tokio UDP sockets: [`UdpDtlsServer`] and [`UdpDtlsClient`], thin drivers of the
//!   above, with a 4 MiB socket receive buffer ([`bind_udp`]).
//!
//! In front of the handshake the server router does the cookie exchange itself, statelessly
//! (RFC 6347 §4.2.1): a ClientHello without a valid cookie gets a HelloVerifyRequest and
//! creates nothing, so floods and spoofed ClientHellos neither take handshake slots nor end
//! live sessions (RFC 6347 §4.2.8), and the ClientHello is accepted whatever its record
//! version (mbedTLS 2.x sends `{254, 0}`).
//!
//! Around the handshake it adds what a test harness needs: the authenticated [`Identity`]
//! with every received datagram (PSK identity or certificate common name, so the LwM2M
//! server can check it against the endpoint name), handshake failures as events with a
//! [`FailureReason`], the NSS key log ([`KeyLog`], [`KeyLogFile`]) so that Wireshark/tshark
//! decrypt captures, and per-session wire accounting ([`WireStats`]) that splits handshake
//! bytes, record overhead and application (CoAP) bytes.
//!
//! What it does not do: raw public keys (RFC 7250), Connection ID (RFC 9146), session
//! resumption, renegotiation; the `unknown_psk_identity` alert (an unknown identity gets
//! `internal_error`). Handshake flights are retransmitted at a fixed 1 s interval without the
//! back-off of RFC 6347 §4.2.4.1; every handshake is bounded by a timeout instead.
//!
//! The DTLS state machine itself is webrtc-rs's sans-IO `rtc-dtls`; no type of it appears in
//! this crate's API, so it can be replaced without touching the users.

#![warn(missing_docs)]

mod client;
mod config;
mod cookie;
mod keylog;
#[cfg(feature = "pki")]
pub mod pki;
pub mod record;
mod server;
mod session;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

pub use client::{ClientEvent, DtlsClient};
pub use config::{CertificateConfig, ClientConfig, Credentials, PskStore, ServerConfig};
pub use keylog::{KeyLog, KeyLogFile, SessionSecrets};
pub use server::{DtlsServer, ServerCounters, ServerEvent, SessionInfo};
pub use session::{SessionId, WireStats};
pub use udp::{RECEIVE_BUFFER_SIZE, UdpDtlsClient, UdpDtlsServer, bind_udp};

/// Who the peer of a session authenticated as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Identity {
    /// The PSK identity of the ClientKeyExchange (RFC 4279 §2), as raw bytes; LwM2M puts
    /// the Security object's "Public Key or Identity" resource (/0/x/3) here.
    Psk(Arc<[u8]>),
    /// The subject common name of the peer's end-entity certificate (Core TS 1.1 §7.1.8:
    /// the LwM2M client's certificate carries its endpoint name there).
    Certificate(Arc<str>),
}

impl Identity {
    /// The identity as text: the PSK identity (lossy UTF-8) or the certificate common name.
    pub fn as_text(&self) -> String {
        match self {
            Identity::Psk(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Identity::Certificate(name) => name.to_string(),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Psk(_) => write!(f, "psk:{}", self.as_text()),
            Identity::Certificate(name) => write!(f, "cn:{name}"),
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub peer: SocketAddr,
    /// The DTLS records.
    pub bytes: Vec<u8>,
}

/// Why a handshake did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureReason {
    /// The server's [`PskStore`] does not know the PSK identity the client sent.
    UnknownIdentity,
    /// The handshake did not complete within the configured handshake timeout, or its
    /// flights were retransmitted the maximum number of times without an answer.
    Timeout,
    /// The PSK identity is known but the peer's Finished did not decrypt: the two sides
    /// hold different keys (RFC 4279 §2, RFC 5246 §7.4.9). Reported by the server, which
    /// answers with a fatal alert.
    WrongKey,
    /// The peer ended the handshake with a fatal alert (RFC 5246 §7.2); the description
    /// when it was readable (alerts are plaintext before the handshake completes). A PSK
    /// client whose key the server rejects sees `unknown_psk_identity` (115) or, for an
    /// unknown identity, `internal_error` (80).
    PeerAlert(Option<u8>),
    /// This side's DTLS layer rejected the handshake (bad certificate, malformed or
    /// unexpected message); the message comes from it.
    Protocol(String),
    /// A fresh ClientHello from the same peer replaced a handshake that had not finished.
    Superseded,
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureReason::UnknownIdentity => f.write_str("unknown PSK identity"),
            FailureReason::Timeout => f.write_str("handshake timed out"),
            FailureReason::WrongKey => f.write_str("wrong PSK key: the Finished did not decrypt"),
            FailureReason::PeerAlert(Some(description)) => write!(
                f,
                "the peer sent the fatal alert {} ({description})",
                record::alert_name(*description)
            ),
            FailureReason::PeerAlert(None) => f.write_str("the peer sent a fatal alert"),
            FailureReason::Protocol(message) => write!(f, "handshake rejected: {message}"),
            FailureReason::Superseded => f.write_str("superseded by a new ClientHello"),
        }
    }
}

/// Why an established session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent close_notify (RFC 5246 §7.2.1).
    PeerClosed,
    /// This side closed it (`close`), sending close_notify.
    LocalClose,
    /// The peer started a new handshake from the same address (RFC 6347 §4.2.8): it lost
    /// the session (reboot, new process on the same port, NAT reuse).
    Replaced,
    /// Nothing was received for the configured idle timeout.
    IdleTimeout,
}

/// Errors of the API calls (handshake failures are events, see [`FailureReason`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DtlsError {
    /// The configuration cannot be used; the message says why.
    #[error("invalid DTLS configuration: {0}")]
    Config(String),
    /// There is no session with this peer.
    #[error("no DTLS session with {0}")]
    NoSession(SocketAddr),
    /// The session's handshake has not completed yet.
    #[error("the DTLS handshake with {0} has not completed")]
    NotEstablished(SocketAddr),
    /// The session is closed or its handshake failed.
    #[error("the DTLS session with {peer} is over: {reason}")]
    Closed {
        /// The peer of the session.
        peer: SocketAddr,
        /// What ended it.
        reason: String,
    },
    /// The handshake failed (from the UDP client's `connect`).
    #[error("DTLS handshake with {peer} failed: {reason}")]
    Handshake {
        /// The server.
        peer: SocketAddr,
        /// Why.
        reason: FailureReason,
    },
    /// The DTLS layer refused the operation; the message comes from it.
    #[error("DTLS: {0}")]
    Library(String),
    /// A socket operation failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}
