//! The sans-IO DTLS server: one session per peer address behind one socket.

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc_dtls::config::HandshakeConfig;

use crate::config::{CookieSlot, LookupSlot, ServerConfig, provider, server_handshake};
use crate::cookie::CookieSecrets;
use crate::keylog::{KeyLog, SessionSecrets};
use crate::record::{self, ClientHello, HelloParse};
use crate::session::{Output, Session, SessionId, WireStats};
use crate::{CloseReason, DtlsError, FailureReason, Identity, Transmit};

/// aHash keyed from the OS, per table: the session table is looked up for every datagram.
/// The same hasher as `lwm2m_proto::hash`, which keys once per process for the many small
/// tables of a fleet; this crate does not depend on proto and has one such table per socket.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
type HashSet<T> = std::collections::HashSet<T, ahash::RandomState>;

/// What happened on a [`DtlsServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A handshake completed: the peer authenticated as `identity`.
    Established {
        /// The new session.
        session: SessionId,
        /// The peer's address.
        peer: SocketAddr,
        /// Who it authenticated as.
        identity: Identity,
    },
    /// An application datagram (e.g. one CoAP message) arrived on an established session.
    /// LwM2M servers check `identity` against the endpoint name the client registers with
    /// (Core TS 1.1 §7.1.8) and answer 4.03 on a mismatch.
    Datagram {
        /// The session it arrived on.
        session: SessionId,
        /// The peer's address.
        peer: SocketAddr,
        /// Who the session authenticated as.
        identity: Identity,
        /// The decrypted payload.
        payload: Vec<u8>,
    },
    /// A handshake failed; the peer has no session. Other sessions are not affected.
    HandshakeFailed {
        /// The peer's address.
        peer: SocketAddr,
        /// The PSK identity the peer claimed, if it got that far.
        identity: Option<Identity>,
        /// Why it failed.
        reason: FailureReason,
        /// The bytes the failed handshake cost.
        stats: WireStats,
    },
    /// An established session ended and was removed.
    Closed {
        /// The session.
        session: SessionId,
        /// The peer's address.
        peer: SocketAddr,
        /// Who the session authenticated as.
        identity: Identity,
        /// What ended it.
        reason: CloseReason,
        /// Its wire accounting, final.
        stats: WireStats,
    },
}

/// Totals over the server's lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// Handshakes started (ClientHellos with a valid cookie that opened a session).
    pub handshakes_started: u64,
    /// Handshakes completed.
    pub handshakes_completed: u64,
    /// Handshakes failed (any [`FailureReason`]).
    pub handshakes_failed: u64,
    /// ClientHellos with a valid cookie dropped because `max_handshakes` or `max_sessions`
    /// was reached.
    pub hellos_refused: u64,
    /// Datagrams from peers without a session that do not open a handshake.
    pub stray_datagrams: u64,
    /// Established sessions replaced by a new handshake from the same address.
    pub sessions_replaced: u64,
    /// HelloVerifyRequests sent, statelessly, to ClientHellos without a valid cookie.
    pub hello_verify_requests: u64,
    /// ClientHellos whose cookie did not verify (forged, for another address or hello, or
    /// older than the secret rotation); each was answered with a fresh HelloVerifyRequest.
    pub cookies_rejected: u64,
    /// Epoch-0 ClientHellos dropped as unusable (truncated, inconsistent lengths,
    /// fragmented), or repeating the ClientHello that opened the established session.
    pub hellos_dropped: u64,
}

/// A snapshot of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session.
    pub session: SessionId,
    /// Who the peer authenticated as (or, during the handshake, the PSK identity it claimed).
    pub identity: Option<Identity>,
    /// Whether the handshake has completed.
    pub established: bool,
    /// Its wire accounting so far.
    pub stats: WireStats,
}

