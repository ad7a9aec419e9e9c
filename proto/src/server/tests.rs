//! The server machine against scripted clients built directly on the CoAP [`Endpoint`],
//! over an in-memory link on a virtual clock. Every test asserts the CoAP exchange itself:
//! codes, options and decoded payloads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

use super::*;
use crate::coap::message::{self, uint_option};
use crate::coap::{CancelReason, Endpoint, Event, ExchangeError, IncomingRequest};
use crate::codec::link::{AttributeName, AttributeUpdate, Attributes};
use crate::content::{self, ContentFormat, Finding};
use crate::ids::{InstanceId, ResourceId};
use crate::node::{Instance, Node, Record, ResourceValue};
use crate::registration::{Lwm2mVersion, RegistrationFinding};
use crate::testing::{Link, Pair};
use crate::value::Value;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

const SERVER: u16 = 5683;
const PAYLOAD_11: &str = r#"</>;rt="oma.lwm2m";ct="60 110 112 11542",</1/0>,</3/0>,</3303/0>"#;

/// The server (`a`) and its scripted clients, CoAP endpoints, on the shared rig.
type World = Pair<Lwm2mServer, Endpoint>;

fn world(config: ServerConfig) -> World {
    let server = Lwm2mServer::new(config, Arc::new(crate::registry::Registry::embedded()));
    Pair::new(addr(SERVER), server, Link::default(), 0)
}

/// What the tests do with the world beyond the rig.
trait Script {
    /// A scripted client at `port`; its index in the peers.
    fn peer(&mut self, port: u16) -> usize;
    /// A datagram from an address that is not a scripted client.
    fn raw(&mut self, from: SocketAddr, bytes: &[u8]) -> Vec<Packet>;
    /// A client request and the server's answer.
    fn call(&mut self, peer: usize, packet: Packet) -> Packet;
    /// A Register with these queries and links; the answer.
    fn register(&mut self, peer: usize, queries: &[&str], links: &str) -> Packet;
    /// An Update of registration `id`; the answer.
    fn update(&mut self, peer: usize, id: &str, queries: &[&str]) -> Packet;
    /// The next request the server sent to a client.
    fn incoming(&mut self, peer: usize) -> IncomingRequest;
    /// Asserts that the server sent the client no request.
    fn no_request(&self, peer: usize);
    /// The client answers `request`.
    fn respond(&mut self, peer: usize, request: IncomingRequest, response: Packet);
    /// The server starts `operation` on `endpoint`.
    fn op(&mut self, endpoint: &str, operation: Operation) -> OpId;
    /// Takes the events matching `f`, keeping the others.
    fn take(&mut self, f: impl Fn(&ServerEvent) -> bool) -> Vec<ServerEvent>;
    /// The one completion of `op`.
    fn completed(&mut self, op: OpId) -> (Result<Response, OpError>, Duration);
    /// The successful response of `op`.
    fn ok(&mut self, op: OpId) -> Response;
    /// The registration of `ep`.
    fn registered(&mut self, ep: &str) -> Registration;
}

impl Script for World {
    fn peer(&mut self, port: u16) -> usize {
        let config = crate::coap::Config {
            seed: u64::from(port),
            ..Default::default()
        };
        self.add_peer(addr(port), Endpoint::new(config))
    }

    fn raw(&mut self, from: SocketAddr, bytes: &[u8]) -> Vec<Packet> {
        self.a.handle_datagram(self.now, from, bytes);
        let mut out = Vec::new();
        while let Some(t) = self.a.poll_transmit() {
            assert_eq!(t.peer, from);
            out.push(message::decode(&t.bytes).expect("the server sends valid CoAP"));
        }
        while let Some(e) = self.a.poll_event() {
            let at = self.elapsed();
            self.events.push((at, e));
        }
        out
    }

    fn call(&mut self, peer: usize, packet: Packet) -> Packet {
        let now = self.now;
        let id = self.peers[peer]
            .send_request(now, addr(SERVER), packet)
            .unwrap();
        self.pump();
        let inbox = &mut self.peers[peer].inbox;
        let at = inbox
            .iter()
            .position(|e| matches!(e, Event::Response { id: i, .. } if *i == id))
            .expect("an answer");
        match inbox.remove(at) {
            Some(Event::Response { response, .. }) => response,
            _ => unreachable!(),
        }
    }

    fn register(&mut self, peer: usize, queries: &[&str], links: &str) -> Packet {
        let mut p = message::request(RequestType::Post, "/rd");
        for q in queries {
            message::add_query(&mut p, q);
        }
        if !links.is_empty() {
            p.add_option(CoapOption::ContentFormat, vec![40]);
            p.payload = links.as_bytes().to_vec();
        }
        self.call(peer, p)
    }

    fn update(&mut self, peer: usize, id: &str, queries: &[&str]) -> Packet {
        let mut p = message::request(RequestType::Post, &format!("/rd/{id}"));
        for q in queries {
            message::add_query(&mut p, q);
        }
        self.call(peer, p)
    }

    fn incoming(&mut self, peer: usize) -> IncomingRequest {
        let inbox = &mut self.peers[peer].inbox;
        let at = inbox
            .iter()
            .position(|e| matches!(e, Event::Request { .. }))
            .expect("a request from the server");
        match inbox.remove(at) {
            Some(Event::Request { request, .. }) => request,
            _ => unreachable!(),
        }
    }

    fn no_request(&self, peer: usize) {
        assert!(
            !self.peers[peer]
                .inbox
                .iter()
                .any(|e| matches!(e, Event::Request { .. })),
            "no request expected"
        );
    }

    fn respond(&mut self, peer: usize, request: IncomingRequest, response: Packet) {
        let now = self.now;
        self.peers[peer]
            .respond(now, request.handle, response)
            .unwrap();
        self.pump();
    }

    fn op(&mut self, endpoint: &str, operation: Operation) -> OpId {
        let id = self.a.request(self.now, endpoint, operation).unwrap();
        self.pump();
        id
    }

    fn take(&mut self, f: impl Fn(&ServerEvent) -> bool) -> Vec<ServerEvent> {
        let (taken, kept) = std::mem::take(&mut self.events)
            .into_iter()
            .partition(|(_, e)| f(e));
        self.events = kept;
        taken.into_iter().map(|(_, e)| e).collect()
    }

    fn completed(&mut self, op: OpId) -> (Result<Response, OpError>, Duration) {
        let mut found =
            self.take(|e| matches!(e, ServerEvent::Completed { op: o, .. } if *o == op));
        assert_eq!(
            found.len(),
            1,
            "one Completed for {op:?}: {:?}",
            self.events
        );
        match found.pop() {
            Some(ServerEvent::Completed {
                result, latency, ..
            }) => (result, latency),
            _ => unreachable!(),
        }
    }

    fn ok(&mut self, op: OpId) -> Response {
        self.completed(op).0.expect("a response")
    }

    fn registered(&mut self, ep: &str) -> Registration {
        self.a.registration(ep).cloned().expect("registered")
    }
}

fn code(packet: &Packet) -> (u8, u8) {
    let c = u8::from(packet.header.code);
    (c >> 5, c & 0x1F)
}

fn strings(packet: &Packet, option: CoapOption) -> Vec<String> {
    packet
        .get_option(option)
        .into_iter()
        .flatten()
        .map(|v| String::from_utf8(v.clone()).unwrap())
        .collect()
}

fn reply(code: ResponseType, format: Option<ContentFormat>, payload: Vec<u8>) -> Packet {
    let mut p = message::response(code, payload);
    if let Some(f) = format {
        p.add_option(
            CoapOption::ContentFormat,
            message::uint_bytes(u32::from(f.code())),
        );
    }
    p
}

fn method(packet: &Packet) -> RequestType {
    match packet.header.code {
        MessageClass::Request(m) => m,
        c => panic!("{c} is not a request"),
    }
}

fn single(v: Value) -> Node {
    Node::Resource(ResourceValue::Single(v))
}

/// A registered LwM2M 1.1 client announcing SenML CBOR, at port `port`.
fn registered_11(w: &mut World, port: u16, ep: &str) -> usize {
    let p = w.peer(port);
    let answer = w.register(p, &[&format!("ep={ep}"), "lt=300", "lwm2m=1.1"], PAYLOAD_11);
    assert_eq!(code(&answer), (2, 1));
    w.events.clear();
    p
}

