//! The tokio drivers: one task per socket runs a sans-IO machine (receive loop, its timer,
//! and a command channel), and a cloneable handle talks to it.
//!
//! A DTLS listener has a task per socket in front of its machine's task (see
//! `crate::listener`).
//!
//! [`start_server`] runs the LwM2M Server machine ([`Lwm2mServer`], Core TS 1.1 §6.2-§6.4).
//! The task owns the machine; the handle sends it commands and gets the outcome of each
//! operation back through a oneshot matched by [`OpId`]. Registrations are mirrored into a
//! [`RegistrationStore`] as the machine reports them, so reads never reach the task.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lwm2m_proto::coap::{Counters, Transmit};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{
    Lwm2mServer, ObservationId, ObservationRecord, OpError, OpId, Operation, Response,
    ServerConfig, ServerEvent,
};
use lwm2m_proto::{Lwm2mPath, Machine};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::dtls::{DtlsOptions, Gated, Registrations};
use crate::events::{Datagram, Direction, Event, EventBus, PacketTap, Role};
use crate::listener::Listener;
use crate::plain::{Adopt, Found, PlainServer};
use crate::registrations::{RegistrationStore, ShardedRegistrations};

/// Receive buffer asked for on every socket: with the usual 208 KiB default a burst of a
/// few thousand requests overflows it (see the project's dependency notes).
pub const RECEIVE_BUFFER: usize = 4 << 20;

/// Datagrams read in one go before the machine's output is flushed.
pub(crate) const RECV_BATCH: usize = 64;

/// Commands of the handle taken in one go before the machine's output is flushed.
const COMMAND_BATCH: usize = 64;

/// Binds a UDP socket with a [`RECEIVE_BUFFER`] receive buffer (the kernel may cap it at
/// `net.core.rmem_max`). Must be called inside a Tokio runtime.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    receive_buffer(&socket, addr);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Asks for a [`RECEIVE_BUFFER`] receive buffer on a socket about to bind `addr`.
pub(crate) fn receive_buffer(socket: &socket2::Socket, addr: SocketAddr) {
    if let Err(e) = socket.set_recv_buffer_size(RECEIVE_BUFFER) {
        tracing::warn!("cannot set a {RECEIVE_BUFFER}-byte receive buffer on {addr}: {e}");
    }
    tracing::debug!(
        "UDP {addr}: receive buffer {} bytes",
        socket.recv_buffer_size().unwrap_or(0)
    );
}

/// A machine a driver task can own: any sans-IO [`Machine`] that can move to the task.
pub(crate) trait Driven: Machine + Send + 'static {}
impl<T: Machine + Send + 'static> Driven for T {}

/// What a driver does with the commands of its handle and the events of its machine.
pub(crate) trait Handler<M: Driven>: Send + 'static {
    type Command: Send + 'static;
    fn command(&mut self, machine: &mut M, now: Instant, command: Self::Command);
    fn event(&mut self, machine: &M, event: M::Event);
    /// The machine's events of this round are handled and its datagrams about to leave.
    fn settle(&mut self) {}
}

/// A command for a driver task, or the order to stop.
pub(crate) enum Control<C> {
    Run(C),
    Shutdown,
}

/// The socket side of a driver: the socket, and who hears about each datagram.
pub(crate) struct Io {
    pub socket: UdpSocket,
    pub local: SocketAddr,
    pub role: Role,
    pub tap: Option<Arc<dyn PacketTap>>,
    pub bus: EventBus,
}

impl Io {
    pub(crate) fn report(&self, direction: Direction, peer: SocketAddr, bytes: &[u8]) {
        if let Some(tap) = &self.tap {
            tap.datagram(direction, self.local, peer, bytes);
        }
        if self.bus.has_subscribers() {
            // Events leave the process (`/api/event?coaplog=true`): keys written to the
            // Security object are masked; the tap (pcap) keeps the bytes.
            let bytes: Arc<[u8]> = match lwm2m_proto::redact::redact_datagram(bytes) {
                Some(masked) => masked.into(),
                None => bytes.into(),
            };
            self.bus.send(Event::CoapLog(Datagram {
                role: self.role,
                direction,
                local: self.local,
                peer,
                bytes,
                at: SystemTime::now(),
            }));
        }
    }

    /// Sends `datagrams` in order, in as few system calls as it can (`sendmmsg`).
    pub(crate) async fn send(&self, datagrams: &[Transmit]) {
        crate::udp::send_all(&self.socket, datagrams, |peer, e| {
            tracing::debug!("{} send to {peer}: {e}", self.role.name());
        })
        .await;
    }

    fn received<M: Driven>(&self, machine: &mut M, peer: SocketAddr, bytes: &[u8]) {
        self.report(Direction::In, peer, bytes);
        machine.handle_datagram(Instant::now(), peer, bytes);
    }
}

