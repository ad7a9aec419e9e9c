//! The tokio task of one socket: it runs a sans-IO machine (receive loop, its timer, and
//! a command channel) for both servers' drivers ([`crate::driver`], [`crate::bootstrap`]);
//! a DTLS listener's tasks ([`crate::listener`]) reuse its pieces.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lwm2m_proto::Machine;
use lwm2m_proto::coap::Transmit;
use lwm2m_proto::server::OpError;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::events::{Datagram, Direction, Event, EventBus, PacketTap, Role};

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
