//! Live counters of a fleet, per profile: atomics the driver task writes and anyone reads
//! while the fleet runs, and latency histograms of Register and Update.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;

macro_rules! counters {
    ($(#[$meta:meta])* $name:ident / $snapshot:ident { $($(#[$fmeta:meta])* $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: AtomicU64,)*
        }

        /// A copy of the counters at one moment (see the live counters for each field).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $snapshot {
            $($(#[$fmeta])* pub $field: u64,)*
        }

        impl $name {
            /// The counters now (each field read on its own: a consistent cut is not taken).
            pub fn snapshot(&self) -> $snapshot {
                $snapshot { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }

        impl std::ops::AddAssign for $snapshot {
            fn add_assign(&mut self, other: Self) {
                $(self.$field += other.$field;)*
            }
        }
    };
}

counters! {
    /// The live counters of one profile of a fleet. Gauges (`registered`, `sleeping`,
    /// `bootstrapping`, `registering`, `failed`) count clients in that state now; the others
    /// count events since the fleet started.
    ProfileCounters / CountersSnapshot {
        /// Clients of the profile in the fleet.
        clients,
        /// Clients started so far (the ramp-up reaches `clients`).
        started,
        /// Gauge: clients registered now (awake or asleep; Core TS 1.1 §6.2.1).
        registered,
        /// Gauge: registered queue-mode clients asleep now (Core TS 1.1 §6.5).
        sleeping,
        /// Gauge: clients running client-initiated bootstrap now (Core TS 1.1 §6.1).
        bootstrapping,
        /// Gauge: clients waiting for the answer to their Register now.
        registering,
        /// Gauge: clients that gave up (bootstrap or registration failed) and stay down.
        failed,
        /// Clients that registered at least once.
        clients_registered,
        /// Successful Registers.
        registrations,
        /// Successful Updates.
        updates,
        /// Bootstrap, Register or Update attempts that failed.
        failures,
        /// Successful De-registers.
        deregistrations,
        /// Requests from servers the clients answered (Device Management, Observe, ...).
        requests_served,
        /// Notifications the clients sent (Information Reporting, Core TS 1.1 §6.4.3).
        notifications_sent,
        /// Datagrams delivered to the clients.
        datagrams_in,
        /// Datagrams the clients sent.
        datagrams_out,
        /// UDP payload bytes delivered to the clients.
        bytes_in,
        /// UDP payload bytes the clients sent.
        bytes_out,
        /// Datagrams to a client dropped because it was asleep (its radio off).
        dropped_asleep,
        /// Datagrams to a client dropped because they went to an expired NAT mapping.
        dropped_nat,
        /// Datagrams lost by the impairment model, either direction.
        dropped_loss,
        /// Times a client's public address changed after a NAT mapping expired.
        rebinds,
        /// DTLS handshakes started (first contact, and again after a failure, a reboot or
        /// a NAT rebinding; RFC 6347 §4.2).
        dtls_handshakes,
        /// DTLS handshakes that failed (unknown identity, wrong key, timeout).
        dtls_failures,
        /// Registers answered 4.12 that the client sent again as an older LwM2M version
        /// (the profile's `version_fallback`).
        version_fallbacks,
    }
}

/// Latency histograms of one profile, in microseconds: from the first transmission of a
/// Register (or Update) to its success, retransmissions included.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Register: POST /rd sent until 2.01 Created (Core TS 1.1 §6.2.1).
    pub register: Histogram<u64>,
    /// Update: POST /rd/{id} sent until 2.04 Changed (Core TS 1.1 §6.2.2).
    pub update: Histogram<u64>,
    /// Every sample of both histograms with the time it completed, in completion order:
    /// latency over time (the harness's per-second interval log and charts); only with
    /// [`super::FleetConfig::timed_latencies`], empty otherwise.
    pub samples: Vec<Timed>,
}

/// One Register or Update latency and when it completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timed {
    /// When the answer arrived (wall clock).
    pub at: SystemTime,
    /// An Update (else a Register).
    pub update: bool,
    /// From the first transmission to the success.
    pub latency: Duration,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            register: histogram(),
            update: histogram(),
            samples: Vec::new(),
        }
    }
}

/// 1 µs to 1 h, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid histogram bounds")
}

impl Latencies {
    /// Adds another profile's histograms to these.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides: addition cannot fail.
        let _ = self.register.add(&other.register);
        let _ = self.update.add(&other.update);
        self.samples.extend_from_slice(&other.samples);
        self.samples.sort_by_key(|t| t.at);
    }

    /// The latency at quantile `q` (0.5 for the median), `None` before any sample.
    pub fn register_quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.register, q)
    }

    /// The Update latency at quantile `q`, `None` before any sample.
    pub fn update_quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.update, q)
    }
}

fn quantile(h: &Histogram<u64>, q: f64) -> Option<Duration> {
    (!h.is_empty()).then(|| Duration::from_micros(h.value_at_quantile(q)))
}

/// Failures of one cause ([`failure_cause`]): how many, and the first one's exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureCause {
    /// The cause: operation and CoAP code (`register 4.03`), a timeout after N
    /// retransmissions, a DTLS alert, an ICMP error.
    pub cause: String,
    /// How many failures had it.
    pub count: u64,
    /// The first failure of this cause: the client, what it sent and what came back.
    pub example: String,
}

/// Adds `more` to the causes `into` (counts summed, the first example kept).
pub fn merge_causes(into: &mut Vec<FailureCause>, more: &[FailureCause]) {
    for c in more {
        match into.iter_mut().find(|x| x.cause == c.cause) {
            Some(x) => x.count += c.count,
            None => into.push(c.clone()),
        }
    }
    into.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.cause.cmp(&b.cause)));
}

