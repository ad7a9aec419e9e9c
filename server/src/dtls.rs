//! The LwM2M Server over DTLS (CoAP over DTLS, RFC 7252 §9; Core TS 1.1 §7.1): a second
//! socket whose datagrams go through a [`DtlsServer`] session router; the plaintext CoAP of
//! every session feeds an [`Lwm2mServer`] machine of its own, and the machine's output is
//! encrypted back to the session.
//!
//! A separate machine keeps the two transports apart: the LwM2M machine keys peers by
//! address, and one address may hold a plain and a secure association at once.
//! [`crate::driver::ServerHandle`] sends each operation to the machine the endpoint
//! registered with.
//!
//! PSK keys come from the [`SecurityStore`] by identity (in memory: answered synchronously
//! on the driver task). Unknown identities and wrong keys fail the handshake of that peer
//! only; each failure is a [`SecurityEvent`] and a log line.
//!
//! Identity and endpoint (Core TS 1.1 §7.1.8, §6.2.1): a Register (`POST /rd?ep=NAME`)
//! over a session that authenticated as an identity belonging to another endpoint (by the
//! security store: `by_psk_identity(identity).endpoint != NAME`; a certificate's common
//! name must equal NAME), or an Update / De-register (`POST`/`DELETE /rd/{id}`) of another
//! endpoint's registration, never reaches the machine: this module answers 4.03 Forbidden
//! itself with a one-line diagnostic payload (RFC 7252 §5.5.2) and reports
//! [`SecurityEvent::IdentityMismatch`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwm2m_dtls::{
    DtlsServer, Identity, PskStore, ServerConfig as DtlsConfig, ServerEvent as DtlsEvent,
};
use lwm2m_proto::coap::{
    CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType, Transmit, message,
};
use lwm2m_proto::server::Lwm2mServer;

pub use lwm2m_dtls::{CertificateConfig, KeyLog, KeyLogFile};

use crate::driver::Machine;
use crate::events::{Direction, Event, PacketTap, SecurityEvent};
use crate::store::{Credentials, SecurityStore};

/// How to start the DTLS listener of an LwM2M Server (see
/// [`crate::driver::ServerOptions::dtls`]).
#[derive(Clone)]
pub struct DtlsOptions {
    /// Where to bind, e.g. `127.0.0.1:5684` (port 0: any free port).
    pub bind: SocketAddr,
    /// Where PSK keys are looked up by identity and identities mapped to endpoints.
    pub security: Arc<dyn SecurityStore>,
    /// Longest handshake (RFC 6347 §4.2.4: flights are retransmitted every second).
    pub handshake_timeout: Duration,
    /// Where to write the secrets of every session (NSS key log, for Wireshark).
    pub key_log: Option<Arc<dyn KeyLog>>,
    /// The server's certificate chain and key, and the trust anchors for client
    /// certificates (Security mode 2, `TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`); `None`: PSK
    /// only. A certificate client's endpoint name must be its certificate's common name.
    pub certificate: Option<CertificateConfig>,
    /// Handshakes in progress at once; fresh ClientHellos beyond it are dropped and the
    /// clients retransmit them a second later, so a burst of N clients takes about
    /// N / `max_handshakes` seconds.
    pub max_handshakes: usize,
}

impl DtlsOptions {
    /// Defaults: a 10 s handshake timeout, no key log, no certificate, 4,096 handshakes at
    /// once.
    pub fn new(bind: SocketAddr, security: Arc<dyn SecurityStore>) -> Self {
        Self {
            bind,
            security,
            handshake_timeout: Duration::from_secs(10),
            key_log: None,
            certificate: None,
            max_handshakes: 4096,
        }
    }
}

impl std::fmt::Debug for DtlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsOptions")
            .field("bind", &self.bind)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("key_log", &self.key_log.is_some())
            .field("certificate", &self.certificate.is_some())
            .field("max_handshakes", &self.max_handshakes)
            .finish_non_exhaustive()
    }
}

/// The security store as the DTLS layer's PSK callback: a UTF-8 identity owned by PSK
/// credentials gives the decoded key.
struct StorePsk(Arc<dyn SecurityStore>);

