//! `text/plain` (Core TS 1.1 §7.4.1) and `application/octet-stream` (Core TS 1.1 §7.4.2):
//! one value of a single-instance resource or of a resource instance.
//!
//! Text is UTF-8 and typed by the [`Schema`] with [`content::parse_text`]: decimal
//! numbers, booleans `0`/`1`, object links `O:I`, opaque values in base64 (LwM2M 1.1).
//! Text that does not parse as the registry's type is kept as a string and reported as
//! [`Finding::TypeMismatch`]; bytes that are not UTF-8 are an error. Opaque carries the
//! raw bytes of an Opaque resource only. Objects, instances and multiple resources cannot
//! be carried by either format ([`CodecError::Unsupported`]).

use crate::content::{self, CodecError, ContentFormat, Finding};
use crate::ids::Lwm2mPath;
use crate::model::Schema;
use crate::node::{Node, ResourceValue};
use crate::value::{DataType, Value};

/// Checks that `target` is a single-instance resource or a resource instance, the only
/// levels `format` can carry; a resource the registry declares multiple is refused at
/// `/O/I/R` (its instances need a multi-node format).
fn check_target(
    format: ContentFormat,
    target: &Lwm2mPath,
    schema: &dyn Schema,
) -> Result<(), CodecError> {
    let what = match target {
        Lwm2mPath::Resource(..)
            if content::resource_def(schema, target).is_some_and(|d| d.multiple) =>
        {
            format!("the multiple resource {target}")
        }
        Lwm2mPath::Resource(..) | Lwm2mPath::ResourceInstance(..) => return Ok(()),
        Lwm2mPath::Root => "the root level (/)".to_owned(),
        Lwm2mPath::Object(_) => format!("the object level ({target})"),
        Lwm2mPath::Instance(..) => format!("the object instance level ({target})"),
    };
    Err(CodecError::Unsupported { format, what })
}

/// The node for one value at `target` (a resource or resource instance path).
fn value_node(target: &Lwm2mPath, value: Value) -> Node {
    match target {
        Lwm2mPath::ResourceInstance(..) => Node::ResourceInstance(value),
        _ => Node::Resource(ResourceValue::Single(value)),
    }
}

/// The single value a node at `target` holds, or why `format` cannot carry it.
fn single_value<'a>(
    format: ContentFormat,
    target: &Lwm2mPath,
    node: &'a Node,
) -> Result<&'a Value, CodecError> {
    node.check_level(target)?;
    match node {
        Node::Resource(ResourceValue::Single(v)) | Node::ResourceInstance(v) => Ok(v),
        Node::Resource(ResourceValue::Multiple(_)) => Err(CodecError::Unsupported {
            format,
            what: format!("the multiple resource {target}"),
        }),
        Node::Object(_) | Node::Instance(_) => Err(CodecError::Unsupported {
            format,
            what: format!("the {} level ({target})", node.kind()),
        }),
    }
}

/// Decodes a `text/plain` payload at a resource or resource instance path (Core TS 1.1
/// §7.4.1). An unknown resource gives a string (and [`Finding::UnknownResource`]); text
/// that does not parse as the registry's type gives a string and
/// [`Finding::TypeMismatch`]. Invalid UTF-8 is [`CodecError::Malformed`].
pub fn decode_text(
    bytes: &[u8],
    target: &Lwm2mPath,
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Node, CodecError> {
    check_target(ContentFormat::Text, target, schema)?;
    let text = std::str::from_utf8(bytes).map_err(|e| {
        CodecError::malformed("text", e.valid_up_to(), format!("invalid UTF-8: {e}"))
    })?;
    let value = match content::expected_type(schema, target, findings) {
        None => Value::String(text.to_owned()),
        Some(ty) => content::parse_text(ty, text).unwrap_or_else(|_| {
            findings.push(Finding::TypeMismatch {
                path: *target,
                expected: ty,
                found: format!("the text {text:?}"),
            });
            Value::String(text.to_owned())
        }),
    };
    Ok(value_node(target, value))
}

/// Encodes a single resource or a resource instance as `text/plain` (Core TS 1.1 §7.4.1)
/// with [`content::format_text`].
pub fn encode_text(target: &Lwm2mPath, node: &Node, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let value = single_value(ContentFormat::Text, target, node)?;
    out.extend_from_slice(content::format_text(value).as_bytes());
    Ok(())
}

/// Decodes an `application/octet-stream` payload (Core TS 1.1 §7.4.2) at a resource or
/// resource instance path: the bytes are the value of an Opaque resource (or of a resource
/// the registry does not know, with [`Finding::UnknownResource`]). Any other type is
/// [`CodecError::Unsupported`].
pub fn decode_opaque(
    bytes: &[u8],
    target: &Lwm2mPath,
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Node, CodecError> {
    check_target(ContentFormat::Opaque, target, schema)?;
    match content::expected_type(schema, target, findings) {
        None | Some(DataType::Opaque) => Ok(value_node(target, Value::Opaque(bytes.to_vec()))),
        Some(ty) => Err(CodecError::Unsupported {
            format: ContentFormat::Opaque,
            what: format!("the {ty} resource {target}"),
        }),
    }
}

/// Encodes an Opaque value of a single resource or a resource instance as
/// `application/octet-stream` (Core TS 1.1 §7.4.2); other types are
/// [`CodecError::Unsupported`].
pub fn encode_opaque(target: &Lwm2mPath, node: &Node, out: &mut Vec<u8>) -> Result<(), CodecError> {
    match single_value(ContentFormat::Opaque, target, node)? {
        Value::Opaque(bytes) => {
            out.extend_from_slice(bytes);
            Ok(())
        }
        v => Err(CodecError::Unsupported {
            format: ContentFormat::Opaque,
            what: format!("the {} value at {target}", v.data_type()),
        }),
    }
}
