//! `leshan+http://HOST:PORT[/PREFIX][?token=T]`: the Eclipse Leshan 2.x demo server's REST
//! API and event stream (`PREFIX/api/...`; our `serve` offers the same shapes under
//! `/leshan/api`, hence the prefix; a token, if given, goes as a bearer token).
//!
//! Shapes (Leshan demo server 2.x):
//! - registration: `{"endpoint", "registrationId", "address", "lwM2mVersion", "lifetime",
//!   "bindingMode", "queuemode", "sleeping", "rootPath", "objectLinks": [{"url",
//!   "attributes"}]}`;
//! - operations: `GET|PUT|POST|DELETE /api/clients/{ep}/{path}[/observe|/discover|
//!   /attributes]?format=TLV&timeout=S&replace=B`, `.../composite?paths=...`; answers
//!   `{"status": "CONTENT", "success", "content": {"kind": "singleResource" |
//!   "multiResource" | "resourceInstance" | "instance" | "obj", "id", "value" | "values" |
//!   "resources" | "instances"}}` (a composite: `content` maps paths to nodes; a Discover:
//!   `objectLinks`; a Create: `location`; a failure: `errormessage`); values as Leshan's
//!   `JacksonLwM2mNodeSerializer` writes them, by the node's `type`: INTEGER,
//!   UNSIGNED_INTEGER and FLOAT as strings, TIME in ms, OPAQUE as hex, OBJLNK as
//!   `{"objectId", "objectInstanceId"}` (`lwm2m_server::leshan` holds those shapes);
//! - failures before the client is asked: plain text, 400 `No registered client with id`
//!   (an unknown endpoint) or `Invalid request: REASON`; 504 `Request timeout`;
//! - events (`GET /api/event`): `REGISTRATION` and `DEREGISTRATION` (the registration),
//!   `UPDATED` (`{"registration", "update"}`), `SLEEPING`, `AWAKE` (`{"ep"}`),
//!   `NOTIFICATION` (`{"ep", "res", "kind", "val"}`), `SEND` (`{"ep", "val"}`);
//! - credentials: `PUT /api/security/clients` `{"endpoint", "tls": {"mode": "psk",
//!   "details": {"identity", "key"}}}`.
//!
//! Not offered: the decoder's findings and the answer's Content-Format (the API gives
//! neither), expiry and refusals as events, bootstrap configurations (Leshan's bootstrap
//! server is another program), a Read without a format (Leshan picks one).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lwm2m_proto::coap::ExchangeError;
use lwm2m_proto::codec::link::{ObjectLinkInfo, RegistrationLinks, parse_discover};
use lwm2m_proto::content::ContentFormat;
use lwm2m_proto::registration::Lwm2mVersion;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{
    Content, ObservationId, OpError, Operation, Registration, Response, ServerEvent,
};
use lwm2m_proto::{InstanceId, Lwm2mPath, Node, ObjectId, Record, ResourceValue, Schema, Value};
use lwm2m_server::leshan;
use serde_json::{Map, Value as Json, json};

use super::http::{ConnectError, HttpApi, HttpError, split_token};
use super::json::{Body, ReadError, content_from_records, records_from_nodes};
use super::{
    AdapterError, AdapterInfo, EventSink, Feature, RegistrationView, ServerAdapter, Sinks,
};

/// The adapter's name.
pub const NAME: &str = "leshan+http";

/// How long Leshan is asked to wait for a client.
const OP_TIMEOUT: Duration = Duration::from_secs(120);

/// Leshan's response status names and their CoAP codes.
const STATUSES: [(&str, (u8, u8)); 18] = [
    ("CREATED", (2, 1)),
    ("DELETED", (2, 2)),
    ("VALID", (2, 3)),
    ("CHANGED", (2, 4)),
    ("CONTENT", (2, 5)),
    ("CONTINUE", (2, 31)),
    ("BAD_REQUEST", (4, 0)),
    ("UNAUTHORIZED", (4, 1)),
    ("BAD_OPTION", (4, 2)),
    ("FORBIDDEN", (4, 3)),
    ("NOT_FOUND", (4, 4)),
    ("METHOD_NOT_ALLOWED", (4, 5)),
    ("NOT_ACCEPTABLE", (4, 6)),
    ("REQUEST_ENTITY_INCOMPLETE", (4, 8)),
    ("PRECONDITION_FAILED", (4, 12)),
    ("REQUEST_ENTITY_TOO_LARGE", (4, 13)),
    ("UNSUPPORTED_CONTENT_FORMAT", (4, 15)),
    ("INTERNAL_SERVER_ERROR", (5, 0)),
];

/// Leshan's name of a content format (`?format=`), if it has one.
pub fn format_name(f: ContentFormat) -> Option<&'static str> {
    Some(match f.canonical() {
        ContentFormat::Text => "TEXT",
        ContentFormat::Opaque => "OPAQUE",
        ContentFormat::Cbor => "CBOR",
        ContentFormat::Tlv => "TLV",
        ContentFormat::OmaJson => "JSON",
        ContentFormat::SenmlJson => "SENML_JSON",
        ContentFormat::SenmlCbor => "SENML_CBOR",
        ContentFormat::Lwm2mCbor => "LWM2M_CBOR",
        _ => return None,
    })
}

/// A CoAP code from a Leshan status name.
pub fn status_code(status: &str) -> Option<(u8, u8)> {
    STATUSES.iter().find(|(n, _)| *n == status).map(|(_, c)| *c)
}

