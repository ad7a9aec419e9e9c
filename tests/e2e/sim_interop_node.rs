//! Interoperability with an independently written LwM2M Server: npm `lwm2m-node-lib`'s
//! server (a pre-1.0-era peer), driven through `interop/node/server.js` (JSON lines on
//! stdout, JSON commands on stdin). Simulated minimal-1.0 clients register with it, are
//! read (Accept text/plain) and written (Content-Format 1541, the pre-1.0 text number),
//! and de-register; both sides are checked.
//!
//! Node.js and the npm module are required: `scripts/test` installs the module with
//! `npm ci --prefix interop/node`. Without them this test fails and says so.
// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lwm2m_proto::registry::Registry;
use lwm2m_simulator::fleet::{Fleet, FleetConfig, ProfileClients, Targets};
use lwm2m_simulator::network::NetworkModel;
use lwm2m_simulator::profile::load_profile;
use lwm2m_simulator::quirks::QuirkPacks;
use serde_json::{Value as Json, json};

use crate::fleet_support::{counters_until, eventually};

const INSTALL: &str = "install Node.js and run `npm ci --prefix interop/node` in the repository root (scripts/test does)";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `node interop/node/server.js PORT`, its output lines collected, killed on drop.
struct NodeServer {
    child: Child,
    stdin: ChildStdin,
    lines: Arc<Mutex<Vec<Json>>>,
    next_id: u64,
}

impl NodeServer {
    fn start(port: u16) -> NodeServer {
        match Command::new("node").arg("--version").output() {
            Ok(o) if o.status.success() => {}
            other => panic!("Node.js is needed for this interop test ({other:?}): {INSTALL}"),
        }
        assert!(
            repo()
                .join("interop/node/node_modules/lwm2m-node-lib")
                .is_dir(),
            "npm lwm2m-node-lib is not installed: {INSTALL}"
        );
        let mut child = Command::new("node")
            .arg("interop/node/server.js")
            .arg(port.to_string())
            .current_dir(repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node: {e}: {INSTALL}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let json = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({ "event": "unparsed", "line": line }));
                sink.lock().unwrap().push(json);
            }
        });
        NodeServer {
            child,
            stdin,
            lines,
            next_id: 0,
        }
    }

    /// The events (lines with `event`) named `name` so far.
    fn events(&self, name: &str) -> Vec<Json> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["event"] == name)
            .cloned()
            .collect()
    }

    async fn wait_events(&self, name: &str, n: usize) -> Vec<Json> {
        eventually(&format!("{n} node {name} event(s)"), || {
            let found = self.events(name);
            (found.len() >= n).then_some(found)
        })
        .await
    }

    /// Sends a command and waits for its reply.
    async fn call(&mut self, op: &str, endpoint: &str, path: &str, value: Option<&str>) -> Json {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "op": op, "endpoint": endpoint, "path": path });
        if let Some(v) = value {
            command["value"] = json!(v);
        }
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let lines = self.lines.clone();
        eventually(&format!("node's reply to {command}"), || {
            lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l["reply"] == id)
                .cloned()
        })
        .await
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_clients_with_lwm2m_node_lib_server() {
    let port = free_port();
    let mut node = NodeServer::start(port);
    node.wait_events("listening", 1).await;
    let profile = load_profile(
        &repo().join("scenarios/profiles/minimal-1.0.yaml"),
        &QuirkPacks::new(),
    )
    .unwrap();
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let make = ProfileClients::new(
        profile,
        &Registry::embedded(),
        NetworkModel::default(),
        Targets {
            server: Some(server),
            bootstrap: None,
        },
    )
    .unwrap();
    let mut fleet = Fleet::new(FleetConfig {
        seed: 3,
        sockets: 2,
        ..FleetConfig::default()
    });
    const CLIENTS: usize = 3;
    for n in 0..CLIENTS {
        fleet.add("minimal-1.0", make.spec(n as u64, 3));
    }
    let handle = fleet.start().unwrap();

    // Register (Core TS 1.0 §5.3.1) as node saw it.
    let registrations = node.wait_events("registration", CLIENTS).await;
    let mut endpoints: Vec<String> = registrations
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap().to_owned())
        .collect();
    endpoints.sort();
    assert_eq!(endpoints, ["minimal-0", "minimal-1", "minimal-2"]);
    for r in &registrations {
        assert_eq!(r["lifetime"].to_string().trim_matches('"'), "3600", "{r}");
        assert_eq!(r["binding"], "U", "{r}");
        assert_eq!(r["version"], "1.0", "{r}");
        let links = r["payload"].as_str().unwrap_or_default();
        assert!(links.contains("</1/0>") && links.contains("</3/0>"), "{r}");
    }
    counters_until(&handle, "all registered", |c| {
        c.registered == CLIENTS as u64
    })
    .await;

    for ep in &endpoints {
        // Read with Accept text/plain: the binding as text.
        let r = node.call("read", ep, "/3/0/16", None).await;
        assert_eq!(r["result"], "U", "{r}");
        // Write as 1541 (pre-1.0 text): accepted, and a write to the Server object makes
        // the client update its registration (Core TS 1.1 §6.2.2).
        let r = node.call("write", ep, "/1/0/1", Some("120")).await;
        assert!(r.get("error").is_none(), "{r}");
        let r = node.call("read", ep, "/1/0/1", None).await;
        assert_eq!(r["result"], "120", "{r}");
        // What the client lacks (minimal-1.0 has no Manufacturer).
        let r = node.call("read", ep, "/3/0/0", None).await;
        assert_eq!(r["code"], "4.04", "{r}");
    }
    let updates = node.wait_events("update", CLIENTS).await;
    let mut updated: Vec<&str> = updates
        .iter()
        .map(|u| u["endpoint"].as_str().unwrap())
        .collect();
    updated.sort();
    assert_eq!(updated, endpoints);

    // Our side: every read and write served, one Update each, no failure.
    let c = counters_until(&handle, "requests served", |c| {
        c.requests_served >= 4 * CLIENTS as u64 && c.updates >= CLIENTS as u64
    })
    .await;
    assert_eq!(c.failures, 0, "{c:?}");
    assert_eq!(c.registrations, CLIENTS as u64);

    // De-register at stop.
    let report = handle.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.total().deregistrations, CLIENTS as u64);
    let gone = node.wait_events("deregistration", CLIENTS).await;
    let mut gone: Vec<&str> = gone
        .iter()
        .map(|g| g["endpoint"].as_str().unwrap())
        .collect();
    gone.sort();
    assert_eq!(gone, endpoints);
}
