//! Thin tokio drivers of the sans-IO server and client over UDP sockets.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::client::{ClientEvent, DtlsClient};
use crate::config::{ClientConfig, ServerConfig};
use crate::keylog::SessionSecrets;
use crate::server::{DtlsServer, ServerEvent};
use crate::session::WireStats;
use crate::{CloseReason, DtlsError};

/// Receive (and send) buffer asked for on server sockets: 4 MiB. With Linux's default
/// 208 KiB, about half of a burst of 5,000 requests was dropped before the server read it.
/// The kernel caps the request at `net.core.rmem_max`.
pub const RECEIVE_BUFFER_SIZE: usize = 4 << 20;

/// Largest datagram read: the largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// Binds a non-blocking UDP socket on `addr` with [`RECEIVE_BUFFER_SIZE`] buffers, for tokio.
/// Must be called within a tokio runtime (as must [`UdpDtlsServer::bind`]).
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(RECEIVE_BUFFER_SIZE)?;
    socket.set_send_buffer_size(RECEIVE_BUFFER_SIZE)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Whether a socket error concerns one datagram rather than the socket (ICMP errors that
/// Linux reports on the next call, buffer exhaustion).
fn transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::WouldBlock
    ) || error.raw_os_error() == Some(105) // ENOBUFS
}

/// A [`DtlsServer`] on a tokio UDP socket.
///
/// One task owns it and loops on [`UdpDtlsServer::next_event`], answering with
/// [`UdpDtlsServer::send`]; `next_event` is cancel-safe, so it can sit in a `select!` with
/// the caller's own timers (e.g. the CoAP endpoint's).
#[derive(Debug)]
pub struct UdpDtlsServer {
    socket: UdpSocket,
    dtls: DtlsServer,
    buf: Box<[u8]>,
}

impl UdpDtlsServer {
    /// Binds `addr` (with [`bind_udp`]) and serves DTLS on it with `config`.
    pub fn bind(addr: SocketAddr, config: ServerConfig) -> Result<UdpDtlsServer, DtlsError> {
        Ok(UdpDtlsServer::new(
            bind_udp(addr)?,
            DtlsServer::new(config)?,
        ))
    }

