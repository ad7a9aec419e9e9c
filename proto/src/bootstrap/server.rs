//! The LwM2M Bootstrap Server as a sans-IO state machine (Core TS 1.1 §5.2, §6.1), on top of
//! the CoAP [`Endpoint`].
//!
//! A session provisions one client: an optional Bootstrap-Discover (`GET /`, Accept
//! link-format), a Bootstrap-Delete per configured path, a Bootstrap-Write per Security,
//! Server and Access Control instance (`PUT /O/I`), an optional Bootstrap-Read per configured
//! path (LwM2M 1.1, objects 1 and 2 only), then Bootstrap-Finish (`POST /bs`). The steps go
//! out one at a time; each answer is checked against the success code of its operation and
//! the first unexpected answer ends the session.
//!
//! A session starts when a client sends a Bootstrap-Request (`POST /bs?ep=NAME`, 1.1 may add
//! `&pct=FORMAT`, Core TS 1.1 §5.2.7.1) or when the user calls [`BootstrapServer::start`]
//! (Server Initiated Bootstrap, Core TS 1.1 §5.2).
//!
//! One session runs per endpoint name. A new Bootstrap-Request from an endpoint whose session
//! is running ends that session ([`FailureReason::Restarted`]) before it is answered: the
//! client has evidently given up on it. The request then starts a fresh session, or is
//! refused like any other.
//!
//! Input: [`BootstrapServer::handle_datagram`], [`BootstrapServer::handle_timeout`],
//! [`BootstrapServer::start`]; output: [`BootstrapServer::poll_transmit`],
//! [`BootstrapServer::poll_timeout`], [`BootstrapServer::poll_event`]. No sockets, no clock.
//!
//! What it does not do: DTLS, and checking that the endpoint name matches the credentials
//! the client used (the driver does that before handing datagrams in), and storing the
//! credentials it hands out where the LwM2M Server finds them (the driver does that in
//! [`ConfigSource::session_starting`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::config::{BootstrapConfig, most_specific};
use crate::admission::{self, AdmissionError, InterfaceRequest};
use crate::coap::message::{self, set_option, uint_bytes, uint_option};
use crate::coap::{
    self, CoapOption, Endpoint, Event, ExchangeError, IncomingRequest, MessageClass, Packet,
    RequestId, RequestType, ResponseType, Transmit,
};
use crate::content::{self, CodecError, ContentFormat};
use crate::ids::{Lwm2mPath, ObjectId};

/// Settings of the Bootstrap Server machine.
#[derive(Debug, Clone)]
pub struct BootstrapServerConfig {
    /// The CoAP exchange layer's parameters. A step that gets no answer fails when the
    /// exchange layer gives up on it (MAX_TRANSMIT_WAIT, RFC 7252 §4.8.2, by default).
    pub coap: coap::Config,
    /// The longest a whole session may take, from its start to the answer to
    /// Bootstrap-Finish; a session still running then fails. Default 300 s.
    pub session_timeout: Duration,
}

impl Default for BootstrapServerConfig {
    fn default() -> Self {
        Self {
            coap: coap::Config::default(),
            session_timeout: Duration::from_secs(300),
        }
    }
}

/// Where the Bootstrap Server finds the configuration for an endpoint.
pub trait ConfigSource: Send {
    /// The configuration to send `endpoint`, ready to use (`{ep}` already replaced, see
    /// [`BootstrapConfig::for_endpoint`]), and a label saying which configuration matched
    /// (`"endpoint dev-1"`, `"pattern sensor-*"`); `None` when nothing applies.
    fn lookup(&self, endpoint: &str) -> Option<(String, BootstrapConfig)>;

    /// Called when a session with `endpoint` is about to start with `config` (the result
    /// of [`ConfigSource::lookup`], planned without error), before anything is sent: a
    /// driver checks the transport against the configuration or hands the credentials it
    /// carries to its LwM2M Server here. An error refuses the session with its code
    /// (normally [`BootstrapError::Forbidden`] or [`BootstrapError::Provisioning`]). The
    /// default does nothing.
    fn session_starting(
        &self,
        endpoint: &str,
        config: &BootstrapConfig,
    ) -> Result<(), BootstrapError> {
        let _ = (endpoint, config);
        Ok(())
    }
}

/// A [`ConfigSource`] over two maps: configurations by endpoint name, and fallback
/// configurations by endpoint-name pattern (`*` any run, `?` one character).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryConfigSource {
    /// Configurations by endpoint name.
    pub endpoints: BTreeMap<String, BootstrapConfig>,
    /// Fallback configurations by endpoint-name pattern.
    pub patterns: BTreeMap<String, BootstrapConfig>,
}

impl ConfigSource for MemoryConfigSource {
    /// The endpoint's own configuration, else the matching pattern with the most literal
    /// characters (ties go to the pattern that sorts first), with `{ep}` replaced.
    fn lookup(&self, endpoint: &str) -> Option<(String, BootstrapConfig)> {
        if let Some(config) = self.endpoints.get(endpoint) {
            return Some((
                format!("endpoint {endpoint}"),
                config.for_endpoint(endpoint),
            ));
        }
        most_specific(&self.patterns, endpoint)
            .map(|(pattern, config)| (format!("pattern {pattern}"), config.for_endpoint(endpoint)))
    }
}

