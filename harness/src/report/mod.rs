//! Interoperability reports: the run's data as `report.json` (the schema is the
//! [`RunReport`] type, documented field by field), rendered as one self-contained
//! `report.html` (matrix of cases by subject, latency percentile and throughput charts as
//! inline SVG, network usage) and as `junit.xml` for CI.

pub mod charts;
pub mod cucumber_json;
pub mod dtls;
pub mod html;
pub mod junit;
pub mod matrix;
pub mod merge;
pub mod usage;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::record::Summary;
pub use usage::ExchangeUsage;

/// The version of the `report.json` schema.
pub const SCHEMA_VERSION: u32 = 1;

/// The outcome of a case for a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every pass criterion held.
    Passed,
    /// A pass criterion failed: a conformance violation; the message names the clause and
    /// shows the exchange.
    Failed,
    /// The case exercises an optional feature the subject refused with the code the
    /// specification requires for it (4.06 for a format it did not announce, 4.15, 4.05 for
    /// Disable, ...); the message names the refusal and the clause.
    NotSupported,
    /// The case is beyond the subject (an object, instance, LwM2M version or capability it
    /// lacks, or control the harness does not have); the message says what is missing.
    NotApplicable,
}

impl Status {
    /// The name reports use (`passed`, `failed`, `not supported`, `not applicable`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::NotSupported => "not supported",
            Self::NotApplicable => "not applicable",
        }
    }

    /// Whether the subject was exercised: passed, failed or refused the feature.
    pub fn tested(self) -> bool {
        !matches!(self, Self::NotApplicable)
    }
}

/// How many cases of a report have each [`Status`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Passed.
    pub passed: usize,
    /// Failed.
    pub failed: usize,
    /// Not supported (refused with the code the specification requires).
    pub not_supported: usize,
    /// Not applicable.
    pub not_applicable: usize,
    /// Of the passed ones, those with findings.
    pub with_findings: usize,
}

impl CaseResult {
    /// Passed, but with findings.
    pub fn passed_with_findings(&self) -> bool {
        self.status == Status::Passed && !self.findings.is_empty()
    }
}

impl Counts {
    /// Every case.
    pub fn total(&self) -> usize {
        self.passed + self.failed + self.not_supported + self.not_applicable
    }

    /// Cases that exercised the subject (every one but the not applicable ones).
    pub fn tested(&self) -> usize {
        self.passed + self.failed + self.not_supported
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} passed", self.passed)?;
        if self.with_findings > 0 {
            write!(f, " ({} with findings)", self.with_findings)?;
        }
        write!(
            f,
            ", {} failed, {} not supported, {} not applicable",
            self.failed, self.not_supported, self.not_applicable
        )
    }
}

/// A device or server the run exercised.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Subject {
    /// Short id used in the matrix (`sim-1.1`, `device:ep-1`, `server:127.0.0.1:5683`).
    pub id: String,
    /// What it is: `simulated-client`, `device`, `server`.
    pub kind: String,
    /// Its software and version, as far as known.
    pub version: String,
    /// Where it was reached.
    pub address: Option<String>,
}

/// One case (scenario) run against one subject.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaseResult {
    /// The OMA ETS case id or spec clause tag (`int-101`, `core-6.2.1`).
    pub case: String,
    /// Scenario title.
    pub title: String,
    /// Feature file.
    pub feature: String,
    /// Subject id.
    pub subject: String,
    /// Outcome.
    pub status: Status,
    /// Failure or not-applicable reason, with the failing exchange.
    pub message: Option<String>,
    /// Evidence files relative to the run folder (exchange log, pcap).
    pub evidence: Vec<String>,
    /// What the harness tolerated in what the subject sent (an encoding a specification
    /// forbids, a Register deviation), each with its clause: a passed case with findings
    /// is "passed with findings", and fails under `test --strict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
    /// Wall time of the case in milliseconds.
    pub duration_ms: f64,
}

