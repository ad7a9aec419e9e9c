//! The [`Endpoint`] state machine: the message layer (RFC 7252 §4), timers, and the dispatch
//! of incoming messages to the client side (`client.rs`) and the server side (`server.rs`).
//! What it keeps is defined below it, in `state.rs` and `exchange.rs`; the two sides add
//! their methods to [`Endpoint`] and import nothing back from each other.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{MessageClass, MessageType};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::hash::HashMap;

use super::exchange::Exchange;
use super::message::{self, BlockOption};
use super::state::{
    Download, Expiring, MessageKey, Observation, Owner, PeerState, Reply, Retransmit, Sent, Timer,
    Token, Upload, encode_empty,
};
use super::{Config, Counters, Event, ObservationId, RequestId, Transmit};

/// The largest capacity (entries) of a table or queue an idle endpoint gives back.
pub(super) const RELEASE_UP_TO: usize = 16;

/// A CoAP endpoint: one local UDP socket's worth of protocol state, serving any number of
/// peers in both the client and the server role. See the [module documentation](super).
///
/// Drive it with [`handle_datagram`](Self::handle_datagram) and
/// [`handle_timeout`](Self::handle_timeout); after each call drain
/// [`poll_transmit`](Self::poll_transmit) and [`poll_event`](Self::poll_event) and re-arm the
/// timer with [`poll_timeout`](Self::poll_timeout).
#[derive(Debug)]
pub struct Endpoint {
    pub(super) config: Config,
    pub(super) rng: ChaCha8Rng,
    /// Preferred block SZX (RFC 7959 §2.2) from [`Config::preferred_block_size`].
    pub(super) szx: u8,
    pub(super) peers: HashMap<SocketAddr, PeerState>,
    next_peer_sweep: Option<Instant>,
    pub(super) sent: HashMap<MessageKey, Sent>,
    pub(super) seen: Expiring<MessageKey, Reply>,
    pub(super) timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    pub(super) exchanges: HashMap<RequestId, Exchange>,
    pub(super) tokens: HashMap<(SocketAddr, Token), RequestId>,
    pub(super) next_id: u64,
    pub(super) observations: HashMap<ObservationId, Observation>,
    pub(super) observation_tokens: HashMap<(SocketAddr, Token), ObservationId>,
    pub(super) uploads: Expiring<(SocketAddr, Vec<u8>), Upload>,
    pub(super) downloads: Expiring<(SocketAddr, Vec<u8>), Download>,
    transmits: VecDeque<Transmit>,
    pub(super) events: VecDeque<Event>,
    pub(super) counters: Counters,
}

impl Endpoint {
    /// Creates an endpoint. Out-of-range configuration values are clamped: `nstart` to at
    /// least 1, `ack_random_factor` to 1..=16, `max_retransmit` to at most 20, durations to
    /// at most 24 h, `token_length` to 1..=8, `max_message_size` to at least 64,
    /// `preferred_block_size` to a power of two in 16..=1024.
    pub fn new(mut config: Config) -> Endpoint {
        const DAY: Duration = Duration::from_secs(86_400);
        config.nstart = config.nstart.max(1);
        config.token_length = config.token_length.clamp(1, 8);
        config.max_message_size = config.max_message_size.max(64);
        config.max_retransmit = config.max_retransmit.min(20);
        config.ack_random_factor = if config.ack_random_factor.is_nan() {
            1.0
        } else {
            config.ack_random_factor.clamp(1.0, 16.0)
        };
        for duration in [
            &mut config.ack_timeout,
            &mut config.exchange_lifetime,
            &mut config.non_lifetime,
            &mut config.response_timeout,
            &mut config.separate_response_delay,
            &mut config.block_lifetime,
        ] {
            *duration = (*duration).min(DAY);
        }
        let szx = BlockOption::szx_for(config.preferred_block_size);
        config.preferred_block_size = 16 << szx;
        Endpoint {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            szx,
            peers: HashMap::default(),
            next_peer_sweep: None,
            sent: HashMap::default(),
            seen: Expiring::new(config.dedup_capacity),
            timers: BinaryHeap::new(),
            exchanges: HashMap::default(),
            tokens: HashMap::default(),
            next_id: 0,
            observations: HashMap::default(),
            observation_tokens: HashMap::default(),
            uploads: Expiring::new(config.block_cache_capacity),
            downloads: Expiring::new(config.block_cache_capacity),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            config,
        }
    }

