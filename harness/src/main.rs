//! The `lwm2m-harness` command line.
fn main() {}
