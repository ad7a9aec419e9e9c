//! [`ServerBackend`]: our simulated clients on real sockets against a server under test,
//! driven through its adapter (see the parent module).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwm2m_proto::Lwm2mPath;
use lwm2m_proto::bootstrap::{BootstrapConfig, BootstrapError};
use lwm2m_proto::client::{ClientState, Lwm2mClient};
use lwm2m_proto::coap::Packet;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{ObservationId, OpError, OpId, Operation, Registration, ServerEvent};
use lwm2m_simulator::NetworkModel;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::accounts::{SecureAccount, write_account};
use crate::bdd::adapter::{Feature, RegistrationView, ServerAdapter};
use crate::bdd::backend::{
    Backend, Capability, ClientAction, ClientSpec, DtlsHappening, DtlsSide, Happening, ServerRole,
    ServerView, Subject, Timed,
};
use crate::bdd::exchange::{ExchangeLog, Peer};
use crate::bdd::secure::{self, LINKS};
use crate::bdd::verdict::not_applicable;
use lwm2m_dtls::ClientEvent as DtlsClientEvent;
use lwm2m_simulator::link::{Links, Route, Servers};

use super::{BackendError, SERVER_NOT_OURS, block_until, runtime};

/// A datagram a simulated client's socket received.
type Received = (usize, Instant, SocketAddr, Vec<u8>);

/// Why the URIs of a server under test give no addresses to send to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// Neither `coap://HOST:PORT` nor `coaps://HOST:PORT`.
    #[error("{uri:?}: expected coap://HOST:PORT (NoSec) or coaps://HOST:PORT (DTLS)")]
    Scheme {
        /// The URI.
        uri: String,
    },
    /// `HOST:PORT` does not resolve.
    #[error("{uri:?}: {reason}")]
    Resolve {
        /// The URI.
        uri: String,
        /// The resolver's error.
        reason: String,
    },
    /// `HOST:PORT` resolves to no address.
    #[error("{uri:?}: no address")]
    NoAddress {
        /// The URI.
        uri: String,
    },
    /// A `coaps://` companion beside a URI that is `coaps://` already.
    #[error("{flag} goes beside a coap:// URI; {uri:?} is coaps:// already")]
    SecureTwice {
        /// The companion's flag (`--server-coaps`, ...).
        flag: String,
        /// The main URI.
        uri: String,
    },
    /// A companion that is not `coaps://`.
    #[error("{flag} {uri:?}: expected coaps://HOST:PORT")]
    CompanionNotSecure {
        /// The companion's flag.
        flag: String,
        /// The companion URI.
        uri: String,
    },
}

/// The address of a `coap://HOST:PORT` or `coaps://HOST:PORT` URI, and whether it is
/// `coaps://`.
fn udp_address(uri: &str) -> Result<(SocketAddr, bool), ListenerError> {
    let (authority, secure) = match (uri.strip_prefix("coap://"), uri.strip_prefix("coaps://")) {
        (Some(a), _) => (a, false),
        (_, Some(a)) => (a, true),
        _ => {
            return Err(ListenerError::Scheme {
                uri: uri.to_owned(),
            });
        }
    };
    let authority = authority.trim_end_matches('/');
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| ListenerError::Resolve {
            uri: uri.to_owned(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| ListenerError::NoAddress {
            uri: uri.to_owned(),
        })?;
    Ok((addr, secure))
}

/// Where a server under test listens: the address its clients are given (its `coap://`
/// one, or its only, `coaps://`, one) and its CoAP over DTLS address, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listeners {
    main: SocketAddr,
    /// `main` takes plain CoAP.
    plain: bool,
    secure: Option<SocketAddr>,
}

impl Listeners {
    /// From the subject's `uri` and its `coaps://` companion (`flag` names it in errors).
    fn of(uri: &str, companion: Option<&str>, flag: &str) -> Result<Self, ListenerError> {
        let (main, is_secure) = udp_address(uri)?;
        match (is_secure, companion) {
            (true, Some(_)) => Err(ListenerError::SecureTwice {
                flag: flag.to_owned(),
                uri: uri.to_owned(),
            }),
            (true, None) => Ok(Self {
                main,
                plain: false,
                secure: Some(main),
            }),
            (false, Some(c)) => match udp_address(c)? {
                (secure, true) => Ok(Self {
                    main,
                    plain: true,
                    secure: Some(secure),
                }),
                (_, false) => Err(ListenerError::CompanionNotSecure {
                    flag: flag.to_owned(),
                    uri: c.to_owned(),
                }),
            },
            (false, None) => Ok(Self {
                main,
                plain: true,
                secure: None,
            }),
        }
    }

    fn is(&self, addr: SocketAddr) -> bool {
        addr == self.main || self.secure == Some(addr)
    }
}

/// The endpoint a Register (`POST /rd?ep=`) or Bootstrap-Request (`POST /bs?ep=`) claims,
/// with its token; `None` for anything else.
fn claim(bytes: &[u8]) -> Option<(Vec<u8>, String)> {
    use lwm2m_proto::coap::{CoapOption, MessageClass, RequestType, message};
    let p = message::decode(bytes).ok()?;
    if p.header.code != MessageClass::Request(RequestType::Post)
        || !["/rd", "/bs"].contains(&message::uri_path(&p).as_str())
    {
        return None;
    }
    let endpoint = p
        .get_option(CoapOption::UriQuery)?
        .iter()
        .find_map(|q| std::str::from_utf8(q).ok()?.strip_prefix("ep="))?
        .to_owned();
    Some((p.get_token().to_vec(), endpoint))
}

/// Whether `bytes` is a 4.03 answer, and its token.
fn forbidden(bytes: &[u8]) -> Option<Vec<u8>> {
    use lwm2m_proto::coap::{MessageClass, ResponseType, message};
    let p = message::decode(bytes).ok()?;
    (p.header.code == MessageClass::Response(ResponseType::Forbidden))
        .then(|| p.get_token().to_vec())
}

/// What reaches the server backend's stepping loop: a datagram for a client, or something
/// the server under test reported through its adapter (an event, an operation's outcome).
#[derive(Debug)]
enum Input {
    Datagram(Received),
    Server(Instant, Box<Happening>),
}

