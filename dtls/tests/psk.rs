//! Our client against our server over loopback UDP with PSK (TLS_PSK_WITH_AES_128_CCM_8).
#![allow(clippy::unwrap_used)] // test fixtures: a failure is the test failing

mod common;

use std::collections::HashSet;

use common::{KNOWN, psk_table, spawn_echo_server, wait_for};
use lwm2m_dtls::record::CCM_8_RECORD_OVERHEAD;
use lwm2m_dtls::{
    ClientConfig, CloseReason, DtlsError, FailureReason, Identity, ServerEvent, UdpDtlsClient,
};

fn known(index: usize) -> ClientConfig {
    let (identity, key) = KNOWN[index];
    ClientConfig::psk(identity.as_bytes(), key.as_bytes()).unwrap()
}

#[tokio::test]
async fn handshake_and_echo_report_identity_and_wire_bytes() {
    let (server, mut events) = spawn_echo_server(psk_table());
    let mut client = UdpDtlsClient::connect(server, &known(0)).await.unwrap();
    let local = client.local_addr().unwrap();
    let identity = wait_for(&mut events, |e| match e {
        ServerEvent::Established { peer, identity, .. } if peer.port() == local.port() => {
            Some(identity.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(identity, Identity::Psk(KNOWN[0].0.as_bytes().into()));

    client.send(b"hello").await.unwrap();
    assert_eq!(
        client.recv().await.unwrap(),
        b"urn:imei:490154203237518|hello"
    );

    let stats = *client.stats();
    // One record each way: 5 bytes out, 30 bytes back, 29 bytes of CCM_8 record overhead each.
    assert_eq!(
        (
            stats.sent.application_records,
            stats.received.application_records
        ),
        (1, 1)
    );
    assert_eq!(stats.payload_bytes(), 35);
    assert_eq!(stats.record_overhead(), 2 * CCM_8_RECORD_OVERHEAD as u64);
    // The PSK handshake with cookie exchange: 6 datagrams, a bit under 600 bytes.
    assert!(
        stats.handshake_bytes() > 400 && stats.handshake_bytes() < 800,
        "{stats:?}"
    );
    assert_eq!(stats.datagrams_sent + stats.datagrams_received, 6 + 2);
}

#[tokio::test]
async fn wrong_key_and_unknown_identity_fail_without_touching_other_sessions() {
    let (server, mut events) = spawn_echo_server(psk_table());
    let mut good = UdpDtlsClient::connect(server, &known(1)).await.unwrap();

    let wrong_key = ClientConfig::psk(KNOWN[0].0.as_bytes(), b"not the key").unwrap();
    let error = UdpDtlsClient::connect(server, &wrong_key)
        .await
        .unwrap_err();
    assert!(matches!(error, DtlsError::Handshake { .. }), "{error}");
    let (identity, reason) = wait_for(&mut events, |e| match e {
        ServerEvent::HandshakeFailed {
            identity, reason, ..
        } => Some((identity.clone(), reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!(identity, Some(Identity::Psk(KNOWN[0].0.as_bytes().into())));
    assert_eq!(reason, FailureReason::WrongKey);

    let stranger = ClientConfig::psk(b"stranger", b"whatever").unwrap();
    let error = UdpDtlsClient::connect(server, &stranger).await.unwrap_err();
    let DtlsError::Handshake { reason, .. } = error else {
        panic!("{error}")
    };
    assert_eq!(reason, FailureReason::PeerAlert(Some(80)), "internal_error");
    let (identity, reason) = wait_for(&mut events, |e| match e {
        ServerEvent::HandshakeFailed {
            identity, reason, ..
        } => Some((identity.clone(), reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!(identity, Some(Identity::Psk(b"stranger"[..].into())));
    assert_eq!(reason, FailureReason::UnknownIdentity);

    good.send(b"still here").await.unwrap();
    assert_eq!(good.recv().await.unwrap(), b"device-2|still here");
}

#[tokio::test]
async fn a_client_reconnecting_from_the_same_port_gets_a_new_session() {
    let (server, mut events) = spawn_echo_server(psk_table());
    let mut first = UdpDtlsClient::connect(server, &known(0)).await.unwrap();
    first.send(b"one").await.unwrap();
    first.recv().await.unwrap();
    let old = wait_for(&mut events, |e| match e {
        ServerEvent::Established { session, .. } => Some(*session),
        _ => None,
    })
    .await;

    // The "rebooted" device comes back from the same address and port, without close_notify.
    let socket = first.into_socket();
    let mut second = UdpDtlsClient::connect_with(socket, server, &known(0))
        .await
        .unwrap();
    let (replaced, reason) = wait_for(&mut events, |e| match e {
        ServerEvent::Closed {
            session, reason, ..
        } => Some((*session, reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!((replaced, reason), (old, CloseReason::Replaced));
    let new = wait_for(&mut events, |e| match e {
        ServerEvent::Established { session, .. } => Some(*session),
        _ => None,
    })
    .await;
    assert_ne!(new, old);
    second.send(b"two").await.unwrap();
    assert_eq!(
        second.recv().await.unwrap(),
        b"urn:imei:490154203237518|two"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_concurrent_clients_handshake_and_echo() {
    const CLIENTS: usize = 250;
    let (server, mut events) = spawn_echo_server(psk_table());
    let config = known(1);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let config = config.clone();
            tokio::spawn(async move {
                let mut client = UdpDtlsClient::connect(server, &config).await?;
                let message = format!("client {i}");
                client.send(message.as_bytes()).await?;
                let answer = client.recv().await?;
                assert_eq!(answer, format!("device-2|{message}").into_bytes());
                Ok::<_, DtlsError>(client.local_addr()?)
            })
        })
        .collect();
    let mut peers = HashSet::new();
    for task in tasks {
        peers.insert(task.await.unwrap().unwrap().port());
    }
    assert_eq!(peers.len(), CLIENTS);
    let mut established = 0;
    while established < CLIENTS {
        wait_for(&mut events, |e| {
            matches!(e, ServerEvent::Established { .. }).then_some(())
        })
        .await;
        established += 1;
    }
}
