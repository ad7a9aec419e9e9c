//! The charts of `report.html`: hand-written inline SVG with real axes (ticks, tick
//! labels, units), a legend, and timeline marks.
//!
//! Why hand-written rather than a chart crate (`plotters` was the candidate): the report
//! is one self-contained HTML file, and inline SVG text is what it needs; the percentile
//! distribution wants HdrHistogram's percentile axis (0 %, 90 %, 99 %, 99.9 %, ... evenly
//! spaced, i.e. log10(1/(1-p))), which a general plotting crate does not have and would need
//! the same coordinate transform around it anyway; `plotters` with its SVG backend pulls
//! in its own font, colour and backend stack (a dozen crates) for what is here lines,
//! circles and text; and the output is plain text the tests read back (axes, tick labels,
//! one `<g class="series">` per series, coordinates) without a renderer. The charts are
//! deliberately simple: lines with point markers, linear or log10 axes, one legend.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::escape;

/// The data behind the charts, kept in `report.json` so that a report re-renders with them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Charts {
    /// The whole run's percentile distribution of each operation: `[percentile (0–100),
    /// latency ms]`, from HdrHistogram's quantile iteration.
    #[serde(default)]
    pub distribution: BTreeMap<String, Vec<[f64; 2]>>,
    /// Latency percentiles of each operation in each second of the run that had samples.
    #[serde(default)]
    pub over_time: BTreeMap<String, Vec<SecondLatency>>,
    /// Requests on the wire per second (index: second of the run), by operation.
    #[serde(default)]
    pub requests_by_operation: BTreeMap<String, Vec<u32>>,
    /// Requests on the wire per second, by client group.
    #[serde(default)]
    pub requests_by_group: BTreeMap<String, Vec<u32>>,
    /// The fleet's clients over time.
    #[serde(default)]
    pub clients: Vec<ClientsPoint>,
    /// The scenario's timeline actions.
    #[serde(default)]
    pub events: Vec<TimelineMark>,
}

/// Latency percentiles of one operation in one second.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SecondLatency {
    /// The second (since the start of the run) the samples completed in.
    pub t_s: u32,
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

impl SecondLatency {
    /// The percentiles of `h` (µs), the samples that completed in second `t_s`.
    pub fn of(t_s: u32, h: &hdrhistogram::Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            t_s,
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// The fleet's state at one moment.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientsPoint {
    /// Seconds since the start of the run.
    pub t_s: f64,
    /// Clients started (the ramp-up reaches the fleet's size).
    pub started: u64,
    /// Clients registered.
    pub registered: u64,
    /// Clients asleep: radio off (the profile's sleep cycle, queue mode, or the timeline's
    /// `sleep`); datagrams to them are lost.
    pub sleeping: u64,
}

/// One timeline action.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimelineMark {
    /// When, seconds since the start of the run.
    pub t_s: f64,
    /// What (the step's title).
    pub label: String,
}

/// How an axis maps values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Linear.
    Linear,
    /// log10: every decade the same length (values must be > 0).
    Log,
}

/// One axis: its range, scale, ticks and label (with the unit).
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// Label, unit in parentheses.
    pub label: String,
    /// Scale.
    pub scale: Scale,
    /// Lowest value shown.
    pub min: f64,
    /// Highest value shown.
    pub max: f64,
    /// Ticks: value and label.
    pub ticks: Vec<(f64, String)>,
}

impl Axis {
    /// A linear axis from 0 (or `min`) to a round number at or above `max`, ticked at
    /// 1, 2 or 5 times a power of ten.
    pub fn linear(label: &str, min: f64, max: f64) -> Self {
        let max = if max > min { max } else { min + 1.0 };
        let step = nice_step((max - min) / 5.0);
        let top = (max / step).ceil() * step;
        let bottom = (min / step).floor() * step;
        let mut ticks = Vec::new();
        let mut k = 0.0;
        while bottom + k * step <= top + step * 1e-9 {
            let v = bottom + k * step;
            ticks.push((v, number(v)));
            k += 1.0;
        }
        Self {
            label: label.to_owned(),
            scale: Scale::Linear,
            min: bottom,
            max: top,
            ticks,
        }
    }