#[test]
fn register_update_deregister_core_6_2() {
    let mut w = world(ServerConfig::default());
    let p = w.peer(40001);
    // Core TS 1.1 §6.2.1: POST /rd?ep=..&lt=..&lwm2m=..&b=U with the link list.
    let answer = w.register(
        p,
        &["ep=dev1", "lt=300", "lwm2m=1.1", "b=U"],
        r#"</lwm2m>;rt="oma.lwm2m";ct=112,</lwm2m/1/0>,</lwm2m/3/0>,</lwm2m/3303>;ver=1.1"#,
    );
    assert_eq!(code(&answer), (2, 1));
    let reg = w.registered("dev1");
    assert_eq!(
        strings(&answer, CoapOption::LocationPath),
        ["rd", reg.id.as_str()]
    );
    assert_eq!(reg.id.len(), 8);
    assert_eq!(
        (
            reg.lifetime,
            reg.version,
            reg.binding.as_str(),
            reg.queue_mode
        ),
        (300, Lwm2mVersion::V1_1, "U", false)
    );
    assert_eq!(reg.address, addr(40001));
    assert_eq!(reg.links.alternate_path, "/lwm2m");
    assert_eq!(reg.links.content_formats, [112]);
    assert_eq!(reg.links.objects.len(), 3);
    assert!(reg.findings.is_empty() && reg.link_notes.is_empty());
    assert_eq!(
        w.take(|_| true),
        [ServerEvent::Registered {
            registration: reg.clone(),
            replaced: None
        }]
    );
    // Core TS 1.1 §6.2.2: Update with a new lifetime, from the same address.
    w.advance(Duration::from_secs(10));
    let answer = w.update(p, &reg.id, &["lt=600"]);
    assert_eq!(code(&answer), (2, 4));
    let updated = w.registered("dev1");
    assert_eq!(updated.lifetime, 600);
    assert_eq!(updated.last_update, w.now);
    assert_eq!(updated.expires_at(), w.now + Duration::from_secs(600));
    assert_eq!(
        w.take(|_| true),
        [ServerEvent::Updated {
            registration: updated.clone(),
            previous_address: None
        }]
    );
    // An Update with a payload replaces the objects.
    let mut up = message::request(RequestType::Post, &format!("/rd/{}", reg.id));
    up.payload = b"</lwm2m/1/0>,</lwm2m/3/0>".to_vec();
    assert_eq!(code(&w.call(p, up)), (2, 4));
    assert_eq!(w.registered("dev1").links.objects.len(), 2);
    w.events.clear();
    // Core TS 1.1 §6.2.3: De-register.
    let answer = w.call(
        p,
        message::request(RequestType::Delete, &format!("/rd/{}", reg.id)),
    );
    assert_eq!(code(&answer), (2, 2));
    assert!(w.a.registration("dev1").is_none());
    assert!(matches!(
        &w.take(|_| true)[..],
        [ServerEvent::Deregistered { registration }] if registration.id == reg.id
    ));
    // The id is gone: 4.04.
    let answer = w.update(p, &reg.id, &[]);
    assert_eq!(code(&answer), (4, 4));
    assert_eq!(
        w.take(|_| true),
        [ServerEvent::RegistrationRefused {
            peer: addr(40001),
            code: (4, 4),
            reason: format!("no registration {:?}", reg.id),
        }]
    );
}

#[test]
fn register_again_replaces_the_old_registration() {
    let mut w = world(ServerConfig::default());
    let p = registered_11(&mut w, 40001, "dev1");
    let first = w.registered("dev1");
    let obs = w.op(
        "dev1",
        Operation::Observe {
            path: Lwm2mPath::resource(3, 0, 9),
            format: Some(ContentFormat::Text),
        },
    );
    let req = w.incoming(p);
    let now = w.now;
    w.peers[p]
        .accept_observation(
            now,
            req.handle,
            reply(ResponseType::Content, None, b"80".to_vec()),
        )
        .unwrap();
    w.pump();
    let observation = w.ok(obs).observation.unwrap();
    let answer = w.register(p, &["ep=dev1", "lt=300", "lwm2m=1.1"], "</3/0>");
    assert_eq!(code(&answer), (2, 1));
    let second = w.registered("dev1");
    assert_ne!(first.id, second.id);
    assert_eq!(
        strings(&answer, CoapOption::LocationPath),
        ["rd", second.id.as_str()]
    );
    let events = w.take(|_| true);
    assert!(matches!(
        &events[..],
        [
            ServerEvent::ObservationEnded { observation: o, .. },
            ServerEvent::Registered { registration, replaced: Some(old) },
        ] if *o == observation && *registration == second && *old == first
    ));
    assert!(w.a.observations("dev1").is_empty());
    assert_eq!(code(&w.update(p, &first.id, &[])), (4, 4));
    assert_eq!(w.a.registrations().count(), 1);
}

#[test]
fn lifetime_expiry_ends_the_registration_and_its_operations() {
    let mut w = world(ServerConfig::default());
    let p = w.peer(40001);
    w.register(p, &["ep=dev1", "lt=30", "lwm2m=1.1"], "</3/0>");
    w.events.clear();
    assert_eq!(
        w.a.poll_timeout()
            .map(|t| t <= w.now + Duration::from_secs(30)),
        Some(true)
    );
    let read = w.op(
        "dev1",
        Operation::Read {
            path: Lwm2mPath::resource(3, 0, 0),
            format: None,
        },
    );
    let _unanswered = w.incoming(p);
    w.advance(Duration::from_secs(29));
    assert!(w.a.registration("dev1").is_some());
    w.advance(Duration::from_secs(2));
    assert!(w.a.registration("dev1").is_none());
    let (result, latency) = w.completed(read);
    assert_eq!(
        result,
        Err(OpError::Deregistered {
            endpoint: "dev1".into()
        })
    );
    assert_eq!(latency, Duration::from_secs(30));
    assert!(matches!(
        &w.take(|_| true)[..],
        [ServerEvent::Expired { registration }] if registration.endpoint == "dev1"
    ));
}

#[test]
fn every_refusal_has_its_code_and_event() {
    let mut w = world(ServerConfig::default());
    let p = w.peer(40001);
    let cases: Vec<(Packet, (u8, u8), &str, bool)> = vec![
        {
            let mut r = message::request(RequestType::Post, "/rd");
            message::add_query(&mut r, "lt=300");
            (r, (4, 0), "Register without an endpoint name", true)
        },
        {
            let mut r = message::request(RequestType::Post, "/rd");
            message::add_query(&mut r, "ep=x");
            message::add_query(&mut r, "lwm2m=2.0");
            (r, (4, 12), "unsupported LwM2M version \"2.0\"", true)
        },
        {
            let mut r = message::request(RequestType::Post, "/rd");
            message::add_query(&mut r, "ep=x");
            message::add_query(&mut r, "lt=soon");
            (r, (4, 0), "invalid lt=\"soon\"", true)
        },
        {
            let mut r = message::request(RequestType::Post, "/rd");
            message::add_query(&mut r, "ep=x");
            r.payload = b"</3/0".to_vec();
            (r, (4, 0), "registration payload:", true)
        },
        {
            let mut r = message::request(RequestType::Post, "/rd");
            message::add_query(&mut r, "ep=x");
            r.add_option(CoapOption::ContentFormat, vec![]);
            r.payload = b"</3/0>".to_vec();
            (r, (4, 15), "Content-Format 0", true)
        },
        {
            let mut r = message::request(RequestType::Post, "/rd");
            r.add_option(CoapOption::UriQuery, vec![0xff, 0xfe]);
            (r, (4, 0), "is not UTF-8", true)
        },
        (
            message::request(RequestType::Put, "/rd"),
            (4, 5),
            "PUT is not allowed on /rd",
            true,
        ),
        (
            message::request(RequestType::Get, "/rd/abc"),
            (4, 5),
            "GET is not allowed on /rd/abc",
            true,
        ),
        (
            message::request(RequestType::Post, "/rd/nope"),
            (4, 4),
            "no registration \"nope\"",
            true,
        ),
        (
            message::request(RequestType::Delete, "/rd/nope"),
            (4, 4),
            "no registration \"nope\"",
            true,
        ),
        (
            message::request(RequestType::Get, "/dp"),
            (4, 5),
            "GET is not allowed on /dp",
            false,
        ),
        (
            message::request(RequestType::Get, "/3/0"),
            (4, 4),
            "no resource /3/0",
            false,
        ),
        (
            message::request(RequestType::Post, "/rd/a/b"),
            (4, 4),
            "no resource /rd/a/b",
            false,
        ),
    ];
    for (request, expected, reason, registration) in cases {
        let answer = w.call(p, request);
        assert_eq!(code(&answer), expected, "{reason}");
        let diagnostic = String::from_utf8(answer.payload.clone()).unwrap();
        assert!(diagnostic.contains(reason), "{diagnostic:?} / {reason:?}");
        let events = w.take(|_| true);
        match &events[..] {
            [ServerEvent::RegistrationRefused { peer, code, reason }] if registration => {
                assert_eq!((*peer, *code), (addr(40001), expected));
                assert_eq!(*reason, diagnostic);
            }
            [ServerEvent::RequestRefused { peer, code, reason }] if !registration => {
                assert_eq!((*peer, *code), (addr(40001), expected));
                assert_eq!(*reason, diagnostic);
            }
            other => panic!("{reason}: {other:?}"),
        }
    }
    assert_eq!(w.a.registrations().count(), 0);
}

