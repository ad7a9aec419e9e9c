//! The in-process backend: our sans-IO LwM2M Server, Bootstrap Server and simulated clients
//! joined by an in-memory datagram link, on a virtual clock.
//!
//! Nothing sleeps: [`InProcess::step`] jumps to the earliest pending deadline (a datagram's
//! arrival, a retransmission, a lifetime, a notification period) and runs it. The link
//! delays every datagram by a fixed latency, or by a client's network model
//! ([`lwm2m_simulator::NetworkModel`]): seeded loss, delay, jitter, duplication and
//! reordering per direction, a NAT that forgets idle mappings (the server then sees the
//! client at a new port, and datagrams to the old one are dropped), and a sleep schedule
//! (datagrams to a sleeping radio are lost). A queue-mode client that its own machine put
//! to sleep (Core TS 1.1 §6.5) does not hear datagrams either. Every datagram and every drop
//! goes into the [`ExchangeLog`].
//!
//! The servers are `serve`'s compositions, not a parallel implementation of them: the LwM2M
//! Server's plain socket is a [`PlainServer`] (a Register over plain CoAP of an endpoint
//! with credentials is refused with 4.03), and each server's DTLS socket is a
//! [`SecureServer`] (the session router with `serve`'s admission gate) in front of a
//! machine of its own, as in `serve`; operations go to the machine the endpoint last
//! registered with ([`Transports`]). Bootstrap configurations live in `serve`'s bootstrap
//! store ([`StoreConfigSource`]: the plain socket refuses a configuration whose Bootstrap
//! Server account is not NoSec, and the LwM2M Server PSK a configuration hands out is
//! provisioned into the LwM2M Server's security store).
//!
//! CoAP over DTLS ([`super::secure`]): the LwM2M Server listens at `10.0.0.1:5684`
//! and the Bootstrap Server at `10.0.0.2:5684`, and a client whose account says
//! `coaps://` talks to that server through a DTLS client session of its own; the link
//! carries the records, the exchange log names them and shows the CoAP inside.
//!
//! Addresses: the LwM2M Server is `10.0.0.1:5683`, the Bootstrap Server `10.0.0.2:5683`;
//! client number `n` sits at `10.a.b.c:56830` (`a.b.c` = `n + 257`: client 0 at `10.0.1.1`,
//! so no client shares an address with a server in a pcap), and behind a NAT it is seen at
//! `100.a.b.c` (`a.b.c` = `n + 1`) with the NAT's public port.
//!
//! Determinism: every random choice (CoAP tokens and message ids, registration ids, link
//! impairments, NAT ports) comes from the scenario seed; runs repeat exactly. DTLS
//! randoms, keys and hence ciphertexts come from the operating system's random source:
//! they differ from run to run, the exchange does not.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwm2m_dtls::{ClientEvent as DtlsClientEvent, DtlsClient, FailureReason, Identity};
use lwm2m_proto::bootstrap::{
    BootstrapConfig, BootstrapError, BootstrapServer, BootstrapServerConfig,
};
use lwm2m_proto::client::{ClientState, Lwm2mClient};
use lwm2m_proto::coap::{self, Packet, Transmit};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{
    Lwm2mServer, ObservationId, OpError, OpId, Operation, Registration, ServerConfig, ServerEvent,
};
use lwm2m_proto::{Lwm2mPath, Machine};
use lwm2m_server::bootstrap::StoreConfigSource;
use lwm2m_server::driver::Transports;
use lwm2m_server::dtls::{SecureBootstrap, SecureLwm2m, SecureServer};
use lwm2m_server::plain::PlainServer;
use lwm2m_server::store::{
    BootstrapStore, ConfigKey, Credentials, FileBootstrapStore, FileSecurityStore, SecurityInfo,
    SecurityStore, hex,
};
use lwm2m_server::{Event, Role, SecurityEvent};
use lwm2m_simulator::link::{Links, Route, Servers};
use lwm2m_simulator::network::{Mapping, Nat, NetworkModel, SleepSchedule};
use lwm2m_simulator::{Impairment, seed};

use super::backend::{
    Backend, Capability, ClientAction, ClientSpec, DtlsHappening, DtlsSide, Happening, ServerRole,
    Subject, Timed,
};
use super::exchange::{ExchangeLog, Peer};
use super::secure::{self, KeyLines, LINKS, SECURE_BOOTSTRAP, SECURE_SERVER, Sealed};
use crate::accounts::{SecureAccount, write_account};

/// The LwM2M Server's address on the in-memory link.
pub const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 5683);
/// The Bootstrap Server's address on the in-memory link.
pub const BOOTSTRAP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 5683);
/// The UDP port every simulated client uses behind its address.
const CLIENT_PORT: u16 = 56830;
/// One-way latency of a link without a network model.
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(5);

/// The link of one client: how its datagrams travel.
#[derive(Debug, Default)]
struct Link {
    uplink: Option<Impairment>,
    downlink: Option<Impairment>,
    nat: Option<Nat>,
    /// NAT mappings by public port, to check inbound datagrams against.
    mappings: HashMap<u16, Mapping>,
    sleep: Option<SleepSchedule>,
}

#[derive(Debug)]
struct SimClient {
    name: String,
    machine: Lwm2mClient,
    number: u32,
    link: Link,
    /// The deadline of this client's live entry in the timer heap.
    deadline: Option<Instant>,
    /// Its DTLS associations with `coaps://` servers, once it sent to them.
    dtls: Links,
    /// Its factory configuration until it starts (the steps may still secure it).
    factory: Option<ClientSpec>,
}

impl SimClient {
    fn private_address(&self) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V4(client_ip(10, self.number + PRIVATE_OFFSET)),
            CLIENT_PORT,
        )
    }

    fn public_address(&self) -> SocketAddr {
        match self.link.nat.as_ref().and_then(Nat::mapping) {
            Some(m) => SocketAddr::new(IpAddr::V4(client_ip(100, self.number)), m.port),
            None if self.link.nat.is_some() => {
                SocketAddr::new(IpAddr::V4(client_ip(100, self.number)), 0)
            }
            None => self.private_address(),
        }
    }
}

/// Private client addresses start at `10.0.1.1`, above the servers' `10.0.0.x`.
const PRIVATE_OFFSET: u32 = 256;

