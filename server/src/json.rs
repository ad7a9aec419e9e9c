//! JSON views for the REST API: registrations, responses, nodes named from the registry,
//! events; and JSON input typed through the registry (the codec tool's shapes).

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use lwm2m_proto::bootstrap::server::BootstrapEvent;
use lwm2m_proto::codec::link::DiscoverEntry;
use lwm2m_proto::content::{self, CodecError};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{Content, Registration, Response, ServerEvent};
use lwm2m_proto::value::{DataType, ValueError};
use lwm2m_proto::{Lwm2mPath, Node, ObjectId, Record, ResourceValue, Schema, Value};
use serde_json::{Map, Value as Json, json};

use crate::events::{Datagram, Event, SecurityEvent};
use crate::registrations::ClientEntry;

/// A CoAP code as people write it: `2.05`.
pub fn code_text((class, detail): (u8, u8)) -> String {
    format!("{class}.{detail:02}")
}

/// Milliseconds since the Unix epoch of a monotonic instant (mapped through the current
/// wall clock), in the past or in the future (a registration's expiry).
pub fn unix_millis(at: Instant) -> u64 {
    unix_millis_from(at, Instant::now(), SystemTime::now())
}

/// [`unix_millis`] with the present given: `now` is `wall` on the wall clock.
fn unix_millis_from(at: Instant, now: Instant, wall: SystemTime) -> u64 {
    let t = if at >= now {
        wall.checked_add(at.duration_since(now))
    } else {
        wall.checked_sub(now.duration_since(at))
    };
    system_millis(t.unwrap_or(UNIX_EPOCH))
}

fn system_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The object versions a client announced, for typing its payloads.
pub fn declared_versions(registration: &Registration) -> BTreeMap<ObjectId, String> {
    registration
        .links
        .objects
        .iter()
        .filter_map(|(o, info)| Some((*o, info.version.clone()?)))
        .collect()
}

