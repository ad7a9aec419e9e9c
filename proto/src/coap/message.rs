//! Message-level helpers on top of coap-lite: validated decoding (RFC 7252 §3), the Block1 /
//! Block2 option value (RFC 7959 §2.2), unsigned option values, the Observe freshness rule
//! (RFC 7641 §3.4) and request builders.

use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};

/// A datagram that is not a valid CoAP message (RFC 7252 §3, §4.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct MessageFormatError {
    /// What is wrong.
    pub reason: String,
    /// The message ID of a confirmable message whose header could be read: RFC 7252 §4.2
    /// asks to reject it with a Reset carrying this ID. `None` for anything else, which is
    /// silently ignored (§4.3; unknown versions, §3).
    pub reject: Option<u16>,
}

/// A Block1 or Block2 option value that RFC 7959 §2.2 does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockOptionError {
    /// More than 3 bytes.
    #[error("block option of {len} bytes, at most 3 (RFC 7959 §2.2)")]
    TooLong {
        /// The length found.
        len: usize,
    },
    /// SZX 7, reserved.
    #[error("block option with reserved SZX 7 (RFC 7959 §2.2)")]
    ReservedSzx,
}

/// Decodes a datagram into a packet, applying the format rules coap-lite leaves out:
/// version 1 only (RFC 7252 §3), token length 0 to 8 (§3), Empty messages with nothing after
/// the message ID (§4.1), no payload marker before an empty payload (§3), no reserved code
/// classes 1, 3, 6, 7 (§3: "all other class values are reserved"). Never panics, whatever the input.
pub fn decode(bytes: &[u8]) -> Result<Packet, MessageFormatError> {
    let &[first, code, mid_hi, mid_lo, ..] = bytes else {
        return Err(MessageFormatError {
            reason: format!("{} bytes, shorter than the 4-byte header", bytes.len()),
            reject: None,
        });
    };
    if first >> 6 != 1 {
        return Err(MessageFormatError {
            reason: format!("unknown version {} (RFC 7252 §3)", first >> 6),
            reject: None,
        });
    }
    let reject = ((first >> 4) & 0x3 == 0).then_some(u16::from_be_bytes([mid_hi, mid_lo]));
    let fail = |reason: String| MessageFormatError { reason, reject };
    let tkl = first & 0x0F;
    if tkl > 8 {
        return Err(fail(format!(
            "token length {tkl} is reserved (RFC 7252 §3)"
        )));
    }
    if code == 0 && bytes.len() > 4 {
        return Err(fail(format!(
            "Empty message with {} bytes after the message ID (RFC 7252 §4.1)",
            bytes.len() - 4
        )));
    }
    if matches!(code >> 5, 1 | 3 | 6 | 7) {
        return Err(fail(format!(
            "code {}.{:02} is in a reserved class (RFC 7252 §3)",
            code >> 5,
            code & 0x1F
        )));
    }
    let packet = Packet::from_bytes(bytes).map_err(|e| fail(format!("{e:?} (RFC 7252 §3)")))?;
    if packet.payload.is_empty()
        && bytes.last() == Some(&0xFF)
        && packet.to_bytes_unlimited().map(|b| b.len()).ok() != Some(bytes.len())
    {
        return Err(fail(
            "payload marker followed by an empty payload (RFC 7252 §3)".into(),
        ));
    }
    Ok(packet)
}

/// Encodes a packet, refusing anything longer than `limit` bytes.
pub(crate) fn encode(packet: &Packet, limit: usize) -> Result<Vec<u8>, super::ExchangeError> {
    encode_with_payload(packet, &packet.payload, limit)
}

