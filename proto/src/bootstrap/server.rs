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

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::config::{BootstrapConfig, most_specific};
pub use super::error::BootstrapError;
use crate::admission::{self, Admission, AdmissionError, GateRole, InterfaceRequest, Open};
use crate::coap::message::{self, code_pair, set_option, uint_bytes, uint_option};
use crate::coap::{
    self, CoapOption, Endpoint, Event, ExchangeError, IncomingRequest, MessageClass, Packet,
    RequestId, RequestType, ResponseType, Transmit,
};
use crate::content::{self, ContentFormat};
use crate::hash::HashMap;
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
            requests: HashMap::default(),
            events: VecDeque::new(),
        }
    }

    /// A datagram arrived from `peer`. Never panics; invalid datagrams are dropped (or reset,
    /// RFC 7252 §4.2) by the exchange layer.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        self.handle_admitted(now, peer, bytes, &mut Open);
    }

    /// A datagram arrived from `peer`, whose requests `admission` decides about before they
    /// are handled (a refused Bootstrap-Request is answered 4.03 with the reason, and
    /// nothing else happens). The datagram is decoded once.
    pub fn handle_admitted(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        bytes: &[u8],
        admission: &mut dyn Admission,
    ) {
        self.endpoint.handle_datagram(now, peer, bytes);
        self.drain_admitted(now, admission);
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
        self.drain_admitted(now, &mut Open);
    }

    fn drain_admitted(&mut self, now: Instant, admission: &mut dyn Admission) {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Request { peer, request } => {
                    match admission.check(GateRole::BootstrapServer, &request.packet, &|_| None) {
                        Some(refused) => {
                            let answer =
                                message::response(ResponseType::Forbidden, refused.diagnostic());
                            // A response with a diagnostic payload this short always encodes.
                            let _ = self.endpoint.respond(now, request.handle, answer);
                        }
                        None => self.on_request(now, peer, request),
                    }
                }
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
        let code = code_pair(response.header.code);
        let expected = code_pair(MessageClass::Response(step.expected()));
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

#[cfg(test)]
mod tests;
