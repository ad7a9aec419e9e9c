//! The tasks of a DTLS listener: [`DtlsOptions::shards`] sockets bound to one address
//! (`SO_REUSEPORT`), each with its own session router ([`DtlsFront`]) in a task of its own,
//! and one machine task ([`Gated`]: the admission gate and the LwM2M or Bootstrap Server
//! machine) that takes the commands of the server's handle.
//!
//! Handshakes, record encryption and decryption and the socket calls of a session run on
//! its front's task, so a listener uses as many cores as it has fronts; the machine task
//! sees plaintext CoAP only. The kernel hashes each datagram's address pair to one socket
//! of the group, so every datagram of a peer reaches the same front: sessions are never
//! shared between fronts, and each front keeps its own cookie secret. The machine task
//! learns the front of each peer from the datagrams it is handed and sends its output back
//! there.
//!
//! Fronts hand their datagrams and session events over in batches (one channel message per
//! socket read batch), through a bounded channel: a machine task that falls behind makes
//! the fronts wait, and the sockets' receive buffers take the rest. The machine task never
//! waits for a front (its output goes through unbounded channels), so the two cannot block
//! each other. One shard behaves as the single task before: one socket, without
//! `SO_REUSEPORT`.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwm2m_proto::coap::Transmit;
use lwm2m_proto::{Admitting, Machine};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::dtls::{DtlsFront, DtlsOptions, Gated, Inbound};
use crate::events::{Direction, Event, EventBus, PacketTap, Role};
use crate::task::{Control, Handler, Io, RECV_BATCH, Task, obey, receive_buffer};

/// Batches of [`Inbound`]s waiting for the machine task, from all fronts.
const INBOUND_BATCHES: usize = 1024;

/// Binds `shards` non-blocking UDP sockets to `addr` (port 0: one free port for all):
/// one plain socket for one shard, a `SO_REUSEPORT` group otherwise. Must be called inside
/// a Tokio runtime.
pub(crate) fn bind_group(addr: SocketAddr, shards: usize) -> io::Result<Vec<UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let shards = shards.max(1);
    let mut sockets = Vec::with_capacity(shards);
    let mut bind = addr;
    for _ in 0..shards {
        let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
        receive_buffer(&socket, bind);
        if shards > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&bind.into())?;
        let socket = UdpSocket::from_std(socket.into())?;
        // The others join the first one's port.
        bind = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// What the machine task needs to start a listener's fronts.
pub(crate) struct Listener<'a> {
    pub options: &'a DtlsOptions,
    pub role: Role,
    pub tap: Option<Arc<dyn PacketTap>>,
    pub bus: EventBus,
}

impl Listener<'_> {
    /// Binds the sockets, starts one front task on each and the machine task with
    /// `handler`; the task behind the server's handle is the machine task.
    pub fn spawn<M, H>(self, gated: Gated<M>, handler: H) -> io::Result<Task<H::Command>>
    where
        M: Admitting + Send + 'static,
        M::Event: Into<Event>,
        H: Handler<Gated<M>>,
    {
        let sockets = bind_group(self.options.bind, self.options.shards)?;
        let shares = sockets.len();
        let mut fronts = Vec::with_capacity(shares);
        for socket in sockets {
            let local = socket.local_addr()?;
            let front = DtlsFront::new(self.options, self.role, shares)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
                .with_tap(self.tap.clone(), local);
            let io = Io {
                socket,
                local,
                role: self.role,
                tap: self.tap.clone(),
                bus: self.bus.clone(),
            };
            fronts.push((front, io));
        }
        let local = fronts
            .first()
            .map(|(_, io)| io.local)
            .ok_or_else(|| io::Error::other("no socket"))?;
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_BATCHES);
        let mut outbound = Vec::with_capacity(shares);
        let mut joins = Vec::with_capacity(shares);
        for (index, (front, io)) in fronts.into_iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            outbound.push(tx);
            joins.push(tokio::spawn(run_front(
                index,
                front,
                io,
                inbound_tx.clone(),
                rx,
            )));
        }
        let (commands, rx) = mpsc::channel(1024);
        let machine = MachineSide {
            gated,
            role: self.role,
            outbound,
            joins,
        };
        let join = tokio::spawn(run_machine(machine, handler, inbound, rx));
        Ok(Task {
            commands,
            join: Mutex::new(Some(join)),
            local,
        })
    }
}

