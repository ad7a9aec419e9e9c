//! Our own tokio LwM2M Server (`lwm2m_server`, what `serve` runs) in this process as a
//! server adapter, with no API in between: the reference implementation of
//! [`ServerAdapter`], which the HTTP adapters are checked against (same operations, same
//! events, less what their APIs cannot carry).

use std::collections::BTreeSet;

use lwm2m_proto::server::{OpError, Operation, Response};
use lwm2m_server::{DriverError, Event, ServerHandle};
use tokio::sync::broadcast;

use super::{AdapterError, AdapterInfo, EventSink, Feature, RegistrationView, ServerAdapter};

/// The adapter's name.
pub const NAME: &str = "in-process";

/// Our server's handle as an adapter (see the module documentation).
pub struct InProcessServer {
    server: ServerHandle,
    runtime: tokio::runtime::Handle,
    info: AdapterInfo,
}

impl std::fmt::Debug for InProcessServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessServer")
            .field("server", &self.server.local_addr())
            .finish_non_exhaustive()
    }
}

impl InProcessServer {
    /// The server behind `server`, whose tasks run on `runtime`.
    pub fn new(server: ServerHandle, runtime: tokio::runtime::Handle) -> Self {
        let features: BTreeSet<Feature> = Feature::all()
            .into_iter()
            .filter(|f| {
                !matches!(
                    f,
                    Feature::PutCredentials | Feature::BootstrapConfig | Feature::SecurityEvents
                )
            })
            .collect();
        Self {
            server,
            runtime,
            info: AdapterInfo {
                adapter: NAME.to_owned(),
                product: "lwm2m-harness".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                features,
            },
        }
    }
}

impl ServerAdapter for InProcessServer {
    fn info(&self) -> &AdapterInfo {
        &self.info
    }

    fn request(&self, endpoint: &str, operation: &Operation) -> Result<Response, OpError> {
        match self
            .runtime
            .block_on(self.server.request(endpoint, operation.clone()))
        {
            Ok(r) => Ok(r),
            Err(DriverError::Op(e)) => Err(e),
            Err(e) => Err(OpError::Invalid {
                reason: format!("{NAME}: {e}"),
            }),
        }
    }

    fn registration(&self, endpoint: &str) -> Result<Option<RegistrationView>, AdapterError> {
        Ok(self
            .server
            .registrations()
            .get(endpoint)
            .map(|e| RegistrationView {
                registration: e.registration,
                sleeping: Some(e.sleeping),
            }))
    }

    fn subscribe(&self, sink: EventSink) -> Result<(), AdapterError> {
        let mut events = self.server.subscribe();
        self.runtime.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        if let Event::Server(s) = &*e
                            && !matches!(s, lwm2m_proto::server::ServerEvent::Completed { .. })
                            && !sink(super::Happening::Server(s.clone()))
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(())
    }
}
