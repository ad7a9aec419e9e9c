//! JSON shapes shared by the adapters: our REST API's (which the exec driver protocol
//! reuses for `nodes`), turned back into the core's [`Response`], [`Registration`] and
//! [`ServerEvent`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Instant;

use lwm2m_proto::bootstrap::BootstrapEvent;
use lwm2m_proto::bootstrap::server::FailureReason;
use lwm2m_proto::codec::link::{LinkError, ObjectLinkInfo, RegistrationLinks, parse_discover};
use lwm2m_proto::content::{self, CodecError, ContentFormat, Finding};
use lwm2m_proto::ids::PathError;
use lwm2m_proto::registration::Lwm2mVersion;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{Content, ObservationId, Registration, Response, ServerEvent};
use lwm2m_proto::{InstanceId, Lwm2mPath, Node, ObjectId, Record, Schema, Value};
use serde_json::{Value as Json, json};

use super::RegistrationView;
use crate::accounts::ServerRole;
use crate::bdd::happening::{DtlsHappening, DtlsSide};

/// Why a server's JSON (ours, Leshan's, an exec driver's) does not read back as a
/// [`Response`] or a registration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// An answer without a CoAP code (`"code": "2.05"`).
    #[error("no CoAP code in {json}")]
    NoCode {
        /// The answer.
        json: String,
    },
    /// An exec driver's answer without its `"code"`.
    #[error("no \"code\" (\"2.05\") in {json}")]
    NoDriverCode {
        /// The answer.
        json: String,
    },
    /// A Leshan answer without its `status`.
    #[error("no status in {json}")]
    NoStatus {
        /// The answer.
        json: String,
    },
    /// A Leshan `status` name that is no CoAP code.
    #[error("unknown status {status:?}")]
    UnknownStatus {
        /// The status as written.
        status: String,
    },
    /// A payload without a content format to decode it with.
    #[error("a payload without a content format")]
    NoFormat,
    /// A `payload_hex` that is not hex.
    #[error("payload_hex {text:?} is not hex")]
    NotHex {
        /// The text.
        text: String,
    },
    /// A payload that does not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A Discover payload that is not UTF-8.
    #[error(transparent)]
    Utf8(#[from] std::str::Utf8Error),
    /// Links that are not CoRE link format.
    #[error(transparent)]
    Links(#[from] LinkError),
    /// Nodes that are not records of their resources.
    #[error(transparent)]
    Body(#[from] lwm2m_server::json::BodyError),
    /// A `location` that is not an LwM2M path.
    #[error("location {text:?}: {source}")]
    Location {
        /// The location as written.
        text: String,
        /// Why it is not a path.
        source: PathError,
    },
    /// A key of a composite answer that is not an LwM2M path.
    #[error("{text:?}: {source}")]
    Path {
        /// The key as written.
        text: String,
        /// Why it is not a path.
        source: PathError,
    },
    /// A Leshan value that is not of the type its node names.
    #[error("{path}: {source}")]
    Value {
        /// The resource (instance).
        path: Lwm2mPath,
        /// Why the value does not fit.
        source: lwm2m_server::leshan::NodeValueError,
    },
    /// A registration without its endpoint name.
    #[error("no endpoint in {json}")]
    NoEndpoint {
        /// The registration.
        json: String,
    },
    /// A registration without a socket address.
    #[error("no address in the registration of {endpoint}")]
    NoAddress {
        /// The endpoint.
        endpoint: String,
    },
    /// An object id beyond 16 bits.
    #[error("object id {id}")]
    ObjectId {
        /// The id as given.
        id: u64,
    },
}

/// `"2.05"` as a CoAP code.
pub fn parse_code(s: &str) -> Option<(u8, u8)> {
    let (class, detail) = s.split_once('.')?;
    Some((class.parse().ok()?, detail.parse().ok()?))
}

/// A CoAP code as text, `2.05`.
pub fn code_text((class, detail): (u8, u8)) -> String {
    format!("{class}.{detail:02}")
}

/// Records as `{"nodes": [{"path", "value"}]}` (values as [`lwm2m_proto::Value::to_json`]).
pub fn nodes_json(records: &[Record]) -> Json {
    let nodes: Vec<Json> = records
        .iter()
        .map(
            |r| json!({"path": r.path.to_string(), "value": r.value.as_ref().map(|v| v.to_json())}),
        )
        .collect();
    json!({ "nodes": nodes })
}

/// Records from `[{"path", "value"}]`, typed by `schema`. A value that does not fit its
/// resource's type (what the client sent, kept by the server: pre-1.0 Location strings) is
/// kept as the JSON gives it, with a [`Finding::TypeMismatch`] in `findings`, as our own
/// decoder would report it.
pub fn records_from_nodes(
    schema: &dyn Schema,
    nodes: &Json,
    findings: &mut Vec<Finding>,
) -> Result<Vec<Record>, ReadError> {
    let all = lwm2m_server::json::records_from(schema, &json!({ "nodes": nodes }))
        .map_err(ReadError::from);
    let (Err(_), Json::Array(list)) = (&all, nodes) else {
        return all;
    };
    // Node by node, to keep what does not fit its type.
    let mut records = Vec::with_capacity(list.len());
    for node in list {
        let one = json!({ "nodes": [node] });
        match lwm2m_server::json::records_from(schema, &one) {
            Ok(r) => records.extend(r),
            Err(e) => {
                let e = ReadError::from(e);
                let path = node.get("path").and_then(Json::as_str).ok_or(e.clone())?;
                let path: Lwm2mPath = path.parse().map_err(|_| e.clone())?;
                let def = content::resource_def(schema, &path).ok_or(e.clone())?;
                let value = node.get("value").unwrap_or(&Json::Null);
                let kept = match value {
                    Json::String(s) => Value::String(s.clone()),
                    Json::Bool(b) => Value::Boolean(*b),
                    Json::Number(n) => match n.as_i64() {
                        Some(i) => Value::Integer(i),
                        None => Value::Float(n.as_f64().ok_or(e.clone())?),
                    },
                    _ => return Err(e),
                };
                findings.push(Finding::TypeMismatch {
                    path,
                    expected: def.data_type,
                    found: format!("the JSON value {value}"),
                });
                records.push(Record {
                    path,
                    value: Some(kept),
                    time: None,
                });
            }
        }
    }
    Ok(records)
}

/// A `location` (`/rd/5a3f`) as a path.
pub fn location(text: &str) -> Result<Lwm2mPath, ReadError> {
    text.parse().map_err(|source| ReadError::Location {
        text: text.to_owned(),
        source,
    })
}

/// What a response body holds, as the operation expects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// A node at this path (Read, Observe, notifications).
    Node(Lwm2mPath),
    /// A flat list (composite operations, Send).
    Records,
    /// A Discover answer.
    Links,
    /// Nothing to decode.
    Nothing,
}

impl Body {
    /// What `operation`'s answer carries.
    pub fn of(operation: &lwm2m_proto::server::Operation) -> Self {
        use lwm2m_proto::server::Operation as Op;
        match operation {
            Op::Read { path, .. } | Op::Observe { path, .. } => Self::Node(*path),
            Op::ReadComposite { .. } | Op::ObserveComposite { .. } => Self::Records,
            Op::Discover { .. } => Self::Links,
            _ => Self::Nothing,
        }
    }
}

/// Decodes a raw payload as our server would (findings included).
pub fn decode_payload(
    response: &mut Response,
    body: Body,
    bytes: &[u8],
    schema: &dyn Schema,
) -> Result<(), ReadError> {
    response.payload_len = bytes.len();
    if response.code.0 != 2 || bytes.is_empty() {
        if response.code.0 >= 4 && !bytes.is_empty() {
            response.diagnostic = Some(String::from_utf8_lossy(bytes).into_owned());
        }
        return Ok(());
    }
    let format = response.format.ok_or(ReadError::NoFormat)?;
    match body {
        Body::Node(path) => {
            let d = content::decode(format, bytes, &path, schema)?;
            response.content = Some(Content::Node(d.content));
            response.findings = d.findings;
        }
        Body::Records => {
            let d = content::decode_records(format, bytes, schema)?;
            response.content = Some(Content::Records(d.content));
            response.findings = d.findings;
        }
        Body::Links => {
            let text = std::str::from_utf8(bytes)?;
            let links = parse_discover(text)?;
            response.content = Some(Content::Links(links));
        }
        Body::Nothing => {}
    }
    Ok(())
}

/// The content of decoded nodes: a node at `body`'s path, or the flat list.
pub fn content_from_records(
    body: Body,
    records: Vec<Record>,
    schema: &dyn Schema,
) -> Result<Option<Content>, ReadError> {
    Ok(match body {
        Body::Node(path) => Some(Content::Node(content::records_to_node(
            &path, &records, schema,
        )?)),
        Body::Records => Some(Content::Records(records)),
        Body::Links | Body::Nothing => None,
    })
}

/// A response in our REST API's shape (`{"code", "format", "nodes" | "links", "location",
/// "observation", "diagnostic", "payload_len"}`).
pub fn response_from(j: &Json, body: Body, schema: &dyn Schema) -> Result<Response, ReadError> {
    let code = j
        .get("code")
        .and_then(Json::as_str)
        .and_then(parse_code)
        .ok_or_else(|| ReadError::NoCode {
            json: j.to_string(),
        })?;
    let mut r = Response {
        code,
        ..Response::empty()
    };
    r.format = j
        .get("format")
        .and_then(Json::as_str)
        .and_then(ContentFormat::from_name);
    if let Some(nodes) = j.get("nodes") {
        let records = records_from_nodes(schema, nodes, &mut r.findings)?;
        r.content = content_from_records(body, records, schema)?;
    }
    if let Some(Json::Array(links)) = j.get("links") {
        let text: Vec<&str> = links
            .iter()
            .filter_map(|l| l.get("link").and_then(Json::as_str))
            .collect();
        let entries = parse_discover(&text.join(","))?;
        r.content = Some(Content::Links(entries));
    }
    if let Some(l) = j.get("location").and_then(Json::as_str) {
        r.location = Some(location(l)?);
    }
    r.observation = j
        .get("observation")
        .and_then(Json::as_u64)
        .map(ObservationId);
    r.diagnostic = j
        .get("diagnostic")
        .and_then(Json::as_str)
        .map(str::to_owned);
    r.payload_len = j
        .get("payload_len")
        .and_then(Json::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    Ok(r)
}

/// A registration in our REST API's shape.
pub fn registration_from(j: &Json) -> Result<RegistrationView, ReadError> {
    let s = |k: &str| j.get(k).and_then(Json::as_str);
    let endpoint = s("endpoint").ok_or_else(|| ReadError::NoEndpoint {
        json: j.to_string(),
    })?;
    let address: SocketAddr =
        s("address")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| ReadError::NoAddress {
                endpoint: endpoint.to_owned(),
            })?;
    let mut objects = BTreeMap::new();
    for o in j
        .get("objects")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let Some(id) = o.get("id").and_then(Json::as_u64) else {
            continue;
        };
        let instances: BTreeSet<InstanceId> = o
            .get("instances")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| i.as_u64().and_then(|i| u16::try_from(i).ok()))
            .map(InstanceId)
            .collect();
        let version = o.get("version").and_then(Json::as_str).map(str::to_owned);
        let id = u16::try_from(id).map_err(|_| ReadError::ObjectId { id })?;
        objects.insert(ObjectId(id), ObjectLinkInfo { version, instances });
    }
    let now = Instant::now();
    let registration = Registration {
        id: s("registration_id").unwrap_or_default().to_owned(),
        endpoint: endpoint.to_owned(),
        version: s("lwm2m_version")
            .and_then(Lwm2mVersion::parse)
            .unwrap_or(Lwm2mVersion::V1_0),
        lifetime: j
            .get("lifetime")
            .and_then(Json::as_u64)
            .and_then(|l| u32::try_from(l).ok())
            .unwrap_or(0),
        binding: s("binding").unwrap_or("U").to_owned(),
        queue_mode: j.get("queue_mode").and_then(Json::as_bool).unwrap_or(false),
        sms: s("sms").map(str::to_owned),
        address,
        links: RegistrationLinks {
            alternate_path: s("root_path").unwrap_or("/").to_owned(),
            content_formats: j
                .get("content_formats")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_u64().and_then(|c| u16::try_from(c).ok()))
                .collect(),
            objects,
        },
        registered_at: now,
        last_update: now,
        findings: Vec::new(),
        link_notes: Vec::new(),
    };
    Ok(RegistrationView {
        registration,
        sleeping: j.get("sleeping").and_then(Json::as_bool),
    })
}

