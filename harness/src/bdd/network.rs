//! The network backend: the same parties as [`super::inprocess`] behind real UDP sockets
//! and real time.
//!
//! - [`DeviceBackend`] ([`Subject::Device`]): our LwM2M Server and Bootstrap Server (the
//!   `lwm2m_server` drivers) listen on UDP; the device under test registers with them by
//!   itself. The servers live for the whole run (a device registers once, not once per
//!   scenario): they start with the first scenario, print their addresses on stderr, and
//!   that scenario waits (bounded by [`DEVICE_WAIT`]) for the device to register. The
//!   scenario's client is the device; steps that need control of the client itself are
//!   not applicable.
//! - [`ServerBackend`] ([`Subject::Server`]): our simulated clients (sans-IO
//!   [`Lwm2mClient`] machines, each on its own loopback socket) register with the external
//!   server; what steps ask of the server (operations, registrations, events) goes through
//!   its [`ServerAdapter`] (`--server-api`, [`super::adapter`]), off the stepping thread;
//!   what the adapter lacks, or without one, is not applicable.
//!
//! DTLS against a server under test (`--server-coaps coaps://HOST:PORT` beside a `coap://`
//! `--server`, or `--server coaps://HOST:PORT` for a server that only takes DTLS; the same
//! for `--bootstrap-server`): a case's client with a `coaps://` account handshakes with
//! the server's DTLS address from its own socket through a [`ClientLink`] (the DTLS client
//! link of the in-process backend, [`super::secure`]); the LwM2M Server's PSKs go through
//! the adapter ([`ServerAdapter::put_psk`], removed after the scenario), a Bootstrap
//! Server's into the endpoint's bootstrap configuration as its Bootstrap-Server account.
//! The client's side reports the handshake (`Established`, failures) and a 4.03 to a
//! Register or Bootstrap-Request inside the session (`Refused`); the server's reasons for
//! a failed handshake come through adapters offering `security-events`. Certificate cases
//! are not applicable (the server would have to trust the run's test CA).
//!
//! Both record every real datagram in the [`ExchangeLog`] (the drivers' packet tap, or the
//! clients' sockets). Time is real: [`Backend::step`] blocks until something is reported
//! or its deadline; a wait longer than [`max_real_wait`] is not applicable unless the
//! scenario is tagged `@long-wait` (see [`super::world`]).
//!
//! DTLS for a device: with `LWM2M_HARNESS_COAPS_BIND` our LwM2M Server also listens for
//! CoAP over DTLS, with the device's PSK (`LWM2M_HARNESS_DEVICE_PSK=IDENTITY:HEXKEY`) or
//! certificates (`LWM2M_HARNESS_CERT`, `LWM2M_HARNESS_CERT_KEY`, `LWM2M_HARNESS_CA`), and
//! the exchange log shows each record with the CoAP inside (`device_dtls`).
//!
//! A device the harness starts (`--device-cmd`, [`super::device`]): our servers listen on
//! loopback free ports (unless the variables below say otherwise) and do not wait; the
//! device starts when a case starts its client, and the case waits (bounded) for its
//! Register. Its process exiting during a case is a reboot if the case executed /3/0/4;
//! either way the harness starts it again. A template with `{psk_identity}`/`{psk_key}`
//! gets a DTLS listener and a PSK generated from the seed, and the PSK cases (int-401,
//! core-7.1.8) start it with the case's own identity and key (our listener's events are
//! the handshakes the steps wait for); one with `{bootstrap_uri}` and
//! no `{server_uri}` bootstraps from our Bootstrap Server, which gives it an account on our
//! LwM2M Server unless the case gives its own configuration.
//!
//! What it does not do: TCP; for a device, the DTLS cases of the suite (they give both
//! sides credentials of their own) unless the harness starts it; for a server under test,
//! certificates, raw public keys and making it forget its sessions; reset a device between
//! cases (a real device keeps what a case wrote); more than one device per process (the
//! servers and their wait are started once).
//!
//! Settings (environment): `LWM2M_HARNESS_BIND` and `LWM2M_HARNESS_BOOTSTRAP_BIND` (where
//! our servers listen for a device, default `0.0.0.0:0`: any free port, printed),
//! `LWM2M_HARNESS_DEVICE_WAIT` (seconds to wait for the device, default 60),
//! `LWM2M_HARNESS_MAX_WAIT` (seconds a step may wait in real time, default 5).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lwm2m_proto::Lwm2mPath;
use lwm2m_proto::bootstrap::{BootstrapConfig, BootstrapError};
use lwm2m_proto::client::{ClientEvent, ClientState, Lwm2mClient};
use lwm2m_proto::coap::Packet;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{ObservationId, OpError, OpId, Operation, Registration, ServerEvent};
use lwm2m_server::store::{BootstrapDoc, BootstrapStore, ConfigKey, FileBootstrapStore};
use lwm2m_server::{
    BootstrapHandle, BootstrapOptions, DriverError, Event, SecurityEvent, ServerHandle,
    ServerOptions,
};
use lwm2m_simulator::NetworkModel;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};

use super::adapter::json::parse_identity;
use super::adapter::{Feature, RegistrationView, ServerAdapter};
use super::backend::{
    Backend, Capability, ClientAction, ClientSpec, DtlsHappening, DtlsSide, Happening, ServerRole,
    ServerView, Subject, Timed,
};
use super::exchange::{ExchangeLog, Peer};
use super::secure::{self, ClientLink};
use super::world::not_applicable;
use crate::accounts::{SecureAccount, write_account};
use lwm2m_dtls::{ClientEvent as DtlsClientEvent, DtlsClient};

/// How long the first scenario waits for the device under test to register, by default.
pub const DEVICE_WAIT: Duration = Duration::from_secs(60);

/// Why client-control steps are not applicable to a device.
pub const DEVICE_NOT_OURS: &str = "the device under test is not under our control";

/// Why server-API steps are not applicable to an external server.
pub const SERVER_NOT_OURS: &str = "the server under test is driven by its own operator";

/// The longest wait a real-time step may do (`LWM2M_HARNESS_MAX_WAIT`, default 5 s);
/// longer ones are not applicable.
pub fn max_real_wait() -> Duration {
    env_secs("LWM2M_HARNESS_MAX_WAIT").unwrap_or(Duration::from_secs(5))
}

fn env_secs(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

fn env_addr(name: &str) -> Result<SocketAddr, String> {
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|e| format!("{name}={v:?}: {e}")),
        Err(_) => Ok(SocketAddr::from(([0, 0, 0, 0], 0))),
    }
}

/// The runtime every network backend of the process runs its sockets on.
fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("lwm2m-net-backend")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the network runtime: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The drivers' packet tap: every datagram, and on the DTLS listener each application
/// record's plaintext paired with its datagram (the runner's recorder).
type Tap = crate::record::capture::Capture;

/// Now, as time since the Unix epoch.
fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// What the happenings channel carries: a happening stamped with the wall clock.
type Stamped = (Instant, Happening);

/// Our servers for a device, shared by every scenario of the run.
struct DeviceServers {
    server: ServerHandle,
    bootstrap: BootstrapHandle,
    store: Arc<FileBootstrapStore>,
    tap: Arc<Tap>,
    /// The DTLS listener's security store, if our LwM2M Server has one.
    security: Option<Arc<lwm2m_server::store::FileSecurityStore>>,
}

/// The type of the DTLS settings with the security store they read.
type DeviceDtls = (
    lwm2m_server::DtlsOptions,
    Arc<lwm2m_server::store::FileSecurityStore>,
);

fn device_servers(
    endpoint: &str,
    registry: Arc<Registry>,
) -> Result<&'static DeviceServers, String> {
    static SERVERS: OnceLock<Result<DeviceServers, String>> = OnceLock::new();
    SERVERS
        .get_or_init(|| start_device_servers(endpoint, registry))
        .as_ref()
        .map_err(Clone::clone)
}

/// Our LwM2M Server's DTLS listener for the device, from the environment:
/// `LWM2M_HARNESS_COAPS_BIND` (where; none: no listener), the device's PSK
/// `LWM2M_HARNESS_DEVICE_PSK=IDENTITY:HEXKEY`, and for certificates
/// `LWM2M_HARNESS_CERT`, `LWM2M_HARNESS_CERT_KEY` (our server's chain and PKCS#8 key) and
/// `LWM2M_HARNESS_CA` (the anchors of the device's certificate, whose CN must be its
/// endpoint name); PEM or DER files.
///
/// A launched device whose template names a PSK ([`super::device`]) gets the listener
/// (on `LWM2M_HARNESS_COAPS_BIND`, else a free loopback port) with its generated PSK.
fn device_dtls(endpoint: &str) -> Result<Option<DeviceDtls>, String> {
    use lwm2m_server::store::{Credentials, FileSecurityStore, SecurityInfo, SecurityStore as _};
    let launched_psk = super::device::with(|l| l.psk()).flatten();
    let bind = match std::env::var("LWM2M_HARNESS_COAPS_BIND") {
        Ok(bind) => bind,
        Err(_) if launched_psk.is_some() => "127.0.0.1:0".to_owned(),
        Err(_) => return Ok(None),
    };
    let bind: SocketAddr = bind
        .parse()
        .map_err(|e| format!("LWM2M_HARNESS_COAPS_BIND={bind:?}: {e}"))?;
    let security = FileSecurityStore::in_memory();
    if let Some((identity, key)) = launched_psk {
        let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
        security
            .put(SecurityInfo {
                endpoint: endpoint.to_owned(),
                credentials: Credentials::Psk { identity, key },
            })
            .map_err(|e| format!("the launched device's PSK: {e}"))?;
    } else if let Ok(psk) = std::env::var("LWM2M_HARNESS_DEVICE_PSK") {
        let (identity, key) = psk
            .rsplit_once(':')
            .filter(|(_, k)| lwm2m_proto::value::parse_hex(k).is_some_and(|k| !k.is_empty()))
            .ok_or("LWM2M_HARNESS_DEVICE_PSK: give IDENTITY:HEXKEY")?;
        security
            .put(SecurityInfo {
                endpoint: endpoint.to_owned(),
                credentials: Credentials::Psk {
                    identity: identity.to_owned(),
                    key: key.to_owned(),
                },
            })
            .map_err(|e| format!("LWM2M_HARNESS_DEVICE_PSK: {e}"))?;
    }
    let path = |name: &str| std::env::var_os(name).map(std::path::PathBuf::from);
    let certificate = match (
        path("LWM2M_HARNESS_CERT"),
        path("LWM2M_HARNESS_CERT_KEY"),
        path("LWM2M_HARNESS_CA"),
    ) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(ca)) => {
            Some(crate::certificate_config(&cert, &key, &ca).map_err(|e| format!("{e:#}"))?)
        }
        _ => {
            return Err(
                "certificates need LWM2M_HARNESS_CERT, LWM2M_HARNESS_CERT_KEY and \
                        LWM2M_HARNESS_CA together"
                    .to_owned(),
            );
        }
    };
    let security = Arc::new(security);
    let mut options = lwm2m_server::DtlsOptions::new(bind, security.clone());
    options.certificate = certificate;
    Ok(Some((options, security)))
}

