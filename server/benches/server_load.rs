//! Load benchmark of the LwM2M Server over loopback (NoSec): registrations/s, updates/s and
//! reads/s with thousands of simulated clients, with p50/p99 latencies.
//!
//! ```text
//! cargo bench -p lwm2m-server --bench server_load -- [--clients 2000] [--in-flight 200] [--reads 5]
//! ```
//!
//! The clients are a simulated fleet (`lwm2m_simulator::fleet`: every client machine in one
//! task, on a small pool of sockets, each client from its own loopback address), as in
//! `dtls_load`: the bench spends its CPU on the server, not on a task and a socket per
//! client.
//!
//! Phases: every client starts at once and registers (rate = clients / time until the last
//! 2.01; latency per client from the first transmission of its Register to its 2.01), then
//! every client sends an Update (until the last 2.04), then the server reads `/3/0/0` from
//! every client `--reads` times (`ServerHandle::request` until its outcome) from
//! `--in-flight` tasks, each reading one client after another. Clients and server share
//! the machine's cores.

mod common;

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwm2m_proto::registry::Registry;
use lwm2m_server::{ServerHandle, ServerOptions, start_server};
use lwm2m_simulator::fleet::{Fleet, FleetConfig, FleetHandle, ProfileClients, Selector, Targets};
use lwm2m_simulator::network::NetworkModel;
use lwm2m_simulator::profile::Profile;
use lwm2m_simulator::quirks::QuirkPacks;

/// The allocator of the `lwm2m-harness` binary, so the bench measures what `serve` runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// The clients: LwM2M 1.1 over NoSec, Server and Device objects.
const PROFILE: &str = "\
name: server-bench
lwm2m_version: \"1.1\"
lifetime: 1h
endpoint_prefix: bench-
preferred_format: tlv
supported_formats: [tlv, text, senml-cbor]
objects:
  0:
    instances:
      0: { 0: coap://localhost:5683, 1: false, 2: 3, 3: \"\", 4: \"\", 5: \"\", 10: 1 }
  1:
    instances:
      0: { 0: 1, 1: 3600, 6: false, 7: U }
  3:
    instances:
      0: { 0: ACME, 1: Bench, 14: \"+01\" }
";

/// Settings from the command line.
struct Args {
    clients: usize,
    in_flight: usize,
    reads: usize,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            clients: 2_000,
            in_flight: 200,
            reads: 5,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let mut number = |name: &str| -> Result<usize> {
                let v = it.next().ok_or(format!("{name} needs a number"))?;
                Ok(v.parse().map_err(|e| format!("{name} {v}: {e}"))?)
            };
            match a.as_str() {
                "--clients" => args.clients = number("--clients")?.max(1),
                "--in-flight" => args.in_flight = number("--in-flight")?.max(1),
                "--reads" => args.reads = number("--reads")?,
                // `cargo bench` passes --bench; filters do not apply here.
                _ => {}
            }
        }
        Ok(args)
    }
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

fn line(name: &str, n: usize, took: Duration, p50: f64, p99: f64) {
    println!(
        "{name:<14} {n:>6} in {:>6.2} s = {:>8.0}/s   p50 {p50:>7.2} ms   p99 {p99:>7.2} ms",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
    );
}

/// Polls `done` every 2 ms until it holds, for at most 120 s.
async fn until(what: &str, fleet: &FleetHandle, done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not done in 120 s: {:?}", fleet.total()).into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn bench(args: Args) -> Result<()> {
    let registry = Arc::new(Registry::embedded());
    let server: ServerHandle =
        start_server(ServerOptions::new("127.0.0.1:0".parse()?, registry.clone()))?;
    let addr = server.local_addr();
    println!(
        "LwM2M Server on {addr}: {} fleet clients (NoSec) in this process, {} reads in flight",
        args.clients, args.in_flight
    );
    let targets = Targets {
        server: Some(addr),
        bootstrap: None,
    };
    let profile = Profile::from_yaml("server-bench", PROFILE, &QuirkPacks::new())?;
    let make = ProfileClients::new(profile, &registry, NetworkModel::default(), targets)?;
    let mut fleet = Fleet::new(FleetConfig::default());
    for n in 0..args.clients as u64 {
        fleet.add("server-bench", make.spec(n, 1));
    }

    // Registrations: every client at once.
    let started = Instant::now();
    let fleet = fleet.start()?;
    let clients = args.clients as u64;
    until("registrations", &fleet, || {
        fleet.total().clients_registered >= clients
    })
    .await?;
    let registered = started.elapsed();
    // The fleet counts a 2.01 when it arrives; the server's store has it before it sends
    // the 2.01 (server driver: events before sends).
    if server.registrations().len() != args.clients {
        return Err(format!("{} registrations", server.registrations().len()).into());
    }
    let l = fleet.report().latencies();
    line(
        "registrations",
        args.clients,
        registered,
        ms(l.register_quantile(0.5)),
        ms(l.register_quantile(0.99)),
    );

    // Updates: every client at once.
    let started = Instant::now();
    fleet.trigger_update(Selector::All)?;
    until("updates", &fleet, || fleet.total().updates >= clients).await?;
    let updated = started.elapsed();
    let l = fleet.report().latencies();
    line(
        "updates",
        args.clients,
        updated,
        ms(l.update_quantile(0.5)),
        ms(l.update_quantile(0.99)),
    );

    let (n, took, latencies) =
        common::read_manufacturer(&server, args.clients, args.reads, args.in_flight).await?;
    let p = |q: f64| latencies.value_at_quantile(q) as f64 / 1e3;
    line("reads", n, took, p(0.5), p(0.99));
    println!("RESULT reads_per_s {:.0}", n as f64 / took.as_secs_f64());

    let counters = server.counters().await?;
    println!(
        "server CoAP counters: {} datagrams in, {} out, {} retransmissions, {} duplicates, {} time-outs",
        counters.datagrams_in,
        counters.datagrams_out,
        counters.retransmissions,
        counters.duplicates,
        counters.timeouts
    );
    fleet.stop(Duration::from_secs(10)).await?;
    server.shutdown().await;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}
