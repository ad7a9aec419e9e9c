//! The sans-IO DTLS client: one session with one server.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::ClientConfig;
use crate::keylog::SessionSecrets;
use crate::session::{Output, Session, SessionId, WireStats};
use crate::{CloseReason, DtlsError, FailureReason, Identity};

/// What happened on a [`DtlsClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The handshake completed; [`DtlsClient::send`] may be used.
    Established,
    /// An application datagram arrived.
    Datagram(Vec<u8>),
    /// The handshake failed; the client is finished.
    HandshakeFailed(FailureReason),
    /// The established session ended; the client is finished.
    Closed(CloseReason),
}

/// One DTLS client session, sans-IO: every datagram it emits goes to the server it was
/// created for, and every datagram received from that server is fed to it.
///
/// It holds no socket, so a simulator can drive thousands of clients over a few sockets.
/// A finished client (failed, closed) stays finished: make a new one to reconnect.
pub struct DtlsClient {
    session: Session,
    config: ClientConfig,
    outputs: Vec<Output>,
    events: VecDeque<ClientEvent>,
    finished: bool,
}

impl std::fmt::Debug for DtlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsClient")
            .field("server", &self.session.peer)
            .field("established", &self.session.established)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl DtlsClient {
    /// Starts a handshake with `server`; the ClientHello is ready in
    /// [`DtlsClient::poll_transmit`].
    pub fn connect(
        now: Instant,
        server: SocketAddr,
        config: &ClientConfig,
    ) -> Result<DtlsClient, DtlsError> {
        let session = Session::connect(
            SessionId(0),
            server,
            now,
            config.handshake.clone(),
            config.handshake_timeout,
        )?;
        Ok(DtlsClient {
            session,
            config: config.clone(),
            outputs: Vec::new(),
            events: VecDeque::new(),
            finished: false,
        })
    }

    /// Feeds one datagram received from the server.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        if self.finished {
            return;
        }
        let mut outputs = std::mem::take(&mut self.outputs);
        match self.session.read(now, datagram, &mut outputs) {
            Ok(()) => {
                for output in outputs.drain(..) {
                    match output {
                        Output::Established => {
                            if let (Some(key_log), Some(secrets)) =
                                (&self.config.key_log, self.session.secrets())
                            {
                                key_log.log(&secrets);
                            }
                            self.events.push_back(ClientEvent::Established);
                        }
                        Output::Data(payload) => {
                            self.events.push_back(ClientEvent::Datagram(payload));
                        }
                        Output::PeerClosed => {
                            self.finished = true;
                            self.events
                                .push_back(ClientEvent::Closed(CloseReason::PeerClosed));
                        }
                    }
                }
            }
            Err(rejection) => {
                let psk = matches!(self.config.identity, Identity::Psk(_));
                self.fail(rejection.reason(psk));
            }
        }
        self.outputs = outputs;
    }

    /// Fires due timers: handshake retransmission and the handshake timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        if let Err(reason) = self.session.handle_timeout(now) {
            self.fail(reason);
        }
    }

    /// When [`DtlsClient::handle_timeout`] is next due (only during the handshake).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        self.session.deadline(None)
    }

    /// The next datagram to send to the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.session.poll_transmit()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Sends `payload` as one application_data record.
    pub fn send(&mut self, now: Instant, payload: &[u8]) -> Result<(), DtlsError> {
        if self.finished {
            return Err(DtlsError::Closed {
                peer: self.session.peer,
                reason: "the session is over".into(),
            });
        }
        self.session.write(now, payload)
    }

    /// Sends close_notify and finishes the client.
    pub fn close(&mut self, now: Instant) {
        if !self.finished {
            self.session.close(now);
            self.finished = true;
            if self.session.established {
                self.events
                    .push_back(ClientEvent::Closed(CloseReason::LocalClose));
            }
        }
    }

    /// The server this client talks to.
    pub fn server(&self) -> SocketAddr {
        self.session.peer
    }

    /// Whether the handshake has completed and the session is not over.
    pub fn is_established(&self) -> bool {
        self.session.established && !self.finished
    }

    /// Whether the client failed or was closed.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The identity this client authenticated with.
    pub fn identity(&self) -> &Identity {
        self.config.identity()
    }

    /// The server's certificate common name, once established with certificates.
    pub fn server_identity(&self) -> Option<&Identity> {
        self.session
            .identity
            .as_ref()
            .filter(|id| matches!(id, Identity::Certificate(_)))
    }

    /// Wire accounting of the session so far.
    pub fn stats(&self) -> &WireStats {
        &self.session.stats
    }

    /// The key log secrets, once established.
    pub fn secrets(&self) -> Option<SessionSecrets> {
        self.session.secrets()
    }

    /// The handshake timeout this client was configured with.
    pub fn handshake_timeout(&self) -> Duration {
        self.config.handshake_timeout
    }

    fn fail(&mut self, reason: FailureReason) {
        self.finished = true;
        self.events.push_back(ClientEvent::HandshakeFailed(reason));
    }
}
