//! The scenario runner behind `lwm2m-harness run SCENARIO.yaml`: starts the in-process
//! LwM2M Server and Bootstrap Server (or targets external ones), one simulated fleet per
//! client group, runs the timeline, collects events and every datagram, stops everything
//! (the clients de-register), and writes the report folder
//! `reports/<UTC time>-<scenario name>/`:
//!
//! - `report.json`, `report.html`, `junit.xml`: the timeline's actions and the implicit
//!   checks (every client registered, every bootstrap finished) as cases, latency
//!   percentiles, throughput over time, the network-usage table of a sample client,
//!   counters (fleet, servers, events), seed, versions and git revision;
//! - `run.pcap` and `exchanges.log`: every datagram the servers sent and received (on a
//!   DTLS listener as it was on the wire, encrypted; the log shows the CoAP inside), and
//!   with DTLS `keys.log`, the NSS key log that lets Wireshark decrypt `run.pcap`;
//! - `<operation>.hgrm` and `latencies.hlog`: the latency histograms (the log with one
//!   interval per second per operation and per group's operation), and `exchanges.csv`
//!   (every exchange: time, group, endpoint, operation, path, code, latency, bytes);
//! - `network-usage.txt` (per operation over the whole run, then per sample client) and
//!   `network-usage.csv` (every exchange); with DTLS also the record overhead, each
//!   handshake's bytes and the handshakes NAT rebindings cost.
//!
//! DTLS (`servers.dtls`, a group's `security`): the in-process LwM2M Server gets a DTLS
//! listener whose in-memory security store holds the PSK of every client of the secure
//! groups that register directly (generated from the identity pattern and the seed); those
//! clients use `coaps://`. With `servers.dtls.bootstrap` the in-process Bootstrap Server
//! gets one too: a secure group that bootstraps does so over it with per-client bootstrap
//! PSKs (`security.bootstrap_identity`), each client's endpoint configuration hands it a
//! `coaps://` LwM2M Server account with its own PSK, and the Bootstrap Server provisions
//! that PSK into the LwM2M Server's store (Core TS 1.1 §6.1.4, §7.1.7). Both listeners
//! share `keys.log`, the capture and the DTLS accounting (each on its own). Toward an
//! external `coaps://` LwM2M Server the clients' own sessions write `keys.log` and hand
//! their plaintext to the fleet's tap, and `run --export-credentials` writes the PSKs the
//! server must be loaded with ([`export_credentials`]). A certificate group (`mode: x509`)
//! gets certificates from the run's test CA, which also issues the listeners' (`run_ca`):
//! one per client, or with `bootstrap` one toward the Bootstrap Server and another that
//! the Bootstrap Server hands over. What it does not do: with an external LwM2M Server no
//! requests (the harness has no way to ask it) and no pcap of the servers' sockets (the
//! fleet's datagrams are recorded instead).

pub mod metrics;
mod output;
mod processes;
pub mod resets;
pub mod scenario;
mod steps;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use lwm2m_dtls::CertificateConfig;
use lwm2m_dtls::pki::{Purpose, TestCa, Validity};
use lwm2m_proto::bootstrap::BootstrapConfig;
use lwm2m_proto::bootstrap::config::{SecurityInstance, SecurityMode};
use lwm2m_proto::bootstrap::server::BootstrapServerConfig;
use lwm2m_proto::client::ObjectTree;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::ServerConfig;
use lwm2m_proto::value::Value;
use lwm2m_proto::{InstanceId, Lwm2mPath, ObjectId, ResourceId, coap};
use lwm2m_server::dtls::KeyLogFile;
use lwm2m_server::events::{EventBus, PacketTap};
use lwm2m_server::store::{
    BootstrapCredentials, BootstrapStore as _, ConfigKey, Credentials, FileBootstrapStore,
    FileSecurityStore, SecurityInfo, SecurityStore,
};
use lwm2m_server::{
    BootstrapHandle, BootstrapOptions, DtlsOptions, ServerHandle, ServerOptions, start_bootstrap,
    start_server,
};
use lwm2m_simulator::fleet::{
    Fleet, FleetConfig, FleetHandle, ProfileClients, SessionKeyLog, Shard, Tap, Targets,
};
use lwm2m_simulator::seed;

use crate::accounts::{SecureAccount, ServerRole, write_account};
use crate::report::{self, CaseResult, RunReport, Status};
pub use output::snapshot_fields;
pub use scenario::{Plan, Scenario};

/// `lwm2m-harness run` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The scenario YAML file, e.g. scenarios/quickstart.yaml, or a shipped scenario's name
    /// (quickstart, experiments/whole-device-read).
    pub scenario: PathBuf,
    /// The seed of every random choice (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the report goes (default: reports/<UTC time>-<scenario name>), as with `test
    /// --report-dir`.
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// The folder run folders are made in (the former name; --report-dir names the run
    /// folder itself).
    #[arg(
        long,
        default_value = "reports",
        hide = true,
        conflicts_with = "report_dir"
    )]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Write the PSK credentials of the secure groups' clients (for this seed) to FILE as
    /// a JSON list of security entries, and exit without running: load them into an
    /// external coaps:// LwM2M Server first.
    #[arg(long, value_name = "FILE")]
    pub export_credentials: Option<PathBuf>,
    /// Serve the fleet's live counters (all groups together) at http://ADDR/metrics in the
    /// Prometheus text format while the run lasts (no authentication: bind it to loopback).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Run shard K of N of the scenario's fleet (K from 0): of each group the clients K,
    /// K+N, K+2N, ..., with the endpoint names, seeds and PSKs they have in one process,
    /// so that N shards (processes, machines, Kubernetes pods) together are the same
    /// fleet; `report merge` merges their run folders. Only for a scenario whose servers
    /// are external: in-process ones would be one per shard.
    #[arg(long, value_name = "K/N", value_parser = Shard::parse)]
    pub shard: Option<Shard>,
    /// Start the fleet and the timeline at this moment (RFC 3339, e.g.
    /// 2026-12-06T05:00:00Z), so that all shards run on the same clock [default: at once].
    #[arg(long, value_name = "RFC3339", value_parser = report::parse_rfc3339)]
    pub start_at: Option<SystemTime>,
}

