//! End-to-end tests, one binary of modules.
// Test code: a failed unwrap is a failed test (clippy only sees `#[test]` functions as tests).
#![allow(clippy::unwrap_used)]
mod dtls_bootstrap;
mod dtls_fleet;
mod dtls_hardening;
mod dtls_server;
mod fleet;
mod fleet_support;
mod interop_aiocoap;
mod interop_coap_client;
mod interop_coap_server;
mod interop_node;
mod proto_boundary;
mod server_api;
mod server_bad_input;
mod server_hardening;
mod server_leshan;
mod server_ops;
mod server_registration;
mod server_support;
mod server_ui;
mod sim_client;
mod sim_interop_node;
mod sim_network;
mod sim_quirks;
mod ui_browser;
