//! Reading DTLS 1.2 record headers on the wire (RFC 6347 §4.1), without decrypting anything.
//!
//! The router needs two facts about a datagram before any session sees it: whether it opens
//! a fresh handshake (a ClientHello without a cookie, RFC 6347 §4.2.1), and how its bytes
//! split into handshake, alert and application records for the wire accounting. Both come
//! from the plaintext record headers and the plaintext epoch-0 handshake header.

/// Length of a DTLS 1.2 record header: type (1), version (2), epoch (2), sequence number (6),
/// length (2) (RFC 6347 §4.1).
pub const RECORD_HEADER_LEN: usize = 13;

/// Per-record expansion of an AEAD cipher with an 8-byte tag such as AES-128-CCM-8: the
/// record header, the 8-byte explicit nonce and the 8-byte tag (RFC 6655 §3, RFC 7925 §3.3).
pub const CCM_8_RECORD_OVERHEAD: usize = RECORD_HEADER_LEN + 8 + 8;

/// ContentType values of RFC 5246 §6.2.1, which DTLS 1.2 keeps (RFC 6347 §4.1).
const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// HandshakeType client_hello (RFC 5246 §7.4).
const CLIENT_HELLO: u8 = 1;
/// Length of the DTLS handshake message header (RFC 6347 §4.2.2).
const HANDSHAKE_HEADER_LEN: usize = 12;

/// How the bytes of datagrams split by record content type; record headers and AEAD
/// expansion are counted with their record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordBytes {
    /// Bytes of handshake and change_cipher_spec records.
    pub handshake: u64,
    /// Bytes of alert records.
    pub alert: u64,
    /// Bytes of application_data records.
    pub application: u64,
    /// Number of application_data records.
    pub application_records: u64,
    /// Bytes that do not parse as a record (truncated header or length beyond the datagram).
    pub other: u64,
}

impl RecordBytes {
    /// Splits one datagram into its records (RFC 6347 §4.1.1: a datagram may carry several).
    pub fn of_datagram(datagram: &[u8]) -> RecordBytes {
        let mut split = RecordBytes::default();
        let mut rest = datagram;
        while !rest.is_empty() {
            let Some(len) = record_len(rest) else {
                split.other += rest.len() as u64;
                break;
            };
            let (record, tail) = rest.split_at(len);
            let size = record.len() as u64;
            match record[0] {
                HANDSHAKE | CHANGE_CIPHER_SPEC => split.handshake += size,
                ALERT => split.alert += size,
                APPLICATION_DATA => {
                    split.application += size;
                    split.application_records += 1;
                }
                _ => split.other += size,
            }
            rest = tail;
        }
        split
    }

    /// Adds `other` field by field.
    pub fn add(&mut self, other: &RecordBytes) {
        self.handshake += other.handshake;
        self.alert += other.alert;
        self.application += other.application;
        self.application_records += other.application_records;
        self.other += other.other;
    }
}

/// Full length (header included) of the record at the start of `bytes`, if it fits.
fn record_len(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..RECORD_HEADER_LEN)?;
    let body = usize::from(u16::from_be_bytes([header[11], header[12]]));
    let len = RECORD_HEADER_LEN + body;
    (len <= bytes.len()).then_some(len)
}

/// Whether the datagram's first record is an epoch-0 ClientHello with an empty cookie: the
/// first message of a new handshake (RFC 6347 §4.2.1). A peer that sends one has lost
/// whatever session it had with us (reboot, new process on the same port, NAT reuse), so
/// the router replaces the session (RFC 6347 §4.2.8).
///
/// The ClientHello must start in the first fragment; a fragmented first ClientHello
/// (unusual: it is about 100 bytes) is not recognised as fresh.
pub fn is_initial_client_hello(datagram: &[u8]) -> bool {
    initial_client_hello(datagram).unwrap_or(false)
}

fn initial_client_hello(datagram: &[u8]) -> Option<bool> {
    let len = record_len(datagram)?;
    let record = datagram.get(..len)?;
    let epoch = u16::from_be_bytes([*record.get(3)?, *record.get(4)?]);
    if record[0] != HANDSHAKE || epoch != 0 {
        return Some(false);
    }
    let handshake = record.get(RECORD_HEADER_LEN..)?;
    let fragment_offset = handshake.get(6..9)?;
    if *handshake.first()? != CLIENT_HELLO || fragment_offset != [0, 0, 0] {
        return Some(false);
    }
    // ClientHello body (RFC 6347 §4.2.1): client_version (2), random (32),
    // session_id<0..32>, cookie<0..2^8-1>, ...
    let body = handshake.get(HANDSHAKE_HEADER_LEN..)?;
    let session_id_len = usize::from(*body.get(34)?);
    let cookie_len = *body.get(35 + session_id_len)?;
    Some(cookie_len == 0)
}