/// How to run a plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The seed.
    pub seed: u64,
    /// The folder the run folder is made in (`OUT/<UTC time>-<scenario name>`).
    pub out: PathBuf,
    /// The run folder itself instead (made if missing).
    pub report_dir: Option<PathBuf>,
    /// Show a progress bar on the terminal.
    pub progress: bool,
    /// Serve the fleet's live counters at http://ADDR/metrics while the run lasts.
    pub metrics: Option<std::net::SocketAddr>,
    /// Which part of the scenario's fleet this run is (one shard of one: all of it);
    /// [`Plan::shard_refusal`] says when a scenario cannot be sharded.
    pub shard: Option<Shard>,
    /// When the fleet and the timeline start (`None`: at once).
    pub start_at: Option<SystemTime>,
}

/// Waits until `at` (if given and not past): the shards of a fleet start on one clock.
pub async fn wait_for_start(at: Option<SystemTime>) {
    let Some(at) = at else { return };
    match at.duration_since(SystemTime::now()) {
        Ok(wait) => {
            println!(
                "starting at {:.3} s since the epoch (in {wait:.1?})",
                at.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64())
            );
            tokio::time::sleep(wait).await;
        }
        Err(_) => eprintln!("--start-at is past: starting now"),
    }
}

/// A finished run.
#[derive(Debug)]
pub struct RunOutcome {
    /// The run folder.
    pub dir: PathBuf,
    /// What `report.json` holds.
    pub report: RunReport,
}

/// `lwm2m-harness run`: loads, runs, prints where the report is; exit status 1 when a case
/// failed.
pub fn main(registry: Registry, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let plan = Plan::load(&scenario_file(&args.scenario)?, &registry)?;
    let options = RunOptions {
        seed: args.seed.unwrap_or(plan.scenario.seed),
        out: args.out.clone(),
        report_dir: args.report_dir.clone(),
        progress: !args.quiet,
        metrics: args.metrics,
        shard: args.shard,
        start_at: args.start_at,
    };
    if let Some(file) = &args.export_credentials {
        let n = export_credentials(&plan, &registry, options.seed, file)?;
        println!(
            "{n} PSK credentials (seed {}) written to {}",
            options.seed,
            file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let outcome = runtime.block_on(run(&plan, Arc::new(registry), &options))?;
    print!("{}", output::summary(&outcome));
    let (_, failed, _) = outcome.report.tally();
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The scenario file: `arg` when it exists, else a shipped scenario of that name or path
/// (`quickstart`, `scenarios/quickstart.yaml`, `experiments/whole-device-read`), so that
/// an installed binary runs them from any folder.
fn scenario_file(arg: &Path) -> anyhow::Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_owned());
    }
    let text = arg.to_string_lossy().replace('\\', "/");
    let stem = text.strip_prefix("scenarios/").unwrap_or(&text);
    let stem = stem
        .strip_suffix(".yaml")
        .or_else(|| stem.strip_suffix(".yml"))
        .unwrap_or(stem);
    let shipped = format!("scenarios/{stem}.yaml");
    // In a checkout, its own copy.
    if Path::new(&shipped).is_file() {
        return Ok(PathBuf::from(shipped));
    }
    if crate::shipped::files().iter().any(|(p, _)| *p == shipped) {
        return Ok(crate::shipped::root()?.join(shipped));
    }
    Ok(arg.to_owned())
}

/// The servers a run started or targets.
struct Servers {
    server: Option<ServerHandle>,
    bootstrap: Option<BootstrapHandle>,
    server_addr: SocketAddr,
    /// Where DTLS clients go: the in-process LwM2M Server's DTLS listener, or an external
    /// `coaps://` server.
    dtls_addr: Option<SocketAddr>,
    bootstrap_addr: Option<SocketAddr>,
    /// The in-process Bootstrap Server's DTLS listener.
    bootstrap_dtls_addr: Option<SocketAddr>,
    /// The in-process Bootstrap Server's configurations (the secure groups' endpoint
    /// configurations go in before their fleet starts).
    bootstrap_store: Option<Arc<FileBootstrapStore>>,
}

/// Hex digits of `bytes`, as the stores keep keys.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The security store entries (PSK credentials) of the first `n` clients, as the server's
/// `PUT /api/security/clients` takes them one by one.
pub fn security_entries(clients: &ProfileClients, n: u64) -> Vec<SecurityInfo> {
    (0..n)
        .filter_map(|k| {
            let (identity, key) = clients.psk_credentials(k)?;
            Some(SecurityInfo {
                endpoint: clients.endpoint(k),
                credentials: Credentials::Psk {
                    identity,
                    key: hex(&key),
                },
            })
        })
        .collect()
}

/// The LwM2M Server PSK credentials of every client of `group` in a run seeded with
/// `seed` (none when the group has no `security`).
fn group_credentials(
    group: &scenario::GroupPlan,
    registry: &Registry,
    seed: u64,
) -> anyhow::Result<Vec<SecurityInfo>> {
    let Some(psk) = group.psk(seed) else {
        return Ok(Vec::new());
    };
    let clients = group.clients(registry, Targets::default())?.with_psk(psk);
    Ok(security_entries(&clients, group.spec.count as u64))
}

/// `run --export-credentials FILE`: the LwM2M Server PSKs of every client of every secure
/// group (those that bootstrap too: the Bootstrap Server hands them these), as a JSON
/// list of security entries, each ready for `PUT /api/security/clients`.
pub fn export_credentials(
    plan: &Plan,
    registry: &Registry,
    seed: u64,
    file: &Path,
) -> anyhow::Result<usize> {
    let mut list = Vec::new();
    for group in &plan.groups {
        list.extend(group_credentials(group, registry, seed)?);
    }
    let text = serde_json::to_string_pretty(&list)?;
    std::fs::write(file, text + "\n").with_context(|| format!("writing {}", file.display()))?;
    Ok(list.len())
}

