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

/// Runs the cookie exchange: the client's first ClientHello, the server's stateless
/// HelloVerifyRequest, the ClientHello returning the cookie. The server's answer to the
/// latter is dropped (as if lost). Returns the first ClientHello.
fn exchange_cookie(
    now: Instant,
    server: &mut DtlsServer,
    client: &mut DtlsClient,
    from: SocketAddr,
) -> Vec<u8> {
    let hello = client.poll_transmit().unwrap();
    server.handle_datagram(now, from, &hello);
    let verify = server.poll_transmit().unwrap();
    assert_eq!(verify.peer, from);
    assert!(server.poll_transmit().is_none());
    client.handle_datagram(now, &verify.bytes);
    let with_cookie = client.poll_transmit().unwrap();
    server.handle_datagram(now, from, &with_cookie);
    while server.poll_transmit().is_some() {}
    hello
}

#[test]
fn a_silent_handshake_times_out_on_both_sides() {
    let start = Instant::now();
    let mut server = server(ServerConfig::default());
    let mut client = client(start);
    exchange_cookie(start, &mut server, &mut client, peer(0));
    assert_eq!(server.handshake_count(), 1);
    // The server's flight is lost; both sides retransmit, then give up.
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
        exchange_cookie(now, &mut server, &mut client(now), peer(i));
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
    let hello = exchange_cookie(now, &mut server, &mut client, peer(0));
    let first = server.session(peer(0)).unwrap().session;
    // The first ClientHello again gets a HelloVerifyRequest and leaves the session alone.
    server.handle_datagram(now, peer(0), &hello);
    assert_eq!(server.session(peer(0)).unwrap().session, first);
    assert_eq!(server.counters().handshakes_started, 1);
    assert_eq!(server.counters().hello_verify_requests, 2);
    assert!(events(&mut server).is_empty());
}

#[test]
fn a_client_hello_without_cookie_gets_a_hello_verify_request_and_no_state() {
    let now = Instant::now();
    let mut server = server(ServerConfig::default());
    let hello = client(now).poll_transmit().unwrap();
    server.handle_datagram(now, peer(0), &hello);
    let verify = server.poll_transmit().unwrap();
    // HelloVerifyRequest (RFC 6347 §4.2.1): handshake record, DTLS 1.0 in the record and
    // in server_version, the ClientHello's record sequence number, a 20-byte cookie.
    assert_eq!(verify.bytes[0], 22);
    assert_eq!(verify.bytes[1..3], [0xfe, 0xff]);
    assert_eq!(verify.bytes[5..11], hello[5..11]);
    assert_eq!(verify.bytes[13], 3);
    assert_eq!(verify.bytes[25..27], [0xfe, 0xff]);
    assert_eq!(verify.bytes[27], 20);
    assert_eq!(verify.bytes.len(), 13 + 12 + 3 + 20);
    assert_eq!((server.session_count(), server.handshake_count()), (0, 0));
    assert_eq!(server.poll_timeout(), None, "no timer either");
    // The same hello from another port gets another cookie.
    server.handle_datagram(now, peer(1), &hello);
    assert_ne!(
        server.poll_transmit().unwrap().bytes[28..],
        verify.bytes[28..]
    );
}

#[test]
fn a_forged_cookie_gets_a_new_hello_verify_request_and_no_state() {
    let now = Instant::now();
    let mut server = server(ServerConfig::default());
    let mut client = client(now);
    let hello = client.poll_transmit().unwrap();
    server.handle_datagram(now, peer(0), &hello);
    let verify = server.poll_transmit().unwrap();
    client.handle_datagram(now, &verify.bytes);
    let with_cookie = client.poll_transmit().unwrap();
    // The cookie returned from another address, then with one bit flipped.
    server.handle_datagram(now, peer(1), &with_cookie);
    let cookie_at = 13 + 12 + 2 + 32 + 1 + 1;
    let mut forged = with_cookie.clone();
    forged[cookie_at] ^= 1;
    server.handle_datagram(now, peer(0), &forged);
    assert_eq!((server.session_count(), server.handshake_count()), (0, 0));
    assert_eq!(server.counters().cookies_rejected, 2);
    assert_eq!(server.counters().hello_verify_requests, 3);
    // The genuine one opens the handshake, which completes.
    while server.poll_transmit().is_some() {}
    server.handle_datagram(now, peer(0), &with_cookie);
    assert_eq!(server.handshake_count(), 1);
    pump(now, &mut server, &mut client, peer(0));
    assert!(client.is_established());
}