/// Why a request to the Bootstrap Server, or a call to [`BootstrapServer::start`], was
/// refused; [`BootstrapError::coap_code`] is the code a refused request is answered with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// A Bootstrap-Request without `ep` (4.00 Bad Request, Core TS 1.1 §5.2.7.1).
    #[error("Bootstrap-Request without endpoint name (ep)")]
    MissingEndpoint,
    /// The Uri-Query cannot be read: an option that is not UTF-8, or a parameter given
    /// more than once (4.00 Bad Request).
    #[error("bad query: {reason}")]
    BadQuery {
        /// Why.
        reason: String,
    },
    /// No configuration applies to the endpoint, neither its own nor a pattern: the
    /// Bootstrap-Request response code table of Core TS 1.1 §5.2.7.1 gives 4.00 Bad Request
    /// with reason "Unknown Endpoint Client Name".
    #[error("unknown endpoint client name {endpoint:?}")]
    UnknownEndpoint {
        /// The endpoint name.
        endpoint: String,
    },
    /// A query parameter has an unusable value (4.00 Bad Request).
    #[error("invalid {name}={value:?}: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The preferred content format (`pct`) is not a multi-node format this server encodes
    /// (4.15 Unsupported Content-Format, Core TS 1.1 §5.2.7.1).
    #[error("preferred content format {code} is not supported for Bootstrap-Write")]
    UnsupportedFormat {
        /// The Content-Format number asked for.
        code: u16,
    },
    /// The configuration cannot be sent as it is (5.00 Internal Server Error: the fault is
    /// the server's, not the client's).
    #[error("configuration {config:?} is invalid: {reason}")]
    InvalidConfig {
        /// The label of the configuration (see [`ConfigSource::lookup`]).
        config: String,
        /// Why.
        reason: String,
    },
    /// An instance of the configuration cannot be encoded (5.00 Internal Server Error).
    #[error("cannot encode {path}: {error}")]
    Encode {
        /// The instance.
        path: Lwm2mPath,
        /// The encoder's error.
        error: CodecError,
    },
    /// The client may not be bootstrapped this way, e.g. over plain CoAP when its
    /// configuration's Bootstrap Server account says PSK (4.03 Forbidden).
    #[error("{endpoint:?} may not bootstrap here: {reason}")]
    Forbidden {
        /// The endpoint name.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// [`ConfigSource::session_starting`] refused the session, e.g. the LwM2M Server
    /// credentials of the configuration cannot be stored (5.00 Internal Server Error: the
    /// client would be handed credentials its LwM2M Server refuses).
    #[error("cannot provision {endpoint:?}: {reason}")]
    Provisioning {
        /// The endpoint name.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// A request for a path the Bootstrap Server does not serve: only `/bs` exists
    /// (4.04 Not Found).
    #[error("{path} not found on the Bootstrap Server")]
    NotFound {
        /// The Uri-Path of the request.
        path: String,
    },
    /// A method other than POST on `/bs` (4.05 Method Not Allowed).
    #[error("{method} not allowed on /bs")]
    MethodNotAllowed {
        /// The request code, as `0.dd`.
        method: String,
    },
    /// [`BootstrapServer::start`] for an endpoint whose session is running; never sent to
    /// a peer (its code would be 5.03 Service Unavailable).
    #[error("a bootstrap session with {endpoint:?} is running")]
    SessionRunning {
        /// The endpoint name.
        endpoint: String,
    },
}

impl BootstrapError {
    fn response_type(&self) -> ResponseType {
        match self {
            Self::MissingEndpoint
            | Self::BadQuery { .. }
            | Self::UnknownEndpoint { .. }
            | Self::InvalidParameter { .. } => ResponseType::BadRequest,
            Self::UnsupportedFormat { .. } => ResponseType::UnsupportedContentFormat,
            Self::InvalidConfig { .. } | Self::Encode { .. } | Self::Provisioning { .. } => {
                ResponseType::InternalServerError
            }
            Self::NotFound { .. } => ResponseType::NotFound,
            Self::Forbidden { .. } => ResponseType::Forbidden,
            Self::MethodNotAllowed { .. } => ResponseType::MethodNotAllowed,
            Self::SessionRunning { .. } => ResponseType::ServiceUnavailable,
        }
    }

    /// The CoAP response code (class, detail) a refused request is answered with.
    pub fn coap_code(&self) -> (u8, u8) {
        code_of(MessageClass::Response(self.response_type()))
    }
}

/// Why a session failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FailureReason {
    /// The client answered the step with another code than the operation's success code
    /// (2.05 Discover and Read, 2.02 Delete, 2.04 Write and Finish; Core TS 1.1 §5.2.7).
    #[error("answered {}.{:02} where {}.{:02} was expected", code.0, code.1, expected.0, expected.1)]
    Code {
        /// The code received.
        code: (u8, u8),
        /// The success code of the step.
        expected: (u8, u8),
    },
    /// The exchange failed: no acknowledgement, no response, a Reset (RFC 7252 §4.2).
    #[error("exchange failed: {0}")]
    Exchange(ExchangeError),
    /// The session took longer than [`BootstrapServerConfig::session_timeout`].
    #[error("session took longer than {limit:?}")]
    SessionTimeout {
        /// The limit.
        limit: Duration,
    },
    /// The client sent a new Bootstrap-Request, which ends the running session.
    #[error("the client sent a new Bootstrap-Request")]
    Restarted,
}

/// What the Bootstrap Server reports; drained with [`BootstrapServer::poll_event`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BootstrapEvent {
    /// A session started: a Bootstrap-Request was answered 2.04, or
    /// [`BootstrapServer::start`] was called.
    SessionStarted {
        /// The endpoint name.
        endpoint: String,
        /// The client's address.
        peer: SocketAddr,
        /// Which configuration matched (the label from [`ConfigSource::lookup`]).
        config: String,
        /// True for a Bootstrap-Request, false for [`BootstrapServer::start`].
        initiated_by_client: bool,
        /// The Content-Format of the Bootstrap-Writes and the Accept of the Bootstrap-Reads:
        /// TLV, or the client's preferred format (`pct`).
        format: ContentFormat,
    },
    /// A step was answered with its success code.
    Step {
        /// The endpoint name.
        endpoint: String,
        /// `"discover"`, `"delete"`, `"write"`, `"read"` or `"finish"`.
        step: &'static str,
        /// The target (`None` for Bootstrap-Finish, which goes to `/bs`).
        path: Option<Lwm2mPath>,
        /// The code received.
        code: (u8, u8),
        /// Discover: the link-format payload; Read: the payload as `format: text` (UTF-8
        /// formats) or `format: hex`; other steps: `None`.
        detail: Option<String>,
    },
    /// Bootstrap-Finish was answered 2.04: the session succeeded.
    Finished {
        /// The endpoint name.
        endpoint: String,
        /// From the start of the session to the answer to Bootstrap-Finish.
        duration: Duration,
    },
    /// The session ended without success; nothing more is sent for it.
    Failed {
        /// The endpoint name.
        endpoint: String,
        /// The step that was running (its name as in [`BootstrapEvent::Step`]).
        step: &'static str,
        /// The step's target (`None` for Bootstrap-Finish).
        path: Option<Lwm2mPath>,
        /// Why.
        reason: FailureReason,
    },
    /// A request was refused (a Bootstrap-Request with no configuration, a bad query, an
    /// unknown path, a wrong method).
    Refused {
        /// Where it came from.
        peer: SocketAddr,
        /// The endpoint name, when the request named one.
        endpoint: Option<String>,
        /// The code answered.
        code: (u8, u8),
        /// Why, in words.
        reason: String,
    },
}

