//! Interoperability with libcoap (Debian package `libcoap3-bin`): its OpenSSL and GnuTLS
//! clients against our DtlsServer answering CoAP through lwm2m_proto::coap::Endpoint, and
//! our DtlsClient against its OpenSSL and GnuTLS servers, all with
//! TLS_PSK_WITH_AES_128_CCM_8. A missing binary fails the test with the install command.
#![allow(clippy::unwrap_used)] // test fixtures: a failure is the test failing

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{KNOWN, psk_table, wait_for};
use lwm2m_dtls::{ClientConfig, Identity, ServerEvent, UdpDtlsClient, UdpDtlsServer};
use lwm2m_proto::coap::{Config, Endpoint, Event, RequestType, ResponseType, message};
use tokio::process::Command;
use tokio::sync::mpsc;

const ANSWER: &str = "Open Mobile Alliance";

/// Fails the test, saying how to install the binary, if `binary` is not on PATH.
fn require(binary: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| dir.join(binary).is_file());
    assert!(
        found,
        "{binary} is not on PATH: install it with `apt-get install libcoap3-bin`"
    );
}

/// A DtlsServer with the test PSK table whose CoAP endpoint answers every GET with 2.05
/// and [`ANSWER`]; its DTLS events go to the channel.
fn spawn_coap_server() -> (SocketAddr, mpsc::UnboundedReceiver<ServerEvent>) {
    let mut server = UdpDtlsServer::bind("127.0.0.1:0".parse().unwrap(), psk_table()).unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut coap = Endpoint::new(Config {
            seed: 7,
            ..Config::default()
        });
        loop {
            let event = server.next_event().await.unwrap();
            if let ServerEvent::Datagram { peer, payload, .. } = &event {
                let now = Instant::now();
                coap.handle_datagram(now, *peer, payload);
                while let Some(event) = coap.poll_event() {
                    if let Event::Request { request, .. } = event {
                        let response = message::response(ResponseType::Content, ANSWER.into());
                        coap.respond(now, request.handle, response).unwrap();
                    }
                }
                while let Some(transmit) = coap.poll_transmit() {
                    server.send(transmit.peer, &transmit.bytes).await.unwrap();
                }
            }
            let _ = tx.send(event);
        }
    });
    (addr, rx)
}

async fn libcoap_client_gets_an_answer(binary: &str) {
    require(binary);
    let (server, mut events) = spawn_coap_server();
    let (identity, key) = KNOWN[0];
    let uri = format!("coaps://127.0.0.1:{}/3/0/0", server.port());
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(binary)
            .args(["-m", "get", "-B", "10", "-u", identity, "-k", key, &uri])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the libcoap client did not finish within 30 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(ANSWER),
        "{binary} printed {stdout:?}, stderr {:?}",
        String::from_utf8_lossy(&output.stderr)
    );
    let authenticated = wait_for(&mut events, |e| match e {
        ServerEvent::Established { identity, .. } => Some(identity.clone()),
        _ => None,
    })
    .await;
    assert_eq!(authenticated, Identity::Psk(identity.as_bytes().into()));
}

#[tokio::test]
async fn coap_client_openssl_reads_from_our_server() {
    libcoap_client_gets_an_answer("coap-client-openssl").await;
}

#[tokio::test]
async fn coap_client_gnutls_reads_from_our_server() {
    libcoap_client_gets_an_answer("coap-client-gnutls").await;
}

/// A port P such that P (CoAP) and P + 1 (CoAPS) are free for UDP and TCP on 127.0.0.1.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Some(next) = port.checked_add(1) else {
            continue;
        };
        let free = [port, next].iter().all(|p| {
            UdpSocket::bind(("127.0.0.1", *p)).is_ok()
                && TcpListener::bind(("127.0.0.1", *p)).is_ok()
        });
        if free {
            return port;
        }
    }
    panic!("no two consecutive free ports on 127.0.0.1");
}

async fn our_client_reads_from_libcoap_server(binary: &str) {
    require(binary);
    let key = "libcoap-server-key";
    let port = free_port_pair();
    let _server = Command::new(binary)
        .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-k", key])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let server: SocketAddr = ([127, 0, 0, 1], port + 1).into();
    let config = ClientConfig::psk(b"lwm2m-harness", key.as_bytes())
        .unwrap()
        .with_handshake_timeout(Duration::from_secs(2));
    // The server needs a moment to start: retry the handshake for up to 20 s.
    let started = Instant::now();
    let mut client = loop {
        match UdpDtlsClient::connect(server, &config).await {
            Ok(client) => break client,
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no DTLS handshake with {binary}: {e}"),
        }
    };

    let mut coap = Endpoint::new(Config {
        seed: 11,
        ..Config::default()
    });
    let id = coap
        .send_request(
            Instant::now(),
            server,
            message::request(RequestType::Get, "/"),
        )
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            while let Some(transmit) = coap.poll_transmit() {
                client.send(&transmit.bytes).await.unwrap();
            }
            if let Some(event) = coap.poll_event() {
                match event {
                    Event::Response {
                        id: answered,
                        response,
                    } if answered == id => return response,
                    other => panic!("unexpected CoAP event {other:?}"),
                }
            }
            let datagram = client.recv().await.unwrap();
            coap.handle_datagram(Instant::now(), server, &datagram);
        }
    })
    .await
    .expect("no CoAP response within 10 s");
    assert_eq!(
        response.header.code,
        coap_lite::MessageClass::Response(ResponseType::Content)
    );
    let text = String::from_utf8_lossy(&response.payload);
    assert!(text.contains("libcoap"), "payload {text:?}");
    assert!(client.stats().handshake_bytes() > 0);
}

#[tokio::test]
async fn our_client_reads_from_coap_server_openssl() {
    our_client_reads_from_libcoap_server("coap-server-openssl").await;
}

#[tokio::test]
async fn our_client_reads_from_coap_server_gnutls() {
    our_client_reads_from_libcoap_server("coap-server-gnutls").await;
}
