//! The SenML data model (RFC 8428) as LwM2M 1.1 uses it (Core TS 1.1 §7.4.4, §7.4.5),
//! shared by the JSON and CBOR representations and by the OMA JSON format of LwM2M 1.0.
//!
//! Decoding goes in two steps: a codec turns its bytes into [`RawRecord`]s (labels as the
//! pack carries them), then [`resolve`] applies base name and base time, checks that each
//! name is an LwM2M path and types the values with the schema. Encoding is the reverse:
//! [`compact`] turns [`Record`]s into [`RawRecord`]s, which a codec writes out.
//!
//! # Encoding rules
//!
//! Base name (RFC 8428 §4.5.1: the name of a record is `bn` + `n`, as strings):
//! * let `P` be the longest common path prefix of all records;
//! * if every record sits exactly at `P` (one record, or a time series of one
//!   resource), the first record carries `bn` = `P` (`"/3/0/9"`) and no record has `n`;
//! * otherwise the base is `P`, or the parent of `P` when some record sits exactly at `P`
//!   (so that no name is empty); if that base is the root, no `bn` is written and every
//!   `n` is the full path (`"/3/0/1"`), else the first record carries `bn` = base + `/`
//!   (`"/3/0/"`) and each `n` is the rest of the path without a leading slash (`"0"`,
//!   `"6/0"`), as in the examples of Core TS 1.1 §7.4.4.
//!
//! Time (RFC 8428 §4.5.3): `bt`/`t` appear only when records carry a time. When every
//! record has one and `bt + (time - bt)` gives back each time exactly, the first record
//! carries `bt` = its time and every record `t` = time − `bt` (left out when zero);
//! otherwise no `bt` is written and each timed record carries its absolute time in `t`.
//!
//! Values (Core TS 1.1 §7.4.4 table of data types): String and Corelnk → `vs`; Integer,
//! Unsigned Integer, Time, Float → `v`; Boolean → `vb`; Opaque → `vd`; Objlnk → `vlo`
//! (`"O:I"`). A record without a value (Read-Composite and Observe-Composite requests)
//! carries only its name.
//!
//! # Decoding rules
//!
//! * `bn` and `bt` apply to their record and all following ones until replaced.
//! * A record's time is `bt + t` when either is in effect, else `None` ("now").
//! * Labels ending in `_` are must-understand (RFC 8428 §4.4) and rejected; `bv`, `bs`
//!   and `s` would change the values (LwM2M does not use them) and are rejected too;
//!   other unknown labels (`bu`, `u`, `bver`, `ut`, extensions) are ignored.
//! * A record has at most one value label; a record with a value must name a resource
//!   or a resource instance.

use std::str::FromStr;

use crate::codec::{
    CodecError, Finding, Number, checked_value, resource_def, typed_number, typed_string,
};
use crate::ids::Lwm2mPath;
use crate::model::Schema;
use crate::node::Record;
use crate::value::{DataType, ObjectLink, Value};

/// One SenML record as the pack carries it, before base values are applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawRecord {
    /// Base name `bn` (RFC 8428 §4.5.1).
    pub bn: Option<String>,
    /// Base time `bt` in seconds (RFC 8428 §4.5.3).
    pub bt: Option<f64>,
    /// Name `n`.
    pub n: Option<String>,
    /// Time `t` in seconds, relative to the base time.
    pub t: Option<f64>,
    /// The value, if any (`None` for a path-only record).
    pub value: Option<RawValue>,
    /// The `vd` text carried base64 padding, which RFC 8428 §5 leaves out (SenML JSON).
    pub padded: bool,
}

/// A record's value as its label gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    /// `v`: a number.
    Number(Number),
    /// `vs`: a string.
    String(String),
    /// `vb`: a boolean.
    Boolean(bool),
    /// `vd`: data (base64url in JSON, a byte string in CBOR; RFC 8428 §5, §6).
    Data(Vec<u8>),
    /// `vlo`: an object link `"O:I"` (Core TS 1.1 §7.4.4, LwM2M extension).
    ObjectLink(String),
    /// OMA JSON `sv` (Core TS 1.0 §6.4.4): a string, or base64 opaque data where the
    /// schema says the resource is Opaque.
    StringOrOpaque(String),
}

