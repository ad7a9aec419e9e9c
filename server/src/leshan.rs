//! A Leshan-compatible REST API under `/leshan/api/`: the routes and JSON shapes of Eclipse
//! Leshan 2.x's demo server (`/api/` there), so that a script written for Leshan changes
//! only its base URL. Same bearer token as [`crate::rest`] (the routes are merged into its
//! router, behind its authentication).
//!
//! | method | route | what |
//! |---|---|---|
//! | GET | `/leshan/api/clients` | every registration (Leshan's registration JSON) |
//! | GET | `/leshan/api/clients/{ep}` | one registration (400 + text when unknown, as Leshan) |
//! | GET | `/leshan/api/clients/{ep}/{path}` | Read (`?format=TLV`, `?timeout=` seconds) |
//! | GET | `/leshan/api/clients/{ep}/{path}/discover` | Discover (`objectLinks`) |
//! | GET | `/leshan/api/clients/{ep}/composite?paths=..` | Read-Composite (`nodeformat`) |
//! | PUT | `/leshan/api/clients/{ep}/{path}` | Write of a node body (`?replace=false`) |
//! | PUT | `/leshan/api/clients/{ep}/{path}/attributes?pmin=..` | Write-Attributes |
//! | PUT | `/leshan/api/clients/{ep}/composite` | Write-Composite (`{"/3/0/14": node}`) |
//! | POST | `/leshan/api/clients/{ep}/{O}` | Create (an `instance` node) |
//! | POST | `/leshan/api/clients/{ep}/{O}/{I}/{R}` | Execute (arguments as the text body) |
//! | POST/DELETE | `/leshan/api/clients/{ep}/{path}/observe` | Observe / cancel (`?active`) |
//! | POST/DELETE | `/leshan/api/clients/{ep}/composite/observe?paths=..` | Observe-Composite / cancel |
//! | DELETE | `/leshan/api/clients/{ep}/{path}` | Delete |
//! | GET | `/leshan/api/objectspecs/{ep}` | the object models of a client (ObjectModel JSON) |
//! | GET | `/leshan/api/objectspecs` | every default object model (ours; Leshan answers 400) |
//! | GET/PUT | `/leshan/api/security/clients` | credentials (`{endpoint, tls: {mode, details}}`) |
//! | DELETE | `/leshan/api/security/clients/{ep}` | remove credentials |
//! | GET | `/leshan/api/event` | server-sent events (`?ep=NAME`; COAPLOG only with `ep`) |
//! | GET | `/leshan/api/bootstrap` | bootstrap configurations by endpoint (bsserver's shape) |
//! | POST/DELETE | `/leshan/api/bootstrap/{ep}` | add or replace / remove one |
//!
//! A client's answer is HTTP 200 with `{status, valid, success, failure, content|objectLinks|
//! location, errormessage}` whatever its CoAP code (an error code is `success: false`);
//! other failures are plain text with 400 (bad request), 500 (rejected, cancelled, invalid
//! response) or 504 (`Request timeout`), as Leshan answers them.
//! A request to a sleeping queue-mode client is answered at once with
//! `{ep, path, requestId, delayed: true}`; the client's answer follows as a REQUEST_RESPONSE
//! event when it wakes up.
//!
//! Differences (deliberate): PSK keys are never returned (`"<redacted>"`), nor the Secret
//! Key resources of Security (/0/x/5, /0/x/7, /0/x/8) and OSCORE (/21/x/0) objects in
//! values and events, nor CoAP payloads of Security-object exchanges in COAPLOG.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{delete, get};
use lwm2m_proto::coap::ExchangeError;
use lwm2m_proto::coap::{CoapOption, MessageClass, MessageType};
use lwm2m_proto::codec::link::{AttributeUpdate, DiscoverEntry, Link};
use lwm2m_proto::content;
use lwm2m_proto::model::{ObjectDef, Operations, ResourceDef};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{
    Content, ObservationId, OpError, Operation, Registration, Response, ServerEvent,
};
use lwm2m_proto::value::DataType;
use lwm2m_proto::{
    ContentFormat, Instance, InstanceId, Lwm2mPath, Node, ObjectId, Record, ResourceId,
    ResourceInstanceId, ResourceValue, Schema, Value,
};
use serde_json::{Map, Value as Json, json};
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::driver::DriverError;
use crate::events::{Direction, Event, Role};
use crate::json::{declared_versions, unix_millis};
use crate::registrations::ClientEntry;
use crate::rest::{ApiState, REDACTED, query_pairs};
use crate::store::{ConfigKey, Credentials, SecurityInfo, StoreError};
use lwm2m_proto::bootstrap::{
    AclInstance, BootstrapConfig, SecurityInstance, SecurityMode, ServerInstance,
};

/// How long a client operation waits by default: Leshan's demo waits 5 s.
pub const LESHAN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the Leshan routes serve: the API's state plus the channel of delayed answers
/// (REQUEST_RESPONSE events of operations queued for sleeping clients).
struct Leshan {
    api: Arc<ApiState>,
    delayed: broadcast::Sender<(String, Json)>,
    /// The paths of the composite observations made here, for their NOTIFICATION events
    /// (Leshan's `paths`); an entry goes when its observation ends.
    composite: Arc<Mutex<HashMap<ObservationId, Vec<Lwm2mPath>>>>,
}

impl Leshan {
    fn composite(&self) -> std::sync::MutexGuard<'_, HashMap<ObservationId, Vec<Lwm2mPath>>> {
        self.composite
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::ops::Deref for Leshan {
    type Target = ApiState;
    fn deref(&self) -> &ApiState {
        &self.api
    }
}

type St = State<Arc<Leshan>>;

/// The routes under `/leshan/api/`, with their state; [`crate::rest::router`] merges them
/// behind its bearer-token check.
pub(crate) fn router(api: Arc<ApiState>) -> Router {
    let state = Arc::new(Leshan {
        api,
        delayed: broadcast::channel(256).0,
        composite: Arc::default(),
    });
    Router::new()
        .route("/leshan/api/clients", get(list_clients))
        .route("/leshan/api/clients/{ep}", get(get_client))
        .route(
            "/leshan/api/clients/{ep}/{*path}",
            get(client_get)
                .put(client_put)
                .post(client_post)
                .delete(client_delete),
        )
        .route("/leshan/api/objectspecs", get(object_specs))
        .route("/leshan/api/objectspecs/{ep}", get(object_specs_of))
        .route(
            "/leshan/api/security/clients",
            get(security_list).put(security_put),
        )
        .route("/leshan/api/security/clients/{ep}", delete(security_delete))
        .route("/leshan/api/event", get(events))
        .route("/leshan/api/bootstrap", get(bootstrap_list))
        .route(
            "/leshan/api/bootstrap/{ep}",
            axum::routing::post(bootstrap_post).delete(bootstrap_delete),
        )
        .with_state(state)
}

/// A plain-text answer, as Leshan's servlets write their errors.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> HttpResponse {
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.message,
        )
            .into_response()
    }
}

fn text(status: StatusCode, message: impl Into<String>) -> Failure {
    Failure {
        status,
        message: message.into(),
    }
}

fn json_ok(j: Json) -> HttpResponse {
    (StatusCode::OK, axum::Json(j)).into_response()
}

fn bad(message: impl std::fmt::Display) -> Failure {
    text(
        StatusCode::BAD_REQUEST,
        format!("Invalid request: {message}"),
    )
}

fn no_client(ep: &str) -> Failure {
    text(
        StatusCode::BAD_REQUEST,
        format!("No registered client with id '{ep}'"),
    )
}

type Answer = Result<HttpResponse, Failure>;

// ---------------------------------------------------------------------------------------
// Registrations

/// The attribute value as it appears in CoRE link format (Leshan's `getCoreLinkValue`):
/// `rt` and multi-valued `ct` quoted, the others bare.
fn link_value(name: &str, value: &str) -> String {
    if name == "rt" || value.contains(' ') {
        format!("\"{value}\"")
    } else {
        value.to_owned()
    }
}

/// A link as Leshan's `JacksonLinkSerializer` writes it: `{url, attributes: {name: value}}`.
fn link_json(link: &Link) -> Json {
    let attributes: Map<String, Json> = link
        .params
        .iter()
        .map(|p| {
            let v = p
                .value
                .as_deref()
                .map_or(String::new(), |v| link_value(&p.name, v));
            (p.name.clone(), Json::String(v))
        })
        .collect();
    json!({"url": link.target, "attributes": attributes})
}

/// A registration in Leshan's `JacksonRegistrationSerializer` shape.
pub fn registration_json(entry: &ClientEntry, secure: bool) -> Json {
    let r = &entry.registration;
    let mut m = Map::new();
    m.insert("endpoint".into(), json!(r.endpoint));
    m.insert("registrationId".into(), json!(r.id));
    m.insert(
        "registrationDate".into(),
        json!(unix_millis(r.registered_at)),
    );
    m.insert("lastUpdate".into(), json!(unix_millis(r.last_update)));
    m.insert("address".into(), json!(r.address.to_string()));
    if let Some(sms) = &r.sms {
        m.insert("smsNumber".into(), json!(sms));
    }
    m.insert("lwM2mVersion".into(), json!(r.version.as_str()));
    m.insert("lifetime".into(), json!(r.lifetime));
    m.insert("bindingMode".into(), json!(r.binding));
    m.insert("rootPath".into(), json!(root_path(r)));
    m.insert("objectLinks".into(), object_links(r));
    m.insert("secure".into(), json!(secure));
    m.insert("additionalRegistrationAttributes".into(), json!({}));
    m.insert("queuemode".into(), json!(r.queue_mode));
    let available: Map<String, Json> = r
        .links
        .objects
        .iter()
        .filter(|(_, info)| !info.instances.is_empty())
        .map(|(o, info)| {
            let ids: Vec<u16> = info.instances.iter().map(|i| i.0).collect();
            (o.0.to_string(), json!(ids))
        })
        .collect();
    m.insert("availableInstances".into(), Json::Object(available));
    if r.queue_mode {
        m.insert("sleeping".into(), json!(entry.sleeping));
    }
    Json::Object(m)
}

fn root_path(r: &Registration) -> String {
    let alt = r.links.alternate_path.trim_end_matches('/');
    format!("{alt}/")
}