/// Leshan's data type name of a value.
fn type_name(v: &Value) -> &'static str {
    leshan::type_name(v.data_type())
}

/// A value in Leshan's JSON: INTEGER, UNSIGNED_INTEGER and FLOAT as strings, OPAQUE as
/// hex, TIME in milliseconds, OBJLNK as `{"objectId", "objectInstanceId"}`.
fn value_json(v: &Value) -> Json {
    leshan::value_json(v)
}

/// A value in Leshan's JSON of the node's `type` as our JSON (what
/// [`records_from_nodes`] reads); without a type Leshan names, the JSON as it is.
fn our_value(node: &Json, value: &Json) -> Result<Json, lwm2m_server::leshan::NodeValueError> {
    let Some(ty) = node
        .get("type")
        .and_then(Json::as_str)
        .and_then(leshan::type_from_name)
    else {
        return Ok(value.clone());
    };
    if value.is_null() {
        return Ok(Json::Null);
    }
    leshan::parse_value(ty, value).map(|v| v.to_json())
}

/// A node in Leshan's JSON (`kind`, `id`, `value` / `values` / `resources` / `instances`).
pub fn node_json(path: &Lwm2mPath, node: &Node) -> Json {
    let id = path.ids().last().copied().unwrap_or(0);
    match node {
        Node::Resource(ResourceValue::Single(v)) => {
            json!({"kind": "singleResource", "id": id, "type": type_name(v), "value": value_json(v)})
        }
        Node::Resource(ResourceValue::Multiple(m)) => {
            let values: Map<String, Json> = m
                .iter()
                .map(|(k, v)| (k.0.to_string(), value_json(v)))
                .collect();
            let ty = m.values().next().map_or("NONE", type_name);
            json!({"kind": "multiResource", "id": id, "type": ty, "values": values})
        }
        Node::ResourceInstance(v) => {
            json!({"kind": "resourceInstance", "id": id, "type": type_name(v), "value": value_json(v)})
        }
        other => {
            // Instances and objects: their resources as records, grouped.
            let records = other.to_records(path);
            nodes_from_records(path, &records)
        }
    }
}

/// Records under `path` (an instance or object) as Leshan's nested JSON.
fn nodes_from_records(path: &Lwm2mPath, records: &[Record]) -> Json {
    let mut by_instance: BTreeMap<u16, BTreeMap<u16, Vec<&Record>>> = BTreeMap::new();
    for r in records {
        if let (Some(i), Some(res)) = (r.path.instance_id(), r.path.resource_id()) {
            by_instance
                .entry(i.0)
                .or_default()
                .entry(res.0)
                .or_default()
                .push(r);
        }
    }
    let instance = |i: u16, resources: &BTreeMap<u16, Vec<&Record>>| {
        let rs: Vec<Json> = resources
            .iter()
            .map(|(id, recs)| {
                let multiple = recs.iter().any(|r| r.path.resource_instance_id().is_some());
                let value = |r: &Record| r.value.as_ref().map(value_json);
                let ty = recs
                    .iter()
                    .find_map(|r| r.value.as_ref())
                    .map_or("NONE", type_name);
                if multiple {
                    let values: Map<String, Json> = recs
                        .iter()
                        .filter_map(|r| {
                            Some((r.path.resource_instance_id()?.0.to_string(), value(r)?))
                        })
                        .collect();
                    json!({"kind": "multiResource", "id": id, "type": ty, "values": values})
                } else {
                    json!({"kind": "singleResource", "id": id, "type": ty,
                        "value": recs.first().and_then(|r| value(r))})
                }
            })
            .collect();
        json!({"kind": "instance", "id": i, "resources": rs})
    };
    match path {
        Lwm2mPath::Instance(_, i) => {
            instance(i.0, by_instance.get(&i.0).unwrap_or(&BTreeMap::new()))
        }
        _ => {
            let instances: Vec<Json> = by_instance.iter().map(|(i, rs)| instance(*i, rs)).collect();
            json!({"kind": "obj", "id": path.object_id().map_or(0, |o| o.0), "instances": instances})
        }
    }
}