/// The DTLS server side of one UDP socket, sans-IO.
///
/// Datagrams from any number of peers enter through [`DtlsServer::handle_datagram`]; each
/// peer address has at most one session:
///
/// - a ClientHello without a valid cookie is answered with a HelloVerifyRequest whose
///   cookie is a MAC of the peer's address and the hello (RFC 6347 §4.2.1); nothing is
///   stored for it, so floods of (spoofed) ClientHellos cost no memory and no handshake
///   slots, and do not touch an existing session;
/// - a session starts with a ClientHello that returns a valid cookie: the peer proved it
///   receives at its address. If that peer had a session, it is replaced (RFC 6347 §4.2.8:
///   the client rebooted or reuses the port), except by a retransmission of the ClientHello
///   that opened the current session;
/// - the initial ClientHello is accepted whatever its record-layer version (RFC 6347 §4.1,
///   RFC 5246 Appendix E.1); other datagrams from unknown peers are dropped;
/// - every handshake ends within `handshake_timeout`; at most `max_handshakes` run at once;
/// - failed, closed, replaced and idle sessions are removed and reported as events;
/// - a dropped datagram is logged (`tracing`, info) once per peer with its reason.
///
/// Output leaves through [`DtlsServer::poll_transmit`] and [`DtlsServer::poll_event`]; call
/// [`DtlsServer::handle_timeout`] when [`DtlsServer::poll_timeout`] says.
pub struct DtlsServer {
    handshake: Arc<HandshakeConfig>,
    lookup: LookupSlot,
    cookie_slot: CookieSlot,
    cookies: CookieSecrets,
    drops: DropLog,
    handshake_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_handshakes: usize,
    max_sessions: usize,
    key_log: Option<Arc<dyn KeyLog>>,
    sessions: HashMap<SocketAddr, Session>,
    /// (deadline, peer) of every session with a deadline; mirrors `Session::scheduled`.
    timers: BTreeSet<(Instant, SocketAddr)>,
    handshaking: usize,
    next_id: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ServerEvent>,
    counters: ServerCounters,
    outputs: Vec<Output>,
}

