//! `serve`: the LwM2M Server, the Bootstrap Server and the REST API in one process, with
//! their stores in a data folder; stops cleanly on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::RegistrationLimits;
use lwm2m_server::DtlsOptions;
use lwm2m_server::RegistrationStore;
use lwm2m_server::auth::{self, TokenSource};
use lwm2m_server::bootstrap::{BootstrapOptions, start_bootstrap};
use lwm2m_server::cluster::Cluster;
use lwm2m_server::driver::{ServerOptions, start_server};
use lwm2m_server::dtls::{CertificateConfig, KeyLog, KeyLogFile};
use lwm2m_server::events::EventBus;
use lwm2m_server::http::serve_api;
use lwm2m_server::rest::ApiState;
use lwm2m_server::store::redis::{
    RedisBootstrapStore, RedisConnection, RedisRegistrations, RedisSecurityStore,
};
use lwm2m_server::store::{
    BootstrapCredentials, BootstrapStore, FileBootstrapStore, FileSecurityStore, SecurityStore,
};

/// Arguments of `serve`; each can also come from the `--config` YAML file (flags win).
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// The DTLS listeners' certificate chain (PEM or DER, end-entity certificate first,
    /// ECDSA P-256) for certificate clients (Security mode 2); needs --cert-key and --ca
    /// [default: PSK only].
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PKCS#8, PEM or DER).
    #[arg(long, value_name = "FILE")]
    cert_key: Option<PathBuf>,
    /// The trust anchors client certificates must chain to (PEM, one or more
    /// certificates, or DER); a certificate client's endpoint name must be its subject CN.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The LwM2M Server's CoAP address [default: 127.0.0.1:5683].
    #[arg(long, value_name = "ADDR")]
    coap: Option<SocketAddr>,
    /// Also listen for CoAP over DTLS (PSK from the data folder's security store) here,
    /// e.g. 127.0.0.1:5684 [default: off].
    #[arg(long, value_name = "ADDR")]
    coaps: Option<SocketAddr>,
    /// Append the secrets of every DTLS session to this NSS key log (Wireshark:
    /// TLS "(Pre)-Master-Secret log filename") [default: none].
    #[arg(long, value_name = "FILE")]
    keylog: Option<PathBuf>,
    /// The Bootstrap Server's CoAP address [default: 127.0.0.1:5783].
    #[arg(long, value_name = "ADDR")]
    bootstrap: Option<SocketAddr>,
    /// Also listen for Bootstrap-Requests over DTLS here, e.g. 127.0.0.1:5784; PSK keys
    /// are the bootstrap-server accounts of the bootstrap configurations [default: off].
    #[arg(long, value_name = "ADDR")]
    bootstrap_coaps: Option<SocketAddr>,
    /// The REST API's HTTP address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// The data folder: credentials, bootstrap configurations, the API token
    /// [default: lwm2m-data].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The REST API's bearer token; without it, the one stored in the data folder, or a new
    /// one (printed once).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Allow browsers on this origin (`https://ops.example:8443`) to call the REST API
    /// with the bearer token (CORS); repeat for more [default: CORS off].
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors: Vec<String>,
    /// Where registrations, credentials and bootstrap configurations live: `file` (the
    /// data folder's files, registrations in memory) or `redis://HOST:PORT/DB` (shared by
    /// every `serve` instance of a cluster, see the README) [default: file].
    #[arg(long, value_name = "STORE")]
    store: Option<String>,
    /// This instance's name in a Redis cluster (unique among the instances)
    /// [default: a random one].
    #[arg(long, value_name = "NAME")]
    instance: Option<String>,
    /// A YAML file with any of: coap, coaps, keylog, bootstrap, bootstrap_coaps, cert,
    /// cert_key, ca, http, data (paths relative to the file), token, store, instance,
    /// limits (the
    /// LwM2M Server's registration limits: max_registrations,
    /// max_registrations_per_address, max_endpoint_length, max_links, max_payload,
    /// min_lifetime, max_lifetime), cors (a list of allowed origins).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The `--config` file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    coap: Option<SocketAddr>,
    coaps: Option<SocketAddr>,
    keylog: Option<PathBuf>,
    bootstrap: Option<SocketAddr>,
    bootstrap_coaps: Option<SocketAddr>,
    cert: Option<PathBuf>,
    cert_key: Option<PathBuf>,
    ca: Option<PathBuf>,
    http: Option<SocketAddr>,
    data: Option<PathBuf>,
    token: Option<String>,
    limits: Option<RegistrationLimits>,
    cors: Option<Vec<String>>,
    store: Option<String>,
    instance: Option<String>,
}

