//! The fleet over real loopback: simulated clients register with a server on 127.0.0.1,
//! and what the server sees on the wire is checked: one distinct source address per
//! client, correct Register queries, NAT rebinding, sleeping clients, counters that add up.
//!
//! The server is a scripted registrar on the CoAP exchange layer (Core TS 1.1 §6.2: 2.01
//! Created with a Location-Path for Register, 2.04 for Update, 2.02 for De-register); it
//! records every request and can send requests to clients.
// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwm2m_proto::Lwm2mPath;
use lwm2m_proto::coap::{Endpoint, Event, Packet, RequestType, ResponseType, message};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{Lwm2mServer, Operation, ServerConfig, ServerEvent};
use lwm2m_proto::value::Value;
use lwm2m_simulator::fleet::{
    CountersSnapshot, Fleet, FleetConfig, FleetHandle, ProfileClients, Selector, Targets,
};
use lwm2m_simulator::network::NetworkModel;
use lwm2m_simulator::profile::Profile;
use lwm2m_simulator::quirks::QuirkPacks;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::fleet_support::PATIENCE;

/// One request the registrar received.
#[derive(Debug, Clone)]
struct Seen {
    peer: SocketAddr,
    method: RequestType,
    path: String,
    query: Vec<String>,
}

impl Seen {
    fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find_map(|q| q.strip_prefix(key)?.strip_prefix('='))
    }
}

#[derive(Debug, Default)]
struct Log {
    requests: Vec<Seen>,
    /// Responses to the registrar's own requests: (peer, code).
    responses: Vec<(SocketAddr, String)>,
    /// Failures of the registrar's own requests.
    failures: usize,
    bytes_in: u64,
    datagrams_in: u64,
}

/// A scripted registrar on 127.0.0.1.
struct Registrar {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    /// Counts requests received: tests wait on it.
    seen: watch::Receiver<usize>,
    requests: mpsc::UnboundedSender<(SocketAddr, Packet)>,
}

/// How the registrar answers Register.
#[derive(Debug, Clone, Copy, Default)]
struct Policy {
    /// The newest `lwm2m=` version it speaks: newer ones get 4.12 (Core TS 1.1 §6.2.1).
    max_version: Option<&'static str>,
    /// Refuse every Register with this code.
    refuse: Option<ResponseType>,
}

impl Registrar {
    async fn start() -> Self {
        Self::start_with(Policy::default()).await
    }