impl PskStore for StorePsk {
    fn psk(&self, identity: &[u8]) -> Option<Vec<u8>> {
        let identity = std::str::from_utf8(identity).ok()?;
        match self.0.by_psk_identity(identity)?.credentials {
            Credentials::Psk { key, .. } => lwm2m_proto::value::parse_hex(&key),
            _ => None,
        }
    }
}

/// The DTLS session router and the LwM2M Server machine behind it, as one machine for the
/// driver loop: ciphertext in and out, [`Event`]s out.
pub(crate) struct SecureServer {
    dtls: DtlsServer,
    /// The LwM2M Server machine of the secure socket.
    pub(crate) lwm2m: Lwm2mServer,
    security: Arc<dyn SecurityStore>,
    events: VecDeque<Event>,
    /// Registration id → endpoint, of this machine's registrations.
    locations: HashMap<String, String>,
    /// Sees the plaintext of every application record, with the socket's address.
    tap: Option<(Arc<dyn PacketTap>, SocketAddr)>,
}

impl SecureServer {
    pub(crate) fn new(
        options: &DtlsOptions,
        lwm2m: Lwm2mServer,
    ) -> Result<Self, lwm2m_dtls::DtlsError> {
        let config = DtlsConfig {
            psk_store: Some(Arc::new(StorePsk(options.security.clone()))),
            handshake_timeout: options.handshake_timeout,
            key_log: options.key_log.clone(),
            max_handshakes: options.max_handshakes,
            certificate: options.certificate.clone(),
            ..DtlsConfig::default()
        };
        Ok(Self {
            dtls: DtlsServer::new(config)?,
            lwm2m,
            security: options.security.clone(),
            events: VecDeque::new(),
            locations: HashMap::new(),
            tap: None,
        })
    }

    /// Reports the plaintext of every application record to `tap`
    /// ([`PacketTap::plaintext`]) as seen on the socket bound at `local`.
    pub(crate) fn with_tap(mut self, tap: Option<Arc<dyn PacketTap>>, local: SocketAddr) -> Self {
        self.tap = tap.map(|t| (t, local));
        self
    }

    /// Encrypts `payload` into `peer`'s session and tells the tap (the driver's socket tap
    /// sees the record only later, when it is sent).
    fn send(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        payload: &[u8],
    ) -> Result<(), lwm2m_dtls::DtlsError> {
        self.dtls.send(now, peer, payload)?;
        if let Some((tap, local)) = &self.tap {
            let identity = self
                .dtls
                .session(peer)
                .and_then(|s| s.identity)
                .map(|i| i.to_string())
                .unwrap_or_default();
            tap.plaintext(Direction::Out, *local, peer, &identity, payload);
        }
        Ok(())
    }

    /// Moves everything between the two machines until both are quiet: decrypted datagrams
    /// to the LwM2M machine (or refused here), its answers into their sessions.
    pub(crate) fn settle(&mut self, now: Instant) {
        loop {
            let mut moved = false;
            while let Some(event) = self.dtls.poll_event() {
                moved = true;
                self.dtls_event(now, event);
            }
            while let Some(t) = self.lwm2m.poll_transmit() {
                moved = true;
                if let Err(e) = self.send(now, t.peer, &t.bytes) {
                    tracing::debug!("LwM2M Server (DTLS): answer to {} dropped: {e}", t.peer);
                }
            }
            if !moved {
                break;
            }
        }
    }

