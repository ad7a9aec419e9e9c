//! The one test rig for the sans-IO machines (cargo feature `testing`; always on for this
//! crate's own tests): a machine and its peers, each at an address, joined by a simulated
//! link on a virtual clock.
//!
//! [`Pair`] holds machine `a` (the one under test) and one or more peers of type `B`, every
//! one a [`Machine`]. Datagrams go through a [`Link`] with latency, jitter (which reorders),
//! loss and duplication drawn from a seed, so a run is the same every time. Time only moves
//! when [`Pair::run`] (or [`Pair::advance`]) moves it, from one deadline or delivery to the
//! next: no sleeps, no wall clock beyond the one [`Instant`] the clock starts at.
//!
//! ```
//! # use std::time::Duration;
//! use lwm2m_proto::coap::{Config, Endpoint, Event, RequestType, message};
//! use lwm2m_proto::testing::{Link, Pair};
//!
//! let client: std::net::SocketAddr = "10.0.0.1:40000".parse().unwrap();
//! let server: std::net::SocketAddr = "10.0.0.2:5683".parse().unwrap();
//! let link = Link { latency: Duration::from_millis(50), ..Link::default() };
//! let mut pair = Pair::new(client, Endpoint::new(Config::default()), link, 1);
//! let peer = pair.add_peer(server, Endpoint::new(Config::default()));
//! let now = pair.now;
//! let request = message::request(RequestType::Get, "/3/0");
//! pair.a.send_request(now, server, request).unwrap();
//! pair.advance(Duration::from_secs(1));
//! assert!(matches!(pair.peers[peer].inbox.front(), Some(Event::Request { .. })));
//! ```
//!
//! Peers' events are queued in their [`Peer::inbox`] unless a test hands a handler to
//! [`Pair::run_with`] that answers them at the virtual instant they happen; events of `a`
//! are kept in [`Pair::events`] with the time they came out.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::machine::Machine;

/// How the link treats every datagram, both ways. The default is a perfect link that
/// delivers at the instant of sending.
#[derive(Debug, Clone, Copy, Default)]
pub struct Link {
    /// Probability that a copy is lost.
    pub loss: f64,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Time on the wire.
    pub latency: Duration,
    /// Extra random delay in `[0, jitter)` per copy: reorders datagrams.
    pub jitter: Duration,
}

/// One datagram on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Virtual time since the start (of sending, or of delivery in [`Pair::delivered`]).
    pub at: Duration,
    /// The sender.
    pub from: SocketAddr,
    /// The addressee.
    pub to: SocketAddr,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// A peer of machine `a`: its address, the machine, and the events nobody handled yet.
#[derive(Debug)]
pub struct Peer<B: Machine> {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The machine (also reachable through `Deref`).
    pub machine: B,
    /// Its events, oldest first.
    pub inbox: VecDeque<B::Event>,
}

impl<B: Machine> Deref for Peer<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.machine
    }
}

impl<B: Machine> DerefMut for Peer<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.machine
    }
}

/// A datagram in flight: (delivery time, sequence, from, to, bytes).
type InFlight = Reverse<(Instant, u64, SocketAddr, SocketAddr, Vec<u8>)>;

/// How many steps a run may take before the rig gives up: machines that keep each other
/// busy at one instant for ever are a bug the test should show.
const STEP_LIMIT: usize = 10_000_000;

/// Machine `a` and its peers on a virtual clock, joined by a [`Link`].
pub struct Pair<A: Machine, B: Machine> {
    /// The machine under test.
    pub a: A,
    /// Where `a` listens.
    pub a_addr: SocketAddr,
    /// The machines `a` talks to.
    pub peers: Vec<Peer<B>>,
    /// The start of virtual time.
    pub start: Instant,
    /// Virtual now.
    pub now: Instant,
    /// The link; tests may change it mid-run (for example cut it with `loss = 1.0`).
    pub link: Link,
    /// Every datagram sent, also those to an address nobody holds.
    pub sent: Vec<Datagram>,
    /// Every datagram delivered, at its time of delivery.
    pub delivered: Vec<Datagram>,
    /// Events of `a` with the virtual time they came out.
    pub events: Vec<(Duration, A::Event)>,
    rng: ChaCha8Rng,
    wire: BinaryHeap<InFlight>,
    seq: u64,
}

