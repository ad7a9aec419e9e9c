//! JUnit XML for CI systems: one `<testsuite>` per feature file, one `<testcase>` per case
//! and subject; failures carry the message, not-supported and not-applicable cases are `<skipped>`
//! with the verdict and the reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{RunReport, Status, escape};

/// Renders the report as JUnit XML.
pub fn render(r: &RunReport) -> String {
    let mut by_feature: BTreeMap<&str, Vec<&super::CaseResult>> = BTreeMap::new();
    for c in &r.cases {
        by_feature.entry(c.feature.as_str()).or_default().push(c);
    }
    let counts = r.counts();
    let (failed, skipped) = (counts.failed, counts.not_supported + counts.not_applicable);
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{failed}\" skipped=\"{skipped}\" time=\"{:.3}\">",
        escape(&r.title),
        counts.total(),
        r.duration_s
    );
    for (feature, cases) in by_feature {
        let f = cases.iter().filter(|c| c.status == Status::Failed).count();
        let k = cases
            .iter()
            .filter(|c| matches!(c.status, Status::NotApplicable | Status::NotSupported))
            .count();
        let t: f64 = cases.iter().map(|c| c.duration_ms).sum::<f64>() / 1000.0;
        let _ = writeln!(
            s,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\" skipped=\"{k}\" time=\"{t:.3}\">",
            escape(feature),
            cases.len()
        );
        for c in cases {
            let _ = write!(
                s,
                "    <testcase classname=\"{}\" name=\"{} {} [{}]\" time=\"{:.3}\"",
                escape(feature),
                escape(&c.case),
                escape(&c.title),
                escape(&c.subject),
                c.duration_ms / 1000.0
            );
            let msg = escape(c.message.as_deref().unwrap_or(""));
            match c.status {
                Status::Passed if c.findings.is_empty() => s.push_str("/>\n"),
                Status::Passed => {
                    let _ = writeln!(
                        s,
                        ">\n      <system-out>passed with findings:\n{}</system-out>\n    </testcase>",
                        escape(&c.findings.join("\n"))
                    );
                }
                Status::Failed => {
                    let first = msg.lines().next().unwrap_or("");
                    let _ = writeln!(
                        s,
                        ">\n      <failure message=\"{first}\">{msg}</failure>\n    </testcase>"
                    );
                }
                Status::NotApplicable | Status::NotSupported => {
                    let _ = writeln!(
                        s,
                        ">\n      <skipped message=\"{}: {msg}\"/>\n    </testcase>",
                        c.status.label()
                    );
                }
            }
        }
        s.push_str("  </testsuite>\n");
    }
    s.push_str("</testsuites>\n");
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn junit_counts_and_escapes() {
        let x = super::render(&super::super::tests::sample());
        assert!(
            x.contains("tests=\"4\" failures=\"1\" skipped=\"2\""),
            "{x}"
        );
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
    }
}
