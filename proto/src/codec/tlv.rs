//! TLV, `application/vnd.oma.lwm2m+tlv` (Core TS 1.0 §6.4.3, Core TS 1.1 §7.4.3).
//!
//! Each entry is a type byte, an 8- or 16-bit identifier, an optional 8/16/24-bit length
//! and the value. Bits 7-6 of the type say what the identifier names: `00` an object
//! instance (its value is resource TLVs), `01` a resource instance, `10` a multiple
//! resource (its value is resource instance TLVs), `11` a resource with its value.
//!
//! What [`decode`] accepts at each target:
//! - `/O`: object instance TLVs only. Resource TLVs at the top level are an error: a Node
//!   cannot hold an instance without an id, so a Create that lets the client pick the id
//!   (Core TS 1.1 §5.4.5) is decoded by the client at the `/O/I` it chose.
//! - `/O/I`: resource TLVs, or one object instance TLV with id `I` wrapping them (both are
//!   sent by real clients; Core TS 1.0 §6.4.3.2 shows the wrapped form).
//! - `/O/I/R`: one resource TLV (`11`) or one multiple resource TLV (`10`) with id `R`;
//!   a bare sequence of resource instance TLVs is also accepted as the multiple resource,
//!   with [`Finding::UnwrappedResourceInstances`].
//! - `/O/I/R/RI`: one resource instance TLV with id `RI`.
//!
//! TLV carries no types: values are typed by the [`Schema`]. A value that does not fit its
//! type is kept (as a string or opaque bytes) and reported as [`Finding::TypeMismatch`].
//! One heuristic serves pre-1.0 peers (the Location object's coordinates were strings
//! before LwM2M 1.0, see the project mission): a Float resource whose bytes are a decimal
//! number in ASCII (`b"45.5"`) is kept as that string rather than read as a nonsense float.
//! Unknown resources are kept as opaque bytes. Whether a resource is multiple follows the
//! type bits; disagreement with the schema is reported as [`Finding::MultiplicityMismatch`].
//!
//! [`encode`] writes integers in the fewest bytes (1, 2, 4 or 8), floats in 4 bytes when
//! the value is exactly a 32-bit float (and its 4 bytes cannot be mistaken for decimal
//! text by the heuristic above) else 8, identifiers in 8 bits when below 256, and the
//! shortest length field. Nesting is at most object instance → multiple resource →
//! resource instance, enforced by the decoder's structure.

use std::collections::BTreeMap;

use crate::codec::{self, CodecError, ContentFormat, Finding};
use crate::ids::{InstanceId, Lwm2mPath, MAX_ID, ObjectId, ResourceId, ResourceInstanceId};
use crate::model::Schema;
use crate::node::{Instance, Node, ResourceValue, ShapeError};
use crate::value::{DataType, ObjectLink, Value};

const FORMAT: &str = "tlv";

/// The longest value a TLV length field can express (24 bits).
const MAX_LENGTH: usize = 0xFF_FFFF;

/// What a TLV's identifier names (type bits 7-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ObjectInstance,
    ResourceInstance,
    MultipleResource,
    ResourceWithValue,
}

impl Kind {
    fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0b00 => Self::ObjectInstance,
            0b01 => Self::ResourceInstance,
            0b10 => Self::MultipleResource,
            _ => Self::ResourceWithValue,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Self::ObjectInstance => 0b00,
            Self::ResourceInstance => 0b01,
            Self::MultipleResource => 0b10,
            Self::ResourceWithValue => 0b11,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::ObjectInstance => "object instance",
            Self::ResourceInstance => "resource instance",
            Self::MultipleResource => "multiple resource",
            Self::ResourceWithValue => "resource",
        }
    }

    fn is_resource(self) -> bool {
        matches!(self, Self::MultipleResource | Self::ResourceWithValue)
    }
}

/// One decoded TLV header with its value, and where it sits in the whole payload.
struct Tlv<'a> {
    kind: Kind,
    id: u16,
    value: &'a [u8],
    /// Offset of the type byte.
    start: usize,
    /// Offset of the first value byte.
    value_start: usize,
}

impl Tlv<'_> {
    fn unexpected(&self, context: &str) -> CodecError {
        CodecError::malformed(
            FORMAT,
            self.start,
            format!("{} TLV {} {context}", self.kind.name(), self.id),
        )
    }
}

/// Splits `bytes` (found at offset `base` of the payload) into a sequence of TLVs.
/// Every TLV takes at least two bytes, so the list is bounded by the input length.
fn parse(bytes: &[u8], base: usize) -> Result<Vec<Tlv<'_>>, CodecError> {
    let mut tlvs = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let (tlv, next) = parse_one(bytes, pos, base)?;
        tlvs.push(tlv);
        pos = next;
    }
    Ok(tlvs)
}

/// Reads the TLV at `pos`; returns it and the position after it.
fn parse_one(bytes: &[u8], pos: usize, base: usize) -> Result<(Tlv<'_>, usize), CodecError> {
    let start = base.saturating_add(pos);
    let truncated = |what: &str| {
        CodecError::malformed(
            FORMAT,
            start,
            format!(
                "TLV truncated in its {what} ({} bytes left)",
                bytes.len().saturating_sub(pos)
            ),
        )
    };
    let take = |at: usize, n: usize| at.checked_add(n).and_then(|end| bytes.get(at..end));
    let t = *bytes.get(pos).ok_or_else(|| truncated("type byte"))?;
    let mut at = pos.saturating_add(1);
    let id_len = if t & 0x20 != 0 { 2 } else { 1 };
    let id = match take(at, id_len) {
        Some(&[a]) => u16::from(a),
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => return Err(truncated("identifier")),
    };
    if id == MAX_ID {
        return Err(CodecError::malformed(
            FORMAT,
            start,
            "identifier 65535 is reserved (Core TS 1.1 §7.1)",
        ));
    }
    at = at.saturating_add(id_len);
    let length_kind = usize::from((t >> 3) & 0b11);
    let length = if length_kind == 0 {
        usize::from(t & 0b111)
    } else {
        let length = match take(at, length_kind) {
            Some(&[a]) => usize::from(a),
            Some(&[a, b]) => usize::from(u16::from_be_bytes([a, b])),
            Some(&[a, b, c]) => usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c),
            _ => return Err(truncated("length field")),
        };
        at = at.saturating_add(length_kind);
        length
    };
    let kind = Kind::from_bits(t >> 6);
    let value = take(at, length).ok_or_else(|| {
        CodecError::malformed(
            FORMAT,
            start,
            format!(
                "{} TLV {id} declares {length} value bytes, only {} remain",
                kind.name(),
                bytes.len().saturating_sub(at)
            ),
        )
    })?;
    let tlv = Tlv {
        kind,
        id,
        value,
        start,
        value_start: base.saturating_add(at),
    };
    Ok((tlv, at.saturating_add(length)))
}

