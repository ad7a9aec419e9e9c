//! The Bootstrap Server driver: the sans-IO [`BootstrapServer`] (Core TS 1.1 §6.1) on its
//! own UDP socket and task, configurations read from a [`BootstrapStore`] at each
//! Bootstrap-Request (so REST changes apply to the next client at once).
//!
//! With [`BootstrapOptions::dtls`] a second socket serves Bootstrap-Requests over DTLS
//! (Core TS 1.1 §7.1) through the same wrapper as the LwM2M Server's ([`crate::dtls`]):
//! its own machine, the same store and bus. PSK keys and identity owners come from the
//! options' security store, normally [`BootstrapCredentials`] (the bootstrap-server
//! Security instance of each endpoint's configuration). A Bootstrap-Request
//! (`POST /bs?ep=NAME`) over a session whose identity does not belong to NAME gets 4.03
//! and a [`crate::events::SecurityEvent::IdentityMismatch`]. The plain socket refuses
//! (4.03) an endpoint whose configuration's Bootstrap Server account is not NoSec: its
//! credentials are not handed out in clear.
//!
//! With [`BootstrapOptions::provision`], the LwM2M Server credentials a configuration hands
//! out (its first non-bootstrap PSK Security instance) are put into the LwM2M Server's
//! security store when the session starts, before the first write, so the client's
//! handshake with the LwM2M Server finds them. If the store refuses them (the identity
//! belongs to another endpoint, an empty identity or key) the Bootstrap-Request is refused
//! with 5.00 and the reason ([`BootstrapError::Provisioning`]): the client is not handed
//! credentials its LwM2M Server would refuse.
//!
//! [`BootstrapCredentials`]: crate::store::BootstrapCredentials

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use lwm2m_proto::bootstrap::BootstrapConfig;
use lwm2m_proto::bootstrap::config::{SecurityInstance, SecurityMode};
use lwm2m_proto::bootstrap::server::{
    BootstrapError, BootstrapEvent, BootstrapServer, BootstrapServerConfig, ConfigSource,
};
use lwm2m_proto::coap::Counters;
use tokio::sync::{broadcast, oneshot};

use crate::dtls::{DtlsOptions, Gated};
use crate::events::{Event, EventBus, PacketTap, Role};
use crate::listener::Listener;
use crate::store::{BootstrapStore, ConfigKey, Credentials, SecurityInfo, SecurityStore, hex};
use crate::task::{DriverError, Handler, Io, Task, bind_udp};

/// A [`ConfigSource`] over a [`BootstrapStore`]: the endpoint's own configuration, else the
/// most specific matching pattern's, labelled `endpoint NAME` or `pattern P`; with
/// `provision`, the configuration's LwM2M Server PSK goes into that store when a session
/// starts (see the module documentation).
#[derive(Clone)]
pub struct StoreConfigSource {
    /// Where configurations come from.
    pub store: Arc<dyn BootstrapStore>,
    /// The LwM2M Server's security store, if the credentials handed out must be put there.
    pub provision: Option<Arc<dyn SecurityStore>>,
    /// The source serves the DTLS socket. On the plain one, an endpoint whose
    /// configuration's Bootstrap Server account is not NoSec is refused (4.03): its
    /// credentials are not handed out in clear.
    pub secure: bool,
}

/// The LwM2M Server account of a configuration whose credentials the LwM2M Server must
/// know: its first non-bootstrap Security instance in PSK mode.
fn server_psk(config: &BootstrapConfig) -> Option<&SecurityInstance> {
    config
        .security
        .values()
        .find(|s| !s.bootstrap_server && s.mode == SecurityMode::Psk)
}

impl ConfigSource for StoreConfigSource {
    fn lookup(&self, endpoint: &str) -> Option<(String, BootstrapConfig)> {
        self.store.lookup(endpoint).map(|(key, config)| {
            let label = match key {
                ConfigKey::Endpoint(e) => format!("endpoint {e}"),
                ConfigKey::Pattern(p) => format!("pattern {p}"),
            };
            (label, config)
        })
    }

