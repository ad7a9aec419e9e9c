//! The LwM2M Server and Bootstrap Server (tokio drivers). Not built yet: see the open issue for the servers.
#![warn(missing_docs)]
