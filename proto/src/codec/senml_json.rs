//! SenML JSON, `application/senml+json` (110): RFC 8428 §5 as Core TS 1.1 §7.4.4 uses it.
//!
//! A pack is a JSON array of record objects. The record model, base-name and time rules
//! live in [`super::senml`]. Specific to JSON:
//! * `vd` is base64url without padding (RFC 8428 §5); padded input is accepted too, with
//!   [`Finding::PaddedBase64`];
//! * integers are written as JSON integers, floats always with a fraction or an exponent
//!   (`1.0`, `1e+20`) so that they read back as floats; non-finite floats and times have
//!   no JSON form and are refused;
//! * labels are written in the order `bn`, `bt`, `n`, value, `t`, without spaces.

use base64::Engine as _;
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::Value as J;

use super::senml::{self, Field, Label, RawRecord, RawValue};
use crate::codec::{CodecError, Finding, Number};
use crate::model::Schema;
use crate::node::Record;
use crate::value::Value;

const FORMAT: &str = "senml-json";

/// Decodes a SenML JSON pack into records (Core TS 1.1 §7.4.4).
pub fn decode(
    bytes: &[u8],
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Vec<Record>, CodecError> {
    let records = raw_records(FORMAT, bytes)?;
    senml::resolve(FORMAT, records, schema, findings)
}

/// Encodes records as a compact SenML JSON pack (rules in [`super::senml`]).
pub fn encode(records: &[Record], out: &mut Vec<u8>) -> Result<(), CodecError> {
    for r in records {
        if let Some(Value::Float(f)) = r.value
            && !f.is_finite()
        {
            return Err(CodecError::InvalidValue {
                path: r.path,
                reason: format!("the float {f} has no JSON form"),
            });
        }
    }
    let pack = senml::compact(records)?;
    serde_json::to_writer(out, &Pack(&pack))
        .map_err(|e| CodecError::malformed(FORMAT, 0, e.to_string()))
}

/// Parses a JSON array of SenML records, each with its byte offset.
pub(crate) fn raw_records(
    format: &'static str,
    bytes: &[u8],
) -> Result<Vec<(usize, RawRecord)>, CodecError> {
    let J::Array(items) = parse(format, bytes)? else {
        return Err(CodecError::malformed(
            format,
            0,
            "a SenML pack must be a JSON array",
        ));
    };
    let offsets = element_offsets(bytes, 1);
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let offset = offsets.get(i).copied().unwrap_or(0);
            raw_record(item).map(|r| (offset, r)).map_err(|reason| {
                CodecError::malformed(format, offset, format!("record {i}: {reason}"))
            })
        })
        .collect()
}

/// Parses JSON text, turning serde_json's line and column into a byte offset.
pub(crate) fn parse(format: &'static str, bytes: &[u8]) -> Result<J, CodecError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let line_start: usize = bytes
            .split(|&b| b == b'\n')
            .take(e.line().saturating_sub(1))
            .map(|l| l.len() + 1)
            .sum();
        let offset = line_start.saturating_add(e.column().saturating_sub(1));
        CodecError::malformed(format, offset.min(bytes.len()), e.to_string())
    })
}

/// The byte offsets where the elements of the arrays opened at nesting depth
/// `array_depth` start (1 for a top-level array) in valid JSON text.
pub(crate) fn element_offsets(bytes: &[u8], array_depth: usize) -> Vec<usize> {
    // One entry per open container: true for an array.
    let mut open: Vec<bool> = Vec::new();
    let (mut in_string, mut escaped, mut want) = (false, false, false);
    let mut offsets = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if want && !b.is_ascii_whitespace() && b != b']' {
            offsets.push(i);
        }
        if !b.is_ascii_whitespace() {
            want = false;
        }
        match b {
            b'"' => in_string = true,
            b'[' => {
                open.push(true);
                want = open.len() == array_depth;
            }
            b'{' => open.push(false),
            b']' | b'}' => {
                open.pop();
            }
            b',' => want = open.len() == array_depth && open.last() == Some(&true),
            _ => {}
        }
    }
    offsets
}

