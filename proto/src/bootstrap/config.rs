//! Bootstrap configurations: what the Bootstrap Server writes into a client's Security (0),
//! Server (1) and Access Control (2) objects (Core TS 1.1 §6.1.7, Appendix E.1-E.3).
//!
//! A configuration names the paths to Bootstrap-Delete first, then the instances to write.
//! Configurations matched by endpoint-name pattern may use `{ep}` in string fields, replaced
//! by the endpoint name of the client being bootstrapped.

use std::collections::BTreeMap;

use crate::ids::{Lwm2mPath, ResourceId, ResourceInstanceId};
use crate::node::{Instance, Node, ResourceValue};
use crate::value::Value;

/// Security Mode, resource 0/x/2 (Core TS 1.1 Appendix E.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    /// 0: Pre-Shared Key.
    Psk,
    /// 1: Raw Public Key.
    Rpk,
    /// 2: Certificate.
    X509,
    /// 3: no security.
    NoSec,
    /// 4: Certificate with EST.
    Est,
}

impl SecurityMode {
    /// The integer resource value.
    pub fn code(self) -> i64 {
        match self {
            Self::Psk => 0,
            Self::Rpk => 1,
            Self::X509 => 2,
            Self::NoSec => 3,
            Self::Est => 4,
        }
    }
    /// The mode for an integer resource value.
    pub fn from_code(c: i64) -> Option<Self> {
        Some(match c {
            0 => Self::Psk,
            1 => Self::Rpk,
            2 => Self::X509,
            3 => Self::NoSec,
            4 => Self::Est,
            _ => return None,
        })
    }
}

/// One Security object instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityInstance {
    /// 0: LwM2M Server URI, e.g. `coaps://127.0.0.1:5684`.
    pub uri: String,
    /// 1: true if this instance describes the Bootstrap Server.
    #[serde(default)]
    pub bootstrap_server: bool,
    /// 2: Security Mode.
    pub mode: SecurityMode,
    /// 3: PSK identity (as text) for PSK; otherwise public key or certificate, hex.
    #[serde(default)]
    pub identity: String,
    /// 4: Server Public Key, hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_public_key: String,
    /// 5: Secret Key (PSK key or private key), hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_key: String,
    /// 10: Short Server ID (absent for the Bootstrap Server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_server_id: Option<u16>,
    /// 11: Client Hold Off Time, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_hold_off: Option<u32>,
    /// 12: Bootstrap-Server Account Timeout, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_account_timeout: Option<u32>,
}

impl SecurityInstance {
    /// A NoSec LwM2M Server account at `uri`: no keys, no Short Server ID, no hold-off.
    /// Other accounts start from it (`SecurityInstance { mode, .., ..nosec(uri) }`).
    pub fn nosec(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            bootstrap_server: false,
            mode: SecurityMode::NoSec,
            identity: String::new(),
            server_public_key: String::new(),
            secret_key: String::new(),
            short_server_id: None,
            client_hold_off: None,
            bootstrap_account_timeout: None,
        }
    }

    /// Resource 3 as written to the client: a PSK identity's text as bytes; otherwise the
    /// hex decoded (text that is not hex: its bytes).
    pub fn identity_bytes(&self) -> Vec<u8> {
        if self.mode == SecurityMode::Psk {
            self.identity.as_bytes().to_vec()
        } else {
            hex_or_text(&self.identity)
        }
    }

    /// Resource 5 as written to the client (the PSK key or private key): the hex decoded
    /// (text that is not hex: its bytes).
    pub fn secret_key_bytes(&self) -> Vec<u8> {
        hex_or_text(&self.secret_key)
    }
}

/// One Server object instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerInstance {
    /// 0: Short Server ID.
    pub short_server_id: u16,
    /// 1: Lifetime, seconds.
    pub lifetime: u32,
    /// 2: Default Minimum Period, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_min_period: Option<u32>,
    /// 3: Default Maximum Period, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_max_period: Option<u32>,
    /// 6: Notification Storing When Disabled or Offline.
    #[serde(default = "yes")]
    pub notification_storing: bool,
    /// 7: Binding, e.g. `U` or `UQ`.
    #[serde(default = "udp")]
    pub binding: String,
}

impl ServerInstance {
    /// The Server object instance of `short_server_id`: `lifetime` seconds, binding U, no
    /// default periods, notifications not stored while offline.
    pub fn new(short_server_id: u16, lifetime: u32) -> Self {
        Self {
            short_server_id,
            lifetime,
            default_min_period: None,
            default_max_period: None,
            notification_storing: false,
            binding: "U".to_owned(),
        }
    }
}

fn yes() -> bool {
    true
}
fn udp() -> String {
    "U".into()
}

