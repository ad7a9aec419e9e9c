//! Live counters of a fleet, per profile: atomics the driver task writes and anyone reads
//! while the fleet runs, and latency histograms of Register and Update.

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

/// Counters and latencies of one profile, shared between the driver and handles.
#[derive(Debug, Default)]
pub(crate) struct ProfileStats {
    pub(crate) counters: ProfileCounters,
    pub(crate) latencies: Mutex<Latencies>,
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