/// The DTLS listeners of the in-process servers (`servers.dtls`).
struct Dtls {
    /// The LwM2M Server's security store: the PSKs of the secure groups that register
    /// directly, loaded before the run; those of the groups that bootstrap are put there by
    /// the Bootstrap Server when it hands them out ([`BootstrapOptions::provision`]).
    store: Arc<FileSecurityStore>,
    /// `keys.log` in the run folder: every session's secrets, both listeners'.
    key_log: Arc<KeyLogFile>,
    handshake_timeout: Duration,
    server: bool,
    bootstrap: bool,
    /// The run's test CA, when a group has certificates: it issues the listeners' and the
    /// clients' certificates and is the trust anchor of both sides.
    ca: Option<TestCa>,
    /// The listeners' certificate (subjectAltName 127.0.0.1) and the CA as trust anchor.
    certificate: Option<CertificateConfig>,
}

impl Dtls {
    /// A listener at `addr` that looks PSKs up in `security` (and takes the run CA's
    /// certificates).
    fn options(&self, addr: SocketAddr, security: Arc<dyn SecurityStore>) -> DtlsOptions {
        let mut options = DtlsOptions::new(addr, security);
        options.handshake_timeout = self.handshake_timeout;
        options.key_log = Some(self.key_log.clone());
        options.certificate.clone_from(&self.certificate);
        options
    }
}

/// The run's test CA and the in-process listeners' certificate (naming 127.0.0.1 and the
/// run's server addresses `hosts`), for certificate groups.
fn run_ca(hosts: &[Ipv4Addr]) -> anyhow::Result<(TestCa, CertificateConfig)> {
    let ca = TestCa::new("lwm2m-harness run CA")?;
    let mut names = vec!["127.0.0.1".to_owned()];
    names.extend(hosts.iter().map(ToString::to_string));
    names.dedup();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let server = ca.issue(
        "lwm2m-harness in-process server",
        &names,
        Purpose::Server,
        Validity::Current,
    )?;
    let certificate = ca.config(server);
    Ok((ca, certificate))
}

/// The DTLS listeners, if the scenario has any (writing to the run's `key_log`): the
/// LwM2M Server's security store holds the PSK of every client of the secure groups that
/// register directly.
fn dtls_listeners(
    plan: &Plan,
    registry: &Registry,
    seed: u64,
    key_log: Option<Arc<KeyLogFile>>,
    hosts: &[Ipv4Addr],
) -> anyhow::Result<Option<Dtls>> {
    let servers = &plan.scenario.servers;
    let (Some(listen), Some(key_log)) = (servers.dtls.as_ref(), key_log) else {
        return Ok(None);
    };
    let store = FileSecurityStore::in_memory();
    for group in plan.groups.iter().filter(|g| !g.spec.bootstrap) {
        for entry in group_credentials(group, registry, seed)? {
            store
                .put(entry)
                .with_context(|| format!("the PSK credentials of group {}", group.spec.name))?;
        }
    }
    let (ca, certificate) = match plan.groups.iter().any(scenario::GroupPlan::certificates) {
        true => {
            let (ca, mut certificate) = run_ca(hosts).context("making the run's test CA")?;
            // Groups with a CA of their own: the listeners trust it too.
            certificate.trust_anchors.extend(
                plan.groups
                    .iter()
                    .filter_map(|g| g.ca.as_ref().map(|ca| ca.certificate().to_vec())),
            );
            (Some(ca), Some(certificate))
        }
        false => (None, None),
    };
    Ok(Some(Dtls {
        store: Arc::new(store),
        key_log,
        handshake_timeout: listen.handshake_timeout,
        server: servers.server_dtls(),
        bootstrap: servers.bootstrap_dtls(),
        ca,
        certificate,
    }))
}

/// The loopback addresses of a run's in-process LwM2M Server and Bootstrap Server:
/// 127.0.Y.Z and 127.0.Y.Z+1, Y and Z from `run` (the run folder), away from 127.0.0.1 and
/// from the fleets' blocks (127.G.0.1 upwards, G from 1). There they listen on the
/// standard ports, 5683 for CoAP and 5684 for DTLS, so that Wireshark decodes `run.pcap`
/// without options; another run on the same address makes them take free ports.
pub fn server_hosts(run: &str) -> (Ipv4Addr, Ipv4Addr) {
    let mut h: u32 = 0x811c_9dc5;
    for b in run.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let y = 1 + (h % 254) as u8;
    let z = 1 + ((h >> 8) % 126) as u8 * 2;
    (Ipv4Addr::new(127, 0, y, z), Ipv4Addr::new(127, 0, y, z + 1))
}

/// Starts a server at `host`: on the standard ports first, on free ports when those are
/// taken (or cannot be bound).
fn on_standard_ports<H>(
    host: Ipv4Addr,
    start: impl Fn(SocketAddr, SocketAddr) -> anyhow::Result<H>,
) -> anyhow::Result<H> {
    let at = |port| SocketAddr::from((host, port));
    start(at(5683), at(5684)).or_else(|_| start(at(0), at(0)))
}

