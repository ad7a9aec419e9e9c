//! `simulate`: a fleet of simulated clients against a server, with live counters once a
//! second and a summary (registrations, failures, Register and Update latencies) at the end.
//!
//! With `--server coaps://...` and `--psk-identity PATTERN` every client talks CoAP over DTLS
//! with PSK credentials of its own (Security Mode 0, Core TS 1.1 §7.1.7): the identity from
//! the pattern (`{n}` the client number, `{ep}` the endpoint name), a 16-byte key derived
//! from `--psk-key-seed` and the identity ([`PskPattern`]). `--print-credentials FILE`
//! writes them as a JSON list of the server's security entries
//! (`{"endpoint", "credentials": {"mode": "psk", "identity", "key"}}`), each one ready for
//! `PUT /api/security/clients`. `--cert-ca FILE --cert-ca-key FILE` instead give every
//! client a certificate of its own from that CA (Security Mode 2, subject CN the endpoint
//! name, [`lwm2m_dtls::pki::TestCa::from_der`]); `--server-ca` is the trust anchor for the
//! server's certificate (default: the CA).
//!
//! With `--bootstrap coaps://...`, `--bootstrap-psk-identity PATTERN` and
//! `--bootstrap-psk-key HEX` every client bootstraps over DTLS with that identity and key
//! in a bootstrap-server account (Security Mode 0), and talks to its LwM2M Server with what
//! the Bootstrap Server hands over.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Args;
use lwm2m_dtls::pki::TestCa;
use lwm2m_harness::accounts::ServerRole;
use lwm2m_harness::accounts::write_account;
use lwm2m_harness::der_block;
use lwm2m_proto::registry::Registry;
use lwm2m_simulator::config::file_stem;
use lwm2m_simulator::fleet::{
    CountersSnapshot, FailureCause, Fleet, FleetConfig, FleetReport, Latencies, ProfileClients,
    PskPattern, Shard, Targets,
};
use lwm2m_simulator::network::{NetworkModel, load_network};
use lwm2m_simulator::profile::load_profile;
use lwm2m_simulator::quirks::{QuirkPacks, QuirkRef, load_quirk_pack};
use lwm2m_simulator::scenarios::yaml_files;

