//! Bootstrap over DTLS, end to end on loopback (Core TS 1.1 §5.2, §7.1): simulated fleet
//! clients whose only account is a `coaps://` PSK bootstrap-server account bootstrap from
//! our Bootstrap Server's DTLS listener, are handed a `coaps://` LwM2M Server account with
//! credentials of its own, and register with our LwM2M Server over DTLS with them; the
//! Bootstrap Server provisions those credentials into the LwM2M Server's security store.
//! Also: a wrong bootstrap key and a provisioning conflict fail alone, a bootstrap identity
//! used for another endpoint gets 4.03, and 200 clients bootstrap at once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lwm2m_dtls::{CertificateConfig, ClientConfig, UdpDtlsClient};
use lwm2m_proto::bootstrap::server::BootstrapEvent;
use lwm2m_proto::coap::message;
use lwm2m_proto::coap::{MessageClass, RequestType, ResponseType};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{Operation, ServerEvent};
use lwm2m_proto::{ResourceValue, Value};
use lwm2m_server::DtlsOptions;
use lwm2m_server::bootstrap::{BootstrapHandle, BootstrapOptions, start_bootstrap};
use lwm2m_server::driver::{ServerHandle, ServerOptions, start_server};
use lwm2m_server::events::{Event, EventBus, SecurityEvent};
use lwm2m_server::store::{
    BootstrapCredentials, BootstrapDoc, BootstrapStore, ConfigKey, Credentials, FileBootstrapStore,
    FileSecurityStore, SecurityInfo, SecurityStore,
};
use lwm2m_simulator::fleet::{ClientSpec, FleetHandle, Targets};
use lwm2m_simulator::network::NetworkModel;

use crate::dtls_server::{FirstBytes, certificate_authority, issue, psk_of};
use crate::fleet_support::{PATIENCE, counters_until, eventually, path, profile, start_fleet};

