//! Latency recording per operation with HdrHistogram: percentile summaries, `.hgrm`
//! percentile distributions (the text format of HdrHistogram's
//! `outputPercentileDistribution`, values in milliseconds) and HdrHistogram interval logs
//! (V2 compressed histograms, one tag per operation) that HdrHistogram's tools read.

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

/// One histogram per operation name (`register`, `read`, ...).
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    histograms: BTreeMap<String, Histogram<u64>>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("constant histogram bounds are valid")
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Latencies {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one sample (clamped to the histogram's range).
    pub fn record(&mut self, operation: &str, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, HIGHEST_US);
        self.histograms
            .entry(operation.to_owned())
            .or_insert_with(new_histogram)
            .saturating_record(us);
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
        let h = self.histograms.get(operation)?;
        Some(Summary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
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
            h.distinct_values()
        );
        Some(out)
    }

    /// Writes an HdrHistogram interval log: one interval covering `duration` from `start`,
    /// one tagged histogram per operation (values in µs; max in ms).
    pub fn write_log<W: Write>(
        &self,
        out: &mut W,
        start: SystemTime,
        duration: Duration,
    ) -> anyhow::Result<()> {
        let mut serializer = V2DeflateSerializer::new();
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment("lwm2m-harness latencies, values in microseconds")
            .with_start_time(start)
            .with_base_time(start)
            .with_max_value_divisor(1000.0)
            .begin_log_with(out, &mut serializer)?;
        for (op, h) in &self.histograms {
            let tag = Tag::new(op);
            log.write_histogram(h, Duration::ZERO, duration, tag)
                .map_err(|e| anyhow::anyhow!("writing histogram {op}: {e:?}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    #[test]
    fn percentiles_hgrm_and_log_round_trip() {
        let mut l = Latencies::new();
        for i in 1..=1000u64 {
            l.record("read", Duration::from_micros(i * 100));
        }
        l.record("register", Duration::from_millis(3));
        let s = l.summary("read").unwrap();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        let hgrm = l.hgrm("read").unwrap();
        assert!(hgrm.contains("Total count    =         1000"), "{hgrm}");
        let mut buf = Vec::new();
        l.write_log(&mut buf, SystemTime::UNIX_EPOCH, Duration::from_secs(10))
            .unwrap();
        let mut tags = Vec::new();
        for entry in IntervalLogIterator::new(&buf) {
            if let Ok(LogEntry::Interval(h)) = entry {
                tags.push(h.tag().map(|t| t.as_str().to_owned()));
                let bytes = base64_decode(h.encoded_histogram());
                let back: Histogram<u64> =
                    Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
                assert!(!back.is_empty());
            }
        }
        assert_eq!(tags, vec![Some("read".into()), Some("register".into())]);
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }
}