/// A SenML label LwM2M uses, and what to do with the others (RFC 8428 §4.4, §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// `bn`, CBOR −2.
    BaseName,
    /// `bt`, CBOR −3.
    BaseTime,
    /// `n`, CBOR 0.
    Name,
    /// `t`, CBOR 6.
    Time,
    /// `v`, CBOR 2.
    Value,
    /// `vs`, CBOR 3.
    StringValue,
    /// `vb`, CBOR 4.
    BooleanValue,
    /// `vd`, CBOR 8.
    DataValue,
    /// `vlo`, a text key in CBOR too.
    ObjectLinkValue,
}

impl Label {
    /// Every label, in the order records are written (`bn`, `bt`, `n`, values, `t`).
    pub const ALL: [Self; 9] = [
        Self::BaseName,
        Self::BaseTime,
        Self::Name,
        Self::Value,
        Self::StringValue,
        Self::BooleanValue,
        Self::DataValue,
        Self::ObjectLinkValue,
        Self::Time,
    ];

    /// The JSON label.
    pub fn name(self) -> &'static str {
        match self {
            Self::BaseName => "bn",
            Self::BaseTime => "bt",
            Self::Name => "n",
            Self::Time => "t",
            Self::Value => "v",
            Self::StringValue => "vs",
            Self::BooleanValue => "vb",
            Self::DataValue => "vd",
            Self::ObjectLinkValue => "vlo",
        }
    }

    /// The CBOR integer label (RFC 8428 §6); `None` for `vlo`, which has none.
    pub fn cbor_key(self) -> Option<i64> {
        Some(match self {
            Self::BaseName => -2,
            Self::BaseTime => -3,
            Self::Name => 0,
            Self::Time => 6,
            Self::Value => 2,
            Self::StringValue => 3,
            Self::BooleanValue => 4,
            Self::DataValue => 8,
            Self::ObjectLinkValue => return None,
        })
    }

    /// The label for a JSON label (or a CBOR text key): `Ok(None)` for a label to ignore,
    /// an error for one that cannot be ignored (must-understand, or changing the values).
    pub fn from_name(name: &str) -> Result<Option<Self>, RecordError> {
        if let Some(l) = Self::ALL.into_iter().find(|l| l.name() == name) {
            return Ok(Some(l));
        }
        match name {
            "bv" | "bs" | "s" => Err(RecordError::Unsupported { name: name.into() }),
            _ if name.ends_with('_') => Err(RecordError::MustUnderstand { name: name.into() }),
            _ => Ok(None),
        }
    }

    /// The label for a CBOR integer key (RFC 8428 §6): as [`Label::from_name`] for the
    /// name the key stands for; unregistered keys are ignored.
    pub fn from_cbor_key(key: i128) -> Result<Option<Self>, RecordError> {
        if let Some(l) = Self::ALL
            .into_iter()
            .find(|l| l.cbor_key().map(i128::from) == Some(key))
        {
            return Ok(Some(l));
        }
        let name = match key {
            -5 => "bv",
            -6 => "bs",
            5 => "s",
            _ => return Ok(None),
        };
        Self::from_name(name)
    }
}

impl RawRecord {
    /// Sets the field for `label` to the content a codec converted, rejecting a label
    /// given twice, a second value label and content of the wrong kind.
    pub fn set(&mut self, label: Label, field: Field) -> Result<(), RecordError> {
        match (label, field) {
            (Label::BaseName, Field::Text(s)) => put(&mut self.bn, s, label),
            (Label::Name, Field::Text(s)) => put(&mut self.n, s, label),
            (Label::BaseTime, Field::Number(n)) => put(&mut self.bt, time_of(n)?, label),
            (Label::Time, Field::Number(n)) => put(&mut self.t, time_of(n)?, label),
            (_, Field::Value(_)) if self.value.is_some() => Err(RecordError::SecondValue {
                label: label.name(),
            }),
            (_, Field::Value(v)) => put(&mut self.value, v, label),
            (l, _) => Err(RecordError::WrongType { label: l.name() }),
        }
    }
}

