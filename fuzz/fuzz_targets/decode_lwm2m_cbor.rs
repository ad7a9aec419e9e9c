//! Fuzzes the lwm2m_cbor decoder at every node level, with and without the registry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lwm2m_proto::content::{self, ContentFormat};
use lwm2m_proto::{Lwm2mPath, NoSchema, registry::Registry};

static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();

fuzz_target!(|data: &[u8]| {
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
    let _ = content::decode(ContentFormat::Lwm2mCbor, bytes, &target, registry);
    let _ = content::decode(ContentFormat::Lwm2mCbor, bytes, &target, &NoSchema);
    let _ = content::decode_records(ContentFormat::Lwm2mCbor, bytes, registry);
});
