//! Shared body of the decoder fuzz targets.

use std::sync::OnceLock;

use lwm2m_proto::content::{self, ContentFormat};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::{Lwm2mPath, NoSchema};

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// Decodes `data` (its first byte picks the target level) in `format`, with the shipped
/// registry and without a schema, as a node and as a record list. Must never panic.
pub fn decode_everything(format: ContentFormat, data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let registry = REGISTRY.get_or_init(Registry::embedded);
    let target = match selector % 6 {
        0 => Lwm2mPath::Root,
        1 => Lwm2mPath::object(3),
        2 => Lwm2mPath::instance(3, 0),
        3 => Lwm2mPath::resource(3, 0, 0),
        4 => Lwm2mPath::resource(3, 0, 11),
        _ => Lwm2mPath::resource_instance(3, 0, 11, 0),
    };
    let _ = content::decode(format, bytes, &target, registry);
    let _ = content::decode(format, bytes, &target, &NoSchema);
    let _ = content::decode_records(format, bytes, registry);
}