fn client_ip(first: u8, number: u32) -> Ipv4Addr {
    let [_, a, b, c] = (number + 1).to_be_bytes();
    Ipv4Addr::new(first, a, b, c)
}

/// Who is at the end of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Party {
    Server,
    Bootstrap,
    Secure(ServerRole),
    Client(usize),
}

/// What a datagram on the link is, for the exchange log.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    /// A CoAP message.
    Coap,
    /// DTLS records; the CoAP message of the application record, when known.
    Dtls(Option<&'a [u8]>),
}

/// A datagram on its way.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// The in-process backend (see the module documentation).
pub struct InProcess {
    subject: Subject,
    seed: u64,
    t0: Instant,
    now: Instant,
    registry: Arc<Registry>,
    /// The LwM2M Server's plain CoAP socket.
    server: PlainServer,
    /// The LwM2M Server's DTLS socket, made when a scenario first needs it.
    secure_server: Option<SecureLwm2m>,
    /// The Bootstrap Server's plain CoAP socket.
    bootstrap: BootstrapServer,
    /// The Bootstrap Server's DTLS socket, made when a scenario first needs it.
    secure_bootstrap: Option<SecureBootstrap>,
    /// Which LwM2M Server machine holds each endpoint.
    transports: Transports,
    /// The LwM2M Server's credentials: PSK keys and the endpoint of each identity.
    security: Arc<dyn SecurityStore>,
    /// The Bootstrap Server's DTLS credentials.
    bootstrap_security: Arc<dyn SecurityStore>,
    /// The bootstrap configurations.
    configs: Arc<dyn BootstrapStore>,
    /// What the DTLS sockets encrypted, until its record leaves.
    sealed: Arc<Sealed>,
    /// The secrets of the sessions the DTLS sockets established.
    keys: Arc<KeyLines>,
    clients: Vec<SimClient>,
    by_name: HashMap<String, usize>,
    by_ip: HashMap<IpAddr, usize>,
    wire: BinaryHeap<Reverse<InFlight>>,
    next_seq: u64,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    dirty: BTreeSet<usize>,
    log: ExchangeLog,
    happenings: VecDeque<Timed>,
    spoofs: u16,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("seed", &self.seed)
            .field("now", &self.elapsed())
            .field("clients", &self.clients.len())
            .field("dtls", &self.secure_server.is_some())
            .finish_non_exhaustive()
    }
}

impl InProcess {
    /// Our servers with no clients yet; every random choice derives from `seed`.
    pub fn new(subject: Subject, seed: u64, registry: Arc<Registry>) -> Self {
        let coap = |n: u64| coap::Config {
            seed: seed::mix(&[seed, n]),
            ..coap::Config::default()
        };
        let security: Arc<dyn SecurityStore> = Arc::new(FileSecurityStore::in_memory());
        let configs: Arc<dyn BootstrapStore> =
            Arc::new(FileBootstrapStore::in_memory(Default::default()));
        let source = StoreConfigSource {
            store: configs.clone(),
            provision: Some(security.clone()),
            secure: false,
        };
        let t0 = Instant::now();
        Self {
            subject,
            seed,
            t0,
            now: t0,
            server: PlainServer::new(
                Lwm2mServer::new(
                    ServerConfig {
                        coap: coap(1),
                        ..ServerConfig::default()
                    },
                    registry.clone(),
                ),
                Some(security.clone()),
            ),
            registry,
            secure_server: None,
            bootstrap: BootstrapServer::new(
                BootstrapServerConfig {
                    coap: coap(2),
                    ..BootstrapServerConfig::default()
                },
                Box::new(source),
            ),
            secure_bootstrap: None,
            transports: Transports::default(),
            security,
            bootstrap_security: Arc::new(FileSecurityStore::in_memory()),
            configs,
            sealed: Arc::default(),
            keys: Arc::default(),
            clients: Vec::new(),
            by_name: HashMap::new(),
            by_ip: HashMap::new(),
            wire: BinaryHeap::new(),
            next_seq: 0,
            timers: BinaryHeap::new(),
            dirty: BTreeSet::new(),
            log: ExchangeLog::default(),
            happenings: VecDeque::new(),
            spoofs: 0,
        }
    }

