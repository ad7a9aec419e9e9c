//! Shared fixtures: an echo server on a loopback port, the PSK table of the tests.
#![allow(clippy::unwrap_used)] // test fixtures: a failure is the test failing
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lwm2m_dtls::{ServerConfig, ServerEvent, UdpDtlsServer};
use tokio::sync::mpsc;

/// Identities and keys the test servers know.
pub const KNOWN: &[(&str, &str)] = &[
    ("urn:imei:490154203237518", "secret-key-0001"),
    ("device-2", "another-secret"),
];

pub fn psk_table() -> ServerConfig {
    ServerConfig {
        psk_store: Some(Arc::new(|identity: &[u8]| {
            KNOWN
                .iter()
                .find(|(id, _)| id.as_bytes() == identity)
                .map(|(_, key)| key.as_bytes().to_vec())
        })),
        ..ServerConfig::default()
    }
}

/// Runs a server on 127.0.0.1:0 that echoes every datagram back, prefixed with the peer's
/// identity text and `|`; all events go to the returned channel.
pub fn spawn_echo_server(
    config: ServerConfig,
) -> (SocketAddr, mpsc::UnboundedReceiver<ServerEvent>) {
    let mut server = UdpDtlsServer::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let event = server.next_event().await.unwrap();
            if let ServerEvent::Datagram {
                peer,
                identity,
                payload,
                ..
            } = &event
            {
                let mut answer = format!("{}|", identity.as_text()).into_bytes();
                answer.extend_from_slice(payload);
                server.send(*peer, &answer).await.unwrap();
            }
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// The next event that `pick` accepts, within 10 s.
pub async fn wait_for<T>(
    events: &mut mpsc::UnboundedReceiver<ServerEvent>,
    mut pick: impl FnMut(&ServerEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events.recv().await.expect("server task ended");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
    .expect("no matching server event within 10 s")
}
