//! # The fleet: many simulated LwM2M clients in one process
//!
//! A [`Fleet`] drives any number of [`Lwm2mClient`](lwm2m_proto::client::Lwm2mClient) state machines (the sans-IO client of
//! `lwm2m-proto`) from **one tokio task**: a binary heap holds every client's next deadline
//! (its machine's timer, ramp-up start, sleep-schedule wake-ups, value generator ticks) and
//! a second heap the datagrams the impairment model delays. No task per client.
//!
//! Addresses: when every server is on loopback (an in-process server, or an external one on
//! this machine), every client gets its own public address `(127.a.b.c, port)` from a small
//! pool of UDP sockets bound to `0.0.0.0` ([`FleetConfig::sockets`], 16 by default): a
//! socket can send from any loopback address and learns the destination address of each
//! datagram it receives (IP_PKTINFO, through `quinn-udp`). So 50,000 clients need 16 file
//! descriptors, not 50,000 (a process may hold 20,000 here). When a server is elsewhere,
//! loopback source addresses cannot reach it: each client then gets a socket of its own
//! (at most [`FleetConfig::max_dedicated_sockets`] clients), and a NAT rebinding opens a
//! new one.
//!
//! Network models ([`NetworkModel`], one per client, seeded from the fleet seed and the
//! client number):
//! - **NAT** (RFC 4787 §4.3): after the model's idle timeout without outbound traffic the
//!   mapping is gone: datagrams to the old address are dropped, and the client's next
//!   datagram leaves from a new (address, port) of the pool: the server sees a rebinding.
//! - **Sleep** (Core TS 1.1 §6.5 queue mode): between awake windows the client's radio is
//!   off and datagrams to it are dropped; at each window start the client machine wakes.
//!   Datagrams to a client whose machine is in queue-mode sleep are dropped as well.
//! - **Impairment** per direction: loss, delay and jitter, duplication, reordering.
//!
//! Clients start at the configured ramp-up rate. Live counters per profile
//! ([`ProfileCounters`]) are atomics, readable through a [`FleetHandle`] while the fleet
//! runs; the handle also injects value changes, expires NAT mappings, puts groups to sleep,
//! and stops the fleet (every registered client de-registers first).

mod counters;
mod driver;
mod handle;
mod pool;
mod profile;

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

pub use counters::{
    CountersSnapshot, FailureCause, Latencies, ProfileCounters, Timed, failure_cause, merge_causes,
};
pub use handle::{ClientInfo, FleetHandle, FleetReport, ProfileReport};
use lwm2m_dtls::KeyLog;
use lwm2m_proto::Lwm2mPath;
use lwm2m_proto::client::{ClientConfig, ObjectTree};
pub use lwm2m_proto::tap::PacketTap;
pub use profile::{ProfileClients, PskPattern, Targets};

use crate::generator::Generator;
use crate::network::NetworkModel;

/// Settings of a fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// The one seed behind every random choice of the fleet's network models
    /// (design convention 9); the clients' own seeds are in their [`ClientConfig`]s.
    pub seed: u64,
    /// Clients started per second; `None` starts them all at once.
    pub ramp: Option<f64>,
    /// UDP sockets in the pool (at least 1).
    pub sockets: usize,
    /// The address the pool sockets bind to; `0.0.0.0` so that they send from any
    /// loopback address.
    pub bind: IpAddr,
    /// The first client address; the next ones count up from it (127.255.255.254 at most).
    pub first_address: Ipv4Addr,
    /// Send and receive buffer of each pool socket, in bytes (the kernel may cap it).
    pub socket_buffer: usize,
    /// When a server is off loopback every client needs a socket of its own: the most
    /// clients allowed then (a process may hold 20,000 file descriptors here).
    pub max_dedicated_sockets: usize,
    /// Sees every datagram the fleet's sockets send and receive (pcap recording).
    pub tap: Option<Tap>,
    /// Gets the secrets of every DTLS session the clients establish (an NSS key log, so a
    /// capture of the fleet's datagrams can be decrypted).
    pub key_log: Option<SessionKeyLog>,
    /// Keep every Register and Update latency with its time ([`Latencies::samples`], for
    /// latency over time), besides the histograms; off, the memory stays constant.
    pub timed_latencies: bool,
    /// Which part of a larger fleet this one is: the fleet's `i`-th client is client
    /// number [`Shard::number`]`(i)` of the whole, whose number seeds its network models and
    /// places its start on the ramp. One shard of one (the default) is the whole fleet.
    pub shard: Shard,
}

/// Shard `index` of `count` (`--shard K/N`): the clients `index`, `index + count`,
/// `index + 2 count`, ... of a fleet spread over `count` processes or machines, each with
/// the number (hence endpoint name, seeds and credentials) it has in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 0.
    pub index: u64,
    /// How many shards (at least 1).
    pub count: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