/// The settings in force.
#[derive(Debug, PartialEq)]
struct Settings {
    coap: SocketAddr,
    coaps: Option<SocketAddr>,
    keylog: Option<PathBuf>,
    bootstrap: SocketAddr,
    bootstrap_coaps: Option<SocketAddr>,
    cert: Option<PathBuf>,
    cert_key: Option<PathBuf>,
    ca: Option<PathBuf>,
    http: SocketAddr,
    data: PathBuf,
    token: Option<String>,
    limits: RegistrationLimits,
    cors: Vec<String>,
    store: Option<String>,
    instance: Option<String>,
}

fn load_file(path: &Path) -> anyhow::Result<ServeFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| match e.location() {
        Some(l) => anyhow::anyhow!("{}:{}:{}: {e}", path.display(), l.line(), l.column()),
        None => anyhow::anyhow!("{}: {e}", path.display()),
    })
}

fn settings(args: &ServeArgs) -> anyhow::Result<Settings> {
    let file = match &args.config {
        Some(p) => {
            let mut f = load_file(p)?;
            // Relative paths in the file are relative to the file.
            let base = p.parent().unwrap_or(Path::new(""));
            for path in [&mut f.data, &mut f.cert, &mut f.cert_key, &mut f.ca] {
                *path = path.take().map(|d| base.join(d));
            }
            f
        }
        None => ServeFile::default(),
    };
    let addr = |s: &str| s.parse::<SocketAddr>().context("default address");
    Ok(Settings {
        coap: args
            .coap
            .or(file.coap)
            .map_or_else(|| addr("127.0.0.1:5683"), Ok)?,
        coaps: args.coaps.or(file.coaps),
        keylog: args.keylog.clone().or(file.keylog),
        bootstrap: args
            .bootstrap
            .or(file.bootstrap)
            .map_or_else(|| addr("127.0.0.1:5783"), Ok)?,
        bootstrap_coaps: args.bootstrap_coaps.or(file.bootstrap_coaps),
        cert: args.cert.clone().or(file.cert),
        cert_key: args.cert_key.clone().or(file.cert_key),
        ca: args.ca.clone().or(file.ca),
        http: args
            .http
            .or(file.http)
            .map_or_else(|| addr("127.0.0.1:8080"), Ok)?,
        data: args
            .data
            .clone()
            .or(file.data)
            .unwrap_or_else(|| PathBuf::from("lwm2m-data")),
        token: args.token.clone().or(file.token),
        limits: file.limits.unwrap_or_default(),
        cors: if args.cors.is_empty() {
            file.cors.unwrap_or_default()
        } else {
            args.cors.clone()
        },
        store: args.store.clone().or(file.store).filter(|s| s != "file"),
        instance: args.instance.clone().or(file.instance),
    })
}

/// The DTLS listeners' certificate configuration from --cert, --cert-key and --ca: all
/// three or none.
fn certificate(s: &Settings) -> anyhow::Result<Option<CertificateConfig>> {
    let (cert, key, ca) = match (&s.cert, &s.cert_key, &s.ca) {
        (None, None, None) => return Ok(None),
        (Some(cert), Some(key), Some(ca)) => (cert, key, ca),
        _ => anyhow::bail!(
            "certificates need all of --cert (chain), --cert-key (its PKCS#8 key) and --ca \
             (the trust anchors of client certificates)"
        ),
    };
    if s.coaps.is_none() && s.bootstrap_coaps.is_none() {
        anyhow::bail!("--cert needs a DTLS listener: --coaps or --bootstrap-coaps");
    }
    lwm2m_harness::certificate_config(cert, key, ca).map(Some)
}

/// Runs until SIGTERM or Ctrl-C.
pub fn run(registry: Registry, args: &ServeArgs) -> anyhow::Result<()> {
    let settings = settings(args)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // rtc-dtls warns about every ClientHello extension it does not know
                // (libcoap sends two): errors only from it.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rtc_dtls=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve(Arc::new(registry), settings))
}

