//! The Bootstrap interface (Core TS 1.1 §5.2, §6.1): configurations, and the sequence the
//! Bootstrap Server runs against one client.

pub mod config;
pub mod error;
pub mod server;

pub use config::{AclInstance, BootstrapConfig, SecurityInstance, SecurityMode, ServerInstance};
pub use server::{
    BootstrapError, BootstrapEvent, BootstrapServer, BootstrapServerConfig, ConfigSource,
    FailureReason, MemoryConfigSource,
};
