//! `lwm2m-harness serve` as a user runs it: a child process on loopback ports, driven
//! through its REST API, killed and started again on the same data folder.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

const TOKEN: &str = "test-token-0123";

struct Serve {
    child: Child,
    api: String,
    /// What it printed up to the REST API line.
    banner: String,
    /// Everything printed on stdout after the banner, once the process ends.
    rest: Option<JoinHandle<String>>,
}

impl Serve {
    fn start(data: &Path, extra: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
            .args([
                "serve",
                "--coap",
                "127.0.0.1:0",
                "--bootstrap",
                "127.0.0.1:0",
            ])
            .args(["--http", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut banner = String::new();
        let api = loop {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).expect("stdout readable") > 0,
                "serve exited before listening; it printed: {banner}"
            );
            banner.push_str(&line);
            if let Some(url) = line.trim().strip_prefix("REST API") {
                break url.trim().to_owned();
            }
        };
        // Keep reading so that the child never writes into a closed pipe.
        let rest = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        Serve {
            child,
            api,
            banner,
            rest: Some(rest),
        }
    }

    fn call(&self, method: &str, route: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        call(&self.api, method, route, body, Some(TOKEN))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(
    api: &str,
    method: &str,
    route: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{api}{route}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let with_auth = |r: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match &auth {
        Some(a) => r.header("Authorization", a),
        None => r,
    };
    let with_auth_body = |r: ureq::RequestBuilder<ureq::typestate::WithBody>| match &auth {
        Some(a) => r.header("Authorization", a),
        None => r,
    };
    let response = match method {
        "GET" => with_auth(agent.get(&url)).call(),
        "DELETE" => with_auth(agent.delete(&url)).call(),
        "PUT" => with_auth_body(agent.put(&url))
            .header("Content-Type", "application/json")
            .send(body.unwrap_or("")),
        "POST" => with_auth_body(agent.post(&url))
            .header("Content-Type", "application/json")
            .send(body.unwrap_or("")),
        m => panic!("method {m}"),
    };
    let mut response = response.expect("the API answers");
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .expect("a readable body");
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"))
    };
    (status, json)
}

const PSK: &str = r#"{"endpoint": "dev-1", "credentials": {"mode": "psk", "identity": "id-1", "key": "00112233"}}"#;
const BOOTSTRAP: &str = r#"{"pattern": "dev-*", "config": {
    "security": {"0": {"uri": "coap://127.0.0.1:5683", "mode": "psk", "identity": "{ep}",
                       "secret_key": "a1b2", "short_server_id": 1}},
    "servers": {"0": {"short_server_id": 1, "lifetime": 300}}}}"#;

#[test]
fn everything_configured_through_rest_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let s = Serve::start(&data, &["--token", TOKEN]);
        assert_eq!(s.call("PUT", "/security/clients", Some(PSK)).0, 201);
        assert_eq!(s.call("PUT", "/bootstrap", Some(BOOTSTRAP)).0, 201);
        let own = r#"{"servers": {"0": {"short_server_id": 2, "lifetime": 60}}}"#;
        assert_eq!(s.call("PUT", "/bootstrap/meter-9", Some(own)).0, 201);
        // Dropping kills with SIGKILL: no chance to flush anything.
    }
    let s = Serve::start(&data, &["--token", TOKEN]);
    let (status, info) = s.call("GET", "/security/clients/dev-1", None);
    assert_eq!(status, 200);
    assert_eq!(info["credentials"]["identity"], "id-1");
    assert_eq!(info["credentials"]["key"], "<redacted>");
    let (status, resolved) = s.call("GET", "/bootstrap/dev-42?resolve=true", None);
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["pattern"], "dev-*");
    assert_eq!(resolved["config"]["security"]["0"]["identity"], "dev-42");
    assert_eq!(
        resolved["config"]["security"]["0"]["secret_key"],
        "<redacted>"
    );
    let (_, all) = s.call("GET", "/bootstrap", None);
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    // The key is on disk, in clear, for the server's own use only.
    let stored = std::fs::read_to_string(data.join("security.yaml")).unwrap();
    assert!(stored.contains("00112233"));
    // The identity still belongs to dev-1 after the restart.
    let other =
        r#"{"endpoint": "dev-2", "credentials": {"mode": "psk", "identity": "id-1", "key": "01"}}"#;
    assert_eq!(s.call("PUT", "/security/clients", Some(other)).0, 409);
}

