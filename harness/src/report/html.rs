//! `report.html`: one self-contained file (no scripts, no external assets).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{RunReport, Status, charts, escape, usage};

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}\
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.passed{background:#d9f2d9}.failed{background:#f8d0d0}.not-applicable{background:#eee;color:#666}.not-supported{background:#fdf1c7}.passed-with-findings{background:#e8f2c0}\
.badge{display:inline-block;padding:.15em .6em;border-radius:1em;margin-right:.4em;font-weight:600}\
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:12px}.meta td:first-child{font-weight:600}\
svg text{font:11px system-ui,sans-serif}svg text.axis-label{font-size:12px;font-weight:600}\
figure{margin:.6em 0}svg text.chart-title{font-size:13px;font-weight:600}figcaption ol.marks{font-size:12px;color:#555;columns:2;margin:.2em 0 0 1em}";

/// Renders the whole report.
pub fn render(r: &RunReport) -> String {
    render_with(r, &[])
}

/// Renders the whole report with extra preformatted sections (title, text) after the
/// network usage (the scenario runner's DTLS accounting and comparisons).
pub fn render_with(r: &RunReport, sections: &[(String, String)]) -> String {
    let mut s = String::new();
    let c = r.counts();
    let (p, f, ns, na) = (c.passed, c.failed, c.not_supported, c.not_applicable);
    let _ = writeln!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n\
         <p><span class=\"badge passed\">{p} passed</span><span class=\"badge failed\">{f} failed</span>\
         <span class=\"badge not-supported\">{ns} not supported</span><span class=\"badge not-applicable\">{na} not applicable</span></p>",
        title = escape(&r.title)
    );
    let _ = writeln!(
        s,
        "<table class=\"meta\"><tr><td>run</td><td>{}</td></tr><tr><td>seed</td><td>{}</td></tr>\
         <tr><td>harness</td><td>lwm2m-harness {} (git {})</td></tr>\
         <tr><td>started</td><td>{}</td></tr><tr><td>duration</td><td>{:.1} s</td></tr></table>",
        escape(&r.run),
        r.seed,
        escape(&r.product_version),
        escape(&r.git_revision),
        utc(r.started_unix_s),
        r.duration_s
    );
    subjects(&mut s, r);
    matrix(&mut s, r);
    latencies(&mut s, r);
    throughput(&mut s, r);
    network(&mut s, r);
    for (title, text) in sections {
        let _ = writeln!(s, "<h2>{}</h2><pre>{}</pre>", escape(title), escape(text));
    }
    if !r.counters.is_empty() {
        s.push_str("<h2>Counters</h2><table>");
        for (k, v) in &r.counters {
            let _ = write!(
                s,
                "<tr><td>{}</td><td class=\"num\">{v}</td></tr>",
                escape(k)
            );
        }
        s.push_str("</table>\n");
    }
    s.push_str("</body></html>\n");
    s
}

/// `YYYY-MM-DD hh:mm:ss UTC` for Unix seconds (proleptic Gregorian calendar).
fn utc(unix_s: f64) -> String {
    let (y, m, d, h, mi, sec) = super::civil_utc(unix_s.max(0.0) as i64);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{sec:02} UTC")
}

fn subjects(s: &mut String, r: &RunReport) {
    s.push_str(
        "<h2>Subjects</h2><table><tr><th>id</th><th>kind</th><th>version</th><th>address</th></tr>",
    );
    for sub in &r.subjects {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&sub.id),
            escape(&sub.kind),
            escape(&sub.version),
            escape(sub.address.as_deref().unwrap_or("in process"))
        );
    }
    s.push_str("</table>\n");
}

/// Case ids in natural order: `int-2` before `int-10`, tags without numbers last.
fn case_key(case: &str) -> (String, u64, String) {
    let digits: String = case.chars().filter(char::is_ascii_digit).collect();
    let prefix: String = case.chars().take_while(|c| !c.is_ascii_digit()).collect();
    (prefix, digits.parse().unwrap_or(u64::MAX), case.to_owned())
}

