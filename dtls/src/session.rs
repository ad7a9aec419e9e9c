//! One DTLS session with one peer, the unit both the server router and the client drive.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc_dtls::config::HandshakeConfig;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_shared::TransportProtocol;

use crate::config::common_name;
use crate::keylog::SessionSecrets;
use crate::record::{self, RecordBytes};
use crate::{DtlsError, FailureReason, Identity};

/// Identifies one session of a [`crate::DtlsServer`]: a peer that handshakes again from the
/// same address gets a new id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Bytes on the wire of one session, by direction and record content type, and the
/// application payload (plaintext, e.g. CoAP) carried in its application_data records.
///
/// Record headers and AEAD expansion are counted with their records, so for
/// `TLS_*_WITH_AES_128_CCM_8` each application record costs its payload plus
/// [`crate::record::CCM_8_RECORD_OVERHEAD`] (29) bytes. UDP and IP headers are not counted.
/// A server-side session also counts the stateless cookie exchange that preceded it (the
/// first ClientHello and the HelloVerifyRequest, one datagram each way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Records sent, by content type.
    pub sent: RecordBytes,
    /// Records received and handed to the session, by content type.
    pub received: RecordBytes,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Application payload bytes sent (before encryption).
    pub payload_sent: u64,
    /// Application payload bytes received (after decryption).
    pub payload_received: u64,
    /// Received datagrams the established session rejected (records that fail to decrypt,
    /// forged or stale alerts), silently dropped as RFC 6347 §4.1.2.7 asks.
    pub discarded: u64,
}

impl WireStats {
    /// Handshake and change_cipher_spec bytes, both directions.
    pub fn handshake_bytes(&self) -> u64 {
        self.sent.handshake + self.received.handshake
    }

    /// Application_data record bytes (payload plus record overhead), both directions.
    pub fn application_bytes(&self) -> u64 {
        self.sent.application + self.received.application
    }

    /// Application payload bytes, both directions.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_sent + self.payload_received
    }

    /// What DTLS added around the application payload: record headers, nonces and tags.
    pub fn record_overhead(&self) -> u64 {
        self.application_bytes()
            .saturating_sub(self.payload_bytes())
    }
}

/// Why the DTLS layer rejected a datagram during the handshake.
pub(crate) enum Rejection {
    /// The datagram carried a fatal alert (description, when plaintext).
    PeerAlert(Option<u8>),
    /// The layer answered the datagram with a fatal alert of its own: for a PSK suite, the
    /// peer's encrypted Finished failed to decrypt.
    OurAlert,
    /// Anything else, with the layer's message.
    Other(String),
}

impl Rejection {
    /// The failure this rejection means; `psk` says whether a PSK was in use with a known
    /// identity, so that an undecryptable Finished means different keys.
    pub(crate) fn reason(self, psk: bool) -> FailureReason {
        match self {
            Rejection::PeerAlert(description) => FailureReason::PeerAlert(description),
            Rejection::OurAlert if psk => FailureReason::WrongKey,
            Rejection::OurAlert => {
                FailureReason::Protocol("records of the peer failed to decrypt or parse".into())
            }
            Rejection::Other(message) => FailureReason::Protocol(message),
        }
    }
}

/// What a datagram did to a session.
pub(crate) enum Output {
    /// The handshake completed.
    Established,
    /// Application data arrived.
    Data(Vec<u8>),
    /// The peer sent close_notify; the session is over.
    PeerClosed,
}

pub(crate) struct Session {
    pub(crate) id: SessionId,
    pub(crate) peer: SocketAddr,
    endpoint: Endpoint,
    pub(crate) established: bool,
    pub(crate) identity: Option<Identity>,
    /// Server side: the PSK store knew the identity the peer sent.
    pub(crate) psk_known: bool,
    pub(crate) stats: WireStats,
    pub(crate) handshake_deadline: Instant,
    pub(crate) last_received: Instant,
    /// The random of the ClientHello that opened the session (server side), to tell a
    /// retransmitted first ClientHello from a new handshake.
    pub(crate) hello_random: Option<[u8; 32]>,
    /// The deadline under which the server's timer index holds this session.
    pub(crate) scheduled: Option<Instant>,
}

