//! `serve`'s hardening over real loopback sockets: ids and tokens from the OS random source,
//! one reading of `ep=` (a repeated parameter is 4.00), no keys in the event stream, limits
//! on what registrations may hold, and what an operator must see (a takeover logged with
//! both addresses); the REST API's case-insensitive `Bearer` and its refusal of an empty
//! bootstrap configuration.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lwm2m_proto::coap::message;
use lwm2m_proto::coap::{RequestType, ResponseType};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{Limit, RegistrationLimits, ServerConfig, ServerEvent};
use lwm2m_server::DtlsOptions;
use lwm2m_server::driver::{ServerOptions, start_server};
use lwm2m_server::store::{Credentials, FileSecurityStore, SecurityInfo, SecurityStore};

use crate::server_support::{
    CoapPeer, PATIENCE, Servers, Setup, TOKEN, code, http_authorized, register_request,
};

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Issue #10 item 1: two starts of the server (as `serve` builds it, `ServerOptions::new`)
/// hand the same endpoint different registration ids; with a fixed default seed both were
/// `/rd/b8cvjxm5`, so anyone could De-register or Update another device.
#[tokio::test]
async fn every_start_draws_its_ids_from_the_os() {
    let mut locations = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let server =
            start_server(ServerOptions::new(any(), Arc::new(Registry::embedded()))).unwrap();
        let mut peer = CoapPeer::new(server.local_addr()).await;
        locations.push(peer.register(&["ep=same-device", "lt=300"], "</3/0>").await);
        // The server's first request carries a token of its generator too.
        let read = server.clone();
        let reading = tokio::spawn(async move {
            read.request(
                "same-device",
                lwm2m_proto::server::Operation::Read {
                    path: lwm2m_proto::Lwm2mPath::object(3),
                    format: None,
                },
            )
            .await
        });
        let request = peer.next_request().await;
        tokens.push(request.packet.get_token().to_vec());
        peer.respond(
            request,
            message::response(ResponseType::NotFound, Vec::new()),
        )
        .await;
        let _ = reading.await;
        server.shutdown().await;
    }
    assert_ne!(locations[0], locations[1], "registration ids repeat");
    assert_ne!(tokens[0], tokens[1], "tokens repeat");
}

/// Issue #10 item 2 over plain CoAP: `?ep=nobody&ep=victim` no longer slips past the
/// "has credentials, must use DTLS" refusal (which read the first `ep`, the registration
/// the last): a repeated parameter is 4.00, and nothing is registered.
#[tokio::test]
async fn a_repeated_endpoint_name_is_a_bad_request_over_plain_coap() {
    let security = Arc::new(FileSecurityStore::in_memory());
    security
        .put(SecurityInfo {
            endpoint: "victim".into(),
            credentials: Credentials::Psk {
                identity: "victim-id".into(),
                key: "000102030405060708090a0b0c0d0e0f".into(),
            },
        })
        .unwrap();
    let mut options = ServerOptions::new(any(), Arc::new(Registry::embedded()));
    options.dtls = Some(DtlsOptions::new(any(), security));
    let server = start_server(options).unwrap();
    let mut events = server.subscribe();
    let mut peer = CoapPeer::new(server.local_addr()).await;
    for queries in [
        &["ep=nobody", "ep=victim"][..],
        &["ep=victim", "ep=nobody"],
        &["ep=nobody", "lt=60", "lt=120"],
    ] {
        let answer = peer.request(register_request(queries, "</3/0>")).await;
        assert_eq!(code(answer.header.code), (4, 0), "{queries:?}");
        let diagnostic = String::from_utf8_lossy(&answer.payload).into_owned();
        assert!(diagnostic.contains("more than once"), "{diagnostic}");
    }
    // The single form is still refused as before: credentials, so DTLS.
    let answer = peer
        .request(register_request(&["ep=victim"], "</3/0>"))
        .await;
    assert_eq!(code(answer.header.code), (4, 3));
    assert!(server.registrations().get("victim").is_none());
    assert!(server.registrations().get("nobody").is_none());
    let mut refused = 0;
    while let Ok(e) = events.try_recv() {
        if let lwm2m_server::Event::Server(ServerEvent::RegistrationRefused { code, .. }) = &*e {
            assert_eq!(*code, (4, 0));
            refused += 1;
        }
    }
    assert_eq!(refused, 3);
    server.shutdown().await;
}

