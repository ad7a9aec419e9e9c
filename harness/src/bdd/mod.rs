//! # The Gherkin feature suite: World, backends, step vocabulary, runner
//!
//! The suite (`features/**/*.feature`) runs the OMA LwM2M ETS interoperability cases and
//! the cases beyond it against a [`Subject`]:
//!
//! - [`backend`]: the [`Backend`] trait every step goes through, the subjects, the
//!   capabilities a case may need;
//! - [`inprocess`]: the default backend: our servers and simulated clients on an in-memory
//!   link and a virtual clock (deterministic, fast);
//! - [`secure`]: CoAP over DTLS in the in-process backend (PSK and certificates);
//! - [`device`]: the device under test started, stopped and restarted by the harness from
//!   a command template (`test --device-cmd`);
//! - [`network`]: a real device registering with our servers, or our simulated clients
//!   registering with an external server, over real UDP and real time;
//! - [`adapter`]: how the suite drives an external server under test (our REST API,
//!   Leshan's, a driver process), every feature optional;
//! - [`fleet`]: clients from device profiles, quirk packs and network models;
//! - [`exchange`]: the exchange log (one decoded line per CoAP message) that failure
//!   messages show;
//! - [`world`]: the cucumber World and the waiting and failure helpers;
//! - [`params`]: parameter types (`{path}`, `{format}`, `{code}`, `{duration}`...);
//! - [`steps`]: the vocabulary, one file per domain concept;
//! - [`run`]: the runner, the not-applicable mechanism and the report collector;
//! - [`description`]: the device description a vendor gives (`--device-profile`):
//!   configured values, features and the account's Short Server ID.

pub mod adapter;
pub mod backend;
pub mod description;
pub mod device;
pub mod exchange;
pub mod fleet;
pub mod happening;
pub mod inprocess;
pub mod network;
pub mod params;
pub mod run;
pub mod secure;
pub mod steps;
pub mod verdict;
pub mod world;

pub use backend::{Backend, Capability, Subject};
pub use run::{DEFAULT_SEED, SuiteOptions, SuiteOutcome, run_suite};
pub use world::{Lwm2mWorld, NotApplicable, not_applicable};
