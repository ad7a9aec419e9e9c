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
//!   a bare sequence of resource instance TLVs is also accepted as the multiple resource.
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

use crate::content::{self, CodecError, ContentFormat, Finding};
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
                let ty = resource_type(schema, target, true, findings);
                let instances = decode_resource_instances(ts, (o, i, r), ty, findings)?;
                Ok(Node::Resource(ResourceValue::Multiple(instances)))
            }
            [] => Err(CodecError::malformed(
                FORMAT,
                0,
                format!("empty payload where resource {target} is expected"),
            )),
            [t] => Err(t.unexpected(&format!("where resource {target} is expected"))),
            [_, t, ..] => Err(t.unexpected(&format!(
                "follows another TLV where only resource {target} is expected"
            ))),
        },
        Lwm2mPath::ResourceInstance(o, i, r, ri) => match tlvs.as_slice() {
            [t] if t.kind == Kind::ResourceInstance => {
                if t.id != ri.0 {
                    let record = Lwm2mPath::ResourceInstance(o, i, r, ResourceInstanceId(t.id));
                    return Err(outside(record));
                }
                let ty = content::expected_type(schema, target, findings);
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
    if let Some(def) = content::resource_def(schema, path)
        && def.multiple != multiple_on_wire
    {
        findings.push(Finding::MultiplicityMismatch {
            path: *path,
            expected_multiple: def.multiple,
        });
    }
    content::expected_type(schema, path, findings)
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
