//! The REST API (axum): clients and their objects, security credentials, bootstrap
//! configurations, the object registry, and server-sent events. Every route needs
//! `Authorization: Bearer TOKEN`; errors are `{"error": "..."}` with a fitting status.
//!
//! | method | route | what |
//! |---|---|---|
//! | GET | `/api/clients` | every registration |
//! | GET | `/api/clients/{ep}` | one registration |
//! | GET | `/api/clients/{ep}/tree` | the whole device: one Read-Composite of `/` (1.1+), else one Read per announced object (but Security), all at once |
//! | GET | `/api/clients/{ep}/{path}` | Read (`?format=tlv`) |
//! | PUT | `/api/clients/{ep}/{path}` | Write, replace (`?replace=false`: partial update) |
//! | POST | `/api/clients/{ep}/{O}` | Create |
//! | POST | `/api/clients/{ep}/{O}/{I}` | Write, partial update |
//! | POST | `/api/clients/{ep}/{O}/{I}/{R}` | Execute (`{"args": "0='x'"}` or text) |
//! | DELETE | `/api/clients/{ep}/{path}` | Delete |
//! | GET | `/api/clients/{ep}/{path}/discover` | Discover |
//! | PUT | `/api/clients/{ep}/{path}/attributes?pmin=..` | Write-Attributes |
//! | POST/DELETE | `/api/clients/{ep}/{path}/observe` | Observe / cancel (`?active=true`) |
//! | GET/POST | `/api/clients/{ep}/composite` | Read-Composite (`?paths=` or `{"paths": [..]}`) |
//! | PUT/POST | `/api/clients/{ep}/composite` | Write-Composite (`{"/3/0/14": "+02"}`) |
//! | POST/DELETE | `/api/clients/{ep}/composite/observe` | Observe-Composite / cancel |
//! | GET | `/api/objectspecs`, `/api/objectspecs/{id}` | the object registry |
//! | GET/PUT | `/api/security/clients` | credentials (keys redacted) / add or replace |
//! | GET/DELETE | `/api/security/clients/{ep}` | one endpoint's credentials |
//! | GET/PUT/DELETE | `/api/bootstrap` | configurations (`?endpoint=` / `?pattern=` to delete) |
//! | GET/PUT/DELETE | `/api/bootstrap/{ep}` | one endpoint's configuration (`?resolve=true`) |
//! | GET | `/api/event` | server-sent events (`?ep=NAME`, `?coaplog=true`) |
//!
//! [`crate::http::router`] serves these routes with the Leshan-compatible ones of
//! [`crate::leshan`] (`/leshan/api/...`), behind the same token.
//!
//! Client operations wait `?timeout=SECONDS` (default 30) for the client: 504 after that,
//! 502 when it answers an error code (the CoAP code is in `coap_code`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use axum::{Json as JsonBody, Router};
use lwm2m_proto::bootstrap::BootstrapConfig;
use lwm2m_proto::coap::ExchangeError;
use lwm2m_proto::codec::link::AttributeUpdate;
use lwm2m_proto::registration::Lwm2mVersion;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{Content, OpError, Operation, Response};
use lwm2m_proto::{ContentFormat, Instance, Lwm2mPath, ObjectId, Record, Schema};
use serde_json::{Value as Json, json};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::driver::{DriverError, ServerHandle};
use crate::events::{Event, EventBus};
use crate::json;
use crate::query::query_pairs;
use crate::store::{BootstrapStore, ConfigKey, SecurityInfo, SecurityStore, StoreError};

