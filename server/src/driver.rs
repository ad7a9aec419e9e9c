//! The LwM2M Server's driver: one task per socket runs a sans-IO machine
//! (`crate::task`: receive loop, its timer, and a command channel), and a cloneable handle
//! talks to it. A DTLS listener has a task per socket in front of its machine's task (see
//! `crate::listener`).
//!
//! [`start_server`] runs the LwM2M Server machine ([`Lwm2mServer`], Core TS 1.1 §6.2-§6.4).
//! The task owns the machine; the handle sends it commands and gets the outcome of each
//! operation back through a oneshot matched by [`OpId`]. Registrations are mirrored into a
//! [`RegistrationStore`] as the machine reports them, so reads never reach the task.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lwm2m_proto::Lwm2mPath;
use lwm2m_proto::coap::Counters;
use lwm2m_proto::hash::HashMap;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{
    Lwm2mServer, ObservationId, ObservationRecord, OpError, OpId, Operation, Response,
    ServerConfig, ServerEvent,
};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::dtls::{DtlsOptions, Gated};
use crate::events::{Event, EventBus, PacketTap, Role};
use crate::listener::Listener;
use crate::plain::{Adopt, Found, PlainServer};
use crate::registrations::{RegistrationStore, ShardedRegistrations};
use crate::task::{Control, Handler, Io, Task};
pub use crate::task::{DriverError, RECEIVE_BUFFER, bind_udp};

type Reply<T> = oneshot::Sender<T>;

/// Commands of the LwM2M Server task.
pub(crate) enum ServerCommand {
    Request {
        endpoint: String,
        operation: Operation,
        reply: Reply<Result<Response, OpError>>,
    },
    Observations {
        endpoint: String,
        reply: Reply<Vec<(ObservationId, Vec<Lwm2mPath>)>>,
    },
    Counters {
        reply: Reply<Counters>,
    },
    /// An Update or De-register from `peer` named a registration id this machine does not
    /// hold; `registration` is what the shared store has under it (a cluster): taken
    /// over, then the datagram handled (answered 4.04 if nothing was found).
    Adopt {
        registration: Option<Box<lwm2m_proto::server::Registration>>,
        /// Its observations, taken up too.
        observations: Vec<ObservationRecord>,
        /// The datagram that asked (none when restoring at start).
        datagram: Option<(SocketAddr, Vec<u8>)>,
    },
    /// Another instance of the cluster took the endpoint over: forget it here.
    Release {
        endpoint: String,
    },
}

/// Which of an LwM2M Server's two machines, the plain CoAP one or the DTLS one, holds each
/// endpoint: the one its latest Register came to. Operations on the endpoint go to that
/// machine; a registration left behind on the other transport ends without touching the
/// current one.
#[derive(Debug, Default)]
pub struct Transports(HashMap<String, bool>);

impl Transports {
    /// The endpoint registered with the DTLS machine (`secure`) or the plain one; the
    /// transport that held it before, if any.
    pub fn registered(&mut self, endpoint: &str, secure: bool) -> Option<bool> {
        self.0.insert(endpoint.to_owned(), secure)
    }

    /// Whether that machine holds the endpoint.
    pub fn holds(&self, endpoint: &str, secure: bool) -> bool {
        self.0.get(endpoint) == Some(&secure)
    }

    /// The endpoint's registration with that machine ended: forgotten if it was the
    /// current one (the answer).
    pub fn ended(&mut self, endpoint: &str, secure: bool) -> bool {
        let held = self.holds(endpoint, secure);
        if held {
            self.0.remove(endpoint);
        }
        held
    }

    /// Whether the endpoint's current registration is the DTLS machine's.
    pub fn is_secure(&self, endpoint: &str) -> bool {
        self.holds(endpoint, true)
    }
}

/// The [`Transports`] shared by the two tasks of a server and its handle.
type Routes = Arc<Mutex<Transports>>;

struct ServerCore {
    pending: HashMap<OpId, Reply<Result<Response, OpError>>>,
    registrations: Arc<dyn RegistrationStore>,
    bus: EventBus,
    /// This task's machine is the DTLS one.
    secure: bool,
    routes: Routes,
    /// Established observations kept in a shared store: their endpoint and token.
    observed: HashMap<ObservationId, (String, Vec<u8>)>,
}

