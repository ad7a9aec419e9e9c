//! Exit statuses CI can rely on: `simulate` against a server that does not answer, a
//! latency threshold that fails, `test` with tags that select nothing, and the statuses
//! documented in `--help`.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use lwm2m_proto::registry::Registry;
use lwm2m_server::driver::{ServerOptions, start_server};

fn harness(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("the binary runs")
}

fn scenarios() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn simulate_against_a_server_that_does_not_answer_fails() {
    // A socket that receives the Registers and never answers: no server there.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("a loopback socket");
    let uri = format!("coap://{}", silent.local_addr().expect("bound"));
    let args = [
        "simulate",
        "--server",
        &uri,
        "--profile",
        "minimal-1.0",
        "--duration",
        "1s",
        "--scenarios",
        &scenarios(),
    ];
    let out = harness(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("ever-registered=0"), "{stdout}");
    assert!(
        stderr.contains("threshold failed: 0 of 1 clients registered, 1 needed"),
        "{stderr}"
    );
    // Asking for none registered accepts the same run.
    let mut relaxed = args.to_vec();
    relaxed.extend(["--min-registered", "0%"]);
    let out = harness(&relaxed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn simulate_fails_a_latency_threshold_and_passes_a_loose_one() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let server = runtime.block_on(async {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        start_server(ServerOptions::new(any, Arc::new(Registry::embedded())))
            .expect("the server starts")
    });
    let uri = format!("coap://{}", server.local_addr());
    let run = |limit: &str| {
        harness(&[
            "simulate",
            "--server",
            &uri,
            "--clients",
            "3",
            "--profile",
            "minimal-1.0",
            "--duration",
            "1s",
            "--scenarios",
            &scenarios(),
            "--max-register-p99",
            limit,
        ])
    };
    // No Register is answered in no time at all.
    let out = run("0ms");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("threshold failed: Register p99"),
        "{stderr}"
    );
    let out = run("60s");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn test_with_tags_that_select_nothing_fails() {
    let report = tempfile::tempdir().expect("a temporary folder");
    let out = harness(&[
        "test",
        "--quiet",
        "--tags",
        "@nonexistent",
        "--report-dir",
        &report.path().to_string_lossy(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing tested"), "{stderr}");
}

#[test]
fn help_documents_the_exit_statuses() {
    for args in [
        &["--help"][..],
        &["simulate", "--help"],
        &["test", "--help"],
    ] {
        let out = harness(args);
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        for needle in [
            "Exit status:",
            "  0  success",
            "  1  failure",
            "  2  the command line",
        ] {
            assert!(help.contains(needle), "{args:?} lacks {needle:?}:\n{help}");
        }
    }
    let out = harness(&["simulate", "--clients"]);
    assert_eq!(out.status.code(), Some(2));
}
