//! Network models (`scenarios/networks/*.yaml`) and their seeded, sans-IO behaviour: a NAT
//! whose mapping expires after silence, a queue-mode sleep schedule, and per-direction
//! impairment (loss, delay and jitter, duplication, reordering).
//!
//! Time is passed in as a `Duration` since the start of the simulation (a virtual clock);
//! nothing here reads a clock or touches a socket.
//!
//! ```yaml
//! description: Residential gateway that forgets UDP mappings after 30 s of silence
//! nat: { idle_timeout: 30s }
//! sleep: { awake: 10s, period: 5m, jitter: 30s }
//! uplink: { loss: 0.01, delay: 20ms, jitter: 5ms }
//! downlink: { loss: 0.01, delay: 20ms, jitter: 5ms, duplicate: 0.001, reorder: 0.01 }
//! ```

use std::path::Path;
use std::time::Duration;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::config::{self, ConfigError, Origin};
use crate::seed;

/// A network model: what lies between a simulated client and the server.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkModel {
    /// What the model stands for.
    #[serde(default)]
    pub description: String,
    /// A NAT in front of the client, if any.
    #[serde(default)]
    pub nat: Option<NatConfig>,
    /// A sleep schedule (queue mode), if any.
    #[serde(default)]
    pub sleep: Option<SleepConfig>,
    /// Impairment from the client to the server.
    #[serde(default)]
    pub uplink: ImpairmentConfig,
    /// Impairment from the server to the client.
    #[serde(default)]
    pub downlink: ImpairmentConfig,
}

/// A NAT with an idle timeout (RFC 4787 §4.3).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatConfig {
    /// Silence after which the mapping is gone (RFC 4787 REQ-5 asks for at least 2 min;
    /// many residential gateways use less).
    #[serde(with = "crate::duration")]
    pub idle_timeout: Duration,
    /// Whether inbound traffic keeps the mapping alive (RFC 4787 §4.3 "NAT Inbound
    /// refresh behavior"); default false: only the client's traffic does.
    #[serde(default)]
    pub inbound_refresh: bool,
}

/// A queue-mode sleep schedule: the client wakes every `period` for `awake`, each wake-up
/// shifted by a seeded delay up to `jitter`; it is awake at time zero.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepConfig {
    /// Length of each awake window.
    #[serde(with = "crate::duration")]
    pub awake: Duration,
    /// Time from one wake-up to the next (awake plus asleep).
    #[serde(with = "crate::duration")]
    pub period: Duration,
    /// Largest shift of a wake-up (at most `period - awake`).
    #[serde(default, with = "crate::duration")]
    pub jitter: Duration,
}

/// Impairment of one direction.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpairmentConfig {
    /// Probability a datagram is lost.
    #[serde(default)]
    pub loss: f64,
    /// Base one-way delay.
    #[serde(default, with = "crate::duration")]
    pub delay: Duration,
    /// Delay varies uniformly within `delay ± jitter`; datagrams stay in order.
    #[serde(default, with = "crate::duration")]
    pub jitter: Duration,
    /// Probability a datagram is delivered twice.
    #[serde(default)]
    pub duplicate: f64,
    /// Probability a datagram skips the delay and overtakes those in flight (as Linux
    /// netem's `reorder`; needs a delay).
    #[serde(default)]
    pub reorder: f64,
}

impl NetworkModel {
    /// Parses and checks a model; errors name `source`, the line and the key.
    pub fn from_yaml(source: &str, text: &str) -> Result<Self, ConfigError> {
        Self::from_origin(&Origin::new(source, text))
    }

    fn from_origin(origin: &Origin) -> Result<Self, ConfigError> {
        let model: Self = origin.parse()?;
        if let Some(nat) = &model.nat
            && nat.idle_timeout.is_zero()
        {
            return Err(origin.error("nat.idle_timeout", "must be positive"));
        }
        if let Some(sleep) = &model.sleep {
            if sleep.awake.is_zero() {
                return Err(origin.error("sleep.awake", "must be positive"));
            }
            if sleep.period <= sleep.awake {
                return Err(origin.error("sleep.period", "must be longer than the awake window"));
            }
            if sleep.jitter > sleep.period - sleep.awake {
                return Err(origin.error(
                    "sleep.jitter",
                    "must not exceed period - awake (wake-ups would overlap)",
                ));
            }
        }
        for (dir, imp) in [("uplink", &model.uplink), ("downlink", &model.downlink)] {
            for (key, p) in [
                ("loss", imp.loss),
                ("duplicate", imp.duplicate),
                ("reorder", imp.reorder),
            ] {
                if !(0.0..=1.0).contains(&p) {
                    return Err(origin.error(
                        &format!("{dir}.{key}"),
                        format!("{p} is not a probability in [0, 1]"),
                    ));
                }
            }
            if imp.reorder > 0.0 && imp.delay.is_zero() {
                return Err(origin.error(
                    &format!("{dir}.reorder"),
                    "reordering needs a delay to overtake",
                ));
            }
        }
        Ok(model)
    }
}

