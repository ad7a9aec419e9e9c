//! LwM2M CBOR (`application/vnd.oma.lwm2m+cbor`, 11544, Core TS 1.2 §7.4.6 "LwM2M CBOR")
//! and single-value CBOR (`application/cbor`, 60, Core TS 1.1 §7.4.3 "CBOR").
//!
//! **LwM2M CBOR** is a tree of CBOR maps keyed by the ids of the path. A key is an unsigned
//! integer (one level) or an array of unsigned integers (several levels at once, e.g.
//! `[3, 0]`); a value is either the map of the next level or a leaf value at a resource or
//! resource-instance path. `null` names a path without a value (composite requests).
//!
//! Decoding rules chosen here:
//! - Every id must be at most 65534 (65535 is reserved, Core TS 1.1 §7.1); a path may not
//!   exceed four levels; keys of any other CBOR type and empty key arrays are rejected.
//! - An empty map (e.g. `{[3, 0]: {}}`) is valid and contributes no record: a record needs a
//!   value or an explicit `null`, so an instance without resources leaves no trace.
//! - Two entries for the same path, or an entry below another entry's leaf, are rejected.
//! - Records come out in document order.
//!
//! Encoding rule: the records become a tree sorted by id; down to the resource level, a level
//! with exactly one child is folded into its parent's key, so a read of `/3/0` gives
//! `{[3, 0]: {0: …, 11: {0: 0}}}` (the shape of the Core TS 1.2 §7.4.6 examples) and a single
//! resource gives `{[3, 0, 9]: 100}`. Resource-instance ids are never folded: a multiple
//! resource is always the map of its instances. Maps have definite length; integers and
//! floats use their shortest exact encoding.
//!
//! **Leaf values** (both formats, Core TS 1.1 §7.4.3 data type table): integers as major types
//! 0/1, floats as major type 7 (half, single or double; tag 4 decimal fractions are accepted
//! on decode), strings and Corelnk as text strings, opaque as byte strings, booleans as
//! simple values, Objlnk as the text string `"O:I"`, time as tag 1 (epoch seconds) around an
//! integer; an untagged integer is accepted for a time resource. The schema types numbers and
//! strings through [`typed_number`] / [`typed_string`]; what the format itself types is
//! checked with [`checked_value`].
//!
//! **application/cbor** carries exactly one CBOR data item: the value of a single-instance
//! resource or of one resource instance. Any other level is [`CodecError::Unsupported`].

use std::collections::BTreeMap;

use ciborium::Value as Cbor;

use crate::codec::{
    CodecError, ContentFormat, Finding, Number, checked_value, resource_def, typed_number,
    typed_string,
};
use crate::ids::{Lwm2mPath, MAX_ID};
use crate::model::Schema;
use crate::node::{Node, Record, ResourceValue, ShapeError};
use crate::value::{DataType, ObjectLink, Value};

/// Format name in [`CodecError::Malformed`] for LwM2M CBOR.
const LWM2M_CBOR: &str = "lwm2m-cbor";
/// Format name in [`CodecError::Malformed`] for application/cbor.
const CBOR: &str = "cbor";
/// CBOR nesting accepted by the parser: the root map, four levels of maps, key arrays and a
/// tagged leaf fit well below it.
const MAX_NESTING: usize = 16;
/// CBOR tag for epoch-based date/time (RFC 8949 §3.4.2).
const TAG_EPOCH_TIME: u64 = 1;
/// CBOR tag for decimal fractions (RFC 8949 §3.4.4).
const TAG_DECIMAL_FRACTION: u64 = 4;

