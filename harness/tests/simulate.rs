//! `lwm2m-harness simulate` as a user runs it: the binary drives 50 minimal-1.0 clients
//! against our LwM2M Server, started in this test on loopback; its live counter lines and
//! summary are checked, and so is what the server saw. Then 20 clients over DTLS with
//! generated PSK credentials, which the server's security store holds, 10 clients that
//! bootstrap over DTLS and are handed their LwM2M Server credentials, and clients with
//! certificates issued from a CA of the user's own, which the server trusts.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::ServerEvent;
use lwm2m_server::DtlsOptions;
use lwm2m_server::bootstrap::{BootstrapOptions, start_bootstrap};
use lwm2m_server::driver::{ServerOptions, start_server};
use lwm2m_server::events::{Event, EventBus};
use lwm2m_server::store::{
    BootstrapCredentials, BootstrapDoc, BootstrapStore, ConfigKey, Credentials, FileBootstrapStore,
    FileSecurityStore, SecurityInfo, SecurityStore,
};
use lwm2m_simulator::fleet::PskPattern;

const CLIENTS: usize = 50;

/// The `key=value` field of a line, e.g. `registered=50`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The `summary:` line of `out`, checked to hold each `key=value` of `want`.
fn summary<'a>(out: &'a str, want: &[(&str, &str)]) -> &'a str {
    let summary = out
        .lines()
        .find(|l| l.starts_with("summary:"))
        .unwrap_or_else(|| panic!("no summary:\n{out}"));
    for (key, want) in want {
        assert_eq!(field(summary, key), Some(*want), "{key} in {summary}");
    }
    summary
}

/// The number in the `key=N` field of a line.
fn count(line: &str, key: &str) -> usize {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in {line}"))
}

