//! # lwm2m-harness: the library behind the `lwm2m-harness` command
//!
//! What it does today: recording (pcap files with synthesized IP/UDP headers that
//! Wireshark decodes; per-operation latency histograms as `.hgrm` and HdrHistogram logs),
//! reports (JSON, HTML, JUnit), the scenario [`runner`] (`lwm2m-harness run`), and the
//! Gherkin feature suite ([`bdd`]: cucumber World, in-process backend on a virtual clock,
//! step vocabulary, runner).
#![warn(missing_docs)]

pub mod bdd;
pub mod record;
pub mod report;
pub mod runner;
