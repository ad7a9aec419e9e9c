//! The Leshan API: object models: Leshan's ObjectModelSerDes shape.

use super::*;

pub(super) fn operations_name(o: Operations) -> &'static str {
    match o {
        Operations::None => "NONE",
        Operations::R => "R",
        Operations::W => "W",
        Operations::RW => "RW",
        Operations::E => "E",
    }
}

pub(super) fn instance_type(multiple: bool) -> &'static str {
    if multiple { "multiple" } else { "single" }
}

pub(super) fn resource_model(r: &ResourceDef) -> Json {
    json!({
        "id": r.id.0,
        "name": r.name,
        "operations": operations_name(r.operations),
        "instancetype": instance_type(r.multiple),
        "mandatory": r.mandatory,
        "type": type_name(r.data_type).to_ascii_lowercase(),
        "range": r.range,
        "units": r.units,
        "description": r.description,
    })
}

/// An object definition in Leshan's ObjectModel JSON.
pub fn object_model(o: &ObjectDef) -> Json {
    json!({
        "id": o.id.0,
        "name": o.name,
        "instancetype": instance_type(o.multiple),
        "mandatory": o.mandatory,
        "urn": o.urn,
        "version": o.version,
        "lwm2mversion": o.lwm2m_version,
        "description": o.description,
        "description2": "",
        "resourcedefs": o.resources.values().map(resource_model).collect::<Vec<_>>(),
    })
}

pub(super) async fn object_specs(State(st): St) -> HttpResponse {
    json_ok(Json::Array(
        st.registry.objects().map(object_model).collect(),
    ))
}

pub(super) async fn object_specs_of(State(st): St, Path(ep): Path<String>) -> HttpResponse {
    let Some(entry) = st.server.registrations().get(&ep) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("no registered client with id '{ep}'"),
        )
        .into_response();
    };
    let versions = declared_versions(&entry.registration);
    let view = st.registry.with_versions(&versions);
    let ids: Vec<ObjectId> = st.registry.objects().map(|o| o.id).collect();
    json_ok(Json::Array(
        ids.into_iter()
            .filter_map(|id| view.object(id))
            .map(object_model)
            .collect(),
    ))
}
