//! The Leshan API: responses: Leshan's JacksonResponseSerializer shape.

use super::*;

/// Leshan's `ResponseCode` names.
pub(super) fn status_name((class, detail): (u8, u8)) -> String {
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
pub(super) enum Shape {
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

pub(super) fn discover_link(e: &DiscoverEntry) -> Json {
    link_json(&e.to_link())
}

/// The success code an operation's answer must carry (Core TS 1.1 §6.3, §6.4).
pub(super) fn expected_code(op: &Operation) -> (u8, u8) {
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
pub(super) fn is_valid(code: (u8, u8), expected: (u8, u8)) -> bool {
    code == expected || code.0 == 4 || code == (5, 0)
}

pub(super) fn response_json(
    schema: &dyn Schema,
    shape: &Shape,
    r: &Response,
    expected: (u8, u8),
) -> Json {
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
pub(super) fn driver_error(e: &DriverError) -> Failure {
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

pub(super) fn request_timeout() -> Failure {
    text(StatusCode::GATEWAY_TIMEOUT, "Request timeout")
}