/// The object versions a registration declared (to type its payloads).
pub fn versions(r: &Registration) -> BTreeMap<ObjectId, String> {
    r.links
        .objects
        .iter()
        .filter_map(|(o, i)| Some((*o, i.version.clone()?)))
        .collect()
}

/// One of our API's server-sent events (`name`, its JSON data) as a [`ServerEvent`];
/// `None` for events the suite does not use. `versions_of` gives the object versions an
/// endpoint registered, to type its values with `registry`.
pub fn event_from(
    name: &str,
    data: &Json,
    registry: &Registry,
    versions_of: &dyn Fn(&str) -> BTreeMap<ObjectId, String>,
) -> Option<ServerEvent> {
    let registration = || {
        data.get("registration")
            .and_then(|r| registration_from(r).ok())
            .map(|v| v.registration)
    };
    let endpoint = || {
        data.get("endpoint")
            .and_then(Json::as_str)
            .map(str::to_owned)
    };
    let peer = || {
        data.get("peer")
            .and_then(Json::as_str)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    };
    let refusal = || {
        (
            peer(),
            data.get("code")
                .and_then(Json::as_str)
                .and_then(parse_code)
                .unwrap_or((0, 0)),
            data.get("reason")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned(),
        )
    };
    Some(match name {
        "REGISTRATION" => ServerEvent::Registered {
            registration: registration()?,
            replaced: None,
        },
        "UPDATED" => ServerEvent::Updated {
            registration: registration()?,
            previous_address: data
                .get("previous_address")
                .and_then(Json::as_str)
                .and_then(|a| a.parse().ok()),
        },
        "DEREGISTRATION" => {
            let registration = registration()?;
            if data.get("expired").and_then(Json::as_bool) == Some(true) {
                ServerEvent::Expired { registration }
            } else {
                ServerEvent::Deregistered { registration }
            }
        }
        "SLEEPING" => ServerEvent::Sleeping {
            endpoint: endpoint()?,
        },
        "AWAKE" => ServerEvent::Awake {
            endpoint: endpoint()?,
        },
        "REGISTRATION_REFUSED" => {
            let (peer, code, reason) = refusal();
            ServerEvent::RegistrationRefused { peer, code, reason }
        }
        "REQUEST_REFUSED" => {
            let (peer, code, reason) = refusal();
            ServerEvent::RequestRefused { peer, code, reason }
        }
        "NOTIFICATION" => {
            let endpoint = endpoint()?;
            let path: Lwm2mPath = data.get("path")?.as_str()?.parse().ok()?;
            let versions = versions_of(&endpoint);
            let schema = registry.with_versions(&versions);
            let composite = data
                .get("response")
                .and_then(|r| r.get("nodes"))
                .and_then(Json::as_array)
                .is_some_and(|n| {
                    n.iter().any(|n| {
                        n.get("path")
                            .and_then(Json::as_str)
                            .and_then(|p| p.parse::<Lwm2mPath>().ok())
                            .is_some_and(|p| !path.is_prefix_of(&p))
                    })
                });
            let body = if composite {
                Body::Records
            } else {
                Body::Node(path)
            };
            let response = response_from(data.get("response")?, body, &schema).ok()?;
            ServerEvent::Notification {
                observation: ObservationId(data.get("observation")?.as_u64()?),
                endpoint,
                path,
                response,
                seq: data
                    .get("seq")
                    .and_then(Json::as_u64)
                    .and_then(|s| u32::try_from(s).ok())
                    .unwrap_or(0),
            }
        }
        "OBSERVATION_ENDED" => ServerEvent::ObservationEnded {
            observation: ObservationId(data.get("observation")?.as_u64()?),
            endpoint: endpoint()?,
            reason: data
                .get("reason")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned(),
        },
        "SEND" => {
            let endpoint = endpoint()?;
            let versions = versions_of(&endpoint);
            let schema = registry.with_versions(&versions);
            let records = records_from_nodes(&schema, data.get("nodes")?, &mut Vec::new()).ok()?;
            ServerEvent::Send {
                endpoint,
                records,
                findings: Vec::new(),
            }
        }
        _ => return None,
    })
}