#[test]
fn a_flood_of_client_hellos_creates_no_state() {
    let now = Instant::now();
    let mut server = server(ServerConfig {
        max_handshakes: 16,
        ..ServerConfig::default()
    });
    let hello = client(now).poll_transmit().unwrap();
    for i in 0..5000u32 {
        let from = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 5683));
        server.handle_datagram(now, from, &hello);
        assert!(server.poll_transmit().is_some());
    }
    assert_eq!((server.session_count(), server.handshake_count()), (0, 0));
    assert_eq!(server.counters().hello_verify_requests, 5000);
    let mut client = client(now);
    pump(now, &mut server, &mut client, peer(0));
    assert!(client.is_established());
    // The session's accounting includes the cookie exchange that preceded it: both sides
    // count the same handshake datagrams and bytes.
    let (ours, theirs) = (server.session(peer(0)).unwrap().stats, client.stats());
    assert_eq!(ours.sent.handshake, theirs.received.handshake);
    assert_eq!(ours.received.handshake, theirs.sent.handshake);
    assert_eq!(
        (ours.datagrams_sent, ours.datagrams_received),
        (theirs.datagrams_received, theirs.datagrams_sent)
    );
}

#[test]
fn a_spoofed_client_hello_leaves_the_established_session_alone() {
    let now = Instant::now();
    let mut server = server(ServerConfig::default());
    let mut client = client(now);
    pump(now, &mut server, &mut client, peer(0));
    assert!(client.is_established());
    let session = server.session(peer(0)).unwrap().session;
    // Someone else's ClientHello, from the client's address.
    let spoofed = self::client(now).poll_transmit().unwrap();
    server.handle_datagram(now, peer(0), &spoofed);
    // Its HelloVerifyRequest goes to the real client, which has no use for it.
    let verify = server.poll_transmit().unwrap();
    client.handle_datagram(now, &verify.bytes);
    while client.poll_transmit().is_some() {}
    let info = server.session(peer(0)).unwrap();
    assert!(info.established);
    assert_eq!(info.session, session);
    assert_eq!(server.counters().sessions_replaced, 0);
    client.send(now, b"still here").unwrap();
    pump(now, &mut server, &mut client, peer(0));
    let seen = events(&mut server);
    assert!(
        seen.iter().any(
            |e| matches!(e, ServerEvent::Datagram { payload, .. } if payload == b"still here")
        ),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|e| matches!(e, ServerEvent::Closed { .. })),
        "{seen:?}"
    );
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

/// The first datagram of a C client built on Debian's mbedTLS 2.28 (issue #10): its record
/// version is `{254, 0}`.
const MBEDTLS_HELLO: &str = "16fe00000000000000000000dc010000d000000000000000d0fefd6b1497fed4e9062f4c3f6dcde707fa46dc96d241932acad570a6d5418adbfb8a0000004cccacccad00abc0a7c03800b3c0360091c091c09bc097c0ab00aac0a6c03700b2c0350090c090c096c09ac0aaccab00a9c0a500af008dc08fc095c0a900a8c0a400ae008cc08ec094c0a800ff0100005a0000000e000c0000093132372e302e302e31000d0012001006030601050305010403040103030301000a001c001a0019001c0018001b00170016001a0015001400130012001d001e000b00020100001600000017000000230000";

#[test]
fn the_mbedtls_hello_with_record_version_fe00_opens_a_handshake() {
    let now = Instant::now();
    let mut server = server(ServerConfig::default());
    let hello = hex::decode(MBEDTLS_HELLO).unwrap();
    server.handle_datagram(now, peer(0), &hello);
    let verify = server.poll_transmit().unwrap().bytes;
    assert_eq!(lwm2m_dtls::record::describe(&verify), "HelloVerifyRequest");
    let cookie = verify[28..].to_vec();
    assert_eq!(cookie.len(), 20);

    // What mbedTLS sends next: the same hello with the cookie, message_seq 1, record 1,
    // the record version still {254, 0}.
    let mut again = hello[..13 + 12 + 2 + 32 + 1].to_vec();
    again.push(cookie.len() as u8);
    again.extend_from_slice(&cookie);
    again.extend_from_slice(&hello[13 + 12 + 2 + 32 + 1 + 1..]);
    let body = (again.len() - 13 - 12) as u32;
    again[10] = 1;
    let record = (again.len() - 13) as u16;
    again[11..13].copy_from_slice(&record.to_be_bytes());
    again[14..17].copy_from_slice(&body.to_be_bytes()[1..]);
    again[17..19].copy_from_slice(&[0, 1]);
    again[22..25].copy_from_slice(&body.to_be_bytes()[1..]);
    server.handle_datagram(now, peer(0), &again);
    assert_eq!(server.handshake_count(), 1);
    let flight = server.poll_transmit().unwrap().bytes;
    // PSK: ServerHello (message_seq 1, after the HelloVerifyRequest) and ServerHelloDone.
    assert_eq!(
        lwm2m_dtls::record::describe(&flight),
        "ServerHello, ServerHelloDone"
    );
    assert_eq!(flight[13 + 4..13 + 6], [0, 1]);
}

