//! Fixtures for the server tests: the whole server stack in-process on loopback port 0, a
//! small HTTP client (blocking `ureq` on a blocking thread), an SSE reader, and a scripted
//! CoAP peer on a tokio UDP socket driven by `lwm2m_proto::coap::Endpoint`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwm2m_proto::client::{ClientConfig, ClientEvent, Lwm2mClient, ObjectTree, Quirks};
use lwm2m_proto::coap::message::{self, add_query, set_option, uint_bytes};
use lwm2m_proto::coap::{
    self, CoapOption, Endpoint, Event, IncomingRequest, MessageClass, Packet, RequestId,
    RequestType,
};
use lwm2m_proto::content::ContentFormat;
use lwm2m_proto::registration::Lwm2mVersion;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{Registration, ServerConfig, ServerEvent};
use lwm2m_proto::{Instance, InstanceId, ObjectId, ResourceId, ResourceValue, Value};
use lwm2m_server::bootstrap::{BootstrapHandle, BootstrapOptions, start_bootstrap};
use lwm2m_server::driver::{ServerHandle, ServerOptions, start_server};
use lwm2m_server::events::{self, Direction, EventBus, PacketTap};
use lwm2m_server::http::serve_api;
use lwm2m_server::rest::ApiState;
use lwm2m_server::store::{BootstrapDoc, FileBootstrapStore, FileSecurityStore};
use serde_json::Value as Json;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};

/// The bearer token of the in-process API.
pub const TOKEN: &str = "e2e-token";

/// How long any single wait in these tests may take before the test fails (generous: CI
/// has 2 busy cores; a passing wait ends as soon as its condition holds).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The LwM2M Server, the Bootstrap Server and the REST API, in-process.
pub struct Servers {
    pub server: ServerHandle,
    pub bootstrap: BootstrapHandle,
    /// `http://127.0.0.1:PORT/api`.
    pub api: String,
    /// Every datagram of the LwM2M Server's socket.
    pub wire: Arc<Wire>,
    stop: Option<oneshot::Sender<()>>,
}

/// What [`Servers::start_with`] runs with.
pub struct Setup {
    pub config: ServerConfig,
    pub security: Arc<FileSecurityStore>,
    pub bootstrap: Arc<FileBootstrapStore>,
    /// Whether [`Servers::wire`] keeps the datagrams (off for floods).
    pub record_wire: bool,
    /// The web UI's and CORS options.
    pub web: lwm2m_server::ui::WebOptions,
}

impl Default for Setup {
    /// The default machine settings and empty in-memory stores.
    fn default() -> Setup {
        Setup {
            config: ServerConfig::default(),
            security: Arc::new(FileSecurityStore::in_memory()),
            bootstrap: Arc::new(FileBootstrapStore::in_memory(BootstrapDoc::default())),
            record_wire: true,
            web: Default::default(),
        }
    }
}

/// Server settings whose CoAP timers give up within 2.8 s (ACK_TIMEOUT 400 ms without
/// jitter, two retransmissions), for the tests that wait for a time-out.
pub fn quick_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.coap.ack_timeout = Duration::from_millis(400);
    config.coap.ack_random_factor = 1.0;
    config.coap.max_retransmit = 2;
    config
}

impl Servers {
    pub async fn start() -> Servers {
        Servers::start_with(Setup::default()).await
    }

    pub async fn start_with(setup: Setup) -> Servers {
        let registry = Arc::new(Registry::embedded());
        let bus = EventBus::default();
        let wire = Arc::new(Wire::default());
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut so = ServerOptions::new(any, registry.clone());
        so.bus = bus.clone();
        so.config = setup.config;
        if setup.record_wire {
            so.tap = Some(wire.clone());
        }
        let server = start_server(so).unwrap();
        let store = setup.bootstrap;
        let mut bo = BootstrapOptions::new(any, store.clone());
        bo.bus = bus.clone();
        let bootstrap = start_bootstrap(bo).unwrap();
        let listener = tokio::net::TcpListener::bind(any).await.unwrap();
        let api = format!("http://{}/api", listener.local_addr().unwrap());
        let state = ApiState {
            server: server.clone(),
            security: setup.security,
            bootstrap: store,
            registry,
            bus,
            token: TOKEN.into(),
            web: setup.web,
            cluster: None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve_api(listener, state, async {
            let _ = stopped.await;
        }));
        Servers {
            server,
            bootstrap,
            api,
            wire,
            stop: Some(stop),
        }
    }