fn start_device_servers(endpoint: &str, registry: Arc<Registry>) -> Result<DeviceServers, String> {
    let rt = runtime()?;
    let tap = Arc::new(Tap::default());
    let store = Arc::new(FileBootstrapStore::in_memory(BootstrapDoc::default()));
    // A device the harness starts runs on this machine: loopback unless told otherwise.
    let launched = super::device::launch().is_some();
    let default_bind = |name: &str| {
        if launched && std::env::var(name).is_err() {
            Ok(SocketAddr::from(([127, 0, 0, 1], 0)))
        } else {
            env_addr(name)
        }
    };
    let (bind, bootstrap_bind) = (
        default_bind("LWM2M_HARNESS_BIND")?,
        default_bind("LWM2M_HARNESS_BOOTSTRAP_BIND")?,
    );
    let _guard = rt.enter();
    let mut options = ServerOptions::new(bind, registry);
    options.tap = Some(tap.clone());
    let (dtls, security) = device_dtls(endpoint)?.unzip();
    options.dtls = dtls;
    let server = lwm2m_server::start_server(options)
        .map_err(|e| format!("cannot start our LwM2M Server on {bind}: {e}"))?;
    let mut options = BootstrapOptions::new(bootstrap_bind, store.clone());
    options.tap = Some(tap.clone());
    let bootstrap = lwm2m_server::start_bootstrap(options)
        .map_err(|e| format!("cannot start our Bootstrap Server on {bootstrap_bind}: {e}"))?;
    let wait = env_secs("LWM2M_HARNESS_DEVICE_WAIT").unwrap_or(DEVICE_WAIT);
    let listening = format!(
        "lwm2m-harness: LwM2M Server listening on coap://{}{}, Bootstrap Server on coap://{}",
        server.local_addr(),
        server
            .dtls_addr()
            .map(|a| format!(" and coaps://{a}"))
            .unwrap_or_default(),
        bootstrap.local_addr()
    );
    if launched {
        // The harness starts the device when a case starts its client.
        eprintln!("{listening}; the harness starts device {endpoint:?}");
        return Ok(DeviceServers {
            server,
            bootstrap,
            store,
            tap,
            security,
        });
    }
    eprintln!("{listening}; waiting up to {wait:?} for device {endpoint:?} to register");
    let deadline = Instant::now() + wait;
    let mut events = server.subscribe();
    while server.registrations().get(endpoint).is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "device {endpoint:?} did not register with our LwM2M Server (coap://{}) \
                 within {wait:?}",
                server.local_addr()
            ));
        }
        // Any event (or a lag, or the time-out) is a reason to look at the store again.
        let _ = rt.block_on(tokio::time::timeout(
            left.min(Duration::from_millis(200)),
            events.recv(),
        ));
    }
    Ok(DeviceServers {
        server,
        bootstrap,
        store,
        tap,
        security,
    })
}

/// The device under test behind our real servers (see the module documentation).
pub struct DeviceBackend {
    subject: Subject,
    device: String,
    servers: &'static DeviceServers,
    t0: Instant,
    /// `t0` as time since the Unix epoch, the recorder's clock.
    t0_unix: Duration,
    log: ExchangeLog,
    happenings: VecDeque<Timed>,
    tx: mpsc::UnboundedSender<Stamped>,
    rx: mpsc::UnboundedReceiver<Stamped>,
    next_op: u64,
    /// The scenario's name for the device (the first client a scenario adds).
    alias: Option<String>,
    /// The harness starts the device ([`super::device`]).
    launched: bool,
    /// The placeholders of the device's last start in this scenario (to start it again
    /// after it exits).
    started_with: Option<super::device::Placeholders>,
    /// The scenario gave our Bootstrap Server a configuration for the device.
    bootstrap_configured: bool,
    /// The scenario executed Reboot (/3/0/4) and the device has not shown it rebooted.
    reboot_pending: bool,
    /// The PSK identity and key the scenario gives the launched device (instead of its
    /// generated ones).
    case_psk: Option<(Vec<u8>, Vec<u8>)>,
    /// The DTLS sessions our LwM2M Server established.
    sessions: Arc<std::sync::Mutex<Sessions>>,
}

/// The DTLS sessions of our LwM2M Server with the device.
#[derive(Debug, Default)]
struct Sessions {
    /// Identity by client address.
    identities: HashMap<SocketAddr, lwm2m_dtls::Identity>,
    /// The address of the latest session.
    last: Option<SocketAddr>,
}

