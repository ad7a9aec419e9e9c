//! The socket pool: a few UDP sockets that give any number of simulated clients distinct
//! loopback addresses.
//!
//! Linux treats all of 127.0.0.0/8 as local, so one socket bound to `0.0.0.0` can send from
//! any 127.a.b.c address (IP_PKTINFO on `sendmsg`) and learns the destination address of
//! each datagram it receives (IP_PKTINFO on `recvmsg`). A client's public address is
//! (its 127.a.b.c address, the port of its pool socket); NAT rebinding gives it a fresh
//! pair. `quinn-udp` does the ancillary-data work and batches receives with `recvmmsg`.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::task::{Context, Poll};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// A client's public address: a pool socket and a source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Binding {
    /// Index of the pool socket.
    pub(crate) socket: u16,
    /// The loopback address the client sends from; unspecified for a dedicated socket
    /// (the kernel picks the source address from the route).
    pub(crate) ip: Ipv4Addr,
}

/// How clients get their addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Addressing {
    /// A few shared sockets, one 127.a.b.c source address per client: any number of
    /// clients, loopback servers only.
    Shared,
    /// One socket per client binding: any server, as many clients as file descriptors.
    Dedicated,
}

/// One pool socket.
#[derive(Debug)]
struct PoolSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
}

impl PoolSocket {
    fn bind(addr: SocketAddr, buffer: usize) -> io::Result<Self> {
        let std = std::net::UdpSocket::bind(addr)?;
        let state = UdpSocketState::new((&std).into())?;
        // The kernel may cap the size; a smaller buffer only costs drops under load.
        let _ = state.set_recv_buffer_size((&std).into(), buffer);
        let _ = state.set_send_buffer_size((&std).into(), buffer);
        let local = std.local_addr()?;
        Ok(Self {
            socket: UdpSocket::from_std(std)?,
            state,
            local,
        })
    }
}

/// The pool of sockets and the allocator of client addresses.
#[derive(Debug)]
pub(crate) struct SocketPool {
    addressing: Addressing,
    /// Closed dedicated sockets leave a hole, reused by the next binding.
    sockets: Vec<Option<PoolSocket>>,
    free: Vec<u16>,
    bind: IpAddr,
    buffer: usize,
    /// Shared: the next address to hand out, as an offset from `first`.
    next: u32,
    first: u32,
}

/// The last address handed out: 127.255.255.254.
const LAST: u32 = 0x7fff_fffe;

