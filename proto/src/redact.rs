//! What may not leave the process: the payloads that carry the keys of the Security object
//! (Core TS 1.1 E.1: /0/x/3 public key or identity, /0/x/5 secret key, SMS keys) and of
//! the OSCORE object (/21: master secret), as a Bootstrap Server writes them. Logs,
//! events and exchange logs show such a request with its payload masked; captures the
//! user asked for (pcap, key log) keep the bytes.

use coap_lite::{CoapOption, MessageClass, Packet};

/// The byte a masked payload is made of.
pub const MASK: u8 = b'*';

/// Objects whose instances hold keys.
const SECRET_OBJECTS: [&[u8]; 2] = [b"0", b"21"];

/// Whether `packet`'s payload may carry keys: a request with a payload to the Security or
/// OSCORE object (Bootstrap-Write, Create, Write), or to the root (a write of several
/// objects at once, e.g. SenML with `/0/...` records).
pub fn carries_secrets(packet: &Packet) -> bool {
    if packet.payload.is_empty() || !matches!(packet.header.code, MessageClass::Request(_)) {
        return false;
    }
    match packet
        .get_option(CoapOption::UriPath)
        .and_then(|p| p.front())
    {
        Some(first) => SECRET_OBJECTS.contains(&first.as_slice()),
        None => true,
    }
}

/// `datagram` with the payload masked ([`MASK`], same length, so sizes still add up) when
/// it is CoAP that [`carries_secrets`]; `None` when there is nothing to mask (the
/// datagram as it is may be shown). Not CoAP (e.g. a DTLS record): `None`.
pub fn redact_datagram(datagram: &[u8]) -> Option<Vec<u8>> {
    let packet = crate::coap::message::decode(datagram).ok()?;
    if !carries_secrets(&packet) {
        return None;
    }
    let keep = datagram.len().checked_sub(packet.payload.len())?;
    let mut out = datagram.get(..keep)?.to_vec();
    out.resize(datagram.len(), MASK);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::message;
    use coap_lite::RequestType;

    #[test]
    fn security_writes_are_masked_and_the_rest_is_not() {
        let secret =
            b"\xc8\x05\x10\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f";
        for path in ["/0/1", "/0", "/21/0", "/"] {
            let mut p = message::request(RequestType::Put, path);
            p.payload = secret.to_vec();
            let bytes = p.to_bytes().unwrap();
            let masked = redact_datagram(&bytes).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(masked.len(), bytes.len());
            let decoded = message::decode(&masked).unwrap();
            assert_eq!(message::uri_path(&decoded), message::uri_path(&p));
            assert!(decoded.payload.iter().all(|b| *b == MASK));
        }
        let mut read = message::request(RequestType::Put, "/1/0");
        read.payload = b"x".to_vec();
        assert_eq!(redact_datagram(&read.to_bytes().unwrap()), None);
        let empty = message::request(RequestType::Delete, "/0");
        assert_eq!(redact_datagram(&empty.to_bytes().unwrap()), None);
        assert_eq!(redact_datagram(b"\x16\xfe\xfd garbage"), None);
    }
}