/// One step of the sequence, with everything its request needs (Core TS 1.1 §5.2.7).
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Bootstrap-Discover of `/`: GET, Accept link-format, 2.05.
    Discover,
    /// Bootstrap-Delete: DELETE, 2.02.
    Delete(Lwm2mPath),
    /// Bootstrap-Write: PUT with the encoded instance, 2.04.
    Write {
        path: Lwm2mPath,
        format: ContentFormat,
        payload: Vec<u8>,
    },
    /// Bootstrap-Read (1.1): GET with Accept, 2.05.
    Read {
        path: Lwm2mPath,
        format: ContentFormat,
    },
    /// Bootstrap-Finish: POST `/bs`, 2.04.
    Finish,
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Self::Discover => "discover",
            Self::Delete(_) => "delete",
            Self::Write { .. } => "write",
            Self::Read { .. } => "read",
            Self::Finish => "finish",
        }
    }

    fn path(&self) -> Option<Lwm2mPath> {
        match self {
            Self::Discover => Some(Lwm2mPath::Root),
            Self::Delete(path) | Self::Write { path, .. } | Self::Read { path, .. } => Some(*path),
            Self::Finish => None,
        }
    }

    fn expected(&self) -> ResponseType {
        match self {
            Self::Discover | Self::Read { .. } => ResponseType::Content,
            Self::Delete(_) => ResponseType::Deleted,
            Self::Write { .. } | Self::Finish => ResponseType::Changed,
        }
    }

    fn request(&self) -> Packet {
        let accept = |packet: &mut Packet, format: ContentFormat| {
            set_option(packet, CoapOption::Accept, uint_bytes(format.code().into()));
        };
        match self {
            Self::Discover => {
                let mut packet = message::request(RequestType::Get, "/");
                accept(&mut packet, ContentFormat::LinkFormat);
                packet
            }
            Self::Delete(path) => message::request(RequestType::Delete, &path.to_string()),
            Self::Write {
                path,
                format,
                payload,
            } => {
                let mut packet = message::request(RequestType::Put, &path.to_string());
                set_option(
                    &mut packet,
                    CoapOption::ContentFormat,
                    uint_bytes(format.code().into()),
                );
                packet.payload = payload.clone();
                packet
            }
            Self::Read { path, format } => {
                let mut packet = message::request(RequestType::Get, &path.to_string());
                accept(&mut packet, *format);
                packet
            }
            Self::Finish => message::request(RequestType::Post, "/bs"),
        }
    }

    /// What the success answer carried worth reporting.
    fn detail(&self, response: &Packet) -> Option<String> {
        match self {
            Self::Discover => Some(String::from_utf8_lossy(&response.payload).into_owned()),
            Self::Read { .. } => {
                let format = uint_option(response, CoapOption::ContentFormat)
                    .and_then(|c| u16::try_from(c).ok());
                let text = format.and_then(ContentFormat::from_code).is_some_and(|f| {
                    matches!(
                        f,
                        ContentFormat::Text | ContentFormat::SenmlJson | ContentFormat::OmaJson
                    )
                });
                let body = match std::str::from_utf8(&response.payload) {
                    Ok(s) if text => s.to_owned(),
                    _ => response
                        .payload
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                };
                let name = match format {
                    Some(code) => ContentFormat::from_code(code)
                        .map_or_else(|| code.to_string(), |f| f.name().to_owned()),
                    None => "none".to_owned(),
                };
                Some(format!("{name}: {body}"))
            }
            _ => None,
        }
    }
}

/// The steps for `config`, with the writes encoded in `format` (Core TS 1.1 §5.2.7).
fn plan(
    label: &str,
    config: &BootstrapConfig,
    format: ContentFormat,
) -> Result<VecDeque<Step>, BootstrapError> {
    let invalid = |reason: String| BootstrapError::InvalidConfig {
        config: label.to_owned(),
        reason,
    };
    let mut steps = VecDeque::new();
    if config.discover {
        steps.push_back(Step::Discover);
    }
    for path in &config.delete {
        if path.depth() > 2 {
            return Err(invalid(format!(
                "Bootstrap-Delete of {path}: only /, /O or /O/I (Core TS 1.1 §5.2.7)"
            )));
        }
        steps.push_back(Step::Delete(*path));
    }
    for (path, node) in config.writes() {
        let payload = content::encode(format, &path, &node)
            .map_err(|error| BootstrapError::Encode { path, error })?;
        steps.push_back(Step::Write {
            path,
            format,
            payload,
        });
    }
    for path in &config.read {
        let allowed = matches!(path.object_id(), Some(ObjectId(1 | 2))) && path.depth() <= 2;
        if !allowed {
            return Err(invalid(format!(
                "Bootstrap-Read of {path}: only /1, /2 and their instances (Core TS 1.1 §5.2.7)"
            )));
        }
        steps.push_back(Step::Read {
            path: *path,
            format,
        });
    }
    steps.push_back(Step::Finish);
    Ok(steps)
}

/// A session about to start: the matched configuration's label, the steps, and the format of
/// the writes.
struct Plan {
    config: String,
    steps: VecDeque<Step>,
    format: ContentFormat,
}

/// One client being bootstrapped: the current step is the front of `steps`, its request
/// is `request`.
#[derive(Debug)]
struct Session {
    peer: SocketAddr,
    started: Instant,
    deadline: Instant,
    steps: VecDeque<Step>,
    request: Option<RequestId>,
}

impl Session {
    fn current(&self) -> (&'static str, Option<Lwm2mPath>) {
        self.steps
            .front()
            .map_or(("finish", None), |s| (s.name(), s.path()))
    }
}

/// The Bootstrap Server state machine for one socket.
pub struct BootstrapServer {
    config: BootstrapServerConfig,
    source: Box<dyn ConfigSource>,
    endpoint: Endpoint,
    sessions: BTreeMap<String, Session>,
    requests: HashMap<RequestId, String>,
    events: VecDeque<BootstrapEvent>,
}

impl std::fmt::Debug for BootstrapServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapServer")
            .field("config", &self.config)
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