fn object_links(r: &Registration) -> Json {
    Json::Array(r.links.to_links().iter().map(link_json).collect())
}

async fn list_clients(State(st): St) -> HttpResponse {
    let all: Vec<Json> = st
        .server
        .registrations()
        .all()
        .iter()
        .map(|e| registration_json(e, st.server.is_secure(&e.registration.endpoint)))
        .collect();
    json_ok(Json::Array(all))
}

async fn get_client(State(st): St, Path(ep): Path<String>) -> HttpResponse {
    match st.server.registrations().get(&ep) {
        Some(e) => json_ok(registration_json(&e, st.server.is_secure(&ep))),
        // Leshan's wording for this route.
        None => text(
            StatusCode::BAD_REQUEST,
            format!("no registered client with id '{ep}'"),
        )
        .into_response(),
    }
}

// ---------------------------------------------------------------------------------------
// Nodes: Leshan's JacksonLwM2mNodeSerializer / Deserializer shapes

/// Resources whose values are secrets: shown as `"<redacted>"`.
const SECRET_RESOURCES: [(u16, u16); 4] = [(0, 5), (0, 7), (0, 8), (21, 0)];

fn is_secret(path: &Lwm2mPath) -> bool {
    match (path.object_id(), path.resource_id()) {
        (Some(o), Some(r)) => SECRET_RESOURCES.contains(&(o.0, r.0)),
        _ => false,
    }
}

/// Leshan's `ResourceModel.Type` names.
pub fn type_name(t: DataType) -> &'static str {
    match t {
        DataType::String => "STRING",
        DataType::Integer => "INTEGER",
        DataType::UnsignedInteger => "UNSIGNED_INTEGER",
        DataType::Float => "FLOAT",
        DataType::Boolean => "BOOLEAN",
        DataType::Opaque => "OPAQUE",
        DataType::Time => "TIME",
        DataType::Objlnk => "OBJLNK",
        DataType::Corelnk => "CORELINK",
        DataType::None => "NONE",
    }
}

/// A data type from its Leshan name (any case, as Leshan's deserializer takes it).
pub fn type_from_name(s: &str) -> Option<DataType> {
    Some(match s.to_ascii_uppercase().as_str() {
        "STRING" => DataType::String,
        "INTEGER" => DataType::Integer,
        "UNSIGNED_INTEGER" => DataType::UnsignedInteger,
        "FLOAT" => DataType::Float,
        "BOOLEAN" => DataType::Boolean,
        "OPAQUE" => DataType::Opaque,
        "TIME" => DataType::Time,
        "OBJLNK" => DataType::Objlnk,
        "CORELINK" => DataType::Corelnk,
        "NONE" => DataType::None,
        _ => return None,
    })
}

/// A float as Java's `Double.toString` writes the common cases (`20.0`, `0.5`).
fn java_double(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e7 {
        format!("{f:.1}")
    } else {
        f.to_string()
    }
}

/// A value as Leshan writes it: numbers as strings (JavaScript precision), opaque as hex,
/// time as Unix milliseconds, object links as `{objectId, objectInstanceId}`.
/// (`JacksonLwM2mNodeSerializer`'s shapes; the harness's `leshan+http` adapter writes them
/// with this too.)
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::String(s) | Value::Corelnk(s) => json!(s),
        Value::Integer(i) => json!(i.to_string()),
        Value::UnsignedInteger(u) => json!(u.to_string()),
        Value::Float(f) => json!(java_double(*f)),
        Value::Boolean(b) => json!(b),
        Value::Opaque(b) => json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        Value::Time(t) => json!(t.saturating_mul(1000)),
        Value::Objlnk(l) => json!({"objectId": l.object, "objectInstanceId": l.instance}),
        Value::None => Json::Null,
    }
}

fn shown_value(path: &Lwm2mPath, v: &Value) -> Json {
    if is_secret(path) {
        json!(REDACTED)
    } else {
        value_json(v)
    }
}

fn last_id(path: &Lwm2mPath) -> Option<u16> {
    path.ids().last().copied()
}

fn resource_json(schema: &dyn Schema, path: &Lwm2mPath, rv: &ResourceValue) -> Json {
    let declared = content::resource_def(schema, path).map(|d| d.data_type);
    match rv {
        ResourceValue::Single(v) => json!({
            "id": last_id(path),
            "kind": "singleResource",
            "type": type_name(v.data_type()),
            "value": shown_value(path, v),
        }),
        ResourceValue::Multiple(m) => {
            let t = m
                .values()
                .next()
                .map(Value::data_type)
                .or(declared)
                .unwrap_or(DataType::String);
            let values: Map<String, Json> = m
                .iter()
                .map(|(ri, v)| (ri.0.to_string(), shown_value(path, v)))
                .collect();
            json!({"id": last_id(path), "kind": "multiResource", "type": type_name(t), "values": values})
        }
    }
}

fn instance_json(schema: &dyn Schema, path: &Lwm2mPath, inst: &Instance) -> Json {
    let resources: Vec<Json> = inst
        .iter()
        .filter_map(|(r, rv)| Some(resource_json(schema, &path.child(r.0)?, rv)))
        .collect();
    json!({"id": last_id(path), "kind": "instance", "resources": resources})
}

/// A node at `path` in Leshan's node JSON.
pub fn node_json(schema: &dyn Schema, path: &Lwm2mPath, node: &Node) -> Json {
    match node {
        Node::Object(instances) => {
            let instances: Vec<Json> = instances
                .iter()
                .filter_map(|(i, inst)| Some(instance_json(schema, &path.child(i.0)?, inst)))
                .collect();
            json!({"id": last_id(path), "kind": "obj", "instances": instances})
        }
        Node::Instance(inst) => instance_json(schema, path, inst),
        Node::Resource(rv) => resource_json(schema, path, rv),
        Node::ResourceInstance(v) => json!({
            "id": last_id(path),
            "kind": "resourceInstance",
            "type": type_name(v.data_type()),
            "value": shown_value(path, v),
        }),
    }
}

fn is_under(prefix: &Lwm2mPath, path: &Lwm2mPath) -> bool {
    path.ids().starts_with(&prefix.ids())
}

/// Composite content: `{path: node}` for each of `paths` the records cover (`/` as
/// Leshan's root node, `{"kind": "root", "objects": [..]}`). A record an answer repeats
/// (overlapping paths: `/1/0` and `/1/0/1`) counts once.
fn composite_json(schema: &dyn Schema, paths: &[Lwm2mPath], records: &[Record]) -> Json {
    let mut out = Map::new();
    for p in paths {
        let mut seen = BTreeSet::new();
        let mine: Vec<Record> = records
            .iter()
            .filter(|r| is_under(p, &r.path) && seen.insert(r.path))
            .cloned()
            .collect();
        if mine.is_empty() {
            continue;
        }
        if *p == Lwm2mPath::Root {
            let objects: BTreeSet<u16> = mine
                .iter()
                .filter_map(|r| r.path.object_id())
                .map(|o| o.0)
                .collect();
            let objects: Vec<Json> = objects
                .into_iter()
                .filter_map(|o| {
                    let op = Lwm2mPath::object(o);
                    let recs: Vec<Record> = mine
                        .iter()
                        .filter(|r| is_under(&op, &r.path))
                        .cloned()
                        .collect();
                    let node = content::records_to_node(&op, &recs, schema).ok()?;
                    Some(node_json(schema, &op, &node))
                })
                .collect();
            out.insert(p.to_string(), json!({"kind": "root", "objects": objects}));
        } else if let Ok(node) = content::records_to_node(p, &mine, schema) {
            out.insert(p.to_string(), node_json(schema, p, &node));
        }
    }
    Json::Object(out)
}

/// Records without their requested paths: one node per record path.
fn records_json(schema: &dyn Schema, records: &[Record]) -> Json {
    let paths: Vec<Lwm2mPath> = records.iter().map(|r| r.path).collect();
    composite_json(schema, &paths, records)
}

/// A value of type `ty` from Leshan's JSON (numbers as strings or numbers, time in
/// milliseconds, opaque hex, object links as objects), as `JacksonLwM2mNodeDeserializer`
/// takes them (it tolerates numbers for INTEGER, UNSIGNED_INTEGER and FLOAT).
pub fn parse_value(ty: DataType, j: &Json) -> Result<Value, String> {
    let bad = || format!("{j} is not a valid {} value", type_name(ty));
    let num_text = |j: &Json| match j {
        Json::String(s) => Some(s.trim().to_owned()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    };
    Ok(match ty {
        DataType::String => Value::String(j.as_str().ok_or_else(bad)?.to_owned()),
        DataType::Corelnk => Value::Corelnk(j.as_str().ok_or_else(bad)?.to_owned()),
        DataType::Boolean => match j {
            Json::Bool(b) => Value::Boolean(*b),
            Json::String(s) if s == "true" || s == "false" => Value::Boolean(s == "true"),
            _ => return Err(bad()),
        },
        DataType::Integer => {
            Value::Integer(num_text(j).and_then(|s| s.parse().ok()).ok_or_else(bad)?)
        }
        DataType::UnsignedInteger => {
            Value::UnsignedInteger(num_text(j).and_then(|s| s.parse().ok()).ok_or_else(bad)?)
        }
        DataType::Float => Value::Float(
            num_text(j)
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|f| f.is_finite())
                .ok_or_else(bad)?,
        ),
        DataType::Time => {
            let ms: i64 = num_text(j).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            Value::Time(ms.div_euclid(1000))
        }
        DataType::Opaque => Value::Opaque(
            j.as_str()
                .and_then(lwm2m_proto::value::parse_hex)
                .ok_or_else(bad)?,
        ),
        DataType::Objlnk => {
            let id = |k: &str| {
                j.get(k)
                    .and_then(Json::as_u64)
                    .and_then(|v| u16::try_from(v).ok())
            };
            match (id("objectId"), id("objectInstanceId")) {
                (Some(object), Some(instance)) => {
                    Value::Objlnk(lwm2m_proto::value::ObjectLink { object, instance })
                }
                _ => {
                    return Err(format!(
                        "{j}: an OBJLNK value is {{\"objectId\": n, \"objectInstanceId\": n}}"
                    ));
                }
            }
        }
        DataType::None => Value::None,
    })
}