/// Shown instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// How long a client operation waits by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the API serves.
#[derive(Clone)]
pub struct ApiState {
    /// The LwM2M Server.
    pub server: ServerHandle,
    /// Credentials.
    pub security: Arc<dyn SecurityStore>,
    /// Bootstrap configurations.
    pub bootstrap: Arc<dyn BootstrapStore>,
    /// Object definitions.
    pub registry: Arc<Registry>,
    /// Where every driver reports.
    pub bus: EventBus,
    /// The bearer token every request must show.
    pub token: String,
    /// The web UI's and CORS options ([`crate::ui`]).
    pub web: crate::ui::WebOptions,
    /// This instance's membership of a cluster (`serve --store redis://`): client
    /// operations about clients another instance owns are forwarded to it.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

type St = State<Arc<ApiState>>;

/// Our API's routes (`/api/...`) with their state; [`crate::http::router`] serves them with
/// the Leshan routes, `/metrics`, the bearer-token check and the web UI.
pub(crate) fn routes(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/clients", get(list_clients))
        .route("/api/clients/{ep}", get(get_client))
        .route(
            "/api/clients/{ep}/{*path}",
            get(client_get)
                .put(client_put)
                .post(client_post)
                .delete(client_delete),
        )
        .route("/api/objectspecs", get(object_specs))
        .route("/api/objectspecs/{id}", get(object_spec))
        .route(
            "/api/security/clients",
            get(security_list).put(security_put),
        )
        .route(
            "/api/security/clients/{ep}",
            get(security_get).delete(security_delete),
        )
        .route(
            "/api/bootstrap",
            get(bootstrap_list)
                .put(bootstrap_put)
                .delete(bootstrap_delete),
        )
        .route(
            "/api/bootstrap/{ep}",
            get(bootstrap_get)
                .put(bootstrap_put_endpoint)
                .delete(bootstrap_delete_endpoint),
        )
        .route("/api/event", get(events))
        .with_state(state)
}

/// An error answer: `{"error": message}` plus details.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Map<String, Json>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), Json::String(message.into()));
        Self { status, body }
    }

    fn with(mut self, key: &str, value: Json) -> Self {
        self.body.insert(key.into(), value);
        self
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        (self.status, JsonBody(Json::Object(self.body))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::IdentityTaken { .. } => StatusCode::CONFLICT,
            StoreError::Invalid { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<json::BodyError> for ApiError {
    fn from(e: json::BodyError) -> Self {
        Self::bad(e.to_string())
    }
}

impl From<DriverError> for ApiError {
    fn from(e: DriverError) -> Self {
        let DriverError::Op(op) = &e else {
            return Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        };
        let status = match op {
            OpError::UnknownEndpoint { .. } => StatusCode::NOT_FOUND,
            OpError::Invalid { .. } | OpError::Encode(_) => StatusCode::BAD_REQUEST,
            OpError::QueueFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            OpError::QueueTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            OpError::Exchange {
                error: ExchangeError::Timeout { .. } | ExchangeError::NoResponse { .. },
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        let err = Self::new(status, e.to_string());
        match op {
            OpError::Decode { code, .. } => err.with("coap_code", json!(json::code_text(*code))),
            _ => err,
        }
    }
}

type ApiResult = Result<HttpResponse, ApiError>;

fn ok(j: Json) -> ApiResult {
    Ok(JsonBody(j).into_response())
}

fn parse_body(body: &Bytes) -> Result<Json, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))
}

/// The control parameters of a client operation.
struct Params {
    format: Option<ContentFormat>,
    timeout: Duration,
    replace: bool,
    active: bool,
    paths: Vec<Lwm2mPath>,
    /// Everything else (Write-Attributes).
    rest: Vec<String>,
}

impl Params {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut p = Params {
            format: None,
            timeout: DEFAULT_TIMEOUT,
            replace: true,
            active: false,
            paths: Vec::new(),
            rest: Vec::new(),
        };
        let flag = |k: &str, v: Option<&str>| match v {
            None | Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(v) => Err(ApiError::bad(format!("{k}={v}: expected true or false"))),
        };
        for (k, v) in query_pairs(raw) {
            match k.as_str() {
                "format" => {
                    let v = v.unwrap_or_default();
                    p.format = Some(ContentFormat::from_name(&v).ok_or_else(|| {
                        let names: Vec<_> = ContentFormat::ALL.iter().map(|f| f.name()).collect();
                        ApiError::bad(format!("unknown format {v:?}; known: {}", names.join(", ")))
                    })?);
                }
                "timeout" => {
                    let v = v.unwrap_or_default();
                    let secs: f64 = v
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                        .ok_or_else(|| ApiError::bad(format!("timeout={v}: seconds, 0 to 3600")))?;
                    p.timeout = Duration::from_secs_f64(secs);
                }
                "replace" => p.replace = flag("replace", v.as_deref())?,
                "active" => p.active = flag("active", v.as_deref())?,
                "paths" => {
                    for s in v.unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
                        p.paths.push(parse_path(s)?);
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
}

fn parse_path(s: &str) -> Result<Lwm2mPath, ApiError> {
    let s = if s.starts_with('/') {
        s.to_owned()
    } else {
        format!("/{s}")
    };
    s.parse()
        .map_err(|e| ApiError::bad(format!("bad LwM2M path {s:?}: {e}")))
}

/// What `/api/clients/{ep}/{*path}` names.
#[derive(Debug, PartialEq)]
enum Target {
    Tree,
    Composite { observe: bool },
    Path { path: Lwm2mPath, action: Action },
}

#[derive(Debug, PartialEq)]
enum Action {
    Plain,
    Discover,
    Observe,
    Attributes,
}

fn parse_target(tail: &str) -> Result<Target, ApiError> {
    let segments: Vec<&str> = tail.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["tree"] => return Ok(Target::Tree),
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
        .map_err(|e| ApiError::bad(format!("bad LwM2M path /{}: {e}", ids.join("/"))))?;
    Ok(Target::Path { path, action })
}

/// A client's registration and the schema its payloads are typed with.
struct Client<'a> {
    endpoint: String,
    st: &'a ApiState,
    versions: BTreeMap<ObjectId, String>,
}

impl<'a> Client<'a> {
    fn find(st: &'a ApiState, endpoint: &str) -> Result<Self, ApiError> {
        let entry = st.server.registrations().get(endpoint).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no registration for endpoint {endpoint:?}"),
            )
        })?;
        Ok(Self {
            endpoint: endpoint.to_owned(),
            st,
            versions: json::declared_versions(&entry.registration),
        })
    }

    fn schema(&self) -> impl Schema + '_ {
        self.st.registry.with_versions(&self.versions)
    }

    /// Runs the operation; a 2.xx answer as JSON, an error code as 502.
    async fn run(
        &self,
        operation: Operation,
        path: Option<&Lwm2mPath>,
        timeout: Duration,
    ) -> ApiResult {
        let r = self.call(operation, timeout).await?;
        let body = self.response_json(path, &r);
        if r.is_success() {
            ok(body)
        } else {
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("{} answered {}", self.endpoint, json::code_text(r.code)),
            )
            .with("coap_code", json!(json::code_text(r.code)))
            .with("response", body))
        }
    }

    async fn call(&self, operation: Operation, timeout: Duration) -> Result<Response, ApiError> {
        match tokio::time::timeout(timeout, self.st.server.request(&self.endpoint, operation)).await
        {
            Ok(r) => Ok(r?),
            Err(_) => Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("no answer from {} within {timeout:?}", self.endpoint),
            )),
        }
    }

    fn response_json(&self, path: Option<&Lwm2mPath>, r: &Response) -> Json {
        json::response(&self.st.registry, &self.schema(), path, r)
    }
}