    /// The LwM2M Server's events from now on.
    pub fn server_events(&self) -> ServerEvents {
        ServerEvents(self.server.subscribe())
    }

    /// A REST call with the right token.
    pub async fn call(&self, method: &str, route: &str, body: Option<&str>) -> (u16, Json) {
        http(method, &format!("{}{route}", self.api), body, Some(TOKEN)).await
    }

    /// Subscribes to `/api/event` with a query such as `"?coaplog=true"`.
    pub async fn events(&self, query: &str) -> Sse {
        Sse::open(&format!("{}/event{query}", self.api)).await
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The LwM2M Server machine's events, typed.
pub struct ServerEvents(broadcast::Receiver<Arc<events::Event>>);

impl ServerEvents {
    /// The first event `pick` maps to `Some` (others are skipped).
    pub async fn next<T>(&mut self, mut pick: impl FnMut(&ServerEvent) -> Option<T>) -> T {
        let wait = async {
            loop {
                let event = match self.0.recv().await {
                    Ok(event) => event,
                    // A burst overflowed the bus: the oldest events are gone, go on.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => panic!("the bus closed"),
                };
                if let events::Event::Server(e) = &*event
                    && let Some(t) = pick(e)
                {
                    return t;
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .expect("no such server event in time")
    }

    /// The next registration (a Registered event's).
    pub async fn registered(&mut self) -> Registration {
        self.next(|e| match e {
            ServerEvent::Registered { registration, .. } => Some(registration.clone()),
            _ => None,
        })
        .await
    }

    /// Every server event received so far, without waiting.
    pub fn drain(&mut self) -> Vec<ServerEvent> {
        let mut out = Vec::new();
        while let Ok(event) = self.0.try_recv() {
            if let events::Event::Server(e) = &*event {
                out.push(e.clone());
            }
        }
        out
    }
}

/// A packet tap that keeps every datagram of a socket, decoded when it is CoAP.
#[derive(Default)]
pub struct Wire(Mutex<Vec<(Direction, SocketAddr, Vec<u8>)>>);

impl PacketTap for Wire {
    fn datagram(&self, direction: Direction, _: SocketAddr, peer: SocketAddr, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push((direction, peer, bytes.to_vec()));
    }
}

impl Wire {
    /// The CoAP messages exchanged with `peer` so far, in order.
    pub fn with(&self, peer: SocketAddr) -> Vec<(Direction, Packet)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| *p == peer)
            .map(|(d, _, b)| (*d, message::decode(b).expect("CoAP on the wire")))
            .collect()
    }
}

/// The (class, detail) of a CoAP code.
pub fn code(class: MessageClass) -> (u8, u8) {
    let c = u8::from(class);
    (c >> 5, c & 0x1f)
}

/// The values of a repeatable string option, as text.
pub fn strings(packet: &Packet, option: CoapOption) -> Vec<String> {
    packet
        .get_option(option)
        .into_iter()
        .flatten()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// A Register request: POST /rd with these queries and link-format links.
pub fn register_request(queries: &[&str], links: &str) -> Packet {
    let mut register = message::request(RequestType::Post, "/rd");
    for q in queries {
        add_query(&mut register, q);
    }
    set_option(&mut register, CoapOption::ContentFormat, uint_bytes(40));
    register.payload = links.as_bytes().to_vec();
    register
}

/// A blocking HTTP agent that returns error statuses as responses.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// One HTTP request; the status and the JSON body (`null` when empty).
pub async fn http(method: &str, url: &str, body: Option<&str>, token: Option<&str>) -> (u16, Json) {
    let auth = token.map(|t| format!("Bearer {t}"));
    http_authorized(method, url, body, auth.as_deref()).await
}

/// One HTTP request with this `Authorization` header, if any.
pub async fn http_authorized(
    method: &str,
    url: &str,
    body: Option<&str>,
    authorization: Option<&str>,
) -> (u16, Json) {
    let (method, url) = (method.to_owned(), url.to_owned());
    let body = body.map(str::to_owned);
    let auth = authorization.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let agent = agent();
        let mut req = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(&url);
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        let req = req
            .header("Content-Type", "application/json")
            .body(body.unwrap_or_default())
            .unwrap();
        let mut resp = agent.run(req).expect("the API answers");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        let json = if text.is_empty() {
            Json::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
        };
        (status, json)
    })
    .await
    .unwrap()
}

/// A server-sent events stream, read on a blocking thread.
pub struct Sse {
    events: mpsc::UnboundedReceiver<(String, Json)>,
}

impl Sse {
    /// Opens the event stream at `url` with the token.
    pub async fn open(url: &str) -> Sse {
        let (tx, events) = mpsc::unbounded_channel();
        let (ready, is_ready) = oneshot::channel();
        let url = url.to_owned();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let resp = agent()
                .get(&url)
                .header("Authorization", format!("Bearer {TOKEN}"))
                .call()
                .expect("the event stream opens");
            let _ = ready.send(resp.status().as_u16());
            let reader = std::io::BufReader::new(resp.into_body().into_reader());
            let mut name = String::new();
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    let data = serde_json::from_str(d).unwrap_or(Json::Null);
                    if tx.send((std::mem::take(&mut name), data)).is_err() {
                        return;
                    }
                }
            }
        });
        assert_eq!(is_ready.await.unwrap(), 200);
        Sse { events }
    }

    /// The next event called `name` (others are skipped).
    pub async fn next(&mut self, name: &str) -> Json {
        let wait = async {
            loop {
                let (n, data) = self.events.recv().await.expect("the stream stays open");
                if n == name {
                    return data;
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("no {name} event within {PATIENCE:?}"))
    }
}

/// A scripted CoAP peer: a client (or device) played step by step by the test.
pub struct CoapPeer {
    socket: UdpSocket,
    endpoint: Endpoint,
    pub server: SocketAddr,
    events: VecDeque<Event>,
    buf: Vec<u8>,
}

impl CoapPeer {
    pub async fn new(server: SocketAddr) -> CoapPeer {
        CoapPeer::bound("127.0.0.1:0".parse().unwrap(), server).await
    }

    /// A peer on its own socket bound at `bind` (another loopback address: another source).
    pub async fn bound(bind: SocketAddr, server: SocketAddr) -> CoapPeer {
        let socket = UdpSocket::bind(bind).await.unwrap();
        CoapPeer {
            socket,
            endpoint: Endpoint::new(coap::Config::default()),
            server,
            events: VecDeque::new(),
            buf: vec![0; 65_536],
        }
    }

    /// The peer's own address.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// Registers with these queries and links (link-format); the Location-Path
    /// (`/rd/ID`) of the 2.01.
    pub async fn register(&mut self, queries: &[&str], links: &str) -> String {
        let answer = self.request(register_request(queries, links)).await;
        assert_eq!(code(answer.header.code), (2, 1), "{answer:?}");
        let location = strings(&answer, CoapOption::LocationPath);
        assert_eq!(location.len(), 2, "{location:?}");
        assert_eq!(location[0], "rd");
        format!("/{}", location.join("/"))
    }

    /// Whether a datagram is waiting on the socket (a request the test did not expect).
    pub fn has_datagram(&self) -> bool {
        let mut buf = [0u8; 1];
        self.socket.try_peek_from(&mut buf).is_ok()
    }

    /// The datagrams waiting on the socket, decoded, without handling them.
    pub fn take_raw(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Ok((n, _)) = self.socket.try_recv_from(&mut self.buf) {
            out.push(message::decode(&self.buf[..n]).expect("CoAP from the server"));
        }
        out
    }

    async fn flush(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.socket.send_to(&t.bytes, t.peer).await.unwrap();
        }
        while let Some(e) = self.endpoint.poll_event() {
            self.events.push_back(e);
        }
    }

    /// Drives the endpoint until `pick` accepts an event.
    async fn until<T>(
        &mut self,
        mut pick: impl FnMut(&Event) -> bool,
        take: impl Fn(Event) -> T,
    ) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            self.flush().await;
            if let Some(i) = self.events.iter().position(&mut pick) {
                let e = self.events.remove(i).expect("position is in range");
                return take(e);
            }
            let timer = self
                .endpoint
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or(deadline)
                .min(deadline);
            tokio::select! {
                r = self.socket.recv_from(&mut self.buf) => {
                    let (n, peer) = r.unwrap();
                    self.endpoint.handle_datagram(Instant::now(), peer, &self.buf[..n]);
                }
                () = tokio::time::sleep_until(timer) => {
                    assert!(tokio::time::Instant::now() < deadline, "the peer waited {PATIENCE:?} in vain");
                    self.endpoint.handle_timeout(Instant::now());
                }
            }
        }
    }

    /// Sends a request to the server and waits for its response.
    pub async fn request(&mut self, packet: Packet) -> Packet {
        let id: RequestId = self
            .endpoint
            .send_request(Instant::now(), self.server, packet)
            .unwrap();
        self.until(
            |e| matches!(e, Event::Response { id: i, .. } | Event::RequestFailed { id: i, .. } if *i == id),
            |e| match e {
                Event::Response { response, .. } => response,
                other => panic!("request failed: {other:?}"),
            },
        )
        .await
    }

    /// Waits for the next request from the server.
    pub async fn next_request(&mut self) -> IncomingRequest {
        self.until(
            |e| matches!(e, Event::Request { .. }),
            |e| match e {
                Event::Request { request, .. } => request,
                _ => unreachable!(),
            },
        )
        .await
    }

    /// Accepts an observation request with a first notification.
    pub async fn accept_observation(
        &mut self,
        request: IncomingRequest,
        response: Packet,
    ) -> coap::ObservationId {
        let id = self
            .endpoint
            .accept_observation(Instant::now(), request.handle, response)
            .unwrap();
        self.flush().await;
        id
    }

    /// Sends a (non-confirmable) notification.
    pub async fn notify(&mut self, id: coap::ObservationId, response: Packet) {
        self.endpoint
            .notify(Instant::now(), id, response, false)
            .unwrap();
        self.flush().await;
    }

    /// Answers a request.
    pub async fn respond(&mut self, request: IncomingRequest, response: Packet) {
        self.endpoint
            .respond(Instant::now(), request.handle, response)
            .unwrap();
        self.flush().await;
    }
}

