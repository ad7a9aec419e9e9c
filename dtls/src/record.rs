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
            let _ = alert(&bytes);
            let _ = describe(&bytes);
        }
    }
}