fn start_servers(
    plan: &Plan,
    registry: &Arc<Registry>,
    seed: u64,
    bus: &EventBus,
    tap: Option<Arc<dyn PacketTap>>,
    dtls: Option<&Dtls>,
    (server_host, bootstrap_host): (Ipv4Addr, Ipv4Addr),
) -> anyhow::Result<Servers> {
    use scenario::Target;
    let s = &plan.scenario;
    let server = match s.servers.server {
        Target::InProcess => Some(on_standard_ports(server_host, |coap_at, dtls_at| {
            let mut options = ServerOptions::new(coap_at, registry.clone());
            options.config = ServerConfig {
                coap: coap::Config {
                    seed: seed::mix(&[seed, 1]),
                    ..coap::Config::default()
                },
                awake_time: s.servers.queue_awake_time,
                ..ServerConfig::default()
            };
            options.bus = bus.clone();
            options.tap = tap.clone();
            options.dtls = dtls
                .filter(|d| d.server)
                .map(|d| d.options(dtls_at, d.store.clone()));
            start_server(options).context("starting the LwM2M Server")
        })?),
        _ => None,
    };
    let server_addr = match (&server, &s.servers.server) {
        (Some(h), _) => h.local_addr(),
        (None, Target::External { addr, .. }) => *addr,
        _ => anyhow::bail!("no LwM2M Server"),
    };
    let (bootstrap, bootstrap_store) = match s.servers.bootstrap {
        Target::InProcess => {
            let store = Arc::new(FileBootstrapStore::in_memory(scenario::bootstrap_doc(
                s,
                server_addr,
            )));
            let handle = on_standard_ports(bootstrap_host, |coap_at, dtls_at| {
                let mut options = BootstrapOptions::new(coap_at, store.clone());
                options.config = BootstrapServerConfig {
                    coap: coap::Config {
                        seed: seed::mix(&[seed, 2]),
                        ..coap::Config::default()
                    },
                    ..BootstrapServerConfig::default()
                };
                options.bus = bus.clone();
                options.tap = tap.clone();
                if let Some(d) = dtls.filter(|d| d.bootstrap) {
                    // Bootstrap PSKs come from the configurations' bootstrap-server
                    // accounts; the LwM2M Server PSKs handed out go into its store.
                    options.dtls =
                        Some(d.options(dtls_at, Arc::new(BootstrapCredentials(store.clone()))));
                    options.provision = Some(d.store.clone());
                }
                start_bootstrap(options).context("starting the Bootstrap Server")
            })?;
            (Some(handle), Some(store))
        }
        _ => (None, None),
    };
    let bootstrap_addr = match (&bootstrap, &s.servers.bootstrap) {
        (Some(h), _) => Some(h.local_addr()),
        (None, Target::External { addr, .. }) => Some(*addr),
        _ => None,
    };
    Ok(Servers {
        // An external coaps:// server is itself the DTLS listener.
        dtls_addr: server
            .as_ref()
            .and_then(ServerHandle::dtls_addr)
            .or(s.servers.external_secure().then_some(server_addr)),
        bootstrap_dtls_addr: bootstrap.as_ref().and_then(BootstrapHandle::dtls_addr),
        server,
        bootstrap,
        server_addr,
        bootstrap_addr,
        bootstrap_store,
    })
}

/// Object 0 Security (Core TS 1.1 Appendix E.1).
const SECURITY: ObjectId = ObjectId(0);

/// The configuration the Bootstrap Server hands client `n` of a secure group: the one
/// that applies to its endpoint in the scenario (or the default one), with every LwM2M
/// Server account turned `coaps://` to the in-process server's listener with the client's
/// own credentials `lwm2m`, and the client's bootstrap-server account (at its instance id
/// in the client, `account`) with its factory credentials `factory`, so that the Bootstrap
/// Server finds a PSK by identity ([`BootstrapCredentials`]) and writes the account back
/// unchanged (Core TS 1.1 §5.2.7.4, §7.1.7, §7.1.8).
fn secure_config(
    mut config: BootstrapConfig,
    server: SocketAddr,
    lwm2m: &SecureAccount,
    (account, uri): (InstanceId, String),
    factory: &SecureAccount,
) -> BootstrapConfig {
    config.security.retain(|_, s| !s.bootstrap_server);
    if let Some(moved) = config.security.remove(&account.0) {
        let free = (0..=u16::MAX)
            .find(|i| *i != account.0 && !config.security.contains_key(i))
            .unwrap_or(u16::MAX);
        config.security.insert(free, moved);
    }
    for s in config.security.values_mut() {
        s.uri = format!("coaps://{server}");
        set_credentials(s, lwm2m);
    }
    let mut bootstrap = SecurityInstance {
        bootstrap_server: true,
        ..SecurityInstance::nosec(uri)
    };
    set_credentials(&mut bootstrap, factory);
    config.security.insert(account.0, bootstrap);
    config
}

/// A bootstrap configuration's Security instance gets `account`'s mode and credentials
/// (a PSK identity as text, everything else in hex).
fn set_credentials(s: &mut SecurityInstance, account: &SecureAccount) {
    match account {
        SecureAccount::Psk { identity, key } => {
            s.mode = SecurityMode::Psk;
            s.identity = String::from_utf8_lossy(identity).into_owned();
            s.server_public_key = String::new();
            s.secret_key = hex(key);
        }
        SecureAccount::Certificate {
            certificate,
            private_key,
            trust_anchor,
        } => {
            s.mode = SecurityMode::X509;
            s.identity = hex(certificate);
            s.server_public_key = hex(trust_anchor);
            s.secret_key = hex(private_key);
        }
    }
}

/// A PSK account with `(identity, key)`.
fn psk_account((identity, key): (String, [u8; 16])) -> SecureAccount {
    SecureAccount::Psk {
        identity: identity.into_bytes(),
        key: key.to_vec(),
    }
}

/// A certificate account for `endpoint`: a certificate of its own from `ca` (subject CN
/// the endpoint name, Core TS 1.1 §7.1.8), and `trust_anchor` (DER) for the server's.
pub fn certificate_account(
    ca: &TestCa,
    endpoint: &str,
    trust_anchor: &[u8],
) -> anyhow::Result<SecureAccount> {
    let issued = ca
        .issue(endpoint, &[], Purpose::Client, Validity::Current)
        .with_context(|| format!("{endpoint}: issuing its certificate"))?;
    Ok(SecureAccount::Certificate {
        certificate: issued.certificate,
        private_key: issued.private_key,
        trust_anchor: trust_anchor.to_vec(),
    })
}