/// The record version the router writes on the records it hands to the DTLS layer and on
/// its HelloVerifyRequest: DTLS 1.2 `{254, 253}` and DTLS 1.0 `{254, 255}` (RFC 6347 §4.1).
const DTLS_1_2: [u8; 2] = [0xfe, 0xfd];
const DTLS_1_0: [u8; 2] = [0xfe, 0xff];
/// HandshakeType hello_verify_request (RFC 6347 §4.2.1).
const HELLO_VERIFY_REQUEST: u8 = 3;

/// An unfragmented epoch-0 ClientHello in the first record of a datagram (RFC 6347 §4.2.1,
/// RFC 5246 §7.4.1.2), its fields borrowed from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// The version in the record header, as sent. It is not checked: before the version
    /// is negotiated clients put various values there (mbedTLS 2.x sends `{254, 0}`), and
    /// servers accept any (RFC 6347 §4.1, RFC 5246 Appendix E.1).
    pub record_version: [u8; 2],
    /// The record sequence number (48 bits).
    pub record_sequence: u64,
    /// The handshake message_seq (RFC 6347 §4.2.2): 0 on the first ClientHello, 1 on the
    /// one that returns the cookie.
    pub message_seq: u16,
    /// client_version.
    pub client_version: [u8; 2],
    /// random.
    pub random: [u8; 32],
    /// session_id.
    pub session_id: &'a [u8],
    /// cookie; empty on the first ClientHello of a handshake.
    pub cookie: &'a [u8],
    /// cipher_suites, compression_methods and extensions, with their length prefixes, as
    /// sent (their structure is checked).
    pub tail: &'a [u8],
}

/// What the first record of a datagram is, as far as opening a handshake goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloParse<'a> {
    /// Not an epoch-0 handshake record starting with a ClientHello.
    NotHello,
    /// An epoch-0 ClientHello that cannot be used; the reason, for logs.
    Malformed(&'static str),
    /// A well-formed ClientHello.
    Hello(ClientHello<'a>),
}

/// Parses the ClientHello at the start of `datagram`. Whatever the record version (see
/// [`ClientHello::record_version`]); only an unfragmented ClientHello that fills its record
/// is accepted (a first ClientHello is a few hundred bytes; fragmenting it is not supported).
pub fn parse_client_hello(datagram: &[u8]) -> HelloParse<'_> {
    let header = match datagram.get(..RECORD_HEADER_LEN) {
        Some(header) if header[0] == HANDSHAKE && header[3..5] == [0, 0] => header,
        _ => return HelloParse::NotHello,
    };
    if datagram.get(RECORD_HEADER_LEN) != Some(&CLIENT_HELLO) {
        return HelloParse::NotHello;
    }
    match client_hello_fields(datagram, header) {
        Ok(hello) => HelloParse::Hello(hello),
        Err(reason) => HelloParse::Malformed(reason),
    }
}

