//! The network backend over real loopback sockets and real time.
//!
//! 1. `--device`: one of our simulated clients, run as a separate `lwm2m-harness simulate`
//!    process, is the device under test; it registers with the servers the backend starts.
//!    The server-operation cases pass; cases that need control of the client are not
//!    applicable, never passed.
//!    With `LWM2M_HARNESS_COAPS_BIND` and the device's PSK the same device registers over
//!    DTLS, and the server-operation cases pass over its session.
//! 2. `--server`: our own LwM2M Server, started in this test on a loopback port, is the
//!    server under test; our simulated clients register with it. The registration cases
//!    that show on the wire pass; cases that need our server's API are not applicable.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use lwm2m_harness::bdd::Subject;
use lwm2m_harness::bdd::run::{self, DEFAULT_SEED, SuiteOptions};
use lwm2m_harness::report::{RunReport, Status};

fn root() -> PathBuf {
    run::workspace_root(Path::new(env!("CARGO_MANIFEST_DIR")))
}

fn suite(dir: &Path, tags: &str, subject: Subject) -> RunReport {
    let root = root();
    let options = SuiteOptions {
        features: vec![root.join("features")],
        root: root.clone(),
        ddf: Vec::new(),
        tags: Some(tags.to_owned()),
        subject,
        seed: DEFAULT_SEED,
        report_dir: dir.to_path_buf(),
        run: "network".to_owned(),
        console: false,
    };
    let outcome = run::run_suite(&options).expect("the suite runs");
    assert!(outcome.untagged.is_empty() && outcome.parsing_errors == 0);
    outcome.report
}

fn status(report: &RunReport, case: &str) -> Vec<(Status, String)> {
    report
        .cases
        .iter()
        .filter(|c| c.case == case)
        .map(|c| (c.status, c.message.clone().unwrap_or_default()))
        .collect()
}

