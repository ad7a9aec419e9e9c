//! The Device Management and Information Reporting operations of the LwM2M Server over
//! real loopback sockets (Core TS 1.1 §6.3, §6.4): each test registers a scripted device,
//! runs an operation through `ServerHandle::request`, checks the request as the device
//! receives it (method, Uri-Path, Uri-Query, Content-Format, Accept, payload decoded),
//! answers it, and checks the decoded outcome the server reports.

use std::collections::BTreeMap;

use lwm2m_proto::coap::message::{self, set_option, uint_bytes, uint_option};
use lwm2m_proto::coap::{CoapOption, IncomingRequest, Packet, RequestType, ResponseType};
use lwm2m_proto::codec::link::{AttributeName, AttributeUpdate, DiscoverEntry};
use lwm2m_proto::content::{self, ContentFormat};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{Content, OpError, Operation, Response, ServerEvent};
use lwm2m_proto::{
    Instance, InstanceId, Lwm2mPath, Node, ObjectId, Record, ResourceId, ResourceValue, Value,
};
use lwm2m_server::DriverError;
use tokio::task::JoinHandle;

use crate::server_support::{CoapPeer, Servers, strings};

/// A device registered with `queries` and `links`.
async fn device(s: &Servers, queries: &[&str], links: &str) -> CoapPeer {
    let mut peer = CoapPeer::new(s.server.local_addr()).await;
    peer.register(queries, links).await;
    peer
}

/// Runs an operation in the background (the device answers meanwhile).
fn ask(s: &Servers, ep: &str, op: Operation) -> JoinHandle<Result<Response, DriverError>> {
    let (server, ep) = (s.server.clone(), ep.to_owned());
    tokio::spawn(async move { server.request(&ep, op).await })
}

fn format_of(packet: &Packet, option: CoapOption) -> Option<u32> {
    uint_option(packet, option)
}

/// A response with a Content-Format.
fn content(code: ResponseType, format: ContentFormat, payload: Vec<u8>) -> Packet {
    let mut r = message::response(code, payload);
    set_option(
        &mut r,
        CoapOption::ContentFormat,
        uint_bytes(u32::from(format.code())),
    );
    r
}

fn float(v: f64) -> ResourceValue {
    ResourceValue::Single(Value::Float(v))
}

fn text(v: &str) -> ResourceValue {
    ResourceValue::Single(Value::String(v.into()))
}

fn record(path: Lwm2mPath, value: Option<Value>) -> Record {
    Record {
        path,
        value,
        time: None,
    }
}

/// Checks method and Uri-Path of a request.
fn expect(r: &IncomingRequest, method: RequestType, path: &str) {
    assert_eq!(r.method(), Some(method), "{:?}", r.packet);
    assert_eq!(r.path(), path, "{:?}", r.packet);
}

#[tokio::test]
async fn execute_sends_its_arguments_as_text() {
    let s = Servers::start().await;
    let mut dev = device(&s, &["ep=ex", "lwm2m=1.1"], "</3/0>,</5/0>").await;
    let op = ask(
        &s,
        "ex",
        Operation::Execute {
            path: Lwm2mPath::resource(5, 0, 2),
            args: Some("0='http://fw',1".into()),
        },
    );
    let r = dev.next_request().await;
    expect(&r, RequestType::Post, "/5/0/2");
    // Core TS 1.1 §6.3.5: the arguments are the payload, text/plain.
    assert_eq!(format_of(&r.packet, CoapOption::ContentFormat), Some(0));
    assert_eq!(r.packet.payload, b"0='http://fw',1");
    assert_eq!(format_of(&r.packet, CoapOption::Accept), None);
    dev.respond(r, message::response(ResponseType::Changed, Vec::new()))
        .await;
    let answer = op.await.unwrap().unwrap();
    assert_eq!(answer.code, (2, 4));
    assert_eq!(answer.content, None);

    // Without arguments: no payload, no Content-Format.
    let op = ask(
        &s,
        "ex",
        Operation::Execute {
            path: Lwm2mPath::resource(3, 0, 4),
            args: None,
        },
    );
    let r = dev.next_request().await;
    expect(&r, RequestType::Post, "/3/0/4");
    assert!(r.packet.payload.is_empty());
    assert_eq!(format_of(&r.packet, CoapOption::ContentFormat), None);
    dev.respond(
        r,
        message::response(ResponseType::MethodNotAllowed, b"not executable".to_vec()),
    )
    .await;
    let answer = op.await.unwrap().unwrap();
    assert_eq!(answer.code, (4, 5));
    assert_eq!(answer.diagnostic.as_deref(), Some("not executable"));

    // Execute of an instance is refused before anything is sent.
    let refused = s
        .server
        .request(
            "ex",
            Operation::Execute {
                path: Lwm2mPath::instance(3, 0),
                args: None,
            },
        )
        .await;
    assert!(
        matches!(refused, Err(DriverError::Op(OpError::Invalid { .. }))),
        "{refused:?}"
    );
    assert!(!dev.has_datagram());
}