/// Decodes an LwM2M CBOR payload into flat records (Core TS 1.2 §7.4.6).
///
/// Structural errors found after the CBOR item was parsed are reported at offset 0 with the
/// LwM2M path where they occur in the reason.
pub fn decode_records(
    bytes: &[u8],
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Vec<Record>, CodecError> {
    let root = parse_item(LWM2M_CBOR, bytes)?;
    let Cbor::Map(entries) = root else {
        return Err(structure(
            Lwm2mPath::Root,
            "the top-level item is not a map",
        ));
    };
    let mut records = Vec::new();
    walk(&entries, &[], schema, findings, &mut records)?;
    check_no_overlap(&records)?;
    Ok(records)
}

/// Encodes records as LwM2M CBOR (Core TS 1.2 §7.4.6), folding single-child levels into
/// array keys. A record without a value becomes `null`; record times are not carried.
pub fn encode_records(records: &[Record], out: &mut Vec<u8>) -> Result<(), CodecError> {
    let mut root = BTreeMap::new();
    for r in records {
        insert(&mut root, r)?;
    }
    write_item(&branch_to_cbor(root, 0), out)
}

/// Decodes an `application/cbor` payload: the value of the single resource or resource
/// instance at `target` (Core TS 1.1 §7.4.3).
pub fn decode_single(
    bytes: &[u8],
    target: &Lwm2mPath,
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Node, CodecError> {
    match target {
        Lwm2mPath::Resource(..) => {
            if resource_def(schema, target).is_some_and(|d| d.multiple) {
                return Err(unsupported("a multiple resource"));
            }
            let item = parse_item(CBOR, bytes)?;
            let v = leaf_value(&item, target, schema, findings)?;
            Ok(Node::Resource(ResourceValue::Single(v)))
        }
        Lwm2mPath::ResourceInstance(..) => {
            let item = parse_item(CBOR, bytes)?;
            Ok(Node::ResourceInstance(leaf_value(
                &item, target, schema, findings,
            )?))
        }
        _ => Err(unsupported(level_name(target))),
    }
}

/// Encodes the value of a single resource or resource instance as `application/cbor`
/// (Core TS 1.1 §7.4.3).
pub fn encode_single(target: &Lwm2mPath, node: &Node, out: &mut Vec<u8>) -> Result<(), CodecError> {
    node.check_level(target)?;
    let v = match node {
        Node::Resource(ResourceValue::Single(v)) | Node::ResourceInstance(v) => v,
        Node::Resource(ResourceValue::Multiple(_)) => {
            return Err(unsupported("a multiple resource"));
        }
        Node::Object(_) | Node::Instance(_) => return Err(unsupported(level_name(target))),
    };
    write_item(&cbor_value(target, v)?, out)
}

fn unsupported(what: &str) -> CodecError {
    CodecError::Unsupported {
        format: ContentFormat::Cbor,
        what: what.into(),
    }
}

fn level_name(path: &Lwm2mPath) -> &'static str {
    match path {
        Lwm2mPath::Root => "the root",
        Lwm2mPath::Object(..) => "an object",
        Lwm2mPath::Instance(..) => "an object instance",
        Lwm2mPath::Resource(..) => "a resource",
        Lwm2mPath::ResourceInstance(..) => "a resource instance",
    }
}

/// An LwM2M CBOR structure error below `path`.
fn structure(path: Lwm2mPath, reason: impl std::fmt::Display) -> CodecError {
    CodecError::malformed(LWM2M_CBOR, 0, format!("at {path}: {reason}"))
}

/// Parses exactly one CBOR data item, with bounded nesting and nothing after it.
fn parse_item(format: &'static str, bytes: &[u8]) -> Result<Cbor, CodecError> {
    use ciborium::de::Error;
    let mut rest = bytes;
    let item: Cbor = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_NESTING)
        .map_err(|e| match e {
            Error::Io(_) => CodecError::malformed(format, bytes.len(), "truncated CBOR item"),
            Error::Syntax(offset) => CodecError::malformed(format, offset, "invalid CBOR"),
            Error::Semantic(offset, reason) => {
                CodecError::malformed(format, offset.unwrap_or(0), reason)
            }
            Error::RecursionLimitExceeded => CodecError::malformed(
                format,
                0,
                format!("CBOR nested deeper than {MAX_NESTING} levels"),
            ),
        })?;
    if !rest.is_empty() {
        let offset = bytes.len() - rest.len();
        return Err(CodecError::malformed(
            format,
            offset,
            "bytes after the CBOR item",
        ));
    }
    Ok(item)
}

fn write_item(item: &Cbor, out: &mut Vec<u8>) -> Result<(), CodecError> {
    ciborium::ser::into_writer(item, out).map_err(|e| CodecError::InvalidValue {
        path: Lwm2mPath::Root,
        reason: format!("CBOR serialization failed: {e}"),
    })
}

/// The ids a map key stands for: one unsigned integer, or a non-empty array of them.
fn key_ids(key: &Cbor, at: Lwm2mPath) -> Result<Vec<u16>, CodecError> {
    let id = |k: &Cbor| match k {
        Cbor::Integer(i) => match u16::try_from(i128::from(*i)) {
            Ok(id) if id != MAX_ID => Ok(id),
            _ => Err(structure(
                at,
                format!("id {} is not in 0..=65534", i128::from(*i)),
            )),
        },
        other => Err(structure(
            at,
            format!("key {} is not an unsigned integer id", describe(other)),
        )),
    };
    match key {
        Cbor::Array(items) if items.is_empty() => Err(structure(at, "empty id array as key")),
        Cbor::Array(items) => items.iter().map(id).collect(),
        k => id(k).map(|i| vec![i]),
    }
}

fn walk(
    entries: &[(Cbor, Cbor)],
    prefix: &[u16],
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
    out: &mut Vec<Record>,
) -> Result<(), CodecError> {
    let here = Lwm2mPath::from_ids(prefix).unwrap_or(Lwm2mPath::Root);
    for (key, value) in entries {
        let mut ids = prefix.to_vec();
        ids.extend(key_ids(key, here)?);
        let Some(path) = Lwm2mPath::from_ids(&ids) else {
            return Err(structure(
                here,
                format!("path {ids:?} is deeper than four levels"),
            ));
        };
        match value {
            Cbor::Map(children) => walk(children, &ids, schema, findings, out)?,
            Cbor::Null => out.push(Record {
                path,
                value: None,
                time: None,
            }),
            leaf => {
                if path.depth() < 3 {
                    return Err(structure(
                        path,
                        format!(
                            "a value ({}) where a resource or resource instance is needed",
                            describe(leaf)
                        ),
                    ));
                }
                let v = leaf_value(leaf, &path, schema, findings)?;
                out.push(Record {
                    path,
                    value: Some(v),
                    time: None,
                });
            }
        }
    }
    Ok(())
}