/// Hands the machine's events to the handler, then sends what the machine has to send:
/// what an answer announces (a registration behind a 2.01) is in the registrations the API
/// reads before the peer has the answer. Events of what the handler asked are handed over
/// after the sends.
async fn flush<M: Driven, H: Handler<M>>(machine: &mut M, handler: &mut H, io: &Io) {
    while let Some(event) = machine.poll_event() {
        handler.event(machine, event);
    }
    handler.settle();
    let mut out = Vec::new();
    while let Some(t) = machine.poll_transmit() {
        io.report(Direction::Out, t.peer, &t.bytes);
        out.push(t);
    }
    io.send(&out).await;
    while let Some(event) = machine.poll_event() {
        handler.event(machine, event);
    }
}

/// The task of one socket: receive, time out, obey commands, until told to stop or every
/// handle is gone.
pub(crate) async fn run<M: Driven, H: Handler<M>>(
    mut machine: M,
    mut handler: H,
    io: Io,
    mut commands: mpsc::Receiver<Control<H::Command>>,
) {
    // Large enough for any UDP datagram.
    let mut buf = vec![0u8; 65_536];
    // Stands for "no timer": the select arm is disabled then.
    let idle = Duration::from_secs(3600);
    loop {
        flush(&mut machine, &mut handler, &io).await;
        let deadline = machine.poll_timeout();
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(
            deadline.unwrap_or_else(|| Instant::now() + idle),
        ));
        tokio::select! {
            received = io.socket.recv_from(&mut buf) => match received {
                Ok((n, peer)) => {
                    io.received(&mut machine, peer, buf.get(..n).unwrap_or_default());
                    for _ in 1..RECV_BATCH {
                        match io.socket.try_recv_from(&mut buf) {
                            Ok((n, peer)) => {
                                io.received(&mut machine, peer, buf.get(..n).unwrap_or_default())
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(e) => tracing::debug!("{} receive: {e}", io.role.name()),
            },
            command = commands.recv() => {
                if !obey(&mut machine, &mut handler, command, &mut commands) {
                    break;
                }
            }
            () = sleep, if deadline.is_some() => machine.handle_timeout(Instant::now()),
        }
    }
    // Answers already produced still go out.
    flush(&mut machine, &mut handler, &io).await;
    tracing::info!("{} on {} stopped", io.role.name(), io.local);
}

/// Runs `command` and the commands already waiting with it: one flush (and one wake-up)
/// for a burst of requests, not one each (at most [`COMMAND_BATCH`]). `false` when told to
/// stop, or when every handle is gone.
pub(crate) fn obey<M: Driven, H: Handler<M>>(
    machine: &mut M,
    handler: &mut H,
    command: Option<Control<H::Command>>,
    commands: &mut mpsc::Receiver<Control<H::Command>>,
) -> bool {
    let now = Instant::now();
    let mut command = command;
    let mut taken = 1;
    loop {
        match command {
            Some(Control::Run(c)) => handler.command(machine, now, c),
            Some(Control::Shutdown) | None => return false,
        }
        if taken == COMMAND_BATCH {
            return true;
        }
        match commands.try_recv() {
            Ok(next) => command = Some(next),
            Err(_) => return true,
        }
        taken += 1;
    }
}

/// The task and command channel behind a handle.
#[derive(Debug)]
pub(crate) struct Task<C> {
    pub commands: mpsc::Sender<Control<C>>,
    pub join: Mutex<Option<JoinHandle<()>>>,
    pub local: SocketAddr,
}

impl<C: Send + 'static> Task<C> {
    pub fn spawn<M: Driven, H: Handler<M, Command = C>>(machine: M, handler: H, io: Io) -> Self {
        Self::spawn_with(machine, handler, io, mpsc::channel(1024))
    }

    /// Spawns with a command channel made beforehand (the machine sends itself commands).
    pub fn spawn_with<M: Driven, H: Handler<M, Command = C>>(
        machine: M,
        handler: H,
        io: Io,
        (commands, rx): (mpsc::Sender<Control<C>>, mpsc::Receiver<Control<C>>),
    ) -> Self {
        let local = io.local;
        let join = tokio::spawn(run(machine, handler, io, rx));
        Self {
            commands,
            join: Mutex::new(Some(join)),
            local,
        }
    }

    pub async fn send(&self, command: C) -> Result<(), DriverError> {
        self.commands
            .send(Control::Run(command))
            .await
            .map_err(|_| DriverError::Stopped)
    }

    pub async fn shutdown(&self) {
        let _ = self.commands.send(Control::Shutdown).await;
        let join = self.join.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(join) = join {
            let _ = join.await;
        }
    }
}

/// Why a handle's call produced no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The machine refused or failed the operation.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The driver task has stopped.
    #[error("the server has stopped")]
    Stopped,
}

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

impl Handler<Gated<Lwm2mServer, Registrations>> for ServerCore {
    type Command = ServerCommand;

    fn command(
        &mut self,
        machine: &mut Gated<Lwm2mServer, Registrations>,
        now: Instant,
        command: ServerCommand,
    ) {
        self.run_command(&mut machine.inner, now, command);
    }

    fn event(&mut self, machine: &Gated<Lwm2mServer, Registrations>, event: Event) {
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
        pending: HashMap::new(),
        registrations: options.registrations.clone(),
        bus: options.bus.clone(),
        secure,
        routes: routes.clone(),
        observed: HashMap::new(),
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
            let gated = Gated::new(
                machine,
                Registrations::default(),
                dtls.security.clone(),
                Role::Server,
            );
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
