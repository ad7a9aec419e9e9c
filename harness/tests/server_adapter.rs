//! A server under test driven through a server adapter (`test --server URI --server-api
//! SPEC`): the suite's server-side cases get verdicts against an external server.
//!
//! 1. `lwm2m-harness serve` in a separate process (free loopback ports, `--token`) through
//!    the `lwm2m-harness+http` adapter: every case of the selection that passes in
//!    process passes, or is not applicable for a reason of the network backend (real
//!    time, the in-process link) or one naming what the adapter lacks; none fails.
//! 2. Our server in this process through the in-process adapter (the reference): the same.
//! 3. The npm `lwm2m-node-lib` server through the example driver
//!    (`interop/node/driver-lwm2m-node-lib.js`, `exec:` adapter).
//! 4. The `leshan+http` adapter against our `serve`'s Leshan-compatible routes.
//! 5. The DTLS cases against `serve` with its DTLS listeners (`--coaps`,
//!    `--bootstrap-coaps`) through both HTTP adapters: the PSKs go through the adapter,
//!    our clients handshake with `serve`, the bootstrap PSK goes into the configuration.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use lwm2m_harness::bdd::Subject;
use lwm2m_harness::bdd::run::{self, DEFAULT_SEED, SuiteOptions};
use lwm2m_harness::report::{RunReport, Status};

const TOKEN: &str = "adapter-test-token";

/// The cases the acceptance runs select: registration, reads, writes, discover,
/// execute, create/delete, write-attributes, composites, Send, queue mode.
const TAGS: &str = "(@device_management or @int-101 or @core-6.2.3 or @int-103 or @int-108 \
                    or @send) and not @int-307 and not @core-6.4.3";

