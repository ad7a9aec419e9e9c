//! `lwm2m-harness test --device-cmd TEMPLATE`: the harness starts the device under test
//! itself, as a user runs it, over real loopback sockets.
//!
//! The devices: our simulated client as a separate `lwm2m-harness simulate` process (plain,
//! over DTLS with the template's PSK, and bootstrapping from `{bootstrap_uri}` only), the
//! npm `lwm2m-node-lib` client (`interop/node/device.js`, which ends its process on Reboot),
//! and a command that never registers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lwm2m_harness::bdd::run;
use lwm2m_harness::report::{CaseResult, RunReport, Status};

fn root() -> PathBuf {
    run::workspace_root(Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// A template that starts one simulated ets-1.1 client named `{endpoint}` with `extra`
/// simulate arguments; it prints its shell's process id first (`exec` keeps it).
fn simulated(extra: &str) -> String {
    let profile = root().join("features/profiles/ets-1.1.yaml");
    simulated_profile(&profile.display().to_string(), extra)
}

/// The same with `profile` (a name under scenarios/profiles/ or a file).
fn simulated_profile(profile: &str, extra: &str) -> String {
    let root = root();
    let root = root.display();
    format!(
        "echo pid $$; exec '{exe}' --ddf '{root}/features/objects' simulate --clients 1 \
         --profile '{profile}' --scenarios '{root}/scenarios' \
         --duration 1h --endpoint {{endpoint}} {extra}",
        exe = env!("CARGO_BIN_EXE_lwm2m-harness"),
    )
}

/// The node device: `interop/node/device.js` on lwm2m-node-lib.
fn node_device() -> String {
    require_node_lib();
    format!(
        "echo pid $$; cd '{}' && NODE_NO_WARNINGS=1 exec node interop/node/device.js \
         {{server_host}} {{server_port}} {{endpoint}}",
        root().display()
    )
}

/// Fails (never skips) when the peer is not installed, naming the command that installs it.
fn require_node_lib() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: install it (Debian: apt-get install nodejs npm), then run \
         `npm ci --prefix interop/node` (or scripts/test, which does both)"
    );
    let lib = root().join("interop/node/node_modules/lwm2m-node-lib");
    assert!(
        lib.is_dir(),
        "{} is missing: run `npm ci --prefix interop/node` (scripts/test does it)",
        lib.display()
    );
}

/// How long a step may wait in real time (`LWM2M_HARNESS_MAX_WAIT`): the simulated client
/// keeps silent for 5 s after a Reboot, at the default limit; a loaded machine needs more.
const MAX_WAIT: &str = "20";

/// `lwm2m-harness test ARGS --quiet --root ROOT --report-dir DIR`.
fn harness(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .env("LWM2M_HARNESS_MAX_WAIT", MAX_WAIT)
        .arg("test")
        .args(args)
        .arg("--quiet")
        .arg("--root")
        .arg(root())
        .arg("--report-dir")
        .arg(dir)
        .output()
        .expect("the harness runs")
}

fn report(dir: &Path) -> RunReport {
    let json = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    serde_json::from_str(&json).expect("a run report")
}

fn show(report: &RunReport) -> String {
    report
        .cases
        .iter()
        .map(|c| {
            format!(
                "{} {:?} {}: {} {:?}\n",
                c.case,
                c.status,
                c.title,
                c.message.as_deref().unwrap_or(""),
                c.evidence
            )
        })
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn cases<'a>(report: &'a RunReport, case: &str) -> Vec<&'a CaseResult> {
    report.cases.iter().filter(|c| c.case == case).collect()
}

/// Every scenario of `case` has status `want`.
fn assert_case(report: &RunReport, case: &str, want: Status) {
    let found = cases(report, case);
    assert!(
        !found.is_empty() && found.iter().all(|c| c.status == want),
        "{case}: want {want:?}\n{}",
        show(report)
    );
}

/// Every case has a verdict; the not-applicable and failed ones say why.
fn assert_every_case_explained(report: &RunReport) {
    for c in &report.cases {
        if c.status != Status::Passed {
            assert!(
                c.message.as_deref().is_some_and(|m| m.len() > 10),
                "{} {:?} without a reason\n{}",
                c.case,
                c.status,
                show(report)
            );
        }
    }
}

