//! The simulator's network models against our LwM2M Server, checked on the wire: a NAT
//! that forgets the client between Updates, and a queue-mode client whose radio follows a
//! sleep schedule.
// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lwm2m_proto::coap::RequestType;
use lwm2m_proto::server::{OpError, Operation, ServerEvent};
use lwm2m_server::driver::DriverError;
use lwm2m_server::events::Direction;
use lwm2m_simulator::network::NetworkModel;

use crate::fleet_support::{Stack, counters_until, ms, path, profile, quick_server, start_fleet};

fn device(name: &str, lifetime: u32, queue: bool) -> lwm2m_simulator::profile::Profile {
    profile(&format!(
        "\
name: {name}
lwm2m_version: \"1.1\"
queue_mode: {queue}
lifetime: {lifetime}s
endpoint_prefix: {name}-
preferred_format: senml-cbor
supported_formats: [senml-cbor, tlv, text]
objects:
  0:
    instances:
      0: {{ 0: coap://localhost:5683, 1: false, 2: 3, 3: \"\", 4: \"\", 5: \"\", 10: 1 }}
  1:
    instances:
      0: {{ 0: 1, 1: {lifetime}, 6: false, 7: U }}
  3:
    instances:
      0: {{ 0: Netsim, 11: [0], 16: U }}
"
    ))
}

fn read_manufacturer() -> Operation {
    Operation::Read {
        path: path("/3/0/0"),
        format: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reaches_a_rebound_client_only_after_its_next_message() {
    // Retransmissions after 200-300 ms and once more: a lost request fails within ~1 s.
    let stack = Stack::start(quick_server(), None).await;
    // Lifetime 4 s: the Update comes 3 s after Register; the NAT forgets after 1 s idle.
    let network = NetworkModel::from_yaml("nat.yaml", "nat: { idle_timeout: 1s }\n").unwrap();
    let handle = start_fleet(
        &[(&device("nat", 4, false), 1)],
        stack.targets(),
        &network,
        |_| {},
    );
    let id = stack.registered("nat-0", 1).await;
    let register = stack.wire.incoming(RequestType::Post, "/rd").remove(0);
    let old = register.peer;

    // Time passes in the model (not a wait for a condition): the mapping is gone 1 s after
    // the client's last datagram, the Register.
    tokio::time::sleep_until((register.at + Duration::from_millis(1200)).into()).await;
    let sent = Instant::now();
    let lost = stack.server.request("nat-0", read_manufacturer()).await;
    let failed = Instant::now();
    match lost {
        Err(DriverError::Op(OpError::Exchange { address, .. })) => assert_eq!(address, old),
        other => panic!("a request to the forgotten mapping must time out: {other:?}"),
    }
    let gets = stack.wire.outgoing(RequestType::Get, "/3/0/0");
    assert_eq!(gets.len(), 2, "sent and retransmitted once");
    assert!(gets.iter().all(|g| g.peer == old && g.at >= sent));
    assert!(gets.iter().all(|g| stack.wire.answers(g).is_empty()));
    counters_until(&handle, "NAT drops", |c| c.dropped_nat >= 2).await;

    // The next Update leaves from a new address; the server follows it (Core TS 1.1
    // §6.2.2) and then reaches the client there.
    let moved = stack
        .wait_server(1, "Update from a new address", |e| {
            matches!(
                e,
                ServerEvent::Updated {
                    previous_address: Some(_),
                    ..
                }
            )
        })
        .await;
    let ServerEvent::Updated {
        registration,
        previous_address,
        ..
    } = &moved[0].1
    else {
        unreachable!()
    };
    assert_eq!(*previous_address, Some(old));
    let new = registration.address;
    assert_ne!(new, old);
    let update = stack
        .wire
        .incoming(RequestType::Post, &format!("/rd/{id}"))
        .remove(0);
    assert_eq!(update.peer, new);
    assert!(
        update.at > failed,
        "the failure came before the client spoke again"
    );
    let period = ms(register.at, update.at);
    assert!(
        (2900..3400).contains(&period),
        "Update {period} ms after Register"
    );
    let r = stack.op("nat-0", read_manufacturer()).await;
    assert_eq!(r.code, (2, 5));
    let gets = stack.wire.outgoing(RequestType::Get, "/3/0/0");
    assert_eq!(gets.len(), 3);
    assert_eq!(gets[2].peer, new);
    assert!(gets[2].at > update.at);
    assert_eq!(stack.wire.answers(&gets[2])[0].code(), (2, 5));
    assert_eq!(handle.total().rebinds, 1);
    handle.stop(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_requests_wait_for_the_awake_window() {
    // Our server holds requests for a queue-mode client from 300 ms after its last message
    // until it speaks again (Core TS 1.1 §6.5).
    let mut config = quick_server();
    config.awake_time = Duration::from_millis(300);
    let stack = Stack::start(config, None).await;
    // The radio is on for the first 500 ms of every 2 s; each window opens with an Update.
    let network =
        NetworkModel::from_yaml("sleepy.yaml", "sleep: { awake: 500ms, period: 2s }\n").unwrap();
    let handle = start_fleet(
        &[(&device("q", 60, true), 1)],
        stack.targets(),
        &network,
        |_| {},
    );
    let id = stack.registered("q-0", 1).await;
    let register = stack.wire.incoming(RequestType::Post, "/rd").remove(0);
    assert!(
        register.queries().iter().any(|q| q == "Q"),
        "{:?}",
        register.queries()
    );
    stack
        .wait_server(
            1,
            "asleep for the server",
            |e| matches!(e, ServerEvent::Sleeping { endpoint } if endpoint == "q-0"),
        )
        .await;

    // Three requests while the client sleeps: none goes out until its next window.
    let asked = Instant::now();
    let ops = (0..3).map(|_| {
        let server = stack.server.clone();
        tokio::spawn(async move { server.request("q-0", read_manufacturer()).await })
    });
    let ops: Vec<_> = ops.collect();
    for op in ops {
        let r = tokio::time::timeout(Duration::from_secs(10), op)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.code, (2, 5));
    }
    let update = stack
        .wire
        .incoming(RequestType::Post, &format!("/rd/{id}"))
        .remove(0);
    let window = ms(register.at, update.at);
    assert!(
        (1900..2300).contains(&window),
        "window opened {window} ms after Register"
    );
    let gets = stack.wire.outgoing(RequestType::Get, "/3/0/0");
    assert_eq!(gets.len(), 3, "each delivered once");
    for g in &gets {
        assert!(g.at > asked && g.at >= update.at, "held until the Update");
        let into = ms(update.at, g.at);
        assert!(into < 500, "delivered {into} ms into the 500 ms window");
        assert_eq!(stack.wire.answers(g)[0].code(), (2, 5));
    }
    let awake = stack
        .wait_server(
            1,
            "awake again",
            |e| matches!(e, ServerEvent::Awake { endpoint } if endpoint == "q-0"),
        )
        .await;
    assert!(awake[0].0 >= update.at);
    // Nothing was sent into the radio silence.
    let c = handle.total();
    assert_eq!(c.dropped_asleep, 0, "{c:?}");
    assert_eq!(c.requests_served, 3, "{c:?}");
    let in_silence = stack
        .wire
        .find(|f| f.direction == Direction::Out && f.method().is_some() && f.at < update.at);
    assert!(in_silence.is_empty(), "{in_silence:?}");
    handle.stop(Duration::from_secs(5)).await.unwrap();
}
