//! The Leshan API: events: Leshan's EventServlet names and payloads.

use super::*;

/// The endpoint an event concerns, its name and its data.
pub(super) fn leshan_event(st: &Leshan, e: &ServerEvent) -> Option<(String, &'static str, Json)> {
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

pub(super) fn option_name(n: u16) -> String {
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

pub(super) fn is_text_option(n: u16) -> bool {
    matches!(n, 3 | 8 | 11 | 15 | 20 | 35 | 39)
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A datagram of a client in Leshan's CoapMessage shape (plus `ep`); `None` when it is not
/// CoAP (DTLS records). `secret` says the payload belongs to a Security-object exchange.
pub(super) fn coap_message(
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
pub(super) fn targets_secret_object(bytes: &[u8]) -> Option<Vec<u8>> {
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

pub(super) fn token_of(bytes: &[u8]) -> Option<Vec<u8>> {
    lwm2m_proto::coap::message::decode(bytes)
        .ok()
        .map(|p| p.get_token().to_vec())
}

pub(super) async fn events(
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