/// The device output files a case links, read.
fn device_logs(dir: &Path, case: &CaseResult) -> Vec<String> {
    case.evidence
        .iter()
        .filter(|e| e.starts_with("device/") && e.ends_with(".stdout.log"))
        .map(|e| std::fs::read_to_string(dir.join(e)).unwrap_or_else(|_| panic!("{e} exists")))
        .collect()
}

/// The process ids the device printed (`pid N`) in the logs of every case.
fn pids(dir: &Path, report: &RunReport) -> Vec<String> {
    report
        .cases
        .iter()
        .flat_map(|c| device_logs(dir, c))
        .flat_map(|log| {
            log.lines()
                .filter_map(|l| l.strip_prefix("pid ").map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_simulated_device_is_started_afresh_for_every_case_and_gets_verdicts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let template = simulated("--server {server_uri}");
    let tags = "@int-101 or @int-203 or @int-205 or @int-241 or @core-6.2.3";
    let out = harness(
        dir,
        &[
            "--device-cmd",
            &template,
            "--device-endpoint",
            "sim-dut",
            "--tags",
            tags,
        ],
    );
    let report = report(dir);
    assert!(out.status.success(), "{}\n{}", show(&report), text(&out));
    for case in ["int-101", "int-203", "int-205"] {
        assert_case(&report, case, Status::Passed);
    }
    // Its reboot shows as a De-register, then a Register; the next case starts afresh.
    assert_case(&report, "int-241", Status::Passed);
    // The client's own De-register is not ours to trigger.
    assert_case(&report, "core-6.2.3", Status::NotApplicable);
    assert_every_case_explained(&report);
    // Every case that started the device links its output; each start is a new process.
    let started: Vec<&CaseResult> = report
        .cases
        .iter()
        .filter(|c| c.status == Status::Passed)
        .collect();
    for c in &started {
        let logs = device_logs(dir, c);
        assert!(
            logs.iter().any(|l| l.contains("# lwm2m-harness start")),
            "{} links no device output: {:?}",
            c.case,
            c.evidence
        );
    }
    let pids = pids(dir, &report);
    let distinct: BTreeSet<&String> = pids.iter().collect();
    assert!(
        pids.len() >= started.len() && distinct.len() == pids.len(),
        "one process per case: {pids:?}\n{}",
        show(&report)
    );
}

#[test]
fn a_device_given_a_psk_by_the_template_registers_over_dtls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let template =
        simulated("--server {server_uri} --psk-identity {psk_identity} --psk-key {psk_key}");
    let out = harness(
        dir,
        &[
            "--device-cmd",
            &template,
            "--device-endpoint",
            "psk-dut",
            "--seed",
            "11",
            "--tags",
            "@int-203 or @int-205 or @int-401 or @core-7.1.8",
        ],
    );
    let report = report(dir);
    assert!(out.status.success(), "{}\n{}", show(&report), text(&out));
    assert_case(&report, "int-203", Status::Passed);
    assert_case(&report, "int-205", Status::Passed);
    // The DTLS cases give the device the case's own credentials through the template: a
    // PSK, a wrong key, an unknown identity, another endpoint's identity; and a reboot.
    assert_case(&report, "int-401", Status::Passed);
    assert_eq!(cases(&report, "int-401").len(), 4, "{}", show(&report));
    // (core-7.1.8 also tags a bootstrap case: not for a device given {server_uri}.)
    assert!(
        cases(&report, "core-7.1.8")
            .iter()
            .any(|c| c.feature.ends_with("security/dtls.feature") && c.status == Status::Passed),
        "{}",
        show(&report)
    );
    assert!(
        cases(&report, "core-7.1.8")
            .iter()
            .all(|c| c.status != Status::Failed),
        "{}",
        show(&report)
    );
    let mut logs = String::new();
    for c in &report.cases {
        for e in &c.evidence {
            logs.push_str(&std::fs::read_to_string(dir.join(e)).unwrap_or_default());
        }
    }
    // The Reads went inside DTLS records; the device got coaps:// and its identity.
    assert!(
        logs.lines()
            .any(|l| l.contains("DTLS") && l.contains("GET")),
        "no CoAP inside DTLS records:\n{logs}"
    );
    assert!(logs.contains("coaps://127.0.0.1:") && logs.contains("psk-dut-psk"));
    assert!(
        logs.contains("ets-psk-identity"),
        "the case's identity reached the device"
    );
    // The key itself is in no log.
    let (_, key) = lwm2m_harness::bdd::device::generated_psk("psk-dut", 11);
    let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!logs.contains(&key), "the PSK key leaked into the evidence");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&key));
}

