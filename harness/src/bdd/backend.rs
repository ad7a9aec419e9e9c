//! What the steps run against: a [`Backend`] joins the LwM2M Server, the Bootstrap Server
//! and the clients of a scenario, whichever of them is ours and whichever is the subject
//! under test, behind one interface.
//!
//! Two backends:
//! - **in-process** ([`super::inprocess::InProcess`]): our sans-IO server, bootstrap server
//!   and simulated clients joined by an in-memory datagram link on a virtual clock, so a
//!   scenario that waits 86400 s runs in milliseconds and repeats exactly from its seed;
//! - **network** ([`super::network`]): the same machines behind real sockets (the
//!   `lwm2m_server` drivers) and real time, either a real device registering with our
//!   servers ([`Subject::Device`]) or our simulated clients registering with an external
//!   server ([`Subject::Server`]).
//!
//! A step asks the backend for what it needs; what a subject cannot do is a
//! [`Capability`] it lacks, and the case becomes "not applicable" with the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use lwm2m_dtls::Identity;
use lwm2m_proto::bootstrap::{BootstrapConfig, BootstrapError};
use lwm2m_proto::client::{ClientConfig, Lwm2mClient, ObjectTree};
use lwm2m_proto::coap::Packet;
use lwm2m_proto::server::{ObservationId, OpError, OpId, Operation, Registration};
use lwm2m_proto::{Lwm2mPath, Value};
use lwm2m_simulator::NetworkModel;

use super::exchange::ExchangeLog;
use crate::accounts::SecureAccount;

/// Why a backend without DTLS refuses the DTLS methods.
const NO_DTLS: &str = "this backend has no DTLS (CoAP over DTLS runs in process only)";

/// What a run tests: the subject of its interoperability report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Our LwM2M Server and Bootstrap Server against our simulated clients, in one process
    /// on a virtual clock: the suite checks itself. `quirks` (quirk and quirk pack names)
    /// are added to every client the scenarios create, to see a deviating client fail.
    InProcess {
        /// Quirks or quirk packs every simulated client gets on top of its profile's.
        quirks: Vec<String>,
    },
    /// A device under test: a real client, registering with our servers under this
    /// endpoint name.
    Device {
        /// Its endpoint client name.
        endpoint: String,
    },
    /// A server under test: an external LwM2M server our simulated clients register with.
    Server {
        /// Its URI, `coap://HOST:PORT`, or `coaps://HOST:PORT` for a server that listens for
        /// CoAP over DTLS only.
        uri: String,
        /// Its CoAP over DTLS address beside a `coap://` [`Subject::Server::uri`],
        /// `coaps://HOST:PORT` (`--server-coaps`): the DTLS cases' clients reach it there,
        /// with PSKs the adapter stores.
        secure: Option<String>,
        /// The adapter that drives it (`--server-api`, see [`super::adapter`]); without
        /// one only what shows on the wire is checked.
        api: Option<String>,
        /// A Bootstrap Server under test, `coap://HOST:PORT` or `coaps://HOST:PORT`
        /// (`--bootstrap-server`): the clients of bootstrap cases bootstrap from it.
        bootstrap: Option<String>,
        /// Its CoAP over DTLS address beside a `coap://` bootstrap URI
        /// (`--bootstrap-server-coaps`).
        bootstrap_secure: Option<String>,
        /// The adapter that stores its bootstrap configurations and reports its events
        /// (`--bootstrap-api`; default: `api`).
        bootstrap_api: Option<String>,
    },
}

impl Subject {
    /// Our own server and clients, in process, as they are.
    pub fn in_process() -> Self {
        Self::InProcess { quirks: Vec::new() }
    }