/// An identity as our servers' events show it (`psk:IDENTITY`, `cn:NAME`).
pub fn parse_identity(text: &str) -> lwm2m_dtls::Identity {
    match text.strip_prefix("cn:") {
        Some(cn) => lwm2m_dtls::Identity::Certificate(cn.into()),
        None => {
            lwm2m_dtls::Identity::Psk(text.strip_prefix("psk:").unwrap_or(text).as_bytes().into())
        }
    }
}

/// A handshake failure as our servers' events show it (the reason's Debug name).
pub fn parse_failure(text: &str) -> lwm2m_dtls::FailureReason {
    use lwm2m_dtls::FailureReason as F;
    match text {
        "UnknownIdentity" => F::UnknownIdentity,
        "WrongKey" => F::WrongKey,
        "Timeout" => F::Timeout,
        "Superseded" => F::Superseded,
        "PeerAlert(None)" => F::PeerAlert(None),
        other => {
            let alert = other
                .strip_prefix("PeerAlert(Some(")
                .and_then(|rest| rest.strip_suffix("))"))
                .and_then(|n| n.parse().ok());
            match alert {
                Some(description) => F::PeerAlert(Some(description)),
                None => F::Protocol(debug_string(other, "Protocol")),
            }
        }
    }
}

/// A session's end as our servers' events show it (the reason's Debug name).
pub fn parse_close(text: &str) -> lwm2m_dtls::CloseReason {
    use lwm2m_dtls::CloseReason;
    match text {
        "PeerClosed" => CloseReason::PeerClosed,
        "LocalClose" => CloseReason::LocalClose,
        "Replaced" => CloseReason::Replaced,
        _ => CloseReason::IdleTimeout,
    }
}

