//! Latency recording per operation with HdrHistogram: percentile summaries, `.hgrm`
//! percentile distributions (the text format of HdrHistogram's
//! `outputPercentileDistribution`, values in milliseconds) and HdrHistogram interval logs
//! (log format 1.3: `#[StartTime`/`#[BaseTime` headers, V2 deflate-compressed base64
//! histograms) that HdrHistogram's tools (HistogramLogAnalyzer, `HistogramLogProcessor`)
//! read: one interval per second of the run for each operation (`Tag=read`) and for each
//! operation of each client group (`Tag=group=sensors/read`).
//!
//! Timed samples are kept as samples (16 bytes each) and turned into per-second histograms
//! one second at a time while the log is written: a full-range histogram is ~190 kB, one
//! per tag and second for the whole run would not fit a long run in memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

/// Values are recorded in microseconds, from 1 µs to 1 hour, 3 significant digits.
const HIGHEST_US: u64 = 3_600_000_000;

/// Percentiles of one operation, in milliseconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// One histogram per operation name (`register`, `read`, ...), and the samples recorded
/// with a time (for the interval log and latency over time).
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    histograms: BTreeMap<String, Histogram<u64>>,
    /// Interned operation and group names the samples refer to.
    names: Vec<String>,
    samples: Vec<Sample>,
}

/// A latency recorded with the second of the run it completed in.
#[derive(Debug, Clone, Copy)]
struct Sample {
    second: u32,
    operation: u16,
    group: Option<u16>,
    us: u64,
}

/// The histograms of one second of the run: `(tag, histogram)`, operations first (tag
/// `read`), then each group's (tag `group=NAME/read`), in name order.
#[derive(Debug)]
pub struct Interval {
    /// Seconds since the start of the run.
    pub second: u32,
    /// Histograms (µs) by tag.
    pub histograms: Vec<(String, Histogram<u64>)>,
}

/// The tag of an operation within a group (spaces and commas, which the log format does
/// not allow in a tag, become `_`).
pub fn group_tag(group: &str, operation: &str) -> String {
    format!("group={group}/{operation}").replace([' ', ','], "_")
}

/// The sub-bucket count HdrHistogram derives from the significant digits: the power of two
/// that holds 2 × 10^digits single-unit values (2048 for 3 digits).
fn sub_buckets(sigfig: u8) -> u64 {
    let single_unit = 2 * 10u64.pow(u32::from(sigfig));
    single_unit.next_power_of_two()
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("constant histogram bounds are valid")
}

fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, HIGHEST_US)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Latencies {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one sample (clamped to the histogram's range) without a time: in the
    /// summaries and `.hgrm`, not in the interval log.
    pub fn record(&mut self, operation: &str, latency: Duration) {
        self.record_us(operation, micros(latency));
    }

    fn record_us(&mut self, operation: &str, us: u64) {
        self.histograms
            .entry(operation.to_owned())
            .or_insert_with(new_histogram)
            .saturating_record(us);
    }

    fn intern(&mut self, name: &str) -> u16 {
        match self.names.iter().position(|n| n == name) {
            Some(i) => u16::try_from(i).unwrap_or(u16::MAX),
            None => {
                self.names.push(name.to_owned());
                u16::try_from(self.names.len() - 1).unwrap_or(u16::MAX)
            }
        }
    }

    /// Records one sample that completed `at` after the start of the run, by a client of
    /// `group` when known: in the summaries, and in the interval log under the operation's
    /// tag and the group's.
    pub fn record_at(
        &mut self,
        operation: &str,
        group: Option<&str>,
        at: Duration,
        latency: Duration,
    ) {
        let us = micros(latency);
        self.record_us(operation, us);
        let sample = Sample {
            second: u32::try_from(at.as_secs()).unwrap_or(u32::MAX),
            operation: self.intern(operation),
            group: group.map(|g| self.intern(g)),
            us,
        };
        self.samples.push(sample);
    }

    /// How many samples were recorded with a time.
    pub fn timed(&self) -> usize {
        self.samples.len()
    }

    /// The per-second histograms of the timed samples, in time order (seconds without a
    /// sample are left out), each built when the iterator reaches it.
    pub fn intervals(&self) -> impl Iterator<Item = Interval> + '_ {
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        order.sort_by_key(|&i| self.samples.get(i).map(|s| s.second));
        let mut at = 0;
        std::iter::from_fn(move || {
            let first = self.samples.get(*order.get(at)?)?;
            let second = first.second;
            let mut by_tag: BTreeMap<(bool, String), Histogram<u64>> = BTreeMap::new();
            while let Some(s) = order.get(at).and_then(|&i| self.samples.get(i)) {
                if s.second != second {
                    break;
                }
                at += 1;
                let op = self.name(s.operation);
                let mut tags = vec![(false, op.to_owned())];
                if let Some(g) = s.group {
                    tags.push((true, group_tag(self.name(g), op)));
                }
                for tag in tags {
                    by_tag
                        .entry(tag)
                        .or_insert_with(new_histogram)
                        .saturating_record(s.us);
                }
            }
            Some(Interval {
                second,
                histograms: by_tag.into_iter().map(|((_, t), h)| (t, h)).collect(),
            })
        })
    }

    fn name(&self, i: u16) -> &str {
        self.names.get(usize::from(i)).map_or("", String::as_str)
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Self) {
        for (op, h) in &other.histograms {
            let mine = self
                .histograms
                .entry(op.clone())
                .or_insert_with(new_histogram);
            // Same bounds on both sides: addition cannot fail.
            let _ = mine.add(h);
        }
        for s in &other.samples {
            let sample = Sample {
                operation: self.intern(other.name(s.operation)),
                group: s.group.map(|g| self.intern(other.name(g))),
                ..*s
            };
            self.samples.push(sample);
        }
    }

    /// The operations recorded, in name order.
    pub fn operations(&self) -> impl Iterator<Item = &str> {
        self.histograms.keys().map(String::as_str)
    }

    /// The histogram of an operation.
    pub fn histogram(&self, operation: &str) -> Option<&Histogram<u64>> {
        self.histograms.get(operation)
    }

    /// The percentiles of an operation.
    pub fn summary(&self, operation: &str) -> Option<Summary> {
        self.histograms.get(operation).map(summary_of)
    }

    /// The percentile distribution of an operation as (percentile 0–100, ms) points: each
    /// step of HdrHistogram's quantile iteration (5 per halving of the distance to 100 %),
    /// at the percentile of the samples up to its value.
    pub fn distribution(&self, operation: &str) -> Vec<(f64, f64)> {
        self.histograms
            .get(operation)
            .map_or_else(Vec::new, distribution_of)
    }

    /// The `.hgrm` percentile distribution of an operation (milliseconds).
    pub fn hgrm(&self, operation: &str) -> Option<String> {
        let h = self.histograms.get(operation)?;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
        let mut total = 0u64;
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let inv = if q < 1.0 {
                format!("{:>14.2}", 1.0 / (1.0 - q))
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{:>12.3} {:>14.12} {:>10} {inv}",
                ms(v.value_iterated_to()),
                q,
                total
            );
        }
        let _ = writeln!(
            out,
            "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
            h.mean() / 1000.0,
            h.stdev() / 1000.0
        );
        let _ = writeln!(
            out,
            "#[Max     = {:>12.3}, Total count    = {:>12}]",
            ms(h.max()),
            h.len()
        );
        let _ = writeln!(
            out,
            "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
            h.buckets(),
            sub_buckets(h.sigfig())
        );
        Some(out)
    }

    /// Writes an HdrHistogram interval log: the run started at `start`; one interval per
    /// second with samples, one tagged histogram per operation and per group's operation
    /// (values in µs; the max column in ms).
    pub fn write_log<W: Write>(&self, out: &mut W, start: SystemTime) -> anyhow::Result<()> {
        write_interval_log(out, start, self.intervals())
    }
}

