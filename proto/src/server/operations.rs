//! The requests of the Device Management and Information Reporting interfaces (Core TS 1.1
//! §6.3, §6.4) as CoAP messages, the choice of their Content-Format, and the decoding of the
//! client's answers.

use std::collections::BTreeMap;

use coap_lite::{CoapOption, Packet, RequestType};

use super::api::{Content, OpError, Operation, Registration, Response};
use crate::coap::message::{self, code_pair, observe_value, uint_bytes, uint_option};
use crate::codec::link::{AttributeName, parse_discover};
use crate::content::{self, CodecError, ContentFormat};
use crate::ids::Lwm2mPath;
use crate::model::Schema;
use crate::node::{Node, Record, ResourceValue};
use crate::registration::Lwm2mVersion;
use crate::value::DataType;

/// What the payload of a success response is expected to hold.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Body {
    /// A node at this path (Read, Observe).
    Node(Lwm2mPath),
    /// A record list (Read-Composite, Observe-Composite).
    Records,
    /// A link list (Discover).
    Links,
    /// Nothing worth decoding (Write, Execute, Create, Delete, Write-Attributes).
    Nothing,
}

/// A request ready to go out; the address is chosen when it is sent (queue mode).
#[derive(Debug, Clone)]
pub(super) struct Prepared {
    pub(super) packet: Packet,
    pub(super) body: Body,
    /// The format asked for with Accept: used to decode an answer without Content-Format.
    pub(super) accept: Option<ContentFormat>,
    /// For Observe and Observe-Composite: the observed paths.
    pub(super) observe: Option<Vec<Lwm2mPath>>,
}

/// The Content-Format the server uses with a client when an operation names none.
///
/// Single-node operations (Read, Observe, Write, Create):
/// - LwM2M 1.0: TLV (Core TS 1.0 §6.4.3 makes it the format every 1.0 client supports);
///   the pre-1.0 number 1542 when the client announced `ct=1542` or `ct=1543`.
/// - LwM2M 1.1: SenML CBOR when announced in `ct` on the root link, else TLV.
/// - LwM2M 1.2: LwM2M CBOR when announced, else SenML CBOR when announced, else TLV.
///
/// Composite operations (`composite`: Read-, Write-, Observe-Composite, Core TS 1.1 §6.3.8,
/// §6.3.9, §6.4.3) need a format that names every path: LwM2M CBOR (1.2, when announced),
/// else SenML CBOR when announced, else SenML JSON when announced, else SenML CBOR.
/// LwM2M 1.0 has no composite operations: [`OpError::Invalid`].
///
/// Create without an instance id always uses TLV (see [`Operation::Create`]'s handling in
/// [`crate::server::Lwm2mServer::request`]).
///
/// A single value of a LwM2M 1.0 client (Read, Observe or Write of a single-instance
/// resource or of a resource instance) goes as text/plain or octet-stream instead (see
/// `single_value_format`): this function does not see the path.
pub fn choose_format(
    registration: &Registration,
    composite: bool,
) -> Result<ContentFormat, OpError> {
    let announced = |f: ContentFormat| registration.links.content_formats.contains(&f.code());
    let lwm2m_cbor =
        registration.version >= Lwm2mVersion::V1_2 && announced(ContentFormat::Lwm2mCbor);
    Ok(match (registration.version, composite) {
        (Lwm2mVersion::V1_0, true) => return Err(no_composite(registration)),
        (Lwm2mVersion::V1_0, false) => tlv_for(registration),
        (_, _) if lwm2m_cbor => ContentFormat::Lwm2mCbor,
        (_, _) if announced(ContentFormat::SenmlCbor) => ContentFormat::SenmlCbor,
        (_, true) if announced(ContentFormat::SenmlJson) => ContentFormat::SenmlJson,
        (_, true) => ContentFormat::SenmlCbor,
        (_, false) => ContentFormat::Tlv,
    })
}

/// TLV under the number the client knows: 1542 for a client that announced a pre-1.0
/// format, 11542 otherwise.
fn tlv_for(registration: &Registration) -> ContentFormat {
    let cts = &registration.links.content_formats;
    let legacy = [ContentFormat::LegacyTlv, ContentFormat::LegacyJson]
        .iter()
        .any(|f| cts.contains(&f.code()));
    if legacy {
        ContentFormat::LegacyTlv
    } else {
        ContentFormat::Tlv
    }
}

