//! The client side of an [`Endpoint`]: outgoing requests, their responses, block-wise
//! uploads (RFC 7959 §2.3) and downloads (§2.4), and observing (RFC 7641 §3).

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::time::Instant;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};

use super::endpoint::Endpoint;
use super::exchange::{Download, Exchange, Step, Upload};
use super::message::{self, BlockOption, observe_value, uint_bytes};
use super::state::{Owner, Sent, Timer, Token, forget_sent};
use super::{Event, ExchangeError, RequestId};

/// The Request-Tag option (RFC 9175 §3.2): elective, repeatable.
const REQUEST_TAG: u16 = 292;

impl Endpoint {
    /// Sends a request to `peer` and returns the id under which its outcome is reported:
    /// exactly one [`Event::Response`] or [`Event::RequestFailed`], or for Observe = 0 a
    /// response followed by [`Event::Notification`]s.
    ///
    /// The packet supplies code, options and payload; the endpoint sets token (random,
    /// [`Config::token_length`](super::Config::token_length) bytes, unique per peer,
    /// RFC 7252 §5.3.1) and message ID (§4.4). The request is confirmable (§4.2) unless the
    /// packet's type is non-confirmable (§4.3). A payload larger than the block size, or
    /// one that does not fit in [`Config::max_message_size`](super::Config::max_message_size),
    /// goes out block-wise with Block1 and Size1 (RFC 7959 §2.3, §4); a response with Block2
    /// is fetched to the end (§2.4). With NSTART (§4.7) requests already outstanding to the
    /// peer, the request waits in order.
    pub fn send_request(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        request: Packet,
    ) -> Result<RequestId, ExchangeError> {
        if !message::is_request(&request) {
            return Err(ExchangeError::WrongCode {
                code: request.header.code.to_string(),
                expected: "request",
            });
        }
        let token = self.new_token(peer);
        self.start_request(now, peer, request, token, false)
    }

    fn start_request(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        mut template: Packet,
        token: Token,
        deregister: bool,
    ) -> Result<RequestId, ExchangeError> {
        let body = std::mem::take(&mut template.payload);
        let confirmable = template.header.get_type() != MessageType::NonConfirmable;
        template.set_token(token.as_slice().to_vec());
        let block1 = self.plan_upload(&template, body.len())?;
        let id = RequestId(self.next_serial());
        if block1.is_some() && self.uploading(peer, &template) {
            // RFC 9175 §3.3: concurrent block-wise uploads to one resource are told apart by
            // their Request-Tag (the server keys its reassembly on the options).
            let tag = (id.0 as u32).to_be_bytes().to_vec();
            template.add_option(CoapOption::Unknown(REQUEST_TAG), tag);
        }
        let exchange = Exchange {
            peer,
            token,
            observe: observe_value(&template) == Some(0),
            deregister,
            template,
            body,
            confirmable,
            mid: None,
            deadline: None,
            holds_slot: false,
            block1,
            block2: None,
            observing: None,
            fetch_token: None,
        };
        self.exchanges.insert(id, exchange);
        self.tokens.insert((peer, token), id);
        let nstart = self.config.nstart;
        let state = self.peer_state(now, peer);
        if state.active < nstart {
            self.start_exchange(now, id);
        } else {
            state.queue.push_back(id);
        }
        Ok(id)
    }

    /// Whether a block-wise upload to the resource of `template` is under way to `peer`.
    fn uploading(&self, peer: SocketAddr, template: &Packet) -> bool {
        let key = message::resource_key(template);
        self.exchanges.values().any(|e| {
            e.peer == peer && e.block1.is_some() && message::resource_key(&e.template) == key
        })
    }

    /// Decides whether a request body goes block-wise and with which size: the largest
    /// block not above the preferred size that fits in a datagram with the options
    /// (RFC 7959 §2.2, RFC 7252 §4.6).
    fn plan_upload(&self, template: &Packet, len: usize) -> Result<Option<Upload>, ExchangeError> {
        let limit = self.config.max_message_size;
        let whole = message::encoded_len(template, 0) + 1 + len;
        if whole <= limit && len <= self.config.preferred_block_size {
            return Ok(None);
        }
        let mut probe = template.clone();
        BlockOption {
            num: BlockOption::MAX_NUM,
            more: true,
            szx: 6,
        }
        .set_in(&mut probe, CoapOption::Block1);
        probe.add_option(CoapOption::Size1, uint_bytes(u32::MAX));
        let overhead = message::encode(&probe, usize::MAX).map_or(usize::MAX, |b| b.len()) + 1;
        let room = limit.saturating_sub(overhead);
        let szx = self.szx.min(BlockOption::szx_for(room));
        if 16 << szx > room {
            return Err(ExchangeError::MessageTooLarge { limit });
        }
        if len.div_ceil(16 << szx) > BlockOption::MAX_NUM as usize + 1 {
            return Err(ExchangeError::BodyTooLarge {
                size: len,
                max: (16 << szx) << 20,
            });
        }
        Ok(Some(Upload {
            szx,
            offset: 0,
            len: 0,
        }))
    }

