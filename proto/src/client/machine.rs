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
use crate::bootstrap::config::security_from_instance;
use crate::coap::message::{self, uint_bytes, uint_option};
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
    state: ClientState,
    events: VecDeque<ClientEvent>,
    out: VecDeque<Transmit>,
    server: Option<ServerAccount>,
    registration: Option<Registration>,
    outgoing: Vec<(RequestId, Outgoing)>,
    /// Notification attributes set by Write-Attributes, per path.
    attributes: BTreeMap<Lwm2mPath, Attributes>,
    observations: Vec<Observation>,
    delayed: Vec<Delayed>,
    next_update: Option<Instant>,
    sleep_at: Option<Instant>,
    reboot_until: Option<Instant>,
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
            state: ClientState::Idle,
            events: VecDeque::new(),
            out: VecDeque::new(),
            server: None,
            registration: None,
            outgoing: Vec::new(),
            attributes: BTreeMap::new(),
            observations: Vec::new(),
            delayed: Vec::new(),
            next_update: None,
            sleep_at: None,
            reboot_until: None,
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
        if self.state == ClientState::Rebooting {
            return;
        }
        self.endpoint.handle_datagram(now, peer, bytes);
        self.process(now);
    }

    /// Time passed: retransmissions, Updates, notifications (pmin/pmax), delayed answers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == ClientState::Rebooting {
            if self.reboot_until.is_some_and(|t| t <= now) {
                self.reboot_until = None;
                self.state = ClientState::Idle;
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
        if self.state == ClientState::Rebooting {
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
        if self.next_update.is_some_and(|t| t <= now) {
            self.next_update = None;
            self.send_update(now);
        }
        if self.sleep_at.is_some_and(|t| t <= now) {
            self.sleep_at = None;
            if self.outgoing.is_empty() && self.state == ClientState::Registered {
                self.state = ClientState::Sleeping;
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
        let (Some(server), Some(_)) = (&self.server, &self.registration) else {
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
        match (&self.server, self.registration.take()) {
            (Some(server), Some(reg)) => {
                let addr = server.addr;
                let req = message::request(RequestType::Delete, &reg.location);
                self.forget_registration();
                self.send_request(now, addr, req, Outgoing::Deregister);
            }
            _ => {
                self.state = ClientState::Deregistered;
                self.events.push_back(ClientEvent::Deregistered);
            }
        }
        self.process(now);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.collect_transmits();
        self.out.pop_front()
    }

    /// When [`Lwm2mClient::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if self.state == ClientState::Rebooting {
            return self.reboot_until;
        }
        [
            self.endpoint.poll_timeout(),
            self.next_update,
            self.sleep_at,
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
        self.state
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
        self.registration.as_ref().map(|r| r.location.as_str())
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
        self.state = ClientState::Failed;
        self.fail(step, reason);
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
        if self.state == ClientState::Sleeping {
            self.state = ClientState::Registered;
        }
        if self.registration.as_ref().is_some_and(|r| r.params.queue) {
            self.sleep_at = Some(now + self.awake_window());
        }
    }

    // -----------------------------------------------------------------------------------
    // Accounts and registration

    /// The LwM2M Server account in the Security object (a non-bootstrap instance with a URI).
    fn tree_account(&self) -> Option<Result<ServerAccount, String>> {
        self.tree
            .instance_ids(ObjectId(0))
            .into_iter()
            .find_map(|i| {
                let sec = security_from_instance(self.tree.instance(ObjectId(0), i)?)?;
                if sec.bootstrap_server || sec.uri.is_empty() {
                    return None;
                }
                Some(match wire::parse_coap_uri(&sec.uri) {
                    Some(uri) => Ok(ServerAccount {
                        addr: uri.addr,
                        ssid: sec.short_server_id,
                    }),
                    None => Err(format!(
                        "server URI {:?} is not coap(s)://IP[:port]",
                        sec.uri
                    )),
                })
            })
    }

    /// The Server object instance of the current server (matching Short Server ID, or the
    /// first one).
    fn server_instance(&self) -> Option<&Instance> {
        let ssid = self.server.as_ref().and_then(|s| s.ssid);
        let mut ids = self.tree.instance_ids(ObjectId(1)).into_iter();
        let id = ids.find(|i| {
            ssid.is_none_or(|s| {
                self.tree
                    .instance(ObjectId(1), *i)
                    .and_then(|inst| int(inst, 0))
                    == Some(i64::from(s))
            })
        })?;
        self.tree.instance(ObjectId(1), id)
    }

    fn wire_format(&self, f: ContentFormat) -> ContentFormat {
        match f {
            ContentFormat::Tlv if self.config.quirks.legacy_content_formats => {
                ContentFormat::LegacyTlv
            }
            ContentFormat::OmaJson if self.config.quirks.legacy_content_formats => {
                ContentFormat::LegacyJson
            }
            f => f,
        }
    }

    fn speaks(&self, f: ContentFormat) -> bool {
        f != ContentFormat::LinkFormat
            && self
                .config
                .supported_formats
                .iter()
                .any(|s| s.canonical() == f.canonical())
    }

    fn object_version(&self, o: ObjectId) -> Option<String> {
        if self.config.version == Lwm2mVersion::V1_0 {
            return None;
        }
        self.tree
            .definition(o)
            .map(|d| d.version.clone())
            .filter(|v| v != "1.0")
    }

    fn registration_links(&self) -> String {
        let mut reg = RegistrationLinks::default();
        if self.config.version != Lwm2mVersion::V1_0 || self.config.quirks.legacy_content_formats {
            let f = self.wire_format(self.config.preferred_format);
            reg.content_formats = vec![f.code()];
        }
        for o in self.tree.object_ids() {
            if o == ObjectId(0) || o == ObjectId(21) {
                continue; // Security and OSCORE are not registered (Core TS 1.1 §6.2.1)
            }
            reg.objects.insert(
                o,
                ObjectLinkInfo {
                    version: self.object_version(o),
                    instances: self.tree.instance_ids(o).into_iter().collect(),
                },
            );
        }
        reg.to_string()
    }

    fn reg_params(&self) -> RegParams {
        let inst = self.server_instance();
        let lifetime = inst
            .and_then(|i| int(i, 1))
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(self.config.lifetime);
        let raw = inst
            .and_then(|i| text(i, 7))
            .unwrap_or(&self.config.binding);
        let queue = self.config.queue_mode || raw.contains('Q');
        let mut binding: String = raw.chars().filter(|c| *c != 'Q').collect();
        if binding.is_empty() {
            binding.push('U');
        }
        RegParams {
            lifetime,
            binding,
            queue,
            links: self.registration_links(),
        }
    }

    /// `b=` and `Q` (Core TS 1.1 §6.2.1; 1.0 writes queue mode as `b=UQ`).
    fn add_binding(&self, req: &mut Packet, p: &RegParams) {
        let legacy =
            self.config.version == Lwm2mVersion::V1_0 || self.config.quirks.legacy_queue_binding;
        if p.queue && legacy {
            message::add_query(req, &format!("b={}Q", p.binding));
        } else {
            message::add_query(req, &format!("b={}", p.binding));
            if p.queue {
                message::add_query(req, "Q");
            }
        }
    }

    fn forget_registration(&mut self) {
        self.registration = None;
        self.next_update = None;
        self.sleep_at = None;
        self.observations.clear();
    }

    fn register(&mut self, now: Instant) {
        let Some(addr) = self.server.as_ref().map(|s| s.addr) else {
            return self.fail_state("register", "no LwM2M Server".into());
        };
        for i in (0..self.outgoing.len()).rev() {
            if matches!(
                self.outgoing[i].1,
                Outgoing::Register(_) | Outgoing::Update(_)
            ) {
                let (id, _) = self.outgoing.swap_remove(i);
                self.endpoint.cancel_request(now, id);
            }
        }
        self.forget_registration();
        let p = self.reg_params();
        let mut req = message::request(RequestType::Post, "/rd");
        message::add_query(&mut req, &format!("ep={}", self.config.endpoint));
        message::add_query(&mut req, &format!("lt={}", p.lifetime));
        if !self.config.quirks.no_lwm2m_version {
            message::add_query(&mut req, &format!("lwm2m={}", self.config.version));
        }
        self.add_binding(&mut req, &p);
        req.add_option(
            CoapOption::ContentFormat,
            uint_bytes(ContentFormat::LinkFormat.code().into()),
        );
        req.payload = p.links.clone().into_bytes();
        self.state = ClientState::Registering;
        self.send_request(now, addr, req, Outgoing::Register(p));
    }

    fn send_update(&mut self, now: Instant) {
        let (Some(server), Some(reg)) = (&self.server, &self.registration) else {
            return;
        };
        if self
            .outgoing
            .iter()
            .any(|(_, o)| matches!(o, Outgoing::Register(_) | Outgoing::Update(_)))
        {
            return;
        }
        let addr = server.addr;
        let p = self.reg_params();
        let mut req = message::request(RequestType::Post, &reg.location);
        if p.lifetime != reg.params.lifetime {
            message::add_query(&mut req, &format!("lt={}", p.lifetime));
        }
        if p.binding != reg.params.binding || p.queue != reg.params.queue {
            self.add_binding(&mut req, &p);
        }
        if p.links != reg.params.links {
            req.add_option(
                CoapOption::ContentFormat,
                uint_bytes(ContentFormat::LinkFormat.code().into()),
            );
            req.payload = p.links.clone().into_bytes();
        }
        self.next_update = None;
        self.touch_awake(now);
        self.send_request(now, addr, req, Outgoing::Update(p));
    }

    fn schedule_update(&mut self, now: Instant, lifetime: u32) {
        let lt = secs(lifetime);
        let margin = self.config.update_margin.max(Duration::from_secs(1));
        let wait = if lt > margin { lt - margin } else { lt / 2 };
        self.next_update = Some(now + wait);
    }

    fn bootstrap(&mut self, now: Instant, bs: SocketAddr) {
        self.state = ClientState::Bootstrapping;
        let mut req = message::request(RequestType::Post, "/bs");
        message::add_query(&mut req, &format!("ep={}", self.config.endpoint));
        if self.config.version != Lwm2mVersion::V1_0 {
            let f = self.wire_format(self.config.preferred_format);
            message::add_query(&mut req, &format!("pct={}", f.code()));
        }
        self.send_request(now, bs, req, Outgoing::Bootstrap);
    }

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
                self.registration = Some(Registration {
                    location: location.clone(),
                    params,
                });
                self.state = ClientState::Registered;
                self.schedule_update(now, lifetime);
                self.touch_awake(now);
                self.events.push_back(ClientEvent::Registered { location });
            }
            Outgoing::Update(params) => {
                let lifetime = params.lifetime;
                if let Some(reg) = self.registration.as_mut() {
                    reg.params = params;
                }
                self.schedule_update(now, lifetime);
                self.touch_awake(now);
                self.events.push_back(ClientEvent::Updated);
                if self.registration_outdated() {
                    // written while this Update was under way
                    self.send_update(now);
                }
            }
            Outgoing::Deregister => {
                self.state = ClientState::Deregistered;
                self.events.push_back(ClientEvent::Deregistered);
            }
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
            Outgoing::Deregister => {
                self.state = ClientState::Deregistered;
                self.events.push_back(ClientEvent::Deregistered);
            }
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
        let bootstrap = self.state == ClientState::Bootstrapping;
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
                self.next_update = None;
                self.bootstrap(now, bs);
            }
        }
    }

    fn request_path(packet: &Packet) -> Result<Lwm2mPath, String> {
        let segments = queries(packet, CoapOption::UriPath);
        Lwm2mPath::from_segments(&segments).map_err(|e| e.to_string())
    }

    fn content_format(packet: &Packet) -> Option<u16> {
        uint_option(packet, CoapOption::ContentFormat).and_then(|c| u16::try_from(c).ok())
    }

    fn accept(packet: &Packet) -> Option<u16> {
        uint_option(packet, CoapOption::Accept).and_then(|c| u16::try_from(c).ok())
    }

    fn dm_op(&mut self, now: Instant, packet: &Packet) -> Answer {
        let path = match Self::request_path(packet) {
            Ok(p) => p,
            Err(reason) => return Answer::error("request", Lwm2mPath::Root, (4, 4), reason),
        };
        if path.object_id() == Some(ObjectId(0)) {
            return Answer::error(
                "request",
                path,
                (4, 1),
                "the Security object is only accessible to the Bootstrap Server (Core TS 1.1 Appendix E.1)",
            );
        }
        let MessageClass::Request(method) = packet.header.code else {
            return Answer::error("request", path, NOT_ALLOWED, "not a request");
        };
        let accept = Self::accept(packet);
        let observe = message::observe_value(packet) == Some(0);
        match method {
            RequestType::Get if accept == Some(ContentFormat::LinkFormat.code()) => {
                match self.discover(&path) {
                    Ok(entries) => Answer::new("discover", path, (2, 5)).body(
                        ContentFormat::LinkFormat,
                        discover_links(&entries).into_bytes(),
                    ),
                    Err(e) => Answer::dm("discover", path, e),
                }
            }
            RequestType::Get => {
                let mut a = self.read_op("read", &path, accept);
                if observe && a.code.0 == 2 {
                    a.operation = "observe";
                    a.observe = Some(Target::Path(path));
                }
                a
            }
            RequestType::Fetch => self.composite_read_op(packet, &path, accept, observe),
            RequestType::Put
                if packet.payload.is_empty()
                    && packet.get_option(CoapOption::UriQuery).is_some() =>
            {
                self.write_attributes_op(packet, &path)
            }
            RequestType::Put => self.write_op(now, packet, &path, WriteMode::Replace),
            RequestType::Post => match path {
                Lwm2mPath::Object(o) => self.create_op(packet, o),
                Lwm2mPath::Instance(..) => {
                    self.write_op(now, packet, &path, WriteMode::PartialUpdate)
                }
                Lwm2mPath::Resource(..) => self.execute_op(now, packet, &path),
                _ => Answer::error(
                    "request",
                    path,
                    NOT_ALLOWED,
                    "POST needs /O, /O/I or /O/I/R",
                ),
            },
            RequestType::Delete => self.delete_op(&path),
            RequestType::IPatch => self.composite_write_op(packet, &path),
            _ => Answer::error("request", path, NOT_ALLOWED, "method not used by LwM2M"),
        }
    }

    // -----------------------------------------------------------------------------------
    // Content

    fn encode(
        &self,
        f: ContentFormat,
        path: &Lwm2mPath,
        node: &Node,
    ) -> Result<Vec<u8>, CodecError> {
        let bytes = content::encode(f, path, node)?;
        if f.canonical() == ContentFormat::Tlv && self.config.quirks.non_minimal_tlv_integers {
            return Ok(wire::widen_tlv_integers(&bytes, path, node));
        }
        Ok(bytes)
    }

    /// The response format and body: Accept if given (and spoken, else 4.06), else the
    /// preferred format, else the first supported format that can carry the node.
    fn encode_response(
        &self,
        path: &Lwm2mPath,
        node: &Node,
        accept: Option<u16>,
    ) -> Result<(ContentFormat, Vec<u8>), (Code, String)> {
        let accept = accept.filter(|_| !self.config.quirks.ignore_accept);
        if let Some(code) = accept {
            let f = ContentFormat::from_code(code)
                .filter(|f| self.speaks(*f))
                .ok_or_else(|| {
                    (
                        NOT_ACCEPTABLE,
                        format!("Accept {code}: format not supported"),
                    )
                })?;
            let f = if self.config.quirks.legacy_content_formats {
                self.wire_format(f.canonical())
            } else {
                f
            };
            return self
                .encode(f, path, node)
                .map(|b| (f, b))
                .map_err(|e| (NOT_ACCEPTABLE, e.to_string()));
        }
        std::iter::once(self.config.preferred_format)
            .chain(self.config.supported_formats.iter().copied())
            .filter(|f| *f != ContentFormat::LinkFormat)
            .map(|f| self.wire_format(f))
            .find_map(|f| self.encode(f, path, node).ok().map(|b| (f, b)))
            .ok_or_else(|| {
                (
                    NOT_ACCEPTABLE,
                    format!("no supported format can carry {}", node.kind()),
                )
            })
    }

    /// Decodes a request payload at `path` (4.15 for a format not spoken, 4.00 for bytes
    /// that do not decode). Without Content-Format a single value is read as text/plain.
    fn decode_request(&self, packet: &Packet, path: &Lwm2mPath) -> Result<Node, (Code, String)> {
        let f = match Self::content_format(packet) {
            Some(code) => ContentFormat::from_code(code)
                .filter(|f| self.speaks(*f))
                .ok_or_else(|| {
                    (
                        UNSUPPORTED_FORMAT,
                        format!("Content-Format {code} not supported"),
                    )
                })?,
            None if path.depth() >= 3 => ContentFormat::Text,
            None => return Err((UNSUPPORTED_FORMAT, "no Content-Format".into())),
        };
        content::decode(f, &packet.payload, path, &self.tree)
            .map(|d| d.content)
            .map_err(|e| (BAD_REQUEST, e.to_string()))
    }

    /// A SenML format for composite operations: `wanted` if spoken, else the preferred or
    /// first supported SenML format.
    fn senml_format(&self, wanted: Option<ContentFormat>) -> Option<ContentFormat> {
        let senml = |f: &ContentFormat| {
            matches!(f, ContentFormat::SenmlJson | ContentFormat::SenmlCbor) && self.speaks(*f)
        };
        match wanted {
            Some(f) => Some(f).filter(senml),
            None => std::iter::once(self.config.preferred_format)
                .chain(self.config.supported_formats.iter().copied())
                .find(senml),
        }
    }

    /// The readable values at `paths` (paths that cannot be read are left out).
    fn composite_records(&self, paths: &[Lwm2mPath]) -> Vec<Record> {
        let mut out = Vec::new();
        for p in paths {
            let objects: Vec<Lwm2mPath> = match p {
                Lwm2mPath::Root => self
                    .tree
                    .object_ids()
                    .filter(|o| *o != ObjectId(0))
                    .map(Lwm2mPath::Object)
                    .collect(),
                p => vec![*p],
            };
            for q in objects {
                if let Ok(node) = self.tree.read(&q) {
                    out.extend(node.to_records(&q));
                }
            }
        }
        out
    }

    fn read_op(&self, operation: &'static str, path: &Lwm2mPath, accept: Option<u16>) -> Answer {
        match self.tree.read(path) {
            Err(e) => Answer::dm(operation, *path, e),
            Ok(node) => match self.encode_response(path, &node, accept) {
                Ok((f, bytes)) => Answer::new(operation, *path, (2, 5)).body(f, bytes),
                Err((code, reason)) => Answer::error(operation, *path, code, reason),
            },
        }
    }

    fn composite_read_op(
        &self,
        packet: &Packet,
        path: &Lwm2mPath,
        accept: Option<u16>,
        observe: bool,
    ) -> Answer {
        let op = if observe {
            "observe-composite"
        } else {
            "read-composite"
        };
        if *path != Lwm2mPath::Root {
            return Answer::error(op, *path, NOT_ALLOWED, "FETCH targets / (Core TS 1.1 §6.3)");
        }
        let input = Self::content_format(packet)
            .and_then(ContentFormat::from_code)
            .and_then(|f| self.senml_format(Some(f)));
        let Some(input) = input else {
            return Answer::error(
                op,
                *path,
                UNSUPPORTED_FORMAT,
                "FETCH needs SenML JSON or CBOR",
            );
        };
        let records = match content::decode_records(input, &packet.payload, &self.tree) {
            Ok(d) => d.content,
            Err(e) => return Answer::error(op, *path, BAD_REQUEST, e),
        };
        let output = match accept.filter(|_| !self.config.quirks.ignore_accept) {
            None => Some(input),
            Some(code) => ContentFormat::from_code(code).and_then(|f| self.senml_format(Some(f))),
        };
        let Some(output) = output else {
            return Answer::error(
                op,
                *path,
                NOT_ACCEPTABLE,
                "Accept must be SenML JSON or CBOR",
            );
        };
        let paths: Vec<Lwm2mPath> = records.iter().map(|r| r.path).collect();
        let values = self.composite_records(&paths);
        if values.is_empty() && !paths.is_empty() {
            return Answer::error(op, *path, (4, 4), "none of the paths exists");
        }
        match content::encode_records(output, &values) {
            Ok(bytes) => {
                let mut a = Answer::new(op, *path, (2, 5)).body(output, bytes);
                if observe {
                    a.observe = Some(Target::Composite(paths));
                }
                a
            }
            Err(e) => Answer::error(op, *path, (5, 0), e),
        }
    }

    fn composite_write_op(&mut self, packet: &Packet, path: &Lwm2mPath) -> Answer {
        let op = "write-composite";
        if *path != Lwm2mPath::Root {
            return Answer::error(
                op,
                *path,
                NOT_ALLOWED,
                "iPATCH targets / (Core TS 1.1 §6.3)",
            );
        }
        let input = Self::content_format(packet)
            .and_then(ContentFormat::from_code)
            .and_then(|f| self.senml_format(Some(f)));
        let Some(input) = input else {
            return Answer::error(
                op,
                *path,
                UNSUPPORTED_FORMAT,
                "iPATCH needs SenML JSON or CBOR",
            );
        };
        let records = match content::decode_records(input, &packet.payload, &self.tree) {
            Ok(d) => d.content,
            Err(e) => return Answer::error(op, *path, BAD_REQUEST, e),
        };
        for r in &records {
            let node = match (r.path, &r.value) {
                (Lwm2mPath::Resource(..), Some(v)) => {
                    Node::Resource(ResourceValue::Single(v.clone()))
                }
                (Lwm2mPath::ResourceInstance(..), Some(v)) => Node::ResourceInstance(v.clone()),
                _ => {
                    return Answer::error(
                        op,
                        r.path,
                        BAD_REQUEST,
                        "a value for a resource is needed",
                    );
                }
            };
            if r.path.object_id() == Some(ObjectId(0)) {
                return Answer::error(op, r.path, (4, 1), "the Security object is not writable");
            }
            if let Err(e) = self.tree.write(&r.path, &node, WriteMode::Replace, false) {
                return Answer::dm(op, r.path, e);
            }
            self.changed(&r.path);
        }
        let server = records
            .iter()
            .any(|r| r.path.object_id() == Some(ObjectId(1)));
        let after = self.after_write(server);
        Answer::new(op, *path, (2, 4)).then(after)
    }

    /// What follows a successful Write or Write-Composite; `server` says whether it wrote
    /// to the Server object. The notification periods may follow new defaults (1/x/2,
    /// 1/x/3), and a new lifetime (1/x/1) or binding (1/x/7) goes to the server in an
    /// Update (Core TS 1.1 §6.2.2).
    fn after_write(&mut self, server: bool) -> After {
        if !server {
            return After::Nothing;
        }
        self.refresh_policies();
        if self.registration_outdated() {
            After::Update
        } else {
            After::Nothing
        }
    }

    /// Whether the lifetime or binding now in the Server object differs from the one the
    /// server last accepted (Core TS 1.1 §6.2.2: the Update carries the changed ones).
    fn registration_outdated(&self) -> bool {
        self.registration.as_ref().is_some_and(|reg| {
            let p = self.reg_params();
            p.lifetime != reg.params.lifetime
                || p.binding != reg.params.binding
                || p.queue != reg.params.queue
        })
    }

    // -----------------------------------------------------------------------------------
    // Device Management operations

    fn write_op(
        &mut self,
        now: Instant,
        packet: &Packet,
        path: &Lwm2mPath,
        mode: WriteMode,
    ) -> Answer {
        let op = "write";
        if path.depth() < 2 {
            return Answer::error(
                op,
                *path,
                NOT_ALLOWED,
                "Write targets an instance or a resource",
            );
        }
        let node = match self.decode_request(packet, path) {
            Ok(n) => n,
            Err((code, reason)) => return Answer::error(op, *path, code, reason),
        };
        let (package, uri) = firmware_values(path, &node);
        let busy = matches!(self.firmware_state(), Some(fw::DOWNLOADING | fw::UPDATING));
        if busy && package.or(uri).is_some_and(|v| !is_empty_value(v)) {
            return Answer::error(op, *path, NOT_ALLOWED, "a firmware update is in progress");
        }
        if let Err(e) = self.tree.write(path, &node, mode, false) {
            return Answer::dm(op, *path, e);
        }
        self.changed(path);
        let (package, uri) = firmware_values(path, &node);
        let (package_empty, uri) = (package.map(is_empty_value), uri.cloned());
        if let Some(empty) = package_empty {
            let _ = self.tree.set(
                &fw_path(0),
                ResourceValue::Single(Value::Opaque(Vec::new())),
            );
            if empty {
                self.set_firmware(fw::IDLE, fw::INITIAL);
            } else {
                self.set_firmware(fw::DOWNLOADED, fw::INITIAL);
            }
        }
        if let Some(uri) = uri {
            self.firmware_uri(now, &uri);
        }
        let after = self.after_write(path.object_id() == Some(ObjectId(1)));
        Answer::new(op, *path, (2, 4)).then(after)
    }

    fn write_attributes_op(&mut self, packet: &Packet, path: &Lwm2mPath) -> Answer {
        let op = "write-attributes";
        let query = queries(packet, CoapOption::UriQuery);
        let update = match AttributeUpdate::from_query(&query) {
            Ok(u) => u,
            Err(e) => return Answer::error(op, *path, BAD_REQUEST, e),
        };
        if *path == Lwm2mPath::Root {
            return Answer::error(op, *path, NOT_ALLOWED, "no attributes on the root");
        }
        if !self.path_exists(path) {
            return Answer::error(op, *path, (4, 4), format!("{path} not found"));
        }
        let next = update.apply(&self.attributes(path));
        if next.is_empty() {
            self.attributes.remove(path);
        } else {
            self.attributes.insert(*path, next);
        }
        self.refresh_policies();
        Answer::new(op, *path, (2, 4))
    }

    fn create_op(&mut self, packet: &Packet, o: ObjectId) -> Answer {
        let op = "create";
        let path = Lwm2mPath::Object(o);
        if !self.tree.object_ids().any(|x| x == o) {
            return Answer::error(op, path, (4, 4), format!("{path} not found"));
        }
        let (id, inst) = if packet.payload.is_empty() {
            (None, Instance::new())
        } else {
            match self.decode_request(packet, &path) {
                Ok(Node::Object(m)) if m.len() <= 1 => match m.into_iter().next() {
                    Some((i, inst)) => (Some(i), inst),
                    None => (None, Instance::new()),
                },
                Ok(_) => {
                    return Answer::error(op, path, BAD_REQUEST, "Create carries one instance");
                }
                Err((BAD_REQUEST, reason)) => {
                    // Core TS 1.0 §5.4.5: the payload may hold the resources only.
                    match self.decode_request(packet, &Lwm2mPath::Instance(o, InstanceId(0))) {
                        Ok(Node::Instance(inst)) => (None, inst),
                        _ => return Answer::error(op, path, BAD_REQUEST, reason),
                    }
                }
                Err((code, reason)) => return Answer::error(op, path, code, reason),
            }
        };
        match self.tree.create(o, id, inst) {
            Ok(i) => {
                let created = Lwm2mPath::Instance(o, i);
                self.changed(&created);
                let mut a = Answer::new(op, path, (2, 1)).then(After::Update);
                a.location = Some(created);
                a
            }
            Err(e) => Answer::dm(op, path, e),
        }
    }

    fn delete_op(&mut self, path: &Lwm2mPath) -> Answer {
        let op = "delete";
        if let Some(def) = path.object_id().and_then(|o| self.tree.definition(o))
            && def.mandatory
            && !def.multiple
        {
            return Answer::error(
                op,
                *path,
                NOT_ALLOWED,
                "a mandatory single-instance object keeps its instance",
            );
        }
        match self.tree.delete(path) {
            Ok(()) => {
                self.changed(path);
                Answer::new(op, *path, (2, 2)).then(After::Update)
            }
            Err(e) => Answer::dm(op, *path, e),
        }
    }

    fn execute_op(&mut self, now: Instant, packet: &Packet, path: &Lwm2mPath) -> Answer {
        let op = "execute";
        if let Err(e) = self.tree.check_execute(path) {
            return Answer::dm(op, *path, e);
        }
        let arguments = match std::str::from_utf8(&packet.payload)
            .map_err(|e| e.to_string())
            .and_then(parse_execute_args)
        {
            Ok(a) => a,
            Err(reason) => return Answer::error(op, *path, BAD_REQUEST, reason),
        };
        let after = match path.ids().as_slice() {
            [3, 0, 4] => After::Restart(Restart::Reboot),
            [3, 0, 5] => After::Restart(Restart::FactoryReset),
            [1, i, 4] => After::Restart(Restart::Disable(self.disable_timeout(InstanceId(*i)))),
            [1, _, 9] => match self.config.bootstrap_server {
                Some(bs) => After::BootstrapRequest(bs),
                None => {
                    return Answer::error(
                        op,
                        *path,
                        NOT_ALLOWED,
                        "no Bootstrap-Server account to request a bootstrap from",
                    );
                }
            },
            [1, _, 8] => After::Update,
            [5, 0, 2] => {
                if self.firmware_state() != Some(fw::DOWNLOADED) {
                    return Answer::error(
                        op,
                        *path,
                        NOT_ALLOWED,
                        "Update is only executable in State 2 Downloaded (Appendix E.6)",
                    );
                }
                self.set_firmware(fw::UPDATING, fw::INITIAL);
                self.firmware_done = Some(now + FIRMWARE_UPDATE_DURATION);
                After::Nothing
            }
            _ => After::Nothing,
        };
        self.events.push_back(ClientEvent::Executed {
            path: *path,
            arguments,
        });
        Answer::new(op, *path, (2, 4)).then(after)
    }

    fn path_exists(&self, path: &Lwm2mPath) -> bool {
        match *path {
            Lwm2mPath::Root => true,
            Lwm2mPath::Object(o) => self.tree.object_ids().any(|x| x == o),
            Lwm2mPath::Instance(o, i) => self.tree.instance(o, i).is_some(),
            Lwm2mPath::Resource(o, i, r) => self.resource_ids(o, i).contains(&r),
            Lwm2mPath::ResourceInstance(..) => self.tree.get(path).is_some(),
        }
    }

    /// The resources of an instance: those with a value and the executable ones.
    fn resource_ids(&self, o: ObjectId, i: InstanceId) -> BTreeSet<ResourceId> {
        let Some(inst) = self.tree.instance(o, i) else {
            return BTreeSet::new();
        };
        let mut ids: BTreeSet<ResourceId> = inst.keys().copied().collect();
        if let Some(def) = self.tree.definition(o) {
            ids.extend(
                def.resources
                    .values()
                    .filter(|r| r.operations.executable())
                    .map(|r| r.id),
            );
        }
        ids
    }

    /// Attributes at `path` inherited from the levels above (Core TS 1.1 §5.1.2).
    fn inherited(&self, path: &Lwm2mPath) -> Attributes {
        let mut a = Attributes::default();
        let mut at = Some(*path);
        while let Some(p) = at {
            if let Some(x) = self.attributes.get(&p) {
                a = a.inherit(x);
            }
            at = p.parent();
        }
        a
    }

    /// Discover (Core TS 1.1 §6.3, "Discover"): the path with its attributes and what lies
    /// below it; a resource (instance) shows the attributes inherited from all levels. On a
    /// multiple resource (1.1+) its instances follow with their own attributes (ETS
    /// int-261: `</3/0/11>;dim=1,</3/0/11/0>`).
    fn discover(&self, path: &Lwm2mPath) -> Result<Vec<DiscoverEntry>, DmError> {
        if !self.path_exists(path) {
            return Err(DmError::NotFound { path: *path });
        }
        let entry = |p: Lwm2mPath, attributes: Attributes| {
            let mut e = DiscoverEntry::new(p);
            e.attributes = attributes;
            e.dim = self
                .tree
                .dim(&p)
                .map(|d| u16::try_from(d).unwrap_or(u16::MAX));
            e
        };
        let resources = |out: &mut Vec<DiscoverEntry>, o: ObjectId, i: InstanceId| {
            for r in self.resource_ids(o, i) {
                let p = Lwm2mPath::Resource(o, i, r);
                out.push(entry(p, self.attributes(&p)));
            }
        };
        let mut out = Vec::new();
        match *path {
            Lwm2mPath::Root => {
                return Err(DmError::BadRequest {
                    path: *path,
                    reason: "Discover needs an object path".into(),
                });
            }
            Lwm2mPath::Object(o) => {
                let mut e = entry(*path, self.attributes(path));
                e.ver = self.object_version(o);
                out.push(e);
                for i in self.tree.instance_ids(o) {
                    let p = Lwm2mPath::Instance(o, i);
                    out.push(entry(p, self.attributes(&p)));
                    resources(&mut out, o, i);
                }
            }
            Lwm2mPath::Instance(o, i) => {
                out.push(entry(*path, self.attributes(path)));
                resources(&mut out, o, i);
            }
            Lwm2mPath::Resource(o, i, r) => {
                out.push(entry(*path, self.inherited(path)));
                // 1.1+: the resource instances follow with their own attributes
                if self.config.version != Lwm2mVersion::V1_0
                    && let Some(ResourceValue::Multiple(m)) =
                        self.tree.instance(o, i).and_then(|inst| inst.get(&r))
                {
                    for ri in m.keys() {
                        let p = Lwm2mPath::ResourceInstance(o, i, r, *ri);
                        out.push(entry(p, self.attributes(&p)));
                    }
                }
            }
            Lwm2mPath::ResourceInstance(..) => out.push(entry(*path, self.inherited(path))),
        }
        Ok(out)
    }

    // -----------------------------------------------------------------------------------
    // Bootstrap interface

    fn bootstrap_op(&mut self, now: Instant, packet: &Packet) -> Answer {
        let MessageClass::Request(method) = packet.header.code else {
            return Answer::error("bootstrap", Lwm2mPath::Root, NOT_ALLOWED, "not a request");
        };
        if method == RequestType::Post && queries(packet, CoapOption::UriPath) == ["bs"] {
            let op = "bootstrap-finish";
            return match self.tree_account() {
                Some(Ok(_)) => Answer::new(op, Lwm2mPath::Root, (2, 4)).then(After::Bootstrapped),
                Some(Err(reason)) => Answer::error(op, Lwm2mPath::Root, NOT_ACCEPTABLE, reason),
                None => Answer::error(
                    op,
                    Lwm2mPath::Root,
                    NOT_ACCEPTABLE,
                    "no LwM2M Server account was written (Core TS 1.1 §5.2.7.6)",
                ),
            };
        }
        let path = match Self::request_path(packet) {
            Ok(p) => p,
            Err(reason) => return Answer::error("bootstrap", Lwm2mPath::Root, BAD_REQUEST, reason),
        };
        let v10 = self.config.version == Lwm2mVersion::V1_0;
        match method {
            RequestType::Delete => match self.tree.bootstrap_delete(&path) {
                Ok(()) => {
                    self.changed(&path);
                    Answer::new("bootstrap-delete", path, (2, 2))
                }
                Err(e) => Answer::dm("bootstrap-delete", path, e),
            },
            RequestType::Put => {
                let op = "bootstrap-write";
                if path == Lwm2mPath::Root {
                    return Answer::error(
                        op,
                        path,
                        BAD_REQUEST,
                        "Bootstrap-Write needs an object path",
                    );
                }
                let node = match self.decode_request(packet, &path) {
                    Ok(n) => n,
                    Err((code, reason)) => return Answer::error(op, path, code, reason),
                };
                match self.tree.write(&path, &node, WriteMode::Replace, true) {
                    Ok(()) => {
                        self.changed(&path);
                        let _ = now;
                        Answer::new(op, path, (2, 4))
                    }
                    Err(e) => Answer::dm(op, path, e),
                }
            }
            RequestType::Get if Self::accept(packet) == Some(ContentFormat::LinkFormat.code()) => {
                let op = "bootstrap-discover";
                match self.bootstrap_discover(&path) {
                    Ok(entries) => Answer::new(op, path, (2, 5)).body(
                        ContentFormat::LinkFormat,
                        discover_links(&entries).into_bytes(),
                    ),
                    Err(e) => Answer::dm(op, path, e),
                }
            }
            RequestType::Get
                if !v10 && matches!(path.object_id(), Some(ObjectId(1) | ObjectId(2))) =>
            {
                self.read_op("bootstrap-read", &path, Self::accept(packet))
            }
            _ => Answer::error(
                "bootstrap",
                path,
                NOT_ALLOWED,
                "not a Bootstrap operation (Core TS 1.1 §5.2.7)",
            ),
        }
    }

    /// Bootstrap-Discover (Core TS 1.1 §5.2.7.3).
    fn bootstrap_discover(&self, path: &Lwm2mPath) -> Result<Vec<DiscoverEntry>, DmError> {
        let objects: Vec<ObjectId> = match *path {
            Lwm2mPath::Root => self.tree.object_ids().collect(),
            Lwm2mPath::Object(o) if self.tree.object_ids().any(|x| x == o) => vec![o],
            Lwm2mPath::Object(_) => return Err(DmError::NotFound { path: *path }),
            _ => {
                return Err(DmError::BadRequest {
                    path: *path,
                    reason: "Bootstrap-Discover targets / or /O".into(),
                });
            }
        };
        let mut out = Vec::new();
        if *path == Lwm2mPath::Root {
            let mut root = DiscoverEntry::new(Lwm2mPath::Root);
            root.other
                .push(LinkParam::new("lwm2m", self.config.version.as_str()));
            out.push(root);
        }
        for o in objects {
            let ver = self.object_version(o);
            let ids = self.tree.instance_ids(o);
            if ids.is_empty() || ver.is_some() {
                let mut e = DiscoverEntry::new(Lwm2mPath::Object(o));
                e.ver = ver;
                out.push(e);
            }
            for i in ids {
                let mut e = DiscoverEntry::new(Lwm2mPath::Instance(o, i));
                if let Some(inst) = self.tree.instance(o, i) {
                    let ssid = |r| int(inst, r).and_then(|v| u16::try_from(v).ok());
                    match o.0 {
                        0 => {
                            e.ssid = ssid(10);
                            e.uri = text(inst, 0).map(str::to_owned);
                        }
                        1 => e.ssid = ssid(0),
                        _ => {}
                    }
                }
                out.push(e);
            }
        }
        Ok(out)
    }

    fn bootstrap_finished(&mut self, now: Instant) {
        self.events.push_back(ClientEvent::Bootstrapped);
        match self.tree_account() {
            Some(Ok(account)) => {
                self.server = Some(account);
                self.register(now);
            }
            Some(Err(reason)) => self.fail_state("bootstrap", reason),
            None => self.fail_state("bootstrap", "no server account".into()),
        }
    }

    // -----------------------------------------------------------------------------------
    // Reboot, factory reset

    /// The Disable Timeout of Server instance `i` (1/i/5; 86,400 s when unset, Core TS 1.1
    /// Appendix E.2).
    fn disable_timeout(&self, i: InstanceId) -> Duration {
        let secs = match self
            .tree
            .get(&Lwm2mPath::Resource(ObjectId(1), i, ResourceId(5)))
        {
            Some(Value::Integer(v)) => u64::try_from(*v).unwrap_or(0),
            Some(Value::UnsignedInteger(v)) => *v,
            _ => 86_400,
        };
        Duration::from_secs(secs)
    }

    /// Reboot, Factory Reset and Disable: a De-register (not awaited), then silence.
    fn reboot(&mut self, now: Instant, kind: Restart) {
        let factory = kind == Restart::FactoryReset;
        match kind {
            Restart::FactoryReset => {
                self.tree = self.factory.clone();
                self.attributes.clear();
                self.events.push_back(ClientEvent::FactoryReset);
            }
            Restart::Reboot => self.events.push_back(ClientEvent::Rebooting),
            Restart::Disable(duration) => self.events.push_back(ClientEvent::Disabled { duration }),
        }
        if let (Some(server), Some(reg)) = (&self.server, &self.registration) {
            let req = message::request(RequestType::Delete, &reg.location);
            let _ = self.endpoint.send_request(now, server.addr, req);
        }
        self.collect_transmits();
        self.reboots += 1;
        let config = coap::Config {
            seed: self.config.coap.seed.wrapping_add(self.reboots),
            ..self.config.coap.clone()
        };
        let old = std::mem::replace(&mut self.endpoint, Endpoint::new(config));
        add_counters(&mut self.past_counters, old.counters());
        self.forget_registration();
        self.outgoing.clear();
        self.delayed.clear();
        if matches!(kind, Restart::Disable(_)) {
            // Disabling the server account is no reboot: the device keeps its state.
        } else if self.firmware_done.take().is_some() {
            // The reboot completes the firmware update in progress.
            self.set_firmware(fw::IDLE, fw::SUCCESS);
        } else if self.firmware_state() == Some(fw::DOWNLOADING) {
            self.set_firmware(fw::IDLE, fw::CONNECTION_LOST);
        }
        if factory {
            self.server = None;
        }
        self.state = ClientState::Rebooting;
        let silence = match kind {
            Restart::Disable(d) => d,
            _ => self.config.reboot_silence,
        };
        self.reboot_until = Some(now + silence);
    }

    // -----------------------------------------------------------------------------------
    // Firmware Update

    fn firmware_state(&self) -> Option<u8> {
        match self.tree.get(&fw_path(3)) {
            Some(Value::Integer(s)) => u8::try_from(*s).ok(),
            _ => None,
        }
    }

    fn set_firmware(&mut self, state: u8, result: u8) {
        for (r, v) in [(3, state), (5, result)] {
            let path = fw_path(r);
            if self.tree.get(&path) != Some(&Value::Integer(v.into())) {
                let _ = self
                    .tree
                    .set(&path, ResourceValue::Single(Value::Integer(v.into())));
                self.changed(&path);
            }
        }
        self.events
            .push_back(ClientEvent::Firmware { state, result });
    }

    /// Package URI written (Appendix E.6): start the pull, or reset on an empty URI.
    fn firmware_uri(&mut self, now: Instant, uri: &Value) {
        for i in (0..self.outgoing.len()).rev() {
            if matches!(self.outgoing[i].1, Outgoing::Download) {
                let (id, _) = self.outgoing.swap_remove(i);
                self.endpoint.cancel_request(now, id);
            }
        }
        let Value::String(uri) = uri else {
            return self.set_firmware(fw::IDLE, fw::INVALID_URI);
        };
        if uri.is_empty() {
            return self.set_firmware(fw::IDLE, fw::INITIAL);
        }
        match wire::parse_coap_uri(uri) {
            None => self.set_firmware(fw::IDLE, fw::INVALID_URI),
            Some(u) if u.secure => self.set_firmware(fw::IDLE, fw::UNSUPPORTED_PROTOCOL),
            Some(u) => {
                self.set_firmware(fw::DOWNLOADING, fw::INITIAL);
                let mut req = message::request(RequestType::Get, "");
                for s in &u.path {
                    req.add_option(CoapOption::UriPath, s.clone().into_bytes());
                }
                for q in &u.query {
                    message::add_query(&mut req, q);
                }
                self.send_request(now, u.addr, req, Outgoing::Download);
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Information Reporting

    fn numeric_value(&self, target: &Target) -> Option<f64> {
        match target {
            Target::Path(p) if p.depth() >= 3 => self.tree.get(p).and_then(numeric),
            _ => None,
        }
    }

    /// The effective attributes of `path`: inherited, then the Server object's default
    /// periods (1/x/2, 1/x/3) for pmin / pmax.
    fn effective(&self, path: &Lwm2mPath) -> Attributes {
        let mut a = self.inherited(path);
        let server = self.server_instance();
        let default = |r| {
            server
                .and_then(|i| int(i, r))
                .and_then(|v| u32::try_from(v).ok())
        };
        a.pmin = a.pmin.or_else(|| default(2));
        a.pmax = a.pmax.or_else(|| default(3));
        a
    }

    /// The notification policy of an observation. An Observe-Composite takes the smallest
    /// effective pmin and pmax of its paths (Core TS 1.1 §6.4.1); a pmax that is 0 or
    /// unset means no maximum (§5.1.2) and does not count.
    fn policy_for(&self, target: &Target) -> Policy {
        match target {
            Target::Path(p) => Policy::new(&self.effective(p)),
            Target::Composite(paths) => {
                let all: Vec<Attributes> = paths.iter().map(|p| self.effective(p)).collect();
                let a = Attributes {
                    pmin: all.iter().filter_map(|a| a.pmin).min(),
                    pmax: all
                        .iter()
                        .filter_map(|a| a.effective_pmax())
                        .filter(|m| *m > 0)
                        .min(),
                    ..Attributes::default()
                };
                Policy::new(&a)
            }
        }
    }

    fn refresh_policies(&mut self) {
        let policies: Vec<Policy> = self
            .observations
            .iter()
            .map(|o| self.policy_for(&o.target))
            .collect();
        for (o, p) in self.observations.iter_mut().zip(policies) {
            o.policy = p;
        }
    }

    /// Something at `path` changed: observations above or below it take note.
    fn changed(&mut self, path: &Lwm2mPath) {
        for o in &mut self.observations {
            if o.target.overlaps(path) {
                o.on_change();
            }
        }
    }

    fn run_observations(&mut self, now: Instant) {
        if matches!(self.state, ClientState::Rebooting) {
            return;
        }
        let mut due = Vec::new();
        for i in 0..self.observations.len() {
            let value = self.numeric_value(&self.observations[i].target);
            if self.observations[i].poll(now, value) {
                due.push(self.observations[i].id);
            }
        }
        for id in due {
            self.notify(now, id);
        }
    }

    fn notify(&mut self, now: Instant, id: coap::ObservationId) {
        let Some(obs) = self.observations.iter().find(|o| o.id == id) else {
            return;
        };
        let (target, format) = (obs.target.clone(), obs.format);
        if self.state == ClientState::Sleeping {
            // Queue mode (Core TS 1.1 §6.5): waking up starts with an Update.
            self.send_update(now);
        }
        self.touch_awake(now);
        let body = match &target {
            Target::Path(p) => self
                .tree
                .read(p)
                .map_err(|e| (e.coap_code(), e.to_string()))
                .and_then(|node| {
                    self.encode(format, p, &node)
                        .map_err(|e| ((5, 0), e.to_string()))
                }),
            Target::Composite(paths) => {
                content::encode_records(format, &self.composite_records(paths))
                    .map_err(|e| ((5, 0), e.to_string()))
            }
        };
        let (packet, success) = match body {
            Ok(payload) => {
                let mut p = message::response(ResponseType::Content, payload);
                p.add_option(CoapOption::ContentFormat, uint_bytes(format.code().into()));
                (p, true)
            }
            Err((code, reason)) => {
                let mut p = message::response(ResponseType::Content, reason.into_bytes());
                p.header.code = wire::class_of(code);
                (p, false)
            }
        };
        let value = self.numeric_value(&target);
        let sent = self.endpoint.notify(now, id, packet, false).is_ok();
        if sent && success {
            if let Some(o) = self.observations.iter_mut().find(|o| o.id == id) {
                o.notified(now, value);
            }
            self.events.push_back(ClientEvent::Notified {
                path: target.path(),
            });
        } else {
            self.observations.retain(|o| o.id != id);
            self.events.push_back(ClientEvent::ObservationCancelled {
                path: target.path(),
            });
        }
    }
}