fn show(report: &RunReport) -> String {
    report
        .cases
        .iter()
        .map(|c| {
            format!(
                "{} {:?} {}: {}\n",
                c.case,
                c.status,
                c.title,
                c.message.as_deref().unwrap_or("")
            )
        })
        .collect()
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The device under test: one simulated ets-1.1 client (endpoint `prefix` + 0) in its own
/// process, toward `server`, with `extra` simulate arguments; CoAP retransmits its
/// Register until our server is up.
fn device(server: &str, prefix: &str, extra: &[&str]) -> Killed {
    let root = root();
    Killed(
        Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
            .arg("--ddf")
            .arg(root.join("features/objects"))
            .args(["simulate", "--server", server])
            .args(extra)
            .args(["--clients", "1", "--profile"])
            .arg(root.join("features/profiles/ets-1.1.yaml"))
            .args(["--endpoint-prefix", prefix, "--duration", "120s"])
            .arg("--scenarios")
            .arg(root.join("scenarios"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the simulator starts"),
    )
}

/// `lwm2m-harness test --device ENDPOINT --tags TAGS` as a user runs it, reporting into
/// `dir`, with `env` (our servers' addresses and credentials) and a free port for the
/// Bootstrap Server; it must succeed. The report, its cases as text, the harness's stderr.
fn test_device(
    endpoint: &str,
    tags: &str,
    dir: &Path,
    env: &[(&str, String)],
) -> (RunReport, String, String) {
    let run = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(["test", "--device", endpoint, "--quiet", "--tags", tags])
        .arg("--root")
        .arg(root())
        .arg("--report-dir")
        .arg(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env(
            "LWM2M_HARNESS_BOOTSTRAP_BIND",
            format!("127.0.0.1:{}", free_udp_port()),
        )
        .env("LWM2M_HARNESS_DEVICE_WAIT", "20")
        .output()
        .expect("the harness runs");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    let json = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    let report: RunReport = serde_json::from_str(&json).expect("a run report");
    let all = show(&report);
    assert!(run.status.success(), "{all}\n{stderr}");
    (report, all, stderr)
}

/// Every one of `cases` is in `report`, each of its scenarios with status `want`.
fn assert_cases(report: &RunReport, cases: &[&str], want: Status) {
    for case in cases {
        let s = status(report, case);
        assert!(
            !s.is_empty() && s.iter().all(|(st, _)| *st == want),
            "{case}: {}",
            show(report)
        );
    }
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a loopback UDP socket");
    socket.local_addr().expect("its address").port()
}

#[test]
fn a_device_under_test_passes_server_operations_and_control_cases_are_not_applicable() {
    let port = free_udp_port();
    let _device = device(&format!("coap://127.0.0.1:{port}"), "dut-", &[]);
    // The harness, as a user runs it against a device.
    let dir = tempfile::tempdir().unwrap();
    let bind = [("LWM2M_HARNESS_BIND", format!("127.0.0.1:{port}"))];
    let tags = "@int-101 or @int-203 or @int-205 or @int-102 or @int-301 or @int-305 \
                or @core-6.2.3";
    let (report, all, stderr) = test_device("dut-0", tags, dir.path(), &bind);
    assert!(
        stderr.contains(&format!("coap://127.0.0.1:{port}")),
        "{stderr}"
    );
    assert_cases(&report, &["int-101", "int-203", "int-205"], Status::Passed);
    // int-102 waits 20 s and more in real time, int-301 16 s for a notification; int-305
    // looks into the client's observations, core-6.2.3 makes the client de-register.
    assert_cases(
        &report,
        &["int-102", "int-301", "int-305", "core-6.2.3"],
        Status::NotApplicable,
    );
    let (_, failed, _) = report.tally();
    assert_eq!(failed, 0, "{all}");
    assert!(all.contains("not under our control"), "{all}");
}

/// The device of the test above, over DTLS with a PSK of its own (as a vendor's device
/// would be configured): our server's DTLS listener knows its key from the environment,
/// and the server-operation cases pass over its session; the exchange log shows the
/// records with the CoAP inside.
#[test]
fn a_device_under_test_over_dtls_passes_server_operations_over_its_session() {
    use lwm2m_simulator::fleet::PskPattern;
    let port = free_udp_port();
    let coaps = free_udp_port();
    let psk = PskPattern {
        identity: "dut-psk-{n}".into(),
        seed: 5,
    };
    let (identity, key) = psk.credentials(0, "dtls-dut-0");
    let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let _device = device(
        &format!("coaps://127.0.0.1:{coaps}"),
        "dtls-dut-",
        &["--psk-identity", "dut-psk-{n}", "--psk-key-seed", "5"],
    );
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("LWM2M_HARNESS_BIND", format!("127.0.0.1:{port}")),
        ("LWM2M_HARNESS_COAPS_BIND", format!("127.0.0.1:{coaps}")),
        ("LWM2M_HARNESS_DEVICE_PSK", format!("{identity}:{key}")),
    ];
    let tags = "@int-203 or @int-205 or @int-401";
    let (report, _, stderr) = test_device("dtls-dut-0", tags, dir.path(), &env);
    assert!(
        stderr.contains(&format!("coaps://127.0.0.1:{coaps}")),
        "{stderr}"
    );
    assert_cases(&report, &["int-203", "int-205"], Status::Passed);
    // The DTLS cases set credentials on both sides: not for a device with its own.
    assert_cases(&report, &["int-401"], Status::NotApplicable);
    // The exchange logs show the Reads inside DTLS records.
    let logs: String = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    assert!(
        logs.lines()
            .any(|l| l.contains("DTLS") && l.contains("GET")),
        "no CoAP inside DTLS records in the exchange logs:\n{logs}"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_server_under_test_passes_registration_cases_and_server_api_cases_are_not_applicable() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = root();
    let library = lwm2m_harness::bdd::fleet::Library::load(&root, &[]).unwrap();
    let server = {
        let _guard = rt.enter();
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let options = lwm2m_server::ServerOptions::new(bind, Arc::clone(&library.registry));
        lwm2m_server::start_server(options).unwrap()
    };
    let uri = format!("coap://{}", server.local_addr());
    let dir = tempfile::tempdir().unwrap();
    let tags = "@registration and (@core-6.2.3 or @int-101 or @int-102 or @int-103)";
    let report = suite(
        dir.path(),
        tags,
        Subject::Server {
            uri,
            api: None,
            bootstrap: None,
            bootstrap_api: None,
        },
    );
    let all = show(&report);
    assert_eq!(
        status(&report, "core-6.2.3").first().map(|s| s.0),
        Some(Status::Passed),
        "{all}"
    );
    for case in ["int-101", "int-102", "int-103"] {
        let s = status(&report, case);
        assert!(
            !s.is_empty() && s.iter().all(|(st, _)| *st == Status::NotApplicable),
            "{case}: {all}"
        );
    }
    let (_, failed, _) = report.tally();
    assert_eq!(failed, 0, "{all}");
    assert!(all.contains("driven by its own operator"), "{all}");
}