    /// The id in the report matrix (`in-process`, `device:EP`, `server:URI`).
    pub fn id(&self) -> String {
        match self {
            Self::InProcess { quirks } if quirks.is_empty() => "in-process".to_owned(),
            Self::InProcess { quirks } => format!("in-process+{}", quirks.join("+")),
            Self::Device { endpoint } => format!("device:{endpoint}"),
            Self::Server { uri, api: None, .. } => format!("server:{uri}"),
            Self::Server {
                uri,
                api: Some(api),
                ..
            } => {
                format!("server:{uri} via {}", super::adapter::kind_of(api))
            }
        }
    }

    /// What the subject is, for the report (`simulated-client`, `device`, `server`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InProcess { .. } => "simulated-client",
            Self::Device { .. } => "device",
            Self::Server { .. } => "server",
        }
    }

    /// The subject as the report lists it.
    pub fn report_subject(&self) -> crate::report::Subject {
        let (version, address) = match self {
            Self::InProcess { quirks } => {
                let with = if quirks.is_empty() {
                    String::new()
                } else {
                    format!(", quirks {}", quirks.join(", "))
                };
                (
                    format!(
                        "lwm2m-harness {} (in-process{with})",
                        env!("CARGO_PKG_VERSION")
                    ),
                    None,
                )
            }
            Self::Device { endpoint } => ("unknown".to_owned(), Some(endpoint.clone())),
            Self::Server {
                uri,
                secure,
                api: None,
                ..
            } => (
                "unknown".to_owned(),
                Some(addresses(uri, secure.as_deref())),
            ),
            Self::Server {
                uri,
                secure,
                api: Some(api),
                ..
            } => {
                // The product and version the adapter reported, and the adapter.
                let version = match super::adapter::info_of(api) {
                    Some(i) => format!("{} {} (adapter {})", i.product, i.version, i.adapter),
                    None => format!(
                        "unknown (adapter {} did not open)",
                        super::adapter::kind_of(api)
                    ),
                };
                (version, Some(addresses(uri, secure.as_deref())))
            }
        };
        crate::report::Subject {
            id: self.id(),
            kind: self.kind().to_owned(),
            version,
            address,
        }
    }
}

/// A server's URI, and its `coaps://` one beside it if given.
fn addresses(uri: &str, secure: Option<&str>) -> String {
    match secure {
        Some(secure) => format!("{uri} {secure}"),
        None => uri.to_owned(),
    }
}

/// Something a case needs from its subject or backend; a lacking capability makes the case
/// not applicable, with [`Backend::supports`]'s reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Capability {
    /// CoAP over DTLS 1.2 (RFC 6347) with PSK or certificates.
    Dtls,
    /// DTLS with raw public keys (RFC 7250, Security mode 1).
    RawPublicKey,
    /// CoAP over TCP (RFC 8323, binding `T`).
    Tcp,
    /// Bootstrap from a smartcard (Core TS 1.1 §5.2.4).
    Smartcard,
    /// The client de-registers when its Server object's Disable (1/x/4) is executed
    /// (Core TS 1.1 Appendix E.2).
    Disable,
    /// The client runs a client-initiated bootstrap when its Server object's
    /// Bootstrap-Request Trigger (1/x/9) is executed (Core TS 1.1 Appendix E.2).
    BootstrapTrigger,
    /// The client honours Mute Send (1/x/23, Core TS 1.1 Appendix E.2).
    MuteSend,
    /// The client accepts a Bootstrap Server's requests it did not ask for (Server
    /// Initiated Bootstrap, Core TS 1.1 §5.2).
    ServerInitiatedBootstrap,
    /// The LwM2M Server can send a Read without an Accept option (ETS int-237).
    ReadWithoutAccept,
    /// Virtual time: long waits cost nothing.
    VirtualTime,
}

