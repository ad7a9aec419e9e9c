//! Requests from clients: the Registration interface (Core TS 1.1 §6.2: Register, Update,
//! De-register) and Send (Core TS 1.1 §6.4.6), with the code of every refusal.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use rand::RngExt;

use super::api::{Registration, ServerEvent};
use super::{Client, Key, Limit, Lwm2mServer, RegistrationLimits, Timer};
use crate::admission::{self, AdmissionError, GateRefusal, InterfaceRequest};
use crate::coap::message::{self, uint_option};
use crate::coap::{IncomingRequest, RequestHandle};
use crate::codec::link::{Link, LinkNote, LinkParam, RegistrationLinks, parse_links};
use crate::content::{self, ContentFormat};
use crate::ids::ObjectId;
use crate::registration::{
    Lwm2mVersion, RegisterParams, RegistrationError, RegistrationFinding, UpdateParams,
};

/// A refused request: the code, the reason, and whether it belongs to the Registration
/// interface (for the event).
struct Refusal {
    code: (u8, u8),
    reason: String,
    registration: bool,
    /// The limit the request went beyond, if that is why.
    limit: Option<Limit>,
}

impl Refusal {
    fn registration(error: RegistrationError) -> Self {
        Self::registration_code(error.coap_code(), error.to_string())
    }

    fn registration_code(code: (u8, u8), reason: String) -> Self {
        Self {
            code,
            reason,
            registration: true,
            limit: None,
        }
    }

    fn other(code: (u8, u8), reason: String) -> Self {
        Self {
            code,
            reason,
            registration: false,
            limit: None,
        }
    }

    /// Beyond `limit`: its code, the reason naming the configuration key.
    fn limit(limit: Limit, what: String) -> Self {
        Self {
            code: limit.coap_code(),
            reason: format!("{what} (server limit {})", limit.key()),
            registration: true,
            limit: Some(limit),
        }
    }
}

/// The link payload of a Register or Update (Core TS 1.1 §6.2.1): `Ok(None)` when empty.
/// Its Content-Format, when given, must be link-format (RFC 7252 §5.10.3: 4.15 otherwise).
/// An Update's list without the root link (`rt="oma.lwm2m"`) is read below the
/// registration's alternate path and keeps its content formats (`current`).
fn links_of(
    packet: &Packet,
    current: Option<&RegistrationLinks>,
    limits: &RegistrationLimits,
) -> Result<Option<(RegistrationLinks, Vec<LinkNote>)>, Refusal> {
    if packet.payload.len() > limits.max_payload {
        return Err(Refusal::limit(
            Limit::MaxPayload,
            format!(
                "registration payload of {} bytes; at most {} accepted",
                packet.payload.len(),
                limits.max_payload
            ),
        ));
    }
    let link_format = u32::from(ContentFormat::LinkFormat.code());
    if let Some(cf) = uint_option(packet, CoapOption::ContentFormat).filter(|c| *c != link_format) {
        return Err(Refusal::registration_code(
            (4, 15),
            format!("Content-Format {cf}: the registration payload is link-format (40)"),
        ));
    }
    if packet.payload.is_empty() {
        return Ok(None);
    }
    let bad = |reason: String| Refusal::registration(RegistrationError::BadPayload { reason });
    let text = std::str::from_utf8(&packet.payload).map_err(|e| {
        bad(format!(
            "not UTF-8 after byte {} (RFC 6690 §2)",
            e.valid_up_to()
        ))
    })?;
    let mut links = parse_links(text).map_err(|e| bad(e.to_string()))?;
    if links.len() > limits.max_links {
        return Err(Refusal::limit(
            Limit::MaxLinks,
            format!(
                "{} links in the registration payload; at most {} accepted",
                links.len(),
                limits.max_links
            ),
        ));
    }
    let has_root = links.iter().any(|l| {
        l.value("rt")
            .is_some_and(|rt| rt.split_ascii_whitespace().any(|t| t == "oma.lwm2m"))
    });
    let inherited = current.filter(|_| !has_root);
    if let Some(current) = inherited {
        let mut root = Link::new(current.alternate_path.clone());
        root.params.push(LinkParam::new("rt", "oma.lwm2m"));
        links.insert(0, root);
    }
    let (mut parsed, notes) = RegistrationLinks::from_links(&links);
    if let Some(current) = inherited {
        parsed.content_formats = current.content_formats.clone();
    }
    Ok(Some((parsed, notes)))
}