/// One fleet per group, on its own block of loopback addresses (127.G.0.1 upwards, room
/// for 65,000 clients and their NAT rebindings). A secure group that bootstraps gets its
/// factory bootstrap-server account over `coaps://` with per-client PSKs, and its
/// clients' configurations go into the Bootstrap Server's store ([`secure_config`]).
fn build_fleets(
    plan: &Plan,
    registry: &Registry,
    seed: u64,
    servers: &Servers,
    (tap, key_log): (Option<Tap>, Option<SessionKeyLog>),
    ca: Option<&TestCa>,
    shard: Shard,
) -> anyhow::Result<Vec<Fleet>> {
    let mut fleets = Vec::new();
    for (g, group) in plan.groups.iter().enumerate() {
        let name = &group.spec.name;
        let block = u8::try_from(g + 1)
            .ok()
            .filter(|b| *b < 127)
            .context("at most 126 groups")?;
        let group_seed = seed::mix(&[seed, 100 + g as u64]);
        let bootstrap = group.spec.bootstrap;
        let psk = group.psk(seed);
        let bootstrap_psk = group.bootstrap_psk(seed);
        let secure = group.spec.security.is_some();
        // A certificate group's issuer: its own CA, else the run's; the server's
        // certificate must chain to `server_ca`, else to the run's CA (the in-process
        // listeners' issuer), else to the group's own (an external server's).
        let (ca, anchor) = match group.certificates() {
            true => {
                let issuer = group
                    .ca
                    .as_deref()
                    .or(ca)
                    .context("certificate groups need a CA")?;
                let anchor = group
                    .server_ca
                    .clone()
                    .or_else(|| ca.map(|c| c.certificate().to_vec()))
                    .unwrap_or_else(|| issuer.certificate().to_vec());
                (Some(issuer), anchor)
            }
            false => (None, Vec::new()),
        };
        let server = match (secure, servers.dtls_addr) {
            (true, Some(dtls)) => dtls,
            (true, None) => anyhow::bail!("group {name}: no DTLS listener"),
            (false, _) => match &group.spec.server {
                Some(uri) => match scenario::parse_coap_uri(uri) {
                    Ok((addr, false)) => addr,
                    Ok((_, true)) => anyhow::bail!(
                        "group {name}: server {uri:?}: only coap:// (a secure group uses the \
                         scenario's DTLS listener)"
                    ),
                    Err(e) => anyhow::bail!("group {name}: server: {e}"),
                },
                None => servers.server_addr,
            },
        };
        let bootstrap_server = match (secure && bootstrap, servers.bootstrap_dtls_addr) {
            (true, Some(dtls)) => Some(dtls),
            (true, None) => {
                anyhow::bail!("group {name}: the Bootstrap Server has no DTLS listener")
            }
            (false, _) => servers.bootstrap_addr.filter(|_| bootstrap),
        };
        let mut clients = group.clients(
            registry,
            Targets {
                server: Some(server),
                bootstrap: bootstrap_server,
            },
        )?;
        clients = match (&psk, bootstrap) {
            // Each client's own credentials are written below.
            _ if secure && bootstrap => clients.with_bootstrap_account(),
            (Some(psk), false) => clients.with_psk(psk.clone()),
            _ => clients,
        };
        let mut fleet = Fleet::new(FleetConfig {
            seed: group_seed,
            ramp: group.spec.ramp,
            sockets: group.spec.sockets,
            // A shard's clients: its slice of the group's block.
            first_address: shard.first_address_in(
                Ipv4Addr::new(127, block, 0, 1),
                Ipv4Addr::new(127, block, 255, 254),
            ),
            tap: tap.clone(),
            key_log: key_log.clone(),
            // Register and Update latencies over time: the interval log and the charts.
            timed_latencies: true,
            shard,
            ..FleetConfig::default()
        });
        for k in shard.numbers(group.spec.count as u64) {
            let endpoint = clients.endpoint(k);
            let mut spec = clients.spec(k, group_seed);
            if bootstrap {
                // Factory bootstrap only: no server account until the Bootstrap Server
                // writes one (Core TS 1.1 §6.1.4); the bootstrap-server account stays.
                for object in [0, 1] {
                    let _ = spec
                        .tree
                        .bootstrap_delete(&Lwm2mPath::Object(ObjectId(object)));
                }
            }
            // The client's own credentials toward the LwM2M Server (directly, or as the
            // Bootstrap Server hands them) and toward the Bootstrap Server: different
            // ones, as Core TS 1.1 §7.1 requires.
            let lwm2m = match (&psk, ca) {
                (Some(psk), _) => Some(psk_account(psk.credentials(k, &endpoint))),
                (None, Some(ca)) => Some(certificate_account(ca, &endpoint, &anchor)?),
                (None, None) => None,
            };
            match (lwm2m, bootstrap_server) {
                (Some(lwm2m), Some(bs)) if bootstrap => {
                    let factory = match (&bootstrap_psk, ca) {
                        (Some(p), _) => psk_account(p.credentials(k, &endpoint)),
                        (None, Some(ca)) => certificate_account(ca, &endpoint, &anchor)?,
                        (None, None) => anyhow::bail!("group {name}: no bootstrap credentials"),
                    };
                    let account =
                        write_account(&mut spec.tree, ServerRole::Bootstrap, bs, &factory)
                            .with_context(|| format!("{endpoint}: the bootstrap-server account"))?;
                    let store = servers
                        .bootstrap_store
                        .as_ref()
                        .context("no in-process Bootstrap Server")?;
                    let written = (account, &spec.tree, &factory);
                    hand_over(store, &endpoint, server, &lwm2m, written)
                        .with_context(|| format!("group {name}"))?;
                }
                // Certificates go in here; PSKs came with the profile (`with_psk`).
                (Some(lwm2m @ SecureAccount::Certificate { .. }), _) => {
                    write_account(&mut spec.tree, ServerRole::Lwm2m, server, &lwm2m)
                        .with_context(|| format!("{endpoint}: the certificate account"))?;
                }
                _ => {}
            }
            fleet.add(name, spec);
        }
        fleets.push(fleet);
    }
    Ok(fleets)
}