impl Capability {
    /// Every capability, with the name steps use.
    pub const NAMES: [(&'static str, Self); 10] = [
        ("DTLS", Self::Dtls),
        ("raw public keys", Self::RawPublicKey),
        ("TCP", Self::Tcp),
        ("smartcard bootstrap", Self::Smartcard),
        ("Disable", Self::Disable),
        ("Bootstrap-Request Trigger", Self::BootstrapTrigger),
        ("Mute Send", Self::MuteSend),
        ("server initiated bootstrap", Self::ServerInitiatedBootstrap),
        ("Read without Accept", Self::ReadWithoutAccept),
        ("virtual time", Self::VirtualTime),
    ];
}

impl FromStr for Capability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, c)| *c)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
                format!("unknown capability {s:?}; known: {}", names.join(", "))
            })
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::NAMES
            .iter()
            .find(|(_, c)| c == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

/// What a step looks at inside the LwM2M Server: ours shows everything; a server under
/// test shows what its adapter offers ([`super::adapter::Feature`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerView {
    /// Its registration, update and de-registration events.
    Events,
    /// The records a Send delivered.
    Send,
    /// Expiry of a registration, as an event.
    Expiry,
    /// Registration messages it refused, as events.
    Refusals,
    /// Our decoder's findings on what a client answered.
    Findings,
    /// The deviations our server notes on a Register (findings and link notes).
    RegistrationFindings,
    /// Whether a queue-mode client is asleep.
    QueueState,
    /// The Content-Format of a client's answer.
    ResponseFormat,
    /// That something did *not* happen: every kind of event must be visible.
    Absence,
    /// Its DTLS listeners' reasons for a failed handshake (unknown PSK identity, wrong key).
    Security,
}

pub use super::happening::{DtlsHappening, DtlsSide, Happening, Timed};
pub use crate::accounts::ServerRole;

/// A simulated client to add: its settings and factory object tree.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Settings (endpoint name, version, servers, formats, quirks).
    pub config: ClientConfig,
    /// Factory object tree.
    pub tree: ObjectTree,
}

/// Something a simulated client does on the harness's behalf.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientAction {
    /// Start: bootstrap or register.
    Start,
    /// A sensor reading changes (observations are evaluated).
    SetValue(Lwm2mPath, Value),
    /// Send these paths with the Send operation (Core TS 1.1 §6.4.3).
    Send(Vec<Lwm2mPath>),
    /// Send an Update now (a queue-mode client wakes up).
    Update,
    /// De-register (Core TS 1.1 §6.2.3).
    Deregister,
}

/// The parties of a scenario behind one interface (see the module documentation).
///
/// Time only moves in [`Backend::step`]; everything the parties report comes out of
/// [`Backend::poll_happening`] in the order it happened. Methods that need what a subject
/// lacks return `Err` with the reason, and the case is not applicable.
pub trait Backend: fmt::Debug {
    /// The subject under test.
    fn subject(&self) -> &Subject;

    /// `Ok` if the subject and backend can do `capability`, else why not.
    fn supports(&self, capability: Capability) -> Result<(), String>;

    /// `Ok` if steps can see `view` inside the LwM2M Server, else why not (a server under
    /// test shows what its adapter offers).
    fn server_view(&self, view: ServerView) -> Result<(), String> {
        let _ = view;
        Ok(())
    }

    /// Time since the start of the scenario.
    fn now(&self) -> Duration;

    /// Runs until something is reported or `until` is reached, whichever comes first.
    fn step(&mut self, until: Duration);

    /// The next thing that happened.
    fn poll_happening(&mut self) -> Option<Timed>;

    /// Every datagram so far.
    fn exchange_log(&self) -> &ExchangeLog;

    /// Traffic and state counters for the report (`datagrams`, `bytes`, `registrations`...).
    fn counters(&self) -> BTreeMap<String, u64>;

    /// The LwM2M Server's address, as clients reach it.
    fn server_address(&self) -> SocketAddr;

    /// The Bootstrap Server's address, as clients reach it.
    fn bootstrap_address(&self) -> SocketAddr;

    /// Starts an operation of the LwM2M Server on a registered client.
    fn request(&mut self, endpoint: &str, operation: Operation) -> Result<OpId, OpError>;