/// The text inside `Variant("...")` as `{:?}` wrote it (quotes and backslashes unescaped),
/// or `text` itself when it is not in that form.
fn debug_string(text: &str, variant: &str) -> String {
    let quoted = text
        .strip_prefix(variant)
        .and_then(|rest| rest.strip_prefix("(\""))
        .and_then(|rest| rest.strip_suffix("\")"));
    match quoted {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => text.to_owned(),
    }
}

/// A DTLS handshake failure a server reported, in our API's `SECURITY` event shape
/// (`{"kind": "handshake_failed", "server": "server" | "bootstrap", "peer", "identity",
/// "reason"}`, also the exec driver's `{"event": "security", ...}`): the happening, with
/// the client's address (`IP:PORT`) as its endpoint. `None` for other kinds.
pub fn dtls_failure_from(data: &Json) -> Option<DtlsHappening> {
    let s = |k: &str| data.get(k).and_then(Json::as_str);
    if s("kind")? != "handshake_failed" {
        return None;
    }
    let peer: SocketAddr = s("peer")?.parse().ok()?;
    let server = match s("server") {
        Some("bootstrap") => ServerRole::Bootstrap,
        _ => ServerRole::Lwm2m,
    };
    Some(DtlsHappening::HandshakeFailed {
        endpoint: peer.to_string(),
        server,
        side: DtlsSide::Server,
        identity: s("identity").map(parse_identity),
        reason: parse_failure(s("reason").unwrap_or("unknown")),
    })
}

