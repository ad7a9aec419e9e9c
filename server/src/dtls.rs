//! CoAP over DTLS (RFC 7252 §9; Core TS 1.1 §7.1) for both servers: a second socket whose
//! datagrams go through a [`DtlsServer`] session router; the plaintext CoAP of every
//! session feeds a sans-IO machine of its own (the LwM2M Server's [`Lwm2mServer`] or the
//! Bootstrap Server's [`lwm2m_proto::bootstrap::BootstrapServer`]), and the machine's
//! output is encrypted back to the session. The two halves are [`DtlsFront`] (one socket's
//! session router: handshakes, records) and [`Gated`] (the admission gate and the machine);
//! [`SecureServer`] joins one of each for a single-threaded loop (the in-process harness),
//! and the drivers run several fronts, one per socket and task, in front of one machine
//! task (`crate::listener`, [`DtlsOptions::shards`]).
//!
//! A separate machine keeps the two transports apart: a machine keys peers by address, and
//! one address may hold a plain and a secure association at once.
//! [`crate::driver::ServerHandle`] sends each operation to the machine the endpoint
//! registered with.
//!
//! PSK keys come from a [`SecurityStore`] by identity (in memory: answered synchronously
//! on the driver task): the LwM2M Server's credentials, or for the Bootstrap Server
//! [`crate::store::BootstrapCredentials`]. Unknown identities and wrong keys fail the
//! handshake of that peer only; each failure is a [`SecurityEvent`] and a log line. Every
//! listener has a handshake timeout, a cap on concurrent handshakes and 4 MiB socket
//! buffers, and can write an NSS key log.
//!
//! Identity and endpoint (Core TS 1.1 §7.1.8, §6.2.1, §5.2.7.1): a request acting for an
//! endpoint the session's identity does not belong to (by the security store:
//! `by_psk_identity(identity).endpoint != NAME`; a certificate's common name must equal
//! NAME) never reaches the machine's handlers: the machine asks [`Gated`]'s admission hook
//! about each request it decodes ([`lwm2m_proto::Admitting`]), answers 4.03 Forbidden with
//! a one-line diagnostic payload (RFC 7252 §5.5.2), and this module reports
//! [`SecurityEvent::IdentityMismatch`]. For the LwM2M Server that is a Register
//! (`POST /rd?ep=NAME`), or an Update / De-register (`POST`/`DELETE /rd/{id}`) of another
//! endpoint's registration; for the Bootstrap Server a Bootstrap-Request
//! (`POST /bs?ep=NAME`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwm2m_dtls::{
    DtlsServer, Identity, PskStore, ServerConfig as DtlsConfig, ServerEvent as DtlsEvent,
};
use lwm2m_proto::admission::SessionSender;
use lwm2m_proto::bootstrap::BootstrapServer;
use lwm2m_proto::coap::Transmit;
use lwm2m_proto::hash::HashMap;
use lwm2m_proto::server::Lwm2mServer;

pub use lwm2m_dtls::{CertificateConfig, KeyLog, KeyLogFile};

use crate::events::{Direction, Event, PacketTap, Role, SecurityEvent};
use crate::store::{Credentials, SecurityStore};
use lwm2m_proto::{Admitting, Machine};