/// Operations per second over time.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ThroughputPoint {
    /// Seconds since the start of the run.
    pub t_s: f64,
    /// Operations completed in the second ending at `t_s`.
    pub ops: u64,
}

/// Everything a report shows; serialized as `report.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunReport {
    /// [`SCHEMA_VERSION`].
    pub schema: u32,
    /// Run name (the folder under `reports/`).
    pub run: String,
    /// What ran (scenario file or feature set).
    pub title: String,
    /// Start, seconds since the Unix epoch.
    pub started_unix_s: f64,
    /// Duration in seconds.
    pub duration_s: f64,
    /// The seed every random choice came from.
    pub seed: u64,
    /// The harness version.
    pub product_version: String,
    /// The git revision the harness was built from (`unknown` outside a checkout).
    pub git_revision: String,
    /// The machine the run ran on (JUnit's `hostname`; empty in reports written before).
    #[serde(default)]
    pub hostname: String,
    /// The subjects.
    pub subjects: Vec<Subject>,
    /// Case results.
    pub cases: Vec<CaseResult>,
    /// Latency percentiles per operation.
    pub latencies: BTreeMap<String, Summary>,
    /// Throughput over time.
    pub throughput: Vec<ThroughputPoint>,
    /// Network usage per exchange (of one sample client in a scenario run).
    pub network_usage: Vec<ExchangeUsage>,
    /// Whose exchanges `network_usage` lists (`meters-1 (group meters)`), when one
    /// client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_usage_client: Option<String>,
    /// The data of the charts over time (scenario runs).
    #[serde(default)]
    pub charts: charts::Charts,
    /// Named counters (registered, failed, bytes in/out, ...).
    pub counters: BTreeMap<String, u64>,
    /// Further sections of `report.html` (network usage of all clients, DTLS accounting,
    /// the servers' Resets, the device under test), so that `report RUN_DIR` renders them
    /// again (empty in reports written before they were recorded).
    #[serde(default)]
    pub sections: Vec<Section>,
}

/// A titled block of preformatted text in `report.html`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Section {
    /// The heading.
    pub title: String,
    /// The text, shown as written.
    pub text: String,
}

impl Section {
    /// A section.
    pub fn new(title: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            text: text.into(),
        }
    }
}

impl RunReport {
    /// How many cases have each status: (passed, failed, not tested) where not tested
    /// counts the not supported and not applicable ones (see [`RunReport::counts`]).
    pub fn tally(&self) -> (usize, usize, usize) {
        let c = self.counts();
        (c.passed, c.failed, c.not_supported + c.not_applicable)
    }

    /// How many cases have each status.
    pub fn counts(&self) -> Counts {
        let n = |s| self.cases.iter().filter(|c| c.status == s).count();
        Counts {
            passed: n(Status::Passed),
            failed: n(Status::Failed),
            not_supported: n(Status::NotSupported),
            not_applicable: n(Status::NotApplicable),
            with_findings: self
                .cases
                .iter()
                .filter(|c| c.passed_with_findings())
                .count(),
        }
    }

    /// Why the run tested nothing, if so: no case matched the tags, or every case was not
    /// applicable. Such a run is not a success, whatever else it says.
    pub fn nothing_tested(&self) -> Option<String> {
        let c = self.counts();
        if c.total() == 0 {
            return Some("no case matched the tags in the feature files".to_owned());
        }
        (c.tested() == 0).then(|| {
            format!(
                "no case was tested: all {} cases were not applicable to the subject",
                c.total()
            )
        })
    }

