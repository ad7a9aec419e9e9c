//! rtc-dtls (sans-IO) probe: PSK handshakes/s and records/s over loopback UDP.
use bytes::BytesMut;
use rtc_dtls::cipher_suite::CipherSuiteId;
use rtc_dtls::config::{ConfigBuilder, HandshakeConfig};
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cfg(client: bool) -> Arc<HandshakeConfig> {
    let p = rtc_dtls::crypto_provider::default_provider().unwrap();
    let mut b = ConfigBuilder::default()
        .with_crypto_provider(p)
        .with_cipher_suites(vec![CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8])
        .with_psk(Some(Arc::new(
            |_id: &[u8]| Ok(b"secretkey0123456".to_vec()),
        )));
    if client {
        b = b.with_psk_identity_hint(Some(b"probe".to_vec()));
    }
    Arc::new(b.build(client, None).unwrap())
}

fn pump(ep: &mut Endpoint, sock: &UdpSocket) {
    while let Some(t) = ep.poll_transmit() {
        sock.send_to(&t.message, t.transport.peer_addr).unwrap();
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let server_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server_addr = server_sock.local_addr().unwrap();
    let scfg = cfg(false);
    std::thread::spawn(move || {
        // one Endpoint per peer so that sessions can be dropped independently
        let mut eps: std::collections::HashMap<SocketAddr, Endpoint> = Default::default();
        let mut buf = [0u8; 2048];
        loop {
            let (len, peer) = server_sock.recv_from(&mut buf).unwrap();
            if fresh_hello(&buf[..len]) {
                eps.remove(&peer);
            }
            let ep = eps
                .entry(peer)
                .or_insert_with(|| Endpoint::new(server_addr, shared_udp(), Some(scfg.clone())));
            let now = Instant::now();
            match ep.read(now, peer, None, BytesMut::from(&buf[..len])) {
                Ok(evs) => {
                    for e in evs {
                        if let EndpointEvent::ApplicationData(d) = e {
                            ep.write(now, peer, &d).unwrap();
                        }
                    }
                }
                Err(e) => eprintln!("server err {e}"),
            }
            let mut k = 0;
            while let Some(t) = ep.poll_transmit() {
                k += 1;
                server_sock
                    .send_to(&t.message, t.transport.peer_addr)
                    .unwrap();
            }
            let _ = k;
        }
    });
    let ccfg = cfg(true);
    // handshakes, sequential
    let t0 = Instant::now();
    let mut buf = [0u8; 2048];
    let mut bytes = 0usize;
    let mut dgrams = 0usize;
    let mut last = None;
    for _ in 0..n {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let local = sock.local_addr().unwrap();
        let mut ep = Endpoint::new(local, shared_udp(), None);
        ep.connect(Instant::now(), server_addr, ccfg.clone(), None)
            .unwrap();
        while let Some(t) = ep.poll_transmit() {
            bytes += t.message.len();
            dgrams += 1;
            sock.send_to(&t.message, server_addr).unwrap();
        }
        'hs: loop {
            let (len, _) = sock.recv_from(&mut buf).unwrap();
            bytes += len;
            dgrams += 1;
            let evs = ep
                .read(
                    Instant::now(),
                    server_addr,
                    None,
                    BytesMut::from(&buf[..len]),
                )
                .unwrap();
            while let Some(t) = ep.poll_transmit() {
                bytes += t.message.len();
                dgrams += 1;
                sock.send_to(&t.message, server_addr).unwrap();
            }
            for e in evs {
                if matches!(e, EndpointEvent::HandshakeComplete) {
                    break 'hs;
                }
            }
        }
        last = Some((sock, ep));
    }
    let el = t0.elapsed();
    println!(
        "rtc-dtls: {n} sequential PSK handshakes in {el:?} = {:.0}/s; {} bytes in {} datagrams per handshake",
        n as f64 / el.as_secs_f64(),
        bytes / n,
        dgrams / n
    );
    let (sock, mut ep) = last.unwrap();
    let m = 20000;
    let payload = [0x42u8; 100];
    let t0 = Instant::now();
    for _ in 0..m {
        ep.write(Instant::now(), server_addr, &payload).unwrap();
        pump(&mut ep, &sock);
        loop {
            let (len, _) = sock.recv_from(&mut buf).unwrap();
            let evs = ep
                .read(
                    Instant::now(),
                    server_addr,
                    None,
                    BytesMut::from(&buf[..len]),
                )
                .unwrap();
            if evs
                .iter()
                .any(|e| matches!(e, EndpointEvent::ApplicationData(_)))
            {
                break;
            }
        }
    }
    let el = t0.elapsed();
    println!(
        "rtc-dtls: {m} request/response record pairs (100 B) in {el:?} = {:.0} round trips/s",
        m as f64 / el.as_secs_f64()
    );
}

fn shared_udp() -> rtc_shared::TransportProtocol {
    rtc_shared::TransportProtocol::UDP
}

fn fresh_hello(d: &[u8]) -> bool {
    if d.len() < 13 + 12 + 35 || d[0] != 22 || d[3] != 0 || d[4] != 0 || d[13] != 1 {
        return false;
    }
    let sid = d[13 + 12 + 34] as usize;
    d.get(13 + 12 + 35 + sid) == Some(&0)
}