/// How to start the DTLS listener of an LwM2M Server (see
/// [`crate::driver::ServerOptions::dtls`]) or a Bootstrap Server
/// ([`crate::bootstrap::BootstrapOptions::dtls`]).
#[derive(Clone)]
pub struct DtlsOptions {
    /// Where to bind, e.g. `127.0.0.1:5684` (port 0: any free port).
    pub bind: SocketAddr,
    /// Where PSK keys are looked up by identity and identities mapped to endpoints (for a
    /// Bootstrap Server: [`crate::store::BootstrapCredentials`]).
    pub security: Arc<dyn SecurityStore>,
    /// Longest handshake (RFC 6347 §4.2.4: flights are retransmitted every second).
    pub handshake_timeout: Duration,
    /// Where to write the secrets of every session (NSS key log, for Wireshark).
    pub key_log: Option<Arc<dyn KeyLog>>,
    /// The server's certificate chain and key, and the trust anchors for client
    /// certificates (Security mode 2, `TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`); `None`: PSK
    /// only. A certificate client's endpoint name must be its certificate's common name.
    pub certificate: Option<CertificateConfig>,
    /// Handshakes in progress at once. Only a ClientHello that returns a valid cookie takes
    /// a slot (hellos without one get a stateless HelloVerifyRequest); cookied hellos
    /// beyond it are dropped and the clients retransmit them a second later, so a burst of
    /// N clients takes about N / `max_handshakes` seconds.
    pub max_handshakes: usize,
    /// Sockets bound to the address (`SO_REUSEPORT` when more than one), each with a
    /// session router ([`DtlsFront`]) in a task of its own, all feeding the one machine
    /// task: the kernel hashes each peer's address to one socket, so a peer's session is
    /// always on the same front. `max_handshakes` and the session limit are shared out
    /// evenly (rounded up). Default: the machine's available parallelism; 1: one socket
    /// and one front, without `SO_REUSEPORT`.
    pub shards: usize,
}

