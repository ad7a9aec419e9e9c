//! The interoperability matrix: several runs (one device each) side by side, case by
//! device: verdict, finding count, evidence link. Written as `matrix.json`, `matrix.html`,
//! `matrix.txt` and `junit.xml` (one `<testsuite>` per device).
//!
//! It reads each run's `report.json` as plain JSON, so it takes the verdicts and fields the
//! run recorded (a `findings` list on a case counts; a run without them shows no count).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

use super::escape;

/// One device's column: the run it comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Column {
    /// The subject id (`device:EP`), or the run folder's name.
    pub subject: String,
    /// The run folder, as given.
    pub run_dir: PathBuf,
    /// The run's title.
    pub title: String,
    /// How many cases had each verdict.
    pub tally: BTreeMap<String, usize>,
}

/// One device's result for a case.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Cell {
    /// The verdict as the run recorded it (`passed`, `failed`, `not-applicable`, ...).
    pub status: String,
    /// The first line of the message (the failure, or why not applicable).
    pub reason: Option<String>,
    /// How many findings the case had, if the run records findings.
    pub findings: Option<usize>,
    /// The first evidence file, relative to the matrix's folder when it lies beneath it.
    pub evidence: Option<String>,
    /// The case's time, milliseconds.
    pub duration_ms: f64,
}

/// One row: a case (scenario) and each device's cell (`None`: that run did not have it).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    /// The case tag (`int-101`).
    pub case: String,
    /// The scenario's title.
    pub title: String,
    /// The feature file.
    pub feature: String,
    /// One cell per column.
    pub cells: Vec<Option<Cell>>,
}

/// The matrix.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Matrix {
    /// The devices, in the order given.
    pub columns: Vec<Column>,
    /// The cases, in the order they first appear.
    pub rows: Vec<Row>,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// A path for a link from `out`: relative when `path` lies under `out`.
fn link_from(out: &Path, path: &Path) -> String {
    let abs = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (out, path) = (abs(out), abs(path));
    path.strip_prefix(&out)
        .map_or_else(|_| path.display().to_string(), |p| p.display().to_string())
}

impl Matrix {
    /// Reads the runs' `report.json`; evidence links are made relative to `out`.
    pub fn load(runs: &[PathBuf], out: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(!runs.is_empty(), "the matrix needs at least one run folder");
        let mut columns = Vec::new();
        let mut rows: Vec<Row> = Vec::new();
        let mut index: BTreeMap<(String, String, String), usize> = BTreeMap::new();
        for (i, dir) in runs.iter().enumerate() {
            let path = dir.join("report.json");
            let json: Value = serde_json::from_str(
                &std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("{}: not JSON", path.display()))?;
            let cases = json
                .get("cases")
                .and_then(Value::as_array)
                .with_context(|| format!("{}: no cases: not a run report", path.display()))?;
            let subject = json
                .get("subjects")
                .and_then(|s| s.get(0))
                .and_then(|s| text(s, "id"))
                .unwrap_or_else(|| {
                    dir.file_name().map_or_else(
                        || dir.display().to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    )
                });
            let mut tally: BTreeMap<String, usize> = BTreeMap::new();
            for c in cases {
                let status = text(c, "status").unwrap_or_else(|| "unknown".to_owned());
                *tally.entry(status.clone()).or_default() += 1;
                let key = (
                    text(c, "case").unwrap_or_default(),
                    text(c, "feature").unwrap_or_default(),
                    text(c, "title").unwrap_or_default(),
                );
                let row = *index.entry(key.clone()).or_insert_with(|| {
                    rows.push(Row {
                        case: key.0.clone(),
                        title: key.2.clone(),
                        feature: key.1.clone(),
                        cells: Vec::new(),
                    });
                    rows.len() - 1
                });
                let cells = &mut rows[row].cells;
                cells.resize(runs.len(), None);
                let evidence = c
                    .get("evidence")
                    .and_then(Value::as_array)
                    .and_then(|e| e.first())
                    .and_then(Value::as_str)
                    .map(|e| link_from(out, &dir.join(e)));
                cells[i] = Some(Cell {
                    status,
                    reason: text(c, "message").and_then(|m| m.lines().next().map(str::to_owned)),
                    findings: c.get("findings").and_then(Value::as_array).map(Vec::len),
                    evidence,
                    duration_ms: c.get("duration_ms").and_then(Value::as_f64).unwrap_or(0.0),
                });
            }
            columns.push(Column {
                subject,
                run_dir: dir.clone(),
                title: text(&json, "title").unwrap_or_default(),
                tally,
            });
        }
        for row in &mut rows {
            row.cells.resize(runs.len(), None);
        }
        Ok(Self { columns, rows })
    }