impl BootstrapServer {
    /// A server with no sessions, taking configurations from `source`.
    pub fn new(config: BootstrapServerConfig, source: Box<dyn ConfigSource>) -> Self {
        Self {
            endpoint: Endpoint::new(config.coap.clone()),
            config,
            source,
            sessions: BTreeMap::new(),
            requests: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// A datagram arrived from `peer`. Never panics; invalid datagrams are dropped (or reset,
    /// RFC 7252 §4.2) by the exchange layer.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        self.endpoint.handle_datagram(now, peer, bytes);
        self.drain(now);
    }

    /// Time passed: retransmissions, step time-outs, session time-outs.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.handle_timeout(now);
        self.drain(now);
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(e, _)| e.clone())
            .collect();
        let limit = self.config.session_timeout;
        for endpoint in expired {
            self.fail(now, &endpoint, FailureReason::SessionTimeout { limit });
        }
    }

    /// Server Initiated Bootstrap (Core TS 1.1 §5.2): runs the sequence for `endpoint` at
    /// `peer` without waiting for a Bootstrap-Request. The writes are TLV, the format LwM2M
    /// 1.0 makes mandatory. Refused when nothing is configured for the endpoint, when the
    /// configuration cannot be sent, or when a session with the endpoint is running.
    pub fn start(
        &mut self,
        now: Instant,
        endpoint: &str,
        peer: SocketAddr,
    ) -> Result<(), BootstrapError> {
        if self.sessions.contains_key(endpoint) {
            return Err(BootstrapError::SessionRunning {
                endpoint: endpoint.to_owned(),
            });
        }
        let plan = self.prepare(endpoint, ContentFormat::Tlv)?;
        self.begin(now, endpoint, peer, plan, false);
        Ok(())
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.endpoint.poll_transmit()
    }

    /// When [`BootstrapServer::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let sessions = self.sessions.values().map(|s| s.deadline).min();
        [self.endpoint.poll_timeout(), sessions]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<BootstrapEvent> {
        self.events.pop_front()
    }

    /// Whether a session with `endpoint` is running.
    pub fn is_running(&self, endpoint: &str) -> bool {
        self.sessions.contains_key(endpoint)
    }

    /// The CoAP layer's traffic counters.
    pub fn counters(&self) -> &coap::Counters {
        self.endpoint.counters()
    }

    fn drain(&mut self, now: Instant) {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Request { peer, request } => self.on_request(now, peer, request),
                Event::Response { id, response } => self.on_response(now, id, &response),
                Event::RequestFailed { id, error } => {
                    if let Some(endpoint) = self.requests.remove(&id) {
                        self.fail(now, &endpoint, FailureReason::Exchange(error));
                    }
                }
                // Malformed datagrams are counted by the exchange layer; the Bootstrap
                // Server neither observes nor is observed.
                _ => {}
            }
        }
    }

    /// A request from a client: only a Bootstrap-Request (POST `/bs`) is served, read by
    /// [`crate::admission::classify`] as every gate in front of this machine reads it.
    fn on_request(&mut self, now: Instant, peer: SocketAddr, request: IncomingRequest) {
        let path = request.path();
        let parsed = match admission::classify(&request.packet) {
            Some(Ok(InterfaceRequest::BootstrapRequest(r))) => {
                // A new Bootstrap-Request means the client gave up on its running session.
                if self.sessions.contains_key(&r.endpoint) {
                    self.fail(now, &r.endpoint, FailureReason::Restarted);
                }
                Ok(r)
            }
            Some(Err(AdmissionError::Bootstrap(e))) => Err(e),
            _ if path == "/bs" => Err(BootstrapError::MethodNotAllowed {
                method: request.packet.header.code.to_string(),
            }),
            _ => Err(BootstrapError::NotFound { path }),
        };
        let endpoint = admission::endpoint_name(&request.packet);
        let outcome = parsed.and_then(|r| Ok((self.prepare(&r.endpoint, r.format)?, r.endpoint)));
        match outcome {
            Ok((plan, endpoint)) => {
                self.answer(now, request, ResponseType::Changed);
                self.begin(now, &endpoint, peer, plan, true);
            }
            Err(error) => {
                self.answer(now, request, error.response_type());
                self.events.push_back(BootstrapEvent::Refused {
                    peer,
                    endpoint,
                    code: error.coap_code(),
                    reason: error.to_string(),
                });
            }
        }
    }

    fn answer(&mut self, now: Instant, request: IncomingRequest, code: ResponseType) {
        // A bodiless response with a response code always encodes: nothing can fail here.
        let _ = self
            .endpoint
            .respond(now, request.handle, message::response(code, Vec::new()));
    }

    /// Looks the endpoint's configuration up and turns it into steps.
    fn prepare(&self, endpoint: &str, format: ContentFormat) -> Result<Plan, BootstrapError> {
        let (config, bootstrap) =
            self.source
                .lookup(endpoint)
                .ok_or_else(|| BootstrapError::UnknownEndpoint {
                    endpoint: endpoint.to_owned(),
                })?;
        let steps = plan(&config, &bootstrap, format)?;
        self.source.session_starting(endpoint, &bootstrap)?;
        Ok(Plan {
            config,
            steps,
            format,
        })
    }

    fn begin(
        &mut self,
        now: Instant,
        endpoint: &str,
        peer: SocketAddr,
        plan: Plan,
        initiated_by_client: bool,
    ) {
        let Plan {
            config,
            steps,
            format,
        } = plan;
        self.sessions.insert(
            endpoint.to_owned(),
            Session {
                peer,
                started: now,
                deadline: now + self.config.session_timeout,
                steps,
                request: None,
            },
        );
        self.events.push_back(BootstrapEvent::SessionStarted {
            endpoint: endpoint.to_owned(),
            peer,
            config,
            initiated_by_client,
            format,
        });
        self.send_step(now, endpoint);
    }

    /// Sends the request of the session's current step.
    fn send_step(&mut self, now: Instant, endpoint: &str) {
        let Some(session) = self.sessions.get(endpoint) else {
            return;
        };
        let Some(step) = session.steps.front() else {
            return;
        };
        let (peer, packet) = (session.peer, step.request());
        match self.endpoint.send_request(now, peer, packet) {
            Ok(id) => {
                self.requests.insert(id, endpoint.to_owned());
                if let Some(session) = self.sessions.get_mut(endpoint) {
                    session.request = Some(id);
                }
            }
            Err(error) => self.fail(now, endpoint, FailureReason::Exchange(error)),
        }
    }

    /// The answer to a session's current step.
    fn on_response(&mut self, now: Instant, id: RequestId, response: &Packet) {
        let Some(endpoint) = self.requests.remove(&id) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&endpoint) else {
            return;
        };
        session.request = None;
        let Some(step) = session.steps.front() else {
            return;
        };
        let code = code_of(response.header.code);
        let expected = code_of(MessageClass::Response(step.expected()));
        if code != expected {
            self.fail(now, &endpoint, FailureReason::Code { code, expected });
            return;
        }
        let event = BootstrapEvent::Step {
            endpoint: endpoint.clone(),
            step: step.name(),
            path: step.path(),
            code,
            detail: step.detail(response),
        };
        session.steps.pop_front();
        let done = session.steps.is_empty();
        let started = session.started;
        self.events.push_back(event);
        if done {
            self.sessions.remove(&endpoint);
            self.events.push_back(BootstrapEvent::Finished {
                endpoint,
                duration: now.saturating_duration_since(started),
            });
        } else {
            self.send_step(now, &endpoint);
        }
    }

    /// Ends a session: its request is cancelled and [`BootstrapEvent::Failed`] reported.
    fn fail(&mut self, now: Instant, endpoint: &str, reason: FailureReason) {
        let Some(session) = self.sessions.remove(endpoint) else {
            return;
        };
        if let Some(id) = session.request {
            self.requests.remove(&id);
            self.endpoint.cancel_request(now, id);
        }
        let (step, path) = session.current();
        self.events.push_back(BootstrapEvent::Failed {
            endpoint: endpoint.to_owned(),
            step,
            path,
            reason,
        });
    }
}

