//! End-to-end tests, one binary of modules.
mod fleet;
mod proto_boundary;
