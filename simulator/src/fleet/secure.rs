//! CoAP over DTLS for fleet clients (RFC 7252 §9, Core TS 1.1 §7.1): a client whose
//! LwM2M Server account (a non-bootstrap Security instance) says `coaps://`, Security Mode
//! 0 (PSK, /0/x/2), identity /0/x/3 and key /0/x/5 talks to that server through a
//! [`DtlsClient`] of its own; the driver moves its records through the client's public
//! address like any datagram.
//!
//! Sessions start when the client first sends to the server and again whenever the old
//! one is gone: handshake failure, close, reboot (the device forgets its session), or a
//! NAT rebinding. Without Connection ID (RFC 9146) a record from a new address is not
//! recognised by the server, so after a rebinding the datagram in flight is lost and the
//! next one (the CoAP retransmission) opens a new handshake from the new address.

use std::net::SocketAddr;
use std::time::Instant;

use lwm2m_dtls::{ClientConfig, DtlsClient};
use lwm2m_proto::client::ObjectTree;
use lwm2m_proto::{Lwm2mPath, ObjectId, Value};

/// The Security object (Core TS 1.1 Appendix E.1).
const SECURITY: ObjectId = ObjectId(0);
/// Security Mode 0: pre-shared key (/0/x/2).
const MODE_PSK: i64 = 0;
/// CoAP datagrams held while a handshake runs (the oldest go first beyond it).
const PENDING: usize = 16;

/// One client's DTLS association with its LwM2M Server.
pub(super) struct DtlsLink {
    /// The server, as the client machine addresses it.
    pub(super) server: SocketAddr,
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
            .field("session", &self.session)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl DtlsLink {
    /// The PSK link of a client, if its tree holds a `coaps://` server account in mode PSK
    /// with an identity and a key. `server` is where the client machine sends (its
    /// configured server, else the account's URI). An empty identity stands for the
    /// endpoint name (so one profile serves a fleet whose identities are their names).
    pub(super) fn from_tree(
        tree: &ObjectTree,
        server: Option<SocketAddr>,
        endpoint: &str,
    ) -> Option<Self> {
        let get = |iid, rid: u16| tree.get(&Lwm2mPath::Resource(SECURITY, iid, rid.into()));
        tree.instance_ids(SECURITY).into_iter().find_map(|iid| {
            if get(iid, 1) == Some(&Value::Boolean(true)) {
                return None;
            }
            let Some(Value::String(uri)) = get(iid, 0) else {
                return None;
            };
            let authority = uri.strip_prefix("coaps://")?;
            if get(iid, 2) != Some(&Value::Integer(MODE_PSK)) {
                return None;
            }
            let (Some(Value::Opaque(identity)), Some(Value::Opaque(key))) =
                (get(iid, 3), get(iid, 5))
            else {
                return None;
            };
            let identity = if identity.is_empty() {
                endpoint.as_bytes()
            } else {
                identity
            };
            let server = server.or_else(|| {
                authority
                    .split(['/', '?'])
                    .next()
                    .and_then(|a| a.parse().ok())
            })?;
            Some(Self {
                server,
                config: ClientConfig::psk(identity, key).ok()?,
                session: None,
                pending: Vec::new(),
                timer: None,
            })
        })
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

    fn tree(uri: &str, mode: i64) -> ObjectTree {
        tree_with(uri, mode, b"id")
    }

    fn tree_with(uri: &str, mode: i64, identity: &[u8]) -> ObjectTree {
        let mut t = ObjectTree::new();
        t.add_unknown_object(SECURITY);
        let mut i = Instance::default();
        let mut put = |r: u16, v: Value| {
            i.insert(r.into(), ResourceValue::Single(v));
        };
        put(0, Value::String(uri.into()));
        put(1, Value::Boolean(false));
        put(2, Value::Integer(mode));
        put(3, Value::Opaque(identity.to_vec()));
        put(5, Value::Opaque(vec![1, 2, 3]));
        t.put_instance(SECURITY, 0.into(), i);
        t
    }

    #[test]
    fn psk_accounts_on_coaps_get_a_link() {
        let link = DtlsLink::from_tree(&tree("coaps://127.0.0.1:5684", 0), None, "ep").unwrap();
        assert_eq!(link.server, "127.0.0.1:5684".parse::<SocketAddr>().unwrap());
        assert!(DtlsLink::from_tree(&tree("coap://127.0.0.1:5683", 0), None, "ep").is_none());
        assert!(DtlsLink::from_tree(&tree("coaps://127.0.0.1:5684", 3), None, "ep").is_none());
        let configured = "127.0.0.2:9".parse().unwrap();
        let link = DtlsLink::from_tree(&tree("coaps://x", 0), Some(configured), "ep").unwrap();
        assert_eq!(link.server, configured);
        assert_eq!(
            link.config.identity(),
            &lwm2m_dtls::Identity::Psk(b"id".as_slice().into())
        );
        let named = DtlsLink::from_tree(&tree_with("coaps://x", 0, b""), Some(configured), "ep");
        assert_eq!(
            named.unwrap().config.identity(),
            &lwm2m_dtls::Identity::Psk(b"ep".as_slice().into())
        );
    }

    #[test]
    fn datagrams_wait_for_the_handshake() {
        let mut link = DtlsLink::from_tree(&tree("coaps://127.0.0.1:5684", 0), None, "ep").unwrap();
        let now = Instant::now();
        assert!(link.send(now, vec![1]));
        assert!(!link.send(now, vec![2]));
        assert_eq!(link.pending.len(), 2);
        assert!(link.session.as_mut().unwrap().poll_transmit().is_some());
        link.reset();
        assert!(link.pending.is_empty() && link.session.is_none());
    }
}
