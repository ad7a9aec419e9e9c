//! `serve --store redis://` as a cluster: two `serve` child processes sharing a real
//! `redis-server` (Debian package `redis-server`, started here on a free loopback port and
//! ended by its PID), devices speaking raw CoAP from loopback sockets.
//!
//! A test whose `redis-server` is missing fails and says how to install it.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lwm2m_proto::coap::{
    CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType, message,
};

const TOKEN: &str = "cluster-token-0123";

/// A `redis-server` of this test: its own port and folder, no persistence.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        // A free port: bound, read and released (redis-server binds it right after).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): install it with `apt-get install -y \
                     redis-server` (scripts/test does)"
                )
            });
        let mut redis = Redis {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while redis.command("PING") != "+PONG" {
            if let Ok(Some(status)) = redis.child.try_wait() {
                panic!("redis-server exited: {status}");
            }
            assert!(Instant::now() < deadline, "redis-server does not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// One inline command; its first answer line ("" if unreachable).
    fn command(&self, command: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(format!("{command}\r\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        line.trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `serve` instance.
struct Serve {
    child: Child,
    api: String,
    coap: SocketAddr,
    coaps: Option<SocketAddr>,
    instance: String,
    dir: tempfile::TempDir,
}

impl Serve {
    fn start(redis: &Redis, instance: &str, extra: &[&str]) -> Serve {
        Self::start_at(redis, instance, "127.0.0.1:0", extra)
    }

    /// With the LwM2M Server on `coap` (a restart keeps its address).
    fn start_at(redis: &Redis, instance: &str, coap: &str, extra: &[&str]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
            .args(["serve", "--coap", coap, "--bootstrap", "127.0.0.1:0"])
            .args(["--http", "127.0.0.1:0", "--token", TOKEN, "--data"])
            .arg(dir.path())
            .args(["--store", &redis.url(), "--instance", instance])
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("the binary starts");
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut banner = String::new();
        let mut coap = None;
        let mut coaps = None;
        let api = loop {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).expect("stdout readable") > 0,
                "serve exited before listening; it printed: {banner}"
            );
            banner.push_str(&line);
            if let Some(url) = line.trim().strip_prefix("LwM2M Server")
                && let Some(addr) = url.trim().strip_prefix("coap://")
            {
                coap = addr.parse().ok();
            }
            if let Some(url) = line.trim().strip_prefix("LwM2M Server")
                && let Some(addr) = url.trim().strip_prefix("coaps://")
            {
                coaps = addr.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(url) = line.trim().strip_prefix("REST API") {
                break url.trim().to_owned();
            }
        };
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
        });
        Serve {
            child,
            api,
            coap: coap.expect("the banner names the CoAP address"),
            coaps,
            instance: instance.to_string(),
            dir,
        }
    }

    fn call(&self, method: &str, route: &str, body: Option<&str>) -> (u16, String) {
        self.call_with(&agent(), method, route, body)
    }

    /// The same, over `agent`'s connections (kept alive between calls).
    fn call_with(
        &self,
        agent: &ureq::Agent,
        method: &str,
        route: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let url = format!("{}{route}", self.api);
        let auth = format!("Bearer {TOKEN}");
        let response = match method {
            "GET" => agent.get(&url).header("Authorization", &auth).call(),
            "DELETE" => agent.delete(&url).header("Authorization", &auth).call(),
            "PUT" => agent
                .put(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or("")),
            "POST" => agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or("")),
            m => panic!("method {m}"),
        };
        let mut response = response.expect("the API answers");
        let status = response.status().as_u16();
        (
            status,
            response.body_mut().read_to_string().unwrap_or_default(),
        )
    }

    /// What it logged so far (debug level).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn metric(&self, name: &str) -> Option<u64> {
        let url = self.api.replace("/api", "/metrics");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .ok()?;
        let text = r.body_mut().read_to_string().ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the instance logged: its folder goes with it.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines
                .get(lines.len().saturating_sub(80)..)
                .unwrap_or_default();
            eprintln!(
                "--- serve instance {}: the last {} lines of its log ---",
                self.instance,
                tail.len()
            );
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// An HTTP client that takes error statuses as answers.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// A device: one UDP socket, raw CoAP.
struct Device {
    socket: UdpSocket,
    mid: u16,
}

impl Device {
    fn new() -> Device {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Device { socket, mid: 100 }
    }

    /// Sends a confirmable request to `to` and waits for its piggybacked answer,
    /// retransmitting a few times.
    fn exchange(&mut self, to: SocketAddr, mut request: Packet) -> Packet {
        self.mid = self.mid.wrapping_add(1);
        request.header.message_id = self.mid;
        request.set_token(self.mid.to_be_bytes().to_vec());
        let bytes = request.to_bytes().unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..20 {
            self.socket.send_to(&bytes, to).unwrap();
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                let Ok((n, _)) = self.socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Ok(p) = message::decode(&buf[..n])
                    && p.header.message_id == self.mid
                    && matches!(p.header.code, MessageClass::Response(_))
                {
                    return p;
                }
            }
        }
        panic!("no answer from {to}");
    }

    fn register(&mut self, to: SocketAddr, ep: &str, lifetime: u32) -> String {
        let mut r = message::request(RequestType::Post, "/rd");
        for q in [
            format!("ep={ep}"),
            format!("lt={lifetime}"),
            "lwm2m=1.1".into(),
            "b=U".into(),
        ] {
            message::add_query(&mut r, &q);
        }
        message::set_option(&mut r, CoapOption::ContentFormat, message::uint_bytes(40));
        r.payload = b"</1/0>,</3/0>".to_vec();
        let answer = self.exchange(to, r);
        assert_eq!(
            answer.header.code,
            MessageClass::Response(ResponseType::Created)
        );
        let location: Vec<String> = answer
            .get_option(CoapOption::LocationPath)
            .into_iter()
            .flatten()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        assert_eq!(location.len(), 2, "{location:?}");
        location[1].clone()
    }

    fn update(&mut self, to: SocketAddr, id: &str) -> MessageClass {
        let r = message::request(RequestType::Post, &format!("/rd/{id}"));
        self.exchange(to, r).header.code
    }

    /// Answers the next request of a server (a Read of /3/0/0 with `value`, an Observe
    /// with Observe 0 and `value`); returns where it came from and its path.
    fn serve_one(&mut self, value: &str) -> (SocketAddr, String, Packet) {
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no request from the server");
            let Ok((n, from)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(request) = message::decode(&buf[..n]) else {
                continue;
            };
            if !matches!(request.header.code, MessageClass::Request(_)) {
                continue;
            }
            let read = request.header.code == MessageClass::Request(RequestType::Get);
            let mut answer = if read {
                message::response(ResponseType::Content, value.as_bytes().to_vec())
            } else {
                message::response(ResponseType::Changed, Vec::new())
            };
            answer.header.set_type(MessageType::Acknowledgement);
            answer.header.message_id = request.header.message_id;
            answer.set_token(request.get_token().to_vec());
            if read {
                message::set_option(
                    &mut answer,
                    CoapOption::ContentFormat,
                    message::uint_bytes(0),
                );
            }
            if message::observe_value(&request).is_some() {
                message::set_option(&mut answer, CoapOption::Observe, message::uint_bytes(0));
            }
            self.socket
                .send_to(&answer.to_bytes().unwrap(), from)
                .unwrap();
            return (from, message::uri_path(&request), request);
        }
    }

    /// Sends a notification (non-confirmable) of the observation `request` made.
    fn notify(&mut self, to: SocketAddr, request: &Packet, seq: u32, value: &str) {
        let mut n = message::response(ResponseType::Content, value.as_bytes().to_vec());
        n.header.set_type(MessageType::NonConfirmable);
        self.mid = self.mid.wrapping_add(1);
        n.header.message_id = self.mid;
        n.set_token(request.get_token().to_vec());
        message::set_option(&mut n, CoapOption::ContentFormat, message::uint_bytes(0));
        message::set_option(&mut n, CoapOption::Observe, message::uint_bytes(seq));
        self.socket.send_to(&n.to_bytes().unwrap(), to).unwrap();
    }
}

/// Calls `f` in a thread while the device answers one request; `f`'s answer and where the
/// request came from.
fn with_answer<T: Send>(
    device: &mut Device,
    value: &str,
    f: impl FnOnce() -> T + Send,
) -> (T, SocketAddr, String, Packet) {
    std::thread::scope(|s| {
        let call = s.spawn(f);
        let (from, path, request) = device.serve_one(value);
        (call.join().unwrap(), from, path, request)
    })
}

/// Polls `f` until it holds, for at most `limit`.
fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn register_via_a_read_via_b_kill_a_update_via_b() {
    let redis = Redis::start();
    let a = Serve::start(&redis, "a", &[]);
    let b = Serve::start(&redis, "b", &[]);
    let mut device = Device::new();
    let id = device.register(a.coap, "dev-1", 300);

    // The registration is in Redis: B lists it.
    let (status, body) = b.call("GET", "/clients/dev-1", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&id), "{body}");

    // A read through B leaves from A's socket (the device's NAT binding) and comes back.
    let ((status, body), from, path, _) = with_answer(&mut device, "Acme", || {
        b.call("GET", "/clients/dev-1/3/0/0", None)
    });
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Acme"), "{body}");
    assert_eq!(from, a.coap, "the request leaves from A");
    assert_eq!(path, "/3/0/0");

    // A write through B, the same way.
    let ((status, body), from, path, request) = with_answer(&mut device, "", || {
        b.call("PUT", "/clients/dev-1/1/0/1", Some(r#"{"value": 120}"#))
    });
    assert!(status < 300, "{status} {body}");
    assert_eq!(from, a.coap);
    assert_eq!(path, "/1/0/1");
    assert_eq!(request.header.code, MessageClass::Request(RequestType::Put));

    // A dies; the device's next Update reaches B (the load balancer) and is accepted.
    drop(a);
    assert_eq!(
        device.update(b.coap, &id),
        MessageClass::Response(ResponseType::Changed)
    );
    // B owns it now: a read through B leaves from B.
    let ((status, body), from, _, _) = with_answer(&mut device, "Acme 2", || {
        b.call("GET", "/clients/dev-1/3/0/0", None)
    });
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Acme 2"), "{body}");
    assert_eq!(from, b.coap, "B took the client over");
    // An unknown registration id is still refused.
    assert_eq!(
        device.update(b.coap, "nosuchid"),
        MessageClass::Response(ResponseType::NotFound)
    );
}

#[test]
fn observations_made_through_b_notify_every_instance() {
    let redis = Redis::start();
    let a = Serve::start(&redis, "a", &[]);
    let b = Serve::start(&redis, "b", &[]);
    let mut device = Device::new();
    device.register(a.coap, "dev-o", 300);

    // Listen to B's event stream (raw HTTP: server-sent events).
    let addr = b.api.trim_start_matches("http://").trim_end_matches("/api");
    let mut sse = TcpStream::connect(addr).unwrap();
    write!(
        sse,
        "GET /api/event?ep=dev-o HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    sse.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let ((status, body), from, path, request) = with_answer(&mut device, "21.5", || {
        b.call("POST", "/clients/dev-o/3/0/0/observe", None)
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(from, a.coap);
    assert_eq!(path, "/3/0/0");
    assert_eq!(message::observe_value(&request), Some(0));

    // The notification reaches A (its observation) and B's event stream.
    device.notify(a.coap, &request, 1, "22.75");
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    eventually(Duration::from_secs(20), "a NOTIFICATION on B", || {
        if let Ok(n) = sse.read(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        seen.contains("NOTIFICATION") && seen.contains("22.75")
    });
    assert!(seen.contains("\"instance\":\"a\""), "{seen}");
}

#[test]
fn credentials_and_bootstrap_configurations_are_shared() {
    let redis = Redis::start();
    let a = Serve::start(&redis, "a", &[]);
    let b = Serve::start(&redis, "b", &[]);
    let psk = r#"{"endpoint": "dev-s", "credentials": {"mode": "psk", "identity": "id-s", "key": "00112233"}}"#;
    assert_eq!(a.call("PUT", "/security/clients", Some(psk)).0, 201);
    let (status, body) = b.call("GET", "/security/clients/dev-s", None);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("id-s") && body.contains("<redacted>") && !body.contains("00112233"),
        "{body}"
    );
    // The PSK identity belongs to dev-s across the cluster.
    let taken =
        r#"{"endpoint": "dev-t", "credentials": {"mode": "psk", "identity": "id-s", "key": "01"}}"#;
    assert_eq!(b.call("PUT", "/security/clients", Some(taken)).0, 409);
    // A new identity for dev-s frees the old one (no ghost in the index).
    let moved = r#"{"endpoint": "dev-s", "credentials": {"mode": "psk", "identity": "id-s2", "key": "02"}}"#;
    assert!(b.call("PUT", "/security/clients", Some(moved)).0 < 300);
    assert_eq!(a.call("PUT", "/security/clients", Some(taken)).0, 201);
    let (status, _) = a.call("DELETE", "/security/clients/dev-t", None);
    assert!(status < 300);
    assert_eq!(b.call("GET", "/security/clients/dev-t", None).0, 404);

    let bootstrap = r#"{"pattern": "dev-*", "config": {
        "security": {"0": {"uri": "coap://127.0.0.1:5683", "mode": "psk", "identity": "{ep}",
                           "secret_key": "a1b2", "short_server_id": 1}},
        "servers": {"0": {"short_server_id": 1, "lifetime": 300}}}}"#;
    assert_eq!(a.call("PUT", "/bootstrap", Some(bootstrap)).0, 201);
    let (status, body) = b.call("GET", "/bootstrap/dev-42?resolve=true", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("dev-*") && body.contains("dev-42"), "{body}");
    let own = r#"{"servers": {"0": {"short_server_id": 2, "lifetime": 60}}}"#;
    assert_eq!(b.call("PUT", "/bootstrap/dev-7", Some(own)).0, 201);
    let (status, body) = a.call("GET", "/bootstrap", None);
    assert_eq!(status, 200);
    assert!(body.contains("dev-7") && body.contains("dev-*"), "{body}");
    assert!(!body.contains("a1b2"), "keys are redacted: {body}");
    // Both survive the instances: a third one started now sees them.
    drop((a, b));
    let c = Serve::start(&redis, "c", &[]);
    assert_eq!(c.call("GET", "/security/clients/dev-s", None).0, 200);
    assert_eq!(c.call("GET", "/bootstrap/dev-7", None).0, 200);
}

#[test]
fn the_cluster_scenario_runs_redis_and_two_instances_as_processes() {
    // Its fixed ports (6390, 5710-5711, 5810-5811, 8190-8191) are this test's only.
    let out = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .current_dir(&root)
        .args([
            "run",
            "scenarios/experiments/cluster.yaml",
            "--quiet",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("0 failed"), "{stdout}");
    let folder = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .next()
        .expect("a run folder")
        .path();
    let log = |name: &str| {
        std::fs::read_to_string(folder.join("processes").join(format!("{name}.log")))
            .unwrap_or_else(|e| panic!("{name}.log: {e}"))
    };
    // Each instance registered its half of the fleet.
    let (a, b) = (log("serve-a"), log("serve-b"));
    assert!(a.contains("left-0") && !a.contains("right-0"), "{a}");
    assert!(b.contains("right-0") && !b.contains("left-0"), "{b}");
    assert!(log("redis").contains("Ready to accept connections"));
}

#[test]
fn a_psk_put_through_b_lets_a_client_handshake_with_a() {
    let redis = Redis::start();
    let a = Serve::start(&redis, "a", &["--coaps", "127.0.0.1:0"]);
    let b = Serve::start(&redis, "b", &["--coaps", "127.0.0.1:0"]);
    let psk = r#"{"endpoint": "dtls-1", "credentials": {"mode": "psk", "identity": "id-dtls-1", "key": "000102030405060708090a0b0c0d0e0f"}}"#;
    assert_eq!(b.call("PUT", "/security/clients", Some(psk)).0, 201);
    let coaps = a.coaps.expect("A listens for DTLS");
    // A real DTLS PSK handshake with A, whose key lookup by identity goes to Redis.
    let run = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(["simulate", "--profile", "sensor-1.1", "--clients", "1"])
        .args(["--endpoint", "dtls-1", "--psk-identity", "id-dtls-1"])
        .args(["--psk-key", "000102030405060708090a0b0c0d0e0f"])
        .args(["--duration", "5s", "--min-registered", "100%", "--server"])
        .arg(format!("coaps://{coaps}"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{out}");
    assert!(out.contains("registrations=1"), "{out}");
    // A wrong key for the identity: refused.
    let run = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(["simulate", "--profile", "sensor-1.1", "--clients", "1"])
        .args(["--endpoint", "dtls-1", "--psk-identity", "id-dtls-1"])
        .args(["--psk-key", "ffff", "--duration", "2s"])
        .args(["--min-registered", "100%", "--server"])
        .arg(format!("coaps://{coaps}"))
        .output()
        .unwrap();
    assert!(
        !run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
    // The key is in Redis, never in the API's answers nor the instances' logs.
    let (_, body) = a.call("GET", "/security/clients/dtls-1", None);
    assert!(!body.contains("0001020304"), "{body}");
    for serve in [&a, &b] {
        let log = serve.log();
        assert!(!log.is_empty() && !log.contains("0001020304"), "{log}");
    }
}

/// An instance's event stream of one endpoint (raw HTTP, server-sent events).
struct Events {
    stream: TcpStream,
    seen: String,
}

impl Events {
    fn open(serve: &Serve, ep: &str) -> Events {
        let addr = serve
            .api
            .trim_start_matches("http://")
            .trim_end_matches("/api")
            .to_owned();
        let mut stream = TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "GET /api/event?ep={ep} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Events {
            stream,
            seen: String::new(),
        }
    }

    /// Reads what arrived; true once `text` was seen.
    fn has(&mut self, text: &str) -> bool {
        let mut buf = [0u8; 4096];
        if let Ok(n) = self.stream.read(&mut buf) {
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        self.seen.contains(text)
    }
}

#[test]
fn an_observation_survives_a_restart_of_its_instance() {
    let redis = Redis::start();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let at = format!("127.0.0.1:{port}");
    let a = Serve::start_at(&redis, "a", &at, &[]);
    let b = Serve::start(&redis, "b", &[]);
    let mut device = Device::new();
    device.register(a.coap, "dev-r", 300);
    let ((status, body), from, _, request) = with_answer(&mut device, "20.0", || {
        b.call("POST", "/clients/dev-r/3/0/0/observe", None)
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(from, a.coap);

    // A restarts (killed, started again on the same address and name).
    drop(a);
    let a = Serve::start_at(&redis, "a", &at, &[]);
    let mut events = Events::open(&b, "dev-r");
    // The device's notifications (same token) are the observation's again; B's event
    // stream carries them. Sent again until seen (as the device would retransmit).
    let mut seq = 1;
    eventually(Duration::from_secs(30), "the notification on B", || {
        seq += 1;
        device.notify(a.coap, &request, seq, "Acme 23");
        events.has("Acme 23")
    });
    assert!(events.seen.contains("NOTIFICATION"), "{}", events.seen);
    assert!(
        events.seen.contains("\"instance\":\"a\""),
        "{}",
        events.seen
    );
    // A holds the registration again: its API reads it through its own socket.
    let ((status, body), from, _, _) = with_answer(&mut device, "Acme 24", || {
        a.call("GET", "/clients/dev-r/3/0/0", None)
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(from, a.coap);
}

/// Sends `count` confirmable requests (`request(i, mid, token)`) to `to` from one socket,
/// a window at a time, resending the ones unanswered for long; each answer must carry
/// `code`. Returns the answers in order.
fn exchange_many(
    to: SocketAddr,
    count: usize,
    code: ResponseType,
    request: impl Fn(usize) -> Packet,
) -> Vec<Packet> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let window = 256usize;
    let bytes = |i: usize| {
        let mut r = request(i);
        r.header.message_id = (i % 65536) as u16;
        r.set_token((i as u32).to_be_bytes().to_vec());
        r.to_bytes().unwrap()
    };
    let mut answers: Vec<Option<Packet>> = vec![None; count];
    let mut finished = 0;
    let mut next = 0;
    let mut in_flight: std::collections::VecDeque<(usize, Instant)> = Default::default();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(600);
    while finished < count {
        assert!(Instant::now() < deadline, "{finished} of {count} answered");
        while in_flight.len() < window && next < count {
            socket.send_to(&bytes(next), to).unwrap();
            in_flight.push_back((next, Instant::now()));
            next += 1;
        }
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                let Ok(p) = message::decode(&buf[..n]) else {
                    continue;
                };
                let token = p.get_token();
                if token.len() == 4 {
                    let i = u32::from_be_bytes([token[0], token[1], token[2], token[3]]) as usize;
                    if i < count && answers[i].is_none() {
                        assert_eq!(p.header.code, MessageClass::Response(code), "request {i}");
                        answers[i] = Some(p);
                        finished += 1;
                    }
                }
            }
            Err(_) => {
                // Lost on a loaded machine: send again what waited long.
                for (i, at) in in_flight.iter_mut() {
                    if answers[*i].is_none() && at.elapsed() > Duration::from_secs(2) {
                        socket.send_to(&bytes(*i), to).unwrap();
                        *at = Instant::now();
                    }
                }
            }
        }
        while in_flight
            .front()
            .is_some_and(|(i, _)| answers[*i].is_some())
        {
            in_flight.pop_front();
        }
    }
    answers.into_iter().flatten().collect()
}

/// Registers `{prefix}-{i}` for i in 0..count through `to`; their registration ids.
fn register_many(to: SocketAddr, prefix: &str, count: usize, lifetime: u32) -> Vec<String> {
    let answers = exchange_many(to, count, ResponseType::Created, |i| {
        let mut r = message::request(RequestType::Post, "/rd");
        message::add_query(&mut r, &format!("ep={prefix}-{i}"));
        message::add_query(&mut r, &format!("lt={lifetime}"));
        message::add_query(&mut r, "b=U");
        message::add_query(&mut r, "lwm2m=1.1");
        r
    });
    answers
        .iter()
        .map(|p| {
            let path: Vec<Vec<u8>> = p
                .get_option(CoapOption::LocationPath)
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            String::from_utf8_lossy(path.get(1).expect("rd/{id}")).into_owned()
        })
        .collect()
}

/// Updates the registrations `ids` through `to` with a new lifetime (2.04 each).
fn update_many(to: SocketAddr, ids: &[String], lifetime: u32) {
    exchange_many(to, ids.len(), ResponseType::Changed, |i| {
        let mut r = message::request(RequestType::Post, &format!("/rd/{}", ids[i]));
        message::add_query(&mut r, &format!("lt={lifetime}"));
        r
    });
}

/// How many registrations the large test makes (default 20,000 in `cargo test`; the full
/// 100,000: `CLUSTER_REGISTRATIONS=100000`).
fn many() -> usize {
    std::env::var("CLUSTER_REGISTRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

#[test]
fn many_registrations_across_two_instances_expire_in_redis() {
    let count = many();
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "limits: {{ max_registrations: {count}, max_registrations_per_address: {count} }}\n"
        ),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let a = Serve::start(&redis, "a", &["--config", &config]);
    let b = Serve::start(&redis, "b", &["--config", &config]);
    let half = count / 2;
    let started = Instant::now();
    let (ids_a, ids_b) = std::thread::scope(|s| {
        let a = s.spawn(|| register_many(a.coap, "a", half, 86_400));
        let b = s.spawn(|| register_many(b.coap, "b", count - half, 86_400));
        (a.join().unwrap(), b.join().unwrap())
    });
    let took = started.elapsed();
    println!(
        "{count} registrations across 2 instances in {took:?} ({:.0}/s)",
        count as f64 / took.as_secs_f64()
    );
    // Both instances see every registration (the shared index in Redis).
    assert_eq!(a.metric("lwm2m_registrations"), Some(count as u64));
    assert_eq!(b.metric("lwm2m_registrations"), Some(count as u64));
    let (status, body) = a.call("GET", &format!("/clients/b-{}", count - half - 1), None);
    assert_eq!(status, 200, "{body}");
    // Every client moves to the other instance (the load balancer), with a short lifetime:
    // each Update is looked up in Redis and taken over there.
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| update_many(b.coap, &ids_a, 2));
        s.spawn(|| update_many(a.coap, &ids_b, 2));
    });
    println!(
        "{count} Updates taken over across 2 instances in {:?}",
        started.elapsed()
    );
    // Only the new lifetime lets them expire: Redis expires them (key TTLs); the index is swept by whichever instance reads it.
    drop(a);
    eventually(
        Duration::from_secs(120),
        "every registration expired",
        || b.metric("lwm2m_registrations") == Some(0),
    );
    eventually(Duration::from_secs(30), "no key left behind", || {
        redis.command("DBSIZE") == ":0"
    });
}

/// Answers every request on `socket` (2.05 "bench" to a GET, 2.04 to anything else) until
/// `stop`; the device side of the benchmark's reads.
fn answer_all(socket: &UdpSocket, stop: &std::sync::atomic::AtomicBool) {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(request) = message::decode(&buf[..n]) else {
            continue;
        };
        if !matches!(request.header.code, MessageClass::Request(_)) {
            continue;
        }
        let mut answer = message::response(ResponseType::Content, b"bench".to_vec());
        answer.header.set_type(MessageType::Acknowledgement);
        answer.header.message_id = request.header.message_id;
        answer.set_token(request.get_token().to_vec());
        message::set_option(
            &mut answer,
            CoapOption::ContentFormat,
            message::uint_bytes(0),
        );
        let _ = socket.send_to(&answer.to_bytes().unwrap(), from);
    }
}

/// Registrations/s and REST reads/s of a cluster of `instances`: reads through the
/// instances' APIs round-robin (so with two, half are forwarded to the owner), then reads
/// through each client's owner only.
fn bench_cluster(instances: usize, clients: usize, reads: usize) -> (f64, f64, f64) {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "limits: {{ max_registrations: {limit}, max_registrations_per_address: {limit} }}\n",
            limit = clients + 1000
        ),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let names = ["a", "b", "c", "d"];
    let serves: Vec<Serve> = (0..instances)
        .map(|i| Serve::start(&redis, names[i], &["--config", &config]))
        .collect();
    // Registrations: one device socket per instance, registering its share.
    let sockets: Vec<UdpSocket> = (0..instances)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let started = Instant::now();
    std::thread::scope(|s| {
        for (i, serve) in serves.iter().enumerate() {
            let share = clients / instances;
            let to = serve.coap;
            s.spawn(move || register_many(to, names[i], share, 86_400));
        }
    });
    let registrations = clients as f64 / started.elapsed().as_secs_f64();
    // Reads: the devices of each instance answer from one socket per instance; the
    // registrations above came from other sockets, so register the read targets again from
    // the answering sockets first (100 per instance).
    let targets = 100usize;
    for (i, (serve, socket)) in serves.iter().zip(&sockets).enumerate() {
        let mut device = Device {
            socket: socket.try_clone().unwrap(),
            mid: 1,
        };
        device
            .socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        for k in 0..targets {
            device.register(serve.coap, &format!("read-{}-{k}", names[i]), 86_400);
        }
    }
    let round_robin = read_rate(&serves, &sockets, &names, targets, reads, false);
    let direct = read_rate(&serves, &sockets, &names, targets, reads, true);
    (registrations, round_robin, direct)
}

/// REST reads/s of `reads` reads of the `targets` read clients of each instance, by 8
/// threads: through the owner only (`direct`) or round-robin through every instance.
fn read_rate(
    serves: &[Serve],
    sockets: &[UdpSocket],
    names: &[&str],
    targets: usize,
    reads: usize,
    direct: bool,
) -> f64 {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let threads = 8usize;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for socket in sockets {
            let stop = &stop;
            s.spawn(move || answer_all(socket, stop));
        }
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (serves, next) = (&serves, &next);
                s.spawn(move || {
                    let agent = agent();
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n >= reads {
                            break;
                        }
                        let owner_index = (n / serves.len()) % serves.len();
                        let via = match direct {
                            true => &serves[owner_index],
                            false => &serves[n % serves.len()],
                        };
                        let owner = names[owner_index];
                        let ep = format!("read-{owner}-{}", n % targets);
                        let (status, body) =
                            via.call_with(&agent, "GET", &format!("/clients/{ep}/3/0/0"), None);
                        assert_eq!(status, 200, "{body}");
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    reads as f64 / started.elapsed().as_secs_f64()
}

/// The cluster benchmark (not a test: run it on purpose, in release):
/// `cargo test --release -p lwm2m-harness --test cluster -- --ignored --nocapture bench`
/// (`BENCH_CLIENTS`, `BENCH_READS` to change the sizes).
#[test]
#[ignore = "a benchmark: run with --ignored --nocapture, in release"]
fn bench_one_instance_vs_two() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (clients, reads) = (env("BENCH_CLIENTS", 50_000), env("BENCH_READS", 20_000));
    for instances in [1, 2] {
        let (regs, round_robin, direct) = bench_cluster(instances, clients, reads);
        println!(
            "cluster bench: {instances} instance(s): {regs:.0} registrations/s ({clients} \
             clients); REST reads/s: {direct:.0} through the owner, {round_robin:.0} \
             round-robin through the instances"
        );
    }
}