/// The cause of a failed `step` (`register`, `update`, `bootstrap`, ...) from the client
/// machine's reason: `STEP C.DD` for an error answer, `STEP timeout after N
/// retransmissions` (RFC 7252 §4.2), `STEP no response`, `STEP reset`, else the step and
/// the reason.
pub fn failure_cause(step: &str, reason: &str) -> String {
    if let Some(rest) = reason.strip_prefix("answered ") {
        let code = rest.split(':').next().unwrap_or(rest).trim();
        return format!("{step} {code}");
    }
    if let Some(rest) = reason.strip_prefix("no acknowledgement after ") {
        let n: u32 = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        return format!(
            "{step} timeout after {} retransmissions",
            n.saturating_sub(1)
        );
    }
    if reason.starts_with("no response within") {
        return format!("{step} no response");
    }
    if reason.contains("Reset") {
        return format!("{step} reset by the peer");
    }
    format!("{step}: {reason}")
}

/// Counters and latencies of one profile, shared between the driver and handles.
#[derive(Debug, Default)]
pub(crate) struct ProfileStats {
    pub(crate) counters: ProfileCounters,
    pub(crate) latencies: Mutex<Latencies>,
    /// Failures by cause: count and first example.
    pub(crate) causes: Mutex<BTreeMap<String, (u64, String)>>,
    /// Keep each sample with its time too ([`Latencies::samples`]).
    pub(crate) timed: bool,
}

impl ProfileStats {
    pub(crate) fn record(&self, update: bool, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        if let Ok(mut l) = self.latencies.lock() {
            let h = if update {
                &mut l.update
            } else {
                &mut l.register
            };
            h.saturating_record(micros);
            if !self.timed {
                return;
            }
            l.samples.push(Timed {
                at: SystemTime::now(),
                update,
                latency,
            });
        }
    }

    /// Counts a failure of `cause`; `example` is asked for the first one of each cause.
    pub(crate) fn failed(&self, cause: String, example: impl FnOnce() -> String) {
        if let Ok(mut causes) = self.causes.lock() {
            causes
                .entry(cause)
                .and_modify(|(n, _)| *n += 1)
                .or_insert_with(|| (1, example()));
        }
    }

    /// The failure causes, most frequent first.
    pub(crate) fn causes(&self) -> Vec<FailureCause> {
        let mut out: Vec<FailureCause> = self
            .causes
            .lock()
            .map(|c| {
                c.iter()
                    .map(|(cause, (count, example))| FailureCause {
                        cause: cause.clone(),
                        count: *count,
                        example: example.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.cause.cmp(&b.cause)));
        out
    }

    pub(crate) fn latencies(&self) -> Latencies {
        self.latencies.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Removes one from a gauge (never below zero).
pub(crate) fn drop_one(c: &AtomicU64) {
    let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_add_up() {
        let c = ProfileCounters::default();
        bump(&c.registered);
        add(&c.bytes_out, 40);
        drop_one(&c.sleeping);
        let mut total = c.snapshot();
        total += c.snapshot();
        assert_eq!(total.registered, 2);
        assert_eq!(total.bytes_out, 80);
        assert_eq!(total.sleeping, 0);
    }

    #[test]
    fn failures_group_by_cause() {
        assert_eq!(
            failure_cause("register", "answered 4.12: unsupported LwM2M version"),
            "register 4.12"
        );
        assert_eq!(
            failure_cause(
                "update",
                "no acknowledgement after 5 transmissions (RFC 7252 §4.2)"
            ),
            "update timeout after 4 retransmissions"
        );
        let s = ProfileStats::default();
        s.failed("register 4.03".into(), || "first".into());
        s.failed("register 4.03".into(), || "second".into());
        s.failed("register 4.12".into(), || "other".into());
        let causes = s.causes();
        assert_eq!(causes.len(), 2);
        assert_eq!(
            (
                causes[0].cause.as_str(),
                causes[0].count,
                causes[0].example.as_str()
            ),
            ("register 4.03", 2, "first")
        );
        let mut all = causes.clone();
        merge_causes(&mut all, &causes);
        assert_eq!(all[0].count, 4);
        assert_eq!(all[1].count, 2);
    }

    #[test]
    fn latency_quantiles() {
        let s = ProfileStats::default();
        assert_eq!(s.latencies().register_quantile(0.5), None);
        for ms in 1..=100 {
            s.record(false, Duration::from_millis(ms));
        }
        s.record(true, Duration::from_millis(7));
        let mut l = s.latencies();
        l.merge(&s.latencies());
        let p50 = l.register_quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_millis(49) && p50 <= Duration::from_millis(51),
            "{p50:?}"
        );
        assert_eq!(l.update.len(), 2);
        assert!(l.samples.is_empty(), "untimed by default");
    }

    #[test]
    fn timed_samples_follow_the_histograms() {
        let s = ProfileStats {
            timed: true,
            ..ProfileStats::default()
        };
        let before = SystemTime::now();
        s.record(false, Duration::from_millis(3));
        s.record(true, Duration::from_millis(5));
        let mut l = s.latencies();
        l.merge(&s.latencies());
        assert_eq!(l.samples.len(), 4);
        assert_eq!(l.samples.len() as u64, l.register.len() + l.update.len());
        assert!(l.samples.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(l.samples.iter().all(|t| t.at >= before));
        let updates: Vec<Duration> = l
            .samples
            .iter()
            .filter(|t| t.update)
            .map(|t| t.latency)
            .collect();
        assert_eq!(updates, [Duration::from_millis(5); 2]);
    }
}
