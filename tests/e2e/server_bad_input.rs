//! Bad input at scale: 100,000 random and mutated datagrams (valid CoAP with wrong LwM2M
//! content, broken CoAP, truncated messages, datagrams up to the 64 KiB UDP limit) from
//! several loopback addresses, at the LwM2M Server and the Bootstrap Server, while 100
//! simulated clients register and are read and written. Afterwards the server still
//! answers, every normal operation succeeded, and the persisted stores are unchanged.
//! Seeded (`FUZZ_SEED`, default below) so that a failure repeats.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lwm2m_proto::bootstrap::BootstrapConfig;
use lwm2m_proto::client::ClientEvent;
use lwm2m_proto::coap::message::{self, add_query, set_option, uint_bytes};
use lwm2m_proto::coap::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{Content, Operation, ServerConfig};
use lwm2m_proto::{Lwm2mPath, Node, ResourceValue, Value};
use lwm2m_server::ServerHandle;
use lwm2m_server::store::{
    BootstrapDoc, BootstrapStore, ConfigKey, Credentials, FileBootstrapStore, FileSecurityStore,
    SecurityInfo, SecurityStore,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use crate::server_support::{Servers, Setup, SimClient, client_config, device_tree};

/// Datagrams sent in all.
const DATAGRAMS: usize = 100_000;
/// Sending sockets, each on its own loopback address (127.0.0.2 to 127.0.0.6; each normal
/// client has one of its own, 127.0.1.x).
const FUZZERS: usize = 5;
/// Registrations the server holds from one address: the fuzzers' Registers (`fz-N`) go
/// beyond it and are refused, so what the flood leaves in memory is bounded.
const PER_ADDRESS: usize = 20;
/// Normal clients.
const CLIENTS: usize = 100;
/// The whole test must end within this.
const BUDGET: Duration = Duration::from_secs(150);
/// The largest UDP payload over IPv4.
const UDP_MAX: usize = 65_507;

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6c77_6d32_6261_6421)
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn random_bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random()).collect()
}

/// Up to `max` random bytes.
fn some_bytes(rng: &mut ChaCha8Rng, max: usize) -> Vec<u8> {
    let len = rng.random_range(0..=max);
    random_bytes(rng, len)
}

fn random_text(rng: &mut ChaCha8Rng, max: usize) -> String {
    let len = rng.random_range(0..=max);
    (0..len)
        .map(|_| char::from(rng.random_range(0x20u8..0x7f)))
        .collect()
}

/// A valid CoAP message whose LwM2M content is wrong (or a message the LwM2M layer must
/// ignore): Registers, Updates, De-registers and Sends with bad queries, payloads and
/// formats, requests on paths the server does not serve, stray responses, block options.
/// The endpoint names all start with `fz-`, so they never touch the normal clients.
fn wrong_lwm2m(rng: &mut ChaCha8Rng, n: usize) -> Packet {
    let methods = [
        RequestType::Get,
        RequestType::Post,
        RequestType::Put,
        RequestType::Delete,
        RequestType::Fetch,
        RequestType::Patch,
        RequestType::IPatch,
    ];
    let queries: [&str; 14] = [
        "ep=",
        "lt=-5",
        "lt=abc",
        "lt=99999999999",
        "lwm2m=0.9",
        "lwm2m=1.1",
        "lwm2m=1.0",
        "b=X",
        "b=UQ",
        "Q",
        "sms=",
        "pct=11543",
        "ep=fz-dup",
        "=",
    ];
    let payloads: [&[u8]; 10] = [
        b"</3/0",
        b"<<>>",
        b"</0/0>,</1/x>",
        b"</3/0>",
        b"[{\"n\":",
        b"[{\"bn\":\"/3/0/\",\"n\":\"0\",\"vs\":1}]",
        b"\xa1\x00\x00",
        b"\xff\xff\xff",
        b"",
        b"</>;rt=\"oma.lwm2m\";ct=\"1 2 x\",</65536/0>",
    ];
    let formats = [0u32, 40, 42, 60, 110, 112, 1542, 11542, 11543, 11544, 65535];
    let mut packet = match rng.random_range(0..8) {
        0 => {
            let mut p = message::request(RequestType::Post, "/rd");
            if rng.random_bool(0.7) {
                add_query(&mut p, &format!("ep=fz-{n}"));
            }
            p
        }
        1 => {
            let id = random_text(rng, 10).replace('/', "");
            message::request(RequestType::Post, &format!("/rd/{id}"))
        }
        2 => message::request(RequestType::Delete, &format!("/rd/{}", random_text(rng, 8))),
        3 => message::request(RequestType::Post, "/dp"),
        4 => {
            let mut p = message::request(RequestType::Post, "/bs");
            add_query(&mut p, &format!("ep=fz-{n}"));
            p
        }
        5 => {
            let path = format!(
                "/{}/{}/{}",
                rng.random_range(0..70_000u32),
                rng.random::<u16>(),
                random_text(rng, 3)
            );
            message::request(pick(rng, &methods), &path)
        }
        6 => {
            // A response or empty message no request of ours matches.
            let mut p = message::response(lwm2m_proto::coap::ResponseType::Content, Vec::new());
            p.header.set_type(pick(
                rng,
                &[
                    MessageType::Confirmable,
                    MessageType::NonConfirmable,
                    MessageType::Acknowledgement,
                    MessageType::Reset,
                ],
            ));
            if rng.random_bool(0.3) {
                p.header.code = MessageClass::Empty;
            }
            p
        }
        _ => message::request(pick(rng, &methods), pick(rng, &["/rd", "/dp", "/bs", "/"])),
    };
    for _ in 0..rng.random_range(0..4) {
        add_query(&mut packet, pick(rng, &queries));
    }
    if rng.random_bool(0.5) {
        set_option(
            &mut packet,
            CoapOption::ContentFormat,
            uint_bytes(pick(rng, &formats)),
        );
    }
    if rng.random_bool(0.1) {
        set_option(
            &mut packet,
            CoapOption::Accept,
            uint_bytes(pick(rng, &formats)),
        );
    }
    if rng.random_bool(0.1) {
        let option = pick(
            rng,
            &[
                CoapOption::Block1,
                CoapOption::Block2,
                CoapOption::Observe,
                CoapOption::Size1,
            ],
        );
        let value = some_bytes(rng, 4);
        set_option(&mut packet, option, value);
    }
    if rng.random_bool(0.05) {
        // An unknown critical option (odd number): 4.02 (RFC 7252 §5.4.1).
        packet.add_option(CoapOption::Unknown(65001), random_bytes(rng, 3));
    }
    packet.payload = if rng.random_bool(0.2) {
        some_bytes(rng, 200)
    } else {
        pick(rng, &payloads).to_vec()
    };
    if rng.random_bool(0.5) {
        packet.header.set_type(MessageType::NonConfirmable);
    }
    packet.header.message_id = rng.random();
    packet.set_token(some_bytes(rng, 8));
    packet
}