/// Why a text is not a shard `K/N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// Not two numbers around a `/`.
    #[error("{text:?}: expected K/N, shard K of N counting from 0, e.g. 0/4")]
    Shape {
        /// The text as written.
        text: String,
    },
    /// `K` is not below `N`.
    #[error("{text:?}: K must be below N (0/4 to 3/4 for 4 shards)")]
    OutOfRange {
        /// The text as written.
        text: String,
        /// `K`.
        index: u64,
        /// `N`.
        count: u64,
    },
}

impl Shard {
    /// `K/N` with `K < N`.
    pub fn parse(s: &str) -> Result<Self, ShardError> {
        let bad = || ShardError::Shape { text: s.to_owned() };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u64 = k.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(ShardError::OutOfRange {
                text: s.to_owned(),
                index,
                count,
            });
        }
        Ok(Self { index, count })
    }

    /// The number, in the whole fleet, of this shard's `i`-th client.
    pub fn number(self, i: u64) -> u64 {
        self.index
            .saturating_add(i.saturating_mul(self.count.max(1)))
    }

    /// The numbers of this shard's clients in a fleet of `total`.
    pub fn numbers(self, total: u64) -> impl Iterator<Item = u64> {
        let step = usize::try_from(self.count.max(1)).unwrap_or(usize::MAX);
        (self.index..total).step_by(step)
    }

    /// How many of the first `n` clients of the whole fleet are this shard's (a timeline
    /// action on the first `n` clients acts on that many of this shard's first clients).
    pub fn among(self, n: u64) -> u64 {
        let count = self.count.max(1);
        n.saturating_sub(self.index).div_ceil(count)
    }

    /// The first client address of this shard: the loopback range from `base` up is cut in
    /// `count` equal slices, so that shards on one machine never share an address.
    pub fn first_address(self, base: Ipv4Addr) -> Ipv4Addr {
        self.first_address_in(base, Ipv4Addr::new(127, 255, 255, 254))
    }

    /// The first client address of this shard within the block `base..=last` (a scenario
    /// group's 127.G.0.0/16), cut in `count` equal slices.
    pub fn first_address_in(self, base: Ipv4Addr, last: Ipv4Addr) -> Ipv4Addr {
        let first = u32::from(base);
        let last = u32::from(last);
        let slice = last.saturating_sub(first) / u32::try_from(self.count.max(1)).unwrap_or(1);
        let k = u32::try_from(self.index).unwrap_or(0);
        Ipv4Addr::from(first.saturating_add(slice.saturating_mul(k)))
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// A shared [`KeyLog`] for [`FleetConfig::key_log`].
#[derive(Clone)]
pub struct SessionKeyLog(pub Arc<dyn KeyLog>);

impl std::fmt::Debug for SessionKeyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeyLog")
    }
}

impl PartialEq for SessionKeyLog {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A shared [`PacketTap`] for [`FleetConfig::tap`]: it sees each client's datagrams with
/// the client's address as the local one, and the plaintext of its DTLS records.
#[derive(Clone)]
pub struct Tap(pub Arc<dyn PacketTap>);

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap")
    }
}

impl PartialEq for Tap {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            ramp: None,
            sockets: 16,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            first_address: Ipv4Addr::new(127, 1, 0, 1),
            socket_buffer: 4 << 20,
            max_dedicated_sockets: 16_000,
            tap: None,
            key_log: None,
            timed_latencies: false,
            shard: Shard::default(),
        }
    }
}

/// One client to simulate.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Its settings (endpoint name, servers, lifetime, quirks, CoAP seed, ...).
    pub config: ClientConfig,
    /// Its factory object tree.
    pub tree: ObjectTree,
    /// Its generated resources.
    pub generators: Vec<GeneratedResource>,
    /// What lies between it and the servers.
    pub network: NetworkModel,
}

/// A resource whose value a generator drives: every `period` the fleet sets the
/// generator's next value on the client (observations are evaluated as for any change).
#[derive(Debug, Clone)]
pub struct GeneratedResource {
    /// The resource.
    pub path: Lwm2mPath,
    /// The seeded generator.
    pub generator: Generator,
    /// How often a value is produced; zero: never after the first.
    pub period: Duration,
}

/// Which clients a [`FleetHandle`] command applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Selector {
    /// Every client.
    All,
    /// The clients of one profile.
    Profile(String),
    /// The clients with these endpoint names.
    Endpoints(Vec<String>),
    /// Clients by number (the order they were added in).
    Range(Range<usize>),
}

