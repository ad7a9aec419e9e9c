//! Fixtures for the device-simulator acceptance tests: our LwM2M Server and Bootstrap
//! Server drivers on loopback with a [`PacketTap`] that keeps every datagram (decoded as
//! CoAP), their events collected from the bus, and a fleet of simulated clients built from
//! an inline profile.
// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwm2m_proto::Lwm2mPath;
use lwm2m_proto::bootstrap::server::BootstrapEvent;
use lwm2m_proto::coap::message::{self, uint_option};
use lwm2m_proto::coap::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{Operation, Response, ServerConfig, ServerEvent};
use lwm2m_server::bootstrap::{BootstrapHandle, BootstrapOptions, start_bootstrap};
use lwm2m_server::driver::{ServerHandle, ServerOptions, start_server};
use lwm2m_server::events::{Direction, Event, EventBus, PacketTap};
use lwm2m_server::store::{BootstrapDoc, FileBootstrapStore};
use lwm2m_simulator::fleet::{
    ClientSpec, CountersSnapshot, Fleet, FleetConfig, FleetHandle, ProfileClients, Targets,
};
use lwm2m_simulator::network::NetworkModel;
use lwm2m_simulator::profile::Profile;
use lwm2m_simulator::quirks::QuirkPacks;

/// The longest any single wait of these tests may take (generous: CI has 2 busy cores; a
/// passing wait ends as soon as its condition holds).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// One datagram on one of our sockets, decoded.
#[derive(Debug, Clone)]
pub struct Frame {
    /// When the driver saw it.
    pub at: Instant,
    /// In (from a client) or out (to a client).
    pub direction: Direction,
    /// The client's address.
    pub peer: SocketAddr,
    /// The UDP payload.
    pub bytes: Vec<u8>,
    /// The CoAP message.
    pub packet: Packet,
}

impl Frame {
    /// The request method, if a request.
    pub fn method(&self) -> Option<RequestType> {
        match self.packet.header.code {
            MessageClass::Request(m) => Some(m),
            _ => None,
        }
    }

    /// True for a request with this method and Uri-Path.
    pub fn is(&self, method: RequestType, path: &str) -> bool {
        self.method() == Some(method) && self.path() == path
    }

    /// The Uri-Path, `/a/b`.
    pub fn path(&self) -> String {
        message::uri_path(&self.packet)
    }

    /// The Uri-Query options.
    pub fn queries(&self) -> Vec<String> {
        self.options(CoapOption::UriQuery)
    }

