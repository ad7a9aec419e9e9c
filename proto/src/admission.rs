//! The one reading of the requests a client makes for an endpoint: Register, Update and
//! De-register (Core TS 1.1 §6.2.1-§6.2.3) and Bootstrap-Request (§5.2.7.1).
//!
//! Every gate in front of a machine (the DTLS identity check, the plain socket's "has
//! credentials, must use DTLS" refusal, the limits) and the machines themselves classify a
//! request with [`classify`], so they cannot disagree on which endpoint it acts for: a
//! query parameter given twice (`?ep=mallory&ep=victim`) is refused here, 4.00, before any
//! of them acts on one of the two values.

use coap_lite::{CoapOption, MessageClass, Packet, RequestType};

use crate::bootstrap::error::BootstrapError;
use crate::content::ContentFormat;
use crate::registration::{self, RegisterParams, RegistrationError, UpdateParams};

/// A request of the Registration interface or a Bootstrap-Request, read from its CoAP
/// message (method, Uri-Path and Uri-Query; the payload is the machine's business).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InterfaceRequest {
    /// `POST /rd?ep=...` (Core TS 1.1 §6.2.1).
    Register(RegisterParams),
    /// `POST /rd/{id}` (Core TS 1.1 §6.2.2).
    Update {
        /// The registration id (the Location-Path the Register got).
        id: String,
        /// The query.
        params: UpdateParams,
    },
    /// `DELETE /rd/{id}` (Core TS 1.1 §6.2.3).
    Deregister {
        /// The registration id.
        id: String,
    },
    /// `POST /bs?ep=...` (Core TS 1.1 §5.2.7.1).
    BootstrapRequest(BootstrapRequestParams),
}

impl InterfaceRequest {
    /// The endpoint name the request carries (Register, Bootstrap-Request); an Update or
    /// De-register names its registration by id instead.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Self::Register(p) => Some(&p.endpoint),
            Self::BootstrapRequest(p) => Some(&p.endpoint),
            Self::Update { .. } | Self::Deregister { .. } => None,
        }
    }

    /// The registration id of an Update or De-register.
    pub fn registration_id(&self) -> Option<&str> {
        match self {
            Self::Update { id, .. } | Self::Deregister { id } => Some(id),
            Self::Register(_) | Self::BootstrapRequest(_) => None,
        }
    }

    /// The operation's name, as reports and logs spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Register(_) => "register",
            Self::Update { .. } => "update",
            Self::Deregister { .. } => "deregister",
            Self::BootstrapRequest(_) => "bootstrap-request",
        }
    }
}

/// The Uri-Query of a Bootstrap-Request (Core TS 1.1 §5.2.7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapRequestParams {
    /// `ep`: Endpoint Client Name.
    pub endpoint: String,
    /// The format of the Bootstrap-Writes: `pct` (1.1), TLV without it (1.0).
    pub format: ContentFormat,
}

/// Why a request of the two interfaces cannot be read, with the code to answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    /// A Register, Update or De-register.
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    /// A Bootstrap-Request.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
}

impl AdmissionError {
    /// The CoAP response code (class, detail).
    pub fn coap_code(&self) -> (u8, u8) {
        match self {
            Self::Registration(e) => e.coap_code(),
            Self::Bootstrap(e) => e.coap_code(),
        }
    }
}

/// What the request is by its method and Uri-Path alone, without reading the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Register,
    Update,
    Deregister,
    BootstrapRequest,
}

fn kind(packet: &Packet) -> Option<Kind> {
    let MessageClass::Request(method) = packet.header.code else {
        return None;
    };
    let path = packet.get_option(CoapOption::UriPath);
    let segments: Vec<&[u8]> = path.into_iter().flatten().map(Vec::as_slice).collect();
    match (segments.as_slice(), method) {
        ([b"rd"], RequestType::Post) => Some(Kind::Register),
        ([b"rd", _], RequestType::Post) => Some(Kind::Update),
        ([b"rd", _], RequestType::Delete) => Some(Kind::Deregister),
        ([b"bs"], RequestType::Post) => Some(Kind::BootstrapRequest),
        _ => None,
    }
}