/// A step name of [`BootstrapEvent`] (`discover`, `delete`, `write`, `read`, `finish`).
fn step_name(s: &str) -> Option<&'static str> {
    ["discover", "delete", "write", "read", "finish"]
        .into_iter()
        .find(|n| *n == s)
}

/// One of our API's `BOOTSTRAP_*` events as a [`BootstrapEvent`]; `None` for others, and
/// for a failure whose reason is not a client's code (the API gives reasons as text).
pub fn bootstrap_event_from(name: &str, data: &Json) -> Option<BootstrapEvent> {
    let s = |k: &str| data.get(k).and_then(Json::as_str);
    let endpoint = || s("endpoint").map(str::to_owned);
    let path = || s("path").and_then(|p| p.parse::<Lwm2mPath>().ok());
    let peer = || {
        s("peer")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    };
    Some(match name {
        "BOOTSTRAP_STARTED" => BootstrapEvent::SessionStarted {
            endpoint: endpoint()?,
            peer: peer(),
            config: s("config").unwrap_or_default().to_owned(),
            initiated_by_client: data.get("initiated_by_client")?.as_bool()?,
            format: s("format")
                .and_then(ContentFormat::from_name)
                .unwrap_or(ContentFormat::Tlv),
        },
        "BOOTSTRAP_STEP" => BootstrapEvent::Step {
            endpoint: endpoint()?,
            step: step_name(s("step")?)?,
            path: path(),
            code: parse_code(s("code")?)?,
            detail: s("detail").map(str::to_owned),
        },
        "BOOTSTRAP_FINISHED" => BootstrapEvent::Finished {
            endpoint: endpoint()?,
            duration: std::time::Duration::try_from_secs_f64(
                data.get("duration_ms")?.as_f64()? / 1000.0,
            )
            .ok()?,
        },
        "BOOTSTRAP_FAILED" => {
            // "answered 4.05 where 2.04 was expected" (FailureReason::Code's text).
            let reason = s("reason")?;
            let rest = reason.strip_prefix("answered ")?;
            let (code, expected) = rest.split_once(" where ")?;
            let expected = expected.strip_suffix(" was expected")?;
            BootstrapEvent::Failed {
                endpoint: endpoint()?,
                step: step_name(s("step")?)?,
                path: path(),
                reason: FailureReason::Code {
                    code: parse_code(code)?,
                    expected: parse_code(expected)?,
                },
            }
        }
        "BOOTSTRAP_REFUSED" => BootstrapEvent::Refused {
            peer: peer(),
            endpoint: endpoint(),
            code: parse_code(s("code")?)?,
            reason: s("reason").unwrap_or_default().to_owned(),
        },
        _ => return None,
    })
}

