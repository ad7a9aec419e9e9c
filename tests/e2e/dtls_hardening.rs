//! The DTLS listeners against hostile and unusual peers (issue #10, items 4–6), over real
//! loopback sockets with real handshakes:
//!
//! - a ClientHello without a valid cookie gets a stateless HelloVerifyRequest (RFC 6347
//!   §4.2.1): a spoofed ClientHello from a registered client's address leaves its session
//!   working (RFC 6347 §4.2.8), and a flood of ClientHellos creates no handshake state;
//! - the first ClientHello is accepted whatever its record-layer version (RFC 6347 §4.1,
//!   RFC 5246 Appendix E.1): the `{254, 0}` of Debian's mbedTLS 2.28, as captured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lwm2m_dtls::record::describe;
use lwm2m_dtls::{
    ClientConfig, DtlsClient, ServerConfig, ServerCounters, ServerEvent as DtlsEvent,
    UdpDtlsClient, UdpDtlsServer,
};
use lwm2m_proto::ContentFormat;
use lwm2m_proto::coap::message::{self, set_option};
use lwm2m_proto::coap::{CoapOption, MessageType, ResponseType};
use lwm2m_proto::server::{Operation, Response, ServerEvent};
use lwm2m_server::driver::ServerHandle;
use lwm2m_server::events::{Event, SecurityEvent};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::dtls_server::{Secure, call, code, connect_as, psk_of, register};

const PATIENCE: Duration = Duration::from_secs(30);

/// The first datagram of a C client built on Debian's mbedTLS 2.28, as captured: a
/// ClientHello in a record whose version is `{254, 0}` (233 bytes).
const MBEDTLS_HELLO: &str = "16fe00000000000000000000dc010000d000000000000000d0fefd6b1497fed4e9062f4c3f6dcde707fa46dc96d241932acad570a6d5418adbfb8a0000004cccacccad00abc0a7c03800b3c0360091c091c09bc097c0ab00aac0a6c03700b2c0350090c090c096c09ac0aaccab00a9c0a500af008dc08fc095c0a900a8c0a400ae008cc08ec094c0a800ff0100005a0000000e000c0000093132372e302e302e31000d0012001006030601050305010403040103030301000a001c001a0019001c0018001b00170016001a0015001400130012001d001e000b00020100001600000017000000230000";

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A UDP relay in front of the server for one client. What the client sends passes
/// through `rewrite`; [`Relay::inject`] sends a datagram to the server from the relay's
/// socket, i.e. from the client's address as the server sees it (a spoofer's datagram).
/// Stops when dropped.
struct Relay {
    front: SocketAddr,
    back: Arc<UdpSocket>,
    /// Datagrams `rewrite` changed.
    rewritten: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(server: SocketAddr, rewrite: fn(&mut [u8]) -> bool) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let rewritten = Arc::new(AtomicUsize::new(0));
        let (f, b, count) = (front.clone(), back.clone(), rewritten.clone());
        let task = tokio::spawn(async move {
            let mut client = None;
            let (mut up, mut down) = (vec![0; 65_535], vec![0; 65_535]);
            loop {
                tokio::select! {
                    received = f.recv_from(&mut up) => if let Ok((n, from)) = received {
                        client = Some(from);
                        if rewrite(&mut up[..n]) {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = b.send(&up[..n]).await;
                    },
                    received = b.recv(&mut down) => if let (Ok(n), Some(to)) = (received, client) {
                        let _ = f.send_to(&down[..n], to).await;
                    },
                }
            }
        });
        Relay {
            front: addr,
            back,
            rewritten,
            task,
        }
    }

    /// The client's address as the server sees it.
    fn peer(&self) -> SocketAddr {
        self.back.local_addr().unwrap()
    }

