//! TLV (Core TS 1.1 §7.4.3). (placeholder)
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
/// Decodes TLV.
pub fn decode(
    _b: &[u8],
    _t: &Lwm2mPath,
    _s: &dyn Schema,
    _f: &mut Vec<Finding>,
) -> Result<Node, CodecError> {
    Err(not_yet("tlv"))
}
/// Encodes TLV.
pub fn encode(_t: &Lwm2mPath, _n: &Node, _o: &mut Vec<u8>) -> Result<(), CodecError> {
    Err(not_yet("tlv"))
}
