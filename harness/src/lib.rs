//! # lwm2m-harness: the library behind the `lwm2m-harness` command
//!
//! What it does today: recording (pcap files with synthesized IP/UDP headers that
//! Wireshark decodes; per-operation latency histograms as `.hgrm` and HdrHistogram logs).
//! The scenario runner, the cucumber World and the reports arrive with the harness issue.
#![warn(missing_docs)]

pub mod record;
pub mod report;
