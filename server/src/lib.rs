//! # lwm2m-server: the LwM2M Server and Bootstrap Server
//!
//! What it does today: the persistent stores (security credentials with unique PSK
//! identities, bootstrap configurations by endpoint and by endpoint-name pattern).
//! What it does not do yet: the tokio drivers, the REST API and events (see the open
//! server issue).
#![warn(missing_docs)]

pub mod store;
