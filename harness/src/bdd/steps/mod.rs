//! The step vocabulary, one file per domain concept (design convention 8). Steps are
//! registered with cucumber's attribute macros; this module only gathers the files.

pub mod assertions;
pub mod bootstrap;
pub mod clients;
pub mod device_management;
pub mod network;
pub mod observe;
pub mod registration;
pub mod send;
pub mod servers;
