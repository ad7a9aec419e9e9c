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
//! CoAP over DTLS ([`super::secure`]): the LwM2M Server also listens at `10.0.0.1:5684`
//! and the Bootstrap Server at `10.0.0.2:5684`, each behind a sans-IO DTLS session
//! router, and a client whose account says `coaps://` talks to that server through a
//! DTLS client session of its own; the link carries the records, the exchange log names
//! them and shows the CoAP inside.
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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lwm2m_dtls::{
    ClientEvent as DtlsClientEvent, DtlsClient, FailureReason, Identity, ServerEvent as DtlsEvent,
};
use lwm2m_proto::Lwm2mPath;
use lwm2m_proto::bootstrap::{
    BootstrapConfig, BootstrapError, BootstrapServer, BootstrapServerConfig, ConfigSource,
    MemoryConfigSource,
};
use lwm2m_proto::client::{ClientState, Lwm2mClient};
use lwm2m_proto::coap::{self, Packet, Transmit};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{
    Lwm2mServer, ObservationId, OpError, OpId, Operation, Registration, ServerConfig,
};
use lwm2m_simulator::network::{Mapping, Nat, NetworkModel, SleepSchedule};
use lwm2m_simulator::{Impairment, seed};

use super::backend::{
    Backend, Capability, ClientAction, ClientSpec, DtlsHappening, DtlsSide, Happening, ServerRole,
    Subject, Timed,
};
use super::exchange::{ExchangeLog, Peer, describe};
use super::secure::{
    self, ClientLink, SECURE_BOOTSTRAP, SECURE_SERVER, SecureAccount, SecureListener,
};

/// The LwM2M Server's address on the in-memory link.
pub const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 5683);
/// The Bootstrap Server's address on the in-memory link.
pub const BOOTSTRAP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 5683);
/// The UDP port every simulated client uses behind its address.
const CLIENT_PORT: u16 = 56830;
/// One-way latency of a link without a network model.
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(5);

/// Bootstrap configurations the steps add while the Bootstrap Server runs.
#[derive(Debug, Clone, Default)]
struct SharedConfigs(Arc<Mutex<MemoryConfigSource>>);

impl SharedConfigs {
    fn add(&self, endpoint: &str, config: BootstrapConfig) {
        let mut source = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let map = if endpoint.contains(['*', '?']) {
            &mut source.patterns
        } else {
            &mut source.endpoints
        };
        map.insert(endpoint.to_owned(), config);
    }
}

impl ConfigSource for SharedConfigs {
    fn lookup(&self, endpoint: &str) -> Option<(String, BootstrapConfig)> {
        let source = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        source.lookup(endpoint)
    }
}

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
    dtls: Vec<ClientLink>,
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
#[derive(Debug)]
pub struct InProcess {
    subject: Subject,
    seed: u64,
    t0: Instant,
    now: Instant,
    server: Lwm2mServer,
    bootstrap: BootstrapServer,
    configs: SharedConfigs,
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
    /// The DTLS listeners of the LwM2M Server and the Bootstrap Server, made when a
    /// scenario first needs them.
    secure: BTreeMap<ServerRole, SecureListener>,
}