fn raw_record(item: J) -> Result<RawRecord, String> {
    let J::Object(map) = item else {
        return Err(format!(
            "a record must be a JSON object, found {}",
            kind(&item)
        ));
    };
    let mut rec = RawRecord::default();
    for (name, v) in map {
        if let Some(label) = Label::from_name(&name).map_err(|e| e.to_string())? {
            rec.padded |= label == Label::DataValue && v.as_str().is_some_and(|s| s.ends_with('='));
            rec.set(label, field(label, v)?)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(rec)
}

fn field(label: Label, v: J) -> Result<Field, String> {
    Ok(match (label, v) {
        (Label::BaseName | Label::Name, J::String(s)) => Field::Text(s),
        (Label::BaseTime | Label::Time, J::Number(n)) => Field::Number(number(&n)),
        (Label::Value, J::Number(n)) => Field::Value(RawValue::Number(number(&n))),
        (Label::StringValue, J::String(s)) => Field::Value(RawValue::String(s)),
        (Label::BooleanValue, J::Bool(b)) => Field::Value(RawValue::Boolean(b)),
        (Label::DataValue, J::String(s)) => Field::Value(RawValue::Data(base64url(&s)?)),
        (Label::ObjectLinkValue, J::String(s)) => Field::Value(RawValue::ObjectLink(s)),
        (l, v) => {
            let want = match l {
                Label::BaseTime | Label::Time | Label::Value => "a number",
                Label::BooleanValue => "a boolean",
                _ => "a string",
            };
            return Err(format!(
                "label {:?} must be {want}, found {}",
                l.name(),
                kind(&v)
            ));
        }
    })
}

/// A JSON number as the format carried it.
pub(crate) fn number(n: &serde_json::Number) -> Number {
    match (n.as_i64(), n.as_u64()) {
        (Some(i), _) => Number::Int(i),
        (None, Some(u)) => Number::Uint(u),
        _ => Number::Float(n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// What a JSON value is, for error messages.
pub(crate) fn kind(v: &J) -> &'static str {
    match v {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a string",
        J::Array(_) => "an array",
        J::Object(_) => "an object",
    }
}

fn base64url(s: &str) -> Result<Vec<u8>, String> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const URL_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    URL_ANY_PADDING
        .decode(s)
        .map_err(|e| format!("label \"vd\" is not base64url ({e}): {s:?}"))
}

/// The pack as serde sees it, keeping the label order.
struct Pack<'a>(&'a [RawRecord]);

impl serde::Serialize for Pack<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for r in self.0 {
            seq.serialize_element(&JsonRecord(r))?;
        }
        seq.end()
    }
}

struct JsonRecord<'a>(&'a RawRecord);

impl serde::Serialize for JsonRecord<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut map = s.serialize_map(None)?;
        if let Some(bn) = &r.bn {
            map.serialize_entry("bn", bn)?;
        }
        if let Some(bt) = r.bt {
            map.serialize_entry("bt", &JsonNumber(senml::time_number(bt)))?;
        }
        if let Some(n) = &r.n {
            map.serialize_entry("n", n)?;
        }
        match &r.value {
            None => {}
            Some(RawValue::Number(n)) => map.serialize_entry("v", &JsonNumber(*n))?,
            Some(RawValue::String(s) | RawValue::StringOrOpaque(s)) => {
                map.serialize_entry("vs", s)?
            }
            Some(RawValue::Boolean(b)) => map.serialize_entry("vb", b)?,
            Some(RawValue::Data(d)) => map.serialize_entry(
                "vd",
                &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d),
            )?,
            Some(RawValue::ObjectLink(l)) => map.serialize_entry("vlo", l)?,
        }
        if let Some(t) = r.t {
            map.serialize_entry("t", &JsonNumber(senml::time_number(t)))?;
        }
        map.end()
    }
}

/// A number written as an integer when it is one, else as a float that reads back as a
/// float (serde_json writes finite floats with a fraction or an exponent: `1.0`, `1e+20`).
pub(crate) struct JsonNumber(pub(crate) Number);

impl serde::Serialize for JsonNumber {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Number::Int(i) => s.serialize_i64(i),
            Number::Uint(u) => s.serialize_u64(u),
            Number::Float(f) if !f.is_finite() => Err(serde::ser::Error::custom(format!(
                "the number {f} has no JSON form"
            ))),
            Number::Float(f) => s.serialize_f64(f),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::senml::tests::{TestSchema, json_records};
    use crate::ids::Lwm2mPath;
    use crate::model::NoSchema;
    use crate::value::ObjectLink;

    fn dec(text: &str) -> Result<Vec<Record>, CodecError> {
        decode(text.as_bytes(), &TestSchema::new(), &mut Vec::new())
    }

