//! The LwM2M Server as a sans-IO state machine (Core TS 1.1 §6.2-§6.4): Registration,
//! Device Management and Service Enablement, Information Reporting, queue mode and clients
//! that move behind NATs, on top of the CoAP [`Endpoint`].
//!
//! Input: [`Lwm2mServer::handle_datagram`], [`Lwm2mServer::handle_timeout`] and
//! [`Lwm2mServer::request`]; output: [`Lwm2mServer::poll_transmit`],
//! [`Lwm2mServer::poll_timeout`], [`Lwm2mServer::poll_event`]. No sockets, no clock.
//!
//! What it answers itself (the Registration interface and Send, see `incoming.rs`):
//!
//! | request | answer |
//! |---|---|
//! | POST `/rd?ep=..` (Register) | 2.01, Location-Path `rd`, `{id}` |
//! | POST `/rd/{id}` (Update) | 2.04 |
//! | DELETE `/rd/{id}` (De-register) | 2.02 |
//! | POST `/dp` (Send, from a registered client's address) | 2.04 |
//! | bad query or payload | 4.00 |
//! | unknown registration id, unknown path, Send from an unknown address | 4.04 |
//! | another method on `/rd`, `/rd/{id}`, `/dp` | 4.05 |
//! | unsupported `lwm2m=` version | 4.12 |
//! | a Content-Format that is not link-format (Register, Update) or SenML / LwM2M CBOR (Send) | 4.15 |
//!
//! Every refusal carries its reason as diagnostic payload (RFC 7252 §5.5.2) and is reported
//! as [`ServerEvent::RegistrationRefused`] or [`ServerEvent::RequestRefused`].
//!
//! Registrations are found by endpoint name, by registration id and by address (hash maps);
//! lifetimes, awake windows and queue time-outs sit in one heap of deadlines, so the cost of a
//! datagram or a timer does not grow with the number of clients.
//!
//! Peers are identified by their [`SocketAddr`]. A DTLS session (RFC 6347, RFC 9146 for
//! Connection IDs) slots in under the same exchange layer: the driver decrypts and hands the
//! plaintext in with the peer's address; an authenticated identity per peer (PSK identity,
//! public key) can later be checked against the registration's endpoint name here, and a
//! Connection ID would let an Update keep its address binding without NAT concerns.

pub mod api;
mod incoming;
mod operations;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use api::{
    Content, ObservationId, OpError, OpId, Operation, Registration, Response, ServerEvent,
};
pub use operations::choose_format;

use crate::admission::{Admission, GateRole, Open};
use crate::coap::{self, Endpoint, Event, Packet, RequestId, Transmit};
use crate::hash::HashMap;
use crate::ids::{Lwm2mPath, ObjectId};
use crate::registry::Registry;
use operations::{Body, Prepared, decode_notification, decode_response, establishes_observation};

/// Settings of the server machine.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The CoAP exchange layer's parameters (seed, timers, block size). The seed also
    /// drives the registration ids.
    pub coap: coap::Config,
    /// Requests held per sleeping queue-mode client (Core TS 1.1 §6.5); more are refused.
    pub queue_capacity: usize,
    /// How long a held request may wait for its client to wake up.
    pub queue_timeout: Duration,
    /// How long a queue-mode client is awake after its last message (Core TS 1.1 §6.5:
    /// MAX_TRANSMIT_WAIT, 93 s, by default).
    pub awake_time: Duration,
    /// Bounds on what registrations may hold; beyond them a Register or Update is refused
    /// with [`ServerEvent::LimitReached`].
    pub limits: RegistrationLimits,
    /// Registrations the machine's tables are sized for from the start (at most
    /// [`RegistrationLimits::max_registrations`]): below it no table grows, so no
    /// registration waits while one is rehashed (at 2^n entries, seconds at a million).
    /// Default 0: the tables grow as needed.
    pub registration_capacity: usize,
}