/// The Uri-Query options as strings; `Err` names the first that is not UTF-8 or the first
/// parameter given twice.
fn queries(packet: &Packet) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for raw in packet
        .get_option(CoapOption::UriQuery)
        .into_iter()
        .flatten()
    {
        let q = String::from_utf8(raw.clone())
            .map_err(|_| format!("Uri-Query {raw:02x?} is not UTF-8 (RFC 7252 §5.10.1)"))?;
        let key = q.split_once('=').map_or(q.as_str(), |(k, _)| k);
        if out
            .iter()
            .any(|o| o.split_once('=').map_or(o.as_str(), |(k, _)| k) == key)
        {
            return Err(format!(
                "query parameter {key:?} given more than once: each may appear once"
            ));
        }
        out.push(q);
    }
    Ok(out)
}

/// Reads a request of the Registration interface or a Bootstrap-Request: `None` for any
/// other request (Read responses, Send, unknown paths: not this module's business),
/// `Some(Err)` for one of them whose query is not acceptable (a repeated parameter, a
/// non-UTF-8 option, a missing `ep`, a bad `lt`...).
pub fn classify(packet: &Packet) -> Option<Result<InterfaceRequest, AdmissionError>> {
    let kind = kind(packet)?;
    Some(read(kind, packet))
}

fn read(kind: Kind, packet: &Packet) -> Result<InterfaceRequest, AdmissionError> {
    let bad_query = |reason: String| match kind {
        Kind::BootstrapRequest => AdmissionError::Bootstrap(BootstrapError::BadQuery { reason }),
        _ => AdmissionError::Registration(RegistrationError::BadQuery { reason }),
    };
    let queries = queries(packet).map_err(bad_query)?;
    let id = || {
        let segment = packet
            .get_option(CoapOption::UriPath)
            .and_then(|p| p.back().cloned())
            .unwrap_or_default();
        String::from_utf8(segment).map_err(|_| RegistrationError::BadQuery {
            reason: "the registration id is not UTF-8".into(),
        })
    };
    Ok(match kind {
        Kind::Register => InterfaceRequest::Register(registration::parse_register_query(&queries)?),
        Kind::Update => InterfaceRequest::Update {
            id: id()?,
            params: registration::parse_update_query(&queries)?,
        },
        Kind::Deregister => InterfaceRequest::Deregister { id: id()? },
        Kind::BootstrapRequest => {
            InterfaceRequest::BootstrapRequest(parse_bootstrap_query(&queries)?)
        }
    })
}

/// The endpoint name a request gives with `ep=`, read as [`classify`] reads it (`None`
/// when the query cannot be read), even when the request is refused: for the event that
/// reports the refusal, never for a decision.
pub fn endpoint_name(packet: &Packet) -> Option<String> {
    let queries = queries(packet).ok()?;
    endpoint_value(&queries).map(str::to_owned)
}

fn endpoint_value<S: AsRef<str>>(queries: &[S]) -> Option<&str> {
    queries
        .iter()
        .find_map(|q| q.as_ref().strip_prefix("ep="))
        .filter(|e| !e.is_empty())
}

/// A request the gate refuses before it reaches the machine: the endpoint it acted for,
/// the endpoint the session belongs to (if any), and the 4.03 answer with the reason as
/// diagnostic payload.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRefusal {
    /// The endpoint the request acted for.
    pub endpoint: String,
    /// The endpoint the session's identity belongs to, if any.
    pub owner: Option<String>,
    /// Why, in words (also the diagnostic payload, [`GateRefusal::diagnostic`]).
    pub reason: String,
}

