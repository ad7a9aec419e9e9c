//! The server stack over real loopback sockets: REST authentication, the security and
//! bootstrap stores through REST, a bootstrap session and a registration played by a
//! scripted CoAP client, server-sent events, and a device-level read.

use std::collections::BTreeMap;

use lwm2m_proto::coap::message::{self, add_query, set_option, uint_bytes, uint_option};
use lwm2m_proto::coap::{CoapOption, IncomingRequest, MessageClass, RequestType, ResponseType};
use lwm2m_proto::content::{self, ContentFormat};
use lwm2m_proto::{Instance, InstanceId, Lwm2mPath, Node, ResourceId, ResourceValue, Value};
use serde_json::json;

use std::net::SocketAddr;
use std::sync::Arc;

use lwm2m_proto::ObjectId;
use lwm2m_proto::coap::Packet;
use lwm2m_proto::registration::Lwm2mVersion;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::ServerConfig;
use lwm2m_server::events::Direction;

use crate::server_support::{
    CoapPeer, Servers, Setup, SimClient, TOKEN, client_config, device_tree, http,
};

#[tokio::test]
async fn every_route_needs_the_bearer_token() {
    let s = Servers::start().await;
    for route in [
        "/clients",
        "/security/clients",
        "/bootstrap",
        "/objectspecs",
        "/event",
        "/nope",
    ] {
        let url = format!("{}{route}", s.api);
        let (status, body) = http("GET", &url, None, None).await;
        assert_eq!(status, 401, "{route}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("token")),
            "{body}"
        );
        assert_eq!(
            http("GET", &url, None, Some("not-it")).await.0,
            401,
            "{route}"
        );
    }
    assert_eq!(
        http("GET", &format!("{}/clients", s.api), None, Some(TOKEN))
            .await
            .0,
        200
    );
    let (status, specs) = s.call("GET", "/objectspecs/3", None).await;
    assert_eq!((status, specs["name"].as_str()), (200, Some("Device")));
}