/// Why a SenML record (RFC 8428), or an OMA JSON entry read through the same fields, cannot
/// be taken as it is. Its text names the label; the codecs add the record's position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// `bv`, `bs` or `s`: labels that change the values, which LwM2M does not use.
    #[error("label {name:?} (base value, base sum or sum) is not supported by LwM2M")]
    Unsupported {
        /// The label as written.
        name: String,
    },
    /// A must-understand label (its name ends in `_`) this reader does not know
    /// (RFC 8428 §4.4).
    #[error("must-understand label {name:?} is not understood (RFC 8428 §4.4)")]
    MustUnderstand {
        /// The label as written.
        name: String,
    },
    /// A second value label in one record.
    #[error("label {label:?}: the record already has a value")]
    SecondValue {
        /// The second value label.
        label: &'static str,
    },
    /// A label with content of the wrong kind (a number for `n`, text for `t`, ...).
    #[error("label {label:?} has the wrong type")]
    WrongType {
        /// The label.
        label: &'static str,
    },
    /// A label given twice in one record.
    #[error("label {label:?} appears twice")]
    Twice {
        /// The label.
        label: &'static str,
    },
    /// `bt` or `t` that is not a finite number.
    #[error("time {time} is not a finite number")]
    Time {
        /// The number read.
        time: f64,
    },
}

fn put<T>(slot: &mut Option<T>, v: T, label: Label) -> Result<(), RecordError> {
    if slot.is_some() {
        return Err(RecordError::Twice {
            label: label.name(),
        });
    }
    *slot = Some(v);
    Ok(())
}

/// A number read for `bt` or `t`, which must be finite.
pub fn time_of(n: Number) -> Result<f64, RecordError> {
    let f = match n {
        Number::Int(i) => i as f64,
        Number::Uint(u) => u as f64,
        Number::Float(f) => f,
    };
    if f.is_finite() {
        Ok(f)
    } else {
        Err(RecordError::Time { time: f })
    }
}

/// A label's content converted by a codec, for [`RawRecord::set`].
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// Text for `bn` / `n`.
    Text(String),
    /// A number for `bt` / `t`.
    Number(Number),
    /// A value label's content.
    Value(RawValue),
}