/// A complete simulated client ([`Lwm2mClient`]) on its own loopback socket, driven by a
/// task; the test steers it with commands and watches its events.
pub struct SimClient {
    pub endpoint: String,
    /// How long [`SimClient::next`] waits.
    pub patience: Duration,
    /// Each message asks the client for an Update now.
    updates: mpsc::UnboundedSender<()>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
}

/// Objects 1, 3 and 3303 with one instance each, typed by the embedded registry.
pub fn device_tree(registry: &Registry) -> ObjectTree {
    let def = |o: u16| Arc::new(registry.object(ObjectId(o)).unwrap().clone());
    let s = |v: &str| ResourceValue::Single(Value::String(v.into()));
    let i = |v: i64| ResourceValue::Single(Value::Integer(v));
    let mut tree = ObjectTree::new();
    for o in [1, 3, 3303] {
        tree.add_object(def(o), None);
    }
    let instance = |items: Vec<(u16, ResourceValue)>| -> Instance {
        items.into_iter().map(|(r, v)| (ResourceId(r), v)).collect()
    };
    tree.put_instance(
        ObjectId(1),
        InstanceId(0),
        instance(vec![(0, i(1)), (1, i(300)), (7, s("U"))]),
    );
    tree.put_instance(
        ObjectId(3),
        InstanceId(0),
        instance(vec![
            (0, s("ACME")),
            (1, s("Model 1")),
            (9, i(90)),
            (14, s("+01")),
        ]),
    );
    tree.put_instance(
        ObjectId(3303),
        InstanceId(0),
        instance(vec![
            (5700, ResourceValue::Single(Value::Float(20.0))),
            (5701, s("Cel")),
        ]),
    );
    tree
}