    /// Serves `dtls` on an already bound socket.
    pub fn new(socket: UdpSocket, dtls: DtlsServer) -> UdpDtlsServer {
        UdpDtlsServer {
            socket,
            dtls,
            buf: vec![0; MAX_DATAGRAM].into_boxed_slice(),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Receives and handles datagrams and timers until there is an event. Cancel-safe.
    pub async fn next_event(&mut self) -> Result<ServerEvent, DtlsError> {
        loop {
            self.flush().await?;
            if let Some(event) = self.dtls.poll_event() {
                return Ok(event);
            }
            tokio::select! {
                received = self.socket.recv_from(&mut self.buf) => match received {
                    Ok((len, peer)) => {
                        let datagram = self.buf.get(..len).unwrap_or_default();
                        self.dtls.handle_datagram(Instant::now(), peer, datagram);
                    }
                    Err(e) if transient(&e) => {}
                    Err(e) => return Err(e.into()),
                },
                () = sleep_until(self.dtls.poll_timeout()) => self.dtls.handle_timeout(Instant::now()),
            }
        }
    }

    /// Sends `payload` to `peer`'s established session.
    pub async fn send(&mut self, peer: SocketAddr, payload: &[u8]) -> Result<(), DtlsError> {
        self.dtls.send(Instant::now(), peer, payload)?;
        self.flush().await
    }

    /// Closes the session with `peer`; `false` if there was none.
    pub async fn close(&mut self, peer: SocketAddr) -> Result<bool, DtlsError> {
        let closed = self.dtls.close(Instant::now(), peer);
        self.flush().await?;
        Ok(closed)
    }

    /// The sans-IO server, for sessions, counters and secrets.
    pub fn dtls(&self) -> &DtlsServer {
        &self.dtls
    }

    async fn flush(&mut self) -> Result<(), DtlsError> {
        while let Some(transmit) = self.dtls.poll_transmit() {
            match self.socket.send_to(&transmit.bytes, transmit.peer).await {
                Ok(_) => {}
                Err(e) if transient(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// A [`DtlsClient`] on its own tokio UDP socket.
#[derive(Debug)]
pub struct UdpDtlsClient {
    socket: UdpSocket,
    dtls: DtlsClient,
    buf: Box<[u8]>,
}

impl UdpDtlsClient {
    /// Binds an ephemeral port and completes a handshake with `server`.
    pub async fn connect(
        server: SocketAddr,
        config: &ClientConfig,
    ) -> Result<UdpDtlsClient, DtlsError> {
        let any = match server.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
        UdpDtlsClient::connect_with(socket, server, config).await
    }

    /// Completes a handshake with `server` from `socket` (e.g. one bound to a chosen port,
    /// or the socket of a previous session: [`UdpDtlsClient::into_socket`]).
    pub async fn connect_with(
        socket: UdpSocket,
        server: SocketAddr,
        config: &ClientConfig,
    ) -> Result<UdpDtlsClient, DtlsError> {
        let dtls = DtlsClient::connect(Instant::now(), server, config)?;
        let mut client = UdpDtlsClient {
            socket,
            dtls,
            buf: vec![0; MAX_DATAGRAM].into_boxed_slice(),
        };
        loop {
            match client.next_event().await? {
                ClientEvent::Established => return Ok(client),
                ClientEvent::HandshakeFailed(reason) => {
                    return Err(DtlsError::Handshake {
                        peer: server,
                        reason,
                    });
                }
                ClientEvent::Closed(reason) => return Err(closed(server, &reason)),
                ClientEvent::Datagram(_) => {}
            }
        }
    }

    /// Sends `payload` as one record.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), DtlsError> {
        self.dtls.send(Instant::now(), payload)?;
        self.flush().await
    }

    /// Receives the next application datagram. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Vec<u8>, DtlsError> {
        loop {
            match self.next_event().await? {
                ClientEvent::Datagram(payload) => return Ok(payload),
                ClientEvent::Closed(reason) => return Err(closed(self.dtls.server(), &reason)),
                ClientEvent::HandshakeFailed(reason) => {
                    return Err(DtlsError::Handshake {
                        peer: self.dtls.server(),
                        reason,
                    });
                }
                ClientEvent::Established => {}
            }
        }
    }

    /// Sends close_notify.
    pub async fn close(&mut self) -> Result<(), DtlsError> {
        self.dtls.close(Instant::now());
        self.flush().await
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Wire accounting of the session so far.
    pub fn stats(&self) -> &WireStats {
        self.dtls.stats()
    }

    /// The key log secrets of the session.
    pub fn secrets(&self) -> Option<SessionSecrets> {
        self.dtls.secrets()
    }

    /// The sans-IO client.
    pub fn dtls(&self) -> &DtlsClient {
        &self.dtls
    }

    /// Gives the socket back, e.g. to reconnect from the same port.
    pub fn into_socket(self) -> UdpSocket {
        self.socket
    }

    async fn next_event(&mut self) -> Result<ClientEvent, DtlsError> {
        loop {
            self.flush().await?;
            if let Some(event) = self.dtls.poll_event() {
                return Ok(event);
            }
            if self.dtls.is_finished() {
                return Err(closed(self.dtls.server(), &CloseReason::LocalClose));
            }
            tokio::select! {
                received = self.socket.recv_from(&mut self.buf) => match received {
                    Ok((len, from)) if from == self.dtls.server() => {
                        let datagram = self.buf.get(..len).unwrap_or_default();
                        self.dtls.handle_datagram(Instant::now(), datagram);
                    }
                    Ok(_) => {}
                    Err(e) if transient(&e) => {}
                    Err(e) => return Err(e.into()),
                },
                () = sleep_until(self.dtls.poll_timeout()) => self.dtls.handle_timeout(Instant::now()),
            }
        }
    }

    async fn flush(&mut self) -> Result<(), DtlsError> {
        let server = self.dtls.server();
        while let Some(bytes) = self.dtls.poll_transmit() {
            match self.socket.send_to(&bytes, server).await {
                Ok(_) => {}
                Err(e) if transient(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

fn closed(peer: SocketAddr, reason: &CloseReason) -> DtlsError {
    DtlsError::Closed {
        peer,
        reason: format!("{reason:?}"),
    }
}