    /// The server's registration of `endpoint`.
    fn registration(&self, endpoint: &str) -> Option<Registration>;

    /// What a device the harness starts announces, before any case has seen it register:
    /// the backend starts it once, waits (bounded) for its Register and stops it. `None`
    /// where there is no such device or it did not register.
    fn probe_device(&mut self) -> Option<Registration> {
        None
    }

    /// The observations the server holds on `endpoint`.
    fn observations(&self, endpoint: &str) -> Vec<(ObservationId, Vec<Lwm2mPath>)>;

    /// Whether the server considers `endpoint` awake (true for non-queue-mode clients).
    fn server_sees_awake(&self, endpoint: &str) -> bool;

    /// Requests the server holds for a sleeping queue-mode client.
    fn queued(&self, endpoint: &str) -> usize;

    /// Delivers `packet` to the LwM2M Server as if `endpoint` had sent it from its current
    /// address (a spoofed message, as ETS int-105 uses on NoSec).
    fn spoof_to_server(&mut self, endpoint: &str, packet: Packet) -> anyhow::Result<()>;

    /// Adds a bootstrap configuration for `endpoint` (a name or a `*` pattern).
    fn add_bootstrap_config(&mut self, endpoint: &str, config: BootstrapConfig);

    /// Server-initiated bootstrap of `endpoint` (Core TS 1.1 §5.2.3).
    fn start_bootstrap(&mut self, endpoint: &str) -> Result<(), BootstrapError>;

    /// Adds a simulated client (not started).
    fn add_client(&mut self, spec: ClientSpec) -> anyhow::Result<()>;

    /// Makes a simulated client act.
    fn client_action(&mut self, endpoint: &str, action: ClientAction) -> anyhow::Result<()>;

    /// A simulated client's machine, to inspect its object tree and state.
    fn client(&self, endpoint: &str) -> Option<&Lwm2mClient>;

    /// Puts a simulated client behind a network model (NAT, sleep schedule, impairments),
    /// from now on.
    fn set_network(&mut self, endpoint: &str, model: &NetworkModel) -> anyhow::Result<()>;

    /// The address the server sees a simulated client at now.
    fn public_address(&self, endpoint: &str) -> Option<SocketAddr>;

    /// The DTLS address of our server `role`, as clients reach it (`coaps://`), if it has
    /// one.
    fn secure_address(&self, role: ServerRole) -> Option<SocketAddr> {
        let _ = role;
        None
    }

    /// Our server `role` forgets every DTLS session without a word, as after a restart:
    /// records of the old sessions are dropped, and clients must handshake again.
    fn forget_dtls_sessions(&mut self, role: ServerRole) -> anyhow::Result<()> {
        let _ = role;
        anyhow::bail!("{NO_DTLS}")
    }

    /// Our server `role` knows the PSK `identity` with `key`, belonging to `endpoint`
    /// (its security store, Core TS 1.1 §7.1.8).
    fn add_psk(
        &mut self,
        role: ServerRole,
        endpoint: &str,
        identity: &[u8],
        key: &[u8],
    ) -> anyhow::Result<()> {
        let _ = (role, endpoint, identity, key);
        anyhow::bail!("{NO_DTLS}")
    }

    /// A simulated client that has not started gets a `coaps://` account on our server
    /// `role` (its LwM2M Server account, or its Bootstrap-Server account) with `account`'s
    /// credentials.
    fn secure_client(
        &mut self,
        endpoint: &str,
        role: ServerRole,
        account: SecureAccount,
    ) -> anyhow::Result<()> {
        let _ = (endpoint, role, account);
        anyhow::bail!("{NO_DTLS}")
    }

    /// The identity of the DTLS session through which the LwM2M Server last heard from
    /// `endpoint`'s registration (`None`: plain CoAP, or not registered).
    fn secure_identity(&self, endpoint: &str) -> Option<Identity> {
        let _ = endpoint;
        None
    }
}
