//! The network backend: the same parties as [`super::inprocess`] behind real UDP sockets
//! and real time.
//!
//! - [`DeviceBackend`] ([`Subject::Device`](super::backend::Subject::Device)): our LwM2M Server and Bootstrap Server (the
//!   `lwm2m_server` drivers) listen on UDP; the device under test registers with them by
//!   itself. The servers live for the whole run (a device registers once, not once per
//!   scenario): they start with the first scenario, print their addresses on stderr, and
//!   that scenario waits (bounded by [`DEVICE_WAIT`]) for the device to register. The
//!   scenario's client is the device; steps that need control of the client itself are
//!   not applicable.
//! - [`ServerBackend`] ([`Subject::Server`](super::backend::Subject::Server)): our simulated clients (sans-IO
//!   [`Lwm2mClient`](lwm2m_proto::client::Lwm2mClient) machines, each on its own loopback socket) register with the external
//!   server; what steps ask of the server (operations, registrations, events) goes through
//!   its [`ServerAdapter`](super::adapter::ServerAdapter) (`--server-api`, [`super::adapter`]), off the stepping thread;
//!   what the adapter lacks, or without one, is not applicable.
//!
//! DTLS against a server under test (`--server-coaps coaps://HOST:PORT` beside a `coap://`
//! `--server`, or `--server coaps://HOST:PORT` for a server that only takes DTLS; the same
//! for `--bootstrap-server`): a case's client with a `coaps://` account handshakes with
//! the server's DTLS address from its own socket through the fleet's DTLS links
//! ([`lwm2m_simulator::link`], as in the in-process backend, [`super::secure`]); the LwM2M Server's PSKs go through
//! the adapter ([`ServerAdapter::put_psk`](super::adapter::ServerAdapter::put_psk), removed after the scenario), a Bootstrap
//! Server's into the endpoint's bootstrap configuration as its Bootstrap-Server account.
//! The client's side reports the handshake (`Established`, failures) and a 4.03 to a
//! Register or Bootstrap-Request inside the session (`Refused`); the server's reasons for
//! a failed handshake come through adapters offering `security-events`. Certificate cases
//! are not applicable (the server would have to trust the run's test CA).
//!
//! Both record every real datagram in the [`ExchangeLog`](super::exchange::ExchangeLog) (the drivers' packet tap, or the
//! clients' sockets). Time is real: [`Backend::step`](super::backend::Backend::step) blocks until something is reported
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

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::adapter::{AdapterError, OpenError};

mod device;
mod server;

pub use device::DeviceBackend;
pub use server::{ListenerError, ServerBackend};

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

/// Why a network backend cannot run the subject (every case is then not applicable).
/// Clone: the failures of what is started once per process are kept and told again.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The subject is not the kind the backend runs.
    #[error("{id} is not a {kind}")]
    WrongSubject {
        /// The subject's id.
        id: String,
        /// `server` or `device`.
        kind: &'static str,
    },
    /// The URIs of the server under test.
    #[error(transparent)]
    Listener(#[from] server::ListenerError),
    /// The server adapter cannot be opened (the reason is kept for the whole run).
    #[error(transparent)]
    Adapter(#[from] OpenError),
    /// The server adapter cannot deliver the server's events.
    #[error(transparent)]
    Subscribe(#[from] AdapterError),
    /// `--bootstrap-server-coaps` without `--bootstrap-server`.
    #[error("--bootstrap-server-coaps needs --bootstrap-server")]
    BootstrapCoapsAlone,
    /// No runtime for the sockets.
    #[error("cannot start the network runtime: {reason}")]
    Runtime {
        /// The OS error.
        reason: String,
    },
    /// An address in the environment that is not a socket address.
    #[error("{name}={value:?}: {reason}")]
    EnvAddress {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why it is not an address.
        reason: String,
    },
    /// A device PSK our security store does not take.
    #[error("{what}: {reason}")]
    DevicePsk {
        /// Where the PSK comes from (`the launched device's PSK`,
        /// `LWM2M_HARNESS_DEVICE_PSK`).
        what: &'static str,
        /// Why the store refused it.
        reason: String,
    },
    /// `LWM2M_HARNESS_DEVICE_PSK` that is not `IDENTITY:HEXKEY`.
    #[error("LWM2M_HARNESS_DEVICE_PSK: give IDENTITY:HEXKEY")]
    DevicePskShape,
    /// Our server's certificate files do not load.
    #[error("{reason}")]
    Certificate {
        /// Why, with its causes.
        reason: String,
    },
    /// Some of the certificate variables without the others.
    #[error(
        "certificates need LWM2M_HARNESS_CERT, LWM2M_HARNESS_CERT_KEY and LWM2M_HARNESS_CA together"
    )]
    CertificateVariables,
    /// One of our servers for the device did not start.
    #[error("cannot start our {role} on {bind}: {reason}")]
    Start {
        /// `LwM2M Server` or `Bootstrap Server`.
        role: &'static str,
        /// Where it was to listen.
        bind: SocketAddr,
        /// Why not.
        reason: String,
    },
    /// The device did not register in time.
    #[error(
        "device {endpoint:?} did not register with our LwM2M Server (coap://{server}) within {wait:?}"
    )]
    NoRegistration {
        /// The device's endpoint.
        endpoint: String,
        /// Our LwM2M Server's address.
        server: SocketAddr,
        /// How long the backend waited.
        wait: Duration,
    },
}

fn env_addr(name: &'static str) -> Result<SocketAddr, BackendError> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|e: std::net::AddrParseError| BackendError::EnvAddress {
                name,
                value: v.clone(),
                reason: e.to_string(),
            }),
        Err(_) => Ok(SocketAddr::from(([0, 0, 0, 0], 0))),
    }
}

/// The runtime every network backend of the process runs its sockets on.
fn runtime() -> Result<&'static tokio::runtime::Runtime, BackendError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, BackendError>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("lwm2m-net-backend")
                .enable_all()
                .build()
                .map_err(|e| BackendError::Runtime {
                    reason: e.to_string(),
                })
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

/// Waits on `rx` until something arrives or `until` (an instant) passes.
fn block_until<T>(rx: &mut mpsc::UnboundedReceiver<T>, until: Instant) -> Option<T> {
    let left = until.saturating_duration_since(Instant::now());
    let rt = runtime().ok()?;
    rt.block_on(async { tokio::time::timeout(left, rx.recv()).await })
        .ok()
        .flatten()
}
