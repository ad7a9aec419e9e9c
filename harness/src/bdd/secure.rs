//! CoAP over DTLS in the in-process backend (RFC 7252 §9; Core TS 1.1 §7.1): the LwM2M
//! Server's DTLS listener at `10.0.0.1:5684` and one DTLS client session per simulated
//! client and `coaps://` account. Real DTLS 1.2 handshakes and records
//! ([`lwm2m_dtls`]), in memory, on the backend's virtual clock.
//!
//! - **Server** ([`SecureListener`]): a [`DtlsServer`] in front of the backend's LwM2M
//!   Server machine. PSK keys (`TLS_PSK_WITH_AES_128_CCM_8`) come from a table of identity →
//!   (endpoint, key) that the steps fill; certificates (`TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`)
//!   are checked against the run's test CA ([`pki`]), whose server certificate names
//!   [`SERVER_NAME`] and the listener's IP address. A Register (`POST /rd?ep=NAME`) over a
//!   session whose identity does not belong to NAME (the PSK table's endpoint, or the
//!   certificate's common name, Core TS 1.1 §7.1.8), or an Update / De-register of another
//!   endpoint's registration, is answered 4.03 here and never reaches the machine.
//! - **Client** ([`ClientLink`]): the credentials are read from the client's Security
//!   instance whose URI is `coaps://` at the address the machine sends to, when a session
//!   starts (so what a Bootstrap Server wrote counts), read as the fleet reads them
//!   ([`lwm2m_simulator::security`]): mode 0, PSK identity /0/x/3 and key /0/x/5; mode 2,
//!   own certificate /0/x/3, the server's trust anchor /0/x/4 (the CA certificate: RFC 6698
//!   usage 2, trust anchor assertion) and private key /0/x/5, the server certificate
//!   matched against the URI's host. CoAP waits while the handshake
//!   runs; a failed or closed session is replaced when the machine next sends (its CoAP
//!   retransmission).
//!
//! The Bootstrap Server has a listener of its own at `10.0.0.2:5684` (the same kind, its
//! own PSK table; a Bootstrap-Request under another endpoint's identity gets 4.03).
//!
//! Not supported: raw public keys (mode 1, RFC 7250: not in the rtc-dtls family),
//! Connection ID (RFC 9146).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use lwm2m_dtls::pki::{Purpose, TestCa, Validity};
use lwm2m_dtls::{
    CertificateConfig, ClientConfig, DtlsClient, DtlsError, DtlsServer, Identity, PskStore,
    ServerConfig,
};
use lwm2m_proto::admission;
use lwm2m_proto::client::{ClientEvent, ObjectTree, parse_coap_uri};
use lwm2m_proto::coap::{Packet, message};
use lwm2m_proto::{Instance, InstanceId, ObjectId, ResourceId, ResourceValue, Value};
use lwm2m_simulator::security::{MODE_CERTIFICATE, MODE_PSK, account_credentials};

use super::backend::ServerRole;

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

/// CoAP datagrams a client holds while its handshake runs (the oldest go first beyond it).
const PENDING: usize = 16;

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

/// What a client's server account authenticates with (written into its Security
/// instance by [`write_account`]).
#[derive(Clone, PartialEq, Eq)]
pub enum SecureAccount {
    /// Mode 0: PSK identity and key.
    Psk {
        /// /0/x/3.
        identity: Vec<u8>,
        /// /0/x/5.
        key: Vec<u8>,
    },
    /// Mode 2: own certificate and key, and the trust anchor for the server's.
    Certificate {
        /// /0/x/3, DER.
        certificate: Vec<u8>,
        /// /0/x/5, PKCS#8 DER.
        private_key: Vec<u8>,
        /// /0/x/4, DER.
        trust_anchor: Vec<u8>,
    },
}

impl std::fmt::Debug for SecureAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Psk { identity, .. } => write!(
                f,
                "PSK identity {:?}",
                String::from_utf8_lossy(identity).as_ref()
            ),
            Self::Certificate { certificate, .. } => write!(
                f,
                "certificate of {:?}",
                lwm2m_dtls::pki::common_name(certificate).unwrap_or_default()
            ),
        }
    }
}

