//! The server side of an [`Endpoint`]: incoming requests and their responses (RFC 7252
//! §5.2), block-wise request bodies (RFC 7959 §2.3) and response bodies (§2.4), and serving
//! observations (RFC 7641 §4).

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::time::Instant;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

use super::endpoint::Endpoint;
use super::message::{self, BlockOption, observe_value, uint_bytes, uint_option};
use super::state::{
    Download, Observation, Owner, Reply, Sent, Timer, Token, Upload, encode_empty, forget_sent,
};
use super::{CancelReason, Event, ExchangeError, ObservationId};

/// What is needed to answer an incoming request; consumed by [`Endpoint::respond`] or
/// [`Endpoint::accept_observation`], so a request is answered once.
#[derive(Debug)]
pub struct RequestHandle {
    peer: SocketAddr,
    mid: u16,
    token: Token,
    confirmable: bool,
    serial: u64,
    /// The resource key of the request (block-wise bodies are cached under it).
    key: Vec<u8>,
    /// Block1 to echo in the final response of a block-wise upload (RFC 7959 §2.3).
    block1: Option<BlockOption>,
    /// Block2 of the request: the block asked for (RFC 7959 §2.4).
    block2: Option<BlockOption>,
}

impl RequestHandle {
    /// The peer that sent the request.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The request's token (RFC 7252 §5.3.1).
    pub fn token(&self) -> &[u8] {
        self.token.as_slice()
    }

    /// The request's message ID (of its last block for a block-wise upload).
    pub fn message_id(&self) -> u16 {
        self.mid
    }

    /// Whether the request was confirmable: its response goes piggybacked in the ACK or as a
    /// confirmable separate response; a non-confirmable request gets a non-confirmable
    /// response (RFC 7252 §5.2.3).
    pub fn is_confirmable(&self) -> bool {
        self.confirmable
    }
}

/// A request delivered by [`Event::Request`].
#[derive(Debug)]
pub struct IncomingRequest {
    /// The request as received, with the whole body of a block-wise upload as payload and
    /// its Block1 / Size1 options removed (RFC 7959 §2.5).
    pub packet: Packet,
    /// How to answer it.
    pub handle: RequestHandle,
}

impl IncomingRequest {
    /// The method, `None` for codes coap-lite does not name.
    pub fn method(&self) -> Option<RequestType> {
        match self.packet.header.code {
            MessageClass::Request(method) => Some(method),
            _ => None,
        }
    }

    /// The Observe option: 0 registers, 1 deregisters (RFC 7641 §2).
    pub fn observe(&self) -> Option<u32> {
        observe_value(&self.packet)
    }

    /// The Uri-Path joined with `/` (`"/3/0/1"`).
    pub fn path(&self) -> String {
        message::uri_path(&self.packet)
    }
}

/// Where and how to send an answer the endpoint makes itself.
#[derive(Debug, Clone, Copy)]
struct Context {
    peer: SocketAddr,
    mid: u16,
    token: Token,
    confirmable: bool,
}

/// The outcome of one Block1 block (RFC 7959 §2.3).
enum BlockStep {
    /// Answer with this (2.31 Continue, or an error).
    Reply(Packet),
    /// The body is complete.
    Complete(Vec<u8>),
}

fn error_response(code: ResponseType, reason: String) -> Packet {
    // RFC 7252 §5.5.2: a diagnostic payload for humans.
    message::response(code, reason.into_bytes())
}

/// FNV-1a, 64 bits: a cheap, stable fingerprint of a body.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Cuts the block at `offset` (a multiple of the block size) out of `body`.
fn cut_block(template: &Packet, body: &[u8], offset: usize, szx: u8) -> Packet {
    let size = 16usize << szx;
    let end = (offset + size).min(body.len());
    let mut packet = template.clone();
    let block = BlockOption {
        num: (offset / size) as u32,
        more: end < body.len(),
        szx,
    };
    block.set_in(&mut packet, CoapOption::Block2);
    if offset == 0 {
        // RFC 7959 §4: announce the total size with the first block.
        message::set_option(
            &mut packet,
            CoapOption::Size2,
            uint_bytes(u32::try_from(body.len()).unwrap_or(u32::MAX)),
        );
    }
    packet.payload = body.get(offset..end).unwrap_or_default().to_vec();
    packet
}

