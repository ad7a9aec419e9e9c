//! The Registration interface and the client-initiated side of the LwM2M Server over real
//! loopback sockets (Core TS 1.1 §6.2, §6.4.6, §6.5): lifetime expiry, a Register that
//! replaces the registration, refusals with their codes and events, Send, queue mode, and a
//! client whose address changes behind a NAT.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lwm2m_proto::coap::message::{self, add_query, set_option, uint_bytes};
use lwm2m_proto::coap::{
    CoapOption, ExchangeError, MessageType, Packet, RequestType, ResponseType,
};
use lwm2m_proto::content::{self, ContentFormat};
use lwm2m_proto::server::{Content, OpError, Operation, Registration, ServerConfig, ServerEvent};
use lwm2m_proto::{Lwm2mPath, Node, Record, ResourceValue, Value};
use lwm2m_server::{Direction, DriverError};

use crate::server_support::{
    CoapPeer, PATIENCE, Servers, Setup, code, quick_config, register_request, strings,
};

fn read(path: Lwm2mPath) -> Operation {
    Operation::Read { path, format: None }
}

/// A 2.05 with `value` as text/plain.
fn text_content(value: &str) -> Packet {
    let mut r = message::response(ResponseType::Content, value.as_bytes().to_vec());
    set_option(&mut r, CoapOption::ContentFormat, uint_bytes(0));
    r
}

/// An Update (POST on the registration's location) with these queries.
fn update_request(location: &str, queries: &[&str]) -> Packet {
    let mut update = message::request(RequestType::Post, location);
    for q in queries {
        add_query(&mut update, q);
    }
    update
}

fn is_registered(e: &ServerEvent, ep: &str) -> Option<(Registration, Option<Registration>)> {
    match e {
        ServerEvent::Registered {
            registration,
            replaced,
        } if registration.endpoint == ep => Some((registration.clone(), replaced.clone())),
        _ => None,
    }
}