    /// A log10 axis covering `min..=max` (positive) in whole decades, ticked at each decade
    /// (and at 2 and 5 when it spans fewer than three).
    pub fn log(label: &str, min: f64, max: f64) -> Self {
        let min = min.max(1e-3);
        let max = max.max(min * 10.0);
        let lo = min.log10().floor() as i32;
        let hi = max.log10().ceil() as i32;
        let mut ticks = Vec::new();
        for e in lo..=hi {
            let d = 10f64.powi(e);
            ticks.push((d, number(d)));
            if hi - lo < 3 && e < hi {
                ticks.push((2.0 * d, number(2.0 * d)));
                ticks.push((5.0 * d, number(5.0 * d)));
            }
        }
        Self {
            label: label.to_owned(),
            scale: Scale::Log,
            min: 10f64.powi(lo),
            max: 10f64.powi(hi),
            ticks,
        }
    }

    /// HdrHistogram's percentile axis on transformed values (see [`percentile_x`]): 0 %,
    /// 90 %, 99 %, 99.9 %, ... up to `nines` nines.
    pub fn percentile(nines: u32) -> Self {
        let nines = nines.max(1);
        let ticks = (0..=nines)
            .map(|n| {
                let label = match n {
                    0 => "0%".to_owned(),
                    n => format!("{}%", number(100.0 - 100.0 / 10f64.powi(n as i32))),
                };
                (f64::from(n), label)
            })
            .collect();
        Self {
            label: "percentile".to_owned(),
            scale: Scale::Linear,
            min: 0.0,
            max: f64::from(nines),
            ticks,
        }
    }

    /// Where `v` lies along the axis: 0 at `min`, 1 at `max` (outside when out of range).
    pub fn fraction(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Linear => (v - self.min) / (self.max - self.min),
            Scale::Log => {
                let v = v.max(self.min * 1e-3);
                (v.log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
            }
        }
    }
}

/// The percentile axis's coordinate of percentile `p` (0–100): log10(1/(1-p)), 0 at 0 %,
/// 1 at 90 %, 2 at 99 %, ..., capped at `cap` (100 % itself is infinitely far).
pub fn percentile_x(p: f64, cap: f64) -> f64 {
    let rest = 1.0 - p / 100.0;
    if rest <= 0.0 {
        cap
    } else {
        (1.0 / rest).log10().min(cap)
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= raw * (1.0 - 1e-9) {
            return m * p;
        }
    }
    10.0 * p
}

/// A tick label: no trailing zeros, thousands as `k`.
pub fn number(v: f64) -> String {
    if v.abs() >= 10_000.0 && (v / 1000.0).fract() == 0.0 {
        return format!("{}k", v / 1000.0);
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend name.
    pub name: String,
    /// (x, y) in data units, in x order.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed.
    pub dashed: bool,
    /// Points further apart than this along x are not joined (no data in between).
    pub gap: Option<f64>,
}

impl Series {
    /// The stretches of points drawn as one line: split where two points are further apart
    /// than [`Series::gap`].
    pub fn runs(&self) -> Vec<&[(f64, f64)]> {
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..self.points.len() {
            let (a, b) = (self.points[i - 1].0, self.points[i].0);
            if self.gap.is_some_and(|g| b - a > g) {
                out.push(&self.points[start..i]);
                start = i;
            }
        }
        if start < self.points.len() {
            out.push(&self.points[start..]);
        }
        out
    }
}

/// A chart: axes, series, timeline marks.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Heading (in the SVG's aria-label and title).
    pub title: String,
    /// Horizontal axis.
    pub x: Axis,
    /// Vertical axis.
    pub y: Axis,
    /// Lines.
    pub series: Vec<Series>,
    /// Vertical marks: x and label (numbered on the chart, listed under it).
    pub marks: Vec<(f64, String)>,
    /// Size in px.
    pub width: f64,
    /// Size in px.
    pub height: f64,
    /// Draw a marker (with its value as tooltip) at each point of series this short.
    pub markers_up_to: usize,
    /// List the marks under the chart (else they are only numbered on it, with their label
    /// as tooltip, referring to the list of another chart).
    pub list_marks: bool,
}

/// Distinct colours (Okabe–Ito, then Tableau's), cycled with dashes beyond.
const PALETTE: [&str; 16] = [
    "#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9", "#8c564b", "#7f7f7f",
    "#bcbd22", "#17becf", "#9467bd", "#000000", "#8b0000", "#1f3a93", "#ff7f7f", "#2ca02c",
];