impl Endpoint {
    /// A new request (not a duplicate) arrived: answer what the layer answers itself
    /// (4.02, 4.05, 2.31 Continue, 4.08, 4.13, further Block2 blocks of a cached body) and
    /// deliver the rest as [`Event::Request`].
    pub(super) fn on_request(&mut self, now: Instant, peer: SocketAddr, mut packet: Packet) {
        let Some(token) = Token::new(packet.get_token()) else {
            return;
        };
        let mid = packet.header.message_id;
        let confirmable = packet.header.get_type() == MessageType::Confirmable;
        let context = Context {
            peer,
            mid,
            token,
            confirmable,
        };
        let method = match packet.header.code {
            MessageClass::Request(method) if method != RequestType::UnKnown => method,
            code => {
                let reason = format!("method {code} is not known (RFC 7252 §5.8)");
                return self.reply_now(
                    now,
                    context,
                    error_response(ResponseType::MethodNotAllowed, reason),
                );
            }
        };
        if let Some(number) = message::unknown_critical_option(&packet) {
            let reason = format!("unrecognized critical option {number} (RFC 7252 §5.4.1)");
            return self.reply_now(
                now,
                context,
                error_response(ResponseType::BadOption, reason),
            );
        }
        let key = message::resource_key(&packet);
        let (block1, block2) = match (
            BlockOption::from_packet(&packet, CoapOption::Block1).transpose(),
            BlockOption::from_packet(&packet, CoapOption::Block2).transpose(),
        ) {
            (Ok(block1), Ok(block2)) => (block1, block2),
            (Err(reason), _) | (_, Err(reason)) => {
                return self.reply_now(
                    now,
                    context,
                    error_response(ResponseType::BadRequest, reason.to_string()),
                );
            }
        };
        if let Some(block) = block2.filter(|b| b.num > 0)
            && let Some(reply) = self.serve_cached_block(now, peer, &key, block)
        {
            return self.reply_now(now, context, reply);
        }
        let mut echo = None;
        if let Some(block) = block1 {
            let size1 = uint_option(&packet, CoapOption::Size1);
            let payload = std::mem::take(&mut packet.payload);
            match self.receive_block(now, peer, &key, block, size1, payload) {
                BlockStep::Reply(reply) => return self.reply_now(now, context, reply),
                BlockStep::Complete(body) => {
                    packet.payload = body;
                    packet.clear_option(CoapOption::Block1);
                    packet.clear_option(CoapOption::Size1);
                    echo = Some(BlockOption {
                        more: false,
                        ..block
                    });
                }
            }
        }
        if matches!(method, RequestType::Get | RequestType::Fetch)
            && observe_value(&packet) == Some(1)
        {
            // RFC 7641 §3.6, §4.1: the observer deregisters with Observe = 1.
            if let Some(id) = self.observation_tokens.get(&(peer, token)).copied() {
                self.end_observation(id, CancelReason::Deregistered);
            }
        }
        let serial = self.next_serial();
        if confirmable {
            let ack_at = now + self.config.separate_response_delay;
            if let Some(reply) = self.seen.get_mut(now, &(peer, mid)) {
                *reply = Reply::Pending { serial, ack_at };
                self.timers.push(Reverse((ack_at, Timer::Ack(peer, mid))));
            }
        }
        let handle = RequestHandle {
            peer,
            mid,
            token,
            confirmable,
            serial,
            key,
            block1: echo,
            block2,
        };
        self.events.push_back(Event::Request {
            peer,
            request: IncomingRequest { packet, handle },
        });
    }