/// Bounds on the registrations a server holds, so that a flood of Registers (one source or
/// many) cannot take its memory: the specification leaves them to the server. A request
/// beyond one is refused with the limit's code ([`Limit::coap_code`]) and a diagnostic
/// payload naming the limit, and reported as [`ServerEvent::LimitReached`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationLimits {
    /// Registrations held at once (5.03 beyond it). Default 100,000.
    pub max_registrations: usize,
    /// Registrations held at once from one source IP address, whatever the port (5.03
    /// beyond it). A NAT gateway fronts many devices with one address: raise it there.
    /// Default 10,000.
    pub max_registrations_per_address: usize,
    /// Longest endpoint name, in bytes (4.00). Default 256.
    pub max_endpoint_length: usize,
    /// Links in a Register or Update payload (4.13). Default 1,024.
    pub max_links: usize,
    /// Largest Register or Update payload, in bytes, after block-wise reassembly (4.13).
    /// Default 16 KiB.
    pub max_payload: usize,
    /// Shortest lifetime accepted, seconds (4.00). Default 1.
    pub min_lifetime: u32,
    /// Longest lifetime accepted, seconds (4.00), also for a Register without `lt` (whose
    /// lifetime is 86,400 s). Default 30 days.
    pub max_lifetime: u32,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        Self {
            max_registrations: 100_000,
            max_registrations_per_address: 10_000,
            max_endpoint_length: 256,
            max_links: 1024,
            max_payload: 16 << 10,
            min_lifetime: 1,
            max_lifetime: 30 * 86_400,
        }
    }
}

/// Which of the [`RegistrationLimits`] a request went beyond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Limit {
    /// [`RegistrationLimits::max_registrations`].
    MaxRegistrations,
    /// [`RegistrationLimits::max_registrations_per_address`].
    MaxRegistrationsPerAddress,
    /// [`RegistrationLimits::max_endpoint_length`].
    MaxEndpointLength,
    /// [`RegistrationLimits::max_links`].
    MaxLinks,
    /// [`RegistrationLimits::max_payload`].
    MaxPayload,
    /// [`RegistrationLimits::min_lifetime`] or [`RegistrationLimits::max_lifetime`].
    Lifetime,
}

impl Limit {
    /// The configuration key, as `serve`'s `limits:` spells it.
    pub fn key(self) -> &'static str {
        match self {
            Self::MaxRegistrations => "max_registrations",
            Self::MaxRegistrationsPerAddress => "max_registrations_per_address",
            Self::MaxEndpointLength => "max_endpoint_length",
            Self::MaxLinks => "max_links",
            Self::MaxPayload => "max_payload",
            Self::Lifetime => "min_lifetime/max_lifetime",
        }
    }

    /// The code a request beyond the limit is answered with: 5.03 Service Unavailable
    /// for the server's capacity (RFC 7252 §5.9.3.4: a transient condition), 4.13 Request
    /// Entity Too Large for a payload, 4.00 Bad Request for a value out of bounds.
    pub fn coap_code(self) -> (u8, u8) {
        match self {
            Self::MaxRegistrations | Self::MaxRegistrationsPerAddress => (5, 3),
            Self::MaxLinks | Self::MaxPayload => (4, 13),
            Self::MaxEndpointLength | Self::Lifetime => (4, 0),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            coap: coap::Config::default(),
            queue_capacity: 64,
            queue_timeout: Duration::from_secs(300),
            awake_time: Duration::from_secs(93),
            limits: RegistrationLimits::default(),
            registration_capacity: 0,
        }
    }
}

/// Internal handle of one registration (a new Register of the same endpoint gets a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key(u64);

/// A registered client.
#[derive(Debug)]
struct Client {
    registration: Registration,
    /// Object versions declared in the links (`ver=`), for the schema view.
    versions: BTreeMap<ObjectId, String>,
    /// Queue mode: the end of the awake window, `None` while asleep (Core TS 1.1 §6.5).
    awake_until: Option<Instant>,
    /// The deadline of this client's live [`Timer::Lifetime`] entry (never later than the
    /// expiry; re-armed when it fires early, so Updates do not grow the heap).
    lifetime_timer: Instant,
    /// The deadline of this client's live [`Timer::Sleep`] entry, the same way.
    sleep_timer: Option<Instant>,
    /// Operations waiting for the client to wake up, in order, with what they will do.
    queue: VecDeque<(OpId, Action)>,
    /// Every operation not yet completed (queued or in flight).
    ops: BTreeSet<OpId>,
    observations: BTreeSet<ObservationId>,
}

impl Client {
    /// Whether requests may go out now.
    fn is_awake(&self, now: Instant) -> bool {
        !self.registration.queue_mode || self.awake_until.is_some_and(|t| t > now)
    }
}

/// What a queued operation will do when its client wakes up.
#[derive(Debug)]
enum Action {
    /// Send this request.
    Send(Packet),
    /// Cancel the observation of this request actively (GET + Observe = 1, RFC 7641 §3.6).
    Cancel(RequestId),
}

#[derive(Debug)]
enum OpState {
    /// Waiting in its client's queue (or about to be sent).
    Queued { deadline: Instant },
    /// Handed to the exchange layer.
    Sent {
        request: RequestId,
        address: SocketAddr,
    },
}

