//! End-to-end tests, one binary of modules.
mod proto_boundary;