    /// The CoAP settings of our machine number `n`, seeded from the scenario.
    fn coap(&self, n: u64) -> coap::Config {
        coap::Config {
            seed: seed::mix(&[self.seed, n]),
            ..coap::Config::default()
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn client_index(&self, endpoint: &str) -> anyhow::Result<usize> {
        self.by_name
            .get(endpoint)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("no simulated client {endpoint:?} in this scenario"))
    }

    fn name_of(&self, addr: SocketAddr) -> String {
        match self.party(addr) {
            Some(Party::Server | Party::Secure(ServerRole::Lwm2m)) => "server".to_owned(),
            Some(Party::Bootstrap | Party::Secure(ServerRole::Bootstrap)) => "bootstrap".to_owned(),
            Some(Party::Client(i)) => self.clients[i].name.clone(),
            None => addr.to_string(),
        }
    }

    fn party(&self, addr: SocketAddr) -> Option<Party> {
        if addr == SERVER {
            Some(Party::Server)
        } else if addr == SECURE_SERVER {
            Some(Party::Secure(ServerRole::Lwm2m))
        } else if addr == SECURE_BOOTSTRAP {
            Some(Party::Secure(ServerRole::Bootstrap))
        } else if addr == BOOTSTRAP {
            Some(Party::Bootstrap)
        } else {
            self.by_ip.get(&addr.ip()).map(|i| Party::Client(*i))
        }
    }

    fn enqueue(&mut self, at: Duration, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.next_seq += 1;
        self.wire.push(Reverse(InFlight {
            at: self.t0 + at,
            seq: self.next_seq,
            from,
            to,
            bytes,
        }));
    }

    /// Logs a datagram as the link carries it.
    fn log_datagram(&mut self, src: Peer<'_>, dst: Peer<'_>, bytes: &[u8], wire: Wire<'_>) {
        let now = self.elapsed();
        match wire {
            Wire::Coap => self.log.datagram(now, src, dst, bytes),
            Wire::Dtls(inner) => self.log.secure_datagram(now, src, dst, bytes, inner),
        }
    }

    /// A client's datagram leaves: through its NAT and its uplink.
    fn send_from_client(&mut self, i: usize, to: SocketAddr, bytes: Vec<u8>, wire: Wire<'_>) {
        let now = self.elapsed();
        let client = &mut self.clients[i];
        if let Some(nat) = &mut client.link.nat {
            nat.on_outbound(now);
            if let Some(m) = nat.mapping() {
                client.link.mappings.insert(m.port, m);
            }
        }
        let from = client.public_address();
        // Without Connection ID (RFC 9146) a session is bound to the address it was made
        // from: after a NAT rebinding the server drops its records as strays, and the
        // client handshakes again with its next datagram.
        let rebound = match (wire, client.dtls.get_mut(to)) {
            (Wire::Dtls(_), Some(link)) => link.bind(from),
            _ => None,
        };
        let arrivals = match &mut client.link.uplink {
            Some(imp) => imp.apply(now, ()),
            None => vec![(now + DEFAULT_LATENCY, ())],
        };
        let to_name = self.name_of(to);
        let name = self.clients[i].name.clone();
        if let Some(old) = rebound {
            self.log.note(
                now,
                &format!(
                    "{name} now sends from {from}, its DTLS session is bound to {old} (no \
                     Connection ID): the {} drops this record, the next datagram opens a new \
                     handshake",
                    secure::role_of(to)
                ),
            );
        }
        let (src, dst) = (
            Peer {
                name: &name,
                addr: from,
            },
            Peer {
                name: &to_name,
                addr: to,
            },
        );
        self.log_datagram(src, dst, &bytes, wire);
        if arrivals.is_empty() {
            self.log.note(now, &format!("lost on the uplink of {name}"));
        }
        for (at, ()) in arrivals {
            self.enqueue(at, from, to, bytes.clone());
        }
    }

    /// A server's datagram leaves: through the downlink of the client it goes to.
    fn send_from_server(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>, wire: Wire) {
        let now = self.elapsed();
        let from_name = self.name_of(from);
        let to_name = self.name_of(to);
        let (src, dst) = (
            Peer {
                name: &from_name,
                addr: from,
            },
            Peer {
                name: &to_name,
                addr: to,
            },
        );
        self.log_datagram(src, dst, &bytes, wire);
        let arrivals = match self.party(to) {
            Some(Party::Client(i)) => match &mut self.clients[i].link.downlink {
                Some(imp) => imp.apply(now, ()),
                None => vec![(now + DEFAULT_LATENCY, ())],
            },
            _ => vec![(now + DEFAULT_LATENCY, ())],
        };
        if arrivals.is_empty() {
            self.log
                .note(now, &format!("lost on the downlink to {to_name}"));
        }
        for (at, ()) in arrivals {
            self.enqueue(at, from, to, bytes.clone());
        }
    }

    /// The LwM2M Server's DTLS socket, made at first use.
    fn secure_lwm2m(&mut self) -> anyhow::Result<&mut SecureLwm2m> {
        let made = match self.secure_server.take() {
            Some(made) => made,
            None => {
                let options = secure::listener_options(
                    ServerRole::Lwm2m,
                    self.security.clone(),
                    self.keys.clone(),
                )?;
                let config = ServerConfig {
                    coap: self.coap(3),
                    ..ServerConfig::default()
                };
                let machine = Lwm2mServer::new(config, self.registry.clone());
                SecureServer::new(&options, machine, Role::Server)?
                    .with_tap(Some(self.sealed.clone()), SECURE_SERVER)
            }
        };
        Ok(self.secure_server.insert(made))
    }

    /// The Bootstrap Server's DTLS socket, made at first use.
    fn secure_bootstrap(&mut self) -> anyhow::Result<&mut SecureBootstrap> {
        let made = match self.secure_bootstrap.take() {
            Some(made) => made,
            None => {
                let options = secure::listener_options(
                    ServerRole::Bootstrap,
                    self.bootstrap_security.clone(),
                    self.keys.clone(),
                )?;
                let config = BootstrapServerConfig {
                    coap: self.coap(4),
                    ..BootstrapServerConfig::default()
                };
                let source = StoreConfigSource {
                    store: self.configs.clone(),
                    provision: Some(self.security.clone()),
                    secure: true,
                };
                let machine = BootstrapServer::new(config, Box::new(source));
                SecureServer::new(&options, machine, Role::Bootstrap)?
                    .with_tap(Some(self.sealed.clone()), SECURE_BOOTSTRAP)
            }
        };
        Ok(self.secure_bootstrap.insert(made))
    }

    /// The DTLS socket of `role`, made at first use.
    fn secure_socket(
        &mut self,
        role: ServerRole,
    ) -> anyhow::Result<&mut dyn Machine<Event = Event>> {
        Ok(match role {
            ServerRole::Lwm2m => self.secure_lwm2m()?,
            ServerRole::Bootstrap => self.secure_bootstrap()?,
        })
    }

    /// The DTLS socket of `role`, if made.
    fn made_socket(&mut self, role: ServerRole) -> Option<&mut dyn Machine<Event = Event>> {
        match role {
            ServerRole::Lwm2m => Some(self.secure_server.as_mut()?),
            ServerRole::Bootstrap => Some(self.secure_bootstrap.as_mut()?),
        }
    }

    /// The LwM2M Server machine that holds `endpoint` (the one it registered with last).
    fn lwm2m(&self, endpoint: &str) -> &Lwm2mServer {
        match &self.secure_server {
            Some(secure) if self.transports.is_secure(endpoint) => secure.machine(),
            _ => self.server.machine(),
        }
    }

    fn push_happening(&mut self, happening: Happening) {
        let at = self.elapsed();
        self.happenings.push_back(Timed { at, happening });
    }

    /// A datagram arrives at its destination (or is dropped on the way in).
    fn deliver(&mut self, d: InFlight) {
        let now = self.now;
        let at = self.elapsed();
        match self.party(d.to) {
            Some(Party::Server) => self.server.handle_datagram(now, d.from, &d.bytes),
            Some(Party::Bootstrap) => self.bootstrap.handle_datagram(now, d.from, &d.bytes),
            Some(Party::Secure(role)) => match self.secure_socket(role) {
                Ok(socket) => socket.handle_datagram(now, d.from, &d.bytes),
                Err(e) => self
                    .log
                    .note(at, &format!("dropped: no DTLS listener ({e})")),
            },
            Some(Party::Client(i)) => {
                let client = &mut self.clients[i];
                let drop = if let Some(nat) = &mut client.link.nat {
                    let current = client.link.mappings.get(&d.to.port()).copied();
                    match current {
                        Some(m) if nat.accepts_inbound(at, m) => None,
                        _ => Some(format!(
                            "dropped by the NAT of {}: no mapping for port {} any more",
                            client.name,
                            d.to.port()
                        )),
                    }
                } else if d.to != client.private_address() {
                    Some(format!("dropped: {} is not at {}", client.name, d.to))
                } else {
                    None
                };
                let asleep = client.machine.state() == ClientState::Sleeping
                    || client.link.sleep.as_ref().is_some_and(|s| !s.is_awake(at));
                let drop = drop.or_else(|| {
                    asleep.then(|| format!("dropped: {} is asleep (radio off)", client.name))
                });
                let drop = match client.dtls.get_mut(d.from) {
                    _ if drop.is_some() => drop,
                    Some(link) => match link.session.as_mut() {
                        Some(session) => {
                            session.handle_datagram(now, &d.bytes);
                            self.dirty.insert(i);
                            return;
                        }
                        None => Some(format!(
                            "dropped: {} has no DTLS session with {} now",
                            client.name, d.from
                        )),
                    },
                    None => None,
                };
                match drop {
                    Some(why) => self.log.note(at, &why),
                    None => {
                        client.machine.handle_datagram(now, d.from, &d.bytes);
                        self.dirty.insert(i);
                    }
                }
            }
            None => self.log.note(at, &format!("dropped: nobody at {}", d.to)),
        }
    }

    /// Sends what the DTLS socket of `role` has for the link (each record with the CoAP
    /// message inside, for the log) and takes its events. True when something went.
    fn flush_secure(&mut self, role: ServerRole) -> bool {
        let from = secure::secure_address(role);
        let mut moved = false;
        while let Some(t) = self.made_socket(role).and_then(|s| s.poll_transmit()) {
            moved = true;
            let inner = self.sealed.take(from, t.peer, &t.bytes);
            self.send_from_server(from, t.peer, t.bytes, Wire::Dtls(inner.as_deref()));
        }
        while let Some(event) = self.made_socket(role).and_then(|s| s.poll_event()) {
            self.server_event(role == ServerRole::Lwm2m, event);
        }
        for line in self.keys.take() {
            self.log.add_key(line);
        }
        moved
    }

    /// An event of one of our servers' machines (`secure`: the LwM2M Server's DTLS one).
    fn server_event(&mut self, secure: bool, event: Event) {
        let at = self.elapsed();
        let happening = match event {
            Event::Server(e) => {
                match &e {
                    ServerEvent::Registered { registration, .. } => {
                        self.transports.registered(&registration.endpoint, secure);
                    }
                    ServerEvent::Deregistered { registration }
                    | ServerEvent::Expired { registration } => {
                        self.transports.ended(&registration.endpoint, secure);
                    }
                    _ => {}
                }
                Happening::Server(e)
            }
            Event::Bootstrap(e) => Happening::Bootstrap(e),
            Event::Security(role, e) => match self.security_event(role, &e) {
                Some(h) => Happening::Dtls(h),
                None => return,
            },
            _ => return,
        };
        self.happenings.push_back(Timed { at, happening });
    }

    /// Logs what a server's security layer reported; the happening the steps follow.
    fn security_event(&mut self, role: Role, event: &SecurityEvent) -> Option<DtlsHappening> {
        let at = self.elapsed();
        let happening = secure::dtls_happening(role, event, |peer| self.name_of(peer));
        match &happening {
            Some(DtlsHappening::Established {
                endpoint,
                server,
                identity,
            }) => self.log.event(
                at,
                &format!("DTLS session of {endpoint} with the {server} established as {identity}"),
            ),
            Some(DtlsHappening::HandshakeFailed {
                endpoint,
                server,
                identity,
                reason,
                ..
            }) => {
                let claimed = identity
                    .as_ref()
                    .map_or_else(String::new, |i| format!(" ({i})"));
                self.log.note(
                    at,
                    &format!(
                        "the {server} failed the DTLS handshake of {endpoint}{claimed}: {reason}"
                    ),
                );
            }
            Some(DtlsHappening::Refused {
                client,
                server,
                identity,
                endpoint,
                owner,
            }) => self.log.note(
                at,
                &format!(
                    "the {server} refuses {client}'s request for endpoint {endpoint:?} with \
                     4.03: the session is {identity}, owned by {}",
                    owner.as_deref().unwrap_or("no endpoint")
                ),
            ),
            Some(DtlsHappening::Closed {
                endpoint,
                server,
                reason,
            }) => self.log.event(
                at,
                &format!("DTLS session of {endpoint} with the {server} closed: {reason:?}"),
            ),
            None => {
                if let SecurityEvent::Insecure { peer, endpoint } = event {
                    let client = self.name_of(*peer);
                    self.log.note(
                        at,
                        &format!(
                            "the LwM2M Server refuses {client}'s Register as {endpoint:?} over \
                             plain CoAP with 4.03: the endpoint has credentials, it registers \
                             over DTLS"
                        ),
                    );
                }
            }
        }
        happening
    }

    /// A datagram of client `i`'s machine: through a DTLS session when it goes to a
    /// `coaps://` server of its Security object, else straight onto the link.
    fn client_transmit(&mut self, i: usize, t: Transmit) {
        let now = self.now;
        let client = &mut self.clients[i];
        let servers = Servers::from(client.machine.config());
        let refused = match client
            .dtls
            .route(client.machine.tree(), &servers, t.peer, &LINKS)
        {
            Route::Plain => return self.send_from_client(i, t.peer, t.bytes, Wire::Coap),
            Route::Unusable(reason) => reason.to_string(),
            Route::Secure(link) => match link.send(now, t.bytes) {
                Ok(_) => {
                    self.drain_client_dtls(i, t.peer);
                    return;
                }
                Err(e) => e.to_string(),
            },
        };
        let endpoint = self.clients[i].name.clone();
        let at = self.elapsed();
        self.log.note(
            at,
            &format!(
                "{endpoint} cannot open a DTLS session with {}: {refused}",
                t.peer
            ),
        );
        self.push_happening(Happening::Dtls(DtlsHappening::HandshakeFailed {
            endpoint,
            server: secure::role_of(t.peer),
            side: DtlsSide::Client,
            identity: None,
            reason: FailureReason::Protocol(refused),
        }));
    }

    /// Sends what client `i`'s DTLS session with `server` has for the link, each record
    /// with the CoAP message it carries. True when something went.
    fn drain_client_dtls(&mut self, i: usize, server: SocketAddr) -> bool {
        let records = match self.clients[i].dtls.get_mut(server) {
            Some(link) => secure::outgoing(link),
            None => return false,
        };
        let moved = !records.is_empty();
        for (bytes, inner) in records {
            self.send_from_client(i, server, bytes, Wire::Dtls(inner.as_deref()));
        }
        moved
    }

    /// Handles what client `i`'s DTLS sessions reported and sends what they have. True
    /// when something happened.
    fn client_dtls(&mut self, i: usize) -> bool {
        let now = self.now;
        let mut moved = false;
        for server in self.clients[i].dtls.servers() {
            moved |= self.drain_client_dtls(i, server);
            loop {
                let client = &mut self.clients[i];
                let Some(link) = client.dtls.get_mut(server) else {
                    break;
                };
                let Some(event) = link.session.as_mut().and_then(DtlsClient::poll_event) else {
                    break;
                };
                moved = true;
                match event {
                    DtlsClientEvent::Established => {
                        link.established(now);
                        self.drain_client_dtls(i, server);
                    }
                    DtlsClientEvent::Datagram(payload) => {
                        client.machine.handle_datagram(now, server, &payload);
                    }
                    DtlsClientEvent::HandshakeFailed(reason) => {
                        link.reset();
                        let endpoint = client.name.clone();
                        let at = self.elapsed();
                        self.log.note(
                            at,
                            &format!("{endpoint}'s DTLS handshake with {server} failed: {reason}"),
                        );
                        self.push_happening(Happening::Dtls(DtlsHappening::HandshakeFailed {
                            endpoint,
                            server: secure::role_of(server),
                            side: DtlsSide::Client,
                            identity: None,
                            reason,
                        }));
                    }
                    DtlsClientEvent::Closed(reason) => {
                        link.reset();
                        let endpoint = client.name.clone();
                        let at = self.elapsed();
                        self.log.event(
                            at,
                            &format!("{endpoint}'s DTLS session with {server} closed: {reason:?}"),
                        );
                    }
                    _ => {}
                }
            }
        }
        moved
    }

    /// Moves everything out of client `i`: datagrams (through its DTLS session where it has
    /// one), events, its next deadline. True when a datagram went out.
    fn flush_client(&mut self, i: usize) -> bool {
        let mut moved = false;
        loop {
            let mut again = false;
            while let Some(t) = self.clients[i].machine.poll_transmit() {
                again = true;
                self.client_transmit(i, t);
            }
            again |= self.client_dtls(i);
            moved |= again;
            if !again {
                break;
            }
        }
        let at = self.elapsed();
        let client = &mut self.clients[i];
        while let Some(event) = client.machine.poll_event() {
            if let Some(forgotten) = client.dtls.after_event(&event) {
                let text = format!("{}: {}", client.name, secure::forgotten_words(forgotten));
                self.log.event(at, &text);
            }
            self.happenings.push_back(Timed {
                at,
                happening: Happening::Client {
                    endpoint: client.name.clone(),
                    event,
                },
            });
        }
        let sessions = client
            .dtls
            .iter()
            .filter_map(|l| l.session.as_ref()?.poll_timeout());
        let deadline = sessions.chain(client.machine.poll_timeout()).min();
        if deadline != client.deadline {
            client.deadline = deadline;
            if let Some(d) = deadline {
                self.timers.push(Reverse((d, i)));
            }
        }
        moved
    }

    /// Takes every datagram and event out of every machine that may have some.
    fn flush(&mut self) {
        let at = self.elapsed();
        loop {
            let mut moved = false;
            for role in [ServerRole::Lwm2m, ServerRole::Bootstrap] {
                moved |= self.flush_secure(role);
            }
            while let Some(t) = self.server.poll_transmit() {
                moved = true;
                self.send_from_server(SERVER, t.peer, t.bytes, Wire::Coap);
            }
            while let Some(e) = self.server.poll_event() {
                self.server_event(false, e);
            }
            while let Some(t) = self.bootstrap.poll_transmit() {
                moved = true;
                self.send_from_server(BOOTSTRAP, t.peer, t.bytes, Wire::Coap);
            }
            while let Some(e) = self.bootstrap.poll_event() {
                self.happenings.push_back(Timed {
                    at,
                    happening: Happening::Bootstrap(e),
                });
            }
            for i in std::mem::take(&mut self.dirty) {
                moved |= self.flush_client(i);
            }
            if !moved {
                return;
            }
        }
    }

    /// The earliest live client deadline.
    fn next_client_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            if self.clients[i].deadline == Some(at) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let wire = self.wire.peek().map(|Reverse(d)| d.at);
        let clients = self.next_client_deadline();
        let sockets = [ServerRole::Lwm2m, ServerRole::Bootstrap]
            .map(|role| self.made_socket(role).and_then(|s| s.poll_timeout()));
        [
            wire,
            clients,
            self.server.poll_timeout(),
            self.bootstrap.poll_timeout(),
        ]
        .into_iter()
        .chain(sockets)
        .flatten()
        .min()
    }