/// Plot area margins: left (tick labels, axis label), right (legend), top, bottom.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 210.0;
const TOP: f64 = 46.0;
const BOTTOM: f64 = 48.0;

impl Chart {
    /// A chart of the given size with no series yet.
    pub fn new(title: &str, x: Axis, y: Axis, width: f64, height: f64) -> Self {
        Self {
            title: title.to_owned(),
            x,
            y,
            series: Vec::new(),
            marks: Vec::new(),
            width,
            height,
            markers_up_to: 80,
            list_marks: true,
        }
    }

    /// The pixel column of `x` (data units).
    pub fn px(&self, x: f64) -> f64 {
        LEFT + self.x.fraction(x) * (self.width - LEFT - RIGHT)
    }

    /// The pixel row of `y` (data units; larger values higher up).
    pub fn py(&self, y: f64) -> f64 {
        self.height - BOTTOM - self.y.fraction(y) * (self.height - TOP - BOTTOM)
    }

    /// The SVG.
    pub fn svg(&self) -> String {
        let (w, h) = (self.width, self.height);
        let (x0, x1, y0, y1) = (LEFT, w - RIGHT, h - BOTTOM, TOP);
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg class=\"chart\" role=\"img\" aria-label=\"{t}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
             <title>{t}</title><text class=\"chart-title\" x=\"{x0}\" y=\"16\">{t}</text><rect x=\"{x0}\" y=\"{y1}\" width=\"{pw:.1}\" height=\"{ph:.1}\" fill=\"#fcfcfc\" stroke=\"#999\"/>",
            t = escape(&self.title),
            pw = x1 - x0,
            ph = y0 - y1,
        );
        // Axes: grid lines, ticks and labels.
        s.push_str("<g class=\"x-axis\">");
        for (v, label) in &self.x.ticks {
            let x = self.px(*v);
            let _ = write!(
                s,
                "<line x1=\"{x:.1}\" y1=\"{y1}\" x2=\"{x:.1}\" y2=\"{y0}\" stroke=\"#e4e4e4\"/>\
                 <line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#555\"/>\
                 <text class=\"tick\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                y0 + 5.0,
                y0 + 17.0,
                escape(label)
            );
        }
        let _ = write!(
            s,
            "<text class=\"axis-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text></g>",
            (x0 + x1) / 2.0,
            h - 8.0,
            escape(&self.x.label)
        );
        s.push_str("<g class=\"y-axis\">");
        for (v, label) in &self.y.ticks {
            let y = self.py(*v);
            let _ = write!(
                s,
                "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\
                 <line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{x0}\" y2=\"{y:.1}\" stroke=\"#555\"/>\
                 <text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                x0 - 5.0,
                x0 - 8.0,
                y + 4.0,
                escape(label)
            );
        }
        let _ = write!(
            s,
            "<text class=\"axis-label\" transform=\"translate(14,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text></g>",
            (y0 + y1) / 2.0,
            escape(&self.y.label)
        );
        // Timeline marks, numbered.
        for (n, (v, label)) in self.marks.iter().enumerate() {
            let x = self.px(*v);
            let _ = write!(
                s,
                "<g class=\"mark\"><line x1=\"{x:.1}\" y1=\"{y1}\" x2=\"{x:.1}\" y2=\"{y0}\" stroke=\"#c33\" stroke-opacity=\"0.45\" stroke-dasharray=\"3,3\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#b00\">{}<title>{}</title></text></g>",
                y1 - 4.0 - (n % 2) as f64 * 11.0,
                n + 1,
                escape(label)
            );
        }
        // Series, clipped to the plot area.
        let _ = write!(
            s,
            "<clipPath id=\"clip-{id}\"><rect x=\"{x0}\" y=\"{y1}\" width=\"{:.1}\" height=\"{:.1}\"/></clipPath>",
            x1 - x0,
            y0 - y1,
            id = self.id()
        );
        for (i, series) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let dashed = series.dashed || i >= PALETTE.len();
            let dash = if dashed {
                " stroke-dasharray=\"6,3\""
            } else {
                ""
            };
            let _ = write!(
                s,
                "<g class=\"series\" data-name=\"{}\" clip-path=\"url(#clip-{})\">",
                escape(&series.name),
                self.id(),
            );
            for run in series.runs() {
                let points: Vec<String> = run
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y)))
                    .collect();
                let _ = write!(
                    s,
                    "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\"{dash} points=\"{}\"/>",
                    points.join(" ")
                );
            }
            if series.points.len() <= self.markers_up_to {
                for &(x, y) in &series.points {
                    let _ = write!(
                        s,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"><title>{}: {} {}, {} {}</title></circle>",
                        self.px(x),
                        self.py(y),
                        escape(&series.name),
                        escape(&self.x.label),
                        number(x),
                        escape(&self.y.label),
                        number(y)
                    );
                }
            }
            s.push_str("</g>");
            // Legend entry.
            let ly = y1 + 6.0 + i as f64 * 16.0;
            let _ = write!(
                s,
                "<g class=\"legend\"><line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"3\"{dash}/>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
                x1 + 12.0,
                x1 + 34.0,
                x1 + 40.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        s.push_str("</svg>");
        s
    }

    /// A stable id for the clip path, from the title.
    fn id(&self) -> String {
        self.title
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    }

    /// The SVG and, when there are marks, their numbered list.
    pub fn html(&self) -> String {
        let mut s = format!("<figure>{}", self.svg());
        if self.list_marks && !self.marks.is_empty() {
            s.push_str("<figcaption><ol class=\"marks\">");
            for (v, label) in &self.marks {
                let _ = write!(s, "<li>{} s: {}</li>", number(*v), escape(label));
            }
            s.push_str("</ol></figcaption>");
        }
        s.push_str("</figure>\n");
        s
    }
}

