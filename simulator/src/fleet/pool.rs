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
    /// The loopback address the client sends from.
    pub(crate) ip: Ipv4Addr,
}

/// One pool socket.
#[derive(Debug)]
struct PoolSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    port: u16,
}

/// The pool of sockets and the allocator of client addresses.
#[derive(Debug)]
pub(crate) struct SocketPool {
    sockets: Vec<PoolSocket>,
    /// The next address to hand out, as an offset from `first`.
    next: u32,
    first: u32,
}

/// The last address handed out: 127.255.255.254.
const LAST: u32 = 0x7fff_fffe;

impl SocketPool {
    /// Binds `count` sockets to `(bind, 0)` with `buffer` bytes of send and receive buffer
    /// each; addresses are handed out from `first` upwards. Needs a tokio runtime.
    pub(crate) fn bind(
        count: usize,
        bind: IpAddr,
        first: Ipv4Addr,
        buffer: usize,
    ) -> io::Result<Self> {
        let sockets = (0..count.clamp(1, usize::from(u16::MAX)))
            .map(|_| {
                let std = std::net::UdpSocket::bind(SocketAddr::new(bind, 0))?;
                let state = UdpSocketState::new((&std).into())?;
                // The kernel may cap the size; a smaller buffer only costs drops under load.
                let _ = state.set_recv_buffer_size((&std).into(), buffer);
                let _ = state.set_send_buffer_size((&std).into(), buffer);
                let port = std.local_addr()?.port();
                Ok(PoolSocket {
                    socket: UdpSocket::from_std(std)?,
                    state,
                    port,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            sockets,
            next: 0,
            first: u32::from(first),
        })
    }

    /// A fresh public address: the next loopback address, on the sockets in turn. `None`
    /// when 127.255.255.254 has been handed out.
    pub(crate) fn allocate(&mut self) -> Option<Binding> {
        let ip = self.first.checked_add(self.next).filter(|&ip| ip <= LAST)?;
        let socket = u16::try_from(self.next as usize % self.sockets.len()).ok()?;
        self.next += 1;
        Some(Binding {
            socket,
            ip: Ipv4Addr::from(ip),
        })
    }

    /// The address the server sees for `binding`.
    pub(crate) fn address(&self, binding: Binding) -> SocketAddr {
        let port = self
            .sockets
            .get(usize::from(binding.socket))
            .map_or(0, |s| s.port);
        SocketAddr::new(IpAddr::V4(binding.ip), port)
    }

    /// Number of sockets.
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
        let Some(s) = self.sockets.get(usize::from(binding.socket)) else {
            return Ok(());
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: bytes,
            segment_size: None,
            src_ip: Some(IpAddr::V4(binding.ip)),
        };
        loop {
            match s.socket.try_io(Interest::WRITABLE, || {
                s.state.send(UdpSockRef::from(&s.socket), &transmit)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.socket.writable().await?,
                other => return other,
            }
        }
    }

    /// Ready when any socket may have datagrams to read.
    pub(crate) fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        for s in &self.sockets {
            if s.socket.poll_recv_ready(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// Reads a batch of datagrams from socket `index` without waiting; `Ok(0)` when there
    /// is nothing to read.
    pub(crate) fn try_recv(
        &self,
        index: usize,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let Some(s) = self.sockets.get(index) else {
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
        self.sockets
            .iter()
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
        let mut pool = SocketPool::bind(
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
}