fn client_hello_fields<'a>(
    datagram: &'a [u8],
    header: &'a [u8],
) -> Result<ClientHello<'a>, &'static str> {
    let len = record_len(datagram).ok_or("ClientHello record longer than the datagram")?;
    let handshake = &datagram[RECORD_HEADER_LEN..len];
    let message = handshake
        .get(..HANDSHAKE_HEADER_LEN)
        .ok_or("ClientHello record shorter than a handshake header")?;
    let length = u24(&message[1..4]);
    let fragment_offset = u24(&message[6..9]);
    let fragment_length = u24(&message[9..12]);
    if fragment_offset != 0 || fragment_length != length {
        return Err("fragmented ClientHello (not supported)");
    }
    if handshake.len() != HANDSHAKE_HEADER_LEN + length {
        return Err("ClientHello length does not match its record");
    }
    let mut body = Reader(&handshake[HANDSHAKE_HEADER_LEN..]);
    let truncated = "truncated ClientHello";
    let client_version = body.array::<2>().ok_or(truncated)?;
    let random = body.array::<32>().ok_or(truncated)?;
    let session_id = body.vector8().ok_or(truncated)?;
    if session_id.len() > 32 {
        return Err("ClientHello session_id longer than 32 bytes");
    }
    let cookie = body.vector8().ok_or(truncated)?;
    let tail = body.0;
    let suites = body.vector16().ok_or(truncated)?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("ClientHello cipher_suites of odd or zero length");
    }
    if body.vector8().ok_or(truncated)?.is_empty() {
        return Err("ClientHello without compression methods");
    }
    if !body.0.is_empty() && (body.vector16().is_none() || !body.0.is_empty()) {
        return Err("ClientHello extensions do not match their length");
    }
    let mut sequence = [0; 8];
    sequence[2..].copy_from_slice(&header[5..11]);
    Ok(ClientHello {
        record_version: [header[1], header[2]],
        record_sequence: u64::from_be_bytes(sequence),
        message_seq: u16::from_be_bytes([message[4], message[5]]),
        client_version,
        random,
        session_id,
        cookie,
        tail,
    })
}

impl ClientHello<'_> {
    /// The same ClientHello without its cookie, as `message_seq` 0 in a DTLS 1.2 record
    /// with sequence number `record_sequence`: the first ClientHello this one answers.
    pub fn without_cookie(&self, record_sequence: u64) -> Vec<u8> {
        let mut body = Vec::with_capacity(2 + 32 + 2 + self.session_id.len() + self.tail.len());
        body.extend_from_slice(&self.client_version);
        body.extend_from_slice(&self.random);
        push_vector8(&mut body, self.session_id);
        push_vector8(&mut body, &[]);
        body.extend_from_slice(self.tail);
        handshake_record(DTLS_1_2, record_sequence, CLIENT_HELLO, 0, &body)
    }
}

/// A HelloVerifyRequest answering `hello` with `cookie` (RFC 6347 §4.2.1): server_version
/// DTLS 1.0 as the RFC recommends, the record sequence number and message_seq of the
/// ClientHello.
pub fn hello_verify_request(hello: &ClientHello<'_>, cookie: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(3 + cookie.len());
    body.extend_from_slice(&DTLS_1_0);
    push_vector8(&mut body, cookie);
    handshake_record(
        DTLS_1_0,
        hello.record_sequence,
        HELLO_VERIFY_REQUEST,
        hello.message_seq,
        &body,
    )
}

/// `datagram` with DTLS 1.2 as the version and `record_sequence` as the sequence number of
/// its first record; the rest is unchanged (record headers are not part of the handshake
/// transcript, RFC 6347 §4.2.6).
pub fn with_record_header(datagram: &[u8], record_sequence: u64) -> Vec<u8> {
    let mut out = datagram.to_vec();
    if let Some(header) = out.get_mut(..RECORD_HEADER_LEN) {
        header[1..3].copy_from_slice(&DTLS_1_2);
        header[5..11].copy_from_slice(&record_sequence.to_be_bytes()[2..]);
    }
    out
}

fn handshake_record(
    version: [u8; 2],
    record_sequence: u64,
    kind: u8,
    message_seq: u16,
    body: &[u8],
) -> Vec<u8> {
    let length = u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes();
    let record_len = u16::try_from(HANDSHAKE_HEADER_LEN + body.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + body.len());
    out.push(HANDSHAKE);
    out.extend_from_slice(&version);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(record_sequence & 0xffff_ffff_ffff).to_be_bytes()[2..]);
    out.extend_from_slice(&record_len.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&length[1..]);
    out.extend_from_slice(&message_seq.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&length[1..]);
    out.extend_from_slice(body);
    out
}

fn push_vector8(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(bytes);
}

fn u24(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .fold(0, |value, byte| (value << 8) | usize::from(*byte))
}

/// A cursor over TLS vectors (RFC 5246 §4.3).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn vector8(&mut self) -> Option<&'a [u8]> {
        let [len] = self.array::<1>()?;
        self.take(usize::from(len))
    }

    fn vector16(&mut self) -> Option<&'a [u8]> {
        let len = u16::from_be_bytes(self.array::<2>()?);
        self.take(usize::from(len))
    }
}

