//! The LwM2M Client side: the object tree and the operations on it.

pub mod tree;

pub use tree::{DmError, ExecuteArg, ObjectTree, WriteMode};