async fn list_clients(State(st): St) -> JsonBody<Json> {
    JsonBody(Json::Array(
        st.server
            .registrations()
            .all()
            .iter()
            .map(json::registration)
            .collect(),
    ))
}

async fn get_client(State(st): St, Path(ep): Path<String>) -> ApiResult {
    match st.server.registrations().get(&ep) {
        Some(e) => ok(json::registration(&e)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no registration for endpoint {ep:?}"),
        )),
    }
}

async fn client_get(
    State(st): St,
    Path((ep, tail)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let params = Params::parse(q.as_deref())?;
    let client = Client::find(&st, &ep)?;
    match parse_target(&tail)? {
        Target::Tree => tree(&client, &params).await,
        Target::Composite { observe: false } => {
            read_composite(&client, params.paths.clone(), &params).await
        }
        Target::Path {
            path,
            action: Action::Plain,
        } => {
            client
                .run(
                    Operation::Read {
                        path,
                        format: params.format,
                    },
                    Some(&path),
                    params.timeout,
                )
                .await
        }
        Target::Path {
            path,
            action: Action::Discover,
        } => {
            client
                .run(Operation::Discover { path }, Some(&path), params.timeout)
                .await
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST or DELETE to observe",
        )),
    }
}

async fn read_composite(client: &Client<'_>, paths: Vec<Lwm2mPath>, params: &Params) -> ApiResult {
    if paths.is_empty() {
        return Err(ApiError::bad(
            "Read-Composite needs paths (?paths=/3/0/0,/3/0/9 or {\"paths\": [..]})",
        ));
    }
    client
        .run(
            Operation::ReadComposite {
                paths,
                format: params.format,
            },
            None,
            params.timeout,
        )
        .await
}

