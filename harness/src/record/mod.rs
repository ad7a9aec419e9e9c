//! Recording: every datagram into pcap files, latencies per operation into HdrHistograms.

pub mod capture;
pub mod latency;
pub mod pcap;

pub use latency::{Latencies, Summary};
pub use pcap::PcapRecorder;