impl ServerCore {
    fn run_command(&mut self, machine: &mut Lwm2mServer, now: Instant, command: ServerCommand) {
        match command {
            ServerCommand::Request {
                endpoint,
                operation,
                reply,
            } => match machine.request(now, &endpoint, operation) {
                Ok(op) => {
                    self.pending.insert(op, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            ServerCommand::Observations { endpoint, reply } => {
                let _ = reply.send(machine.observations(&endpoint));
            }
            ServerCommand::Counters { reply } => {
                let _ = reply.send(machine.counters());
            }
            ServerCommand::Adopt {
                registration,
                observations,
                datagram,
            } => {
                if let Some(registration) = registration {
                    let endpoint = registration.endpoint.clone();
                    match &datagram {
                        Some((peer, _)) => tracing::info!(
                            "LwM2M Server: endpoint {endpoint:?} (registration {}) taken over \
                             from another instance; its client now speaks to this one from {peer}",
                            registration.id
                        ),
                        None => tracing::debug!(
                            "LwM2M Server: registration {} of {endpoint:?} taken up again",
                            registration.id
                        ),
                    }
                    lock(&self.routes).registered(&endpoint, self.secure);
                    machine.adopt(now, *registration);
                    for record in observations {
                        match machine.restore_observation(now, &endpoint, &record) {
                            Ok(id) => {
                                self.observed.insert(id, (endpoint.clone(), record.token));
                            }
                            Err(e) => tracing::warn!(
                                "LwM2M Server: an observation of {endpoint:?} not taken up: {e}"
                            ),
                        }
                    }
                }
                if let Some((peer, bytes)) = datagram {
                    machine.handle_datagram(now, peer, &bytes);
                }
            }
            ServerCommand::Release { endpoint } => {
                lock(&self.routes).ended(&endpoint, self.secure);
                // Its observations go on at the instance that took it over: ending them
                // here must not forget them in the store.
                self.observed.retain(|_, (ep, _)| *ep != endpoint);
                if machine.registration(&endpoint).is_some() {
                    tracing::info!(
                        "LwM2M Server: endpoint {endpoint:?} was taken over by another instance"
                    );
                    machine.release(now, &endpoint);
                }
            }
        }
    }

    /// True if this task's machine holds the endpoint (its latest registration came here).
    fn holds(&self, endpoint: &str) -> bool {
        lock(&self.routes).holds(endpoint, self.secure)
    }

    fn server_event(&mut self, event: ServerEvent) {
        match &event {
            ServerEvent::Registered {
                registration,
                replaced,
            } => {
                let before = lock(&self.routes).registered(&registration.endpoint, self.secure);
                let transport = |secure| if secure { "DTLS" } else { "plain CoAP" };
                match (replaced, before) {
                    // Allowed under NoSec (Core TS 1.1 §6.2.1: a Register replaces the
                    // endpoint's registration), but an operator must see a takeover.
                    (Some(old), _) if old.address != registration.address => tracing::info!(
                        "LwM2M Server: endpoint {:?} registered again from {}; its registration \
                         {} from {} is replaced",
                        registration.endpoint,
                        registration.address,
                        old.id,
                        old.address
                    ),
                    (None, Some(other)) if other != self.secure => tracing::info!(
                        "LwM2M Server: endpoint {:?} registered from {} over {}; its \
                         registration over {} is replaced",
                        registration.endpoint,
                        registration.address,
                        transport(self.secure),
                        transport(other)
                    ),
                    _ => {}
                }
                self.registrations.upsert(registration.clone())
            }
            ServerEvent::Updated { registration, .. } if self.holds(&registration.endpoint) => {
                self.registrations.upsert(registration.clone())
            }
            // A registration left behind on the other transport ends without touching the
            // current one.
            ServerEvent::Deregistered { registration } | ServerEvent::Expired { registration }
                if lock(&self.routes).ended(&registration.endpoint, self.secure) =>
            {
                self.registrations.remove(&registration.endpoint);
            }
            ServerEvent::Sleeping { endpoint } => self.registrations.set_sleeping(endpoint, true),
            ServerEvent::Awake { endpoint } => self.registrations.set_sleeping(endpoint, false),
            ServerEvent::Completed { op, result, .. } => {
                if let Some(reply) = self.pending.remove(op) {
                    // The asker may have given up (timeout); nothing to do then.
                    let _ = reply.send(result.clone());
                }
            }
            _ => {}
        }
        self.bus.send(Event::Server(event));
    }
}

impl ServerCore {
    /// Keeps established observations in a shared store, and forgets the ended ones.
    fn track_observations(&mut self, machine: &Lwm2mServer, event: &Event) {
        if !self.registrations.is_shared() {
            return;
        }
        match event {
            Event::Server(ServerEvent::Completed {
                endpoint,
                result: Ok(response),
                ..
            }) => {
                if let Some(id) = response.observation
                    && let Some(record) = machine.observation_record(id)
                {
                    self.registrations.save_observation(endpoint, &record);
                    self.observed.insert(id, (endpoint.clone(), record.token));
                }
            }
            Event::Server(ServerEvent::ObservationEnded { observation, .. }) => {
                if let Some((endpoint, token)) = self.observed.remove(observation) {
                    self.registrations.remove_observation(&endpoint, &token);
                }
            }
            _ => {}
        }
    }

    fn machine_event(&mut self, event: Event) {
        match event {
            Event::Server(e) => self.server_event(e),
            other => self.bus.send(other),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handler<PlainServer> for ServerCore {
    type Command = ServerCommand;

    fn command(&mut self, machine: &mut PlainServer, now: Instant, command: ServerCommand) {
        self.run_command(&mut machine.inner, now, command);
    }

    fn event(&mut self, machine: &PlainServer, event: Event) {
        self.track_observations(&machine.inner, &event);
        self.machine_event(event);
    }

    fn settle(&mut self) {
        self.registrations.flush();
    }
}

impl Handler<Gated<Lwm2mServer>> for ServerCore {
    type Command = ServerCommand;

    fn command(&mut self, machine: &mut Gated<Lwm2mServer>, now: Instant, command: ServerCommand) {
        self.run_command(&mut machine.inner, now, command);
    }

    fn event(&mut self, machine: &Gated<Lwm2mServer>, event: Event) {
        self.track_observations(&machine.inner, &event);
        self.machine_event(event);
    }

    fn settle(&mut self) {
        self.registrations.flush();
    }
}

/// How to start an LwM2M Server driver.
#[derive(Clone)]
pub struct ServerOptions {
    /// Where to bind, e.g. `127.0.0.1:5683` (port 0: any free port).
    pub bind: SocketAddr,
    /// The machine's settings.
    pub config: ServerConfig,
    /// The object registry the machine types payloads with.
    pub registry: Arc<Registry>,
    /// Where registrations are mirrored.
    pub registrations: Arc<dyn RegistrationStore>,
    /// Where events go.
    pub bus: EventBus,
    /// Sees every datagram, if set (on the DTLS socket: the DTLS records, and the plaintext
    /// of each application record through [`PacketTap::plaintext`]).
    pub tap: Option<Arc<dyn PacketTap>>,
    /// Also listen for CoAP over DTLS (`coaps://`), if set.
    pub dtls: Option<DtlsOptions>,
}

impl ServerOptions {
    /// Defaults: the default machine settings seeded from the OS random source
    /// ([`crate::auth::os_seed`]: registration ids, tokens and message ids cannot be
    /// predicted; set `config.coap.seed` for a reproducible run), an in-memory sharded
    /// registration store, a new event bus and no tap.
    pub fn new(bind: SocketAddr, registry: Arc<Registry>) -> Self {
        let mut config = ServerConfig::default();
        config.coap.seed = crate::auth::os_seed();
        Self {
            bind,
            config,
            registry,
            registrations: Arc::new(ShardedRegistrations::default()),
            bus: EventBus::default(),
            tap: None,
            dtls: None,
        }
    }
}

/// A cloneable handle on a running LwM2M Server driver.
#[derive(Clone)]
pub struct ServerHandle {
    task: Arc<Task<ServerCommand>>,
    secure: Option<Arc<Task<ServerCommand>>>,
    routes: Routes,
    registrations: Arc<dyn RegistrationStore>,
    bus: EventBus,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.task.local)
            .finish_non_exhaustive()
    }
}

/// Binds the socket and spawns the LwM2M Server task; with [`ServerOptions::dtls`], binds
/// the DTLS socket too and spawns its task (its own LwM2M Server machine, same settings,
/// stores and bus; see [`crate::dtls`]). Must be called inside a Tokio runtime.
pub fn start_server(options: ServerOptions) -> io::Result<ServerHandle> {
    let routes = Routes::default();
    let core = |secure| ServerCore {
        pending: HashMap::default(),
        registrations: options.registrations.clone(),
        bus: options.bus.clone(),
        secure,
        routes: routes.clone(),
        observed: HashMap::default(),
    };
    let io = |socket: UdpSocket| -> io::Result<Io> {
        Ok(Io {
            local: socket.local_addr()?,
            socket,
            role: Role::Server,
            tap: options.tap.clone(),
            bus: options.bus.clone(),
        })
    };
    let secure = match &options.dtls {
        Some(dtls) => {
            // Another seed: registration ids and tokens of the two machines do not repeat
            // each other's.
            let mut config = options.config.clone();
            config.coap.seed = config.coap.seed.wrapping_add(1);
            let machine = Lwm2mServer::new(config, options.registry.clone());
            let gated = Gated::new(machine, dtls.security.clone(), Role::Server);
            let listener = Listener {
                options: dtls,
                role: Role::Server,
                tap: options.tap.clone(),
                bus: options.bus.clone(),
            };
            let task = listener.spawn(gated, core(true))?;
            tracing::info!(
                "LwM2M Server listening on coaps://{} ({} sockets)",
                task.local,
                dtls.shards.max(1)
            );
            Some(Arc::new(task))
        }
        None => None,
    };
    let channel = mpsc::channel(1024);
    let mut machine = PlainServer::new(
        Lwm2mServer::new(options.config.clone(), options.registry.clone()),
        options.dtls.as_ref().map(|d| d.security.clone()),
    );
    if options.registrations.is_shared() {
        let commands = channel.0.clone();
        let adopt: Adopt = Arc::new(move |found: Found| {
            let commands = commands.clone();
            Box::pin(async move {
                let adopt = ServerCommand::Adopt {
                    registration: found.registration,
                    observations: found.observations,
                    datagram: Some(found.datagram),
                };
                let _ = commands.send(Control::Run(adopt)).await;
            })
        });
        machine = machine.shared(options.registrations.clone(), adopt);
    }
    let io = io(bind_udp(options.bind)?)?;
    tracing::info!("LwM2M Server listening on coap://{}", io.local);
    Ok(ServerHandle {
        task: Arc::new(Task::spawn_with(machine, core(false), io, channel)),
        secure,
        routes,
        registrations: options.registrations,
        bus: options.bus,
    })
}

impl ServerHandle {
    /// Runs an operation on a registered client and waits for its outcome (a queue-mode
    /// client's request waits until it wakes up, Core TS 1.1 §6.5).
    pub async fn request(
        &self,
        endpoint: &str,
        operation: Operation,
    ) -> Result<Response, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.task_of(endpoint)
            .send(ServerCommand::Request {
                endpoint: endpoint.to_owned(),
                operation,
                reply,
            })
            .await?;
        Ok(rx.await.map_err(|_| DriverError::Stopped)??)
    }

    /// The observations held on an endpoint, with their paths.
    pub async fn observations(
        &self,
        endpoint: &str,
    ) -> Result<Vec<(ObservationId, Vec<Lwm2mPath>)>, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.task_of(endpoint)
            .send(ServerCommand::Observations {
                endpoint: endpoint.to_owned(),
                reply,
            })
            .await?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// The CoAP layer's traffic counters (of the plain CoAP socket).
    pub async fn counters(&self) -> Result<Counters, DriverError> {
        counters(&self.task).await
    }

    /// The CoAP layer's traffic counters of the DTLS socket's machine (plaintext CoAP),
    /// if the server listens for DTLS.
    pub async fn secure_counters(&self) -> Option<Result<Counters, DriverError>> {
        Some(counters(self.secure.as_ref()?).await)
    }

    /// The task whose machine holds the endpoint: the DTLS one if it registered there last.
    fn task_of(&self, endpoint: &str) -> &Task<ServerCommand> {
        match &self.secure {
            Some(secure) if lock(&self.routes).is_secure(endpoint) => secure,
            _ => &self.task,
        }
    }

    /// Whether the endpoint's latest registration came over the DTLS socket.
    pub fn is_secure(&self, endpoint: &str) -> bool {
        self.secure.is_some() && lock(&self.routes).is_secure(endpoint)
    }

    /// Takes up a registration this instance owned before a restart (from a shared store)
    /// with its observations: the client's Updates and notifications are accepted again.
    pub async fn restore(
        &self,
        registration: lwm2m_proto::server::Registration,
        observations: Vec<ObservationRecord>,
    ) -> Result<(), DriverError> {
        self.task
            .send(ServerCommand::Adopt {
                registration: Some(Box::new(registration)),
                observations,
                datagram: None,
            })
            .await
    }

    /// Forgets an endpoint's registration in this instance's machines (another instance
    /// of a cluster took its client over).
    pub async fn release(&self, endpoint: &str) -> Result<(), DriverError> {
        for task in std::iter::once(&self.task).chain(self.secure.as_ref()) {
            task.send(ServerCommand::Release {
                endpoint: endpoint.to_owned(),
            })
            .await?;
        }
        Ok(())
    }

    /// The address of the DTLS socket, if any.
    pub fn dtls_addr(&self) -> Option<SocketAddr> {
        self.secure.as_ref().map(|t| t.local)
    }

    /// The registrations, read without involving the driver task.
    pub fn registrations(&self) -> &Arc<dyn RegistrationStore> {
        &self.registrations
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.bus.subscribe()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.task.local
    }

    /// Stops the tasks (after sending what is already queued) and waits for them.
    pub async fn shutdown(&self) {
        if let Some(secure) = &self.secure {
            secure.shutdown().await;
        }
        self.task.shutdown().await
    }
}

async fn counters(task: &Task<ServerCommand>) -> Result<Counters, DriverError> {
    let (reply, rx) = oneshot::channel();
    task.send(ServerCommand::Counters { reply }).await?;
    rx.await.map_err(|_| DriverError::Stopped)
}