/// Arguments of `simulate`.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The LwM2M Server, `coap://HOST:PORT` (port 5683 when left out) or
    /// `coaps://HOST:PORT` (5684; needs `--psk-identity` or `--cert-ca`). It must be on this
    /// machine: the fleet sends from 127.0.0.0/8 loopback addresses.
    #[arg(long)]
    server: Option<String>,
    /// A Bootstrap Server, `coap://HOST:PORT` or `coaps://HOST:PORT` (5684; needs
    /// `--bootstrap-psk-identity` and `--bootstrap-psk-key`): the clients bootstrap first.
    #[arg(long)]
    bootstrap: Option<String>,
    // The help says `{n}`, which clap would print as a line break (placeholder_help).
    #[arg(long, help = placeholder_help(
        "With a `coaps://` Bootstrap Server: each client's PSK identity toward it, `{n}` \
         standing for the client number and `{ep}` for the endpoint name, e.g. `bs-{ep}`"
    ))]
    bootstrap_psk_identity: Option<String>,
    /// With a `coaps://` Bootstrap Server: the PSK key (hex) of every client toward it, the
    /// group key of a fallback bootstrap configuration.
    #[arg(long, value_name = "HEX")]
    bootstrap_psk_key: Option<String>,
    /// How many clients.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// A device profile: a name under SCENARIOS/profiles/ or shipped (sensor-1.1,
    /// minimal-1.0, ...), or a YAML file.
    #[arg(long)]
    profile: String,
    /// Quirks or quirk packs (names under SCENARIOS/quirks/ or shipped) the clients show on
    /// top of the profile's own, comma-separated, e.g. `sloppy-encoder` or
    /// `ignore-accept,late-responses` (quirks with their default parameters). A quirk that
    /// respells something the profile says (queue binding, pre-1.0 format numbers, the
    /// pre-1.0 Location) respells it.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    quirks: Vec<String>,
    /// A network model: a name under SCENARIOS/networks/ or shipped (home-nat, lossy,
    /// ...), or a YAML file (default: a perfect network).
    #[arg(long)]
    network: Option<String>,
    /// Endpoint names are this prefix and the client number (default: the profile's).
    #[arg(long)]
    endpoint_prefix: Option<String>,
    /// The endpoint name of the one client (with `--clients 1`), e.g. a device under test
    /// started by `test --device-cmd '... --endpoint {endpoint}'`.
    #[arg(long, conflicts_with = "endpoint_prefix")]
    endpoint: Option<String>,
    /// How long the clients run before they de-register, e.g. 60s, 5m.
    #[arg(long, default_value = "60s", value_parser = lwm2m_simulator::duration::parse)]
    duration: Duration,
    /// The seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Clients started per second, e.g. `1000/s` (default: all at once).
    #[arg(long, value_parser = parse_rate)]
    ramp: Option<f64>,
    /// UDP sockets the clients share.
    #[arg(long, default_value_t = 16)]
    sockets: usize,
    #[arg(long, help = placeholder_help(
        "With a `coaps://` server: each client's PSK identity, `{n}` standing for the client \
         number and `{ep}` for the endpoint name, e.g. `ep-{n}`"
    ))]
    psk_identity: Option<String>,
    /// The seed the 16-byte PSK keys are derived from (with each identity; default: --seed).
    #[arg(long)]
    psk_key_seed: Option<u64>,
    /// Instead of keys derived from a seed: this PSK key (hex) for every client, with
    /// `--psk-identity` (e.g. `--psk-identity {psk_identity} --psk-key {psk_key}` in a
    /// `test --device-cmd` template).
    #[arg(
        long,
        value_name = "HEX",
        requires = "psk_identity",
        conflicts_with = "psk_key_seed"
    )]
    psk_key: Option<String>,
    /// With a `coaps://` server, instead of PSKs: a CA certificate (PEM or DER) that issues
    /// every client a certificate of its own, subject CN the endpoint name (Security Mode
    /// 2); the server must trust this CA. Needs --cert-ca-key.
    #[arg(long, value_name = "FILE")]
    cert_ca: Option<PathBuf>,
    /// The --cert-ca certificate's private key (PKCS#8, PEM or DER).
    #[arg(long, value_name = "FILE")]
    cert_ca_key: Option<PathBuf>,
    /// The certificate the server's chain must lead to (PEM or DER; default: --cert-ca).
    #[arg(long, value_name = "FILE")]
    server_ca: Option<PathBuf>,
    /// Writes every client's endpoint, PSK identity and key (hex) to this JSON file, a list
    /// of entries for the server's `PUT /api/security/clients`.
    #[arg(long)]
    print_credentials: Option<PathBuf>,
    /// The scenarios folder (profiles/, networks/, quirks/): its files add to the shipped
    /// ones and override those of the same name.
    #[arg(long, default_value = "scenarios")]
    scenarios: PathBuf,
    /// Serve the fleet's live counters at http://ADDR/metrics (Prometheus text format, no
    /// token: bind it to loopback), e.g. 127.0.0.1:9464 [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Exit status 1 unless at least this many clients registered at some point: a
    /// number, or a percentage of --clients such as `95%` [default: every client].
    #[arg(long, value_name = "N|P%", value_parser = parse_share)]
    min_registered: Option<Share>,
    /// Exit status 1 when the 99th percentile of Register latency is above this, e.g.
    /// `500ms`, `2s` [default: no limit].
    #[arg(long, value_name = "DURATION", value_parser = lwm2m_simulator::duration::parse)]
    max_register_p99: Option<Duration>,
    /// Exit status 1 when the 99th percentile of Update latency is above this [default: no
    /// limit].
    #[arg(long, value_name = "DURATION", value_parser = lwm2m_simulator::duration::parse)]
    max_update_p99: Option<Duration>,
    /// Run shard K of N of the fleet (K from 0): the clients K, K+N, K+2N, ... of
    /// --clients, with the endpoint names, seeds and PSKs they have in one process, so that
    /// N shards (processes, machines, Kubernetes pods) together are the same fleet. The
    /// thresholds apply to this shard's clients.
    #[arg(long, value_name = "K/N", value_parser = Shard::parse)]
    shard: Option<Shard>,
    /// Start the clients at this moment (RFC 3339, e.g. 2026-12-06T05:00:00Z), so that all
    /// shards start on the same clock [default: at once].
    #[arg(long, value_name = "RFC3339", value_parser = lwm2m_harness::report::parse_rfc3339)]
    start_at: Option<SystemTime>,
    /// Write a run folder here: report.json/html, junit.xml, latencies.hlog (Register and
    /// Update latencies per second), failures.json and endpoints.txt; `report merge`
    /// merges the folders of several shards.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// A count of clients, absolute or a share of the fleet.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Share {
    Count(u64),
    Percent(f64),
}

