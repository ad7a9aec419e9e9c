//! Fuzzes the CoRE link-format parsers (generic, registration payload, Discover, queries).
#![no_main]

use lwm2m_proto::codec::link;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(links) = link::parse_link_payload(data) {
        let _ = link::RegistrationLinks::from_links(&links);
        let _ = link::format_links(&links);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = link::parse_discover(text);
        let query: Vec<&str> = text.split('&').collect();
        let _ = link::AttributeUpdate::from_query(&query);
    }
});
