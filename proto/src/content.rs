//! Content formats (Core TS 1.1 §7.4) and the one entry point to every codec:
//! [`decode`] / [`encode`] for a node at a path, [`decode_records`] / [`encode_records`]
//! for the flat multi-node lists of composite operations, Send and timestamped data.
//!
//! Decoding is guided by a [`Schema`] (usually the registry). What does not fit the
//! schema is not dropped and not coerced into garbage: it is kept as the format gave it
//! and reported as a [`Finding`].

use crate::codec::{lwm2m_cbor, oma_json, senml_cbor, senml_json, text, tlv};
use crate::ids::Lwm2mPath;
use crate::model::Schema;
use crate::node::{Node, Record};

pub use crate::codec::{
    CodecError, ContentFormat, Decoded, Finding, Number, checked_value, expected_type,
    format_float, format_text, parse_text, resource_def, typed_number, typed_string,
};

/// Decodes a payload that answers a request on `target` (Read, Write, Create, notifications).
pub fn decode(
    format: ContentFormat,
    bytes: &[u8],
    target: &Lwm2mPath,
    schema: &dyn Schema,
) -> Result<Decoded<Node>, CodecError> {
    let mut findings = Vec::new();
    if format.is_legacy() {
        findings.push(Finding::LegacyContentFormat {
            code: format.code(),
        });
    }
    let node = match format.canonical() {
        ContentFormat::Text => text::decode_text(bytes, target, schema, &mut findings)?,
        ContentFormat::Opaque => text::decode_opaque(bytes, target, schema, &mut findings)?,
        ContentFormat::Cbor => lwm2m_cbor::decode_single(bytes, target, schema, &mut findings)?,
        ContentFormat::Tlv => tlv::decode(bytes, target, schema, &mut findings)?,
        ContentFormat::SenmlJson | ContentFormat::SenmlCbor | ContentFormat::OmaJson => {
            let records = decode_records_into(format, bytes, schema, &mut findings)?;
            records_to_node(target, &records, schema)?
        }
        ContentFormat::Lwm2mCbor => {
            let records = lwm2m_cbor::decode_records(bytes, schema, &mut findings)?;
            records_to_node(target, &records, schema)?
        }
        f => {
            return Err(CodecError::Unsupported {
                format: f,
                what: "LwM2M resource values".into(),
            });
        }
    };
    node.check_level(target)?;
    Ok(Decoded {
        content: node,
        findings,
    })
}

/// Encodes the node at `target` in `format`.
pub fn encode(
    format: ContentFormat,
    target: &Lwm2mPath,
    node: &Node,
) -> Result<Vec<u8>, CodecError> {
    node.check_level(target)?;
    let mut out = Vec::new();
    match format.canonical() {
        ContentFormat::Text => text::encode_text(target, node, &mut out)?,
        ContentFormat::Opaque => text::encode_opaque(target, node, &mut out)?,
        ContentFormat::Cbor => lwm2m_cbor::encode_single(target, node, &mut out)?,
        ContentFormat::Tlv => tlv::encode(target, node, &mut out)?,
        ContentFormat::SenmlJson => senml_json::encode(&node.to_records(target), &mut out)?,
        ContentFormat::SenmlCbor => senml_cbor::encode(&node.to_records(target), &mut out)?,
        ContentFormat::OmaJson => oma_json::encode(target, &node.to_records(target), &mut out)?,
        ContentFormat::Lwm2mCbor => lwm2m_cbor::encode_records(&node.to_records(target), &mut out)?,
        f => {
            return Err(CodecError::Unsupported {
                format: f,
                what: "LwM2M resource values".into(),
            });
        }
    }
    Ok(out)
}

/// Decodes a flat list of records (Read-Composite request paths, Write-Composite,
/// Observe-Composite notifications, Send, timestamped notifications).
pub fn decode_records(
    format: ContentFormat,
    bytes: &[u8],
    schema: &dyn Schema,
) -> Result<Decoded<Vec<Record>>, CodecError> {
    let mut findings = Vec::new();
    if format.is_legacy() {
        findings.push(Finding::LegacyContentFormat {
            code: format.code(),
        });
    }
    let content = decode_records_into(format, bytes, schema, &mut findings)?;
    Ok(Decoded { content, findings })
}

fn decode_records_into(
    format: ContentFormat,
    bytes: &[u8],
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Vec<Record>, CodecError> {
    match format.canonical() {
        ContentFormat::SenmlJson => senml_json::decode(bytes, schema, findings),
        ContentFormat::SenmlCbor => senml_cbor::decode(bytes, schema, findings),
        ContentFormat::OmaJson => oma_json::decode(bytes, schema, findings),
        ContentFormat::Lwm2mCbor => lwm2m_cbor::decode_records(bytes, schema, findings),
        f => Err(CodecError::Unsupported {
            format: f,
            what: "a list of records".into(),
        }),
    }
}

/// Encodes a flat list of records (composite operations, Send).
pub fn encode_records(format: ContentFormat, records: &[Record]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    match format.canonical() {
        ContentFormat::SenmlJson => senml_json::encode(records, &mut out)?,
        ContentFormat::SenmlCbor => senml_cbor::encode(records, &mut out)?,
        ContentFormat::OmaJson => oma_json::encode(&Lwm2mPath::Root, records, &mut out)?,
        ContentFormat::Lwm2mCbor => lwm2m_cbor::encode_records(records, &mut out)?,
        f => {
            return Err(CodecError::Unsupported {
                format: f,
                what: "a list of records".into(),
            });
        }
    }
    Ok(out)
}

/// Builds the node at `target` from records, asking the schema which resources are multiple.
pub fn records_to_node(
    target: &Lwm2mPath,
    records: &[Record],
    schema: &dyn Schema,
) -> Result<Node, CodecError> {
    let is_multiple = |p: &Lwm2mPath| resource_def(schema, p).is_some_and(|d| d.multiple);
    Ok(Node::from_records(target, records, &is_multiple)?)
}