impl Share {
    /// How many of `of` clients this is (a percentage rounds up).
    fn of(self, of: usize) -> u64 {
        match self {
            Self::Count(n) => n,
            Self::Percent(p) => (p / 100.0 * of as f64).ceil() as u64,
        }
    }
}

/// Why a `simulate` argument (a share of the fleet, a rate) is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
enum ArgError {
    /// `N%` outside 0% to 100%, or not a number.
    #[error("{text:?}: a percentage from 0% to 100%")]
    Percent {
        /// The argument.
        text: String,
    },
    /// Neither a count nor a percentage.
    #[error("{text:?}: a number of clients, or a percentage such as 95%")]
    Share {
        /// The argument.
        text: String,
    },
    /// A rate whose number is not a number.
    #[error("invalid rate {text:?}: write e.g. 1000/s")]
    RateNumber {
        /// The argument.
        text: String,
    },
    /// A rate per something other than a second, a minute or an hour.
    #[error("invalid rate {text:?}: the unit is /s, /m or /h")]
    RateUnit {
        /// The argument.
        text: String,
    },
    /// A rate of zero, below, or not finite.
    #[error("invalid rate {text:?}: must be positive")]
    RateNotPositive {
        /// The argument.
        text: String,
    },
}

/// `40` or `95%`.
fn parse_share(s: &str) -> Result<Share, ArgError> {
    let text = || s.to_owned();
    if let Some(p) = s.strip_suffix('%') {
        match p.trim().parse::<f64>() {
            Ok(p) if (0.0..=100.0).contains(&p) => Ok(Share::Percent(p)),
            _ => Err(ArgError::Percent { text: text() }),
        }
    } else {
        s.trim()
            .parse()
            .map(Share::Count)
            .map_err(|_| ArgError::Share { text: text() })
    }
}

/// Help text that shows `{n}` as written: clap replaces every `{n}` in help with a line
/// break, so the placeholder is printed bold in two styled spans, `{` and `n}`, whose
/// escape codes part the two (and are stripped when the output is not a terminal).
fn placeholder_help(text: &str) -> clap::builder::StyledStr {
    let b = clap::builder::styling::Style::new().bold();
    text.replace("{n}", &format!("{b}{{{b:#}{b}n}}{b:#}"))
        .into()
}

/// `1000/s`, `1000`, `50/m`.
fn parse_rate(s: &str) -> Result<f64, ArgError> {
    let text = || s.to_owned();
    let (n, per) = s.split_once('/').unwrap_or((s, "s"));
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| ArgError::RateNumber { text: text() })?;
    let seconds = match per.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(ArgError::RateUnit { text: text() }),
    };
    if n > 0.0 && n.is_finite() {
        Ok(n / seconds)
    } else {
        Err(ArgError::RateNotPositive { text: text() })
    }
}

/// `coap://HOST:PORT` to a socket address (IPv4 preferred) and false, `coaps://HOST:PORT`
/// to one and true (the scenario runner's reading).
fn parse_coap_uri(uri: &str) -> anyhow::Result<(SocketAddr, bool)> {
    lwm2m_harness::runner::scenario::parse_coap_uri(uri).map_err(anyhow::Error::msg)
}