impl std::fmt::Debug for DeviceBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBackend")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl DeviceBackend {
    /// Our servers for the device `subject` names (started and awaited with the first
    /// scenario); `Err` says why there are none.
    pub fn open(subject: &Subject, registry: Arc<Registry>) -> Result<Self, String> {
        let Subject::Device { endpoint } = subject else {
            return Err(format!("{} is not a device", subject.id()));
        };
        let servers = device_servers(endpoint, registry)?;
        let rt = runtime()?;
        servers.tap.take();
        let (tx, rx) = mpsc::unbounded_channel();
        let forward = tx.clone();
        let mut events = servers.server.subscribe();
        let mut bootstrap_events = servers.bootstrap.subscribe();
        let device = endpoint.clone();
        let sessions: Arc<std::sync::Mutex<Sessions>> = Arc::default();
        let known = sessions.clone();
        rt.spawn(async move {
            loop {
                // Ends with the scenario (its backend drops the receiver).
                let event = tokio::select! {
                    e = events.recv() => e,
                    e = bootstrap_events.recv() => e,
                    () = forward.closed() => return,
                };
                let event = match event {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let now = Instant::now();
                let happenings = match &*event {
                    // Outcomes come from our own requests, with our own ids.
                    Event::Server(ServerEvent::Completed { .. }) => Vec::new(),
                    Event::Server(e @ ServerEvent::Registered { registration, .. }) => {
                        let evidence = registration.endpoint == device;
                        let mut v = vec![Happening::Server(e.clone())];
                        if evidence {
                            v.push(device_registered(&device, &registration.id));
                        }
                        v
                    }
                    Event::Server(e) => vec![Happening::Server(e.clone())],
                    Event::Bootstrap(e) => vec![Happening::Bootstrap(e.clone())],
                    Event::Security(role, e) => {
                        if let SecurityEvent::Established { peer, identity } = e {
                            let mut known = known
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            known.identities.insert(*peer, parse_identity(identity));
                            known.last = Some(*peer);
                        }
                        // The device under test is the one client of the run: every session is its.
                        super::secure::dtls_happening(*role, e, |_| device.clone())
                            .map(Happening::Dtls)
                            .into_iter()
                            .collect()
                    }
                    _ => Vec::new(),
                };
                for h in happenings {
                    if forward.send((now, h)).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Self {
            subject: subject.clone(),
            device: endpoint.clone(),
            servers,
            t0: Instant::now(),
            t0_unix: unix_now(),
            log: ExchangeLog::default(),
            happenings: VecDeque::new(),
            tx,
            rx,
            next_op: 0,
            alias: None,
            launched: super::device::launch().is_some(),
            started_with: None,
            bootstrap_configured: false,
            reboot_pending: false,
            case_psk: None,
            sessions,
        })
    }

    fn elapsed(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.t0)
    }

    /// A launched device's evidence that it rebooted after Execute /3/0/4: its process
    /// exited, it de-registered, or it registered anew.
    fn rebooted(&mut self, at: Duration) {
        if std::mem::take(&mut self.reboot_pending) {
            self.happenings.push_back(Timed {
                at,
                happening: Happening::Client {
                    endpoint: self.device.clone(),
                    event: ClientEvent::Rebooting,
                },
            });
        }
    }

    /// A launched device whose process exited during the scenario is started again (a
    /// Reboot that ends the process, or a crash).
    fn watch_process(&mut self) {
        if !self.launched {
            return;
        }
        let Some(Some(exit)) = super::device::with(|l| l.poll_exit()) else {
            return;
        };
        let at = self.now();
        self.log.note(at, &exit);
        self.rebooted(at);
        if let Some(values) = self.started_with.clone() {
            let restarted = super::device::with(|l| l.start(&values).map_err(|e| format!("{e:#}")));
            let note = match restarted {
                Some(Ok(pid)) => format!("the harness started the device again (process {pid})"),
                Some(Err(e)) => format!("the harness could not start the device again: {e}"),
                None => "the device's launcher is gone".to_owned(),
            };
            self.log.note(at, &note);
        }
    }

    /// Moves the tapped datagrams and the reported happenings in.
    fn drain(&mut self) {
        self.watch_process();
        let server = self.servers.server.local_addr();
        let dtls = self.servers.server.dtls_addr();
        let bootstrap = self.servers.bootstrap.local_addr();
        // A received DTLS record's plaintext follows its datagram: leave the newest
        // undecrypted ones for the next drain.
        for raw in self.servers.tap.take_settled(Duration::from_millis(100)) {
            let inner = raw.plaintext.first().map(|p| &p[..]);
            let (raw_from, raw_to) = (raw.src, raw.dst);
            let name = |a: SocketAddr| {
                if a == server || Some(a) == dtls {
                    "server".to_owned()
                } else if a == bootstrap {
                    "bootstrap".to_owned()
                } else {
                    self.device.clone()
                }
            };
            let (src, dst) = (name(raw_from), name(raw_to));
            // The recorder stamps wall-clock time.
            let at = raw.at.saturating_sub(self.t0_unix);
            let (from, to) = (
                Peer {
                    name: &src,
                    addr: raw_from,
                },
                Peer {
                    name: &dst,
                    addr: raw_to,
                },
            );
            if dtls.is_some_and(|d| raw_from == d || raw_to == d) {
                self.log.secure_datagram(at, from, to, &raw.bytes, inner);
            } else {
                self.log.datagram(at, from, to, &raw.bytes);
            }
        }
        while let Ok((at, happening)) = self.rx.try_recv() {
            let at = self.elapsed(at);
            self.arrived(at, happening);
        }
    }

    /// A happening from the servers: a launched device's Register is noted by its
    /// launcher, and its De-register or new Register after a Reboot is the reboot.
    fn arrived(&mut self, at: Duration, happening: Happening) {
        if self.launched {
            match &happening {
                Happening::Server(ServerEvent::Registered {
                    registration,
                    replaced,
                }) if registration.endpoint == self.device => {
                    let announced = registration.clone();
                    super::device::with(|l| l.remember(announced));
                    if replaced.is_some() {
                        self.rebooted(at);
                    }
                }
                Happening::Server(ServerEvent::Deregistered { registration })
                    if registration.endpoint == self.device =>
                {
                    self.rebooted(at);
                }
                _ => {}
            }
        }
        self.happenings.push_back(Timed { at, happening });
    }

    /// The values of the placeholders for a start of the launched device.
    fn placeholders(&self) -> super::device::Placeholders {
        let plain = self.servers.server.local_addr();
        let psk = match &self.case_psk {
            Some((identity, key)) => {
                Some((String::from_utf8_lossy(identity).into_owned(), key.clone()))
            }
            None => super::device::with(|l| l.psk()).flatten(),
        };
        let server = match (&psk, self.servers.server.dtls_addr()) {
            (Some(_), Some(dtls)) => dtls,
            _ => plain,
        };
        let host = |a: SocketAddr| {
            if a.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                a.ip().to_string()
            }
        };
        let scheme = if psk.is_some() { "coaps" } else { "coap" };
        let bootstrap = self.servers.bootstrap.local_addr();
        let (psk_identity, psk_key) = psk.map_or_else(Default::default, |(identity, key)| {
            (identity, key.iter().map(|b| format!("{b:02x}")).collect())
        });
        super::device::Placeholders {
            endpoint: self.device.clone(),
            server_host: host(server),
            server_port: server.port(),
            server_uri: format!("{scheme}://{}:{}", host(server), server.port()),
            bootstrap_uri: format!("coap://{}:{}", host(bootstrap), bootstrap.port()),
            local_port: super::device::free_udp_port(),
            psk_identity,
            psk_key,
        }
    }

    /// The configuration our Bootstrap Server gives a bootstrap-only launched device when
    /// the case gives none: an account on our LwM2M Server (NoSec, or its PSK over DTLS).
    fn default_bootstrap_config(&self) -> BootstrapConfig {
        use lwm2m_proto::bootstrap::{SecurityInstance, SecurityMode, ServerInstance};
        let values = self.placeholders();
        let (mode, identity, secret_key) = if values.psk_identity.is_empty() {
            (SecurityMode::NoSec, String::new(), String::new())
        } else {
            (SecurityMode::Psk, values.psk_identity, values.psk_key)
        };
        BootstrapConfig {
            delete: vec![Lwm2mPath::object(0), Lwm2mPath::object(1)],
            security: BTreeMap::from([(
                0,
                SecurityInstance {
                    uri: values.server_uri,
                    bootstrap_server: false,
                    mode,
                    identity,
                    server_public_key: String::new(),
                    secret_key,
                    short_server_id: Some(1),
                    client_hold_off: None,
                    bootstrap_account_timeout: None,
                },
            )]),
            servers: BTreeMap::from([(
                0,
                ServerInstance {
                    short_server_id: 1,
                    lifetime: 86400,
                    default_min_period: None,
                    default_max_period: None,
                    notification_storing: false,
                    binding: "U".to_owned(),
                },
            )]),
            ..BootstrapConfig::default()
        }
    }

    /// Starts the launched device early, in the first case that needs to know what it
    /// announces (its version, objects, instances and formats judge which cases apply): it
    /// keeps running as that case's device, whose start then finds it registered. Not for
    /// a bootstrap-only device (its account comes from the case).
    fn probe_launched(&mut self) -> Option<Registration> {
        use super::device;
        if device::launch().is_none_or(|l| l.bootstrap_only()) {
            return None;
        }
        let at = self.now();
        self.log.note(
            at,
            "the harness starts the device now to learn what it announces",
        );
        self.start_launched().ok()?;
        self.registration(&self.device.clone())
    }

    /// Starts the launched device for this scenario, or finds it running; with a device
    /// that is given a server account, waits (bounded) for its Register.
    fn start_launched(&mut self) -> anyhow::Result<()> {
        use super::device;
        if let Some(reason) = device::with(|l| l.given_up()).flatten() {
            anyhow::bail!(reason);
        }
        let bootstrap_only = device::launch().is_some_and(|l| l.bootstrap_only());
        let started = device::with(device::Launcher::started_at).flatten();
        if let Some(started) = started {
            // Kept from an earlier case (--device-restart per-feature or never).
            let fresh = self
                .registration(&self.device.clone())
                .is_some_and(|r| r.registered_at >= started);
            if fresh {
                return self.announce_registration();
            }
        } else {
            if bootstrap_only && !self.bootstrap_configured {
                let config = self.default_bootstrap_config();
                let key = ConfigKey::Endpoint(self.device.clone());
                self.servers.store.put(key, config).map_err(|e| {
                    anyhow::anyhow!("our bootstrap store refused the device's configuration: {e}")
                })?;
            }
            if self.case_psk.is_none()
                && let (Some(security), Some(Some((identity, key)))) =
                    (&self.servers.security, device::with(|l| l.psk()))
            {
                // An earlier case may have given the device other credentials.
                use lwm2m_server::store::{Credentials, SecurityInfo, SecurityStore as _};
                security
                    .put(SecurityInfo {
                        endpoint: self.device.clone(),
                        credentials: Credentials::Psk {
                            identity,
                            key: lwm2m_server::store::hex(&key),
                        },
                    })
                    .map_err(|e| anyhow::anyhow!("the device's PSK: {e}"))?;
            }
            // A fresh device: our server forgets the registration of its previous process.
            self.servers.server.registrations().remove(&self.device);
            let values = self.placeholders();
            let pid = device::with(|l| l.start(&values))
                .ok_or_else(|| anyhow::anyhow!("the device's launcher is gone"))??;
            let at = self.now();
            self.log.note(
                at,
                &format!("the harness started the device (process {pid})"),
            );
            self.started_with = Some(values);
        }
        if bootstrap_only || self.case_psk.is_some() {
            // Its Bootstrap-Request, handshake and Register (or their failure, with the
            // case's credentials) are what the case's steps wait for.
            device::with(device::Launcher::excuse_silence);
            return Ok(());
        }
        let wait = device::launch().map_or(DEVICE_WAIT, |l| l.register_wait);
        let started = device::with(device::Launcher::started_at)
            .flatten()
            .unwrap_or_else(Instant::now);
        let deadline = Instant::now() + wait;
        loop {
            self.drain();
            let registered = self
                .registration(&self.device.clone())
                .is_some_and(|r| r.registered_at >= started);
            if registered {
                device::with(device::Launcher::registered);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let exited = device::with(|l| l.pid()).flatten().is_none();
                anyhow::bail!(
                    "the device under test did not register with our LwM2M Server within \
                     {wait:?} of its start{} (its output is linked from this case)",
                    if exited { "; its process exited" } else { "" }
                );
            }
            // Any event is a reason to look at the store again.
            let until = (Instant::now() + Duration::from_millis(200)).min(deadline);
            if let Some((at, happening)) = block_until(&mut self.rx, until) {
                let at = self.elapsed(at);
                self.arrived(at, happening);
            }
        }
    }

    /// The device's current registration stands for this scenario's: it is reported as a
    /// Register the scenario saw.
    fn announce_registration(&mut self) -> anyhow::Result<()> {
        self.drain();
        let endpoint = self.device.clone();
        if let Some(registration) = self.registration(&endpoint) {
            let at = self.now();
            self.log.note(
                at,
                &format!(
                    "{} registered as {} before this scenario; its registration is \
                     checked as it stands",
                    self.device, registration.id
                ),
            );
            let id = registration.id.clone();
            let registered = Happening::Server(ServerEvent::Registered {
                registration,
                replaced: None,
            });
            self.happenings.push_back(Timed {
                at,
                happening: registered,
            });
            self.happenings.push_back(Timed {
                at,
                happening: device_registered(&endpoint, &id),
            });
        }
        Ok(())
    }

    /// The device's endpoint for a scenario's client name.
    fn resolve<'a>(&'a self, endpoint: &'a str) -> &'a str {
        if self.alias.as_deref() == Some(endpoint) {
            &self.device
        } else {
            endpoint
        }
    }
}

/// The device learnt it is registered: our server answered its Register with 2.01 Created
/// (Core TS 1.1 §6.2.1), the evidence a device we cannot look into gives.
fn device_registered(device: &str, id: &str) -> Happening {
    Happening::Client {
        endpoint: device.to_owned(),
        event: ClientEvent::Registered {
            location: format!("/rd/{id}"),
        },
    }
}

/// What a client action asks for, in words.
fn describe(action: &ClientAction) -> String {
    let paths = |ps: &[Lwm2mPath]| {
        ps.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match action {
        ClientAction::Start => "start".to_owned(),
        ClientAction::SetValue(path, _) => format!("change {path}"),
        ClientAction::Send(ps) => format!("Send {}", paths(ps)),
        ClientAction::Update => "Update now".to_owned(),
        ClientAction::Deregister => "De-register now".to_owned(),
    }
}

/// Waits on `rx` until something arrives or `until` (an instant) passes.
fn block_until<T>(rx: &mut mpsc::UnboundedReceiver<T>, until: Instant) -> Option<T> {
    let left = until.saturating_duration_since(Instant::now());
    let rt = runtime().ok()?;
    rt.block_on(async { tokio::time::timeout(left, rx.recv()).await })
        .ok()
        .flatten()
}

impl Backend for DeviceBackend {
    fn subject(&self) -> &Subject {
        &self.subject
    }

    fn supports(&self, capability: Capability) -> Result<(), String> {
        let launched_psk = self.launched
            && self.servers.security.is_some()
            && self.servers.server.dtls_addr().is_some()
            && super::device::launch().is_some_and(|l| l.uses_psk());
        match capability {
            Capability::VirtualTime => Err("the device runs in real time".to_owned()),
            // The harness starts the device with the case's PSK ({psk_identity}, {psk_key}).
            Capability::Dtls if launched_psk => Ok(()),
            Capability::Dtls | Capability::RawPublicKey => Err(
                "the DTLS cases give both sides credentials of their own and the device has \
                 its own (with LWM2M_HARNESS_COAPS_BIND the other cases run over the device's \
                 DTLS session); they run in process, or against a device the harness starts \
                 with {psk_identity} and {psk_key} in its --device-cmd"
                    .to_owned(),
            ),
            Capability::Tcp => Err("CoAP over TCP (RFC 8323) is not implemented".to_owned()),
            Capability::Smartcard => Err(format!("smartcard bootstrap: {DEVICE_NOT_OURS}")),
            Capability::ReadWithoutAccept => Err(
                "our LwM2M Server always sends Accept on a Read (it picks the format the \
                 client announced)"
                    .to_owned(),
            ),
            // What the device does with these is what the case tests.
            Capability::Disable
            | Capability::BootstrapTrigger
            | Capability::MuteSend
            | Capability::ServerInitiatedBootstrap => Ok(()),
        }
    }

    fn now(&self) -> Duration {
        self.elapsed(Instant::now())
    }

    fn step(&mut self, until: Duration) {
        self.drain();
        if !self.happenings.is_empty() {
            return;
        }
        // A launched device's process is watched at least every half second.
        let limit = if self.launched {
            (Instant::now() + Duration::from_millis(500)).min(self.t0 + until)
        } else {
            self.t0 + until
        };
        if let Some((at, happening)) = block_until(&mut self.rx, limit) {
            let at = self.elapsed(at);
            self.arrived(at, happening);
        }
        self.drain();
    }

    fn poll_happening(&mut self) -> Option<Timed> {
        self.drain();
        self.happenings.pop_front()
    }

    fn exchange_log(&self) -> &ExchangeLog {
        &self.log
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        let (datagrams, bytes) = self.log.totals();
        BTreeMap::from([
            ("datagrams".to_owned(), datagrams),
            ("bytes".to_owned(), bytes),
            (
                "registrations".to_owned(),
                self.servers.server.registrations().len() as u64,
            ),
        ])
    }

    fn server_address(&self) -> SocketAddr {
        self.servers.server.local_addr()
    }

    fn bootstrap_address(&self) -> SocketAddr {
        self.servers.bootstrap.local_addr()
    }

    fn request(&mut self, endpoint: &str, operation: Operation) -> Result<OpId, OpError> {
        let endpoint = self.resolve(endpoint).to_owned();
        if let Operation::Execute { path, .. } = &operation {
            self.reboot_pending |= *path == Lwm2mPath::resource(3, 0, 4);
        }
        self.next_op += 1;
        let op = OpId(self.next_op);
        let name = operation.name();
        let server = self.servers.server.clone();
        let tx = self.tx.clone();
        let rt = runtime().map_err(|reason| OpError::Invalid { reason })?;
        rt.spawn(async move {
            let started = Instant::now();
            let result = match server.request(&endpoint, operation).await {
                Ok(r) => Ok(r),
                Err(DriverError::Op(e)) => Err(e),
                Err(_) => Err(OpError::Deregistered {
                    endpoint: endpoint.clone(),
                }),
            };
            let event = ServerEvent::Completed {
                op,
                endpoint,
                operation: name,
                result,
                latency: started.elapsed(),
            };
            let _ = tx.send((Instant::now(), Happening::Server(event)));
        });
        Ok(op)
    }

    fn registration(&self, endpoint: &str) -> Option<Registration> {
        self.servers
            .server
            .registrations()
            .get(self.resolve(endpoint))
            .map(|e| e.registration)
    }

    fn probe_device(&mut self) -> Option<Registration> {
        self.probe_launched()
    }

    fn observations(&self, endpoint: &str) -> Vec<(ObservationId, Vec<Lwm2mPath>)> {
        let endpoint = self.resolve(endpoint).to_owned();
        let server = self.servers.server.clone();
        runtime()
            .ok()
            .and_then(|rt| rt.block_on(server.observations(&endpoint)).ok())
            .unwrap_or_default()
    }

    fn server_sees_awake(&self, endpoint: &str) -> bool {
        self.servers
            .server
            .registrations()
            .get(self.resolve(endpoint))
            .is_none_or(|e| !e.sleeping)
    }

    fn queued(&self, _endpoint: &str) -> usize {
        not_applicable("the number of requests our network server holds is not exposed")
    }

    fn spoof_to_server(&mut self, _endpoint: &str, _packet: Packet) -> anyhow::Result<()> {
        not_applicable(format!(
            "spoofing the device's address needs raw sockets; {DEVICE_NOT_OURS}"
        ))
    }

    fn add_bootstrap_config(&mut self, endpoint: &str, config: BootstrapConfig) {
        let endpoint = self.resolve(endpoint);
        let key = if endpoint.contains(['*', '?']) {
            ConfigKey::Pattern(endpoint.to_owned())
        } else {
            ConfigKey::Endpoint(endpoint.to_owned())
        };
        if let Err(e) = self.servers.store.put(key, config) {
            not_applicable(format!(
                "our bootstrap store refused the configuration: {e}"
            ));
        }
        self.bootstrap_configured = true;
    }

    fn start_bootstrap(&mut self, endpoint: &str) -> Result<(), BootstrapError> {
        let endpoint = self.resolve(endpoint).to_owned();
        let Some(peer) = self.public_address(&endpoint) else {
            not_applicable(
                "server-initiated bootstrap needs the device's address: it is not registered",
            );
        };
        let bootstrap = self.servers.bootstrap.clone();
        let rt = runtime().unwrap_or_else(|e| not_applicable(e));
        rt.block_on(bootstrap.start_session(&endpoint, peer))
            .unwrap_or_else(|e| not_applicable(format!("cannot start the bootstrap: {e}")));
        Ok(())
    }

    fn add_client(&mut self, spec: ClientSpec) -> anyhow::Result<()> {
        if self.alias.is_some() {
            not_applicable(format!(
                "the scenario needs a second client; the only client is the device under \
                 test ({DEVICE_NOT_OURS})"
            ));
        }
        self.alias = Some(spec.config.endpoint);
        Ok(())
    }

    fn client_action(&mut self, _endpoint: &str, action: ClientAction) -> anyhow::Result<()> {
        match action {
            // The harness starts the device for the scenario.
            ClientAction::Start if self.launched => self.start_launched(),
            // The device registered by itself (before or during this scenario): its
            // current registration stands for this scenario's.
            ClientAction::Start => self.announce_registration(),
            other => not_applicable(format!(
                "the step makes the client act ({}): {DEVICE_NOT_OURS}",
                describe(&other)
            )),
        }
    }

    fn client(&self, _endpoint: &str) -> Option<&Lwm2mClient> {
        not_applicable(format!(
            "the step looks into the client's own state: {DEVICE_NOT_OURS}"
        ))
    }

    fn set_network(&mut self, _endpoint: &str, _model: &NetworkModel) -> anyhow::Result<()> {
        not_applicable(format!(
            "the step changes the client's network: {DEVICE_NOT_OURS}"
        ))
    }

    /// Where the server hears the device: its registration's address, else (a DTLS
    /// session whose Register was refused) the latest session's.
    fn public_address(&self, endpoint: &str) -> Option<SocketAddr> {
        self.registration(endpoint).map(|r| r.address).or_else(|| {
            self.sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .last
        })
    }

    fn secure_address(&self, role: super::backend::ServerRole) -> Option<SocketAddr> {
        match role {
            super::backend::ServerRole::Lwm2m => self.servers.server.dtls_addr(),
            super::backend::ServerRole::Bootstrap => None,
        }
    }

    fn forget_dtls_sessions(&mut self, _role: super::backend::ServerRole) -> anyhow::Result<()> {
        not_applicable("our network LwM2M Server cannot be told to forget its DTLS sessions")
    }

    fn add_psk(
        &mut self,
        role: super::backend::ServerRole,
        endpoint: &str,
        identity: &[u8],
        key: &[u8],
    ) -> anyhow::Result<()> {
        use lwm2m_server::store::{Credentials, SecurityInfo, SecurityStore as _};
        let (super::backend::ServerRole::Lwm2m, Some(security)) = (role, &self.servers.security)
        else {
            not_applicable(format!(
                "the {role}'s security store is not reachable for a device under test"
            ));
        };
        let endpoint = self.resolve(endpoint).to_owned();
        security
            .put(SecurityInfo {
                endpoint,
                credentials: Credentials::Psk {
                    identity: String::from_utf8_lossy(identity).into_owned(),
                    key: lwm2m_server::store::hex(key),
                },
            })
            .map(drop)
            .map_err(|e| anyhow::anyhow!("our security store refused the PSK: {e}"))
    }

    fn secure_client(
        &mut self,
        _endpoint: &str,
        role: super::backend::ServerRole,
        account: SecureAccount,
    ) -> anyhow::Result<()> {
        match (role, account) {
            (super::backend::ServerRole::Lwm2m, SecureAccount::Psk { identity, key })
                if self.launched =>
            {
                self.case_psk = Some((identity, key));
                Ok(())
            }
            (role, account) => not_applicable(format!(
                "the case gives the device {account:?} towards the {role}; the device's \
                 template carries a PSK towards the LwM2M Server only"
            )),
        }
    }

    fn secure_identity(&self, endpoint: &str) -> Option<lwm2m_dtls::Identity> {
        let address = self.registration(endpoint)?.address;
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .identities
            .get(&address)
            .cloned()
    }
}

/// A datagram a simulated client's socket received.
type Received = (usize, Instant, SocketAddr, Vec<u8>);

/// The address of a `coap://HOST:PORT` or `coaps://HOST:PORT` URI, and whether it is
/// `coaps://`.
fn udp_address(uri: &str) -> Result<(SocketAddr, bool), String> {
    let (authority, secure) = match (uri.strip_prefix("coap://"), uri.strip_prefix("coaps://")) {
        (Some(a), _) => (a, false),
        (_, Some(a)) => (a, true),
        _ => {
            return Err(format!(
                "{uri:?}: expected coap://HOST:PORT (NoSec) or coaps://HOST:PORT (DTLS)"
            ));
        }
    };
    let authority = authority.trim_end_matches('/');
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| format!("{uri:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{uri:?}: no address"))?;
    Ok((addr, secure))
}

/// Where a server under test listens: the address its clients are given (its `coap://`
/// one, or its only, `coaps://`, one) and its CoAP over DTLS address, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listeners {
    main: SocketAddr,
    /// `main` takes plain CoAP.
    plain: bool,
    secure: Option<SocketAddr>,
}

