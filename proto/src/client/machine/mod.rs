//! The LwM2M Client as a sans-IO state machine: client-initiated bootstrap, registration
//! lifecycle, Device Management on its [`ObjectTree`], Information Reporting, Send, queue
//! mode, and the known deviations of real clients ([`Quirks`]) for conformance testing.
//!
//! One [`Lwm2mClient`] owns one [`coap::Endpoint`] (its UDP socket's protocol state). Drive it
//! like the endpoint: hand in datagrams with [`Lwm2mClient::handle_datagram`], call
//! [`Lwm2mClient::handle_timeout`] at [`Lwm2mClient::poll_timeout`], drain
//! [`Lwm2mClient::poll_transmit`] and [`Lwm2mClient::poll_event`] after every call.
//!
//! # Life cycle
//!
//! * **Start** ([`Lwm2mClient::start`]): with a Bootstrap Server configured and no LwM2M
//!   Server account (a non-bootstrap Security instance with a URI) in the tree, the client
//!   runs client-initiated bootstrap (Core TS 1.1 §5.2.3): `POST /bs?ep=NAME` (1.1+:
//!   `&pct=` the preferred format). Otherwise it registers with [`ClientConfig::server`],
//!   else with the account in the tree.
//! * **Bootstrap** (Core TS 1.1 §5.2.7): requests from the Bootstrap Server are served as
//!   Bootstrap-Delete (2.02), Bootstrap-Write (2.04), Bootstrap-Discover (GET with Accept
//!   40, 2.05: `</>;lwm2m=1.x`, objects and instances, `ssid`/`uri` on Security and Server
//!   instances), Bootstrap-Read (1.1+, objects 1 and 2 only, else 4.05) and
//!   Bootstrap-Finish (`POST /bs`: 2.04, or 4.06 when no usable server account was
//!   written). After Finish the client registers with the account it was given: the
//!   `coap://IP:port` URI of the Security instance and the Server instance with the same
//!   Short Server ID (lifetime 1/x/1, binding 1/x/7).
//! * **Register** (Core TS 1.1 §6.2.1): `POST /rd?ep=&lt=&lwm2m=&b=` (`Q` for 1.1+ queue
//!   mode, `b=UQ` for 1.0), Content-Format 40, payload the object and instance links of the
//!   tree without the Security object; 1.1+ clients add `</>;rt="oma.lwm2m";ct=<preferred>`
//!   and `ver=` for object versions other than 1.0. The Location-Path is remembered.
//! * **Update** (§6.2.2): `POST /rd/ID` with only what changed (`lt`, `b`, the link list),
//!   sent [`ClientConfig::update_margin`] before the lifetime runs out (half the lifetime
//!   when the margin is not shorter than it), on Registration Update Trigger (Execute
//!   1/x/8), after Create and Delete, after a Write or Write-Composite that changes the
//!   lifetime (1/x/1) or binding (1/x/7), again as soon as an Update under way returns when
//!   they changed meanwhile, and on [`Lwm2mClient::wake`]. A failed Update makes the client
//!   register again.
//! * **De-register** (§6.2.3): `DELETE /rd/ID`.
//! * **Queue mode** (§6.5): the client stays awake for MAX_TRANSMIT_WAIT (of
//!   [`ClientConfig::coap`], 93 s by default) after its last exchange, then enters
//!   [`ClientState::Sleeping`]; a due Update or notification wakes it up.
//! * **Reboot** (Execute 3/0/4): answers 2.04, sends a De-register (not awaited), forgets
//!   all protocol state and stays silent (datagrams ignored) for
//!   [`ClientConfig::reboot_silence`], then starts again. **Factory Reset** (Execute 3/0/5)
//!   does the same after restoring the factory object tree and dropping all attributes.
//!   A reboot completes a firmware update in State 3 (success) and aborts a download
//!   (Update Result 4). **Disable** (Execute 1/x/4, Core TS 1.1 Appendix E.2) answers 2.04,
//!   de-registers and stays silent for the Disable Timeout (1/x/5, 86,400 s by default),
//!   keeping its state, then registers again. **Mute Send** (1/x/23 true) makes
//!   [`Lwm2mClient::send`] refuse with a `Failed { step: "send" }` event.
//!   **Bootstrap-Request Trigger** (Execute 1/x/9) answers 2.04 and runs client-initiated
//!   bootstrap with the Bootstrap Server (4.05 when the client has none), then registers
//!   with what it was given.
//!
//! # Device Management (Core TS 1.1 §6.3)
//!
//! GET + Accept 40 is Discover, GET is Read (with Observe = 0: Observe), FETCH `/` is
//! Read-Composite (Observe-Composite with Observe = 0), PUT with a Uri-Query and no payload
//! is Write-Attributes, PUT is Write (replace), POST on an object is Create, on an instance
//! Write (partial update), on a resource Execute, DELETE is Delete, iPATCH `/` is
//! Write-Composite. Codes: [`DmError::coap_code`](super::tree::DmError::coap_code) for
//! refusals of the tree (4.04 what the client lacks, 4.05 what the object definition
//! forbids, 4.00 bad requests), 4.06 when Accept names a format the client does not speak,
//! 4.15 for a request Content-Format it does not speak, 4.00 for undecodable payloads or
//! attribute queries, 4.01 for the Security object and for peers that are not its server,
//! 4.05 for deleting an instance of a mandatory single-instance object.
//!
//! Observations notify by the rules of the `notify` module (pmin, pmax, gt, lt, st, epmin,
//! epmax, inherited object → instance → resource, with the Server object's default periods),
//! with non-confirmable notifications in the format of the Observe response. A composite
//! observation uses the smallest effective `pmin` and `pmax` of its paths (a `pmax` of 0 or
//! unset, no maximum, does not count) and no thresholds.
//!
//! # Firmware Update (object 5, Core TS 1.1 Appendix E.6)
//!
//! Writing Package (5/0/0, block-wise bodies arrive whole) sets State 2 Downloaded; an
//! empty package resets to State 0 / Update Result 0. Writing Package URI (5/0/1) with a
//! `coap://IP:port/path` URI sets State 1 Downloading and fetches it with GET (block-wise);
//! success sets State 2, failure State 0 with Update Result 7 (invalid URI: unparsable
//! URI, 4.xx answer), 9 (unsupported protocol: `coaps://`, which the simulator does not
//! speak), 3 (out of RAM: body over the CoAP layer's limit), 5 (integrity check failure:
//! broken block-wise transfer) or 4 (connection lost: time-out, reset, 5.xx). An empty URI
//! resets. Writing either while Downloading or Updating is refused with 4.05. Execute
//! Update (5/0/2) is only allowed in State 2 (4.05 otherwise, "only executable when State
//! is Downloaded"); it sets State 3 Updating and, after [`FIRMWARE_UPDATE_DURATION`],
//! State 0 with Update Result 1 (success). Observers of these resources are notified.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::notify::{Observation, Policy, Target};
use super::tree::{DmError, ExecuteArg, ObjectTree, WriteMode, parse_execute_args};
use super::wire::{self, Code, code_of};
use crate::coap::message::{self, uint_bytes, uint_option};
use crate::coap::uri::parse_coap_uri;
use crate::coap::{
    self, CoapOption, Endpoint, Event, ExchangeError, IncomingRequest, MessageClass, Packet,
    RequestHandle, RequestId, RequestType, ResponseType, Transmit,
};
use crate::codec::link::{
    AttributeUpdate, Attributes, DiscoverEntry, LinkParam, ObjectLinkInfo, RegistrationLinks,
    discover_links,
};
use crate::content::{self, CodecError, ContentFormat};
use crate::ids::{InstanceId, Lwm2mPath, ObjectId, ResourceId};
use crate::node::{Instance, Node, Record, ResourceValue};
use crate::registration::Lwm2mVersion;
use crate::value::Value;