    /// Runs everything due at `self.now`.
    fn fire(&mut self) {
        let now = self.now;
        while self.wire.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(d)) = self.wire.pop() {
                self.deliver(d);
            }
        }
        due(&mut self.server, now);
        due(&mut self.bootstrap, now);
        for role in [ServerRole::Lwm2m, ServerRole::Bootstrap] {
            if let Some(socket) = self.made_socket(role) {
                due(socket, now);
            }
        }
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let client = &mut self.clients[i];
            if client.deadline == Some(at) {
                client.deadline = None;
                for session in client.dtls.iter_mut().filter_map(|l| l.session.as_mut()) {
                    if session.poll_timeout().is_some_and(|t| t <= now) {
                        session.handle_timeout(now);
                    }
                }
                if client.machine.poll_timeout().is_some_and(|t| t <= now) {
                    client.machine.handle_timeout(now);
                }
                self.dirty.insert(i);
            }
        }
    }
}

/// Runs `machine`'s timer if it is due at `now`.
fn due(machine: &mut (impl Machine + ?Sized), now: Instant) {
    if machine.poll_timeout().is_some_and(|t| t <= now) {
        machine.handle_timeout(now);
    }
}

impl Backend for InProcess {
    fn subject(&self) -> &Subject {
        &self.subject
    }