    fn dtls_event(&mut self, now: Instant, event: DtlsEvent) {
        let security = match event {
            DtlsEvent::Datagram {
                peer,
                identity,
                payload,
                ..
            } => {
                if let Some((tap, local)) = &self.tap {
                    tap.plaintext(Direction::In, *local, peer, &identity.to_string(), &payload);
                }
                match self.refusal(&identity, &payload) {
                    Some((answer, event)) => {
                        tracing::warn!("LwM2M Server (DTLS): {event:?}");
                        if let Err(e) = self.send(now, peer, &answer) {
                            tracing::debug!("LwM2M Server (DTLS): 4.03 to {peer} dropped: {e}");
                        }
                        self.events.push_back(Event::Security(event));
                    }
                    None => self.lwm2m.handle_datagram(now, peer, &payload),
                }
                return;
            }
            DtlsEvent::Established { peer, identity, .. } => {
                tracing::debug!("DTLS session with {peer} established as {identity}");
                SecurityEvent::Established {
                    peer,
                    identity: identity.to_string(),
                }
            }
            DtlsEvent::HandshakeFailed {
                peer,
                identity,
                reason,
                ..
            } => {
                let identity = identity.map(|i| i.to_string());
                tracing::warn!(
                    "DTLS handshake with {peer} failed ({}): {reason:?}",
                    identity.as_deref().unwrap_or("no identity")
                );
                SecurityEvent::HandshakeFailed {
                    peer,
                    identity,
                    reason: format!("{reason:?}"),
                }
            }
            DtlsEvent::Closed {
                peer,
                identity,
                reason,
                ..
            } => {
                tracing::debug!("DTLS session with {peer} ({identity}) closed: {reason:?}");
                SecurityEvent::Closed {
                    peer,
                    identity: identity.to_string(),
                    reason: format!("{reason:?}"),
                }
            }
            other => {
                tracing::debug!("DTLS: {other:?}");
                return;
            }
        };
        self.events.push_back(Event::Security(security));
    }

    /// A 4.03 answer and its event when `payload` is a Register whose endpoint name the
    /// session's identity does not belong to (Core TS 1.1 §7.1.8), or an Update or
    /// De-register of such an endpoint's registration (`POST`/`DELETE /rd/{id}`).
    fn refusal(&self, identity: &Identity, payload: &[u8]) -> Option<(Vec<u8>, SecurityEvent)> {
        let request = message::decode(payload).ok()?;
        let MessageClass::Request(method @ (RequestType::Post | RequestType::Delete)) =
            request.header.code
        else {
            return None;
        };
        let path = request.get_option(CoapOption::UriPath)?;
        let endpoint = match (method, path.len()) {
            (RequestType::Post, 1) if path.front()?.as_slice() == b"rd" => request
                .get_option(CoapOption::UriQuery)?
                .iter()
                .find_map(|q| q.strip_prefix(b"ep=").map(|v| String::from_utf8_lossy(v)))?
                .into_owned(),
            (_, 2) if path.front()?.as_slice() == b"rd" => {
                let id = std::str::from_utf8(path.back()?).ok()?;
                self.locations.get(id)?.clone()
            }
            _ => return None,
        };
        let owner = match identity {
            Identity::Psk(id) => std::str::from_utf8(id)
                .ok()
                .and_then(|id| self.security.by_psk_identity(id))
                .map(|info| info.endpoint),
            Identity::Certificate(cn) => Some(cn.to_string()),
            _ => None,
        };
        if owner.as_deref() == Some(endpoint.as_str()) {
            return None;
        }
        let reason = format!(
            "identity {identity} belongs to {}, not to endpoint {endpoint:?}",
            owner.as_deref().unwrap_or("no endpoint")
        );
        let answer = forbidden(&request, &reason).to_bytes().ok()?;
        Some((
            answer,
            SecurityEvent::IdentityMismatch {
                identity: identity.to_string(),
                endpoint,
                owner,
            },
        ))
    }

    /// Keeps the registration id → endpoint map for the Update and De-register checks.
    fn track(&mut self, event: &lwm2m_proto::server::ServerEvent) {
        use lwm2m_proto::server::ServerEvent as E;
        match event {
            E::Registered {
                registration: r, ..
            }
            | E::Updated {
                registration: r, ..
            } => {
                self.locations.insert(r.id.clone(), r.endpoint.clone());
            }
            E::Deregistered { registration: r } | E::Expired { registration: r } => {
                self.locations.remove(&r.id);
            }
            _ => {}
        }
    }
}

/// A 4.03 Forbidden response to `request`: piggybacked (ACK, same message ID) on a
/// confirmable request, else a non-confirmable response with the message ID of the
/// request (RFC 7252 §5.2; the requester matches by token); the diagnostic as payload.
fn forbidden(request: &Packet, reason: &str) -> Packet {
    let mut answer = message::response(ResponseType::Forbidden, reason.as_bytes().to_vec());
    answer.header.set_type(match request.header.get_type() {
        MessageType::Confirmable => MessageType::Acknowledgement,
        _ => MessageType::NonConfirmable,
    });
    answer.header.message_id = request.header.message_id;
    answer.set_token(request.get_token().to_vec());
    answer
}