impl DtlsOptions {
    /// Defaults: a 10 s handshake timeout, no key log, no certificate, 4,096 handshakes at
    /// once, one socket per core ([`DtlsOptions::shards`]).
    pub fn new(bind: SocketAddr, security: Arc<dyn SecurityStore>) -> Self {
        Self {
            bind,
            security,
            handshake_timeout: Duration::from_secs(10),
            key_log: None,
            certificate: None,
            max_handshakes: 4096,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl std::fmt::Debug for DtlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsOptions")
            .field("bind", &self.bind)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("key_log", &self.key_log.is_some())
            .field("certificate", &self.certificate.is_some())
            .field("max_handshakes", &self.max_handshakes)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

/// The security store as the DTLS layer's PSK callback: a UTF-8 identity owned by PSK
/// credentials gives the decoded key.
struct StorePsk(Arc<dyn SecurityStore>);

impl PskStore for StorePsk {
    fn psk(&self, identity: &[u8]) -> Option<Vec<u8>> {
        let identity = std::str::from_utf8(identity).ok()?;
        match self.0.by_psk_identity(identity)?.credentials {
            Credentials::Psk { key, .. } => lwm2m_proto::value::parse_hex(&key),
            _ => None,
        }
    }
}

/// What a [`DtlsFront`] hands to the machine side ([`Gated`]): the plaintext of an
/// application record, or a session event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Inbound {
    /// A decrypted application datagram (one CoAP message) of `peer`'s session.
    Datagram {
        /// The peer's address.
        peer: SocketAddr,
        /// Who the session authenticated as.
        identity: Identity,
        /// The plaintext.
        payload: Vec<u8>,
    },
    /// A session was established, failed its handshake or closed.
    Security(SecurityEvent),
}

/// The DTLS side of one socket: a [`DtlsServer`] session router whose decrypted datagrams
/// and session events leave as [`Inbound`]s, and which encrypts what the machine side
/// sends back. A listener has one per socket ([`DtlsOptions::shards`]); the sessions of a
/// peer address are always on the same front.
pub struct DtlsFront {
    dtls: DtlsServer,
    /// The session router's settings, to start afresh ([`DtlsFront::forget_sessions`]).
    config: DtlsConfig,
    role: Role,
    /// Sees the plaintext of every application record, with the socket's address.
    tap: Option<(Arc<dyn PacketTap>, SocketAddr)>,
}

impl DtlsFront {
    /// A session router set up from `options`, taking `1 / shares` of its handshake and
    /// session limits (a listener of `shares` sockets; rounded up).
    pub fn new(
        options: &DtlsOptions,
        role: Role,
        shares: usize,
    ) -> Result<Self, lwm2m_dtls::DtlsError> {
        let shares = shares.max(1);
        let defaults = DtlsConfig::default();
        let config = DtlsConfig {
            psk_store: Some(Arc::new(StorePsk(options.security.clone()))),
            handshake_timeout: options.handshake_timeout,
            key_log: options.key_log.clone(),
            max_handshakes: options.max_handshakes.div_ceil(shares),
            max_sessions: defaults.max_sessions.div_ceil(shares),
            certificate: options.certificate.clone(),
            ..defaults
        };
        Ok(Self {
            dtls: DtlsServer::new(config.clone())?,
            config,
            role,
            tap: None,
        })
    }

    /// Reports the plaintext of every application record to `tap`
    /// ([`PacketTap::plaintext`]) as seen on the socket bound at `local`.
    pub fn with_tap(mut self, tap: Option<Arc<dyn PacketTap>>, local: SocketAddr) -> Self {
        self.tap = tap.map(|t| (t, local));
        self
    }

    /// The session router: its sessions, their identities and secrets, its counters.
    pub fn dtls(&self) -> &DtlsServer {
        &self.dtls
    }

    /// Forgets every session silently, as a restarted server does.
    pub fn forget_sessions(&mut self) -> Result<(), lwm2m_dtls::DtlsError> {
        self.dtls = DtlsServer::new(self.config.clone())?;
        Ok(())
    }

    /// Feeds one datagram received on the socket.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        self.dtls.handle_datagram(now, peer, bytes);
    }

    /// Runs the session timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.dtls.poll_timeout().is_some_and(|t| t <= now) {
            self.dtls.handle_timeout(now);
        }
    }

    /// The next session timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.dtls.poll_timeout()
    }

    /// The next record to send on the socket.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.dtls.poll_transmit().map(|t| Transmit {
            peer: t.peer,
            bytes: t.bytes,
        })
    }

    /// The next decrypted datagram or session event for the machine side.
    pub fn poll_inbound(&mut self) -> Option<Inbound> {
        loop {
            let event = self.dtls.poll_event()?;
            if let Some(inbound) = self.inbound(event) {
                return Some(inbound);
            }
        }
    }

    /// Encrypts `payload` into `peer`'s session and tells the tap (the driver's socket tap
    /// sees the record only later, when it is sent).
    pub fn send(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        payload: &[u8],
    ) -> Result<(), lwm2m_dtls::DtlsError> {
        self.dtls.send(now, peer, payload)?;
        if let Some((tap, local)) = &self.tap {
            let identity = self
                .dtls
                .session(peer)
                .and_then(|s| s.identity)
                .map(|i| i.to_string())
                .unwrap_or_default();
            tap.plaintext(Direction::Out, *local, peer, &identity, payload);
        }
        Ok(())
    }

    fn inbound(&self, event: DtlsEvent) -> Option<Inbound> {
        let name = self.role.name();
        let security = match event {
            DtlsEvent::Datagram {
                peer,
                identity,
                payload,
                ..
            } => {
                if let Some((tap, local)) = &self.tap {
                    tap.plaintext(Direction::In, *local, peer, &identity.to_string(), &payload);
                }
                return Some(Inbound::Datagram {
                    peer,
                    identity,
                    payload,
                });
            }
            DtlsEvent::Established { peer, identity, .. } => {
                tracing::debug!("{name}: DTLS session with {peer} established as {identity}");
                SecurityEvent::Established { peer, identity }
            }
            DtlsEvent::HandshakeFailed {
                peer,
                identity,
                reason,
                ..
            } => {
                let claimed = identity.as_ref().map(Identity::to_string);
                tracing::warn!(
                    "{name}: DTLS handshake with {peer} failed ({}): {reason:?}",
                    claimed.as_deref().unwrap_or("no identity")
                );
                SecurityEvent::HandshakeFailed {
                    peer,
                    identity,
                    reason,
                }
            }
            DtlsEvent::Closed {
                peer,
                identity,
                reason,
                ..
            } => {
                tracing::debug!("{name}: DTLS session with {peer} ({identity}) closed: {reason:?}");
                SecurityEvent::Closed {
                    peer,
                    identity,
                    reason,
                }
            }
            other => {
                tracing::debug!("{name}: DTLS: {other:?}");
                return None;
            }
        };
        Some(Inbound::Security(security))
    }
}