/// Puts client `endpoint`'s configuration into the Bootstrap Server's `store`: the one
/// that applies to it, handing over `lwm2m` toward the LwM2M Server at `server`, with its
/// factory bootstrap account (instance `account` of `tree`, credentials `factory`) written
/// back unchanged.
fn hand_over(
    store: &FileBootstrapStore,
    endpoint: &str,
    server: SocketAddr,
    lwm2m: &SecureAccount,
    (account, tree, factory): (InstanceId, &ObjectTree, &SecureAccount),
) -> anyhow::Result<()> {
    let uri = match tree.get(&Lwm2mPath::Resource(SECURITY, account, ResourceId(0))) {
        Some(Value::String(uri)) => uri.clone(),
        _ => anyhow::bail!("{endpoint}: the bootstrap-server account has no URI"),
    };
    let (_, base) = store
        .lookup(endpoint)
        .with_context(|| format!("no bootstrap configuration applies to {endpoint}"))?;
    let config = secure_config(base, server, lwm2m, (account, uri), factory);
    store
        .put(ConfigKey::Endpoint(endpoint.to_owned()), config)
        .with_context(|| format!("the bootstrap configuration of {endpoint}"))
}

/// `OUT/<UTC time>-<name>`, made; `-2`, `-3`, ... when it exists already.
fn run_dir(out: &Path, name: &str, at: SystemTime) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let stem = format!("{}-{name}", output::utc_stamp(at));
    for n in 1..1000 {
        let dir = if n == 1 {
            out.join(&stem)
        } else {
            out.join(format!("{stem}-{n}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    anyhow::bail!("no free run folder name under {}", out.display())
}

/// A progress bar over the run's duration (hidden when stderr is not a terminal).
fn progress_bar(show: bool, duration: Duration) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs a plan and writes its report folder under `options.out`.
pub async fn run(
    plan: &Plan,
    registry: Arc<Registry>,
    options: &RunOptions,
) -> anyhow::Result<RunOutcome> {
    if options.shard.is_some()
        && let Some(why) = plan.shard_refusal()
    {
        anyhow::bail!("{}: --shard: {why}", plan.file.display());
    }
    let started = SystemTime::now();
    let shard = options.shard.unwrap_or_default();
    let dir = match &options.report_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None if options.shard.is_some() => {
            let name = format!(
                "{}-shard-{}-of-{}",
                plan.scenario.name, shard.index, shard.count
            );
            run_dir(&options.out, &name, started)?
        }
        None => run_dir(&options.out, &plan.scenario.name, started)?,
    };
    let capture = Arc::new(crate::record::capture::Capture::default());
    let bus = EventBus::new(1 << 16);
    // With both servers in process their sockets see every datagram; otherwise the fleet
    // records what its clients put on and take off the wire (never both: no duplicates).
    let servers_in_process = plan.scenario.servers.all_in_process();
    let server_tap: Option<Arc<dyn PacketTap>> = servers_in_process.then(|| capture.clone() as _);
    let fleet_tap = (!servers_in_process).then(|| Tap(capture.clone()));
    // One `keys.log` for every DTLS session of the run: the in-process listeners' and,
    // toward an external coaps:// server, the clients' own.
    let secure = &plan.scenario.servers;
    let key_log = match secure.dtls.is_some() || secure.external_secure() {
        true => {
            let keys = dir.join("keys.log");
            let file = KeyLogFile::append(&keys)
                .with_context(|| format!("creating {}", keys.display()))?;
            Some(Arc::new(file))
        }
        false => None,
    };
    let fleet_key_log = key_log
        .clone()
        .filter(|_| secure.external_secure())
        .map(|k| SessionKeyLog(k));
    // Ended (by PID) when the run is over, after everything else.
    let _processes = processes::Processes::start(&plan.scenario.processes, &dir)?;
    let hosts = server_hosts(&dir.to_string_lossy());
    let dtls = dtls_listeners(plan, &registry, options.seed, key_log, &[hosts.0, hosts.1])?;
    let servers = start_servers(
        plan,
        &registry,
        options.seed,
        &bus,
        server_tap,
        dtls.as_ref(),
        hosts,
    )?;
    let fleets = build_fleets(
        plan,
        &registry,
        options.seed,
        &servers,
        (fleet_tap, fleet_key_log),
        dtls.as_ref().and_then(|d| d.ca.as_ref()),
        shard,
    )?;

    let endpoints: Vec<Vec<String>> = (0..plan.groups.len())
        .map(|g| plan.endpoints(g, shard))
        .collect();
    // The first client of each group is the sample of the network-usage table.
    let watched: HashSet<String> = endpoints
        .iter()
        .filter_map(|e| e.first().cloned())
        .collect();
    let groups = endpoints
        .iter()
        .zip(&plan.groups)
        .flat_map(|(eps, g)| eps.iter().map(|e| (e.clone(), g.spec.name.clone())))
        .collect();
    let shared = Arc::new(metrics::Shared::default());
    wait_for_start(options.start_at).await;
    // The run's time origin: the interval log's StartTime, the charts' 0 s.
    let (t0, origin) = (Instant::now(), SystemTime::now());
    let (stop_collector, stop_rx) = tokio::sync::oneshot::channel();
    let collector = tokio::spawn(metrics::collect(
        bus.subscribe(),
        shared.clone(),
        metrics::Clients { watched, groups },
        t0,
        stop_rx,
    ));
    let handles: Vec<FleetHandle> = fleets
        .into_iter()
        .map(Fleet::start)
        .collect::<Result<_, _>>()
        .context("starting the fleet")?;
    let metrics_server = match options.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --metrics {addr}"))?;
            println!("metrics http://{}/metrics", listener.local_addr()?);
            let fleets = handles.clone();
            Some(tokio::spawn(lwm2m_server::metrics::serve_text(
                listener,
                move || crate::fleet_metrics::render(&fleet_total(&fleets)),
            )))
        }
        None => None,
    };

    let context = Arc::new(steps::Context {
        server: servers.server.clone(),
        fleets: handles.clone(),
        endpoints: endpoints.clone(),
        groups: plan.groups.iter().map(|g| g.spec.name.clone()).collect(),
        shared: shared.clone(),
        feature: plan.file.display().to_string(),
    });
    let mut timeline = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::from_std(t0);
    for mut step in plan.steps.clone() {
        // A step on the first n clients of a group: this shard's among them.
        step.clients = usize::try_from(shard.among(step.clients as u64)).unwrap_or(usize::MAX);
        let context = context.clone();
        timeline.spawn(async move {
            tokio::time::sleep_until(start + step.at).await;
            (step.number, context.run(step).await)
        });
    }

    let duration = plan.scenario.duration;
    let bar = progress_bar(options.progress, duration);
    let total: u64 = endpoints.iter().map(|e| e.len() as u64).sum();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let end = start + duration;
    // The clients over time, for the report's chart: every tick, at most ~500 points.
    let mut clients_over_time: Vec<report::charts::ClientsPoint> = Vec::new();
    let every = (duration.as_secs_f64() / 500.0).max(0.25);
    while tokio::time::Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(end) => {}
        }
        let c = fleet_total(&handles);
        let t_s = t0.elapsed().as_secs_f64();
        if clients_over_time
            .last()
            .is_none_or(|p| t_s - p.t_s >= every * 0.99)
        {
            // Asleep: radio off, by the profile's cycle, a queue-mode sleep or the
            // timeline's `sleep` (the fleet's gauge counts only the queue-mode state).
            let mut asleep = 0;
            for h in &handles {
                if let Ok(infos) = h.clients().await {
                    asleep += infos.iter().filter(|i| i.asleep).count() as u64;
                }
            }
            clients_over_time.push(report::charts::ClientsPoint {
                t_s,
                started: c.started,
                registered: c.registered,
                sleeping: asleep,
            });
        }
        bar.set_position(u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX));
        bar.set_message(format!(
            "registered {}/{total}  asleep {}  served {}  notified {}  datagrams {}",
            c.registered,
            c.sleeping,
            c.requests_served,
            c.notifications_sent,
            capture.len()
        ));
    }
    bar.set_message(format!("waiting for {} timeline actions", timeline.len()));
    let mut steps_done = timeline.join_all().await;
    steps_done.sort_by_key(|(number, _)| *number);
    let mut cases: Vec<CaseResult> = steps_done.into_iter().map(|(_, case)| case).collect();
    cases.extend(implicit_cases(
        plan,
        &context,
        &handles,
        &servers,
        options.shard,
    ));

    bar.set_message("stopping: every client de-registers");
    let mut reports = Vec::new();
    for h in &handles {
        reports.push(
            h.stop(Duration::from_secs(5))
                .await
                .context("stopping the fleet")?,
        );
    }
    if let Some(m) = metrics_server {
        m.abort();
    }
    let server_counters = match &servers.server {
        Some(s) => s.counters().await.ok(),
        None => None,
    };
    let secure_counters = match &servers.server {
        Some(s) => s.secure_counters().await.and_then(Result::ok),
        None => None,
    };
    let bootstrap_secure_counters = match &servers.bootstrap {
        Some(b) => b.secure_counters().await.and_then(Result::ok),
        None => None,
    };
    if let Some(s) = &servers.server {
        s.shutdown().await;
    }
    if let Some(b) = &servers.bootstrap {
        b.shutdown().await;
    }
    let _ = stop_collector.send(());
    let collected = collector.await.context("the event collector failed")?;
    bar.finish_and_clear();

    let run = output::Run {
        plan,
        options,
        started,
        origin,
        t0,
        elapsed: t0.elapsed(),
        servers: output::ServerInfo {
            server: servers.server_addr,
            dtls: servers.dtls_addr,
            server_in_process: servers.server.is_some(),
            bootstrap: servers.bootstrap_addr,
            bootstrap_dtls: servers.bootstrap_dtls_addr,
            bootstrap_in_process: servers.bootstrap.is_some(),
        },
        fleets: &reports,
        server_counters,
        secure_counters,
        bootstrap_secure_counters,
        collected,
        shared: &shared,
        unpaired: capture.unpaired(),
        packets: capture.take(),
        endpoints: &endpoints,
        cases,
        clients: clients_over_time,
    };
    let report = output::write(&dir, run)?;
    Ok(RunOutcome { dir, report })
}