/// Issue #10 item 3: a plain-CoAP bootstrap hands over a PSK; the COAPLOG events of
/// `/api/event?coaplog=true` show the Bootstrap-Write of the Security instance with its
/// payload masked, never the key.
#[tokio::test]
async fn the_event_stream_never_shows_a_key() {
    const KEY: &str = "f0e0d0c0b0a090807060504030201000";
    let s = Servers::start().await;
    let config = serde_json::json!({
        "security": {
            "0": {"uri": format!("coap://{}", s.bootstrap.local_addr()), "bootstrap_server": true, "mode": "nosec"},
            "1": {"uri": "coaps://127.0.0.1:5684", "mode": "psk", "identity": "dev-k", "secret_key": KEY, "short_server_id": 1}
        },
        "servers": {"0": {"short_server_id": 1, "lifetime": 300}}
    });
    let (status, _) = s
        .call("PUT", "/bootstrap/dev-k", Some(&config.to_string()))
        .await;
    assert_eq!(status, 201);
    let mut sse = s.events("?coaplog=true").await;
    let mut device = CoapPeer::new(s.bootstrap.local_addr()).await;
    let mut bs = message::request(RequestType::Post, "/bs");
    message::add_query(&mut bs, "ep=dev-k");
    assert_eq!(code(device.request(bs).await.header.code), (2, 4));
    // Answer every step until Bootstrap-Finish.
    let mut key_written = false;
    loop {
        let request = device.next_request().await;
        let path = message::uri_path(&request.packet);
        let method = request.method();
        key_written |= path.starts_with("/0/") && !request.packet.payload.is_empty();
        let answer = match method {
            Some(RequestType::Delete) => ResponseType::Deleted,
            _ => ResponseType::Changed,
        };
        device
            .respond(request, message::response(answer, Vec::new()))
            .await;
        if path == "/bs" {
            break;
        }
    }
    assert!(key_written, "the device got the Security instance");
    // Every datagram of the session went through the stream, up to the Finish.
    let mut masked = 0;
    loop {
        let log = sse.next("COAPLOG").await;
        let hex = log["hex"].as_str().unwrap_or_default().to_owned();
        let summary = log["summary"].as_str().unwrap_or_default().to_owned();
        assert!(!hex.contains(KEY), "the key in clear: {summary} {hex}");
        if summary.contains("/0/") && log["direction"] == "out" {
            // The payload is there, masked ('*' bytes): sizes still add up.
            assert!(hex.ends_with("2a2a2a2a"), "{summary} {hex}");
            masked += 1;
        }
        if summary.contains("/bs") && log["direction"] == "out" {
            break;
        }
    }
    assert!(masked >= 1, "no Security write seen");
}

fn limited() -> ServerConfig {
    ServerConfig {
        limits: RegistrationLimits {
            max_registrations: 8,
            max_registrations_per_address: 3,
            max_endpoint_length: 32,
            max_links: 10,
            max_payload: 600,
            min_lifetime: 60,
            max_lifetime: 3600,
        },
        ..ServerConfig::default()
    }
}

