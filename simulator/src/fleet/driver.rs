//! The driver task: owns every client machine, the socket pool and the deadline heaps, and
//! moves datagrams between them.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwm2m_dtls::ClientEvent as DtlsEvent;
use lwm2m_proto::client::{ClientEvent, ClientState, Lwm2mClient};
use lwm2m_proto::coap::message;
use lwm2m_proto::coap::{CoapOption, Transmit};
use lwm2m_proto::hash::{HashMap, HashSet};
use lwm2m_proto::interface::RequestKind;
use lwm2m_proto::tap;
use quinn_udp::RecvMeta;
use tokio::sync::{mpsc, oneshot};

use super::counters::{ProfileStats, add, bump, drop_one, failure_cause};
use super::handle::{ClientInfo, Command, FleetHandle, FleetReport};
use super::pool::{Addressing, Binding, SocketPool};
use super::{ClientSpec, FleetConfig, FleetError, GeneratedResource, Selector, ramp_offset};
use crate::link::{DtlsLink, LinkOptions, Links, Route, Servers};
use crate::network::{Impairment, Mapping, Nat, SleepSchedule};
use crate::seed;

/// Datagrams read per `recvmmsg` call.
const BATCH: usize = 32;
/// Receive batches per socket before timers get their turn again.
const RECV_ROUNDS: usize = 8;
/// Deadlines (and delayed datagrams) handled before sockets and commands get their turn.
const DUE_BUDGET: usize = 4096;

/// Binds the pool, builds the clients and spawns the driver task.
pub(super) fn spawn(
    config: FleetConfig,
    profiles: Vec<String>,
    clients: Vec<(usize, ClientSpec)>,
) -> Result<FleetHandle, FleetError> {
    let targets_loopback = clients.iter().all(|(_, spec)| {
        let c = &spec.config;
        c.server
            .iter()
            .chain(&c.bootstrap_server)
            .all(|a| a.ip().is_loopback())
    });
    let addressing = if targets_loopback {
        Addressing::Shared
    } else if clients.len() > config.max_dedicated_sockets {
        return Err(FleetError::TooManyClients {
            clients: clients.len(),
            limit: config.max_dedicated_sockets,
        });
    } else {
        Addressing::Dedicated
    };
    let pool = SocketPool::new(
        addressing,
        config.sockets,
        config.bind,
        config.first_address,
        config.socket_buffer,
    )?;
    let stats: Arc<[ProfileStats]> = profiles
        .iter()
        .map(|_| ProfileStats {
            timed: config.timed_latencies,
            ..ProfileStats::default()
        })
        .collect();
    let mut sims = Vec::with_capacity(clients.len());
    let mut numbers = Vec::with_capacity(clients.len());
    for (n, (profile, spec)) in clients.into_iter().enumerate() {
        let client = u32::try_from(n).map_err(|_| FleetError::OutOfAddresses { client: n })?;
        if let Some(s) = stats.get(profile) {
            bump(&s.counters.clients);
        }
        // The client's number in the whole fleet: its seeds and its place on the ramp are
        // those it has when the fleet runs in one process.
        let number = config.shard.number(n as u64);
        sims.push(Sim::new(number, profile, spec, config.seed));
        numbers.push((client, number));
    }
    // The ramp starts once every client is built: building 100,000 takes most of a second,
    // and a ramp fixed before would find that second's clients all due at once.
    let epoch = Instant::now();
    let heap: BinaryHeap<Reverse<Due>> = numbers
        .into_iter()
        .map(|(client, number)| {
            let offset = ramp_offset(config.ramp, usize::try_from(number).unwrap_or(usize::MAX));
            Reverse(Due {
                at: epoch + offset,
                client,
                what: What::Start,
            })
        })
        .collect();
    let (commands, rx) = mpsc::unbounded_channel();
    let driver = Driver {
        pool,
        sims,
        by_address: HashMap::default(),
        stats: stats.clone(),
        heap,
        delayed: BinaryHeap::new(),
        delayed_seq: 0,
        outbox: Vec::new(),
        epoch,
        commands: rx,
        stopping: None,
        profiles: profiles.clone(),
        links: LinkOptions {
            record_plaintext: config.tap.is_some(),
            key_log: config.key_log.map(|k| k.0),
        },
        tap: config.tap,
    };
    let task = tokio::spawn(driver.run());
    Ok(FleetHandle::new(commands, profiles, stats, task))
}

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum What {
    /// The ramp-up reaches the client: start it.
    Start,
    /// The client machine's own timer ([`Lwm2mClient::poll_timeout`]); stale unless it is
    /// still the client's timer.
    Machine,
    /// A sleep-schedule window opens.
    ScheduledWake,
    /// A sleep ordered through the handle ends; stale unless it is still the client's.
    ForcedWake,
    /// Generator number n of the client produces its next value.
    Generate(u16),
    /// The DTLS session's timer (retransmission, handshake timeout); stale unless it is
    /// still the session's.
    Dtls,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    client: u32,
    what: What,
}

