//! # lwm2m-proto: the sans-IO LwM2M core
//!
//! What it does: identifiers and paths ([`ids`]), values ([`value`]), the object model and
//! the registry of object definitions loaded from OMA DDF XML ([`model`], [`registry`]),
//! every LwM2M content format in both directions ([`content`], [`codec`]), and the CoAP
//! exchange layer (confirmable retransmission, deduplication, tokens, observe, block-wise)
//! as a state machine ([`coap`]).
//!
//! What it does not do: no sockets, no tasks, no clock. Time is passed in, datagrams are
//! handed in with `handle_datagram(now, peer, bytes)` and taken out with `poll_transmit()`.
//! The tokio drivers live in the `lwm2m-server` and `lwm2m-simulator` crates.
#![warn(missing_docs)]

pub mod admission;
pub mod bootstrap;
pub mod client;
pub mod coap;
pub mod codec;
pub mod content;
pub mod hash;
pub mod ids;
pub mod interface;
pub mod machine;
pub mod model;
pub mod node;
pub mod redact;
pub mod registration;
pub mod registry;
pub mod server;
pub mod tap;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod value;

pub use content::{CodecError, ContentFormat, Decoded, Finding};
pub use ids::{InstanceId, Lwm2mPath, ObjectId, ResourceId, ResourceInstanceId};
pub use machine::{Admitting, Machine};
pub use model::{NoSchema, ObjectDef, Operations, ResourceDef, Schema};
pub use node::{Instance, Node, Record, ResourceValue};
pub use value::{DataType, ObjectLink, Value, ValueError};
