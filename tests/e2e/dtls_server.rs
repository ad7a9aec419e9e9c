//! The LwM2M Server's DTLS listener (CoAP over DTLS, RFC 7252 §9; Core TS 1.1 §7.1) on
//! loopback, against scripted DTLS clients (`lwm2m_dtls::UdpDtlsClient` carrying
//! hand-written CoAP) and libcoap's `coap-client-openssl` and `coap-client-gnutls`: PSK registration with DTLS
//! records on the wire, failed handshakes that leave other sessions alone, the 4.03 for an
//! identity registering as another endpoint, a rebooted client's new session.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lwm2m_dtls::{ClientConfig, DtlsError, UdpDtlsClient};
use lwm2m_proto::coap::message::{self, set_option};
use lwm2m_proto::coap::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{Operation, ServerEvent};
use lwm2m_server::DtlsOptions;
use lwm2m_server::driver::{ServerHandle, ServerOptions, start_server};
use lwm2m_server::events::{Direction, Event, PacketTap, SecurityEvent};
use lwm2m_server::store::{Credentials, FileSecurityStore, SecurityInfo, SecurityStore};
use tokio::net::UdpSocket;
use tokio::sync::broadcast;

const PATIENCE: Duration = Duration::from_secs(30);

/// Every datagram on the server's sockets: (direction, our socket, first byte).
#[derive(Default)]
pub struct FirstBytes(pub Mutex<Vec<(Direction, SocketAddr, u8)>>);

impl PacketTap for FirstBytes {
    fn datagram(&self, direction: Direction, local: SocketAddr, _: SocketAddr, bytes: &[u8]) {
        if let Some(&b) = bytes.first() {
            self.0.lock().unwrap().push((direction, local, b));
        }
    }
}

/// The server with a DTLS listener; its security store; the tap.
pub struct Secure {
    pub server: ServerHandle,
    pub dtls: SocketAddr,
    pub security: Arc<FileSecurityStore>,
    pub tap: Arc<FirstBytes>,
    pub events: broadcast::Receiver<Arc<Event>>,
}

