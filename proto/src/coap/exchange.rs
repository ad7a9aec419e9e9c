//! One outgoing request's state on the client side of an endpoint, from its first message
//! to its final response: the block-wise upload (RFC 7959 §2.3) and download (§2.4) it is
//! in, and the observation it may have established (RFC 7641 §3). The endpoint's client
//! role (`client.rs`) drives it.

use std::net::SocketAddr;
use std::time::Instant;

use coap_lite::{CoapOption, MessageClass, Packet, ResponseType};

use super::ExchangeError;
use super::message::{self, BlockOption, observe_value};
use super::state::Token;

/// An outgoing request from [`Endpoint::send_request`](super::Endpoint::send_request) until its final response.
#[derive(Debug)]
pub(super) struct Exchange {
    pub(super) peer: SocketAddr,
    pub(super) token: Token,
    /// The request without payload; token, type and message ID are set per message.
    pub(super) template: Packet,
    pub(super) body: Vec<u8>,
    pub(super) confirmable: bool,
    /// The request carries Observe = 0 (RFC 7641 §3.1).
    pub(super) observe: bool,
    /// The request carries Observe = 1 (RFC 7641 §3.6): notifications still in flight are
    /// ignored.
    pub(super) deregister: bool,
    /// The message currently awaiting its acknowledgement or response.
    pub(super) mid: Option<u16>,
    /// When to give up waiting for the response (after an empty ACK or a NON request).
    pub(super) deadline: Option<Instant>,
    pub(super) holds_slot: bool,
    pub(super) block1: Option<Upload>,
    pub(super) block2: Option<Download>,
    /// Sequence number and arrival time of the last notification (RFC 7641 §3.4) once the
    /// observation is established.
    pub(super) observing: Option<(u32, Instant)>,
    /// For an observation: the token of the requests fetching a body block by block, kept
    /// apart from the observation's own token (RFC 7959 §3.4).
    pub(super) fetch_token: Option<Token>,
}

/// A request body going out block by block (RFC 7959 §2.3).
#[derive(Debug)]
pub(super) struct Upload {
    pub(super) szx: u8,
    /// Offset of the block in flight.
    pub(super) offset: usize,
    /// Length of the block in flight.
    pub(super) len: usize,
}

/// A response body coming in block by block (RFC 7959 §2.4).
#[derive(Debug)]
pub(super) struct Download {
    /// The first block's response, payload removed.
    pub(super) first: Packet,
    pub(super) body: Vec<u8>,
    pub(super) szx: u8,
    pub(super) etag: Option<Vec<u8>>,
    /// The Observe sequence number when the body is a notification's (RFC 7959 §3.4).
    pub(super) seq: Option<u32>,
}

/// What a response to an exchange's message in flight leads to.
pub(super) enum Step {
    /// Send the next block, or ask for it.
    SendNext,
    /// The final response.
    Deliver(Packet),
    /// A notification whose body is now complete (RFC 7959 §3.4).
    Notify(Packet, u32),
    /// The exchange failed.
    Fail(ExchangeError),
}

fn block_error(reason: impl Into<String>) -> Step {
    Step::Fail(ExchangeError::BlockTransfer {
        reason: reason.into(),
    })
}

impl Exchange {
    /// Handles the block-wise side of a response (RFC 7959 §2.3, §2.4).
    pub(super) fn step(&mut self, now: Instant, mut packet: Packet, max_body: usize) -> Step {
        if self.block1.is_some() {
            if packet.header.code == MessageClass::Response(ResponseType::Continue) {
                return self.continue_upload(&packet);
            }
            // Any other response is the final one (RFC 7959 §2.3).
            self.block1 = None;
        }
        match BlockOption::from_packet(&packet, CoapOption::Block2) {
            None if self.block2.is_some() => {
                block_error("a block response without Block2 (RFC 7959 §2.4)")
            }
            None => Step::Deliver(packet),
            Some(Err(reason)) => block_error(reason.to_string()),
            Some(Ok(block)) => {
                packet.clear_option(CoapOption::Block2);
                self.download(now, block, packet, max_body)
            }
        }
    }

    /// RFC 7959 §2.3: 2.31 Continue asks for the next block, maybe at a smaller size.
    fn continue_upload(&mut self, packet: &Packet) -> Step {
        let Some(upload) = self.block1.as_mut() else {
            return block_error("2.31 Continue to a request that is not block-wise");
        };
        let sent = (upload.offset >> (upload.szx + 4)) as u32;
        let next = upload.offset + upload.len;
        match BlockOption::from_packet(packet, CoapOption::Block1) {
            None => block_error("2.31 Continue without Block1 (RFC 7959 §2.3)"),
            Some(Err(reason)) => block_error(reason.to_string()),
            Some(Ok(ack)) if ack.num != sent => block_error(format!(
                "2.31 Continue for block {}, block {sent} was sent (RFC 7959 §2.3)",
                ack.num
            )),
            Some(Ok(_)) if next >= self.body.len() => {
                block_error("2.31 Continue after the last block (RFC 7959 §2.3)")
            }
            Some(Ok(ack)) => {
                upload.szx = upload.szx.min(ack.szx);
                upload.offset = next;
                Step::SendNext
            }
        }
    }

    /// One Block2 block of a response (RFC 7959 §2.4) or notification (§3.4).
    fn download(
        &mut self,
        now: Instant,
        block: BlockOption,
        mut packet: Packet,
        max_body: usize,
    ) -> Step {
        let etag = packet.get_first_option(CoapOption::ETag).cloned();
        let Some(download) = self.block2.as_mut() else {
            if block.num != 0 || !block.more {
                // A single block, or a later block asked for explicitly: deliver as is.
                return Step::Deliver(packet);
            }
            if self.observe && message::is_success(&packet) {
                self.observing = observe_value(&packet).map(|v| (v, now));
            }
            let body = std::mem::take(&mut packet.payload);
            self.block2 = Some(Download {
                first: packet,
                body,
                szx: block.szx,
                etag,
                seq: None,
            });
            return Step::SendNext;
        };
        if block.offset() != download.body.len() {
            return block_error(format!(
                "block {} at offset {} does not continue the {} bytes received (RFC 7959 §2.4)",
                block.num,
                block.offset(),
                download.body.len()
            ));
        }
        if etag != download.etag {
            return block_error("ETag changed between blocks (RFC 7959 §2.4)");
        }
        download.body.append(&mut packet.payload);
        download.szx = block.szx;
        let size = download.body.len();
        if size > max_body {
            return Step::Fail(ExchangeError::BodyTooLarge {
                size,
                max: max_body,
            });
        }
        if block.more {
            if size >> (block.szx + 4) > BlockOption::MAX_NUM as usize {
                return block_error("block number beyond 2^20 - 1 (RFC 7959 §2.2)");
            }
            return Step::SendNext;
        }
        let Some(download) = self.block2.take() else {
            return Step::Deliver(packet);
        };
        let mut response = download.first;
        response.payload = download.body;
        match download.seq {
            Some(seq) => Step::Notify(response, seq),
            None => Step::Deliver(response),
        }
    }
}