/// One datagram of the mix.
fn datagram(rng: &mut ChaCha8Rng, n: usize) -> Vec<u8> {
    let valid = |rng: &mut ChaCha8Rng| {
        wrong_lwm2m(rng, n)
            .to_bytes_unlimited()
            .unwrap_or_else(|_| vec![0x40, 0x01, 0, 0])
    };
    match rng.random_range(0..100) {
        // Random bytes, short.
        0..15 => {
            let len = rng.random_range(0..48);
            random_bytes(rng, len)
        }
        // Random bytes, up to the UDP limit.
        15..17 => {
            let len = rng.random_range(1_024..=UDP_MAX);
            random_bytes(rng, len)
        }
        // Valid CoAP, wrong LwM2M content.
        17..50 => valid(rng),
        // Mutated: a few bytes flipped, inserted or removed.
        50..75 => {
            let mut bytes = valid(rng);
            for _ in 0..rng.random_range(1..=4) {
                let at = rng.random_range(0..=bytes.len());
                match rng.random_range(0..3) {
                    0 if at < bytes.len() => bytes[at] ^= 1 << rng.random_range(0..8),
                    1 => bytes.insert(at, rng.random()),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            bytes
        }
        // Truncated.
        75..92 => {
            let mut bytes = valid(rng);
            let keep = rng.random_range(0..bytes.len().max(1));
            bytes.truncate(keep);
            bytes
        }
        // A valid header with a huge payload (up to the UDP limit).
        92..95 => {
            let mut packet = wrong_lwm2m(rng, n);
            let len = rng.random_range(1_024..UDP_MAX - 64);
            packet.payload = random_bytes(rng, len);
            let mut bytes = packet.to_bytes_unlimited().unwrap_or_default();
            bytes.truncate(UDP_MAX);
            bytes
        }
        // A header with random fields and options that run past the end.
        _ => {
            let mut bytes = vec![
                0x40 | rng.random_range(0..16u8),
                rng.random(),
                rng.random(),
                rng.random(),
            ];
            let tail = rng.random_range(0..16);
            bytes.extend(random_bytes(rng, tail));
            bytes
        }
    }
}

/// Datagrams the fuzzers may have sent to the LwM2M Server beyond what it has read: small
/// enough that its receive buffer does not overflow (a dropped datagram of a normal client
/// would cost it a retransmission, seconds), large enough to keep it busy.
const WINDOW: usize = 256;

/// Sends `count` datagrams from `bind`, most to the LwM2M Server, one in eight to the
/// Bootstrap Server, keeping within [`WINDOW`] of what the server has read (`sent` counts
/// every fuzzer's datagrams to it).
async fn fuzz(
    bind: SocketAddr,
    server: ServerHandle,
    bootstrap: SocketAddr,
    sent: Arc<AtomicUsize>,
    seed: u64,
    count: usize,
) -> usize {
    let socket = UdpSocket::bind(bind).await.unwrap();
    let to_server = server.local_addr();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sink = vec![0u8; 65_536];
    let mut done = 0;
    for n in 0..count {
        let bytes = datagram(&mut rng, n);
        let to = if rng.random_range(0..8) == 0 {
            bootstrap
        } else {
            sent.fetch_add(1, Ordering::Relaxed);
            to_server
        };
        if socket.send_to(&bytes, to).await.is_ok() {
            done += 1;
        }
        if n % 16 == 15 {
            // Read what came back (answers, Resets, bootstrap requests), then wait for the
            // server; a datagram the kernel dropped anyway never shows in its counters,
            // hence the time limit.
            while socket.try_recv_from(&mut sink).is_ok() {}
            let give_up = Instant::now() + Duration::from_millis(20);
            while Instant::now() < give_up {
                let read = server.counters().await.unwrap().datagrams_in;
                if sent.load(Ordering::Relaxed) <= read as usize + WINDOW {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    done
}

/// The stores, persisted in a temporary data directory through the store API.
struct Stores {
    _dir: tempfile::TempDir,
    security_path: std::path::PathBuf,
    bootstrap_path: std::path::PathBuf,
    security: Arc<FileSecurityStore>,
    bootstrap: Arc<FileBootstrapStore>,
}

fn stores() -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let security_path = dir.path().join("security.yaml");
    let bootstrap_path = dir.path().join("bootstrap.yaml");
    let security = Arc::new(FileSecurityStore::open(&security_path).unwrap());
    for (ep, id, key) in [("dev-a", "id-a", "00112233"), ("dev-b", "id-b", "c0ffee")] {
        security
            .put(SecurityInfo {
                endpoint: ep.into(),
                credentials: Credentials::Psk {
                    identity: id.into(),
                    key: key.into(),
                },
            })
            .unwrap();
    }
    security
        .put(SecurityInfo {
            endpoint: "dev-c".into(),
            credentials: Credentials::X509,
        })
        .unwrap();
    let bootstrap = Arc::new(FileBootstrapStore::open(&bootstrap_path).unwrap());
    let doc = BootstrapDoc::from_yaml(
        "test",
        r#"
patterns:
  "fz-*":
    security:
      0: { uri: "coap://127.0.0.1:9", mode: nosec, short_server_id: 1 }
    servers:
      0: { short_server_id: 1, lifetime: 60 }
"#,
    )
    .unwrap();
    for (pattern, config) in doc.patterns {
        bootstrap.put(ConfigKey::Pattern(pattern), config).unwrap();
    }
    bootstrap
        .put(
            ConfigKey::Endpoint("dev-a".into()),
            BootstrapConfig::default(),
        )
        .unwrap();
    Stores {
        _dir: dir,
        security_path,
        bootstrap_path,
        security,
        bootstrap,
    }
}

/// One normal client's life: registered, then rounds of Read, Write, Read back and Update
/// while the fuzzers run (at least one); every operation must succeed. The number of
/// rounds.
async fn normal_client(
    s: ServerHandle,
    mut client: SimClient,
    fuzzing: Arc<AtomicBool>,
    seed: u64,
) -> usize {
    client.patience = BUDGET;
    client.registered().await;
    let ep = client.endpoint.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let read = |path| Operation::Read { path, format: None };
    let single = |node: Option<Content>| match node {
        Some(Content::Node(Node::Resource(ResourceValue::Single(v)))) => v,
        other => panic!("{ep}: {other:?}"),
    };
    let mut rounds = 0;
    while rounds == 0 || fuzzing.load(Ordering::Relaxed) {
        let manufacturer = s
            .request(&ep, read(Lwm2mPath::resource(3, 0, 0)))
            .await
            .unwrap_or_else(|e| panic!("{ep}: read: {e}"));
        assert_eq!(single(manufacturer.content), Value::String("ACME".into()));
        let zone = format!("+{:02}", rng.random_range(0..14));
        let write = s
            .request(
                &ep,
                Operation::Write {
                    path: Lwm2mPath::resource(3, 0, 14),
                    node: Node::Resource(ResourceValue::Single(Value::String(zone.clone()))),
                    replace: true,
                    format: None,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{ep}: write: {e}"));
        assert_eq!(write.code, (2, 4), "{ep}");
        let back = s
            .request(&ep, read(Lwm2mPath::resource(3, 0, 14)))
            .await
            .unwrap_or_else(|e| panic!("{ep}: read back: {e}"));
        assert_eq!(single(back.content), Value::String(zone));
        client.update();
        client
            .next(|e| matches!(e, ClientEvent::Updated).then_some(()))
            .await;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1_000))).await;
    }
    rounds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_datagrams_do_not_disturb_normal_clients() {
    let started = Instant::now();
    let seed = seed();
    let st = stores();
    let security_before = std::fs::read(&st.security_path).unwrap();
    let bootstrap_before = std::fs::read(&st.bootstrap_path).unwrap();
    let mut config = ServerConfig::default();
    config.limits.max_registrations_per_address = PER_ADDRESS;
    let s = Servers::start_with(Setup {
        config,
        security: st.security.clone(),
        bootstrap: st.bootstrap.clone(),
        record_wire: false,
        ..Setup::default()
    })
    .await;
    let server = s.server.local_addr();
    let bootstrap = s.bootstrap.local_addr();

    let sent_to_server = Arc::new(AtomicUsize::new(0));
    let mut fuzzers = JoinSet::new();
    for f in 0..FUZZERS {
        let bind: SocketAddr = format!("127.0.0.{}:0", f + 2).parse().unwrap();
        let count = DATAGRAMS / FUZZERS;
        fuzzers.spawn(fuzz(
            bind,
            s.server.clone(),
            bootstrap,
            sent_to_server.clone(),
            seed + f as u64,
            count,
        ));
    }

    let registry = Registry::embedded();
    let fuzzing = Arc::new(AtomicBool::new(true));
    let mut clients = JoinSet::new();
    for c in 0..CLIENTS {
        let config = client_config(&format!("dev-{c:03}"), server, seed ^ c as u64);
        let client = SimClient::start(
            format!("127.0.1.{}:0", c + 1).parse().unwrap(),
            config,
            device_tree(&registry),
        )
        .await;
        clients.spawn(normal_client(
            s.server.clone(),
            client,
            fuzzing.clone(),
            seed ^ c as u64,
        ));
    }
    let mut sent = 0;
    while let Some(n) = fuzzers.join_next().await {
        sent += n.unwrap();
    }
    assert_eq!(sent, DATAGRAMS, "seed {seed}");
    fuzzing.store(false, Ordering::Relaxed);
    let mut rounds = 0;
    while let Some(n) = clients.join_next().await {
        rounds += n.expect("a normal client's operations succeed");
    }
    assert!(rounds > CLIENTS, "{rounds} rounds");

    // The servers are alive and still serve.
    let counters = s.server.counters().await.expect("the LwM2M Server answers");
    assert!(counters.malformed > 0, "{counters:?}");
    s.bootstrap
        .counters()
        .await
        .expect("the Bootstrap Server answers");
    let mut late = SimClient::start(
        "127.0.2.1:0".parse().unwrap(),
        client_config("dev-late", server, seed),
        device_tree(&registry),
    )
    .await;
    late.registered().await;
    for c in 0..CLIENTS {
        assert!(
            s.server
                .registrations()
                .get(&format!("dev-{c:03}"))
                .is_some(),
            "dev-{c:03} lost its registration (seed {seed})"
        );
    }
    let (status, _) = s.call("GET", "/clients/dev-late", None).await;
    assert_eq!(status, 200);

    // Memory stays bounded: the flood's registrations are capped per address (the rest
    // got 5.03), whatever it sent.
    let held = s.server.registrations().len();
    assert!(
        held <= CLIENTS + 1 + FUZZERS * PER_ADDRESS,
        "{held} registrations held (seed {seed})"
    );
    let mut per_address = std::collections::HashMap::<_, usize>::new();
    for entry in s.server.registrations().all() {
        *per_address
            .entry(entry.registration.address.ip())
            .or_default() += 1;
    }
    let most = per_address.values().copied().max().unwrap_or(0);
    assert!(most <= PER_ADDRESS, "{per_address:?} (seed {seed})");
    assert_eq!(
        most, PER_ADDRESS,
        "the flood never reached the per-address cap: {per_address:?} (seed {seed})"
    );

    // The stores on disk are untouched and load.
    assert_eq!(std::fs::read(&st.security_path).unwrap(), security_before);
    assert_eq!(std::fs::read(&st.bootstrap_path).unwrap(), bootstrap_before);
    let security = FileSecurityStore::open(&st.security_path).unwrap();
    assert_eq!(security.all(), st.security.all());
    assert_eq!(security.all().len(), 3);
    let reopened = FileBootstrapStore::open(&st.bootstrap_path).unwrap();
    assert_eq!(reopened.all(), st.bootstrap.all());
    assert_eq!(reopened.all().len(), 2);

    let took = started.elapsed();
    eprintln!("{sent} datagrams, {rounds} rounds of {CLIENTS} clients, {took:?}, {counters:?}");
    assert!(took < BUDGET, "took {took:?} (seed {seed})");
}
