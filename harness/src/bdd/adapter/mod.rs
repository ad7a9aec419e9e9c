//! Server adapters: how the suite drives a **server under test** (`test --server URI
//! --server-api SPEC`).
//!
//! Our simulated clients register with the external server over real UDP
//! ([`super::network::ServerBackend`]); everything a case asks of the *server* — Read,
//! Write, Observe... on a registered client, its registrations, the events it saw
//! (registrations, notifications, Sends), credentials and bootstrap configurations — goes
//! through one [`ServerAdapter`]. Every [`Feature`] is optional: an adapter lists what it
//! offers in [`AdapterInfo::features`], and a case that needs one it lacks is not
//! applicable, with the adapter's name in the reason ([`lacks`]).
//!
//! Adapters (the `--server-api` spec):
//! - [`inprocess::InProcessServer`]: our own tokio LwM2M Server (`lwm2m_server`) in this
//!   process, no HTTP in between; the reference the others are checked against;
//! - `lwm2m-harness+http://HOST:PORT?token=T` ([`harness_http`]): our own REST API and its
//!   server-sent events, so `lwm2m-harness serve` in another process is a server under
//!   test;
//! - `leshan+http://HOST:PORT` ([`leshan`]): the Eclipse Leshan 2.x demo server's REST
//!   API and event stream;
//! - `exec:COMMAND` ([`exec`]): a driver process the user writes for any other server,
//!   speaking the JSON-lines protocol documented there.
//!
//! An adapter is opened once per run and spec ([`open`]): the driver process and the
//! event stream live for the run, and the report names the product it reported.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use lwm2m_proto::bootstrap::{BootstrapConfig, BootstrapEvent};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{OpError, Operation, Registration, Response, ServerEvent};

use super::happening::{DtlsHappening, Happening};

pub mod exec;
pub mod harness_http;
mod http;
pub mod inprocess;
pub mod json;
pub mod leshan;

pub use http::{ConnectError, HttpError};

/// Something a case may ask of the server under test; each is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Feature {
    /// Read (Core TS 1.1 §6.3.1).
    Read,
    /// Write, replace or partial update (§6.3.3).
    Write,
    /// Execute (§6.3.5).
    Execute,
    /// Observe (§6.4.1).
    Observe,
    /// Cancel an observation, actively or passively (§6.4.2).
    CancelObservation,
    /// Discover (§6.3.2).
    Discover,
    /// Create (§6.3.6).
    Create,
    /// Delete (§6.3.7).
    Delete,
    /// Write-Attributes (§6.3.4).
    WriteAttributes,
    /// Read-Composite (§6.3.8, 1.1).
    ReadComposite,
    /// Write-Composite (§6.3.9, 1.1).
    WriteComposite,
    /// Observe-Composite (§6.4.3, 1.1).
    ObserveComposite,
    /// Look up a client's registration.
    Registrations,
    /// Registration, update and de-registration events.
    Events,
    /// Notification events.
    Notifications,
    /// The records a Send delivered (§6.4.4).
    Send,
    /// Expiry of a registration as an event of its own.
    Expiry,
    /// Refused registration messages as events.
    Refusals,
    /// Whether a queue-mode client is asleep.
    QueueState,
    /// The Content-Format of a client's answer.
    ResponseFormat,
    /// The decoder's findings on a response, as our own decoder names them.
    Findings,
    /// The deviations our server notes on a Register (only our own server has them).
    RegistrationFindings,
    /// Store a client's PSK (DTLS, Core TS 1.1 §7.1.8).
    PutCredentials,
    /// Store a bootstrap configuration.
    BootstrapConfig,
    /// The server's DTLS handshake failures as events, with its reason (unknown PSK
    /// identity, wrong key): what a client cannot tell apart from the alert it gets.
    SecurityEvents,
}