    /// The matrix as text: one line per case, one column per device.
    pub fn text(&self) -> String {
        let mut s = String::from("interoperability matrix\n");
        for (i, c) in self.columns.iter().enumerate() {
            let tally: Vec<String> = c.tally.iter().map(|(k, v)| format!("{v} {k}")).collect();
            let _ = writeln!(
                s,
                "  [{}] {} ({}): {}",
                i + 1,
                c.subject,
                c.run_dir.display(),
                tally.join(", ")
            );
        }
        let width = self
            .rows
            .iter()
            .map(|r| r.case.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = write!(s, "\n{:width$}", "case");
        for i in 0..self.columns.len() {
            let _ = write!(s, "  {:<18}", format!("[{}]", i + 1));
        }
        s.push_str("  title\n");
        for r in &self.rows {
            let _ = write!(s, "{:width$}", r.case);
            for cell in &r.cells {
                let word = cell.as_ref().map_or_else(
                    || "-".to_owned(),
                    |c| match c.findings {
                        Some(n) if n > 0 => format!("{} ({n}f)", c.status),
                        _ => c.status.clone(),
                    },
                );
                let _ = write!(s, "  {word:<18}");
            }
            let _ = writeln!(s, "  {}", r.title);
        }
        s
    }

    /// The matrix as one self-contained HTML page.
    pub fn html(&self) -> String {
        let mut s = String::from(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Interoperability \
             matrix</title><style>body{font-family:sans-serif}table{border-collapse:collapse}\
             td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top}\
             .passed{background:#d4f7d4}.failed{background:#f7d4d4}\
             .not-applicable{background:#eee}.not-supported{background:#f7efd4}\
             small{color:#555}</style></head><body>\n<h1>Interoperability matrix</h1>\n<ol>\n",
        );
        for c in &self.columns {
            let tally: Vec<String> = c.tally.iter().map(|(k, v)| format!("{v} {k}")).collect();
            let _ = writeln!(
                s,
                "<li><b>{}</b>: <a href=\"{}\">{}</a> ({})</li>",
                escape(&c.subject),
                escape(&format!("{}/report.html", c.run_dir.display())),
                escape(&c.title),
                escape(&tally.join(", "))
            );
        }
        s.push_str("</ol>\n<table>\n<tr><th>case</th><th>scenario</th>");
        for c in &self.columns {
            let _ = write!(s, "<th>{}</th>", escape(&c.subject));
        }
        s.push_str("</tr>\n");
        for r in &self.rows {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}<br><small>{}</small></td>",
                escape(&r.case),
                escape(&r.title),
                escape(&r.feature)
            );
            for cell in &r.cells {
                match cell {
                    None => s.push_str("<td>-</td>"),
                    Some(c) => {
                        let _ = write!(
                            s,
                            "<td class=\"{}\">{}",
                            escape(&c.status),
                            escape(&c.status)
                        );
                        if let Some(n) = c.findings {
                            let _ = write!(s, " <small>{n} finding(s)</small>");
                        }
                        if let Some(e) = &c.evidence {
                            let _ = write!(s, " <a href=\"{}\">evidence</a>", escape(e));
                        }
                        if let Some(why) = &c.reason {
                            let _ = write!(s, "<br><small>{}</small>", escape(why));
                        }
                        s.push_str("</td>");
                    }
                }
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</table>\n</body></html>\n");
        s
    }

    /// JUnit XML: one `<testsuite>` per device, one `<testcase>` per case.
    pub fn junit(&self) -> String {
        let mut s = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"interoperability matrix\">\n",
        );
        for (i, col) in self.columns.iter().enumerate() {
            let cells: Vec<(&Row, &Cell)> = self
                .rows
                .iter()
                .filter_map(|r| r.cells.get(i).and_then(Option::as_ref).map(|c| (r, c)))
                .collect();
            let failures = cells.iter().filter(|(_, c)| c.status == "failed").count();
            let skipped = cells
                .iter()
                .filter(|(_, c)| c.status == "not-applicable")
                .count();
            let time: f64 = cells.iter().map(|(_, c)| c.duration_ms).sum::<f64>() / 1000.0;
            let _ = writeln!(
                s,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time:.3}\">",
                escape(&col.subject),
                cells.len()
            );
            for (r, c) in cells {
                let _ = write!(
                    s,
                    "    <testcase classname=\"{}\" name=\"{} {}\" time=\"{:.3}\"",
                    escape(&super::junit::classname(&r.feature, &r.case)),
                    escape(&r.case),
                    escape(&r.title),
                    c.duration_ms.max(0.0) / 1000.0
                );
                let why = escape(c.reason.as_deref().unwrap_or(""));
                match c.status.as_str() {
                    "failed" => {
                        let _ = writeln!(
                            s,
                            ">\n      <failure message=\"{why}\">{why}</failure>\n    </testcase>"
                        );
                    }
                    "not-applicable" => {
                        let _ =
                            writeln!(s, ">\n      <skipped message=\"{why}\"/>\n    </testcase>");
                    }
                    _ => s.push_str("/>\n"),
                }
            }
            s.push_str("  </testsuite>\n");
        }
        s.push_str("</testsuites>\n");
        s
    }

    /// Writes `matrix.json`, `matrix.html`, `matrix.txt` and `junit.xml` into `out`.
    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let write = |name: &str, text: String| {
            let p = out.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
        };
        write("matrix.json", serde_json::to_string_pretty(self)?)?;
        write("matrix.html", self.html())?;
        write("matrix.txt", self.text())?;
        write("junit.xml", self.junit())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, subject: &str, cases: &[(&str, &str)]) {
        let cases: Vec<Value> = cases
            .iter()
            .map(|(case, status)| {
                serde_json::json!({
                    "case": case, "title": format!("t {case}"), "feature": "f.feature",
                    "subject": subject, "status": status,
                    "message": if *status == "passed" { Value::Null } else { Value::from("why\nmore") },
                    "evidence": [format!("exchanges/{case}.txt")], "duration_ms": 5.0
                })
            })
            .collect();
        std::fs::create_dir_all(dir).unwrap();
        let report = serde_json::json!({
            "title": format!("suite against {subject}"),
            "subjects": [{"id": subject, "kind": "device", "version": "?", "address": null}],
            "cases": cases
        });
        std::fs::write(dir.join("report.json"), report.to_string()).unwrap();
    }