/// The machine side of a DTLS listener: the sans-IO machine (the LwM2M Server's or the
/// Bootstrap Server's) behind the admission gate. It takes the [`Inbound`]s of every
/// [`DtlsFront`] of the listener, remembers which front (by index) holds each peer's
/// session and as whom it authenticated, refuses requests the identity may not make
/// (4.03), and hands the rest to the machine. Its [`Machine::poll_transmit`] gives the
/// plaintext to encrypt into the peer's session on front [`Gated::front_of`].
pub struct Gated<M: Admitting> {
    /// The machine behind the DTLS socket.
    pub(crate) inner: M,
    security: Arc<dyn SecurityStore>,
    role: Role,
    events: VecDeque<Event>,
    /// The front and the identity of each peer's session.
    sessions: HashMap<SocketAddr, (usize, Identity)>,
}

impl<M> Gated<M>
where
    M: Admitting,
    M::Event: Into<Event>,
{
    /// `inner` behind the admission gate; identities are mapped to endpoints by
    /// `security`; events are reported as `role`'s.
    pub fn new(inner: M, security: Arc<dyn SecurityStore>, role: Role) -> Self {
        Self {
            inner,
            security,
            role,
            events: VecDeque::new(),
            sessions: HashMap::default(),
        }
    }

    /// The machine.
    pub fn machine(&self) -> &M {
        &self.inner
    }

    /// Takes what front number `front` reports.
    pub fn inbound(&mut self, now: Instant, front: usize, inbound: Inbound) {
        match inbound {
            Inbound::Datagram {
                peer,
                identity,
                payload,
            } => {
                match self.sessions.get(&peer) {
                    Some((f, id)) if *f == front && *id == identity => {}
                    _ => {
                        self.sessions.insert(peer, (front, identity.clone()));
                    }
                }
                self.admit(now, peer, &identity, &payload);
            }
            Inbound::Security(event) => {
                if let SecurityEvent::Closed { peer, .. }
                | SecurityEvent::HandshakeFailed { peer, .. } = &event
                {
                    self.sessions.remove(peer);
                }
                self.events.push_back(Event::Security(self.role, event));
            }
        }
    }

    /// The front holding `peer`'s session, as far as its datagrams told.
    pub fn front_of(&self, peer: SocketAddr) -> Option<usize> {
        self.sessions.get(&peer).map(|(front, _)| *front)
    }

    /// Forgets every peer's session (their fronts forgot them).
    pub fn forget_sessions(&mut self) {
        self.sessions.clear();
    }

    /// Hands the session's datagram to the machine, whose admission hook refuses a request
    /// acting for an endpoint the session's identity does not belong to (Core TS 1.1
    /// §7.1.8): by the security store for a PSK identity, the certificate's common name
    /// otherwise. The machine answers the refusal (4.03); it is reported here.
    fn admit(&mut self, now: Instant, peer: SocketAddr, identity: &Identity, payload: &[u8]) {
        let security = &self.security;
        let mut hook = SessionSender {
            identity,
            owner: || match identity {
                Identity::Psk(id) => std::str::from_utf8(id)
                    .ok()
                    .and_then(|id| security.by_psk_identity(id))
                    .map(|info| info.endpoint),
                Identity::Certificate(cn) => Some(cn.to_string()),
                _ => None,
            },
            refused: None,
        };
        self.inner.handle_admitted(now, peer, payload, &mut hook);
        if let Some(refused) = hook.refused {
            let event = SecurityEvent::IdentityMismatch {
                peer,
                identity: identity.clone(),
                endpoint: refused.endpoint,
                owner: refused.owner,
            };
            tracing::warn!("{} (DTLS): {event:?}", self.role.name());
            self.events.push_back(Event::Security(self.role, event));
        }
    }
}

