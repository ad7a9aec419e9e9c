//! The Leshan-compatible API (`/leshan/api/`) over real loopback sockets: each route against
//! a simulated client ([`SimClient`]) or a scripted device ([`CoapPeer`]) registered over
//! UDP, its answer compared with the shapes of Eclipse Leshan 2.x's demo server (field
//! names, node kinds, status strings, HTTP codes and text errors).

use std::collections::BTreeSet;

use lwm2m_proto::coap::message::{self, add_query, set_option, uint_bytes, uint_option};
use lwm2m_proto::coap::{CoapOption, IncomingRequest, Packet, RequestType, ResponseType};
use lwm2m_proto::content::{self, ContentFormat};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::{Lwm2mPath, Node, ResourceValue, Value};
use serde_json::{Value as Json, json};

use crate::server_support::{
    CoapPeer, Servers, Setup, SimClient, Sse, TOKEN, agent, client_config, device_tree, strings,
};

/// The Leshan routes' base: `http://127.0.0.1:PORT/leshan/api`.
fn base(s: &Servers) -> String {
    s.api.replace("/api", "/leshan/api")
}

/// One HTTP request with the token: status, content type and body text.
async fn raw(
    method: &str,
    url: &str,
    body: Option<&str>,
    content_type: &str,
) -> (u16, String, String) {
    let (method, url, ct) = (method.to_owned(), url.to_owned(), content_type.to_owned());
    let body = body.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let req = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(&url)
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Content-Type", ct)
            .body(body.unwrap_or_default())
            .unwrap();
        let mut resp = agent().run(req).expect("the API answers");
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, ct, resp.body_mut().read_to_string().unwrap())
    })
    .await
    .unwrap()
}

