//! The LwM2M Client side: the object tree, the operations on it, and the client state
//! machine that simulated devices run.

pub mod machine;
mod notify;
pub mod tree;
mod wire;

#[cfg(test)]
mod tests;

pub use crate::coap::uri::{CoapUri, parse_coap_uri};
pub use machine::{
    ClientConfig, ClientEvent, ClientState, FIRMWARE_UPDATE_DURATION, Lwm2mClient, Quirks,
};
pub use tree::{DmError, ExecuteArg, ExecuteArgsError, ObjectTree, WriteMode};
