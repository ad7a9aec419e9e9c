//! Load benchmark of the LwM2M Server over DTLS (CoAP over DTLS, RFC 7252 §9; PSK,
//! Core TS 1.1 §7.1.7): our server with its DTLS listener, PSK keys in an in-memory
//! security store, and a simulated fleet of PSK clients (`lwm2m_simulator::fleet`, keys
//! from `PskPattern`) in the same process, on loopback.
//!
//! ```text
//! cargo bench -p lwm2m-server --bench dtls_load -- [--clients 2000] [--ramp 1000] [--in-flight 200] [--reads 5] [--certificates] [--shards N]
//! ```
//!
//! `--shards`: sockets (and session-router tasks) of the server's DTLS listener
//! (`DtlsOptions::shards`; default: one per core).
//!
//! `--certificates`: the clients authenticate with certificates instead
//! (`TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`, Core TS 1.1 §7.1.8), each its own from a test CA
//! (`lwm2m_dtls::pki`), CN the endpoint name; the server's certificate from the same CA.
//!
//! Phases, each against a fresh server:
//! - new clients, all at once: every client starts together; each handshakes (first
//!   ClientHello) and registers. Rate = clients / time until the last 2.01; per-client
//!   latency = first transmission of the Register (which opens the handshake) to 2.01.
//! - new clients, ramped: the same with `--ramp` clients started per second.
//! - reads: with every client registered, the server reads `/3/0/0` from each client
//!   `--reads` times (`ServerHandle::request` until its outcome), `--in-flight` at once.
//!
//! Clients and server share the machine's cores: the figures are for the whole loop.

mod common;

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwm2m_dtls::pki::{Purpose, TestCa, Validity};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::{Lwm2mPath, ResourceValue, Value};
use lwm2m_server::store::{Credentials, FileSecurityStore, SecurityInfo, SecurityStore};
use lwm2m_server::{DtlsOptions, ServerHandle, ServerOptions, start_server};
use lwm2m_simulator::fleet::{
    Fleet, FleetConfig, FleetHandle, ProfileClients, PskPattern, Targets,
};
use lwm2m_simulator::network::NetworkModel;
use lwm2m_simulator::profile::Profile;
use lwm2m_simulator::quirks::QuirkPacks;

/// The allocator of the `lwm2m-harness` binary, so the bench measures what `serve` runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// The clients: LwM2M 1.1, one PSK server account, Device with a manufacturer.
const PROFILE: &str = "\
name: dtls-bench
lwm2m_version: \"1.1\"
lifetime: 1h
endpoint_prefix: bench-
preferred_format: tlv
supported_formats: [tlv, text, senml-cbor]
objects:
  0:
    instances:
      0: { 0: coaps://localhost:5684, 1: false, 2: 0, 3: \"\", 4: \"\", 5: \"\", 10: 1 }
  1:
    instances:
      0: { 0: 1, 1: 3600, 6: false, 7: U }
  3:
    instances:
      0: { 0: ACME, 1: Bench }
";

/// Settings from the command line.
struct Args {
    clients: usize,
    ramp: f64,
    in_flight: usize,
    reads: usize,
    certificates: bool,
    shards: Option<usize>,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            clients: 2_000,
            ramp: 1_000.0,
            in_flight: 200,
            reads: 5,
            certificates: false,
            shards: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let mut number = |name: &str| -> Result<usize> {
                let v = it.next().ok_or(format!("{name} needs a number"))?;
                Ok(v.parse().map_err(|e| format!("{name} {v}: {e}"))?)
            };
            match a.as_str() {
                "--clients" => args.clients = number("--clients")?,
                "--ramp" => args.ramp = number("--ramp")?.max(1) as f64,
                "--in-flight" => args.in_flight = number("--in-flight")?.max(1),
                "--reads" => args.reads = number("--reads")?,
                "--certificates" => args.certificates = true,
                "--shards" => args.shards = Some(number("--shards")?.max(1)),
                // `cargo bench` passes --bench; filters do not apply here.
                _ => {}
            }
        }
        Ok(args)
    }
}

/// A server with a DTLS listener whose store holds the fleet's PSKs, and the fleet.
struct Setup {
    server: ServerHandle,
    fleet: FleetHandle,
    started: Instant,
}