/// The format of a single value for a LwM2M 1.0 client when the operation names none:
/// text/plain, or octet-stream for an Opaque resource (Core TS 1.0 §6.4.1, §6.4.2). These
/// two have the same number in every version, while TLV was 1542 before 1.0 and 11542
/// since: a pre-1.0 peer that registers as 1.0 without announcing its formats (npm
/// lwm2m-node-lib) silently drops a request with Accept 11542 and answers text/plain.
/// `None` for 1.1+ clients, clients that announced the pre-1.0 numbers ([`tlv_for`] serves
/// them), and paths that are not a single value by the schema (instances, multiple or
/// unknown resources).
fn single_value_format(
    registration: &Registration,
    path: &Lwm2mPath,
    schema: &dyn Schema,
) -> Option<ContentFormat> {
    if registration.version != Lwm2mVersion::V1_0 || tlv_for(registration) != ContentFormat::Tlv {
        return None;
    }
    let def = match *path {
        Lwm2mPath::Resource(o, _, r) => schema.resource(o, r).filter(|d| !d.multiple)?,
        Lwm2mPath::ResourceInstance(o, _, r, _) => schema.resource(o, r)?,
        _ => return None,
    };
    Some(match def.data_type {
        DataType::Opaque => ContentFormat::Opaque,
        _ => ContentFormat::Text,
    })
}

fn invalid(reason: impl Into<String>) -> OpError {
    OpError::Invalid {
        reason: reason.into(),
    }
}

fn no_composite(registration: &Registration) -> OpError {
    invalid(format!(
        "composite operations are LwM2M 1.1+ (Core TS 1.1 §6.3.8); {:?} registered as 1.0",
        registration.endpoint
    ))
}

/// A confirmable request for `path` under the client's alternate path (Core TS 1.1 §6.2.1:
/// `</lwm2m>;rt="oma.lwm2m"` puts the objects under `/lwm2m`).
fn request_to(method: RequestType, registration: &Registration, path: &Lwm2mPath) -> Packet {
    message::request(
        method,
        &format!("{}/{}", registration.links.alternate_path, path),
    )
}

fn set_format(packet: &mut Packet, option: CoapOption, format: ContentFormat) {
    message::set_option(packet, option, uint_bytes(u32::from(format.code())));
}

fn at_least(path: &Lwm2mPath, depth: usize, what: &str) -> Result<(), OpError> {
    if path.depth() >= depth {
        Ok(())
    } else {
        Err(invalid(format!("{what} on {path} (Core TS 1.1 §6.3)")))
    }
}

/// Composite formats must name every path (Core TS 1.1 §6.3.8).
fn composite_format(
    registration: &Registration,
    format: Option<ContentFormat>,
) -> Result<ContentFormat, OpError> {
    if registration.version == Lwm2mVersion::V1_0 {
        return Err(no_composite(registration));
    }
    let format = match format {
        Some(f) => f,
        None => choose_format(registration, true)?,
    };
    match format {
        ContentFormat::SenmlJson | ContentFormat::SenmlCbor | ContentFormat::Lwm2mCbor => {
            Ok(format)
        }
        f => Err(invalid(format!(
            "composite operations need SenML JSON, SenML CBOR or LwM2M CBOR, not {f} \
             (Core TS 1.1 §6.3.8)"
        ))),
    }
}

/// A FETCH `/` with the path-only records of `paths` (Core TS 1.1 §6.3.8, RFC 8790 §3).
///
/// The path list is SenML (JSON or CBOR), the answer comes in `format` (the Accept
/// option): with LwM2M CBOR (Core TS 1.2 §7.4.6) chosen for the answer, the list is SenML
/// CBOR, or SenML JSON for a client that announced only that: a path-only record for
/// `/`, an object or an instance has no LwM2M CBOR form (its maps are keyed by ids below
/// the root, and a record that names a whole device has none). Returns the packet and the
/// answer's format.
fn fetch_paths(
    registration: &Registration,
    paths: &[Lwm2mPath],
    format: Option<ContentFormat>,
) -> Result<(Packet, ContentFormat), OpError> {
    let format = composite_format(registration, format)?;
    if paths.is_empty() {
        return Err(invalid("a composite request names at least one path"));
    }
    let list = match format {
        ContentFormat::Lwm2mCbor => senml_for(registration),
        f => f,
    };
    let records: Vec<Record> = paths
        .iter()
        .map(|path| Record {
            path: *path,
            value: None,
            time: None,
        })
        .collect();
    let mut packet = request_to(RequestType::Fetch, registration, &Lwm2mPath::Root);
    set_format(&mut packet, CoapOption::ContentFormat, list);
    set_format(&mut packet, CoapOption::Accept, format);
    packet.payload = content::encode_records(list, &records).map_err(OpError::Encode)?;
    Ok((packet, format))
}

