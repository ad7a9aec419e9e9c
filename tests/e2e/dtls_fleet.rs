//! Simulated fleet clients with PSK Security objects (mode 0, `coaps://`) against our
//! server's DTLS listener on loopback: many clients handshaking and registering at once
//! (one of them with a wrong key, which fails alone), a NAT rebinding that forces a new
//! handshake before the Update gets through (no Connection ID), and a reboot that opens a
//! new session from the same address.

use std::time::{Duration, Instant};

use lwm2m_proto::server::{Operation, ServerEvent};
use lwm2m_proto::{ResourceValue, Value};
use lwm2m_server::events::{Event, SecurityEvent};
use lwm2m_simulator::fleet::{ClientSpec, FleetHandle, Selector, Targets};
use lwm2m_simulator::network::NetworkModel;

use crate::dtls_server::{Secure, provision, psk_of};
use crate::fleet_support::{counters_until, path, profile, start_fleet};

/// A 1.1 PSK client (`coaps://`, mode 0); identity and key are set per client.
pub const PROFILE: &str = "\
name: dtls
lwm2m_version: \"1.1\"
lifetime: 5m
endpoint_prefix: sec-
preferred_format: senml-cbor
supported_formats: [senml-cbor, tlv, text]
objects:
  0:
    instances:
      0: { 0: coaps://localhost:5684, 1: false, 2: 0, 3: \"\", 4: \"\", 5: \"\", 10: 1 }
  1:
    instances:
      0: { 0: 1, 1: 300, 6: false, 7: U }
  3:
    instances:
      0: { 0: Acme, 1: M1 }
";

/// Sets the client's PSK identity (/0/0/3) and key (/0/0/5) to [`psk_of`] its name, the
/// key broken for the names in `wrong`.
fn credentials(spec: &mut ClientSpec, wrong: &[&str]) {
    let ep = spec.config.endpoint.clone();
    let (identity, mut key) = psk_of(&ep);
    if wrong.contains(&ep.as_str()) {
        key[0] ^= 1;
    }
    spec.config.reboot_silence = Duration::from_millis(200);
    for (r, v) in [("/0/0/3", identity.into_bytes()), ("/0/0/5", key)] {
        spec.tree
            .set(&path(r), ResourceValue::Single(Value::Opaque(v)))
            .unwrap();
    }
}

async fn fleet(n: usize, wrong: &'static [&'static str]) -> (Secure, FleetHandle) {
    let names: Vec<String> = (0..n).map(|k| format!("sec-{k}")).collect();
    let s = Secure::start(&[]).await;
    for ep in &names {
        provision(&s.security, ep);
    }
    let targets = Targets {
        server: Some(s.dtls),
        bootstrap: None,
    };
    let fleet = start_fleet(
        &[(&profile(PROFILE), n)],
        targets,
        &NetworkModel::default(),
        |spec| credentials(spec, wrong),
    );
    (s, fleet)
}

/// 1,000 PSK clients handshake and register at once; the one with a wrong key fails its
/// handshake and stays out, the others are unaffected; every datagram on the server's
/// socket is a DTLS record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_psk_clients_register_over_dtls() {
    let n = 1000;
    let started = Instant::now();
    let (mut s, fleet) = fleet(n, &["sec-7"]).await;
    let c = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let c = fleet.total();
            if c.clients_registered as usize == n - 1 && c.dtls_failures >= 1 {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not all registered: {:?}", fleet.total()));
    let took = started.elapsed();
    eprintln!(
        "{} DTLS clients handshaked and registered in {took:?} ({:.0}/s); {} handshakes",
        n - 1,
        (n - 1) as f64 / took.as_secs_f64(),
        c.dtls_handshakes
    );
    assert_eq!(s.server.registrations().len(), n - 1);
    assert!(s.server.registrations().get("sec-7").is_none());
    let failed = s
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
    assert_eq!(failed, (Some("psk:id-sec-7".into()), "WrongKey".into()));
    let wire = s.tap.0.lock().unwrap().clone();
    let odd: Vec<_> = wire
        .iter()
        .filter(|(_, local, b)| *local != s.dtls || ![20, 21, 22, 23].contains(b))
        .collect();
    assert!(odd.is_empty(), "not DTLS records: {odd:?}");
    fleet.stop(Duration::from_secs(5)).await.unwrap();
    s.server.shutdown().await;
}