impl Feature {
    /// Every feature with its name in the driver protocol and the reports.
    pub const NAMES: [(&'static str, Self); 25] = [
        ("read", Self::Read),
        ("write", Self::Write),
        ("execute", Self::Execute),
        ("observe", Self::Observe),
        ("cancel-observation", Self::CancelObservation),
        ("discover", Self::Discover),
        ("create", Self::Create),
        ("delete", Self::Delete),
        ("write-attributes", Self::WriteAttributes),
        ("read-composite", Self::ReadComposite),
        ("write-composite", Self::WriteComposite),
        ("observe-composite", Self::ObserveComposite),
        ("registrations", Self::Registrations),
        ("events", Self::Events),
        ("notifications", Self::Notifications),
        ("send", Self::Send),
        ("expiry", Self::Expiry),
        ("refusals", Self::Refusals),
        ("queue-state", Self::QueueState),
        ("response-format", Self::ResponseFormat),
        ("findings", Self::Findings),
        ("registration-findings", Self::RegistrationFindings),
        ("put-credentials", Self::PutCredentials),
        ("bootstrap-config", Self::BootstrapConfig),
        ("security-events", Self::SecurityEvents),
    ];

    /// The feature an operation needs.
    pub fn of(operation: &Operation) -> Self {
        match operation {
            Operation::Read { .. } => Self::Read,
            Operation::Discover { .. } => Self::Discover,
            Operation::Write { .. } => Self::Write,
            Operation::WriteAttributes { .. } => Self::WriteAttributes,
            Operation::Execute { .. } => Self::Execute,
            Operation::Create { .. } => Self::Create,
            Operation::Delete { .. } => Self::Delete,
            Operation::ReadComposite { .. } => Self::ReadComposite,
            Operation::WriteComposite { .. } => Self::WriteComposite,
            Operation::Observe { .. } => Self::Observe,
            Operation::ObserveComposite { .. } => Self::ObserveComposite,
            _ => Self::CancelObservation,
        }
    }

    /// Every feature.
    pub fn all() -> BTreeSet<Self> {
        Self::NAMES.iter().map(|(_, f)| *f).collect()
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::NAMES
            .iter()
            .find(|(_, x)| x == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl FromStr for Feature {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, f)| *f)
            .ok_or_else(|| format!("unknown feature {s:?}"))
    }
}

/// What an adapter is and offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    /// The adapter's name (`lwm2m-harness+http`, `leshan+http`, `exec`, `in-process`).
    pub adapter: String,
    /// The server product it drives, as it reported it (`unknown` if it did not).
    pub product: String,
    /// Its version, as reported.
    pub version: String,
    /// What it offers.
    pub features: BTreeSet<Feature>,
}

impl AdapterInfo {
    /// `Ok` if the adapter offers `feature`, else [`AdapterError::Lacks`] (the
    /// not-applicable reason).
    pub fn offers(&self, feature: Feature) -> Result<(), AdapterError> {
        if self.features.contains(&feature) {
            Ok(())
        } else {
            Err(AdapterError::Lacks {
                adapter: self.adapter.clone(),
                feature,
            })
        }
    }
}

/// The format an operation asks for (Accept) or sends (Content-Format), if it names one.
pub fn requested_format(operation: &Operation) -> Option<lwm2m_proto::ContentFormat> {
    match operation {
        Operation::Read { format, .. }
        | Operation::Write { format, .. }
        | Operation::Create { format, .. }
        | Operation::ReadComposite { format, .. }
        | Operation::WriteComposite { format, .. }
        | Operation::Observe { format, .. }
        | Operation::ObserveComposite { format, .. } => *format,
        _ => None,
    }
}

/// A registration as the server under test shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationView {
    /// The registration (instants are when the adapter saw it; `findings` empty unless the
    /// adapter offers [`Feature::Findings`]).
    pub registration: Registration,
    /// Whether the server considers the client asleep, if it says.
    pub sleeping: Option<bool>,
}

/// Why an adapter call gave no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// The adapter does not offer this.
    #[error("the server adapter {adapter} does not offer {feature}")]
    Lacks {
        /// The adapter.
        adapter: String,
        /// What it lacks.
        feature: Feature,
    },
    /// The server (or its API, or the driver) failed or answered something unreadable.
    #[error("{adapter}: {reason}")]
    Failed {
        /// The adapter.
        adapter: String,
        /// What happened.
        reason: String,
    },
}

/// Where an adapter delivers the server's events (LwM2M Server and Bootstrap Server
/// events, as [`Happening`]s); `false` back means the receiver is gone (the adapter then
/// forgets the sink).
pub type EventSink = Box<dyn Fn(Happening) -> bool + Send>;

/// A server under test behind some API (see the module documentation). Calls block; the
/// backend makes them off its stepping thread where a simulated client must answer
/// meanwhile.
pub trait ServerAdapter: Send + Sync + fmt::Debug {
    /// What it is and offers.
    fn info(&self) -> &AdapterInfo;

    /// Runs `operation` on the registered client `endpoint`; the client's answer (any
    /// code), or why there is none.
    fn request(&self, endpoint: &str, operation: &Operation) -> Result<Response, OpError>;

    /// `Ok` if the adapter can ask for `operation` as it stands (its format, its path's
    /// level), else the reason the case is not applicable. Checked before
    /// [`ServerAdapter::request`].
    fn check(&self, operation: &Operation) -> Result<(), String> {
        let _ = operation;
        Ok(())
    }

    /// The server's registration of `endpoint`, if it holds one.
    fn registration(&self, endpoint: &str) -> Result<Option<RegistrationView>, AdapterError>;

