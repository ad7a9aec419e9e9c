//! SenML CBOR, `application/senml+cbor` (112): RFC 8428 §6 as Core TS 1.1 §7.4.5 uses it.
//!
//! A pack is a CBOR array of maps keyed by the RFC 8428 §6 integer labels: `bn` −2,
//! `bt` −3, `n` 0, `v` 2, `vs` 3, `vb` 4, `t` 6, `vd` 8; the LwM2M object link label has
//! no integer and is the text key `"vlo"`. The record model, base-name and time rules
//! live in [`super::senml`]. Specific to CBOR:
//! * integers are CBOR integers in their shortest form; floats are written by ciborium in
//!   the smallest width that keeps the value bit for bit (half, single or double
//!   precision: `1.5` is `f9 3e00`, `0.1` takes eight bytes); `vd` is a byte string;
//! * a registered label sent as a text key (`"bn"` instead of −2) is refused, as RFC 8428
//!   §6 gives it an integer; other text and integer keys are unknown labels;
//! * nesting is limited (a record is a map of scalars), tags are refused.

use ciborium::Value as C;

use super::senml::{self, Field, Label, RawRecord, RawValue};
use crate::codec::{CodecError, Finding, Number};
use crate::model::Schema;
use crate::node::Record;

const FORMAT: &str = "senml-cbor";

/// Nesting allowed inside one record: a map of scalars needs 2.
const RECURSION_LIMIT: usize = 8;

