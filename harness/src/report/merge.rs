//! `report merge DIR...`: the run folders of the shards of one fleet (`simulate --shard
//! K/N --out DIR`, one per process or machine) as one report.
//!
//! - Counters are summed (gauges and events alike: each shard counts its own clients).
//! - The HdrHistogram interval logs (`latencies.hlog`) are merged second by second on the
//!   wall clock (each log's StartTime places its intervals), and the latency summaries of
//!   the merged report are computed from the merged histograms, not averaged.
//! - Cases are combined (a case several shards ran counts once, failed if any shard failed
//!   it), subjects united, throughput summed per second.
//! - The failures by cause (`failures.json`) are summed per cause, the first example kept.
//! - The endpoint names (`endpoints.txt`) are united: the merged folder lists the fleet.
//! - The network-usage sample is shard 0's (the first folder given); a "Shards" section
//!   gives the per-shard breakdown.
//! - The charts (of `run` folders; `simulate` folders have none but the latency ones):
//!   the latency distribution and percentiles over time from the merged histograms,
//!   requests per second summed second by second on the wall clock, the clients over time
//!   summed at shard 0's sampling moments (each shard's latest sample then), the timeline
//!   marks shard 0's. The merged time origin is the earliest shard's (its interval log's
//!   StartTime: when its clients started).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

use super::charts::{Charts, ClientsPoint, SecondLatency, TimelineMark};
use super::{CaseResult, RunReport, SCHEMA_VERSION, Section, Status, ThroughputPoint};
use crate::record::latency::{
    Interval, distribution_of, latency_histogram, summary_of, write_interval_log,
};

/// The interval log of a run folder.
pub const HLOG_FILE: &str = "latencies.hlog";
/// The failures by cause of a run folder: a JSON list of [`Failure`].
pub const FAILURES_FILE: &str = "failures.json";
/// The endpoint names of a run folder's clients, one a line.
pub const ENDPOINTS_FILE: &str = "endpoints.txt";
/// The title of the failures section.
pub const FAILURES_SECTION: &str = "Failures by cause";

/// Failures of one cause, as `failures.json` lists them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    /// Operation and CoAP code, timeout after N retransmissions, DTLS alert, ICMP error.
    pub cause: String,
    /// How many.
    pub count: u64,
    /// The first one's exchange.
    pub example: String,
}

/// The text of the failures section: each cause with its count and example.
pub fn failures_text(failures: &[Failure]) -> String {
    let mut text = String::new();
    for f in failures {
        let _ = writeln!(text, "{} x{}\n  e.g. {}", f.cause, f.count, f.example);
    }
    text
}