/// The SenML format of a client: CBOR unless it announced JSON and not CBOR.
fn senml_for(registration: &Registration) -> ContentFormat {
    let announced = |f: ContentFormat| registration.links.content_formats.contains(&f.code());
    if announced(ContentFormat::SenmlJson) && !announced(ContentFormat::SenmlCbor) {
        ContentFormat::SenmlJson
    } else {
        ContentFormat::SenmlCbor
    }
}

/// Builds the request of an operation for a client (Core TS 1.1 §6.3, §6.4; the CoAP
/// mapping of each operation is in its arm). [`Operation::CancelObservation`] is not a
/// request of its own here: the server machine handles it.
pub(super) fn prepare(
    registration: &Registration,
    operation: &Operation,
    schema: &dyn Schema,
) -> Result<Prepared, OpError> {
    let single_format = |format: Option<ContentFormat>| match format {
        Some(f) => Ok(f),
        None => choose_format(registration, false),
    };
    // Read, Observe and Write: a 1.0 client's single values go as text or octet-stream.
    let node_format = |format: Option<ContentFormat>, path: &Lwm2mPath| match format {
        None => {
            single_value_format(registration, path, schema).map_or_else(|| single_format(None), Ok)
        }
        f => single_format(f),
    };
    let prepared = |packet, body, accept, observe| Prepared {
        packet,
        body,
        accept,
        observe,
    };
    Ok(match operation {
        // GET + Accept (Core TS 1.1 §6.3.1).
        Operation::Read { path, format } | Operation::Observe { path, format } => {
            at_least(path, 1, "Read or Observe")?;
            let format = node_format(*format, path)?;
            let mut packet = request_to(RequestType::Get, registration, path);
            set_format(&mut packet, CoapOption::Accept, format);
            let observe = matches!(operation, Operation::Observe { .. });
            if observe {
                // RFC 7641 §2: Observe = 0 registers.
                packet.set_observe_value(0);
            }
            let observed = observe.then(|| vec![*path]);
            prepared(packet, Body::Node(*path), Some(format), observed)
        }
        // GET + Accept application/link-format (Core TS 1.1 §6.3.2).
        Operation::Discover { path } => {
            at_least(path, 1, "Discover")?;
            let mut packet = request_to(RequestType::Get, registration, path);
            set_format(&mut packet, CoapOption::Accept, ContentFormat::LinkFormat);
            prepared(packet, Body::Links, Some(ContentFormat::LinkFormat), None)
        }
        // PUT (replace) or POST (partial update) with the node (Core TS 1.1 §6.3.3).
        Operation::Write {
            path,
            node,
            replace,
            format,
        } => {
            at_least(path, 2, "Write")?;
            let format = match node {
                Node::Resource(ResourceValue::Single(_)) | Node::ResourceInstance(_) => {
                    node_format(*format, path)?
                }
                _ => single_format(*format)?,
            };
            let method = if *replace {
                RequestType::Put
            } else {
                RequestType::Post
            };
            let mut packet = request_to(method, registration, path);
            set_format(&mut packet, CoapOption::ContentFormat, format);
            packet.payload = content::encode(format, path, node).map_err(OpError::Encode)?;
            prepared(packet, Body::Nothing, None, None)
        }
        // PUT with the attributes as Uri-Query, no payload (Core TS 1.1 §6.3.4).
        Operation::WriteAttributes { path, attributes } => {
            at_least(path, 1, "Write-Attributes")?;
            let named = |a: AttributeName| attributes.unset.contains(&a);
            let epm = attributes.set.epmin.is_some()
                || attributes.set.epmax.is_some()
                || named(AttributeName::Epmin)
                || named(AttributeName::Epmax);
            if epm && registration.version == Lwm2mVersion::V1_0 {
                return Err(invalid(format!(
                    "epmin and epmax are LwM2M 1.1+ (Core TS 1.1 §5.1.2); {:?} registered as 1.0",
                    registration.endpoint
                )));
            }
            let mut packet = request_to(RequestType::Put, registration, path);
            for query in attributes.to_query() {
                message::add_query(&mut packet, &query);
            }
            prepared(packet, Body::Nothing, None, None)
        }
        // POST on a resource, arguments as text/plain (Core TS 1.1 §6.3.5).
        Operation::Execute { path, args } => {
            if !matches!(path, Lwm2mPath::Resource(..)) {
                return Err(invalid(format!(
                    "Execute targets a resource, not {path} (Core TS 1.1 §6.3.5)"
                )));
            }
            let mut packet = request_to(RequestType::Post, registration, path);
            if let Some(args) = args {
                set_format(&mut packet, CoapOption::ContentFormat, ContentFormat::Text);
                packet.payload = args.as_bytes().to_vec();
            }
            prepared(packet, Body::Nothing, None, None)
        }
        // POST /O with the new instance (Core TS 1.1 §6.3.6). With an instance id the
        // payload names it (TLV: an Object Instance TLV; SenML: `/O/I/R` names); without,
        // only TLV can carry bare resources (SenML names every record by its full path, OMA
        // LwM2M for Developers issue #422), so TLV is used whatever the client announced.
        Operation::Create {
            object,
            instance,
            resources,
            format,
        } => {
            let target = Lwm2mPath::Object(*object);
            let mut packet = request_to(RequestType::Post, registration, &target);
            let (format, payload) = match instance {
                Some(i) => {
                    let format = single_format(*format)?;
                    let node = Node::Object(BTreeMap::from([(*i, resources.clone())]));
                    (format, content::encode(format, &target, &node))
                }
                None => {
                    let format = format.unwrap_or_else(|| tlv_for(registration));
                    if format.canonical() != ContentFormat::Tlv {
                        return Err(invalid(format!(
                            "Create without an instance id needs TLV, {format} names every \
                             resource by its instance (Core TS 1.1 §6.3.6)"
                        )));
                    }
                    let at = Lwm2mPath::Instance(*object, crate::ids::InstanceId(0));
                    let node = Node::Instance(resources.clone());
                    (format, content::encode(format, &at, &node))
                }
            };
            set_format(&mut packet, CoapOption::ContentFormat, format);
            packet.payload = payload.map_err(OpError::Encode)?;
            prepared(packet, Body::Nothing, None, None)
        }
        // DELETE (Core TS 1.1 §6.3.7).
        Operation::Delete { path } => {
            at_least(path, 1, "Delete")?;
            let packet = request_to(RequestType::Delete, registration, path);
            prepared(packet, Body::Nothing, None, None)
        }
        // FETCH / with the paths (Core TS 1.1 §6.3.8).
        Operation::ReadComposite { paths, format } => {
            let (packet, format) = fetch_paths(registration, paths, *format)?;
            prepared(packet, Body::Records, Some(format), None)
        }
        // FETCH / + Observe = 0 (Core TS 1.1 §6.4.3).
        Operation::ObserveComposite { paths, format } => {
            let (mut packet, format) = fetch_paths(registration, paths, *format)?;
            packet.set_observe_value(0);
            prepared(packet, Body::Records, Some(format), Some(paths.clone()))
        }
        // iPATCH / with the values (Core TS 1.1 §6.3.9).
        Operation::WriteComposite { records, format } => {
            let format = composite_format(registration, *format)?;
            if records.is_empty() {
                return Err(invalid("Write-Composite needs at least one value"));
            }
            if let Some(r) = records.iter().find(|r| r.value.is_none()) {
                return Err(invalid(format!(
                    "Write-Composite record {} has no value",
                    r.path
                )));
            }
            let mut packet = request_to(RequestType::IPatch, registration, &Lwm2mPath::Root);
            set_format(&mut packet, CoapOption::ContentFormat, format);
            packet.payload = content::encode_records(format, records).map_err(OpError::Encode)?;
            prepared(packet, Body::Nothing, None, None)
        }
        Operation::CancelObservation { .. } => {
            return Err(invalid("a cancellation is not a request of its own"));
        }
    })
}