impl GateRefusal {
    /// The reason as the 4.03's diagnostic payload (RFC 7252 §5.5.2): at most 256 bytes,
    /// cut at a character boundary, so that the answer fits a datagram whatever the names.
    pub fn diagnostic(&self) -> Vec<u8> {
        const MAX: usize = 256;
        let mut end = self.reason.len().min(MAX);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        self.reason
            .as_bytes()
            .get(..end)
            .unwrap_or_default()
            .to_vec()
    }
}

/// Which machine a gate stands in front of: which requests it checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GateRole {
    /// The LwM2M Server: Register, Update, De-register.
    #[default]
    Lwm2mServer,
    /// The Bootstrap Server: Bootstrap-Request.
    BootstrapServer,
}

/// The admission gate, the one home of its decisions, as a hook of a server machine
/// (`serve`'s sockets and the feature suite's in-process servers alike):
///
/// - over DTLS ([`SessionSender`], [`check_session`]), a request acting for an endpoint the
///   session's identity does not belong to (Core TS 1.1 §7.1.8): a Register or
///   Bootstrap-Request under another name, an Update or De-register of another endpoint's
///   registration;
/// - over plain CoAP beside a DTLS listener ([`PlainSender`], [`check_plain`]), a Register
///   of an endpoint that has credentials (its account's Security Mode is not NoSec, Core
///   TS 1.1 §7.1).
///
/// Both read the request with [`classify`], as the machine does: a request the machine
/// refuses anyway (4.00) passes the gate and is refused there. The socket in front of the machine
/// knows who sent a datagram (a DTLS session's identity, or plain CoAP beside a DTLS
/// listener), the machine knows its registrations. The machine decodes each datagram once
/// and asks the hook about each request in it before handling it
/// ([`crate::machine::Admitting::handle_admitted`]); a refused request gets 4.03 with the
/// reason as diagnostic payload from the machine's exchange layer, which answers its
/// retransmissions the same way (RFC 7252 §4.5), and never reaches the machine otherwise.
pub trait Admission {
    /// The refusal of `request` by a machine of `role`, if any; `registration` gives the
    /// endpoint of one of the machine's registrations by id.
    fn check(
        &mut self,
        role: GateRole,
        request: &Packet,
        registration: &dyn Fn(&str) -> Option<String>,
    ) -> Option<GateRefusal>;
}

/// Admits every request: a datagram whose sender nothing is known about (the plain socket
/// of a server without a DTLS listener, a test).
#[derive(Debug, Clone, Copy, Default)]
pub struct Open;

impl Admission for Open {
    fn check(
        &mut self,
        _: GateRole,
        _: &Packet,
        _: &dyn Fn(&str) -> Option<String>,
    ) -> Option<GateRefusal> {
        None
    }
}

/// A DTLS session's datagram (Core TS 1.1 §7.1.8): a request acting for an endpoint the
/// session's `identity` does not belong to is refused; `owner` gives the endpoint the
/// identity belongs to (asked only when needed). The refusal, if any, is kept in
/// `refused` for the caller to report.
pub struct SessionSender<'a, F> {
    /// The session's identity (`psk:ID`, `cn:NAME`), written into the reason only when a
    /// request is refused.
    pub identity: &'a dyn std::fmt::Display,
    /// The endpoint the identity belongs to.
    pub owner: F,
    /// What was refused.
    pub refused: Option<GateRefusal>,
}

impl<F: FnMut() -> Option<String>> Admission for SessionSender<'_, F> {
    fn check(
        &mut self,
        role: GateRole,
        request: &Packet,
        registration: &dyn Fn(&str) -> Option<String>,
    ) -> Option<GateRefusal> {
        let refused = check_session(role, request, self.identity, &mut self.owner, registration);
        self.refused.clone_from(&refused);
        refused
    }
}

/// A plain-CoAP datagram beside a DTLS listener (Core TS 1.1 §7.1): a Register of an
/// endpoint that `has_credentials` is refused, it must register over DTLS. The refusal,
/// if any, is kept in `refused` for the caller to report.
pub struct PlainSender<F> {
    /// Whether an endpoint has credentials in the security store.
    pub has_credentials: F,
    /// What was refused.
    pub refused: Option<GateRefusal>,
}