/// The local address the library puts into its transport metadata; nothing reads it.
const UNSPECIFIED: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

impl Session {
    /// A server-side session, waiting for the datagram that opened it.
    pub(crate) fn accept(
        id: SessionId,
        peer: SocketAddr,
        now: Instant,
        config: Arc<HandshakeConfig>,
        handshake_timeout: Duration,
    ) -> Session {
        Session::new(
            id,
            peer,
            now,
            Endpoint::new(UNSPECIFIED, TransportProtocol::UDP, Some(config)),
            handshake_timeout,
        )
    }

    /// A client-side session; its first flight is queued.
    pub(crate) fn connect(
        id: SessionId,
        server: SocketAddr,
        now: Instant,
        config: Arc<HandshakeConfig>,
        handshake_timeout: Duration,
    ) -> Result<Session, DtlsError> {
        let mut endpoint = Endpoint::new(UNSPECIFIED, TransportProtocol::UDP, None);
        endpoint
            .connect(now, server, config, None)
            .map_err(|e| DtlsError::Library(e.to_string()))?;
        Ok(Session::new(id, server, now, endpoint, handshake_timeout))
    }

    fn new(
        id: SessionId,
        peer: SocketAddr,
        now: Instant,
        endpoint: Endpoint,
        handshake_timeout: Duration,
    ) -> Session {
        Session {
            id,
            peer,
            endpoint,
            established: false,
            identity: None,
            psk_known: false,
            stats: WireStats::default(),
            handshake_deadline: now.checked_add(handshake_timeout).unwrap_or(now),
            last_received: now,
            hello_random: None,
            scheduled: None,
        }
    }

    /// The peer repeated the ClientHello that returned the cookie, so our answer was lost:
    /// sends our flight again now (RFC 6347 §4.2.4). The hello is not fed to the DTLS layer,
    /// which would take it as progress and cancel the retransmission timer of that flight,
    /// leaving both sides waiting until the handshake timeout.
    pub(crate) fn repeat_flight(
        &mut self,
        now: Instant,
        hello: &[u8],
    ) -> Result<(), FailureReason> {
        self.stats.datagrams_received += 1;
        self.stats.received.add(&RecordBytes::of_datagram(hello));
        self.last_received = now;
        match self.endpoint.poll_timeout(&self.peer) {
            Some(due) => self
                .endpoint
                .handle_timeout(self.peer, due.max(now))
                .map_err(|_| FailureReason::Timeout),
            None => Ok(()),
        }
    }

    /// Counts the stateless cookie exchange that preceded this server-side session: the
    /// first ClientHello (the one that returned the cookie, less the cookie) and the
    /// router's HelloVerifyRequest, so that the session's handshake bytes are what its
    /// handshake cost on the wire.
    pub(crate) fn account_cookie_exchange(&mut self, hello_len: usize, verify_len: usize) {
        self.stats.datagrams_received += 1;
        self.stats.received.handshake += hello_len as u64;
        self.stats.datagrams_sent += 1;
        self.stats.sent.handshake += verify_len as u64;
    }