/// Loads a network model file; its name is the file stem.
pub fn load_network(path: &Path) -> Result<(String, NetworkModel), ConfigError> {
    let origin = config::read(path)?;
    Ok((config::file_stem(path), NetworkModel::from_origin(&origin)?))
}

/// A public address mapping of the NAT: the generation counts mappings, the port is the
/// public port the server sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// 1 for the first mapping, then one more each time the NAT forgets and remaps.
    pub generation: u32,
    /// The public UDP port (from the dynamic range 49152-65535).
    pub port: u16,
}

const PORT_BASE: u16 = 49152;
const PORT_COUNT: u16 = 16384;

/// The NAT in front of one client.
#[derive(Debug, Clone)]
pub struct Nat {
    config: NatConfig,
    rng: ChaCha8Rng,
    mapping: Option<Mapping>,
    generation: u32,
    last_port: Option<u16>,
    last_activity: Duration,
}

impl Nat {
    /// A NAT with no mapping yet.
    pub fn new(config: &NatConfig, seed: u64) -> Self {
        Self {
            config: config.clone(),
            rng: seed::rng(seed),
            mapping: None,
            generation: 0,
            last_port: None,
            last_activity: Duration::ZERO,
        }
    }

    /// The current mapping, if traffic created one and it has not expired by the last event.
    pub fn mapping(&self) -> Option<Mapping> {
        self.mapping
    }

    fn expire(&mut self, now: Duration) {
        if now.saturating_sub(self.last_activity) > self.config.idle_timeout {
            self.mapping = None;
        }
    }

    /// The client sends at `now`. Returns true if this created a new mapping (the first
    /// datagram, or the first after the old mapping expired): the server sees a new port.
    pub fn on_outbound(&mut self, now: Duration) -> bool {
        self.expire(now);
        self.last_activity = now;
        if self.mapping.is_some() {
            return false;
        }
        // A new port, never the previous one.
        let draw = self.rng.random_range(0..PORT_COUNT - 1);
        let offset = match self.last_port {
            Some(old) => (old - PORT_BASE + 1 + draw) % PORT_COUNT,
            None => draw,
        };
        let port = PORT_BASE + offset;
        self.generation = self.generation.saturating_add(1);
        self.last_port = Some(port);
        self.mapping = Some(Mapping {
            generation: self.generation,
            port,
        });
        true
    }

    /// A datagram from the server to mapping `to` arrives at `now`: true if the NAT
    /// forwards it (the mapping is the current one and has not expired).
    pub fn accepts_inbound(&mut self, now: Duration, to: Mapping) -> bool {
        self.expire(now);
        let accepted = self.mapping == Some(to);
        if accepted && self.config.inbound_refresh {
            self.last_activity = now;
        }
        accepted
    }
}

/// When a queue-mode client is awake; datagrams to a sleeping client are lost, as on a
/// radio that is off.
#[derive(Debug, Clone)]
pub struct SleepSchedule {
    config: SleepConfig,
    seed: u64,
}

impl SleepSchedule {
    /// The schedule of one client; `seed` places the jittered wake-ups.
    pub fn new(config: &SleepConfig, seed: u64) -> Self {
        Self {
            config: config.clone(),
            seed,
        }
    }

    /// The awake window of cycle `k`: `[start, end)`; cycle 0 starts at time zero.
    fn window(&self, k: u64) -> (Duration, Duration) {
        let room = self.config.period.saturating_sub(self.config.awake);
        let jitter = self.config.jitter.min(room).as_nanos();
        let shift = if k == 0 {
            0
        } else {
            (u128::from(seed::mix(&[self.seed, k])) * (jitter + 1)) >> 64
        };
        let start = nanos(u128::from(k) * self.config.period.as_nanos() + shift);
        (start, start.saturating_add(self.config.awake))
    }

    fn cycle(&self, now: Duration) -> Option<u64> {
        let n = now.as_nanos().checked_div(self.config.period.as_nanos())?;
        Some(u64::try_from(n).unwrap_or(u64::MAX))
    }

    /// True if the client is awake at `now` (always, for a zero period).
    pub fn is_awake(&self, now: Duration) -> bool {
        self.cycle(now).is_none_or(|k| {
            let (start, end) = self.window(k);
            (start..end).contains(&now)
        })
    }