/// The type of a value to parse: the node's `type`, else the registry's, else the JSON's.
fn value_type(schema: &dyn Schema, path: &Lwm2mPath, node: &Json, value: &Json) -> DataType {
    if let Some(t) = node
        .get("type")
        .and_then(Json::as_str)
        .and_then(type_from_name)
    {
        return t;
    }
    if let Some(def) = content::resource_def(schema, path) {
        return def.data_type;
    }
    match value {
        Json::Bool(_) => DataType::Boolean,
        Json::Number(n) if n.is_f64() => DataType::Float,
        Json::Number(_) => DataType::Integer,
        Json::Object(_) => DataType::Objlnk,
        _ => DataType::String,
    }
}

fn node_kind(j: &Json) -> Option<&str> {
    if let Some(k) = j.get("kind").and_then(Json::as_str) {
        return Some(k);
    }
    if j.get("instances").is_some() {
        Some("obj")
    } else if j.get("resources").is_some() {
        Some("instance")
    } else if j.get("values").is_some() {
        Some("multiResource")
    } else if j.get("value").is_some() {
        Some("singleResource")
    } else {
        None
    }
}

fn node_id(j: &Json) -> Result<Option<u16>, String> {
    match j.get("id") {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .and_then(|v| u16::try_from(v).ok())
            .filter(|v| *v != u16::MAX)
            .map(Some)
            .ok_or_else(|| format!("id {v} is not 0..65534")),
    }
}

/// A resource node (`singleResource` / `multiResource`) under `instance`.
fn parse_resource(
    schema: &dyn Schema,
    instance: &Lwm2mPath,
    j: &Json,
) -> Result<(ResourceId, ResourceValue), String> {
    let id = node_id(j)?.ok_or("a resource node needs an \"id\"")?;
    let path = instance.child(id).ok_or("bad resource id")?;
    match node_kind(j) {
        Some("singleResource") => {
            let value = j.get("value").ok_or("a singleResource needs a \"value\"")?;
            let t = value_type(schema, &path, j, value);
            Ok((
                ResourceId(id),
                ResourceValue::Single(parse_value(t, value).map_err(|e| format!("{path}: {e}"))?),
            ))
        }
        Some("multiResource") => {
            let Some(Json::Object(values)) = j.get("values") else {
                return Err("a multiResource needs \"values\": {\"0\": value, ...}".into());
            };
            let mut out = BTreeMap::new();
            for (k, v) in values {
                let ri: u16 = k
                    .parse()
                    .map_err(|_| format!("{k:?} is not a resource instance id"))?;
                let t = value_type(schema, &path, j, v);
                out.insert(
                    ResourceInstanceId(ri),
                    parse_value(t, v).map_err(|e| format!("{path}/{ri}: {e}"))?,
                );
            }
            Ok((ResourceId(id), ResourceValue::Multiple(out)))
        }
        other => Err(format!(
            "expected a singleResource or multiResource node, got {other:?}"
        )),
    }
}

/// An `instance` node: its id (if given) and resources.
fn parse_instance(
    schema: &dyn Schema,
    object: ObjectId,
    j: &Json,
) -> Result<(Option<InstanceId>, Instance), String> {
    if node_kind(j) != Some("instance") {
        return Err(
            "expected an instance node {\"kind\": \"instance\", \"resources\": [..]}".into(),
        );
    }
    let id = node_id(j)?;
    let Some(Json::Array(resources)) = j.get("resources") else {
        return Err("an instance needs \"resources\": [..]".into());
    };
    let base = Lwm2mPath::Instance(object, InstanceId(id.unwrap_or(0)));
    let mut inst = Instance::new();
    for r in resources {
        let (rid, rv) = parse_resource(schema, &base, r)?;
        inst.insert(rid, rv);
    }
    Ok((id.map(InstanceId), inst))
}

/// The node of a Write at `path` from Leshan's node JSON.
fn parse_node(schema: &dyn Schema, path: &Lwm2mPath, j: &Json) -> Result<Node, String> {
    let check_id = |want: u16| -> Result<(), String> {
        match node_id(j)? {
            Some(id) if id != want => Err(format!("the node's id {id} is not the one of {path}")),
            _ => Ok(()),
        }
    };
    match *path {
        Lwm2mPath::Instance(o, i) => {
            check_id(i.0)?;
            Ok(Node::Instance(parse_instance(schema, o, j)?.1))
        }
        Lwm2mPath::Resource(o, i, r) => {
            check_id(r.0)?;
            let mut j = j.clone();
            if let Some(m) = j.as_object_mut() {
                m.insert("id".into(), json!(r.0));
            }
            let (_, rv) = parse_resource(schema, &Lwm2mPath::Instance(o, i), &j)?;
            Ok(Node::Resource(rv))
        }
        Lwm2mPath::ResourceInstance(.., ri) => {
            check_id(ri.0)?;
            if !matches!(node_kind(j), Some("resourceInstance" | "singleResource")) {
                return Err("expected a resourceInstance node".into());
            }
            let value = j
                .get("value")
                .ok_or("a resourceInstance needs a \"value\"")?;
            let t = value_type(schema, path, j, value);
            Ok(Node::ResourceInstance(parse_value(t, value)?))
        }
        _ => Err(format!(
            "cannot write {path}: write an instance or a resource"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Responses: Leshan's JacksonResponseSerializer shape

/// Leshan's `ResponseCode` names.
fn status_name((class, detail): (u8, u8)) -> String {
    let name = match (class, detail) {
        (2, 1) => "CREATED",
        (2, 2) => "DELETED",
        (2, 4) => "CHANGED",
        (2, 5) => "CONTENT",
        (2, 31) => "CONTINUE",
        (4, 0) => "BAD_REQUEST",
        (4, 1) => "UNAUTHORIZED",
        (4, 2) => "BAD_OPTION",
        (4, 3) => "FORBIDDEN",
        (4, 4) => "NOT_FOUND",
        (4, 5) => "METHOD_NOT_ALLOWED",
        (4, 6) => "NOT_ACCEPTABLE",
        (4, 8) => "REQUEST_ENTITY_INCOMPLETE",
        (4, 12) => "PRECONDITION_FAILED",
        (4, 13) => "REQUEST_ENTITY_TOO_LARGE",
        (4, 15) => "UNSUPPORTED_CONTENT_FORMAT",
        (5, 0) => "INTERNAL_SERVER_ERROR",
        _ => return format!("UNKNOWN({})", u16::from(class) * 100 + u16::from(detail)),
    };
    name.to_owned()
}

/// What a response's content is shown as.
enum Shape {
    /// Read, Observe: `content` is the node at the path.
    Node(Lwm2mPath),
    /// Read-/Observe-Composite: `content` is `{path: node}`.
    Composite(Vec<Lwm2mPath>),
    /// Discover: `objectLinks`.
    Links,
    /// Create: `location`.
    Location,
    /// Write, Execute, Delete, Write-Attributes, cancellation: the status only.
    Plain,
}

fn discover_link(e: &DiscoverEntry) -> Json {
    link_json(&e.to_link())
}

/// The success code an operation's answer must carry (Core TS 1.1 §6.3, §6.4).
fn expected_code(op: &Operation) -> (u8, u8) {
    match op {
        Operation::Create { .. } => (2, 1),
        Operation::Delete { .. } => (2, 2),
        Operation::Write { .. }
        | Operation::WriteAttributes { .. }
        | Operation::Execute { .. }
        | Operation::WriteComposite { .. } => (2, 4),
        _ => (2, 5),
    }
}

/// Leshan's `isValid`: the operation's success code, or an error code the
/// specification allows (4.xx, 5.00).
fn is_valid(code: (u8, u8), expected: (u8, u8)) -> bool {
    code == expected || code.0 == 4 || code == (5, 0)
}

fn response_json(schema: &dyn Schema, shape: &Shape, r: &Response, expected: (u8, u8)) -> Json {
    let success = r.is_success();
    let mut m = Map::new();
    m.insert("status".into(), json!(status_name(r.code)));
    m.insert("valid".into(), json!(is_valid(r.code, expected)));
    m.insert("success".into(), json!(success));
    m.insert("failure".into(), json!(!success));
    match (shape, &r.content) {
        (Shape::Node(path), Some(Content::Node(node))) => {
            m.insert("content".into(), node_json(schema, path, node));
        }
        (Shape::Node(path), Some(Content::Records(recs))) => {
            // A node shape in a SenML payload: rebuilt at the path.
            if let Ok(node) = content::records_to_node(path, recs, schema) {
                m.insert("content".into(), node_json(schema, path, &node));
            }
        }
        (Shape::Composite(paths), Some(Content::Records(recs))) => {
            m.insert("content".into(), composite_json(schema, paths, recs));
        }
        (Shape::Composite(paths), Some(Content::Node(node))) => {
            let recs = node.to_records(&Lwm2mPath::Root);
            m.insert("content".into(), composite_json(schema, paths, &recs));
        }
        (Shape::Links, Some(Content::Links(entries))) => {
            m.insert(
                "objectLinks".into(),
                Json::Array(entries.iter().map(discover_link).collect()),
            );
        }
        _ => {}
    }
    if let (Shape::Location, Some(l)) = (shape, &r.location) {
        // As Californium's Location-Path string that Leshan hands over: `3303/7`.
        m.insert(
            "location".into(),
            json!(l.to_string().trim_start_matches('/')),
        );
    }
    if !success && let Some(d) = r.diagnostic.as_deref().filter(|d| !d.is_empty()) {
        m.insert("errormessage".into(), json!(d));
    }
    Json::Object(m)
}

/// A failure without a CoAP answer, as Leshan's `handleException` reports it.
fn driver_error(e: &DriverError) -> Failure {
    let DriverError::Op(op) = e else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Unexpected exception: {e}"),
        );
    };
    match op {
        OpError::UnknownEndpoint { endpoint } => no_client(endpoint),
        OpError::Invalid { .. } | OpError::Encode(_) => bad(op),
        OpError::QueueTimeout { .. }
        | OpError::Exchange {
            error: ExchangeError::Timeout { .. } | ExchangeError::NoResponse { .. },
            ..
        } => request_timeout(),
        OpError::Decode { .. } => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Invalid Response: {op}"),
        ),
        OpError::Deregistered { .. } => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Request cancelled: {op}"),
        ),
        _ => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Request rejected: {op}"),
        ),
    }
}