    #[test]
    fn two_runs_side_by_side() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        run(
            &a,
            "device:a",
            &[("int-101", "passed"), ("int-203", "failed")],
        );
        run(
            &b,
            "device:b",
            &[("int-101", "not-applicable"), ("int-301", "passed")],
        );
        let m = Matrix::load(&[a, b], tmp.path()).unwrap();
        assert_eq!(m.columns.len(), 2);
        assert_eq!(m.rows.len(), 3);
        let r101 = &m.rows[0];
        assert_eq!(r101.cells[0].as_ref().unwrap().status, "passed");
        assert_eq!(
            r101.cells[1].as_ref().unwrap().reason.as_deref(),
            Some("why")
        );
        assert_eq!(
            r101.cells[0].as_ref().unwrap().evidence.as_deref(),
            Some("a/exchanges/int-101.txt")
        );
        assert!(m.rows[1].cells[1].is_none() && m.rows[2].cells[0].is_none());
        let junit = m.junit();
        assert_eq!(junit.matches("<testsuite ").count(), 2);
        assert!(
            junit.contains(
                "name=\"device:b\" tests=\"2\" failures=\"0\" errors=\"0\" skipped=\"1\""
            )
        );
        let text = m.text();
        assert!(
            text.contains("device:a") && text.contains("int-301"),
            "{text}"
        );
        m.write(tmp.path()).unwrap();
        assert!(tmp.path().join("matrix.html").is_file());
        assert!(Matrix::load(&[], tmp.path()).is_err());
        assert!(Matrix::load(&[tmp.path().join("nowhere")], tmp.path()).is_err());
    }
}