impl SocketPool {
    /// A pool whose sockets bind to `(bind, 0)` with `buffer` bytes of send and receive
    /// buffer each. Shared: `count` sockets now, addresses handed out from `first` upwards.
    /// Dedicated: a socket per [`SocketPool::allocate`]. Needs a tokio runtime.
    pub(crate) fn new(
        addressing: Addressing,
        count: usize,
        bind: IpAddr,
        first: Ipv4Addr,
        buffer: usize,
    ) -> io::Result<Self> {
        let shared = match addressing {
            Addressing::Shared => count.clamp(1, usize::from(u16::MAX)),
            Addressing::Dedicated => 0,
        };
        let sockets = (0..shared)
            .map(|_| PoolSocket::bind(SocketAddr::new(bind, 0), buffer).map(Some))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            addressing,
            sockets,
            free: Vec::new(),
            bind,
            buffer,
            next: 0,
            first: u32::from(first),
        })
    }

    /// A fresh public address. Shared: the next loopback address, on the sockets in turn
    /// (`None` after 127.255.255.254). Dedicated: a new socket (`None` when it cannot be
    /// opened, e.g. out of file descriptors).
    pub(crate) fn allocate(&mut self) -> Option<Binding> {
        match self.addressing {
            Addressing::Shared => {
                let ip = self.first.checked_add(self.next).filter(|&ip| ip <= LAST)?;
                let socket = u16::try_from(self.next as usize % self.sockets.len().max(1)).ok()?;
                self.next += 1;
                Some(Binding {
                    socket,
                    ip: Ipv4Addr::from(ip),
                })
            }
            Addressing::Dedicated => {
                let s = PoolSocket::bind(SocketAddr::new(self.bind, 0), self.buffer).ok()?;
                let socket = match self.free.pop() {
                    Some(k) => {
                        *self.sockets.get_mut(usize::from(k))? = Some(s);
                        k
                    }
                    None => {
                        let k = u16::try_from(self.sockets.len()).ok()?;
                        self.sockets.push(Some(s));
                        k
                    }
                };
                Some(Binding {
                    socket,
                    ip: Ipv4Addr::UNSPECIFIED,
                })
            }
        }
    }

    /// A binding no client uses any more: a dedicated socket is closed.
    pub(crate) fn release(&mut self, binding: Binding) {
        if self.addressing == Addressing::Dedicated
            && let Some(slot) = self.sockets.get_mut(usize::from(binding.socket))
            && slot.take().is_some()
        {
            self.free.push(binding.socket);
        }
    }

    /// The address the server sees for `binding` (for a dedicated socket, its local
    /// address: the source IP is the route's).
    pub(crate) fn address(&self, binding: Binding) -> SocketAddr {
        let local = self
            .socket(usize::from(binding.socket))
            .map_or(SocketAddr::new(self.bind, 0), |s| s.local);
        match self.addressing {
            Addressing::Shared => SocketAddr::new(IpAddr::V4(binding.ip), local.port()),
            Addressing::Dedicated => local,
        }
    }

    /// The binding a datagram received on socket `index` for `dst_ip` was sent to.
    pub(crate) fn binding_of(&self, index: usize, dst_ip: Option<IpAddr>) -> Option<Binding> {
        let socket = u16::try_from(index).ok()?;
        let ip = match self.addressing {
            Addressing::Shared => match dst_ip?.to_canonical() {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(_) => return None,
            },
            Addressing::Dedicated => Ipv4Addr::UNSPECIFIED,
        };
        Some(Binding { socket, ip })
    }

    fn socket(&self, index: usize) -> Option<&PoolSocket> {
        self.sockets.get(index).and_then(Option::as_ref)
    }

    /// Number of socket slots (some may be closed).
    pub(crate) fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Sends `bytes` to `destination` from `binding`, waiting while the socket's send buffer
    /// is full. Other errors are dropped datagrams, as on a real network.
    pub(crate) async fn send(
        &self,
        binding: Binding,
        destination: SocketAddr,
        bytes: &[u8],
    ) -> io::Result<()> {
        let Some(s) = self.socket(usize::from(binding.socket)) else {
            return Ok(());
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: bytes,
            segment_size: None,
            src_ip: match self.addressing {
                Addressing::Shared => Some(IpAddr::V4(binding.ip)),
                Addressing::Dedicated => None,
            },
        };
        loop {
            match s.socket.try_io(Interest::WRITABLE, || {
                s.state.try_send(UdpSockRef::from(&s.socket), &transmit)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.socket.writable().await?,
                other => return other,
            }
        }
    }

    /// Ready when any socket may have datagrams to read.
    pub(crate) fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        for s in self.sockets.iter().flatten() {
            if s.socket.poll_recv_ready(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// Reads a batch of datagrams from socket `index` without waiting; `Ok(0)` when there
    /// is nothing to read (a socket not marked readable costs no system call).
    pub(crate) fn try_recv(
        &self,
        index: usize,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let Some(s) = self.socket(index) else {
            return Ok(0);
        };
        match s.socket.try_io(Interest::READABLE, || {
            s.state.recv(UdpSockRef::from(&s.socket), bufs, meta)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    /// How many datagrams one receive buffer may hold (UDP GRO coalesces datagrams).
    pub(crate) fn gro_segments(&self) -> usize {
        let probe = match self.addressing {
            Addressing::Shared => None,
            // No socket yet: ask one.
            Addressing::Dedicated => PoolSocket::bind(SocketAddr::new(self.bind, 0), 0).ok(),
        };
        self.sockets
            .iter()
            .flatten()
            .chain(probe.as_ref())
            .map(|s| s.state.gro_segments())
            .max()
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn distinct_source_addresses_over_few_sockets() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dest = server.local_addr().unwrap();
        let mut pool = SocketPool::new(
            Addressing::Shared,
            2,
            Ipv4Addr::UNSPECIFIED.into(),
            Ipv4Addr::new(127, 9, 0, 1),
            1 << 20,
        )
        .unwrap();
        let bindings: Vec<Binding> = (0..4).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(bindings[0].ip, Ipv4Addr::new(127, 9, 0, 1));
        assert_eq!(bindings[3].ip, Ipv4Addr::new(127, 9, 0, 4));
        assert_eq!(bindings[2].socket, 0);
        for (n, b) in bindings.iter().enumerate() {
            pool.send(*b, dest, &[n as u8]).await.unwrap();
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut buf = [0u8; 8];
            let (len, from) = server.recv_from(&mut buf).await.unwrap();
            assert_eq!(len, 1);
            assert_eq!(from, pool.address(bindings[usize::from(buf[0])]));
            seen.push(from);
            // Answer: the pool learns which address it was sent to.
            server.send_to(&buf[..1], from).await.unwrap();
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 4);
        let mut got = 0;
        while got < 4 {
            std::future::poll_fn(|cx| pool.poll_readable(cx)).await;
            for k in 0..pool.len() {
                let mut storage = vec![[0u8; 1500]; 4];
                let mut bufs: Vec<IoSliceMut> =
                    storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                let mut meta = [RecvMeta::default(); 4];
                let n = pool.try_recv(k, &mut bufs, &mut meta).unwrap();
                for m in &meta[..n] {
                    let b = bindings
                        .iter()
                        .find(|b| Some(IpAddr::V4(b.ip)) == m.dst_ip)
                        .unwrap();
                    assert_eq!(usize::from(b.socket), k);
                    assert_eq!(m.addr, dest);
                    got += 1;
                }
            }
        }
    }

    #[tokio::test]
    async fn dedicated_sockets_one_per_binding() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dest = server.local_addr().unwrap();
        let mut pool = SocketPool::new(
            Addressing::Dedicated,
            16,
            Ipv4Addr::UNSPECIFIED.into(),
            Ipv4Addr::new(127, 9, 0, 1),
            1 << 16,
        )
        .unwrap();
        assert_eq!(pool.len(), 0);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert_ne!(pool.address(a).port(), pool.address(b).port());
        pool.send(b, dest, b"b").await.unwrap();
        let mut buf = [0u8; 8];
        let (_, from) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(from.port(), pool.address(b).port());
        assert_eq!(pool.binding_of(usize::from(b.socket), None), Some(b));
        // A released socket's slot is reused.
        pool.release(a);
        let c = pool.allocate().unwrap();
        assert_eq!(c.socket, a.socket);
        assert_eq!(pool.len(), 2);
    }
}