impl std::fmt::Debug for DtlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsServer")
            .field("sessions", &self.sessions.len())
            .field("handshaking", &self.handshaking)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl DtlsServer {
    /// A server with `config`; fails if the credentials cannot be used.
    pub fn new(config: ServerConfig) -> Result<DtlsServer, DtlsError> {
        let lookup: LookupSlot = Arc::new(Mutex::new(None));
        let cookie_slot: CookieSlot = Arc::new(Mutex::new(None));
        let handshake = Arc::new(server_handshake(&config, &lookup, &cookie_slot)?);
        Ok(DtlsServer {
            handshake,
            lookup,
            cookie_slot,
            cookies: CookieSecrets::new(provider()?)?,
            drops: DropLog::default(),
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            max_handshakes: config.max_handshakes,
            max_sessions: config.max_sessions,
            key_log: config.key_log,
            sessions: HashMap::default(),
            timers: BTreeSet::new(),
            handshaking: 0,
            next_id: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: ServerCounters::default(),
            outputs: Vec::new(),
        })
    }

    /// Feeds one datagram received from `peer` at `now`.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) {
        let datagram = match record::parse_client_hello(datagram) {
            HelloParse::NotHello => Cow::Borrowed(datagram),
            HelloParse::Malformed(reason) => {
                self.counters.hellos_dropped += 1;
                self.drops.note(now, peer, reason);
                return;
            }
            HelloParse::Hello(hello) => match self.handle_hello(now, peer, datagram, &hello) {
                Some(hello) => Cow::Owned(hello),
                None => return,
            },
        };
        let Some(session) = self.sessions.get_mut(&peer) else {
            self.counters.stray_datagrams += 1;
            self.drops
                .note(now, peer, "no session with this peer and not a ClientHello");
            return;
        };
        *self.lookup.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let discarded = session.stats.discarded;
        let result = session.read(now, &datagram, &mut self.outputs);
        if session.stats.discarded > discarded {
            self.drops.note(
                now,
                peer,
                "a record of the established session failed to decrypt or parse (forged, \
                 corrupted or stale)",
            );
        }
        let lookup = self.lookup.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(lookup) = &lookup {
            session.identity = Some(Identity::Psk(lookup.identity.as_slice().into()));
            session.psk_known = lookup.found;
        }
        if let Err(rejection) = result {
            let reason = match lookup {
                Some(lookup) if !lookup.found => FailureReason::UnknownIdentity,
                _ => rejection.reason(session.psk_known),
            };
            self.fail(peer, reason);
            return;
        }
        let mut outputs = std::mem::take(&mut self.outputs);
        for output in outputs.drain(..) {
            self.apply(peer, output);
        }
        self.outputs = outputs;
        if self.sessions.contains_key(&peer) {
            self.flush(peer);
            self.reschedule(peer);
        }
    }

    /// Answers or admits a ClientHello; the datagram to feed to the peer's session (with a
    /// DTLS 1.2 record header), or `None` if the hello was answered or dropped here.
    fn handle_hello(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        datagram: &[u8],
        hello: &ClientHello<'_>,
    ) -> Option<Vec<u8>> {
        self.cookies.rotate(now);
        if !self.cookies.verify(peer, hello) {
            // RFC 6347 §4.2.1: a hello with an invalid cookie is treated as one without.
            if !hello.cookie.is_empty() {
                self.counters.cookies_rejected += 1;
            }
            let cookie = self.cookies.cookie(peer, hello);
            self.transmits.push_back(Transmit {
                peer,
                bytes: record::hello_verify_request(hello, &cookie),
            });
            self.counters.hello_verify_requests += 1;
            return None;
        }
        if hello.message_seq != 1 {
            // The DTLS layer takes the hello that returns the cookie as message 1 only.
            self.counters.hellos_dropped += 1;
            self.drops.note(
                now,
                peer,
                "ClientHello returning a cookie with a message_seq other than 1 (not supported)",
            );
            return None;
        }
        // The first ClientHello, replayed to the session, takes the record sequence number
        // just below this one (record headers are outside the handshake transcript).
        let (sequence, replayed_sequence) = match hello.record_sequence {
            0 => (1, 0),
            n => (n, n - 1),
        };
        let normalized = record::with_record_header(datagram, sequence);
        if let Some(session) = self.sessions.get_mut(&peer)
            && session.hello_random == Some(hello.random)
        {
            if !session.established {
                // A retransmission: our flight was lost (RFC 6347 §4.2.4).
                match session.repeat_flight(now, datagram) {
                    Ok(()) => {
                        self.flush(peer);
                        self.reschedule(peer);
                    }
                    Err(reason) => self.fail(peer, reason),
                }
                return None;
            }
            self.counters.hellos_dropped += 1;
            self.drops.note(
                now,
                peer,
                "repeats the ClientHello that opened the established session",
            );
            return None;
        }
        if !self.start_session(now, peer, Some(hello.random)) {
            self.drops.note(
                now,
                peer,
                "ClientHello refused: max_handshakes or max_sessions reached",
            );
            return None;
        }
        let session = self.sessions.get_mut(&peer)?;
        session.account_cookie_exchange(
            datagram.len().saturating_sub(hello.cookie.len()),
            record::hello_verify_request(hello, hello.cookie).len(),
        );
        *self.cookie_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(hello.cookie.to_vec());
        let primed = session.prime(now, &hello.without_cookie(replayed_sequence));
        *self.cookie_slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(message) = primed {
            self.fail(peer, FailureReason::Protocol(message));
            return None;
        }
        Some(normalized)
    }

    /// Replaces whatever session `peer` has with a new one; `false` if a limit refuses it.
    fn start_session(&mut self, now: Instant, peer: SocketAddr, random: Option<[u8; 32]>) -> bool {
        let existing = self.sessions.get(&peer).map(|s| s.established);
        // Replacing a handshake in progress does not add one.
        let handshakes = self
            .handshaking
            .saturating_sub(usize::from(existing == Some(false)));
        if handshakes >= self.max_handshakes
            || (existing.is_none() && self.sessions.len() >= self.max_sessions)
        {
            self.counters.hellos_refused += 1;
            return false;
        }
        if let Some(old) = self.remove(peer) {
            if old.established {
                self.counters.sessions_replaced += 1;
                self.events
                    .push_back(closed_event(old, CloseReason::Replaced));
            } else {
                self.report_failure(old, FailureReason::Superseded);
            }
        }
        let id = SessionId(self.next_id);
        self.next_id += 1;
        let mut session = Session::accept(
            id,
            peer,
            now,
            self.handshake.clone(),
            self.handshake_timeout,
        );
        session.hello_random = random;
        self.sessions.insert(peer, session);
        self.handshaking += 1;
        self.counters.handshakes_started += 1;
        true
    }

    fn apply(&mut self, peer: SocketAddr, output: Output) {
        let Some(session) = self.sessions.get_mut(&peer) else {
            return;
        };
        match output {
            Output::Established => {
                self.handshaking = self.handshaking.saturating_sub(1);
                self.counters.handshakes_completed += 1;
                if let (Some(key_log), Some(secrets)) = (&self.key_log, session.secrets()) {
                    key_log.log(&secrets);
                }
                self.events.push_back(ServerEvent::Established {
                    session: session.id,
                    peer,
                    identity: identity_of(session),
                });
            }
            Output::Data(payload) => self.events.push_back(ServerEvent::Datagram {
                session: session.id,
                peer,
                identity: identity_of(session),
                payload,
            }),
            Output::PeerClosed => {
                self.flush(peer);
                if let Some(session) = self.remove(peer) {
                    self.events
                        .push_back(closed_event(session, CloseReason::PeerClosed));
                }
            }
        }
    }

    /// Fires due timers: handshake retransmissions, handshake timeouts, idle sessions.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<SocketAddr> = self
            .timers
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, peer)| *peer)
            .collect();
        for peer in due {
            let Some(session) = self.sessions.get_mut(&peer) else {
                continue;
            };
            let idle = session.established
                && self
                    .idle_timeout
                    .and_then(|idle| session.last_received.checked_add(idle))
                    .is_some_and(|limit| limit <= now);
            if idle {
                session.close(now);
                self.flush(peer);
                if let Some(session) = self.remove(peer) {
                    self.events
                        .push_back(closed_event(session, CloseReason::IdleTimeout));
                }
                continue;
            }
            match session.handle_timeout(now) {
                Ok(()) => {
                    self.flush(peer);
                    self.reschedule(peer);
                }
                Err(reason) => self.fail(peer, reason),
            }
        }
    }

    /// The earliest instant at which [`DtlsServer::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(deadline, _)| *deadline)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Sends `payload` to `peer` as one application_data record.
    pub fn send(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        payload: &[u8],
    ) -> Result<(), DtlsError> {
        let session = self
            .sessions
            .get_mut(&peer)
            .ok_or(DtlsError::NoSession(peer))?;
        session.write(now, payload)?;
        self.flush(peer);
        Ok(())
    }

    /// Closes the session with `peer` (close_notify for an established one); `false` if
    /// there was none. An established session is reported as [`ServerEvent::Closed`].
    pub fn close(&mut self, now: Instant, peer: SocketAddr) -> bool {
        let Some(session) = self.sessions.get_mut(&peer) else {
            return false;
        };
        session.close(now);
        self.flush(peer);
        if let Some(session) = self.remove(peer)
            && session.established
        {
            self.events
                .push_back(closed_event(session, CloseReason::LocalClose));
        }
        true
    }

    /// A snapshot of the session with `peer`.
    pub fn session(&self, peer: SocketAddr) -> Option<SessionInfo> {
        self.sessions.get(&peer).map(|s| SessionInfo {
            session: s.id,
            identity: s.identity.clone(),
            established: s.established,
            stats: s.stats,
        })
    }

    /// The key log secrets of the established session with `peer`.
    pub fn secrets(&self, peer: SocketAddr) -> Option<SessionSecrets> {
        self.sessions.get(&peer)?.secrets()
    }

    /// Sessions, established or handshaking.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Handshakes in progress.
    pub fn handshake_count(&self) -> usize {
        self.handshaking
    }

    /// Lifetime totals.
    pub fn counters(&self) -> &ServerCounters {
        &self.counters
    }

    /// Moves the session's queued datagrams to the transmit queue.
    fn flush(&mut self, peer: SocketAddr) {
        if let Some(session) = self.sessions.get_mut(&peer) {
            while let Some(bytes) = session.poll_transmit() {
                self.transmits.push_back(Transmit { peer, bytes });
            }
        }
    }

    fn reschedule(&mut self, peer: SocketAddr) {
        let Some(session) = self.sessions.get_mut(&peer) else {
            return;
        };
        let deadline = session.deadline(self.idle_timeout);
        if deadline == session.scheduled {
            return;
        }
        if let Some(old) = session.scheduled.take() {
            self.timers.remove(&(old, peer));
        }
        if let Some(new) = deadline {
            self.timers.insert((new, peer));
        }
        session.scheduled = deadline;
    }

    /// Removes the session with `peer` and its timer.
    fn remove(&mut self, peer: SocketAddr) -> Option<Session> {
        let session = self.sessions.remove(&peer)?;
        if let Some(deadline) = session.scheduled {
            self.timers.remove(&(deadline, peer));
        }
        if !session.established {
            self.handshaking = self.handshaking.saturating_sub(1);
        }
        Some(session)
    }

    /// Ends the handshake with `peer`: sends what it queued (its alert) and reports it.
    fn fail(&mut self, peer: SocketAddr, reason: FailureReason) {
        self.flush(peer);
        if let Some(session) = self.remove(peer) {
            self.report_failure(session, reason);
        }
    }

    fn report_failure(&mut self, session: Session, reason: FailureReason) {
        self.counters.handshakes_failed += 1;
        self.events.push_back(ServerEvent::HandshakeFailed {
            peer: session.peer,
            identity: session.identity,
            reason,
            stats: session.stats,
        });
    }
}

