//! The raw UDP baseline of `server_load`: a tokio echo server on one socket (one task, as
//! our LwM2M Server's UDP driver) and `--clients` clients (64 by default), each its own
//! socket and task, each sending a 16-byte datagram and waiting for its echo, for
//! `--seconds` (4 by default), on loopback. Prints the round trips per second: what this
//! machine's tokio and kernel allow a one-task UDP server at all (`scripts/benchmarks`
//! divides `server_load`'s reads/s by it).
//!
//! ```text
//! cargo bench -p lwm2m-server --bench udp_echo -- [--clients 64] [--seconds 4]
//! ```

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// The allocator of the `lwm2m-harness` binary, so the bench measures what `serve` runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

async fn bench(clients: usize, seconds: u64) -> Result<()> {
    let server = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = server.local_addr()?;
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = server.recv_from(&mut buf).await {
            let _ = server.send_to(buf.get(..n).unwrap_or_default(), peer).await;
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let echoes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(addr).await?;
        let (stop, echoes) = (stop.clone(), echoes.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let datagram = [0x42u8; 16];
            while !stop.load(Ordering::Relaxed) {
                if socket.send(&datagram).await.is_err() {
                    return;
                }
                // A lost datagram (full socket buffer) would stall this client: resend.
                match tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await
                {
                    Ok(Ok(_)) => {
                        echoes.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => return,
                    Err(_) => {}
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let n = echoes.load(Ordering::Relaxed);
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    println!(
        "raw UDP echo, {clients} clients: {n} round trips in {:.2} s = {:.0}/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    println!("RESULT udp_echo_per_s {:.0}", n as f64 / took.as_secs_f64());
    Ok(())
}

fn main() -> Result<()> {
    let (mut clients, mut seconds) = (64usize, 4u64);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--clients" => clients = it.next().ok_or("--clients N")?.parse()?,
            "--seconds" => seconds = it.next().ok_or("--seconds N")?.parse()?,
            // `cargo bench` passes --bench; filters do not apply here.
            _ => {}
        }
    }
    tokio::runtime::Runtime::new()?.block_on(bench(clients.max(1), seconds.max(1)))
}