/// The device-level read (Security aside, Core TS 1.1 Appendix E.1: LwM2M Servers do not
/// read it). A 1.1+ client gets one Read-Composite of `/` (Core TS 1.1 §6.3.8): one
/// exchange, its records split by object. A 1.0 client, or one that refuses the composite
/// (an error code, a format it does not speak), gets one Read per announced object, all
/// handed to the server at once: the CoAP layer sends them as its NSTART allows (RFC 7252
/// §4.7), each as soon as the one before is answered, with no round trip through this
/// handler in between.
async fn tree(client: &Client<'_>, params: &Params) -> ApiResult {
    let Some(entry) = client.st.server.registrations().get(&client.endpoint) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the client de-registered",
        ));
    };
    let registration = &entry.registration;
    let announced: Vec<ObjectId> = registration
        .links
        .objects
        .keys()
        .copied()
        .filter(|o| o.0 != 0)
        .collect();
    let composite_format = params.format.is_none_or(|f| {
        matches!(
            f,
            ContentFormat::SenmlJson | ContentFormat::SenmlCbor | ContentFormat::Lwm2mCbor
        )
    });
    let mut refused = None;
    if registration.version >= Lwm2mVersion::V1_1 && composite_format {
        let op = Operation::ReadComposite {
            paths: vec![Lwm2mPath::Root],
            format: params.format,
        };
        match client.call(op, params.timeout).await {
            Ok(r) if r.is_success() => return ok(tree_of_records(client, &announced, &r)),
            Ok(r) => refused = Some(json!(json::code_text(r.code))),
            // No answer in time: reading object by object would wait as long again.
            Err(e) if e.status == StatusCode::GATEWAY_TIMEOUT => return Err(e),
            Err(e) => refused = Some(Json::Object(e.body)),
        }
    }
    let name = |o: ObjectId| client.st.registry.object(o).map(|d| d.name.clone());
    let reads = announced.iter().map(|&object| async move {
        let path = Lwm2mPath::Object(object);
        let op = Operation::Read {
            path,
            format: params.format,
        };
        let mut item = match client.call(op, params.timeout).await {
            Ok(r) => client.response_json(Some(&path), &r),
            Err(e) => Json::Object(e.body),
        };
        if let Json::Object(m) = &mut item {
            m.insert("name".into(), json!(name(object)));
        }
        (object.0.to_string(), item)
    });
    let objects: serde_json::Map<String, Json> =
        futures::future::join_all(reads).await.into_iter().collect();
    let mut body = json!({
        "endpoint": client.endpoint,
        "read": "per object",
        "requests": announced.len(),
        "objects": objects,
    });
    if let (Some(why), Json::Object(m)) = (refused, &mut body) {
        m.insert("composite_refused".into(), why);
    }
    ok(body)
}

/// The device tree from the answer to a Read-Composite of `/`: the records of each object
/// (every announced one, and any other the client answered but Security) under it.
fn tree_of_records(client: &Client<'_>, announced: &[ObjectId], r: &Response) -> Json {
    let records = match &r.content {
        Some(Content::Records(records)) => records.as_slice(),
        _ => &[],
    };
    let mut by_object: BTreeMap<ObjectId, Vec<Record>> =
        announced.iter().map(|&o| (o, Vec::new())).collect();
    for record in records {
        match record.path.object_id() {
            Some(o) if o.0 != 0 => by_object.entry(o).or_default().push(record.clone()),
            _ => {}
        }
    }
    let schema = client.schema();
    let objects: serde_json::Map<String, Json> = by_object
        .into_iter()
        .map(|(o, records)| {
            let item = json!({
                "code": json::code_text(r.code),
                "format": r.format.map(|f| f.name()),
                "name": client.st.registry.object(o).map(|d| d.name.clone()),
                "nodes": json::records(&client.st.registry, &schema, &records),
            });
            (o.0.to_string(), item)
        })
        .collect();
    json!({
        "endpoint": client.endpoint,
        "read": "composite",
        "requests": 1,
        "format": r.format.map(|f| f.name()),
        "payload_len": r.payload_len,
        "findings": r.findings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "objects": objects,
    })
}

async fn client_put(
    State(st): St,
    Path((ep, tail)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult {
    let params = Params::parse(q.as_deref())?;
    let client = Client::find(&st, &ep)?;
    match parse_target(&tail)? {
        Target::Path {
            path,
            action: Action::Plain,
        } => {
            let node = json::node_from(&client.schema(), &path, &parse_body(&body)?)?;
            let op = Operation::Write {
                path,
                node,
                replace: params.replace,
                format: params.format,
            };
            client.run(op, Some(&path), params.timeout).await
        }
        Target::Path {
            path,
            action: Action::Attributes,
        } => {
            let attributes = AttributeUpdate::from_query(&params.rest)
                .map_err(|e| ApiError::bad(format!("attributes: {e}")))?;
            client
                .run(
                    Operation::WriteAttributes { path, attributes },
                    Some(&path),
                    params.timeout,
                )
                .await
        }
        Target::Composite { observe: false } => write_composite(&client, &body, &params).await,
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "PUT writes a path, its attributes, or a composite",
        )),
    }
}

