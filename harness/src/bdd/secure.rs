//! CoAP over DTLS in the in-process backend (RFC 7252 §9; Core TS 1.1 §7.1): the LwM2M
//! Server's DTLS listener at `10.0.0.1:5684` and one DTLS client session per simulated
//! client and `coaps://` account. Real DTLS 1.2 handshakes and records
//! ([`lwm2m_dtls`]), in memory, on the backend's virtual clock.
//!
//! - **Server**: `serve`'s own composition ([`lwm2m_server::dtls::SecureServer`] with its
//!   admission gate) in front of the backend's LwM2M Server machine, set up by
//!   [`listener_options`]. PSK keys (`TLS_PSK_WITH_AES_128_CCM_8`) and identity owners come
//!   from a security store that the steps fill; certificates
//!   (`TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`) are checked against the run's test CA ([`pki`]),
//!   whose server certificate names [`SERVER_NAME`] and the listener's IP address. A
//!   Register (`POST /rd?ep=NAME`) over a session whose identity does not belong to NAME
//!   (the store's endpoint, or the certificate's common name, Core TS 1.1 §7.1.8), or an
//!   Update / De-register of another endpoint's registration, is answered 4.03 by that gate
//!   and never reaches the machine.
//! - **Client**: the fleet's links ([`lwm2m_simulator::link::Links`]): the credentials are
//!   those of the client's account toward the address the machine sends to, read again
//!   whenever its Security object changed (so what a Bootstrap Server wrote counts), as the
//!   fleet reads them ([`lwm2m_simulator::security`]): mode 0, PSK identity /0/x/3 and key /0/x/5; mode 2,
//!   own certificate /0/x/3, the server's trust anchor /0/x/4 (the CA certificate: RFC 6698
//!   usage 2, trust anchor assertion) and private key /0/x/5, the server certificate
//!   matched against the URI's host. CoAP waits while the handshake
//!   runs; a failed or closed session is replaced when the machine next sends (its CoAP
//!   retransmission).
//!
//! The Bootstrap Server has a listener of its own at `10.0.0.2:5684` (the same composition,
//! its own security store; a Bootstrap-Request under another endpoint's identity gets 4.03).
//! Unlike `serve`, whose Bootstrap Server reads its PSK keys from the bootstrap
//! configurations, that store is filled by the steps, so that a case can give the client a
//! Bootstrap-Server account the configuration does not mention.
//!
//! Not supported: raw public keys (mode 1, RFC 7250: not in the rtc-dtls family),
//! Connection ID (RFC 9146).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use lwm2m_dtls::pki::{Purpose, TestCa, Validity};
use lwm2m_dtls::record::RecordBytes;
use lwm2m_dtls::{CertificateConfig, DtlsError, KeyLog, SessionSecrets};
use lwm2m_proto::client::ObjectTree;
use lwm2m_server::store::SecurityStore;
use lwm2m_server::{Direction, DtlsOptions, PacketTap, Role, SecurityEvent};
use lwm2m_simulator::link::{DtlsLink, Forgotten, LinkOptions, Servers, credentials_for};

use super::backend::{DtlsHappening, DtlsSide, ServerRole};
use crate::record::capture::Sealing;

/// The LwM2M Server's DTLS listener on the in-memory link (the CoAPS default port).
pub const SECURE_SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 5684);

/// The Bootstrap Server's DTLS listener on the in-memory link.
pub const SECURE_BOOTSTRAP: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 5684);

/// The DTLS address of our server `role`.
pub fn secure_address(role: ServerRole) -> SocketAddr {
    match role {
        ServerRole::Lwm2m => SECURE_SERVER,
        ServerRole::Bootstrap => SECURE_BOOTSTRAP,
    }
}

/// Which of our servers listens for DTLS at `addr` (the LwM2M Server for any other).
pub fn role_of(addr: SocketAddr) -> ServerRole {
    if addr == SECURE_BOOTSTRAP {
        ServerRole::Bootstrap
    } else {
        ServerRole::Lwm2m
    }
}

/// The DNS name in the server's certificate (the name of ETS configuration C.17).
pub const SERVER_NAME: &str = "server.example.com";

/// Why a case with raw public keys (Security mode 1) is not applicable.
pub use lwm2m_simulator::security::NO_RAW_PUBLIC_KEYS;

/// The run's certificate authority and the server certificate it issued.
#[derive(Debug)]
pub struct Pki {
    /// The test CA: the trust anchor of both sides.
    pub ca: TestCa,
    /// Another CA no one trusts, for certificates that must be refused.
    pub stranger: TestCa,
    /// The servers' certificate (for [`SERVER_NAME`], `10.0.0.1` and `10.0.0.2`),
    /// trusting [`Pki::ca`] for client certificates.
    pub server: CertificateConfig,
}

