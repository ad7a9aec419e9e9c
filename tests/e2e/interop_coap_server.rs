//! Our simulated client against an independently written DTLS stack: a fleet client with a
//! PSK account (Security mode 0, `coaps://`) completes a handshake with libcoap's
//! `coap-server-openssl` and `coap-server-gnutls` (Debian `libcoap3-bin`) and its Register
//! arrives decrypted. libcoap's example server is no LwM2M Server: it answers the Register
//! 4.04 (no `rd` resource), which the client counts as a failed registration — what matters
//! here is that both DTLS stacks agree on every byte of the handshake and the records.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Stdio;
use std::time::Duration;

use lwm2m_proto::{ResourceValue, Value};
use lwm2m_simulator::fleet::Targets;
use lwm2m_simulator::network::NetworkModel;

use crate::dtls_fleet::PROFILE;
use crate::fleet_support::{counters_until, path, profile, start_fleet};

/// A port P such that P (libcoap's CoAP) and P + 1 (its CoAPS) are free on 127.0.0.1, for
/// UDP and TCP (libcoap binds both).
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

async fn simulated_client_handshakes_with(binary: &str) {
    assert!(
        std::process::Command::new(binary)
            .arg("-h")
            .output()
            .is_ok(),
        "{binary} is missing: install it with `apt-get install libcoap3-bin`"
    );
    let key = b"sim-peer-secret";
    let port = free_port_pair();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut server = tokio::process::Command::new(binary)
        .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-v", "7", "-k"])
        .arg(std::str::from_utf8(key).unwrap())
        .stdout(Stdio::from(log.reopen().unwrap()))
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let coaps: SocketAddr = ([127, 0, 0, 1], port + 1).into();
    // libcoap accepts any identity for its one key (-k); ours is the endpoint name.
    let fleet = start_fleet(
        &[(&profile(PROFILE), 1)],
        Targets {
            server: Some(coaps),
            bootstrap: None,
        },
        &NetworkModel::default(),
        |spec| {
            spec.tree
                .set(
                    &path("/0/0/5"),
                    ResourceValue::Single(Value::Opaque(key.to_vec())),
                )
                .unwrap();
        },
    );
    // The server may still be starting: the client's CoAP retransmissions open new
    // handshakes until one gets through.
    let done = counters_until(&fleet, "the Register answered over DTLS", |c| {
        c.failures >= 1 && c.datagrams_in >= 3
    })
    .await;
    fleet.stop(Duration::from_millis(100)).await.unwrap();
    let _ = server.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), server.wait()).await;
    let seen = std::fs::read_to_string(log.path()).unwrap();
    assert!(done.dtls_handshakes >= 1, "{done:?}");
    assert_eq!(done.registrations, 0, "{done:?}");
    let register = seen
        .lines()
        .find(|l| l.starts_with("v:1 t:CON c:POST") && l.contains("Uri-Path:rd"))
        .unwrap_or_else(|| panic!("{binary} logged no decrypted Register:\n{seen}"));
    assert!(register.contains("Uri-Query:ep=sec-0"), "{register}");
    assert!(register.contains("</3/0>"), "{register}");
    // Its answer, through the session, is what the client counted as a failed Register.
    assert!(
        seen.contains("unknown resource 'rd', return 4.04"),
        "{seen}"
    );
}

#[tokio::test]
async fn simulated_client_handshakes_with_coap_server_openssl() {
    simulated_client_handshakes_with("coap-server-openssl").await;
}

#[tokio::test]
async fn simulated_client_handshakes_with_coap_server_gnutls() {
    simulated_client_handshakes_with("coap-server-gnutls").await;
}