async fn write_composite(client: &Client<'_>, body: &Bytes, params: &Params) -> ApiResult {
    let records = json::records_from(&client.schema(), &parse_body(body)?)?;
    client
        .run(
            Operation::WriteComposite {
                records,
                format: params.format,
            },
            None,
            params.timeout,
        )
        .await
}

fn body_paths(body: &Bytes, params: &Params) -> Result<Vec<Lwm2mPath>, ApiError> {
    if body.is_empty() {
        return Ok(params.paths.clone());
    }
    let j = parse_body(body)?;
    let Some(Json::Array(items)) = j.get("paths") else {
        return Err(ApiError::bad("expected {\"paths\": [\"/3/0/0\", ...]}"));
    };
    items
        .iter()
        .map(|p| {
            p.as_str()
                .ok_or_else(|| ApiError::bad("paths must be strings"))
                .and_then(parse_path)
        })
        .collect()
}

async fn client_post(
    State(st): St,
    Path((ep, tail)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult {
    let params = Params::parse(q.as_deref())?;
    let client = Client::find(&st, &ep)?;
    let t = params.timeout;
    match parse_target(&tail)? {
        Target::Composite { observe: false } => {
            let is_read = body.is_empty()
                || serde_json::from_slice::<Json>(&body).is_ok_and(|j| j.get("paths").is_some());
            if is_read {
                read_composite(&client, body_paths(&body, &params)?, &params).await
            } else {
                write_composite(&client, &body, &params).await
            }
        }
        Target::Composite { observe: true } => {
            let paths = body_paths(&body, &params)?;
            client
                .run(
                    Operation::ObserveComposite {
                        paths,
                        format: params.format,
                    },
                    None,
                    t,
                )
                .await
        }
        Target::Path {
            path,
            action: Action::Observe,
        } => {
            client
                .run(
                    Operation::Observe {
                        path,
                        format: params.format,
                    },
                    Some(&path),
                    t,
                )
                .await
        }
        Target::Path {
            path: Lwm2mPath::Object(object),
            action: Action::Plain,
        } => {
            let (instance, resources) = create_body(&client.schema(), object, &parse_body(&body)?)?;
            let op = Operation::Create {
                object,
                instance,
                resources,
                format: params.format,
            };
            client.run(op, Some(&Lwm2mPath::Object(object)), t).await
        }
        Target::Path {
            path: path @ Lwm2mPath::Instance(..),
            action: Action::Plain,
        } => {
            let node = json::node_from(&client.schema(), &path, &parse_body(&body)?)?;
            let op = Operation::Write {
                path,
                node,
                replace: false,
                format: params.format,
            };
            client.run(op, Some(&path), t).await
        }
        Target::Path {
            path: path @ Lwm2mPath::Resource(..),
            action: Action::Plain,
        } => {
            let args = execute_args(&body)?;
            client
                .run(Operation::Execute { path, args }, Some(&path), t)
                .await
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST creates (/O), partially updates (/O/I), executes (/O/I/R), observes (.../observe) or runs a composite",
        )),
    }
}

/// Execute arguments: `{"args": "0='x',1"}`, plain text, or nothing.
fn execute_args(body: &Bytes) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(m)) => match m.get("args") {
            Some(Json::String(s)) => Ok(Some(s.clone())),
            None | Some(Json::Null) => Ok(None),
            Some(_) => Err(ApiError::bad("\"args\" must be a string like \"0='x',1\"")),
        },
        Ok(_) => Err(ApiError::bad("expected {\"args\": \"...\"} or plain text")),
        Err(_) => std::str::from_utf8(body)
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|_| ApiError::bad("the arguments are not UTF-8")),
    }
}

