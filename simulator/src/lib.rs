//! # lwm2m-simulator: the fleet of simulated LwM2M clients
//!
//! What it does so far: the configuration layer the fleet driver is built on —
//! device [`profile`]s (objects, initial values, LwM2M version, binding, formats), value
//! [`generator`]s, [`quirks`] of real implementations, [`network`] models (NAT idle
//! timeouts, queue-mode sleep schedules, impairment) with their seeded sans-IO behaviour,
//! and the loader of the `scenarios/` folder ([`scenarios`]). Every random choice derives
//! from one fleet seed ([`seed`]).
//!
//! What it does not do (yet): no sockets, no tasks; the tokio fleet driver comes later.
#![warn(missing_docs)]

pub mod config;
pub mod duration;
pub mod fleet;
pub mod generator;
pub mod link;
pub mod network;
pub mod profile;
pub mod quirks;
pub mod scenarios;
pub mod security;
pub mod seed;

pub use config::ConfigError;
pub use generator::{Generator, GeneratorSpec};
pub use network::{Impairment, Mapping, Nat, NetworkModel, SleepSchedule};
pub use profile::{DeviceTemplate, Profile, instances_for, load_profile};
pub use quirks::{Quirk, QuirkPack, QuirkPacks};
pub use scenarios::{Scenarios, load_all_scenario_files};
