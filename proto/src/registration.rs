//! The Registration interface's parameters (Core TS 1.1 §6.2.1-§6.2.3, 1.2 §6.2):
//! the Uri-Query of Register and Update, checked, with the deviations of real clients
//! that the specification tolerates accepted and recorded as findings.

use std::fmt;

/// An LwM2M enabler version a client declares with `lwm2m=`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Lwm2mVersion {
    /// 1.0
    #[serde(rename = "1.0")]
    V1_0,
    /// 1.1
    #[serde(rename = "1.1")]
    V1_1,
    /// 1.2
    #[serde(rename = "1.2")]
    V1_2,
}

impl Lwm2mVersion {
    /// Parses `1.0`, `1.1`, `1.2` (also `1.0.2`, `1.1.1`, `1.2.1` as some clients send).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim_matches('"').split('.');
        match (parts.next(), parts.next()) {
            (Some("1"), Some("0")) => Some(Self::V1_0),
            (Some("1"), Some("1")) => Some(Self::V1_1),
            (Some("1"), Some("2")) => Some(Self::V1_2),
            _ => None,
        }
    }

    /// The version before this one (1.1 for 1.2, 1.0 for 1.1), `None` for 1.0.
    pub fn older(self) -> Option<Self> {
        match self {
            Self::V1_0 => None,
            Self::V1_1 => Some(Self::V1_0),
            Self::V1_2 => Some(Self::V1_1),
        }
    }

    /// `1.0`, `1.1` or `1.2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_0 => "1.0",
            Self::V1_1 => "1.1",
            Self::V1_2 => "1.2",
        }
    }
}

impl fmt::Display for Lwm2mVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tolerated deviation seen in a Register or Update.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RegistrationFinding {
    /// No `lwm2m=` parameter: assumed 1.0 (pre-1.0 and some 1.0 clients omit it).
    MissingVersion,
    /// `b=UQ` (1.0 queue binding) from a 1.1+ client, which should send `b=U&Q`.
    LegacyQueueBinding {
        /// The binding sent.
        binding: String,
    },
    /// A query parameter the specification does not define.
    UnknownParameter {
        /// The raw parameter.
        parameter: String,
    },
    /// A pre-1.0 content-format number in the registration payload.
    LegacyContentFormat {
        /// The number.
        code: u16,
    },
}

impl RegistrationFinding {
    /// The clause of the specification the finding is about.
    pub fn clause(&self) -> &'static str {
        match self {
            Self::MissingVersion => {
                "Core TS 1.1 §6.2.1: a Register carries the LwM2M version (lwm2m=)"
            }
            Self::LegacyQueueBinding { .. } => {
                "Core TS 1.1 §6.2.1: queue mode is the Q parameter; the binding b= has no Q"
            }
            Self::UnknownParameter { .. } => {
                "Core TS 1.1 §6.2.1, §6.2.2: the Register and Update parameters are ep, lt, \
                 lwm2m, b, sms, Q"
            }
            Self::LegacyContentFormat { .. } => {
                "Core TS 1.0 §6.4: the registered Content-Format numbers replaced 1541-1544"
            }
        }
    }
}

impl fmt::Display for RegistrationFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingVersion => f.write_str("no lwm2m= parameter; assumed LwM2M 1.0"),
            Self::LegacyQueueBinding { binding } => write!(
                f,
                "binding b={binding} is the LwM2M 1.0 queue form; 1.1 clients send b=U and Q"
            ),
            Self::UnknownParameter { parameter } => {
                write!(f, "unknown query parameter {parameter:?} ignored")
            }
            Self::LegacyContentFormat { code } => {
                write!(f, "pre-1.0 content format {code} announced")
            }
        }
    }
}

/// Why a Register or Update is refused, with the CoAP code to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrationError {
    /// The `ep` parameter is missing or empty (4.00).
    #[error("Register without an endpoint name (ep=)")]
    MissingEndpoint,
    /// A parameter has an invalid value (4.00).
    #[error("invalid {name}={value:?}: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// The value sent.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The `lwm2m=` version is not one this server speaks (4.12).
    #[error("unsupported LwM2M version {version:?} (this server speaks 1.0, 1.1, 1.2)")]
    UnsupportedVersion {
        /// The version sent.
        version: String,
    },
    /// The payload is not a valid CoRE link list (4.00).
    #[error("registration payload: {reason}")]
    BadPayload {
        /// Why.
        reason: String,
    },
    /// The Uri-Query cannot be read: an option that is not UTF-8, or a parameter given
    /// more than once (4.00; two `ep=` would let two readers see two endpoints).
    #[error("bad query: {reason}")]
    BadQuery {
        /// Why.
        reason: String,
    },
    /// The registration id is not known (4.04).
    #[error("no registration {id:?}")]
    UnknownRegistration {
        /// The id in the Uri-Path.
        id: String,
    },
}