/// Rejects two records for one path and a record below another one.
fn check_no_overlap(records: &[Record]) -> Result<(), CodecError> {
    // In id order a path sorts right before the paths below it.
    let mut paths: Vec<Lwm2mPath> = records.iter().map(|r| r.path).collect();
    paths.sort_by_key(Lwm2mPath::ids);
    for pair in paths.windows(2) {
        if let [a, b] = pair
            && a.is_prefix_of(b)
        {
            return Err(structure(*b, format!("overlaps the entry for {a}")));
        }
    }
    Ok(())
}

fn describe(v: &Cbor) -> &'static str {
    match v {
        Cbor::Integer(_) => "an integer",
        Cbor::Bytes(_) => "a byte string",
        Cbor::Float(_) => "a float",
        Cbor::Text(_) => "a text string",
        Cbor::Bool(_) => "a boolean",
        Cbor::Null => "null",
        Cbor::Tag(..) => "a tagged item",
        Cbor::Array(_) => "an array",
        Cbor::Map(_) => "a map",
        _ => "an unsupported CBOR item",
    }
}

/// A CBOR number as the format carried it.
fn number(v: &Cbor, path: &Lwm2mPath) -> Result<Number, CodecError> {
    let invalid = |reason: String| CodecError::InvalidValue {
        path: *path,
        reason,
    };
    match v {
        Cbor::Integer(i) => {
            let i = i128::from(*i);
            if let Ok(i) = i64::try_from(i) {
                Ok(Number::Int(i))
            } else if let Ok(u) = u64::try_from(i) {
                Ok(Number::Uint(u))
            } else {
                Err(invalid(format!("integer {i} does not fit 64 bits")))
            }
        }
        Cbor::Float(f) if f.is_finite() => Ok(Number::Float(*f)),
        Cbor::Float(f) => Err(invalid(format!("{f} is not a finite number"))),
        Cbor::Tag(TAG_DECIMAL_FRACTION, inner) => match inner.as_ref() {
            Cbor::Array(parts) => match parts.as_slice() {
                [Cbor::Integer(e), Cbor::Integer(m)] => {
                    let (e, m) = (i128::from(*e), i128::from(*m));
                    match format!("{m}e{e}").parse::<f64>() {
                        Ok(f) if f.is_finite() => Ok(Number::Float(f)),
                        _ => Err(invalid(format!("decimal fraction {m}e{e} is out of range"))),
                    }
                }
                _ => Err(invalid(
                    "decimal fraction is not [exponent, mantissa]".into(),
                )),
            },
            _ => Err(invalid("decimal fraction is not an array".into())),
        },
        other => Err(invalid(format!("{} is not a number", describe(other)))),
    }
}