/// Leshan's node JSON at `path` as our `[{"path", "value"}]` nodes (values converted from
/// Leshan's shapes by the node's `type`); `Err` names a value that is not of its type.
pub fn flatten(path: &Lwm2mPath, j: &Json, out: &mut Vec<Json>) -> Result<(), ReadError> {
    let kind = j.get("kind").and_then(Json::as_str).unwrap_or_default();
    let id = j
        .get("id")
        .and_then(Json::as_u64)
        .and_then(|i| u16::try_from(i).ok());
    // The node's own path: `path` itself, or its child `id` when `path` is its parent.
    let own = |level: usize| match id {
        Some(id) if path.ids().len() < level => path.child(id).unwrap_or(*path),
        _ => *path,
    };
    match kind {
        "singleResource" => {
            let p = own(3);
            let v = our_value(j, j.get("value").unwrap_or(&Json::Null))
                .map_err(|source| ReadError::Value { path: p, source })?;
            out.push(json!({"path": p.to_string(), "value": v}));
        }
        "resourceInstance" => {
            let p = own(4);
            let v = our_value(j, j.get("value").unwrap_or(&Json::Null))
                .map_err(|source| ReadError::Value { path: p, source })?;
            out.push(json!({"path": p.to_string(), "value": v}));
        }
        "multiResource" => {
            let p = own(3);
            for (k, v) in j
                .get("values")
                .and_then(Json::as_object)
                .into_iter()
                .flatten()
            {
                if let Some(ri) = k.parse::<u16>().ok().and_then(|ri| p.child(ri)) {
                    let v =
                        our_value(j, v).map_err(|source| ReadError::Value { path: ri, source })?;
                    out.push(json!({"path": ri.to_string(), "value": v}));
                }
            }
        }
        "instance" => {
            let p = own(2);
            for r in j
                .get("resources")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                flatten(&p, r, out)?;
            }
        }
        "obj" => {
            let p = own(1);
            for i in j
                .get("instances")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                flatten(&p, i, out)?;
            }
        }
        "root" => {
            for o in j
                .get("objects")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                flatten(&Lwm2mPath::Root, o, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A Leshan operation answer as a [`Response`].
pub fn response_from(
    j: &Json,
    body: Body,
    target: &Lwm2mPath,
    schema: &dyn Schema,
) -> Result<Response, ReadError> {
    let status = j
        .get("status")
        .and_then(Json::as_str)
        .ok_or_else(|| ReadError::NoStatus {
            json: j.to_string(),
        })?;
    let code = status_code(status).ok_or_else(|| ReadError::UnknownStatus {
        status: status.to_owned(),
    })?;
    let mut r = Response {
        code,
        ..Response::empty()
    };
    match (body, j.get("content")) {
        (Body::Records, Some(Json::Object(m))) => {
            let mut nodes = Vec::new();
            for (p, node) in m {
                let path: Lwm2mPath = p.parse().map_err(|source| ReadError::Path {
                    text: p.clone(),
                    source,
                })?;
                flatten(&path, node, &mut nodes)?;
            }
            let records = records_from_nodes(schema, &Json::Array(nodes), &mut r.findings)?;
            r.content = content_from_records(body, records, schema)?;
        }
        (Body::Node(_), Some(node @ Json::Object(_))) => {
            let mut nodes = Vec::new();
            flatten(target, node, &mut nodes)?;
            let records = records_from_nodes(schema, &Json::Array(nodes), &mut r.findings)?;
            r.content = content_from_records(body, records, schema)?;
        }
        _ => {}
    }
    if let (Body::Links, Some(Json::Array(links))) = (body, j.get("objectLinks")) {
        let text: Vec<String> = links.iter().filter_map(link_text).collect();
        let entries = parse_discover(&text.join(","))?;
        r.content = Some(Content::Links(entries));
    }
    if let Some(l) = j.get("location").and_then(Json::as_str) {
        r.location = l.parse().ok();
    }
    r.diagnostic = j
        .get("errormessage")
        .and_then(Json::as_str)
        .map(str::to_owned);
    Ok(r)
}

/// `{"url": "/3/0", "attributes": {"pmin": "10"}}` as link-format text.
fn link_text(l: &Json) -> Option<String> {
    let mut s = format!("<{}>", l.get("url")?.as_str()?);
    for (k, v) in l
        .get("attributes")
        .and_then(Json::as_object)
        .into_iter()
        .flatten()
    {
        match v {
            Json::Null => s.push_str(&format!(";{k}")),
            Json::String(v) => s.push_str(&format!(";{k}={v}")),
            v => s.push_str(&format!(";{k}={v}")),
        }
    }
    Some(s)
}

/// A Leshan registration as ours.
pub fn registration_from(j: &Json) -> Result<RegistrationView, ReadError> {
    let s = |k: &str| j.get(k).and_then(Json::as_str);
    let endpoint = s("endpoint").ok_or_else(|| ReadError::NoEndpoint {
        json: j.to_string(),
    })?;
    let address = s("address")
        .map(|a| a.trim_start_matches('/'))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut objects: BTreeMap<ObjectId, ObjectLinkInfo> = BTreeMap::new();
    let root = s("rootPath")
        .unwrap_or("/")
        .trim_end_matches('/')
        .to_owned();
    for link in j
        .get("objectLinks")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let Some(url) = link.get("url").and_then(Json::as_str) else {
            continue;
        };
        let url = url.strip_prefix(root.as_str()).unwrap_or(url);
        let Ok(path) = url.parse::<Lwm2mPath>() else {
            continue;
        };
        let Some(o) = path.object_id() else { continue };
        let info = objects.entry(o).or_default();
        if let Some(i) = path.instance_id() {
            info.instances.insert(i);
        }
        if let Some(v) = link
            .get("attributes")
            .and_then(|a| a.get("ver"))
            .and_then(Json::as_str)
        {
            info.version = Some(v.to_owned());
        }
    }
    let binding = match j.get("bindingMode") {
        Some(Json::Array(b)) => b.iter().filter_map(Json::as_str).collect::<String>(),
        Some(Json::String(b)) => b.clone(),
        _ => "U".to_owned(),
    };
    let now = Instant::now();
    Ok(RegistrationView {
        registration: Registration {
            id: s("registrationId").unwrap_or_default().to_owned(),
            endpoint: endpoint.to_owned(),
            version: s("lwM2mVersion")
                .and_then(Lwm2mVersion::parse)
                .unwrap_or(Lwm2mVersion::V1_0),
            lifetime: j
                .get("lifetime")
                .and_then(Json::as_u64)
                .and_then(|l| u32::try_from(l).ok())
                .unwrap_or(0),
            binding,
            queue_mode: j.get("queuemode").and_then(Json::as_bool).unwrap_or(false),
            sms: s("smsNumber").map(str::to_owned),
            address,
            links: RegistrationLinks {
                alternate_path: if root.is_empty() { "/".into() } else { root },
                content_formats: Vec::new(),
                objects,
            },
            registered_at: now,
            last_update: now,
            findings: Vec::new(),
            link_notes: Vec::new(),
        },
        sleeping: j.get("sleeping").and_then(Json::as_bool),
    })
}

/// Observations by endpoint and path (Leshan names them by path), and our ids.
#[derive(Debug, Default)]
struct Observed {
    ids: HashMap<(String, Vec<Lwm2mPath>), u64>,
    paths: HashMap<u64, (String, Vec<Lwm2mPath>)>,
    next: u64,
}

impl Observed {
    fn id(&mut self, endpoint: &str, paths: &[Lwm2mPath]) -> ObservationId {
        let key = (endpoint.to_owned(), paths.to_vec());
        if let Some(id) = self.ids.get(&key) {
            return ObservationId(*id);
        }
        self.next += 1;
        self.ids.insert(key.clone(), self.next);
        self.paths.insert(self.next, key);
        ObservationId(self.next)
    }
}

/// The Leshan demo server as a server adapter (see the module documentation).
pub struct Leshan {
    api: HttpApi,
    registry: Arc<Registry>,
    info: AdapterInfo,
    sinks: Arc<Sinks>,
    observed: Arc<Mutex<Observed>>,
}

impl std::fmt::Debug for Leshan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leshan")
            .field("base", &self.api.base)
            .finish_non_exhaustive()
    }
}