fn root() -> PathBuf {
    run::workspace_root(Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// The suite's options for a run of `tags` against `subject`, reporting into `dir`.
fn options(dir: &Path, tags: &str, subject: Subject, run: &str) -> SuiteOptions {
    let root = root();
    SuiteOptions {
        features: vec![root.join("features")],
        root,
        ddf: Vec::new(),
        tags: Some(tags.to_owned()),
        subject,
        seed: DEFAULT_SEED,
        report_dir: dir.to_path_buf(),
        run: run.to_owned(),
        console: false,
        device: None,
        device_profile: None,
    }
}

fn suite(dir: &Path, subject: Subject) -> RunReport {
    let options = options(dir, TAGS, subject, "server-adapter");
    let outcome = run::run_suite(&options).expect("the suite runs");
    assert!(outcome.untagged.is_empty() && outcome.parsing_errors == 0);
    outcome.report
}

fn show(report: &RunReport) -> String {
    report
        .cases
        .iter()
        .map(|c| {
            format!(
                "{} {:?} {} ({:.0} ms): {}\n",
                c.case,
                c.status,
                c.title,
                c.duration_ms,
                c.message.as_deref().unwrap_or("")
            )
        })
        .collect()
}

/// Status and message by case and title.
fn by_case(report: &RunReport) -> BTreeMap<(String, String), (Status, String)> {
    report
        .cases
        .iter()
        .map(|c| {
            (
                (c.case.clone(), c.title.clone()),
                (c.status, c.message.clone().unwrap_or_default()),
            )
        })
        .collect()
}

/// Reasons of the network backend itself, whatever the adapter: real time, the
/// in-process link, what no server under test lets us do.
const BACKEND_REASONS: [&str; 6] = [
    "real time",
    "in-process link",
    "raw sockets",
    "is not implemented",
    "no Bootstrap Server of ours",
    "DTLS",
];

/// Every case that passes in process passes through `adapter`, or is not applicable for a
/// reason of the backend or naming the adapter; nothing fails; at least `min` pass.
fn assert_like_in_process(report: &RunReport, adapter: &str, min: usize) {
    assert_like_in_process_for(TAGS, report, adapter, min);
}

/// [`assert_like_in_process`] for a run of `tags`.
fn assert_like_in_process_for(tags: &str, report: &RunReport, adapter: &str, min: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let options = options(tmp.path(), tags, Subject::in_process(), "reference");
    let reference = by_case(&run::run_suite(&options).unwrap().report);
    let all = show(report);
    let (passed, failed, _) = report.tally();
    assert_eq!(failed, 0, "{all}");
    assert!(passed >= min, "only {passed} passed:\n{all}");
    for ((case, title), (status, message)) in by_case(report) {
        let Some((in_process, _)) = reference.get(&(case.clone(), title.clone())) else {
            panic!("{case} {title} did not run in process");
        };
        if *in_process != Status::Passed || status == Status::Passed {
            continue;
        }
        assert!(
            message.contains(adapter) || BACKEND_REASONS.iter().any(|r| message.contains(r)),
            "{case} {title} passes in process, here {status:?}: {message}\n{all}"
        );
    }
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `lwm2m-harness serve` on free loopback ports: the process, its LwM2M Server's CoAP URI
/// and its REST API's `HOST:PORT`.
fn serve(data: &Path) -> (Killed, String, String) {
    let (child, coap, _, api) = serve_both(data);
    (child, coap, api)
}

/// [`serve`], with its Bootstrap Server's CoAP URI as third.
fn serve_both(data: &Path) -> (Killed, String, String, String) {
    let s = serve_with(data, false);
    (s.child, s.coap, s.bootstrap, s.api)
}

/// A `serve` process and where it listens.
struct Served {
    child: Killed,
    /// The LwM2M Server's `coap://` and (with DTLS) `coaps://` URIs.
    coap: String,
    coaps: Option<String>,
    /// The Bootstrap Server's.
    bootstrap: String,
    bootstrap_coaps: Option<String>,
    /// The REST API's `HOST:PORT`.
    api: String,
}

/// `serve` on free loopback ports; with `dtls`, both servers also listen for CoAP over
/// DTLS (PSK) on free ports.
fn serve_with(data: &Path, dtls: bool) -> Served {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"));
    command.args([
        "serve",
        "--coap",
        "127.0.0.1:0",
        "--bootstrap",
        "127.0.0.1:0",
    ]);
    if dtls {
        command.args(["--coaps", "127.0.0.1:0", "--bootstrap-coaps", "127.0.0.1:0"]);
    }
    let mut child = command
        .args(["--http", "127.0.0.1:0", "--token", TOKEN, "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let child = Killed(child);
    let (mut coap, mut bootstrap, mut banner) = (None, None, String::new());
    let (mut coaps, mut bootstrap_coaps) = (None, None);
    let api = loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).expect("stdout readable") > 0,
            "serve exited before listening; it printed: {banner}"
        );
        banner.push_str(&line);
        let line = line.trim();
        // `coap://HOST:PORT`, or `coaps://HOST:PORT (PSK)`.
        let uri = |rest: &str| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        if let Some(rest) = line.strip_prefix("LwM2M Server") {
            match uri(rest) {
                u if u.starts_with("coaps://") => coaps = Some(u),
                u => coap = Some(u),
            }
        }
        if let Some(rest) = line.strip_prefix("Bootstrap Server") {
            match uri(rest) {
                u if u.starts_with("coaps://") => bootstrap_coaps = Some(u),
                u => bootstrap = Some(u),
            }
        }
        if let Some(url) = line.strip_prefix("REST API") {
            let url = url.trim();
            break url
                .trim_start_matches("http://")
                .trim_end_matches("/api")
                .to_owned();
        }
    };
    // Keep reading so that the child never writes into a closed pipe.
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
    });
    let coap = coap.unwrap_or_else(|| panic!("no CoAP URI in {banner}"));
    let bootstrap = bootstrap.unwrap_or_else(|| panic!("no Bootstrap URI in {banner}"));
    assert!(
        !dtls || (coaps.is_some() && bootstrap_coaps.is_some()),
        "no coaps:// URIs in {banner}"
    );
    Served {
        child,
        coap,
        coaps,
        bootstrap,
        bootstrap_coaps,
        api,
    }
}