fn matrix(s: &mut String, r: &RunReport) {
    if r.cases.is_empty() {
        return;
    }
    let subjects: BTreeSet<&str> = r.cases.iter().map(|c| c.subject.as_str()).collect();
    let mut rows: BTreeMap<(String, u64, String), BTreeMap<&str, Vec<&super::CaseResult>>> =
        BTreeMap::new();
    for c in &r.cases {
        rows.entry(case_key(&c.case))
            .or_default()
            .entry(c.subject.as_str())
            .or_default()
            .push(c);
    }
    s.push_str("<h2>Results by test case and subject</h2><table><tr><th>case</th><th>title</th>");
    for sub in &subjects {
        let _ = write!(s, "<th>{}</th>", escape(sub));
    }
    s.push_str("</tr>\n");
    for ((_, _, case), cells) in &rows {
        let title = cells
            .values()
            .flatten()
            .next()
            .map_or("", |c| c.title.as_str());
        let _ = write!(s, "<tr><td>{}</td><td>{}</td>", escape(case), escape(title));
        for sub in &subjects {
            match cells.get(sub) {
                None => s.push_str("<td></td>"),
                Some(results) => {
                    // The worst outcome of the case's scenarios decides the cell.
                    let worst = results
                        .iter()
                        .map(|c| c.status)
                        .max_by_key(|st| match st {
                            Status::Passed => 0,
                            Status::NotApplicable => 1,
                            Status::NotSupported => 2,
                            Status::Failed => 3,
                        })
                        .unwrap_or(Status::Passed);
                    let findings = results.iter().any(|c| c.passed_with_findings());
                    let class = match worst {
                        Status::Passed if findings => "passed-with-findings",
                        Status::Passed => "passed",
                        Status::Failed => "failed",
                        Status::NotApplicable => "not-applicable",
                        Status::NotSupported => "not-supported",
                    };
                    let tip: Vec<String> = results
                        .iter()
                        .filter_map(|c| c.message.clone())
                        .chain(results.iter().flat_map(|c| c.findings.clone()))
                        .collect();
                    let links: Vec<String> = results
                        .iter()
                        .flat_map(|c| &c.evidence)
                        .map(|e| format!(" <a href=\"{0}\">{0}</a>", escape(e)))
                        .collect();
                    let _ = write!(
                        s,
                        "<td class=\"{class}\" title=\"{}\">{}{}</td>",
                        escape(&tip.join("\n")),
                        class.replace('-', " "),
                        links.join("")
                    );
                }
            }
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    let failures: Vec<_> = r
        .cases
        .iter()
        .filter(|c| c.status != Status::Passed || !c.findings.is_empty())
        .collect();
    if !failures.is_empty() {
        s.push_str("<h2>Cases not passed: failed, not supported, not applicable</h2>\n");
        for c in failures {
            let _ = writeln!(
                s,
                "<h3 class=\"{}\">{} — {} [{}]: {}</h3><pre>{}</pre>",
                if c.passed_with_findings() {
                    "passed-with-findings".to_owned()
                } else {
                    c.status.label().replace(' ', "-")
                },
                escape(&c.case),
                escape(&c.title),
                escape(&c.subject),
                if c.passed_with_findings() {
                    "passed with findings"
                } else {
                    c.status.label()
                },
                escape(
                    &c.message
                        .iter()
                        .chain(&c.findings)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            );
        }
    }
}

fn latencies(s: &mut String, r: &RunReport) {
    if r.latencies.is_empty() {
        return;
    }
    s.push_str("<h2>Latency by operation</h2><table><tr><th>operation</th><th>count</th><th>mean ms</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th></tr>");
    for (op, l) in &r.latencies {
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.3}</td><td class=\"num\">{:.3}</td><td class=\"num\">{:.3}</td><td class=\"num\">{:.3}</td><td class=\"num\">{:.3}</td><td class=\"num\">{:.3}</td></tr>",
            escape(op),
            l.count,
            l.mean_ms,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms
        );
    }
    s.push_str("</table>\n");
    if r.latencies.keys().any(|op| op.ends_with("-queued")) {
        s.push_str(
            "<p><code>…-queued</code>: operations that waited in the server's queue for a sleeping \
             queue-mode client (sent before its latest wake-up, Core TS 1.1 §6.5), apart from the others: \
             their latency is mostly the sleep.</p>\n",
        );
    }
    // The distribution: the run's own, or (suite reports) the summary's percentiles.
    let mut data = r.charts.clone();
    if data.distribution.is_empty() {
        for (op, l) in &r.latencies {
            data.distribution.insert(
                op.clone(),
                vec![
                    [50.0, l.p50_ms],
                    [90.0, l.p90_ms],
                    [99.0, l.p99_ms],
                    [99.9, l.p999_ms],
                    [100.0, l.max_ms],
                ],
            );
        }
    }
    if let Some(chart) = charts::distribution(&data) {
        s.push_str(
            "<h3>Latency percentile distribution</h3><p>Each operation's latency (log scale) at each \
             percentile; the percentile axis gives 90 %, 99 %, 99.9 %, … equal room (HdrHistogram's plot).</p>",
        );
        s.push_str(&chart.html());
    }
    let over = charts::percentiles_over_time(&r.charts, r.duration_s);
    if !over.is_empty() {
        s.push_str(
            "<h3>Latency percentiles over time</h3><p>The samples completed in each second (drawn at \
             its middle): every operation's median and 99th percentile, then the percentiles of each \
             operation seen in three seconds or more. <code>latencies.hlog</code> has the same seconds \
             as HdrHistogram interval histograms (also per client group). Numbered marks: the \
             timeline's actions, listed under <a href=\"#clients\">Clients over time</a>.</p>",
        );
        for chart in over {
            s.push_str(&charts::with_timeline(chart, &r.charts).html());
        }
    }
}

fn throughput(s: &mut String, r: &RunReport) {
    let c = &r.charts;
    let by_op = charts::rates(
        "Requests per second by operation",
        &c.requests_by_operation,
        r.duration_s,
    );
    let by_group = charts::rates(
        "Requests per second by client group",
        &c.requests_by_group,
        r.duration_s,
    );
    if by_op.is_some() || by_group.is_some() {
        s.push_str(
            "<h2>Requests over time</h2><p>CoAP requests on the wire per second (both directions: \
             the clients' Register, Update, Bootstrap, the servers' Device Management and \
             Information Reporting requests; the Bootstrap Server's Write and Delete count as \
             write and delete), from the capture; by client group through each client's endpoint \
             (<code>exchanges.csv</code> has every one). Numbered marks: the timeline's actions, \
             listed under <a href=\"#clients\">Clients over time</a>.</p>",
        );
        for chart in by_op.into_iter().chain(by_group) {
            s.push_str(&charts::with_timeline(chart, c).html());
        }
    } else if r.throughput.len() >= 2 {
        let mut ops = BTreeMap::new();
        ops.insert(
            "operations".to_owned(),
            r.throughput
                .iter()
                .map(|p| u32::try_from(p.ops).unwrap_or(u32::MAX))
                .collect(),
        );
        if let Some(chart) = charts::rates("Operations completed per second", &ops, r.duration_s) {
            s.push_str("<h2>Throughput over time</h2>");
            s.push_str(&chart.html());
        }
    }
    if let Some(chart) = charts::clients(c, r.duration_s) {
        s.push_str(
            "<h2 id=\"clients\">Clients over time</h2><p>The fleet's clients started, registered, and asleep (radio off: \
             the profile's sleep cycle, queue mode, or the timeline's <code>sleep</code>; datagrams to them \
             are lost); the numbered marks are the scenario's timeline actions.</p>",
        );
        s.push_str(&chart.html());
    }
}

fn network(s: &mut String, r: &RunReport) {
    if r.network_usage.is_empty() {
        return;
    }
    match &r.network_usage_client {
        Some(client) => {
            let _ = write!(
                s,
                "<h2>Network usage of one client: {}</h2><p>Every exchange of this sample client \
                 (the first of its group); the whole run's usage by operation is in the next section \
                 and in <code>network-usage.txt</code>.</p><pre>",
                escape(client)
            );
        }
        None => s.push_str("<h2>Network usage per exchange</h2><pre>"),
    }
    s.push_str(&escape(&usage::render_table(&r.network_usage)));
    s.push_str("</pre>\n");
}

#[cfg(test)]
mod tests {
    #[test]
    fn html_is_self_contained_and_escaped() {
        let h = super::render(&super::super::tests::sample());
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert!(!h.contains("<script") && !h.contains("http://") && !h.contains("https://"));
        assert!(h.contains("sample &lt;run&gt;"));
        assert!(h.contains("class=\"failed\""));
        // The suite's summaries as a distribution, on real axes.
        assert!(h.contains("aria-label=\"Latency percentile distribution by operation\""));
        assert!(h.contains("<g class=\"series\" data-name=\"register\""));
        assert!(h.contains(">99.9%</text>") && h.contains(">latency (ms)</text>"));
        // The throughput of a run without request rates.
        assert!(h.contains("aria-label=\"Operations completed per second\""));
        assert!(h.contains("<polyline"));
        assert!(h.contains("1 passed") && h.contains("1 failed") && h.contains("1 not applicable"));
        assert!(h.contains("1 not supported"), "{h}");
        assert!(super::case_key("int-2") < super::case_key("int-10"));
        assert_eq!(super::utc(1_700_000_000.0), "2023-11-14 22:13:20 UTC");
        assert_eq!(super::utc(0.0), "1970-01-01 00:00:00 UTC");
    }
}