/// An operation from [`Lwm2mServer::request`] until its [`ServerEvent::Completed`].
#[derive(Debug)]
struct Op {
    client: Key,
    endpoint: String,
    name: &'static str,
    started: Instant,
    body: Body,
    accept: Option<crate::ContentFormat>,
    observe: Option<Vec<Lwm2mPath>>,
    state: OpState,
}

/// An established observation (RFC 7641 §3.1).
#[derive(Debug)]
struct Observed {
    client: Key,
    endpoint: String,
    /// The observing request in the endpoint.
    request: RequestId,
    /// Where the observation was made: notifications from elsewhere cannot match it.
    address: SocketAddr,
    paths: Vec<Lwm2mPath>,
    body: Body,
    accept: Option<crate::ContentFormat>,
    /// Made with Observe-Composite.
    composite: bool,
}

/// What it takes to take up an established observation again
/// ([`Lwm2mServer::restore_observation`]): kept in a shared store so that it survives a
/// restart of the server process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObservationRecord {
    /// The observing request's token.
    pub token: Vec<u8>,
    /// The observed paths.
    pub paths: Vec<Lwm2mPath>,
    /// The Content-Format asked for (Accept), if any.
    pub accept: Option<u16>,
    /// Observe-Composite.
    pub composite: bool,
}

/// Deadlines in the heap; an entry is stale (and skipped) when the state it refers to no
/// longer has that deadline. Lifetime and Sleep entries may fire before the deadline moved
/// by later messages; they are then re-armed, so each client holds one of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The registration's lifetime (Core TS 1.1 §6.2.1).
    Lifetime(Key),
    /// The end of a queue-mode client's awake window (Core TS 1.1 §6.5).
    Sleep(Key),
    /// A queued operation's wait (Core TS 1.1 §6.5).
    Queue(OpId),
}

/// The LwM2M Server state machine for one socket.
#[derive(Debug)]
pub struct Lwm2mServer {
    config: ServerConfig,
    registry: Arc<Registry>,
    endpoint: Endpoint,
    /// Registration ids (seeded, so runs repeat).
    rng: ChaCha8Rng,
    /// Boxed: a table that grows moves a pointer per client, not the registration.
    clients: HashMap<Key, Box<Client>>,
    by_endpoint: HashMap<String, Key>,
    by_id: HashMap<String, Key>,
    by_address: HashMap<SocketAddr, Key>,
    /// Registrations held per source IP address ([`RegistrationLimits`]).
    per_ip: HashMap<IpAddr, usize>,
    ops: HashMap<OpId, Op>,
    /// Endpoint requests of operations in flight.
    requests: HashMap<RequestId, OpId>,
    observations: HashMap<ObservationId, Observed>,
    /// Endpoint requests of established observations.
    observing: HashMap<RequestId, ObservationId>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    events: VecDeque<ServerEvent>,
    next_key: u64,
    next_op: u64,
    next_observation: u64,
}

impl Lwm2mServer {
    /// A server with no registrations.
    pub fn new(config: ServerConfig, registry: Arc<Registry>) -> Self {
        // A different stream from the endpoint's tokens, from the same seed.
        let rng = ChaCha8Rng::seed_from_u64(config.coap.seed ^ 0x6c77_6d32_7264_6964);
        let capacity = config
            .registration_capacity
            .min(config.limits.max_registrations);
        let mut endpoint = Endpoint::new(config.coap.clone());
        endpoint.reserve_peers(capacity);
        Self {
            endpoint,
            config,
            registry,
            rng,
            clients: HashMap::with_capacity_and_hasher(capacity, Default::default()),
            by_endpoint: HashMap::with_capacity_and_hasher(capacity, Default::default()),
            by_id: HashMap::with_capacity_and_hasher(capacity, Default::default()),
            by_address: HashMap::with_capacity_and_hasher(capacity, Default::default()),
            per_ip: HashMap::default(),
            ops: HashMap::default(),
            requests: HashMap::default(),
            observations: HashMap::default(),
            observing: HashMap::default(),
            // A lifetime entry per client, and room for its sleep entry.
            timers: BinaryHeap::with_capacity(capacity),
            events: VecDeque::new(),
            next_key: 0,
            next_op: 0,
            next_observation: 0,
        }
    }