/// One Access Control object instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclInstance {
    /// 0: the object the ACL applies to.
    pub object_id: u16,
    /// 1: the object instance the ACL applies to.
    pub instance_id: u16,
    /// 2: rights per Short Server ID (bit 0 Read/Observe, 1 Write, 2 Execute, 3 Delete, 4 Create).
    #[serde(default)]
    pub acl: BTreeMap<u16, u16>,
    /// 3: Access Control Owner (Short Server ID).
    pub owner: u16,
}

/// What the Bootstrap Server sends one client.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapConfig {
    /// Paths to Bootstrap-Delete before writing (default `/0` and `/1`).
    #[serde(default = "default_delete")]
    pub delete: Vec<Lwm2mPath>,
    /// Run a Bootstrap-Discover of `/` first (LwM2M 1.1 clients).
    #[serde(default)]
    pub discover: bool,
    /// Security object instances by instance id.
    #[serde(default)]
    pub security: BTreeMap<u16, SecurityInstance>,
    /// Server object instances by instance id.
    #[serde(default)]
    pub servers: BTreeMap<u16, ServerInstance>,
    /// Access Control object instances by instance id.
    #[serde(default)]
    pub acl: BTreeMap<u16, AclInstance>,
    /// Paths to Bootstrap-Read after writing (LwM2M 1.1; only `/1`, `/2` and their
    /// instances, Core TS 1.1 §5.2.7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<Lwm2mPath>,
}

fn default_delete() -> Vec<Lwm2mPath> {
    vec![Lwm2mPath::object(0), Lwm2mPath::object(1)]
}

/// Decodes hex, or returns the text's bytes when it is not hex (PSK identities are text).
fn hex_or_text(s: &str) -> Vec<u8> {
    crate::value::parse_hex(s).unwrap_or_else(|| s.as_bytes().to_vec())
}

impl BootstrapConfig {
    /// The configuration with `{ep}` replaced by `endpoint` in every string field.
    pub fn for_endpoint(&self, endpoint: &str) -> Self {
        let sub = |s: &str| s.replace("{ep}", endpoint);
        let mut c = self.clone();
        for s in c.security.values_mut() {
            s.uri = sub(&s.uri);
            s.identity = sub(&s.identity);
            s.server_public_key = sub(&s.server_public_key);
            s.secret_key = sub(&s.secret_key);
        }
        for s in c.servers.values_mut() {
            s.binding = sub(&s.binding);
        }
        c
    }

    /// The Bootstrap-Write requests in the order the Bootstrap Server sends them: the
    /// Security instances, then the Server instances, then the ACL instances, each as an
    /// object-instance node (Core TS 1.1 §5.2.7.4).
    pub fn writes(&self) -> Vec<(Lwm2mPath, Node)> {
        let single = |v: Value| ResourceValue::Single(v);
        let mut out = Vec::new();
        for (id, s) in &self.security {
            let mut i = Instance::new();
            i.insert(ResourceId(0), single(Value::String(s.uri.clone())));
            i.insert(ResourceId(1), single(Value::Boolean(s.bootstrap_server)));
            i.insert(ResourceId(2), single(Value::Integer(s.mode.code())));
            i.insert(ResourceId(3), single(Value::Opaque(s.identity_bytes())));
            i.insert(
                ResourceId(4),
                single(Value::Opaque(hex_or_text(&s.server_public_key))),
            );
            i.insert(ResourceId(5), single(Value::Opaque(s.secret_key_bytes())));
            if let Some(ssid) = s.short_server_id {
                i.insert(ResourceId(10), single(Value::Integer(ssid.into())));
            }
            if let Some(t) = s.client_hold_off {
                i.insert(ResourceId(11), single(Value::Integer(t.into())));
            }
            if let Some(t) = s.bootstrap_account_timeout {
                i.insert(ResourceId(12), single(Value::Integer(t.into())));
            }
            out.push((Lwm2mPath::instance(0, *id), Node::Instance(i)));
        }
        for (id, s) in &self.servers {
            let mut i = Instance::new();
            i.insert(
                ResourceId(0),
                single(Value::Integer(s.short_server_id.into())),
            );
            i.insert(ResourceId(1), single(Value::Integer(s.lifetime.into())));
            if let Some(p) = s.default_min_period {
                i.insert(ResourceId(2), single(Value::Integer(p.into())));
            }
            if let Some(p) = s.default_max_period {
                i.insert(ResourceId(3), single(Value::Integer(p.into())));
            }
            i.insert(
                ResourceId(6),
                single(Value::Boolean(s.notification_storing)),
            );
            i.insert(ResourceId(7), single(Value::String(s.binding.clone())));
            out.push((Lwm2mPath::instance(1, *id), Node::Instance(i)));
        }
        for (id, a) in &self.acl {
            let mut i = Instance::new();
            i.insert(ResourceId(0), single(Value::Integer(a.object_id.into())));
            i.insert(ResourceId(1), single(Value::Integer(a.instance_id.into())));
            i.insert(
                ResourceId(2),
                ResourceValue::Multiple(
                    a.acl
                        .iter()
                        .map(|(ssid, rights)| {
                            (ResourceInstanceId(*ssid), Value::Integer((*rights).into()))
                        })
                        .collect(),
                ),
            );
            i.insert(ResourceId(3), single(Value::Integer(a.owner.into())));
            out.push((Lwm2mPath::instance(2, *id), Node::Instance(i)));
        }
        out
    }
}