/// Which way a delayed datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From the client to `peer`, leaving from `binding`.
    Up(Binding),
    /// From `peer` to the client.
    Down,
}

/// A datagram held back by the impairment model.
#[derive(Debug)]
struct Delayed {
    at: Instant,
    seq: u64,
    client: u32,
    direction: Direction,
    peer: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Where a client is, as the gauges count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gauge {
    Other,
    Bootstrapping,
    Registering,
    Registered,
    Sleeping,
    Failed,
}

impl Gauge {
    fn of(state: ClientState) -> Self {
        match state {
            ClientState::Bootstrapping => Gauge::Bootstrapping,
            ClientState::Registering => Gauge::Registering,
            ClientState::Registered => Gauge::Registered,
            ClientState::Sleeping => Gauge::Sleeping,
            ClientState::Failed => Gauge::Failed,
            _ => Gauge::Other,
        }
    }

    /// Still busy with a server: the fleet waits for these when it stops.
    fn is_active(self) -> bool {
        matches!(
            self,
            Gauge::Bootstrapping | Gauge::Registering | Gauge::Registered | Gauge::Sleeping
        )
    }
}

/// A client request whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timed {
    Register,
    Update,
}

/// One simulated client and what the fleet keeps about it.
#[derive(Debug)]
struct Sim {
    client: Lwm2mClient,
    endpoint: Box<str>,
    profile: usize,
    /// The public address; `None` before the first datagram.
    binding: Option<Binding>,
    /// The binding is gone (NAT expiry): the next datagram leaves from a new one.
    expired: bool,
    /// The binding before the current one: datagrams still sent to it count as dropped by
    /// the NAT (older ones are forgotten, so the address map stays at two per client).
    previous: Option<Binding>,
    nat: Option<Box<(Nat, Option<Mapping>)>>,
    /// The sleep schedule and the length of its awake windows.
    sleep: Option<Box<(SleepSchedule, Duration)>>,
    uplink: Option<Box<Impairment>>,
    downlink: Option<Box<Impairment>>,
    generators: Vec<GeneratedResource>,
    started: Option<Instant>,
    /// The machine's deadline as pushed on the heap.
    timer: Option<Instant>,
    /// Radio off until then (a sleep ordered through the handle).
    asleep_until: Option<Instant>,
    gauge: Gauge,
    timed: Option<(Timed, Instant)>,
    /// The last POST it sent (Register, Update, Bootstrap-Request, Send) while no answer
    /// came yet, summarised: the example exchange of a failure.
    request: Option<Box<str>>,
    /// Registered at least once.
    registered_once: bool,
    /// The fleet asked it to de-register (it stays registered until the answer).
    deregistering: bool,
    /// CoAP over DTLS, one link per server whose account in the Security object says
    /// `coaps://` (the Bootstrap Server, the LwM2M Server).
    links: Links,
}

impl Sim {
    fn new(n: u64, profile: usize, spec: ClientSpec, fleet_seed: u64) -> Self {
        let ClientSpec {
            config,
            tree,
            generators,
            network,
        } = spec;
        let seed_of = |part: u64| seed::mix(&[fleet_seed, n, part]);
        let impairment = |c: &crate::network::ImpairmentConfig, part| {
            (*c != crate::network::ImpairmentConfig::default())
                .then(|| Box::new(Impairment::new(c, seed_of(part))))
        };
        Self {
            endpoint: config.endpoint.clone().into_boxed_str(),
            links: Links::default(),
            client: Lwm2mClient::new(config, tree),
            profile,
            binding: None,
            expired: false,
            previous: None,
            nat: network
                .nat
                .as_ref()
                .map(|c| Box::new((Nat::new(c, seed_of(1)), None))),
            sleep: network
                .sleep
                .as_ref()
                .map(|c| Box::new((SleepSchedule::new(c, seed_of(2)), c.awake))),
            uplink: impairment(&network.uplink, 3),
            downlink: impairment(&network.downlink, 4),
            generators,
            started: None,
            timer: None,
            asleep_until: None,
            gauge: Gauge::Other,
            timed: None,
            request: None,
            registered_once: false,
            deregistering: false,
        }
    }

