//! Tests of the Bootstrap Server machine.

use std::sync::Arc;

use proptest::prelude::*;

use std::convert::Infallible;

use super::*;
use crate::bootstrap::config::{
    AclInstance, SecurityInstance, SecurityMode, ServerInstance, security_from_instance,
};
use crate::client::tree::{DmError, ObjectTree, WriteMode};
use crate::coap::{RequestHandle, message::add_query};
use crate::ids::InstanceId;
use crate::machine::Machine;
use crate::node::{Instance, Node, ResourceValue};
use crate::registry::Registry;
use crate::testing::{Link, Pair};
use crate::value::Value;

fn server_addr() -> SocketAddr {
    "127.0.0.1:5683".parse().unwrap()
}

fn client_addr() -> SocketAddr {
    "127.0.0.7:56830".parse().unwrap()
}

/// One request the scripted client received.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: RequestType,
    path: String,
    format: Option<u32>,
    accept: Option<u32>,
    payload: Vec<u8>,
}

impl Seen {
    fn line(&self) -> String {
        format!("{:?} {}", self.method, self.path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Serves every request.
    Answer,
    /// Drops every datagram from the server (gone off the network).
    Mute,
    /// Accepts requests but never responds (the exchange layer sends an empty ACK).
    Stall,
}

/// A scripted LwM2M client: a CoAP endpoint and an object tree with Bootstrap semantics.
struct Client {
    coap: Endpoint,
    tree: ObjectTree,
    seen: Vec<Seen>,
    /// Answer this method on this path with this code instead of serving it.
    fail: Option<(RequestType, &'static str, ResponseType)>,
    mode: Mode,
    /// Codes of the responses to the client's own requests.
    answers: Vec<(u8, u8)>,
}

fn string(s: &str) -> ResourceValue {
    ResourceValue::Single(Value::String(s.into()))
}

fn int(i: i64) -> ResourceValue {
    ResourceValue::Single(Value::Integer(i))
}

fn boolean(b: bool) -> ResourceValue {
    ResourceValue::Single(Value::Boolean(b))
}

impl Client {
    /// Factory state: a Bootstrap-Server account in /0/0, an old server account in /0/1
    /// and /1/0, and the Device object.
    fn new() -> Self {
        let registry = Registry::embedded();
        let mut tree = ObjectTree::new();
        for o in 0..=3 {
            let def = registry.object(ObjectId(o)).unwrap().clone();
            tree.add_object(Arc::new(def), None);
        }
        let account = |uri: &str, bs: bool| -> Instance {
            [
                (crate::ResourceId(0), string(uri)),
                (crate::ResourceId(1), boolean(bs)),
                (crate::ResourceId(2), int(3)),
            ]
            .into()
        };
        tree.put_instance(
            ObjectId(0),
            InstanceId(0),
            account("coap://bs.example:5683", true),
        );
        tree.put_instance(
            ObjectId(0),
            InstanceId(1),
            account("coap://old.example:5683", false),
        );
        tree.put_instance(
            ObjectId(1),
            InstanceId(0),
            [
                (crate::ResourceId(0), int(99)),
                (crate::ResourceId(1), int(60)),
            ]
            .into(),
        );
        tree.put_instance(
            ObjectId(3),
            InstanceId(0),
            [(crate::ResourceId(0), string("ACME"))].into(),
        );
        Self {
            coap: Endpoint::new(coap::Config {
                seed: 7,
                ..coap::Config::default()
            }),
            tree,
            seen: Vec::new(),
            fail: None,
            mode: Mode::Answer,
            answers: Vec::new(),
        }
    }

    fn on_request(&mut self, now: Instant, request: IncomingRequest) {
        let packet = &request.packet;
        let seen = Seen {
            method: request.method().unwrap(),
            path: request.path(),
            format: uint_option(packet, CoapOption::ContentFormat),
            accept: uint_option(packet, CoapOption::Accept),
            payload: packet.payload.clone(),
        };
        self.seen.push(seen.clone());
        if self.mode == Mode::Stall {
            return;
        }
        let (code, format, payload) = self.serve(&seen);
        let mut response = message::response(code, payload);
        if let Some(f) = format {
            set_option(
                &mut response,
                CoapOption::ContentFormat,
                uint_bytes(f.code().into()),
            );
        }
        self.respond(now, request.handle, response);
    }

    fn respond(&mut self, now: Instant, handle: RequestHandle, response: Packet) {
        self.coap.respond(now, handle, response).unwrap();
    }

    /// Core TS 1.1 §5.2.7 as the client sees it.
    fn serve(&mut self, seen: &Seen) -> (ResponseType, Option<ContentFormat>, Vec<u8>) {
        let refused = |e: DmError| match e.coap_code() {
            (4, 4) => ResponseType::NotFound,
            (4, 5) => ResponseType::MethodNotAllowed,
            _ => ResponseType::BadRequest,
        };
        if let Some((method, path, code)) = self.fail
            && method == seen.method
            && path == seen.path
        {
            return (code, None, Vec::new());
        }
        if seen.path == "/bs" && seen.method == RequestType::Post {
            return (ResponseType::Changed, None, Vec::new());
        }
        let path: Lwm2mPath = seen.path.parse().unwrap();
        let format = |code: Option<u32>| {
            code.and_then(|c| ContentFormat::from_code(c as u16))
                .unwrap_or(ContentFormat::Tlv)
        };
        match seen.method {
            RequestType::Delete => match self.tree.bootstrap_delete(&path) {
                Ok(()) => (ResponseType::Deleted, None, Vec::new()),
                Err(e) => (refused(e), None, Vec::new()),
            },
            RequestType::Put => {
                let f = format(seen.format);
                let node = content::decode(f, &seen.payload, &path, &self.tree)
                    .unwrap()
                    .content;
                match self.tree.write(&path, &node, WriteMode::Replace, true) {
                    Ok(()) => (ResponseType::Changed, None, Vec::new()),
                    Err(e) => (refused(e), None, Vec::new()),
                }
            }
            RequestType::Get if seen.accept == Some(40) => {
                let mut links = vec!["lwm2m=\"1.1\"".to_owned()];
                for o in self.tree.object_ids().collect::<Vec<_>>() {
                    let instances = self.tree.instance_ids(o);
                    if instances.is_empty() {
                        links.push(format!("</{}>", o.0));
                    }
                    links.extend(instances.iter().map(|i| format!("</{}/{}>", o.0, i.0)));
                }
                let body = links.join(",").into_bytes();
                (ResponseType::Content, Some(ContentFormat::LinkFormat), body)
            }
            RequestType::Get => {
                let f = format(seen.accept);
                match self.tree.read(&path) {
                    Ok(node) => {
                        let body = content::encode(f, &path, &node).unwrap();
                        (ResponseType::Content, Some(f), body)
                    }
                    Err(e) => (refused(e), None, Vec::new()),
                }
            }
            _ => (ResponseType::MethodNotAllowed, None, Vec::new()),
        }
    }

    /// The decoded payload of the PUT the client received on `path`.
    fn written(&self, path: &str) -> Node {
        let seen = self
            .seen
            .iter()
            .find(|s| s.method == RequestType::Put && s.path == path)
            .unwrap();
        let format = ContentFormat::from_code(seen.format.unwrap() as u16).unwrap();
        let target: Lwm2mPath = path.parse().unwrap();
        content::decode(format, &seen.payload, &target, &self.tree)
            .unwrap()
            .content
    }

    fn lines(&self) -> Vec<String> {
        self.seen.iter().map(Seen::line).collect()
    }
}

/// The scripted client as a machine of the rig: it serves requests the moment they arrive.
impl Machine for Client {
    type Event = Infallible;

    fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        if self.mode != Mode::Mute {
            self.coap.handle_datagram(now, peer, bytes);
        }
        self.process(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.coap.handle_timeout(now);
        self.process(now);
    }

    fn poll_transmit(&mut self) -> Option<coap::Transmit> {
        self.coap.poll_transmit()
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.coap.poll_timeout()
    }

    fn poll_event(&mut self) -> Option<Infallible> {
        None
    }
}

impl Client {
    /// Serves the requests, and notes the codes of the responses, the endpoint reported.
    fn process(&mut self, now: Instant) {
        while let Some(event) = self.coap.poll_event() {
            match event {
                Event::Request { request, .. } => self.on_request(now, request),
                Event::Response { response, .. } => {
                    self.answers
                        .push(crate::coap::message::code_pair(response.header.code));
                }
                _ => {}
            }
        }
    }
}

/// The Bootstrap Server (`a`) and the scripted client (the one peer) on the shared rig.
struct Net {
    pair: Pair<BootstrapServer, Client>,
    /// What the server reported.
    events: Vec<BootstrapEvent>,
}

impl Net {
    fn new(session_timeout: Duration) -> Self {
        let config = BootstrapServerConfig {
            coap: coap::Config {
                seed: 42,
                ..coap::Config::default()
            },
            session_timeout,
        };
        let server = BootstrapServer::new(config, Box::new(source()));
        let mut pair = Pair::new(server_addr(), server, Link::default(), 0);
        pair.add_peer(client_addr(), Client::new());
        Self {
            pair,
            events: Vec::new(),
        }
    }

    fn client(&mut self) -> &mut Client {
        &mut self.pair.peers[0].machine
    }

    /// Moves datagrams both ways until nothing moves.
    fn pump(&mut self) {
        self.pair.pump();
        self.take_events();
    }

    fn take_events(&mut self) {
        let events = self.pair.events.drain(..).map(|(_, e)| e);
        self.events.extend(events);
    }

    /// Lets virtual time pass, timer by timer, until `done` or `limit` elapsed.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Net) -> bool) {
        let end = self.pair.now + limit;
        self.pump();
        while !done(self) {
            let Some(next) = self.pair.next_due().filter(|t| *t <= end) else {
                return;
            };
            self.pair.run(next);
            self.take_events();
        }
    }

    /// The client sends a request to the Bootstrap Server.
    fn send(&mut self, method: RequestType, path: &str, query: &[&str]) {
        let mut packet = message::request(method, path);
        for q in query {
            add_query(&mut packet, q);
        }
        let now = self.pair.now;
        self.client()
            .coap
            .send_request(now, server_addr(), packet)
            .unwrap();
        self.pump();
    }

    fn bootstrap_request(&mut self, query: &[&str]) {
        self.send(RequestType::Post, "/bs", query);
    }

    fn steps(&self) -> Vec<(&'static str, Option<Lwm2mPath>, (u8, u8))> {
        self.events
            .iter()
            .filter_map(|e| match e {
                BootstrapEvent::Step {
                    step, path, code, ..
                } => Some((*step, *path, *code)),
                _ => None,
            })
            .collect()
    }

    fn failed(&self) -> Option<(&'static str, Option<Lwm2mPath>, FailureReason)> {
        self.events.iter().find_map(|e| match e {
            BootstrapEvent::Failed {
                step, path, reason, ..
            } => Some((*step, *path, reason.clone())),
            _ => None,
        })
    }
}

fn security(identity: &str) -> SecurityInstance {
    SecurityInstance {
        uri: "coaps://lwm2m.example:5684".into(),
        bootstrap_server: false,
        mode: SecurityMode::Psk,
        identity: identity.into(),
        server_public_key: String::new(),
        secret_key: "00112233445566778899aabbccddeeff".into(),
        short_server_id: Some(1),
        client_hold_off: None,
        bootstrap_account_timeout: None,
    }
}

fn config(identity: &str) -> BootstrapConfig {
    BootstrapConfig {
        delete: vec![Lwm2mPath::object(0), Lwm2mPath::object(1)],
        security: [(1, security(identity))].into(),
        servers: [(
            0,
            ServerInstance {
                short_server_id: 1,
                lifetime: 86_400,
                default_min_period: None,
                default_max_period: None,
                notification_storing: false,
                binding: "U".into(),
            },
        )]
        .into(),
        ..BootstrapConfig::default()
    }
}

/// `dev-1` and `dev-2` have their own configurations, `sensor-*` endpoints fall back to a
/// pattern whose PSK identity is the endpoint name; nothing else is known.
fn source() -> MemoryConfigSource {
    let mut dev2 = config("dev-2-id");
    dev2.discover = true;
    dev2.acl = [(
        0,
        AclInstance {
            object_id: 3,
            instance_id: 0,
            acl: [(1, 31)].into(),
            owner: 1,
        },
    )]
    .into();
    dev2.read = vec![Lwm2mPath::object(1), Lwm2mPath::instance(2, 0)];
    let mut bad = config("x");
    bad.read = vec![Lwm2mPath::object(0)];
    MemoryConfigSource {
        endpoints: [
            ("dev-1".to_owned(), config("dev-1-id")),
            ("dev-2".to_owned(), dev2),
            ("bad-1".to_owned(), bad),
        ]
        .into(),
        patterns: [
            ("sensor-*".to_owned(), config("{ep}")),
            ("s*".to_owned(), config("generic")),
        ]
        .into(),
    }
}

const TLV: Option<u32> = Some(11542);

#[test]
fn client_initiated_bootstrap_with_fallback_pattern() {
    let mut net = Net::new(Duration::from_secs(300));
    net.bootstrap_request(&["ep=sensor-7"]);
    // Core TS 1.1 §5.2.7.1: the Bootstrap-Request is answered 2.04.
    assert_eq!(net.client().answers, vec![(2, 4)]);
    assert_eq!(
        net.client().lines(),
        ["Delete /0", "Delete /1", "Put /0/1", "Put /1/0", "Post /bs"]
    );
    assert!(
        net.client()
            .seen
            .iter()
            .filter(|s| s.method == RequestType::Put)
            .all(|s| s.format == TLV)
    );
    // The TLV payloads decode to the configuration's instances, `{ep}` substituted.
    let Node::Instance(sec) = net.client().written("/0/1") else {
        panic!("instance expected")
    };
    assert_eq!(security_from_instance(&sec), Some(security("sensor-7")));
    let expected = config("sensor-7").writes();
    assert_eq!(net.client().written("/1/0"), expected[1].1);
    // The client's tree: the Bootstrap-Server account survived the deletes, the old
    // server account is gone, the new one is in place.
    assert!(
        net.client()
            .tree
            .instance(ObjectId(0), InstanceId(0))
            .is_some()
    );
    let Node::Instance(server) = &expected[1].1 else {
        panic!("instance expected")
    };
    assert_eq!(
        net.client().tree.instance(ObjectId(1), InstanceId(0)),
        Some(server)
    );
    let step = |step, path: Option<Lwm2mPath>, code| BootstrapEvent::Step {
        endpoint: "sensor-7".into(),
        step,
        path,
        code,
        detail: None,
    };
    assert_eq!(
        net.events,
        vec![
            BootstrapEvent::SessionStarted {
                endpoint: "sensor-7".into(),
                peer: client_addr(),
                config: "pattern sensor-*".into(),
                initiated_by_client: true,
                format: ContentFormat::Tlv,
            },
            step("delete", Some(Lwm2mPath::object(0)), (2, 2)),
            step("delete", Some(Lwm2mPath::object(1)), (2, 2)),
            step("write", Some(Lwm2mPath::instance(0, 1)), (2, 4)),
            step("write", Some(Lwm2mPath::instance(1, 0)), (2, 4)),
            step("finish", None, (2, 4)),
            BootstrapEvent::Finished {
                endpoint: "sensor-7".into(),
                duration: Duration::ZERO,
            },
        ]
    );
    assert!(!net.pair.a.is_running("sensor-7"));
}

#[test]
fn own_configuration_wins_over_patterns() {
    let s = source();
    assert_eq!(s.lookup("dev-1").unwrap().0, "endpoint dev-1");
    assert_eq!(s.lookup("sensor-1").unwrap().0, "pattern sensor-*");
    let (label, generic) = s.lookup("s1").unwrap();
    assert_eq!(label, "pattern s*");
    assert_eq!(generic.security[&1].identity, "generic");
    assert!(s.lookup("meter-1").is_none());
}

#[test]
fn unknown_endpoint_is_refused_with_bad_request() {
    let mut net = Net::new(Duration::from_secs(300));
    net.bootstrap_request(&["ep=meter-1"]);
    assert_eq!(net.client().answers, vec![(4, 0)]);
    assert!(net.client().seen.is_empty());
    assert!(matches!(
        &net.events[..],
        [BootstrapEvent::Refused { peer, endpoint: Some(e), code: (4, 0), reason }]
            if *peer == client_addr() && e == "meter-1" && reason.contains("unknown endpoint")
    ));
}

/// Refuses to provision `dev-1`; everything else starts.
struct Provisioning(MemoryConfigSource);

impl ConfigSource for Provisioning {
    fn lookup(&self, endpoint: &str) -> Option<(String, BootstrapConfig)> {
        self.0.lookup(endpoint)
    }
    fn session_starting(
        &self,
        endpoint: &str,
        config: &BootstrapConfig,
    ) -> Result<(), BootstrapError> {
        let expected = if endpoint.starts_with("dev-") {
            format!("{endpoint}-id")
        } else {
            endpoint.to_owned()
        };
        assert_eq!(config.security[&1].identity, expected);
        match endpoint {
            "dev-1" => Err(BootstrapError::Provisioning {
                endpoint: endpoint.into(),
                reason: "identity taken".into(),
            }),
            "dev-2" => Err(BootstrapError::Forbidden {
                endpoint: endpoint.into(),
                reason: "not over plain CoAP".into(),
            }),
            _ => Ok(()),
        }
    }
}

#[test]
fn a_session_the_source_cannot_provision_is_refused_with_its_reason() {
    let mut net = Net::new(Duration::from_secs(300));
    net.pair.a = BootstrapServer::new(
        BootstrapServerConfig::default(),
        Box::new(Provisioning(source())),
    );
    net.bootstrap_request(&["ep=dev-1"]);
    assert_eq!(net.client().answers, vec![(5, 0)]);
    assert!(net.client().seen.is_empty(), "nothing handed out");
    assert!(matches!(
        &net.events[..],
        [BootstrapEvent::Refused { endpoint: Some(e), code: (5, 0), reason, .. }]
            if e == "dev-1" && reason == "cannot provision \"dev-1\": identity taken"
    ));
    assert_eq!(
        net.pair.a.start(net.pair.now, "dev-1", client_addr()),
        Err(BootstrapError::Provisioning {
            endpoint: "dev-1".into(),
            reason: "identity taken".into()
        })
    );
    net.bootstrap_request(&["ep=dev-2"]);
    assert_eq!(net.client().answers, vec![(5, 0), (4, 3)]);
    net.bootstrap_request(&["ep=sensor-1"]);
    assert_eq!(net.client().answers, vec![(5, 0), (4, 3), (2, 4)]);
}

#[test]
fn malformed_requests_get_their_codes() {
    let mut net = Net::new(Duration::from_secs(300));
    net.bootstrap_request(&[]); // no ep
    net.bootstrap_request(&["ep=dev-1", "pct=abc"]);
    net.bootstrap_request(&["ep=dev-1", "pct=0"]); // text/plain: not multi-node
    net.bootstrap_request(&["ep=dev-1", "pct=1542"]); // legacy TLV number
    net.send(RequestType::Get, "/bs", &["ep=dev-1"]);
    net.send(RequestType::Post, "/rd", &["ep=dev-1"]);
    net.bootstrap_request(&["ep=bad-1"]); // configuration reads /0
    let codes = vec![(4, 0), (4, 0), (4, 15), (4, 15), (4, 5), (4, 4), (5, 0)];
    assert_eq!(net.client().answers, codes);
    let refused: Vec<_> = net
        .events
        .iter()
        .filter_map(|e| match e {
            BootstrapEvent::Refused { endpoint, code, .. } => Some((endpoint.clone(), *code)),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), codes.len());
    assert_eq!(refused[0], (None, (4, 0)));
    assert!(
        refused[1..]
            .iter()
            .all(|(e, _)| e.as_deref() == Some("dev-1") || e.as_deref() == Some("bad-1"))
    );
    assert_eq!(refused.iter().map(|r| r.1).collect::<Vec<_>>(), codes);
    assert!(net.client().seen.is_empty(), "no session started");
}

#[test]
fn preferred_content_format_senml_cbor_is_honoured() {
    let mut net = Net::new(Duration::from_secs(300));
    net.bootstrap_request(&["ep=sensor-9", "pct=112"]);
    assert_eq!(net.client().answers, vec![(2, 4)]);
    let puts: Vec<&Seen> = net
        .client()
        .seen
        .iter()
        .filter(|s| s.method == RequestType::Put)
        .collect();
    assert_eq!(puts.len(), 2);
    assert!(puts.iter().all(|s| s.format == Some(112)));
    let expected = config("sensor-9").writes();
    assert_eq!(net.client().written("/0/1"), expected[0].1);
    assert_eq!(net.client().written("/1/0"), expected[1].1);
    assert!(matches!(
        net.events.first(),
        Some(BootstrapEvent::SessionStarted {
            format: ContentFormat::SenmlCbor,
            ..
        })
    ));
    assert!(matches!(
        net.events.last(),
        Some(BootstrapEvent::Finished { .. })
    ));
}

#[test]
fn discover_writes_acl_and_reads() {
    let mut net = Net::new(Duration::from_secs(300));
    net.bootstrap_request(&["ep=dev-2"]);
    assert_eq!(
        net.client().lines(),
        [
            "Get /",
            "Delete /0",
            "Delete /1",
            "Put /0/1",
            "Put /1/0",
            "Put /2/0",
            "Get /1",
            "Get /2/0",
            "Post /bs"
        ]
    );
    assert_eq!(net.client().seen[0].accept, Some(40));
    assert_eq!(net.client().seen[6].accept, TLV);
    let Some(BootstrapEvent::Step {
        step: "discover",
        path: Some(Lwm2mPath::Root),
        code: (2, 5),
        detail: Some(links),
        ..
    }) = net.events.get(1)
    else {
        panic!("discover step expected: {:?}", net.events)
    };
    assert!(
        links.contains("</0/0>") && links.contains("</0/1>"),
        "{links}"
    );
    let reads: Vec<_> = net
        .events
        .iter()
        .filter_map(|e| match e {
            BootstrapEvent::Step {
                step: "read",
                path,
                code,
                detail,
                ..
            } => Some((*path, *code, detail.clone().unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(reads.len(), 2);
    assert_eq!(reads[1].0, Some(Lwm2mPath::instance(2, 0)));
    assert_eq!(reads[1].1, (2, 5));
    // The read-back ACL instance is the one written.
    let hex = reads[1].2.strip_prefix("tlv: ").unwrap();
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let node = content::decode(
        ContentFormat::Tlv,
        &bytes,
        &Lwm2mPath::instance(2, 0),
        &net.client().tree,
    )
    .unwrap()
    .content;
    let acl = source().lookup("dev-2").unwrap().1.writes();
    assert_eq!(node, acl[2].1);
    assert!(matches!(
        net.events.last(),
        Some(BootstrapEvent::Finished { .. })
    ));
}

#[test]
fn error_answer_to_a_write_fails_the_session_naming_step_and_path() {
    let mut net = Net::new(Duration::from_secs(300));
    net.client().fail = Some((RequestType::Put, "/1/0", ResponseType::BadRequest));
    net.bootstrap_request(&["ep=dev-1"]);
    assert_eq!(
        net.client().lines(),
        ["Delete /0", "Delete /1", "Put /0/1", "Put /1/0"],
        "no Bootstrap-Finish after a failed write"
    );
    assert_eq!(
        net.failed(),
        Some((
            "write",
            Some(Lwm2mPath::instance(1, 0)),
            FailureReason::Code {
                code: (4, 0),
                expected: (2, 4)
            }
        ))
    );
    assert_eq!(net.steps().len(), 3);
    assert!(!net.pair.a.is_running("dev-1"));
    assert!(
        !net.events
            .iter()
            .any(|e| matches!(e, BootstrapEvent::Finished { .. }))
    );
}

#[test]
fn finish_refused_as_inconsistent_fails_the_finish_step() {
    // ETS int-9: Bootstrap-Finish answered 4.06 Not Acceptable.
    let mut net = Net::new(Duration::from_secs(300));
    net.client().fail = Some((RequestType::Post, "/bs", ResponseType::NotAcceptable));
    net.bootstrap_request(&["ep=dev-1"]);
    assert_eq!(
        net.failed(),
        Some((
            "finish",
            None,
            FailureReason::Code {
                code: (4, 6),
                expected: (2, 4)
            }
        ))
    );
}

#[test]
fn silent_client_fails_when_the_exchange_gives_up() {
    let mut net = Net::new(Duration::from_secs(300));
    net.client().mode = Mode::Mute;
    net.pair
        .a
        .start(net.pair.now, "dev-1", client_addr())
        .unwrap();
    net.run_until(Duration::from_secs(200), |n| n.failed().is_some());
    assert_eq!(
        net.failed(),
        Some((
            "delete",
            Some(Lwm2mPath::object(0)),
            FailureReason::Exchange(ExchangeError::Timeout { transmissions: 5 })
        ))
    );
    // RFC 7252 §4.8.2: the sender gives up within MAX_TRANSMIT_WAIT.
    assert!(net.pair.now - net.pair.start <= Duration::from_secs(93));
    assert_eq!(net.pair.a.counters().retransmissions, 4);
    assert!(!net.pair.a.is_running("dev-1"));
}

#[test]
fn session_timeout_fails_a_stalled_session() {
    let mut net = Net::new(Duration::from_secs(10));
    net.client().mode = Mode::Stall;
    net.bootstrap_request(&["ep=dev-1"]);
    assert_eq!(net.client().answers, vec![(2, 4)]);
    net.run_until(Duration::from_secs(60), |n| n.failed().is_some());
    assert_eq!(
        net.failed(),
        Some((
            "delete",
            Some(Lwm2mPath::object(0)),
            FailureReason::SessionTimeout {
                limit: Duration::from_secs(10)
            }
        ))
    );
    assert_eq!(net.pair.now - net.pair.start, Duration::from_secs(10));
    assert_eq!(net.client().lines(), ["Delete /0"]);
}

#[test]
fn new_bootstrap_request_restarts_the_session() {
    let mut net = Net::new(Duration::from_secs(300));
    net.client().mode = Mode::Stall;
    net.bootstrap_request(&["ep=dev-1"]);
    net.client().mode = Mode::Answer;
    net.bootstrap_request(&["ep=dev-1"]);
    assert_eq!(net.client().answers, vec![(2, 4), (2, 4)]);
    let kinds: Vec<&str> = net
        .events
        .iter()
        .map(|e| match e {
            BootstrapEvent::SessionStarted { .. } => "started",
            BootstrapEvent::Step { .. } => "step",
            BootstrapEvent::Finished { .. } => "finished",
            BootstrapEvent::Failed { .. } => "failed",
            BootstrapEvent::Refused { .. } => "refused",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "started", "failed", "started", "step", "step", "step", "step", "step", "finished"
        ]
    );
    assert_eq!(
        net.failed(),
        Some((
            "delete",
            Some(Lwm2mPath::object(0)),
            FailureReason::Restarted
        ))
    );
    assert_eq!(
        net.client().lines().first().map(String::as_str),
        Some("Delete /0")
    );
    assert_eq!(
        net.client().lines().last().map(String::as_str),
        Some("Post /bs")
    );
}

#[test]
fn server_initiated_bootstrap() {
    let mut net = Net::new(Duration::from_secs(300));
    let unknown = net.pair.a.start(net.pair.now, "meter-1", client_addr());
    assert_eq!(
        unknown,
        Err(BootstrapError::UnknownEndpoint {
            endpoint: "meter-1".into()
        })
    );
    net.pair
        .a
        .start(net.pair.now, "dev-1", client_addr())
        .unwrap();
    let again = net.pair.a.start(net.pair.now, "dev-1", client_addr());
    assert!(matches!(again, Err(BootstrapError::SessionRunning { .. })));
    net.pump();
    assert!(
        net.client().answers.is_empty(),
        "no Bootstrap-Request was sent"
    );
    assert_eq!(
        net.client().lines(),
        ["Delete /0", "Delete /1", "Put /0/1", "Put /1/0", "Post /bs"]
    );
    let Node::Instance(sec) = net.client().written("/0/1") else {
        panic!("instance expected")
    };
    assert_eq!(security_from_instance(&sec), Some(security("dev-1-id")));
    assert!(matches!(
        net.events.first(),
        Some(BootstrapEvent::SessionStarted {
            initiated_by_client: false,
            config,
            ..
        }) if config == "endpoint dev-1"
    ));
    assert!(matches!(
        net.events.last(),
        Some(BootstrapEvent::Finished { endpoint, .. }) if endpoint == "dev-1"
    ));
}

#[test]
fn garbage_is_ignored() {
    let mut net = Net::new(Duration::from_secs(300));
    for bytes in [
        &[][..],
        &[0xff],
        &[0x40, 0x02, 0x00],
        &[0x44, 0x02, 0x12, 0x34, 0xff, 0xff],
        &[0x40, 0x02, 0x12, 0x34, 0xb2, b'b', b's', 0xff],
    ] {
        net.pair
            .a
            .handle_datagram(net.pair.now, client_addr(), bytes);
    }
    net.pair.a.handle_timeout(net.pair.now);
    assert!(net.pair.a.poll_event().is_none());
    assert!(!net.pair.a.is_running("dev-1"));
    // Still serving afterwards.
    net.bootstrap_request(&["ep=dev-1"]);
    assert!(matches!(
        net.events.last(),
        Some(BootstrapEvent::Finished { .. })
    ));
}

fn bootstrap_request_bytes() -> Vec<u8> {
    let mut packet = message::request(RequestType::Post, "/bs");
    add_query(&mut packet, "ep=dev-1");
    add_query(&mut packet, "pct=112");
    packet.header.message_id = 0x1234;
    packet.set_token(vec![1, 2, 3, 4]);
    packet.to_bytes().unwrap()
}

proptest! {
    #[test]
    fn never_panics_on_random_or_mutated_datagrams(
        random in proptest::collection::vec(any::<u8>(), 0..64),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let now = Instant::now();
        let mut server = BootstrapServer::new(
            BootstrapServerConfig::default(),
            Box::new(source()),
        );
        server.handle_datagram(now, client_addr(), &random);
        let mut bytes = bootstrap_request_bytes();
        for (at, x) in flips {
            let len = bytes.len();
            bytes[at % len] ^= x;
        }
        server.handle_datagram(now, client_addr(), &bytes);
        server.handle_timeout(now + Duration::from_secs(400));
        while server.poll_transmit().is_some() {}
        while server.poll_event().is_some() {}
    }
}