/// Reads a Security instance back from the node a client holds (used by simulated clients
/// to pick up what the Bootstrap Server wrote).
pub fn security_from_instance(inst: &Instance) -> Option<SecurityInstance> {
    let get = |r: u16| match inst.get(&ResourceId(r)) {
        Some(ResourceValue::Single(v)) => Some(v),
        _ => None,
    };
    let int = |r: u16| match get(r) {
        Some(Value::Integer(i)) => Some(*i),
        _ => None,
    };
    let bytes = |r: u16| match get(r) {
        Some(Value::Opaque(b)) => b.clone(),
        Some(Value::String(s)) => s.as_bytes().to_vec(),
        _ => Vec::new(),
    };
    let hex = |b: Vec<u8>| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mode = SecurityMode::from_code(int(2)?)?;
    let identity = bytes(3);
    Some(SecurityInstance {
        uri: match get(0) {
            Some(Value::String(s)) => s.clone(),
            _ => return None,
        },
        bootstrap_server: matches!(get(1), Some(Value::Boolean(true))),
        mode,
        identity: if mode == SecurityMode::Psk {
            String::from_utf8(identity.clone()).unwrap_or_else(|_| hex(identity))
        } else {
            hex(identity)
        },
        server_public_key: hex(bytes(4)),
        secret_key: hex(bytes(5)),
        short_server_id: int(10).and_then(|v| u16::try_from(v).ok()),
        client_hold_off: int(11).and_then(|v| u32::try_from(v).ok()),
        bootstrap_account_timeout: int(12).and_then(|v| u32::try_from(v).ok()),
    })
}

/// Matches an endpoint name against a pattern with `*` (any run) and `?` (one character).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative wildcard matching with single backtrack point (linear in practice).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|c| *c == '*')
}

/// The pattern that applies to `name` among `patterns`: the matching one with the most
/// literal characters; ties go to the pattern that sorts first.
pub fn most_specific<'a, C>(
    patterns: impl IntoIterator<Item = (&'a String, &'a C)>,
    name: &str,
) -> Option<(&'a String, &'a C)> {
    patterns
        .into_iter()
        .filter(|(p, _)| pattern_matches(p, name))
        .max_by(|(a, _), (b, _)| {
            pattern_specificity(a)
                .cmp(&pattern_specificity(b))
                .then(b.cmp(a))
        })
}

/// How specific a pattern is: the number of literal characters (more wins).
pub fn pattern_specificity(pattern: &str) -> usize {
    pattern.chars().filter(|c| *c != '*' && *c != '?').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("sensor-*", "sensor-17"));
        assert!(pattern_matches("*", ""));
        assert!(pattern_matches("a?c*", "abcdef"));
        assert!(!pattern_matches("sensor-*", "meter-1"));
        assert!(!pattern_matches("a?c", "ac"));
        assert!(pattern_matches("*-*-x", "a-b-c-x"));
        assert!(pattern_specificity("sensor-*") > pattern_specificity("s*"));
    }

    #[test]
    fn writes_and_reads_back_security() {
        let yaml_like = BootstrapConfig {
            security: [(
                1,
                SecurityInstance {
                    uri: "coaps://127.0.0.1:5684".into(),
                    bootstrap_server: false,
                    mode: SecurityMode::Psk,
                    identity: "{ep}".into(),
                    server_public_key: String::new(),
                    secret_key: "00112233".into(),
                    short_server_id: Some(1),
                    client_hold_off: None,
                    bootstrap_account_timeout: None,
                },
            )]
            .into(),
            ..Default::default()
        }
        .for_endpoint("dev-9");
        let writes = yaml_like.writes();
        assert_eq!(writes.len(), 1);
        let Node::Instance(inst) = &writes[0].1 else {
            panic!("instance expected")
        };
        let back = security_from_instance(inst).unwrap();
        assert_eq!(back.identity, "dev-9");
        assert_eq!(back.secret_key, "00112233");
        assert_eq!(back.short_server_id, Some(1));
    }
}
