//! `simulate` says why clients fail: against a server that answers every Register with
//! 4.12 Precondition Failed (a real UDP socket in this test, speaking raw CoAP), the live
//! line and the summary group the failures by cause, with one example exchange.

use std::io::Read;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Answers every confirmable request with a piggybacked 4.12 (RFC 7252 §3: version 1,
/// type ACK, the request's token and message ID), until `stop`.
fn refusing_server(stop: Arc<AtomicBool>) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let addr = socket.local_addr().expect("address");
    let task = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let Some(&first) = buf.first() else { continue };
            let tkl = usize::from(first & 0x0F);
            // A confirmable request: type 0, code class 0, detail 1-4.
            if n < 4 + tkl || first >> 4 != 0b0100 || buf[1] == 0 || buf[1] >> 5 != 0 {
                continue;
            }
            let mut ack = vec![0x60 | (first & 0x0F), (4 << 5) | 12, buf[2], buf[3]];
            ack.extend_from_slice(&buf[4..4 + tkl]);
            let _ = socket.send_to(&ack, peer);
        }
    });
    (addr, task)
}

#[test]
fn simulate_groups_failures_by_cause_with_an_example() {
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, task) = refusing_server(stop.clone());
    let mut child = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(["simulate", "--server", &format!("coap://{addr}")])
        .args([
            "--profile",
            "minimal-1.0",
            "--clients",
            "5",
            "--duration",
            "2s",
        ])
        .args(["--min-registered", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("simulate starts");
    let mut out = String::new();
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("waitable") {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("simulate ran over 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    stop.store(true, Ordering::Relaxed);
    let _ = task.join();
    let out = reader.join().unwrap_or_default();
    assert!(status.success(), "{status}\n{out}");
    // A 1.0 client has no older version to fall back to: every Register fails with 4.12.
    assert!(
        out.lines().any(|l| l == "  failures: register 4.12 x5"),
        "live line:\n{out}"
    );
    let failures: Vec<&str> = out.lines().filter(|l| l.starts_with("failures:")).collect();
    assert_eq!(failures.len(), 1, "{out}");
    let line = failures[0];
    assert!(
        line.starts_with("failures: register 4.12 x5  e.g. minimal-"),
        "{line}"
    );
    assert!(
        line.contains(": POST /rd?ep=minimal-") && line.contains("lwm2m=1.0"),
        "{line}"
    );
    assert!(line.ends_with("-> answered 4.12"), "{line}");
}
