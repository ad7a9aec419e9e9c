//! The LwM2M Client as a sans-IO state machine: client-initiated bootstrap, registration
//! lifecycle, Device Management on its [`ObjectTree`], Information Reporting, Send, queue
//! mode, and the known deviations of real clients ([`Quirks`]) for conformance testing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::tree::ObjectTree;
use crate::coap::{self, Transmit};
use crate::content::ContentFormat;
use crate::ids::Lwm2mPath;
use crate::registration::Lwm2mVersion;
use crate::value::Value;

/// Known deviations of real clients that a simulated client can reproduce.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quirks {
    /// Announce and use the pre-1.0 content-format numbers (1542 TLV, 1543 JSON).
    pub legacy_content_formats: bool,
    /// Register without the `lwm2m=` parameter.
    pub no_lwm2m_version: bool,
    /// Send the 1.0 binding `b=UQ` for queue mode even as a 1.1+ client.
    pub legacy_queue_binding: bool,
    /// Encode TLV integers in 8 bytes instead of the shortest form.
    pub non_minimal_tlv_integers: bool,
    /// Answer in the preferred format whatever Accept asks for.
    pub ignore_accept: bool,
    /// Answer 2.05 Content where 2.04 Changed is due (Write, Execute) and vice versa.
    pub wrong_success_codes: bool,
    /// Answer every request this late (a separate response when over the ACK delay).
    pub late_responses: Option<Duration>,
    /// Send every response twice.
    pub duplicate_responses: bool,
}

/// Settings of one client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Endpoint Client Name.
    pub endpoint: String,
    /// Enabler version.
    pub version: Lwm2mVersion,
    /// Binding letters (`U`).
    pub binding: String,
    /// Queue mode.
    pub queue_mode: bool,
    /// Lifetime, seconds (used when the Server object does not say otherwise).
    pub lifetime: u32,
    /// The LwM2M Server (factory configuration); ignored when `bootstrap_server` is set and
    /// the Security object holds no server account yet.
    pub server: Option<SocketAddr>,
    /// The Bootstrap Server for client-initiated bootstrap.
    pub bootstrap_server: Option<SocketAddr>,
    /// The format used when a request has no Accept.
    pub preferred_format: ContentFormat,
    /// The formats the client can produce and consume.
    pub supported_formats: Vec<ContentFormat>,
    /// Delay before answering any request.
    pub response_delay: Duration,
    /// Send an Update this long before the lifetime ends (at least 1 s).
    pub update_margin: Duration,
    /// How long a Reboot (Execute /3/0/4) keeps the client silent before it registers again.
    pub reboot_silence: Duration,
    /// Deviations to reproduce.
    pub quirks: Quirks,
    /// The CoAP exchange layer's parameters (seed, timers).
    pub coap: coap::Config,
}

/// Where a client is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientState {
    /// Not started.
    Idle,
    /// Running client-initiated bootstrap.
    Bootstrapping,
    /// Register sent, no answer yet.
    Registering,
    /// Registered.
    Registered,
    /// Queue mode: registered and asleep.
    Sleeping,
    /// Rebooting: silent for a while.
    Rebooting,
    /// De-registered.
    Deregistered,
    /// Gave up (bootstrap or registration failed).
    Failed,
}

/// What a client reports; drained with [`Lwm2mClient::poll_event`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Bootstrap-Finish received; the client registers with what it was given.
    Bootstrapped,
    /// Registered; `location` is the registration id path (`/rd/ID`).
    Registered {
        /// Location-Path.
        location: String,
    },
    /// An Update succeeded.
    Updated,
    /// De-registered.
    Deregistered,
    /// Bootstrap, Register or Update failed.
    Failed {
        /// Which step.
        step: &'static str,
        /// Why.
        reason: String,
    },
    /// A request from a server was answered.
    Served {
        /// The operation's name (`read`, `write`, ...).
        operation: &'static str,
        /// The path.
        path: Lwm2mPath,
        /// The code answered.
        code: (u8, u8),
    },
    /// A notification was sent.
    Notified {
        /// The observed path.
        path: Lwm2mPath,
    },
    /// Reboot executed: silent, then registers again.
    Rebooting,
    /// Factory reset executed.
    FactoryReset,
}

/// One simulated LwM2M client.
#[derive(Debug)]
pub struct Lwm2mClient {
    config: ClientConfig,
    tree: ObjectTree,
}

impl Lwm2mClient {
    /// A client with its factory object tree.
    pub fn new(config: ClientConfig, tree: ObjectTree) -> Self {
        Self { config, tree }
    }

    /// Starts: bootstrap if no server account is configured, else Register.
    pub fn start(&mut self, now: Instant) {
        let _ = (now, &self.config);
    }

    /// A datagram arrived from `peer`.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        let _ = (now, peer, bytes);
    }

    /// Time passed: retransmissions, Updates, notifications (pmin/pmax), delayed answers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
    }

    /// Changes a resource value (a sensor reading); observations are evaluated.
    pub fn set_value(&mut self, now: Instant, path: &Lwm2mPath, value: Value) {
        let _ = (now, path, value);
    }

    /// Sends the values at `paths` with the Send operation (LwM2M 1.1+).
    pub fn send(&mut self, now: Instant, paths: &[Lwm2mPath]) {
        let _ = (now, paths);
    }

    /// Wakes a queue-mode client: it sends an Update and is reachable for a while.
    pub fn wake(&mut self, now: Instant) {
        let _ = now;
    }

    /// Sends an Update now (Registration Update Trigger does the same).
    pub fn trigger_update(&mut self, now: Instant) {
        let _ = now;
    }

    /// De-registers.
    pub fn deregister(&mut self, now: Instant) {
        let _ = now;
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        None
    }

    /// When [`Lwm2mClient::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        None
    }

    /// The state.
    pub fn state(&self) -> ClientState {
        ClientState::Idle
    }

    /// The object tree.
    pub fn tree(&self) -> &ObjectTree {
        &self.tree
    }

    /// The CoAP layer's traffic counters.
    pub fn counters(&self) -> coap::Counters {
        coap::Counters::default()
    }
}