/// Create body: `{"instance": 5, "resources": {"5700": 21.5}}` (instance optional), or
/// records with full paths `{"/3303/5/5700": 21.5}` (the instance from the paths).
fn create_body(
    schema: &dyn Schema,
    object: ObjectId,
    j: &Json,
) -> Result<(Option<lwm2m_proto::InstanceId>, Instance), ApiError> {
    let to_instance = |path: Lwm2mPath, node| match node {
        lwm2m_proto::Node::Instance(i) => Ok(i),
        other => Err(ApiError::bad(format!(
            "expected an instance at {path}, got {}",
            other.kind()
        ))),
    };
    if let Some(resources) = j.get("resources") {
        let instance = match j.get("instance") {
            None | Some(Json::Null) => None,
            Some(v) => Some(lwm2m_proto::InstanceId(
                v.as_u64()
                    .and_then(|i| u16::try_from(i).ok())
                    .ok_or_else(|| ApiError::bad("\"instance\" must be 0..65535"))?,
            )),
        };
        let Json::Object(m) = resources else {
            return Err(ApiError::bad(
                "\"resources\" must be an object {\"R\": value}",
            ));
        };
        // Typed at instance 0 (or the requested one): only the resource ids matter.
        let base = Lwm2mPath::Instance(object, instance.unwrap_or(lwm2m_proto::InstanceId(0)));
        let full: serde_json::Map<String, Json> = m
            .iter()
            .map(|(r, v)| (format!("{base}/{r}"), v.clone()))
            .collect();
        let node = json::node_from(schema, &base, &Json::Object(full))?;
        return Ok((instance, to_instance(base, node)?));
    }
    let records = json::records_from(schema, j)?;
    let instances: std::collections::BTreeSet<_> = records
        .iter()
        .filter_map(|r| r.path.instance_id())
        .collect();
    let (Some(i), 1) = (instances.first().copied(), instances.len()) else {
        return Err(ApiError::bad(
            "the paths must name one instance of the object, e.g. {\"/3303/0/5700\": 21.5}",
        ));
    };
    let base = Lwm2mPath::Instance(object, i);
    let node = lwm2m_proto::content::records_to_node(&base, &records, schema)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    Ok((Some(i), to_instance(base, node)?))
}

async fn client_delete(
    State(st): St,
    Path((ep, tail)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let params = Params::parse(q.as_deref())?;
    let client = Client::find(&st, &ep)?;
    let observed = match parse_target(&tail)? {
        Target::Path {
            path,
            action: Action::Plain,
        } => {
            return client
                .run(Operation::Delete { path }, Some(&path), params.timeout)
                .await;
        }
        Target::Path {
            path,
            action: Action::Observe,
        } => vec![path],
        Target::Composite { observe: true } => params.paths.clone(),
        _ => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "DELETE removes an instance or an observation",
            ));
        }
    };
    let observations = st.server.observations(&ep).await?;
    let matching: Vec<_> = observations
        .into_iter()
        .filter(|(_, paths)| *paths == observed)
        .map(|(id, _)| id)
        .collect();
    if matching.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no observation of {observed:?} on {ep}"),
        ));
    }
    let mut cancelled = Vec::new();
    let mut answers = Vec::new();
    for observation in matching {
        let op = Operation::CancelObservation {
            observation,
            active: params.active,
        };
        let r = client.call(op, params.timeout).await?;
        cancelled.push(observation.0);
        answers.push(client.response_json(None, &r));
    }
    // The client's answers to active cancellations (passive ones: code 0.00, nothing sent).
    ok(json!({"cancelled": cancelled, "active": params.active, "responses": answers}))
}

async fn object_specs(State(st): St) -> JsonBody<Json> {
    JsonBody(json!(st.registry.objects().collect::<Vec<_>>()))
}

async fn object_spec(State(st): St, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    let id: u16 = id
        .parse()
        .map_err(|_| ApiError::bad(format!("{id:?} is not an object id")))?;
    let version = query_pairs(q.as_deref())
        .into_iter()
        .find(|(k, _)| k == "version")
        .and_then(|(_, v)| v);
    let def = match &version {
        Some(v) => st.registry.object_version(ObjectId(id), v),
        None => st.registry.object(ObjectId(id)),
    };
    match def {
        Some(d) => ok(json!(d)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("object {id} (version {version:?}) is not in the registry"),
        )),
    }
}

async fn security_list(State(st): St) -> JsonBody<Json> {
    JsonBody(json!(
        st.security
            .all()
            .iter()
            .map(SecurityInfo::redacted)
            .collect::<Vec<_>>()
    ))
}

async fn security_put(State(st): St, body: Bytes) -> ApiResult {
    let info: SecurityInfo = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("not a security info: {e}")))?;
    let shown = info.redacted();
    let old = st.security.put(info)?;
    let status = if old.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, JsonBody(json!(shown))).into_response())
}

async fn security_get(State(st): St, Path(ep): Path<String>) -> ApiResult {
    match st.security.by_endpoint(&ep) {
        Some(i) => ok(json!(i.redacted())),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no credentials for {ep:?}"),
        )),
    }
}

async fn security_delete(State(st): St, Path(ep): Path<String>) -> ApiResult {
    match st.security.remove(&ep)? {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no credentials for {ep:?}"),
        )),
    }
}

/// A configuration safe to show: secret keys replaced.
pub fn redacted_config(c: &BootstrapConfig) -> BootstrapConfig {
    let mut c = c.clone();
    for s in c.security.values_mut() {
        if !s.secret_key.is_empty() {
            s.secret_key = REDACTED.into();
        }
    }
    c
}