#[test]
fn serve_in_another_process_through_our_rest_api_gives_the_in_process_verdicts() {
    let data = tempfile::tempdir().unwrap();
    let (_serve, coap, api) = serve(data.path());
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("lwm2m-harness+http://{api}?token={TOKEN}");
    let report = suite(
        dir.path(),
        Subject::Server {
            uri: coap.clone(),
            secure: None,
            api: Some(spec),
            bootstrap: None,
            bootstrap_secure: None,
            bootstrap_api: None,
        },
    );
    assert_like_in_process(&report, "lwm2m-harness+http", 20);
    // The report names the server under test and the adapter; JUnit per case.
    let subject = &report.subjects[0];
    assert!(
        subject.version.contains("lwm2m-harness serve")
            && subject.version.contains("adapter lwm2m-harness+http"),
        "{subject:?}"
    );
    assert_eq!(subject.address.as_deref(), Some(coap.as_str()));
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    assert!(junit.contains("int-201"), "{junit}");
}

#[test]
fn a_wrong_token_makes_every_case_not_applicable_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let (_serve, coap, api) = serve(data.path());
    let dir = tempfile::tempdir().unwrap();
    let options = options(
        dir.path(),
        "@int-201",
        Subject::Server {
            uri: coap,
            secure: None,
            api: Some(format!("lwm2m-harness+http://{api}?token=wrong")),
            bootstrap: None,
            bootstrap_secure: None,
            bootstrap_api: None,
        },
        "wrong-token",
    );
    let report = run::run_suite(&options).unwrap().report;
    let all = show(&report);
    assert!(!report.cases.is_empty(), "{all}");
    for c in &report.cases {
        assert_eq!(c.status, Status::NotApplicable, "{all}");
        assert!(
            c.message
                .as_deref()
                .unwrap_or("")
                .contains("refused the token"),
            "{all}"
        );
    }
}

#[test]
fn our_server_in_process_through_the_reference_adapter_gives_the_in_process_verdicts() {
    use lwm2m_harness::bdd::adapter::{self, inprocess::InProcessServer};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let library = lwm2m_harness::bdd::fleet::Library::load(&root(), &[]).unwrap();
    let server = {
        let _guard = rt.enter();
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let options = lwm2m_server::ServerOptions::new(bind, Arc::clone(&library.registry));
        lwm2m_server::start_server(options).unwrap()
    };
    let uri = format!("coap://{}", server.local_addr());
    let spec = "in-process:server-adapter-test";
    adapter::install(
        spec,
        Arc::new(InProcessServer::new(server.clone(), rt.handle().clone())),
    );
    let dir = tempfile::tempdir().unwrap();
    let report = suite(
        dir.path(),
        Subject::Server {
            uri,
            secure: None,
            api: Some(spec.to_owned()),
            bootstrap: None,
            bootstrap_secure: None,
            bootstrap_api: None,
        },
    );
    assert_like_in_process(&report, "in-process", 20);
    if std::env::var_os("SHOW_CASES").is_some() {
        eprintln!("{}", show(&report));
    }
    assert!(
        report.subjects[0].version.contains("adapter in-process"),
        "{:?}",
        report.subjects[0]
    );
    rt.block_on(server.shutdown());
}

/// Fails (never skips) when the peer is not installed, naming what installs it.
fn require_node_lib() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: install Node.js, then run `npm ci --prefix interop/node` \
         (scripts/test does both)"
    );
    let lib = root().join("interop/node/node_modules/lwm2m-node-lib");
    assert!(
        lib.is_dir(),
        "{} is missing: run `npm ci --prefix interop/node` (scripts/test does)",
        lib.display()
    );
}