/// Encodes a packet with `payload` in place of its own (RFC 7252 §3), into one buffer
/// allocated at its final size, refusing anything longer than `limit` bytes. The same
/// bytes as coap-lite's `Packet::to_bytes`, which allocates for every option.
pub(crate) fn encode_with_payload(
    packet: &Packet,
    payload: &[u8],
    limit: usize,
) -> Result<Vec<u8>, super::ExchangeError> {
    let too_large = || super::ExchangeError::MessageTooLarge { limit };
    let len = encoded_len(packet, payload.len());
    if len > limit {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(len.max(4));
    packet
        .header
        .to_raw()
        .serialize_into(&mut buf)
        .map_err(|_| too_large())?;
    buf.extend_from_slice(packet.get_token());
    let mut previous = 0u16;
    for (&number, values) in packet.options() {
        for value in values {
            let delta = usize::from(number.saturating_sub(previous));
            previous = number;
            let nibble = |n: usize| match n {
                0..=12 => n as u8,
                13..=268 => 13,
                _ => 14,
            };
            buf.push((nibble(delta) << 4) | nibble(value.len()));
            for n in [delta, value.len()] {
                match n {
                    0..=12 => {}
                    13..=268 => buf.push((n - 13) as u8),
                    _ => buf.extend_from_slice(&((n - 269) as u16).to_be_bytes()),
                }
            }
            buf.extend_from_slice(value);
        }
    }
    if packet.header.code != MessageClass::Empty && !payload.is_empty() {
        buf.push(0xFF);
        buf.extend_from_slice(payload);
    }
    Ok(buf)
}

/// The encoded size of a packet with a payload of `payload_len` bytes in place of its own.
pub(crate) fn encoded_len(packet: &Packet, payload_len: usize) -> usize {
    let extended = |n: usize| match n {
        0..=12 => 0,
        13..=268 => 1,
        _ => 2,
    };
    let mut len = 4 + packet.get_token().len();
    let mut previous = 0u16;
    for (&number, values) in packet.options() {
        for value in values {
            let delta = usize::from(number.saturating_sub(previous));
            previous = number;
            len += 1 + extended(delta) + extended(value.len()) + value.len();
        }
    }
    if packet.header.code != MessageClass::Empty && payload_len > 0 {
        len += 1 + payload_len;
    }
    len
}

/// The value of a Block1 or Block2 option (RFC 7959 §2.2): block number (20 bits), More flag
/// and size exponent, block size = 2^(SZX + 4).
///
/// coap-lite's own `BlockValue` limits NUM to 12 bits; this one reads the 3-byte form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockOption {
    /// NUM: the block number, 0 to 2^20 - 1.
    pub num: u32,
    /// M: more blocks follow (Block1 in a request, Block2 in a response) (RFC 7959 §2.2).
    pub more: bool,
    /// SZX: the size exponent, 0 to 6 (7 is reserved, RFC 7959 §2.2).
    pub szx: u8,
}

impl BlockOption {
    /// Largest block number (20 bits, RFC 7959 §2.2).
    pub const MAX_NUM: u32 = (1 << 20) - 1;

    /// The block size, `2^(szx + 4)` bytes.
    pub fn size(&self) -> usize {
        16 << self.szx.min(6)
    }

    /// Offset of the block in the body, `num * size`.
    pub fn offset(&self) -> usize {
        self.num as usize * self.size()
    }

    /// The largest SZX whose block size does not exceed `size` (sizes below 16 give 0, above
    /// 1024 give 6).
    pub fn szx_for(size: usize) -> u8 {
        let mut szx = 0;
        while szx < 6 && 16 << (szx + 1) <= size {
            szx += 1;
        }
        szx
    }

    /// Decodes the option value: 0 to 3 bytes, big-endian (RFC 7959 §2.2). SZX 7 is an error
    /// (a request carrying it gets 4.00, RFC 7959 §2.2).
    pub fn decode(value: &[u8]) -> Result<Self, BlockOptionError> {
        if value.len() > 3 {
            return Err(BlockOptionError::TooLong { len: value.len() });
        }
        let raw = value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        let szx = (raw & 0x7) as u8;
        if szx == 7 {
            return Err(BlockOptionError::ReservedSzx);
        }
        Ok(BlockOption {
            num: raw >> 4,
            more: raw & 0x8 != 0,
            szx,
        })
    }

    /// Encodes the option value in the fewest bytes (RFC 7959 §2.2).
    pub fn encode(&self) -> Vec<u8> {
        let raw = (self.num.min(Self::MAX_NUM) << 4)
            | (u32::from(self.more) << 3)
            | u32::from(self.szx.min(6));
        uint_bytes(raw)
    }

    /// Reads `option` (Block1 or Block2) from a packet: `None` when absent.
    pub fn from_packet(
        packet: &Packet,
        option: CoapOption,
    ) -> Option<Result<Self, BlockOptionError>> {
        packet.get_first_option(option).map(|v| Self::decode(v))
    }