/// A LwM2M 1.1 client of `server` announcing text, TLV and SenML; `seed` varies its tokens.
pub fn client_config(endpoint: &str, server: SocketAddr, seed: u64) -> ClientConfig {
    ClientConfig {
        endpoint: endpoint.into(),
        version: Lwm2mVersion::V1_1,
        binding: "U".into(),
        queue_mode: false,
        lifetime: 300,
        server: Some(server),
        bootstrap_server: None,
        preferred_format: ContentFormat::Tlv,
        supported_formats: vec![
            ContentFormat::Text,
            ContentFormat::Opaque,
            ContentFormat::Tlv,
            ContentFormat::SenmlJson,
            ContentFormat::SenmlCbor,
        ],
        response_delay: Duration::ZERO,
        update_margin: Duration::from_secs(10),
        reboot_silence: Duration::from_secs(30),
        quirks: Quirks::default(),
        coap: coap::Config {
            seed,
            ..coap::Config::default()
        },
        version_fallback: false,
    }
}

impl SimClient {
    /// Binds a socket at `bind` and starts the client (it registers at once).
    pub async fn start(bind: SocketAddr, config: ClientConfig, tree: ObjectTree) -> SimClient {
        let socket = UdpSocket::bind(bind).await.unwrap();
        let endpoint = config.endpoint.clone();
        let (updates, rx) = mpsc::unbounded_channel();
        let (tx, events) = mpsc::unbounded_channel();
        let mut client = Lwm2mClient::new(config, tree);
        client.start(Instant::now());
        tokio::spawn(drive(client, socket, rx, tx));
        SimClient {
            endpoint,
            patience: PATIENCE,
            updates,
            events,
        }
    }