    /// Time since the client started: the clock of its network models.
    fn age(&self, now: Instant) -> Duration {
        self.started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// True if datagrams to the client are lost now: its radio is off.
    fn is_asleep(&self, now: Instant) -> bool {
        self.asleep_until.is_some_and(|t| now < t)
            || self
                .sleep
                .as_ref()
                .is_some_and(|s| !s.0.is_awake(self.age(now)))
            || self.gauge == Gauge::Sleeping
    }
}

/// Client `i`'s DTLS link with `server`.
fn link_of(sims: &mut [Sim], i: usize, server: SocketAddr) -> Option<&mut DtlsLink> {
    sims.get_mut(i)?.links.get_mut(server)
}

/// A datagram ready to leave.
#[derive(Debug)]
struct Out {
    binding: Binding,
    peer: SocketAddr,
    bytes: Vec<u8>,
}

struct Driver {
    pool: SocketPool,
    sims: Vec<Sim>,
    /// Current and previous bindings to client numbers.
    by_address: HashMap<Binding, u32>,
    stats: Arc<[ProfileStats]>,
    heap: BinaryHeap<Reverse<Due>>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    delayed_seq: u64,
    outbox: Vec<Out>,
    /// The clock of the impairment models.
    epoch: Instant,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Stopping: the deadline and where to send the report.
    stopping: Option<(Instant, Vec<oneshot::Sender<FleetReport>>)>,
    profiles: Vec<String>,
    /// Sees every datagram on the wire.
    tap: Option<super::Tap>,
    /// How DTLS links are made (key log, plaintext for the tap).
    links: LinkOptions,
}

impl Driver {
    async fn run(mut self) -> FleetReport {
        let segments = self.pool.gro_segments().max(1);
        let mut storage = vec![0u8; BATCH * segments * 1500];
        let mut open = true;
        loop {
            let now = Instant::now();
            self.run_due(now);
            self.flush().await;
            if let Some((deadline, _)) = &self.stopping
                && (now >= *deadline || !self.sims.iter().any(|s| s.gauge.is_active()))
            {
                break;
            }
            let next = self.next_deadline();
            tokio::select! {
                biased;
                command = self.commands.recv(), if open => match command {
                    Some(c) => self.command(Instant::now(), c),
                    // Every handle is gone: nobody can read or stop the fleet any more.
                    None => {
                        open = false;
                        if self.stopping.is_none() {
                            break;
                        }
                    }
                },
                () = std::future::poll_fn(|cx| self.pool.poll_readable(cx)) => {
                    self.receive(&mut storage, segments * 1500);
                }
                () = sleep_until(next) => {}
            }
        }
        let report = FleetReport::collect(&self.profiles, &self.stats);
        if let Some((_, waiters)) = self.stopping.take() {
            for w in waiters {
                let _ = w.send(report.clone());
            }
        }
        report
    }

    fn next_deadline(&self) -> Option<Instant> {
        let timers = self.heap.peek().map(|Reverse(d)| d.at);
        let delayed = self.delayed.peek().map(|Reverse(d)| d.at);
        let stop = self.stopping.as_ref().map(|(t, _)| *t);
        [timers, delayed, stop].into_iter().flatten().min()
    }

    /// Fires the deadlines and delivers the delayed datagrams due by `now`, up to
    /// [`DUE_BUDGET`] of each (the rest stay due, so the loop comes back at once).
    fn run_due(&mut self, now: Instant) {
        for _ in 0..DUE_BUDGET {
            if self.heap.peek().is_none_or(|Reverse(d)| d.at > now) {
                break;
            }
            let Some(Reverse(due)) = self.heap.pop() else {
                break;
            };
            self.fire(now, due);
        }
        for _ in 0..DUE_BUDGET {
            if self.delayed.peek().is_none_or(|Reverse(d)| d.at > now) {
                break;
            }
            let Some(Reverse(d)) = self.delayed.pop() else {
                break;
            };
            let i = d.client as usize;
            match d.direction {
                Direction::Up(binding) => self.outbox.push(Out {
                    binding,
                    peer: d.peer,
                    bytes: d.bytes,
                }),
                Direction::Down => {
                    if self.sims.get(i).is_some_and(|s| s.is_asleep(now)) {
                        self.count(i, |c| &c.dropped_asleep, 1);
                    } else {
                        self.deliver(i, now, d.peer, &d.bytes);
                    }
                }
            }
        }
    }

    fn fire(&mut self, now: Instant, due: Due) {
        let i = due.client as usize;
        let stopping = self.stopping.is_some();
        let Some(sim) = self.sims.get_mut(i) else {
            return;
        };
        match due.what {
            What::Start => {
                if stopping || sim.started.is_some() {
                    return;
                }
                sim.started = Some(now);
                sim.client.start(now);
                if let Some((s, awake)) = sim.sleep.as_deref() {
                    // Awake at time zero; the next window opens after this one.
                    self.heap.push(Reverse(Due {
                        at: now + s.next_wake(*awake),
                        client: due.client,
                        what: What::ScheduledWake,
                    }));
                }
                for (g, r) in sim.generators.iter().enumerate() {
                    if let (Ok(g), false) = (u16::try_from(g), r.period.is_zero()) {
                        self.heap.push(Reverse(Due {
                            at: now + r.period,
                            client: due.client,
                            what: What::Generate(g),
                        }));
                    }
                }
                self.count(i, |c| &c.started, 1);
            }
            What::Machine => {
                if sim.timer != Some(due.at) {
                    return;
                }
                sim.timer = None;
                sim.client.handle_timeout(now);
            }
            What::ScheduledWake => {
                let Some((s, awake)) = sim.sleep.as_deref() else {
                    return;
                };
                // A window opens now; the next one opens after it ends.
                let age = sim.age(now);
                let next = s.next_wake(age + *awake);
                self.heap.push(Reverse(Due {
                    at: now + (next.saturating_sub(age)).max(Duration::from_millis(1)),
                    client: due.client,
                    what: What::ScheduledWake,
                }));
                if stopping {
                    return;
                }
                sim.client.wake(now);
            }
            What::Dtls => {
                let Some(link) = sim.links.due(due.at) else {
                    return;
                };
                link.timer = None;
                let server = link.server;
                if let Some(s) = link.session.as_mut() {
                    s.handle_timeout(now);
                }
                self.dtls_flush(i, server, now);
            }
            What::ForcedWake => {
                if sim.asleep_until != Some(due.at) {
                    return;
                }
                sim.asleep_until = None;
                sim.client.wake(now);
            }
            What::Generate(g) => {
                let age = sim.age(now);
                let Some(r) = sim.generators.get_mut(usize::from(g)) else {
                    return;
                };
                let value = r.generator.next(age);
                let path = r.path;
                self.heap.push(Reverse(Due {
                    at: now + r.period,
                    client: due.client,
                    what: What::Generate(g),
                }));
                if stopping {
                    return;
                }
                sim.client.set_value(now, &path, value);
            }
        }
        self.after(i, now);
    }

