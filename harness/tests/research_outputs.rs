//! The run folder's outputs for researchers, end to end through `lwm2m-harness run`:
//! `latencies.hlog` holds one interval per second for each operation and each group's
//! operation, whose counts add up to the run's totals (read back with the hdrhistogram
//! crate's interval-log reader); `exchanges.csv` has one row per exchange; reads that waited
//! in the server's queue for a sleeping client are `read-queued`, apart from the other reads;
//! `report.html` draws them.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use lwm2m_harness::report::{RunReport, Status};

fn profile(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/profiles")
        .join(format!("{name}.yaml"))
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

/// Runs the scenario through the binary; the run folder.
fn run(dir: &Path, scenario: &str) -> PathBuf {
    let file = dir.join("research.yaml");
    std::fs::write(&file, scenario).unwrap();
    let out = dir.join("reports");
    let run = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .arg("run")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let mut runs = std::fs::read_dir(&out).unwrap();
    runs.next().unwrap().unwrap().path()
}

#[test]
fn per_second_interval_log_exchange_csv_and_queued_reads() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = run(
        dir.path(),
        &format!(
            "name: research
duration: 6s
seed: 11
servers:
  server: in-process
  # Sensors (queue mode) count as asleep 2 s after their last message.
  queue_awake_time: 2s
fleet:
  - name: meters
    profile: {}
    count: 12
  - name: sensors
    profile: {}
    count: 8
timeline:
  - {{ at: 1s, action: read, group: meters, path: /3/0 }}
  - {{ at: 1s, action: read, group: sensors, path: /3303/0 }}
  - {{ at: 1500ms, action: sleep, group: sensors, clients: 4, duration: 1m }}
  - {{ at: 3s, action: read, group: meters, path: /3/0/13 }}
  # Asleep for the server since 3 s: the read waits in its queue until the wake-up.
  - {{ at: 3500ms, action: read, group: sensors, clients: 4, path: /3303/0/5700, timeout: 5s }}
  - {{ at: 4500ms, action: wake, group: sensors, clients: 4 }}
",
            profile("wakaama-like"),
            profile("sensor-1.1"),
        ),
    );
    let report = RunReport::load(&run_dir).unwrap();
    assert!(
        report.cases.iter().all(|c| c.status == Status::Passed),
        "{:#?}",
        report.cases
    );

    // The queued reads are apart from the others, and took the sleep's length.
    let queued = &report.latencies["read-queued"];
    let read = &report.latencies["read"];
    assert_eq!(queued.count, 4, "{:?}", report.latencies);
    assert_eq!(read.count, 12 + 8 + 12, "{:?}", report.latencies);
    assert!(
        queued.p50_ms > 500.0 && read.max_ms < queued.p50_ms,
        "{queued:?} {read:?}"
    );

    // latencies.hlog: one interval per second per tag, adding up to the run's totals.
    let hlog = std::fs::read(run_dir.join("latencies.hlog")).unwrap();
    let mut per_tag: BTreeMap<String, (u64, BTreeSet<u64>)> = BTreeMap::new();
    let mut start_time = None;
    for entry in IntervalLogIterator::new(&hlog) {
        match entry.unwrap() {
            LogEntry::StartTime(t) => start_time = Some(t.as_secs_f64()),
            LogEntry::BaseTime(_) => {}
            LogEntry::Interval(i) => {
                assert_eq!(i.duration().as_secs_f64(), 1.0);
                let start = i.start_timestamp().as_secs_f64();
                assert_eq!(start.fract(), 0.0);
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(i.encoded_histogram())
                    .unwrap();
                let h: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
                let tag = i.tag().unwrap().as_str().to_owned();
                let e = per_tag.entry(tag).or_default();
                e.0 += h.len();
                assert!(e.1.insert(start as u64), "one interval per second and tag");
            }
        }
    }
    let start_time = start_time.unwrap();
    assert!((start_time - report.started_unix_s).abs() < 5.0);
    for (op, summary) in &report.latencies {
        assert_eq!(per_tag[op].0, summary.count, "{op}");
    }
    // Reads in seconds 1 and 3, the queued ones after the wake-up at 4.5 s.
    assert!(per_tag["read"].1.len() >= 2, "{:?}", per_tag["read"]);
    assert!(per_tag["read-queued"].1.iter().all(|s| *s >= 4));
    for op in ["read", "register"] {
        let groups =
            per_tag[&format!("group=meters/{op}")].0 + per_tag[&format!("group=sensors/{op}")].0;
        assert_eq!(groups, report.latencies[op].count, "{op}");
    }
    assert_eq!(per_tag["group=sensors/read-queued"].0, 4);

    // exchanges.csv: one row per exchange, each with its client and group.
    let csv = std::fs::read_to_string(run_dir.join("exchanges.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "time_s,group,endpoint,operation,path,code,latency_ms,request_bytes,response_bytes,datagrams"
        )
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let usage = std::fs::read_to_string(run_dir.join("network-usage.txt")).unwrap();
    let exchanges: usize = usage
        .split_once("all clients (")
        .and_then(|(_, rest)| rest.split_once(" exchanges)"))
        .map(|(n, _)| n.parse().unwrap())
        .unwrap();
    assert_eq!(rows.len(), exchanges);
    let mut reads = 0;
    for r in &rows {
        assert_eq!(r.len(), 10, "{r:?}");
        assert!(["meters", "sensors"].contains(&r[1]), "{r:?}");
        assert!(!r[2].is_empty(), "{r:?}");
        let t: f64 = r[0].parse().unwrap();
        assert!((0.0..30.0).contains(&t), "{r:?}");
        if r[3] == "read" && r[5] == "2.05" {
            reads += 1;
            let latency: f64 = r[6].parse().unwrap();
            assert!((0.0..5000.0).contains(&latency), "{r:?}");
        }
    }
    // Every read answered, queued or not, is one exchange on the wire.
    assert_eq!(reads, 12 + 8 + 12 + 4);

    // The report's charts: the distribution with the queued reads in a series of their own,
    // requests per second by group, the clients over time with the 6 timeline actions.
    let c = &report.charts;
    assert_eq!(
        c.distribution.keys().collect::<Vec<_>>(),
        report.latencies.keys().collect::<Vec<_>>()
    );
    let seconds: u64 = c.over_time["read"].iter().map(|s| s.count).sum();
    assert_eq!(seconds, read.count);
    let by_group: u32 = c.requests_by_group.values().flatten().sum();
    assert_eq!(by_group as usize, rows.len());
    assert_eq!(
        c.requests_by_group.keys().collect::<Vec<_>>(),
        ["meters", "sensors"]
    );
    assert_eq!(c.events.len(), 6);
    let asleep = c.clients.iter().map(|p| p.sleeping).max().unwrap();
    assert!(asleep >= 4, "{:?}", c.clients);
    assert_eq!(c.clients.iter().map(|p| p.started).max(), Some(20));
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    for needle in [
        "aria-label=\"Latency percentile distribution by operation\"",
        "<g class=\"series\" data-name=\"read-queued\"",
        "aria-label=\"Requests per second by client group\"",
        "<g class=\"series\" data-name=\"asleep (radio off)\"",
        "<h2>Network usage of one client: meters-0 (group meters)</h2>",
    ] {
        assert!(html.contains(needle), "{needle}");
    }
    // Every chart over time that marks the timeline marks all 6 actions.
    let marked: Vec<usize> = html
        .split("<svg")
        .map(|chart| chart.matches("<g class=\"mark\">").count())
        .filter(|&n| n > 0)
        .collect();
    assert!(
        !marked.is_empty() && marked.iter().all(|&n| n == 6),
        "{marked:?}"
    );
}