/// The CA that issues the clients' certificates and the trust anchor for the server's,
/// from --cert-ca, --cert-ca-key and --server-ca.
fn client_ca(args: &SimulateArgs) -> anyhow::Result<Option<(TestCa, Vec<u8>)>> {
    let (cert, key) = match (&args.cert_ca, &args.cert_ca_key, &args.server_ca) {
        (None, None, None) => return Ok(None),
        (Some(cert), Some(key), _) => (cert, key),
        _ => {
            bail!("client certificates need --cert-ca and --cert-ca-key (--server-ca is optional)")
        }
    };
    let der = der_block(cert, &["CERTIFICATE"])?;
    let ca = TestCa::from_der(&der, &der_block(key, &["PRIVATE KEY"])?)
        .with_context(|| format!("{} and {}", cert.display(), key.display()))?;
    let anchor = match &args.server_ca {
        Some(path) => der_block(path, &["CERTIFICATE"])?,
        None => der,
    };
    Ok(Some((ca, anchor)))
}

/// A YAML file: `arg` itself if it is a file, else `NAME.yaml` under the user's `folder`
/// (`--scenarios`), else the shipped one (`shipped` is e.g. `scenarios/profiles`).
fn find_yaml(folder: &Path, shipped: &str, arg: &str, what: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(arg);
    if path.is_file() {
        return Ok(path.to_owned());
    }
    let mut names = Vec::new();
    if folder.is_dir() {
        let files = yaml_files(folder).with_context(|| format!("looking for {what} {arg:?}"))?;
        if let Some(f) = files.iter().find(|f| file_stem(f) == arg) {
            return Ok(f.clone());
        }
        names.extend(files.iter().map(|f| file_stem(f)));
    }
    let shipped_names = lwm2m_harness::shipped::names(shipped);
    if shipped_names.iter().any(|n| n == arg) {
        return Ok(lwm2m_harness::shipped::folder(shipped)?.join(format!("{arg}.yaml")));
    }
    names.extend(shipped_names);
    names.sort();
    names.dedup();
    bail!(
        "no {what} {arg:?}: not a file, not in {}, not shipped; the {what}s are: {}",
        folder.display(),
        names.join(", ")
    )
}

/// The shipped quirk packs, then those of the user's `folder` (which override them).
fn quirk_packs(folder: &Path) -> anyhow::Result<QuirkPacks> {
    let mut packs = QuirkPacks::new();
    let shipped = lwm2m_harness::shipped::folder("scenarios/quirks")?;
    for dir in [shipped.as_path(), folder] {
        if dir.is_dir() {
            for f in yaml_files(dir)? {
                let (name, pack) = load_quirk_pack(&f)?;
                packs.insert(name, pack);
            }
        }
    }
    Ok(packs)
}