#[tokio::test]
async fn security_store_through_rest_keeps_identities_unique_and_keys_hidden() {
    let s = Servers::start().await;
    let psk = |ep: &str, id: &str, key: &str| {
        json!({"endpoint": ep, "credentials": {"mode": "psk", "identity": id, "key": key}})
            .to_string()
    };
    let (status, shown) = s
        .call(
            "PUT",
            "/security/clients",
            Some(&psk("a", "id-a", "c0ffee")),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(shown["credentials"]["key"], "<redacted>");
    let (status, err) = s
        .call("PUT", "/security/clients", Some(&psk("b", "id-a", "01")))
        .await;
    assert_eq!(status, 409, "{err}");
    assert!(err["error"].as_str().unwrap().contains("id-a"));
    assert_eq!(
        s.call("PUT", "/security/clients", Some(&psk("a", "id-a", "02")))
            .await
            .0,
        200
    );
    let (status, bad) = s
        .call(
            "PUT",
            "/security/clients",
            Some(&psk("c", "id-c", "not hex")),
        )
        .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(
        s.call("PUT", "/security/clients", Some("{\"endpoint\":"))
            .await
            .0,
        400
    );

    let (_, all) = s.call("GET", "/security/clients", None).await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert!(!all.to_string().contains("c0ffee") && !all.to_string().contains("\"02\""));
    let (status, one) = s.call("GET", "/security/clients/a", None).await;
    assert_eq!(
        (status, one["credentials"]["identity"].as_str()),
        (200, Some("id-a"))
    );
    assert_eq!(s.call("DELETE", "/security/clients/a", None).await.0, 204);
    assert_eq!(s.call("GET", "/security/clients/a", None).await.0, 404);
    // The identity is free again.
    assert_eq!(
        s.call("PUT", "/security/clients", Some(&psk("b", "id-a", "01")))
            .await
            .0,
        201
    );
}

/// Plays the client side of a bootstrap session: every Bootstrap-Delete, -Write and
/// -Finish succeeds; the writes are kept by path.
async fn play_bootstrap(peer: &mut CoapPeer) -> BTreeMap<String, Vec<u8>> {
    let mut writes = BTreeMap::new();
    loop {
        let r = peer.next_request().await;
        let path = r.packet.get_option(CoapOption::UriPath).map(|s| s.len());
        let uri = message::uri_path(&r.packet);
        let code = match r.method() {
            Some(RequestType::Delete) => ResponseType::Deleted,
            Some(RequestType::Put) => {
                writes.insert(uri.clone(), r.packet.payload.clone());
                ResponseType::Changed
            }
            Some(RequestType::Post) => ResponseType::Changed,
            _ => ResponseType::NotFound,
        };
        let finish = uri == "/bs" && path == Some(1);
        peer.respond(r, message::response(code, Vec::new())).await;
        if finish {
            return writes;
        }
    }
}

#[tokio::test]
async fn bootstrap_configs_through_rest_reach_a_client_over_udp() {
    let s = Servers::start().await;
    let config = json!({"pattern": "dev-*", "config": {
        "security": {"0": {"uri": "coap://127.0.0.1:5683", "mode": "psk", "identity": "{ep}",
                           "secret_key": "a1b2c3", "short_server_id": 1}},
        "servers": {"0": {"short_server_id": 1, "lifetime": 300}}}});
    let (status, shown) = s.call("PUT", "/bootstrap", Some(&config.to_string())).await;
    assert_eq!(status, 201, "{shown}");
    assert_eq!(shown["config"]["security"]["0"]["secret_key"], "<redacted>");
    let (status, err) = s
        .call(
            "PUT",
            "/bootstrap",
            Some(r#"{"pattern": "x", "config": {"lifetmie": 1}}"#),
        )
        .await;
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("lifetmie"), "{err}");
    let (status, resolved) = s.call("GET", "/bootstrap/dev-7?resolve=true", None).await;
    assert_eq!((status, resolved["pattern"].as_str()), (200, Some("dev-*")));
    assert_eq!(
        s.call("GET", "/bootstrap/dev-7", None).await.0,
        404,
        "no config of its own"
    );

    let mut events = s.events("").await;
    let mut peer = CoapPeer::new(s.bootstrap.local_addr()).await;
    let mut request = message::request(RequestType::Post, "/bs");
    add_query(&mut request, "ep=dev-7");
    let answer = peer.request(request).await;
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    let writes = play_bootstrap(&mut peer).await;

    let started = events.next("BOOTSTRAP_STARTED").await;
    assert_eq!(started["config"], "pattern dev-*");
    assert_eq!(events.next("BOOTSTRAP_FINISHED").await["endpoint"], "dev-7");
    let security = writes.get("/0/0").expect("a Bootstrap-Write of /0/0");
    let node = content::decode(
        ContentFormat::Tlv,
        security,
        &Lwm2mPath::instance(0, 0),
        &lwm2m_proto::registry::Registry::embedded(),
    )
    .unwrap()
    .content;
    let Node::Instance(inst) = node else {
        panic!("{node:?}")
    };
    let written = lwm2m_proto::bootstrap::config::security_from_instance(&inst).unwrap();
    assert_eq!(written.identity, "dev-7", "{{ep}} replaced");
    assert_eq!(written.secret_key, "a1b2c3");

    // Removing the pattern: the next Bootstrap-Request is refused.
    assert_eq!(
        s.call("DELETE", "/bootstrap?pattern=dev-*", None).await.0,
        204
    );
    let mut request = message::request(RequestType::Post, "/bs");
    add_query(&mut request, "ep=dev-8");
    let answer = peer.request(request).await;
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::BadRequest)
    );
}

/// The objects of the scripted device.
fn device_objects() -> BTreeMap<u16, Node> {
    let s = |v: &str| ResourceValue::Single(Value::String(v.into()));
    let mut server = Instance::new();
    server.insert(ResourceId(0), ResourceValue::Single(Value::Integer(1)));
    server.insert(ResourceId(1), ResourceValue::Single(Value::Integer(300)));
    server.insert(ResourceId(7), s("U"));
    let mut device = Instance::new();
    device.insert(ResourceId(0), s("ACME"));
    device.insert(ResourceId(1), s("Model 1"));
    device.insert(ResourceId(14), s("+01"));
    let mut temp = Instance::new();
    temp.insert(ResourceId(5700), ResourceValue::Single(Value::Float(21.5)));
    temp.insert(ResourceId(5701), s("Cel"));
    let obj = |i: Instance| Node::Object(BTreeMap::from([(InstanceId(0), i)]));
    BTreeMap::from([(1, obj(server)), (3, obj(device)), (3303, obj(temp))])
}