#[test]
fn a_repeated_hello_with_cookie_keeps_its_handshake() {
    let start = Instant::now();
    let mut server = server(ServerConfig::default());
    let mut client = client(start);
    exchange_cookie(start, &mut server, &mut client, peer(0));
    let session = server.session(peer(0)).unwrap().session;
    // The client's retransmission timer fires: the same ClientHello with the cookie again.
    let later = start + Duration::from_secs(2);
    client.handle_timeout(later);
    let again = client.poll_transmit().unwrap();
    assert_eq!(lwm2m_dtls::record::describe(&again), "ClientHello");
    server.handle_datagram(later, peer(0), &again);
    assert_eq!(server.session(peer(0)).unwrap().session, session);
    assert_eq!(server.counters().handshakes_started, 1);
    // The session repeats its flight at once (RFC 6347 §4.2.4).
    let flight = server.poll_transmit().unwrap();
    client.handle_datagram(later, &flight.bytes);
    pump(later, &mut server, &mut client, peer(0));
    assert!(client.is_established());
    assert!(server.session(peer(0)).unwrap().established);
}

#[test]
fn a_handshake_survives_losing_the_server_flight_twice() {
    let start = Instant::now();
    let mut server = server(ServerConfig::default());
    let mut client = client(start);
    exchange_cookie(start, &mut server, &mut client, peer(0));
    // Both sides' timers fire and their datagrams cross; the server's flight is lost again.
    let mut now = start;
    for _ in 0..2 {
        now += Duration::from_millis(1100);
        server.handle_timeout(now);
        while server.poll_transmit().is_some() {}
        client.handle_timeout(now);
        while let Some(bytes) = client.poll_transmit() {
            server.handle_datagram(now, peer(0), &bytes);
        }
        while server.poll_transmit().is_some() {}
    }
    // Then the network recovers: the next timers complete the handshake.
    for _ in 0..3 {
        now += Duration::from_millis(1100);
        server.handle_timeout(now);
        client.handle_timeout(now);
        pump(now, &mut server, &mut client, peer(0));
    }
    assert!(client.is_established());
    assert!(server.session(peer(0)).unwrap().established);
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes from anyone: no panic, and no session unless a cookie verified (which
        /// random bytes cannot do).
        #[test]
        fn arbitrary_datagrams(datagrams in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..300), 1..8)
        ) {
            let now = Instant::now();
            let mut server = server(ServerConfig::default());
            for bytes in &datagrams {
                server.handle_datagram(now, peer(0), bytes);
            }
            prop_assert_eq!(server.session_count(), 0);
            server.handle_timeout(now + Duration::from_secs(20));
        }

        /// A real ClientHello (with and without its cookie) with bytes flipped: no panic,
        /// and only an intact ClientHello with its cookie opens a handshake.
        #[test]
        fn mutated_client_hellos(flips in proptest::collection::vec((any::<usize>(), 1..=255u8), 1..4)) {
            let now = Instant::now();
            let mut server = server(ServerConfig::default());
            let mut client = client(now);
            let hello = client.poll_transmit().unwrap();
            server.handle_datagram(now, peer(0), &hello);
            let verify = server.poll_transmit().unwrap();
            client.handle_datagram(now, &verify.bytes);
            let with_cookie = client.poll_transmit().unwrap();
            for original in [&hello, &with_cookie] {
                let mut bytes = original.clone();
                for (at, mask) in &flips {
                    let i = at % bytes.len();
                    bytes[i] ^= mask;
                }
                server.handle_datagram(now, peer(0), &bytes);
            }
            // Flipping only record-header bytes (version, sequence number) keeps the
            // ClientHello valid; anything else in the hello invalidates the cookie.
            let header_only = flips.iter().all(|(at, _)| {
                let i = at % with_cookie.len();
                (1..3).contains(&i) || (5..11).contains(&i)
            });
            if !header_only {
                prop_assert_eq!(server.counters().handshakes_started, 0);
            }
        }
    }
}
