//! `exec:COMMAND`: a driver process for any other server, speaking JSON lines on its
//! standard input and output (`sh -c COMMAND`; its standard error goes to ours). The
//! driver ends when its standard input closes.
//!
//! **Requests** (harness → driver), one JSON object per line, each with a unique `id`:
//!
//! | `op` | other keys |
//! |---|---|
//! | `hello` | `protocol`: 1 (always first) |
//! | `read`, `observe` | `endpoint`, `path` (`/3/0/9`), `format` (`tlv`, `senml-json`, ... or null) |
//! | `discover`, `delete` | `endpoint`, `path` |
//! | `write` | `endpoint`, `path`, `replace` (bool), `format`, `nodes` `[{"path", "value"}]`, `value` (the value alone, for a single resource), `payload_hex` (when `format` is set: the payload in it) |
//! | `execute` | `endpoint`, `path`, `args` (`0='v',1` or null) |
//! | `create` | `endpoint`, `path` (`/O`), `instance` (or null), `nodes`, `format` |
//! | `write-attributes` | `endpoint`, `path`, `attributes` (`["pmin=10", "pmax=60"]`) |
//! | `read-composite`, `observe-composite` | `endpoint`, `paths`, `format` |
//! | `write-composite` | `endpoint`, `nodes`, `format` |
//! | `cancel-observation` | `endpoint`, `observation` (as the driver named it), `active` (bool) |
//! | `registration` | `endpoint` |
//! | `put-credentials` | `endpoint`, `identity` (text), `key_hex` (`identity` `null`: remove the endpoint's credentials) |
//! | `bootstrap-config` | `endpoint` (or pattern), `config` (our bootstrap configuration JSON; `null`: remove it) |
//!
//! **Answers** (driver → harness), one line each, with the request's `id`:
//! - `hello`: `{"id", "product", "version", "ops": [...]}`: the operations it offers, by
//!   the names above, plus `registrations` (it answers `registration`), `events`,
//!   `notifications`, `send`, `expiry`, `queue-state` (the events it reports),
//!   `response-format` (its answers say their Content-Format) and `findings` (it always
//!   gives raw payloads, so our decoder judges them); and `limits`: `{"formats": [...]}`
//!   (the only formats it can ask for), `{"levels": {"read": ["resource"], ...}}` (the
//!   path levels an operation takes), `{"partial_write": false}` (no partial update):
//!   what they exclude is not applicable, with the product's name;
//! - an operation the client answered: `{"id", "code": "2.05"}` with the content as
//!   `payload_hex` + `content_format` (a name or number; decoded here, with findings), or
//!   `nodes` `[{"path", "value"}]`, or `value` (one resource); a Discover's `links` (link
//!   format text); a Create's `location` (`/O/I`); an Observe's `observation` (any id);
//! - no answer from the client: `{"id", "error": "why", "kind": "timeout" |
//!   "unknown-endpoint" | "other"}`;
//! - `registration`: `{"id", "registration": {...} | null}` (the REST API's shape:
//!   `endpoint`, `registration_id`, `lwm2m_version`, `lifetime`, `binding`, `address`,
//!   `objects` `[{"id", "version", "instances"}]`, `sleeping`);
//! - `put-credentials`, `bootstrap-config`: `{"id", "ok": true}` or `error`.
//!
//! **Events** (driver → harness, unsolicited): `{"event": "registration" | "update" |
//! "deregistration" | "expiry", "registration": {...}}` (or `endpoint` and what it knows),
//! `{"event": "notification", "endpoint", "observation", "path", "seq", ...content as
//! above}`, `{"event": "send", "endpoint", "nodes" | "payload_hex" + "content_format"}`,
//! `{"event": "sleeping" | "awake", "endpoint"}`, and with `security-events` in `ops` a
//! DTLS handshake the server failed: `{"event": "security", "kind": "handshake_failed",
//! "server": "server" | "bootstrap", "peer": "IP:PORT", "identity": "psk:ID", "reason":
//! "WrongKey" | "UnknownIdentity" | ...}` (our REST API's `SECURITY` shape). Other lines
//! are ignored.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lwm2m_proto::bootstrap::BootstrapConfig;
use lwm2m_proto::coap::ExchangeError;
use lwm2m_proto::content::{self, ContentFormat};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{ObservationId, OpError, Operation, Response, ServerEvent};
use lwm2m_proto::{Lwm2mPath, ObjectId, Schema};
use serde_json::{Value as Json, json};

