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
        device_profile: None,
        device: None,
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
    device_with(
        &root().join("features/profiles/ets-1.1.yaml"),
        server,
        prefix,
        extra,
    )
}

/// [`device`] with the profile file `profile`.
fn device_with(profile: &Path, server: &str, prefix: &str, extra: &[&str]) -> Killed {
    let root = root();
    Killed(
        Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
            .arg("--ddf")
            .arg(root.join("features/objects"))
            .args(["simulate", "--server", server])
            .args(extra)
            .args(["--clients", "1", "--profile"])
            .arg(profile)
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
    let (success, report, all, stderr) = run_device(endpoint, tags, dir, env, &[]);
    assert!(success, "{all}\n{stderr}");
    (report, all, stderr)
}

/// [`test_device`] with `extra` arguments, whatever its exit status: (success, report,
/// its cases as text, stderr).
fn run_device(
    endpoint: &str,
    tags: &str,
    dir: &Path,
    env: &[(&str, String)],
    extra: &[&std::ffi::OsStr],
) -> (bool, RunReport, String, String) {
    let run = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(["test", "--device", endpoint, "--quiet", "--tags", tags])
        .args(extra)
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
    (run.status.success(), report, all, stderr)
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
    // The report says what a device started by hand costs.
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("started by hand"), "no device section");
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
            secure: None,
            api: None,
            bootstrap: None,
            bootstrap_secure: None,
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

/// A variant of a profile file, written to `dir` under the name `name` (profiles are named
/// after their file): `edits` replace text of the original, `append` goes at its end.
fn profile_variant(
    dir: &Path,
    original: &Path,
    name: &str,
    edits: &[(&str, &str)],
    append: &str,
) -> PathBuf {
    let mut text = std::fs::read_to_string(original).expect("the profile");
    let old_name = text
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .expect("a name")
        .to_owned();
    text = text.replacen(&format!("name: {old_name}"), &format!("name: {name}"), 1);
    for (from, to) in edits {
        assert!(
            text.contains(from),
            "{from:?} is not in {}",
            original.display()
        );
        text = text.replacen(from, to, 1);
    }
    text.push_str(append);
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("the variant");
    path
}

/// Every case of `cases` has status `want` and its message contains `text`.
fn assert_cases_say(report: &RunReport, cases: &[&str], want: Status, text: &str) {
    for case in cases {
        let s = status(report, case);
        assert!(
            !s.is_empty() && s.iter().all(|(st, m)| *st == want && m.contains(text)),
            "{case}: want {want:?} saying {text:?}: {}",
            show(report)
        );
    }
}

/// The ETS cases name the server account /1/0; a device whose LwM2M Server instance is
/// /1/1 (Short Server ID 101) passes them: the steps address its account by the SSID, and
/// its responses read as /1/0 again; it lacks the optional Firmware Version the ETS device
/// has, which is no failure. The LwM2M 1.0 case (core-6.3.8) is not applicable to
/// a 1.1 device, with the reason.
#[test]
fn a_device_whose_account_is_server_instance_1_passes_the_server_account_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = profile_variant(
        tmp.path(),
        &root().join("features/profiles/ets-1.1.yaml"),
        "ets-1.1-server-1",
        &[
            ("        10: 1\n", "        10: 101\n"),
            // Without the optional Firmware Version the ETS device has (int-203 reads it).
            ("        3: \"1.0\"\n", ""),
            (
                "  1:\n    instances:\n      0:\n        0: 1 ",
                "  1:\n    instances:\n      1:\n        0: 101 ",
            ),
        ],
        "",
    );
    let description = tmp.path().join("device.yaml");
    std::fs::write(
        &description,
        "name: ETS device with its account at /1/1\nshort_server_id: 101\nvalues:\n  \
         /3/0/0: Open Mobile Alliance\n  /1/0/1: 86400\n  /1/0/7: U\n",
    )
    .unwrap();
    let port = free_udp_port();
    let _device = device_with(&profile, &format!("coap://127.0.0.1:{port}"), "acct-", &[]);
    let dir = tmp.path().join("report");
    let bind = [("LWM2M_HARNESS_BIND", format!("127.0.0.1:{port}"))];
    let tags = "@int-201 or @int-203 or @int-205 or @int-211 or @int-222 or @int-223 \
                or @int-224 or @int-229 or @int-280 or @core-6.3.8";
    let (success, report, all, stderr) = run_device(
        "acct-0",
        tags,
        &dir,
        &bind,
        &["--device-profile".as_ref(), description.as_os_str()],
    );
    assert!(success, "{all}\n{stderr}");
    assert_cases(
        &report,
        &[
            "int-201", "int-203", "int-205", "int-211", "int-222", "int-223", "int-224", "int-229",
            "int-280",
        ],
        Status::Passed,
    );
    assert_cases_say(
        &report,
        &["core-6.3.8"],
        Status::NotApplicable,
        "later versions changed",
    );
    // The device's own Server instance is what went over the wire.
    let logs: String = walk(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    assert!(logs.contains("/1/1/"), "{logs}");
    // Each case's evidence shows the device's registration as our server holds it.
    assert!(
        logs.contains("registration of acct-0") && logs.contains("lwm2m=1.1"),
        "{logs}"
    );
}

/// A 1.2 device runs the 1.1 cases; it announces a bare `</16>` (no instance), so the cases
/// that write /16/0 are not applicable, saying so, and the others run; its configured values
/// are its own (manufacturer "Example Gateways" passes without a description), and a
/// value its description declares is checked (a wrong one fails the case).
#[test]
fn a_1_2_device_runs_the_1_1_cases_and_a_bare_object_makes_only_its_instance_cases_not_applicable()
{
    let tmp = tempfile::tempdir().unwrap();
    let profile = profile_variant(
        tmp.path(),
        &root().join("scenarios/profiles/device-1.2.yaml"),
        "device-1.2-bare-16",
        &[],
        "  16:\n    instances: {}\n",
    );
    let description = tmp.path().join("device.yaml");
    std::fs::write(&description, "values:\n  /3/0/1: not-the-model\n").unwrap();
    let port = free_udp_port();
    let _device = device_with(&profile, &format!("coap://127.0.0.1:{port}"), "v12-", &[]);
    let dir = tmp.path().join("report");
    // int-310 waits up to 6 s for a notification; the device's Current Time (/3/0/13)
    // ticks every second, so it notifies at every change after pmin, which is right.
    let bind = [
        ("LWM2M_HARNESS_BIND", format!("127.0.0.1:{port}")),
        ("LWM2M_HARNESS_MAX_WAIT", "8".to_owned()),
    ];
    // int-241 reboots the device (it acknowledges, goes silent, registers again); the
    // cases after it run against the rebooted device.
    let tags = "@int-101 or @int-201 or @int-203 or @int-211 or @int-222 or @int-224 \
                or @int-228 or @int-241 or @int-256 or @int-310";
    let (success, report, all, stderr) = run_device(
        "v12-0",
        tags,
        &dir,
        &bind,
        &["--device-profile".as_ref(), description.as_os_str()],
    );
    assert!(
        !success,
        "the wrong declared value fails a case: {all}\n{stderr}"
    );
    assert_cases(
        &report,
        &[
            "int-101", "int-203", "int-211", "int-222", "int-224", "int-241", "int-256",
        ],
        Status::Passed,
    );
    assert_cases_say(&report, &["int-241"], Status::Passed, "device_rebooted");
    // int-101's list of objects is the ETS configuration's: the optional Portfolio (/16)
    // is the device's business there; int-228 writes /16/0 and needs it.
    assert_cases_say(
        &report,
        &["int-228"],
        Status::NotApplicable,
        "instance /16/0 (it announces </16> without instances)",
    );
    assert_cases_say(
        &report,
        &["int-201"],
        Status::Failed,
        "the device description declares",
    );
    assert_eq!(report.counts().failed, 1, "{all}");
}

/// A device with a quirk pack (scenarios/quirks/sloppy-encoder.yaml: over-long TLV
/// integers, Accept ignored, the wrong success codes) fails the cases it deviates in, and
/// the failures name the clause.
#[test]
fn a_device_with_a_quirk_pack_fails_naming_the_clause() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = profile_variant(
        tmp.path(),
        &root().join("features/profiles/ets-1.1.yaml"),
        "ets-1.1-sloppy",
        &[],
        "quirks: [sloppy-encoder]\n",
    );
    let port = free_udp_port();
    let _device = device_with(
        &profile,
        &format!("coap://127.0.0.1:{port}"),
        "sloppy-",
        &[],
    );
    let dir = tmp.path().join("report");
    let bind = [("LWM2M_HARNESS_BIND", format!("127.0.0.1:{port}"))];
    let (success, report, all, stderr) =
        run_device("sloppy-0", "@int-205 or @int-203", &dir, &bind, &[]);
    assert!(!success, "{all}\n{stderr}");
    assert_cases_say(&report, &["int-205"], Status::Failed, "Core TS 1.1 §5.4");
    assert_cases(&report, &["int-203"], Status::Failed);
}

