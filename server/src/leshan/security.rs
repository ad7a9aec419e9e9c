//! The Leshan API: security: Leshan's JacksonSecuritySerializer shape, keys redacted.

use super::*;

/// Credentials in Leshan's shape; a PSK key is never shown.
pub fn security_json(info: &SecurityInfo) -> Json {
    let tls = match &info.credentials {
        Credentials::Psk { identity, .. } => {
            json!({"mode": "psk", "details": {"identity": identity, "key": REDACTED}})
        }
        Credentials::Rpk { public_key } => {
            json!({"mode": "rpk", "details": {"key": public_key}})
        }
        Credentials::X509 => json!({"mode": "x509"}),
    };
    json!({"endpoint": info.endpoint, "tls": tls})
}

/// Credentials from Leshan's PUT body.
pub(super) fn security_from_json(j: &Json) -> Result<SecurityInfo, String> {
    let endpoint = j
        .get("endpoint")
        .and_then(Json::as_str)
        .ok_or("Missing endpoint")?
        .to_owned();
    let tls = j
        .get("tls")
        .ok_or("Missing tls (OSCORE is not supported)")?;
    let mode = tls
        .get("mode")
        .and_then(Json::as_str)
        .ok_or("Missing tls mode")?;
    let details = tls.get("details");
    let detail = |k: &str| {
        details
            .and_then(|d| d.get(k))
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or(format!("Missing tls details {k}"))
    };
    let credentials = match mode {
        "psk" => {
            let key = detail("key")?;
            if key == REDACTED {
                return Err(format!("key {REDACTED:?} is a placeholder; give the key"));
            }
            Credentials::Psk {
                identity: detail("identity")?,
                key,
            }
        }
        "rpk" => Credentials::Rpk {
            public_key: detail("key")?,
        },
        "x509" => Credentials::X509,
        other => return Err(format!("unknown tls mode {other:?}")),
    };
    Ok(SecurityInfo {
        endpoint,
        credentials,
    })
}

pub(super) async fn security_list(State(st): St) -> HttpResponse {
    json_ok(Json::Array(
        st.security.all().iter().map(security_json).collect(),
    ))
}

pub(super) async fn security_put(State(st): St, body: Bytes) -> HttpResponse {
    let info = match serde_json::from_slice::<Json>(&body)
        .map_err(|e| e.to_string())
        .and_then(|j| security_from_json(&j))
    {
        Ok(info) => info,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Invalid request body: {e}"),
            )
            .into_response();
        }
    };
    match st.security.put(info) {
        Ok(_) => StatusCode::OK.into_response(),
        // Leshan: a non-unique identity (and any invalid info) is a 400 with the reason.
        Err(e @ (StoreError::IdentityTaken { .. } | StoreError::Invalid { .. })) => {
            text(StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub(super) async fn security_delete(State(st): St, Path(ep): Path<String>) -> HttpResponse {
    match st.security.remove(&ep) {
        Ok(Some(_)) => StatusCode::OK.into_response(),
        Ok(None) => json_ok(json!({"message": "not_found"})),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
