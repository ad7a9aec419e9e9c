//! JUnit XML for CI systems, valid against the Jenkins/Ant `junit-10.xsd` (our copy of its
//! constraints: `harness/tests/data/junit-10.xsd`): one `<testsuite>` per feature file
//! with `<properties>` (seed, subjects, product version, git revision), `errors`,
//! `timestamp` and `hostname`; one `<testcase>` per case and subject, its `classname` the
//! dotted feature path and case id (`registration.register.int-101`); failures carry the
//! message, not-supported and not-applicable cases are `<skipped>` with the verdict and the
//! reason, and `<system-out>` holds the evidence files and the start of the exchange log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;

use super::{CaseResult, RunReport, Status, escape};

/// How much of a case's exchange log goes into its `<system-out>`.
const EXCERPT_BYTES: usize = 4096;

/// Renders the report as JUnit XML, without exchange-log excerpts.
pub fn render(r: &RunReport) -> String {
    render_in(r, None)
}

/// Renders the report as JUnit XML; with `dir` (the run folder) each case's `<system-out>`
/// also holds the start of its exchange log.
pub fn render_in(r: &RunReport, dir: Option<&Path>) -> String {
    let mut by_feature: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
    for c in &r.cases {
        by_feature.entry(c.feature.as_str()).or_default().push(c);
    }
    let counts = r.counts();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" time=\"{:.3}\">",
        escape(&r.title),
        counts.total(),
        counts.failed,
        r.duration_s.max(0.0)
    );
    let timestamp = iso8601(r.started_unix_s);
    let hostname = if r.hostname.is_empty() {
        "localhost"
    } else {
        &r.hostname
    };
    for (id, (feature, cases)) in by_feature.into_iter().enumerate() {
        let f = cases.iter().filter(|c| c.status == Status::Failed).count();
        let k = cases
            .iter()
            .filter(|c| matches!(c.status, Status::NotApplicable | Status::NotSupported))
            .count();
        let t: f64 = cases.iter().map(|c| c.duration_ms.max(0.0)).sum::<f64>() / 1000.0;
        let _ = writeln!(
            s,
            "  <testsuite name=\"{}\" id=\"{id}\" tests=\"{}\" failures=\"{f}\" errors=\"0\" \
             skipped=\"{k}\" time=\"{t:.3}\" timestamp=\"{timestamp}\" hostname=\"{}\">",
            escape(feature),
            cases.len(),
            escape(hostname)
        );
        s.push_str("    <properties>\n");
        for (name, value) in properties(r) {
            let _ = writeln!(
                s,
                "      <property name=\"{}\" value=\"{}\"/>",
                escape(&name),
                escape(&value)
            );
        }
        s.push_str("    </properties>\n");
        for c in cases {
            testcase(&mut s, c, dir);
        }
        s.push_str("  </testsuite>\n");
    }
    s.push_str("</testsuites>\n");
    s
}

/// One `<testcase>`.
fn testcase(s: &mut String, c: &CaseResult, dir: Option<&Path>) {
    let _ = writeln!(
        s,
        "    <testcase classname=\"{}\" name=\"{} {} [{}]\" time=\"{:.3}\">",
        escape(&classname(&c.feature, &c.case)),
        escape(&c.case),
        escape(&c.title),
        escape(&c.subject),
        c.duration_ms.max(0.0) / 1000.0
    );
    let msg = c.message.as_deref().unwrap_or("");
    match c.status {
        Status::Passed => {}
        Status::Failed => {
            let first = msg.lines().next().unwrap_or("");
            let _ = writeln!(
                s,
                "      <failure message=\"{}\" type=\"failed\">{}</failure>",
                escape(first),
                escape(msg)
            );
        }
        Status::NotApplicable | Status::NotSupported => {
            let _ = writeln!(
                s,
                "      <skipped message=\"{}: {}\"/>",
                c.status.label(),
                escape(msg)
            );
        }
    }
    let out = system_out(c, dir);
    if !out.is_empty() {
        let _ = writeln!(s, "      <system-out>{}</system-out>", escape(&out));
    }
    s.push_str("    </testcase>\n");
}

/// What a case's `<system-out>` says: its findings, its evidence files and the start of
/// its exchange log (when the run folder is known).
fn system_out(c: &CaseResult, dir: Option<&Path>) -> String {
    let mut out = String::new();
    if !c.findings.is_empty() {
        let _ = writeln!(out, "passed with findings:\n{}", c.findings.join("\n"));
    }
    if !c.evidence.is_empty() {
        let _ = writeln!(out, "evidence: {}", c.evidence.join(", "));
    }
    let log = c.evidence.iter().find(|e| e.ends_with(".txt"));
    if let (Some(dir), Some(log)) = (dir, log)
        && let Some(excerpt) = excerpt(&dir.join(log))
    {
        let _ = writeln!(out, "--- {log}\n{excerpt}");
    }
    out
}