/// A device whose TLV integers are longer than they need be passes the TLV write case with
/// a finding naming the clause; `--strict` makes that a failing run.
#[test]
fn a_finding_makes_a_case_pass_with_findings_and_strict_fails_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = profile_variant(
        tmp.path(),
        &root().join("features/profiles/ets-1.1.yaml"),
        "ets-1.1-long-integers",
        &[],
        "quirks: [non-minimal-tlv-integers]\n",
    );
    let port = free_udp_port();
    let _device = device_with(&profile, &format!("coap://127.0.0.1:{port}"), "long-", &[]);
    let dir = tmp.path().join("report");
    let bind = [("LWM2M_HARNESS_BIND", format!("127.0.0.1:{port}"))];
    let (success, report, all, stderr) =
        run_device("long-0", "@int-215", &dir, &bind, &["--strict".as_ref()]);
    assert!(!success, "{all}\n{stderr}");
    assert_cases(&report, &["int-215"], Status::Passed);
    let case = report.cases.iter().find(|c| c.case == "int-215").unwrap();
    assert!(
        case.findings.iter().any(|f| f.contains("§7.4.3.1")),
        "{:?}",
        case.findings
    );
    assert!(
        stderr.contains("--strict: 1 cases passed with findings"),
        "{stderr}"
    );
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert!(junit.contains("passed with findings"), "{junit}");
}

