//! Interoperability with an independently written LwM2M client: npm `lwm2m-node-lib`
//! (driven by `interop/node/client.js`) registers with our server, is read, written,
//! executed and observed, and de-registers; every step is checked on both sides (its JSON
//! lines, our server's events and outcomes, and the datagrams on our socket).
//!
//! Deviations of that library, recorded here and tolerated by the server:
//! - it registers as `lwm2m=1.0` without announcing formats, but is a pre-1.0 peer: it
//!   knows text/plain (0) and its pre-1.0 number 1541, and silently drops a request whose
//!   Accept is the 1.0 TLV number 11542 (no 4.06). Our server reads and writes a 1.0
//!   client's single values as text/plain, so the default operations work;
//! - its answers carry no Content-Format (Core TS 1.0 §6.4 wants one): decoded as asked;
//! - an Accept of 1541 is honoured (finding `LegacyContentFormat { code: 1541 }`);
//! - its Update comes from a fresh socket and repeats `lwm2m=` (finding
//!   `UnknownParameter`), and it then listens there: to the server the client moved, as
//!   behind a NAT (Core TS 1.1 §6.2.2), so requests follow it, and the observation made at
//!   the old port ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use lwm2m_proto::coap::ExchangeError;
use lwm2m_proto::content::{ContentFormat, Finding};
use lwm2m_proto::registration::{Lwm2mVersion, RegistrationFinding};
use lwm2m_proto::server::{Content, OpError, Operation, ServerEvent};
use lwm2m_proto::{Lwm2mPath, Node, ObjectId, ResourceValue, Value};
use lwm2m_server::{Direction, DriverError};
use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::server_support::{PATIENCE, Servers, Setup, code, quick_config};

/// The repository's root (the driver scripts' paths are relative to it).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Fails (never skips) when the peer is not installed, naming the command that installs it.
pub fn require_node_lib() {
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: install it (Debian: apt-get install nodejs npm), then run \
         `npm ci --prefix interop/node` (or scripts/test, which does both)"
    );
    let lib = repo_root().join("interop/node/node_modules/lwm2m-node-lib");
    assert!(
        lib.is_dir(),
        "{} is missing: run `npm ci --prefix interop/node` in the repository root \
         (scripts/test does it)",
        lib.display()
    );
}

/// `node interop/node/client.js HOST PORT ENDPOINT`: JSON lines out, commands in.
struct NodeClient {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every line seen, for failure messages.
    seen: Vec<String>,
}