/// Issue #10 item 7: the limits, each answered with its code and a diagnostic naming the
/// configuration key, and reported as a LimitReached event; the registrations held never
/// go beyond the caps, whatever is sent.
#[tokio::test]
async fn registrations_stay_within_the_limits() {
    let s = Servers::start_with(Setup {
        config: limited(),
        ..Setup::default()
    })
    .await;
    let mut events = s.server_events();
    let server = s.server.local_addr();
    let refused = |answer: &lwm2m_proto::coap::Packet, expected: (u8, u8), key: &str| {
        assert_eq!(code(answer.header.code), expected, "{answer:?}");
        let diagnostic = String::from_utf8_lossy(&answer.payload).into_owned();
        assert!(diagnostic.contains(key), "{diagnostic}");
    };
    let mut first = CoapPeer::bound("127.0.0.2:0".parse().unwrap(), server).await;
    // Out of bounds: name, links, payload, lifetimes (the default 86,400 s too).
    let long = format!("ep={}", "x".repeat(33));
    let answer = first
        .request(register_request(&[&long, "lt=300"], "</3/0>"))
        .await;
    refused(&answer, (4, 0), "max_endpoint_length");
    let links: Vec<String> = (0..11).map(|i| format!("</{}/0>", 3300 + i)).collect();
    let answer = first
        .request(register_request(&["ep=many", "lt=300"], &links.join(",")))
        .await;
    refused(&answer, (4, 13), "max_links");
    let big = format!("</3/0>;x=\"{}\"", "y".repeat(600));
    let answer = first
        .request(register_request(&["ep=big", "lt=300"], &big))
        .await;
    refused(&answer, (4, 13), "max_payload");
    for lt in [None, Some("lt=59"), Some("lt=3601")] {
        let queries: Vec<&str> = ["ep=lt"].into_iter().chain(lt).collect();
        let answer = first.request(register_request(&queries, "</3/0>")).await;
        refused(&answer, (4, 0), "max_lifetime");
    }
    // Per source address: three, then 5.03; a re-Register of one of them is no growth.
    for n in 0..3 {
        first
            .register(&[&format!("ep=a{n}"), "lt=300"], "</3/0>")
            .await;
    }
    let answer = first
        .request(register_request(&["ep=a3", "lt=300"], "</3/0>"))
        .await;
    refused(&answer, (5, 3), "max_registrations_per_address");
    first.register(&["ep=a0", "lt=600"], "</3/0>").await;
    // An Update may not stretch the lifetime beyond the bounds either.
    let location = first.register(&["ep=a1", "lt=300"], "</3/0>").await;
    let mut update = message::request(RequestType::Post, &location);
    message::add_query(&mut update, "lt=100000");
    refused(&first.request(update).await, (4, 0), "max_lifetime");
    // In all: eight, then 5.03 from anywhere.
    let mut n = 0;
    for ip in 3..6 {
        let mut peer = CoapPeer::bound(format!("127.0.0.{ip}:0").parse().unwrap(), server).await;
        for _ in 0..2 {
            if s.server.registrations().len() < 8 {
                peer.register(&[&format!("ep=b{n}"), "lt=300"], "</3/0>")
                    .await;
                n += 1;
            }
        }
    }
    let mut late = CoapPeer::bound("127.0.0.9:0".parse().unwrap(), server).await;
    let answer = late
        .request(register_request(&["ep=late", "lt=300"], "</3/0>"))
        .await;
    refused(&answer, (5, 3), "max_registrations");
    assert_eq!(s.server.registrations().len(), 8);

    // Every refusal was reported, in order, the last one included.
    let mut limits = Vec::new();
    while limits.last() != Some(&Limit::MaxRegistrations) {
        let (limit, code) = events
            .next(|e| match e {
                ServerEvent::LimitReached { limit, code, .. } => Some((*limit, *code)),
                _ => None,
            })
            .await;
        assert_eq!(code, limit.coap_code());
        limits.push(limit);
    }
    use Limit::*;
    assert_eq!(
        limits,
        [
            MaxEndpointLength,
            MaxLinks,
            MaxPayload,
            Lifetime,
            Lifetime,
            Lifetime,
            MaxRegistrationsPerAddress,
            Lifetime,
            MaxRegistrations
        ]
    );
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Issue #10 item 8: a Register that replaces an endpoint's registration from another
/// address is allowed under NoSec, but logged at INFO with both addresses.
#[tokio::test(flavor = "current_thread")]
async fn a_takeover_from_another_address_is_logged_with_both() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // This test's runtime has one thread: the driver task logs through this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let s = Servers::start().await;
    let server = s.server.local_addr();
    let mut owner = CoapPeer::bound("127.0.0.2:0".parse().unwrap(), server).await;
    let mut other = CoapPeer::bound("127.0.0.3:0".parse().unwrap(), server).await;
    owner.register(&["ep=meter-7", "lt=300"], "</3/0>").await;
    owner.register(&["ep=meter-7", "lt=300"], "</3/0>").await; // same address: no line
    other.register(&["ep=meter-7", "lt=300"], "</3/0>").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (a, b) = (
        owner.local_addr().to_string(),
        other.local_addr().to_string(),
    );
    loop {
        let text = log.text();
        // The takeover line (the metrics task logs each registration on its own lines).
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("meter-7") && l.contains("registered again"))
            .collect();
        if let [line] = lines.as_slice() {
            assert!(
                line.contains("INFO") && line.contains(&a) && line.contains(&b),
                "{line}"
            );
            break;
        }
        assert!(lines.len() < 2, "{lines:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no INFO line: {text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        s.server
            .registrations()
            .get("meter-7")
            .map(|r| r.registration.address),
        Some(other.local_addr())
    );
}

/// Issue #10 item 8, REST: the `Bearer` scheme in any case (RFC 7235 §2.1); an empty
/// bootstrap configuration `{}` is refused (it would delete the client's accounts and
/// write nothing).
#[tokio::test]
async fn the_api_reads_bearer_in_any_case_and_refuses_an_empty_configuration() {
    let s = Servers::start().await;
    let url = format!("{}/clients", s.api);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {TOKEN}");
        let (status, _) = http_authorized("GET", &url, None, Some(&auth)).await;
        assert_eq!(status, 200, "{scheme}");
    }
    let (status, _) = http_authorized("GET", &url, None, Some("Basic e2e-token")).await;
    assert_eq!(status, 401);
    let (status, body) = s.call("PUT", "/bootstrap/dev-empty", Some("{}")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Security"),
        "{body}"
    );
    let (status, _) = s.call("GET", "/bootstrap/dev-empty", None).await;
    assert_eq!(status, 404);
}