#[test]
fn the_lwm2m_node_lib_server_through_the_example_driver() {
    require_node_lib();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port();
    let driver = root().join("interop/node/driver-lwm2m-node-lib.js");
    let spec = format!("exec:node {} {port}", driver.display());
    let dir = tempfile::tempdir().unwrap();
    let tags = "@int-101 or @core-6.2.3 or @int-201 or @int-224 or @int-205 or @int-222 \
                or @int-203 or @int-226 or @int-256 or @int-227 or @int-228 or @int-260 \
                or @int-401";
    let options = options(
        dir.path(),
        tags,
        Subject::Server {
            uri: format!("coap://127.0.0.1:{port}"),
            secure: None,
            api: Some(spec),
            bootstrap: None,
            bootstrap_secure: None,
            bootstrap_api: None,
        },
        "node-lib",
    );
    let report = run::run_suite(&options).unwrap().report;
    let all = show(&report);
    let status = |case: &str| {
        report
            .cases
            .iter()
            .find(|c| c.case == case)
            .map(|c| c.status)
    };
    // Registration, De-registration, a Read and a Write (and one refused) of one resource
    // go through the library.
    for case in ["int-101", "core-6.2.3", "int-224", "int-227", "int-256"] {
        assert_eq!(status(case), Some(Status::Passed), "{case}:\n{all}");
    }
    // What the library cannot ask for (other formats, levels; the answer's format) is not
    // applicable, naming the driver's product or the feature.
    for case in ["int-201", "int-222", "int-203", "int-226", "int-228"] {
        assert_eq!(status(case), Some(Status::NotApplicable), "{case}:\n{all}");
    }
    assert!(
        all.contains("the server adapter exec (lwm2m-node-lib)"),
        "{all}"
    );
    // The library's server has no DTLS listener: the DTLS cases say so.
    let dtls: Vec<_> = report
        .cases
        .iter()
        .filter(|c| c.case == "int-401")
        .collect();
    assert!(!dtls.is_empty(), "{all}");
    for c in dtls {
        assert_eq!(c.status, Status::NotApplicable, "{all}");
        let why = c.message.as_deref().unwrap_or("");
        assert!(why.contains("no coaps:// address"), "{all}");
    }
    let (_, failed, _) = report.tally();
    assert_eq!(failed, 0, "{all}");
    assert!(
        report.subjects[0]
            .version
            .starts_with("lwm2m-node-lib 1.4.0 (adapter exec)"),
        "{:?}",
        report.subjects[0]
    );
}

#[test]
fn serve_in_another_process_through_the_leshan_api_gives_the_in_process_verdicts() {
    let data = tempfile::tempdir().unwrap();
    let (_serve, coap, api) = serve(data.path());
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("leshan+http://{api}/leshan?token={TOKEN}");
    let report = suite(
        dir.path(),
        Subject::Server {
            uri: coap,
            secure: None,
            api: Some(spec),
            bootstrap: None,
            bootstrap_secure: None,
            bootstrap_api: None,
        },
    );
    assert_like_in_process(&report, "leshan+http", 20);
    assert!(
        report.subjects[0].version.contains("adapter leshan+http"),
        "{:?}",
        report.subjects[0]
    );
}

#[test]
fn serves_bootstrap_server_under_test_through_our_rest_api() {
    let data = tempfile::tempdir().unwrap();
    let (_serve, coap, bootstrap, api) = serve_both(data.path());
    let dir = tempfile::tempdir().unwrap();
    // Client-initiated bootstrap, Bootstrap-Delete, -Read, consistency, a fallback
    // configuration: each scenario's configurations go through PUT /api/bootstrap and are
    // removed after it, so the next one meets a clean Bootstrap Server.
    let options = options(
        dir.path(),
        "@int-0 or @int-4 or @int-8 or @int-9 or @core-5.2.7.1",
        Subject::Server {
            uri: coap,
            secure: None,
            api: Some(format!("lwm2m-harness+http://{api}?token={TOKEN}")),
            bootstrap: Some(bootstrap),
            bootstrap_secure: None,
            bootstrap_api: None,
        },
        "bootstrap-under-test",
    );
    let report = run::run_suite(&options).unwrap().report;
    let all = show(&report);
    let (passed, failed, _) = report.tally();
    assert_eq!(failed, 0, "{all}");
    for case in ["int-0", "int-4", "int-8", "int-9", "core-5.2.7.1"] {
        assert!(
            report
                .cases
                .iter()
                .any(|c| c.case == case && c.status == Status::Passed),
            "{case}:\n{all}"
        );
    }
    assert!(passed >= 5, "{all}");
}

#[test]
fn a_driver_that_never_says_hello_makes_the_cases_not_applicable_with_why() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(
        dir.path(),
        "@int-201 or @int-224",
        Subject::Server {
            uri: "coap://127.0.0.1:9".to_owned(),
            secure: None,
            api: Some("exec:echo not-json; exit 3".to_owned()),
            bootstrap: None,
            bootstrap_secure: None,
            bootstrap_api: None,
        },
        "dead-driver",
    );
    let report = run::run_suite(&options).unwrap().report;
    let all = show(&report);
    assert_eq!(report.cases.len(), 2, "{all}");
    for c in &report.cases {
        assert_eq!(c.status, Status::NotApplicable, "{all}");
        let why = c.message.as_deref().unwrap_or("");
        assert!(why.contains("no hello") && why.contains("exited"), "{all}");
    }
}