/// The run's PKI, made at first use (fresh P-256 keys: certificates differ from run to run,
/// nothing else does).
pub fn pki() -> anyhow::Result<&'static Pki> {
    static PKI: OnceLock<Result<Pki, String>> = OnceLock::new();
    let made = PKI.get_or_init(|| {
        let make = || -> Result<Pki, DtlsError> {
            let ca = TestCa::new("lwm2m-harness test CA")?;
            let stranger = TestCa::new("an untrusted CA")?;
            let (server, bootstrap) = (
                SECURE_SERVER.ip().to_string(),
                SECURE_BOOTSTRAP.ip().to_string(),
            );
            let issued = ca.issue(
                "lwm2m-harness server",
                &[SERVER_NAME, &server, &bootstrap],
                Purpose::Server,
                Validity::Current,
            )?;
            let server = ca.config(issued);
            Ok(Pki {
                ca,
                stranger,
                server,
            })
        };
        make().map_err(|e| e.to_string())
    });
    made.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// How the simulated clients' DTLS links are made ([`lwm2m_simulator::link`], the fleet's):
/// session secrets reach the log through our listeners' key log; each record's plaintext
/// is kept, for the exchange log ([`outgoing`]).
pub const LINKS: LinkOptions = LinkOptions {
    key_log: None,
    record_plaintext: true,
};

/// Whether the client whose machine has `tree` and sends to `servers` reaches `server` over
/// DTLS:
/// its account toward `server` ([`lwm2m_simulator::link::account_toward`]) is
/// `coaps://` (usable or not: nothing goes out in clear either way).
pub fn is_secure(tree: &ObjectTree, servers: &Servers<'_>, server: SocketAddr) -> bool {
    !matches!(credentials_for(tree, servers, server), Ok(None))
}

/// What `link`'s session has for the wire, each datagram with the CoAP message of its
/// first application record (the links keep what the client just encrypted, [`LINKS`]):
/// each datagram takes one plaintext per application record it holds, in order, as the
/// run's capture pairs them ([`Sealing`]).
pub fn outgoing(link: &mut DtlsLink) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut plain = link.take_encrypted().into_iter();
    let Some(session) = link.session.as_mut() else {
        return Vec::new();
    };
    std::iter::from_fn(|| session.poll_transmit())
        .map(|datagram| {
            let records = RecordBytes::of_datagram(&datagram).application_records;
            let records = usize::try_from(records).unwrap_or(usize::MAX);
            let mut carried = plain.by_ref().take(records);
            let inner = carried.next();
            carried.for_each(drop);
            (datagram, inner)
        })
        .collect()
}

/// What a client's DTLS sessions became after an event of its machine, for the log.
pub fn forgotten_words(forgotten: Forgotten) -> &'static str {
    match forgotten {
        Forgotten::Rebooted => "reboots and forgets its DTLS sessions",
        Forgotten::RequestFailed => "request failed, DTLS sessions dropped",
    }
}

/// The DTLS listener of our server `role` as `serve` starts it ([`DtlsOptions`]): PSK keys
/// and identity owners from `security`, the run's server certificate trusting the run's CA
/// for client certificates, the session secrets to `keys`.
pub fn listener_options(
    role: ServerRole,
    security: Arc<dyn SecurityStore>,
    keys: Arc<KeyLines>,
) -> anyhow::Result<DtlsOptions> {
    let mut options = DtlsOptions::new(secure_address(role), security);
    options.certificate = Some(pki()?.server.clone());
    options.key_log = Some(keys);
    Ok(options)
}

/// The NSS key log lines of the sessions our listeners established, until taken.
#[derive(Debug, Default)]
pub struct KeyLines(Mutex<Vec<String>>);

impl KeyLines {
    /// The lines logged since the last call.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl KeyLog for KeyLines {
    fn log(&self, secrets: &SessionSecrets) {
        let mut lines = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        lines.push(secrets.key_log_line());
    }
}

/// The plaintext a listener encrypted, until the record that carries it leaves: a
/// listener's packet tap ([`PacketTap::plaintext`]) tells it before the record goes out
/// ([`Sealing`], as the run's capture pairs them), so the exchange log can show the CoAP
/// inside each record it sends.
#[derive(Debug, Default)]
pub struct Sealed(Mutex<Sealing>);

impl Sealed {
    /// The CoAP message of the first application record of `datagram` from the listener at
    /// `local` to `peer` (the plaintext of every application record in it is consumed).
    pub fn take(&self, local: SocketAddr, peer: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
        let records = RecordBytes::of_datagram(datagram).application_records;
        let records = usize::try_from(records).unwrap_or(usize::MAX);
        let mut sealing = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let first = sealing.take(local, peer, records).into_iter().next()?;
        Some(first.0.into_vec())
    }
}

impl PacketTap for Sealed {
    fn datagram(&self, _: Direction, _: SocketAddr, _: SocketAddr, _: &[u8]) {}

    fn plaintext(
        &self,
        direction: Direction,
        local: SocketAddr,
        peer: SocketAddr,
        identity: &str,
        bytes: &[u8],
    ) {
        if direction == Direction::Out {
            let mut sealing = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            sealing.push(local, peer, bytes, identity);
        }
    }
}