/// A Leshan call answered 200 with JSON.
async fn ok_json(s: &Servers, method: &str, route: &str, body: Option<&str>) -> Json {
    let url = format!("{}{route}", base(s));
    let (status, ct, text) = raw(method, &url, body, "application/json").await;
    assert_eq!(status, 200, "{method} {route}: {text}");
    assert!(ct.starts_with("application/json"), "{ct}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// A Leshan call expected to fail with `status` and a text body.
async fn failing(
    s: &Servers,
    method: &str,
    route: &str,
    body: Option<&str>,
    status: u16,
) -> String {
    let url = format!("{}{route}", base(s));
    let (got, ct, text) = raw(method, &url, body, "application/json").await;
    assert_eq!(got, status, "{method} {route}: {text}");
    assert!(ct.starts_with("text/plain"), "{ct}");
    text
}

fn keys(j: &Json) -> BTreeSet<String> {
    j.as_object()
        .unwrap_or_else(|| panic!("not an object: {j}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// The fields of Leshan's `JacksonRegistrationSerializer` (`smsNumber` only when set,
/// `sleeping` only in queue mode: Leshan's mapper leaves nulls out).
const REGISTRATION_KEYS: [&str; 14] = [
    "endpoint",
    "registrationId",
    "registrationDate",
    "lastUpdate",
    "address",
    "lwM2mVersion",
    "lifetime",
    "bindingMode",
    "rootPath",
    "objectLinks",
    "secure",
    "additionalRegistrationAttributes",
    "queuemode",
    "availableInstances",
];

/// A simulated 1.1 device (objects 1, 3, 3303) registered as `ep`.
async fn sim(s: &Servers, ep: &str) -> SimClient {
    let registry = Registry::embedded();
    let mut c = SimClient::start(
        "127.0.0.1:0".parse().unwrap(),
        client_config(ep, s.server.local_addr(), 7),
        device_tree(&registry),
    )
    .await;
    c.registered().await;
    c
}

/// A scripted 1.1 device registered as `ep` with `</1/0>,</3/0>,</3303/0>`.
async fn scripted(s: &Servers, ep: &str) -> (CoapPeer, String) {
    let mut device = CoapPeer::new(s.server.local_addr()).await;
    let location = device
        .register(
            &[&format!("ep={ep}"), "lt=300", "lwm2m=1.1", "b=U"],
            "</1/0>,</3/0>,</3303/0>",
        )
        .await;
    (device, location)
}

/// A 2.05 carrying `node` at `path` in the Accept format of `r` (TLV without one).
fn content_for(r: &IncomingRequest, path: &Lwm2mPath, node: &Node) -> Packet {
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

/// Runs a Leshan call in the background while the test plays the device.
fn spawn_call(
    s: &Servers,
    method: &'static str,
    route: String,
    body: Option<&'static str>,
    content_type: &'static str,
) -> tokio::task::JoinHandle<(u16, String, String)> {
    let url = format!("{}{route}", base(s));
    tokio::spawn(async move { raw(method, &url, body, content_type).await })
}

#[tokio::test]
async fn leshan_clients_list_registrations_in_leshans_shape() {
    let s = Servers::start().await;
    // Same token as the rest of the API.
    let (status, _, _) = {
        let url = format!("{}/clients", base(&s));
        tokio::task::spawn_blocking(move || {
            let mut r = agent().get(&url).call().unwrap();
            (
                r.status().as_u16(),
                String::new(),
                r.body_mut().read_to_string().unwrap(),
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(status, 401);
    assert_eq!(ok_json(&s, "GET", "/clients", None).await, json!([]));

    let _c = sim(&s, "lsh-reg").await;
    let all = ok_json(&s, "GET", "/clients", None).await;
    let [reg] = all.as_array().unwrap().as_slice() else {
        panic!("{all}")
    };
    assert_eq!(keys(reg), set(&REGISTRATION_KEYS), "{reg}");
    assert_eq!(reg["endpoint"], "lsh-reg");
    assert_eq!(reg["lwM2mVersion"], "1.1");
    assert_eq!(reg["lifetime"], 300);
    assert_eq!(reg["bindingMode"], "U");
    assert_eq!(reg["rootPath"], "/");
    assert_eq!(reg["secure"], false);
    assert_eq!(reg["queuemode"], false);
    assert!(reg["registrationDate"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(reg["registrationId"].is_string());
    assert!(reg["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(
        reg["availableInstances"],
        json!({"1": [0], "3": [0], "3303": [0]})
    );
    let links = reg["objectLinks"].as_array().unwrap();
    for link in links {
        assert_eq!(keys(link), set(&["url", "attributes"]), "{link}");
    }
    let urls: Vec<&str> = links.iter().filter_map(|l| l["url"].as_str()).collect();
    assert!(
        urls.contains(&"/3/0") && urls.contains(&"/3303/0"),
        "{urls:?}"
    );

    let one = ok_json(&s, "GET", "/clients/lsh-reg", None).await;
    assert_eq!(one["registrationId"], reg["registrationId"]);
    let err = failing(&s, "GET", "/clients/nobody", None, 400).await;
    assert!(err.contains("nobody"), "{err}");
}

#[tokio::test]
async fn leshan_operations_answer_with_leshans_response_json() {
    let s = Servers::start().await;
    let _c = sim(&s, "lsh-ops").await;

    // Read of a resource: {status, valid, success, failure, content: node}.
    let r = ok_json(&s, "GET", "/clients/lsh-ops/3/0/0", None).await;
    assert_eq!(
        keys(&r),
        set(&["status", "valid", "success", "failure", "content"])
    );
    assert_eq!(
        (&r["status"], &r["valid"], &r["success"], &r["failure"]),
        (&json!("CONTENT"), &json!(true), &json!(true), &json!(false))
    );
    assert_eq!(
        r["content"],
        json!({"id": 0, "kind": "singleResource", "type": "STRING", "value": "ACME"})
    );
    // Numbers are strings, as Leshan writes them; a chosen format.
    let r = ok_json(&s, "GET", "/clients/lsh-ops/3303/0/5700?format=TEXT", None).await;
    assert_eq!(r["content"]["value"], "20.0", "{r}");
    assert_eq!(r["content"]["type"], "FLOAT");
    let r = ok_json(
        &s,
        "GET",
        "/clients/lsh-ops/3/0?format=TLV&timeout=10",
        None,
    )
    .await;
    assert_eq!(r["content"]["kind"], "instance", "{r}");
    assert_eq!(r["content"]["id"], 0);
    let battery = r["content"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == 9)
        .cloned();
    assert_eq!(
        battery,
        Some(json!({"id": 9, "kind": "singleResource", "type": "INTEGER", "value": "90"}))
    );
    let r = ok_json(&s, "GET", "/clients/lsh-ops/3303?format=SENML_JSON", None).await;
    assert_eq!(r["content"]["kind"], "obj", "{r}");
    assert_eq!(r["content"]["instances"][0]["kind"], "instance");

    // A CoAP error is HTTP 200 with failure: true.
    let r = ok_json(&s, "GET", "/clients/lsh-ops/3/0/7", None).await;
    assert_eq!(
        (&r["status"], &r["success"], &r["failure"]),
        (&json!("NOT_FOUND"), &json!(false), &json!(true)),
        "{r}"
    );
    assert!(r.get("content").is_none());

    // Write with a node body (Leshan's JacksonLwM2mNodeDeserializer shape), read back.
    let node = r#"{"id": 14, "kind": "singleResource", "type": "STRING", "value": "+02"}"#;
    let r = ok_json(&s, "PUT", "/clients/lsh-ops/3/0/14", Some(node)).await;
    assert_eq!(keys(&r), set(&["status", "valid", "success", "failure"]));
    assert_eq!(r["status"], "CHANGED", "{r}");
    let r = ok_json(&s, "GET", "/clients/lsh-ops/3/0/14", None).await;
    assert_eq!(r["content"]["value"], "+02");
    // An instance, partial update.
    let inst = r#"{"id": 0, "kind": "instance", "resources": [
        {"id": 14, "kind": "singleResource", "type": "STRING", "value": "+03"}]}"#;
    let r = ok_json(&s, "PUT", "/clients/lsh-ops/3/0?replace=false", Some(inst)).await;
    assert_eq!(r["status"], "CHANGED", "{r}");
    assert_eq!(
        ok_json(&s, "GET", "/clients/lsh-ops/3/0/14", None).await["content"]["value"],
        "+03"
    );
    // text/plain: the value of a single resource.
    let url = format!("{}/clients/lsh-ops/3/0/14", base(&s));
    let (status, _, text) = raw("PUT", &url, Some("+04"), "text/plain").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        ok_json(&s, "GET", "/clients/lsh-ops/3/0/14", None).await["content"]["value"],
        "+04"
    );

    // Create an instance and delete it.
    let new = r#"{"id": 7, "kind": "instance", "resources": [
        {"id": 5700, "kind": "singleResource", "type": "FLOAT", "value": "12.5"},
        {"id": 5701, "kind": "singleResource", "type": "STRING", "value": "Cel"}]}"#;
    let r = ok_json(&s, "POST", "/clients/lsh-ops/3303", Some(new)).await;
    assert_eq!(r["status"], "CREATED", "{r}");
    assert_eq!(r["location"], "3303/7", "{r}");
    assert_eq!(
        ok_json(&s, "GET", "/clients/lsh-ops/3303/7/5700", None).await["content"]["value"],
        "12.5"
    );
    let r = ok_json(&s, "DELETE", "/clients/lsh-ops/3303/7", None).await;
    assert_eq!(r["status"], "DELETED", "{r}");

    // Discover: objectLinks [{url, attributes}].
    let r = ok_json(&s, "GET", "/clients/lsh-ops/3/0/discover", None).await;
    assert_eq!(r["status"], "CONTENT", "{r}");
    let urls: Vec<&str> = r["objectLinks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["url"].as_str())
        .collect();
    assert!(urls.contains(&"/3/0") && urls.contains(&"/3/0/0"), "{r}");

    // Composite read and write.
    let r = ok_json(
        &s,
        "GET",
        "/clients/lsh-ops/composite?paths=/3/0/0,/3303/0/5700&nodeformat=SENML_CBOR",
        None,
    )
    .await;
    assert_eq!(r["status"], "CONTENT", "{r}");
    assert_eq!(r["content"]["/3/0/0"]["value"], "ACME", "{r}");
    assert_eq!(r["content"]["/3303/0/5700"]["kind"], "singleResource");
    let body =
        r#"{"/3/0/14": {"id": 14, "kind": "singleResource", "type": "STRING", "value": "+05"}}"#;
    let r = ok_json(&s, "PUT", "/clients/lsh-ops/composite", Some(body)).await;
    assert_eq!(r["status"], "CHANGED", "{r}");
    assert_eq!(
        ok_json(&s, "GET", "/clients/lsh-ops/3/0/14", None).await["content"]["value"],
        "+05"
    );

    // Bad input: text errors with Leshan's codes.
    failing(&s, "GET", "/clients/lsh-ops/3/x", None, 400).await;
    failing(&s, "GET", "/clients/lsh-ops/3/0/0?format=XML", None, 400).await;
    let e = failing(
        &s,
        "PUT",
        "/clients/lsh-ops/3/0/13",
        Some(r#"{"id": 13, "kind": "singleResource", "value": "soon"}"#),
        400,
    )
    .await;
    assert!(e.contains("Invalid request"), "{e}");
    failing(&s, "PUT", "/clients/lsh-ops/3/0/14", Some("{"), 400).await;
    failing(&s, "GET", "/clients/nobody/3/0/0", None, 400).await;
}

#[tokio::test]
async fn leshan_execute_attributes_observe_and_timeout_reach_the_device() {
    let s = Servers::start().await;
    let mut events = Sse::open(&format!("{}/event?ep=lsh-dev", base(&s))).await;
    let (mut device, location) = scripted(&s, "lsh-dev").await;
    let reg = events.next("REGISTRATION").await;
    assert_eq!(keys(&reg), set(&REGISTRATION_KEYS), "{reg}");
    assert_eq!(reg["endpoint"], "lsh-dev");

    // Execute: the text body is the arguments.
    let exec = spawn_call(
        &s,
        "POST",
        "/clients/lsh-dev/3/0/4".into(),
        Some("0='x',1"),
        "text/plain",
    );
    let r = device.next_request().await;
    assert_eq!(
        (r.method(), r.path()),
        (Some(RequestType::Post), "/3/0/4".into())
    );
    assert_eq!(r.packet.payload, b"0='x',1");
    device
        .respond(r, message::response(ResponseType::Changed, Vec::new()))
        .await;
    let (status, _, text) = exec.await.unwrap();
    assert_eq!(status, 200);
    let j: Json = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (&j["status"], &j["success"]),
        (&json!("CHANGED"), &json!(true))
    );
    // COAPLOG: the messages of the endpoint, Leshan's CoapMessage fields plus ep (the
    // first is the 2.01 answering its Register, without a payload; then the Execute).
    let mut log = events.next("COAPLOG").await;
    while log["code"] != json!("POST") {
        log = events.next("COAPLOG").await;
    }
    assert_eq!(
        keys(&log),
        set(&[
            "timestamp",
            "incoming",
            "type",
            "code",
            "mId",
            "token",
            "options",
            "payload",
            "ep"
        ]),
        "{log}"
    );
    assert_eq!(
        (
            &log["incoming"],
            &log["type"],
            &log["code"],
            &log["payload"],
            &log["ep"]
        ),
        (
            &json!(false),
            &json!("CON"),
            &json!("POST"),
            &json!("0='x',1"),
            &json!("lsh-dev")
        )
    );
    assert!(
        log["options"]
            .as_str()
            .unwrap()
            .contains("Uri-Path: 3, 0, 4"),
        "{log}"
    );
    let ack = events.next("COAPLOG").await;
    assert_eq!(
        (&ack["incoming"], &ack["code"]),
        (&json!(true), &json!("2.04")),
        "{ack}"
    );

    // Write-Attributes: the query goes to the device.
    let attrs = spawn_call(
        &s,
        "PUT",
        "/clients/lsh-dev/3303/0/5700/attributes?pmin=10&pmax=60".into(),
        None,
        "application/json",
    );
    let r = device.next_request().await;
    assert_eq!(
        (r.method(), r.path()),
        (Some(RequestType::Put), "/3303/0/5700".into())
    );
    let mut query = strings(&r.packet, CoapOption::UriQuery);
    query.sort();
    assert_eq!(query, vec!["pmax=60", "pmin=10"]);
    device
        .respond(r, message::response(ResponseType::Changed, Vec::new()))
        .await;
    let (status, _, text) = attrs.await.unwrap();
    assert_eq!(status, 200, "{text}");

    // A device answering the wrong success code: valid is false, as Leshan's isValid.
    let odd = spawn_call(
        &s,
        "DELETE",
        "/clients/lsh-dev/3303/0".into(),
        None,
        "application/json",
    );
    let r = device.next_request().await;
    device
        .respond(r, message::response(ResponseType::Changed, Vec::new()))
        .await;
    let (status, _, text) = odd.await.unwrap();
    assert_eq!(status, 200, "{text}");
    let j: Json = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (&j["status"], &j["valid"], &j["success"]),
        (&json!("CHANGED"), &json!(false), &json!(true)),
        "{j}"
    );

    // An error with a diagnostic: errormessage.
    let missing = spawn_call(
        &s,
        "GET",
        "/clients/lsh-dev/3/0/99".into(),
        None,
        "application/json",
    );
    let r = device.next_request().await;
    device
        .respond(
            r,
            message::response(ResponseType::NotFound, b"no such resource".to_vec()),
        )
        .await;
    let (status, _, text) = missing.await.unwrap();
    assert_eq!(status, 200);
    let j: Json = serde_json::from_str(&text).unwrap();
    assert_eq!(
        j,
        json!({"status": "NOT_FOUND", "valid": true, "success": false, "failure": true,
               "errormessage": "no such resource"})
    );

    // Observe: the first value in the answer, the next ones as NOTIFICATION events.
    let path = Lwm2mPath::resource(3303, 0, 5700);
    let temp = |t: f64| Node::Resource(ResourceValue::Single(Value::Float(t)));
    let observe = spawn_call(
        &s,
        "POST",
        "/clients/lsh-dev/3303/0/5700/observe?format=TLV".into(),
        None,
        "application/json",
    );
    let r = device.next_request().await;
    assert_eq!(r.observe(), Some(0));
    let first = content_for(&r, &path, &temp(21.5));
    let observation = device.accept_observation(r, first).await;
    let (status, _, text) = observe.await.unwrap();
    assert_eq!(status, 200, "{text}");
    let j: Json = serde_json::from_str(&text).unwrap();
    assert_eq!(j["status"], "CONTENT");
    assert_eq!(j["content"]["value"], "21.5", "{j}");
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
    assert_eq!(
        note,
        json!({"ep": "lsh-dev", "kind": "single", "res": "/3303/0/5700",
               "val": {"id": 5700, "kind": "singleResource", "type": "FLOAT", "value": "22.5"}})
    );
    // Cancel: passively (200, no body); an active cancel of nothing is 404.
    let url = format!("{}/clients/lsh-dev/3303/0/5700/observe", base(&s));
    let (status, _, text) = raw("DELETE", &url, None, "application/json").await;
    assert_eq!((status, text.as_str()), (200, ""));
    failing(
        &s,
        "DELETE",
        "/clients/lsh-dev/3303/0/5700/observe?active",
        None,
        404,
    )
    .await;

    // A device that does not answer in ?timeout= seconds: 504 "Request timeout".
    let slow = spawn_call(
        &s,
        "GET",
        "/clients/lsh-dev/3/0/0?timeout=1".into(),
        None,
        "application/json",
    );
    let r = device.next_request().await;
    let (status, _, text) = slow.await.unwrap();
    assert_eq!((status, text.as_str()), (504, "Request timeout"));
    drop(r);

    // Update and De-register: UPDATED {registration, update}, DEREGISTRATION.
    let mut update = message::request(RequestType::Post, &location);
    add_query(&mut update, "lt=600");
    let answer = device.request(update).await;
    assert_eq!(
        answer.header.code,
        lwm2m_proto::coap::MessageClass::Response(ResponseType::Changed)
    );
    let updated = events.next("UPDATED").await;
    assert_eq!(
        keys(&updated),
        set(&["registration", "update"]),
        "{updated}"
    );
    assert_eq!(updated["registration"]["lifetime"], 600);
    assert_eq!(updated["update"]["registrationId"], reg["registrationId"]);
    let answer = device
        .request(message::request(RequestType::Delete, &location))
        .await;
    assert_eq!(
        answer.header.code,
        lwm2m_proto::coap::MessageClass::Response(ResponseType::Deleted)
    );
    let gone = events.next("DEREGISTRATION").await;
    assert_eq!(gone["endpoint"], "lsh-dev");
}

#[tokio::test]
async fn leshan_events_filter_by_endpoint_and_hide_security_payloads() {
    let s = Servers::start().await;
    let mut mine = Sse::open(&format!("{}/event?ep=lsh-b", base(&s))).await;
    let mut all = Sse::open(&format!("{}/event", base(&s))).await;
    let (_a, _) = scripted(&s, "lsh-a").await;
    let (mut b, _) = scripted(&s, "lsh-b").await;
    assert_eq!(all.next("REGISTRATION").await["endpoint"], "lsh-a");
    assert_eq!(all.next("REGISTRATION").await["endpoint"], "lsh-b");
    // The filtered stream skipped lsh-a.
    assert_eq!(mine.next("REGISTRATION").await["endpoint"], "lsh-b");

    // A read of the Security object (a misbehaving device answers it): the payload stays
    // out of COAPLOG and the secret key out of the answer.
    let path = Lwm2mPath::resource(0, 0, 5);
    let secret = Node::Resource(ResourceValue::Single(Value::Opaque(b"TOPSECRET".to_vec())));
    let read = spawn_call(
        &s,
        "GET",
        "/clients/lsh-b/0/0/5".into(),
        None,
        "application/json",
    );
    let r = b.next_request().await;
    let answer = content_for(&r, &path, &secret);
    b.respond(r, answer).await;
    let (status, _, text) = read.await.unwrap();
    assert_eq!(status, 200);
    let j: Json = serde_json::from_str(&text).unwrap();
    assert_eq!(j["content"]["value"], "<redacted>", "{j}");
    let hex = "544f50534543524554";
    // Every message up to the device's answer, none with the payload in clear.
    loop {
        let log = mine.next("COAPLOG").await;
        let shown = log.to_string();
        assert!(
            !shown.contains("TOPSECRET") && !shown.contains(hex),
            "{shown}"
        );
        if log["incoming"] == true && log.get("payload").is_some() {
            assert_eq!(log["payload"], "<redacted>", "{log}");
            break;
        }
    }
}

#[tokio::test]
async fn leshan_security_and_object_specs() {
    let s = Servers::start().await;
    let psk = |ep: &str, id: &str, key: &str| {
        json!({"endpoint": ep, "tls": {"mode": "psk", "details": {"identity": id, "key": key}}})
            .to_string()
    };
    let url = format!("{}/security/clients", base(&s));
    let (status, _, text) = raw(
        "PUT",
        &url,
        Some(&psk("a", "id-a", "c0ffee")),
        "application/json",
    )
    .await;
    assert_eq!((status, text.as_str()), (200, ""));
    let list = ok_json(&s, "GET", "/security/clients", None).await;
    assert_eq!(
        list,
        json!([{"endpoint": "a", "tls": {"mode": "psk", "details": {"identity": "id-a", "key": "<redacted>"}}}])
    );
    // A PSK identity belongs to one endpoint: 400 with the reason, as Leshan.
    let e = failing(
        &s,
        "PUT",
        "/security/clients",
        Some(&psk("b", "id-a", "01")),
        400,
    )
    .await;
    assert!(e.contains("id-a"), "{e}");
    failing(
        &s,
        "PUT",
        "/security/clients",
        Some(r#"{"endpoint": "c"}"#),
        400,
    )
    .await;
    failing(
        &s,
        "PUT",
        "/security/clients",
        Some(&psk("c", "id-c", "not hex")),
        400,
    )
    .await;
    let url = format!("{}/security/clients/a", base(&s));
    let (status, _, text) = raw("DELETE", &url, None, "application/json").await;
    assert_eq!((status, text.as_str()), (200, ""));
    assert_eq!(
        ok_json(&s, "DELETE", "/security/clients/a", None).await,
        json!({"message": "not_found"})
    );
    assert_eq!(
        ok_json(&s, "GET", "/security/clients", None).await,
        json!([])
    );

    // Object models of a client, Leshan's ObjectModel JSON, sorted by id.
    let (_device, _) = scripted(&s, "lsh-spec").await;
    let specs = ok_json(&s, "GET", "/objectspecs/lsh-spec", None).await;
    let specs = specs.as_array().unwrap();
    let ids: Vec<u64> = specs.iter().filter_map(|o| o["id"].as_u64()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let device = specs.iter().find(|o| o["id"] == 3).unwrap();
    assert_eq!(
        keys(device),
        set(&[
            "id",
            "name",
            "instancetype",
            "mandatory",
            "urn",
            "version",
            "lwm2mversion",
            "description",
            "description2",
            "resourcedefs"
        ])
    );
    assert_eq!(
        (&device["name"], &device["instancetype"]),
        (&json!("Device"), &json!("single"))
    );
    let manufacturer = &device["resourcedefs"][0];
    assert_eq!(
        keys(manufacturer),
        set(&[
            "id",
            "name",
            "operations",
            "instancetype",
            "mandatory",
            "type",
            "range",
            "units",
            "description"
        ])
    );
    assert_eq!(
        (
            &manufacturer["name"],
            &manufacturer["operations"],
            &manufacturer["type"]
        ),
        (&json!("Manufacturer"), &json!("R"), &json!("string"))
    );
    failing(&s, "GET", "/objectspecs/nobody", None, 400).await;
    let every = ok_json(&s, "GET", "/objectspecs", None).await;
    assert!(every.as_array().unwrap().len() >= specs.len());
}

#[tokio::test]
async fn leshan_sleeping_clients_get_delayed_answers_and_events() {
    // The awake window closes soon after each message; nothing else depends on its length.
    let config = lwm2m_proto::server::ServerConfig {
        awake_time: std::time::Duration::from_millis(200),
        ..Default::default()
    };
    let s = Servers::start_with(Setup {
        config,
        ..Setup::default()
    })
    .await;
    let mut events = Sse::open(&format!("{}/event?ep=lsh-q", base(&s))).await;
    let mut device = CoapPeer::new(s.server.local_addr()).await;
    let location = device
        .register(&["ep=lsh-q", "lt=300", "lwm2m=1.1", "b=U", "Q"], "</3/0>")
        .await;
    events.next("REGISTRATION").await;
    assert_eq!(events.next("SLEEPING").await, json!({"ep": "lsh-q"}));
    let reg = ok_json(&s, "GET", "/clients/lsh-q", None).await;
    assert_eq!(
        (&reg["queuemode"], &reg["sleeping"]),
        (&json!(true), &json!(true)),
        "{reg}"
    );

    // Asleep: the answer says the request is delayed; the response comes as an event.
    let r = ok_json(&s, "GET", "/clients/lsh-q/3/0/0", None).await;
    assert_eq!(
        keys(&r),
        set(&["ep", "path", "requestId", "delayed"]),
        "{r}"
    );
    assert_eq!(
        (&r["ep"], &r["path"], &r["delayed"]),
        (&json!("lsh-q"), &json!("/3/0/0"), &json!(true))
    );
    assert_eq!(r["requestId"].as_str().map(str::len), Some(36), "{r}");
    assert!(
        !device.has_datagram(),
        "nothing is sent to a sleeping client"
    );

    // The client wakes up (an Update): AWAKE, the queued Read goes out.
    let wake = message::request(RequestType::Post, &location);
    device.request(wake).await;
    assert_eq!(events.next("AWAKE").await, json!({"ep": "lsh-q"}));
    let read = device.next_request().await;
    assert_eq!(read.path(), "/3/0/0");
    let manufacturer = Node::Resource(ResourceValue::Single(Value::String("ACME".into())));
    let answer = content_for(&read, &Lwm2mPath::resource(3, 0, 0), &manufacturer);
    device.respond(read, answer).await;
    let delayed = events.next("REQUEST_RESPONSE").await;
    assert_eq!(delayed["requestId"], r["requestId"], "{delayed}");
    assert_eq!(delayed["delayed"], true);
    assert_eq!(delayed["response"]["status"], "CONTENT");
    assert_eq!(delayed["response"]["content"]["value"], "ACME", "{delayed}");
}

#[tokio::test]
async fn leshan_bootstrap_configs_reach_a_client_over_udp() {
    let s = Servers::start().await;
    let config = json!({
        "autoIdForSecurityObject": false,
        "toDelete": ["/0", "/1"],
        "servers": {"0": {"shortId": 7, "lifetime": 300, "defaultMinPeriod": 1,
                          "notifIfDisabled": true, "binding": "U"}},
        "security": {"1": {"uri": "coaps://127.0.0.1:5684", "bootstrapServer": false,
                           "securityMode": "PSK", "publicKeyOrId": [98, 115, 45, 49],
                           "serverPublicKey": [], "secretKey": [171, 205], "serverId": 7,
                           "smsSecurityMode": "NO_SEC", "serverSmsNumber": ""}},
        "acls": {},
        "oscore": {}
    })
    .to_string();
    let url = format!("{}/bootstrap/lsh-bs", base(&s));
    let (status, _, text) = raw("POST", &url, Some(&config), "application/json").await;
    assert_eq!((status, text.as_str()), (200, ""));
    let all = ok_json(&s, "GET", "/bootstrap", None).await;
    let shown = &all["lsh-bs"]["security"]["1"];
    assert_eq!(shown["secretKey"], "<redacted>", "{all}");
    assert_eq!(shown["publicKeyOrId"], json!([98, 115, 45, 49]));
    assert_eq!(all["lsh-bs"]["servers"]["0"]["shortId"], 7);
    assert_eq!(all["lsh-bs"]["toDelete"], json!(["/0", "/1"]));
    failing(
        &s,
        "POST",
        "/bootstrap/lsh-x",
        Some(r#"{"security": {"0": {}}}"#),
        400,
    )
    .await;

    // A client bootstraps: Deletes of /0 and /1, then the writes, then Finish.
    let mut peer = CoapPeer::new(s.bootstrap.local_addr()).await;
    let mut request = message::request(RequestType::Post, "/bs");
    add_query(&mut request, "ep=lsh-bs");
    let answer = peer.request(request).await;
    assert_eq!(
        answer.header.code,
        lwm2m_proto::coap::MessageClass::Response(ResponseType::Changed)
    );
    let mut seen = Vec::new();
    let mut security = None;
    loop {
        let r = peer.next_request().await;
        let (method, path) = (r.method(), r.path());
        seen.push(format!("{method:?} {path}"));
        if method == Some(RequestType::Put) && path == "/0/1" {
            security = Some(r.packet.payload.clone());
        }
        let code = match method {
            Some(RequestType::Delete) => ResponseType::Deleted,
            _ => ResponseType::Changed,
        };
        let finish = path == "/bs";
        peer.respond(r, message::response(code, Vec::new())).await;
        if finish {
            break;
        }
    }
    assert!(seen.contains(&"Some(Delete) /0".to_owned()), "{seen:?}");
    let written = content::decode(
        ContentFormat::Tlv,
        &security.expect("a Bootstrap-Write of /0/1"),
        &Lwm2mPath::instance(0, 1),
        &Registry::embedded(),
    )
    .unwrap()
    .content;
    let Node::Instance(inst) = written else {
        panic!("{written:?}")
    };
    let account = lwm2m_proto::bootstrap::config::security_from_instance(&inst).unwrap();
    assert_eq!(
        (account.identity.as_str(), account.secret_key.as_str()),
        ("bs-1", "abcd")
    );

    let url = format!("{}/bootstrap/lsh-bs", base(&s));
    assert_eq!(raw("DELETE", &url, None, "application/json").await.0, 204);
    failing(&s, "DELETE", "/bootstrap/lsh-bs", None, 404).await;
}

/// A 2.05 carrying `records` as SenML JSON.
fn senml(records: &[lwm2m_proto::Record]) -> Packet {
    let mut r = message::response(
        ResponseType::Content,
        content::encode_records(ContentFormat::SenmlJson, records).unwrap(),
    );
    set_option(
        &mut r,
        CoapOption::ContentFormat,
        uint_bytes(u32::from(ContentFormat::SenmlJson.code())),
    );
    r
}

#[tokio::test]
async fn leshan_composite_observation_and_send_arrive_as_events() {
    let s = Servers::start().await;
    let mut events = Sse::open(&format!("{}/event?ep=lsh-co", base(&s))).await;
    let (mut device, _) = scripted(&s, "lsh-co").await;
    events.next("REGISTRATION").await;
    let record = |path: Lwm2mPath, v: Value| lwm2m_proto::Record {
        path,
        value: Some(v),
        time: None,
    };
    let temp = Lwm2mPath::resource(3303, 0, 5700);
    let battery = Lwm2mPath::resource(3, 0, 9);

    let observe = spawn_call(
        &s,
        "POST",
        "/clients/lsh-co/composite/observe?paths=/3303/0/5700,/3/0/9&nodeformat=SENML_JSON".into(),
        None,
        "application/json",
    );
    let r = device.next_request().await;
    assert_eq!(
        (r.method(), r.observe()),
        (Some(RequestType::Fetch), Some(0))
    );
    let first = senml(&[
        record(temp, Value::Float(21.5)),
        record(battery, Value::Integer(80)),
    ]);
    let observation = device.accept_observation(r, first).await;
    let (status, _, text) = observe.await.unwrap();
    assert_eq!(status, 200, "{text}");
    let j: Json = serde_json::from_str(&text).unwrap();
    assert_eq!(j["status"], "CONTENT", "{j}");
    assert_eq!(j["content"]["/3303/0/5700"]["value"], "21.5", "{j}");
    assert_eq!(j["content"]["/3/0/9"]["value"], "80", "{j}");

    device
        .notify(observation, senml(&[record(temp, Value::Float(23.0))]))
        .await;
    let note = events.next("NOTIFICATION").await;
    assert_eq!(note["kind"], "composite", "{note}");
    assert_eq!(note["paths"], json!(["/3303/0/5700", "/3/0/9"]));
    assert_eq!(note["val"]["/3303/0/5700"]["value"], "23.0", "{note}");

    // Send (Core TS 1.1 §6.4.5): a SEND event with the values as nodes by path.
    let mut send = message::request(RequestType::Post, "/dp");
    set_option(
        &mut send,
        CoapOption::ContentFormat,
        uint_bytes(u32::from(ContentFormat::SenmlJson.code())),
    );
    send.payload = content::encode_records(
        ContentFormat::SenmlJson,
        &[record(battery, Value::Integer(55))],
    )
    .unwrap();
    let answer = device.request(send).await;
    assert_eq!(
        answer.header.code,
        lwm2m_proto::coap::MessageClass::Response(ResponseType::Changed)
    );
    let sent = events.next("SEND").await;
    assert_eq!(
        sent,
        json!({"ep": "lsh-co", "val": {"/3/0/9":
            {"id": 9, "kind": "singleResource", "type": "INTEGER", "value": "55"}}})
    );

    // Passive cancellation of the composite observation.
    let url = format!(
        "{}/clients/lsh-co/composite/observe?paths=/3303/0/5700,/3/0/9",
        base(&s)
    );
    let (status, _, text) = raw("DELETE", &url, None, "application/json").await;
    assert_eq!((status, text.as_str()), (200, ""));
    failing(
        &s,
        "DELETE",
        "/clients/lsh-co/composite/observe?paths=/3303/0/5700,/3/0/9&active",
        None,
        404,
    )
    .await;
}