/// One front's task: its socket, its session router, until the machine task is gone.
async fn run_front(
    index: usize,
    mut front: DtlsFront,
    io: Io,
    inbound: mpsc::Sender<(usize, Vec<Inbound>)>,
    mut outbound: mpsc::UnboundedReceiver<Vec<Transmit>>,
) {
    let mut buf = vec![0u8; 65_536];
    let idle = Duration::from_secs(3600);
    // What the router reported, for the machine task. A datagram's plaintext is taken
    // (and shown to the tap) right after the datagram, before the next one is read: a
    // recorder pairs the two by peer.
    let mut batch = Vec::new();
    loop {
        batch.extend(std::iter::from_fn(|| front.poll_inbound()));
        if !batch.is_empty()
            && inbound
                .send((index, std::mem::take(&mut batch)))
                .await
                .is_err()
        {
            break;
        }
        send_records(&mut front, &io).await;
        let deadline = front.poll_timeout();
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(
            deadline.unwrap_or_else(|| Instant::now() + idle),
        ));
        tokio::select! {
            received = io.socket.recv_from(&mut buf) => match received {
                Ok((n, peer)) => {
                    let now = Instant::now();
                    let bytes = buf.get(..n).unwrap_or_default();
                    io.report(Direction::In, peer, bytes);
                    front.handle_datagram(now, peer, bytes);
                    batch.extend(std::iter::from_fn(|| front.poll_inbound()));
                    for _ in 1..RECV_BATCH {
                        match io.socket.try_recv_from(&mut buf) {
                            Ok((n, peer)) => {
                                let bytes = buf.get(..n).unwrap_or_default();
                                io.report(Direction::In, peer, bytes);
                                front.handle_datagram(now, peer, bytes);
                                batch.extend(std::iter::from_fn(|| front.poll_inbound()));
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(e) => tracing::debug!("{} receive: {e}", io.role.name()),
            },
            transmits = outbound.recv() => match transmits {
                Some(transmits) => {
                    let now = Instant::now();
                    encrypt(&mut front, now, transmits, io.role);
                    while let Ok(transmits) = outbound.try_recv() {
                        encrypt(&mut front, now, transmits, io.role);
                    }
                }
                None => break,
            },
            () = sleep, if deadline.is_some() => front.handle_timeout(Instant::now()),
        }
    }
    // What the machine sent last still goes out.
    while let Ok(transmits) = outbound.try_recv() {
        encrypt(&mut front, Instant::now(), transmits, io.role);
    }
    send_records(&mut front, &io).await;
}

fn encrypt(front: &mut DtlsFront, now: Instant, transmits: Vec<Transmit>, role: Role) {
    for t in transmits {
        if let Err(e) = front.send(now, t.peer, &t.bytes) {
            tracing::debug!("{} (DTLS): answer to {} dropped: {e}", role.name(), t.peer);
        }
    }
}

async fn send_records(front: &mut DtlsFront, io: &Io) {
    let mut out = Vec::new();
    while let Some(t) = front.poll_transmit() {
        io.report(Direction::Out, t.peer, &t.bytes);
        out.push(t);
    }
    io.send(&out).await;
}

/// The machine task's own state beside the handler.
struct MachineSide<M: Admitting> {
    gated: Gated<M>,
    role: Role,
    /// The plaintext to encrypt, per front.
    outbound: Vec<mpsc::UnboundedSender<Vec<Transmit>>>,
    joins: Vec<JoinHandle<()>>,
}

impl<M> MachineSide<M>
where
    M: Admitting + Send + 'static,
    M::Event: Into<Event>,
{
    /// As the plain driver's flush: events to the handler first (what a 2.01 announces is
    /// stored before it leaves), then the output to the fronts of its peers.
    fn flush<H: Handler<Gated<M>>>(&mut self, handler: &mut H) {
        while let Some(event) = self.gated.poll_event() {
            handler.event(&self.gated, event);
        }
        handler.settle();
        let mut batches: Vec<Vec<Transmit>> = Vec::new();
        while let Some(t) = self.gated.poll_transmit() {
            let Some(front) = self.gated.front_of(t.peer) else {
                tracing::debug!(
                    "{} (DTLS): answer to {} dropped: no session",
                    self.role.name(),
                    t.peer
                );
                continue;
            };
            if batches.len() <= front {
                batches.resize_with(front + 1, Vec::new);
            }
            if let Some(batch) = batches.get_mut(front) {
                batch.push(t);
            }
        }
        for (batch, tx) in batches.into_iter().zip(&self.outbound) {
            if !batch.is_empty() && tx.send(batch).is_err() {
                tracing::debug!("{} (DTLS): a front has stopped", self.role.name());
            }
        }
        while let Some(event) = self.gated.poll_event() {
            handler.event(&self.gated, event);
        }
    }
}

/// The machine task: the fronts' datagrams, the handle's commands and the machine's timer,
/// until told to stop or every handle is gone; then the fronts stop too.
async fn run_machine<M, H>(
    mut side: MachineSide<M>,
    mut handler: H,
    mut inbound: mpsc::Receiver<(usize, Vec<Inbound>)>,
    mut commands: mpsc::Receiver<Control<H::Command>>,
) where
    M: Admitting + Send + 'static,
    M::Event: Into<Event>,
    H: Handler<Gated<M>>,
{
    let idle = Duration::from_secs(3600);
    loop {
        side.flush(&mut handler);
        let deadline = side.gated.poll_timeout();
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(
            deadline.unwrap_or_else(|| Instant::now() + idle),
        ));
        tokio::select! {
            batch = inbound.recv() => {
                let Some((front, items)) = batch else { break };
                let now = Instant::now();
                for item in items {
                    side.gated.inbound(now, front, item);
                }
                for _ in 1..RECV_BATCH {
                    let Ok((front, items)) = inbound.try_recv() else { break };
                    for item in items {
                        side.gated.inbound(now, front, item);
                    }
                }
            },
            command = commands.recv() => {
                if !obey(&mut side.gated, &mut handler, command, &mut commands) {
                    break;
                }
            }
            () = sleep, if deadline.is_some() => side.gated.handle_timeout(Instant::now()),
        }
    }
    // Answers already produced still go out; then the fronts send theirs and stop.
    side.flush(&mut handler);
    drop(inbound);
    let MachineSide {
        outbound,
        joins,
        role,
        ..
    } = side;
    drop(outbound);
    for join in joins {
        let _ = join.await;
    }
    tracing::info!("{} (DTLS) stopped", role.name());
}
