//! What an [`Endpoint`](super::Endpoint) keeps, below both of its roles: the message layer's
//! bookkeeping (RFC 7252 §4: tokens, message IDs, retransmission, deduplication, timers) and
//! the server role's block-wise and observe state (RFC 7959, RFC 7641). The endpoint
//! (`endpoint.rs`), its client role (`client.rs`) and its server role (`server.rs`) build on
//! these; nothing here knows of them.

use std::collections::VecDeque;
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{MessageType, Packet};

use crate::hash::HashMap;

use super::message::{BlockOption, empty};
use super::{ObservationId, RequestId};

/// A peer and a message ID: the scope of deduplication and of ACK/RST matching
/// (RFC 7252 §4.4).
pub(super) type MessageKey = (SocketAddr, u16);

/// A token (RFC 7252 §5.3.1), at most 8 bytes, stored inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(super) struct Token {
    pub(super) len: u8,
    pub(super) bytes: [u8; 8],
}

impl Token {
    /// `None` when longer than 8 bytes.
    pub(super) fn new(slice: &[u8]) -> Option<Token> {
        let mut bytes = [0; 8];
        bytes.get_mut(..slice.len())?.copy_from_slice(slice);
        Some(Token {
            len: slice.len() as u8,
            bytes,
        })
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len.min(8))]
    }
}

/// Who is waiting for the acknowledgement of a message this endpoint sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// A request (or one block of it) of an exchange.
    Request(RequestId),
    /// A separate response (RFC 7252 §5.2.2).
    Response,
    /// A notification (RFC 7641 §4.5).
    Notification(ObservationId),
}

/// Retransmission state of a confirmable message (RFC 7252 §4.2).
#[derive(Debug, Clone)]
pub(super) struct Retransmit {
    pub(super) bytes: Vec<u8>,
    /// Transmissions so far, the first included.
    pub(super) transmissions: u32,
    pub(super) timeout: Duration,
    pub(super) next_at: Instant,
}

/// A message this endpoint sent that the peer may acknowledge or reset.
#[derive(Debug)]
pub(super) struct Sent {
    pub(super) owner: Owner,
    /// `None` for a non-confirmable message (kept only to match a Reset, RFC 7252 §4.3).
    pub(super) retransmit: Option<Retransmit>,
}

/// What was answered to an incoming confirmable or non-confirmable message, for duplicates
/// (RFC 7252 §4.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    /// Nothing to repeat (non-confirmable, or nothing sent).
    Nothing,
    /// A request not yet answered; an empty ACK goes out at `ack_at` unless the response is
    /// piggybacked before (RFC 7252 §5.2.2).
    Pending { serial: u64, ack_at: Instant },
    /// The ACK or RST that was sent, to send again for each duplicate.
    Cached(Vec<u8>),
}

/// Timers kept in the heap; an entry is stale (and skipped) when the state it refers to no
/// longer has that deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// Retransmit or give up a confirmable message (RFC 7252 §4.2).
    Retransmit(SocketAddr, u16),
    /// Stop waiting for a response (RFC 7252 §5.2.2, §5.2.3).
    Response(RequestId),
    /// Send an empty ACK for an unanswered request (RFC 7252 §5.2.2).
    Ack(SocketAddr, u16),
}

/// A map whose entries expire, with a capacity: the oldest entry is evicted first.
#[derive(Debug)]
pub(super) struct Expiring<K, V> {
    map: HashMap<K, (Instant, V)>,
    order: VecDeque<(Instant, K)>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> Expiring<K, V> {
    pub(super) fn new(capacity: usize) -> Self {
        Expiring {
            map: HashMap::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub(super) fn insert(&mut self, key: K, value: V, expires: Instant) {
        while self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            let Some((at, old)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|(e, _)| *e == at) {
                self.map.remove(&old);
            }
        }
        self.order.push_back((expires, key.clone()));
        self.map.insert(key, (expires, value));
    }

    /// The live entry for `key`.
    pub(super) fn get_mut(&mut self, now: Instant, key: &K) -> Option<&mut V> {
        self.map
            .get_mut(key)
            .filter(|(e, _)| *e > now)
            .map(|(_, v)| v)
    }

    /// The entry for `key`, live or not yet swept.
    pub(super) fn peek(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(_, v)| v)
    }

    /// Moves the expiry of a live entry.
    pub(super) fn touch(&mut self, key: &K, expires: Instant) {
        if let Some((e, _)) = self.map.get_mut(key) {
            *e = expires;
            self.order.push_back((expires, key.clone()));
        }
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|(_, v)| v)
    }

    pub(super) fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.order.front() {
            if *at > now {
                break;
            }
            if self.map.get(key).is_some_and(|(e, _)| e == at) {
                self.map.remove(key);
            }
            self.order.pop_front();
        }
    }

    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.order.front().map(|(at, _)| *at)
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Room for `n` more entries (never beyond the capacity) without growing.
    pub(super) fn reserve(&mut self, n: usize) {
        let n = n.min(self.capacity.saturating_sub(self.map.len()));
        self.map.reserve(n);
        self.order.reserve(n);
    }
}

/// Per-peer state of the message layer.
#[derive(Debug)]
pub(super) struct PeerState {
    /// Next message ID to use (RFC 7252 §4.4), started at random.
    pub(super) next_mid: u16,
    /// Requests holding an NSTART slot (RFC 7252 §4.7).
    pub(super) active: usize,
    /// Requests waiting for a slot, in order.
    pub(super) queue: VecDeque<RequestId>,
    pub(super) last_used: Instant,
}

/// A request body being reassembled (RFC 7959 §2.3).
#[derive(Debug)]
pub(super) struct Upload {
    pub(super) body: Vec<u8>,
}

/// A response body being served block by block (RFC 7959 §2.4).
#[derive(Debug)]
pub(super) struct Download {
    /// The response without payload, Observe and block options.
    pub(super) template: Packet,
    pub(super) body: Vec<u8>,
}

/// An observation served by this endpoint (RFC 7641 §4.1).
#[derive(Debug)]
pub(super) struct Observation {
    pub(super) peer: SocketAddr,
    pub(super) token: Token,
    pub(super) key: Vec<u8>,
    /// Block size asked for in the registration (RFC 7959 §2.4), if any.
    pub(super) block: Option<BlockOption>,
    /// Last Observe sequence number sent (RFC 7641 §4.4), 24 bits.
    pub(super) seq: u32,
    /// Confirmable notification awaiting its ACK.
    pub(super) con_mid: Option<u16>,
    /// Last non-confirmable notification, kept to match a Reset (RFC 7641 §3.6).
    pub(super) non_mid: Option<u16>,
}

/// Stops tracking message `mid` if it still belongs to `owner`.
pub(super) fn forget_sent(
    sent: &mut HashMap<MessageKey, Sent>,
    peer: SocketAddr,
    mid: u16,
    owner: Owner,
) {
    if sent.get(&(peer, mid)).is_some_and(|s| s.owner == owner) {
        sent.remove(&(peer, mid));
    }
}

/// Encodes an Empty ACK or RST (4 bytes, RFC 7252 §4.1).
pub(super) fn encode_empty(kind: MessageType, mid: u16) -> Vec<u8> {
    empty(kind, mid).to_bytes_unlimited().unwrap_or_default()
}