impl Listeners {
    /// From the subject's `uri` and its `coaps://` companion (`flag` names it in errors).
    fn of(uri: &str, companion: Option<&str>, flag: &str) -> Result<Self, String> {
        let (main, is_secure) = udp_address(uri)?;
        match (is_secure, companion) {
            (true, Some(_)) => Err(format!(
                "{flag} goes beside a coap:// URI; {uri:?} is coaps:// already"
            )),
            (true, None) => Ok(Self {
                main,
                plain: false,
                secure: Some(main),
            }),
            (false, Some(c)) => match udp_address(c)? {
                (secure, true) => Ok(Self {
                    main,
                    plain: true,
                    secure: Some(secure),
                }),
                (_, false) => Err(format!("{flag} {c:?}: expected coaps://HOST:PORT")),
            },
            (false, None) => Ok(Self {
                main,
                plain: true,
                secure: None,
            }),
        }
    }

    fn is(&self, addr: SocketAddr) -> bool {
        addr == self.main || self.secure == Some(addr)
    }
}

/// The endpoint a Register (`POST /rd?ep=`) or Bootstrap-Request (`POST /bs?ep=`) claims,
/// with its token; `None` for anything else.
fn claim(bytes: &[u8]) -> Option<(Vec<u8>, String)> {
    use lwm2m_proto::coap::{CoapOption, MessageClass, RequestType, message};
    let p = message::decode(bytes).ok()?;
    if p.header.code != MessageClass::Request(RequestType::Post)
        || !["/rd", "/bs"].contains(&message::uri_path(&p).as_str())
    {
        return None;
    }
    let endpoint = p
        .get_option(CoapOption::UriQuery)?
        .iter()
        .find_map(|q| std::str::from_utf8(q).ok()?.strip_prefix("ep="))?
        .to_owned();
    Some((p.get_token().to_vec(), endpoint))
}

/// Whether `bytes` is a 4.03 answer, and its token.
fn forbidden(bytes: &[u8]) -> Option<Vec<u8>> {
    use lwm2m_proto::coap::{MessageClass, ResponseType, message};
    let p = message::decode(bytes).ok()?;
    (p.header.code == MessageClass::Response(ResponseType::Forbidden))
        .then(|| p.get_token().to_vec())
}

/// What reaches the server backend's stepping loop: a datagram for a client, or something
/// the server under test reported through its adapter (an event, an operation's outcome).
#[derive(Debug)]
enum Input {
    Datagram(Received),
    Server(Instant, Box<Happening>),
}