impl<M> Machine for Gated<M>
where
    M: Admitting,
    M::Event: Into<Event>,
{
    type Event = Event;
    /// The plaintext of a datagram of `peer`'s session (known from an earlier
    /// [`Inbound::Datagram`]); dropped without a session.
    fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        match self.sessions.get(&peer) {
            Some((_, identity)) => {
                let identity = identity.clone();
                self.admit(now, peer, &identity, bytes);
            }
            None => tracing::debug!(
                "{} (DTLS): plaintext from {peer} without a session dropped",
                self.role.name()
            ),
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        if self.inner.poll_timeout().is_some_and(|t| t <= now) {
            self.inner.handle_timeout(now);
        }
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.inner.poll_transmit()
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        self.inner.poll_timeout()
    }
    fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        self.inner.poll_event().map(Into::into)
    }
}

/// The DTLS session router and a sans-IO machine behind it (the LwM2M Server's or the
/// Bootstrap Server's), as one machine for a single-threaded loop: ciphertext in and out,
/// [`Event`]s out. One [`DtlsFront`] feeds one [`Gated`] machine (sessions are keyed by
/// address, as the machine keys its peers); its output is encrypted back into the session
/// of its peer. The drivers run the same two halves in tasks of their own
/// ([`DtlsOptions::shards`] fronts).
pub struct SecureServer<M: Admitting> {
    front: DtlsFront,
    gated: Gated<M>,
}

/// The LwM2M Server over DTLS.
pub type SecureLwm2m = SecureServer<Lwm2mServer>;

/// The Bootstrap Server over DTLS.
pub type SecureBootstrap = SecureServer<BootstrapServer>;

impl<M> SecureServer<M>
where
    M: Admitting,
    M::Event: Into<Event>,
{
    /// `inner` behind a DTLS session router set up from `options` (one front, whatever
    /// [`DtlsOptions::shards`] says) and the admission gate; events are reported as
    /// `role`'s.
    pub fn new(options: &DtlsOptions, inner: M, role: Role) -> Result<Self, lwm2m_dtls::DtlsError> {
        Ok(Self {
            front: DtlsFront::new(options, role, 1)?,
            gated: Gated::new(inner, options.security.clone(), role),
        })
    }

    /// Reports the plaintext of every application record to `tap`
    /// ([`PacketTap::plaintext`]) as seen on the socket bound at `local`.
    pub fn with_tap(mut self, tap: Option<Arc<dyn PacketTap>>, local: SocketAddr) -> Self {
        self.front = self.front.with_tap(tap, local);
        self
    }

    /// The machine behind the DTLS socket.
    pub fn machine(&self) -> &M {
        &self.gated.inner
    }

    /// The machine behind the DTLS socket, to run commands on; call
    /// [`SecureServer::settle`] afterwards so that what it sends is encrypted.
    pub fn machine_mut(&mut self) -> &mut M {
        &mut self.gated.inner
    }

    /// The session router: its sessions, their identities and secrets, its counters.
    pub fn dtls(&self) -> &DtlsServer {
        self.front.dtls()
    }

    /// Forgets every session silently, as a restarted server does (the machine and the
    /// credentials stay): records of the old sessions are dropped as strays, and their
    /// clients handshake again.
    pub fn forget_sessions(&mut self) -> Result<(), lwm2m_dtls::DtlsError> {
        self.front.forget_sessions()?;
        self.gated.forget_sessions();
        Ok(())
    }

    /// Moves everything between the two halves until both are quiet: decrypted datagrams
    /// to the machine (or refused), its answers into their sessions.
    pub fn settle(&mut self, now: Instant) {
        loop {
            let mut moved = false;
            while let Some(inbound) = self.front.poll_inbound() {
                moved = true;
                self.gated.inbound(now, 0, inbound);
            }
            while let Some(t) = self.gated.poll_transmit() {
                moved = true;
                if let Err(e) = self.front.send(now, t.peer, &t.bytes) {
                    tracing::debug!(
                        "{} (DTLS): answer to {} dropped: {e}",
                        self.gated.role.name(),
                        t.peer
                    );
                }
            }
            if !moved {
                break;
            }
        }
    }
}