/// Marks the timeline's actions on a chart over time, numbered as in the clients chart's
/// list.
pub fn with_timeline(mut chart: Chart, c: &Charts) -> Chart {
    chart.marks = c.events.iter().map(|e| (e.t_s, e.label.clone())).collect();
    chart.list_marks = false;
    chart
}

/// Operations whose latency is derived from other events rather than one request (left out
/// of the request rates).
const DERIVED: [&str; 2] = ["notification-period", "observe-to-first-notification"];

/// The latency percentile distribution of every operation on HdrHistogram's percentile axis,
/// latency on a log axis (queued operations are their own series).
pub fn distribution(c: &Charts) -> Option<Chart> {
    if c.distribution.is_empty() {
        return None;
    }
    let values = c.distribution.values().flatten();
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), [_, v]| {
        (lo.min(v.max(1e-3)), hi.max(*v))
    });
    // As many nines as the samples resolve (1,000 samples: up to 99.9 %).
    let nines = c
        .distribution
        .values()
        .flat_map(|pts| pts.iter().map(|[p, _]| *p))
        .filter(|p| *p < 100.0)
        .map(|p| percentile_x(p, 9.0).ceil() as u32)
        .max()
        .unwrap_or(2)
        .clamp(2, 6);
    let mut chart = Chart::new(
        "Latency percentile distribution by operation",
        Axis::percentile(nines),
        Axis::log("latency (ms)", lo, hi),
        1000.0,
        420.0,
    );
    chart.markers_up_to = 12;
    let cap = f64::from(nines);
    for (op, pts) in &c.distribution {
        chart.series.push(Series {
            name: op.clone(),
            points: pts
                .iter()
                .map(|[p, v]| (percentile_x(*p, cap), *v))
                .collect(),
            dashed: op.ends_with("-queued"),
            gap: None,
        });
    }
    Some(chart)
}

