//! End-to-end tests, one binary of modules.
// Test code: a failed unwrap is a failed test (clippy only sees `#[test]` functions as tests).
#![allow(clippy::unwrap_used)]
mod fleet;
mod fleet_support;
mod proto_boundary;
mod server_api;
mod server_support;
mod sim_client;
mod sim_interop_node;
mod sim_network;
mod sim_quirks;
