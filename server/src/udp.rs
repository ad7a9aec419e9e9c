//! Batched UDP sends for the server's driver tasks: the datagrams of one flush leave in
//! `sendmmsg` calls (rustix's safe wrapper, Linux) instead of one `sendto` each.

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use lwm2m_proto::coap::Transmit;

use rustix::net::addr::SocketAddrArg;
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams handed to the kernel in one `sendmmsg` call at most (its own cap is 1024).
const SEND_BATCH: usize = 64;

/// Sends every datagram of `datagrams` from `socket`, in order,
/// waiting while the send buffer is full. A datagram the kernel refuses (e.g. no route)
/// is dropped, as `send_to` would; `on_error` hears of it.
pub(crate) async fn send_all(
    socket: &UdpSocket,
    datagrams: &[Transmit],
    mut on_error: impl FnMut(SocketAddr, &io::Error),
) {
    let mut rest = datagrams;
    while !rest.is_empty() {
        let chunk = rest.get(..rest.len().min(SEND_BATCH)).unwrap_or(rest);
        match socket.try_io(Interest::WRITABLE, || send_batch(socket, chunk)) {
            Ok(sent) => rest = rest.get(sent.max(1)..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = socket.writable().await {
                    tracing::debug!("UDP send: {e}");
                    return;
                }
            }
            Err(e) => {
                // The error concerns the first datagram of the call: it is dropped.
                if let Some(t) = rest.first() {
                    on_error(t.peer, &e);
                }
                rest = rest.get(1..).unwrap_or_default();
            }
        }
    }
}

/// One `sendmmsg` call for `chunk`: how many datagrams left.
fn send_batch(socket: &UdpSocket, chunk: &[Transmit]) -> io::Result<usize> {
    if let [Transmit { peer, bytes }] = chunk {
        // One datagram: the plain call.
        return rustix::net::sendto(socket, bytes, SendFlags::empty(), peer)
            .map(|_| 1)
            .map_err(io::Error::from);
    }
    let addresses: Vec<SocketAddrAny> = chunk.iter().map(|t| t.peer.as_any()).collect();
    let slices: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|t| [IoSlice::new(&t.bytes)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = chunk
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut messages: Vec<MMsgHdr<'_>> = addresses
        .iter()
        .zip(&slices)
        .zip(controls.iter_mut())
        .map(|((address, slice), control)| MMsgHdr::new_with_addr(address, slice, control))
        .collect();
    rustix::net::sendmmsg(socket, &mut messages, SendFlags::empty()).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_reaches_every_destination_in_order() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (pa, pb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // More than one call's worth, alternating destinations, sizes 1..=150.
        let datagrams: Vec<Transmit> = (0..150u8)
            .map(|i| Transmit {
                peer: if i % 2 == 0 { pa } else { pb },
                bytes: vec![i; usize::from(i) + 1],
            })
            .collect();
        let mut errors = 0;
        send_all(&sender, &datagrams, |_, _| errors += 1).await;
        assert_eq!(errors, 0);
        let mut buf = [0u8; 256];
        for (socket, parity) in [(&a, 0u8), (&b, 1)] {
            for i in (0..150u8).filter(|i| i % 2 == parity) {
                let (n, from) = socket.recv_from(&mut buf).await.unwrap();
                assert_eq!(from, sender.local_addr().unwrap());
                assert_eq!(&buf[..n], &vec![i; usize::from(i) + 1][..]);
            }
        }
    }

    #[tokio::test]
    async fn a_refused_datagram_is_dropped_and_the_rest_leave() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let pa = a.local_addr().unwrap();
        // An IPv6 destination from an IPv4 socket: refused by the kernel.
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let datagrams: Vec<Transmit> = [(v6, 0u8), (pa, 1), (v6, 2), (pa, 3)]
            .into_iter()
            .map(|(peer, b)| Transmit {
                peer,
                bytes: vec![b],
            })
            .collect();
        let mut refused = Vec::new();
        send_all(&sender, &datagrams, |peer, _| refused.push(peer)).await;
        assert_eq!(refused, vec![v6, v6]);
        let mut buf = [0u8; 8];
        for expected in [1u8, 3] {
            let (n, _) = a.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &[expected]);
        }
    }
}