#[test]
fn tolerated_deviations_are_findings() {
    let mut w = world(ServerConfig::default());
    let p = w.peer(40001);
    // A pre-1.0 client: no lwm2m=, the 1.0 queue binding, legacy content formats, a link
    // outside its alternate path.
    let answer = w.register(
        p,
        &["ep=old", "b=UQ"],
        r#"</>;rt="oma.lwm2m";ct="1542 1543",</1/0>,</3/0>,<3/1>"#,
    );
    assert_eq!(code(&answer), (2, 1));
    let reg = w.registered("old");
    assert_eq!(reg.version, Lwm2mVersion::V1_0);
    assert!(reg.queue_mode);
    assert_eq!(
        reg.findings,
        [
            RegistrationFinding::MissingVersion,
            RegistrationFinding::LegacyContentFormat { code: 1542 },
            RegistrationFinding::LegacyContentFormat { code: 1543 },
        ]
    );
    assert_eq!(reg.link_notes.len(), 1);
    assert_eq!(choose_format(&reg, false), Ok(ContentFormat::LegacyTlv));
    // A 1.1 client sending the 1.0 queue binding; its Updates repeat it but it is recorded once.
    let q = w.peer(40002);
    w.register(q, &["ep=q11", "lwm2m=1.1", "b=UQ"], "");
    let id = w.registered("q11").id;
    w.update(q, &id, &["b=UQ", "x=1"]);
    w.update(q, &id, &["b=UQ", "x=1"]);
    assert_eq!(
        w.registered("q11").findings,
        [
            RegistrationFinding::LegacyQueueBinding {
                binding: "UQ".into()
            },
            RegistrationFinding::UnknownParameter {
                parameter: "x=1".into()
            },
        ]
    );
}

#[test]
fn tables_sized_ahead_still_grow_and_the_limit_still_holds() {
    let mut w = world(ServerConfig {
        registration_capacity: 2,
        limits: RegistrationLimits {
            max_registrations: 3,
            ..RegistrationLimits::default()
        },
        ..ServerConfig::default()
    });
    for n in 0..4u16 {
        let p = w.peer(42000 + n);
        w.register(p, &[&format!("ep=cap{n}"), "lwm2m=1.1"], "</3/0>");
    }
    // Beyond the capacity the tables grew; beyond the limit the Register was refused.
    assert_eq!(w.a.registrations().count(), 3);
    for n in 0..3 {
        assert_eq!(w.registered(&format!("cap{n}")).endpoint, format!("cap{n}"));
    }
    assert!(w.a.registration("cap3").is_none());
}

#[test]
fn format_choice_per_version() {
    let mut w = world(ServerConfig::default());
    let cases = [
        ("lwm2m=1.0", "</3/0>", false, Ok(ContentFormat::Tlv)),
        ("lwm2m=1.1", "</3/0>", false, Ok(ContentFormat::Tlv)),
        ("lwm2m=1.1", "</3/0>", true, Ok(ContentFormat::SenmlCbor)),
        ("lwm2m=1.1", PAYLOAD_11, false, Ok(ContentFormat::SenmlCbor)),
        (
            "lwm2m=1.1",
            r#"</>;rt="oma.lwm2m";ct=110"#,
            true,
            Ok(ContentFormat::SenmlJson),
        ),
        (
            "lwm2m=1.2",
            r#"</>;rt="oma.lwm2m";ct="112 11544""#,
            false,
            Ok(ContentFormat::Lwm2mCbor),
        ),
        (
            "lwm2m=1.2",
            r#"</>;rt="oma.lwm2m";ct="112 11544""#,
            true,
            Ok(ContentFormat::Lwm2mCbor),
        ),
        (
            "lwm2m=1.1",
            r#"</>;rt="oma.lwm2m";ct=11544"#,
            false,
            Ok(ContentFormat::Tlv),
        ),
    ];
    for (n, (version, links, composite, expected)) in cases.into_iter().enumerate() {
        let p = w.peer(41000 + n as u16);
        let ep = format!("c{n}");
        w.register(p, &[&format!("ep={ep}"), version], links);
        let reg = w.registered(&ep);
        assert_eq!(
            choose_format(&reg, composite),
            expected,
            "{version} {links}"
        );
    }
    let reg = w.registered("c0");
    assert!(matches!(
        choose_format(&reg, true),
        Err(OpError::Invalid { .. })
    ));
    // Composite operations are refused at once for a 1.0 client.
    let refused = w.a.request(
        w.now,
        "c0",
        Operation::ReadComposite {
            paths: vec![Lwm2mPath::resource(3, 0, 0)],
            format: Some(ContentFormat::SenmlJson),
        },
    );
    assert!(matches!(refused, Err(OpError::Invalid { reason }) if reason.contains("1.1+")));
    assert_eq!(
        w.a.request(
            w.now,
            "ghost",
            Operation::Delete {
                path: Lwm2mPath::instance(3, 0)
            }
        ),
        Err(OpError::UnknownEndpoint {
            endpoint: "ghost".into()
        })
    );
}

#[test]
fn read_with_registry_typing_and_findings() {
    let mut w = world(ServerConfig::default());
    let p = w.peer(40001);
    w.register(
        p,
        &["ep=dev1", "lwm2m=1.1"],
        r#"</lwm2m>;rt="oma.lwm2m";ct=112,</lwm2m/3/0>"#,
    );
    w.advance(Duration::from_secs(1));
    let started = w.now;
    let op = w.op(
        "dev1",
        Operation::Read {
            path: Lwm2mPath::instance(3, 0),
            format: None,
        },
    );
    // GET /lwm2m/3/0, Accept SenML CBOR (announced in ct).
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::Get);
    assert_eq!(
        strings(&req.packet, CoapOption::UriPath),
        ["lwm2m", "3", "0"]
    );
    assert_eq!(uint_option(&req.packet, CoapOption::Accept), Some(112));
    assert!(req.packet.payload.is_empty());
    // The client answers in SenML JSON; battery level (an Integer) comes as a string.
    let answer = br#"[{"bn":"/3/0/","n":"0","vs":"ACME"},{"n":"9","vs":"high"}]"#;
    w.advance(Duration::from_millis(250));
    w.respond(
        p,
        req,
        reply(
            ResponseType::Content,
            Some(ContentFormat::SenmlJson),
            answer.to_vec(),
        ),
    );
    let (result, latency) = w.completed(op);
    let response = result.unwrap();
    assert_eq!(latency, w.now - started);
    assert_eq!(response.code, (2, 5));
    assert_eq!(response.format, Some(ContentFormat::SenmlJson));
    assert_eq!(response.payload_len, answer.len());
    let mut inst = Instance::new();
    inst.insert(
        ResourceId(0),
        ResourceValue::Single(Value::String("ACME".into())),
    );
    inst.insert(
        ResourceId(9),
        ResourceValue::Single(Value::String("high".into())),
    );
    assert_eq!(response.content, Some(Content::Node(Node::Instance(inst))));
    assert!(matches!(
        &response.findings[..],
        [Finding::TypeMismatch { path, .. }] if *path == Lwm2mPath::resource(3, 0, 9)
    ));
    // An error answer keeps its diagnostic.
    let op = w.op(
        "dev1",
        Operation::Read {
            path: Lwm2mPath::resource(3, 0, 77),
            format: Some(ContentFormat::Text),
        },
    );
    let req = w.incoming(p);
    assert_eq!(uint_option(&req.packet, CoapOption::Accept), Some(0));
    w.respond(
        p,
        req,
        reply(ResponseType::NotFound, None, b"no 3/0/77".to_vec()),
    );
    let response = w.ok(op);
    assert_eq!(response.code, (4, 4));
    assert!(!response.is_success());
    assert_eq!(response.diagnostic.as_deref(), Some("no 3/0/77"));
    // An undecodable payload is an error carrying the code.
    let op = w.op(
        "dev1",
        Operation::Read {
            path: Lwm2mPath::resource(3, 0, 9),
            format: None,
        },
    );
    let req = w.incoming(p);
    w.respond(
        p,
        req,
        reply(
            ResponseType::Content,
            Some(ContentFormat::SenmlCbor),
            vec![0xff, 0x00],
        ),
    );
    assert!(matches!(
        w.completed(op).0,
        Err(OpError::Decode { code: (2, 5), .. })
    ));
}