/// Answers one request of the server as the device: Reads of whole objects with their
/// content in the Accept format (TLV without one), a Write on /3/0/14, 4.04 otherwise.
async fn answer_as_device(peer: &mut CoapPeer, r: IncomingRequest) -> String {
    let uri = message::uri_path(&r.packet);
    let path: Lwm2mPath = uri.parse().unwrap();
    let objects = device_objects();
    let mut response = message::response(ResponseType::NotFound, Vec::new());
    match (r.method(), path) {
        (Some(RequestType::Get), Lwm2mPath::Object(o)) if objects.contains_key(&o.0) => {
            let format = uint_option(&r.packet, CoapOption::Accept)
                .and_then(|c| u16::try_from(c).ok())
                .and_then(ContentFormat::from_code)
                .unwrap_or(ContentFormat::Tlv);
            response = message::response(
                ResponseType::Content,
                content::encode(format, &path, &objects[&o.0]).unwrap(),
            );
            set_option(
                &mut response,
                CoapOption::ContentFormat,
                uint_bytes(u32::from(format.code())),
            );
        }
        (Some(RequestType::Put), p) if p == Lwm2mPath::resource(3, 0, 14) => {
            response = message::response(ResponseType::Changed, Vec::new());
        }
        _ => {}
    }
    peer.respond(r, response).await;
    uri
}