/// What our server's DTLS listener reported (`serve`'s [`SecurityEvent`]) as the steps
/// read it; `client` names the client at an address. `None` for what the steps do not
/// follow (a plain Register refused for its credentials).
pub fn dtls_happening(
    role: Role,
    event: &SecurityEvent,
    client: impl Fn(SocketAddr) -> String,
) -> Option<DtlsHappening> {
    let server = match role {
        Role::Bootstrap => ServerRole::Bootstrap,
        _ => ServerRole::Lwm2m,
    };
    Some(match event {
        SecurityEvent::Established { peer, identity } => DtlsHappening::Established {
            endpoint: client(*peer),
            server,
            identity: identity.clone(),
        },
        SecurityEvent::HandshakeFailed {
            peer,
            identity,
            reason,
        } => DtlsHappening::HandshakeFailed {
            endpoint: client(*peer),
            server,
            side: DtlsSide::Server,
            identity: identity.clone(),
            reason: reason.clone(),
        },
        SecurityEvent::IdentityMismatch {
            peer,
            identity,
            endpoint,
            owner,
        } => DtlsHappening::Refused {
            client: client(*peer),
            server,
            identity: identity.clone(),
            endpoint: endpoint.clone(),
            owner: owner.clone(),
        },
        SecurityEvent::Closed { peer, reason, .. } => DtlsHappening::Closed {
            endpoint: client(*peer),
            server,
            reason: reason.clone(),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{SecureAccount, write_account};
    use lwm2m_dtls::{ClientConfig, Identity};
    use lwm2m_proto::{Instance, Lwm2mPath};
    use lwm2m_proto::{ObjectId, ResourceId, ResourceValue, Value};

    /// A client configured with neither server: its Security object says where it goes.
    const SERVERS: Servers<'static> = Servers {
        endpoint: "dev",
        server: None,
        bootstrap_server: None,
    };

    #[test]
    fn an_account_is_secure_where_its_coaps_uri_points() {
        let with_uri = |uri: &str| {
            let mut tree = ObjectTree::new();
            tree.add_unknown_object(ObjectId(0));
            let mut account = Instance::default();
            account.insert(
                ResourceId(0),
                ResourceValue::Single(Value::String(uri.into())),
            );
            tree.put_instance(ObjectId(0), 0.into(), account);
            tree
        };
        let is_secure = |tree: &ObjectTree, server| is_secure(tree, &SERVERS, server);
        assert!(is_secure(&with_uri("coaps://10.0.0.1:5684"), SECURE_SERVER));
        assert!(is_secure(&with_uri("coaps://10.0.0.1/x"), SECURE_SERVER));
        assert!(!is_secure(
            &with_uri("coaps://10.0.0.1:5684"),
            SECURE_BOOTSTRAP
        ));
        assert!(!is_secure(&with_uri("coap://10.0.0.1:5683"), SECURE_SERVER));
        assert!(!is_secure(
            &with_uri("coaps://server.example.com"),
            SECURE_SERVER
        ));
    }

    #[test]
    fn certificate_accounts_compile_and_raw_public_keys_say_why_not() {
        let pki = pki().unwrap();
        let issued = pki
            .ca
            .issue("dev", &[], Purpose::Client, Validity::Current)
            .unwrap();
        let mut tree = ObjectTree::new();
        tree.add_unknown_object(ObjectId(0));
        let mut account = Instance::default();
        account.insert(ResourceId(1), ResourceValue::Single(Value::Boolean(false)));
        tree.put_instance(ObjectId(0), 0.into(), account);
        let certificate = SecureAccount::Certificate {
            certificate: issued.certificate,
            private_key: issued.private_key,
            trust_anchor: pki.ca.certificate().to_vec(),
        };
        write_account(&mut tree, ServerRole::Lwm2m, SECURE_SERVER, &certificate).unwrap();
        assert!(
            is_secure(&tree, &SERVERS, SECURE_SERVER)
                && !is_secure(&tree, &SERVERS, SECURE_BOOTSTRAP)
        );
        let credentials = credentials_for(&tree, &SERVERS, SECURE_SERVER)
            .unwrap()
            .unwrap();
        let config = ClientConfig::new(&credentials).unwrap();
        assert_eq!(config.identity(), &Identity::Certificate("dev".into()));
        assert!(
            write_account(
                &mut tree,
                ServerRole::Bootstrap,
                SECURE_BOOTSTRAP,
                &certificate
            )
            .is_err()
        );
        let path = Lwm2mPath::Resource(ObjectId(0), 0.into(), ResourceId(2));
        let mut rpk = tree.instance(ObjectId(0), 0.into()).unwrap().clone();
        rpk.insert(
            ResourceId(2),
            ResourceValue::Single(Value::Integer(lwm2m_simulator::security::MODE_RPK)),
        );
        tree.put_instance(ObjectId(0), 0.into(), rpk);
        assert_eq!(tree.get(&path), Some(&Value::Integer(1)));
        let refused = credentials_for(&tree, &SERVERS, SECURE_SERVER).unwrap_err();
        assert_eq!(
            refused,
            lwm2m_simulator::security::AccountError::RawPublicKeys
        );
    }
}