#[test]
fn a_device_given_only_the_bootstrap_server_bootstraps() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let template = simulated("--bootstrap {bootstrap_uri}");
    let out = harness(
        dir,
        &[
            "--device-cmd",
            &template,
            "--device-endpoint",
            "bs-dut",
            "--tags",
            "@int-6 or @int-203",
        ],
    );
    let report = report(dir);
    assert!(out.status.success(), "{}\n{}", show(&report), text(&out));
    // "A client without a server account bootstraps", then registers.
    let int6 = cases(&report, "int-6");
    assert!(
        int6.iter()
            .any(|c| c.status == Status::Passed && c.title.contains("without a server account")),
        "{}",
        show(&report)
    );
    // The other int-6 scenario needs a device that also has a server account.
    assert!(
        int6.iter().all(|c| c.status != Status::Failed),
        "{}",
        show(&report)
    );
    // A case that starts from a server account: our Bootstrap Server gave it one.
    assert_case(&report, "int-203", Status::Passed);
    assert_every_case_explained(&report);
}

#[test]
fn a_device_that_ends_its_process_on_reboot_costs_that_case_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let feature = root().join("harness/tests/fixtures/device_reboot.feature");
    let template = node_device();
    let out = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .env("LWM2M_HARNESS_MAX_WAIT", MAX_WAIT)
        .arg("test")
        .arg(&feature)
        .args(["--device-cmd", &template, "--device-restart", "never"])
        .args(["--device-stop", "deregister", "--quiet", "--root"])
        .arg(root())
        .arg("--report-dir")
        .arg(dir)
        .output()
        .expect("the harness runs");
    let report = report(dir);
    assert!(out.status.success(), "{}\n{}", show(&report), text(&out));
    assert_case(&report, "int-241", Status::Passed);
    assert_case(&report, "core-6.3.1", Status::Passed);
    // The report says how the device ran.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("started by the harness"), "no device section");
    // Started once, and again when Reboot ended it: two processes.
    let starts: Vec<PathBuf> = std::fs::read_dir(dir.join("device"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".stdout.log"))
        .collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    let pids = pids(dir, &report);
    let distinct: BTreeSet<&String> = pids.iter().collect();
    assert_eq!(distinct.len(), 2, "{pids:?}");
    // The generated endpoint name.
    let first = std::fs::read_to_string(&starts[0]).unwrap();
    assert!(first.contains("dut-1-"), "{first}");
}

#[test]
fn a_device_that_never_registers_fails_the_remaining_cases_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tags = "@int-203 or @int-205 or @int-204 or @int-101";
    let out = harness(
        dir,
        &[
            "--device-cmd",
            "echo silent {endpoint}; exec sleep 600",
            "--device-wait",
            "1",
            "--tags",
            tags,
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let report = report(dir);
    let failed: Vec<&CaseResult> = report
        .cases
        .iter()
        .filter(|c| c.status == Status::Failed)
        .collect();
    assert!(failed.len() >= 3, "{}", show(&report));
    let first = failed[0].message.as_deref().unwrap_or("");
    assert!(first.contains("did not register"), "{first}");
    let last = failed
        .last()
        .map_or("", |c| c.message.as_deref().unwrap_or(""));
    assert!(
        last.contains("did not register after its last 2 starts"),
        "{}",
        show(&report)
    );
    // Only the first starts waited: the rest failed without starting the device.
    let starts = std::fs::read_dir(dir.join("device")).unwrap().count();
    assert_eq!(starts, 4, "two starts, stdout and stderr each");
}

#[test]
fn a_run_that_tests_nothing_fails_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let out = harness(
        tmp.path(),
        &["--device-cmd", "exec sleep 600", "--tags", "@no-such-case"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no case matched the tags"), "{stderr}");
}

#[test]
fn two_devices_side_by_side_in_a_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let sim = simulated("--server {server_uri}");
    let node = node_device();
    // (lwm2m-node-lib leaves a TLV Read unanswered: such cases cost a CoAP exchange
    // lifetime each, and are left out here.)
    let tags = "@int-241 or @core-6.2.3";
    let out = harness(
        dir,
        &[
            "--device-cmd",
            &sim,
            "--device-cmd",
            &node,
            "--device-endpoint",
            "sim-m",
            "--device-stop",
            "deregister",
            "--tags",
            tags,
        ],
    );
    let all = text(&out);
    for file in ["matrix.html", "matrix.json", "matrix.txt", "junit.xml"] {
        assert!(dir.join(file).is_file(), "{file} missing\n{all}");
    }
    let matrix: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("matrix.json")).unwrap()).unwrap();
    let subjects: Vec<&str> = matrix["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert_eq!(subjects[0], "device:sim-m");
    assert!(subjects[1].starts_with("device:dut-2-"), "{subjects:?}");
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testsuite ").count(), 2, "{junit}");
    let html = std::fs::read_to_string(dir.join("matrix.html")).unwrap();
    assert!(html.contains("device:sim-m") && html.contains("int-241"));
    // Each device's own run: the simulated one passes, the node one gets verdicts or
    // reasons for every case and is tested on some.
    let sim_run = report(&dir.join("01-sim-m"));
    assert_case(&sim_run, "int-241", Status::Passed);
    let node_dir = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("02-dut-2-"))
        })
        .expect("the node device's run folder");
    let node_run = report(&node_dir);
    assert_every_case_explained(&node_run);
    assert!(
        node_run
            .cases
            .iter()
            .any(|c| c.status != Status::NotApplicable),
        "nothing tested on the node device\n{}",
        show(&node_run)
    );
    // `report matrix` over the same runs gives the same matrix.
    let again = tmp.path().join("again");
    let out = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(["report", "matrix"])
        .arg(dir.join("01-sim-m"))
        .arg(&node_dir)
        .arg("--out")
        .arg(&again)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(again.join("matrix.json")).unwrap()).unwrap();
    assert_eq!(
        again["rows"].as_array().map(Vec::len),
        matrix["rows"].as_array().map(Vec::len)
    );
}