    /// Replays the first ClientHello of a handshake whose cookie exchange the router did
    /// (see `config::ServerRandom`): the session parses it and answers with a
    /// HelloVerifyRequest, which is discarded. Not counted in the wire accounting.
    pub(crate) fn prime(&mut self, now: Instant, hello: &[u8]) -> Result<(), String> {
        let result = self.endpoint.read(now, self.peer, None, hello.into());
        while self.endpoint.poll_transmit().is_some() {}
        result.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Feeds one received datagram. On an established session a datagram the library
    /// rejects is dropped (with whatever alert it provoked) and counted; during the
    /// handshake the rejection is the handshake's failure, returned as `Err`.
    pub(crate) fn read(
        &mut self,
        now: Instant,
        datagram: &[u8],
        out: &mut Vec<Output>,
    ) -> Result<(), Rejection> {
        self.stats.datagrams_received += 1;
        self.stats.received.add(&RecordBytes::of_datagram(datagram));
        self.last_received = now;
        let result = self.endpoint.read(now, self.peer, None, datagram.into());
        match result {
            Ok(events) => {
                for event in events {
                    match event {
                        EndpointEvent::HandshakeComplete => {
                            self.established = true;
                            self.identity = self.authenticated_peer();
                            out.push(Output::Established);
                        }
                        EndpointEvent::ApplicationData(data) => {
                            self.stats.payload_received += data.len() as u64;
                            out.push(Output::Data(Vec::from(data)));
                        }
                        EndpointEvent::PeerClosed => out.push(Output::PeerClosed),
                        _ => {}
                    }
                }
                Ok(())
            }
            Err(_) if self.established => {
                self.stats.discarded += 1;
                while self.endpoint.poll_transmit().is_some() {}
                Ok(())
            }
            Err(e) => Err(match record::alert(datagram) {
                Some(description) => Rejection::PeerAlert(description),
                None if matches!(e, rtc_shared::error::Error::ErrAlertFatalOrClose) => {
                    Rejection::OurAlert
                }
                None => Rejection::Other(e.to_string()),
            }),
        }
    }

    /// Encrypts and queues `payload` as one application_data record.
    pub(crate) fn write(&mut self, now: Instant, payload: &[u8]) -> Result<(), DtlsError> {
        if !self.established {
            return Err(DtlsError::NotEstablished(self.peer));
        }
        self.endpoint
            .write(now, self.peer, payload)
            .map_err(|e| DtlsError::Library(e.to_string()))?;
        self.stats.payload_sent += payload.len() as u64;
        Ok(())
    }

    /// Queues close_notify (RFC 5246 §7.2.1) and forgets the association.
    pub(crate) fn close(&mut self, now: Instant) {
        let _ = self.endpoint.stop(now, self.peer);
    }

    /// Drives handshake retransmission; `Err` once the handshake is over time.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Result<(), FailureReason> {
        if !self.established && now >= self.handshake_deadline {
            return Err(FailureReason::Timeout);
        }
        self.endpoint
            .handle_timeout(self.peer, now)
            .map_err(|_| FailureReason::Timeout)
    }

    /// When [`Session::handle_timeout`] (or the idle check) is next due.
    pub(crate) fn deadline(&self, idle_timeout: Option<Duration>) -> Option<Instant> {
        let retransmit = self.endpoint.poll_timeout(&self.peer);
        let phase = if self.established {
            idle_timeout.and_then(|idle| self.last_received.checked_add(idle))
        } else {
            Some(self.handshake_deadline)
        };
        match (retransmit, phase) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the next datagram to send, counting it.
    pub(crate) fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let message = self.endpoint.poll_transmit()?;
        let bytes = Vec::from(message.message);
        self.stats.datagrams_sent += 1;
        self.stats.sent.add(&RecordBytes::of_datagram(&bytes));
        Some(bytes)
    }

    /// The secrets for the key log, once established.
    pub(crate) fn secrets(&self) -> Option<SessionSecrets> {
        if !self.established {
            return None;
        }
        SessionSecrets::of_state(self.endpoint.get_connection_state(self.peer)?)
    }

    /// Who the peer authenticated as: the PSK identity it sent (a server's view; a PSK
    /// client sees its own identity) or its certificate's common name.
    fn authenticated_peer(&self) -> Option<Identity> {
        let state = self.endpoint.get_connection_state(self.peer)?;
        if state.is_cipher_suite_psk() {
            Some(Identity::Psk(state.identity_hint.as_slice().into()))
        } else {
            let cn = state
                .peer_certificates
                .first()
                .and_then(|der| common_name(der));
            Some(Identity::Certificate(cn.unwrap_or_default().into()))
        }
    }
}