    async fn inject(&self, datagram: &[u8]) {
        self.back.send(datagram).await.unwrap();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Gives every epoch-0 ClientHello record the record version `{254, 0}`, as mbedTLS 2.28
/// does before the version is negotiated.
fn mbedtls_record_version(datagram: &mut [u8]) -> bool {
    let hello = datagram.len() > 13 && datagram[0] == 22 && datagram[3..5] == [0, 0];
    if hello && datagram[13] == 1 {
        datagram[1..3].copy_from_slice(&[0xfe, 0x00]);
        return true;
    }
    false
}

fn unchanged(_: &mut [u8]) -> bool {
    false
}

/// The first ClientHello of a fresh PSK client: what a spoofer or a flood sends.
fn fresh_hello(server: SocketAddr) -> Vec<u8> {
    let config = ClientConfig::psk(b"somebody", b"some key").unwrap();
    DtlsClient::connect(Instant::now(), server, &config)
        .unwrap()
        .poll_transmit()
        .unwrap()
}

/// The server reads `/3/0/0` (Device manufacturer) from `ep`; `client` answers it.
async fn read_manufacturer(
    server: &ServerHandle,
    ep: &str,
    client: &mut UdpDtlsClient,
) -> Response {
    let (server, ep) = (server.clone(), ep.to_owned());
    let op = tokio::spawn(async move {
        server
            .request(
                &ep,
                Operation::Read {
                    path: "/3/0/0".parse().unwrap(),
                    format: Some(ContentFormat::Text),
                },
            )
            .await
    });
    let request = tokio::time::timeout(PATIENCE, client.recv())
        .await
        .expect("the read reaches the client")
        .unwrap();
    let request = message::decode(&request).unwrap();
    assert_eq!(message::uri_path(&request), "/3/0/0");
    let mut answer = message::response(ResponseType::Content, b"Open Mobile Alliance".to_vec());
    answer.header.set_type(MessageType::Acknowledgement);
    answer.header.message_id = request.header.message_id;
    answer.set_token(request.get_token().to_vec());
    set_option(&mut answer, CoapOption::ContentFormat, vec![]);
    client.send(&answer.to_bytes().unwrap()).await.unwrap();
    tokio::time::timeout(PATIENCE, op)
        .await
        .expect("the read completes")
        .unwrap()
        .expect("the read succeeds")
}

async fn registered(s: &mut Secure, ep: &str) {
    s.expect("registered", |e| match e {
        Event::Server(ServerEvent::Registered { registration, .. })
            if registration.endpoint == ep =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
}

/// Events already on the bus, without waiting.
fn pending_events(s: &mut Secure) -> Vec<Arc<Event>> {
    std::iter::from_fn(|| s.events.try_recv().ok()).collect()
}

#[tokio::test]
async fn the_mbedtls_hello_with_record_version_fe00_gets_a_hello_verify_request() {
    let s = Secure::start(&["dev-a"]).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(s.dtls).await.unwrap();
    let hello = unhex(MBEDTLS_HELLO);
    assert_eq!(hello.len(), 233);
    socket.send(&hello).await.unwrap();
    let mut buf = [0; 2048];
    let n = tokio::time::timeout(PATIENCE, socket.recv(&mut buf))
        .await
        .expect("an answer to the ClientHello")
        .unwrap();
    let verify = &buf[..n];
    assert_eq!(describe(verify), "HelloVerifyRequest");
    // Record sequence number and message_seq of the ClientHello (RFC 6347 §4.2.1), a
    // 20-byte cookie.
    assert_eq!(verify[3..11], hello[3..11]);
    assert_eq!(verify[13 + 4..13 + 6], [0, 0]);
    assert_eq!(verify[13 + 12 + 2], 20);

    // mbedTLS's next datagram: the hello with the cookie, message_seq 1, record sequence
    // number 1, the record version still {254, 0}. The server goes on with the handshake.
    let cookie = &verify[13 + 12 + 3..];
    let split = 13 + 12 + 2 + 32 + 1;
    let mut again = hello[..split].to_vec();
    again.push(20);
    again.extend_from_slice(cookie);
    again.extend_from_slice(&hello[split + 1..]);
    let body = u32::try_from(again.len() - 25).unwrap().to_be_bytes();
    let record = u16::try_from(again.len() - 13).unwrap().to_be_bytes();
    again[10] = 1;
    again[11..13].copy_from_slice(&record);
    again[14..17].copy_from_slice(&body[1..]);
    again[17..19].copy_from_slice(&[0, 1]);
    again[22..25].copy_from_slice(&body[1..]);
    socket.send(&again).await.unwrap();
    let n = tokio::time::timeout(PATIENCE, socket.recv(&mut buf))
        .await
        .expect("the server's flight")
        .unwrap();
    assert_eq!(describe(&buf[..n]), "ServerHello, ServerHelloDone");
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_client_whose_hellos_carry_record_version_fe00_registers_and_is_read() {
    let mut s = Secure::start(&["dev-fe00"]).await;
    // Both of its ClientHellos go through the relay with the record version {254, 0}.
    let relay = Relay::start(s.dtls, mbedtls_record_version).await;
    let mut client = connect_as(relay.front, "dev-fe00").await;
    let answer = call(&mut client, register("dev-fe00", 1)).await;
    assert_eq!(code(&answer), "2.01");
    let established = s
        .expect("established", |e| match e {
            Event::Security(_, SecurityEvent::Established { peer, identity, .. }) => {
                Some((*peer, identity.to_string()))
            }
            _ => None,
        })
        .await;
    let (identity, _) = psk_of("dev-fe00");
    assert_eq!(established, (relay.peer(), format!("psk:{identity}")));
    assert_eq!(
        relay.rewritten.load(Ordering::Relaxed),
        2,
        "two ClientHellos"
    );
    registered(&mut s, "dev-fe00").await;
    let response = read_manufacturer(&s.server, "dev-fe00", &mut client).await;
    assert_eq!(response.code, (2, 5), "{response:?}");
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_spoofed_client_hello_leaves_the_registered_session_working() {
    let mut s = Secure::start(&["dev-a"]).await;
    let relay = Relay::start(s.dtls, unchanged).await;
    let mut client = connect_as(relay.front, "dev-a").await;
    assert_eq!(code(&call(&mut client, register("dev-a", 1)).await), "2.01");
    registered(&mut s, "dev-a").await;
    let before = read_manufacturer(&s.server, "dev-a", &mut client).await;
    assert_eq!(before.code, (2, 5));

    // Someone else's ClientHello from the client's address and port, then the same with a
    // made-up cookie: each gets a HelloVerifyRequest (which the relay hands to the real
    // client, which ignores it) and nothing else.
    let hello = fresh_hello(s.dtls);
    relay.inject(&hello).await;
    let split = 13 + 12 + 2 + 32 + 1;
    let mut forged = hello[..split].to_vec();
    forged.push(20);
    forged.extend_from_slice(&[0x42; 20]);
    forged.extend_from_slice(&hello[split + 1..]);
    let body = u32::try_from(forged.len() - 25).unwrap().to_be_bytes();
    let record = u16::try_from(forged.len() - 13).unwrap().to_be_bytes();
    forged[11..13].copy_from_slice(&record);
    forged[14..17].copy_from_slice(&body[1..]);
    forged[17..19].copy_from_slice(&[0, 1]);
    forged[22..25].copy_from_slice(&body[1..]);
    relay.inject(&forged).await;

    // Reads still succeed on the same session, and it was never closed.
    for _ in 0..2 {
        let after = read_manufacturer(&s.server, "dev-a", &mut client).await;
        assert_eq!(after.code, (2, 5), "{after:?}");
    }
    let update = call(&mut client, register("dev-a", 2)).await;
    assert_eq!(code(&update), "2.01");
    let closed: Vec<_> = pending_events(&mut s)
        .into_iter()
        .filter(|e| matches!(&**e, Event::Security(_, SecurityEvent::Closed { .. })))
        .collect();
    assert!(closed.is_empty(), "{closed:?}");
    assert!(s.server.registrations().get("dev-a").is_some());
    s.server.shutdown().await;
}

/// What the test asks the server task: its session and handshake counts and counters.
type Stats = (usize, usize, ServerCounters);

/// A PSK echo server on its own task, answering [`Stats`] requests between events.
fn spawn_router() -> (SocketAddr, mpsc::Sender<oneshot::Sender<Stats>>) {
    let (identity, key) = psk_of("dev-a");
    let mut server = UdpDtlsServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig {
            psk_store: Some(Arc::new(move |id: &[u8]| {
                (id == identity.as_bytes()).then(|| key.clone())
            })),
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, mut rx) = mpsc::channel::<oneshot::Sender<Stats>>(4);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                event = server.next_event() => {
                    if let DtlsEvent::Datagram { peer, payload, .. } = event.unwrap() {
                        server.send(peer, &payload).await.unwrap();
                    }
                }
                asked = rx.recv() => match asked {
                    Some(reply) => {
                        let dtls = server.dtls();
                        let _ = reply.send((
                            dtls.session_count(),
                            dtls.handshake_count(),
                            *dtls.counters(),
                        ));
                    }
                    None => return,
                },
            }
        }
    });
    (addr, tx)
}

async fn stats(ask: &mpsc::Sender<oneshot::Sender<Stats>>) -> Stats {
    let (tx, rx) = oneshot::channel();
    ask.send(tx).await.unwrap();
    rx.await.unwrap()
}

/// Sends copies of `hello` from four sockets, as fast as they go, until `count` have been
/// sent or `stop` is set; the number that left (a full socket buffer drops some: that is
/// part of a flood).
fn flood(
    server: SocketAddr,
    hello: Vec<u8>,
    count: usize,
    stop: Arc<AtomicBool>,
) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let mut sockets = Vec::new();
        for _ in 0..4 {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.connect(server).await.unwrap();
            sockets.push(socket);
        }
        let mut sent = 0;
        for _ in 0..count / sockets.len() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for socket in &sockets {
                if socket.send(&hello).await.is_ok() {
                    sent += 1;
                }
            }
            tokio::task::yield_now().await;
        }
        sent
    })
}