/// Cases from every interface that any LwM2M version has: registration, reads and writes
/// in the mandatory formats, Discover, Execute Reboot, a refused write, observation. The
/// whole suite against each profile and pack is `scripts/certify-simulated` (README).
const PROFILE_CASES: &str = "@int-101 or @int-201 or @int-203 or @int-205 or @int-222 or \
                             @int-224 or @int-241 or @int-256 or @int-260 or @int-301";

/// The suite against a shipped profile (`simulate --profile NAME --quirks QUIRKS`) started
/// by the harness for every case.
fn run_profile(dir: &Path, profile: &str, quirks: &str, tags: &str) -> (Output, RunReport) {
    let extra = if quirks.is_empty() {
        "--server {server_uri}".to_owned()
    } else {
        format!("--quirks {quirks} --server {{server_uri}}")
    };
    let out = harness(
        dir,
        &[
            "--device-cmd",
            &simulated_profile(profile, &extra),
            "--tags",
            tags,
        ],
    );
    let report = report(dir);
    assert_every_case_explained(&report);
    (out, report)
}

/// A clean shipped profile passes every case that applies to it and fails none; what does
/// not apply says why (its version, its objects, its queue mode).
fn a_clean_profile_passes_what_applies(profile: &str, at_least: usize) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let (out, report) = run_profile(tmp.path(), profile, "", PROFILE_CASES);
    let counts = report.counts();
    assert!(
        out.status.success() && counts.failed == 0 && counts.passed >= at_least,
        "{profile}: {counts:?}\n{}\n{}",
        show(&report),
        text(&out)
    );
    assert!(
        report.cases.iter().all(|c| c.findings.is_empty()),
        "{profile} is clean: {}",
        show(&report)
    );
}

#[test]
fn the_minimal_1_0_profile_passes_the_1_0_cases() {
    a_clean_profile_passes_what_applies("minimal-1.0", 3);
}

#[test]
fn the_sensor_1_1_profile_in_queue_mode_passes_what_applies() {
    a_clean_profile_passes_what_applies("sensor-1.1", 5);
}

#[test]
fn the_device_1_2_profile_passes_the_1_0_and_1_1_cases() {
    a_clean_profile_passes_what_applies("device-1.2", 5);
}

/// The deviations of a quirk pack show up as failures or findings that name their clause;
/// every other case still gets a verdict or a reason.
fn a_quirk_pack_is_caught(profile: &str, pack: &str, tags: &str, clause: &str) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let (out, report) = run_profile(tmp.path(), profile, pack, tags);
    let caught: Vec<String> = report
        .cases
        .iter()
        .flat_map(|c| {
            let failed =
                (c.status == Status::Failed).then(|| c.message.clone().unwrap_or_default());
            failed.into_iter().chain(c.findings.iter().cloned())
        })
        .collect();
    assert!(
        caught.iter().any(|m| m.contains(clause)),
        "{profile} with {pack}: nothing names {clause:?}: {caught:#?}\n{}\n{}",
        show(&report),
        text(&out)
    );
}

