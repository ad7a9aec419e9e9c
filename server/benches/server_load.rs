//! Load benchmark of the LwM2M Server over loopback: registrations/s, updates/s and reads/s
//! with thousands of complete simulated clients (`lwm2m_proto::client::Lwm2mClient`), each
//! on its own UDP socket (the server tells clients apart by address), with p50/p99/max
//! latencies.
//!
//! ```text
//! cargo bench -p lwm2m-server --bench server_load -- [--clients 2000] [--in-flight 200] [--reads 5]
//! ```
//!
//! Phases: every client registers (Register sent until 2.01 received, as the client sees
//! it), then every client sends an Update (until 2.04), then the server reads `/3/0/0`
//! from every client `--reads` times (`ServerHandle::request` until its outcome). At most
//! `--in-flight` operations run at once in each phase. Clients and server share the
//! machine's cores: the figures are for the whole loop, not the server alone.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lwm2m_proto::client::{ClientConfig, ClientEvent, Lwm2mClient, ObjectTree, Quirks};
use lwm2m_proto::content::ContentFormat;
use lwm2m_proto::registration::Lwm2mVersion;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{Content, Operation};
use lwm2m_proto::{
    Instance, InstanceId, Lwm2mPath, Node, ObjectId, ResourceId, ResourceValue, Value, coap,
};
use lwm2m_server::{ServerHandle, ServerOptions, start_server};
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

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
                "--clients" => args.clients = number("--clients")?,
                "--in-flight" => args.in_flight = number("--in-flight")?.max(1),
                "--reads" => args.reads = number("--reads")?,
                // `cargo bench` passes --bench; filters do not apply here.
                _ => {}
            }
        }
        Ok(args)
    }
}

/// A client on its own socket, driven by a task; Updates are ordered through `update`.
struct Client {
    endpoint: String,
    update: mpsc::UnboundedSender<()>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
}

impl Client {
    /// Binds, starts (the client registers at once) and spawns the driver.
    async fn start(config: ClientConfig, tree: ObjectTree) -> Result<Client> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let endpoint = config.endpoint.clone();
        let (update, updates) = mpsc::unbounded_channel();
        let (tx, events) = mpsc::unbounded_channel();
        let mut machine = Lwm2mClient::new(config, tree);
        machine.start(Instant::now());
        tokio::spawn(drive(machine, socket, updates, tx));
        Ok(Client {
            endpoint,
            update,
            events,
        })
    }

    /// Waits for `Registered` (`update == false`) or `Updated`.
    async fn wait(&mut self, update: bool) -> Result<()> {
        loop {
            match self.events.recv().await.ok_or("client stopped")? {
                ClientEvent::Registered { .. } if !update => return Ok(()),
                ClientEvent::Updated if update => return Ok(()),
                ClientEvent::Failed { step, reason } => {
                    return Err(format!("{}: {step}: {reason}", self.endpoint).into());
                }
                _ => {}
            }
        }
    }
}

async fn drive(
    mut client: Lwm2mClient,
    socket: UdpSocket,
    mut updates: mpsc::UnboundedReceiver<()>,
    events: mpsc::UnboundedSender<ClientEvent>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        while let Some(t) = client.poll_transmit() {
            let _ = socket.send_to(&t.bytes, t.peer).await;
        }
        while let Some(e) = client.poll_event() {
            let _ = events.send(e);
        }
        let timer = client
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, peer)) = r {
                    client.handle_datagram(Instant::now(), peer, buf.get(..n).unwrap_or_default());
                }
            }
            () = tokio::time::sleep_until(timer.into()) => client.handle_timeout(Instant::now()),
            u = updates.recv() => match u {
                Some(()) => client.trigger_update(Instant::now()),
                None => return,
            },
        }
    }
}

fn tree(registry: &Registry) -> Result<ObjectTree> {
    let mut tree = ObjectTree::new();
    for o in [1, 3] {
        let def = registry.object(ObjectId(o)).ok_or("object missing")?;
        tree.add_object(Arc::new(def.clone()), None);
    }
    let s = |v: &str| ResourceValue::Single(Value::String(v.into()));
    let i = |v: i64| ResourceValue::Single(Value::Integer(v));
    let instance = |items: Vec<(u16, ResourceValue)>| -> Instance {
        items.into_iter().map(|(r, v)| (ResourceId(r), v)).collect()
    };
    tree.put_instance(
        ObjectId(1),
        InstanceId(0),
        instance(vec![(0, i(1)), (1, i(3600)), (7, s("U"))]),
    );
    tree.put_instance(
        ObjectId(3),
        InstanceId(0),
        instance(vec![(0, s("ACME")), (1, s("Bench")), (14, s("+01"))]),
    );
    Ok(tree)
}

fn config(endpoint: String, server: SocketAddr, seed: u64) -> ClientConfig {
    ClientConfig {
        endpoint,
        version: Lwm2mVersion::V1_1,
        binding: "U".into(),
        queue_mode: false,
        lifetime: 3600,
        server: Some(server),
        bootstrap_server: None,
        preferred_format: ContentFormat::Tlv,
        supported_formats: vec![
            ContentFormat::Text,
            ContentFormat::Tlv,
            ContentFormat::SenmlCbor,
        ],
        response_delay: Duration::ZERO,
        update_margin: Duration::from_secs(60),
        reboot_silence: Duration::from_secs(30),
        quirks: Quirks::default(),
        coap: coap::Config {
            seed,
            ..coap::Config::default()
        },
        version_fallback: false,
    }
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    latencies: Histogram<u64>,
    took: Duration,
}