/// How a datagram of a client goes: plain CoAP, or a DTLS record (with the CoAP message it
/// carries, when the client handed one over).
#[derive(Clone, Copy)]
enum Wire<'a> {
    Coap,
    Dtls(Option<&'a [u8]>),
}

/// A simulated client on a real socket.
struct NetClient {
    name: String,
    machine: Lwm2mClient,
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    /// Its factory settings until it starts (a `coaps://` account is written into them).
    factory: Option<ClientSpec>,
    /// Its DTLS sessions with the `coaps://` servers of its Security object.
    dtls: Links,
    /// The endpoints its Registers and Bootstrap-Requests inside a session claimed, by
    /// token: a 4.03 to one is the server refusing the session's identity.
    claims: HashMap<Vec<u8>, String>,
}

/// Our simulated clients against an external server (see the module documentation).
pub struct ServerBackend {
    subject: Subject,
    server: Listeners,
    t0: Instant,
    clients: Vec<NetClient>,
    by_name: HashMap<String, usize>,
    tx: mpsc::UnboundedSender<Input>,
    rx: mpsc::UnboundedReceiver<Input>,
    log: ExchangeLog,
    happenings: VecDeque<Timed>,
    /// What drives the server under test, if anything does (`--server-api`).
    adapter: Option<Arc<dyn ServerAdapter>>,
    /// The Bootstrap Server under test (`--bootstrap-server`), and what drives it.
    bootstrap: Option<(Listeners, Option<Arc<dyn ServerAdapter>>)>,
    /// The bootstrap configurations this scenario gave, by endpoint (stored there, and
    /// removed at its end).
    bootstrap_configs: BTreeMap<String, BootstrapConfig>,
    /// The Bootstrap Server PSKs (identity, key) this scenario gave, by endpoint: they go
    /// into the endpoint's configuration as its Bootstrap-Server account.
    bootstrap_psks: BTreeMap<String, (Vec<u8>, Vec<u8>)>,
    /// The endpoints whose PSK this scenario stored in the server under test.
    stored_psks: Vec<String>,
    next_op: u64,
}

