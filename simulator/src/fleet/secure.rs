//! CoAP over DTLS for fleet clients (RFC 7252 §9, Core TS 1.1 §7.1): each server a client
//! talks to over `coaps://` gets a [`DtlsLink`] of its own, with the credentials of that
//! server's account in the client's *current* object tree: the bootstrap-server Security
//! instance (/0/x/1 true) for [`ClientConfig::bootstrap_server`], the LwM2M Server account
//! (the first other instance with a URI) for the server the client registers with. An
//! account is Security Mode 0 (PSK, /0/x/2) with identity /0/x/3 and key /0/x/5 (an empty
//! identity stands for the endpoint name), or Security Mode 2 (certificate,
//! `TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`) with the client's certificate (DER) in /0/x/3, its
//! PKCS#8 private key (DER) in /0/x/5 and the certificate its server's chain must lead to
//! (DER, a trust anchor) in /0/x/4; the server's certificate must name the URI's host (an
//! IP address subjectAltName for `coaps://127.0.0.1:…`). The two accounts carry different credentials,
//! as the specification requires, and the Bootstrap Server replaces the LwM2M Server's
//! during bootstrap: the link toward a server is checked against its account on every
//! datagram, and rebuilt when the account's credentials changed (bootstrap, factory reset)
//! or dropped when the account is no longer `coaps://` PSK.
//!
//! Sessions start when the client first sends to the server and again whenever the old
//! one is gone: handshake failure, close, reboot (the device forgets its session), or a
//! NAT rebinding. Without Connection ID (RFC 9146) a record from a new address is not
//! recognised by the server, so after a rebinding the datagram in flight is lost and the
//! next one (the CoAP retransmission) opens a new handshake from the new address. After
//! Bootstrap-Finish the client closes its session with the Bootstrap Server
//! (close_notify), as devices do.
//!
//! Not supported: raw public keys (mode 1, not in the rtc-dtls family) and Certificate
//! Usage (/0/x/15): /0/x/4 is always a trust anchor. Such accounts get no link, and their
//! datagrams go out as plain CoAP.
//!
//! [`ClientConfig::bootstrap_server`]: lwm2m_proto::client::ClientConfig::bootstrap_server

use std::net::SocketAddr;
use std::time::Instant;

use lwm2m_dtls::{CertificateConfig, ClientConfig, Credentials, DtlsClient, DtlsError};
use lwm2m_proto::client::{ClientConfig as MachineConfig, ObjectTree, parse_coap_uri};
use lwm2m_proto::{InstanceId, Lwm2mPath, ObjectId, Value};

/// The Security object (Core TS 1.1 Appendix E.1).
const SECURITY: ObjectId = ObjectId(0);
/// Security Mode 0: pre-shared key (/0/x/2).
const MODE_PSK: i64 = 0;
/// Security Mode 2: certificate (/0/x/2).
const MODE_CERTIFICATE: i64 = 2;
/// CoAP datagrams held while a handshake runs (the oldest go first beyond it).
const PENDING: usize = 16;

/// One client's DTLS association with one server.
pub(super) struct DtlsLink {
    /// The server, as the client machine addresses it.
    pub(super) server: SocketAddr,
    /// What the link was built from, to notice when the account changes.
    credentials: Credentials,
    config: ClientConfig,
    /// The current session, if any (handshaking or established).
    pub(super) session: Option<DtlsClient>,
    /// CoAP datagrams waiting for the handshake to complete.
    pending: Vec<Vec<u8>>,
    /// The session's deadline as pushed on the driver's heap.
    pub(super) timer: Option<Instant>,
}

impl std::fmt::Debug for DtlsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsLink")
            .field("server", &self.server)
            .field("credentials", &self.credentials)
            .field("session", &self.session)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// Where a client machine sends, from its [`MachineConfig`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Servers<'a> {
    /// The endpoint name (the PSK identity of accounts with an empty one).
    pub(super) endpoint: &'a str,
    /// [`MachineConfig::server`].
    pub(super) server: Option<SocketAddr>,
    /// [`MachineConfig::bootstrap_server`].
    pub(super) bootstrap_server: Option<SocketAddr>,
}

impl<'a> From<&'a MachineConfig> for Servers<'a> {
    fn from(c: &'a MachineConfig) -> Self {
        Self {
            endpoint: &c.endpoint,
            server: c.server,
            bootstrap_server: c.bootstrap_server,
        }
    }
}

