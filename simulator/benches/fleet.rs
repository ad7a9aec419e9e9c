//! Fleet at scale: N simulated clients (50,000 by default) register with our LwM2M Server
//! machine on loopback, then keep updating. Prints the time to register all, the Update
//! rate held, resident memory per client, and p50/p99 of Register and Update.
//!
//! ```text
//! cargo bench -p lwm2m-simulator --bench fleet
//! FLEET_CLIENTS=10000 FLEET_RAMP=5000 FLEET_LIFETIME=20 FLEET_HOLD=36 cargo bench -p lwm2m-simulator --bench fleet
//! ```
//!
//! Both sides run in this process on a two-worker tokio runtime: the fleet is one task, the
//! server one task on one socket; the RSS figures include the server's registrations. To
//! measure the fleet alone, run the server in another process:
//!
//! ```text
//! FLEET_SERVE_ONLY=127.0.0.1:5690 cargo bench -p lwm2m-simulator --bench fleet &
//! FLEET_SERVER=127.0.0.1:5690 cargo bench -p lwm2m-simulator --bench fleet
//! ```
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{Lwm2mServer, ServerConfig, ServerEvent};
use lwm2m_simulator::fleet::{Fleet, FleetConfig, ProfileClients, Targets};
use lwm2m_simulator::network::NetworkModel;
use lwm2m_simulator::profile::Profile;
use lwm2m_simulator::quirks::QuirkPacks;
use tokio::net::UdpSocket;