/// Points the client's account of `role` (the first Security instance whose Bootstrap-Server
/// flag /0/x/1 says so) at `server` over `coaps://` with `account`'s credentials; returns
/// that instance's id.
pub fn write_account(
    tree: &mut ObjectTree,
    role: ServerRole,
    server: SocketAddr,
    account: &SecureAccount,
) -> anyhow::Result<InstanceId> {
    let security = ObjectId(0);
    let (id, mut instance) = tree
        .instance_ids(security)
        .into_iter()
        .filter_map(|i| tree.instance(security, i).map(|inst| (i, inst.clone())))
        .find(|(_, inst)| {
            let bootstrap = matches!(
                inst.get(&ResourceId(1)),
                Some(ResourceValue::Single(Value::Boolean(true)))
            );
            bootstrap == (role == ServerRole::Bootstrap)
        })
        .ok_or_else(|| anyhow::anyhow!("the client has no {role} account to secure"))?;
    let (mode, identity, public_key, secret) = match account {
        SecureAccount::Psk { identity, key } => (MODE_PSK, identity, &Vec::new(), key),
        SecureAccount::Certificate {
            certificate,
            private_key,
            trust_anchor,
        } => (MODE_CERTIFICATE, certificate, trust_anchor, private_key),
    };
    let mut put = |r: u16, v: Value| {
        instance.insert(ResourceId(r), ResourceValue::Single(v));
    };
    put(0, Value::String(format!("coaps://{server}")));
    put(2, Value::Integer(mode));
    put(3, Value::Opaque(identity.clone()));
    put(4, Value::Opaque(public_key.clone()));
    put(5, Value::Opaque(secret.clone()));
    tree.put_instance(security, id, instance);
    Ok(id)
}

/// The Security instance whose URI is `coaps://` at `server` (IP literals only).
fn coaps_account(tree: &ObjectTree, server: SocketAddr) -> Option<&Instance> {
    let security = ObjectId(0);
    tree.instance_ids(security).into_iter().find_map(|i| {
        let inst = tree.instance(security, i)?;
        let Some(ResourceValue::Single(Value::String(uri))) = inst.get(&ResourceId(0)) else {
            return None;
        };
        let uri = parse_coap_uri(uri).filter(|u| u.secure)?;
        (uri.addr == server).then_some(inst)
    })
}

/// Whether the client reaches `server` over DTLS (its Security object has a `coaps://`
/// account there).
pub fn is_secure(tree: &ObjectTree, server: SocketAddr) -> bool {
    coaps_account(tree, server).is_some()
}

/// The DTLS configuration of the client's `coaps://` account at `server`
/// ([`account_credentials`]): `None` when the tree has none (the client talks plain CoAP
/// to it), `Err` with the reason when the account cannot be used.
pub fn client_config(
    tree: &ObjectTree,
    endpoint: &str,
    server: SocketAddr,
) -> Option<Result<ClientConfig, String>> {
    let instance = coaps_account(tree, server)?;
    Some(match account_credentials(instance, endpoint) {
        Ok(Some(credentials)) => ClientConfig::new(&credentials).map_err(|e| e.to_string()),
        Ok(None) => Err("the account is not coaps://".to_owned()),
        Err(reason) => Err(reason),
    })
}

/// A PSK the server knows: the endpoint it belongs to, and the key.
type PskEntry = (String, Vec<u8>);

/// The PSK keys the in-process LwM2M Server knows, by identity.
#[derive(Debug, Clone, Default)]
struct PskTable(Arc<RwLock<HashMap<Vec<u8>, PskEntry>>>);

impl PskTable {
    fn endpoint(&self, identity: &[u8]) -> Option<String> {
        let table = self.0.read().unwrap_or_else(PoisonError::into_inner);
        table.get(identity).map(|(ep, _)| ep.clone())
    }
}

impl PskStore for PskTable {
    fn psk(&self, identity: &[u8]) -> Option<Vec<u8>> {
        let table = self.0.read().unwrap_or_else(PoisonError::into_inner);
        table.get(identity).map(|(_, key)| key.clone())
    }
}

/// A session router accepting PSK identities of `psk` and certificates of the run's CA.
fn router(psk: &PskTable) -> anyhow::Result<DtlsServer> {
    let config = ServerConfig {
        psk_store: Some(Arc::new(psk.clone())),
        certificate: Some(pki()?.server.clone()),
        ..ServerConfig::default()
    };
    Ok(DtlsServer::new(config)?)
}

/// The LwM2M Server's DTLS listener (see the module documentation).
pub struct SecureListener {
    /// The session router.
    pub dtls: DtlsServer,
    psk: PskTable,
    /// Peers whose last datagram to the LwM2M Server came through a DTLS session, with the
    /// session's identity: the machine's answers to them go back through it.
    peers: HashMap<SocketAddr, Identity>,
}