/// Types one leaf CBOR item found at `path`.
fn leaf_value(
    v: &Cbor,
    path: &Lwm2mPath,
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Value, CodecError> {
    Ok(match v {
        Cbor::Integer(_) | Cbor::Float(_) | Cbor::Tag(TAG_DECIMAL_FRACTION, _) => {
            typed_number(schema, path, number(v, path)?, findings)
        }
        Cbor::Tag(TAG_EPOCH_TIME, inner) => {
            let t = match number(inner, path)? {
                Number::Int(i) => Some(i),
                Number::Uint(u) => i64::try_from(u).ok(),
                Number::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Some(f as i64),
                Number::Float(_) => None,
            };
            let t = t.ok_or_else(|| CodecError::InvalidValue {
                path: *path,
                reason: "epoch time is not a whole number of seconds in 64 bits".into(),
            })?;
            checked_value(schema, path, Value::Time(t), findings)
        }
        Cbor::Text(s) => {
            let registry_type = resource_def(schema, path).map(|d| d.data_type);
            match (registry_type, s.parse::<ObjectLink>()) {
                (Some(DataType::Objlnk), Ok(link)) => {
                    checked_value(schema, path, Value::Objlnk(link), findings)
                }
                _ => typed_string(schema, path, s.clone(), findings),
            }
        }
        Cbor::Bytes(b) => checked_value(schema, path, Value::Opaque(b.clone()), findings),
        Cbor::Bool(b) => checked_value(schema, path, Value::Boolean(*b), findings),
        Cbor::Tag(tag, _) => {
            return Err(CodecError::InvalidValue {
                path: *path,
                reason: format!("unsupported CBOR tag {tag}"),
            });
        }
        other => {
            return Err(CodecError::InvalidValue {
                path: *path,
                reason: format!("{} is not a resource value", describe(other)),
            });
        }
    })
}

/// The CBOR data item for a value (inverse of [`leaf_value`]).
fn cbor_value(path: &Lwm2mPath, v: &Value) -> Result<Cbor, CodecError> {
    Ok(match v {
        Value::String(s) | Value::Corelnk(s) => Cbor::Text(s.clone()),
        Value::Integer(i) => Cbor::Integer((*i).into()),
        Value::UnsignedInteger(u) => Cbor::Integer((*u).into()),
        Value::Float(f) => Cbor::Float(*f),
        Value::Boolean(b) => Cbor::Bool(*b),
        Value::Opaque(b) => Cbor::Bytes(b.clone()),
        Value::Time(t) => Cbor::Tag(TAG_EPOCH_TIME, Box::new(Cbor::Integer((*t).into()))),
        Value::Objlnk(l) => Cbor::Text(l.to_string()),
        Value::None => {
            return Err(CodecError::InvalidValue {
                path: *path,
                reason: "a resource without a value (executable) cannot be encoded".into(),
            });
        }
    })
}

/// The encoder's tree: a leaf item or the children of one level by id.
enum Tree {
    Leaf(Cbor),
    Branch(BTreeMap<u16, Tree>),
}

fn insert(root: &mut BTreeMap<u16, Tree>, r: &Record) -> Result<(), CodecError> {
    let conflict = || CodecError::Shape(ShapeError::Conflict { path: r.path });
    let ids = r.path.ids();
    let leaf = match &r.value {
        Some(_) if r.path.depth() < 3 => {
            return Err(CodecError::Shape(ShapeError::NotAValuePath {
                record: r.path,
            }));
        }
        Some(v) => cbor_value(&r.path, v)?,
        None => Cbor::Null,
    };
    let Some((last, parents)) = ids.split_last() else {
        return Err(CodecError::Shape(ShapeError::NotAValuePath {
            record: r.path,
        }));
    };
    let mut level = root;
    for id in parents {
        let node = level
            .entry(*id)
            .or_insert_with(|| Tree::Branch(BTreeMap::new()));
        level = match node {
            Tree::Branch(children) => children,
            Tree::Leaf(_) => return Err(conflict()),
        };
    }
    if level.insert(*last, Tree::Leaf(leaf)).is_some() {
        return Err(conflict());
    }
    Ok(())
}

/// The map for the children of a level `depth` ids deep.
fn branch_to_cbor(children: BTreeMap<u16, Tree>, depth: usize) -> Cbor {
    let entries = children
        .into_iter()
        .map(|(id, mut node)| {
            let mut ids = vec![id];
            loop {
                match node {
                    Tree::Branch(mut m) if m.len() == 1 && depth + ids.len() < 3 => {
                        match m.pop_first() {
                            Some((next, child)) => {
                                ids.push(next);
                                node = child;
                            }
                            None => break (key(ids), Cbor::Map(Vec::new())),
                        }
                    }
                    Tree::Branch(m) => {
                        let below = depth + ids.len();
                        break (key(ids), branch_to_cbor(m, below));
                    }
                    Tree::Leaf(v) => break (key(ids), v),
                }
            }
        })
        .collect();
    Cbor::Map(entries)
}

fn key(ids: Vec<u16>) -> Cbor {
    match ids.as_slice() {
        [one] => Cbor::Integer((*one).into()),
        _ => Cbor::Array(ids.into_iter().map(|i| Cbor::Integer(i.into())).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{self, ContentFormat};
    use crate::ids::{ObjectId, ResourceId};
    use crate::model::{NoSchema, ObjectDef, Operations, ResourceDef};
    use proptest::prelude::*;

    fn res(id: u16, ty: DataType, multiple: bool) -> (ResourceId, ResourceDef) {
        let def = ResourceDef::new(id, format!("r{id}"), Operations::RW, ty, multiple);
        (def.id, def)
    }

    /// The resources of the Device object (3) the examples use.
    fn device() -> ObjectDef {
        ObjectDef {
            id: ObjectId(3),
            name: "Device".into(),
            description: String::new(),
            urn: "urn:oma:lwm2m:oma:3".into(),
            version: "1.0".into(),
            lwm2m_version: "1.0".into(),
            multiple: false,
            mandatory: true,
            resources: [
                res(0, DataType::String, false),
                res(1, DataType::String, false),
                res(2, DataType::String, false),
                res(3, DataType::String, false),
                res(6, DataType::Integer, true),
                res(7, DataType::Integer, true),
                res(8, DataType::Integer, true),
                res(9, DataType::Integer, false),
                res(10, DataType::Integer, false),
                res(11, DataType::Integer, true),
                res(13, DataType::Time, false),
                res(14, DataType::String, false),
                res(16, DataType::String, false),
                res(17, DataType::String, false),
                res(22, DataType::Objlnk, true),
            ]
            .into(),
        }
    }

    const TYPES: [DataType; 9] = [
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

    /// Object 9999: resource `n` single of `TYPES[n]`, `100 + n` multiple of the same type.
    fn every_type() -> ObjectDef {
        let mut d = device();
        d.id = ObjectId(9999);
        d.resources = TYPES
            .iter()
            .enumerate()
            .flat_map(|(n, ty)| [res(n as u16, *ty, false), res(100 + n as u16, *ty, true)])
            .collect();
        d
    }

    fn cbor(diag: Cbor) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(&diag, &mut out).unwrap();
        out
    }

    fn int(i: i64) -> Cbor {
        Cbor::Integer(i.into())
    }

    fn text(s: &str) -> Cbor {
        Cbor::Text(s.into())
    }

    fn ids(ids: &[i64]) -> Cbor {
        Cbor::Array(ids.iter().map(|i| int(*i)).collect())
    }

    fn map(entries: Vec<(Cbor, Cbor)>) -> Cbor {
        Cbor::Map(entries)
    }

    fn rec(path: Lwm2mPath, v: Value) -> Record {
        Record {
            path,
            value: Some(v),
            time: None,
        }
    }

    /// Core TS 1.2 §7.4.6, Device object instance read (`GET /3/0`, Accept 11544):
    /// `{[3, 0]: {0: "Open Mobile Alliance", 1: "Lightweight M2M Client", 2: "345000123",
    /// 3: "1.0", 6: {0: 1, 1: 5}, 7: {0: 3800, 1: 5000}, 8: {0: 125, 1: 900}, 9: 100,
    /// 10: 15, 11: {0: 0}, 13: 1(1367491215), 14: "+02:00", 16: "U"}}`.
    fn device_example() -> (Vec<u8>, Node) {
        let payload = map(vec![(
            ids(&[3, 0]),
            map(vec![
                (int(0), text("Open Mobile Alliance")),
                (int(1), text("Lightweight M2M Client")),
                (int(2), text("345000123")),
                (int(3), text("1.0")),
                (int(6), map(vec![(int(0), int(1)), (int(1), int(5))])),
                (int(7), map(vec![(int(0), int(3800)), (int(1), int(5000))])),
                (int(8), map(vec![(int(0), int(125)), (int(1), int(900))])),
                (int(9), int(100)),
                (int(10), int(15)),
                (int(11), map(vec![(int(0), int(0))])),
                (int(13), Cbor::Tag(1, Box::new(int(1_367_491_215)))),
                (int(14), text("+02:00")),
                (int(16), text("U")),
            ]),
        )]);
        let s = |v: &str| ResourceValue::Single(Value::String(v.into()));
        let i = |v: i64| ResourceValue::Single(Value::Integer(v));
        let m = |vs: &[i64]| {
            ResourceValue::Multiple(
                vs.iter()
                    .enumerate()
                    .map(|(n, v)| ((n as u16).into(), Value::Integer(*v)))
                    .collect(),
            )
        };
        let inst = [
            (0, s("Open Mobile Alliance")),
            (1, s("Lightweight M2M Client")),
            (2, s("345000123")),
            (3, s("1.0")),
            (6, m(&[1, 5])),
            (7, m(&[3800, 5000])),
            (8, m(&[125, 900])),
            (9, i(100)),
            (10, i(15)),
            (11, m(&[0])),
            (13, ResourceValue::Single(Value::Time(1_367_491_215))),
            (14, s("+02:00")),
            (16, s("U")),
        ]
        .into_iter()
        .map(|(r, v)| (ResourceId(r), v))
        .collect();
        (cbor(payload), Node::Instance(inst))
    }

    #[test]
    fn device_instance_example_round_trips() {
        let (bytes, node) = device_example();
        let path = Lwm2mPath::instance(3, 0);
        let d = content::decode(ContentFormat::Lwm2mCbor, &bytes, &path, &device()).unwrap();
        assert_eq!(d.content, node);
        assert!(d.findings.is_empty(), "{:?}", d.findings);
        let encoded = content::encode(ContentFormat::Lwm2mCbor, &path, &node).unwrap();
        assert_eq!(hex::encode(&encoded), hex::encode(&bytes));
    }

    /// The key forms of Core TS 1.2 §7.4.6 are equivalent: nested single ids, one id array,
    /// and mixtures of both name the same resources.
    #[test]
    fn key_forms_are_equivalent() {
        let expected = vec![
            rec(Lwm2mPath::resource(3, 0, 9), Value::Integer(42)),
            rec(Lwm2mPath::resource(3, 0, 10), Value::Integer(21)),
        ];
        let forms = [
            // {3: {0: {9: 42, 10: 21}}}
            "a103a100a209182a0a15",
            // {[3, 0]: {9: 42, 10: 21}}
            "a1820300a209182a0a15",
            // {[3, 0, 9]: 42, [3, 0, 10]: 21}
            "a283030009182a8303000a15",
            // {[3, 0]: {[9]: 42}, [3, 0, 10]: 21}
            "a2820300a18109182a8303000a15",
            // indefinite-length maps and arrays: {_ [_ 3, 0]: {_ 9: 42, 10: 21}}
            "bf9f0300ffbf09182a0a15ffff",
        ];
        for form in forms {
            let bytes = hex::decode(form).unwrap();
            let mut f = Vec::new();
            let got = decode_records(&bytes, &device(), &mut f).unwrap();
            assert_eq!(got, expected, "{form}");
            assert!(f.is_empty());
        }
        let mut out = Vec::new();
        encode_records(&expected, &mut out).unwrap();
        assert_eq!(hex::encode(out), "a1820300a209182a0a15");
    }

    #[test]
    fn single_record_folds_into_one_key_and_null_names_a_path() {
        let records = vec![
            rec(Lwm2mPath::resource(3, 0, 9), Value::Integer(100)),
            Record {
                path: Lwm2mPath::instance(1, 0),
                value: None,
                time: None,
            },
        ];
        let mut out = Vec::new();
        encode_records(&records, &mut out).unwrap();
        // {[1, 0]: null, [3, 0, 9]: 100}
        assert_eq!(hex::encode(&out), "a2820100f6830300091864");
        let mut f = Vec::new();
        let mut back = decode_records(&out, &device(), &mut f).unwrap();
        back.sort_by_key(|r| r.path);
        let mut want = records;
        want.sort_by_key(|r| r.path);
        assert_eq!(back, want);
    }

    #[test]
    fn values_are_typed_by_the_schema() {
        // {[3, 0]: {13: 1367491215, 22: {0: "3:1"}}}: untagged time, objlnk as text.
        let bytes = cbor(map(vec![(
            ids(&[3, 0]),
            map(vec![
                (int(13), int(1_367_491_215)),
                (int(22), map(vec![(int(0), text("3:1"))])),
            ]),
        )]));
        let mut f = Vec::new();
        let got = decode_records(&bytes, &device(), &mut f).unwrap();
        assert_eq!(
            got,
            vec![
                rec(Lwm2mPath::resource(3, 0, 13), Value::Time(1_367_491_215)),
                rec(
                    Lwm2mPath::resource_instance(3, 0, 22, 0),
                    Value::Objlnk(ObjectLink {
                        object: 3,
                        instance: 1
                    })
                ),
            ]
        );
        assert!(f.is_empty());
        // Without a schema the format's own types stand, and unknowns are reported.
        let mut f = Vec::new();
        let got = decode_records(&bytes, &NoSchema, &mut f).unwrap();
        assert_eq!(got[0].value, Some(Value::Integer(1_367_491_215)));
        assert_eq!(got[1].value, Some(Value::String("3:1".into())));
        assert_eq!(f.len(), 2);
        // A string where the registry wants an integer is kept and flagged.
        let bytes = cbor(map(vec![(ids(&[3, 0, 9]), text("100"))]));
        let mut f = Vec::new();
        let got = decode_records(&bytes, &device(), &mut f).unwrap();
        assert_eq!(got[0].value, Some(Value::String("100".into())));
        assert!(matches!(f.as_slice(), [Finding::TypeMismatch { .. }]));
    }

    #[test]
    fn empty_maps_give_no_records() {
        for form in ["a0", "a1820300a0", "a103a100a0"] {
            let mut f = Vec::new();
            let got = decode_records(&hex::decode(form).unwrap(), &device(), &mut f).unwrap();
            assert!(got.is_empty(), "{form}");
        }
        let d = content::decode(
            ContentFormat::Lwm2mCbor,
            &hex::decode("a1820300a0").unwrap(),
            &Lwm2mPath::instance(3, 0),
            &device(),
        )
        .unwrap();
        assert_eq!(d.content, Node::Instance(Default::default()));
    }

    #[test]
    fn malformed_lwm2m_cbor_is_rejected() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "truncated"),
            (hex::decode("ff").unwrap(), "invalid"),
            (hex::decode("a1").unwrap(), "truncated"),
            (hex::decode("a0a0").unwrap(), "after the CBOR item"),
            (cbor(int(3)), "not a map"),
            (
                cbor(map(vec![(text("3"), int(1))])),
                "not an unsigned integer",
            ),
            (cbor(map(vec![(int(-1), int(1))])), "not in 0..=65534"),
            (cbor(map(vec![(int(65535), int(1))])), "not in 0..=65534"),
            (cbor(map(vec![(int(70000), int(1))])), "not in 0..=65534"),
            (cbor(map(vec![(ids(&[]), int(1))])), "empty id array"),
            (
                cbor(map(vec![(ids(&[3, 0, 1, 2, 5]), int(1))])),
                "deeper than four",
            ),
            (
                cbor(map(vec![(int(3), map(vec![(ids(&[0, 1, 2, 3]), int(1))]))])),
                "deeper than four",
            ),
            (
                cbor(map(vec![(ids(&[3, 0]), int(1))])),
                "resource or resource instance",
            ),
            (
                cbor(map(vec![
                    (ids(&[3, 0, 9]), int(1)),
                    (ids(&[3, 0, 9]), int(2)),
                ])),
                "overlaps",
            ),
            (
                cbor(map(vec![
                    (ids(&[3, 0, 6]), int(1)),
                    (ids(&[3, 0, 6, 0]), int(2)),
                ])),
                "overlaps",
            ),
        ];
        for (bytes, want) in cases {
            let mut f = Vec::new();
            let err = decode_records(&bytes, &device(), &mut f).unwrap_err();
            assert!(
                matches!(err, CodecError::Malformed { .. }) && err.to_string().contains(want),
                "{bytes:02x?}: {err}"
            );
        }
        // Values that are no LwM2M value.
        for leaf in [
            ids(&[1]),
            Cbor::Tag(32, Box::new(text("coap://x"))),
            Cbor::Float(f64::NAN),
            Cbor::Integer((-(1i128 << 64)).try_into().unwrap()),
            Cbor::Tag(1, Box::new(Cbor::Float(1.5))),
        ] {
            let bytes = cbor(map(vec![(ids(&[3, 0, 9]), leaf.clone())]));
            let mut f = Vec::new();
            let err = decode_records(&bytes, &device(), &mut f).unwrap_err();
            assert!(
                matches!(err, CodecError::InvalidValue { .. }),
                "{leaf:?}: {err}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_bounded() {
        // 10,000 nested arrays as a key, then 10,000 nested maps.
        let mut arrays = vec![0xa1u8];
        arrays.extend(std::iter::repeat_n(0x81, 10_000));
        arrays.extend([0x00, 0x00]);
        let mut maps = vec![];
        maps.extend(std::iter::repeat_n([0xa1u8, 0x00], 10_000).flatten());
        maps.push(0x00);
        // Declared lengths far beyond the input must not allocate them.
        let huge = [
            "a1015bffffffffffffffff",
            "a1019bffffffffffffffff",
            "bbffffffffffffffff",
        ];
        let huge = huge.iter().map(|h| hex::decode(h).unwrap());
        for bytes in [arrays, maps].into_iter().chain(huge) {
            let mut f = Vec::new();
            assert!(decode_records(&bytes, &device(), &mut f).is_err());
        }
    }

    #[test]
    fn encoder_rejects_unrepresentable_records() {
        let mut out = Vec::new();
        let at_instance = [rec(Lwm2mPath::instance(3, 0), Value::Integer(1))];
        assert!(encode_records(&at_instance, &mut out).is_err());
        let root = [Record {
            path: Lwm2mPath::Root,
            value: None,
            time: None,
        }];
        assert!(encode_records(&root, &mut out).is_err());
        let twice = [
            rec(Lwm2mPath::resource(3, 0, 9), Value::Integer(1)),
            rec(Lwm2mPath::resource(3, 0, 9), Value::Integer(2)),
        ];
        assert!(encode_records(&twice, &mut out).is_err());
        let below_leaf = [
            rec(Lwm2mPath::resource(3, 0, 6), Value::Integer(1)),
            rec(Lwm2mPath::resource_instance(3, 0, 6, 0), Value::Integer(2)),
        ];
        assert!(encode_records(&below_leaf, &mut out).is_err());
        let executable = [rec(Lwm2mPath::resource(3, 0, 4), Value::None)];
        assert!(encode_records(&executable, &mut out).is_err());
    }

    /// Core TS 1.1 §7.4.3: a single resource value as one CBOR data item.
    #[test]
    fn single_values_match_the_cbor_data_type_table() {
        let o = ObjectLink {
            object: 3,
            instance: 0,
        };
        let cases = [
            (0, Value::String("ACME".into()), "6441434d45"),
            (1, Value::Integer(-5), "24"),
            (2, Value::UnsignedInteger(u64::MAX), "1bffffffffffffffff"),
            (3, Value::Float(1.5), "f93e00"),
            (3, Value::Float(0.1), "fb3fb999999999999a"),
            (4, Value::Boolean(true), "f5"),
            (5, Value::Opaque(vec![1, 2]), "420102"),
            (6, Value::Time(1_700_000_000), "c11a6553f100"),
            (7, Value::Objlnk(o), "63333a30"),
            (8, Value::Corelnk("</3/0>".into()), "663c2f332f303e"),
        ];
        let schema = every_type();
        for (r, v, want) in cases {
            let path = Lwm2mPath::resource(9999, 0, r);
            let node = Node::Resource(ResourceValue::Single(v));
            let bytes = content::encode(ContentFormat::Cbor, &path, &node).unwrap();
            assert_eq!(hex::encode(&bytes), want, "{node:?}");
            let d = content::decode(ContentFormat::Cbor, &bytes, &path, &schema).unwrap();
            assert_eq!(d.content, node);
            assert!(d.findings.is_empty(), "{:?}", d.findings);
        }
        // Accepted on decode: untagged time, decimal fractions, single-precision floats.
        let decode = |r: u16, h: &str| {
            let path = Lwm2mPath::resource(9999, 0, r);
            content::decode(
                ContentFormat::Cbor,
                &hex::decode(h).unwrap(),
                &path,
                &schema,
            )
            .unwrap()
            .content
        };
        let single = |v| Node::Resource(ResourceValue::Single(v));
        assert_eq!(decode(6, "1a6553f100"), single(Value::Time(1_700_000_000)));
        assert_eq!(decode(3, "c482211903e7"), single(Value::Float(9.99)));
        assert_eq!(decode(3, "fa3fc00000"), single(Value::Float(1.5)));
        assert_eq!(decode(3, "02"), single(Value::Float(2.0)));
    }

    #[test]
    fn cbor_is_for_single_values_only() {
        let schema = every_type();
        let mut f = Vec::new();
        for path in [
            Lwm2mPath::Root,
            Lwm2mPath::object(9999),
            Lwm2mPath::instance(9999, 0),
            Lwm2mPath::resource(9999, 0, 101),
        ] {
            let err = decode_single(&[0x01], &path, &schema, &mut f).unwrap_err();
            assert!(
                matches!(err, CodecError::Unsupported { .. }),
                "{path}: {err}"
            );
        }
        let multiple = Node::Resource(ResourceValue::Multiple(Default::default()));
        let mut out = Vec::new();
        assert!(matches!(
            encode_single(&Lwm2mPath::resource(9999, 0, 101), &multiple, &mut out),
            Err(CodecError::Unsupported { .. })
        ));
        let path = Lwm2mPath::resource(9999, 0, 1);
        for bad in ["", "0102", "a0", "80", "f6", "ff"] {
            let err = decode_single(&hex::decode(bad).unwrap(), &path, &schema, &mut f);
            assert!(err.is_err(), "{bad}");
        }
    }

    fn value_of(ty: DataType) -> BoxedStrategy<Value> {
        match ty {
            DataType::String => ".{0,12}".prop_map(Value::String).boxed(),
            DataType::Corelnk => "</[0-9]{1,3}>".prop_map(Value::Corelnk).boxed(),
            DataType::Integer => any::<i64>().prop_map(Value::Integer).boxed(),
            DataType::UnsignedInteger => any::<u64>().prop_map(Value::UnsignedInteger).boxed(),
            DataType::Time => any::<i64>().prop_map(Value::Time).boxed(),
            DataType::Float => prop_oneof![
                any::<f64>().prop_filter("finite", |f| f.is_finite()),
                any::<f32>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(f64::from),
                (-100i32..100).prop_map(f64::from),
            ]
            .prop_map(Value::Float)
            .boxed(),
            DataType::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
            DataType::Opaque => proptest::collection::vec(any::<u8>(), 0..12)
                .prop_map(Value::Opaque)
                .boxed(),
            DataType::Objlnk => any::<(u16, u16)>()
                .prop_map(|(object, instance)| Value::Objlnk(ObjectLink { object, instance }))
                .boxed(),
            DataType::None => Just(Value::None).boxed(),
        }
    }

    /// Records at resource (`/9999/i/n`) and resource-instance (`/9999/i/100+n/ri`) level.
    fn records() -> impl Strategy<Value = Vec<Record>> {
        let one = (0usize..TYPES.len(), 0u16..3, any::<bool>(), 0u16..3).prop_flat_map(
            |(n, i, multiple, ri)| {
                let path = if multiple {
                    Lwm2mPath::resource_instance(9999, i, 100 + n as u16, ri)
                } else {
                    Lwm2mPath::resource(9999, i, n as u16)
                };
                value_of(TYPES[n]).prop_map(move |v| rec(path, v))
            },
        );
        proptest::collection::vec(one, 0..12).prop_map(|rs| {
            let mut by_path = BTreeMap::new();
            for r in rs {
                by_path.insert(r.path.ids(), r);
            }
            by_path.into_values().collect()
        })
    }

    proptest! {
        #[test]
        fn records_round_trip(records in records()) {
            let mut out = Vec::new();
            encode_records(&records, &mut out).unwrap();
            let mut f = Vec::new();
            let back = decode_records(&out, &every_type(), &mut f).unwrap();
            prop_assert_eq!(back, records);
            prop_assert!(f.is_empty(), "{:?}", f);
        }

        #[test]
        fn single_values_round_trip((n, v) in (0usize..TYPES.len()).prop_flat_map(|n| value_of(TYPES[n]).prop_map(move |v| (n, v)))) {
            let schema = every_type();
            for (path, node) in [
                (Lwm2mPath::resource(9999, 1, n as u16), Node::Resource(ResourceValue::Single(v.clone()))),
                (Lwm2mPath::resource_instance(9999, 1, 100 + n as u16, 4), Node::ResourceInstance(v.clone())),
            ] {
                let mut out = Vec::new();
                encode_single(&path, &node, &mut out).unwrap();
                let mut f = Vec::new();
                prop_assert_eq!(decode_single(&out, &path, &schema, &mut f).unwrap(), node);
                prop_assert!(f.is_empty());
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut f = Vec::new();
            let _ = decode_records(&bytes, &every_type(), &mut f);
            let _ = decode_single(&bytes, &Lwm2mPath::resource(9999, 0, 3), &every_type(), &mut f);
        }

        #[test]
        fn mutated_payloads_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4), cut in any::<prop::sample::Index>()) {
            let (mut bytes, _) = device_example();
            for (i, x) in flips {
                let i = i.index(bytes.len());
                bytes[i] ^= x;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            let mut f = Vec::new();
            let _ = decode_records(&bytes, &device(), &mut f);
        }
    }
}