    /// Drains what client `i` has to say after an input: datagrams, events, its next
    /// deadline, and its gauge.
    fn after(&mut self, i: usize, now: Instant) {
        while let Some(t) = self.sims.get_mut(i).and_then(|s| s.client.poll_transmit()) {
            self.outbound(i, now, t);
        }
        while let Some(e) = self.sims.get_mut(i).and_then(|s| s.client.poll_event()) {
            self.event(i, now, e);
        }
        let Some(sim) = self.sims.get_mut(i) else {
            return;
        };
        let timer = sim.client.poll_timeout();
        if timer != sim.timer {
            sim.timer = timer;
            if let (Some(at), Ok(client)) = (timer, u32::try_from(i)) {
                self.heap.push(Reverse(Due {
                    at,
                    client,
                    what: What::Machine,
                }));
            }
        }
        let gauge = Gauge::of(sim.client.state());
        // A client that registers while the fleet stops de-registers at once.
        let leave = self.stopping.is_some()
            && matches!(gauge, Gauge::Registered | Gauge::Sleeping)
            && !sim.deregistering;
        if gauge != sim.gauge {
            let old = std::mem::replace(&mut sim.gauge, gauge);
            if let Some(s) = self.stats.get(sim.profile) {
                let c = &s.counters;
                for (g, delta) in [(old, false), (gauge, true)] {
                    let counter = match g {
                        Gauge::Other => None,
                        Gauge::Bootstrapping => Some(&c.bootstrapping),
                        Gauge::Registering => Some(&c.registering),
                        Gauge::Registered => Some(&c.registered),
                        Gauge::Sleeping => Some(&c.sleeping),
                        Gauge::Failed => Some(&c.failed),
                    };
                    // A sleeping client is still registered.
                    let registered = (g == Gauge::Sleeping).then_some(&c.registered);
                    for counter in counter.into_iter().chain(registered) {
                        if delta {
                            bump(counter);
                        } else {
                            drop_one(counter);
                        }
                    }
                }
            }
        }
        if leave {
            self.deregister(i, now);
        }
    }

    /// Client `i` de-registers (Core TS 1.1 §6.2.3), radio on.
    fn deregister(&mut self, i: usize, now: Instant) {
        if let Some(sim) = self.sims.get_mut(i) {
            sim.deregistering = true;
            sim.asleep_until = None;
            sim.client.deregister(now);
            self.after(i, now);
        }
    }

    /// A CoAP datagram from client `i`'s machine: into its DTLS session when its account
    /// for that server is `coaps://` (the link is built, or rebuilt when the account's
    /// credentials changed, from the current tree), else straight to the wire.
    fn outbound(&mut self, i: usize, now: Instant, t: Transmit) {
        let Some(sim) = self.sims.get_mut(i) else {
            return;
        };
        if let Some(op) = timed_request(&t.bytes)
            && sim.timed.is_none_or(|(o, _)| o != op)
        {
            sim.timed = Some((op, now));
        }
        if let Some(summary) = post_summary(&t.bytes) {
            sim.request = Some(summary.into_boxed_str());
        }
        let servers = Servers::from(sim.client.config());
        match sim
            .links
            .route(sim.client.tree(), &servers, t.peer, &self.links)
        {
            Route::Plain => self.wire(i, now, t.peer, t.bytes),
            Route::Unusable(why) => {
                self.count(i, |c| &c.dtls_failures, 1);
                self.failure(i, "DTLS: no usable credentials".into(), || {
                    format!("no usable DTLS credentials for {}: {why}", t.peer)
                });
            }
            Route::Secure(link) => {
                match link.send(now, t.bytes) {
                    Ok(true) => self.count(i, |c| &c.dtls_handshakes, 1),
                    Ok(false) => {}
                    Err(e) => {
                        self.count(i, |c| &c.dtls_failures, 1);
                        self.failure(i, "DTLS: no usable credentials".into(), || {
                            format!("cannot start a DTLS session with {}: {e}", t.peer)
                        });
                    }
                }
                self.dtls_flush(i, t.peer, now);
            }
        }
    }