    /// Writes `report.json`, `report.html` (with [`RunReport::sections`]) and `junit.xml`
    /// into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
        };
        let sections: Vec<(String, String)> = self
            .sections
            .iter()
            .map(|s| (s.title.clone(), s.text.clone()))
            .collect();
        write("report.json", serde_json::to_string_pretty(self)?)?;
        write("report.html", html::render_with(self, &sections))?;
        write("junit.xml", junit::render_in(self, Some(dir)))?;
        Ok(())
    }

    /// Reads `report.json` from a run folder.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let p = dir.join("report.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let report: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a report", p.display()))?;
        anyhow::ensure!(
            report.schema == SCHEMA_VERSION,
            "{}: schema {} is not {SCHEMA_VERSION}",
            p.display(),
            report.schema
        );
        Ok(report)
    }
}

/// This machine's name (`/proc/sys/kernel/hostname`, `$HOSTNAME`), or `localhost`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The git revision of the source the harness was built from: asked of git in that
/// source folder when it is still there (not of the current folder, which may be another
/// repository), else as recorded at build time, else `unknown`.
pub fn git_revision() -> String {
    std::process::Command::new("git")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            Some(env!("LWM2M_HARNESS_BUILD_GIT_REVISION").to_owned()).filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The UTC calendar date and time of `secs` seconds after the Unix epoch, as
/// (year, month, day, hour, minute, second), proleptic Gregorian (H. Hinnant's
/// days-to-civil algorithm).
pub fn civil_utc(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Why a text is not a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// Not an RFC 3339 date-time (RFC 3339 §5.6), or one before 1970.
    #[error("{text:?}: expected an RFC 3339 time such as 2026-12-06T05:00:00Z")]
    NotRfc3339 {
        /// The text as written.
        text: String,
    },
}

/// `2026-12-06T05:00:00Z`, `2026-12-06T06:00:00.5+01:00` (RFC 3339 §5.6) to a time.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, TimeError> {
    let bad = || TimeError::NotRfc3339 { text: s.to_owned() };
    let num = |t: &str| t.parse::<i64>().map_err(|_| bad());
    let (date, time) = s.split_once(['T', 't', ' ']).ok_or_else(bad)?;
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (
        num(d.next().ok_or_else(bad)?)?,
        num(d.next().ok_or_else(bad)?)?,
        num(d.next().ok_or_else(bad)?)?,
    );
    let (clock, offset) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let at = time.rfind(['+', '-']).ok_or_else(bad)?;
        let (c, o) = time.split_at(at);
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let (oh, om) = o.get(1..).and_then(|o| o.split_once(':')).ok_or_else(bad)?;
        (c, sign * (num(oh)? * 3600 + num(om)? * 60))
    };
    let mut t = clock.splitn(3, ':');
    let (h, min) = (
        num(t.next().ok_or_else(bad)?)?,
        num(t.next().ok_or_else(bad)?)?,
    );
    let sec: f64 = t.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || h > 23
        || min > 59
        || !(0.0..61.0).contains(&sec)
    {
        return Err(bad());
    }
    // Days since 1970-01-01 of the proleptic Gregorian date (the inverse of [`civil_utc`]).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 - offset;
    let whole = u64::try_from(secs).map_err(|_| bad())?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(whole) + Duration::from_secs_f64(sec))
}