impl<F: FnMut(&str) -> bool> Admission for PlainSender<F> {
    fn check(
        &mut self,
        role: GateRole,
        request: &Packet,
        _: &dyn Fn(&str) -> Option<String>,
    ) -> Option<GateRefusal> {
        let refused = check_plain(role, request, &mut self.has_credentials);
        self.refused.clone_from(&refused);
        refused
    }
}

/// The endpoint a request acts for: the `ep` of a Register or Bootstrap-Request, the
/// endpoint of the registration an Update or De-register names (`location` looks it up).
/// `None`: not checked.
pub fn claimed_endpoint(
    role: GateRole,
    request: &Packet,
    location: impl FnOnce(&str) -> Option<String>,
) -> Option<String> {
    use GateRole::*;
    match (role, classify(request)?.ok()?) {
        (Lwm2mServer, InterfaceRequest::Register(p)) => Some(p.endpoint),
        (BootstrapServer, InterfaceRequest::BootstrapRequest(p)) => Some(p.endpoint),
        (
            Lwm2mServer,
            InterfaceRequest::Update { id, .. } | InterfaceRequest::Deregister { id },
        ) => location(&id),
        _ => None,
    }
}

/// A DTLS session's request: refused when it acts for an endpoint that is not `owner`
/// (the endpoint the session's identity belongs to, asked only when needed); `identity`
/// names the session in the reason; `location` looks a registration id up.
pub fn check_session(
    role: GateRole,
    request: &Packet,
    identity: &dyn std::fmt::Display,
    owner: impl FnOnce() -> Option<String>,
    location: impl FnOnce(&str) -> Option<String>,
) -> Option<GateRefusal> {
    let endpoint = claimed_endpoint(role, request, location)?;
    let owner = owner();
    if owner.as_deref() == Some(endpoint.as_str()) {
        return None;
    }
    let reason = format!(
        "identity {identity} belongs to {}, not to endpoint {endpoint:?}",
        owner.as_deref().unwrap_or("no endpoint")
    );
    Some(GateRefusal {
        endpoint,
        owner,
        reason,
    })
}

/// A plain-CoAP request beside a DTLS listener: a Register of an endpoint that has
/// credentials is refused.
pub fn check_plain(
    role: GateRole,
    request: &Packet,
    has_credentials: impl FnOnce(&str) -> bool,
) -> Option<GateRefusal> {
    let Some(Ok(InterfaceRequest::Register(params))) = classify(request) else {
        return None;
    };
    if role != GateRole::Lwm2mServer {
        return None;
    }
    if !has_credentials(&params.endpoint) {
        return None;
    }
    let endpoint = params.endpoint;
    let reason = format!("endpoint {endpoint:?} has credentials: register over DTLS");
    Some(GateRefusal {
        endpoint,
        owner: None,
        reason,
    })
}

/// Parses the Uri-Query of a Bootstrap-Request (Core TS 1.1 §5.2.7.1): `ep` (mandatory)
/// and `pct` (1.1, optional); other parameters are ignored. Without `pct` the writes are
/// TLV, the format of LwM2M 1.0. A `pct` must name a multi-node format this server encodes
/// (TLV, SenML JSON, SenML CBOR, OMA JSON, LwM2M CBOR), else 4.15.
pub fn parse_bootstrap_query<S: AsRef<str>>(
    queries: &[S],
) -> Result<BootstrapRequestParams, BootstrapError> {
    let value = |key: &str| {
        queries
            .iter()
            .find_map(|q| q.as_ref().strip_prefix(key)?.strip_prefix('='))
    };
    let endpoint = endpoint_value(queries)
        .ok_or(BootstrapError::MissingEndpoint)?
        .to_owned();
    let mut format = ContentFormat::Tlv;
    if let Some(pct) = value("pct") {
        let code: u16 = pct.parse().map_err(|_| BootstrapError::InvalidParameter {
            name: "pct",
            value: pct.to_owned(),
            reason: "not a Content-Format number",
        })?;
        format = ContentFormat::from_code(code)
            .filter(|f| f.is_multi_node() && !f.is_legacy())
            .ok_or(BootstrapError::UnsupportedFormat { code })?;
    }
    Ok(BootstrapRequestParams { endpoint, format })
}