impl std::fmt::Debug for ServerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBackend")
            .field("server", &self.server)
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl ServerBackend {
    /// A backend for the server `subject` names (`coap://HOST:PORT` and/or
    /// `coaps://HOST:PORT`), no clients yet (their CoAP ids come from the scenario seed in
    /// their [`ClientSpec`]); with an adapter (`api`), subscribed to the server's events
    /// from now on.
    pub fn open(subject: &Subject, registry: Arc<Registry>) -> Result<Self, BackendError> {
        let Subject::Server {
            uri,
            secure,
            api,
            bootstrap,
            bootstrap_secure,
            bootstrap_api,
        } = subject
        else {
            return Err(BackendError::WrongSubject {
                id: subject.id().to_string(),
                kind: "server",
            });
        };
        let server = Listeners::of(uri, secure.as_deref(), "--server-coaps")?;
        runtime()?;
        let (tx, rx) = mpsc::unbounded_channel();
        // `bootstrap_only`: a second API, for the Bootstrap Server under test, whose stream
        // may carry the LwM2M Server's events too (our REST API does): those come once,
        // from the server's own adapter.
        let subscribed = |spec: &str, bootstrap_only: bool| {
            let adapter = crate::bdd::adapter::open(spec, registry.clone())?;
            let events = tx.clone();
            adapter.subscribe(Box::new(move |e: Happening| {
                (bootstrap_only && !e.is_bootstrap())
                    || events
                        .send(Input::Server(Instant::now(), Box::new(e)))
                        .is_ok()
            }))?;
            Ok::<Arc<dyn ServerAdapter>, BackendError>(adapter)
        };
        let adapter = api.as_deref().map(|a| subscribed(a, false)).transpose()?;
        let bootstrap = match bootstrap {
            Some(b) => {
                let driver = match (bootstrap_api, &adapter) {
                    // Another API: its events too.
                    (Some(spec), _) if Some(spec) != api.as_ref() => Some(subscribed(spec, true)?),
                    (_, a) => a.clone(),
                };
                let listeners =
                    Listeners::of(b, bootstrap_secure.as_deref(), "--bootstrap-server-coaps")?;
                Some((listeners, driver))
            }
            None if bootstrap_secure.is_some() => {
                return Err(BackendError::BootstrapCoapsAlone);
            }
            None => None,
        };
        Ok(Self {
            subject: subject.clone(),
            server,
            t0: Instant::now(),
            clients: Vec::new(),
            by_name: HashMap::new(),
            tx,
            rx,
            log: ExchangeLog::default(),
            happenings: VecDeque::new(),
            adapter,
            bootstrap,
            bootstrap_configs: BTreeMap::new(),
            bootstrap_psks: BTreeMap::new(),
            stored_psks: Vec::new(),
            next_op: 0,
        })
    }

    /// The adapter, if it offers `feature`; else the case is not applicable (`what` the
    /// step does, in words).
    fn adapter_for(&self, feature: Feature, what: &str) -> &Arc<dyn ServerAdapter> {
        let Some(adapter) = &self.adapter else {
            not_applicable(format!("{what}: {SERVER_NOT_OURS} (no --server-api)"));
        };
        if let Err(why) = adapter.info().offers(feature) {
            not_applicable(format!("{what}: {why}"));
        }
        adapter
    }

    /// What drives the Bootstrap Server under test; else the case is not applicable.
    fn bootstrap_driver(&self, what: &str) -> Arc<dyn ServerAdapter> {
        match &self.bootstrap {
            Some((_, Some(driver))) => driver.clone(),
            Some((_, None)) => not_applicable(format!(
                "{what}: the Bootstrap Server under test has no --bootstrap-api"
            )),
            None => not_applicable(format!(
                "{what}: no Bootstrap Server under test (--bootstrap-server)"
            )),
        }
    }

    /// The server's registration of `endpoint` through the adapter.
    fn registration_view(&self, endpoint: &str, what: &str) -> Option<RegistrationView> {
        let adapter = self.adapter_for(Feature::Registrations, what);
        match adapter.registration(endpoint) {
            Ok(v) => v,
            // The server under test could not be asked: the step fails, with why.
            Err(e) => panic!("{what}: {e}"),
        }
    }

    fn elapsed(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.t0)
    }

    fn index(&self, endpoint: &str) -> anyhow::Result<usize> {
        self.by_name
            .get(endpoint)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("no simulated client {endpoint:?} in this scenario"))
    }

    fn bootstrap_listeners(&self) -> Option<&Listeners> {
        self.bootstrap.as_ref().map(|(l, _)| l)
    }

    fn peer_name(&self, addr: SocketAddr) -> String {
        if self.server.is(addr) {
            "server".to_owned()
        } else if self.bootstrap_listeners().is_some_and(|l| l.is(addr)) {
            "bootstrap server".to_owned()
        } else {
            addr.to_string()
        }
    }

    /// Which server under test a `coaps://` address is.
    fn role_of(&self, addr: SocketAddr) -> ServerRole {
        match self.bootstrap_listeners() {
            Some(l) if l.secure == Some(addr) && self.server.secure != Some(addr) => {
                ServerRole::Bootstrap
            }
            _ => ServerRole::Lwm2m,
        }
    }

    /// The `coaps://` address of the server under test in `role`, if it has one.
    fn secure_of(&self, role: ServerRole) -> Option<SocketAddr> {
        match role {
            ServerRole::Lwm2m => self.server.secure,
            ServerRole::Bootstrap => self.bootstrap_listeners().and_then(|l| l.secure),
        }
    }

    /// The `coaps://` address of the server under test in `role`; else the case is not
    /// applicable.
    fn require_secure(&self, role: ServerRole) -> SocketAddr {
        match (role, self.secure_of(role)) {
            (_, Some(addr)) => addr,
            (ServerRole::Bootstrap, None) if self.bootstrap.is_none() => not_applicable(
                "the case reaches the Bootstrap Server over DTLS: no Bootstrap Server under \
                 test (--bootstrap-server)",
            ),
            (ServerRole::Lwm2m, None) => not_applicable(
                "the case reaches the LwM2M Server over DTLS: the server under test was given \
                 no coaps:// address (--server coaps://HOST:PORT, or --server-coaps beside a \
                 coap:// --server)",
            ),
            (ServerRole::Bootstrap, None) => not_applicable(
                "the case reaches the Bootstrap Server over DTLS: it was given no coaps:// \
                 address (--bootstrap-server coaps://HOST:PORT, or --bootstrap-server-coaps)",
            ),
        }
    }

    /// Sends `bytes` from client `i` to `to` and logs it.
    fn send_from_client(&mut self, i: usize, to: SocketAddr, bytes: &[u8], wire: Wire<'_>) {
        let at = self.elapsed(Instant::now());
        let to_name = self.peer_name(to);
        let client = &self.clients[i];
        // A socket whose writability the reactor has not seen yet says WouldBlock: then
        // wait for it (briefly) instead of losing the datagram to a CoAP retransmission
        // 2-3 s later.
        let sent = match client.socket.try_send_to(bytes, to) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => runtime()
                .map_err(std::io::Error::other)
                .and_then(|rt| rt.block_on(client.socket.send_to(bytes, to))),
            other => other,
        };
        let (name, from) = (client.name.clone(), client.local);
        if let Err(e) = sent {
            self.log.note(at, &format!("{name} could not send: {e}"));
        }
        let (from, to) = (
            Peer {
                name: &name,
                addr: from,
            },
            Peer {
                name: &to_name,
                addr: to,
            },
        );
        match wire {
            Wire::Coap => self.log.datagram(at, from, to, bytes),
            Wire::Dtls(inner) => self.log.secure_datagram(at, from, to, bytes, inner),
        }
    }

    /// A datagram of client `i`'s machine: through a DTLS session when it goes to a
    /// `coaps://` server of its Security object, else in the clear.
    fn client_transmit(&mut self, i: usize, peer: SocketAddr, bytes: Vec<u8>) {
        let now = Instant::now();
        let client = &mut self.clients[i];
        let servers = Servers::from(client.machine.config());
        let claimed = claim(&bytes);
        let refused = match client
            .dtls
            .route(client.machine.tree(), &servers, peer, &LINKS)
        {
            Route::Plain => return self.send_from_client(i, peer, &bytes, Wire::Coap),
            Route::Unusable(reason) => reason.to_string(),
            Route::Secure(link) => match link.send(now, bytes) {
                Ok(_) => {
                    if let Some((token, endpoint)) = claimed {
                        client.claims.insert(token, endpoint);
                    }
                    self.drain_client_dtls(i, peer);
                    return;
                }
                Err(e) => e.to_string(),
            },
        };
        let endpoint = self.clients[i].name.clone();
        let at = self.elapsed(now);
        self.log.note(
            at,
            &format!("{endpoint} cannot open a DTLS session with {peer}: {refused}"),
        );
        self.push(
            now,
            Happening::Dtls(DtlsHappening::HandshakeFailed {
                endpoint,
                server: self.role_of(peer),
                side: DtlsSide::Client,
                identity: None,
                reason: lwm2m_dtls::FailureReason::Protocol(refused),
            }),
        );
    }

    /// Sends what client `i`'s DTLS session with `server` has, each record with the CoAP
    /// message it carries.
    fn drain_client_dtls(&mut self, i: usize, server: SocketAddr) {
        let Some(link) = self.clients[i].dtls.get_mut(server) else {
            return;
        };
        for (bytes, inner) in secure::outgoing(link) {
            self.send_from_client(i, server, &bytes, Wire::Dtls(inner.as_deref()));
        }
    }

    /// The events of client `i`'s DTLS session with `server`, as they are now.
    fn dtls_events(&mut self, i: usize, server: SocketAddr) -> Vec<DtlsClientEvent> {
        let mut events = Vec::new();
        if let Some(session) = self.clients[i]
            .dtls
            .get_mut(server)
            .and_then(|l| l.session.as_mut())
        {
            while let Some(e) = session.poll_event() {
                events.push(e);
            }
        }
        events
    }

    /// Acts on what client `i`'s DTLS session with `server` reported: its CoAP to the
    /// machine, what waited for the handshake into the session, failures as happenings.
    fn on_dtls_event(&mut self, i: usize, server: SocketAddr, event: DtlsClientEvent) {
        let now = Instant::now();
        let at = self.elapsed(now);
        let role = self.role_of(server);
        let name = self.clients[i].name.clone();
        let Some(link) = self.clients[i].dtls.get_mut(server) else {
            return;
        };
        match event {
            DtlsClientEvent::Established => {
                let Some(session) = link.session.as_ref() else {
                    return;
                };
                let identity = session.identity().clone();
                let secrets = session.secrets();
                link.established(now);
                self.log.event(
                    at,
                    &format!("DTLS session of {name} with the {role} established as {identity}"),
                );
                if let Some(s) = secrets {
                    self.log.add_key(s.key_log_line());
                }
                self.push(
                    now,
                    Happening::Dtls(DtlsHappening::Established {
                        endpoint: name,
                        server: role,
                        identity,
                    }),
                );
                self.drain_client_dtls(i, server);
            }
            DtlsClientEvent::Datagram(payload) => {
                let identity = link.session.as_ref().map(|s| s.identity().clone());
                let client = &mut self.clients[i];
                let claimed = forbidden(&payload).and_then(|t| client.claims.get(&t).cloned());
                client.machine.handle_datagram(now, server, &payload);
                if let (Some(endpoint), Some(identity)) = (claimed, identity) {
                    self.log.note(
                        at,
                        &format!(
                            "the {role} refuses {name}'s request for endpoint {endpoint:?} \
                             with 4.03 over the session as {identity}"
                        ),
                    );
                    self.push(
                        now,
                        Happening::Dtls(DtlsHappening::Refused {
                            client: name,
                            server: role,
                            identity,
                            endpoint,
                            owner: None,
                        }),
                    );
                }
            }
            DtlsClientEvent::HandshakeFailed(reason) => {
                let identity = link.session.as_ref().map(|s| s.identity().clone());
                link.reset();
                self.log.note(
                    at,
                    &format!("{name}'s DTLS handshake with the {role} failed: {reason}"),
                );
                self.push(
                    now,
                    Happening::Dtls(DtlsHappening::HandshakeFailed {
                        endpoint: name,
                        server: role,
                        side: DtlsSide::Client,
                        identity,
                        reason,
                    }),
                );
            }
            DtlsClientEvent::Closed(reason) => {
                link.reset();
                self.log.event(
                    at,
                    &format!("{name}'s DTLS session with the {role} closed: {reason:?}"),
                );
            }
            _ => {}
        }
    }

    /// Handles what client `i`'s DTLS sessions reported; true when something happened.
    fn client_dtls(&mut self, i: usize) -> bool {
        let mut moved = false;
        for server in self.clients[i].dtls.servers() {
            self.drain_client_dtls(i, server);
            for event in self.dtls_events(i, server) {
                moved = true;
                self.on_dtls_event(i, server, event);
            }
        }
        moved
    }

    fn push(&mut self, at: Instant, happening: Happening) {
        let at = self.elapsed(at);
        self.happenings.push_back(Timed { at, happening });
    }

    /// Sends what the clients have to send and collects what they report.
    fn flush(&mut self) {
        for i in 0..self.clients.len() {
            loop {
                let mut moved = false;
                while let Some(t) = self.clients[i].machine.poll_transmit() {
                    moved = true;
                    self.client_transmit(i, t.peer, t.bytes);
                }
                moved |= self.client_dtls(i);
                if !moved {
                    break;
                }
            }
            while let Some(event) = self.clients[i].machine.poll_event() {
                let now = Instant::now();
                let client = &mut self.clients[i];
                if let Some(forgotten) = client.dtls.after_event(&event) {
                    let text = format!("{}: {}", client.name, secure::forgotten_words(forgotten));
                    let at = self.elapsed(now);
                    self.log.event(at, &text);
                }
                let endpoint = self.clients[i].name.clone();
                self.push(now, Happening::Client { endpoint, event });
            }
        }
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Datagram(d) => self.deliver(d),
            Input::Server(at, happening) => {
                // A DTLS listener's report names the client by its address.
                let happening = match *happening {
                    Happening::Dtls(DtlsHappening::HandshakeFailed {
                        endpoint,
                        server,
                        side,
                        identity,
                        reason,
                    }) => {
                        let by_address = endpoint.parse::<SocketAddr>().ok().and_then(|a| {
                            self.clients.iter().find(|c| c.local == a).map(|c| &c.name)
                        });
                        // Another run's client, or one of an earlier scenario: not ours.
                        let Some(name) = by_address.cloned() else {
                            return;
                        };
                        Happening::Dtls(DtlsHappening::HandshakeFailed {
                            endpoint: name,
                            server,
                            side,
                            identity,
                            reason,
                        })
                    }
                    other => other,
                };
                self.push(at, happening);
            }
        }
    }

    fn deliver(&mut self, (i, at, from, bytes): Received) {
        let from_name = self.peer_name(from);
        let Some(client) = self.clients.get_mut(i) else {
            return;
        };
        let (name, to) = (client.name.clone(), client.local);
        let secure = match client.dtls.get_mut(from) {
            Some(link) => match link.session.as_mut() {
                Some(session) => {
                    session.handle_datagram(at, &bytes);
                    Some(true)
                }
                // A record of a session the client gave up.
                None => Some(false),
            },
            None => {
                client.machine.handle_datagram(at, from, &bytes);
                None
            }
        };
        let events = match secure {
            Some(true) => self.dtls_events(i, from),
            _ => Vec::new(),
        };
        let inner = events.iter().find_map(|e| match e {
            DtlsClientEvent::Datagram(p) => Some(p.clone()),
            _ => None,
        });
        let when = self.elapsed(at);
        let (from_peer, to_peer) = (
            Peer {
                name: &from_name,
                addr: from,
            },
            Peer {
                name: &name,
                addr: to,
            },
        );
        match secure {
            None => self.log.datagram(when, from_peer, to_peer, &bytes),
            Some(_) => {
                self.log
                    .secure_datagram(when, from_peer, to_peer, &bytes, inner.as_deref());
            }
        }
        if secure == Some(false) {
            self.log.note(
                when,
                &format!("dropped: {name} has no DTLS session with {from} now"),
            );
        }
        for event in events {
            self.on_dtls_event(i, from, event);
        }
    }

    fn next_timeout(&mut self) -> Option<Instant> {
        self.clients
            .iter_mut()
            .flat_map(|c| {
                let sessions = c
                    .dtls
                    .iter()
                    .filter_map(|l| l.session.as_ref()?.poll_timeout());
                c.machine.poll_timeout().into_iter().chain(sessions)
            })
            .min()
    }

    fn fire_timeouts(&mut self) {
        let now = Instant::now();
        for client in &mut self.clients {
            if client.machine.poll_timeout().is_some_and(|t| t <= now) {
                client.machine.handle_timeout(now);
            }
            for session in client.dtls.iter_mut().filter_map(|l| l.session.as_mut()) {
                if session.poll_timeout().is_some_and(|t| t <= now) {
                    session.handle_timeout(now);
                }
            }
        }
    }

    /// The configuration the Bootstrap Server under test holds for `endpoint`: the one the
    /// scenario gave, with the scenario's Bootstrap-Server PSK of the endpoint as its
    /// Bootstrap-Server account (a configuration of that account alone if the scenario gave
    /// none).
    fn bootstrap_config_of(&self, endpoint: &str) -> Option<BootstrapConfig> {
        use lwm2m_proto::bootstrap::config::{SecurityInstance, SecurityMode};
        let given = self.bootstrap_configs.get(endpoint);
        let psk = self.bootstrap_psks.get(endpoint);
        if given.is_none() && psk.is_none() {
            return None;
        }
        let mut config = given.cloned().unwrap_or_else(|| BootstrapConfig {
            delete: Vec::new(),
            ..BootstrapConfig::default()
        });
        if let (Some((identity, key)), Some(secure)) = (psk, self.secure_of(ServerRole::Bootstrap))
        {
            config.security.retain(|_, s| !s.bootstrap_server);
            let id = config.security.keys().max().map_or(0, |m| m + 1);
            config.security.insert(
                id,
                SecurityInstance {
                    bootstrap_server: true,
                    mode: SecurityMode::Psk,
                    identity: String::from_utf8_lossy(identity).into_owned(),
                    secret_key: lwm2m_server::store::hex(key),
                    ..SecurityInstance::nosec(format!("coaps://{secure}"))
                },
            );
        }
        Some(config)
    }

    /// Stores `endpoint`'s configuration ([`Self::bootstrap_config_of`]) in the Bootstrap
    /// Server under test; what it lacks makes the case not applicable, a refusal fails it.
    fn store_bootstrap_config(&self, endpoint: &str, what: &str) {
        let driver = self.bootstrap_driver(what);
        let Some(config) = self.bootstrap_config_of(endpoint) else {
            return;
        };
        match driver.put_bootstrap_config(endpoint, &config) {
            Ok(()) => {}
            Err(e @ crate::bdd::adapter::AdapterError::Lacks { .. }) => {
                not_applicable(format!("{what}: {e}"))
            }
            // The Bootstrap Server under test refused it, or could not be asked: a failure.
            Err(e) => panic!("{what}: {e}"),
        }
    }

    /// Makes the case not applicable when client `i` would talk plain CoAP to a server
    /// under test that listens for `coaps://` only.
    fn check_reachable(&self, i: usize) {
        let machine = &self.clients[i].machine;
        let targets = [
            (
                Some(&self.server),
                machine.config().server,
                ServerRole::Lwm2m,
            ),
            (
                self.bootstrap_listeners(),
                machine.config().bootstrap_server,
                ServerRole::Bootstrap,
            ),
        ];
        for (listeners, target, role) in targets {
            let Some(l) = listeners else { continue };
            let servers = Servers::from(machine.config());
            if !l.plain
                && target == Some(l.main)
                && !secure::is_secure(machine.tree(), &servers, l.main)
            {
                not_applicable(format!(
                    "the case's client talks plain CoAP to the {role}; the {role} under test \
                     was given as coaps:// only (give its coap:// address too)"
                ));
            }
        }
    }
}