/// The first [`EXCERPT_BYTES`] of a text file, cut at a line end, with a note when cut.
fn excerpt(path: &Path) -> Option<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(EXCERPT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    let cut = bytes.len() > EXCERPT_BYTES;
    bytes.truncate(EXCERPT_BYTES);
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if cut {
        text.truncate(text.rfind('\n').map_or(0, |n| n + 1));
        text.push_str("[... the rest is in the file]\n");
    }
    Some(text)
}

/// The run's `<properties>`: seed, each subject (its id and where it was reached), product
/// version, git revision, run name.
fn properties(r: &RunReport) -> Vec<(String, String)> {
    let mut p = vec![
        ("seed".to_owned(), r.seed.to_string()),
        ("run".to_owned(), r.run.clone()),
    ];
    for subject in &r.subjects {
        let value = match &subject.address {
            Some(a) => format!("{} ({} at {a})", subject.id, subject.kind),
            None => format!("{} ({})", subject.id, subject.kind),
        };
        p.push(("subject".to_owned(), value));
    }
    p.push(("product.version".to_owned(), r.product_version.clone()));
    p.push(("git.revision".to_owned(), r.git_revision.clone()));
    p
}

/// A case's JUnit `classname`: the feature file's path under `features/` without its
/// extension, dotted, then the case id (its dots as `_`, so that CI servers that read the
/// last dotted part as the class see the whole id): `registration.register.int-101`.
pub fn classname(feature: &str, case: &str) -> String {
    let path = feature.replace('\\', "/");
    let path = path.strip_prefix("./").unwrap_or(&path);
    let path = path.strip_prefix("features/").unwrap_or(path);
    let path = path.strip_suffix(".feature").unwrap_or(path);
    let mut parts: Vec<String> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != "..")
        .map(|p| p.replace('.', "_"))
        .collect();
    parts.push(case.replace('.', "_"));
    parts.join(".")
}

/// `YYYY-MM-DDThh:mm:ss` (UTC, the form Ant writes) of a Unix time.
pub fn iso8601(unix_s: f64) -> String {
    let secs = if unix_s.is_finite() { unix_s as i64 } else { 0 };
    let (y, m, d, h, mi, s) = super::civil_utc(secs);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_counts_and_escapes() {
        let x = render(&super::super::tests::sample());
        assert!(
            x.contains(
                "<testsuites name=\"sample &lt;run&gt;\" tests=\"4\" failures=\"1\" errors=\"0\""
            ),
            "{x}"
        );
        assert!(!x.lines().nth(1).unwrap().contains("skipped"), "{x}");
        assert!(x.contains("&lt;oops&gt;"), "{x}");
        assert!(
            x.contains("<skipped message=\"not applicable: no certificate support"),
            "{x}"
        );
        assert!(
            x.contains("<skipped message=\"not supported: refused with 4.06"),
            "{x}"
        );
        assert_eq!(x.matches("<testsuite ").count(), 3);
        assert_eq!(x.matches("<properties>").count(), 3);
        assert!(x.contains("<property name=\"seed\" value=\"42\"/>"), "{x}");
        assert!(x.contains("timestamp=\"2023-11-14T22:13:20\""), "{x}");
        assert!(
            x.contains("classname=\"registration.register.int-101\""),
            "{x}"
        );
        assert!(x.contains("evidence: exchanges/int-101.txt"), "{x}");
    }

    #[test]
    fn classnames_are_dotted_case_ids() {
        assert_eq!(
            classname("features/registration/register.feature", "int-101"),
            "registration.register.int-101"
        );
        assert_eq!(classname("x.feature", "core-6.2.1"), "x.core-6_2_1");
        assert_eq!(classname("", "int-1"), "int-1");
    }

    #[test]
    fn excerpts_are_cut_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = super::super::tests::sample();
        let log: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        std::fs::create_dir(dir.path().join("exchanges")).unwrap();
        std::fs::write(dir.path().join("exchanges/int-101.txt"), log).unwrap();
        r.cases.truncate(1);
        let x = render_in(&r, Some(dir.path()));
        assert!(x.contains("--- exchanges/int-101.txt\nline 0\n"), "{x}");
        assert!(x.contains("[... the rest is in the file]"), "{x}");
        assert!(!x.contains("line 999"), "{x}");
    }
}