mod bootstrap;
mod device_management;
mod firmware;
mod observe;
mod registration;

/// Known deviations of real clients that a simulated client can reproduce.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quirks {
    /// Announce and use the pre-1.0 content-format numbers (1542 TLV, 1543 JSON).
    pub legacy_content_formats: bool,
    /// Register without the `lwm2m=` parameter.
    pub no_lwm2m_version: bool,
    /// Send the 1.0 binding `b=UQ` for queue mode even as a 1.1+ client.
    pub legacy_queue_binding: bool,
    /// Encode TLV integers in 8 bytes instead of the shortest form.
    pub non_minimal_tlv_integers: bool,
    /// Answer in the preferred format whatever Accept asks for.
    pub ignore_accept: bool,
    /// Answer 2.05 Content where 2.04 Changed is due (Write, Execute) and vice versa.
    pub wrong_success_codes: bool,
    /// Answer every request this late (a separate response when over the ACK delay).
    pub late_responses: Option<Duration>,
    /// Send every response this many more times (0: once, as it should be).
    pub duplicate_responses: u32,
}

/// Settings of one client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Endpoint Client Name.
    pub endpoint: String,
    /// Enabler version.
    pub version: Lwm2mVersion,
    /// Binding letters (`U`).
    pub binding: String,
    /// Queue mode.
    pub queue_mode: bool,
    /// Lifetime, seconds (used when the Server object does not say otherwise).
    pub lifetime: u32,
    /// The LwM2M Server (factory configuration); ignored when `bootstrap_server` is set and
    /// the Security object holds no server account yet.
    pub server: Option<SocketAddr>,
    /// The Bootstrap Server for client-initiated bootstrap.
    pub bootstrap_server: Option<SocketAddr>,
    /// The format used when a request has no Accept.
    pub preferred_format: ContentFormat,
    /// The formats the client can produce and consume.
    pub supported_formats: Vec<ContentFormat>,
    /// Delay before answering any request.
    pub response_delay: Duration,
    /// Send an Update this long before the lifetime ends (at least 1 s).
    pub update_margin: Duration,
    /// How long a Reboot (Execute /3/0/4) keeps the client silent before it registers again.
    pub reboot_silence: Duration,
    /// Deviations to reproduce.
    pub quirks: Quirks,
    /// The CoAP exchange layer's parameters (seed, timers).
    pub coap: coap::Config,
    /// Version negotiation as real stacks do it: a Register answered 4.12 Precondition
    /// Failed (the server does not speak this `lwm2m=` version, Core TS 1.1 §6.2.1) is sent
    /// again, re-encoded for the next older version (1.2, then 1.1, then 1.0); off, the
    /// registration fails.
    pub version_fallback: bool,
}