/// Runs `simulate`; exit status 1 when a threshold failed ([`verdict`]).
pub fn run(registry: Registry, args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    if args.server.is_none() && args.bootstrap.is_none() {
        bail!("give --server or --bootstrap (or both)");
    }
    let server = args
        .server
        .as_deref()
        .map(|u| parse_coap_uri(u).context("--server"))
        .transpose()?;
    let secure = server.is_some_and(|(_, secure)| secure);
    let certificates = client_ca(args)?;
    if secure != (args.psk_identity.is_some() || certificates.is_some()) {
        bail!("a coaps:// --server needs --psk-identity or --cert-ca (and only it does)");
    }
    if args.psk_identity.is_some() && certificates.is_some() {
        bail!("--psk-identity or --cert-ca: one kind of credentials");
    }
    let bootstrap = args
        .bootstrap
        .as_deref()
        .map(|u| parse_coap_uri(u).context("--bootstrap"))
        .transpose()?;
    let bootstrap_psk = match (
        bootstrap.is_some_and(|(_, secure)| secure),
        &args.bootstrap_psk_identity,
        &args.bootstrap_psk_key,
    ) {
        (true, Some(identity), Some(key)) => {
            let key = lwm2m_proto::value::parse_hex(key)
                .filter(|k| !k.is_empty())
                .with_context(|| format!("--bootstrap-psk-key {key:?}: not non-empty hex"))?;
            Some((identity, key))
        }
        (false, None, None) => None,
        _ => bail!(
            "a coaps:// --bootstrap, --bootstrap-psk-identity and --bootstrap-psk-key go together"
        ),
    };
    let targets = Targets {
        server: server.map(|(a, _)| a),
        bootstrap: bootstrap.map(|(a, _)| a),
    };
    // A folder the user named must be there; the default one may not be (outside a
    // checkout: the shipped files alone).
    if args.scenarios != Path::new("scenarios") {
        std::fs::read_dir(&args.scenarios)
            .with_context(|| format!("--scenarios {}", args.scenarios.display()))?;
    }
    let packs = quirk_packs(&args.scenarios.join("quirks"))?;
    let profile = load_profile(
        &find_yaml(
            &args.scenarios.join("profiles"),
            "scenarios/profiles",
            &args.profile,
            "profile",
        )?,
        &packs,
    )?;
    let profile = if args.quirks.is_empty() {
        profile
    } else {
        let extra: Vec<QuirkRef> = args
            .quirks
            .iter()
            .map(|q| QuirkRef::from_name(q.trim()))
            .collect();
        profile
            .with_quirks(&extra, &packs)
            .with_context(|| format!("--quirks {}", args.quirks.join(",")))?
    };
    let network = match &args.network {
        Some(n) => {
            let file = find_yaml(
                &args.scenarios.join("networks"),
                "scenarios/networks",
                n,
                "network",
            )?;
            load_network(&file)?.1
        }
        None => NetworkModel::default(),
    };
    if args.endpoint.is_some() && args.clients != 1 {
        bail!("--endpoint names one client: give --clients 1");
    }
    let psk_key = args
        .psk_key
        .as_deref()
        .map(|k| {
            lwm2m_proto::value::parse_hex(k)
                .filter(|k| !k.is_empty())
                .with_context(|| format!("--psk-key {k:?}: not non-empty hex"))
        })
        .transpose()?;
    let name = profile.name.clone();
    let mut clients = ProfileClients::new(profile, &registry, network, targets)?;
    if let Some(prefix) = &args.endpoint_prefix {
        clients = clients.with_endpoint_prefix(prefix);
    }
    if let Some((identity, key)) = &bootstrap_psk {
        clients = clients.with_bootstrap_psk(identity, key);
    }
    if let Some(identity) = &args.psk_identity {
        clients = clients.with_psk(PskPattern {
            identity: identity.clone(),
            seed: args.psk_key_seed.unwrap_or(args.seed),
        });
    }
    if let Some(file) = &args.print_credentials {
        let list = lwm2m_harness::runner::security_entries(&clients, args.clients as u64);
        std::fs::write(file, serde_json::to_string_pretty(&list)?)
            .with_context(|| format!("writing {}", file.display()))?;
    }
    let shard = args.shard.unwrap_or_default();
    let mut fleet = Fleet::new(FleetConfig {
        seed: args.seed,
        ramp: args.ramp,
        sockets: args.sockets,
        first_address: shard.first_address(FleetConfig::default().first_address),
        // Latency over time for the run folder's interval log.
        timed_latencies: args.out.is_some(),
        shard,
        ..FleetConfig::default()
    });
    let mut endpoints = Vec::new();
    for k in shard.numbers(args.clients as u64) {
        let mut spec = clients.spec(k, args.seed);
        if let Some(endpoint) = &args.endpoint {
            spec.config.endpoint.clone_from(endpoint);
        }
        if let (Some(key), Some(identity), Some((server, _))) =
            (&psk_key, &args.psk_identity, server)
        {
            let endpoint = spec.config.endpoint.clone();
            let identity = identity
                .replace("{n}", &k.to_string())
                .replace("{ep}", &endpoint);
            let account = lwm2m_harness::accounts::SecureAccount::Psk {
                identity: identity.into_bytes(),
                key: key.clone(),
            };
            write_account(&mut spec.tree, ServerRole::Lwm2m, server, &account)
                .with_context(|| format!("{endpoint}: the PSK account"))?;
        }
        if let (Some((ca, anchor)), Some((server, _))) = (&certificates, server) {
            let endpoint = clients.endpoint(k);
            let account = lwm2m_harness::runner::certificate_account(ca, &endpoint, anchor)?;
            write_account(&mut spec.tree, ServerRole::Lwm2m, server, &account)
                .with_context(|| format!("{endpoint}: the certificate account"))?;
        }
        endpoints.push(spec.config.endpoint.clone());
        fleet.add(&name, spec);
    }
    if args.shard.is_some() {
        println!(
            "shard {shard}: {} of {} clients (numbers {}, {}, ...)",
            fleet.len(),
            args.clients,
            shard.index,
            shard.index + shard.count
        );
    }
    let shard_clients = fleet.len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let started = SystemTime::now();
    let (before_stop, report, origin) =
        runtime.block_on(drive(fleet, args.duration, args.metrics, args.start_at))?;
    print_summary(&before_stop, &report);
    if let Some(out) = &args.out {
        let folder = Folder {
            args,
            shard,
            started,
            origin,
            elapsed: started.elapsed().unwrap_or_default(),
            profile: &name,
            endpoints: &endpoints,
        };
        write_folder(out, &folder, &report)?;
        println!("run folder {}", out.display());
    }
    let failed = verdict(args, shard_clients, &report);
    for why in &failed {
        eprintln!("threshold failed: {why}");
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The thresholds the run failed: fewer clients registered than --min-registered (every
/// client by default), a p99 latency above --max-register-p99 or --max-update-p99.
fn verdict(args: &SimulateArgs, clients: usize, report: &FleetReport) -> Vec<String> {
    let mut failed = Vec::new();
    let registered = report.total().clients_registered;
    let need = args
        .min_registered
        .map_or(clients as u64, |s| s.of(clients));
    if registered < need {
        failed.push(format!(
            "{registered} of {clients} clients registered, {need} needed{}",
            if registered == 0 {
                " (is the server running at that address?)"
            } else {
                ""
            }
        ));
    }
    let l = report.latencies();
    for (what, limit, p99) in [
        ("Register", args.max_register_p99, l.register_quantile(0.99)),
        ("Update", args.max_update_p99, l.update_quantile(0.99)),
    ] {
        match (limit, p99) {
            (Some(limit), Some(p99)) if p99 > limit => failed.push(format!(
                "{what} p99 {} above the limit {}",
                ms(Some(p99)),
                ms(Some(limit))
            )),
            (Some(limit), None) => failed.push(format!(
                "no {what} latency measured, limit {}",
                ms(Some(limit))
            )),
            _ => {}
        }
    }
    failed
}

/// Runs the fleet for `duration` (from `start_at` when given); returns the counters just
/// before the stop, the final report and when the clients started.
async fn drive(
    fleet: Fleet,
    duration: Duration,
    metrics: Option<std::net::SocketAddr>,
    start_at: Option<SystemTime>,
) -> anyhow::Result<(CountersSnapshot, FleetReport, SystemTime)> {
    let listener = match metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --metrics {addr}"))?,
        ),
        None => None,
    };
    lwm2m_harness::runner::wait_for_start(start_at).await;
    let origin = SystemTime::now();
    let start = Instant::now();
    let handle = fleet.start()?;
    let metrics = match listener {
        Some(l) => {
            println!("metrics http://{}/metrics", l.local_addr()?);
            let h = handle.clone();
            Some(tokio::spawn(lwm2m_server::metrics::serve_text(
                l,
                move || lwm2m_harness::fleet_metrics::render(&h.total()),
            )))
        }
        None => None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let end = tokio::time::sleep(duration);
    tokio::pin!(end);
    let mut last = CountersSnapshot::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = handle.total();
                println!("{}", live_line(start.elapsed(), &now, &last));
                if now.failures > 0 {
                    println!("  failures: {}", causes_line(&handle.failures()));
                }
                last = now;
            }
            () = &mut end => break,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted: de-registering");
                break;
            }
        }
    }
    let before_stop = handle.total();
    let report = handle.stop(Duration::from_secs(10)).await;
    if let Some(m) = metrics {
        m.abort();
    }
    Ok((before_stop, report?, origin))
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What a shard's run folder is made of, besides the fleet's report.
struct Folder<'a> {
    args: &'a SimulateArgs,
    shard: Shard,
    started: SystemTime,
    /// When the clients started: 0 s of the interval log.
    origin: SystemTime,
    elapsed: Duration,
    profile: &'a str,
    endpoints: &'a [String],
}

