//! The DTLS credentials a client's Security object instance (Core TS 1.1 Appendix E.1)
//! stands for, as the fleet and the in-process feature backend both read them.
//!
//! An account is secure when its Server URI (/0/x/0) is `coaps://`. Its Security Mode
//! (/0/x/2) says how: mode 0, pre-shared key (`TLS_PSK_WITH_AES_128_CCM_8`), identity
//! /0/x/3 (empty: the endpoint name) and key /0/x/5; mode 2, certificate
//! (`TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`), the client's certificate (DER) in /0/x/3, its
//! PKCS#8 private key (DER) in /0/x/5 and the certificate the server's chain must lead to
//! (DER, a trust anchor) in /0/x/4, the server's certificate naming the URI's host (an IP
//! address subjectAltName for `coaps://127.0.0.1:…`). Opaque resources may also be given
//! as strings (their UTF-8 bytes), as hand-written profiles do.
//!
//! Not supported, and refused with the reason rather than sent in clear: raw public keys
//! (mode 1, RFC 7250: not in the rtc-dtls family), EST (mode 4), and NoSec (mode 3) with a
//! `coaps://` URI. Certificate Usage (/0/x/15) is not read: /0/x/4 is always a trust anchor.

use lwm2m_dtls::{CertificateConfig, Credentials};
use lwm2m_proto::{Instance, ResourceId, ResourceValue, Value};

/// Security Mode 0: pre-shared key (/0/x/2).
pub const MODE_PSK: i64 = 0;
/// Security Mode 1: raw public key.
pub const MODE_RPK: i64 = 1;
/// Security Mode 2: certificate.
pub const MODE_CERTIFICATE: i64 = 2;

/// Why an account in Security Mode 1 cannot be used.
pub const NO_RAW_PUBLIC_KEYS: &str = "raw public keys (RFC 7250, Security mode 1) are not supported by the rtc-dtls family \
     our DTLS layer is built on";

/// Why a `coaps://` account cannot be used: nothing goes out for it, in clear least of all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// Security Mode 1, raw public keys.
    #[error("{NO_RAW_PUBLIC_KEYS}")]
    RawPublicKeys,
    /// Any other mode but PSK and certificate (NoSec, EST), or none.
    #[error("a coaps:// account needs Security Mode 0 (PSK) or 2 (certificate), not {mode}")]
    UnsupportedMode {
        /// The Security Mode resource as found (`none` when absent).
        mode: String,
    },
}

/// The DTLS credentials of `account`: `Ok(None)` when its URI is not `coaps://` (plain
/// CoAP), `Err` with the reason when it is but its mode cannot be used. `endpoint` is the
/// PSK identity of an account whose identity is empty.
pub fn account_credentials(
    account: &Instance,
    endpoint: &str,
) -> Result<Option<Credentials>, AccountError> {
    let Some(Value::String(uri)) = resource(account, 0) else {
        return Ok(None);
    };
    let Some(authority) = uri.strip_prefix("coaps://") else {
        return Ok(None);
    };
    let opaque = |id| opaque(account, id);
    match resource(account, 2) {
        Some(Value::Integer(MODE_PSK)) => {
            let identity = opaque(3);
            Ok(Some(Credentials::Psk {
                identity: if identity.is_empty() {
                    endpoint.as_bytes().to_vec()
                } else {
                    identity
                },
                key: opaque(5),
            }))
        }
        Some(Value::Integer(MODE_CERTIFICATE)) => Ok(Some(Credentials::Certificate {
            certificate: CertificateConfig {
                chain: vec![opaque(3)],
                private_key: opaque(5),
                trust_anchors: vec![opaque(4)],
            },
            server_name: server_name(authority).to_owned(),
        })),
        Some(Value::Integer(MODE_RPK)) => Err(AccountError::RawPublicKeys),
        other => Err(AccountError::UnsupportedMode {
            mode: match other {
                Some(Value::Integer(mode)) => mode.to_string(),
                Some(v) => format!("{v:?}"),
                None => "none".to_owned(),
            },
        }),
    }
}