impl<M> Machine for SecureServer<M>
where
    M: Admitting,
    M::Event: Into<Event>,
{
    type Event = Event;
    fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        self.front.handle_datagram(now, peer, bytes);
        self.settle(now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.front.handle_timeout(now);
        self.gated.handle_timeout(now);
        self.settle(now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.front.poll_transmit()
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        [self.front.poll_timeout(), self.gated.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }
    fn poll_event(&mut self) -> Option<Event> {
        self.gated.poll_event()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);
    use crate::store::{FileSecurityStore, SecurityInfo};
    use lwm2m_proto::coap::{
        MessageClass, MessageType, Packet, RequestType, ResponseType, message,
    };

    fn store() -> Arc<dyn SecurityStore> {
        let s = FileSecurityStore::in_memory();
        s.put(SecurityInfo {
            endpoint: "dev1".into(),
            credentials: Credentials::Psk {
                identity: "id1".into(),
                key: "0102".into(),
            },
        })
        .unwrap();
        Arc::new(s)
    }

    #[test]
    fn psk_comes_from_the_store_by_identity() {
        let psk = StorePsk(store());
        assert_eq!(psk.psk(b"id1"), Some(vec![1, 2]));
        assert_eq!(psk.psk(b"id2"), None);
        assert_eq!(psk.psk(&[0xff]), None);
    }

    /// A confirmable request with message ID and token `mid`.
    fn request(method: RequestType, path: &str, query: Option<&str>, mid: u16) -> Vec<u8> {
        let mut p = message::request(method, path);
        if let Some(q) = query {
            message::add_query(&mut p, q);
        }
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = mid;
        p.set_token(mid.to_be_bytes().to_vec());
        p.to_bytes().unwrap()
    }

    /// What the gated machine answers a session of `identity` for `payload`, and the
    /// refusal it reported, if any.
    fn exchange<M>(
        s: &mut SecureServer<M>,
        identity: &Identity,
        payload: Vec<u8>,
    ) -> (Packet, Option<SecurityEvent>)
    where
        M: Admitting,
        M::Event: Into<Event>,
    {
        let inbound = Inbound::Datagram {
            peer: PEER,
            identity: identity.clone(),
            payload,
        };
        s.gated.inbound(Instant::now(), 0, inbound);
        let answer = s.gated.poll_transmit().expect("an answer");
        let refused = std::iter::from_fn(|| s.gated.poll_event()).find_map(|e| match e {
            Event::Security(_, m @ SecurityEvent::IdentityMismatch { .. }) => Some(m),
            _ => None,
        });
        (message::decode(&answer.bytes).unwrap(), refused)
    }

    fn code(p: &Packet) -> String {
        p.header.code.to_string()
    }

    #[test]
    fn register_under_another_endpoint_is_forbidden() {
        let options = DtlsOptions::new("127.0.0.1:0".parse().unwrap(), store());
        let registry = Arc::new(lwm2m_proto::registry::Registry::embedded());
        let lwm2m = Lwm2mServer::new(Default::default(), registry);
        let mut s = SecureServer::new(&options, lwm2m, Role::Server).unwrap();
        let id = Identity::Psk(Arc::from(&b"id1"[..]));
        let register =
            |ep: &str, mid| request(RequestType::Post, "/rd", Some(&format!("ep={ep}")), mid);
        let (answer, refused) = exchange(&mut s, &id, register("dev2", 77));
        assert_eq!(
            answer.header.code,
            MessageClass::Response(ResponseType::Forbidden)
        );
        assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(answer.header.message_id, 77);
        assert_eq!(
            refused,
            Some(SecurityEvent::IdentityMismatch {
                peer: PEER,
                identity: id.clone(),
                endpoint: "dev2".into(),
                owner: Some("dev1".into()),
            })
        );
        // Its own name, and a certificate naming the endpoint, pass.
        let location = |p: &Packet| {
            let parts: Vec<String> = p
                .get_option(lwm2m_proto::coap::CoapOption::LocationPath)
                .into_iter()
                .flatten()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            format!("/{}", parts.join("/"))
        };
        let (answer, refused) = exchange(&mut s, &id, register("dev1", 1));
        assert_eq!((code(&answer), refused), ("2.01".into(), None));
        let own = location(&answer);
        let cert = Identity::Certificate(Arc::from("dev2"));
        let (answer, refused) = exchange(&mut s, &cert, register("dev2", 2));
        assert_eq!((code(&answer), refused), ("2.01".into(), None));
        let other = location(&answer);
        // An Update or De-register of dev2's registration by id1: refused; of its own, or
        // of a registration the machine does not know (its own 4.04): not the gate's.
        for (n, method) in [RequestType::Post, RequestType::Delete]
            .into_iter()
            .enumerate()
        {
            let mid = 10 * (n as u16 + 1);
            let (answer, refused) = exchange(&mut s, &id, request(method, &other, None, mid));
            assert_eq!(code(&answer), "4.03");
            assert!(
                matches!(refused, Some(SecurityEvent::IdentityMismatch { endpoint, .. }) if endpoint == "dev2")
            );
            let (answer, refused) = exchange(&mut s, &id, request(method, "/rd/zz", None, mid + 1));
            assert_eq!((code(&answer), refused), ("4.04".into(), None));
        }
        let (answer, refused) = exchange(&mut s, &id, request(RequestType::Delete, &own, None, 30));
        assert_eq!((code(&answer), refused), ("2.02".into(), None));
    }

    #[test]
    fn bootstrap_request_under_another_endpoint_is_forbidden() {
        let options = DtlsOptions::new("127.0.0.1:0".parse().unwrap(), store());
        let source = lwm2m_proto::bootstrap::server::MemoryConfigSource::default();
        let machine =
            lwm2m_proto::bootstrap::BootstrapServer::new(Default::default(), Box::new(source));
        let mut s = SecureServer::new(&options, machine, Role::Bootstrap).unwrap();
        let id = Identity::Psk(Arc::from(&b"id1"[..]));
        let bs = |ep: &str, mid| request(RequestType::Post, "/bs", Some(&format!("ep={ep}")), mid);
        // dev1 has no configuration: the machine's own refusal, not the gate's.
        let (answer, refused) = exchange(&mut s, &id, bs("dev1", 1));
        assert!(code(&answer) != "4.03" && refused.is_none());
        let (answer, refused) = exchange(&mut s, &id, bs("dev2", 2));
        assert_eq!(code(&answer), "4.03");
        assert!(
            matches!(refused, Some(SecurityEvent::IdentityMismatch { endpoint, .. }) if endpoint == "dev2")
        );
        // Unknown identity: belongs to no endpoint.
        let stranger = Identity::Psk(Arc::from(&b"who"[..]));
        let (_, refused) = exchange(&mut s, &stranger, bs("dev1", 3));
        assert!(matches!(
            refused,
            Some(SecurityEvent::IdentityMismatch { owner: None, .. })
        ));
        // Other requests are not the gate's business; a Register is not a Bootstrap-Request.
        let register = request(RequestType::Post, "/rd", Some("ep=dev2"), 4);
        let (answer, refused) = exchange(&mut s, &id, register);
        assert!(code(&answer) != "4.03" && refused.is_none());
        let get = request(RequestType::Get, "/bs", None, 5);
        let (answer, refused) = exchange(&mut s, &id, get);
        assert!(code(&answer) != "4.03" && refused.is_none());
    }
}