/// Where a client is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientState {
    /// Not started.
    Idle,
    /// Running client-initiated bootstrap.
    Bootstrapping,
    /// Register sent, no answer yet.
    Registering,
    /// Registered.
    Registered,
    /// Queue mode: registered and asleep.
    Sleeping,
    /// Rebooting: silent for a while.
    Rebooting,
    /// De-registered.
    Deregistered,
    /// Gave up (bootstrap or registration failed).
    Failed,
}

/// What a client reports; drained with [`Lwm2mClient::poll_event`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Bootstrap-Finish received; the client registers with what it was given.
    Bootstrapped,
    /// Registered; `location` is the registration id path (`/rd/ID`).
    Registered {
        /// Location-Path.
        location: String,
    },
    /// An Update succeeded.
    Updated,
    /// De-registered.
    Deregistered,
    /// A Register was answered 4.12: the client registers again as a client of the older
    /// version `to` ([`ClientConfig::version_fallback`]).
    VersionFallback {
        /// The version refused.
        from: Lwm2mVersion,
        /// The version the client registers with now.
        to: Lwm2mVersion,
    },
    /// Bootstrap, Register or Update failed.
    Failed {
        /// Which step.
        step: &'static str,
        /// Why.
        reason: String,
    },
    /// A request from a server was answered.
    Served {
        /// The operation's name (`read`, `write`, ...).
        operation: &'static str,
        /// The path.
        path: Lwm2mPath,
        /// The code answered.
        code: (u8, u8),
    },
    /// A notification was sent.
    Notified {
        /// The observed path.
        path: Lwm2mPath,
    },
    /// Reboot executed: silent, then registers again.
    Rebooting,
    /// Factory reset executed.
    FactoryReset,
    /// Disable (Execute 1/x/4) executed: de-registered, silent for `duration` (the Disable
    /// Timeout 1/x/5), then registers again.
    Disabled {
        /// How long the client stays silent.
        duration: Duration,
    },
    /// An Execute was accepted (Core TS 1.1 §5.4.5), with its arguments.
    Executed {
        /// The executed resource.
        path: Lwm2mPath,
        /// The arguments.
        arguments: Vec<ExecuteArg>,
    },
    /// A Send (Core TS 1.1 §6.4.3) was answered.
    Sent {
        /// The code the server answered.
        code: (u8, u8),
    },
    /// An observation ended (Reset, Observe = 1, or unacknowledged notification).
    ObservationCancelled {
        /// The observed path (`/` for a composite observation).
        path: Lwm2mPath,
    },
    /// The Firmware Update object (5/0) changed State (5/0/3) or Update Result (5/0/5).
    Firmware {
        /// State: 0 Idle, 1 Downloading, 2 Downloaded, 3 Updating.
        state: u8,
        /// Update Result (0 initial, 1 success, 2-9 errors, Appendix E.6).
        result: u8,
    },
}

/// How long the Firmware Update object stays in State 3 (Updating) after Execute Update.
pub const FIRMWARE_UPDATE_DURATION: Duration = Duration::from_secs(2);

/// Firmware Update State (5/0/3) values (Core TS 1.1 Appendix E.6).
mod fw {
    pub const IDLE: u8 = 0;
    pub const DOWNLOADING: u8 = 1;
    pub const DOWNLOADED: u8 = 2;
    pub const UPDATING: u8 = 3;
    // Update Result (5/0/5) values.
    pub const INITIAL: u8 = 0;
    pub const SUCCESS: u8 = 1;
    pub const OUT_OF_RAM: u8 = 3;
    pub const CONNECTION_LOST: u8 = 4;
    pub const INTEGRITY_FAILURE: u8 = 5;
    pub const INVALID_URI: u8 = 7;
    pub const UNSUPPORTED_PROTOCOL: u8 = 9;
}

/// The LwM2M Server the client talks to.
#[derive(Debug, Clone, PartialEq)]
struct ServerAccount {
    addr: SocketAddr,
    /// Short Server ID, when the Security object gives one.
    ssid: Option<u16>,
}

/// The registration parameters as sent.
#[derive(Debug, Clone, PartialEq)]
struct RegParams {
    lifetime: u32,
    /// Binding letters without `Q`.
    binding: String,
    queue: bool,
    links: String,
}

/// An established registration.
#[derive(Debug, Clone)]
struct Registration {
    location: String,
    params: RegParams,
}

/// A registration the server holds, with its timers.
#[derive(Debug, Clone)]
struct Session {
    registration: Registration,
    /// When the next Update is due.
    next_update: Option<Instant>,
    /// Queue mode: when the client falls asleep unless something happens.
    sleep_at: Option<Instant>,
}

impl Session {
    fn new(registration: Registration) -> Self {
        Self {
            registration,
            next_update: None,
            sleep_at: None,
        }
    }
}