/// A Create's resources as records under the new instance (instance 0 when the client is
/// to pick the id).
pub fn create_records(
    object: ObjectId,
    instance: Option<InstanceId>,
    resources: &lwm2m_proto::Instance,
) -> Vec<Record> {
    let base = Lwm2mPath::Instance(object, instance.unwrap_or(InstanceId(0)));
    Node::Instance(resources.clone()).to_records(&base)
}

/// A node as the records our API takes for a Write at `path`.
pub fn write_body(path: &Lwm2mPath, node: &Node) -> Json {
    nodes_json(&node.to_records(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lwm2m_proto::Value;

    #[test]
    fn failure_reasons_survive_our_events_text() {
        use lwm2m_dtls::FailureReason as F;
        for reason in [
            F::UnknownIdentity,
            F::WrongKey,
            F::Timeout,
            F::Superseded,
            F::PeerAlert(None),
            F::PeerAlert(Some(115)),
            F::Protocol("bad certificate: \"expired\" \\ 2020".into()),
        ] {
            assert_eq!(parse_failure(&format!("{reason:?}")), reason);
        }
        assert_eq!(parse_failure("whatever"), F::Protocol("whatever".into()));
        use lwm2m_dtls::CloseReason as C;
        for reason in [C::PeerClosed, C::LocalClose, C::Replaced, C::IdleTimeout] {
            assert_eq!(parse_close(&format!("{reason:?}")), reason);
        }
    }

    fn registry() -> lwm2m_proto::registry::Registry {
        lwm2m_proto::registry::Registry::embedded()
    }

    #[test]
    fn a_read_answer_becomes_a_node() {
        let j = json!({"code": "2.05", "format": "tlv", "payload_len": 12,
            "nodes": [{"path": "/3/0/0", "value": "ACME"}, {"path": "/3/0/9", "value": 80}]});
        let r = response_from(
            &j,
            Body::Node(Lwm2mPath::Instance(ObjectId(3), InstanceId(0))),
            &registry(),
        )
        .unwrap();
        assert_eq!(r.code, (2, 5));
        assert_eq!(r.format, Some(ContentFormat::Tlv));
        let Some(Content::Node(node)) = &r.content else {
            panic!("{r:?}")
        };
        let recs = node.to_records(&Lwm2mPath::Instance(ObjectId(3), InstanceId(0)));
        assert!(
            recs.iter().any(|r| r.value == Some(Value::Integer(80))),
            "{recs:?}"
        );
        assert_eq!(r.payload_len, 12);
    }

    #[test]
    fn a_discover_answer_becomes_links_and_codes_read() {
        let j =
            json!({"code": "2.05", "links": [{"link": "</3/0>"}, {"link": "</3/0/1>;pmin=10"}]});
        let r = response_from(&j, Body::Links, &registry()).unwrap();
        let Some(Content::Links(l)) = r.content else {
            panic!()
        };
        assert_eq!(l.len(), 2);
        assert_eq!(parse_code("4.04"), Some((4, 4)));
        assert_eq!(parse_code("x"), None);
        assert_eq!(code_text((2, 4)), "2.04");
        assert_eq!(
            response_from(&json!({}), Body::Nothing, &registry()),
            Err(ReadError::NoCode { json: "{}".into() })
        );
        let bad_location = json!({"code": "2.01", "location": "rd/x"});
        assert!(matches!(
            response_from(&bad_location, Body::Nothing, &registry()),
            Err(ReadError::Location { text, .. }) if text == "rd/x"
        ));
    }

    #[test]
    fn registrations_and_events_read_back() {
        let reg = json!({"endpoint": "c1", "registration_id": "ab", "lwm2m_version": "1.1",
            "lifetime": 300, "binding": "UQ", "queue_mode": true, "sleeping": true,
            "address": "127.0.0.1:4000", "root_path": "/", "content_formats": [110],
            "objects": [{"id": 3, "version": "1.1", "instances": [0]}]});
        let v = registration_from(&reg).unwrap();
        assert_eq!(v.registration.lifetime, 300);
        assert_eq!(v.sleeping, Some(true));
        assert_eq!(
            versions(&v.registration)
                .get(&ObjectId(3))
                .map(String::as_str),
            Some("1.1")
        );
        let reg_ = registry();
        let none = |_: &str| BTreeMap::new();
        let e = event_from(
            "DEREGISTRATION",
            &json!({"registration": reg, "expired": true}),
            &reg_,
            &none,
        );
        assert!(matches!(e, Some(ServerEvent::Expired { .. })), "{e:?}");
        let e = event_from(
            "SEND",
            &json!({"endpoint": "c1", "nodes": [{"path": "/3/0/9", "value": 75}]}),
            &reg_,
            &none,
        );
        let Some(ServerEvent::Send { records, .. }) = e else {
            panic!("{e:?}")
        };
        assert_eq!(records[0].value, Some(Value::Integer(75)));
        let n = json!({"endpoint": "c1", "observation": 4, "path": "/3/0/9", "seq": 2,
            "response": {"code": "2.05", "format": "text", "nodes": [{"path": "/3/0/9", "value": 70}]}});
        let Some(ServerEvent::Notification {
            observation,
            seq,
            response,
            ..
        }) = event_from("NOTIFICATION", &n, &reg_, &none)
        else {
            panic!()
        };
        assert_eq!((observation, seq), (ObservationId(4), 2));
        assert!(matches!(response.content, Some(Content::Node(_))));
        assert_eq!(event_from("COAPLOG", &json!({}), &reg_, &none), None);
        let b = bootstrap_event_from(
            "BOOTSTRAP_FAILED",
            &json!({"endpoint": "c1", "step": "write", "path": "/1/0",
                "reason": "answered 4.05 where 2.04 was expected"}),
        );
        assert!(
            matches!(
                b,
                Some(BootstrapEvent::Failed {
                    step: "write",
                    reason: FailureReason::Code { code: (4, 5), .. },
                    ..
                })
            ),
            "{b:?}"
        );
        let b = bootstrap_event_from(
            "BOOTSTRAP_STARTED",
            &json!({"endpoint": "c1",
            "peer": "127.0.0.1:1", "config": "c1", "initiated_by_client": true, "format": "tlv"}),
        );
        assert!(
            matches!(
                b,
                Some(BootstrapEvent::SessionStarted {
                    initiated_by_client: true,
                    ..
                })
            ),
            "{b:?}"
        );
    }

    #[test]
    fn a_servers_failed_handshake_reads_as_a_dtls_happening_of_the_peer() {
        let failed = json!({"kind": "handshake_failed", "server": "bootstrap",
            "peer": "127.0.0.1:4000", "identity": "psk:dev-1", "reason": "WrongKey"});
        assert_eq!(
            dtls_failure_from(&failed),
            Some(DtlsHappening::HandshakeFailed {
                endpoint: "127.0.0.1:4000".into(),
                server: ServerRole::Bootstrap,
                side: DtlsSide::Server,
                identity: Some(lwm2m_dtls::Identity::Psk(b"dev-1"[..].into())),
                reason: lwm2m_dtls::FailureReason::WrongKey,
            })
        );
        let unknown = json!({"kind": "handshake_failed", "server": "server",
            "peer": "127.0.0.1:4001", "reason": "UnknownIdentity"});
        let Some(DtlsHappening::HandshakeFailed {
            server,
            identity,
            reason,
            ..
        }) = dtls_failure_from(&unknown)
        else {
            panic!("not a failure");
        };
        assert_eq!(
            (server, identity, reason),
            (
                ServerRole::Lwm2m,
                None,
                lwm2m_dtls::FailureReason::UnknownIdentity
            )
        );
        let established = json!({"kind": "established", "peer": "127.0.0.1:4000",
            "identity": "psk:dev-1"});
        assert_eq!(dtls_failure_from(&established), None);
        let no_peer = json!({"kind": "handshake_failed", "reason": "WrongKey"});
        assert_eq!(dtls_failure_from(&no_peer), None);
    }
}