#[test]
fn write_replace_and_partial_write_attributes_execute() {
    let mut w = world(ServerConfig::default());
    let p = registered_11(&mut w, 40001, "dev1");
    // Write (replace): PUT /3/0/14 with SenML CBOR.
    let node = single(Value::String("+02:00".into()));
    let op = w.op(
        "dev1",
        Operation::Write {
            path: Lwm2mPath::resource(3, 0, 14),
            node: node.clone(),
            replace: true,
            format: None,
        },
    );
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::Put);
    assert_eq!(req.path(), "/3/0/14");
    assert_eq!(
        uint_option(&req.packet, CoapOption::ContentFormat),
        Some(112)
    );
    let schema = crate::registry::Registry::embedded();
    let written = content::decode(
        ContentFormat::SenmlCbor,
        &req.packet.payload,
        &Lwm2mPath::resource(3, 0, 14),
        &schema,
    )
    .unwrap();
    assert_eq!(written.content, node);
    w.respond(p, req, reply(ResponseType::Changed, None, vec![]));
    assert_eq!(w.ok(op).code, (2, 4));
    // Write (partial update): POST /1/0 with TLV.
    let mut inst = Instance::new();
    inst.insert(ResourceId(1), ResourceValue::Single(Value::Integer(120)));
    let op = w.op(
        "dev1",
        Operation::Write {
            path: Lwm2mPath::instance(1, 0),
            node: Node::Instance(inst.clone()),
            replace: false,
            format: Some(ContentFormat::Tlv),
        },
    );
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::Post);
    assert_eq!(req.path(), "/1/0");
    assert_eq!(
        uint_option(&req.packet, CoapOption::ContentFormat),
        Some(11542)
    );
    // Core TS 1.1 §7.4.3: resource 1 with a 1-byte value: C1 01 78.
    assert_eq!(req.packet.payload, [0xC1, 0x01, 0x78]);
    w.respond(p, req, reply(ResponseType::Changed, None, vec![]));
    assert!(w.ok(op).is_success());
    // Write-Attributes: PUT /3/0/9?pmin=10&pmax=60&gt, no payload.
    let mut attributes = AttributeUpdate {
        set: Attributes {
            pmin: Some(10),
            pmax: Some(60),
            ..Default::default()
        },
        ..Default::default()
    };
    attributes.unset.insert(AttributeName::Gt);
    let op = w.op(
        "dev1",
        Operation::WriteAttributes {
            path: Lwm2mPath::resource(3, 0, 9),
            attributes,
        },
    );
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::Put);
    assert_eq!(req.path(), "/3/0/9");
    assert_eq!(
        strings(&req.packet, CoapOption::UriQuery),
        ["pmin=10", "pmax=60", "gt"]
    );
    assert!(req.packet.payload.is_empty());
    assert_eq!(uint_option(&req.packet, CoapOption::ContentFormat), None);
    w.respond(p, req, reply(ResponseType::Changed, None, vec![]));
    assert!(w.ok(op).is_success());
    // Execute: POST /3/0/4 with text/plain arguments.
    let op = w.op(
        "dev1",
        Operation::Execute {
            path: Lwm2mPath::resource(3, 0, 4),
            args: Some("0='v',1".into()),
        },
    );
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::Post);
    assert_eq!(req.path(), "/3/0/4");
    assert_eq!(uint_option(&req.packet, CoapOption::ContentFormat), Some(0));
    assert_eq!(req.packet.payload, b"0='v',1");
    w.respond(p, req, reply(ResponseType::Changed, None, vec![]));
    assert!(w.ok(op).is_success());
    // Execute on an instance cannot be expressed (it would be a partial Write).
    assert!(matches!(
        w.a.request(
            w.now,
            "dev1",
            Operation::Execute {
                path: Lwm2mPath::instance(3, 0),
                args: None
            }
        ),
        Err(OpError::Invalid { .. })
    ));
}

#[test]
fn create_delete_discover() {
    let mut w = world(ServerConfig::default());
    let p = w.peer(40001);
    w.register(p, &["ep=dev10", "lwm2m=1.0"], "</3/0>,</3303>");
    let schema = crate::registry::Registry::embedded();
    let mut resources = Instance::new();
    resources.insert(ResourceId(5700), ResourceValue::Single(Value::Float(21.5)));
    // Create with an instance id: POST /3303, TLV with an Object Instance TLV for id 1.
    let op = w.op(
        "dev10",
        Operation::Create {
            object: crate::ids::ObjectId(3303),
            instance: Some(InstanceId(1)),
            resources: resources.clone(),
            format: None,
        },
    );
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::Post);
    assert_eq!(req.path(), "/3303");
    assert_eq!(
        uint_option(&req.packet, CoapOption::ContentFormat),
        Some(11542)
    );
    assert_eq!(req.packet.payload[0] >> 6, 0b00, "an Object Instance TLV");
    let created = content::decode(
        ContentFormat::Tlv,
        &req.packet.payload,
        &Lwm2mPath::object(3303),
        &schema,
    )
    .unwrap();
    assert_eq!(
        created.content,
        Node::Object(BTreeMap::from([(InstanceId(1), resources.clone())]))
    );
    let mut answer = reply(ResponseType::Created, None, vec![]);
    answer.add_option(CoapOption::LocationPath, b"3303".to_vec());
    answer.add_option(CoapOption::LocationPath, b"1".to_vec());
    w.respond(p, req, answer);
    let response = w.ok(op);
    assert_eq!(response.code, (2, 1));
    assert_eq!(response.location, Some(Lwm2mPath::instance(3303, 1)));
    // Create without an id: bare resource TLVs; the client picks the id.
    let op = w.op(
        "dev10",
        Operation::Create {
            object: crate::ids::ObjectId(3303),
            instance: None,
            resources: resources.clone(),
            format: None,
        },
    );
    let req = w.incoming(p);
    assert_eq!(req.packet.payload[0] >> 6, 0b11, "a Resource TLV");
    let mut answer = reply(ResponseType::Created, None, vec![]);
    answer.add_option(CoapOption::LocationPath, b"3303".to_vec());
    answer.add_option(CoapOption::LocationPath, b"7".to_vec());
    w.respond(p, req, answer);
    assert_eq!(w.ok(op).location, Some(Lwm2mPath::instance(3303, 7)));
    // Without an id, SenML cannot say it.
    assert!(matches!(
        w.a.request(
            w.now,
            "dev10",
            Operation::Create {
                object: crate::ids::ObjectId(3303),
                instance: None,
                resources,
                format: Some(ContentFormat::SenmlJson),
            }
        ),
        Err(OpError::Invalid { .. })
    ));
    // Delete: DELETE /3303/1.
    let op = w.op(
        "dev10",
        Operation::Delete {
            path: Lwm2mPath::instance(3303, 1),
        },
    );
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::Delete);
    assert_eq!(req.path(), "/3303/1");
    w.respond(p, req, reply(ResponseType::Deleted, None, vec![]));
    assert_eq!(w.ok(op).code, (2, 2));
    // Discover: GET /3 with Accept link-format.
    let op = w.op(
        "dev10",
        Operation::Discover {
            path: Lwm2mPath::object(3),
        },
    );
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::Get);
    assert_eq!(req.path(), "/3");
    assert_eq!(uint_option(&req.packet, CoapOption::Accept), Some(40));
    let links = b"</3>;pmin=10,</3/0/1>,</3/0/7>;dim=2".to_vec();
    w.respond(
        p,
        req,
        reply(
            ResponseType::Content,
            Some(ContentFormat::LinkFormat),
            links,
        ),
    );
    let response = w.ok(op);
    let Some(Content::Links(entries)) = response.content else {
        panic!("links expected: {response:?}");
    };
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].attributes.pmin, Some(10));
    assert_eq!(entries[2].path, Lwm2mPath::resource(3, 0, 7));
    assert_eq!(entries[2].dim, Some(2));
}

