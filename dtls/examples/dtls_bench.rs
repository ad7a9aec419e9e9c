//! DTLS throughput and memory on loopback.
//!
//! ```text
//! cargo run --release -p lwm2m-dtls --example dtls_bench -- load [clients] [seconds]
//! cargo run --release -p lwm2m-dtls --example dtls_bench -- memory client|server [sessions]
//! ```
//!
//! `load` (defaults 2000 clients, 5 s): a UdpDtlsServer on one thread echoes; the clients,
//! each a UdpDtlsClient with its own socket, run as tasks on a second thread. It reports new
//! PSK handshakes per second (all clients connecting, at most 256 handshakes in flight) and
//! then request/response round trips per second (each client sends a 40-byte record and waits
//! for the echo, in a loop).
//!
//! `memory` (default 10,000 sessions): sans-IO sessions handshaking in memory; the resident
//! set growth divided by the number of sessions kept, for client sessions (the server side is
//! closed after each handshake) or for server sessions (the clients are dropped).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lwm2m_dtls::{
    ClientConfig, DtlsClient, DtlsServer, ServerConfig, ServerEvent, UdpDtlsClient, UdpDtlsServer,
};
use tokio::sync::Semaphore;

const IDENTITY: &[u8] = b"bench-device";
const KEY: &[u8] = b"bench-secret-key";

fn server_config() -> ServerConfig {
    ServerConfig {
        psk_store: Some(Arc::new(|id: &[u8]| (id == IDENTITY).then(|| KEY.to_vec()))),
        ..ServerConfig::default()
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str).unwrap_or("load") {
        "load" => {
            let clients = args.get(1).map_or(Ok(2000), |s| s.parse())?;
            let seconds = args.get(2).map_or(Ok(5), |s| s.parse())?;
            load(clients, Duration::from_secs(seconds))
        }
        "memory" => {
            let side = args.get(1).map_or("client", String::as_str);
            let sessions = args.get(2).map_or(Ok(10_000), |s| s.parse())?;
            memory(side == "server", sessions)
        }
        other => anyhow::bail!("unknown mode {other}: load | memory"),
    }
}

fn load(clients: usize, duration: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut server = {
        let _context = runtime.enter();
        UdpDtlsServer::bind("127.0.0.1:0".parse()?, server_config())?
    };
    let addr = server.local_addr()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            loop {
                if let ServerEvent::Datagram { peer, payload, .. } = server.next_event().await? {
                    server.send(peer, &payload).await?;
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), lwm2m_dtls::DtlsError>(())
        })
    });

    let clients_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    clients_runtime.block_on(async move {
        let config = ClientConfig::psk(IDENTITY, KEY)?;
        let permits = Arc::new(Semaphore::new(256));
        let start = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (config, permits) = (config.clone(), permits.clone());
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await?;
                    Ok::<_, anyhow::Error>(UdpDtlsClient::connect(addr, &config).await?)
                })
            })
            .collect();
        let mut connected = Vec::with_capacity(clients);
        for task in tasks {
            connected.push(task.await??);
        }
        let elapsed = start.elapsed();
        let handshake_bytes: u64 = connected.iter().map(|c| c.stats().handshake_bytes()).sum();
        println!(
            "{clients} PSK handshakes in {elapsed:.2?}: {:.0} handshakes/s; {} bytes of handshake records per session",
            clients as f64 / elapsed.as_secs_f64(),
            handshake_bytes / clients as u64
        );

        let round_trips = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let tasks: Vec<_> = connected
            .into_iter()
            .map(|mut client| {
                let (round_trips, stop) = (round_trips.clone(), stop.clone());
                tokio::spawn(async move {
                    let request = [0x42u8; 40];
                    while !stop.load(Ordering::Relaxed) {
                        client.send(&request).await?;
                        client.recv().await?;
                        round_trips.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, anyhow::Error>(client)
                })
            })
            .collect();
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        let done = round_trips.load(Ordering::Relaxed);
        let elapsed = start.elapsed();
        let mut overhead = 0;
        let mut payload = 0;
        for task in tasks {
            let client = task.await??;
            overhead += client.stats().record_overhead();
            payload += client.stats().payload_bytes();
        }
        println!(
            "{clients} clients, 40-byte echo: {done} round trips in {elapsed:.2?}: {:.0} round trips/s = {:.0} records/s; record overhead {:.1}% of application bytes",
            done as f64 / elapsed.as_secs_f64(),
            2.0 * done as f64 / elapsed.as_secs_f64(),
            100.0 * overhead as f64 / (overhead + payload) as f64
        );
        Ok(())
    })
}

/// Resident set size in bytes, from /proc/self/statm.
fn rss() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).unwrap_or("0").parse()?;
    Ok(pages * 4096)
}

fn memory(keep_server_sessions: bool, sessions: usize) -> anyhow::Result<()> {
    let server_addr: SocketAddr = "10.0.0.1:5684".parse()?;
    let mut server = DtlsServer::new(server_config())?;
    let config = ClientConfig::psk(IDENTITY, KEY)?;
    let now = Instant::now();
    let mut kept = Vec::new();
    let before = rss()?;
    for i in 0..sessions {
        let peer = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 40000 + (i >> 16) as u16));
        let mut client = DtlsClient::connect(now, server_addr, &config)?;
        while !client.is_established() {
            let mut moved = false;
            while let Some(bytes) = client.poll_transmit() {
                server.handle_datagram(now, peer, &bytes);
                moved = true;
            }
            while let Some(transmit) = server.poll_transmit() {
                client.handle_datagram(now, &transmit.bytes);
                moved = true;
            }
            anyhow::ensure!(moved, "handshake {i} stalled");
        }
        while server.poll_event().is_some() {}
        if keep_server_sessions {
            drop(client);
        } else {
            server.close(now, peer);
            while server.poll_transmit().is_some() {}
            while server.poll_event().is_some() {}
            kept.push(client);
        }
    }
    let grown = rss()?.saturating_sub(before);
    let side = if keep_server_sessions {
        "server"
    } else {
        "client"
    };
    println!(
        "{sessions} established {side} sessions: resident set grew {:.1} MiB, {:.1} kB per session",
        grown as f64 / (1 << 20) as f64,
        grown as f64 / sessions as f64 / 1000.0
    );
    println!(
        "(server sessions alive: {}, client sessions alive: {})",
        server.session_count(),
        kept.len()
    );
    Ok(())
}