impl Phase {
    fn new(name: &'static str) -> Result<Phase> {
        Ok(Phase {
            name,
            latencies: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            took: Duration::ZERO,
        })
    }

    fn print(&self) {
        let ms = |us: u64| us as f64 / 1000.0;
        let n = self.latencies.len();
        println!(
            "{:<14} {n:>6} in {:>6.2} s = {:>8.0}/s   p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
            self.name,
            self.took.as_secs_f64(),
            n as f64 / self.took.as_secs_f64(),
            ms(self.latencies.value_at_quantile(0.5)),
            ms(self.latencies.value_at_quantile(0.99)),
            ms(self.latencies.max()),
        );
    }
}

/// Runs `jobs` with at most `in_flight` at once; each returns its latency.
async fn run<F>(name: &'static str, in_flight: usize, jobs: Vec<F>) -> Result<Phase>
where
    F: Future<Output = Result<Duration>> + Send + 'static,
{
    let mut phase = Phase::new(name)?;
    let permits = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for job in jobs {
        let permit = permits.clone().acquire_owned().await?;
        set.spawn(async move {
            let latency = job.await;
            drop(permit);
            latency
        });
    }
    while let Some(latency) = set.join_next().await {
        let us = u64::try_from(latency??.as_micros()).unwrap_or(u64::MAX);
        phase.latencies.record(us.max(1))?;
    }
    phase.took = started.elapsed();
    Ok(phase)
}

async fn bench(args: Args) -> Result<()> {
    let registry = Arc::new(Registry::embedded());
    let server: ServerHandle =
        start_server(ServerOptions::new("127.0.0.1:0".parse()?, registry.clone()))?;
    let addr = server.local_addr();
    let tree = tree(&registry)?;
    println!(
        "LwM2M Server on {addr}: {} clients (one socket each), at most {} operations in flight",
        args.clients, args.in_flight
    );

    // Registrations: each job starts a client and waits for its 2.01.
    let (done, mut registered) = mpsc::unbounded_channel();
    let jobs = (0..args.clients)
        .map(|n| {
            let (tree, done) = (tree.clone(), done.clone());
            let config = config(format!("bench-{n:05}"), addr, n as u64);
            async move {
                let t = Instant::now();
                let mut client = Client::start(config, tree).await?;
                client.wait(false).await?;
                let latency = t.elapsed();
                done.send(client).map_err(|_| "collector gone")?;
                Ok(latency)
            }
        })
        .collect();
    let registrations = run("registrations", args.in_flight, jobs).await?;
    drop(done);
    let mut clients = Vec::with_capacity(args.clients);
    while let Some(c) = registered.recv().await {
        clients.push(c);
    }
    if server.registrations().len() != args.clients {
        return Err(format!("{} registrations", server.registrations().len()).into());
    }

    // Updates: each job orders an Update and waits for its 2.04.
    let (done, mut updated) = mpsc::unbounded_channel();
    let jobs = clients
        .into_iter()
        .map(|mut client| {
            let done = done.clone();
            async move {
                let t = Instant::now();
                client.update.send(()).map_err(|_| "client stopped")?;
                client.wait(true).await?;
                let latency = t.elapsed();
                done.send(client).map_err(|_| "collector gone")?;
                Ok(latency)
            }
        })
        .collect();
    let updates = run("updates", args.in_flight, jobs).await?;
    drop(done);
    let mut clients = Vec::with_capacity(args.clients);
    while let Some(c) = updated.recv().await {
        clients.push(c);
    }

    // Reads of /3/0/0 by the server, round-robin over the clients.
    let endpoints: Vec<String> = clients.iter().map(|c| c.endpoint.clone()).collect();
    let jobs = (0..args.reads)
        .flat_map(|_| endpoints.iter().cloned())
        .map(|ep| {
            let server = server.clone();
            async move {
                let t = Instant::now();
                let read = Operation::Read {
                    path: Lwm2mPath::resource(3, 0, 0),
                    format: None,
                };
                let response = server.request(&ep, read).await?;
                let latency = t.elapsed();
                let expected = Content::Node(Node::Resource(ResourceValue::Single(Value::String(
                    "ACME".into(),
                ))));
                if response.content != Some(expected) {
                    return Err(format!("{ep}: {response:?}").into());
                }
                Ok(latency)
            }
        })
        .collect();
    let reads = run("reads", args.in_flight, jobs).await?;

    for phase in [&registrations, &updates, &reads] {
        phase.print();
    }
    let counters = server.counters().await?;
    println!(
        "server CoAP counters: {} datagrams in, {} out, {} retransmissions, {} duplicates, {} time-outs",
        counters.datagrams_in,
        counters.datagrams_out,
        counters.retransmissions,
        counters.duplicates,
        counters.timeouts
    );
    drop(clients);
    server.shutdown().await;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}