async fn serve(registry: Arc<Registry>, s: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&s.data)
        .with_context(|| format!("creating the data folder {}", s.data.display()))?;
    let stores = stores(&s).await?;
    let security = stores.security.clone();
    let bootstrap_store = stores.bootstrap.clone();
    let (token, source) = auth::load_or_create_token(&s.data, s.token.as_deref())?;
    let bus = EventBus::default();

    let mut server_options = ServerOptions::new(s.coap, registry.clone());
    server_options.bus = bus.clone();
    if let Some(registrations) = &stores.registrations {
        server_options.registrations = registrations.clone();
    }
    // The seed of ids and tokens comes from the OS (ServerOptions::new): nothing to guess.
    server_options.config.limits = s.limits.clone();
    // Tables sized for the configured bound from the start: no registration waits on a
    // rehash (the memory is reserved, and only touched as clients register).
    server_options.config.registration_capacity = s.limits.max_registrations;
    let key_log = match &s.keylog {
        Some(path) => Some(Arc::new(
            KeyLogFile::append(path)
                .with_context(|| format!("opening the key log {}", path.display()))?,
        ) as Arc<dyn KeyLog>),
        None => None,
    };
    let certificate = certificate(&s)?;
    server_options.dtls = s.coaps.map(|addr| DtlsOptions {
        key_log: key_log.clone(),
        certificate: certificate.clone(),
        ..DtlsOptions::new(addr, security.clone())
    });
    let server = start_server(server_options).with_context(|| match s.coaps {
        Some(coaps) => format!("binding the LwM2M Server to {} and {coaps}", s.coap),
        None => format!("binding the LwM2M Server to {}", s.coap),
    })?;
    if let Some(registrations) = &stores.registrations {
        // After a restart: the registrations this instance owned, with their observations.
        let owned = registrations.owned();
        if !owned.is_empty() {
            tracing::info!("taking up {} registrations owned before", owned.len());
        }
        for entry in owned {
            let observations = registrations.observations_of(&entry.registration.endpoint);
            server.restore(entry.registration, observations).await?;
        }
    }
    let mut bs_options = BootstrapOptions::new(s.bootstrap, bootstrap_store.clone());
    bs_options.bus = bus.clone();
    // The LwM2M Server in this process must know the credentials handed out.
    bs_options.provision = Some(security.clone());
    bs_options.dtls = s.bootstrap_coaps.map(|addr| DtlsOptions {
        key_log: key_log.clone(),
        certificate: certificate.clone(),
        ..DtlsOptions::new(
            addr,
            Arc::new(BootstrapCredentials(bootstrap_store.clone())),
        )
    });
    let bootstrap = start_bootstrap(bs_options).with_context(|| match s.bootstrap_coaps {
        Some(coaps) => format!(
            "binding the Bootstrap Server to {} and {coaps}",
            s.bootstrap
        ),
        None => format!("binding the Bootstrap Server to {}", s.bootstrap),
    })?;
    let listener = tokio::net::TcpListener::bind(s.http)
        .await
        .with_context(|| format!("binding the REST API to {}", s.http))?;
    let http = listener.local_addr()?;

    let token_line = match source {
        TokenSource::Configured => "as configured".to_owned(),
        TokenSource::Stored => format!("stored in {}", s.data.join(auth::TOKEN_FILE).display()),
        TokenSource::Generated => format!(
            "{token} (new; stored in {})",
            s.data.join(auth::TOKEN_FILE).display()
        ),
    };
    let modes = match certificate {
        Some(_) => "PSK, certificates",
        None => "PSK",
    };
    println!("lwm2m-harness serve");
    println!("  LwM2M Server      coap://{}", server.local_addr());
    if let Some(coaps) = server.dtls_addr() {
        println!("  LwM2M Server      coaps://{coaps} ({modes})");
    }
    println!("  Bootstrap Server  coap://{}", bootstrap.local_addr());
    if let Some(coaps) = bootstrap.dtls_addr() {
        println!("  Bootstrap Server  coaps://{coaps} ({modes})");
    }
    println!("  REST API          http://{http}/api");
    println!("  web UI            http://{http}/ (log in with the token)");
    println!("  metrics           http://{http}/metrics (bearer token)");
    println!("  data              {}", s.data.display());
    if let Some(cluster) = &stores.cluster {
        println!(
            "  store             {} (instance {})",
            stores.description,
            cluster.instance()
        );
    }
    println!("  token             {token_line}");
    use std::io::Write;
    std::io::stdout().flush()?;

    let state = ApiState {
        server: server.clone(),
        security,
        bootstrap: bootstrap_store,
        registry,
        bus,
        token,
        web: lwm2m_server::ui::WebOptions { cors: s.cors },
        cluster: stores.cluster.clone(),
    };
    if let Some(cluster) = &stores.cluster {
        cluster.run(server.clone(), state.bus.clone(), state.registry.clone());
    }
    serve_api(listener, state, stop_signal()).await?;
    tracing::info!("stopping");
    server.shutdown().await;
    bootstrap.shutdown().await;
    // The stores were written on every change: nothing left to flush.
    println!("stopped");
    Ok(())
}