    /// Sizes the per-peer tables for `peers` peers, and the duplicate cache for as many
    /// messages (up to [`Config::dedup_capacity`]): below that they do not grow, so no
    /// datagram waits while one is rehashed. A server that expects that many clients calls
    /// it once at the start.
    pub fn reserve_peers(&mut self, peers: usize) {
        self.peers.reserve(peers);
        self.seen.reserve(peers);
    }

    /// The configuration in use (after clamping).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Traffic counters since creation.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_none() && self.exchanges.is_empty() {
            self.release_idle();
        }
        event
    }

    /// Gives back the memory of the small tables and queues that are empty once nothing is
    /// in flight: a client between exchanges (most of a fleet's clients, most of the time)
    /// holds no allocation for them. A table that grew past [`RELEASE_UP_TO`] belongs to a
    /// busy endpoint (a server between two bursts of requests) and is kept: growing it again
    /// from nothing costs a rehash at every doubling and fresh pages from the kernel.
    fn release_idle(&mut self) {
        if self.events.capacity() <= RELEASE_UP_TO {
            self.events = VecDeque::new();
        }
        if self.transmits.is_empty() && self.transmits.capacity() <= RELEASE_UP_TO {
            self.transmits = VecDeque::new();
        }
        if self.exchanges.capacity() <= RELEASE_UP_TO {
            self.exchanges = HashMap::default();
        }
        if self.tokens.is_empty() && self.tokens.capacity() <= RELEASE_UP_TO {
            self.tokens = HashMap::default();
        }
        if self.sent.is_empty() && self.sent.capacity() <= RELEASE_UP_TO {
            self.sent = HashMap::default();
        }
        if self.timers.is_empty() && self.timers.capacity() <= RELEASE_UP_TO {
            self.timers = BinaryHeap::new();
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called; `None` when
    /// nothing is scheduled. Calling it earlier is harmless.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if self.timer_is_live(at, timer) {
                break;
            }
            self.timers.pop();
        }
        [
            self.timers.peek().map(|Reverse((at, _))| *at),
            self.seen.next_expiry(),
            self.uploads.next_expiry(),
            self.downloads.next_expiry(),
            self.next_peer_sweep,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs everything due at `now`: retransmissions and give-ups (RFC 7252 §4.2), empty
    /// ACKs for requests not answered in time (§5.2.2), response time-outs, and expiry of
    /// deduplication and block-wise state.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Retransmit(peer, mid) => self.on_retransmit_timer(now, at, peer, mid),
                Timer::Response(id) => self.on_response_timer(now, at, id),
                Timer::Ack(peer, mid) => self.on_ack_timer(now, at, peer, mid),
            }
        }
        self.seen.expire(now);
        self.uploads.expire(now);
        self.downloads.expire(now);
        if self.next_peer_sweep.is_some_and(|at| at <= now) {
            self.sweep_peers(now);
        }
    }

    /// Processes one datagram received from `peer` at `now`. Never panics, whatever the
    /// bytes; invalid ones produce [`Event::Malformed`] (and a Reset for a confirmable
    /// message with a readable header, RFC 7252 §4.2).
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += bytes.len() as u64;
        let packet = match message::decode(bytes) {
            Ok(packet) => packet,
            Err(error) => {
                if let Some(mid) = error.reject {
                    self.send_reset(peer, mid);
                }
                self.malformed(peer, error.reason);
                return;
            }
        };
        let mid = packet.header.message_id;
        let is_empty = packet.header.code == MessageClass::Empty;
        match packet.header.get_type() {
            MessageType::Acknowledgement => {
                if message::is_request(&packet) {
                    self.malformed(peer, "ACK carrying a request (RFC 7252 §4.2)".into());
                } else {
                    self.on_ack(now, peer, packet);
                }
            }
            MessageType::Reset => {
                if is_empty {
                    self.on_reset(now, peer, mid);
                } else {
                    self.malformed(peer, "Reset that is not Empty (RFC 7252 §4.2)".into());
                }
            }
            MessageType::Confirmable | MessageType::NonConfirmable => {
                let confirmable = packet.header.get_type() == MessageType::Confirmable;
                if is_empty {
                    if confirmable {
                        // CoAP ping (RFC 7252 §4.3): answered with a Reset.
                        self.send_reset(peer, mid);
                    } else {
                        self.malformed(
                            peer,
                            "Empty non-confirmable message (RFC 7252 §4.3)".into(),
                        );
                    }
                    return;
                }
                if let Some(reply) = self.seen.get_mut(now, &(peer, mid)) {
                    // A duplicate (RFC 7252 §4.5): repeat the ACK or RST, never a second event.
                    self.counters.duplicates += 1;
                    let resend = match reply {
                        Reply::Cached(bytes) if confirmable => Some(bytes.clone()),
                        Reply::Pending { .. } if confirmable => {
                            let ack = encode_empty(MessageType::Acknowledgement, mid);
                            *reply = Reply::Cached(ack.clone());
                            Some(ack)
                        }
                        _ => None,
                    };
                    if let Some(bytes) = resend {
                        self.transmit(peer, bytes);
                    }
                    return;
                }
                let lifetime = if confirmable {
                    self.config.exchange_lifetime
                } else {
                    self.config.non_lifetime
                };
                self.seen
                    .insert((peer, mid), Reply::Nothing, now + lifetime);
                if message::is_request(&packet) {
                    self.on_request(now, peer, packet);
                } else {
                    self.on_response_message(now, peer, packet);
                }
            }
        }
    }

    fn malformed(&mut self, peer: SocketAddr, reason: String) {
        self.counters.malformed += 1;
        self.events.push_back(Event::Malformed { peer, reason });
    }

    fn timer_is_live(&self, at: Instant, timer: Timer) -> bool {
        match timer {
            Timer::Retransmit(peer, mid) => self
                .sent
                .get(&(peer, mid))
                .and_then(|s| s.retransmit.as_ref())
                .is_some_and(|r| r.next_at == at),
            Timer::Response(id) => self
                .exchanges
                .get(&id)
                .is_some_and(|e| e.deadline == Some(at)),
            Timer::Ack(peer, mid) => matches!(
                self.seen.peek(&(peer, mid)),
                Some(Reply::Pending { ack_at, .. }) if *ack_at == at
            ),
        }
    }

    /// An ACK arrived (RFC 7252 §4.2): match it to a confirmable message by message ID.
    fn on_ack(&mut self, now: Instant, peer: SocketAddr, packet: coap_lite::Packet) {
        let key = (peer, packet.header.message_id);
        if self.sent.get(&key).is_none_or(|s| s.retransmit.is_none()) {
            return; // unknown or duplicate ACK: silently ignored (RFC 7252 §4.2)
        }
        let Some(sent) = self.sent.remove(&key) else {
            return;
        };
        match sent.owner {
            Owner::Request(id) => self.on_request_acked(now, id, key.1, packet),
            Owner::Response => {}
            Owner::Notification(id) => {
                if let Some(observation) = self.observations.get_mut(&id) {
                    observation.con_mid = observation.con_mid.filter(|m| *m != key.1);
                }
            }
        }
    }

    /// A Reset arrived (RFC 7252 §4.2, §4.3; RFC 7641 §3.6).
    fn on_reset(&mut self, now: Instant, peer: SocketAddr, mid: u16) {
        self.counters.resets_in += 1;
        let Some(sent) = self.sent.remove(&(peer, mid)) else {
            return;
        };
        match sent.owner {
            Owner::Request(id) => self.fail_request(now, id, super::ExchangeError::Reset),
            Owner::Response => {}
            Owner::Notification(id) => self.end_observation(id, super::CancelReason::Reset),
        }
    }

    fn on_retransmit_timer(&mut self, now: Instant, at: Instant, peer: SocketAddr, mid: u16) {
        let max = self.config.max_retransmit;
        let Some(sent) = self.sent.get_mut(&(peer, mid)) else {
            return;
        };
        let Some(rt) = sent.retransmit.as_mut().filter(|r| r.next_at == at) else {
            return;
        };
        if rt.transmissions <= max {
            rt.transmissions += 1;
            rt.timeout = rt.timeout.saturating_mul(2);
            rt.next_at = now + rt.timeout;
            let (bytes, next_at) = (rt.bytes.clone(), rt.next_at);
            self.timers
                .push(Reverse((next_at, Timer::Retransmit(peer, mid))));
            self.counters.retransmissions += 1;
            self.transmit(peer, bytes);
            return;
        }
        let transmissions = rt.transmissions;
        let owner = sent.owner;
        self.sent.remove(&(peer, mid));
        match owner {
            Owner::Request(id) => {
                self.fail_request(now, id, super::ExchangeError::Timeout { transmissions })
            }
            Owner::Response => {}
            Owner::Notification(id) => self.end_observation(id, super::CancelReason::Timeout),
        }
    }

    /// Queues a datagram.
    pub(super) fn transmit(&mut self, peer: SocketAddr, bytes: Vec<u8>) {
        self.counters.datagrams_out += 1;
        self.counters.bytes_out += bytes.len() as u64;
        self.transmits.push_back(Transmit { peer, bytes });
    }

    pub(super) fn send_reset(&mut self, peer: SocketAddr, mid: u16) {
        self.counters.resets_out += 1;
        self.transmit(peer, encode_empty(MessageType::Reset, mid));
    }

    /// Sends the ACK or RST answering incoming message `mid` and remembers it for duplicates
    /// (RFC 7252 §4.5).
    pub(super) fn reply_cached(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        mid: u16,
        bytes: Vec<u8>,
    ) {
        if let Some(reply) = self.seen.get_mut(now, &(peer, mid)) {
            *reply = Reply::Cached(bytes.clone());
        }
        self.transmit(peer, bytes);
    }

    /// Sends a confirmable message and schedules its retransmission (RFC 7252 §4.2): first
    /// timeout uniformly in [ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR].
    pub(super) fn send_confirmable(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        mid: u16,
        bytes: Vec<u8>,
        owner: Owner,
        inherit: Option<Retransmit>,
    ) {
        let (transmissions, timeout) = match inherit {
            // RFC 7641 §4.5.2: the new notification takes the place of the one in flight.
            Some(old) => (old.transmissions + 1, old.timeout.saturating_mul(2)),
            None => {
                let factor = self.rng.random_range(1.0..=self.config.ack_random_factor);
                (1, super::scaled(self.config.ack_timeout, factor))
            }
        };
        let next_at = now + timeout;
        let retransmit = Retransmit {
            bytes: bytes.clone(),
            transmissions,
            timeout,
            next_at,
        };
        self.sent.insert(
            (peer, mid),
            Sent {
                owner,
                retransmit: Some(retransmit),
            },
        );
        self.timers
            .push(Reverse((next_at, Timer::Retransmit(peer, mid))));
        self.transmit(peer, bytes);
    }

    /// The state of `peer`, created on first use.
    pub(super) fn peer_state(&mut self, now: Instant, peer: SocketAddr) -> &mut PeerState {
        let rng = &mut self.rng;
        if self.next_peer_sweep.is_none() {
            self.next_peer_sweep = Some(now + self.config.exchange_lifetime);
        }
        let state = self.peers.entry(peer).or_insert_with(|| PeerState {
            next_mid: rng.random(),
            active: 0,
            queue: VecDeque::new(),
            last_used: now,
        });
        state.last_used = now;
        state
    }

    /// A fresh message ID for `peer` (RFC 7252 §4.4): sequential from a random start,
    /// skipping IDs still awaiting acknowledgement.
    pub(super) fn next_mid(&mut self, now: Instant, peer: SocketAddr) -> u16 {
        let state = self.peer_state(now, peer);
        let mut mid = state.next_mid;
        state.next_mid = state.next_mid.wrapping_add(1);
        for _ in 0..u16::MAX {
            if !self.sent.contains_key(&(peer, mid)) {
                break;
            }
            let state = self.peer_state(now, peer);
            mid = state.next_mid;
            state.next_mid = state.next_mid.wrapping_add(1);
        }
        mid
    }

    /// A random token not in use with `peer` (RFC 7252 §5.3.1).
    pub(super) fn new_token(&mut self, peer: SocketAddr) -> Token {
        let len = self.config.token_length.min(8);
        loop {
            let mut bytes = [0; 8];
            self.rng.fill(&mut bytes[..len]);
            let token = Token {
                len: len as u8,
                bytes,
            };
            if !self.tokens.contains_key(&(peer, token)) {
                return token;
            }
        }
    }

    /// Fresh request or observation id.
    pub(super) fn next_serial(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Forgets peers without state for EXCHANGE_LIFETIME: after that their message IDs can
    /// no longer collide with remembered ones (RFC 7252 §4.4).
    fn sweep_peers(&mut self, now: Instant) {
        let lifetime = self.config.exchange_lifetime;
        self.peers
            .retain(|_, p| p.active > 0 || !p.queue.is_empty() || p.last_used + lifetime > now);
        self.next_peer_sweep = (!self.peers.is_empty()).then_some(now + lifetime);
    }

    /// Remembered incoming message IDs (for tests and reports).
    pub fn dedup_entries(&self) -> usize {
        self.seen.len()
    }
}