impl Backend for ServerBackend {
    fn subject(&self) -> &Subject {
        &self.subject
    }

    fn supports(&self, capability: Capability) -> Result<(), String> {
        match capability {
            Capability::VirtualTime => Err("the server under test runs in real time".to_owned()),
            Capability::Dtls
                if self.server.secure.is_some()
                    || self
                        .bootstrap_listeners()
                        .is_some_and(|l| l.secure.is_some()) =>
            {
                Ok(())
            }
            Capability::Dtls => Err(
                "the server under test was given no coaps:// address (--server \
                 coaps://HOST:PORT, or --server-coaps beside a coap:// --server)"
                    .to_owned(),
            ),
            Capability::RawPublicKey => Err(
                "raw public keys (RFC 7250, Security mode 1) are not in our DTLS library"
                    .to_owned(),
            ),
            Capability::Tcp => Err("CoAP over TCP (RFC 8323) is not implemented".to_owned()),
            Capability::Smartcard => {
                Err("simulated clients have no smartcard (Core TS 1.1 §5.2.4)".to_owned())
            }
            // Our simulated clients do these when the server executes or writes the
            // resource: what the case needs is that operation of the server under test.
            Capability::Disable | Capability::BootstrapTrigger | Capability::MuteSend => {
                match &self.adapter {
                    Some(a) => a
                        .info()
                        .offers(Feature::Execute)
                        .and_then(|()| a.info().offers(Feature::Write))
                        .map_err(|e| e.to_string()),
                    None => Err(SERVER_NOT_OURS.to_owned()),
                }
            }
            Capability::ServerInitiatedBootstrap => Err(format!(
                "no Bootstrap Server of ours runs against a server under test \
                 ({SERVER_NOT_OURS})"
            )),
            Capability::ReadWithoutAccept => Err(match &self.adapter {
                Some(a) => format!(
                    "the server adapter {} cannot ask for a Read without Accept",
                    a.info().adapter
                ),
                None => SERVER_NOT_OURS.to_owned(),
            }),
        }
    }