use super::json::{
    Body, ReadError, content_from_records, decode_payload, location, parse_code, records_from_nodes,
};
use super::{
    AdapterError, AdapterInfo, EventSink, Feature, RegistrationView, ServerAdapter, Sinks,
};

/// The adapter's name.
pub const NAME: &str = "exec";

/// How long the driver gets to say hello.
const HELLO_WAIT: Duration = Duration::from_secs(20);

/// How long an operation may take (beyond CoAP's MAX_TRANSMIT_WAIT).
const OP_WAIT: Duration = Duration::from_secs(130);

type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<Json>>>>;

/// Observation names of the driver ↔ our ids.
#[derive(Debug, Default)]
struct Observations {
    by_name: HashMap<String, u64>,
    names: HashMap<u64, String>,
    next: u64,
}

impl Observations {
    fn id(&mut self, name: &str) -> ObservationId {
        if let Some(id) = self.by_name.get(name) {
            return ObservationId(*id);
        }
        self.next += 1;
        self.by_name.insert(name.to_owned(), self.next);
        self.names.insert(self.next, name.to_owned());
        ObservationId(self.next)
    }
}

/// Shared between requests and the reader thread.
#[derive(Debug)]
struct Shared {
    registry: Arc<Registry>,
    versions: Mutex<HashMap<String, BTreeMap<ObjectId, String>>>,
    observations: Mutex<Observations>,
    /// Observed paths by our observation id (to decode notifications).
    observed: Mutex<HashMap<u64, (Lwm2mPath, bool)>>,
}

impl Shared {
    fn versions(&self, endpoint: &str) -> BTreeMap<ObjectId, String> {
        self.versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(endpoint)
            .cloned()
            .unwrap_or_default()
    }

    fn observation(&self, j: &Json) -> Option<ObservationId> {
        let name = match j.get("observation")? {
            Json::String(s) => s.clone(),
            Json::Null => return None,
            other => other.to_string(),
        };
        Some(
            self.observations
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .id(&name),
        )
    }
}

/// A driver process as a server adapter (see the module documentation).
pub struct ExecAdapter {
    command: String,
    child: Mutex<Child>,
    stdin: Mutex<ChildStdin>,
    pending: Pending,
    /// Set when the driver's output ended.
    gone: Arc<AtomicBool>,
    next_id: Mutex<u64>,
    sinks: Arc<Sinks>,
    shared: Arc<Shared>,
    info: AdapterInfo,
    limits: Limits,
}

/// What a driver said it cannot ask for (`limits` in its hello).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Limits {
    /// The content formats it can ask for (none listed: any).
    formats: Vec<ContentFormat>,
    /// The path levels each operation takes (`object`, `instance`, `resource`,
    /// `resource-instance`), by operation name (none listed: any).
    levels: HashMap<String, Vec<String>>,
    /// Whether it can ask for a partial update (POST) as well as a replace (PUT).
    partial_write: bool,
}