impl RegistrationError {
    /// The CoAP response code class and detail, e.g. (4, 0) for 4.00.
    pub fn coap_code(&self) -> (u8, u8) {
        match self {
            Self::UnsupportedVersion { .. } => (4, 12),
            Self::UnknownRegistration { .. } => (4, 4),
            _ => (4, 0),
        }
    }
}

/// The Uri-Query of a Register request (Core TS 1.1 §6.2.1 Table 6.2.1-1).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegisterParams {
    /// `ep`: Endpoint Client Name.
    pub endpoint: String,
    /// `lt`: lifetime in seconds (default 86400).
    pub lifetime: u32,
    /// `lwm2m`: the enabler version (1.0 when absent, with a finding).
    pub version: Lwm2mVersion,
    /// `b`: binding (default `U`), without a 1.0 queue `Q` suffix.
    pub binding: String,
    /// Queue mode: `Q` (1.1+) or the 1.0 binding `UQ`.
    pub queue_mode: bool,
    /// `sms`: MSISDN.
    pub sms: Option<String>,
    /// Tolerated deviations.
    pub findings: Vec<RegistrationFinding>,
}

/// The Uri-Query of an Update request (Core TS 1.1 §6.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UpdateParams {
    /// `lt`, if changed.
    pub lifetime: Option<u32>,
    /// `b`, if changed.
    pub binding: Option<String>,
    /// Queue mode, if the binding or `Q` says so.
    pub queue_mode: Option<bool>,
    /// `sms`, if changed.
    pub sms: Option<String>,
    /// Tolerated deviations.
    pub findings: Vec<RegistrationFinding>,
}

/// The default lifetime when `lt` is absent (Core TS 1.1 Appendix E.2, resource 1/x/1).
pub const DEFAULT_LIFETIME: u32 = 86_400;

fn split(q: &str) -> (&str, Option<&str>) {
    match q.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (q, None),
    }
}

fn parse_lifetime(v: Option<&str>) -> Result<u32, RegistrationError> {
    let v = v.unwrap_or("");
    match v.parse::<u32>() {
        Ok(lt) if lt > 0 => Ok(lt),
        _ => Err(RegistrationError::InvalidParameter {
            name: "lt",
            value: v.to_owned(),
            reason: "lifetime must be a positive number of seconds",
        }),
    }
}

/// Splits a binding into its transport letters and the 1.0 queue flag.
fn parse_binding(v: Option<&str>) -> Result<(String, bool), RegistrationError> {
    let v = v.unwrap_or("");
    let valid = !v.is_empty() && v.chars().all(|c| "UMHTSNQ".contains(c));
    if !valid {
        return Err(RegistrationError::InvalidParameter {
            name: "b",
            value: v.to_owned(),
            reason: "binding must be letters of U, M, H, T, S, N (Q for 1.0 queue mode)",
        });
    }
    let queue = v.contains('Q');
    let transports: String = v.chars().filter(|c| *c != 'Q').collect();
    if transports.is_empty() {
        return Err(RegistrationError::InvalidParameter {
            name: "b",
            value: v.to_owned(),
            reason: "binding names no transport",
        });
    }
    Ok((transports, queue))
}

