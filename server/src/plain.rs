//! The LwM2M Server's plain CoAP socket beside a DTLS listener: an endpoint that has
//! credentials in the security store must use them (Core TS 1.1 §7.1: its account's
//! Security Mode is not NoSec, so the client talks `coaps://`). Its Register over plain
//! CoAP (`POST /rd?ep=NAME`) is refused by the machine's admission hook
//! ([`PlainSender`]): 4.03 Forbidden with a one-line diagnostic payload, and this module
//! reports [`SecurityEvent::Insecure`], as Leshan does. Endpoints without credentials register over plain CoAP as before.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use lwm2m_proto::admission::PlainSender;
use lwm2m_proto::coap::Transmit;
use lwm2m_proto::server::Lwm2mServer;

use futures::future::BoxFuture;
use lwm2m_proto::server::{ObservationRecord, Registration};

use crate::events::{Event, Role, SecurityEvent};
use crate::registrations::RegistrationStore;
use crate::store::SecurityStore;
use lwm2m_proto::Machine;

/// Look-ups of unknown registration ids in the shared store at once; an Update beyond it
/// is answered here (4.04, the client registers again): a flood of made-up ids cannot
/// take every blocking thread.
const MAX_LOOKUPS: usize = 256;

/// What a look-up in the shared store found for a datagram that names a registration held
/// elsewhere: the registration (`None`: nowhere), its observations, and the datagram.
pub(crate) struct Found {
    pub registration: Option<Box<Registration>>,
    pub observations: Vec<ObservationRecord>,
    pub datagram: (SocketAddr, Vec<u8>),
}

/// Hands a finished look-up back to the machine's own task (its driver decides how).
pub(crate) type Adopt = Arc<dyn Fn(Found) -> BoxFuture<'static, ()> + Send + Sync>;

/// The shared registrations of a cluster, and where look-ups go back to.
type Shared = (Arc<dyn RegistrationStore>, Adopt);

/// The LwM2M Server machine of the plain socket, with the refusal in front of it.
pub struct PlainServer {
    /// The machine behind the socket.
    pub(crate) inner: Lwm2mServer,
    /// Endpoints with credentials here must register over DTLS; `None`: no DTLS listener,
    /// nothing refused.
    security: Option<Arc<dyn SecurityStore>>,
    events: VecDeque<Event>,
    /// In a cluster: the shared registrations, and where a look-up goes back to (an Update
    /// of a registration made through another instance is looked up off the task, then
    /// handed back to it).
    shared: Option<Shared>,
    /// Look-ups in flight.
    lookups: Arc<std::sync::atomic::AtomicUsize>,
}

impl PlainServer {
    /// `inner` behind the refusal; `security`: the LwM2M Server's security store when a DTLS
    /// listener runs beside this socket (`None`: nothing is refused).
    pub fn new(inner: Lwm2mServer, security: Option<Arc<dyn SecurityStore>>) -> Self {
        Self {
            inner,
            security,
            events: VecDeque::new(),
            shared: None,
            lookups: Arc::default(),
        }
    }

    /// The LwM2M Server machine behind the socket.
    pub fn machine(&self) -> &Lwm2mServer {
        &self.inner
    }

    /// The LwM2M Server machine behind the socket, to run operations on.
    pub fn machine_mut(&mut self) -> &mut Lwm2mServer {
        &mut self.inner
    }

    /// Takes over the registrations of other instances sharing `store` when their clients'
    /// Updates arrive here; `adopt` hands what a look-up found back to this machine's task.
    pub(crate) fn shared(mut self, store: Arc<dyn RegistrationStore>, adopt: Adopt) -> Self {
        self.shared = Some((store, adopt));
        self
    }

    /// True if the datagram names a registration id held elsewhere: it is looked up in the
    /// shared store (off this task) and comes back as a command.
    fn look_up_elsewhere(&self, peer: SocketAddr, bytes: &[u8]) -> bool {
        let Some((store, adopt)) = &self.shared else {
            return false;
        };
        let Some(id) = lwm2m_proto::admission::registration_id_of(bytes) else {
            return false;
        };
        if self.inner.knows_registration_id(&id) {
            return false;
        }
        use std::sync::atomic::Ordering;
        if self.lookups.fetch_add(1, Ordering::AcqRel) >= MAX_LOOKUPS {
            self.lookups.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!("LwM2M Server: {MAX_LOOKUPS} look-ups in flight; {id} not looked up");
            return false;
        }
        let lookups = self.lookups.clone();
        let (store, adopt, bytes) = (store.clone(), adopt.clone(), bytes.to_vec());
        tokio::spawn(async move {
            let found = tokio::task::spawn_blocking(move || {
                let registration = store.by_id(&id)?.registration;
                let observations = store.observations_of(&registration.endpoint);
                Some((registration, observations))
            })
            .await
            .ok()
            .flatten();
            lookups.fetch_sub(1, Ordering::AcqRel);
            let (registration, observations) = match found {
                Some((r, o)) => (Some(Box::new(r)), o),
                None => (None, Vec::new()),
            };
            adopt(Found {
                registration,
                observations,
                datagram: (peer, bytes),
            })
            .await;
        });
        true
    }
}

