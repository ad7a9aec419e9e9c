//! A deviating subject fails the ETS cases it deviates in, and the report says so.
//!
//! The same cases run three times in process: against our simulated client as it is, with
//! the quirk pack `sloppy-encoder` (wrong success codes, Accept ignored, over-long TLV
//! integers), and with `pre-1.0-draft` (no `lwm2m=`, pre-1.0 content formats) added to
//! every client. Each quirky subject must fail the cases it deviates in with messages that
//! name the deviation and pass the others, and the merged report (report.json,
//! report.html) must show the subjects side by side.

use std::path::{Path, PathBuf};

use lwm2m_harness::bdd::Subject;
use lwm2m_harness::bdd::run::{self, DEFAULT_SEED, SuiteOptions};
use lwm2m_harness::report::{CaseResult, RunReport, Status};

const TAGS: &str = "@int-101 or @int-201 or @int-205 or @int-241";

fn run(root: &Path, dir: &Path, subject: Subject) -> RunReport {
    let options = SuiteOptions {
        features: vec![root.join("features")],
        root: root.to_path_buf(),
        ddf: Vec::new(),
        tags: Some(TAGS.to_owned()),
        subject,
        seed: DEFAULT_SEED,
        report_dir: dir.to_path_buf(),
        run: "broken-subject".to_owned(),
        console: false,
        device_profile: None,
        device: None,
    };
    let outcome = run::run_suite(&options).expect("the suite runs");
    assert!(outcome.untagged.is_empty() && outcome.parsing_errors == 0);
    outcome.report
}

fn case<'a>(report: &'a RunReport, id: &str) -> &'a CaseResult {
    report
        .cases
        .iter()
        .find(|c| c.case == id)
        .unwrap_or_else(|| panic!("{id} did not run:\n{}", run::summary(report)))
}

#[test]
fn quirky_client_fails_the_cases_it_deviates_in() {
    let root = run::workspace_root(Path::new(env!("CARGO_MANIFEST_DIR")));
    let tmp = tempfile::tempdir().unwrap();
    let clean = run(&root, &tmp.path().join("clean"), Subject::in_process());
    let quirky = run(
        &root,
        &tmp.path().join("quirky"),
        Subject::InProcess {
            quirks: vec!["sloppy-encoder".to_owned()],
        },
    );
    let draft = run(
        &root,
        &tmp.path().join("draft"),
        Subject::InProcess {
            quirks: vec!["pre-1.0-draft".to_owned()],
        },
    );

    for id in ["int-101", "int-201", "int-205", "int-241"] {
        assert_eq!(
            case(&clean, id).status,
            Status::Passed,
            "{}",
            run::summary(&clean)
        );
    }
    assert_eq!(case(&quirky, "int-101").status, Status::Passed);
    for (id, names) in [
        (
            "int-205",
            [
                "2.05 Content, expected 2.04 Changed",
                "wrong one for this operation",
            ],
        ),
        (
            "int-241",
            [
                "2.05 Content, expected 2.04 Changed",
                "wrong one for this operation",
            ],
        ),
        (
            "int-201",
            [
                "2.04 Changed, expected 2.05 Content",
                "wrong one for this operation",
            ],
        ),
    ] {
        let c = case(&quirky, id);
        assert_eq!(c.status, Status::Failed, "{id}: {c:?}");
        let message = c.message.as_deref().unwrap_or("");
        for name in names {
            assert!(message.contains(name), "{id}: {message}");
        }
        // The failing exchange is in the message and in the evidence.
        assert!(message.contains("exchange:"), "{id}: {message}");
        assert!(
            c.evidence.iter().any(|e| e.ends_with(".pcap")),
            "{id}: {c:?}"
        );
        assert!(tmp.path().join("quirky").join(&c.evidence[0]).is_file());
    }

    let c = case(&draft, "int-101");
    assert_eq!(c.status, Status::Failed, "{c:?}");
    let message = c.message.as_deref().unwrap_or("");
    assert!(
        message.contains("registered as LwM2M 1.0, not 1.1")
            && message.contains("no lwm2m= parameter"),
        "{message}"
    );

    // One report, every subject: the matrix shows the deviation beside the clean run.
    let mut merged = clean.clone();
    for other in [&quirky, &draft] {
        merged.subjects.extend(other.subjects.clone());
        merged.cases.extend(other.cases.clone());
    }
    merged.title = "in-process against a sloppy encoder".to_owned();
    let dir: PathBuf = tmp.path().join("merged");
    merged.write(&dir).unwrap();
    let back = RunReport::load(&dir).unwrap();
    assert_eq!(back.subjects.len(), 3);
    assert_eq!(back.seed, DEFAULT_SEED);
    let failed: Vec<(&str, &str)> = back
        .cases
        .iter()
        .filter(|c| c.status == Status::Failed)
        .map(|c| (c.case.as_str(), c.subject.as_str()))
        .collect();
    assert!(
        failed.contains(&("int-205", "in-process+sloppy-encoder")),
        "{failed:?}"
    );
    assert!(
        failed.contains(&("int-101", "in-process+pre-1.0-draft")),
        "{failed:?}"
    );
    assert!(failed.iter().all(|(_, s)| *s != "in-process"), "{failed:?}");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let row = html
        .lines()
        .find(|l| l.contains("<tr><td>int-205</td>"))
        .expect("a matrix row for int-205");
    let passed = row.find("class=\"passed\"").expect("clean subject passed");
    let failed = row.find("class=\"failed\"").expect("quirky subject failed");
    assert!(passed < failed, "{row}");
    assert!(html.contains("wrong one for this operation"));
}