/// Writes the run folder of a `simulate` run (`--out`): report.json/html, junit.xml,
/// latencies.hlog, failures.json, endpoints.txt.
fn write_folder(dir: &Path, f: &Folder<'_>, fleet: &FleetReport) -> anyhow::Result<()> {
    use lwm2m_harness::record::Latencies as Recorded;
    use lwm2m_harness::report::merge::{
        ENDPOINTS_FILE, FAILURES_FILE, FAILURES_SECTION, Failure, HLOG_FILE, failures_text,
    };
    use lwm2m_harness::report::{RunReport, SCHEMA_VERSION, Section, Subject, ThroughputPoint};

    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut recorded = Recorded::new();
    let mut per_second: std::collections::BTreeMap<u64, u64> = Default::default();
    for p in &fleet.profiles {
        for t in &p.latencies.samples {
            let at = t.at.duration_since(f.origin).unwrap_or_default();
            let op = if t.update { "update" } else { "register" };
            recorded.record_at(op, Some(&p.profile), at, t.latency);
            *per_second.entry(at.as_secs()).or_default() += 1;
        }
    }
    let mut hlog = Vec::new();
    recorded.write_log(&mut hlog, f.origin)?;
    std::fs::write(dir.join(HLOG_FILE), hlog).context("writing latencies.hlog")?;
    let failures: Vec<Failure> = fleet
        .failures()
        .into_iter()
        .map(|c| Failure {
            cause: c.cause,
            count: c.count,
            example: c.example,
        })
        .collect();
    std::fs::write(
        dir.join(FAILURES_FILE),
        serde_json::to_string_pretty(&failures)?,
    )
    .context("writing failures.json")?;
    let endpoints: String = f.endpoints.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(dir.join(ENDPOINTS_FILE), endpoints).context("writing endpoints.txt")?;

    let mut counters = std::collections::BTreeMap::new();
    for (k, v) in lwm2m_harness::runner::snapshot_fields(&fleet.total()) {
        counters.insert(format!("fleet.{k}"), v);
    }
    for p in &fleet.profiles {
        for (k, v) in lwm2m_harness::runner::snapshot_fields(&p.counters) {
            counters.insert(format!("group.{}.{k}", p.profile), v);
        }
    }
    let mut sections = vec![Section::new(
        "Shard",
        format!(
            "shard {} of a fleet of {} clients: {} clients here, seed {}, against {}",
            f.shard,
            f.args.clients,
            f.endpoints.len(),
            f.args.seed,
            f.args
                .server
                .as_deref()
                .or(f.args.bootstrap.as_deref())
                .unwrap_or("-"),
        ),
    )];
    if !failures.is_empty() {
        sections.push(Section::new(FAILURES_SECTION, failures_text(&failures)));
    }
    let report = RunReport {
        schema: SCHEMA_VERSION,
        run: dir.file_name().map_or_else(
            || "simulate".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        ),
        title: format!("simulate {} x{}", f.profile, f.args.clients),
        started_unix_s: epoch_secs(f.started),
        duration_s: f.elapsed.as_secs_f64(),
        seed: f.args.seed,
        product_version: env!("CARGO_PKG_VERSION").to_owned(),
        git_revision: lwm2m_harness::report::git_revision(),
        hostname: lwm2m_harness::report::hostname(),
        subjects: vec![Subject {
            id: f.profile.to_owned(),
            kind: "simulated-client".to_owned(),
            version: format!("lwm2m-harness {}", env!("CARGO_PKG_VERSION")),
            address: None,
        }],
        cases: Vec::new(),
        latencies: ["register", "update"]
            .into_iter()
            .filter_map(|op| Some((op.to_owned(), recorded.summary(op)?)))
            .collect(),
        throughput: per_second
            .into_iter()
            .map(|(t, ops)| ThroughputPoint {
                t_s: t as f64 + epoch_secs(f.origin) - epoch_secs(f.started),
                ops,
            })
            .collect(),
        network_usage: Vec::new(),
        network_usage_client: None,
        charts: Default::default(),
        counters,
        sections,
    };
    report.write(dir)
}

