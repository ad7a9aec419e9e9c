//! # The sans-IO CoAP exchange layer
//!
//! What it does: everything between "a datagram arrived" and "a complete request or response
//! is ready" for CoAP over UDP, as one state machine per local socket ([`Endpoint`]) serving
//! any number of peers:
//!
//! - message layer (RFC 7252 §4): confirmable retransmission with exponential back-off
//!   (§4.2, §4.8), acknowledgements, resets, deduplication of incoming message IDs for
//!   EXCHANGE_LIFETIME / NON_LIFETIME (§4.5), message ID and token allocation (§4.4, §5.3.1),
//!   NSTART congestion control (§4.7), rejection of malformed messages (§4.2, §4.3);
//! - request/response layer (RFC 7252 §5.2): piggybacked and separate responses, matching by
//!   token and peer, non-confirmable requests and responses;
//! - Observe (RFC 7641) in both roles: notifications with sequence numbers, the freshness
//!   rule of §3.4, cancellation by Reset or by a GET with Observe = 1;
//! - block-wise transfers (RFC 7959) in both directions with size negotiation, so users only
//!   ever see complete bodies.
//!
//! What it does not do: no sockets, no clock, no tasks. Time enters as the `now` argument of
//! every call (never read from the system), datagrams enter through
//! [`Endpoint::handle_datagram`] and leave through [`Endpoint::poll_transmit`]; the caller
//! sleeps until [`Endpoint::poll_timeout`] and then calls [`Endpoint::handle_timeout`]. All
//! random choices (tokens, message IDs, retransmission jitter) come from one ChaCha generator
//! seeded by [`Config::seed`], so a run is reproducible.
//!
//! Messages are [`coap_lite::Packet`] values; the option helpers of [`message`] cover what
//! coap-lite lacks (20-bit block numbers, validated decoding).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use lwm2m_proto::coap::{message, Config, Endpoint, Event, RequestType, ResponseType};
//!
//! let (client_addr, server_addr) = ("127.0.0.2:40000".parse().unwrap(), "127.0.0.1:5683".parse().unwrap());
//! let mut client = Endpoint::new(Config { seed: 1, ..Config::default() });
//! let mut server = Endpoint::new(Config { seed: 2, ..Config::default() });
//! let now = Instant::now(); // the caller's clock; the endpoints never read one
//!
//! let id = client.send_request(now, server_addr, message::request(RequestType::Get, "/3/0/0")).unwrap();
//! let datagram = client.poll_transmit().unwrap();
//! server.handle_datagram(now, client_addr, &datagram.bytes);
//! let Some(Event::Request { request, .. }) = server.poll_event() else { panic!() };
//! assert_eq!(request.path(), "/3/0/0");
//! server.respond(now, request.handle, message::response(ResponseType::Content, b"Open Mobile Alliance".to_vec())).unwrap();
//! let datagram = server.poll_transmit().unwrap(); // the ACK with the response piggybacked
//! client.handle_datagram(now + Duration::from_millis(30), server_addr, &datagram.bytes);
//! let Some(Event::Response { id: answered, response }) = client.poll_event() else { panic!() };
//! assert_eq!((answered, response.payload.as_slice()), (id, &b"Open Mobile Alliance"[..]));
//! ```

mod client;
mod endpoint;
mod exchange;
pub mod message;
mod server;
mod state;
pub mod uri;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

pub use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
pub use endpoint::Endpoint;
pub use message::{BlockOption, BlockOptionError, MessageFormatError};
pub use server::{IncomingRequest, RequestHandle};