/// Whether the datagram carries an alert record (RFC 5246 §7.2), and the description of the
/// first one if it is readable: alerts sent before the handshake completes are plaintext
/// (epoch 0), later ones are encrypted. `None`: no alert record.
pub fn alert(datagram: &[u8]) -> Option<Option<u8>> {
    let mut rest = datagram;
    while let Some(len) = record_len(rest) {
        let (record, tail) = rest.split_at(len);
        if record[0] == ALERT {
            let plaintext = record.get(3..5) == Some(&[0, 0][..]) && len == RECORD_HEADER_LEN + 2;
            return Some(plaintext.then(|| record[RECORD_HEADER_LEN + 1]));
        }
        rest = tail;
    }
    None
}

/// The name of an alert description (RFC 5246 §7.2, RFC 4279 §2), for messages.
pub fn alert_name(description: u8) -> &'static str {
    match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        115 => "unknown_psk_identity",
        _ => "unknown alert",
    }
}

/// The 32-byte `random` of the ClientHello at the start of the datagram (RFC 5246 §7.4.1.2),
/// if the datagram starts with an epoch-0 ClientHello.
pub fn client_hello_random(datagram: &[u8]) -> Option<[u8; 32]> {
    let len = record_len(datagram)?;
    let record = datagram.get(..len)?;
    if record[0] != HANDSHAKE || record.get(3..5)? != [0, 0] {
        return None;
    }
    let handshake = record.get(RECORD_HEADER_LEN..)?;
    if *handshake.first()? != CLIENT_HELLO || handshake.get(6..9)? != [0, 0, 0] {
        return None;
    }
    handshake
        .get(HANDSHAKE_HEADER_LEN + 2..HANDSHAKE_HEADER_LEN + 34)?
        .try_into()
        .ok()
}

/// The name of a handshake message type (RFC 5246 §7.4, RFC 6347 §4.2.1), for messages.
pub fn handshake_name(kind: u8) -> &'static str {
    match kind {
        0 => "HelloRequest",
        CLIENT_HELLO => "ClientHello",
        2 => "ServerHello",
        3 => "HelloVerifyRequest",
        11 => "Certificate",
        12 => "ServerKeyExchange",
        13 => "CertificateRequest",
        14 => "ServerHelloDone",
        15 => "CertificateVerify",
        16 => "ClientKeyExchange",
        20 => "Finished",
        _ => "unknown handshake message",
    }
}