/// The PSK of endpoint `ep`: identity `id-EP`, a 16-byte key derived from the name.
pub fn psk_of(ep: &str) -> (String, Vec<u8>) {
    let mut key = [0u8; 16];
    for (i, b) in ep.bytes().cycle().take(16).enumerate() {
        key[i] = b ^ (i as u8);
    }
    (format!("id-{ep}"), key.to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Puts `ep`'s PSK ([`psk_of`]) in the store.
pub fn provision(security: &FileSecurityStore, ep: &str) {
    let (identity, key) = psk_of(ep);
    security
        .put(SecurityInfo {
            endpoint: ep.into(),
            credentials: Credentials::Psk {
                identity,
                key: hex(&key),
            },
        })
        .unwrap();
}

impl Secure {
    pub async fn start(endpoints: &[&str]) -> Secure {
        let security = Arc::new(FileSecurityStore::in_memory());
        for ep in endpoints {
            provision(&security, ep);
        }
        Self::start_on("127.0.0.1:0".parse().unwrap(), security).await
    }

    /// The server with its DTLS listener bound at `dtls` and credentials from `security`.
    pub async fn start_on(dtls: SocketAddr, security: Arc<FileSecurityStore>) -> Secure {
        Self::start_with(DtlsOptions::new(dtls, security.clone()), security).await
    }

    /// The server with the DTLS listener `dtls`, whose credentials are `security`.
    pub async fn start_with(dtls: DtlsOptions, security: Arc<FileSecurityStore>) -> Secure {
        let tap = Arc::new(FirstBytes::default());
        let mut options = ServerOptions::new(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Registry::embedded()),
        );
        options.tap = Some(tap.clone());
        // Room for every datagram of a thousand handshakes (COAPLOG events).
        options.bus = lwm2m_server::EventBus::new(1 << 16);
        options.dtls = Some(dtls);
        let server = start_server(options).unwrap();
        let events = server.subscribe();
        Secure {
            dtls: server.dtls_addr().unwrap(),
            server,
            security,
            tap,
            events,
        }
    }

    /// Waits for the first event that `f` accepts.
    pub async fn expect<T>(&mut self, what: &str, f: impl Fn(&Event) -> Option<T>) -> T {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let e = match self.events.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => panic!("{n} events lost"),
                    Err(e) => panic!("{e}"),
                };
                if let Some(t) = f(&e) {
                    return t;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no event: {what}"))
    }
}

/// Clients on many ports, which the kernel spreads over the listener's sockets
/// (`SO_REUSEPORT`, one session router per socket), each register and each get the
/// server's request through their own session: the machine task sends it to the socket
/// that holds the session. The same with one socket.
#[tokio::test]
async fn sessions_on_every_socket_of_the_listener_get_their_requests() {
    for shards in [4, 1] {
        let endpoints: Vec<String> = (0..12).map(|i| format!("s{shards}-dev{i}")).collect();
        let security = Arc::new(FileSecurityStore::in_memory());
        for ep in &endpoints {
            provision(&security, ep);
        }
        let options = DtlsOptions {
            shards,
            ..DtlsOptions::new("127.0.0.1:0".parse().unwrap(), security.clone())
        };
        let s = Secure::start_with(options, security).await;
        let mut clients = Vec::new();
        for (mid, ep) in (1..).zip(&endpoints) {
            let mut client = connect_as(s.dtls, ep).await;
            assert_eq!(code(&call(&mut client, register(ep, mid)).await), "2.01");
            clients.push(client);
        }
        for (ep, client) in endpoints.iter().zip(&mut clients) {
            let (server, endpoint) = (s.server.clone(), ep.clone());
            let op = tokio::spawn(async move {
                let path = "/3/0".parse().unwrap();
                server
                    .request(&endpoint, Operation::Discover { path })
                    .await
            });
            let request = tokio::time::timeout(PATIENCE, client.recv())
                .await
                .expect("the request reaches its client")
                .unwrap();
            let request = message::decode(&request).unwrap();
            let links = format!("</3/0/{}>", ep.len());
            let mut answer = message::response(
                lwm2m_proto::coap::ResponseType::Content,
                links.clone().into_bytes(),
            );
            answer.header.set_type(MessageType::Acknowledgement);
            answer.header.message_id = request.header.message_id;
            answer.set_token(request.get_token().to_vec());
            set_option(&mut answer, CoapOption::ContentFormat, vec![40]);
            client.send(&answer.to_bytes().unwrap()).await.unwrap();
            let response = tokio::time::timeout(PATIENCE, op)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(response.code, (2, 5), "{ep}: {response:?}");
        }
        s.server.shutdown().await;
    }
}

/// `POST /rd?ep=EP&lt=300&lwm2m=1.1` with `</3/0>`.
pub fn register(ep: &str, mid: u16) -> Vec<u8> {
    let mut p = message::request(RequestType::Post, "/rd");
    for q in [format!("ep={ep}"), "lt=300".into(), "lwm2m=1.1".into()] {
        message::add_query(&mut p, &q);
    }
    set_option(&mut p, CoapOption::ContentFormat, vec![40]);
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    p.payload = b"</3/0>".to_vec();
    p.to_bytes().unwrap()
}

/// `POST /rd/ID` (an Update without parameters).
fn update(location: &str, mid: u16) -> Vec<u8> {
    let mut p = message::request(RequestType::Post, location);
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    p.to_bytes().unwrap()
}

pub fn code(p: &Packet) -> String {
    match p.header.code {
        MessageClass::Response(r) => {
            let n = u8::from(MessageClass::Response(r));
            format!("{}.{:02}", n >> 5, n & 31)
        }
        other => format!("{other:?}"),
    }
}

/// Sends a request and returns the response.
pub async fn call(client: &mut UdpDtlsClient, request: Vec<u8>) -> Packet {
    client.send(&request).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, client.recv())
        .await
        .expect("an answer")
        .unwrap();
    message::decode(&answer).unwrap()
}

async fn connect(
    server: SocketAddr,
    identity: &str,
    key: &[u8],
) -> Result<UdpDtlsClient, DtlsError> {
    let config = ClientConfig::psk(identity.as_bytes(), key).unwrap();
    tokio::time::timeout(PATIENCE, UdpDtlsClient::connect(server, &config))
        .await
        .expect("the handshake ends")
}

