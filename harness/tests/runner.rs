//! The scenario runner end to end: every shipped scenario loads; a small scenario runs over
//! loopback through the `lwm2m-harness run` binary and leaves its report folder; `tshark`
//! decodes `run.pcap` into the same CoAP messages and LwM2M paths as `exchanges.log`;
//! broken scenarios are refused with file, line and key.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use lwm2m_harness::report::{RunReport, Status};
use lwm2m_harness::runner::scenario::scenario_files;
use lwm2m_harness::runner::{Plan, scenario::Target};
use lwm2m_proto::registry::Registry;

fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn profile(name: &str) -> String {
    scenarios()
        .join("profiles")
        .join(format!("{name}.yaml"))
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn every_shipped_scenario_loads() {
    let files = scenario_files(&scenarios()).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"quickstart.yaml".to_owned()), "{names:?}");
    for name in [
        "whole-device-read.yaml",
        "whole-device-read-dtls.yaml",
        "bootstrap-dtls.yaml",
    ] {
        assert!(names.contains(&name.to_owned()), "{names:?}");
    }
    let registry = Registry::embedded();
    for f in &files {
        let plan = Plan::load(f, &registry).unwrap_or_else(|e| panic!("{e}"));
        assert!(plan.clients() > 0, "{}", f.display());
    }
    let quick = Plan::load(&scenarios().join("quickstart.yaml"), &registry).unwrap();
    assert!(
        (900..=1100).contains(&quick.clients()),
        "{}",
        quick.clients()
    );
    assert_eq!(quick.scenario.servers.bootstrap, Target::InProcess);
    // The main job shows DTLS too.
    assert!(quick.scenario.servers.server_dtls());
    assert!(quick.groups.iter().any(|g| g.psk(1).is_some()));
}