#[tokio::test]
async fn a_short_lifetime_expires_with_an_event() {
    let s = Servers::start().await;
    let mut events = s.server_events();
    let mut dev = CoapPeer::new(s.server.local_addr()).await;
    let start = Instant::now();
    let location = dev.register(&["ep=short", "lt=1"], "</3/0>").await;
    let (registration, _) = events.next(|e| is_registered(e, "short")).await;
    assert_eq!(registration.lifetime, 1);
    assert_eq!(format!("/rd/{}", registration.id), location);

    let expired = events
        .next(|e| match e {
            ServerEvent::Expired { registration } => Some(registration.clone()),
            _ => None,
        })
        .await;
    let after = start.elapsed();
    assert_eq!(expired.endpoint, "short");
    assert!(
        after >= Duration::from_secs(1) && after < Duration::from_secs(3),
        "expired after {after:?}"
    );
    assert!(s.server.registrations().get("short").is_none());
    let (status, clients) = s.call("GET", "/clients", None).await;
    assert_eq!((status, clients), (200, serde_json::json!([])));

    // The expired registration is gone: its Update gets 4.04 with the reason, and an event.
    let answer = dev.request(update_request(&location, &[])).await;
    assert_eq!(code(answer.header.code), (4, 4));
    let diagnostic = String::from_utf8(answer.payload).unwrap();
    assert!(diagnostic.contains(&registration.id), "{diagnostic}");
    let (peer, refused) = events
        .next(|e| match e {
            ServerEvent::RegistrationRefused { peer, code, .. } => Some((*peer, *code)),
            _ => None,
        })
        .await;
    assert_eq!((peer, refused), (dev.local_addr(), (4, 4)));
    // Operations on the endpoint are refused at once.
    let refused = s
        .server
        .request("short", read(Lwm2mPath::resource(3, 0, 0)))
        .await;
    assert!(
        matches!(
            refused,
            Err(DriverError::Op(OpError::UnknownEndpoint { .. }))
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn registering_again_replaces_the_registration() {
    let s = Servers::start().await;
    let mut events = s.server_events();
    let mut first = CoapPeer::new(s.server.local_addr()).await;
    let old = first.register(&["ep=again", "lt=300"], "</3/0>").await;
    let (old_reg, _) = events.next(|e| is_registered(e, "again")).await;

    // An operation in flight on the old registration...
    let server = s.server.clone();
    let pending = tokio::spawn(async move {
        server
            .request("again", read(Lwm2mPath::resource(3, 0, 0)))
            .await
    });
    let held = first.next_request().await;
    assert_eq!(held.path(), "/3/0/0");

    // ...ends when the client registers again (from another socket, as after a reboot).
    let mut second = CoapPeer::new(s.server.local_addr()).await;
    let new = second
        .register(&["ep=again", "lt=300", "lwm2m=1.1"], "</3/0>,</3303/0>")
        .await;
    assert_ne!(new, old);
    let (new_reg, replaced) = events.next(|e| is_registered(e, "again")).await;
    assert_eq!(replaced.map(|r| r.id), Some(old_reg.id.clone()));
    assert_eq!(new_reg.address, second.local_addr());
    let err = pending.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, DriverError::Op(OpError::Deregistered { endpoint }) if endpoint == "again"),
        "{err:?}"
    );
    let entry = s.server.registrations().get("again").unwrap();
    assert_eq!(
        (entry.registration.id.as_str(), entry.registration.address),
        (&new[4..], second.local_addr())
    );

    // The old location is gone, the new one updates.
    let answer = second.request(update_request(&old, &[])).await;
    assert_eq!(code(answer.header.code), (4, 4));
    let answer = second.request(update_request(&new, &["lt=600"])).await;
    assert_eq!(code(answer.header.code), (2, 4));
    assert_eq!(
        s.server
            .registrations()
            .get("again")
            .unwrap()
            .registration
            .lifetime,
        600
    );
    // Requests now go to the new socket.
    let server = s.server.clone();
    let op = tokio::spawn(async move {
        server
            .request("again", read(Lwm2mPath::resource(3, 0, 1)))
            .await
    });
    let r = second.next_request().await;
    assert_eq!(r.path(), "/3/0/1");
    second.respond(r, text_content("Model 2")).await;
    let answer = op.await.unwrap().unwrap();
    assert_eq!(
        answer.content,
        Some(Content::Node(Node::Resource(ResourceValue::Single(
            Value::String("Model 2".into())
        ))))
    );
}

#[tokio::test]
async fn refusals_carry_their_code_a_diagnostic_and_an_event() {
    let s = Servers::start().await;
    let mut events = s.server_events();
    let mut peer = CoapPeer::new(s.server.local_addr()).await;
    let mut text_register = register_request(&["ep=tx"], "</3/0>");
    set_option(&mut text_register, CoapOption::ContentFormat, uint_bytes(0));
    let mut get_rd = message::request(RequestType::Get, "/rd");
    add_query(&mut get_rd, "ep=x");
    let mut send = message::request(RequestType::Post, "/dp");
    set_option(&mut send, CoapOption::ContentFormat, uint_bytes(110));
    send.payload = br#"[{"n":"/3/0/0","vs":"x"}]"#.to_vec();
    // (request, code, a word of the diagnostic, a registration-interface refusal?)
    let cases: Vec<(Packet, (u8, u8), &str, bool)> = vec![
        (register_request(&["lt=60"], "</3/0>"), (4, 0), "ep", true),
        (
            register_request(&["ep=v", "lwm2m=9.9"], "</3/0>"),
            (4, 12),
            "9.9",
            true,
        ),
        (
            register_request(&["ep=l", "lt=soon"], "</3/0>"),
            (4, 0),
            "soon",
            true,
        ),
        (
            register_request(&["ep=b"], "</3/0"),
            (4, 0),
            "payload",
            true,
        ),
        (text_register, (4, 15), "link-format", true),
        (
            update_request("/rd/nosuchid", &[]),
            (4, 4),
            "nosuchid",
            true,
        ),
        (
            message::request(RequestType::Delete, "/rd/nosuchid"),
            (4, 4),
            "nosuchid",
            true,
        ),
        (get_rd, (4, 5), "GET", true),
        (
            message::request(RequestType::Get, "/3/0/0"),
            (4, 4),
            "/3/0/0",
            false,
        ),
        (send, (4, 4), "Update first", false),
    ];
    for (request, expected, word, registration) in cases {
        let what = format!(
            "{:?} {:?}",
            request.header.code,
            strings(&request, CoapOption::UriPath)
        );
        let answer = peer.request(request).await;
        assert_eq!(code(answer.header.code), expected, "{what}");
        // Piggybacked on the ACK (RFC 7252 §5.2.1), the reason as diagnostic payload
        // (RFC 7252 §5.5.2).
        assert_eq!(
            answer.header.get_type(),
            MessageType::Acknowledgement,
            "{what}"
        );
        let diagnostic = String::from_utf8(answer.payload).unwrap();
        assert!(diagnostic.contains(word), "{what}: {diagnostic}");
        let (peer_addr, code, reason, reg) = events
            .next(|e| match e {
                ServerEvent::RegistrationRefused { peer, code, reason } => {
                    Some((*peer, *code, reason.clone(), true))
                }
                ServerEvent::RequestRefused { peer, code, reason } => {
                    Some((*peer, *code, reason.clone(), false))
                }
                _ => None,
            })
            .await;
        assert_eq!(
            (peer_addr, code, reason.as_str(), reg),
            (
                peer.local_addr(),
                expected,
                diagnostic.as_str(),
                registration
            ),
            "{what}"
        );
    }
    assert!(s.server.registrations().is_empty());
}

#[tokio::test]
async fn send_is_delivered_as_an_event() {
    let s = Servers::start().await;
    let mut events = s.server_events();
    let mut sse = s.events("?ep=sender").await;
    let mut dev = CoapPeer::new(s.server.local_addr()).await;
    dev.register(&["ep=sender", "lwm2m=1.1"], "</3/0>,</3303/0>")
        .await;
    let records = vec![
        Record {
            path: Lwm2mPath::resource(3303, 0, 5700),
            value: Some(Value::Float(23.5)),
            time: None,
        },
        Record {
            path: Lwm2mPath::resource(3, 0, 9),
            value: Some(Value::Integer(80)),
            time: None,
        },
    ];
    let send = |format: ContentFormat, payload: Vec<u8>| {
        let mut r = message::request(RequestType::Post, "/dp");
        set_option(
            &mut r,
            CoapOption::ContentFormat,
            uint_bytes(u32::from(format.code())),
        );
        r.payload = payload;
        r
    };
    let json = content::encode_records(ContentFormat::SenmlJson, &records).unwrap();
    let answer = dev.request(send(ContentFormat::SenmlJson, json)).await;
    assert_eq!(code(answer.header.code), (2, 4));
    let (ep, got) = events
        .next(|e| match e {
            ServerEvent::Send {
                endpoint, records, ..
            } => Some((endpoint.clone(), records.clone())),
            _ => None,
        })
        .await;
    assert_eq!((ep.as_str(), got), ("sender", records.clone()));
    let shown = sse.next("SEND").await;
    assert_eq!(shown["endpoint"], "sender");
    assert_eq!(shown["nodes"][0]["path"], "/3303/0/5700");
    assert_eq!(shown["nodes"][0]["value"], 23.5);

    // SenML CBOR too; another format is 4.15, a broken payload 4.00.
    let cbor = content::encode_records(ContentFormat::SenmlCbor, &records).unwrap();
    let answer = dev.request(send(ContentFormat::SenmlCbor, cbor)).await;
    assert_eq!(code(answer.header.code), (2, 4));
    let answer = dev
        .request(send(ContentFormat::Text, b"23.5".to_vec()))
        .await;
    assert_eq!(code(answer.header.code), (4, 15));
    let answer = dev
        .request(send(ContentFormat::SenmlJson, b"[{\"n\":".to_vec()))
        .await;
    assert_eq!(code(answer.header.code), (4, 0));
    let refused: Vec<(u8, u8)> = events
        .drain()
        .iter()
        .filter_map(|e| match e {
            ServerEvent::RequestRefused { code, .. } => Some(*code),
            _ => None,
        })
        .collect();
    assert_eq!(refused, [(4, 15), (4, 0)]);

    // LwM2M 1.0 has no Send.
    let mut old = CoapPeer::new(s.server.local_addr()).await;
    old.register(&["ep=old", "lwm2m=1.0"], "</3/0>").await;
    let json = content::encode_records(ContentFormat::SenmlJson, &records).unwrap();
    let answer = old.request(send(ContentFormat::SenmlJson, json)).await;
    assert_eq!(code(answer.header.code), (4, 4));
}

#[tokio::test]
async fn queue_mode_holds_requests_until_the_client_wakes() {
    // Default CoAP timers: no retransmission disturbs the exchange checked below.
    let config = ServerConfig {
        awake_time: Duration::from_secs(1),
        queue_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let s = Servers::start_with(Setup {
        config,
        ..Setup::default()
    })
    .await;
    let mut events = s.server_events();
    let mut dev = CoapPeer::new(s.server.local_addr()).await;
    let location = dev
        .register(&["ep=q", "lwm2m=1.1", "b=U", "Q"], "</3/0>")
        .await;
    let (registration, _) = events.next(|e| is_registered(e, "q")).await;
    assert!(registration.queue_mode);
    events
        .next(|e| matches!(e, ServerEvent::Sleeping { endpoint } if endpoint == "q").then_some(()))
        .await;
    assert!(s.server.registrations().get("q").unwrap().sleeping);

    // Three requests while it sleeps, issued in this order: nothing goes out.
    let server = s.server.clone();
    let ops = tokio::spawn(async move {
        tokio::join!(
            server.request("q", read(Lwm2mPath::resource(3, 0, 0))),
            server.request(
                "q",
                Operation::Write {
                    path: Lwm2mPath::resource(3, 0, 14),
                    node: Node::Resource(ResourceValue::Single(Value::String("+03".into()))),
                    replace: true,
                    format: Some(ContentFormat::Text),
                },
            ),
            server.request(
                "q",
                Operation::Execute {
                    path: Lwm2mPath::resource(3, 0, 4),
                    args: None,
                },
            ),
        )
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!dev.has_datagram(), "a request reached a sleeping client");

    // The Update wakes it: the held requests follow the answer, in order, one at a time.
    let answer = dev.request(update_request(&location, &[])).await;
    assert_eq!(code(answer.header.code), (2, 4));
    events
        .next(|e| matches!(e, ServerEvent::Awake { endpoint } if endpoint == "q").then_some(()))
        .await;
    let r = dev.next_request().await;
    assert_eq!(
        (r.method(), r.path()),
        (Some(RequestType::Get), "/3/0/0".into())
    );
    dev.respond(r, text_content("ACME")).await;
    let r = dev.next_request().await;
    assert_eq!(
        (r.method(), r.path()),
        (Some(RequestType::Put), "/3/0/14".into())
    );
    assert_eq!(r.packet.payload, b"+03");
    dev.respond(r, message::response(ResponseType::Changed, Vec::new()))
        .await;
    let r = dev.next_request().await;
    assert_eq!(
        (r.method(), r.path()),
        (Some(RequestType::Post), "/3/0/4".into())
    );
    dev.respond(r, message::response(ResponseType::Changed, Vec::new()))
        .await;
    let (read_done, write_done, execute_done) = ops.await.unwrap();
    assert_eq!(read_done.unwrap().code, (2, 5));
    assert_eq!(write_done.unwrap().code, (2, 4));
    assert_eq!(execute_done.unwrap().code, (2, 4));

    // On the wire: the 2.04 of the Update went out before the first held request.
    let wire = s.wire.with(dev.local_addr());
    let out: Vec<(MessageType, (u8, u8))> = wire
        .iter()
        .filter(|(d, _)| *d == Direction::Out)
        .map(|(_, p)| (p.header.get_type(), code(p.header.code)))
        .collect();
    assert_eq!(
        out,
        [
            (MessageType::Acknowledgement, (2, 1)),
            (MessageType::Acknowledgement, (2, 4)),
            (MessageType::Confirmable, (0, 1)),
            (MessageType::Confirmable, (0, 3)),
            (MessageType::Confirmable, (0, 2)),
        ]
    );

    // Asleep again after the awake window; a request then waits, and gives up after the
    // queue time-out.
    events
        .next(|e| matches!(e, ServerEvent::Sleeping { endpoint } if endpoint == "q").then_some(()))
        .await;
    let started = Instant::now();
    let err = s
        .server
        .request("q", read(Lwm2mPath::resource(3, 0, 1)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DriverError::Op(OpError::QueueTimeout { endpoint, .. }) if endpoint == "q"),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(!dev.has_datagram());
}

#[tokio::test]
async fn a_client_behind_a_new_nat_mapping_is_reached_at_its_new_address() {
    let s = Servers::start_with(Setup {
        config: quick_config(),
        ..Setup::default()
    })
    .await;
    let mut events = s.server_events();
    let mut before = CoapPeer::new(s.server.local_addr()).await;
    let old: SocketAddr = before.local_addr();
    let location = before
        .register(&["ep=nat", "lwm2m=1.1"], "</3/0>,</3303/0>")
        .await;

    // An observation made at the old address.
    let server = s.server.clone();
    let observe = tokio::spawn(async move {
        server
            .request(
                "nat",
                Operation::Observe {
                    path: Lwm2mPath::resource(3303, 0, 5700),
                    format: Some(ContentFormat::Text),
                },
            )
            .await
    });
    let r = before.next_request().await;
    let mut first = text_content("20.5");
    first.set_observe_value(1);
    before.accept_observation(r, first).await;
    let observation = observe.await.unwrap().unwrap().observation.unwrap();

    // A request to the old address: the client no longer hears there (never answered).
    let server = s.server.clone();
    let lost = tokio::spawn(async move {
        server
            .request("nat", read(Lwm2mPath::resource(3, 0, 0)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The client's Update comes from a new port.
    let mut after = CoapPeer::new(s.server.local_addr()).await;
    let new = after.local_addr();
    assert_ne!(new, old);
    let answer = after.request(update_request(&location, &[])).await;
    assert_eq!(code(answer.header.code), (2, 4));
    // The observation made at the old address ends first (its notifications could not
    // match), then the Update is reported.
    let reason = events
        .next(|e| match e {
            ServerEvent::ObservationEnded {
                observation: o,
                reason,
                ..
            } if *o == observation => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert!(reason.contains("NAT"), "{reason}");
    let previous = events
        .next(|e| match e {
            ServerEvent::Updated {
                registration,
                previous_address,
            } if registration.endpoint == "nat" => {
                assert_eq!(registration.address, new);
                Some(*previous_address)
            }
            _ => None,
        })
        .await;
    assert_eq!(previous, Some(old));
    assert_eq!(
        s.server
            .registrations()
            .get("nat")
            .unwrap()
            .registration
            .address,
        new
    );

    // New requests go to the new address.
    let server = s.server.clone();
    let op = tokio::spawn(async move {
        server
            .request("nat", read(Lwm2mPath::resource(3, 0, 1)))
            .await
    });
    let r = after.next_request().await;
    assert_eq!(r.path(), "/3/0/1");
    after.respond(r, text_content("Model 1")).await;
    assert_eq!(op.await.unwrap().unwrap().code, (2, 5));

    // The one sent to the old address times out, reported with that address.
    let err = tokio::time::timeout(PATIENCE, lost)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    match &err {
        DriverError::Op(OpError::Exchange { address, error }) => {
            assert_eq!(*address, old);
            assert_eq!(*error, ExchangeError::Timeout { transmissions: 3 });
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(&old.to_string()), "{err}");
    // On the old socket: the GET and its two retransmissions, one message ID.
    let got = before.take_raw();
    assert_eq!(got.len(), 3, "{got:?}");
    for p in &got {
        assert_eq!(p.header.get_type(), MessageType::Confirmable);
        assert_eq!(message::uri_path(p), "/3/0/0");
        assert_eq!(p.header.message_id, got[0].header.message_id);
    }
    assert!(!after.has_datagram());
}