fn identity_of(session: &Session) -> Identity {
    session
        .identity
        .clone()
        .unwrap_or_else(|| Identity::Psk(Arc::from(&[][..])))
}

fn closed_event(session: Session, reason: CloseReason) -> ServerEvent {
    ServerEvent::Closed {
        session: session.id,
        peer: session.peer,
        identity: identity_of(&session),
        reason,
        stats: session.stats,
    }
}

/// Logs dropped datagrams once per peer (the last [`DropLog::PEERS`] peers are remembered),
/// and at most [`DropLog::PER_SECOND`] lines a second so that a flood from many addresses
/// cannot flood the log; the lines left out are counted in the next one.
#[derive(Default)]
struct DropLog {
    logged: HashSet<SocketAddr>,
    order: VecDeque<SocketAddr>,
    window: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl DropLog {
    const PEERS: usize = 4096;
    const PER_SECOND: u32 = 20;

    /// Logs the drop unless this peer's was logged or the second's budget is spent;
    /// whether it logged.
    fn note(&mut self, now: Instant, peer: SocketAddr, reason: &str) -> bool {
        if self.logged.contains(&peer) {
            return false;
        }
        let in_window = self
            .window
            .is_some_and(|start| now.saturating_duration_since(start) < Duration::from_secs(1));
        if !in_window {
            self.window = Some(now);
            self.lines = 0;
        }
        if self.lines >= Self::PER_SECOND {
            self.suppressed += 1;
            return false;
        }
        self.lines += 1;
        if self.order.len() >= Self::PEERS
            && let Some(oldest) = self.order.pop_front()
        {
            self.logged.remove(&oldest);
        }
        self.logged.insert(peer);
        self.order.push_back(peer);
        let suppressed = std::mem::take(&mut self.suppressed);
        if suppressed > 0 {
            tracing::info!(
                "DTLS: dropped a datagram from {peer}: {reason} (once per peer; {suppressed} \
                 earlier drops from other peers not logged)"
            );
        } else {
            tracing::info!("DTLS: dropped a datagram from {peer}: {reason} (once per peer)");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 2], i))
    }

    #[test]
    fn drops_are_logged_once_per_peer_and_at_most_twenty_a_second() {
        let mut log = DropLog::default();
        let start = Instant::now();
        assert!(log.note(start, peer(1), "stray"));
        assert!(!log.note(start, peer(1), "stray"), "once per peer");
        for i in 2..=20 {
            assert!(log.note(start, peer(i), "stray"));
        }
        assert!(!log.note(start, peer(21), "stray"), "budget spent");
        assert_eq!(log.suppressed, 1);
        let later = start + Duration::from_secs(1);
        assert!(log.note(later, peer(21), "stray"));
        assert_eq!(log.suppressed, 0, "reported with that line");
        assert!(!log.note(later, peer(1), "stray"));
    }

    #[test]
    fn the_drop_log_forgets_the_oldest_peers() {
        let mut log = DropLog::default();
        let mut now = Instant::now();
        for i in 0..=DropLog::PEERS as u32 {
            if i % DropLog::PER_SECOND == 0 {
                now += Duration::from_secs(1);
            }
            let address = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 1));
            assert!(log.note(now, address, "stray"));
        }
        assert_eq!(log.logged.len(), DropLog::PEERS);
        now += Duration::from_secs(1);
        assert!(log.note(now, SocketAddr::from(([10, 1, 0, 0], 1)), "stray"));
    }
}