    /// Sends an answer the layer makes itself: piggybacked for a confirmable request
    /// (remembered for duplicates), non-confirmable otherwise (RFC 7252 §5.2).
    fn reply_now(&mut self, now: Instant, context: Context, mut packet: Packet) {
        packet.set_token(context.token.as_slice().to_vec());
        let limit = self.config.max_message_size;
        if context.confirmable {
            packet.header.set_type(MessageType::Acknowledgement);
            packet.header.message_id = context.mid;
            if let Ok(bytes) = message::encode(&packet, limit) {
                self.reply_cached(now, context.peer, context.mid, bytes);
            }
        } else {
            packet.header.set_type(MessageType::NonConfirmable);
            packet.header.message_id = self.next_mid(now, context.peer);
            if let Ok(bytes) = message::encode(&packet, limit) {
                self.transmit(context.peer, bytes);
            }
        }
    }

    /// Adds one Block1 block to the body being reassembled under (peer, key)
    /// (RFC 7959 §2.3, §2.5).
    fn receive_block(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        key: &[u8],
        block: BlockOption,
        size1: Option<u32>,
        payload: Vec<u8>,
    ) -> BlockStep {
        let max = self.config.max_body_size;
        let slot = (peer, key.to_vec());
        let too_large = |size: usize| {
            let reason =
                format!("body of at least {size} bytes, the limit is {max} (RFC 7959 §2.9.3)");
            let mut reply = error_response(ResponseType::RequestEntityTooLarge, reason);
            reply.add_option(
                CoapOption::Size1,
                uint_bytes(u32::try_from(max).unwrap_or(u32::MAX)),
            );
            BlockStep::Reply(reply)
        };
        if block.more && payload.len() != block.size() {
            self.uploads.remove(&slot);
            let reason = format!(
                "block {} carries {} bytes, SZX {} means {} (RFC 7959 §2.2)",
                block.num,
                payload.len(),
                block.szx,
                block.size()
            );
            return BlockStep::Reply(error_response(ResponseType::BadRequest, reason));
        }
        let expires = now + self.config.block_lifetime;
        if block.num == 0 {
            // RFC 7959 §4: refuse early when Size1 announces too much.
            if let Some(size) = size1.map(|s| s as usize).filter(|s| *s > max) {
                self.uploads.remove(&slot);
                return too_large(size);
            }
            self.uploads
                .insert(slot.clone(), Upload { body: Vec::new() }, expires);
        }
        let Some(upload) = self.uploads.get_mut(now, &slot) else {
            let reason = format!(
                "block {} without the blocks before it (RFC 7959 §2.3)",
                block.num
            );
            return BlockStep::Reply(error_response(
                ResponseType::RequestEntityIncomplete,
                reason,
            ));
        };
        if block.offset() != upload.body.len() {
            let reason = format!(
                "block {} starts at offset {}, {} bytes were received (RFC 7959 §2.3)",
                block.num,
                block.offset(),
                upload.body.len()
            );
            self.uploads.remove(&slot);
            return BlockStep::Reply(error_response(
                ResponseType::RequestEntityIncomplete,
                reason,
            ));
        }
        let size = upload.body.len() + payload.len();
        if size > max {
            self.uploads.remove(&slot);
            return too_large(size);
        }
        upload.body.extend_from_slice(&payload);
        if block.more {
            self.uploads.touch(&slot, expires);
            // RFC 7959 §2.3: the server may ask for smaller blocks from here on.
            let szx = block.szx.min(self.szx);
            let mut reply = message::response(ResponseType::Continue, Vec::new());
            BlockOption {
                num: block.num,
                more: true,
                szx,
            }
            .set_in(&mut reply, CoapOption::Block1);
            return BlockStep::Reply(reply);
        }
        BlockStep::Complete(
            self.uploads
                .remove(&slot)
                .map(|u| u.body)
                .unwrap_or_default(),
        )
    }

