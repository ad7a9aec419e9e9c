//! The Leshan API: bootstrap configurations: Leshan bsserver's BootstrapConfig shape.

use super::*;

pub(super) fn byte_array(b: &[u8]) -> Json {
    Json::Array(b.iter().map(|x| json!(x)).collect())
}

pub(super) fn mode_name(m: SecurityMode) -> &'static str {
    match m {
        SecurityMode::Psk => "PSK",
        SecurityMode::Rpk => "RPK",
        SecurityMode::X509 => "X509",
        SecurityMode::NoSec => "NO_SEC",
        SecurityMode::Est => "EST",
    }
}

pub(super) fn mode_from_name(s: &str) -> Option<SecurityMode> {
    Some(match s {
        "PSK" => SecurityMode::Psk,
        "RPK" => SecurityMode::Rpk,
        "X509" => SecurityMode::X509,
        "NO_SEC" => SecurityMode::NoSec,
        "EST" => SecurityMode::Est,
        _ => return None,
    })
}

/// A configuration in Leshan bsserver's shape; secret keys are never shown.
pub fn bootstrap_json(c: &BootstrapConfig) -> Json {
    let hex_bytes = |s: &str| lwm2m_proto::value::parse_hex(s).unwrap_or_default();
    let security: Map<String, Json> = c
        .security
        .iter()
        .map(|(i, s)| {
            let mut m = Map::new();
            m.insert("uri".into(), json!(s.uri));
            m.insert("bootstrapServer".into(), json!(s.bootstrap_server));
            m.insert("securityMode".into(), json!(mode_name(s.mode)));
            m.insert("publicKeyOrId".into(), byte_array(&s.identity_bytes()));
            m.insert(
                "serverPublicKey".into(),
                byte_array(&hex_bytes(&s.server_public_key)),
            );
            let secret = if s.secret_key.is_empty() {
                json!([])
            } else {
                json!(REDACTED)
            };
            m.insert("secretKey".into(), secret);
            if let Some(id) = s.short_server_id {
                m.insert("serverId".into(), json!(id));
            }
            if let Some(t) = s.client_hold_off {
                m.insert("clientOldOffTime".into(), json!(t));
            }
            if let Some(t) = s.bootstrap_account_timeout {
                m.insert("bootstrapServerAccountTimeout".into(), json!(t));
            }
            (i.to_string(), Json::Object(m))
        })
        .collect();
    let servers: Map<String, Json> = c
        .servers
        .iter()
        .map(|(i, s)| {
            let mut m = Map::new();
            m.insert("shortId".into(), json!(s.short_server_id));
            m.insert("lifetime".into(), json!(s.lifetime));
            if let Some(p) = s.default_min_period {
                m.insert("defaultMinPeriod".into(), json!(p));
            }
            if let Some(p) = s.default_max_period {
                m.insert("defaultMaxPeriod".into(), json!(p));
            }
            m.insert("notifIfDisabled".into(), json!(s.notification_storing));
            m.insert("binding".into(), json!(s.binding));
            (i.to_string(), Json::Object(m))
        })
        .collect();
    let acls: Map<String, Json> = c
        .acl
        .iter()
        .map(|(i, a)| {
            let rights: Map<String, Json> = a
                .acl
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            (
                i.to_string(),
                json!({"objectId": a.object_id, "objectInstanceId": a.instance_id,
                       "acls": rights, "AccessControlOwner": a.owner}),
            )
        })
        .collect();
    json!({
        "autoIdForSecurityObject": c.discover,
        "toDelete": c.delete.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "servers": servers,
        "security": security,
        "acls": acls,
        "oscore": {},
    })
}