/// The allocator of the `lwm2m-harness` binary, so the bench measures what `serve` runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size in kB (`VmRSS` of /proc/self/status).
fn vm_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn profile(lifetime: u32) -> Profile {
    let yaml = format!(
        "\
name: bench
lwm2m_version: \"1.1\"
binding: U
lifetime: {lifetime}s
endpoint_prefix: bench-
preferred_format: senml-cbor
supported_formats: [senml-cbor, tlv, text, opaque]
objects:
  0:
    instances:
      0: {{ 0: coap://localhost:5683, 1: false, 2: 3, 3: \"\", 4: \"\", 5: \"\", 10: 1 }}
  1:
    instances:
      0: {{ 0: 1, 1: {lifetime}, 6: false, 7: U }}
  3:
    instances:
      0: {{ 0: Bench, 1: B-1, 11: [0], 16: U }}
"
    );
    Profile::from_yaml("bench.yaml", &yaml, &QuirkPacks::new()).unwrap()
}

/// Server-side counts.
#[derive(Default)]
struct ServerCounts {
    registered: AtomicU64,
    updated: AtomicU64,
}

/// The LwM2M Server machine on one loopback socket, driven by one task.
async fn serve(registry: Arc<Registry>, counts: Arc<ServerCounts>, bind: SocketAddr) -> SocketAddr {
    let std = std::net::UdpSocket::bind(bind).unwrap();
    std.set_nonblocking(true).unwrap();
    // A burst of thousands of requests overflows the default 208 KiB receive buffer.
    let state = quinn_udp::UdpSocketState::new((&std).into()).unwrap();
    state.set_recv_buffer_size((&std).into(), 8 << 20).unwrap();
    state.set_send_buffer_size((&std).into(), 8 << 20).unwrap();
    let socket = UdpSocket::from_std(std).unwrap();
    let addr = socket.local_addr().unwrap();
    let mut config = ServerConfig::default();
    config.coap.dedup_capacity = 1 << 20;
    // Tables sized for the fleet from the start: no Register waits on a rehash.
    let clients: usize = env("FLEET_CLIENTS", 50_000);
    config.limits.max_registrations = config.limits.max_registrations.max(clients);
    config.registration_capacity = clients;
    let mut server = Lwm2mServer::new(config, registry);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let deadline = server.poll_timeout();
            tokio::select! {
                r = socket.recv_from(&mut buf) => {
                    let Ok((n, peer)) = r else { continue };
                    let now = Instant::now();
                    server.handle_datagram(now, peer, &buf[..n]);
                    // Drain what else is queued before answering.
                    while let Ok((n, peer)) = socket.try_recv_from(&mut buf) {
                        server.handle_datagram(now, peer, &buf[..n]);
                    }
                }
                () = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => server.handle_timeout(Instant::now()),
            }
            while let Some(t) = server.poll_transmit() {
                let _ = socket.send_to(&t.bytes, t.peer).await;
            }
            while let Some(e) = server.poll_event() {
                match e {
                    ServerEvent::Registered { .. } => {
                        counts.registered.fetch_add(1, Ordering::Relaxed);
                    }
                    ServerEvent::Updated { .. } => {
                        counts.updated.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    });
    addr
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".into(),
        |d| format!("{:.2} ms", d.as_secs_f64() * 1e3),
    )
}

fn main() {
    let clients: usize = env("FLEET_CLIENTS", 50_000);
    let ramp: f64 = env("FLEET_RAMP", 20_000.0);
    let lifetime: u32 = env("FLEET_LIFETIME", 20);
    // Updates go out `lifetime - margin` after the last one (the profile builder's margin).
    let margin = (lifetime / 10).clamp(1, 60);
    let period = u64::from(lifetime.saturating_sub(margin).max(1));
    // By default two whole Update periods, so that the average rate is the steady one.
    let hold: u64 = env("FLEET_HOLD", 2 * period);
    let sockets: usize = env("FLEET_SOCKETS", 16);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let registry = Arc::new(Registry::embedded());
        let counts = Arc::new(ServerCounts::default());
        if let Some(bind) = std::env::var("FLEET_SERVE_ONLY").ok().and_then(|a| a.parse().ok()) {
            let addr = serve(registry, counts.clone(), bind).await;
            println!("server only, on {addr}");
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                println!(
                    "  server: {} registrations, {} updates, RSS {} MiB",
                    counts.registered.load(Ordering::Relaxed),
                    counts.updated.load(Ordering::Relaxed),
                    vm_rss_kb() / 1024
                );
            }
        }
        let external: Option<SocketAddr> =
            std::env::var("FLEET_SERVER").ok().and_then(|a| a.parse().ok());
        let server = match external {
            Some(addr) => addr,
            None => serve(registry.clone(), counts.clone(), "127.0.0.1:0".parse().unwrap()).await,
        };
        let rss_start = vm_rss_kb();

        let make = ProfileClients::new(
            profile(lifetime),
            &registry,
            NetworkModel::default(),
            Targets {
                server: Some(server),
                bootstrap: None,
            },
        )
        .unwrap();
        let mut fleet = Fleet::new(FleetConfig {
            seed: 1,
            ramp: Some(ramp),
            sockets,
            ..FleetConfig::default()
        });
        for n in 0..clients {
            fleet.add("bench", make.spec(n as u64, 1));
        }
        let rss_built = vm_rss_kb();
        println!(
            "fleet: {clients} clients, ramp {ramp}/s, lifetime {lifetime} s, {sockets} sockets, server {server}"
        );

        let start = Instant::now();
        let handle = fleet.start().unwrap();
        // Polled every 10 ms for the time to register all, printed every second.
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        let limit = start + Duration::from_secs(600);
        let mut printed = start;
        loop {
            poll.tick().await;
            let c = handle.total();
            let done = c.clients_registered as usize >= clients || Instant::now() > limit;
            if done || printed.elapsed() >= Duration::from_secs(1) {
                printed = Instant::now();
                println!(
                    "  t={:>5.1}s started={} registered={} failures={} out={} dgrams",
                    start.elapsed().as_secs_f64(),
                    c.started,
                    c.registered,
                    c.failures,
                    c.datagrams_out
                );
            }
            if done {
                break;
            }
        }
        let registered_in = start.elapsed();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let rss_registered = vm_rss_kb();
        let at_registered = handle.total();

        let u0 = handle.total().updates;
        let s0 = counts.updated.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let mut peak = 0;
        let mut last = u0;
        for _ in 0..hold {
            tick.tick().await;
            let c = handle.total();
            peak = peak.max(c.updates - last);
            last = c.updates;
            println!(
                "  hold t={:>5.1}s registered={} updates={} failures={}",
                t0.elapsed().as_secs_f64(),
                c.registered,
                c.updates - u0,
                c.failures
            );
        }
        let held = t0.elapsed().as_secs_f64();
        let c = handle.total();
        let updates_per_s = (c.updates - u0) as f64 / held;
        let server_updates_per_s = (counts.updated.load(Ordering::Relaxed) - s0) as f64 / held;
        let rss_end = vm_rss_kb();
        let l = handle.report().latencies();
        let expected = clients as f64 / period as f64;

        println!("results:");
        println!(
            "  registered {} of {clients} in {:.2} s ({:.0} registrations/s; ramp {ramp}/s)",
            at_registered.clients_registered,
            registered_in.as_secs_f64(),
            at_registered.clients_registered as f64 / registered_in.as_secs_f64()
        );
        println!(
            "  updates held: {updates_per_s:.0}/s at the clients, {server_updates_per_s:.0}/s at the server over {held:.0} s (expected {expected:.0}/s on average); busiest second {peak}/s"
        );
        println!(
            "  RSS: start {} MiB, fleet built {} MiB, all registered {} MiB, end {} MiB",
            rss_start / 1024,
            rss_built / 1024,
            rss_registered / 1024,
            rss_end / 1024
        );
        let per = |kb: u64| kb.saturating_sub(rss_start) as f64 * 1024.0 / clients as f64;
        println!(
            "  RSS per client: {:.0} B built, {:.0} B registered, {:.0} B at end ({})",
            per(rss_built),
            per(rss_registered),
            per(rss_end),
            if external.is_some() { "fleet only" } else { "fleet + server" }
        );
        println!(
            "  Register p50 {} p99 {} (n={}); Update p50 {} p99 {} (n={})",
            ms(l.register_quantile(0.5)),
            ms(l.register_quantile(0.99)),
            l.register.len(),
            ms(l.update_quantile(0.5)),
            ms(l.update_quantile(0.99)),
            l.update.len()
        );
        println!(
            "  failures {} (failed now {}), server registrations {}",
            c.failures,
            c.failed,
            counts.registered.load(Ordering::Relaxed)
        );
        let report = handle.stop(Duration::from_secs(30)).await.unwrap();
        println!(
            "  stopped: {} de-registrations",
            report.total().deregistrations
        );
    });
}