/// One of Leshan's events as ours.
fn event_from(
    name: &str,
    data: &Json,
    registry: &Registry,
    versions_of: &dyn Fn(&str) -> BTreeMap<ObjectId, String>,
    observed: &Mutex<Observed>,
) -> Option<ServerEvent> {
    let ep = || data.get("ep").and_then(Json::as_str).map(str::to_owned);
    Some(match name {
        "REGISTRATION" => ServerEvent::Registered {
            registration: registration_from(data).ok()?.registration,
            replaced: None,
        },
        "UPDATED" => ServerEvent::Updated {
            registration: registration_from(data.get("registration")?)
                .ok()?
                .registration,
            previous_address: None,
        },
        "DEREGISTRATION" => ServerEvent::Deregistered {
            registration: registration_from(data).ok()?.registration,
        },
        "SLEEPING" => ServerEvent::Sleeping { endpoint: ep()? },
        "AWAKE" => ServerEvent::Awake { endpoint: ep()? },
        "NOTIFICATION" => {
            let endpoint = ep()?;
            let versions = versions_of(&endpoint);
            let schema = registry.with_versions(&versions);
            let composite = data.get("kind").and_then(Json::as_str) == Some("composite");
            let paths: Vec<Lwm2mPath> = if composite {
                data.get("val")?
                    .as_object()?
                    .keys()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            } else {
                vec![data.get("res")?.as_str()?.parse().ok()?]
            };
            let path = *paths.first()?;
            let observation = {
                let mut o = observed.lock().unwrap_or_else(PoisonError::into_inner);
                // A composite observation is known by the paths it was started with.
                let found = o
                    .paths
                    .iter()
                    .find(|(_, (e, ps))| {
                        *e == endpoint
                            && if composite {
                                paths.iter().all(|p| ps.contains(p))
                            } else {
                                ps == &paths
                            }
                    })
                    .map(|(id, _)| ObservationId(*id));
                found.unwrap_or_else(|| o.id(&endpoint, &paths))
            };
            let body = if composite {
                Body::Records
            } else {
                Body::Node(path)
            };
            let answer = json!({"status": "CONTENT", "content": data.get("val")});
            let response = response_from(&answer, body, &path, &schema).ok()?;
            ServerEvent::Notification {
                observation,
                endpoint,
                path,
                response,
                seq: 0,
            }
        }
        "SEND" => {
            let endpoint = ep()?;
            let versions = versions_of(&endpoint);
            let schema = registry.with_versions(&versions);
            let answer = json!({"status": "CHANGED", "content": data.get("val")});
            let response = response_from(&answer, Body::Records, &Lwm2mPath::Root, &schema).ok()?;
            let Some(Content::Records(records)) = response.content else {
                return None;
            };
            ServerEvent::Send {
                endpoint,
                records,
                findings: Vec::new(),
            }
        }
        _ => return None,
    })
}

impl Leshan {
    /// Connects to the demo server at `rest` (`HOST:PORT[/PREFIX][?token=T]`) and
    /// subscribes to its events; `Err` says why not.
    pub fn connect(rest: &str, registry: Arc<Registry>) -> Result<Self, ConnectError> {
        let (location, token) = split_token(rest);
        if location.is_empty() {
            return Err(ConnectError::Authority {
                adapter: NAME,
                rest: rest.to_owned(),
            });
        }
        let api = HttpApi::new(
            NAME,
            format!("http://{location}"),
            token,
            OP_TIMEOUT + Duration::from_secs(10),
        );
        let (status, body) = api.call("GET", "/api/clients", None)?;
        if status != 200 {
            return Err(ConnectError::Status {
                adapter: NAME,
                base: api.base.clone(),
                status,
                body: body.to_string(),
            });
        }
        let features: BTreeSet<Feature> = Feature::all()
            .into_iter()
            .filter(|f| {
                !matches!(
                    f,
                    Feature::Findings
                        | Feature::RegistrationFindings
                        | Feature::ResponseFormat
                        | Feature::Expiry
                        | Feature::Refusals
                        | Feature::BootstrapConfig
                        | Feature::SecurityEvents
                )
            })
            .collect();
        let adapter = Self {
            api,
            registry,
            info: AdapterInfo {
                adapter: NAME.to_owned(),
                product: "Eclipse Leshan demo server (API)".to_owned(),
                version: "unknown (the API does not say)".to_owned(),
                features,
            },
            sinks: Arc::new(Sinks::default()),
            observed: Arc::default(),
        };
        adapter.start_events()?;
        Ok(adapter)
    }