    /// Refuses a secure configuration on the plain socket; puts `endpoint -> Psk {
    /// identity, key }` of the LwM2M Server account into the provisioning store (unless it
    /// holds exactly that already); its refusal refuses the session.
    fn session_starting(
        &self,
        endpoint: &str,
        config: &BootstrapConfig,
    ) -> Result<(), BootstrapError> {
        if !self.secure
            && let Some(account) = config
                .security
                .values()
                .find(|s| s.bootstrap_server && s.mode != SecurityMode::NoSec)
        {
            return Err(BootstrapError::Forbidden {
                endpoint: endpoint.to_owned(),
                reason: format!(
                    "its Bootstrap Server account is {:?}: bootstrap over DTLS",
                    account.mode
                ),
            });
        }
        let (Some(security), Some(account)) = (&self.provision, server_psk(config)) else {
            return Ok(());
        };
        let info = SecurityInfo {
            endpoint: endpoint.to_owned(),
            credentials: Credentials::Psk {
                identity: account.identity.clone(),
                key: hex(&account.secret_key_bytes()),
            },
        };
        if security.by_endpoint(endpoint).as_ref() == Some(&info) {
            return Ok(());
        }
        match security.put(info) {
            Ok(_) => {
                tracing::debug!(
                    "LwM2M Server credentials of {endpoint} provisioned (PSK identity {:?})",
                    account.identity
                );
                Ok(())
            }
            Err(e) => Err(BootstrapError::Provisioning {
                endpoint: endpoint.to_owned(),
                reason: format!("its LwM2M Server credentials were refused: {e}"),
            }),
        }
    }
}

/// Commands of the Bootstrap Server task.
pub(crate) enum BootstrapCommand {
    Start {
        endpoint: String,
        peer: SocketAddr,
        reply: oneshot::Sender<Result<(), BootstrapError>>,
    },
    IsRunning {
        endpoint: String,
        reply: oneshot::Sender<bool>,
    },
    Counters {
        reply: oneshot::Sender<Counters>,
    },
}

struct BootstrapCore {
    bus: EventBus,
}

impl BootstrapCore {
    fn command(&mut self, machine: &mut BootstrapServer, now: Instant, command: BootstrapCommand) {
        match command {
            BootstrapCommand::Start {
                endpoint,
                peer,
                reply,
            } => {
                let _ = reply.send(machine.start(now, &endpoint, peer));
            }
            BootstrapCommand::IsRunning { endpoint, reply } => {
                let _ = reply.send(machine.is_running(&endpoint));
            }
            BootstrapCommand::Counters { reply } => {
                let _ = reply.send(machine.counters().clone());
            }
        }
    }

    fn bootstrap_event(&mut self, event: BootstrapEvent) {
        match &event {
            BootstrapEvent::Finished { endpoint, duration } => {
                tracing::info!("bootstrap of {endpoint} finished in {duration:?}")
            }
            BootstrapEvent::Failed {
                endpoint,
                step,
                reason,
                ..
            } => tracing::warn!("bootstrap of {endpoint} failed at {step}: {reason}"),
            BootstrapEvent::Refused {
                peer,
                endpoint,
                code,
                reason,
            } => tracing::debug!(
                "Bootstrap-Request of {} from {peer} refused with {}.{:02}: {reason}",
                endpoint.as_deref().unwrap_or("no endpoint"),
                code.0,
                code.1
            ),
            _ => {}
        }
        self.bus.send(Event::Bootstrap(event));
    }
}

impl Handler<BootstrapServer> for BootstrapCore {
    type Command = BootstrapCommand;

    fn command(&mut self, machine: &mut BootstrapServer, now: Instant, command: BootstrapCommand) {
        BootstrapCore::command(self, machine, now, command);
    }

    fn event(&mut self, _: &BootstrapServer, event: BootstrapEvent) {
        self.bootstrap_event(event);
    }
}

impl Handler<Gated<BootstrapServer>> for BootstrapCore {
    type Command = BootstrapCommand;

    fn command(
        &mut self,
        machine: &mut Gated<BootstrapServer>,
        now: Instant,
        command: BootstrapCommand,
    ) {
        BootstrapCore::command(self, &mut machine.inner, now, command);
    }

    fn event(&mut self, _: &Gated<BootstrapServer>, event: Event) {
        match event {
            Event::Bootstrap(e) => self.bootstrap_event(e),
            other => self.bus.send(other),
        }
    }
}

/// How to start a Bootstrap Server driver.
#[derive(Clone)]
pub struct BootstrapOptions {
    /// Where to bind, e.g. `127.0.0.1:5783` (port 0: any free port).
    pub bind: SocketAddr,
    /// The machine's settings.
    pub config: BootstrapServerConfig,
    /// Where configurations come from.
    pub store: Arc<dyn BootstrapStore>,
    /// Where events go.
    pub bus: EventBus,
    /// Sees every datagram, if set (on the DTLS socket: the DTLS records).
    pub tap: Option<Arc<dyn PacketTap>>,
    /// Also listen for Bootstrap-Requests over DTLS (`coaps://`), if set. Its `security`
    /// store gives the PSK keys and the endpoint of each identity: normally
    /// [`crate::store::BootstrapCredentials`] over [`BootstrapOptions::store`]. With a
    /// certificate, a certificate client's endpoint name must be its common name.
    pub dtls: Option<DtlsOptions>,
    /// The LwM2M Server's security store, when it runs in the same process: the LwM2M
    /// Server PSK a configuration hands out is stored there when the session starts (see
    /// the module documentation).
    pub provision: Option<Arc<dyn SecurityStore>>,
}

