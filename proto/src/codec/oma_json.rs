//! OMA JSON (placeholder)
use crate::content::{CodecError, Finding};
use crate::ids::Lwm2mPath;
use crate::model::Schema;
use crate::node::Record;
fn not_yet(what: &str) -> CodecError {
    CodecError::Unsupported {
        format: crate::content::ContentFormat::Text,
        what: what.into(),
    }
}
/// Decodes.
pub fn decode(
    _b: &[u8],
    _s: &dyn Schema,
    _f: &mut Vec<Finding>,
) -> Result<Vec<Record>, CodecError> {
    Err(not_yet("json"))
}
/// Encodes with base name `base`.
pub fn encode(_base: &Lwm2mPath, _r: &[Record], _o: &mut Vec<u8>) -> Result<(), CodecError> {
    Err(not_yet("json"))
}