    /// Shows the tap the plaintext of a record of client `i`'s session with `server`.
    fn tap_plaintext(&self, i: usize, server: SocketAddr, way: tap::Direction, plain: &[u8]) {
        let (Some(tap), Some(sim)) = (&self.tap, self.sims.get(i)) else {
            return;
        };
        let (Some(binding), Some(link)) = (sim.binding, sim.links.get(server)) else {
            return;
        };
        let client = self.pool.address(binding);
        tap.0.plaintext(way, client, server, link.identity(), plain);
    }

    /// Moves what client `i`'s DTLS session with `server` has to say: records to the wire,
    /// decrypted datagrams to the client machine, and its timer to the heap.
    fn dtls_flush(&mut self, i: usize, server: SocketAddr, now: Instant) {
        loop {
            let Some(link) = link_of(&mut self.sims, i, server) else {
                return;
            };
            let Some(session) = link.session.as_mut() else {
                return;
            };
            let mut records = Vec::new();
            while let Some(r) = session.poll_transmit() {
                records.push(r);
            }
            let event = session.poll_event();
            let encrypted = link.take_encrypted();
            for r in records {
                self.wire(i, now, server, r);
            }
            // Before the tap sees the records go out (at the next flush).
            for plain in &encrypted {
                self.tap_plaintext(i, server, tap::Direction::Out, plain);
            }
            let Some(link) = link_of(&mut self.sims, i, server) else {
                return;
            };
            match event {
                Some(DtlsEvent::Established) => link.established(now),
                Some(DtlsEvent::Datagram(plain)) => {
                    self.tap_plaintext(i, server, tap::Direction::In, &plain);
                    if let Some(sim) = self.sims.get_mut(i) {
                        sim.client.handle_datagram(now, server, &plain);
                    }
                    self.after(i, now);
                }
                Some(DtlsEvent::HandshakeFailed(reason)) => {
                    link.reset();
                    self.count(i, |c| &c.dtls_failures, 1);
                    let cause = match &reason {
                        lwm2m_dtls::FailureReason::Protocol(_) => {
                            "DTLS: handshake rejected".to_owned()
                        }
                        r => format!("DTLS: {r}"),
                    };
                    self.failure(i, cause, || format!("handshake with {server}: {reason}"));
                }
                Some(_) => link.reset(),
                None => break,
            }
        }
        let Some(link) = link_of(&mut self.sims, i, server) else {
            return;
        };
        let timer = link.session.as_ref().and_then(|s| s.poll_timeout());
        if timer != link.timer {
            link.timer = timer;
            if let (Some(at), Ok(client)) = (timer, u32::try_from(i)) {
                self.heap.push(Reverse(Due {
                    at,
                    client,
                    what: What::Dtls,
                }));
            }
        }
    }

    /// A datagram from client `i` on the wire: through its NAT (a new binding when the
    /// mapping was gone) and its uplink impairment, to the outbox. A rebinding ends the
    /// client's DTLS sessions (no Connection ID): this record is lost, the next datagram
    /// to each server opens a new handshake.
    fn wire(&mut self, i: usize, now: Instant, peer: SocketAddr, bytes: Vec<u8>) {
        let t = Transmit { peer, bytes };
        let Some(sim) = self.sims.get_mut(i) else {
            return;
        };
        let age = now.saturating_duration_since(self.epoch);
        let remapped = match sim.nat.as_deref_mut() {
            Some((nat, mapping)) => {
                let new = nat.on_outbound(age);
                *mapping = nat.mapping();
                new
            }
            None => false,
        };
        let rebind = sim.binding.is_some() && (remapped || sim.expired);
        if rebind {
            sim.links.reset_established();
        }
        if sim.binding.is_none() || rebind {
            if let Some(old) = sim.binding.take()
                && let Some(older) = sim.previous.replace(old)
            {
                self.by_address.remove(&older);
                self.pool.release(older);
            }
            let Some(binding) = self.pool.allocate() else {
                return;
            };
            sim.binding = Some(binding);
            sim.expired = false;
            if let Ok(n) = u32::try_from(i) {
                self.by_address.insert(binding, n);
            }
        }
        let Some(binding) = sim.binding else {
            return;
        };
        let len = t.bytes.len() as u64;
        let copies = match sim.uplink.as_deref_mut() {
            Some(imp) => imp.apply(age, t.bytes),
            None => vec![(age, t.bytes)],
        };
        let lost = copies.is_empty();
        for (at, bytes) in copies {
            if at <= age {
                self.outbox.push(Out {
                    binding,
                    peer: t.peer,
                    bytes,
                });
            } else {
                self.delay(i, self.epoch + at, Direction::Up(binding), t.peer, bytes);
            }
        }
        self.count(i, |c| &c.datagrams_out, 1);
        self.count(i, |c| &c.bytes_out, len);
        if rebind {
            self.count(i, |c| &c.rebinds, 1);
        }
        if lost {
            self.count(i, |c| &c.dropped_loss, 1);
        }
    }