impl<A: Machine, B: Machine> Pair<A, B> {
    /// Machine `a` at `a_addr`, no peers yet; `seed` drives every draw of the link.
    pub fn new(a_addr: SocketAddr, a: A, link: Link, seed: u64) -> Self {
        let start = Instant::now();
        Self {
            a,
            a_addr,
            peers: Vec::new(),
            start,
            now: start,
            link,
            sent: Vec::new(),
            delivered: Vec::new(),
            events: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            wire: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Adds a peer at `addr`; returns its index in [`Pair::peers`].
    pub fn add_peer(&mut self, addr: SocketAddr, machine: B) -> usize {
        self.peers.push(Peer {
            addr,
            machine,
            inbox: VecDeque::new(),
        });
        self.peers.len() - 1
    }

    /// The peer at `addr`.
    ///
    /// # Panics
    /// When no peer listens there (a mistake in the test).
    pub fn peer_at(&mut self, addr: SocketAddr) -> &mut Peer<B> {
        self.peers
            .iter_mut()
            .find(|p| p.addr == addr)
            .unwrap_or_else(|| panic!("no peer at {addr}"))
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The next instant something happens: a delivery or a machine's deadline.
    pub fn next_due(&mut self) -> Option<Instant> {
        self.flush();
        let peers = self.peers.iter_mut().map(|p| p.machine.poll_timeout());
        [
            self.wire.peek().map(|Reverse((at, ..))| *at),
            self.a.poll_timeout(),
        ]
        .into_iter()
        .chain(peers)
        .flatten()
        .min()
    }

    /// Delivers what is due now and lets the machines answer, until the link is quiet at
    /// this instant. Peers' events go to their inbox.
    pub fn pump(&mut self) {
        self.run(self.now);
    }

    /// Runs for `d` of virtual time.
    pub fn advance(&mut self, d: Duration) {
        self.run(self.now + d);
    }

    /// Runs until `end`, timer by timer and delivery by delivery; then now is `end` (or
    /// stays where it is when `end` is past). Peers' events go to their inbox.
    pub fn run(&mut self, end: Instant) {
        self.run_with(end, |peer, _, event| peer.inbox.push_back(event));
    }

    /// [`Pair::run`], handing every event of a peer to `handler` at the instant it comes
    /// out (a scripted server answering at once, for example).
    pub fn run_with(
        &mut self,
        end: Instant,
        mut handler: impl FnMut(&mut Peer<B>, Instant, B::Event),
    ) {
        // What the test's own calls on the machines reported.
        self.drain(&mut handler);
        for _ in 0..STEP_LIMIT {
            let Some(next) = self.next_due().filter(|t| *t <= end) else {
                self.now = self.now.max(end);
                return;
            };
            self.now = self.now.max(next);
            self.deliver();
            let now = self.now;
            if self.a.poll_timeout().is_some_and(|t| t <= now) {
                self.a.handle_timeout(now);
            }
            for p in &mut self.peers {
                if p.machine.poll_timeout().is_some_and(|t| t <= now) {
                    p.machine.handle_timeout(now);
                }
            }
            self.drain(&mut handler);
        }
        panic!("the machines do not settle");
    }

    /// Takes every datagram the machines want to send onto the wire.
    fn flush(&mut self) {
        let at = self.elapsed();
        while let Some(t) = self.a.poll_transmit() {
            let from = self.a_addr;
            self.send(at, from, t.peer, t.bytes);
        }
        for i in 0..self.peers.len() {
            while let Some(t) = self.peers[i].machine.poll_transmit() {
                let from = self.peers[i].addr;
                self.send(at, from, t.peer, t.bytes);
            }
        }
    }

    fn send(&mut self, at: Duration, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.sent.push(Datagram {
            at,
            from,
            to,
            bytes: bytes.clone(),
        });
        let listens = to == self.a_addr || self.peers.iter().any(|p| p.addr == to);
        if !listens {
            return; // into the void
        }
        let copies = if self.rng.random_bool(self.link.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.rng.random_bool(self.link.loss) {
                continue;
            }
            let jitter = self.link.jitter.mul_f64(self.rng.random_range(0.0..1.0));
            let due = self.now + self.link.latency + jitter;
            self.seq += 1;
            self.wire
                .push(Reverse((due, self.seq, from, to, bytes.clone())));
        }
    }

    /// Hands every datagram due by now to its addressee.
    fn deliver(&mut self) {
        while let Some(Reverse((due, ..))) = self.wire.peek() {
            if *due > self.now {
                return;
            }
            let Some(Reverse((_, _, from, to, bytes))) = self.wire.pop() else {
                return;
            };
            let now = self.now;
            if to == self.a_addr {
                self.a.handle_datagram(now, from, &bytes);
            } else if let Some(p) = self.peers.iter_mut().find(|p| p.addr == to) {
                p.machine.handle_datagram(now, from, &bytes);
            }
            self.delivered.push(Datagram {
                at: now - self.start,
                from,
                to,
                bytes,
            });
        }
    }

    fn drain(&mut self, handler: &mut impl FnMut(&mut Peer<B>, Instant, B::Event)) {
        let at = self.elapsed();
        while let Some(event) = self.a.poll_event() {
            self.events.push((at, event));
        }
        let now = self.now;
        for p in &mut self.peers {
            while let Some(event) = p.machine.poll_event() {
                handler(p, now, event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::{Config, Endpoint, Event, RequestType, ResponseType, message};

    fn client() -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 40000))
    }

    fn server() -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 2], 5683))
    }