impl Machine for SecureServer {
    type Event = Event;
    fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        self.dtls.handle_datagram(now, peer, bytes);
        self.settle(now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        if self.dtls.poll_timeout().is_some_and(|t| t <= now) {
            self.dtls.handle_timeout(now);
        }
        if self.lwm2m.poll_timeout().is_some_and(|t| t <= now) {
            self.lwm2m.handle_timeout(now);
        }
        self.settle(now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.dtls.poll_transmit().map(|t| Transmit {
            peer: t.peer,
            bytes: t.bytes,
        })
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        [self.dtls.poll_timeout(), self.lwm2m.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }
    fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        let event = self.lwm2m.poll_event()?;
        self.track(&event);
        Some(Event::Server(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FileSecurityStore, SecurityInfo};

    fn store() -> Arc<dyn SecurityStore> {
        let s = FileSecurityStore::in_memory();
        s.put(SecurityInfo {
            endpoint: "dev1".into(),
            credentials: Credentials::Psk {
                identity: "id1".into(),
                key: "0102".into(),
            },
        })
        .unwrap();
        Arc::new(s)
    }

    #[test]
    fn psk_comes_from_the_store_by_identity() {
        let psk = StorePsk(store());
        assert_eq!(psk.psk(b"id1"), Some(vec![1, 2]));
        assert_eq!(psk.psk(b"id2"), None);
        assert_eq!(psk.psk(&[0xff]), None);
    }

    fn register(ep: &str) -> Vec<u8> {
        let mut p = message::request(RequestType::Post, "/rd");
        message::add_query(&mut p, &format!("ep={ep}"));
        p.header.message_id = 77;
        p.set_token(vec![9, 9]);
        p.to_bytes().unwrap()
    }

    #[test]
    fn register_under_another_endpoint_is_forbidden() {
        let options = DtlsOptions::new("127.0.0.1:0".parse().unwrap(), store());
        let registry = Arc::new(lwm2m_proto::registry::Registry::embedded());
        let lwm2m = Lwm2mServer::new(Default::default(), registry);
        let mut s = SecureServer::new(&options, lwm2m).unwrap();
        let id = Identity::Psk(Arc::from(&b"id1"[..]));
        assert!(s.refusal(&id, &register("dev1")).is_none());
        assert!(s.refusal(&id, b"\xff garbage").is_none());
        let (answer, event) = s.refusal(&id, &register("dev2")).unwrap();
        let answer = message::decode(&answer).unwrap();
        assert_eq!(
            answer.header.code,
            MessageClass::Response(ResponseType::Forbidden)
        );
        assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(answer.header.message_id, 77);
        assert_eq!(answer.get_token(), &[9, 9]);
        assert_eq!(
            event,
            SecurityEvent::IdentityMismatch {
                identity: "psk:id1".into(),
                endpoint: "dev2".into(),
                owner: Some("dev1".into()),
            }
        );
        let cert = Identity::Certificate(Arc::from("dev2"));
        assert!(s.refusal(&cert, &register("dev2")).is_none());

        // Update and De-register of dev2's registration (id "r2") by id1: refused.
        s.locations.insert("r2".into(), "dev2".into());
        s.locations.insert("r1".into(), "dev1".into());
        for method in [RequestType::Post, RequestType::Delete] {
            let mut p = message::request(method, "/rd/r2");
            p.header.message_id = 5;
            let (_, event) = s.refusal(&id, &p.to_bytes().unwrap()).unwrap();
            assert!(
                matches!(event, SecurityEvent::IdentityMismatch { endpoint, .. } if endpoint == "dev2")
            );
            let own = message::request(method, "/rd/r1").to_bytes().unwrap();
            assert!(s.refusal(&id, &own).is_none());
            let unknown = message::request(method, "/rd/zz").to_bytes().unwrap();
            assert!(s.refusal(&id, &unknown).is_none());
        }
    }
}