    fn start_exchange(&mut self, now: Instant, id: RequestId) {
        let Some(exchange) = self.exchanges.get_mut(&id) else {
            return;
        };
        exchange.holds_slot = true;
        let peer = exchange.peer;
        self.peer_state(now, peer).active += 1;
        self.transmit_next(now, id);
    }

    /// Sends the exchange's next message: the request, its next Block1 block, or the request
    /// for the next Block2 block.
    fn transmit_next(&mut self, now: Instant, id: RequestId) {
        let Some(exchange) = self.exchanges.get(&id) else {
            return;
        };
        let peer = exchange.peer;
        let mid = self.next_mid(now, peer);
        let Some(exchange) = self.exchanges.get_mut(&id) else {
            return;
        };
        let kind = if exchange.confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        };
        let encoded = if exchange.block1.is_none() && exchange.block2.is_none() {
            // The whole request in one message: encoded from the template and the body as
            // they are, without a copy of either.
            exchange.template.header.message_id = mid;
            exchange.template.header.set_type(kind);
            message::encode_with_payload(
                &exchange.template,
                &exchange.body,
                self.config.max_message_size,
            )
        } else {
            Self::next_block(exchange, mid, kind, self.config.max_message_size)
        };
        exchange.mid = Some(mid);
        let confirmable = exchange.confirmable;
        let bytes = match encoded {
            Ok(bytes) => bytes,
            Err(error) => return self.fail_request(now, id, error),
        };
        if confirmable {
            self.send_confirmable(now, peer, mid, bytes, Owner::Request(id), None);
        } else {
            self.sent.insert(
                (peer, mid),
                Sent {
                    owner: Owner::Request(id),
                    retransmit: None,
                },
            );
            self.set_deadline(now, id);
            self.transmit(peer, bytes);
        }
    }

    /// The message of a block-wise exchange's next step: the request for the next Block2
    /// block, or the next Block1 block of the body.
    fn next_block(
        exchange: &mut Exchange,
        mid: u16,
        kind: MessageType,
        limit: usize,
    ) -> Result<Vec<u8>, ExchangeError> {
        let mut packet = exchange.template.clone();
        packet.header.message_id = mid;
        packet.header.set_type(kind);
        if let Some(download) = &exchange.block2 {
            // RFC 7959 §2.4: ask for the next block; §3.4: without Observe.
            let size = 16usize << download.szx;
            let num = (download.body.len() / size) as u32;
            BlockOption {
                num,
                more: false,
                szx: download.szx,
            }
            .set_in(&mut packet, CoapOption::Block2);
            packet.clear_option(CoapOption::Observe);
            packet.clear_option(CoapOption::Block1);
            packet.clear_option(CoapOption::Size1);
            if let Some(token) = exchange.fetch_token {
                packet.set_token(token.as_slice().to_vec());
            }
            if packet.header.code == MessageClass::Request(RequestType::Fetch) {
                // RFC 8132 §2: the payload of a FETCH is part of what it asks for.
                packet.payload = exchange.body.clone();
            }
        } else if let Some(upload) = exchange.block1.as_mut() {
            let size = 16usize << upload.szx;
            let end = (upload.offset + size).min(exchange.body.len());
            let num = (upload.offset / size) as u32;
            let more = end < exchange.body.len();
            BlockOption {
                num,
                more,
                szx: upload.szx,
            }
            .set_in(&mut packet, CoapOption::Block1);
            if num == 0 {
                // RFC 7959 §4: the first block announces the total size.
                let total = u32::try_from(exchange.body.len()).unwrap_or(u32::MAX);
                message::set_option(&mut packet, CoapOption::Size1, uint_bytes(total));
            }
            packet.payload = exchange
                .body
                .get(upload.offset..end)
                .unwrap_or_default()
                .to_vec();
            upload.len = end.saturating_sub(upload.offset);
        }
        message::encode(&packet, limit)
    }

    fn set_deadline(&mut self, now: Instant, id: RequestId) {
        let at = now + self.config.response_timeout;
        if let Some(exchange) = self.exchanges.get_mut(&id) {
            exchange.deadline = Some(at);
            self.timers.push(Reverse((at, Timer::Response(id))));
        }
    }

    /// Cancels a request: retransmissions stop, queued requests to the peer move up, nothing
    /// more is reported for `id`. For an established observation this is the "forget" way of
    /// cancelling (RFC 7641 §3.6): the next notification is answered with a Reset. Returns
    /// whether `id` was active.
    pub fn cancel_request(&mut self, now: Instant, id: RequestId) -> bool {
        self.finish(now, id)
    }

    /// Cancels an observation proactively (RFC 7641 §3.6): sends a GET with the same token
    /// and options and Observe = 1, whose outcome is reported under the returned id (one
    /// [`Event::Response`] or [`Event::RequestFailed`]). Nothing more is reported for `id`.
    /// Returns `None` when `id` is not an established observation.
    pub fn cancel_observation(&mut self, now: Instant, id: RequestId) -> Option<RequestId> {
        let exchange = self.exchanges.get(&id).filter(|e| e.observing.is_some())?;
        let (peer, token) = (exchange.peer, exchange.token);
        let mut request = exchange.template.clone();
        request.payload = exchange.body.clone();
        request.set_observe_value(1);
        request.clear_option(CoapOption::Block2);
        self.finish(now, id);
        self.start_request(now, peer, request, token, true).ok()
    }

    /// Takes up an observation established earlier (by this process before a restart, or
    /// by another server instance sharing the state): `request` is the observing request
    /// as it went out, its token included. Nothing is sent; the next notification from
    /// `peer` with that token is accepted whatever its sequence number (RFC 7641 §3.4: it
    /// counts as fresher than anything before) and reported as [`Event::Notification`].
    /// `None` when the token is not a CoAP token (over 8 bytes) or is in use.
    pub fn restore_observation(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        mut request: Packet,
    ) -> Option<RequestId> {
        let token = Token::new(request.get_token())?;
        if self.tokens.contains_key(&(peer, token)) {
            return None;
        }
        let body = std::mem::take(&mut request.payload);
        let id = RequestId(self.next_serial());
        // RFC 7641 §3.4: a notification over 128 s after the last one is fresh whatever
        // its number.
        let long_ago = now.checked_sub(std::time::Duration::from_secs(129));
        let exchange = Exchange {
            peer,
            token,
            observe: true,
            deregister: false,
            template: request,
            body,
            confirmable: true,
            mid: None,
            deadline: None,
            holds_slot: false,
            block1: None,
            block2: None,
            observing: Some((0, long_ago.unwrap_or(now))),
            fetch_token: None,
        };
        self.exchanges.insert(id, exchange);
        self.tokens.insert((peer, token), id);
        Some(id)
    }

    /// The token of a request (or established observation) still active.
    pub fn request_token(&self, id: RequestId) -> Option<Vec<u8>> {
        self.exchanges.get(&id).map(|e| e.token.as_slice().to_vec())
    }

    /// Whether `id` is still active (queued, in flight, or an established observation).
    pub fn is_active(&self, id: RequestId) -> bool {
        self.exchanges.contains_key(&id)
    }

    /// Removes an exchange and everything pointing at it; returns whether it existed.
    fn finish(&mut self, now: Instant, id: RequestId) -> bool {
        let Some(exchange) = self.exchanges.remove(&id) else {
            return false;
        };
        let peer = exchange.peer;
        for token in [Some(exchange.token), exchange.fetch_token]
            .into_iter()
            .flatten()
        {
            if self.tokens.get(&(peer, token)) == Some(&id) {
                self.tokens.remove(&(peer, token));
            }
        }
        if let Some(mid) = exchange.mid {
            forget_sent(&mut self.sent, peer, mid, Owner::Request(id));
        }
        if exchange.holds_slot {
            self.release_slot(now, peer);
        } else if let Some(state) = self.peers.get_mut(&peer) {
            state.queue.retain(|queued| *queued != id);
        }
        true
    }

    /// Frees an NSTART slot (RFC 7252 §4.7) and starts queued requests.
    fn release_slot(&mut self, now: Instant, peer: SocketAddr) {
        let nstart = self.config.nstart;
        let state = self.peer_state(now, peer);
        state.active = state.active.saturating_sub(1);
        loop {
            let state = self.peer_state(now, peer);
            if state.active >= nstart {
                return;
            }
            let Some(next) = state.queue.pop_front() else {
                return;
            };
            self.start_exchange(now, next);
        }
    }

    fn release_slot_of(&mut self, now: Instant, id: RequestId) {
        let Some(exchange) = self.exchanges.get_mut(&id) else {
            return;
        };
        if std::mem::take(&mut exchange.holds_slot) {
            let peer = exchange.peer;
            self.release_slot(now, peer);
        }
    }

    /// Reports a failure and removes the exchange.
    pub(super) fn fail_request(&mut self, now: Instant, id: RequestId, error: ExchangeError) {
        if !self.exchanges.contains_key(&id) {
            return;
        }
        if matches!(
            error,
            ExchangeError::Timeout { .. } | ExchangeError::NoResponse { .. }
        ) {
            self.counters.timeouts += 1;
        }
        self.finish(now, id);
        self.events.push_back(Event::RequestFailed { id, error });
    }

    /// The confirmable message `mid` of exchange `id` was acknowledged (RFC 7252 §4.2),
    /// possibly with the response piggybacked (§5.2.1).
    pub(super) fn on_request_acked(&mut self, now: Instant, id: RequestId, mid: u16, ack: Packet) {
        let Some(exchange) = self.exchanges.get(&id) else {
            return;
        };
        if exchange.mid != Some(mid) {
            return;
        }
        let token = Token::new(ack.get_token());
        let ours = token.is_some_and(|t| t == exchange.token || Some(t) == exchange.fetch_token);
        if ack.header.code != MessageClass::Empty && ours {
            return self.on_exchange_message(now, id, ack);
        }
        // Empty ACK (or a token mismatch, RFC 7252 §5.3.2): a separate response follows
        // (§5.2.2); the request no longer counts against NSTART (§4.7).
        self.set_deadline(now, id);
        self.release_slot_of(now, id);
    }

    /// A confirmable or non-confirmable response (separate response, notification) arrived
    /// and is not a duplicate: acknowledge it (RFC 7252 §5.2.2) and match it by token
    /// (§5.3.2); reject it with a Reset when nothing matches (§4.2, §4.3; RFC 7641 §3.6).
    pub(super) fn on_response_message(&mut self, now: Instant, peer: SocketAddr, packet: Packet) {
        let mid = packet.header.message_id;
        let confirmable = packet.header.get_type() == MessageType::Confirmable;
        let id = Token::new(packet.get_token()).and_then(|t| self.tokens.get(&(peer, t)).copied());
        let Some(id) = id else {
            self.counters.resets_out += 1;
            let rst = super::state::encode_empty(MessageType::Reset, mid);
            return self.reply_cached(now, peer, mid, rst);
        };
        if confirmable {
            let ack = super::state::encode_empty(MessageType::Acknowledgement, mid);
            self.reply_cached(now, peer, mid, ack);
        }
        self.on_exchange_message(now, id, packet);
    }

    /// Routes a response matched to exchange `id`: a notification of an established
    /// observation, the end of one, or the response to the message in flight.
    fn on_exchange_message(&mut self, now: Instant, id: RequestId, packet: Packet) {
        let Some(exchange) = self.exchanges.get(&id) else {
            return;
        };
        let has_observe = observe_value(&packet).is_some();
        let token = Token::new(packet.get_token());
        let fetch = token.is_some() && token == exchange.fetch_token;
        let notification = packet.header.get_type() != MessageType::Acknowledgement && !fetch;
        if exchange.deregister && has_observe && notification {
            return; // a notification still in flight after Observe = 1 (RFC 7641 §3.6)
        }
        if exchange.observing.is_some() && notification {
            if has_observe {
                return self.on_notification(now, id, packet);
            }
            // RFC 7641 §3.2: a response without Observe ends the observation.
            self.finish(now, id);
            return self.events.push_back(Event::ObservationEnded {
                id,
                response: packet,
            });
        }
        if exchange.mid.is_some() {
            self.on_exchange_response(now, id, packet);
        }
    }

    /// The response to the exchange's message in flight.
    fn on_exchange_response(&mut self, now: Instant, id: RequestId, packet: Packet) {
        let max_body = self.config.max_body_size;
        let Some(exchange) = self.exchanges.get_mut(&id) else {
            return;
        };
        if let Some(mid) = exchange.mid.take() {
            // A separate response also ends retransmission (RFC 7252 §5.3.2).
            forget_sent(&mut self.sent, exchange.peer, mid, Owner::Request(id));
        }
        exchange.deadline = None;
        let step = exchange.step(now, packet, max_body);
        let fetching = exchange.observe && exchange.block2.is_some();
        if fetching != exchange.fetch_token.is_some() {
            self.renew_fetch_token(id, fetching);
        }
        match step {
            Step::SendNext => self.transmit_next(now, id),
            Step::Deliver(response) => self.deliver(now, id, response),
            Step::Notify(response, seq) => {
                self.events
                    .push_back(Event::Notification { id, response, seq })
            }
            Step::Fail(error) => self.fail_request(now, id, error),
        }
    }

    /// Delivers the final response of an exchange. For Observe = 0 with a success response
    /// carrying Observe the exchange stays, as the observation (RFC 7641 §3.1).
    fn deliver(&mut self, now: Instant, id: RequestId, response: Packet) {
        let Some(exchange) = self.exchanges.get_mut(&id) else {
            return;
        };
        let established = exchange.observe && message::is_success(&response);
        match observe_value(&response).filter(|_| established) {
            Some(seq) => {
                if exchange.observing.is_none() {
                    exchange.observing = Some((seq, now));
                }
                self.release_slot_of(now, id);
            }
            None => {
                self.finish(now, id);
            }
        }
        self.events.push_back(Event::Response { id, response });
    }

    /// A notification of an established observation (RFC 7641 §3.2): apply the freshness
    /// rule (§3.4), then deliver it or fetch the rest of its body (RFC 7959 §3.4).
    fn on_notification(&mut self, now: Instant, id: RequestId, mut packet: Packet) {
        let Some(exchange) = self.exchanges.get_mut(&id) else {
            return;
        };
        let (Some(seq), Some((last, at))) = (observe_value(&packet), exchange.observing) else {
            return;
        };
        if !message::is_fresh(last, at, seq, now) {
            self.counters.stale_notifications += 1;
            return;
        }
        exchange.observing = Some((seq, now));
        if exchange.block2.as_ref().is_some_and(|d| d.seq.is_some()) {
            // A newer notification supersedes the body still being fetched.
            exchange.block2 = None;
            if let Some(mid) = exchange.mid.take() {
                forget_sent(&mut self.sent, exchange.peer, mid, Owner::Request(id));
            }
            self.renew_fetch_token(id, false);
        }
        let Some(exchange) = self.exchanges.get_mut(&id) else {
            return;
        };
        match BlockOption::from_packet(&packet, CoapOption::Block2) {
            Some(Ok(block)) if block.num == 0 && block.more => {
                packet.clear_option(CoapOption::Block2);
                let body = std::mem::take(&mut packet.payload);
                exchange.block2 = Some(Download {
                    etag: packet.get_first_option(CoapOption::ETag).cloned(),
                    first: packet,
                    body,
                    szx: block.szx,
                    seq: Some(seq),
                });
                self.renew_fetch_token(id, true);
                self.transmit_next(now, id);
            }
            _ => self.events.push_back(Event::Notification {
                id,
                response: packet,
                seq,
            }),
        }
    }

    /// Gives an observing exchange a fresh token for fetching a body block by block
    /// (`fresh`), or drops the one it had. A fetch with the observation's own token could
    /// be taken for a re-registration or a deregistration (RFC 7641 §4.1, RFC 7959 §3.4).
    fn renew_fetch_token(&mut self, id: RequestId, fresh: bool) {
        let Some(exchange) = self.exchanges.get_mut(&id) else {
            return;
        };
        let peer = exchange.peer;
        if let Some(old) = exchange.fetch_token.take() {
            self.tokens.remove(&(peer, old));
        }
        if fresh {
            let token = self.new_token(peer);
            self.tokens.insert((peer, token), id);
            if let Some(exchange) = self.exchanges.get_mut(&id) {
                exchange.fetch_token = Some(token);
            }
        }
    }

    /// The response wait of exchange `id` ran out (RFC 7252 §5.2.2, §5.2.3).
    pub(super) fn on_response_timer(&mut self, now: Instant, at: Instant, id: RequestId) {
        if self
            .exchanges
            .get(&id)
            .is_some_and(|e| e.deadline == Some(at))
        {
            let waited = self.config.response_timeout;
            self.fail_request(now, id, ExchangeError::NoResponse { waited });
        }
    }
}