fn key_json(k: &ConfigKey) -> Json {
    match k {
        ConfigKey::Endpoint(e) => json!({"endpoint": e}),
        ConfigKey::Pattern(p) => json!({"pattern": p}),
    }
}

fn config_json(k: &ConfigKey, c: &BootstrapConfig) -> Json {
    let mut j = key_json(k);
    if let Json::Object(m) = &mut j {
        m.insert("config".into(), json!(redacted_config(c)));
    }
    j
}

fn parse_config(j: Json) -> Result<BootstrapConfig, ApiError> {
    let c: BootstrapConfig = serde_json::from_value(j)
        .map_err(|e| ApiError::bad(format!("not a bootstrap configuration: {e}")))?;
    if c.security.is_empty() && c.servers.is_empty() && c.acl.is_empty() {
        // `{}`: it would delete the client's accounts (/0, /1) and write nothing.
        return Err(ApiError::bad(
            "an empty bootstrap configuration writes nothing and deletes the client's \
             accounts; give its Security (\"security\") and Server (\"servers\") instances",
        ));
    }
    if c.security.values().any(|s| s.secret_key == REDACTED) {
        return Err(ApiError::bad(format!(
            "secret_key {REDACTED:?} is a placeholder; give the key"
        )));
    }
    Ok(c)
}

async fn bootstrap_list(State(st): St) -> JsonBody<Json> {
    JsonBody(Json::Array(
        st.bootstrap
            .all()
            .iter()
            .map(|(k, c)| config_json(k, c))
            .collect(),
    ))
}

async fn bootstrap_put(State(st): St, body: Bytes) -> ApiResult {
    let Json::Object(mut m) = parse_body(&body)? else {
        return Err(ApiError::bad(
            "expected {\"endpoint\" or \"pattern\": NAME, \"config\": {...}}",
        ));
    };
    let config = parse_config(
        m.remove("config")
            .ok_or_else(|| ApiError::bad("missing \"config\""))?,
    )?;
    let key = match (m.remove("endpoint"), m.remove("pattern")) {
        (Some(Json::String(e)), None) if !e.is_empty() => ConfigKey::Endpoint(e),
        (None, Some(Json::String(p))) if !p.is_empty() => ConfigKey::Pattern(p),
        _ => {
            return Err(ApiError::bad(
                "give one non-empty \"endpoint\" or \"pattern\" string",
            ));
        }
    };
    if let Some(k) = m.keys().next() {
        return Err(ApiError::bad(format!("unknown key {k:?}")));
    }
    put_config(&st, key, config)
}

fn put_config(st: &ApiState, key: ConfigKey, config: BootstrapConfig) -> ApiResult {
    let existed = st.bootstrap.get(&key).is_some();
    let shown = config_json(&key, &config);
    st.bootstrap.put(key, config)?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, JsonBody(shown)).into_response())
}

async fn bootstrap_delete(State(st): St, RawQuery(q): RawQuery) -> ApiResult {
    let pairs = query_pairs(q.as_deref());
    let key = match pairs.as_slice() {
        [(k, Some(v))] if k == "endpoint" => ConfigKey::Endpoint(v.clone()),
        [(k, Some(v))] if k == "pattern" => ConfigKey::Pattern(v.clone()),
        _ => return Err(ApiError::bad("give ?endpoint=NAME or ?pattern=PATTERN")),
    };
    delete_config(&st, &key)
}

fn delete_config(st: &ApiState, key: &ConfigKey) -> ApiResult {
    match st.bootstrap.remove(key)? {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no configuration for {}", key_json(key)),
        )),
    }
}

async fn bootstrap_get(State(st): St, Path(ep): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    let resolve = query_pairs(q.as_deref())
        .iter()
        .any(|(k, v)| k == "resolve" && v.as_deref().is_none_or(|v| v == "true" || v == "1"));
    let found = if resolve {
        st.bootstrap.lookup(&ep)
    } else {
        let key = ConfigKey::Endpoint(ep.clone());
        st.bootstrap.get(&key).map(|c| (key, c))
    };
    match found {
        Some((k, c)) => ok(config_json(&k, &c)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no bootstrap configuration for {ep:?}"),
        )),
    }
}

async fn bootstrap_put_endpoint(State(st): St, Path(ep): Path<String>, body: Bytes) -> ApiResult {
    let config = parse_config(parse_body(&body)?)?;
    put_config(&st, ConfigKey::Endpoint(ep), config)
}