/// A CoAP code as (class, detail) (RFC 7252 §3: `c.dd`).
fn code_of(class: MessageClass) -> (u8, u8) {
    let code = u8::from(class);
    (code >> 5, code & 0x1f)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::bootstrap::config::{
        AclInstance, SecurityInstance, SecurityMode, ServerInstance, security_from_instance,
    };
    use crate::client::tree::{DmError, ObjectTree, WriteMode};
    use crate::coap::{RequestHandle, message::add_query};
    use crate::ids::InstanceId;
    use crate::node::{Instance, Node, ResourceValue};
    use crate::registry::Registry;
    use crate::value::Value;

    fn server_addr() -> SocketAddr {
        "127.0.0.1:5683".parse().unwrap()
    }

    fn client_addr() -> SocketAddr {
        "127.0.0.7:56830".parse().unwrap()
    }

    /// One request the scripted client received.
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        method: RequestType,
        path: String,
        format: Option<u32>,
        accept: Option<u32>,
        payload: Vec<u8>,
    }

    impl Seen {
        fn line(&self) -> String {
            format!("{:?} {}", self.method, self.path)
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Mode {
        /// Serves every request.
        Answer,
        /// Drops every datagram from the server (gone off the network).
        Mute,
        /// Accepts requests but never responds (the exchange layer sends an empty ACK).
        Stall,
    }

    /// A scripted LwM2M client: a CoAP endpoint and an object tree with Bootstrap semantics.
    struct Client {
        coap: Endpoint,
        tree: ObjectTree,
        seen: Vec<Seen>,
        /// Answer this method on this path with this code instead of serving it.
        fail: Option<(RequestType, &'static str, ResponseType)>,
        mode: Mode,
        /// Codes of the responses to the client's own requests.
        answers: Vec<(u8, u8)>,
    }

    fn string(s: &str) -> ResourceValue {
        ResourceValue::Single(Value::String(s.into()))
    }

    fn int(i: i64) -> ResourceValue {
        ResourceValue::Single(Value::Integer(i))
    }

    fn boolean(b: bool) -> ResourceValue {
        ResourceValue::Single(Value::Boolean(b))
    }

    impl Client {
        /// Factory state: a Bootstrap-Server account in /0/0, an old server account in /0/1
        /// and /1/0, and the Device object.
        fn new() -> Self {
            let registry = Registry::embedded();
            let mut tree = ObjectTree::new();
            for o in 0..=3 {
                let def = registry.object(ObjectId(o)).unwrap().clone();
                tree.add_object(Arc::new(def), None);
            }
            let account = |uri: &str, bs: bool| -> Instance {
                [
                    (crate::ResourceId(0), string(uri)),
                    (crate::ResourceId(1), boolean(bs)),
                    (crate::ResourceId(2), int(3)),
                ]
                .into()
            };
            tree.put_instance(
                ObjectId(0),
                InstanceId(0),
                account("coap://bs.example:5683", true),
            );
            tree.put_instance(
                ObjectId(0),
                InstanceId(1),
                account("coap://old.example:5683", false),
            );
            tree.put_instance(
                ObjectId(1),
                InstanceId(0),
                [
                    (crate::ResourceId(0), int(99)),
                    (crate::ResourceId(1), int(60)),
                ]
                .into(),
            );
            tree.put_instance(
                ObjectId(3),
                InstanceId(0),
                [(crate::ResourceId(0), string("ACME"))].into(),
            );
            Self {
                coap: Endpoint::new(coap::Config {
                    seed: 7,
                    ..coap::Config::default()
                }),
                tree,
                seen: Vec::new(),
                fail: None,
                mode: Mode::Answer,
                answers: Vec::new(),
            }
        }

        fn on_request(&mut self, now: Instant, request: IncomingRequest) {
            let packet = &request.packet;
            let seen = Seen {
                method: request.method().unwrap(),
                path: request.path(),
                format: uint_option(packet, CoapOption::ContentFormat),
                accept: uint_option(packet, CoapOption::Accept),
                payload: packet.payload.clone(),
            };
            self.seen.push(seen.clone());
            if self.mode == Mode::Stall {
                return;
            }
            let (code, format, payload) = self.serve(&seen);
            let mut response = message::response(code, payload);
            if let Some(f) = format {
                set_option(
                    &mut response,
                    CoapOption::ContentFormat,
                    uint_bytes(f.code().into()),
                );
            }
            self.respond(now, request.handle, response);
        }

        fn respond(&mut self, now: Instant, handle: RequestHandle, response: Packet) {
            self.coap.respond(now, handle, response).unwrap();
        }

        /// Core TS 1.1 §5.2.7 as the client sees it.
        fn serve(&mut self, seen: &Seen) -> (ResponseType, Option<ContentFormat>, Vec<u8>) {
            let refused = |e: DmError| match e.coap_code() {
                (4, 4) => ResponseType::NotFound,
                (4, 5) => ResponseType::MethodNotAllowed,
                _ => ResponseType::BadRequest,
            };
            if let Some((method, path, code)) = self.fail
                && method == seen.method
                && path == seen.path
            {
                return (code, None, Vec::new());
            }
            if seen.path == "/bs" && seen.method == RequestType::Post {
                return (ResponseType::Changed, None, Vec::new());
            }
            let path: Lwm2mPath = seen.path.parse().unwrap();
            let format = |code: Option<u32>| {
                code.and_then(|c| ContentFormat::from_code(c as u16))
                    .unwrap_or(ContentFormat::Tlv)
            };
            match seen.method {
                RequestType::Delete => match self.tree.bootstrap_delete(&path) {
                    Ok(()) => (ResponseType::Deleted, None, Vec::new()),
                    Err(e) => (refused(e), None, Vec::new()),
                },
                RequestType::Put => {
                    let f = format(seen.format);
                    let node = content::decode(f, &seen.payload, &path, &self.tree)
                        .unwrap()
                        .content;
                    match self.tree.write(&path, &node, WriteMode::Replace, true) {
                        Ok(()) => (ResponseType::Changed, None, Vec::new()),
                        Err(e) => (refused(e), None, Vec::new()),
                    }
                }
                RequestType::Get if seen.accept == Some(40) => {
                    let mut links = vec!["lwm2m=\"1.1\"".to_owned()];
                    for o in self.tree.object_ids().collect::<Vec<_>>() {
                        let instances = self.tree.instance_ids(o);
                        if instances.is_empty() {
                            links.push(format!("</{}>", o.0));
                        }
                        links.extend(instances.iter().map(|i| format!("</{}/{}>", o.0, i.0)));
                    }
                    let body = links.join(",").into_bytes();
                    (ResponseType::Content, Some(ContentFormat::LinkFormat), body)
                }
                RequestType::Get => {
                    let f = format(seen.accept);
                    match self.tree.read(&path) {
                        Ok(node) => {
                            let body = content::encode(f, &path, &node).unwrap();
                            (ResponseType::Content, Some(f), body)
                        }
                        Err(e) => (refused(e), None, Vec::new()),
                    }
                }
                _ => (ResponseType::MethodNotAllowed, None, Vec::new()),
            }
        }

        /// The decoded payload of the PUT the client received on `path`.
        fn written(&self, path: &str) -> Node {
            let seen = self
                .seen
                .iter()
                .find(|s| s.method == RequestType::Put && s.path == path)
                .unwrap();
            let format = ContentFormat::from_code(seen.format.unwrap() as u16).unwrap();
            let target: Lwm2mPath = path.parse().unwrap();
            content::decode(format, &seen.payload, &target, &self.tree)
                .unwrap()
                .content
        }

        fn lines(&self) -> Vec<String> {
            self.seen.iter().map(Seen::line).collect()
        }
    }

    /// The Bootstrap Server and the scripted client on a virtual clock, linked in memory.
    struct Net {
        now: Instant,
        start: Instant,
        server: BootstrapServer,
        client: Client,
        events: Vec<BootstrapEvent>,
    }

    impl Net {
        fn new(session_timeout: Duration) -> Self {
            let now = Instant::now();
            let config = BootstrapServerConfig {
                coap: coap::Config {
                    seed: 42,
                    ..coap::Config::default()
                },
                session_timeout,
            };
            Self {
                now,
                start: now,
                server: BootstrapServer::new(config, Box::new(source())),
                client: Client::new(),
                events: Vec::new(),
            }
        }

        /// Moves datagrams both ways until nothing moves.
        fn pump(&mut self) {
            for _ in 0..10_000 {
                let mut moved = false;
                while let Some(t) = self.server.poll_transmit() {
                    moved = true;
                    assert_eq!(t.peer, client_addr());
                    if self.client.mode != Mode::Mute {
                        self.client
                            .coap
                            .handle_datagram(self.now, server_addr(), &t.bytes);
                    }
                }
                while let Some(event) = self.client.coap.poll_event() {
                    match event {
                        Event::Request { request, .. } => self.client.on_request(self.now, request),
                        Event::Response { response, .. } => {
                            self.client.answers.push(code_of(response.header.code));
                        }
                        _ => {}
                    }
                }
                while let Some(t) = self.client.coap.poll_transmit() {
                    moved = true;
                    self.server
                        .handle_datagram(self.now, client_addr(), &t.bytes);
                }
                self.events
                    .extend(std::iter::from_fn(|| self.server.poll_event()));
                if !moved {
                    return;
                }
            }
            panic!("the link never went quiet");
        }

        /// Lets virtual time pass, timer by timer, until `done` or `limit` elapsed.
        fn run_until(&mut self, limit: Duration, done: impl Fn(&Net) -> bool) {
            let end = self.now + limit;
            self.pump();
            while !done(self) {
                let next = [self.server.poll_timeout(), self.client.coap.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                let Some(next) = next.filter(|t| *t <= end) else {
                    return;
                };
                self.now = self.now.max(next);
                self.server.handle_timeout(self.now);
                self.client.coap.handle_timeout(self.now);
                self.pump();
            }
        }

        /// The client sends a request to the Bootstrap Server.
        fn send(&mut self, method: RequestType, path: &str, query: &[&str]) {
            let mut packet = message::request(method, path);
            for q in query {
                add_query(&mut packet, q);
            }
            self.client
                .coap
                .send_request(self.now, server_addr(), packet)
                .unwrap();
            self.pump();
        }

        fn bootstrap_request(&mut self, query: &[&str]) {
            self.send(RequestType::Post, "/bs", query);
        }

        fn steps(&self) -> Vec<(&'static str, Option<Lwm2mPath>, (u8, u8))> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    BootstrapEvent::Step {
                        step, path, code, ..
                    } => Some((*step, *path, *code)),
                    _ => None,
                })
                .collect()
        }

        fn failed(&self) -> Option<(&'static str, Option<Lwm2mPath>, FailureReason)> {
            self.events.iter().find_map(|e| match e {
                BootstrapEvent::Failed {
                    step, path, reason, ..
                } => Some((*step, *path, reason.clone())),
                _ => None,
            })
        }
    }

    fn security(identity: &str) -> SecurityInstance {
        SecurityInstance {
            uri: "coaps://lwm2m.example:5684".into(),
            bootstrap_server: false,
            mode: SecurityMode::Psk,
            identity: identity.into(),
            server_public_key: String::new(),
            secret_key: "00112233445566778899aabbccddeeff".into(),
            short_server_id: Some(1),
            client_hold_off: None,
            bootstrap_account_timeout: None,
        }
    }

    fn config(identity: &str) -> BootstrapConfig {
        BootstrapConfig {
            delete: vec![Lwm2mPath::object(0), Lwm2mPath::object(1)],
            security: [(1, security(identity))].into(),
            servers: [(
                0,
                ServerInstance {
                    short_server_id: 1,
                    lifetime: 86_400,
                    default_min_period: None,
                    default_max_period: None,
                    notification_storing: false,
                    binding: "U".into(),
                },
            )]
            .into(),
            ..BootstrapConfig::default()
        }
    }

    /// `dev-1` and `dev-2` have their own configurations, `sensor-*` endpoints fall back to a
    /// pattern whose PSK identity is the endpoint name; nothing else is known.
    fn source() -> MemoryConfigSource {
        let mut dev2 = config("dev-2-id");
        dev2.discover = true;
        dev2.acl = [(
            0,
            AclInstance {
                object_id: 3,
                instance_id: 0,
                acl: [(1, 31)].into(),
                owner: 1,
            },
        )]
        .into();
        dev2.read = vec![Lwm2mPath::object(1), Lwm2mPath::instance(2, 0)];
        let mut bad = config("x");
        bad.read = vec![Lwm2mPath::object(0)];
        MemoryConfigSource {
            endpoints: [
                ("dev-1".to_owned(), config("dev-1-id")),
                ("dev-2".to_owned(), dev2),
                ("bad-1".to_owned(), bad),
            ]
            .into(),
            patterns: [
                ("sensor-*".to_owned(), config("{ep}")),
                ("s*".to_owned(), config("generic")),
            ]
            .into(),
        }
    }

    const TLV: Option<u32> = Some(11542);

    #[test]
    fn client_initiated_bootstrap_with_fallback_pattern() {
        let mut net = Net::new(Duration::from_secs(300));
        net.bootstrap_request(&["ep=sensor-7"]);
        // Core TS 1.1 §5.2.7.1: the Bootstrap-Request is answered 2.04.
        assert_eq!(net.client.answers, vec![(2, 4)]);
        assert_eq!(
            net.client.lines(),
            ["Delete /0", "Delete /1", "Put /0/1", "Put /1/0", "Post /bs"]
        );
        assert!(
            net.client
                .seen
                .iter()
                .filter(|s| s.method == RequestType::Put)
                .all(|s| s.format == TLV)
        );
        // The TLV payloads decode to the configuration's instances, `{ep}` substituted.
        let Node::Instance(sec) = net.client.written("/0/1") else {
            panic!("instance expected")
        };
        assert_eq!(security_from_instance(&sec), Some(security("sensor-7")));
        let expected = config("sensor-7").writes();
        assert_eq!(net.client.written("/1/0"), expected[1].1);
        // The client's tree: the Bootstrap-Server account survived the deletes, the old
        // server account is gone, the new one is in place.
        assert!(
            net.client
                .tree
                .instance(ObjectId(0), InstanceId(0))
                .is_some()
        );
        let Node::Instance(server) = &expected[1].1 else {
            panic!("instance expected")
        };
        assert_eq!(
            net.client.tree.instance(ObjectId(1), InstanceId(0)),
            Some(server)
        );
        let step = |step, path: Option<Lwm2mPath>, code| BootstrapEvent::Step {
            endpoint: "sensor-7".into(),
            step,
            path,
            code,
            detail: None,
        };
        assert_eq!(
            net.events,
            vec![
                BootstrapEvent::SessionStarted {
                    endpoint: "sensor-7".into(),
                    peer: client_addr(),
                    config: "pattern sensor-*".into(),
                    initiated_by_client: true,
                    format: ContentFormat::Tlv,
                },
                step("delete", Some(Lwm2mPath::object(0)), (2, 2)),
                step("delete", Some(Lwm2mPath::object(1)), (2, 2)),
                step("write", Some(Lwm2mPath::instance(0, 1)), (2, 4)),
                step("write", Some(Lwm2mPath::instance(1, 0)), (2, 4)),
                step("finish", None, (2, 4)),
                BootstrapEvent::Finished {
                    endpoint: "sensor-7".into(),
                    duration: Duration::ZERO,
                },
            ]
        );
        assert!(!net.server.is_running("sensor-7"));
    }

    #[test]
    fn own_configuration_wins_over_patterns() {
        let s = source();
        assert_eq!(s.lookup("dev-1").unwrap().0, "endpoint dev-1");
        assert_eq!(s.lookup("sensor-1").unwrap().0, "pattern sensor-*");
        let (label, generic) = s.lookup("s1").unwrap();
        assert_eq!(label, "pattern s*");
        assert_eq!(generic.security[&1].identity, "generic");
        assert!(s.lookup("meter-1").is_none());
    }

    #[test]
    fn unknown_endpoint_is_refused_with_bad_request() {
        let mut net = Net::new(Duration::from_secs(300));
        net.bootstrap_request(&["ep=meter-1"]);
        assert_eq!(net.client.answers, vec![(4, 0)]);
        assert!(net.client.seen.is_empty());
        assert!(matches!(
            &net.events[..],
            [BootstrapEvent::Refused { peer, endpoint: Some(e), code: (4, 0), reason }]
                if *peer == client_addr() && e == "meter-1" && reason.contains("unknown endpoint")
        ));
    }

    /// Refuses to provision `dev-1`; everything else starts.
    struct Provisioning(MemoryConfigSource);

    impl ConfigSource for Provisioning {
        fn lookup(&self, endpoint: &str) -> Option<(String, BootstrapConfig)> {
            self.0.lookup(endpoint)
        }
        fn session_starting(
            &self,
            endpoint: &str,
            config: &BootstrapConfig,
        ) -> Result<(), BootstrapError> {
            let expected = if endpoint.starts_with("dev-") {
                format!("{endpoint}-id")
            } else {
                endpoint.to_owned()
            };
            assert_eq!(config.security[&1].identity, expected);
            match endpoint {
                "dev-1" => Err(BootstrapError::Provisioning {
                    endpoint: endpoint.into(),
                    reason: "identity taken".into(),
                }),
                "dev-2" => Err(BootstrapError::Forbidden {
                    endpoint: endpoint.into(),
                    reason: "not over plain CoAP".into(),
                }),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn a_session_the_source_cannot_provision_is_refused_with_its_reason() {
        let mut net = Net::new(Duration::from_secs(300));
        net.server = BootstrapServer::new(
            BootstrapServerConfig::default(),
            Box::new(Provisioning(source())),
        );
        net.bootstrap_request(&["ep=dev-1"]);
        assert_eq!(net.client.answers, vec![(5, 0)]);
        assert!(net.client.seen.is_empty(), "nothing handed out");
        assert!(matches!(
            &net.events[..],
            [BootstrapEvent::Refused { endpoint: Some(e), code: (5, 0), reason, .. }]
                if e == "dev-1" && reason == "cannot provision \"dev-1\": identity taken"
        ));
        assert_eq!(
            net.server.start(net.now, "dev-1", client_addr()),
            Err(BootstrapError::Provisioning {
                endpoint: "dev-1".into(),
                reason: "identity taken".into()
            })
        );
        net.bootstrap_request(&["ep=dev-2"]);
        assert_eq!(net.client.answers, vec![(5, 0), (4, 3)]);
        net.bootstrap_request(&["ep=sensor-1"]);
        assert_eq!(net.client.answers, vec![(5, 0), (4, 3), (2, 4)]);
    }

    #[test]
    fn malformed_requests_get_their_codes() {
        let mut net = Net::new(Duration::from_secs(300));
        net.bootstrap_request(&[]); // no ep
        net.bootstrap_request(&["ep=dev-1", "pct=abc"]);
        net.bootstrap_request(&["ep=dev-1", "pct=0"]); // text/plain: not multi-node
        net.bootstrap_request(&["ep=dev-1", "pct=1542"]); // legacy TLV number
        net.send(RequestType::Get, "/bs", &["ep=dev-1"]);
        net.send(RequestType::Post, "/rd", &["ep=dev-1"]);
        net.bootstrap_request(&["ep=bad-1"]); // configuration reads /0
        let codes = vec![(4, 0), (4, 0), (4, 15), (4, 15), (4, 5), (4, 4), (5, 0)];
        assert_eq!(net.client.answers, codes);
        let refused: Vec<_> = net
            .events
            .iter()
            .filter_map(|e| match e {
                BootstrapEvent::Refused { endpoint, code, .. } => Some((endpoint.clone(), *code)),
                _ => None,
            })
            .collect();
        assert_eq!(refused.len(), codes.len());
        assert_eq!(refused[0], (None, (4, 0)));
        assert!(
            refused[1..]
                .iter()
                .all(|(e, _)| e.as_deref() == Some("dev-1") || e.as_deref() == Some("bad-1"))
        );
        assert_eq!(refused.iter().map(|r| r.1).collect::<Vec<_>>(), codes);
        assert!(net.client.seen.is_empty(), "no session started");
    }

    #[test]
    fn preferred_content_format_senml_cbor_is_honoured() {
        let mut net = Net::new(Duration::from_secs(300));
        net.bootstrap_request(&["ep=sensor-9", "pct=112"]);
        assert_eq!(net.client.answers, vec![(2, 4)]);
        let puts: Vec<&Seen> = net
            .client
            .seen
            .iter()
            .filter(|s| s.method == RequestType::Put)
            .collect();
        assert_eq!(puts.len(), 2);
        assert!(puts.iter().all(|s| s.format == Some(112)));
        let expected = config("sensor-9").writes();
        assert_eq!(net.client.written("/0/1"), expected[0].1);
        assert_eq!(net.client.written("/1/0"), expected[1].1);
        assert!(matches!(
            net.events.first(),
            Some(BootstrapEvent::SessionStarted {
                format: ContentFormat::SenmlCbor,
                ..
            })
        ));
        assert!(matches!(
            net.events.last(),
            Some(BootstrapEvent::Finished { .. })
        ));
    }

    #[test]
    fn discover_writes_acl_and_reads() {
        let mut net = Net::new(Duration::from_secs(300));
        net.bootstrap_request(&["ep=dev-2"]);
        assert_eq!(
            net.client.lines(),
            [
                "Get /",
                "Delete /0",
                "Delete /1",
                "Put /0/1",
                "Put /1/0",
                "Put /2/0",
                "Get /1",
                "Get /2/0",
                "Post /bs"
            ]
        );
        assert_eq!(net.client.seen[0].accept, Some(40));
        assert_eq!(net.client.seen[6].accept, TLV);
        let Some(BootstrapEvent::Step {
            step: "discover",
            path: Some(Lwm2mPath::Root),
            code: (2, 5),
            detail: Some(links),
            ..
        }) = net.events.get(1)
        else {
            panic!("discover step expected: {:?}", net.events)
        };
        assert!(
            links.contains("</0/0>") && links.contains("</0/1>"),
            "{links}"
        );
        let reads: Vec<_> = net
            .events
            .iter()
            .filter_map(|e| match e {
                BootstrapEvent::Step {
                    step: "read",
                    path,
                    code,
                    detail,
                    ..
                } => Some((*path, *code, detail.clone().unwrap())),
                _ => None,
            })
            .collect();
        assert_eq!(reads.len(), 2);
        assert_eq!(reads[1].0, Some(Lwm2mPath::instance(2, 0)));
        assert_eq!(reads[1].1, (2, 5));
        // The read-back ACL instance is the one written.
        let hex = reads[1].2.strip_prefix("tlv: ").unwrap();
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let node = content::decode(
            ContentFormat::Tlv,
            &bytes,
            &Lwm2mPath::instance(2, 0),
            &net.client.tree,
        )
        .unwrap()
        .content;
        let acl = source().lookup("dev-2").unwrap().1.writes();
        assert_eq!(node, acl[2].1);
        assert!(matches!(
            net.events.last(),
            Some(BootstrapEvent::Finished { .. })
        ));
    }

    #[test]
    fn error_answer_to_a_write_fails_the_session_naming_step_and_path() {
        let mut net = Net::new(Duration::from_secs(300));
        net.client.fail = Some((RequestType::Put, "/1/0", ResponseType::BadRequest));
        net.bootstrap_request(&["ep=dev-1"]);
        assert_eq!(
            net.client.lines(),
            ["Delete /0", "Delete /1", "Put /0/1", "Put /1/0"],
            "no Bootstrap-Finish after a failed write"
        );
        assert_eq!(
            net.failed(),
            Some((
                "write",
                Some(Lwm2mPath::instance(1, 0)),
                FailureReason::Code {
                    code: (4, 0),
                    expected: (2, 4)
                }
            ))
        );
        assert_eq!(net.steps().len(), 3);
        assert!(!net.server.is_running("dev-1"));
        assert!(
            !net.events
                .iter()
                .any(|e| matches!(e, BootstrapEvent::Finished { .. }))
        );
    }

    #[test]
    fn finish_refused_as_inconsistent_fails_the_finish_step() {
        // ETS int-9: Bootstrap-Finish answered 4.06 Not Acceptable.
        let mut net = Net::new(Duration::from_secs(300));
        net.client.fail = Some((RequestType::Post, "/bs", ResponseType::NotAcceptable));
        net.bootstrap_request(&["ep=dev-1"]);
        assert_eq!(
            net.failed(),
            Some((
                "finish",
                None,
                FailureReason::Code {
                    code: (4, 6),
                    expected: (2, 4)
                }
            ))
        );
    }

    #[test]
    fn silent_client_fails_when_the_exchange_gives_up() {
        let mut net = Net::new(Duration::from_secs(300));
        net.client.mode = Mode::Mute;
        net.server.start(net.now, "dev-1", client_addr()).unwrap();
        net.run_until(Duration::from_secs(200), |n| n.failed().is_some());
        assert_eq!(
            net.failed(),
            Some((
                "delete",
                Some(Lwm2mPath::object(0)),
                FailureReason::Exchange(ExchangeError::Timeout { transmissions: 5 })
            ))
        );
        // RFC 7252 §4.8.2: the sender gives up within MAX_TRANSMIT_WAIT.
        assert!(net.now - net.start <= Duration::from_secs(93));
        assert_eq!(net.server.counters().retransmissions, 4);
        assert!(!net.server.is_running("dev-1"));
    }

    #[test]
    fn session_timeout_fails_a_stalled_session() {
        let mut net = Net::new(Duration::from_secs(10));
        net.client.mode = Mode::Stall;
        net.bootstrap_request(&["ep=dev-1"]);
        assert_eq!(net.client.answers, vec![(2, 4)]);
        net.run_until(Duration::from_secs(60), |n| n.failed().is_some());
        assert_eq!(
            net.failed(),
            Some((
                "delete",
                Some(Lwm2mPath::object(0)),
                FailureReason::SessionTimeout {
                    limit: Duration::from_secs(10)
                }
            ))
        );
        assert_eq!(net.now - net.start, Duration::from_secs(10));
        assert_eq!(net.client.lines(), ["Delete /0"]);
    }

    #[test]
    fn new_bootstrap_request_restarts_the_session() {
        let mut net = Net::new(Duration::from_secs(300));
        net.client.mode = Mode::Stall;
        net.bootstrap_request(&["ep=dev-1"]);
        net.client.mode = Mode::Answer;
        net.bootstrap_request(&["ep=dev-1"]);
        assert_eq!(net.client.answers, vec![(2, 4), (2, 4)]);
        let kinds: Vec<&str> = net
            .events
            .iter()
            .map(|e| match e {
                BootstrapEvent::SessionStarted { .. } => "started",
                BootstrapEvent::Step { .. } => "step",
                BootstrapEvent::Finished { .. } => "finished",
                BootstrapEvent::Failed { .. } => "failed",
                BootstrapEvent::Refused { .. } => "refused",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "started", "failed", "started", "step", "step", "step", "step", "step", "finished"
            ]
        );
        assert_eq!(
            net.failed(),
            Some((
                "delete",
                Some(Lwm2mPath::object(0)),
                FailureReason::Restarted
            ))
        );
        assert_eq!(
            net.client.lines().first().map(String::as_str),
            Some("Delete /0")
        );
        assert_eq!(
            net.client.lines().last().map(String::as_str),
            Some("Post /bs")
        );
    }

    #[test]
    fn server_initiated_bootstrap() {
        let mut net = Net::new(Duration::from_secs(300));
        let unknown = net.server.start(net.now, "meter-1", client_addr());
        assert_eq!(
            unknown,
            Err(BootstrapError::UnknownEndpoint {
                endpoint: "meter-1".into()
            })
        );
        net.server.start(net.now, "dev-1", client_addr()).unwrap();
        let again = net.server.start(net.now, "dev-1", client_addr());
        assert!(matches!(again, Err(BootstrapError::SessionRunning { .. })));
        net.pump();
        assert!(
            net.client.answers.is_empty(),
            "no Bootstrap-Request was sent"
        );
        assert_eq!(
            net.client.lines(),
            ["Delete /0", "Delete /1", "Put /0/1", "Put /1/0", "Post /bs"]
        );
        let Node::Instance(sec) = net.client.written("/0/1") else {
            panic!("instance expected")
        };
        assert_eq!(security_from_instance(&sec), Some(security("dev-1-id")));
        assert!(matches!(
            net.events.first(),
            Some(BootstrapEvent::SessionStarted {
                initiated_by_client: false,
                config,
                ..
            }) if config == "endpoint dev-1"
        ));
        assert!(matches!(
            net.events.last(),
            Some(BootstrapEvent::Finished { endpoint, .. }) if endpoint == "dev-1"
        ));
    }

    #[test]
    fn garbage_is_ignored() {
        let mut net = Net::new(Duration::from_secs(300));
        for bytes in [
            &[][..],
            &[0xff],
            &[0x40, 0x02, 0x00],
            &[0x44, 0x02, 0x12, 0x34, 0xff, 0xff],
            &[0x40, 0x02, 0x12, 0x34, 0xb2, b'b', b's', 0xff],
        ] {
            net.server.handle_datagram(net.now, client_addr(), bytes);
        }
        net.server.handle_timeout(net.now);
        assert!(net.server.poll_event().is_none());
        assert!(!net.server.is_running("dev-1"));
        // Still serving afterwards.
        net.bootstrap_request(&["ep=dev-1"]);
        assert!(matches!(
            net.events.last(),
            Some(BootstrapEvent::Finished { .. })
        ));
    }

    fn bootstrap_request_bytes() -> Vec<u8> {
        let mut packet = message::request(RequestType::Post, "/bs");
        add_query(&mut packet, "ep=dev-1");
        add_query(&mut packet, "pct=112");
        packet.header.message_id = 0x1234;
        packet.set_token(vec![1, 2, 3, 4]);
        packet.to_bytes().unwrap()
    }

    proptest! {
        #[test]
        fn never_panics_on_random_or_mutated_datagrams(
            random in proptest::collection::vec(any::<u8>(), 0..64),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let now = Instant::now();
            let mut server = BootstrapServer::new(
                BootstrapServerConfig::default(),
                Box::new(source()),
            );
            server.handle_datagram(now, client_addr(), &random);
            let mut bytes = bootstrap_request_bytes();
            for (at, x) in flips {
                let len = bytes.len();
                bytes[at % len] ^= x;
            }
            server.handle_datagram(now, client_addr(), &bytes);
            server.handle_timeout(now + Duration::from_secs(400));
            while server.poll_transmit().is_some() {}
            while server.poll_event().is_some() {}
        }
    }
}
