//! Value generators: how a simulated resource's value changes over time, deterministic
//! from a seed.
//!
//! A generator is a function of the time since the client started: [`Generator::next`]
//! returns the value at `t`. `period` is the one time scale of every generator: a counter,
//! a random walk and a pick take one step per period; a sine completes one wave per period.
//! The driver samples whenever it needs the value (a Read, a notification, a Send).
//!
//! In YAML a generator is a mapping with a `generator` key:
//!
//! ```yaml
//! 5700: { generator: random_walk, start: 21.5, step: 0.2, min: 15, max: 30, period: 10s }
//! 5601: { generator: sine, min: 0, max: 100, period: 1h }
//! 13:   { generator: counter, start: 1700000000, step: 10, period: 10s }
//! 5750: { generator: pick, values: [idle, busy, error], period: 1m }
//! 0:    { generator: constant, value: Acme }
//! ```

use std::time::Duration;

use lwm2m_proto::content::format_float;
use lwm2m_proto::value::ValueError;
use lwm2m_proto::{DataType, Value};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::seed;

/// A generator as a profile declares it (the `generator:` mapping of a resource).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(tag = "generator", rename_all = "snake_case", deny_unknown_fields)]
pub enum GeneratorSpec {
    /// Always the same value (typed like an initial value).
    Constant {
        /// The value.
        value: serde_yaml::Value,
    },
    /// `start + step × n` after `n` periods.
    Counter {
        /// First value (default 0).
        #[serde(default)]
        start: f64,
        /// Increment per period (default 1; may be negative).
        #[serde(default = "one")]
        step: f64,
        /// Time between increments.
        #[serde(with = "crate::duration")]
        period: Duration,
    },
    /// Starts at `start`; each period adds a uniform draw from `[-step, step]`, clamped to
    /// `[min, max]`.
    RandomWalk {
        /// First value.
        start: f64,
        /// Largest change per period.
        step: f64,
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
        /// Time between steps.
        #[serde(with = "crate::duration")]
        period: Duration,
    },
    /// `mid + amplitude × sin(2π t / period)`, from `min` to `max`, starting at the middle.
    Sine {
        /// Lowest value.
        min: f64,
        /// Highest value.
        max: f64,
        /// Length of one wave.
        #[serde(with = "crate::duration")]
        period: Duration,
    },
    /// A uniform pick from `values`, drawn again every period.
    Pick {
        /// The candidates (typed like initial values).
        values: Vec<serde_yaml::Value>,
        /// Time between picks.
        #[serde(with = "crate::duration")]
        period: Duration,
    },
}

fn one() -> f64 {
    1.0
}

impl GeneratorSpec {
    /// The `generator:` name (`counter`, `random_walk`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Constant { .. } => "constant",
            Self::Counter { .. } => "counter",
            Self::RandomWalk { .. } => "random_walk",
            Self::Sine { .. } => "sine",
            Self::Pick { .. } => "pick",
        }
    }

    /// Checks the parameters, independently of the resource type: a positive period,
    /// finite numbers, `min <= start <= max`, a non-negative step, at least one value.
    pub fn check(&self) -> Result<(), GeneratorError> {
        let finite = |xs: &[f64]| {
            if xs.iter().all(|x| x.is_finite()) {
                Ok(())
            } else {
                Err(GeneratorError::NotFinite)
            }
        };
        let bounds = |min: f64, max: f64| {
            if min <= max {
                Ok(())
            } else {
                Err(GeneratorError::MinAboveMax { min, max })
            }
        };
        match self {
            Self::Constant { .. } => return Ok(()),
            Self::Counter { start, step, .. } => finite(&[*start, *step])?,
            Self::RandomWalk {
                start,
                step,
                min,
                max,
                ..
            } => {
                finite(&[*start, *step, *min, *max])?;
                bounds(*min, *max)?;
                if !(min..=max).contains(&start) {
                    return Err(GeneratorError::StartOutside {
                        start: *start,
                        min: *min,
                        max: *max,
                    });
                }
                if *step < 0.0 {
                    return Err(GeneratorError::NegativeStep { step: *step });
                }
            }
            Self::Sine { min, max, .. } => {
                finite(&[*min, *max])?;
                bounds(*min, *max)?;
            }
            Self::Pick { values, .. } => {
                if values.is_empty() {
                    return Err(GeneratorError::EmptyPick);
                }
            }
        }
        if self.period().is_zero() {
            return Err(GeneratorError::ZeroPeriod);
        }
        Ok(())
    }

    /// The time scale (zero for a constant).
    pub fn period(&self) -> Duration {
        match self {
            Self::Constant { .. } => Duration::ZERO,
            Self::Counter { period, .. }
            | Self::RandomWalk { period, .. }
            | Self::Sine { period, .. }
            | Self::Pick { period, .. } => *period,
        }
    }
}