/// How a datagram of a client goes: plain CoAP, or a DTLS record (with the CoAP message it
/// carries, when the client handed one over).
#[derive(Clone, Copy)]
enum Wire<'a> {
    Coap,
    Dtls(Option<&'a [u8]>),
}

/// A simulated client on a real socket.
struct NetClient {
    name: String,
    machine: Lwm2mClient,
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    /// Its factory settings until it starts (a `coaps://` account is written into them).
    factory: Option<ClientSpec>,
    /// Its DTLS sessions with the `coaps://` servers of its Security object.
    dtls: Vec<ClientLink>,
    /// The endpoints its Registers and Bootstrap-Requests inside a session claimed, by
    /// token: a 4.03 to one is the server refusing the session's identity.
    claims: HashMap<Vec<u8>, String>,
}

/// Our simulated clients against an external server (see the module documentation).
pub struct ServerBackend {
    subject: Subject,
    server: Listeners,
    t0: Instant,
    clients: Vec<NetClient>,
    by_name: HashMap<String, usize>,
    tx: mpsc::UnboundedSender<Input>,
    rx: mpsc::UnboundedReceiver<Input>,
    log: ExchangeLog,
    happenings: VecDeque<Timed>,
    /// What drives the server under test, if anything does (`--server-api`).
    adapter: Option<Arc<dyn ServerAdapter>>,
    /// The Bootstrap Server under test (`--bootstrap-server`), and what drives it.
    bootstrap: Option<(Listeners, Option<Arc<dyn ServerAdapter>>)>,
    /// The bootstrap configurations this scenario gave, by endpoint (stored there, and
    /// removed at its end).
    bootstrap_configs: BTreeMap<String, BootstrapConfig>,
    /// The Bootstrap Server PSKs (identity, key) this scenario gave, by endpoint: they go
    /// into the endpoint's configuration as its Bootstrap-Server account.
    bootstrap_psks: BTreeMap<String, (Vec<u8>, Vec<u8>)>,
    /// The endpoints whose PSK this scenario stored in the server under test.
    stored_psks: Vec<String>,
    next_op: u64,
}