/// The pre-1.0 formats a link list announces (`ct=1542`, `ct=1543`).
fn legacy_findings(links: &RegistrationLinks) -> Vec<RegistrationFinding> {
    links
        .content_formats
        .iter()
        .filter(|c| ContentFormat::from_code(**c).is_some_and(ContentFormat::is_legacy))
        .map(|&code| RegistrationFinding::LegacyContentFormat { code })
        .collect()
}

/// The object versions declared with `ver=` (Core TS 1.1 §6.2.1).
fn versions(links: &RegistrationLinks) -> BTreeMap<ObjectId, String> {
    links
        .objects
        .iter()
        .filter_map(|(o, info)| info.version.clone().map(|v| (*o, v)))
        .collect()
}

fn record_findings(into: &mut Vec<RegistrationFinding>, new: Vec<RegistrationFinding>) {
    for finding in new {
        if !into.contains(&finding) {
            into.push(finding);
        }
    }
}

/// The diagnostic payload of a refusal (RFC 7252 §5.5.2): the reason, cut to at most
/// [`DIAGNOSTIC_MAX`] bytes on a character boundary (reasons echo what the client sent).
fn diagnostic(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(DIAGNOSTIC_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.as_bytes().get(..end).unwrap_or_default().to_vec()
}

/// Longest diagnostic payload, in bytes: small enough for one datagram with any options.
const DIAGNOSTIC_MAX: usize = 256;

/// A response packet with a (class, detail) code.
fn response(code: (u8, u8), payload: Vec<u8>) -> Packet {
    let mut packet = message::response(ResponseType::Content, payload);
    packet.header.code = MessageClass::from((code.0 << 5) | (code.1 & 0x1F));
    packet
}

impl Lwm2mServer {
    /// Routes a request from a client (Core TS 1.1 §6.2, §6.4.6; the table in the module
    /// documentation).
    pub(super) fn on_request(&mut self, now: Instant, peer: SocketAddr, request: IncomingRequest) {
        let IncomingRequest { packet, handle } = request;
        let method = request_method(&packet);
        let path: Vec<String> = packet
            .get_option(CoapOption::UriPath)
            .into_iter()
            .flatten()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let segments: Vec<&str> = path.iter().map(String::as_str).collect();
        let wrong_method = |interface: &str, registration: bool| Refusal {
            code: (4, 5),
            reason: format!(
                "{} is not allowed on /{} ({interface})",
                method_name(method),
                path.join("/")
            ),
            registration,
            limit: None,
        };
        let result = match admission::classify(&packet) {
            Some(Ok(InterfaceRequest::Register(params))) => {
                self.register(now, peer, params, &packet)
            }
            Some(Ok(InterfaceRequest::Update { id, params })) => {
                self.update(now, peer, &id, params, &packet)
            }
            Some(Ok(InterfaceRequest::Deregister { id })) => self.deregister(now, &id),
            Some(Err(AdmissionError::Registration(e))) => Err(Refusal::registration(e)),
            _ => match (segments.as_slice(), method) {
                (["dp"], Some(RequestType::Post)) => self.send(peer, &packet),
                (["rd"], _) => Err(wrong_method("Register is POST, Core TS 1.1 §6.2.1", true)),
                (["rd", _], _) => Err(wrong_method(
                    "Update is POST, De-register DELETE, Core TS 1.1 §6.2.2",
                    true,
                )),
                (["dp"], _) => Err(wrong_method("Send is POST, Core TS 1.1 §6.4.6", false)),
                _ => Err(Refusal::other(
                    (4, 4),
                    format!(
                        "no resource /{} on this LwM2M Server (it serves /rd and /dp)",
                        path.join("/")
                    ),
                )),
            },
        };
        match result {
            Ok(answer) => self.answer(now, handle, answer),
            Err(refusal) => {
                let event = if let Some(limit) = refusal.limit {
                    ServerEvent::LimitReached {
                        peer,
                        limit,
                        code: refusal.code,
                        reason: refusal.reason.clone(),
                    }
                } else if refusal.registration {
                    ServerEvent::RegistrationRefused {
                        peer,
                        code: refusal.code,
                        reason: refusal.reason.clone(),
                    }
                } else {
                    ServerEvent::RequestRefused {
                        peer,
                        code: refusal.code,
                        reason: refusal.reason.clone(),
                    }
                };
                let payload = diagnostic(&refusal.reason);
                self.answer(now, handle, response(refusal.code, payload));
                self.events.push_back(event);
            }
        }
    }

    /// A request the admission gate refused ([`crate::admission::Admission`]): 4.03 with
    /// the reason, nothing else.
    pub(super) fn refuse(&mut self, now: Instant, request: IncomingRequest, refused: &GateRefusal) {
        self.answer(now, request.handle, response((4, 3), refused.diagnostic()));
    }

    fn answer(&mut self, now: Instant, handle: RequestHandle, packet: Packet) {
        // Only a response too large for a datagram fails here; ours are small, and the
        // exchange layer then answers nothing, as for a lost datagram.
        let _ = self.endpoint.respond(now, handle, packet);
    }

    /// A fresh registration id: 8 characters from a seeded generator, unique among the
    /// live registrations, hard to guess (an Update or De-register needs it).
    fn new_registration_id(&mut self) -> String {
        const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
        loop {
            let bits: u64 = self.rng.random();
            let id: String = (0..8)
                .map(|i| char::from(ALPHABET[((bits >> (5 * i)) & 31) as usize]))
                .collect();
            if !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    /// Register (Core TS 1.1 §6.2.1): 2.01 with Location-Path `rd`, `{id}`. A Register of
    /// an endpoint already registered replaces that registration.
    fn register(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        params: RegisterParams,
        packet: &Packet,
    ) -> Result<Packet, Refusal> {
        let limits = &self.config.limits;
        if params.endpoint.len() > limits.max_endpoint_length {
            return Err(Refusal::limit(
                Limit::MaxEndpointLength,
                format!(
                    "endpoint name of {} bytes; at most {} accepted",
                    params.endpoint.len(),
                    limits.max_endpoint_length
                ),
            ));
        }
        check_lifetime(limits, params.lifetime)?;
        let (links, link_notes) = links_of(packet, None, limits)?.unwrap_or_default();
        // A Register of an endpoint already registered replaces it: no growth then.
        let replacing = self
            .by_endpoint
            .get(&params.endpoint)
            .and_then(|k| self.clients.get(k))
            .map(|c| c.registration.address.ip());
        let held = self.clients.len() - usize::from(replacing.is_some());
        if held >= limits.max_registrations {
            return Err(Refusal::limit(
                Limit::MaxRegistrations,
                format!("{held} registrations held: the server is full, try later"),
            ));
        }
        let from_here = self.per_ip.get(&peer.ip()).copied().unwrap_or(0)
            - usize::from(replacing == Some(peer.ip()));
        if from_here >= limits.max_registrations_per_address {
            return Err(Refusal::limit(
                Limit::MaxRegistrationsPerAddress,
                format!(
                    "{from_here} registrations held from {}: no more from this address",
                    peer.ip()
                ),
            ));
        }
        let mut findings = params.findings;
        record_findings(&mut findings, legacy_findings(&links));
        let replaced = match self.by_endpoint.get(&params.endpoint).copied() {
            Some(old) => self.remove_registration(now, old, "the client registered again"),
            None => None,
        };
        let id = self.new_registration_id();
        self.next_key += 1;
        let key = Key(self.next_key);
        let registration = Registration {
            id: id.clone(),
            endpoint: params.endpoint.clone(),
            version: params.version,
            lifetime: params.lifetime,
            binding: params.binding,
            queue_mode: params.queue_mode,
            sms: params.sms,
            address: peer,
            links,
            registered_at: now,
            last_update: now,
            findings,
            link_notes,
        };
        self.hold(now, key, registration.clone());
        self.events.push_back(ServerEvent::Registered {
            registration,
            replaced,
        });
        let mut created = response((2, 1), Vec::new());
        created.add_option(CoapOption::LocationPath, b"rd".to_vec());
        created.add_option(CoapOption::LocationPath, id.into_bytes());
        Ok(created)
    }

    /// Takes over a registration made through another server instance that shares this
    /// one's registration store (a cluster behind a UDP load balancer): the client's next
    /// Update or De-register for `registration.id` is then accepted here. It replaces
    /// this machine's registration of the same endpoint, if any (without an event: the
    /// registration lives on); its lifetime and awake window run from `registration`'s
    /// `last_update`. No [`ServerEvent::Registered`] follows: the client did not register.
    pub fn adopt(&mut self, now: Instant, registration: Registration) {
        if let Some(old) = self.by_endpoint.get(&registration.endpoint).copied() {
            self.remove_registration(now, old, "taken over from another server instance");
        }
        if let Some(old) = self.by_id.get(&registration.id).copied() {
            self.remove_registration(now, old, "taken over from another server instance");
        }
        self.next_key += 1;
        self.hold(now, Key(self.next_key), registration);
    }

    /// Holds `registration` as client `key`: its lifetime and (queue mode) awake timers,
    /// its indexes by endpoint, id and address, its entry.
    fn hold(&mut self, now: Instant, key: Key, registration: Registration) {
        let awake_until = registration
            .queue_mode
            .then(|| now + self.config.awake_time);
        if let Some(until) = awake_until {
            self.timers.push(Reverse((until, Timer::Sleep(key))));
        }
        let expires_at = registration.expires_at();
        self.timers
            .push(Reverse((expires_at, Timer::Lifetime(key))));
        self.by_endpoint.insert(registration.endpoint.clone(), key);
        self.by_id.insert(registration.id.clone(), key);
        self.by_address.insert(registration.address, key);
        self.count_ip(registration.address.ip(), true);
        self.clients.insert(
            key,
            Box::new(Client {
                versions: versions(&registration.links),
                registration,
                awake_until,
                lifetime_timer: expires_at,
                sleep_timer: awake_until,
                queue: Default::default(),
                ops: Default::default(),
                observations: Default::default(),
            }),
        );
    }

    /// Whether a registration id is held here.
    pub fn knows_registration_id(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Forgets an endpoint's registration without an event (another server instance of a
    /// cluster took it over: its observations and operations here end).
    pub fn release(&mut self, now: Instant, endpoint: &str) {
        if let Some(key) = self.by_endpoint.get(endpoint).copied() {
            self.remove_registration(now, key, "taken over by another server instance");
        }
    }

    fn registration_key(&self, id: &str) -> Result<Key, Refusal> {
        self.by_id.get(id).copied().ok_or_else(|| {
            Refusal::registration(RegistrationError::UnknownRegistration { id: id.to_owned() })
        })
    }

    /// Update (Core TS 1.1 §6.2.2): 2.04. Parameters and links given replace the old ones;
    /// a new source address replaces the registration's (a NAT rebinding), and the
    /// observations made at the old address end, since notifications from the new one
    /// cannot match their tokens (RFC 7252 §5.3.2).
    fn update(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        id: &str,
        params: UpdateParams,
        packet: &Packet,
    ) -> Result<Packet, Refusal> {
        let key = self.registration_key(id)?;
        let UpdateParams {
            lifetime,
            binding,
            queue_mode,
            sms,
            findings,
        } = params;
        if let Some(lt) = lifetime {
            check_lifetime(&self.config.limits, lt)?;
        }
        let Some(client) = self.clients.get_mut(&key) else {
            return Err(Refusal::registration(
                RegistrationError::UnknownRegistration { id: id.to_owned() },
            ));
        };
        let links = links_of(
            packet,
            Some(&client.registration.links),
            &self.config.limits,
        )?;
        let registration = &mut client.registration;
        record_findings(&mut registration.findings, findings);
        if let Some((links, notes)) = links {
            record_findings(&mut registration.findings, legacy_findings(&links));
            client.versions = versions(&links);
            registration.links = links;
            registration.link_notes = notes;
        }
        registration.lifetime = lifetime.unwrap_or(registration.lifetime);
        registration.binding = binding.unwrap_or_else(|| registration.binding.clone());
        registration.sms = sms.or_else(|| registration.sms.take());
        registration.last_update = now;
        let was_queue_mode = registration.queue_mode;
        registration.queue_mode = queue_mode.unwrap_or(was_queue_mode);
        if registration.queue_mode && !was_queue_mode {
            // Entering queue mode: awake from now on, without an Awake event (see `wake`).
            client.awake_until = Some(now + self.config.awake_time);
        }
        let previous_address = (registration.address != peer).then_some(registration.address);
        registration.address = peer;
        if !registration.queue_mode {
            client.awake_until = None;
        }
        let held: Vec<_> = match previous_address {
            Some(_) => client.observations.iter().copied().collect(),
            None => Vec::new(),
        };
        self.arm(key);
        if let Some(old) = previous_address {
            if self.by_address.get(&old) == Some(&key) {
                self.by_address.remove(&old);
            }
            self.by_address.insert(peer, key);
            self.count_ip(old.ip(), false);
            self.count_ip(peer.ip(), true);
            let stale: Vec<_> = held
                .iter()
                .filter_map(|id| self.observations.get(id).map(|o| (*id, o)))
                .filter(|(_, o)| o.address != peer)
                .map(|(id, o)| (id, o.request))
                .collect();
            let reason = format!(
                "the client moved from {old} to {peer} (NAT rebinding): notifications from \
                 the new address cannot match the token (RFC 7252 §5.3.2); observe again"
            );
            for (observation, request) in stale {
                self.endpoint.cancel_request(now, request);
                self.end_observation(observation, &reason);
            }
        }
        // Any message wakes a queue-mode client (Core TS 1.1 §6.5); one that left queue
        // mode is always reachable. The caller then sends what was held.
        self.wake(now, key);
        if let Some(client) = self.clients.get(&key) {
            self.events.push_back(ServerEvent::Updated {
                registration: client.registration.clone(),
                previous_address,
            });
        }
        Ok(response((2, 4), Vec::new()))
    }

    /// De-register (Core TS 1.1 §6.2.3): 2.02.
    fn deregister(&mut self, now: Instant, id: &str) -> Result<Packet, Refusal> {
        let key = self.registration_key(id)?;
        if let Some(registration) = self.remove_registration(now, key, "the client de-registered") {
            self.events
                .push_back(ServerEvent::Deregistered { registration });
        }
        Ok(response((2, 2), Vec::new()))
    }

    /// Send (Core TS 1.1 §6.4.6): POST `/dp` with SenML JSON, SenML CBOR or LwM2M CBOR,
    /// 2.04. The sender is known by its address: a Send from an address no registration
    /// holds gets 4.04 (a client behind a new NAT mapping must Update first, Core TS 1.1
    /// §6.2.2). Send is LwM2M 1.1+: a 1.0 client gets 4.04, as from a 1.0 server.
    fn send(&mut self, peer: SocketAddr, packet: &Packet) -> Result<Packet, Refusal> {
        let refuse = |code, reason| Err(Refusal::other(code, reason));
        let Some(client) = self.by_address.get(&peer).and_then(|k| self.clients.get(k)) else {
            return refuse(
                (4, 4),
                format!(
                    "Send from {peer}, which no registration holds; a client whose address \
                     changed must Update first (Core TS 1.1 §6.2.2)"
                ),
            );
        };
        let registration = &client.registration;
        if registration.version == Lwm2mVersion::V1_0 {
            return refuse(
                (4, 4),
                format!(
                    "{:?} registered as LwM2M 1.0, which has no Send (Core TS 1.1 §6.4.6)",
                    registration.endpoint
                ),
            );
        }
        let format = match uint_option(packet, CoapOption::ContentFormat) {
            None => {
                return refuse(
                    (4, 0),
                    "Send without Content-Format (Core TS 1.1 §6.4.6)".to_owned(),
                );
            }
            Some(n) => match u16::try_from(n).ok().and_then(ContentFormat::from_code) {
                Some(
                    f @ (ContentFormat::SenmlJson
                    | ContentFormat::SenmlCbor
                    | ContentFormat::Lwm2mCbor),
                ) => f,
                _ => {
                    return refuse(
                        (4, 15),
                        format!(
                            "Send with Content-Format {n}; it carries SenML JSON (110), SenML \
                             CBOR (112) or LwM2M CBOR (11544) (Core TS 1.1 §6.4.6)"
                        ),
                    );
                }
            },
        };
        let schema = self.registry.with_versions(&client.versions);
        let decoded = content::decode_records(format, &packet.payload, &schema)
            .map_err(|e| Refusal::other((4, 0), format!("Send payload: {e}")))?;
        self.events.push_back(ServerEvent::Send {
            endpoint: registration.endpoint.clone(),
            records: decoded.content,
            findings: decoded.findings,
        });
        Ok(response((2, 4), Vec::new()))
    }
}

/// A lifetime within the limits' bounds.
fn check_lifetime(limits: &RegistrationLimits, lifetime: u32) -> Result<(), Refusal> {
    if (limits.min_lifetime..=limits.max_lifetime).contains(&lifetime) {
        return Ok(());
    }
    Err(Refusal::limit(
        Limit::Lifetime,
        format!(
            "lifetime {lifetime} s; this server accepts {} to {} s",
            limits.min_lifetime, limits.max_lifetime
        ),
    ))
}

fn request_method(packet: &Packet) -> Option<RequestType> {
    match packet.header.code {
        MessageClass::Request(method) => Some(method),
        _ => None,
    }
}

fn method_name(method: Option<RequestType>) -> &'static str {
    match method {
        Some(RequestType::Get) => "GET",
        Some(RequestType::Post) => "POST",
        Some(RequestType::Put) => "PUT",
        Some(RequestType::Delete) => "DELETE",
        Some(RequestType::Fetch) => "FETCH",
        Some(RequestType::Patch) => "PATCH",
        Some(RequestType::IPatch) => "iPATCH",
        Some(RequestType::UnKnown) | None => "this method",
    }
}