#[test]
fn a_whole_device_read_composite_of_a_1_2_client_asks_in_senml_for_lwm2m_cbor() {
    let mut w = world(ServerConfig::default());
    let p = w.peer(40001);
    w.register(
        p,
        &["ep=dev12", "lwm2m=1.2"],
        r#"</>;rt="oma.lwm2m";ct="112 11544",</3/0>,</3303/0>"#,
    );
    let paths = vec![Lwm2mPath::Root, Lwm2mPath::instance(3, 0)];
    let op = w.op(
        "dev12",
        Operation::ReadComposite {
            paths: paths.clone(),
            format: None,
        },
    );
    // The path list in SenML CBOR (a path-only / has no LwM2M CBOR form), the answer
    // asked in LwM2M CBOR (Core TS 1.2 §7.4.6).
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::Fetch);
    assert_eq!(
        uint_option(&req.packet, CoapOption::ContentFormat),
        Some(112)
    );
    assert_eq!(uint_option(&req.packet, CoapOption::Accept), Some(11544));
    let asked = content::decode_records(
        ContentFormat::SenmlCbor,
        &req.packet.payload,
        &crate::NoSchema,
    )
    .unwrap()
    .content;
    assert_eq!(asked.iter().map(|r| r.path).collect::<Vec<_>>(), paths);
    let values = vec![
        Record {
            path: Lwm2mPath::resource(3, 0, 0),
            value: Some(Value::String("ACME".into())),
            time: None,
        },
        Record {
            path: Lwm2mPath::resource(3303, 0, 5700),
            value: Some(Value::Float(20.5)),
            time: None,
        },
    ];
    let answer = content::encode_records(ContentFormat::Lwm2mCbor, &values).unwrap();
    w.respond(
        p,
        req,
        reply(
            ResponseType::Content,
            Some(ContentFormat::Lwm2mCbor),
            answer,
        ),
    );
    let response = w.ok(op);
    assert_eq!(response.format, Some(ContentFormat::Lwm2mCbor));
    assert_eq!(response.content, Some(Content::Records(values)));
}

#[test]
fn read_and_write_composite() {
    let mut w = world(ServerConfig::default());
    let p = w.peer(40001);
    w.register(
        p,
        &["ep=dev1", "lwm2m=1.1"],
        r#"</lwm2m>;rt="oma.lwm2m";ct="110",</lwm2m/3/0>"#,
    );
    let paths = vec![Lwm2mPath::resource(3, 0, 0), Lwm2mPath::instance(1, 0)];
    let op = w.op(
        "dev1",
        Operation::ReadComposite {
            paths: paths.clone(),
            format: None,
        },
    );
    // FETCH /lwm2m with the path list in SenML JSON (Core TS 1.1 §6.3.8).
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::Fetch);
    assert_eq!(strings(&req.packet, CoapOption::UriPath), ["lwm2m"]);
    assert_eq!(
        uint_option(&req.packet, CoapOption::ContentFormat),
        Some(110)
    );
    assert_eq!(uint_option(&req.packet, CoapOption::Accept), Some(110));
    let asked = content::decode_records(
        ContentFormat::SenmlJson,
        &req.packet.payload,
        &crate::NoSchema,
    )
    .unwrap()
    .content;
    assert_eq!(asked.iter().map(|r| r.path).collect::<Vec<_>>(), paths);
    assert!(asked.iter().all(|r| r.value.is_none()));
    let answer = br#"[{"n":"/3/0/0","vs":"ACME"},{"n":"/1/0/1","v":300}]"#.to_vec();
    w.respond(
        p,
        req,
        reply(
            ResponseType::Content,
            Some(ContentFormat::SenmlJson),
            answer,
        ),
    );
    let response = w.ok(op);
    let Some(Content::Records(records)) = response.content else {
        panic!("records expected");
    };
    assert_eq!(records[0].value, Some(Value::String("ACME".into())));
    assert_eq!(records[1].path, Lwm2mPath::resource(1, 0, 1));
    assert_eq!(records[1].value, Some(Value::Integer(300)));
    // Write-Composite: iPATCH /lwm2m with the values.
    let values = vec![Record {
        path: Lwm2mPath::resource(1, 0, 1),
        value: Some(Value::Integer(60)),
        time: None,
    }];
    let op = w.op(
        "dev1",
        Operation::WriteComposite {
            records: values.clone(),
            format: None,
        },
    );
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::IPatch);
    assert_eq!(strings(&req.packet, CoapOption::UriPath), ["lwm2m"]);
    assert_eq!(
        uint_option(&req.packet, CoapOption::ContentFormat),
        Some(110)
    );
    let sent = content::decode_records(
        ContentFormat::SenmlJson,
        &req.packet.payload,
        &crate::registry::Registry::embedded(),
    )
    .unwrap();
    assert_eq!(sent.content, values);
    w.respond(p, req, reply(ResponseType::Changed, None, vec![]));
    assert_eq!(w.ok(op).code, (2, 4));
}

/// Observe /3/0/9 from `p`, accept it on the client; returns both ids.
fn observe(w: &mut World, p: usize, ep: &str) -> (ObservationId, crate::coap::ObservationId) {
    let op = w.op(
        ep,
        Operation::Observe {
            path: Lwm2mPath::resource(3, 0, 9),
            format: Some(ContentFormat::Text),
        },
    );
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::Get);
    assert_eq!(req.observe(), Some(0));
    assert_eq!(uint_option(&req.packet, CoapOption::Accept), Some(0));
    let now = w.now;
    let served = w.peers[p]
        .accept_observation(
            now,
            req.handle,
            reply(
                ResponseType::Content,
                Some(ContentFormat::Text),
                b"90".to_vec(),
            ),
        )
        .unwrap();
    w.pump();
    let response = w.ok(op);
    assert_eq!(
        response.content,
        Some(Content::Node(single(Value::Integer(90))))
    );
    (response.observation.expect("established"), served)
}

fn notify(w: &mut World, p: usize, served: crate::coap::ObservationId, level: &str) {
    let now = w.now;
    let packet = reply(
        ResponseType::Content,
        Some(ContentFormat::Text),
        level.as_bytes().to_vec(),
    );
    w.peers[p].notify(now, served, packet, true).unwrap();
    w.pump();
}

#[test]
fn observe_notify_cancel_and_lifecycle() {
    let mut w = world(ServerConfig::default());
    let p = registered_11(&mut w, 40001, "dev1");
    let id = w.registered("dev1").id;
    let (obs, served) = observe(&mut w, p, "dev1");
    assert_eq!(
        w.a.observations("dev1"),
        [(obs, vec![Lwm2mPath::resource(3, 0, 9)])]
    );
    notify(&mut w, p, served, "85");
    let n = w.take(|e| matches!(e, ServerEvent::Notification { .. }));
    assert!(matches!(
        &n[..],
        [ServerEvent::Notification { observation, endpoint, path, response, seq }]
            if *observation == obs && endpoint == "dev1"
                && *path == Lwm2mPath::resource(3, 0, 9)
                && response.content == Some(Content::Node(single(Value::Integer(85))))
                && *seq == 2
    ));
    // The observation survives an Update.
    assert_eq!(code(&w.update(p, &id, &["lt=400"])), (2, 4));
    notify(&mut w, p, served, "80");
    assert_eq!(
        w.take(|e| matches!(e, ServerEvent::Notification { .. }))
            .len(),
        1
    );
    // Active cancellation: GET with Observe = 1 (RFC 7641 §3.6).
    let op = w.op(
        "dev1",
        Operation::CancelObservation {
            observation: obs,
            active: true,
        },
    );
    assert!(matches!(
        &w.take(|e| matches!(e, ServerEvent::ObservationEnded { .. }))[..],
        [ServerEvent::ObservationEnded { observation, .. }] if *observation == obs
    ));
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::Get);
    assert_eq!(req.observe(), Some(1));
    assert_eq!(req.path(), "/3/0/9");
    assert!(w.peers[p].inbox.iter().any(|e| matches!(
        e,
        Event::ObservationCancelled {
            reason: CancelReason::Deregistered,
            ..
        }
    )));
    w.respond(
        p,
        req,
        reply(
            ResponseType::Content,
            Some(ContentFormat::Text),
            b"79".to_vec(),
        ),
    );
    let response = w.ok(op);
    assert_eq!(
        response.content,
        Some(Content::Node(single(Value::Integer(79))))
    );
    assert!(w.a.observations("dev1").is_empty());
    // Passive cancellation: forgotten at once, the next notification gets a Reset.
    let (obs, served) = observe(&mut w, p, "dev1");
    let op = w.op(
        "dev1",
        Operation::CancelObservation {
            observation: obs,
            active: false,
        },
    );
    assert_eq!(w.ok(op), Response::empty());
    w.no_request(p);
    notify(&mut w, p, served, "70");
    assert!(
        w.take(|e| matches!(e, ServerEvent::Notification { .. }))
            .is_empty()
    );
    assert!(w.peers[p].inbox.iter().any(|e| matches!(
        e,
        Event::ObservationCancelled { id, reason: CancelReason::Reset } if *id == served
    )));
    // De-register ends the remaining observations.
    let (obs, served) = observe(&mut w, p, "dev1");
    w.events.clear();
    w.call(
        p,
        message::request(RequestType::Delete, &format!("/rd/{id}")),
    );
    let events = w.take(|_| true);
    assert!(matches!(
        &events[..],
        [ServerEvent::ObservationEnded { observation, reason, .. }, ServerEvent::Deregistered { .. }]
            if *observation == obs && reason.contains("de-registered")
    ));
    notify(&mut w, p, served, "60");
    assert!(
        w.take(|e| matches!(e, ServerEvent::Notification { .. }))
            .is_empty()
    );
    // A cancellation of an unknown observation is refused.
    registered_11(&mut w, 40002, "dev2");
    assert!(matches!(
        w.a.request(
            w.now,
            "dev2",
            Operation::CancelObservation {
                observation: obs,
                active: true
            }
        ),
        Err(OpError::Invalid { .. })
    ));
}