impl std::fmt::Debug for ServerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBackend")
            .field("server", &self.server)
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl ServerBackend {
    /// A backend for the server `subject` names (`coap://HOST:PORT` and/or
    /// `coaps://HOST:PORT`), no clients yet (their CoAP ids come from the scenario seed in
    /// their [`ClientSpec`]); with an adapter (`api`), subscribed to the server's events
    /// from now on.
    pub fn open(subject: &Subject, registry: Arc<Registry>) -> Result<Self, String> {
        let Subject::Server {
            uri,
            secure,
            api,
            bootstrap,
            bootstrap_secure,
            bootstrap_api,
        } = subject
        else {
            return Err(format!("{} is not a server", subject.id()));
        };
        let server = Listeners::of(uri, secure.as_deref(), "--server-coaps")?;
        runtime()?;
        let (tx, rx) = mpsc::unbounded_channel();
        // `bootstrap_only`: a second API, for the Bootstrap Server under test, whose stream
        // may carry the LwM2M Server's events too (our REST API does): those come once,
        // from the server's own adapter.
        let subscribed = |spec: &str, bootstrap_only: bool| {
            let adapter = super::adapter::open(spec, registry.clone())?;
            let events = tx.clone();
            adapter
                .subscribe(Box::new(move |e: Happening| {
                    (bootstrap_only && !e.is_bootstrap())
                        || events
                            .send(Input::Server(Instant::now(), Box::new(e)))
                            .is_ok()
                }))
                .map_err(|e| e.to_string())?;
            Ok::<Arc<dyn ServerAdapter>, String>(adapter)
        };
        let adapter = api.as_deref().map(|a| subscribed(a, false)).transpose()?;
        let bootstrap = match bootstrap {
            Some(b) => {
                let driver = match (bootstrap_api, &adapter) {
                    // Another API: its events too.
                    (Some(spec), _) if Some(spec) != api.as_ref() => Some(subscribed(spec, true)?),
                    (_, a) => a.clone(),
                };
                let listeners =
                    Listeners::of(b, bootstrap_secure.as_deref(), "--bootstrap-server-coaps")?;
                Some((listeners, driver))
            }
            None if bootstrap_secure.is_some() => {
                return Err("--bootstrap-server-coaps needs --bootstrap-server".to_owned());
            }
            None => None,
        };
        Ok(Self {
            subject: subject.clone(),
            server,
            t0: Instant::now(),
            clients: Vec::new(),
            by_name: HashMap::new(),
            tx,
            rx,
            log: ExchangeLog::default(),
            happenings: VecDeque::new(),
            adapter,
            bootstrap,
            bootstrap_configs: BTreeMap::new(),
            bootstrap_psks: BTreeMap::new(),
            stored_psks: Vec::new(),
            next_op: 0,
        })
    }

    /// The adapter, if it offers `feature`; else the case is not applicable (`what` the
    /// step does, in words).
    fn adapter_for(&self, feature: Feature, what: &str) -> &Arc<dyn ServerAdapter> {
        let Some(adapter) = &self.adapter else {
            not_applicable(format!("{what}: {SERVER_NOT_OURS} (no --server-api)"));
        };
        if let Err(why) = adapter.info().offers(feature) {
            not_applicable(format!("{what}: {why}"));
        }
        adapter
    }

    /// What drives the Bootstrap Server under test; else the case is not applicable.
    fn bootstrap_driver(&self, what: &str) -> Arc<dyn ServerAdapter> {
        match &self.bootstrap {
            Some((_, Some(driver))) => driver.clone(),
            Some((_, None)) => not_applicable(format!(
                "{what}: the Bootstrap Server under test has no --bootstrap-api"
            )),
            None => not_applicable(format!(
                "{what}: no Bootstrap Server under test (--bootstrap-server)"
            )),
        }
    }

    /// The server's registration of `endpoint` through the adapter.
    fn registration_view(&self, endpoint: &str, what: &str) -> Option<RegistrationView> {
        let adapter = self.adapter_for(Feature::Registrations, what);
        match adapter.registration(endpoint) {
            Ok(v) => v,
            // The server under test could not be asked: the step fails, with why.
            Err(e) => panic!("{what}: {e}"),
        }
    }

    fn elapsed(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.t0)
    }

    fn index(&self, endpoint: &str) -> anyhow::Result<usize> {
        self.by_name
            .get(endpoint)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("no simulated client {endpoint:?} in this scenario"))
    }

    fn bootstrap_listeners(&self) -> Option<&Listeners> {
        self.bootstrap.as_ref().map(|(l, _)| l)
    }

    fn peer_name(&self, addr: SocketAddr) -> String {
        if self.server.is(addr) {
            "server".to_owned()
        } else if self.bootstrap_listeners().is_some_and(|l| l.is(addr)) {
            "bootstrap server".to_owned()
        } else {
            addr.to_string()
        }
    }

    /// Which server under test a `coaps://` address is.
    fn role_of(&self, addr: SocketAddr) -> ServerRole {
        match self.bootstrap_listeners() {
            Some(l) if l.secure == Some(addr) && self.server.secure != Some(addr) => {
                ServerRole::Bootstrap
            }
            _ => ServerRole::Lwm2m,
        }
    }

    /// The `coaps://` address of the server under test in `role`, if it has one.
    fn secure_of(&self, role: ServerRole) -> Option<SocketAddr> {
        match role {
            ServerRole::Lwm2m => self.server.secure,
            ServerRole::Bootstrap => self.bootstrap_listeners().and_then(|l| l.secure),
        }
    }

    /// The `coaps://` address of the server under test in `role`; else the case is not
    /// applicable.
    fn require_secure(&self, role: ServerRole) -> SocketAddr {
        match (role, self.secure_of(role)) {
            (_, Some(addr)) => addr,
            (ServerRole::Bootstrap, None) if self.bootstrap.is_none() => not_applicable(
                "the case reaches the Bootstrap Server over DTLS: no Bootstrap Server under \
                 test (--bootstrap-server)",
            ),
            (ServerRole::Lwm2m, None) => not_applicable(
                "the case reaches the LwM2M Server over DTLS: the server under test was given \
                 no coaps:// address (--server coaps://HOST:PORT, or --server-coaps beside a \
                 coap:// --server)",
            ),
            (ServerRole::Bootstrap, None) => not_applicable(
                "the case reaches the Bootstrap Server over DTLS: it was given no coaps:// \
                 address (--bootstrap-server coaps://HOST:PORT, or --bootstrap-server-coaps)",
            ),
        }
    }

    /// Sends `bytes` from client `i` to `to` and logs it.
    fn send_from_client(&mut self, i: usize, to: SocketAddr, bytes: &[u8], wire: Wire<'_>) {
        let at = self.elapsed(Instant::now());
        let to_name = self.peer_name(to);
        let client = &self.clients[i];
        // A socket whose writability the reactor has not seen yet says WouldBlock: then
        // wait for it (briefly) instead of losing the datagram to a CoAP retransmission
        // 2-3 s later.
        let sent = match client.socket.try_send_to(bytes, to) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => runtime()
                .map_err(std::io::Error::other)
                .and_then(|rt| rt.block_on(client.socket.send_to(bytes, to))),
            other => other,
        };
        let (name, from) = (client.name.clone(), client.local);
        if let Err(e) = sent {
            self.log.note(at, &format!("{name} could not send: {e}"));
        }
        let (from, to) = (
            Peer {
                name: &name,
                addr: from,
            },
            Peer {
                name: &to_name,
                addr: to,
            },
        );
        match wire {
            Wire::Coap => self.log.datagram(at, from, to, bytes),
            Wire::Dtls(inner) => self.log.secure_datagram(at, from, to, bytes, inner),
        }
    }

    /// A datagram of client `i`'s machine: through a DTLS session when it goes to a
    /// `coaps://` server of its Security object, else in the clear.
    fn client_transmit(&mut self, i: usize, peer: SocketAddr, bytes: Vec<u8>) {
        let now = Instant::now();
        let client = &mut self.clients[i];
        let linked = client.dtls.iter().any(|l| l.server == peer);
        if !linked && !secure::is_secure(client.machine.tree(), peer) {
            return self.send_from_client(i, peer, &bytes, Wire::Coap);
        }
        if !linked {
            client.dtls.push(ClientLink::new(peer));
        }
        if let Some((token, endpoint)) = claim(&bytes) {
            client.claims.insert(token, endpoint);
        }
        self.drain_client_dtls(i, peer, None);
        let NetClient { dtls, machine, .. } = &mut self.clients[i];
        let Some(link) = dtls.iter_mut().find(|l| l.server == peer) else {
            return;
        };
        let tree = machine.tree();
        let endpoint = &machine.config().endpoint;
        let sent = link.send(now, bytes.clone(), || {
            secure::client_config(tree, endpoint, peer)
                .unwrap_or_else(|| Err("no coaps:// account for this server any more".into()))
        });
        match sent {
            Ok(encrypted) => {
                self.drain_client_dtls(i, peer, encrypted.then_some(bytes.as_slice()));
            }
            Err(reason) => {
                let endpoint = self.clients[i].name.clone();
                let at = self.elapsed(now);
                self.log.note(
                    at,
                    &format!("{endpoint} cannot open a DTLS session with {peer}: {reason}"),
                );
                self.push(
                    now,
                    Happening::Dtls(DtlsHappening::HandshakeFailed {
                        endpoint,
                        server: self.role_of(peer),
                        side: DtlsSide::Client,
                        identity: None,
                        reason: lwm2m_dtls::FailureReason::Protocol(reason),
                    }),
                );
            }
        }
    }

    /// Sends what client `i`'s DTLS session with `server` has; `inner` is the CoAP message
    /// of the record just written, if any.
    fn drain_client_dtls(&mut self, i: usize, server: SocketAddr, inner: Option<&[u8]>) {
        while let Some(bytes) = self.clients[i]
            .dtls
            .iter_mut()
            .find(|l| l.server == server)
            .and_then(|l| l.session.as_mut())
            .and_then(DtlsClient::poll_transmit)
        {
            self.send_from_client(i, server, &bytes, Wire::Dtls(inner));
        }
    }

    /// The events of client `i`'s DTLS session with `server`, as they are now.
    fn dtls_events(&mut self, i: usize, server: SocketAddr) -> Vec<DtlsClientEvent> {
        let mut events = Vec::new();
        if let Some(session) = self.clients[i]
            .dtls
            .iter_mut()
            .find(|l| l.server == server)
            .and_then(|l| l.session.as_mut())
        {
            while let Some(e) = session.poll_event() {
                events.push(e);
            }
        }
        events
    }

    /// Acts on what client `i`'s DTLS session with `server` reported: its CoAP to the
    /// machine, what waited for the handshake into the session, failures as happenings.
    fn on_dtls_event(&mut self, i: usize, server: SocketAddr, event: DtlsClientEvent) {
        let now = Instant::now();
        let at = self.elapsed(now);
        let role = self.role_of(server);
        let name = self.clients[i].name.clone();
        let Some(link) = self.clients[i].dtls.iter_mut().find(|l| l.server == server) else {
            return;
        };
        match event {
            DtlsClientEvent::Established => {
                let Some(session) = link.session.as_ref() else {
                    return;
                };
                let identity = session.identity().clone();
                let secrets = session.secrets();
                let pending = link.take_pending();
                self.log.event(
                    at,
                    &format!("DTLS session of {name} with the {role} established as {identity}"),
                );
                if let Some(s) = secrets {
                    self.log.add_key(s.key_log_line());
                }
                self.push(
                    now,
                    Happening::Dtls(DtlsHappening::Established {
                        endpoint: name,
                        server: role,
                        identity,
                    }),
                );
                for bytes in pending {
                    let sent = self.clients[i]
                        .dtls
                        .iter_mut()
                        .find(|l| l.server == server)
                        .and_then(|l| l.session.as_mut())
                        .map(|s| s.send(now, &bytes));
                    if let Some(Ok(())) = sent {
                        self.drain_client_dtls(i, server, Some(&bytes));
                    }
                }
            }
            DtlsClientEvent::Datagram(payload) => {
                let identity = link.session.as_ref().map(|s| s.identity().clone());
                let client = &mut self.clients[i];
                let claimed = forbidden(&payload).and_then(|t| client.claims.get(&t).cloned());
                client.machine.handle_datagram(now, server, &payload);
                if let (Some(endpoint), Some(identity)) = (claimed, identity) {
                    self.log.note(
                        at,
                        &format!(
                            "the {role} refuses {name}'s request for endpoint {endpoint:?} \
                             with 4.03 over the session as {identity}"
                        ),
                    );
                    self.push(
                        now,
                        Happening::Dtls(DtlsHappening::Refused {
                            client: name,
                            server: role,
                            identity,
                            endpoint,
                            owner: None,
                        }),
                    );
                }
            }
            DtlsClientEvent::HandshakeFailed(reason) => {
                let identity = link.session.as_ref().map(|s| s.identity().clone());
                link.reset();
                self.log.note(
                    at,
                    &format!("{name}'s DTLS handshake with the {role} failed: {reason}"),
                );
                self.push(
                    now,
                    Happening::Dtls(DtlsHappening::HandshakeFailed {
                        endpoint: name,
                        server: role,
                        side: DtlsSide::Client,
                        identity,
                        reason,
                    }),
                );
            }
            DtlsClientEvent::Closed(reason) => {
                link.reset();
                self.log.event(
                    at,
                    &format!("{name}'s DTLS session with the {role} closed: {reason:?}"),
                );
            }
            _ => {}
        }
    }

    /// Handles what client `i`'s DTLS sessions reported; true when something happened.
    fn client_dtls(&mut self, i: usize) -> bool {
        let mut moved = false;
        let servers: Vec<SocketAddr> = self.clients[i].dtls.iter().map(|l| l.server).collect();
        for server in servers {
            self.drain_client_dtls(i, server, None);
            for event in self.dtls_events(i, server) {
                moved = true;
                self.on_dtls_event(i, server, event);
            }
        }
        moved
    }

    fn push(&mut self, at: Instant, happening: Happening) {
        let at = self.elapsed(at);
        self.happenings.push_back(Timed { at, happening });
    }

    /// Sends what the clients have to send and collects what they report.
    fn flush(&mut self) {
        for i in 0..self.clients.len() {
            loop {
                let mut moved = false;
                while let Some(t) = self.clients[i].machine.poll_transmit() {
                    moved = true;
                    self.client_transmit(i, t.peer, t.bytes);
                }
                moved |= self.client_dtls(i);
                if !moved {
                    break;
                }
            }
            while let Some(event) = self.clients[i].machine.poll_event() {
                let now = Instant::now();
                let client = &mut self.clients[i];
                if let Some(why) = secure::after_client_event(&event, &mut client.dtls) {
                    let text = format!("{}: {why}", client.name);
                    let at = self.elapsed(now);
                    self.log.event(at, &text);
                }
                let endpoint = self.clients[i].name.clone();
                self.push(now, Happening::Client { endpoint, event });
            }
        }
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Datagram(d) => self.deliver(d),
            Input::Server(at, happening) => {
                // A DTLS listener's report names the client by its address.
                let happening = match *happening {
                    Happening::Dtls(DtlsHappening::HandshakeFailed {
                        endpoint,
                        server,
                        side,
                        identity,
                        reason,
                    }) => {
                        let by_address = endpoint.parse::<SocketAddr>().ok().and_then(|a| {
                            self.clients.iter().find(|c| c.local == a).map(|c| &c.name)
                        });
                        // Another run's client, or one of an earlier scenario: not ours.
                        let Some(name) = by_address.cloned() else {
                            return;
                        };
                        Happening::Dtls(DtlsHappening::HandshakeFailed {
                            endpoint: name,
                            server,
                            side,
                            identity,
                            reason,
                        })
                    }
                    other => other,
                };
                self.push(at, happening);
            }
        }
    }

    fn deliver(&mut self, (i, at, from, bytes): Received) {
        let from_name = self.peer_name(from);
        let Some(client) = self.clients.get_mut(i) else {
            return;
        };
        let (name, to) = (client.name.clone(), client.local);
        let secure = match client.dtls.iter_mut().find(|l| l.server == from) {
            Some(link) => match link.session.as_mut() {
                Some(session) => {
                    session.handle_datagram(at, &bytes);
                    Some(true)
                }
                // A record of a session the client gave up.
                None => Some(false),
            },
            None => {
                client.machine.handle_datagram(at, from, &bytes);
                None
            }
        };
        let events = match secure {
            Some(true) => self.dtls_events(i, from),
            _ => Vec::new(),
        };
        let inner = events.iter().find_map(|e| match e {
            DtlsClientEvent::Datagram(p) => Some(p.clone()),
            _ => None,
        });
        let when = self.elapsed(at);
        let (from_peer, to_peer) = (
            Peer {
                name: &from_name,
                addr: from,
            },
            Peer {
                name: &name,
                addr: to,
            },
        );
        match secure {
            None => self.log.datagram(when, from_peer, to_peer, &bytes),
            Some(_) => {
                self.log
                    .secure_datagram(when, from_peer, to_peer, &bytes, inner.as_deref());
            }
        }
        if secure == Some(false) {
            self.log.note(
                when,
                &format!("dropped: {name} has no DTLS session with {from} now"),
            );
        }
        for event in events {
            self.on_dtls_event(i, from, event);
        }
    }

    fn next_timeout(&mut self) -> Option<Instant> {
        self.clients
            .iter_mut()
            .flat_map(|c| {
                let sessions = c
                    .dtls
                    .iter()
                    .filter_map(|l| l.session.as_ref()?.poll_timeout());
                c.machine.poll_timeout().into_iter().chain(sessions)
            })
            .min()
    }

    fn fire_timeouts(&mut self) {
        let now = Instant::now();
        for client in &mut self.clients {
            if client.machine.poll_timeout().is_some_and(|t| t <= now) {
                client.machine.handle_timeout(now);
            }
            for session in client.dtls.iter_mut().filter_map(|l| l.session.as_mut()) {
                if session.poll_timeout().is_some_and(|t| t <= now) {
                    session.handle_timeout(now);
                }
            }
        }
    }

    /// The configuration the Bootstrap Server under test holds for `endpoint`: the one the
    /// scenario gave, with the scenario's Bootstrap-Server PSK of the endpoint as its
    /// Bootstrap-Server account (a configuration of that account alone if the scenario gave
    /// none).
    fn bootstrap_config_of(&self, endpoint: &str) -> Option<BootstrapConfig> {
        use lwm2m_proto::bootstrap::config::{SecurityInstance, SecurityMode};
        let given = self.bootstrap_configs.get(endpoint);
        let psk = self.bootstrap_psks.get(endpoint);
        if given.is_none() && psk.is_none() {
            return None;
        }
        let mut config = given.cloned().unwrap_or_else(|| BootstrapConfig {
            delete: Vec::new(),
            ..BootstrapConfig::default()
        });
        if let (Some((identity, key)), Some(secure)) = (psk, self.secure_of(ServerRole::Bootstrap))
        {
            config.security.retain(|_, s| !s.bootstrap_server);
            let id = config.security.keys().max().map_or(0, |m| m + 1);
            config.security.insert(
                id,
                SecurityInstance {
                    uri: format!("coaps://{secure}"),
                    bootstrap_server: true,
                    mode: SecurityMode::Psk,
                    identity: String::from_utf8_lossy(identity).into_owned(),
                    server_public_key: String::new(),
                    secret_key: key.iter().map(|b| format!("{b:02x}")).collect(),
                    short_server_id: None,
                    client_hold_off: None,
                    bootstrap_account_timeout: None,
                },
            );
        }
        Some(config)
    }

    /// Stores `endpoint`'s configuration ([`Self::bootstrap_config_of`]) in the Bootstrap
    /// Server under test; what it lacks makes the case not applicable, a refusal fails it.
    fn store_bootstrap_config(&self, endpoint: &str, what: &str) {
        let driver = self.bootstrap_driver(what);
        let Some(config) = self.bootstrap_config_of(endpoint) else {
            return;
        };
        match driver.put_bootstrap_config(endpoint, &config) {
            Ok(()) => {}
            Err(e @ super::adapter::AdapterError::Lacks { .. }) => {
                not_applicable(format!("{what}: {e}"))
            }
            // The Bootstrap Server under test refused it, or could not be asked: a failure.
            Err(e) => panic!("{what}: {e}"),
        }
    }

    /// Makes the case not applicable when client `i` would talk plain CoAP to a server
    /// under test that listens for `coaps://` only.
    fn check_reachable(&self, i: usize) {
        let machine = &self.clients[i].machine;
        let targets = [
            (
                Some(&self.server),
                machine.config().server,
                ServerRole::Lwm2m,
            ),
            (
                self.bootstrap_listeners(),
                machine.config().bootstrap_server,
                ServerRole::Bootstrap,
            ),
        ];
        for (listeners, target, role) in targets {
            let Some(l) = listeners else { continue };
            if !l.plain && target == Some(l.main) && !secure::is_secure(machine.tree(), l.main) {
                not_applicable(format!(
                    "the case's client talks plain CoAP to the {role}; the {role} under test \
                     was given as coaps:// only (give its coap:// address too)"
                ));
            }
        }
    }
}