fn home_nat() -> String {
    scenarios()
        .join("networks/home-nat.yaml")
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

/// Runs `lwm2m-harness run SCENARIO --out OUT --quiet` and checks it succeeded; its stdout
/// and the run folder (the only one under OUT).
fn run_scenario(scenario: &Path, out: &Path) -> (String, PathBuf) {
    let run = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .arg("run")
        .arg(scenario)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let runs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    (stdout, runs[0].clone())
}

/// [`run_scenario`], then its report, whose cases (at least the implicit two) all passed.
fn run_passing(scenario: &Path, out: &Path) -> (PathBuf, RunReport) {
    let (_, run_dir) = run_scenario(scenario, out);
    let report = RunReport::load(&run_dir).unwrap();
    assert!(
        report.cases.len() >= 2 && report.cases.iter().all(|c| c.status == Status::Passed),
        "{:#?}",
        report.cases
    );
    (run_dir, report)
}

/// `lwm2m-harness report RUN_DIR` renders report.html and junit.xml again from report.json
/// alone, the same as the run wrote them, with each of `sections`.
fn assert_rerender_is_identical(run_dir: &Path, sections: &[&str]) {
    let before: Vec<String> = ["report.html", "junit.xml"]
        .iter()
        .map(|f| std::fs::read_to_string(run_dir.join(f)).unwrap())
        .collect();
    for s in sections {
        assert!(before[0].contains(&format!("<h2>{s}")), "no section {s:?}");
    }
    for f in ["report.html", "junit.xml"] {
        std::fs::remove_file(run_dir.join(f)).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .arg("report")
        .arg(run_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (f, was) in ["report.html", "junit.xml"].iter().zip(&before) {
        let again = std::fs::read_to_string(run_dir.join(f)).unwrap();
        assert!(again == *was, "{f} rendered again differs from the run's");
    }
}

fn write_scenario(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn load_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = write_scenario(dir.path(), "broken.yaml", text);
    let err = Plan::load(&p, &Registry::embedded())
        .unwrap_err()
        .to_string();
    let file = p.display().to_string();
    assert!(err.starts_with(&file), "{err}");
    err.strip_prefix(&file).unwrap().to_owned()
}

#[test]
fn broken_scenarios_name_file_line_and_key() {
    let wakaama = profile("wakaama-like");
    let head = format!(
        "name: broken\nduration: 5s\nfleet:\n  - name: meters\n    profile: {wakaama}\n    count: 3\n"
    );
    // An unknown key: the parser names its line and the key.
    let e = load_error(&format!(
        "{head}timeline:\n  - at: 1s\n    action: read\n    group: meters\n    paht: /3/0\n"
    ));
    assert!(e.starts_with(":11:"), "{e}");
    assert!(e.contains("unknown field `paht`"), "{e}");
    // A group that does not exist: found after parsing, placed at the key's line.
    let e = load_error(&format!(
        "{head}timeline:\n  - {{ at: 1s, action: read, group: meters, path: /3/0 }}\n  - at: 2s\n    action: read\n    group: sensors\n    path: /3/0\n"
    ));
    assert!(
        e.starts_with(":11:5: timeline.1.group: no group \"sensors\""),
        "{e}"
    );
    // A duration without a unit.
    let e = load_error(&format!(
        "{head}timeline:\n  - {{ at: 1, action: wake, group: meters }}\n"
    ));
    assert!(e.starts_with(":8:"), "{e}");
    assert!(e.contains("has no unit"), "{e}");
    // A profile that is not there.
    let e = load_error(
        "name: x\nduration: 5s\nfleet:\n  - name: a\n    count: 1\n    profile: nowhere\n",
    );
    assert!(
        e.starts_with(":6:5: fleet.0.profile: no \"nowhere\""),
        "{e}"
    );
    // An action after the end, a write without a value, a bad code, too many clients.
    let e = load_error(&format!(
        "{head}timeline:\n  - {{ at: 9s, action: wake, group: meters }}\n"
    ));
    assert!(
        e.contains("timeline.0.at: 9s is after the end of the run"),
        "{e}"
    );
    let e = load_error(&format!(
        "{head}timeline:\n  - at: 1s\n    action: write\n    group: meters\n    path: /3/0/14\n"
    ));
    assert!(e.contains("timeline.0.value: write needs a value"), "{e}");
    let e = load_error(&format!(
        "{head}timeline:\n  - at: 1s\n    action: read\n    group: meters\n    path: /3/0\n    expect: ok\n"
    ));
    assert!(e.starts_with(":12:5: timeline.0.expect"), "{e}");
    let e = load_error(&format!(
        "{head}timeline:\n  - at: 1s\n    action: wake\n    group: meters\n    clients: 4\n"
    ));
    assert!(e.starts_with(":11:5: timeline.0.clients"), "{e}");
    // Requests need the in-process server.
    let e = load_error(&format!(
        "{head}servers:\n  server: coap://127.0.0.1:5683\n  bootstrap: none\ntimeline:\n  - {{ at: 1s, action: read, group: meters, path: /3/0 }}\n"
    ));
    assert!(
        e.contains("timeline.0.action: read needs the in-process LwM2M Server"),
        "{e}"
    );
}

#[test]
fn broken_dtls_keys_are_named_with_their_line() {
    let wakaama = profile("wakaama-like");
    let group = format!("fleet:\n  - name: meters\n    profile: {wakaama}\n    count: 3\n");
    let head = "name: broken\nduration: 5s\n";
    let dtls = "servers:\n  bootstrap: none\n  dtls:\n    server: true\n";
    let both = "servers:\n  dtls:\n    server: true\n    bootstrap: true\n";
    let cases = [
        // A secure group needs the server's DTLS listener.
        (
            format!("{head}{group}    security:\n      mode: psk\n"),
            ":7:5: fleet.0.security: the group talks DTLS",
        ),
        // Unknown modes and keys are refused by the parser, with their line.
        (
            format!("{head}{dtls}{group}    security:\n      mode: rpk\n"),
            ":12:13: fleet[0].security.mode: unknown variant `rpk`",
        ),
        (
            format!("{head}{dtls}{group}    security:\n      mode: psk\n      key: 00\n"),
            ":13:",
        ),
        // One identity for every client cannot work: the store maps an identity to one
        // endpoint.
        (
            format!("{head}{dtls}{group}    security:\n      mode: psk\n      identity: shared\n"),
            ":13:7: fleet.0.security.identity: \"shared\": every client needs an identity of its own",
        ),
        // Only the in-process Bootstrap Server can be given a listener, and a secure group
        // that bootstraps needs it.
        (
            format!("{head}servers:\n  bootstrap: none\n  dtls:\n    bootstrap: true\n{group}"),
            ":6:5: servers.dtls.bootstrap: only the in-process Bootstrap Server",
        ),
        (
            format!(
                "{head}servers:\n  dtls: {{ server: true }}\n{group}    bootstrap: true\n    security: {{ mode: psk }}\n"
            ),
            ":9:5: fleet.0.bootstrap: the group bootstraps over DTLS: give the in-process Bootstrap Server a listener",
        ),
        // The bootstrap identity: only for a group that bootstraps, one per client, not the
        // LwM2M Server's.
        (
            format!(
                "{head}{dtls}{group}    security:\n      mode: psk\n      bootstrap_identity: bs-{{ep}}\n"
            ),
            ":13:7: fleet.0.security.bootstrap_identity: the group does not bootstrap",
        ),
        (
            format!(
                "{head}{both}{group}    bootstrap: true\n    security:\n      mode: psk\n      bootstrap_identity: bs\n"
            ),
            ":14:7: fleet.0.security.bootstrap_identity: \"bs\": every client needs an identity of its own",
        ),
        (
            format!(
                "{head}{both}{group}    bootstrap: true\n    security:\n      mode: psk\n      identity: bs-{{ep}}\n"
            ),
            ":14:7: fleet.0.security.identity: \"bs-{ep}\": the same as bootstrap_identity (default)",
        ),
        // Only the in-process server can be given a listener.
        (
            format!(
                "{head}servers:\n  server: coap://127.0.0.1:5683\n  bootstrap: none\n  dtls: {{ server: true }}\n{group}"
            ),
            "servers.dtls.server: only the in-process LwM2M Server",
        ),
        // An external server: coaps:// needs every group secure, a secure group needs
        // coaps://, and an external Bootstrap Server over coaps:// is not supported.
        (
            format!("{head}servers:\n  server: coaps://127.0.0.1:5684\n  bootstrap: none\n{group}"),
            ":7:5: fleet.0.security: the LwM2M Server is coaps://: the group needs `security`",
        ),
        (
            format!(
                "{head}servers:\n  server: coap://127.0.0.1:5683\n  bootstrap: none\n{group}    security: {{ mode: psk }}\n"
            ),
            ":10:5: fleet.0.security: the group talks DTLS: give the external server as coaps://HOST:PORT",
        ),
        (
            format!(
                "{head}servers:\n  server: coaps://127.0.0.1:5684\n  bootstrap: coaps://127.0.0.1:5784\n{group}    security: {{ mode: psk }}\n"
            ),
            "servers.bootstrap: an external coaps:// Bootstrap Server is not supported",
        ),
        (
            format!("{head}servers:\n  server: http://127.0.0.1\n{group}"),
            "coap://HOST:PORT or coaps://HOST:PORT",
        ),
        // Certificate groups: the CN is the identity, the run's CA makes the keys, and
        // they register directly with the in-process server.
        (
            format!(
                "{head}{dtls}{group}    security:\n      mode: x509\n      identity: \"{{ep}}\"\n"
            ),
            ":13:7: fleet.0.security.identity: a certificate client's identity is its certificate's subject CN",
        ),
        (
            format!(
                "{head}{both}{group}    bootstrap: true\n    security: {{ mode: x509, bootstrap_identity: \"bs-{{ep}}\" }}\n"
            ),
            ":12:5: fleet.0.security.bootstrap_identity: a certificate client's identity toward the Bootstrap Server",
        ),
        (
            format!(
                "{head}servers:\n  server: coaps://127.0.0.1:5684\n  bootstrap: none\n{group}    security: {{ mode: x509 }}\n"
            ),
            "fleet.0.security.mode: against an external server a certificate group needs `ca` and `ca_key`",
        ),
        (
            format!("{head}{dtls}{group}    security:\n      mode: x509\n      ca: ca.pem\n"),
            ":13:7: fleet.0.security.ca: `ca` and `ca_key` go together",
        ),
        (
            format!("{head}{dtls}{group}    security:\n      mode: psk\n      server_ca: ca.pem\n"),
            ":13:7: fleet.0.security.server_ca: for certificate groups (mode: x509)",
        ),
        (
            format!(
                "{head}{dtls}{group}    security:\n      mode: x509\n      ca: missing.pem\n      ca_key: missing.key\n"
            ),
            ":13:7: fleet.0.security.ca: reading",
        ),
    ];
    for (text, expected) in &cases {
        let e = load_error(text);
        assert!(
            e.starts_with(expected) || (!expected.starts_with(':') && e.contains(expected)),
            "{e}\nexpected: {expected}"
        );
    }
    let e = load_error(&cases[2].0);
    assert!(e.contains("unknown field `key`"), "{e}");
}

/// One line of `exchanges.log` as tshark would show it: addresses, CoAP type and code
/// numbers, message id, token, request path, query.
fn from_log(line: &str) -> Option<Vec<String>> {
    let mut w = line.split_whitespace();
    let (_, src, _, dst) = (w.next()?, w.next()?, w.next()?, w.next()?);
    let ty = match w.next()? {
        "CON" => "0",
        "NON" => "1",
        "ACK" => "2",
        "RST" => "3",
        _ => return None,
    };
    let code = w.next()?;
    let methods = ["GET", "POST", "PUT", "DELETE", "FETCH", "PATCH", "IPATCH"];
    let number = match methods.iter().position(|m| *m == code) {
        Some(i) => i + 1,
        None => {
            let (c, d) = code.split_once('.')?;
            c.parse::<usize>().ok()? * 32 + d.parse::<usize>().ok()?
        }
    };
    let mid = w.next()?.strip_prefix("mid=")?;
    let token = w.next()?.strip_prefix("token=")?;
    let (mut path, mut query) = (String::new(), String::new());
    if let Some(next) = w.next()
        && next.starts_with('/')
    {
        let (p, q) = next.split_once('?').unwrap_or((next, ""));
        path = p.to_owned();
        query = q.replace('&', ",");
    }
    let (sip, sport) = src.rsplit_once(':')?;
    let (dip, dport) = dst.rsplit_once(':')?;
    Some(vec![
        sip.into(),
        sport.into(),
        dip.into(),
        dport.into(),
        ty.into(),
        number.to_string(),
        mid.into(),
        if token == "-" {
            String::new()
        } else {
            token.into()
        },
        path,
        query,
    ])
}

#[test]
fn small_scenario_runs_end_to_end_and_tshark_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(
        dir.path(),
        "small.yaml",
        &format!(
            "name: small
duration: 4s
seed: 7
fleet:
  - name: meters
    profile: {}
    count: 30
    ramp: 200
    network: {}
    bootstrap: true
  - name: sensors
    profile: {}
    count: 20
timeline:
  - {{ at: 1s, action: read, group: meters, path: /3/0, format: tlv }}
  - {{ at: 1s, action: read, group: sensors, path: /3303/0/5700 }}
  - {{ at: 1500ms, action: write, group: meters, path: /3/0/14, value: \"+01:00\" }}
  - {{ at: 1500ms, action: observe, group: meters, clients: 10, path: /3/0/13 }}
  - {{ at: 2s, action: nat-timeout, group: meters, clients: 5 }}
  - {{ at: 2500ms, action: update, group: meters, clients: 5 }}
  - {{ at: 3s, action: read, group: meters, clients: 5, path: [/1, /3, /1024] }}
  - {{ at: 3s, action: discover, group: sensors, clients: 3, path: /3303 }}
",
            profile("wakaama-like"),
            home_nat(),
            profile("sensor-1.1"),
        ),
    );
    let (stdout, run_dir) = run_scenario(&scenario, &dir.path().join("reports"));
    let run_dir = &run_dir;
    assert!(stdout.contains("0 failed"), "{stdout}");
    assert!(
        run_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("-small")
    );
    for f in [
        "report.json",
        "report.html",
        "junit.xml",
        "run.pcap",
        "exchanges.log",
        "latencies.hlog",
        "read.hgrm",
        "register.hgrm",
        "bootstrap.hgrm",
        "network-usage.txt",
        "network-usage.csv",
    ] {
        assert!(
            run_dir.join(f).is_file(),
            "{f} missing in {}",
            run_dir.display()
        );
    }
    let report = RunReport::load(run_dir).unwrap();
    assert_eq!(report.seed, 7);
    assert_eq!(report.product_version, env!("CARGO_PKG_VERSION"));
    // 8 steps, 2 groups registered, 1 group bootstrapped.
    assert_eq!(report.cases.len(), 11, "{:#?}", report.cases);
    assert!(report.cases.iter().all(|c| c.status == Status::Passed));
    for op in [
        "bootstrap",
        "register",
        "read",
        "write",
        "observe",
        "discover",
        "update",
    ] {
        assert!(report.latencies.contains_key(op), "no {op} latency");
    }
    assert_eq!(report.counters.get("fleet.clients_registered"), Some(&50));
    assert_eq!(report.counters.get("server.rebindings"), Some(&5));
    // Notifications the rebound clients sent before their Update are reset: explained.
    let new_address_resets = report.counters["server.resets_out.notifications_new_address"];
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert_eq!(
        html.contains("NAT binding expired"),
        new_address_resets > 0,
        "{new_address_resets} resets of notifications from new addresses"
    );
    assert!(!report.network_usage.is_empty());
    assert_rerender_is_identical(run_dir, &["Network usage by operation, all clients"]);
    let junit = std::fs::read_to_string(run_dir.join("junit.xml")).unwrap();
    assert!(junit.contains("tests=\"11\" failures=\"0\""), "{junit}");
    assert!(
        junit.contains("all 30 clients of meters registered"),
        "{junit}"
    );

    // tshark decodes the pcap into the messages of the exchange log, in order.
    let log = std::fs::read_to_string(run_dir.join("exchanges.log")).unwrap();
    let ports: Vec<String> = report
        .subjects
        .iter()
        .filter_map(|s| {
            s.address
                .as_deref()?
                .rsplit_once(':')
                .map(|(_, p)| p.to_owned())
        })
        .collect();
    assert_eq!(ports.len(), 2, "{:?}", report.subjects);
    let mut tshark = Command::new("tshark");
    tshark.arg("-r").arg(run_dir.join("run.pcap"));
    for p in &ports {
        tshark.args(["-d", &format!("udp.port=={p},coap")]);
    }
    tshark.args(["-T", "fields", "-E", "separator=|"]);
    for f in [
        "ip.src",
        "udp.srcport",
        "ip.dst",
        "udp.dstport",
        "coap.type",
        "coap.code",
        "coap.mid",
        "coap.token",
        "coap.opt.uri_path_recon",
        "coap.opt.uri_query",
    ] {
        tshark.args(["-e", f]);
    }
    let decoded = tshark
        .output()
        .expect("tshark is not installed (apt-get install tshark)");
    assert!(
        decoded.status.success(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let decoded = String::from_utf8(decoded.stdout).unwrap();
    let from_tshark: Vec<Vec<String>> = decoded
        .lines()
        .map(|l| {
            let mut f: Vec<String> = l.split('|').map(str::to_owned).collect();
            // tshark rebuilds the path of a response from its request; the log shows
            // paths on requests only.
            if f.get(5)
                .and_then(|c| c.parse::<u32>().ok())
                .is_some_and(|c| c == 0 || c >= 64)
            {
                f[8].clear();
            }
            f
        })
        .collect();
    let from_log: Vec<Vec<String>> = log
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| from_log(l).unwrap_or_else(|| panic!("not a CoAP line: {l}")))
        .collect();
    assert!(from_log.len() > 200, "{} datagrams", from_log.len());
    assert_eq!(from_tshark.len(), from_log.len());
    for (i, (t, l)) in from_tshark.iter().zip(&from_log).enumerate() {
        assert_eq!(t, l, "datagram {} differs", i + 1);
    }
    // LwM2M paths the timeline asked for are on the wire.
    for path in [
        "/3/0",
        "/3303/0/5700",
        "/3/0/14",
        "/3/0/13",
        "/1024",
        "/bs",
        "/rd",
    ] {
        assert!(
            from_log.iter().any(|f| f[8] == path),
            "{path} not in the exchange log"
        );
    }
}

/// With an external LwM2M Server the fleet's own tap records the clients' datagrams.
#[test]
fn external_server_runs_are_recorded_from_the_clients_side() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = std::sync::Arc::new(lwm2m_proto::registry::Registry::embedded());
    let server = runtime
        .block_on(async {
            lwm2m_server::driver::start_server(lwm2m_server::driver::ServerOptions::new(
                "127.0.0.1:0".parse().unwrap(),
                registry,
            ))
        })
        .unwrap();
    let addr = server.local_addr();
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(
        dir.path(),
        "external.yaml",
        &format!(
            "name: external
duration: 2s
seed: 3
servers: {{ server: \"coap://{addr}\", bootstrap: none }}
fleet:
  - name: meters
    profile: {}
    count: 10
timeline:
  - {{ at: 1s, action: update, group: meters }}
",
            profile("minimal-1.0"),
        ),
    );
    let out = dir.path().join("reports");
    let run = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .arg("run")
        .arg(&scenario)
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let run_dir = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let log = std::fs::read_to_string(run_dir.join("exchanges.log")).unwrap();
    assert!(log.contains("simulated clients sent and received"), "{log}");
    let decoded = Command::new("tshark")
        .arg("-r")
        .arg(run_dir.join("run.pcap"))
        .args(["-d", &format!("udp.port=={},coap", addr.port())])
        .args(["-T", "fields", "-e", "coap.code", "-e", "coap.opt.uri_path"])
        .output()
        .expect("tshark is not installed (apt-get install tshark)");
    let text = String::from_utf8_lossy(&decoded.stdout);
    // 10 Registers (code 2 = POST to rd) and their 2.01 answers (65), seen by the clients.
    let registers = text.lines().filter(|l| l.starts_with("2\trd")).count();
    let created = text.lines().filter(|l| l.starts_with("65")).count();
    assert!(registers >= 10 && created >= 10, "{text}");
    drop(server);
}

/// Against an external `coaps://` LwM2M Server (our own, started here as a library, with
/// nothing of the runner in it): `run --export-credentials` writes the clients' PSKs, the
/// server is loaded with them, the run's clients handshake and register over DTLS, and the
/// fleet's own sessions write `keys.log`, with which tshark finds every Register inside
/// the fleet's `run.pcap`.
#[test]
fn external_coaps_server_gets_the_exported_credentials() {
    use lwm2m_server::store::{FileSecurityStore, SecurityInfo, SecurityStore as _};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = std::sync::Arc::new(Registry::embedded());
    let store = std::sync::Arc::new(FileSecurityStore::in_memory());
    let server = runtime
        .block_on(async {
            let mut options =
                lwm2m_server::driver::ServerOptions::new("127.0.0.1:0".parse().unwrap(), registry);
            options.dtls = Some(lwm2m_server::DtlsOptions::new(
                "127.0.0.1:0".parse().unwrap(),
                store.clone(),
            ));
            lwm2m_server::driver::start_server(options)
        })
        .unwrap();
    let port = server.dtls_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(
        dir.path(),
        "external-dtls.yaml",
        &format!(
            "name: external-dtls
duration: 3s
seed: 5
servers: {{ server: \"coaps://127.0.0.1:{port}\", bootstrap: none }}
fleet:
  - name: vault
    profile: {}
    count: 5
    security: {{ mode: psk, identity: \"vault-id-{{n}}\" }}
timeline:
  - {{ at: 1s, action: update, group: vault }}
",
            profile("sensor-1.1"),
        ),
    );
    let credentials = dir.path().join("credentials.json");
    let export = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .arg("run")
        .arg(&scenario)
        .arg("--export-credentials")
        .arg(&credentials)
        .output()
        .unwrap();
    assert!(export.status.success(), "{export:?}");
    assert!(!dir.path().join("reports").exists(), "nothing ran");
    let entries: Vec<SecurityInfo> =
        serde_json::from_str(&std::fs::read_to_string(&credentials).unwrap()).unwrap();
    let identities: Vec<_> = entries.iter().filter_map(|e| e.psk_identity()).collect();
    assert_eq!(
        identities,
        (0..5).map(|n| format!("vault-id-{n}")).collect::<Vec<_>>()
    );
    for entry in entries {
        store.put(entry).unwrap();
    }

    let (run_dir, _) = run_passing(&scenario, &dir.path().join("reports"));
    assert_eq!(key_log_sessions(&run_dir), 5);
    let decoded = decrypted_coap(&run_dir, port);
    assert_registers(&decoded, "vault-", 5);
    // The fleet's sessions hand over their plaintext: CoAP and DTLS bytes apart, and the
    // sample client's table found by its Register.
    let usage = std::fs::read_to_string(run_dir.join("network-usage.txt")).unwrap();
    assert!(usage.contains("29.0 bytes per record"), "{usage}");
    let sample = usage.split("Every exchange of vault-0").nth(1).unwrap();
    for operation in ["dtls-handshake", "register", "update", "deregister"] {
        assert!(
            sample.lines().any(|l| l.starts_with(operation)),
            "no {operation} in:\n{sample}"
        );
    }
    drop(server);
}

/// Certificate groups: the run's test CA issues every client a certificate with its
/// endpoint name as subject CN, the in-process listeners one for 127.0.0.1; the clients
/// handshake with ECDHE-ECDSA and register, directly or after a bootstrap over DTLS that
/// hands them another certificate of their own; tshark finds the Registers with the key
/// log, and the handshakes carry the certificates (far bigger than a PSK handshake).
#[test]
fn certificate_groups_register_with_certificates_of_the_run_ca() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(
        dir.path(),
        "x509.yaml",
        &format!(
            "name: x509
duration: 3s
seed: 9
servers: {{ dtls: {{ server: true, bootstrap: true }} }}
fleet:
  - name: certs
    profile: {}
    count: 4
    security: {{ mode: x509 }}
  - name: keys
    profile: {}
    count: 2
    security: {{ mode: psk }}
  - name: bscert
    profile: {}
    count: 3
    bootstrap: true
    security: {{ mode: x509 }}
timeline:
  - {{ at: 1s, action: read, group: certs, path: /3/0 }}
  - {{ at: 2s, action: read, group: bscert, path: /3/0 }}
",
            profile("wakaama-like"),
            profile("sensor-1.1"),
            profile("wakaama-like"),
        ),
    );
    let (run_dir, report) = run_passing(&scenario, &dir.path().join("reports"));
    // 4 + 2 direct sessions, and 3 with the Bootstrap Server, then 3 with the LwM2M
    // Server.
    assert_eq!(key_log_sessions(&run_dir), 12);
    let log = std::fs::read_to_string(run_dir.join("exchanges.log")).unwrap();
    let listeners = dtls_listeners(&log);
    let decoded = decrypted_coap(&run_dir, &listeners[0]);
    assert_registers(&decoded, "certs-", 4);
    assert_registers(&decoded, "bscert-", 3);
    let bootstrap = decrypted_coap(&run_dir, &listeners[1]);
    for n in 0..3 {
        assert!(
            bootstrap
                .lines()
                .any(|l| l.starts_with("2\t/bs\t") && l.contains(&format!("ep=bscert-{n}"))),
            "no Bootstrap-Request of bscert-{n} in:\n{bootstrap}"
        );
    }
    // The sample client's handshake carries its certificate chain both ways.
    let usage = std::fs::read_to_string(run_dir.join("network-usage.txt")).unwrap();
    let sample = usage.split("Every exchange of certs-0").nth(1).unwrap();
    let handshake: Vec<usize> = sample
        .lines()
        .find(|l| l.starts_with("dtls-handshake"))
        .unwrap()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    // req CoAP, resp CoAP, req wire, resp wire, datagrams.
    assert!(
        handshake.len() == 5 && handshake[2] > 600 && handshake[3] > 600,
        "{sample}"
    );
    // The listener's table has one typical handshake per kind of authentication.
    assert!(usage.contains("one PSK handshake (median of 2)"), "{usage}");
    assert!(
        usage.contains("one certificate handshake (median of 7)"),
        "{usage}"
    );
    let c = |k: &str| report.counters.get(k).copied().unwrap_or_default();
    let (psk, cert) = (
        c("dtls.handshake.psk.median_bytes"),
        c("dtls.handshake.certificate.median_bytes"),
    );
    assert!(
        psk > 400 && cert > 2 * psk,
        "PSK {psk} B, certificate {cert} B"
    );
}

/// A certificate group against an external server that trusts a CA of the user's own
/// (`security.ca`, `ca_key`; handed over as files, as a vendor's would be): the clients'
/// certificates come from that CA, and they all register.
#[test]
fn certificate_group_against_an_external_server_with_its_own_ca() {
    use lwm2m_dtls::CertificateConfig;
    use lwm2m_dtls::pki::{Purpose, TestCa, Validity};
    let vendor = TestCa::new("vendor CA").unwrap();
    let (ca_der, ca_key) = (vendor.certificate().to_vec(), vendor.private_key());
    let issued = TestCa::from_der(&ca_der, &ca_key)
        .unwrap()
        .issue("server", &["127.0.0.1"], Purpose::Server, Validity::Current)
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = std::sync::Arc::new(Registry::embedded());
    let server = runtime
        .block_on(async {
            let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
            let mut options = lwm2m_server::driver::ServerOptions::new(any, registry);
            let store = lwm2m_server::store::FileSecurityStore::in_memory();
            let mut dtls = lwm2m_server::DtlsOptions::new(any, std::sync::Arc::new(store));
            dtls.certificate = Some(CertificateConfig {
                chain: vec![issued.certificate],
                private_key: issued.private_key,
                trust_anchors: vec![ca_der.clone()],
            });
            options.dtls = Some(dtls);
            lwm2m_server::driver::start_server(options)
        })
        .unwrap();
    let port = server.dtls_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vendor-ca.pem"),
        pem::encode(&pem::Pem::new("CERTIFICATE", ca_der)),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("vendor-ca.key"),
        pem::encode(&pem::Pem::new("PRIVATE KEY", ca_key)),
    )
    .unwrap();
    let scenario = write_scenario(
        dir.path(),
        "vendor.yaml",
        &format!(
            "name: vendor
duration: 3s
seed: 4
servers: {{ server: \"coaps://127.0.0.1:{port}\", bootstrap: none }}
fleet:
  - name: fielded
    profile: {}
    count: 4
    security: {{ mode: x509, ca: vendor-ca.pem, ca_key: vendor-ca.key }}
timeline:
  - {{ at: 1s, action: update, group: fielded }}
",
            profile("sensor-1.1"),
        ),
    );
    let (run_dir, _) = run_passing(&scenario, &dir.path().join("reports"));
    assert_eq!(key_log_sessions(&run_dir), 4);
    assert_registers(&decrypted_coap(&run_dir, port), "fielded-", 4);
    drop(server);
}

/// What tshark decrypts of a run folder's `run.pcap` with its `keys.log`, `port` decoded
/// as CoAP over DTLS: one line per CoAP message, its code, path and query.
fn decrypted_coap(run_dir: &Path, listener: impl std::fmt::Display) -> String {
    let listener = listener.to_string();
    let port = port_of(&listener);
    let dtls = format!("udp.port=={port},dtls");
    let coap_in_dtls = format!("dtls.port=={port},coap");
    let filter = match listener.rsplit_once(':') {
        Some((ip, _)) => format!("coap && ip.addr=={ip} && udp.port=={port}"),
        None => "coap".to_owned(),
    };
    tshark(
        run_dir,
        &[
            "-r",
            "run.pcap",
            "-o",
            "tls.keylog_file:keys.log",
            "-d",
            &dtls,
            "-d",
            &coap_in_dtls,
            "-Y",
            &filter,
            "-T",
            "fields",
            "-e",
            "coap.code",
            "-e",
            "coap.opt.uri_path_recon",
            "-e",
            "coap.opt.uri_query",
        ],
    )
}

/// Every one of the clients `PREFIX0` .. `PREFIX{count-1}` has a Register (POST, code 2,
/// /rd?ep=NAME) in tshark's `decoded` lines.
fn assert_registers(decoded: &str, prefix: &str, count: usize) {
    for n in 0..count {
        let ep = format!("ep={prefix}{n},");
        assert!(
            decoded
                .lines()
                .any(|l| l.starts_with("2\t/rd\t") && l.contains(&ep)),
            "no Register of {prefix}{n} in:\n{decoded}"
        );
    }
}

/// `tshark` run on a run folder's files, or a failure saying how to install it.
fn tshark(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("tshark")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("tshark cannot be run ({e}): run scripts/test or `apt-get install tshark`")
        });
    assert!(
        out.status.success(),
        "tshark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A DTLS PSK group through the binary: `run.pcap` holds the encrypted records, and with
/// `keys.log` tshark finds each client's Register inside; the network-usage numbers are
/// counted from the records (29 bytes per CCM_8 record, handshakes of real size, one more
/// handshake per NAT rebinding).
#[test]
fn dtls_run_records_a_pcap_tshark_decrypts_and_accounts_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(
        dir.path(),
        "secure.yaml",
        &format!(
            "name: secure
duration: 7s
seed: 11
servers:
  bootstrap: none
  dtls: {{ server: true }}
fleet:
  - name: secure
    profile: {}
    count: 6
    network: {}
    security: {{ mode: psk, identity: \"id-{{n}}\" }}
  - name: plain
    profile: {}
    count: 2
timeline:
  - {{ at: 1s, action: read, group: secure, path: [/1, /3, /1024], format: tlv }}
  - {{ at: 1s, action: read, group: plain, path: /3/0 }}
  - {{ at: 2s, action: nat-timeout, group: secure, clients: 2 }}
  - {{ at: 2500ms, action: update, group: secure, clients: 2 }}
  # Without Connection ID the Update's first record is lost on the new mapping; the CoAP
  # retransmission (2-3 s later) opens a new handshake. Only then can the server reach
  # the clients at their new addresses.
  - {{ at: 6s, action: read, group: secure, clients: 2, path: /3/0/13 }}
",
            profile("wakaama-like"),
            home_nat(),
            profile("sensor-1.1"),
        ),
    );
    let (_, run_dir) = run_scenario(&scenario, &dir.path().join("reports"));
    assert_rerender_is_identical(
        &run_dir,
        &["Network usage by operation, all clients", "DTLS"],
    );
    let report = RunReport::load(&run_dir).unwrap();
    assert!(
        report.cases.iter().all(|c| c.status == Status::Passed),
        "{:#?}",
        report.cases
    );

    // The exchange log's header names the DTLS port and the tshark options.
    let log = std::fs::read_to_string(run_dir.join("exchanges.log")).unwrap();
    let header = log
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let port = dtls_listeners(&log)
        .into_iter()
        .next()
        .map(|l| port_of(&l).to_owned())
        .unwrap_or_else(|| panic!("no DTLS listener in the header:\n{header}"));
    assert!(header.contains("-o tls.keylog_file:keys.log"), "{header}");
    // The log shows the CoAP inside the records.
    assert!(
        log.lines().any(|l| l.contains("DTLS application")
            && l.contains("POST")
            && l.contains("/rd?ep=secure-0")),
        "{log}"
    );
    // 6 first handshakes and 2 after the rebinding.
    assert_eq!(key_log_sessions(&run_dir), 8);

    // Without the key log the records stay opaque: no CoAP on the DTLS port.
    let dtls = format!("udp.port=={port},dtls");
    let coap_in_dtls = format!("dtls.port=={port},coap");
    let on_port = format!("coap && udp.port == {port}");
    let fields = [
        "-T",
        "fields",
        "-e",
        "ip.src",
        "-e",
        "coap.code",
        "-e",
        "coap.opt.uri_path_recon",
        "-e",
        "coap.opt.uri_query",
    ];
    let mut args = vec![
        "-r",
        "run.pcap",
        "-d",
        &dtls,
        "-d",
        &coap_in_dtls,
        "-Y",
        &on_port,
    ];
    args.extend(fields);
    assert_eq!(
        tshark(&run_dir, &args).trim(),
        "",
        "CoAP readable without keys"
    );
    // With it, every secure client's Register is inside: POST (code 2) /rd?ep=NAME.
    let mut args = vec![
        "-r",
        "run.pcap",
        "-o",
        "tls.keylog_file:keys.log",
        "-d",
        &dtls,
        "-d",
        &coap_in_dtls,
        "-Y",
        &on_port,
    ];
    args.extend(fields);
    let decoded = tshark(&run_dir, &args);
    for n in 0..6 {
        let ep = format!("ep=secure-{n},");
        assert!(
            decoded
                .lines()
                .any(|l| l.contains("\t2\t/rd\t") && l.contains(&ep)),
            "no Register of secure-{n} in:\n{decoded}"
        );
    }
    assert!(
        decoded.lines().any(|l| l.contains("\t1\t/1024")),
        "{decoded}"
    );

    // Counted from the records: 29 bytes per AES-128-CCM-8 record.
    let c = |k: &str| {
        *report
            .counters
            .get(k)
            .unwrap_or_else(|| panic!("no counter {k}"))
    };
    let records = c("dtls.application_records");
    assert!(records >= 6 * 10, "{records} records");
    assert_eq!(c("dtls.record_overhead_bytes"), 29 * records);
    // The only records the server could not decrypt: each rebound client's first one
    // from its new address, where it had no session yet.
    assert_eq!(c("dtls.unpaired_records"), 2);
    assert_eq!(c("dtls.handshakes.new_address.lost_records"), 2);
    assert_eq!(c("capture.unpaired_plaintext"), 0);
    // One PSK handshake with the cookie exchange: 6 datagrams, some hundred bytes.
    assert_eq!(c("dtls.handshakes.first"), 6);
    assert_eq!(c("dtls.handshake.median_datagrams"), 6);
    let one = c("dtls.handshake.median_bytes");
    assert!((400..1000).contains(&one), "{one} bytes per handshake");
    // The NAT rebinding: one more handshake per rebound client, with its bytes.
    assert_eq!(c("dtls.handshakes.new_address"), 2);
    let rebinding = c("dtls.handshakes.new_address.bytes");
    assert!((2 * 400..2 * 1000).contains(&rebinding), "{rebinding}");
    assert_eq!(c("dtls.handshakes.unfinished"), 0);
    assert_eq!(c("server.rebindings"), 2);
    // The DTLS machine's CoAP bytes are the records' plaintext.
    assert_eq!(
        c("server.coaps.bytes_in") + c("server.coaps.bytes_out"),
        c("dtls.application_plaintext_bytes")
    );

    let usage = std::fs::read_to_string(run_dir.join("network-usage.txt")).unwrap();
    assert!(usage.contains("29.0 bytes per record"), "{usage}");
    assert!(usage.contains("2 extra handshakes"), "{usage}");
    assert!(usage.contains("dtls-handshake (new-address)"), "{usage}");
    // The sample client of the secure group: its handshake row first, then its Register
    // with 29 bytes more on the wire than in CoAP each way.
    let first = report.network_usage.first().unwrap();
    assert_eq!(first.operation, "dtls-handshake");
    assert_eq!(first.handshake, first.request_wire + first.response_wire);
    let register = report
        .network_usage
        .iter()
        .find(|r| r.operation == "register")
        .unwrap();
    assert_eq!(register.request_wire, register.request_coap + 29);
    assert_eq!(register.response_wire, register.response_coap + 29);
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(html.contains("<h2>DTLS</h2>"));
    assert!(html.contains("dtls-handshake (new-address)"));
}

/// Runs `scenarios/experiments/NAME` into a temporary folder (kept while the first value
/// lives): the run folder and its report.
fn run_experiment(name: &str) -> (tempfile::TempDir, PathBuf, RunReport) {
    let dir = tempfile::tempdir().unwrap();
    let (_, run_dir) = run_scenario(&scenarios().join("experiments").join(name), dir.path());
    let report = RunReport::load(&run_dir).unwrap();
    (dir, run_dir, report)
}

/// The shipped DTLS whole-device read: one client, its handshake, eight reads with 29 bytes
/// of DTLS each way, and the table beside the thesis's figures.
#[test]
fn whole_device_read_over_dtls_gives_the_thesis_table() {
    let (_dir, run_dir, report) = run_experiment("whole-device-read-dtls.yaml");
    let rows = &report.network_usage;
    assert_eq!(rows[0].operation, "dtls-handshake");
    let reads: Vec<_> = rows.iter().filter(|r| r.operation == "read").collect();
    let paths: Vec<&str> = reads.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/1", "/2", "/3", "/4", "/5", "/6", "/7", "/1024"]);
    for r in &reads {
        assert_eq!(r.request_wire - r.request_coap, 29, "{r:?}");
        assert_eq!(r.response_wire - r.response_coap, 29, "{r:?}");
        assert_eq!(r.datagrams, 2, "{r:?}");
    }
    // /1024's Uri-Path option is 3 bytes longer than /1's (as in the thesis: 88 vs 85).
    assert_eq!(reads[7].request_coap, reads[0].request_coap + 3);
    let text = std::fs::read_to_string(run_dir.join("network-usage.txt")).unwrap();
    assert!(text.contains("beside the 2017 thesis"), "{text}");
    assert!(
        text.contains("683") && text.contains("1092") && text.contains("1775"),
        "{text}"
    );
    assert!(text.contains("29.0 bytes here"), "{text}");
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(html.contains("Beside the 2017 thesis"));
}

/// The DTLS ports of a run's exchange log header (`-d udp.port==P,dtls`), the LwM2M
/// Server's first.
/// The DTLS listeners the exchange log's header names (`IP:PORT`), the LwM2M Server's
/// first: both servers may listen on 5684, each on its own loopback address.
fn dtls_listeners(log: &str) -> Vec<String> {
    log.lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.split_once("DTLS listener ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once(':'))
        .filter_map(|(ip, tail)| {
            let port: String = tail.chars().take_while(char::is_ascii_digit).collect();
            (!port.is_empty()).then(|| format!("{ip}:{port}"))
        })
        .collect()
}

/// The port of a listener `IP:PORT`.
fn port_of(listener: &str) -> &str {
    listener.rsplit_once(':').map_or(listener, |(_, p)| p)
}

/// The address of a listener `IP:PORT`.
fn ip_of(listener: &str) -> &str {
    listener.rsplit_once(':').map_or(listener, |(ip, _)| ip)
}

/// The sessions whose secrets `keys.log` holds (one `CLIENT_RANDOM` line each).
fn key_log_sessions(run_dir: &Path) -> usize {
    let keys = std::fs::read_to_string(run_dir.join("keys.log")).unwrap();
    keys.lines()
        .filter(|l| l.starts_with("CLIENT_RANDOM "))
        .count()
}

/// tshark's hex of a bytes field (`62732d30` or `62:73:2d:30`) as text.
fn hex_text(hex: &str) -> String {
    let digits: Vec<u8> = hex.bytes().filter(u8::is_ascii_hexdigit).collect();
    let bytes: Vec<u8> = digits
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The shipped bootstrap over DTLS: every secure client handshakes with the Bootstrap
/// Server as `bs-<endpoint>`, is handed a coaps:// account, handshakes with the LwM2M
/// Server as `<endpoint>` (credentials the Bootstrap Server provisioned) and registers;
/// with keys.log tshark finds the Bootstrap-Request and the Register inside run.pcap; the
/// network usage accounts the handshakes of each listener.
#[test]
fn bootstrap_over_dtls_then_register_over_dtls_with_other_credentials() {
    let (_dir, run_dir, report) = run_experiment("bootstrap-dtls.yaml");
    assert!(
        report.cases.iter().all(|c| c.status == Status::Passed),
        "{:#?}",
        report.cases
    );
    let ids: Vec<&str> = report.cases.iter().map(|c| c.case.as_str()).collect();
    for id in [
        "bootstrap-1",
        "registration-1",
        "bootstrap-2",
        "registration-2",
    ] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    let bs = report
        .subjects
        .iter()
        .find(|s| s.id == "bootstrap-server")
        .unwrap();
    assert!(
        bs.address.as_deref().unwrap().contains(" coaps://"),
        "{bs:?}"
    );

    let log = std::fs::read_to_string(run_dir.join("exchanges.log")).unwrap();
    let listeners = dtls_listeners(&log);
    assert_eq!(
        listeners.len(),
        2,
        "two DTLS listeners in the header:\n{log}"
    );
    let (server, bootstrap) = (ip_of(&listeners[0]), ip_of(&listeners[1]));
    assert!(
        log.lines().any(
            |l| l.contains(&format!("{} DTLS application", listeners[1]))
                && l.contains("POST")
                && l.contains("/bs?ep=secure-0")
        ),
        "{log}"
    );
    // 20 sessions with each listener.
    assert_eq!(key_log_sessions(&run_dir), 40);

    let mut decode = vec!["-r".to_owned(), "run.pcap".to_owned()];
    for p in listeners.iter().map(|l| port_of(l)) {
        decode.extend([
            "-d".to_owned(),
            format!("udp.port=={p},dtls"),
            "-d".to_owned(),
            format!("dtls.port=={p},coap"),
        ]);
    }
    let fields = [
        "-T",
        "fields",
        "-e",
        "ip.dst",
        "-e",
        "coap.code",
        "-e",
        "coap.opt.uri_path_recon",
        "-e",
        "coap.opt.uri_query",
    ];
    let secure_coap = format!(
        "coap && ((ip.addr == {server} && udp.port == {}) || (ip.addr == {bootstrap} && udp.port == {}))",
        port_of(&listeners[0]),
        port_of(&listeners[1])
    );
    let run_tshark = |keys: bool, filter: &str, fields: &[&str]| {
        let mut args: Vec<&str> = decode.iter().map(String::as_str).collect();
        if keys {
            args.extend(["-o", "tls.keylog_file:keys.log"]);
        }
        args.extend(["-Y", filter]);
        args.extend(fields);
        tshark(&run_dir, &args)
    };
    assert_eq!(
        run_tshark(false, &secure_coap, &fields).trim(),
        "",
        "CoAP readable without keys"
    );
    let decoded = run_tshark(true, &secure_coap, &fields);
    for n in 0..20 {
        // POST (code 2) /bs?ep=NAME to the Bootstrap Server's listener, POST /rd?ep=NAME,...
        // to the LwM2M Server's.
        let ep = format!("ep=secure-{n}");
        assert!(
            decoded
                .lines()
                .any(|l| l.starts_with(&format!("{bootstrap}\t2\t/bs\t")) && l.ends_with(&ep)),
            "no Bootstrap-Request of secure-{n} in:\n{decoded}"
        );
        assert!(
            decoded
                .lines()
                .any(|l| l.starts_with(&format!("{server}\t2\t/rd\t"))
                    && l.contains(&format!("{ep},"))),
            "no Register of secure-{n} in:\n{decoded}"
        );
    }
    // Different credentials: the PSK identity of each ClientKeyExchange (in clear).
    let identities = run_tshark(
        false,
        "dtls.handshake.identity",
        &[
            "-T",
            "fields",
            "-e",
            "ip.dst",
            "-e",
            "dtls.handshake.identity",
        ],
    );
    let mut seen: Vec<(String, String)> = identities
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, id)| (p.to_owned(), hex_text(id)))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 40, "{seen:?}");
    for n in 0..20 {
        assert!(
            seen.contains(&(bootstrap.to_owned(), format!("bs-secure-{n}"))),
            "{seen:?}"
        );
        assert!(
            seen.contains(&(server.to_owned(), format!("secure-{n}"))),
            "{seen:?}"
        );
    }

    // Both listeners' handshakes and records, each on its own.
    let c = |k: &str| {
        *report
            .counters
            .get(k)
            .unwrap_or_else(|| panic!("no counter {k}"))
    };
    for prefix in ["dtls.", "dtls.bootstrap."] {
        assert_eq!(c(&format!("{prefix}handshakes.first")), 20, "{prefix}");
        assert_eq!(c(&format!("{prefix}handshakes.unfinished")), 0, "{prefix}");
        assert_eq!(c(&format!("{prefix}unpaired_records")), 0, "{prefix}");
        let records = c(&format!("{prefix}application_records"));
        assert_eq!(
            c(&format!("{prefix}record_overhead_bytes")),
            29 * records,
            "{prefix}"
        );
        let one = c(&format!("{prefix}handshake.median_bytes"));
        assert!(
            (400..1000).contains(&one),
            "{prefix}: {one} bytes per handshake"
        );
    }
    // Bootstrap-Request, 2 Deletes, 3 Writes, Bootstrap-Finish: 7 round trips per client.
    assert!(c("dtls.bootstrap.application_records") >= 20 * 14);
    assert_eq!(c("capture.unpaired_plaintext"), 0);
    // Each DTLS machine's CoAP bytes are its listener's records' plaintext.
    assert_eq!(
        c("server.coaps.bytes_in") + c("server.coaps.bytes_out"),
        c("dtls.application_plaintext_bytes")
    );
    assert_eq!(
        c("bootstrap.coaps.bytes_in") + c("bootstrap.coaps.bytes_out"),
        c("dtls.bootstrap.application_plaintext_bytes")
    );
    assert_eq!(c("fleet.dtls_handshakes"), 40);
    assert_eq!(c("fleet.dtls_failures"), 0);
    let usage = std::fs::read_to_string(run_dir.join("network-usage.txt")).unwrap();
    assert!(
        usage.contains("DTLS on the Bootstrap Server's listener")
            && usage.contains("DTLS on the LwM2M Server's listener"),
        "{usage}"
    );
    assert!(
        usage.contains("dtls-handshake (bootstrap-first)"),
        "{usage}"
    );
    // The sample client: its bootstrap handshake, the bootstrap, its LwM2M Server
    // handshake, then the Register, each CoAP message with 29 bytes of DTLS.
    let ops: Vec<(&str, &str)> = report
        .network_usage
        .iter()
        .map(|r| (r.operation.as_str(), r.path.as_str()))
        .collect();
    let at = |op: (&str, &str)| {
        ops.iter()
            .position(|o| *o == op)
            .unwrap_or_else(|| panic!("{op:?} in {ops:?}"))
    };
    assert_eq!(at(("dtls-handshake", "bootstrap-first")), 0, "{ops:?}");
    assert!(at(("bootstrap-request", "/bs")) < at(("dtls-handshake", "first")));
    assert!(at(("bootstrap-finish", "/bs")) < at(("dtls-handshake", "first")));
    assert!(at(("dtls-handshake", "first")) < at(("register", "/rd")));
    for r in report
        .network_usage
        .iter()
        .filter(|r| r.operation != "dtls-handshake")
    {
        assert_eq!(r.request_wire, r.request_coap + 29, "{r:?}");
        assert_eq!(r.response_wire, r.response_coap + 29, "{r:?}");
    }
}

/// `run --metrics ADDR`: while the run lasts, http://ADDR/metrics serves the fleet's live
/// counters in the Prometheus text format.
#[test]
fn run_serves_the_fleets_counters_as_prometheus_text() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(
        dir.path(),
        "metrics.yaml",
        &format!(
            "name: metrics\nduration: 6s\nseed: 7\nfleet:\n  - name: meters\n    profile: {}\n    count: 5\n",
            profile("wakaama-like")
        ),
    );
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .arg("run")
        .arg(&scenario)
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg("--quiet")
        .arg("--metrics")
        .arg(addr.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let text = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before /metrics showed a registered client"
        );
        assert!(std::time::Instant::now() < deadline, "no metrics");
        let answer = std::net::TcpStream::connect(addr).ok().and_then(|mut s| {
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            Some(text)
        });
        match answer {
            Some(t) if t.contains("\nlwm2m_fleet_registered 5") => break t,
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE lwm2m_fleet_registrations_total counter"),
        "{text}"
    );
    assert!(text.contains("\nlwm2m_fleet_clients 5"), "{text}");
    assert!(child.wait().unwrap().success());
}

/// The in-process servers listen on the standard ports of a run-specific loopback address
/// (127.0.Y.Z), so `tshark -r run.pcap` with no `-d` option decodes the CoAP: the
/// Registers, the reads and their answers.
#[test]
fn run_pcap_decodes_as_coap_with_no_options() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(
        dir.path(),
        "plain.yaml",
        &format!(
            "name: plain
duration: 2s
seed: 5
fleet:
  - name: meters
    profile: {}
    count: 3
timeline:
  - {{ at: 1s, action: read, group: meters, path: /3/0 }}
",
            profile("minimal-1.0"),
        ),
    );
    let (_, run_dir) = run_scenario(&scenario, &dir.path().join("reports"));
    let report = RunReport::load(&run_dir).unwrap();
    let server = report
        .subjects
        .iter()
        .find_map(|s| s.address.clone().filter(|_| s.kind == "server"))
        .unwrap_or_else(|| panic!("no server subject: {:?}", report.subjects));
    let addr: std::net::SocketAddr = server
        .strip_prefix("coap://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{server}"));
    assert_eq!(addr.port(), 5683, "{server}");
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        panic!("{server}")
    };
    assert_eq!(ip.octets()[..2], [127, 0], "{server}");
    assert_ne!(ip, std::net::Ipv4Addr::LOCALHOST, "{server}");
    let decoded = tshark(&run_dir, &["-r", "run.pcap"]);
    let coap: Vec<&str> = decoded.lines().filter(|l| l.contains("CoAP")).collect();
    assert!(
        coap.iter().filter(|l| l.contains("/rd")).count() >= 3,
        "{decoded}"
    );
    assert!(coap.iter().any(|l| l.contains("2.05 Content")), "{decoded}");
}
