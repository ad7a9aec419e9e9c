//! The run's outputs as the ecosystem's tools read them: `junit.xml` validated by
//! `xmllint --schema` against the Jenkins/Ant JUnit schema (`tests/data/junit-10.xsd`),
//! for a real run, for a re-rendered one with a failed and a skipped case, and for a
//! matrix of runs.

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

/// One suite run (three cases against the in-process subject) the tests share.
fn run_dir() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = scratch("run");
        harness(&[
            "test",
            "--quiet",
            "--tags",
            "@int-101 or @int-102 or @int-203",
            "--report-dir",
            &dir.to_string_lossy(),
        ]);
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