fn request_timeout() -> Failure {
    text(StatusCode::GATEWAY_TIMEOUT, "Request timeout")
}

// ---------------------------------------------------------------------------------------
// Client operations

/// The query parameters of an operation, Leshan's names.
struct Params {
    format: Option<ContentFormat>,
    node_format: Option<ContentFormat>,
    timeout: Duration,
    replace: bool,
    /// `active` present (any value), as Leshan tests it.
    active: bool,
    paths: Vec<Lwm2mPath>,
    /// Everything else: Write-Attributes.
    rest: Vec<String>,
}

/// A format from Leshan's names (`TLV`, `SENML_CBOR`, `LWM2M_CBOR`, ...) or ours.
fn format_from_name(s: &str) -> Result<ContentFormat, String> {
    let ours = s.to_ascii_lowercase().replace('_', "-");
    ContentFormat::from_name(&ours).ok_or_else(|| {
        format!("unknown format {s:?}; known: TEXT, TLV, JSON, SENML_JSON, SENML_CBOR, CBOR, OPAQUE, LWM2M_CBOR")
    })
}

impl Params {
    fn parse(raw: Option<&str>) -> Result<Self, String> {
        let mut p = Params {
            format: None,
            node_format: None,
            timeout: LESHAN_TIMEOUT,
            replace: true,
            active: false,
            paths: Vec::new(),
            rest: Vec::new(),
        };
        for (k, v) in query_pairs(raw) {
            let value = v.clone().unwrap_or_default();
            match k.as_str() {
                "format" => p.format = Some(format_from_name(&value)?),
                "nodeformat" => p.node_format = Some(format_from_name(&value)?),
                // The path list's format of a composite request: ours is chosen with the
                // node format.
                "pathformat" => {
                    format_from_name(&value)?;
                }
                "timeout" => {
                    // Leshan: whole seconds; anything else means the default.
                    if let Some(s) = value
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                    {
                        p.timeout = Duration::from_secs_f64(s);
                    }
                }
                "replace" => p.replace = !value.eq_ignore_ascii_case("false"),
                "active" => p.active = true,
                "paths" => {
                    for s in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let s = if s.starts_with('/') {
                            s.to_owned()
                        } else {
                            format!("/{s}")
                        };
                        p.paths
                            .push(s.parse().map_err(|e| format!("bad path {s:?}: {e}"))?);
                    }
                }
                _ => p.rest.push(match v {
                    Some(v) => format!("{k}={v}"),
                    None => k,
                }),
            }
        }
        Ok(p)
    }

    fn composite_format(&self) -> Option<ContentFormat> {
        self.node_format.or(self.format)
    }
}

/// What `/clients/{ep}/{*path}` names.
#[derive(Debug, PartialEq)]
enum Target {
    Composite { observe: bool },
    Path { path: Lwm2mPath, action: Action },
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum Action {
    Plain,
    Discover,
    Observe,
    Attributes,
}

fn parse_target(tail: &str) -> Result<Target, String> {
    let segments: Vec<&str> = tail.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["composite"] => return Ok(Target::Composite { observe: false }),
        ["composite", "observe"] => return Ok(Target::Composite { observe: true }),
        _ => {}
    }
    let (action, ids) = match segments.split_last() {
        Some((&"discover", ids)) => (Action::Discover, ids),
        Some((&"observe", ids)) => (Action::Observe, ids),
        Some((&"attributes", ids)) => (Action::Attributes, ids),
        _ => (Action::Plain, segments.as_slice()),
    };
    let path = Lwm2mPath::from_segments(ids)
        .map_err(|e| format!("bad LwM2M path /{}: {e}", ids.join("/")))?;
    Ok(Target::Path { path, action })
}

/// A registered client and what its payloads are typed with.
struct Client<'a> {
    st: &'a Leshan,
    endpoint: String,
    versions: BTreeMap<ObjectId, String>,
}

impl<'a> Client<'a> {
    fn find(st: &'a Leshan, endpoint: &str) -> Result<Self, Failure> {
        let entry = st
            .server
            .registrations()
            .get(endpoint)
            .ok_or_else(|| no_client(endpoint))?;
        Ok(Self {
            st,
            endpoint: endpoint.to_owned(),
            versions: declared_versions(&entry.registration),
        })
    }

    fn schema(&self) -> impl Schema + '_ {
        self.st.registry.with_versions(&self.versions)
    }

    async fn call(&self, op: Operation, timeout: Duration) -> Result<Response, Failure> {
        match tokio::time::timeout(timeout, self.st.server.request(&self.endpoint, op)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(driver_error(&e)),
            Err(_) => Err(request_timeout()),
        }
    }

    /// Runs the operation: HTTP 200 with the response JSON, whatever the CoAP code. For a
    /// sleeping queue-mode client, as Leshan: an immediate `{ep, path, requestId, delayed}`
    /// and, once the client woke up and answered, a REQUEST_RESPONSE event.
    async fn run(&self, op: Operation, shape: Shape, timeout: Duration) -> Answer {
        let sleeping = self
            .st
            .server
            .registrations()
            .get(&self.endpoint)
            .is_some_and(|e| e.sleeping);
        if sleeping {
            return Ok(self.delay(op, shape));
        }
        let composite = match &op {
            Operation::ObserveComposite { paths, .. } => Some(paths.clone()),
            _ => None,
        };
        let expected = expected_code(&op);
        let r = self.call(op, timeout).await?;
        if let (Some(paths), Some(observation)) = (composite, r.observation) {
            self.st.composite().insert(observation, paths);
        }
        Ok(json_ok(response_json(&self.schema(), &shape, &r, expected)))
    }

    fn delay(&self, op: Operation, shape: Shape) -> HttpResponse {
        let request_id = request_id();
        let mut answer = Map::new();
        answer.insert("ep".into(), json!(self.endpoint));
        if let Some(p) = op.path() {
            answer.insert("path".into(), json!(p.to_string()));
        }
        answer.insert("requestId".into(), json!(request_id));
        answer.insert("delayed".into(), json!(true));
        let (server, registry, versions) = (
            self.st.server.clone(),
            self.st.registry.clone(),
            self.versions.clone(),
        );
        let (tx, ep, mut event) = (
            self.st.delayed.clone(),
            self.endpoint.clone(),
            answer.clone(),
        );
        let composite = self.st.composite.clone();
        let composite_paths = match &op {
            Operation::ObserveComposite { paths, .. } => Some(paths.clone()),
            _ => None,
        };
        let expected = expected_code(&op);
        tokio::spawn(async move {
            // Bounded by the server's queue time-out (Core TS 1.1 §6.5); a request that
            // fails there produces no event, as in Leshan.
            match server.request(&ep, op).await {
                Ok(r) => {
                    if let (Some(paths), Some(observation)) = (composite_paths, r.observation) {
                        composite
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(observation, paths);
                    }
                    let schema = registry.with_versions(&versions);
                    event.insert(
                        "response".into(),
                        response_json(&schema, &shape, &r, expected),
                    );
                    let _ = tx.send((ep, Json::Object(event)));
                }
                Err(e) => tracing::debug!(endpoint = %ep, error = %e, "delayed request failed"),
            }
        });
        json_ok(Json::Object(answer))
    }
}