/// Where the client is in its life, with what only that stage has: a registration and its
/// timers exist only in the stages that can hold one, the end of a reboot's silence only
/// while rebooting. [`ClientState`] is its public face.
#[derive(Debug)]
enum Phase {
    /// Not started, or a reboot's silence is over.
    Idle,
    /// Client-initiated bootstrap under way. `previous`: the registration that still stands
    /// at the server when a Bootstrap-Request Trigger (Execute 1/x/9) started it.
    Bootstrapping { previous: Option<Session> },
    /// Register sent.
    Registering,
    /// Registered; `asleep` in queue mode between exchanges ([`ClientState::Sleeping`]).
    Registered { session: Session, asleep: bool },
    /// De-register sent and not answered: the client shows the state it was in.
    Deregistering { was: ClientState },
    /// Silent until `until` (Reboot, Factory Reset, Disable).
    Rebooting { until: Instant },
    /// De-registered.
    Deregistered,
    /// Gave up; `previous` as in `Bootstrapping`.
    Failed { previous: Option<Session> },
}

/// What an outgoing request was for.
#[derive(Debug)]
enum Outgoing {
    Bootstrap,
    Register(RegParams),
    Update(RegParams),
    Deregister,
    Send,
    Download,
}

/// What to do once an answer has gone out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Nothing,
    Update,
    Restart(Restart),
    Bootstrapped,
    /// Bootstrap-Request Trigger (Execute 1/x/9): client-initiated bootstrap now.
    BootstrapRequest(SocketAddr),
}

/// Why the client goes silent and starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// Execute 3/0/4.
    Reboot,
    /// Execute 3/0/5.
    FactoryReset,
    /// Execute 1/x/4 (Disable): silent for the Disable Timeout (1/x/5).
    Disable(Duration),
}

/// The answer to one request, built when the request arrives and sent now or later.
#[derive(Debug)]
struct Answer {
    operation: &'static str,
    path: Lwm2mPath,
    code: Code,
    payload: Vec<u8>,
    format: Option<ContentFormat>,
    location: Option<Lwm2mPath>,
    observe: Option<Target>,
    after: After,
}

impl Answer {
    fn new(operation: &'static str, path: Lwm2mPath, code: Code) -> Self {
        Self {
            operation,
            path,
            code,
            payload: Vec::new(),
            format: None,
            location: None,
            observe: None,
            after: After::Nothing,
        }
    }

    /// An error with a diagnostic payload (RFC 7252 §5.5.2).
    fn error(operation: &'static str, path: Lwm2mPath, code: Code, reason: impl ToString) -> Self {
        Self {
            payload: reason.to_string().into_bytes(),
            ..Self::new(operation, path, code)
        }
    }

    fn dm(operation: &'static str, path: Lwm2mPath, e: DmError) -> Self {
        Self::error(operation, path, e.coap_code(), e)
    }

    fn body(mut self, format: ContentFormat, payload: Vec<u8>) -> Self {
        self.format = Some(format);
        self.payload = payload;
        self
    }

    fn then(mut self, after: After) -> Self {
        self.after = after;
        self
    }
}

/// An answer waiting for [`ClientConfig::response_delay`] / [`Quirks::late_responses`].
#[derive(Debug)]
struct Delayed {
    at: Instant,
    handle: RequestHandle,
    answer: Answer,
}

const NOT_ACCEPTABLE: Code = (4, 6);
const UNSUPPORTED_FORMAT: Code = (4, 15);
const BAD_REQUEST: Code = (4, 0);
const NOT_ALLOWED: Code = (4, 5);

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

