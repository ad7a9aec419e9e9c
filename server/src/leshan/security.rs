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

/// Why a Leshan credentials body (`{endpoint, tls: {mode, details}}`) is not credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// No `endpoint` string.
    #[error("Missing endpoint")]
    NoEndpoint,
    /// No `tls` object (an `oscore` one is not supported).
    #[error("Missing tls (OSCORE is not supported)")]
    NoTls,
    /// No `tls.mode` string.
    #[error("Missing tls mode")]
    NoMode,
    /// A `tls.details` string the mode needs is missing.
    #[error("Missing tls details {key}")]
    NoDetail {
        /// The detail's name (`identity`, `key`).
        key: &'static str,
    },
    /// The PSK key is the placeholder this API shows instead of keys.
    #[error("key {:?} is a placeholder; give the key", REDACTED)]
    Placeholder,
    /// A `tls.mode` other than `psk`, `rpk` and `x509`.
    #[error("unknown tls mode {mode:?}")]
    UnknownMode {
        /// The mode as written.
        mode: String,
    },
}

/// Credentials from Leshan's PUT body.
pub(super) fn security_from_json(j: &Json) -> Result<SecurityInfo, CredentialsError> {
    let endpoint = j
        .get("endpoint")
        .and_then(Json::as_str)
        .ok_or(CredentialsError::NoEndpoint)?
        .to_owned();
    let tls = j.get("tls").ok_or(CredentialsError::NoTls)?;
    let mode = tls
        .get("mode")
        .and_then(Json::as_str)
        .ok_or(CredentialsError::NoMode)?;
    let details = tls.get("details");
    let detail = |key: &'static str| {
        details
            .and_then(|d| d.get(key))
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or(CredentialsError::NoDetail { key })
    };
    let credentials = match mode {
        "psk" => {
            let key = detail("key")?;
            if key == REDACTED {
                return Err(CredentialsError::Placeholder);
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
        other => {
            return Err(CredentialsError::UnknownMode {
                mode: other.to_owned(),
            });
        }
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
        .and_then(|j| security_from_json(&j).map_err(|e| e.to_string()))
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