impl BootstrapOptions {
    /// Defaults: the default machine settings seeded from the OS random source
    /// ([`crate::auth::os_seed`]; set `config.coap.seed` for a reproducible run), a new event
    /// bus, no tap, no DTLS, no provisioning.
    pub fn new(bind: SocketAddr, store: Arc<dyn BootstrapStore>) -> Self {
        let mut config = BootstrapServerConfig::default();
        config.coap.seed = crate::auth::os_seed();
        Self {
            bind,
            config,
            store,
            bus: EventBus::default(),
            tap: None,
            dtls: None,
            provision: None,
        }
    }
}

/// A cloneable handle on a running Bootstrap Server driver.
#[derive(Clone)]
pub struct BootstrapHandle {
    task: Arc<Task<BootstrapCommand>>,
    secure: Option<Arc<Task<BootstrapCommand>>>,
    bus: EventBus,
}

impl std::fmt::Debug for BootstrapHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapHandle")
            .field("local_addr", &self.task.local)
            .field("dtls_addr", &self.dtls_addr())
            .finish_non_exhaustive()
    }
}

/// Binds the socket and spawns the Bootstrap Server task; with [`BootstrapOptions::dtls`],
/// binds the DTLS socket too and spawns its task. Must be called inside a Tokio runtime.
pub fn start_bootstrap(options: BootstrapOptions) -> io::Result<BootstrapHandle> {
    let source = StoreConfigSource {
        store: options.store.clone(),
        provision: options.provision.clone(),
        secure: false,
    };
    let io = |socket: tokio::net::UdpSocket| -> io::Result<Io> {
        Ok(Io {
            local: socket.local_addr()?,
            socket,
            role: Role::Bootstrap,
            tap: options.tap.clone(),
            bus: options.bus.clone(),
        })
    };
    let core = || BootstrapCore {
        bus: options.bus.clone(),
    };
    let secure = match &options.dtls {
        Some(dtls) => {
            // Another seed: the two machines' message ids and tokens do not repeat.
            let mut config = options.config.clone();
            config.coap.seed = config.coap.seed.wrapping_add(1);
            let source = StoreConfigSource {
                secure: true,
                ..source.clone()
            };
            let machine = BootstrapServer::new(config, Box::new(source));
            let gated = Gated::new(machine, dtls.security.clone(), Role::Bootstrap);
            let listener = Listener {
                options: dtls,
                role: Role::Bootstrap,
                tap: options.tap.clone(),
                bus: options.bus.clone(),
            };
            let task = listener.spawn(gated, core())?;
            tracing::info!(
                "LwM2M Bootstrap Server listening on coaps://{} ({} sockets)",
                task.local,
                dtls.shards.max(1)
            );
            Some(Arc::new(task))
        }
        None => None,
    };
    let machine = BootstrapServer::new(options.config.clone(), Box::new(source));
    let io = io(bind_udp(options.bind)?)?;
    tracing::info!("LwM2M Bootstrap Server listening on coap://{}", io.local);
    Ok(BootstrapHandle {
        task: Arc::new(Task::spawn(machine, core(), io)),
        secure,
        bus: options.bus,
    })
}

/// Why a Server Initiated Bootstrap did not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The machine refused.
    #[error(transparent)]
    Refused(#[from] BootstrapError),
    /// The driver task has stopped.
    #[error("the bootstrap server has stopped")]
    Stopped,
}

impl BootstrapHandle {
    /// Server Initiated Bootstrap (Core TS 1.1 §5.2) of `endpoint` at `peer`, over the
    /// plain CoAP socket (the Bootstrap Server does not open DTLS sessions itself); its
    /// progress comes as events.
    pub async fn start_session(&self, endpoint: &str, peer: SocketAddr) -> Result<(), StartError> {
        let (reply, rx) = oneshot::channel();
        self.task
            .send(BootstrapCommand::Start {
                endpoint: endpoint.to_owned(),
                peer,
                reply,
            })
            .await
            .map_err(|_| StartError::Stopped)?;
        Ok(rx.await.map_err(|_| StartError::Stopped)??)
    }

