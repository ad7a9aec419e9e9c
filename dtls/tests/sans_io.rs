//! The router's limits and timers on a virtual clock, without sockets.
#![allow(clippy::unwrap_used)] // test fixtures: a failure is the test failing

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwm2m_dtls::{
    ClientConfig, ClientEvent, CloseReason, DtlsClient, DtlsServer, FailureReason, ServerConfig,
    ServerEvent,
};

const SERVER: &str = "10.0.0.1:5684";

fn server(config: ServerConfig) -> DtlsServer {
    DtlsServer::new(ServerConfig {
        psk_store: Some(Arc::new(|id: &[u8]| {
            (id == b"dev").then(|| b"key".to_vec())
        })),
        ..config
    })
    .unwrap()
}

fn client(now: Instant) -> DtlsClient {
    let config = ClientConfig::psk(b"dev", b"key").unwrap();
    DtlsClient::connect(now, SERVER.parse().unwrap(), &config).unwrap()
}

fn peer(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 2], 40000 + i))
}

/// Moves datagrams both ways until neither side has any.
fn pump(now: Instant, server: &mut DtlsServer, client: &mut DtlsClient, from: SocketAddr) {
    loop {
        let mut moved = false;
        while let Some(bytes) = client.poll_transmit() {
            server.handle_datagram(now, from, &bytes);
            moved = true;
        }
        while let Some(transmit) = server.poll_transmit() {
            assert_eq!(transmit.peer, from);
            client.handle_datagram(now, &transmit.bytes);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn events(server: &mut DtlsServer) -> Vec<ServerEvent> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

#[test]
fn a_silent_handshake_times_out_on_both_sides() {
    let start = Instant::now();
    let mut server = server(ServerConfig::default());
    let mut client = client(start);
    let hello = client.poll_transmit().unwrap();
    server.handle_datagram(start, peer(0), &hello);
    assert_eq!(server.handshake_count(), 1);
    // The HelloVerifyRequest is lost; both sides retransmit, then give up.
    let mut now = start;
    while server.session_count() > 0 || !client.is_finished() {
        now += Duration::from_millis(500);
        assert!(now < start + Duration::from_secs(30), "no timeout");
        server.handle_timeout(now);
        client.handle_timeout(now);
        while server.poll_transmit().is_some() {}
        while client.poll_transmit().is_some() {}
    }
    assert!(now <= start + Duration::from_secs(11));
    let failed = events(&mut server);
    assert!(
        matches!(
            &failed[..],
            [ServerEvent::HandshakeFailed {
                reason: FailureReason::Timeout,
                ..
            }]
        ),
        "{failed:?}"
    );
    assert_eq!(server.handshake_count(), 0);
    assert_eq!(
        client.poll_event(),
        Some(ClientEvent::HandshakeFailed(FailureReason::Timeout))
    );
    assert_eq!(server.counters().handshakes_failed, 1);
}

#[test]
fn concurrent_handshakes_are_capped() {
    let now = Instant::now();
    let mut server = server(ServerConfig {
        max_handshakes: 2,
        ..ServerConfig::default()
    });
    for i in 0..3 {
        let hello = client(now).poll_transmit().unwrap();
        server.handle_datagram(now, peer(i), &hello);
    }
    assert_eq!((server.session_count(), server.handshake_count()), (2, 2));
    assert_eq!(server.counters().hellos_refused, 1);
    assert!(server.session(peer(2)).is_none());
}

#[test]
fn stray_records_and_retransmitted_hellos_do_not_create_or_restart_sessions() {
    let now = Instant::now();
    let mut server = server(ServerConfig::default());
    server.handle_datagram(
        now,
        peer(0),
        &[23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0],
    );
    assert_eq!(
        (server.session_count(), server.counters().stray_datagrams),
        (0, 1)
    );

    let mut client = client(now);
    let hello = client.poll_transmit().unwrap();
    server.handle_datagram(now, peer(0), &hello);
    let first = server.session(peer(0)).unwrap().session;
    server.handle_datagram(now, peer(0), &hello);
    assert_eq!(server.session(peer(0)).unwrap().session, first);
    assert_eq!(server.counters().handshakes_started, 1);
    assert!(events(&mut server).is_empty());
}

#[test]
fn idle_sessions_are_closed_and_removed() {
    let start = Instant::now();
    let idle = Duration::from_secs(60);
    let mut server = server(ServerConfig {
        idle_timeout: Some(idle),
        ..ServerConfig::default()
    });
    let mut client = client(start);
    pump(start, &mut server, &mut client, peer(0));
    assert!(client.is_established());
    let later = start + Duration::from_secs(30);
    client.send(later, b"ping").unwrap();
    pump(later, &mut server, &mut client, peer(0));
    server.handle_timeout(later + idle - Duration::from_secs(1));
    assert_eq!(server.session_count(), 1);
    assert_eq!(server.poll_timeout(), Some(later + idle));
    server.handle_timeout(later + idle);
    assert_eq!(server.session_count(), 0);
    let ended = events(&mut server);
    assert!(
        matches!(
            ended.last(),
            Some(ServerEvent::Closed {
                reason: CloseReason::IdleTimeout,
                ..
            })
        ),
        "{ended:?}"
    );
    // The close_notify reaches the client, which ends too.
    while let Some(transmit) = server.poll_transmit() {
        client.handle_datagram(later + idle, &transmit.bytes);
    }
    assert!(client.is_finished());
}

#[test]
fn close_notify_from_the_client_removes_the_session() {
    let now = Instant::now();
    let mut server = server(ServerConfig::default());
    let mut client = client(now);
    pump(now, &mut server, &mut client, peer(0));
    client.close(now);
    pump(now, &mut server, &mut client, peer(0));
    assert_eq!(server.session_count(), 0);
    let ended = events(&mut server);
    assert!(
        matches!(
            ended.last(),
            Some(ServerEvent::Closed {
                reason: CloseReason::PeerClosed,
                ..
            })
        ),
        "{ended:?}"
    );
}

#[test]
fn garbage_on_an_established_session_is_dropped_and_counted() {
    let now = Instant::now();
    let mut server = server(ServerConfig::default());
    let mut client = client(now);
    pump(now, &mut server, &mut client, peer(0));
    // An application_data record at epoch 1 that does not decrypt (forged or corrupted).
    let mut forged = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 99, 0, 24];
    forged.extend_from_slice(&[0x55; 24]);
    server.handle_datagram(now, peer(0), &forged);
    assert!(
        server.poll_transmit().is_none(),
        "no alert for a forged record"
    );
    let info = server.session(peer(0)).unwrap();
    assert!(info.established);
    assert_eq!(info.stats.discarded, 1);
    client.send(now, b"still fine").unwrap();
    pump(now, &mut server, &mut client, peer(0));
    assert!(
        events(&mut server).iter().any(
            |e| matches!(e, ServerEvent::Datagram { payload, .. } if payload == b"still fine")
        )
    );
}