/// The DTLS cases against a server under test: PSK registration, a wrong key, an unknown
/// identity, another endpoint's identity (4.03), a reboot, and the bootstrap over DTLS
/// (int-1) and its 4.03 (core-7.1.8). Certificate cases are not selected (not applicable
/// against a server under test, which would have to trust the run's CA).
const DTLS_TAGS: &str = "(@int-401 or @core-7.1.8 or @int-1) and not @int-402";

/// `serve` with its DTLS listeners as the server and Bootstrap Server under test, `api`
/// (a spec for the REST API's `HOST:PORT`) driving the LwM2M Server, our REST API the
/// Bootstrap Server.
fn dtls_suite(dir: &Path, served: &Served, api: String) -> RunReport {
    let subject = Subject::Server {
        uri: served.coap.clone(),
        secure: served.coaps.clone(),
        api: Some(api),
        bootstrap: Some(served.bootstrap.clone()),
        bootstrap_secure: served.bootstrap_coaps.clone(),
        bootstrap_api: Some(format!("lwm2m-harness+http://{}?token={TOKEN}", served.api)),
    };
    let options = options(dir, DTLS_TAGS, subject, "dtls-under-test");
    run::run_suite(&options).expect("the suite runs").report
}

/// The status of the case `case` titled `title`.
fn status_of(report: &RunReport, case: &str, title: &str) -> Option<Status> {
    report
        .cases
        .iter()
        .find(|c| c.case == case && c.title.contains(title))
        .map(|c| c.status)
}

#[test]
fn serve_over_dtls_through_our_rest_api_passes_the_psk_cases() {
    let data = tempfile::tempdir().unwrap();
    let served = serve_with(data.path(), true);
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("lwm2m-harness+http://{}?token={TOKEN}", served.api);
    let report = dtls_suite(dir.path(), &served, spec);
    let all = show(&report);
    // The PSKs went through PUT /api/security/clients, the handshakes and the Registers
    // through serve's DTLS listener, its reasons for failed handshakes through its events.
    for (case, title) in [
        ("int-401", "UDP channel security with a pre-shared key"),
        ("int-401", "A wrong pre-shared key"),
        ("int-401", "A PSK identity the server does not know"),
        (
            "core-7.1.8",
            "A session registering under another endpoint's PSK identity",
        ),
        (
            "int-1",
            "Client initiated bootstrap over DTLS, a PSK account",
        ),
        (
            "core-7.1.8",
            "A Bootstrap-Request under another endpoint's PSK identity",
        ),
    ] {
        assert_eq!(
            status_of(&report, case, title),
            Some(Status::Passed),
            "{case} {title}:\n{all}"
        );
    }
    assert_like_in_process_for(DTLS_TAGS, &report, "lwm2m-harness+http", 6);
    // The report names both addresses of the server under test.
    let address = report.subjects[0].address.clone().unwrap_or_default();
    assert!(
        address.contains(&served.coap)
            && served.coaps.as_ref().is_some_and(|s| address.contains(s)),
        "{address}"
    );
    // The exchange log shows the Register inside a DTLS record of the real session, and
    // the case keeps the session's key log beside its capture.
    let psk = report
        .cases
        .iter()
        .find(|c| {
            c.title
                .contains("UDP channel security with a pre-shared key")
        })
        .unwrap();
    let text = psk.evidence.iter().find(|e| e.ends_with(".txt")).unwrap();
    let text = std::fs::read_to_string(dir.path().join(text)).unwrap();
    assert!(
        text.contains("established as psk:ets-psk-identity")
            && text.contains("DTLS application data")
            && text.contains("/rd?ep=ets-psk"),
        "{text}"
    );
    assert!(
        psk.evidence.iter().any(|e| e.ends_with(".keys.log")),
        "{all}"
    );
}