    fn start_events(&self) -> Result<(), HttpError> {
        let (sinks, registry, observed) = (
            self.sinks.clone(),
            self.registry.clone(),
            self.observed.clone(),
        );
        self.api.start_events(
            "leshan events",
            |data| registration_from(data.get("registration").unwrap_or(data)).ok(),
            move |name, data, versions_of| {
                if let Some(e) = event_from(name, data, &registry, versions_of, &observed) {
                    sinks.deliver(&e);
                }
            },
        )
    }

    fn versions_for(&self, endpoint: &str) -> BTreeMap<ObjectId, String> {
        self.api
            .versions_for(endpoint, || self.registration(endpoint).ok().flatten())
    }
}

/// The prefix of Leshan's answer to a request it refuses (`handleException`).
const INVALID_REQUEST: &str = "Invalid request: ";

/// Whether a Leshan error body says the endpoint is not registered (its servlets write
/// "no registered client with id '..'" or "No registered client ..").
fn unknown_client(body: &Json) -> bool {
    body.as_str().is_some_and(|t| {
        t.to_ascii_lowercase()
            .starts_with("no registered client with id")
    })
}

fn format_query(f: Option<ContentFormat>) -> String {
    f.and_then(format_name)
        .map_or(String::new(), |n| format!("&format={n}"))
}

fn paths_query(paths: &[Lwm2mPath]) -> String {
    let list: Vec<String> = paths.iter().map(ToString::to_string).collect();
    format!("&paths={}", list.join(","))
}

impl ServerAdapter for Leshan {
    fn info(&self) -> &AdapterInfo {
        &self.info
    }

    fn check(&self, operation: &Operation) -> Result<(), String> {
        let format = super::requested_format(operation);
        match format {
            Some(f) if format_name(f).is_none() => Err(format!(
                "the server adapter {NAME} has no name for {} in Leshan's API",
                f.name()
            )),
            _ => Ok(()),
        }
    }

