//! The one packet tap: what a socket's owner (a server driver, the fleet) shows a recorder.
//!
//! Every endpoint that owns UDP sockets reports each datagram it receives or sends, and,
//! on a DTLS session, the plaintext of each application record (RFC 6347 §4.1), so that a
//! capture can attribute encrypted datagrams to CoAP exchanges. The core does no I/O: this
//! is only the shape of the report.

use std::net::SocketAddr;

/// Which way a datagram went, seen from the socket at `local`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received.
    In,
    /// Sent.
    Out,
}

impl Direction {
    /// `(source, destination)` of a datagram going this way between `local` and `peer`.
    pub fn ends(self, local: SocketAddr, peer: SocketAddr) -> (SocketAddr, SocketAddr) {
        match self {
            Self::In => (peer, local),
            Self::Out => (local, peer),
        }
    }
}

/// Sees every datagram a socket receives (before it is handled) or sends (right before it
/// goes out). Called on the socket owner's task: keep it cheap.
pub trait PacketTap: Send + Sync {
    /// One UDP datagram on the socket bound at `local`, from or to `peer` (DTLS records as
    /// they are, encrypted).
    fn datagram(&self, direction: Direction, local: SocketAddr, peer: SocketAddr, bytes: &[u8]);

    /// The plaintext (a CoAP datagram) of one DTLS application record of the session
    /// between `local` and `peer`: reported after [`PacketTap::datagram`] saw the record
    /// come in (`In`, decrypted), or before it sees it go out (`Out`, about to be
    /// encrypted). `identity` is the session's (`psk:ID`, `cn:NAME`). Does nothing unless
    /// implemented.
    fn plaintext(
        &self,
        direction: Direction,
        local: SocketAddr,
        peer: SocketAddr,
        identity: &str,
        bytes: &[u8],
    ) {
        let _ = (direction, local, peer, identity, bytes);
    }
}