#[test]
fn the_sloppy_encoder_pack_fails_with_the_clauses_it_breaks() {
    let ets = root().join("features/profiles/ets-1.1.yaml");
    a_quirk_pack_is_caught(
        &ets.display().to_string(),
        "sloppy-encoder",
        "@int-203 or @int-205",
        "Core TS 1.1 §5.4",
    );
}

#[test]
fn the_pre_1_0_draft_pack_is_caught_by_its_format_numbers_and_missing_version() {
    // wakaama-like has the Location object the pack's pre-1.0 definition needs.
    a_quirk_pack_is_caught(
        "wakaama-like",
        "pre-1.0-draft",
        "@int-203",
        "Core TS 1.0 §6.4",
    );
    a_quirk_pack_is_caught("wakaama-like", "pre-1.0-draft", "@int-101", "lwm2m=");
}

#[test]
fn the_upgraded_1_0_stack_pack_is_flagged_in_its_register() {
    a_quirk_pack_is_caught(
        "sensor-1.1",
        "upgraded-1.0-stack",
        "@int-101 or @int-203",
        "queue mode is the Q parameter",
    );
}

#[test]
fn the_pre_1_0_location_packs_are_caught_reading_the_location_object() {
    for pack in ["wakaama-2017", "leshan-client-2017"] {
        a_quirk_pack_is_caught("wakaama-like", pack, "@network-usage", "Appendix C");
    }
}

#[test]
fn the_slow_responder_pack_is_served_correctly() {
    // Separate responses after the ACK timeout and duplicated responses are CoAP the
    // server must handle (RFC 7252 §5.2.2, §4.5): the cases pass.
    let tmp = tempfile::tempdir().unwrap();
    let ets = root().join("features/profiles/ets-1.1.yaml");
    let (out, report) = run_profile(
        tmp.path(),
        &ets.display().to_string(),
        "slow-responder",
        "@int-203 or @int-205",
    );
    let counts = report.counts();
    assert!(
        out.status.success() && counts.failed == 0 && counts.passed >= 2,
        "{counts:?}\n{}\n{}",
        show(&report),
        text(&out)
    );
}

#[test]
fn over_long_tlv_integers_are_findings_naming_their_clause() {
    a_quirk_pack_is_caught(
        "minimal-1.0",
        "non-minimal-tlv-integers",
        "@int-203",
        "Core TS 1.1 §7.4.3.1",
    );
}

/// An instance the device description declares is an expectation: a case that needs it
/// runs, and the device not announcing it fails the case instead of making it not
/// applicable.
#[test]
fn a_declared_instance_the_device_lacks_fails_the_case() {
    let tmp = tempfile::tempdir().unwrap();
    let description = tmp.path().join("device.yaml");
    std::fs::write(&description, "instances:\n  - /16/0\n").unwrap();
    let dir = tmp.path().join("report");
    let out = harness(
        &dir,
        &[
            "--device-cmd",
            &simulated_profile("device-1.2", "--server {server_uri}"),
            "--device-profile",
            description.to_str().unwrap(),
            "--tags",
            "@int-228 or @int-203",
        ],
    );
    let report = report(&dir);
    assert!(!out.status.success(), "{}", show(&report));
    assert_case(&report, "int-203", Status::Passed);
    assert_case(&report, "int-228", Status::Failed);
    assert!(
        cases(&report, "int-228")[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("declares /16/0")),
        "{}",
        show(&report)
    );
}

/// The first case is judged by what the device announces too: the harness starts the
/// device once to learn it (a 1.0 device and a case first in the ETS for 1.1).
#[test]
fn the_first_case_is_judged_by_what_the_device_announces() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (out, report) = run_profile(dir, "minimal-1.0", "", "@int-211");
    assert!(!out.status.success(), "nothing was tested: {}", text(&out));
    assert_eq!(report.cases.len(), 1, "{}", show(&report));
    assert_eq!(report.cases[0].status, Status::NotApplicable);
    assert!(
        report.cases[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("registered as 1.0")),
        "{}",
        show(&report)
    );
}