/// What a datagram carries, record by record, in one line for exchange logs, as Wireshark
/// names it: `ClientHello`, `ServerHello, ServerHelloDone`, `ChangeCipherSpec, Finished
/// (encrypted)`, `application data`, `alert unknown_psk_identity`. Only plaintext headers
/// are read (RFC 6347 §4.1, §4.2.2); bytes that are no record end in `not DTLS (N B)`.
pub fn describe(datagram: &[u8]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Some(len) = record_len(rest) else {
            parts.push(format!("not DTLS ({} B)", rest.len()));
            break;
        };
        let (record, tail) = rest.split_at(len);
        let epoch = u16::from_be_bytes([record[3], record[4]]);
        let body = &record[RECORD_HEADER_LEN..];
        match record[0] {
            HANDSHAKE if epoch == 0 => {
                let mut messages = body;
                while let Some(header) = messages.get(..HANDSHAKE_HEADER_LEN) {
                    parts.push(handshake_name(header[0]).to_owned());
                    let fragment = (usize::from(header[9]) << 16)
                        | (usize::from(header[10]) << 8)
                        | usize::from(header[11]);
                    messages = messages
                        .get(HANDSHAKE_HEADER_LEN + fragment..)
                        .unwrap_or_default();
                }
            }
            HANDSHAKE => parts.push("Finished (encrypted)".to_owned()),
            CHANGE_CIPHER_SPEC => parts.push("ChangeCipherSpec".to_owned()),
            ALERT => parts.push(match alert(record) {
                Some(Some(d)) => format!("alert {}", alert_name(d)),
                _ => "alert (encrypted)".to_owned(),
            }),
            APPLICATION_DATA => parts.push("application data".to_owned()),
            other => parts.push(format!("record type {other}")),
        }
        rest = tail;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ClientHello record as OpenSSL's first flight shapes it (RFC 6347 §4.2.1), with
    /// `cookie` and an empty session id.
    fn client_hello(epoch: u16, cookie: &[u8]) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 2, 0xc0, 0xa8, 1, 0]);
        let mut handshake = vec![CLIENT_HELLO];
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&[0, 0, 0, 0, 0]);
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);
        record(HANDSHAKE, epoch, &handshake)
    }

    fn record(content_type: u8, epoch: u16, body: &[u8]) -> Vec<u8> {
        let mut r = vec![content_type, 0xfe, 0xfd];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&[0; 6]);
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn initial_client_hello_has_no_cookie() {
        assert!(is_initial_client_hello(&client_hello(0, b"")));
        assert!(!is_initial_client_hello(&client_hello(0, &[1; 32])));
        assert!(!is_initial_client_hello(&client_hello(1, b"")));
        assert!(!is_initial_client_hello(&record(
            APPLICATION_DATA,
            1,
            &[0; 40]
        )));
        assert_eq!(client_hello_random(&client_hello(0, b"")), Some([7; 32]));
    }

    #[test]
    fn truncated_client_hello_is_not_fresh() {
        let hello = client_hello(0, b"");
        for cut in 0..hello.len() {
            // Cutting changes the record length field's meaning: it no longer fits.
            assert!(!is_initial_client_hello(&hello[..cut]), "cut at {cut}");
        }
    }

    #[test]
    fn datagram_split_by_content_type() {
        // RFC 6347 §4.1.1: ChangeCipherSpec and an encrypted Finished in one datagram, then
        // an application record with 8 + 8 bytes of CCM_8 expansion around 5 bytes.
        let mut datagram = record(CHANGE_CIPHER_SPEC, 0, &[1]);
        datagram.extend(record(HANDSHAKE, 1, &[0; 40]));
        datagram.extend(record(APPLICATION_DATA, 1, &[0; 21]));
        datagram.extend(record(ALERT, 1, &[0; 18]));
        datagram.extend([0x17, 0xfe]);
        let split = RecordBytes::of_datagram(&datagram);
        assert_eq!(
            split,
            RecordBytes {
                handshake: 14 + 53,
                alert: 31,
                application: 34,
                application_records: 1,
                other: 2,
            }
        );
        assert_eq!(34 - 5, CCM_8_RECORD_OVERHEAD);
        assert_eq!(alert(&datagram), Some(None), "encrypted alert");
    }

    #[test]
    fn datagrams_are_described_record_by_record() {
        assert_eq!(describe(&client_hello(0, b"")), "ClientHello");
        let mut flight = record(CHANGE_CIPHER_SPEC, 0, &[1]);
        flight.extend(record(HANDSHAKE, 1, &[0; 40]));
        assert_eq!(describe(&flight), "ChangeCipherSpec, Finished (encrypted)");
        // ServerHello and ServerHelloDone in one record (RFC 6347 §4.2.3).
        let mut two = vec![2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 9];
        two.extend([14, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            describe(&record(HANDSHAKE, 0, &two)),
            "ServerHello, ServerHelloDone"
        );
        assert_eq!(
            describe(&record(ALERT, 0, &[2, 115])),
            "alert unknown_psk_identity"
        );
        let data = record(APPLICATION_DATA, 1, &[0; 21]);
        assert_eq!(describe(&data), "application data");
        assert_eq!(describe(&[0x40, 1]), "not DTLS (2 B)");
    }

    #[test]
    fn plaintext_alert_description() {
        // A fatal internal_error (RFC 5246 §7.2.2) before the handshake completed.
        assert_eq!(alert(&record(ALERT, 0, &[2, 80])), Some(Some(80)));
        assert_eq!(alert(&record(HANDSHAKE, 0, &[2, 80])), None);
        assert_eq!(alert_name(115), "unknown_psk_identity");
    }

    /// The first datagram of a C client built on Debian's mbedTLS 2.28 (issue #10): record
    /// version `{254, 0}`, 233 bytes.
    pub(crate) const MBEDTLS_HELLO: &str = "16fe00000000000000000000dc010000d000000000000000d0fefd6b1497fed4e9062f4c3f6dcde707fa46dc96d241932acad570a6d5418adbfb8a0000004cccacccad00abc0a7c03800b3c0360091c091c09bc097c0ab00aac0a6c03700b2c0350090c090c096c09ac0aaccab00a9c0a500af008dc08fc095c0a900a8c0a400ae008cc08ec094c0a800ff0100005a0000000e000c0000093132372e302e302e31000d0012001006030601050305010403040103030301000a001c001a0019001c0018001b00170016001a0015001400130012001d001e000b00020100001600000017000000230000";

    #[test]
    fn the_mbedtls_hello_with_record_version_fe00_parses() {
        let datagram = hex::decode(MBEDTLS_HELLO).unwrap();
        assert_eq!(datagram.len(), 233);
        let HelloParse::Hello(hello) = parse_client_hello(&datagram) else {
            panic!("{:?}", parse_client_hello(&datagram))
        };
        assert_eq!(hello.record_version, [0xfe, 0x00]);
        assert_eq!((hello.record_sequence, hello.message_seq), (0, 0));
        assert_eq!(hello.client_version, [0xfe, 0xfd]);
        assert!(hello.session_id.is_empty() && hello.cookie.is_empty());
        // 38 cipher suites, among them TLS_PSK_WITH_AES_128_CCM_8 (0xc0a8).
        assert_eq!(hello.tail[..2], [0, 0x4c]);
        assert!(hello.tail[2..78].chunks(2).any(|s| s == [0xc0, 0xa8]));
        // Rebuilt without cookie in a DTLS 1.2 record, it is the same hello.
        let mut rebuilt = hello.without_cookie(0);
        assert_eq!(rebuilt[1..3], DTLS_1_2);
        rebuilt[1..3].copy_from_slice(&[0xfe, 0x00]);
        assert_eq!(rebuilt, datagram);
        // The record version does not change what the old helpers see either.
        assert!(is_initial_client_hello(&datagram));
    }

    #[test]
    fn hello_verify_request_mirrors_the_hello() {
        let mut datagram = client_hello(0, b"");
        datagram[5..11].copy_from_slice(&[0, 0, 0, 0, 0, 7]);
        let HelloParse::Hello(hello) = parse_client_hello(&datagram) else {
            panic!()
        };
        let verify = hello_verify_request(&hello, &[9; 20]);
        assert_eq!(describe(&verify), "HelloVerifyRequest");
        assert_eq!(
            verify[..13],
            [22, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 7, 0, 35]
        );
        assert_eq!(verify[13..25], [3, 0, 0, 23, 0, 0, 0, 0, 0, 0, 0, 23]);
        assert_eq!(verify[25..28], [0xfe, 0xff, 20]);
        assert_eq!(verify[28..], [9; 20]);
        let normalized = with_record_header(&datagram, 1);
        assert_eq!(normalized[1..3], DTLS_1_2);
        assert_eq!(normalized[5..11], [0, 0, 0, 0, 0, 1]);
        assert_eq!(normalized[11..], datagram[11..]);
    }

    #[test]
    fn unusable_client_hellos_are_malformed_not_ignored() {
        let hello = client_hello(0, &[1; 20]);
        let HelloParse::Hello(parsed) = parse_client_hello(&hello) else {
            panic!()
        };
        assert_eq!(parsed.cookie, &[1; 20]);
        for cut in 14..hello.len() {
            // Cut short but with the record length fixed up: the handshake does not fit.
            let mut short = hello[..cut].to_vec();
            short[11..13].copy_from_slice(&((cut - 13) as u16).to_be_bytes());
            assert!(
                matches!(parse_client_hello(&short), HelloParse::Malformed(_)),
                "cut at {cut}"
            );
        }
        let mut fragment = hello.clone();
        fragment[13 + 11] -= 1;
        assert_eq!(
            parse_client_hello(&fragment),
            HelloParse::Malformed("fragmented ClientHello (not supported)")
        );
        assert_eq!(
            parse_client_hello(&client_hello(1, b"")),
            HelloParse::NotHello
        );
        assert_eq!(parse_client_hello(&[22, 0xfe]), HelloParse::NotHello);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let split = RecordBytes::of_datagram(&bytes);
            prop_assert_eq!(
                split.handshake + split.alert + split.application + split.other,
                bytes.len() as u64
            );
            let _ = is_initial_client_hello(&bytes);
            let _ = client_hello_random(&bytes);
            if let HelloParse::Hello(hello) = parse_client_hello(&bytes) {
                let _ = hello.without_cookie(1);
                let _ = hello_verify_request(&hello, &[0; 20]);
            }
            let _ = alert(&bytes);
            let _ = describe(&bytes);
        }
    }
}