    /// Block size for a response: no larger than asked for (RFC 7959 §2.4), than preferred,
    /// or than what fits in a datagram next to the options.
    fn response_szx(
        &self,
        template: &Packet,
        requested: Option<BlockOption>,
    ) -> Result<u8, ExchangeError> {
        let limit = self.config.max_message_size;
        let mut probe = template.clone();
        probe.payload.clear();
        BlockOption {
            num: BlockOption::MAX_NUM,
            more: true,
            szx: 6,
        }
        .set_in(&mut probe, CoapOption::Block2);
        message::set_option(&mut probe, CoapOption::Size2, uint_bytes(u32::MAX));
        let overhead = message::encode(&probe, usize::MAX).map_or(usize::MAX, |b| b.len()) + 1;
        let room = limit.saturating_sub(overhead);
        let szx = self
            .szx
            .min(BlockOption::szx_for(room))
            .min(requested.map_or(6, |b| b.szx));
        if 16 << szx > room {
            return Err(ExchangeError::MessageTooLarge { limit });
        }
        Ok(szx)
    }

    /// A later block of a body cached under (peer, key), if there is one (RFC 7959 §2.4).
    fn serve_cached_block(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        key: &[u8],
        block: BlockOption,
    ) -> Option<Packet> {
        let slot = (peer, key.to_vec());
        let download = self.downloads.get_mut(now, &slot)?;
        let (template, body) = (
            download.template.clone(),
            std::mem::take(&mut download.body),
        );
        let reply = match self.response_szx(&template, Some(block)) {
            Ok(_) if block.offset() >= body.len() => {
                let reason = format!(
                    "block {} is beyond the {} bytes of the body (RFC 7959 §2.4)",
                    block.num,
                    body.len()
                );
                error_response(ResponseType::BadRequest, reason)
            }
            Ok(szx) => cut_block(&template, &body, block.offset(), szx),
            Err(_) => error_response(ResponseType::InternalServerError, String::new()),
        };
        if let Some(download) = self.downloads.get_mut(now, &slot) {
            download.body = body;
        }
        self.downloads
            .touch(&slot, now + self.config.block_lifetime);
        Some(reply)
    }

    /// Cuts a response into Block2 blocks when it is too large or a block was asked for
    /// (RFC 7959 §2.4), caching the body for the requests of the following blocks.
    fn shape_response(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        key: &[u8],
        requested: Option<BlockOption>,
        mut response: Packet,
    ) -> Result<Packet, ExchangeError> {
        let limit = self.config.max_message_size;
        let len = response.payload.len();
        let whole = message::encoded_len(&response, len);
        let fits = len <= self.config.preferred_block_size && whole <= limit;
        if fits && requested.is_none_or(|b| b.num == 0 && len <= b.size()) {
            return Ok(response);
        }
        if response.get_first_option(CoapOption::ETag).is_none() {
            // RFC 7959 §2.4: an ETag lets the client notice a body that changed between
            // blocks; derived from the body, so a re-generated identical body keeps it.
            let tag = fnv1a(&response.payload);
            response.add_option(CoapOption::ETag, tag.to_be_bytes().to_vec());
        }
        let szx = self.response_szx(&response, requested)?;
        let offset = requested.map_or(0, |b| b.offset());
        let body = std::mem::take(&mut response.payload);
        if offset > 0 && offset >= body.len() {
            let reason = format!(
                "block at offset {offset} is beyond the {} bytes of the body (RFC 7959 §2.4)",
                body.len()
            );
            return Ok(error_response(ResponseType::BadRequest, reason));
        }
        let packet = cut_block(&response, &body, offset, szx);
        if body.len() > 16 << szx {
            let mut template = response;
            for option in [
                CoapOption::Observe,
                CoapOption::Block1,
                CoapOption::Block2,
                CoapOption::Size2,
            ] {
                template.clear_option(option);
            }
            let expires = now + self.config.block_lifetime;
            self.downloads
                .insert((peer, key.to_vec()), Download { template, body }, expires);
        }
        Ok(packet)
    }

