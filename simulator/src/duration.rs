//! Durations as people write them in YAML: `250ms`, `10s`, `5m`, `1h`, `1m30s`.
//!
//! Use on a `std::time::Duration` field with `#[serde(with = "crate::duration")]`. A bare
//! number is refused (is `30` seconds or milliseconds?), so every duration names its unit.
//! Errors come from inside the deserializer, so the YAML error names the line and the key.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {problem} (write e.g. \"250ms\", \"10s\", \"5m\", \"1h\")")]
pub struct DurationError {
    /// The text as written.
    pub text: String,
    /// What is wrong with it.
    pub problem: DurationProblem,
}

/// What is wrong with a duration's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationProblem {
    /// Nothing but blanks.
    #[error("empty")]
    Empty,
    /// A unit (or other text) where a number should start.
    #[error("expected a number")]
    NoNumber,
    /// A number that does not fit 64 bits.
    #[error("number too large")]
    NumberTooLarge,
    /// A number without its unit.
    #[error("a unit is missing")]
    NoUnit,
    /// A unit other than `ms`, `s`, `m` and `h`.
    #[error("unknown unit")]
    UnknownUnit,
    /// A total beyond what a duration holds.
    #[error("too large")]
    TooLarge,
}

/// Parses `<integer><unit>` groups, units `ms`, `s`, `m`, `h` (e.g. `250ms`, `1m30s`, `0s`).
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    let bad = |problem| DurationError {
        text: text.to_owned(),
        problem,
    };
    if s.is_empty() {
        return Err(bad(DurationProblem::Empty));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, tail) = rest.split_at(digits);
        if number.is_empty() {
            return Err(bad(DurationProblem::NoNumber));
        }
        let letters = tail.len()
            - tail
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, tail) = tail.split_at(letters);
        let n: u64 = number
            .parse()
            .map_err(|_| bad(DurationProblem::NumberTooLarge))?;
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "" => return Err(bad(DurationProblem::NoUnit)),
            _ => return Err(bad(DurationProblem::UnknownUnit)),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| bad(DurationProblem::TooLarge))?;
        rest = tail;
    }
    Ok(total)
}

/// Formats a duration the way [`parse`] reads it, to the millisecond (`1m30s`, `1s250ms`).
pub fn format(d: Duration) -> String {
    let mut out = String::new();
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let ms = d.subsec_millis();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (u64::from(ms), "ms")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// Serde: writes [`format()`].
pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*d))
}

/// Serde: reads [`parse`]; numbers without a unit are refused.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration with a unit, e.g. \"250ms\", \"10s\", \"5m\", \"1h\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "duration {v} has no unit (write e.g. \"{v}s\" or \"{v}ms\")"
        )))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "invalid duration {v}: durations have a unit and are not negative"
        )))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "invalid duration {v}: write whole units with a suffix, e.g. \"1500ms\""
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_groups() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_bad_text() {
        for bad in [
            "",
            "10",
            "s",
            "10 s",
            "-1s",
            "1.5s",
            "3d",
            "10sec",
            "99999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("10").unwrap_err().problem, DurationProblem::NoUnit);
        assert_eq!(
            parse("3d").unwrap_err().problem,
            DurationProblem::UnknownUnit
        );
        assert_eq!(
            parse("10").unwrap_err().to_string(),
            "invalid duration \"10\": a unit is missing (write e.g. \"250ms\", \"10s\", \"5m\", \"1h\")"
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,12}") {
            let _ = parse(&s);
        }
    }

    #[test]
    fn format_round_trips() {
        for ms in [0, 1, 250, 1000, 90_000, 3_600_000, 3_723_004] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
    }

    #[test]
    fn yaml_numbers_need_a_unit() {
        #[derive(Debug, serde::Deserialize)]
        struct T {
            #[serde(with = "crate::duration")]
            d: Duration,
        }
        let t: T = serde_yaml::from_str("d: 50ms").unwrap();
        assert_eq!(t.d, Duration::from_millis(50));
        let err = serde_yaml::from_str::<T>("d: 30").unwrap_err().to_string();
        assert!(err.contains("d: duration 30 has no unit"), "{err}");
    }
}