/// The credentials of the account the client machine uses toward `peer`, if it is
/// `coaps://` in PSK mode: the bootstrap-server account when `peer` is the configured
/// Bootstrap Server, else the LwM2M Server account when `peer` is its URI's address or
/// the configured server. `None`: plain CoAP.
pub(super) fn credentials_for(
    tree: &ObjectTree,
    config: &Servers<'_>,
    peer: SocketAddr,
) -> Option<Credentials> {
    let get = |iid, rid: u16| tree.get(&Lwm2mPath::Resource(SECURITY, iid, rid.into()));
    let is_bootstrap = |iid| get(iid, 1) == Some(&Value::Boolean(true));
    let uri = |iid| match get(iid, 0) {
        Some(Value::String(uri)) if !uri.is_empty() => Some(uri.as_str()),
        _ => None,
    };
    let ids = tree.instance_ids(SECURITY);
    let account: InstanceId = if config.bootstrap_server == Some(peer) {
        ids.into_iter().find(|i| is_bootstrap(*i))?
    } else {
        // The machine's rule: the first non-bootstrap instance with a URI.
        let iid = ids
            .into_iter()
            .find(|i| !is_bootstrap(*i) && uri(*i).is_some())?;
        // Where the machine sends for this account (its own URI parser).
        let addr = parse_coap_uri(uri(iid)?)
            .filter(|u| u.secure)
            .map(|u| u.addr);
        if addr != Some(peer) && config.server != Some(peer) {
            return None;
        }
        iid
    };
    let host = uri(account)?.strip_prefix("coaps://")?;
    let opaque = |rid| match get(account, rid) {
        Some(Value::Opaque(b)) => b.clone(),
        _ => Vec::new(),
    };
    match get(account, 2) {
        Some(Value::Integer(MODE_PSK)) => {
            let identity = opaque(3);
            Some(Credentials::Psk {
                identity: if identity.is_empty() {
                    config.endpoint.as_bytes().to_vec()
                } else {
                    identity
                },
                key: opaque(5),
            })
        }
        // Empty resources compile to no configuration: the link then fails, counted, and
        // nothing goes out in clear.
        Some(Value::Integer(MODE_CERTIFICATE)) => Some(Credentials::Certificate {
            certificate: CertificateConfig {
                chain: vec![opaque(3)],
                private_key: opaque(5),
                trust_anchors: vec![opaque(4)],
            },
            server_name: server_name(host).to_owned(),
        }),
        _ => None,
    }
}

/// The host of a URI authority (`host:port`, `[v6]:port`, `host`), the name the server's
/// certificate must carry (an IP address matches an IP address subjectAltName).
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

impl DtlsLink {
    /// A link toward `server` with `credentials`; refused when they do not compile (an
    /// empty key).
    pub(super) fn new(server: SocketAddr, credentials: Credentials) -> Result<Self, DtlsError> {
        Ok(Self {
            server,
            config: ClientConfig::new(&credentials)?,
            credentials,
            session: None,
            pending: Vec::new(),
            timer: None,
        })
    }

    /// Whether the link was built from these credentials.
    pub(super) fn uses(&self, credentials: &Credentials) -> bool {
        self.credentials == *credentials
    }

    /// Hands a CoAP datagram to the session: encrypted at once when established, held
    /// otherwise. Returns true when a new handshake had to start for it.
    pub(super) fn send(&mut self, now: Instant, bytes: Vec<u8>) -> bool {
        let mut started = false;
        if self.session.as_ref().is_none_or(DtlsClient::is_finished) {
            match DtlsClient::connect(now, self.server, &self.config) {
                Ok(session) => {
                    self.session = Some(session);
                    started = true;
                }
                Err(_) => return false,
            }
        }
        match self.session.as_mut() {
            Some(s) if s.is_established() => {
                let _ = s.send(now, &bytes);
            }
            _ => {
                if self.pending.len() >= PENDING {
                    self.pending.remove(0);
                }
                self.pending.push(bytes);
            }
        }
        started
    }

    /// The handshake completed: what waited goes out.
    pub(super) fn established(&mut self, now: Instant) {
        if let Some(s) = self.session.as_mut() {
            for bytes in self.pending.drain(..) {
                let _ = s.send(now, &bytes);
            }
        }
    }

    /// The session is gone (failure, close, reboot, rebinding): the next datagram opens a
    /// new one. Datagrams waiting for a failed handshake are dropped.
    pub(super) fn reset(&mut self) {
        self.session = None;
        self.pending.clear();
        self.timer = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lwm2m_proto::{Instance, ResourceValue};

    const BS: &str = "127.0.0.1:5784";
    const LWM2M: &str = "127.0.0.1:5684";

    fn account(t: &mut ObjectTree, iid: u16, uri: &str, bootstrap: bool, mode: i64, id: &[u8]) {
        let mut i = Instance::default();
        let mut put = |r: u16, v: Value| {
            i.insert(r.into(), ResourceValue::Single(v));
        };
        put(0, Value::String(uri.into()));
        put(1, Value::Boolean(bootstrap));
        put(2, Value::Integer(mode));
        put(3, Value::Opaque(id.to_vec()));
        put(5, Value::Opaque(vec![iid as u8 + 1; 3]));
        t.put_instance(SECURITY, iid.into(), i);
    }

    fn tree(uri: &str, mode: i64, identity: &[u8]) -> ObjectTree {
        let mut t = ObjectTree::new();
        t.add_unknown_object(SECURITY);
        account(&mut t, 0, uri, false, mode, identity);
        t
    }

    fn config(server: Option<&str>, bootstrap: Option<&str>) -> Servers<'static> {
        Servers {
            endpoint: "ep",
            server: server.map(|s| s.parse().unwrap()),
            bootstrap_server: bootstrap.map(|s| s.parse().unwrap()),
        }
    }