    /// Answers a request delivered by [`Event::Request`] (RFC 7252 §5.2): piggybacked in the
    /// ACK when still possible (§5.2.1), otherwise as a separate confirmable response that is
    /// retransmitted until acknowledged (§5.2.2); a non-confirmable request gets a
    /// non-confirmable response (§5.2.3). The packet supplies code, options and payload;
    /// type, token and message ID are set here. A body larger than the block size (or than
    /// the block the request asked for) goes out block-wise (RFC 7959 §2.4); the final
    /// response to a block-wise upload carries Block1 (§2.3).
    pub fn respond(
        &mut self,
        now: Instant,
        handle: RequestHandle,
        response: Packet,
    ) -> Result<(), ExchangeError> {
        if !message::is_response(&response) {
            return Err(ExchangeError::WrongCode {
                code: response.header.code.to_string(),
                expected: "response",
            });
        }
        self.send_response(now, handle, response)
    }

    fn send_response(
        &mut self,
        now: Instant,
        handle: RequestHandle,
        mut response: Packet,
    ) -> Result<(), ExchangeError> {
        if let Some(block) = handle.block1 {
            block.set_in(&mut response, CoapOption::Block1);
        }
        let mut packet =
            self.shape_response(now, handle.peer, &handle.key, handle.block2, response)?;
        packet.set_token(handle.token.as_slice().to_vec());
        let limit = self.config.max_message_size;
        let piggyback = handle.confirmable
            && matches!(
                self.seen.get_mut(now, &(handle.peer, handle.mid)),
                Some(Reply::Pending { serial, .. }) if *serial == handle.serial
            );
        if piggyback {
            packet.header.set_type(MessageType::Acknowledgement);
            packet.header.message_id = handle.mid;
            let bytes = message::encode(&packet, limit)?;
            self.reply_cached(now, handle.peer, handle.mid, bytes);
            return Ok(());
        }
        let mid = self.next_mid(now, handle.peer);
        packet.header.message_id = mid;
        if handle.confirmable {
            packet.header.set_type(MessageType::Confirmable);
            let bytes = message::encode(&packet, limit)?;
            self.send_confirmable(now, handle.peer, mid, bytes, Owner::Response, None);
        } else {
            packet.header.set_type(MessageType::NonConfirmable);
            let bytes = message::encode(&packet, limit)?;
            self.transmit(handle.peer, bytes);
        }
        Ok(())
    }

    /// The time to answer an incoming confirmable request in the ACK ran out: send an empty
    /// ACK; the response will be separate (RFC 7252 §5.2.2).
    pub(super) fn on_ack_timer(&mut self, now: Instant, at: Instant, peer: SocketAddr, mid: u16) {
        if let Some(reply) = self.seen.get_mut(now, &(peer, mid))
            && matches!(reply, Reply::Pending { ack_at, .. } if *ack_at == at)
        {
            let ack = encode_empty(MessageType::Acknowledgement, mid);
            *reply = Reply::Cached(ack.clone());
            self.transmit(peer, ack);
        }
    }

    /// Accepts an observation request (GET or FETCH with Observe = 0, RFC 7641 §3.1) by
    /// answering it with `response` (a 2.xx) carrying an Observe sequence number, and returns
    /// the id to [`notify`](Self::notify) with. A new registration with the token of an
    /// existing observation from the same peer replaces it and keeps its id (RFC 7641 §4.1).
    pub fn accept_observation(
        &mut self,
        now: Instant,
        handle: RequestHandle,
        mut response: Packet,
    ) -> Result<ObservationId, ExchangeError> {
        if !message::is_success(&response) {
            return Err(ExchangeError::WrongCode {
                code: response.header.code.to_string(),
                expected: "success response",
            });
        }
        let slot = (handle.peer, handle.token);
        let existing = self.observation_tokens.get(&slot).copied();
        let id = existing.unwrap_or_else(|| ObservationId(self.next_serial()));
        let observation = self.observations.entry(id).or_insert(Observation {
            peer: handle.peer,
            token: handle.token,
            key: Vec::new(),
            block: None,
            seq: 0,
            con_mid: None,
            non_mid: None,
        });
        observation.key = handle.key.clone();
        observation.block = handle.block2.map(|b| BlockOption {
            num: 0,
            more: false,
            ..b
        });
        observation.seq = (observation.seq + 1) & 0xFF_FFFF;
        response.set_observe_value(observation.seq);
        self.observation_tokens.insert(slot, id);
        let result = self.send_response(now, handle, response);
        if result.is_err() && existing.is_none() {
            self.observations.remove(&id);
            self.observation_tokens.remove(&slot);
        }
        result.map(|()| id)
    }