    /// Replaces `option` (Block1 or Block2) in a packet with this value.
    pub fn set_in(&self, packet: &mut Packet, option: CoapOption) {
        set_option(packet, option, self.encode());
    }
}

/// Encodes an unsigned option value in the fewest bytes (RFC 7252 §3.2: `uint`).
pub fn uint_bytes(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// Reads the first value of an unsigned option (RFC 7252 §3.2); `None` when absent or longer
/// than 4 bytes.
pub fn uint_option(packet: &Packet, option: CoapOption) -> Option<u32> {
    let value = packet.get_first_option(option)?;
    (value.len() <= 4).then(|| value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// Replaces all values of `option` with the single `value`.
pub fn set_option(packet: &mut Packet, option: CoapOption, value: Vec<u8>) {
    packet.clear_option(option);
    packet.add_option(option, value);
}

/// The Observe value of a packet (RFC 7641 §2: 0 to 3 bytes); `None` when absent or invalid.
pub fn observe_value(packet: &Packet) -> Option<u32> {
    let value = packet.get_first_option(CoapOption::Observe)?;
    (value.len() <= 3).then(|| value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// The freshness rule of RFC 7641 §3.4: notification (V2, T2) is newer than (V1, T1) when
/// `(V1 < V2 and V2 - V1 < 2^23) or (V1 > V2 and V1 - V2 > 2^23) or T2 > T1 + 128 s`.
pub fn is_fresh(v1: u32, t1: Instant, v2: u32, t2: Instant) -> bool {
    const HALF: u32 = 1 << 23;
    (v1 < v2 && v2 - v1 < HALF) || (v1 > v2 && v1 - v2 > HALF) || t2 > t1 + Duration::from_secs(128)
}

/// A CoAP code as (class, detail) (RFC 7252 §3: `c.dd`).
pub(crate) fn code_pair(class: MessageClass) -> (u8, u8) {
    let code = u8::from(class);
    (code >> 5, code & 0x1f)
}

/// Whether a packet's code is a request code (RFC 7252 §12.1.1: class 0, detail 1-31).
pub(crate) fn is_request(packet: &Packet) -> bool {
    let code = u8::from(packet.header.code);
    code >> 5 == 0 && code != 0
}

/// Whether a packet's code is a response code (RFC 7252 §12.1.2: classes 2, 4, 5).
pub(crate) fn is_response(packet: &Packet) -> bool {
    matches!(u8::from(packet.header.code) >> 5, 2 | 4 | 5)
}

/// Whether a response code is a success (class 2, RFC 7252 §5.9.1).
pub(crate) fn is_success(packet: &Packet) -> bool {
    u8::from(packet.header.code) >> 5 == 2
}

/// Critical options (odd numbers, RFC 7252 §5.4.1) this layer and its users understand;
/// a request with any other critical option is answered with 4.02 Bad Option.
pub(crate) fn unknown_critical_option(packet: &Packet) -> Option<u16> {
    const KNOWN: [u16; 9] = [1, 3, 5, 7, 11, 15, 17, 23, 27];
    packet
        .options()
        .filter(|(_, values)| !values.is_empty())
        .map(|(number, _)| *number)
        .find(|number| number % 2 == 1 && !KNOWN.contains(number))
}

/// A key naming the resource and representation a request asks for: its code and options,
/// without the block-wise options, Observe and No-Response (RFC 7959 §2.4, §2.5: the
/// requests of one block-wise transfer carry the same options). Bodies being transferred
/// block-wise are stored under (peer, this key).
pub(crate) fn resource_key(packet: &Packet) -> Vec<u8> {
    const SKIP: [u16; 6] = [6, 23, 27, 28, 60, 258];
    let mut key = vec![u8::from(packet.header.code)];
    for (number, values) in packet.options() {
        if SKIP.contains(number) {
            continue;
        }
        for value in values {
            key.extend_from_slice(&number.to_be_bytes());
            key.extend_from_slice(&(value.len() as u32).to_be_bytes());
            key.extend_from_slice(value);
        }
    }
    key
}

/// An empty message (ACK or RST) with the given ID (RFC 7252 §4.1).
pub(crate) fn empty(kind: MessageType, mid: u16) -> Packet {
    let mut packet = Packet::new();
    packet.header.set_type(kind);
    packet.header.code = MessageClass::Empty;
    packet.header.message_id = mid;
    packet
}

/// A confirmable request for `path` (`"/3/0/1"`, segments as Uri-Path options, RFC 7252
/// §6.4; an empty path is the root). Query parameters go in with [`add_query`].
pub fn request(method: RequestType, path: &str) -> Packet {
    let mut packet = Packet::new();
    packet.header.set_type(MessageType::Confirmable);
    packet.header.code = MessageClass::Request(method);
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    packet
}

/// Appends one Uri-Query option (`"ep=node1"`, RFC 7252 §6.4).
pub fn add_query(packet: &mut Packet, query: &str) {
    packet.add_option(CoapOption::UriQuery, query.as_bytes().to_vec());
}

/// A response with `code` and `payload`, to hand to [`super::Endpoint::respond`] (type, token
/// and message ID are filled in by the endpoint).
pub fn response(code: coap_lite::ResponseType, payload: Vec<u8>) -> Packet {
    let mut packet = Packet::new();
    packet.header.code = MessageClass::Response(code);
    packet.payload = payload;
    packet
}

/// The Uri-Path of a request joined with `/` and a leading `/` (`"/3/0/1"`; `"/"` for none).
pub fn uri_path(packet: &Packet) -> String {
    let mut path = String::new();
    for segment in packet.get_option(CoapOption::UriPath).into_iter().flatten() {
        path.push('/');
        path.push_str(&String::from_utf8_lossy(segment));
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Our one-buffer encoder writes coap-lite's bytes, and its length ahead of time.
        #[test]
        fn the_one_buffer_encoder_matches_coap_lite(
            confirmable in any::<bool>(),
            code in prop::sample::select(vec![0u8, 1, 2, 5, 69, 132]),
            mid in any::<u16>(),
            token in prop::collection::vec(any::<u8>(), 0..=8),
            options in prop::collection::vec(
                (
                    prop::sample::select(vec![1usize, 3, 11, 12, 15, 17, 23, 27, 60, 300, 2048, 65000]),
                    prop::collection::vec(any::<u8>(), 0..300),
                ),
                0..6,
            ),
            payload in prop::collection::vec(any::<u8>(), 0..80),
        ) {
            let mut packet = Packet::new();
            packet.header.set_type(if confirmable {
                MessageType::Confirmable
            } else {
                MessageType::NonConfirmable
            });
            packet.header.code = MessageClass::from(code);
            packet.header.message_id = mid;
            packet.set_token(token);
            for (number, value) in options {
                packet.add_option(CoapOption::from(number as u16), value);
            }
            packet.payload = payload;
            let theirs = packet.to_bytes_unlimited().unwrap();
            let ours = encode(&packet, usize::MAX).unwrap();
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(encoded_len(&packet, packet.payload.len()), theirs.len());
            prop_assert!(encode(&packet, theirs.len() - 1).is_err());
            let body = std::mem::take(&mut packet.payload);
            prop_assert_eq!(encode_with_payload(&packet, &body, usize::MAX).unwrap(), theirs);
        }
    }

    #[test]
    fn rfc7252_figure_16_get_with_piggybacked_response() {
        // RFC 7252 Appendix A, Figure 16: CON GET /temperature, MID 0x7d34, no token.
        let mut get = request(RequestType::Get, "/temperature");
        get.header.message_id = 0x7d34;
        let bytes = get.to_bytes_with_limit(1152).unwrap();
        assert_eq!(hex::encode(&bytes), "40017d34bb74656d7065726174757265");
        assert_eq!(decode(&bytes).unwrap(), get);
        // ACK 2.05 "22.3 C"
        let ack = hex::decode("60457d34ff32322e332043").unwrap();
        let packet = decode(&ack).unwrap();
        assert_eq!(packet.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(packet.payload, b"22.3 C");
    }

    #[test]
    fn format_errors() {
        assert_eq!(decode(&[0x40, 0x01]).unwrap_err().reject, None);
        // version 2: silently ignored
        assert_eq!(decode(&[0x80, 0x01, 0, 1]).unwrap_err().reject, None);
        // TKL 9 in a CON: reject with RST
        assert_eq!(
            decode(&[0x49, 0x01, 0x12, 0x34]).unwrap_err().reject,
            Some(0x1234)
        );
        // Same in a NON: ignore
        assert_eq!(decode(&[0x59, 0x01, 0x12, 0x34]).unwrap_err().reject, None);
        // Empty message with a token (RFC 7252 §4.1)
        assert!(decode(&[0x41, 0x00, 0, 1, 7]).is_err());
        // reserved class 7
        assert!(decode(&[0x40, 0xE0, 0, 1]).is_err());
        // payload marker with nothing after it
        assert!(decode(&[0x40, 0x01, 0, 1, 0xFF]).is_err());
        // an option value ending in 0xFF is not a marker
        assert!(decode(&[0x40, 0x01, 0, 1, 0xB1, 0xFF]).is_ok());
        // option delta 15 is a format error
        assert!(decode(&[0x40, 0x01, 0, 1, 0xF0]).is_err());
    }

    #[test]
    fn block_option_values() {
        // RFC 7959 §2.2: NUM 0, M 1, SZX 6 -> 0x0E; three-byte form for large NUM.
        let b = BlockOption {
            num: 0,
            more: true,
            szx: 6,
        };
        assert_eq!(b.encode(), vec![0x0E]);
        assert_eq!(BlockOption::decode(&[0x0E]).unwrap(), b);
        let big = BlockOption {
            num: 70000,
            more: false,
            szx: 0,
        };
        assert_eq!(big.encode().len(), 3);
        assert_eq!(BlockOption::decode(&big.encode()).unwrap(), big);
        assert_eq!(
            BlockOption::decode(&[]).unwrap(),
            BlockOption {
                num: 0,
                more: false,
                szx: 0
            }
        );
        assert!(BlockOption::decode(&[0x07]).is_err());
        assert!(BlockOption::decode(&[1, 2, 3, 4]).is_err());
        assert_eq!(BlockOption::szx_for(1024), 6);
        assert_eq!(BlockOption::szx_for(1000), 5);
        assert_eq!(BlockOption::szx_for(3), 0);
        assert_eq!(b.size(), 1024);
    }

    #[test]
    fn freshness_rule_rfc7641_3_4() {
        let t = Instant::now();
        assert!(is_fresh(1, t, 2, t));
        assert!(!is_fresh(2, t, 1, t));
        assert!(!is_fresh(5, t, 5, t));
        // wrap-around of the 24-bit space
        assert!(is_fresh((1 << 24) - 1, t, 0, t));
        assert!(!is_fresh(0, t, (1 << 24) - 1, t));
        // an old number is accepted after 128 s
        assert!(is_fresh(2, t, 1, t + Duration::from_secs(129)));
        assert!(!is_fresh(2, t, 1, t + Duration::from_secs(128)));
    }

    #[test]
    fn resource_key_ignores_block_options() {
        let mut a = request(RequestType::Get, "/5/0/0");
        let b = a.clone();
        BlockOption {
            num: 3,
            more: false,
            szx: 2,
        }
        .set_in(&mut a, CoapOption::Block2);
        a.set_observe_value(0);
        assert_eq!(resource_key(&a), resource_key(&b));
        assert_ne!(
            resource_key(&a),
            resource_key(&request(RequestType::Get, "/5/0/1"))
        );
        assert_eq!(uri_path(&a), "/5/0/0");
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutated_messages(
            flips in proptest::collection::vec((0usize..40, any::<u8>()), 1..6),
            cut in 0usize..48,
        ) {
            let mut p = request(RequestType::Post, "/rd");
            add_query(&mut p, "ep=urn:dev:1234&lt=300");
            p.set_token(vec![1, 2, 3, 4]);
            p.payload = b"</1/0>,</3/0>".to_vec();
            let mut bytes = p.to_bytes_with_limit(1152).unwrap();
            for (i, b) in flips {
                if let Some(slot) = bytes.get_mut(i) { *slot ^= b; }
            }
            bytes.truncate(cut);
            let _ = decode(&bytes);
        }

        #[test]
        fn block_option_round_trip(num in 0u32..=BlockOption::MAX_NUM, more: bool, szx in 0u8..7) {
            let b = BlockOption { num, more, szx };
            prop_assert_eq!(BlockOption::decode(&b.encode()).unwrap(), b);
        }
    }
}