/// The stores `--store` names.
struct Stores {
    security: Arc<dyn SecurityStore>,
    bootstrap: Arc<dyn BootstrapStore>,
    /// `None`: in memory (the default of the server options).
    registrations: Option<Arc<dyn RegistrationStore>>,
    cluster: Option<Arc<Cluster>>,
    /// The Redis server, for the banner (no credentials).
    description: String,
}

async fn stores(s: &Settings) -> anyhow::Result<Stores> {
    let Some(url) = &s.store else {
        return Ok(Stores {
            security: Arc::new(FileSecurityStore::open(s.data.join("security.yaml"))?),
            bootstrap: Arc::new(FileBootstrapStore::open(s.data.join("bootstrap.yaml"))?),
            registrations: None,
            cluster: None,
            description: "file".into(),
        });
    };
    if !url.starts_with("redis://") {
        anyhow::bail!("--store {url:?}: expected `file` or redis://HOST:PORT/DB");
    }
    let redis = RedisConnection::open(url).context("connecting to the Redis store")?;
    let instance = match &s.instance {
        Some(i) if !i.is_empty() && !i.contains([':', ' ']) => i.clone(),
        Some(i) => anyhow::bail!("--instance {i:?}: a non-empty name without ':' or spaces"),
        None => {
            format!("{:012x}", auth::os_seed() & 0xffff_ffff_ffff)
        }
    };
    let registrations = Arc::new(RedisRegistrations::new(redis.clone(), instance));
    let cluster = Cluster::join(redis.clone(), registrations.clone())
        .await
        .context("joining the cluster in Redis")?;
    // The URL may carry a password: the banner shows host and database only.
    let description = url
        .rsplit_once('@')
        .map_or(url.clone(), |(_, host)| format!("redis://{host}"));
    Ok(Stores {
        security: Arc::new(RedisSecurityStore::new(redis.clone())),
        bootstrap: Arc::new(RedisBootstrapStore::new(redis)),
        registrations: Some(registrations),
        cluster: Some(cluster),
        description,
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("serve.yaml");
        std::fs::write(
            &cfg,
            "coap: 127.0.0.1:1\nhttp: 127.0.0.1:2\ndata: d\nbootstrap_coaps: 127.0.0.1:3\n\
             limits: { max_registrations: 10, max_lifetime: 600 }\n",
        )
        .unwrap();
        let args = ServeArgs {
            coap: Some("127.0.0.1:9".parse().unwrap()),
            config: Some(cfg.clone()),
            ..ServeArgs::default()
        };
        let s = settings(&args).unwrap();
        assert_eq!(s.coap.port(), 9);
        assert_eq!(s.http.port(), 2);
        assert_eq!(s.bootstrap.port(), 5783);
        assert_eq!(s.coaps, None);
        assert_eq!(s.bootstrap_coaps.map(|a| a.port()), Some(3));
        assert_eq!(s.data, dir.path().join("d"));
        assert_eq!(s.limits.max_registrations, 10);
        assert_eq!(s.limits.max_lifetime, 600);
        assert_eq!(
            s.limits.max_registrations_per_address,
            RegistrationLimits::default().max_registrations_per_address
        );
        std::fs::write(&cfg, "coap: 127.0.0.1:1\nlimits: { max_regs: 1 }\n").unwrap();
        let err = settings(&args).unwrap_err().to_string();
        assert!(
            err.contains("serve.yaml:2") && err.contains("max_regs"),
            "{err}"
        );
        assert!(s.cors.is_empty(), "CORS is off by default");
        std::fs::write(
            &cfg,
            "cors: [\"http://a.example\", \"http://b.example:3000\"]\n",
        )
        .unwrap();
        assert_eq!(
            settings(&args).unwrap().cors,
            ["http://a.example", "http://b.example:3000"]
        );
        let flagged = ServeArgs {
            cors: vec!["http://c.example".into()],
            config: Some(cfg.clone()),
            ..ServeArgs::default()
        };
        assert_eq!(settings(&flagged).unwrap().cors, ["http://c.example"]);
        std::fs::write(&cfg, "coap: 127.0.0.1:1\ntokn: x\n").unwrap();
        let err = settings(&args).unwrap_err().to_string();
        assert!(
            err.contains("serve.yaml:2") && err.contains("tokn"),
            "{err}"
        );
    }
}