    /// Sends a notification of observation `id` (RFC 7641 §4.2) with the next Observe
    /// sequence number (24 bits, wrapping, §4.4), confirmable or not (§4.5). A notification
    /// with an error code carries no Observe and ends the observation (§4.2). A body too large
    /// for one datagram goes out as its first Block2 block (RFC 7959 §3.4). A confirmable
    /// notification sent while another is still unacknowledged takes its place and inherits
    /// its retransmission counter (RFC 7641 §4.5.2). A Reset in answer, or a confirmable
    /// notification never acknowledged, ends the observation with
    /// [`Event::ObservationCancelled`].
    pub fn notify(
        &mut self,
        now: Instant,
        id: ObservationId,
        mut response: Packet,
        confirmable: bool,
    ) -> Result<(), ExchangeError> {
        if !message::is_response(&response) {
            return Err(ExchangeError::WrongCode {
                code: response.header.code.to_string(),
                expected: "response",
            });
        }
        let observation = self
            .observations
            .get_mut(&id)
            .ok_or(ExchangeError::UnknownObservation)?;
        let success = message::is_success(&response);
        if success {
            observation.seq = (observation.seq + 1) & 0xFF_FFFF;
            response.set_observe_value(observation.seq);
        } else {
            response.clear_option(CoapOption::Observe);
        }
        let (peer, token, block, key) = (
            observation.peer,
            observation.token,
            observation.block,
            observation.key.clone(),
        );
        let mut packet = self.shape_response(now, peer, &key, block, response)?;
        packet.set_token(token.as_slice().to_vec());
        let mid = self.next_mid(now, peer);
        packet.header.message_id = mid;
        packet.header.set_type(if confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        let bytes = message::encode(&packet, self.config.max_message_size)?;
        let Some(observation) = self.observations.get_mut(&id) else {
            return Ok(());
        };
        let previous = if confirmable {
            observation.con_mid.take()
        } else {
            None
        };
        let inherit = previous
            .and_then(|m| self.sent.remove(&(peer, m)))
            .and_then(|s| s.retransmit);
        if let Some(old) = observation.non_mid.take() {
            forget_sent(&mut self.sent, peer, old, Owner::Notification(id));
        }
        let owner = if success {
            Owner::Notification(id)
        } else {
            Owner::Response
        };
        if success {
            if confirmable {
                observation.con_mid = Some(mid);
            } else {
                observation.non_mid = Some(mid);
            }
        } else {
            self.drop_observation(id);
        }
        if confirmable {
            self.send_confirmable(now, peer, mid, bytes, owner, inherit);
        } else {
            if success {
                self.sent.insert(
                    (peer, mid),
                    Sent {
                        owner,
                        retransmit: None,
                    },
                );
            }
            self.transmit(peer, bytes);
        }
        Ok(())
    }

    /// Whether observation `id` is still being served.
    pub fn is_observed(&self, id: ObservationId) -> bool {
        self.observations.contains_key(&id)
    }

    /// Removes an observation and reports why (RFC 7641 §3.6, §4.5).
    pub(super) fn end_observation(&mut self, id: ObservationId, reason: CancelReason) {
        if self.drop_observation(id) {
            self.events
                .push_back(Event::ObservationCancelled { id, reason });
        }
    }

    fn drop_observation(&mut self, id: ObservationId) -> bool {
        let Some(observation) = self.observations.remove(&id) else {
            return false;
        };
        self.observation_tokens
            .remove(&(observation.peer, observation.token));
        for mid in [observation.con_mid, observation.non_mid]
            .into_iter()
            .flatten()
        {
            forget_sent(
                &mut self.sent,
                observation.peer,
                mid,
                Owner::Notification(id),
            );
        }
        true
    }
}
