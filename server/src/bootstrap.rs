//! The Bootstrap Server driver: the sans-IO [`BootstrapServer`] (Core TS 1.1 §6.1) on its
//! own UDP socket and task, configurations read from a [`BootstrapStore`] at each
//! Bootstrap-Request (so REST changes apply to the next client at once).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use lwm2m_proto::bootstrap::BootstrapConfig;
use lwm2m_proto::bootstrap::server::{
    BootstrapError, BootstrapEvent, BootstrapServer, BootstrapServerConfig, ConfigSource,
};
use lwm2m_proto::coap::{Counters, Transmit};
use tokio::sync::{broadcast, oneshot};

use crate::driver::{DriverError, Handler, Io, Machine, Task, bind_udp};
use crate::events::{Event, EventBus, PacketTap, Role};
use crate::store::{BootstrapStore, ConfigKey};

/// A [`ConfigSource`] over a [`BootstrapStore`]: the endpoint's own configuration, else the
/// most specific matching pattern's, labelled `endpoint NAME` or `pattern P`.
pub struct StoreConfigSource(pub Arc<dyn BootstrapStore>);

impl ConfigSource for StoreConfigSource {
    fn lookup(&self, endpoint: &str) -> Option<(String, BootstrapConfig)> {
        self.0.lookup(endpoint).map(|(key, config)| {
            let label = match key {
                ConfigKey::Endpoint(e) => format!("endpoint {e}"),
                ConfigKey::Pattern(p) => format!("pattern {p}"),
            };
            (label, config)
        })
    }
}

impl Machine for BootstrapServer {
    type Event = BootstrapEvent;
    fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        BootstrapServer::handle_datagram(self, now, peer, bytes)
    }
    fn handle_timeout(&mut self, now: Instant) {
        BootstrapServer::handle_timeout(self, now)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        BootstrapServer::poll_transmit(self)
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        BootstrapServer::poll_timeout(self)
    }
    fn poll_event(&mut self) -> Option<BootstrapEvent> {
        BootstrapServer::poll_event(self)
    }
}

/// Commands of the Bootstrap Server task.
pub(crate) enum BootstrapCommand {
    Start {
        endpoint: String,
        peer: SocketAddr,
        reply: oneshot::Sender<Result<(), BootstrapError>>,
    },
    IsRunning {
        endpoint: String,
        reply: oneshot::Sender<bool>,
    },
    Counters {
        reply: oneshot::Sender<Counters>,
    },
}

struct BootstrapCore {
    bus: EventBus,
}

impl Handler<BootstrapServer> for BootstrapCore {
    type Command = BootstrapCommand;

    fn command(&mut self, machine: &mut BootstrapServer, now: Instant, command: BootstrapCommand) {
        match command {
            BootstrapCommand::Start {
                endpoint,
                peer,
                reply,
            } => {
                let _ = reply.send(machine.start(now, &endpoint, peer));
            }
            BootstrapCommand::IsRunning { endpoint, reply } => {
                let _ = reply.send(machine.is_running(&endpoint));
            }
            BootstrapCommand::Counters { reply } => {
                let _ = reply.send(machine.counters().clone());
            }
        }
    }

    fn event(&mut self, _: &BootstrapServer, event: BootstrapEvent) {
        match &event {
            BootstrapEvent::Finished { endpoint, duration } => {
                tracing::info!("bootstrap of {endpoint} finished in {duration:?}")
            }
            BootstrapEvent::Failed {
                endpoint,
                step,
                reason,
                ..
            } => tracing::warn!("bootstrap of {endpoint} failed at {step}: {reason}"),
            _ => {}
        }
        self.bus.send(Event::Bootstrap(event));
    }
}

/// How to start a Bootstrap Server driver.
#[derive(Clone)]
pub struct BootstrapOptions {
    /// Where to bind, e.g. `127.0.0.1:5783` (port 0: any free port).
    pub bind: SocketAddr,
    /// The machine's settings.
    pub config: BootstrapServerConfig,
    /// Where configurations come from.
    pub store: Arc<dyn BootstrapStore>,
    /// Where events go.
    pub bus: EventBus,
    /// Sees every datagram, if set.
    pub tap: Option<Arc<dyn PacketTap>>,
}

impl BootstrapOptions {
    /// Defaults: the default machine settings, a new event bus, no tap.
    pub fn new(bind: SocketAddr, store: Arc<dyn BootstrapStore>) -> Self {
        Self {
            bind,
            config: BootstrapServerConfig::default(),
            store,
            bus: EventBus::default(),
            tap: None,
        }
    }
}

/// A cloneable handle on a running Bootstrap Server driver.
#[derive(Clone)]
pub struct BootstrapHandle {
    task: Arc<Task<BootstrapCommand>>,
    bus: EventBus,
}

impl std::fmt::Debug for BootstrapHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapHandle")
            .field("local_addr", &self.task.local)
            .finish_non_exhaustive()
    }
}

/// Binds the socket and spawns the Bootstrap Server task. Must be called inside a Tokio
/// runtime.
pub fn start_bootstrap(options: BootstrapOptions) -> io::Result<BootstrapHandle> {
    let socket = bind_udp(options.bind)?;
    let local = socket.local_addr()?;
    let machine = BootstrapServer::new(options.config, Box::new(StoreConfigSource(options.store)));
    let io = Io {
        socket,
        local,
        role: Role::Bootstrap,
        tap: options.tap,
        bus: options.bus.clone(),
    };
    tracing::info!("LwM2M Bootstrap Server listening on coap://{local}");
    let core = BootstrapCore {
        bus: options.bus.clone(),
    };
    Ok(BootstrapHandle {
        task: Arc::new(Task::spawn(machine, core, io)),
        bus: options.bus,
    })
}

/// Why a Server Initiated Bootstrap did not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The machine refused.
    #[error(transparent)]
    Refused(#[from] BootstrapError),
    /// The driver task has stopped.
    #[error("the bootstrap server has stopped")]
    Stopped,
}

impl BootstrapHandle {
    /// Server Initiated Bootstrap (Core TS 1.1 §5.2) of `endpoint` at `peer`; its progress
    /// comes as events.
    pub async fn start_session(&self, endpoint: &str, peer: SocketAddr) -> Result<(), StartError> {
        let (reply, rx) = oneshot::channel();
        self.task
            .send(BootstrapCommand::Start {
                endpoint: endpoint.to_owned(),
                peer,
                reply,
            })
            .await
            .map_err(|_| StartError::Stopped)?;
        Ok(rx.await.map_err(|_| StartError::Stopped)??)
    }

    /// Whether a session with `endpoint` is running.
    pub async fn is_running(&self, endpoint: &str) -> Result<bool, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.task
            .send(BootstrapCommand::IsRunning {
                endpoint: endpoint.to_owned(),
                reply,
            })
            .await?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// The CoAP layer's traffic counters.
    pub async fn counters(&self) -> Result<Counters, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.task.send(BootstrapCommand::Counters { reply }).await?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// Events from now on (of every driver on the same bus).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.bus.subscribe()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.task.local
    }

    /// Stops the task (after sending what is already queued) and waits for it.
    pub async fn shutdown(&self) {
        self.task.shutdown().await
    }
}
