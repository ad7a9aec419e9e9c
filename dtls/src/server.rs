//! The sans-IO DTLS server: one session per peer address behind one socket.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc_dtls::config::HandshakeConfig;

use crate::config::{LookupSlot, ServerConfig, server_handshake};
use crate::keylog::{KeyLog, SessionSecrets};
use crate::record::{client_hello_random, is_initial_client_hello};
use crate::session::{Output, Session, SessionId, WireStats};
use crate::{CloseReason, DtlsError, FailureReason, Identity, Transmit};

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
    /// Handshakes started (fresh ClientHellos accepted).
    pub handshakes_started: u64,
    /// Handshakes completed.
    pub handshakes_completed: u64,
    /// Handshakes failed (any [`FailureReason`]).
    pub handshakes_failed: u64,
    /// Fresh ClientHellos dropped because `max_handshakes` or `max_sessions` was reached.
    pub hellos_refused: u64,
    /// Datagrams from peers without a session that do not open a handshake.
    pub stray_datagrams: u64,
    /// Established sessions replaced by a new handshake from the same address.
    pub sessions_replaced: u64,
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
/// - a session starts with a ClientHello without cookie (RFC 6347 §4.2.1); other datagrams
///   from unknown peers are dropped;
/// - a fresh ClientHello from a peer that has a session replaces it (RFC 6347 §4.2.8: the
///   client rebooted or reuses the port), except the retransmission of the ClientHello that
///   opened the current handshake;
/// - every handshake ends within `handshake_timeout`; at most `max_handshakes` run at once;
/// - failed, closed, replaced and idle sessions are removed and reported as events.
///
/// Output leaves through [`DtlsServer::poll_transmit`] and [`DtlsServer::poll_event`]; call
/// [`DtlsServer::handle_timeout`] when [`DtlsServer::poll_timeout`] says.
pub struct DtlsServer {
    handshake: Arc<HandshakeConfig>,
    lookup: LookupSlot,
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
        let handshake = Arc::new(server_handshake(&config, &lookup)?);
        Ok(DtlsServer {
            handshake,
            lookup,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            max_handshakes: config.max_handshakes,
            max_sessions: config.max_sessions,
            key_log: config.key_log,
            sessions: HashMap::new(),
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
        if is_initial_client_hello(datagram) {
            let random = client_hello_random(datagram);
            let retransmitted = self
                .sessions
                .get(&peer)
                .is_some_and(|s| !s.established && s.hello_random == random);
            if !retransmitted && !self.start_session(now, peer, random) {
                return;
            }
        }
        let Some(session) = self.sessions.get_mut(&peer) else {
            self.counters.stray_datagrams += 1;
            return;
        };
        *self.lookup.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let result = session.read(now, datagram, &mut self.outputs);
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