/// Parses the Uri-Query options of a Register request.
pub fn parse_register_query<S: AsRef<str>>(
    queries: &[S],
) -> Result<RegisterParams, RegistrationError> {
    let mut endpoint = None;
    let mut lifetime = DEFAULT_LIFETIME;
    let mut version = None;
    let mut binding = ("U".to_owned(), false);
    let mut binding_given = None;
    let mut q_flag = false;
    let mut sms = None;
    let mut findings = Vec::new();
    for q in queries {
        let q = q.as_ref();
        match split(q) {
            ("ep", Some(v)) if !v.is_empty() => endpoint = Some(v.to_owned()),
            ("ep", _) => return Err(RegistrationError::MissingEndpoint),
            ("lt", v) => lifetime = parse_lifetime(v)?,
            ("lwm2m", v) => {
                let v = v.unwrap_or("");
                version = Some(Lwm2mVersion::parse(v).ok_or_else(|| {
                    RegistrationError::UnsupportedVersion {
                        version: v.to_owned(),
                    }
                })?);
            }
            ("b", v) => {
                binding = parse_binding(v)?;
                binding_given = v.map(str::to_owned);
            }
            ("Q", None) => q_flag = true,
            ("sms", v) => sms = v.map(str::to_owned),
            _ => findings.push(RegistrationFinding::UnknownParameter {
                parameter: q.to_owned(),
            }),
        }
    }
    let endpoint = endpoint.ok_or(RegistrationError::MissingEndpoint)?;
    let version = version.unwrap_or_else(|| {
        findings.insert(0, RegistrationFinding::MissingVersion);
        Lwm2mVersion::V1_0
    });
    if binding.1
        && version >= Lwm2mVersion::V1_1
        && let Some(b) = binding_given
    {
        findings.push(RegistrationFinding::LegacyQueueBinding { binding: b });
    }
    Ok(RegisterParams {
        endpoint,
        lifetime,
        version,
        binding: binding.0,
        queue_mode: binding.1 || q_flag,
        sms,
        findings,
    })
}

/// Parses the Uri-Query options of an Update request.
pub fn parse_update_query<S: AsRef<str>>(queries: &[S]) -> Result<UpdateParams, RegistrationError> {
    let mut p = UpdateParams::default();
    for q in queries {
        let q = q.as_ref();
        match split(q) {
            ("lt", v) => p.lifetime = Some(parse_lifetime(v)?),
            ("b", v) => {
                let (b, queue) = parse_binding(v)?;
                p.binding = Some(b);
                p.queue_mode = Some(queue || p.queue_mode == Some(true));
            }
            ("Q", None) => p.queue_mode = Some(true),
            ("sms", v) => p.sms = v.map(str::to_owned),
            _ => p.findings.push(RegistrationFinding::UnknownParameter {
                parameter: q.to_owned(),
            }),
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_query_of_the_spec_example() {
        // Core TS 1.1 §6.2.1 example: POST /rd?ep=urn:dev:ops:...&lt=300&lwm2m=1.1&b=U
        let p = parse_register_query(&["ep=example-client", "lt=300", "lwm2m=1.1", "b=U"]).unwrap();
        assert_eq!(p.endpoint, "example-client");
        assert_eq!(p.lifetime, 300);
        assert_eq!(p.version, Lwm2mVersion::V1_1);
        assert_eq!(p.binding, "U");
        assert!(!p.queue_mode);
        assert!(p.findings.is_empty());
    }

    #[test]
    fn tolerated_deviations_are_recorded() {
        let p = parse_register_query(&["ep=old", "b=UQ"]).unwrap();
        assert_eq!(p.version, Lwm2mVersion::V1_0);
        assert!(p.queue_mode);
        assert_eq!(p.lifetime, DEFAULT_LIFETIME);
        assert_eq!(p.findings, vec![RegistrationFinding::MissingVersion]);
        let p = parse_register_query(&["ep=x", "lwm2m=1.1", "b=UQ", "foo=1"]).unwrap();
        assert!(p.queue_mode);
        assert!(matches!(
            p.findings[0],
            RegistrationFinding::UnknownParameter { .. }
        ));
        assert!(matches!(
            p.findings[1],
            RegistrationFinding::LegacyQueueBinding { .. }
        ));
        let p = parse_register_query(&["ep=x", "lwm2m=1.1", "b=U", "Q"]).unwrap();
        assert!(p.queue_mode && p.findings.is_empty());
    }

    #[test]
    fn wrong_input_gets_the_right_code() {
        let code = |q: &[&str]| parse_register_query(q).unwrap_err().coap_code();
        assert_eq!(code(&["lt=300"]), (4, 0));
        assert_eq!(code(&["ep="]), (4, 0));
        assert_eq!(code(&["ep=a", "lt=abc"]), (4, 0));
        assert_eq!(code(&["ep=a", "lt=0"]), (4, 0));
        assert_eq!(code(&["ep=a", "b=X"]), (4, 0));
        assert_eq!(code(&["ep=a", "lwm2m=2.0"]), (4, 12));
        let u = parse_update_query(&["lt=60", "b=UQ"]).unwrap();
        assert_eq!(
            (u.lifetime, u.binding.as_deref(), u.queue_mode),
            (Some(60), Some("U"), Some(true))
        );
        assert!(parse_update_query(&["lt=-1"]).is_err());
    }
}