impl Limits {
    fn from_hello(hello: &Json) -> Self {
        let limits = hello.get("limits").cloned().unwrap_or(Json::Null);
        let strings = |j: &Json| -> Vec<String> {
            j.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        Self {
            formats: strings(limits.get("formats").unwrap_or(&Json::Null))
                .iter()
                .filter_map(|f| ContentFormat::from_name(f))
                .collect(),
            levels: limits
                .get("levels")
                .and_then(Json::as_object)
                .into_iter()
                .flatten()
                .map(|(op, l)| (op.clone(), strings(l)))
                .collect(),
            partial_write: limits
                .get("partial_write")
                .and_then(Json::as_bool)
                .unwrap_or(true),
        }
    }

    fn check(&self, operation: &Operation) -> Result<(), String> {
        use Operation as Op;
        let format = super::requested_format(operation);
        if let Some(f) = format
            && !self.formats.is_empty()
            && !self.formats.contains(&f)
        {
            return Err(format!("the driver cannot ask for {}", f.name()));
        }
        let path = match operation {
            Op::Read { path, .. }
            | Op::Discover { path }
            | Op::Write { path, .. }
            | Op::WriteAttributes { path, .. }
            | Op::Execute { path, .. }
            | Op::Delete { path }
            | Op::Observe { path, .. } => Some(*path),
            _ => None,
        };
        if let (Some(path), Some(levels)) = (path, self.levels.get(operation.name())) {
            let level = match path {
                Lwm2mPath::Root => "root",
                Lwm2mPath::Object(..) => "object",
                Lwm2mPath::Instance(..) => "instance",
                Lwm2mPath::Resource(..) => "resource",
                Lwm2mPath::ResourceInstance(..) => "resource-instance",
            };
            if !levels.iter().any(|l| l == level) {
                return Err(format!(
                    "the driver asks for {} on {} only, not on {path}",
                    operation.name(),
                    levels.join(", ")
                ));
            }
        }
        if let Op::Write { replace: false, .. } = operation
            && !self.partial_write
        {
            return Err("the driver cannot ask for a partial update".to_owned());
        }
        Ok(())
    }
}

impl std::fmt::Debug for ExecAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecAdapter")
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

impl Drop for ExecAdapter {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A content format from a driver: a name or a number.
fn format_of(j: Option<&Json>) -> Option<ContentFormat> {
    match j? {
        Json::String(s) => ContentFormat::from_name(s)
            .or_else(|| s.parse().ok().and_then(ContentFormat::from_code)),
        Json::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .and_then(ContentFormat::from_code),
        _ => None,
    }
}

/// The response a driver's answer (or notification) carries.
fn response_of(j: &Json, body: Body, schema: &dyn Schema) -> Result<Response, ReadError> {
    let code = match j.get("code") {
        Some(Json::String(s)) => parse_code(s),
        _ => None,
    }
    .ok_or_else(|| ReadError::NoDriverCode {
        json: j.to_string(),
    })?;
    let mut r = Response {
        code,
        format: format_of(j.get("content_format")),
        ..Response::empty()
    };
    if let Some(hex) = j.get("payload_hex").and_then(Json::as_str) {
        let bytes = lwm2m_proto::value::parse_hex(hex).ok_or_else(|| ReadError::NotHex {
            text: hex.to_owned(),
        })?;
        decode_payload(&mut r, body, &bytes, schema)?;
    } else if let Some(nodes) = j.get("nodes") {
        let records = records_from_nodes(schema, nodes, &mut r.findings)?;
        r.content = content_from_records(body, records, schema)?;
    } else if let (Some(v), Body::Node(path)) = (j.get("value"), body) {
        // A typed JSON value as our REST API gives it; else a value as text (what a
        // text/plain payload holds) typed by the registry; else kept as it is, with a finding.
        let node = json!([{"path": path.to_string(), "value": v}]);
        let strict = lwm2m_server::json::records_from(schema, &json!({ "nodes": node })).ok();
        let text = || {
            let ty = content::resource_def(schema, &path)?.data_type;
            let value = content::parse_text(ty, v.as_str()?).ok()?;
            Some(vec![lwm2m_proto::Record {
                path,
                value: Some(value),
                time: None,
            }])
        };
        let records = match strict.or_else(text) {
            Some(records) => records,
            None => records_from_nodes(schema, &node, &mut r.findings)?,
        };
        r.content = content_from_records(body, records, schema)?;
    } else if let (Some(links), Body::Links) = (j.get("links").and_then(Json::as_str), body) {
        let entries = lwm2m_proto::codec::link::parse_discover(links)?;
        r.content = Some(lwm2m_proto::server::Content::Links(entries));
    }
    if let Some(l) = j.get("location").and_then(Json::as_str) {
        r.location = Some(location(l)?);
    }
    if r.diagnostic.is_none() {
        r.diagnostic = j
            .get("diagnostic")
            .and_then(Json::as_str)
            .map(str::to_owned);
    }
    Ok(r)
}

/// A registration from a driver: the REST shape, with the address optional.
fn registration_of(j: &Json) -> Option<RegistrationView> {
    let mut j = j.clone();
    if let Some(m) = j.as_object_mut() {
        m.entry("address").or_insert(json!("0.0.0.0:0"));
    }
    super::json::registration_from(&j).ok()
}

/// An unsolicited line as a server event.
fn event_of(shared: &Shared, j: &Json) -> Option<ServerEvent> {
    let name = j.get("event")?.as_str()?;
    let endpoint = || j.get("endpoint").and_then(Json::as_str).map(str::to_owned);
    let registration = || {
        let r = j
            .get("registration")
            .cloned()
            .or_else(|| Some(json!({"endpoint": endpoint()?})))?;
        let view = registration_of(&r)?;
        shared
            .versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                view.registration.endpoint.clone(),
                super::json::versions(&view.registration),
            );
        Some(view.registration)
    };
    Some(match name {
        "registration" => ServerEvent::Registered {
            registration: registration()?,
            replaced: None,
        },
        "update" => ServerEvent::Updated {
            registration: registration()?,
            previous_address: None,
        },
        "deregistration" => ServerEvent::Deregistered {
            registration: registration()?,
        },
        "expiry" => ServerEvent::Expired {
            registration: registration()?,
        },
        "sleeping" => ServerEvent::Sleeping {
            endpoint: endpoint()?,
        },
        "awake" => ServerEvent::Awake {
            endpoint: endpoint()?,
        },
        "notification" => {
            let endpoint = endpoint()?;
            let observation = shared.observation(j)?;
            let known = shared
                .observed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&observation.0)
                .copied();
            let path: Lwm2mPath = match j.get("path").and_then(Json::as_str) {
                Some(p) => p.parse().ok()?,
                None => known?.0,
            };
            let body = match known {
                Some((_, true)) => Body::Records,
                _ => Body::Node(path),
            };
            let versions = shared.versions(&endpoint);
            let schema = shared.registry.with_versions(&versions);
            let mut j = j.clone();
            if let Some(m) = j.as_object_mut() {
                m.entry("code").or_insert(json!("2.05"));
            }
            let response = response_of(&j, body, &schema).ok()?;
            ServerEvent::Notification {
                observation,
                endpoint,
                path,
                response,
                seq: j
                    .get("seq")
                    .and_then(Json::as_u64)
                    .and_then(|s| u32::try_from(s).ok())
                    .unwrap_or(0),
            }
        }
        "send" => {
            let endpoint = endpoint()?;
            let versions = shared.versions(&endpoint);
            let schema = shared.registry.with_versions(&versions);
            let mut j = j.clone();
            if let Some(m) = j.as_object_mut() {
                m.entry("code").or_insert(json!("2.04"));
            }
            let response = response_of(&j, Body::Records, &schema).ok()?;
            let Some(lwm2m_proto::server::Content::Records(records)) = response.content else {
                return None;
            };
            ServerEvent::Send {
                endpoint,
                records,
                findings: response.findings,
            }
        }
        _ => return None,
    })
}