/// Latency percentiles over time: the median and the 99th percentile of every operation in
/// each second (log axis, one series per operation, queued ones dashed), then one chart per
/// operation seen in at least three seconds with its p50, p90, p99 and max.
pub fn percentiles_over_time(c: &Charts, duration_s: f64) -> Vec<Chart> {
    let ops: Vec<(&String, &Vec<SecondLatency>)> =
        c.over_time.iter().filter(|(_, v)| !v.is_empty()).collect();
    if ops.is_empty() {
        return Vec::new();
    }
    let t_max = ops
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| f64::from(p.t_s) + 1.0))
        .fold(duration_s, f64::max);
    let at = |p: &SecondLatency| f64::from(p.t_s) + 0.5;
    let mut out = Vec::new();
    for (name, f) in [
        (
            "Median latency per second by operation",
            (|p: &SecondLatency| p.p50_ms) as fn(&SecondLatency) -> f64,
        ),
        ("99th percentile latency per second by operation", |p| {
            p.p99_ms
        }),
    ] {
        let values = ops.iter().flat_map(|(_, v)| v.iter().map(f));
        let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let mut chart = Chart::new(
            name,
            Axis::linear("time (s)", 0.0, t_max),
            Axis::log("latency (ms)", lo, hi),
            1000.0,
            340.0,
        );
        for (op, pts) in &ops {
            chart.series.push(Series {
                name: (*op).clone(),
                points: pts.iter().map(|p| (at(p), f(p))).collect(),
                dashed: op.ends_with("-queued"),
                gap: Some(1.5),
            });
        }
        out.push(chart);
    }
    for (op, pts) in ops.iter().filter(|(_, v)| v.len() >= 3) {
        let hi = pts.iter().map(|p| p.max_ms).fold(0.0f64, f64::max);
        let lo = pts.iter().map(|p| p.p50_ms).fold(f64::MAX, f64::min);
        let y = if hi / lo.max(1e-3) > 50.0 {
            Axis::log("latency (ms)", lo, hi)
        } else {
            Axis::linear("latency (ms)", 0.0, hi)
        };
        let mut chart = Chart::new(
            &format!("{op}: latency percentiles per second"),
            Axis::linear("time (s)", 0.0, t_max),
            y,
            1000.0,
            250.0,
        );
        for (name, f) in [
            (
                "p50",
                (|p: &SecondLatency| p.p50_ms) as fn(&SecondLatency) -> f64,
            ),
            ("p90", |p| p.p90_ms),
            ("p99", |p| p.p99_ms),
            ("max", |p| p.max_ms),
        ] {
            chart.series.push(Series {
                name: name.to_owned(),
                points: pts.iter().map(|p| (at(p), f(p))).collect(),
                dashed: name == "max",
                gap: Some(1.5),
            });
        }
        out.push(chart);
    }
    out
}

/// Requests per second, one series per key (operation or group).
pub fn rates(title: &str, by: &BTreeMap<String, Vec<u32>>, duration_s: f64) -> Option<Chart> {
    let by: Vec<(&String, &Vec<u32>)> = by
        .iter()
        .filter(|(k, v)| !DERIVED.contains(&k.as_str()) && v.iter().any(|n| *n > 0))
        .collect();
    if by.is_empty() {
        return None;
    }
    let hi = by
        .iter()
        .flat_map(|(_, v)| v.iter())
        .copied()
        .max()
        .unwrap_or(1);
    let seconds = by.iter().map(|(_, v)| v.len()).max().unwrap_or(0) as f64;
    let mut chart = Chart::new(
        title,
        Axis::linear("time (s)", 0.0, duration_s.max(seconds)),
        Axis::linear("requests/s", 0.0, f64::from(hi)),
        1000.0,
        300.0,
    );
    for (name, v) in by {
        chart.series.push(Series {
            name: name.clone(),
            // The requests of second k, drawn at its middle.
            // Every second of the run, 0 where none came.
            points: (0..seconds as usize)
                .map(|k| (k as f64 + 0.5, f64::from(v.get(k).copied().unwrap_or(0))))
                .collect(),
            dashed: false,
            gap: None,
        });
    }
    Some(chart)
}