#[tokio::test]
async fn create_and_delete_under_an_alternate_path() {
    let s = Servers::start().await;
    // Objects under /lwm2m (Core TS 1.1 §6.2.1): requests go there, Location-Paths come back
    // from there.
    let mut dev = device(
        &s,
        &["ep=cr", "lwm2m=1.1"],
        "</lwm2m>;rt=\"oma.lwm2m\",</lwm2m/3303/0>",
    )
    .await;
    let registry = Registry::embedded();
    let resources: Instance = [
        (ResourceId(5700), float(18.5)),
        (ResourceId(5701), text("Cel")),
    ]
    .into();

    // With an instance id: an Object Instance TLV names it.
    let op = ask(
        &s,
        "cr",
        Operation::Create {
            object: ObjectId(3303),
            instance: Some(InstanceId(1)),
            resources: resources.clone(),
            format: None,
        },
    );
    let r = dev.next_request().await;
    expect(&r, RequestType::Post, "/lwm2m/3303");
    assert_eq!(
        format_of(&r.packet, CoapOption::ContentFormat),
        Some(u32::from(ContentFormat::Tlv.code()))
    );
    let sent = content::decode(
        ContentFormat::Tlv,
        &r.packet.payload,
        &Lwm2mPath::object(3303),
        &registry,
    )
    .unwrap();
    assert_eq!(
        sent.content,
        Node::Object(BTreeMap::from([(InstanceId(1), resources.clone())]))
    );
    let mut created = message::response(ResponseType::Created, Vec::new());
    for segment in ["lwm2m", "3303", "1"] {
        created.add_option(CoapOption::LocationPath, segment.as_bytes().to_vec());
    }
    dev.respond(r, created).await;
    let answer = op.await.unwrap().unwrap();
    assert_eq!(answer.code, (2, 1));
    assert_eq!(answer.location, Some(Lwm2mPath::instance(3303, 1)));

    // Without an instance id: bare resources in TLV, the device picks the id.
    let op = ask(
        &s,
        "cr",
        Operation::Create {
            object: ObjectId(3303),
            instance: None,
            resources: resources.clone(),
            format: None,
        },
    );
    let r = dev.next_request().await;
    expect(&r, RequestType::Post, "/lwm2m/3303");
    let sent = content::decode(
        ContentFormat::Tlv,
        &r.packet.payload,
        &Lwm2mPath::instance(3303, 0),
        &registry,
    )
    .unwrap();
    assert_eq!(sent.content, Node::Instance(resources.clone()));
    let mut created = message::response(ResponseType::Created, Vec::new());
    for segment in ["lwm2m", "3303", "7"] {
        created.add_option(CoapOption::LocationPath, segment.as_bytes().to_vec());
    }
    dev.respond(r, created).await;
    let answer = op.await.unwrap().unwrap();
    assert_eq!(answer.location, Some(Lwm2mPath::instance(3303, 7)));

    // Delete: DELETE of the instance, 2.02; a missing one, 4.04 with its diagnostic.
    let op = ask(
        &s,
        "cr",
        Operation::Delete {
            path: Lwm2mPath::instance(3303, 7),
        },
    );
    let r = dev.next_request().await;
    expect(&r, RequestType::Delete, "/lwm2m/3303/7");
    assert!(r.packet.payload.is_empty());
    dev.respond(r, message::response(ResponseType::Deleted, Vec::new()))
        .await;
    assert_eq!(op.await.unwrap().unwrap().code, (2, 2));
    let op = ask(
        &s,
        "cr",
        Operation::Delete {
            path: Lwm2mPath::instance(3303, 9),
        },
    );
    let r = dev.next_request().await;
    expect(&r, RequestType::Delete, "/lwm2m/3303/9");
    dev.respond(
        r,
        message::response(ResponseType::NotFound, b"no instance 9".to_vec()),
    )
    .await;
    let answer = op.await.unwrap().unwrap();
    assert_eq!(
        (answer.code, answer.diagnostic.as_deref()),
        ((4, 4), Some("no instance 9"))
    );
}