fn resource(instance: &Instance, id: u16) -> Option<&Value> {
    match instance.get(&ResourceId(id)) {
        Some(ResourceValue::Single(v)) => Some(v),
        _ => None,
    }
}

fn opaque(instance: &Instance, id: u16) -> Vec<u8> {
    match resource(instance, id) {
        Some(Value::Opaque(b)) => b.clone(),
        Some(Value::String(s)) => s.clone().into_bytes(),
        _ => Vec::new(),
    }
}

/// The host of a URI authority (`host:port`, `[v6]:port`, `host`, then maybe a path),
/// the name the server's certificate must carry (an IP address matches an IP address
/// subjectAltName).
fn server_name(authority: &str) -> &str {
    let authority = authority.split(['/', '?']).next().unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() && !host.contains(':') => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(uri: &str, mode: Option<i64>, identity: Value) -> Instance {
        let mut i = Instance::default();
        let mut put = |r: u16, v: Value| {
            i.insert(r.into(), ResourceValue::Single(v));
        };
        put(0, Value::String(uri.into()));
        if let Some(mode) = mode {
            put(2, Value::Integer(mode));
        }
        put(3, identity);
        put(4, Value::Opaque(b"ca".to_vec()));
        put(5, Value::Opaque(b"key".to_vec()));
        i
    }

    fn psk(identity: &[u8]) -> Option<Credentials> {
        Some(Credentials::Psk {
            identity: identity.to_vec(),
            key: b"key".to_vec(),
        })
    }

    #[test]
    fn psk_accounts() {
        let id = |v| account("coaps://127.0.0.1:5684", Some(MODE_PSK), v);
        assert_eq!(
            account_credentials(&id(Value::Opaque(b"id".to_vec())), "ep"),
            Ok(psk(b"id"))
        );
        assert_eq!(
            account_credentials(&id(Value::String("id".into())), "ep"),
            Ok(psk(b"id")),
            "a string identity"
        );
        assert_eq!(
            account_credentials(&id(Value::Opaque(Vec::new())), "ep"),
            Ok(psk(b"ep")),
            "an empty identity is the endpoint name"
        );
        let plain = account(
            "coap://127.0.0.1:5683",
            Some(MODE_PSK),
            Value::Opaque(vec![]),
        );
        assert_eq!(account_credentials(&plain, "ep"), Ok(None));
        assert_eq!(account_credentials(&Instance::default(), "ep"), Ok(None));
    }

    #[test]
    fn certificate_accounts() {
        let a = account(
            "coaps://127.0.0.1:5684",
            Some(MODE_CERTIFICATE),
            Value::Opaque(b"\x30\x01".to_vec()),
        );
        let Ok(Some(Credentials::Certificate {
            certificate,
            server_name: name,
        })) = account_credentials(&a, "ep")
        else {
            panic!("a certificate account")
        };
        assert_eq!(certificate.chain, [b"\x30\x01".to_vec()]);
        assert_eq!(certificate.private_key, b"key");
        assert_eq!(certificate.trust_anchors, [b"ca".to_vec()]);
        assert_eq!(name, "127.0.0.1");
        for (authority, name) in [
            ("127.0.0.1:5684", "127.0.0.1"),
            ("[::1]:5684", "::1"),
            ("lwm2m.example", "lwm2m.example"),
            ("lwm2m.example:5684/x", "lwm2m.example"),
        ] {
            assert_eq!(server_name(authority), name);
        }
    }

    #[test]
    fn other_modes_on_coaps_are_refused_with_the_reason() {
        let refused = |mode| {
            account_credentials(
                &account("coaps://127.0.0.1:5684", mode, Value::Opaque(vec![])),
                "ep",
            )
            .unwrap_err()
            .to_string()
        };
        assert!(refused(Some(MODE_RPK)).contains("RFC 7250"));
        assert!(refused(Some(3)).ends_with("not 3"), "{}", refused(Some(3)));
        assert!(refused(Some(4)).ends_with("not 4"));
        assert!(refused(None).ends_with("not none"));
    }
}