/// Whether a value is a default Leshan fills in for a field we do not support.
pub(super) fn is_unset(v: &Json) -> bool {
    match v {
        Json::Null | Json::Bool(false) => true,
        Json::String(s) => s.is_empty() || s == "NO_SEC",
        Json::Array(a) => a.is_empty(),
        Json::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Why a Leshan bsserver configuration body is not a bootstrap configuration. `what`
/// names the part: `config`, `security 0`, `servers 1`, `acls 2`,
/// `security 0 publicKeyOrId`, ...
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A part that is not a JSON object.
    #[error("{what} must be an object")]
    NotObject {
        /// The part.
        what: String,
    },
    /// A field we do not support, set to something other than its default.
    #[error("{what}: {field} is not supported")]
    Unsupported {
        /// The part.
        what: String,
        /// The field.
        field: String,
    },
    /// An element of a byte array that is not a byte.
    #[error("{what}: {value} is not a byte")]
    NotByte {
        /// The field.
        what: String,
        /// The element, as written.
        value: String,
    },
    /// A string that should be hex bytes and is not.
    #[error("{what}: expected bytes ([1, 2]) or hex")]
    NotHex {
        /// The field.
        what: String,
    },
    /// Bytes that are neither an array nor a string.
    #[error("{what}: expected bytes, got {value}")]
    NotBytes {
        /// The field.
        what: String,
        /// The value, as written.
        value: String,
    },
    /// A number out of its field's range (or not a number).
    #[error("{what}: {value} is out of range")]
    OutOfRange {
        /// The part.
        what: String,
        /// The value, as written.
        value: String,
    },
    /// A `contentFormat` is set: the client's preferred one is used.
    #[error("contentFormat {value} is not supported (the client's preferred one is used)")]
    ContentFormat {
        /// The value, as written.
        value: String,
    },
    /// A `toDelete` entry that is not a string.
    #[error("toDelete holds paths")]
    DeleteNotText,
    /// A `toDelete` entry that is not an LwM2M path.
    #[error("toDelete {text:?}: {source}")]
    DeletePath {
        /// The entry.
        text: String,
        /// Why it is not a path.
        source: lwm2m_proto::ids::PathError,
    },
    /// A key of `security`, `servers` or `acls` that is not an instance id.
    #[error("{section}: {key:?} is not an instance id")]
    InstanceKey {
        /// `security`, `servers` or `acls`.
        section: &'static str,
        /// The key as written.
        key: String,
    },
    /// `security`, `servers` or `acls` that is not an object of instances.
    #[error("{section} must be an object {{\"0\": {{...}}}}")]
    NotInstances {
        /// `security`, `servers` or `acls`.
        section: &'static str,
    },
    /// A security instance without a known `securityMode`.
    #[error("{what}: securityMode is PSK, RPK, X509, NO_SEC or EST")]
    SecurityMode {
        /// The part.
        what: String,
    },
    /// The secret key is the placeholder this API shows instead of keys.
    #[error("{what}: secretKey {:?} is a placeholder; give the key", REDACTED)]
    Placeholder {
        /// The part.
        what: String,
    },
    /// A PSK identity that is not UTF-8.
    #[error("{what}: a PSK identity is UTF-8 text")]
    PskIdentity {
        /// The part.
        what: String,
    },
    /// A required field is missing.
    #[error("{what}: {field} missing")]
    Missing {
        /// The part.
        what: String,
        /// The field.
        field: &'static str,
    },
    /// A `binding` array with an element that is not a string.
    #[error("{what}: binding letters are strings")]
    BindingLetter {
        /// The part.
        what: String,
    },
    /// A `binding` that is neither a string nor an array of letters.
    #[error("{what}: binding {value} is not U, UQ, ...")]
    Binding {
        /// The part.
        what: String,
        /// The value, as written.
        value: String,
    },
    /// A key of an ACL's `acls` that is not a Short Server ID.
    #[error("{what}: {key:?} is not a Short Server ID")]
    ShortServerId {
        /// The part.
        what: String,
        /// The key as written.
        key: String,
    },
}

/// The fields of an object: those in `known` are handed out, the others must be unset.
pub(super) fn fields<'a>(
    what: &str,
    j: &'a Json,
    known: &[&str],
) -> Result<std::collections::HashMap<&'a str, &'a Json>, ConfigError> {
    let Json::Object(m) = j else {
        return Err(ConfigError::NotObject {
            what: what.to_owned(),
        });
    };
    let mut out = std::collections::HashMap::new();
    for (k, v) in m {
        if known.contains(&k.as_str()) {
            out.insert(k.as_str(), v);
        } else if !is_unset(v) {
            return Err(ConfigError::Unsupported {
                what: what.to_owned(),
                field: k.clone(),
            });
        }
    }
    Ok(out)
}