/// One line of live counters; rates are per second since `last`.
fn live_line(elapsed: Duration, c: &CountersSnapshot, last: &CountersSnapshot) -> String {
    format!(
        "t={:>4}s started={} registered={} sleeping={} bootstrapping={} failed={} \
         served={} notified={} updates/s={} in={}B/s out={}B/s dtls={}/{} fallbacks={}",
        elapsed.as_secs(),
        c.started,
        c.registered,
        c.sleeping,
        c.bootstrapping,
        c.failed,
        c.requests_served,
        c.notifications_sent,
        c.updates.saturating_sub(last.updates),
        c.bytes_in.saturating_sub(last.bytes_in),
        c.bytes_out.saturating_sub(last.bytes_out),
        c.dtls_handshakes,
        c.dtls_failures,
        c.version_fallbacks,
    )
}

/// `register 4.03 x12, register timeout after 4 retransmissions x3`.
fn causes_line(causes: &[FailureCause]) -> String {
    causes
        .iter()
        .map(|c| format!("{} x{}", c.cause, c.count))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.1}ms", d.as_secs_f64() * 1e3),
    )
}

fn print_summary(before_stop: &CountersSnapshot, report: &FleetReport) {
    let t = report.total();
    let l: Latencies = report.latencies();
    println!(
        "summary: clients={} ever-registered={} registered-at-end={} failed={} registrations={} \
         updates={} deregistrations={} failures={} served={} notified={} \
         dropped(asleep/nat/loss)={}/{}/{} rebinds={} dtls-handshakes={} dtls-failures={} \
         version-fallbacks={}",
        t.clients,
        t.clients_registered,
        before_stop.registered,
        before_stop.failed,
        t.registrations,
        t.updates,
        t.deregistrations,
        t.failures,
        t.requests_served,
        t.notifications_sent,
        t.dropped_asleep,
        t.dropped_nat,
        t.dropped_loss,
        t.rebinds,
        t.dtls_handshakes,
        t.dtls_failures,
        t.version_fallbacks,
    );
    for c in report.failures() {
        println!("failures: {} x{}  e.g. {}", c.cause, c.count, c.example);
    }
    println!(
        "latency: register p50={} p99={} (n={})  update p50={} p99={} (n={})",
        ms(l.register_quantile(0.5)),
        ms(l.register_quantile(0.99)),
        l.register.len(),
        ms(l.update_quantile(0.5)),
        ms(l.update_quantile(0.99)),
        l.update.len(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_uris() {
        assert_eq!(parse_rate("1000/s"), Ok(1000.0));
        assert_eq!(parse_rate("60/m"), Ok(1.0));
        assert_eq!(parse_rate("5"), Ok(5.0));
        assert_eq!(
            parse_rate("0/s"),
            Err(ArgError::RateNotPositive { text: "0/s".into() })
        );
        assert_eq!(
            parse_rate("x/s"),
            Err(ArgError::RateNumber { text: "x/s".into() })
        );
        assert_eq!(
            parse_rate("5/d").unwrap_err().to_string(),
            "invalid rate \"5/d\": the unit is /s, /m or /h"
        );
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            parse_coap_uri("coap://127.0.0.1:5783").unwrap(),
            (addr("127.0.0.1:5783"), false)
        );
        assert_eq!(
            parse_coap_uri("coap://127.0.0.1").unwrap(),
            (addr("127.0.0.1:5683"), false)
        );
        assert_eq!(
            parse_coap_uri("coaps://127.0.0.1").unwrap(),
            (addr("127.0.0.1:5684"), true)
        );
        let bad = parse_coap_uri("http://127.0.0.1").unwrap_err().to_string();
        assert_eq!(
            bad,
            "\"http://127.0.0.1\": expected coap://HOST[:PORT] or coaps://HOST[:PORT]"
        );
        assert_eq!(parse_share("40"), Ok(Share::Count(40)));
        assert_eq!(parse_share("95%"), Ok(Share::Percent(95.0)));
        assert!(parse_share("101%").is_err());
        assert!(parse_share("x").is_err());
        assert_eq!(Share::Percent(95.0).of(10), 10);
        assert_eq!(Share::Percent(50.0).of(10), 5);
        assert_eq!(Share::Count(3).of(10), 3);
    }
}