    fn delay(
        &mut self,
        i: usize,
        at: Instant,
        direction: Direction,
        peer: SocketAddr,
        bytes: Vec<u8>,
    ) {
        self.delayed_seq += 1;
        if let Ok(client) = u32::try_from(i) {
            self.delayed.push(Reverse(Delayed {
                at,
                seq: self.delayed_seq,
                client,
                direction,
                peer,
                bytes,
            }));
        }
    }

    /// A datagram from `peer` arrived at `binding`: through the NAT, the radio and the
    /// downlink impairment, to the client.
    fn inbound(&mut self, now: Instant, binding: Binding, peer: SocketAddr, bytes: &[u8]) {
        if let Some(tap) = &self.tap {
            tap.0
                .datagram(tap::Direction::In, self.pool.address(binding), peer, bytes);
        }
        let Some(&n) = self.by_address.get(&binding) else {
            return;
        };
        let i = n as usize;
        let age = now.saturating_duration_since(self.epoch);
        let Some(sim) = self.sims.get_mut(i) else {
            return;
        };
        let current = sim.binding == Some(binding) && !sim.expired;
        let nat_accepts = match sim.nat.as_deref_mut() {
            Some((nat, mapping)) => mapping.is_some_and(|m| nat.accepts_inbound(age, m)),
            None => true,
        };
        if !(current && nat_accepts) {
            sim.expired |= current;
            self.count(i, |c| &c.dropped_nat, 1);
            return;
        }
        if sim.is_asleep(now) {
            self.count(i, |c| &c.dropped_asleep, 1);
            return;
        }
        let Some(imp) = sim.downlink.as_deref_mut() else {
            self.deliver(i, now, peer, bytes);
            return;
        };
        let copies = imp.apply(age, ());
        if copies.is_empty() {
            self.count(i, |c| &c.dropped_loss, 1);
        }
        for (at, ()) in copies {
            if at <= age {
                self.deliver(i, now, peer, bytes);
            } else {
                self.delay(i, self.epoch + at, Direction::Down, peer, bytes.to_vec());
            }
        }
    }

    fn deliver(&mut self, i: usize, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        self.count(i, |c| &c.datagrams_in, 1);
        self.count(i, |c| &c.bytes_in, bytes.len() as u64);
        let Some(sim) = self.sims.get_mut(i) else {
            return;
        };
        match sim.links.get_mut(peer) {
            Some(link) => {
                if let Some(s) = link.session.as_mut() {
                    s.handle_datagram(now, bytes);
                }
                self.dtls_flush(i, peer, now);
            }
            _ => {
                sim.client.handle_datagram(now, peer, bytes);
                self.after(i, now);
            }
        }
    }

    fn event(&mut self, i: usize, now: Instant, event: ClientEvent) {
        let Some(sim) = self.sims.get_mut(i) else {
            return;
        };
        let Some(stats) = self.stats.get(sim.profile) else {
            return;
        };
        let c = &stats.counters;
        let mut closed = None;
        // Reboots and failed requests over a session (one rule with the harness's devices).
        sim.links.after_event(&event);
        let mut finish = |op: Timed| {
            if let Some((o, since)) = sim.timed
                && o == op
            {
                stats.record(op == Timed::Update, now.saturating_duration_since(since));
                sim.timed = None;
            }
        };
        match event {
            ClientEvent::Registered { .. } => {
                finish(Timed::Register);
                sim.request = None;
                bump(&c.registrations);
                if !std::mem::replace(&mut sim.registered_once, true) {
                    bump(&c.clients_registered);
                }
            }
            ClientEvent::Updated => {
                finish(Timed::Update);
                sim.request = None;
                bump(&c.updates);
            }
            ClientEvent::Deregistered => bump(&c.deregistrations),
            ClientEvent::VersionFallback { .. } => bump(&c.version_fallbacks),
            ClientEvent::Failed { step, reason } => {
                sim.timed = None;
                bump(&c.failures);
                let request = sim.request.take();
                stats.failed(failure_cause(step, &reason), || {
                    example(&sim.endpoint, request.as_deref(), &reason)
                });
            }
            ClientEvent::Served { .. } => bump(&c.requests_served),
            ClientEvent::Notified { .. } => bump(&c.notifications_sent),
            // Done with the Bootstrap Server: close_notify, as devices do.
            ClientEvent::Bootstrapped => {
                let bs = sim.client.config().bootstrap_server;
                if let Some(link) = bs.and_then(|bs| sim.links.get_mut(bs))
                    && let Some(session) = link.session.as_mut()
                {
                    session.close(now);
                    closed = Some(link.server);
                }
            }
            _ => {}
        }
        if let Some(server) = closed {
            self.dtls_flush(i, server, now);
        }
    }