/// A random request id in UUID v4 text form, as Leshan's.
fn request_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: a process-unique id still identifies the request.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b[8..].copy_from_slice(&n.to_be_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn params(q: Option<&str>) -> Result<Params, Failure> {
    Params::parse(q).map_err(bad)
}

fn target(tail: &str) -> Result<Target, Failure> {
    parse_target(tail).map_err(bad)
}

fn need_paths(p: &Params) -> Result<Vec<Lwm2mPath>, Failure> {
    if p.paths.is_empty() {
        return Err(bad("a composite operation needs ?paths=/3/0/0,/3/0/9"));
    }
    Ok(p.paths.clone())
}

async fn client_get(
    State(st): St,
    Path((ep, tail)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> HttpResponse {
    get_op(&st, &ep, &tail, q.as_deref())
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn get_op(st: &Leshan, ep: &str, tail: &str, q: Option<&str>) -> Answer {
    let p = params(q)?;
    let t = target(tail)?;
    let client = Client::find(st, ep)?;
    match t {
        Target::Composite { observe: false } => {
            let paths = need_paths(&p)?;
            let op = Operation::ReadComposite {
                paths: paths.clone(),
                format: p.composite_format(),
            };
            client.run(op, Shape::Composite(paths), p.timeout).await
        }
        Target::Path {
            path,
            action: Action::Plain,
        } => {
            let op = Operation::Read {
                path,
                format: p.format,
            };
            client.run(op, Shape::Node(path), p.timeout).await
        }
        Target::Path {
            path,
            action: Action::Discover,
        } => {
            client
                .run(Operation::Discover { path }, Shape::Links, p.timeout)
                .await
        }
        _ => Err(bad("GET reads, discovers or reads a composite")),
    }
}

fn body_json(body: &Bytes) -> Result<Json, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        text(
            StatusCode::BAD_REQUEST,
            format!("Invalid request: unable to parse json: {e}"),
        )
    })
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

async fn client_put(
    State(st): St,
    Path((ep, tail)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    put_op(&st, &ep, &tail, q.as_deref(), &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn put_op(
    st: &Leshan,
    ep: &str,
    tail: &str,
    q: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Answer {
    let p = params(q)?;
    let t = target(tail)?;
    let client = Client::find(st, ep)?;
    let schema = client.schema();
    match t {
        Target::Composite { observe: false } => {
            let Json::Object(nodes) = body_json(body)? else {
                return Err(bad("expected {\"/3/0/14\": node, ...}"));
            };
            let mut records = Vec::new();
            for (k, j) in &nodes {
                let path: Lwm2mPath = k.parse().map_err(|e| bad(format!("{k:?}: {e}")))?;
                let node = parse_node(&schema, &path, j).map_err(bad)?;
                records.extend(node.to_records(&path));
            }
            let op = Operation::WriteComposite {
                records,
                format: p.composite_format(),
            };
            client.run(op, Shape::Plain, p.timeout).await
        }
        Target::Path {
            path,
            action: Action::Attributes,
        } => {
            let attributes = AttributeUpdate::from_query(&p.rest).map_err(bad)?;
            let op = Operation::WriteAttributes { path, attributes };
            client.run(op, Shape::Plain, p.timeout).await
        }
        Target::Path {
            path,
            action: Action::Plain,
        } => {
            let node = match content_type(headers).as_str() {
                "text/plain" => {
                    // Leshan: the text is the value of a single resource.
                    let Lwm2mPath::Resource(..) = path else {
                        return Err(bad("a text/plain write needs a resource path"));
                    };
                    let text = String::from_utf8_lossy(body).into_owned();
                    let t = content::resource_def(&schema, &path)
                        .map_or(DataType::String, |d| d.data_type);
                    let v = parse_value(t, &Json::String(text)).map_err(bad)?;
                    Node::Resource(ResourceValue::Single(v))
                }
                _ => parse_node(&schema, &path, &body_json(body)?).map_err(bad)?,
            };
            let op = Operation::Write {
                path,
                node,
                replace: p.replace,
                format: p.format,
            };
            client.run(op, Shape::Plain, p.timeout).await
        }
        _ => Err(bad("PUT writes a path, its attributes, or a composite")),
    }
}

async fn client_post(
    State(st): St,
    Path((ep, tail)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> HttpResponse {
    post_op(&st, &ep, &tail, q.as_deref(), &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn post_op(st: &Leshan, ep: &str, tail: &str, q: Option<&str>, body: &Bytes) -> Answer {
    let p = params(q)?;
    let t = target(tail)?;
    let client = Client::find(st, ep)?;
    match t {
        Target::Composite { observe: true } => {
            let paths = need_paths(&p)?;
            let op = Operation::ObserveComposite {
                paths: paths.clone(),
                format: p.composite_format(),
            };
            client.run(op, Shape::Composite(paths), p.timeout).await
        }
        Target::Path {
            path,
            action: Action::Observe,
        } => {
            let op = Operation::Observe {
                path,
                format: p.format,
            };
            client.run(op, Shape::Node(path), p.timeout).await
        }
        Target::Path {
            path: path @ Lwm2mPath::Resource(..),
            action: Action::Plain,
        } => {
            let args = if body.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                Some(
                    std::str::from_utf8(body)
                        .map_err(|_| bad("the arguments are not UTF-8"))?
                        .to_owned(),
                )
            };
            client
                .run(Operation::Execute { path, args }, Shape::Plain, p.timeout)
                .await
        }
        Target::Path {
            path: Lwm2mPath::Object(object),
            action: Action::Plain,
        } => {
            let (instance, resources) =
                parse_instance(&client.schema(), object, &body_json(body)?).map_err(bad)?;
            let op = Operation::Create {
                object,
                instance,
                resources,
                format: p.format,
            };
            client.run(op, Shape::Location, p.timeout).await
        }
        _ => Err(bad(
            "POST creates (/O), executes (/O/I/R) or observes (.../observe, composite/observe)",
        )),
    }
}

async fn client_delete(
    State(st): St,
    Path((ep, tail)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> HttpResponse {
    delete_op(&st, &ep, &tail, q.as_deref())
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn delete_op(st: &Leshan, ep: &str, tail: &str, q: Option<&str>) -> Answer {
    let p = params(q)?;
    let t = target(tail)?;
    let client = Client::find(st, ep)?;
    let observed = match t {
        Target::Path {
            path,
            action: Action::Plain,
        } => {
            return client
                .run(Operation::Delete { path }, Shape::Plain, p.timeout)
                .await;
        }
        Target::Path {
            path,
            action: Action::Observe,
        } => vec![path],
        Target::Composite { observe: true } => need_paths(&p)?,
        _ => return Err(bad("DELETE removes an instance or an observation")),
    };
    let observations = st
        .server
        .observations(ep)
        .await
        .map_err(|e| driver_error(&e))?;
    let matching: Vec<_> = observations
        .into_iter()
        .filter(|(_, paths)| *paths == observed)
        .map(|(id, _)| id)
        .collect();
    {
        let mut composite = st.composite();
        for id in &matching {
            composite.remove(id);
        }
    }
    if !p.active {
        // Leshan: a passive cancellation forgets the observations and answers 200.
        for observation in matching {
            let op = Operation::CancelObservation {
                observation,
                active: false,
            };
            client.call(op, p.timeout).await?;
        }
        return Ok(StatusCode::OK.into_response());
    }
    let Some(observation) = matching.first().copied() else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!(
                "no observation for path {} for client '{ep}'",
                observed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ));
    };
    let op = Operation::CancelObservation {
        observation,
        active: true,
    };
    let r = client.call(op, p.timeout).await?;
    // Other observations of the same paths go passively.
    for observation in matching.into_iter().skip(1) {
        let op = Operation::CancelObservation {
            observation,
            active: false,
        };
        client.call(op, p.timeout).await?;
    }
    let shape = match observed.as_slice() {
        [one] if matches!(t, Target::Path { .. }) => Shape::Node(*one),
        _ => Shape::Composite(observed.clone()),
    };
    Ok(json_ok(response_json(&client.schema(), &shape, &r, (2, 5))))
}

// ---------------------------------------------------------------------------------------
// Object models: Leshan's ObjectModelSerDes shape

fn operations_name(o: Operations) -> &'static str {
    match o {
        Operations::None => "NONE",
        Operations::R => "R",
        Operations::W => "W",
        Operations::RW => "RW",
        Operations::E => "E",
    }
}

fn instance_type(multiple: bool) -> &'static str {
    if multiple { "multiple" } else { "single" }
}

fn resource_model(r: &ResourceDef) -> Json {
    json!({
        "id": r.id.0,
        "name": r.name,
        "operations": operations_name(r.operations),
        "instancetype": instance_type(r.multiple),
        "mandatory": r.mandatory,
        "type": type_name(r.data_type).to_ascii_lowercase(),
        "range": r.range,
        "units": r.units,
        "description": r.description,
    })
}

/// An object definition in Leshan's ObjectModel JSON.
pub fn object_model(o: &ObjectDef) -> Json {
    json!({
        "id": o.id.0,
        "name": o.name,
        "instancetype": instance_type(o.multiple),
        "mandatory": o.mandatory,
        "urn": o.urn,
        "version": o.version,
        "lwm2mversion": o.lwm2m_version,
        "description": o.description,
        "description2": "",
        "resourcedefs": o.resources.values().map(resource_model).collect::<Vec<_>>(),
    })
}

async fn object_specs(State(st): St) -> HttpResponse {
    json_ok(Json::Array(
        st.registry.objects().map(object_model).collect(),
    ))
}

async fn object_specs_of(State(st): St, Path(ep): Path<String>) -> HttpResponse {
    let Some(entry) = st.server.registrations().get(&ep) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("no registered client with id '{ep}'"),
        )
        .into_response();
    };
    let versions = declared_versions(&entry.registration);
    let view = st.registry.with_versions(&versions);
    let ids: Vec<ObjectId> = st.registry.objects().map(|o| o.id).collect();
    json_ok(Json::Array(
        ids.into_iter()
            .filter_map(|id| view.object(id))
            .map(object_model)
            .collect(),
    ))
}

// ---------------------------------------------------------------------------------------
// Security: Leshan's JacksonSecuritySerializer shape, keys redacted

/// Credentials in Leshan's shape; a PSK key is never shown.
pub fn security_json(info: &SecurityInfo) -> Json {
    let tls = match &info.credentials {
        Credentials::Psk { identity, .. } => {
            json!({"mode": "psk", "details": {"identity": identity, "key": REDACTED}})
        }
        Credentials::Rpk { public_key } => {
            json!({"mode": "rpk", "details": {"key": public_key}})
        }
        Credentials::X509 => json!({"mode": "x509"}),
    };
    json!({"endpoint": info.endpoint, "tls": tls})
}

/// Credentials from Leshan's PUT body.
fn security_from_json(j: &Json) -> Result<SecurityInfo, String> {
    let endpoint = j
        .get("endpoint")
        .and_then(Json::as_str)
        .ok_or("Missing endpoint")?
        .to_owned();
    let tls = j
        .get("tls")
        .ok_or("Missing tls (OSCORE is not supported)")?;
    let mode = tls
        .get("mode")
        .and_then(Json::as_str)
        .ok_or("Missing tls mode")?;
    let details = tls.get("details");
    let detail = |k: &str| {
        details
            .and_then(|d| d.get(k))
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or(format!("Missing tls details {k}"))
    };
    let credentials = match mode {
        "psk" => {
            let key = detail("key")?;
            if key == REDACTED {
                return Err(format!("key {REDACTED:?} is a placeholder; give the key"));
            }
            Credentials::Psk {
                identity: detail("identity")?,
                key,
            }
        }
        "rpk" => Credentials::Rpk {
            public_key: detail("key")?,
        },
        "x509" => Credentials::X509,
        other => return Err(format!("unknown tls mode {other:?}")),
    };
    Ok(SecurityInfo {
        endpoint,
        credentials,
    })
}

async fn security_list(State(st): St) -> HttpResponse {
    json_ok(Json::Array(
        st.security.all().iter().map(security_json).collect(),
    ))
}

async fn security_put(State(st): St, body: Bytes) -> HttpResponse {
    let info = match serde_json::from_slice::<Json>(&body)
        .map_err(|e| e.to_string())
        .and_then(|j| security_from_json(&j))
    {
        Ok(info) => info,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Invalid request body: {e}"),
            )
            .into_response();
        }
    };
    match st.security.put(info) {
        Ok(_) => StatusCode::OK.into_response(),
        // Leshan: a non-unique identity (and any invalid info) is a 400 with the reason.
        Err(e @ (StoreError::IdentityTaken { .. } | StoreError::Invalid { .. })) => {
            text(StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn security_delete(State(st): St, Path(ep): Path<String>) -> HttpResponse {
    match st.security.remove(&ep) {
        Ok(Some(_)) => StatusCode::OK.into_response(),
        Ok(None) => json_ok(json!({"message": "not_found"})),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

// ---------------------------------------------------------------------------------------
// Bootstrap configurations: Leshan bsserver's BootstrapConfig shape

fn byte_array(b: &[u8]) -> Json {
    Json::Array(b.iter().map(|x| json!(x)).collect())
}

fn mode_name(m: SecurityMode) -> &'static str {
    match m {
        SecurityMode::Psk => "PSK",
        SecurityMode::Rpk => "RPK",
        SecurityMode::X509 => "X509",
        SecurityMode::NoSec => "NO_SEC",
        SecurityMode::Est => "EST",
    }
}

fn mode_from_name(s: &str) -> Option<SecurityMode> {
    Some(match s {
        "PSK" => SecurityMode::Psk,
        "RPK" => SecurityMode::Rpk,
        "X509" => SecurityMode::X509,
        "NO_SEC" => SecurityMode::NoSec,
        "EST" => SecurityMode::Est,
        _ => return None,
    })
}

/// A configuration in Leshan bsserver's shape; secret keys are never shown.
pub fn bootstrap_json(c: &BootstrapConfig) -> Json {
    let hex_bytes = |s: &str| lwm2m_proto::value::parse_hex(s).unwrap_or_default();
    let security: Map<String, Json> = c
        .security
        .iter()
        .map(|(i, s)| {
            let mut m = Map::new();
            m.insert("uri".into(), json!(s.uri));
            m.insert("bootstrapServer".into(), json!(s.bootstrap_server));
            m.insert("securityMode".into(), json!(mode_name(s.mode)));
            m.insert("publicKeyOrId".into(), byte_array(&s.identity_bytes()));
            m.insert(
                "serverPublicKey".into(),
                byte_array(&hex_bytes(&s.server_public_key)),
            );
            let secret = if s.secret_key.is_empty() {
                json!([])
            } else {
                json!(REDACTED)
            };
            m.insert("secretKey".into(), secret);
            if let Some(id) = s.short_server_id {
                m.insert("serverId".into(), json!(id));
            }
            if let Some(t) = s.client_hold_off {
                m.insert("clientOldOffTime".into(), json!(t));
            }
            if let Some(t) = s.bootstrap_account_timeout {
                m.insert("bootstrapServerAccountTimeout".into(), json!(t));
            }
            (i.to_string(), Json::Object(m))
        })
        .collect();
    let servers: Map<String, Json> = c
        .servers
        .iter()
        .map(|(i, s)| {
            let mut m = Map::new();
            m.insert("shortId".into(), json!(s.short_server_id));
            m.insert("lifetime".into(), json!(s.lifetime));
            if let Some(p) = s.default_min_period {
                m.insert("defaultMinPeriod".into(), json!(p));
            }
            if let Some(p) = s.default_max_period {
                m.insert("defaultMaxPeriod".into(), json!(p));
            }
            m.insert("notifIfDisabled".into(), json!(s.notification_storing));
            m.insert("binding".into(), json!(s.binding));
            (i.to_string(), Json::Object(m))
        })
        .collect();
    let acls: Map<String, Json> = c
        .acl
        .iter()
        .map(|(i, a)| {
            let rights: Map<String, Json> = a
                .acl
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            (
                i.to_string(),
                json!({"objectId": a.object_id, "objectInstanceId": a.instance_id,
                       "acls": rights, "AccessControlOwner": a.owner}),
            )
        })
        .collect();
    json!({
        "autoIdForSecurityObject": c.discover,
        "toDelete": c.delete.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "servers": servers,
        "security": security,
        "acls": acls,
        "oscore": {},
    })
}

/// Whether a value is a default Leshan fills in for a field we do not support.
fn is_unset(v: &Json) -> bool {
    match v {
        Json::Null | Json::Bool(false) => true,
        Json::String(s) => s.is_empty() || s == "NO_SEC",
        Json::Array(a) => a.is_empty(),
        Json::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The fields of an object: those in `known` are handed out, the others must be unset.
fn fields<'a>(
    what: &str,
    j: &'a Json,
    known: &[&str],
) -> Result<std::collections::HashMap<&'a str, &'a Json>, String> {
    let Json::Object(m) = j else {
        return Err(format!("{what} must be an object"));
    };
    let mut out = std::collections::HashMap::new();
    for (k, v) in m {
        if known.contains(&k.as_str()) {
            out.insert(k.as_str(), v);
        } else if !is_unset(v) {
            return Err(format!("{what}: {k} is not supported"));
        }
    }
    Ok(out)
}

fn bytes_from(what: &str, v: Option<&Json>) -> Result<Vec<u8>, String> {
    match v {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_i64()
                    .filter(|x| (-128..=255).contains(x))
                    // Jackson's default writes signed bytes; the demo's serializer unsigned.
                    .map(|x| (x & 0xff) as u8)
                    .ok_or_else(|| format!("{what}: {x} is not a byte"))
            })
            .collect(),
        Some(Json::String(s)) => lwm2m_proto::value::parse_hex(s)
            .ok_or_else(|| format!("{what}: expected bytes ([1, 2]) or hex")),
        Some(other) => Err(format!("{what}: expected bytes, got {other}")),
    }
}

fn uint<T: TryFrom<u64>>(what: &str, v: Option<&Json>) -> Result<Option<T>, String> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .and_then(|x| T::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| format!("{what}: {x} is out of range")),
    }
}

/// A configuration from Leshan bsserver's JSON.
fn bootstrap_from_json(j: &Json) -> Result<BootstrapConfig, String> {
    let top = fields(
        "config",
        j,
        &[
            "autoIdForSecurityObject",
            "toDelete",
            "servers",
            "security",
            "acls",
            "contentFormat",
        ],
    )?;
    let mut c = BootstrapConfig {
        delete: Vec::new(),
        discover: top
            .get("autoIdForSecurityObject")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        ..BootstrapConfig::default()
    };
    if let Some(v) = top.get("contentFormat").filter(|v| !v.is_null()) {
        return Err(format!(
            "contentFormat {v} is not supported (the client's preferred one is used)"
        ));
    }
    if let Some(Json::Array(paths)) = top.get("toDelete") {
        for p in paths {
            let s = p.as_str().ok_or("toDelete holds paths")?;
            c.delete
                .push(s.parse().map_err(|e| format!("toDelete {s:?}: {e}"))?);
        }
    }
    let instances = |key: &str| -> Result<Vec<(u16, &Json)>, String> {
        match top.get(key) {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(Json::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    k.parse::<u16>()
                        .map(|i| (i, v))
                        .map_err(|_| format!("{key}: {k:?} is not an instance id"))
                })
                .collect(),
            Some(_) => Err(format!("{key} must be an object {{\"0\": {{...}}}}")),
        }
    };
    for (i, v) in instances("security")? {
        let what = format!("security {i}");
        let f = fields(
            &what,
            v,
            &[
                "uri",
                "bootstrapServer",
                "securityMode",
                "publicKeyOrId",
                "serverPublicKey",
                "secretKey",
                "serverId",
                "clientOldOffTime",
                "bootstrapServerAccountTimeout",
            ],
        )?;
        let mode = f
            .get("securityMode")
            .and_then(|m| m.as_str())
            .and_then(mode_from_name)
            .ok_or(format!(
                "{what}: securityMode is PSK, RPK, X509, NO_SEC or EST"
            ))?;
        if f.get("secretKey").and_then(|k| k.as_str()) == Some(REDACTED) {
            return Err(format!(
                "{what}: secretKey {REDACTED:?} is a placeholder; give the key"
            ));
        }
        let id = bytes_from(
            &format!("{what} publicKeyOrId"),
            f.get("publicKeyOrId").copied(),
        )?;
        let identity = if mode == SecurityMode::Psk {
            String::from_utf8(id).map_err(|_| format!("{what}: a PSK identity is UTF-8 text"))?
        } else {
            hex(&id)
        };
        c.security.insert(
            i,
            SecurityInstance {
                uri: f
                    .get("uri")
                    .and_then(|u| u.as_str())
                    .ok_or(format!("{what}: uri missing"))?
                    .to_owned(),
                bootstrap_server: f
                    .get("bootstrapServer")
                    .and_then(|b| b.as_bool())
                    .unwrap_or(false),
                mode,
                identity,
                server_public_key: hex(&bytes_from(
                    &format!("{what} serverPublicKey"),
                    f.get("serverPublicKey").copied(),
                )?),
                secret_key: hex(&bytes_from(
                    &format!("{what} secretKey"),
                    f.get("secretKey").copied(),
                )?),
                short_server_id: uint(&what, f.get("serverId").copied())?,
                client_hold_off: uint(&what, f.get("clientOldOffTime").copied())?,
                bootstrap_account_timeout: uint(
                    &what,
                    f.get("bootstrapServerAccountTimeout").copied(),
                )?,
            },
        );
    }
    for (i, v) in instances("servers")? {
        let what = format!("servers {i}");
        let f = fields(
            &what,
            v,
            &[
                "shortId",
                "lifetime",
                "defaultMinPeriod",
                "defaultMaxPeriod",
                "notifIfDisabled",
                "binding",
            ],
        )?;
        let binding = match f.get("binding") {
            None | Some(Json::Null) => "U".to_owned(),
            Some(Json::String(b)) => b.clone(),
            Some(Json::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .ok_or(format!("{what}: binding letters are strings"))
                })
                .collect::<Result<String, String>>()?,
            Some(other) => return Err(format!("{what}: binding {other} is not U, UQ, ...")),
        };
        c.servers.insert(
            i,
            ServerInstance {
                short_server_id: uint(&what, f.get("shortId").copied())?
                    .ok_or(format!("{what}: shortId missing"))?,
                lifetime: uint(&what, f.get("lifetime").copied())?.unwrap_or(86_400),
                default_min_period: uint(&what, f.get("defaultMinPeriod").copied())?,
                default_max_period: uint(&what, f.get("defaultMaxPeriod").copied())?,
                notification_storing: f
                    .get("notifIfDisabled")
                    .and_then(|b| b.as_bool())
                    .unwrap_or(true),
                binding,
            },
        );
    }
    for (i, v) in instances("acls")? {
        let what = format!("acls {i}");
        let f = fields(
            &what,
            v,
            &["objectId", "objectInstanceId", "acls", "AccessControlOwner"],
        )?;
        let mut acl = BTreeMap::new();
        if let Some(Json::Object(m)) = f.get("acls") {
            for (k, r) in m {
                let ssid: u16 = k
                    .parse()
                    .map_err(|_| format!("{what}: {k:?} is not a Short Server ID"))?;
                acl.insert(ssid, uint(&what, Some(r))?.unwrap_or(0));
            }
        }
        c.acl.insert(
            i,
            AclInstance {
                object_id: uint(&what, f.get("objectId").copied())?
                    .ok_or(format!("{what}: objectId missing"))?,
                instance_id: uint(&what, f.get("objectInstanceId").copied())?
                    .ok_or(format!("{what}: objectInstanceId missing"))?,
                acl,
                owner: uint(&what, f.get("AccessControlOwner").copied())?.unwrap_or(u16::MAX),
            },
        );
    }
    Ok(c)
}

async fn bootstrap_list(State(st): St) -> HttpResponse {
    let all: Map<String, Json> = st
        .bootstrap
        .all()
        .iter()
        .filter_map(|(k, c)| match k {
            ConfigKey::Endpoint(ep) => Some((ep.clone(), bootstrap_json(c))),
            ConfigKey::Pattern(_) => None,
        })
        .collect();
    json_ok(Json::Object(all))
}

async fn bootstrap_post(State(st): St, Path(ep): Path<String>, body: Bytes) -> HttpResponse {
    let config = match serde_json::from_slice::<Json>(&body)
        .map_err(|e| e.to_string())
        .and_then(|j| bootstrap_from_json(&j))
    {
        Ok(c) => c,
        Err(e) => return text(StatusCode::BAD_REQUEST, e).into_response(),
    };
    match st.bootstrap.put(ConfigKey::Endpoint(ep), config) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e @ (StoreError::IdentityTaken { .. } | StoreError::Invalid { .. })) => {
            text(StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn bootstrap_delete(State(st): St, Path(ep): Path<String>) -> HttpResponse {
    match st.bootstrap.remove(&ConfigKey::Endpoint(ep.clone())) {
        Ok(Some(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(None) => text(StatusCode::NOT_FOUND, format!("no config for {ep}")).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

// ---------------------------------------------------------------------------------------
// Events: Leshan's EventServlet names and payloads

/// The endpoint an event concerns, its name and its data.
fn leshan_event(st: &Leshan, e: &ServerEvent) -> Option<(String, &'static str, Json)> {
    let registry: &Registry = &st.registry;
    let reg = |r: &Registration, sleeping: bool| {
        registration_json(
            &ClientEntry {
                registration: r.clone(),
                sleeping,
            },
            st.server.is_secure(&r.endpoint),
        )
    };
    let schema_of = |ep: &str| {
        st.server
            .registrations()
            .get(ep)
            .map(|e| declared_versions(&e.registration))
            .unwrap_or_default()
    };
    Some(match e {
        ServerEvent::Registered { registration, .. } => (
            registration.endpoint.clone(),
            "REGISTRATION",
            reg(registration, false),
        ),
        ServerEvent::Updated {
            registration: r, ..
        } => {
            let update = json!({
                "registrationId": r.id,
                "address": r.address.to_string(),
                "lifetime": r.lifetime,
                "objectLinks": object_links(r),
                "secure": st.server.is_secure(&r.endpoint),
                "additionalAttributes": {},
            });
            let sleeping = st
                .server
                .registrations()
                .get(&r.endpoint)
                .is_some_and(|e| e.sleeping);
            (
                r.endpoint.clone(),
                "UPDATED",
                json!({"registration": reg(r, sleeping), "update": update}),
            )
        }
        ServerEvent::Deregistered { registration: r }
        | ServerEvent::Expired { registration: r } => {
            (r.endpoint.clone(), "DEREGISTRATION", reg(r, false))
        }
        ServerEvent::Sleeping { endpoint } => {
            (endpoint.clone(), "SLEEPING", json!({"ep": endpoint}))
        }
        ServerEvent::Awake { endpoint } => (endpoint.clone(), "AWAKE", json!({"ep": endpoint})),
        ServerEvent::ObservationEnded { observation, .. } => {
            st.composite().remove(observation);
            return None;
        }
        ServerEvent::Notification {
            observation,
            endpoint,
            path,
            response,
            ..
        } => {
            let versions = schema_of(endpoint);
            let schema = registry.with_versions(&versions);
            let data = match &response.content {
                Some(Content::Node(node)) => json!({
                    "ep": endpoint,
                    "kind": "single",
                    "res": path.to_string(),
                    "val": node_json(&schema, path, node),
                }),
                Some(Content::Records(recs)) => {
                    let observed = st.composite().get(observation).cloned();
                    let val = match &observed {
                        Some(paths) => composite_json(&schema, paths, recs),
                        None => records_json(&schema, recs),
                    };
                    let paths: Vec<String> = match observed {
                        Some(paths) => paths.iter().map(ToString::to_string).collect(),
                        None => recs.iter().map(|r| r.path.to_string()).collect(),
                    };
                    json!({"ep": endpoint, "kind": "composite", "val": val, "paths": paths})
                }
                _ => return None,
            };
            (endpoint.clone(), "NOTIFICATION", data)
        }
        ServerEvent::Send {
            endpoint, records, ..
        } => {
            let versions = schema_of(endpoint);
            let schema = registry.with_versions(&versions);
            (
                endpoint.clone(),
                "SEND",
                json!({"ep": endpoint, "val": records_json(&schema, records)}),
            )
        }
        _ => return None,
    })
}

fn option_name(n: u16) -> String {
    match CoapOption::from(n) {
        CoapOption::IfMatch => "If-Match".into(),
        CoapOption::UriHost => "Uri-Host".into(),
        CoapOption::ETag => "ETag".into(),
        CoapOption::IfNoneMatch => "If-None-Match".into(),
        CoapOption::Observe => "Observe".into(),
        CoapOption::UriPort => "Uri-Port".into(),
        CoapOption::LocationPath => "Location-Path".into(),
        CoapOption::UriPath => "Uri-Path".into(),
        CoapOption::ContentFormat => "Content-Format".into(),
        CoapOption::MaxAge => "Max-Age".into(),
        CoapOption::UriQuery => "Uri-Query".into(),
        CoapOption::Accept => "Accept".into(),
        CoapOption::LocationQuery => "Location-Query".into(),
        CoapOption::Block2 => "Block2".into(),
        CoapOption::Block1 => "Block1".into(),
        CoapOption::Size1 => "Size1".into(),
        CoapOption::Size2 => "Size2".into(),
        _ => format!("Unknown ({n})"),
    }
}

fn is_text_option(n: u16) -> bool {
    matches!(n, 3 | 8 | 11 | 15 | 20 | 35 | 39)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A datagram of a client in Leshan's CoapMessage shape (plus `ep`); `None` when it is not
/// CoAP (DTLS records). `secret` says the payload belongs to a Security-object exchange.
fn coap_message(
    incoming: bool,
    at: std::time::SystemTime,
    bytes: &[u8],
    ep: &str,
    secret: bool,
) -> Option<Json> {
    let p = lwm2m_proto::coap::message::decode(bytes).ok()?;
    let mut m = Map::new();
    let timestamp = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    m.insert("timestamp".into(), json!(timestamp));
    m.insert("incoming".into(), json!(incoming));
    let kind = match p.header.get_type() {
        MessageType::Confirmable => "CON",
        MessageType::NonConfirmable => "NON",
        MessageType::Acknowledgement => "ACK",
        MessageType::Reset => "RST",
    };
    m.insert("type".into(), json!(kind));
    match p.header.code {
        MessageClass::Empty => {}
        MessageClass::Request(r) => {
            let name = format!("{r:?}").to_ascii_uppercase();
            m.insert("code".into(), json!(name));
        }
        c => {
            m.insert("code".into(), json!(c.to_string()));
        }
    }
    m.insert("mId".into(), json!(p.header.message_id));
    m.insert("token".into(), json!(hex(p.get_token())));
    let options: Vec<String> = p
        .options()
        .map(|(n, values)| {
            let shown: Vec<String> = values
                .iter()
                .map(|v| {
                    if is_text_option(*n) {
                        String::from_utf8_lossy(v).into_owned()
                    } else if v.len() <= 4 {
                        v.iter()
                            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                            .to_string()
                    } else {
                        format!("0x{}", hex(v))
                    }
                })
                .collect();
            format!("{}: {}", option_name(*n), shown.join(", "))
        })
        .collect();
    if !options.is_empty() {
        m.insert("options".into(), json!(options.join(" - ")));
    }
    if !p.payload.is_empty() {
        let payload = if secret {
            REDACTED.to_owned()
        } else {
            match std::str::from_utf8(&p.payload) {
                Ok(s) if s.chars().all(|c| (' '..='~').contains(&c)) => s.to_owned(),
                _ => format!("Hex:{}", hex(&p.payload)),
            }
        };
        m.insert("payload".into(), json!(payload));
    }
    m.insert("ep".into(), json!(ep));
    Some(Json::Object(m))
}

/// Whether a CoAP request's Uri-Path points into the Security object (`/0/...`), or its
/// OSCORE counterpart (`/21/...`), below any alternate path.
fn targets_secret_object(bytes: &[u8]) -> Option<Vec<u8>> {
    let p = lwm2m_proto::coap::message::decode(bytes).ok()?;
    if !matches!(p.header.code, MessageClass::Request(_)) {
        return None;
    }
    let segments: Vec<&[u8]> = p
        .get_option(CoapOption::UriPath)?
        .iter()
        .map(Vec::as_slice)
        .collect();
    let first_id = segments.iter().find(|s| s.iter().all(u8::is_ascii_digit))?;
    (*first_id == b"0" || *first_id == b"21").then(|| p.get_token().to_vec())
}

fn token_of(bytes: &[u8]) -> Option<Vec<u8>> {
    lwm2m_proto::coap::message::decode(bytes)
        .ok()
        .map(|p| p.get_token().to_vec())
}

async fn events(
    State(st): St,
    RawQuery(q): RawQuery,
) -> Sse<impl tokio_stream::Stream<Item = Result<axum::response::sse::Event, Infallible>>> {
    let ep = query_pairs(q.as_deref())
        .into_iter()
        .find(|(k, _)| k == "ep")
        .and_then(|(_, v)| v);
    let state = st.clone();
    // Tokens of requests into the Security object: their responses' payloads are hidden.
    let mut secret_tokens: HashSet<Vec<u8>> = HashSet::new();
    let delayed_ep = ep.clone();
    let delayed = BroadcastStream::new(st.delayed.subscribe()).filter_map(move |item| {
        let (endpoint, data) = item.ok()?;
        if delayed_ep.as_deref().is_some_and(|ep| ep != endpoint) {
            return None;
        }
        Some(Ok(axum::response::sse::Event::default()
            .event("REQUEST_RESPONSE")
            .data(data.to_string())))
    });
    let stream = BroadcastStream::new(st.bus.subscribe()).filter_map(move |item| {
        use axum::response::sse::Event as Sse;
        use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
        let event = match item {
            Ok(e) => e,
            // Not Leshan's, as in /api/event: this stream fell behind and lost events.
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                return Some(Ok(Sse::default()
                    .event("LAGGED")
                    .data(json!({"missed": n}).to_string())));
            }
        };
        match &*event {
            Event::Server(e) => {
                let (endpoint, name, data) = leshan_event(&state, e)?;
                if ep.as_deref().is_some_and(|ep| ep != endpoint) {
                    return None;
                }
                Some(Ok(Sse::default().event(name).data(data.to_string())))
            }
            Event::CoapLog(d) if d.role == Role::Server => {
                // Leshan traces CoAP messages only for a stream that names its endpoint.
                let ep = ep.as_deref()?;
                let entry = state.server.registrations().get(ep)?;
                if entry.registration.address != d.peer {
                    return None;
                }
                let mut secret = false;
                // Our requests into the Security object (the client's own requests, e.g. an
                // Update of /rd/0, are not).
                let ours = d.direction == Direction::Out;
                if let Some(token) = targets_secret_object(&d.bytes).filter(|_| ours) {
                    secret_tokens.insert(token);
                    secret = true;
                } else if let Some(token) = token_of(&d.bytes)
                    && !token.is_empty()
                    && secret_tokens.contains(&token)
                {
                    secret = true;
                }
                let incoming = d.direction == Direction::In;
                let data = coap_message(incoming, d.at, &d.bytes, ep, secret)?;
                Some(Ok(Sse::default().event("COAPLOG").data(data.to_string())))
            }
            _ => None,
        }
    });
    Sse::new(stream.merge(delayed)).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_round_trip_through_leshan_json() {
        let reg = Registry::embedded();
        let path = Lwm2mPath::instance(3, 0);
        let mut inst = Instance::new();
        inst.insert(
            ResourceId(0),
            ResourceValue::Single(Value::String("ACME".into())),
        );
        inst.insert(ResourceId(9), ResourceValue::Single(Value::Integer(90)));
        inst.insert(
            ResourceId(13),
            ResourceValue::Single(Value::Time(1_700_000_000)),
        );
        let mut errors = BTreeMap::new();
        errors.insert(ResourceInstanceId(0), Value::Integer(0));
        inst.insert(ResourceId(11), ResourceValue::Multiple(errors));
        let node = Node::Instance(inst);
        let j = node_json(&reg, &path, &node);
        assert_eq!(j["kind"], "instance");
        assert_eq!(j["id"], 0);
        let r = &j["resources"];
        assert_eq!(
            r[0],
            json!({"id": 0, "kind": "singleResource", "type": "STRING", "value": "ACME"})
        );
        assert_eq!(r[1]["value"], "90");
        assert_eq!(
            r[2],
            json!({"id": 11, "kind": "multiResource", "type": "INTEGER", "values": {"0": "0"}})
        );
        assert_eq!(r[3]["value"], 1_700_000_000_000_i64);
        assert_eq!(r[3]["type"], "TIME");
        assert_eq!(parse_node(&reg, &path, &j).unwrap(), node);

        let f = Lwm2mPath::resource(3303, 0, 5700);
        let j = node_json(
            &reg,
            &f,
            &Node::Resource(ResourceValue::Single(Value::Float(20.0))),
        );
        assert_eq!(j["value"], "20.0");
        // Without "type": the registry's.
        let written = parse_node(
            &reg,
            &f,
            &json!({"id": 5700, "kind": "singleResource", "value": 21.5}),
        );
        assert_eq!(
            written.unwrap(),
            Node::Resource(ResourceValue::Single(Value::Float(21.5)))
        );
        assert!(parse_node(&reg, &f, &json!({"id": 5701, "value": "x"})).is_err());
        assert!(parse_node(&reg, &f, &json!({"id": 5700, "value": "warm"})).is_err());
        assert!(parse_node(&reg, &Lwm2mPath::Object(ObjectId(3)), &json!({})).is_err());
    }

    #[test]
    fn secrets_are_never_shown() {
        let reg = Registry::embedded();
        let p = Lwm2mPath::resource(0, 1, 5);
        let j = node_json(
            &reg,
            &p,
            &Node::Resource(ResourceValue::Single(Value::Opaque(vec![1, 2, 3]))),
        );
        assert_eq!(j["value"], REDACTED);
        let info = SecurityInfo {
            endpoint: "a".into(),
            credentials: Credentials::Psk {
                identity: "id".into(),
                key: "c0ffee".into(),
            },
        };
        let shown = security_json(&info);
        assert!(!shown.to_string().contains("c0ffee"));
        assert_eq!(security_from_json(&json!({"endpoint": "a", "tls": {"mode": "psk", "details": {"identity": "id", "key": "c0ffee"}}})).unwrap(), info);
        assert!(
            security_from_json(&shown).is_err(),
            "a redacted key is refused"
        );
    }

    #[test]
    fn bootstrap_configs_round_trip_without_their_keys() {
        let leshan = json!({
            "autoIdForSecurityObject": false,
            "toDelete": ["/0", "/1"],
            "servers": {"0": {"shortId": 123, "lifetime": 300, "defaultMinPeriod": 1,
                              "notifIfDisabled": true, "binding": "U", "disableTimeout": null}},
            "security": {
                "0": {"uri": "coaps://127.0.0.1:5684", "bootstrapServer": false,
                      "securityMode": "PSK", "publicKeyOrId": [105, 100],
                      "serverPublicKey": [], "secretKey": [1, 2, 255], "serverId": 123,
                      "smsSecurityMode": "NO_SEC", "smsBindingKeyParam": [], "serverSmsNumber": ""},
                "1": {"uri": "coap://127.0.0.1:5783", "bootstrapServer": true,
                      "securityMode": "NO_SEC"}},
            "acls": {},
            "oscore": {}
        });
        let c = bootstrap_from_json(&leshan).unwrap();
        assert_eq!(c.security[&0].identity, "id");
        assert_eq!(c.security[&0].secret_key, "0102ff");
        assert_eq!(c.servers[&0].short_server_id, 123);
        assert_eq!(c.delete.len(), 2);
        let shown = bootstrap_json(&c);
        assert_eq!(shown["security"]["0"]["secretKey"], REDACTED);
        assert_eq!(shown["security"]["0"]["publicKeyOrId"], json!([105, 100]));
        assert_eq!(shown["servers"]["0"]["shortId"], 123);
        assert!(
            bootstrap_from_json(&shown).is_err(),
            "the placeholder is refused"
        );
        let mut sms = leshan.clone();
        sms["security"]["0"]["smsBindingKeySecret"] = json!([1]);
        assert!(
            bootstrap_from_json(&sms)
                .unwrap_err()
                .contains("smsBindingKeySecret")
        );
    }

    #[test]
    fn status_names_and_formats_are_leshans() {
        assert_eq!(status_name((2, 5)), "CONTENT");
        assert_eq!(status_name((4, 4)), "NOT_FOUND");
        assert_eq!(status_name((5, 3)), "UNKNOWN(503)");
        assert_eq!(
            format_from_name("SENML_CBOR").unwrap(),
            ContentFormat::SenmlCbor
        );
        assert_eq!(
            format_from_name("LWM2M_CBOR").unwrap(),
            ContentFormat::Lwm2mCbor
        );
        assert_eq!(format_from_name("JSON").unwrap(), ContentFormat::OmaJson);
        assert_eq!(format_from_name("TLV").unwrap(), ContentFormat::Tlv);
        assert!(format_from_name("XML").is_err());
        let p = Params::parse(Some("timeout=2&format=TEXT&active&pmin=3")).unwrap();
        assert_eq!(p.timeout, Duration::from_secs(2));
        assert!(p.active);
        assert_eq!(p.rest, vec!["pmin=3"]);
        assert_eq!(
            Params::parse(Some("timeout=x")).unwrap().timeout,
            LESHAN_TIMEOUT
        );
    }
}

#[cfg(test)]
mod composite_tests {
    use super::*;

    fn rec(p: &str, v: Value) -> Record {
        Record {
            path: p.parse().unwrap(),
            value: Some(v),
            time: None,
        }
    }

    #[test]
    fn a_composite_answer_has_a_node_for_each_path_asked() {
        let reg = Registry::embedded();
        let records = vec![
            rec("/1/0/0", Value::Integer(1)),
            rec("/1/0/1", Value::Integer(86400)),
            rec("/1/0/7", Value::String("U".into())),
            rec("/3/0/11/0", Value::Integer(0)),
        ];
        let paths: Vec<Lwm2mPath> = ["/1/0", "/1/0/1", "/3/0/11/0", "/3339/0/5522"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let j = composite_json(&reg, &paths, &records);
        assert_eq!(j["/1/0"]["kind"], "instance", "{j}");
        assert_eq!(j["/1/0/1"]["value"], "86400", "{j}");
        assert_eq!(j["/3/0/11/0"]["kind"], "resourceInstance", "{j}");
        assert!(j.get("/3339/0/5522").is_none(), "{j}");
        // The root: Leshan's root node, its objects.
        let j = composite_json(&reg, &[Lwm2mPath::Root], &records);
        assert_eq!(j["/"]["kind"], "root", "{j}");
        let objects = j["/"]["objects"].as_array().unwrap();
        assert_eq!(objects.len(), 2, "{j}");
        assert_eq!(objects[0]["kind"], "obj", "{j}");
        assert_eq!(objects[1]["id"], 3, "{j}");
    }
}