    fn request(&self, endpoint: &str, operation: &Operation) -> Result<Response, OpError> {
        let invalid = |reason: String| OpError::Invalid {
            reason: format!("{NAME}: {reason}"),
        };
        let ep = endpoint;
        let t = format!("?timeout={}", OP_TIMEOUT.as_secs());
        let mut target = Lwm2mPath::Root;
        let (method, route, body): (&str, String, Option<Json>) = match operation {
            Operation::Read { path, format } => {
                target = *path;
                (
                    "GET",
                    format!("/api/clients/{ep}{path}{t}{}", format_query(*format)),
                    None,
                )
            }
            Operation::Discover { path } => {
                ("GET", format!("/api/clients/{ep}{path}/discover{t}"), None)
            }
            Operation::Write {
                path,
                node,
                replace,
                format,
            } => (
                "PUT",
                format!(
                    "/api/clients/{ep}{path}{t}&replace={replace}{}",
                    format_query(*format)
                ),
                Some(node_json(path, node)),
            ),
            Operation::WriteAttributes { path, attributes } => {
                let q = attributes.to_query();
                let q = if q.is_empty() {
                    String::new()
                } else {
                    format!("&{}", q.join("&"))
                };
                (
                    "PUT",
                    format!("/api/clients/{ep}{path}/attributes{t}{q}"),
                    None,
                )
            }
            Operation::Execute { path, args } => (
                "POST",
                format!("/api/clients/{ep}{path}{t}"),
                args.as_ref().map(|a| Json::String(a.clone())),
            ),
            Operation::Create {
                object,
                instance,
                resources,
                format,
            } => {
                let base = Lwm2mPath::Instance(*object, instance.unwrap_or(InstanceId(0)));
                let mut node = node_json(&base, &Node::Instance(resources.clone()));
                if instance.is_none()
                    && let Some(m) = node.as_object_mut()
                {
                    m.remove("id");
                }
                (
                    "POST",
                    format!("/api/clients/{ep}/{}{t}{}", object.0, format_query(*format)),
                    Some(node),
                )
            }
            Operation::Delete { path } => ("DELETE", format!("/api/clients/{ep}{path}{t}"), None),
            Operation::ReadComposite { paths, format } => (
                "GET",
                format!(
                    "/api/clients/{ep}/composite{t}{}{}",
                    paths_query(paths),
                    format_query(*format)
                ),
                None,
            ),
            Operation::WriteComposite { records, format } => {
                let mut m = Map::new();
                for r in records {
                    if let Some(v) = &r.value {
                        let node = match r.path {
                            Lwm2mPath::ResourceInstance(..) => Node::ResourceInstance(v.clone()),
                            _ => Node::Resource(ResourceValue::Single(v.clone())),
                        };
                        m.insert(r.path.to_string(), node_json(&r.path, &node));
                    }
                }
                (
                    "PUT",
                    format!("/api/clients/{ep}/composite{t}{}", format_query(*format)),
                    Some(Json::Object(m)),
                )
            }
            Operation::Observe { path, format } => {
                target = *path;
                (
                    "POST",
                    format!(
                        "/api/clients/{ep}{path}/observe{t}{}",
                        format_query(*format)
                    ),
                    None,
                )
            }
            Operation::ObserveComposite { paths, format } => (
                "POST",
                format!(
                    "/api/clients/{ep}/composite/observe{t}{}{}",
                    paths_query(paths),
                    format_query(*format)
                ),
                None,
            ),
            Operation::CancelObservation {
                observation,
                active,
            } => {
                let held = self
                    .observed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .paths
                    .get(&observation.0)
                    .cloned();
                let Some((_, paths)) = held else {
                    return Err(invalid(format!(
                        "observation {} was not started through this adapter",
                        observation.0
                    )));
                };
                let route = match paths.as_slice() {
                    [one] => format!("/api/clients/{ep}{one}/observe{t}"),
                    many => format!(
                        "/api/clients/{ep}/composite/observe{t}{}",
                        paths_query(many)
                    ),
                };
                ("DELETE", format!("{route}&active={active}"), None)
            }
            other => return Err(invalid(format!("{} is not mapped", other.name()))),
        };
        let v = self.versions_for(ep);
        let schema = self.registry.with_versions(&v);
        let (status, j) = self
            .api
            .call(method, &route, body.as_ref())
            .map_err(|e| invalid(e.to_string()))?;
        match status {
            200 | 201 => {}
            // Leshan answers an unknown endpoint with 400 "No registered client with id".
            _ if status == 404 || (status == 400 && unknown_client(&j)) => {
                return Err(OpError::UnknownEndpoint {
                    endpoint: ep.to_owned(),
                });
            }
            // Leshan's `InvalidRequestException`: 400 "Invalid request: REASON" (the
            // server refused before asking the client, e.g. a composite for a 1.0 client).
            400 if j.as_str().is_some_and(|t| t.starts_with(INVALID_REQUEST)) => {
                let text = j.as_str().unwrap_or_default();
                let reason = text.trim_start_matches(INVALID_REQUEST);
                let reason = reason.trim_start_matches("invalid operation: ");
                return Err(OpError::Invalid {
                    reason: reason.to_owned(),
                });
            }
            504 => {
                return Err(OpError::Exchange {
                    address: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                    error: ExchangeError::NoResponse { waited: OP_TIMEOUT },
                });
            }
            s => return Err(invalid(format!("{method} {route} answered {s}: {j}"))),
        }
        if let Operation::CancelObservation { active: false, .. } = operation {
            return Ok(Response::empty());
        }
        let mut response = response_from(&j, Body::of(operation), &target, &schema)
            .map_err(|e| invalid(e.to_string()))?;
        let observed = match operation {
            Operation::Observe { path, .. } => Some(vec![*path]),
            Operation::ObserveComposite { paths, .. } => Some(paths.clone()),
            _ => None,
        };
        if let Some(paths) = observed
            && response.is_success()
        {
            response.observation = Some(
                self.observed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .id(ep, &paths),
            );
        }
        Ok(response)
    }

    fn registration(&self, endpoint: &str) -> Result<Option<RegistrationView>, AdapterError> {
        // Leshan answers an unknown endpoint with 400 "No registered client with id".
        self.api
            .registration(endpoint, registration_from, |status, j| {
                status == 404 || (status == 400 && unknown_client(j))
            })
    }

    fn subscribe(&self, sink: EventSink) -> Result<(), AdapterError> {
        self.sinks.add(sink);
        Ok(())
    }

    fn put_psk(&self, endpoint: &str, identity: &[u8], key: &[u8]) -> Result<(), AdapterError> {
        let identity = String::from_utf8(identity.to_vec())
            .map_err(|_| self.api.failed("Leshan takes UTF-8 PSK identities"))?;
        let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let body = json!({"endpoint": endpoint, "tls": {"mode": "psk",
            "details": {"identity": identity, "key": key}}});
        self.api.put("/api/security/clients", &body)
    }

    fn remove_psk(&self, endpoint: &str) -> Result<(), AdapterError> {
        let route = format!("/api/security/clients/{endpoint}");
        self.api.delete(&route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::embedded()
    }

    /// A Leshan 2.x registration, as its demo server's API shows one.
    const REGISTRATION: &str = r#"{"endpoint":"ets-dev","registrationId":"k3Tq2","registrationDate":"2026-12-06T01:00:00Z",
      "lastUpdate":"2026-12-06T01:00:00Z","address":"127.0.0.1:40001","lwM2mVersion":"1.1","lifetime":86400,
      "bindingMode":["U"],"rootPath":"/","objectLinks":[{"url":"/","attributes":{"rt":"\"oma.lwm2m\"","ct":"110"}},
      {"url":"/1/0","attributes":{}},{"url":"/3","attributes":{"ver":"1.1"}},{"url":"/3/0","attributes":{}}],
      "secure":false,"additionalRegistrationAttributes":{},"queuemode":false,"sleeping":false}"#;