    /// From now on, delivers the server's events to `sink`.
    fn subscribe(&self, sink: EventSink) -> Result<(), AdapterError>;

    /// Stores `endpoint`'s PSK, `identity` and `key`, in the server's security store.
    fn put_psk(&self, endpoint: &str, identity: &[u8], key: &[u8]) -> Result<(), AdapterError> {
        let _ = (endpoint, identity, key);
        Err(AdapterError::Lacks {
            adapter: self.info().adapter.clone(),
            feature: Feature::PutCredentials,
        })
    }

    /// Removes `endpoint`'s credentials from the server's security store, so that the next
    /// scenario meets the server as it was (the default: nothing to remove where nothing
    /// could be stored).
    fn remove_psk(&self, endpoint: &str) -> Result<(), AdapterError> {
        let _ = endpoint;
        Err(AdapterError::Lacks {
            adapter: self.info().adapter.clone(),
            feature: Feature::PutCredentials,
        })
    }

    /// Stores a bootstrap configuration for `endpoint` (a name or a `*` pattern).
    fn put_bootstrap_config(
        &self,
        endpoint: &str,
        config: &BootstrapConfig,
    ) -> Result<(), AdapterError> {
        let _ = (endpoint, config);
        Err(AdapterError::Lacks {
            adapter: self.info().adapter.clone(),
            feature: Feature::BootstrapConfig,
        })
    }

    /// Removes the bootstrap configuration of `endpoint` (a name or a `*` pattern), so
    /// that the next scenario meets the Bootstrap Server as it was.
    fn remove_bootstrap_config(&self, endpoint: &str) -> Result<(), AdapterError> {
        let _ = endpoint;
        Err(AdapterError::Lacks {
            adapter: self.info().adapter.clone(),
            feature: Feature::BootstrapConfig,
        })
    }
}

/// Takes back what [`ServerAdapter::put_bootstrap_config`] stored (the default: nothing
/// to take back when nothing can be stored).
pub fn remove_bootstrap_config(adapter: &dyn ServerAdapter, endpoint: &str) {
    let _ = adapter.remove_bootstrap_config(endpoint);
}

/// The subscribers of an adapter's event stream.
#[derive(Default)]
pub struct Sinks(Mutex<Vec<EventSink>>);

impl fmt::Debug for Sinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sinks").finish_non_exhaustive()
    }
}

impl Sinks {
    /// Adds a subscriber.
    pub fn add(&self, sink: EventSink) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sink);
    }

    /// Gives `event` to every subscriber, forgetting those that are gone.
    pub fn deliver(&self, event: &ServerEvent) {
        self.deliver_happening(&Happening::Server(event.clone()));
    }

    /// Gives a Bootstrap Server's `event` to every subscriber.
    pub fn deliver_bootstrap(&self, event: &BootstrapEvent) {
        self.deliver_happening(&Happening::Bootstrap(event.clone()));
    }

    /// Gives what a DTLS listener of the server reported to every subscriber. Its
    /// `endpoint` is the client's address as the server saw it (`IP:PORT`): the backend
    /// knows which of its clients that is.
    pub fn deliver_dtls(&self, happening: &DtlsHappening) {
        self.deliver_happening(&Happening::Dtls(happening.clone()));
    }

    fn deliver_happening(&self, happening: &Happening) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|sink| sink(happening.clone()));
    }
}

/// The adapters of the process, by spec: opened once, shared by every scenario.
fn opened() -> &'static Mutex<BTreeMap<String, Arc<dyn ServerAdapter>>> {
    static OPENED: OnceLock<Mutex<BTreeMap<String, Arc<dyn ServerAdapter>>>> = OnceLock::new();
    OPENED.get_or_init(Mutex::default)
}

/// Specs that could not be opened, with why: not tried again in the same process (a
/// driver that never says hello would cost its wait in every scenario).
fn refused() -> &'static Mutex<BTreeMap<String, OpenError>> {
    static REFUSED: OnceLock<Mutex<BTreeMap<String, OpenError>>> = OnceLock::new();
    REFUSED.get_or_init(Mutex::default)
}

/// The adapter a `--server-api` spec names, opened at its first use and then shared;
/// `Err` says why it cannot be opened (every case is then not applicable).
pub fn open(spec: &str, registry: Arc<Registry>) -> Result<Arc<dyn ServerAdapter>, OpenError> {
    let mut all = opened().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(a) = all.get(spec) {
        return Ok(a.clone());
    }
    let mut failed = refused().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(why) = failed.get(spec) {
        return Err(why.clone());
    }
    let adapter = open_new(spec, registry);
    match adapter {
        Ok(a) => {
            all.insert(spec.to_owned(), a.clone());
            Ok(a)
        }
        Err(why) => {
            failed.insert(spec.to_owned(), why.clone());
            Err(why)
        }
    }
}

