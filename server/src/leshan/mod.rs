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
use crate::query::query_pairs;
use crate::registrations::ClientEntry;
use crate::rest::{ApiState, REDACTED};
use crate::store::{ConfigKey, Credentials, SecurityInfo, StoreError};
use lwm2m_proto::bootstrap::{
    AclInstance, BootstrapConfig, SecurityInstance, SecurityMode, ServerInstance,
};

mod bootstrap;
mod events;
mod models;
mod nodes;
mod registrations;
mod responses;
mod security;

pub use bootstrap::*;
use events::*;
pub use models::*;
pub use nodes::*;
pub use registrations::*;
use responses::*;
pub use security::*;

#[cfg(test)]
mod composite_tests;
#[cfg(test)]
mod tests;

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

/// The routes under `/leshan/api/`, with their state; [`crate::http::router`] merges them
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

/// Why a request's route or query is not one of an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A `format`, `nodeformat` or `pathformat` that names no content format.
    #[error(
        "unknown format {name:?}; known: TEXT, TLV, JSON, SENML_JSON, SENML_CBOR, CBOR, OPAQUE, LWM2M_CBOR"
    )]
    Format {
        /// The name as written.
        name: String,
    },
    /// An entry of `paths` that is not an LwM2M path.
    #[error("bad path {text:?}: {source}")]
    QueryPath {
        /// The entry (with a leading `/`).
        text: String,
        /// Why it is not a path.
        source: lwm2m_proto::ids::PathError,
    },
    /// A route whose ids are not an LwM2M path.
    #[error("bad LwM2M path {text}: {source}")]
    RoutePath {
        /// The ids of the route, `/`-joined.
        text: String,
        /// Why they are not a path.
        source: lwm2m_proto::ids::PathError,
    },
}

/// A format from Leshan's names (`TLV`, `SENML_CBOR`, `LWM2M_CBOR`, ...) or ours.
fn format_from_name(s: &str) -> Result<ContentFormat, RequestError> {
    let ours = s.to_ascii_lowercase().replace('_', "-");
    ContentFormat::from_name(&ours).ok_or_else(|| RequestError::Format { name: s.to_owned() })
}

impl Params {
    fn parse(raw: Option<&str>) -> Result<Self, RequestError> {
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
                        let path = s
                            .parse()
                            .map_err(|source| RequestError::QueryPath { text: s, source })?;
                        p.paths.push(path);
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

fn parse_target(tail: &str) -> Result<Target, RequestError> {
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
    let path = Lwm2mPath::from_segments(ids).map_err(|source| RequestError::RoutePath {
        text: format!("/{}", ids.join("/")),
        source,
    })?;
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