pub(super) fn bytes_from(what: &str, v: Option<&Json>) -> Result<Vec<u8>, ConfigError> {
    match v {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_i64()
                    .filter(|x| (-128..=255).contains(x))
                    // Jackson's default writes signed bytes; the demo's serializer unsigned.
                    .map(|x| (x & 0xff) as u8)
                    .ok_or_else(|| ConfigError::NotByte {
                        what: what.to_owned(),
                        value: x.to_string(),
                    })
            })
            .collect(),
        Some(Json::String(s)) => {
            lwm2m_proto::value::parse_hex(s).ok_or_else(|| ConfigError::NotHex {
                what: what.to_owned(),
            })
        }
        Some(other) => Err(ConfigError::NotBytes {
            what: what.to_owned(),
            value: other.to_string(),
        }),
    }
}

pub(super) fn uint<T: TryFrom<u64>>(
    what: &str,
    v: Option<&Json>,
) -> Result<Option<T>, ConfigError> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .and_then(|x| T::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| ConfigError::OutOfRange {
                what: what.to_owned(),
                value: x.to_string(),
            }),
    }
}

/// A configuration from Leshan bsserver's JSON.
pub(super) fn bootstrap_from_json(j: &Json) -> Result<BootstrapConfig, ConfigError> {
    let top = fields(
        "config",
        j,
        &[
            "autoIdForSecurityObject",
            "toDelete",
            "servers",
            "security",
            "acls",
            "contentFormat",
        ],
    )?;
    let mut c = BootstrapConfig {
        delete: Vec::new(),
        discover: top
            .get("autoIdForSecurityObject")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        ..BootstrapConfig::default()
    };
    if let Some(v) = top.get("contentFormat").filter(|v| !v.is_null()) {
        return Err(ConfigError::ContentFormat {
            value: v.to_string(),
        });
    }
    if let Some(Json::Array(paths)) = top.get("toDelete") {
        for p in paths {
            let s = p.as_str().ok_or(ConfigError::DeleteNotText)?;
            c.delete
                .push(s.parse().map_err(|source| ConfigError::DeletePath {
                    text: s.to_owned(),
                    source,
                })?);
        }
    }
    let instances = |section: &'static str| -> Result<Vec<(u16, &Json)>, ConfigError> {
        match top.get(section) {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(Json::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    k.parse::<u16>()
                        .map(|i| (i, v))
                        .map_err(|_| ConfigError::InstanceKey {
                            section,
                            key: k.clone(),
                        })
                })
                .collect(),
            Some(_) => Err(ConfigError::NotInstances { section }),
        }
    };
    for (i, v) in instances("security")? {
        let what = format!("security {i}");
        let f = fields(
            &what,
            v,
            &[
                "uri",
                "bootstrapServer",
                "securityMode",
                "publicKeyOrId",
                "serverPublicKey",
                "secretKey",
                "serverId",
                "clientOldOffTime",
                "bootstrapServerAccountTimeout",
            ],
        )?;
        let mode = f
            .get("securityMode")
            .and_then(|m| m.as_str())
            .and_then(mode_from_name)
            .ok_or_else(|| ConfigError::SecurityMode { what: what.clone() })?;
        if f.get("secretKey").and_then(|k| k.as_str()) == Some(REDACTED) {
            return Err(ConfigError::Placeholder { what });
        }
        let id = bytes_from(
            &format!("{what} publicKeyOrId"),
            f.get("publicKeyOrId").copied(),
        )?;
        let identity = if mode == SecurityMode::Psk {
            String::from_utf8(id).map_err(|_| ConfigError::PskIdentity { what: what.clone() })?
        } else {
            hex(&id)
        };
        c.security.insert(
            i,
            SecurityInstance {
                uri: f
                    .get("uri")
                    .and_then(|u| u.as_str())
                    .ok_or_else(|| ConfigError::Missing {
                        what: what.clone(),
                        field: "uri",
                    })?
                    .to_owned(),
                bootstrap_server: f
                    .get("bootstrapServer")
                    .and_then(|b| b.as_bool())
                    .unwrap_or(false),
                mode,
                identity,
                server_public_key: hex(&bytes_from(
                    &format!("{what} serverPublicKey"),
                    f.get("serverPublicKey").copied(),
                )?),
                secret_key: hex(&bytes_from(
                    &format!("{what} secretKey"),
                    f.get("secretKey").copied(),
                )?),
                short_server_id: uint(&what, f.get("serverId").copied())?,
                client_hold_off: uint(&what, f.get("clientOldOffTime").copied())?,
                bootstrap_account_timeout: uint(
                    &what,
                    f.get("bootstrapServerAccountTimeout").copied(),
                )?,
            },
        );
    }
    for (i, v) in instances("servers")? {
        let what = format!("servers {i}");
        let f = fields(
            &what,
            v,
            &[
                "shortId",
                "lifetime",
                "defaultMinPeriod",
                "defaultMaxPeriod",
                "notifIfDisabled",
                "binding",
            ],
        )?;
        let binding = match f.get("binding") {
            None | Some(Json::Null) => "U".to_owned(),
            Some(Json::String(b)) => b.clone(),
            Some(Json::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .ok_or_else(|| ConfigError::BindingLetter { what: what.clone() })
                })
                .collect::<Result<String, ConfigError>>()?,
            Some(other) => {
                return Err(ConfigError::Binding {
                    what,
                    value: other.to_string(),
                });
            }
        };
        c.servers.insert(
            i,
            ServerInstance {
                short_server_id: uint(&what, f.get("shortId").copied())?.ok_or_else(|| {
                    ConfigError::Missing {
                        what: what.clone(),
                        field: "shortId",
                    }
                })?,
                lifetime: uint(&what, f.get("lifetime").copied())?.unwrap_or(86_400),
                default_min_period: uint(&what, f.get("defaultMinPeriod").copied())?,
                default_max_period: uint(&what, f.get("defaultMaxPeriod").copied())?,
                notification_storing: f
                    .get("notifIfDisabled")
                    .and_then(|b| b.as_bool())
                    .unwrap_or(true),
                binding,
            },
        );
    }
    for (i, v) in instances("acls")? {
        let what = format!("acls {i}");
        let f = fields(
            &what,
            v,
            &["objectId", "objectInstanceId", "acls", "AccessControlOwner"],
        )?;
        let mut acl = BTreeMap::new();
        if let Some(Json::Object(m)) = f.get("acls") {
            for (k, r) in m {
                let ssid: u16 = k.parse().map_err(|_| ConfigError::ShortServerId {
                    what: what.clone(),
                    key: k.clone(),
                })?;
                acl.insert(ssid, uint(&what, Some(r))?.unwrap_or(0));
            }
        }
        c.acl.insert(
            i,
            AclInstance {
                object_id: uint(&what, f.get("objectId").copied())?.ok_or_else(|| {
                    ConfigError::Missing {
                        what: what.clone(),
                        field: "objectId",
                    }
                })?,
                instance_id: uint(&what, f.get("objectInstanceId").copied())?.ok_or_else(|| {
                    ConfigError::Missing {
                        what: what.clone(),
                        field: "objectInstanceId",
                    }
                })?,
                acl,
                owner: uint(&what, f.get("AccessControlOwner").copied())?.unwrap_or(u16::MAX),
            },
        );
    }
    Ok(c)
}

