//! The run's outputs as the ecosystem's tools read them: `junit.xml` validated by
//! `xmllint --schema` against the Jenkins/Ant JUnit schema (`tests/data/junit-10.xsd`),
//! for a real run, for a re-rendered one with a failed and a skipped case, and for a
//! matrix of runs; `cucumber/cucumber.json` accepted by the official
//! `@cucumber/cucumber-json-converter` (npm, installed from `interop/node/package-lock.json`
//! by `scripts/test`); and the scenario and case counts of cucumber, JUnit and the README
//! agreeing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn harness(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh folder under the target's temporary folder.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("report-formats-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

/// One run of the whole suite against the in-process subject, which the tests share
/// (a few seconds: the in-process subject runs on a virtual clock).
fn run_dir() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = scratch("run");
        harness(&["test", "--quiet", "--report-dir", &dir.to_string_lossy()]);
        dir
    })
}

/// Copies a run folder's files (one level of subfolders).
fn copy_run(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("the run folder") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).expect("a subfolder");
            copy_run(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("a copy");
        }
    }
}

/// `xmllint --schema junit-10.xsd FILE` succeeds.
fn assert_valid_junit(file: &Path) {
    let xsd = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/junit-10.xsd");
    let out = match Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&xsd)
        .arg(file)
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!(
            "xmllint not found ({e}): install it (Debian: apt-get install libxml2-utils; \
             scripts/test does)"
        ),
    };
    assert!(
        out.status.success(),
        "{} does not validate against {}:\n{}",
        file.display(),
        xsd.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn junit_validates_against_the_jenkins_schema() {
    let run = run_dir();
    let junit = run.join("junit.xml");
    assert_valid_junit(&junit);
    let text = std::fs::read_to_string(&junit).expect("junit.xml");
    for needle in [
        "errors=\"0\"",
        "timestamp=\"",
        "hostname=\"",
        "<property name=\"seed\" value=\"20170830\"/>",
        "<property name=\"subject\" value=\"in-process",
        "<property name=\"product.version\"",
        "<property name=\"git.revision\"",
        "classname=\"registration.registration.int-101\"",
        "<system-out>evidence: exchanges/int-101",
        "<skipped message=\"not applicable: needs TCP",
        "CON POST",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    assert!(
        !text.lines().nth(1).unwrap_or("").contains("skipped"),
        "{text}"
    );

    // A failed and a not-applicable case, with characters XML must escape, re-rendered.
    let other = scratch("failed");
    copy_run(run, &other);
    let json = other.join("report.json");
    let mut report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report.json")).expect("JSON");
    let cases = report["cases"].as_array_mut().expect("cases");
    cases[0]["status"] = "failed".into();
    cases[0]["message"] = "expected 2.05, got 4.04 <&\"'> \u{1}\nthe exchange".into();
    cases[1]["status"] = "not-applicable".into();
    cases[1]["message"] = "no /16 on the device".into();
    std::fs::write(&json, report.to_string()).expect("report.json written");
    harness(&["report", &other.to_string_lossy()]);
    let junit = other.join("junit.xml");
    assert_valid_junit(&junit);
    let text = std::fs::read_to_string(&junit).expect("junit.xml");
    assert!(
        text.contains("<failure message=\"expected 2.05, got 4.04 &lt;&amp;"),
        "{text}"
    );
    assert!(
        text.contains("<skipped message=\"not applicable: no /16"),
        "{text}"
    );

    // The matrix of both runs.
    let matrix = scratch("matrix");
    harness(&[
        "report",
        "matrix",
        &run.to_string_lossy(),
        &other.to_string_lossy(),
        "--out",
        &matrix.to_string_lossy(),
    ]);
    assert_valid_junit(&matrix.join("junit.xml"));
}

#[test]
fn cucumber_json_is_accepted_by_the_official_converter() {
    let json = run_dir().join("cucumber/cucumber.json");
    let node_dir = workspace().join("interop/node");
    assert!(
        node_dir
            .join("node_modules/@cucumber/cucumber-json-converter")
            .is_dir(),
        "npm @cucumber/cucumber-json-converter is not installed: run scripts/test, or \
         npm ci --prefix interop/node"
    );
    let out = match Command::new("node")
        .arg(node_dir.join("check-cucumber-json.js"))
        .arg(&json)
        .current_dir(&node_dir)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            panic!("node not found ({e}): install Node.js (Debian: apt-get install nodejs npm)")
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the converter rejects {}:\n{}",
        json.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("accepted: "), "{stdout}");
    // What the converter needs beyond cucumber's writer, there with real values.
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("cucumber.json"))
            .expect("JSON");
    let features = value.as_array().expect("a list of features");
    let registration = features
        .iter()
        .find(|f| {
            f["uri"]
                .as_str()
                .is_some_and(|u| u.ends_with("registration/registration.feature"))
        })
        .expect("the registration feature");
    let line = registration["line"].as_u64().expect("a line");
    let text =
        std::fs::read_to_string(workspace().join("features/registration/registration.feature"))
            .expect("the feature file");
    let at = text
        .lines()
        .nth(line as usize - 1)
        .expect("the line is in the file");
    assert!(at.trim_start().starts_with("Feature:"), "line {line}: {at}");
    assert!(registration["description"].is_string());
    assert!(registration["id"].as_str().is_some_and(|id| !id.is_empty()));
    let hook = &registration["elements"][0]["before"][0]["match"]["location"];
    assert!(
        hook.as_str()
            .is_some_and(|l| l.starts_with("harness/src/bdd/run.rs:")),
        "{hook}"
    );
}

#[test]
fn cucumber_junit_and_the_readme_count_the_same_suite() {
    let run = run_dir();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("cucumber/cucumber.json")).expect("cucumber.json"),
    )
    .expect("JSON");
    let scenarios = json
        .as_array()
        .expect("features")
        .iter()
        .flat_map(|f| f["elements"].as_array().into_iter().flatten())
        .filter(|e| e["type"] == "scenario")
        .count();
    // Cucumber's own JUnit: one test case per scenario.
    let cucumber_junit =
        std::fs::read_to_string(run.join("cucumber/junit.xml")).expect("cucumber junit");
    assert_eq!(cucumber_junit.matches("<testcase ").count(), scenarios);
    // The run's JUnit: one test case per case tag (a scenario with two case tags is two).
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("report.json")).expect("report.json"),
    )
    .expect("JSON");
    let cases = report["cases"].as_array().expect("cases").len();
    let junit = std::fs::read_to_string(run.join("junit.xml")).expect("junit.xml");
    assert_eq!(junit.matches("<testcase ").count(), cases);
    assert!(junit.contains(&format!("tests=\"{cases}\"")), "{cases}");
    // The README says both numbers.
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README");
    let claim = format!("`features/` holds {scenarios} scenarios ({cases} cases");
    assert!(
        readme.contains(&claim),
        "the README should say {claim:?} (the suite has {scenarios} scenarios, {cases} cases)"
    );
}