    /// Whether a session with `endpoint` is running (on either socket).
    pub async fn is_running(&self, endpoint: &str) -> Result<bool, DriverError> {
        for task in std::iter::once(&self.task).chain(&self.secure) {
            let (reply, rx) = oneshot::channel();
            task.send(BootstrapCommand::IsRunning {
                endpoint: endpoint.to_owned(),
                reply,
            })
            .await?;
            if rx.await.map_err(|_| DriverError::Stopped)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The CoAP layer's traffic counters (of the plain CoAP socket).
    pub async fn counters(&self) -> Result<Counters, DriverError> {
        counters(&self.task).await
    }

    /// The CoAP layer's traffic counters of the DTLS socket's machine (plaintext CoAP),
    /// if the Bootstrap Server listens for DTLS.
    pub async fn secure_counters(&self) -> Option<Result<Counters, DriverError>> {
        Some(counters(self.secure.as_ref()?).await)
    }

    /// Events from now on (of every driver on the same bus).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.bus.subscribe()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.task.local
    }

    /// The address of the DTLS socket, if any.
    pub fn dtls_addr(&self) -> Option<SocketAddr> {
        self.secure.as_ref().map(|t| t.local)
    }

    /// Stops the tasks (after sending what is already queued) and waits for them.
    pub async fn shutdown(&self) {
        if let Some(secure) = &self.secure {
            secure.shutdown().await;
        }
        self.task.shutdown().await
    }
}

async fn counters(task: &Task<BootstrapCommand>) -> Result<Counters, DriverError> {
    let (reply, rx) = oneshot::channel();
    task.send(BootstrapCommand::Counters { reply }).await?;
    rx.await.map_err(|_| DriverError::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BootstrapDoc, FileBootstrapStore, FileSecurityStore};

    fn source(security: &Arc<FileSecurityStore>) -> StoreConfigSource {
        let doc = BootstrapDoc::from_yaml(
            "bootstrap.yaml",
            r#"
patterns:
  "ep*":
    security:
      0: { uri: "coaps://127.0.0.1:5784", bootstrap_server: true, mode: psk, identity: "bs-{ep}", secret_key: "01" }
      1: { uri: "coaps://127.0.0.1:5684", mode: psk, identity: "{ep}", secret_key: "a1b2", short_server_id: 1 }
  "shared*":
    security:
      1: { uri: "coaps://127.0.0.1:5684", mode: psk, identity: "same", secret_key: "0c", short_server_id: 1 }
  "plain*":
    security:
      1: { uri: "coap://127.0.0.1:5683", mode: nosec, short_server_id: 1 }
"#,
        )
        .unwrap();
        StoreConfigSource {
            store: Arc::new(FileBootstrapStore::in_memory(doc)),
            provision: Some(security.clone()),
            secure: true,
        }
    }

    fn starting(source: &StoreConfigSource, ep: &str) -> Result<(), BootstrapError> {
        let (_, config) = source.lookup(ep).unwrap();
        source.session_starting(ep, &config)
    }

    #[test]
    fn provisioning_stores_the_lwm2m_server_psk_not_the_bootstrap_one() {
        let security = Arc::new(FileSecurityStore::in_memory());
        let source = source(&security);
        starting(&source, "ep1").unwrap();
        assert_eq!(
            security.by_psk_identity("ep1").unwrap().credentials,
            Credentials::Psk {
                identity: "ep1".into(),
                key: "a1b2".into()
            }
        );
        assert!(security.by_psk_identity("bs-ep1").is_none());
        // Again: nothing changes; a NoSec account provisions nothing.
        starting(&source, "ep1").unwrap();
        starting(&source, "plain-1").unwrap();
        assert_eq!(security.all().len(), 1);
    }

    #[test]
    fn provisioning_an_identity_of_another_endpoint_refuses_the_session() {
        let security = Arc::new(FileSecurityStore::in_memory());
        let source = source(&security);
        starting(&source, "shared-1").unwrap();
        let refused = starting(&source, "shared-2").unwrap_err();
        assert_eq!(refused.coap_code(), (5, 0));
        assert!(
            refused
                .to_string()
                .contains("\"same\" already belongs to endpoint \"shared-1\""),
            "{refused}"
        );
        assert!(security.by_endpoint("shared-2").is_none());
        assert_eq!(
            security.by_psk_identity("same").unwrap().endpoint,
            "shared-1"
        );
        // Without a provisioning store, nothing is checked.
        let free = StoreConfigSource {
            provision: None,
            ..source
        };
        starting(&free, "shared-2").unwrap();
    }

    #[test]
    fn a_secure_bootstrap_account_is_not_served_over_plain_coap() {
        let security = Arc::new(FileSecurityStore::in_memory());
        let plain = StoreConfigSource {
            secure: false,
            ..source(&security)
        };
        let refused = starting(&plain, "ep1").unwrap_err();
        assert_eq!(refused.coap_code(), (4, 3));
        assert!(refused.to_string().contains("over DTLS"), "{refused}");
        assert_eq!(security.by_endpoint("ep1"), None, "nothing provisioned");
        // Configurations without a secure Bootstrap Server account are served.
        starting(&plain, "plain-1").unwrap();
        starting(&plain, "shared-1").unwrap();
    }
}