async fn start(clients: usize, ramp: Option<f64>, args: &Args) -> Result<Setup> {
    let certificates = args.certificates;
    let registry = Arc::new(Registry::embedded());
    let any = "127.0.0.1:0".parse()?;
    let security = Arc::new(FileSecurityStore::in_memory());
    let mut options = ServerOptions::new(any, registry.clone());
    let mut dtls = DtlsOptions::new(any, security.clone());
    if let Some(shards) = args.shards {
        dtls.shards = shards;
    }
    let ca = match certificates {
        true => {
            let ca = TestCa::new("dtls_load CA")?;
            let own = ca.issue("server", &["127.0.0.1"], Purpose::Server, Validity::Current)?;
            dtls.certificate = Some(ca.config(own));
            Some(ca)
        }
        false => None,
    };
    options.dtls = Some(dtls);
    let server = start_server(options)?;
    let targets = Targets {
        server: server.dtls_addr(),
        bootstrap: None,
    };
    let profile = Profile::from_yaml("dtls-bench", PROFILE, &QuirkPacks::new())?;
    let psk = PskPattern {
        identity: "bench-psk-{n}".into(),
        seed: 7,
    };
    let make =
        ProfileClients::new(profile, &registry, NetworkModel::default(), targets)?.with_psk(psk);
    let mut fleet = Fleet::new(FleetConfig {
        ramp,
        ..FleetConfig::default()
    });
    for n in 0..clients as u64 {
        let mut spec = make.spec(n, 1);
        match &ca {
            // Security Mode 2 with the client's own certificate (Appendix E.1).
            Some(ca) => {
                let own = ca.issue(&make.endpoint(n), &[], Purpose::Client, Validity::Current)?;
                for (r, v) in [
                    (2, Value::Integer(2)),
                    (3, Value::Opaque(own.certificate)),
                    (4, Value::Opaque(ca.certificate().to_vec())),
                    (5, Value::Opaque(own.private_key)),
                ] {
                    spec.tree
                        .set(&Lwm2mPath::resource(0, 0, r), ResourceValue::Single(v))?;
                }
            }
            None => {
                let (identity, key) = make.psk_credentials(n).ok_or("no PSK")?;
                security.put(SecurityInfo {
                    endpoint: make.endpoint(n),
                    credentials: Credentials::Psk {
                        identity,
                        key: key.iter().map(|b| format!("{b:02x}")).collect(),
                    },
                })?;
            }
        }
        fleet.add("dtls-bench", spec);
    }
    let started = Instant::now();
    let fleet = fleet.start()?;
    Ok(Setup {
        server,
        fleet,
        started,
    })
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// Starts `clients` clients (all at once, or `ramp` per second) and waits until every one
/// registered; prints the rate and the per-client latencies. Returns the running setup.
async fn new_clients(name: &str, clients: usize, ramp: Option<f64>, args: &Args) -> Result<Setup> {
    let s = start(clients, ramp, args).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let took = loop {
        let c = s.fleet.total();
        if c.clients_registered as usize >= clients {
            break s.started.elapsed();
        }
        if Instant::now() > deadline {
            return Err(format!("{name}: not all registered in 120 s: {c:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let c = s.fleet.total();
    let l = s.fleet.report().latencies();
    println!(
        "{name:<24} {clients:>6} in {:>6.2} s = {:>8.0}/s   p50 {:>8.2} ms   p99 {:>8.2} ms   \
         ({} handshakes, {} failed)",
        took.as_secs_f64(),
        clients as f64 / took.as_secs_f64(),
        ms(l.register_quantile(0.5)),
        ms(l.register_quantile(0.99)),
        c.dtls_handshakes,
        c.dtls_failures,
    );
    if s.server.registrations().len() != clients {
        return Err(format!("{} registrations", s.server.registrations().len()).into());
    }
    Ok(s)
}

async fn stop(s: Setup) -> Result<()> {
    s.fleet.stop(Duration::from_secs(10)).await?;
    s.server.shutdown().await;
    Ok(())
}

/// The server reads /3/0/0 from every client `reads` times, `in_flight` at once.
async fn reads(s: &Setup, clients: usize, reads: usize, in_flight: usize) -> Result<()> {
    let (n, took, latencies) =
        common::read_manufacturer(&s.server, clients, reads, in_flight).await?;
    println!(
        "{:<24} {n:>6} in {:>6.2} s = {:>8.0}/s   p50 {:>8.2} ms   p99 {:>8.2} ms   ({in_flight} in flight)",
        "DTLS reads /3/0/0",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        latencies.value_at_quantile(0.5) as f64 / 1e3,
        latencies.value_at_quantile(0.99) as f64 / 1e3,
    );
    Ok(())
}

async fn bench(args: Args) -> Result<()> {
    let kind = if args.certificates {
        "certificate"
    } else {
        "PSK"
    };
    println!(
        "LwM2M Server with a DTLS ({kind}) listener; {} fleet clients in this process",
        args.clients
    );
    let all = "new clients, all at once";
    let s = new_clients(all, args.clients, None, &args).await?;
    reads(&s, args.clients, args.reads, args.in_flight).await?;
    stop(s).await?;
    let name = format!("new clients, {}/s", args.ramp);
    let s = new_clients(&name, args.clients, Some(args.ramp), &args).await?;
    stop(s).await
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}
