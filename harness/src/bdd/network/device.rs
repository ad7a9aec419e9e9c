//! [`DeviceBackend`]: our servers on real sockets, the device under test registering with
//! them (see the parent module).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lwm2m_proto::Lwm2mPath;
use lwm2m_proto::bootstrap::{BootstrapConfig, BootstrapError};
use lwm2m_proto::client::{ClientEvent, Lwm2mClient};
use lwm2m_proto::coap::Packet;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{ObservationId, OpError, OpId, Operation, Registration, ServerEvent};
use lwm2m_server::store::{BootstrapDoc, BootstrapStore, ConfigKey, FileBootstrapStore};
use lwm2m_server::{
    BootstrapHandle, BootstrapOptions, DriverError, Event, SecurityEvent, ServerHandle,
    ServerOptions,
};
use lwm2m_simulator::NetworkModel;
use tokio::sync::{broadcast, mpsc};

use crate::accounts::SecureAccount;
use crate::bdd::backend::{
    Backend, Capability, ClientAction, ClientSpec, Happening, Subject, Timed,
};
use crate::bdd::exchange::{ExchangeLog, Peer};
use crate::bdd::verdict::not_applicable;

use super::{
    BackendError, DEVICE_NOT_OURS, DEVICE_WAIT, Tap, block_until, env_addr, env_secs, runtime,
    unix_now,
};

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
) -> Result<&'static DeviceServers, BackendError> {
    static SERVERS: OnceLock<Result<DeviceServers, BackendError>> = OnceLock::new();
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
/// A launched device whose template names a PSK ([`crate::bdd::device`]) gets the listener
/// (on `LWM2M_HARNESS_COAPS_BIND`, else a free loopback port) with its generated PSK.
fn device_dtls(endpoint: &str) -> Result<Option<DeviceDtls>, BackendError> {
    use lwm2m_server::store::{Credentials, FileSecurityStore, SecurityInfo, SecurityStore as _};
    let launched_psk = crate::bdd::device::with(|l| l.psk()).flatten();
    let bind = match std::env::var("LWM2M_HARNESS_COAPS_BIND") {
        Ok(bind) => bind,
        Err(_) if launched_psk.is_some() => "127.0.0.1:0".to_owned(),
        Err(_) => return Ok(None),
    };
    let bind: SocketAddr =
        bind.parse()
            .map_err(|e: std::net::AddrParseError| BackendError::EnvAddress {
                name: "LWM2M_HARNESS_COAPS_BIND",
                value: bind.clone(),
                reason: e.to_string(),
            })?;
    let security = FileSecurityStore::in_memory();
    if let Some((identity, key)) = launched_psk {
        let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
        security
            .put(SecurityInfo {
                endpoint: endpoint.to_owned(),
                credentials: Credentials::Psk { identity, key },
            })
            .map_err(|e| BackendError::DevicePsk {
                what: "the launched device's PSK",
                reason: e.to_string(),
            })?;
    } else if let Ok(psk) = std::env::var("LWM2M_HARNESS_DEVICE_PSK") {
        let (identity, key) = psk
            .rsplit_once(':')
            .filter(|(_, k)| lwm2m_proto::value::parse_hex(k).is_some_and(|k| !k.is_empty()))
            .ok_or(BackendError::DevicePskShape)?;
        security
            .put(SecurityInfo {
                endpoint: endpoint.to_owned(),
                credentials: Credentials::Psk {
                    identity: identity.to_owned(),
                    key: key.to_owned(),
                },
            })
            .map_err(|e| BackendError::DevicePsk {
                what: "LWM2M_HARNESS_DEVICE_PSK",
                reason: e.to_string(),
            })?;
    }
    let path = |name: &str| std::env::var_os(name).map(std::path::PathBuf::from);
    let certificate = match (
        path("LWM2M_HARNESS_CERT"),
        path("LWM2M_HARNESS_CERT_KEY"),
        path("LWM2M_HARNESS_CA"),
    ) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(ca)) => {
            Some(crate::certificate_config(&cert, &key, &ca).map_err(|e| {
                BackendError::Certificate {
                    reason: format!("{e:#}"),
                }
            })?)
        }
        _ => {
            return Err(BackendError::CertificateVariables);
        }
    };
    let security = Arc::new(security);
    let mut options = lwm2m_server::DtlsOptions::new(bind, security.clone());
    options.certificate = certificate;
    Ok(Some((options, security)))
}