    fn enc(records: &[Record]) -> String {
        let mut out = Vec::new();
        encode(records, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn rec(path: &str, value: Option<Value>, time: Option<f64>) -> Record {
        Record {
            path: path.parse().unwrap(),
            value,
            time,
        }
    }

    /// Core TS 1.1 §7.4.4, the example of a Read on /3/0 (Device object instance).
    pub(crate) const DEVICE: &str = concat!(
        r#"[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},"#,
        r#"{"n":"1","vs":"Lightweight M2M Client"},"#,
        r#"{"n":"2","vs":"345000123"},"#,
        r#"{"n":"3","vs":"1.0"},"#,
        r#"{"n":"6/0","v":1},"#,
        r#"{"n":"6/1","v":5},"#,
        r#"{"n":"7/0","v":3800},"#,
        r#"{"n":"7/1","v":5000},"#,
        r#"{"n":"8/0","v":125},"#,
        r#"{"n":"8/1","v":900},"#,
        r#"{"n":"9","v":100},"#,
        r#"{"n":"10","v":15},"#,
        r#"{"n":"11/0","v":0},"#,
        r#"{"n":"13","v":1367491215},"#,
        r#"{"n":"14","vs":"+02:00"},"#,
        r#"{"n":"16","vs":"U"}]"#
    );

    #[test]
    fn device_read_example_round_trips() {
        // Core TS 1.1 §7.4.4: with no schema, strings stay strings and numbers integers.
        let mut findings = Vec::new();
        let recs = decode(DEVICE.as_bytes(), &NoSchema, &mut findings).unwrap();
        assert_eq!(recs.len(), 16);
        assert_eq!(
            recs[0],
            rec(
                "/3/0/0",
                Some(Value::String("Open Mobile Alliance".into())),
                None
            )
        );
        assert_eq!(recs[5], rec("/3/0/6/1", Some(Value::Integer(5)), None));
        assert_eq!(
            recs[13],
            rec("/3/0/13", Some(Value::Integer(1367491215)), None)
        );
        assert_eq!(findings.len(), 16, "every resource is unknown to NoSchema");
        assert_eq!(enc(&recs), DEVICE);
    }

    #[test]
    fn composite_and_send_shapes() {
        // The shapes of Core TS 1.1 §6.3 composite operations and §6.4 Send (written
        // here, not copied from the specification).
        // Read-Composite request: names only, no values.
        let text = r#"[{"n":"/3/0/1"},{"n":"/1/0"},{"n":"/5"}]"#;
        let recs = dec(text).unwrap();
        assert_eq!(
            recs,
            [
                rec("/3/0/1", None, None),
                rec("/1/0", None, None),
                rec("/5", None, None)
            ]
        );
        assert_eq!(enc(&recs), text);
        // Write-Composite: values of several objects, full names.
        let text = r#"[{"n":"/3441/0/0","vs":"x"},{"n":"/3442/1/4","vb":true}]"#;
        let recs = dec(text).unwrap();
        assert_eq!(recs[1], rec("/3442/1/4", Some(Value::Boolean(true)), None));
        assert_eq!(enc(&recs), text);
        // Send / timestamped notification: bt once, t relative (RFC 8428 §4.5.3).
        let text = r#"[{"bn":"/3440/0/3","bt":1700000000,"v":22.5},{"v":23.0,"t":-10}]"#;
        let recs = dec(text).unwrap();
        assert_eq!(
            recs,
            [
                rec("/3440/0/3", Some(Value::Float(22.5)), Some(1_700_000_000.0)),
                rec("/3440/0/3", Some(Value::Float(23.0)), Some(1_699_999_990.0)),
            ]
        );
        assert_eq!(enc(&recs), text);
        // Object link with the LwM2M `vlo` label (Core TS 1.1 §7.4.4).
        let text = r#"[{"bn":"/3440/0/","n":"7","vlo":"3:0"},{"n":"5","vd":"AAEC_w"}]"#;
        let recs = dec(text).unwrap();
        let link = ObjectLink {
            object: 3,
            instance: 0,
        };
        assert_eq!(recs[0].value, Some(Value::Objlnk(link)));
        assert_eq!(recs[1].value, Some(Value::Opaque(vec![0, 1, 2, 0xff])));
        assert_eq!(enc(&recs), text);
    }

    #[test]
    fn padded_base64_is_read_and_flagged() {
        let mut findings = Vec::new();
        let recs = decode(
            br#"[{"n":"/3440/0/5","vd":"AAEC_w=="},{"n":"/3440/0/5","vd":"AAEC_w"}]"#,
            &TestSchema::new(),
            &mut findings,
        )
        .unwrap();
        assert_eq!(recs[0].value, recs[1].value);
        assert_eq!(
            findings,
            [Finding::PaddedBase64 {
                path: Lwm2mPath::resource(3440, 0, 5)
            }]
        );
    }

    #[test]
    fn accepted_variations() {
        // Padded base64url, whitespace, unknown labels, bn changing mid-pack.
        let text = r#" [ {"bn":"/3440/0/","n":"5","vd":"AAEC_w==","u":"B"},
                          {"bn":"/3441/1/","n":"1","v":7} ] "#;
        let recs = dec(text).unwrap();
        assert_eq!(recs[0].value, Some(Value::Opaque(vec![0, 1, 2, 0xff])));
        assert_eq!(recs[1].path, Lwm2mPath::resource(3441, 1, 1));
        // A float where the schema wants an integer is kept and flagged.
        let mut findings = Vec::new();
        let recs = decode(
            br#"[{"n":"/3440/0/1","v":1.5}]"#,
            &TestSchema::new(),
            &mut findings,
        )
        .unwrap();
        assert_eq!(recs[0].value, Some(Value::Float(1.5)));
        assert!(matches!(findings[..], [Finding::TypeMismatch { .. }]));
    }

    #[test]
    fn numbers_keep_their_kind() {
        let recs = [
            rec("/3440/0/3", Some(Value::Float(1.0)), None),
            rec("/3440/0/3", Some(Value::Float(1e20)), None),
            rec("/3440/0/2", Some(Value::UnsignedInteger(u64::MAX)), None),
            rec("/3440/0/1", Some(Value::Integer(-3)), None),
        ];
        let text = enc(&recs);
        assert_eq!(
            text,
            r#"[{"bn":"/3440/0/","n":"3","v":1.0},{"n":"3","v":1e+20},{"n":"2","v":18446744073709551615},{"n":"1","v":-3}]"#
        );
        assert_eq!(dec(&text).unwrap(), recs);
        let nan = [rec("/3440/0/3", Some(Value::Float(f64::NAN)), None)];
        assert!(matches!(
            encode(&nan, &mut Vec::new()),
            Err(CodecError::InvalidValue { .. })
        ));
    }

    #[test]
    fn malformed_input_is_refused_with_offsets() {
        let err = |text: &str| dec(text).unwrap_err().to_string();
        assert_eq!(
            err("[{\"n\":\"/3/0/1\",\n \"v\":}]"),
            "senml-json: malformed at byte 21: expected value at line 2 column 6"
        );
        assert!(err("{}").contains("must be a JSON array"));
        assert_eq!(
            err(r#"[{"n":"/3/0/1","v":1}, {"n":"/3/0/1","vs":2}]"#),
            "senml-json: malformed at byte 23: record 1: label \"vs\" must be a string, found a number"
        );
        assert!(err(r#"[{"n":"/3/x","v":1}]"#).contains("name \"/3/x\""));
        assert!(err(r#"[{"bn":"3/0/","n":"1","v":1}]"#).contains("must start with '/'"));
        assert!(err(r#"[{"n":"/3/0/1","v":1,"vs":"a"}]"#).contains("already has a value"));
        assert!(err(r#"[{"n":"/3/0/1","vd":"***"}]"#).contains("not base64url"));
        assert!(err(r#"[{"n":"/3/0/1","v":"1"}]"#).contains("must be a number"));
        assert!(err(r#"[{"n":"/3/0/1","bt":true}]"#).contains("\"bt\" must be a number"));
        assert!(err(r#"[{"n":"/3/0/1","bv":1,"v":1}]"#).contains("not supported"));
        assert!(err(r#"[{"n":"/3/0/1","v":1,"x_":1}]"#).contains("must-understand"));
        assert!(err(r#"[[1]]"#).contains("must be a JSON object"));
        assert!(err(r#"[{"n":"/3/0/1","v":1}] x"#).contains("trailing characters"));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(err(&deep).contains("recursion limit"));
    }

    #[test]
    fn element_offsets_skip_strings() {
        let text = br#"[ {"n":"a,[{\""}, "x" ,3]"#;
        assert_eq!(element_offsets(text, 1), [2, 18, 23]);
        assert_eq!(element_offsets(b"[]", 1), Vec::<usize>::new());
        let text = br#"{"x":[],"e":[ {"n":[1]} ,{}]}"#;
        assert_eq!(element_offsets(text, 2), [14, 25]);
    }

    proptest! {
        #[test]
        fn round_trip(recs in json_records()) {
            let mut out = Vec::new();
            encode(&recs, &mut out).unwrap();
            let back = decode(&out, &TestSchema::new(), &mut Vec::new()).unwrap();
            prop_assert_eq!(back, recs, "{}", String::from_utf8_lossy(&out));
        }

        #[test]
        fn never_panics_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes, &TestSchema::new(), &mut Vec::new());
        }

        #[test]
        fn never_panics_on_mutations(pos in 0..DEVICE.len(), byte in any::<u8>()) {
            let mut bytes = DEVICE.as_bytes().to_vec();
            bytes[pos] = byte;
            let _ = decode(&bytes, &TestSchema::new(), &mut Vec::new());
        }
    }
}