    fn psk(identity: &[u8], key: u8) -> Option<Credentials> {
        Some(Credentials::Psk {
            identity: identity.to_vec(),
            key: vec![key; 3],
        })
    }

    #[test]
    fn psk_accounts_on_coaps_are_secure() {
        let peer: SocketAddr = LWM2M.parse().unwrap();
        let none = config(None, None);
        let t = tree("coaps://127.0.0.1:5684", 0, b"id");
        assert_eq!(credentials_for(&t, &none, peer), psk(b"id", 1));
        let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(credentials_for(&t, &none, other), None, "a firmware server");
        assert_eq!(
            credentials_for(&tree("coap://127.0.0.1:5684", 0, b"id"), &none, peer),
            None
        );
        assert_eq!(
            credentials_for(&tree("coaps://127.0.0.1:5684", 3, b"id"), &none, peer),
            None
        );
        // An unparsable host: the configured server.
        let named = tree("coaps://localhost:5684", 0, b"");
        assert_eq!(credentials_for(&named, &none, peer), None);
        let configured = config(Some(LWM2M), None);
        assert_eq!(credentials_for(&named, &configured, peer), psk(b"ep", 1));
        // No port: 5684, where the client machine sends (RFC 7252 §6.2).
        let portless = tree("coaps://127.0.0.1/", 0, b"id");
        assert_eq!(credentials_for(&portless, &none, peer), psk(b"id", 1));
    }

    #[test]
    fn the_bootstrap_server_and_the_lwm2m_server_get_their_own_credentials() {
        let (bs, lwm2m): (SocketAddr, SocketAddr) = (BS.parse().unwrap(), LWM2M.parse().unwrap());
        let c = config(None, Some(BS));
        let mut t = ObjectTree::new();
        t.add_unknown_object(SECURITY);
        account(&mut t, 0, "coaps://127.0.0.1:5784", true, 0, b"bs-ep");
        assert_eq!(credentials_for(&t, &c, bs), psk(b"bs-ep", 1));
        assert_eq!(credentials_for(&t, &c, lwm2m), None, "no account yet");
        // What a Bootstrap Server writes.
        account(&mut t, 1, "coaps://127.0.0.1:5684", false, 0, b"ep");
        assert_eq!(credentials_for(&t, &c, lwm2m), psk(b"ep", 2));
        assert_eq!(credentials_for(&t, &c, bs), psk(b"bs-ep", 1));
    }

    #[test]
    fn certificate_accounts_carry_chain_key_and_trust_anchor() {
        let peer: SocketAddr = LWM2M.parse().unwrap();
        let mut t = tree("coaps://127.0.0.1:5684", 2, b"\x30\x01");
        let set = |t: &mut ObjectTree, r: u16, v: &[u8]| {
            let p = Lwm2mPath::Resource(SECURITY, 0.into(), r.into());
            t.set(&p, ResourceValue::Single(Value::Opaque(v.to_vec())))
                .unwrap();
        };
        set(&mut t, 4, b"ca");
        set(&mut t, 5, b"key");
        let Some(Credentials::Certificate {
            certificate,
            server_name: name,
        }) = credentials_for(&t, &config(None, None), peer)
        else {
            panic!("a certificate account")
        };
        assert_eq!(certificate.chain, [b"\x30\x01".to_vec()]);
        assert_eq!(certificate.private_key, b"key");
        assert_eq!(certificate.trust_anchors, [b"ca".to_vec()]);
        assert_eq!(name, "127.0.0.1");
        // Garbage does not compile: the link is refused rather than sent in clear.
        let creds = credentials_for(&t, &config(None, None), peer).unwrap();
        assert!(DtlsLink::new(peer, creds).is_err());
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
    fn datagrams_wait_for_the_handshake() {
        let mut link = DtlsLink::new(LWM2M.parse().unwrap(), psk(b"id", 1).unwrap()).unwrap();
        assert!(link.uses(&psk(b"id", 1).unwrap()));
        assert!(!link.uses(&psk(b"id", 2).unwrap()));
        let now = Instant::now();
        assert!(link.send(now, vec![1]));
        assert!(!link.send(now, vec![2]));
        assert_eq!(link.pending.len(), 2);
        assert!(link.session.as_mut().unwrap().poll_transmit().is_some());
        link.reset();
        assert!(link.pending.is_empty() && link.session.is_none());
    }
}
