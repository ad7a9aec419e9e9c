//! text/plain and application/octet-stream (Core TS 1.1 §7.4.1, §7.4.2). (placeholder)
use crate::content::{CodecError, Finding};
use crate::ids::Lwm2mPath;
use crate::model::Schema;
use crate::node::Node;
fn not_yet(what: &str) -> CodecError {
    CodecError::Unsupported {
        format: crate::content::ContentFormat::Text,
        what: what.into(),
    }
}
/// Decodes text/plain.
pub fn decode_text(
    _b: &[u8],
    _t: &Lwm2mPath,
    _s: &dyn Schema,
    _f: &mut Vec<Finding>,
) -> Result<Node, CodecError> {
    Err(not_yet("text"))
}
/// Decodes octet-stream.
pub fn decode_opaque(
    _b: &[u8],
    _t: &Lwm2mPath,
    _s: &dyn Schema,
    _f: &mut Vec<Finding>,
) -> Result<Node, CodecError> {
    Err(not_yet("opaque"))
}
/// Encodes text/plain.
pub fn encode_text(_t: &Lwm2mPath, _n: &Node, _o: &mut Vec<u8>) -> Result<(), CodecError> {
    Err(not_yet("text"))
}
/// Encodes octet-stream.
pub fn encode_opaque(_t: &Lwm2mPath, _n: &Node, _o: &mut Vec<u8>) -> Result<(), CodecError> {
    Err(not_yet("opaque"))
}