/// Why a generator's parameters, or a YAML value for its resource, do not make a generator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GeneratorError {
    /// A numeric parameter is NaN or infinite.
    #[error("parameters must be finite numbers")]
    NotFinite,
    /// `min` above `max`.
    #[error("min {min} is above max {max}")]
    MinAboveMax {
        /// `min`.
        min: f64,
        /// `max`.
        max: f64,
    },
    /// A random walk's `start` outside `[min, max]`.
    #[error("start {start} is outside [{min}, {max}]")]
    StartOutside {
        /// `start`.
        start: f64,
        /// `min`.
        min: f64,
        /// `max`.
        max: f64,
    },
    /// A random walk's negative `step`.
    #[error("step {step} is negative")]
    NegativeStep {
        /// `step`.
        step: f64,
    },
    /// A pick without values.
    #[error("pick needs at least one value")]
    EmptyPick,
    /// A zero `period`.
    #[error("period must be positive")]
    ZeroPeriod,
    /// A numeric generator for a resource whose type holds no numbers.
    #[error("a {generator} generator makes numbers; a {ty} resource cannot hold them")]
    NotNumeric {
        /// The generator's name (`counter`, `random_walk`, `sine`).
        generator: &'static str,
        /// The resource's type.
        ty: DataType,
    },
    /// A constant's or a pick's value that is not of the resource's type.
    #[error(transparent)]
    Value(#[from] YamlValueError),
}

/// Why a YAML value is not a value of a resource's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum YamlValueError {
    /// A YAML value with no JSON form (a tagged value, a mapping with non-string keys).
    #[error("{yaml} is not a plain value: {reason}")]
    NotPlain {
        /// The YAML value (debug form).
        yaml: String,
        /// Why it has no JSON form.
        reason: String,
    },
    /// A value that does not fit the type.
    #[error(transparent)]
    Value(#[from] ValueError),
}

/// Types a YAML initial value for a resource of type `ty`, as [`Value::from_json`] reads
/// JSON: numbers, strings, booleans; opaque as hex; object links as `"O:I"`.
pub fn typed_value(ty: DataType, yaml: &serde_yaml::Value) -> Result<Value, YamlValueError> {
    let json = serde_json::to_value(yaml).map_err(|e| YamlValueError::NotPlain {
        yaml: format!("{yaml:?}"),
        reason: e.to_string(),
    })?;
    Ok(Value::from_json(ty, &json)?)
}

#[derive(Debug, Clone)]
enum Kind {
    Constant(Value),
    Counter {
        start: f64,
        step: f64,
    },
    RandomWalk {
        start: f64,
        step: f64,
        min: f64,
        max: f64,
    },
    Sine {
        min: f64,
        max: f64,
    },
    Pick(Vec<Value>),
}

/// A running generator for one resource of one client.
#[derive(Debug, Clone)]
pub struct Generator {
    kind: Kind,
    data_type: DataType,
    period: Duration,
    rng: ChaCha8Rng,
    /// Periods taken so far.
    steps: u64,
    /// The random walk's position.
    walk: f64,
    /// The pick's current index.
    pick: usize,
}

