//! OMA LwM2M JSON, `application/vnd.oma.lwm2m+json` (11543; 1543 before 1.0), the JSON
//! format of LwM2M 1.0 (Core TS 1.0 §6.4.4), kept for 1.0 peers.
//!
//! A payload is one object: `{"bn":"/3/0/","bt":..,"e":[entries]}`. `bn` (base name) and
//! `bt` (base time) are optional and apply to every entry; an entry has a name `n`
//! (relative to `bn`), an optional time `t` (relative to `bt`) and at most one value:
//! `v` (number: Integer, Float, Time), `sv` (string), `bv` (boolean) or `ov` (object link
//! `"O:I"`). Opaque values travel as base64 text in `sv`: they decode as opaque when the
//! schema says the resource is Opaque (and the text is base64), else as a string.
//! Names, times and value typing follow the shared SenML rules of [`super::senml`].
//!
//! Encoding: `bn` is the target path with a trailing slash (`"/3/0/"`, `"/"` for the
//! root) as in the examples of Core TS 1.0 §6.4.4, or its parent when a record sits at
//! the target itself (a Read on `/3/0/0` gives `bn` `"/3/0/"`, `n` `"0"`), so that no
//! name is empty; `n` is the rest of the path. Times follow the SenML time rule (`bt`
//! when every entry has a time, else absolute `t`). Opaque values are standard base64
//! with padding in `sv`. Labels are written `bn`, `bt`, `e` and `n`, value, `t`.

use base64::Engine as _;
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::Value as J;

use super::senml::{self, RawRecord, RawValue};
use super::senml_json::{JsonNumber, element_offsets, kind, number, parse};
use crate::codec::{CodecError, Finding};
use crate::ids::Lwm2mPath;
use crate::model::Schema;
use crate::node::{Record, ShapeError};
use crate::value::Value;

const FORMAT: &str = "json";

/// Decodes an OMA JSON payload into records (Core TS 1.0 §6.4.4).
pub fn decode(
    bytes: &[u8],
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Vec<Record>, CodecError> {
    let malformed = |offset, reason: String| CodecError::malformed(FORMAT, offset, reason);
    let J::Object(mut top) = parse(FORMAT, bytes)? else {
        return Err(malformed(
            0,
            "an OMA JSON payload must be a JSON object".into(),
        ));
    };
    let bn = match top.remove("bn") {
        None => None,
        Some(J::String(s)) => Some(s),
        Some(v) => {
            return Err(malformed(
                0,
                format!("\"bn\" must be a string, found {}", kind(&v)),
            ));
        }
    };
    let bt = match top.remove("bt") {
        None => None,
        Some(J::Number(n)) => {
            Some(senml::time_of(number(&n)).map_err(|e| malformed(0, e.to_string()))?)
        }
        Some(v) => {
            return Err(malformed(
                0,
                format!("\"bt\" must be a number, found {}", kind(&v)),
            ));
        }
    };
    let entries = match top.remove("e") {
        Some(J::Array(e)) => e,
        Some(v) => {
            return Err(malformed(
                0,
                format!("\"e\" must be an array, found {}", kind(&v)),
            ));
        }
        None => return Err(malformed(0, "the entry array \"e\" is missing".into())),
    };
    let offsets = element_offsets(bytes, 2);
    let offsets = (offsets.len() == entries.len()).then_some(offsets);
    let mut records = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let offset = offsets
            .as_ref()
            .and_then(|o| o.get(i).copied())
            .unwrap_or(0);
        let mut rec = raw_entry(entry).map_err(|e| malformed(offset, format!("entry {i}: {e}")))?;
        if i == 0 {
            rec.bn = bn.clone();
            rec.bt = bt;
        }
        records.push((offset, rec));
    }
    senml::resolve(FORMAT, records, schema, findings)
}

fn raw_entry(entry: J) -> Result<RawRecord, String> {
    let J::Object(map) = entry else {
        return Err(format!(
            "an entry must be a JSON object, found {}",
            kind(&entry)
        ));
    };
    let mut rec = RawRecord::default();
    for (label, v) in map {
        let value = match (label.as_str(), v) {
            ("n", J::String(s)) => {
                rec.n = Some(s);
                continue;
            }
            ("t", J::Number(n)) => {
                rec.t = Some(senml::time_of(number(&n)).map_err(|e| e.to_string())?);
                continue;
            }
            ("v", J::Number(n)) => RawValue::Number(number(&n)),
            ("sv", J::String(s)) => RawValue::StringOrOpaque(s),
            ("bv", J::Bool(b)) => RawValue::Boolean(b),
            ("ov", J::String(s)) => RawValue::ObjectLink(s),
            (l @ ("t" | "v"), v) => {
                return Err(format!("{l:?} must be a number, found {}", kind(&v)));
            }
            ("bv", v) => return Err(format!("\"bv\" must be a boolean, found {}", kind(&v))),
            (l @ ("n" | "sv" | "ov"), v) => {
                return Err(format!("{l:?} must be a string, found {}", kind(&v)));
            }
            // Labels Core TS 1.0 §6.4.4 does not define are ignored.
            _ => continue,
        };
        if rec.value.is_some() {
            return Err(format!("{label:?}: the entry already has a value"));
        }
        rec.value = Some(value);
    }
    Ok(rec)
}