    async fn start_with(policy: Policy) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let (count, seen) = watch::channel(0usize);
        let (requests, mut outgoing) = mpsc::unbounded_channel::<(SocketAddr, Packet)>();
        let task_log = log.clone();
        tokio::spawn(async move {
            let mut endpoint = Endpoint::new(lwm2m_proto::coap::Config {
                seed: 99,
                ack_timeout: Duration::from_millis(300),
                max_retransmit: 1,
                ..Default::default()
            });
            let mut next_id = 0u64;
            let mut buf = vec![0u8; 2048];
            loop {
                let deadline = endpoint.poll_timeout();
                tokio::select! {
                    r = socket.recv_from(&mut buf) => {
                        let Ok((n, peer)) = r else { continue };
                        {
                            let mut l = task_log.lock().unwrap();
                            l.bytes_in += n as u64;
                            l.datagrams_in += 1;
                        }
                        endpoint.handle_datagram(Instant::now(), peer, &buf[..n]);
                    }
                    Some((peer, packet)) = outgoing.recv() => {
                        let _ = endpoint.send_request(Instant::now(), peer, packet);
                    }
                    () = sleep_until(deadline) => endpoint.handle_timeout(Instant::now()),
                }
                let now = Instant::now();
                while let Some(event) = endpoint.poll_event() {
                    let mut l = task_log.lock().unwrap();
                    match event {
                        Event::Request { peer, request } => {
                            let method = request.method().unwrap();
                            let path = request.path();
                            let query: Vec<String> = request
                                .packet
                                .get_option(lwm2m_proto::coap::CoapOption::UriQuery)
                                .map(|q| {
                                    q.iter()
                                        .map(|v| String::from_utf8_lossy(v).into_owned())
                                        .collect()
                                })
                                .unwrap_or_default();
                            let version = query
                                .iter()
                                .find_map(|q| q.strip_prefix("lwm2m="))
                                .unwrap_or("1.0")
                                .to_owned();
                            let too_new =
                                policy.max_version.is_some_and(|max| version.as_str() > max);
                            let response = match (method, path.as_str()) {
                                (RequestType::Post, "/rd") if too_new => message::response(
                                    ResponseType::PreconditionFailed,
                                    b"unsupported LwM2M version".to_vec(),
                                ),
                                (RequestType::Post, "/rd") if policy.refuse.is_some() => {
                                    message::response(
                                        policy.refuse.unwrap_or(ResponseType::Forbidden),
                                        vec![],
                                    )
                                }
                                (RequestType::Post, "/rd") => {
                                    next_id += 1;
                                    let mut r = message::response(ResponseType::Created, vec![]);
                                    r.add_option(
                                        lwm2m_proto::coap::CoapOption::LocationPath,
                                        b"rd".to_vec(),
                                    );
                                    r.add_option(
                                        lwm2m_proto::coap::CoapOption::LocationPath,
                                        format!("r{next_id}").into_bytes(),
                                    );
                                    r
                                }
                                (RequestType::Post, _) => {
                                    message::response(ResponseType::Changed, vec![])
                                }
                                (RequestType::Delete, _) => {
                                    message::response(ResponseType::Deleted, vec![])
                                }
                                _ => message::response(ResponseType::MethodNotAllowed, vec![]),
                            };
                            let _ = endpoint.respond(now, request.handle, response);
                            l.requests.push(Seen {
                                peer,
                                method,
                                path,
                                query,
                            });
                            count.send_replace(l.requests.len());
                        }
                        Event::Response { response, .. } => {
                            l.responses.push((
                                SocketAddr::from(([0, 0, 0, 0], 0)),
                                response.header.code.to_string(),
                            ));
                        }
                        Event::RequestFailed { .. } => l.failures += 1,
                        _ => {}
                    }
                }
                while let Some(t) = endpoint.poll_transmit() {
                    let _ = socket.send_to(&t.bytes, t.peer).await;
                }
            }
        });
        Self {
            addr,
            log,
            seen,
            requests,
        }
    }

    /// Waits until `n` requests have been received (or fails after `limit`).
    async fn wait_requests(&mut self, n: usize, limit: Duration) {
        let waited = tokio::time::timeout(limit, self.seen.wait_for(|&c| c >= n))
            .await
            .is_ok();
        let got = *self.seen.borrow();
        assert!(waited, "{got} requests of {n} after {limit:?}");
    }

    fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Sends a GET for `path` to `peer`.
    fn get(&self, peer: SocketAddr, path: &str) {
        self.requests
            .send((peer, message::request(RequestType::Get, path)))
            .unwrap();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A 1.1 client with Security, Server and Device objects and a `lifetime` in seconds.
fn profile(lifetime: u32) -> Profile {
    profile_of(lifetime, "lwm2m_version: \"1.1\"")
}

/// The [`profile`] with `head` (its version and version keys).
fn profile_of(lifetime: u32, head: &str) -> Profile {
    let yaml = format!(
        "\
name: e2e
{head}
binding: U
lifetime: {lifetime}s
endpoint_prefix: e2e-
preferred_format: senml-cbor
supported_formats: [senml-cbor, tlv, text, opaque]
objects:
  0:
    instances:
      0: {{ 0: coap://localhost:5683, 1: false, 2: 3, 3: \"\", 4: \"\", 5: \"\", 10: 1 }}
  1:
    instances:
      0: {{ 0: 1, 1: {lifetime}, 6: false, 7: U }}
  3:
    instances:
      0: {{ 0: Fleet, 11: [0], 16: U }}
"
    );
    Profile::from_yaml("e2e.yaml", &yaml, &QuirkPacks::new()).unwrap()
}

fn fleet(server: SocketAddr, clients: usize, lifetime: u32, network: NetworkModel) -> Fleet {
    fleet_of(profile(lifetime), server, clients, network)
}

fn fleet_of(profile: Profile, server: SocketAddr, clients: usize, network: NetworkModel) -> Fleet {
    let profiles = ProfileClients::new(
        profile,
        &Registry::embedded(),
        network,
        Targets {
            server: Some(server),
            bootstrap: None,
        },
    )
    .unwrap();
    let mut fleet = Fleet::new(FleetConfig {
        seed: 7,
        sockets: 4,
        ramp: Some(2000.0),
        ..FleetConfig::default()
    });
    for n in 0..clients {
        fleet.add("e2e", profiles.spec(n as u64, 7));
    }
    fleet
}

/// Polls the fleet's counters until `cond` holds (or fails after `limit`).
async fn counters_until(
    handle: &FleetHandle,
    limit: Duration,
    cond: impl Fn(&CountersSnapshot) -> bool,
) -> CountersSnapshot {
    let end = Instant::now() + limit;
    loop {
        let c = handle.total();
        if cond(&c) {
            return c;
        }
        assert!(Instant::now() < end, "condition not reached: {c:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_of_200_registers_from_distinct_addresses() {
    let mut server = Registrar::start().await;
    let handle = fleet(server.addr, 200, 300, NetworkModel::default())
        .start()
        .unwrap();
    server.wait_requests(200, Duration::from_secs(20)).await;
    let c = counters_until(&handle, Duration::from_secs(10), |c| c.registered == 200).await;
    assert_eq!(c.clients, 200);
    assert_eq!(c.started, 200);
    assert_eq!(c.clients_registered, 200);
    assert_eq!(c.registrations, 200);
    assert_eq!(c.failed, 0);

    let registers: Vec<Seen> = server
        .requests()
        .into_iter()
        .filter(|s| s.path == "/rd")
        .collect();
    assert_eq!(registers.len(), 200);
    let peers: BTreeSet<SocketAddr> = registers.iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 200, "one source address per client");
    assert!(peers.iter().all(|p| p.ip().is_loopback()));
    let endpoints: BTreeSet<&str> = registers.iter().filter_map(|s| s.query("ep")).collect();
    let expected: BTreeSet<String> = (0..200).map(|n| format!("e2e-{n}")).collect();
    assert_eq!(
        endpoints,
        expected.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    for r in &registers {
        // Core TS 1.1 §6.2.1: lt, lwm2m and b as configured.
        assert_eq!(r.query("lt"), Some("300"), "{r:?}");
        assert_eq!(r.query("lwm2m"), Some("1.1"), "{r:?}");
        assert_eq!(r.method, RequestType::Post);
    }
    // The addresses the fleet reports are those the server saw.
    let infos = handle.clients().await.unwrap();
    let reported: BTreeSet<SocketAddr> = infos.iter().filter_map(|i| i.address).collect();
    assert_eq!(reported, peers);

    let report = handle.stop(Duration::from_secs(10)).await.unwrap();
    let t = report.total();
    assert_eq!(t.deregistrations, 200);
    assert_eq!(t.registered, 0);
    let deletes = server
        .requests()
        .iter()
        .filter(|s| s.method == RequestType::Delete)
        .count();
    assert_eq!(deletes, 200);
    // Counters add up: what the clients sent is what the server received.
    let log = server.log.lock().unwrap();
    assert_eq!(t.datagrams_out, log.datagrams_in);
    assert_eq!(t.bytes_out, log.bytes_in);
    assert_eq!(report.latencies().register.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_timeout_shorter_than_update_period_moves_the_client() {
    let mut server = Registrar::start().await;
    // Lifetime 3 s: Updates every 2 s; the NAT forgets after 1 s of silence.
    let network = NetworkModel::from_yaml("nat.yaml", "nat: { idle_timeout: 1s }\n").unwrap();
    let handle = fleet(server.addr, 5, 3, network).start().unwrap();
    server.wait_requests(10, Duration::from_secs(15)).await;
    let requests = server.requests();
    let mut first_from: BTreeMap<String, SocketAddr> = BTreeMap::new();
    let mut location_of: BTreeMap<String, String> = BTreeMap::new();
    let mut next = 0;
    for r in requests.iter().filter(|s| s.path == "/rd") {
        next += 1;
        let ep = r.query("ep").unwrap().to_owned();
        first_from.insert(ep.clone(), r.peer);
        location_of.insert(format!("/rd/r{next}"), ep);
    }
    let updates: Vec<&Seen> = requests
        .iter()
        .filter(|s| s.path.starts_with("/rd/r"))
        .collect();
    assert!(!updates.is_empty());
    for u in &updates {
        let ep = &location_of[&u.path];
        assert_ne!(
            u.peer, first_from[ep],
            "{ep}'s Update comes from a new address"
        );
    }
    let c = handle.total();
    assert!(c.rebinds >= updates.len() as u64, "{c:?}");
    // Datagrams to the old mapping are dropped.
    let old = *first_from.values().next().unwrap();
    server.get(old, "/3/0");
    counters_until(&handle, Duration::from_secs(5), |c| c.dropped_nat >= 1).await;
    handle.stop(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_nat_through_the_handle() {
    let mut server = Registrar::start().await;
    let handle = fleet(server.addr, 3, 300, NetworkModel::default())
        .start()
        .unwrap();
    server.wait_requests(3, Duration::from_secs(10)).await;
    // The server's count can come before the clients have their 2.01.
    counters_until(&handle, Duration::from_secs(5), |c| c.registered == 3).await;
    let before: BTreeSet<SocketAddr> = server.requests().iter().map(|s| s.peer).collect();
    handle.expire_nat(Selector::All).unwrap();
    handle.trigger_update(Selector::All).unwrap();
    server.wait_requests(6, Duration::from_secs(10)).await;
    let after: BTreeSet<SocketAddr> = server.requests()[3..].iter().map(|s| s.peer).collect();
    assert_eq!(after.len(), 3);
    assert!(before.is_disjoint(&after), "{before:?} {after:?}");
    assert_eq!(handle.total().rebinds, 3);
    handle.stop(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_to_sleeping_clients_are_dropped() {
    let mut server = Registrar::start().await;
    let handle = fleet(server.addr, 4, 300, NetworkModel::default())
        .start()
        .unwrap();
    server.wait_requests(4, Duration::from_secs(10)).await;
    counters_until(&handle, Duration::from_secs(5), |c| c.registered == 4).await;
    let peers: Vec<SocketAddr> = server.requests().iter().map(|s| s.peer).collect();
    // Half the fleet sleeps for a minute; the server reads /3/0 on every client.
    handle
        .sleep(Selector::Range(0..2), Duration::from_secs(60))
        .unwrap();
    let infos = handle.clients().await.unwrap();
    assert_eq!(
        infos.iter().map(|i| i.asleep).collect::<Vec<_>>(),
        [true, true, false, false]
    );
    for p in &peers {
        server.get(*p, "/3/0");
    }
    let c = counters_until(&handle, Duration::from_secs(5), |c| {
        c.dropped_asleep >= 2 && c.requests_served >= 2
    })
    .await;
    // The registrar retransmits its confirmable GET: at least one drop per sleeper.
    assert!(c.dropped_asleep >= 2, "{c:?}");
    assert_eq!(c.requests_served, 2, "{c:?}");
    handle.stop(Duration::from_secs(5)).await.unwrap();
}

/// Our LwM2M Server machine on 127.0.0.1, driven by a minimal tokio loop; every event is
/// kept, and operations can be started on clients.
struct Server {
    addr: SocketAddr,
    events: watch::Receiver<Vec<ServerEvent>>,
    ops: mpsc::UnboundedSender<(String, Operation)>,
}

impl Server {
    async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    async fn start_on(bind: SocketAddr) -> Self {
        let socket = UdpSocket::bind(bind).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (log, events) = watch::channel(Vec::new());
        let (ops, mut incoming) = mpsc::unbounded_channel::<(String, Operation)>();
        let mut server = Lwm2mServer::new(ServerConfig::default(), Arc::new(Registry::embedded()));
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let deadline = server.poll_timeout();
                tokio::select! {
                    r = socket.recv_from(&mut buf) => {
                        let Ok((n, peer)) = r else { continue };
                        server.handle_datagram(Instant::now(), peer, &buf[..n]);
                    }
                    Some((endpoint, op)) = incoming.recv() => {
                        let _ = server.request(Instant::now(), &endpoint, op);
                    }
                    () = sleep_until(deadline) => server.handle_timeout(Instant::now()),
                }
                while let Some(t) = server.poll_transmit() {
                    let _ = socket.send_to(&t.bytes, t.peer).await;
                }
                let mut new = Vec::new();
                while let Some(e) = server.poll_event() {
                    new.push(e);
                }
                if !new.is_empty() {
                    log.send_modify(|l| l.extend(new));
                }
            }
        });
        Self { addr, events, ops }
    }

    /// Waits until `count(events) >= n` (or fails after `limit`).
    async fn wait(&mut self, n: usize, limit: Duration, count: impl Fn(&[ServerEvent]) -> usize) {
        let waited = tokio::time::timeout(limit, self.events.wait_for(|e| count(e) >= n))
            .await
            .is_ok();
        let got = count(&self.events.borrow());
        assert!(waited, "{got} of {n} events after {limit:?}");
    }

    fn registrations(&self) -> BTreeMap<String, SocketAddr> {
        self.events
            .borrow()
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Registered { registration, .. } => {
                    Some((registration.endpoint.clone(), registration.address))
                }
                _ => None,
            })
            .collect()
    }
}

fn registered(events: &[ServerEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Registered { .. }))
        .count()
}

fn moved(events: &[ServerEvent]) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ServerEvent::Updated {
                    previous_address: Some(_),
                    ..
                }
            )
        })
        .count()
}

fn notifications(events: &[ServerEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Notification { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_registers_with_the_server_machine_and_moves_behind_nat() {
    let mut server = Server::start().await;
    let handle = fleet(server.addr, 200, 300, NetworkModel::default())
        .start()
        .unwrap();
    server.wait(200, Duration::from_secs(20), registered).await;
    counters_until(&handle, Duration::from_secs(5), |c| c.registered == 200).await;
    let seen = server.registrations();
    assert_eq!(seen.len(), 200);
    let infos = handle.clients().await.unwrap();
    for info in &infos {
        assert_eq!(Some(seen[&info.endpoint]), info.address, "{info:?}");
    }
    // Ten clients lose their NAT mapping and update: the server follows them.
    handle.expire_nat(Selector::Range(0..10)).unwrap();
    handle.trigger_update(Selector::Range(0..10)).unwrap();
    server.wait(10, Duration::from_secs(10), moved).await;
    let after = handle.clients().await.unwrap();
    for (old, new) in infos.iter().zip(&after).take(10) {
        assert_ne!(old.address, new.address);
    }
    assert_eq!(handle.total().rebinds, 10);
    let report = handle.stop(Duration::from_secs(10)).await.unwrap();
    assert_eq!(report.total().deregistrations, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_and_injected_values_are_notified() {
    let mut server = Server::start().await;
    let yaml = "\
name: temp
lwm2m_version: \"1.1\"
lifetime: 300s
endpoint_prefix: temp-
preferred_format: senml-cbor
supported_formats: [senml-cbor, senml-json, tlv, text]
objects:
  0:
    instances:
      0: { 0: coap://localhost:5683, 1: false, 2: 3, 3: \"\", 4: \"\", 5: \"\", 10: 1 }
  1:
    instances:
      0: { 0: 1, 1: 300, 6: false, 7: U }
  3303:
    instances:
      0:
        5700: { generator: counter, start: 1, step: 1, period: 100ms }
      1:
        5700: 20.0
";
    let profile = Profile::from_yaml("temp.yaml", yaml, &QuirkPacks::new()).unwrap();
    let make = ProfileClients::new(
        profile,
        &Registry::embedded(),
        NetworkModel::default(),
        Targets {
            server: Some(server.addr),
            bootstrap: None,
        },
    )
    .unwrap();
    let mut fleet = Fleet::new(FleetConfig::default());
    for n in 0..5 {
        fleet.add("temp", make.spec(n, 3));
    }
    let handle = fleet.start().unwrap();
    server.wait(5, Duration::from_secs(10), registered).await;
    for n in 0..5 {
        for i in [0, 1] {
            server
                .ops
                .send((
                    format!("temp-{n}"),
                    Operation::Observe {
                        path: Lwm2mPath::Resource(3303.into(), i.into(), 5700.into()),
                        format: None,
                    },
                ))
                .unwrap();
        }
    }
    // The generator changes /3303/0/5700 every 100 ms.
    server
        .wait(25, Duration::from_secs(10), notifications)
        .await;
    // A value injected through the handle is notified too.
    let injected = Lwm2mPath::Resource(3303.into(), 1.into(), 5700.into());
    handle
        .set_value(Selector::All, injected, Value::Float(-3.5))
        .unwrap();
    server
        .wait(5, Duration::from_secs(10), |events| {
            events
                .iter()
                .filter(
                    |e| matches!(e, ServerEvent::Notification { path, .. } if *path == injected),
                )
                .count()
        })
        .await;
    let c = handle.total();
    assert!(c.notifications_sent >= 30, "{c:?}");
    assert!(c.requests_served >= 10, "{c:?}");
    handle.stop(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_schedule_drops_and_wakes() {
    let mut server = Server::start().await;
    // Awake for the first 500 ms of every 3 s; each window start brings an Update.
    let network =
        NetworkModel::from_yaml("sleepy.yaml", "sleep: { awake: 500ms, period: 3s }\n").unwrap();
    let handle = fleet(server.addr, 3, 300, network).start().unwrap();
    server.wait(3, Duration::from_secs(10), registered).await;
    // Let the first awake window pass (time passing in the model, not a wait for a
    // condition): the radios are off until 3 s.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let infos = handle.clients().await.unwrap();
    assert!(infos.iter().all(|i| i.asleep), "{infos:?}");
    for n in 0..3 {
        server
            .ops
            .send((
                format!("e2e-{n}"),
                Operation::Read {
                    path: Lwm2mPath::Instance(3.into(), 0.into()),
                    format: None,
                },
            ))
            .unwrap();
    }
    let c = counters_until(&handle, Duration::from_secs(2), |c| c.dropped_asleep >= 3).await;
    assert_eq!(c.requests_served, 0, "{c:?}");
    // The next window opens: every client wakes and sends an Update.
    let updated = |events: &[ServerEvent]| {
        events
            .iter()
            .filter(|e| matches!(e, ServerEvent::Updated { .. }))
            .count()
    };
    server.wait(3, Duration::from_secs(10), updated).await;
    counters_until(&handle, Duration::from_secs(5), |c| c.updates >= 3).await;
    handle.stop(Duration::from_secs(10)).await.unwrap();
}

/// This machine's address on its default route, if it has one (not loopback).
fn routed_address() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // Connecting a UDP socket sends nothing; it only picks the route.
    probe.connect("192.0.2.255:9").ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_off_loopback_gets_a_socket_per_client() {
    let Some(ip) = routed_address() else {
        eprintln!("no routed address on this machine: skipped");
        return;
    };
    let mut server = Server::start_on(SocketAddr::new(ip, 0)).await;
    let handle = fleet(server.addr, 20, 300, NetworkModel::default())
        .start()
        .unwrap();
    server.wait(20, Duration::from_secs(10), registered).await;
    counters_until(&handle, Duration::from_secs(5), |c| c.registered == 20).await;
    let seen = server.registrations();
    let addresses: BTreeSet<SocketAddr> = seen.values().copied().collect();
    assert_eq!(addresses.len(), 20);
    assert!(addresses.iter().all(|a| a.ip() == ip), "{addresses:?}");
    handle.expire_nat(Selector::Range(0..5)).unwrap();
    handle.trigger_update(Selector::Range(0..5)).unwrap();
    server.wait(5, Duration::from_secs(10), moved).await;
    let report = handle.stop(Duration::from_secs(10)).await.unwrap();
    assert_eq!(report.total().deregistrations, 20);
    assert_eq!(report.total().rebinds, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impaired_links_still_register() {
    let mut server = Server::start().await;
    let network = NetworkModel::from_yaml(
        "bad.yaml",
        "uplink: { loss: 0.2, duplicate: 0.2 }\n\
         downlink: { loss: 0.2, delay: 50ms, jitter: 10ms }\n",
    )
    .unwrap();
    let make = ProfileClients::new(
        profile(300),
        &Registry::embedded(),
        network,
        Targets {
            server: Some(server.addr),
            bootstrap: None,
        },
    )
    .unwrap();
    let mut fleet = Fleet::new(FleetConfig {
        seed: 11,
        ..FleetConfig::default()
    });
    for n in 0..10 {
        let mut spec = make.spec(n, 11);
        // Quick retransmissions (RFC 7252 §4.8 allows other ACK_TIMEOUTs) keep the test short.
        spec.config.coap.ack_timeout = Duration::from_millis(200);
        fleet.add("bad", spec);
    }
    let handle = fleet.start().unwrap();
    server.wait(10, Duration::from_secs(20), registered).await;
    let c = counters_until(&handle, Duration::from_secs(10), |c| c.registered == 10).await;
    assert!(c.dropped_loss > 0, "{c:?}");
    // Every answer came over the 40-60 ms downlink.
    let l = handle.report().latencies();
    assert!(l.register.min() >= 40_000, "{} µs", l.register.min());
    handle.stop(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_1_2_fall_back_to_1_1_after_4_12() {
    // A server that speaks LwM2M up to 1.1 answers a 1.2 Register with 4.12; real 1.2
    // stacks register again as 1.1 (the profile's version_fallback, on by default).
    let mut server = Registrar::start_with(Policy {
        max_version: Some("1.1"),
        refuse: None,
    })
    .await;
    let profile = profile_of(60, "lwm2m_version: \"1.2\"");
    assert!(profile.version_fallback);
    let handle = fleet_of(profile, server.addr, 20, NetworkModel::default())
        .start()
        .unwrap();
    server.wait_requests(40, PATIENCE).await;
    let c = counters_until(&handle, PATIENCE, |c| c.registered == 20).await;
    assert_eq!((c.version_fallbacks, c.failures, c.failed), (20, 0, 0));
    let versions: BTreeMap<String, Vec<String>> = server
        .requests()
        .into_iter()
        .filter(|s| s.path == "/rd")
        .fold(BTreeMap::new(), |mut m, s| {
            m.entry(s.query("ep").unwrap().to_owned())
                .or_default()
                .push(s.query("lwm2m").unwrap().to_owned());
            m
        });
    assert_eq!(versions.len(), 20);
    assert!(
        versions.values().all(|v| v == &["1.2", "1.1"]),
        "{versions:?}"
    );
    let report = handle.stop(Duration::from_secs(10)).await.unwrap();
    assert_eq!(report.total().version_fallbacks, 20);
    assert!(report.failures().is_empty());

    // Without the fallback every client fails, and the report says why, with an example.
    let mut server = Registrar::start_with(Policy {
        max_version: Some("1.1"),
        refuse: None,
    })
    .await;
    let profile = profile_of(60, "lwm2m_version: \"1.2\"\nversion_fallback: false");
    let handle = fleet_of(profile, server.addr, 20, NetworkModel::default())
        .start()
        .unwrap();
    server.wait_requests(20, PATIENCE).await;
    let c = counters_until(&handle, PATIENCE, |c| c.failed == 20).await;
    assert_eq!((c.version_fallbacks, c.registered), (0, 0));
    let failures = handle.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].cause, "register 4.12");
    assert_eq!(failures[0].count, 20);
    let example = &failures[0].example;
    assert!(
        example.contains("POST /rd?ep=e2e-") && example.contains("lwm2m=1.2"),
        "{example}"
    );
    assert!(example.contains("answered 4.12"), "{example}");
    handle.stop(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_grouped_by_cause() {
    // Half the clients meet a registrar that refuses with 4.03, the other half a port
    // where nobody answers: two causes, each with its count and one example exchange.
    let server = Registrar::start_with(Policy {
        max_version: None,
        refuse: Some(ResponseType::Forbidden),
    })
    .await;
    // A bound socket that never answers: the Register times out.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut fleet = fleet(server.addr, 6, 60, NetworkModel::default());
    let profiles = ProfileClients::new(
        profile(60),
        &Registry::embedded(),
        NetworkModel::default(),
        Targets {
            server: Some(silent.local_addr().unwrap()),
            bootstrap: None,
        },
    )
    .unwrap();
    for n in 6..10 {
        let mut spec = profiles.spec(n, 7);
        // Short CoAP timers: the timeout comes after 1 retransmission.
        spec.config.coap.ack_timeout = Duration::from_millis(100);
        spec.config.coap.max_retransmit = 1;
        fleet.add("e2e", spec);
    }
    let handle = fleet.start().unwrap();
    let c = counters_until(&handle, PATIENCE, |c| c.failed == 10).await;
    assert_eq!(c.failures, 10);
    let failures = handle.failures();
    let causes: Vec<(&str, u64)> = failures
        .iter()
        .map(|f| (f.cause.as_str(), f.count))
        .collect();
    assert_eq!(
        causes,
        [
            ("register 4.03", 6),
            ("register timeout after 1 retransmissions", 4)
        ]
    );
    assert!(failures[0].example.contains("POST /rd?ep=e2e-"));
    assert!(failures[1].example.contains("no acknowledgement after 2"));
    handle.stop(Duration::from_secs(5)).await.unwrap();
}