    /// Ten GETs over `link`, each answered at once by the server peer.
    fn exchange(link: Link, seed: u64) -> Pair<Endpoint, Endpoint> {
        let mut pair = Pair::new(client(), Endpoint::new(Config::default()), link, seed);
        pair.add_peer(server(), Endpoint::new(Config::default()));
        for i in 0..10 {
            let now = pair.now;
            let request = message::request(RequestType::Get, &format!("/{i}"));
            pair.a.send_request(now, server(), request).unwrap();
        }
        let end = pair.now + Duration::from_secs(3600);
        pair.run_with(end, |peer, now, event| {
            if let Event::Request { request, .. } = event {
                let answer = message::response(ResponseType::Content, b"x".to_vec());
                peer.respond(now, request.handle, answer).unwrap();
            }
        });
        pair
    }

    #[test]
    fn the_same_seed_gives_the_same_run_and_another_seed_another() {
        let link = Link {
            loss: 0.3,
            duplicate: 0.2,
            latency: Duration::from_millis(20),
            jitter: Duration::from_millis(50),
        };
        let one = exchange(link, 7);
        let two = exchange(link, 7);
        assert_eq!(one.delivered, two.delivered);
        assert_eq!(one.sent, two.sent);
        assert_ne!(exchange(link, 8).delivered, one.delivered);
    }

    #[test]
    fn latency_delays_every_delivery_and_duplication_doubles_it() {
        let latency = Duration::from_millis(40);
        let link = Link {
            duplicate: 1.0,
            latency,
            ..Link::default()
        };
        let pair = exchange(link, 1);
        assert_eq!(pair.delivered.len(), 2 * pair.sent.len());
        for d in &pair.delivered {
            let sent = pair
                .sent
                .iter()
                .find(|s| s.bytes == d.bytes && s.from == d.from);
            assert_eq!(d.at - sent.expect("sent before").at, latency);
        }
    }

    #[test]
    fn a_lost_link_delivers_nothing_and_the_client_gives_up() {
        let link = Link {
            loss: 1.0,
            ..Link::default()
        };
        let pair = exchange(link, 1);
        assert!(pair.delivered.is_empty());
        let failed = pair
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::RequestFailed { .. }))
            .count();
        assert_eq!(failed, 10);
        assert!(pair.peers[0].inbox.is_empty());
    }

    #[test]
    fn datagrams_to_nobody_are_logged_but_not_delivered() {
        let mut pair: Pair<Endpoint, Endpoint> = Pair::new(
            client(),
            Endpoint::new(Config::default()),
            Link::default(),
            1,
        );
        let nobody = SocketAddr::from(([10, 0, 0, 9], 5683));
        let now = pair.now;
        let request = message::request(RequestType::Get, "/");
        pair.a.send_request(now, nobody, request).unwrap();
        pair.pump();
        assert_eq!(pair.sent.len(), 1);
        assert_eq!(pair.sent[0].to, nobody);
        assert!(pair.delivered.is_empty());
    }
}