fn numeric(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) | Value::Time(i) => Some(*i as f64),
        Value::UnsignedInteger(u) => Some(*u as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn single(inst: &Instance, r: u16) -> Option<&Value> {
    match inst.get(&ResourceId(r)) {
        Some(ResourceValue::Single(v)) => Some(v),
        _ => None,
    }
}

fn int(inst: &Instance, r: u16) -> Option<i64> {
    match single(inst, r) {
        Some(Value::Integer(i)) => Some(*i),
        Some(Value::UnsignedInteger(u)) => i64::try_from(*u).ok(),
        _ => None,
    }
}

fn text(inst: &Instance, r: u16) -> Option<&str> {
    match single(inst, r) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn queries(packet: &Packet, option: CoapOption) -> Vec<String> {
    packet
        .get_option(option)
        .into_iter()
        .flatten()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn fw_path(r: u16) -> Lwm2mPath {
    Lwm2mPath::resource(5, 0, r)
}

/// The Package (5/0/0) and Package URI (5/0/1) values a write carries.
fn firmware_values<'a>(path: &Lwm2mPath, node: &'a Node) -> (Option<&'a Value>, Option<&'a Value>) {
    match (*path, node) {
        (p, Node::Resource(ResourceValue::Single(v))) if p == fw_path(0) => (Some(v), None),
        (p, Node::Resource(ResourceValue::Single(v))) if p == fw_path(1) => (None, Some(v)),
        (p, Node::Instance(inst)) if p == Lwm2mPath::instance(5, 0) => {
            (single(inst, 0), single(inst, 1))
        }
        _ => (None, None),
    }
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Opaque(b) => b.is_empty() || b.as_slice() == [0],
        Value::String(s) => s.is_empty(),
        Value::None => true,
        _ => false,
    }
}

fn add_counters(a: &mut coap::Counters, b: &coap::Counters) {
    a.datagrams_in += b.datagrams_in;
    a.bytes_in += b.bytes_in;
    a.datagrams_out += b.datagrams_out;
    a.bytes_out += b.bytes_out;
    a.retransmissions += b.retransmissions;
    a.duplicates += b.duplicates;
    a.malformed += b.malformed;
    a.resets_in += b.resets_in;
    a.resets_out += b.resets_out;
    a.stale_notifications += b.stale_notifications;
    a.timeouts += b.timeouts;
}

/// One simulated LwM2M client.
#[derive(Debug)]
pub struct Lwm2mClient {
    config: ClientConfig,
    tree: ObjectTree,
    factory: ObjectTree,
    endpoint: Endpoint,
    /// Counters of endpoints dropped by reboots.
    past_counters: coap::Counters,
    reboots: u64,
    phase: Phase,
    events: VecDeque<ClientEvent>,
    out: VecDeque<Transmit>,
    server: Option<ServerAccount>,
    outgoing: Vec<(RequestId, Outgoing)>,
    /// Notification attributes set by Write-Attributes, per path.
    attributes: BTreeMap<Lwm2mPath, Attributes>,
    observations: Vec<Observation>,
    delayed: Vec<Delayed>,
    firmware_done: Option<Instant>,
}

impl Lwm2mClient {
    /// A client with its factory object tree.
    pub fn new(config: ClientConfig, tree: ObjectTree) -> Self {
        Self {
            endpoint: Endpoint::new(config.coap.clone()),
            config,
            factory: tree.clone(),
            tree,
            past_counters: coap::Counters::default(),
            reboots: 0,
            phase: Phase::Idle,
            events: VecDeque::new(),
            out: VecDeque::new(),
            server: None,
            outgoing: Vec::new(),
            attributes: BTreeMap::new(),
            observations: Vec::new(),
            delayed: Vec::new(),
            firmware_done: None,
        }
    }

    /// Starts: bootstrap if no server account is configured, else Register.
    pub fn start(&mut self, now: Instant) {
        let account = self.tree_account();
        match (self.config.bootstrap_server, self.config.server, account) {
            (Some(_), _, Some(Ok(account))) => {
                self.server = Some(account);
                self.register(now);
            }
            (Some(bs), _, _) => self.bootstrap(now, bs),
            (None, Some(addr), _) => {
                let ssid = self
                    .tree
                    .instance_ids(ObjectId(1))
                    .first()
                    .and_then(|i| self.tree.instance(ObjectId(1), *i))
                    .and_then(|inst| int(inst, 0))
                    .and_then(|v| u16::try_from(v).ok());
                self.server = Some(ServerAccount { addr, ssid });
                self.register(now);
            }
            (None, None, Some(Ok(account))) => {
                self.server = Some(account);
                self.register(now);
            }
            (None, None, Some(Err(reason))) => self.fail_state("register", reason),
            (None, None, None) => {
                self.fail_state("register", "no LwM2M Server configured".into());
            }
        }
        self.process(now);
    }

    /// A datagram arrived from `peer`.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        if matches!(self.phase, Phase::Rebooting { .. }) {
            return;
        }
        self.endpoint.handle_datagram(now, peer, bytes);
        self.process(now);
    }

    /// Time passed: retransmissions, Updates, notifications (pmin/pmax), delayed answers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Phase::Rebooting { until } = self.phase {
            if until <= now {
                self.phase = Phase::Idle;
                self.start(now);
            }
            return;
        }
        self.endpoint.handle_timeout(now);
        self.process_endpoint(now);
        while let Some(pos) = self.delayed.iter().position(|d| d.at <= now) {
            let d = self.delayed.remove(pos);
            self.send_answer(now, d.handle, d.answer);
        }
        if matches!(self.phase, Phase::Rebooting { .. }) {
            return;
        }
        if self.firmware_done.is_some_and(|t| t <= now) {
            self.firmware_done = None;
            let path = fw_path(0);
            let _ = self
                .tree
                .set(&path, ResourceValue::Single(Value::Opaque(Vec::new())));
            self.set_firmware(fw::IDLE, fw::SUCCESS);
        }
        if let Some(session) = self.session_mut()
            && session.next_update.is_some_and(|t| t <= now)
        {
            session.next_update = None;
            self.send_update(now);
        }
        let idle = self.outgoing.is_empty();
        if let Some(session) = self.session_mut()
            && session.sleep_at.is_some_and(|t| t <= now)
        {
            session.sleep_at = None;
            if idle && let Phase::Registered { asleep, .. } = &mut self.phase {
                *asleep = true;
            }
        }
        self.process(now);
    }

    /// Changes a resource value (a sensor reading); observations are evaluated.
    pub fn set_value(&mut self, now: Instant, path: &Lwm2mPath, value: Value) {
        if self.tree.get(path) == Some(&value) {
            return;
        }
        let done = match path {
            Lwm2mPath::Resource(..) => self.tree.set(path, ResourceValue::Single(value)),
            Lwm2mPath::ResourceInstance(..) => self.tree.write(
                path,
                &Node::ResourceInstance(value),
                WriteMode::Replace,
                true,
            ),
            _ => return,
        };
        if done.is_ok() {
            self.changed(path);
            self.process(now);
        }
    }

    /// Sends the values at `paths` with the Send operation (LwM2M 1.1+).
    pub fn send(&mut self, now: Instant, paths: &[Lwm2mPath]) {
        if self.config.version == Lwm2mVersion::V1_0 {
            return self.fail("send", "Send is LwM2M 1.1+ (Core TS 1.1 §6.4.3)".into());
        }
        let (Some(server), Some(_)) = (&self.server, self.session()) else {
            return self.fail("send", "not registered".into());
        };
        let addr = server.addr;
        // Mute Send (1/x/23, Core TS 1.1 Appendix E.2): the server asked for no Send.
        let muted = self.server_instance().is_some_and(|inst| {
            matches!(
                inst.get(&ResourceId(23)),
                Some(ResourceValue::Single(Value::Boolean(true)))
            )
        });
        if muted {
            return self.fail("send", "Mute Send (1/x/23) is set for this server".into());
        }
        let format = self.senml_format(None).unwrap_or(ContentFormat::SenmlJson);
        let records = self.composite_records(paths);
        match content::encode_records(format, &records) {
            Ok(payload) => {
                let mut req = message::request(RequestType::Post, "/dp");
                req.add_option(CoapOption::ContentFormat, uint_bytes(format.code().into()));
                req.payload = payload;
                self.touch_awake(now);
                self.send_request(now, addr, req, Outgoing::Send);
            }
            Err(e) => self.fail("send", e.to_string()),
        }
        self.process(now);
    }

    /// Wakes a queue-mode client: it sends an Update and is reachable for a while.
    pub fn wake(&mut self, now: Instant) {
        self.send_update(now);
        self.process(now);
    }

    /// Sends an Update now (Registration Update Trigger does the same).
    pub fn trigger_update(&mut self, now: Instant) {
        self.send_update(now);
        self.process(now);
    }

    /// De-registers.
    pub fn deregister(&mut self, now: Instant) {
        let was = self.state();
        let location = self.session().map(|s| s.registration.location.clone());
        match (self.server.as_ref().map(|s| s.addr), location) {
            (Some(addr), Some(location)) => {
                let req = message::request(RequestType::Delete, &location);
                self.forget_registration();
                self.phase = Phase::Deregistering { was };
                self.send_request(now, addr, req, Outgoing::Deregister);
            }
            _ => {
                self.phase = Phase::Deregistered;
                self.events.push_back(ClientEvent::Deregistered);
            }
        }
        self.process(now);
    }

    /// The De-register was answered (or failed): done, unless the client has started
    /// again since (a late answer concerns the registration it gave up, not the new one).
    fn deregistered(&mut self) {
        if matches!(self.phase, Phase::Deregistering { .. }) {
            self.phase = Phase::Deregistered;
            self.events.push_back(ClientEvent::Deregistered);
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.collect_transmits();
        self.out.pop_front()
    }

    /// When [`Lwm2mClient::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if let Phase::Rebooting { until } = self.phase {
            return Some(until);
        }
        let exchange = self.endpoint.poll_timeout();
        let session = self.session();
        [
            exchange,
            session.and_then(|s| s.next_update),
            session.and_then(|s| s.sleep_at),
            self.firmware_done,
        ]
        .into_iter()
        .chain(self.delayed.iter().map(|d| Some(d.at)))
        .chain(self.observations.iter().map(Observation::deadline))
        .flatten()
        .min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The state.
    pub fn state(&self) -> ClientState {
        match &self.phase {
            Phase::Idle => ClientState::Idle,
            Phase::Bootstrapping { .. } => ClientState::Bootstrapping,
            Phase::Registering => ClientState::Registering,
            Phase::Registered { asleep: false, .. } => ClientState::Registered,
            Phase::Registered { asleep: true, .. } => ClientState::Sleeping,
            Phase::Deregistering { was } => *was,
            Phase::Rebooting { .. } => ClientState::Rebooting,
            Phase::Deregistered => ClientState::Deregistered,
            Phase::Failed { .. } => ClientState::Failed,
        }
    }

    /// The object tree.
    pub fn tree(&self) -> &ObjectTree {
        &self.tree
    }

    /// The configuration the client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The CoAP layer's traffic counters.
    pub fn counters(&self) -> coap::Counters {
        let mut c = self.past_counters.clone();
        add_counters(&mut c, self.endpoint.counters());
        c
    }

    /// The registration's Location-Path (`/rd/ID`) while registered.
    pub fn location(&self) -> Option<&str> {
        self.session().map(|s| s.registration.location.as_str())
    }

    /// The notification attributes Write-Attributes set at exactly `path`.
    pub fn attributes(&self, path: &Lwm2mPath) -> Attributes {
        self.attributes.get(path).copied().unwrap_or_default()
    }

    /// The number of observations being served.
    pub fn observation_count(&self) -> usize {
        self.observations.len()
    }

    // -----------------------------------------------------------------------------------
    // Plumbing

    fn fail(&mut self, step: &'static str, reason: String) {
        self.events.push_back(ClientEvent::Failed { step, reason });
    }

    fn fail_state(&mut self, step: &'static str, reason: String) {
        let previous = self.forget_session();
        self.phase = Phase::Failed { previous };
        self.fail(step, reason);
    }

    /// The registration the server holds, if any.
    fn session(&self) -> Option<&Session> {
        match &self.phase {
            Phase::Registered { session, .. } => Some(session),
            Phase::Bootstrapping { previous } | Phase::Failed { previous } => previous.as_ref(),
            _ => None,
        }
    }

    fn session_mut(&mut self) -> Option<&mut Session> {
        match &mut self.phase {
            Phase::Registered { session, .. } => Some(session),
            Phase::Bootstrapping { previous } | Phase::Failed { previous } => previous.as_mut(),
            _ => None,
        }
    }

    /// Takes the registration (and its timers) out of the phase, which the caller then
    /// replaces; the phase stays as it was when there is none.
    fn forget_session(&mut self) -> Option<Session> {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Registered { session, .. } => Some(session),
            Phase::Bootstrapping { previous } | Phase::Failed { previous } => previous,
            other => {
                self.phase = other;
                None
            }
        }
    }

    fn collect_transmits(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.out.push_back(t);
        }
    }

    /// After any input: endpoint events, due observations, datagrams.
    fn process(&mut self, now: Instant) {
        self.process_endpoint(now);
        self.run_observations(now);
        self.collect_transmits();
    }

    fn process_endpoint(&mut self, now: Instant) {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Request { peer, request } => self.on_request(now, peer, request),
                Event::Response { id, response } => self.on_response(now, id, response),
                Event::RequestFailed { id, error } => self.on_request_failed(now, id, error),
                Event::ObservationCancelled { id, .. } => {
                    if let Some(pos) = self.observations.iter().position(|o| o.id == id) {
                        let o = self.observations.swap_remove(pos);
                        let path = o.target.path();
                        self.events
                            .push_back(ClientEvent::ObservationCancelled { path });
                    }
                }
                _ => {}
            }
        }
    }

    fn send_request(&mut self, now: Instant, peer: SocketAddr, req: Packet, what: Outgoing) {
        match self.endpoint.send_request(now, peer, req) {
            Ok(id) => self.outgoing.push((id, what)),
            Err(e) => self.outgoing_failed(now, what, e.to_string(), None),
        }
    }

    fn take_outgoing(&mut self, id: RequestId) -> Option<Outgoing> {
        let pos = self.outgoing.iter().position(|(i, _)| *i == id)?;
        Some(self.outgoing.swap_remove(pos).1)
    }

    fn awake_window(&self) -> Duration {
        self.config.coap.max_transmit_wait()
    }

    /// Queue mode: the client stays reachable for a while after each exchange.
    fn touch_awake(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Registered { asleep, .. } => *asleep = false,
            Phase::Deregistering { was } if *was == ClientState::Sleeping => {
                *was = ClientState::Registered;
            }
            _ => {}
        }
        let until = now + self.awake_window();
        if let Some(session) = self.session_mut()
            && session.registration.params.queue
        {
            session.sleep_at = Some(until);
        }
    }

    // -----------------------------------------------------------------------------------
    // Accounts and registration

    fn on_response(&mut self, now: Instant, id: RequestId, response: Packet) {
        let Some(what) = self.take_outgoing(id) else {
            return;
        };
        let code = code_of(&response);
        if code.0 != 2 {
            let reason = format!(
                "answered {}.{:02}: {}",
                code.0,
                code.1,
                String::from_utf8_lossy(&response.payload)
            );
            return self.outgoing_failed(now, what, reason, Some(code));
        }
        match what {
            Outgoing::Bootstrap => {} // the Bootstrap Server now writes, then Finish
            Outgoing::Register(params) => {
                let segments = queries(&response, CoapOption::LocationPath);
                if segments.is_empty() {
                    return self.fail_state("register", "2.01 without Location-Path".into());
                }
                let location = format!("/{}", segments.join("/"));
                let lifetime = params.lifetime;
                let registration = Registration {
                    location: location.clone(),
                    params,
                };
                self.phase = Phase::Registered {
                    session: Session::new(registration),
                    asleep: false,
                };
                self.schedule_update(now, lifetime);
                self.touch_awake(now);
                self.events.push_back(ClientEvent::Registered { location });
            }
            Outgoing::Update(params) => {
                let lifetime = params.lifetime;
                if let Some(session) = self.session_mut() {
                    session.registration.params = params;
                }
                self.schedule_update(now, lifetime);
                self.touch_awake(now);
                self.events.push_back(ClientEvent::Updated);
                if self.registration_outdated() {
                    // written while this Update was under way
                    self.send_update(now);
                }
            }
            Outgoing::Deregister => self.deregistered(),
            Outgoing::Send => self.events.push_back(ClientEvent::Sent { code }),
            Outgoing::Download => self.set_firmware(fw::DOWNLOADED, fw::INITIAL),
        }
    }

    fn on_request_failed(&mut self, now: Instant, id: RequestId, error: ExchangeError) {
        if let Some(what) = self.take_outgoing(id) {
            let result = match error {
                ExchangeError::BodyTooLarge { .. } => fw::OUT_OF_RAM,
                ExchangeError::BlockTransfer { .. } => fw::INTEGRITY_FAILURE,
                _ => fw::CONNECTION_LOST,
            };
            self.outgoing_failed(now, what, error.to_string(), Some((0, result)));
        }
    }

    /// An outgoing request failed: an error answer (`code` class 4/5), or an exchange
    /// failure (`Some((0, firmware result))`, or `None` when it could not be sent).
    fn outgoing_failed(
        &mut self,
        now: Instant,
        what: Outgoing,
        reason: String,
        code: Option<Code>,
    ) {
        match what {
            Outgoing::Bootstrap => self.fail_state("bootstrap", reason),
            Outgoing::Register(_) => {
                let older = self.config.version.older();
                match (code, older) {
                    (Some((4, 12)), Some(to)) if self.config.version_fallback => {
                        let from = std::mem::replace(&mut self.config.version, to);
                        self.events
                            .push_back(ClientEvent::VersionFallback { from, to });
                        self.register(now);
                    }
                    _ => self.fail_state("register", reason),
                }
            }
            Outgoing::Update(_) => {
                // Core TS 1.1 §6.2.2: a failed Update means registering again.
                self.fail("update", reason);
                self.register(now);
            }
            Outgoing::Deregister => self.deregistered(),
            Outgoing::Send => match code {
                Some(c) if c.0 != 0 => self.events.push_back(ClientEvent::Sent { code: c }),
                _ => self.fail("send", reason),
            },
            Outgoing::Download => {
                let result = match code {
                    Some((4, _)) => fw::INVALID_URI,
                    Some((0, r)) => r,
                    _ => fw::CONNECTION_LOST,
                };
                self.set_firmware(fw::IDLE, result);
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Requests

    fn on_request(&mut self, now: Instant, peer: SocketAddr, request: IncomingRequest) {
        let IncomingRequest { packet, handle } = request;
        self.touch_awake(now);
        let bootstrap = self.state() == ClientState::Bootstrapping;
        let answer = if bootstrap && self.config.bootstrap_server == Some(peer) {
            self.bootstrap_op(now, &packet)
        } else if !bootstrap && self.server.as_ref().is_some_and(|s| s.addr == peer) {
            self.dm_op(now, &packet)
        } else {
            Answer::error(
                "request",
                Lwm2mPath::Root,
                (4, 1),
                "not a server of this client",
            )
        };
        let delay =
            self.config.response_delay + self.config.quirks.late_responses.unwrap_or_default();
        if delay.is_zero() {
            self.send_answer(now, handle, answer);
        } else {
            self.delayed.push(Delayed {
                at: now + delay,
                handle,
                answer,
            });
        }
    }

    fn send_answer(&mut self, now: Instant, handle: RequestHandle, a: Answer) {
        let code = match a.code {
            (2, 4) if self.config.quirks.wrong_success_codes => (2, 5),
            (2, 5) if self.config.quirks.wrong_success_codes => (2, 4),
            c => c,
        };
        let mut packet = message::response(ResponseType::Content, a.payload);
        packet.header.code = wire::class_of(code);
        if let Some(f) = a.format {
            packet.add_option(CoapOption::ContentFormat, uint_bytes(f.code().into()));
        }
        if let Some(loc) = a.location {
            for s in loc.segments() {
                packet.add_option(CoapOption::LocationPath, s.into_bytes());
            }
        }
        self.collect_transmits();
        match (a.observe, a.format) {
            (Some(target), Some(format)) if code.0 == 2 => {
                if let Ok(id) = self.endpoint.accept_observation(now, handle, packet) {
                    let policy = self.policy_for(&target);
                    let value = self.numeric_value(&target);
                    self.observations.retain(|o| o.id != id);
                    self.observations
                        .push(Observation::new(id, target, format, policy, now, value));
                }
            }
            _ => {
                let _ = self.endpoint.respond(now, handle, packet);
            }
        }
        while let Some(t) = self.endpoint.poll_transmit() {
            for _ in 0..self.config.quirks.duplicate_responses {
                self.out.push_back(t.clone());
            }
            self.out.push_back(t);
        }
        self.events.push_back(ClientEvent::Served {
            operation: a.operation,
            path: a.path,
            code,
        });
        match a.after {
            After::Nothing => {}
            After::Update => self.send_update(now),
            After::Restart(kind) => self.reboot(now, kind),
            After::Bootstrapped => self.bootstrap_finished(now),
            After::BootstrapRequest(bs) => {
                if let Some(session) = self.session_mut() {
                    session.next_update = None;
                }
                self.bootstrap(now, bs);
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Content

    // -----------------------------------------------------------------------------------
    // Device Management operations

    // -----------------------------------------------------------------------------------
    // Bootstrap interface

    // -----------------------------------------------------------------------------------
    // Reboot, factory reset

    // -----------------------------------------------------------------------------------
    // Firmware Update

    // -----------------------------------------------------------------------------------
    // Information Reporting
}