/// A client whose factory configuration is a Bootstrap Server account only: `coaps://`,
/// PSK (identity and key set per client by [`bootstrap_account`]).
const PROFILE: &str = "\
name: secure-bootstrap
lwm2m_version: \"1.1\"
lifetime: 5m
endpoint_prefix: ep
preferred_format: senml-cbor
supported_formats: [senml-cbor, tlv, text]
objects:
  0:
    instances:
      0: { 0: coaps://127.0.0.1:5784, 1: true, 2: 0, 3: \"\", 4: \"\", 5: \"\" }
  1:
    instances: {}
  3:
    instances:
      0: { 0: Acme, 1: M1 }
";

/// The 16-byte key of a PSK identity (derived from its text).
fn key(identity: &str) -> Vec<u8> {
    psk_of(identity).1
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Events of one server's bus, kept.
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Vec<Event>>>);

impl Seen {
    fn listen(bus: &EventBus) -> Seen {
        let seen = Seen::default();
        let sink = seen.0.clone();
        let mut rx = bus.subscribe();
        tokio::spawn(async move {
            while let Ok(e) = rx.recv().await {
                if !matches!(*e, Event::CoapLog(_)) {
                    sink.lock().unwrap().push((*e).clone());
                }
            }
        });
        seen
    }

    fn find<T>(&self, pick: impl Fn(&Event) -> Option<T>) -> Vec<T> {
        self.0.lock().unwrap().iter().filter_map(pick).collect()
    }

    /// Waits until `pick` accepts `n` events; returns them.
    async fn wait<T>(&self, n: usize, what: &str, pick: impl Fn(&Event) -> Option<T>) -> Vec<T> {
        eventually(what, || Some(self.find(&pick)).filter(|v| v.len() >= n)).await
    }

    /// The identities of the established DTLS sessions.
    fn established(&self) -> Vec<String> {
        self.find(|e| match e {
            Event::Security(_, SecurityEvent::Established { identity, .. }) => {
                Some(identity.to_string())
            }
            _ => None,
        })
    }
}

/// Our LwM2M Server and Bootstrap Server, both with a DTLS listener, each with its own bus
/// (so that each one's security events are told apart), the Bootstrap Server provisioning
/// into the LwM2M Server's security store.
struct Servers {
    server: ServerHandle,
    bootstrap: BootstrapHandle,
    /// The LwM2M Server's credentials (empty at start: the Bootstrap Server fills it).
    security: Arc<FileSecurityStore>,
    configs: Arc<FileBootstrapStore>,
    server_seen: Seen,
    bs_seen: Seen,
    /// Every datagram on the Bootstrap Server's sockets.
    bs_tap: Arc<FirstBytes>,
}

impl Servers {
    async fn start() -> Servers {
        Servers::start_with(None).await
    }

    /// With `certificate`, the LwM2M Server's listener also takes certificate clients.
    async fn start_with(certificate: Option<CertificateConfig>) -> Servers {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let security = Arc::new(FileSecurityStore::in_memory());
        let server_bus = EventBus::new(1 << 16);
        let mut so = ServerOptions::new(any, Arc::new(Registry::embedded()));
        so.bus = server_bus.clone();
        so.dtls = Some(DtlsOptions {
            certificate,
            ..DtlsOptions::new(any, security.clone())
        });
        let server = start_server(so).unwrap();

        let configs = Arc::new(FileBootstrapStore::in_memory(BootstrapDoc::default()));
        let bs_bus = EventBus::new(1 << 16);
        let bs_tap = Arc::new(FirstBytes::default());
        let mut bo = BootstrapOptions::new(any, configs.clone());
        bo.bus = bs_bus.clone();
        bo.tap = Some(bs_tap.clone());
        bo.dtls = Some(DtlsOptions::new(
            any,
            Arc::new(BootstrapCredentials(configs.clone())),
        ));
        bo.provision = Some(security.clone());
        let bootstrap = start_bootstrap(bo).unwrap();
        Servers {
            server_seen: Seen::listen(&server_bus),
            bs_seen: Seen::listen(&bs_bus),
            server,
            bootstrap,
            security,
            configs,
            bs_tap,
        }
    }

    fn bs_dtls(&self) -> SocketAddr {
        self.bootstrap.dtls_addr().unwrap()
    }

    /// `ep`'s own configuration: its bootstrap account (identity `bs-EP`) and a `coaps://`
    /// account on our LwM2M Server with PSK identity `lwm2m_identity`.
    fn configure(&self, ep: &str, lwm2m_identity: &str) {
        let k2 = hex(&key(lwm2m_identity));
        self.configure_account(
            ep,
            &format!("mode: psk, identity: \"{lwm2m_identity}\", secret_key: \"{k2}\""),
        );
    }

    /// `ep`'s own configuration: its bootstrap account (identity `bs-EP`) and a `coaps://`
    /// account on our LwM2M Server with these credential keys (YAML).
    fn configure_account(&self, ep: &str, credentials: &str) {
        let bs_identity = format!("bs-{ep}");
        let yaml = format!(
            "endpoints:\n  {ep}:\n    security:\n      \
             0: {{ uri: \"coaps://{bs}\", bootstrap_server: true, mode: psk, identity: \"{bs_identity}\", secret_key: \"{k1}\" }}\n      \
             1: {{ uri: \"coaps://{server}\", {credentials}, short_server_id: 1 }}\n    \
             servers:\n      0: {{ short_server_id: 1, lifetime: 300 }}\n",
            bs = self.bs_dtls(),
            server = self.server.dtls_addr().unwrap(),
            k1 = hex(&key(&bs_identity)),
        );
        let mut doc = BootstrapDoc::from_yaml("bootstrap.yaml", &yaml).unwrap();
        let config = doc.endpoints.remove(ep).unwrap();
        self.configs
            .put(ConfigKey::Endpoint(ep.into()), config)
            .unwrap();
    }

    /// A fleet of clients named `names`, each with its bootstrap account's credentials
    /// (identity `bs-EP`, its key broken for the names in `wrong`), pointed at the
    /// Bootstrap Server's DTLS listener only.
    fn fleet(&self, names: &[String], wrong: &[&str]) -> FleetHandle {
        let names = names.to_vec();
        let wrong: Vec<String> = wrong.iter().map(|s| s.to_string()).collect();
        let targets = Targets {
            server: None,
            bootstrap: Some(self.bs_dtls()),
        };
        let next = Mutex::new(0usize);
        start_fleet(
            &[(&profile(PROFILE), names.len())],
            targets,
            &NetworkModel::default(),
            move |spec| {
                let mut n = next.lock().unwrap();
                bootstrap_account(spec, &names[*n], wrong.contains(&names[*n]));
                *n += 1;
            },
        )
    }

    async fn shutdown(&self) {
        self.server.shutdown().await;
        self.bootstrap.shutdown().await;
    }
}

/// Names the client `ep` and sets its bootstrap account's PSK: identity /0/0/3 `bs-EP`,
/// key /0/0/5 ([`key`] of the identity, one bit flipped if `wrong`).
fn bootstrap_account(spec: &mut ClientSpec, ep: &str, wrong: bool) {
    spec.config.endpoint = ep.to_owned();
    let identity = format!("bs-{ep}");
    let mut k = key(&identity);
    if wrong {
        k[0] ^= 1;
    }
    for (r, v) in [("/0/0/3", identity.into_bytes()), ("/0/0/5", k)] {
        spec.tree
            .set(&path(r), ResourceValue::Single(Value::Opaque(v)))
            .unwrap();
    }
}

fn registered(seen: &Seen) -> Vec<String> {
    seen.find(|e| match e {
        Event::Server(ServerEvent::Registered { registration, .. }) => {
            Some(registration.endpoint.clone())
        }
        _ => None,
    })
}

fn finished(seen: &Seen) -> Vec<String> {
    seen.find(|e| match e {
        Event::Bootstrap(BootstrapEvent::Finished { endpoint, .. }) => Some(endpoint.clone()),
        _ => None,
    })
}

fn started(seen: &Seen) -> Vec<String> {
    seen.find(|e| match e {
        Event::Bootstrap(BootstrapEvent::SessionStarted { endpoint, .. }) => Some(endpoint.clone()),
        _ => None,
    })
}

fn psk(ep: &str, identity: &str) -> Option<SecurityInfo> {
    Some(SecurityInfo {
        endpoint: ep.into(),
        credentials: Credentials::Psk {
            identity: identity.into(),
            key: hex(&key(identity)),
        },
    })
}

/// Only DTLS records (content types 20-23) on the Bootstrap Server's DTLS socket, and
/// nothing on its plain one.
fn only_dtls_records(s: &Servers) {
    let bs_dtls = s.bs_dtls();
    let wire = s.bs_tap.0.lock().unwrap().clone();
    let odd: Vec<_> = wire
        .iter()
        .filter(|(_, local, b)| *local != bs_dtls || ![20, 21, 22, 23].contains(b))
        .collect();
    assert!(odd.is_empty(), "not DTLS records: {odd:?}");
    assert!(!wire.is_empty());
}

#[tokio::test]
async fn a_client_bootstraps_over_dtls_and_registers_with_the_credentials_it_was_given() {
    let s = Servers::start().await;
    s.configure("ep1", "ep1");
    assert_eq!(
        s.security.by_endpoint("ep1"),
        None,
        "nothing provisioned yet"
    );
    let fleet = s.fleet(&["ep1".to_owned()], &[]);

    s.server_seen
        .wait(1, "ep1 registered with the LwM2M Server", |e| match e {
            Event::Server(ServerEvent::Registered { registration, .. }) => {
                Some(registration.endpoint.clone())
            }
            _ => None,
        })
        .await;
    // Two handshakes, with different credentials: bs-ep1 (K1) with the Bootstrap Server,
    // ep1 (K2) with the LwM2M Server.
    assert_eq!(s.bs_seen.established(), ["psk:bs-ep1"]);
    assert_eq!(s.server_seen.established(), ["psk:ep1"]);
    assert_ne!(key("bs-ep1"), key("ep1"));
    assert_eq!(finished(&s.bs_seen), ["ep1"]);
    assert_eq!(registered(&s.server_seen), ["ep1"]);
    // The Bootstrap Server put the key it handed out into the LwM2M Server's store.
    assert_eq!(s.security.by_endpoint("ep1"), psk("ep1", "ep1"));
    // The client closed its Bootstrap Server session after Bootstrap-Finish.
    let closed = s
        .bs_seen
        .wait(1, "bootstrap session closed", |e| match e {
            Event::Security(
                _,
                SecurityEvent::Closed {
                    identity, reason, ..
                },
            ) => Some((identity.to_string(), format!("{reason:?}"))),
            _ => None,
        })
        .await;
    assert_eq!(closed, [("psk:bs-ep1".to_owned(), "PeerClosed".to_owned())]);
    only_dtls_records(&s);
    let c = fleet.total();
    assert_eq!((c.dtls_handshakes, c.dtls_failures), (2, 0), "{c:?}");
    fleet.stop(Duration::from_secs(5)).await.unwrap();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_bootstrap_key_or_a_taken_identity_fails_alone() {
    let s = Servers::start().await;
    let names: Vec<String> = (0..6).map(|k| format!("w{k}")).collect();
    for ep in &names {
        s.configure(ep, ep);
    }
    // w5's LwM2M Server identity already belongs to another endpoint of the server.
    s.configure("w5", "taken");
    s.security.put(psk("someone", "taken").unwrap()).unwrap();
    let fleet = s.fleet(&names, &["w2"]);

    let good = ["w0", "w1", "w3", "w4"];
    eventually("the four good clients registered", || {
        let r = registered(&s.server_seen);
        good.iter().all(|g| r.iter().any(|e| e == g)).then_some(())
    })
    .await;
    let failed = s
        .bs_seen
        .wait(1, "w2's handshake failed", |e| match e {
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
    assert_eq!(failed[0], (Some("psk:bs-w2".into()), "WrongKey".into()));
    let refused = s
        .bs_seen
        .wait(1, "w5's Bootstrap-Request refused", |e| match e {
            Event::Bootstrap(BootstrapEvent::Refused {
                endpoint,
                code,
                reason,
                ..
            }) => Some((endpoint.clone(), *code, reason.clone())),
            _ => None,
        })
        .await;
    assert_eq!(refused[0].0.as_deref(), Some("w5"));
    assert_eq!(refused[0].1, (5, 0));
    assert!(
        refused[0]
            .2
            .contains("\"taken\" already belongs to endpoint \"someone\""),
        "{refused:?}"
    );
    // Neither was handed anything, nor provisioned; nobody else was disturbed.
    let started = started(&s.bs_seen);
    assert!(
        !started.iter().any(|e| e == "w2" || e == "w5"),
        "{started:?}"
    );
    let mut done = finished(&s.bs_seen);
    done.sort();
    assert_eq!(done, good);
    assert_eq!(s.security.by_endpoint("w2"), None);
    assert_eq!(s.security.by_endpoint("w5"), None);
    assert_eq!(s.security.by_psk_identity("taken"), psk("someone", "taken"));
    let mut r = registered(&s.server_seen);
    r.sort();
    assert_eq!(r, good);
    // The fleet counts a registration when the answer arrives, after the server's event.
    counters_until(&fleet, "w2's failure and four registrations counted", |c| {
        c.dtls_failures >= 1 && c.clients_registered == 4
    })
    .await;
    fleet.stop(Duration::from_secs(5)).await.unwrap();
    s.shutdown().await;
}

/// `POST /bs?ep=…` with a CoAP token, over an established session.
async fn bootstrap_request(client: &mut UdpDtlsClient, ep: &str, mid: u16) -> (u8, u8) {
    let mut p = message::request(RequestType::Post, "/bs");
    message::add_query(&mut p, &format!("ep={ep}"));
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    client.send(&p.to_bytes().unwrap()).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, client.recv())
        .await
        .expect("no answer")
        .unwrap();
    let answer = message::decode(&answer).unwrap();
    assert_eq!(answer.get_token(), mid.to_be_bytes());
    let raw = u8::from(answer.header.code);
    (raw >> 5, raw & 0x1f)
}

#[tokio::test]
async fn a_bootstrap_identity_used_for_another_endpoint_gets_4_03() {
    let s = Servers::start().await;
    s.configure("ep1", "ep1");
    s.configure("other", "other");
    let config = ClientConfig::psk(b"bs-ep1", &key("bs-ep1")).unwrap();
    let mut client = tokio::time::timeout(PATIENCE, UdpDtlsClient::connect(s.bs_dtls(), &config))
        .await
        .expect("handshake")
        .unwrap();
    // An identity no configuration holds fails its own handshake only.
    let stranger = ClientConfig::psk(b"bs-nobody", &key("bs-nobody")).unwrap();
    let refused = tokio::time::timeout(PATIENCE, UdpDtlsClient::connect(s.bs_dtls(), &stranger))
        .await
        .expect("the handshake ends");
    assert!(refused.is_err());
    let failed = s
        .bs_seen
        .wait(1, "unknown identity", |e| match e {
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
    assert_eq!(
        failed[0],
        (Some("psk:bs-nobody".into()), "UnknownIdentity".into())
    );
    assert_eq!(bootstrap_request(&mut client, "other", 1).await, (4, 3));
    let mismatch = s
        .bs_seen
        .wait(1, "IdentityMismatch", |e| match e {
            Event::Security(
                _,
                SecurityEvent::IdentityMismatch {
                    identity,
                    endpoint,
                    owner,
                    ..
                },
            ) => Some((identity.to_string(), endpoint.clone(), owner.clone())),
            _ => None,
        })
        .await;
    assert_eq!(
        mismatch[0],
        ("psk:bs-ep1".into(), "other".into(), Some("ep1".into()))
    );
    // Nothing started for "other", nothing provisioned.
    assert!(started(&s.bs_seen).is_empty());
    assert_eq!(s.security.by_endpoint("other"), None);
    // The same session may bootstrap as its own endpoint: 2.04, then the Bootstrap Server's
    // first request (Bootstrap-Delete /0) arrives over it.
    assert_eq!(bootstrap_request(&mut client, "ep1", 2).await, (2, 4));
    let first = tokio::time::timeout(PATIENCE, client.recv())
        .await
        .expect("no Bootstrap-Delete")
        .unwrap();
    let first = message::decode(&first).unwrap();
    assert_eq!(
        first.header.code,
        MessageClass::Request(RequestType::Delete)
    );
    assert_eq!(message::uri_path(&first), "/0");
    assert_eq!(s.security.by_endpoint("ep1"), psk("ep1", "ep1"));
    client.close().await.unwrap();

    // Over plain CoAP, ep1's configuration (a PSK Bootstrap Server account) is refused:
    // its credentials do not go out in clear.
    let plain = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut p = message::request(RequestType::Post, "/bs");
    message::add_query(&mut p, "ep=ep1");
    p.header.message_id = 3;
    p.set_token(vec![3]);
    plain
        .send_to(&p.to_bytes().unwrap(), s.bootstrap.local_addr())
        .await
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(PATIENCE, plain.recv_from(&mut buf))
        .await
        .expect("no answer over plain CoAP")
        .unwrap();
    let answer = message::decode(&buf[..n]).unwrap();
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Forbidden)
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_bootstrap_over_dtls_at_once_and_register_with_their_keys() {
    let n = 200;
    let s = Servers::start().await;
    let names: Vec<String> = (0..n).map(|k| format!("b{k}")).collect();
    for ep in &names {
        s.configure(ep, &format!("lwm2m-{ep}"));
    }
    let fleet = s.fleet(&names, &[]);
    let c = counters_until(&fleet, "all registered", |c| {
        c.clients_registered as usize == n
    })
    .await;
    assert_eq!(c.dtls_handshakes as usize, 2 * n, "{c:?}");
    assert_eq!(c.dtls_failures, 0);
    assert_eq!(s.server.registrations().len(), n);
    let mut bs_ids = s.bs_seen.established();
    let mut server_ids = s.server_seen.established();
    bs_ids.sort();
    server_ids.sort();
    let mut want_bs: Vec<String> = names.iter().map(|e| format!("psk:bs-{e}")).collect();
    let mut want_server: Vec<String> = names.iter().map(|e| format!("psk:lwm2m-{e}")).collect();
    want_bs.sort();
    want_server.sort();
    assert_eq!(bs_ids, want_bs);
    assert_eq!(server_ids, want_server);
    for ep in &names {
        assert_eq!(
            s.security.by_endpoint(ep),
            psk(ep, &format!("lwm2m-{ep}")),
            "{ep}"
        );
    }
    only_dtls_records(&s);
    fleet.stop(Duration::from_secs(10)).await.unwrap();
    s.shutdown().await;
}

/// Security mode 2 handed over (Core TS 1.1 §7.1.8): the client bootstraps over PSK and is
/// given a certificate account (its certificate /0/1/3, private key /0/1/5, the CA as
/// /0/1/4); it registers over DTLS with the certificate, under its common name.
#[tokio::test]
async fn a_client_handed_a_certificate_account_registers_with_it() {
    use rcgen::ExtendedKeyUsagePurpose;
    let (ca, ca_key, ca_der) = certificate_authority("fleet CA");
    // The server's certificate names the address in the URI the client is given.
    let (server_chain, server_key) = issue(
        &ca,
        &ca_key,
        "lwm2m server",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_der, client_key) = issue(
        &ca,
        &ca_key,
        "ep1",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let s = Servers::start_with(Some(CertificateConfig {
        chain: vec![server_chain],
        private_key: server_key,
        trust_anchors: vec![ca_der.clone()],
    }))
    .await;
    s.configure_account(
        "ep1",
        &format!(
            "mode: x509, identity: \"{}\", secret_key: \"{}\", server_public_key: \"{}\"",
            hex(&client_der),
            hex(&client_key),
            hex(&ca_der)
        ),
    );
    let fleet = s.fleet(&["ep1".to_owned()], &[]);
    s.server_seen
        .wait(1, "ep1 registered with its certificate", |e| match e {
            Event::Server(ServerEvent::Registered { registration, .. }) => {
                Some(registration.endpoint.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(s.bs_seen.established(), ["psk:bs-ep1"]);
    assert_eq!(s.server_seen.established(), ["cn:ep1"]);
    assert_eq!(registered(&s.server_seen), ["ep1"]);
    // No PSK to provision: the common name is the endpoint's credential.
    assert_eq!(s.security.by_endpoint("ep1"), None);
    let c = fleet.total();
    assert_eq!((c.dtls_handshakes, c.dtls_failures), (2, 0), "{c:?}");
    fleet.stop(Duration::from_secs(5)).await.unwrap();
    s.shutdown().await;
}

/// libcoap's client (GnuTLS build) as an independent DTLS peer of the Bootstrap Server:
/// with its PSK it gets 4.03 for another endpoint's Bootstrap-Request and 2.04 for its
/// own, after which the Bootstrap Server starts the session.
#[tokio::test]
async fn coap_client_gnutls_bootstraps_over_dtls_as_its_own_endpoint_only() {
    let bin = "coap-client-gnutls";
    assert!(
        std::process::Command::new(bin).arg("-h").output().is_ok(),
        "{bin} is missing: install it with `apt-get install libcoap3-bin`"
    );
    let s = Servers::start().await;
    // coap-client takes the key as text: the configuration holds its bytes in hex.
    let yaml = format!(
        "endpoints:\n  libcoap-1:\n    security:\n      \
         0: {{ uri: \"coaps://{}\", bootstrap_server: true, mode: psk, identity: libcoap-bs, secret_key: \"{}\" }}\n      \
         1: {{ uri: \"coaps://{}\", mode: psk, identity: libcoap-1, secret_key: \"{}\", short_server_id: 1 }}\n",
        s.bs_dtls(),
        hex(b"libcoap-bs-secret"),
        s.server.dtls_addr().unwrap(),
        hex(b"libcoap-lwm2m-secret"),
    );
    let doc = BootstrapDoc::from_yaml("bootstrap.yaml", &yaml).unwrap();
    for (ep, config) in doc.endpoints {
        s.configs.put(ConfigKey::Endpoint(ep), config).unwrap();
    }
    s.configure("other", "other");
    let post = |ep: &str| {
        let uri = format!("coaps://{}/bs?ep={ep}", s.bs_dtls());
        tokio::process::Command::new(bin)
            .args(["-B", "3", "-v", "7", "-m", "post"])
            .args(["-u", "libcoap-bs", "-k", "libcoap-bs-secret"])
            .arg(uri)
            .kill_on_drop(true)
            .output()
    };
    let answered = |out: &std::process::Output, code: &str| {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("v:1 ") && l.contains(&format!("c:{code}"))),
            "no {code} in {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let out = tokio::time::timeout(PATIENCE, post("other"))
        .await
        .expect("coap-client ends")
        .unwrap();
    answered(&out, "4.03");
    let mismatch = s
        .bs_seen
        .wait(1, "IdentityMismatch", |e| match e {
            Event::Security(
                _,
                SecurityEvent::IdentityMismatch {
                    identity, endpoint, ..
                },
            ) => Some((identity.to_string(), endpoint.clone())),
            _ => None,
        })
        .await;
    assert_eq!(mismatch[0], ("psk:libcoap-bs".into(), "other".into()));
    let out = tokio::time::timeout(PATIENCE, post("libcoap-1"))
        .await
        .expect("coap-client ends")
        .unwrap();
    answered(&out, "2.04");
    s.bs_seen
        .wait(1, "libcoap-1's session started", |e| match e {
            Event::Bootstrap(BootstrapEvent::SessionStarted { endpoint, .. })
                if endpoint == "libcoap-1" =>
            {
                Some(())
            }
            _ => None,
        })
        .await;
    assert_eq!(
        s.security.by_endpoint("libcoap-1"),
        Some(SecurityInfo {
            endpoint: "libcoap-1".into(),
            credentials: Credentials::Psk {
                identity: "libcoap-1".into(),
                key: hex(b"libcoap-lwm2m-secret"),
            },
        })
    );
    s.shutdown().await;
}

/// A second bootstrap hands out new LwM2M Server credentials (Bootstrap-Request Trigger,
/// Execute 1/0/9): the client rebuilds its link from its current Security object and
/// handshakes with the new identity; the server's store holds only the new one.
#[tokio::test]
async fn a_new_bootstrap_with_new_credentials_rebuilds_the_link() {
    let s = Servers::start().await;
    s.configure("ep1", "ep1");
    let fleet = s.fleet(&["ep1".to_owned()], &[]);
    let first = s
        .server_seen
        .wait(1, "ep1 registered", |e| match e {
            Event::Server(ServerEvent::Registered { registration, .. }) => {
                Some(registration.endpoint.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(first, ["ep1"]);
    s.configure("ep1", "ep1-v2");
    let trigger = s
        .server
        .request(
            "ep1",
            Operation::Execute {
                path: path("/1/0/9"),
                args: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(trigger.code, (2, 4));
    s.server_seen
        .wait(2, "ep1 registered again", |e| match e {
            Event::Server(ServerEvent::Registered { registration, .. }) => {
                Some(registration.endpoint.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(s.server_seen.established(), ["psk:ep1", "psk:ep1-v2"]);
    assert_eq!(s.bs_seen.established(), ["psk:bs-ep1", "psk:bs-ep1"]);
    assert_eq!(s.security.by_endpoint("ep1"), psk("ep1", "ep1-v2"));
    assert_eq!(s.security.by_psk_identity("ep1"), None, "no ghost identity");
    let c = fleet.total();
    assert_eq!((c.dtls_handshakes, c.dtls_failures), (4, 0), "{c:?}");
    fleet.stop(Duration::from_secs(5)).await.unwrap();
    s.shutdown().await;
}