    fn supports(&self, capability: Capability) -> Result<(), String> {
        match capability {
            Capability::VirtualTime => Ok(()),
            Capability::Dtls => Ok(()),
            Capability::RawPublicKey => Err(secure::NO_RAW_PUBLIC_KEYS.to_owned()),
            Capability::Tcp => Err("CoAP over TCP (RFC 8323) is not implemented".to_owned()),
            Capability::Smartcard => {
                Err("simulated clients have no smartcard (Core TS 1.1 §5.2.4)".to_owned())
            }
            Capability::Disable => Ok(()),
            Capability::BootstrapTrigger => Ok(()),
            Capability::ServerInitiatedBootstrap => Err(
                "the simulated client serves a Bootstrap Server only during a bootstrap it \
                 requested itself (it answers 4.01 otherwise)"
                    .to_owned(),
            ),
            Capability::MuteSend => Ok(()),
            Capability::ReadWithoutAccept => Err(
                "our LwM2M Server always sends Accept on a Read (it picks the format the \
                 client announced); a GET without Accept cannot be expressed"
                    .to_owned(),
            ),
        }
    }

    fn now(&self) -> Duration {
        self.elapsed()
    }

    fn step(&mut self, until: Duration) {
        let limit = self.t0 + until;
        loop {
            self.flush();
            if !self.happenings.is_empty() {
                return;
            }
            match self.next_deadline() {
                Some(t) if t <= limit => {
                    self.now = self.now.max(t);
                    self.fire();
                }
                _ => {
                    self.now = self.now.max(limit);
                    return;
                }
            }
        }
    }