/// Decodes a SenML CBOR pack into records (Core TS 1.1 §7.4.5).
pub fn decode(
    bytes: &[u8],
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Vec<Record>, CodecError> {
    let records = raw_records(bytes)?;
    senml::resolve(FORMAT, records, schema, findings)
}

/// Encodes records as a compact SenML CBOR pack (rules in [`super::senml`]).
pub fn encode(records: &[Record], out: &mut Vec<u8>) -> Result<(), CodecError> {
    let pack = senml::compact(records)?;
    let value = C::Array(pack.iter().map(cbor_record).collect());
    ciborium::ser::into_writer(&value, out)
        .map_err(|e| CodecError::malformed(FORMAT, 0, e.to_string()))
}

fn malformed(offset: usize, reason: impl Into<String>) -> CodecError {
    CodecError::malformed(FORMAT, offset, reason)
}

/// Reads the pack's array header, then each record on its own so that errors carry the
/// offset of the record.
fn raw_records(bytes: &[u8]) -> Result<Vec<(usize, RawRecord)>, CodecError> {
    let (count, mut pos) = array_header(bytes)?;
    let mut out = Vec::new();
    loop {
        match count {
            Some(n) if out.len() as u64 == n => break,
            None if bytes.get(pos) == Some(&0xff) => {
                pos += 1;
                break;
            }
            _ => {}
        }
        let mut rest = bytes.get(pos..).unwrap_or_default();
        if rest.is_empty() {
            return Err(malformed(
                pos,
                format!("the pack ends after {} records", out.len()),
            ));
        }
        let item: C = ciborium::de::from_reader_with_recursion_limit(&mut rest, RECURSION_LIMIT)
            .map_err(|e| match e {
                ciborium::de::Error::Io(_) => malformed(bytes.len(), "unexpected end of input"),
                ciborium::de::Error::Syntax(at) => {
                    malformed(pos.saturating_add(at), "invalid CBOR")
                }
                ciborium::de::Error::Semantic(at, msg) => {
                    malformed(pos.saturating_add(at.unwrap_or(0)), msg)
                }
                ciborium::de::Error::RecursionLimitExceeded => {
                    malformed(pos, "values nested too deeply")
                }
            })?;
        let start = pos;
        pos = bytes.len() - rest.len();
        let index = out.len();
        let rec = raw_record(item)
            .map_err(|reason| malformed(start, format!("record {index}: {reason}")))?;
        out.push((start, rec));
    }
    if pos != bytes.len() {
        return Err(malformed(pos, "trailing bytes after the pack"));
    }
    Ok(out)
}

/// The element count (`None` for an indefinite-length array) and the header's size.
fn array_header(bytes: &[u8]) -> Result<(Option<u64>, usize), CodecError> {
    let &first = bytes
        .first()
        .ok_or_else(|| malformed(0, "empty payload: a SenML pack is a CBOR array"))?;
    if first >> 5 != 4 {
        return Err(malformed(
            0,
            format!(
                "a SenML pack must be a CBOR array, found major type {}",
                first >> 5
            ),
        ));
    }
    let size = match first & 0x1f {
        n @ 0..=23 => return Ok((Some(u64::from(n)), 1)),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        31 => return Ok((None, 1)),
        n => return Err(malformed(0, format!("invalid array length encoding {n}"))),
    };
    let len = bytes
        .get(1..1 + size)
        .ok_or_else(|| malformed(bytes.len(), "truncated array header"))?
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    Ok((Some(len), 1 + size))
}

fn raw_record(item: C) -> Result<RawRecord, String> {
    let C::Map(entries) = item else {
        return Err(format!(
            "a record must be a CBOR map, found {}",
            kind(&item)
        ));
    };
    let mut rec = RawRecord::default();
    for (key, v) in entries {
        let label = match key {
            C::Integer(i) => Label::from_cbor_key(i128::from(i)).map_err(|e| e.to_string())?,
            C::Text(name) => match Label::from_name(&name).map_err(|e| e.to_string())? {
                Some(l) if l.cbor_key().is_some() => {
                    return Err(format!(
                        "label {name:?} must be the integer key {} in CBOR (RFC 8428 §6)",
                        l.cbor_key().unwrap_or_default()
                    ));
                }
                l => l,
            },
            other => {
                return Err(format!(
                    "a label must be an integer or a text string, found {}",
                    kind(&other)
                ));
            }
        };
        if let Some(label) = label {
            rec.set(label, field(label, v)?)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(rec)
}

fn field(label: Label, v: C) -> Result<Field, String> {
    Ok(match (label, v) {
        (Label::BaseName | Label::Name, C::Text(s)) => Field::Text(s),
        (Label::BaseTime | Label::Time, v @ (C::Integer(_) | C::Float(_))) => {
            Field::Number(number(label, v)?)
        }
        (Label::Value, v @ (C::Integer(_) | C::Float(_))) => {
            Field::Value(RawValue::Number(number(label, v)?))
        }
        (Label::StringValue, C::Text(s)) => Field::Value(RawValue::String(s)),
        (Label::BooleanValue, C::Bool(b)) => Field::Value(RawValue::Boolean(b)),
        (Label::DataValue, C::Bytes(d)) => Field::Value(RawValue::Data(d)),
        (Label::ObjectLinkValue, C::Text(s)) => Field::Value(RawValue::ObjectLink(s)),
        (l, v) => {
            let want = match l {
                Label::BaseTime | Label::Time | Label::Value => "a number",
                Label::BooleanValue => "a boolean",
                Label::DataValue => "a byte string",
                _ => "a text string",
            };
            return Err(format!(
                "label {:?} must be {want}, found {}",
                l.name(),
                kind(&v)
            ));
        }
    })
}

fn number(label: Label, v: C) -> Result<Number, String> {
    match v {
        C::Integer(i) => {
            let i = i128::from(i);
            i64::try_from(i)
                .map(Number::Int)
                .or_else(|_| u64::try_from(i).map(Number::Uint))
                .map_err(|_| format!("label {:?}: integer {i} is out of range", label.name()))
        }
        C::Float(f) => Ok(Number::Float(f)),
        other => Err(format!(
            "label {:?} must be a number, found {}",
            label.name(),
            kind(&other)
        )),
    }
}

fn kind(v: &C) -> &'static str {
    match v {
        C::Integer(_) => "an integer",
        C::Bytes(_) => "a byte string",
        C::Float(_) => "a float",
        C::Text(_) => "a text string",
        C::Bool(_) => "a boolean",
        C::Null => "null",
        C::Tag(..) => "a tagged value",
        C::Array(_) => "an array",
        C::Map(_) => "a map",
        _ => "an unknown CBOR value",
    }
}

fn cbor_number(n: Number) -> C {
    match n {
        Number::Int(i) => C::Integer(i.into()),
        Number::Uint(u) => C::Integer(u.into()),
        Number::Float(f) => C::Float(f),
    }
}

fn cbor_record(r: &RawRecord) -> C {
    let key = |l: Label| match l.cbor_key() {
        Some(k) => C::Integer(k.into()),
        None => C::Text(l.name().into()),
    };
    let mut m = Vec::new();
    if let Some(bn) = &r.bn {
        m.push((key(Label::BaseName), C::Text(bn.clone())));
    }
    if let Some(bt) = r.bt {
        m.push((key(Label::BaseTime), cbor_number(senml::time_number(bt))));
    }
    if let Some(n) = &r.n {
        m.push((key(Label::Name), C::Text(n.clone())));
    }
    match &r.value {
        None => {}
        Some(RawValue::Number(n)) => m.push((key(Label::Value), cbor_number(*n))),
        Some(RawValue::String(s) | RawValue::StringOrOpaque(s)) => {
            m.push((key(Label::StringValue), C::Text(s.clone())))
        }
        Some(RawValue::Boolean(b)) => m.push((key(Label::BooleanValue), C::Bool(*b))),
        Some(RawValue::Data(d)) => m.push((key(Label::DataValue), C::Bytes(d.clone()))),
        Some(RawValue::ObjectLink(l)) => m.push((key(Label::ObjectLinkValue), C::Text(l.clone()))),
    }
    if let Some(t) = r.t {
        m.push((key(Label::Time), cbor_number(senml::time_number(t))));
    }
    C::Map(m)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::senml::tests::{TestSchema, records};
    use crate::codec::senml_json;
    use crate::model::NoSchema;
    use crate::value::{ObjectLink, Value};

    /// Core TS 1.1 §7.4.5: the Read on /3/0 example of §7.4.4 in SenML CBOR.
    const DEVICE: &str = "90a321652f332f302f00613003744f70656e204d6f62696c6520416c6c69616e6365\
        a200613103764c69676874776569676874204d324d20436c69656e74\
        a20061320369333435303030313233a20061330363312e30a20063362f300201\
        a20063362f310205a20063372f3002190ed8a20063372f3102191388\
        a20063382f3002187da20063382f3102190384a2006139021864a200623130020f\
        a2006431312f300200a200623133021a5182428fa20062313403662b30323a3030\
        a200623136036155";

    fn dec(bytes: &[u8]) -> Result<Vec<Record>, CodecError> {
        decode(bytes, &TestSchema::new(), &mut Vec::new())
    }

    fn enc(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(records, &mut out).unwrap();
        out
    }

    fn rec(path: &str, value: Option<Value>, time: Option<f64>) -> Record {
        Record {
            path: path.parse().unwrap(),
            value,
            time,
        }
    }

    #[test]
    fn device_read_example_round_trips() {
        let bytes = hex::decode(DEVICE).unwrap();
        let recs = decode(&bytes, &NoSchema, &mut Vec::new()).unwrap();
        let from_json = senml_json::decode(
            senml_json::tests::DEVICE.as_bytes(),
            &NoSchema,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(recs, from_json);
        assert_eq!(hex::encode(enc(&recs)), DEVICE);
    }

    #[test]
    fn labels_and_widths() {
        let link = ObjectLink {
            object: 3,
            instance: 0,
        };
        let recs = [
            rec("/3440/0/3", Some(Value::Float(1.5)), Some(1_700_000_000.0)),
            rec(
                "/3440/0/3",
                Some(Value::Float(100000.0)),
                Some(1_700_000_010.0),
            ),
            rec(
                "/3440/0/7",
                Some(Value::Objlnk(link)),
                Some(1_700_000_000.5),
            ),
            rec(
                "/3440/0/5",
                Some(Value::Opaque(vec![1, 2])),
                Some(1_699_999_999.0),
            ),
        ];
        let bytes = enc(&recs);
        assert_eq!(
            hex::encode(&bytes),
            [
                "84",
                // {-2: "/3440/0/", -3: 1700000000, 0: "3", 2: 1.5 (half)}
                "a4 21 68 2f333434302f302f 22 1a 6553f100 00 61 33 02 f9 3e00",
                // {0: "3", 2: 100000.0 (single), 6: 10}
                "a3 00 61 33 02 fa 47c35000 06 0a",
                // {0: "7", "vlo": "3:0", 6: 0.5}
                "a3 00 61 37 63 766c6f 63 333a30 06 f9 3800",
                // {0: "5", 8: h'0102', 6: -1}
                "a3 00 61 35 08 42 0102 06 20",
            ]
            .concat()
            .replace(' ', "")
        );
        assert_eq!(dec(&bytes).unwrap(), recs);
    }

    #[test]
    fn indefinite_arrays_are_accepted() {
        // [_ {0: "/3440/0/1", 2: 7}]
        let bytes = hex::decode("9fa200692f333434302f302f310207ff").unwrap();
        assert_eq!(
            dec(&bytes).unwrap(),
            [rec("/3440/0/1", Some(Value::Integer(7)), None)]
        );
    }

    #[test]
    fn malformed_input_is_refused_with_offsets() {
        let err = |h: &str| dec(&hex::decode(h).unwrap()).unwrap_err().to_string();
        assert!(err("").contains("empty payload"));
        assert!(err("a0").contains("must be a CBOR array"));
        assert!(err("82a0").contains("at byte 2: the pack ends after 1 records"));
        assert!(err("81a0a0").contains("at byte 2: trailing bytes"));
        assert!(err("9a0000").contains("truncated array header"));
        // {0: "/3/0/1", 3: 1}: vs must be text.
        assert_eq!(
            err("81a200662f332f302f310301"),
            "senml-cbor: malformed at byte 1: record 0: label \"vs\" must be a text string, found an integer"
        );
        // {"n": "/3/0/1"}: text key for a registered label.
        assert!(err("81a1616e662f332f302f31").contains("integer key 0"));
        // {0: "/3/x", 2: 1}
        assert!(err("81a200642f332f780201").contains("name \"/3/x\""));
        // {0: "/3/0/1", 2: -2^64}
        assert!(err("81a200662f332f302f31023bffffffffffffffff").contains("out of range"));
        // {0: "/3/0/1", 2: 1(1)}: a tagged number.
        assert!(err("81a200662f332f302f3102c101").contains("a tagged value"));
        // {0: "/3/0/1", 6: NaN}
        assert!(err("81a200662f332f302f3106f97e00").contains("not a finite number"));
        // Truncated text inside a record.
        assert!(err("81a200662f33").contains("unexpected end of input"));
        let deep = format!("81{}", "81".repeat(50));
        assert!(err(&deep).contains("nested too deeply"));
    }

    proptest! {
        #[test]
        fn round_trip(recs in records()) {
            let bytes = enc(&recs);
            let back = dec(&bytes).unwrap();
            prop_assert_eq!(back, recs, "{}", hex::encode(&bytes));
        }

        #[test]
        fn never_panics_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = dec(&bytes);
        }

        #[test]
        fn never_panics_on_mutations(pos in 0..DEVICE.len() / 2, byte in any::<u8>()) {
            let mut bytes = hex::decode(DEVICE).unwrap();
            bytes[pos] = byte;
            let _ = dec(&bytes);
        }
    }
}
