//! The Leshan API: registrations.

use super::*;

/// The attribute value as it appears in CoRE link format (Leshan's `getCoreLinkValue`):
/// `rt` and multi-valued `ct` quoted, the others bare.
pub(super) fn link_value(name: &str, value: &str) -> String {
    if name == "rt" || value.contains(' ') {
        format!("\"{value}\"")
    } else {
        value.to_owned()
    }
}

/// A link as Leshan's `JacksonLinkSerializer` writes it: `{url, attributes: {name: value}}`.
pub(super) fn link_json(link: &Link) -> Json {
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

pub(super) fn root_path(r: &Registration) -> String {
    let alt = r.links.alternate_path.trim_end_matches('/');
    format!("{alt}/")
}

pub(super) fn object_links(r: &Registration) -> Json {
    Json::Array(r.links.to_links().iter().map(link_json).collect())
}

pub(super) async fn list_clients(State(st): St) -> HttpResponse {
    let all: Vec<Json> = st
        .server
        .registrations()
        .all()
        .iter()
        .map(|e| registration_json(e, st.server.is_secure(&e.registration.endpoint)))
        .collect();
    json_ok(Json::Array(all))
}

pub(super) async fn get_client(State(st): St, Path(ep): Path<String>) -> HttpResponse {
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