    /// Makes the client send an Update now.
    pub fn update(&self) {
        self.updates.send(()).expect("the client runs");
    }

    /// The first event `pick` maps to `Some` (others are skipped).
    pub async fn next<T>(&mut self, mut pick: impl FnMut(&ClientEvent) -> Option<T>) -> T {
        let wait = async {
            loop {
                let e = self.events.recv().await.expect("the client runs");
                if let Some(t) = pick(&e) {
                    return t;
                }
            }
        };
        let patience = self.patience;
        tokio::time::timeout(patience, wait)
            .await
            .unwrap_or_else(|_| panic!("{}: no such client event in {patience:?}", self.endpoint))
    }

    /// Waits until the client is registered; its Location-Path.
    pub async fn registered(&mut self) -> String {
        self.next(|e| match e {
            ClientEvent::Registered { location } => Some(location.clone()),
            ClientEvent::Failed { step, reason } => panic!("{step}: {reason}"),
            _ => None,
        })
        .await
    }
}

/// The task of a [`SimClient`]: socket, timer and Update orders into the machine,
/// datagrams and events out, until the test drops the client.
async fn drive(
    mut client: Lwm2mClient,
    socket: UdpSocket,
    mut updates: mpsc::UnboundedReceiver<()>,
    events: mpsc::UnboundedSender<ClientEvent>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        while let Some(t) = client.poll_transmit() {
            let _ = socket.send_to(&t.bytes, t.peer).await;
        }
        while let Some(e) = client.poll_event() {
            let _ = events.send(e);
        }
        let timer = client
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, peer)) = r {
                    client.handle_datagram(Instant::now(), peer, &buf[..n]);
                }
            }
            () = tokio::time::sleep_until(timer) => client.handle_timeout(Instant::now()),
            u = updates.recv() => match u {
                Some(()) => client.trigger_update(Instant::now()),
                None => return,
            },
        }
    }
}