/// The registration id an Update (`POST /rd/{id}`) or De-register (`DELETE /rd/{id}`) in
/// a datagram names, if it is one (a server instance of a cluster looks an unknown id up
/// in the shared store before handing the datagram on; see [`crate::server::Lwm2mServer::adopt`]).
pub fn registration_id_of(bytes: &[u8]) -> Option<String> {
    let packet = Packet::from_bytes(bytes).ok()?;
    match classify(&packet)? {
        Ok(InterfaceRequest::Update { id, .. }) | Ok(InterfaceRequest::Deregister { id }) => {
            Some(id)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::MessageType;
    use crate::coap::message;

    fn request(method: RequestType, path: &str, queries: &[&str]) -> Packet {
        let mut p = message::request(method, path);
        for q in queries {
            message::add_query(&mut p, q);
        }
        p
    }

    #[test]
    fn each_request_is_read_once_and_the_same_way() {
        let r = classify(&request(RequestType::Post, "/rd", &["ep=dev", "lt=60"]))
            .unwrap()
            .unwrap();
        assert_eq!(r.endpoint(), Some("dev"));
        assert_eq!(r.name(), "register");
        let r = classify(&request(RequestType::Post, "/rd/abc", &["lt=60"]))
            .unwrap()
            .unwrap();
        assert_eq!(r.registration_id(), Some("abc"));
        assert_eq!(r.endpoint(), None);
        let r = classify(&request(RequestType::Delete, "/rd/abc", &[]))
            .unwrap()
            .unwrap();
        assert_eq!(r, InterfaceRequest::Deregister { id: "abc".into() });
        let r = classify(&request(RequestType::Post, "/bs", &["ep=dev", "pct=112"]))
            .unwrap()
            .unwrap();
        assert_eq!(
            r,
            InterfaceRequest::BootstrapRequest(BootstrapRequestParams {
                endpoint: "dev".into(),
                format: ContentFormat::SenmlCbor
            })
        );
        for other in [
            request(RequestType::Get, "/rd", &["ep=dev"]),
            request(RequestType::Post, "/dp", &[]),
            request(RequestType::Post, "/rd/a/b", &[]),
            request(RequestType::Get, "/bs", &["ep=dev"]),
        ] {
            assert_eq!(classify(&other), None, "{other:?}");
        }
    }

    #[test]
    fn the_gate_refuses_a_session_acting_for_another_endpoint() {
        use GateRole::*;
        let owner = || Some("dev1".to_owned());
        let locations = |id: &str| (id == "r2").then(|| "dev2".to_owned());
        let check =
            |role, request: &Packet| check_session(role, request, &"psk:id1", owner, locations);
        let register = request(RequestType::Post, "/rd", &["ep=dev2"]);
        let refused = check(Lwm2mServer, &register).unwrap();
        assert_eq!(
            (refused.endpoint.as_str(), refused.owner.as_deref()),
            ("dev2", Some("dev1"))
        );
        assert!(refused.reason.contains("belongs to dev1"));
        assert_eq!(refused.diagnostic(), refused.reason.as_bytes());
        let own = request(RequestType::Post, "/rd", &["ep=dev1"]);
        assert_eq!(check(Lwm2mServer, &own), None);
        // A repeated ep passes the gate: the machine refuses it with 4.00.
        let twice = request(RequestType::Post, "/rd", &["ep=dev1", "ep=dev2"]);
        assert_eq!(check(Lwm2mServer, &twice), None);
        // A Bootstrap-Request is the Bootstrap Server's gate's business.
        let bs = request(RequestType::Post, "/bs", &["ep=dev2"]);
        assert_eq!(check(Lwm2mServer, &bs), None);
        assert!(check(BootstrapServer, &bs).is_some());
        assert_eq!(check(BootstrapServer, &register), None);
        // Update and De-register of dev2's registration; of one nobody knows.
        for method in [RequestType::Post, RequestType::Delete] {
            let other = request(method, "/rd/r2", &[]);
            assert!(check(Lwm2mServer, &other).is_some());
            let unknown = request(method, "/rd/zz", &[]);
            assert_eq!(check(Lwm2mServer, &unknown), None);
        }
        // A long name is cut in the diagnostic, at a character boundary.
        let long = request(
            RequestType::Post,
            "/rd",
            &[&format!("ep={}", "é".repeat(300))],
        );
        let refused = check(Lwm2mServer, &long).unwrap();
        assert!(refused.diagnostic().len() <= 256);
        assert!(std::str::from_utf8(&refused.diagnostic()).is_ok());
    }

    #[test]
    fn a_repeated_parameter_is_a_bad_request() {
        for (method, path, queries) in [
            (RequestType::Post, "/rd", &["ep=mallory", "ep=victim"][..]),
            (
                RequestType::Post,
                "/rd",
                &["ep=nobody", "lt=60", "ep=victim"],
            ),
            (RequestType::Post, "/rd", &["ep=a", "lt=60", "lt=70"]),
            (RequestType::Post, "/rd", &["ep=a", "Q", "Q"]),
            (RequestType::Post, "/rd/x", &["lt=60", "lt=1"]),
            (RequestType::Post, "/bs", &["ep=mallory", "ep=victim"]),
            (RequestType::Post, "/bs", &["ep=a", "pct=11542", "pct=112"]),
        ] {
            let e = classify(&request(method, path, queries))
                .unwrap()
                .unwrap_err();
            assert_eq!(e.coap_code(), (4, 0), "{path} {queries:?}: {e}");
            assert!(e.to_string().contains("more than once"), "{e}");
        }
        let mut p = message::request(RequestType::Post, "/rd");
        p.add_option(CoapOption::UriQuery, b"ep=\xff".to_vec());
        let e = classify(&p).unwrap().unwrap_err();
        assert_eq!(e.coap_code(), (4, 0));
        let e = classify(&request(RequestType::Post, "/bs", &["pct=112"]))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.coap_code(), (4, 0));
    }

    /// A confirmable request as a client sends it.
    fn datagram(mut p: Packet, mid: u16) -> Vec<u8> {
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = mid;
        p.set_token(mid.to_be_bytes().to_vec());
        p.to_bytes().unwrap()
    }

    /// Every answer the machine has sent: (code, diagnostic payload).
    fn answers(m: &mut dyn crate::machine::Machine<Event = impl Sized>) -> Vec<(String, String)> {
        std::iter::from_fn(|| m.poll_transmit())
            .map(|t| {
                let p = message::decode(&t.bytes).unwrap();
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                (p.header.code.to_string(), payload)
            })
            .collect()
    }

    /// A session whose identity belongs to `owner`, counting the requests it is asked about.
    fn session<'a>(
        owner: &'a str,
        asked: &'a std::cell::Cell<u32>,
    ) -> SessionSender<'a, impl FnMut() -> Option<String> + 'a> {
        SessionSender {
            identity: &"psk:id",
            owner: move || {
                asked.set(asked.get() + 1);
                Some(owner.to_owned())
            },
            refused: None,
        }
    }

    #[test]
    fn the_lwm2m_server_asks_its_hook_once_per_request_and_answers_a_refusal_itself() {
        use crate::server::{Lwm2mServer, ServerConfig, ServerEvent};
        let mut server = Lwm2mServer::new(
            ServerConfig::default(),
            std::sync::Arc::new(crate::registry::Registry::embedded()),
        );
        let (now, peer) = (std::time::Instant::now(), "127.0.0.1:5000".parse().unwrap());
        let asked = std::cell::Cell::new(0);
        let register = |ep: &str| request(RequestType::Post, "/rd", &[&format!("ep={ep}")]);
        // Another endpoint's name over dev1's session: 4.03, nothing registered.
        let mut hook = session("dev1", &asked);
        server.handle_admitted(now, peer, &datagram(register("dev2"), 1), &mut hook);
        let refused = hook.refused.take().expect("refused");
        assert_eq!(
            (refused.endpoint.as_str(), refused.owner.as_deref()),
            ("dev2", Some("dev1"))
        );
        let answered = answers(&mut server);
        assert_eq!(answered.len(), 1);
        assert_eq!(answered[0].0, "4.03");
        assert!(
            answered[0].1.contains("not to endpoint \"dev2\""),
            "{answered:?}"
        );
        assert!(server.poll_event().is_none(), "the machine reports nothing");
        // Its retransmission: the same answer from the exchange layer, the hook not asked.
        server.handle_admitted(now, peer, &datagram(register("dev2"), 1), &mut hook);
        assert_eq!(answers(&mut server), answered);
        assert_eq!(asked.get(), 1);
        // Its own name passes; an Update of that registration is checked by the machine's
        // registrations.
        server.handle_admitted(now, peer, &datagram(register("dev1"), 2), &mut hook);
        assert!(hook.refused.is_none());
        let Some(ServerEvent::Registered { registration, .. }) = server.poll_event() else {
            panic!("registered")
        };
        let update = request(RequestType::Post, &format!("/rd/{}", registration.id), &[]);
        let mut other = session("dev3", &asked);
        server.handle_admitted(now, peer, &datagram(update.clone(), 3), &mut other);
        assert_eq!(other.refused.map(|r| r.endpoint).as_deref(), Some("dev1"));
        assert!(answers(&mut server).iter().any(|(code, _)| code == "4.03"));
        server.handle_admitted(
            now,
            peer,
            &datagram(update, 4),
            &mut session("dev1", &asked),
        );
        assert!(answers(&mut server).iter().any(|(code, _)| code == "2.04"));
    }

    #[test]
    fn the_bootstrap_server_refuses_a_request_for_another_endpoint_through_its_hook() {
        use crate::bootstrap::server::{
            BootstrapServer, BootstrapServerConfig, MemoryConfigSource,
        };
        let mut server = BootstrapServer::new(
            BootstrapServerConfig::default(),
            Box::new(MemoryConfigSource::default()),
        );
        let (now, peer) = (std::time::Instant::now(), "127.0.0.1:5000".parse().unwrap());
        let asked = std::cell::Cell::new(0);
        let mut hook = session("dev1", &asked);
        let bs = request(RequestType::Post, "/bs", &["ep=dev2"]);
        server.handle_admitted(now, peer, &datagram(bs, 1), &mut hook);
        assert_eq!(hook.refused.map(|r| r.endpoint).as_deref(), Some("dev2"));
        let answered = answers(&mut server);
        assert_eq!(answered.len(), 1);
        assert_eq!(answered[0].0, "4.03");
        assert!(server.poll_event().is_none());
        // A plain datagram's Bootstrap-Request is not the plain gate's business.
        let mut plain = PlainSender {
            has_credentials: |_: &str| true,
            refused: None,
        };
        let bs = request(RequestType::Post, "/bs", &["ep=dev2"]);
        server.handle_admitted(now, peer, &datagram(bs, 2), &mut plain);
        assert!(plain.refused.is_none());
        assert_ne!(answers(&mut server)[0].0, "4.03");
        assert!(
            server.poll_event().is_some(),
            "the machine refused it itself (no configuration for dev2)"
        );
    }
}