/// Resolves raw records into [`Record`]s: base name + name into a path, base time + time
/// into the time, values typed by the schema (RFC 8428 §4.6, Core TS 1.1 §7.4.4).
///
/// `records` pairs each record with its byte offset in the payload, used in errors of
/// the format named `format`.
pub fn resolve(
    format: &'static str,
    records: Vec<(usize, RawRecord)>,
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Vec<Record>, CodecError> {
    let mut bn = String::new();
    let mut bt: Option<f64> = None;
    let mut out = Vec::with_capacity(records.len());
    for (index, (offset, raw)) in records.into_iter().enumerate() {
        let err = |reason: String| {
            CodecError::malformed(format, offset, format!("record {index}: {reason}"))
        };
        if let Some(b) = raw.bn {
            bn = b;
        }
        if raw.bt.is_some() {
            bt = raw.bt;
        }
        let n = raw.n.unwrap_or_default();
        let name = format!("{bn}{n}");
        let path = Lwm2mPath::from_str(&name).map_err(|e| {
            err(format!(
                "name {name:?} (bn {bn:?} + n {n:?}) is not an LwM2M path: {e}"
            ))
        })?;
        let time = match (bt, raw.t) {
            (None, None) => None,
            (b, t) => {
                let sum = b.unwrap_or(0.0) + t.unwrap_or(0.0);
                if !sum.is_finite() {
                    return Err(err(format!("time {sum} is out of range")));
                }
                Some(sum)
            }
        };
        if raw.padded {
            findings.push(Finding::PaddedBase64 { path });
        }
        let value = match raw.value {
            None => None,
            Some(_) if path.resource_id().is_none() => {
                return Err(err(format!(
                    "{path} holds a value but is not a resource or resource instance path"
                )));
            }
            Some(v) => {
                Some(typed(schema, &path, v, findings).map_err(|e| err(format!("{path}: {e}")))?)
            }
        };
        out.push(Record { path, value, time });
    }
    Ok(out)
}

fn typed(
    schema: &dyn Schema,
    path: &Lwm2mPath,
    raw: RawValue,
    findings: &mut Vec<Finding>,
) -> Result<Value, String> {
    use base64::Engine as _;
    Ok(match raw {
        RawValue::Number(n) => typed_number(schema, path, n, findings),
        RawValue::String(s) => typed_string(schema, path, s, findings),
        RawValue::Boolean(b) => checked_value(schema, path, Value::Boolean(b), findings),
        RawValue::Data(d) => checked_value(schema, path, Value::Opaque(d), findings),
        RawValue::ObjectLink(s) => {
            let link = ObjectLink::from_str(&s).map_err(|e| e.to_string())?;
            checked_value(schema, path, Value::Objlnk(link), findings)
        }
        RawValue::StringOrOpaque(s) => {
            let opaque =
                resource_def(schema, path).is_some_and(|d| d.data_type == DataType::Opaque);
            match base64::engine::general_purpose::STANDARD.decode(&s) {
                Ok(bytes) if opaque => Value::Opaque(bytes),
                _ => typed_string(schema, path, s, findings),
            }
        }
    })
}

/// The SenML value for a typed value (see the module's encoding rules); `None` has no
/// SenML form.
pub fn raw_value(path: &Lwm2mPath, v: &Value) -> Result<RawValue, CodecError> {
    Ok(match v {
        Value::String(s) | Value::Corelnk(s) => RawValue::String(s.clone()),
        Value::Integer(i) | Value::Time(i) => RawValue::Number(Number::Int(*i)),
        Value::UnsignedInteger(u) => RawValue::Number(match i64::try_from(*u) {
            Ok(i) => Number::Int(i),
            Err(_) => Number::Uint(*u),
        }),
        Value::Float(f) => RawValue::Number(Number::Float(*f)),
        Value::Boolean(b) => RawValue::Boolean(*b),
        Value::Opaque(d) => RawValue::Data(d.clone()),
        Value::Objlnk(l) => RawValue::ObjectLink(l.to_string()),
        Value::None => {
            return Err(CodecError::InvalidValue {
                path: *path,
                reason: "an executable resource has no value to encode".into(),
            });
        }
    })
}

/// The base time and each record's `t` (see the module's time rule). Errors on a time
/// that is not finite.
pub fn times(records: &[Record]) -> Result<(Option<f64>, Vec<Option<f64>>), CodecError> {
    for r in records {
        if let Some(t) = r.time
            && !t.is_finite()
        {
            return Err(CodecError::InvalidValue {
                path: r.path,
                reason: format!("time {t} is not a finite number"),
            });
        }
    }
    let all: Option<Vec<f64>> = records.iter().map(|r| r.time).collect();
    if let Some(all) = all
        && let Some(&bt) = all.first()
        && all.iter().all(|&t| bt + (t - bt) == t)
    {
        let ts = all
            .iter()
            .map(|&t| Some(t - bt).filter(|d| *d != 0.0))
            .collect();
        return Ok((Some(bt), ts));
    }
    Ok((None, records.iter().map(|r| r.time).collect()))
}

/// A time as a number to write: an integer when it is one (and exact as a float), so
/// that `bt: 1700000000` does not become `1700000000.0`.
pub fn time_number(t: f64) -> Number {
    if t.fract() == 0.0 && t.abs() < 9.0e15 {
        Number::Int(t as i64)
    } else {
        Number::Float(t)
    }
}

/// The base path of `records` and whether every record sits exactly at it (see the
/// module's base-name rule). `None` for no records.
pub fn base_path(records: &[Record]) -> Option<(Lwm2mPath, bool)> {
    let first = records.first()?.path;
    let mut prefix = first.ids();
    for r in records {
        let ids = r.path.ids();
        let common = prefix.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        prefix.truncate(common);
    }
    let p = Lwm2mPath::from_ids(&prefix)?;
    let at_p = records.iter().filter(|r| r.path == p).count();
    if at_p == records.len() {
        Some((p, true))
    } else if at_p > 0 {
        Some((p.parent().unwrap_or(Lwm2mPath::Root), false))
    } else {
        Some((p, false))
    }
}

/// The path of `path` below `base`, without a leading slash (`"6/0"` for `/3/0/6/0`
/// below `/3/0`); `None` if `path` is not below `base`.
pub fn relative_name(base: &Lwm2mPath, path: &Lwm2mPath) -> Option<String> {
    if !base.is_prefix_of(path) {
        return None;
    }
    let ids = path.ids();
    let rest = ids.get(base.depth()..)?;
    Some(
        rest.iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join("/"),
    )
}

/// Turns records into a compact SenML pack (see the module's encoding rules).
pub fn compact(records: &[Record]) -> Result<Vec<RawRecord>, CodecError> {
    let (bt, ts) = times(records)?;
    let base = base_path(records);
    let mut out = Vec::with_capacity(records.len());
    for (i, (r, t)) in records.iter().zip(ts).enumerate() {
        let first = i == 0;
        let (bn, n) = match base {
            Some((p, true)) => (first.then(|| p.to_string()), None),
            Some((Lwm2mPath::Root, false)) | None => (None, Some(r.path.to_string())),
            Some((p, false)) => (first.then(|| format!("{p}/")), relative_name(&p, &r.path)),
        };
        out.push(RawRecord {
            bn,
            bt: if first { bt } else { None },
            n,
            t,
            value: r
                .value
                .as_ref()
                .map(|v| raw_value(&r.path, v))
                .transpose()?,
            padded: false,
        });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::ids::{ObjectId, ResourceId};
    use crate::model::{Operations, ResourceDef};

    /// A schema for tests: resource `r` of any object has the type `TYPES[r % 9]`.
    pub struct TestSchema(BTreeMap<ResourceId, ResourceDef>);

    /// The data types of resources 0..9 of [`TestSchema`].
    pub const TYPES: [DataType; 9] = [
        DataType::String,
        DataType::Integer,
        DataType::UnsignedInteger,
        DataType::Float,
        DataType::Boolean,
        DataType::Opaque,
        DataType::Time,
        DataType::Objlnk,
        DataType::Corelnk,
    ];

    impl TestSchema {
        pub fn new() -> Self {
            let defs = TYPES
                .iter()
                .enumerate()
                .map(|(i, &ty)| {
                    let id = ResourceId(i as u16);
                    let def = ResourceDef::new(id.0, format!("r{i}"), Operations::RW, ty, false);
                    (id, def)
                })
                .collect();
            Self(defs)
        }
    }

    impl Schema for TestSchema {
        fn resource(&self, _: ObjectId, r: ResourceId) -> Option<&ResourceDef> {
            self.0.get(&r)
        }
    }

    fn value_of(ty: DataType, float: BoxedStrategy<f64>) -> BoxedStrategy<Value> {
        match ty {
            DataType::String => ".{0,8}".prop_map(Value::String).boxed(),
            DataType::Corelnk => "</[0-9]{1,3}>".prop_map(Value::Corelnk).boxed(),
            DataType::Integer => any::<i64>().prop_map(Value::Integer).boxed(),
            DataType::Time => any::<i64>().prop_map(Value::Time).boxed(),
            DataType::UnsignedInteger => any::<u64>().prop_map(Value::UnsignedInteger).boxed(),
            DataType::Float => prop_oneof![float, (-1000i32..1000).prop_map(f64::from)]
                .prop_map(Value::Float)
                .boxed(),
            DataType::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
            DataType::Opaque => prop::collection::vec(any::<u8>(), 0..12)
                .prop_map(Value::Opaque)
                .boxed(),
            DataType::Objlnk => (any::<u16>(), any::<u16>())
                .prop_map(|(object, instance)| Value::Objlnk(ObjectLink { object, instance }))
                .boxed(),
            DataType::None => Just(Value::None).boxed(),
        }
    }

    fn time(float: BoxedStrategy<f64>) -> BoxedStrategy<f64> {
        prop_oneof![(0i64..4_000_000_000).prop_map(|t| t as f64), float].boxed()
    }

    /// Every finite float.
    fn any_float() -> BoxedStrategy<f64> {
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .boxed()
    }

    /// True if serde_json reads floats back exactly (its `float_roundtrip` feature).
    fn json_floats_exact() -> bool {
        let probe = 209_880_377.061_919_18_f64;
        serde_json::from_str::<f64>("209880377.06191918").ok() == Some(probe)
    }

    /// Records of every data type at resource and resource-instance level, with no,
    /// some or all times, or path-only records at any level.
    pub fn records() -> impl Strategy<Value = Vec<Record>> {
        records_with(any_float, || time(any_float()))
    }

    /// As [`records`], with floats and times a JSON round trip can be held to: all of
    /// them when serde_json parses floats exactly; without its `float_roundtrip`
    /// feature, decimals of at most 12 significant digits below 10^12 (read exactly by
    /// its fast path) and whole-second times (relative times computed from other floats may
    /// need 17 digits).
    pub fn json_records() -> impl Strategy<Value = Vec<Record>> {
        if json_floats_exact() {
            return records().boxed();
        }
        let decimal = || {
            (-999_999_999_999i64..=999_999_999_999, -12i32..=0)
                .prop_map(|(m, e)| format!("{m}e{e}").parse().unwrap_or(0.0))
                .boxed()
        };
        let seconds = || {
            (-4_000_000_000i64..4_000_000_000)
                .prop_map(|t| t as f64)
                .boxed()
        };
        records_with(decimal, seconds).boxed()
    }

    fn records_with(
        float: fn() -> BoxedStrategy<f64>,
        time: fn() -> BoxedStrategy<f64>,
    ) -> impl Strategy<Value = Vec<Record>> {
        let with_value = (
            0u16..3,
            0u16..3,
            0usize..TYPES.len(),
            prop::option::of(0u16..3),
        )
            .prop_flat_map(move |(o, i, r, ri)| {
                let path = match ri {
                    Some(ri) => Lwm2mPath::resource_instance(3440 + o, i, r as u16, ri),
                    None => Lwm2mPath::resource(3440 + o, i, r as u16),
                };
                let time = prop::option::of(time());
                (Just(path), value_of(TYPES[r], float()), time)
            })
            .prop_map(|(path, v, time)| Record {
                path,
                value: Some(v),
                time,
            });
        let path_only = prop::collection::vec(0u16..5, 0..=4).prop_map(|ids| Record {
            path: Lwm2mPath::from_ids(&ids).unwrap_or(Lwm2mPath::Root),
            value: None,
            time: None,
        });
        prop_oneof![
            prop::collection::vec(with_value.clone(), 0..8),
            // All timed: exercises the base-time form.
            prop::collection::vec(with_value, 1..6)
                .prop_flat_map(move |rs| {
                    let n = rs.len();
                    (Just(rs), prop::collection::vec(time(), n))
                })
                .prop_map(|(mut rs, ts)| {
                    for (r, t) in rs.iter_mut().zip(ts) {
                        r.time = Some(t);
                    }
                    rs
                }),
            prop::collection::vec(path_only, 1..6),
        ]
    }

    #[test]
    fn record_errors_are_typed() {
        assert_eq!(
            Label::from_name("bs"),
            Err(RecordError::Unsupported { name: "bs".into() })
        );
        assert_eq!(
            Label::from_name("x_"),
            Err(RecordError::MustUnderstand { name: "x_".into() })
        );
        assert_eq!(Label::from_name("xyz"), Ok(None));
        assert_eq!(
            Label::from_cbor_key(5),
            Err(RecordError::Unsupported { name: "s".into() })
        );
        let mut rec = RawRecord::default();
        rec.set(Label::Name, Field::Text("/3/0/0".into())).unwrap();
        assert_eq!(
            rec.set(Label::Name, Field::Text("/3/0/1".into())),
            Err(RecordError::Twice { label: "n" })
        );
        assert_eq!(
            rec.set(Label::Time, Field::Text("now".into())),
            Err(RecordError::WrongType { label: "t" })
        );
        let err = rec
            .set(Label::BaseTime, Field::Number(Number::Float(f64::INFINITY)))
            .unwrap_err();
        assert!(matches!(err, RecordError::Time { time } if time.is_infinite()));
        assert_eq!(err.to_string(), "time inf is not a finite number");
    }

    #[test]
    fn base_name_rule() {
        let rec = |p: &str| Record {
            path: p.parse().unwrap(),
            value: None,
            time: None,
        };
        let names = |rs: &[Record]| {
            compact(rs)
                .unwrap()
                .into_iter()
                .map(|r| (r.bn, r.n))
                .collect::<Vec<_>>()
        };
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(
            names(&[rec("/3/0/0"), rec("/3/0/6/1")]),
            [(s("/3/0/"), s("0")), (None, s("6/1"))]
        );
        assert_eq!(names(&[rec("/3/0/9")]), [(s("/3/0/9"), None)]);
        assert_eq!(
            names(&[rec("/3/0"), rec("/3/0/1")]),
            [(s("/3/"), s("0")), (None, s("0/1"))]
        );
        assert_eq!(
            names(&[rec("/3/0/1"), rec("/1/0/1")]),
            [(None, s("/3/0/1")), (None, s("/1/0/1"))]
        );
        assert_eq!(
            names(&[rec("/3"), rec("/3/0")]),
            [(None, s("/3")), (None, s("/3/0"))]
        );
        assert_eq!(names(&[]), []);
    }

    #[test]
    fn time_rule() {
        let rec = |t: Option<f64>| Record {
            path: Lwm2mPath::resource(3303, 0, 5700),
            value: None,
            time: t,
        };
        let (bt, ts) = times(&[rec(Some(100.0)), rec(Some(95.0))]).unwrap();
        assert_eq!((bt, ts), (Some(100.0), vec![None, Some(-5.0)]));
        let (bt, ts) = times(&[rec(Some(100.0)), rec(None)]).unwrap();
        assert_eq!((bt, ts), (None, vec![Some(100.0), None]));
        let (bt, ts) = times(&[rec(None)]).unwrap();
        assert_eq!((bt, ts), (None, vec![None]));
        // Not exact relative to 1e20: absolute times instead.
        let (bt, ts) = times(&[rec(Some(1e20)), rec(Some(0.1))]).unwrap();
        assert_eq!((bt, ts), (None, vec![Some(1e20), Some(0.1)]));
        assert!(times(&[rec(Some(f64::NAN))]).is_err());
    }

    #[test]
    fn resolution_errors_name_the_record() {
        let raw = |bn: Option<&str>, n: Option<&str>| RawRecord {
            bn: bn.map(str::to_owned),
            n: n.map(str::to_owned),
            value: Some(RawValue::Number(Number::Int(1))),
            ..RawRecord::default()
        };
        let run = |rs: Vec<RawRecord>| {
            let rs = rs
                .into_iter()
                .enumerate()
                .map(|(i, r)| (i * 10, r))
                .collect();
            resolve("senml-json", rs, &TestSchema::new(), &mut Vec::new())
        };
        let e = run(vec![raw(Some("/3/0/"), Some("1")), raw(None, Some("x"))]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "senml-json: malformed at byte 10: record 1: name \"/3/0/x\" (bn \"/3/0/\" + n \"x\") \
             is not an LwM2M path: path \"/3/0/x\": segment \"x\" is not an id in 0..=65534"
        );
        let e = run(vec![raw(Some("urn:dev:1"), None)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("(bn \"urn:dev:1\" + n \"\") is not an LwM2M path"),
            "{e}"
        );
        let e = run(vec![raw(None, Some("/3/0"))]).unwrap_err();
        assert!(e.to_string().contains("not a resource"), "{e}");
        let e = run(vec![raw(None, None)]).unwrap_err();
        assert!(e.to_string().contains("must start with '/'"), "{e}");
        let mut vlo = raw(None, Some("/3/0/7"));
        vlo.value = Some(RawValue::ObjectLink("3".into()));
        let e = run(vec![vlo]).unwrap_err();
        assert!(e.to_string().contains("/3/0/7: object link \"3\""), "{e}");
    }

    #[test]
    fn labels() {
        assert_eq!(Label::from_name("vlo"), Ok(Some(Label::ObjectLinkValue)));
        assert_eq!(Label::from_name("bu"), Ok(None));
        assert!(Label::from_name("bv").is_err());
        assert!(Label::from_name("foo_").is_err());
        assert_eq!(Label::from_cbor_key(-2), Ok(Some(Label::BaseName)));
        assert_eq!(Label::from_cbor_key(8), Ok(Some(Label::DataValue)));
        assert_eq!(Label::from_cbor_key(1), Ok(None));
        assert!(Label::from_cbor_key(5).is_err());
        let mut r = RawRecord::default();
        r.set(Label::Value, Field::Value(RawValue::Boolean(true)))
            .unwrap();
        assert!(
            r.set(
                Label::StringValue,
                Field::Value(RawValue::String("x".into()))
            )
            .is_err()
        );
        r.set(Label::Name, Field::Text("1".into())).unwrap();
        assert!(r.set(Label::Name, Field::Text("1".into())).is_err());
        assert!(
            r.set(Label::BaseName, Field::Number(Number::Int(1)))
                .is_err()
        );
        assert!(
            r.set(Label::Time, Field::Number(Number::Float(f64::INFINITY)))
                .is_err()
        );
    }
}
