//! LwM2M CBOR and single-value CBOR (placeholder)
use crate::content::{CodecError, Finding};
use crate::ids::Lwm2mPath;
use crate::model::Schema;
use crate::node::{Node, Record};
fn not_yet(what: &str) -> CodecError {
    CodecError::Unsupported {
        format: crate::content::ContentFormat::Text,
        what: what.into(),
    }
}
/// Decodes LwM2M CBOR.
pub fn decode_records(
    _b: &[u8],
    _s: &dyn Schema,
    _f: &mut Vec<Finding>,
) -> Result<Vec<Record>, CodecError> {
    Err(not_yet("lwm2m-cbor"))
}
/// Encodes LwM2M CBOR.
pub fn encode_records(_r: &[Record], _o: &mut Vec<u8>) -> Result<(), CodecError> {
    Err(not_yet("lwm2m-cbor"))
}
/// Decodes application/cbor.
pub fn decode_single(
    _b: &[u8],
    _t: &Lwm2mPath,
    _s: &dyn Schema,
    _f: &mut Vec<Finding>,
) -> Result<Node, CodecError> {
    Err(not_yet("cbor"))
}
/// Encodes application/cbor.
pub fn encode_single(_t: &Lwm2mPath, _n: &Node, _o: &mut Vec<u8>) -> Result<(), CodecError> {
    Err(not_yet("cbor"))
}