    /// A datagram arrived from `peer`. Never panics, whatever the bytes: invalid CoAP is
    /// reported as [`ServerEvent::Malformed`], valid CoAP with wrong LwM2M content is
    /// answered with the right error code. Any datagram from a queue-mode client's address
    /// wakes it (Core TS 1.1 §6.5) and sends its held requests, after the answer to it.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        self.handle_admitted(now, peer, bytes, &mut Open);
    }

    /// A datagram arrived from `peer`, whose requests `admission` decides about before they
    /// are handled (a refused one is answered 4.03 with the reason, and nothing else
    /// happens: no event, no registration). The datagram is decoded once.
    pub fn handle_admitted(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        bytes: &[u8],
        admission: &mut dyn Admission,
    ) {
        if let Some(key) = self.by_address.get(&peer).copied() {
            self.wake(now, key);
        }
        self.endpoint.handle_datagram(now, peer, bytes);
        self.drain_admitted(now, admission);
        if let Some(key) = self.by_address.get(&peer).copied() {
            self.flush(now, key);
        }
    }

    /// Time passed: retransmissions, lifetimes, awake windows, queue timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.handle_timeout(now);
        self.drain_endpoint(now);
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if !self.timer_is_live(at, timer) {
                continue;
            }
            match timer {
                Timer::Lifetime(key) => self.on_lifetime_timer(now, key),
                Timer::Sleep(key) => self.on_sleep_timer(now, key),
                Timer::Queue(op) => self.queue_timeout(now, op),
            }
        }
    }

    /// Starts an operation on a registered client; its outcome comes as
    /// [`ServerEvent::Completed`]. A sleeping queue-mode client's requests wait.
    ///
    /// The request goes to the registration's address under its alternate path; the format,
    /// when the operation names none, is [`choose_format`]'s (a 1.0 client's single values:
    /// text/plain or octet-stream, Core TS 1.0 §6.4.1). An `Err` means nothing was
    /// started and no event follows: [`OpError::UnknownEndpoint`], [`OpError::Invalid`]
    /// (a path of the wrong level, an operation the client's version lacks, an observation
    /// of another client), [`OpError::Encode`], [`OpError::QueueFull`], or
    /// [`OpError::Exchange`] when the exchange layer refuses the message at once.
    pub fn request(
        &mut self,
        now: Instant,
        endpoint: &str,
        operation: Operation,
    ) -> Result<OpId, OpError> {
        let unknown = || OpError::UnknownEndpoint {
            endpoint: endpoint.to_owned(),
        };
        let key = self
            .by_endpoint
            .get(endpoint)
            .copied()
            .ok_or_else(unknown)?;
        let client = self.clients.get(&key).ok_or_else(unknown)?;
        let awake = client.is_awake(now);
        let queued = client.queue.len();
        let name = operation.name();
        let (action, body, accept, observe) = match operation {
            Operation::CancelObservation {
                observation,
                active,
            } => {
                let observed = self
                    .observations
                    .get(&observation)
                    .filter(|o| o.client == key)
                    .ok_or_else(|| OpError::Invalid {
                        reason: format!("no observation {} on {endpoint:?}", observation.0),
                    })?;
                let (request, body, accept) =
                    (observed.request, observed.body.clone(), observed.accept);
                if active && !awake && queued >= self.config.queue_capacity {
                    return Err(self.queue_full(endpoint));
                }
                let reason = if active {
                    "cancelled by the server (GET with Observe = 1, RFC 7641 §3.6)"
                } else {
                    "forgotten by the server; the next notification gets a Reset (RFC 7641 §3.6)"
                };
                self.end_observation(observation, reason);
                if !active {
                    self.endpoint.cancel_request(now, request);
                    let op = self.new_op_id();
                    self.events.push_back(ServerEvent::Completed {
                        op,
                        endpoint: endpoint.to_owned(),
                        operation: name,
                        result: Ok(Response::empty()),
                        latency: Duration::ZERO,
                    });
                    return Ok(op);
                }
                (Action::Cancel(request), body, accept, None)
            }
            operation => {
                let Prepared {
                    packet,
                    body,
                    accept,
                    observe,
                } = operations::prepare(
                    &client.registration,
                    &operation,
                    &self.registry.with_versions(&client.versions),
                )?;
                if !awake && queued >= self.config.queue_capacity {
                    return Err(self.queue_full(endpoint));
                }
                (Action::Send(packet), body, accept, observe)
            }
        };
        let id = self.new_op_id();
        let deadline = now + self.config.queue_timeout;
        self.ops.insert(
            id,
            Op {
                client: key,
                endpoint: endpoint.to_owned(),
                name,
                started: now,
                body,
                accept,
                observe,
                state: OpState::Queued { deadline },
            },
        );
        let Some(client) = self.clients.get_mut(&key) else {
            return Err(unknown());
        };
        client.ops.insert(id);
        if awake {
            if let Err(error) = self.dispatch(now, id, action) {
                self.forget_op(id);
                return Err(error);
            }
        } else {
            client.queue.push_back((id, action));
            self.timers.push(Reverse((deadline, Timer::Queue(id))));
        }
        self.drain_endpoint(now);
        Ok(id)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.endpoint.poll_transmit()
    }

    /// When [`Lwm2mServer::handle_timeout`] must be called next: the earliest of the
    /// exchange layer's timers, registration lifetimes, awake windows and queue time-outs.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if self.timer_is_live(at, timer) {
                break;
            }
            self.timers.pop();
        }
        let own = self.timers.peek().map(|Reverse((at, _))| *at);
        [own, self.endpoint.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The registration of an endpoint.
    pub fn registration(&self, endpoint: &str) -> Option<&Registration> {
        let key = self.by_endpoint.get(endpoint)?;
        self.clients.get(key).map(|c| &c.registration)
    }

    /// Every registration.
    pub fn registrations(&self) -> impl Iterator<Item = &Registration> {
        self.clients.values().map(|c| &c.registration)
    }

    /// The observations held on an endpoint, with their paths.
    pub fn observations(&self, endpoint: &str) -> Vec<(ObservationId, Vec<crate::Lwm2mPath>)> {
        let Some(client) = self
            .by_endpoint
            .get(endpoint)
            .and_then(|k| self.clients.get(k))
        else {
            return Vec::new();
        };
        client
            .observations
            .iter()
            .filter_map(|id| self.observations.get(id).map(|o| (*id, o.paths.clone())))
            .collect()
    }

    /// What it takes to take an established observation up again after a restart.
    pub fn observation_record(&self, observation: ObservationId) -> Option<ObservationRecord> {
        let o = self.observations.get(&observation)?;
        Some(ObservationRecord {
            token: self.endpoint.request_token(o.request)?,
            paths: o.paths.clone(),
            accept: o.accept.map(crate::ContentFormat::code),
            composite: o.composite,
        })
    }

    /// Takes up an observation of a registered endpoint made earlier (see
    /// [`ObservationRecord`]): nothing is sent, the client's next notification with the
    /// token is reported as [`ServerEvent::Notification`] of the returned observation.
    pub fn restore_observation(
        &mut self,
        now: Instant,
        endpoint: &str,
        record: &ObservationRecord,
    ) -> Result<ObservationId, OpError> {
        let unknown = || OpError::UnknownEndpoint {
            endpoint: endpoint.to_owned(),
        };
        let key = *self.by_endpoint.get(endpoint).ok_or_else(unknown)?;
        let client = self.clients.get(&key).ok_or_else(unknown)?;
        let format = match record.accept {
            Some(code) => {
                Some(
                    crate::ContentFormat::from_code(code).ok_or_else(|| OpError::Invalid {
                        reason: format!("content format {code} of a stored observation"),
                    })?,
                )
            }
            None => None,
        };
        let operation = match (record.composite, record.paths.as_slice()) {
            (false, [path]) => Operation::Observe {
                path: *path,
                format,
            },
            (true, _) => Operation::ObserveComposite {
                paths: record.paths.clone(),
                format,
            },
            _ => {
                return Err(OpError::Invalid {
                    reason: "a stored observation without its path".into(),
                });
            }
        };
        let Prepared {
            mut packet,
            body,
            accept,
            observe,
        } = operations::prepare(
            &client.registration,
            &operation,
            &self.registry.with_versions(&client.versions),
        )?;
        packet.set_token(record.token.clone());
        let address = client.registration.address;
        let request = self
            .endpoint
            .restore_observation(now, address, packet)
            .ok_or_else(|| OpError::Invalid {
                reason: "the stored observation's token is not usable".into(),
            })?;
        self.next_observation += 1;
        let observation = ObservationId(self.next_observation);
        let observed = Observed {
            client: key,
            endpoint: endpoint.to_owned(),
            request,
            address,
            paths: observe.unwrap_or_else(|| record.paths.clone()),
            body,
            accept,
            composite: record.composite,
        };
        if let Some(client) = self.clients.get_mut(&key) {
            client.observations.insert(observation);
        }
        self.observing.insert(request, observation);
        self.observations.insert(observation, observed);
        Ok(observation)
    }

    /// Whether a queue-mode client is awake (always true for other clients).
    pub fn is_awake(&self, endpoint: &str) -> bool {
        self.by_endpoint
            .get(endpoint)
            .and_then(|k| self.clients.get(k))
            .is_none_or(|c| !c.registration.queue_mode || c.awake_until.is_some())
    }

    /// Requests waiting for a sleeping queue-mode client (Core TS 1.1 §6.5).
    pub fn queued(&self, endpoint: &str) -> usize {
        self.by_endpoint
            .get(endpoint)
            .and_then(|k| self.clients.get(k))
            .map_or(0, |c| c.queue.len())
    }

    /// The CoAP layer's traffic counters.
    pub fn counters(&self) -> coap::Counters {
        self.endpoint.counters().clone()
    }

    fn new_op_id(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    fn queue_full(&self, endpoint: &str) -> OpError {
        OpError::QueueFull {
            endpoint: endpoint.to_owned(),
            capacity: self.config.queue_capacity,
        }
    }

    fn timer_is_live(&self, at: Instant, timer: Timer) -> bool {
        match timer {
            Timer::Lifetime(key) => self
                .clients
                .get(&key)
                .is_some_and(|c| c.lifetime_timer == at),
            Timer::Sleep(key) => self
                .clients
                .get(&key)
                .is_some_and(|c| c.sleep_timer == Some(at)),
            Timer::Queue(op) => self
                .ops
                .get(&op)
                .is_some_and(|o| matches!(o.state, OpState::Queued { deadline } if deadline == at)),
        }
    }

    /// Handles what the exchange layer reports.
    fn drain_endpoint(&mut self, now: Instant) {
        self.drain_admitted(now, &mut Open);
    }

    fn drain_admitted(&mut self, now: Instant, admission: &mut dyn Admission) {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Request { peer, request } => {
                    let registration = |id: &str| {
                        let key = self.by_id.get(id)?;
                        Some(self.clients.get(key)?.registration.endpoint.clone())
                    };
                    match admission.check(GateRole::Lwm2mServer, &request.packet, &registration) {
                        Some(refused) => self.refuse(now, request, &refused),
                        None => self.on_request(now, peer, request),
                    }
                }
                Event::Response { id, response } => self.on_response(now, id, response),
                Event::RequestFailed { id, error } => self.on_request_failed(now, id, error),
                Event::Notification { id, response, seq } => {
                    self.on_notification(id, &response, seq)
                }
                Event::ObservationEnded { id, response } => {
                    if let Some(observation) = self.observing.get(&id).copied() {
                        let (class, detail) = crate::coap::message::code_pair(response.header.code);
                        let diagnostic = String::from_utf8_lossy(&response.payload);
                        let reason = format!(
                            "the client answered {class}.{detail:02} without Observe \
                             (RFC 7641 §3.2) {diagnostic}"
                        );
                        self.end_observation(observation, reason.trim_end());
                    }
                }
                Event::Malformed { peer, reason } => {
                    self.events
                        .push_back(ServerEvent::Malformed { peer, reason });
                }
                // This server observes nothing of its own (ObservationCancelled) and knows
                // every other event of this version of the exchange layer.
                _ => {}
            }
        }
    }

    /// A queue-mode client sent something: it is awake for `awake_time` (Core TS 1.1 §6.5).
    fn wake(&mut self, now: Instant, key: Key) {
        let until = now + self.config.awake_time;
        let Some(client) = self.clients.get_mut(&key) else {
            return;
        };
        if !client.registration.queue_mode {
            return;
        }
        if client.awake_until.is_none() {
            let endpoint = client.registration.endpoint.clone();
            self.events.push_back(ServerEvent::Awake { endpoint });
        }
        client.awake_until = Some(until);
        self.arm(key);
    }

    /// Makes sure the client's Lifetime and Sleep entries fire no later than its expiry
    /// and the end of its awake window.
    fn arm(&mut self, key: Key) {
        let Some(client) = self.clients.get_mut(&key) else {
            return;
        };
        let expires_at = client.registration.expires_at();
        if client.lifetime_timer > expires_at {
            client.lifetime_timer = expires_at;
            self.timers
                .push(Reverse((expires_at, Timer::Lifetime(key))));
        }
        if let Some(until) = client.awake_until
            && client.sleep_timer.is_none_or(|at| at > until)
        {
            client.sleep_timer = Some(until);
            self.timers.push(Reverse((until, Timer::Sleep(key))));
        }
    }

    fn on_lifetime_timer(&mut self, now: Instant, key: Key) {
        let Some(client) = self.clients.get_mut(&key) else {
            return;
        };
        let expires_at = client.registration.expires_at();
        if expires_at > now {
            // Updated since: wait for the new expiry.
            client.lifetime_timer = expires_at;
            self.timers
                .push(Reverse((expires_at, Timer::Lifetime(key))));
            return;
        }
        let reason = "its lifetime ran out (Core TS 1.1 §6.2.1)";
        if let Some(registration) = self.remove_registration(now, key, reason) {
            self.events.push_back(ServerEvent::Expired { registration });
        }
    }

    fn on_sleep_timer(&mut self, now: Instant, key: Key) {
        let Some(client) = self.clients.get_mut(&key) else {
            return;
        };
        client.sleep_timer = None;
        match client.awake_until {
            Some(until) if until > now => self.arm(key),
            Some(_) => {
                client.awake_until = None;
                let endpoint = client.registration.endpoint.clone();
                self.events.push_back(ServerEvent::Sleeping { endpoint });
            }
            None => {}
        }
    }

    /// Sends the held requests of an awake client, in order.
    fn flush(&mut self, now: Instant, key: Key) {
        loop {
            let Some(client) = self.clients.get_mut(&key) else {
                return;
            };
            if !client.is_awake(now) {
                return;
            }
            let Some((op, action)) = client.queue.pop_front() else {
                return;
            };
            if let Err(error) = self.dispatch(now, op, action) {
                self.complete(now, op, Err(error));
            }
        }
    }

    /// Hands an operation to the exchange layer, at the registration's address now. On
    /// `Err` the operation stays as it was, for the caller to report.
    fn dispatch(&mut self, now: Instant, id: OpId, action: Action) -> Result<(), OpError> {
        let address = self
            .ops
            .get(&id)
            .and_then(|op| self.clients.get(&op.client))
            .map(|client| client.registration.address)
            .ok_or_else(|| OpError::Invalid {
                reason: format!("operation {} has no registration", id.0),
            })?;
        let request = match action {
            Action::Send(packet) => self
                .endpoint
                .send_request(now, address, packet)
                .map_err(|error| OpError::Exchange { address, error })?,
            Action::Cancel(observing) => match self.endpoint.cancel_observation(now, observing) {
                Some(request) => request,
                None => {
                    // Not established (or already ended): nothing to send; forget it.
                    self.endpoint.cancel_request(now, observing);
                    self.complete(now, id, Ok(Response::empty()));
                    return Ok(());
                }
            },
        };
        if let Some(op) = self.ops.get_mut(&id) {
            op.state = OpState::Sent { request, address };
        }
        self.requests.insert(request, id);
        Ok(())
    }

    /// Removes an operation without an event (it was refused at once).
    fn forget_op(&mut self, id: OpId) {
        if let Some(op) = self.ops.remove(&id) {
            if let OpState::Sent { request, .. } = op.state {
                self.requests.remove(&request);
            }
            if let Some(client) = self.clients.get_mut(&op.client) {
                client.ops.remove(&id);
            }
        }
    }

    /// Reports the outcome of an operation and forgets it.
    fn complete(&mut self, now: Instant, id: OpId, result: Result<Response, OpError>) {
        let Some(op) = self.ops.remove(&id) else {
            return;
        };
        if let OpState::Sent { request, .. } = op.state {
            self.requests.remove(&request);
        }
        if let Some(client) = self.clients.get_mut(&op.client) {
            client.ops.remove(&id);
        }
        self.events.push_back(ServerEvent::Completed {
            op: id,
            endpoint: op.endpoint,
            operation: op.name,
            result,
            latency: now.saturating_duration_since(op.started),
        });
    }

    fn queue_timeout(&mut self, now: Instant, id: OpId) {
        let Some(op) = self.ops.get(&id) else {
            return;
        };
        if let Some(client) = self.clients.get_mut(&op.client) {
            client.queue.retain(|(queued, _)| *queued != id);
        }
        let error = OpError::QueueTimeout {
            endpoint: op.endpoint.clone(),
            waited: now.saturating_duration_since(op.started),
        };
        self.complete(now, id, Err(error));
    }

    /// The answer to an operation's request.
    fn on_response(&mut self, now: Instant, request: RequestId, packet: Packet) {
        let Some(id) = self.requests.get(&request).copied() else {
            return;
        };
        let Some(op) = self.ops.get(&id) else {
            return;
        };
        let Some(client) = self.clients.get(&op.client) else {
            return;
        };
        let schema = self.registry.with_versions(&client.versions);
        let alternate_path = &client.registration.links.alternate_path;
        let mut result = decode_response(&packet, &op.body, op.accept, alternate_path, &schema);
        if op.observe.is_some() && result.is_err() && establishes_observation(&packet) {
            // Undecodable: the Observe failed, leave nothing behind (RFC 7641 §3.6: the next
            // notification gets a Reset).
            self.endpoint.cancel_request(now, request);
        }
        if let (Some(paths), Ok(response)) = (&op.observe, &mut result)
            && establishes_observation(&packet)
        {
            self.next_observation += 1;
            let observation = ObservationId(self.next_observation);
            response.observation = Some(observation);
            let address = match op.state {
                OpState::Sent { address, .. } => address,
                OpState::Queued { .. } => client.registration.address,
            };
            let observed = Observed {
                client: op.client,
                endpoint: op.endpoint.clone(),
                request,
                address,
                paths: paths.clone(),
                body: op.body.clone(),
                accept: op.accept,
                composite: op.name == "observe-composite",
            };
            if let Some(client) = self.clients.get_mut(&observed.client) {
                client.observations.insert(observation);
            }
            self.observing.insert(request, observation);
            self.observations.insert(observation, observed);
        }
        self.complete(now, id, result);
    }

    fn on_request_failed(&mut self, now: Instant, request: RequestId, error: coap::ExchangeError) {
        if let Some(observation) = self.observing.get(&request).copied() {
            let reason = format!("the observation's exchange failed: {error}");
            self.end_observation(observation, &reason);
            return;
        }
        let Some(id) = self.requests.get(&request).copied() else {
            return;
        };
        let address = match self.ops.get(&id).map(|o| &o.state) {
            Some(OpState::Sent { address, .. }) => *address,
            _ => return,
        };
        self.complete(now, id, Err(OpError::Exchange { address, error }));
    }

    fn on_notification(&mut self, request: RequestId, packet: &Packet, seq: u32) {
        let Some(observation) = self.observing.get(&request).copied() else {
            return;
        };
        let Some(observed) = self.observations.get(&observation) else {
            return;
        };
        let Some(client) = self.clients.get(&observed.client) else {
            return;
        };
        let schema = self.registry.with_versions(&client.versions);
        let alternate_path = &client.registration.links.alternate_path;
        let mut response = decode_notification(
            packet,
            &observed.body,
            observed.accept,
            alternate_path,
            &schema,
        );
        response.observation = Some(observation);
        self.events.push_back(ServerEvent::Notification {
            observation,
            endpoint: observed.endpoint.clone(),
            path: observed.paths.first().copied().unwrap_or(Lwm2mPath::Root),
            response,
            seq,
        });
    }

    /// Forgets an observation and reports it ended; the caller deals with the endpoint.
    fn end_observation(&mut self, observation: ObservationId, reason: &str) {
        let Some(observed) = self.observations.remove(&observation) else {
            return;
        };
        self.observing.remove(&observed.request);
        if let Some(client) = self.clients.get_mut(&observed.client) {
            client.observations.remove(&observation);
        }
        self.events.push_back(ServerEvent::ObservationEnded {
            observation,
            endpoint: observed.endpoint,
            reason: reason.to_owned(),
        });
    }

    /// Removes a registration: its observations end (the next notification gets a Reset,
    /// RFC 7641 §3.6) and its operations complete with [`OpError::Deregistered`].
    /// Counts a registration in (`true`) or out of its source IP address.
    fn count_ip(&mut self, ip: IpAddr, add: bool) {
        let n = self.per_ip.entry(ip).or_default();
        if add {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    fn remove_registration(&mut self, now: Instant, key: Key, why: &str) -> Option<Registration> {
        let client = self.clients.remove(&key)?;
        let registration = client.registration;
        self.by_endpoint.remove(&registration.endpoint);
        self.by_id.remove(&registration.id);
        if self.by_address.get(&registration.address) == Some(&key) {
            self.by_address.remove(&registration.address);
        }
        self.count_ip(registration.address.ip(), false);
        let reason = format!("the registration ended: {why}");
        for observation in client.observations {
            if let Some(request) = self.observations.get(&observation).map(|o| o.request) {
                self.endpoint.cancel_request(now, request);
            }
            self.end_observation(observation, &reason);
        }
        for id in client.ops {
            if let Some(OpState::Sent { request, .. }) = self.ops.get(&id).map(|o| &o.state) {
                self.endpoint.cancel_request(now, *request);
            }
            let endpoint = registration.endpoint.clone();
            self.complete(now, id, Err(OpError::Deregistered { endpoint }));
        }
        Some(registration)
    }
}