    fn poll_happening(&mut self) -> Option<Timed> {
        self.happenings.pop_front()
    }

    fn exchange_log(&self) -> &ExchangeLog {
        &self.log
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        let (datagrams, bytes) = self.log.totals();
        let machines = [
            (false, Some(self.server.machine())),
            (true, self.secure_server.as_ref().map(SecureServer::machine)),
        ];
        let machines = machines
            .into_iter()
            .filter_map(|(secure, m)| Some((secure, m?)));
        let (mut registrations, mut retransmissions, mut duplicates, mut timeouts) = (0, 0, 0, 0);
        for (secure, machine) in machines {
            let held = machine
                .registrations()
                .filter(|r| self.transports.holds(&r.endpoint, secure));
            registrations += held.count() as u64;
            let c = machine.counters();
            retransmissions += c.retransmissions;
            duplicates += c.duplicates;
            timeouts += c.timeouts;
        }
        let mut out = BTreeMap::from([
            ("datagrams".to_owned(), datagrams),
            ("bytes".to_owned(), bytes),
            ("clients".to_owned(), self.clients.len() as u64),
            ("registrations".to_owned(), registrations),
            ("server.retransmissions".to_owned(), retransmissions),
            ("server.duplicates".to_owned(), duplicates),
            ("server.timeouts".to_owned(), timeouts),
        ]);
        let sockets = [
            ("dtls", self.secure_server.as_ref().map(SecureServer::dtls)),
            (
                "bootstrap.dtls",
                self.secure_bootstrap.as_ref().map(SecureServer::dtls),
            ),
        ];
        for (prefix, dtls) in sockets {
            let Some(dtls) = dtls else { continue };
            let c = dtls.counters();
            out.insert(format!("{prefix}.handshakes"), c.handshakes_completed);
            out.insert(format!("{prefix}.handshake_failures"), c.handshakes_failed);
        }
        out
    }

    fn server_address(&self) -> SocketAddr {
        SERVER
    }

    fn bootstrap_address(&self) -> SocketAddr {
        BOOTSTRAP
    }

    fn request(&mut self, endpoint: &str, operation: Operation) -> Result<OpId, OpError> {
        let now = self.now;
        let id = match self.secure_server.as_mut() {
            Some(secure) if self.transports.is_secure(endpoint) => {
                let id = secure.machine_mut().request(now, endpoint, operation);
                secure.settle(now);
                id
            }
            _ => self.server.machine_mut().request(now, endpoint, operation),
        };
        self.flush();
        id
    }

    fn registration(&self, endpoint: &str) -> Option<Registration> {
        self.lwm2m(endpoint).registration(endpoint).cloned()
    }

    fn observations(&self, endpoint: &str) -> Vec<(ObservationId, Vec<Lwm2mPath>)> {
        self.lwm2m(endpoint).observations(endpoint)
    }

    fn server_sees_awake(&self, endpoint: &str) -> bool {
        self.lwm2m(endpoint).is_awake(endpoint)
    }

    fn queued(&self, endpoint: &str) -> usize {
        self.lwm2m(endpoint).queued(endpoint)
    }

    fn spoof_to_server(&mut self, endpoint: &str, mut packet: Packet) -> anyhow::Result<()> {
        let i = self.client_index(endpoint)?;
        self.spoofs = self.spoofs.wrapping_add(1);
        packet.header.message_id = 0xf000 | (self.spoofs & 0x0fff);
        packet.set_token(vec![
            0xee,
            0x0f,
            (self.spoofs >> 8) as u8,
            self.spoofs as u8,
        ]);
        let bytes = packet.to_bytes().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let from = self.clients[i].public_address();
        let now = self.elapsed();
        let name = format!("spoofed {endpoint}");
        let (src, dst) = (
            Peer {
                name: &name,
                addr: from,
            },
            Peer {
                name: "server",
                addr: SERVER,
            },
        );
        self.log.datagram(now, src, dst, &bytes);
        self.enqueue(now + DEFAULT_LATENCY, from, SERVER, bytes);
        Ok(())
    }