    /// The next time at or after `now` the client is awake.
    pub fn next_wake(&self, now: Duration) -> Duration {
        let Some(k) = self.cycle(now) else {
            return now;
        };
        let (start, end) = self.window(k);
        if now < start {
            start
        } else if now < end {
            now
        } else {
            self.window(k.saturating_add(1)).0
        }
    }
}

fn nanos(n: u128) -> Duration {
    const NS: u128 = 1_000_000_000;
    Duration::new(u64::try_from(n / NS).unwrap_or(u64::MAX), (n % NS) as u32)
}

/// The impairment of one direction of one client's link.
#[derive(Debug, Clone)]
pub struct Impairment {
    config: ImpairmentConfig,
    rng: ChaCha8Rng,
    /// Delivery time of the last datagram that kept its place, so jitter never reorders.
    last_in_order: Duration,
}

impl Impairment {
    /// The impairment with its own seeded random draws.
    pub fn new(config: &ImpairmentConfig, seed: u64) -> Self {
        Self {
            config: config.clone(),
            rng: seed::rng(seed),
            last_in_order: Duration::ZERO,
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random::<f64>() < p
    }

    /// A datagram sent at `now`: the copies that arrive, with their arrival times (none if
    /// lost, two if duplicated).
    pub fn apply<T: Clone>(&mut self, now: Duration, datagram: T) -> Vec<(Duration, T)> {
        if self.chance(self.config.loss) {
            return Vec::new();
        }
        let copies = if self.chance(self.config.duplicate) {
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| {
                let at = if !self.config.delay.is_zero() && self.chance(self.config.reorder) {
                    now
                } else {
                    let jitter = u64::try_from(self.config.jitter.as_nanos()).unwrap_or(u64::MAX);
                    let spread =
                        Duration::from_nanos(self.rng.random_range(0..=jitter.saturating_mul(2)));
                    let at = now
                        .saturating_add(self.config.delay)
                        .saturating_add(spread)
                        .saturating_sub(self.config.jitter)
                        .max(now)
                        .max(self.last_in_order);
                    self.last_in_order = at;
                    at
                };
                (at, datagram.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nat_remaps_after_silence_and_drops_old_mapping() {
        let cfg = NatConfig {
            idle_timeout: s(30),
            inbound_refresh: false,
        };
        let mut nat = Nat::new(&cfg, 9);
        assert_eq!(nat.mapping(), None);
        assert!(nat.on_outbound(s(0)));
        let first = nat.mapping().unwrap();
        assert_eq!(first.generation, 1);
        assert!(!nat.on_outbound(s(20)));
        assert!(nat.accepts_inbound(s(45), first));
        // Inbound does not refresh: 30 s after the last outbound the mapping is gone.
        assert!(!nat.accepts_inbound(s(51), first));
        assert_eq!(nat.mapping(), None);
        assert!(nat.on_outbound(s(60)));
        let second = nat.mapping().unwrap();
        assert_eq!(second.generation, 2);
        assert_ne!(second.port, first.port);
        assert!(!nat.accepts_inbound(s(61), first));
        assert!(nat.accepts_inbound(s(61), second));
        // Same seed, same ports.
        let mut again = Nat::new(&cfg, 9);
        again.on_outbound(s(0));
        assert_eq!(again.mapping(), Some(first));
    }

    #[test]
    fn nat_inbound_refresh_keeps_mapping() {
        let cfg = NatConfig {
            idle_timeout: s(30),
            inbound_refresh: true,
        };
        let mut nat = Nat::new(&cfg, 1);
        nat.on_outbound(s(0));
        let m = nat.mapping().unwrap();
        for t in (25..200).step_by(25) {
            assert!(nat.accepts_inbound(s(t), m), "{t}");
        }
        assert!(!nat.on_outbound(s(200)));
    }

    #[test]
    fn nat_ports_stay_in_range_and_change() {
        let cfg = NatConfig {
            idle_timeout: ms(1),
            inbound_refresh: false,
        };
        let mut nat = Nat::new(&cfg, 3);
        let mut last = None;
        for t in 0..2000 {
            assert!(nat.on_outbound(ms(t * 2)));
            let m = nat.mapping().unwrap();
            assert!(m.port >= PORT_BASE);
            assert_ne!(Some(m.port), last);
            last = Some(m.port);
        }
    }

    #[test]
    fn sleep_windows_with_jitter() {
        let cfg = SleepConfig {
            awake: s(10),
            period: s(60),
            jitter: s(20),
        };
        let sched = SleepSchedule::new(&cfg, 5);
        assert!(sched.is_awake(s(0)));
        assert!(sched.is_awake(s(9)));
        assert!(!sched.is_awake(s(10)));
        assert_eq!(sched.next_wake(s(3)), s(3));
        for k in 1..500u64 {
            let wake = sched.next_wake(s(60 * k - 25));
            assert!(wake >= s(60 * k) && wake <= s(60 * k + 20), "{k}: {wake:?}");
            assert!(sched.is_awake(wake));
            assert!(sched.is_awake(wake + cfg.awake - ms(1)));
            assert!(!sched.is_awake(wake + cfg.awake));
            if wake > s(60 * k) {
                assert!(!sched.is_awake(wake - ms(1)));
            }
        }
        // The jitter is seeded.
        let other = SleepSchedule::new(&cfg, 6);
        let wakes =
            |sc: &SleepSchedule| (1..50).map(|k| sc.next_wake(s(60 * k))).collect::<Vec<_>>();
        assert_eq!(wakes(&sched), wakes(&SleepSchedule::new(&cfg, 5)));
        assert_ne!(wakes(&sched), wakes(&other));
    }

    #[test]
    fn impairment_none_delivers_everything_at_once() {
        let mut imp = Impairment::new(&ImpairmentConfig::default(), 0);
        for t in 0..100 {
            assert_eq!(imp.apply(ms(t), t), vec![(ms(t), t)]);
        }
    }

    #[test]
    fn impairment_loss_duplicate_rates() {
        let cfg = ImpairmentConfig {
            loss: 0.2,
            duplicate: 0.1,
            ..Default::default()
        };
        let mut imp = Impairment::new(&cfg, 11);
        let delivered: usize = (0..10_000).map(|t| imp.apply(ms(t), ()).len()).sum();
        // Expected 10000 × 0.8 × 1.1 = 8800.
        assert!((8500..9100).contains(&delivered), "{delivered}");
    }

    #[test]
    fn impairment_delay_jitter_keeps_order() {
        let cfg = ImpairmentConfig {
            delay: ms(100),
            jitter: ms(50),
            ..Default::default()
        };
        let mut imp = Impairment::new(&cfg, 2);
        let mut last = Duration::ZERO;
        for t in 0..1000 {
            let out = imp.apply(ms(t), t);
            let (at, _) = out[0];
            assert!(
                at >= ms(t + 50) && at <= ms(t + 150) || at == last,
                "{t}: {at:?}"
            );
            assert!(at >= last);
            last = at;
        }
    }

    #[test]
    fn impairment_reorder_overtakes() {
        let cfg = ImpairmentConfig {
            delay: ms(100),
            reorder: 0.25,
            ..Default::default()
        };
        let mut imp = Impairment::new(&cfg, 4);
        let mut arrivals: Vec<(Duration, u64)> =
            (0..1000).flat_map(|t| imp.apply(ms(t), t)).collect();
        let immediate = arrivals.iter().filter(|(at, t)| *at == ms(*t)).count();
        assert!((200..300).contains(&immediate), "{immediate}");
        arrivals.sort();
        assert!(arrivals.windows(2).any(|w| w[0].1 > w[1].1));
        // Deterministic.
        let mut again = Impairment::new(&cfg, 4);
        let mut b: Vec<_> = (0..1000).flat_map(|t| again.apply(ms(t), t)).collect();
        b.sort();
        assert_eq!(arrivals, b);
    }

    #[test]
    fn model_checks_name_the_key() {
        for (yaml, want) in [
            (
                "nat: {idle_timeout: 0s}\n",
                "f.yaml:1:1: nat.idle_timeout: must be positive",
            ),
            (
                "sleep:\n  awake: 10s\n  period: 5s\n",
                "f.yaml:3:3: sleep.period: must be longer than the awake window",
            ),
            (
                "sleep:\n  awake: 10s\n  period: 60s\n  jitter: 51s\n",
                "f.yaml:4:3: sleep.jitter: must not exceed period - awake (wake-ups would overlap)",
            ),
            (
                "uplink:\n  loss: 1.5\n",
                "f.yaml:2:3: uplink.loss: 1.5 is not a probability in [0, 1]",
            ),
            (
                "downlink:\n  reorder: 0.1\n",
                "f.yaml:2:3: downlink.reorder: reordering needs a delay to overtake",
            ),
        ] {
            let err = NetworkModel::from_yaml("f.yaml", yaml)
                .unwrap_err()
                .to_string();
            assert_eq!(err, want);
        }
        let err = NetworkModel::from_yaml("f.yaml", "uplink:\n  los: 0.1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.yaml:2:3: uplink: unknown field `los`"),
            "{err}"
        );
    }
}
