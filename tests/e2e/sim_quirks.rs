//! Each quirk of the device simulator visibly changes the wire, and our server notices
//! what it should: one client per quirk registers with our LwM2M Server, which runs an
//! operation on it; the datagrams are checked through the server's packet tap.
// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lwm2m_proto::coap::{MessageType, RequestType};
use lwm2m_proto::content::{ContentFormat, Finding};
use lwm2m_proto::node::{Node, ResourceValue};
use lwm2m_proto::registration::{Lwm2mVersion, RegistrationFinding};
use lwm2m_proto::server::{Operation, Registration, ServerConfig, ServerEvent};
use lwm2m_proto::value::{DataType, Value};
use lwm2m_server::events::Direction;
use lwm2m_simulator::network::NetworkModel;
use lwm2m_simulator::profile::Profile;

use crate::fleet_support::{Frame, Stack, ms, path, profile, start_fleet};

/// A profile named `name` (endpoints `name-0`) with `head` (version, formats, quirks,
/// binding) and the Security, Server and Device objects plus `extra` objects.
fn quirky(name: &str, head: &str, extra: &str) -> Profile {
    profile(&format!(
        "\
name: {name}
endpoint_prefix: {name}-
lifetime: 60s
{head}
objects:
  0:
    instances:
      0: {{ 0: coap://localhost:5683, 1: false, 2: 3, 3: \"\", 4: \"\", 5: \"\", 10: 1 }}
  1:
    instances:
      0: {{ 0: 1, 1: 60, 6: false, 7: U }}
  3:
    instances:
      0: {{ 0: Quirky, 11: [0], 14: \"+01:00\", 16: U }}
{extra}"
    ))
}

const V10: &str =
    "lwm2m_version: \"1.0\"\npreferred_format: tlv\nsupported_formats: [tlv, text, opaque]";
const V11: &str = "lwm2m_version: \"1.1\"\npreferred_format: senml-cbor\nsupported_formats: [senml-cbor, tlv, text, opaque]";

fn registration(stack: &Stack, endpoint: &str) -> Registration {
    stack
        .server_events()
        .into_iter()
        .find_map(|(_, e)| match e {
            ServerEvent::Registered { registration, .. } if registration.endpoint == endpoint => {
                Some(registration)
            }
            _ => None,
        })
        .unwrap()
}

/// The Register of `endpoint` on the wire.
fn register(stack: &Stack, endpoint: &str) -> Frame {
    stack
        .wire
        .find(|f| {
            f.direction == Direction::In
                && f.is(RequestType::Post, "/rd")
                && f.query("ep").as_deref() == Some(endpoint)
        })
        .remove(0)
}

/// The requests our server sent to `endpoint`'s address.
fn to_client(stack: &Stack, endpoint: &str, method: RequestType, p: &str) -> Vec<Frame> {
    let peer = register(stack, endpoint).peer;
    stack
        .wire
        .find(|f| f.direction == Direction::Out && f.peer == peer && f.is(method, p))
}

fn read(p: &str, format: Option<ContentFormat>) -> Operation {
    Operation::Read {
        path: path(p),
        format,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_quirk_changes_the_wire() {
    let stack = Stack::start(ServerConfig::default(), None).await;
    let profiles = [
        quirky(
            "legacyct",
            "lwm2m_version: \"1.0\"\npreferred_format: tlv\nsupported_formats: [tlv, tlv-1542, text]\nquirks: [legacy-content-formats]",
            "",
        ),
        quirky("nover", &format!("{V10}\nquirks: [no-lwm2m-version]"), ""),
        quirky(
            "legacyq",
            &format!("{V11}\nbinding: UQ\nquirks: [legacy-queue-binding]"),
            "",
        ),
        quirky(
            "widetlv",
            &format!("{V11}\nquirks: [non-minimal-tlv-integers]"),
            "",
        ),
        quirky(
            "wrongcodes",
            &format!("{V11}\nquirks: [wrong-success-codes]"),
            "",
        ),
        quirky(
            "ignoreaccept",
            &format!("{V11}\nquirks: [ignore-accept]"),
            "",
        ),
        quirky(
            "late",
            &format!("{V11}\nquirks: [late-responses: {{ delay: 1500ms }}]"),
            "",
        ),
        quirky(
            "dup",
            &format!("{V11}\nquirks: [duplicate-responses: {{ copies: 2 }}]"),
            "",
        ),
        quirky(
            "preloc",
            &format!("{V10}\nquirks: [wakaama-2017]"),
            "  6:\n    variant: pre-1.0\n    instances:\n      0: { 0: \"45.5\", 1: \"-73.9857\", 5: 0 }\n",
        ),
    ];
    let list: Vec<(&Profile, usize)> = profiles.iter().map(|p| (p, 1)).collect();
    let handle = start_fleet(&list, stack.targets(), &NetworkModel::default(), |_| {});
    for p in &profiles {
        stack.registered(&format!("{}-0", p.name), 1).await;
    }

    // legacy-content-formats: ct=1542 announced, asked for and answered.
    let reg = register(&stack, "legacyct-0");
    let links = String::from_utf8(reg.packet.payload.clone()).unwrap();
    assert!(links.contains("ct=1542"), "{links}");
    assert!(
        registration(&stack, "legacyct-0")
            .findings
            .contains(&RegistrationFinding::LegacyContentFormat { code: 1542 })
    );
    let r = stack.op("legacyct-0", read("/3/0", None)).await;
    assert_eq!((r.code, r.format), ((2, 5), Some(ContentFormat::LegacyTlv)));
    assert!(
        r.findings
            .contains(&Finding::LegacyContentFormat { code: 1542 }),
        "{r:?}"
    );
    let get = to_client(&stack, "legacyct-0", RequestType::Get, "/3/0").remove(0);
    assert_eq!(get.accept(), Some(1542));
    assert_eq!(stack.wire.answers(&get)[0].content_format(), Some(1542));

    // no-lwm2m-version: no lwm2m= in Register; the server assumes 1.0 and says so.
    let reg = register(&stack, "nover-0");
    assert!(reg.query("lwm2m").is_none(), "{:?}", reg.queries());
    let r = registration(&stack, "nover-0");
    assert_eq!(r.version, Lwm2mVersion::V1_0);
    assert!(
        r.findings.contains(&RegistrationFinding::MissingVersion),
        "{r:?}"
    );
    assert_eq!(
        register(&stack, "legacyct-0").query("lwm2m").as_deref(),
        Some("1.0")
    );

    // legacy-queue-binding: b=UQ and no Q parameter from a 1.1 client.
    let reg = register(&stack, "legacyq-0");
    assert_eq!(reg.query("b").as_deref(), Some("UQ"));
    assert!(
        !reg.queries().iter().any(|q| q == "Q"),
        "{:?}",
        reg.queries()
    );
    let r = registration(&stack, "legacyq-0");
    assert!(r.queue_mode);
    assert!(
        r.findings
            .contains(&RegistrationFinding::LegacyQueueBinding {
                binding: "UQ".into()
            }),
        "{r:?}"
    );

    // non-minimal-tlv-integers: Short Server ID 1 in 8 bytes (TLV type 0xC8: resource,
    // 8-bit id, 8-bit length), flagged by our decoder.
    let r = stack
        .op("widetlv-0", read("/1/0", Some(ContentFormat::Tlv)))
        .await;
    assert_eq!(r.code, (2, 5));
    assert!(
        r.findings.iter().any(|f| matches!(f,
            Finding::NonMinimalInteger { path: p, length: 8 } if *p == path("/1/0/0"))),
        "{:?}",
        r.findings
    );
    let get = to_client(&stack, "widetlv-0", RequestType::Get, "/1/0").remove(0);
    let payload = stack.wire.answers(&get)[0].packet.payload.clone();
    let wide = [0xC8, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0, 1];
    assert!(
        payload.windows(wide.len()).any(|w| w == wide),
        "{payload:02X?}"
    );

    // wrong-success-codes: Write and Execute answered 2.05 Content, Read 2.04 Changed.
    let write = Operation::Write {
        path: path("/3/0/14"),
        node: Node::Resource(ResourceValue::Single(Value::String("+02:00".into()))),
        replace: true,
        format: Some(ContentFormat::Text),
    };
    assert_eq!(stack.op("wrongcodes-0", write).await.code, (2, 5));
    let execute = Operation::Execute {
        path: path("/1/0/8"),
        args: None,
    };
    assert_eq!(stack.op("wrongcodes-0", execute).await.code, (2, 5));
    assert_eq!(
        stack.op("wrongcodes-0", read("/3/0/0", None)).await.code,
        (2, 4)
    );
    let put = to_client(&stack, "wrongcodes-0", RequestType::Put, "/3/0/14").remove(0);
    assert_eq!(stack.wire.answers(&put)[0].code(), (2, 5));

    // ignore-accept: text asked for, SenML CBOR (the preferred format) answered.
    let r = stack
        .op("ignoreaccept-0", read("/3/0/0", Some(ContentFormat::Text)))
        .await;
    let get = to_client(&stack, "ignoreaccept-0", RequestType::Get, "/3/0/0").remove(0);
    assert_eq!(get.accept(), Some(0));
    assert_eq!(stack.wire.answers(&get)[0].content_format(), Some(112));
    assert_eq!(r.format, Some(ContentFormat::SenmlCbor));

    // late-responses: an empty ACK after the client's 1 s separate-response delay, the
    // answer 1.5 s after the request as a confirmable separate response (RFC 7252 §5.2.2)
    // which our server acknowledges; no retransmission of the request.
    let r = stack.op("late-0", read("/3/0/0", None)).await;
    assert_eq!(r.code, (2, 5));
    let gets = to_client(&stack, "late-0", RequestType::Get, "/3/0/0");
    assert_eq!(gets.len(), 1, "not retransmitted");
    let get = &gets[0];
    let ack = stack.wire.find(|f| {
        f.direction == Direction::In
            && f.is_empty_ack()
            && f.packet.header.message_id == get.packet.header.message_id
    });
    assert_eq!(ack.len(), 1);
    let separate = stack.wire.answers(get).remove(0);
    assert_eq!(separate.packet.header.get_type(), MessageType::Confirmable);
    let (to_ack, to_answer) = (ms(get.at, ack[0].at), ms(get.at, separate.at));
    assert!((900..1400).contains(&to_ack), "empty ACK after {to_ack} ms");
    assert!(
        (1400..2000).contains(&to_answer),
        "answer after {to_answer} ms"
    );
    // The operation completes as the answer arrives; the ACK follows it onto the wire.
    let mid = separate.packet.header.message_id;
    let acked = stack
        .wire
        .wait(1, "our server's ACK of the separate response", |f| {
            f.direction == Direction::Out && f.is_empty_ack() && f.packet.header.message_id == mid
        })
        .await;
    assert_eq!(
        acked.len(),
        1,
        "our server acknowledges the separate response once"
    );

    // duplicate-responses (copies: 2): each answer three times on the wire; our server
    // ignores the extra ACKs silently (RFC 7252 §4.2, §4.5) and completes the operation
    // once.
    let r = stack.op("dup-0", read("/3/0/0", None)).await;
    assert_eq!(r.code, (2, 5));
    let get = to_client(&stack, "dup-0", RequestType::Get, "/3/0/0").remove(0);
    let copies = stack
        .wire
        .wait(3, "three copies of the answer", |f| {
            f.direction == Direction::In
                && f.is_response()
                && f.packet.header.message_id == get.packet.header.message_id
        })
        .await;
    assert_eq!(copies.len(), 3, "{copies:?}");
    assert!(copies.iter().all(|c| c.bytes == copies[0].bytes));
    let resets = stack.wire.find(|f| {
        f.direction == Direction::Out
            && f.peer == get.peer
            && f.packet.header.get_type() == MessageType::Reset
    });
    assert!(resets.is_empty(), "{resets:?}");
    let completed = |e: &ServerEvent| matches!(e, ServerEvent::Completed { endpoint, .. } if endpoint == "dup-0");
    let once = stack.wait_server(1, "the Read completed", completed).await;
    assert_eq!(once.len(), 1);

    // pre-1-0-location: latitude as a string where LwM2M 1.0 has a float; flagged.
    let r = stack.op("preloc-0", read("/6/0", None)).await;
    assert_eq!(r.code, (2, 5));
    assert!(
        r.findings.iter().any(|f| matches!(f,
            Finding::TypeMismatch { path: p, expected: DataType::Float, .. } if *p == path("/6/0/0"))),
        "{:?}",
        r.findings
    );
    let get = to_client(&stack, "preloc-0", RequestType::Get, "/6/0").remove(0);
    let payload = stack.wire.answers(&get)[0].packet.payload.clone();
    assert!(payload.windows(4).any(|w| w == b"45.5"), "{payload:02X?}");

    handle.stop(Duration::from_secs(5)).await.unwrap();
}