impl std::fmt::Debug for SecureListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureListener")
            .field("sessions", &self.dtls.session_count())
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl SecureListener {
    /// A listener accepting PSK identities of its table and certificates of the run's CA.
    pub fn new() -> anyhow::Result<Self> {
        let psk = PskTable::default();
        Ok(Self {
            dtls: router(&psk)?,
            psk,
            peers: HashMap::new(),
        })
    }

    /// Forgets every session silently, as a restarted server does: the PSK table stays,
    /// records of the old sessions are dropped as strays.
    pub fn forget_sessions(&mut self) -> anyhow::Result<()> {
        self.dtls = router(&self.psk)?;
        self.peers.clear();
        Ok(())
    }

    /// The server knows PSK `identity` with `key`, belonging to `endpoint`.
    pub fn add_psk(&self, identity: &[u8], key: &[u8], endpoint: &str) {
        let mut table = self.psk.0.write().unwrap_or_else(PoisonError::into_inner);
        table.insert(identity.to_vec(), (endpoint.to_owned(), key.to_vec()));
    }

    /// A datagram from `peer` came through its session as `identity`.
    pub fn note_secure(&mut self, peer: SocketAddr, identity: Identity) {
        self.peers.insert(peer, identity);
    }

    /// A plain datagram from `peer`, or its session ended: answers go out in the clear again
    /// only after a plain request.
    pub fn forget(&mut self, peer: SocketAddr) -> Option<Identity> {
        self.peers.remove(&peer)
    }

    /// The identity of the session the server's last datagram from `peer` came through.
    pub fn identity_of(&self, peer: SocketAddr) -> Option<&Identity> {
        self.peers.get(&peer)
    }

    /// The endpoint `identity` belongs to: the PSK table's, or a certificate's common name.
    pub fn owner(&self, identity: &Identity) -> Option<String> {
        match identity {
            Identity::Psk(id) => self.psk.endpoint(id),
            Identity::Certificate(cn) => Some(cn.to_string()),
            _ => None,
        }
    }

    /// `serve`'s decision ([`admission::check_session`]) for `role`'s listener: when
    /// `payload` is a Register (`POST /rd?ep=`) or, for the Bootstrap Server, a
    /// Bootstrap-Request (`POST /bs?ep=`) under an endpoint name `identity` does not belong
    /// to, or an Update / De-register of such an endpoint's registration (`location` maps a
    /// registration id to its endpoint): the endpoint it claimed, its owner, and the 4.03
    /// answer (piggybacked on a CON, RFC 7252 §5.2.1) with a diagnostic payload.
    pub fn refusal(
        &self,
        role: ServerRole,
        identity: &Identity,
        payload: &[u8],
        location: impl Fn(&str) -> Option<String>,
    ) -> Option<Refusal> {
        let request = message::decode(payload).ok()?;
        // The gate of `serve`'s DTLS listeners, with this listener's PSK table as owner.
        let role = match role {
            ServerRole::Lwm2m => admission::GateRole::Lwm2mServer,
            ServerRole::Bootstrap => admission::GateRole::BootstrapServer,
        };
        let refused = admission::check_session(
            role,
            &request,
            &identity.to_string(),
            || self.owner(identity),
            location,
        )?;
        Some(Refusal {
            answer: refused.answer,
            endpoint: refused.endpoint,
            owner: refused.owner,
        })
    }
}

/// A request [`SecureListener::refusal`] refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The endpoint the request claimed.
    pub endpoint: String,
    /// The endpoint the session's identity belongs to, if any.
    pub owner: Option<String>,
    /// The 4.03 answer.
    pub answer: Packet,
}

/// One simulated client's DTLS association with a `coaps://` server.
#[derive(Debug)]
pub struct ClientLink {
    /// The server, as the client machine addresses it.
    pub server: SocketAddr,
    /// The current session (handshaking or established), if any.
    pub session: Option<DtlsClient>,
    /// CoAP datagrams waiting for the handshake.
    pending: Vec<Vec<u8>>,
    /// The address the session's records leave from (its first datagram's).
    bound: Option<SocketAddr>,
}

impl ClientLink {
    /// A link to `server`, without a session yet.
    pub fn new(server: SocketAddr) -> Self {
        Self {
            server,
            session: None,
            pending: Vec::new(),
            bound: None,
        }
    }

    /// Hands a CoAP datagram to the session: `Ok(true)` when it was encrypted at once,
    /// `Ok(false)` when it waits for the handshake (started here with `config()` if no
    /// session is alive). `Err` when no session could start.
    pub fn send(
        &mut self,
        now: Instant,
        bytes: Vec<u8>,
        config: impl FnOnce() -> Result<ClientConfig, String>,
    ) -> Result<bool, String> {
        if self.session.as_ref().is_none_or(DtlsClient::is_finished) {
            let config = config()?;
            let session =
                DtlsClient::connect(now, self.server, &config).map_err(|e| e.to_string())?;
            self.session = Some(session);
            self.pending.clear();
            self.bound = None;
        }
        match self.session.as_mut() {
            Some(s) if s.is_established() => {
                s.send(now, &bytes).map_err(|e| e.to_string())?;
                Ok(true)
            }
            _ => {
                if self.pending.len() >= PENDING {
                    self.pending.remove(0);
                }
                self.pending.push(bytes);
                Ok(false)
            }
        }
    }