impl Backend for ServerBackend {
    fn subject(&self) -> &Subject {
        &self.subject
    }

    fn supports(&self, capability: Capability) -> Result<(), String> {
        match capability {
            Capability::VirtualTime => Err("the server under test runs in real time".to_owned()),
            Capability::Dtls
                if self.server.secure.is_some()
                    || self
                        .bootstrap_listeners()
                        .is_some_and(|l| l.secure.is_some()) =>
            {
                Ok(())
            }
            Capability::Dtls => Err(
                "the server under test was given no coaps:// address (--server \
                 coaps://HOST:PORT, or --server-coaps beside a coap:// --server)"
                    .to_owned(),
            ),
            Capability::RawPublicKey => Err(
                "raw public keys (RFC 7250, Security mode 1) are not in our DTLS library"
                    .to_owned(),
            ),
            Capability::Tcp => Err("CoAP over TCP (RFC 8323) is not implemented".to_owned()),
            Capability::Smartcard => {
                Err("simulated clients have no smartcard (Core TS 1.1 §5.2.4)".to_owned())
            }
            // Our simulated clients do these when the server executes or writes the
            // resource: what the case needs is that operation of the server under test.
            Capability::Disable | Capability::BootstrapTrigger | Capability::MuteSend => {
                match &self.adapter {
                    Some(a) => a
                        .info()
                        .offers(Feature::Execute)
                        .and_then(|()| a.info().offers(Feature::Write)),
                    None => Err(SERVER_NOT_OURS.to_owned()),
                }
            }
            Capability::ServerInitiatedBootstrap => Err(format!(
                "no Bootstrap Server of ours runs against a server under test \
                 ({SERVER_NOT_OURS})"
            )),
            Capability::ReadWithoutAccept => Err(match &self.adapter {
                Some(a) => format!(
                    "the server adapter {} cannot ask for a Read without Accept",
                    a.info().adapter
                ),
                None => SERVER_NOT_OURS.to_owned(),
            }),
        }
    }

    fn now(&self) -> Duration {
        self.elapsed(Instant::now())
    }

    fn step(&mut self, until: Duration) {
        let limit = self.t0 + until;
        loop {
            self.flush();
            if !self.happenings.is_empty() || Instant::now() >= limit {
                return;
            }
            // What arrived meanwhile first; then, as it may have given the clients (or
            // their DTLS sessions) something to send, flush again before waiting.
            let mut arrived = false;
            while let Ok(received) = self.rx.try_recv() {
                self.input(received);
                arrived = true;
            }
            if arrived || !self.happenings.is_empty() {
                continue;
            }
            let next = self.next_timeout().map_or(limit, |t| t.min(limit));
            match block_until(&mut self.rx, next) {
                Some(received) => self.input(received),
                None => self.fire_timeouts(),
            }
        }
    }

    fn poll_happening(&mut self) -> Option<Timed> {
        self.happenings.pop_front()
    }

    fn exchange_log(&self) -> &ExchangeLog {
        &self.log
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        let (datagrams, bytes) = self.log.totals();
        BTreeMap::from([
            ("datagrams".to_owned(), datagrams),
            ("bytes".to_owned(), bytes),
            ("clients".to_owned(), self.clients.len() as u64),
        ])
    }

    fn server_address(&self) -> SocketAddr {
        self.server.main
    }

    /// The Bootstrap Server under test; without one, clients that only know one are
    /// pointed at the server under test (and bootstrap steps are not applicable).
    fn bootstrap_address(&self) -> SocketAddr {
        self.bootstrap_listeners()
            .map_or(self.server.main, |l| l.main)
    }

    fn request(&mut self, endpoint: &str, operation: Operation) -> Result<OpId, OpError> {
        let feature = Feature::of(&operation);
        let adapter = self
            .adapter_for(
                feature,
                &format!("the step is the server's {} operation", operation.name()),
            )
            .clone();
        if let Err(why) = adapter.check(&operation) {
            not_applicable(format!(
                "the step is the server's {} operation: {why}",
                operation.name()
            ));
        }
        self.next_op += 1;
        let op = OpId(self.next_op);
        let (tx, endpoint) = (self.tx.clone(), endpoint.to_owned());
        // Off the stepping thread: the simulated client must answer meanwhile.
        std::thread::Builder::new()
            .name(format!("server op {}", op.0))
            .spawn(move || {
                let started = Instant::now();
                let result = adapter.request(&endpoint, &operation);
                let event = ServerEvent::Completed {
                    op,
                    endpoint,
                    operation: operation.name(),
                    result,
                    latency: started.elapsed(),
                };
                let _ = tx.send(Input::Server(
                    Instant::now(),
                    Box::new(Happening::Server(event)),
                ));
            })
            .map_err(|e| OpError::Invalid {
                reason: format!("cannot start the operation's thread: {e}"),
            })?;
        Ok(op)
    }

    fn registration(&self, endpoint: &str) -> Option<Registration> {
        self.registration_view(endpoint, "the step looks into the server's registrations")
            .map(|v| v.registration)
    }

    fn observations(&self, _endpoint: &str) -> Vec<(ObservationId, Vec<Lwm2mPath>)> {
        let why = match &self.adapter {
            Some(a) => format!(
                "the server adapter {} does not list a client's observations",
                a.info().adapter
            ),
            None => SERVER_NOT_OURS.to_owned(),
        };
        not_applicable(format!(
            "the step looks into the server's observations: {why}"
        ))
    }

    fn server_sees_awake(&self, endpoint: &str) -> bool {
        // Asked before every operation: a server that does not say is taken as awake.
        match &self.adapter {
            Some(a) if a.info().offers(Feature::QueueState).is_ok() => self
                .registration_view(endpoint, "the step looks into the server")
                .is_none_or(|v| v.sleeping != Some(true)),
            Some(_) => true,
            None => not_applicable(format!("the step looks into the server: {SERVER_NOT_OURS}")),
        }
    }

    fn server_view(&self, view: ServerView) -> Result<(), String> {
        let Some(adapter) = &self.adapter else {
            return Err(format!("{SERVER_NOT_OURS} (no --server-api)"));
        };
        let needs: &[Feature] = match view {
            ServerView::Events => &[Feature::Events],
            ServerView::Send => &[Feature::Send],
            ServerView::Expiry => &[Feature::Expiry],
            ServerView::Refusals => &[Feature::Refusals],
            ServerView::Findings => &[Feature::Findings],
            ServerView::RegistrationFindings => &[Feature::RegistrationFindings],
            ServerView::QueueState => &[Feature::QueueState],
            ServerView::ResponseFormat => &[Feature::ResponseFormat],
            ServerView::Absence => &[Feature::Events, Feature::Notifications, Feature::Send],
            ServerView::Security => &[Feature::SecurityEvents],
        };
        needs.iter().try_for_each(|f| adapter.info().offers(*f))
    }

    fn queued(&self, _endpoint: &str) -> usize {
        not_applicable(format!("the step looks into the server: {SERVER_NOT_OURS}"))
    }

    fn spoof_to_server(&mut self, _endpoint: &str, _packet: Packet) -> anyhow::Result<()> {
        not_applicable("spoofing a client's address needs raw sockets")
    }

    fn add_bootstrap_config(&mut self, endpoint: &str, config: BootstrapConfig) {
        use lwm2m_proto::bootstrap::config::SecurityMode;
        let what = "the step stores a bootstrap configuration";
        self.bootstrap_driver(what);
        let certificate = config
            .security
            .values()
            .any(|s| !s.bootstrap_server && s.mode == SecurityMode::X509);
        if certificate {
            not_applicable(format!(
                "{what} handing out a certificate account of the run's test CA: the server \
                 under test would have to trust that CA, and no adapter provisions trust \
                 anchors"
            ));
        }
        self.bootstrap_configs.insert(endpoint.to_owned(), config);
        self.store_bootstrap_config(endpoint, what);
    }

    fn start_bootstrap(&mut self, _endpoint: &str) -> Result<(), BootstrapError> {
        not_applicable(format!(
            "the step drives our Bootstrap Server; none runs against a server under test \
             ({SERVER_NOT_OURS})"
        ))
    }