#[test]
fn observe_composite_and_error_notification() {
    let mut w = world(ServerConfig::default());
    let p = registered_11(&mut w, 40001, "dev1");
    let paths = vec![Lwm2mPath::resource(3, 0, 9), Lwm2mPath::resource(3, 0, 0)];
    let op = w.op(
        "dev1",
        Operation::ObserveComposite {
            paths: paths.clone(),
            format: Some(ContentFormat::SenmlJson),
        },
    );
    let req = w.incoming(p);
    assert_eq!(method(&req.packet), RequestType::Fetch);
    assert_eq!(req.observe(), Some(0));
    assert_eq!(req.path(), "/");
    let body = br#"[{"n":"/3/0/9","v":50},{"n":"/3/0/0","vs":"ACME"}]"#.to_vec();
    let now = w.now;
    let served = w.peers[p]
        .accept_observation(
            now,
            req.handle,
            reply(ResponseType::Content, Some(ContentFormat::SenmlJson), body),
        )
        .unwrap();
    w.pump();
    let obs = w.ok(op).observation.unwrap();
    assert_eq!(w.a.observations("dev1"), [(obs, paths)]);
    let now = w.now;
    let notification = reply(
        ResponseType::Content,
        Some(ContentFormat::SenmlJson),
        br#"[{"n":"/3/0/9","v":49}]"#.to_vec(),
    );
    w.peers[p].notify(now, served, notification, false).unwrap();
    w.pump();
    let n = w.take(|e| matches!(e, ServerEvent::Notification { .. }));
    assert!(matches!(
        &n[..],
        [ServerEvent::Notification { response, .. }]
            if matches!(&response.content, Some(Content::Records(r)) if r[0].value == Some(Value::Integer(49)))
    ));
    // The client ends it with an error notification (RFC 7641 §3.2).
    let now = w.now;
    w.peers[p]
        .notify(
            now,
            served,
            reply(ResponseType::NotFound, None, vec![]),
            true,
        )
        .unwrap();
    w.pump();
    assert!(matches!(
        &w.take(|_| true)[..],
        [ServerEvent::ObservationEnded { observation, reason, .. }]
            if *observation == obs && reason.contains("4.04")
    ));
    assert!(w.a.observations("dev1").is_empty());
}

#[test]
fn send_from_registered_and_unknown_addresses() {
    let mut w = world(ServerConfig::default());
    let p = registered_11(&mut w, 40001, "dev1");
    let send = |format: Option<u16>, payload: &[u8]| {
        let mut r = message::request(RequestType::Post, "/dp");
        if let Some(f) = format {
            r.add_option(CoapOption::ContentFormat, message::uint_bytes(u32::from(f)));
        }
        r.payload = payload.to_vec();
        r
    };
    // Core TS 1.1 §6.4.6: POST /dp with SenML JSON, 2.04.
    let pack = br#"[{"bn":"/3303/0/","n":"5700","v":21.5,"bt":1700000000}]"#;
    let answer = w.call(p, send(Some(110), pack));
    assert_eq!(code(&answer), (2, 4));
    let events = w.take(|_| true);
    let [
        ServerEvent::Send {
            endpoint,
            records,
            findings,
        },
    ] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert_eq!(endpoint, "dev1");
    assert_eq!(records[0].path, Lwm2mPath::resource(3303, 0, 5700));
    assert_eq!(records[0].value, Some(Value::Float(21.5)));
    assert_eq!(records[0].time, Some(1_700_000_000.0));
    assert!(findings.is_empty());
    // Wrong content: 4.15, 4.00, 4.00.
    for (format, payload, expected) in [
        (Some(0), &b"21.5"[..], (4, 15)),
        (None, &pack[..], (4, 0)),
        (Some(112), &b"\xff\xff"[..], (4, 0)),
    ] {
        let answer = w.call(p, send(format, payload));
        assert_eq!(code(&answer), expected);
        assert!(matches!(
            &w.take(|_| true)[..],
            [ServerEvent::RequestRefused { code, .. }] if *code == expected
        ));
    }
    // From an address no registration holds: 4.04.
    let stranger = w.peer(40099);
    let answer = w.call(stranger, send(Some(110), pack));
    assert_eq!(code(&answer), (4, 4));
    assert!(matches!(
        &w.take(|_| true)[..],
        [ServerEvent::RequestRefused { peer, code: (4, 4), reason }]
            if *peer == addr(40099) && reason.contains("Update first")
    ));
}

#[test]
fn queue_mode_holds_requests_until_the_client_wakes() {
    let mut w = world(ServerConfig {
        queue_capacity: 2,
        queue_timeout: Duration::from_secs(60),
        awake_time: Duration::from_secs(10),
        ..Default::default()
    });
    let p = w.peer(40001);
    w.register(p, &["ep=q", "lwm2m=1.1", "Q"], PAYLOAD_11);
    let id = w.registered("q").id;
    assert!(w.registered("q").queue_mode && w.a.is_awake("q"));
    w.events.clear();
    w.advance(Duration::from_secs(10));
    assert_eq!(
        w.take(|_| true),
        [ServerEvent::Sleeping {
            endpoint: "q".into()
        }]
    );
    assert!(!w.a.is_awake("q"));
    // Requests wait while it sleeps; the third does not fit.
    let read = |r| Operation::Read {
        path: Lwm2mPath::resource(3, 0, r),
        format: Some(ContentFormat::Text),
    };
    let first = w.op("q", read(0));
    w.advance(Duration::from_secs(1));
    let second = w.op("q", read(1));
    assert_eq!(
        w.a.request(w.now, "q", read(2)),
        Err(OpError::QueueFull {
            endpoint: "q".into(),
            capacity: 2
        })
    );
    assert_eq!(w.a.queued("q"), 2);
    w.no_request(p);
    // An Update wakes it; the held requests go out in order after its answer.
    w.advance(Duration::from_secs(4));
    assert_eq!(code(&w.update(p, &id, &[])), (2, 4));
    let events = w.take(|_| true);
    assert!(matches!(
        &events[..],
        [ServerEvent::Awake { endpoint }, ServerEvent::Updated { .. }] if endpoint == "q"
    ));
    assert_eq!(w.a.queued("q"), 0);
    let req = w.incoming(p);
    assert_eq!(req.path(), "/3/0/0");
    w.no_request(p); // NSTART = 1: the second waits for the first answer
    w.respond(p, req, reply(ResponseType::Content, None, b"ACME".to_vec()));
    let (result, latency) = w.completed(first);
    assert_eq!(
        result.unwrap().content,
        Some(Content::Node(single(Value::String("ACME".into()))))
    );
    assert_eq!(latency, Duration::from_secs(5));
    let req = w.incoming(p);
    assert_eq!(req.path(), "/3/0/1");
    w.respond(
        p,
        req,
        reply(ResponseType::Content, None, b"Model".to_vec()),
    );
    assert!(w.ok(second).is_success());
    // Awake: requests go out at once.
    let now_op = w.op("q", read(2));
    let req = w.incoming(p);
    w.respond(p, req, reply(ResponseType::Content, None, b"2".to_vec()));
    assert!(w.ok(now_op).is_success());
    // Asleep again; a held request times out.
    w.advance(Duration::from_secs(10));
    assert_eq!(
        w.take(|_| true),
        [ServerEvent::Sleeping {
            endpoint: "q".into()
        }]
    );
    let late = w.op("q", read(3));
    w.advance(Duration::from_secs(61));
    assert_eq!(
        w.completed(late).0,
        Err(OpError::QueueTimeout {
            endpoint: "q".into(),
            waited: Duration::from_secs(60)
        })
    );
    assert_eq!(w.a.queued("q"), 0);
    // Any message wakes it too: a Send.
    let mut r = message::request(RequestType::Post, "/dp");
    r.add_option(CoapOption::ContentFormat, vec![110]);
    r.payload = br#"[{"n":"/3/0/9","v":5}]"#.to_vec();
    let held = w.op("q", read(9));
    assert_eq!(code(&w.call(p, r)), (2, 4));
    let events = w.take(|e| !matches!(e, ServerEvent::Send { .. }));
    assert_eq!(
        events,
        [ServerEvent::Awake {
            endpoint: "q".into()
        }]
    );
    let req = w.incoming(p);
    assert_eq!(req.path(), "/3/0/9");
    w.respond(p, req, reply(ResponseType::Content, None, b"5".to_vec()));
    assert!(w.ok(held).is_success());
}