/// Transmission parameters and resource limits of an [`Endpoint`].
///
/// Defaults are the RFC 7252 §4.8 values and the limits stated on each field. Values out of
/// range are clamped when the endpoint is created (see [`Endpoint::new`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Seed of the random generator behind tokens, message IDs and retransmission jitter.
    pub seed: u64,
    /// ACK_TIMEOUT (RFC 7252 §4.8): 2 s.
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR (RFC 7252 §4.8): 1.5; the first timeout is drawn uniformly from
    /// `[ack_timeout, ack_timeout * ack_random_factor]` (§4.2). Clamped to at least 1.0.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT (RFC 7252 §4.8): 4.
    pub max_retransmit: u32,
    /// NSTART (RFC 7252 §4.7): outstanding requests per peer; further requests wait in order.
    /// Default 1, clamped to at least 1.
    pub nstart: usize,
    /// Length of the tokens this endpoint generates (RFC 7252 §5.3.1), 1 to 8 bytes.
    /// Default 4.
    pub token_length: usize,
    /// EXCHANGE_LIFETIME (RFC 7252 §4.8.2): how long a confirmable message ID is remembered
    /// for deduplication; 247 s.
    pub exchange_lifetime: Duration,
    /// NON_LIFETIME (RFC 7252 §4.8.2): the same for non-confirmable messages; 145 s.
    pub non_lifetime: Duration,
    /// How long a request waits for its response once the message layer is done with it:
    /// after the empty ACK of a separate response (RFC 7252 §5.2.2) or after sending a
    /// non-confirmable request (§5.2.3). Default MAX_TRANSMIT_WAIT, 93 s.
    pub response_timeout: Duration,
    /// How long an incoming confirmable request may stay unanswered before the endpoint sends
    /// an empty ACK and the answer becomes a separate response (RFC 7252 §5.2.2). Keep it
    /// below ACK_TIMEOUT so that the peer does not retransmit. Default 1 s.
    pub separate_response_delay: Duration,
    /// Largest datagram this endpoint emits, in bytes (RFC 7252 §4.6: 1152 is the usual
    /// bound when the path MTU is unknown). Default 1152, clamped to at least 64.
    pub max_message_size: usize,
    /// Preferred block size for block-wise transfers (RFC 7959 §2.2): a power of two from 16
    /// to 1024, rounded down. Default 1024; the size actually used is further reduced so that
    /// every datagram fits in `max_message_size`.
    pub preferred_block_size: usize,
    /// Largest body accepted through block-wise transfer, in either direction; a larger
    /// incoming request body gets 4.13 (RFC 7959 §2.9.3). Default 1 MiB.
    pub max_body_size: usize,
    /// Upper bound on remembered incoming message IDs; the oldest is forgotten first.
    /// Default 16384.
    pub dedup_capacity: usize,
    /// Upper bound on block-wise transfers kept in memory at once, for each of the two
    /// caches (request bodies being reassembled, response bodies being served block by
    /// block); the least recently used is dropped first. Default 256.
    pub block_cache_capacity: usize,
    /// How long an idle block-wise transfer is kept (RFC 7959 §2.4, §2.5). Default 247 s
    /// (EXCHANGE_LIFETIME).
    pub block_lifetime: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0,
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            nstart: 1,
            token_length: 4,
            exchange_lifetime: Duration::from_secs(247),
            non_lifetime: Duration::from_secs(145),
            response_timeout: Duration::from_secs(93),
            separate_response_delay: Duration::from_secs(1),
            max_message_size: 1152,
            preferred_block_size: 1024,
            max_body_size: 1 << 20,
            dedup_capacity: 16384,
            block_cache_capacity: 256,
            block_lifetime: Duration::from_secs(247),
        }
    }
}

impl Config {
    /// MAX_TRANSMIT_SPAN (RFC 7252 §4.8.2): the longest time from the first transmission of
    /// a confirmable message to its last retransmission,
    /// `ACK_TIMEOUT * (2^MAX_RETRANSMIT - 1) * ACK_RANDOM_FACTOR` (45 s by default).
    pub fn max_transmit_span(&self) -> Duration {
        scaled(
            self.ack_timeout,
            (2f64.powi(self.max_retransmit.min(30) as i32) - 1.0) * self.ack_random_factor,
        )
    }

    /// MAX_TRANSMIT_WAIT (RFC 7252 §4.8.2): the longest time from the first transmission of
    /// a confirmable message until the sender gives up,
    /// `ACK_TIMEOUT * (2^(MAX_RETRANSMIT + 1) - 1) * ACK_RANDOM_FACTOR` (93 s by default).
    pub fn max_transmit_wait(&self) -> Duration {
        scaled(
            self.ack_timeout,
            (2f64.powi(self.max_retransmit.min(30) as i32 + 1) - 1.0) * self.ack_random_factor,
        )
    }
}

/// `duration * factor`, saturating instead of panicking.
fn scaled(duration: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// Identifies a request sent with [`Endpoint::send_request`] in the events about it; for a
/// request with Observe = 0 it also identifies the observation (RFC 7641 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Identifies an observation this endpoint serves as the notifying side (RFC 7641 §4.1),
/// created by [`Endpoint::accept_observation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObservationId(pub u64);

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub peer: SocketAddr,
    /// The encoded CoAP message (never longer than [`Config::max_message_size`]).
    pub bytes: Vec<u8>,
}

/// Why an observation served by this endpoint ended (RFC 7641 §3.6, §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// The observer answered a notification with a Reset (RFC 7641 §3.6).
    Reset,
    /// A confirmable notification was never acknowledged (RFC 7641 §4.5).
    Timeout,
    /// The observer sent a GET (or FETCH) with the observation's token and Observe = 1
    /// (RFC 7641 §3.6, §4.1). The request itself is delivered as [`Event::Request`] and must
    /// be answered.
    Deregistered,
}