#[tokio::test]
async fn discover_reads_attributes_and_dim() {
    let s = Servers::start().await;
    let mut dev = device(&s, &["ep=di", "lwm2m=1.1"], "</3/0>").await;
    let op = ask(
        &s,
        "di",
        Operation::Discover {
            path: Lwm2mPath::instance(3, 0),
        },
    );
    let r = dev.next_request().await;
    expect(&r, RequestType::Get, "/3/0");
    assert_eq!(format_of(&r.packet, CoapOption::Accept), Some(40));
    let links = "</3/0>;pmin=10;pmax=60,</3/0/0>,</3/0/11>;dim=2,</3/0/14>;gt=5.5";
    dev.respond(
        r,
        content(
            ResponseType::Content,
            ContentFormat::LinkFormat,
            links.into(),
        ),
    )
    .await;
    let answer = op.await.unwrap().unwrap();
    assert_eq!(answer.code, (2, 5));
    assert_eq!(answer.format, Some(ContentFormat::LinkFormat));
    let Some(Content::Links(entries)) = answer.content else {
        panic!("{answer:?}")
    };
    let paths: Vec<String> = entries.iter().map(|e| e.path.to_string()).collect();
    assert_eq!(paths, ["/3/0", "/3/0/0", "/3/0/11", "/3/0/14"]);
    let by =
        |p: &str| -> &DiscoverEntry { entries.iter().find(|e| e.path.to_string() == p).unwrap() };
    assert_eq!(
        (by("/3/0").attributes.pmin, by("/3/0").attributes.pmax),
        (Some(10), Some(60))
    );
    assert_eq!(by("/3/0/11").dim, Some(2));
    assert_eq!(by("/3/0/0").dim, None);
    assert_eq!(by("/3/0/14").attributes.gt, Some(5.5));

    // A Discover answered in another format is a decode error naming the problem.
    let op = ask(
        &s,
        "di",
        Operation::Discover {
            path: Lwm2mPath::object(3),
        },
    );
    let r = dev.next_request().await;
    dev.respond(
        r,
        content(ResponseType::Content, ContentFormat::Text, b"3".to_vec()),
    )
    .await;
    let err = op.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, DriverError::Op(OpError::Decode { code: (2, 5), .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn write_attributes_sends_exactly_the_query() {
    let s = Servers::start().await;
    let mut dev = device(&s, &["ep=wa", "lwm2m=1.1"], "</3303/0>").await;
    let mut attributes = AttributeUpdate::default();
    attributes.set.pmin = Some(5);
    attributes.set.pmax = Some(60);
    attributes.set.gt = Some(25.5);
    attributes.set.epmin = Some(1);
    attributes.unset.insert(AttributeName::St);
    let op = ask(
        &s,
        "wa",
        Operation::WriteAttributes {
            path: Lwm2mPath::resource(3303, 0, 5700),
            attributes,
        },
    );
    let r = dev.next_request().await;
    expect(&r, RequestType::Put, "/3303/0/5700");
    // Core TS 1.1 §6.3.4: the attributes are Uri-Query options, no payload.
    assert_eq!(
        strings(&r.packet, CoapOption::UriQuery),
        ["pmin=5", "pmax=60", "gt=25.5", "epmin=1", "st"]
    );
    assert!(r.packet.payload.is_empty());
    assert_eq!(format_of(&r.packet, CoapOption::ContentFormat), None);
    dev.respond(r, message::response(ResponseType::Changed, Vec::new()))
        .await;
    assert_eq!(op.await.unwrap().unwrap().code, (2, 4));

    // epmin is LwM2M 1.1: refused for a 1.0 client before anything is sent.
    let mut old = device(&s, &["ep=wa-10", "lwm2m=1.0"], "</3303/0>").await;
    let mut attributes = AttributeUpdate::default();
    attributes.set.epmin = Some(1);
    let refused = s
        .server
        .request(
            "wa-10",
            Operation::WriteAttributes {
                path: Lwm2mPath::resource(3303, 0, 5700),
                attributes,
            },
        )
        .await;
    assert!(
        matches!(refused, Err(DriverError::Op(OpError::Invalid { .. }))),
        "{refused:?}"
    );
    assert!(old.take_raw().is_empty());
}

#[tokio::test]
async fn read_and_write_composite_in_senml_json() {
    let s = Servers::start().await;
    let mut dev = device(
        &s,
        &["ep=co", "lwm2m=1.1"],
        "</>;rt=\"oma.lwm2m\";ct=110,</3/0>,</3303/0>",
    )
    .await;
    let registry = Registry::embedded();
    let paths = vec![
        Lwm2mPath::resource(3, 0, 0),
        Lwm2mPath::resource(3303, 0, 5700),
    ];
    let op = ask(
        &s,
        "co",
        Operation::ReadComposite {
            paths: paths.clone(),
            format: None,
        },
    );
    let r = dev.next_request().await;
    // Core TS 1.1 §6.3.8: FETCH on the root, the paths as SenML records without values.
    expect(&r, RequestType::Fetch, "/");
    assert!(strings(&r.packet, CoapOption::UriPath).is_empty());
    assert_eq!(format_of(&r.packet, CoapOption::ContentFormat), Some(110));
    assert_eq!(format_of(&r.packet, CoapOption::Accept), Some(110));
    let asked = content::decode_records(ContentFormat::SenmlJson, &r.packet.payload, &registry)
        .unwrap()
        .content;
    assert_eq!(
        asked,
        paths.iter().map(|p| record(*p, None)).collect::<Vec<_>>()
    );
    let values = vec![
        record(paths[0], Some(Value::String("ACME".into()))),
        record(paths[1], Some(Value::Float(21.5))),
    ];
    let payload = content::encode_records(ContentFormat::SenmlJson, &values).unwrap();
    dev.respond(
        r,
        content(ResponseType::Content, ContentFormat::SenmlJson, payload),
    )
    .await;
    let answer = op.await.unwrap().unwrap();
    assert_eq!(answer.code, (2, 5));
    assert_eq!(answer.content, Some(Content::Records(values.clone())));

    // Write-Composite: iPATCH on the root with the values.
    let writes = vec![
        record(
            Lwm2mPath::resource(3, 0, 14),
            Some(Value::String("+02".into())),
        ),
        record(
            Lwm2mPath::resource(3303, 0, 5701),
            Some(Value::String("K".into())),
        ),
    ];
    let op = ask(
        &s,
        "co",
        Operation::WriteComposite {
            records: writes.clone(),
            format: None,
        },
    );
    let r = dev.next_request().await;
    expect(&r, RequestType::IPatch, "/");
    assert!(strings(&r.packet, CoapOption::UriPath).is_empty());
    assert_eq!(format_of(&r.packet, CoapOption::ContentFormat), Some(110));
    let sent = content::decode_records(ContentFormat::SenmlJson, &r.packet.payload, &registry)
        .unwrap()
        .content;
    assert_eq!(sent, writes);
    dev.respond(r, message::response(ResponseType::Changed, Vec::new()))
        .await;
    assert_eq!(op.await.unwrap().unwrap().code, (2, 4));

    // A 1.0 client has no composite operations: refused before anything is sent.
    let mut old = device(&s, &["ep=co-10", "lwm2m=1.0"], "</3/0>").await;
    let refused = s
        .server
        .request(
            "co-10",
            Operation::ReadComposite {
                paths,
                format: None,
            },
        )
        .await;
    assert!(
        matches!(refused, Err(DriverError::Op(OpError::Invalid { .. }))),
        "{refused:?}"
    );
    assert!(old.take_raw().is_empty());
}

#[tokio::test]
async fn observe_composite_delivers_notifications_until_cancelled() {
    let s = Servers::start().await;
    let mut events = s.server_events();
    let mut dev = device(
        &s,
        &["ep=oc", "lwm2m=1.1"],
        "</>;rt=\"oma.lwm2m\";ct=\"110 112\",</3/0>,</3303/0>",
    )
    .await;
    let registry = Registry::embedded();
    let paths = vec![
        Lwm2mPath::resource(3303, 0, 5700),
        Lwm2mPath::resource(3, 0, 9),
    ];
    let op = ask(
        &s,
        "oc",
        Operation::ObserveComposite {
            paths: paths.clone(),
            format: None,
        },
    );
    let r = dev.next_request().await;
    // Core TS 1.1 §6.4.3: FETCH on the root with Observe = 0; SenML CBOR was announced.
    expect(&r, RequestType::Fetch, "/");
    assert!(strings(&r.packet, CoapOption::UriPath).is_empty());
    assert_eq!(r.observe(), Some(0));
    assert_eq!(format_of(&r.packet, CoapOption::ContentFormat), Some(112));
    assert_eq!(format_of(&r.packet, CoapOption::Accept), Some(112));
    let asked = content::decode_records(ContentFormat::SenmlCbor, &r.packet.payload, &registry)
        .unwrap()
        .content;
    assert_eq!(
        asked,
        paths.iter().map(|p| record(*p, None)).collect::<Vec<_>>()
    );
    let values = |t: f64, battery: i64| {
        vec![
            record(paths[0], Some(Value::Float(t))),
            record(paths[1], Some(Value::Integer(battery))),
        ]
    };
    let cbor = |records: &[Record]| {
        content(
            ResponseType::Content,
            ContentFormat::SenmlCbor,
            content::encode_records(ContentFormat::SenmlCbor, records).unwrap(),
        )
    };
    let observation = dev.accept_observation(r, cbor(&values(20.0, 90))).await;
    let answer = op.await.unwrap().unwrap();
    assert_eq!(answer.content, Some(Content::Records(values(20.0, 90))));
    let id = answer.observation.expect("an observation");
    assert_eq!(
        s.server.observations("oc").await.unwrap(),
        [(id, paths.clone())]
    );

    dev.notify(observation, cbor(&values(21.0, 89))).await;
    let (seq, response) = events
        .next(|e| match e {
            ServerEvent::Notification {
                observation,
                endpoint,
                path,
                response,
                seq,
            } if *observation == id => {
                assert_eq!((endpoint.as_str(), *path), ("oc", paths[0]));
                Some((*seq, response.clone()))
            }
            _ => None,
        })
        .await;
    assert!(seq > 0);
    assert_eq!(response.content, Some(Content::Records(values(21.0, 89))));

    // Passive cancellation: ended at once; the next notification gets a Reset (RFC 7641
    // §3.6) and the device's observation ends.
    let done = s
        .server
        .request(
            "oc",
            Operation::CancelObservation {
                observation: id,
                active: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(done.code, (0, 0));
    events
        .next(|e| {
            matches!(e, ServerEvent::ObservationEnded { observation, .. } if *observation == id)
                .then_some(())
        })
        .await;
    assert!(s.server.observations("oc").await.unwrap().is_empty());
    let before = s.wire.with(dev.local_addr()).len();
    dev.notify(observation, cbor(&values(22.0, 88))).await;
    let reset = tokio::time::timeout(crate::server_support::PATIENCE, async {
        loop {
            let wire = s.wire.with(dev.local_addr());
            if let Some((_, p)) = wire[before..]
                .iter()
                .find(|(d, _)| *d == lwm2m_server::Direction::Out)
            {
                return p.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("an answer to the stale notification");
    assert_eq!(
        reset.header.get_type(),
        lwm2m_proto::coap::MessageType::Reset
    );
    assert!(
        events
            .drain()
            .iter()
            .all(|e| !matches!(e, ServerEvent::Notification { .. })),
        "no notification after the cancellation"
    );
}
