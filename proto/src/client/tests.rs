//! End-to-end tests of the client state machine against scripted LwM2M servers built on
//! `coap::Endpoint`, over an in-memory link on a virtual clock.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;

use super::machine::{ClientConfig, ClientEvent, ClientState, Lwm2mClient, Quirks};
use super::tree::{ObjectTree, WriteMode};
use crate::bootstrap::config::{BootstrapConfig, SecurityInstance, SecurityMode, ServerInstance};
use crate::coap::message::{self, uint_bytes, uint_option};
use crate::coap::{
    self, CoapOption, Endpoint, Event, IncomingRequest, MessageType, Packet, RequestType,
    ResponseType,
};
use crate::codec::link::parse_discover;
use crate::content::{self, ContentFormat};
use crate::ids::{InstanceId, Lwm2mPath, ObjectId, ResourceId, ResourceInstanceId};
use crate::node::{Instance, Node, ResourceValue};
use crate::registration::{Lwm2mVersion, parse_register_query};
use crate::registry::Registry;
use crate::testing::{Link, Pair};
use crate::value::Value;

const SERVER: &str = "127.0.0.1:5683";
const CLIENT: &str = "127.0.0.2:56830";
const BS: &str = "127.0.0.3:5683";
const FW: &str = "127.0.0.4:5683";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::embedded)
}

fn def(o: u16) -> Arc<crate::ObjectDef> {
    Arc::new(registry().object(ObjectId(o)).unwrap().clone())
}

fn s(v: &str) -> ResourceValue {
    ResourceValue::Single(Value::String(v.into()))
}
fn i(v: i64) -> ResourceValue {
    ResourceValue::Single(Value::Integer(v))
}
fn f(v: f64) -> ResourceValue {
    ResourceValue::Single(Value::Float(v))
}
fn inst(items: Vec<(u16, ResourceValue)>) -> Instance {
    items.into_iter().map(|(r, v)| (ResourceId(r), v)).collect()
}

/// Objects 0 (empty), 1, 3, 5, 3303.
fn factory_tree() -> ObjectTree {
    let mut t = ObjectTree::new();
    t.add_object(def(0), None);
    t.add_object(def(1), None);
    t.add_object(def(3), None);
    t.add_object(def(5), None);
    t.add_object(def(3303), Some(3));
    t.put_instance(
        ObjectId(1),
        InstanceId(0),
        inst(vec![
            (0, i(101)),
            (1, i(300)),
            (6, ResourceValue::Single(Value::Boolean(true))),
            (7, s("U")),
        ]),
    );
    t.put_instance(
        ObjectId(3),
        InstanceId(0),
        inst(vec![
            (0, s("ACME")),
            (1, s("Model 1")),
            (9, i(100)),
            (
                11,
                ResourceValue::Multiple([(ResourceInstanceId(0), Value::Integer(0))].into()),
            ),
            (14, s("+01")),
        ]),
    );
    t.put_instance(
        ObjectId(5),
        InstanceId(0),
        inst(vec![(1, s("")), (3, i(0)), (5, i(0))]),
    );
    t.put_instance(
        ObjectId(3303),
        InstanceId(0),
        inst(vec![(5700, f(20.0)), (5701, s("Cel"))]),
    );
    t
}

fn config() -> ClientConfig {
    ClientConfig {
        endpoint: "dev1".into(),
        version: Lwm2mVersion::V1_1,
        binding: "U".into(),
        queue_mode: false,
        lifetime: 300,
        server: Some(addr(SERVER)),
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
            seed: 7,
            ..coap::Config::default()
        },
        version_fallback: false,
    }
}

/// What happened, in order, on the virtual clock.
#[derive(Debug, Clone, PartialEq)]
enum Log {
    /// The test changed a value.
    Set(Duration, f64),
    /// A notification reached the server.
    Notification(Duration, Packet),
}

/// The client (`a` of the rig), three scripted peers (LwM2M Server, Bootstrap Server,
/// firmware server) on the shared rig, and the log of values set and notifications.
struct Net {
    pair: Pair<Lwm2mClient, Endpoint>,
    log: Vec<Log>,
}

impl Net {
    fn new(config: ClientConfig, tree: ObjectTree) -> Self {
        let mut pair = Pair::new(
            addr(CLIENT),
            Lwm2mClient::new(config, tree),
            Link::default(),
            0,
        );
        for (n, a) in [SERVER, BS, FW].iter().enumerate() {
            let c = coap::Config {
                seed: 100 + n as u64,
                ..coap::Config::default()
            };
            pair.add_peer(addr(a), Endpoint::new(c));
        }
        Net {
            pair,
            log: Vec::new(),
        }
    }

    fn at(&self) -> Duration {
        self.pair.elapsed()
    }

    fn peer(&mut self, a: &str) -> &mut Endpoint {
        self.pair.peer_at(addr(a))
    }

    /// The client's events so far.
    fn client_events(&self) -> Vec<ClientEvent> {
        self.pair.events.iter().map(|(_, e)| e.clone()).collect()
    }

    /// Datagrams sent by `from`, with the time since the start.
    fn sent_by(&self, from: &str) -> Vec<(Duration, Vec<u8>)> {
        let from = addr(from);
        let sent = self.pair.sent.iter().filter(|d| d.from == from);
        sent.map(|d| (d.at, d.bytes.clone())).collect()
    }

    /// Runs for `d`; peers' events go to their inbox, notifications also to the log.
    fn advance(&mut self, d: Duration) {
        let end = self.pair.now + d;
        let start = self.pair.start;
        let log = &mut self.log;
        self.pair.run_with(end, |peer, now, event| {
            if let Event::Notification { response, .. } = &event {
                log.push(Log::Notification(now - start, response.clone()));
            }
            peer.inbox.push_back(event);
        });
    }

    fn pump(&mut self) {
        self.advance(Duration::ZERO);
    }

    fn secs(&mut self, s: u64) {
        self.advance(Duration::from_secs(s));
    }

    fn set(&mut self, path: &Lwm2mPath, v: f64) {
        self.log.push(Log::Set(self.at(), v));
        self.pair.a.set_value(self.pair.now, path, Value::Float(v));
        self.pump();
    }

    /// The next request that reached peer `at`, if any.
    fn try_request(&mut self, at: &str) -> Option<IncomingRequest> {
        let inbox = &mut self.pair.peer_at(addr(at)).inbox;
        let pos = inbox
            .iter()
            .position(|e| matches!(e, Event::Request { .. }))?;
        match inbox.remove(pos) {
            Some(Event::Request { request, .. }) => Some(request),
            _ => None,
        }
    }

    fn request(&mut self, at: &str) -> IncomingRequest {
        self.try_request(at).unwrap_or_else(|| {
            let inbox = &self.pair.peer_at(addr(at)).inbox;
            panic!("no request at {at}; events {inbox:?}")
        })
    }

    fn respond(&mut self, at: &str, req: IncomingRequest, code: ResponseType, location: &[&str]) {
        let mut p = message::response(code, Vec::new());
        for l in location {
            p.add_option(CoapOption::LocationPath, l.as_bytes().to_vec());
        }
        let now = self.pair.now;
        self.peer(at).respond(now, req.handle, p).unwrap();
        self.pump();
    }

    /// Sends a request from the LwM2M Server (or `at`) and waits up to 60 s for the answer.
    fn call_from(&mut self, at: &str, p: Packet) -> Option<Packet> {
        let now = self.pair.now;
        let id = self.peer(at).send_request(now, addr(CLIENT), p).unwrap();
        for _ in 0..600 {
            self.pump();
            let inbox = &mut self.pair.peer_at(addr(at)).inbox;
            let found = inbox.iter().position(|e| {
                matches!(e, Event::Response { id: i, .. } | Event::RequestFailed { id: i, .. } if *i == id)
            });
            if let Some(pos) = found {
                return match inbox.remove(pos) {
                    Some(Event::Response { response, .. }) => Some(response),
                    _ => None,
                };
            }
            self.advance(Duration::from_millis(100));
        }
        None
    }

    fn call(&mut self, p: Packet) -> Packet {
        self.call_from(SERVER, p).expect("no response")
    }

    fn clear(&mut self) {
        self.pair.sent.clear();
        self.pair.events.clear();
    }
}