impl NodeClient {
    fn spawn(port: u16, endpoint: &str) -> NodeClient {
        require_node_lib();
        let mut child = Command::new("node")
            .current_dir(repo_root())
            .env("NODE_NO_WARNINGS", "1")
            .args([
                "interop/node/client.js",
                "127.0.0.1",
                &port.to_string(),
                endpoint,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        NodeClient {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line whose `event` is `name`; an `error` event fails the test.
    async fn next(&mut self, name: &str) -> Json {
        let wait = async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("client.js ended; it said {:?}", self.seen));
                self.seen.push(line.clone());
                let event: Json = serde_json::from_str(&line).unwrap();
                assert_ne!(event["event"], "error", "{line}");
                if event["event"] == name {
                    return event;
                }
            }
        };
        match tokio::time::timeout(PATIENCE, wait).await {
            Ok(e) => e,
            Err(_) => panic!("no {name} from client.js; it said {:?}", self.seen),
        }
    }

    async fn command(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }
}

fn text(v: &str) -> Node {
    Node::Resource(ResourceValue::Single(Value::String(v.into())))
}

fn int(v: i64) -> Node {
    Node::Resource(ResourceValue::Single(Value::Integer(v)))
}

/// One message as the tests compare it: direction, code, options by number (without
/// Uri-Path), payload text.
type Message = (Direction, (u8, u8), Vec<(u16, Vec<u8>)>, String);

/// The CoAP messages with `peer` after the first `skip`; a retransmission (a message ID
/// already seen in the same direction, on a slow machine) is left out.
fn exchange(s: &Servers, peer: SocketAddr, skip: usize) -> Vec<Message> {
    let mut seen = std::collections::HashSet::new();
    s.wire
        .with(peer)
        .into_iter()
        .skip(skip)
        .filter(|(d, p)| seen.insert((*d == Direction::In, p.header.message_id)))
        .map(|(d, p)| {
            let options = p
                .options()
                .flat_map(|(n, vs)| vs.iter().map(move |v| (*n, v.clone())))
                .filter(|(n, _)| *n != 11)
                .collect();
            (
                d,
                code(p.header.code),
                options,
                String::from_utf8_lossy(&p.payload).into_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn lwm2m_node_lib_client_registers_is_managed_and_deregisters() {
    let s = Servers::start_with(Setup {
        config: quick_config(),
        ..Setup::default()
    })
    .await;
    let mut events = s.server_events();
    let mut node = NodeClient::spawn(s.server.local_addr().port(), "node-1");

    // Register: POST /rd?ep=node-1&lt=300&lwm2m=1.0&b=U with its object links.
    let registered = node.next("registered").await;
    let registration = events.registered().await;
    assert_eq!(
        registered["location"].as_str(),
        Some(format!("rd/{}", registration.id).as_str()),
        "the library joins the Location-Path segments without a leading slash"
    );
    assert_eq!(
        (
            registration.endpoint.as_str(),
            registration.version,
            registration.lifetime,
            registration.binding.as_str()
        ),
        ("node-1", Lwm2mVersion::V1_0, 300, "U")
    );
    assert!(registration.links.objects.contains_key(&ObjectId(3)));
    assert!(
        registration.findings.is_empty(),
        "{:?}",
        registration.findings
    );
    let device = registration.address;
    let wire = exchange(&s, device, 0);
    assert_eq!(wire.len(), 2, "{wire:?}");
    assert_eq!(wire[0].3, "</3/0>");
    assert_eq!((wire[1].0, wire[1].1), (Direction::Out, (2, 1)));

    let op = |operation| {
        let server = s.server.clone();
        async move { server.request("node-1", operation).await }
    };

    // Read /3/0/0: asked as text/plain (a 1.0 client's single value); the answer carries no
    // Content-Format and is read as asked.
    let before = s.wire.with(device).len();
    let read = op(Operation::Read {
        path: Lwm2mPath::resource(3, 0, 0),
        format: None,
    })
    .await
    .unwrap();
    assert_eq!(read.code, (2, 5));
    assert_eq!(read.format, None);
    assert_eq!(read.content, Some(Content::Node(text("lwm2m-node-lib"))));
    assert_eq!(node.next("read").await["path"], "/3/0/0");
    assert_eq!(
        exchange(&s, device, before),
        [
            (Direction::Out, (0, 1), vec![(17, vec![])], String::new()),
            (Direction::In, (2, 5), vec![], "lwm2m-node-lib".into()),
        ]
    );
    // The same with its pre-1.0 text number, 1541: answered, recorded as a finding.
    let legacy = op(Operation::Read {
        path: Lwm2mPath::resource(3, 0, 1),
        format: Some(ContentFormat::LegacyText),
    })
    .await
    .unwrap();
    assert_eq!(legacy.content, Some(Content::Node(text("interop-client"))));
    assert_eq!(
        legacy.findings,
        [Finding::LegacyContentFormat { code: 1541 }]
    );
    node.next("read").await;
    // Asked for TLV by its 1.0 number, it drops the request without a word (no 4.06): the
    // read times out, reported with the device's address.
    let dropped = op(Operation::Read {
        path: Lwm2mPath::resource(3, 0, 0),
        format: Some(ContentFormat::Tlv),
    })
    .await;
    assert!(
        matches!(
            &dropped,
            Err(DriverError::Op(OpError::Exchange { address, error: ExchangeError::Timeout { .. } }))
                if *address == device
        ),
        "{dropped:?}"
    );

    // Write /3/0/14 as text/plain.
    let before = s.wire.with(device).len();
    let write = op(Operation::Write {
        path: Lwm2mPath::resource(3, 0, 14),
        node: text("+02:00"),
        replace: true,
        format: None,
    })
    .await
    .unwrap();
    assert_eq!(write.code, (2, 4));
    let seen = node.next("write").await;
    assert_eq!(
        (seen["path"].as_str(), seen["value"].as_str()),
        (Some("/3/0/14"), Some("+02:00"))
    );
    assert_eq!(
        exchange(&s, device, before),
        [
            (Direction::Out, (0, 3), vec![(12, vec![])], "+02:00".into()),
            (Direction::In, (2, 4), vec![], String::new()),
        ]
    );

    // Execute /3/0/4.
    let execute = op(Operation::Execute {
        path: Lwm2mPath::resource(3, 0, 4),
        args: Some("5".into()),
    })
    .await
    .unwrap();
    assert_eq!(execute.code, (2, 4));
    let seen = node.next("execute").await;
    assert_eq!(
        (seen["path"].as_str(), seen["value"].as_str()),
        (Some("/3/0/4"), Some("5"))
    );

    // Observe /3/0/9: the first value, then a notification when it changes.
    let observe = op(Operation::Observe {
        path: Lwm2mPath::resource(3, 0, 9),
        format: None,
    })
    .await
    .unwrap();
    assert_eq!(observe.content, Some(Content::Node(int(87))));
    let observation = observe.observation.expect("an observation");
    let before = s.wire.with(device).len();
    node.command("set /3/0 9 42").await;
    let (seq, note) = events
        .next(|e| match e {
            ServerEvent::Notification {
                observation: o,
                path,
                response,
                seq,
                ..
            } if *o == observation => {
                assert_eq!(*path, Lwm2mPath::resource(3, 0, 9));
                Some((*seq, response.clone()))
            }
            _ => None,
        })
        .await;
    assert_eq!(note.content, Some(Content::Node(int(42))));
    // A confirmable notification (Observe 2), acknowledged.
    let wire = exchange(&s, device, before);
    assert_eq!(seq, 2);
    assert_eq!(
        wire,
        [
            (Direction::In, (2, 5), vec![(6, vec![2])], "42".into()),
            (Direction::Out, (0, 0), vec![], String::new()),
        ]
    );

    // Its Update comes from a fresh socket (a new port) and repeats lwm2m=: the server
    // takes the new port as the client's address (as after a NAT rebinding, Core TS 1.1
    // §6.2.2) and ends the observation made at the old one.
    node.command("update").await;
    node.next("updated").await;
    let (updated, previous) = events
        .next(|e| match e {
            ServerEvent::Updated {
                registration,
                previous_address,
            } => Some((registration.clone(), *previous_address)),
            _ => None,
        })
        .await;
    assert_eq!(previous, Some(device));
    assert_ne!(updated.address, device);
    assert_eq!(
        updated.findings,
        [RegistrationFinding::UnknownParameter {
            parameter: "lwm2m=1.0".into()
        }]
    );
    assert!(s.server.observations("node-1").await.unwrap().is_empty());
    // It listens at the new port now: a Read goes there and is answered.
    let before = s.wire.with(updated.address).len();
    let read = op(Operation::Read {
        path: Lwm2mPath::resource(3, 0, 14),
        format: None,
    })
    .await
    .unwrap();
    assert_eq!(read.content, Some(Content::Node(text("+02:00"))));
    assert_eq!(exchange(&s, updated.address, before).len(), 2);
    node.next("read").await;

    // De-register.
    node.command("deregister").await;
    node.next("deregistered").await;
    let gone = events
        .next(|e| match e {
            ServerEvent::Deregistered { registration } => Some(registration.endpoint.clone()),
            _ => None,
        })
        .await;
    assert_eq!(gone, "node-1");
    assert!(s.server.registrations().is_empty());
    node.command("quit").await;
    assert!(node.child.wait().await.unwrap().success());
}