/// A registration for `GET /api/clients`.
pub fn registration(entry: &ClientEntry) -> Json {
    let r = &entry.registration;
    let objects: Vec<Json> = r
        .links
        .objects
        .iter()
        .map(|(o, info)| {
            json!({
                "id": o.0,
                "version": info.version,
                "instances": info.instances.iter().map(|i| i.0).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "endpoint": r.endpoint,
        "registration_id": r.id,
        "lwm2m_version": r.version.as_str(),
        "lifetime": r.lifetime,
        "binding": r.binding,
        "queue_mode": r.queue_mode,
        "sleeping": entry.sleeping,
        "sms": r.sms,
        "address": r.address.to_string(),
        "root_path": r.links.alternate_path,
        "content_formats": r.links.content_formats,
        "objects": objects,
        "registered_at": unix_millis(r.registered_at),
        "last_update": unix_millis(r.last_update),
        "expires_at": unix_millis(r.expires_at()),
        "findings": r.findings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "link_notes": r.link_notes.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// Records as the codec tool prints them: path, object and resource names, units, type,
/// value, time.
pub fn records(registry: &Registry, schema: &dyn Schema, records: &[Record]) -> Vec<Json> {
    records
        .iter()
        .map(|r| {
            let mut m = Map::new();
            m.insert("path".into(), json!(r.path.to_string()));
            if let Some(obj) = r.path.object_id().and_then(|o| registry.object(o)) {
                m.insert("object".into(), json!(obj.name));
            }
            if let Some(def) = content::resource_def(schema, &r.path) {
                m.insert("resource".into(), json!(def.name));
                if !def.units.is_empty() {
                    m.insert("units".into(), json!(def.units));
                }
            }
            if let Some(v) = &r.value {
                m.insert("type".into(), json!(v.data_type().ddf_name()));
                m.insert("value".into(), v.to_json());
            }
            if let Some(t) = r.time {
                m.insert("time".into(), json!(t));
            }
            Json::Object(m)
        })
        .collect()
}

/// Discover entries: path, link text and attributes.
pub fn discover_entries(entries: &[DiscoverEntry]) -> Vec<Json> {
    entries
        .iter()
        .map(|e| {
            let attributes: Map<String, Json> = e
                .attributes
                .to_params()
                .into_iter()
                .map(|p| (p.name, p.value.map_or(Json::Bool(true), Json::String)))
                .collect();
            json!({
                "path": e.path.to_string(),
                "link": e.to_link().to_string(),
                "ver": e.ver,
                "dim": e.dim,
                "attributes": attributes,
            })
        })
        .collect()
}

/// A client's response: code, format, content as named nodes (or links), findings.
pub fn response(
    registry: &Registry,
    schema: &dyn Schema,
    path: Option<&Lwm2mPath>,
    r: &Response,
) -> Json {
    let mut m = Map::new();
    m.insert("code".into(), json!(code_text(r.code)));
    m.insert("format".into(), json!(r.format.map(|f| f.name())));
    match &r.content {
        Some(Content::Node(node)) => {
            let path = path.copied().unwrap_or(Lwm2mPath::Root);
            m.insert(
                "nodes".into(),
                json!(records(registry, schema, &node.to_records(&path))),
            );
        }
        Some(Content::Records(recs)) => {
            m.insert("nodes".into(), json!(records(registry, schema, recs)));
        }
        Some(Content::Links(entries)) => {
            m.insert("links".into(), json!(discover_entries(entries)));
        }
        None => {}
    }
    if let Some(l) = &r.location {
        m.insert("location".into(), json!(l.to_string()));
    }
    if let Some(o) = &r.observation {
        m.insert("observation".into(), json!(o.0));
    }
    m.insert(
        "findings".into(),
        json!(
            r.findings
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        ),
    );
    if let Some(d) = &r.diagnostic {
        m.insert("diagnostic".into(), json!(d));
    }
    m.insert("payload_len".into(), json!(r.payload_len));
    Json::Object(m)
}

/// Why a JSON request body is not the records or node it should be (the REST API's
/// write, create and composite bodies; the codec tool's input).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// `{"nodes": ...}` whose `nodes` is not an array.
    #[error("\"nodes\" must be an array")]
    NodesNotArray,
    /// An element of `nodes` without a `path` string.
    #[error("nodes[{index}] has no \"path\" string")]
    NodeWithoutPath {
        /// The element's index in `nodes`.
        index: usize,
    },
    /// The body is neither records shape.
    #[error("expected {{\"/O/I/R\": value, ...}} or {{\"nodes\": [...]}}")]
    NotRecords,
    /// A key or `path` that is not an LwM2M path.
    #[error("{text:?}: {source}")]
    Path {
        /// The text as written.
        text: String,
        /// Why it is not a path.
        source: lwm2m_proto::ids::PathError,
    },
    /// A value that does not fit the type the registry gives its resource.
    #[error("{path} ({name}, {ty}): {source}")]
    Value {
        /// The resource (instance) written.
        path: Lwm2mPath,
        /// The resource's name in the registry.
        name: String,
        /// The resource's type in the registry.
        ty: DataType,
        /// Why the value does not fit.
        source: ValueError,
    },
    /// A null where a value must be written.
    #[error("a null value cannot be written")]
    NullValue,
    /// A key of a multiple resource's `{"0": v, ...}` that is not an instance id.
    #[error("{key:?} is not a resource instance id")]
    InstanceKey {
        /// The key as written.
        key: String,
    },
    /// A resource instance id the path cannot hold (65535 is reserved).
    #[error("bad resource instance")]
    ResourceInstance {
        /// The id written.
        id: u16,
    },
    /// `{"value": ...}` at a path above the resource level.
    #[error("{{\"value\": ...}} needs a resource path; for {path} give {{\"/O/I/R\": value, ...}}")]
    ValueNeedsResource {
        /// The path written.
        path: Lwm2mPath,
    },
    /// The records do not make a node at the path written.
    #[error(transparent)]
    Node(#[from] CodecError),
}

/// Records from JSON: `{"/3/0/14": "+02", ...}` or `{"nodes": [{"path":..,"value":..}]}`,
/// each value typed by the registry (falling back to the JSON type for unknown resources).
pub fn records_from(schema: &dyn Schema, j: &Json) -> Result<Vec<Record>, BodyError> {
    let entries: Vec<(String, Json)> = match j {
        Json::Object(m) if m.contains_key("nodes") => {
            let Some(Json::Array(nodes)) = m.get("nodes") else {
                return Err(BodyError::NodesNotArray);
            };
            nodes
                .iter()
                .enumerate()
                .map(|(index, n)| {
                    let path = n
                        .get("path")
                        .and_then(Json::as_str)
                        .ok_or(BodyError::NodeWithoutPath { index })?;
                    Ok((
                        path.to_owned(),
                        n.get("value").cloned().unwrap_or(Json::Null),
                    ))
                })
                .collect::<Result<_, BodyError>>()?
        }
        Json::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => return Err(BodyError::NotRecords),
    };
    entries
        .into_iter()
        .map(|(text, value)| {
            let path: Lwm2mPath = text
                .parse()
                .map_err(|source| BodyError::Path { text, source })?;
            Ok(Record {
                path,
                value: typed(schema, &path, &value)?,
                time: None,
            })
        })
        .collect()
}

fn typed(schema: &dyn Schema, path: &Lwm2mPath, j: &Json) -> Result<Option<Value>, BodyError> {
    match content::resource_def(schema, path) {
        Some(def) => Value::from_json(def.data_type, j)
            .map(Some)
            .map_err(|source| BodyError::Value {
                path: *path,
                name: def.name.clone(),
                ty: def.data_type,
                source,
            }),
        None => Ok(infer(j)),
    }
}

/// A value for a resource the registry does not know, from the JSON type alone.
fn infer(j: &Json) -> Option<Value> {
    match j {
        Json::Null => None,
        Json::Bool(b) => Some(Value::Boolean(*b)),
        Json::Number(n) => Some(match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Integer(i),
            (None, Some(u), _) => Value::UnsignedInteger(u),
            (_, _, f) => Value::Float(f.unwrap_or(f64::NAN)),
        }),
        Json::String(s) => Some(Value::String(s.clone())),
        other => Some(Value::String(other.to_string())),
    }
}

/// The node to write at `path` from a request body: `{"value": v}` for a resource or
/// resource instance (`{"value": {"0": v, "1": w}}` for a multiple resource), or the
/// records shapes of [`records_from`] for any level.
pub fn node_from(schema: &dyn Schema, path: &Lwm2mPath, j: &Json) -> Result<Node, BodyError> {
    let Some(value) = j.get("value") else {
        let recs = records_from(schema, j)?;
        return Ok(content::records_to_node(path, &recs, schema)?);
    };
    match path {
        Lwm2mPath::ResourceInstance(..) => Ok(Node::ResourceInstance(
            typed(schema, path, value)?.ok_or(BodyError::NullValue)?,
        )),
        Lwm2mPath::Resource(..) => match value {
            Json::Object(m) => {
                let mut out = BTreeMap::new();
                for (k, v) in m {
                    let ri: u16 = k
                        .parse()
                        .map_err(|_| BodyError::InstanceKey { key: k.clone() })?;
                    let p = path
                        .child(ri)
                        .ok_or(BodyError::ResourceInstance { id: ri })?;
                    let v = typed(schema, &p, v)?.ok_or(BodyError::NullValue)?;
                    out.insert(lwm2m_proto::ResourceInstanceId(ri), v);
                }
                Ok(Node::Resource(ResourceValue::Multiple(out)))
            }
            v => Ok(Node::Resource(ResourceValue::Single(
                typed(schema, path, v)?.ok_or(BodyError::NullValue)?,
            ))),
        },
        _ => Err(BodyError::ValueNeedsResource { path: *path }),
    }
}

/// The SSE event name (Leshan's names) and JSON data of an event; `None` for events the
/// API does not show (operation outcomes: the REST call that asked gets those).
pub fn event(registry: &Registry, e: &Event) -> Option<(&'static str, Json)> {
    Some(match e {
        Event::Server(s) => server_event(registry, s)?,
        Event::Bootstrap(b) => bootstrap_event(b)?,
        Event::CoapLog(d) => ("COAPLOG", coap_log(d)),
        Event::Security(role, s) => {
            let mut json = security_event(s);
            if let Some(m) = json.as_object_mut() {
                m.insert("server".into(), json!(role));
            }
            ("SECURITY", json)
        }
        Event::Remote {
            instance,
            name,
            data,
        } => {
            let mut data = data.clone();
            if let Some(m) = data.as_object_mut() {
                m.insert("instance".into(), json!(instance));
            }
            (*name, data)
        }
    })
}

fn security_event(e: &SecurityEvent) -> Json {
    match e {
        SecurityEvent::Established { peer, identity } => {
            json!({"kind": "established", "peer": peer.to_string(), "identity": identity.to_string()})
        }
        SecurityEvent::HandshakeFailed {
            peer,
            identity,
            reason,
        } => {
            let identity = identity.as_ref().map(ToString::to_string);
            json!({"kind": "handshake_failed", "peer": peer.to_string(), "identity": identity, "reason": format!("{reason:?}")})
        }
        SecurityEvent::Closed {
            peer,
            identity,
            reason,
        } => {
            json!({"kind": "closed", "peer": peer.to_string(), "identity": identity.to_string(), "reason": format!("{reason:?}")})
        }
        SecurityEvent::IdentityMismatch {
            peer,
            identity,
            endpoint,
            owner,
        } => {
            json!({"kind": "identity_mismatch", "peer": peer.to_string(), "identity": identity.to_string(), "endpoint": endpoint, "owner": owner})
        }
        SecurityEvent::Insecure { peer, endpoint } => {
            json!({"kind": "insecure", "peer": peer.to_string(), "endpoint": endpoint})
        }
    }
}

fn server_event(registry: &Registry, e: &ServerEvent) -> Option<(&'static str, Json)> {
    let entry = |r: &Registration| {
        registration(&ClientEntry {
            registration: r.clone(),
            sleeping: false,
        })
    };
    Some(match e {
        ServerEvent::Registered {
            registration: r,
            replaced,
        } => (
            "REGISTRATION",
            json!({
                "registration": entry(r),
                "replaced": replaced.as_ref().map(|p| p.id.clone()),
                "replaced_address": replaced.as_ref().map(|p| p.address.to_string()),
            }),
        ),
        ServerEvent::Updated {
            registration: r,
            previous_address,
        } => (
            "UPDATED",
            json!({"registration": entry(r), "previous_address": previous_address.map(|a| a.to_string())}),
        ),
        ServerEvent::Deregistered { registration: r } => (
            "DEREGISTRATION",
            json!({"registration": entry(r), "expired": false}),
        ),
        ServerEvent::Expired { registration: r } => (
            "DEREGISTRATION",
            json!({"registration": entry(r), "expired": true}),
        ),
        ServerEvent::RegistrationRefused { peer, code, reason } => (
            "REGISTRATION_REFUSED",
            json!({"peer": peer.to_string(), "code": code_text(*code), "reason": reason}),
        ),
        ServerEvent::LimitReached {
            peer,
            limit,
            code,
            reason,
        } => (
            "REGISTRATION_REFUSED",
            json!({"peer": peer.to_string(), "code": code_text(*code), "reason": reason, "limit": limit.key()}),
        ),
        ServerEvent::RequestRefused { peer, code, reason } => (
            "REQUEST_REFUSED",
            json!({"peer": peer.to_string(), "code": code_text(*code), "reason": reason}),
        ),
        ServerEvent::Sleeping { endpoint } => ("SLEEPING", json!({"endpoint": endpoint})),
        ServerEvent::Awake { endpoint } => ("AWAKE", json!({"endpoint": endpoint})),
        ServerEvent::Notification {
            observation,
            endpoint,
            path,
            response: r,
            seq,
        } => (
            "NOTIFICATION",
            json!({
                "endpoint": endpoint,
                "observation": observation.0,
                "path": path.to_string(),
                "seq": seq,
                "response": response(registry, registry, Some(path), r),
            }),
        ),
        ServerEvent::ObservationEnded {
            observation,
            endpoint,
            reason,
        } => (
            "OBSERVATION_ENDED",
            json!({"endpoint": endpoint, "observation": observation.0, "reason": reason}),
        ),
        ServerEvent::Send {
            endpoint,
            records: recs,
            findings,
        } => (
            "SEND",
            json!({
                "endpoint": endpoint,
                "nodes": records(registry, registry, recs),
                "findings": findings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        ),
        _ => return None,
    })
}

fn bootstrap_event(e: &BootstrapEvent) -> Option<(&'static str, Json)> {
    let path = |p: &Option<Lwm2mPath>| p.map(|p| p.to_string());
    Some(match e {
        BootstrapEvent::SessionStarted {
            endpoint,
            peer,
            config,
            initiated_by_client,
            format,
        } => (
            "BOOTSTRAP_STARTED",
            json!({
                "endpoint": endpoint,
                "peer": peer.to_string(),
                "config": config,
                "initiated_by_client": initiated_by_client,
                "format": format.name(),
            }),
        ),
        BootstrapEvent::Step {
            endpoint,
            step,
            path: p,
            code,
            detail,
        } => (
            "BOOTSTRAP_STEP",
            json!({"endpoint": endpoint, "step": step, "path": path(p), "code": code_text(*code), "detail": detail}),
        ),
        BootstrapEvent::Finished { endpoint, duration } => (
            "BOOTSTRAP_FINISHED",
            json!({"endpoint": endpoint, "duration_ms": duration.as_secs_f64() * 1000.0}),
        ),
        BootstrapEvent::Failed {
            endpoint,
            step,
            path: p,
            reason,
        } => (
            "BOOTSTRAP_FAILED",
            json!({"endpoint": endpoint, "step": step, "path": path(p), "reason": reason.to_string()}),
        ),
        BootstrapEvent::Refused {
            peer,
            endpoint,
            code,
            reason,
        } => (
            "BOOTSTRAP_REFUSED",
            json!({"peer": peer.to_string(), "endpoint": endpoint, "code": code_text(*code), "reason": reason}),
        ),
        _ => return None,
    })
}

/// The content type of a DTLS record header (RFC 6347 §4.1: type, version 254.x), if
/// `bytes` starts with one.
fn dtls_record(bytes: &[u8]) -> Option<&'static str> {
    let &[kind, 254, 253 | 255, ..] = bytes else {
        return None;
    };
    Some(match kind {
        20 => "change_cipher_spec",
        21 => "alert",
        22 => "handshake",
        23 => "application_data",
        _ => return None,
    })
}

/// A datagram for COAPLOG: addresses, size, a one-line CoAP summary (or the DTLS record
/// type on the DTLS socket) and the hex bytes.
pub fn coap_log(d: &Datagram) -> Json {
    let summary = match lwm2m_proto::coap::message::decode(&d.bytes) {
        Ok(p) => {
            let path = lwm2m_proto::coap::message::uri_path(&p);
            format!(
                "{:?} {} mid={} token={} {}{}",
                p.header.get_type(),
                p.header.code,
                p.header.message_id,
                hex(p.get_token()),
                if path == "/"
                    && !matches!(p.header.code, lwm2m_proto::coap::MessageClass::Request(_))
                {
                    String::new()
                } else {
                    path
                },
                if p.payload.is_empty() {
                    String::new()
                } else {
                    format!(" ({} payload bytes)", p.payload.len())
                }
            )
        }
        Err(e) => match dtls_record(&d.bytes) {
            Some(kind) => format!("DTLS {kind} ({} bytes)", d.bytes.len()),
            None => format!("not CoAP: {}", e.reason),
        },
    };
    json!({
        "role": d.role,
        "direction": d.direction,
        "local": d.local.to_string(),
        "peer": d.peer.to_string(),
        "at": system_millis(d.at),
        "length": d.bytes.len(),
        "summary": summary,
        "hex": hex(&d.bytes),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    #[test]
    fn instants_map_to_wall_time_in_the_past_and_the_future() {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |i| super::unix_millis_from(i, now, wall);
        assert_eq!(at(now), 1_800_000_000_000);
        assert_eq!(at(now + Duration::from_secs(300)), 1_800_000_300_000);
        if let Some(past) = now.checked_sub(Duration::from_millis(1500)) {
            assert_eq!(at(past), 1_799_999_998_500);
        }
    }

    #[test]
    fn expires_at_is_the_last_update_plus_the_lifetime() {
        let last_update = Instant::now();
        let entry = crate::registrations::ClientEntry {
            registration: lwm2m_proto::server::Registration {
                id: "r".into(),
                endpoint: "ep".into(),
                version: lwm2m_proto::registration::Lwm2mVersion::V1_1,
                lifetime: 86_400,
                binding: "U".into(),
                queue_mode: false,
                sms: None,
                address: "127.0.0.1:5683".parse().unwrap(),
                links: Default::default(),
                registered_at: last_update,
                last_update,
                findings: vec![],
                link_notes: vec![],
            },
            sleeping: false,
        };
        let j = super::registration(&entry);
        let (updated, expires) = (
            j["last_update"].as_u64().unwrap(),
            j["expires_at"].as_u64().unwrap(),
        );
        // Each is mapped through the wall clock when read: a millisecond apart at most.
        assert!(
            expires.abs_diff(updated + 86_400_000) <= 1,
            "{updated} + 86400 s is not {expires}"
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            expires > now + 86_000_000,
            "{expires} is not a day ahead of {now}"
        );
    }

    #[test]
    fn dtls_records_are_named() {
        assert_eq!(super::dtls_record(&[22, 254, 253, 0]), Some("handshake"));
        assert_eq!(
            super::dtls_record(&[23, 254, 253]),
            Some("application_data")
        );
        assert_eq!(super::dtls_record(&[22, 3, 3]), None);
        assert_eq!(super::dtls_record(&[0x40, 1, 0, 1]), None);
        assert_eq!(super::dtls_record(&[22]), None);
    }

    use super::*;

    #[test]
    fn values_are_typed_through_the_registry() {
        let reg = Registry::embedded();
        let p: Lwm2mPath = "/3/0/14".parse().unwrap();
        assert_eq!(
            node_from(&reg, &p, &json!({"value": "+02"})).unwrap(),
            Node::Resource(ResourceValue::Single(Value::String("+02".into())))
        );
        let p13: Lwm2mPath = "/3/0/13".parse().unwrap();
        assert_eq!(
            node_from(&reg, &p13, &json!({"value": 1_700_000_000})).unwrap(),
            Node::Resource(ResourceValue::Single(Value::Time(1_700_000_000)))
        );
        assert!(node_from(&reg, &p13, &json!({"value": "soon"})).is_err());
        let inst: Lwm2mPath = "/3/0".parse().unwrap();
        let node = node_from(
            &reg,
            &inst,
            &json!({"/3/0/14": "+01", "/3/0/15": "Europe/Paris"}),
        )
        .unwrap();
        assert_eq!(node.to_records(&inst).len(), 2);
        assert_eq!(
            node_from(&reg, &inst, &json!({"value": 1})),
            Err(BodyError::ValueNeedsResource { path: inst })
        );
        assert_eq!(records_from(&reg, &json!([1])), Err(BodyError::NotRecords));
        assert_eq!(
            records_from(&reg, &json!({"nodes": [{"value": 1}]})),
            Err(BodyError::NodeWithoutPath { index: 0 })
        );
        let soon = node_from(&reg, &p13, &json!({"value": "soon"})).unwrap_err();
        assert!(matches!(soon, BodyError::Value { path, .. } if path == p13));
        assert!(
            soon.to_string().starts_with("/3/0/13 (Current Time, "),
            "{soon}"
        );
        let bad_path = records_from(&reg, &json!({"/3/x": 1})).unwrap_err();
        assert!(matches!(bad_path, BodyError::Path { ref text, .. } if text == "/3/x"));
        assert!(bad_path.to_string().starts_with("\"/3/x\": "), "{bad_path}");
        assert_eq!(code_text((4, 4)), "4.04");
    }

    #[test]
    fn security_events_name_their_server() {
        use crate::events::{Role, SecurityEvent};
        let event = Event::Security(
            Role::Bootstrap,
            SecurityEvent::HandshakeFailed {
                peer: "127.0.0.1:9".parse().unwrap(),
                identity: Some(lwm2m_dtls::Identity::Psk(std::sync::Arc::from(
                    &b"bs-1"[..],
                ))),
                reason: lwm2m_dtls::FailureReason::WrongKey,
            },
        );
        let (name, json) = super::event(&Registry::embedded(), &event).unwrap();
        assert_eq!(name, "SECURITY");
        assert_eq!(
            json,
            json!({"kind": "handshake_failed", "server": "bootstrap", "peer": "127.0.0.1:9",
                   "identity": "psk:bs-1", "reason": "WrongKey"})
        );
    }
}