    /// Counts a failure of client `i` by cause; `detail` describes the first of a cause.
    fn failure(&self, i: usize, cause: String, detail: impl FnOnce() -> String) {
        if let Some(sim) = self.sims.get(i)
            && let Some(s) = self.stats.get(sim.profile)
        {
            s.failed(cause, || format!("{}: {}", sim.endpoint, detail()));
        }
    }

    fn count(
        &self,
        i: usize,
        field: impl Fn(&super::ProfileCounters) -> &std::sync::atomic::AtomicU64,
        n: u64,
    ) {
        if let Some(s) = self.sims.get(i).and_then(|s| self.stats.get(s.profile)) {
            add(field(&s.counters), n);
        }
    }

    /// Reads every socket until it is empty (or for a few batches) and hands the datagrams
    /// to their clients.
    fn receive(&mut self, storage: &mut [u8], chunk: usize) {
        // Once per pass, not per socket: most of the pool's sockets have nothing to read.
        let mut meta = [RecvMeta::default(); BATCH];
        for k in 0..self.pool.len() {
            for _ in 0..RECV_ROUNDS {
                let n = {
                    let mut chunks = storage.chunks_mut(chunk);
                    let mut bufs: [IoSliceMut<'_>; BATCH] =
                        std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                    // A receive error (none is expected on UDP) reads as an empty socket.
                    self.pool
                        .try_recv(k, &mut bufs, &mut meta)
                        .unwrap_or_default()
                };
                // Each batch's own arrival time: latencies are not rounded up to the end
                // of a long receive pass.
                let now = Instant::now();
                for (m, buf) in meta.iter().take(n).zip(storage.chunks(chunk)) {
                    let Some(binding) = self.pool.binding_of(k, m.dst_ip) else {
                        continue;
                    };
                    let data = buf.get(..m.len.min(buf.len())).unwrap_or_default();
                    for datagram in data.chunks(m.stride.max(1)) {
                        self.inbound(now, binding, canonical_addr(m.addr), datagram);
                    }
                }
                if n < BATCH {
                    break;
                }
            }
        }
    }

    async fn flush(&mut self) {
        for out in std::mem::take(&mut self.outbox) {
            // Errors other than a full buffer are losses on the wire.
            if let Some(tap) = &self.tap {
                let local = self.pool.address(out.binding);
                tap.0
                    .datagram(tap::Direction::Out, local, out.peer, &out.bytes);
            }
            let sent = self.pool.send(out.binding, out.peer, &out.bytes).await;
            // An ICMP error the kernel reports on the socket (port or host unreachable).
            if let Err(e) = sent
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::HostUnreachable
                        | std::io::ErrorKind::NetworkUnreachable
                )
                && let Some(&n) = self.by_address.get(&out.binding)
            {
                let peer = out.peer;
                self.failure(n as usize, format!("ICMP: {}", e.kind()), || {
                    format!("sending to {peer}: {e}")
                });
            }
        }
    }

    fn select(&self, selector: &Selector) -> Vec<usize> {
        match selector {
            Selector::All => (0..self.sims.len()).collect(),
            Selector::Profile(name) => {
                let profile = self.profiles.iter().position(|p| p == name);
                (0..self.sims.len())
                    .filter(|&i| self.sims.get(i).is_some_and(|s| Some(s.profile) == profile))
                    .collect()
            }
            Selector::Endpoints(names) => {
                let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
                (0..self.sims.len())
                    .filter(|&i| {
                        self.sims
                            .get(i)
                            .is_some_and(|s| wanted.contains(&*s.endpoint))
                    })
                    .collect()
            }
            Selector::Range(r) => r.clone().filter(|&i| i < self.sims.len()).collect(),
        }
    }

    fn command(&mut self, now: Instant, command: Command) {
        match command {
            Command::SetValue {
                selector,
                path,
                value,
            } => self.each(now, &selector, |sim, now| {
                sim.client.set_value(now, &path, value.clone())
            }),
            Command::Send { selector, paths } => {
                self.each(now, &selector, |sim, now| sim.client.send(now, &paths))
            }
            Command::TriggerUpdate { selector } => {
                self.each(now, &selector, |sim, now| sim.client.trigger_update(now))
            }
            Command::Wake { selector } => self.each(now, &selector, |sim, now| {
                sim.asleep_until = None;
                sim.client.wake(now)
            }),
            Command::ExpireNat { selector } => {
                for i in self.select(&selector) {
                    if let Some(sim) = self.sims.get_mut(i) {
                        sim.expired = sim.binding.is_some();
                    }
                }
            }
            Command::Sleep { selector, duration } => {
                let until = now + duration;
                for i in self.select(&selector) {
                    if let (Some(sim), Ok(client)) = (self.sims.get_mut(i), u32::try_from(i)) {
                        sim.asleep_until = Some(until);
                        self.heap.push(Reverse(Due {
                            at: until,
                            client,
                            what: What::ForcedWake,
                        }));
                    }
                }
            }
            Command::Clients { reply } => {
                let infos = self
                    .sims
                    .iter()
                    .map(|s| ClientInfo {
                        endpoint: s.endpoint.to_string(),
                        profile: s.profile,
                        state: s.client.state(),
                        address: s
                            .binding
                            .filter(|_| !s.expired)
                            .map(|b| self.pool.address(b)),
                        asleep: s.is_asleep(now),
                    })
                    .collect();
                let _ = reply.send(infos);
            }
            Command::Stop { grace, reply } => {
                let started = self.stopping.is_none();
                let (_, waiters) = self
                    .stopping
                    .get_or_insert_with(|| (now + grace, Vec::new()));
                waiters.push(reply);
                if started {
                    for i in 0..self.sims.len() {
                        if self
                            .sims
                            .get(i)
                            .is_some_and(|s| matches!(s.gauge, Gauge::Registered | Gauge::Sleeping))
                        {
                            self.deregister(i, now);
                        }
                    }
                }
            }
        }
    }