fn fleet_total(handles: &[FleetHandle]) -> lwm2m_simulator::fleet::CountersSnapshot {
    let mut total = lwm2m_simulator::fleet::CountersSnapshot::default();
    for h in handles {
        total += h.total();
    }
    total
}

/// Cases every run has: each group's clients all registered (the fleet's count of clients
/// that registered at least once), and, for groups that bootstrap through the in-process
/// Bootstrap Server, every bootstrap finished.
fn implicit_cases(
    plan: &Plan,
    context: &steps::Context,
    handles: &[FleetHandle],
    servers: &Servers,
    shard: Option<Shard>,
) -> Vec<CaseResult> {
    let mut cases = Vec::new();
    let feature = plan.file.display().to_string();
    for (g, (group, handle)) in plan.groups.iter().zip(handles).enumerate() {
        let name = &group.spec.name;
        // The title names the whole group (the same in every shard, so that `report
        // merge` combines the shards' cases); the status is about this shard's clients.
        let total = group.spec.count;
        let count = context.endpoints.get(g).map_or(0, Vec::len);
        let c = handle.total();
        let registered = usize::try_from(c.clients_registered).unwrap_or(usize::MAX);
        let status = if registered >= count {
            Status::Passed
        } else {
            Status::Failed
        };
        let of_shard = shard.map_or_else(String::new, |s| format!("shard {s}: "));
        cases.push(CaseResult {
            case: format!("registration-{}", g + 1),
            title: format!("all {total} clients of {name} registered"),
            feature: feature.clone(),
            subject: name.clone(),
            status,
            message: Some(format!(
                "{of_shard}{registered}/{count} registered at least once; {} registered now, {} failed, {} Register/Update failures",
                c.registered, c.failed, c.failures
            )),
            evidence: steps::evidence(),
            findings: Vec::new(),
            duration_ms: 0.0,
        });
        if group.spec.bootstrap && servers.bootstrap.is_some() {
            let live = context.shared.lock();
            let done = context.endpoints.get(g).map_or(0, |e| {
                e.iter().filter(|e| live.bootstrapped.contains(*e)).count()
            });
            cases.push(CaseResult {
                case: format!("bootstrap-{}", g + 1),
                title: format!("all {total} clients of {name} bootstrapped"),
                feature: feature.clone(),
                subject: name.clone(),
                status: if done >= count {
                    Status::Passed
                } else {
                    Status::Failed
                },
                message: Some(format!(
                    "{done}/{count} Bootstrap-Finish answered 2.04 (Core TS 1.1 §6.1.4)"
                )),
                evidence: steps::evidence(),
                findings: Vec::new(),
                duration_ms: 0.0,
            });
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;
    use lwm2m_server::store::BootstrapDoc;

    #[test]
    fn server_hosts_are_the_runs_own_and_off_the_fleets_blocks() {
        let mut seen = std::collections::HashSet::new();
        for n in 0..500 {
            let (server, bootstrap) = server_hosts(&format!("reports/2026-12-06T04-00-00-run-{n}"));
            for ip in [server, bootstrap] {
                let [a, b, c, d] = ip.octets();
                assert_eq!((a, b), (127, 0), "{ip}");
                assert!(c >= 1 && (1..=254).contains(&d), "{ip}");
            }
            assert_eq!(u32::from(bootstrap), u32::from(server) + 1);
            seen.insert(server);
        }
        // Runs get addresses of their own.
        assert!(seen.len() > 450, "{}", seen.len());
        assert_eq!(server_hosts("x"), server_hosts("x"));
    }

    #[test]
    fn a_secure_configuration_keeps_the_settings_and_the_clients_bootstrap_account() {
        let doc = BootstrapDoc::from_yaml(
            "t",
            "patterns:\n  \"*\":\n    security:\n      0: { uri: \"coap://127.0.0.1:1\", mode: nosec, short_server_id: 1 }\n      1: { uri: \"coap://127.0.0.1:2\", bootstrap_server: true, mode: nosec }\n    servers:\n      0: { short_server_id: 1, lifetime: 77 }\n",
        )
        .unwrap();
        let base = doc.patterns.get("*").unwrap().clone();
        let bs_uri = "coaps://127.0.0.1:5784".to_owned();
        let config = secure_config(
            base,
            "127.0.0.1:5684".parse().unwrap(),
            &psk_account(("ep".into(), [1; 16])),
            (InstanceId(0), bs_uri.clone()),
            &psk_account(("bs-ep".into(), [2; 16])),
        );
        // The client's bootstrap-server account is at its instance 0: the server account
        // moves out of its way.
        assert_eq!(config.security.len(), 2);
        let server = config.security.get(&1).unwrap();
        assert_eq!(server.uri, "coaps://127.0.0.1:5684");
        assert_eq!(
            (
                server.mode,
                server.identity.as_str(),
                server.short_server_id
            ),
            (SecurityMode::Psk, "ep", Some(1))
        );
        assert_eq!(server.secret_key, "01".repeat(16));
        let account = config.security.get(&0).unwrap();
        assert!(account.bootstrap_server);
        assert_eq!(
            (account.uri.as_str(), account.identity.as_str()),
            (bs_uri.as_str(), "bs-ep")
        );
        assert_eq!(config.servers.get(&0).unwrap().lifetime, 77);
        // The Bootstrap Server's DTLS listener finds the key by identity.
        let store = Arc::new(FileBootstrapStore::in_memory(doc));
        store.put(ConfigKey::Endpoint("ep".into()), config).unwrap();
        let found = BootstrapCredentials(store)
            .by_psk_identity("bs-ep")
            .unwrap();
        assert_eq!(found.endpoint, "ep");
        assert_eq!(
            found.credentials,
            Credentials::Psk {
                identity: "bs-ep".into(),
                key: "02".repeat(16)
            }
        );
    }

    #[test]
    fn certificate_accounts_are_handed_over_in_hex() {
        let mut s = SecurityInstance {
            uri: "coaps://127.0.0.1:5684".into(),
            bootstrap_server: false,
            mode: SecurityMode::Psk,
            identity: "old".into(),
            server_public_key: String::new(),
            secret_key: "00".into(),
            short_server_id: Some(1),
            client_hold_off: None,
            bootstrap_account_timeout: None,
        };
        let account = SecureAccount::Certificate {
            certificate: vec![0x30, 0x01],
            private_key: vec![0xab],
            trust_anchor: vec![0xca],
        };
        set_credentials(&mut s, &account);
        assert_eq!(
            (
                s.mode,
                s.identity.as_str(),
                s.server_public_key.as_str(),
                s.secret_key.as_str()
            ),
            (SecurityMode::X509, "3001", "ca", "ab")
        );
        assert_eq!(s.short_server_id, Some(1), "the rest is kept");
    }
}