    fn add_client(&mut self, spec: ClientSpec) -> anyhow::Result<()> {
        let name = spec.config.endpoint.clone();
        anyhow::ensure!(
            !self.by_name.contains_key(&name),
            "a client {name:?} already exists in this scenario"
        );
        let bind = if self.server.main.ip().is_loopback() {
            SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        };
        let rt = runtime().map_err(anyhow::Error::msg)?;
        let socket = Arc::new(rt.block_on(UdpSocket::bind(bind))?);
        let local = socket.local_addr()?;
        let index = self.clients.len();
        let (reader, tx) = (socket.clone(), self.tx.clone());
        rt.spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                // Ends with the scenario (its backend closes the channel), closing the socket.
                let received = tokio::select! {
                    r = reader.recv_from(&mut buf) => r,
                    () = tx.closed() => return,
                };
                let Ok((n, from)) = received else { return };
                let bytes = buf.get(..n).unwrap_or_default().to_vec();
                if tx
                    .send(Input::Datagram((index, Instant::now(), from, bytes)))
                    .is_err()
                {
                    return;
                }
            }
        });
        self.clients.push(NetClient {
            name: name.clone(),
            machine: Lwm2mClient::new(spec.config.clone(), spec.tree.clone()),
            socket,
            local,
            factory: Some(spec),
            dtls: Vec::new(),
            claims: HashMap::new(),
        });
        self.by_name.insert(name, index);
        Ok(())
    }

    fn client_action(&mut self, endpoint: &str, action: ClientAction) -> anyhow::Result<()> {
        let i = self.index(endpoint)?;
        let now = Instant::now();
        if action == ClientAction::Start {
            self.check_reachable(i);
            self.clients[i].factory = None;
        }
        let machine = &mut self.clients[i].machine;
        match action {
            ClientAction::Start => machine.start(now),
            ClientAction::SetValue(path, value) => machine.set_value(now, &path, value),
            ClientAction::Send(paths) => machine.send(now, &paths),
            ClientAction::Update => machine.trigger_update(now),
            ClientAction::Deregister => machine.deregister(now),
        }
        self.flush();
        Ok(())
    }

    fn client(&self, endpoint: &str) -> Option<&Lwm2mClient> {
        self.by_name
            .get(endpoint)
            .map(|i| &self.clients[*i].machine)
    }

    fn set_network(&mut self, _endpoint: &str, _model: &NetworkModel) -> anyhow::Result<()> {
        not_applicable("network models (NAT, loss, sleep) need the in-process link")
    }

    fn public_address(&self, endpoint: &str) -> Option<SocketAddr> {
        self.by_name.get(endpoint).map(|i| self.clients[*i].local)
    }

    fn secure_address(&self, role: ServerRole) -> Option<SocketAddr> {
        self.secure_of(role)
    }

    fn forget_dtls_sessions(&mut self, role: ServerRole) -> anyhow::Result<()> {
        not_applicable(format!(
            "the step makes the {role} forget its DTLS sessions: {SERVER_NOT_OURS}"
        ))
    }

    /// The LwM2M Server's PSK goes into its security store through the adapter
    /// (`put_psk`); the Bootstrap Server's into the endpoint's bootstrap configuration, as
    /// its Bootstrap-Server account.
    fn add_psk(
        &mut self,
        role: ServerRole,
        endpoint: &str,
        identity: &[u8],
        key: &[u8],
    ) -> anyhow::Result<()> {
        self.require_secure(role);
        match role {
            ServerRole::Lwm2m => {
                let what = "the step stores a PSK in the server under test";
                let adapter = self.adapter_for(Feature::PutCredentials, what).clone();
                match adapter.put_psk(endpoint, identity, key) {
                    Ok(()) => {
                        self.stored_psks.push(endpoint.to_owned());
                        Ok(())
                    }
                    Err(e @ super::adapter::AdapterError::Lacks { .. }) => {
                        not_applicable(format!("{what}: {e}"))
                    }
                    Err(e) => Err(anyhow::anyhow!(
                        "the server under test did not store the PSK of {endpoint:?}: {e}"
                    )),
                }
            }
            ServerRole::Bootstrap => {
                let what = "the step stores a Bootstrap-Server PSK in the bootstrap configuration";
                self.bootstrap_driver(what);
                self.bootstrap_psks
                    .insert(endpoint.to_owned(), (identity.to_vec(), key.to_vec()));
                self.store_bootstrap_config(endpoint, what);
                Ok(())
            }
        }
    }

    /// A PSK account at the server's `coaps://` address; certificates are not applicable
    /// (the server under test would have to trust the run's test CA).
    fn secure_client(
        &mut self,
        endpoint: &str,
        role: ServerRole,
        account: SecureAccount,
    ) -> anyhow::Result<()> {
        if let SecureAccount::Certificate { .. } = account {
            not_applicable(
                "the case gives the client a certificate of the run's test CA: the server \
                 under test would have to trust that CA, and no adapter provisions trust \
                 anchors (the PSK cases run)",
            );
        }
        let address = self.require_secure(role);
        let i = self.index(endpoint)?;
        let client = &mut self.clients[i];
        let Some(spec) = client.factory.as_mut() else {
            anyhow::bail!("{endpoint:?} has started: its factory configuration is fixed");
        };
        write_account(&mut spec.tree, role, address, &account)?;
        let configured = match role {
            ServerRole::Lwm2m => &mut spec.config.server,
            ServerRole::Bootstrap => &mut spec.config.bootstrap_server,
        };
        if configured.is_some() {
            *configured = Some(address);
        }
        client.machine = Lwm2mClient::new(spec.config.clone(), spec.tree.clone());
        Ok(())
    }

    /// The identity our client's established session with the LwM2M Server's `coaps://`
    /// address authenticated as (the handshake completing proves the server accepted it;
    /// adapters do not show the server's side of a session).
    fn secure_identity(&self, endpoint: &str) -> Option<lwm2m_dtls::Identity> {
        let secure = self.server.secure?;
        let i = self.by_name.get(endpoint)?;
        let link = self.clients[*i].dtls.iter().find(|l| l.server == secure)?;
        let session = link.session.as_ref().filter(|s| s.is_established())?;
        Some(session.identity().clone())
    }
}

impl Drop for ServerBackend {
    /// De-registers the clients still registered, so that the next scenario's clients of
    /// the same names meet a clean server under test, and stops the clients' socket
    /// readers (their channel closes with the backend).
    fn drop(&mut self) {
        let now = Instant::now();
        for client in &mut self.clients {
            if matches!(
                client.machine.state(),
                ClientState::Registered | ClientState::Sleeping
            ) {
                client.machine.deregister(now);
            }
        }
        self.flush();
        if let Some((_, Some(driver))) = &self.bootstrap {
            let endpoints: BTreeSet<&String> = self
                .bootstrap_configs
                .keys()
                .chain(self.bootstrap_psks.keys())
                .collect();
            for endpoint in endpoints {
                super::adapter::remove_bootstrap_config(driver.as_ref(), endpoint);
            }
        }
        if let Some(adapter) = &self.adapter {
            for endpoint in &self.stored_psks {
                let _ = adapter.remove_psk(endpoint);
            }
        }
        self.rx.close();
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::path::Path;

    use super::*;
    use crate::bdd::fleet::{Library, Provisioning};
    use crate::bdd::run::workspace_root;
    use crate::bdd::world::NotApplicable;

    fn reason_of(f: impl FnOnce()) -> String {
        let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("not applicable");
        payload
            .downcast::<NotApplicable>()
            .map(|n| n.0)
            .unwrap_or_default()
    }

    #[test]
    fn a_simulated_client_registers_with_an_external_server_over_loopback() {
        let lib =
            Library::load(&workspace_root(Path::new(env!("CARGO_MANIFEST_DIR"))), &[]).unwrap();
        let rt = runtime().unwrap();
        let server = {
            let _guard = rt.enter();
            let bind = SocketAddr::from(([127, 0, 0, 1], 0));
            lwm2m_server::start_server(ServerOptions::new(bind, lib.registry.clone())).unwrap()
        };
        let subject = Subject::Server {
            uri: format!("coap://{}", server.local_addr()),
            secure: None,
            api: None,
            bootstrap: None,
            bootstrap_secure: None,
            bootstrap_api: None,
        };
        let mut b = ServerBackend::open(&subject, lib.registry.clone()).unwrap();
        assert_eq!(b.server_address(), server.local_addr());
        let profile = lib.profile("ets-1.1").unwrap();
        let spec = lib
            .client(
                profile,
                "c1",
                0,
                1,
                Provisioning::Server(b.server_address()),
                &[],
            )
            .unwrap();
        b.add_client(spec).unwrap();
        b.client_action("c1", ClientAction::Start).unwrap();
        let deadline = b.now() + Duration::from_secs(5);
        let mut registered = false;
        while !registered && b.now() < deadline {
            b.step(deadline);
            while let Some(t) = b.poll_happening() {
                registered |= matches!(
                    t.happening,
                    Happening::Client {
                        event: ClientEvent::Registered { .. },
                        ..
                    }
                );
            }
        }
        assert!(registered, "{}", b.exchange_log().text());
        assert!(server.registrations().get("c1").is_some());
        let text = b.exchange_log().text();
        assert!(text.contains("POST") && text.contains("2.01"), "{text}");
        assert!(b.client("c1").is_some());
        let why = reason_of(|| {
            b.registration("c1");
        });
        assert!(why.contains(SERVER_NOT_OURS), "{why}");
        rt.block_on(server.shutdown());
    }

    #[test]
    fn client_actions_read_as_words() {
        let paths = vec![Lwm2mPath::resource(3, 0, 0), Lwm2mPath::resource(1, 0, 1)];
        assert_eq!(describe(&ClientAction::Send(paths)), "Send /3/0/0, /1/0/1");
        assert_eq!(describe(&ClientAction::Deregister), "De-register now");
    }

    #[test]
    fn a_server_uri_must_be_coap_or_coaps_with_an_address() {
        let registry = Arc::new(Registry::embedded());
        let open = |uri: &str, secure: Option<&str>| {
            let subject = Subject::Server {
                uri: uri.into(),
                secure: secure.map(str::to_owned),
                api: None,
                bootstrap: None,
                bootstrap_secure: None,
                bootstrap_api: None,
            };
            ServerBackend::open(&subject, registry.clone())
        };
        assert!(open("coap://127.0.0.1", None).is_err());
        assert!(open("http://127.0.0.1:5683", None).is_err());
        let plain = open("coap://127.0.0.1:5683", None).unwrap();
        assert!(plain.supports(Capability::Dtls).is_err());
        assert_eq!(plain.secure_address(ServerRole::Lwm2m), None);
        // DTLS only: the clients are given the coaps:// address.
        let only = open("coaps://127.0.0.1:5684", None).unwrap();
        assert_eq!(only.server_address().port(), 5684);
        assert_eq!(
            only.secure_address(ServerRole::Lwm2m),
            only.server_address().into()
        );
        assert!(only.supports(Capability::Dtls).is_ok());
        // Both: plain cases on one, DTLS cases on the other.
        let both = open("coap://127.0.0.1:5683", Some("coaps://127.0.0.1:5684")).unwrap();
        assert_eq!(both.server_address().port(), 5683);
        assert_eq!(
            both.secure_address(ServerRole::Lwm2m).map(|a| a.port()),
            Some(5684)
        );
        assert_eq!(both.secure_address(ServerRole::Bootstrap), None);
        assert!(open("coaps://127.0.0.1:5684", Some("coaps://127.0.0.1:5685")).is_err());
        assert!(open("coap://127.0.0.1:5683", Some("coap://127.0.0.1:5685")).is_err());
    }

    #[test]
    fn registers_and_bootstrap_requests_are_claims_a_4_03_answers() {
        use lwm2m_proto::coap::{MessageClass, RequestType, ResponseType, message};
        let mut register = message::request(RequestType::Post, "/rd");
        message::add_query(&mut register, "lt=60");
        message::add_query(&mut register, "ep=dev-1");
        register.set_token(vec![1, 2]);
        let bytes = register.to_bytes().unwrap();
        assert_eq!(claim(&bytes), Some((vec![1, 2], "dev-1".to_owned())));
        let mut bs = message::request(RequestType::Post, "/bs");
        message::add_query(&mut bs, "ep=dev-2");
        assert_eq!(
            claim(&bs.to_bytes().unwrap()).map(|(_, e)| e),
            Some("dev-2".to_owned())
        );
        let update = message::request(RequestType::Post, "/rd/5a");
        assert_eq!(claim(&update.to_bytes().unwrap()), None);
        assert_eq!(claim(b"\xff"), None);
        let mut answer = register.clone();
        answer.header.code = MessageClass::Response(ResponseType::Forbidden);
        assert_eq!(forbidden(&answer.to_bytes().unwrap()), Some(vec![1, 2]));
        answer.header.code = MessageClass::Response(ResponseType::Created);
        assert_eq!(forbidden(&answer.to_bytes().unwrap()), None);
    }
}