async fn bootstrap_delete_endpoint(State(st): St, Path(ep): Path<String>) -> ApiResult {
    delete_config(&st, &ConfigKey::Endpoint(ep))
}

/// The endpoint an event is about, if any.
fn event_endpoint(data: &Json) -> Option<&str> {
    data.get("endpoint")
        .or_else(|| data.get("registration").and_then(|r| r.get("endpoint")))
        .and_then(Json::as_str)
}

async fn events(
    State(st): St,
    RawQuery(q): RawQuery,
) -> Sse<impl tokio_stream::Stream<Item = Result<axum::response::sse::Event, Infallible>>> {
    let pairs = query_pairs(q.as_deref());
    let ep = pairs
        .iter()
        .find(|(k, _)| k == "ep")
        .and_then(|(_, v)| v.clone());
    let coaplog = pairs
        .iter()
        .any(|(k, v)| k == "coaplog" && v.as_deref().is_none_or(|v| v == "true" || v == "1"));
    let registry = st.registry.clone();
    let server = st.server.clone();
    let stream = BroadcastStream::new(st.bus.subscribe()).filter_map(move |item| {
        use axum::response::sse::Event as Sse;
        let event = match item {
            Ok(e) => e,
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                return Some(Ok(Sse::default()
                    .event("LAGGED")
                    .data(format!("{{\"missed\":{n}}}"))));
            }
        };
        if let Event::CoapLog(d) = &*event {
            let for_ep = ep.as_deref().is_some_and(|ep| {
                server
                    .registrations()
                    .get(ep)
                    .is_some_and(|e| e.registration.address == d.peer)
            });
            if !(coaplog || for_ep) {
                return None;
            }
        }
        let (name, data) = json::event(&registry, &event)?;
        if let (Some(ep), false) = (&ep, name == "COAPLOG")
            && event_endpoint(&data) != Some(ep.as_str())
        {
            return None;
        }
        Some(Ok(Sse::default().event(name).data(data.to_string())))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_queries_parse() {
        assert_eq!(parse_target("tree").unwrap(), Target::Tree);
        assert_eq!(
            parse_target("composite/observe").unwrap(),
            Target::Composite { observe: true }
        );
        assert_eq!(
            parse_target("3/0/discover").unwrap(),
            Target::Path {
                path: Lwm2mPath::instance(3, 0),
                action: Action::Discover
            }
        );
        assert_eq!(
            parse_target("discover").unwrap(),
            Target::Path {
                path: Lwm2mPath::Root,
                action: Action::Discover
            }
        );
        assert_eq!(
            parse_target("3/0/1/").unwrap(),
            Target::Path {
                path: Lwm2mPath::resource(3, 0, 1),
                action: Action::Plain
            }
        );
        assert!(parse_target("3/x").is_err());
        let p = Params::parse(Some(
            "pmin=10&pmax&format=tlv&timeout=2.5&paths=%2F3%2F0%2F0,/3/0/9",
        ))
        .unwrap();
        assert_eq!(p.rest, vec!["pmin=10", "pmax"]);
        assert_eq!(p.format, Some(ContentFormat::Tlv));
        assert_eq!(p.timeout, Duration::from_millis(2500));
        assert_eq!(
            p.paths,
            vec![Lwm2mPath::resource(3, 0, 0), Lwm2mPath::resource(3, 0, 9)]
        );
        assert!(Params::parse(Some("timeout=-1")).is_err());
        assert!(Params::parse(Some("format=nope")).is_err());
        assert_eq!(
            execute_args(&Bytes::from_static(b"{\"args\":\"0='x'\"}"))
                .unwrap()
                .as_deref(),
            Some("0='x'")
        );
        assert_eq!(
            execute_args(&Bytes::from_static(b"0='x',1"))
                .unwrap()
                .as_deref(),
            Some("0='x',1")
        );
        assert_eq!(execute_args(&Bytes::new()).unwrap(), None);
    }

    #[test]
    fn create_bodies_name_one_instance() {
        let reg = Registry::embedded();
        let (i, res) =
            create_body(&reg, ObjectId(3303), &json!({"resources": {"5700": 21.5}})).unwrap();
        assert_eq!(i, None);
        assert_eq!(res.len(), 1);
        let (i, _) = create_body(&reg, ObjectId(3303), &json!({"/3303/4/5700": 21.5})).unwrap();
        assert_eq!(i, Some(lwm2m_proto::InstanceId(4)));
        assert!(
            create_body(
                &reg,
                ObjectId(3303),
                &json!({"/3303/4/5700": 1.0, "/3303/5/5700": 2.0})
            )
            .is_err()
        );
    }
}
