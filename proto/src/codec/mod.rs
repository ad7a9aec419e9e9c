//! The content codecs, one module per format. Use them through [`crate::content`].

pub mod link;
pub mod lwm2m_cbor;
pub mod oma_json;
pub mod senml;
pub mod senml_cbor;
pub mod senml_json;
pub mod text;
pub mod tlv;
