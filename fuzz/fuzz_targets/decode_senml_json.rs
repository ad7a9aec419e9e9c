//! Fuzzes the senml_json decoder at every node level, with and without the registry.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lwm2m_fuzz::decode_everything(lwm2m_proto::ContentFormat::SenmlJson, data);
});
