//! The device simulator's client through our servers over real loopback sockets:
//! client-initiated bootstrap, registration lifecycle, Device Management, Information
//! Reporting, Send, Registration Update Trigger, Reboot, Factory Reset and Firmware Update.
//! Every test checks the exchange on the wire (a packet tap on our servers' sockets) as
//! well as the outcome our server reports.
// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lwm2m_proto::bootstrap::server::BootstrapEvent;
use lwm2m_proto::coap::message::BlockOption;
use lwm2m_proto::coap::{CoapOption, RequestType};
use lwm2m_proto::codec::link::AttributeUpdate;
use lwm2m_proto::content::ContentFormat;
use lwm2m_proto::node::{Instance, Node, ResourceValue};
use lwm2m_proto::server::{Content, Operation, Response, ServerConfig, ServerEvent};
use lwm2m_proto::value::Value;
use lwm2m_proto::{InstanceId, ObjectId, ResourceId};
use lwm2m_server::events::Direction;
use lwm2m_simulator::fleet::Selector;
use lwm2m_simulator::network::NetworkModel;

use crate::fleet_support::{Frame, Stack, counters_until, ms, path, profile, start_fleet};

/// A 1.1 device: Security, Server, Device, Firmware Update and two temperature sensors
/// (at most three instances of 3303).
const DEVICE: &str = "\
name: full
lwm2m_version: \"1.1\"
lifetime: 30s
endpoint_prefix: full-
preferred_format: senml-cbor
supported_formats: [senml-cbor, senml-json, tlv, text, opaque]
objects:
  0:
    instances:
      0: { 0: coap://localhost:5683, 1: false, 2: 3, 3: \"\", 4: \"\", 5: \"\", 10: 1 }
  1:
    instances:
      0: { 0: 1, 1: 30, 6: false, 7: U }
  3:
    instances:
      0: { 0: Sim Inc, 1: Model-S, 11: [0], 14: \"+01:00\", 16: U }
  5:
    instances:
      0: { 1: \"\", 3: 0, 5: 0 }
  3303:
    max_instances: 3
    instances:
      0: { 5700: 20.0, 5701: Cel }
      1: { 5700: 20.0, 5701: Cel }
";

const EP: &str = "full-0";

fn single(v: Value) -> Node {
    Node::Resource(ResourceValue::Single(v))
}

/// The single value a response or notification carried.
fn value_of(r: &Response) -> Value {
    match &r.content {
        Some(Content::Node(Node::Resource(ResourceValue::Single(v)))) => v.clone(),
        Some(Content::Records(records)) if records.len() == 1 => records[0].value.clone().unwrap(),
        other => panic!("no single value in {other:?} ({r:?})"),
    }
}

fn read(p: &str) -> Operation {
    Operation::Read {
        path: path(p),
        format: None,
    }
}

fn execute(p: &str, args: Option<&str>) -> Operation {
    Operation::Execute {
        path: path(p),
        args: args.map(str::to_owned),
    }
}

fn write(p: &str, v: Value, format: Option<ContentFormat>) -> Operation {
    Operation::Write {
        path: path(p),
        node: single(v),
        replace: true,
        format,
    }
}

fn attributes(p: &str, query: &[&str]) -> Operation {
    Operation::WriteAttributes {
        path: path(p),
        attributes: AttributeUpdate::from_query(query).unwrap(),
    }
}

/// The one request to a client with this method and path, and the answer to it.
fn exchange(stack: &Stack, method: RequestType, p: &str) -> (Frame, Frame) {
    let requests = stack.wire.outgoing(method, p);
    assert_eq!(requests.len(), 1, "{method:?} {p}: {requests:?}");
    let answers = stack.wire.answers(&requests[0]);
    assert!(!answers.is_empty(), "{method:?} {p} unanswered");
    (requests[0].clone(), answers[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstraps_then_registers_updates_and_deregisters() {
    // The fallback configuration for every `boot-*` endpoint: a NoSec account on our
    // LwM2M Server, lifetime 2 s.
    let stack = Stack::start(
        ServerConfig::default(),
        Some(
            "patterns:\n  \"boot-*\":\n    security:\n      1: { uri: \"{server}\", mode: nosec, short_server_id: 1 }\n    servers:\n      0: { short_server_id: 1, lifetime: 2, binding: U }\n",
        ),
    )
    .await;
    let device = profile(
        "\
name: boot
lwm2m_version: \"1.1\"
lifetime: 2s
endpoint_prefix: boot-
preferred_format: senml-cbor
supported_formats: [senml-cbor, tlv, text]
objects:
  0:
    instances:
      0: { 0: coap://localhost:5783, 1: true, 2: 3, 3: \"\", 4: \"\", 5: \"\" }
  1:
    instances: {}
  3:
    instances:
      0: { 11: [0], 16: U }
",
    );
    let mut targets = stack.targets();
    // Factory configuration: the Bootstrap Server only.
    targets.server = None;
    let handle = start_fleet(&[(&device, 1)], targets, &NetworkModel::default(), |_| {});

    // Client-initiated bootstrap (Core TS 1.1 §5.2.3, §6.1.4).
    let id = stack.registered("boot-0", 1).await;
    let bs = stack.bs_wire.clone();
    let request = bs.incoming(RequestType::Post, "/bs");
    assert_eq!(request.len(), 1, "{request:?}");
    let request = &request[0];
    assert_eq!(request.query("ep").as_deref(), Some("boot-0"));
    assert_eq!(
        request.query("pct").as_deref(),
        Some("112"),
        "SenML CBOR preferred"
    );
    assert_eq!(bs.answers(request)[0].code(), (2, 4));
    // The Bootstrap Server's requests, in order, each answered with success.
    let steps: Vec<(RequestType, String, (u8, u8))> = bs
        .find(|f| f.direction == Direction::Out && f.method().is_some())
        .iter()
        .map(|f| (f.method().unwrap(), f.path(), bs.answers(f)[0].code()))
        .collect();
    assert_eq!(
        steps,
        [
            (RequestType::Delete, "/0".to_owned(), (2, 2)),
            (RequestType::Delete, "/1".to_owned(), (2, 2)),
            (RequestType::Put, "/0/1".to_owned(), (2, 4)),
            (RequestType::Put, "/1/0".to_owned(), (2, 4)),
            (RequestType::Post, "/bs".to_owned(), (2, 4)),
        ]
    );
    // The Bootstrap Server reports Finished when the 2.04 of Finish reaches it, which may
    // be after the client has already registered with the LwM2M Server.
    crate::fleet_support::eventually("BootstrapEvent::Finished for boot-0", || {
        stack
            .bootstrap_events()
            .iter()
            .any(|e| matches!(e, BootstrapEvent::Finished { endpoint, .. } if endpoint == "boot-0"))
            .then_some(())
    })
    .await;
    let finish = bs.outgoing(RequestType::Post, "/bs").remove(0);

    // Register with what it was given (Core TS 1.1 §6.2.1): lifetime 2 s from the Server
    // object the Bootstrap Server wrote, from the same client address.
    let register = stack.wire.incoming(RequestType::Post, "/rd").remove(0);
    assert!(register.at > finish.at, "Register after Bootstrap-Finish");
    assert_eq!(register.peer, request.peer);
    assert_eq!(register.query("ep").as_deref(), Some("boot-0"));
    assert_eq!(register.query("lt").as_deref(), Some("2"));
    assert_eq!(register.query("lwm2m").as_deref(), Some("1.1"));
    assert_eq!(register.query("b").as_deref(), Some("U"));
    assert_eq!(register.content_format(), Some(40));
    let links = String::from_utf8(register.packet.payload.clone()).unwrap();
    assert!(
        links.contains("</1/0>") && links.contains("</3/0>"),
        "{links}"
    );
    assert!(!links.contains("</0"), "no Security object: {links}");
    let created = stack.wire.answers(&register).remove(0);
    assert_eq!(created.code(), (2, 1));
    assert_eq!(
        created.options(CoapOption::LocationPath),
        ["rd", id.as_str()]
    );

    // Updates (Core TS 1.1 §6.2.2) before the 2 s lifetime runs out, with nothing changed.
    let location = format!("/rd/{id}");
    let updates = stack
        .wire
        .wait(2, "two Updates", |f| {
            f.direction == Direction::In && f.is(RequestType::Post, &location)
        })
        .await;
    let mut last = register.at;
    for u in &updates[..2] {
        let gap = ms(last, u.at);
        assert!((500..2000).contains(&gap), "Update {gap} ms after the last");
        assert!(
            u.queries().is_empty() && u.packet.payload.is_empty(),
            "{u:?}"
        );
        assert_eq!(stack.wire.answers(u)[0].code(), (2, 4));
        last = u.at;
    }
    assert!(
        !stack
            .server_events()
            .iter()
            .any(|(_, e)| matches!(e, ServerEvent::Expired { .. })),
        "the registration never expired"
    );

    // De-register at stop (Core TS 1.1 §6.2.3).
    let report = handle.stop(Duration::from_secs(5)).await.unwrap();
    let delete = stack.wire.incoming(RequestType::Delete, &location);
    assert_eq!(delete.len(), 1);
    assert_eq!(stack.wire.answers(&delete[0])[0].code(), (2, 2));
    stack
        .wait_server(1, "De-registered", |e| {
            matches!(e, ServerEvent::Deregistered { registration } if registration.endpoint == "boot-0")
        })
        .await;
    let t = report.total();
    assert_eq!((t.registrations, t.deregistrations, t.failures), (1, 1, 0));
    assert!(t.updates >= 2, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_management_through_the_server() {
    let stack = Stack::start(ServerConfig::default(), None).await;
    let handle = start_fleet(
        &[(&profile(DEVICE), 1)],
        stack.targets(),
        &NetworkModel::default(),
        |_| {},
    );
    let id = stack.registered(EP, 1).await;

    // Read (Core TS 1.1 §5.4.1): SenML CBOR, the format the client announced.
    let r = stack.op(EP, read("/3/0/0")).await;
    assert_eq!(r.code, (2, 5));
    assert_eq!(value_of(&r), Value::String("Sim Inc".into()));
    let (get, answer) = exchange(&stack, RequestType::Get, "/3/0/0");
    assert_eq!(get.accept(), Some(112));
    assert_eq!(answer.content_format(), Some(112));

    // Write (§5.4.3) as text, read back.
    let r = stack
        .op(
            EP,
            write(
                "/3/0/14",
                Value::String("+02:00".into()),
                Some(ContentFormat::Text),
            ),
        )
        .await;
    assert_eq!(r.code, (2, 4));
    let (put, answer) = exchange(&stack, RequestType::Put, "/3/0/14");
    assert_eq!(
        (put.content_format(), put.packet.payload.as_slice()),
        (Some(0), &b"+02:00"[..])
    );
    assert_eq!(answer.code(), (2, 4));
    let r = stack.op(EP, read("/3/0/14")).await;
    assert_eq!(value_of(&r), Value::String("+02:00".into()));

    // Execute with arguments (§5.4.5); malformed arguments are a bad request.
    let r = stack.op(EP, execute("/3303/0/5605", Some("0='x',1"))).await;
    assert_eq!(r.code, (2, 4));
    let (post, _) = exchange(&stack, RequestType::Post, "/3303/0/5605");
    assert_eq!(post.packet.payload, b"0='x',1");
    let r = stack.op(EP, execute("/3303/1/5605", Some("x=1"))).await;
    assert_eq!(r.code, (4, 0), "{r:?}");

    // Create and Delete (§5.4.6, §5.4.7) within the instance limit (3): each is followed by
    // an Update with the new object links.
    let mut resources = Instance::new();
    resources.insert(ResourceId(5700), ResourceValue::Single(Value::Float(1.5)));
    resources.insert(
        ResourceId(5701),
        ResourceValue::Single(Value::String("Cel".into())),
    );
    let create = |instance: Option<u16>| Operation::Create {
        object: ObjectId(3303),
        instance: instance.map(InstanceId),
        resources: resources.clone(),
        format: None,
    };
    let r = stack.op(EP, create(Some(2))).await;
    assert_eq!((r.code, r.location), ((2, 1), Some(path("/3303/2"))));
    let (post, answer) = exchange(&stack, RequestType::Post, "/3303");
    assert!(!post.packet.payload.is_empty());
    assert_eq!(answer.options(CoapOption::LocationPath), ["3303", "2"]);
    let has_instance_2 = |e: &ServerEvent| {
        matches!(e, ServerEvent::Updated { registration, .. }
            if registration.links.objects[&ObjectId(3303)].instances.contains(&InstanceId(2)))
    };
    stack
        .wait_server(1, "Update after Create", has_instance_2)
        .await;
    assert_eq!(
        value_of(&stack.op(EP, read("/3303/2/5700")).await),
        Value::Float(1.5)
    );
    // A fourth instance is over the limit.
    let r = stack.op(EP, create(None)).await;
    assert_eq!(r.code, (4, 0), "{r:?}");
    let r = stack
        .op(
            EP,
            Operation::Delete {
                path: path("/3303/2"),
            },
        )
        .await;
    assert_eq!(r.code, (2, 2));
    let location = format!("/rd/{id}");
    stack
        .wire
        .wait(2, "Updates after Create and Delete", |f| {
            f.direction == Direction::In && f.is(RequestType::Post, &location)
        })
        .await;
    stack
        .wait_server(1, "Update after Delete", |e| {
            matches!(e, ServerEvent::Updated { registration, .. }
                if !registration.links.objects[&ObjectId(3303)].instances.contains(&InstanceId(2)))
        })
        .await;

    // Write-Attributes at three levels, then Discover (§5.4.2, §5.1.2): a resource shows
    // what it inherits from its instance and object.
    for (p, q) in [
        ("/3303", &["pmin=2"][..]),
        ("/3303/0", &["pmax=9"][..]),
        ("/3303/0/5700", &["st=0.5"][..]),
    ] {
        assert_eq!(stack.op(EP, attributes(p, q)).await.code, (2, 4), "{p}");
    }
    let (put, _) = exchange(&stack, RequestType::Put, "/3303/0/5700");
    assert_eq!(put.queries(), ["st=0.5"]);
    assert!(put.packet.payload.is_empty());
    let r = stack
        .op(
            EP,
            Operation::Discover {
                path: path("/3303/0/5700"),
            },
        )
        .await;
    let Some(Content::Links(links)) = &r.content else {
        panic!("{r:?}")
    };
    assert_eq!(links.len(), 1);
    let a = links[0].attributes;
    assert_eq!(
        (a.pmin, a.pmax, a.st),
        (Some(2), Some(9), Some(0.5)),
        "{links:?}"
    );
    let (get, answer) = exchange(&stack, RequestType::Get, "/3303/0/5700");
    assert_eq!(get.accept(), Some(40));
    assert_eq!(answer.content_format(), Some(40));
    let r = stack
        .op(
            EP,
            Operation::Discover {
                path: path("/3303/0"),
            },
        )
        .await;
    let Some(Content::Links(links)) = &r.content else {
        panic!("{r:?}")
    };
    assert_eq!(links[0].path, path("/3303/0"));
    assert_eq!(links[0].attributes.pmax, Some(9));
    assert_eq!(
        links[0].attributes.pmin, None,
        "an instance shows its own attributes"
    );
    assert!(
        links.iter().any(|l| l.path == path("/3303/0/5605")),
        "{links:?}"
    );

    // What it lacks (4.04), forbids (4.05), cannot speak (4.06, 4.15).
    for (op, code) in [
        (read("/3303/7"), (4, 4)),
        (read("/9/0"), (4, 4)),
        (execute("/3303/0/9999", None), (4, 4)),
        (
            write(
                "/3/0/0",
                Value::String("x".into()),
                Some(ContentFormat::Text),
            ),
            (4, 5),
        ),
        (execute("/3/0/0", None), (4, 5)),
        (Operation::Delete { path: path("/3/0") }, (4, 5)),
        (
            Operation::Read {
                path: path("/3/0"),
                format: Some(ContentFormat::OmaJson),
            },
            (4, 6),
        ),
        (
            write(
                "/3/0/14",
                Value::String("+03:00".into()),
                Some(ContentFormat::OmaJson),
            ),
            (4, 15),
        ),
    ] {
        let name = format!("{op:?}");
        let r = stack.op(EP, op).await;
        assert_eq!(r.code, code, "{name}: {r:?}");
        assert!(r.diagnostic.is_some(), "{name}: a diagnostic payload");
    }
    let refused = stack
        .wire
        .find(|f| f.direction == Direction::In && f.is_response() && f.code() == (4, 6));
    assert_eq!(refused.len(), 1);

    let report = handle.stop(Duration::from_secs(5)).await.unwrap();
    let t = report.total();
    assert_eq!(t.deregistrations, 1);
    assert!(t.requests_served >= 20, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observations_honour_the_notification_attributes() {
    let stack = Stack::start(ServerConfig::default(), None).await;
    let handle = start_fleet(
        &[(&profile(DEVICE), 1)],
        stack.targets(),
        &NetworkModel::default(),
        |_| {},
    );
    stack.registered(EP, 1).await;
    // Scaled-down attributes (Core TS 1.1 §5.1.2): instance 0 notifies at most every 1 s,
    // at least every 2 s, on steps of 5; instance 1 when crossing 25 upwards or 15
    // downwards.
    let (s0, s1) = ("/3303/0/5700", "/3303/1/5700");
    assert_eq!(
        stack
            .op(EP, attributes(s0, &["pmin=1", "pmax=2", "st=5"]))
            .await
            .code,
        (2, 4)
    );
    assert_eq!(
        stack.op(EP, attributes(s1, &["gt=25", "lt=15"])).await.code,
        (2, 4)
    );
    let observe = |p: &str| Operation::Observe {
        path: path(p),
        format: None,
    };
    let r0 = stack.op(EP, observe(s0)).await;
    let r1 = stack.op(EP, observe(s1)).await;
    assert_eq!(
        (value_of(&r0), value_of(&r1)),
        (Value::Float(20.0), Value::Float(20.0))
    );
    let (o0, o1) = (r0.observation.unwrap(), r1.observation.unwrap());
    let get0 = stack
        .wire
        .find(|f| {
            f.direction == Direction::Out && f.is(RequestType::Get, s0) && f.observe() == Some(0)
        })
        .remove(0);
    let t0 = stack.wire.answers(&get0)[0].at;

    // Below the step; above it (notified at pmin); between the thresholds; across gt;
    // same side; across lt.
    let set = |p: &str, v: f64| {
        handle
            .set_value(Selector::All, path(p), Value::Float(v))
            .unwrap()
    };
    set(s0, 22.0);
    set(s1, 24.0);
    set(s0, 30.0);
    set(s1, 26.0);
    set(s1, 27.0);
    set(s1, 14.0);
    set(s1, 13.0);

    let notified = |o| {
        stack
            .server_events()
            .into_iter()
            .filter_map(move |(_, e)| match e {
                ServerEvent::Notification {
                    observation,
                    response,
                    ..
                } if observation == o => Some(value_of(&response)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // On the wire: the notifications of instance 0 carry the Observe request's token.
    let notes0 = stack
        .wire
        .wait(3, "pmin and pmax notifications", |f| {
            f.direction == Direction::In && f.token() == get0.token() && f.observe().is_some()
        })
        .await;
    let (n1, n2) = (ms(t0, notes0[1].at), ms(notes0[1].at, notes0[2].at));
    assert!(
        (950..1400).contains(&n1),
        "first notification at pmin: {n1} ms"
    );
    assert!(
        (1950..2400).contains(&n2),
        "the next at pmax: {n2} ms later"
    );
    assert_eq!(notified(o0)[..2], [Value::Float(30.0), Value::Float(30.0)]);
    assert_eq!(notified(o1), [Value::Float(26.0), Value::Float(14.0)]);

    // Active cancel (GET with Observe = 1, RFC 7641 §3.6) of instance 0, passive cancel
    // (Reset on the next notification, §3.6) of instance 1.
    let before0 = notified(o0).len();
    let r = stack
        .op(
            EP,
            Operation::CancelObservation {
                observation: o0,
                active: true,
            },
        )
        .await;
    assert_eq!(r.code, (2, 5));
    let cancel = stack.wire.find(|f| {
        f.direction == Direction::Out && f.is(RequestType::Get, s0) && f.observe() == Some(1)
    });
    assert_eq!(cancel.len(), 1);
    let cancelled_at = stack.wire.answers(&cancel[0])[0].at;
    stack
        .op(
            EP,
            Operation::CancelObservation {
                observation: o1,
                active: false,
            },
        )
        .await;
    // The only datagram to the client until it has the Reset is the Reset.
    let delivered = handle.total().datagrams_in;
    set(s1, 30.0);
    let reset = stack
        .wire
        .wait(1, "Reset of a notification", |f| {
            f.direction == Direction::Out
                && f.packet.header.get_type() == lwm2m_proto::coap::MessageType::Reset
        })
        .await;
    assert!(reset[0].at > cancelled_at);
    counters_until(&handle, "the Reset delivered", |c| {
        c.datagrams_in > delivered
    })
    .await;
    set(s0, 50.0);
    set(s1, 10.0);
    // Time passes (beyond pmax): neither observation notifies again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after: Vec<_> = stack
        .wire
        .find(|f| f.direction == Direction::In && f.observe().is_some() && f.at > reset[0].at);
    assert!(
        after.is_empty(),
        "notifications after the cancellations: {after:?}"
    );
    assert!(notified(o0).len() <= before0 + 1);
    let c = handle.total();
    assert!(c.notifications_sent >= 4, "{c:?}");
    handle.stop(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_update_trigger_reboot_and_factory_reset() {
    let stack = Stack::start(ServerConfig::default(), None).await;
    let handle = start_fleet(
        &[(&profile(DEVICE), 1)],
        stack.targets(),
        &NetworkModel::default(),
        |spec| spec.config.reboot_silence = Duration::from_secs(1),
    );
    let id = stack.registered(EP, 1).await;
    // The server's event comes before the client has its 2.01; Send needs a registration.
    crate::fleet_support::counters_until(&handle, "registered at the client", |c| {
        c.registrations == 1
    })
    .await;

    // Send (Core TS 1.1 §6.4.4): POST /dp in SenML CBOR.
    handle
        .send_values(Selector::All, vec![path("/3303/0/5700"), path("/3/0/0")])
        .unwrap();
    let sent = stack
        .wait_server(1, "Send", |e| matches!(e, ServerEvent::Send { .. }))
        .await;
    let ServerEvent::Send {
        endpoint, records, ..
    } = &sent[0].1
    else {
        unreachable!()
    };
    assert_eq!(endpoint, EP);
    let paths: Vec<_> = records.iter().map(|r| r.path).collect();
    assert_eq!(paths, [path("/3303/0/5700"), path("/3/0/0")]);
    let dp = stack.wire.incoming(RequestType::Post, "/dp");
    assert_eq!(dp[0].content_format(), Some(112));
    assert_eq!(stack.wire.answers(&dp[0])[0].code(), (2, 4));

    // Registration Update Trigger (Execute /1/0/8): answered, then an Update.
    let location = format!("/rd/{id}");
    assert_eq!(stack.op(EP, execute("/1/0/8", None)).await.code, (2, 4));
    let (_, answer) = exchange(&stack, RequestType::Post, "/1/0/8");
    let update = stack
        .wire
        .wait(1, "Update after the trigger", |f| {
            f.direction == Direction::In && f.is(RequestType::Post, &location)
        })
        .await;
    assert!(update[0].at >= answer.at);

    // Reboot (Execute /3/0/4): answer, De-register, silence, Register again; the tree
    // survives.
    let written = write(
        "/3/0/14",
        Value::String("+05:00".into()),
        Some(ContentFormat::Text),
    );
    assert_eq!(stack.op(EP, written).await.code, (2, 4));
    let reboot = |resource: &'static str| {
        let stack = &stack;
        async move {
            let before = stack.wire.incoming(RequestType::Post, "/rd").len();
            let r = stack.op(EP, execute(resource, None)).await;
            assert_eq!(r.code, (2, 4));
            let (_, answer) = exchange(stack, RequestType::Post, resource);
            let registers = stack
                .wire
                .wait(before + 1, "Register after the reboot", |f| {
                    f.direction == Direction::In && f.is(RequestType::Post, "/rd")
                })
                .await;
            let again = registers[before].clone();
            let from_client: Vec<Frame> = stack
                .wire
                .find(|f| f.direction == Direction::In && f.at > answer.at && f.at < again.at);
            // Only the De-register (not retransmitted: the old endpoint is gone).
            assert_eq!(from_client.len(), 1, "{from_client:?}");
            assert_eq!(from_client[0].method(), Some(RequestType::Delete));
            // The client's clock starts the silence when it sends the De-register; these are
            // the server's capture times, so a De-register that waited a few ms in a busy
            // runtime shortens the silence seen here (996 ms once in CI).
            let silence = ms(from_client[0].at, again.at);
            assert!((950..1600).contains(&silence), "silent for {silence} ms");
        }
    };
    reboot("/3/0/4").await;
    stack.registered(EP, 2).await;
    stack
        .wait_server(1, "De-registered by the reboot", |e| {
            matches!(e, ServerEvent::Deregistered { .. })
        })
        .await;
    assert_eq!(
        value_of(&stack.op(EP, read("/3/0/14")).await),
        Value::String("+05:00".into())
    );

    // Factory Reset (Execute /3/0/5): the same, and the factory values are back.
    reboot("/3/0/5").await;
    stack.registered(EP, 3).await;
    assert_eq!(
        value_of(&stack.op(EP, read("/3/0/14")).await),
        Value::String("+01:00".into())
    );
    let report = handle.stop(Duration::from_secs(5)).await.unwrap();
    let t = report.total();
    assert_eq!(t.registrations, 3);
    assert_eq!(t.failures, 0, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_update_pushed_block_wise() {
    let stack = Stack::start(ServerConfig::default(), None).await;
    let handle = start_fleet(
        &[(&profile(DEVICE), 1)],
        stack.targets(),
        &NetworkModel::default(),
        |_| {},
    );
    stack.registered(EP, 1).await;
    // Update is only executable in State 2 Downloaded (Core TS 1.1 Appendix E.6).
    assert_eq!(stack.op(EP, execute("/5/0/2", None)).await.code, (4, 5));
    let r = stack
        .op(
            EP,
            Operation::Observe {
                path: path("/5/0/3"),
                format: None,
            },
        )
        .await;
    assert_eq!(value_of(&r), Value::Integer(0));
    let state = r.observation.unwrap();
    let r = stack
        .op(
            EP,
            Operation::Observe {
                path: path("/5/0/5"),
                format: None,
            },
        )
        .await;
    assert_eq!(value_of(&r), Value::Integer(0));
    let result = r.observation.unwrap();

    // Push a 20 kB package (Package 5/0/0) as opaque: 20 blocks of 1024 bytes (RFC 7959).
    let package: Vec<u8> = (0..20_480u32).map(|i| (i * 7 % 251) as u8).collect();
    let started = Instant::now();
    let r = stack
        .op(
            EP,
            write(
                "/5/0/0",
                Value::Opaque(package),
                Some(ContentFormat::Opaque),
            ),
        )
        .await;
    assert_eq!(r.code, (2, 4));
    let blocks = stack.wire.outgoing(RequestType::Put, "/5/0/0");
    assert_eq!(blocks.len(), 20);
    for (n, b) in blocks.iter().enumerate() {
        let block = BlockOption::from_packet(&b.packet, CoapOption::Block1)
            .unwrap()
            .unwrap();
        assert_eq!((block.num as usize, block.size()), (n, 1024));
        assert_eq!(block.more, n < 19);
        assert_eq!(b.packet.payload.len(), 1024);
        // Piggybacked in the ACK: the same message ID.
        let answer = stack.wire.find(|f| {
            f.direction == Direction::In
                && f.is_response()
                && f.packet.header.message_id == b.packet.header.message_id
        });
        assert_eq!(answer[0].code(), if n < 19 { (2, 31) } else { (2, 4) });
    }

    // Then Execute Update: State 2 Downloaded, 3 Updating, 0 Idle with Update Result 1.
    let notified = |o| {
        stack
            .server_events()
            .into_iter()
            .filter_map(|(_, e)| match e {
                ServerEvent::Notification {
                    observation,
                    response,
                    ..
                } if observation == o => Some(value_of(&response)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let states = || notified(state);
    crate::fleet_support::eventually("State 2", || {
        states().contains(&Value::Integer(2)).then_some(())
    })
    .await;
    assert_eq!(stack.op(EP, execute("/5/0/2", None)).await.code, (2, 4));
    crate::fleet_support::eventually("State 0 after the update", || {
        (states().len() >= 3).then_some(())
    })
    .await;
    assert_eq!(
        states(),
        [Value::Integer(2), Value::Integer(3), Value::Integer(0)]
    );
    // Update Result: 0 until the update succeeds, then 1 (and nothing in between).
    crate::fleet_support::eventually("Update Result 1", || {
        (!notified(result).is_empty()).then_some(())
    })
    .await;
    assert_eq!(notified(result), [Value::Integer(1)]);
    assert_eq!(
        value_of(&stack.op(EP, read("/5/0/5")).await),
        Value::Integer(1)
    );
    assert!(started.elapsed() >= lwm2m_proto::client::FIRMWARE_UPDATE_DURATION);
    counters_until(&handle, "served", |c| c.requests_served >= 5).await;
    handle.stop(Duration::from_secs(5)).await.unwrap();
}