    fn now(&self) -> Duration {
        self.elapsed(Instant::now())
    }

    fn step(&mut self, until: Duration) {
        let limit = self.t0 + until;
        loop {
            self.flush();
            if !self.happenings.is_empty() || Instant::now() >= limit {
                return;
            }
            // What arrived meanwhile first; then, as it may have given the clients (or
            // their DTLS sessions) something to send, flush again before waiting.
            let mut arrived = false;
            while let Ok(received) = self.rx.try_recv() {
                self.input(received);
                arrived = true;
            }
            if arrived || !self.happenings.is_empty() {
                continue;
            }
            let next = self.next_timeout().map_or(limit, |t| t.min(limit));
            match block_until(&mut self.rx, next) {
                Some(received) => self.input(received),
                None => self.fire_timeouts(),
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
        BTreeMap::from([
            ("datagrams".to_owned(), datagrams),
            ("bytes".to_owned(), bytes),
            ("clients".to_owned(), self.clients.len() as u64),
        ])
    }

    fn server_address(&self) -> SocketAddr {
        self.server.main
    }

    /// The Bootstrap Server under test; without one, clients that only know one are
    /// pointed at the server under test (and bootstrap steps are not applicable).
    fn bootstrap_address(&self) -> SocketAddr {
        self.bootstrap_listeners()
            .map_or(self.server.main, |l| l.main)
    }

    fn request(&mut self, endpoint: &str, operation: Operation) -> Result<OpId, OpError> {
        let feature = Feature::of(&operation);
        let adapter = self
            .adapter_for(
                feature,
                &format!("the step is the server's {} operation", operation.name()),
            )
            .clone();
        if let Err(why) = adapter.check(&operation) {
            not_applicable(format!(
                "the step is the server's {} operation: {why}",
                operation.name()
            ));
        }
        self.next_op += 1;
        let op = OpId(self.next_op);
        let (tx, endpoint) = (self.tx.clone(), endpoint.to_owned());
        // Off the stepping thread: the simulated client must answer meanwhile.
        std::thread::Builder::new()
            .name(format!("server op {}", op.0))
            .spawn(move || {
                let started = Instant::now();
                let result = adapter.request(&endpoint, &operation);
                let event = ServerEvent::Completed {
                    op,
                    endpoint,
                    operation: operation.name(),
                    result,
                    latency: started.elapsed(),
                };
                let _ = tx.send(Input::Server(
                    Instant::now(),
                    Box::new(Happening::Server(event)),
                ));
            })
            .map_err(|e| OpError::Invalid {
                reason: format!("cannot start the operation's thread: {e}"),
            })?;
        Ok(op)
    }

    fn registration(&self, endpoint: &str) -> Option<Registration> {
        self.registration_view(endpoint, "the step looks into the server's registrations")
            .map(|v| v.registration)
    }

    fn observations(&self, _endpoint: &str) -> Vec<(ObservationId, Vec<Lwm2mPath>)> {
        let why = match &self.adapter {
            Some(a) => format!(
                "the server adapter {} does not list a client's observations",
                a.info().adapter
            ),
            None => SERVER_NOT_OURS.to_owned(),
        };
        not_applicable(format!(
            "the step looks into the server's observations: {why}"
        ))
    }

    fn server_sees_awake(&self, endpoint: &str) -> bool {
        // Asked before every operation: a server that does not say is taken as awake.
        match &self.adapter {
            Some(a) if a.info().offers(Feature::QueueState).is_ok() => self
                .registration_view(endpoint, "the step looks into the server")
                .is_none_or(|v| v.sleeping != Some(true)),
            Some(_) => true,
            None => not_applicable(format!("the step looks into the server: {SERVER_NOT_OURS}")),
        }
    }

    fn server_view(&self, view: ServerView) -> Result<(), String> {
        let Some(adapter) = &self.adapter else {
            return Err(format!("{SERVER_NOT_OURS} (no --server-api)"));
        };
        let needs: &[Feature] = match view {
            ServerView::Events => &[Feature::Events],
            ServerView::Send => &[Feature::Send],
            ServerView::Expiry => &[Feature::Expiry],
            ServerView::Refusals => &[Feature::Refusals],
            ServerView::Findings => &[Feature::Findings],
            ServerView::RegistrationFindings => &[Feature::RegistrationFindings],
            ServerView::QueueState => &[Feature::QueueState],
            ServerView::ResponseFormat => &[Feature::ResponseFormat],
            ServerView::Absence => &[Feature::Events, Feature::Notifications, Feature::Send],
            ServerView::Security => &[Feature::SecurityEvents],
        };
        needs
            .iter()
            .try_for_each(|f| adapter.info().offers(*f))
            .map_err(|e| e.to_string())
    }

    fn queued(&self, _endpoint: &str) -> usize {
        not_applicable(format!("the step looks into the server: {SERVER_NOT_OURS}"))
    }

    fn spoof_to_server(&mut self, _endpoint: &str, _packet: Packet) -> anyhow::Result<()> {
        not_applicable("spoofing a client's address needs raw sockets")
    }

    fn add_bootstrap_config(&mut self, endpoint: &str, config: BootstrapConfig) {
        use lwm2m_proto::bootstrap::config::SecurityMode;
        let what = "the step stores a bootstrap configuration";
        self.bootstrap_driver(what);
        let certificate = config
            .security
            .values()
            .any(|s| !s.bootstrap_server && s.mode == SecurityMode::X509);
        if certificate {
            not_applicable(format!(
                "{what} handing out a certificate account of the run's test CA: the server \
                 under test would have to trust that CA, and no adapter provisions trust \
                 anchors"
            ));
        }
        self.bootstrap_configs.insert(endpoint.to_owned(), config);
        self.store_bootstrap_config(endpoint, what);
    }

    fn start_bootstrap(&mut self, _endpoint: &str) -> Result<(), BootstrapError> {
        not_applicable(format!(
            "the step drives our Bootstrap Server; none runs against a server under test \
             ({SERVER_NOT_OURS})"
        ))
    }

    fn add_client(&mut self, spec: ClientSpec) -> anyhow::Result<()> {
        let name = spec.config.endpoint.clone();
        anyhow::ensure!(
            !self.by_name.contains_key(&name),
            "a client {name:?} already exists in this scenario"
        );
        let bind = if self.server.main.ip().is_loopback() {
            SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        };
        let rt = runtime().map_err(anyhow::Error::msg)?;
        let socket = Arc::new(rt.block_on(UdpSocket::bind(bind))?);
        let local = socket.local_addr()?;
        let index = self.clients.len();
        let (reader, tx) = (socket.clone(), self.tx.clone());
        rt.spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                // Ends with the scenario (its backend closes the channel), closing the socket.
                let received = tokio::select! {
                    r = reader.recv_from(&mut buf) => r,
                    () = tx.closed() => return,
                };
                let Ok((n, from)) = received else { return };
                let bytes = buf.get(..n).unwrap_or_default().to_vec();
                if tx
                    .send(Input::Datagram((index, Instant::now(), from, bytes)))
                    .is_err()
                {
                    return;
                }
            }
        });
        self.clients.push(NetClient {
            name: name.clone(),
            machine: Lwm2mClient::new(spec.config.clone(), spec.tree.clone()),
            socket,
            local,
            factory: Some(spec),
            dtls: Links::default(),
            claims: HashMap::new(),
        });
        self.by_name.insert(name, index);
        Ok(())
    }

    fn client_action(&mut self, endpoint: &str, action: ClientAction) -> anyhow::Result<()> {
        let i = self.index(endpoint)?;
        let now = Instant::now();
        if action == ClientAction::Start {
            self.check_reachable(i);
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
        self.flush();
        Ok(())
    }

    fn client(&self, endpoint: &str) -> Option<&Lwm2mClient> {
        self.by_name
            .get(endpoint)
            .map(|i| &self.clients[*i].machine)
    }

    fn set_network(&mut self, _endpoint: &str, _model: &NetworkModel) -> anyhow::Result<()> {
        not_applicable("network models (NAT, loss, sleep) need the in-process link")
    }

    fn public_address(&self, endpoint: &str) -> Option<SocketAddr> {
        self.by_name.get(endpoint).map(|i| self.clients[*i].local)
    }

    fn secure_address(&self, role: ServerRole) -> Option<SocketAddr> {
        self.secure_of(role)
    }

    fn forget_dtls_sessions(&mut self, role: ServerRole) -> anyhow::Result<()> {
        not_applicable(format!(
            "the step makes the {role} forget its DTLS sessions: {SERVER_NOT_OURS}"
        ))
    }

    /// The LwM2M Server's PSK goes into its security store through the adapter
    /// (`put_psk`); the Bootstrap Server's into the endpoint's bootstrap configuration, as
    /// its Bootstrap-Server account.
    fn add_psk(
        &mut self,
        role: ServerRole,
        endpoint: &str,
        identity: &[u8],
        key: &[u8],
    ) -> anyhow::Result<()> {
        self.require_secure(role);
        match role {
            ServerRole::Lwm2m => {
                let what = "the step stores a PSK in the server under test";
                let adapter = self.adapter_for(Feature::PutCredentials, what).clone();
                match adapter.put_psk(endpoint, identity, key) {
                    Ok(()) => {
                        self.stored_psks.push(endpoint.to_owned());
                        Ok(())
                    }
                    Err(e @ crate::bdd::adapter::AdapterError::Lacks { .. }) => {
                        not_applicable(format!("{what}: {e}"))
                    }
                    Err(e) => Err(anyhow::anyhow!(
                        "the server under test did not store the PSK of {endpoint:?}: {e}"
                    )),
                }
            }
            ServerRole::Bootstrap => {
                let what = "the step stores a Bootstrap-Server PSK in the bootstrap configuration";
                self.bootstrap_driver(what);
                self.bootstrap_psks
                    .insert(endpoint.to_owned(), (identity.to_vec(), key.to_vec()));
                self.store_bootstrap_config(endpoint, what);
                Ok(())
            }
        }
    }

    /// A PSK account at the server's `coaps://` address; certificates are not applicable
    /// (the server under test would have to trust the run's test CA).
    fn secure_client(
        &mut self,
        endpoint: &str,
        role: ServerRole,
        account: SecureAccount,
    ) -> anyhow::Result<()> {
        if let SecureAccount::Certificate { .. } = account {
            not_applicable(
                "the case gives the client a certificate of the run's test CA: the server \
                 under test would have to trust that CA, and no adapter provisions trust \
                 anchors (the PSK cases run)",
            );
        }
        let address = self.require_secure(role);
        let i = self.index(endpoint)?;
        let client = &mut self.clients[i];
        let Some(spec) = client.factory.as_mut() else {
            anyhow::bail!("{endpoint:?} has started: its factory configuration is fixed");
        };
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

    /// The identity our client's established session with the LwM2M Server's `coaps://`
    /// address authenticated as (the handshake completing proves the server accepted it;
    /// adapters do not show the server's side of a session).
    fn secure_identity(&self, endpoint: &str) -> Option<lwm2m_dtls::Identity> {
        let secure = self.server.secure?;
        let i = self.by_name.get(endpoint)?;
        let link = self.clients[*i].dtls.get(secure)?;
        let session = link.session.as_ref().filter(|s| s.is_established())?;
        Some(session.identity().clone())
    }
}

impl Drop for ServerBackend {
    /// De-registers the clients still registered, so that the next scenario's clients of
    /// the same names meet a clean server under test, and stops the clients' socket
    /// readers (their channel closes with the backend).
    fn drop(&mut self) {
        let now = Instant::now();
        for client in &mut self.clients {
            if matches!(
                client.machine.state(),
                ClientState::Registered | ClientState::Sleeping
            ) {
                client.machine.deregister(now);
            }
        }
        self.flush();
        if let Some((_, Some(driver))) = &self.bootstrap {
            let endpoints: BTreeSet<&String> = self
                .bootstrap_configs
                .keys()
                .chain(self.bootstrap_psks.keys())
                .collect();
            for endpoint in endpoints {
                crate::bdd::adapter::remove_bootstrap_config(driver.as_ref(), endpoint);
            }
        }
        if let Some(adapter) = &self.adapter {
            for endpoint in &self.stored_psks {
                let _ = adapter.remove_psk(endpoint);
            }
        }
        self.rx.close();
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::path::Path;

    use super::*;
    use crate::bdd::fleet::{Library, Provisioning};
    use crate::bdd::run::workspace_root;
    use crate::bdd::verdict::NotApplicable;
    use lwm2m_proto::client::ClientEvent;
    use lwm2m_server::ServerOptions;

    fn reason_of(f: impl FnOnce()) -> String {
        let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("not applicable");
        payload
            .downcast::<NotApplicable>()
            .map(|n| n.0)
            .unwrap_or_default()
    }

    #[test]
    fn listener_uris_are_checked() {
        let both = Listeners::of(
            "coap://127.0.0.1:5683",
            Some("coaps://127.0.0.1:5684"),
            "--s",
        )
        .unwrap();
        assert_eq!(both.main, SocketAddr::from(([127, 0, 0, 1], 5683)));
        assert_eq!(both.secure, Some(SocketAddr::from(([127, 0, 0, 1], 5684))));
        assert_eq!(
            Listeners::of("http://127.0.0.1:1", None, "--s"),
            Err(ListenerError::Scheme {
                uri: "http://127.0.0.1:1".into()
            })
        );
        let twice =
            Listeners::of("coaps://127.0.0.1:1", Some("coaps://127.0.0.1:2"), "--s").unwrap_err();
        assert_eq!(
            twice.to_string(),
            "--s goes beside a coap:// URI; \"coaps://127.0.0.1:1\" is coaps:// already"
        );
        assert!(matches!(
            Listeners::of("coap://127.0.0.1:1", Some("coap://127.0.0.1:2"), "--s"),
            Err(ListenerError::CompanionNotSecure { .. })
        ));
    }

    #[test]
    fn a_simulated_client_registers_with_an_external_server_over_loopback() {
        let lib =
            Library::load(&workspace_root(Path::new(env!("CARGO_MANIFEST_DIR"))), &[]).unwrap();
        let rt = runtime().unwrap();
        let server = {
            let _guard = rt.enter();
            let bind = SocketAddr::from(([127, 0, 0, 1], 0));
            lwm2m_server::start_server(ServerOptions::new(bind, lib.registry.clone())).unwrap()
        };
        let subject = Subject::Server {
            uri: format!("coap://{}", server.local_addr()),
            secure: None,
            api: None,
            bootstrap: None,
            bootstrap_secure: None,
            bootstrap_api: None,
        };
        let mut b = ServerBackend::open(&subject, lib.registry.clone()).unwrap();
        assert_eq!(b.server_address(), server.local_addr());
        let profile = lib.profile("ets-1.1").unwrap();
        let spec = lib
            .client(
                profile,
                "c1",
                0,
                1,
                Provisioning::Server(b.server_address()),
                &[],
            )
            .unwrap();
        b.add_client(spec).unwrap();
        b.client_action("c1", ClientAction::Start).unwrap();
        let deadline = b.now() + Duration::from_secs(5);
        let mut registered = false;
        while !registered && b.now() < deadline {
            b.step(deadline);
            while let Some(t) = b.poll_happening() {
                registered |= matches!(
                    t.happening,
                    Happening::Client {
                        event: ClientEvent::Registered { .. },
                        ..
                    }
                );
            }
        }
        assert!(registered, "{}", b.exchange_log().text());
        assert!(server.registrations().get("c1").is_some());
        let text = b.exchange_log().text();
        assert!(text.contains("POST") && text.contains("2.01"), "{text}");
        assert!(b.client("c1").is_some());
        let why = reason_of(|| {
            b.registration("c1");
        });
        assert!(why.contains(SERVER_NOT_OURS), "{why}");
        rt.block_on(server.shutdown());
    }

    #[test]
    fn a_server_uri_must_be_coap_or_coaps_with_an_address() {
        let registry = Arc::new(Registry::embedded());
        let open = |uri: &str, secure: Option<&str>| {
            let subject = Subject::Server {
                uri: uri.into(),
                secure: secure.map(str::to_owned),
                api: None,
                bootstrap: None,
                bootstrap_secure: None,
                bootstrap_api: None,
            };
            ServerBackend::open(&subject, registry.clone())
        };
        assert!(open("coap://127.0.0.1", None).is_err());
        assert!(open("http://127.0.0.1:5683", None).is_err());
        let plain = open("coap://127.0.0.1:5683", None).unwrap();
        assert!(plain.supports(Capability::Dtls).is_err());
        assert_eq!(plain.secure_address(ServerRole::Lwm2m), None);
        // DTLS only: the clients are given the coaps:// address.
        let only = open("coaps://127.0.0.1:5684", None).unwrap();
        assert_eq!(only.server_address().port(), 5684);
        assert_eq!(
            only.secure_address(ServerRole::Lwm2m),
            only.server_address().into()
        );
        assert!(only.supports(Capability::Dtls).is_ok());
        // Both: plain cases on one, DTLS cases on the other.
        let both = open("coap://127.0.0.1:5683", Some("coaps://127.0.0.1:5684")).unwrap();
        assert_eq!(both.server_address().port(), 5683);
        assert_eq!(
            both.secure_address(ServerRole::Lwm2m).map(|a| a.port()),
            Some(5684)
        );
        assert_eq!(both.secure_address(ServerRole::Bootstrap), None);
        assert!(open("coaps://127.0.0.1:5684", Some("coaps://127.0.0.1:5685")).is_err());
        assert!(open("coap://127.0.0.1:5683", Some("coap://127.0.0.1:5685")).is_err());
    }

    #[test]
    fn registers_and_bootstrap_requests_are_claims_a_4_03_answers() {
        use lwm2m_proto::coap::{MessageClass, RequestType, ResponseType, message};
        let mut register = message::request(RequestType::Post, "/rd");
        message::add_query(&mut register, "lt=60");
        message::add_query(&mut register, "ep=dev-1");
        register.set_token(vec![1, 2]);
        let bytes = register.to_bytes().unwrap();
        assert_eq!(claim(&bytes), Some((vec![1, 2], "dev-1".to_owned())));
        let mut bs = message::request(RequestType::Post, "/bs");
        message::add_query(&mut bs, "ep=dev-2");
        assert_eq!(
            claim(&bs.to_bytes().unwrap()).map(|(_, e)| e),
            Some("dev-2".to_owned())
        );
        let update = message::request(RequestType::Post, "/rd/5a");
        assert_eq!(claim(&update.to_bytes().unwrap()), None);
        assert_eq!(claim(b"\xff"), None);
        let mut answer = register.clone();
        answer.header.code = MessageClass::Response(ResponseType::Forbidden);
        assert_eq!(forbidden(&answer.to_bytes().unwrap()), Some(vec![1, 2]));
        answer.header.code = MessageClass::Response(ResponseType::Created);
        assert_eq!(forbidden(&answer.to_bytes().unwrap()), None);
    }
}