/// Why a fleet could not start, or a command could not be delivered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The socket pool could not be set up.
    #[error("fleet socket pool: {0}")]
    Io(#[from] std::io::Error),
    /// A server off loopback needs a socket per client, and there are more clients than
    /// [`FleetConfig::max_dedicated_sockets`].
    #[error(
        "{clients} clients target a server off loopback: that takes a socket each, and the limit is {limit} (file descriptors)"
    )]
    TooManyClients {
        /// Clients in the fleet.
        clients: usize,
        /// The limit.
        limit: usize,
    },
    /// More clients than loopback addresses.
    #[error("no loopback address left for client {client}")]
    OutOfAddresses {
        /// The client number.
        client: usize,
    },
    /// [`Fleet::start`] outside a tokio runtime.
    #[error("the fleet must start inside a tokio runtime")]
    NoRuntime,
    /// The fleet has stopped: the command was not delivered.
    #[error("the fleet has stopped")]
    Stopped,
}

/// A fleet being put together; [`Fleet::start`] sets it running.
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    profiles: Vec<String>,
    clients: Vec<(usize, ClientSpec)>,
}

impl Fleet {
    /// An empty fleet.
    pub fn new(config: FleetConfig) -> Self {
        Self {
            config,
            profiles: Vec::new(),
            clients: Vec::new(),
        }
    }

    /// Adds a client of profile `profile` (any name; counters add up per name); returns
    /// its number.
    pub fn add(&mut self, profile: &str, spec: ClientSpec) -> usize {
        let index = match self.profiles.iter().position(|p| p == profile) {
            Some(i) => i,
            None => {
                self.profiles.push(profile.to_owned());
                self.profiles.len() - 1
            }
        };
        self.clients.push((index, spec));
        self.clients.len() - 1
    }

    /// Number of clients added.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True if no client was added.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The settings.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// Binds the socket pool and spawns the driver task on the current tokio runtime;
    /// clients start at the ramp-up rate from the moment every client machine is built.
    pub fn start(self) -> Result<FleetHandle, FleetError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(FleetError::NoRuntime);
        }
        driver::spawn(self.config, self.profiles, self.clients)
    }
}

/// The ramp-up offset of client `n`: `n / rate` seconds.
fn ramp_offset(ramp: Option<f64>, n: usize) -> Duration {
    match ramp {
        Some(rate) if rate > 0.0 && rate.is_finite() => {
            Duration::try_from_secs_f64(n as f64 / rate).unwrap_or(Duration::MAX)
        }
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_fleet() {
        let shards: Vec<Shard> = (0..4)
            .map(|k| Shard::parse(&format!("{k}/4")).unwrap())
            .collect();
        let mut all: Vec<u64> = shards.iter().flat_map(|s| s.numbers(10)).collect();
        assert_eq!(shards[1].numbers(10).collect::<Vec<_>>(), [1, 5, 9]);
        assert_eq!(shards[1].number(2), 9);
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(
            Shard::parse("4/4"),
            Err(ShardError::OutOfRange {
                text: "4/4".into(),
                index: 4,
                count: 4
            })
        );
        assert_eq!(
            Shard::parse("4/4").unwrap_err().to_string(),
            "\"4/4\": K must be below N (0/4 to 3/4 for 4 shards)"
        );
        assert!(Shard::parse("0/0").is_err());
        assert!(Shard::parse("x").is_err());
        let base = Ipv4Addr::new(127, 1, 0, 1);
        assert_eq!(shards[0].first_address(base), base);
        let firsts: Vec<Ipv4Addr> = shards.iter().map(|s| s.first_address(base)).collect();
        assert!(
            firsts
                .windows(2)
                .all(|w| u32::from(w[1]) - u32::from(w[0]) > 4_000_000)
        );
        assert_eq!(Shard::default().numbers(3).count(), 3);
        // Of the first n clients, each shard has as many as its numbers below n.
        for n in 0..12 {
            for s in &shards {
                assert_eq!(s.among(n), s.numbers(n).count() as u64, "{s} of {n}");
            }
        }
        assert_eq!(Shard::default().among(7), 7);
        let block = (Ipv4Addr::new(127, 3, 0, 1), Ipv4Addr::new(127, 3, 255, 254));
        assert_eq!(shards[0].first_address_in(block.0, block.1), block.0);
        assert_eq!(
            shards[3].first_address_in(block.0, block.1),
            Ipv4Addr::new(127, 3, 191, 254)
        );
    }

    #[test]
    fn ramp_spreads_starts() {
        assert_eq!(ramp_offset(None, 500), Duration::ZERO);
        assert_eq!(ramp_offset(Some(1000.0), 500), Duration::from_millis(500));
        assert_eq!(ramp_offset(Some(0.0), 500), Duration::ZERO);
        assert_eq!(ramp_offset(Some(f64::NAN), 5), Duration::ZERO);
    }
}