    fn add_bootstrap_config(&mut self, endpoint: &str, config: BootstrapConfig) {
        let key = if endpoint.contains(['*', '?']) {
            ConfigKey::Pattern(endpoint.to_owned())
        } else {
            ConfigKey::Endpoint(endpoint.to_owned())
        };
        if let Err(e) = self.configs.put(key, config) {
            let at = self.elapsed();
            let text = format!(
                "the Bootstrap Server's store refused the configuration of {endpoint:?}: {e}"
            );
            tracing::warn!("{text}");
            self.log.note(at, &text);
        }
    }

    fn start_bootstrap(&mut self, endpoint: &str) -> Result<(), BootstrapError> {
        let peer = self
            .by_name
            .get(endpoint)
            .map_or(SERVER, |i| self.clients[*i].public_address());
        let started = self.bootstrap.start(self.now, endpoint, peer);
        self.flush();
        started
    }

    fn add_client(&mut self, spec: ClientSpec) -> anyhow::Result<()> {
        let name = spec.config.endpoint.clone();
        anyhow::ensure!(
            !self.by_name.contains_key(&name),
            "a client {name:?} already exists in this scenario"
        );
        let number = u32::try_from(self.clients.len())?;
        anyhow::ensure!(number < 0x00ff_fffe - PRIVATE_OFFSET, "too many clients");
        let client = SimClient {
            name: name.clone(),
            machine: Lwm2mClient::new(spec.config.clone(), spec.tree.clone()),
            number,
            link: Link::default(),
            deadline: None,
            dtls: Links::default(),
            factory: Some(spec),
        };
        let index = self.clients.len();
        self.by_ip.insert(client.private_address().ip(), index);
        self.by_ip.insert(IpAddr::V4(client_ip(100, number)), index);
        self.by_name.insert(name, index);
        self.clients.push(client);
        Ok(())
    }

    fn client_action(&mut self, endpoint: &str, action: ClientAction) -> anyhow::Result<()> {
        let i = self.client_index(endpoint)?;
        let now = self.now;
        if action == ClientAction::Start {
            self.clients[i].factory = None;
        }
        let machine = &mut self.clients[i].machine;
        match action {
            ClientAction::Start => machine.start(now),
            ClientAction::SetValue(path, value) => machine.set_value(now, &path, value),
            ClientAction::Send(paths) => machine.send(now, &paths),
            ClientAction::Update => machine.trigger_update(now),
            ClientAction::Deregister => machine.deregister(now),
        }
        self.dirty.insert(i);
        self.flush();
        Ok(())
    }

    fn client(&self, endpoint: &str) -> Option<&Lwm2mClient> {
        self.by_name
            .get(endpoint)
            .map(|i| &self.clients[*i].machine)
    }

    fn set_network(&mut self, endpoint: &str, model: &NetworkModel) -> anyhow::Result<()> {
        let i = self.client_index(endpoint)?;
        let base = seed::mix(&[self.seed, u64::from(self.clients[i].number)]);
        let link = &mut self.clients[i].link;
        let impaired = |c: &lwm2m_simulator::network::ImpairmentConfig| {
            *c != lwm2m_simulator::network::ImpairmentConfig::default()
        };
        link.uplink =
            impaired(&model.uplink).then(|| Impairment::new(&model.uplink, seed::mix(&[base, 1])));
        link.downlink = impaired(&model.downlink)
            .then(|| Impairment::new(&model.downlink, seed::mix(&[base, 2])));
        link.nat = model
            .nat
            .as_ref()
            .map(|n| Nat::new(n, seed::mix(&[base, 3])));
        link.mappings.clear();
        link.sleep = model
            .sleep
            .as_ref()
            .map(|s| SleepSchedule::new(s, seed::mix(&[base, 4])));
        Ok(())
    }

    fn public_address(&self, endpoint: &str) -> Option<SocketAddr> {
        self.by_name
            .get(endpoint)
            .map(|i| self.clients[*i].public_address())
    }

    fn secure_address(&self, role: ServerRole) -> Option<SocketAddr> {
        Some(secure::secure_address(role))
    }

    fn add_psk(
        &mut self,
        role: ServerRole,
        endpoint: &str,
        identity: &[u8],
        key: &[u8],
    ) -> anyhow::Result<()> {
        self.secure_socket(role)?;
        let store = match role {
            ServerRole::Lwm2m => &self.security,
            ServerRole::Bootstrap => &self.bootstrap_security,
        };
        let identity = std::str::from_utf8(identity).map_err(|_| {
            anyhow::anyhow!("a PSK identity must be UTF-8 text (Core TS 1.1 §E.1, /0/x/3)")
        })?;
        store
            .put(SecurityInfo {
                endpoint: endpoint.to_owned(),
                credentials: Credentials::Psk {
                    identity: identity.to_owned(),
                    key: hex(key),
                },
            })
            .map(drop)
            .map_err(|e| anyhow::anyhow!("the {role}'s security store refused the PSK: {e}"))
    }

    fn forget_dtls_sessions(&mut self, role: ServerRole) -> anyhow::Result<()> {
        match role {
            ServerRole::Lwm2m => self.secure_lwm2m()?.forget_sessions()?,
            ServerRole::Bootstrap => self.secure_bootstrap()?.forget_sessions()?,
        }
        let text = format!("the {role} forgets its DTLS sessions (a restart)");
        let at = self.elapsed();
        self.log.event(at, &text);
        Ok(())
    }

    fn secure_client(
        &mut self,
        endpoint: &str,
        role: ServerRole,
        account: SecureAccount,
    ) -> anyhow::Result<()> {
        let i = self.client_index(endpoint)?;
        self.secure_socket(role)?;
        let client = &mut self.clients[i];
        let Some(spec) = client.factory.as_mut() else {
            anyhow::bail!("{endpoint:?} has started: its factory configuration is fixed");
        };
        let address = secure::secure_address(role);
        write_account(&mut spec.tree, role, address, &account)?;
        let configured = match role {
            ServerRole::Lwm2m => &mut spec.config.server,
            ServerRole::Bootstrap => &mut spec.config.bootstrap_server,
        };
        if configured.is_some() {
            *configured = Some(address);
        }
        client.machine = Lwm2mClient::new(spec.config.clone(), spec.tree.clone());
        Ok(())
    }

