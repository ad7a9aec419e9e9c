//! The web UI in a real browser: headless Debian `chromium` driven through the DevTools
//! protocol by `tests/ui/browser.mjs` (Node, no browser download), against the servers
//! and a simulated client over loopback: log in, see the client appear live, read a
//! resource, see an observed value change, save a screenshot, log out.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use lwm2m_simulator::fleet::Targets;
use lwm2m_simulator::network::NetworkModel;

use crate::fleet_support::{profile, start_fleet};
use crate::server_support::{Servers, TOKEN};

const DEVICE: &str = "\
name: ui
lwm2m_version: \"1.1\"
lifetime: 60s
endpoint_prefix: ui-
preferred_format: senml-cbor
supported_formats: [senml-cbor, senml-json, tlv, text]
objects:
  1:
    instances:
      0: { 0: 1, 1: 60, 6: false, 7: U }
  3:
    instances:
      0: { 0: UI Devices Inc, 1: Model-UI, 11: [0], 13: { generator: counter, start: 1700000000, step: 1, period: 1s }, 16: U }
";

fn find(program: &str, how: &str) -> String {
    let found = std::env::var("PATH").ok().and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => p.display().to_string(),
        None => panic!("`{program}` is not installed; the web UI browser test needs it: {how}"),
    }
}

/// Our browser script's process: ended (by its id) when the test ends, also on a panic.
struct Script(std::process::Child);

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_in_headless_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| {
        find(
            "chromium",
            "apt-get install chromium (or set CHROMIUM=/path)",
        )
    });
    let node = find("node", "apt-get install nodejs (Node 20.10 or later)");
    let s = Servers::start().await;
    let base = s.api.trim_end_matches("/api").to_owned();
    // Credentials and a fallback bootstrap configuration for the UI to show (keys hidden).
    let (status, body) = s
        .call(
            "PUT",
            "/security/clients",
            Some(r#"{"endpoint": "ui-sec", "credentials": {"mode": "psk", "identity": "ui-sec-id", "key": "c0ffee00"}}"#),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let config = r#"{"pattern": "sensor-*", "config": {
        "security": {"0": {"uri": "coap://127.0.0.1:5683", "mode": "psk", "identity": "{ep}",
                           "secret_key": "a1b2c3d4", "short_server_id": 1}},
        "servers": {"0": {"short_server_id": 1, "lifetime": 300}}}}"#;
    let (status, body) = s.call("PUT", "/bootstrap", Some(config)).await;
    assert_eq!(status, 201, "{body}");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/ui/browser.mjs");
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui.png");
    let mut child = Script(
        Command::new(node)
            .args(["--experimental-websocket", "--no-warnings", script])
            .args([&chromium, &base, TOKEN, "ui-0"])
            .arg(&screenshot)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut fleet = None;
    let mut log = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(240), async {
        while let Some(line) = rx.recv().await {
            println!("browser: {line}");
            if line == "LOGGED_IN" {
                // The client registers only now, so the list must update live.
                let targets = Targets {
                    server: Some(s.server.local_addr()),
                    bootstrap: None,
                };
                fleet = Some(start_fleet(
                    &[(&profile(DEVICE), 1)],
                    targets,
                    &NetworkModel::default(),
                    |_| {},
                ));
            }
            log.push(line);
        }
    })
    .await;
    if outcome.is_err() {
        // Our own child, by its id.
        let _ = child.0.kill();
    }
    let status = child.0.wait().unwrap();
    if let Some(f) = fleet {
        let _ = f.stop(Duration::from_secs(5)).await;
    }
    assert!(
        outcome.is_ok(),
        "the browser script timed out:\n{}",
        log.join("\n")
    );
    assert!(
        status.success(),
        "the browser script failed:\n{}",
        log.join("\n")
    );
    assert_eq!(
        log.last().map(String::as_str),
        Some("OK"),
        "{}",
        log.join("\n")
    );
    assert!(
        log.iter().any(|l| l == "read=UI Devices Inc"),
        "{}",
        log.join("\n")
    );
    assert!(log.iter().any(|l| l == "security ok"), "{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l == "bootstrap ok"),
        "{}",
        log.join("\n")
    );
    let (_, added) = s.call("GET", "/security/clients/ui-added", None).await;
    assert_eq!(added["credentials"]["identity"], "ui-added-id", "{added}");
    assert!(screenshot.is_file());
    println!("web UI screenshot: {}", screenshot.display());
}