/// Escapes text for HTML and XML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse() {
        let at = |s: &str| {
            parse_rfc3339(s).map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64())
            })
        };
        assert_eq!(at("1970-01-01T00:00:00Z"), Ok(0.0));
        assert_eq!(at("2026-12-06T05:00:00Z"), Ok(1_796_533_200.0));
        assert_eq!(at("2026-12-06T06:00:00+01:00"), Ok(1_796_533_200.0));
        assert_eq!(at("2000-02-29T12:30:15.5Z"), Ok(951_827_415.5));
        assert!(at("2026-13-01T00:00:00Z").is_err());
        assert!(at("tomorrow").is_err());
        assert_eq!(
            parse_rfc3339("tomorrow"),
            Err(TimeError::NotRfc3339 {
                text: "tomorrow".into()
            })
        );
        assert_eq!(
            parse_rfc3339("tomorrow").unwrap_err().to_string(),
            "\"tomorrow\": expected an RFC 3339 time such as 2026-12-06T05:00:00Z"
        );
    }

    pub(crate) fn sample() -> RunReport {
        let mut latencies = BTreeMap::new();
        latencies.insert(
            "register".to_owned(),
            Summary {
                count: 100,
                mean_ms: 1.2,
                p50_ms: 1.0,
                p90_ms: 2.0,
                p99_ms: 4.5,
                p999_ms: 6.0,
                max_ms: 7.0,
            },
        );
        RunReport {
            schema: SCHEMA_VERSION,
            run: "t".into(),
            title: "sample <run>".into(),
            started_unix_s: 1.7e9,
            duration_s: 12.5,
            seed: 42,
            product_version: "0.1.0".into(),
            git_revision: "abc".into(),
            hostname: "ci-1".into(),
            subjects: vec![Subject {
                id: "sim-1.1".into(),
                kind: "simulated-client".into(),
                version: "lwm2m-harness 0.1.0".into(),
                address: None,
            }],
            cases: vec![
                CaseResult {
                    case: "int-101".into(),
                    title: "Initial registration".into(),
                    feature: "features/registration/register.feature".into(),
                    subject: "sim-1.1".into(),
                    status: Status::Passed,
                    message: None,
                    evidence: vec!["exchanges/int-101.txt".into()],
                    findings: vec![
                        "TLV integer in 4 bytes where 1 does (Core TS 1.1 §7.4.3)".into(),
                    ],
                    duration_ms: 12.0,
                },
                CaseResult {
                    case: "int-203".into(),
                    title: "Read in TLV".into(),
                    feature: "features/device_management/read.feature".into(),
                    subject: "sim-1.1".into(),
                    status: Status::Failed,
                    message: Some("expected 2.05, got 4.06 & <oops>".into()),
                    evidence: vec![],
                    findings: vec![],
                    duration_ms: 3.0,
                },
                CaseResult {
                    case: "int-222".into(),
                    title: "Read in SenML CBOR".into(),
                    feature: "features/device_management/read.feature".into(),
                    subject: "sim-1.1".into(),
                    status: Status::NotSupported,
                    message: Some("refused with 4.06 Not Acceptable".into()),
                    evidence: vec![],
                    findings: vec![],
                    duration_ms: 2.0,
                },
                CaseResult {
                    case: "int-2".into(),
                    title: "Bootstrap with certificates".into(),
                    feature: "features/bootstrap/x509.feature".into(),
                    subject: "sim-1.1".into(),
                    status: Status::NotApplicable,
                    message: Some("no certificate support in this subject".into()),
                    evidence: vec![],
                    findings: vec![],
                    duration_ms: 0.0,
                },
            ],
            latencies,
            throughput: (0..10)
                .map(|i| ThroughputPoint {
                    t_s: i as f64,
                    ops: i * 10,
                })
                .collect(),
            network_usage: vec![],
            network_usage_client: None,
            charts: charts::Charts::default(),
            counters: [("registered".to_owned(), 100)].into(),
            sections: vec![Section::new("DTLS", "2 handshakes")],
        }
    }

    #[test]
    fn json_round_trip_and_tally() {
        let r = sample();
        let dir = tempfile::tempdir().unwrap();
        r.write(dir.path()).unwrap();
        let back = RunReport::load(dir.path()).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.tally(), (1, 1, 2));
        let c = r.counts();
        assert_eq!((c.not_supported, c.not_applicable, c.tested()), (1, 1, 3));
        assert_eq!(
            c.to_string(),
            "1 passed (1 with findings), 1 failed, 1 not supported, 1 not applicable"
        );
        assert_eq!(r.nothing_tested(), None);
        let mut none = r.clone();
        none.cases.retain(|c| c.status == Status::NotApplicable);
        assert!(none.nothing_tested().unwrap().contains("not applicable"));
        none.cases.clear();
        assert!(none.nothing_tested().unwrap().contains("no case matched"));
        assert_eq!(escape("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
    }
}