/// Started, registered and sleeping clients over time, the timeline's actions marked.
pub fn clients(c: &Charts, duration_s: f64) -> Option<Chart> {
    if c.clients.is_empty() {
        return None;
    }
    let hi = c.clients.iter().map(|p| p.started).max().unwrap_or(1);
    let t_max = c.clients.iter().map(|p| p.t_s).fold(duration_s, f64::max);
    let mut chart = Chart::new(
        "Clients over time",
        Axis::linear("time (s)", 0.0, t_max),
        Axis::linear("clients", 0.0, hi as f64),
        1000.0,
        320.0,
    );
    for (name, f) in [
        (
            "started",
            (|p: &ClientsPoint| p.started) as fn(&ClientsPoint) -> u64,
        ),
        ("registered", |p| p.registered),
        ("asleep (radio off)", |p| p.sleeping),
    ] {
        chart.series.push(Series {
            name: name.to_owned(),
            points: c.clients.iter().map(|p| (p.t_s, f(p) as f64)).collect(),
            dashed: false,
            gap: None,
        });
    }
    chart.markers_up_to = 30;
    chart.marks = c.events.iter().map(|e| (e.t_s, e.label.clone())).collect();
    Some(chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers of an attribute in `svg`, in order.
    fn attr(svg: &str, name: &str) -> Vec<String> {
        svg.split(&format!(" {name}=\""))
            .skip(1)
            .filter_map(|r| r.split('"').next().map(str::to_owned))
            .collect()
    }

    fn tick_labels(svg: &str) -> Vec<String> {
        svg.split("<text class=\"tick\"")
            .skip(1)
            .filter_map(|r| r.split('>').nth(1)?.split('<').next().map(str::to_owned))
            .collect()
    }

    #[test]
    fn axes_have_round_ticks_and_map_values_to_pixels() {
        let a = Axis::linear("time (s)", 0.0, 23.4);
        assert_eq!(
            a.ticks.iter().map(|t| t.1.as_str()).collect::<Vec<_>>(),
            ["0", "5", "10", "15", "20", "25"]
        );
        assert_eq!((a.min, a.max), (0.0, 25.0));
        let l = Axis::log("latency (ms)", 0.3, 4100.0);
        assert_eq!(
            l.ticks.iter().map(|t| t.1.as_str()).collect::<Vec<_>>(),
            ["0.1", "1", "10", "100", "1000", "10k"]
        );
        assert!((l.fraction(100.0) - 0.6).abs() < 1e-9);
        let p = Axis::percentile(3);
        assert_eq!(
            p.ticks.iter().map(|t| t.1.as_str()).collect::<Vec<_>>(),
            ["0%", "90%", "99%", "99.9%"]
        );
        assert!((percentile_x(99.0, 3.0) - 2.0).abs() < 1e-9);
        assert_eq!(percentile_x(100.0, 3.0), 3.0);
        assert_eq!(percentile_x(0.0, 3.0), 0.0);

        let chart = Chart::new("t", a, l, 1000.0, 400.0);
        // Plot area: x from 70 to 790, y from 352 (bottom) to 46 (top).
        assert_eq!(chart.px(0.0), 70.0);
        assert_eq!(chart.px(25.0), 790.0);
        assert!((chart.px(12.5) - 430.0).abs() < 1e-9);
        assert!((chart.py(0.1) - 352.0).abs() < 1e-9);
        assert!((chart.py(10_000.0) - 46.0).abs() < 1e-9);
        assert!((chart.py(100.0) - (352.0 - 0.6 * 306.0)).abs() < 1e-9);
    }

    fn sample() -> Charts {
        let mut c = Charts::default();
        let dist = |scale: f64| {
            vec![
                [0.0, 1.0 * scale],
                [50.0, 2.0 * scale],
                [90.0, 3.0 * scale],
                [99.0, 5.0 * scale],
                [100.0, 8.0 * scale],
            ]
        };
        c.distribution.insert("read".into(), dist(1.0));
        c.distribution.insert("read-queued".into(), dist(1000.0));
        c.distribution.insert("register".into(), dist(3.0));
        c.over_time.insert(
            "read".into(),
            vec![SecondLatency {
                t_s: 3,
                count: 10,
                p50_ms: 2.0,
                p90_ms: 3.0,
                p99_ms: 5.0,
                max_ms: 8.0,
            }],
        );
        c.requests_by_operation
            .insert("read".into(), vec![0, 0, 0, 40, 0]);
        c.requests_by_operation
            .insert("register".into(), vec![100, 20, 0, 0, 0]);
        c.clients = vec![
            ClientsPoint {
                t_s: 0.25,
                started: 50,
                registered: 10,
                sleeping: 0,
            },
            ClientsPoint {
                t_s: 4.0,
                started: 100,
                registered: 100,
                sleeping: 30,
            },
        ];
        c.events = vec![TimelineMark {
            t_s: 2.0,
            label: "sleep 30 sensors".into(),
        }];
        c
    }

    #[test]
    fn the_distribution_has_one_series_per_operation_queued_reads_apart() {
        let chart = distribution(&sample()).unwrap();
        let svg = chart.svg();
        assert_eq!(attr(&svg, "data-name"), ["read", "read-queued", "register"]);
        // Percentile axis with 99 % the highest resolved; latency decades to 10 s.
        let labels = tick_labels(&svg);
        assert!(
            labels.starts_with(&["0%".into(), "90%".into(), "99%".into()]),
            "{labels:?}"
        );
        assert!(labels.contains(&"1000".to_owned()) && labels.contains(&"10k".to_owned()));
        assert!(svg.contains(">percentile</text>") && svg.contains(">latency (ms)</text>"));
        // The queued series is dashed and far above: its 50 % point (2 s) sits at the
        // pixel row of 2000 ms.
        let queued = &chart.series[1];
        assert!(queued.dashed);
        let (x, y) = queued.points[1];
        assert_eq!(y, 2000.0);
        let cx = format!("cx=\"{:.1}\" cy=\"{:.1}\"", chart.px(x), chart.py(y));
        assert!(svg.contains(&cx), "{cx} in {svg}");
        assert!(chart.py(2000.0) < chart.py(8.0));
    }

    #[test]
    fn rates_clients_and_percentiles_over_time() {
        let c = sample();
        let r = rates(
            "Requests per second by operation",
            &c.requests_by_operation,
            5.0,
        )
        .unwrap();
        let svg = r.svg();
        assert_eq!(attr(&svg, "data-name"), ["read", "register"]);
        assert!(svg.contains(">requests/s</text>") && svg.contains(">time (s)</text>"));
        // 100 registers in second 0: drawn at 0.5 s, at the top tick (100).
        assert!(svg.contains(&format!("{:.1},{:.1}", r.px(0.5), r.py(100.0))));
        assert_eq!(r.y.max, 100.0);

        let chart = clients(&c, 5.0).unwrap();
        let svg = chart.svg();
        assert_eq!(
            attr(&svg, "data-name"),
            ["started", "registered", "asleep (radio off)"]
        );
        assert_eq!(svg.matches("class=\"mark\"").count(), 1);
        assert!(chart.html().contains("<li>2 s: sleep 30 sensors</li>"));
        // Elsewhere the same marks, numbered alike, without the list.
        let marked = with_timeline(r, &c);
        assert_eq!(marked.svg().matches("class=\"mark\"").count(), 1);
        assert!(marked.svg().contains(">1<title>sleep 30 sensors</title>"));
        assert!(!marked.html().contains("<li>"));

        // The median and p99 of every operation, then one chart for each operation seen
        // in three seconds or more.
        let mut c = c;
        let second = |t_s, ms| SecondLatency {
            t_s,
            count: 1,
            p50_ms: ms,
            p90_ms: ms,
            p99_ms: ms * 2.0,
            max_ms: ms * 3.0,
        };
        c.over_time.insert(
            "update".into(),
            vec![second(0, 5.0), second(1, 6.0), second(4, 2500.0)],
        );
        let over = percentiles_over_time(&c, 5.0);
        assert_eq!(over.len(), 3);
        assert_eq!(attr(&over[0].svg(), "data-name"), ["read", "update"]);
        assert!(over[1].title.starts_with("99th percentile"));
        assert_eq!(over[1].y.scale, Scale::Log);
        let (x, y) = over[1].series[1].points[2];
        assert_eq!((x, y), (4.5, 5000.0));
        assert!(over[2].title.starts_with("update:"));
        // Seconds 0 and 1 joined, second 4 apart: two polylines per series.
        let svg = over[2].svg();
        assert_eq!(svg.matches("<polyline").count(), 4 * 2);
        assert_eq!(over[2].series[0].runs().len(), 2);
        assert_eq!(
            attr(&over[2].svg(), "data-name"),
            ["p50", "p90", "p99", "max"]
        );
    }

    #[test]
    fn nothing_to_draw_draws_nothing() {
        let c = Charts::default();
        assert!(distribution(&c).is_none());
        assert!(clients(&c, 1.0).is_none());
        assert!(rates("x", &c.requests_by_operation, 1.0).is_none());
        assert!(percentiles_over_time(&c, 1.0).is_empty());
        assert_eq!(number(0.1), "0.1");
        assert_eq!(number(99.9), "99.9");
        assert_eq!(number(20_000.0), "20k");
    }
}