#[test]
fn serve_over_dtls_through_the_leshan_api_passes_what_leshan_shows() {
    let data = tempfile::tempdir().unwrap();
    let served = serve_with(data.path(), true);
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("leshan+http://{}/leshan?token={TOKEN}", served.api);
    let report = dtls_suite(dir.path(), &served, spec);
    let all = show(&report);
    // The identity of another endpoint, stored through Leshan's security API, handshakes
    // and is refused 4.03; the bootstrap cases (our bootstrap API) pass as well.
    for (case, title) in [
        (
            "core-7.1.8",
            "A session registering under another endpoint's PSK identity",
        ),
        (
            "int-1",
            "Client initiated bootstrap over DTLS, a PSK account",
        ),
        (
            "core-7.1.8",
            "A Bootstrap-Request under another endpoint's PSK identity",
        ),
    ] {
        assert_eq!(
            status_of(&report, case, title),
            Some(Status::Passed),
            "{case} {title}:\n{all}"
        );
    }
    // Leshan's events say nothing of failed handshakes, nor its reads of the format.
    for title in [
        "A wrong pre-shared key",
        "A PSK identity the server does not know",
    ] {
        let c = report
            .cases
            .iter()
            .find(|c| c.title.contains(title))
            .unwrap();
        assert_eq!(c.status, Status::NotApplicable, "{all}");
        assert!(
            c.message
                .as_deref()
                .is_some_and(|m| m.contains("leshan+http does not offer security-events")),
            "{all}"
        );
    }
    assert_like_in_process_for(DTLS_TAGS, &report, "leshan+http", 3);
}

/// A driver speaking the protocol's credential and security-event lines: it logs each
/// `put-credentials` to the file named by its argument, answers ok, and reports a failed
/// handshake of the identity it was given.
const CREDENTIALS_DRIVER: &str = r#"
const fs = require('fs');
const log = process.argv[2];
const out = (j) => process.stdout.write(JSON.stringify(j) + '\n');
const rl = require('readline').createInterface({input: process.stdin});
rl.on('line', (line) => {
    const r = JSON.parse(line);
    if (r.op === 'hello') {
        return out({id: r.id, product: 'fake', version: '1',
            ops: ['put-credentials', 'security-events']});
    }
    if (r.op === 'put-credentials') {
        fs.appendFileSync(log, JSON.stringify(r) + '\n');
        out({id: r.id, ok: true});
        if (r.identity !== null) {
            out({event: 'security', kind: 'handshake_failed', server: 'server',
                peer: '127.0.0.1:4000', identity: 'psk:' + r.identity, reason: 'WrongKey'});
        }
        return;
    }
    out({id: r.id, error: 'unknown op ' + r.op});
});
rl.on('close', () => process.exit(0));
"#;

#[test]
fn an_exec_driver_stores_and_removes_credentials_and_reports_failed_handshakes() {
    use lwm2m_harness::bdd::adapter::{self, Feature};
    use lwm2m_harness::bdd::backend::{DtlsHappening, Happening};
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: install Node.js (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (script, log) = (dir.path().join("driver.js"), dir.path().join("calls.jsonl"));
    std::fs::write(&script, CREDENTIALS_DRIVER).unwrap();
    let spec = format!("exec:node {} {}", script.display(), log.display());
    let registry = Arc::new(lwm2m_proto::registry::Registry::embedded());
    let driver = adapter::open(&spec, registry).unwrap();
    assert!(driver.info().offers(Feature::PutCredentials).is_ok());
    assert!(driver.info().offers(Feature::SecurityEvents).is_ok());
    let (tx, rx) = std::sync::mpsc::channel();
    driver
        .subscribe(Box::new(move |h| tx.send(h).is_ok()))
        .unwrap();
    driver.put_psk("dev-1", b"dev-1-id", &[0xab; 16]).unwrap();
    driver.remove_psk("dev-1").unwrap();
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<serde_json::Value> = calls
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["endpoint"], "dev-1");
    assert_eq!(calls[0]["identity"], "dev-1-id");
    assert_eq!(calls[0]["key_hex"], "ab".repeat(16));
    assert!(calls[1]["identity"].is_null(), "{calls:?}");
    let reported = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    match reported {
        Happening::Dtls(DtlsHappening::HandshakeFailed {
            endpoint, reason, ..
        }) => {
            assert_eq!(endpoint, "127.0.0.1:4000");
            assert_eq!(reason, lwm2m_dtls::FailureReason::WrongKey);
        }
        other => panic!("{other:?}"),
    }
}