pub(super) async fn bootstrap_list(State(st): St) -> HttpResponse {
    let all: Map<String, Json> = st
        .bootstrap
        .all()
        .iter()
        .filter_map(|(k, c)| match k {
            ConfigKey::Endpoint(ep) => Some((ep.clone(), bootstrap_json(c))),
            ConfigKey::Pattern(_) => None,
        })
        .collect();
    json_ok(Json::Object(all))
}

pub(super) async fn bootstrap_post(
    State(st): St,
    Path(ep): Path<String>,
    body: Bytes,
) -> HttpResponse {
    let config = match serde_json::from_slice::<Json>(&body)
        .map_err(|e| e.to_string())
        .and_then(|j| bootstrap_from_json(&j).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return text(StatusCode::BAD_REQUEST, e).into_response(),
    };
    match st.bootstrap.put(ConfigKey::Endpoint(ep), config) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e @ (StoreError::IdentityTaken { .. } | StoreError::Invalid { .. })) => {
            text(StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub(super) async fn bootstrap_delete(State(st): St, Path(ep): Path<String>) -> HttpResponse {
    match st.bootstrap.remove(&ConfigKey::Endpoint(ep.clone())) {
        Ok(Some(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(None) => text(StatusCode::NOT_FOUND, format!("no config for {ep}")).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