fn start_device_servers(
    endpoint: &str,
    registry: Arc<Registry>,
) -> Result<DeviceServers, BackendError> {
    let rt = runtime()?;
    let tap = Arc::new(Tap::default());
    let store = Arc::new(FileBootstrapStore::in_memory(BootstrapDoc::default()));
    // A device the harness starts runs on this machine: loopback unless told otherwise.
    let launched = crate::bdd::device::launch().is_some();
    let default_bind = |name: &'static str| {
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
    let server = lwm2m_server::start_server(options).map_err(|e| BackendError::Start {
        role: "LwM2M Server",
        bind,
        reason: e.to_string(),
    })?;
    let mut options = BootstrapOptions::new(bootstrap_bind, store.clone());
    options.tap = Some(tap.clone());
    let bootstrap = lwm2m_server::start_bootstrap(options).map_err(|e| BackendError::Start {
        role: "Bootstrap Server",
        bind: bootstrap_bind,
        reason: e.to_string(),
    })?;
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
            return Err(BackendError::NoRegistration {
                endpoint: endpoint.to_owned(),
                server: server.local_addr(),
                wait,
            });
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
    /// The harness starts the device ([`crate::bdd::device`]).
    launched: bool,
    /// The placeholders of the device's last start in this scenario (to start it again
    /// after it exits).
    started_with: Option<crate::bdd::device::Placeholders>,
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
    pub fn open(subject: &Subject, registry: Arc<Registry>) -> Result<Self, BackendError> {
        let Subject::Device { endpoint } = subject else {
            return Err(BackendError::WrongSubject {
                id: subject.id().to_string(),
                kind: "device",
            });
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
                            known.identities.insert(*peer, identity.clone());
                            known.last = Some(*peer);
                        }
                        // The device under test is the one client of the run: every session is its.
                        crate::bdd::secure::dtls_happening(*role, e, |_| device.clone())
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
            launched: crate::bdd::device::launch().is_some(),
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
        let Some(Some(exit)) = crate::bdd::device::with(|l| l.poll_exit()) else {
            return;
        };
        let at = self.now();
        self.log.note(at, &exit);
        self.rebooted(at);
        if let Some(values) = self.started_with.clone() {
            let restarted =
                crate::bdd::device::with(|l| l.start(&values).map_err(|e| format!("{e:#}")));
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
                    crate::bdd::device::with(|l| l.remember(announced));
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
    fn placeholders(&self) -> crate::bdd::device::Placeholders {
        let plain = self.servers.server.local_addr();
        let psk = match &self.case_psk {
            Some((identity, key)) => {
                Some((String::from_utf8_lossy(identity).into_owned(), key.clone()))
            }
            None => crate::bdd::device::with(|l| l.psk()).flatten(),
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
        crate::bdd::device::Placeholders {
            endpoint: self.device.clone(),
            server_host: host(server),
            server_port: server.port(),
            server_uri: format!("{scheme}://{}:{}", host(server), server.port()),
            bootstrap_uri: format!("coap://{}:{}", host(bootstrap), bootstrap.port()),
            local_port: crate::bdd::device::free_udp_port(),
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
                    mode,
                    identity,
                    secret_key,
                    short_server_id: Some(1),
                    ..SecurityInstance::nosec(values.server_uri)
                },
            )]),
            servers: BTreeMap::from([(0, ServerInstance::new(1, 86400))]),
            ..BootstrapConfig::default()
        }
    }

    /// Starts the launched device early, in the first case that needs to know what it
    /// announces (its version, objects, instances and formats judge which cases apply): it
    /// keeps running as that case's device, whose start then finds it registered. Not for
    /// a bootstrap-only device (its account comes from the case).
    fn probe_launched(&mut self) -> Option<Registration> {
        use crate::bdd::device;
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
        use crate::bdd::device;
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

impl Backend for DeviceBackend {
    fn subject(&self) -> &Subject {
        &self.subject
    }

    fn supports(&self, capability: Capability) -> Result<(), String> {
        let launched_psk = self.launched
            && self.servers.security.is_some()
            && self.servers.server.dtls_addr().is_some()
            && crate::bdd::device::launch().is_some_and(|l| l.uses_psk());
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
        let rt = runtime().map_err(|reason| OpError::Invalid {
            reason: reason.to_string(),
        })?;
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
        let rt = runtime().unwrap_or_else(|e| not_applicable(e.to_string()));
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

    fn secure_address(&self, role: crate::bdd::backend::ServerRole) -> Option<SocketAddr> {
        match role {
            crate::bdd::backend::ServerRole::Lwm2m => self.servers.server.dtls_addr(),
            crate::bdd::backend::ServerRole::Bootstrap => None,
        }
    }

    fn forget_dtls_sessions(
        &mut self,
        _role: crate::bdd::backend::ServerRole,
    ) -> anyhow::Result<()> {
        not_applicable("our network LwM2M Server cannot be told to forget its DTLS sessions")
    }

    fn add_psk(
        &mut self,
        role: crate::bdd::backend::ServerRole,
        endpoint: &str,
        identity: &[u8],
        key: &[u8],
    ) -> anyhow::Result<()> {
        use lwm2m_server::store::{Credentials, SecurityInfo, SecurityStore as _};
        let (crate::bdd::backend::ServerRole::Lwm2m, Some(security)) =
            (role, &self.servers.security)
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
        role: crate::bdd::backend::ServerRole,
        account: SecureAccount,
    ) -> anyhow::Result<()> {
        match (role, account) {
            (crate::bdd::backend::ServerRole::Lwm2m, SecureAccount::Psk { identity, key })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_actions_read_as_words() {
        let paths = vec![Lwm2mPath::resource(3, 0, 0), Lwm2mPath::resource(1, 0, 1)];
        assert_eq!(describe(&ClientAction::Send(paths)), "Send /3/0/0, /1/0/1");
        assert_eq!(describe(&ClientAction::Deregister), "De-register now");
    }
}