/// A device without SenML JSON (it announces only SenML CBOR with `ct=`) answers 4.06 to
/// a Read in SenML JSON: the case is "not supported", naming the refusal and the clause;
/// when its description declares SenML JSON, the same refusal fails the case.
#[test]
fn a_refused_optional_format_is_not_supported_unless_the_vendor_declares_it() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = profile_variant(
        tmp.path(),
        &root().join("features/profiles/ets-1.1.yaml"),
        "ets-1.1-no-senml-json",
        &[(
            "supported_formats: [senml-cbor, senml-json, cbor, tlv, text, opaque]",
            "supported_formats: [senml-cbor, cbor, tlv, text, opaque]",
        )],
        "",
    );
    let declares = tmp.path().join("declares.yaml");
    std::fs::write(&declares, "features:\n  - senml-json\n").unwrap();
    for (prefix, description, want, says) in [
        ("nojson-", None, Status::NotSupported, "4.06 Not Acceptable"),
        (
            "nojson-declared-",
            Some(&declares),
            Status::Failed,
            "4.06 Not Acceptable",
        ),
    ] {
        let port = free_udp_port();
        let _device = device_with(&profile, &format!("coap://127.0.0.1:{port}"), prefix, &[]);
        let dir = tmp.path().join(prefix);
        let bind = [("LWM2M_HARNESS_BIND", format!("127.0.0.1:{port}"))];
        let mut extra: Vec<&std::ffi::OsStr> = Vec::new();
        if let Some(d) = description {
            extra.extend(["--device-profile".as_ref(), d.as_os_str()]);
        }
        let endpoint = format!("{prefix}0");
        let (success, report, all, stderr) =
            run_device(&endpoint, "@int-231 or @int-232", &dir, &bind, &extra);
        assert_eq!(success, want != Status::Failed, "{all}\n{stderr}");
        assert_cases_say(&report, &["int-231"], want, says);
        assert_cases(&report, &["int-232"], Status::Passed);
        if want == Status::NotSupported {
            assert_cases_say(&report, &["int-231"], want, "§6.2.1");
            assert_eq!(report.counts().not_supported, 1, "{all}");
        }
    }
}

/// A run that tests nothing fails with a one-line reason: tags no case carries.
#[test]
fn a_run_with_no_case_exits_non_zero_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let bind = [("LWM2M_HARNESS_BIND", format!("127.0.0.1:{port}"))];
    let (success, report, _, stderr) = run_device("nobody", "@int-99999", dir.path(), &bind, &[]);
    assert!(!success, "{stderr}");
    assert!(report.cases.is_empty());
    assert!(
        stderr.contains("nothing tested: no case matched"),
        "{stderr}"
    );
}