#[test]
fn nat_rebinding_is_taken_on_the_next_update() {
    let mut w = world(ServerConfig::default());
    let p = registered_11(&mut w, 40001, "dev1");
    let id = w.registered("dev1").id;
    let (obs, _served) = observe(&mut w, p, "dev1");
    // The NAT mapping changes: the server's request to the old address is lost.
    w.peers[p].addr = addr(50001);
    let lost = w.op(
        "dev1",
        Operation::Read {
            path: Lwm2mPath::resource(3, 0, 0),
            format: None,
        },
    );
    w.no_request(p);
    w.advance(Duration::from_secs(5));
    // The next Update comes from the new address.
    assert_eq!(code(&w.update(p, &id, &[])), (2, 4));
    let events = w.take(|_| true);
    assert!(matches!(
        &events[..],
        [
            ServerEvent::ObservationEnded { observation, reason, .. },
            ServerEvent::Updated { registration, previous_address: Some(old) },
        ] if *observation == obs && reason.contains("NAT")
            && registration.address == addr(50001) && *old == addr(40001)
    ));
    // New requests reach the new address.
    let op = w.op(
        "dev1",
        Operation::Read {
            path: Lwm2mPath::resource(3, 0, 1),
            format: Some(ContentFormat::Text),
        },
    );
    let req = w.incoming(p);
    assert_eq!(req.path(), "/3/0/1");
    w.respond(p, req, reply(ResponseType::Content, None, b"M".to_vec()));
    assert!(w.ok(op).is_success());
    // The request to the old address times out and names that address.
    w.advance(Duration::from_secs(100));
    assert_eq!(
        w.completed(lost).0,
        Err(OpError::Exchange {
            address: addr(40001),
            error: ExchangeError::Timeout { transmissions: 5 }
        })
    );
    assert!(w.a.registration("dev1").is_some());
}

#[test]
fn garbage_and_wrong_content_do_not_disturb_a_working_client() {
    let mut w = world(ServerConfig::default());
    let p = registered_11(&mut w, 40001, "dev1");
    // Garbage bytes from several peers.
    let mut seed = 0x1234_5678_u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for i in 0..300u16 {
        let len = (next() % 40) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 && bytes.len() > 4 {
            bytes[0] = 0x40 | (bytes[0] & 0x0F); // version 1 CON, so the header is read
        }
        w.raw(addr(60000 + i % 7), &bytes);
    }
    assert!(w.take(|e| matches!(e, ServerEvent::Malformed { .. })).len() > 100);
    // Valid CoAP with wrong LwM2M content, each with its code.
    let cases: Vec<(Packet, (u8, u8))> = vec![
        (message::request(RequestType::Get, "/"), (4, 4)),
        (message::request(RequestType::Post, "/bs"), (4, 4)),
        (message::request(RequestType::Fetch, "/rd"), (4, 5)),
        (
            {
                let mut r = message::request(RequestType::Post, "/rd");
                message::add_query(&mut r, "ep=evil");
                message::add_query(&mut r, "b=ZZ");
                r
            },
            (4, 0),
        ),
        (
            {
                let mut r = message::request(RequestType::Post, "/rd");
                message::add_query(&mut r, "ep=evil");
                r.payload = vec![0xC3, 0x28];
                r
            },
            (4, 0),
        ),
        (
            {
                let mut r = message::request(RequestType::Post, "/dp");
                r.add_option(CoapOption::ContentFormat, vec![110]);
                r.payload = b"[{".to_vec();
                r
            },
            (4, 4),
        ),
        (
            message::request(RequestType::Delete, "/rd/aaaaaaaa"),
            (4, 4),
        ),
        (
            message::request(RequestType::Get, &format!("/{}", "é".repeat(200))),
            (4, 4),
        ),
    ];
    for (n, (mut request, expected)) in cases.into_iter().enumerate() {
        request.header.message_id = 100 + n as u16;
        request.set_token(vec![n as u8]);
        let out = w.raw(addr(61000 + n as u16), &request.to_bytes().unwrap());
        assert_eq!(out.len(), 1, "{n}");
        assert_eq!(out[0].header.get_type(), MessageType::Acknowledgement);
        assert_eq!(out[0].get_token(), [n as u8]);
        assert_eq!(code(&out[0]), expected, "case {n}");
        assert!(out[0].payload.len() <= 256 && std::str::from_utf8(&out[0].payload).is_ok());
    }
    assert_eq!(w.a.registrations().count(), 1);
    // The real client still works.
    let op = w.op(
        "dev1",
        Operation::Read {
            path: Lwm2mPath::resource(3, 0, 0),
            format: Some(ContentFormat::Text),
        },
    );
    let req = w.incoming(p);
    w.respond(p, req, reply(ResponseType::Content, None, b"ACME".to_vec()));
    assert!(w.ok(op).is_success());
    let events = w.take(|_| true);
    assert!(
        events.iter().all(|e| matches!(
            e,
            ServerEvent::RequestRefused { .. } | ServerEvent::RegistrationRefused { .. }
        )),
        "{events:?}"
    );
}

#[test]
fn mutated_registrations_never_panic() {
    let mut w = world(ServerConfig::default());
    let mut base = message::request(RequestType::Post, "/rd");
    message::add_query(&mut base, "ep=dev&lt=300");
    base.set_token(vec![1, 2]);
    base.payload = PAYLOAD_11.as_bytes().to_vec();
    let bytes = base.to_bytes().unwrap();
    let mut state = 7u64;
    for i in 0..2000u32 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut m = bytes.clone();
        for k in 0..3 {
            let at = ((state >> (8 + k * 16)) as usize) % m.len();
            m[at] ^= (state >> (k * 8)) as u8;
        }
        m.truncate(4 + ((state >> 40) as usize) % m.len());
        w.raw(addr(62000 + (i % 50) as u16), &m);
        if i % 100 == 0 {
            w.advance(Duration::from_secs(1));
        }
    }
    // Whatever got registered is consistent.
    for r in w.a.registrations() {
        assert_eq!(w.a.registration(&r.endpoint), Some(r));
    }
}

#[test]
fn timers_stay_bounded_and_lifetimes_follow_updates() {
    let mut w = world(ServerConfig {
        awake_time: Duration::from_secs(20),
        ..Default::default()
    });
    let p = w.peer(40001);
    w.register(p, &["ep=q", "lwm2m=1.1", "Q", "lt=600"], PAYLOAD_11);
    let id = w.registered("q").id;
    // A chatty queue-mode client: one Update a second keeps one entry of each kind.
    for _ in 0..50 {
        w.advance(Duration::from_secs(1));
        assert_eq!(code(&w.update(p, &id, &[])), (2, 4));
    }
    assert!(w.a.timers.len() <= 2, "{}", w.a.timers.len());
    assert!(w.a.is_awake("q"));
    // A shorter lifetime takes effect at once.
    assert_eq!(code(&w.update(p, &id, &["lt=5"])), (2, 4));
    w.events.clear();
    w.advance(Duration::from_secs(6));
    let events = w.take(|_| true);
    assert!(
        matches!(&events[..], [ServerEvent::Expired { registration }] if registration.id == id),
        "{events:?}"
    );
    // Nothing of it is left in the heap once stale entries are skipped.
    w.a.poll_timeout();
    assert!(w.a.timers.is_empty());
}

#[test]
fn entering_and_leaving_queue_mode_by_update() {
    let mut w = world(ServerConfig {
        awake_time: Duration::from_secs(10),
        ..Default::default()
    });
    let p = registered_11(&mut w, 40001, "dev1");
    let id = w.registered("dev1").id;
    // b=U with Q: queue mode from now, awake without an Awake event.
    assert_eq!(code(&w.update(p, &id, &["Q"])), (2, 4));
    assert!(w.registered("dev1").queue_mode);
    assert!(
        w.take(|e| matches!(e, ServerEvent::Awake { .. }))
            .is_empty()
    );
    w.advance(Duration::from_secs(11));
    assert!(!w.a.is_awake("dev1"));
    let held = w.op(
        "dev1",
        Operation::Read {
            path: Lwm2mPath::resource(3, 0, 0),
            format: Some(ContentFormat::Text),
        },
    );
    w.no_request(p);
    // b=U without Q: queue mode ends; the held request goes out.
    assert_eq!(code(&w.update(p, &id, &["b=U"])), (2, 4));
    assert!(!w.registered("dev1").queue_mode);
    let req = w.incoming(p);
    w.respond(p, req, reply(ResponseType::Content, None, b"ACME".to_vec()));
    assert!(w.ok(held).is_success());
    w.advance(Duration::from_secs(30));
    assert!(w.a.is_awake("dev1"));
    assert!(w.take(|e| matches!(e, ServerEvent::Sleeping { .. })).len() == 1);
}

