//! dtls 0.17 (async) probe: PSK handshakes/s and records/s over loopback UDP.
use dtls::cipher_suite::CipherSuiteId;
use dtls::config::Config;
use dtls::conn::DTLSConn;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use webrtc_util::Conn;

fn cfg(client: bool) -> Config {
    Config {
        cipher_suites: vec![CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8],
        psk: Some(Arc::new(|_: &[u8]| {
            Box::pin(async { Ok(b"secretkey0123456".to_vec()) })
        })),
        psk_identity_hint: if client {
            Some(b"probe".to_vec())
        } else {
            None
        },
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let t0 = Instant::now();
    let mut last = None;
    for _ in 0..n {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        a.connect(b.local_addr().unwrap()).await.unwrap();
        b.connect(a.local_addr().unwrap()).await.unwrap();
        let a: Arc<dyn Conn + Send + Sync> = Arc::new(a);
        let b: Arc<dyn Conn + Send + Sync> = Arc::new(b);
        let (c, s) = tokio::join!(
            DTLSConn::new(a, cfg(true), true, None),
            DTLSConn::new(b, cfg(false), false, None)
        );
        last = Some((c.unwrap(), s.unwrap()));
    }
    let el = t0.elapsed();
    println!(
        "dtls 0.17: {n} sequential PSK handshakes in {el:?} = {:.0}/s",
        n as f64 / el.as_secs_f64()
    );
    let (c, s) = last.unwrap();
    let s = Arc::new(s);
    let s2 = s.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let Ok(n) = s2.read(&mut buf, None).await else {
                return;
            };
            s2.write(&buf[..n], None).await.unwrap();
        }
    });
    let m = 20000;
    let payload = [0x42u8; 100];
    let mut buf = [0u8; 2048];
    let t0 = Instant::now();
    for _ in 0..m {
        c.write(&payload, None).await.unwrap();
        c.read(&mut buf, None).await.unwrap();
    }
    let el = t0.elapsed();
    println!(
        "dtls 0.17: {m} request/response record pairs (100 B) in {el:?} = {:.0} round trips/s",
        m as f64 / el.as_secs_f64()
    );
}