/// Merges the run folders `dirs` (shard 0 first) into `out`; returns the merged report.
pub fn merge(dirs: &[PathBuf], out: &Path) -> anyhow::Result<RunReport> {
    if dirs.is_empty() {
        bail!("report merge: give the run folders of the shards");
    }
    let reports = dirs
        .iter()
        .map(|d| RunReport::load(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let Some(first) = reports.first() else {
        bail!("report merge: no report");
    };
    if let Some(other) = reports.iter().find(|r| r.seed != first.seed) {
        bail!(
            "report merge: {} has seed {}, {} seed {}: not shards of one fleet",
            first.run,
            first.seed,
            other.run,
            other.seed
        );
    }
    let start = reports
        .iter()
        .map(|r| r.started_unix_s)
        .fold(f64::INFINITY, f64::min);
    let end = reports
        .iter()
        .map(|r| r.started_unix_s + r.duration_s)
        .fold(f64::NEG_INFINITY, f64::max);

    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    for r in &reports {
        for (k, v) in &r.counters {
            *counters.entry(k.clone()).or_default() += v;
        }
    }
    let mut subjects = Vec::new();
    for s in reports.iter().flat_map(|r| &r.subjects) {
        if !subjects.iter().any(|x: &super::Subject| x.id == s.id) {
            subjects.push(s.clone());
        }
    }
    let cases = combine_cases(reports.iter().flat_map(|r| r.cases.iter()));
    let mut throughput: BTreeMap<i64, u64> = BTreeMap::new();
    for r in &reports {
        for p in &r.throughput {
            let at = ((r.started_unix_s - start + p.t_s) * 1000.0).round() as i64;
            *throughput.entry(at).or_default() += p.ops;
        }
    }

    // The interval logs, second by second on the wall clock from the earliest log's start.
    let mut seconds: BTreeMap<(u32, String), Histogram<u64>> = BTreeMap::new();
    let mut totals: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut bases: Vec<Option<f64>> = Vec::new();
    let mut parsed = Vec::new();
    for dir in dirs {
        let path = dir.join(HLOG_FILE);
        let Ok(bytes) = std::fs::read(&path) else {
            bases.push(None);
            continue;
        };
        let (base, intervals) = read_log(&bytes).with_context(|| format!("{}", path.display()))?;
        bases.push(base);
        parsed.push(intervals);
    }
    let logs = parsed.len();
    let origin = bases
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let origin = if origin.is_finite() { origin } else { start };
    // Each shard's time origin, seconds after the merged one.
    let offsets: Vec<f64> = reports
        .iter()
        .zip(&bases)
        .map(|(r, base)| base.unwrap_or(r.started_unix_s) - origin)
        .collect();
    for intervals in parsed {
        for (at, tag, h) in intervals {
            let second = (at - origin).max(0.0).floor() as u32;
            let slot = seconds
                .entry((second, tag.clone()))
                .or_insert_with(latency_histogram);
            let _ = slot.add(&h);
            if !tag.starts_with("group=") {
                let _ = totals.entry(tag).or_insert_with(latency_histogram).add(&h);
            }
        }
    }
    // Latencies: from the merged histograms where the logs have them; an operation no log
    // has keeps the summary of the shard with the most samples of it.
    let mut latencies = BTreeMap::new();
    for r in &reports {
        for (op, s) in &r.latencies {
            let keep = latencies
                .get(op)
                .is_none_or(|k: &crate::record::Summary| k.count < s.count);
            if keep {
                latencies.insert(op.clone(), s.clone());
            }
        }
    }
    for (op, h) in &totals {
        latencies.insert(op.clone(), summary_of(h));
    }
    let charts = merge_charts(&reports, &offsets, &totals, &seconds);

    let mut failures: Vec<Failure> = Vec::new();
    let mut endpoints = BTreeSet::new();
    for dir in dirs {
        if let Ok(text) = std::fs::read_to_string(dir.join(FAILURES_FILE)) {
            let list: Vec<Failure> = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a failures list", dir.display()))?;
            for f in list {
                match failures.iter_mut().find(|x| x.cause == f.cause) {
                    Some(x) => x.count += f.count,
                    None => failures.push(f),
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(dir.join(ENDPOINTS_FILE)) {
            endpoints.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        }
    }
    failures.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.cause.cmp(&b.cause)));

    let mut sections = vec![Section::new("Shards", shards_text(dirs, &reports))];
    if !failures.is_empty() {
        sections.push(Section::new(FAILURES_SECTION, failures_text(&failures)));
    }
    sections.extend(
        first
            .sections
            .iter()
            .filter(|s| s.title != FAILURES_SECTION && s.title != "Shards")
            .map(|s| Section::new(format!("{} (shard 0)", s.title), s.text.clone())),
    );
    let report = RunReport {
        schema: SCHEMA_VERSION,
        run: format!("{}-merged", first.run),
        title: format!("{} ({} shards merged)", first.title, reports.len()),
        started_unix_s: start,
        duration_s: (end - start).max(0.0),
        seed: first.seed,
        product_version: first.product_version.clone(),
        git_revision: first.git_revision.clone(),
        hostname: first.hostname.clone(),
        subjects,
        cases,
        latencies,
        throughput: throughput
            .into_iter()
            .map(|(ms, ops)| ThroughputPoint {
                t_s: ms as f64 / 1000.0,
                ops,
            })
            .collect(),
        network_usage: first.network_usage.clone(),
        network_usage_client: first
            .network_usage_client
            .as_ref()
            .map(|c| format!("{c}, shard 0")),
        charts,
        counters,
        sections,
    };
    report.write(out)?;
    if logs > 0 {
        let mut intervals: BTreeMap<u32, Vec<(String, Histogram<u64>)>> = BTreeMap::new();
        for ((second, tag), h) in seconds {
            intervals.entry(second).or_default().push((tag, h));
        }
        let mut hlog = Vec::new();
        let origin = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(origin.max(0.0));
        write_interval_log(
            &mut hlog,
            origin,
            intervals
                .into_iter()
                .map(|(second, histograms)| Interval { second, histograms }),
        )?;
        std::fs::write(out.join(HLOG_FILE), hlog).context("writing latencies.hlog")?;
    }
    std::fs::write(
        out.join(FAILURES_FILE),
        serde_json::to_string_pretty(&failures)?,
    )
    .context("writing failures.json")?;
    if !endpoints.is_empty() {
        let text: String = endpoints.iter().map(|e| format!("{e}\n")).collect();
        std::fs::write(out.join(ENDPOINTS_FILE), text).context("writing endpoints.txt")?;
    }
    Ok(report)
}

/// The merged charts: `offsets` places each report's time origin after the merged one,
/// `totals` and `seconds` are the merged histograms (whole run, per second and tag).
fn merge_charts(
    reports: &[RunReport],
    offsets: &[f64],
    totals: &BTreeMap<String, Histogram<u64>>,
    seconds: &BTreeMap<(u32, String), Histogram<u64>>,
) -> Charts {
    let mut c = Charts::default();
    for (op, h) in totals {
        let points = distribution_of(h)
            .into_iter()
            .map(|(p, v)| [p, v])
            .collect();
        c.distribution.insert(op.clone(), points);
    }
    // In order of second: each operation's points come in order.
    for ((second, tag), h) in seconds {
        if !tag.starts_with("group=") {
            let point = SecondLatency::of(*second, h);
            c.over_time.entry(tag.clone()).or_default().push(point);
        }
    }
    for (r, offset) in reports.iter().zip(offsets) {
        let shift = offset.round() as i64;
        for (into, from) in [
            (
                &mut c.requests_by_operation,
                &r.charts.requests_by_operation,
            ),
            (&mut c.requests_by_group, &r.charts.requests_by_group),
        ] {
            for (key, per_second) in from {
                let merged = into.entry(key.clone()).or_default();
                for (i, n) in per_second.iter().enumerate() {
                    let Some(at) = i64::try_from(i)
                        .ok()
                        .and_then(|i| usize::try_from(i + shift).ok())
                        .filter(|at| *at <= 7 * 24 * 3600)
                    else {
                        continue;
                    };
                    if merged.len() <= at {
                        merged.resize(at + 1, 0);
                    }
                    if let Some(slot) = merged.get_mut(at) {
                        *slot += n;
                    }
                }
            }
        }
    }
    let (Some(first), Some(&first_offset)) = (reports.first(), offsets.first()) else {
        return c;
    };
    for p in &first.charts.clients {
        let t_s = p.t_s + first_offset;
        let mut sum = ClientsPoint {
            t_s,
            started: 0,
            registered: 0,
            sleeping: 0,
        };
        for (r, offset) in reports.iter().zip(offsets) {
            let latest = r
                .charts
                .clients
                .iter()
                .take_while(|q| q.t_s + offset <= t_s + 1e-6)
                .last();
            if let Some(q) = latest {
                sum.started += q.started;
                sum.registered += q.registered;
                sum.sleeping += q.sleeping;
            }
        }
        c.clients.push(sum);
    }
    c.events = first
        .charts
        .events
        .iter()
        .map(|e| TimelineMark {
            t_s: e.t_s + first_offset,
            label: e.label.clone(),
        })
        .collect();
    c
}

/// Cases by (case, subject): one entry each, failed if any shard failed it, else the first.
fn combine_cases<'a>(cases: impl Iterator<Item = &'a CaseResult>) -> Vec<CaseResult> {
    let mut out: Vec<CaseResult> = Vec::new();
    for c in cases {
        match out
            .iter_mut()
            .find(|x| x.case == c.case && x.subject == c.subject)
        {
            Some(x) if c.status == Status::Failed && x.status != Status::Failed => *x = c.clone(),
            Some(_) => {}
            None => out.push(c.clone()),
        }
    }
    out
}

/// One line per shard: its folder, clients, registrations, failures, Register p99.
fn shards_text(dirs: &[PathBuf], reports: &[RunReport]) -> String {
    let mut text = String::from("shard  clients  registered  failures  register-p99  folder\n");
    for (k, (dir, r)) in dirs.iter().zip(reports).enumerate() {
        let c = |k: &str| r.counters.get(k).copied().unwrap_or(0);
        let p99 = r
            .latencies
            .get("register")
            .map_or_else(|| "-".to_owned(), |s| format!("{:.1}ms", s.p99_ms));
        let _ = writeln!(
            text,
            "{k:>5}  {:>7}  {:>10}  {:>8}  {p99:>12}  {}",
            c("fleet.clients"),
            c("fleet.clients_registered"),
            c("fleet.failures"),
            dir.display()
        );
    }
    text
}

/// An interval log's start (seconds since the epoch, if it says) and its intervals:
/// (start, seconds since the epoch; tag; histogram).
#[allow(clippy::type_complexity)]
fn read_log(bytes: &[u8]) -> anyhow::Result<(Option<f64>, Vec<(f64, String, Histogram<u64>)>)> {
    use base64::Engine as _;
    let mut base = 0.0;
    let mut said = false;
    let mut out = Vec::new();
    let mut decoder = Deserializer::new();
    for entry in IntervalLogIterator::new(bytes) {
        match entry.map_err(|e| anyhow::anyhow!("not an interval log: {e:?}"))? {
            LogEntry::BaseTime(t) => {
                base = t.as_secs_f64();
                said = true;
            }
            LogEntry::StartTime(t) if !said => {
                base = t.as_secs_f64();
                said = true;
            }
            LogEntry::StartTime(_) => {}
            LogEntry::Interval(h) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(h.encoded_histogram())
                    .context("an interval's histogram is not base64")?;
                let histogram: Histogram<u64> = decoder
                    .deserialize(&mut &raw[..])
                    .map_err(|e| anyhow::anyhow!("an interval's histogram: {e:?}"))?;
                let tag = h.tag().map(|t| t.as_str().to_owned()).unwrap_or_default();
                out.push((base + h.start_timestamp().as_secs_f64(), tag, histogram));
            }
        }
    }
    Ok((said.then_some(base), out))
}