#[test]
fn undecodable_observe_answers_and_notifications() {
    let mut w = world(ServerConfig::default());
    let p = registered_11(&mut w, 40001, "dev1");
    // An Observe whose first answer cannot be decoded fails and leaves nothing behind.
    let op = w.op(
        "dev1",
        Operation::Observe {
            path: Lwm2mPath::resource(3, 0, 9),
            format: Some(ContentFormat::SenmlCbor),
        },
    );
    let req = w.incoming(p);
    let now = w.now;
    let served = w.peers[p]
        .accept_observation(
            now,
            req.handle,
            reply(
                ResponseType::Content,
                Some(ContentFormat::SenmlCbor),
                vec![0xff],
            ),
        )
        .unwrap();
    w.pump();
    assert!(matches!(w.completed(op).0, Err(OpError::Decode { .. })));
    assert!(w.a.observations("dev1").is_empty());
    notify(&mut w, p, served, "1");
    assert!(w.peers[p].inbox.iter().any(|e| matches!(
        e,
        Event::ObservationCancelled {
            reason: CancelReason::Reset,
            ..
        }
    )));
    // A value of the wrong type is kept, with a finding.
    let (obs, served) = observe(&mut w, p, "dev1");
    let now = w.now;
    let odd = reply(
        ResponseType::Content,
        Some(ContentFormat::Text),
        b"high".to_vec(),
    );
    w.peers[p].notify(now, served, odd, false).unwrap();
    w.pump();
    let n = w.take(|e| matches!(e, ServerEvent::Notification { .. }));
    assert!(
        matches!(
            &n[..],
            [ServerEvent::Notification { observation, response, .. }]
                if *observation == obs
                    && response.content == Some(Content::Node(single(Value::String("high".into()))))
                    && matches!(response.findings[..], [Finding::TypeMismatch { .. }])
        ),
        "{n:?}"
    );
    // A notification that cannot be decoded is reported with the reason.
    let now = w.now;
    let bad = reply(
        ResponseType::Content,
        Some(ContentFormat::SenmlCbor),
        vec![0xff],
    );
    w.peers[p].notify(now, served, bad, false).unwrap();
    w.pump();
    let n = w.take(|e| matches!(e, ServerEvent::Notification { .. }));
    assert!(
        matches!(
            &n[..],
            [ServerEvent::Notification { observation, response, .. }]
                if *observation == obs && response.content.is_none()
                    && response.format == Some(ContentFormat::SenmlCbor)
                    && response.diagnostic.as_deref().is_some_and(|d| d.contains("senml"))
        ),
        "{n:?}"
    );
}

#[test]
fn single_values_of_a_1_0_client_go_as_text_or_opaque() {
    // Core TS 1.0 §6.4.1, §6.4.2. A pre-1.0 peer registering as 1.0 without announcing its
    // formats (npm lwm2m-node-lib) drops a request with Accept 11542: single values go as
    // text/plain (octet-stream for Opaque), which every version numbers alike.
    let mut w = world(ServerConfig::default());
    let p = w.peer(42001);
    w.register(p, &["ep=ten", "lwm2m=1.0"], "</3/0>,</5/0>");
    let cases = [
        (Lwm2mPath::resource(3, 0, 0), Some(0)),
        (Lwm2mPath::resource_instance(3, 0, 11, 0), Some(0)),
        (Lwm2mPath::resource(5, 0, 0), Some(42)),
        (Lwm2mPath::resource(3, 0, 11), Some(11542)),
        (Lwm2mPath::instance(3, 0), Some(11542)),
        (Lwm2mPath::resource(3, 0, 999), Some(11542)),
    ];
    for (path, accept) in cases {
        let op = w.op("ten", Operation::Read { path, format: None });
        let req = w.incoming(p);
        assert_eq!(
            uint_option(&req.packet, CoapOption::Accept),
            accept,
            "{path}"
        );
        let answer = match accept {
            Some(0) => reply(ResponseType::Content, None, b"ACME".to_vec()),
            _ => reply(ResponseType::NotFound, None, vec![]),
        };
        w.respond(p, req, answer);
        let response = w.ok(op);
        if accept == Some(0) && path == Lwm2mPath::resource(3, 0, 0) {
            // No Content-Format in the answer: decoded as asked.
            assert_eq!(
                response.content,
                Some(Content::Node(single(Value::String("ACME".into()))))
            );
        }
    }
    // Writes of a single value likewise; an instance stays TLV.
    let op = w.op(
        "ten",
        Operation::Write {
            path: Lwm2mPath::resource(3, 0, 14),
            node: single(Value::String("+02".into())),
            replace: true,
            format: None,
        },
    );
    let req = w.incoming(p);
    assert_eq!(uint_option(&req.packet, CoapOption::ContentFormat), Some(0));
    assert_eq!(req.packet.payload, b"+02");
    w.respond(p, req, reply(ResponseType::Changed, None, vec![]));
    w.ok(op);
    // A 1.1 client keeps the format of its announcement.
    let q = w.peer(42002);
    w.register(q, &["ep=eleven", "lwm2m=1.1"], "</3/0>");
    w.op(
        "eleven",
        Operation::Read {
            path: Lwm2mPath::resource(3, 0, 0),
            format: None,
        },
    );
    let req = w.incoming(q);
    assert_eq!(uint_option(&req.packet, CoapOption::Accept), Some(11542));
}

#[test]
fn another_machine_adopts_a_registration_and_restores_its_observation() {
    let mut w = world(ServerConfig::default());
    let p = registered_11(&mut w, 40051, "dev1");
    let registration = w.registered("dev1");
    let (obs, served) = observe(&mut w, p, "dev1");
    let record = w.a.observation_record(obs).expect("established");
    assert_eq!(record.paths, [Lwm2mPath::resource(3, 0, 9)]);
    assert_eq!(record.accept, Some(0));
    assert!(!record.composite);

    // A new machine at the same address (a restart, or another instance of a cluster).
    w.a = Lwm2mServer::new(
        ServerConfig::default(),
        Arc::new(crate::registry::Registry::embedded()),
    );
    let id = registration.id.clone();
    let mut update = message::request(RequestType::Post, &format!("/rd/{id}"));
    update.header.message_id = 7;
    assert_eq!(
        crate::admission::registration_id_of(&update.to_bytes().unwrap()),
        Some(id.clone())
    );
    assert_eq!(crate::admission::registration_id_of(b"\x40"), None);
    assert!(!w.a.knows_registration_id(&id));
    assert_eq!(code(&w.update(p, &id, &[])), (4, 4));

    w.events.clear();
    let now = w.now;
    w.a.adopt(now, registration);
    w.pump();
    assert!(w.a.knows_registration_id(&id));
    assert!(w.events.is_empty(), "an adoption is not a registration");
    let restored =
        w.a.restore_observation(now, "dev1", &record)
            .expect("restored");
    assert_eq!(
        w.a.observations("dev1"),
        [(restored, vec![Lwm2mPath::resource(3, 0, 9)])]
    );
    // The client's next notification (same token) is the restored observation's.
    notify(&mut w, p, served, "85");
    let n = w.take(|e| matches!(e, ServerEvent::Notification { .. }));
    assert!(matches!(
        &n[..],
        [ServerEvent::Notification { observation, response, .. }]
            if *observation == restored
                && response.content == Some(Content::Node(single(Value::Integer(85))))
    ));
    assert_eq!(code(&w.update(p, &id, &["lt=400"])), (2, 4));
    // The same token cannot be taken up twice; an unknown endpoint is refused.
    assert!(w.a.restore_observation(now, "dev1", &record).is_err());
    assert!(w.a.restore_observation(now, "nobody", &record).is_err());

    // Released (another instance took it over): gone without a de-registration.
    w.events.clear();
    w.a.release(now, "dev1");
    assert!(w.a.registration("dev1").is_none());
    assert!(!w.a.knows_registration_id(&id));
    assert!(!w.events.iter().any(|(_, e)| matches!(
        e,
        ServerEvent::Deregistered { .. } | ServerEvent::Expired { .. }
    )));
}
