//! The LwM2M Server as a sans-IO state machine (Core TS 1.1 §6.2-§6.4): Registration,
//! Device Management and Service Enablement, Information Reporting, queue mode and clients
//! that move behind NATs, on top of the CoAP [`Endpoint`](crate::coap::Endpoint).
//!
//! Input: [`Lwm2mServer::handle_datagram`], [`Lwm2mServer::handle_timeout`] and
//! [`Lwm2mServer::request`]; output: [`Lwm2mServer::poll_transmit`],
//! [`Lwm2mServer::poll_timeout`], [`Lwm2mServer::poll_event`]. No sockets, no clock.

pub mod api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use api::{
    Content, ObservationId, OpError, OpId, Operation, Registration, Response, ServerEvent,
};

use crate::coap::{self, Transmit};
use crate::registry::Registry;

/// Settings of the server machine.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The CoAP exchange layer's parameters (seed, timers, block size).
    pub coap: coap::Config,
    /// Requests held per sleeping queue-mode client (Core TS 1.1 §6.5); more are refused.
    pub queue_capacity: usize,
    /// How long a held request may wait for its client to wake up.
    pub queue_timeout: Duration,
    /// How long a queue-mode client is awake after its last message (Core TS 1.1 §6.5:
    /// MAX_TRANSMIT_WAIT, 93 s, by default).
    pub awake_time: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            coap: coap::Config::default(),
            queue_capacity: 64,
            queue_timeout: Duration::from_secs(300),
            awake_time: Duration::from_secs(93),
        }
    }
}

/// The LwM2M Server state machine for one socket.
#[derive(Debug)]
pub struct Lwm2mServer {
    config: ServerConfig,
    registry: Arc<Registry>,
}

impl Lwm2mServer {
    /// A server with no registrations.
    pub fn new(config: ServerConfig, registry: Arc<Registry>) -> Self {
        Self { config, registry }
    }

    /// A datagram arrived from `peer`.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        let _ = (now, peer, bytes, &self.config, &self.registry);
    }

    /// Time passed: retransmissions, lifetimes, awake windows, queue timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
    }

    /// Starts an operation on a registered client; its outcome comes as
    /// [`ServerEvent::Completed`]. A sleeping queue-mode client's requests wait.
    pub fn request(
        &mut self,
        now: Instant,
        endpoint: &str,
        operation: Operation,
    ) -> Result<OpId, OpError> {
        let _ = (now, operation);
        Err(OpError::UnknownEndpoint {
            endpoint: endpoint.to_owned(),
        })
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        None
    }

    /// When [`Lwm2mServer::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        None
    }

    /// The registration of an endpoint.
    pub fn registration(&self, endpoint: &str) -> Option<&Registration> {
        let _ = endpoint;
        None
    }

    /// Every registration.
    pub fn registrations(&self) -> impl Iterator<Item = &Registration> {
        std::iter::empty()
    }

    /// The observations held on an endpoint, with their paths.
    pub fn observations(&self, endpoint: &str) -> Vec<(ObservationId, Vec<crate::Lwm2mPath>)> {
        let _ = endpoint;
        Vec::new()
    }

    /// Whether a queue-mode client is awake (always true for other clients).
    pub fn is_awake(&self, endpoint: &str) -> bool {
        let _ = endpoint;
        true
    }

    /// The CoAP layer's traffic counters.
    pub fn counters(&self) -> coap::Counters {
        coap::Counters::default()
    }
}