    fn secure_identity(&self, endpoint: &str) -> Option<Identity> {
        let secure = self.secure_server.as_ref()?;
        if !self.transports.is_secure(endpoint) {
            return None;
        }
        let address = secure.machine().registration(endpoint)?.address;
        secure.dtls().session(address)?.identity
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use lwm2m_proto::server::ServerEvent;
    use lwm2m_simulator::network::NatConfig;

    use super::*;
    use crate::bdd::fleet::{Library, Provisioning};
    use crate::bdd::run::workspace_root;

    fn library() -> Library {
        Library::load(&workspace_root(Path::new(env!("CARGO_MANIFEST_DIR"))), &[]).unwrap()
    }

    /// A backend with one registered "ets-1.1" client called `c1`.
    fn registered(lib: &Library, model: Option<NetworkModel>) -> InProcess {
        let mut b = InProcess::new(Subject::in_process(), 3, lib.registry.clone());
        let profile = lib.profile("ets-1.1").unwrap();
        let spec = lib
            .client(profile, "c1", 0, 3, Provisioning::Server(SERVER), &[])
            .unwrap();
        b.add_client(spec).unwrap();
        if let Some(m) = model {
            b.set_network("c1", &m).unwrap();
        }
        b.client_action("c1", ClientAction::Start).unwrap();
        let until = b.now() + Duration::from_secs(5);
        run_until(&mut b, until, |h| {
            matches!(h, Happening::Server(ServerEvent::Registered { .. }))
        })
        .expect("registered");
        b
    }

    fn run_until(
        b: &mut InProcess,
        until: Duration,
        mut found: impl FnMut(&Happening) -> bool,
    ) -> Option<Timed> {
        while b.now() < until {
            b.step(until);
            while let Some(t) = b.poll_happening() {
                if found(&t.happening) {
                    return Some(t);
                }
            }
        }
        None
    }

    #[test]
    fn the_plain_socket_refuses_an_endpoint_with_credentials_as_serve_does() {
        let lib = library();
        let mut b = InProcess::new(Subject::in_process(), 3, lib.registry.clone());
        let profile = lib.profile("ets-1.1").unwrap();
        let spec = lib
            .client(profile, "c1", 0, 3, Provisioning::Server(SERVER), &[])
            .unwrap();
        b.add_client(spec).unwrap();
        // The server holds a PSK for c1; c1's account is plain CoAP.
        b.add_psk(ServerRole::Lwm2m, "c1", b"c1", &[7; 16]).unwrap();
        b.client_action("c1", ClientAction::Start).unwrap();
        run_until(&mut b, Duration::from_secs(5), |_| false);
        assert!(b.registration("c1").is_none());
        let text = b.exchange_log().text();
        assert!(text.contains("4.03"), "{text}");
        assert!(text.contains("over plain CoAP with 4.03"), "{text}");
        assert_eq!(b.counters()["registrations"], 0);
    }

    #[test]
    fn days_pass_in_an_instant_and_updates_keep_the_registration() {
        let lib = library();
        let mut b = registered(&lib, None);
        let id = b.registration("c1").unwrap().id;
        let wall = Instant::now();
        // The lifetime is 86400 s: the client updates before it runs out, twice.
        run_until(&mut b, Duration::from_secs(2 * 86_400 + 60), |_| false);
        assert!(wall.elapsed() < Duration::from_secs(10));
        assert!(b.now() >= Duration::from_secs(2 * 86_400 + 60));
        let r = b.registration("c1").expect("still registered");
        assert_eq!(r.id, id);
        let text = b.exchange_log().text();
        assert!(text.contains("POST mid="), "{text}");
        assert!(text.matches(&format!("/rd/{id}")).count() >= 2, "{text}");
    }

    #[test]
    fn a_nat_drops_datagrams_to_a_forgotten_mapping() {
        let lib = library();
        let model = NetworkModel {
            nat: Some(NatConfig {
                idle_timeout: Duration::from_secs(30),
                inbound_refresh: false,
            }),
            ..NetworkModel::default()
        };
        let mut b = registered(&lib, Some(model));
        let seen_at = b.registration("c1").unwrap().address;
        assert_eq!(b.public_address("c1"), Some(seen_at));
        assert_eq!(seen_at.ip(), IpAddr::V4(Ipv4Addr::new(100, 0, 0, 1)));
        let until = b.now() + Duration::from_secs(60);
        run_until(&mut b, until, |_| false);
        let op = b
            .request(
                "c1",
                Operation::Read {
                    path: Lwm2mPath::resource(3, 0, 0),
                    format: None,
                },
            )
            .unwrap();
        let until = b.now() + Duration::from_secs(120);
        let done = run_until(
            &mut b,
            until,
            |h| matches!(h, Happening::Server(ServerEvent::Completed { op: o, .. }) if *o == op),
        )
        .expect("the read ends");
        assert!(
            matches!(
                done.happening,
                Happening::Server(ServerEvent::Completed { result: Err(_), .. })
            ),
            "{done:?}"
        );
        let text = b.exchange_log().text();
        assert!(text.contains("dropped by the NAT of c1"), "{text}");
    }

    #[test]
    fn a_lost_link_loses_everything_and_says_so() {
        let lib = library();
        let mut b = registered(&lib, None);
        let mut model = NetworkModel::default();
        model.uplink.loss = 1.0;
        model.downlink.loss = 1.0;
        b.set_network("c1", &model).unwrap();
        b.request(
            "c1",
            Operation::Read {
                path: Lwm2mPath::resource(3, 0, 0),
                format: None,
            },
        )
        .unwrap();
        let until = b.now() + Duration::from_secs(10);
        run_until(&mut b, until, |_| false);
        let text = b.exchange_log().text();
        assert!(text.contains("lost on the downlink to c1"), "{text}");
        assert!(b.client("c1").is_some() && b.client("nobody").is_none());
        assert!(b.client_action("nobody", ClientAction::Start).is_err());
    }
}