/// Why an exec driver cannot be used, or gave no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// `sh -c COMMAND` did not start.
    #[error("exec:{command}: cannot start: {reason}")]
    Start {
        /// The command.
        command: String,
        /// The OS error.
        reason: String,
    },
    /// The driver's standard input or output is not a pipe.
    #[error("exec:{command}: no pipes")]
    NoPipes {
        /// The command.
        command: String,
    },
    /// No thread to read the driver's output on.
    #[error("cannot start the driver's reader: {reason}")]
    Reader {
        /// The OS error.
        reason: String,
    },
    /// The driver did not answer the hello.
    #[error("exec:{command}: no hello: {source}")]
    NoHello {
        /// The command.
        command: String,
        /// Why there is no answer.
        source: Box<ExecError>,
    },
    /// The driver has exited.
    #[error("the driver exited")]
    Exited,
    /// A request could not be written to the driver.
    #[error("the driver exited or closed its standard input ({reason})")]
    Stdin {
        /// The OS error.
        reason: String,
    },
    /// No answer in time.
    #[error("no answer to {request} within {wait:?}")]
    Timeout {
        /// The request line.
        request: String,
        /// How long the adapter waited.
        wait: Duration,
    },
    /// A Write's node does not encode in the format asked for.
    #[error(transparent)]
    Encode(#[from] lwm2m_proto::content::CodecError),
    /// A cancellation of an observation the driver did not start.
    #[error("observation {observation} was not started by the driver")]
    UnknownObservation {
        /// The observation's id.
        observation: u64,
    },
    /// An operation the driver protocol has no request for.
    #[error("{operation} is not in the driver protocol")]
    NotInProtocol {
        /// The operation's name.
        operation: &'static str,
    },
}