/// What the endpoint reports to its user; drained with [`Endpoint::poll_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A new request from `peer` (duplicates never appear twice; block-wise request bodies
    /// arrive reassembled, RFC 7959 §2.5). Answer it with [`Endpoint::respond`] or
    /// [`Endpoint::accept_observation`].
    Request {
        /// Where the request came from.
        peer: SocketAddr,
        /// The request and the handle to answer it.
        request: IncomingRequest,
    },
    /// The response to a request sent with [`Endpoint::send_request`], with the whole body
    /// when it came block-wise (RFC 7959 §2.4). For a request with Observe = 0 a response
    /// that carries an Observe option establishes the observation (RFC 7641 §3.1):
    /// [`Event::Notification`]s follow under the same id.
    Response {
        /// The request this answers.
        id: RequestId,
        /// The response (token, message ID and type as received; block options removed).
        response: Packet,
    },
    /// A request failed; nothing more is reported for `id`.
    RequestFailed {
        /// The failed request.
        id: RequestId,
        /// Why.
        error: ExchangeError,
    },
    /// A fresh notification of an established observation (RFC 7641 §3.2); notifications
    /// older than the last one delivered are dropped (§3.4).
    Notification {
        /// The observing request.
        id: RequestId,
        /// The notification, whole body.
        response: Packet,
        /// Its Observe sequence number (24 bits).
        seq: u32,
    },
    /// The peer ended an observation with a response without Observe option, normally an
    /// error (RFC 7641 §3.2, §4.2); nothing more is reported for `id`.
    ObservationEnded {
        /// The observing request.
        id: RequestId,
        /// The final response.
        response: Packet,
    },
    /// An observation this endpoint served ended; [`Endpoint::notify`] now fails for `id`.
    ObservationCancelled {
        /// The observation.
        id: ObservationId,
        /// Why.
        reason: CancelReason,
    },
    /// A datagram was not valid CoAP and was ignored (or rejected with a Reset when it was a
    /// confirmable message with a readable header, RFC 7252 §4.2). For the logs.
    Malformed {
        /// Where it came from.
        peer: SocketAddr,
        /// What was wrong with it.
        reason: String,
    },
}

/// Why a request failed, or why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// A confirmable message was transmitted 1 + MAX_RETRANSMIT times without an
    /// acknowledgement (RFC 7252 §4.2).
    #[error("no acknowledgement after {transmissions} transmissions (RFC 7252 §4.2)")]
    Timeout {
        /// How many times the message was sent.
        transmissions: u32,
    },
    /// The request was acknowledged (or was non-confirmable) but no response arrived within
    /// [`Config::response_timeout`] (RFC 7252 §5.2.2, §5.2.3).
    #[error("no response within {waited:?} (RFC 7252 §5.2.2)")]
    NoResponse {
        /// How long the endpoint waited.
        waited: Duration,
    },
    /// The peer rejected the message with a Reset (RFC 7252 §4.2, §4.3).
    #[error("the peer answered with a Reset (RFC 7252 §4.2)")]
    Reset,
    /// A block-wise transfer went wrong (RFC 7959).
    #[error("block-wise transfer failed: {reason}")]
    BlockTransfer {
        /// What went wrong.
        reason: String,
    },
    /// A body assembled from blocks would exceed [`Config::max_body_size`].
    #[error("body of at least {size} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge {
        /// The size reached.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The message cannot be encoded within [`Config::max_message_size`] even with the
    /// smallest block size (its options are too long).
    #[error("message cannot be encoded within {limit} bytes")]
    MessageTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The packet handed in has the wrong kind of code (a request code is needed to send a
    /// request, a response code to respond; RFC 7252 §5.8, §5.9).
    #[error("code {code} is not a {expected} code")]
    WrongCode {
        /// The code, as `c.dd`.
        code: String,
        /// "request" or "response".
        expected: &'static str,
    },
    /// [`Endpoint::notify`] for an observation that has ended.
    #[error("no such observation")]
    UnknownObservation,
}

/// Traffic counters of an [`Endpoint`], for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams handed to [`Endpoint::handle_datagram`].
    pub datagrams_in: u64,
    /// Bytes handed to [`Endpoint::handle_datagram`].
    pub bytes_in: u64,
    /// Datagrams returned by [`Endpoint::poll_transmit`] or queued for it.
    pub datagrams_out: u64,
    /// Bytes of those datagrams.
    pub bytes_out: u64,
    /// Retransmissions of confirmable messages (RFC 7252 §4.2).
    pub retransmissions: u64,
    /// Incoming messages recognised as duplicates (RFC 7252 §4.5).
    pub duplicates: u64,
    /// Incoming datagrams that were not valid CoAP.
    pub malformed: u64,
    /// Resets received.
    pub resets_in: u64,
    /// Resets sent.
    pub resets_out: u64,
    /// Notifications dropped as older than the last one (RFC 7641 §3.4).
    pub stale_notifications: u64,
    /// Requests that failed with [`ExchangeError::Timeout`] or
    /// [`ExchangeError::NoResponse`].
    pub timeouts: u64,
}