/// Encodes records as OMA JSON with the base name taken from `base`, the path the
/// payload answers (Core TS 1.0 §6.4.4). Every record must lie at or below `base`.
pub fn encode(base: &Lwm2mPath, records: &[Record], out: &mut Vec<u8>) -> Result<(), CodecError> {
    for r in records {
        if !base.is_prefix_of(&r.path) {
            return Err(ShapeError::OutsideTarget {
                target: *base,
                record: r.path,
            }
            .into());
        }
        if let Some(Value::Float(f)) = r.value
            && !f.is_finite()
        {
            return Err(CodecError::InvalidValue {
                path: r.path,
                reason: format!("the float {f} has no JSON form"),
            });
        }
    }
    let bn_path = if records.iter().any(|r| r.path == *base) {
        base.parent().unwrap_or(Lwm2mPath::Root)
    } else {
        *base
    };
    let bn = match bn_path {
        Lwm2mPath::Root => "/".to_owned(),
        p => format!("{p}/"),
    };
    let (bt, ts) = senml::times(records)?;
    let mut entries = Vec::with_capacity(records.len());
    for (r, t) in records.iter().zip(ts) {
        entries.push(RawRecord {
            bn: None,
            bt: None,
            n: senml::relative_name(&bn_path, &r.path),
            t,
            value: r
                .value
                .as_ref()
                .map(|v| senml::raw_value(&r.path, v))
                .transpose()?,
            padded: false,
        });
    }
    let payload = Payload { bn, bt, entries };
    serde_json::to_writer(out, &payload)
        .map_err(|e| CodecError::malformed(FORMAT, 0, e.to_string()))
}

struct Payload {
    bn: String,
    bt: Option<f64>,
    entries: Vec<RawRecord>,
}

impl serde::Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("bn", &self.bn)?;
        if let Some(bt) = self.bt {
            map.serialize_entry("bt", &JsonNumber(senml::time_number(bt)))?;
        }
        map.serialize_entry("e", &Entries(&self.entries))?;
        map.end()
    }
}

struct Entries<'a>(&'a [RawRecord]);

impl serde::Serialize for Entries<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for e in self.0 {
            seq.serialize_element(&Entry(e))?;
        }
        seq.end()
    }
}

struct Entry<'a>(&'a RawRecord);