    /// Applies `f` to the started clients `selector` picks, then drains them.
    fn each(&mut self, now: Instant, selector: &Selector, mut f: impl FnMut(&mut Sim, Instant)) {
        for i in self.select(selector) {
            if let Some(sim) = self.sims.get_mut(i).filter(|s| s.started.is_some()) {
                f(sim, now);
                self.after(i, now);
            }
        }
    }
}

/// The request whose latency is measured, if `bytes` is one: a Register (Core TS 1.1
/// §6.2.1, [`RequestKind`]) or, any other POST of the client's but a Bootstrap-Request and
/// a Send, an Update (§6.2.2). Responses and notifications are not.
fn timed_request(bytes: &[u8]) -> Option<Timed> {
    // Code 0.02 POST (RFC 7252 §12.1.1) is the second byte of the header.
    if bytes.get(1) != Some(&2) {
        return None;
    }
    // A client's POST that is not a Register, Bootstrap-Request or Send goes to its
    // registration's location, whatever path the server gave it (2.01's Location-Path).
    match RequestKind::of(&message::decode(bytes).ok()?)? {
        RequestKind::Register => Some(Timed::Register),
        RequestKind::BootstrapRequest | RequestKind::BootstrapFinish | RequestKind::Send => None,
        _ => Some(Timed::Update),
    }
}

/// `POST /rd?ep=a&lt=60 (42-byte payload)` for a POST request, `None` for anything else.
fn post_summary(bytes: &[u8]) -> Option<String> {
    if bytes.get(1) != Some(&2) {
        return None;
    }
    let packet = message::decode(bytes).ok()?;
    let path: Vec<String> = packet
        .get_option(CoapOption::UriPath)
        .map(|p| {
            p.iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let query: Vec<String> = packet
        .get_option(CoapOption::UriQuery)
        .map(|p| {
            p.iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut out = format!("POST /{}", path.join("/"));
    if !query.is_empty() {
        out.push('?');
        out.push_str(&query.join("&"));
    }
    if !packet.payload.is_empty() {
        out.push_str(&format!(" ({}-byte payload)", packet.payload.len()));
    }
    Some(out)
}

/// One failure's exchange: `ENDPOINT: REQUEST -> ANSWER`.
fn example(endpoint: &str, request: Option<&str>, reason: &str) -> String {
    // An answer without a diagnostic payload reads `answered 4.12: `.
    let reason = reason.trim_end().trim_end_matches(':');
    match request {
        Some(r) => format!("{endpoint}: {r} -> {reason}"),
        None => format!("{endpoint}: {reason}"),
    }
}

fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lwm2m_proto::coap::{Packet, RequestType};

    fn post(path: &str, query: Option<&str>) -> Vec<u8> {
        let mut p: Packet = message::request(RequestType::Post, path);
        if let Some(q) = query {
            message::add_query(&mut p, q);
        }
        p.to_bytes().unwrap()
    }

    #[test]
    fn classifies_timed_requests() {
        // Core TS 1.1 §6.2.1 Register, §6.2.2 Update, §6.1 Bootstrap-Request, §6.4.4 Send.
        assert_eq!(
            timed_request(&post("/rd", Some("ep=a"))),
            Some(Timed::Register)
        );
        assert_eq!(timed_request(&post("/rd/5a3f", None)), Some(Timed::Update));
        assert_eq!(
            timed_request(&post("/other/loc", None)),
            Some(Timed::Update)
        );
        assert_eq!(timed_request(&post("/bs", Some("ep=a"))), None);
        assert_eq!(timed_request(&post("/dp", None)), None);
        let get = message::request(RequestType::Get, "/rd")
            .to_bytes()
            .unwrap();
        assert_eq!(timed_request(&get), None);
        assert_eq!(timed_request(&[]), None);
        assert_eq!(timed_request(&[0x40, 0x02]), None);
    }

    #[test]
    fn gauges_follow_states() {
        assert!(Gauge::of(ClientState::Sleeping).is_active());
        assert!(!Gauge::of(ClientState::Failed).is_active());
        assert_eq!(Gauge::of(ClientState::Deregistered), Gauge::Other);
    }
}