/// The Location-Path of a Create answer below the alternate path (`/3303/1`).
fn location(packet: &Packet, alternate_path: &str) -> Option<Lwm2mPath> {
    let segments: Vec<String> = packet
        .get_option(CoapOption::LocationPath)?
        .iter()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let prefix: Vec<String> = alternate_path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let rest = segments
        .strip_prefix(prefix.as_slice())
        .unwrap_or(&segments);
    Lwm2mPath::from_segments(rest).ok()
}

/// Decodes a client's answer (Core TS 1.1 §7.4) with the schema of the object versions it
/// registered. The payload of a success is decoded as `body` says, in its Content-Format,
/// or in the format asked for with Accept when the answer has none; an error response's
/// payload is kept as diagnostic text (RFC 7252 §5.5.2). Values that do not fit the schema
/// come back as findings; a payload that cannot be decoded at all is
/// [`OpError::Decode`].
pub(super) fn decode_response(
    packet: &Packet,
    body: &Body,
    accept: Option<ContentFormat>,
    alternate_path: &str,
    schema: &dyn Schema,
) -> Result<Response, OpError> {
    let mut response = headers(packet, alternate_path);
    decode_content(&mut response, packet, body, accept, schema).map_err(|error| {
        OpError::Decode {
            code: response.code,
            error,
        }
    })?;
    Ok(response)
}

