//! # lwm2m-server: the LwM2M Server and Bootstrap Server
//!
//! What it does: runs the sans-IO LwM2M Server machine of `lwm2m-proto` on a tokio UDP socket
//! ([`driver`]) and the Bootstrap Server machine on another ([`bootstrap`]), mirrors registrations into a sharded store ([`registrations`]), reports
//! events and every datagram ([`events`]), serves the REST API with server-sent events
//! ([`rest`], with Leshan-compatible routes in [`leshan`]) behind a bearer token
//! ([`auth`]), and keeps security credentials and
//! bootstrap configurations on disk ([`store`]). `serve`'s web UI, session cookie and CORS
//! are in [`ui`], its Prometheus metrics in [`metrics`].
//!
//! Both servers also listen for CoAP over DTLS ([`dtls`]): the LwM2M Server with pre-shared
//! keys from the security store, the Bootstrap Server with the keys of the bootstrap-server
//! accounts in its configurations ([`store::BootstrapCredentials`]); certificates (the
//! endpoint name is the common name) when given a [`dtls::CertificateConfig`]. The
//! Bootstrap Server can put the LwM2M Server credentials it hands out into the LwM2M
//! Server's security store ([`BootstrapOptions::provision`]).
//!
//! With the stores in Redis ([`store::redis`]), several processes are one cluster
//! ([`cluster`]): any instance answers for any client, operations leave from the instance
//! whose socket the client last spoke to, and a client's Update is taken over by whichever
//! instance it lands on.
//!
//! What it does not do: raw public keys, DTLS Connection ID, Server Initiated Bootstrap over
//! DTLS, SMS or TCP bindings.
#![warn(missing_docs)]

pub mod auth;
pub mod bootstrap;
pub mod cluster;
pub mod driver;
pub mod dtls;
pub mod events;
pub mod http;
pub mod json;
pub mod leshan;
mod listener;
pub mod metrics;
pub mod plain;
mod query;
pub mod registrations;
pub mod rest;
pub mod store;
mod task;
mod udp;
pub mod ui;

pub use bootstrap::{BootstrapHandle, BootstrapOptions, start_bootstrap};
pub use driver::{DriverError, ServerHandle, ServerOptions, start_server};
pub use dtls::DtlsOptions;
pub use events::{Direction, Event, EventBus, PacketTap, Role, SecurityEvent};
pub use registrations::{ClientEntry, RegistrationStore, ShardedRegistrations};