impl Machine for PlainServer {
    type Event = Event;
    /// A Register of an endpoint with credentials here is refused by the machine's
    /// admission hook (4.03, [`PlainSender`]) while a DTLS listener runs beside this socket;
    /// an Update of a registration held elsewhere in a cluster is looked up first.
    fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
        if self.look_up_elsewhere(peer, bytes) {
            return;
        }
        let Some(security) = &self.security else {
            return self.inner.handle_datagram(now, peer, bytes);
        };
        let mut hook = PlainSender {
            has_credentials: |ep: &str| security.by_endpoint(ep).is_some(),
            refused: None,
        };
        self.inner.handle_admitted(now, peer, bytes, &mut hook);
        if let Some(refused) = hook.refused {
            let endpoint = refused.endpoint;
            tracing::warn!("LwM2M Server: {endpoint} registered over plain CoAP: 4.03");
            let insecure = SecurityEvent::Insecure { peer, endpoint };
            self.events
                .push_back(Event::Security(Role::Server, insecure));
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.inner.poll_transmit()
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        self.inner.poll_timeout()
    }
    fn poll_event(&mut self) -> Option<Event> {
        self.events
            .pop_front()
            .or_else(|| self.inner.poll_event().map(Event::Server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Credentials, FileSecurityStore, SecurityInfo};
    use lwm2m_proto::coap::{MessageClass, MessageType, RequestType, ResponseType, message};

    fn register(ep: &str, mid: u16) -> Vec<u8> {
        let mut p = message::request(RequestType::Post, "/rd");
        message::add_query(&mut p, &format!("ep={ep}"));
        p.header.message_id = mid;
        p.set_token(vec![4, 1]);
        p.to_bytes().unwrap()
    }

    fn server(security: Option<Arc<dyn SecurityStore>>) -> PlainServer {
        let registry = Arc::new(lwm2m_proto::registry::Registry::embedded());
        PlainServer::new(Lwm2mServer::new(Default::default(), registry), security)
    }

    #[test]
    fn endpoints_with_credentials_are_refused_over_plain_coap() {
        let store = FileSecurityStore::in_memory();
        store
            .put(SecurityInfo {
                endpoint: "secure-1".into(),
                credentials: Credentials::Psk {
                    identity: "id1".into(),
                    key: "0102".into(),
                },
            })
            .unwrap();
        let mut s = server(Some(Arc::new(store)));
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let now = Instant::now();
        s.handle_datagram(now, peer, &register("secure-1", 41));
        let answer = s.poll_transmit().unwrap();
        let answer = message::decode(&answer.bytes).unwrap();
        assert_eq!(
            answer.header.code,
            MessageClass::Response(ResponseType::Forbidden)
        );
        assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(answer.header.message_id, 41);
        assert_eq!(
            s.poll_event(),
            Some(Event::Security(
                Role::Server,
                SecurityEvent::Insecure {
                    peer,
                    endpoint: "secure-1".into()
                }
            ))
        );
        assert!(s.poll_event().is_none(), "the machine reported nothing");
        // Its retransmission gets the same answer (RFC 7252 §4.5), and no second event.
        s.handle_datagram(now, peer, &register("secure-1", 41));
        assert_eq!(
            message::decode(&s.poll_transmit().unwrap().bytes).unwrap(),
            answer
        );
        assert!(s.poll_event().is_none());

        // Without credentials: registered by the machine.
        s.handle_datagram(now, peer, &register("plain-1", 42));
        let answer = message::decode(&s.poll_transmit().unwrap().bytes).unwrap();
        assert_eq!(
            answer.header.code,
            MessageClass::Response(ResponseType::Created)
        );
        // Garbage goes to the machine (which answers as it always does), never panics.
        s.handle_datagram(now, peer, b"\x40");
    }

    #[test]
    fn without_a_dtls_listener_nothing_is_refused() {
        let mut s = server(None);
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        s.handle_datagram(Instant::now(), peer, &register("secure-1", 43));
        let answer = message::decode(&s.poll_transmit().unwrap().bytes).unwrap();
        assert_eq!(
            answer.header.code,
            MessageClass::Response(ResponseType::Created)
        );
    }
}