impl InProcess {
    /// Our servers with no clients yet; every random choice derives from `seed`.
    pub fn new(subject: Subject, seed: u64, registry: Arc<Registry>) -> Self {
        let coap = |n: u64| coap::Config {
            seed: seed::mix(&[seed, n]),
            ..coap::Config::default()
        };
        let configs = SharedConfigs::default();
        let t0 = Instant::now();
        Self {
            subject,
            seed,
            t0,
            now: t0,
            server: Lwm2mServer::new(
                ServerConfig {
                    coap: coap(1),
                    ..ServerConfig::default()
                },
                registry,
            ),
            bootstrap: BootstrapServer::new(
                BootstrapServerConfig {
                    coap: coap(2),
                    ..BootstrapServerConfig::default()
                },
                Box::new(configs.clone()),
            ),
            configs,
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
            secure: BTreeMap::new(),
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
        let rebound = match (wire, client.dtls.iter_mut().find(|l| l.server == to)) {
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

    /// The DTLS listener of `role`, made at first use.
    fn listener(&mut self, role: ServerRole) -> anyhow::Result<&mut SecureListener> {
        match self.secure.entry(role) {
            std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(e) => Ok(e.insert(SecureListener::new()?)),
        }
    }

    fn push_happening(&mut self, happening: Happening) {
        let at = self.elapsed();
        self.happenings.push_back(Timed { at, happening });
    }

    /// A plain datagram reaches the machine of `role`: its answers to that peer go out in
    /// the clear from now on.
    fn plain_datagram(&mut self, role: ServerRole, d: &InFlight) {
        if let Some(listener) = self.secure.get_mut(&role) {
            listener.forget(d.from);
        }
        self.machine_datagram(role, d.from, &d.bytes);
    }

    fn machine_datagram(&mut self, role: ServerRole, peer: SocketAddr, bytes: &[u8]) {
        let now = self.now;
        match role {
            ServerRole::Lwm2m => self.server.handle_datagram(now, peer, bytes),
            ServerRole::Bootstrap => self.bootstrap.handle_datagram(now, peer, bytes),
        }
    }

    /// A datagram arrives at its destination (or is dropped on the way in).
    fn deliver(&mut self, d: InFlight) {
        let now = self.now;
        let at = self.elapsed();
        match self.party(d.to) {
            Some(Party::Server) => self.plain_datagram(ServerRole::Lwm2m, &d),
            Some(Party::Bootstrap) => self.plain_datagram(ServerRole::Bootstrap, &d),
            Some(Party::Secure(role)) => match self.listener(role) {
                Ok(listener) => listener.dtls.handle_datagram(now, d.from, &d.bytes),
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
                let drop = match client.dtls.iter_mut().find(|l| l.server == d.from) {
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

    /// Sends what the DTLS listener of `role` has for the link; `inner` is the CoAP
    /// message of the record just written, if any. True when something went.
    fn drain_listener(&mut self, role: ServerRole, inner: Option<&[u8]>) -> bool {
        let mut moved = false;
        while let Some(t) = self
            .secure
            .get_mut(&role)
            .and_then(|l| l.dtls.poll_transmit())
        {
            moved = true;
            let from = secure::secure_address(role);
            self.send_from_server(from, t.peer, t.bytes, Wire::Dtls(inner));
        }
        moved
    }

    /// Encrypts `bytes` to `peer` in the session of `role`'s listener and sends the record.
    fn send_secure(&mut self, role: ServerRole, peer: SocketAddr, bytes: &[u8]) {
        self.drain_listener(role, None);
        let now = self.now;
        let Some(listener) = self.secure.get_mut(&role) else {
            return;
        };
        match listener.dtls.send(now, peer, bytes) {
            Ok(()) => {
                self.drain_listener(role, Some(bytes));
            }
            Err(e) => {
                let name = self.name_of(peer);
                let at = self.elapsed();
                self.log.note(
                    at,
                    &format!("dropped: the {role}'s {} to {name}: {e}", describe(bytes)),
                );
            }
        }
    }

    /// A datagram of the machine of `role`: into the DTLS session its peer's request came
    /// through, else in the clear.
    fn machine_transmit(&mut self, role: ServerRole, t: Transmit) {
        let secure = self
            .secure
            .get(&role)
            .is_some_and(|l| l.identity_of(t.peer).is_some());
        if secure {
            self.send_secure(role, t.peer, &t.bytes);
        } else {
            let from = match role {
                ServerRole::Lwm2m => SERVER,
                ServerRole::Bootstrap => BOOTSTRAP,
            };
            self.send_from_server(from, t.peer, t.bytes, Wire::Coap);
        }
    }

    /// Handles what the DTLS listener of `role` reported: decrypted CoAP to its machine
    /// (or refused here with 4.03), handshakes and closes as happenings.
    fn listener_events(&mut self, role: ServerRole) -> bool {
        let mut moved = false;
        while let Some(event) = self.secure.get_mut(&role).and_then(|l| l.dtls.poll_event()) {
            moved = true;
            let at = self.elapsed();
            let happening = match event {
                DtlsEvent::Datagram {
                    peer,
                    identity,
                    payload,
                    ..
                } => {
                    self.secure_request(role, peer, identity, &payload);
                    continue;
                }
                DtlsEvent::Established { peer, identity, .. } => {
                    let endpoint = self.name_of(peer);
                    self.log.event(
                        at,
                        &format!(
                            "DTLS session of {endpoint} with the {role} established as {identity}"
                        ),
                    );
                    if let Some(s) = self.secure.get(&role).and_then(|l| l.dtls.secrets(peer)) {
                        self.log.add_key(s.key_log_line());
                    }
                    DtlsHappening::Established {
                        endpoint,
                        server: role,
                        identity,
                    }
                }
                DtlsEvent::HandshakeFailed {
                    peer,
                    identity,
                    reason,
                    ..
                } => {
                    let endpoint = self.name_of(peer);
                    let claimed = identity
                        .as_ref()
                        .map_or_else(String::new, |i| format!(" ({i})"));
                    self.log.note(
                        at,
                        &format!(
                            "the {role} failed the DTLS handshake of {endpoint}{claimed}: {reason}"
                        ),
                    );
                    DtlsHappening::HandshakeFailed {
                        endpoint,
                        server: role,
                        side: DtlsSide::Server,
                        identity,
                        reason,
                    }
                }
                DtlsEvent::Closed { peer, reason, .. } => {
                    if let Some(l) = self.secure.get_mut(&role) {
                        l.forget(peer);
                    }
                    let endpoint = self.name_of(peer);
                    self.log.event(
                        at,
                        &format!("DTLS session of {endpoint} with the {role} closed: {reason:?}"),
                    );
                    DtlsHappening::Closed {
                        endpoint,
                        server: role,
                        reason,
                    }
                }
                _ => continue,
            };
            self.push_happening(Happening::Dtls(happening));
        }
        moved
    }

    /// A CoAP message that came through a DTLS session of `role`'s listener as `identity`.
    fn secure_request(
        &mut self,
        role: ServerRole,
        peer: SocketAddr,
        identity: Identity,
        payload: &[u8],
    ) {
        let refusal = self.secure.get(&role).and_then(|l| {
            l.refusal(role, &identity, payload, |id| {
                self.server
                    .registrations()
                    .find(|r| r.id == id && role == ServerRole::Lwm2m)
                    .map(|r| r.endpoint.clone())
            })
        });
        let Some(refusal) = refusal else {
            if let Some(l) = self.secure.get_mut(&role) {
                l.note_secure(peer, identity);
            }
            self.machine_datagram(role, peer, payload);
            return;
        };
        let client = self.name_of(peer);
        let at = self.elapsed();
        self.log.note(
            at,
            &format!(
                "the {role} refuses {client}'s request for endpoint {:?} with 4.03: the \
                 session is {identity}, owned by {}",
                refusal.endpoint,
                refusal.owner.as_deref().unwrap_or("no endpoint")
            ),
        );
        if let Ok(answer) = refusal.answer.to_bytes() {
            self.send_secure(role, peer, &answer);
        }
        self.push_happening(Happening::Dtls(DtlsHappening::Refused {
            client,
            server: role,
            identity,
            endpoint: refusal.endpoint,
            owner: refusal.owner,
        }));
    }

    /// A datagram of client `i`'s machine: through a DTLS session when it goes to a
    /// `coaps://` server of its Security object, else straight onto the link.
    fn client_transmit(&mut self, i: usize, t: Transmit) {
        let now = self.now;
        let client = &mut self.clients[i];
        let linked = client.dtls.iter().any(|l| l.server == t.peer);
        if !linked && !secure::is_secure(client.machine.tree(), t.peer) {
            return self.send_from_client(i, t.peer, t.bytes, Wire::Coap);
        }
        if !linked {
            client.dtls.push(ClientLink::new(t.peer));
        }
        self.drain_client_dtls(i, t.peer, None);
        let SimClient { dtls, machine, .. } = &mut self.clients[i];
        let Some(link) = dtls.iter_mut().find(|l| l.server == t.peer) else {
            return;
        };
        let tree = machine.tree();
        let endpoint = &machine.config().endpoint;
        let sent = link.send(now, t.bytes.clone(), || {
            secure::client_config(tree, endpoint, t.peer)
                .unwrap_or_else(|| Err("no coaps:// account for this server any more".into()))
        });
        match sent {
            Ok(encrypted) => {
                self.drain_client_dtls(i, t.peer, encrypted.then_some(t.bytes.as_slice()));
            }
            Err(reason) => {
                let endpoint = self.clients[i].name.clone();
                let at = self.elapsed();
                self.log.note(
                    at,
                    &format!(
                        "{endpoint} cannot open a DTLS session with {}: {reason}",
                        t.peer
                    ),
                );
                self.push_happening(Happening::Dtls(DtlsHappening::HandshakeFailed {
                    endpoint,
                    server: secure::role_of(t.peer),
                    side: DtlsSide::Client,
                    identity: None,
                    reason: FailureReason::Protocol(reason),
                }));
            }
        }
    }

    /// Sends what client `i`'s DTLS session with `server` has for the link; `inner` is the
    /// CoAP message of the record just written, if any. True when something went.
    fn drain_client_dtls(&mut self, i: usize, server: SocketAddr, inner: Option<&[u8]>) -> bool {
        let mut moved = false;
        while let Some(bytes) = self.clients[i]
            .dtls
            .iter_mut()
            .find(|l| l.server == server)
            .and_then(|l| l.session.as_mut())
            .and_then(DtlsClient::poll_transmit)
        {
            moved = true;
            self.send_from_client(i, server, bytes, Wire::Dtls(inner));
        }
        moved
    }

    /// Handles what client `i`'s DTLS sessions reported and sends what they have. True
    /// when something happened.
    fn client_dtls(&mut self, i: usize) -> bool {
        let now = self.now;
        let mut moved = false;
        let servers: Vec<SocketAddr> = self.clients[i].dtls.iter().map(|l| l.server).collect();
        for server in servers {
            moved |= self.drain_client_dtls(i, server, None);
            loop {
                let client = &mut self.clients[i];
                let Some(link) = client.dtls.iter_mut().find(|l| l.server == server) else {
                    break;
                };
                let Some(event) = link.session.as_mut().and_then(DtlsClient::poll_event) else {
                    break;
                };
                moved = true;
                match event {
                    DtlsClientEvent::Established => {
                        for bytes in link.take_pending() {
                            let sent = self.clients[i]
                                .dtls
                                .iter_mut()
                                .find(|l| l.server == server)
                                .and_then(|l| l.session.as_mut())
                                .map(|s| s.send(now, &bytes));
                            if let Some(Ok(())) = sent {
                                self.drain_client_dtls(i, server, Some(&bytes));
                            }
                        }
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
            if let Some(why) = secure::after_client_event(&event, &mut client.dtls) {
                let text = format!("{}: {why}", client.name);
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
                moved |= self.drain_listener(role, None);
                moved |= self.listener_events(role);
            }
            while let Some(t) = self.server.poll_transmit() {
                moved = true;
                self.machine_transmit(ServerRole::Lwm2m, t);
            }
            while let Some(e) = self.server.poll_event() {
                self.happenings.push_back(Timed {
                    at,
                    happening: Happening::Server(e),
                });
            }
            while let Some(t) = self.bootstrap.poll_transmit() {
                moved = true;
                self.machine_transmit(ServerRole::Bootstrap, t);
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
        let listeners = self.secure.values().filter_map(|l| l.dtls.poll_timeout());
        [
            wire,
            clients,
            self.server.poll_timeout(),
            self.bootstrap.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .chain(listeners)
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
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        if self.bootstrap.poll_timeout().is_some_and(|t| t <= now) {
            self.bootstrap.handle_timeout(now);
        }
        for listener in self.secure.values_mut() {
            if listener.dtls.poll_timeout().is_some_and(|t| t <= now) {
                listener.dtls.handle_timeout(now);
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
        let server = self.server.counters();
        let mut out = BTreeMap::from([
            ("datagrams".to_owned(), datagrams),
            ("bytes".to_owned(), bytes),
            ("clients".to_owned(), self.clients.len() as u64),
            (
                "registrations".to_owned(),
                self.server.registrations().count() as u64,
            ),
            ("server.retransmissions".to_owned(), server.retransmissions),
            ("server.duplicates".to_owned(), server.duplicates),
            ("server.timeouts".to_owned(), server.timeouts),
        ]);
        for (role, listener) in &self.secure {
            let dtls = listener.dtls.counters();
            let prefix = match role {
                ServerRole::Lwm2m => "dtls",
                ServerRole::Bootstrap => "bootstrap.dtls",
            };
            out.insert(format!("{prefix}.handshakes"), dtls.handshakes_completed);
            out.insert(
                format!("{prefix}.handshake_failures"),
                dtls.handshakes_failed,
            );
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
        let id = self.server.request(self.now, endpoint, operation);
        self.flush();
        id
    }

    fn registration(&self, endpoint: &str) -> Option<Registration> {
        self.server.registration(endpoint).cloned()
    }

    fn observations(&self, endpoint: &str) -> Vec<(ObservationId, Vec<Lwm2mPath>)> {
        self.server.observations(endpoint)
    }

    fn server_sees_awake(&self, endpoint: &str) -> bool {
        self.server.is_awake(endpoint)
    }

    fn queued(&self, endpoint: &str) -> usize {
        self.server.queued(endpoint)
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
        self.configs.add(endpoint, config);
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
            dtls: Vec::new(),
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
        self.listener(role)?.add_psk(identity, key, endpoint);
        Ok(())
    }

    fn forget_dtls_sessions(&mut self, role: ServerRole) -> anyhow::Result<()> {
        self.listener(role)?.forget_sessions()?;
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
        self.listener(role)?;
        let client = &mut self.clients[i];
        let Some(spec) = client.factory.as_mut() else {
            anyhow::bail!("{endpoint:?} has started: its factory configuration is fixed");
        };
        let address = secure::secure_address(role);
        secure::write_account(&mut spec.tree, role, address, &account)?;
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
        let address = self.server.registration(endpoint)?.address;
        let listener = self.secure.get(&ServerRole::Lwm2m)?;
        listener.identity_of(address).cloned()
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