/// The TLVs nested in an object instance or multiple resource TLV.
fn children<'a>(tlv: &Tlv<'a>) -> Result<Vec<Tlv<'a>>, CodecError> {
    parse(tlv.value, tlv.value_start)
}

/// Decodes a TLV payload answering a request on `target` (Read, Write, Create,
/// notifications), typing values by `schema`. See the module documentation for what is
/// accepted at each level (Core TS 1.1 §7.4.3).
pub fn decode(
    bytes: &[u8],
    target: &Lwm2mPath,
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Node, CodecError> {
    let tlvs = parse(bytes, 0)?;
    let outside = |record: Lwm2mPath| {
        CodecError::from(ShapeError::OutsideTarget {
            target: *target,
            record,
        })
    };
    match *target {
        Lwm2mPath::Root => Err(CodecError::Unsupported {
            format: ContentFormat::Tlv,
            what: "content at the root path /".into(),
        }),
        Lwm2mPath::Object(o) => {
            let mut instances = BTreeMap::new();
            for t in &tlvs {
                if t.kind != Kind::ObjectInstance {
                    return Err(t.unexpected(
                        "at the top level of an object payload (only object instance TLVs; \
                         a Create without instance id is decoded at the /O/I the client picks)",
                    ));
                }
                let i = InstanceId(t.id);
                let instance = decode_instance(&children(t)?, o, i, schema, findings)?;
                if instances.insert(i, instance).is_some() {
                    return Err(ShapeError::Conflict {
                        path: Lwm2mPath::Instance(o, i),
                    }
                    .into());
                }
            }
            Ok(Node::Object(instances))
        }
        Lwm2mPath::Instance(o, i) => match tlvs.as_slice() {
            [t] if t.kind == Kind::ObjectInstance => {
                if t.id != i.0 {
                    return Err(outside(Lwm2mPath::Instance(o, InstanceId(t.id))));
                }
                Ok(Node::Instance(decode_instance(
                    &children(t)?,
                    o,
                    i,
                    schema,
                    findings,
                )?))
            }
            _ => Ok(Node::Instance(decode_instance(
                &tlvs, o, i, schema, findings,
            )?)),
        },
        Lwm2mPath::Resource(o, i, r) => match tlvs.as_slice() {
            [t] if t.kind.is_resource() => {
                if t.id != r.0 {
                    return Err(outside(Lwm2mPath::Resource(o, i, ResourceId(t.id))));
                }
                Ok(Node::Resource(decode_resource(
                    t,
                    (o, i, r),
                    schema,
                    findings,
                )?))
            }
            ts if !ts.is_empty() && ts.iter().all(|t| t.kind == Kind::ResourceInstance) => {
                findings.push(Finding::UnwrappedResourceInstances { path: *target });
                let ty = resource_type(schema, target, true, findings);
                let instances = decode_resource_instances(ts, (o, i, r), ty, findings)?;
                Ok(Node::Resource(ResourceValue::Multiple(instances)))
            }
            [] => Err(CodecError::malformed(
                FORMAT,
                0,
                format!("empty payload where resource {target} is expected"),
            )),
            [first, rest @ ..] => {
                // After one resource TLV, anything more is wrong; otherwise the first
                // TLV that is not a resource instance is.
                let offending = if first.kind.is_resource() {
                    rest.first()
                } else {
                    tlvs.iter().find(|t| t.kind != Kind::ResourceInstance)
                };
                Err(offending
                    .unwrap_or(first)
                    .unexpected(&format!("where only resource {target} is expected")))
            }
        },
        Lwm2mPath::ResourceInstance(o, i, r, ri) => match tlvs.as_slice() {
            [t] if t.kind == Kind::ResourceInstance => {
                if t.id != ri.0 {
                    let record = Lwm2mPath::ResourceInstance(o, i, r, ResourceInstanceId(t.id));
                    return Err(outside(record));
                }
                let ty = codec::expected_type(schema, target, findings);
                Ok(Node::ResourceInstance(decode_value(
                    t.value, ty, target, findings,
                )))
            }
            [] => Err(CodecError::malformed(
                FORMAT,
                0,
                format!("empty payload where resource instance {target} is expected"),
            )),
            [t, ..] => Err(t.unexpected(&format!(
                "where only resource instance {target} is expected"
            ))),
        },
    }
}

/// Decodes the resource TLVs of instance `/o/i`.
fn decode_instance(
    tlvs: &[Tlv<'_>],
    o: ObjectId,
    i: InstanceId,
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Instance, CodecError> {
    let mut instance = Instance::new();
    for t in tlvs {
        if !t.kind.is_resource() {
            return Err(t.unexpected(&format!("inside object instance /{o}/{i}")));
        }
        let r = ResourceId(t.id);
        let value = decode_resource(t, (o, i, r), schema, findings)?;
        if instance.insert(r, value).is_some() {
            let path = Lwm2mPath::Resource(o, i, r);
            return Err(ShapeError::Conflict { path }.into());
        }
    }
    Ok(instance)
}

/// The ids of a resource path `/O/I/R`.
type ResourceIds = (ObjectId, InstanceId, ResourceId);

/// Decodes a resource (`11`) or multiple resource (`10`) TLV at `/O/I/R`.
fn decode_resource(
    t: &Tlv<'_>,
    (o, i, r): ResourceIds,
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<ResourceValue, CodecError> {
    let path = Lwm2mPath::Resource(o, i, r);
    let multiple = t.kind == Kind::MultipleResource;
    let ty = resource_type(schema, &path, multiple, findings);
    Ok(if multiple {
        ResourceValue::Multiple(decode_resource_instances(
            &children(t)?,
            (o, i, r),
            ty,
            findings,
        )?)
    } else {
        ResourceValue::Single(decode_value(t.value, ty, &path, findings))
    })
}

/// The registry type of the resource at `path` (recording an unknown resource), and a
/// [`Finding::MultiplicityMismatch`] when the wire's shape disagrees with the registry.
fn resource_type(
    schema: &dyn Schema,
    path: &Lwm2mPath,
    multiple_on_wire: bool,
    findings: &mut Vec<Finding>,
) -> Option<DataType> {
    if let Some(def) = codec::resource_def(schema, path)
        && def.multiple != multiple_on_wire
    {
        findings.push(Finding::MultiplicityMismatch {
            path: *path,
            expected_multiple: def.multiple,
        });
    }
    codec::expected_type(schema, path, findings)
}

/// Decodes the resource instance TLVs of the multiple resource `/O/I/R`.
fn decode_resource_instances(
    tlvs: &[Tlv<'_>],
    (o, i, r): ResourceIds,
    ty: Option<DataType>,
    findings: &mut Vec<Finding>,
) -> Result<BTreeMap<ResourceInstanceId, Value>, CodecError> {
    let mut instances = BTreeMap::new();
    for t in tlvs {
        if t.kind != Kind::ResourceInstance {
            return Err(t.unexpected(&format!("inside multiple resource /{o}/{i}/{r}")));
        }
        let ri = ResourceInstanceId(t.id);
        let path = Lwm2mPath::ResourceInstance(o, i, r, ri);
        let value = decode_value(t.value, ty, &path, findings);
        if instances.insert(ri, value).is_some() {
            return Err(ShapeError::Conflict { path }.into());
        }
    }
    Ok(instances)
}

/// Types the raw value bytes found at `path`. Unknown resources stay opaque; values that
/// do not fit `ty` are kept (see [`fallback`]) and flagged; over-long integers are
/// accepted and flagged.
fn decode_value(
    raw: &[u8],
    ty: Option<DataType>,
    path: &Lwm2mPath,
    findings: &mut Vec<Finding>,
) -> Value {
    let Some(ty) = ty else {
        return Value::Opaque(raw.to_vec());
    };
    match typed_value(ty, raw) {
        Ok(v) => {
            let minimal = match v {
                Value::Integer(n) | Value::Time(n) => signed_width(n),
                Value::UnsignedInteger(n) => unsigned_width(n),
                _ => raw.len(),
            };
            if raw.len() > minimal {
                findings.push(Finding::NonMinimalInteger {
                    path: *path,
                    length: raw.len(),
                });
            }
            v
        }
        Err(found) => {
            findings.push(Finding::TypeMismatch {
                path: *path,
                expected: ty,
                found,
            });
            fallback(ty, raw)
        }
    }
}

/// The value of type `ty` in `raw` (Core TS 1.1 §7.4.3.1 and Appendix C), or what was
/// found instead, in words.
fn typed_value(ty: DataType, raw: &[u8]) -> Result<Value, String> {
    let bad_length = || format!("a {}-byte value", raw.len());
    let utf8 = || std::str::from_utf8(raw).map_err(|e| format!("invalid UTF-8 ({e})"));
    Ok(match ty {
        DataType::String => Value::String(utf8()?.to_owned()),
        DataType::Corelnk => Value::Corelnk(utf8()?.to_owned()),
        DataType::Opaque => Value::Opaque(raw.to_vec()),
        DataType::Integer => Value::Integer(signed(raw).ok_or_else(bad_length)?),
        DataType::Time => Value::Time(signed(raw).ok_or_else(bad_length)?),
        DataType::UnsignedInteger => Value::UnsignedInteger(unsigned(raw).ok_or_else(bad_length)?),
        DataType::Float => {
            if let Some(text) = decimal_text(raw) {
                return Err(format!("the decimal text {text:?}"));
            }
            match *raw {
                [a, b, c, d] => Value::Float(f64::from(f32::from_be_bytes([a, b, c, d]))),
                [a, b, c, d, e, f, g, h] => {
                    Value::Float(f64::from_be_bytes([a, b, c, d, e, f, g, h]))
                }
                _ => return Err(bad_length()),
            }
        }
        DataType::Boolean => match *raw {
            [0] => Value::Boolean(false),
            [1] => Value::Boolean(true),
            [b] => return Err(format!("the byte 0x{b:02x}")),
            _ => return Err(bad_length()),
        },
        DataType::Objlnk => match *raw {
            [a, b, c, d] => Value::Objlnk(ObjectLink {
                object: u16::from_be_bytes([a, b]),
                instance: u16::from_be_bytes([c, d]),
            }),
            _ => return Err(bad_length()),
        },
        DataType::None => {
            if raw.is_empty() {
                Value::None
            } else {
                return Err(bad_length());
            }
        }
    })
}

/// What a value that does not fit its type is kept as: a Float's bytes as a string when
/// they are UTF-8 (the pre-1.0 string coordinates), anything else as opaque bytes.
fn fallback(ty: DataType, raw: &[u8]) -> Value {
    match std::str::from_utf8(raw) {
        Ok(s) if ty == DataType::Float => Value::String(s.to_owned()),
        _ => Value::Opaque(raw.to_vec()),
    }
}

/// `raw` as text if it is a 4- or 8-byte ASCII decimal number (`45.5`, `-1234567`), which
/// a pre-1.0 peer sends where LwM2M 1.0 wants a float.
fn decimal_text(raw: &[u8]) -> Option<&str> {
    let charset = |b: &u8| b.is_ascii_digit() || b"+-.eE".contains(b);
    if !matches!(raw.len(), 4 | 8)
        || !raw.iter().all(charset)
        || !raw.iter().any(u8::is_ascii_digit)
    {
        return None;
    }
    std::str::from_utf8(raw)
        .ok()
        .filter(|s| s.parse::<f64>().is_ok())
}

/// A big-endian two's complement integer of 1, 2, 4 or 8 bytes.
fn signed(raw: &[u8]) -> Option<i64> {
    Some(match *raw {
        [a] => i64::from(i8::from_be_bytes([a])),
        [a, b] => i64::from(i16::from_be_bytes([a, b])),
        [a, b, c, d] => i64::from(i32::from_be_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => i64::from_be_bytes([a, b, c, d, e, f, g, h]),
        _ => return None,
    })
}

/// A big-endian unsigned integer of 1, 2, 4 or 8 bytes.
fn unsigned(raw: &[u8]) -> Option<u64> {
    Some(match *raw {
        [a] => u64::from(a),
        [a, b] => u64::from(u16::from_be_bytes([a, b])),
        [a, b, c, d] => u64::from(u32::from_be_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => u64::from_be_bytes([a, b, c, d, e, f, g, h]),
        _ => return None,
    })
}

/// The fewest bytes (1, 2, 4, 8) holding `n` in two's complement.
fn signed_width(n: i64) -> usize {
    if i8::try_from(n).is_ok() {
        1
    } else if i16::try_from(n).is_ok() {
        2
    } else if i32::try_from(n).is_ok() {
        4
    } else {
        8
    }
}

/// The fewest bytes (1, 2, 4, 8) holding `n` unsigned.
fn unsigned_width(n: u64) -> usize {
    if u8::try_from(n).is_ok() {
        1
    } else if u16::try_from(n).is_ok() {
        2
    } else if u32::try_from(n).is_ok() {
        4
    } else {
        8
    }
}

/// Encodes the node at `target` as TLV (Core TS 1.1 §7.4.3): object instance TLVs at
/// `/O`, bare resource TLVs at `/O/I`, one resource or multiple resource TLV at `/O/I/R`,
/// one resource instance TLV at `/O/I/R/RI`.
pub fn encode(target: &Lwm2mPath, node: &Node, out: &mut Vec<u8>) -> Result<(), CodecError> {
    match (node, *target) {
        (Node::Object(instances), Lwm2mPath::Object(_)) => {
            for (i, instance) in instances {
                let mut body = Vec::new();
                write_instance(&mut body, instance, target)?;
                write_tlv(out, Kind::ObjectInstance, i.0, &body, target)?;
            }
            Ok(())
        }
        (Node::Instance(instance), Lwm2mPath::Instance(..)) => {
            write_instance(out, instance, target)
        }
        (Node::Resource(value), Lwm2mPath::Resource(.., r)) => {
            write_resource(out, r, value, target)
        }
        (Node::ResourceInstance(value), Lwm2mPath::ResourceInstance(.., ri)) => write_tlv(
            out,
            Kind::ResourceInstance,
            ri.0,
            &value_bytes(value),
            target,
        ),
        _ => Err(ShapeError::LevelMismatch {
            path: *target,
            node: node.kind(),
        }
        .into()),
    }
}

fn write_instance(
    out: &mut Vec<u8>,
    instance: &Instance,
    at: &Lwm2mPath,
) -> Result<(), CodecError> {
    for (r, value) in instance {
        write_resource(out, *r, value, at)?;
    }
    Ok(())
}

fn write_resource(
    out: &mut Vec<u8>,
    r: ResourceId,
    value: &ResourceValue,
    at: &Lwm2mPath,
) -> Result<(), CodecError> {
    match value {
        ResourceValue::Single(v) => {
            write_tlv(out, Kind::ResourceWithValue, r.0, &value_bytes(v), at)
        }
        ResourceValue::Multiple(instances) => {
            let mut body = Vec::new();
            for (ri, v) in instances {
                write_tlv(&mut body, Kind::ResourceInstance, ri.0, &value_bytes(v), at)?;
            }
            write_tlv(out, Kind::MultipleResource, r.0, &body, at)
        }
    }
}

/// Writes one TLV with the shortest identifier and length fields.
fn write_tlv(
    out: &mut Vec<u8>,
    kind: Kind,
    id: u16,
    value: &[u8],
    at: &Lwm2mPath,
) -> Result<(), CodecError> {
    let invalid = |reason: String| CodecError::InvalidValue { path: *at, reason };
    if id == MAX_ID {
        return Err(invalid(format!(
            "{} identifier 65535 is reserved",
            kind.name()
        )));
    }
    let len = value.len();
    if len > MAX_LENGTH {
        return Err(invalid(format!(
            "{} {id} has {len} bytes, more than a TLV length can express ({MAX_LENGTH})",
            kind.name()
        )));
    }
    let len_bytes = (len as u32).to_be_bytes();
    let (length_kind, length_field): (u8, &[u8]) = match len {
        0..=7 => (0, &[]),
        8..=0xFF => (1, &len_bytes[3..]),
        0x100..=0xFFFF => (2, &len_bytes[2..]),
        _ => (3, &len_bytes[1..]),
    };
    let mut t = kind.bits() << 6 | length_kind << 3;
    if length_kind == 0 {
        t |= len as u8;
    }
    if id > 0xFF {
        t |= 0x20;
        out.push(t);
        out.extend_from_slice(&id.to_be_bytes());
    } else {
        out.push(t);
        out.push(id as u8);
    }
    out.extend_from_slice(length_field);
    out.extend_from_slice(value);
    Ok(())
}

/// The TLV value bytes of `v` (Core TS 1.1 §7.4.3.1).
fn value_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) | Value::Corelnk(s) => s.as_bytes().to_vec(),
        Value::Integer(n) | Value::Time(n) => {
            let bytes = n.to_be_bytes();
            bytes[8 - signed_width(*n)..].to_vec()
        }
        Value::UnsignedInteger(n) => {
            let bytes = n.to_be_bytes();
            bytes[8 - unsigned_width(*n)..].to_vec()
        }
        Value::Float(f) => {
            let narrow = *f as f32;
            let short = narrow.to_be_bytes();
            if f64::from(narrow) == *f && decimal_text(&short).is_none() {
                short.to_vec()
            } else {
                f.to_be_bytes().to_vec()
            }
        }
        Value::Boolean(b) => vec![u8::from(*b)],
        Value::Opaque(bytes) => bytes.clone(),
        Value::Objlnk(l) => [l.object.to_be_bytes(), l.instance.to_be_bytes()].concat(),
        Value::None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectDef, Operations, ResourceDef};
    use proptest::prelude::*;

    fn object(id: u16, resources: &[(u16, DataType, bool)]) -> ObjectDef {
        let defs = resources.iter().map(|&(r, data_type, multiple)| {
            ResourceDef::new(
                r,
                format!("Resource {r}"),
                Operations::RW,
                data_type,
                multiple,
            )
        });
        ObjectDef::new(id, format!("Object {id}"), "1.1", true, defs)
    }

    /// The objects of the Core TS 1.0 §6.4.3 examples, with the types of their
    /// definitions (Device, Server, Access Control, Location, Firmware Update, and the
    /// example objects 65 and 66 of §6.4.3.3).
    #[rustfmt::skip]
    fn schema() -> Vec<ObjectDef> {
        use DataType::*;
        vec![
            object(1, &[(0, Integer, false), (1, Integer, false), (2, Integer, false),
                (3, Integer, false), (4, None, false), (5, Integer, false), (6, Boolean, false),
                (7, String, false), (8, None, false)]),
            object(2, &[(0, Integer, false), (1, Integer, false), (2, Integer, true),
                (3, Integer, false)]),
            object(3, &[(0, String, false), (1, String, false), (2, String, false),
                (3, String, false), (4, None, false), (5, None, false), (6, Integer, true),
                (7, Integer, true), (8, Integer, true), (9, Integer, false), (10, Integer, false),
                (11, Integer, true), (12, None, false), (13, Time, false), (14, String, false),
                (15, String, false), (16, String, false)]),
            object(5, &[(0, Opaque, false), (1, String, false), (3, Integer, false)]),
            object(6, &[(0, Float, false), (1, Float, false), (2, Float, false),
                (5, Time, false), (6, Float, false)]),
            object(65, &[(0, Objlnk, true), (1, String, false), (2, Integer, false)]),
            object(66, &[(0, String, false), (1, String, false), (2, Objlnk, false)]),
            object(9000, &TYPES.iter().enumerate().flat_map(|(k, &ty)| {
                let r = 2 * k as u16;
                [(r, ty, false), (r + 1, ty, true)]
            }).collect::<Vec<_>>()),
        ]
    }

    /// Every data type; in object 9000 resource `2k` is a single and `2k+1` a multiple
    /// resource of `TYPES[k]`.
    const TYPES: [DataType; 10] = [
        DataType::String,
        DataType::Integer,
        DataType::UnsignedInteger,
        DataType::Float,
        DataType::Boolean,
        DataType::Opaque,
        DataType::Time,
        DataType::Objlnk,
        DataType::Corelnk,
        DataType::None,
    ];

    fn bytes(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    fn path(s: &str) -> Lwm2mPath {
        s.parse().unwrap()
    }

    fn dec(payload: &[u8], target: &str) -> Result<(Node, Vec<Finding>), CodecError> {
        let mut findings = Vec::new();
        let node = decode(payload, &path(target), &schema(), &mut findings)?;
        Ok((node, findings))
    }

    fn enc(target: &str, node: &Node) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&path(target), node, &mut out).unwrap();
        out
    }

    fn single(v: Value) -> ResourceValue {
        ResourceValue::Single(v)
    }

    fn multiple(values: &[(u16, Value)]) -> ResourceValue {
        ResourceValue::Multiple(
            values
                .iter()
                .map(|(ri, v)| (ResourceInstanceId(*ri), v.clone()))
                .collect(),
        )
    }

    fn instance(resources: Vec<(u16, ResourceValue)>) -> Instance {
        resources
            .into_iter()
            .map(|(r, v)| (ResourceId(r), v))
            .collect()
    }

    fn string(s: &str) -> Value {
        Value::String(s.into())
    }

    fn link(object: u16, instance: u16) -> Value {
        Value::Objlnk(ObjectLink { object, instance })
    }

    /// Core TS 1.0 §6.4.3.1 (1.1 §7.4.3): Read on /3/0, the resources of the Device
    /// object instance without an object instance TLV around them.
    const DEVICE: &str = "C8 00 14 4F70656E204D6F62696C6520416C6C69616E6365
        C8 01 16 4C69676874776569676874204D324D20436C69656E74
        C8 02 09 333435303030313233
        C3 03 312E30
        86 06 4100 01 4101 05
        88 07 08 4200 0ED8 4201 1388
        87 08 4100 7D 4201 0384
        C1 09 64
        C1 0A 0F
        83 0B 4100 00
        C4 0D 5182428F
        C6 0E 2B30323A3030
        C1 10 55";

    fn device() -> Instance {
        use Value::Integer as I;
        instance(vec![
            (0, single(string("Open Mobile Alliance"))),
            (1, single(string("Lightweight M2M Client"))),
            (2, single(string("345000123"))),
            (3, single(string("1.0"))),
            (6, multiple(&[(0, I(1)), (1, I(5))])),
            (7, multiple(&[(0, I(3800)), (1, I(5000))])),
            (8, multiple(&[(0, I(125)), (1, I(900))])),
            (9, single(I(100))),
            (10, single(I(15))),
            (11, multiple(&[(0, I(0))])),
            (13, single(Value::Time(1_367_491_215))),
            (14, single(string("+02:00"))),
            (16, single(string("U"))),
        ])
    }

    #[test]
    fn device_instance_read() {
        // Core TS 1.0 §6.4.3.1: GET /3/0.
        let payload = bytes(DEVICE);
        let (node, findings) = dec(&payload, "/3/0").unwrap();
        assert_eq!(node, Node::Instance(device()));
        assert_eq!(findings, []);
        assert_eq!(enc("/3/0", &node), payload);
    }

    #[test]
    fn device_instance_wrapped_in_an_object_instance_tlv() {
        // Core TS 1.0 §6.4.3.2 A): the same instance inside an object instance TLV
        // (08 00 79: object instance 0, 121 bytes), as a read on /3 returns it.
        let payload = [bytes("08 00 79"), bytes(DEVICE)].concat();
        let (node, findings) = dec(&payload, "/3/0").unwrap();
        assert_eq!(node, Node::Instance(device()));
        assert_eq!(findings, []);
        let object = Node::Object([(InstanceId(0), device())].into());
        assert_eq!(dec(&payload, "/3").unwrap().0, object);
        assert_eq!(enc("/3", &object), payload);
    }

    #[test]
    fn access_control_object_with_two_instances() {
        // Core TS 1.0 §6.4.3.2 B): GET /2, two Access Control instances; the second ACL
        // has instance 310, a 16-bit identifier (61 01 36 01).
        let payload = bytes(
            "08 00 0E C10001 C10100 8302 417F07 C1037F
             08 02 12 C10003 C10100 8702 417F07 61013601 C1037F",
        );
        use Value::Integer as I;
        let expected = Node::Object(
            [
                (
                    InstanceId(0),
                    instance(vec![
                        (0, single(I(1))),
                        (1, single(I(0))),
                        (2, multiple(&[(127, I(7))])),
                        (3, single(I(127))),
                    ]),
                ),
                (
                    InstanceId(2),
                    instance(vec![
                        (0, single(I(3))),
                        (1, single(I(0))),
                        (2, multiple(&[(127, I(7)), (310, I(1))])),
                        (3, single(I(127))),
                    ]),
                ),
            ]
            .into(),
        );
        let (node, findings) = dec(&payload, "/2").unwrap();
        assert_eq!(node, expected);
        assert_eq!(findings, []);
        assert_eq!(enc("/2", &node), payload);
    }

    #[test]
    fn server_object_with_one_instance() {
        // Core TS 1.0 §6.4.3.2 C): GET /1, one Server instance (lifetime 86400 in 4 bytes,
        // notification storing true, binding "U").
        let payload = bytes("08 00 0F C10001 C40100015180 C10601 C10755");
        let expected = Node::Object(
            [(
                InstanceId(0),
                instance(vec![
                    (0, single(Value::Integer(1))),
                    (1, single(Value::Integer(86400))),
                    (6, single(Value::Boolean(true))),
                    (7, single(string("U"))),
                ]),
            )]
            .into(),
        );
        let (node, findings) = dec(&payload, "/1").unwrap();
        assert_eq!(node, expected);
        assert_eq!(findings, []);
        assert_eq!(enc("/1", &node), payload);
    }

    #[test]
    fn object_link_examples() {
        // Core TS 1.0 §6.4.3.3, first example: GET /65/0, a multiple Objlnk resource.
        let payload = bytes(
            "88 00 0C 4400 00420000 4401 00420001
             C8 01 0D 38363133383030373535353030
             C4 02 12345678",
        );
        let expected = Node::Instance(instance(vec![
            (0, multiple(&[(0, link(66, 0)), (1, link(66, 1))])),
            (1, single(string("8613800755500"))),
            (2, single(Value::Integer(0x1234_5678))),
        ]));
        let (node, findings) = dec(&payload, "/65/0").unwrap();
        assert_eq!(node, expected);
        assert_eq!(findings, []);
        assert_eq!(enc("/65/0", &node), payload);

        // Second example: GET /66, two instances, the second links to nothing (the null
        // link 65535:65535).
        let payload = bytes(
            "08 00 26 C8000B 6D79536572766963652031 C8010F 496E7465726E65742E31352E323334
                      C402 00430000
             08 01 26 C8000B 6D79536572766963652032 C8010F 496E7465726E65742E31352E323335
                      C402 FFFFFFFF",
        );
        let (node, findings) = dec(&payload, "/66").unwrap();
        let Node::Object(instances) = &node else {
            panic!("{node:?}")
        };
        assert_eq!(instances.len(), 2);
        assert_eq!(
            instances[&InstanceId(0)][&ResourceId(2)],
            single(link(67, 0))
        );
        assert_eq!(
            instances[&InstanceId(1)][&ResourceId(2)],
            single(Value::Objlnk(ObjectLink::NULL))
        );
        assert_eq!(
            instances[&InstanceId(1)][&ResourceId(1)],
            single(string("Internet.15.235"))
        );
        assert_eq!(findings, []);
        assert_eq!(enc("/66", &node), payload);
    }

    #[test]
    fn resource_and_resource_instance_levels() {
        // Core TS 1.0 §6.4.3.1: Available Power Sources read alone, as one multiple
        // resource TLV; also accepted as bare resource instance TLVs.
        let payload = bytes("86 06 4100 01 4101 05");
        let expected = Node::Resource(multiple(&[(0, Value::Integer(1)), (1, Value::Integer(5))]));
        let (node, findings) = dec(&payload, "/3/0/6").unwrap();
        assert_eq!((&node, findings.as_slice()), (&expected, &[][..]));
        assert_eq!(enc("/3/0/6", &node), payload);
        assert_eq!(
            dec(&bytes("4100 01 4101 05"), "/3/0/6").unwrap().0,
            expected
        );

        let payload = bytes("C8 00 14 4F70656E204D6F62696C6520416C6C69616E6365");
        let (node, _) = dec(&payload, "/3/0/0").unwrap();
        assert_eq!(node, Node::Resource(single(string("Open Mobile Alliance"))));
        assert_eq!(enc("/3/0/0", &node), payload);

        let payload = bytes("4201 1388");
        let (node, findings) = dec(&payload, "/3/0/7/1").unwrap();
        assert_eq!(node, Node::ResourceInstance(Value::Integer(5000)));
        assert_eq!(findings, []);
        assert_eq!(enc("/3/0/7/1", &node), payload);

        // An empty multiple resource (Error Code with no instance).
        let node = Node::Resource(ResourceValue::Multiple(BTreeMap::new()));
        assert_eq!(enc("/3/0/11", &node), bytes("80 0B"));
        assert_eq!(dec(&bytes("80 0B"), "/3/0/11").unwrap().0, node);
    }

    #[test]
    fn location_strings_from_pre_1_0_peers_are_kept_as_strings() {
        // Latitude "45.5" in 4 ASCII bytes where LwM2M 1.0 wants a float: it would read
        // as 1.7e-7; it is kept as the string and flagged.
        let (node, findings) = dec(b"\xC4\x00\x34\x35\x2E\x35", "/6/0/0").unwrap();
        assert_eq!(node, Node::Resource(single(string("45.5"))));
        assert!(matches!(
            &findings[..],
            [Finding::TypeMismatch { expected: DataType::Float, found, .. }] if found.contains("45.5")
        ));
        // 8 bytes of text, and text of another length.
        let (node, _) = dec(b"\xC8\x01\x08-73.9857", "/6/0/1").unwrap();
        assert_eq!(node, Node::Resource(single(string("-73.9857"))));
        let (node, findings) = dec(b"\xC5\x02120.5", "/6/0/2").unwrap();
        assert_eq!(node, Node::Resource(single(string("120.5"))));
        assert_eq!(findings.len(), 1);
        // A 5-byte float that is not text stays opaque.
        let (node, _) = dec(b"\xC5\x02\xff\x00\x01\x02\x03", "/6/0/2").unwrap();
        assert_eq!(
            node,
            Node::Resource(single(Value::Opaque(vec![0xff, 0, 1, 2, 3])))
        );
        // Real floats, in 4 and 8 bytes.
        let (node, findings) = dec(&bytes("C4 00 42360000"), "/6/0/0").unwrap();
        assert_eq!(
            (node, findings),
            (Node::Resource(single(Value::Float(45.5))), vec![])
        );
        let (node, _) = dec(&bytes("C8 00 08 3FB999999999999A"), "/6/0/0").unwrap();
        assert_eq!(node, Node::Resource(single(Value::Float(0.1))));
    }

    #[test]
    fn values_that_do_not_fit_their_type_are_kept_and_flagged() {
        let mismatch = |payload: &[u8], target: &str, kept: Value| {
            let (node, findings) = dec(payload, target).unwrap();
            assert_eq!(node, Node::Resource(single(kept)), "{target}");
            assert!(
                matches!(&findings[..], [Finding::TypeMismatch { path, .. }] if *path == self::path(target)),
                "{target}: {findings:?}"
            );
        };
        mismatch(
            b"\xC3\x09\x00\x00\x64",
            "/3/0/9",
            Value::Opaque(vec![0, 0, 0x64]),
        );
        mismatch(b"\xC1\x06\x02", "/1/0/6", Value::Opaque(vec![2]));
        mismatch(b"\xC2\x06\x00\x01", "/1/0/6", Value::Opaque(vec![0, 1]));
        mismatch(
            b"\xC2\x00\xC3\x28",
            "/3/0/0",
            Value::Opaque(vec![0xC3, 0x28]),
        );
        mismatch(
            b"\xC3\x02\x00\x43\x00",
            "/66/0/2",
            Value::Opaque(vec![0, 0x43, 0]),
        );
        mismatch(b"\xC1\x04\x01", "/1/0/4", Value::Opaque(vec![1]));
    }

    #[test]
    fn over_long_integers_are_accepted_and_flagged() {
        // Battery level 100 in 8 bytes (Core TS 1.1 §7.4.3.1 allows 1, 2, 4 or 8).
        let (node, findings) = dec(&bytes("C8 09 08 0000000000000064"), "/3/0/9").unwrap();
        assert_eq!(node, Node::Resource(single(Value::Integer(100))));
        assert_eq!(
            findings,
            [Finding::NonMinimalInteger {
                path: path("/3/0/9"),
                length: 8
            }]
        );
        // -1 in 2 bytes.
        let (node, findings) = dec(&bytes("C2 09 FFFF"), "/3/0/9").unwrap();
        assert_eq!(node, Node::Resource(single(Value::Integer(-1))));
        assert_eq!(findings.len(), 1);
        // 128 needs 2 bytes: minimal.
        let (_, findings) = dec(&bytes("C2 09 0080"), "/3/0/9").unwrap();
        assert_eq!(findings, []);
    }

    #[test]
    fn unknown_resources_stay_opaque() {
        let mut findings = Vec::new();
        let node = decode(
            &bytes(DEVICE),
            &path("/3/0"),
            &crate::model::NoSchema,
            &mut findings,
        )
        .unwrap();
        let Node::Instance(inst) = node else { panic!() };
        assert_eq!(inst[&ResourceId(9)], single(Value::Opaque(vec![100])));
        assert_eq!(
            inst[&ResourceId(6)],
            multiple(&[(0, Value::Opaque(vec![1])), (1, Value::Opaque(vec![5]))])
        );
        // One finding per resource, not per resource instance.
        assert_eq!(findings.len(), 13);
        assert!(
            findings
                .iter()
                .all(|f| matches!(f, Finding::UnknownResource { .. }))
        );
        let (_, findings) = dec(&bytes("C1 63 01"), "/3/0").unwrap();
        assert_eq!(
            findings,
            [Finding::UnknownResource {
                path: path("/3/0/99")
            }]
        );
    }

    #[test]
    fn multiplicity_follows_the_wire_and_is_flagged() {
        let (node, findings) = dec(&bytes("C1 06 01"), "/3/0/6").unwrap();
        assert_eq!(node, Node::Resource(single(Value::Integer(1))));
        assert_eq!(
            findings,
            [Finding::MultiplicityMismatch {
                path: path("/3/0/6"),
                expected_multiple: true
            }]
        );
        let (node, findings) = dec(&bytes("83 09 41 00 64"), "/3/0").unwrap();
        assert_eq!(
            node,
            Node::Instance(instance(vec![(9, multiple(&[(0, Value::Integer(100))]))]))
        );
        assert_eq!(
            findings,
            [Finding::MultiplicityMismatch {
                path: path("/3/0/9"),
                expected_multiple: false
            }]
        );
    }

    #[test]
    fn resource_instances_without_their_multiple_resource_tlv_are_flagged() {
        // Two resource instance TLVs of /3/0/6 where one Multiple Resource TLV belongs.
        let (node, findings) = dec(&bytes("41 00 01 41 01 05"), "/3/0/6").unwrap();
        assert_eq!(
            node,
            Node::Resource(multiple(&[(0, Value::Integer(1)), (1, Value::Integer(5))]))
        );
        assert_eq!(
            findings,
            [Finding::UnwrappedResourceInstances {
                path: path("/3/0/6")
            }]
        );
        assert!(findings[0].clause().contains("§7.4.3"));
        // Wrapped, the same value has no finding.
        let (_, findings) = dec(&bytes("86 06 41 00 01 41 01 05"), "/3/0/6").unwrap();
        assert_eq!(findings, []);
    }

    fn malformed_at(payload: &[u8], target: &str) -> (usize, String) {
        match dec(payload, target) {
            Err(CodecError::Malformed { offset, reason, .. }) => (offset, reason),
            other => panic!("{target} {payload:02x?}: {other:?}"),
        }
    }

    #[test]
    fn malformed_payloads_are_errors_with_offsets() {
        // Truncated type/identifier/length/value.
        assert_eq!(malformed_at(b"\xE8\x00", "/3/0").0, 0);
        assert_eq!(malformed_at(b"\xC1\x00\x01\xD0\x05", "/3/0").0, 3);
        assert_eq!(malformed_at(b"\xC1\x00\x01\xD8\x05\x00", "/3/0").0, 3);
        let (offset, reason) = malformed_at(b"\xC8\x00\x14abc", "/3/0");
        assert_eq!(offset, 0);
        assert!(reason.contains("20 value bytes, only 3 remain"), "{reason}");
        // Identifier 65535.
        let (offset, reason) = malformed_at(b"\xC1\x00\x01\xE1\xFF\xFF\x01", "/3/0");
        assert_eq!(offset, 3);
        assert!(reason.contains("65535"));
        // Nesting errors, with the offset of the nested TLV.
        assert_eq!(malformed_at(b"\x41\x00\x01", "/3/0").0, 0);
        assert_eq!(
            malformed_at(b"\xC1\x00\x01\x83\x06\x08\x00\x00", "/3/0").0,
            5
        );
        assert_eq!(malformed_at(b"\x08\x00\x03\x41\x00\x01", "/3").0, 3);
        assert_eq!(malformed_at(b"\x08\x00\x03\x08\x00\x00", "/3").0, 3);
        assert_eq!(malformed_at(b"\xC1\x00\x01", "/3").0, 0);
        assert_eq!(malformed_at(b"\x08\x00\x00", "/3/0/0").0, 0);
        assert_eq!(malformed_at(b"\xC1\x00\x01\xC1\x00\x01", "/3/0/0").0, 3);
        assert_eq!(malformed_at(b"\x41\x00\x01\x08\x00\x00", "/3/0/6").0, 3);
        assert_eq!(malformed_at(b"", "/3/0/0").0, 0);
        assert_eq!(malformed_at(b"\xC1\x00\x01", "/3/0/6/0").0, 0);
        // A wrapper in a wrapper is an object instance inside an instance.
        assert_eq!(malformed_at(b"\x08\x00\x02\x00\x00", "/3/0").0, 3);
    }

    #[test]
    fn payloads_that_do_not_fit_the_target() {
        let shape = |payload: &[u8], target: &str| match dec(payload, target) {
            Err(CodecError::Shape(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            shape(b"\x08\x01\x00", "/3/0"),
            ShapeError::OutsideTarget {
                target: path("/3/0"),
                record: path("/3/1")
            }
        );
        assert_eq!(
            shape(b"\xC1\x01\x00", "/3/0/0"),
            ShapeError::OutsideTarget {
                target: path("/3/0/0"),
                record: path("/3/0/1")
            }
        );
        assert_eq!(
            shape(b"\x41\x01\x00", "/3/0/6/0"),
            ShapeError::OutsideTarget {
                target: path("/3/0/6/0"),
                record: path("/3/0/6/1")
            }
        );
        assert_eq!(
            shape(b"\xC1\x09\x01\xC1\x09\x02", "/3/0"),
            ShapeError::Conflict {
                path: path("/3/0/9")
            }
        );
        assert_eq!(
            shape(b"\x08\x00\x00\x08\x00\x00", "/3"),
            ShapeError::Conflict { path: path("/3/0") }
        );
        assert_eq!(
            shape(b"\x86\x06\x41\x00\x01\x41\x00\x02", "/3/0/6"),
            ShapeError::Conflict {
                path: path("/3/0/6/0")
            }
        );
        assert!(matches!(
            dec(b"", "/"),
            Err(CodecError::Unsupported {
                format: ContentFormat::Tlv,
                ..
            })
        ));
        let mut out = Vec::new();
        let err = encode(
            &path("/3/0"),
            &Node::Resource(single(Value::None)),
            &mut out,
        );
        assert!(matches!(
            err,
            Err(CodecError::Shape(ShapeError::LevelMismatch { .. }))
        ));
    }

    #[test]
    fn identifier_and_length_field_sizes() {
        // 16-bit identifier, 3-bit length.
        let node = Node::Resource(single(Value::Opaque(vec![7; 3])));
        assert_eq!(enc("/5/0/300", &node), bytes("E3 012C 070707"));
        // 8-, 16- and 24-bit length fields.
        for (len, header) in [
            (8, "C8 00 08"),
            (300, "D0 00 012C"),
            (70_000, "D8 00 011170"),
        ] {
            let node = Node::Resource(single(Value::Opaque(vec![0xAB; len])));
            let out = enc("/5/0/0", &node);
            assert_eq!(out[..out.len() - len], bytes(header)[..], "{len}");
            let (back, findings) = dec(&out, "/5/0/0").unwrap();
            assert_eq!((back, findings), (node, vec![]));
        }
        let mut out = Vec::new();
        let too_long = Node::Resource(single(Value::Opaque(vec![0; MAX_LENGTH + 1])));
        assert!(matches!(
            encode(&path("/5/0/0"), &too_long, &mut out),
            Err(CodecError::InvalidValue { .. })
        ));
        let reserved = Node::Instance(instance(vec![(MAX_ID, single(Value::Boolean(true)))]));
        assert!(matches!(
            encode(&path("/5/0"), &reserved, &mut out),
            Err(CodecError::InvalidValue { .. })
        ));
    }

    #[test]
    fn value_encodings() {
        let value = |v: Value| {
            let out = enc("/9000/0/0", &Node::Resource(single(v)));
            out[2 + usize::from((out[0] >> 3) & 0b11)..].to_vec()
        };
        assert_eq!(value(Value::Integer(127)), [0x7F]);
        assert_eq!(value(Value::Integer(-129)), [0xFF, 0x7F]);
        assert_eq!(value(Value::Integer(86400)), [0x00, 0x01, 0x51, 0x80]);
        assert_eq!(value(Value::Integer(i64::MIN)).len(), 8);
        assert_eq!(value(Value::UnsignedInteger(255)), [0xFF]);
        assert_eq!(value(Value::UnsignedInteger(u64::MAX)), [0xFF; 8]);
        assert_eq!(value(Value::Float(1.5)), [0x3F, 0xC0, 0, 0]);
        assert_eq!(value(Value::Float(0.1)), 0.1f64.to_be_bytes());
        // A float whose 4-byte form reads as decimal text goes out in 8 bytes.
        let textlike = f64::from(f32::from_be_bytes(*b"45.5"));
        assert_eq!(value(Value::Float(textlike)), textlike.to_be_bytes());
        assert_eq!(value(Value::Boolean(true)), [1]);
        assert_eq!(value(link(3, 0)), [0, 3, 0, 0]);
        assert_eq!(value(Value::None), [0u8; 0]);
    }

    fn value_strategy(ty: DataType) -> BoxedStrategy<Value> {
        match ty {
            DataType::String => any::<String>().prop_map(Value::String).boxed(),
            DataType::Corelnk => "(</[0-9]{1,5}(/[0-9]{1,5})?>,?){0,3}"
                .prop_map(Value::Corelnk)
                .boxed(),
            DataType::Integer => any::<i64>().prop_map(Value::Integer).boxed(),
            DataType::Time => any::<i64>().prop_map(Value::Time).boxed(),
            DataType::UnsignedInteger => any::<u64>().prop_map(Value::UnsignedInteger).boxed(),
            DataType::Float => prop_oneof![any::<f32>().prop_map(f64::from), any::<f64>(),]
                .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
                .prop_map(Value::Float)
                .boxed(),
            DataType::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
            DataType::Opaque => prop::collection::vec(any::<u8>(), 0..300)
                .prop_map(Value::Opaque)
                .boxed(),
            DataType::Objlnk => (any::<u16>(), any::<u16>())
                .prop_map(|(object, instance)| link(object, instance))
                .boxed(),
            DataType::None => Just(Value::None).boxed(),
        }
    }

    fn id() -> impl Strategy<Value = u16> {
        prop_oneof![0u16..16, 0..MAX_ID]
    }

    /// A resource of object 9000 with a value of its type.
    fn resource_strategy() -> impl Strategy<Value = (ResourceId, ResourceValue)> {
        (0..TYPES.len(), any::<bool>()).prop_flat_map(|(k, is_multiple)| {
            let r = ResourceId(2 * k as u16 + u16::from(is_multiple));
            let value = value_strategy(TYPES[k]);
            if is_multiple {
                prop::collection::btree_map(id().prop_map(ResourceInstanceId), value, 0..4)
                    .prop_map(move |m| (r, ResourceValue::Multiple(m)))
                    .boxed()
            } else {
                value
                    .prop_map(move |v| (r, ResourceValue::Single(v)))
                    .boxed()
            }
        })
    }

    fn instance_strategy() -> impl Strategy<Value = Instance> {
        prop::collection::vec(resource_strategy(), 0..6).prop_map(|rs| rs.into_iter().collect())
    }

    /// A node at some level of object 9000 and its path.
    fn node_strategy() -> impl Strategy<Value = (Lwm2mPath, Node)> {
        prop_oneof![
            prop::collection::btree_map(id().prop_map(InstanceId), instance_strategy(), 0..3)
                .prop_map(|m| (Lwm2mPath::object(9000), Node::Object(m))),
            (id(), instance_strategy())
                .prop_map(|(i, inst)| (Lwm2mPath::instance(9000, i), Node::Instance(inst))),
            (id(), resource_strategy())
                .prop_map(|(i, (r, v))| { (Lwm2mPath::resource(9000, i, r.0), Node::Resource(v)) }),
            (id(), 0..TYPES.len(), id()).prop_flat_map(|(i, k, ri)| {
                let p = Lwm2mPath::resource_instance(9000, i, 2 * k as u16 + 1, ri);
                value_strategy(TYPES[k]).prop_map(move |v| (p, Node::ResourceInstance(v)))
            }),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode((target, node) in node_strategy()) {
            let mut out = Vec::new();
            encode(&target, &node, &mut out).unwrap();
            let mut findings = Vec::new();
            let back = decode(&out, &target, &schema(), &mut findings).unwrap();
            prop_assert_eq!(back, node);
            prop_assert_eq!(findings, vec![]);
        }

        #[test]
        fn random_bytes_never_panic(
            payload in prop::collection::vec(any::<u8>(), 0..64),
            target in prop::sample::select(vec!["/3", "/3/0", "/3/0/6", "/3/0/6/0", "/9000/1/5"]),
        ) {
            let _ = dec(&payload, target);
            let _ = decode(&payload, &path(target), &crate::model::NoSchema, &mut Vec::new());
        }

        #[test]
        fn mutated_examples_never_panic(
            position in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut payload = [bytes("08 00 79"), bytes(DEVICE)].concat();
            let at = position.index(payload.len());
            payload[at] = byte;
            payload.truncate(cut.index(payload.len() + 1).max(at));
            for target in ["/3", "/3/0", "/3/0/6"] {
                let _ = dec(&payload, target);
            }
        }
    }
}