impl Generator {
    /// A generator for a resource of type `ty`, seeded with `seed` (see [`seed::seed_for`]).
    /// Numeric generators serve Integer, Unsigned Integer, Time (rounded), Float and String
    /// (the number as text, as pre-1.0 Location strings were); constant and pick values are
    /// typed like initial values.
    pub fn new(spec: &GeneratorSpec, ty: DataType, seed: u64) -> Result<Self, GeneratorError> {
        spec.check()?;
        let numeric = || {
            if matches!(
                ty,
                DataType::Integer
                    | DataType::UnsignedInteger
                    | DataType::Time
                    | DataType::Float
                    | DataType::String
            ) {
                Ok(())
            } else {
                Err(GeneratorError::NotNumeric {
                    generator: spec.name(),
                    ty,
                })
            }
        };
        let kind = match spec {
            GeneratorSpec::Constant { value } => Kind::Constant(typed_value(ty, value)?),
            GeneratorSpec::Counter { start, step, .. } => {
                numeric()?;
                Kind::Counter {
                    start: *start,
                    step: *step,
                }
            }
            GeneratorSpec::RandomWalk {
                start,
                step,
                min,
                max,
                ..
            } => {
                numeric()?;
                Kind::RandomWalk {
                    start: *start,
                    step: *step,
                    min: *min,
                    max: *max,
                }
            }
            GeneratorSpec::Sine { min, max, .. } => {
                numeric()?;
                Kind::Sine {
                    min: *min,
                    max: *max,
                }
            }
            GeneratorSpec::Pick { values, .. } => Kind::Pick(
                values
                    .iter()
                    .map(|v| typed_value(ty, v))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let mut g = Self {
            kind,
            data_type: ty,
            period: spec.period(),
            rng: seed::rng(seed),
            steps: 0,
            walk: 0.0,
            pick: 0,
        };
        g.reset(seed);
        Ok(g)
    }

    /// The same generator started afresh with another seed.
    pub fn reseeded(&self, seed: u64) -> Self {
        let mut g = self.clone();
        g.reset(seed);
        g
    }

    /// The type of the values produced.
    pub fn data_type(&self) -> DataType {
        self.data_type
    }

    fn reset(&mut self, seed: u64) {
        self.rng = seed::rng(seed);
        self.steps = 0;
        if let Kind::RandomWalk { start, .. } = self.kind {
            self.walk = start;
        }
        if let Kind::Pick(values) = &self.kind {
            self.pick = self.rng.random_range(0..values.len().max(1));
        }
    }

    /// The value at time `t` since the client started. Random generators move forward only:
    /// a `t` earlier than the last one returns the current value.
    pub fn next(&mut self, t: Duration) -> Value {
        let steps = if self.period.is_zero() {
            0
        } else {
            u64::try_from(t.as_nanos() / self.period.as_nanos()).unwrap_or(u64::MAX)
        };
        // Counter, sine and constant have closed forms; the random ones replay each step.
        if matches!(self.kind, Kind::RandomWalk { .. } | Kind::Pick(_)) {
            while self.steps < steps {
                self.steps += 1;
                self.step();
            }
        }
        match &self.kind {
            Kind::Constant(v) => v.clone(),
            Kind::Counter { start, step } => self.number(start + step * steps as f64),
            Kind::RandomWalk { .. } => self.number(self.walk),
            Kind::Sine { min, max } => {
                let phase = t.as_secs_f64() / self.period.as_secs_f64();
                let mid = (min + max) / 2.0;
                let amplitude = (max - min) / 2.0;
                let x = mid + amplitude * (std::f64::consts::TAU * phase).sin();
                self.number(x.clamp(*min, *max))
            }
            Kind::Pick(values) => values.get(self.pick).cloned().unwrap_or(Value::None),
        }
    }

    /// One random step of a random walk or a pick.
    fn step(&mut self) {
        match &self.kind {
            Kind::RandomWalk { step, min, max, .. } => {
                let delta = if *step > 0.0 {
                    self.rng.random_range(-step..=*step)
                } else {
                    0.0
                };
                self.walk = (self.walk + delta).clamp(*min, *max);
            }
            Kind::Pick(values) => self.pick = self.rng.random_range(0..values.len().max(1)),
            Kind::Constant(_) | Kind::Counter { .. } | Kind::Sine { .. } => {}
        }
    }

    /// A number as a value of the generator's type.
    fn number(&self, x: f64) -> Value {
        match self.data_type {
            DataType::Integer => Value::Integer(x.round() as i64),
            DataType::Time => Value::Time(x.round() as i64),
            DataType::UnsignedInteger => Value::UnsignedInteger(x.round().max(0.0) as u64),
            DataType::String => Value::String(format_float(x)),
            _ => Value::Float(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(yaml: &str) -> GeneratorSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn counter_steps_per_period() {
        let s = spec("{generator: counter, start: 100, step: 5, period: 10s}");
        let mut g = Generator::new(&s, DataType::Integer, 1).unwrap();
        assert_eq!(g.next(secs(0)), Value::Integer(100));
        assert_eq!(g.next(secs(9)), Value::Integer(100));
        assert_eq!(g.next(secs(10)), Value::Integer(105));
        assert_eq!(g.next(secs(35)), Value::Integer(115));
        let mut t = Generator::new(&s, DataType::Time, 1).unwrap();
        assert_eq!(t.next(secs(20)), Value::Time(110));
        let defaults = spec("{generator: counter, period: 1s}");
        let mut d = Generator::new(&defaults, DataType::UnsignedInteger, 0).unwrap();
        assert_eq!(d.next(secs(3)), Value::UnsignedInteger(3));
    }

    #[test]
    fn sine_spans_min_to_max() {
        let s = spec("{generator: sine, min: 10, max: 30, period: 40s}");
        let mut g = Generator::new(&s, DataType::Float, 0).unwrap();
        assert_eq!(g.next(secs(0)), Value::Float(20.0));
        assert_eq!(g.next(secs(10)), Value::Float(30.0));
        assert_eq!(g.next(secs(30)), Value::Float(10.0));
    }

    #[test]
    fn constant_and_pick_are_typed() {
        let c = spec("{generator: constant, value: Acme}");
        let mut g = Generator::new(&c, DataType::String, 0).unwrap();
        assert_eq!(g.next(secs(99)), Value::String("Acme".into()));
        assert!(Generator::new(&c, DataType::Integer, 0).is_err());

        let p = spec("{generator: pick, values: [1, 2, 3], period: 1s}");
        let mut g = Generator::new(&p, DataType::Integer, 7).unwrap();
        for t in 0..50 {
            let Value::Integer(v) = g.next(secs(t)) else {
                panic!("not an integer")
            };
            assert!((1..=3).contains(&v));
        }
        assert!(Generator::new(&p, DataType::Boolean, 0).is_err());
    }

    #[test]
    fn numbers_as_strings_for_pre_1_0_location() {
        let s = spec(
            "{generator: random_walk, start: 59.33, step: 0.001, min: 59, max: 60, period: 1s}",
        );
        let mut g = Generator::new(&s, DataType::String, 3).unwrap();
        assert_eq!(g.next(secs(0)), Value::String("59.33".into()));
        let Value::String(later) = g.next(secs(5)) else {
            panic!("not a string")
        };
        assert!(later.parse::<f64>().is_ok(), "{later}");
    }

    #[test]
    fn numeric_generators_refuse_other_types() {
        let s = spec("{generator: counter, period: 1s}");
        for ty in [
            DataType::Boolean,
            DataType::Opaque,
            DataType::Objlnk,
            DataType::None,
        ] {
            let err = Generator::new(&s, ty, 0).unwrap_err();
            assert_eq!(
                err,
                GeneratorError::NotNumeric {
                    generator: "counter",
                    ty
                }
            );
            assert!(
                err.to_string().contains("counter generator makes numbers"),
                "{err}"
            );
        }
    }

    #[test]
    fn check_refuses_bad_parameters() {
        for (yaml, want) in [
            (
                "{generator: counter, period: 0s}",
                "period must be positive",
            ),
            (
                "{generator: sine, min: 5, max: 1, period: 1s}",
                "min 5 is above max 1",
            ),
            (
                "{generator: random_walk, start: 9, step: 1, min: 0, max: 5, period: 1s}",
                "outside",
            ),
            (
                "{generator: random_walk, start: 1, step: -1, min: 0, max: 5, period: 1s}",
                "negative",
            ),
            ("{generator: pick, values: [], period: 1s}", "at least one"),
            ("{generator: sine, min: .nan, max: 1, period: 1s}", "finite"),
        ] {
            let err = spec(yaml).check().unwrap_err().to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        }
        let unknown =
            serde_yaml::from_str::<GeneratorSpec>("{generator: counter, stpe: 1, period: 1s}");
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `stpe`")
        );
    }

    #[test]
    fn same_seed_same_values_other_seed_other_values() {
        let s = spec("{generator: random_walk, start: 50, step: 5, min: 0, max: 100, period: 1s}");
        let run = |seed| {
            let mut g = Generator::new(&s, DataType::Float, seed).unwrap();
            (0..100).map(|t| g.next(secs(t))).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        // Sampling sparsely reaches the same state as sampling every period.
        let mut sparse = Generator::new(&s, DataType::Float, 42).unwrap();
        assert_eq!(sparse.next(secs(99)), run(42)[99]);
        // Reseeding starts over.
        let g = Generator::new(&s, DataType::Float, 1).unwrap();
        let mut r = g.reseeded(42);
        assert_eq!(r.next(secs(99)), run(42)[99]);
    }

    proptest! {
        #[test]
        fn random_walk_stays_in_bounds(seed: u64, min in -1e6..1e6f64, width in 0.0..1e6f64, step in 0.0..1e5f64, t in 0u64..10_000) {
            let max = min + width;
            let s = GeneratorSpec::RandomWalk { start: min, step, min, max, period: Duration::from_secs(1) };
            let mut g = Generator::new(&s, DataType::Float, seed).unwrap();
            let Value::Float(x) = g.next(secs(t)) else { panic!("not a float") };
            prop_assert!((min..=max).contains(&x));
        }

        #[test]
        fn sine_stays_in_bounds(min in -1e6..1e6f64, width in 0.0..1e6f64, ms in 0u64..10_000_000) {
            let s = GeneratorSpec::Sine { min, max: min + width, period: Duration::from_secs(7) };
            let mut g = Generator::new(&s, DataType::Float, 0).unwrap();
            let Value::Float(x) = g.next(Duration::from_millis(ms)) else { panic!("not a float") };
            prop_assert!((min..=min + width).contains(&x));
        }
    }
}