    /// The handshake completed: what waited, to be encrypted in order.
    pub fn take_pending(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.pending)
    }

    /// The session is over (failure, close): CoAP that waited for it is dropped.
    pub fn reset(&mut self) {
        self.session = None;
        self.pending.clear();
        self.bound = None;
    }

    /// A record of the session leaves from `from`. When the session was made from another
    /// address (a NAT rebinding), the session is given up (the next datagram starts a new
    /// one) and the old address returned.
    pub fn bind(&mut self, from: SocketAddr) -> Option<SocketAddr> {
        match self.bound {
            None => {
                self.bound = Some(from);
                None
            }
            Some(old) if old != from => {
                self.reset();
                Some(old)
            }
            Some(_) => None,
        }
    }
}

/// What a client's DTLS sessions become after `event` of its machine: a rebooted device
/// has forgotten them (it handshakes again); a Bootstrap-Request, Register or Update that
/// failed over an established session drops them (the server may have lost the session
/// and drops our records; the next datagram, the request's retransmission, handshakes
/// again, as devices do). The words for the log when the links were reset.
pub fn after_client_event(event: &ClientEvent, links: &mut [ClientLink]) -> Option<&'static str> {
    let why = match event {
        ClientEvent::Rebooting | ClientEvent::FactoryReset
            if links.iter().any(|l| l.session.is_some()) =>
        {
            "reboots and forgets its DTLS sessions"
        }
        ClientEvent::Failed {
            step: "bootstrap" | "register" | "update",
            ..
        } if links
            .iter()
            .any(|l| l.session.as_ref().is_some_and(DtlsClient::is_established)) =>
        {
            "request failed, DTLS sessions dropped"
        }
        _ => return None,
    };
    links.iter_mut().for_each(ClientLink::reset);
    Some(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lwm2m_proto::Lwm2mPath;
    use lwm2m_proto::coap::MessageType;

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
    fn a_session_is_bound_to_the_address_of_its_first_record() {
        let mut link = ClientLink::new(SECURE_SERVER);
        let (a, b): (SocketAddr, SocketAddr) = (
            "100.0.0.1:4000".parse().unwrap(),
            "100.0.0.1:4001".parse().unwrap(),
        );
        let config = || ClientConfig::psk(b"id", &[7; 16]).map_err(|e| e.to_string());
        assert_eq!(link.send(Instant::now(), vec![1], config), Ok(false));
        assert_eq!(link.bind(a), None);
        assert_eq!(link.bind(a), None);
        // A NAT rebinding: the session is given up, what waited with it too.
        assert_eq!(link.bind(b), Some(a));
        assert!(link.session.is_none() && link.take_pending().is_empty());
        assert_eq!(link.bind(b), None);
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
        assert!(is_secure(&tree, SECURE_SERVER) && !is_secure(&tree, SECURE_BOOTSTRAP));
        let config = client_config(&tree, "dev", SECURE_SERVER).unwrap().unwrap();
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
        let refused = client_config(&tree, "dev", SECURE_SERVER)
            .unwrap()
            .unwrap_err();
        assert!(refused.contains("RFC 7250"), "{refused}");
    }

    #[test]
    fn a_register_under_a_foreign_identity_is_refused() {
        use lwm2m_proto::coap::RequestType;
        let listener = SecureListener::new().unwrap();
        listener.add_psk(b"id-1", &[1; 16], "dev-1");
        let mut p = message::request(RequestType::Post, "/rd");
        message::add_query(&mut p, "ep=dev-2");
        p.header.message_id = 7;
        let bytes = p.to_bytes().unwrap();
        let id = Identity::Psk(Arc::from(&b"id-1"[..]));
        let refused = listener
            .refusal(ServerRole::Lwm2m, &id, &bytes, |_| None)
            .unwrap();
        assert_eq!(refused.endpoint, "dev-2");
        assert_eq!(refused.owner.as_deref(), Some("dev-1"));
        assert_eq!(refused.answer.header.message_id, 7);
        assert_eq!(
            refused.answer.header.get_type(),
            MessageType::Acknowledgement
        );
        let mut own = message::request(RequestType::Post, "/rd");
        message::add_query(&mut own, "ep=dev-1");
        assert!(
            listener
                .refusal(ServerRole::Lwm2m, &id, &own.to_bytes().unwrap(), |_| None)
                .is_none()
        );
        let mut update = message::request(RequestType::Post, "/rd/abc");
        update.header.message_id = 8;
        let update = update.to_bytes().unwrap();
        let foreign = |id: &str| (id == "abc").then(|| "dev-2".to_owned());
        assert!(
            listener
                .refusal(ServerRole::Lwm2m, &id, &update, foreign)
                .is_some()
        );
        assert!(
            listener
                .refusal(ServerRole::Lwm2m, &id, b"\xff\x00", foreign)
                .is_none()
        );
    }
}
