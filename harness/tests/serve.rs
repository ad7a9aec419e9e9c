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