fn code(p: &Packet) -> String {
    let raw = u8::from(p.header.code);
    format!("{}.{:02}", raw >> 5, raw & 0x1F)
}

fn cf(p: &Packet) -> Option<u32> {
    uint_option(p, CoapOption::ContentFormat)
}

fn query(p: &Packet) -> Vec<String> {
    p.get_option(CoapOption::UriQuery)
        .into_iter()
        .flatten()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn get(path: &str) -> Packet {
    message::request(RequestType::Get, path)
}

fn with_accept(mut p: Packet, f: u16) -> Packet {
    p.add_option(CoapOption::Accept, uint_bytes(f.into()));
    p
}

fn with_body(mut p: Packet, f: u16, body: Vec<u8>) -> Packet {
    p.add_option(CoapOption::ContentFormat, uint_bytes(f.into()));
    p.payload = body;
    p
}

fn text_body(p: &Packet) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// Starts the client, answers its Register with `/rd/5a3f`.
fn registered(config: ClientConfig, tree: ObjectTree) -> Net {
    let mut net = Net::new(config, tree);
    net.pair.a.start(net.pair.now);
    net.pump();
    let reg = net.request(SERVER);
    assert_eq!(reg.path(), "/rd");
    net.respond(SERVER, reg, ResponseType::Created, &["rd", "5a3f"]);
    assert_eq!(net.pair.a.state(), ClientState::Registered);
    assert_eq!(net.pair.a.location(), Some("/rd/5a3f"));
    net.clear();
    net
}

fn write_attributes(net: &mut Net, path: &str, q: &[&str]) -> String {
    let mut p = message::request(RequestType::Put, path);
    for item in q {
        message::add_query(&mut p, item);
    }
    code(&net.call(p))
}

// ---------------------------------------------------------------------------------------

#[test]
fn register_update_and_deregister() {
    let mut net = Net::new(config(), factory_tree());
    net.pair.a.start(net.pair.now);
    net.pump();
    assert_eq!(net.pair.a.state(), ClientState::Registering);
    let reg = net.request(SERVER);
    // Core TS 1.1 §6.2.1: POST /rd?ep=&lt=&lwm2m=&b= with a link-format payload.
    assert_eq!(reg.method(), Some(RequestType::Post));
    assert_eq!(
        query(&reg.packet),
        ["ep=dev1", "lt=300", "lwm2m=1.1", "b=U"]
    );
    let params = parse_register_query(&query(&reg.packet)).unwrap();
    assert!(params.findings.is_empty());
    assert_eq!(cf(&reg.packet), Some(40));
    assert_eq!(
        text_body(&reg.packet),
        r#"</>;rt="oma.lwm2m";ct=11542,</1>;ver=1.1,</1/0>,</3>;ver=1.1,</3/0>,</5>;ver=1.1,</5/0>,</3303/0>"#
    );
    net.respond(SERVER, reg, ResponseType::Created, &["rd", "5a3f"]);
    assert_eq!(
        net.client_events(),
        [ClientEvent::Registered {
            location: "/rd/5a3f".into()
        }]
    );
    // The Update is due update_margin (10 s) before the 300 s lifetime ends.
    net.advance(Duration::from_millis(289_900));
    assert!(net.try_request(SERVER).is_none());
    net.advance(Duration::from_millis(100));
    let upd = net.request(SERVER);
    assert_eq!(upd.path(), "/rd/5a3f");
    assert!(query(&upd.packet).is_empty() && upd.packet.payload.is_empty());
    net.respond(SERVER, upd, ResponseType::Changed, &[]);
    assert!(net.client_events().contains(&ClientEvent::Updated));
    // A new lifetime written to the Server object goes out in the next Update, alone.
    let w = with_body(
        message::request(RequestType::Put, "/1/0/1"),
        0,
        b"600".to_vec(),
    );
    assert_eq!(code(&net.call(w)), "2.04");
    let upd = net.request(SERVER);
    assert_eq!(query(&upd.packet), ["lt=600"]);
    net.respond(SERVER, upd, ResponseType::Changed, &[]);
    net.secs(589);
    assert!(net.try_request(SERVER).is_none());
    net.secs(1);
    let upd = net.request(SERVER);
    net.respond(SERVER, upd, ResponseType::Changed, &[]);
    // Registration Update Trigger (Execute 1/0/8).
    assert_eq!(
        code(&net.call(message::request(RequestType::Post, "/1/0/8"))),
        "2.04"
    );
    let upd = net.request(SERVER);
    assert_eq!(upd.path(), "/rd/5a3f");
    // A failed Update (4.04: the server forgot us) makes the client register again.
    net.respond(SERVER, upd, ResponseType::NotFound, &[]);
    let reg = net.request(SERVER);
    assert_eq!(reg.path(), "/rd");
    net.respond(SERVER, reg, ResponseType::Created, &["rd", "77"]);
    assert_eq!(net.pair.a.location(), Some("/rd/77"));
    // De-register (Core TS 1.1 §6.2.3).
    net.pair.a.deregister(net.pair.now);
    net.pump();
    let dereg = net.request(SERVER);
    assert_eq!(dereg.method(), Some(RequestType::Delete));
    assert_eq!(dereg.path(), "/rd/77");
    net.respond(SERVER, dereg, ResponseType::Deleted, &[]);
    assert_eq!(net.pair.a.state(), ClientState::Deregistered);
    assert_eq!(net.client_events().last(), Some(&ClientEvent::Deregistered));
}

#[test]
fn version_1_0_registration() {
    let mut c = config();
    c.version = Lwm2mVersion::V1_0;
    c.queue_mode = true;
    let mut net = Net::new(c, factory_tree());
    net.pair.a.start(net.pair.now);
    net.pump();
    let reg = net.request(SERVER);
    assert_eq!(
        query(&reg.packet),
        ["ep=dev1", "lt=300", "lwm2m=1.0", "b=UQ"]
    );
    // 1.0: no root link, no object versions.
    assert_eq!(text_body(&reg.packet), "</1/0>,</3/0>,</5/0>,</3303/0>");
}

#[test]
fn queue_mode_sleeps_and_wakes() {
    let mut c = config();
    c.queue_mode = true;
    let mut net = Net::new(c, factory_tree());
    net.pair.a.start(net.pair.now);
    net.pump();
    let reg = net.request(SERVER);
    assert_eq!(
        query(&reg.packet),
        ["ep=dev1", "lt=300", "lwm2m=1.1", "b=U", "Q"]
    );
    net.respond(SERVER, reg, ResponseType::Created, &["rd", "q1"]);
    // MAX_TRANSMIT_WAIT (93 s) awake after the last exchange, then asleep.
    net.advance(Duration::from_millis(92_900));
    assert_eq!(net.pair.a.state(), ClientState::Registered);
    net.advance(Duration::from_millis(100));
    assert_eq!(net.pair.a.state(), ClientState::Sleeping);
    net.secs(20);
    net.pair.a.wake(net.pair.now);
    assert_eq!(net.pair.a.state(), ClientState::Registered);
    net.pump();
    let upd = net.request(SERVER);
    assert_eq!(upd.path(), "/rd/q1");
    net.respond(SERVER, upd, ResponseType::Changed, &[]);
    // The lifetime Update also wakes it (290 s after the last Update).
    net.secs(160);
    assert_eq!(net.pair.a.state(), ClientState::Sleeping);
    net.secs(129);
    assert!(net.try_request(SERVER).is_none());
    net.secs(1);
    let upd = net.request(SERVER);
    assert_eq!(upd.path(), "/rd/q1");
    assert_eq!(net.pair.a.state(), ClientState::Registered);
}

fn bootstrap_config() -> BootstrapConfig {
    let mut b = BootstrapConfig {
        delete: vec![Lwm2mPath::Root],
        ..BootstrapConfig::default()
    };
    b.security.insert(
        1,
        SecurityInstance {
            uri: format!("coap://{SERVER}"),
            bootstrap_server: false,
            mode: SecurityMode::NoSec,
            identity: String::new(),
            server_public_key: String::new(),
            secret_key: String::new(),
            short_server_id: Some(101),
            client_hold_off: None,
            bootstrap_account_timeout: None,
        },
    );
    b.servers.insert(
        0,
        ServerInstance {
            short_server_id: 101,
            lifetime: 120,
            default_min_period: None,
            default_max_period: None,
            notification_storing: true,
            binding: "U".into(),
        },
    );
    b
}

#[test]
fn bootstrap_then_register_with_the_given_server() {
    let mut c = config();
    c.server = None;
    c.bootstrap_server = Some(addr(BS));
    let mut tree = factory_tree();
    tree.delete(&Lwm2mPath::instance(1, 0)).unwrap();
    let mut net = Net::new(c, tree);
    net.pair.a.start(net.pair.now);
    net.pump();
    assert_eq!(net.pair.a.state(), ClientState::Bootstrapping);
    // Core TS 1.1 §5.2.3: POST /bs?ep=NAME&pct=preferred format.
    let req = net.request(BS);
    assert_eq!(req.path(), "/bs");
    assert_eq!(query(&req.packet), ["ep=dev1", "pct=11542"]);
    net.respond(BS, req, ResponseType::Changed, &[]);
    // Finish before any account is written: 4.06.
    let finish = || message::request(RequestType::Post, "/bs");
    assert_eq!(code(&net.call_from(BS, finish()).unwrap()), "4.06");
    // Bootstrap-Delete of everything (2.02), Bootstrap-Discover.
    let del = message::request(RequestType::Delete, "/");
    assert_eq!(code(&net.call_from(BS, del).unwrap()), "2.02");
    let disc = net.call_from(BS, with_accept(get("/"), 40)).unwrap();
    assert_eq!(code(&disc), "2.05");
    assert_eq!(
        text_body(&disc),
        "</>;lwm2m=1.1,</0>;ver=1.1,</1>;ver=1.1,</3>;ver=1.1,</3/0>,</5>;ver=1.1,</3303>"
    );
    // Bootstrap-Write of the Security and Server instances (TLV).
    for (path, node) in bootstrap_config().writes() {
        let body = content::encode(ContentFormat::Tlv, &path, &node).unwrap();
        let put = with_body(
            message::request(RequestType::Put, &path.to_string()),
            11542,
            body,
        );
        assert_eq!(code(&net.call_from(BS, put).unwrap()), "2.04");
    }
    let disc = net.call_from(BS, with_accept(get("/0"), 40)).unwrap();
    assert_eq!(
        text_body(&disc),
        format!(r#"</0>;ver=1.1,</0/1>;ssid=101;uri="coap://{SERVER}""#)
    );
    let disc = net.call_from(BS, with_accept(get("/1"), 40)).unwrap();
    assert_eq!(text_body(&disc), "</1>;ver=1.1,</1/0>;ssid=101");
    // Bootstrap-Read: Server object yes, others no (Core TS 1.1 §5.2.7.2).
    let read = net.call_from(BS, with_accept(get("/1/0/1"), 0)).unwrap();
    assert_eq!(
        (code(&read), text_body(&read)),
        ("2.05".into(), "120".into())
    );
    assert_eq!(code(&net.call_from(BS, get("/3/0")).unwrap()), "4.05");
    // The LwM2M Server is not served during bootstrap.
    assert_eq!(code(&net.call(get("/3/0/0"))), "4.01");
    assert_eq!(code(&net.call_from(BS, finish()).unwrap()), "2.04");
    assert!(net.client_events().contains(&ClientEvent::Bootstrapped));
    let reg = net.request(SERVER);
    assert_eq!(
        query(&reg.packet),
        ["ep=dev1", "lt=120", "lwm2m=1.1", "b=U"]
    );
    net.respond(SERVER, reg, ResponseType::Created, &["rd", "1"]);
    assert_eq!(net.pair.a.state(), ClientState::Registered);
    // The Bootstrap Server is no longer served.
    assert_eq!(code(&net.call_from(BS, get("/3/0/0")).unwrap()), "4.01");
}

#[test]
fn device_management_codes_and_payloads() {
    let mut net = registered(config(), factory_tree());
    // Read in text/plain, TLV (preferred), SenML JSON.
    let r = net.call(with_accept(get("/3/0/0"), 0));
    assert_eq!(
        (code(&r), cf(&r), text_body(&r)),
        ("2.05".into(), Some(0), "ACME".into())
    );
    let r = net.call(get("/3/0/9"));
    assert_eq!((code(&r), cf(&r)), ("2.05".into(), Some(11542)));
    assert_eq!(r.payload, [0xC1, 0x09, 0x64]); // Core TS 1.1 §7.4.3: resource 9 = 100
    let r = net.call(with_accept(get("/3303/0/5700"), 110));
    assert_eq!(text_body(&r), r#"[{"bn":"/3303/0/5700","v":20.0}]"#);
    let r = net.call(get("/3/0"));
    let node = content::decode(
        ContentFormat::Tlv,
        &r.payload,
        &Lwm2mPath::instance(3, 0),
        net.pair.a.tree(),
    )
    .unwrap()
    .content;
    assert_eq!(
        node,
        net.pair.a.tree().read(&Lwm2mPath::instance(3, 0)).unwrap()
    );
    // 4.04 what it lacks, 4.05 what the object forbids, 4.06 formats it does not speak.
    assert_eq!(code(&net.call(get("/9"))), "4.04");
    assert_eq!(code(&net.call(get("/3/1"))), "4.04");
    assert_eq!(code(&net.call(get("/3/0/2"))), "4.04");
    assert_eq!(code(&net.call(get("/3/0/4"))), "4.05");
    assert_eq!(code(&net.call(get("/5/0/0"))), "4.05");
    assert_eq!(code(&net.call(with_accept(get("/3/0"), 11543))), "4.06");
    assert_eq!(code(&net.call(with_accept(get("/3/0"), 0))), "4.06");
    assert_eq!(code(&net.call(get("/0/0"))), "4.01");
    // Write.
    let put = |path: &str, f: u16, body: &[u8]| {
        with_body(message::request(RequestType::Put, path), f, body.to_vec())
    };
    assert_eq!(code(&net.call(put("/3/0/14", 0, b"+02"))), "2.04");
    assert_eq!(
        net.pair.a.tree().get(&Lwm2mPath::resource(3, 0, 14)),
        Some(&Value::String("+02".into()))
    );
    assert_eq!(code(&net.call(put("/3/0/0", 0, b"x"))), "4.05");
    assert_eq!(code(&net.call(put("/3/0/14", 11544, b"x"))), "4.15");
    assert_eq!(code(&net.call(put("/3/0", 11542, &[0xC8]))), "4.00");
    assert_eq!(code(&net.call(put("/3", 11542, &[]))), "4.05");
    // Partial update (POST on an instance) in SenML JSON.
    let post = with_body(
        message::request(RequestType::Post, "/3/0"),
        110,
        br#"[{"bn":"/3/0/","n":"15","vs":"Europe/Paris"}]"#.to_vec(),
    );
    assert_eq!(code(&net.call(post)), "2.04");
    assert_eq!(
        net.pair.a.tree().get(&Lwm2mPath::resource(3, 0, 15)),
        Some(&Value::String("Europe/Paris".into()))
    );
    // Execute with arguments (Core TS 1.1 §5.4.5).
    let exec = with_body(
        message::request(RequestType::Post, "/3/0/12"),
        0,
        b"0='a b',1".to_vec(),
    );
    assert_eq!(code(&net.call(exec)), "2.04");
    assert!(net.client_events().iter().any(|e| matches!(
        e,
        ClientEvent::Executed { path, arguments }
            if *path == Lwm2mPath::resource(3, 0, 12)
                && arguments.len() == 2
                && arguments[0].value.as_deref() == Some("a b")
    )));
    let bad = with_body(
        message::request(RequestType::Post, "/3/0/12"),
        0,
        b"0=x".to_vec(),
    );
    assert_eq!(code(&net.call(bad)), "4.00");
    assert_eq!(
        code(&net.call(message::request(RequestType::Post, "/3/0/0"))),
        "4.05"
    );
    assert_eq!(
        code(&net.call(message::request(RequestType::Post, "/3/0/99"))),
        "4.04"
    );
    // Create with instance limit, then Delete; each changes the registration.
    let new = Node::Object([(InstanceId(1), inst(vec![(5700, f(1.5))]))].into());
    let body = content::encode(ContentFormat::Tlv, &Lwm2mPath::object(3303), &new).unwrap();
    let r = net.call(with_body(
        message::request(RequestType::Post, "/3303"),
        11542,
        body,
    ));
    assert_eq!(code(&r), "2.01");
    assert_eq!(query_location(&r), "3303/1");
    let upd = net.request(SERVER);
    assert_eq!(
        text_body(&upd.packet),
        r#"</>;rt="oma.lwm2m";ct=11542,</1>;ver=1.1,</1/0>,</3>;ver=1.1,</3/0>,</5>;ver=1.1,</5/0>,</3303/0>,</3303/1>"#
    );
    net.respond(SERVER, upd, ResponseType::Changed, &[]);
    // 1.0-style payload without the instance: the client picks the id.
    let res = Node::Instance(inst(vec![(5700, f(2.5))]));
    let body = content::encode(ContentFormat::Tlv, &Lwm2mPath::instance(3303, 0), &res).unwrap();
    let create = || {
        with_body(
            message::request(RequestType::Post, "/3303"),
            11542,
            body.clone(),
        )
    };
    let r = net.call(create());
    assert_eq!(
        (code(&r), query_location(&r)),
        ("2.01".into(), "3303/2".into())
    );
    let upd = net.request(SERVER);
    net.respond(SERVER, upd, ResponseType::Changed, &[]);
    assert_eq!(code(&net.call(create())), "4.00"); // max 3 instances
    assert_eq!(
        code(&net.call(message::request(RequestType::Post, "/3"))),
        "4.00"
    );
    assert_eq!(
        code(&net.call(message::request(RequestType::Post, "/9"))),
        "4.04"
    );
    let del = |p: &str| message::request(RequestType::Delete, p);
    assert_eq!(code(&net.call(del("/3303/2"))), "2.02");
    let upd = net.request(SERVER);
    net.respond(SERVER, upd, ResponseType::Changed, &[]);
    assert_eq!(code(&net.call(del("/3303/2"))), "4.04");
    assert_eq!(code(&net.call(del("/3/0"))), "4.05");
    assert_eq!(code(&net.call(del("/3303/0/5700"))), "4.05");
}

fn query_location(p: &Packet) -> String {
    p.get_option(CoapOption::LocationPath)
        .into_iter()
        .flatten()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn composite_operations() {
    let mut net = registered(config(), factory_tree());
    let fetch = with_body(
        message::request(RequestType::Fetch, "/"),
        110,
        br#"[{"n":"/3/0/0"},{"n":"/3303/0/5700"},{"n":"/9/0/0"}]"#.to_vec(),
    );
    let r = net.call(fetch);
    assert_eq!((code(&r), cf(&r)), ("2.05".into(), Some(110)));
    assert_eq!(
        text_body(&r),
        r#"[{"n":"/3/0/0","vs":"ACME"},{"n":"/3303/0/5700","v":20.0}]"#
    );
    let patch = with_body(
        message::request(RequestType::IPatch, "/"),
        110,
        br#"[{"n":"/3/0/14","vs":"+05"},{"n":"/3/0/15","vs":"UTC"}]"#.to_vec(),
    );
    assert_eq!(code(&net.call(patch)), "2.04");
    assert_eq!(
        net.pair.a.tree().get(&Lwm2mPath::resource(3, 0, 14)),
        Some(&Value::String("+05".into()))
    );
    let bad = with_body(
        message::request(RequestType::IPatch, "/"),
        110,
        br#"[{"n":"/3/0/0","vs":"x"}]"#.to_vec(),
    );
    assert_eq!(code(&net.call(bad)), "4.05");
    let bad_cf = with_body(message::request(RequestType::Fetch, "/"), 11542, vec![]);
    assert_eq!(code(&net.call(bad_cf)), "4.15");
    // Observe-Composite: a change of any path notifies.
    let mut obs = with_body(
        message::request(RequestType::Fetch, "/"),
        110,
        br#"[{"n":"/3303/0/5700"},{"n":"/3/0/9"}]"#.to_vec(),
    );
    obs.set_observe_value(0);
    assert_eq!(code(&net.call(obs)), "2.05");
    net.log.clear();
    net.set(&Lwm2mPath::resource(3303, 0, 5700), 21.0);
    let Some(Log::Notification(_, n)) = net.log.last() else {
        panic!("no notification: {:?}", net.log);
    };
    assert_eq!(
        text_body(n),
        r#"[{"n":"/3303/0/5700","v":21.0},{"n":"/3/0/9","v":100}]"#
    );
}

/// An Observe-Composite notifies at the smallest effective pmax of its paths; pmax 0 (no
/// maximum, Core TS 1.1 §5.1.2) does not count (ETS int-304).
#[test]
fn observe_composite_ignores_pmax_zero() {
    let mut net = registered(config(), factory_tree());
    assert_eq!(write_attributes(&mut net, "/3/0/9", &["pmax=20"]), "2.04");
    assert_eq!(
        write_attributes(&mut net, "/3303/0/5700", &["pmax=0"]),
        "2.04"
    );
    let mut obs = with_body(
        message::request(RequestType::Fetch, "/"),
        110,
        br#"[{"n":"/3303/0/5700"},{"n":"/3/0/9"}]"#.to_vec(),
    );
    obs.set_observe_value(0);
    assert_eq!(code(&net.call(obs)), "2.05");
    let t = net.at().as_secs();
    net.log.clear();
    net.secs(25);
    let times: Vec<u64> = notifications(&net).into_iter().map(|(at, _)| at).collect();
    assert_eq!(times, [t + 20]);
}

/// Core TS 1.1 §6.2.2: a new lifetime or binding goes to the server in an Update, whether
/// written by Write or Write-Composite (ETS int-230); other Server object writes do not.
#[test]
fn server_object_writes_update_the_registration() {
    let mut net = registered(config(), factory_tree());
    let patch = with_body(
        message::request(RequestType::IPatch, "/"),
        110,
        br#"[{"n":"/1/0/1","v":61},{"n":"/1/0/6","vb":true}]"#.to_vec(),
    );
    assert_eq!(code(&net.call(patch)), "2.04");
    let upd = net.request(SERVER);
    assert_eq!(query(&upd.packet), ["lt=61"]);
    // A lifetime written while that Update is under way follows in the next one.
    let put = |v: &[u8]| with_body(message::request(RequestType::Put, "/1/0/1"), 0, v.to_vec());
    assert_eq!(code(&net.call(put(b"62"))), "2.04");
    assert!(net.try_request(SERVER).is_none());
    net.respond(SERVER, upd, ResponseType::Changed, &[]);
    let upd = net.request(SERVER);
    assert_eq!(query(&upd.packet), ["lt=62"]);
    net.respond(SERVER, upd, ResponseType::Changed, &[]);
    // Rewriting the same lifetime, or a default period, changes nothing registered.
    assert_eq!(code(&net.call(put(b"62"))), "2.04");
    let pmin = with_body(
        message::request(RequestType::Put, "/1/0/2"),
        0,
        b"5".to_vec(),
    );
    assert_eq!(code(&net.call(pmin)), "2.04");
    assert!(net.try_request(SERVER).is_none());
}

#[test]
fn write_attributes_and_discover_inheritance() {
    let mut net = registered(config(), factory_tree());
    assert_eq!(write_attributes(&mut net, "/3303", &["pmin=10"]), "2.04");
    assert_eq!(write_attributes(&mut net, "/3303/0", &["pmax=60"]), "2.04");
    assert_eq!(
        write_attributes(&mut net, "/3303/0/5700", &["gt=50", "lt=10.5", "st=2"]),
        "2.04"
    );
    let disc = |net: &mut Net, p: &str| {
        let r = net.call(with_accept(get(p), 40));
        assert_eq!(cf(&r), Some(40));
        text_body(&r)
    };
    // Object level: each level with its own attributes, resources with dim.
    assert_eq!(
        disc(&mut net, "/3303"),
        "</3303>;pmin=10,</3303/0>;pmax=60,</3303/0/5605>,</3303/0/5700>;gt=50;lt=10.5;st=2,</3303/0/5701>"
    );
    assert_eq!(
        disc(&mut net, "/3/0"),
        "</3/0>,</3/0/0>,</3/0/1>,</3/0/4>,</3/0/5>,</3/0/9>,</3/0/11>;dim=1,</3/0/12>,</3/0/14>"
    );
    // Resource level: the attributes of all three levels.
    assert_eq!(
        disc(&mut net, "/3303/0/5700"),
        "</3303/0/5700>;pmin=10;pmax=60;gt=50;lt=10.5;st=2"
    );
    let entries = parse_discover(&disc(&mut net, "/3303/0/5700")).unwrap();
    assert_eq!(entries[0].attributes.pmin, Some(10));
    // A multiple resource lists its instances with their own attributes (1.1, ETS
    // int-261); a resource instance has no dim.
    assert_eq!(disc(&mut net, "/3/0/11"), "</3/0/11>;dim=1,</3/0/11/0>");
    assert_eq!(write_attributes(&mut net, "/3/0", &["pmin=5"]), "2.04");
    assert_eq!(
        write_attributes(&mut net, "/3/0/11/0", &["pmax=100"]),
        "2.04"
    );
    assert_eq!(
        disc(&mut net, "/3/0/11"),
        "</3/0/11>;dim=1;pmin=5,</3/0/11/0>;pmax=100"
    );
    assert_eq!(disc(&mut net, "/3/0/11/0"), "</3/0/11/0>;pmin=5;pmax=100");
    let mut v10 = config();
    v10.version = Lwm2mVersion::V1_0;
    let mut net10 = registered(v10, factory_tree());
    assert_eq!(disc(&mut net10, "/3/0/11"), "</3/0/11>;dim=1");
    // Unset with a bare name; errors.
    assert_eq!(write_attributes(&mut net, "/3303/0/5700", &["st"]), "2.04");
    assert_eq!(
        disc(&mut net, "/3303/0/5700"),
        "</3303/0/5700>;pmin=10;pmax=60;gt=50;lt=10.5"
    );
    assert_eq!(write_attributes(&mut net, "/3303", &["pmin=abc"]), "4.00");
    assert_eq!(write_attributes(&mut net, "/3303", &["foo=1"]), "4.00");
    assert_eq!(
        write_attributes(&mut net, "/3303", &["lt=60", "gt=50"]),
        "4.00"
    );
    assert_eq!(
        write_attributes(&mut net, "/3303/0/5602", &["pmin=1"]),
        "4.04"
    );
    assert_eq!(write_attributes(&mut net, "/3303/4", &["pmin=1"]), "4.04");
    assert_eq!(code(&net.call(with_accept(get("/3303/7"), 40))), "4.04");
    assert_eq!(code(&net.call(with_accept(get("/"), 40))), "4.00");
}

fn observe(net: &mut Net, path: &str, accept: u16) -> Packet {
    let mut p = with_accept(get(path), accept);
    p.set_observe_value(0);
    let r = net.call(p);
    assert_eq!(code(&r), "2.05");
    assert!(r.get_observe_value().is_some());
    r
}

fn notifications(net: &Net) -> Vec<(u64, String)> {
    net.log
        .iter()
        .filter_map(|l| match l {
            Log::Notification(t, p) => Some((t.as_secs(), text_body(p))),
            Log::Set(..) => None,
        })
        .collect()
}

#[test]
fn observe_honours_pmin_pmax_and_step() {
    let mut net = registered(config(), factory_tree());
    let path = Lwm2mPath::resource(3303, 0, 5700);
    assert_eq!(
        write_attributes(&mut net, "/3303/0/5700", &["pmin=5", "pmax=20", "st=1"]),
        "2.04"
    );
    let t = net.at().as_secs();
    let r = observe(&mut net, "/3303/0/5700", 0);
    assert_eq!(text_body(&r), "20.0");
    net.log.clear();
    net.secs(1);
    net.set(&path, 20.5); // below the step: nothing
    net.secs(1);
    net.set(&path, 22.0); // step reached, but within pmin: at pmin (5 s)
    net.secs(10);
    net.set(&path, 30.0); // immediately (pmin passed)
    net.secs(25); // pmax: 20 s after the last
    assert_eq!(
        notifications(&net),
        [
            (t + 5, "22.0".into()),
            (t + 12, "30.0".into()),
            (t + 32, "30.0".into())
        ]
    );
    assert!(
        net.client_events()
            .iter()
            .any(|e| matches!(e, ClientEvent::Notified { .. }))
    );
    // Server defaults (1/0/2, 1/0/3) apply when nothing is set.
    let mut net = registered(config(), factory_tree());
    let w = with_body(
        message::request(RequestType::Put, "/1/0/3"),
        0,
        b"7".to_vec(),
    );
    assert_eq!(code(&net.call(w)), "2.04");
    let t = net.at().as_secs();
    observe(&mut net, "/3/0/9", 0);
    net.log.clear();
    net.secs(15);
    assert_eq!(
        notifications(&net),
        [(t + 7, "100".into()), (t + 14, "100".into())]
    );
}

#[test]
fn observation_cancelled_by_reset_and_by_observe_1() {
    let mut net = registered(config(), factory_tree());
    let path = Lwm2mPath::resource(3303, 0, 5700);
    // Cancel by Reset: the server forgets the observation and rejects the next notification.
    let mut p = with_accept(get("/3303/0/5700"), 0);
    p.set_observe_value(0);
    let now = net.pair.now;
    let id = net.peer(SERVER).send_request(now, addr(CLIENT), p).unwrap();
    net.pump();
    assert_eq!(net.pair.a.observation_count(), 1);
    net.peer(SERVER).cancel_request(now, id);
    net.set(&path, 25.0);
    assert_eq!(net.pair.a.observation_count(), 0);
    assert!(
        net.client_events()
            .contains(&ClientEvent::ObservationCancelled { path })
    );
    assert!(net.pair.a.counters().resets_in >= 1);
    // Cancel with Observe = 1 (RFC 7641 §3.6): answered like a Read.
    let mut p = with_accept(get("/3303/0/5700"), 0);
    p.set_observe_value(0);
    let now = net.pair.now;
    let id = net.peer(SERVER).send_request(now, addr(CLIENT), p).unwrap();
    net.pump();
    assert_eq!(net.pair.a.observation_count(), 1);
    let cancel = net.peer(SERVER).cancel_observation(now, id).unwrap();
    net.pump();
    assert_eq!(net.pair.a.observation_count(), 0);
    let answered = net.pair.peer_at(addr(SERVER)).inbox.iter().any(|e| {
        matches!(e, Event::Response { id, response } if *id == cancel && text_body(response) == "25.0")
    });
    assert!(answered);
    net.log.clear();
    net.set(&path, 30.0);
    assert!(notifications(&net).is_empty());
}

#[test]
fn bootstrap_request_trigger_keeps_the_registration_until_the_client_registers_again() {
    let mut c = config();
    c.bootstrap_server = Some(addr(BS));
    let mut tree = factory_tree();
    for (path, node) in bootstrap_config().writes() {
        tree.write(&path, &node, WriteMode::Replace, true).unwrap();
    }
    let mut net = registered(c, tree);
    // Execute 1/x/9 (Core TS 1.1 Appendix E.2): 2.04, then a Bootstrap-Request.
    let r = net.call(message::request(RequestType::Post, "/1/0/9"));
    assert_eq!(code(&r), "2.04");
    let req = net.request(BS);
    assert_eq!(req.path(), "/bs");
    assert_eq!(net.pair.a.state(), ClientState::Bootstrapping);
    // The registration still stands at the server meanwhile.
    assert_eq!(net.pair.a.location(), Some("/rd/5a3f"));
    net.respond(BS, req, ResponseType::Changed, &[]);
    let finish = message::request(RequestType::Post, "/bs");
    assert_eq!(code(&net.call_from(BS, finish).unwrap()), "2.04");
    // Finished: a fresh Register replaces it.
    let reg = net.request(SERVER);
    assert_eq!(reg.path(), "/rd");
    assert_eq!(net.pair.a.state(), ClientState::Registering);
    assert_eq!(net.pair.a.location(), None);
    net.respond(SERVER, reg, ResponseType::Created, &["rd", "77"]);
    assert_eq!(net.pair.a.state(), ClientState::Registered);
    assert_eq!(net.pair.a.location(), Some("/rd/77"));
}

#[test]
fn bootstrap_trigger_without_a_bootstrap_server_is_refused() {
    let mut net = registered(config(), factory_tree());
    let r = net.call(message::request(RequestType::Post, "/1/0/9"));
    assert_eq!(code(&r), "4.05");
    assert_eq!(net.pair.a.state(), ClientState::Registered);
}

#[test]
fn mute_send_silences_send() {
    let mut net = registered(config(), factory_tree());
    let mute = |v: &[u8]| with_body(message::request(RequestType::Put, "/1/0/23"), 0, v.to_vec());
    assert_eq!(code(&net.call(mute(b"1"))), "2.04");
    net.pair
        .a
        .send(net.pair.now, &[Lwm2mPath::resource(3, 0, 9)]);
    net.pump();
    assert!(net.try_request(SERVER).is_none(), "a muted Send went out");
    assert!(
        net.client_events()
            .iter()
            .any(|e| matches!(e, ClientEvent::Failed { step: "send", .. }))
    );
    assert_eq!(code(&net.call(mute(b"0"))), "2.04");
    net.pair
        .a
        .send(net.pair.now, &[Lwm2mPath::resource(3, 0, 9)]);
    net.pump();
    assert_eq!(net.request(SERVER).path(), "/dp");
}

#[test]
fn send_operation() {
    let mut net = registered(config(), factory_tree());
    net.pair.a.send(
        net.pair.now,
        &[
            Lwm2mPath::resource(3303, 0, 5700),
            Lwm2mPath::resource(3, 0, 9),
        ],
    );
    net.pump();
    let req = net.request(SERVER);
    assert_eq!(
        (req.method(), req.path()),
        (Some(RequestType::Post), "/dp".into())
    );
    assert_eq!(cf(&req.packet), Some(110));
    assert_eq!(
        text_body(&req.packet),
        r#"[{"n":"/3303/0/5700","v":20.0},{"n":"/3/0/9","v":100}]"#
    );
    net.respond(SERVER, req, ResponseType::Changed, &[]);
    assert!(
        net.client_events()
            .contains(&ClientEvent::Sent { code: (2, 4) })
    );
    // LwM2M 1.0 has no Send.
    let mut c = config();
    c.version = Lwm2mVersion::V1_0;
    let mut net = registered(c, factory_tree());
    net.pair
        .a
        .send(net.pair.now, &[Lwm2mPath::resource(3, 0, 9)]);
    net.pump();
    assert!(net.try_request(SERVER).is_none());
    assert!(matches!(
        net.client_events()[0],
        ClientEvent::Failed { step: "send", .. }
    ));
}

#[test]
fn a_late_deregister_answer_leaves_the_new_registration_alone() {
    let mut net = registered(config(), factory_tree());
    net.pair.a.deregister(net.pair.now);
    net.pump();
    let dereg = net.request(SERVER);
    assert_eq!(dereg.method(), Some(RequestType::Delete));
    // The server acknowledges it (an empty ACK: the answer will be separate, RFC 7252
    // §5.2.2), and the client starts again before that answer comes.
    net.secs(3);
    net.pair.a.start(net.pair.now);
    net.pump();
    let reg = net.request(SERVER);
    assert_eq!(reg.path(), "/rd");
    net.respond(SERVER, reg, ResponseType::Created, &["rd", "77"]);
    net.respond(SERVER, dereg, ResponseType::Deleted, &[]);
    assert_eq!(net.pair.a.state(), ClientState::Registered);
    assert_eq!(net.pair.a.location(), Some("/rd/77"));
    assert!(!net.client_events().contains(&ClientEvent::Deregistered));
}

#[test]
fn reboot_deregisters_stays_silent_and_registers_again() {
    let mut net = registered(config(), factory_tree());
    observe(&mut net, "/3/0/9", 0);
    let r = net.call(message::request(RequestType::Post, "/3/0/4"));
    assert_eq!(code(&r), "2.04");
    assert!(net.client_events().contains(&ClientEvent::Rebooting));
    assert_eq!(net.pair.a.state(), ClientState::Rebooting);
    let dereg = net.request(SERVER);
    assert_eq!(
        (dereg.method(), dereg.path()),
        (Some(RequestType::Delete), "/rd/5a3f".into())
    );
    assert_eq!(net.pair.a.observation_count(), 0);
    // Silent: a Read during the silence gets no answer at all.
    let now = net.pair.now;
    net.peer(SERVER)
        .send_request(now, addr(CLIENT), get("/3/0/9"))
        .unwrap();
    net.secs(29);
    let from_client_during_silence = net
        .sent_by(CLIENT)
        .iter()
        .filter(|(t, _)| *t > now - net.pair.start)
        .count();
    assert_eq!(from_client_during_silence, 0);
    net.secs(1);
    let reg = net.request(SERVER);
    assert_eq!(reg.path(), "/rd");
    net.respond(SERVER, reg, ResponseType::Created, &["rd", "2"]);
    assert_eq!(net.pair.a.state(), ClientState::Registered);
}

#[test]
fn disable_deregisters_and_stays_silent_for_the_disable_timeout() {
    let mut net = registered(config(), factory_tree());
    let w = with_body(
        message::request(RequestType::Put, "/1/0/5"),
        0,
        b"40".to_vec(),
    );
    assert_eq!(code(&net.call(w)), "2.04");
    let r = net.call(message::request(RequestType::Post, "/1/0/4"));
    assert_eq!(code(&r), "2.04");
    assert!(net.client_events().contains(&ClientEvent::Disabled {
        duration: Duration::from_secs(40)
    }));
    let dereg = net.request(SERVER);
    assert_eq!(
        (dereg.method(), dereg.path()),
        (Some(RequestType::Delete), "/rd/5a3f".into())
    );
    net.secs(39);
    let now = net.pair.now;
    assert!(
        net.try_request(SERVER).is_none(),
        "silent until the timeout"
    );
    net.secs(1);
    let reg = net.request(SERVER);
    assert_eq!(reg.path(), "/rd");
    assert!(net.pair.now >= now);
    net.respond(SERVER, reg, ResponseType::Created, &["rd", "3"]);
    assert_eq!(net.pair.a.state(), ClientState::Registered);
    // Disable keeps the device's state: the written timeout is still there.
    assert_eq!(
        net.pair.a.tree().get(&Lwm2mPath::resource(1, 0, 5)),
        Some(&Value::Integer(40))
    );
}

#[test]
fn factory_reset_restores_the_tree() {
    let mut net = registered(config(), factory_tree());
    let put = with_body(
        message::request(RequestType::Put, "/3/0/14"),
        0,
        b"+09".to_vec(),
    );
    assert_eq!(code(&net.call(put)), "2.04");
    assert_eq!(write_attributes(&mut net, "/3303", &["pmin=10"]), "2.04");
    assert_eq!(
        code(&net.call(message::request(RequestType::Post, "/3/0/5"))),
        "2.04"
    );
    assert!(net.client_events().contains(&ClientEvent::FactoryReset));
    let p = Lwm2mPath::resource(3, 0, 14);
    assert_eq!(
        net.pair.a.tree().get(&p),
        Some(&Value::String("+01".into()))
    );
    assert!(net.pair.a.attributes(&Lwm2mPath::object(3303)).is_empty());
    let dereg = net.request(SERVER);
    assert_eq!(dereg.method(), Some(RequestType::Delete));
    net.secs(30);
    let reg = net.request(SERVER);
    assert_eq!(reg.path(), "/rd");
}

fn firmware_state(net: &Net) -> (i64, i64) {
    let get = |r| match net.pair.a.tree().get(&Lwm2mPath::resource(5, 0, r)) {
        Some(Value::Integer(v)) => *v,
        other => panic!("{other:?}"),
    };
    (get(3), get(5))
}

#[test]
fn firmware_push_through_block1() {
    let mut net = registered(config(), factory_tree());
    observe(&mut net, "/5/0/3", 0);
    net.log.clear();
    let image: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let put = with_body(message::request(RequestType::Put, "/5/0/0"), 42, image);
    let r = net.call(put);
    assert_eq!(code(&r), "2.04");
    // RFC 7959 §2.3: the upload went in 1024-byte blocks.
    let blocks = net.sent_by(SERVER).len();
    assert!(blocks >= 98, "{blocks} datagrams");
    assert_eq!(firmware_state(&net), (2, 0));
    assert_eq!(
        net.pair.a.tree().get(&Lwm2mPath::resource(5, 0, 0)),
        Some(&Value::Opaque(Vec::new()))
    );
    let update = || message::request(RequestType::Post, "/5/0/2");
    assert_eq!(code(&net.call(update())), "2.04");
    assert_eq!(firmware_state(&net), (3, 0));
    net.secs(2);
    assert_eq!(firmware_state(&net), (0, 1));
    assert_eq!(
        notifications(&net)
            .iter()
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>(),
        ["2", "3", "0"]
    );
    // Update in the wrong state: 4.05 (Appendix E.6: only executable when Downloaded).
    assert_eq!(code(&net.call(update())), "4.05");
    assert!(net.client_events().contains(&ClientEvent::Firmware {
        state: 0,
        result: 1
    }));
}

#[test]
fn firmware_pull_through_block2() {
    let mut net = registered(config(), factory_tree());
    let image: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let write_uri = |uri: &str| {
        with_body(
            message::request(RequestType::Put, "/5/0/1"),
            0,
            uri.as_bytes().to_vec(),
        )
    };
    let r = net.call(write_uri(&format!("coap://{FW}/fw/image.bin")));
    assert_eq!(code(&r), "2.04");
    assert_eq!(firmware_state(&net), (1, 0));
    let get = net.request(FW);
    assert_eq!(get.path(), "/fw/image.bin");
    // Writing the package while downloading is refused.
    let put = with_body(
        message::request(RequestType::Put, "/5/0/0"),
        42,
        vec![1, 2, 3],
    );
    assert_eq!(code(&net.call(put)), "4.05");
    let now = net.pair.now;
    net.peer(FW)
        .respond(
            now,
            get.handle,
            message::response(ResponseType::Content, image),
        )
        .unwrap();
    net.secs(1);
    assert_eq!(firmware_state(&net), (2, 0));
    let block2 = net.sent_by(FW).len();
    assert!(block2 >= 98, "{block2} datagrams");
    // Errors: unparsable URI (7), coaps (9), 4.04 (7), empty URI resets.
    net.call(write_uri("ftp://x"));
    assert_eq!(firmware_state(&net), (0, 7));
    net.call(write_uri("coaps://127.0.0.4"));
    assert_eq!(firmware_state(&net), (0, 9));
    net.call(write_uri(&format!("coap://{FW}/missing")));
    let get = net.request(FW);
    net.respond(FW, get, ResponseType::NotFound, &[]);
    assert_eq!(firmware_state(&net), (0, 7));
    net.call(write_uri(""));
    assert_eq!(firmware_state(&net), (0, 0));
    // Nobody answers: connection lost (4) once the CoAP layer gives up (RFC 7252 §4.2).
    net.call(write_uri("coap://127.0.0.9/fw"));
    assert_eq!(firmware_state(&net), (1, 0));
    net.secs(100);
    assert_eq!(firmware_state(&net), (0, 4));
}

// ---------------------------------------------------------------------------------------
// Quirks: each one visibly changes the wire.

fn register_query_with(q: Quirks, queue: bool) -> (Vec<String>, String) {
    let mut c = config();
    c.quirks = q;
    c.queue_mode = queue;
    let mut net = Net::new(c, factory_tree());
    net.pair.a.start(net.pair.now);
    net.pump();
    let reg = net.request(SERVER);
    (query(&reg.packet), text_body(&reg.packet))
}

fn quirky(q: Quirks) -> Net {
    let mut c = config();
    c.quirks = q;
    registered(c, factory_tree())
}

#[test]
fn quirks_in_the_registration() {
    let (q, _) = register_query_with(
        Quirks {
            no_lwm2m_version: true,
            ..Quirks::default()
        },
        false,
    );
    assert_eq!(q, ["ep=dev1", "lt=300", "b=U"]);
    let (q, _) = register_query_with(
        Quirks {
            legacy_queue_binding: true,
            ..Quirks::default()
        },
        true,
    );
    assert_eq!(q, ["ep=dev1", "lt=300", "lwm2m=1.1", "b=UQ"]);
    let (_, links) = register_query_with(
        Quirks {
            legacy_content_formats: true,
            ..Quirks::default()
        },
        false,
    );
    assert!(
        links.starts_with(r#"</>;rt="oma.lwm2m";ct=1542,"#),
        "{links}"
    );
}

#[test]
fn quirks_in_the_answers() {
    let legacy = Quirks {
        legacy_content_formats: true,
        ..Quirks::default()
    };
    let mut net = quirky(legacy);
    let r = net.call(get("/3/0"));
    assert_eq!(cf(&r), Some(1542));
    assert_eq!(cf(&net.call(with_accept(get("/3/0"), 11542))), Some(1542));

    let mut net = quirky(Quirks {
        non_minimal_tlv_integers: true,
        ..Quirks::default()
    });
    let r = net.call(get("/3/0/9"));
    assert_eq!(r.payload, [0xC8, 0x09, 0x08, 0, 0, 0, 0, 0, 0, 0, 0x64]);

    let mut net = quirky(Quirks {
        ignore_accept: true,
        ..Quirks::default()
    });
    let r = net.call(with_accept(get("/3/0"), 11543));
    assert_eq!((code(&r), cf(&r)), ("2.05".into(), Some(11542)));

    let mut net = quirky(Quirks {
        wrong_success_codes: true,
        ..Quirks::default()
    });
    let put = with_body(
        message::request(RequestType::Put, "/3/0/14"),
        0,
        b"+02".to_vec(),
    );
    assert_eq!(code(&net.call(put)), "2.05");
    assert_eq!(code(&net.call(get("/3/0/9"))), "2.04");

    let mut net = quirky(Quirks {
        late_responses: Some(Duration::from_secs(3)),
        ..Quirks::default()
    });
    let start = net.at();
    let r = net.call(with_accept(get("/3/0/9"), 0));
    assert_eq!(text_body(&r), "100");
    // An empty ACK after 1 s, then the separate response (CON) after 3 s (RFC 7252 §5.2.2).
    let from_client: Vec<_> = net
        .sent_by(CLIENT)
        .iter()
        .filter(|(t, _)| *t >= start)
        .map(|(t, b)| (*t - start, message::decode(b).unwrap()))
        .collect();
    assert_eq!(from_client[0].0, Duration::from_secs(1));
    assert_eq!(
        from_client[0].1.header.get_type(),
        MessageType::Acknowledgement
    );
    assert!(from_client[0].1.payload.is_empty());
    assert_eq!(from_client[1].0, Duration::from_secs(3));
    assert_eq!(from_client[1].1.header.get_type(), MessageType::Confirmable);

    let mut net = quirky(Quirks {
        duplicate_responses: 2,
        ..Quirks::default()
    });
    net.clear();
    net.call(get("/3/0/9"));
    let from_client = net.sent_by(CLIENT);
    assert_eq!(from_client.len(), 3);
    assert_eq!(from_client[0].1, from_client[1].1);
    assert_eq!(from_client[0].1, from_client[2].1);
}

#[test]
fn requests_from_strangers_are_refused() {
    let mut net = registered(config(), factory_tree());
    assert_eq!(code(&net.call_from(FW, get("/3/0/0")).unwrap()), "4.01");
}

#[test]
fn response_delay_is_honoured() {
    let mut c = config();
    c.response_delay = Duration::from_millis(500);
    let mut net = registered(c, factory_tree());
    let start = net.at();
    net.call(get("/3/0/9"));
    let first = net
        .sent_by(CLIENT)
        .into_iter()
        .find(|(t, _)| *t >= start)
        .unwrap();
    assert_eq!(first.0 - start, Duration::from_millis(500));
}

// ---------------------------------------------------------------------------------------
// The notification property: for random attributes and value traces, notifications
// happen exactly when the rules of the `notify` module say.

#[derive(Debug, Clone, Copy)]
struct Rules {
    pmin: u64,
    pmax: Option<u64>,
    gt: Option<f64>,
    lt: Option<f64>,
    st: Option<f64>,
}

impl Rules {
    fn thresholds(&self) -> bool {
        self.gt.is_some() || self.lt.is_some() || self.st.is_some()
    }

    #[allow(clippy::float_cmp)]
    fn condition(&self, a: f64, b: f64, changed: bool) -> bool {
        if !self.thresholds() {
            return changed;
        }
        a != b
            && (self.gt.is_some_and(|g| (a > g) != (b > g))
                || self.lt.is_some_and(|l| (a < l) != (b < l))
                || self.st.is_some_and(|s| (b - a).abs() >= s))
    }
}

/// Checks a timeline (starting right after the Observe response at `start` with value
/// `initial`) against the rules, up to `end`.
fn check_timeline(
    rules: Rules,
    log: &[Log],
    start: Duration,
    initial: f64,
    end: Duration,
) -> Result<(), String> {
    let pmin = Duration::from_secs(rules.pmin);
    let pmax = rules.pmax.map(Duration::from_secs);
    let (mut last, mut a, mut cur, mut changed) = (start, initial, initial, false);
    let mut pmin_checked = false;
    let value_of = |p: &Packet| -> f64 { text_body(p).parse().unwrap() };
    for (k, ev) in log.iter().enumerate() {
        let (t, is_set) = match ev {
            Log::Set(t, _) => (*t, true),
            Log::Notification(t, _) => (*t, false),
        };
        let next_is_notification_at =
            |at: Duration| matches!(log.get(k), Some(Log::Notification(t, _)) if *t == at);
        // The pmin point comes before any change at or after it.
        let p = last + pmin;
        if !pmin_checked && !pmin.is_zero() && (t > p || (is_set && t >= p)) {
            pmin_checked = true;
            if rules.condition(a, cur, changed) && !next_is_notification_at(p) {
                return Err(format!(
                    "missed notification at pmin point {p:?} (event {k})"
                ));
            }
        }
        if let Some(m) = pmax
            && t > last + m
        {
            return Err(format!(
                "pmax exceeded before event {k} at {t:?}, last {last:?}"
            ));
        }
        match ev {
            Log::Set(t, v) => {
                #[allow(clippy::float_cmp)]
                if *v != cur {
                    changed = true;
                }
                cur = *v;
                let due = *t >= last + pmin && rules.condition(a, cur, changed);
                let next = matches!(log.get(k + 1), Some(Log::Notification(nt, _)) if nt == t);
                if due && !next {
                    return Err(format!(
                        "missed notification after change at {t:?} (event {k})"
                    ));
                }
            }
            Log::Notification(t, packet) => {
                let v = value_of(packet);
                #[allow(clippy::float_cmp)]
                if v != cur {
                    return Err(format!("notification at {t:?} carries {v}, value is {cur}"));
                }
                if *t < last + pmin {
                    return Err(format!("notification at {t:?} before pmin after {last:?}"));
                }
                let by_pmax = pmax.is_some_and(|m| *t == last + m);
                if !by_pmax && !rules.condition(a, cur, changed) {
                    return Err(format!("notification at {t:?} without reason (event {k})"));
                }
                last = *t;
                a = v;
                changed = false;
                pmin_checked = false;
            }
        }
    }
    if let Some(m) = pmax
        && end >= last + m
    {
        return Err(format!("no notification by pmax after {last:?}"));
    }
    let p = last + pmin;
    if !pmin.is_zero() && !pmin_checked && end >= p && rules.condition(a, cur, changed) {
        return Err(format!("missed notification at the final pmin point {p:?}"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn notifications_honour_the_attributes(
        pmin in prop::option::of(0u32..8),
        pmax in prop::option::of(0u32..25),
        gt in prop::option::of(-4i32..40),
        lt in prop::option::of(-10i32..30),
        st in prop::option::of(0u32..8),
        trace in prop::collection::vec((0u64..12, -20i32..90), 1..25),
    ) {
        let mut q = Vec::new();
        let named = [
            ("pmin", pmin.map(|v| v.to_string())),
            ("pmax", pmax.map(|v| v.to_string())),
            ("gt", gt.map(|v| v.to_string())),
            ("lt", lt.map(|v| v.to_string())),
            ("st", st.map(|v| (f64::from(v) / 2.0).to_string())),
        ];
        for (name, v) in named {
            if let Some(v) = v {
                q.push(format!("{name}={v}"));
            }
        }
        let valid = crate::codec::link::AttributeUpdate::from_query(&q).is_ok();
        prop_assume!(valid);
        let mut net = registered(config(), factory_tree());
        if !q.is_empty() {
            let q: Vec<&str> = q.iter().map(String::as_str).collect();
            prop_assert_eq!(write_attributes(&mut net, "/3303/0/5700", &q), "2.04");
        }
        let r = observe(&mut net, "/3303/0/5700", 0);
        let initial: f64 = text_body(&r).parse().unwrap();
        let start = net.at();
        net.log.clear();
        let path = Lwm2mPath::resource(3303, 0, 5700);
        for (dt, v) in &trace {
            net.secs(*dt);
            net.set(&path, f64::from(*v) / 2.0);
        }
        net.secs(30);
        let pmin_v = u64::from(pmin.unwrap_or(0));
        let rules = Rules {
            pmin: pmin_v,
            pmax: pmax.map(u64::from).filter(|m| *m > 0 && *m >= pmin_v),
            gt: gt.map(f64::from),
            lt: lt.map(f64::from),
            st: st.map(|v| f64::from(v) / 2.0),
        };
        let end = net.at();
        if let Err(e) = check_timeline(rules, &net.log, start, initial, end) {
            prop_assert!(false, "{}\nrules {:?}\nlog {:?}", e, rules, net.log.iter().map(|l| match l {
                Log::Set(t, v) => format!("set {}={v}", t.as_secs_f64()),
                Log::Notification(t, p) => format!("notif {}={}", t.as_secs_f64(), text_body(p)),
            }).collect::<Vec<_>>());
        }
    }

    #[test]
    fn random_datagrams_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut net = registered(config(), factory_tree());
        let now = net.pair.now;
        net.pair.a.handle_datagram(now, addr(SERVER), &bytes);
        net.pump();
        prop_assert_eq!(net.pair.a.state(), ClientState::Registered);
    }
}

#[test]
fn register_falls_back_to_older_versions_after_4_12() {
    // Core TS 1.1 §6.2.1: a server that does not speak the client's `lwm2m=` version
    // answers 4.12; a real 1.2 stack registers again as 1.1, then as 1.0.
    let mut c = config();
    c.version = Lwm2mVersion::V1_2;
    c.version_fallback = true;
    let mut net = Net::new(c, factory_tree());
    net.pair.a.start(net.pair.now);
    net.pump();
    let reg = net.request(SERVER);
    assert!(query(&reg.packet).contains(&"lwm2m=1.2".to_owned()));
    net.respond(SERVER, reg, ResponseType::PreconditionFailed, &[]);
    let reg = net.request(SERVER);
    assert!(query(&reg.packet).contains(&"lwm2m=1.1".to_owned()));
    net.respond(SERVER, reg, ResponseType::PreconditionFailed, &[]);
    let reg = net.request(SERVER);
    // Re-encoded for 1.0: no root link, no object versions, 1.0 queries.
    assert!(query(&reg.packet).contains(&"lwm2m=1.0".to_owned()));
    assert_eq!(text_body(&reg.packet), "</1/0>,</3/0>,</5/0>,</3303/0>");
    net.respond(SERVER, reg, ResponseType::Created, &["rd", "9"]);
    assert_eq!(net.pair.a.state(), ClientState::Registered);
    let fallbacks: Vec<_> = net
        .client_events()
        .iter()
        .filter_map(|e| match e {
            ClientEvent::VersionFallback { from, to } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(
        fallbacks,
        [
            (Lwm2mVersion::V1_2, Lwm2mVersion::V1_1),
            (Lwm2mVersion::V1_1, Lwm2mVersion::V1_0)
        ]
    );
    // 1.0 refused as well: nothing older to try, the registration fails.
    let mut c = config();
    c.version = Lwm2mVersion::V1_0;
    c.version_fallback = true;
    let mut net = Net::new(c, factory_tree());
    net.pair.a.start(net.pair.now);
    net.pump();
    let reg = net.request(SERVER);
    net.respond(SERVER, reg, ResponseType::PreconditionFailed, &[]);
    assert_eq!(net.pair.a.state(), ClientState::Failed);
    assert!(net.try_request(SERVER).is_none());
}

#[test]
fn register_without_fallback_fails_on_4_12() {
    let mut c = config();
    c.version = Lwm2mVersion::V1_2;
    let mut net = Net::new(c, factory_tree());
    net.pair.a.start(net.pair.now);
    net.pump();
    let reg = net.request(SERVER);
    net.respond(SERVER, reg, ResponseType::PreconditionFailed, &[]);
    assert_eq!(net.pair.a.state(), ClientState::Failed);
    assert!(net.client_events().iter().any(|e| matches!(
        e,
        ClientEvent::Failed { step: "register", reason } if reason.starts_with("answered 4.12")
    )));
}