    /// The value of `key=` in the Uri-Query, if present.
    pub fn query(&self, key: &str) -> Option<String> {
        self.queries()
            .into_iter()
            .find_map(|q| q.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
    }

    /// Every value of an option, as text.
    pub fn options(&self, option: CoapOption) -> Vec<String> {
        self.packet
            .get_option(option)
            .into_iter()
            .flatten()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The response code (class, detail); (0, 0) for an empty message.
    pub fn code(&self) -> (u8, u8) {
        let raw = u8::from(self.packet.header.code);
        (raw >> 5, raw & 0x1f)
    }

    /// True for a response (class 2, 4 or 5).
    pub fn is_response(&self) -> bool {
        matches!(self.packet.header.code, MessageClass::Response(_))
    }

    /// True for an empty ACK (the first half of a separate response, RFC 7252 §5.2.2).
    pub fn is_empty_ack(&self) -> bool {
        self.packet.header.code == MessageClass::Empty
            && self.packet.header.get_type() == MessageType::Acknowledgement
    }

    /// The Content-Format option.
    pub fn content_format(&self) -> Option<u32> {
        uint_option(&self.packet, CoapOption::ContentFormat)
    }

    /// The Accept option.
    pub fn accept(&self) -> Option<u32> {
        uint_option(&self.packet, CoapOption::Accept)
    }

    /// The Observe option.
    pub fn observe(&self) -> Option<u32> {
        message::observe_value(&self.packet)
    }

    /// The token.
    pub fn token(&self) -> Vec<u8> {
        self.packet.get_token().to_vec()
    }
}

/// A [`PacketTap`] keeping every datagram.
#[derive(Debug, Default)]
pub struct Wire(Mutex<Vec<Frame>>);

impl PacketTap for Wire {
    fn datagram(&self, direction: Direction, _local: SocketAddr, peer: SocketAddr, bytes: &[u8]) {
        let Ok(packet) = message::decode(bytes) else {
            return;
        };
        self.0.lock().unwrap().push(Frame {
            at: Instant::now(),
            direction,
            peer,
            bytes: bytes.to_vec(),
            packet,
        });
    }
}

impl Wire {
    /// The datagrams so far that `pick` accepts.
    pub fn find(&self, pick: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|f| pick(f))
            .cloned()
            .collect()
    }

    /// Requests from clients with this method and path.
    pub fn incoming(&self, method: RequestType, path: &str) -> Vec<Frame> {
        self.find(|f| f.direction == Direction::In && f.is(method, path))
    }

    /// Requests to clients with this method and path.
    pub fn outgoing(&self, method: RequestType, path: &str) -> Vec<Frame> {
        self.find(|f| f.direction == Direction::Out && f.is(method, path))
    }

    /// The responses (piggybacked or separate) matching the token of `request`, the other
    /// way.
    pub fn answers(&self, request: &Frame) -> Vec<Frame> {
        let token = request.token();
        self.find(|f| f.direction != request.direction && f.is_response() && f.token() == token)
    }

    /// Waits until `pick` accepts `n` datagrams; returns them.
    pub async fn wait(&self, n: usize, what: &str, pick: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        eventually(what, || {
            let found = self.find(&pick);
            (found.len() >= n).then_some(found)
        })
        .await
    }
}

/// Polls `check` every 10 ms until it gives a value; fails after [`PATIENCE`].
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < end, "not within {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Our servers on loopback, with a tap on each socket and every event kept.
pub struct Stack {
    /// The LwM2M Server.
    pub server: ServerHandle,
    /// The Bootstrap Server, if started.
    pub bootstrap: Option<BootstrapHandle>,
    /// The LwM2M Server's datagrams.
    pub wire: Arc<Wire>,
    /// The Bootstrap Server's datagrams.
    pub bs_wire: Arc<Wire>,
    events: Arc<Mutex<Vec<(Instant, Event)>>>,
}

impl Stack {
    /// The LwM2M Server with `config` (and a Bootstrap Server serving `bootstrap`, whose
    /// text may use `{server}` for the LwM2M Server's `coap://` URI).
    pub async fn start(config: ServerConfig, bootstrap: Option<&str>) -> Stack {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bus = EventBus::new(1 << 16);
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut rx = bus.subscribe();
        let sink = events.clone();
        tokio::spawn(async move {
            while let Ok(e) = rx.recv().await {
                if !matches!(*e, Event::CoapLog(_)) {
                    sink.lock().unwrap().push((Instant::now(), (*e).clone()));
                }
            }
        });
        let wire = Arc::new(Wire::default());
        let mut so = ServerOptions::new(any, Arc::new(Registry::embedded()));
        so.config = config;
        so.bus = bus.clone();
        so.tap = Some(wire.clone());
        let server = start_server(so).unwrap();
        let bs_wire = Arc::new(Wire::default());
        let bootstrap = bootstrap.map(|text| {
            let text = text.replace("{server}", &format!("coap://{}", server.local_addr()));
            let doc = BootstrapDoc::from_yaml("bootstrap.yaml", &text).unwrap();
            let mut bo = BootstrapOptions::new(any, Arc::new(FileBootstrapStore::in_memory(doc)));
            bo.bus = bus.clone();
            bo.tap = Some(bs_wire.clone());
            start_bootstrap(bo).unwrap()
        });
        Stack {
            server,
            bootstrap,
            wire,
            bs_wire,
            events,
        }
    }

    /// The LwM2M Server's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where clients of this stack are pointed: the server, and the Bootstrap Server if any.
    pub fn targets(&self) -> Targets {
        Targets {
            server: Some(self.addr()),
            bootstrap: self.bootstrap.as_ref().map(BootstrapHandle::local_addr),
        }
    }