impl serde::Serialize for Entry<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut map = s.serialize_map(None)?;
        if let Some(n) = &e.n {
            map.serialize_entry("n", n)?;
        }
        match &e.value {
            None => {}
            Some(RawValue::Number(n)) => map.serialize_entry("v", &JsonNumber(*n))?,
            Some(RawValue::String(s) | RawValue::StringOrOpaque(s)) => {
                map.serialize_entry("sv", s)?
            }
            Some(RawValue::Data(d)) => {
                map.serialize_entry("sv", &base64::engine::general_purpose::STANDARD.encode(d))?
            }
            Some(RawValue::Boolean(b)) => map.serialize_entry("bv", b)?,
            Some(RawValue::ObjectLink(l)) => map.serialize_entry("ov", l)?,
        }
        if let Some(t) = e.t {
            map.serialize_entry("t", &JsonNumber(senml::time_number(t)))?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::senml::tests::{TestSchema, json_records};
    use crate::model::NoSchema;
    use crate::value::ObjectLink;

    /// Core TS 1.0 §6.4.4, the example of a Read on /3/0 (Device object instance), with
    /// the layout whitespace of the specification removed.
    const DEVICE: &str = concat!(
        r#"{"bn":"/3/0/","e":["#,
        r#"{"n":"0","sv":"Open Mobile Alliance"},"#,
        r#"{"n":"1","sv":"Lightweight M2M Client"},"#,
        r#"{"n":"2","sv":"345000123"},"#,
        r#"{"n":"3","sv":"1.0"},"#,
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
        r#"{"n":"14","sv":"+02:00"},"#,
        r#"{"n":"16","sv":"U"}]}"#
    );

    fn dec(text: &str) -> Result<Vec<Record>, CodecError> {
        decode(text.as_bytes(), &TestSchema::new(), &mut Vec::new())
    }

    fn enc(base: &str, records: &[Record]) -> String {
        let mut out = Vec::new();
        encode(&base.parse().unwrap(), records, &mut out).unwrap();
        String::from_utf8(out).unwrap()
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
        let recs = decode(DEVICE.as_bytes(), &NoSchema, &mut Vec::new()).unwrap();
        assert_eq!(recs.len(), 16);
        assert_eq!(
            recs[1],
            rec(
                "/3/0/1",
                Some(Value::String("Lightweight M2M Client".into())),
                None
            )
        );
        assert_eq!(recs[12], rec("/3/0/11/0", Some(Value::Integer(0)), None));
        assert_eq!(enc("/3/0", &recs), DEVICE);
        // The specification's own layout, with line breaks, reads the same.
        let spaced = DEVICE.replace("[", "[\n ").replace("},", "},\n ");
        assert_eq!(
            decode(spaced.as_bytes(), &NoSchema, &mut Vec::new()).unwrap(),
            recs
        );
    }

    #[test]
    fn values_times_and_bases() {
        let link = ObjectLink {
            object: 3,
            instance: 0,
        };
        let recs = [
            rec("/3440/0/3", Some(Value::Float(22.5)), Some(1_700_000_000.0)),
            rec(
                "/3440/0/4",
                Some(Value::Boolean(true)),
                Some(1_699_999_990.0),
            ),
            rec(
                "/3440/0/7",
                Some(Value::Objlnk(link)),
                Some(1_700_000_000.0),
            ),
            rec(
                "/3440/0/5",
                Some(Value::Opaque(vec![0, 1, 2, 0xff])),
                Some(1_700_000_000.0),
            ),
        ];
        let text = enc("/3440/0", &recs);
        assert_eq!(
            text,
            concat!(
                r#"{"bn":"/3440/0/","bt":1700000000,"e":[{"n":"3","v":22.5},"#,
                r#"{"n":"4","bv":true,"t":-10},{"n":"7","ov":"3:0"},{"n":"5","sv":"AAEC/w=="}]}"#
            )
        );
        assert_eq!(dec(&text).unwrap(), recs);
        // Without the schema, base64 in sv stays a string.
        let plain = decode(text.as_bytes(), &NoSchema, &mut Vec::new()).unwrap();
        assert_eq!(plain[3].value, Some(Value::String("AAEC/w==".into())));
        // A single resource: bn is its parent. The root: bn "/".
        let one = [rec("/3440/0/1", Some(Value::Integer(-1)), None)];
        assert_eq!(
            enc("/3440/0/1", &one),
            r#"{"bn":"/3440/0/","e":[{"n":"1","v":-1}]}"#
        );
        assert_eq!(
            enc("/", &one),
            r#"{"bn":"/","e":[{"n":"3440/0/1","v":-1}]}"#
        );
        assert_eq!(enc("/", &[]), r#"{"bn":"/","e":[]}"#);
        assert!(matches!(
            encode(&"/4".parse().unwrap(), &one, &mut Vec::new()),
            Err(CodecError::Shape(ShapeError::OutsideTarget { .. }))
        ));
    }

    #[test]
    fn malformed_input_is_refused() {
        let err = |text: &str| dec(text).unwrap_err().to_string();
        assert!(err("[]").contains("must be a JSON object"));
        assert!(err(r#"{"bn":"/3/0/"}"#).contains("\"e\" is missing"));
        assert!(err(r#"{"e":{}}"#).contains("\"e\" must be an array"));
        assert!(err(r#"{"bn":3,"e":[]}"#).contains("\"bn\" must be a string"));
        assert!(err(r#"{"bt":"x","e":[]}"#).contains("\"bt\" must be a number"));
        assert_eq!(
            err(r#"{"bn":"/3/0/","e":[{"n":"1","sv":"a"}, {"n":"2","sv":1}]}"#),
            "json: malformed at byte 39: entry 1: \"sv\" must be a string, found a number"
        );
        assert_eq!(
            err(r#"{"bn":"/3/0/","e":[{"n":"x","v":1}]}"#),
            "json: malformed at byte 19: record 0: name \"/3/0/x\" (bn \"/3/0/\" + n \"x\") is \
             not an LwM2M path: path \"/3/0/x\": segment \"x\" is not an id in 0..=65534"
        );
        assert!(err(r#"{"bn":"/3/0/","e":[{"n":"1","v":1,"sv":"1"}]}"#).contains("already"));
        assert!(err(r#"{"bn":"/3/0/","e":[{"n":"7","ov":"3"}]}"#).contains("object link"));
        assert!(err(r#"{"bn":"/3/","e":[{"n":"0","v":1}]}"#).contains("not a resource"));
        assert!(err(r#"{"bn":"/3/0/","e":[3]}"#).contains("must be a JSON object"));
        assert!(err(r#"{"e":[]"#).contains("EOF"));
    }

    proptest! {
        #[test]
        fn round_trip(recs in json_records()) {
            for base in [Lwm2mPath::Root, senml::base_path(&recs).map_or(Lwm2mPath::Root, |b| b.0)] {
                let mut out = Vec::new();
                encode(&base, &recs, &mut out).unwrap();
                let back = decode(&out, &TestSchema::new(), &mut Vec::new()).unwrap();
                prop_assert_eq!(&back, &recs, "{}", String::from_utf8_lossy(&out));
            }
        }

        #[test]
        fn never_panics_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = dec(&String::from_utf8_lossy(&bytes));
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
