//! Fuzzes the CoAP exchange layer with arbitrary datagrams from a few peers.
#![no_main]

use std::time::{Duration, Instant};

use lwm2m_proto::coap::{Config, Endpoint};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut ep = Endpoint::new(Config::default());
    let start = Instant::now();
    for (i, chunk) in data.split(|b| *b == 0xA5).enumerate() {
        let peer = format!("127.0.0.{}:5683", 1 + i % 3).parse().expect("literal address");
        let now = start + Duration::from_millis(i as u64 * 700);
        ep.handle_datagram(now, peer, chunk);
        ep.handle_timeout(now);
        while ep.poll_transmit().is_some() {}
        while ep.poll_event().is_some() {}
    }
});