    /// The LwM2M Server's events so far, with when they were seen.
    pub fn server_events(&self) -> Vec<(Instant, ServerEvent)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(t, e)| match e {
                Event::Server(s) => Some((*t, s.clone())),
                _ => None,
            })
            .collect()
    }

    /// The Bootstrap Server's events so far.
    pub fn bootstrap_events(&self) -> Vec<BootstrapEvent> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Bootstrap(b) => Some(b.clone()),
                _ => None,
            })
            .collect()
    }

    /// Waits until `n` server events satisfy `pick`; returns them.
    pub async fn wait_server(
        &self,
        n: usize,
        what: &str,
        pick: impl Fn(&ServerEvent) -> bool,
    ) -> Vec<(Instant, ServerEvent)> {
        eventually(what, || {
            let found: Vec<_> = self
                .server_events()
                .into_iter()
                .filter(|(_, e)| pick(e))
                .collect();
            (found.len() >= n).then_some(found)
        })
        .await
    }

    /// Waits until `endpoint` is registered (its `n`-th Registered event); returns its
    /// registration id.
    pub async fn registered(&self, endpoint: &str, n: usize) -> String {
        let found = self
            .wait_server(n, &format!("{endpoint} registered {n} time(s)"), |e| {
                matches!(e, ServerEvent::Registered { registration, .. } if registration.endpoint == endpoint)
            })
            .await;
        match &found[n - 1].1 {
            ServerEvent::Registered { registration, .. } => registration.id.clone(),
            _ => unreachable!(),
        }
    }

    /// Runs an operation and returns the client's answer (the test fails on any error).
    pub async fn op(&self, endpoint: &str, operation: Operation) -> Response {
        let name = operation.name();
        tokio::time::timeout(PATIENCE, self.server.request(endpoint, operation))
            .await
            .unwrap_or_else(|_| panic!("{name} on {endpoint}: no outcome within {PATIENCE:?}"))
            .unwrap_or_else(|e| panic!("{name} on {endpoint}: {e}"))
    }
}

/// A server configuration with quick retransmissions (RFC 7252 §4.8 allows other
/// ACK_TIMEOUTs): a lost request fails within about a second.
pub fn quick_server() -> ServerConfig {
    let mut c = ServerConfig::default();
    c.coap.seed = 5;
    c.coap.ack_timeout = Duration::from_millis(200);
    c.coap.max_retransmit = 1;
    c
}

/// A profile from inline YAML (quirk packs named in it come from `scenarios/quirks/`).
pub fn profile(yaml: &str) -> Profile {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/quirks");
    let mut packs = QuirkPacks::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let (name, pack) = lwm2m_simulator::quirks::load_quirk_pack(&path).unwrap();
        packs.insert(name, pack);
    }
    Profile::from_yaml("profile.yaml", yaml, &packs).unwrap_or_else(|e| panic!("{e}"))
}

/// A fleet of `n` clients of `profile` pointed at `targets`; `tweak` adjusts each spec.
pub fn start_fleet(
    profiles: &[(&Profile, usize)],
    targets: Targets,
    network: &NetworkModel,
    tweak: impl Fn(&mut ClientSpec),
) -> FleetHandle {
    let mut fleet = Fleet::new(FleetConfig {
        seed: 21,
        sockets: 2,
        ..FleetConfig::default()
    });
    for (profile, n) in profiles {
        let make = ProfileClients::new(
            (*profile).clone(),
            &Registry::embedded(),
            network.clone(),
            targets,
        )
        .unwrap();
        for k in 0..*n {
            let mut spec = make.spec(k as u64, 21);
            tweak(&mut spec);
            fleet.add(&profile.name, spec);
        }
    }
    fleet.start().unwrap()
}

/// Polls the fleet's counters until `cond` holds.
pub async fn counters_until(
    handle: &FleetHandle,
    what: &str,
    cond: impl Fn(&CountersSnapshot) -> bool,
) -> CountersSnapshot {
    eventually(what, || Some(handle.total()).filter(&cond)).await
}

/// A path from text.
pub fn path(p: &str) -> Lwm2mPath {
    p.parse().unwrap()
}

/// Milliseconds from `a` to `b` (negative if `b` is earlier).
pub fn ms(a: Instant, b: Instant) -> i64 {
    if b >= a {
        (b - a).as_millis() as i64
    } else {
        -((a - b).as_millis() as i64)
    }
}