async fn updated_from_new_address(s: &mut Secure) {
    s.expect("update from the new address", |e| match e {
        Event::Server(ServerEvent::Updated {
            previous_address: Some(_),
            ..
        }) => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test]
async fn nat_rebinding_means_a_new_handshake_then_the_update() {
    let (mut s, fleet) = fleet(1, &[]).await;
    counters_until(&fleet, "registered", |c| c.clients_registered == 1).await;
    fleet.expire_nat(Selector::All).unwrap();
    fleet.trigger_update(Selector::All).unwrap();
    updated_from_new_address(&mut s).await;
    let c = counters_until(&fleet, "updated", |c| c.updates == 1).await;
    assert_eq!((c.rebinds, c.dtls_handshakes), (1, 2), "{c:?}");
    fleet.stop(Duration::from_secs(5)).await.unwrap();
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_rebooted_client_comes_back_with_a_new_session_from_the_same_address() {
    let (mut s, fleet) = fleet(1, &[]).await;
    counters_until(&fleet, "registered", |c| c.clients_registered == 1).await;
    let before = fleet.clients().await.unwrap()[0].address;
    let reboot = s
        .server
        .request(
            "sec-0",
            Operation::Execute {
                path: path("/3/0/4"),
                args: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(reboot.code, (2, 4));
    let reason = s
        .expect("old session replaced", |e| match e {
            Event::Security(_, SecurityEvent::Closed { reason, .. }) => Some(format!("{reason:?}")),
            _ => None,
        })
        .await;
    assert_eq!(reason, "Replaced");
    let c = counters_until(&fleet, "registered again", |c| c.registrations == 2).await;
    assert_eq!(c.dtls_handshakes, 2);
    assert_eq!(fleet.clients().await.unwrap()[0].address, before);
    fleet.stop(Duration::from_secs(5)).await.unwrap();
    s.server.shutdown().await;
}

/// A server that lost its DTLS sessions (restarted on the same port) silently drops the
/// client's records; the client's Update fails (CoAP gives up), so it handshakes again and
/// its Register reaches the new server, as devices do.
#[tokio::test]
async fn a_server_restart_costs_a_failed_update_and_a_new_handshake() {
    let (s, fleet) = {
        let names = ["sec-0"];
        let s = Secure::start(&names).await;
        let targets = Targets {
            server: Some(s.dtls),
            bootstrap: None,
        };
        let fleet = start_fleet(
            &[(&profile(PROFILE), 1)],
            targets,
            &NetworkModel::default(),
            |spec| {
                credentials(spec, &[]);
                // Give up on an unanswered request after 0.2 + 0.4 + 0.8 s.
                spec.config.coap.ack_timeout = Duration::from_millis(200);
                spec.config.coap.ack_random_factor = 1.0;
                spec.config.coap.max_retransmit = 2;
            },
        );
        (s, fleet)
    };
    counters_until(&fleet, "registered", |c| c.clients_registered == 1).await;
    let (dtls, security) = (s.dtls, s.security.clone());
    s.server.shutdown().await;
    let mut restarted = Secure::start_on(dtls, security).await;
    fleet.trigger_update(Selector::All).unwrap();
    restarted
        .expect("registered with the restarted server", |e| match e {
            Event::Server(ServerEvent::Registered { registration, .. })
                if registration.endpoint == "sec-0" =>
            {
                Some(())
            }
            _ => None,
        })
        .await;
    let c = counters_until(&fleet, "registered again", |c| c.registrations == 2).await;
    assert_eq!((c.failures, c.dtls_handshakes), (1, 2), "{c:?}");
    fleet.stop(Duration::from_secs(5)).await.unwrap();
    restarted.server.shutdown().await;
}
