//! The LwM2M Client side: the object tree, the operations on it, and the client state
//! machine that simulated devices run.

pub mod machine;
pub mod tree;

pub use machine::{ClientConfig, ClientEvent, ClientState, Lwm2mClient, Quirks};
pub use tree::{DmError, ExecuteArg, ObjectTree, WriteMode};