    #[test]
    fn a_leshan_registration_reads_as_ours() {
        let v = registration_from(&serde_json::from_str(REGISTRATION).unwrap()).unwrap();
        let r = v.registration;
        assert_eq!((r.endpoint.as_str(), r.id.as_str()), ("ets-dev", "k3Tq2"));
        assert_eq!(r.version, Lwm2mVersion::parse("1.1").unwrap());
        assert_eq!((r.lifetime, r.binding.as_str()), (86400, "U"));
        assert_eq!(r.address.port(), 40001);
        let device = &r.links.objects[&ObjectId(3)];
        assert_eq!(device.version.as_deref(), Some("1.1"));
        assert!(device.instances.contains(&InstanceId(0)));
        assert_eq!(v.sleeping, Some(false));
    }

    #[test]
    fn leshan_answers_become_responses() {
        let reg = registry();
        let instance = json!({"status": "CONTENT", "valid": true, "success": true, "failure": false,
            "content": {"kind": "instance", "id": 0, "resources": [
                {"kind": "singleResource", "id": 0, "type": "STRING", "value": "Open Mobile Alliance"},
                {"kind": "multiResource", "id": 11, "type": "INTEGER", "values": {"0": "0"}},
                {"kind": "singleResource", "id": 9, "type": "INTEGER", "value": "80"}]}});
        let path = Lwm2mPath::Instance(ObjectId(3), InstanceId(0));
        let r = response_from(&instance, Body::Node(path), &path, &reg).unwrap();
        assert_eq!(r.code, (2, 5));
        let Some(Content::Node(node)) = &r.content else {
            panic!("{r:?}")
        };
        let recs = node.to_records(&path);
        assert!(
            recs.iter()
                .any(|r| r.path == Lwm2mPath::resource(3, 0, 9)
                    && r.value == Some(Value::Integer(80))),
            "{recs:?}"
        );
        assert!(
            recs.iter().any(|r| r.path.resource_instance_id().is_some()),
            "{recs:?}"
        );
        let single = json!({"status": "CONTENT", "content": {"kind": "singleResource", "id": 1,
            "type": "STRING", "value": "Lightweight M2M Client"}});
        let p = Lwm2mPath::resource(3, 0, 1);
        assert!(
            response_from(&single, Body::Node(p), &p, &reg)
                .unwrap()
                .content
                .is_some()
        );
        let refused = json!({"status": "METHOD_NOT_ALLOWED", "success": false});
        assert_eq!(
            response_from(&refused, Body::Nothing, &p, &reg)
                .unwrap()
                .code,
            (4, 5)
        );
        let composite = json!({"status": "CONTENT", "content": {
            "/3/0/9": {"kind": "singleResource", "id": 9, "type": "INTEGER", "value": "75"},
            "/1/0/1": {"kind": "singleResource", "id": 1, "type": "INTEGER", "value": "300"}}});
        let r = response_from(&composite, Body::Records, &Lwm2mPath::Root, &reg).unwrap();
        let Some(Content::Records(recs)) = r.content else {
            panic!()
        };
        assert_eq!(recs.len(), 2);
        let discover = json!({"status": "CONTENT", "objectLinks": [
            {"url": "/3/0", "attributes": {}}, {"url": "/3/0/9", "attributes": {"pmin": "10"}}]});
        let r = response_from(&discover, Body::Links, &p, &reg).unwrap();
        let Some(Content::Links(links)) = r.content else {
            panic!()
        };
        assert_eq!(links.len(), 2);
        assert_eq!(
            response_from(&json!({"status": "TEAPOT"}), Body::Nothing, &p, &reg),
            Err(ReadError::UnknownStatus {
                status: "TEAPOT".into()
            })
        );
    }

    #[test]
    fn nodes_go_out_in_leshans_shapes_and_come_back() {
        let reg = registry();
        let path = Lwm2mPath::Instance(ObjectId(3), InstanceId(0));
        let answer = json!({"status": "CONTENT", "content": {"kind": "instance", "id": 0,
            "resources": [{"kind": "singleResource", "id": 14, "type": "STRING", "value": "+02"},
                          {"kind": "multiResource", "id": 7, "type": "INTEGER", "values": {"0": "3800", "1": "5000"}}]}});
        let Some(Content::Node(node)) = response_from(&answer, Body::Node(path), &path, &reg)
            .unwrap()
            .content
        else {
            panic!()
        };
        let out = node_json(&path, &node);
        assert_eq!(out["kind"], "instance");
        assert_eq!(out["resources"].as_array().map(Vec::len), Some(2));
        let back = response_from(
            &json!({"status": "CONTENT", "content": out}),
            Body::Node(path),
            &path,
            &reg,
        )
        .unwrap();
        assert_eq!(back.content, Some(Content::Node(node)));
        let one = node_json(
            &Lwm2mPath::resource(3, 0, 14),
            &Node::Resource(ResourceValue::Single(Value::String("+01".into()))),
        );
        assert_eq!(
            one,
            json!({"kind": "singleResource", "id": 14, "type": "STRING", "value": "+01"})
        );
        assert_eq!(format_name(ContentFormat::SenmlCbor), Some("SENML_CBOR"));
        assert_eq!(status_code("CHANGED"), Some((2, 4)));
    }