impl ExecAdapter {
    /// Starts `sh -c COMMAND` and says hello; `Err` says why the driver cannot be used.
    pub fn spawn(command: &str, registry: Arc<Registry>) -> Result<Self, ExecError> {
        let command = command.trim();
        // `exec:'node driver.js'`: the quotes a shell would have removed.
        let command = command
            .strip_prefix('\'')
            .and_then(|c| c.strip_suffix('\''))
            .unwrap_or(command);
        let mut child = Command::new("sh")
            .args(["-c", command])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| ExecError::Start {
                command: command.to_owned(),
                reason: e.to_string(),
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(ExecError::NoPipes {
                command: command.to_owned(),
            });
        };
        let pending = Pending::default();
        let gone = Arc::new(AtomicBool::new(false));
        let sinks = Arc::new(Sinks::default());
        let shared = Arc::new(Shared {
            registry,
            versions: Mutex::default(),
            observations: Mutex::default(),
            observed: Mutex::default(),
        });
        {
            let (pending, sinks, shared, gone) =
                (pending.clone(), sinks.clone(), shared.clone(), gone.clone());
            std::thread::Builder::new()
                .name("exec driver".into())
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        let Ok(j) = serde_json::from_str::<Json>(&line) else {
                            continue;
                        };
                        if let Some(id) = j.get("id").and_then(Json::as_u64) {
                            let waiter = pending
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .remove(&id);
                            if let Some(tx) = waiter {
                                let _ = tx.send(j);
                            }
                        } else if let Some(event) = event_of(&shared, &j) {
                            sinks.deliver(&event);
                        } else if j.get("event").and_then(Json::as_str) == Some("security")
                            && let Some(failed) = super::json::dtls_failure_from(&j)
                        {
                            sinks.deliver_dtls(&failed);
                        }
                    }
                    // The driver is gone: every waiter learns it from its closed channel, and
                    // later requests from the flag.
                    gone.store(true, Ordering::SeqCst);
                    pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clear();
                })
                .map_err(|e| ExecError::Reader {
                    reason: e.to_string(),
                })?;
        }
        let mut adapter = Self {
            command: command.to_owned(),
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
            pending,
            gone,
            next_id: Mutex::new(0),
            sinks,
            shared,
            info: AdapterInfo {
                adapter: NAME.to_owned(),
                product: "unknown".to_owned(),
                version: "unknown".to_owned(),
                features: Default::default(),
            },
            limits: Limits::default(),
        };
        let hello = adapter
            .call(json!({"op": "hello", "protocol": 1}), HELLO_WAIT)
            .map_err(|e| ExecError::NoHello {
                command: command.to_owned(),
                source: Box::new(e),
            })?;
        let text = |k: &str| {
            hello
                .get(k)
                .and_then(Json::as_str)
                .unwrap_or("unknown")
                .to_owned()
        };
        adapter.info.product = text("product");
        adapter.info.version = text("version");
        adapter.limits = Limits::from_hello(&hello);
        for op in hello
            .get("ops")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let Some(name) = op.as_str() else { continue };
            match name.parse::<Feature>() {
                Ok(f) => {
                    adapter.info.features.insert(f);
                }
                Err(_) if name == "registration" => {
                    adapter.info.features.insert(Feature::Registrations);
                }
                Err(_) => {}
            }
        }
        Ok(adapter)
    }

    /// Sends a request and waits up to `wait` for its answer.
    fn call(&self, mut request: Json, wait: Duration) -> Result<Json, ExecError> {
        let id = {
            let mut next = self.next_id.lock().unwrap_or_else(PoisonError::into_inner);
            *next += 1;
            *next
        };
        if let Some(m) = request.as_object_mut() {
            m.insert("id".into(), json!(id));
        }
        let (tx, rx) = mpsc::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        if self.gone.load(Ordering::SeqCst) {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            return Err(ExecError::Exited);
        }
        {
            let mut stdin = self.stdin.lock().unwrap_or_else(PoisonError::into_inner);
            writeln!(stdin, "{request}")
                .and_then(|()| stdin.flush())
                .map_err(|e| ExecError::Stdin {
                    reason: e.to_string(),
                })?;
        }
        rx.recv_timeout(wait).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => ExecError::Timeout {
                request: request.to_string(),
                wait,
            },
            mpsc::RecvTimeoutError::Disconnected => ExecError::Exited,
        })
    }

    fn failed(&self, reason: impl std::fmt::Display) -> AdapterError {
        AdapterError::Failed {
            adapter: NAME.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// The request line for an operation.
    fn request_of(&self, endpoint: &str, operation: &Operation) -> Result<Json, ExecError> {
        let fmt = |f: &Option<ContentFormat>| f.map(|f| f.name());
        let paths = |ps: &[Lwm2mPath]| ps.iter().map(ToString::to_string).collect::<Vec<_>>();
        Ok(match operation {
            Operation::Read { path, format } => {
                json!({"op": "read", "endpoint": endpoint, "path": path.to_string(), "format": fmt(format)})
            }
            Operation::Observe { path, format } => {
                json!({"op": "observe", "endpoint": endpoint, "path": path.to_string(), "format": fmt(format)})
            }
            Operation::Discover { path } => {
                json!({"op": "discover", "endpoint": endpoint, "path": path.to_string()})
            }
            Operation::Delete { path } => {
                json!({"op": "delete", "endpoint": endpoint, "path": path.to_string()})
            }
            Operation::Write {
                path,
                node,
                replace,
                format,
            } => {
                let records = node.to_records(path);
                let mut j = json!({"op": "write", "endpoint": endpoint, "path": path.to_string(),
                    "replace": replace, "format": fmt(format),
                    "nodes": super::json::nodes_json(&records)["nodes"]});
                if let (
                    lwm2m_proto::Node::Resource(lwm2m_proto::ResourceValue::Single(v)),
                    Some(m),
                ) = (node, j.as_object_mut())
                {
                    m.insert("value".into(), v.to_json());
                }
                if let (Some(f), Some(m)) = (format, j.as_object_mut()) {
                    let bytes = content::encode(*f, path, node)?;
                    m.insert("payload_hex".into(), json!(hex(&bytes)));
                }
                j
            }
            Operation::Execute { path, args } => {
                json!({"op": "execute", "endpoint": endpoint, "path": path.to_string(), "args": args})
            }
            Operation::Create {
                object,
                instance,
                resources,
                format,
            } => {
                let records = super::json::create_records(*object, *instance, resources);
                json!({"op": "create", "endpoint": endpoint, "path": Lwm2mPath::Object(*object).to_string(),
                    "instance": instance.map(|i| i.0), "format": fmt(format),
                    "nodes": super::json::nodes_json(&records)["nodes"]})
            }
            Operation::WriteAttributes { path, attributes } => {
                json!({"op": "write-attributes", "endpoint": endpoint, "path": path.to_string(),
                    "attributes": attributes.to_query()})
            }
            Operation::ReadComposite { paths: ps, format } => {
                json!({"op": "read-composite", "endpoint": endpoint, "paths": paths(ps), "format": fmt(format)})
            }
            Operation::ObserveComposite { paths: ps, format } => {
                json!({"op": "observe-composite", "endpoint": endpoint, "paths": paths(ps), "format": fmt(format)})
            }
            Operation::WriteComposite { records, format } => {
                json!({"op": "write-composite", "endpoint": endpoint, "format": fmt(format),
                    "nodes": super::json::nodes_json(records)["nodes"]})
            }
            Operation::CancelObservation {
                observation,
                active,
            } => {
                let name = self
                    .shared
                    .observations
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .names
                    .get(&observation.0)
                    .cloned()
                    .ok_or(ExecError::UnknownObservation {
                        observation: observation.0,
                    })?;
                json!({"op": "cancel-observation", "endpoint": endpoint, "observation": name, "active": active})
            }
            other => {
                return Err(ExecError::NotInProtocol {
                    operation: other.name(),
                });
            }
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ServerAdapter for ExecAdapter {
    fn info(&self) -> &AdapterInfo {
        &self.info
    }

    fn check(&self, operation: &Operation) -> Result<(), String> {
        self.limits
            .check(operation)
            .map_err(|why| format!("the server adapter {NAME} ({}): {why}", self.info.product))
    }

    fn request(&self, endpoint: &str, operation: &Operation) -> Result<Response, OpError> {
        let invalid = |reason: String| OpError::Invalid {
            reason: format!("{NAME}: {reason}"),
        };
        let request = self
            .request_of(endpoint, operation)
            .map_err(|e| invalid(e.to_string()))?;
        let answer = self
            .call(request, OP_WAIT)
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(error) = answer.get("error") {
            let why = error.as_str().unwrap_or_default().to_owned();
            return Err(match answer.get("kind").and_then(Json::as_str) {
                Some("timeout") => OpError::Exchange {
                    address: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                    error: ExchangeError::NoResponse { waited: OP_WAIT },
                },
                Some("unknown-endpoint") => OpError::UnknownEndpoint {
                    endpoint: endpoint.to_owned(),
                },
                _ => invalid(why),
            });
        }
        let versions = self.shared.versions(endpoint);
        let schema = self.shared.registry.with_versions(&versions);
        let mut response = response_of(&answer, Body::of(operation), &schema)
            .map_err(|e| invalid(e.to_string()))?;
        if matches!(
            operation,
            Operation::Observe { .. } | Operation::ObserveComposite { .. }
        ) && response.is_success()
        {
            response.observation = self.shared.observation(&answer);
            if let Some(id) = response.observation {
                let (path, composite) = match operation {
                    Operation::Observe { path, .. } => (*path, false),
                    _ => (Lwm2mPath::Root, true),
                };
                self.shared
                    .observed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id.0, (path, composite));
            }
        }
        Ok(response)
    }

    fn registration(&self, endpoint: &str) -> Result<Option<RegistrationView>, AdapterError> {
        let answer = self
            .call(json!({"op": "registration", "endpoint": endpoint}), OP_WAIT)
            .map_err(|e| self.failed(e))?;
        if let Some(e) = answer.get("error") {
            return Err(self.failed(e.to_string()));
        }
        match answer.get("registration") {
            None | Some(Json::Null) => Ok(None),
            Some(r) => {
                let view = registration_of(r)
                    .ok_or_else(|| self.failed(format!("an unreadable registration: {r}")))?;
                self.shared
                    .versions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(
                        endpoint.to_owned(),
                        super::json::versions(&view.registration),
                    );
                Ok(Some(view))
            }
        }
    }

    fn subscribe(&self, sink: EventSink) -> Result<(), AdapterError> {
        self.sinks.add(sink);
        Ok(())
    }

    fn put_psk(&self, endpoint: &str, identity: &[u8], key: &[u8]) -> Result<(), AdapterError> {
        let identity = String::from_utf8(identity.to_vec())
            .map_err(|_| self.failed("PSK identities go to drivers as UTF-8 text"))?;
        let answer = self
            .call(
                json!({"op": "put-credentials", "endpoint": endpoint, "identity": identity, "key_hex": hex(key)}),
                OP_WAIT,
            )
            .map_err(|e| self.failed(e))?;
        match answer.get("error") {
            None => Ok(()),
            Some(e) => Err(self.failed(e.to_string())),
        }
    }

    fn put_bootstrap_config(
        &self,
        endpoint: &str,
        config: &BootstrapConfig,
    ) -> Result<(), AdapterError> {
        let config = serde_json::to_value(config).map_err(|e| self.failed(e.to_string()))?;
        self.bootstrap_config(endpoint, config)
    }

    fn remove_bootstrap_config(&self, endpoint: &str) -> Result<(), AdapterError> {
        self.bootstrap_config(endpoint, Json::Null)
    }

    fn remove_psk(&self, endpoint: &str) -> Result<(), AdapterError> {
        if self.info.offers(Feature::PutCredentials).is_err() {
            return Err(AdapterError::Lacks {
                adapter: NAME.to_owned(),
                feature: Feature::PutCredentials,
            });
        }
        let answer = self
            .call(
                json!({"op": "put-credentials", "endpoint": endpoint, "identity": null}),
                OP_WAIT,
            )
            .map_err(|e| self.failed(e))?;
        match answer.get("error") {
            None => Ok(()),
            Some(e) => Err(self.failed(e.to_string())),
        }
    }
}

impl ExecAdapter {
    fn bootstrap_config(&self, endpoint: &str, config: Json) -> Result<(), AdapterError> {
        if self.info.offers(Feature::BootstrapConfig).is_err() {
            return Err(AdapterError::Lacks {
                adapter: NAME.to_owned(),
                feature: Feature::BootstrapConfig,
            });
        }
        let answer = self
            .call(
                json!({"op": "bootstrap-config", "endpoint": endpoint, "config": config}),
                OP_WAIT,
            )
            .map_err(|e| self.failed(e))?;
        match answer.get("error") {
            None => Ok(()),
            Some(e) => Err(self.failed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            registry: Arc::new(Registry::embedded()),
            versions: Mutex::default(),
            observations: Mutex::default(),
            observed: Mutex::default(),
        }
    }

    #[test]
    fn raw_payloads_are_decoded_here_with_findings() {
        let s = shared();
        // TLV of /3/0/9 = 80 in two bytes where one suffices: a finding.
        let j = json!({"code": "2.05", "content_format": "tlv", "payload_hex": "c2090050"});
        let r = response_of(&j, Body::Node(Lwm2mPath::resource(3, 0, 9)), &*s.registry).unwrap();
        assert_eq!(r.code, (2, 5));
        assert!(r.content.is_some());
        assert!(!r.findings.is_empty(), "{r:?}");
        // A text value alone, typed by the registry.
        let j = json!({"code": "2.05", "value": "75"});
        let r = response_of(&j, Body::Node(Lwm2mPath::resource(3, 0, 9)), &*s.registry).unwrap();
        let Some(lwm2m_proto::server::Content::Node(n)) = r.content else {
            panic!()
        };
        assert_eq!(
            n.to_records(&Lwm2mPath::resource(3, 0, 9))[0].value,
            Some(lwm2m_proto::Value::Integer(75))
        );
        assert_eq!(
            response_of(&json!({}), Body::Nothing, &*s.registry),
            Err(ReadError::NoDriverCode { json: "{}".into() })
        );
        assert_eq!(
            response_of(
                &json!({"code": "2.05", "payload_hex": "zz", "content_format": 11542}),
                Body::Nothing,
                &*s.registry
            ),
            Err(ReadError::NotHex { text: "zz".into() })
        );
    }

    #[test]
    fn a_drivers_limits_make_operations_not_applicable() {
        let hello = json!({"limits": {"formats": ["text"], "levels": {"read": ["resource"]},
            "partial_write": false}});
        let l = Limits::from_hello(&hello);
        let read = |path, format| Operation::Read { path, format };
        assert!(l.check(&read(Lwm2mPath::resource(3, 0, 9), None)).is_ok());
        assert!(
            l.check(&read(
                Lwm2mPath::resource(3, 0, 9),
                Some(ContentFormat::Text)
            ))
            .is_ok()
        );
        let why = l
            .check(&read(
                Lwm2mPath::resource(3, 0, 9),
                Some(ContentFormat::Tlv),
            ))
            .unwrap_err();
        assert!(why.contains("tlv"), "{why}");
        let why = l
            .check(&read(Lwm2mPath::Object(ObjectId(3)), None))
            .unwrap_err();
        assert!(why.contains("resource"), "{why}");
        assert!(
            Limits::default()
                .check(&read(Lwm2mPath::Root, None))
                .is_ok()
        );
    }

    #[test]
    fn driver_events_become_server_events() {
        let s = shared();
        let e = event_of(
            &s,
            &json!({"event": "registration", "registration": {"endpoint": "c1", "lifetime": 60}}),
        );
        assert!(
            matches!(e, Some(ServerEvent::Registered { ref registration, .. }) if registration.lifetime == 60),
            "{e:?}"
        );
        let e = event_of(&s, &json!({"event": "deregistration", "endpoint": "c1"}));
        assert!(matches!(e, Some(ServerEvent::Deregistered { .. })), "{e:?}");
        let e = event_of(
            &s,
            &json!({"event": "notification", "endpoint": "c1", "observation": "o-7",
            "path": "/3/0/9", "value": "70"}),
        );
        let Some(ServerEvent::Notification {
            observation,
            response,
            ..
        }) = e
        else {
            panic!("{e:?}")
        };
        assert_eq!(
            s.observation(&json!({"observation": "o-7"})),
            Some(observation)
        );
        assert!(response.content.is_some());
        assert_eq!(event_of(&s, &json!({"reply": 1})), None);
    }
}