#[tokio::test]
async fn a_registration_shows_in_events_and_the_device_tree_of_a_1_0_client_reads_every_object_at_once()
 {
    // NSTART 3 (RFC 7252 §4.7): the three Reads may be outstanding together.
    let mut config = ServerConfig::default();
    config.coap.nstart = 3;
    let s = Servers::start_with(Setup {
        config,
        ..Setup::default()
    })
    .await;
    let mut events = s.events("?ep=dev-1").await;
    let mut device = CoapPeer::new(s.server.local_addr()).await;
    let mut register = message::request(RequestType::Post, "/rd");
    for q in ["ep=dev-1", "lt=300", "lwm2m=1.0", "b=U"] {
        add_query(&mut register, q);
    }
    set_option(&mut register, CoapOption::ContentFormat, uint_bytes(40));
    register.payload = b"</>;rt=\"oma.lwm2m\",</1/0>,</3/0>,</3303/0>".to_vec();
    let answer = device.request(register).await;
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Created)
    );

    let registered = events.next("REGISTRATION").await;
    assert_eq!(registered["registration"]["endpoint"], "dev-1");
    assert_eq!(registered["registration"]["lwm2m_version"], "1.0");
    let (status, clients) = s.call("GET", "/clients", None).await;
    assert_eq!(status, 200);
    assert_eq!(clients[0]["endpoint"], "dev-1");
    assert_eq!(s.call("GET", "/clients/dev-2", None).await.0, 404);

    // The device-level read of a 1.0 client (no Read-Composite before 1.1): one Read per
    // object but Security, all three sent before the device answers any.
    let api = s.api.clone();
    let tree = tokio::spawn(async move {
        http(
            "GET",
            &format!("{api}/clients/dev-1/tree"),
            None,
            Some(TOKEN),
        )
        .await
    });
    let mut outstanding = Vec::new();
    for _ in 0..3 {
        outstanding.push(device.next_request().await);
    }
    let mut read = Vec::new();
    for r in outstanding {
        read.push(answer_as_device(&mut device, r).await);
    }
    read.sort();
    assert_eq!(read, ["/1", "/3", "/3303"]);
    let (status, tree) = tree.await.unwrap();
    assert_eq!(status, 200, "{tree}");
    assert_eq!(tree["read"], "per object", "{tree}");
    assert_eq!(tree["requests"], 3, "{tree}");
    let device_nodes = tree["objects"]["3"]["nodes"].as_array().unwrap();
    assert!(
        device_nodes.iter().any(|n| n["path"] == "/3/0/0"
            && n["value"] == "ACME"
            && n["resource"] == "Manufacturer"),
        "{tree}"
    );
    let temp = &tree["objects"]["3303"]["nodes"];
    assert!(
        temp.as_array()
            .unwrap()
            .iter()
            .any(|n| n["path"] == "/3303/0/5700" && n["value"] == 21.5),
        "{tree}"
    );

    // A Write typed through the registry, and a client error shown with its CoAP code.
    let api = s.api.clone();
    let write = tokio::spawn(async move {
        http(
            "PUT",
            &format!("{api}/clients/dev-1/3/0/14"),
            Some(r#"{"value": "+02"}"#),
            Some(TOKEN),
        )
        .await
    });
    let r = device.next_request().await;
    assert_eq!(r.method(), Some(RequestType::Put));
    answer_as_device(&mut device, r).await;
    assert_eq!(write.await.unwrap().0, 200);
    let api = s.api.clone();
    let missing = tokio::spawn(async move {
        http(
            "GET",
            &format!("{api}/clients/dev-1/5/0"),
            None,
            Some(TOKEN),
        )
        .await
    });
    let r = device.next_request().await;
    answer_as_device(&mut device, r).await;
    let (status, err) = missing.await.unwrap();
    assert_eq!(
        (status, err["coap_code"].as_str()),
        (502, Some("4.04")),
        "{err}"
    );
    assert_eq!(s.call("GET", "/clients/dev-1/3/x", None).await.0, 400);
    assert_eq!(
        s.call("PUT", "/clients/dev-1/3/0/13", Some(r#"{"value": "soon"}"#))
            .await
            .0,
        400
    );
}

/// The device-level read of a simulated 1.1 client (SenML CBOR) and of a 1.2 client that
/// prefers LwM2M CBOR: one Read-Composite of `/` each, one request on the wire, the whole
/// device in the answer, Security left out.
#[tokio::test]
async fn the_device_tree_of_a_1_1_or_1_2_client_is_one_read_composite() {
    let s = Servers::start().await;
    let registry = Registry::embedded();
    let cases = [
        ("tree-11", Lwm2mVersion::V1_1, ContentFormat::SenmlCbor),
        ("tree-12", Lwm2mVersion::V1_2, ContentFormat::Lwm2mCbor),
    ];
    for (n, (ep, version, answered_in)) in cases.into_iter().enumerate() {
        let mut config = client_config(ep, s.server.local_addr(), 20 + n as u64);
        config.version = version;
        if version == Lwm2mVersion::V1_2 {
            config.preferred_format = ContentFormat::Lwm2mCbor;
            config.supported_formats.push(ContentFormat::Lwm2mCbor);
        }
        let mut tree = device_tree(&registry);
        let security = Arc::new(registry.object(ObjectId(0)).unwrap().clone());
        tree.add_object(security, None);
        let mut secret = Instance::new();
        secret.insert(
            ResourceId(0),
            ResourceValue::Single(Value::String("coap://x".into())),
        );
        secret.insert(ResourceId(1), ResourceValue::Single(Value::Boolean(false)));
        tree.put_instance(ObjectId(0), InstanceId(0), secret);
        let mut client = SimClient::start("127.0.0.1:0".parse().unwrap(), config, tree).await;
        client.registered().await;
        let (status, registration) = s.call("GET", &format!("/clients/{ep}"), None).await;
        assert_eq!(status, 200, "{registration}");
        let peer: SocketAddr = registration["address"].as_str().unwrap().parse().unwrap();
        let before = s.wire.with(peer).len();

        let (status, tree) = s.call("GET", &format!("/clients/{ep}/tree"), None).await;
        assert_eq!(status, 200, "{ep}: {tree}");
        assert_eq!(tree["read"], "composite", "{ep}: {tree}");
        assert_eq!(tree["requests"], 1, "{ep}: {tree}");
        assert_eq!(tree["format"], json!(answered_in.name()), "{ep}: {tree}");
        let nodes = |o: &str| {
            tree["objects"][o]["nodes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        assert!(
            nodes("3")
                .iter()
                .any(|n| n["path"] == "/3/0/0" && n["value"] == "ACME"),
            "{ep}: {tree}"
        );
        assert!(
            nodes("3303")
                .iter()
                .any(|n| n["path"] == "/3303/0/5700" && n["value"] == 20.0),
            "{ep}: {tree}"
        );
        assert!(
            nodes("1")
                .iter()
                .any(|n| n["path"] == "/1/0/1" && n["value"] == 300),
            "{ep}: {tree}"
        );
        assert!(tree["objects"].get("0").is_none(), "{ep}: {tree}");
        // One exchange: a FETCH / out, its answer in.
        let exchange: Vec<(Direction, Packet)> = s.wire.with(peer).split_off(before);
        let requests: Vec<_> = exchange
            .iter()
            .filter(|(d, p)| {
                *d == Direction::Out && matches!(p.header.code, MessageClass::Request(_))
            })
            .map(|(_, p)| p.header.code)
            .collect();
        assert_eq!(
            requests,
            [MessageClass::Request(RequestType::Fetch)],
            "{ep}: {exchange:?}"
        );
    }
}

/// A 2.05 with `node` at `path` in the request's Accept format (TLV without one).
fn content_for(r: &IncomingRequest, path: &Lwm2mPath, node: &Node) -> lwm2m_proto::coap::Packet {
    let format = uint_option(&r.packet, CoapOption::Accept)
        .and_then(|c| u16::try_from(c).ok())
        .and_then(ContentFormat::from_code)
        .unwrap_or(ContentFormat::Tlv);
    let mut response = message::response(
        ResponseType::Content,
        content::encode(format, path, node).unwrap(),
    );
    set_option(
        &mut response,
        CoapOption::ContentFormat,
        uint_bytes(u32::from(format.code())),
    );
    response
}

#[tokio::test]
async fn observe_through_rest_delivers_notifications_as_events() {
    let s = Servers::start().await;
    let mut events = s.events("?ep=dev-obs").await;
    let mut device = CoapPeer::new(s.server.local_addr()).await;
    let mut register = message::request(RequestType::Post, "/rd");
    for q in ["ep=dev-obs", "lt=300", "lwm2m=1.1", "b=U"] {
        add_query(&mut register, q);
    }
    set_option(&mut register, CoapOption::ContentFormat, uint_bytes(40));
    register.payload = b"</1/0>,</3/0>,</3303/0>".to_vec();
    device.request(register).await;
    events.next("REGISTRATION").await;

    let path = Lwm2mPath::resource(3303, 0, 5700);
    let temp = |t: f64| Node::Resource(ResourceValue::Single(Value::Float(t)));
    let api = s.api.clone();
    let observe = tokio::spawn(async move {
        let url = format!("{api}/clients/dev-obs/3303/0/5700/observe");
        http("POST", &url, None, Some(TOKEN)).await
    });
    let r = device.next_request().await;
    assert_eq!(r.observe(), Some(0));
    let first = content_for(&r, &path, &temp(21.5));
    let observation = device.accept_observation(r, first).await;
    let (status, answer) = observe.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(answer["observation"].is_u64(), "{answer}");
    assert_eq!(answer["nodes"][0]["value"], 21.5);

    let mut n = message::response(
        ResponseType::Content,
        content::encode(ContentFormat::Tlv, &path, &temp(22.5)).unwrap(),
    );
    set_option(
        &mut n,
        CoapOption::ContentFormat,
        uint_bytes(u32::from(ContentFormat::Tlv.code())),
    );
    device.notify(observation, n).await;
    let note = events.next("NOTIFICATION").await;
    assert_eq!(note["path"], "/3303/0/5700");
    assert_eq!(note["response"]["nodes"][0]["value"], 22.5, "{note}");
    assert_eq!(note["response"]["nodes"][0]["resource"], "Sensor Value");

    let (status, cancelled) = s
        .call("DELETE", "/clients/dev-obs/3303/0/5700/observe", None)
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["cancelled"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        s.call("DELETE", "/clients/dev-obs/3303/0/5700/observe", None)
            .await
            .0,
        404
    );
}