/// Runs the binary with `args`; its stdout, after at most 30 s.
fn run(args: &[String]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("simulate ran over 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().expect("stdout read");
    assert!(
        status.success(),
        "simulate failed ({status}); it printed:\n{out}"
    );
    out
}

#[test]
fn simulate_50_clients_against_our_server() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let bus = EventBus::new(1 << 14);
    let seen: Arc<Mutex<Vec<ServerEvent>>> = Arc::default();
    let server = runtime.block_on(async {
        let mut rx = bus.subscribe();
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Ok(e) = rx.recv().await {
                if let Event::Server(s) = &*e {
                    sink.lock().expect("not poisoned").push(s.clone());
                }
            }
        });
        let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let mut options = ServerOptions::new(any, Arc::new(Registry::embedded()));
        options.bus = bus.clone();
        start_server(options).expect("the server starts")
    });
    let scenarios = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let args: Vec<String> = [
        "simulate",
        "--server",
        &format!("coap://{}", server.local_addr()),
        "--clients",
        &CLIENTS.to_string(),
        "--profile",
        "minimal-1.0",
        "--duration",
        "3s",
        "--seed",
        "1",
        "--scenarios",
        &scenarios.to_string_lossy(),
    ]
    .map(str::to_owned)
    .to_vec();
    let out = run(&args);

    // Live counters once a second: time, and every client registered by the last one.
    let live: Vec<&str> = out.lines().filter(|l| l.starts_with("t=")).collect();
    assert!(live.len() >= 2, "live lines:\n{out}");
    let last = live.last().expect("a live line");
    assert_eq!(field(last, "registered"), Some("50"), "{last}");
    assert_eq!(field(last, "started"), Some("50"), "{last}");
    assert_eq!(field(last, "failed"), Some("0"), "{last}");
    for key in ["served", "notified", "updates/s", "in", "out"] {
        assert!(field(last, key).is_some(), "{key} in {last}");
    }

    // The summary: all registered, all de-registered, latency quantiles printed.
    summary(
        &out,
        &[
            ("clients", "50"),
            ("ever-registered", "50"),
            ("registered-at-end", "50"),
            ("failed", "0"),
            ("registrations", "50"),
            ("deregistrations", "50"),
            ("failures", "0"),
        ],
    );
    let latency = out
        .lines()
        .find(|l| l.starts_with("latency:"))
        .unwrap_or_else(|| panic!("no latency line:\n{out}"));
    let register = latency.split("update").next().expect("a register part");
    for q in ["p50", "p99"] {
        let v = field(register, q).unwrap_or_else(|| panic!("{q} in {latency}"));
        let ms: f64 = v
            .strip_suffix("ms")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{q}={v} in {latency}"));
        assert!(ms > 0.0 && ms < 1000.0, "{q}={v}");
    }
    assert!(register.contains("(n=50)"), "{latency}");

    // The server saw 50 registrations and 50 de-registrations, one per endpoint.
    let endpoints = |pick: fn(&ServerEvent) -> Option<&str>| -> BTreeSet<String> {
        seen.lock()
            .expect("not poisoned")
            .iter()
            .filter_map(|e| pick(e).map(str::to_owned))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let gone = loop {
        let gone = endpoints(|e| match e {
            ServerEvent::Deregistered { registration } => Some(&registration.endpoint),
            _ => None,
        });
        if gone.len() == CLIENTS || Instant::now() > deadline {
            break gone;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let expected: BTreeSet<String> = (0..CLIENTS).map(|n| format!("minimal-{n}")).collect();
    assert_eq!(gone, expected);
    let registered = endpoints(|e| match e {
        ServerEvent::Registered { registration, .. } => Some(&registration.endpoint),
        _ => None,
    });
    assert_eq!(registered, expected);
    let count = |f: fn(&ServerEvent) -> bool| {
        seen.lock()
            .expect("not poisoned")
            .iter()
            .filter(|e| f(e))
            .count()
    };
    assert_eq!(
        count(|e| matches!(e, ServerEvent::Registered { .. })),
        CLIENTS
    );
    assert_eq!(
        count(|e| matches!(e, ServerEvent::Deregistered { .. })),
        CLIENTS
    );
    runtime.block_on(server.shutdown());
}

/// The security entry of client `n` of the minimal-1.0 profile.
fn entry(psk: &PskPattern, n: u64) -> SecurityInfo {
    let endpoint = format!("minimal-{n}");
    let (identity, key) = psk.credentials(n, &endpoint);
    let key = key.iter().map(|b| format!("{b:02x}")).collect();
    SecurityInfo {
        endpoint,
        credentials: Credentials::Psk { identity, key },
    }
}

#[test]
fn simulate_20_psk_clients_over_dtls() {
    const N: u64 = 20;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // The store holds what the fleet will derive: the same function, through the library.
    let psk = PskPattern {
        identity: "sim-{n}".into(),
        seed: 3,
    };
    let security = FileSecurityStore::in_memory();
    for n in 0..N {
        security.put(entry(&psk, n)).expect("valid credentials");
    }
    let server = runtime.block_on(async {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let mut options = ServerOptions::new(any, Arc::new(Registry::embedded()));
        options.dtls = Some(DtlsOptions::new(any, Arc::new(security)));
        start_server(options).expect("the server starts")
    });
    let dtls = server.dtls_addr().expect("a DTLS listener");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let printed = dir.path().join("credentials.json");
    let scenarios = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let args: Vec<String> = [
        "simulate",
        "--server",
        &format!("coaps://{dtls}"),
        "--clients",
        &N.to_string(),
        "--psk-identity",
        "sim-{n}",
        "--psk-key-seed",
        "3",
        "--print-credentials",
        &printed.to_string_lossy(),
        "--profile",
        "minimal-1.0",
        "--duration",
        "2s",
        "--scenarios",
        &scenarios.to_string_lossy(),
    ]
    .map(str::to_owned)
    .to_vec();
    let out = run(&args);

    let summary = summary(
        &out,
        &[
            ("ever-registered", "20"),
            ("failed", "0"),
            ("failures", "0"),
            ("deregistrations", "20"),
            ("dtls-failures", "0"),
        ],
    );
    let handshakes = count(summary, "dtls-handshakes");
    assert!(handshakes >= N as usize, "{summary}");
    let live = out
        .lines()
        .rfind(|l| l.starts_with("t="))
        .unwrap_or_else(|| panic!("no live line:\n{out}"));
    assert_eq!(field(live, "dtls"), Some("20/0"), "{live}");

    // The printed credentials are the store's, entry for entry.
    let text = std::fs::read_to_string(&printed).expect("the credentials file");
    let listed: Vec<SecurityInfo> = serde_json::from_str(&text).expect("security entries");
    let expected: Vec<SecurityInfo> = (0..N).map(|n| entry(&psk, n)).collect();
    assert_eq!(listed, expected);
    runtime.block_on(server.shutdown());
}

#[test]
fn simulate_10_clients_bootstrapping_over_dtls_through_a_fallback_configuration() {
    const N: usize = 10;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let security = Arc::new(FileSecurityStore::in_memory());
    let configs = Arc::new(FileBootstrapStore::in_memory(BootstrapDoc::default()));
    let (server, bootstrap) = runtime.block_on(async {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let mut options = ServerOptions::new(any, Arc::new(Registry::embedded()));
        options.dtls = Some(DtlsOptions::new(any, security.clone()));
        let server = start_server(options).expect("the server starts");
        let mut bo = BootstrapOptions::new(any, configs.clone());
        bo.dtls = Some(DtlsOptions::new(
            any,
            Arc::new(BootstrapCredentials(configs.clone())),
        ));
        bo.provision = Some(security.clone());
        (
            server,
            start_bootstrap(bo).expect("the bootstrap server starts"),
        )
    });
    let bs = bootstrap.dtls_addr().expect("a DTLS listener");
    // One fallback configuration: bootstrap identity bs-{ep} with a group key, an LwM2M
    // Server account over DTLS with identity {ep}.
    let yaml = format!(
        "patterns:\n  \"minimal-*\":\n    security:\n      \
         0: {{ uri: \"coaps://{bs}\", bootstrap_server: true, mode: psk, identity: \"bs-{{ep}}\", secret_key: \"00112233445566778899aabbccddeeff\" }}\n      \
         1: {{ uri: \"coaps://{}\", mode: psk, identity: \"{{ep}}\", secret_key: \"ffeeddccbbaa99887766554433221100\", short_server_id: 1 }}\n    \
         servers:\n      0: {{ short_server_id: 1, lifetime: 60 }}\n",
        server.dtls_addr().expect("a DTLS listener")
    );
    let doc = BootstrapDoc::from_yaml("bootstrap.yaml", &yaml).expect("a valid document");
    for (pattern, config) in doc.patterns {
        configs
            .put(ConfigKey::Pattern(pattern), config)
            .expect("a valid configuration");
    }
    let scenarios = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let args: Vec<String> = [
        "simulate",
        "--bootstrap",
        &format!("coaps://{bs}"),
        "--bootstrap-psk-identity",
        "bs-{ep}",
        "--bootstrap-psk-key",
        "00112233445566778899aabbccddeeff",
        "--clients",
        &N.to_string(),
        "--profile",
        "minimal-1.0",
        "--duration",
        "3s",
        "--scenarios",
        &scenarios.to_string_lossy(),
    ]
    .map(str::to_owned)
    .to_vec();
    let out = run(&args);
    let summary = summary(
        &out,
        &[
            ("ever-registered", "10"),
            ("failed", "0"),
            ("dtls-failures", "0"),
        ],
    );
    let handshakes = count(summary, "dtls-handshakes");
    assert!(handshakes >= 2 * N, "one with each server: {summary}");
    // The Bootstrap Server provisioned every client's LwM2M Server identity.
    let provisioned: BTreeSet<String> = security
        .all()
        .into_iter()
        .filter_map(|i| i.psk_identity().map(str::to_owned))
        .collect();
    let expected: BTreeSet<String> = (0..N).map(|n| format!("minimal-{n}")).collect();
    assert_eq!(provisioned, expected);
    runtime.block_on(async {
        server.shutdown().await;
        bootstrap.shutdown().await;
    });
}

/// A CA of one's own (handed over as PEM files, as a vendor's would be): `simulate --cert-ca
/// --cert-ca-key` issues every client a certificate with its endpoint name as CN, the
/// server (trusting that CA, its own certificate from the same CA) takes them all; a key
/// that is not the CA's is refused before anything starts.
#[test]
fn simulate_certificate_clients_from_a_ca_of_ones_own() {
    use lwm2m_dtls::CertificateConfig;
    use lwm2m_dtls::pki::{Purpose, TestCa, Validity};
    const N: usize = 5;
    let self_signed = |name: &str| {
        let ca = TestCa::new(name).expect("a CA");
        (ca.certificate().to_vec(), ca.private_key())
    };
    let (ca_der, ca_key) = self_signed("vendor CA");
    let vendor = TestCa::from_der(&ca_der, &ca_key).expect("the vendor CA");
    let issued = vendor
        .issue("server", &["127.0.0.1"], Purpose::Server, Validity::Current)
        .expect("a server certificate");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let server = runtime.block_on(async {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let mut options = ServerOptions::new(any, Arc::new(Registry::embedded()));
        let mut dtls = DtlsOptions::new(any, Arc::new(FileSecurityStore::in_memory()));
        dtls.certificate = Some(CertificateConfig {
            chain: vec![issued.certificate],
            private_key: issued.private_key,
            trust_anchors: vec![ca_der.clone()],
        });
        options.dtls = Some(dtls);
        start_server(options).expect("the server starts")
    });
    let dtls = server.dtls_addr().expect("a DTLS listener");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let pem_file = |name: &str, tag: &str, der: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem::encode(&pem::Pem::new(tag, der.to_vec()))).expect("written");
        path.to_string_lossy().into_owned()
    };
    let cert = pem_file("ca.pem", "CERTIFICATE", &ca_der);
    let key = pem_file("ca.key", "PRIVATE KEY", &ca_key);
    let scenarios = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let args = |key: &str| -> Vec<String> {
        [
            "simulate",
            "--server",
            &format!("coaps://{dtls}"),
            "--clients",
            &N.to_string(),
            "--cert-ca",
            &cert,
            "--cert-ca-key",
            key,
            "--profile",
            "minimal-1.0",
            "--duration",
            "2s",
            "--scenarios",
            &scenarios.to_string_lossy(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let out = run(&args(&key));
    let summary = summary(
        &out,
        &[
            ("ever-registered", "5"),
            ("failed", "0"),
            ("dtls-failures", "0"),
        ],
    );
    assert!(count(summary, "dtls-handshakes") >= N, "{summary}");

    let (_, stranger) = self_signed("someone else's CA");
    let wrong = pem_file("wrong.key", "PRIVATE KEY", &stranger);
    let refused = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(args(&wrong))
        .output()
        .expect("the binary runs");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("does not belong to the CA certificate"),
        "{err}"
    );
    runtime.block_on(server.shutdown());
}