/// Sends `request` until an answer comes, as a CoAP client retransmits a confirmable
/// request (RFC 7252 §4.2; same message ID, so the server deduplicates): under a flood the
/// server's socket buffer drops datagrams of real clients too.
async fn call_retrying(client: &mut UdpDtlsClient, request: Vec<u8>) -> lwm2m_proto::coap::Packet {
    for _ in 0..15 {
        client.send(&request).await.unwrap();
        if let Ok(answer) = tokio::time::timeout(Duration::from_secs(2), client.recv()).await {
            return message::decode(&answer.unwrap()).unwrap();
        }
    }
    panic!("no answer to 15 transmissions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_client_hellos_creates_no_handshake_state() {
    let (server, ask) = spawn_router();
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = flood(server, fresh_hello(server), 200_000, stop.clone());
    // Hellos pour in until the server has answered thousands: no session, no handshake slot
    // taken by them at any time. (Before the stateless cookie exchange, each took a slot
    // for the 10 s handshake timeout and the cap of 4,096 refused real clients.)
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (sessions, handshakes, counters) = stats(&ask).await;
        assert_eq!((sessions, handshakes), (0, 0), "{counters:?}");
        assert_eq!(counters.handshakes_started, 0);
        if counters.hello_verify_requests >= 5000 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && !flooding.is_finished(),
            "the server answered only {} hellos",
            counters.hello_verify_requests
        );
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = flooding.await.unwrap();
    assert!(sent >= 5000, "{sent}");
    // Right after the burst a real client completes its handshake and exchanges data
    // (repeating its datagram if the rest of the burst crowds it out of the buffer).
    let (identity, key) = psk_of("dev-a");
    let config = ClientConfig::psk(identity.as_bytes(), &key).unwrap();
    let mut client = tokio::time::timeout(PATIENCE, UdpDtlsClient::connect(server, &config))
        .await
        .expect("the handshake ends")
        .expect("the handshake completes");
    let mut echo = None;
    for _ in 0..15 {
        client.send(b"after the flood").await.unwrap();
        if let Ok(answer) = tokio::time::timeout(Duration::from_secs(2), client.recv()).await {
            echo = Some(answer.unwrap());
            break;
        }
    }
    assert_eq!(echo.as_deref(), Some(&b"after the flood"[..]));
    let (sessions, handshakes, counters) = stats(&ask).await;
    assert_eq!((sessions, handshakes), (1, 0), "{counters:?}");
    assert_eq!(counters.handshakes_started, 1, "only the real client's");
    assert_eq!(counters.hellos_refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_registers_during_a_client_hello_flood() {
    let mut s = Secure::start(&["dev-a"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = flood(s.dtls, fresh_hello(s.dtls), 8000, stop);
    // The client's flights and requests are repeated when the burst crowds them out.
    let mut client = connect_as(s.dtls, "dev-a").await;
    let answer = call_retrying(&mut client, register("dev-a", 1)).await;
    assert_eq!(code(&answer), "2.01");
    registered(&mut s, "dev-a").await;
    assert!(flooding.await.unwrap() >= 2000);
    let response = read_manufacturer(&s.server, "dev-a", &mut client).await;
    assert_eq!(response.code, (2, 5));
    s.server.shutdown().await;
}