/// The percentile distribution of a histogram (µs) as (percentile 0–100, ms) points: each
/// step of HdrHistogram's quantile iteration (5 per halving of the distance to 100 %), at
/// the percentile of the samples up to its value.
pub fn distribution_of(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for v in h.iter_quantiles(5) {
        let point = (v.quantile() * 100.0, ms(v.value_iterated_to()));
        if out.last() != Some(&point) {
            out.push(point);
        }
    }
    out
}

/// The percentiles of a histogram of microseconds.
pub fn summary_of(h: &Histogram<u64>) -> Summary {
    Summary {
        count: h.len(),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// A histogram of microseconds with the bounds of every latency histogram here (1 µs to
/// one hour, 3 significant digits).
pub fn latency_histogram() -> Histogram<u64> {
    new_histogram()
}

/// Writes an HdrHistogram interval log of `intervals`, the run started at `start` (see
/// [`Latencies::write_log`]).
pub fn write_interval_log<W: Write>(
    out: &mut W,
    start: SystemTime,
    intervals: impl IntoIterator<Item = Interval>,
) -> anyhow::Result<()> {
    // The header as Java's HistogramLogWriter writes it (format version, start and
    // base time, legend); interval timestamps are seconds since the base time.
    let secs = start
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    write!(
        out,
        "#[Logged with lwm2m-harness {}: latencies in microseconds, one interval per second]\n\
             #[Tags: OPERATION (every client), group=GROUP/OPERATION (the clients of one group)]\n\
             #[Histogram log format version 1.3]\n\
             #[StartTime: {secs:.3} (seconds since epoch)]\n\
             #[BaseTime: {secs:.3} (seconds since epoch)]\n\
             \"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
        env!("CARGO_PKG_VERSION")
    )?;
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .with_max_value_divisor(1000.0)
        .begin_log_with(out, &mut serializer)?;
    for interval in intervals {
        let at = Duration::from_secs(u64::from(interval.second));
        for (tag, h) in &interval.histograms {
            let tag = Tag::new(tag).ok_or_else(|| anyhow::anyhow!("bad tag {tag:?}"))?;
            log.write_histogram(h, at, Duration::from_secs(1), Some(tag))
                .map_err(|e| anyhow::anyhow!("writing histogram {}: {e:?}", tag.as_str()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    /// The log's intervals: (start s, length s, tag, histogram).
    fn parse_log(buf: &[u8]) -> Vec<(f64, f64, String, Histogram<u64>)> {
        let mut out = Vec::new();
        for entry in IntervalLogIterator::new(buf) {
            match entry.unwrap() {
                LogEntry::Interval(h) => {
                    let bytes = base64_decode(h.encoded_histogram());
                    let back: Histogram<u64> =
                        Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
                    out.push((
                        h.start_timestamp().as_secs_f64(),
                        h.duration().as_secs_f64(),
                        h.tag().map(|t| t.as_str().to_owned()).unwrap_or_default(),
                        back,
                    ));
                }
                LogEntry::StartTime(t) => assert_eq!(t.as_secs_f64(), 1_700_000_000.0),
                LogEntry::BaseTime(t) => assert_eq!(t.as_secs_f64(), 1_700_000_000.0),
            }
        }
        out
    }

    #[test]
    fn percentiles_and_hgrm_footer() {
        let mut l = Latencies::new();
        for i in 1..=1000u64 {
            l.record("read", Duration::from_micros(i * 100));
        }
        let d = l.distribution("read");
        assert_eq!(d.first().map(|p| p.0), Some(0.1));
        assert_eq!(d.last().map(|p| p.0), Some(100.0));
        assert!(d.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let median = d.iter().find(|p| p.0 >= 50.0).unwrap();
        assert!((median.1 - 50.0).abs() < 0.1, "{median:?}");
        let s = l.summary("read").unwrap();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        let hgrm = l.hgrm("read").unwrap();
        assert!(hgrm.contains("Total count    =         1000"), "{hgrm}");
        // HdrHistogram's footer for 1 µs .. 1 h at 3 significant digits: 2048 sub-buckets
        // (2 × 10^3 rounded up to a power of two), 22 buckets to reach 3.6e9.
        assert!(
            hgrm.ends_with("#[Buckets =           22, SubBuckets     =         2048]\n"),
            "{hgrm}"
        );
        assert_eq!(sub_buckets(2), 256);
        assert_eq!(sub_buckets(5), 262_144);
        // Untimed samples are not in the interval log.
        assert_eq!(l.timed(), 0);
        assert_eq!(l.intervals().count(), 0);
    }

    #[test]
    fn the_interval_log_has_one_interval_per_second_per_operation_and_group() {
        let mut l = Latencies::new();
        // 3 s of reads by two groups, registers in second 1 only; one untagged sample.
        let mut total = BTreeMap::<&str, u64>::new();
        for ms in (0..3000u64).step_by(7) {
            let group = if ms % 2 == 0 {
                "sensors"
            } else {
                "meters and more"
            };
            let latency = Duration::from_micros(500 + ms);
            l.record_at("read", Some(group), Duration::from_millis(ms), latency);
            *total.entry("read").or_default() += 1;
        }
        for ms in 1000..1010u64 {
            l.record_at(
                "register",
                Some("sensors"),
                Duration::from_millis(ms),
                Duration::from_millis(3),
            );
            *total.entry("register").or_default() += 1;
        }
        l.record_at(
            "read",
            None,
            Duration::from_millis(2500),
            Duration::from_millis(1),
        );
        *total.entry("read").or_default() += 1;
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut buf = Vec::new();
        l.write_log(&mut buf, start).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(
            text.contains("#[Histogram log format version 1.3]\n"),
            "{text}"
        );
        assert!(
            text.contains("\"StartTimestamp\",\"Interval_Length\""),
            "{text}"
        );
        assert!(
            text.contains("Tag=group=meters_and_more/read,1.000,1.000,"),
            "{text}"
        );

        let intervals = parse_log(&buf);
        let mut per_tag = BTreeMap::<String, (u64, Vec<f64>)>::new();
        for (start, length, tag, h) in &intervals {
            assert_eq!(*length, 1.0);
            assert_eq!(start.fract(), 0.0, "intervals start on whole seconds");
            let e = per_tag.entry(tag.clone()).or_default();
            e.0 += h.len();
            e.1.push(*start);
        }
        // Every tag's per-second counts add up to the run's total for it.
        for (op, n) in &total {
            assert_eq!(per_tag[*op].0, *n, "{op}");
            assert_eq!(l.summary(op).unwrap().count, *n, "{op}");
        }
        assert_eq!(per_tag["read"].1, vec![0.0, 1.0, 2.0]);
        assert_eq!(per_tag["register"].1, vec![1.0]);
        let groups = per_tag["group=sensors/read"].0 + per_tag["group=meters_and_more/read"].0;
        assert_eq!(groups + 1, total["read"], "all but the untagged sample");
        assert_eq!(per_tag["group=sensors/register"].0, 10);
        assert_eq!(per_tag.len(), 5, "{:?}", per_tag.keys());
        // The interval's values are the samples': second 1's register max is 3 ms.
        let (_, _, _, h) = intervals
            .iter()
            .find(|(s, _, t, _)| *s == 1.0 && t == "register")
            .unwrap();
        assert!((h.max() as f64 - 3000.0).abs() < 3.0, "{}", h.max());

        // Merging keeps the samples and their names.
        let mut merged = Latencies::new();
        merged.record_at(
            "observe",
            Some("x"),
            Duration::ZERO,
            Duration::from_millis(1),
        );
        merged.merge(&l);
        assert_eq!(merged.timed(), l.timed() + 1);
        let tags: usize = merged.intervals().map(|i| i.histograms.len()).sum();
        assert_eq!(tags, intervals.len() + 2);
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }
}