#[test]
fn a_generated_token_is_kept_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Serve::start(&data, &[]);
    let token = std::fs::read_to_string(data.join("api-token")).unwrap();
    let token = token.trim();
    assert_eq!(token.len(), 64);
    assert_eq!(call(&s.api, "GET", "/clients", None, None).0, 401);
    assert_eq!(call(&s.api, "GET", "/clients", None, Some("wrong")).0, 401);
    let (status, clients) = call(&s.api, "GET", "/clients", None, Some(token));
    assert_eq!((status, clients), (200, serde_json::json!([])));

    let pid = s.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = s.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let rest = s.rest.take().unwrap().join().unwrap();
    assert!(rest.contains("stopped"), "{rest}");

    let s = Serve::start(&data, &[]);
    assert_eq!(call(&s.api, "GET", "/clients", None, Some(token)).0, 200);
}

#[test]
fn a_bad_config_file_is_named_with_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("serve.yaml");
    std::fs::write(&cfg, "http: 127.0.0.1:0\ncoap_port: 5683\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("serve.yaml:2") && err.contains("coap_port"),
        "{err}"
    );
}

/// `serve --coaps --cert --cert-key --ca`: a certificate client (Security mode 2,
/// `TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`) registers under its certificate's common name over
/// a real handshake; another name is refused 4.03; an incomplete set of flags is refused at
/// start with a one-line error.
#[test]
fn certificate_clients_register_under_their_common_name() {
    use lwm2m_dtls::pki::{Purpose, TestCa, Validity};
    use lwm2m_dtls::{ClientConfig, Credentials, UdpDtlsClient};
    use lwm2m_proto::coap::{MessageClass, RequestType, ResponseType, message};

    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("serve test CA").unwrap();
    let server = ca
        .issue(
            "lwm2m-server",
            &["127.0.0.1"],
            Purpose::Server,
            Validity::Current,
        )
        .unwrap();
    let pem_file = |name: &str, tag: &str, der: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem::encode(&pem::Pem::new(tag, der.to_vec()))).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let cert = pem_file("server.pem", "CERTIFICATE", &server.certificate);
    let key = pem_file("server.key", "PRIVATE KEY", &server.private_key);
    let anchors = pem_file("ca.pem", "CERTIFICATE", ca.certificate());

    let out = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args([
            "serve",
            "--coaps",
            "127.0.0.1:0",
            "--cert",
            &cert,
            "--ca",
            &anchors,
        ])
        .arg("--data")
        .arg(dir.path().join("unused"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cert-key"), "{err}");

    let s = Serve::start(
        &dir.path().join("data"),
        &[
            "--token",
            TOKEN,
            "--coaps",
            "127.0.0.1:0",
            "--cert",
            &cert,
            "--cert-key",
            &key,
            "--ca",
            &anchors,
        ],
    );
    let coaps: std::net::SocketAddr = s
        .banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("LwM2M Server      coaps://"))
        .and_then(|l| l.strip_suffix(" (PSK, certificates)"))
        .unwrap_or_else(|| panic!("no certificate listener in {}", s.banner))
        .parse()
        .unwrap();
    let client = ca
        .issue("dev-cert", &[], Purpose::Client, Validity::Current)
        .unwrap();
    let config = ClientConfig::new(&Credentials::Certificate {
        certificate: ca.config(client),
        server_name: "127.0.0.1".into(),
    })
    .unwrap();
    let register = |ep: &str, mid: u16| {
        let mut p = message::request(RequestType::Post, "/rd");
        message::add_query(&mut p, &format!("ep={ep}"));
        p.header.message_id = mid;
        p.set_token(mid.to_be_bytes().to_vec());
        p.payload = b"</3/0>".to_vec();
        p.to_bytes().unwrap()
    };
    let codes = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut session = UdpDtlsClient::connect(coaps, &config).await.unwrap();
        let mut codes = Vec::new();
        for (ep, mid) in [("dev-other", 1), ("dev-cert", 2)] {
            session.send(&register(ep, mid)).await.unwrap();
            let answer = tokio::time::timeout(std::time::Duration::from_secs(30), session.recv())
                .await
                .expect("an answer")
                .unwrap();
            codes.push(message::decode(&answer).unwrap().header.code);
        }
        codes
    });
    assert_eq!(
        codes,
        [
            MessageClass::Response(ResponseType::Forbidden),
            MessageClass::Response(ResponseType::Created)
        ]
    );
    let (status, client) = s.call("GET", "/clients/dev-cert", None);
    assert_eq!(status, 200, "{client}");
}