    /// Each type as Leshan 2.x's `JacksonLwM2mNodeSerializer` writes it, read back; a
    /// number for an INTEGER is tolerated (as its deserializer does), a string for a TIME
    /// or a BOOLEAN is not.
    #[test]
    fn every_type_goes_out_in_leshans_shape() {
        use lwm2m_proto::value::ObjectLink;
        let cases = [
            (Value::Integer(-5), json!("-5"), "INTEGER"),
            (Value::UnsignedInteger(7), json!("7"), "UNSIGNED_INTEGER"),
            (Value::Float(21.5), json!("21.5"), "FLOAT"),
            (Value::Boolean(true), json!(true), "BOOLEAN"),
            (
                Value::Time(1_700_000_000),
                json!(1_700_000_000_000_i64),
                "TIME",
            ),
            (Value::Opaque(vec![0xca, 0xfe]), json!("cafe"), "OPAQUE"),
            (
                Value::Objlnk(ObjectLink {
                    object: 3,
                    instance: 0,
                }),
                json!({"objectId": 3, "objectInstanceId": 0}),
                "OBJLNK",
            ),
            (Value::String("x".into()), json!("x"), "STRING"),
            (Value::Corelnk("</3/0>".into()), json!("</3/0>"), "CORELINK"),
        ];
        for (v, shape, ty) in cases {
            assert_eq!(value_json(&v), shape, "{v:?}");
            assert_eq!(type_name(&v), ty);
            let node = json!({"kind": "singleResource", "id": 1, "type": ty, "value": shape});
            assert_eq!(our_value(&node, &shape), Ok(v.to_json()), "{v:?}");
        }
        let int = json!({"type": "INTEGER"});
        assert_eq!(our_value(&int, &json!(80)), Ok(json!(80)));
        assert!(our_value(&int, &json!("eighty")).is_err());
        assert!(our_value(&json!({"type": "BOOLEAN"}), &json!(1)).is_err());
        // Refused values name their path.
        let mut out = Vec::new();
        let bad = json!({"kind": "singleResource", "id": 9, "type": "INTEGER", "value": "x"});
        let e = flatten(&Lwm2mPath::instance(3, 0), &bad, &mut out).unwrap_err();
        assert!(
            matches!(e, ReadError::Value { path, .. } if path == Lwm2mPath::resource(3, 0, 9)),
            "{e}"
        );
        assert_eq!(e.to_string(), "/3/0/9: \"x\" is not a valid INTEGER value");
    }

    #[test]
    fn a_root_node_and_leshans_plain_text_errors_are_understood() {
        let reg = registry();
        let root = json!({"status": "CONTENT", "content": {"/": {"kind": "root", "objects": [
            {"kind": "obj", "id": 3, "instances": [{"kind": "instance", "id": 0, "resources": [
                {"kind": "singleResource", "id": 9, "type": "INTEGER", "value": "80"}]}]}]}}});
        let r = response_from(&root, Body::Records, &Lwm2mPath::Root, &reg).unwrap();
        let Some(Content::Records(recs)) = r.content else {
            panic!()
        };
        assert_eq!(recs[0].path, Lwm2mPath::resource(3, 0, 9));
        assert_eq!(recs[0].value, Some(Value::Integer(80)));
        let failed = json!({"status": "BAD_REQUEST", "errormessage": "no such format"});
        let r = response_from(&failed, Body::Nothing, &Lwm2mPath::Root, &reg).unwrap();
        assert_eq!(r.diagnostic.as_deref(), Some("no such format"));
        assert!(unknown_client(&json!("no registered client with id 'x'")));
        assert!(unknown_client(&json!("No registered client with id 'x'")));
        assert!(!unknown_client(&json!("Invalid request: x")));
        assert_eq!(status_code("CHANGED"), Some((2, 4)));
    }

    #[test]
    fn leshan_events_become_ours() {
        let reg = registry();
        let none = |_: &str| BTreeMap::new();
        let observed = Mutex::new(Observed::default());
        let registration: Json = serde_json::from_str(REGISTRATION).unwrap();
        let e = event_from("REGISTRATION", &registration, &reg, &none, &observed);
        assert!(matches!(e, Some(ServerEvent::Registered { .. })), "{e:?}");
        let e = event_from(
            "UPDATED",
            &json!({"registration": registration, "update": {}}),
            &reg,
            &none,
            &observed,
        );
        assert!(matches!(e, Some(ServerEvent::Updated { .. })), "{e:?}");
        let id = observed
            .lock()
            .unwrap()
            .id("ets-dev", &[Lwm2mPath::resource(3, 0, 9)]);
        let n = json!({"ep": "ets-dev", "kind": "single", "res": "/3/0/9",
            "val": {"kind": "singleResource", "id": 9, "type": "INTEGER", "value": "70"}});
        let Some(ServerEvent::Notification {
            observation,
            response,
            ..
        }) = event_from("NOTIFICATION", &n, &reg, &none, &observed)
        else {
            panic!()
        };
        assert_eq!(observation, id);
        assert!(response.content.is_some());
        let s = json!({"ep": "ets-dev", "val": {"/3/0/9": {"kind": "singleResource", "id": 9, "type": "INTEGER", "value": "75"}}});
        let Some(ServerEvent::Send { records, .. }) =
            event_from("SEND", &s, &reg, &none, &observed)
        else {
            panic!()
        };
        assert_eq!(records[0].value, Some(Value::Integer(75)));
        assert!(event_from("SLEEPING", &json!({"ep": "x"}), &reg, &none, &observed).is_some());
        assert!(event_from("COAPLOG", &json!({}), &reg, &none, &observed).is_none());
    }
}