pub async fn connect_as(server: SocketAddr, ep: &str) -> UdpDtlsClient {
    let (identity, key) = psk_of(ep);
    connect(server, &identity, &key).await.unwrap()
}

fn location(p: &Packet) -> String {
    let segments: Vec<String> = p
        .get_option(CoapOption::LocationPath)
        .into_iter()
        .flatten()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    format!("/{}", segments.join("/"))
}

#[tokio::test]
async fn psk_client_registers_over_dtls_and_the_wire_carries_records() {
    let mut s = Secure::start(&["dev-a"]).await;
    let mut client = connect_as(s.dtls, "dev-a").await;
    let answer = call(&mut client, register("dev-a", 1)).await;
    assert_eq!(code(&answer), "2.01");
    let identity = s
        .expect("established", |e| match e {
            Event::Security(_, SecurityEvent::Established { identity, .. }) => {
                Some(identity.to_string())
            }
            _ => None,
        })
        .await;
    assert_eq!(identity, "psk:id-dev-a");
    s.expect("registered", |e| match e {
        Event::Server(ServerEvent::Registered { registration, .. })
            if registration.endpoint == "dev-a" =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    assert!(s.server.registrations().get("dev-a").is_some());
    // What the Leshan API shows as the registration's `secure` flag.
    assert!(s.server.is_secure("dev-a") && !s.server.is_secure("dev-b"));

    // An operation from the handle reaches the client through its session.
    let server = s.server.clone();
    let op = tokio::spawn(async move {
        server
            .request(
                "dev-a",
                Operation::Discover {
                    path: "/3/0".parse().unwrap(),
                },
            )
            .await
    });
    let request = message::decode(
        &tokio::time::timeout(PATIENCE, client.recv())
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(message::uri_path(&request), "/3/0");
    let mut answer = message::response(
        lwm2m_proto::coap::ResponseType::Content,
        b"</3/0/0>".to_vec(),
    );
    answer.header.set_type(MessageType::Acknowledgement);
    answer.header.message_id = request.header.message_id;
    answer.set_token(request.get_token().to_vec());
    set_option(&mut answer, CoapOption::ContentFormat, vec![40]);
    client.send(&answer.to_bytes().unwrap()).await.unwrap();
    let response = tokio::time::timeout(PATIENCE, op)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.code, (2, 5), "{response:?}");

    // Everything on the DTLS socket is a DTLS record: handshake (22) then application
    // data (23); nothing reached the plain CoAP socket.
    let wire = s.tap.0.lock().unwrap().clone();
    assert!(
        wire.iter().all(|(_, local, _)| *local == s.dtls),
        "{wire:?}"
    );
    assert!(
        wire.iter().all(|(_, _, b)| [20, 21, 22, 23].contains(b)),
        "{wire:?}"
    );
    assert_eq!(wire.first().map(|w| w.2), Some(22));
    for direction in [Direction::In, Direction::Out] {
        assert!(wire.contains(&(direction, s.dtls, 22)));
        assert!(wire.contains(&(direction, s.dtls, 23)));
    }
    s.server.shutdown().await;
}

#[tokio::test]
async fn wrong_key_and_unknown_identity_fail_the_handshake_only() {
    let mut s = Secure::start(&["dev-a", "dev-b"]).await;
    let mut good = connect_as(s.dtls, "dev-a").await;
    let registered = call(&mut good, register("dev-a", 1)).await;
    assert_eq!(code(&registered), "2.01");

    let (identity, _) = psk_of("dev-b");
    assert!(connect(s.dtls, &identity, b"not the key").await.is_err());
    let reason = s
        .expect("wrong key", |e| match e {
            Event::Security(
                _,
                SecurityEvent::HandshakeFailed {
                    identity, reason, ..
                },
            ) => Some((
                identity.as_ref().map(ToString::to_string),
                format!("{reason:?}"),
            )),
            _ => None,
        })
        .await;
    assert_eq!(reason, (Some("psk:id-dev-b".into()), "WrongKey".into()));

    assert!(
        connect(s.dtls, "id-nobody", b"0123456789abcdef")
            .await
            .is_err()
    );
    let reason = s
        .expect("unknown identity", |e| match e {
            Event::Security(_, SecurityEvent::HandshakeFailed { reason, .. }) => {
                Some(format!("{reason:?}"))
            }
            _ => None,
        })
        .await;
    assert_eq!(reason, "UnknownIdentity");

    // The established client keeps working.
    let updated = call(&mut good, update(&location(&registered), 2)).await;
    assert_eq!(code(&updated), "2.04");
    assert!(s.server.registrations().get("dev-b").is_none());
    s.server.shutdown().await;
}

#[tokio::test]
async fn an_identity_registering_as_another_endpoint_gets_4_03() {
    let mut s = Secure::start(&["dev-a", "dev-b"]).await;
    let mut client = connect_as(s.dtls, "dev-a").await;
    let answer = call(&mut client, register("dev-b", 1)).await;
    assert_eq!(code(&answer), "4.03");
    assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
    assert!(String::from_utf8_lossy(&answer.payload).contains("belongs to dev-a"));
    let event = s
        .expect("mismatch", |e| match e {
            Event::Security(_, m @ SecurityEvent::IdentityMismatch { .. }) => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        event,
        SecurityEvent::IdentityMismatch {
            // The client binds 0.0.0.0: the server sees it on loopback.
            peer: std::net::SocketAddr::from(([127, 0, 0, 1], client.local_addr().unwrap().port())),
            identity: lwm2m_dtls::Identity::Psk(std::sync::Arc::from(&b"id-dev-a"[..])),
            endpoint: "dev-b".into(),
            owner: Some("dev-a".into()),
        }
    );
    assert!(s.server.registrations().get("dev-b").is_none());
    // Its own name is fine on the same session.
    let own = call(&mut client, register("dev-a", 2)).await;
    assert_eq!(code(&own), "2.01");
    // dev-b may not update or de-register dev-a's registration.
    let mut other = connect_as(s.dtls, "dev-b").await;
    let answer = call(&mut other, update(&location(&own), 3)).await;
    assert_eq!(code(&answer), "4.03");
    assert!(s.server.registrations().get("dev-a").is_some());
    assert_eq!(
        code(&call(&mut client, update(&location(&own), 4)).await),
        "2.04"
    );
    s.server.shutdown().await;
}

/// Issue #10 item 2: a session authenticated as `mallory` that registers
/// `?ep=mallory&ep=victim` (the gate read the first, the registration the last) gets 4.00:
/// one reading of the query, and a repeated parameter is refused before anyone acts on it.
#[tokio::test]
async fn a_repeated_endpoint_name_over_dtls_is_a_bad_request() {
    let s = Secure::start(&["mallory", "victim"]).await;
    let mut client = connect_as(s.dtls, "mallory").await;
    for (mid, (first, second)) in [("mallory", "victim"), ("victim", "mallory")]
        .into_iter()
        .enumerate()
    {
        let mut p = message::request(RequestType::Post, "/rd");
        for q in [
            format!("ep={first}"),
            "lt=300".into(),
            format!("ep={second}"),
        ] {
            message::add_query(&mut p, &q);
        }
        p.header.message_id = mid as u16 + 1;
        p.set_token(vec![mid as u8 + 1]);
        let answer = call(&mut client, p.to_bytes().unwrap()).await;
        assert_eq!(code(&answer), "4.00", "ep={first}&ep={second}");
        assert!(String::from_utf8_lossy(&answer.payload).contains("more than once"));
    }
    assert!(s.server.registrations().get("victim").is_none());
    assert!(s.server.registrations().get("mallory").is_none());
    // Its own name, once, is fine.
    assert_eq!(
        code(&call(&mut client, register("mallory", 9)).await),
        "2.01"
    );
    s.server.shutdown().await;
}

/// With a DTLS listener running, an endpoint that has credentials must use them: its
/// Register over plain CoAP gets 4.03 and an Insecure event; an endpoint without
/// credentials registers over plain CoAP as before.
#[tokio::test]
async fn an_endpoint_with_credentials_cannot_register_over_plain_coap() {
    let mut s = Secure::start(&["dev-a"]).await;
    let plain = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = s.server.local_addr();
    let mut buf = [0u8; 1500];
    let mut ask = async |request: Vec<u8>| {
        plain.send_to(&request, server).await.unwrap();
        let (n, _) = tokio::time::timeout(PATIENCE, plain.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        message::decode(&buf[..n]).unwrap()
    };
    let refused = ask(register("dev-a", 1)).await;
    assert_eq!(code(&refused), "4.03");
    assert_eq!(refused.header.get_type(), MessageType::Acknowledgement);
    assert!(String::from_utf8_lossy(&refused.payload).contains("register over DTLS"));
    let plain_addr = plain.local_addr().unwrap();
    let event = s
        .expect("insecure", |e| match e {
            Event::Security(_, m @ SecurityEvent::Insecure { .. }) => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        event,
        SecurityEvent::Insecure {
            peer: plain_addr,
            endpoint: "dev-a".into()
        }
    );
    assert!(s.server.registrations().get("dev-a").is_none());
    let created = ask(register("no-credentials", 2)).await;
    assert_eq!(code(&created), "2.01");
    // Over DTLS, dev-a registers.
    let mut client = connect_as(s.dtls, "dev-a").await;
    assert_eq!(code(&call(&mut client, register("dev-a", 3)).await), "2.01");
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_rebooted_client_on_the_same_port_gets_a_new_session() {
    let mut s = Secure::start(&["dev-a"]).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap();
    let (identity, key) = psk_of("dev-a");
    let config = ClientConfig::psk(identity.as_bytes(), &key).unwrap();
    let mut first = UdpDtlsClient::connect_with(socket, s.dtls, &config)
        .await
        .unwrap();
    assert_eq!(code(&call(&mut first, register("dev-a", 1)).await), "2.01");
    // The device reboots: its DTLS state is gone, the port is the same.
    drop(first);
    let socket = UdpSocket::bind(port).await.unwrap();
    let mut second = UdpDtlsClient::connect_with(socket, s.dtls, &config)
        .await
        .unwrap();
    assert_eq!(code(&call(&mut second, register("dev-a", 1)).await), "2.01");
    let reason = s
        .expect("old session replaced", |e| match e {
            Event::Security(_, SecurityEvent::Closed { peer, reason, .. }) if *peer == port => {
                Some(format!("{reason:?}"))
            }
            _ => None,
        })
        .await;
    assert_eq!(reason, "Replaced");
    let established = s
        .tap
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(d, _, b)| *d == Direction::In && *b == 22)
        .count();
    assert!(
        established >= 6,
        "two handshakes: {established} handshake datagrams in"
    );
    s.server.shutdown().await;
}

/// Runs libcoap's `bin` with the PSK of `libcoap-id` against `uri`; its `v:1` lines (the
/// messages it received, RFC 7252 notation).
async fn libcoap_psk(bin: &str, args: &[&str], uri: &str) -> Vec<String> {
    assert!(
        std::process::Command::new(bin).arg("-h").output().is_ok(),
        "{bin} is missing: install it with `apt-get install libcoap3-bin`"
    );
    let out = tokio::process::Command::new(bin)
        .args([
            "-B",
            "5",
            "-v",
            "7",
            "-u",
            "libcoap-id",
            "-k",
            "libcoap-secret",
        ])
        .args(args)
        .arg(uri)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{bin} {args:?} {uri}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.starts_with("v:1 "))
        .map(str::to_owned)
        .collect()
}

/// libcoap's client, built with `bin`'s TLS library, completes a PSK handshake with our
/// LwM2M Server and gets the right answers: Register 2.01 with the Location-Path, then an
/// Update of that registration 2.04 (a second session: libcoap exits after each request),
/// then 4.04 for an Update of a registration that does not exist.
async fn libcoap_registers_and_updates_over_dtls(bin: &str) {
    let mut s = Secure::start(&[]).await;
    s.security
        .put(SecurityInfo {
            endpoint: "libcoap-1".into(),
            credentials: Credentials::Psk {
                identity: "libcoap-id".into(),
                key: hex(b"libcoap-secret"),
            },
        })
        .unwrap();
    let register = ["-m", "post", "-t", "40", "-e", "</3/0>"];
    let uri = format!("coaps://{}/rd?ep=libcoap-1&lt=60", s.dtls);
    let answers = libcoap_psk(bin, &register, &uri).await;
    let created = answers
        .iter()
        .find(|l| l.contains("c:2.01"))
        .unwrap_or_else(|| panic!("no 2.01 in {answers:?}"));
    let id = s
        .expect("registered", |e| match e {
            Event::Server(ServerEvent::Registered { registration, .. })
                if registration.endpoint == "libcoap-1" =>
            {
                Some(registration.id.clone())
            }
            _ => None,
        })
        .await;
    assert!(
        created.contains(&format!("Location-Path:rd, Location-Path:{id}")),
        "{created}"
    );
    let uri = format!("coaps://{}/rd/{id}?lt=120", s.dtls);
    let answers = libcoap_psk(bin, &["-m", "post"], &uri).await;
    assert!(answers.iter().any(|l| l.contains("c:2.04")), "{answers:?}");
    s.expect("updated", |e| match e {
        Event::Server(ServerEvent::Updated { registration, .. })
            if registration.id == id && registration.lifetime == 120 =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    let uri = format!("coaps://{}/rd/no-such-registration", s.dtls);
    let answers = libcoap_psk(bin, &["-m", "post"], &uri).await;
    assert!(answers.iter().any(|l| l.contains("c:4.04")), "{answers:?}");
    s.server.shutdown().await;
}

#[tokio::test]
async fn coap_client_openssl_registers_and_updates_with_psk() {
    libcoap_registers_and_updates_over_dtls("coap-client-openssl").await;
}

#[tokio::test]
async fn coap_client_gnutls_registers_and_updates_with_psk() {
    libcoap_registers_and_updates_over_dtls("coap-client-gnutls").await;
}

/// A self-signed CA named `cn`: its parameters, key and certificate (DER).
pub fn certificate_authority(cn: &str) -> (rcgen::CertificateParams, rcgen::KeyPair, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, cn);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let der = ca.self_signed(&key).unwrap().der().to_vec();
    (ca, key, der)
}

/// A P-256 certificate for `cn` (and `san`, if any) issued by the CA (`ca_params`,
/// `ca_key`), with its PKCS#8 key.
pub fn issue(
    ca_params: &rcgen::CertificateParams,
    ca_key: &rcgen::KeyPair,
    cn: &str,
    san: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (Vec<u8>, Vec<u8>) {
    let names: Vec<String> = san.iter().map(|s| s.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_params(ca_params, ca_key);
    let der = params.signed_by(&key, &issuer).unwrap().der().to_vec();
    (der, key.serialize_der())
}

/// Security mode 2 (Core TS 1.1 §7.1.8): a client certificate whose common name is the
/// endpoint name registers; the same session registering another name gets 4.03.
#[tokio::test]
async fn certificate_client_registers_under_its_common_name_only() {
    use lwm2m_dtls::{CertificateConfig, Credentials as DtlsCredentials};
    use rcgen::ExtendedKeyUsagePurpose;

    let (ca, ca_key, ca_der) = certificate_authority("e2e CA");
    let (server_chain, server_key) = issue(
        &ca,
        &ca_key,
        "lwm2m server",
        &["lwm2m.test"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_chain, client_key) = issue(
        &ca,
        &ca_key,
        "dev-x",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );

    let security = Arc::new(FileSecurityStore::in_memory());
    let mut options = ServerOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Registry::embedded()),
    );
    options.dtls = Some(DtlsOptions {
        certificate: Some(CertificateConfig {
            chain: vec![server_chain],
            private_key: server_key,
            trust_anchors: vec![ca_der.clone()],
        }),
        ..DtlsOptions::new("127.0.0.1:0".parse().unwrap(), security)
    });
    let server = start_server(options).unwrap();
    let config = ClientConfig::new(&DtlsCredentials::Certificate {
        certificate: CertificateConfig {
            chain: vec![client_chain],
            private_key: client_key,
            trust_anchors: vec![ca_der],
        },
        server_name: "lwm2m.test".into(),
    })
    .unwrap();
    let mut client = tokio::time::timeout(
        PATIENCE,
        UdpDtlsClient::connect(server.dtls_addr().unwrap(), &config),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(code(&call(&mut client, register("dev-y", 1)).await), "4.03");
    assert_eq!(code(&call(&mut client, register("dev-x", 2)).await), "2.01");
    assert!(server.registrations().get("dev-x").is_some());
    assert!(server.registrations().get("dev-y").is_none());
    server.shutdown().await;
}