/// Decodes a notification (RFC 7641 §3.2) like [`decode_response`]; one that cannot be
/// decoded is still reported, without content, the decoder's error as `diagnostic`.
pub(super) fn decode_notification(
    packet: &Packet,
    body: &Body,
    accept: Option<ContentFormat>,
    alternate_path: &str,
    schema: &dyn Schema,
) -> Response {
    let mut response = headers(packet, alternate_path);
    if let Err(error) = decode_content(&mut response, packet, body, accept, schema) {
        response.diagnostic = Some(error.to_string());
    }
    response
}

/// Everything of a response but its decoded content.
fn headers(packet: &Packet, alternate_path: &str) -> Response {
    let code = code_pair(packet.header.code);
    let format = uint_option(packet, CoapOption::ContentFormat)
        .and_then(|n| u16::try_from(n).ok())
        .and_then(ContentFormat::from_code);
    let payload = &packet.payload;
    Response {
        code,
        format,
        location: location(packet, alternate_path),
        payload_len: payload.len(),
        diagnostic: (code.0 >= 4 && !payload.is_empty())
            .then(|| String::from_utf8_lossy(payload).into_owned()),
        ..Response::empty()
    }
}

/// Fills `content` and `findings` from the payload of a success.
fn decode_content(
    response: &mut Response,
    packet: &Packet,
    body: &Body,
    accept: Option<ContentFormat>,
    schema: &dyn Schema,
) -> Result<(), CodecError> {
    let payload = &packet.payload;
    if response.code.0 != 2 || payload.is_empty() || *body == Body::Nothing {
        return Ok(());
    }
    let decode_as = match (
        uint_option(packet, CoapOption::ContentFormat),
        response.format,
    ) {
        (Some(_), Some(f)) => f,
        (None, _) => match accept {
            Some(f) => f,
            None => return Ok(()),
        },
        (Some(n), None) => {
            return Err(CodecError::malformed(
                "content-format",
                0,
                format!("Content-Format {n} is not one LwM2M uses (Core TS 1.1 §7.4)"),
            ));
        }
    };
    let (content, findings) = match body {
        Body::Node(path) => {
            let decoded = content::decode(decode_as, payload, path, schema)?;
            (Content::Node(decoded.content), decoded.findings)
        }
        Body::Records => {
            let decoded = content::decode_records(decode_as, payload, schema)?;
            (Content::Records(decoded.content), decoded.findings)
        }
        Body::Links => {
            if decode_as != ContentFormat::LinkFormat {
                return Err(CodecError::Unsupported {
                    format: decode_as,
                    what: "a Discover answer (Core TS 1.1 §6.3.2 wants link-format)".into(),
                });
            }
            let text = std::str::from_utf8(payload).map_err(|e| {
                CodecError::malformed("link-format", e.valid_up_to(), "not UTF-8 (RFC 6690 §2)")
            })?;
            let links = parse_discover(text)
                .map_err(|e| CodecError::malformed("link-format", 0, e.to_string()))?;
            (Content::Links(links), Vec::new())
        }
        Body::Nothing => return Ok(()),
    };
    response.content = Some(content);
    response.findings = findings;
    Ok(())
}

/// Whether a response establishes an observation: a success carrying Observe
/// (RFC 7641 §3.1).
pub(super) fn establishes_observation(packet: &Packet) -> bool {
    code_pair(packet.header.code).0 == 2 && observe_value(packet).is_some()
}