/// Why the adapter a `--server-api` spec names cannot be opened (kept for the run: every
/// case is then not applicable with this reason).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A spec of no known form.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// `in-process:NAME` with no such server installed in this process.
    #[error("--server-api {spec:?}: no in-process server of that name in this process")]
    NoInProcess {
        /// The spec.
        spec: String,
    },
    /// The exec driver cannot be used.
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
    /// The HTTP API cannot be reached or refuses us.
    #[error(transparent)]
    Connect(#[from] http::ConnectError),
}

fn open_new(spec: &str, registry: Arc<Registry>) -> Result<Arc<dyn ServerAdapter>, OpenError> {
    let adapter: Arc<dyn ServerAdapter> = if let Some(rest) = spec.strip_prefix("exec:") {
        Arc::new(exec::ExecAdapter::spawn(rest, registry)?)
    } else if let Some(rest) = spec.strip_prefix("lwm2m-harness+http://") {
        Arc::new(harness_http::HarnessHttp::connect(rest, registry)?)
    } else if let Some(rest) = spec.strip_prefix("leshan+http://") {
        Arc::new(leshan::Leshan::connect(rest, registry)?)
    } else if spec.starts_with("in-process:") {
        return Err(OpenError::NoInProcess {
            spec: spec.to_owned(),
        });
    } else {
        return Err(SpecError {
            spec: spec.to_owned(),
        }
        .into());
    };
    Ok(adapter)
}

/// Makes `spec` name `adapter` in this process (an adapter built in code, such as
/// [`inprocess::InProcessServer`], whose spec is `in-process:NAME`).
pub fn install(spec: &str, adapter: Arc<dyn ServerAdapter>) {
    opened()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(spec.to_owned(), adapter);
}

/// What the adapter for `spec` reported, if it was opened in this process.
pub fn info_of(spec: &str) -> Option<AdapterInfo> {
    opened()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(spec)
        .map(|a| a.info().clone())
}

/// A `--server-api` spec of no known form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--server-api {spec:?}: expected lwm2m-harness+http://HOST:PORT?token=T, \
     leshan+http://HOST:PORT or exec:COMMAND"
)]
pub struct SpecError {
    /// The spec as given.
    pub spec: String,
}

/// Checks the form of a `--server-api` spec without opening it.
pub fn check_spec(spec: &str) -> Result<(), SpecError> {
    let ok = spec
        .strip_prefix("exec:")
        .is_some_and(|c| !c.trim().is_empty())
        || ["lwm2m-harness+http://", "leshan+http://"]
            .iter()
            .any(|p| spec.strip_prefix(p).is_some_and(|r| !r.is_empty()));
    if ok {
        Ok(())
    } else {
        Err(SpecError {
            spec: spec.to_owned(),
        })
    }
}

/// The name of the adapter a spec names (`exec`, `lwm2m-harness+http`, `leshan+http`).
pub fn kind_of(spec: &str) -> &str {
    if spec.starts_with("exec:") {
        "exec"
    } else if spec.starts_with("in-process:") {
        "in-process"
    } else {
        spec.split("://").next().unwrap_or(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_read_and_print_by_name() {
        for (name, f) in Feature::NAMES {
            assert_eq!(name.parse::<Feature>(), Ok(f));
            assert_eq!(f.to_string(), name);
        }
        assert!("teleport".parse::<Feature>().is_err());
        assert_eq!(Feature::all().len(), Feature::NAMES.len());
    }

    #[test]
    fn specs_are_checked_and_named() {
        assert!(check_spec("lwm2m-harness+http://127.0.0.1:8080?token=x").is_ok());
        assert!(check_spec("leshan+http://127.0.0.1:8080").is_ok());
        assert!(check_spec("exec:node driver.js").is_ok());
        for bad in ["exec:", "http://x", "leshan+http://", ""] {
            assert!(check_spec(bad).is_err(), "{bad}");
        }
        assert_eq!(kind_of("exec:node d.js"), "exec");
        assert_eq!(kind_of("leshan+http://h:1"), "leshan+http");
        let info = AdapterInfo {
            adapter: "exec".into(),
            product: "p".into(),
            version: "1".into(),
            features: BTreeSet::from([Feature::Read]),
        };
        assert!(info.offers(Feature::Read).is_ok());
        let why = info.offers(Feature::Create).unwrap_err();
        assert_eq!(
            why,
            AdapterError::Lacks {
                adapter: "exec".into(),
                feature: Feature::Create
            }
        );
        assert_eq!(
            why.to_string(),
            "the server adapter exec does not offer create"
        );
    }
}
